"""Bad input through the reader, the guard and the feed adapter: each class of damage ends in a clear
error naming the file, or is counted by class and skipped with the rest of the feed as it was
without it; a property test mutates lines at random and asserts no crash and no non-finite feed."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmsim import live
from mmsim.fit import data
from mmsim.live import guard
from mmsim.live.replay import packed_explain_step
from tests.fit.test_data import _binance, _write_gz

T0_MS = 1_723_161_255_000  # exchange time of the first message, ms
N_S = 40  # seconds of clean capture


def _line(local_ms: int, stream: str, d: dict) -> str:
    return _binance(stream, d, local_ms * 1_000_000)


def book(t_ms: int, bid: float, sym: str = "btcusdt", local_ms: int | None = None) -> str:
    d = {
        "e": "bookTicker",
        "u": t_ms,
        "b": f"{bid:.1f}",
        "B": "2.0",
        "a": f"{bid + 0.1:.1f}",
        "A": "3.0",
        "T": t_ms,
        "E": t_ms,
    }
    return _line(t_ms + 5 if local_ms is None else local_ms, f"{sym}@bookTicker", d)


def trade(t_ms: int, px: float, tid: int, sell: bool, sym: str = "btcusdt", kind: str = "trade") -> str:
    d = {"e": kind, "E": t_ms, "T": t_ms, "p": f"{px:.1f}", "q": "0.010", "m": sell}
    d.update({"t": tid, "X": "MARKET"} if kind == "trade" else {"a": tid})
    return _line(t_ms + 5, f"{sym}@{kind}", d)


def mark(t_ms: int, rate: float, next_ms: int) -> str:
    d = {
        "e": "markPriceUpdate",
        "E": t_ms,
        "p": "60000.0",
        "P": "60000.0",
        "i": "60000.0",
        "r": f"{rate}",
        "T": next_ms,
    }
    return _line(t_ms + 5, "btcusdt@markPrice@1s", d)


def clean_lines() -> list[str]:
    out = []
    for k in range(N_S * 4):  # a book every 250 ms, a trade every 500 ms, a mark price every second
        t = T0_MS + 250 * k
        bid = 60_000.0 + 0.1 * ((k // 8) % 5)
        out.append(book(t, bid))
        if k % 2:
            out.append(trade(t + 1, bid + 0.1 if k % 4 == 1 else bid, k, sell=k % 4 != 1))
        if k % 4 == 0:
            out.append(mark(t + 2, 1e-4, T0_MS + 3_600_000))
    return out


write = _write_gz  # (also the long fuzz script's)


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    p = write(tmp_path_factory.mktemp("cap") / "clean.gz", clean_lines())
    cap = data.read_capture(p)
    return cap, live.feed_from_capture(cap, 1.0, symbol="BTCUSDT")


def feed_of(tmp_path, lines, **kw):
    cap = data.read_capture(write(tmp_path / "x.gz", lines))
    return cap, live.feed_from_capture(cap, 1.0, **kw)


def same_market(f, g):
    """The feed as it was without the damage: same intervals, books and flow."""
    for name in ("t", "best_bid", "best_ask", "n_buy", "n_sell", "vol_buy", "vol_sell", "funding_settled"):
        np.testing.assert_array_equal(getattr(f, name), getattr(g, name), err_msg=name)


def test_the_clean_capture_is_read_whole(clean):
    cap, f = clean
    assert len(f.t) == N_S - 1 and not f.quality and cap["truncated"] is None
    assert f.trade_start[-1] == f.n_buy.sum() + f.n_sell.sum() > 0 and f.symbol == "btcusdt"
    assert np.all(f.book_age <= 0.25 + 1e-9)


# -- files ---------------------------------------------------------------------------------------


def test_not_gzip_and_directories_are_one_line_errors(tmp_path):
    junk = tmp_path / "junk.gz"
    junk.write_bytes(b"\x00\x01binary garbage" * 10)
    with pytest.raises(data.CaptureError, match=r"junk.gz: not a readable gzip capture .* at byte"):
        data.read_capture(junk)
    with pytest.raises(data.CaptureError, match="a directory"):
        data.read_capture(tmp_path)
    with pytest.raises(data.CaptureError, match="no such capture file"):
        data.read_capture(tmp_path / "missing.gz")


@pytest.mark.parametrize("damage", ["truncated", "trailing_garbage"])
def test_a_damaged_file_replays_what_it_holds_and_says_where_it_stopped(tmp_path, damage):
    good = write(tmp_path / "good.gz", clean_lines()).read_bytes()
    bad = tmp_path / "bad.gz"
    bad.write_bytes(good[: len(good) * 2 // 3] if damage == "truncated" else good + b"\x1f\x8bgarbage!")
    cap = data.read_capture(bad)
    t = cap["truncated"]
    assert t is not None and t["after_lines"] > 0 and t["compressed_byte"] > 0
    assert 0 < len(cap["book_ticker"]) <= N_S * 4
    if damage == "trailing_garbage":
        assert len(cap["book_ticker"]) == N_S * 4  # every line before the garbage


# -- time ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "stamp, what",
    [
        (lambda t: t // 1000, "seconds instead of ms"),
        (lambda t: t * 10, "one extra digit"),
        (lambda t: t - 86_400_000, "a day early"),
        (lambda t: t + 3_600_000, "an hour in the future"),
    ],
)
def test_an_implausible_exchange_time_is_refused_and_memory_does_not_follow_it(tmp_path, clean, stamp, what):
    lines = clean_lines()
    t = T0_MS + 250 * 30
    k = next(i for i, ln in enumerate(lines) if "bookTicker" in ln and f'"T": {t},' in ln)
    lines[k] = book(stamp(t), 60_000.0, local_ms=t + 5)
    cap, f = feed_of(tmp_path, lines)
    assert f.quality == {"book_bad_time": 1}, what
    assert len(f.t) == len(clean[1].t)


def test_a_feed_gap_pulls_the_quotes_instead_of_quoting_a_frozen_book(tmp_path, clean):
    lines = [
        ln
        for ln in clean_lines()
        if not (T0_MS + 10_000 < json.loads(ln.split(" ", 1)[1])["data"]["E"] < T0_MS + 25_000 and "bookTicker" in ln)
    ]
    _, f = feed_of(tmp_path, lines)
    stale = f.book_age > guard.GuardParams().stale_s
    assert stale.sum() == 4  # the intervals ending more than 10 s after the last book before the gap
    assert np.all(np.diff(np.flatnonzero(stale)) == 1)


def test_the_cadence_is_bounded(clean):
    cap = clean[0]
    for bad in (0.0, 1e-6, float("inf"), float("nan"), 7200.0):
        with pytest.raises(ValueError, match="cadence_s"):
            live.feed_from_capture(cap, bad)
    with pytest.raises(ValueError, match="longer than the capture"):
        live.feed_from_capture(cap, 600.0)


# -- values --------------------------------------------------------------------------------------


def test_books_and_trades_outside_the_band_are_refused(tmp_path, clean):
    lines = clean_lines()
    n_books = 0
    for i, ln in enumerate(lines):
        d = json.loads(ln.split(" ", 1)[1])["data"]
        if d["e"] == "bookTicker" and T0_MS + 20_000 <= d["T"] < T0_MS + 21_000:  # one second of books x 1000
            lines[i] = book(d["T"], float(d["b"]) * 1000)
            n_books += 1
    lines.append(trade(T0_MS + 30_001, 60.0, 10_001, sell=True))  # one trade at x 0.001
    lines.append(trade(T0_MS + 30_002, 1e39, 10_002, sell=False))  # and one at 1e39
    cap, f = feed_of(tmp_path, lines)
    assert f.quality == {"book_outside_band": n_books, "trade_outside_band": 2}
    assert np.all(np.isfinite(f.best_bid)) and f.best_bid.max() < 61_000
    assert f.trade_start[-1] == clean[1].trade_start[-1]


def test_funding_rates_and_settlement_times_that_make_no_sense_are_refused(tmp_path, clean):
    lines = clean_lines()
    lines.append(mark(T0_MS + 5_003, 5.0, T0_MS + 3_600_000))  # 500 % per interval
    for s in range(10, 20, 2):  # next_funding_time flapping back and forth
        lines.append(mark(T0_MS + 1000 * s + 3, 1e-4, T0_MS + 1_800_000))
    _, f = feed_of(tmp_path, lines)
    assert f.quality == {"funding_rate_implausible": 1, "funding_time_backwards": 5}
    assert not f.funding_settled.any() and np.abs(f.funding_rate).max() <= 1e-4


# -- identity ------------------------------------------------------------------------------------


def test_duplicate_trades_are_one_trade(tmp_path, clean):
    lines = clean_lines()
    lines += [ln for ln in lines if "@trade" in ln]
    cap, f = feed_of(tmp_path, lines)
    assert f.quality == {"duplicate_trade_id": len(clean[0]["trades"])}
    same_market(f, clean[1])


def test_an_aggtrade_stream_is_read(tmp_path, clean):
    lines = [
        ln.replace("@trade", "@aggTrade").replace('"e": "trade"', '"e": "aggTrade"').replace('"t":', '"a":')
        for ln in clean_lines()
    ]
    _, f = feed_of(tmp_path, lines)
    same_market(f, clean[1])
    both = clean_lines() + [ln for ln in lines if "aggTrade" in ln]  # beside the trade stream: not counted twice
    _, g = feed_of(tmp_path, both)
    same_market(g, clean[1])
    assert g.quality == {"aggTrade_beside_trade_stream": len(clean[0]["trades"])}


def test_another_symbol_is_refused_unless_named(tmp_path, clean):
    eth = [ln.replace("btcusdt", "ethusdt") for ln in clean_lines()]
    cap = data.read_capture(write(tmp_path / "eth.gz", eth))
    with pytest.raises(ValueError, match=r"holds \['ETHUSDT'\], not BTCUSDT .*--symbol"):
        live.feed_from_capture(cap, 1.0, symbol="BTCUSDT")
    assert live.feed_from_capture(cap, 1.0, symbol="ETHUSDT").symbol == "ethusdt"
    mixed = clean_lines() + [book(T0_MS + 250 * k + 7, 3000.0, sym="ethusdt") for k in range(20)]
    _, f = feed_of(tmp_path, mixed, symbol="BTCUSDT")
    assert f.quality == {"other_symbol": 20}
    same_market(f, clean[1])
    assert guard.base_asset("BTCUSDT") == guard.base_asset("btc") == guard.base_asset("btcusd_perp") == "btc"


def test_lines_of_another_venue_are_not_mixed_in(tmp_path, clean):
    hl = [
        f"{(T0_MS + 100 * k) * 1_000_000} "
        + json.dumps(
            {
                "channel": "trades",
                "data": [{"coin": "BTC", "side": "B", "px": "1.0", "sz": "1", "time": T0_MS, "tid": k}],
            }
        )
        for k in range(30)
    ]
    _, f = feed_of(tmp_path, clean_lines() + hl)
    assert f.quality == {"other_venue": 30}
    same_market(f, clean[1])


# -- any damage at all ---------------------------------------------------------------------------

MUTATIONS = ("drop", "dup", "cut", "garble", "scale_price", "shift_time", "swap", "empty")


def mutate(lines: list[str], muts) -> list[str]:
    """The capture's lines with each ``(kind, index, factor)`` mutation of ``MUTATIONS`` applied."""
    lines = list(lines)
    for kind, i, x in muts:
        i %= len(lines)
        if kind == "drop":
            del lines[i]
        elif kind == "dup":
            lines.insert(i, lines[i])
        elif kind == "cut":
            lines[i] = lines[i][: i % max(len(lines[i]), 1)]
        elif kind == "garble":
            lines[i] = lines[i][::-1]
        elif kind == "scale_price":
            lines[i] = lines[i].replace('"60000', f'"{60000 * x:.1f}', 1)
        elif kind == "shift_time":
            lines[i] = lines[i].replace(f'"T": {T0_MS // 1000}', f'"T": {int(T0_MS * x) // 1000}', 1)
        elif kind == "swap":
            j = (i * 7 + 3) % len(lines)
            lines[i], lines[j] = lines[j], lines[i]
        elif kind == "empty":
            lines[i] = ""
        if not lines:
            lines = clean_lines()[:4]
    return lines


