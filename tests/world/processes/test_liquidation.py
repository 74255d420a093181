"""Liquidation cascades (marked Hawkes, two sides) against branching-process closed forms
(REFERENCES: Hawkes, exponential kernel; cluster size of a branching process)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmsim import distributions as dist
from mmsim import rng
from mmsim.world.processes import liquidation as liq
from tests.world.processes._harness import check_contract

# Pareto(x_m = 0.5 BTC, a = 3): E[size] = 0.75 BTC, finite variance (so the sample SE means something).
X_M, TAIL, BETA = 0.5, 3.0, 0.5  # base units, -, per second
E_SIZE = TAIL * X_M / (TAIL - 1.0)


def run_sum(params, state0, *, n_paths, n_steps, dt, n_assets, seed, last_ret=None, dtype=jnp.float64):
    """Scan ``n_steps`` steps per path from ``state0(path_key, dtype)`` and return, per path, the
    sums over the steps of (n_long, n_short, lam_long, lam_short), each (n_paths, A).

    ``last_ret(t, dtype)`` gives the step's (A,) driver (zero when None). Sums are carried in
    the scan instead of stacking the infos, to keep memory at O(paths).
    """

    def path(k):
        s0 = state0(k, dtype)
        z = jnp.zeros((n_assets,), dtype)

        def body(carry, t):
            s, acc = carry
            r = z if last_ret is None else last_ret(t, dtype)
            s, info = liq.step(rng.fold_in(k, t), s, params, dt, last_ret=r)
            got = (info.n_long, info.n_short, info.lam_long, info.lam_short)
            return (s, tuple(a + g for a, g in zip(acc, got))), None

        (_, acc), _ = jax.lax.scan(body, (s0, (z, z, z, z)), jnp.arange(n_steps))
        return acc

    keys = rng.path_keys(rng.key(seed), 0, n_paths)
    return [np.asarray(x) for x in jax.jit(jax.vmap(path))(keys)]


def assert_mean(x, expect, what):
    """Sample mean of i.i.d. per-path values within 4 standard errors of ``expect``."""
    se = x.std(ddof=1) / np.sqrt(x.size)
    assert abs(x.mean() - expect) < 4 * se, (what, x.mean(), expect, se)
    return x.mean(), se


def mean_counted(params, ex0, dt, n_steps):
    """Expected number of events in ``n_steps`` steps from excitation ``ex0`` (long, short), mu = 0,
    for the discretised scheme: E[N_k] = E[ex_k] (1 - e^{-beta dt}) / beta, and
    E[ex_{k+1}] = E[ex_k] e^{-beta dt} + E[size] [[alpha, alpha_x], [alpha_x, alpha]] E[N_k] (linear)."""
    d = np.exp(-params.beta * dt)
    frac = -np.expm1(-params.beta * dt) / params.beta
    kmat = liq.expected_size(params) * np.array(
        [[params.alpha, params.alpha_cross], [params.alpha_cross, params.alpha]]
    )
    m, total = np.asarray(ex0, float), 0.0
    for _ in range(n_steps):
        en = m * frac
        total += en.sum()
        m = m * d + kmat @ en
    return total


@pytest.mark.parametrize("alpha, alpha_cross", [(0.4, 0.0), (0.25, 0.15)])
def test_cluster_size(alpha, alpha_cross, seed):
    """One liquidation at t = 0, no baseline, no triggering: the whole cascade has 1 / (1 - n)
    events on average when the first size is drawn from the size law, and
    1 + (alpha + alpha_cross) s0 / (beta (1 - n)) for a fixed first size s0."""
    p = liq.LiqParams(
        mu_long=0.0,
        mu_short=0.0,
        alpha=alpha,
        alpha_cross=alpha_cross,
        beta=BETA,
        size_scale=X_M,
        size_tail=TAIL,
        trigger=0.0,
        leverage=5.0,
    )
    n = float(liq.branching_ratio(p))
    assert n == pytest.approx(0.6)
    dt, n_steps, n_paths = 2.0, 50, 50_000
    # Horizon 100 s >> 1 / ((1 - n) beta) = 5 s. Per step the mean excitation shrinks by
    # e^{-beta dt} + n (1 - e^{-beta dt}) = 0.75, so the events left after the horizon are a
    # fraction 0.75^50 ~ 5e-7 of the cascade: computed exactly by the mean recursion and
    # checked to be far below the Monte Carlo standard error (~0.01).
    trunc = 1.0 / (1.0 - n) - (1.0 + mean_counted(p, [alpha * E_SIZE, alpha_cross * E_SIZE], dt, n_steps))
    assert 0.0 <= trunc < 1e-6

    def first_drawn(k, dtype):
        s0 = dist.pareto(rng.uniform(rng.fold_in(k, 1 << 40), (1,), dtype), X_M, TAIL)
        return liq.LiqState(ex_long=alpha * s0, ex_short=alpha_cross * s0, ref=jnp.zeros_like(s0))

    nl, ns, *_ = run_sum(p, first_drawn, n_paths=n_paths, n_steps=n_steps, dt=dt, n_assets=1, seed=seed)
    total = 1.0 + nl[:, 0] + ns[:, 0]
    m_drawn, se_drawn = assert_mean(total, 1.0 / (1.0 - n), "cluster size, drawn first size")

    s0 = 4.0  # base units, 5.3 times the mean size

    def first_fixed(k, dtype):
        return liq.LiqState(
            ex_long=jnp.full((1,), alpha * s0, dtype),
            ex_short=jnp.full((1,), alpha_cross * s0, dtype),
            ref=jnp.zeros((1,), dtype),
        )

    nl, ns, *_ = run_sum(p, first_fixed, n_paths=n_paths, n_steps=n_steps, dt=dt, n_assets=1, seed=seed + 1)
    total = 1.0 + nl[:, 0] + ns[:, 0]
    m_fixed, se_fixed = assert_mean(
        total, 1.0 + (alpha + alpha_cross) * s0 / BETA / (1.0 - n), "cluster size, fixed first size"
    )
    # A large first liquidation starts a bigger cascade: the gap is many standard errors.
    assert m_fixed - m_drawn > 10 * np.hypot(se_fixed, se_drawn)
    if alpha_cross > 0:
        # Cross excitation really reaches the other side (one long liquidation started it).
        assert ns.mean() > 1.0


@pytest.mark.parametrize("alpha_cross", [0.0, 0.1])
def test_stationary_rates(alpha_cross, seed):
    """Stationary event rate per side: mu / (1 - n) without cross excitation, (I - K)^{-1} mu with it.

    Paths start with the excitation at the scheme's stationary mean, ex* = beta dt / (1 - e^{-beta dt})
    (Lambda - mu): the mean dynamics are linear, so E[ex_t] = ex* and E[N_t] = Lambda dt at
    every step (no burn-in, no bias). ex* is the start-of-step intensity, which sits just after
    the step-end jumps and so exceeds the time average Lambda - mu by beta dt / (1 - e^{-beta dt}).
    """
    mu_l, mu_s = np.array([0.5, 0.1]), np.array([0.2, 0.3])  # per second, two assets
    alpha = np.array([0.4, 0.3])
    p = liq.LiqParams(
        mu_long=mu_l,
        mu_short=mu_s,
        alpha=alpha,
        alpha_cross=alpha_cross,
        beta=BETA,
        size_scale=X_M,
        size_tail=TAIL,
        trigger=0.0,
        leverage=5.0,
    )
    n = liq.branching_ratio(p)
    dt, n_steps, n_paths = 1.0, 40, 20_000
    lam = np.empty((2, 2))  # (side, asset): stationary rates, per second
    for i in range(2):
        k = E_SIZE / BETA * np.array([[alpha[i], alpha_cross], [alpha_cross, alpha[i]]])
        lam[:, i] = np.linalg.solve(np.eye(2) - k, [mu_l[i], mu_s[i]])
        if alpha_cross == 0.0:
            np.testing.assert_allclose(lam[:, i], np.array([mu_l[i], mu_s[i]]) / (1 - n[i]))
    ex_star = BETA * dt / -np.expm1(-BETA * dt) * (lam - np.stack([mu_l, mu_s]))

    def stationary(k, dtype):
        return liq.LiqState(
            ex_long=jnp.asarray(ex_star[0], dtype),
            ex_short=jnp.asarray(ex_star[1], dtype),
            ref=jnp.zeros_like(ex_star[0], dtype),
        )

    nl, ns, ll, ls = run_sum(p, stationary, n_paths=n_paths, n_steps=n_steps, dt=dt, n_assets=2, seed=seed)
    h = n_steps * dt
    for i in range(2):
        assert_mean(nl[:, i] / h, lam[0, i], f"long rate, asset {i}")
        assert_mean(ns[:, i] / h, lam[1, i], f"short rate, asset {i}")
        assert_mean(ll[:, i] / n_steps, mu_l[i] + ex_star[0, i], f"long start-of-step intensity, asset {i}")
        assert_mean(ls[:, i] / n_steps, mu_s[i] + ex_star[1, i], f"short start-of-step intensity, asset {i}")


def test_triggering():
    """A fall raises the long side's excitation by trigger * leverage * |r|, a rise the short
    side's, and nothing else changes (same key: same events)."""
    p = liq.LiqParams(
        mu_long=0.3,
        mu_short=0.2,
        alpha=0.2,
        alpha_cross=0.05,
        beta=BETA,
        size_scale=X_M,
        size_tail=TAIL,
        trigger=40.0,
        leverage=8.0,
    )
    s = liq.LiqState(ex_long=jnp.array([0.1, 0.2]), ex_short=jnp.array([0.3, 0.0]), ref=jnp.zeros(2))
    k = rng.fold_in(rng.key(3), 0)
    r = jnp.array([-0.01, 0.02])
    f = jax.jit(lambda r: liq.step(k, s, p, 0.5, last_ret=r))
    base, info0 = f(jnp.zeros(2))
    hit, info1 = f(r)
    for a, b in zip(info0, info1):
        np.testing.assert_array_equal(a, b)
    up_l = np.asarray(hit.ex_long - base.ex_long)
    up_s = np.asarray(hit.ex_short - base.ex_short)
    np.testing.assert_allclose(up_l, [40.0 * 8.0 * 0.01, 0.0], atol=1e-12)
    np.testing.assert_allclose(up_s, [0.0, 40.0 * 8.0 * 0.02], atol=1e-12)
    lam_l0, lam_s0 = liq.intensity(base, p)
    lam_l1, lam_s1 = liq.intensity(hit, p)
    np.testing.assert_allclose(lam_l1 - lam_l0, [3.2, 0.0], atol=1e-12)
    np.testing.assert_allclose(lam_s1 - lam_s0, [0.0, 6.4], atol=1e-12)


