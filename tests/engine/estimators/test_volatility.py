"""Volatility estimator (spec Part 2, engine side): EWMA variance, realized variances, regime,
horizon volatility, leverage effect."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import quad

from mmsim import observation
from mmsim.engine.estimators import _ewma
from mmsim.engine.estimators import volatility as vol


def ret_seq(r, dts, valid=None, dtype=jnp.float64):
    """Inputs for a scan: (obs with dt, log returns, validity) with r (..., T, A), dts (..., T)."""
    r = np.asarray(r, float)
    lead, n_a = r.shape[:-1], r.shape[-1]
    valid = np.ones(r.shape, bool) if valid is None else np.asarray(valid, bool)
    tmpl = observation.empty(n_a, dtype)
    obs = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, lead + x.shape), tmpl)
    obs = obs._replace(dt=jnp.asarray(dts, dtype))
    return obs, jnp.asarray(r, dtype), jnp.asarray(valid)


def _scan(params, inputs, n_assets, dtype):
    def body(s, x):
        s = vol.update(params, s, *x)
        return s, s

    return jax.lax.scan(body, vol.init(params, n_assets, dtype), inputs)


_run = jax.jit(_scan, static_argnums=(2, 3))
_run_paths = jax.jit(jax.vmap(_scan, in_axes=(None, 0, None, None)), static_argnums=(2, 3))


def test_hand_computed_two_returns():
    p = vol.VolEstParams(long_run_var=1e-6, regime_theta=1e-6 * np.asarray([0.16, 1, 4, 16]))
    r1, r2 = 1e-3, -2e-3
    final, states = _run(p, ret_seq([[r1], [r2]], [1.0, 2.0]), 1, jnp.float64)
    # Before any return every variance is the prior; the first return sets them all to r^2/dt.
    for f in ("var", "rv_1m", "rv_5m", "rv_1h"):
        np.testing.assert_allclose(getattr(states, f)[0, 0], r1**2, rtol=1e-12)
    # Second return, dt = 2 s: RiskMetrics weight 1 - 0.94^2, normalised by the total weight.
    w1, w2 = 0.06, 1 - 0.94**2
    g = w2 / (w1 + w2 * (1 - w1))
    np.testing.assert_allclose(final.var[0], r1**2 + g * (r2**2 / 2 - r1**2), rtol=1e-12)
    for f, win in zip(("rv_1m", "rv_5m", "rv_1h"), vol.RV_WINDOWS_S):
        hl = _ewma.window_half_life(win)
        a, b = 1 - 2 ** (-1 / hl), 1 - 2 ** (-2 / hl)
        gg = b / (a + b * (1 - a))
        np.testing.assert_allclose(getattr(final, f)[0], r1**2 + gg * (r2**2 / 2 - r1**2), rtol=1e-12)
    # One leverage pair: x = r1 / sqrt(1), y = r2^2 / 2 - var_1 = +1e-6: correlation +1.
    wl = 1 - 2 ** (-2 / p.leverage_half_life_s)
    np.testing.assert_allclose(final.lev_cov[0], wl * r1 * (r2**2 / 2 - r1**2), rtol=1e-12)
    np.testing.assert_allclose(vol.leverage_corr(final)[0], 1.0, rtol=1e-12)
    assert float(vol.leverage_corr(jax.tree_util.tree_map(lambda x: x[0], states))[0]) == 0.0
    # Regime on rv_1h / long_run_var: first 1 (Normal, ratio 1), then sqrt(rv_1h / 1e-6).
    ratio = math.sqrt(float(final.rv_1h[0]) / 1e-6)
    assert 1.0 < ratio < 1.5 and int(final.regime) == vol.NORMAL
    np.testing.assert_allclose(final.regime_duration, 3.0)
    np.testing.assert_allclose(vol.sigma(final)[0], math.sqrt(float(final.var[0])), rtol=1e-14)


def test_masks_and_interval():
    """An invalid return leaves the estimates; the next return's interval spans the gap."""
    p = vol.VolEstParams()
    r = [[1e-4, 2e-4], [5.0, 1e-4], [3e-4, 1e-4]]
    valid = [[True, True], [False, True], [True, True]]
    final, states = _run(p, ret_seq(r, [1.0, 1.0, 1.0], valid), 2, jnp.float64)
    s0 = jax.tree_util.tree_map(lambda x: x[0], states)
    s1 = jax.tree_util.tree_map(lambda x: x[1], states)
    for f in ("var", "rv_1m", "rv_5m", "rv_1h", "lev_cov", "lev_var_r", "lev_var_dv", "prev_x"):
        np.testing.assert_array_equal(getattr(s1, f)[0], getattr(s0, f)[0], err_msg=f)
    np.testing.assert_allclose(s1.since_s[0], 1.0)
    # Third observation: asset 0's return covers 2 s.
    w = 1 - 0.94**2
    g = w / (0.06 + w * 0.94)
    np.testing.assert_allclose(final.var[0], 1e-8 + g * (9e-8 / 2 - 1e-8), rtol=1e-12)


