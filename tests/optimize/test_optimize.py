"""The policy optimiser (mmsim.optimize) on toy problems with known answers, plus one tiny run of
the real simulator.

Toy market (:class:`ToyMarket`): with z = log gamma, E[PnL] = a - b (z - z_pnl)^2 (quote currency),
P(liquidation) = p_ref exp(-k (z - z_ref)) and P(max drawdown > x) = q_ref exp(-k_dd (z - z_ref)),
both decreasing in gamma (increasing in 1/gamma). The constrained optimum is therefore known in
closed form: z* = max(z_pnl, z_liq, z_dd) with z_liq = z_ref + log(p_ref / epsilon_liq) / k.
Each path draws (xi, U, V) from the seed, is liquidated when U < P(liquidation) and breaches the
drawdown threshold when V < P(drawdown): on a fixed seed the sample problem's boundary is an
order statistic of U (or V), so the optimiser's answer can be checked exactly on its training
paths and statistically against the closed form.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from mmsim import optimize as opt
from mmsim.optimize import space
from mmsim.sim import risk

CONF = Path(__file__).resolve().parents[2] / "mmsim" / "conf"


class ToyMarket:
    """Toy evaluator: theta = {"gamma": ...} (1/quote currency); see the module docstring."""

    def __init__(
        self,
        a=10.0,
        b=1.0,
        sd=5.0,
        z_pnl=math.log(0.01),
        z_ref=math.log(0.01),
        p_ref=0.02,
        k=1.5,
        q_ref=0.2,
        k_dd=1.0,
        x=0.2,
    ):
        self.a, self.b, self.sd, self.z_pnl, self.z_ref = a, b, sd, z_pnl, z_ref
        self.p_ref, self.k, self.q_ref, self.k_dd, self.x = p_ref, k, q_ref, k_dd, x
        self.calls = 0

    def p_liq(self, z):
        return min(1.0, self.p_ref * math.exp(-self.k * (z - self.z_ref)))

    def p_dd(self, z):
        return min(1.0, self.q_ref * math.exp(-self.k_dd * (z - self.z_ref)))

    def mean(self, z):
        return self.a - self.b * (z - self.z_pnl) ** 2

    def z_liq(self, eps):
        return self.z_ref + math.log(self.p_ref / eps) / self.k

    def z_dd(self, eps):
        return self.z_ref + math.log(self.q_ref / eps) / self.k_dd

    @staticmethod
    def draws(seed, n):
        r = np.random.default_rng(seed)
        return r.standard_normal(n), r.random(n), r.random(n)

    def __call__(self, theta, seed, n):
        self.calls += 1
        z = math.log(theta["gamma"])
        xi, u, v = self.draws(seed, n)
        p, q = self.p_liq(z), self.p_dd(z)
        return opt.PathOutcomes(
            pnl=self.mean(z) + self.sd * xi,
            liquidated=u < p,
            max_dd_frac=self.x * q / np.maximum(v, 1e-300),
            min_margin_ratio=u / p,
        )


class FillToy:
    """Discrete fills: J quote opportunities per path, each filled with probability
    pi = 0.5 - 0.15 z1 (z1 = log(gamma / 0.01)); PnL = (1 + 0.3 z2) N - c N^2 with N the number of
    fills and z2 = log(size_fraction / 0.1). Per path the PnL jumps with z1 (a fill happens or not),
    but E[PnL] = (1 + 0.3 z2) J pi - c (J pi (1 - pi) + J^2 pi^2) is an exact quadratic in z, so the
    smoothed gradient and central differences both equal the true gradient in expectation."""

    J, c = 20, 0.02

    @staticmethod
    def z(theta):
        return math.log(theta["gamma"] / 0.01), math.log(theta["size_fraction"] / 0.1)

    def __call__(self, theta, seed, n):
        z1, z2 = self.z(theta)
        u = np.random.default_rng(seed).random((n, self.J))
        fills = (u < 0.5 - 0.15 * z1).sum(axis=1)
        pnl = (1.0 + 0.3 * z2) * fills - self.c * fills**2
        zeros = np.zeros(n)
        return opt.PathOutcomes(
            pnl=pnl.astype(float), liquidated=zeros.astype(bool), max_dd_frac=zeros, min_margin_ratio=np.full(n, np.inf)
        )

    def grad(self, z1, z2):
        j, c = self.J, self.c
        pi, dpi = 0.5 - 0.15 * z1, -0.15
        d1 = (1 + 0.3 * z2) * j * dpi - c * (j * (1 - 2 * pi) * dpi + 2 * j**2 * pi * dpi)
        d2 = 0.3 * j * pi
        return np.array([d1, d2])


# ------------------------------------------------------------------------------------------------
# Building blocks


def test_param_spec_transforms_and_errors():
    for spec, x in (
        (opt.ParamSpec("gamma", 1e-4, 1.0, "log"), 0.02),
        (opt.ParamSpec("size_fraction", 0.01, 0.5, "logit"), 0.1),
        (opt.ParamSpec("flow_skew", -1.0, 1.0, "linear"), 0.3),
    ):
        assert spec.from_z(spec.to_z(x)) == pytest.approx(x, rel=1e-12)
        lo, hi = spec.z_bounds
        assert spec.from_z(hi + 5.0) == spec.hi and spec.from_z(lo - 5.0) == spec.lo
    # A linear parameter's z is its position in the box: the same step means the same fraction of
    # the range whatever the units (seconds here).
    secs = opt.ParamSpec("event_pull_before_s", 0.0, 1800.0, "linear")
    assert secs.z_bounds == (0.0, 1.0) and secs.to_z(900.0) == 0.5 and secs.from_z(0.1) == pytest.approx(180.0)
    with pytest.raises(ValueError, match="lo > 0"):
        opt.ParamSpec("gamma", 0.0, 1.0, "log")
    with pytest.raises(ValueError, match="lo < hi"):
        opt.ParamSpec("gamma", 1.0, 0.1)
    with pytest.raises(ValueError, match="transform"):
        opt.ParamSpec("gamma", 0.1, 1.0, "exp")
    specs = opt.param_specs({"gamma": (1e-3, 1.0), "size_fraction": {"lo": 0.01, "hi": 0.5, "transform": "logit"}})
    assert [s.transform for s in specs] == ["log", "logit"]
    with pytest.raises(ValueError, match="starting value"):
        opt.optimize(ToyMarket(), {}, {"gamma": (1e-3, 1.0)})


def test_surrogates_bound_the_indicators_and_tend_to_them():
    rng = np.random.default_rng(0)
    n = 10_000
    mmr = np.exp(rng.normal(0.5, 0.5, n))
    dd = rng.uniform(0, 0.4, n)
    out = opt.PathOutcomes(pnl=np.zeros(n), liquidated=mmr <= 1.0, max_dd_frac=dd, min_margin_ratio=mmr)
    for tau in (0.2, 0.05, 0.01):
        s_liq = opt.liquidation_surrogate(out, tau)
        s_dd = opt.drawdown_surrogate(out, 0.2, tau)
        assert np.all(s_liq >= out.liquidated) and np.all((s_liq >= 0) & (s_liq <= 1))
        assert np.all(s_dd >= (dd > 0.2))
    # Near misses only: the excess over the indicator shrinks with tau, to exactly 0 at tau = 0.
    excess = [opt.liquidation_surrogate(out, t).mean() - out.liquidated.mean() for t in (0.2, 0.05, 0.01, 0.0)]
    assert excess[0] > excess[1] > excess[2] > excess[3] == 0.0
    assert opt.drawdown_surrogate(out, 0.2, 0.0).mean() == np.mean(dd > 0.2)


def test_bounds_and_certification_targets():
    n = 5000
    for k in (0, 1, 7, 40):
        assert risk.cp_upper(k / n, n) == pytest.approx(risk.clopper_pearson(k, n)[1], rel=1e-10)
    assert risk.min_certifiable(n) == pytest.approx(1 - 0.025 ** (1 / n))
    eps = 1e-3
    m = risk.paths_to_certify(eps)
    assert risk.min_certifiable(m) <= eps < risk.min_certifiable(m - 1)
    assert m == 3688 or m == 3689
    k_star = risk.certifiable_count(eps, 20_000)
    assert risk.cp_upper(k_star / 20_000, 20_000) <= eps < risk.cp_upper((k_star + 1) / 20_000, 20_000)
    assert risk.certifiable_count(eps, 1000) == -1
    # With a huge training set the predictive law is Poisson(n_v p): p_beta solves P(K <= k*) = power.
    from scipy import stats

    p = opt.certify_target(eps, 10**9, 20_000, power=0.8)
    assert stats.poisson.cdf(k_star, 20_000 * p) == pytest.approx(0.8, abs=1e-3)
    # A smaller training set is less sure of its estimate: a lower target; more power: lower too.
    assert opt.certify_target(eps, 5000, 20_000) < opt.certify_target(eps, 50_000, 20_000) < eps
    assert opt.certify_target(eps, 20_000, 20_000, power=0.95) < opt.certify_target(eps, 20_000, 20_000, power=0.8)
    assert opt.certify_target(eps, 20_000, 1000) == 0.0


# ------------------------------------------------------------------------------------------------
# The gradient estimator


def test_sphere_directions_are_exact_on_a_quadratic():
    """A full orthogonal block of antithetic pairs recovers the gradient of a quadratic exactly
    (the smoothing adds only a constant), whatever the random rotation."""
    a = np.array([[2.0, 0.5, 0.0], [0.5, 1.0, -0.3], [0.0, -0.3, 3.0]])
    b = np.array([1.0, -2.0, 0.5])
    fn = lambda z: np.array([b @ z - 0.5 * z @ a @ z])  # noqa: E731
    z = np.array([0.3, -0.1, 0.7])
    ge = opt.smoothed_gradient(fn, z, sigma=0.3, n_directions=3, rng=np.random.default_rng(1))
    np.testing.assert_allclose(ge.grad[0], b - a @ z, rtol=1e-10)
    assert ge.n_evals == 7


def test_gradient_estimator_agrees_with_finite_differences(seed):
    """The optimiser's estimator (sphere smoothing, antithetic pairs, common random numbers within
    a call) against central finite differences of the Monte Carlo objective on discrete fills.

    The estimator is repeated on R independent seeds: its mean has standard error sd / sqrt(R),
    which covers both the path noise and the direction noise. The finite difference uses one large
    common-random-number batch; its standard error comes from the per-path differences. For this
    toy both are unbiased for the same gradient (E[PnL] is an exact quadratic), so they must agree
    within 4 joint standard errors (a false alarm has probability ~1e-4 per coordinate)."""
    toy = FillToy()
    theta = {"gamma": 0.01 * math.exp(0.2), "size_fraction": 0.1 * math.exp(-0.3)}
    spec = opt.param_specs({"gamma": (1e-4, 1.0), "size_fraction": (1e-3, 0.9)})
    z = np.array([s.to_z(theta[s.name]) for s in spec])
    objective = opt.Objective()

    def fn_for(s):
        return lambda zz: np.array([objective(toy(space._theta(spec, zz, {}), s, 4000).pnl)])

    reps = 16
    ests, dir_se = [], []
    for r in range(reps):
        ge = opt.smoothed_gradient(fn_for(seed + r), z, sigma=0.2, n_directions=4, rng=np.random.default_rng([seed, r]))
        ests.append(ge.grad[0])
        dir_se.append(ge.se[0])
        assert ge.n_evals == 9
    ests = np.array(ests)
    g_hat, se_hat = ests.mean(0), ests.std(0, ddof=1) / math.sqrt(reps)
    assert np.all(np.isfinite(dir_se))

    h, n_fd = 0.2, 200_000
    fd, se_fd = np.empty(2), np.empty(2)
    for j in range(2):
        e = np.zeros(2)
        e[j] = h
        up = toy(space._theta(spec, z + e, {}), seed + 999, n_fd).pnl
        dn = toy(space._theta(spec, z - e, {}), seed + 999, n_fd).pnl
        d = (up - dn) / (2 * h)
        fd[j], se_fd[j] = d.mean(), d.std(ddof=1) / math.sqrt(n_fd)
    tol = 4.0 * np.sqrt(se_hat**2 + se_fd**2)
    assert np.all(np.abs(g_hat - fd) <= tol), (g_hat, fd, tol)
    # Both against the exact gradient (z = log ratios in FillToy's coordinates).
    exact = toy.grad(*toy.z(theta))
    assert np.all(np.abs(g_hat - exact) <= 4.0 * se_hat + 1e-12), (g_hat, exact, se_hat)
    assert np.all(np.abs(fd - exact) <= 4.0 * se_fd + 1e-12), (fd, exact, se_fd)
    # The estimator is informative: its error is well below the gradient itself.
    assert np.all(se_hat < 0.25 * np.abs(exact))


# ------------------------------------------------------------------------------------------------
# The optimiser finds the known answer


def _fast(**kw):
    base = dict(n_iter=40, n_paths=100_000, seed=3, bound="estimate", tau_liq=0.0, tau_dd=0.0)
    base.update(kw)
    return opt.OptSettings(**base)


@pytest.mark.parametrize("start", [0.002, 0.5])
def test_optimizer_finds_the_liquidation_boundary(start):
    """P(liquidation) binds: the sample optimum is where the training count reaches n epsilon (an
    order statistic of U), and it lies within the binomial noise of the closed form z_liq."""
    toy = ToyMarket()
    eps = 1e-3
    st = _fast(n_iter=60, n_paths=50_000)
    res = opt.optimize(toy, {"gamma": start}, {"gamma": (1e-3, 1.0)}, opt.Constraints(epsilon_liq=eps), settings=st)
    assert res.feasible_in_training and not res.notes
    _, u, _ = toy.draws(st.seed, st.n_paths)
    m = int(round(st.n_paths * eps))  # feasible iff count <= m - 1 (c uses p + 0.01/n)
    p_saa = np.sort(u)[m - 1]  # largest feasible P(liquidation) on these paths
    z_saa = toy.z_ref + math.log(toy.p_ref / p_saa) / toy.k
    z = math.log(res.theta["gamma"])
    assert 0.0 <= z - z_saa <= 0.03, (z, z_saa)
    # Sample vs population boundary: sd(log p_hat) = 1 / sqrt(n eps), divided by k in z.
    assert abs(z_saa - toy.z_liq(eps)) <= 4.0 / (toy.k * math.sqrt(st.n_paths * eps))
    tr = res.trace_arrays()
    assert tr["p_liq"][res.selected_iter] <= eps
    se = toy.sd / math.sqrt(st.n_paths)
    assert res.trace[res.selected_iter]["objective"] == pytest.approx(toy.mean(z), abs=4 * se)


def test_optimizer_finds_the_drawdown_boundary():
    """The drawdown constraint binds (z_dd > z_liq): the answer is V's order statistic."""
    toy = ToyMarket()
    con = opt.Constraints(epsilon_liq=1e-3, drawdown_threshold=toy.x, epsilon_dd=0.02)
    assert toy.z_dd(con.epsilon_dd) > toy.z_liq(con.epsilon_liq)
    st = _fast(n_paths=40_000)
    res = opt.optimize(toy, {"gamma": 0.01}, {"gamma": (1e-3, 1.0)}, con, settings=st)
    assert res.feasible_in_training
    _, _, v = toy.draws(st.seed, st.n_paths)
    m = int(round(st.n_paths * con.epsilon_dd))
    q_saa = np.sort(v)[m - 1]
    z_saa = toy.z_ref + math.log(toy.q_ref / q_saa) / toy.k_dd
    z = math.log(res.theta["gamma"])
    assert 0.0 <= z - z_saa <= 0.03, (z, z_saa)
    assert abs(z_saa - toy.z_dd(con.epsilon_dd)) <= 4.0 / (toy.k_dd * math.sqrt(st.n_paths * con.epsilon_dd))


