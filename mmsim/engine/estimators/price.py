"""Price estimator: mid, log returns, drift and jump detection (spec Part 1, engine side).

Equations, units, the discretisation over a step and the known biases: ``docs/MODEL.md``, section 1.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from mmsim._pytree import Check, pytree_dataclass, static_field
from mmsim.engine.estimators import _ewma

#: Default drift half-life: the spec's per-update decay 0.99 at one update per second (68.97 s).
DEFAULT_DRIFT_HALF_LIFE_S = _ewma.per_update_to_half_life(0.99, 1.0)
#: Default half-life of the jump-detection variance: a 5-minute flat window (103.97 s).
DEFAULT_RET_VAR_HALF_LIFE_S = _ewma.window_half_life(300.0)
#: Intervals below this many seconds are treated as this (division guard).
MIN_DT_S = 1e-9
#: Counters saturate here (int32).
COUNT_MAX = 2**30


@pytree_dataclass
class PriceEstParams:
    """Parameters of the price estimator (scalars).

    Attributes:
        drift_half_life_s: half-life of the drift EWMA, seconds (> 0).
        ret_var_half_life_s: half-life of the jump-detection variance EWMA, seconds (> 0).
        jump_threshold: a return is a jump if it exceeds this many standard deviations (> 0).
        min_ret_var: floor of the variance used in the jump test, log-price^2 per second (>= 0);
            it keeps a price that has not moved yet from flagging every later tick as a jump.
        jump_min_ticks: a return of at most this many price ticks is never a jump (>= 0). The
            price moves on a grid: over a short interval, or in a quiet market, sigma sqrt(dt) is
            below a tick, and without this floor each tick move would read as a jump, be left out
            of the variance, and the variance would collapse (docs/MODEL.md section 1).
        jump_min_obs: returns needed before jumps are tested (static, >= 1).
        jump_min_s: and seconds of returns (the variance's EWMA weight of that long, >= 0): ten
            returns of a book that updates every 60 ms, most of them zero, would otherwise start
            the test on a variance near 0, after which every move is a jump and is left out.
        return_window_s: returns are measured over at least this many seconds (>= 0): book
            updates closer together are folded into one return (log returns add). The drift,
            the variance, the jump test and the volatility estimator then see the same returns
            whatever the observation cadence; finer returns are dominated by the tick grid (90 %
            of 60-ms returns of BTCUSDT are zero) and a jump test on them is not the same test.
        winsorize_jumps: add a jump to ``ret_var`` clipped at the threshold instead of
            skipping it (static).
        returns: track returns, drift, variance and jumps (static). False keeps the mid only
            (``mid``, ``initialised``; every other field stays at its initial value), for a lite
            engine whose policy is given its volatility, such as the as2008 experiment with the
            paper's sigma; :func:`mmsim.config.build` refuses it anywhere else.
    """

    drift_half_life_s: jax.Array | float = DEFAULT_DRIFT_HALF_LIFE_S
    ret_var_half_life_s: jax.Array | float = DEFAULT_RET_VAR_HALF_LIFE_S
    jump_threshold: jax.Array | float = 4.0
    min_ret_var: jax.Array | float = 1e-12
    jump_min_ticks: jax.Array | float = 2.0
    jump_min_s: jax.Array | float = 5.0
    return_window_s: jax.Array | float = 1.0
    jump_min_obs: int = static_field(default=10)
    winsorize_jumps: bool = static_field(default=False)
    returns: bool = static_field(default=True)

    def validate(self) -> None:
        c = Check(self)
        c.positive("drift_half_life_s", "half-life of the drift EWMA, seconds")
        c.positive("ret_var_half_life_s", "half-life of the return-variance EWMA, seconds")
        c.positive("jump_threshold", "standard deviations")
        c.nonneg("min_ret_var", "variance floor, log-price^2 per second")
        c.nonneg("jump_min_ticks", "price ticks")
        c.nonneg("jump_min_s", "seconds")
        c.nonneg("return_window_s", "seconds")
        c.require(
            isinstance(self.jump_min_obs, int) and self.jump_min_obs >= 1,
            "jump_min_obs",
            "must be an integer >= 1 (returns before jumps are tested)",
        )
        c.require(isinstance(self.winsorize_jumps, bool), "winsorize_jumps", "must be a bool")
        c.require(isinstance(self.returns, bool), "returns", "must be a bool")


class PriceEst(NamedTuple):
    mid: jax.Array  # (A,) last valid mid, quote currency per base unit (0 before any)
    log_mid: jax.Array  # (A,) log(mid) at the start of the return being measured
    last_ret: jax.Array  # (A,) log return of the last valid book update (0 before any)
    ret_dt: jax.Array  # (A,) seconds spanned by last_ret
    fresh: jax.Array  # (A,) bool: this observation completed last_ret (return_window_s or more)
    drift: jax.Array  # (A,) EWMA of r / dt, log-price per second
    ret_var: jax.Array  # (A,) normalised EWMA of r^2 / dt, log-price^2 per second
    ret_var_wsum: jax.Array  # (A,) total EWMA weight of ret_var (0 before any return, -> 1)
    is_jump: jax.Array  # (A,) bool: last_ret was flagged as a jump
    n_obs: jax.Array  # (A,) int32 valid mids seen (returns = n_obs - 1), saturating
    since_s: jax.Array  # (A,) seconds since the start of the return being measured
    initialised: jax.Array  # (A,) bool: a valid mid has been seen


def init(params: PriceEstParams, n_assets: int, dtype=jnp.float32) -> PriceEst:
    """Empty state: no mid yet."""
    z = jnp.zeros((n_assets,), dtype)
    f = jnp.zeros((n_assets,), bool)
    return PriceEst(
        mid=z,
        log_mid=z,
        last_ret=z,
        ret_dt=z,
        fresh=f,
        drift=z,
        ret_var=z,
        ret_var_wsum=z,
        is_jump=f,
        n_obs=jnp.zeros((n_assets,), jnp.int32),
        since_s=z,
        initialised=f,
    )


def jump_bound(params: PriceEstParams, var_before: jax.Array, dt: jax.Array, mid: jax.Array, tick) -> jax.Array:
    """The largest log return that is not a jump: ``jump_threshold`` standard deviations over
    ``dt`` seconds, and never less than ``jump_min_ticks`` price ticks (``tick``, quote currency,
    0: no grid) at ``mid``."""
    dtype = var_before.dtype
    k = jnp.asarray(params.jump_threshold, dtype)
    grid = jnp.asarray(params.jump_min_ticks, dtype) * jnp.asarray(tick, dtype) / jnp.where(mid > 0, mid, 1.0)
    return jnp.maximum(k * jnp.sqrt(var_before * dt), grid)


def update(params: PriceEstParams, state: PriceEst, obs, tick=0.0) -> PriceEst:
    """Fold one observation into the state (uses ``obs.mid`` where ``obs.book_valid``).

    Args:
        params: :class:`PriceEstParams`.
        state: :class:`PriceEst`.
        obs: :class:`~mmsim.observation.Observation`; ``obs.dt`` seconds since the previous
            observation, ``obs.mid`` (A,) quote currency.
        tick: the price grid, quote currency ((A,) or scalar; 0: none), for the jump test's floor.
    """
    dtype = state.mid.dtype
    mid = jnp.asarray(obs.mid, dtype)
    ok = jnp.asarray(obs.book_valid) & jnp.isfinite(mid) & (mid > 0)
    if not params.returns:
        return state._replace(mid=jnp.where(ok, mid, state.mid), initialised=state.initialised | ok)
    log_mid = jnp.log(jnp.where(ok, mid, 1.0))
    dt = state.since_s + jnp.asarray(obs.dt, dtype)  # seconds spanned by the return
    # A return is complete once it spans return_window_s (to a relative 1e-3: a recorded
    # cadence of 1 s is 1 s to float precision, not exactly); until then the book updates fold in.
    long_enough = dt >= jnp.asarray(params.return_window_s, dtype) * (1.0 - 1e-3)
    fresh = ok & state.initialised & long_enough
    r = jnp.where(fresh, log_mid - state.log_mid, 0.0)
    dt_safe = jnp.maximum(dt, MIN_DT_S)

    # Drift: EWMA of r / dt, computed as (w / dt) r.
    hl_d = jnp.asarray(params.drift_half_life_s, dtype)
    w_d = _ewma.weight(dt_safe, hl_d)
    drift = jnp.where(fresh, state.drift * (1.0 - w_d) + (w_d / dt_safe) * r, state.drift)

    # Jump test against the variance before this return.
    k = jnp.asarray(params.jump_threshold, dtype)
    var_before = jnp.maximum(state.ret_var, jnp.asarray(params.min_ret_var, dtype))
    # The EWMA's total weight after jump_min_s seconds of returns (1 - 2^(-s / half-life)).
    warm = _ewma.weight(jnp.asarray(params.jump_min_s, dtype), jnp.asarray(params.ret_var_half_life_s, dtype))
    active = ((state.n_obs - 1) >= params.jump_min_obs) & (state.ret_var_wsum >= warm)
    is_jump = fresh & active & (jnp.abs(r) > jump_bound(params, var_before, dt_safe, mid, tick))

    # Return variance: normalised EWMA of r^2 / dt.
    x = r * r / dt_safe
    if params.winsorize_jumps:
        x = jnp.where(is_jump, k * k * var_before, x)
        add = fresh
    else:
        add = fresh & ~is_jump
    w_v = _ewma.weight(dt_safe, jnp.asarray(params.ret_var_half_life_s, dtype))
    wsum, g = _ewma.normalised(state.ret_var_wsum, w_v)
    ret_var = jnp.where(add, state.ret_var + g * (x - state.ret_var), state.ret_var)
    ret_var_wsum = jnp.where(add, wsum, state.ret_var_wsum)

    start = ok & (fresh | ~state.initialised)  # the next return starts here
    return PriceEst(
        mid=jnp.where(ok, mid, state.mid),
        log_mid=jnp.where(start, log_mid, state.log_mid),
        last_ret=jnp.where(fresh, r, state.last_ret),
        ret_dt=jnp.where(fresh, dt, state.ret_dt),
        fresh=fresh,
        drift=drift,
        ret_var=ret_var,
        ret_var_wsum=ret_var_wsum,
        is_jump=jnp.where(fresh, is_jump, state.is_jump),
        n_obs=jnp.where(ok, jnp.minimum(state.n_obs + 1, COUNT_MAX), state.n_obs),
        since_s=jnp.where(start, jnp.zeros_like(dt), dt),
        initialised=state.initialised | ok,
    )


def winsorised_return(params: PriceEstParams, before: PriceEst, after: PriceEst, tick=0.0) -> jax.Array:
    """The last return (log price, ``(A,)``) with a detected jump clipped at the jump bound
    (:func:`jump_bound`: ``jump_threshold * sqrt(ret_var_before * dt)``, at least
    ``jump_min_ticks`` ticks): what the volatility estimators are fed, so that one jump does not
    read as a volatility regime while a sustained rise still passes, clipped. ``before`` and
    ``after`` are the states before and after :func:`update`."""
    var_before = jnp.maximum(before.ret_var, jnp.asarray(params.min_ret_var, before.ret_var.dtype))
    cap = jump_bound(params, var_before, jnp.maximum(after.ret_dt, 1e-9), after.mid, tick)
    return jnp.where(after.is_jump, jnp.clip(after.last_ret, -cap, cap), after.last_ret)


def sigma(state: PriceEst) -> jax.Array:
    """(A,) volatility of the jump-detection estimate, log-price per sqrt(second)."""
    return jnp.sqrt(jnp.maximum(state.ret_var, 0.0))