def test_triggered_cascade_size(seed):
    """A single fall r at t = 0 (no baseline) triggers trigger * leverage * |r| / beta long
    liquidations directly, and each of them a cluster of 1 / (1 - n) on average."""
    p = liq.LiqParams(
        mu_long=0.0, mu_short=0.0, alpha=0.4, beta=BETA, size_scale=X_M, size_tail=TAIL, trigger=20.0, leverage=10.0
    )
    r0, dt, n_steps = -0.005, 2.0, 50
    n = float(liq.branching_ratio(p))
    expect = p.trigger * p.leverage * abs(r0) / BETA / (1.0 - n)  # 1 / 0.5 / 0.4 = 5
    zero = lambda k, dtype: liq.init(p, 1, dtype)  # noqa: E731
    shock = lambda t, dtype: jnp.where(t == 0, r0, 0.0).astype(dtype)[None]  # noqa: E731
    nl, ns, *_ = run_sum(p, zero, n_paths=20_000, n_steps=n_steps + 1, dt=dt, n_assets=1, seed=seed, last_ret=shock)
    # The shock enters at the end of step 0; the horizon's truncation (0.75^50 ~ 5e-7 of the
    # mean, exact by the mean recursion) is far below the standard error (~0.1).
    assert abs(mean_counted(p, [p.trigger * p.leverage * abs(r0), 0.0], dt, n_steps) - expect) < 1e-4
    assert_mean(nl[:, 0], expect, "triggered cascade size")
    assert ns.max() == 0.0  # a fall does not liquidate shorts (no cross excitation)


