"""Informed fraction alpha(t): exact OU transition against its closed forms, event jumps, the
clip to [0, 1] and the permanent impact of informed orders (spec Part 6)."""

import jax.numpy as jnp
import numpy as np
import pytest

from mmsim import rng
from mmsim.world.processes import adverse_selection as asel
from tests.world.processes._harness import check_contract, run_paths

N_PATHS = 100_000


def no_events(dtype, n_assets):
    return (), {}


def mean_var_vs_closed_form(x, mean, var):
    """Sample mean and variance of ``x`` against closed forms, within 4 Monte Carlo SE."""
    n = x.size
    xc = x - x.mean()
    se_mean = np.sqrt(xc.var() / n)
    assert abs(x.mean() - mean) < 4 * se_mean, (x.mean(), mean, se_mean)
    se_var = np.sqrt(np.var(xc**2) / n)
    assert abs(xc.var() - var) < 4 * se_var, (xc.var(), var, se_var)
    return se_mean, se_var


@pytest.mark.parametrize("kappa", [0.05, 0.0])
def test_ou_transition_and_stationary_law(kappa, seed):
    """The OU step is exact, so at any horizon T the law is N(m_T, v_T) with
    m_T = a_bar + (a0 - a_bar) e^{-k T}, v_T = sigma^2 (1 - e^{-2 k T}) / (2 k) (sigma^2 T at k = 0);
    as kT -> oo, the stationary N(a_bar, sigma^2 / (2 k)). No discretisation bias to budget for."""
    a_bar, dt, n_steps = 0.5, 2.0, 100  # horizon 200 s, kT = 10 for kappa = 0.05
    if kappa > 0:
        a0, sigma = 0.2, 0.05 * np.sqrt(2 * kappa)  # stationary sd 0.05: 10 sd from 0 and from 1
    else:
        a0, sigma = 0.5, 3e-3  # random walk: sd 0.042 at T = 200 s
    p = asel.ASParams(alpha_bar=a_bar, kappa=kappa, sigma=sigma, alpha0=a0)
    (state, info), *_ = run_paths(
        asel, p, no_events, n_assets=1, n_paths=N_PATHS, n_steps=n_steps, dt=dt, dtype=jnp.float64, seed=seed
    )
    alpha = np.asarray(info.alpha[:, :, 0])  # (paths, steps)
    # The clip is negligible by the choice of parameters, so the clipped OU has the OU's law here:
    # kappa = 0.05: the stationary law is 10 sd from 0 and from 1, and the transient from a0 = 0.2
    # stays > 8 sd from 0 (at T = 2 s: mean 0.228, sd 0.021; at T = 10 s: mean 0.318, sd 0.040);
    # kappa = 0: from 0.5 with sd 0.042 at T = 200 s, 11.8 sd from both ends. The Gaussian mass
    # beyond [0, 1] is below 2 P(Z > 8) = 1.2e-15 per step, and indeed no step was clipped.
    assert alpha.min() > 0.0 and alpha.max() < 1.0
    for k in (4, n_steps - 1):  # T = 10 s (transient) and T = 200 s
        t = (k + 1) * dt
        if kappa > 0:
            m = a_bar + (a0 - a_bar) * np.exp(-kappa * t)
            v = sigma**2 * -np.expm1(-2 * kappa * t) / (2 * kappa)
        else:
            m, v = a0, sigma**2 * t
        mean_var_vs_closed_form(alpha[:, k], m, v)
    if kappa > 0:
        # Stationary closed forms: at kT = 10 the transient left is (a0 - a_bar) e^{-10} = 1.4e-5 in
        # the mean and v e^{-20} in the variance, far below 1/4 of a standard error.
        x = alpha[:, -1]
        m_stat, v_stat = asel.stationary_moments(p)
        se_mean, se_var = mean_var_vs_closed_form(x, float(m_stat), float(v_stat))
        assert abs(a0 - a_bar) * np.exp(-kappa * n_steps * dt) < 0.25 * se_mean
        assert float(v_stat) * np.exp(-2 * kappa * n_steps * dt) < 0.25 * se_var
        # And the lag-1 autocorrelation of the stationary path is e^{-k dt}: stationary by T = 100 s.
        a1, a2 = alpha[:, 49], alpha[:, 50]
        r = np.corrcoef(a1, a2)[0, 1]
        rho = np.exp(-kappa * dt)
        assert abs(r - rho) < 4 * (1 - rho**2) / np.sqrt(a1.size), (r, rho)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_event_jumps(dtype):
    """With sigma = 0 and kappa = 0 a step is the event jump alone:
    1 - alpha' = (1 - alpha) exp(-(jump_liq n_liq + jump_funding funding_shock))."""
    p = asel.ASParams(alpha_bar=0.1, kappa=0.0, sigma=0.0, jump_liq=0.2, jump_funding=0.5, alpha0=0.1)
    s = asel.init(p, 6, dtype)
    n_liq = jnp.asarray([0.0, 1.0, 3.0, 0.0, 2.0, 1e6], dtype)
    shock = jnp.asarray([0.0, 0.0, 0.0, 1.0, 0.5, 0.0], dtype)
    s1, info = asel.step(rng.key(3), s, p, 1.0, n_liq=n_liq, funding_shock=shock)
    assert s1.alpha.dtype == dtype and info.alpha.dtype == dtype
    expect = 1 - 0.9 * np.exp(-(0.2 * np.asarray(n_liq, float) + 0.5 * np.asarray(shock, float)))
    rtol = 1e-6 if dtype == jnp.float32 else 1e-14
    np.testing.assert_allclose(np.asarray(s1.alpha, float), expect, rtol=rtol)
    a = np.asarray(s1.alpha)
    # No event, no change (exactly); toward 1, monotone in the number of liquidations, exactly 1
    # (never above) for a huge count.
    assert a[0] == np.asarray(0.1, dtype)
    assert a[0] < a[1] < a[2] < 1.0 and a[3] > a[0]
    assert a[5] == 1.0
    # Liquidations and funding commute: one step with both equals two steps with one each.
    both, _ = asel.step(rng.key(3), s, p, 1.0, n_liq=2.0, funding_shock=0.5)
    liq, _ = asel.step(rng.key(3), s, p, 1.0, n_liq=2.0)
    then, _ = asel.step(rng.key(4), liq, p, 1.0, funding_shock=0.5)
    np.testing.assert_allclose(np.asarray(both.alpha, float), np.asarray(then.alpha, float), rtol=rtol)
    # Negative drivers count as no event.
    neg, _ = asel.step(rng.key(3), s, p, 1.0, n_liq=-5.0, funding_shock=-1.0)
    np.testing.assert_allclose(np.asarray(neg.alpha, float), 0.1, rtol=rtol)


