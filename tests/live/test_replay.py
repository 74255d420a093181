"""The live adapter and paper gateway (``mmsim.live``): a hand-made capture cut into observations,
the paper fills on hand-worked cases, a replay through the engine (compiled once, the PnL
identity), and ``mmsim live --replay`` on a real capture when the data directory is present.
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pandas as pd
import pytest

from mmsim import cli, config, live
from mmsim.fit import data
from mmsim.live.replay import packed_explain_step
from mmsim.report import live as live_report


def capture(trades, books, marks=None) -> dict:
    """A capture dict as :func:`mmsim.fit.data.read_capture` returns it (times in epoch seconds)."""
    tr = pd.DataFrame(trades, columns=["time", "price", "qty", "side", "type"])
    tr["local_time"] = tr["time"]
    tr["trade_id"] = np.arange(len(tr), dtype=np.int64)
    tr["side"] = tr["side"].astype(np.int8)
    bk = pd.DataFrame(books, columns=["time", "bid", "bid_qty", "ask", "ask_qty"])
    bk["local_time"] = bk["time"]
    mk = pd.DataFrame(
        marks or [], columns=["time", "mark", "index", "settle_estimate", "funding_rate", "next_funding_time"]
    )
    return {"trades": tr, "book_ticker": bk, "mark_price": mk, "venue": "binance"}


T0 = 1_700_000_000.0


def test_feed_cuts_the_recording_into_observations():
    cap = capture(
        trades=[
            (T0 + 0.2, 100.1, 1.0, 1, "MARKET"),
            (T0 + 0.7, 100.1, 3.0, 1, "MARKET"),
            (T0 + 0.9, 100.0, 2.0, -1, "INSURANCE_FUND"),
            (T0 + 2.5, 99.9, 0.5, -1, "MARKET"),
            (T0 - 1.0, 100.0, 9.0, 1, "MARKET"),
        ],  # before the first book: dropped
        books=[(T0, 100.0, 5.0, 100.1, 4.0), (T0 + 1.5, 99.9, 2.0, 100.0, 1.0), (T0 + 3.0, 99.8, 1.0, 99.9, 1.0)],
        marks=[(T0, 0, 0, 0, 1e-4, T0 + 1.2), (T0 + 1.4, 0, 0, 0, 2e-4, T0 + 100.0)],
    )
    f = live.feed_from_capture(cap, 1.0)
    np.testing.assert_array_equal(f.t, [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(f.best_bid, [100.0, 99.9, 99.8])  # the last book at or before each end
    np.testing.assert_array_equal(f.ask_size, [4.0, 1.0, 1.0])
    np.testing.assert_array_equal(f.n_buy, [2, 0, 0])
    np.testing.assert_array_equal(f.vol_buy, [4.0, 0, 0])
    np.testing.assert_array_equal(f.vol_sell, [2.0, 0.0, 0.5])
    np.testing.assert_allclose(f.vwap_buy, [100.1, 0, 0])
    np.testing.assert_allclose(f.last_price, [100.0, 99.95, 99.9])  # the mid where the interval has no trade
    np.testing.assert_array_equal(f.liq_long, [2.0, 0, 0])  # a forced sell: a long liquidated
    assert f.liq_valid and f.funding_valid
    np.testing.assert_array_equal(f.funding_settled, [False, True, False])  # next_funding_time moved on
    np.testing.assert_allclose(f.settled_rate, [0.0, 1e-4, 0.0])
    np.testing.assert_array_equal(f.trade_start, [0, 3, 3, 4])
    half = live.feed_from_capture(cap, 0.5)  # a finer cadence: the same trades, split
    np.testing.assert_array_equal(half.t, 0.5 * np.arange(1, 7))
    np.testing.assert_array_equal(half.vol_buy, [1.0, 3.0, 0, 0, 0, 0])
    np.testing.assert_array_equal(half.vol_sell, [0, 2.0, 0, 0, 0.5, 0])  # (2.0, 2.5] holds t = 2.5
    with pytest.raises(ValueError, match="cadence_s"):
        live.feed_from_capture(cap, 0.0)
    with pytest.raises(ValueError, match="inverse"):
        live.feed_from_capture({**cap, "symbols": ["btcusd_perp"]}, 1.0)
    with pytest.raises(ValueError, match="top-of-book"):
        live.feed_from_capture(capture(trades=[], books=[]), 1.0)


def trades(*rows):
    a = np.asarray(rows, float).reshape(-1, 3)
    return a[:, 0], a[:, 1], a[:, 2].astype(np.int8)


@pytest.mark.parametrize(
    "case",
    [
        # (price, resting, touch, touch_qty, trades, filled, queue after)
        ("at the touch: the displayed size is ahead", 100.0, live.Resting(), 100.0, 3.0, [(100.0, 2.0, -1)], 0.0, 1.0),
        (
            "... a larger volume fills part, the rest first in line",
            100.0,
            live.Resting(),
            100.0,
            3.0,
            [(100.0, 3.5, -1)],
            0.5,
            0.0,
        ),
        ("... and all of it", 100.0, live.Resting(), 100.0, 3.0, [(100.0, 4.5, -1)], 1.0, None),
        (
            "kept place: the queue carries over",
            100.0,
            live.Resting(100.0, 1.0),
            100.0,
            3.0,
            [(100.0, 1.6, -1)],
            0.6,
            0.0,
        ),
        ("improving the touch: first in line", 100.1, live.Resting(), 100.0, 3.0, [(100.1, 0.4, -1)], 0.4, 0.0),
        ("traded through: filled in full", 100.0, live.Resting(), 100.0, 3.0, [(99.9, 0.1, -1)], 1.0, None),
        ("behind the touch: only through", 99.9, live.Resting(), 100.0, 3.0, [(99.9, 9.0, -1)], 0.0, np.inf),
        ("buys do not fill a bid", 100.0, live.Resting(), 100.0, 0.0, [(99.0, 5.0, 1)], 0.0, 0.0),
    ],
)
def test_paper_fills_of_a_bid(case):
    _, price, resting, touch, touch_qty, rows, filled, queue = case
    got, after = live.paper_fills(1, price, 1.0, True, resting, touch, touch_qty, *trades(*rows))
    assert got == pytest.approx(filled, abs=1e-12)
    if queue is not None:
        assert after.price == price and after.queue == pytest.approx(queue)
    else:
        assert after == live.Resting()


def test_behind_the_touch_the_l2_level_is_the_queue_ahead():
    """With the L2 book's size at our price (``behind_qty``) a quote behind the touch joins behind
    it and fills from the volume traded there past it; a kept one's queue is bounded by the
    level's size as the touch's is; unknown (inf) it fills only when traded through."""
    fill = lambda rest, behind, *rows: live.paper_fills(1, 99.8, 1.0, True, rest, 100.0, 3.0, *trades(*rows), behind)  # noqa: E731
    got, after = fill(live.Resting(), 0.5, (99.8, 0.4, -1))  # 0.4 of the 0.5 ahead traded
    assert got == 0.0 and after.price == 99.8 and after.queue == pytest.approx(0.1)
    got, after = fill(live.Resting(), 0.5, (99.8, 0.9, -1))
    assert got == pytest.approx(0.4) and after == live.Resting(99.8, 0.0)
    assert fill(live.Resting(), np.inf, (99.8, 9.0, -1)) == (0.0, live.Resting(99.8, np.inf))
    assert fill(live.Resting(), 0.5, (99.7, 0.01, -1))[0] == 1.0  # traded through: in full, as before
    # Kept at 99.8 with 0.4 ahead; the level now shows 0.25 (some ahead cancelled): at most 0.25 ahead.
    got, after = fill(live.Resting(99.8, 0.4), 0.25, (99.8, 0.5, -1))
    assert got == pytest.approx(0.25) and after == live.Resting(99.8, 0.0)
    # The ask side mirrors it.
    got, _ = live.paper_fills(-1, 100.3, 1.0, True, live.Resting(), 100.1, 2.0, *trades((100.3, 0.7, 1)), 0.2)
    assert got == pytest.approx(0.5)


def test_paper_fills_of_an_ask_mirror_the_bid():
    got, _ = live.paper_fills(-1, 100.1, 2.0, True, live.Resting(), 100.1, 1.0, *trades((100.1, 1.5, 1)))
    assert got == pytest.approx(0.5)
    got, _ = live.paper_fills(-1, 100.1, 2.0, True, live.Resting(), 100.1, 1.0, *trades((100.2, 0.01, 1)))
    assert got == 2.0
    assert live.paper_fills(-1, 100.1, 2.0, False, live.Resting(), 100.1, 1.0, *trades((100.2, 1, 1)))[0] == 0.0


def synthetic_feed(n=240, seed=0):
    """A BTC-like random-walk book on a 0.1 grid (a few USDT per second) with trades on both
    sides every second."""
    g = np.random.default_rng(seed)
    mid = 60_000.05 + 0.1 * np.cumsum(g.integers(-20, 21, n))
    books = [(T0 + i, m - 0.05, 2.0, m + 0.05, 2.0) for i, m in enumerate(mid)]
    tr = []
    for i in range(n - 1):
        for k in range(4):  # trades walk the mid from one book to the next, at the touch on the grid
            s = 1 if g.random() < 0.5 else -1
            m = mid[i] + np.round((mid[i + 1] - mid[i]) * (k + 1) / 4 / 0.1) * 0.1
            tr.append((T0 + i + 0.1 + 0.2 * k, m + 0.05 * s, g.exponential(1.5), s, "MARKET"))
    return live.feed_from_capture(capture(tr, books), 1.0)


@pytest.fixture(scope="module")
def replayed():
    world, mp, ep, sim = config.build(
        config.compose(["experiment=baseline", "engine.warmup_s=20", "account.max_inventory=2"])
    )
    step = jax.jit(packed_explain_step)
    feed = synthetic_feed()
    return feed, live.replay(ep, feed, step_fn=step), step


def test_replay_runs_the_engine_once_compiled_and_keeps_the_pnl_identity(replayed):
    feed, res, step = replayed
    j, m = res.journal, res.metrics
    assert len(j) == len(feed.t) and m["observations"] == len(feed.t)
    assert step._cache_size() == 1  # one trace for the whole replay
    assert m["fills"]["bid"] + m["fills"]["ask"] > 0 and m["quoting_fraction"] > 0.5
    assert np.all(np.isnan(j["bid"][j["t"] < 20]))  # warm-up: no quotes
    # PnL = the sum of its components (float32: cash of 1e4 rounds at ~1e-3 per step).
    assert m["pnl"] == pytest.approx(m["pnl_decomposition_sum"], abs=1e-3 * len(j))
    # The journal's position is the account's: the running sum of the paper fills.
    np.testing.assert_allclose(j["position"], np.cumsum(j["fill_bid"] - j["fill_ask"]), atol=1e-5)
    assert np.all(np.abs(j["position"]) <= 2.0 + 1e-6)  # the account's hard limit holds on paper too


def test_each_quote_is_its_journaled_terms(replayed):
    """The terms the journal keeps are the quote's: the reservation price, half spread and flow
    adjustment, clamped post-only and rounded on the tick in the engine's float32, give every bid
    and ask sent; the account-limited sizes are the sizes sent."""
    _, res, _ = replayed
    j, t = res.journal, res.terms
    assert list(t.columns[:4]) == ["t", "mid", "sigma", "position"] and np.array_equal(t["t"], j["t"])
    f = lambda c: t[c].to_numpy(np.float32)  # noqa: E731
    tick, half_tick = np.float32(0.1), np.float32(0.05)
    bid = np.floor(np.minimum(f("reservation") - f("half_spread") - f("flow_adjust"), f("mid") - half_tick) / tick
                   + np.float32(1e-6)) * tick  # fmt: skip
    ask = np.ceil(np.maximum(f("reservation") + f("half_spread") - f("flow_adjust"), f("mid") + half_tick) / tick
                  - np.float32(1e-6)) * tick  # fmt: skip
    ask = np.maximum(ask, bid + tick)
    on_grid = lambda x: np.round(x.astype(float) / 0.1) * 0.1  # noqa: E731   (the venue's grid, as sent)
    for side, px in (("bid", bid), ("ask", ask)):
        on = j[side].notna().to_numpy()
        assert on.sum() > 100 and t["ready"][on].all()
        np.testing.assert_array_equal(on_grid(px)[on], j[side][on], err_msg=side)
        np.testing.assert_array_equal(t[f"{side}_size_limited"][on], j[f"{side}_size"][on], err_msg=side)
    assert not t["ready"][j["t"] < 20].any()  # the warm-up is why nothing was quoted


def test_the_quotes_go_out_on_the_venues_grid(replayed):
    """Every quote sent is a multiple of the 0.1 tick to float64 precision: rounded on the
    float32 cast of the tick (0.10000000149) a 60,000 quote would sit 9e-4 above the touch, where
    the paper rule puts it first in line and fills it on every sell."""
    _, res, _ = replayed
    for side in ("bid", "ask"):
        p = res.journal[side].dropna().to_numpy()
        assert len(p) and np.all(np.abs(p / 0.1 - np.round(p / 0.1)) < 1e-6), side
    from mmsim.live.replay import venue_tick

    assert venue_tick(np.float32(0.1)) == 0.1 and venue_tick(np.array([0.1, 0.01])) == 0.1


def test_replay_outputs(replayed, tmp_path):
    _, res, _ = replayed
    files = live_report.write_outputs(res, tmp_path, "synthetic")
    assert [f.name for f in files] == ["journal.csv", "metrics.json", "report.md", "replay.png", "quote_terms.csv"]
    assert json.loads((tmp_path / "metrics.json").read_text())["observations"] == len(res.journal)
    md = (tmp_path / "report.md").read_text()
    assert md.startswith("# synthetic") and f"| PnL | {res.metrics['pnl']:,.2f} (quote currency) |" in md
    assert (tmp_path / "replay.png").stat().st_size > 1000


def test_replay_with_a_taker_order_flattens_at_the_event(replayed):
    """A policy flattening into a scheduled event on a replay: the taker order goes through the
    displayed touch at the window's first quote, and the position is flat from then on (both
    sides pulled in the window)."""
    feed, _, _ = replayed
    world, mp, ep, sim = config.build(
        config.compose(
            [
                "experiment=baseline",
                "engine.warmup_s=20",
                "account.max_inventory=2",
                "policy.event_times_s=[200]",
                "policy.event_pull_before_s=40",
                "policy.event_pull_after_s=20",
                "policy.event_flatten=1",
            ]
        )
    )
    res = live.replay(ep, feed)
    j, m = res.journal, res.metrics
    first = int(np.searchsorted(j["t"], 160.0))  # the window's first quote (t = 160 s)
    assert j["position"].iloc[first] != 0.0, "no position to flatten: the test would prove nothing"
    assert j["take"].iloc[first] == pytest.approx(-j["position"].iloc[first], rel=1e-6)
    np.testing.assert_allclose(j["fill_take"].iloc[first + 1], j["take"].iloc[first], rtol=1e-6)
    np.testing.assert_allclose(j["position"].iloc[first + 1 : int(np.searchsorted(j["t"], 220.0)) + 1], 0.0, atol=1e-6)
    assert m["fills"]["taker"] >= 1
    assert m["pnl"] == pytest.approx(m["pnl_decomposition_sum"], abs=1e-3 * len(j))


@pytest.mark.slow
def test_replay_against_the_simulator(replayed):
    """compare_with_simulation: the configured market simulated over the replay's duration, and
    the replay's percentiles in its distributions."""
    feed, res, _ = replayed
    world, mp, ep, sim = config.build(
        config.compose(["experiment=baseline", "engine.warmup_s=20", "account.max_inventory=2"])
    )
    c = live.compare_with_simulation(res.metrics, world, mp, ep, n_paths=16, dt=2.0, seed=0)
    assert c["horizon_s"] == 2.0 * np.floor(res.metrics["duration_s"] / 2.0) and c["n_paths"] == 16
    assert c["pnl"]["q05"] <= c["pnl"]["q50"] <= c["pnl"]["q95"]
    assert 0.0 <= c["replay_pnl_percentile"] <= 100.0 and 0.0 <= c["replay_fills_percentile"] <= 100.0
    assert set(c["pnl_decomposition"]) == set(res.metrics["pnl_decomposition"])
    with pytest.raises(ValueError, match="shorter than one simulation step"):
        live.compare_with_simulation({**res.metrics, "duration_s": 1.0}, world, mp, ep, n_paths=4, dt=2.0, seed=0)


