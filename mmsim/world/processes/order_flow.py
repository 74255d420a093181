"""Order flow: bivariate Hawkes process of buy and sell market orders, per asset (spec Part 5).

Equations, units, the discretisation over a step and the known biases: ``docs/MODEL.md``, section 3.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mmsim import distributions as dist
from mmsim import rng
from mmsim._pytree import Check, pytree_dataclass, static_field, to_plain

#: Uniforms per asset per step, columns: buy informed count, buy uninformed count, buy volume,
#: then the same three for sells.
N_UNIFORMS = 6

_EXCITATION_FIELDS = ("alpha_buy", "alpha_sell", "gamma")
_FIELDS = ("mu_buy", "mu_sell", "alpha_buy", "alpha_sell", "gamma", "beta", "size_scale", "size_tail", "size_sigma")
#: Laws of a market order's size.
SIZE_LAWS = ("pareto", "lognormal")


@pytree_dataclass
class FlowParams:
    """Order-flow Hawkes parameters; each field is a scalar or a per-asset ``(A,)`` array.

    Attributes:
        mu_buy: baseline intensity of buy market orders, per second.
        mu_sell: baseline intensity of sell market orders, per second.
        alpha_buy: self-excitation of buys: intensity jump of the buy side per buy order, per second.
        alpha_sell: self-excitation of sells: intensity jump of the sell side per sell order, per second.
        gamma: cross-excitation: intensity jump of one side per order of the other side, per second.
        beta: decay rate of the excitation, per second (mean excitation lifetime 1 / beta seconds).
        size_law: "pareto" or "lognormal" (static): the law of one market order's size.
        size_scale: base units: the Pareto minimum order size x_m, or the lognormal median.
        size_tail: Pareto tail index a > 1: P(size > x) = (x_m / x)^a, mean a x_m / (a - 1)
            (``size_law: pareto`` only).
        size_sigma: standard deviation of the log size, size = median e^{size_sigma Z}, mean
            median e^{size_sigma^2 / 2} (``size_law: lognormal`` only).
    """

    mu_buy: jax.Array | float = 0.5
    mu_sell: jax.Array | float = 0.5
    alpha_buy: jax.Array | float = 0.6
    alpha_sell: jax.Array | float = 0.6
    gamma: jax.Array | float = 0.1
    beta: jax.Array | float = 1.0
    size_scale: jax.Array | float = 1e-3
    size_tail: jax.Array | float = 1.5
    size_sigma: jax.Array | float = 1.0
    size_law: str = static_field(default="pareto")

    def validate(self) -> None:
        c = Check(self)
        c.nonneg("mu_buy", "baseline buy intensity, per second")
        c.nonneg("mu_sell", "baseline sell intensity, per second")
        c.nonneg("alpha_buy", "buy self-excitation, per second per order")
        c.nonneg("alpha_sell", "sell self-excitation, per second per order")
        c.nonneg("gamma", "cross-excitation, per second per order")
        c.positive("beta", "excitation decay rate, per second")
        c.require(self.size_law in SIZE_LAWS, "size_law", f"must be one of {SIZE_LAWS}")
        c.positive("size_scale", "Pareto minimum or lognormal median order size, base units")
        a = c.finite("size_tail", "Pareto tail index")
        if self.size_law == "pareto":
            c.require(
                bool(np.all(a > 1.0)),
                "size_tail",
                "must be > 1 (Pareto tail index; the mean size a x_m / (a - 1) is infinite otherwise)",
            )
        c.positive("size_sigma", "standard deviation of the log order size")
        n_a = {}
        for f in _FIELDS:
            shape = np.shape(getattr(self, f))
            c.require(len(shape) <= 1, f, "must be a scalar or a per-asset (A,) array")
            if shape:
                n_a.setdefault(shape[0], f)
                c.require(
                    len(n_a) == 1,
                    f,
                    f"has {shape[0]} assets but {next(iter(n_a.values()))} "
                    f"has {next(iter(n_a))}: per-asset fields must have one length",
                )
        rho = spectral_radius(self)
        bad = ~(rho < 1.0)
        if np.any(bad):
            # Name the excitation with the largest value among the explosive assets.
            vals = np.broadcast_arrays(*(c.value(f) for f in _EXCITATION_FIELDS), rho)
            idx = np.flatnonzero(np.broadcast_to(bad, vals[0].shape))
            worst = max(
                _EXCITATION_FIELDS, key=lambda f: float(np.max(vals[_EXCITATION_FIELDS.index(f)].reshape(-1)[idx]))
            )
            shown = to_plain(rho)
            c.fail(
                worst,
                "spectral radius of the branching matrix K = [[alpha_buy, gamma], "
                f"[gamma, alpha_sell]] / beta must be < 1 (it is {shown}; the flow is "
                "explosive otherwise)",
            )


class FlowState(NamedTuple):
    ex_buy: jax.Array  # (A,) buy intensity minus its baseline, per second
    ex_sell: jax.Array  # (A,) sell intensity minus its baseline, per second


class FlowInfo(NamedTuple):
    n_buy: jax.Array  # (A,) buy market orders in the step (count, as floats)
    n_sell: jax.Array  # (A,) sell market orders in the step
    n_buy_informed: jax.Array  # (A,) of which informed (buys)
    n_sell_informed: jax.Array  # (A,) of which informed (sells)
    vol_buy: jax.Array  # (A,) total bought volume in the step, base units
    vol_sell: jax.Array  # (A,) total sold volume in the step, base units
    max_buy: jax.Array  # (A,) largest buy order in the step, base units (0 if none)
    max_sell: jax.Array  # (A,) largest sell order in the step, base units (0 if none)
    lam_buy: jax.Array  # (A,) buy intensity at the start of the step, per second
    lam_sell: jax.Array  # (A,) sell intensity at the start of the step, per second
    tilt: Any = None  # (log_lr, score statistic, assets), float64, under a tilt


def _host(params: FlowParams, name: str) -> np.ndarray:
    return np.asarray(getattr(params, name), dtype=float)


def branching_matrix(params: FlowParams) -> np.ndarray:
    """K = [[alpha_buy, gamma], [gamma, alpha_sell]] / beta (numpy, host side), shape S + (2, 2)
    where S is the broadcast shape of the fields (() or (A,)); dimensionless: K[i, j] is the mean
    number of side-i orders directly triggered by one side-j order (rows/cols: buy, sell)."""
    ab, as_, g, b = np.broadcast_arrays(*(_host(params, f) for f in ("alpha_buy", "alpha_sell", "gamma", "beta")))
    row0 = np.stack([ab, g], axis=-1)
    row1 = np.stack([g, as_], axis=-1)
    return np.stack([row0, row1], axis=-2) / b[..., None, None]


def spectral_radius(params: FlowParams) -> np.ndarray:
    """Spectral radius of :func:`branching_matrix` per asset (numpy, host side), dimensionless:
    ((alpha_buy + alpha_sell) + sqrt((alpha_buy - alpha_sell)^2 + 4 gamma^2)) / (2 beta)."""
    return dist.hawkes_spectral_radius(*(_host(params, f) for f in ("alpha_buy", "alpha_sell", "gamma", "beta")))


def _stationary(mu_b, mu_s, a_b, a_s, g, beta):
    """(I - K)^{-1} mu by the 2x2 inverse; plain arithmetic, so numpy or jax."""
    kb, ks, kg = a_b / beta, a_s / beta, g / beta
    det = (1.0 - kb) * (1.0 - ks) - kg * kg
    return ((1.0 - ks) * mu_b + kg * mu_s) / det, (kg * mu_b + (1.0 - kb) * mu_s) / det


def stationary_intensity(params: FlowParams, baseline_mult=1.0) -> tuple[np.ndarray, np.ndarray]:
    """Stationary mean intensities ``(lambda_bar_buy, lambda_bar_sell) = (I - K)^{-1} mu`` (numpy, host
    side), orders per second, each of the fields' broadcast shape; ``mu`` is scaled by
    ``baseline_mult``. These are also the exact mean order rates of the discretised flow."""
    m = np.asarray(baseline_mult, dtype=float)
    return tuple(
        np.asarray(x)
        for x in _stationary(
            m * _host(params, "mu_buy"),
            m * _host(params, "mu_sell"),
            _host(params, "alpha_buy"),
            _host(params, "alpha_sell"),
            _host(params, "gamma"),
            _host(params, "beta"),
        )
    )


def expected_size(params: FlowParams):
    """Mean order size, base units (numpy or jax, like the params): a x_m / (a - 1) for Pareto
    sizes, median e^{sigma^2 / 2} for lognormal ones."""
    if params.size_law == "lognormal":
        return params.size_scale * np.exp(0.5 * np.square(params.size_sigma))
    return params.size_tail * params.size_scale / (params.size_tail - 1.0)


def init(
    params: FlowParams, n_assets: int, dtype=jnp.float32, *, stationary: bool = True, stationary_dt: float = 0.0
) -> FlowState:
    """Initial excitations, per second.

    ``stationary=True`` (default) starts at the stationary mean excitation ``lambda_bar - mu`` (the
    flow is then stationary in mean from t = 0 rather than after a burn-in of a few
    1 / (beta (1 - rho)) seconds); ``stationary_dt = dt > 0`` gives the mean on the step grid of
    the discretised flow, ``beta dt / (1 - e^{-beta dt}) (lambda_bar - mu)``, whose mean is then
    exactly stationary. ``stationary=False`` starts with no excitation (empty history).
    """
    z = jnp.zeros((n_assets,), dtype)
    if not stationary:
        return FlowState(ex_buy=z, ex_sell=z)
    mu_b, mu_s = params.mu_buy, params.mu_sell
    lb, ls = _stationary(mu_b, mu_s, params.alpha_buy, params.alpha_sell, params.gamma, params.beta)
    fac = 1.0
    if stationary_dt > 0.0:
        bdt = params.beta * stationary_dt
        fac = bdt / -jnp.expm1(-jnp.asarray(bdt, jnp.float64))
    ex_b = jnp.broadcast_to(jnp.asarray(fac * (lb - mu_b)).astype(dtype), (n_assets,))
    ex_s = jnp.broadcast_to(jnp.asarray(fac * (ls - mu_s)).astype(dtype), (n_assets,))
    return FlowState(ex_buy=ex_b, ex_sell=ex_s)


def intensity(
    state: FlowState, params: FlowParams, baseline_mult: jax.Array | float = 1.0
) -> tuple[jax.Array, jax.Array]:
    """``(lambda_buy, lambda_sell)``, (A,) each, orders per second: ``baseline_mult * mu + ex``."""
    dtype = state.ex_buy.dtype
    return (
        (baseline_mult * params.mu_buy + state.ex_buy).astype(dtype),
        (baseline_mult * params.mu_sell + state.ex_sell).astype(dtype),
    )


def n_uniforms(params: FlowParams) -> int:
    """Uniforms drawn per asset per step: 2 sides x (informed count, uninformed count, volume)."""
    return N_UNIFORMS


def step(
    key: jax.Array,
    state: FlowState,
    params: FlowParams,
    dt: float,
    *,
    informed_frac: jax.Array | float = 0.0,
    baseline_mult: jax.Array | float = 1.0,
    imbalance: jax.Array | float | None = None,
) -> tuple[FlowState, FlowInfo]:
    """Advance the buy and sell order flow of every asset by one step of ``dt`` seconds.

    Args:
        key: :mod:`mmsim.rng` key for this step.
        state: excitations at the start of the step, per second.
        params: :class:`FlowParams`.
        dt: step length, seconds (any size: counts are Poisson, ``lambda dt > 1`` is fine).
        informed_frac: (A,) probability in [0, 1] that a market order is informed (from the
            adverse-selection process); clipped to [0, 1].
        baseline_mult: (A,) multiplier of the baselines ``mu_buy``, ``mu_sell`` (e.g. busier
            markets in high-volatility regimes), dimensionless, >= 0.
        imbalance: importance sampling (:mod:`mmsim.world.tilt`): the uninformed counts'
            uniforms drawn with their normal scores shifted, sells by ``+imbalance`` and buys by
            ``-imbalance``; the info's ``tilt`` is then ``(log_lr, sum of (z_sell - z_buy) / 2,
            assets)``. None: the nominal law.

    Returns:
        The excitations at the end of the step and the step's :class:`FlowInfo`.
    """
    dtype = state.ex_buy.dtype
    n_a = state.ex_buy.shape[0]
    cast = lambda x: jnp.asarray(x).astype(dtype)  # noqa: E731
    # The (A, 6) draw as six (A,) columns: buy informed, buy uninformed, buy volume, then sells.
    u_inf_b, u_un_b, u_vol_b, u_inf_s, u_un_s, u_vol_s = rng.uniform_columns(key, (n_a, N_UNIFORMS), dtype)
    t_info = None
    if imbalance is not None:
        u_un_s, lr_s, z_s = dist.tilt_normal_score(u_un_s, imbalance)
        u_un_b, lr_b, z_b = dist.tilt_normal_score(u_un_b, -jnp.asarray(imbalance))
        t_info = (jnp.sum(lr_s + lr_b), jnp.sum(0.5 * (z_s - z_b)), jnp.asarray(float(n_a), jnp.float64))
    beta = cast(params.beta)
    m = cast(baseline_mult)
    f = jnp.clip(cast(informed_frac), 0.0, 1.0)
    mu_b, mu_s = m * cast(params.mu_buy), m * cast(params.mu_sell)
    decay = jnp.exp(-beta * dt)
    frac = -jnp.expm1(-beta * dt) / beta  # integral of e^{-beta s} over the step, seconds
    scale, tail, sigma = cast(params.size_scale), cast(params.size_tail), cast(params.size_sigma)
    shape = (n_a,)

    ex_b0 = jnp.broadcast_to(state.ex_buy, shape)
    ex_s0 = jnp.broadcast_to(state.ex_sell, shape)
    lam_b = jnp.broadcast_to(mu_b, shape) + ex_b0  # intensities at the step start
    lam_s = jnp.broadcast_to(mu_s, shape) + ex_s0
    comp_b = mu_b * dt + ex_b0 * frac  # compensators of the step
    comp_s = mu_s * dt + ex_s0 * frac
    # informed_frac given as the Python number 0 (the default) means no informed orders: their
    # draws, Poisson(0) = 0 for every uniform, are skipped (same result).
    if isinstance(informed_frac, (int, float)) and informed_frac == 0:
        nu_b, nu_s = dist.poisson_many((u_un_b, u_un_s), (comp_b, comp_s))
        ni_b = ni_s = jnp.zeros(shape, dtype)
    else:
        ni_b, ni_s, nu_b, nu_s = dist.poisson_many(
            (u_inf_b, u_inf_s, u_un_b, u_un_s), (f * comp_b, f * comp_s, (1.0 - f) * comp_b, (1.0 - f) * comp_s)
        )
    nb = ni_b + nu_b
    ns = ni_s + nu_s
    if params.size_law == "lognormal":
        vol_b, big_b = dist.lognormal_sum(u_vol_b, nb, scale, sigma)
        vol_s, big_s = dist.lognormal_sum(u_vol_s, ns, scale, sigma)
    else:
        vol_b, big_b = dist.pareto_sum(u_vol_b, nb, scale, tail)
        vol_s, big_s = dist.pareto_sum(u_vol_s, ns, scale, tail)
    ex_b = state.ex_buy * decay + cast(params.alpha_buy) * nb + cast(params.gamma) * ns
    ex_s = state.ex_sell * decay + cast(params.alpha_sell) * ns + cast(params.gamma) * nb
    new = FlowState(
        ex_buy=jnp.broadcast_to(ex_b, shape).astype(dtype), ex_sell=jnp.broadcast_to(ex_s, shape).astype(dtype)
    )
    info = FlowInfo(
        n_buy=nb.astype(dtype),
        n_sell=ns.astype(dtype),
        n_buy_informed=jnp.broadcast_to(ni_b, shape).astype(dtype),
        n_sell_informed=jnp.broadcast_to(ni_s, shape).astype(dtype),
        vol_buy=vol_b.astype(dtype),
        vol_sell=vol_s.astype(dtype),
        max_buy=big_b.astype(dtype),
        max_sell=big_s.astype(dtype),
        lam_buy=lam_b.astype(dtype),
        lam_sell=lam_s.astype(dtype),
        tilt=t_info,
    )
    return new, info
