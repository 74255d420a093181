"""Rare-event estimators against the Cramer-Lundberg ruin probability, driven through the account.

The surplus U(t) = u + c t - (claims) marks one long unit (tests/sim/_ruin.py, shared with
test_risk's ruin test), so the account's own liquidation is the ruin; psi(u) = exp(-R u) /
(1 + theta) with the adjustment coefficient R = theta / ((1 + theta) mu). The Lundberg tilt
(arrival rate lam / (1 - R mu), claims of mean mu / (1 - R mu)) is the exponential tilt of the
two Exp(1) variables behind each claim, by eta = -R mu / (1 - R mu) and R mu, and the likelihood
ratio at ruin is exp(-R u + R U(ruin)): the relative error per path is the same at every u
(bounded relative error), sqrt(E[e^{-2 R Y}] / E[e^{-R Y}]^2 - 1) with the undershoot
Y ~ Exp(mean mu / (1 - R mu)).
"""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from mmsim import distributions as dist
from mmsim.sim import rare
from tests.sim._ruin import MU, R, advance, init, psi, run, score, u_for


def test_tilted_uniform_laws():
    # tilt_exp: E / (1 - eta) of the nominal E; its weight averages to 1 under the tilted law.
    u = (np.arange(200_000) + 0.5) / 200_000
    ut, lr, e = dist.tilt_exp(jnp.asarray(u), 0.3)
    np.testing.assert_allclose(np.asarray(e), -np.log1p(-u) / 0.7, rtol=1e-12)
    np.testing.assert_allclose(float(jnp.mean(jnp.exp(lr))), 1.0, atol=2e-3)
    # tilt_event: P(above p0) = 1 - p0^boost, and the weights average to 1.
    p0 = 0.99
    ut, lr = dist.tilt_event(jnp.asarray(u), p0, 5.0)
    np.testing.assert_allclose(float(jnp.mean(ut > p0)), 1 - p0**5, atol=1e-5)
    np.testing.assert_allclose(float(jnp.mean(jnp.exp(lr))), 1.0, atol=1e-9)
    # tilt_normal_score: the score is N(theta, 1), and the weights average to 1.
    ut, lr, z = dist.tilt_normal_score(jnp.asarray(u), 0.5)
    np.testing.assert_allclose(float(jnp.mean(z)), 0.5, atol=1e-4)
    np.testing.assert_allclose(float(jnp.mean(jnp.exp(lr))), 1.0, atol=2e-3)
    # Boost 1 and eta 0 are the nominal law, weight 1.
    ut, lr = dist.tilt_event(jnp.asarray(u), p0, 1.0)
    np.testing.assert_allclose(np.asarray(ut), u, rtol=1e-12)
    assert float(jnp.max(jnp.abs(lr))) < 1e-12


def test_importance_sampling_ruin_bounded_relative_error():
    """psi at 1e-2, 1e-4 and 1e-6 within the estimate's interval, and the same relative error
    per path at each (the exact value, 0.204, within the sampling error of its estimate)."""
    y_mean = MU / (1 - R * MU)
    m1, m2 = 1 / (1 + R * y_mean), 1 / (1 + 2 * R * y_mean)
    rel_exact = math.sqrt(m2 / m1**2 - 1)
    rels = []
    for j, p in enumerate((1e-2, 1e-4, 1e-6)):
        u = u_for(p)
        hit, lw = run(u, 2000, 800, seed=10 + j)
        est = rare.is_estimate(np.asarray(hit), np.asarray(lw), alpha=1e-4)
        assert est["hits"] >= 1990  # ruin is (nearly) certain under the Lundberg tilt
        assert est["ci_low"] <= psi(u) <= est["ci_high"], (p, est)
        assert est["boot_low"] <= psi(u) <= est["boot_high"], (p, est)  # the Poisson bootstrap agrees
        assert est["vrf"] > 0.1 / p  # plain Monte Carlo needs ~1/(p rel^2) paths for the same error
        rels.append(est["rel_err_per_path"])
    # sd of a sample sd at n = 2000 of this (light-tailed) weight: ~ 2.5 % of it; 4 SE = 10 %.
    np.testing.assert_allclose(rels, rel_exact, rtol=0.10)


def test_splitting_ruin():
    """Fixed-effort splitting on the surplus, no tilt, against psi = 1e-3."""
    u = u_for(1e-3)
    levels = [u - 5.0 * k for k in range(1, 7)]  # 28.4 .. 3.4, then the ruin
    out = rare.split(
        init(u), advance(False), score, levels=levels, n_paths=500, n_steps=600, seed=3, replicates=8,
        mark=lambda c: c[1].liq_time, mark_at=[0.0, 100.0, np.inf],
    )  # fmt: skip
    assert out["ci_low"] <= psi(u) <= out["ci_high"], out
    # P(ruin by time x): none at once, all of the estimate by x = inf (the same hits), between.
    c = out["curve"]
    assert c["estimate"][0] == 0.0 and c["estimate"][2] == pytest.approx(out["estimate"], rel=1e-12)
    assert 0.0 < c["estimate"][1] < c["estimate"][2] and c["ci_high"][2] == pytest.approx(out["ci_high"])
    assert 0.25 < out["stage_p"][0] < 0.5  # each stage ~ e^{-R 5} = 0.37
    # The t-interval of 8 replicates: at 4 SE the estimate is within ~ 4 se of psi.
    assert abs(out["estimate"] - psi(u)) < 4 * out["se"]


