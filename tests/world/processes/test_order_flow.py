"""Order-flow Hawkes against its closed forms (REFERENCES: Hawkes, exponential kernel).

* stationary mean rates of the bivariate flow, (I - K)^{-1} mu, exact for any step size;
* the count variance over a window (Da Fonseca & Zaatour 2014) for the univariate flow, with the
  discretisation bias computed exactly from the scheme's second moments and shown to be small;
* Poisson thinning into informed and uninformed orders; the Pareto size law; validation.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmsim import rng
from mmsim.world.processes import order_flow as flow
from tests.world.processes._harness import check_contract, run_paths


def window_sums(
    params, *, n_paths, n_burn, n_win, dt, seed, n_assets=1, informed_frac=None, baseline_mult=1.0, state0=None
):
    """Per-path sums over steps ``n_burn .. n_burn + n_win - 1`` of every FlowInfo field,
    (n_paths, A) each, float64. The state starts at ``state0``, (A,) or per path (n_paths, A)
    (default: the stationary mean on the step grid, which makes the mean exactly stationary
    from the first step). ``informed_frac=None`` leaves the step's default (no informed orders)."""
    if state0 is None:
        state0 = flow.init(params, n_assets, jnp.float64, stationary_dt=dt)
    state0 = flow.FlowState(*(jnp.broadcast_to(jnp.asarray(x, jnp.float64), (n_paths, n_assets)) for x in state0))
    kw = {"baseline_mult": jnp.broadcast_to(jnp.asarray(baseline_mult, jnp.float64), (n_assets,))}
    if informed_frac is not None:
        kw["informed_frac"] = jnp.broadcast_to(jnp.asarray(informed_frac, jnp.float64), (n_assets,))

    def path(k, s0):
        def body(carry, t):
            s, acc = carry
            s, info = flow.step(rng.fold_in(k, t), s, params, dt, **kw)
            keep = t >= n_burn
            acc = jax.tree_util.tree_map(lambda a, x: a + jnp.where(keep, x, 0.0), acc, info)
            return (s, acc), None

        counts = [f for f in flow.FlowInfo._fields if f != "tilt"]  # the nominal law: no tilt
        zero = flow.FlowInfo(**{f: jnp.zeros((n_assets,), jnp.float64) for f in counts})
        (_, acc), _ = jax.lax.scan(body, (s0, zero), jnp.arange(n_burn + n_win))
        return acc

    keys = rng.path_keys(rng.key(seed), 0, n_paths)
    return jax.tree_util.tree_map(np.asarray, jax.jit(jax.vmap(path))(keys, state0))


def scaled(params, m):
    """The params with both baselines multiplied by ``m`` (same flow as baseline_mult = m)."""
    return dataclasses.replace(params, mu_buy=m * np.asarray(params.mu_buy), mu_sell=m * np.asarray(params.mu_sell))


def mean_within(x, expect, k=4.0):
    """Sample mean of x (paths on axis 0, independent) vs ``expect`` within k SE, per column."""
    se = x.std(axis=0) / np.sqrt(x.shape[0])
    assert np.all(np.abs(x.mean(axis=0) - expect) < k * se), (x.mean(axis=0), expect, se)


def var_and_se(x):
    """Sample variance and its standard error sqrt(Var((x - mean)^2) / n), per column."""
    xc = x - x.mean(axis=0)
    return (xc**2).mean(axis=0), np.sqrt(np.var(xc**2, axis=0) / x.shape[0])


# --- stationary mean rates -----------------------------------------------------------------

BIV = flow.FlowParams(
    mu_buy=np.array([1.0, 0.3]),
    mu_sell=np.array([0.5, 0.6]),
    alpha_buy=np.array([0.8, 1.2]),
    alpha_sell=np.array([0.6, 0.4]),
    gamma=np.array([0.3, 0.5]),
    beta=2.0,
    size_scale=0.01,
    size_tail=2.5,
)


