"""Regime-switching Heston variance against closed forms (REFERENCES: Heston/CIR, Andersen 2008 QE).

Time in seconds, variance of log-price per second. The parameters are faster than the market's
defaults (kappa ~ 1e-2 per second, regime rates ~ 0.1-1 per second) so that a few tens of steps
span several relaxation times.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from mmsim import rng
from mmsim.world.processes import volatility as vol
from tests.world.processes._harness import check_contract, run_paths

THETA = 1e-8  # variance per second (sigma = 1e-4 per sqrt(second))


def no_drivers(dtype, n_assets):
    return (), {}


# One compiled step for the single-step tests (params, z_var and force_regime are traced; the
# static fields of the params and dt select the compilation).
jit_step = jax.jit(vol.step, static_argnums=(3,))


def simulate(params, *, n_assets, n_paths, n_steps, dt, dtype=jnp.float64, seed=0):
    """Final states of ``n_paths`` paths after ``n_steps`` steps, with per-path running
    statistics (min of v, min of v_aux, count of steps ending at v == 0 per asset, number of
    switches) carried through the scan instead of stacking every step's info."""

    def path(k):
        s0 = vol.init(params, n_assets, dtype)
        big = jnp.full((n_assets,), jnp.inf, dtype)
        acc0 = (big, big, jnp.zeros((n_assets,), jnp.int32), jnp.zeros((), jnp.int32))

        def body(carry, t):
            s, (vmin, amin, nzero, nsw) = carry
            s, info = vol.step(rng.fold_in(k, t), s, params, dt)
            acc = (
                jnp.minimum(vmin, s.v),
                jnp.minimum(amin, s.v_aux),
                nzero + (s.v == 0).astype(jnp.int32),
                nsw + info.switched.astype(jnp.int32),
            )
            return (s, acc), None

        (s, acc), _ = jax.lax.scan(body, (s0, acc0), jnp.arange(n_steps))
        return s, acc

    keys = rng.path_keys(rng.key(seed), 0, n_paths)
    out = jax.jit(jax.vmap(path))(keys)
    return jax.tree_util.tree_map(np.asarray, out)


def cir_mean_var(v0, kappa, theta, xi, t):
    """E and Var of the CIR v_t given v_0 (REFERENCES.md, Heston/CIR)."""
    e = np.exp(-kappa * t)
    mean = theta + (v0 - theta) * e
    var = v0 * xi**2 / kappa * (e - e * e) + theta * xi**2 / (2 * kappa) * (1 - e) ** 2
    return mean, var


def assert_mean_var(x, mean, var):
    """Sample mean and variance within 4 standard errors, each computed from the sample."""
    n = x.size
    xc = x - x.mean()
    s2 = xc.var()
    assert abs(x.mean() - mean) < 4 * np.sqrt(s2 / n), (x.mean(), mean, np.sqrt(s2 / n))
    se_var = np.sqrt(np.var(xc**2) / n)
    assert abs(s2 - var) < 4 * se_var, (s2, var, se_var)


# One regime (R = 2, generator zero, regime0 = 1) and two assets: asset 0 satisfies Feller
# (2 kappa theta / xi^2 = 2.7), asset 1 violates it (0.24) and starts below theta.
KAPPA = 0.03
XI = np.array([1.5e-5, 5e-5])
V0 = np.array([2 * THETA, 0.5 * THETA])


def one_regime(scheme, xi=XI):
    return vol.VolParams(
        kappa=np.full((2, 2), KAPPA),
        theta=np.full((2, 2), THETA),
        xi=np.array([xi, xi]),
        rho=-0.5,
        generator=np.zeros((2, 2)),
        v0=V0,
        regime0=1,
        regime_names=("calm", "only"),
        scheme=scheme,
    )


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_qe_moments_exact_over_several_steps(dtype, seed):
    """QE matches E[v'|v] and Var[v'|v] of the CIR exactly at every step (Andersen 2008), and both
    are affine in v; by the laws of total expectation and variance the mean and variance of v_t
    after n steps from a fixed v_0 are then those of the exact process, with no discretisation
    bias at any dt. So a 20-step horizon (kappa t = 1.2) is compared with the closed form as is."""
    dt, n_steps, n_paths = 2.0, 20, 100_000
    p = one_regime("qe")
    s, (vmin, _, nzero, nsw) = simulate(p, n_assets=2, n_paths=n_paths, n_steps=n_steps, dt=dt, dtype=dtype, seed=seed)
    assert s.v.dtype == dtype
    for a in range(2):
        mean, var = cir_mean_var(V0[a], KAPPA, THETA, XI[a], n_steps * dt)
        assert_mean_var(s.v[:, a].astype(np.float64), mean, var)
    assert vmin.min() >= 0.0 and np.all(np.isfinite(s.v))
    # The Feller-violating asset does reach 0 (QE's exponential branch puts mass there), the other not.
    assert nzero[:, 1].sum() > 1000 and nzero[:, 0].sum() == 0
    assert nsw.sum() == 0 and np.all(s.regime == 1)
    np.testing.assert_allclose(s.time_in_regime, n_steps * dt)
    np.testing.assert_array_equal(s.v, s.v_aux)