def test_optimizer_finds_an_interior_optimum():
    """Constraints slack at the PnL maximum: the answer is z_pnl (up to the selection rule, which
    among iterates within select_tol standard errors of the best objective takes the safest, here
    the largest gamma: |z - z_pnl| <= sqrt(select_tol se / b)) and the multipliers vanish."""
    toy = ToyMarket(z_pnl=math.log(0.2))
    eps = 1e-3
    assert toy.z_pnl > toy.z_liq(eps) + 0.5
    st = _fast(n_paths=20_000, n_iter=50)
    res = opt.optimize(toy, {"gamma": 0.02}, {"gamma": (1e-3, 1.0)}, opt.Constraints(epsilon_liq=eps), settings=st)
    se = toy.sd / math.sqrt(st.n_paths)
    z = math.log(res.theta["gamma"])
    assert abs(z - toy.z_pnl) <= math.sqrt(st.select_tol * se / toy.b) + 0.02
    assert toy.mean(z) >= toy.a - st.select_tol * se - 1e-3
    assert res.lambdas["liq"] == 0.0
    exact = opt.optimize(
        toy,
        {"gamma": 0.02},
        {"gamma": (1e-3, 1.0)},
        opt.Constraints(epsilon_liq=eps),
        settings=dataclasses.replace(st, select_tol=0.0),
    )
    assert abs(math.log(exact.theta["gamma"]) - toy.z_pnl) <= 0.02


