"""Liquidation cascades: marked, mutually exciting Hawkes processes, two sides per asset (spec Part 10).

Equations, units, the discretisation over a step and the known biases: ``docs/MODEL.md``, section 6.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mmsim import distributions as dist
from mmsim import rng
from mmsim._pytree import Check, pytree_dataclass, static_field, to_plain

#: Uniforms per asset per step: count long, count short, volume long, volume short.
N_UNIFORMS = 4
#: A side is tilted (``mmsim.world.tilt``) only in a step whose expected count is below this.
TILT_QUIET_COUNT = 0.05


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
        trigger_kind: how a price move triggers liquidations (static). ``"step_return"``: each
            step adds ``trigger * leverage * max(0, -r)`` for the step's return r, so for a
            diffusion its rate grows as 1 / sqrt(dt) (a known bias, kept as the default so that
            the published results stand). ``"drawdown"``: a continuous-time input, the leveraged
            fall of the log price below its exponential average over ``trigger_window_s``,
            integrated over time (``trigger * leverage * max(0, ybar - x) / window`` per second):
            the same total for a sudden move, independent of dt for a diffusion.
        trigger_window_s: the averaging time of ``"drawdown"``, seconds.
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
    trigger_window_s: jax.Array | float = 30.0
    trigger_kind: str = static_field(default="step_return")

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
        c.require(self.trigger_kind in TRIGGER_KINDS, "trigger_kind", f"must be one of {TRIGGER_KINDS}")
        c.positive("trigger_window_s", "seconds")
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


#: How price moves trigger liquidations (see ``LiqParams.trigger_kind``).
TRIGGER_KINDS = ("step_return", "drawdown")


class LiqState(NamedTuple):
    ex_long: jax.Array  # (A,) long-side intensity minus its baseline, per second
    ex_short: jax.Array  # (A,) short-side intensity minus its baseline, per second
    ref: jax.Array  # (A,) exponential average of the log price (trigger_kind "drawdown"), log(mid / s0)


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
    tilt: Any = None  # (log_lr, events, compensator, size E, busy scores, busy sides), float64, under a tilt


def init(params: LiqParams, n_assets: int, dtype=jnp.float32) -> LiqState:
    """No excitation: both intensities at their baselines."""
    z = jnp.zeros((n_assets,), dtype)
    return LiqState(ex_long=z, ex_short=z, ref=z)


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


def stationary_rate_on_a_diffusion(params: LiqParams, sigma: float, dt: float | None) -> float:
    """Mean liquidations per second (both sides) of the process stepped every ``dt`` seconds on a
    Brownian log price of volatility ``sigma`` per sqrt(second), without self-excitation
    (``alpha = alpha_cross = 0``; numpy, host side); ``dt`` None: the continuous-time limit, which
    exists only for ``trigger_kind = "drawdown"``.

    A step's count has mean ``mu dt + E[ex] (1 - e^{-beta dt}) / beta`` and ``E[ex] = E[I] /
    (1 - e^{-beta dt})`` for the input I added per step, so the rate is ``mu + E[I] / (beta dt)``;
    a fall feeds the long side and a rise the short side alike, ``k = trigger leverage sigma /
    sqrt(2 pi)``. ``"step_return"``: ``E[I] = k sqrt(dt)`` per side, a rate growing as
    1 / sqrt(dt). ``"drawdown"``: the scheme's log price minus its average is an AR(1) with
    coefficient ``a = e^{-dt/W}`` and innovations of variance ``sigma^2 dt``, so ``E[I] = k (1 - a)
    sqrt(dt / (1 - a^2))``, whose limit is ``k sqrt(W / 2) / W`` per second."""
    f = lambda name: float(np.max(np.asarray(getattr(params, name), dtype=float)))  # noqa: E731
    if f("alpha") or f("alpha_cross"):
        raise ValueError("stationary_rate_on_a_diffusion is the law without self-excitation (alpha = 0)")
    mu, beta = f("mu_long") + f("mu_short"), f("beta")
    k = f("trigger") * f("leverage") * sigma / math.sqrt(2 * math.pi)
    if params.trigger_kind == "step_return":
        if dt is None:
            raise ValueError('trigger_kind "step_return" has no continuous-time limit: its rate grows as 1/sqrt(dt)')
        return mu + 2 * k * math.sqrt(dt) / (beta * dt)
    w = f("trigger_window_s")
    if dt is None:
        return mu + 2 * k * math.sqrt(w / 2) / (w * beta)
    a = math.exp(-dt / w)
    return mu + 2 * k * (1 - a) * math.sqrt(dt / (1 - a * a)) / (beta * dt)


def intensity(state: LiqState, params: LiqParams) -> tuple[jax.Array, jax.Array]:
    """``(lambda_long, lambda_short)``, (A,) each, liquidations per second."""
    dtype = state.ex_long.dtype
    return ((params.mu_long + state.ex_long).astype(dtype), (params.mu_short + state.ex_short).astype(dtype))


def n_uniforms(params: LiqParams) -> int:
    """Uniforms drawn per asset per step."""
    return N_UNIFORMS


def step(
    key: jax.Array,
    state: LiqState,
    params: LiqParams,
    dt: float,
    *,
    last_ret: jax.Array | float = 0.0,
    log_price: jax.Array | float = 0.0,
    tilt: Any = None,
) -> tuple[LiqState, LiqInfo]:
    """Advance both sides' cascades by one step of ``dt`` seconds.

    Args:
        key: :mod:`mmsim.rng` key for this step.
        state: excitations at the start of the step, per second.
        params: :class:`LiqParams`.
        dt: step length, seconds.
        last_ret: (A,) log return of the previous step (dimensionless); a fall triggers long
            liquidations, a rise short ones, in proportion to ``leverage`` (``"step_return"``).
        log_price: (A,) log price at the start of the step, ``log(mid / s0)`` (``"drawdown"``).
        tilt: a :class:`mmsim.world.tilt.TiltParams` to draw the counts and the largest sizes
            from its tilted law (None: the nominal law); the info's ``tilt`` is then ``(log_lr,
            events, compensator, size E, busy scores, busy sides)`` of the tilted sides (float64
            scalars).

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
    t_info = None
    if tilt is not None:
        u_nl, u_ns, u_vl, u_vs, t_info = _tilted(tilt, u_nl, u_ns, u_vl, u_vs, comp_l, comp_s)
    n_l, n_s = dist.poisson_many((u_nl, u_ns), (comp_l, comp_s))
    v_l, m_l = dist.pareto_sum(u_vl, n_l, x_m, a, cap)
    v_s, m_s = dist.pareto_sum(u_vs, n_s, x_m, a, cap)
    ref = state.ref
    if params.trigger_kind == "step_return":
        loss = lev * r  # leveraged return: an average long loses -loss, an average short +loss
    else:
        # The path is seen at step ends, constant in between: m(s) = (x - ybar) e^{-s/W} over the
        # step, so the input integral over it is max(0, -m) (1 - e^{-dt/W}), exact for that path.
        x = jnp.broadcast_to(jnp.asarray(log_price, dtype), (n_a,))
        w = jnp.asarray(params.trigger_window_s, dtype)
        m0 = x - state.ref
        g = -jnp.expm1(-dt / w)
        loss = lev * m0 * g
        ref = x - m0 * (1.0 - g)
    new_l = ex_l * decay + alpha * v_l + alpha_x * v_s + trig * jnp.maximum(-loss, 0.0)
    new_s = ex_s * decay + alpha * v_s + alpha_x * v_l + trig * jnp.maximum(loss, 0.0)
    new = LiqState(ex_long=new_l.astype(dtype), ex_short=new_s.astype(dtype), ref=ref.astype(dtype))
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
        tilt=t_info,
    )
    return new, info


