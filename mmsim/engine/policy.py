"""Quote functions: the spec's Part 11 (Avellaneda-Stoikov + adjustments), pure AS 2008, GLFT, symmetric.

Equations, units, the discretisation over a step and the known biases: ``docs/MODEL.md``, section 11.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mmsim import distributions as dist
from mmsim._pytree import Check, pytree_dataclass, static_field
from mmsim.observation import Quote, no_quote  # noqa: F401  (re-exported: the engine's output)
from mmsim.regimes import REGIME_SPREAD_MULT

POLICIES = ("spec", "as2008", "symmetric", "glft")


def takes(p: PolicyParams) -> bool:
    """Whether the policy's quotes carry a taker order (static): those with scheduled events, which
    may flatten into them (``event_flatten``)."""
    return math.prod(np.shape(p.event_times_s)) > 0


class PolicyInputs(NamedTuple):
    """What a policy sees (assembled by the engine from its estimators and account)."""

    t: jax.Array  # () seconds since the start
    mid: jax.Array  # (A,) quote currency
    tick: jax.Array  # (A,) price tick
    sigma: jax.Array  # (A,) log-mid volatility per sqrt second over the policy horizon
    regime: jax.Array  # () int32 volatility regime (0 low .. 3 extreme)
    position: jax.Array  # (A,) base units
    available_margin: jax.Array  # () quote currency
    margin_ratio: jax.Array  # () equity / maintenance margin
    leverage: jax.Array  # () exchange leverage
    as_adjust: jax.Array  # (A,) adverse-selection spread adjustment, fraction of mid
    informed: jax.Array  # (A,) estimated informed fraction alpha in [0, 1]
    tail_risk: jax.Array  # (A,) liquidation tail-risk multiplier >= 1
    pull_cascade: jax.Array  # (A,) bool: severe cascade, pull quotes
    flow_imbalance: jax.Array  # (A,) in [-1, 1]
    daily_volume: jax.Array  # (A,) base units traded per day (estimated)
    ready: jax.Array  # () bool: estimators warmed up


@pytree_dataclass
class PolicyParams:
    """Policy parameters. The float fields are the tunable pytree an optimiser works on.

    Attributes:
        gamma: risk aversion, 1 / quote currency.
        k: fill-intensity decay, 1 / quote currency of distance from the mid.
        A: fill intensity at zero distance, per second (GLFT).
        horizon_s: AS holding horizon tau, seconds (spec, GLFT); for as2008 the terminal time T.
        size_fraction: fraction of available margin committed per quote (spec: 0.1).
        volume_fraction: cap of a quote at this fraction of daily volume (spec: 0.001).
        max_inventory: inventory normalisation for asymmetric sizes, base units.
        min_spread_frac, max_spread_frac: spread floor and ceiling, fractions of mid.
        flow_skew: flow-imbalance price adjustment, fraction of mid per unit imbalance.
        fixed_spread: total spread of the symmetric policy, quote currency.
        sigma_price: as2008/glft price volatility per sqrt second (> 0) or <= 0 to use the estimate.
        order_size: size of each quote in the as2008/symmetric/glft policies, base units.
        lot: GLFT order size Delta, base units (the inventory step of Gueant's general-Delta formula).
        pull_margin_ratio: below this margin ratio only the side that reduces |position| is quoted.
        band_min_frac, band_max_frac: validate_quote's spread band, fractions of mid (spec: 1 and 500 bps).
        kind: "spec", "as2008", "symmetric" or "glft" (static).
        cascade_keep_reducing: spec policy on a severe cascade, in [0, 1]: the side that would add
            to |position| is pulled, and the side that reduces it is quoted at this fraction of its
            size (0, the spec: both sides pulled; 1: the reducing side at full size; both pulled
            when flat). A traced number, so the optimiser can tune it (false/true read as 0/1).
        event_times_s: scheduled events the desk knows in advance (a macro release, a listing, an
            exchange's maintenance, the crash of a stress scenario), seconds on the engine's clock
            (``PolicyInputs.t``: from the start of the simulation or session); empty for none. Every
            policy kind honours it.
        event_pull_before_s, event_pull_after_s: quotes made at times ``t`` with
            ``t_e - before <= t <= t_e + after`` for some event ``t_e`` are pulled, seconds (>= 0).
            A quote rests until the next one, so ``before`` of at least one quote interval keeps
            the book empty when the event strikes.
        event_keep_reducing: in an event window, the side that reduces |position| stays quoted at
            this fraction of its size, in [0, 1] (0: both sides pulled; both pulled when flat).
        event_reduce_at_touch: 1 (or true) to quote that kept side at the touch, ``mid -+ tick/2``
            (the best post-only price: the touch of a one-tick book), instead of the policy's
            price: the position is worked down faster, giving up the spread; 0 (the default) keeps
            the policy's price.
        event_flatten: in an event window, every quote also sends a taker order for this fraction
            of the position, towards flat, in [0, 1] (1: flat at the window's first quote, paying
            the book's spread and depth and the taker fee; 0, the default: post-only). The kept
            reducing side is then sized to the rest, ``1 - event_flatten`` of its size, so that
            the two together do not overshoot flat.
    """

    gamma: jax.Array | float = 0.01
    k: jax.Array | float = 0.1
    A: jax.Array | float = 1.0
    horizon_s: jax.Array | float = 60.0
    size_fraction: jax.Array | float = 0.1
    volume_fraction: jax.Array | float = 0.001
    max_inventory: jax.Array | float = 1.0
    min_spread_frac: jax.Array | float = 1e-4
    max_spread_frac: jax.Array | float = 0.05
    flow_skew: jax.Array | float = 1e-4
    fixed_spread: jax.Array | float = 1.0
    sigma_price: jax.Array | float = 0.0
    order_size: jax.Array | float = 1.0
    lot: jax.Array | float = 1.0
    pull_margin_ratio: jax.Array | float = 1.5
    band_min_frac: jax.Array | float = 0.0
    band_max_frac: jax.Array | float = 0.05
    cascade_keep_reducing: jax.Array | float = 0.0
    event_times_s: jax.Array = dataclasses.field(default_factory=lambda: np.zeros(0), metadata={"per_asset": False})
    event_pull_before_s: jax.Array | float = 0.0
    event_pull_after_s: jax.Array | float = 0.0
    event_keep_reducing: jax.Array | float = 0.0
    event_reduce_at_touch: jax.Array | float = 0.0
    event_flatten: jax.Array | float = 0.0
    kind: str = static_field(default="spec")

    def validate(self) -> None:
        c = Check(self)
        c.require(self.kind in POLICIES, "kind", f"must be one of {POLICIES}")
        for f in ("gamma", "k", "A", "horizon_s", "max_inventory", "fixed_spread", "order_size", "lot"):
            c.positive(f)
        c.between("size_fraction", 0.0, 1.0, "fraction of available margin per quote", open_lo=True)
        c.positive("volume_fraction", "fraction of daily volume")
        c.nonneg("min_spread_frac", "fraction of mid")
        c.require(
            bool(np.all(c.value("max_spread_frac") > c.value("min_spread_frac"))),
            "max_spread_frac",
            "must exceed min_spread_frac",
        )
        c.finite("flow_skew")
        c.finite("sigma_price")
        c.nonneg("pull_margin_ratio")
        c.nonneg("band_min_frac")
        c.require(
            bool(np.all(c.value("band_max_frac") > c.value("band_min_frac"))),
            "band_max_frac",
            "must exceed band_min_frac",
        )
        c.between("cascade_keep_reducing", 0.0, 1.0, "fraction of the reducing side's size kept in a cascade")
        c.require(np.ndim(c.value("event_times_s")) <= 1, "event_times_s", "must be a list of times, seconds")
        c.finite("event_times_s", "seconds on the engine's clock")
        c.nonneg("event_pull_before_s", "seconds before an event")
        c.nonneg("event_pull_after_s", "seconds after an event")
        c.between("event_keep_reducing", 0.0, 1.0, "fraction of the reducing side's size kept around an event")
        c.require(
            bool(np.all(np.isin(c.value("event_reduce_at_touch"), (0.0, 1.0)))),
            "event_reduce_at_touch",
            "must be 0 or 1 (false or true)",
        )
        c.between("event_flatten", 0.0, 1.0, "fraction of the position closed by a taker order in an event window")


# --------------------------------------------------------------------------------------------
# Closed forms


def as_reservation_and_spread(mid, q, gamma, sigma_p, tau, k):
    """Avellaneda & Stoikov (2008): reservation ``r = s - q gamma sigma^2 tau`` and total spread
    ``gamma sigma^2 tau + (2/gamma) ln(1 + gamma/k)`` (quote currency, sigma in price units)."""
    r = mid - q * gamma * sigma_p**2 * tau
    spread = gamma * sigma_p**2 * tau + 2.0 / gamma * jnp.log1p(gamma / k)
    return r, spread


def glft_offsets(q, gamma, sigma_p, k, A, lot=1.0):
    """Gueant-Lehalle-Fernandez-Tapia (2013) asymptotic quotes for orders of ``lot`` = Delta base units
    (Gueant 2017, "Optimal market making", the general-Delta form): distances of bid and ask from the mid,
    ``delta_b = ln(1 + gamma Delta/k) / (gamma Delta) + (2 q + Delta)/2 c``, ``delta_a = ln(1 + gamma
    Delta/k) / (gamma Delta) - (2 q - Delta)/2 c`` with ``c = sqrt(sigma^2 gamma / (2 k A Delta) (1 +
    gamma Delta/k)^(1 + k/(gamma Delta)))``, q and Delta in base units. With Delta = 1 this is GLFT's
    unit-order formula; the general form is invariant under a change of the base unit."""
    g = gamma * lot
    base = jnp.log1p(g / k) / g
    c = jnp.sqrt(sigma_p**2 * gamma / (2.0 * k * A * lot) * (1.0 + g / k) ** (1.0 + k / g))
    return base + (2.0 * q + lot) / 2.0 * c, base - (2.0 * q - lot) / 2.0 * c


# --------------------------------------------------------------------------------------------
# Policies


class SpecTerms(NamedTuple):
    """The spec policy's quote, term by term (each ``(A,)``; prices in quote currency, sizes in base
    units): the steps of ``docs/MODEL.md`` section 11 before the post-only clamp and the tick."""

    reservation: jax.Array  # AS reservation price r = mid - q gamma sigma_p^2 tau
    base_spread: jax.Array  # AS spread over the horizon, quote currency
    as_adjust: jax.Array  # adverse-selection widening, quote currency
    regime_mult: jax.Array  # the volatility regime's spread multiplier
    liq_mult: jax.Array  # the liquidation tail-risk multiplier (capped at 3)
    half_spread: jax.Array  # half of (base + as_adjust) x multipliers, inside the floor and ceiling
    flow_adjust: jax.Array  # both quotes move down by this (order-flow imbalance), quote currency
    margin_size: jax.Array  # size the available margin allows (size_fraction of it)
    volume_size: jax.Array  # size the traded volume allows (volume_fraction of a day's)
    size_mult: jax.Array  # informed-flow, tail-risk and extreme-regime multiplier (>= 0.1)
    bid_size_mult: jax.Array  # inventory multipliers of each side (>= 0.1)
    ask_size_mult: jax.Array


def spec_terms(p: PolicyParams, x: PolicyInputs) -> SpecTerms:
    """The spec policy's terms (:class:`SpecTerms`) from its inputs."""
    dtype = x.mid.dtype
    sigma_p = x.sigma * x.mid
    # 1. AS base spread and reservation price over the holding horizon.
    r, base = as_reservation_and_spread(x.mid, x.position, p.gamma, sigma_p, p.horizon_s, p.k)
    # 2.-4. adverse selection, regime and liquidation multipliers.
    as_adj = x.as_adjust * x.mid
    regime_mult = jnp.asarray(REGIME_SPREAD_MULT, dtype)[x.regime]
    liq_mult = jnp.minimum(x.tail_risk, 3.0)
    total = (base + as_adj) * regime_mult * liq_mult
    # 5. spread floor and ceiling.
    half = jnp.clip(total / 2.0, p.min_spread_frac * x.mid / 2.0, p.max_spread_frac * x.mid / 2.0)
    # 7. flow imbalance adjustment (spec: both quotes move by the same amount).
    flow_adj = x.flow_imbalance * p.flow_skew * x.mid
    # 9. sizes: margin and volume caps, multipliers, asymmetric by inventory.
    margin_per_unit = x.mid / x.leverage
    margin_size = x.available_margin * p.size_fraction / margin_per_unit
    volume_size = x.daily_volume * p.volume_fraction
    mult = 1.0 / (1.0 + x.informed) / jnp.maximum(x.tail_risk, 1.0)
    mult = mult * jnp.where(x.regime == 3, 0.25, 1.0)
    mult = jnp.maximum(mult, 0.1)
    inv_ratio = x.position / p.max_inventory
    bid_mult = jnp.maximum(1.0 - jnp.maximum(inv_ratio, 0.0), 0.1)
    ask_mult = jnp.maximum(1.0 + jnp.minimum(inv_ratio, 0.0), 0.1)
    b = lambda v: jnp.broadcast_to(v, x.mid.shape)  # noqa: E731
    return SpecTerms(r, base, as_adj, b(regime_mult), liq_mult, half, flow_adj, b(margin_size), volume_size,
                     mult, bid_mult, ask_mult)  # fmt: skip


def _spec(p: PolicyParams, x: PolicyInputs) -> tuple[jax.Array, ...]:
    t = spec_terms(p, x)
    bid = t.reservation - t.half_spread - t.flow_adjust
    ask = t.reservation + t.half_spread - t.flow_adjust
    base_size = jnp.minimum(t.margin_size, t.volume_size)
    # The side that reduces |position| frees margin instead of using it: up to the position it is
    # capped by the volume only (else a fully margined account, e.g. one close to liquidation,
    # could not quote the side that gets it out).
    reduce_size = jnp.maximum(base_size, jnp.minimum(t.volume_size, jnp.abs(x.position)))
    bid_base = jnp.where(x.position < 0, reduce_size, base_size)
    ask_base = jnp.where(x.position > 0, reduce_size, base_size)
    return bid, ask, bid_base * t.size_mult * t.bid_size_mult, ask_base * t.size_mult * t.ask_size_mult


def terms(p: PolicyParams, x: PolicyInputs) -> dict[str, jax.Array]:
    """Why the policy quotes where it does, for one path: its inputs that matter and each term of
    its quote (the spec policy's :class:`SpecTerms`; the reservation price and spread of AS 2008,
    GLFT's offsets, the fixed spread), and the flags that pull a side (not ready, near
    liquidation, a severe cascade, an event window). Prices in quote currency, sizes in base units,
    sigma per sqrt second over the horizon; each ``(A,)`` or ``()``."""
    out = {"mid": x.mid, "sigma": x.sigma, "position": x.position, "regime": x.regime, "ready": x.ready}
    out["near_liquidation"] = x.margin_ratio < p.pull_margin_ratio
    sigma_p = jnp.where(p.sigma_price > 0, p.sigma_price, x.sigma * x.mid)
    if p.kind == "spec":
        out.update(spec_terms(p, x)._asdict())
        out["pull_cascade"] = x.pull_cascade
    elif p.kind == "as2008":
        r, spread = as_reservation_and_spread(
            x.mid, x.position, p.gamma, sigma_p, jnp.maximum(p.horizon_s - x.t, 0.0), p.k
        )
        out.update(reservation=r, spread=spread)
    elif p.kind == "glft":
        out["bid_offset"], out["ask_offset"] = glft_offsets(x.position, p.gamma, sigma_p, p.k, p.A, p.lot)
    else:
        out["fixed_spread"] = jnp.broadcast_to(jnp.asarray(p.fixed_spread, x.mid.dtype), x.mid.shape)
    if takes(p):
        t_e = jnp.reshape(jnp.asarray(p.event_times_s, x.mid.dtype), (-1,))
        out["in_event"] = jnp.any((x.t >= t_e - p.event_pull_before_s) & (x.t <= t_e + p.event_pull_after_s))
    return out


def _as2008(p: PolicyParams, x: PolicyInputs):
    sigma_p = jnp.where(p.sigma_price > 0, p.sigma_price, x.sigma * x.mid)
    tau = jnp.maximum(p.horizon_s - x.t, 0.0)
    r, spread = as_reservation_and_spread(x.mid, x.position, p.gamma, sigma_p, tau, p.k)
    size = jnp.broadcast_to(p.order_size, x.mid.shape).astype(x.mid.dtype)
    return r - spread / 2.0, r + spread / 2.0, size, size


def _symmetric(p: PolicyParams, x: PolicyInputs):
    size = jnp.broadcast_to(p.order_size, x.mid.shape).astype(x.mid.dtype)
    return x.mid - p.fixed_spread / 2.0, x.mid + p.fixed_spread / 2.0, size, size


def _glft(p: PolicyParams, x: PolicyInputs):
    sigma_p = jnp.where(p.sigma_price > 0, p.sigma_price, x.sigma * x.mid)
    db, da = glft_offsets(x.position, p.gamma, sigma_p, p.k, p.A, p.lot)
    size = jnp.broadcast_to(p.order_size, x.mid.shape).astype(x.mid.dtype)
    return x.mid - db, x.mid + da, size, size


def round_to_tick(bid: jax.Array, ask: jax.Array, tick: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Bid down and ask up to the tick grid: rounding never tightens a quote (the spec rounds to
    nearest, which can cross a one-tick quote). A tick <= 0 means a continuous price grid."""
    on = tick > 0
    t = jnp.where(on, tick, 1.0)
    return (jnp.where(on, jnp.floor(bid / t + 1e-6) * t, bid), jnp.where(on, jnp.ceil(ask / t - 1e-6) * t, ask))


def validate_quote(p: PolicyParams, q: Quote, mid: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Spec's validate_quote as masks: a side stays active only if the quote is finite, not crossed,
    positively priced, with size >= 0 and a spread inside the band (fractions of mid)."""
    finite = jnp.isfinite(q.bid_price) & jnp.isfinite(q.ask_price) & jnp.isfinite(q.bid_size) & jnp.isfinite(q.ask_size)
    spread = q.ask_price - q.bid_price
    frac = spread / jnp.maximum(mid, 1e-12)
    ok = (
        finite & (q.bid_price < q.ask_price) & (q.bid_price > 0) & (frac >= p.band_min_frac) & (frac <= p.band_max_frac)
    )
    return q.bid_active & ok & (q.bid_size > 0), q.ask_active & ok & (q.ask_size > 0)


def _keep_reducing(flag, keep, reduce_only, active, bsz, asz):
    """Where ``flag``: only the side that reduces |position| stays, at ``keep`` times its size
    (``keep`` <= 0: both sides pulled). Returns the updated ``(reduce_only, active, bsz, asz)``."""
    keep = jnp.asarray(keep, bsz.dtype)
    return (
        reduce_only | flag,
        active & ~(flag & (keep <= 0.0)),
        jnp.where(flag, bsz * keep, bsz),
        jnp.where(flag, asz * keep, asz),
    )


def quote(p: PolicyParams, x: PolicyInputs) -> Quote:
    """The policy's quote for one path. The spec policy is post-only (bid <= mid - tick/2 <= mid +
    tick/2 <= ask before rounding); the closed-form policies are left as published. Sides are
    pulled (inactive) when the estimators are not ready; around a scheduled event
    (``event_times_s``), on a severe cascade (spec policy) and close to liquidation (margin ratio
    below ``pull_margin_ratio``), only the side that would reduce |position| may stay."""
    fn = {"spec": _spec, "as2008": _as2008, "symmetric": _symmetric, "glft": _glft}[p.kind]
    bid, ask, bsz, asz = fn(p, x)
    if p.kind == "spec":
        # Post-only: a maker quote never crosses the mid (half a tick away at least), however far
        # the inventory skew pushes the reservation price; the reducing side then rests at the touch
        # instead of paying through the book.
        bid = jnp.minimum(bid, x.mid - x.tick / 2.0)
        ask = jnp.maximum(ask, x.mid + x.tick / 2.0)
    events = takes(p)  # static: without events nothing is computed
    if events:
        t_e = jnp.reshape(jnp.asarray(p.event_times_s, x.mid.dtype), (-1,))
        in_event = jnp.any((x.t >= t_e - p.event_pull_before_s) & (x.t <= t_e + p.event_pull_after_s))
        # Flattening into the event: the reducing side at the touch, the best post-only price.
        touch = in_event & (jnp.asarray(p.event_reduce_at_touch, x.mid.dtype) > 0)
        ask = jnp.where(touch & (x.position > 0), x.mid + x.tick / 2.0, ask)
        bid = jnp.where(touch & (x.position < 0), x.mid - x.tick / 2.0, bid)
    bid, ask = round_to_tick(bid, ask, x.tick)
    # One tick apart at least: rounding a sub-tick spread could otherwise cross.
    ask = jnp.maximum(ask, bid + x.tick)
    bsz = jnp.maximum(bsz, 0.0)
    asz = jnp.maximum(asz, 0.0)
    ready = jnp.broadcast_to(x.ready, x.mid.shape) & (x.mid > 0)
    active = ready
    near_liq = x.margin_ratio < p.pull_margin_ratio
    # Only the side that reduces |position| stays (none when flat): near liquidation, and on a
    # severe cascade (spec policy) and in an event window, there at cascade_keep_reducing /
    # event_keep_reducing times its size (0: pulled).
    state = (near_liq, active, bsz, asz)
    if p.kind == "spec":
        state = _keep_reducing(x.pull_cascade, p.cascade_keep_reducing, *state)
    if events:
        state = _keep_reducing(in_event, p.event_keep_reducing, *state)
        # What a taker order closes is not offered again by the kept side: it is sized to the rest.
        rest = jnp.where(in_event, 1.0 - jnp.asarray(p.event_flatten, bsz.dtype), 1.0)
        state = (state[0], state[1], state[2] * rest, state[3] * rest)
    reduce_only, active, bsz, asz = state
    bid_on = active & ~(reduce_only & (x.position >= 0))
    ask_on = active & ~(reduce_only & (x.position <= 0))
    qt = Quote(bid, ask, bsz, asz, bid_on, ask_on)
    bid_ok, ask_ok = dist.materialise_small(validate_quote(p, qt, x.mid))  # computed once, not per field
    zero = jnp.zeros_like(bid)
    # Flattening into an event with a taker order: a fraction of the position, towards flat.
    take = None
    if events:
        take = jnp.where(in_event & ready, -jnp.asarray(p.event_flatten, bid.dtype) * x.position, zero)
    return Quote(
        jnp.where(bid_ok, bid, zero),
        jnp.where(ask_ok, ask, zero),
        jnp.where(bid_ok, bsz, zero),
        jnp.where(ask_ok, asz, zero),
        bid_ok,
        ask_ok,
        take,
    )
