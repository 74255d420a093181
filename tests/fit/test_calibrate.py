"""Estimators of mmsim.fit.calibrate on simulated data with known parameters (fixed seeds).

Tolerances are 4 standard errors of the estimator itself, so a correct estimator fails a test
with probability of order 1e-4 per parameter; the seeds are fixed, so the suite is deterministic.
"""

import math

import numpy as np
import pandas as pd
import pytest

from mmsim.fit import calibrate as cal

Z = 4.0  # tolerance in standard errors


# ----------------------------------------------------------------------------------------------
# Simulators (numpy, fixed seeds)


def ogata_hawkes(rng, mu, alpha, beta, T):
    """Ogata thinning for lambda(t) = mu + alpha sum e^{-beta (t - t_i)} on [0, T].

    Between events the intensity only decays, so its value just after the last candidate bounds
    it until the next candidate.
    """
    t, ex, out = 0.0, 0.0, []
    while True:
        lam_bar = mu + ex
        w = rng.exponential(1.0 / lam_bar)
        t += w
        if t > T:
            return np.array(out)
        ex *= math.exp(-beta * w)
        if rng.random() * lam_bar <= mu + ex:
            out.append(t)
            ex += alpha


def ogata_bivariate(rng, mu, a, beta, T):
    """Ogata thinning for the buy/sell pair; a[m, d] is the excitation of type d on type m."""
    t, ex, out = 0.0, np.zeros(2), ([], [])
    while True:
        lam_bar = float(np.sum(mu + ex))
        w = rng.exponential(1.0 / lam_bar)
        t += w
        if t > T:
            return np.array(out[0]), np.array(out[1])
        ex = ex * math.exp(-beta * w)
        lam = mu + ex
        u = rng.random() * lam_bar
        if u < lam[0]:
            out[0].append(t)
            ex = ex + a[:, 0]
        elif u < lam[0] + lam[1]:
            out[1].append(t)
            ex = ex + a[:, 1]


def naive_loglik(t, T, mu, alpha, beta):
    """O(n^2) log-likelihood straight from the definition (strictly earlier events excite)."""
    ll = -mu * T - alpha / beta * np.sum(1 - np.exp(-beta * (T - t)))
    for ti in t:
        past = t[t < ti]
        ll += math.log(mu + alpha * np.sum(np.exp(-beta * (ti - past))))
    return ll


def within(est, se, true, z=Z):
    return abs(est - true) <= z * se


def bars_from_returns(r, step=60.0, p0=30_000.0, t0=1.6e9):
    close = p0 * np.exp(np.concatenate([[0.0], np.cumsum(r)]))
    t = t0 + step * np.arange(len(close))
    return pd.DataFrame({"time": t, "open": close, "high": close, "low": close, "close": close, "volume": 1.0})


# ----------------------------------------------------------------------------------------------
# Hawkes


def test_exp_sums_match_naive_with_ties_and_large_beta(seed):
    rng = np.random.default_rng(seed)
    t = np.sort(np.concatenate([rng.uniform(0, 50, 300), np.repeat(rng.uniform(0, 50, 10), 3)]))
    w = rng.random((len(t), 2))
    for beta in (0.3, 40.0, 5000.0):
        A, B = cal._exp_sums(t, beta, w)
        for i in range(0, len(t), 7):
            past = t < t[i]
            e = np.exp(-beta * (t[i] - t[past]))
            np.testing.assert_allclose(A[i], w[past].T @ e, rtol=1e-12, atol=1e-300)
            np.testing.assert_allclose(B[i], w[past].T @ ((t[i] - t[past]) * e), rtol=1e-11, atol=1e-300)


def test_hawkes_loglik_matches_definition(seed):
    rng = np.random.default_rng(seed)
    t = ogata_hawkes(rng, 0.5, 0.9, 1.5, 400.0)
    for mu, alpha, beta in ((0.5, 0.9, 1.5), (1.0, 0.2, 30.0)):
        assert cal.hawkes_exp_loglik(t, 400.0, mu, alpha, beta) == pytest.approx(
            naive_loglik(t, 400.0, mu, alpha, beta), rel=1e-11
        )
    # A shifted window gives the same likelihood.
    assert cal.hawkes_exp_loglik(t + 1e9, 1e9 + 400.0, 0.5, 0.9, 1.5, t0=1e9) == pytest.approx(
        naive_loglik(t, 400.0, 0.5, 0.9, 1.5), rel=1e-7
    )  # t + 1e9 rounds to 1.2e-7 s