def _tilted(tilt, u_nl, u_ns, u_vl, u_vs, comp_l, comp_s):
    """The step's uniforms under ``tilt`` and its part of the change of measure, ``(log_lr,
    events, compensator, size E)`` (float64 scalars): the count's uniform has an event (N >= 1
    above ``p0 = e^{-comp}``) as if its intensity were ``liq_count`` times larger; where it has
    one, the largest size's uniform is exponentially tilted; a busy side's count has its
    uniform's normal score shifted by ``liq_busy``. Returns also the busy sides' tilted scores
    summed and their number."""
    comp = jnp.stack([comp_l, comp_s]).astype(jnp.float64)  # (2, A)
    p0 = jnp.exp(-comp)
    # Only a quiet side is tilted (expected count < 0.05 in the step): a busy cascade already has
    # its events, and tilting each of its thousands would only multiply the weight's variance.
    # The choice depends on the state before the draw, so the likelihood ratio stays exact.
    quiet = comp < TILT_QUIET_COUNT
    u_n, lr_n = dist.tilt_event(jnp.stack([u_nl, u_ns]), p0, jnp.where(quiet, tilt.liq_count, 1.0))
    # A busy side's count instead has its uniform's normal score shifted by liq_busy (about
    # liq_busy standard deviations more liquidations); against the position, only the side whose
    # liquidations move the price against it (long ones when the maker is long).
    if tilt.against_position:
        facing = jnp.stack([tilt.side > 0, tilt.side < 0]).astype(jnp.float64)[:, None]
    else:
        facing = jnp.ones((2, 1), jnp.float64)
    busy = (~quiet).astype(jnp.float64) * facing
    shift = busy * jnp.asarray(tilt.liq_busy, jnp.float64)
    u_b, lr_b, z_b = dist.tilt_normal_score(u_n, shift)
    u_n = jnp.where(shift != 0, u_b, u_n)  # no shift: the uniform as drawn (the round trip is not exact)
    event = u_n.astype(jnp.float64) > p0
    u_v, lr_v, e_v = dist.tilt_exp(jnp.stack([u_vl, u_vs]), jnp.where(quiet, tilt.liq_size, 0.0))
    event = event & quiet  # the size tilt and the statistics: quiet sides' events only
    u_v = jnp.where(event, u_v, jnp.stack([u_vl, u_vs]))
    info = (
        jnp.sum(lr_n) + jnp.sum(jnp.where(event, lr_v, 0.0)) + jnp.sum(jnp.where(busy > 0, lr_b, 0.0)),
        jnp.sum(event.astype(jnp.float64)),
        jnp.sum(jnp.where(quiet, comp, 0.0)),
        jnp.sum(jnp.where(event, e_v, 0.0)),
        jnp.sum(jnp.where(busy > 0, z_b, 0.0)),
        jnp.sum(busy),
    )
    return u_n[0], u_n[1], u_v[0], u_v[1], info
