"""Liquidation cascades: marked, mutually exciting Hawkes processes, two sides per asset (spec Part 10).

Equations, units, the discretisation over a step and the known biases: ``docs/MODEL.md``, section 6.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mmsim import distributions as dist
from mmsim import rng
from mmsim._pytree import Check, pytree_dataclass, to_plain

#: Uniforms per asset per step: count long, count short, volume long, volume short.
N_UNIFORMS = 4


@pytree_dataclass
class LiqParams:
    """Liquidation-cascade parameters; each field is a scalar or a per-asset ``(A,)`` array.

    Attributes:
        mu_long: baseline intensity of long liquidations (forced sells), per second.
        mu_short: baseline intensity of short liquidations (forced buys), per second.
        alpha: self-excitation, per second per base unit of liquidated size on the same side.
        alpha_cross: cross-excitation by the other side, per second per base unit.
        beta: decay rate of the excitation, per second.
        size_scale: Pareto minimum liquidation size x_m, base units.
        size_tail: Pareto tail index a (> 1: the mean size a x_m / (a - 1) is finite).
        size_cap: largest possible liquidation, base units (> size_scale; ``inf``: none). Sizes
            are Pareto conditioned on X <= size_cap: a single liquidation cannot exceed the
            positions that exist (open interest), however heavy the tail.
        trigger: excitation per unit of leveraged fractional loss (leverage * |log return|),
            liquidations per second.
        leverage: aggregate market leverage, dimensionless, > 0.
        impact: permanent log-price impact per base unit of liquidated volume (long liquidations
            move the log mid by -impact * volume, short ones by +impact * volume).
    """

    mu_long: jax.Array | float = 1e-3
    mu_short: jax.Array | float = 1e-3
    alpha: jax.Array | float = 0.05
    alpha_cross: jax.Array | float = 0.0
    beta: jax.Array | float = 0.1
    size_scale: jax.Array | float = 0.1
    size_tail: jax.Array | float = 2.5
    size_cap: jax.Array | float = float("inf")
    trigger: jax.Array | float = 0.0
    leverage: jax.Array | float = 5.0
    impact: jax.Array | float = 0.0

    def validate(self) -> None:
        c = Check(self)
        c.nonneg("mu_long", "baseline long-liquidation intensity, per second")
        c.nonneg("mu_short", "baseline short-liquidation intensity, per second")
        c.nonneg("alpha", "self-excitation, per second per base unit")
        c.nonneg("alpha_cross", "cross-excitation, per second per base unit")
        c.positive("beta", "excitation decay rate, per second")
        c.positive("size_scale", "Pareto minimum size x_m, base units")
        a = c.finite("size_tail", "Pareto tail index")
        c.require(
            bool(np.all(a > 1.0)),
            "size_tail",
            "must be > 1 (Pareto tail index; the mean size a x_m / (a - 1) is infinite otherwise)",
        )
        cap = np.asarray(self.size_cap, dtype=float)
        c.require(
            bool(np.all(cap > np.asarray(self.size_scale, dtype=float))) and not np.any(np.isnan(cap)),
            "size_cap",
            "must be > size_scale (base units; inf: no cap)",
        )
        c.nonneg("trigger", "liquidations per second per unit leveraged loss")
        c.positive("leverage", "aggregate market leverage, dimensionless")
        c.nonneg("impact", "log-price per base unit of liquidated volume")
        n = branching_ratio(self)
        if not np.all(n < 1.0):
            shown = np.vectorize(lambda x: float(f"{x:.6g}"))(n)
            shown = to_plain(shown)
            c.fail(
                "alpha",
                f"branching ratio n = (alpha + alpha_cross) * E[size] / beta = {shown} "
                "must be < 1 (E[size] = size_tail * size_scale / (size_tail - 1) without a "
                "size_cap); n >= 1 is an explosive cascade",
            )


class LiqState(NamedTuple):
    ex_long: jax.Array  # (A,) long-side intensity minus its baseline, per second
    ex_short: jax.Array  # (A,) short-side intensity minus its baseline, per second


class LiqInfo(NamedTuple):
    n_long: jax.Array  # (A,) long liquidations in the step (count, as floats)
    n_short: jax.Array  # (A,) short liquidations in the step
    vol_long: jax.Array  # (A,) long volume liquidated (sold) in the step, base units
    vol_short: jax.Array  # (A,) short volume liquidated (bought) in the step, base units
    max_long: jax.Array  # (A,) largest long liquidation in the step, base units (0 if none)
    max_short: jax.Array  # (A,) largest short liquidation in the step, base units (0 if none)
    lam_long: jax.Array  # (A,) long intensity at the start of the step, per second
    lam_short: jax.Array  # (A,) short intensity at the start of the step, per second
    impact: jax.Array  # (A,) log-price impact of the step's liquidations


def init(params: LiqParams, n_assets: int, dtype=jnp.float32) -> LiqState:
    """No excitation: both intensities at their baselines."""
    z = jnp.zeros((n_assets,), dtype)
    return LiqState(ex_long=z, ex_short=z)


def expected_size(params: LiqParams) -> np.ndarray:
    """Mean liquidation size, base units (numpy, host side): a x_m / (a - 1) without a cap,
    a x_m / (a - 1) (1 - r^(a-1)) / (1 - r^a) with r = x_m / size_cap."""
    f = lambda name: np.asarray(getattr(params, name), dtype=float)  # noqa: E731
    a, xm, cap = f("size_tail"), f("size_scale"), f("size_cap")
    r = xm / cap
    return a * xm / (a - 1.0) * (1.0 - r ** (a - 1.0)) / (1.0 - r**a)


def branching_ratio(params: LiqParams, *, price_feedback: bool = False) -> np.ndarray:
    """Branching ratio n = (alpha + alpha_cross) E[size] / beta (numpy, host side).

    The mean number of liquidations (both sides) directly triggered by one liquidation; the
    spectral radius of the two-side branching matrix. ``price_feedback=True`` adds the bound
    ``trigger * leverage * impact * E[size] / beta`` on the children caused through the
    liquidation's own price impact (see the module docstring).
    """
    f = lambda name: np.asarray(getattr(params, name), dtype=float)  # noqa: E731
    es = expected_size(params)
    k = f("alpha") + f("alpha_cross")
    if price_feedback:
        k = k + f("trigger") * f("leverage") * f("impact")
    return k * es / f("beta")


def intensity(state: LiqState, params: LiqParams) -> tuple[jax.Array, jax.Array]:
    """``(lambda_long, lambda_short)``, (A,) each, liquidations per second."""
    dtype = state.ex_long.dtype
    return ((params.mu_long + state.ex_long).astype(dtype), (params.mu_short + state.ex_short).astype(dtype))


def n_uniforms(params: LiqParams) -> int:
    """Uniforms drawn per asset per step."""
    return N_UNIFORMS


def step(
    key: jax.Array, state: LiqState, params: LiqParams, dt: float, *, last_ret: jax.Array | float = 0.0
) -> tuple[LiqState, LiqInfo]:
    """Advance both sides' cascades by one step of ``dt`` seconds.

    Args:
        key: :mod:`mmsim.rng` key for this step.
        state: excitations at the start of the step, per second.
        params: :class:`LiqParams`.
        dt: step length, seconds.
        last_ret: (A,) log return of the previous step (dimensionless); a fall triggers long
            liquidations, a rise short ones, in proportion to ``leverage``.

    Returns:
        The state at the end of the step and the step's :class:`LiqInfo`.
    """
    dtype = state.ex_long.dtype
    n_a = state.ex_long.shape[0]

    def p(name):
        return jnp.broadcast_to(jnp.asarray(getattr(params, name), dtype), (n_a,))

    mu_l, mu_s, alpha, alpha_x, beta = p("mu_long"), p("mu_short"), p("alpha"), p("alpha_cross"), p("beta")
    x_m, a, trig, lev, imp = p("size_scale"), p("size_tail"), p("trigger"), p("leverage"), p("impact")
    cap = p("size_cap")
    r = jnp.broadcast_to(jnp.asarray(last_ret, dtype), (n_a,))
    dt = jnp.asarray(dt, dtype)

    u_nl, u_ns, u_vl, u_vs = rng.uniform_columns(key, (n_a, N_UNIFORMS), dtype)  # (A,) each
    decay = jnp.exp(-beta * dt)
    frac = -jnp.expm1(-beta * dt) / beta  # integral of e^{-beta s} over the step, seconds
    ex_l, ex_s = state.ex_long, state.ex_short
    comp_l = mu_l * dt + ex_l * frac
    comp_s = mu_s * dt + ex_s * frac
    n_l, n_s = dist.poisson_many((u_nl, u_ns), (comp_l, comp_s))
    v_l, m_l = dist.pareto_sum(u_vl, n_l, x_m, a, cap)
    v_s, m_s = dist.pareto_sum(u_vs, n_s, x_m, a, cap)
    loss = lev * r  # leveraged return: an average long loses -loss, an average short +loss
    new_l = ex_l * decay + alpha * v_l + alpha_x * v_s + trig * jnp.maximum(-loss, 0.0)
    new_s = ex_s * decay + alpha * v_s + alpha_x * v_l + trig * jnp.maximum(loss, 0.0)
    new = LiqState(ex_long=new_l.astype(dtype), ex_short=new_s.astype(dtype))
    info = LiqInfo(
        n_long=n_l.astype(dtype),
        n_short=n_s.astype(dtype),
        vol_long=v_l.astype(dtype),
        vol_short=v_s.astype(dtype),
        max_long=m_l.astype(dtype),
        max_short=m_s.astype(dtype),
        lam_long=(mu_l + ex_l).astype(dtype),
        lam_short=(mu_s + ex_s).astype(dtype),
        impact=(imp * (v_s - v_l)).astype(dtype),
    )
    return new, info