@pytest.mark.parametrize("side", ["long", "short"])
def test_impact_sign_and_sizes(side, seed):
    """Long liquidations (forced sells) move the log mid by -impact * volume, short ones by
    +impact * volume; the volume holds at least n * x_m and its largest liquidation."""
    mu = dict(mu_long=2.0, mu_short=0.0) if side == "long" else dict(mu_long=0.0, mu_short=2.0)
    p = liq.LiqParams(**mu, alpha=0.2, beta=BETA, size_scale=X_M, size_tail=TAIL, impact=1e-4)
    s = liq.init(p, 1, jnp.float64)
    keys = rng.path_keys(rng.key(seed), 0, 2000)
    _, info = jax.jit(jax.vmap(lambda k: liq.step(k, s, p, 1.0)))(keys)
    n_own = np.asarray(info.n_long if side == "long" else info.n_short)
    v_own = np.asarray(info.vol_long if side == "long" else info.vol_short)
    m_own = np.asarray(info.max_long if side == "long" else info.max_short)
    imp = np.asarray(info.impact)
    sign = -1.0 if side == "long" else 1.0
    np.testing.assert_allclose(imp, sign * 1e-4 * v_own, rtol=1e-12)
    assert (n_own > 0).mean() > 0.8  # P(N > 0) = 1 - e^{-2} = 0.86
    assert np.all(sign * imp[n_own > 0] > 0) and np.all(imp[n_own == 0] == 0)
    has = n_own > 0
    assert np.all(m_own[has] >= X_M) and np.all(v_own[has] >= m_own[has])
    assert np.all(v_own[has] >= n_own[has] * X_M * (1 - 1e-12))
    assert np.all(np.asarray(info.lam_long + info.lam_short) == 2.0)  # start: baselines only


