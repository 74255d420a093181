"""Adverse-selection estimator: realized post-fill price moves and a logistic alpha (spec Part 6).

Realized adverse selection. After each of our fills the mid at the fill is remembered and the mid
``horizon_s`` seconds later is compared with it; the signed adverse move, as a fraction of the mid,
is

    bid fill (we bought):  as = -(mid_later - mid_at_fill) / mid_at_fill   (positive: the mid fell)
    ask fill (we sold):    as = +(mid_later - mid_at_fill) / mid_at_fill   (positive: the mid rose)

so positive means we were picked off. The spec's queue of pending measurements (a VecDeque) becomes
a fixed array of ``n_slots`` slots per asset and side (``slot_price``, ``slot_due``,
``slot_live``): each observation first measures every live slot whose due time has come (at the
observation's mid, where the book is valid; a measurement due while the book is invalid waits for
the next valid mid), then records the observation's fills into a free slot. If every slot is live
the oldest pending measurement is overwritten and counted in ``dropped``; with the default 8 slots
and a 1 s horizon that happens only with more than 8 fill events on one side within a second. An
observation's fills on one side are one fill event (one measurement), as the spec records one per
fill message; the mid at the fill is the observation's mid (the spec's ``current_mid``), or the
fill price where the book is not valid.

The spec's ``ExponentialMovingAverage`` of the measurements becomes a time-decayed mean of the
measurements, O(1): with decay ``d = 2^{-dt / as_half_life_s}``,

    W' = d W + k,   realized' = (d W realized + sum of the k new measurements) / W'

(``W`` = ``weight_bid`` / ``weight_ask``, the decayed number of measurements). Every measurement
counts fully however many arrive per observation, older ones fade with the half-life in seconds,
and there is no start-up bias towards 0 (the first measurement is the estimate). With no
measurement yet the realized value is 0.

Alpha, the probability that the next trade is informed, is the spec's logistic model

    alpha = sigmoid(beta_0 + beta_funding |funding divergence| + beta_vol vol_surprise
                    + beta_flow |flow_imbalance| + beta_liq max(liq_intensity_ratio - 1, 0))

Fix of the spec: its liquidation signal is the ratio ``lambda / mu`` itself, which is 1 in a quiet
market, so its ``beta_0`` would not be the quiet-market log-odds; here the signal is the excess
``lambda / mu - 1`` (>= 0), so all four signals are 0 in a quiet market and the default
``beta_0 = logit(0.15)`` gives alpha = 0.15 there. Non-finite signals are treated as 0.

Units: time in seconds; adverse moves, realized adverse selection and the spread adjustment are
fractions of the mid (1e-4 = 1 bp); funding divergence per settlement interval (a fraction);
``vol_surprise`` = (realized - implied) / implied, dimensionless; ``flow_imbalance`` in [-1, 1];
``liq_intensity_ratio`` = lambda / mu, dimensionless; ``beta_*`` per unit of their signal.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from mmsim import _small
from mmsim import distributions as dist
from mmsim import observation as _obs
from mmsim._pytree import Check, pytree_dataclass, static_field

MAX_SLOTS = 16


@pytree_dataclass
class AdverseSelectionEstParams:
    """Adverse-selection estimator parameters; float fields are scalars or per-asset ``(A,)``.

    Attributes:
        horizon_s: time after a fill at which the mid is measured, seconds.
        as_half_life_s: half-life of the time-decayed mean of the measurements, seconds.
        beta_0: logistic intercept (log-odds of alpha in a quiet market); default logit(0.15).
        beta_funding: per unit of |funding rate divergence| (rate per settlement interval).
        beta_vol: per unit of volatility surprise (realized / implied - 1).
        beta_flow: per unit of |flow imbalance|.
        beta_liq: per unit of excess liquidation intensity (lambda / mu - 1).
        safety: multiplier of the spread adjustment (spec: 2).
        n_slots: pending measurements per asset and side, 1..16 (static).
    """

    horizon_s: jax.Array | float = 1.0
    as_half_life_s: jax.Array | float = 300.0
    beta_0: jax.Array | float = math.log(0.15 / 0.85)
    beta_funding: jax.Array | float = 5_000.0
    beta_vol: jax.Array | float = 1.0
    beta_flow: jax.Array | float = 1.0
    beta_liq: jax.Array | float = 0.5
    safety: jax.Array | float = 2.0
    n_slots: int = static_field(default=8)

    def validate(self) -> None:
        c = Check(self)
        c.positive("horizon_s", "measurement horizon after a fill, seconds")
        c.positive("as_half_life_s", "half-life of the realized adverse selection, seconds")
        for f in ("beta_0", "beta_funding", "beta_vol", "beta_flow", "beta_liq"):
            c.finite(f, "logistic coefficient")
        c.nonneg("safety", "spread-adjustment multiplier")
        c.require(isinstance(self.n_slots, int) and 1 <= self.n_slots <= MAX_SLOTS, "n_slots",
                  f"must be an integer in [1, {MAX_SLOTS}] (pending measurements per asset and side)")


class AdverseSelectionEst(NamedTuple):
    slot_price: jax.Array    # (A, 2, S) mid at the fill, price; side 0 = bid (we bought), 1 = ask
    slot_due: jax.Array      # (A, 2, S) time at which to measure, seconds
    slot_live: jax.Array     # (A, 2, S) bool: the slot holds a pending measurement
    realized_bid: jax.Array  # (A,) mean adverse move after bid fills, fraction of mid
    realized_ask: jax.Array  # (A,) mean adverse move after ask fills, fraction of mid
    weight_bid: jax.Array    # (A,) decayed number of bid measurements behind realized_bid
    weight_ask: jax.Array    # (A,) decayed number of ask measurements behind realized_ask
    alpha: jax.Array         # (A,) probability that the next trade is informed
    dropped: jax.Array       # (A,) int32: fills whose measurement overwrote a pending one


def init(params: AdverseSelectionEstParams, n_assets: int, dtype=jnp.float32) -> AdverseSelectionEst:
    """No pending fills, no measurement, alpha = sigmoid(beta_0)."""
    s = (n_assets, 2, params.n_slots)
    z = jnp.zeros((n_assets,), dtype)
    a0 = jnp.broadcast_to(jax.nn.sigmoid(jnp.asarray(params.beta_0).astype(dtype)), (n_assets,))
    return AdverseSelectionEst(
        slot_price=jnp.zeros(s, dtype), slot_due=jnp.zeros(s, dtype), slot_live=jnp.zeros(s, bool),
        realized_bid=z, realized_ask=z, weight_bid=z, weight_ask=z, alpha=a0.astype(dtype),
        dropped=jnp.zeros((n_assets,), jnp.int32))


def _clean(x, dtype):
    x = jnp.asarray(x).astype(dtype)
    return jnp.where(jnp.isfinite(x), x, 0.0)


def predict_alpha(params: AdverseSelectionEstParams, funding_divergence, vol_surprise, flow_imbalance,
                  liq_intensity_ratio, dtype=jnp.float32) -> jax.Array:
    """The logistic model (see the module docstring); (A,) probability in (0, 1)."""
    c = lambda x: jnp.asarray(x).astype(dtype)  # noqa: E731
    z = (c(params.beta_0)
         + c(params.beta_funding) * jnp.abs(_clean(funding_divergence, dtype))
         + c(params.beta_vol) * _clean(vol_surprise, dtype)
         + c(params.beta_flow) * jnp.abs(_clean(flow_imbalance, dtype))
         + c(params.beta_liq) * jnp.maximum(_clean(liq_intensity_ratio, dtype) - 1.0, 0.0))
    return jax.nn.sigmoid(z)


def update(params: AdverseSelectionEstParams, state: AdverseSelectionEst, obs: _obs.Observation,
           funding_divergence: jax.Array, vol_surprise: jax.Array, flow_imbalance: jax.Array,
           liq_intensity_ratio: jax.Array) -> AdverseSelectionEst:
    """Measure due slots, record this observation's fills, update alpha.

    Args:
        obs: uses ``t``, ``dt`` (seconds), ``mid`` (where ``book_valid``) and the fills (where
            ``fills_valid``: ``fill_bid_size``/``fill_ask_size`` > 0 are fill events).
        funding_divergence: (A,) this venue's funding rate minus the reference's, per interval
            (its absolute value is used).
        vol_surprise: (A,) realized / implied volatility - 1, dimensionless.
        flow_imbalance: (A,) in [-1, 1] (its absolute value is used).
        liq_intensity_ratio: (A,) liquidation intensity / baseline, dimensionless (>= 1).
    """
    dtype = state.realized_bid.dtype
    cast = lambda x: jnp.asarray(x).astype(dtype)  # noqa: E731
    n_a, _, n_s = state.slot_price.shape
    t = cast(obs.t)
    dt = jnp.maximum(cast(obs.dt), 0.0)
    mid = cast(obs.mid)
    mid_ok = obs.book_valid & (mid > 0.0) & jnp.isfinite(mid)

    # 1. Measure the due slots.
    due = state.slot_live & (state.slot_due <= t) & mid_ok[:, None, None]
    ref = jnp.where(due, state.slot_price, 1.0)
    move = (mid[:, None, None] - ref) / ref                      # (A, 2, S) fraction of mid
    sign = jnp.asarray([-1.0, 1.0], dtype)[None, :, None]        # bid: the mid falling is adverse
    meas = jnp.where(due, sign * move, 0.0)
    due, meas = dist.materialise((due, meas))    # several consumers each: computed once
    k = _small.sum_last(due.astype(dtype))                       # (A, 2) measurements
    ssum = _small.sum_last(meas)                                 # (A, 2)
    d = jnp.exp2(-dt / cast(params.as_half_life_s))
    d = jnp.broadcast_to(d, (n_a,))
    w_old = jnp.stack([state.weight_bid, state.weight_ask], axis=1) * d[:, None]
    r_old = jnp.stack([state.realized_bid, state.realized_ask], axis=1)
    w_new = w_old + k
    r_new = jnp.where(k > 0, (w_old * r_old + ssum) / jnp.where(w_new > 0, w_new, 1.0), r_old)
    live = state.slot_live & ~due

    # 2. Record this observation's fills (one event per side), oldest slot if none is free.
    sizes = jnp.stack([cast(obs.fill_bid_size), cast(obs.fill_ask_size)], axis=1)      # (A, 2)
    fprice = jnp.stack([cast(obs.fill_bid_price), cast(obs.fill_ask_price)], axis=1)
    at = jnp.where(mid_ok[:, None], mid[:, None], fprice)
    new_fill = obs.fills_valid[:, None] & (sizes > 0.0) & (at > 0.0) & jnp.isfinite(at)
    score = jnp.where(live, state.slot_due, -jnp.inf)
    slot = _small.argmin_last(score)                             # (A, 2): free first, else oldest
    # Computed once: broadcast back over the slots below, XLA would redo the search per slot.
    slot = dist.materialise(slot)
    full = _small.all_last(live)
    pick = (jnp.arange(n_s)[None, None, :] == slot[:, :, None]) & new_fill[:, :, None]
    h = cast(params.horizon_s)
    due_at = jnp.broadcast_to(t + h, (n_a,))[:, None, None]
    slot_price = jnp.where(pick, at[:, :, None], state.slot_price)
    slot_due = jnp.where(pick, due_at, state.slot_due)
    live = live | pick
    dropped = state.dropped + _small.sum_last((new_fill & full).astype(jnp.int32))

    # 3. Alpha.
    alpha = predict_alpha(params, funding_divergence, vol_surprise, flow_imbalance,
                          liq_intensity_ratio, dtype)
    return AdverseSelectionEst(
        slot_price=slot_price.astype(dtype), slot_due=slot_due.astype(dtype), slot_live=live,
        realized_bid=r_new[:, 0].astype(dtype), realized_ask=r_new[:, 1].astype(dtype),
        weight_bid=w_new[:, 0].astype(dtype), weight_ask=w_new[:, 1].astype(dtype),
        alpha=jnp.broadcast_to(alpha, (n_a,)).astype(dtype), dropped=dropped)


def realized_adverse_selection(state: AdverseSelectionEst) -> jax.Array:
    """(A,) the spec's summary ``(|realized_bid| + |realized_ask|) / 2``, fraction of mid."""
    return 0.5 * (jnp.abs(state.realized_bid) + jnp.abs(state.realized_ask))


def spread_adjustment(params: AdverseSelectionEstParams, state: AdverseSelectionEst) -> jax.Array:
    """(A,) extra spread to cover adverse selection, fraction of mid:
    ``alpha * realized_adverse_selection * safety``."""
    return state.alpha * realized_adverse_selection(state) * jnp.asarray(params.safety).astype(
        state.alpha.dtype)