def test_bivariate_stationary_mean(seed):
    """Mean order rates per side vs (I - K)^{-1} (m mu), with steps as coarse as beta dt = 2.

    The identity is exact for the discretised flow at any dt (module docstring): here the mean
    intensity times dt is up to ~3 orders per step.  Asset 1 also runs with baseline_mult = 1.5.
    """
    dt, n_win = 1.0, 30
    mult = np.array([1.0, 1.5])
    lam_b, lam_s = flow.stationary_intensity(BIV, mult)
    np.testing.assert_allclose(flow.spectral_radius(BIV), [0.5081, 0.7202], atol=1e-4)
    state0 = flow.init(scaled(BIV, mult), 2, jnp.float64, stationary_dt=dt)
    acc = window_sums(
        BIV, n_paths=20_000, n_burn=0, n_win=n_win, dt=dt, seed=seed, n_assets=2, baseline_mult=mult, state0=state0
    )
    t = n_win * dt
    mean_within(acc.n_buy / t, lam_b)
    mean_within(acc.n_sell / t, lam_s)
    # The time-averaged intensity at the step starts sits above Lambda by beta dt / (1 - e^{-beta dt})
    # on the excitation part (it is sampled just after the step-end jumps).
    fac = 2.0 * dt / -np.expm1(-2.0 * dt)
    mean_within(acc.lam_buy / n_win, mult * BIV.mu_buy + fac * (lam_b - mult * BIV.mu_buy))
    mean_within(acc.lam_sell / n_win, mult * BIV.mu_sell + fac * (lam_s - mult * BIV.mu_sell))
    # The rates are well resolved: the 4-SE band is a few per cent of Lambda.
    assert np.all(4 * (acc.n_buy / t).std(axis=0) / np.sqrt(20_000) < 0.03 * lam_b)


def test_mean_from_empty_history_converges(seed):
    """Started with no excitation, the mean rate relaxes to Lambda: on the grid the mean gap
    shrinks by r = d + (1 - d) rho(K) = 0.57 a step (dt = 1 s, beta dt = 2), so 25 steps of
    burn-in leave 1e-6 of it."""
    p = flow.FlowParams(mu_buy=1.0, mu_sell=0.5, alpha_buy=0.8, alpha_sell=0.6, gamma=0.3, beta=2.0)
    z = flow.init(p, 1, jnp.float64, stationary=False)
    assert float(z.ex_buy[0]) == 0.0 and float(z.ex_sell[0]) == 0.0
    acc = window_sums(p, n_paths=5_000, n_burn=25, n_win=25, dt=1.0, seed=seed, state0=z)
    lam_b, lam_s = flow.stationary_intensity(p)
    mean_within(acc.n_buy / 25.0, lam_b)
    mean_within(acc.n_sell / 25.0, lam_s)


# --- count variance over a window (univariate) -----------------------------------------------


def var_closed_form(mu, alpha, beta, tau):
    """Var N(tau) of a stationary univariate Hawkes (Da Fonseca & Zaatour 2014, REFERENCES):
    Lambda [tau kappa^2 + (1 - kappa^2)(1 - e^{-(beta - alpha) tau}) / (beta - alpha)], kappa = 1/(1-n)."""
    n = alpha / beta
    lam, kap = mu / (1 - n), 1 / (1 - n)
    return lam * (tau * kap**2 + (1 - kap**2) * -np.expm1(-(beta - alpha) * tau) / (beta - alpha))


def var_scheme(mu, alpha, beta, dt, n_steps):
    """Exact Var of the count over ``n_steps`` steps of the discretised flow, in stationarity.

    The scheme is an affine chain: N_k | x_k ~ Poisson(mu dt + c x_k), c = (1 - d)/beta,
    d = e^{-beta dt}; x_{k+1} = d x_k + alpha N_k. Its stationary moments: E N = mu dt / (1 - n),
    Var x = alpha^2 E N / (1 - r^2) with r = d + alpha c, Var N = E N + c^2 Var x, and for
    h >= 1 Cov(N_k, N_{k+h}) = c Cov(N_k, x_{k+h}) = c r^{h-1} (d c Var x + alpha Var N).
    """
    d = np.exp(-beta * dt)
    c = -np.expm1(-beta * dt) / beta
    en = mu * dt / (1 - alpha / beta)
    r = d + alpha * c
    vx = alpha**2 * en / (1 - r**2)
    vn = en + c**2 * vx
    h = np.arange(1, n_steps)
    cov = c * r ** (h - 1) * (d * c * vx + alpha * vn)
    return n_steps * vn + 2.0 * np.sum((n_steps - h) * cov)


