"""Readers of mmsim.fit.data: small synthetic files (always run) and the real data files (skipped,
with the reason, when the data directory is absent)."""

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mmsim.fit import data

# ----------------------------------------------------------------------------------------------
# Data directory lookup


def test_data_dir_uses_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("MMSIM_DATA", str(tmp_path))
    assert data.data_dir() == tmp_path
    (tmp_path / "x.csv").write_text("a\n")
    assert data.data_file("x.csv") == tmp_path / "x.csv"
    assert data.data_file("missing.csv") is None


def test_data_dir_is_none_when_absent(tmp_path, monkeypatch):
    monkeypatch.setenv("MMSIM_DATA", str(tmp_path / "nope"))
    monkeypatch.setattr(data, "_REPO_ROOT", tmp_path / "repo")
    assert data.data_dir() is None
    assert data.data_file("anything") is None


def test_data_dir_default_is_shared_data_beside_the_repo(tmp_path, monkeypatch):
    monkeypatch.delenv("MMSIM_DATA", raising=False)
    (tmp_path / "shared" / "data").mkdir(parents=True)
    monkeypatch.setattr(data, "_REPO_ROOT", tmp_path / "repo")
    assert data.data_dir() == tmp_path / "shared" / "data"


# ----------------------------------------------------------------------------------------------
# Synthetic captures


