"""Correlated shocks across assets: sample correlations against the target matrix (calm, blended
and stress), the exact exponential stress weight, and the validation of correlation matrices
(spec Part 8)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmsim import rng
from mmsim.world.processes import correlation as corr
from tests.world.processes._harness import check_contract, run_paths

C_CALM = np.array([[1.0, 0.6, 0.3], [0.6, 1.0, -0.2], [0.3, -0.2, 1.0]])
C_STRESS = np.array([[1.0, 0.9, 0.85], [0.9, 1.0, 0.8], [0.85, 0.8, 1.0]])
NORMAL, EXTREME = 1, 3


def regime(r):
    def drivers(dtype, n_assets):
        return (), {"regime": jnp.asarray(r, jnp.int32)}

    return drivers


def check_shocks(z, target):
    """``z``: (n, n_shocks, A) samples. Each shock set has zero mean, unit variances and
    correlation ``target`` within 4 SE (SE of a sample correlation (1 - rho^2)/sqrt(n), of a
    variance sqrt(Var(z^2)/n)); different sets are uncorrelated (SE 1/sqrt(n))."""
    n, n_sets, n_a = z.shape
    for k in range(n_sets):
        x = z[:, k, :]
        se_mean = np.sqrt(x.var(axis=0) / n)
        assert np.all(np.abs(x.mean(axis=0)) < 4 * se_mean), (k, x.mean(axis=0))
        xc = x - x.mean(axis=0)
        se_var = np.sqrt(np.var(xc**2, axis=0) / n)
        assert np.all(np.abs(xc.var(axis=0) - 1.0) < 4 * se_var), (k, xc.var(axis=0), se_var)
        r = np.corrcoef(x, rowvar=False)
        se_r = (1 - target**2) / np.sqrt(n)
        off = ~np.eye(n_a, dtype=bool)
        assert np.all(np.abs(r - target)[off] < 4 * se_r[off]), (k, r, target)
    if n_sets > 1:
        cross = np.corrcoef(z[:, 0, :], z[:, 1, :], rowvar=False)[:n_a, n_a:]
        assert np.all(np.abs(cross) < 4 / np.sqrt(n)), cross


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_calm_regime_matches_corr(dtype, seed):
    """Outside the stress regime, from s = 0, the weight stays 0 and z ~ N(0, corr) exactly."""
    p = corr.CorrParams(corr=C_CALM, corr_stress=C_STRESS, stress_speed=0.5)
    (state, info), *_ = run_paths(
        corr, p, regime(NORMAL), n_assets=3, n_paths=50_000, n_steps=4, dt=1.0, dtype=dtype, seed=seed
    )
    assert info.z.dtype == dtype and info.z.shape == (50_000, 4, 2, 3)
    np.testing.assert_array_equal(np.asarray(info.stress), 0.0)
    # Steps and paths are independent draws: pool them, n = 200,000 per shock set.
    check_shocks(np.asarray(info.z, np.float64).reshape(-1, 2, 3), C_CALM)


def test_extreme_regime_matches_corr_stress(seed):
    """In the Extreme regime with a huge stress_speed the weight is 1 from the first step on,
    so z ~ N(0, corr_stress)."""
    p = corr.CorrParams(corr=C_CALM, corr_stress=C_STRESS, stress_speed=1e9)
    (state, info), *_ = run_paths(
        corr, p, regime(EXTREME), n_assets=3, n_paths=50_000, n_steps=4, dt=1.0, dtype=jnp.float64, seed=seed
    )
    np.testing.assert_array_equal(np.asarray(info.stress), 1.0)
    check_shocks(np.asarray(info.z).reshape(-1, 2, 3), C_STRESS)


def test_blended_correlation_per_path_weight(seed):
    """A state with weight s and stress_speed = 0 keeps s; z ~ N(0, (1 - s) corr + s corr_stress).
    vmapped over paths with a different weight per path (s = 0.25 or 0.75), in float32."""
    p = corr.CorrParams(corr=C_CALM, corr_stress=C_STRESS, stress_speed=0.0, n_shocks=1)
    n = 200_000
    keys = rng.path_keys(rng.key(seed), 0, n)
    s = jnp.where(jnp.arange(n) % 2 == 0, 0.25, 0.75).astype(jnp.float32)
    states = corr.CorrState(stress=s, last_z=jnp.zeros((n, 3, 1), jnp.float32))
    f = jax.jit(jax.vmap(lambda k, st: corr.step(k, st, p, 1.0, regime=jnp.int32(NORMAL))))
    new, info = f(keys, states)
    assert info.z.dtype == jnp.float32 and new.stress.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(new.stress), np.asarray(s))
    np.testing.assert_array_equal(np.asarray(new.last_z)[:, :, 0], np.asarray(info.z)[:, 0, :])
    z = np.asarray(info.z, np.float64)
    for w, sel in ((0.25, slice(0, None, 2)), (0.75, slice(1, None, 2))):
        target = (1 - w) * C_CALM + w * C_STRESS
        check_shocks(z[sel], target)
        np.testing.assert_allclose(
            np.asarray(corr.current_corr(corr.CorrState(jnp.float32(w), None), p)), target, rtol=1e-6
        )
    # Per path, the vmapped step equals the step of that path alone.
    single = jax.jit(lambda k, st: corr.step(k, st, p, 1.0, regime=jnp.int32(NORMAL)))
    one, info1 = single(keys[1], corr.CorrState(s[1], states.last_z[1]))
    np.testing.assert_allclose(np.asarray(info1.z), np.asarray(info.z[1]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_stress_weight_follows_exponential(dtype):
    """s' = target + (s - target) e^{-speed dt}: 30 steps of Extreme, then 30 of Normal;
    the weight is 1 - e^{-speed t} on the way up and (1 - e^{-speed T}) e^{-speed (t - T)} down."""
    speed, dt = 0.05, 2.0
    p = corr.CorrParams(corr=C_CALM, corr_stress=C_STRESS, stress_speed=speed)
    regimes = jnp.asarray([EXTREME] * 30 + [NORMAL] * 30, jnp.int32)

    def body(st, r_t):
        r, t = r_t
        return corr.step(rng.fold_in(rng.key(5), t), st, p, dt, regime=r)

    _, info = jax.lax.scan(body, corr.init(p, 3, dtype), (regimes, jnp.arange(60)))
    t = dt * np.arange(1, 61)
    up = -np.expm1(-speed * t[:30])
    down = up[-1] * np.exp(-speed * (t[30:] - t[29]))
    rtol = 1e-5 if dtype == jnp.float32 else 1e-13
    assert info.stress.dtype == dtype
    np.testing.assert_allclose(np.asarray(info.stress, float), np.concatenate([up, down]), rtol=rtol)
    # The other regimes (Low, High) also pull toward 0; with stress_regime = 2, High is the stress.
    s1 = corr.CorrState(jnp.asarray(0.5, dtype), jnp.zeros((3, 2), dtype))
    p2 = corr.CorrParams(corr=C_CALM, corr_stress=C_STRESS, stress_speed=speed, stress_regime=2)
    f = jax.jit(lambda st, r: corr.step(rng.key(1), st, p, dt, regime=r)[0].stress)
    f2 = jax.jit(lambda st, r: corr.step(rng.key(1), st, p2, dt, regime=r)[0].stress)
    for r, target, target2 in ((0, 0.0, 0.0), (2, 0.0, 1.0), (3, 1.0, 0.0)):
        r = jnp.int32(r)
        np.testing.assert_allclose(float(f(s1, r)), target + (0.5 - target) * np.exp(-speed * dt), rtol=rtol)
        np.testing.assert_allclose(float(f2(s1, r)), target2 + (0.5 - target2) * np.exp(-speed * dt), rtol=rtol)


def test_single_asset(seed):
    """A = 1: L = [[1]], z = w: standard normal, two independent sets."""
    p = corr.CorrParams()
    (state, info), *_ = run_paths(
        corr, p, regime(EXTREME), n_assets=1, n_paths=50_000, n_steps=2, dt=1.0, dtype=jnp.float64, seed=seed
    )
    assert info.z.shape == (50_000, 2, 2, 1)
    check_shocks(np.asarray(info.z).reshape(-1, 2, 1), np.eye(1))
    check_contract(corr, p, regime(EXTREME), n_assets=1)


def test_invalid_matrices():
    with pytest.raises(ValueError, match=r"CorrParams\.corr = .*positive definite \(smallest eigenvalue -0\.2 <"):
        corr.CorrParams(corr=np.array([[1.0, 1.2], [1.2, 1.0]]), corr_stress=np.eye(2))
    bad3 = np.array([[1.0, 0.9, -0.9], [0.9, 1.0, 0.9], [-0.9, 0.9, 1.0]])  # each entry valid, not PD
    lam = np.linalg.eigvalsh(bad3).min()
    with pytest.raises(ValueError, match=rf"CorrParams\.corr_stress = .*smallest eigenvalue {lam:.6g}"):
        corr.CorrParams(corr=np.eye(3), corr_stress=bad3)
    with pytest.raises(ValueError, match=r"CorrParams\.corr_stress = .*positive definite"):
        corr.CorrParams(corr=np.eye(2), corr_stress=np.ones((2, 2)))  # PSD, singular
    with pytest.raises(ValueError, match=r"CorrParams\.corr = .*must be symmetric"):
        corr.CorrParams(corr=np.array([[1.0, 0.5], [0.4, 1.0]]), corr_stress=np.eye(2))
    with pytest.raises(ValueError, match=r"CorrParams\.corr = .*unit diagonal"):
        corr.CorrParams(corr=np.array([[2.0, 0.5], [0.5, 1.0]]), corr_stress=np.eye(2))
    with pytest.raises(ValueError, match=r"CorrParams\.corr = .*square"):
        corr.CorrParams(corr=np.ones((2, 3)), corr_stress=np.eye(2))
    with pytest.raises(ValueError, match=r"CorrParams\.corr_stress = .*must have the shape of corr"):
        corr.CorrParams(corr=np.eye(2), corr_stress=np.eye(3))
    with pytest.raises(ValueError, match=r"CorrParams\.corr = .*must be finite"):
        corr.CorrParams(corr=np.array([[1.0, np.nan], [np.nan, 1.0]]), corr_stress=np.eye(2))
    with pytest.raises(ValueError, match=r"CorrParams\.corr has shape \(3, 3\): must be \(2, 2\)"):
        corr.init(corr.CorrParams(corr=np.eye(3), corr_stress=np.eye(3)), 2)
    # The blend of two valid matrices is valid: its smallest eigenvalue is at least the smaller one.
    for s in np.linspace(0, 1, 11):
        lam_s = np.linalg.eigvalsh((1 - s) * C_CALM + s * C_STRESS).min()
        assert lam_s >= min(np.linalg.eigvalsh(C_CALM).min(), np.linalg.eigvalsh(C_STRESS).min()) - 1e-12
    np.testing.assert_array_equal(corr.equicorrelation(3, 0.4), [[1, 0.4, 0.4], [0.4, 1, 0.4], [0.4, 0.4, 1]])


def test_contract():
    p = corr.CorrParams(corr=corr.equicorrelation(2, 0.3), corr_stress=corr.equicorrelation(2, 0.9), stress_speed=0.2)
    check_contract(
        corr,
        p,
        regime(EXTREME),
        n_assets=2,
        invalid=[
            ("corr", np.array([[1.0, 1.2], [1.2, 1.0]])),
            ("corr", np.array([[1.0, 0.5], [0.3, 1.0]])),
            ("corr", np.array([[0.9, 0.5], [0.5, 1.0]])),
            ("corr_stress", np.ones((2, 2))),
            ("corr_stress", np.eye(3)),
            ("stress_speed", -1.0),
            ("stress_speed", float("nan")),
            ("stress_regime", -1),
            ("n_shocks", 0),
        ],
    )