def test_optimizer_stops_when_pinned_at_a_bound():
    """patience: the toy's mean peaks above the box, so from its upper bound every step points out
    and the iterate never moves; the run stops after `patience` still iterations (and says so),
    with the same answer as the full run; patience 0 runs every iteration."""
    toy = ToyMarket(z_pnl=math.log(100.0))
    con = opt.Constraints(epsilon_liq=1e-3)
    st = _fast(n_paths=5_000, n_iter=12)
    full = opt.optimize(toy, {"gamma": 1.0}, {"gamma": (1e-3, 1.0)}, con, settings=st)
    early = opt.optimize(toy, {"gamma": 1.0}, {"gamma": (1e-3, 1.0)}, con, settings=dataclasses.replace(st, patience=3))
    assert len(full.trace) == st.n_iter + 1 and not full.notes
    assert len(early.trace) == 3 and early.theta == full.theta == {"gamma": 1.0}
    assert any("has not moved for 3 iterations" in n for n in early.notes)
    assert early.n_evals < full.n_evals / 3
    with pytest.raises(ValueError, match="patience"):
        dataclasses.replace(st, patience=-1)


def test_optimizer_with_cvar_objective_and_two_parameters():
    """E[PnL] - lambda CVaR over (gamma, size_fraction). The PnL gains a separable term
    -(logit s - logit 0.1)^2 in the size fraction s, and CVaR of a shifted normal is -mean + const,
    so the objective is (1 + lambda) E[PnL] + const: the answer is (z_liq, 0.1)."""
    toy = ToyMarket()
    lo = math.log(0.1 / 0.9)

    def ev(theta, seed, n):
        out = toy({"gamma": theta["gamma"]}, seed, n)
        s = theta["size_fraction"]
        return out._replace(pnl=out.pnl - (math.log(s / (1 - s)) - lo) ** 2)

    st = _fast(n_paths=50_000, n_iter=60)
    res = opt.optimize(
        ev,
        {"gamma": 0.01, "size_fraction": 0.3},
        {"gamma": (1e-3, 1.0), "size_fraction": (0.01, 0.5, "logit")},
        opt.Constraints(epsilon_liq=1e-3),
        objective=opt.Objective("mean_cvar", 0.1),
        settings=st,
    )
    assert res.feasible_in_training
    assert abs(math.log(res.theta["gamma"]) - toy.z_liq(1e-3)) <= 4.0 / (toy.k * math.sqrt(st.n_paths * 1e-3))
    s = res.theta["size_fraction"]
    assert abs(math.log(s / (1 - s)) - lo) <= 0.1


