"""Adverse-selection estimator: realized post-fill price moves and a logistic alpha (spec Part 6).

Equations, units, the discretisation over a step and the known biases: ``docs/MODEL.md``, section 5.
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
        c.require(
            isinstance(self.n_slots, int) and 1 <= self.n_slots <= MAX_SLOTS,
            "n_slots",
            f"must be an integer in [1, {MAX_SLOTS}] (pending measurements per asset and side)",
        )


class AdverseSelectionEst(NamedTuple):
    """Estimator state. The pending measurements are kept slot by slot, ``pending_*[side][j]``
    of shape (A,) (side 0 = bid, we bought; 1 = ask; slot j < n_slots): per-path arrays of the
    path shape vectorise over a batch of paths, where an (A, 2, S) table with its short trailing
    axes does not (under ``vmap`` over paths on a CPU it cost a tenth of the whole model step,
    experiments/PERFORMANCE.md). ``slot_price``, ``slot_due`` and ``slot_live`` give the
    stacked (A, 2, S) view."""

    pending_price: tuple  # [side][slot] (A,) mid at the fill, price
    pending_due: tuple  # [side][slot] (A,) time at which to measure, seconds
    pending_live: tuple  # [side][slot] (A,) bool: the slot holds a pending measurement
    realized_bid: jax.Array  # (A,) mean adverse move after bid fills, fraction of mid
    realized_ask: jax.Array  # (A,) mean adverse move after ask fills, fraction of mid
    weight_bid: jax.Array  # (A,) decayed number of bid measurements behind realized_bid
    weight_ask: jax.Array  # (A,) decayed number of ask measurements behind realized_ask
    alpha: jax.Array  # (A,) probability that the next trade is informed
    dropped: jax.Array  # (A,) int32: fills whose measurement overwrote a pending one

    @property
    def slot_price(self) -> jax.Array:
        """(A, 2, S) mid at the fill, price."""
        return _stacked(self.pending_price)

    @property
    def slot_due(self) -> jax.Array:
        """(A, 2, S) time at which to measure, seconds."""
        return _stacked(self.pending_due)

    @property
    def slot_live(self) -> jax.Array:
        """(A, 2, S) bool: the slot holds a pending measurement."""
        return _stacked(self.pending_live)


def _stacked(slots) -> jax.Array:
    return jnp.stack([jnp.stack(side, axis=-1) for side in slots], axis=1)


def init(params: AdverseSelectionEstParams, n_assets: int, dtype=jnp.float32) -> AdverseSelectionEst:
    """No pending fills, no measurement, alpha = sigmoid(beta_0)."""
    z = jnp.zeros((n_assets,), dtype)
    never = jnp.zeros((n_assets,), bool)
    per_slot = lambda x: tuple(tuple(x for _ in range(params.n_slots)) for _ in range(2))  # noqa: E731
    a0 = jnp.broadcast_to(jax.nn.sigmoid(jnp.asarray(params.beta_0).astype(dtype)), (n_assets,))
    return AdverseSelectionEst(
        pending_price=per_slot(z),
        pending_due=per_slot(z),
        pending_live=per_slot(never),
        realized_bid=z,
        realized_ask=z,
        weight_bid=z,
        weight_ask=z,
        alpha=a0.astype(dtype),
        dropped=jnp.zeros((n_assets,), jnp.int32),
    )


def _clean(x, dtype):
    x = jnp.asarray(x).astype(dtype)
    return jnp.where(jnp.isfinite(x), x, 0.0)


def predict_alpha(
    params: AdverseSelectionEstParams,
    funding_divergence,
    vol_surprise,
    flow_imbalance,
    liq_intensity_ratio,
    dtype=jnp.float32,
) -> jax.Array:
    """The logistic model (see the module docstring); (A,) probability in (0, 1)."""
    c = lambda x: jnp.asarray(x).astype(dtype)  # noqa: E731
    z = (
        c(params.beta_0)
        + c(params.beta_funding) * jnp.abs(_clean(funding_divergence, dtype))
        + c(params.beta_vol) * _clean(vol_surprise, dtype)
        + c(params.beta_flow) * jnp.abs(_clean(flow_imbalance, dtype))
        + c(params.beta_liq) * jnp.maximum(_clean(liq_intensity_ratio, dtype) - 1.0, 0.0)
    )
    return jax.nn.sigmoid(z)


def update(
    params: AdverseSelectionEstParams,
    state: AdverseSelectionEst,
    obs: _obs.Observation,
    funding_divergence: jax.Array,
    vol_surprise: jax.Array,
    flow_imbalance: jax.Array,
    liq_intensity_ratio: jax.Array,
) -> AdverseSelectionEst:
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
    n_a = state.realized_bid.shape[0]
    n_s = len(state.pending_live[0])
    t = cast(obs.t)
    dt = jnp.maximum(cast(obs.dt), 0.0)
    mid = cast(obs.mid)
    mid_ok = obs.book_valid & (mid > 0.0) & jnp.isfinite(mid)
    d = jnp.broadcast_to(jnp.exp2(-dt / cast(params.as_half_life_s)), (n_a,))
    due_at = jnp.broadcast_to(t + cast(params.horizon_s), (n_a,))
    fills = ((obs.fill_bid_size, obs.fill_bid_price), (obs.fill_ask_size, obs.fill_ask_price))
    olds = ((state.weight_bid, state.realized_bid), (state.weight_ask, state.realized_ask))

    # 1. Measure the due slots (a falling mid is adverse after a bid fill: sign -1).
    lives, counts, sums = [], [], []
    for side, sign in ((0, -1.0), (1, 1.0)):
        price_s, due_s, live_s = state.pending_price[side], state.pending_due[side], state.pending_live[side]
        k = jnp.zeros((n_a,), dtype)
        ssum = jnp.zeros((n_a,), dtype)
        live = []
        for j in range(n_s):
            due_j = live_s[j] & (due_s[j] <= t) & mid_ok
            ref = jnp.where(due_j, price_s[j], 1.0)
            k = k + due_j.astype(dtype)
            ssum = ssum + jnp.where(due_j, sign * ((mid - ref) / ref), 0.0)
            live.append(live_s[j] & ~due_j)
        lives.append(tuple(live))
        counts.append(k)
        sums.append(ssum)
    # Each slot's update below reads every slot's liveness: computed once, not once per consumer.
    lives = dist.materialise(tuple(lives))

    # 2. Record this observation's fill event per side into the first free slot, else the oldest
    # pending one (the first of the earliest due times).
    slots, fulls, new_fills, ats = [], [], [], []
    for side, (size, fprice) in enumerate(fills):
        live, due_s = lives[side], state.pending_due[side]
        size, fprice = cast(size), cast(fprice)
        at = jnp.where(mid_ok, mid, fprice)
        new_fills.append(obs.fills_valid & (size > 0.0) & (at > 0.0) & jnp.isfinite(at))
        ats.append(at)
        slots.append(_small.argmin_of([jnp.where(live[j], due_s[j], -jnp.inf) for j in range(n_s)]))
        fulls.append(_small.all_of(live))
    slots = dist.materialise(tuple(slots))

    prices, dues, new_lives, weights, realized = [], [], [], [], []
    dropped = state.dropped
    for side in range(2):
        price_s, due_s, live = state.pending_price[side], state.pending_due[side], lives[side]
        pick = [(slots[side] == j) & new_fills[side] for j in range(n_s)]
        prices.append(tuple(jnp.where(pick[j], ats[side], price_s[j]).astype(dtype) for j in range(n_s)))
        dues.append(tuple(jnp.where(pick[j], due_at, due_s[j]).astype(dtype) for j in range(n_s)))
        new_lives.append(tuple(live[j] | pick[j] for j in range(n_s)))
        dropped = dropped + (new_fills[side] & fulls[side]).astype(jnp.int32)
        w_old, r_old = olds[side]
        k, ssum = counts[side], sums[side]
        w_old = w_old * d
        w_new = w_old + k
        realized.append(jnp.where(k > 0, (w_old * r_old + ssum) / jnp.where(w_new > 0, w_new, 1.0), r_old))
        weights.append(w_new)

    # 3. Alpha.
    alpha = predict_alpha(params, funding_divergence, vol_surprise, flow_imbalance, liq_intensity_ratio, dtype)
    return AdverseSelectionEst(
        pending_price=tuple(prices),
        pending_due=tuple(dues),
        pending_live=tuple(new_lives),
        realized_bid=realized[0].astype(dtype),
        realized_ask=realized[1].astype(dtype),
        weight_bid=weights[0].astype(dtype),
        weight_ask=weights[1].astype(dtype),
        alpha=jnp.broadcast_to(alpha, (n_a,)).astype(dtype),
        dropped=dropped,
    )


def realized_adverse_selection(state: AdverseSelectionEst) -> jax.Array:
    """(A,) the spec's summary ``(|realized_bid| + |realized_ask|) / 2``, fraction of mid."""
    return 0.5 * (jnp.abs(state.realized_bid) + jnp.abs(state.realized_ask))


def spread_adjustment(params: AdverseSelectionEstParams, state: AdverseSelectionEst) -> jax.Array:
    """(A,) extra spread to cover adverse selection, fraction of mid:
    ``alpha * realized_adverse_selection * safety``."""
    return state.alpha * realized_adverse_selection(state) * jnp.asarray(params.safety).astype(state.alpha.dtype)
