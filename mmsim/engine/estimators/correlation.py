"""Correlation estimator: multi-scale EWMA covariances of log returns (spec Part 8, engine side).

Equations, units, the discretisation over a step and the known biases: ``docs/MODEL.md``, section 9.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mmsim._pytree import Check, pytree_dataclass
from mmsim.engine.estimators import _ewma

#: Horizons (seconds) below which the fast, then the medium correlation applies (spec's table).
HORIZON_SPLITS_S = (60.0, 300.0)
#: Intervals below this many seconds are treated as this (division guard).
MIN_DT_S = 1e-9
FAST, MEDIUM, SLOW = 0, 1, 2


@pytree_dataclass
class CorrEstParams:
    """Parameters of the correlation estimator.

    Attributes:
        lambdas: (3,) per-update decays of the fast, medium and slow covariances, in (0, 1)
            (default 0.94, 0.97, 0.99).
        interval_s: seconds per update at which ``lambdas`` apply (> 0).
        stress_threshold: average |slow correlation| above which the stress matrix is renewed,
            in [0, 1].
        stress_blend: weight of the all-ones matrix in the stress matrix, in [0, 1].
        min_var: floor of the variances, log-price^2 per second (> 0).
    """

    lambdas: jax.Array | np.ndarray = dataclasses.field(default_factory=lambda: np.asarray([0.94, 0.97, 0.99]))
    interval_s: jax.Array | float = 1.0
    stress_threshold: jax.Array | float = 0.9
    stress_blend: jax.Array | float = 0.95
    min_var: jax.Array | float = 1e-16

    def validate(self) -> None:
        c = Check(self)
        lam = c.finite("lambdas", "per-update decays")
        c.require(lam.shape == (3,), "lambdas", "must have 3 entries (fast, medium, slow)")
        c.between("lambdas", 0.0, 1.0, "per-update decays", open_lo=True, open_hi=True)
        c.positive("interval_s", "seconds per update")
        c.between("stress_threshold", 0.0, 1.0, "average absolute correlation")
        c.between("stress_blend", 0.0, 1.0, "weight of the all-ones matrix")
        c.positive("min_var", "variance floor, log-price^2 per second")


class CorrEst(NamedTuple):
    cov: jax.Array  # (3, A, A) fast / medium / slow covariances, log-price^2 per second
    wsum: jax.Array  # (3,) total EWMA weights (0 -> 1)
    corr_stress: jax.Array  # (A, A) stress correlation
    acc_ret: jax.Array  # (A,) log returns summed since the last covariance update
    pending: jax.Array  # (A,) bool: the asset has a return since the last update
    acc_t: jax.Array  # () seconds since the last covariance update
    initialised: jax.Array  # () bool: the covariances have had a sample


def _blend_toward_one(c: jax.Array, b: jax.Array) -> jax.Array:
    return (1.0 - b) * c + b * jnp.ones_like(c)


def init(params: CorrEstParams, n_assets: int, dtype=jnp.float32) -> CorrEst:
    """Covariances ``min_var * I`` (identity correlation), stress matrix blended from I."""
    eye = jnp.eye(n_assets, dtype=dtype)
    return CorrEst(
        cov=jnp.broadcast_to(jnp.asarray(params.min_var, dtype) * eye, (3, n_assets, n_assets)),
        wsum=jnp.zeros((3,), dtype),
        corr_stress=_blend_toward_one(eye, jnp.asarray(params.stress_blend, dtype)),
        acc_ret=jnp.zeros((n_assets,), dtype),
        pending=jnp.zeros((n_assets,), bool),
        acc_t=jnp.zeros((), dtype),
        initialised=jnp.zeros((), bool),
    )


def update(params: CorrEstParams, state: CorrEst, obs, log_ret: jax.Array, valid: jax.Array) -> CorrEst:
    """Fold one observation's returns into the state.

    Args:
        params: :class:`CorrEstParams`.
        state: :class:`CorrEst`.
        obs: :class:`~mmsim.observation.Observation` (only ``obs.dt``, seconds, is used).
        log_ret: (A,) log returns (``PriceEst.last_ret``).
        valid: (A,) bool, True where ``log_ret`` is new at this observation (``PriceEst.fresh``).
    """
    dtype = state.cov.dtype
    ok = jnp.asarray(valid) & jnp.isfinite(log_ret)
    acc = state.acc_ret + jnp.where(ok, jnp.asarray(log_ret, dtype), 0.0)
    pending = state.pending | ok
    acc_t = state.acc_t + jnp.asarray(obs.dt, dtype)
    ready = jnp.all(pending)

    dt = jnp.maximum(acc_t, MIN_DT_S)
    lam = jnp.asarray(params.lambdas, dtype)
    w = -jnp.expm1(dt / jnp.asarray(params.interval_s, dtype) * jnp.log(lam))  # (3,)
    wsum, g = _ewma.normalised(state.wsum, w)
    g = g[:, None, None]
    sample = jnp.outer(acc, acc) / dt
    cov = state.cov + g * (sample[None] - state.cov)
    n = acc.shape[0]
    eye = jnp.eye(n, dtype=bool)
    cov = jnp.where(eye[None], jnp.maximum(cov, jnp.asarray(params.min_var, dtype)), cov)
    cov = 0.5 * (cov + jnp.swapaxes(cov, -1, -2))
    cov = jnp.where(ready, cov, state.cov)
    wsum = jnp.where(ready, wsum, state.wsum)

    new = state._replace(cov=cov)
    avg = average_correlation(new)
    renew = ready & (avg > jnp.asarray(params.stress_threshold, dtype))
    stress = _blend_toward_one(_cov_to_corr(cov[SLOW]), jnp.asarray(params.stress_blend, dtype))
    corr_stress = jnp.where(renew, stress, state.corr_stress)

    zero = jnp.zeros_like(acc)
    return CorrEst(
        cov=cov,
        wsum=wsum,
        corr_stress=corr_stress,
        acc_ret=jnp.where(ready, zero, acc),
        pending=jnp.where(ready, False, pending),
        acc_t=jnp.where(ready, jnp.zeros_like(acc_t), acc_t),
        initialised=state.initialised | ready,
    )


def _cov_to_corr(cov: jax.Array) -> jax.Array:
    """Correlation of a (..., A, A) covariance with positive diagonal; unit diagonal, clipped."""
    d = jnp.sqrt(jnp.maximum(jnp.diagonal(cov, axis1=-2, axis2=-1), jnp.finfo(cov.dtype).tiny))
    c = cov / (d[..., :, None] * d[..., None, :])
    n = cov.shape[-1]
    return jnp.where(jnp.eye(n, dtype=bool), 1.0, jnp.clip(c, -1.0, 1.0))


def correlations(state: CorrEst) -> jax.Array:
    """(3, A, A) fast, medium and slow correlation matrices."""
    return _cov_to_corr(state.cov)


def correlation_for_horizon(state: CorrEst, seconds: jax.Array | float) -> jax.Array:
    """(A, A) correlation for a horizon of ``seconds``: fast below 60 s, medium below 300 s,
    slow otherwise (the spec's table)."""
    s = jnp.asarray(seconds)
    idx = (s >= HORIZON_SPLITS_S[0]).astype(jnp.int32) + (s >= HORIZON_SPLITS_S[1]).astype(jnp.int32)
    return jnp.take(correlations(state), idx, axis=0)


def average_correlation(state: CorrEst) -> jax.Array:
    """() average absolute off-diagonal slow correlation (0 for one asset)."""
    c = _cov_to_corr(state.cov[SLOW])
    n = c.shape[-1]
    if n < 2:
        return jnp.zeros((), c.dtype)
    off = ~jnp.eye(n, dtype=bool)
    return jnp.sum(jnp.where(off, jnp.abs(c), 0.0)) / (n * (n - 1))


def _weights(state: CorrEst, weights) -> jax.Array:
    n = state.cov.shape[-1]
    dtype = state.cov.dtype
    if weights is None:
        return jnp.full((n,), 1.0 / n, dtype)
    return jnp.broadcast_to(jnp.asarray(weights, dtype), (n,))


def portfolio_variance(state: CorrEst, weights: jax.Array | None = None) -> jax.Array:
    """() ``w^T Sigma_slow w``, per second: the variance of the portfolio's log return per
    second for weights as fractions of capital (equal weights ``1/A`` by default), or of its PnL
    in quote currency^2 per second for weights given as notionals in quote currency."""
    w = _weights(state, weights)
    return w @ state.cov[SLOW] @ w


def diversification_ratio(state: CorrEst, weights: jax.Array | None = None) -> jax.Array:
    """() ``sum_i |w_i| sigma_i / sqrt(w^T Sigma_slow w)`` (slow covariances; equal weights by
    default, as in the spec): 1 without diversification, sqrt(A) for A uncorrelated assets of
    equal volatility. 1 where the portfolio variance is 0."""
    w = _weights(state, weights)
    sig = jnp.sqrt(jnp.maximum(jnp.diagonal(state.cov[SLOW]), 0.0))
    pv = portfolio_variance(state, w)
    num = jnp.sum(jnp.abs(w) * sig)
    ok = pv > 0
    return jnp.where(ok, num / jnp.sqrt(jnp.where(ok, pv, 1.0)), 1.0)
