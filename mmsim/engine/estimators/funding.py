"""Funding estimator: current rates, long-term mean, prediction, arbitrage, cost (spec Part 9).

Equations, units, the discretisation over a step and the known biases: ``docs/MODEL.md``, section 7.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from mmsim._pytree import Check, pytree_dataclass, static_field
from mmsim.engine.estimators import _ewma


@pytree_dataclass
class FundingEstParams:
    """Parameters of the funding estimator.

    Attributes:
        interval_s: settlement interval, seconds (> 0; 28800 = 8 h).
        mean_reversion: speed kappa of the rate toward its long-term mean, per second (>= 0).
        long_run_half_life_s: half-life of the long-term-mean EWMA, seconds (> 0).
        arb_threshold: |rate - ref_rate| above which the arbitrage signal is on, per interval
            (>= 0; 5e-4 = 0.05 %).
        exact_mean_reversion: predict with the exact mean-reverting expectation
            ``f + (theta - f)(1 - e^{-kappa tau})`` (True, default), or the spec's first-order
            ``f + kappa (theta - f) tau`` (False), which overshoots theta when kappa tau > 1
            (static).
    """

    interval_s: jax.Array | float = 28_800.0
    mean_reversion: jax.Array | float = 0.1 / 3600.0
    long_run_half_life_s: jax.Array | float = _ewma.window_half_life(86_400.0)
    arb_threshold: jax.Array | float = 5e-4
    exact_mean_reversion: bool = static_field(default=True)

    def validate(self) -> None:
        c = Check(self)
        c.positive("interval_s", "settlement interval, seconds")
        c.nonneg("mean_reversion", "per second")
        c.positive("long_run_half_life_s", "half-life, seconds")
        c.nonneg("arb_threshold", "rate divergence, per interval")
        c.require(isinstance(self.exact_mean_reversion, bool), "exact_mean_reversion", "must be a bool")


class FundingEst(NamedTuple):
    rate: jax.Array  # (A,) current (predicted) rate of this venue, per interval
    ref_rate: jax.Array  # (A,) reference venue's rate, per interval
    long_term_mean: jax.Array  # (A,) normalised EWMA of rate, per interval
    next_settlement_s: jax.Array  # (A,) seconds to the next settlement
    last_settled_rate: jax.Array  # (A,) rate applied at the last settlement, per interval
    wsum: jax.Array  # (A,) total EWMA weight of long_term_mean (0 -> 1)
    since_s: jax.Array  # (A,) seconds since the last valid funding update
    initialised: jax.Array  # (A,) bool: a valid funding update has been seen


def init(params: FundingEstParams, n_assets: int, dtype=jnp.float32) -> FundingEst:
    """Rates 0, next settlement one interval away, nothing seen."""
    z = jnp.zeros((n_assets,), dtype)
    return FundingEst(
        rate=z,
        ref_rate=z,
        long_term_mean=z,
        next_settlement_s=jnp.broadcast_to(jnp.asarray(params.interval_s, dtype), (n_assets,)),
        last_settled_rate=z,
        wsum=z,
        since_s=z,
        initialised=jnp.zeros((n_assets,), bool),
    )


def update(params: FundingEstParams, state: FundingEst, obs) -> FundingEst:
    """Fold one observation into the state.

    Args:
        params: :class:`FundingEstParams`.
        state: :class:`FundingEst`.
        obs: :class:`~mmsim.observation.Observation`: ``funding_rate``, ``funding_ref``,
            ``settled_rate`` (A,) per interval, ``funding_settled`` (A,) bool and
            ``next_funding_s`` (A,) seconds, where ``funding_valid``; ``dt`` seconds.
    """
    dtype = state.rate.dtype
    f = jnp.asarray(obs.funding_rate, dtype)
    f_ref = jnp.asarray(obs.funding_ref, dtype)
    nxt = jnp.asarray(obs.next_funding_s, dtype)
    settled_rate = jnp.asarray(obs.settled_rate, dtype)
    ok = jnp.asarray(obs.funding_valid) & jnp.isfinite(f) & jnp.isfinite(f_ref) & jnp.isfinite(nxt)
    settled = ok & jnp.asarray(obs.funding_settled) & jnp.isfinite(settled_rate)
    obs_dt = jnp.asarray(obs.dt, dtype)
    dt = state.since_s + obs_dt

    w = _ewma.weight(dt, jnp.asarray(params.long_run_half_life_s, dtype))
    wsum, g = _ewma.normalised(state.wsum, w)
    ltm = jnp.where(ok, state.long_term_mean + g * (f - state.long_term_mean), state.long_term_mean)

    interval = jnp.asarray(params.interval_s, dtype)
    countdown = jnp.mod(state.next_settlement_s - obs_dt, interval)
    return FundingEst(
        rate=jnp.where(ok, f, state.rate),
        ref_rate=jnp.where(ok, f_ref, state.ref_rate),
        long_term_mean=ltm,
        next_settlement_s=jnp.where(ok, jnp.maximum(nxt, 0.0), countdown),
        last_settled_rate=jnp.where(settled, settled_rate, state.last_settled_rate),
        wsum=jnp.where(ok, wsum, state.wsum),
        since_s=jnp.where(ok, jnp.zeros_like(dt), dt),
        initialised=state.initialised | ok,
    )


def predicted_rate(params: FundingEstParams, state: FundingEst) -> jax.Array:
    """(A,) rate expected at the next settlement, per interval: the current rate ``f`` reverting
    toward ``theta = long_term_mean`` at ``kappa = mean_reversion`` per second over
    ``tau = next_settlement_s`` seconds; ``f + (theta - f)(1 - e^{-kappa tau})``, or the spec's
    ``f + kappa (theta - f) tau`` when ``exact_mean_reversion`` is False."""
    dtype = state.rate.dtype
    kt = jnp.asarray(params.mean_reversion, dtype) * state.next_settlement_s
    frac = -jnp.expm1(-kt) if params.exact_mean_reversion else kt
    return state.rate + (state.long_term_mean - state.rate) * frac


def divergence(state: FundingEst) -> jax.Array:
    """(A,) ``|rate - ref_rate|``, per interval."""
    return jnp.abs(state.rate - state.ref_rate)


def arbitrage_signal(params: FundingEstParams, state: FundingEst) -> jax.Array:
    """(A,) ``rate - ref_rate`` (per interval) where ``|rate - ref_rate| > arb_threshold``, else 0.
    Positive: longs pay more here than on the reference venue (short here, long there). The spec
    returns the absolute spread; the sign is kept here, its absolute value is the spec's."""
    d = state.rate - state.ref_rate
    return jnp.where(jnp.abs(d) > jnp.asarray(params.arb_threshold, d.dtype), d, 0.0)


def expected_funding_cost(
    params: FundingEstParams, state: FundingEst, position: jax.Array, mid: jax.Array, holding_s: jax.Array | float
) -> jax.Array:
    """(A,) funding paid over ``holding_s`` seconds at the current rate, quote currency:
    ``rate * |position| * mid * (holding_s / interval_s) * sign(position)`` (positive = we pay:
    a long pays a positive rate, a short receives it). ``position`` (A,) base units (signed),
    ``mid`` (A,) quote currency per base unit. The spec's ``holding_hours / 8`` is
    ``holding_s / interval_s``."""
    dtype = state.rate.dtype
    pos = jnp.asarray(position, dtype)
    n_int = jnp.asarray(holding_s, dtype) / jnp.asarray(params.interval_s, dtype)
    return state.rate * jnp.abs(pos) * jnp.asarray(mid, dtype) * n_int * jnp.sign(pos)
