"""Volatility: regime-switching Heston variance dv = kappa_r (theta_r - v) dt + xi_r sqrt(v) dW_v (spec Part 2).

Equations, units, the discretisation over a step and the known biases: ``docs/MODEL.md``, section 2.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import log_ndtr

from mmsim import _small, rng
from mmsim import distributions as dist
from mmsim._pytree import Check, pytree_dataclass, static_field
from mmsim.regimes import REGIME_NAMES

REGIMES = REGIME_NAMES
LOW, NORMAL, HIGH, EXTREME = 0, 1, 2, 3
SCHEMES = ("qe", "euler")
#: Tolerance on the generator's row sums (rates per second).
ROW_SUM_TOL = 1e-9
_EXPM_SQUARINGS = 40
_EXPM_ORDER = 6

_YEAR_S = 365.25 * 86400.0
# Default regimes, per second: sigma = 0.35, 0.55, 1.1 and 2.75 a year (0.5x, 1x, 2x, 5x normal);
# variance half-lives 1 h, 30 min, 15 min, 5 min; stationary coefficient of variation of v about
# 0.6, 0.7, 0.8, 1.2 (xi = cv sqrt(2 kappa theta)); the extreme regime violates Feller.
_SIGMA_YEAR = np.array([0.35, 0.55, 1.1, 2.75])
_THETA = _SIGMA_YEAR**2 / _YEAR_S
_KAPPA = np.log(2.0) / np.array([3600.0, 1800.0, 900.0, 300.0])
_XI = np.array([0.6, 0.7, 0.8, 1.2]) * np.sqrt(2.0 * _KAPPA * _THETA)
# Expected stays: low 2 h, normal 4 h, high 1 h, extreme 10 min; exits split as in the rows.
_GENERATOR = np.array(
    [
        [-1 / 7200, 1 / 7200, 0.0, 0.0],
        [0.5 / 14400, -1 / 14400, 0.45 / 14400, 0.05 / 14400],
        [0.0, 0.8 / 3600, -1 / 3600, 0.2 / 3600],
        [0.0, 0.3 / 600, 0.7 / 600, -1 / 600],
    ]
)


@pytree_dataclass
class VolParams:
    """Regime-switching Heston variance; R regimes, A assets.

    Attributes:
        kappa: mean-reversion speed per regime, per second; shape (R,) or (R, A).
        theta: long-run variance of log-price per regime, per second (sigma^2 per second);
            shape (R,) or (R, A); > 0.
        xi: vol-of-vol per regime, sqrt(variance per second) per sqrt(second) (= per second);
            shape (R,) or (R, A). 2 kappa theta >= xi^2 (Feller) keeps v > 0; QE copes without.
        rho: correlation of the log-price and variance shocks (leverage effect); scalar or (A,).
        generator: (R, R) generator of the regime chain, per second: off-diagonals >= 0, rows
            sum to 0 (within ``ROW_SUM_TOL``); the expected stay in regime r is -1/G_rr seconds.
        v0: initial variance per second, scalar or (A,); >= 0.
        switch_rescale: in [0, 1]; on a switch r -> r', v is multiplied by
            (theta_r' / theta_r)^switch_rescale.
        psi_c: QE switching threshold between the quadratic and exponential branches, in [1, 2].
        regime0: initial regime index (static).
        scheme: "qe" (Andersen 2008) or "euler" (full truncation) (static).
        regime_names: one name per regime (static), ``REGIMES`` by default.
    """

    kappa: jax.Array | np.ndarray = dataclasses.field(default_factory=lambda: _KAPPA.copy())
    theta: jax.Array | np.ndarray = dataclasses.field(default_factory=lambda: _THETA.copy())
    xi: jax.Array | np.ndarray = dataclasses.field(default_factory=lambda: _XI.copy())
    rho: jax.Array | float = -0.3
    generator: jax.Array | np.ndarray = dataclasses.field(default_factory=lambda: _GENERATOR.copy())
    v0: jax.Array | float = float(_THETA[NORMAL])
    switch_rescale: jax.Array | float = 1.0
    psi_c: jax.Array | float = 1.5
    regime0: int = static_field(default=NORMAL)
    scheme: str = static_field(default="qe")
    regime_names: tuple = static_field(default=REGIMES)

    @property
    def n_regimes(self) -> int:
        return int(np.shape(self.generator)[0])

    def validate(self) -> None:
        c = Check(self)
        g = c.finite("generator", "regime generator, per second")
        c.require(
            g.ndim == 2 and g.shape[0] == g.shape[1] and g.shape[0] >= 1,
            "generator",
            f"must be a square (R, R) matrix with R >= 1, got shape {g.shape}",
        )
        n_r = g.shape[0]
        off = g[~np.eye(n_r, dtype=bool)]
        c.require(bool(np.all(off >= 0)), "generator", "off-diagonal rates must be >= 0 (transition rates, per second)")
        rows = g.sum(axis=1)
        c.require(
            bool(np.all(np.abs(rows) <= ROW_SUM_TOL)),
            "generator",
            f"rows must sum to 0 within {ROW_SUM_TOL} (row sums {rows.tolist()})",
        )
        n_a = set()
        for name, what, rule in (
            ("kappa", "mean-reversion speed, per second", "nonneg"),
            ("theta", "long-run variance, per second", "positive"),
            ("xi", "vol-of-vol, per second", "nonneg"),
        ):
            getattr(c, rule)(name, what)
            v = c.value(name)
            c.require(
                v.ndim in (1, 2) and v.shape[0] == n_r,
                name,
                f"must have shape (R,) or (R, A) with R = {n_r} regimes (the generator's), got shape {v.shape}",
            )
            if v.ndim == 2:
                n_a.add((name, v.shape[1]))
        c.between("rho", -1.0, 1.0, "correlation of price and variance shocks")
        c.nonneg("v0", "initial variance, per second")
        for name in ("rho", "v0"):
            v = c.value(name)
            c.require(v.ndim <= 1, name, f"must be a scalar or a per-asset (A,) array, got shape {v.shape}")
            if v.ndim == 1:
                n_a.add((name, v.shape[0]))
        if len({a for _, a in n_a}) > 1:
            name = sorted(n_a)[0][0]
            c.fail(name, f"per-asset sizes disagree: {sorted(n_a)}")
        c.between("switch_rescale", 0.0, 1.0, "exponent of the theta ratio applied to v on a switch")
        c.between("psi_c", 1.0, 2.0, "QE branch threshold (Andersen 2008)")
        c.require(
            isinstance(self.regime0, (int, np.integer)) and 0 <= int(self.regime0) < n_r,
            "regime0",
            f"must be an integer in [0, {n_r})",
        )
        c.require(self.scheme in SCHEMES, "scheme", f"must be one of {SCHEMES}")
        c.require(
            isinstance(self.regime_names, tuple) and len(self.regime_names) == n_r,
            "regime_names",
            f"must be a tuple of {n_r} names, one per regime",
        )

    def n_assets(self) -> int | None:
        """The per-asset size the params fix, or None if every field broadcasts."""
        for name, ax in (("kappa", 1), ("theta", 1), ("xi", 1), ("rho", 0), ("v0", 0)):
            shape = np.shape(getattr(self, name))
            if len(shape) == ax + 1:
                return int(shape[ax])
        return None


class VolState(NamedTuple):
    v: jax.Array  # (A,) variance per second, >= 0
    regime: jax.Array  # () int32, the market-wide regime
    time_in_regime: jax.Array  # () seconds since the last switch (or since the start)
    v_aux: jax.Array  # (A,) Euler auxiliary v~ (may be < 0) for scheme="euler"; = v for "qe"


class VolInfo(NamedTuple):
    v: jax.Array  # (A,) variance per second at the end of the step (after any switch rescale)
    int_var: jax.Array  # (A,) integral of v over the step, log-price^2
    lev_shock: jax.Array  # (A,) log-price diffusion correlated with the variance shock, log-price
    resid_var: jax.Array  # (A,) variance of the rest of the diffusion, log-price^2
    regime: jax.Array  # () int32, regime used during the step (at its start)
    next_regime: jax.Array  # () int32, regime at the end of the step
    switched: jax.Array  # () bool, next_regime != regime


def init(params: VolParams, n_assets: int, dtype=jnp.float32) -> VolState:
    """Initial state: v = v0 (per second) for every asset, regime ``regime0``, time 0 s."""
    a = params.n_assets()
    if a is not None and a != n_assets:
        raise ValueError(f"VolParams has per-asset fields of size {a}, but n_assets = {n_assets}")
    v = jnp.broadcast_to(jnp.asarray(params.v0).astype(dtype), (n_assets,))
    return VolState(v=v, regime=jnp.asarray(params.regime0, jnp.int32), time_in_regime=jnp.zeros((), dtype), v_aux=v)


def sigma(state: VolState) -> jax.Array:
    """Instantaneous volatility sqrt(v), log-price per sqrt(second); (A,)."""
    return jnp.sqrt(jnp.maximum(state.v, 0.0))


def n_uniforms(params: VolParams, n_assets: int) -> int:
    """Uniforms drawn per path per step: one variance shock per asset and one for the regime."""
    del params
    return n_assets + 1


def transition_matrix(params: VolParams, dt: float, dtype=jnp.float64) -> jax.Array:
    """Per-step regime transition matrix P = expm(G dt), (R, R); dt in seconds.

    Computed in float64 as I + B with B = expm(G dt) - I by scaling and squaring on B itself:
    B_0 = expm1(G dt / 2^s) by a Taylor series of order ``_EXPM_ORDER``, then s times
    B <- 2 B + B^2 (which is (I + B)^2 - I). Working on B, never on I + B, keeps the small
    off-diagonal probabilities (~ rate * dt) to full relative precision; with s = ``_EXPM_SQUARINGS``
    the Taylor remainder is below 1e-17 for ||G dt|| up to 1e10, and the rounding error grows by
    about one unit in the last place per squaring. (jax.scipy.linalg.expm gives the same matrix
    but costs seconds of compilation per step function, for a 4 x 4 matrix.)
    """
    return _expm_generator(params.generator, dt).astype(dtype)


def _expm_generator(generator, dt: float) -> jax.Array:
    """expm(G dt) in float64, by the scaling and squaring on B = P - I of :func:`transition_matrix`."""
    g = jnp.asarray(generator).astype(jnp.float64)
    n_r = g.shape[0]
    m = g * (dt / 2.0**_EXPM_SQUARINGS)
    eye = jnp.eye(n_r, dtype=jnp.float64)
    t = eye
    for k in range(_EXPM_ORDER, 1, -1):
        t = eye + (m @ t) / k
    b = jax.lax.fori_loop(0, _EXPM_SQUARINGS, lambda _, b: 2.0 * b + b @ b, m @ t)
    return eye + b


def stationary_distribution(params: VolParams) -> np.ndarray:
    """Stationary law of the regime chain (host side, numpy float64): pi with pi G = 0, sum 1.

    For a reducible chain the stationary law is not unique; this returns the least-squares one.
    """
    g = np.asarray(params.generator, dtype=float)
    n_r = g.shape[0]
    a = np.vstack([g.T, np.ones((1, n_r))])
    b = np.zeros(n_r + 1)
    b[-1] = 1.0
    pi = np.linalg.lstsq(a, b, rcond=None)[0]
    pi = np.clip(pi, 0.0, None)
    return pi / pi.sum()


def qe_moments(v, kappa, theta, xi, dt):
    """Exact conditional mean and variance of the CIR v(t + dt) given v(t) = v (per second).

    m = v e + theta (1 - e), s^2 = xi^2 [v e g + theta (1 - e) g / 2] with e = exp(-kappa dt) and
    g = (1 - e)/kappa (-> dt as kappa -> 0), the REFERENCES.md formulas written without the
    1/kappa singularity.
    """
    e = jnp.exp(-kappa * dt)
    om = -jnp.expm1(-kappa * dt)
    pos = kappa > 0
    g = jnp.where(pos, om / jnp.where(pos, kappa, 1.0), dt)
    m = v * e + theta * om
    s2 = xi * xi * (v * e * g + 0.5 * theta * om * g)
    return m, s2


def step(
    key: jax.Array,
    state: VolState,
    params: VolParams,
    dt: float,
    *,
    z_var: jax.Array | None = None,
    force_regime: int | jax.Array = -1,
) -> tuple[VolState, VolInfo]:
    """Advance the variance and the regime by one step of ``dt`` seconds.

    Args:
        key: :mod:`mmsim.rng` key for this step (draws ``n_uniforms`` uniforms).
        state: the current state; ``state.v`` in variance per second.
        dt: step length, seconds.
        z_var: (A,) standard normal variance shocks (correlated across assets by the caller);
            drawn from ``key`` when not given. The price's own shock must be independent of it.
        force_regime: when >= 0, the next regime (e.g. ``EXTREME`` for a scheduled shock);
            may be traced. -1: drawn from the chain.

    Returns:
        (new state, info); info carries the price drivers ``int_var``, ``lev_shock`` (log-price)
        and ``resid_var`` (log-price^2) for this step.
    """
    dtype = state.v.dtype
    n_a = state.v.shape[0]
    n_r = params.n_regimes
    if isinstance(force_regime, (int, np.integer)) and force_regime >= n_r:
        raise ValueError(f"force_regime = {force_regime}: must be < {n_r} (or -1 for no force)")
    # Draw layout: uniforms 0 .. A-1 are the variance shocks, A the regime; taken as separate
    # arrays (no short trailing axis) and only those used.
    n_u = n_uniforms(params, n_a)
    if z_var is None:
        u_z, u_r = rng.uniform_at(key, n_u, np.arange(n_a), n_a, dtype=dtype)
        z = dist.std_normal(u_z)
    else:
        (u_r,) = rng.uniform_at(key, n_u, n_a, dtype=dtype)
        z = jnp.asarray(z_var).astype(dtype)

    # Everything that depends on the regime only is computed once per step on the (R,) or (R, A)
    # parameter tables (not per path), then picked by the path's regime.
    r = state.regime
    tab = _regime_tables(params, dt, dtype)
    # The picked values feed many consumers: stored once, not re-picked in each (dist.materialise).
    names = ("kappa", "theta", "xi") + (("e", "om", "g", "incr_a", "incr_b", "rho_xi") if params.scheme == "qe" else ())
    at = dict(zip(names, dist.materialise(tuple(_at(tab[k], r) for k in names))))
    kappa, theta, xi = at["kappa"], at["theta"], at["xi"]
    rho = jnp.asarray(params.rho).astype(dtype)

    if params.scheme == "qe":
        v = state.v
        e, om, g = at["e"], at["om"], at["g"]
        m = v * e + theta * om  # qe_moments, with the tables
        s2 = xi * xi * (v * e * g + 0.5 * theta * om * g)
        v1, dev = dist.materialise(_qe_from_moments(m, s2, z, jnp.asarray(params.psi_c).astype(dtype)))
        int_var = 0.5 * (v + v1) * dt
        # v' - v - kappa theta dt + kappa int_var, as (1 + kappa dt/2)(v' - m) plus the exact
        # deterministic remainder (theta - v)(om - kappa dt + kappa dt om / 2): no cancellation
        # between v' and v, which would cost float32 its precision when xi sqrt(v dt) << v.
        incr = at["incr_a"] * dev + (theta - v) * at["incr_b"]
        has_xi = xi > 0
        lev = jnp.where(has_xi, at["rho_xi"] * incr, rho * jnp.sqrt(int_var) * z)
        v_aux1 = v1
    else:
        vp = jnp.maximum(state.v_aux, 0.0)
        v_aux1 = state.v_aux + kappa * (theta - vp) * dt + xi * jnp.sqrt(vp * dt) * z
        v1 = jnp.maximum(v_aux1, 0.0)
        int_var = vp * dt
        lev = rho * jnp.sqrt(int_var) * z
    resid_var = (1.0 - rho * rho) * int_var

    # Regime chain: inverse CDF of row r of P, off-diagonal entries first:
    # next = #{j : u >= cdf_r[j]} if u < cdf_r[R-1], else r.
    cdf = tab["cdf"]
    u_r = u_r.astype(cdf.dtype)
    drawn = jnp.zeros(jnp.shape(r), jnp.int32)
    for j in range(n_r):
        drawn = drawn + (u_r >= _at(cdf[:, j], r)).astype(jnp.int32)
    drawn = jnp.where(u_r < _at(cdf[:, n_r - 1], r), drawn, r).astype(jnp.int32)
    f = jnp.clip(jnp.asarray(force_regime, jnp.int32), -1, n_r - 1)
    nxt = dist.materialise_small(jnp.where(f >= 0, f, drawn).astype(jnp.int32))  # many consumers
    switched = nxt != r
    log_ratio = _at(tab["log_theta"], nxt) - _at(tab["log_theta"], r)
    scale = jnp.where(switched, jnp.exp(jnp.asarray(params.switch_rescale).astype(dtype) * log_ratio), 1.0)
    v_new = (v1 * scale).astype(dtype)
    v_aux_new = (v_aux1 * scale).astype(dtype)
    tir = jnp.where(switched, 0.0, state.time_in_regime + dt).astype(dtype)
    new = VolState(v=v_new, regime=nxt, time_in_regime=tir, v_aux=v_aux_new)
    info = VolInfo(
        v=v_new,
        int_var=_bc(int_var, n_a, dtype),
        lev_shock=_bc(lev, n_a, dtype),
        resid_var=_bc(resid_var, n_a, dtype),
        regime=r.astype(jnp.int32),
        next_regime=nxt,
        switched=switched,
    )
    return new, info


def _regime_tables(params: VolParams, dt: float, dtype) -> dict[str, jax.Array]:
    """Per-regime coefficients of a step of ``dt`` seconds, shape (R,) or (R, A) (path independent).

    ``cdf[r, j]``: cumulative off-diagonal transition probabilities of row r (the regime draw);
    float64, or, for float32 draws, each rounded UP to float32, so that the float32 comparison
    ``u >= cdf32`` is exactly the float64 comparison ``float64(u) >= cdf`` (u is a float32).
    """
    c = lambda x: jnp.asarray(x).astype(dtype)  # noqa: E731
    kappa, theta, xi = c(params.kappa), c(params.theta), c(params.xi)
    e = jnp.exp(-kappa * dt)
    om = -jnp.expm1(-kappa * dt)
    pos = kappa > 0
    g = jnp.where(pos, om / jnp.where(pos, kappa, 1.0), dt)
    kdt = kappa * dt
    rho = c(params.rho)
    has_xi = xi > 0
    xi_safe = jnp.where(has_xi, xi, 1.0)
    if xi_safe.ndim == 1 and rho.ndim == 1:
        xi_safe = xi_safe[:, None]  # (R,) xi with (A,) rho: an (R, A) table
    tab = dict(
        kappa=kappa,
        theta=theta,
        xi=xi,
        e=e,
        om=om,
        g=g,
        incr_a=1.0 + 0.5 * kdt,
        incr_b=om - kdt + 0.5 * kdt * om,
        rho_xi=rho / xi_safe,
        log_theta=jnp.log(theta),
    )
    cdf = _cdf_table(params, dt)
    if jnp.dtype(dtype) == jnp.float32:
        c32 = cdf.astype(jnp.float32)
        cdf = jnp.where(c32.astype(jnp.float64) < cdf, jnp.nextafter(c32, jnp.float32(np.inf)), c32)
    tab["cdf"] = cdf
    return tab


def _cdf_table(params: VolParams, dt: float) -> jax.Array:
    """(R, R) float64: row r is the cumulative sum over j of P[r, j] with the diagonal entry set
    to 0, P = expm(G dt). Computed once on the host per (generator, dt) when the generator is a
    concrete array; inside the traced program otherwise (params passed as arguments of a jit)."""
    g = params.generator
    if isinstance(g, jax.core.Tracer) or not isinstance(dt, (int, float)):
        return _cdf_from_p(_expm_generator(g, dt))
    g = np.asarray(g, dtype=np.float64)
    return jnp.asarray(_cdf_host(g.tobytes(), g.shape, float(dt)))


@functools.lru_cache(maxsize=64)
def _cdf_host(g_bytes: bytes, shape: tuple, dt: float) -> np.ndarray:
    g = np.frombuffer(g_bytes, dtype=np.float64).reshape(shape)
    with jax.ensure_compile_time_eval():
        return np.asarray(_cdf_from_p(_expm_generator(g, dt)))


def _cdf_from_p(p: jax.Array) -> jax.Array:
    n_r = p.shape[0]
    off = jnp.where(jnp.eye(n_r, dtype=bool), 0.0, p)
    return jnp.stack([jnp.cumsum(off[i]) for i in range(n_r)])


def _qe_from_moments(m, s2, z, psi_c):
    """Andersen's QE step from the conditional moments; returns (v', v' - m)."""
    has_m = m > 0
    m_s = jnp.where(has_m, m, 1.0)
    psi = jnp.where(has_m, s2 / (m_s * m_s), 0.0)
    # Quadratic branch, v' = a (b + Z)^2 with a = m/(1 + b^2) and
    # b^2 = 2/psi - 1 + sqrt(2/psi) sqrt(2/psi - 1) = (1 - y + sqrt(1 - y))/y, y = psi/2,
    # written with w = 1/b: v' = m (1 + w Z)^2/(1 + w^2), v' - m = m w (2 Z + w (Z^2 - 1))/(1 + w^2).
    y = jnp.minimum(0.5 * psi, 1.0)
    sq = jnp.sqrt(1.0 - y)
    tiny = jnp.finfo(m.dtype).tiny ** 0.5
    w2 = y / jnp.maximum(1.0 - y + sq, tiny)
    w = jnp.sqrt(w2)
    v_q = m * jnp.square(1.0 + w * z) / (1.0 + w2)
    dev_q = m * w * (2.0 * z + w * (z * z - 1.0)) / (1.0 + w2)
    # Exponential branch: v' = 0 w.p. p = (psi - 1)/(psi + 1), else log((1 - p)/(1 - U))/beta with
    # 1/beta = m (1 + psi)/2 and log(1 - U) = log Phi(-Z).
    log1mp = jnp.log(2.0) - jnp.log1p(psi)
    v_e = 0.5 * m * (1.0 + psi) * jnp.maximum(log1mp - log_ndtr(-z), 0.0)
    quad = psi <= psi_c
    v1 = jnp.where(quad, v_q, v_e)
    dev = jnp.where(quad, dev_q, v_e - m)
    return v1, dev


def _at(x, r):
    """Row ``r`` (traced int in [0, R)) of a per-regime (R,) or (R, A) table: a chain of selects
    (:func:`mmsim._small.take_last` over the regime axis), not a gather."""
    return _small.take_last(jnp.moveaxis(jnp.asarray(x), 0, -1), r)


def _bc(x, n_a, dtype):
    return jnp.broadcast_to(x, (n_a,)).astype(dtype)