# ------------------------------------------------------------------------------------------------
# Validation, feasibility and the frontier


def test_constraint_holds_on_fresh_validation_paths():
    """Trained with the default "certify" bound at power 0.99, the chosen gamma's P(liquidation)
    is certified <= epsilon on fresh paths (the predictive failure probability is ~1 %)."""
    toy = ToyMarket()
    con = opt.Constraints(epsilon_liq=1e-3)
    st = opt.OptSettings(n_iter=40, n_paths=20_000, seed=11, n_certify=20_000, certify_power=0.99)
    res = opt.optimize(toy, {"gamma": 0.01}, {"gamma": (1e-3, 1.0)}, con, settings=st)
    v = opt.validate(toy, res.theta, con, seed=12, n_paths=20_000, train_seed=st.seed, train_paths=st.n_paths)
    assert v["feasible"] and v["p_liquidation"]["ci_high"] <= con.epsilon_liq
    assert v["p_liquidation"] == {
        k: risk.proportion(toy(res.theta, 12, 20_000).liquidated)[k] for k in ("count", "estimate", "ci_low", "ci_high")
    }
    with pytest.raises(ValueError, match="fresh paths"):
        opt.validate(toy, res.theta, con, seed=st.seed, n_paths=20_000, train_seed=st.seed)
    with pytest.raises(ValueError, match="at least as many"):
        opt.validate(toy, res.theta, con, seed=12, n_paths=1000, train_paths=st.n_paths)


