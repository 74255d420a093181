"""Correlation estimator (spec Part 8, engine side): multi-scale EWMA covariances, refresh-time
sampling, stress matrix, diversification ratio."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmsim import observation
from mmsim.engine.estimators import correlation as corr


def ret_seq(r, dts, valid=None, dtype=jnp.float64):
    """Scan inputs (obs with dt, returns, validity): r (..., T, A), dts (..., T)."""
    r = np.asarray(r, float)
    lead, n_a = r.shape[:-1], r.shape[-1]
    valid = np.ones(r.shape, bool) if valid is None else np.asarray(valid, bool)
    tmpl = observation.empty(n_a, dtype)
    obs = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, lead + x.shape), tmpl)
    return obs._replace(dt=jnp.asarray(dts, dtype)), jnp.asarray(r, dtype), jnp.asarray(valid)


def _scan(params, inputs, n_assets, dtype):
    def body(s, x):
        s = corr.update(params, s, *x)
        return s, s

    return jax.lax.scan(body, corr.init(params, n_assets, dtype), inputs)


_run = jax.jit(_scan, static_argnums=(2, 3))
_run_paths = jax.jit(jax.vmap(_scan, in_axes=(None, 0, None, None)), static_argnums=(2, 3))


def _at(tree, i):
    return jax.tree_util.tree_map(lambda x: x[i], tree)


def test_hand_computed_two_updates():
    p = corr.CorrEstParams()
    r1, r2 = np.asarray([1e-3, 2e-3]), np.asarray([-1e-3, 1e-3])
    final, st = _run(p, ret_seq([r1, r2], [1.0, 2.0]), 2, jnp.float64)
    c1 = np.outer(r1, r1)
    for k in range(3):
        np.testing.assert_allclose(st.cov[0, k], c1, rtol=1e-12)  # the first sample sets them
    lam = np.asarray([0.94, 0.97, 0.99])
    w1, w2 = 1 - lam, 1 - lam**2
    g = w2 / (w1 + w2 * (1 - w1))
    for k in range(3):
        want = c1 + g[k] * (np.outer(r2, r2) / 2 - c1)
        np.testing.assert_allclose(final.cov[k], want, rtol=1e-12)
        d = np.sqrt(np.diag(want))
        np.testing.assert_allclose(corr.correlations(final)[k], want / np.outer(d, d), rtol=1e-12)
    np.testing.assert_allclose(corr.correlations(_at(st, 0))[2], np.ones((2, 2)), rtol=1e-12)
    # Horizons: < 60 s fast, < 300 s medium, else slow.
    cs = corr.correlations(final)
    for h, k in ((1.0, 0), (59.9, 0), (60.0, 1), (299.0, 1), (300.0, 2), (86400.0, 2)):
        np.testing.assert_array_equal(corr.correlation_for_horizon(final, h), cs[k])
    # Portfolio variance and diversification ratio, equal weights by default.
    cov = np.asarray(final.cov[2])
    np.testing.assert_allclose(corr.portfolio_variance(final), np.full(2, 0.5) @ cov @ np.full(2, 0.5), rtol=1e-12)
    wts = np.asarray([2.0, -1.0])
    np.testing.assert_allclose(corr.portfolio_variance(final, wts), wts @ cov @ wts, rtol=1e-12)
    sig = np.sqrt(np.diag(cov))
    np.testing.assert_allclose(
        corr.diversification_ratio(final, wts), np.abs(wts) @ sig / math.sqrt(wts @ cov @ wts), rtol=1e-12
    )
    # After the first update the slow correlation is 1 > 0.9: stress = 0.05 C + 0.95 = all ones.
    np.testing.assert_allclose(st.corr_stress[0], np.ones((2, 2)), rtol=1e-12)
    # After the second it is below the threshold: the stress matrix is kept.
    assert float(corr.average_correlation(final)) < 0.9
    np.testing.assert_array_equal(final.corr_stress, st.corr_stress[0])


def test_stress_matrix_initial_and_renewed():
    p = corr.CorrEstParams(stress_blend=0.5, stress_threshold=0.3)
    s0 = corr.init(p, 3, jnp.float64)
    np.testing.assert_allclose(s0.corr_stress, 0.5 * np.eye(3) + 0.5, rtol=1e-14)
    c = np.asarray([[1.0, 0.5, 0.4], [0.5, 1.0, 0.3], [0.4, 0.3, 1.0]])
    s = s0._replace(
        cov=jnp.broadcast_to(jnp.asarray(c * 1e-8), (3, 3, 3)), wsum=jnp.ones(3), initialised=jnp.asarray(True)
    )
    np.testing.assert_allclose(corr.average_correlation(s), 0.4, rtol=1e-12)
    # A zero return on every asset after a very short interval barely moves the covariances.
    obs = observation.empty(3, jnp.float64)._replace(dt=jnp.asarray(1e-9))
    s1 = corr.update(p, s, obs, jnp.zeros(3), jnp.ones(3, bool))
    np.testing.assert_allclose(s1.corr_stress, 0.5 * c + 0.5, rtol=1e-6)


def test_uncorrelated_equal_vol_ratio_sqrt2():
    s = corr.init(corr.CorrEstParams(), 2, jnp.float64)
    s = s._replace(cov=jnp.broadcast_to(4e-8 * jnp.eye(2), (3, 2, 2)))
    np.testing.assert_allclose(corr.diversification_ratio(s), math.sqrt(2.0), rtol=1e-14)
    np.testing.assert_allclose(corr.portfolio_variance(s), 2e-8, rtol=1e-14)


def test_refresh_time_sampling():
    """Asset 0 reports at obs 0 and 1, asset 1 only at obs 2: one update with the summed returns
    over the 3 seconds in between."""
    p = corr.CorrEstParams()
    r = [[1e-3, 9.0], [2e-3, 9.0], [7.0, -1e-3]]
    valid = [[True, False], [True, False], [False, True]]
    final, st = _run(p, ret_seq(r, [1.0, 1.0, 1.0], valid), 2, jnp.float64)
    assert not bool(st.initialised[1])
    np.testing.assert_allclose(st.acc_ret[1], [3e-3, 0.0], rtol=1e-12)
    np.testing.assert_allclose(st.acc_t[1], 2.0)
    acc = np.asarray([3e-3, -1e-3])
    np.testing.assert_allclose(final.cov[2], np.outer(acc, acc) / 3.0, rtol=1e-12)
    assert bool(final.initialised) and float(final.acc_t) == 0.0 and not bool(jnp.any(final.pending))
    np.testing.assert_allclose(corr.correlations(final)[2, 0, 1], -1.0, rtol=1e-12)


def test_single_asset_and_edge_cases():
    for dtype in (jnp.float32, jnp.float64):
        p = corr.CorrEstParams()
        r = np.asarray([[0.0], [np.nan], [1e-3], [np.inf], [0.0]])
        final, st = _run(p, ret_seq(r, [1e-9, 1.0, 1e-12, 1.0, 1.0], dtype=dtype), 1, dtype)
        for leaf in jax.tree_util.tree_leaves(st):
            if jnp.issubdtype(leaf.dtype, jnp.floating):
                assert bool(jnp.all(jnp.isfinite(leaf))) and leaf.dtype == dtype
        np.testing.assert_array_equal(corr.correlations(final), np.ones((3, 1, 1)))
        assert float(corr.average_correlation(final)) == 0.0
        np.testing.assert_allclose(corr.diversification_ratio(final), 1.0, rtol=1e-6)
        assert corr.portfolio_variance(final).dtype == dtype
        # Two assets, nothing valid, zero returns: identity correlations, no NaN.
        z, _ = _run(p, ret_seq(np.zeros((3, 2)), np.ones(3), np.zeros((3, 2), bool), dtype), 2, dtype)
        np.testing.assert_array_equal(corr.correlations(z), np.broadcast_to(np.eye(2), (3, 2, 2)))
        zz, _ = _run(p, ret_seq(np.zeros((3, 2)), np.ones(3), dtype=dtype), 2, dtype)
        assert bool(jnp.all(jnp.isfinite(corr.correlations(zz))))
        assert bool(jnp.isfinite(corr.diversification_ratio(zz)))


@pytest.mark.slow
def test_jit_vmap_dtype(seed):
    rng = np.random.default_rng(seed)
    p = corr.CorrEstParams()
    t_len = 8
    r = 1e-3 * rng.standard_normal((3, t_len, 3))
    valid = rng.uniform(size=(3, t_len, 3)) > 0.3
    dts = rng.uniform(0.5, 1.5, (3, t_len))
    for dtype in (jnp.float32, jnp.float64):
        tol = 2e-5 if dtype == jnp.float32 else 1e-12
        batched = ret_seq(r, dts, valid, dtype)
        vm, _ = _run_paths(p, batched, 3, dtype)
        for i in range(3):
            inp = _at(batched, i)
            jt, _ = _run(p, inp, 3, dtype)
            for name, a, b in zip(jt._fields, jt, vm):
                assert a.dtype == b.dtype, name
                if jnp.issubdtype(a.dtype, jnp.floating):
                    assert a.dtype == dtype, name
                np.testing.assert_allclose(np.asarray(a), np.asarray(b[i]), rtol=tol, atol=tol * 1e-8, err_msg=name)
        inp = jax.tree_util.tree_map(lambda x: x[:2], inp)
        jt, _ = _run(p, inp, 3, dtype)
        s = corr.init(p, 3, dtype)
        for t in range(2):
            s = corr.update(p, s, *_at(inp, t))
        for name, a, b in zip(s._fields, s, jt):
            assert a.dtype == b.dtype, name
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol * 1e-8, err_msg=name)
        for q in (
            corr.correlations(s),
            corr.average_correlation(s),
            corr.diversification_ratio(s),
            corr.portfolio_variance(s),
            corr.correlation_for_horizon(s, 100.0),
        ):
            assert q.dtype == dtype


def _sum_sq_weights(lam, t_len):
    """sum_i a_i^2 of the normalised EWMA weights after t_len samples at per-step weight 1 - lam
    (1 / effective sample size)."""
    w = 1 - lam
    a = w * lam ** np.arange(t_len)[::-1]  # w_i prod_{j > i} (1 - w_j), the first one included
    a /= a.sum()
    return float(np.sum(a**2))


def test_slow_correlation_converges(seed):
    """Correlated Gaussian returns (rho = 0.6, unequal vols): over paths, the slow correlation's
    mean is rho - rho (1 - rho^2) q / 2 and its spread (1 - rho^2) sqrt(q) (delta method, q the sum
    of squared normalised weights), both within 4 SE of the sample."""
    n_paths, t_len, rho = 400, 1500, 0.6
    sig = np.asarray([1e-4, 3e-4])
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n_paths, t_len, 2))
    z[..., 1] = rho * z[..., 0] + math.sqrt(1 - rho**2) * z[..., 1]
    final, _ = _run_paths(corr.CorrEstParams(), ret_seq(z * sig, np.ones((n_paths, t_len))), 2, jnp.float64)
    c = np.asarray(jax.vmap(corr.correlations)(final)[:, 2, 0, 1])
    q = _sum_sq_weights(0.99, t_len)
    mean = rho - rho * (1 - rho**2) * q / 2
    assert abs(c.mean() - mean) < 4 * c.std() / math.sqrt(n_paths), (c.mean(), mean)
    sd = (1 - rho**2) * math.sqrt(q)
    assert abs(c.std() - sd) < 4 * c.std() / math.sqrt(2 * n_paths), (c.std(), sd)
    # The slow covariance is unbiased for Sigma per second.
    cov = np.asarray(final.cov[:, 2])
    want = np.outer(sig, sig) * np.asarray([[1, rho], [rho, 1]])
    se = cov.std(axis=0) / math.sqrt(n_paths)
    assert np.all(np.abs(cov.mean(axis=0) - want) < 4 * se)


def test_diversification_ratio_uncorrelated_simulated(seed):
    """Two uncorrelated equal-vol assets: the ratio's mean over paths is sqrt(2) (1 + q / 4) (the
    delta method's second-order bias; first-order terms vanish) within 4 SE."""
    n_paths, t_len = 400, 1500
    rng = np.random.default_rng(seed)
    r = 2e-4 * rng.standard_normal((n_paths, t_len, 2))
    final, _ = _run_paths(corr.CorrEstParams(), ret_seq(r, np.ones((n_paths, t_len))), 2, jnp.float64)
    dr = np.asarray(jax.vmap(corr.diversification_ratio)(final))
    q = _sum_sq_weights(0.99, t_len)
    want = math.sqrt(2.0) * (1 + q / 4)
    assert abs(dr.mean() - want) < 4 * dr.std() / math.sqrt(n_paths), (dr.mean(), want)
    # Its spread: |d DR / d gamma| sqrt(Var gamma) = sqrt(q / 2).
    assert abs(dr.std() - math.sqrt(q / 2)) < 4 * dr.std() / math.sqrt(2 * n_paths)


def test_invalid_params_raise():
    base = corr.CorrEstParams()
    for field, bad in (
        ("lambdas", np.asarray([0.94, 0.97])),
        ("lambdas", np.asarray([0.94, 1.0, 0.99])),
        ("interval_s", 0.0),
        ("stress_threshold", 1.5),
        ("stress_blend", -0.1),
        ("min_var", 0.0),
    ):
        with pytest.raises(ValueError, match=rf"CorrEstParams\.{field} = "):
            dataclasses.replace(base, **{field: bad})