def test_edge_cases_no_nan():
    for dtype in (jnp.float32, jnp.float64):
        r = [[0.0, np.nan], [0.0, np.inf], [1e-3, 1e-3], [0.0, 0.0], [5e-2, 0.0]]
        dts = [1e-12, 1.0, 1e-9, 1.0, 1e-6]
        final, states = _run(vol.VolEstParams(), ret_seq(r, dts, dtype=dtype), 2, dtype)
        for leaf in jax.tree_util.tree_leaves(states):
            if jnp.issubdtype(leaf.dtype, jnp.floating):
                assert bool(jnp.all(jnp.isfinite(leaf)))
        assert float(jnp.min(final.var)) >= 1e-16 * (1 - 1e-6)
        for h in (0.0, 1e-30, 1.0, 1e9, -1.0):
            assert bool(jnp.all(jnp.isfinite(vol.sigma_for_horizon(vol.VolEstParams(), final, h))))
        assert bool(jnp.all(jnp.isfinite(vol.leverage_corr(final))))
        # Nothing valid: priors kept, Normal regime.
        empty, _ = _run(vol.VolEstParams(), ret_seq(r, dts, np.zeros((5, 2), bool), dtype), 2, dtype)
        np.testing.assert_allclose(empty.var, 1e-8, rtol=1e-6)
        assert int(empty.regime) == vol.NORMAL


def test_jit_vmap_dtype(seed):
    rng = np.random.default_rng(seed)
    p = vol.VolEstParams()
    t_len = 8
    r = 1e-3 * rng.standard_normal((3, t_len, 2))
    valid = rng.uniform(size=(3, t_len, 2)) > 0.2
    dts = rng.uniform(0.5, 1.5, (3, t_len))
    for dtype in (jnp.float32, jnp.float64):
        tol = 2e-5 if dtype == jnp.float32 else 1e-12
        batched = ret_seq(r, dts, valid, dtype)
        vm, _ = _run_paths(p, batched, 2, dtype)
        for i in range(3):
            inp = jax.tree_util.tree_map(lambda x: x[i], batched)
            jt, _ = _run(p, inp, 2, dtype)
            for name, a, b in zip(jt._fields, jt, vm):
                assert a.dtype == b.dtype, name
                if jnp.issubdtype(a.dtype, jnp.floating):
                    assert a.dtype == dtype, name
                np.testing.assert_allclose(np.asarray(a), np.asarray(b[i]), rtol=tol, atol=0, err_msg=name)
        # Op by op (eager) over the first 2 steps of the last path, against the jitted scan.
        inp = jax.tree_util.tree_map(lambda x: x[:2], inp)
        jt, _ = _run(p, inp, 2, dtype)
        s = vol.init(p, 2, dtype)
        for t in range(2):
            s = vol.update(p, s, *jax.tree_util.tree_map(lambda x: x[t], inp))
        for name, a, b in zip(s._fields, s, jt):
            assert a.dtype == b.dtype, name
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=0, err_msg=name)
        for h in (0.0, 30.0):
            assert jax.vmap(lambda st: vol.sigma_for_horizon(p, st, h))(vm).dtype == dtype


@pytest.mark.parametrize("irregular", [False, True])
def test_ewma_sigma_converges(irregular, seed):
    """Constant-vol Gaussian returns: the RiskMetrics variance is unbiased for sigma^2, its mean
    squared error is 2 sigma^4 sum_i a_i^2 (a_i its normalised weights; 2 sigma^4 w / (2 - w)
    at a constant per-step weight w) and sigma_hat is within its delta-method bias of sigma."""
    n_paths, t_len, sigma = 2000, 400, 3e-4
    rng = np.random.default_rng(seed + irregular)
    dts = rng.uniform(0.5, 1.5, (n_paths, t_len)) if irregular else np.ones((n_paths, t_len))
    r = sigma * np.sqrt(dts)[..., None] * rng.standard_normal((n_paths, t_len, 1))
    final, _ = _run_paths(vol.VolEstParams(), ret_seq(r, dts), 1, jnp.float64)
    v = np.asarray(final.var[:, 0])
    assert abs(v.mean() - sigma**2) < 4 * v.std() / math.sqrt(n_paths), (v.mean(), sigma**2)
    # Each path's normalised weights a_i = w_i prod_{j > i} (1 - w_j) / sum, w = 1 - 0.94^dt.
    w = 1 - 0.94**dts
    tail = np.concatenate([np.cumprod((1 - w)[:, ::-1], axis=1)[:, ::-1][:, 1:], np.ones((n_paths, 1))], axis=1)
    a = w * tail
    a /= a.sum(axis=1, keepdims=True)
    mse = 2 * sigma**4 * np.sum(a**2, axis=1)  # per path
    if not irregular:
        np.testing.assert_allclose(mse, 2 * sigma**4 * 0.06 / (2 - 0.06), rtol=1e-9)
    d2 = (v - sigma**2) ** 2
    assert abs(d2.mean() - mse.mean()) < 4 * d2.std() / math.sqrt(n_paths), (d2.mean(), mse.mean())
    # sigma_hat = sqrt(var_hat): delta-method bias -MSE / (8 sigma^3).
    s = np.sqrt(v)
    bias = -mse.mean() / (8 * sigma**3)
    assert abs(s.mean() - (sigma + bias)) < 4 * s.std() / math.sqrt(n_paths), (s.mean(), sigma + bias)