def test_fit_hawkes_recovers_parameters(seed):
    mu, alpha, beta, T = 0.8, 1.2, 2.0, 3000.0
    t = ogata_hawkes(np.random.default_rng(seed), mu, alpha, beta, T)
    t0 = 1.7e9  # epoch-sized clock: the fit works on t - t0
    f = cal.fit_hawkes_exp(t + t0, T + t0, t0)
    assert f["converged"] and not f["at_bound"]
    assert f["n"] == len(t) and f["window"] == pytest.approx(T)
    for name, true in (("mu", mu), ("alpha", alpha), ("beta", beta), ("branching", alpha / beta)):
        assert np.isfinite(f[name + "_se"]) and f[name + "_se"] > 0
        assert within(f[name], f[name + "_se"], true), (name, f[name], f[name + "_se"])
    assert f["alpha"] < f["beta"]
    # Time rescaling: Exp(1) gaps under the fitted model; a Poisson fit is rejected.
    assert f["ks_pvalue"] > 1e-3
    assert f["ks_pvalue_poisson"] < 1e-6
    assert f["lr_stat"] > 100


def test_fit_hawkes_on_poisson_data_finds_little_excitation(seed):
    rng = np.random.default_rng(seed + 1)
    T, rate = 2000.0, 1.5
    t = np.sort(rng.uniform(0, T, rng.poisson(rate * T)))
    f = cal.fit_hawkes_exp(t, T)
    # Two extra parameters buy little likelihood (chi-square(2) 99.97 % point: 16.2), and the
    # fitted model still passes time rescaling. (The MLE may put a tiny alpha on a kernel slower
    # than the window, which only fits a trend: branching is not identified here.)
    assert f["lr_stat"] < 16.2
    assert f["ks_pvalue"] > 1e-3
    assert f["mean_rate"] == pytest.approx(len(t) / T)


def test_fit_hawkes_enforces_branching_below_one(seed):
    # A near-critical path: the fit must keep alpha < beta.
    t = ogata_hawkes(np.random.default_rng(seed + 2), 0.2, 1.9, 2.0, 1000.0)
    f = cal.fit_hawkes_exp(t, 1000.0)
    assert f["alpha"] < f["beta"] and f["branching"] <= 0.999 + 1e-12


def test_fit_hawkes_rejects_bad_input():
    with pytest.raises(ValueError):
        cal.fit_hawkes_exp([1.0, 2.0], 10.0)
    with pytest.raises(ValueError):
        cal.fit_hawkes_exp([1.0, 2.0, 11.0], 10.0)
    with pytest.raises(ValueError):
        cal.fit_hawkes_exp([1.0, 2.0, 3.0], 0.0)


def test_fit_hawkes_bivariate_recovers_parameters(seed):
    true = dict(mu_buy=0.5, mu_sell=0.4, alpha_buy=0.8, alpha_sell=0.6, gamma=0.3, beta=2.0)
    a = np.array([[true["alpha_buy"], true["gamma"]], [true["gamma"], true["alpha_sell"]]])
    T = 2500.0
    tb, ts = ogata_bivariate(
        np.random.default_rng(seed + 3), np.array([true["mu_buy"], true["mu_sell"]]), a, true["beta"], T
    )
    f = cal.fit_hawkes_bivariate_exp(tb, ts, T)
    assert f["converged"] and not f["at_bound"]
    for name, v in true.items():
        assert within(f[name], f[name + "_se"], v), (name, f[name], f[name + "_se"])
    K = a / true["beta"]
    lam = np.linalg.solve(np.eye(2) - K, [true["mu_buy"], true["mu_sell"]])
    assert f["spectral_radius"] < 1
    assert f["stationary_rate_buy"] == pytest.approx(lam[0], rel=0.15)
    assert f["ks_pvalue_buy"] > 1e-3 and f["ks_pvalue_sell"] > 1e-3