def test_euler_full_truncation(seed):
    """Full-truncation Euler is biased at O(kappa dt), so it is compared with its own recursion,
    which is exact while v~ stays positive: E' = (1 - k dt) E + k theta dt,
    Var' = (1 - k dt)^2 Var + xi^2 dt E. Asset 0 (xi = 5e-6: at v = theta a step's shock has a
    standard deviation of v/14) never truncates -- checked below, so the recursion holds exactly;
    asset 1 violates Feller: v~ goes negative, v must stay >= 0."""
    dt, n_steps, n_paths = 2.0, 20, 100_000
    xi = np.array([5e-6, 5e-5])
    p = one_regime("euler", xi)
    s, (vmin, amin, _, _) = simulate(p, n_assets=2, n_paths=n_paths, n_steps=n_steps, dt=dt, seed=seed)
    assert amin[:, 0].min() > 0.0, "asset 0 truncated: the recursion below would not be exact"
    mean, var = V0[0], 0.0
    for _ in range(n_steps):
        mean, var = (1 - KAPPA * dt) * mean + KAPPA * THETA * dt, (1 - KAPPA * dt) ** 2 * var + xi[0] ** 2 * dt * mean
    assert_mean_var(s.v[:, 0], mean, var)
    # The Euler bias of the mean, (v0 - theta)((1 - k dt)^n - e^{-k n dt}), is ~15 standard errors
    # here: the scheme really differs from the CIR law, which is why QE is the default.
    cir_mean, _ = cir_mean_var(V0[0], KAPPA, THETA, xi[0], n_steps * dt)
    assert abs(mean - cir_mean) > 10 * s.v[:, 0].std() / np.sqrt(n_paths)
    assert amin[:, 1].min() < 0.0, "asset 1 should truncate"
    assert vmin.min() >= 0.0 and np.all(s.v >= 0) and np.all(np.isfinite(s.v))
    np.testing.assert_array_equal(s.v, np.maximum(s.v_aux, 0.0))


# A fast four-regime chain (rates per second) for the occupancy test.
FAST_G = np.array(
    [
        [-0.2, 0.2, 0.0, 0.0],
        [0.1, -0.25, 0.12, 0.03],
        [0.0, 0.3, -0.4, 0.1],
        [0.0, 0.5, 0.5, -1.0],
    ]
)


def regime_params(**kw):
    return vol.VolParams(
        kappa=np.array([0.01, 0.02, 0.04, 0.1]),
        theta=THETA * np.array([0.25, 1.0, 4.0, 25.0]),
        xi=np.array([1e-6, 4e-6, 1.5e-5, 1e-4]),
        generator=FAST_G,
        v0=THETA,
        **kw,
    )