def test_params_rules():
    p = liq.LiqParams(alpha=0.3, alpha_cross=0.1, beta=BETA, size_scale=X_M, size_tail=TAIL)
    assert float(liq.branching_ratio(p)) == pytest.approx(0.6)
    assert float(liq.expected_size(p)) == pytest.approx(0.75)
    fb = liq.LiqParams(alpha=0.3, beta=BETA, size_scale=X_M, size_tail=TAIL, trigger=10.0, leverage=5.0, impact=1e-3)
    assert float(liq.branching_ratio(fb, price_feedback=True)) == pytest.approx((0.3 + 0.05) * 0.75 / BETA)
    with pytest.raises(ValueError, match=r"LiqParams\.alpha = 1\.0: branching ratio n = .* = 1\.5 must be < 1"):
        liq.LiqParams(alpha=1.0, beta=BETA, size_scale=X_M, size_tail=TAIL)
    # Cross excitation counts towards n: 0.4 + 0.3 would be explosive.
    with pytest.raises(ValueError, match=r"LiqParams\.alpha = 0\.4: branching ratio n = .* = 1\.05 must be < 1"):
        liq.LiqParams(alpha=0.4, alpha_cross=0.3, beta=BETA, size_scale=X_M, size_tail=TAIL)
    # Per-asset: the message lists n for every asset.
    with pytest.raises(
        ValueError, match=r"LiqParams\.alpha = \[0\.1, 1\.0\]: branching ratio n = .* = \[0\.15, 1\.5\]"
    ):
        liq.LiqParams(alpha=np.array([0.1, 1.0]), beta=BETA, size_scale=X_M, size_tail=TAIL)
    with pytest.raises(ValueError, match=r"LiqParams\.size_tail = 1\.0: must be > 1"):
        liq.LiqParams(size_tail=1.0)


def drivers(dtype, n_assets):
    return (), {"last_ret": jnp.linspace(-2e-3, 1e-3, n_assets).astype(dtype)}


