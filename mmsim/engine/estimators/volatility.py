"""Volatility estimator: RiskMetrics variance, realized variances, regime, leverage (spec Part 2).

Equations, units, the discretisation over a step and the known biases: ``docs/MODEL.md``, section 2.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mmsim import _small
from mmsim import distributions as dist
from mmsim._pytree import Check, pytree_dataclass, static_field
from mmsim.engine.estimators import _ewma
from mmsim.regimes import REGIME_THRESHOLDS

#: Flat windows (seconds) of the realized variances rv_1m, rv_5m, rv_1h.
RV_WINDOWS_S = (60.0, 300.0, 3600.0)
#: Estimates a regime may be classified on.
REGIME_SOURCES = ("var", "rv_1m", "rv_5m", "rv_1h")
#: Regime indices with the default thresholds.
LOW, NORMAL, HIGH, EXTREME = 0, 1, 2, 3
#: Intervals below this many seconds are treated as this (division guard).
MIN_DT_S = 1e-9
#: Default variance per second of the Normal regime: sigma = 1e-4 per sqrt(second), about
#: 56 % a year.
DEFAULT_LONG_RUN_VAR = 1e-8


@pytree_dataclass
class VolEstParams:
    """Parameters of the volatility estimator.

    Attributes:
        ewma_lambda: RiskMetrics decay per reference interval, in (0, 1) (0.94).
        ewma_interval_s: reference interval of ``ewma_lambda``, seconds (> 0).
        long_run_var: the Normal regime's variance (theta_normal), log-price^2 per second (> 0);
            scalar or (A,). The regime ratios are ``sqrt(v / long_run_var)``; also the prior
            before any return.
        regime_thresholds: (R - 1,) increasing ratios of volatility to ``sqrt(long_run_var)``
            separating the R regimes (default 0.5, 1.5, 3.0: Low / Normal / High / Extreme).
        regime_kappa: (R,) mean-reversion speed of the variance in each regime, per second
            (>= 0), or (A, R).
        regime_theta: (R,) long-run variance of each regime, log-price^2 per second (> 0), or
            (A, R); keep ``regime_theta[NORMAL]`` equal to ``long_run_var``.
        min_var: floor of the variance estimates, log-price^2 per second (> 0).
        leverage_half_life_s: half-life of the leverage-effect EWMAs, seconds (> 0).
        regime_source: estimate the regime is classified on, one of ``REGIME_SOURCES``
            (static; the spec's "rv_1h").
    """

    ewma_lambda: jax.Array | float = 0.94
    ewma_interval_s: jax.Array | float = 1.0
    long_run_var: jax.Array | float = DEFAULT_LONG_RUN_VAR
    regime_thresholds: jax.Array | np.ndarray = dataclasses.field(default_factory=lambda: np.asarray(REGIME_THRESHOLDS))
    regime_kappa: jax.Array | np.ndarray = dataclasses.field(
        default_factory=lambda: np.asarray([1 / 3600, 1 / 3600, 1 / 1800, 1 / 600])
    )
    regime_theta: jax.Array | np.ndarray = dataclasses.field(
        default_factory=lambda: DEFAULT_LONG_RUN_VAR * np.asarray([0.16, 1.0, 4.0, 16.0])
    )
    min_var: jax.Array | float = 1e-16
    leverage_half_life_s: jax.Array | float = _ewma.window_half_life(3600.0)
    regime_source: str = static_field(default="rv_1h")

    def validate(self) -> None:
        c = Check(self)
        c.between("ewma_lambda", 0.0, 1.0, "RiskMetrics decay per interval", open_lo=True, open_hi=True)
        c.positive("ewma_interval_s", "reference interval, seconds")
        c.positive("long_run_var", "Normal-regime variance, log-price^2 per second")
        thr = c.finite("regime_thresholds", "volatility ratios")
        c.require(thr.ndim == 1 and thr.size >= 1, "regime_thresholds", "must be a 1-d array of >= 1 ratios")
        c.require(
            bool(np.all(thr > 0)) and bool(np.all(np.diff(thr) > 0)),
            "regime_thresholds",
            "must be positive and strictly increasing",
        )
        n_reg = thr.size + 1
        for field, rule in (("regime_kappa", "nonneg"), ("regime_theta", "positive")):
            v = c.finite(field)
            c.require(
                v.ndim in (1, 2) and v.shape[-1] == n_reg,
                field,
                f"must be (R,) or (A, R) with R = len(regime_thresholds) + 1 = {n_reg}",
            )
            getattr(c, rule)(field, "per second" if field == "regime_kappa" else "variance per second")
        c.positive("min_var", "variance floor, log-price^2 per second")
        c.positive("leverage_half_life_s", "half-life, seconds")
        c.require(self.regime_source in REGIME_SOURCES, "regime_source", f"must be one of {REGIME_SOURCES}")

    @property
    def n_regimes(self) -> int:
        return int(np.shape(self.regime_thresholds)[0]) + 1


class VolEst(NamedTuple):
    var: jax.Array  # (A,) RiskMetrics EWMA of r^2/dt, log-price^2 per second
    rv_1m: jax.Array  # (A,) realized variance, 1-minute-window EWMA, per second
    rv_5m: jax.Array  # (A,) 5-minute-window EWMA, per second
    rv_1h: jax.Array  # (A,) 1-hour-window EWMA, per second
    wsum: jax.Array  # (4, A) total weights of var, rv_1m, rv_5m, rv_1h (0 -> 1)
    regime: jax.Array  # () int32 market-wide regime
    regime_duration: jax.Array  # () seconds since the regime last changed
    lev_cov: jax.Array  # (A,) EWMA of x y (leverage pairs)
    lev_var_r: jax.Array  # (A,) EWMA of x^2
    lev_var_dv: jax.Array  # (A,) EWMA of y^2
    prev_x: jax.Array  # (A,) last return / sqrt(its dt), per sqrt(second)
    since_s: jax.Array  # (A,) seconds since the asset's last return
    initialised: jax.Array  # (A,) bool: a return has been seen


def _normal_regime(params: VolEstParams) -> jax.Array:
    """Regime index of ratio 1 (the Normal regime)."""
    return jnp.sum(1.0 >= jnp.asarray(params.regime_thresholds)).astype(jnp.int32)


def init(params: VolEstParams, n_assets: int, dtype=jnp.float32) -> VolEst:
    """Variances at the prior ``long_run_var``, Normal regime, no returns."""
    prior = jnp.broadcast_to(jnp.asarray(params.long_run_var, dtype), (n_assets,))
    z = jnp.zeros((n_assets,), dtype)
    return VolEst(
        var=prior,
        rv_1m=prior,
        rv_5m=prior,
        rv_1h=prior,
        wsum=jnp.zeros((4, n_assets), dtype),
        regime=_normal_regime(params),
        regime_duration=jnp.zeros((), dtype),
        lev_cov=z,
        lev_var_r=z,
        lev_var_dv=z,
        prev_x=z,
        since_s=z,
        initialised=jnp.zeros((n_assets,), bool),
    )


def update(params: VolEstParams, state: VolEst, obs, log_ret: jax.Array, ret_valid: jax.Array) -> VolEst:
    """Fold one observation's returns into the state.

    Args:
        params: :class:`VolEstParams`.
        state: :class:`VolEst`.
        obs: :class:`~mmsim.observation.Observation` (only ``obs.dt``, seconds, is used).
        log_ret: (A,) log return of the last book update, from the price estimator
            (``PriceEst.last_ret``).
        ret_valid: (A,) bool, True where ``log_ret`` is new at this observation
            (``PriceEst.fresh``).
    """
    dtype = state.var.dtype
    valid = jnp.asarray(ret_valid) & jnp.isfinite(log_ret)
    r = jnp.where(valid, jnp.asarray(log_ret, dtype), 0.0)
    obs_dt = jnp.asarray(obs.dt, dtype)
    dt = state.since_s + obs_dt
    dt_safe = jnp.maximum(dt, MIN_DT_S)
    x = r * r / dt_safe  # sample of the variance per second
    min_var = jnp.asarray(params.min_var, dtype)

    # RiskMetrics weight and the realized-variance weights, stacked (4, A).
    lam = jnp.asarray(params.ewma_lambda, dtype)
    w_rm = -dist.expm1(dt_safe / jnp.asarray(params.ewma_interval_s, dtype) * jnp.log(lam))
    w_rv = [_ewma.weight(dt_safe, jnp.asarray(_ewma.window_half_life(win), dtype)) for win in RV_WINDOWS_S]
    w = jnp.stack([w_rm] + w_rv)
    old = jnp.stack([state.var, state.rv_1m, state.rv_5m, state.rv_1h])
    wsum, g = _ewma.normalised(state.wsum, w)
    new = jnp.maximum(old + g * (x - old), min_var)
    new = jnp.where(valid, new, old)
    wsum = jnp.where(valid, wsum, state.wsum)
    var, rv_1m, rv_5m, rv_1h = new[0], new[1], new[2], new[3]

    # Leverage pairs: previous standardised return with this return's innovation.
    pair = valid & state.initialised
    y = x - state.var
    w_lev = _ewma.weight(dt_safe, jnp.asarray(params.leverage_half_life_s, dtype))
    xp = state.prev_x
    lev_cov = jnp.where(pair, state.lev_cov + w_lev * (xp * y - state.lev_cov), state.lev_cov)
    lev_var_r = jnp.where(pair, state.lev_var_r + w_lev * (xp * xp - state.lev_var_r), state.lev_var_r)
    lev_var_dv = jnp.where(pair, state.lev_var_dv + w_lev * (y * y - state.lev_var_dv), state.lev_var_dv)
    prev_x = jnp.where(valid, r / jnp.sqrt(dt_safe), state.prev_x)
    initialised = state.initialised | valid

    # Market-wide regime from the largest volatility ratio among assets with returns.
    src = {"var": var, "rv_1m": rv_1m, "rv_5m": rv_5m, "rv_1h": rv_1h}[params.regime_source]
    ratio2 = src / jnp.asarray(params.long_run_var, dtype)
    ratio2 = jnp.where(initialised, ratio2, 0.0)
    ratio2 = jnp.where(_small.any_last(initialised), _small.max_last(ratio2), 1.0)
    thr = jnp.asarray(params.regime_thresholds, dtype)
    regime = _small.sum_last((ratio2 >= thr * thr).astype(jnp.int32))
    changed = regime != state.regime
    duration = jnp.where(changed, jnp.zeros((), dtype), state.regime_duration + obs_dt)

    return VolEst(
        var=var,
        rv_1m=rv_1m,
        rv_5m=rv_5m,
        rv_1h=rv_1h,
        wsum=wsum,
        regime=regime,
        regime_duration=duration,
        lev_cov=lev_cov,
        lev_var_r=lev_var_r,
        lev_var_dv=lev_var_dv,
        prev_x=prev_x,
        since_s=jnp.where(valid, jnp.zeros_like(dt), dt),
        initialised=initialised,
    )


def sigma(state: VolEst) -> jax.Array:
    """(A,) current volatility ``sqrt(var)``, log-price per sqrt(second)."""
    return jnp.sqrt(jnp.maximum(state.var, 0.0))


def _regime_param(x, regime: jax.Array, dtype) -> jax.Array:
    """Entry ``regime`` of an (R,) or (A, R) regime parameter: () or (A,)."""
    return _small.take_last(jnp.asarray(x, dtype), regime)


def sigma_for_horizon(params: VolEstParams, state: VolEst, horizon_s: jax.Array | float) -> jax.Array:
    """(A,) volatility of the average variance expected over the next ``horizon_s`` seconds,
    log-price per sqrt(second), so that the variance of the log return over the horizon is
    ``sigma_for_horizon^2 * horizon_s``.

    With the current regime's ``kappa`` (per second) and ``theta`` (variance per second) and
    ``v0 = var``: ``E[int_0^h v dt] / h = theta + (v0 - theta) (1 - e^{-kappa h}) / (kappa h)``
    (the spec's formula). ``(1 - e^{-x}) / x`` is evaluated as ``-expm1(-x) / x`` and taken as 1
    at ``x = 0`` (``h -> 0`` or ``kappa = 0``), where the result is ``sqrt(v0)``.
    """
    dtype = state.var.dtype
    kappa = _regime_param(params.regime_kappa, state.regime, dtype)
    theta = _regime_param(params.regime_theta, state.regime, dtype)
    h = jnp.maximum(jnp.asarray(horizon_s, dtype), 0.0)
    xk = kappa * h
    pos = xk > 0
    frac = jnp.where(pos, -dist.expm1(-xk) / jnp.where(pos, xk, 1.0), 1.0)
    v = theta + (state.var - theta) * frac
    return jnp.sqrt(jnp.maximum(v, jnp.asarray(params.min_var, dtype)))


def leverage_corr(state: VolEst) -> jax.Array:
    """(A,) leverage-effect correlation in [-1, 1] between a return and the following change of
    the variance estimate (0 until there are pairs)."""
    den = jnp.sqrt(jnp.maximum(state.lev_var_r, 0.0)) * jnp.sqrt(jnp.maximum(state.lev_var_dv, 0.0))
    ok = den > 0
    c = jnp.where(ok, state.lev_cov / jnp.where(ok, den, 1.0), 0.0)
    return jnp.clip(c, -1.0, 1.0)


def regime_ratio(params: VolEstParams, state: VolEst) -> jax.Array:
    """(A,) ratio ``sqrt(v / long_run_var)`` of each asset's volatility (``regime_source``) to the
    Normal regime's."""
    src = getattr(state, params.regime_source)
    return jnp.sqrt(jnp.maximum(src, 0.0) / jnp.asarray(params.long_run_var, src.dtype))
