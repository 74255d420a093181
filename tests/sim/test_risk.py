"""Risk statistics: exact intervals, VaR/CVaR, and the ruin machinery against Cramer-Lundberg."""

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from mmsim.sim import risk
from tests.sim import _ruin as ruin


def test_clopper_pearson_known_values():
    # 0 of n: the two-sided 95 % upper end is 1 - 0.025^(1/n).
    for n in (10, 1000, 100_000):
        lo, hi = risk.clopper_pearson(0, n)
        assert lo == 0.0
        np.testing.assert_allclose(hi, 1 - 0.025 ** (1 / n), rtol=1e-10)
    # n of n mirrors it; a textbook value: 5 of 20 -> [0.0866, 0.4910].
    lo, hi = risk.clopper_pearson(20, 20)
    np.testing.assert_allclose(lo, 0.025 ** (1 / 20), rtol=1e-10)
    assert hi == 1.0
    lo, hi = risk.clopper_pearson(5, 20)
    np.testing.assert_allclose([lo, hi], [0.0866, 0.4910], atol=5e-5)
    with pytest.raises(ValueError, match="n = 0"):
        risk.clopper_pearson(0, 0)
    with pytest.raises(ValueError, match="count = 5"):
        risk.clopper_pearson(5, 3)


def test_certify_only_from_upper_bound():
    # No event in 1,000 paths does not certify 1e-3 (upper bound ~3.7e-3); in 10,000 it does.
    p = risk.proportion(np.zeros(1000, bool))
    assert p["count"] == 0 and not risk.certify_below(p, 1e-3)
    assert risk.certify_below(risk.proportion(np.zeros(10_000, bool)), 1e-3)


def test_var_cvar_normal():
    x = stats.norm.ppf((np.arange(400_000) + 0.5) / 400_000)
    v, c = risk.var_cvar(x, 0.99)
    np.testing.assert_allclose(v, stats.norm.ppf(0.99), atol=1e-3)
    np.testing.assert_allclose(c, stats.norm.pdf(stats.norm.ppf(0.99)) / 0.01, atol=2e-3)
    s = risk.pnl_summary(x)
    assert s["var_95"] < s["cvar_95"] < s["cvar_99"]


def test_running_metrics():
    r = risk.init(100.0, 1, jnp.float64)
    for t, (eq, mr, q, liq) in enumerate(
        [(110, 5, 1, False), (90, 2, -3, False), (95, 1.5, 2, True), (80, 9, 0, False)]
    ):
        r = risk.update(r, jnp.float64(eq), jnp.float64(mr), jnp.array([q], float), jnp.bool_(liq), jnp.float64(t))
    assert float(r.peak_equity) == 110 and float(r.max_dd) == 30
    np.testing.assert_allclose(float(r.max_dd_frac), 30 / 110)
    assert float(r.min_margin_ratio) == 1.5 and float(r.max_abs_inventory[0]) == 3
    assert bool(r.liquidated) and float(r.liq_time) == 2
    r2 = risk.update(r, jnp.float64(np.nan), jnp.float64(1.0), jnp.zeros(1), jnp.bool_(False), jnp.float64(9))
    assert int(r2.n_bad) == 1 and float(r2.max_dd) == 30


def test_liquidation_curve_is_monotone():
    t = np.array([-1, 5, 10, -1, 50, 100])
    c = risk.liquidation_curve(t, 100.0, n_points=10)
    assert np.all(np.diff(c["estimate"]) >= 0) and c["count"][-1] == 4
    assert np.all(c["ci_low"] <= c["estimate"]) and np.all(c["estimate"] <= c["ci_high"])


def test_ruin_probability_cramer_lundberg(seed):
    """The account's liquidation machinery against the classical ruin probability.

    One long unit is marked at a price that follows the surplus of the Cramer-Lundberg model,
    U(t) = u + c t - sum of claims (claims Exp(mean mu) at rate lam, premium c = (1 + theta) lam mu),
    shifted by a constant so that equity = U(t) (tests/sim/_ruin.py). The observations arrive at
    the claim times (irregular dt, as from a live feed), which is where ruin can happen; the
    maintenance margin is negligible, so liquidation <=> U < 0.
    psi(u) = exp(-theta u / ((1 + theta) mu)) / (1 + theta).
    """
    u, n_claims, n_paths = 4.0, 1500, 20_000
    ruined, _ = ruin.run(u, n_paths, n_claims, seed, tilted=False)
    p = risk.proportion(np.asarray(ruined), alpha=1e-4)  # a 4-sigma-wide exact interval
    # Ruin after the last claim needs a fall of ~ theta*lam*mu*n_claims = 375 from the mean
    # surplus: probability ~ exp(-R * 375), R = theta/((1+theta) mu) = 0.2, i.e. 1e-33.
    assert p["ci_low"] <= ruin.psi(u) <= p["ci_high"], (p, ruin.psi(u))


def test_summarize_keys_and_counts():
    from mmsim.sim import simulate as sim

    n = 200
    pnl = np.linspace(-100.0, 99.0, n)
    liq = np.zeros(n, bool)
    liq[:3] = True
    s = sim.PathSummary(
        pnl=pnl,
        pnl_components=np.tile(pnl[:, None] / 6, (1, 6)),
        max_dd=np.arange(n) * 10.0,
        max_dd_frac=np.zeros(n),
        min_margin_ratio=np.ones(n),
        min_excess=np.full(n, 1000.0),
        max_abs_inventory=np.ones((n, 1)),
        liquidated=liq,
        liq_time=np.where(liq, 5.0, -1.0),
        n_fills=np.ones((n, 1, 2), int),
        final_position=np.zeros((n, 1)),
        n_bad=np.zeros(n, int),
    )
    r = sim.SimResult(
        summary=s,
        trace=None,
        n_paths=n,
        n_steps=10,
        dt=0.5,
        seed=1,
        chunk_size=n,
        n_devices=1,
        compile_s=1.0,
        run_s=2.0,
        path_steps_per_s=1000.0,
        initial_equity=1000.0,
    )
    m = risk.summarize(r, drawdown_threshold=0.5)
    assert m["n_paths"] == n and m["horizon_s"] == 5.0 and m["dt_s"] == 0.5 and m["seed"] == 1
    assert m["p_liquidation"]["count"] == 3
    assert (m["p_liquidation"]["ci_low"], m["p_liquidation"]["ci_high"]) == risk.clopper_pearson(3, n)
    # Drawdowns 10 i > 500 for i >= 51: 149 paths.
    assert m["p_drawdown"]["count"] == 149 and m["p_drawdown"]["threshold"] == 0.5
    np.testing.assert_allclose(m["pnl"]["mean"], pnl.mean())
    np.testing.assert_allclose(m["pnl"]["q05"], np.quantile(pnl, 0.05))
    assert set(m["pnl"]) >= {"mean", "std", "q01", "q05", "q50", "q95", "q99", "var_99", "cvar_99"}
    np.testing.assert_allclose(sum(m["pnl_decomposition"].values()), pnl.mean())
    assert m["time_to_liquidation"]["count"] == 3 and m["fills"]["bid_mean"] == 1.0
    with pytest.raises(ValueError, match="drawdown_threshold"):
        risk.summarize(r, drawdown_threshold=0.0)