def test_optimum_within_two_percent_of_best_feasible_grid_point():
    """The full pipeline (optimise, validate, grid on the validation paths): the optimiser's
    validated objective is within 2 % of the best feasible grid objective."""
    toy = ToyMarket(b=0.02)
    con = opt.Constraints(epsilon_liq=1e-3)
    opts = {
        "settings": opt.OptSettings(n_iter=40, n_paths=20_000, seed=21, n_certify=20_000),
        "constraints": con,
        "objective": opt.Objective(),
        "specs": opt.param_specs({"gamma": (1e-3, 1.0)}),
        "seed_validation": 22,
        "n_paths_validation": 20_000,
        "frontier": {"param": "gamma", "values": np.geomspace(0.01, 0.5, 41).tolist()},
    }
    r = opt.run(toy, {"gamma": 0.01}, opts, log=lambda s: None)
    fr = r["frontier"]
    assert fr.best_feasible is not None and fr.n_paths == 20_000 and fr.seed == 22
    best = fr.points[fr.best_feasible]
    assert all(p["p_liquidation"]["ci_high"] <= con.epsilon_liq for p in fr.points if p["feasible"])
    assert r["comparison"]["within_2pct"], r["comparison"]
    assert r["validation"]["objective"] >= best["objective"] - 0.02 * abs(best["objective"])
    assert r["feasible"] == r["selected_validation"]["feasible"]


def test_feasibility_only_from_the_upper_bound():
    con = opt.Constraints(epsilon_liq=1e-3)
    n = 20_000
    # 12 events: estimate 6e-4 < epsilon, but the upper bound ~1.05e-3 > epsilon -> not feasible.
    liq = np.zeros(n, bool)
    liq[:12] = True
    out = opt.PathOutcomes(pnl=np.ones(n), liquidated=liq, max_dd_frac=np.zeros(n), min_margin_ratio=np.full(n, 5.0))
    v = opt.assess(out, con)
    assert v["p_liquidation"]["estimate"] < con.epsilon_liq < v["p_liquidation"]["ci_high"]
    assert not v["feasible"] and v["certifiable"]
    assert opt.certification_message(v, con).startswith("infeasible")
    liq[11] = False
    assert opt.assess(out._replace(liquidated=liq), con)["feasible"]
    # 0 events on 1000 paths: the bound 3.7e-3 cannot reach 1e-3 -> "not certifiable", never feasible.
    small = opt.PathOutcomes(
        pnl=np.ones(1000),
        liquidated=np.zeros(1000, bool),
        max_dd_frac=np.zeros(1000),
        min_margin_ratio=np.full(1000, 5.0),
    )
    v = opt.assess(small, con)
    assert not v["feasible"] and not v["certifiable"]
    msg = opt.certification_message(v, con)
    assert "not certifiable" in msg and str(risk.paths_to_certify(1e-3)) in msg
    # The drawdown constraint counts too.
    con_dd = opt.Constraints(epsilon_liq=1e-3, drawdown_threshold=0.1, epsilon_dd=1e-3)
    dd = np.zeros(n)
    dd[:30] = 0.5
    assert not opt.assess(out._replace(liquidated=np.zeros(n, bool), max_dd_frac=dd), con_dd)["feasible"]