def outcome(path) -> str:
    """Read and cut a (mutated) capture file: "error" for a clear ValueError, else "feed" after
    checking that the feed is finite and bounded; anything else raises."""
    try:
        f = live.feed_from_capture(data.read_capture(path), 1.0)
    except ValueError:
        return "error"  # a clear error (no book left, a capture shorter than the cadence ...)
    for name in ("best_bid", "best_ask", "vol_buy", "vol_sell", "vwap_buy", "vwap_sell", "last_price", "book_age"):
        assert np.all(np.isfinite(getattr(f, name))), name
    assert len(f.t) <= N_S * 2
    return "feed"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(st.sampled_from(MUTATIONS), st.integers(0, 10_000), st.floats(1e-6, 1e6)), min_size=1, max_size=12
    )
)
def test_no_mutation_crashes_the_reader_or_leaves_a_non_finite_feed(tmp_path, muts):
    outcome(write(tmp_path / "m.gz", mutate(clean_lines(), muts)))


# -- the command line ----------------------------------------------------------------------------


def test_the_replay_command_refuses_bad_input_before_running(tmp_path, capsys):
    from mmsim import cli

    cap = write(tmp_path / "btc.gz", clean_lines())
    a_file = tmp_path / "not_a_dir"
    a_file.write_text("x")
    assert cli.main(["live", "--replay", str(cap), "--out", str(a_file), "experiment=baseline"]) == cli.EXIT_CONFIG
    assert "is a file, not a directory" in capsys.readouterr().err
    eth = write(tmp_path / "eth.gz", [ln.replace("btcusdt", "ethusdt") for ln in clean_lines()])
    assert cli.main(["live", "--replay", str(eth), "--out", str(tmp_path / "o"), "experiment=baseline"]) == 2
    assert "not BTCUSDT" in capsys.readouterr().err
    junk = tmp_path / "junk.gz"
    junk.write_bytes(b"not a gzip file at all")
    assert cli.main(["live", "--replay", str(junk), "experiment=baseline"]) == cli.EXIT_CONFIG
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "junk.gz: not a readable gzip capture" in err[0]
    for bad in ("inf", "1e-6"):
        assert cli.main(["live", "--replay", str(cap), "--cadence", bad, "experiment=baseline"]) == cli.EXIT_CONFIG
        assert "cadence_s" in capsys.readouterr().err