def test_aggregate_market_orders():
    tr = pd.DataFrame(
        {
            "time": [1.0, 1.0, 1.0, 1.0, 2.0],
            "price": [10.0, 10.5, 9.0, 9.5, 11.0],
            "qty": [1.0, 3.0, 2.0, 2.0, 1.0],
            "side": [1, 1, -1, -1, 1],
        }
    )
    mo = cal.aggregate_market_orders(tr)
    assert len(mo) == 3
    buy = mo[(mo.time == 1.0) & (mo.side == 1)].iloc[0]
    assert buy.qty == 4.0 and buy.n_fills == 2 and buy.vwap == pytest.approx(41.5 / 4)
    assert buy.first_price == 10.0 and buy.last_price == 10.5


# ----------------------------------------------------------------------------------------------
# Ornstein-Uhlenbeck, tails


def simulate_ou(rng, kappa, theta, sigma, dt, n):
    b = math.exp(-kappa * dt)
    sd = sigma * math.sqrt((1 - b * b) / (2 * kappa))
    x = np.empty(n)
    x[0] = theta
    eps = rng.standard_normal(n) * sd
    for i in range(1, n):
        x[i] = theta + b * (x[i - 1] - theta) + eps[i]
    return x


def test_fit_ou_recovers_parameters(seed):
    kappa, theta, sigma, dt = 0.5, 1.0, 0.3, 0.1
    x = simulate_ou(np.random.default_rng(seed), kappa, theta, sigma, dt, 20_000)
    f = cal.fit_ou(x, dt)
    assert f["mean_reverting"] and f["n"] == len(x) - 1
    for name, v in (("kappa", kappa), ("theta", theta), ("sigma", sigma)):
        assert within(f[name], f[name + "_se"], v), (name, f[name], f[name + "_se"])
    assert f["half_life"] == pytest.approx(math.log(2) / f["kappa"])
    assert f["stationary_sd"] == pytest.approx(sigma / math.sqrt(2 * kappa), rel=0.1)


def test_fit_ou_units_scale_with_dt(seed):
    # The same series read with dt in hours instead of seconds: kappa x 3600, sigma x 60.
    x = simulate_ou(np.random.default_rng(seed + 1), 1e-4, 2e-4, 1e-6, 28_800.0, 3000)
    fs, fh = cal.fit_ou(x, 28_800.0), cal.fit_ou(x, 8.0)
    assert fh["kappa"] == pytest.approx(fs["kappa"] * 3600, rel=1e-9)
    assert fh["sigma"] == pytest.approx(fs["sigma"] * 60, rel=1e-9)
    assert fh["theta"] == pytest.approx(fs["theta"], rel=1e-12)


def test_fit_ou_flags_no_mean_reversion():
    f = cal.fit_ou(1.01 ** np.arange(100), 1.0)
    assert not f["mean_reverting"] and math.isnan(f["kappa"])


def test_hill_recovers_pareto_tail(seed):
    rng = np.random.default_rng(seed)
    a, xm = 1.6, 0.01
    x = xm * (1 - rng.random(50_000)) ** (-1 / a)
    h = cal.hill_tail_index(x, 5000)
    assert h["k"] == 5000 and h["n"] == 50_000
    assert h["se"] == pytest.approx(h["value"] / math.sqrt(5000))
    assert within(h["value"], h["se"], a)
    assert h["x_min"] == pytest.approx(xm * 10 ** (1 / a), rel=0.05)  # the 90 % quantile
    assert cal.hill_tail_index(x)["k"] == 5000  # default k = n // 10


def test_hill_rejects_bad_k():
    with pytest.raises(ValueError):
        cal.hill_tail_index([1.0, 2.0, 3.0], 3)


# ----------------------------------------------------------------------------------------------
# Volatility from bars


def test_realized_variance_per_second(seed):
    rng = np.random.default_rng(seed)
    sigma = 1.2e-4  # per sqrt second
    r = sigma * math.sqrt(60) * rng.standard_normal(30 * 1440)
    rv = cal.realized_variance_per_second(bars_from_returns(r))
    assert rv["n"] == len(r)
    assert within(rv["value"], rv["se"], sigma**2)
    assert within(rv["sigma"], rv["sigma_se"], sigma)