def test_training_too_small_to_certify_is_said_and_safest_reported():
    """epsilon below what the validation can certify: the optimiser says so, validation is never
    declared feasible, and the safest parameters evaluated are reported."""
    toy = ToyMarket()
    con = opt.Constraints(epsilon_liq=1e-3)
    opts = {
        "settings": opt.OptSettings(n_iter=10, n_paths=1000, seed=31, n_certify=1000),
        "constraints": con,
        "objective": opt.Objective(),
        "specs": opt.param_specs({"gamma": (1e-3, 1.0)}),
        "seed_validation": 32,
        "n_paths_validation": 1000,
        "frontier": {"param": "gamma", "values": [0.01, 0.1, 1.0]},
    }
    r = opt.run(toy, {"gamma": 0.01}, opts, log=lambda s: None)
    assert any("certify" in n for n in r["result"].notes)
    assert not r["feasible"] and r["selected"] == "safest"
    assert "not certifiable" in r["message"]
    safest = r["selected_validation"]
    cands = [r["validation"]] + r["frontier"].points
    assert safest["p_liquidation"]["ci_high"] == min(c["p_liquidation"]["ci_high"] for c in cands)


# ------------------------------------------------------------------------------------------------
# best.yaml, config, figures


def test_best_yaml_round_trips(tmp_path):
    from mmsim import config as mcfg
    from mmsim.engine.policy import PolicyParams

    pol = opt.policy_dict(PolicyParams(kind="spec"), {"gamma": 0.0123456789012345, "size_fraction": 0.07})
    assert set(pol) == {f for f in PolicyParams.__dataclass_fields__} and pol["kind"] == "spec"
    con = opt.Constraints(epsilon_liq=1e-3, drawdown_threshold=0.5, epsilon_dd=0.01)
    toy = ToyMarket()
    v = opt.validate(toy, {"gamma": 0.1}, con, seed=5, n_paths=5000)
    market = {"world": "market", "price": {"s0": 28146.0, "jump_std": 3.87e-3}, "vol": {"theta": [1e-9, 2e-9]}}
    account = {"leverage": 50.0, "initial_equity": 10000.0}
    path = opt.write_best_yaml(tmp_path / "best.yaml", pol, market, con, v, v["feasible"], account=account)
    raw = yaml.safe_load(path.read_text())
    assert list(raw) == list(mcfg.BEST_KEYS)
    assert raw["policy"] == pol and raw["market"] == market and raw["account"] == account
    assert raw["constraints"] == {"epsilon_liq": 1e-3, "drawdown_threshold": 0.5, "epsilon_dd": 0.01}
    assert raw["validation"]["p_liquidation"] == v["p_liquidation"]
    assert raw["validation"]["p_drawdown"] == v["p_drawdown"]
    assert raw["validation"]["seed"] == 5 and raw["validation"]["n_paths"] == 5000
    assert raw["validation"]["objective"] == v["objective"] and raw["feasible"] == v["feasible"]
    assert opt.load_best_yaml(path) == raw
    # The config loader accepts it and the policy builds.
    best = mcfg.load_best(path)
    assert PolicyParams(**best["policy"]).gamma == 0.0123456789012345


def test_settings_from_config_and_errors():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["experiment=optimize_gamma"])
        bad = compose(config_name="config", overrides=["experiment=optimize_gamma", "+optimize.n_pahts=3"])
        same = compose(config_name="config", overrides=["experiment=optimize_gamma", "optimize.seed_validation=1"])
    o = opt.settings_from_config(cfg)
    assert cfg.account.leverage == 50.0 and cfg.name == "optimize_gamma"  # the cascade-stress market
    assert o["constraints"].epsilon_liq == 1e-3 and o["constraints"].alpha == pytest.approx(0.05)
    assert o["settings"].n_certify == o["n_paths_validation"] >= o["settings"].n_paths
    assert o["seed_validation"] != o["settings"].seed
    assert [s.name for s in o["specs"]] == ["gamma"] and o["frontier"]["param"] == "gamma"
    assert risk.min_certifiable(o["n_paths_validation"]) <= o["constraints"].epsilon_liq
    with pytest.raises(ValueError, match="n_pahts"):
        opt.settings_from_config(bad)
    with pytest.raises(ValueError, match="fresh paths"):
        opt.settings_from_config(same)