def test_spot_books_stamped_on_receipt_are_put_on_the_exchange_clock(tmp_path):
    """Binance spot bookTicker has no exchange time: its books are stamped on receipt, the trades on
    the exchange clock. With the receive clock 1.27 s behind, the books move 1.27 s later."""
    lines = []
    for k in range(40):
        t = T0_MS + 250 * k
        local = t - 1270
        d = {"u": t, "s": "BTCUSDT", "b": "60000.0", "B": "2.0", "a": "60000.1", "A": "3.0"}
        lines.append(_line(local, "btcusdt@bookTicker", d))
        td = {"e": "trade", "E": t, "T": t, "t": k, "p": "60000.1", "q": "0.01", "m": False}
        lines.append(_line(local, "btcusdt@trade", td))
    cap = data.read_capture(write(tmp_path / "spot.gz", lines))
    assert cap["clock_offset_s"] == pytest.approx(-1.27, abs=1e-6)
    np.testing.assert_allclose(cap["book_ticker"]["time"], cap["trades"]["time"], atol=1e-6)


@pytest.fixture(scope="module")
def engine_step():
    import jax

    from mmsim import config

    _, _, ep, _ = config.build(config.compose(["experiment=baseline", "engine.warmup_s=5"]))
    return ep, jax.jit(packed_explain_step)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(st.sampled_from(MUTATIONS), st.integers(0, 10_000), st.floats(1e-3, 1e3)), min_size=1, max_size=8
    )
)
def test_no_mutated_feed_makes_the_engine_quote_nan_or_write_nan(tmp_path, engine_step, muts):
    """Through the engine too: whatever the damage, every quote sent is a finite price and size,
    the equity stays finite, and the metrics are strict JSON."""
    from mmsim.report.common import sanitize

    ep, step = engine_step
    try:
        f = live.feed_from_capture(data.read_capture(write(tmp_path / "m.gz", mutate(clean_lines(), muts))), 1.0)
    except ValueError:
        return
    res = live.replay(ep, f, step_fn=step)
    j = res.journal
    for side in ("bid", "ask"):
        sent = j[side].notna()
        assert np.all(np.isfinite(j[side][sent])) and np.all(np.isfinite(j[f"{side}_size"][sent]))
    assert np.all(np.isfinite(j["equity"]))
    json.dumps(sanitize(res.metrics), allow_nan=False)
