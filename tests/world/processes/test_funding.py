"""Funding: premium-index OU against its stationary law, Binance's clamp formula, settlement times."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmsim import rng
from mmsim.world.processes import funding
from tests.world.processes._harness import check_contract, run_paths

#: One compiled step for the hand-checked cases (eager dispatch compiles every primitive apart).
step = jax.jit(funding.step, static_argnums=3)


def no_drivers(dtype, n_assets):
    return (), {}


def check_moments(x, mean, var):
    """Sample mean and variance of ``x`` against closed forms, within 4 standard errors."""
    n = x.size
    xc = x - x.mean()
    se_mean = x.std() / np.sqrt(n)
    se_var = np.sqrt(np.var(xc**2) / n)
    assert abs(x.mean() - mean) < 4 * se_mean, (x.mean(), mean, se_mean)
    assert abs(xc.var() - var) < 4 * se_var, (xc.var(), var, se_var)


def test_stationary_premium_and_divergence(seed):
    # Fast kappas so that 60 steps of 1 s reach the stationary law: the transition is the exact
    # OU one, so the law at t is N(theta, var (1 - e^{-2 kappa t})) from P0 = theta, d0 = 0;
    # e^{-2 kappa t} <= e^{-12} makes the transient negligible against 4 SE (checked below).
    kappa = np.array([0.1, 0.3])
    ref_kappa = np.array([0.2, 0.15])
    p = funding.FundingParams(
        kappa=kappa,
        theta=np.array([2e-4, -1e-4]),
        sigma=np.array([1e-4, 3e-4]),
        ref_kappa=ref_kappa,
        ref_sigma=5e-5,
        interval_s=3600.0,
    )
    n_paths, n_steps, dt = 100_000, 60, 1.0
    (state, info), *_ = run_paths(
        funding, p, no_drivers, n_assets=2, n_paths=n_paths, n_steps=n_steps, dt=dt, dtype=jnp.float64, seed=seed
    )
    t = n_steps * dt
    prem = np.asarray(state.premium)
    div = np.asarray(state.divergence)
    for a in range(2):
        var_p = p.sigma[a] ** 2 / (2 * kappa[a])
        var_d = 5e-5**2 / (2 * ref_kappa[a])
        assert np.exp(-2 * kappa[a] * t) * var_p < 0.1 * var_p * np.sqrt(2 / n_paths)
        assert np.exp(-2 * ref_kappa[a] * t) * var_d < 0.1 * var_d * np.sqrt(2 / n_paths)
        check_moments(prem[:, a], p.theta[a], var_p)
        check_moments(div[:, a], 0.0, var_d)
    # The reported rates are the formula applied to the premium (no settlement in these 60 s).
    assert not np.any(np.asarray(info.settled))
    rate = np.asarray(info.rate[:, -1])
    np.testing.assert_allclose(rate, np.asarray(funding.funding_rate(state.premium, p)), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(info.ref_rate[:, -1]), rate + div, rtol=1e-12, atol=1e-18)
    np.testing.assert_allclose(np.asarray(info.rate_per_s[:, -1]), rate / 3600.0, rtol=1e-12)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_clamp_formula(dtype):
    p = funding.FundingParams()  # interest 1e-4, clamp 5e-4, cap 3e-3 per interval
    prem = np.array([0.0, 3e-4, 1e-3, -2e-3, 5e-3, -6e-3, 6e-4, -4e-4, 1e-4])
    expect = np.array(
        [
            1e-4,  # |I - P| <= clamp: the rate is the interest rate
            1e-4,
            5e-4,  # P - clamp
            -1.5e-3,  # P + clamp
            3e-3,  # 4.5e-3 capped
            -3e-3,  # -5.5e-3 capped
            1e-4,  # 6e-4 + clip(-5e-4) = 1e-4: at the edge of the dead band
            1e-4,  # -4e-4 + clip(5e-4) = 1e-4: at the other edge
            1e-4,
        ]
    )
    out = funding.funding_rate(jnp.asarray(prem, dtype), p)
    assert out.dtype == dtype
    np.testing.assert_allclose(
        np.asarray(out),
        expect,
        rtol=1e-6 if dtype == jnp.float32 else 1e-12,
        atol=1e-10 if dtype == jnp.float32 else 1e-18,
    )
    # Through step, one premium per asset: sigma = 0 keeps P at theta, and the rate is the formula's.
    q = funding.FundingParams(theta=prem, sigma=0.0, ref_sigma=0.0)
    s = funding.init(q, prem.size, dtype)
    _, info = step(rng.key(0), s, q, 60.0)
    assert info.rate.dtype == dtype
    np.testing.assert_allclose(np.asarray(info.rate), expect, rtol=1e-6, atol=1e-10)
    np.testing.assert_allclose(np.asarray(info.ref_rate), expect, rtol=1e-6, atol=1e-10)


def _scan(p, dt, n_steps, dtype=jnp.float64, seed=0):
    (state, info), *_ = run_paths(
        funding, p, no_drivers, n_assets=2, n_paths=2, n_steps=n_steps, dt=dt, dtype=dtype, seed=seed
    )
    return state, jax.tree_util.tree_map(np.asarray, info)


@pytest.mark.parametrize(
    "dt, n_steps, interval, first, dtype",
    [
        (60.0, 2 * 24 * 60, 28_800.0, None, jnp.float32),  # two days of minutes, 8 h settlements
        (60.0, 2 * 24 * 60, 28_800.0, 3_600.0, jnp.float64),  # first settlement 1 h after the start
        (0.5, 400, 10.0, 3.0, jnp.float32),  # short interval, half-second steps
        (0.1, 1000, 1.0, 0.7, jnp.float32),  # dt not exact in binary floating point
        (7.0, 100, 10.0, None, jnp.float64),  # dt does not divide: the first step ending after
    ],
)
def test_settlement_times(dt, n_steps, interval, first, dtype, seed):
    p = funding.FundingParams(interval_s=interval, first_settlement_s=first, sigma=1e-3, kappa=1e-3, clamp=0.0, cap=1.0)
    state, info = _scan(p, dt, n_steps, dtype, seed)
    horizon = n_steps * dt
    times = funding.settlement_times(p, horizon)
    t0 = interval if first is None else first
    np.testing.assert_allclose(times, t0 + interval * np.arange(len(times)))
    assert times[-1] <= horizon < times[-1] + interval
    # Step i ends at (i + 1) dt; the flags are set exactly on the steps that end on a settlement
    # (or, when dt does not divide the interval, on the first step that ends after it).
    expect_idx = np.ceil(times / dt - 1e-6).astype(int) - 1
    on_grid = lambda x: abs(x / dt - round(x / dt)) < 1e-9  # noqa: E731
    if on_grid(interval) and on_grid(t0):
        np.testing.assert_allclose((expect_idx + 1) * dt, times, rtol=1e-12)
    for path in range(2):
        np.testing.assert_array_equal(np.flatnonzero(info.settled[path]), expect_idx)
        # The settled rate is the rate of that step (nonzero: clamp = 0 makes F = P), 0 otherwise.
        sr, r = info.settled_rate[path], info.rate[path]
        np.testing.assert_array_equal(sr[expect_idx], r[expect_idx])
        assert np.all(sr[expect_idx] != 0)
        mask = np.ones(n_steps, bool)
        mask[expect_idx] = False
        assert np.all(sr[mask] == 0)
        # Time to the next settlement, from the end of each step.
        t_end = (np.arange(n_steps) + 1) * dt
        nxt = t0 + interval * np.maximum(np.floor((t_end - t0) / interval + 1e-6) + 1, 0)
        np.testing.assert_allclose(info.time_to_settlement[path], nxt - t_end, rtol=1e-6, atol=1e-4 * dt)
    assert int(state.n_steps[0]) == n_steps


def test_settle_reset():
    # sigma = 0: P relaxes deterministically; at the settlement a fraction of (P - theta) is removed.
    p = funding.FundingParams(theta=0.0, sigma=0.0, kappa=1e-3, interval_s=10.0, settle_reset=0.25)
    s = funding.init(p, 1, jnp.float64)._replace(premium=jnp.array([1e-3]))
    s1, i1 = step(rng.key(1), s, p, 5.0)
    assert not bool(i1.settled)
    np.testing.assert_allclose(s1.premium, [1e-3 * np.exp(-5e-3)], rtol=1e-12)
    s2, i2 = step(rng.key(2), s1, p, 5.0)
    assert bool(i2.settled)
    p_pre = 1e-3 * np.exp(-1e-2)
    # The settled rate is taken before the reset; the state keeps 75 % of the deviation.
    np.testing.assert_allclose(i2.settled_rate, [p_pre + np.clip(1e-4 - p_pre, -5e-4, 5e-4)], rtol=1e-12)
    np.testing.assert_allclose(s2.premium, [0.75 * p_pre], rtol=1e-12)
    np.testing.assert_allclose(float(i2.time_to_settlement), 10.0)


def test_contract():
    p = funding.FundingParams(kappa=np.array([1e-3, 2e-3]), sigma=1e-5, interval_s=1.0, settle_reset=0.5)
    check_contract(
        funding,
        p,
        no_drivers,
        invalid=[
            ("kappa", 0.0),
            ("theta", float("inf")),
            ("sigma", -1e-6),
            ("interest", float("nan")),
            ("clamp", -1e-4),
            ("cap", -1e-3),
            ("ref_kappa", -1.0),
            ("ref_sigma", -1e-7),
            ("settle_reset", 1.5),
            ("settle_reset", -0.1),
            ("interval_s", 0.0),
            ("interval_s", -8.0),
            ("first_settlement_s", 0.0),
            ("first_settlement_s", -1.0),
        ],
    )