def test_run_from_config_writes_outputs(tmp_path):
    """The optimize task end to end on the toy evaluator: files, schema, figures."""
    from hydra import compose, initialize_config_dir

    from mmsim import config as mcfg

    ov = [
        "experiment=optimize_gamma",
        "optimize.n_iter=8",
        "optimize.n_paths_train=4000",
        "optimize.n_paths_validation=8000",
        "optimize.frontier.values=[0.01,0.05,0.1,0.3]",
    ]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=ov)
    s = opt.run_from_config(cfg, tmp_path, evaluate=ToyMarket(), log=lambda m: None)
    for f in ("best.yaml", "optimize.json", "optimize.md", "optimize_frontier.png", "optimize_trace.png"):
        assert (tmp_path / f).stat().st_size > 0, f
    best = mcfg.load_best(tmp_path / "best.yaml")
    assert best["market"]["liquidation"]["beta"] == 0.05 and best["constraints"]["epsilon_dd"] == 0.01
    assert best["validation"]["n_paths"] == 8000 and best["validation"]["seed"] == 2
    assert best["feasible"] == s["feasible"] == s["selected_validation"]["feasible"]
    assert best["policy"]["gamma"] == pytest.approx(s["selected_validation"]["theta"]["gamma"])
    assert best["account"]["leverage"] == 50.0 == cfg.account.leverage  # the account it was validated with
    assert set(best["account"]) == {f.name for f in dataclasses.fields(mcfg.account_params(cfg))}
    assert len(s["frontier"]["points"]) == 4


def test_start_from_the_frontier_grid():
    """optimize.start = frontier: the grid is evaluated on the training paths first and the
    optimiser starts at its best feasible point (here gamma = 1, where the toy's mean peaks, far
    from the configured 0.01); "config" starts at the configured value; bad values are errors."""
    from hydra import compose, initialize_config_dir

    ov = [
        "experiment=optimize_gamma",
        "optimize.n_iter=2",
        "optimize.n_paths_train=4000",
        "optimize.n_paths_validation=8000",
        "optimize.frontier.values=[0.01,0.1,1.0,3.0]",
    ]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        grid = opt.settings_from_config(compose(config_name="config", overrides=[*ov, "optimize.start=frontier"]))
        conf = opt.settings_from_config(compose(config_name="config", overrides=[*ov, "optimize.start=config"]))
        bad = compose(config_name="config", overrides=[*ov, "optimize.start=anywhere"])
        no_grid = compose(
            config_name="config", overrides=[*ov, "optimize.start=frontier", "optimize.frontier.param=null"]
        )
    toy = ToyMarket(z_pnl=math.log(1.0))
    r = opt.run(toy, {"gamma": 0.01}, grid, log=lambda m: None)
    assert r["start"] == {"gamma": 1.0} and r["result"].trace[0]["theta"]["gamma"] == 1.0
    sg = r["start_grid"]
    assert (sg.seed, sg.n_paths) == (grid["settings"].seed, grid["settings"].n_paths)  # training paths
    assert [p["theta"]["gamma"] for p in sg.points] == [0.01, 0.1, 1.0, 3.0]
    assert sg.points[sg.best_feasible]["theta"]["gamma"] == 1.0
    r0 = opt.run(toy, {"gamma": 0.01}, conf, log=lambda m: None)
    assert r0["start"] == {"gamma": 0.01} and r0["start_grid"] is None
    assert r0["result"].trace[0]["theta"]["gamma"] == pytest.approx(0.01)
    with pytest.raises(ValueError, match="optimize.start = 'anywhere'"):
        opt.settings_from_config(bad)
    with pytest.raises(ValueError, match="needs optimize.frontier.param"):
        opt.settings_from_config(no_grid)


# ------------------------------------------------------------------------------------------------
# The real simulator, tiny


_AS_THIN = [
    "experiment=as2008",
    "sim.horizon_s=0.1",
    "account.initial_equity=10.0",
    "account.leverage=10.0",
    "account.maintenance_margin=0.09",
    "+optimize.n_iter=2",
    "+optimize.n_paths_train=128",
    "+optimize.n_paths_validation=128",
    "+optimize.seed_train=1",
    "+optimize.seed_validation=2",
    "+optimize.epsilon_liq=0.05",
    "+optimize.frontier.values=[0.01,1.0]",
    "+optimize.params.gamma.lo=0.001",
    "+optimize.params.gamma.hi=10.0",
]


def _as_thin_cfg(*extra):
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*_AS_THIN, *extra])
    with open_dict(cfg):
        cfg.task = "optimize"
    return cfg


