"""The tilted world: a neutral tilt is the nominal world, and under a real tilt the likelihood
ratios make the tilted paths estimate the nominal law (mean weight 1; a nominal mean matched).

Importance sampling's estimates against exact values (the Cramer-Lundberg ruin probability)
are in tests/sim/test_rare.py."""

import dataclasses

import numpy as np
import pytest

from mmsim import config
from mmsim.sim import simulate as sim
from mmsim.world import tilt as tilt_mod
from mmsim.world.tilt import TiltParams

N, STEPS = 2048, 300


@pytest.fixture(scope="module")
def world():
    # The stress market with a light engine (symmetric quotes): the world's draws are what matter.
    cfg = config.compose(["experiment=cascade_stress", "engine=lite", "policy=symmetric", "market.shock_time_s=100"])
    w, mp, ep, _ = config.build(cfg)
    return w, mp, ep


def _run(world, tilt, seed):
    w, mp, ep = world
    mp = mp if tilt is None else dataclasses.replace(mp, tilt=tilt)
    return sim.simulate(w, mp, ep, n_paths=N, n_steps=STEPS, dt=1.0, seed=seed, progress=False).summary


def test_neutral_tilt_is_the_nominal_world(world):
    a, b = _run(world, None, 1), _run(world, TiltParams(), 1)
    np.testing.assert_array_equal(a.pnl, b.pnl)
    np.testing.assert_array_equal(a.n_fills, b.n_fills)
    assert np.max(np.abs(b.log_w_full)) < 1e-9 and not np.any(a.log_w)


def test_tilted_paths_estimate_the_nominal_law(world):
    tilt = TiltParams(liq_count=2.0, liq_size=0.2, jump_count=3.0, price_drift=-0.03, flow_imbalance=0.02)
    t = _run(world, tilt, 2)
    w = np.exp(t.log_w_full)
    se_w = w.std(ddof=1) / np.sqrt(N)
    assert abs(w.mean() - 1.0) < 4 * se_w and se_w < 0.1  # E_Q[dP/dQ] = 1, and the test has power
    # The tilt moves the paths (jumps 3x as often, a drift down) ...
    expected_jumps = STEPS * float(world[1].price.jump_rate)  # per path, nominal: 0.083
    assert t.tilt_stats[:, 0, 3].mean() > 2 * expected_jumps + 4 * np.sqrt(3 * expected_jumps / N)
    nominal = _run(world, None, 3)
    # ... and the weights bring the PnL's mean back to the nominal one.
    y = w * t.pnl
    se = np.hypot(y.std(ddof=1), nominal.pnl.std(ddof=1)) / np.sqrt(N)
    assert abs(y.mean() - nominal.pnl.mean()) < 4 * se, (y.mean(), nominal.pnl.mean(), se)


def test_a_tilt_by_time_bucket_acts_in_its_bucket_only(world):
    # Three buckets of 100 s: a neutral one is the nominal world, bit for bit ...
    nominal = _run(world, None, 4)
    neutral = _run(world, tilt_mod.neutral(3, 100.0), 4)
    np.testing.assert_array_equal(nominal.pnl, neutral.pnl)
    assert neutral.tilt_stats.shape == (N, 3, 13) and np.max(np.abs(neutral.log_w_full)) < 1e-9
    # ... and a drift of the middle bucket moves that bucket's normals alone, by its value.
    theta = -0.05
    t = _run(world, tilt_mod.from_dict({"price_drift": [0.0, theta, 0.0], "bucket_s": 100.0}), 5)
    zbar = t.tilt_stats[:, :, 5].sum(0) / t.tilt_stats[:, :, 6].sum(0)
    se = 1 / np.sqrt(t.tilt_stats[:, :, 6].sum(0))  # the normals are N(theta, 1), independent
    np.testing.assert_array_less(np.abs(zbar - [0.0, theta, 0.0]), 4 * se)
    w = np.exp(t.log_w_full)
    assert abs(w.mean() - 1.0) < 4 * w.std(ddof=1) / np.sqrt(N)
    # The log ratio is the middle bucket's alone: -theta * sum(z) + n theta^2 / 2 (theta a float32
    # in the world).
    z, n = t.tilt_stats[:, 1, 5], t.tilt_stats[:, 1, 6]
    th = float(np.float32(theta))
    np.testing.assert_allclose(t.log_w_full, -th * z + 0.5 * th**2 * n, rtol=1e-9, atol=1e-9)


