"""Spread: the market's bid-ask spread, a mean-reverting jump process (spec Part 4).

Equations, units, the discretisation over a step and the known biases: ``docs/MODEL.md``, section 4.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mmsim import distributions as dist
from mmsim import rng
from mmsim._pytree import Check, pytree_dataclass, static_field
from mmsim.regimes import REGIME_SPREAD_MULT

#: Default spread multipliers of the volatility regimes low, normal, high, extreme (spec Part 2).
DEFAULT_REGIME_MULT = REGIME_SPREAD_MULT


@pytree_dataclass
class SpreadParams:
    """Spread OU-with-jumps parameters; float fields are scalars or per-asset ``(A,)`` arrays.

    Attributes:
        kappa: mean-reversion speed, per second (> 0).
        theta0: base fair spread, fraction of mid (1e-4 = 1 bp).
        beta_vol: sensitivity of the fair spread to volatility, sqrt(second): fraction of mid
            per unit of sigma_v (log-price per sqrt(second)).
        sigma: spread volatility, fraction of mid per sqrt(second).
        jump_rate: spread-widening jumps per second.
        jump_mean: mean jump size (exponential), fraction of mid.
        liq_sensitivity: spread widening per base unit liquidated in a step, fraction of mid per
            base unit (e.g. per BTC).
        regime_mult: ``(R,)`` fair-spread multiplier of each volatility regime (index 0..R-1;
            default low/normal/high/extreme = 0.8, 1.0, 1.5, 3.0), or ``(A, R)`` per asset.
        tick: price tick, quote currency, scalar or ``(A,)``.
        s0: initial latent spread, fraction of mid.
        max_jumps: jumps per step are truncated at this count (static).
    """

    kappa: jax.Array | float = 0.1
    theta0: jax.Array | float = 1e-4
    beta_vol: jax.Array | float = 1.0
    sigma: jax.Array | float = 1e-5
    jump_rate: jax.Array | float = 0.01
    jump_mean: jax.Array | float = 1e-4
    liq_sensitivity: jax.Array | float = 1e-5
    regime_mult: jax.Array | np.ndarray = dataclasses.field(default_factory=lambda: np.asarray(DEFAULT_REGIME_MULT))
    tick: jax.Array | float = 0.1
    s0: jax.Array | float = 1e-4
    max_jumps: int = static_field(default=2)

    def validate(self) -> None:
        c = Check(self)
        c.positive("kappa", "mean-reversion speed, per second")
        c.nonneg("theta0", "base fair spread, fraction of mid")
        c.nonneg("beta_vol", "fair-spread sensitivity to volatility, sqrt(second)")
        c.nonneg("sigma", "spread volatility, fraction of mid per sqrt(second)")
        c.nonneg("jump_rate", "jumps per second")
        c.nonneg("jump_mean", "mean spread jump, fraction of mid")
        c.nonneg("liq_sensitivity", "fraction of mid per base unit liquidated")
        rm = c.value("regime_mult")
        c.require(
            rm.ndim in (1, 2) and rm.shape[-1] >= 1,
            "regime_mult",
            "must be an (R,) or (A, R) array of regime multipliers",
        )
        c.positive("regime_mult", "fair-spread multiplier per volatility regime")
        c.positive("tick", "price tick, quote currency")
        c.nonneg("s0", "initial spread, fraction of mid")
        c.require(isinstance(self.max_jumps, int) and self.max_jumps >= 1, "max_jumps", "must be an integer >= 1")


class SpreadState(NamedTuple):
    s: jax.Array  # (A,) latent spread, fraction of mid


class SpreadInfo(NamedTuple):
    spread: jax.Array  # (A,) book spread, quote currency (>= tick, on the tick grid)
    spread_frac: jax.Array  # (A,) book spread / mid
    fair: jax.Array  # (A,) fair spread theta(t), fraction of mid
    latent: jax.Array  # (A,) latent spread s after the step, fraction of mid


def init(params: SpreadParams, n_assets: int, dtype=jnp.float32) -> SpreadState:
    s = jnp.broadcast_to(jnp.asarray(params.s0, dtype), (n_assets,))
    return SpreadState(s=jnp.array(s, dtype))


def n_uniforms(params: SpreadParams) -> int:
    """Uniforms drawn per asset per step: diffusion, jump count, one per possible jump."""
    return 2 + params.max_jumps


def fair_spread(
    params: SpreadParams, sigma: jax.Array, regime: jax.Array, n_assets: int, dtype=jnp.float32
) -> jax.Array:
    """Fair spread ``(theta0 + beta_vol sigma) * regime_mult[regime]``, fraction of mid, ``(A,)``.

    ``sigma``: volatility of log-price per sqrt(second); ``regime``: integer regime index
    (scalar or ``(A,)``), clipped to ``0 .. R-1``.
    """
    theta0 = jnp.asarray(params.theta0, dtype)
    beta = jnp.asarray(params.beta_vol, dtype)
    sig = jnp.asarray(sigma).astype(dtype)
    rm = jnp.asarray(params.regime_mult).astype(dtype)
    idx = jnp.broadcast_to(jnp.asarray(regime).astype(jnp.int32), (n_assets,))
    if rm.ndim == 1:
        mult = jnp.take(rm, idx, mode="clip")
    else:
        rm = jnp.broadcast_to(rm, (n_assets, rm.shape[-1]))
        idx = jnp.clip(idx, 0, rm.shape[-1] - 1)
        mult = jnp.take_along_axis(rm, idx[:, None], axis=1)[:, 0]
    return jnp.broadcast_to((theta0 + beta * sig) * mult, (n_assets,)).astype(dtype)


def book_spread(s: jax.Array, mid: jax.Array, tick: jax.Array) -> jax.Array:
    """Book spread in price: ``max(1, round(s * mid / tick)) * tick`` (quote currency)."""
    ticks = jnp.maximum(jnp.round(s * mid / tick), 1.0)
    return ticks * tick


def best_bid_ask(mid: jax.Array, spread: jax.Array, tick: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Best bid and ask on the tick grid around ``mid`` for a book spread ``spread`` (all in
    quote currency).

    With ``n = max(1, round(spread / tick))`` ticks and ``m = mid / tick``,
    ``bid = floor(m - n/2 + 1/2) * tick`` (the grid point nearest to ``mid - spread/2``, ties
    up) and ``ask = bid + n * tick``, so ``ask - bid == n * tick`` (= ``spread`` when it is on
    the grid) up to floating-point rounding. Then ``bid <= mid - spread/2 + tick/2`` and
    ``ask > mid + spread/2 - tick/2``: for ``n >= 2`` always ``bid < mid < ask``; for a
    one-tick spread ``bid = floor(m) * tick <= mid < ask``, with ``bid == mid`` only when the
    mid lies on the grid (then no one-tick book can straddle it). All of this holds up to the
    rounding of ``mid / tick``: with a mid on the grid and a one-tick spread, that rounding
    decides whether the bid or the ask equals the mid (e.g. 100.1 / 0.1 = 1000.99999...), and in
    float32 a large price (6e4 with tick 0.1) carries ~0.06 tick of rounding in ``m``. The
    outputs have the dtype of ``mid``.
    """
    mid = jnp.asarray(mid)
    tick = jnp.asarray(tick).astype(mid.dtype)
    n = jnp.maximum(jnp.round(jnp.asarray(spread).astype(mid.dtype) / tick), 1.0)
    m = mid / tick
    k = jnp.floor(m - 0.5 * n + 0.5)
    bid = k * tick
    ask = (k + n) * tick
    return bid, ask


