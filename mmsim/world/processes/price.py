"""Price: log-mid jump-diffusion dp = mu dt + sigma(t) dW + J dN (spec Part 1).

Equations, units, the discretisation over a step and the known biases: ``docs/MODEL.md``, section 1.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from mmsim import distributions as dist
from mmsim import rng
from mmsim._pytree import Check, pytree_dataclass, static_field

JUMP_LAWS = ("merton", "kou")


@pytree_dataclass
class PriceParams:
    """Jump-diffusion parameters; each float field is a scalar or a per-asset ``(A,)`` array.

    Attributes:
        s0: initial mid price, quote currency (e.g. USDT) per base unit.
        drift: log-price drift, per second.
        jump_rate: jump intensity, jumps per second.
        jump_mean: Merton mean jump, log-price.
        jump_std: Merton jump standard deviation, log-price.
        kou_p_up: Kou probability that a jump is upward.
        kou_eta_up: Kou rate of upward jumps (mean up-jump 1/eta), per unit log-price.
        kou_eta_down: Kou rate of downward jumps, per unit log-price.
        funding_coupling: mu gets ``- funding_coupling * funding rate per second`` (1 ties the
            drift to minus the funding rate).
        jump_law: "merton" or "kou" (static).
        martingale: compensate the drift so the mid is a martingale (static).
        max_jumps: jumps per step are truncated at this count (static).
    """

    s0: jax.Array | float = 60_000.0
    drift: jax.Array | float = 0.0
    jump_rate: jax.Array | float = 0.0
    jump_mean: jax.Array | float = 0.0
    jump_std: jax.Array | float = 0.0
    kou_p_up: jax.Array | float = 0.5
    kou_eta_up: jax.Array | float = 100.0
    kou_eta_down: jax.Array | float = 100.0
    funding_coupling: jax.Array | float = 0.0
    jump_law: str = static_field(default="merton")
    martingale: bool = static_field(default=False)
    max_jumps: int = static_field(default=2)

    def validate(self) -> None:
        c = Check(self)
        c.positive("s0", "initial mid price")
        c.finite("drift", "log drift per second")
        c.nonneg("jump_rate", "jump intensity, per second")
        c.finite("jump_mean", "Merton mean jump, log-price")
        c.nonneg("jump_std", "Merton jump standard deviation, log-price")
        c.between("kou_p_up", 0.0, 1.0, "probability of an upward Kou jump")
        c.positive("kou_eta_up", "Kou up-jump rate")
        c.positive("kou_eta_down", "Kou down-jump rate")
        c.finite("funding_coupling")
        c.require(self.jump_law in JUMP_LAWS, "jump_law", f"must be one of {JUMP_LAWS}")
        c.require(isinstance(self.max_jumps, int) and self.max_jumps >= 1, "max_jumps", "must be an integer >= 1")
        if self.jump_law == "kou" and self.martingale:
            c.require(
                bool(c.value("kou_eta_up").min() > 1.0),
                "kou_eta_up",
                "must be > 1 when martingale=True (E[e^J] is infinite otherwise)",
            )


class PriceState(NamedTuple):
    x: jax.Array  # (A,) log(mid / s0)
    last_ret: jax.Array  # (A,) log return of the last step


class PriceInfo(NamedTuple):
    ret: jax.Array  # (A,) log return over the step
    n_jumps: jax.Array  # (A,) number of jumps in the step
    jump: jax.Array  # (A,) total jump, log-price
    tilt: Any = None  # (log_lr, jump_events, jump_comp), float64 scalars, under a tilt


def init(params: PriceParams, n_assets: int, dtype=jnp.float32) -> PriceState:
    z = jnp.zeros((n_assets,), dtype)
    return PriceState(x=z, last_ret=z)


def mid(state: PriceState, params: PriceParams) -> jax.Array:
    """Mid price, quote currency per base unit: ``s0 * exp(x)``."""
    return params.s0 * jnp.exp(state.x)


def jump_compensator(params: PriceParams) -> jax.Array:
    """E[e^J] - 1 for one jump (log-price jump J), Merton or Kou."""
    if params.jump_law == "merton":
        return jnp.expm1(params.jump_mean + 0.5 * params.jump_std**2)
    p, e1, e2 = params.kou_p_up, params.kou_eta_up, params.kou_eta_down
    return p * e1 / (e1 - 1.0) + (1.0 - p) * e2 / (e2 + 1.0) - 1.0


def n_uniforms(params: PriceParams) -> int:
    """Uniforms drawn per asset per step: diffusion, jump count and jump sizes."""
    return 2 + (1 if params.jump_law == "merton" else params.max_jumps)


def step(
    key: jax.Array,
    state: PriceState,
    params: PriceParams,
    dt: float,
    int_var: jax.Array,
    *,
    lev_shock: jax.Array | float = 0.0,
    resid_var: jax.Array | None = None,
    z: jax.Array | None = None,
    funding_rate_per_s: jax.Array | float = 0.0,
    impact: jax.Array | float = 0.0,
    tilt: Any = None,
) -> tuple[PriceState, PriceInfo]:
    """Advance the log-mid by one step of ``dt`` seconds.

    Args:
        key: :mod:`mmsim.rng` key for this step.
        int_var: (A,) integrated variance over the step, log-price^2 (sigma^2 dt if constant).
        lev_shock: (A,) diffusion part correlated with the variance shock (leverage effect).
        resid_var: (A,) variance of the rest of the diffusion; defaults to ``int_var``.
        z: (A,) standard normals for the diffusion (correlated across assets by the caller);
            drawn here when not given.
        funding_rate_per_s: (A,) funding rate per second, for the funding-tied drift.
        impact: (A,) permanent impact of this step's order flow and liquidations, log-price.
        tilt: a :class:`mmsim.world.tilt.TiltParams`: jumps happen as if their rate were
            ``jump_count`` times larger (None: the nominal law); the info's ``tilt`` is then
            ``(log_lr, jump_events, jump_comp)``.
    """
    dtype = state.x.dtype
    n_a = state.x.shape[0]
    # One (A,) array per column of the (A, n_uniforms) draw: no short trailing axis (fast on CPU).
    u = rng.uniform_columns(key, (n_a, n_uniforms(params)), dtype)
    if z is None:
        z = dist.std_normal(u[0])
    resid_var = int_var if resid_var is None else resid_var
    lam_dt = params.jump_rate * dt
    u_j, t_info = u[1], None
    if tilt is not None:
        comp = jnp.broadcast_to(jnp.asarray(lam_dt, jnp.float64), (n_a,))
        p0 = jnp.exp(-comp)
        u_j, lr = dist.tilt_event(u_j, p0, tilt.jump_count)
        event = (u_j.astype(jnp.float64) > p0).astype(jnp.float64)
        t_info = (jnp.sum(lr), jnp.sum(event), jnp.sum(comp))
    n_j = dist.poisson(u_j, jnp.broadcast_to(lam_dt, (n_a,)).astype(dtype), k_max=params.max_jumps)
    if params.jump_law == "merton":
        zj = dist.std_normal(u[2])
        jump = n_j * params.jump_mean + jnp.sqrt(n_j) * params.jump_std * zj
    else:
        jump = jnp.zeros((n_a,), dtype)
        for j in range(params.max_jumps):
            size = dist.double_exponential(u[2 + j], params.kou_p_up, params.kou_eta_up, params.kou_eta_down)
            jump = jump + jnp.where(j < n_j, size, 0.0)
    mu = params.drift - params.funding_coupling * funding_rate_per_s
    comp = 0.0
    if params.martingale:
        comp = -0.5 * int_var - lam_dt * jump_compensator(params)
    ret = (mu * dt + comp + lev_shock + jnp.sqrt(jnp.maximum(resid_var, 0.0)) * z + jump + impact).astype(dtype)
    new = PriceState(x=state.x + ret, last_ret=ret)
    return new, PriceInfo(ret=ret, n_jumps=n_j, jump=jump.astype(dtype), tilt=t_info)