def test_stays_in_unit_interval_with_large_sigma(seed):
    """sigma/sqrt(2 kappa) = 3.4 >> 1: the clip is active at both ends (the step's sd is 1.36, so
    from anywhere in [0, 1] a step lands beyond 0, and beyond 1, with probability > P(Z > 1/1.36)
    = 0.23); with liquidation jumps on top alpha still never leaves [0, 1]."""
    p = asel.ASParams(alpha_bar=0.3, kappa=0.1, sigma=1.5, jump_liq=2.0, alpha0=0.3)

    for n_liq in (0.0, 0.5):

        def events(dtype, n_assets):
            return (), {"n_liq": jnp.full((n_assets,), n_liq, dtype)}

        for dtype in (jnp.float32, jnp.float64):
            (_, info), *_ = run_paths(
                asel, p, events, n_assets=2, n_paths=2_000, n_steps=50, dt=1.0, dtype=dtype, seed=seed
            )
            a = np.asarray(info.alpha)
            assert a.dtype == dtype
            assert a.min() >= 0.0 and a.max() <= 1.0
            assert (a == 1.0).mean() > 0.2  # clipped at 1
            if n_liq == 0.0:
                assert (a == 0.0).mean() > 0.2  # clipped at 0
            else:
                # after a clip at 0 the jump lifts alpha to 1 - e^{-1}: it never ends a step at 0
                assert a.min() >= -np.expm1(-1.0) * (1 - 1e-6)


def test_impact_sign_and_size():
    p = asel.ASParams(impact=np.array([1e-4, 5e-5]))
    nb = jnp.asarray([3.0, 0.0], jnp.float32)
    ns = jnp.asarray([1.0, 4.0], jnp.float32)
    d = asel.impact(p, nb, ns)
    assert d.dtype == jnp.float32 and d.shape == (2,)
    np.testing.assert_allclose(np.asarray(d), [2e-4, -2e-4], rtol=1e-6)
    assert float(d[0]) > 0 > float(d[1])  # informed buying lifts the mid, selling lowers it
    np.testing.assert_array_equal(np.asarray(asel.impact(p, nb, nb)), [0.0, 0.0])
    d64 = asel.impact(p, jnp.asarray([2, 0]), jnp.asarray([0, 1]))
    assert d64.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(d64), [2e-4, -5e-5], rtol=1e-14)


def test_contract():
    p = asel.ASParams(
        alpha_bar=np.array([0.15, 0.3]),
        kappa=np.array([0.01, 0.05]),
        sigma=0.01,
        jump_liq=0.1,
        jump_funding=0.2,
        impact=1e-5,
        alpha0=0.2,
    )

    def drivers(dtype, n_assets):
        return (), {"n_liq": jnp.full((n_assets,), 1.0, dtype), "funding_shock": jnp.asarray(0.5, dtype)}

    check_contract(
        asel,
        p,
        drivers,
        invalid=[
            ("alpha_bar", 1.5),
            ("alpha_bar", -0.1),
            ("kappa", -1.0),
            ("sigma", -0.1),
            ("jump_liq", -1.0),
            ("jump_funding", float("nan")),
            ("impact", -1e-5),
            ("alpha0", 1.01),
            ("sigma", float("inf")),
        ],
    )
    with pytest.raises(ValueError, match=r"ASParams\.alpha0 = \[0\.5, 2\.0\]: must lie in \[0\.0, 1\.0\]"):
        asel.ASParams(alpha0=np.array([0.5, 2.0]))