def step(
    key: jax.Array,
    state: SpreadState,
    params: SpreadParams,
    dt: float,
    *,
    sigma: jax.Array,
    regime: jax.Array,
    mid: jax.Array,
    liq_volume: jax.Array | float = 0.0,
) -> tuple[SpreadState, SpreadInfo]:
    """Advance the latent spread by one step of ``dt`` seconds.

    Args:
        key: :mod:`mmsim.rng` key for this step.
        sigma: (A,) current volatility of log-price, per sqrt(second) (sqrt of the variance
            per second).
        regime: (A,) or scalar integer volatility regime index (0 = low .. R-1).
        mid: (A,) mid price, quote currency per base unit.
        liq_volume: (A,) base units liquidated in the step (>= 0, both sides together).
    """
    dtype = state.s.dtype
    n_a = state.s.shape[0]
    u = rng.uniform_columns(key, (n_a, n_uniforms(params)), dtype)  # (A,) per column
    c = lambda x: jnp.asarray(x).astype(dtype)  # noqa: E731  params to the state dtype
    kappa, sig_s = c(params.kappa), c(params.sigma)
    fair = fair_spread(params, sigma, regime, n_a, dtype)

    x = kappa * dt
    one_m_a = -jnp.expm1(-x)  # 1 - e^{-kappa dt}, without cancellation in float32
    sd = sig_s * jnp.sqrt(-jnp.expm1(-2.0 * x) / (2.0 * kappa))
    z = dist.std_normal(u[0])
    lam_dt = jnp.broadcast_to(c(params.jump_rate) * dt, (n_a,))
    n_j = dist.poisson(u[1], lam_dt, k_max=params.max_jumps)
    jump_mean = c(params.jump_mean)
    jump = jnp.zeros((n_a,), dtype)
    for j in range(params.max_jumps):
        jump = jump + jnp.where(j < n_j, jump_mean * dist.exponential(u[2 + j], 1.0), 0.0)
    decay = one_m_a / x
    liq = c(params.liq_sensitivity) * jnp.asarray(liq_volume).astype(dtype)

    s = (state.s + (fair - state.s) * one_m_a + sd * z + jump * decay + liq).astype(dtype)
    s = jnp.broadcast_to(s, (n_a,))
    mid_ = jnp.broadcast_to(jnp.asarray(mid).astype(dtype), (n_a,))
    spread = book_spread(s, mid_, c(params.tick)).astype(dtype)
    info = SpreadInfo(spread=spread, spread_frac=(spread / mid_).astype(dtype), fair=fair, latent=s)
    return SpreadState(s=s), info


def stationary_mean(params: SpreadParams, fair: float) -> float:
    """Stationary mean of the latent spread for a constant fair spread and no liquidations:
    ``fair + jump_rate * jump_mean / kappa`` (fraction of mid)."""
    return fair + np.asarray(params.jump_rate) * np.asarray(params.jump_mean) / np.asarray(params.kappa)


def stationary_var(params: SpreadParams) -> float:
    """Stationary variance of the latent spread (continuous time), fraction of mid squared:
    ``sigma^2 / (2 kappa) + jump_rate * 2 jump_mean^2 / (2 kappa)``."""
    k = np.asarray(params.kappa)
    return (np.asarray(params.sigma) ** 2 + np.asarray(params.jump_rate) * 2.0 * np.asarray(params.jump_mean) ** 2) / (
        2.0 * k
    )