def test_scheme_variance_converges_to_closed_form():
    """The timing coarsening biases Var N(tau) by O(dt): halving dt halves the bias, which at
    beta dt = 0.05 is -0.08 % of Var N(20 s) for n = 0.5 and -0.22 % for n = 0.75 (and twice
    that over 10 s: the bias is a boundary effect, O(dt) in absolute terms, O(dt / tau) relative);
    as dt -> 0 the scheme's variance tends to the closed form."""
    for mu, alpha, beta, tau in [(1.0, 1.0, 2.0, 20.0), (1.0, 1.5, 2.0, 20.0)]:
        exact = var_closed_form(mu, alpha, beta, tau)
        bias = [var_scheme(mu, alpha, beta, dt, round(tau / dt)) / exact - 1 for dt in (0.05, 0.025, 0.0125)]
        assert abs(bias[1] / bias[0] - 0.5) < 0.01 and abs(bias[2] / bias[1] - 0.5) < 0.01, bias
        assert abs(var_scheme(mu, alpha, beta, 1e-4, round(tau / 1e-4)) / exact - 1) < 1e-5
    assert abs(var_scheme(1.0, 1.0, 2.0, 0.025, 800) / var_closed_form(1.0, 1.0, 2.0, 20.0) - 1) < 1e-3


def grid_moments(mu, alpha, beta, dt):
    """Mean and variance of the stationary excitation on the step grid (see var_scheme)."""
    d = np.exp(-beta * dt)
    c = -np.expm1(-beta * dt) / beta
    en = mu * dt / (1 - alpha / beta)
    r = d + alpha * c
    return alpha * mu * dt / (1 - r), alpha**2 * en / (1 - r**2)


def stationary_start(mu, alpha, beta, dt, n_paths, seed):
    """Per-path initial excitations of both sides, i.i.d. Gamma with the grid-stationary mean and
    variance. The chain is affine (E[N | x0] and Var(N | x0) are affine in x0), so the window's
    count variance depends on the law of x0 only through its mean and variance: with these two
    exact, the count variance is the stationary one from the first step, with no burn-in."""
    m, v = grid_moments(mu, alpha, beta, dt)
    x = np.random.default_rng(seed).gamma(m * m / v, v / m, size=(2, n_paths, 1))
    return flow.FlowState(ex_buy=x[0], ex_sell=x[1])


# gamma = 0: the buy and the sell flows are two independent univariate Hawkes processes, two
# samples per path. n = alpha / beta = 0.5, Lambda = 2 / s.
UNI = flow.FlowParams(mu_buy=1.0, mu_sell=1.0, alpha_buy=1.0, alpha_sell=1.0, gamma=0.0, beta=2.0)


def univariate_window_counts(dt, n_win, n_paths, seed):
    x0 = stationary_start(1.0, 1.0, 2.0, dt, n_paths, seed)
    acc = window_sums(UNI, n_paths=n_paths, n_burn=0, n_win=n_win, dt=dt, seed=seed, state0=x0)
    return np.concatenate([acc.n_buy[:, 0], acc.n_sell[:, 0]])


