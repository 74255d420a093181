"""The feed adapter message by message (``mmsim.live.stream``): the intervals a stream yields are
the recording's (:func:`mmsim.live.feed.feed_from_capture`) for the same messages, on a hand-made
capture and on the shared captures; what a stream cannot place (a message stamped in an interval
already closed) is counted; no damage makes it crash or yield a non-finite interval."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmsim import live
from mmsim.fit import data
from mmsim.live.stream import FeedBuilder
from tests.live.test_guard import MUTATIONS, N_S, T0_MS, book, clean_lines, mutate, trade, write


def stream(lines, cadence_s=1.0, **kw) -> tuple[list, FeedBuilder]:
    fb = FeedBuilder(cadence_s, **kw)
    out = []
    for line in lines:
        out += fb.line(line)
    return out + fb.flush(), fb


def assert_same(feed, intervals, skip=()) -> None:
    assert len(intervals) == len(feed.t)
    for i, iv in enumerate(intervals):
        ref = feed.row(i)
        for f in ref._fields:
            if f in skip:
                continue
            np.testing.assert_array_equal(np.asarray(getattr(iv, f)), np.asarray(getattr(ref, f)), err_msg=f"{f} [{i}]")


def test_a_stream_yields_the_recordings_intervals(tmp_path):
    lines = clean_lines()
    feed = live.feed_from_capture(data.read_capture(write(tmp_path / "c.gz", lines)), 1.0, symbol="BTCUSDT")
    out, fb = stream(lines, symbol="BTCUSDT", grace_s=0.05)
    assert_same(feed, out)
    assert fb.t0 == feed.t0 and not fb.quality and fb.trades_total == feed.trade_start[-1]


@pytest.mark.parametrize("spacing", [0.05, 0.6])
def test_an_event_driven_stream_yields_the_event_driven_recordings_intervals(tmp_path, spacing):
    """At a book every 250 ms: every book is an end at a spacing of 0.05 s, every third at 0.6 s."""
    lines = clean_lines()
    cap = data.read_capture(write(tmp_path / "c.gz", lines))
    feed = live.feed_from_capture(cap, spacing, symbol="BTCUSDT", on_book=True)
    out, fb = stream(lines, spacing, symbol="BTCUSDT", grace_s=0.05, on_book=True)
    assert_same(feed, out)
    assert not fb.quality and len(feed.t) == (N_S * 4 - 1 if spacing < 0.25 else (N_S * 4 - 1) // 3)


def test_intervals_close_on_the_books_clock_and_a_late_trade_is_counted_not_placed(tmp_path):
    base = [book(T0_MS + 100 * k, 60_000.0) for k in range(40)]  # 4 s of books
    early = base[:25] + [trade(T0_MS + 2_450, 60_000.1, 1, sell=False)] + base[25:]
    out, fb = stream(early, grace_s=0.05)
    # A trade stamped 2.45 s after the first book arrives after a book stamped 2.5 s: the interval
    # (2, 3] is still open, so it is placed in it.
    assert [iv.n_buy for iv in out] == [0, 0, 1] and not fb.quality
    late = base[:34] + [trade(T0_MS + 1_500, 60_000.1, 2, sell=False)] + base[34:]
    out, fb = stream(late, grace_s=0.05)
    assert sum(iv.n_buy for iv in out) == 0 and fb.quality == {"late_trade": 1}
    # Nothing closes an interval until a book stamped grace_s past its end arrives.
    fb = FeedBuilder(1.0, grace_s=0.05)
    assert fb.line(book(T0_MS, 60_000.0)) == [] and fb.line(book(T0_MS + 1_040, 60_000.0)) == []
    (iv,) = fb.line(book(T0_MS + 1_050, 60_000.0))
    assert iv.t == 1.0 and iv.book_age == pytest.approx(1.0)


def test_a_resent_trade_and_a_malformed_message_are_counted(tmp_path):
    lines = clean_lines()
    lines = lines[:30] + [lines[3], "not json", lines[29][:20]] + lines[30:]
    out, fb = stream(lines, grace_s=0.05)
    assert fb.quality == {"duplicate_trade_id": 1, "malformed": 2}
    assert_same(live.feed_from_capture(data.read_capture(write(tmp_path / "c.gz", clean_lines())), 1.0), out)


def test_an_aggtrade_stream_beside_the_trade_stream_is_refused_not_counted_twice():
    lines, n_agg = [], 0
    for line in clean_lines():
        lines.append(line)
        if '"e": "trade"' in line:  # the same trade again on the aggregated stream
            lines.append(
                line.replace("@trade", "@aggTrade").replace('"e": "trade"', '"e": "aggTrade"').replace('"t":', '"a":')
            )
            n_agg += 1
    out, fb = stream(lines, grace_s=0.05)
    ref, _ = stream(clean_lines(), grace_s=0.05)
    assert n_agg > 0 and fb.quality == {"aggTrade_beside_trade_stream": n_agg}
    assert [iv.vol_buy + iv.vol_sell for iv in out] == [iv.vol_buy + iv.vol_sell for iv in ref]


@pytest.mark.parametrize(
    "kw, match",
    [({"cadence_s": 0.0}, "cadence_s"), ({"grace_s": -1.0}, "grace_s"), ({"grace_s": 1.0}, "grace_s")],
)
def test_bad_arguments_name_the_field(kw, match):
    with pytest.raises(ValueError, match=match):
        FeedBuilder(**kw)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(st.sampled_from(MUTATIONS), st.integers(0, 10_000), st.floats(1e-6, 1e6)), min_size=1, max_size=12
    )
)
def test_no_mutation_crashes_the_stream_or_yields_a_non_finite_interval(muts):
    out, _ = stream(mutate(clean_lines(), muts), grace_s=0.05)
    assert len(out) <= 2 * N_S
    for iv in out:
        for f in ("best_bid", "best_ask", "vol_buy", "vol_sell", "vwap_buy", "vwap_sell", "last_price", "book_age"):
            assert np.isfinite(getattr(iv, f)), f
        assert iv.best_bid < iv.best_ask


# The shared captures: the stream's intervals equal the recording's, but for what it counts as late
# (one mark price on 2023-04-05, stamped more than the grace behind the books around it).
CAPTURES = [
    ("hftbacktest_binance_usdm_btcusdt_20240808.gz", "BTCUSDT", {}),
    ("hftbacktest_binance_usdm_btcusdt_20230405.dat.gz", "BTCUSDT", {"late_mark": 5}),
]


@pytest.mark.parametrize("name, symbol, late", CAPTURES)
def test_a_shared_capture_streamed_yields_its_recorded_intervals(name, symbol, late):
    path = data.data_file(name)
    if path is None:
        pytest.skip(f"no data directory (MMSIM_DATA or ../shared/data): {name} is not streamed")
    feed = live.feed_from_capture(data.read_capture(path), 1.0, symbol=symbol)
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        out, fb = stream(fh, symbol=symbol, grace_s=0.05, liq_valid=True)
    assert fb.quality == late
    diff = {
        f: int(np.sum([not np.array_equal(getattr(a, f), getattr(feed.row(i), f)) for i, a in enumerate(out)]))
        for f in out[0]._fields
    }
    assert len(out) == len(feed.t) and {f: n for f, n in diff.items() if n} == ({"funding_rate": 1} if late else {})


def test_a_stream_yields_the_recordings_l2_book(tmp_path):
    """The L2 sample at each end, by the one rule (DepthSampler) on a recording and on a stream:
    the snapshot, then each diff stamped at or before the end."""
    from tests.live.test_session import depth_lines

    lines = depth_lines()
    cap = data.read_capture(write(tmp_path / "d.gz", lines), depth=True)
    feed = live.feed_from_capture(cap, 1.0, symbol="BTCUSDT", depth_tick=0.1)
    out, fb = stream(lines, symbol="BTCUSDT", grace_s=0.05, depth=True, depth_tick=0.1)
    assert_same(feed, out)
    for i in (0, 7, len(feed.t) - 1):
        end_ms = 1e3 * (feed.t0 + feed.t[i])
        k = sum(T0_MS + 100 * j + 3 <= end_ms for j in range(400))  # diffs in by the end: sizes 4 + j % 3
        jb = round((feed.best_bid[i] - 59999.0) / 0.1)
        assert feed.bid_depth[i, jb] == (4.0 + (k - 1) % 3 if k else 4.0)
        assert feed.bid_depth[i].sum() == feed.bid_depth[i, jb]  # nothing else rests behind the bid
    without = live.feed_from_capture(cap, 1.0, symbol="BTCUSDT")
    assert without.bid_depth is None and without.row(3).bid_depth is None


def test_the_l2_sample_is_not_known_before_a_snapshot_and_starts_again_at_one():
    s = live.DepthSampler(0.1, ticks=4)
    s.add([(1.0, 1.0, 1, False, 1, 99.9, 2.0)])  # a diff before any snapshot
    assert np.isnan(s.sample(1.5, 100.0, 100.1)[0]).all()
    s.add([(2.0, 2.0, 2, True, 1, 99.8, 3.0), (2.0, 2.0, 2, True, -1, 100.2, 1.0), (3.0, 3.0, 3, False, 1, 99.8, 0.0)])
    bid, ask = s.sample(2.5, 100.0, 100.1)
    np.testing.assert_array_equal(bid, [0.0, 0.0, 3.0, 0.0])  # the diff before the snapshot is gone
    np.testing.assert_array_equal(ask, [0.0, 1.0, 0.0, 0.0])
    assert s.sample(3.0, 100.0, 100.1)[0][2] == 0.0  # a size of 0 deletes the level
    with pytest.raises(ValueError, match="tick"):
        live.DepthSampler(0.0)


@pytest.mark.parametrize(
    "name", ["hftbacktest_binance_usdm_btcusdt_20230404.dat.gz", "hftbacktest_binance_usdm_btcusdt_20240808.gz"]
)
def test_a_shared_capture_streamed_yields_its_recorded_l2_book(name):
    path = data.data_file(name)
    if path is None:
        pytest.skip(f"no data directory (MMSIM_DATA or ../shared/data): {name} is not streamed")
    feed = live.feed_from_capture(data.read_capture(path, depth=True), 1.0, symbol="BTCUSDT", depth_tick=0.1)
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        out, _ = stream(fh, symbol="BTCUSDT", grace_s=0.05, liq_valid=True, depth=True, depth_tick=0.1)
    assert len(out) == len(feed.t) and np.isfinite(feed.bid_depth).all()
    np.testing.assert_array_equal(np.array([iv.bid_depth for iv in out]), feed.bid_depth)
    np.testing.assert_array_equal(np.array([iv.ask_depth for iv in out]), feed.ask_depth)


def test_an_interval_with_its_l2_sample_survives_the_journal(tmp_path):
    import json

    from mmsim.live import journal
    from tests.live.test_session import depth_lines

    cap = data.read_capture(write(tmp_path / "d.gz", depth_lines()), depth=True)
    iv = live.feed_from_capture(cap, 1.0, symbol="BTCUSDT", depth_tick=0.1).row(3)
    iv = iv._replace(ask_depth=np.where(np.arange(len(iv.ask_depth)) > 60, np.nan, iv.ask_depth))
    back = journal.interval_from_json(json.loads(json.dumps(journal.interval_to_json(iv), allow_nan=False)))
    np.testing.assert_array_equal(back.bid_depth, iv.bid_depth)
    np.testing.assert_array_equal(back.ask_depth, iv.ask_depth)  # NaN (not known) written as null
