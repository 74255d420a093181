"""Stylised facts by hand on a made-up window, and the same code on simulated observations."""

from __future__ import annotations

import numpy as np
import pytest

from mmsim import config
from mmsim.fit import stylised
from mmsim.sim import world_only


def test_facts_of_a_hand_made_window():
    # mid: 100.05, 100.05, 100.15, 100.15, 100.05 (a 0.1 grid): 2 of 4 intervals unchanged.
    bid = np.array([100.0, 100.0, 100.1, 100.1, 100.0])
    w = stylised.Window(
        dt=1.0,
        tick=0.1,
        bid=bid,
        ask=bid + 0.1,
        bid_size=np.array([1.0, 2, 3, 4, 5]),
        vol_buy=np.array([0.0, 0, 1, 0, 0]),
        vol_sell=np.array([0.0, 2, 0, 0, 3]),
    )
    f = stylised.facts(w)
    assert f["unchanged_mid"] == 0.5 and f["n"] == 4
    assert f["bid_falls_with_sells"] == 0.25  # the last interval: sells and the bid falls 100.1 -> 100.0
    assert f["touch_depth_median"] == 3.0
    assert f["volume_per_s"] == pytest.approx(6.0 / 5.0)
    r = np.diff(np.log(bid + 0.05))
    assert f["sigma_per_sqrt_s"] == pytest.approx(np.std(r))
    assert f["return_kurtosis"] == pytest.approx(np.mean((r - r.mean()) ** 4) / np.std(r) ** 4)


def test_a_gaussian_random_walk_has_kurtosis_three_and_a_moving_mid():
    g = np.random.default_rng(0)
    mid = 100 * np.exp(np.cumsum(1e-3 * g.standard_normal(200_001)))
    w = stylised.Window(1.0, 0.0, mid - 1e-3, mid + 1e-3, np.ones_like(mid), np.zeros_like(mid), np.zeros_like(mid))
    f = stylised.facts(w)
    assert f["return_kurtosis"] == pytest.approx(3.0, abs=4 * np.sqrt(24 / 200_000))  # se of the kurtosis
    assert f["unchanged_mid"] == 0.0 and f["sigma_per_sqrt_s"] == pytest.approx(1e-3, rel=0.01)


def test_the_same_code_runs_on_the_simulated_market():
    world, mp, _, _ = config.build(config.compose(["experiment=baseline"]))
    obs = world_only.observations(world, mp, n_paths=3, n_steps=60, dt=1.0, seed=1)
    assert np.asarray(obs.best_bid).shape == (3, 60, 1)
    f = stylised.facts(stylised.window_from_observations(obs, 1.0, 0.1, path=2))
    assert f["n"] == 59 and all(np.isfinite(v) for v in f.values())
    assert 0.0 <= f["unchanged_mid"] <= 1.0 and f["volume_per_s"] > 0
    again = world_only.observations(world, mp, n_paths=3, n_steps=60, dt=1.0, seed=1)
    np.testing.assert_array_equal(np.asarray(again.mid), np.asarray(obs.mid))  # a path depends on its seed only
