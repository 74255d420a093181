"""Funding: perpetual-futures funding rate from a mean-reverting premium index (spec Part 9).

Equations, units, the discretisation over a step and the known biases: ``docs/MODEL.md``, section 7.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mmsim import distributions as dist
from mmsim import rng
from mmsim._pytree import Check, pytree_dataclass, static_field

#: Settlement times are matched to step ends to within this fraction of a step.
SETTLE_TOL = 1e-3


@pytree_dataclass
class FundingParams:
    """Funding parameters; float leaves are scalars or per-asset ``(A,)`` arrays.

    Attributes:
        kappa: premium-index mean-reversion speed, per second (0.1 per hour = 2.8e-5).
        theta: long-run premium index, per interval.
        sigma: premium-index volatility, per interval per sqrt(second).
        interest: interest component I of Binance's formula, per interval (1e-4 = 0.01%).
        clamp: bound of clip(I - P), per interval (5e-4 = 0.05%).
        cap: bound on the funding rate, per interval (Binance ties it to the maintenance margin).
        ref_kappa: mean-reversion speed of the divergence of a reference exchange, per second.
        ref_sigma: volatility of that divergence, per interval per sqrt(second).
        settle_reset: fraction of the premium's deviation from theta removed at a settlement, [0, 1].
        interval_s: settlement interval, seconds (static; 28800 = 8 h).
        first_settlement_s: first settlement, seconds after the start (static; None = interval_s).
    """

    kappa: jax.Array | float = 1.0 / 36_000.0
    theta: jax.Array | float = 0.0
    sigma: jax.Array | float = 2e-6
    interest: jax.Array | float = 1e-4
    clamp: jax.Array | float = 5e-4
    cap: jax.Array | float = 3e-3
    ref_kappa: jax.Array | float = 1e-4
    ref_sigma: jax.Array | float = 7e-7
    settle_reset: jax.Array | float = 0.0
    interval_s: float = static_field(default=28_800.0)
    first_settlement_s: float | None = static_field(default=None)

    def validate(self) -> None:
        c = Check(self)
        c.positive("kappa", "premium mean-reversion speed, per second")
        c.finite("theta", "long-run premium, per interval")
        c.nonneg("sigma", "premium volatility, per interval per sqrt(second)")
        c.finite("interest", "interest rate, per interval")
        c.nonneg("clamp", "bound of clip(interest - premium), per interval")
        c.nonneg("cap", "bound of the funding rate, per interval")
        c.positive("ref_kappa", "divergence mean-reversion speed, per second")
        c.nonneg("ref_sigma", "divergence volatility, per interval per sqrt(second)")
        c.between("settle_reset", 0.0, 1.0, "fraction of the premium deviation removed at settlement")
        c.positive("interval_s", "settlement interval, seconds")
        if self.first_settlement_s is not None:
            c.positive("first_settlement_s", "first settlement, seconds after the start")


class FundingState(NamedTuple):
    premium: jax.Array  # (A,) premium index P, per interval
    divergence: jax.Array  # (A,) reference exchange's rate minus ours, per interval
    n_steps: jax.Array  # () int32 steps since the start


class FundingInfo(NamedTuple):
    rate: jax.Array  # (A,) funding rate at the end of the step, per interval
    ref_rate: jax.Array  # (A,) reference exchange's rate, per interval
    rate_per_s: jax.Array  # (A,) rate / interval_s, per second
    settled: jax.Array  # () bool, a settlement fell in this step
    settled_rate: jax.Array  # (A,) rate charged at the settlement (0 when not settled)
    time_to_settlement: jax.Array  # () seconds from the end of the step to the next settlement


def first_settlement(params: FundingParams) -> float:
    """Seconds from the start to the first settlement."""
    return float(params.interval_s if params.first_settlement_s is None else params.first_settlement_s)


def settlement_times(params: FundingParams, horizon_s: float) -> np.ndarray:
    """Settlement times in ``(0, horizon_s]``, seconds after the start (float64 numpy)."""
    t0, iv = first_settlement(params), float(params.interval_s)
    if horizon_s < t0:
        return np.zeros((0,))
    n = int(np.floor((horizon_s - t0) / iv + 1e-12)) + 1
    return t0 + iv * np.arange(n, dtype=np.float64)


def funding_rate(premium: jax.Array, params: FundingParams) -> jax.Array:
    """Binance's funding rate per interval from the premium index:
    ``clip(P + clip(interest - P, -clamp, clamp), -cap, cap)`` (dtype of ``premium``)."""
    dtype = premium.dtype
    c = lambda x: jnp.asarray(x).astype(dtype)  # noqa: E731
    clamp, cap = c(params.clamp), c(params.cap)
    f = premium + jnp.clip(c(params.interest) - premium, -clamp, clamp)
    return jnp.clip(f, -cap, cap).astype(dtype)


def init(params: FundingParams, n_assets: int, dtype=jnp.float32) -> FundingState:
    p = jnp.array(jnp.broadcast_to(jnp.asarray(params.theta, dtype), (n_assets,)), dtype)
    return FundingState(premium=p, divergence=jnp.zeros((n_assets,), dtype), n_steps=jnp.zeros((), jnp.int32))


def n_uniforms(params: FundingParams) -> int:
    """Uniforms drawn per asset per step: premium and divergence shocks."""
    return 2


def _n_settled(t: jax.Array, t0: float, iv: float, tol: float) -> jax.Array:
    """Number of settlement times ``t0 + j iv`` (j >= 0) at or before ``t + tol`` (float64)."""
    return jnp.maximum(jnp.floor((t + tol - t0) / iv) + 1.0, 0.0)


def step(key: jax.Array, state: FundingState, params: FundingParams, dt: float) -> tuple[FundingState, FundingInfo]:
    """Advance the premium index and the divergence by ``dt`` seconds and settle if due."""
    dtype = state.premium.dtype
    n_a = state.premium.shape[0]
    u_p, u_d = rng.uniform_columns(key, (n_a, n_uniforms(params)), dtype)  # (A,) each
    c = lambda x: jnp.asarray(x).astype(dtype)  # noqa: E731

    p = _ou(state.premium, c(params.theta), c(params.kappa), c(params.sigma), dt, dist.std_normal(u_p))
    d = _ou(state.divergence, 0.0, c(params.ref_kappa), c(params.ref_sigma), dt, dist.std_normal(u_d))
    p, d = dist.materialise((p, d))  # many consumers (rates, observation, account): computed once
    rate = funding_rate(p, params)

    # Settlement schedule in float64 from the integer step count.
    t0, iv = first_settlement(params), float(params.interval_s)
    tol = SETTLE_TOL * dt
    n_new = state.n_steps + 1
    t_start = state.n_steps.astype(jnp.float64) * dt
    t_end = n_new.astype(jnp.float64) * dt
    k_end = _n_settled(t_end, t0, iv, tol)
    settled = k_end > _n_settled(t_start, t0, iv, tol)
    t_next = t0 + k_end * iv
    tts = jnp.maximum(t_next - t_end, 0.0)

    theta = c(params.theta)
    reset = jnp.where(settled, c(params.settle_reset), 0.0)
    p_new = (p - reset * (p - theta)).astype(dtype)
    settled_rate = jnp.where(settled, rate, 0.0).astype(dtype)
    info = FundingInfo(
        rate=rate,
        ref_rate=(rate + d).astype(dtype),
        rate_per_s=(rate / iv).astype(dtype),
        settled=settled,
        settled_rate=settled_rate,
        time_to_settlement=tts.astype(dtype),
    )
    return FundingState(premium=p_new, divergence=d, n_steps=n_new), info


def _ou(x: jax.Array, mean, kappa: jax.Array, sigma: jax.Array, dt: float, z: jax.Array) -> jax.Array:
    """Exact OU transition over ``dt`` seconds."""
    k = kappa * dt
    sd = sigma * jnp.sqrt(-jnp.expm1(-2.0 * k) / (2.0 * kappa))
    # x + (mean - x)(1 - e^{-k}): the small decrement is exact in float32 too (no 1 - a cancellation).
    out = x + (mean - x) * (-jnp.expm1(-k)) + sd * z
    return jnp.broadcast_to(out, x.shape).astype(x.dtype)