def test_size_cap_truncates_the_law(seed):
    """Capped sizes: the largest of n is the maximum of n Pareto sizes conditioned on X <= cap
    (its CDF (F(x) / F(cap))^n checked by Kolmogorov-Smirnov), never above the cap, and the mean
    size is the truncated mean of expected_size (within 4 SE)."""
    from scipy import stats

    cap, tail, xm, n_draws = 4.0, 1.5, 0.5, 200_000
    u = rng.uniform(rng.key(seed), (n_draws,), jnp.float64)
    for n in (1.0, 3.0):
        total, largest = dist.pareto_sum(u, jnp.full(u.shape, n), jnp.asarray(xm), jnp.asarray(tail), jnp.asarray(cap))
        m = np.asarray(largest)
        assert m.max() <= cap * (1 + 1e-12) and m.min() >= xm
        f_cap = 1 - (xm / cap) ** tail
        cdf = lambda x: ((1 - (xm / np.asarray(x)) ** tail) / f_cap) ** n  # noqa: E731
        assert stats.kstest(m, cdf).pvalue > 1e-3
        if n == 1.0:
            p = liq.LiqParams(alpha=0.0, beta=BETA, size_scale=xm, size_tail=tail, size_cap=cap)
            se = m.std() / np.sqrt(n_draws)
            assert abs(m.mean() - float(liq.expected_size(p))) < 4 * se
    # No cap (inf) gives exactly the uncapped values.
    a = dist.pareto_sum(u, jnp.full(u.shape, 3.0), jnp.asarray(xm), jnp.asarray(tail))
    b = dist.pareto_sum(u, jnp.full(u.shape, 3.0), jnp.asarray(xm), jnp.asarray(tail), jnp.asarray(np.inf))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_size_cap_lowers_the_branching_ratio_and_is_validated():
    base = dict(alpha=0.2, beta=BETA, size_scale=X_M, size_tail=1.5)
    uncapped = liq.LiqParams(**base)
    capped = liq.LiqParams(**base, size_cap=5.0)
    r = X_M / 5.0
    want = 1.5 * X_M / 0.5 * (1 - r**0.5) / (1 - r**1.5)
    assert float(liq.expected_size(capped)) == pytest.approx(want, rel=1e-12)
    assert float(liq.branching_ratio(capped)) == pytest.approx(0.2 * want / BETA, rel=1e-12)
    assert float(liq.branching_ratio(capped)) < float(liq.branching_ratio(uncapped))
    # A cap makes an otherwise explosive cascade stable (a heavy tail's mean is in its largest sizes).
    with pytest.raises(ValueError, match="branching ratio"):
        liq.LiqParams(alpha=0.4, beta=BETA, size_scale=X_M, size_tail=1.5)
    liq.LiqParams(alpha=0.4, beta=BETA, size_scale=X_M, size_tail=1.5, size_cap=3.0)
    with pytest.raises(ValueError, match=r"LiqParams\.size_cap .*must be > size_scale"):
        liq.LiqParams(**base, size_cap=X_M)


def test_contract():
    p = liq.LiqParams(
        mu_long=np.array([0.5, 0.2]),
        mu_short=np.array([0.3, 0.4]),
        alpha=np.array([0.3, 0.01]),
        alpha_cross=np.array([0.1, 0.005]),
        beta=BETA,
        size_scale=np.array([X_M, 10.0]),
        size_tail=TAIL,
        trigger=20.0,
        leverage=np.array([5.0, 3.0]),
        impact=np.array([1e-4, 1e-6]),
    )
    assert np.all(liq.branching_ratio(p) < 1)
    check_contract(
        liq,
        p,
        drivers,
        n_assets=2,
        invalid=[
            ("mu_long", -0.1),
            ("mu_short", -1.0),
            ("alpha", -0.1),
            ("alpha_cross", -0.1),
            ("beta", 0.0),
            ("size_scale", 0.0),
            ("size_tail", 1.0),
            ("size_tail", 0.5),
            ("trigger", -1.0),
            ("leverage", 0.0),
            ("leverage", -2.0),
            ("impact", -1e-4),
            ("alpha", 10.0),
            ("mu_long", float("nan")),
        ],
    )