def test_volatility_regimes_on_piecewise_constant_variance(seed):
    # Twelve-hour blocks: normal (variance v0) 90 % of the time, high (8 v0) 10 %. The long-run
    # level is 1.7 v0, so the vol ratios are 0.77 and 2.17: far from the thresholds.
    rng = np.random.default_rng(seed)
    v0 = 1e-8
    blocks = [1] * 9 + [8]
    levels = np.repeat(np.tile(blocks, 4), 720) * v0  # 40 blocks of 12 h
    r = np.sqrt(levels * 60) * rng.standard_normal(len(levels))
    out = cal.volatility_regimes(bars_from_returns(r))
    occ, var = out["occupancy"], out["variance"]
    assert occ.sum() == pytest.approx(1.0)
    assert occ[0] < 0.005 and occ[3] == 0
    assert occ[1] == pytest.approx(0.9, abs=0.03) and occ[2] == pytest.approx(0.1, abs=0.03)
    assert var[1] == pytest.approx(v0, rel=0.1) and var[2] == pytest.approx(8 * v0, rel=0.1)
    Q = out["generator"]
    np.testing.assert_allclose(np.nansum(Q[1:3, :], axis=1), 0.0, atol=1e-15)
    assert np.all(Q[1:3][~np.eye(4, dtype=bool)[1:3]] >= 0)
    # 4 normal -> high and 3 high -> normal switches (the path ends in a high block), give or
    # take a flicker of the rolling classifier at a switch.
    c = out["counts"]
    assert 4 <= c[1, 2] <= 6 and 3 <= c[2, 1] <= 5
    assert Q[1, 2] == pytest.approx(c[1, 2] / out["time_in"][1])
    assert Q[1, 2] == pytest.approx(4 / (36 * 12 * 3600), rel=0.6)


def simulate_cir_bars(rng, kappa, theta, xi, n, step=60.0):
    """Minute returns with a CIR variance (full-truncation Euler on a 1-second sub-grid)."""
    sub = 10
    h = step / sub
    v = theta
    r = np.empty(n)
    z = rng.standard_normal((n, sub))
    zr = rng.standard_normal(n)
    for i in range(n):
        acc = 0.0
        for j in range(sub):
            vp = max(v, 0.0)
            acc += vp * h
            v = v + kappa * (theta - vp) * h + xi * math.sqrt(vp * h) * z[i, j]
        r[i] = math.sqrt(acc) * zr[i]
    return r


def test_fit_variance_process_recovers_cir(seed):
    kappa, theta = 1.0 / 14_400, 1.5e-8  # 4-hour mean reversion, sigma ~ 1.2e-4 / sqrt s
    xi = math.sqrt(kappa * theta)  # Feller ratio 2
    r = simulate_cir_bars(np.random.default_rng(seed), kappa, theta, xi, 60 * 24 * 40)
    f = cal.fit_variance_process(bars_from_returns(r))
    assert f["n"] == 960
    for name, v in (("kappa", kappa), ("theta", theta), ("xi", xi)):
        assert np.isfinite(f[name + "_se"]) and f[name + "_se"] > 0
        assert within(f[name], f[name + "_se"], v), (name, f[name], f[name + "_se"])
    assert 0 < f["noise_share"] < 0.5


def test_detect_jumps(seed):
    rng = np.random.default_rng(seed)
    n, sig = 30 * 1440, 1e-4 * math.sqrt(60)
    r = sig * rng.standard_normal(n)
    jumps = rng.random(n) < 1 / 720  # two a day
    r[jumps] += rng.choice([-1, 1], jumps.sum()) * 0.01  # 13 diffusive sds
    bars = bars_from_returns(r)
    j = cal.detect_jumps(bars)
    tested = np.arange(n) > 241  # returns with a full trailing window
    true_times = bars["time"].to_numpy()[1:][jumps & tested]
    found = np.isin(true_times, j["times"])
    assert found.mean() >= 0.95
    assert j["n_jumps"] - found.sum() <= 10  # false alarms: ~3 expected at k = 4
    T = tested.sum() * 60.0
    assert within(j["rate"], j["rate_se"], len(true_times) / T)
    assert j["diffusive_variance"] == pytest.approx(1e-8, rel=0.05)