def _band(weights_t, v_t):
    """Mean and standard deviation of a normalised EWMA of r^2 (Gaussian r, variances v_t) at every
    step: weights_t (T,) per-step weights."""
    t_len = len(weights_t)
    mean, m2 = np.zeros(t_len), np.zeros(t_len)
    wsum, e, var = 0.0, 0.0, 0.0
    for t in range(t_len):
        w = weights_t[t]
        wsum_new = wsum + w * (1 - wsum)
        g = w / wsum_new
        e = (1 - g) * e + g * v_t[t]
        var = (1 - g) ** 2 * var + g**2 * 2 * v_t[t] ** 2
        wsum = wsum_new
        mean[t], m2[t] = e, var
    return mean, np.sqrt(m2)


def test_regime_switch_detected_within_computed_delay(seed):
    """sigma = sqrt(long_run_var) for an hour, then 4x: the 1-hour realized variance crosses the
    Extreme threshold (ratio 3, variance 9x) between the times where its mean +- 4 SD does."""
    lrv = 1e-8
    p = vol.VolEstParams(long_run_var=lrv)
    n_paths, t_switch, t_len = 32, 3600, 6000
    v_t = np.where(np.arange(t_len) < t_switch, lrv, 16 * lrv)
    rng = np.random.default_rng(seed)
    r = np.sqrt(v_t)[None, :, None] * rng.standard_normal((n_paths, t_len, 1))
    _, states = _run_paths(p, ret_seq(r, np.ones((n_paths, t_len))), 1, jnp.float64)
    regime = np.asarray(states.regime)  # (P, T)
    w = 1 - 2 ** (-1 / _ewma.window_half_life(3600.0))
    mean, sd = _band(np.full(t_len, w), v_t)
    lo, hi = mean - 4 * sd, mean + 4 * sd
    # Before the switch, once the band lies inside the Normal range [0.25, 2.25] lrv: Normal.
    settled = np.flatnonzero((lo > 0.25 * lrv) & (hi < 2.25 * lrv))[0]
    assert settled < 300
    assert np.all(regime[:, settled:t_switch] == vol.NORMAL)
    # After: the first Extreme step lies between the band's two crossings of 9 lrv.
    t_lo = np.flatnonzero(hi[t_switch:] >= 9 * lrv)[0] + t_switch
    t_hi = np.flatnonzero(lo[t_switch:] >= 9 * lrv)[0] + t_switch
    first = np.argmax(regime[:, t_switch:] == vol.EXTREME, axis=1) + t_switch
    assert np.all(regime[:, -1] == vol.EXTREME)
    assert np.all((first >= t_lo) & (first <= t_hi)), (first.min(), first.max(), t_lo, t_hi)
    # The noiseless crossing lies inside; it is earlier than the stationary EWMA's hl log2(15 / 7)
    # = 1372 s because the normalised EWMA has no weight before the start (1 hour before the switch).
    t_mid = np.flatnonzero(mean[t_switch:] >= 9 * lrv)[0] + t_switch
    assert t_lo < t_mid < t_hi and t_mid - t_switch < 1372
    # It passes through High on the way, and the duration counts from the last change.
    assert np.all(np.any(regime[:, t_switch:] == vol.HIGH, axis=1))
    last_change = t_len - np.argmax((regime[:, ::-1] != regime[:, -1:]), axis=1)
    np.testing.assert_allclose(np.asarray(states.regime_duration[:, -1]), t_len - 1 - last_change)


