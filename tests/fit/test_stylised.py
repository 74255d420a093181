"""Stylised facts by hand on a made-up window, and the same code on simulated observations."""

from __future__ import annotations

import numpy as np
import pytest

from mmsim import config
from mmsim.fit import stylised
from mmsim.live import paper
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
    world, mp, _, _ = config.build(config.compose(["experiment=baseline", "market.book.model=tick"]))
    run = lambda **kw: world_only.observations(world, mp, n_paths=3, n_steps=60, dt=1.0, seed=1, **kw)  # noqa: E731
    obs = run()
    assert np.asarray(obs.best_bid).shape == (3, 60, 1)
    probes = (run(probe=0.0), run(probe=10.0))
    f = stylised.facts(stylised.window_from_observations(obs, 1.0, 0.1, path=2, probes=probes))
    assert f["n"] == 59 and all(np.isfinite(v) for v in f.values()), f
    assert 0.0 <= f["unchanged_mid"] <= 1.0 and f["volume_per_s"] > 0
    assert 0.0 <= f["fill_prob_10_behind"] <= f["fill_prob_touch"] <= 1.0
    again = run()
    np.testing.assert_array_equal(np.asarray(again.mid), np.asarray(obs.mid))  # a path depends on its seed only
    # A probe does not move the public market (same draws, our order is not in the public book).
    np.testing.assert_array_equal(np.asarray(probes[1].best_bid)[:, :5], np.asarray(obs.best_bid)[:, :5])


def test_sub_steps_merge_into_intervals():
    """Two world steps per interval: counts and volumes summed, the book the interval's last."""
    world, mp, _, _ = config.build(config.compose(["experiment=baseline", "market.book.model=tick"]))
    fine = world_only.observations(world, mp, n_paths=2, n_steps=20, dt=0.5, seed=4)
    merged = world_only.merge(fine, 2)
    np.testing.assert_allclose(
        np.asarray(merged.vol_sell), np.asarray(fine.vol_sell).reshape(2, 10, 2, 1).sum(2), rtol=1e-6
    )
    np.testing.assert_array_equal(np.asarray(merged.best_bid), np.asarray(fine.best_bid)[:, 1::2])
    np.testing.assert_allclose(np.asarray(merged.dt), 1.0)
    direct = world_only.observations(world, mp, n_paths=2, n_steps=10, dt=1.0, seed=4, every=2)
    np.testing.assert_array_equal(np.asarray(direct.best_bid), np.asarray(merged.best_bid))
    with pytest.raises(ValueError, match="every = 0"):
        world_only.observations(world, mp, n_paths=2, n_steps=10, dt=1.0, seed=4, every=0)


def test_block_bootstrap_interval_covers_a_known_share():
    """I.i.d. unchanged-mid indicators with p = 0.7 over 2,000 s: the 95 % interval is about the
    binomial one (half-width 1.96 sqrt(p (1 - p) / n) = 0.020) and contains p."""
    rs = np.random.default_rng(5)
    n = 2001
    moves = np.where(rs.uniform(size=n - 1) < 0.7, 0.0, rs.choice([-0.1, 0.1], n - 1))
    bid = 100.0 + np.concatenate([[0.0], np.cumsum(moves)])
    w = stylised.Window(1.0, 0.1, bid, bid + 0.1, np.ones(n), np.ones(n), np.ones(n))
    lo, hi = stylised.interval(w, block_s=10.0, n_boot=400)["unchanged_mid"]
    assert lo < 0.7 < hi
    assert 0.6 * 0.040 < hi - lo < 1.5 * 0.040


def test_paper_probe_on_a_hand_made_feed():
    """A probe at the back of a 1.0 touch fills when sells beyond 1.0 trade at its price or any
    trade goes through; 10 ticks behind only through."""
    from types import SimpleNamespace

    feed = SimpleNamespace(
        t=np.array([1.0, 2.0, 3.0, 4.0]),
        best_bid=np.full(4, 100.0),
        best_ask=np.full(4, 100.1),
        bid_size=np.full(4, 1.0),
        ask_size=np.full(4, 1.0),
        # interval 0 (trades of t 1 -> 2): 0.5 sold at 100.0; interval 1: 1.5 sold at 100.0;
        # interval 2: a sell at 98.9 (through 10 ticks behind), none at the ask.
        trade_price=np.array([100.0, 100.0, 98.9]),
        trade_qty=np.array([0.5, 1.5, 0.1]),
        trade_side=np.array([-1, -1, -1]),
        trade_start=np.array([0, 0, 1, 2, 3]),
    )
    touch = paper.probe(feed, 0, 0.1)
    behind = paper.probe(feed, 10, 0.1)
    np.testing.assert_array_equal(touch, [[False, False], [True, False], [True, False]])
    np.testing.assert_array_equal(behind, [[False, False], [False, False], [True, False]])