def test_a_bucket_keeps_the_rest_of_the_tilt():
    tilt = dataclasses.replace(tilt_mod.neutral(3, 100.0, against_position=True), liq_busy=np.array([0.0, 0.2, 0.0]))
    b, k = tilt_mod.at(tilt, 150.0)
    assert int(k) == 1 and float(b.liq_busy) == 0.2 and b.against_position and float(b.bucket_s) == 100.0


def test_a_bucketed_tilt_is_refused_when_its_shape_is_wrong():
    with pytest.raises(ValueError, match="bucket_s"):
        TiltParams(price_drift=np.array([0.0, 0.1]))
    with pytest.raises(ValueError, match="liq_count"):
        TiltParams(liq_count=np.ones(2), price_drift=np.zeros(3), bucket_s=10.0)
    with pytest.raises(ValueError, match="bucket_s"):
        TiltParams(bucket_s=-1.0)
    from mmsim.world import market

    two = market.default_params(2)
    with pytest.raises(ValueError, match="against_position needs one asset"):
        dataclasses.replace(two, tilt=TiltParams(against_position=True))
    with pytest.raises(ValueError, match="price_drift and var_drift must be 0 with several assets"):
        dataclasses.replace(two, tilt=TiltParams(price_drift=0.1))


def test_a_tilt_against_the_position_follows_its_sign(world):
    # The drift acts against the market maker's position, step by step: the oriented normals
    # (the normal times the sign of the position) have mean theta wherever the position is not
    # flat, and the weights still average 1.
    theta = -0.05
    tilt = dataclasses.replace(tilt_mod.neutral(3, 100.0, against_position=True), price_drift=np.full(3, theta))
    t = _run(world, tilt, 6)
    n = t.tilt_stats[:, :, 6].sum(0)
    assert np.all(n > 0.1 * N * 100)  # the position is not flat (it starts flat: the first bucket least)
    zbar = t.tilt_stats[:, :, 5].sum(0) / n
    np.testing.assert_array_less(np.abs(zbar - theta), 4 / np.sqrt(n))
    w = np.exp(t.log_w_full)
    assert abs(w.mean() - 1.0) < 4 * w.std(ddof=1) / np.sqrt(N)
    # Pushed against its position every step, the market maker loses more than in the nominal world.
    nominal = _run(world, None, 6)
    se = np.hypot(t.pnl.std(ddof=1), nominal.pnl.std(ddof=1)) / np.sqrt(N)
    assert t.pnl.mean() < nominal.pnl.mean() - 4 * se


def test_a_busy_cascade_and_the_variance_are_tilted_through_their_normal_scores(world):
    # After the shock at 100 s the cascade is busy (an expected count of at least 0.05 a step),
    # where the event tilt does not act: liq_busy shifts its count's normal score instead.
    # The variance's normal is shifted in the first bucket (var_drift) at the same time.
    theta, tv = 0.05, 0.1  # a few hundred busy side-steps a path: the log weight's variance about n theta^2
    tilt = dataclasses.replace(
        tilt_mod.neutral(3, 100.0), liq_busy=np.array([0.0, theta, theta]), var_drift=np.array([tv, 0.0, 0.0])
    )
    t = _run(world, tilt, 7)
    n = t.tilt_stats[:, :, 10].sum(0)
    assert n[1] > 0.2 * N * 100 and n[2] > 0  # busy sides, counted in every bucket
    zbar = t.tilt_stats[:, 1:, 9].sum(0) / n[1:]
    np.testing.assert_array_less(np.abs(zbar - theta), 4 / np.sqrt(n[1:]))
    nv = t.tilt_stats[:, :, 12].sum(0)
    np.testing.assert_array_less(np.abs(t.tilt_stats[:, :, 11].sum(0) / nv - [tv, 0.0, 0.0]), 4 / np.sqrt(nv))
    # The log ratio is that of the shifted scores and normals: -theta sum(z) + n theta^2 / 2 each.
    th, thv = float(np.float32(theta)), float(np.float32(tv))
    z, k = t.tilt_stats[:, 1:, 9].sum(1), t.tilt_stats[:, 1:, 10].sum(1)
    zv, kv = t.tilt_stats[:, 0, 11], t.tilt_stats[:, 0, 12]
    lw = -th * z + 0.5 * th**2 * k - thv * zv + 0.5 * thv**2 * kv
    np.testing.assert_allclose(t.log_w_full, lw, rtol=1e-9, atol=1e-9)
    w = np.exp(t.log_w_full)
    assert abs(w.mean() - 1.0) < 4 * w.std(ddof=1) / np.sqrt(N)