def test_regime_is_market_wide_max():
    """Two assets: the calmer one Normal, the other High: the market regime is High."""
    p = vol.VolEstParams(long_run_var=np.asarray([1e-8, 1e-6]), regime_source="var")
    r = np.asarray([[1e-4, 2e-3]])  # ratios 1 and 2
    final, _ = _run(p, ret_seq(r, [1.0]), 2, jnp.float64)
    assert int(final.regime) == vol.HIGH
    np.testing.assert_allclose(vol.regime_ratio(p, final), [1.0, 2.0], rtol=1e-12)


def test_sigma_for_horizon_closed_form():
    kappa = np.asarray([1e-3, 2e-3, 5e-3, 1e-2])
    theta = np.asarray([1e-9, 1e-8, 4e-8, 2e-7])
    p = vol.VolEstParams(regime_kappa=kappa, regime_theta=theta)
    st = vol.init(p, 2, jnp.float64)
    for regime in range(4):
        s = st._replace(var=jnp.asarray([3e-8, 1e-10]), regime=jnp.asarray(regime, jnp.int32))
        for h in (1.0, 60.0, 600.0, 7200.0):
            got = np.asarray(vol.sigma_for_horizon(p, s, h))
            k, th, v0 = kappa[regime], theta[regime], np.asarray([3e-8, 1e-10])
            want = np.sqrt(th + (v0 - th) * (1 - np.exp(-k * h)) / (k * h))
            np.testing.assert_allclose(got, want, rtol=1e-12)
            # It is the root of the average expected variance E[v_t] = th + (v0 - th) e^{-k t}.
            for a in range(2):
                avg = quad(lambda t: th + (v0[a] - th) * np.exp(-k * t), 0, h, epsabs=0, epsrel=1e-12)[0] / h
                np.testing.assert_allclose(got[a] ** 2, avg, rtol=1e-10)
        # h -> 0: the current variance; h -> infinity: the regime's theta.
        np.testing.assert_allclose(vol.sigma_for_horizon(p, s, 0.0), np.sqrt([3e-8, 1e-10]), rtol=1e-12)
        np.testing.assert_allclose(vol.sigma_for_horizon(p, s, 1e-20), np.sqrt([3e-8, 1e-10]), rtol=1e-12)
        np.testing.assert_allclose(vol.sigma_for_horizon(p, s, 1e12), np.sqrt(theta[regime]), rtol=1e-6)
    # kappa = 0: no mean reversion.
    p0 = vol.VolEstParams(regime_kappa=np.zeros(4))
    np.testing.assert_allclose(
        vol.sigma_for_horizon(p0, st._replace(var=jnp.asarray([2e-8, 3e-8])), 100.0), np.sqrt([2e-8, 3e-8]), rtol=1e-14
    )


def test_leverage_effect_sign(seed):
    """Returns r_t = sigma_t z_t with sigma_t^2 = v exp(-c z_{t-1} - c^2 / 2): a return is followed by
    a variance that moves against it. The estimate is negative (mean over paths beyond 4 SE), and
    indistinguishable from 0 (within 4 SE) for c = 0."""
    n_paths, t_len, v = 128, 4000, 1e-8
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n_paths, t_len + 1))
    out = {}
    for c in (0.8, 0.0):
        s2 = v * np.exp(-c * z[:, :-1] - c * c / 2)
        r = np.sqrt(s2) * z[:, 1:]
        final, _ = _run_paths(vol.VolEstParams(), ret_seq(r[..., None], np.ones((n_paths, t_len))), 1, jnp.float64)
        out[c] = np.asarray(vol.leverage_corr(final)[:, 0])
    neg, ctl = out[0.8], out[0.0]
    assert neg.mean() < -4 * neg.std() / math.sqrt(n_paths), (neg.mean(), neg.std())
    assert abs(ctl.mean()) < 4 * ctl.std() / math.sqrt(n_paths), (ctl.mean(), ctl.std())
    assert neg.mean() < ctl.mean()


def test_invalid_params_raise():
    base = vol.VolEstParams()
    for field, bad in (
        ("ewma_lambda", 1.0),
        ("ewma_lambda", 0.0),
        ("ewma_interval_s", 0.0),
        ("long_run_var", -1e-8),
        ("regime_thresholds", np.asarray([0.5, 0.4, 3.0])),
        ("regime_kappa", np.asarray([1e-3, 1e-3, 1e-3])),
        ("regime_kappa", np.asarray([1e-3, -1e-3, 1e-3, 1e-3])),
        ("regime_theta", np.asarray([0.0, 1e-8, 2e-8, 3e-8])),
        ("min_var", 0.0),
        ("leverage_half_life_s", -5.0),
        ("regime_source", "rv_2h"),
    ):
        with pytest.raises(ValueError, match=rf"VolEstParams\.{field} = "):
            dataclasses.replace(base, **{field: bad})
