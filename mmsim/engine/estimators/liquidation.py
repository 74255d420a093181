"""Liquidation-cascade estimator: marked Hawkes intensity, cascade state and direction (spec Part 10).

Equations, units, the discretisation over a step and the known biases: ``docs/MODEL.md``, section 6.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mmsim import observation as _obs
from mmsim._pytree import Check, pytree_dataclass
from mmsim.engine.estimators import _ewma


@pytree_dataclass
class LiquidationEstParams:
    """Liquidation estimator parameters; each field is a scalar or a per-asset ``(A,)`` array.

    Attributes:
        mu: baseline liquidation intensity, both sides together, per second (> 0: the multipliers
            are ratios to it).
        alpha: intensity jump per base unit of liquidated volume (either side), per second.
        beta: decay rate of the excitation, per second.
        enter_mult: a cascade starts when the intensity exceeds ``enter_mult * mu``.
        exit_mult: a cascade ends when the intensity falls below ``exit_mult * mu``
            (``1 < exit_mult <= enter_mult``: hysteresis).
        pull_mult: quotes are pulled during a cascade whose ``lambda / mu`` exceeds this.
        direction_half_life_s: half-life of the liquidated-volume EWMAs, seconds (default: the
            equivalent of the spec's 60 s window).
        direction_ratio: a side dominates when its volume rate exceeds ``direction_ratio`` times
            the other's (>= 1).
    """

    mu: jax.Array | float = 2e-3
    alpha: jax.Array | float = 0.05
    beta: jax.Array | float = 0.1
    enter_mult: jax.Array | float = 3.0
    exit_mult: jax.Array | float = 1.5
    pull_mult: jax.Array | float = 5.0
    direction_half_life_s: jax.Array | float = _ewma.window_half_life(60.0)
    direction_ratio: jax.Array | float = 1.5

    def validate(self) -> None:
        c = Check(self)
        c.positive("mu", "baseline liquidation intensity, per second")
        c.nonneg("alpha", "intensity jump per base unit liquidated, per second")
        c.positive("beta", "excitation decay rate, per second")
        c.positive("enter_mult", "cascade start threshold, multiple of mu")
        ex = c.finite("exit_mult", "cascade end threshold, multiple of mu")
        en = c.value("enter_mult")
        c.require(
            bool(np.all(ex > 1.0)),
            "exit_mult",
            "must be > 1 (the intensity is never below mu, so a cascade would never end)",
        )
        c.require(bool(np.all(ex <= en)), "exit_mult", "must be <= enter_mult (hysteresis)")
        c.positive("pull_mult", "quote-pulling threshold, multiple of mu")
        c.positive("direction_half_life_s", "EWMA half-life, seconds")
        d = c.finite("direction_ratio", "dominance ratio")
        c.require(bool(np.all(d >= 1.0)), "direction_ratio", "must be >= 1 (dominance ratio)")


class LiquidationEst(NamedTuple):
    ex: jax.Array  # (A,) intensity minus mu, per second
    active: jax.Array  # (A,) bool: a cascade is on
    vol_long: jax.Array  # (A,) EWMA of long volume liquidated, base units per second
    vol_short: jax.Array  # (A,) EWMA of short volume liquidated, base units per second


def init(params: LiquidationEstParams, n_assets: int, dtype=jnp.float32) -> LiquidationEst:
    """No excitation, no cascade, no liquidated volume."""
    z = jnp.zeros((n_assets,), dtype)
    return LiquidationEst(ex=z, active=jnp.zeros((n_assets,), bool), vol_long=z, vol_short=z)


def _rate_update(old: jax.Array, amount: jax.Array, dt: jax.Array, half_life, valid) -> jax.Array:
    """EWMA of a rate (``amount`` per second over an interval of ``dt`` seconds):
    ``old + w (amount / dt - old)`` with ``w = 1 - 2^(-dt / half_life)``, computed as
    ``old (1 - w) + amount (w / dt)`` with ``w / dt -> ln 2 / half_life`` as dt -> 0, so a zero or
    tiny ``dt`` gives no NaN; unchanged where ``valid`` is False."""
    w = _ewma.weight(dt, half_life)
    pos = dt > 0
    w_dt = jnp.where(pos, w / jnp.where(pos, dt, 1.0), math.log(2.0) / half_life)
    return jnp.where(valid, old * (1.0 - w) + amount * w_dt, old)


def update(params: LiquidationEstParams, state: LiquidationEst, obs: _obs.Observation) -> LiquidationEst:
    """Fold one observation in: uses ``obs.dt`` (seconds) and, where ``obs.liq_valid``,
    ``obs.liq_long`` and ``obs.liq_short`` (base units; negative values are treated as 0)."""
    dtype = state.ex.dtype
    cast = lambda x: jnp.asarray(x).astype(dtype)  # noqa: E731
    shape = state.ex.shape
    dt = jnp.maximum(cast(obs.dt), 0.0)
    valid = obs.liq_valid
    ll = jnp.where(valid, jnp.maximum(cast(obs.liq_long), 0.0), 0.0)
    ls = jnp.where(valid, jnp.maximum(cast(obs.liq_short), 0.0), 0.0)
    ex = state.ex * jnp.exp(-cast(params.beta) * dt) + cast(params.alpha) * (ll + ls)
    mu = cast(params.mu)
    lam = mu + ex
    active = (lam > cast(params.enter_mult) * mu) | (state.active & ~(lam < cast(params.exit_mult) * mu))
    hl = cast(params.direction_half_life_s)
    vl = _rate_update(state.vol_long, ll, dt, hl, valid)
    vs = _rate_update(state.vol_short, ls, dt, hl, valid)
    b = lambda x: jnp.broadcast_to(x, shape)  # noqa: E731
    return LiquidationEst(
        ex=b(ex).astype(dtype), active=b(active), vol_long=b(vl).astype(dtype), vol_short=b(vs).astype(dtype)
    )


def intensity(params: LiquidationEstParams, state: LiquidationEst) -> jax.Array:
    """(A,) liquidation intensity, both sides, per second: ``mu + ex``."""
    return jnp.asarray(params.mu).astype(state.ex.dtype) + state.ex


def tail_risk_multiplier(params: LiquidationEstParams, state: LiquidationEst) -> jax.Array:
    """(A,) ``max(1, lambda / mu)``, dimensionless: 1 = normal, > 1 elevated cascade risk."""
    mu = jnp.asarray(params.mu).astype(state.ex.dtype)
    return jnp.maximum(1.0, intensity(params, state) / mu)


def should_pull_quotes(params: LiquidationEstParams, state: LiquidationEst) -> jax.Array:
    """(A,) bool: a cascade is on and ``lambda / mu > pull_mult``."""
    pull = jnp.asarray(params.pull_mult).astype(state.ex.dtype)
    return state.active & (tail_risk_multiplier(params, state) > pull)


def cascade_direction(params: LiquidationEstParams, state: LiquidationEst) -> jax.Array:
    """(A,) int32 in {-1, 0, +1}: -1 = downward cascade (long liquidations exceed
    ``direction_ratio`` times the short ones), +1 = upward (the reverse), 0 otherwise or when no
    cascade is on."""
    r = jnp.asarray(params.direction_ratio).astype(state.ex.dtype)
    down = state.vol_long > r * state.vol_short
    up = state.vol_short > r * state.vol_long
    d = jnp.where(down, -1, jnp.where(up, 1, 0)).astype(jnp.int32)
    return jnp.where(state.active, d, 0).astype(jnp.int32)