def test_the_result_is_certified_by_the_rare_event_estimator(tmp_path):
    """risk.estimator = splitting: the reported parameters' P(liquidation) is estimated by
    splitting on the validation seed, and feasibility follows its interval (the plain validation
    stays beside it); best.yaml and optimize.md carry the certificate."""
    import jax.numpy as jnp

    from mmsim import config as mcfg
    from mmsim.sim import rare
    from mmsim.sim import simulate as sim

    split = ["risk.estimator=splitting", "risk.splitting.n_paths=64", "risk.splitting.replicates=2"]
    cfg = _as_thin_cfg(*split, "risk.splitting.pilot_paths=64", "risk.splitting.stage_p=0.3")
    s = opt.run_from_config(cfg, tmp_path, log=lambda m: None)
    est = s["rare_event"]
    assert est["method"] == "multilevel splitting" and est["replicates"] == 2 and est["estimate"] > 0
    ok, why = rare.certifies(est, 0.05)
    assert est["certified"] == ok and est["why"] == why
    v = s["selected_validation"]
    con = opt.settings_from_config(cfg)["constraints"]
    ok_dd = not con.has_dd or v["p_drawdown"]["ci_high"] <= con.epsilon_dd
    assert s["feasible"] == (ok and ok_dd)
    assert "By multilevel splitting, P(liquidation) = " in s["message"]
    best = mcfg.load_best(tmp_path / "best.yaml")
    cert = best["validation"]["p_liquidation_rare_event"]
    assert cert["method"] == "multilevel splitting" and cert["estimate"] == pytest.approx(est["estimate"])
    assert best["feasible"] == s["feasible"]
    assert "P(liquidation) by multilevel splitting" in (tmp_path / "optimize.md").read_text()
    # The estimate is the splitting run of the reported gamma on the validation seed.
    world, mp, ep, st = mcfg.build(_as_risk_task(cfg))
    ep = dataclasses.replace(ep, policy=dataclasses.replace(ep.policy, gamma=v["theta"]["gamma"]))
    direct = sim.split(
        world, mp, ep, levels="auto", n_paths=64, replicates=2, pilot_paths=64, stage_p=0.3,
        n_steps=st.n_steps, dt=st.dt, seed=2, dtype=getattr(jnp, st.dtype),
        world_substeps=st.world_substeps,
    )  # fmt: skip
    assert direct["estimate"] == pytest.approx(est["estimate"], rel=1e-12)
    # An epsilon below what 128 plain paths can certify (3.7 / 128): the plain validation alone
    # would report the safest grid point; with the estimator the optimiser's parameters stay.
    cfg = _as_thin_cfg(
        *split, "risk.splitting.pilot_paths=64", "risk.splitting.stage_p=0.3", "optimize.epsilon_liq=0.01"
    )
    s = opt.run_from_config(cfg, tmp_path / "low", log=lambda m: None)
    assert not s["validation"]["certifiable"] and s["selected"] == "optimum"
    assert s["selected_validation"]["theta"] == s["validation"]["theta"]
    assert s["rare_event"]["certified"] == rare.certifies(s["rare_event"], 0.01)[0]


def test_end_to_end_with_the_simulator(tmp_path):
    """A few paths and steps of the Avellaneda-Stoikov world with a thin margin (maintenance
    margin 9 % at 10x, 10 units of equity), so liquidations and near misses occur: the task runs,
    writes a best.yaml the config loader accepts, and the validation counts are those of a direct
    simulation with the chosen gamma and the validation seed."""
    import jax.numpy as jnp

    from mmsim import config as mcfg
    from mmsim.sim import simulate as sim

    cfg = _as_thin_cfg()
    s = opt.run_from_config(cfg, tmp_path, log=lambda m: None)
    assert s["simulation"]["calls"] == s["optimum"]["n_evals"] + 1 + 2
    best = mcfg.load_best(tmp_path / "best.yaml")
    assert best["policy"]["kind"] == "as2008"
    v = s["selected_validation"]
    world, mp, ep, st = mcfg.build(_as_risk_task(cfg))
    ep = dataclasses.replace(ep, policy=dataclasses.replace(ep.policy, gamma=v["theta"]["gamma"]))
    r = sim.simulate(
        world, mp, ep, n_paths=128, n_steps=st.n_steps, dt=st.dt, seed=2, dtype=jnp.float64, progress=False
    )
    assert v["p_liquidation"]["count"] == int(np.sum(r.summary.liquidated))
    assert v["objective"] == pytest.approx(float(np.mean(r.summary.pnl)), rel=1e-12)


def _as_risk_task(cfg):
    """The same config as a plain risk run (what mmsim.config.build accepts)."""
    from omegaconf import OmegaConf

    plain = OmegaConf.to_container(cfg, resolve=True)
    plain["task"] = "risk"
    plain.pop("optimize", None)
    return OmegaConf.create(plain)


def test_main_composes_the_experiment(monkeypatch, tmp_path):
    """``mmsim optimize [out_dir=...] [overrides]``: experiment=optimize_gamma unless another is given."""
    seen = {}
    monkeypatch.setattr(opt.task, "run_from_config", lambda cfg, out: seen.update(cfg=cfg, out=out) or {"ok": True})
    assert opt.task.main([f"out_dir={tmp_path}", "optimize.n_iter=7"]) == {"ok": True}
    assert seen["cfg"].name == "optimize_gamma" and seen["cfg"].optimize.n_iter == 7
    assert str(seen["out"]) == str(tmp_path)
    opt.task.main(["experiment=baseline", f"hydra.run.dir={tmp_path}"])
    assert seen["cfg"].name == "baseline"