def test_transition_matrix_and_stationary_law():
    p = regime_params()
    pm = np.asarray(vol.transition_matrix(p, 1.5))
    np.testing.assert_allclose(pm, scipy.linalg.expm(FAST_G * 1.5), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(pm.sum(axis=1), 1.0, atol=1e-13)
    pi = vol.stationary_distribution(p)
    np.testing.assert_allclose(pi @ FAST_G, 0.0, atol=1e-15)
    np.testing.assert_allclose(pi @ pm, pi, atol=1e-14)
    assert abs(pi.sum() - 1.0) < 1e-14 and np.all(pi > 0)
    assert vol.transition_matrix(p, 1.0, jnp.float32).dtype == jnp.float32


def test_regime_occupancy_and_switch_count(seed):
    """The regime at a late time follows the chain's stationary law; the number of switches per
    path has the mean sum_t (e_r0 P^t)_j (1 - P_jj) exactly (float32 run: the draw compares a
    24-bit uniform with float64 probabilities, a bias below 6e-8 per step)."""
    dt, n_steps, n_paths = 1.0, 60, 100_000
    p = regime_params()
    s, (vmin, _, _, nsw) = simulate(
        p, n_assets=1, n_paths=n_paths, n_steps=n_steps, dt=dt, dtype=jnp.float32, seed=seed
    )
    pi = vol.stationary_distribution(p)
    pm = scipy.linalg.expm(FAST_G * dt)
    law = np.linalg.matrix_power(pm, n_steps)[p.regime0]
    se = np.sqrt(pi * (1 - pi) / n_paths)
    # Mixing: the law at t = 60 s differs from pi by far less than the standard error.
    assert np.max(np.abs(law - pi) / se) < 1e-2
    freq = np.bincount(s.regime, minlength=4) / n_paths
    assert np.all(np.abs(freq - pi) < 4 * se), (freq, pi, se)
    # Expected switches from regime0 over the horizon.
    occ, expected = np.eye(4)[p.regime0], 0.0
    for _ in range(n_steps):
        expected += occ @ (1 - np.diag(pm))
        occ = occ @ pm
    assert abs(nsw.mean() - expected) < 4 * nsw.std() / np.sqrt(n_paths), (nsw.mean(), expected)
    assert vmin.min() >= 0.0


LEV_CASES = {
    # QE from v0 = theta/2 with psi ~ 2 > psi_c: the exponential branch (exact zeros) is exercised.
    "qe": dict(kappa=np.array([0.01]), theta=np.array([THETA]), xi=np.array([1e-4]), v0=0.5 * THETA),
    # Euler in a case where one step never truncates (v0/(xi sqrt(v0 dt)) = 10 standard deviations).
    "euler": dict(kappa=np.array([0.01]), theta=np.array([THETA]), xi=np.array([1e-5]), v0=THETA),
}


@pytest.mark.parametrize("rho", [-0.7, 0.7])
@pytest.mark.parametrize("scheme", ["qe", "euler"])
def test_leverage_effect(scheme, rho, seed):
    """One step from a fixed v0; the price increment is dx = lev_shock + sqrt(resid_var) Z with
    Z independent. Closed forms (kd = kappa dt, e = exp(-kd), om = 1 - e):
    qe: dx = rho/xi [(1 + kd/2)(v' - m) + c] + ..., c = (theta - v0)(om - kd + kd om/2), so
        Cov(dx, v' - v0) = rho/xi (1 + kd/2) s^2 and
        Var(dx) = rho^2/xi^2 (1 + kd/2)^2 s^2 + (1 - rho^2) E[int_var], E[int_var] = (v0 + m) dt/2:
        Var(dx) - E[int_var] = O(kd^2) relative (the trapezoid for int v), shown below to be far
        under the tolerance;
    euler: dx = rho sqrt(v0 dt) z + ..., Cov(dx, v' - v0) = rho xi v0 dt, Var(dx) = v0 dt exactly."""
    dt, n_paths = 1.0, 200_000
    c = LEV_CASES[scheme]
    p = vol.VolParams(rho=rho, generator=np.zeros((1, 1)), regime0=0, regime_names=("one",), scheme=scheme, **c)
    (state, info), *_ = run_paths(
        vol, p, no_drivers, n_assets=1, n_paths=n_paths, n_steps=1, dt=dt, dtype=jnp.float64, seed=seed
    )
    z = np.asarray(rng.normal(rng.key(seed + 1), (n_paths,), jnp.float64))
    dx = np.asarray(info.lev_shock[:, 0, 0]) + np.sqrt(np.asarray(info.resid_var[:, 0, 0])) * z
    dv = np.asarray(state.v[:, 0]) - c["v0"]
    kappa, theta, xi, v0 = c["kappa"][0], THETA, c["xi"][0], c["v0"]
    if scheme == "qe":
        kd = kappa * dt
        m, s2 = (float(x) for x in vol.qe_moments(v0, kappa, theta, xi, dt))
        om = -np.expm1(-kd)
        cc = (theta - v0) * (om - kd + 0.5 * kd * om)
        e_int = 0.5 * (v0 + m) * dt
        cov = rho / xi * (1 + kd / 2) * s2
        var_dx = rho**2 / xi**2 * ((1 + kd / 2) ** 2 * s2 + cc**2) + (1 - rho**2) * e_int
        assert np.mean(dv == -v0) > 0.1  # the exponential branch's mass at 0 was used
    else:
        e_int = v0 * dt
        cov = rho * xi * v0 * dt
        var_dx = e_int
    n = dx.size
    se_var = np.sqrt(np.var((dx - dx.mean()) ** 2) / n)
    # Discretisation bias of Var(dx) against E[int_var]: below 1 % of the tolerance.
    assert abs(var_dx - e_int) < 0.01 * 4 * se_var, (var_dx, e_int, se_var)
    assert abs(dx.var() - e_int) < 4 * se_var, (dx.var(), e_int, se_var)
    iv = np.asarray(info.int_var).ravel()
    assert abs(iv.mean() - e_int) < 4 * iv.std() / np.sqrt(n) + 1e-12 * e_int, (iv.mean(), e_int)
    prod = (dx - dx.mean()) * (dv - dv.mean())
    assert abs(prod.mean() - cov) < 4 * prod.std() / np.sqrt(n), (prod.mean(), cov)
    corr = np.corrcoef(dx, dv)[0, 1]
    assert np.sign(corr) == np.sign(rho) and abs(corr) > 4 / np.sqrt(n), corr


@pytest.mark.parametrize("rescale", [0.0, 0.5, 1.0])
def test_forced_switch_rescales_variance(rescale):
    p = vol.VolParams(switch_rescale=rescale)  # default four regimes, starts in "normal"
    s = vol.init(p, 2, jnp.float64)
    k = rng.key(3)
    z = jnp.array([0.3, -1.2])
    stay, info0 = jit_step(k, s, p, 1.0, z_var=z, force_regime=vol.NORMAL)
    jump, info = jit_step(k, s, p, 1.0, z_var=z, force_regime=vol.EXTREME)
    # The diffusion over the step is the same; only the end-of-step rescale differs.
    np.testing.assert_array_equal(info.int_var, info0.int_var)
    np.testing.assert_array_equal(info.lev_shock, info0.lev_shock)
    v_diff = 2 * np.asarray(info.int_var) / 1.0 - np.asarray(s.v)
    np.testing.assert_allclose(stay.v, v_diff, rtol=1e-12)
    ratio = (p.theta[vol.EXTREME] / p.theta[vol.NORMAL]) ** rescale
    np.testing.assert_allclose(jump.v, v_diff * ratio, rtol=1e-12)
    np.testing.assert_allclose(info.v, jump.v)
    # lev_shock is Andersen's rho/xi (v' - v - kappa theta dt + kappa int_var), computed without
    # the cancellation v' - v; in float64 the literal formula agrees to its own rounding.
    r = vol.NORMAL
    lit = p.rho / p.xi[r] * (v_diff - np.asarray(s.v) - p.kappa[r] * p.theta[r] + p.kappa[r] * np.asarray(info.int_var))
    np.testing.assert_allclose(info.lev_shock, lit, rtol=1e-9)
    np.testing.assert_allclose(info.resid_var, (1 - p.rho**2) * np.asarray(info.int_var), rtol=1e-14)
    assert not bool(info0.switched) and int(stay.regime) == vol.NORMAL
    assert bool(info.switched) and int(info.regime) == vol.NORMAL and int(info.next_regime) == vol.EXTREME
    assert int(jump.regime) == vol.EXTREME and float(jump.time_in_regime) == 0.0
    assert float(stay.time_in_regime) == 1.0
    # (force_regime is traced in jit_step, as when the market schedules a shock.)
    with pytest.raises(ValueError, match="force_regime = 4"):
        vol.step(k, s, p, 1.0, force_regime=4)


def test_zero_vol_of_vol_and_float32_drivers():
    """xi = 0: v follows its mean exactly, and lev_shock takes the xi -> 0 limit rho sqrt(int_var) z
    (Var of the price increment stays int_var). In float32 the drivers match float64 to float32
    accuracy: lev_shock is computed without the cancellation v' - v."""
    p = vol.VolParams(xi=np.zeros(4), rho=-0.4)
    s = vol.init(p, 2, jnp.float64)
    z = jnp.array([1.0, -2.0])
    s1, info = jit_step(rng.key(1), s, p, 5.0, z_var=z, force_regime=vol.NORMAL)
    m, _ = vol.qe_moments(p.v0, p.kappa[1], p.theta[1], 0.0, 5.0)
    np.testing.assert_allclose(s1.v, [m, m], rtol=1e-14)
    np.testing.assert_allclose(info.lev_shock, -0.4 * np.sqrt(info.int_var) * z, rtol=1e-14)
    np.testing.assert_allclose(info.resid_var, 0.84 * info.int_var, rtol=1e-14)
    # float32 vs float64 drivers, one step with xi > 0: asset 0 on QE's quadratic branch, asset 1
    # (v0 ~ 0, psi ~ xi^2/(2 kappa theta) = 1.96 > psi_c) on the exponential one.
    p = vol.VolParams(xi=2 * vol._XI, v0=np.array([1e-8, 1e-11]))
    out = {}
    for dt_ in (jnp.float32, jnp.float64):
        s = vol.init(p, 2, dt_)
        out[dt_] = jit_step(rng.key(2), s, p, 1.0, z_var=jnp.array([0.7, 0.7], dt_), force_regime=1)[1]
        assert out[dt_].lev_shock.dtype == dt_
    np.testing.assert_allclose(out[jnp.float32].lev_shock, out[jnp.float64].lev_shock, rtol=2e-5)
    np.testing.assert_allclose(out[jnp.float32].v, out[jnp.float64].v, rtol=2e-5)


def test_invalid_params_messages():
    g = FAST_G.copy()
    g[0, 0] = -0.3
    with pytest.raises(ValueError, match=r"VolParams\.generator = .*rows must sum to 0"):
        vol.VolParams(generator=g)
    with pytest.raises(ValueError, match=r"VolParams\.generator = .*off-diagonal rates must be >= 0"):
        vol.VolParams(
            generator=np.array([[1.0, -1.0], [1.0, -1.0]]),
            kappa=np.ones(2),
            theta=np.ones(2),
            xi=np.ones(2),
            regime_names=("a", "b"),
        )
    with pytest.raises(ValueError, match=r"VolParams\.theta = .*shape \(R,\) or \(R, A\) with R = 4"):
        vol.VolParams(theta=np.ones(3))
    with pytest.raises(ValueError, match=r"VolParams\.regime0 = 4: must be an integer in \[0, 4\)"):
        vol.VolParams(regime0=4)
    with pytest.raises(ValueError, match=r"per-asset sizes disagree"):
        vol.VolParams(rho=np.array([-0.1, -0.2]), v0=np.ones(3) * 1e-8)
    with pytest.raises(ValueError, match=r"n_assets = 3"):
        vol.init(vol.VolParams(rho=np.array([-0.1, -0.2])), 3)


def test_contract():
    # The harness tells paths apart with np.allclose (atol 1e-8), which cannot see variances per
    # second (~1e-8): the contract runs with the variances scaled by 1e6 (xi by 1e3, the same
    # coefficients of variation); the contract itself is unit-free.
    p = vol.VolParams(
        theta=np.outer(vol._THETA, [1.0, 4.0]) * 1e6,
        xi=vol._XI * 1e3,
        rho=np.array([-0.3, -0.5]),
        v0=np.array([1e-2, 4e-2]),
    )
    bad_rows = vol._GENERATOR.copy()
    bad_rows[0, 1] *= 1.01
    neg_off = vol._GENERATOR.copy()
    neg_off[0, 1], neg_off[0, 0] = -1e-4, 1e-4
    check_contract(
        vol,
        p,
        no_drivers,
        n_assets=2,
        dt=0.5,
        invalid=[
            ("theta", -vol._THETA),
            ("kappa", -vol._KAPPA),
            ("xi", -vol._XI),
            ("theta", np.zeros(4)),
            ("rho", 1.5),
            ("rho", np.array([-1.2, 0.0])),
            ("generator", bad_rows),
            ("generator", neg_off),
            ("generator", vol._GENERATOR[:3]),
            ("scheme", "milstein"),
            ("regime0", 4),
            ("regime0", -1),
            ("v0", -1e-8),
            ("switch_rescale", 1.5),
            ("psi_c", 3.0),
            ("kappa", np.full(4, np.nan)),
            ("regime_names", ("a", "b")),
        ],
    )
    check_contract(
        vol, vol.VolParams(scheme="euler", theta=vol._THETA * 1e6, xi=vol._XI * 1e3, v0=1e-2), no_drivers, n_assets=2
    )
