"""Spread OU with jumps against its stationary closed forms; fair spread, tick grid, liquidations."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmsim import rng
from mmsim.world.processes import spread
from tests.world.processes._harness import check_contract, run_paths

MID = 60_000.0  # quote currency per base unit
VOL = 1e-4  # volatility of log-price, per sqrt(second)
DT = 0.5  # seconds


#: One compiled step for the hand-checked cases (eager dispatch compiles every primitive apart).
step = jax.jit(spread.step, static_argnums=3)
fair_spread = jax.jit(spread.fair_spread, static_argnums=(3, 4))
best_bid_ask = jax.jit(spread.best_bid_ask)


def drivers(regime=1, sigma=VOL, mid=MID, liq=0.0):
    def f(dtype, n_assets):
        return (), dict(
            sigma=jnp.full((n_assets,), sigma, dtype),
            regime=jnp.asarray(regime, jnp.int32),
            mid=jnp.full((n_assets,), mid, dtype),
            liq_volume=jnp.full((n_assets,), liq, dtype),
        )

    return f


def test_stationary_moments(seed):
    # Two assets with different kappa: each must reach its own stationary law.
    kappa = np.array([0.2, 0.5])
    fair = (1.5e-4 + 0.5 * VOL) * 1.0  # regime 1 (normal)
    p = spread.SpreadParams(
        kappa=kappa, theta0=1.5e-4, beta_vol=0.5, sigma=1e-5, jump_rate=0.05, jump_mean=5e-5, tick=0.01
    )
    mean = spread.stationary_mean(p, fair)
    var = spread.stationary_var(p)
    # Start at the stationary mean; 60 steps of 0.5 s: the start's variance deficit decays as
    # e^{-2 kappa t} <= e^{-12}.
    s0 = mean
    p = dataclasses.replace(p, s0=s0)
    n_paths = 100_000
    (state, info), *_ = run_paths(
        spread, p, drivers(), n_assets=2, n_paths=n_paths, n_steps=60, dt=DT, dtype=jnp.float64, seed=seed
    )
    s = np.asarray(state.s)
    for a in range(2):
        x = s[:, a]
        xc = x - x.mean()
        se_mean = x.std() / np.sqrt(n_paths)
        se_var = np.sqrt(np.var(xc**2) / n_paths)
        # Transient of the mean, (s0 - mean) e^{-kappa t}, and of the variance, var e^{-2 kappa t}.
        t = 60 * DT
        m_t = mean[a] + (s0[a] - mean[a]) * np.exp(-kappa[a] * t)
        v_t = var[a] * (1 - np.exp(-2 * kappa[a] * t))
        # Discretisation bias of the jump variance: factor 2 tanh(k dt / 2)/(k dt) - 1 ~ -(k dt)^2/12,
        # plus the truncation at 2 jumps, E[N^2] - E[min(N, 2)^2] ~ 5 (lam dt)^3/6; both are well
        # below the tolerance at these dt (shown here, not assumed).
        x_ = kappa[a] * DT
        jvar = 0.05 * 2 * 5e-5**2 / (2 * kappa[a])
        lam_dt = 0.05 * DT
        bias = jvar * (abs(2 * np.tanh(x_ / 2) / x_ - 1) + 5 * lam_dt**3 / 6 / (lam_dt + lam_dt**2))
        assert bias < 0.5 * se_var, (bias, se_var)
        assert abs(x.mean() - m_t) < 4 * se_mean, (a, x.mean(), m_t, se_mean)
        assert abs(xc.var() - v_t) < 4 * se_var, (a, xc.var(), v_t, se_var)
        assert abs(m_t - mean[a]) < 0.1 * se_mean and abs(v_t - var[a]) < 0.1 * se_var
        # The jumps matter: they carry most of the variance.
        assert jvar > 0.5 * var[a]
    # The floor never bites here (latent >> tick / mid), so the book spread follows the latent
    # one: same mean within the rounding to the tick grid (|error| <= tick / 2 / mid).
    sf = np.asarray(info.spread_frac[:, -1])
    assert np.all(np.asarray(info.latent[:, -1]) > 10 * 0.01 / MID)
    np.testing.assert_allclose(sf, s, atol=0.5 * 0.01 / MID * (1 + 1e-9))


def test_fair_spread_rises_with_vol_and_regime():
    p = spread.SpreadParams(theta0=1e-4, beta_vol=2.0)
    f = lambda sig, r: float(fair_spread(p, jnp.array([sig]), jnp.array(r), 1, jnp.float64)[0])  # noqa: E731
    np.testing.assert_allclose(f(0.0, 1), 1e-4, rtol=1e-12)
    np.testing.assert_allclose(f(1e-4, 1), 3e-4, rtol=1e-12)
    vals = [f(1e-4, r) for r in range(4)]
    np.testing.assert_allclose(vals, np.array([0.8, 1.0, 1.5, 3.0]) * 3e-4, rtol=1e-12)
    assert f(2e-4, 1) > f(1e-4, 1) > f(5e-5, 1)
    # Per-asset (A, R) multipliers.
    p2 = spread.SpreadParams(regime_mult=np.array([[1.0, 2.0], [3.0, 4.0]]))
    out = fair_spread(p2, jnp.zeros(2), jnp.array(1), 2, jnp.float64)
    np.testing.assert_allclose(out, [2e-4, 4e-4], rtol=1e-12)
    # The step pulls towards the fair spread: with no noise and no jumps, one step of the OU.
    p3 = spread.SpreadParams(sigma=0.0, jump_rate=0.0, theta0=1e-4, beta_vol=2.0, kappa=0.1, s0=1e-4)
    s = spread.init(p3, 1, jnp.float64)
    for r in (0, 3):
        new, info = step(rng.key(3), s, p3, 1.0, sigma=jnp.array([1e-4]), regime=jnp.array(r), mid=jnp.array([MID]))
        fair = 3e-4 * (0.8, 1.0, 1.5, 3.0)[r]
        np.testing.assert_allclose(info.fair, [fair], rtol=1e-12)
        np.testing.assert_allclose(new.s, [fair + (1e-4 - fair) * np.exp(-0.1)], rtol=1e-12)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_book_spread_on_tick_grid(dtype, seed):
    # Latent spread near and below one tick (tick / mid = 1.7e-6 for asset 0, 1e-4 for asset 1):
    # the floor bites often, and the book spread must stay >= tick and on the grid.
    tick = np.array([0.1, 0.01])
    mids = np.array([MID, 100.0])
    p = spread.SpreadParams(theta0=2e-6, beta_vol=0.0, sigma=2e-6, jump_rate=0.2, jump_mean=5e-6, tick=tick, s0=2e-6)

    def drv(dt_, n):
        return (), dict(sigma=jnp.zeros((n,), dt_), regime=jnp.array(1, jnp.int32), mid=jnp.asarray(mids, dt_))

    (state, info), *_ = run_paths(spread, p, drv, n_assets=2, n_paths=2_000, n_steps=20, dt=DT, dtype=dtype, seed=seed)
    sp = np.asarray(info.spread, np.float64)
    ticks = sp / tick
    assert np.all(ticks >= 1 - 1e-5)
    np.testing.assert_allclose(ticks, np.round(ticks), atol=1e-4)
    assert np.any(np.asarray(info.latent) * mids < tick), "the floor was never exercised"
    assert np.any(np.round(ticks) >= 2)
    np.testing.assert_allclose(np.asarray(info.spread_frac), sp / mids, rtol=1e-5)


def test_best_bid_ask():
    tick = 0.1
    mids = np.array([100.0, 100.03, 100.05, 100.07, 100.1, 60_000.0, 60_000.04, 99.96])
    for n in range(1, 6):
        spr = np.full(mids.shape, n * tick)
        bid, ask = best_bid_ask(jnp.asarray(mids), jnp.asarray(spr), tick)
        bid, ask = np.asarray(bid), np.asarray(ask)
        np.testing.assert_allclose(ask - bid, spr, atol=1e-9)
        np.testing.assert_allclose(bid / tick, np.round(bid / tick), atol=1e-6)
        np.testing.assert_allclose(ask / tick, np.round(ask / tick), atol=1e-6)
        on_grid = np.abs(mids / tick - np.round(mids / tick)) < 1e-6
        strict = (bid < mids - 1e-9) & (ask > mids + 1e-9)
        if n >= 2:
            assert np.all(strict)
        else:
            # One tick: strictly around the mid unless the mid sits on the grid; then one quote
            # is the mid (which one depends on the rounding of mid / tick) and the other a tick away.
            assert np.all(strict[~on_grid])
            touch = np.minimum(np.abs(bid - mids), np.abs(ask - mids))[on_grid]
            np.testing.assert_allclose(touch, 0.0, atol=1e-9)
            assert np.all((bid <= mids + 1e-9) & (ask >= mids - 1e-9))
        # Centred: the quotes are within half a tick of mid -/+ spread / 2.
        assert np.all(np.abs(bid - (mids - spr / 2)) <= tick / 2 + 1e-9)
    # A spread below one tick is one tick.
    bid, ask = best_bid_ask(jnp.array([100.03]), jnp.array([0.01]), tick)
    np.testing.assert_allclose([float(bid[0]), float(ask[0])], [100.0, 100.1], atol=1e-9)


def test_liquidation_widens(seed):
    p = spread.SpreadParams(liq_sensitivity=2e-5, tick=0.01)
    k = rng.key(seed)
    s = spread.init(p, 2, jnp.float64)
    kw = dict(sigma=jnp.full((2,), VOL), regime=jnp.array(1), mid=jnp.full((2,), MID))
    a, ia = step(k, s, p, DT, **kw, liq_volume=jnp.zeros(2))
    b, ib = step(k, s, p, DT, **kw, liq_volume=jnp.array([0.0, 10.0]))
    # Same draws: the latent spread moves by exactly liq_sensitivity x volume (2e-4 = 2 bp).
    np.testing.assert_allclose(np.asarray(b.s - a.s), [0.0, 2e-4], atol=1e-15)
    assert float(ib.spread[1]) > float(ia.spread[1])
    assert float(ib.spread[0]) == float(ia.spread[0])


def test_contract():
    p = spread.SpreadParams(tick=np.array([0.1, 0.01]), jump_rate=0.3)
    check_contract(
        spread,
        p,
        drivers(regime=2),
        invalid=[
            ("kappa", 0.0),
            ("theta0", -1e-4),
            ("beta_vol", -1.0),
            ("sigma", -1e-5),
            ("jump_rate", -0.1),
            ("jump_mean", -1e-4),
            ("liq_sensitivity", -1.0),
            ("regime_mult", np.array([1.0, 0.0])),
            ("regime_mult", np.array(1.0)),
            ("tick", 0.0),
            ("tick", np.array([0.1, -0.1])),
            ("s0", float("nan")),
            ("max_jumps", 0),
        ],
    )