def test_replay_refuses_several_assets():
    world, mp, ep, sim = config.build(config.compose(["experiment=multi_asset"]))
    with pytest.raises(ValueError, match="one asset"):
        live.replay(ep, synthetic_feed(n=5))


def test_live_replay_on_a_real_capture(tmp_path, capsys):
    path = data.data_file("hftbacktest_binance_usdm_btcusdt_20240808.gz")
    if path is None:
        pytest.skip("no data directory (MMSIM_DATA or ../shared/data): the real-capture replay is not run")
    rc = cli.main(["live", "--replay", str(path), "--out", str(tmp_path), "experiment=baseline", "engine.warmup_s=30"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "paper fills; nothing was sent" in out
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["observations"] > 300 and m["trades"] > 20_000
    assert np.isfinite(m["pnl"]) and m["fills"]["bid"] + m["fills"]["ask"] > 0


def test_live_needs_params_or_a_replay(capsys):
    with pytest.raises(SystemExit):
        cli.main(["live", "experiment=baseline"])
    assert "--params is required" in capsys.readouterr().err


def test_an_event_driven_feed_observes_at_each_book_update_at_most_once_per_spacing():
    books = [(T0 + x, 100.0, 1.0, 100.1, 1.0) for x in (0.0, 0.01, 0.03, 0.2, 0.21, 0.5, 1.7)]
    trades = [(T0 + x, 100.1, 0.5, 1, "MARKET") for x in (0.02, 0.1, 0.2, 0.35, 1.0, 1.8)]
    f = live.feed_from_capture(capture(trades, books), 0.05, on_book=True)
    # 0.01 and 0.03 come within 0.05 s of the start; 0.21 within 0.05 s of 0.2.
    np.testing.assert_allclose(f.t, [0.2, 0.5, 1.7], atol=1e-6)  # epoch seconds hold ~2e-7 s
    assert f.on_book and np.all(f.book_age == 0)
    # Each observation holds the trades stamped since the last one, up to and at its own time.
    np.testing.assert_array_equal(np.diff(f.trade_start), [3, 1, 1])
    np.testing.assert_allclose(f.trade_time, [0.02, 0.1, 0.2, 0.35, 1.0], atol=1e-6)
    with pytest.raises(ValueError, match="single top-of-book update"):
        live.feed_from_capture(capture(trades, books[:1] + [(T0 + 0.01, 100.0, 1.0, 100.1, 1.0)]), 0.05, on_book=True)


def test_a_replay_on_book_events_steps_the_engine_at_their_uneven_times(replayed):
    """The synthetic feed's books, observed as events: the engine runs on steps of uneven length
    (its rates are per second), and the metrics say the cadence is the book's."""
    feed, clock, step = replayed
    world, mp, ep, sim = config.build(
        config.compose(["experiment=baseline", "engine.warmup_s=20", "account.max_inventory=2"])
    )
    books = [(T0 + i + 0.3 * (i % 3), m - 0.05, 2.0, m + 0.05, 2.0) for i, m in enumerate(feed.mid)]
    trades = [(T0 + feed.trade_time[k], feed.trade_price[k], feed.trade_qty[k], feed.trade_side[k], "MARKET")
              for k in range(len(feed.trade_price))]  # fmt: skip
    ev = live.feed_from_capture(capture(trades, books), 0.05, on_book=True)
    assert len(np.unique(np.round(np.diff(ev.t), 6))) > 1  # uneven steps
    res = live.replay(ep, ev, step_fn=step)
    m = res.metrics
    assert m["cadence"] == "book" and m["observations"] == len(ev.t)
    assert m["cadence_s"] == pytest.approx(ev.t[-1] / len(ev.t))
    assert m["fills"]["bid"] + m["fills"]["ask"] > 0 and np.isfinite(res.journal["equity"]).all()
    assert m["pnl"] == pytest.approx(m["pnl_decomposition_sum"], abs=1e-3 * len(res.journal))