def test_univariate_count_variance(seed):
    """Var N(tau) over tau = 10 s (= 20 / beta = 10 / (beta - alpha)) vs the closed form, with
    beta dt = 0.05.

    Var N(10 s) = 74.0 (a Poisson flow of the same rate would give 20). The scheme's exact
    variance (var_scheme) differs from the closed form by -0.17 % (O(dt / tau): each generation
    of a cluster is delayed by < dt), under 0.25 SE here, so the closed form is the right target
    within 4 SE.
    """
    dt, n_win = 0.025, 400
    tau = n_win * dt
    n = univariate_window_counts(dt, n_win, 10_000, seed)
    mean_within(n[:, None], 2.0 * tau)
    v, se = var_and_se(n)
    target = var_closed_form(1.0, 1.0, 2.0, tau)
    assert abs(target - 74.0) < 1e-3
    bias = var_scheme(1.0, 1.0, 2.0, dt, n_win) - target
    assert abs(bias) < 0.25 * se, (bias, se)
    assert abs(v - target) < 4 * se, (v, target, se)
    assert 4 * se < 0.1 * target  # resolving power: well below the gap to Poisson (20)


def test_coarse_step_variance_matches_scheme(seed):
    """At beta dt = 2 the coarsening bias is -8.9 % of Var N(10 s), well beyond 4 SE with 200k
    samples: the sample follows the scheme's exact variance (var_scheme), not the closed form.
    This is what the small dt of the test above guards against, and it checks var_scheme itself."""
    dt, n_win = 1.0, 10
    n = univariate_window_counts(dt, n_win, 100_000, seed)
    v, se = var_and_se(n)
    scheme = var_scheme(1.0, 1.0, 2.0, dt, n_win)
    closed = var_closed_form(1.0, 1.0, 2.0, n_win * dt)
    assert abs(v - scheme) < 4 * se, (v, scheme, se)
    assert abs(scheme - closed) > 4 * se, (scheme, closed, se)


# --- informed / uninformed split ------------------------------------------------------------


def test_poisson_thinning(seed):
    """Poisson thinning: independent Poisson(f Lambda) informed and Poisson((1 - f) Lambda)
    uninformed counts are the law of Binomial(N, f) informed orders among N ~ Poisson(Lambda), so
    D = sum_k (n_inf - f n) over the window has mean 0 and variance f (1 - f) E[N] (the steps'
    terms are martingale differences). Asset 1 runs with baseline_mult = 20 so that both Poisson
    regimes (exact inversion, Cornish-Fisher above mean 10) are exercised."""
    p = flow.FlowParams(mu_buy=0.5, mu_sell=0.4, alpha_buy=0.6, alpha_sell=0.5, gamma=0.1, beta=1.0)
    frac = np.array([0.3, 0.8])
    mult = np.array([1.0, 20.0])
    dt, n_win = 1.0, 20
    state0 = flow.init(scaled(p, mult), 2, jnp.float64, stationary_dt=dt)
    acc = window_sums(
        p,
        n_paths=20_000,
        n_burn=0,
        n_win=n_win,
        dt=dt,
        seed=seed,
        n_assets=2,
        informed_frac=frac,
        baseline_mult=mult,
        state0=state0,
    )
    lam_b, lam_s = flow.stationary_intensity(p, mult)
    assert lam_b[1] * dt > 10 / 0.8  # the informed count of asset 1 is in the Cornish-Fisher range
    sides = ((acc.n_buy, acc.n_buy_informed, lam_b), (acc.n_sell, acc.n_sell_informed, lam_s))
    for n, n_inf, lam in sides:
        assert np.all(n_inf <= n)
        mean_within(n / (n_win * dt), lam)
        d = n_inf - frac * n
        mean_within(d, 0.0)
        v, se = var_and_se(d)
        expect = frac * (1 - frac) * n.mean(axis=0)
        assert np.all(np.abs(v - expect) < 4 * se), (v, expect, se)
        mean_within(n_inf, frac * n.mean(axis=0))


# --- sizes ----------------------------------------------------------------------------------