def diffusion_rate(
    p: liq.LiqParams, sigma: float, dt: float, horizon_s: float, n_paths: int, seed: int = 0, burn_in_s: float = 200.0
):
    """Liquidations per second (both sides) of each of ``n_paths`` paths of ``horizon_s`` seconds
    of the process stepped every ``dt`` s on a Brownian log price, counted after ``burn_in_s``
    seconds (the excitation and the price average start at 0, below their stationary means)."""
    n_burn = int(round(burn_in_s / dt))
    n_steps = n_burn + int(round(horizon_s / dt))

    def path(key):
        def body(carry, t):
            s, x, r = carry
            k = rng.fold_in(key, t)
            s, info = liq.step(rng.fold_in(k, 1), s, p, dt, last_ret=r, log_price=x)
            r_new = sigma * np.sqrt(dt) * rng.normal(rng.fold_in(k, 2), (1,), jnp.float64)
            return (s, x + r_new, r_new), jnp.where(t >= n_burn, info.n_long + info.n_short, 0.0)

        init = (liq.init(p, 1, jnp.float64), jnp.zeros(1), jnp.zeros(1))
        return jnp.sum(jax.lax.scan(body, init, jnp.arange(n_steps))[1]) / horizon_s

    return np.asarray(jax.jit(jax.vmap(path))(rng.path_keys(rng.key(seed), 0, n_paths)))


DIFFUSION = dict(mu_long=1e-3, mu_short=1e-3, alpha=0.0, beta=0.1, trigger=5.0, leverage=10.0, trigger_window_s=30.0)


@pytest.mark.parametrize("kind", liq.TRIGGER_KINDS)
def test_triggering_by_a_diffusion_follows_its_exact_law_and_only_drawdown_is_free_of_dt(kind):
    """Each trigger scheme's liquidation rate on a Brownian price against its exact stationary law;
    ``"step_return"`` grows as 1/sqrt(dt) (the documented bias), ``"drawdown"`` converges to its
    continuous-time limit (within 1 % at dt = 1 s for a 30-s window)."""
    p = liq.LiqParams(**DIFFUSION, trigger_kind=kind)
    rates = {}
    for dt in (1.0, 0.25):
        expect = liq.stationary_rate_on_a_diffusion(p, 1e-4, dt)
        assert_mean(diffusion_rate(p, 1e-4, dt, 600.0, 256, seed=3), expect, (kind, dt))
        rates[dt] = expect
    if kind == "step_return":
        base = DIFFUSION["mu_long"] + DIFFUSION["mu_short"]
        assert (rates[0.25] - base) / (rates[1.0] - base) == pytest.approx(2.0)  # 1 / sqrt(1/4)
        with pytest.raises(ValueError, match="no continuous-time limit"):
            liq.stationary_rate_on_a_diffusion(p, 1e-4, None)
    else:
        limit = liq.stationary_rate_on_a_diffusion(p, 1e-4, None)
        assert rates[1.0] == pytest.approx(limit, rel=1e-2) and rates[0.25] == pytest.approx(limit, rel=1e-3)


def test_a_sudden_fall_triggers_the_same_total_under_both_kinds():
    """A crash far faster than the window adds trigger x leverage x the fall to the long side's
    excitation in total, whichever the kind (drawdown spreads it over about a window)."""
    totals = {}
    step = jax.jit(liq.step)
    for kind in liq.TRIGGER_KINDS:
        p = liq.LiqParams(
            mu_long=0.0,
            mu_short=0.0,
            alpha=0.0,
            beta=1e-9,
            trigger=2.0,
            leverage=10.0,
            trigger_window_s=5.0,
            trigger_kind=kind,
        )
        s = liq.init(p, 1, jnp.float64)
        x, r = jnp.zeros(1), jnp.zeros(1)
        for t in range(400):
            if t == 1:
                x, r = x - 0.02, jnp.full(1, -0.02)  # a 2 % fall in one step, then a flat price
            elif t > 1:
                r = jnp.zeros(1)
            s, _ = step(rng.key(t), s, p, 0.5, last_ret=r, log_price=x)
        totals[kind] = float(s.ex_long[0])
        assert float(s.ex_short[0]) == 0.0
    assert totals["step_return"] == pytest.approx(2.0 * 10.0 * 0.02, rel=1e-6)
    assert totals["drawdown"] == pytest.approx(totals["step_return"], rel=1e-6)