def test_estimators_refuse_zero_hits_and_bad_input():
    out = rare.is_estimate(np.zeros(100, bool), np.zeros(100))
    assert out["estimate"] == 0.0 and out["ci_high"] is None and "nothing" in out["note"]
    with pytest.raises(ValueError, match="log_w"):
        rare.is_estimate(np.ones(3, bool), np.array([0.0, np.nan, 0.0]))
    with pytest.raises(ValueError, match="levels"):
        rare.split(init(5.0), advance(False), score, levels=[1.0, 2.0], n_paths=4, n_steps=2, seed=0)
    out = rare.split(init(50.0), advance(False), score, levels=[45.0], n_paths=8, n_steps=3, seed=0, replicates=2)
    assert out["estimate"] == 0.0 and out["ci_high"] is None and "nothing" in out["note"]


def test_splitting_pilot_levels():
    """Levels chosen by a pilot (its own draws) keep the estimate on psi = 1e-2."""
    u = u_for(1e-2)
    out = rare.split(
        init(u),
        advance(False),
        score,
        levels="auto",
        n_paths=400,
        n_steps=500,
        seed=5,
        replicates=8,
        pilot_paths=400,
        stage_p=0.3,
        floor=0.0,
    )
    assert 2 <= len(out["levels"]) <= 8 and out["levels"][0] < u and "pilot" in out
    assert out["ci_low"] <= psi(u) <= out["ci_high"], out


def test_certification_needs_hits_an_upper_end_and_an_effective_sample():
    few = rare.is_estimate(np.r_[np.ones(3, bool), np.zeros(10_000, bool)], np.full(10_003, -12.0))
    assert few["ess"] == pytest.approx(3.0) and not rare.certifies(few, 1e-3)[0]  # 3 equal weights
    many = rare.is_estimate(np.r_[np.ones(50, bool), np.zeros(10_000, bool)], np.full(10_050, -12.0))
    ok, why = rare.certifies(many, 1e-6)
    assert ok and many["ci_high"] <= 1e-6, why
    assert not rare.certifies(many, 1e-9)[0]
    assert rare.certifies({"method": "multilevel splitting", "ci_high": None}, 1.0) == (
        False,
        "no path reached the event",
    )


def test_cross_entropy_tilt_is_the_elites_estimate_in_each_time_bucket():
    # Four paths, two buckets; the elite (half of them: the path with the event, 3, and the
    # lowest score of the others, path 0) gives every field its closed form, bucket by bucket.
    st = np.zeros((4, 2, 13))
    st[0, 0] = [2, 1, 4, 1, 2, -3, 10, 2, 10, 3, 20, 1, 10]  # bucket 0 of path 0
    st[3, 0] = [2, 1, 4, 3, 2, -1, 10, 0, 10, 1, 20, 1, 10]
    st[0, 1] = [0, 1, 0, 0, 1, 5, 10, -1, 10, 0, 0, -2, 10]
    st[3, 1] = [0, 1, 0, 0, 1, 1, 10, -1, 10, 0, 0, 0, 10]
    st[1:3] = 100.0  # outside the elite
    out = rare.cross_entropy_tilt([0.1, 5.0, 6.0, 9.0], [False, False, False, True], np.zeros(4), st, elite_frac=0.5)
    t = out["tilt"]
    assert out["elite"] == 2 and out["level"] == pytest.approx(0.1)
    np.testing.assert_allclose(t["liq_count"], [2.0, 1.0])  # 4 events / 2 compensated; none
    np.testing.assert_allclose(t["liq_size"], [0.5, 0.0])  # 1 - 4 / 8
    np.testing.assert_allclose(t["jump_count"], [1.0 * 4 / 4, 1.0])  # 4 / 4; none
    np.testing.assert_allclose(t["price_drift"], [-0.2, 0.25])  # -4 / 20; 6 / 20 capped at 0.25
    np.testing.assert_allclose(t["flow_imbalance"], [0.1, -0.1])
    np.testing.assert_allclose(t["liq_busy"], [0.1, 0.0])  # 4 / 40; no busy side
    np.testing.assert_allclose(t["var_drift"], [0.1, -0.1])
    # One bucket: numbers, not lists.
    one = rare.cross_entropy_tilt(
        [0.1, 5.0, 6.0, 9.0], [False, False, False, True], np.zeros(4), st[:, 0], elite_frac=0.5
    )
    assert one["tilt"]["liq_count"] == 2.0 and one["tilt"]["price_drift"] == pytest.approx(-0.2)