def test_size_law(seed):
    """Mean order size vs a x_m / (a - 1) (a = 3 > 2: the variance is finite, so the SE is
    meaningful), the largest order's law P(max <= x | n) = (1 - (x_m / x)^a)^n, and max >= x_m."""
    xm, a = 0.01, 3.0
    p = flow.FlowParams(
        mu_buy=1.0, mu_sell=0.7, alpha_buy=0.6, alpha_sell=0.5, gamma=0.2, beta=1.0, size_scale=xm, size_tail=a
    )
    np.testing.assert_allclose(flow.expected_size(p), 0.015)
    (_, info), *_ = run_paths(
        flow,
        p,
        lambda dtype, n_a: ((), {}),
        n_assets=1,
        n_paths=20_000,
        n_steps=10,
        dt=1.0,
        dtype=jnp.float64,
        seed=seed,
    )
    sides = ((info.n_buy, info.vol_buy, info.max_buy), (info.n_sell, info.vol_sell, info.max_sell))
    for n, vol, big in sides:
        n, vol, big = (np.asarray(x).ravel() for x in (n, vol, big))
        has = n > 0
        assert has.mean() > 0.5
        assert np.all(vol[~has] == 0.0) and np.all(big[~has] == 0.0)
        assert np.all(big[has] >= xm) and np.all(big <= vol * (1 + 1e-12))
        mean_within((vol[has] / n[has])[:, None], a * xm / (a - 1))
        # Largest order: the indicator minus its conditional probability has mean 0.
        x = 2.0 * xm
        resid = (big[has] <= x) - (1.0 - (xm / x) ** a) ** n[has]
        mean_within(resid[:, None], 0.0)
        one = n == 1
        np.testing.assert_allclose(vol[one], big[one], rtol=1e-12)


def test_lognormal_size_law(seed):
    """Lognormal sizes (the law fitted to recorded market orders): the mean size per order is
    median e^{sigma^2 / 2}, and the largest order's law P(max <= x | n) = Phi(ln(x / median) / sigma)^n."""
    from scipy import stats

    med, sig = 0.01, 0.8  # sigma < 1: the size's variance is small enough for a 4-SE check
    p = flow.FlowParams(
        mu_buy=1.0, mu_sell=0.7, alpha_buy=0.6, alpha_sell=0.5, gamma=0.2, beta=1.0,
        size_law="lognormal", size_scale=med, size_sigma=sig,
    )  # fmt: skip
    np.testing.assert_allclose(flow.expected_size(p), med * np.exp(0.5 * sig**2))
    (_, info), *_ = run_paths(
        flow, p, lambda dtype, n_a: ((), {}), n_assets=1, n_paths=20_000, n_steps=10, dt=1.0,
        dtype=jnp.float64, seed=seed,
    )  # fmt: skip
    for n, vol, big in ((info.n_buy, info.vol_buy, info.max_buy), (info.n_sell, info.vol_sell, info.max_sell)):
        n, vol, big = (np.asarray(x).ravel() for x in (n, vol, big))
        has = n > 0
        assert np.all(vol[~has] == 0.0) and np.all(big <= vol * (1 + 1e-12))
        # The sum of a step's sizes per order, weighted by the count: its mean is E[size].
        mean_within((vol[has] - n[has] * flow.expected_size(p))[:, None], 0.0)
        x = 2.0 * med
        resid = (big[has] <= x) - stats.norm.cdf(np.log(x / med) / sig) ** n[has]
        mean_within(resid[:, None], 0.0)


def test_size_law_is_checked():
    with pytest.raises(ValueError, match=r"FlowParams\.size_law = gamma: must be one of"):
        flow.FlowParams(size_law="gamma")
    with pytest.raises(ValueError, match=r"FlowParams\.size_sigma"):
        flow.FlowParams(size_law="lognormal", size_sigma=0.0)
    flow.FlowParams(size_law="lognormal", size_tail=0.5)  # the Pareto tail is not used


# --- validation and contract ----------------------------------------------------------------