def _write_gz(path: Path, lines: list[str]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


def _binance(stream, payload, ts):
    return f"{ts} " + json.dumps({"stream": stream, "data": payload})


def test_read_capture_binance_synthetic(tmp_path):
    ns = 1723161255_000_000_000
    E = 1723161256300
    lines = [
        # REST snapshot and a depth diff: counted, not decoded by default.
        f"{ns} " + json.dumps({"lastUpdateId": 1, "E": E, "T": E, "bids": [["100.0", "1"]], "asks": [["100.1", "2"]]}),
        _binance(
            "btcusdt@depth@0ms",
            {"e": "depthUpdate", "E": E, "T": E, "U": 2, "u": 3, "pu": 1, "b": [["100.0", "0.5"]], "a": []},
            ns + 1,
        ),
        _binance(
            "btcusdt@bookTicker",
            {"e": "bookTicker", "u": 4, "b": "100.0", "B": "1.5", "a": "100.1", "A": "2.5", "T": E + 1, "E": E + 2},
            ns + 2,
        ),
        # The aggressor sold (buyer is maker) ...
        _binance(
            "btcusdt@trade",
            {"e": "trade", "E": E + 5, "T": E + 4, "t": 11, "p": "100.0", "q": "0.010", "X": "MARKET", "m": True},
            ns + 3,
        ),
        # ... and bought; an out-of-order trade time is sorted.
        _binance(
            "btcusdt@trade",
            {
                "e": "trade",
                "E": E + 5,
                "T": E + 3,
                "t": 10,
                "p": "100.1",
                "q": "0.020",
                "X": "INSURANCE_FUND",
                "m": False,
            },
            ns + 4,
        ),
        _binance(
            "btcusdt@markPrice@1s",
            {
                "e": "markPriceUpdate",
                "E": E + 9,
                "p": "100.05",
                "P": "100.04",
                "i": "100.02",
                "r": "0.00002760",
                "T": 1723190400000,
            },
            ns + 5,
        ),
        # A crossed book: dropped and counted.
        _binance(
            "btcusdt@bookTicker",
            {"e": "bookTicker", "u": 5, "b": "100.2", "B": "1", "a": "100.1", "A": "1", "T": E + 6, "E": E + 6},
            ns + 6,
        ),
        # Malformed: garbage, truncated JSON, bad number, missing field, NaN price, bad m,
        # non-integer timestamp, empty line, absurd timestamp, NaN exchange time.
        "garbage",
        f'{ns} {{"stream": "btcusdt@trade", "data": {{"e": "trade"',
        _binance("btcusdt@trade", {"e": "trade", "T": E, "t": 1, "p": "abc", "q": "1", "m": True}, ns),
        _binance("btcusdt@trade", {"e": "trade", "T": E, "t": 1, "p": "100", "m": True}, ns),
        _binance("btcusdt@bookTicker", {"e": "bookTicker", "b": "nan", "B": "1", "a": "100.1", "A": "1", "T": E}, ns),
        _binance("btcusdt@trade", {"e": "trade", "T": E, "t": 1, "p": "100", "q": "1", "m": "yes"}, ns),
        "12.5x " + json.dumps({"stream": "s", "data": {}}),
        "",
        "9" * 400 + " " + json.dumps({"stream": "s", "data": {}}),
        _binance("btcusdt@trade", {"e": "trade", "T": float("nan"), "t": 1, "p": "100", "q": "1", "m": True}, ns),
    ]
    cap = data.read_capture(_write_gz(tmp_path / "cap.gz", lines))
    assert cap["venue"] == "binance"
    assert "btcusdt" in cap["symbols"]
    assert cap["malformed"] == 10
    assert cap["crossed"] == 1
    assert cap["messages"]["depth"] == 1 and cap["messages"]["snapshot"] == 1
    tr = cap["trades"]
    assert list(tr.columns) == list(data.TRADE_COLUMNS)
    assert tr["trade_id"].tolist() == [10, 11]
    assert tr["side"].tolist() == [1, -1]  # m=False: aggressive buy
    assert tr["type"].tolist() == ["INSURANCE_FUND", "MARKET"]
    assert tr["time"].iloc[0] == pytest.approx((E + 3) / 1e3, abs=1e-6)
    assert tr["local_time"].iloc[0] == pytest.approx((ns + 4) / 1e9, abs=1e-6)
    assert tr["price"].dtype == np.float64 and tr["side"].dtype == np.int8
    bt = cap["book_ticker"]
    assert len(bt) == 1 and bt["bid_qty"].iloc[0] == 1.5 and bt["ask"].iloc[0] == 100.1
    assert bt["time"].iloc[0] == pytest.approx((E + 1) / 1e3)
    mp = cap["mark_price"]
    assert len(mp) == 1 and mp["funding_rate"].iloc[0] == pytest.approx(2.76e-5)
    assert mp["next_funding_time"].iloc[0] == pytest.approx(1723190400.0)
    assert "depth" not in cap


def test_read_capture_depth_and_microsecond_stamps(tmp_path):
    us = 1680652800_005_184  # 16 digits: microseconds
    E = 1680652800016
    lines = [
        _binance(
            "btcusdt@depth@0ms",
            {
                "e": "depthUpdate",
                "E": E,
                "T": E - 7,
                "U": 2,
                "u": 3,
                "pu": 1,
                "b": [["100.0", "0.5"], ["99.9", "0"]],
                "a": [["100.1", "1.25"]],
            },
            us,
        ),
        f"{us + 10} "
        + json.dumps({"lastUpdateId": 1, "E": E, "T": E, "bids": [["100.0", "1"]], "asks": [["100.2", "2"]]}),
        # spot bookTicker: no e/E/T, time falls back to the receive time
        _binance(
            "btcusdt@bookTicker", {"u": 4, "s": "BTCUSDT", "b": "100.0", "B": "1", "a": "100.1", "A": "2"}, us + 20
        ),
        _binance("btcusdt@depth@0ms", {"e": "depthUpdate", "E": E, "T": E, "b": [["x", "1"]], "a": []}, us + 30),
    ]
    cap = data.read_capture(_write_gz(tmp_path / "cap.dat.gz", lines), depth=True)
    d = cap["depth"]
    assert list(d.columns) == list(data.DEPTH_COLUMNS)
    # The diff before the snapshot is refused (the book is built from a snapshot first).
    assert len(d) == 2 and cap["malformed"] == 1 and cap["rejected"] == {"depth_before_snapshot": 1}
    assert d["snapshot"].tolist() == [True, True]
    assert d["side"].tolist() == [1, -1]
    assert d["time"].iloc[0] == pytest.approx(E / 1e3)
    assert d["local_time"].iloc[0] == pytest.approx((us + 10) / 1e6)
    bt = cap["book_ticker"]
    assert bt["time"].iloc[0] == pytest.approx((us + 20) / 1e6)


def test_read_capture_hyperliquid_synthetic(tmp_path):
    ns = 1737918843893903000
    book = {
        "channel": "l2Book",
        "data": {
            "coin": "BTC",
            "time": 1737918843542,
            "levels": [
                [{"px": "105055.0", "sz": "3.0", "n": 5}, {"px": "105054.0", "sz": "0.1", "n": 1}],
                [{"px": "105056.0", "sz": "0.5", "n": 2}],
            ],
        },
    }
    trades = {
        "channel": "trades",
        "data": [
            {"coin": "BTC", "px": "105056.0", "side": "B", "sz": "0.002", "tid": 7, "time": 1737918844000},
            {"coin": "BTC", "px": "105055.0", "side": "A", "sz": "0.010", "tid": 8, "time": 1737918844100},
        ],
    }
    bad = {"channel": "trades", "data": [{"coin": "BTC", "px": "1", "side": "X", "sz": "1", "tid": 9, "time": 1}]}
    lines = [f"{ns} {json.dumps(book)}", f"{ns + 1} {json.dumps(trades)}", f"{ns + 2} {json.dumps(bad)}"]
    cap = data.read_capture(_write_gz(tmp_path / "hl.gz", lines))
    assert cap["venue"] == "hyperliquid" and cap["malformed"] == 1
    tr = cap["trades"]
    assert tr["side"].tolist() == [1, -1] and tr["qty"].tolist() == [0.002, 0.010]
    assert tr["time"].iloc[1] == pytest.approx(1737918844.1)
    bt = cap["book_ticker"]
    assert bt.iloc[0][["bid", "bid_qty", "ask", "ask_qty"]].tolist() == [105055.0, 3.0, 105056.0, 0.5]
    cap = data.read_capture(tmp_path / "hl.gz", depth=True)
    assert len(cap["depth"]) == 3 and cap["depth"]["snapshot"].all()


# ----------------------------------------------------------------------------------------------
# Synthetic CSVs


def test_read_funding_shifts_utc_plus_3_and_infers_interval(tmp_path):
    p = tmp_path / "f.csv"
    p.write_text(
        "Symbol,Date,Funding Rate\n"
        "BTC-USDT,2021-01-01 03:00:00.000,0.0001\n"
        "BTC-USDT,2021-01-01 11:00:00.001,-0.0002\n"
        "BTC-USDT,2021-01-01 19:00:00,0.0003\n"
        "BTC-USDT,not a date,0.1\n"
        "BTC-USDT,2021-01-02 03:00:00,oops\n"
        "BTC-USDT,2021-01-02 03:00:00,0.0004\n"
    )
    f = data.read_funding(p)
    assert f.attrs["interval_hours"] == 8.0
    assert f.attrs["utc_offset_hours"] == 3.0
    assert f.attrs["malformed"] == 2
    assert f["date"].dt.hour.tolist() == [0, 8, 16, 0]
    assert f["rate"].tolist() == [1e-4, -2e-4, 3e-4, 4e-4]
    assert f["time"].iloc[0] == pd.Timestamp("2021-01-01", tz="UTC").timestamp()
    # Hourly settlements on the hour are already UTC; an explicit offset overrides detection.
    q = tmp_path / "h.csv"
    q.write_text("Symbol,Date,Funding Rate\n" + "".join(f"BTC-USDT,2022-01-01 {h:02d}:00:00,1e-5\n" for h in range(6)))
    h = data.read_funding(q)
    assert h.attrs["interval_hours"] == 1.0 and h.attrs["utc_offset_hours"] == 0.0
    assert data.read_funding(p, utc_offset_hours=0.0)["date"].dt.hour.tolist() == [3, 11, 19, 3]


def test_read_bars_both_layouts(tmp_path):
    a = tmp_path / "a.csv"
    a.write_text(
        "timestamp,open,high,low,close,volume\n"
        "2021-12-31 23:02:00.000000,2,3,1,2.5,10\n"
        "2021-12-31 23:01:00.000000,1,2,1,2,5\n"
        "2021-12-31 23:03:00.000000,2,3,1,-1,5\n"
    )
    b = tmp_path / "b.csv"
    b.write_text(
        "open_time,open,high,low,close,volume\n"
        "2023-03-01 00:00:00+00:00,1,2,1,2,0.5\n"
        "2023-03-01 00:00:00+00:00,1,2,1,2,0.5\n"
    )
    x = data.read_bars(a)
    assert x["close"].tolist() == [2.0, 2.5] and x.attrs["malformed"] == 1
    assert x["time"].diff().iloc[1] == 60.0
    y = data.read_bars(b)
    assert len(y) == 1 and y.attrs["malformed"] == 1
    assert y["time"].iloc[0] == pd.Timestamp("2023-03-01", tz="UTC").timestamp()


def test_read_hl_liquidations_with_trade_join(tmp_path):
    liq = tmp_path / "l.csv"
    liq.write_text(
        "time,user,liquidated_ntl_pos,liquidated_account_value,leverage_type\n"
        "2023-03-12T11:26:44Z,0xa,361.8,3.5,Cross\n"
        "2023-03-13T09:38:06Z,0xb,214.2,1.0,Isolated\n"
        "bad,0xc,1,1,Cross\n"
    )
    trd = tmp_path / "t.csv"
    trd.write_text(
        "time,user,coin,side,px,sz,crossed\n"
        "2023-03-12T11:26:44Z,0xa,ETH,Ask,1600,0.1,false\n"
        "2023-03-12T11:26:44Z,0xa,ETH,Ask,1600,0.05,false\n"
        "2023-03-12T11:26:44Z,0xa,SOL,Ask,20,1,false\n"
        "2023-03-12T11:26:45Z,0xb,BTC,Bid,20000,1,true\n"
        "2023-03-12T11:26:45Z,0xb,BTC,Sideways,20000,1,true\n"
    )
    t = data.read_hl_trades(trd)
    assert len(t) == 4 and t.attrs["malformed"] == 1
    plain = data.read_hl_liquidations(liq)
    assert len(plain) == 2 and plain.attrs["malformed"] == 1
    assert plain["notional"].tolist() == [361.8, 214.2]
    j = data.read_hl_liquidations(liq, trades=t)
    assert j["coin"].tolist() == ["ETH", ""]
    assert j["side"].tolist() == [-1, 0]  # the account sold: a long was liquidated
    assert j["qty"].iloc[0] == pytest.approx(0.15) and j["n_fills"].tolist() == [2, 0]


# ----------------------------------------------------------------------------------------------
# Real files


def _real(name: str) -> Path:
    d = data.data_dir()
    if d is None:
        pytest.skip("real data directory not found (set MMSIM_DATA or place it at ../shared/data)")
    p = d / name
    if not p.is_file():
        pytest.skip(f"{name} not in the data directory")
    return p


@pytest.fixture(scope="module")
def usdm_2024():
    return data.read_capture(_real("hftbacktest_binance_usdm_btcusdt_20240808.gz"))


def test_real_usdm_btcusdt_2024(usdm_2024):
    cap = usdm_2024
    assert cap["malformed"] == 0 and cap["venue"] == "binance"
    assert cap["messages"] == {"depth": 6551, "bookTicker": 66089, "trade": 21313, "snapshot": 1}
    tr = cap["trades"]
    assert len(tr) == 21313
    assert (tr["side"] == 1).sum() == 9616 and (tr["side"] == -1).sum() == 11697
    assert (tr["type"] == "MARKET").all()
    assert tr["price"].min() == 61590.3 and tr["price"].max() == 61839.9
    assert np.all(np.diff(tr["trade_id"]) == 1)  # contiguous ids, no gap
    start = pd.Timestamp("2024-08-08 23:54:15", tz="UTC").timestamp()
    assert start < tr["time"].min() and tr["time"].max() < start + 346
    # The recorder's clock runs about 1.27 s behind the exchange's.
    lag = np.median(tr["time"] - tr["local_time"])
    assert 1.1 < lag < 1.4
    bt = cap["book_ticker"]
    assert len(bt) == 66089 and (bt["ask"] > bt["bid"]).all()
    assert len(cap["mark_price"]) == 0


def test_real_usdm_btcusdt_2023_pair():
    a = data.read_capture(_real("hftbacktest_binance_usdm_btcusdt_20230404.dat.gz"))
    b = data.read_capture(_real("hftbacktest_binance_usdm_btcusdt_20230405.dat.gz"))
    assert a["malformed"] == 0 and b["malformed"] == 0
    assert len(a["trades"]) == 2197 and len(b["trades"]) == 10738
    assert (a["trades"]["side"] == 1).sum() == 1370 and (b["trades"]["side"] == 1).sum() == 5110
    # microsecond local stamps agree with the exchange time within ~40 ms (and a backlog)
    d = (a["trades"]["local_time"] - a["trades"]["time"]).abs()
    assert d.median() < 0.05
    # the continuation: trade ids run on across midnight
    assert b["trades"]["trade_id"].iloc[0] == a["trades"]["trade_id"].iloc[-1] + 1
    ins = b["trades"][b["trades"]["type"] == "INSURANCE_FUND"]
    assert len(ins) == 1 and ins["price"].iloc[0] == 28722.5
    mp = b["mark_price"]
    assert len(mp) == 415 and len(a["mark_price"]) == 99
    assert 2.75e-5 <= mp["funding_rate"].min() and mp["funding_rate"].max() <= 2.85e-5


def test_real_other_captures_parse_cleanly():
    for name, n_trades in (
        ("hftbacktest_binance_usdm_ethusdt_20240808.gz", 14076),
        ("hftbacktest_binance_coinm_btcusd_perp_20240808.gz", 2286),
        ("hftbacktest_binance_spot_btcusdt_20240808.gz", 9757),
    ):
        cap = data.read_capture(_real(name))
        assert cap["malformed"] == 0 and len(cap["trades"]) == n_trades, name
        assert len(cap["book_ticker"]) > 0
    hl = data.read_capture(_real("hftbacktest_hyperliquid_btc_20250126.gz"))
    assert hl["venue"] == "hyperliquid" and hl["malformed"] == 0
    assert hl["messages"] == {"l2Book": 46, "trades": 9}
    assert len(hl["book_ticker"]) == 46
    assert set(hl["trades"]["side"]) == {1, -1}
    assert hl["trades"]["price"].between(105_000, 105_100).all()


def test_real_funding_files():
    b = data.read_funding(_real("funding_BTC-USDT_binance_2020-01-01_2024-01-01_funding_history.csv"))
    assert len(b) == 4383 and b.attrs["interval_hours"] == 8.0 and b.attrs["utc_offset_hours"] == 3.0
    assert set(b["date"].dt.round("1h").dt.hour) == {0, 8, 16}
    assert b["rate"].min() == pytest.approx(-0.003) and b["rate"].max() == pytest.approx(0.003)
    assert b["rate"].mean() == pytest.approx(1.37e-4, rel=0.01)
    y = data.read_funding(_real("funding_BTC-USDT_bybit_2021-01-01_2024-01-01_funding_history.csv"))
    assert len(y) == 3285 and set(y["date"].dt.hour) == {0, 8, 16}
    x = data.read_funding(_real("funding_BTC-USDT_dydx_2022-01-01_2024-01-01_funding_history.csv"))
    assert len(x) == 17520 and x.attrs["interval_hours"] == 1.0 and x.attrs["utc_offset_hours"] == 0.0


def test_real_bars():
    f = data.read_bars(_real("ftx_btc-perp_1m_20211231-20220201.csv"))
    assert len(f) == 45031 and f.attrs["malformed"] == 0
    assert (np.diff(f["time"]) == 60).all()  # no gaps
    assert f["low"].min() == pytest.approx(32837, abs=1) and f["high"].max() == pytest.approx(48080, abs=1)
    u = data.read_bars(_real("binanceus_btcusdt_1m_20230301-20230321.csv"))
    assert len(u) == 30240 and (np.diff(u["time"]) == 60).all()
    assert u["low"].min() == pytest.approx(19565.4)


def test_real_hyperliquid_liquidations():
    t = data.read_hl_trades(_real("hyperliquid_non_mm_trades_2023-02_2023-05.csv"))
    assert len(t) == 35691 and t.attrs["malformed"] == 0
    liq = data.read_hl_liquidations(_real("hyperliquid_liquidations_2023-02_2023-05.csv"), trades=t)
    assert len(liq) == 62
    assert liq["notional"].median() == pytest.approx(1190, rel=0.01)
    assert liq["notional"].max() == pytest.approx(36_800, rel=0.01)
    assert (liq["leverage_type"] == "Cross").sum() == 54
    assert (liq["coin"] != "").mean() > 0.9


def _bars(rows) -> str:
    return "timestamp,open,high,low,close,volume\n" + "".join(
        f"2021-12-31 23:{m:02d}:00,{o},{h},{lo},{c},{v}\n" for m, (o, h, lo, c, v) in enumerate(rows)
    )


@pytest.mark.parametrize(
    "bad, what",
    [
        ((100, 99, 101, 100, 1), "high_low_inconsistent"),  # high < low
        ((100, 100.5, 99.5, 100, -3), "bad_volume"),
        ((100, 100_500, 99.5, 100_000, 1), "outside_band"),  # a x1000 close
        ((100, "inf", 99.5, 100, 1), "bad_price_or_time"),
    ],
)
def test_implausible_bars_are_counted_and_dropped(tmp_path, bad, what):
    good = [(100, 100.5, 99.5, 100 + 0.1 * (k % 3), 1) for k in range(40)]
    p = tmp_path / "b.csv"
    p.write_text(_bars(good[:20] + [bad] + good[20:]))
    b = data.read_bars(p)
    assert b.attrs["rejected"] == {what: 1} and len(b) == 40


def test_unreadable_csvs_are_one_line_errors_naming_the_file(tmp_path):
    cases = {
        "empty.csv": b"",
        "binary.csv": b"\xff\xfe\x00\x81garbage\n\x00\x01",
        "nocol.csv": b"timestamp,open,high,low,volume\n2021-12-31 23:00:00,1,2,1,3\n",
    }
    for name, body in cases.items():
        (tmp_path / name).write_bytes(body)
    with pytest.raises(data.DataError, match=r"empty.csv: empty file"):
        data.read_bars(tmp_path / "empty.csv")
    with pytest.raises(data.DataError, match=r"binary.csv: not a text CSV \(undecodable byte at offset 0\)"):
        data.read_bars(tmp_path / "binary.csv")
    with pytest.raises(data.DataError, match=r"nocol.csv: no column 'close'"):
        data.read_bars(tmp_path / "nocol.csv")
    with pytest.raises(data.DataError, match="a directory"):
        data.read_funding(tmp_path)


def test_a_semicolon_csv_reads_like_a_comma_one(tmp_path):
    rows = [(100, 100.5, 99.5, 100, 1), (100, 100.5, 99.5, 100.2, 2)]
    comma, semi = tmp_path / "c.csv", tmp_path / "s.csv"
    comma.write_text(_bars(rows))
    semi.write_text(_bars(rows).replace(",", ";"))
    pd.testing.assert_frame_equal(data.read_bars(comma), data.read_bars(semi))


def test_a_funding_date_with_its_zone_is_never_shifted_again(tmp_path):
    p = tmp_path / "z.csv"
    p.write_text(
        "Symbol,Date,Funding Rate\n"
        + "".join(f"BTC-USDT,2021-01-0{d} {h:02d}:00:00+00:00,1e-4\n" for d in (1, 2) for h in (3, 11, 19))
    )
    f = data.read_funding(p)
    assert f.attrs["utc_offset_hours"] == 0.0 and f["date"].dt.hour.tolist() == [3, 11, 19] * 2


_DEPTH_US, _DEPTH_E = 1680652800_005_184, 1680652800016  # receive time (us) and exchange time (ms)


def _depth_diff(U, u, pu, bids=(("100.0", "1"),), asks=()):
    d = {"e": "depthUpdate", "E": _DEPTH_E, "T": _DEPTH_E, "U": U, "u": u, "pu": pu, "b": list(bids), "a": list(asks)}
    return _binance("btcusdt@depth@0ms", d, _DEPTH_US)


def _depth_snapshot(last_id: int) -> str:
    body = {"lastUpdateId": last_id, "E": _DEPTH_E, "T": _DEPTH_E, "bids": [["100.0", "1"]], "asks": [["100.2", "2"]]}
    return f"{_DEPTH_US} " + json.dumps(body)


def test_depth_diffs_follow_the_snapshot_and_a_gap_is_counted(tmp_path):
    diff = _depth_diff
    lines = [
        _depth_snapshot(10),
        diff(5, 8, 4),
        diff(9, 12, 8),
        diff(13, 15, 12),
        diff(17, 18, 16),
        diff(19, 20, 18),
        _depth_snapshot(20),
        diff(20, 22, 20),
        diff(23, 24, 22),
    ]
    cap = data.read_capture(_write_gz(tmp_path / "d.gz", lines), depth=True)
    # 5-8 ends before the snapshot (in it already); 17-18 after 13-15 is a gap, counted, and the
    # chain goes on from it (19-20); the second snapshot restarts the chain (20-22, 23-24).
    assert cap["rejected"] == {"depth_before_snapshot_id": 1, "depth_gap": 1}
    d = cap["depth"]
    assert (~d["snapshot"]).sum() == 6


def test_a_depth_diff_that_crosses_the_book_waits_for_the_next_snapshot(tmp_path):
    diff = _depth_diff
    lines = [
        _depth_snapshot(10),
        diff(9, 12, 8, bids=[["100.1", "1"]]),  # 100.1 < 100.2: fine
        diff(13, 14, 12, bids=[["100.3", "1"]]),  # a bid above the ask: crossed
        diff(15, 16, 14, bids=(), asks=[["100.4", "1"]]),  # refused: waiting for a snapshot
        diff(17, 18, 16, bids=(), asks=[["100.2", "0"]]),
    ]
    cap = data.read_capture(_write_gz(tmp_path / "x.gz", lines), depth=True)
    assert cap["rejected"] == {"depth_crossed": 1, "depth_before_snapshot": 2}
    assert cap["depth"]["price"].tolist() == [100.0, 100.2, 100.1]  # the snapshot and the one good diff
