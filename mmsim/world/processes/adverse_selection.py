"""Adverse selection: the informed fraction alpha(t) of market orders (spec Part 6, world side).

Equations, units, the discretisation over a step and the known biases: ``docs/MODEL.md``, section 5.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from mmsim import distributions as dist
from mmsim import rng
from mmsim._pytree import Check, pytree_dataclass


@pytree_dataclass
class ASParams:
    """Informed-fraction process; each field is a scalar or a per-asset ``(A,)`` array.

    Attributes:
        alpha_bar: long-run informed fraction, probability in [0, 1] (spec: ~0.1-0.2).
        kappa: mean-reversion speed, per second (>= 0; 0 gives a clipped random walk).
        sigma: diffusion of alpha, per sqrt(second) (>= 0); stationary sd sigma/sqrt(2 kappa).
        jump_liq: event jump per liquidation, dimensionless (>= 0): one liquidation moves alpha a
            fraction ``1 - exp(-jump_liq)`` of the way to 1.
        jump_funding: event jump per unit of funding shock, dimensionless (>= 0).
        impact: permanent log-price impact of one informed order, in its direction (>= 0).
        alpha0: initial informed fraction, probability in [0, 1].
    """

    alpha_bar: jax.Array | float = 0.15
    kappa: jax.Array | float = 1.0 / 300.0
    sigma: jax.Array | float = 2e-3
    jump_liq: jax.Array | float = 0.05
    jump_funding: jax.Array | float = 0.1
    impact: jax.Array | float = 1e-5
    alpha0: jax.Array | float = 0.15

    def validate(self) -> None:
        c = Check(self)
        c.between("alpha_bar", 0.0, 1.0, "long-run probability that a market order is informed")
        c.nonneg("kappa", "mean-reversion speed, per second")
        c.nonneg("sigma", "diffusion of alpha, per sqrt(second)")
        c.nonneg("jump_liq", "jump per liquidation")
        c.nonneg("jump_funding", "jump per unit of funding shock")
        c.nonneg("impact", "log-price impact per informed order, in the order's direction")
        c.between("alpha0", 0.0, 1.0, "initial probability that a market order is informed")


class ASState(NamedTuple):
    alpha: jax.Array  # (A,) probability that a market order is informed


class ASInfo(NamedTuple):
    alpha: jax.Array  # (A,) alpha after the step (after its events)


def init(params: ASParams, n_assets: int, dtype=jnp.float32) -> ASState:
    a0 = jnp.broadcast_to(jnp.asarray(params.alpha0).astype(dtype), (n_assets,))
    return ASState(alpha=a0)


def n_uniforms(params: ASParams) -> int:
    """Uniforms drawn per asset per step: one, for the OU shock."""
    return 1


def step(
    key: jax.Array,
    state: ASState,
    params: ASParams,
    dt: float,
    *,
    n_liq: jax.Array | float = 0.0,
    funding_shock: jax.Array | float = 0.0,
) -> tuple[ASState, ASInfo]:
    """Advance alpha by one step of ``dt`` seconds (exact OU, clip to [0, 1], event jumps).

    Args:
        key: :mod:`mmsim.rng` key for this step.
        state: alpha (A,) at the start of the step.
        dt: step length, seconds.
        n_liq: (A,) or scalar, liquidations during the step (count).
        funding_shock: (A,) or scalar, >= 0, funding event size in the step (dimensionless; see
            the module docstring).
    """
    dtype = state.alpha.dtype
    n_a = state.alpha.shape[0]
    (u,) = rng.uniform_columns(key, (n_a, n_uniforms(params)), dtype)
    z = dist.std_normal(u)
    a_bar = _p(params.alpha_bar, dtype)
    kappa = _p(params.kappa, dtype)
    sigma = _p(params.sigma, dtype)
    dt = jnp.asarray(dt).astype(dtype)
    decay = jnp.exp(-kappa * dt)
    pos = kappa > 0
    k_safe = jnp.where(pos, kappa, 1.0)
    # Variance of the exact OU transition per unit sigma^2: (1 - e^{-2 k dt}) / (2 k) -> dt at k = 0.
    var1 = jnp.where(pos, -jnp.expm1(-2.0 * k_safe * dt) / (2.0 * k_safe), dt)
    a = a_bar + (state.alpha - a_bar) * decay + sigma * jnp.sqrt(var1) * z
    a = jnp.clip(a, 0.0, 1.0)
    n_liq = jnp.maximum(jnp.asarray(n_liq).astype(dtype), 0.0)
    shock = jnp.maximum(jnp.asarray(funding_shock).astype(dtype), 0.0)
    # Fraction of the distance to 1 closed by the events: 1 - exp(-x), exactly 0 without events.
    x = _p(params.jump_liq, dtype) * n_liq + _p(params.jump_funding, dtype) * shock
    a = jnp.minimum(a + (1.0 - a) * -dist.expm1(-x), 1.0).astype(dtype)
    a = dist.materialise(jnp.broadcast_to(a, (n_a,)))  # feeds every order-flow count: computed once
    return ASState(alpha=a), ASInfo(alpha=a)


def impact(params: ASParams, n_buy_informed: jax.Array | float, n_sell_informed: jax.Array | float) -> jax.Array:
    """Permanent log-mid impact of a step's informed orders: ``impact * (n_buy - n_sell)``.

    Args:
        n_buy_informed: (A,) informed market buys in the step (count).
        n_sell_informed: (A,) informed market sells in the step (count).

    Returns:
        (A,) log-price move (positive when informed buying dominates), in the floating dtype of
        the counts (float64 when both counts are integers or Python numbers).
    """
    nb = jnp.asarray(n_buy_informed)
    ns = jnp.asarray(n_sell_informed)
    dtype = jnp.result_type(nb, ns)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.float64
    return (_p(params.impact, dtype) * (nb.astype(dtype) - ns.astype(dtype))).astype(dtype)


def stationary_moments(params: ASParams) -> tuple[jax.Array, jax.Array]:
    """Mean ``alpha_bar`` and variance ``sigma^2 / (2 kappa)`` of the unclipped stationary OU law
    (kappa > 0). Valid for the clipped process while the mass beyond [0, 1] is negligible."""
    return jnp.asarray(params.alpha_bar), jnp.asarray(params.sigma) ** 2 / (2.0 * jnp.asarray(params.kappa))


def _p(x, dtype):
    """A parameter as an array of the state's dtype (numpy float64 would promote float32)."""
    return jnp.asarray(x).astype(dtype)