def test_explosive_params_rejected():
    with pytest.raises(
        ValueError,
        match=r"FlowParams\.alpha_buy = 1\.5: spectral radius of the "
        r"branching matrix .* must be < 1 \(it is 1\.0",
    ):
        flow.FlowParams(alpha_buy=1.5, alpha_sell=0.5, gamma=0.0, beta=1.5)
    with pytest.raises(ValueError, match=r"FlowParams\.gamma = 0\.9: spectral radius .* must be < 1 \(it is 1\.5"):
        flow.FlowParams(alpha_buy=0.6, alpha_sell=0.6, gamma=0.9, beta=1.0)
    # Per asset: only asset 1 is explosive (rho = 1.2162), named by its largest excitation.
    with pytest.raises(ValueError, match=r"alpha_sell = \[0\.3, 1\.2\]: spectral radius .*1\.216"):
        flow.FlowParams(alpha_sell=np.array([0.3, 1.2]))
    # Each self-excitation below beta, but the cross-excitation makes the pair explosive.
    with pytest.raises(ValueError, match="spectral radius"):
        flow.FlowParams(alpha_buy=0.7, alpha_sell=0.7, gamma=0.35, beta=1.0)
    # Critical is refused; just below is fine.
    with pytest.raises(ValueError, match="spectral radius"):
        flow.FlowParams(alpha_buy=1.0, alpha_sell=0.0, gamma=0.0, beta=1.0)
    ok = flow.FlowParams(alpha_buy=0.99, alpha_sell=0.0, gamma=0.0, beta=1.0)
    np.testing.assert_allclose(flow.spectral_radius(ok), 0.99)
    np.testing.assert_allclose(flow.stationary_intensity(ok)[0], 0.5 / 0.01)
    np.testing.assert_allclose(flow.branching_matrix(BIV)[1], [[0.6, 0.25], [0.25, 0.2]])


def drivers(dtype, n_assets):
    return (), {
        "informed_frac": jnp.linspace(0.1, 0.6, n_assets, dtype=dtype),
        "baseline_mult": jnp.full((n_assets,), 1.5, dtype),
    }


def test_contract():
    check_contract(
        flow,
        BIV,
        drivers,
        n_assets=2,
        invalid=[
            ("mu_buy", -1.0),
            ("mu_sell", float("nan")),
            ("alpha_buy", -0.1),
            ("alpha_sell", -0.1),
            ("gamma", -0.1),
            ("beta", 0.0),
            ("size_scale", 0.0),
            ("size_tail", 1.0),
            ("alpha_buy", 5.0),
            ("gamma", 2.0),
            ("beta", np.ones(3)),
            ("size_tail", np.ones((2, 2)) * 2),
        ],
    )
    assert flow.n_uniforms(BIV) == 6


# Eager single steps last: they reuse the per-operation compilations of check_contract's eager
# step (same shapes and dtype), which is most of their cost.


def test_no_informed_by_default():
    """The default (no informed orders) skips the informed draws; it equals informed_frac = 0."""
    s = flow.init(BIV, 2, jnp.float64)
    k = rng.key(3)
    a = flow.step(k, s, BIV, 2.0, baseline_mult=jnp.full(2, 1.5))
    b = flow.step(k, s, BIV, 2.0, baseline_mult=jnp.full(2, 1.5), informed_frac=jnp.zeros(2))
    assert np.all(np.asarray(a[1].n_buy_informed) == 0.0)
    assert np.all(np.asarray(a[1].n_sell_informed) == 0.0)
    assert np.asarray(a[1].n_buy).sum() > 0
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_intensity_and_init():
    p = BIV
    s = flow.init(p, 2, jnp.float32)
    lam_b, lam_s = flow.intensity(s, p)
    assert lam_b.dtype == jnp.float32
    np.testing.assert_allclose(lam_b, flow.stationary_intensity(p)[0], rtol=1e-6)
    np.testing.assert_allclose(lam_s, flow.stationary_intensity(p)[1], rtol=1e-6)
    # With no events in a step, the excitation decays exactly by e^{-beta dt}.
    p0 = flow.FlowParams(mu_buy=0.0, mu_sell=0.0, alpha_buy=0.5, alpha_sell=0.5, gamma=0.0, beta=2.0)
    s0 = flow.FlowState(ex_buy=jnp.array([1e-9, 2e-9]), ex_sell=jnp.array([0.0, 0.0]))
    s1, info = flow.step(rng.key(5), s0, p0, 0.3)
    assert np.all(np.asarray(info.n_buy) == 0.0)
    np.testing.assert_allclose(s1.ex_buy, np.array([1e-9, 2e-9]) * np.exp(-0.6), rtol=1e-12)