def test_touch_stats_and_mid_variance(seed):
    rng = np.random.default_rng(seed)
    n = 20_000
    t = 1.7e9 + np.cumsum(rng.exponential(0.05, n))
    mid = 60_000 * np.exp(np.cumsum(1e-4 * np.sqrt(0.05) * rng.standard_normal(n)))
    wide = rng.random(n) < 0.2
    spread = np.where(wide, 0.3, 0.1)
    bid = np.round((mid - spread / 2) / 0.1) * 0.1
    ask = bid + spread
    book = pd.DataFrame({"time": t, "bid": bid, "bid_qty": 2.0, "ask": ask, "ask_qty": 3.0})
    s = cal.touch_stats(book, 0.1)
    assert s["frac_one_tick"] == pytest.approx(0.8, abs=0.02)
    assert s["spread_ticks_q50"] == 1.0 and s["spread_ticks_q99"] == 3.0
    assert s["spread_ticks_mean"] == pytest.approx(1.4, abs=0.05)
    assert s["spread_bps_mean"] == pytest.approx(1e4 * 0.14 / 60_000, rel=0.05)
    assert s["bid_qty_median"] == 2.0 and s["ask_qty_median"] == 3.0
    v = cal.mid_variance_per_second(book, 5.0)
    assert within(v["value"], v["se"], 1e-8)


def test_spread_widening():
    # One tick except two episodes: [10, 12) at 3 ticks and [20, 21) at 2 ticks, then to t = 100.
    t = np.array([0.0, 10.0, 12.0, 20.0, 21.0, 100.0])
    bid = np.full(6, 1000.0)
    ask = bid + np.array([0.1, 0.3, 0.1, 0.2, 0.1, 0.1])
    book = pd.DataFrame({"time": t, "bid": bid, "bid_qty": 1.0, "ask": ask, "ask_qty": 1.0})
    w = cal.spread_widening(book, 0.1)
    assert w["n"] == 2
    assert w["rate"] == pytest.approx(2 / 97.0)
    assert w["mean_duration"] == pytest.approx(1.5)
    assert w["frac_wide"] == pytest.approx(3 / 100.0)
    mid1, mid2 = 1000.15, 1000.1
    assert w["mean_excess"] == pytest.approx(0.5 * (0.2 / mid1 + 0.1 / mid2))


def test_funding_divergence():
    t = 1.6e9 + 28_800.0 * np.arange(500)
    rng = np.random.default_rng(3)
    a_rate = 1e-4 + 1e-5 * rng.standard_normal(500)
    b_rate = a_rate - 2e-5 + 1e-6 * rng.standard_normal(500)
    a = pd.DataFrame({"time": t, "rate": a_rate})
    b = pd.DataFrame({"time": t[::-1] + 0.5, "rate": b_rate[::-1]})  # unsorted, 0.5 s jitter
    d = cal.funding_divergence(a, b)
    assert d["n"] == 500
    assert within(d["mean"], d["mean_se"], 2e-5)
    assert d["sd"] == pytest.approx(1e-6, rel=0.15)
    assert d["ou"]["n"] == 499 and d["ou"]["dt"] == 28_800.0
    np.testing.assert_allclose(d["diff"]["diff"], a_rate - b_rate)


def test_fit_funding_premium_inverts_the_clamp(seed):
    # Premium index OU per 8 h interval; the exchange clamps the paid rate to the interest rate.
    kappa, theta, sd, dt = 1.0 / 86_400, 2e-4, 4e-4, 28_800.0
    sigma = sd * math.sqrt(2 * kappa)
    P = simulate_ou(np.random.default_rng(seed), kappa, theta, sigma, dt, 6000)
    rate, c, cap = 1e-4, 5e-4, 3e-3
    F = np.clip(P + np.clip(rate - P, -c, c), -cap, cap)
    f = cal.fit_funding_premium(F, interest=rate, clamp=c, cap=cap, dt=dt)
    assert 0.5 < f["frac_in_band"] < 0.9
    assert within(f["theta"], f["theta_se"], theta)
    assert within(f["stationary_sd"], f["stationary_sd_se"], sd)
    # kappa comes from the clamped rate: an upper bound of the premium's, of the same order.
    assert kappa * 0.8 < f["kappa"] < kappa * 3
