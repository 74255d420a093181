"""The tilted world: a neutral tilt is the nominal world, and under a real tilt the likelihood
ratios make the tilted paths estimate the nominal law (mean weight 1; a nominal mean matched).

Importance sampling's estimates against exact values (the Cramer-Lundberg ruin probability)
are in tests/sim/test_rare.py."""

import dataclasses

import numpy as np
import pytest

from mmsim import config
from mmsim.sim import simulate as sim
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
    assert t.tilt_stats[:, 3].mean() > 2 * expected_jumps + 4 * np.sqrt(3 * expected_jumps / N)
    nominal = _run(world, None, 3)
    # ... and the weights bring the PnL's mean back to the nominal one.
    y = w * t.pnl
    se = np.hypot(y.std(ddof=1), nominal.pnl.std(ddof=1)) / np.sqrt(N)
    assert abs(y.mean() - nominal.pnl.mean()) < 4 * se, (y.mean(), nominal.pnl.mean(), se)
