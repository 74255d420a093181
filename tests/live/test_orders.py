"""The orders gateway against the local venue emulator (a real HTTP server on 127.0.0.1 taking
signed post-only orders and filling them by the shared fill rule; nothing leaves the machine, every
wait is bounded): signing, the venue's refusals, keeping and replacing orders, the limits, fills
read back and booked by the engine, reconciliation, cancel-all at every stop, a resumed session,
and keys that never reach a file."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time

import numpy as np
import pytest

from mmsim import cli
from mmsim import config as mcfg
from mmsim.live import emulator, journal, venue
from mmsim.live import orders as lo
from mmsim.live import session as ls
from mmsim.live.replay import Trader
from tests.live.test_guard import T0_MS, _line, book, mark, write
from tests.live.test_session import _mmsim, _obs
from tests.test_config import write_best

KEY, SECRET = "test-key-0123456789", "test-secret-abcdefghijklmnopqrstuvwxyz"
CREDS = lo.Credentials(KEY, SECRET)
SKEW = 1e12  # the recording is years old: the guard's receive-time check is lifted for it


def test_the_signature_is_binances_documented_examples():
    # The USD-M futures and the spot API documentation's worked examples.
    q = "symbol=BTCUSDT&side=BUY&type=LIMIT&quantity=1&price=9000&timeInForce=GTC&recvWindow=5000"
    q += "&timestamp=1591702613943"
    assert lo.sign(q, "2b5eb11e18796d12d88f13dc27dbbd02c2cc51ff7059765ed9821957d82bb4d9") == (
        "3c661234138461fcc7a7d8746c6558c9842d4e10870d2ecbedf7777cad694af9"
    )
    q = "symbol=LTCBTC&side=BUY&type=LIMIT&timeInForce=GTC&quantity=1&price=0.1&recvWindow=5000&timestamp=1499827319559"
    assert lo.sign(q, "NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j") == (
        "c8db56825ae71d6d79447849e617115f4a920fa2acdcab2b053c4b2838bd6b71"
    )


def test_credentials_come_from_the_environment_and_never_show(monkeypatch):
    monkeypatch.delenv("MMSIM_API_SECRET", raising=False)
    monkeypatch.setenv("MMSIM_API_KEY", KEY)
    with pytest.raises(ValueError, match=r"\$MMSIM_API_SECRET \(live.api_secret_env\) not set"):
        lo.Credentials.from_env("MMSIM_API_KEY", "MMSIM_API_SECRET")
    monkeypatch.setenv("MMSIM_API_SECRET", SECRET)
    c = lo.Credentials.from_env("MMSIM_API_KEY", "MMSIM_API_SECRET")
    assert c.secret == SECRET and SECRET not in repr(c) and KEY not in repr(c)
    for bad in ("key with space", "key\n", "key\x00", ""):  # could not go into a header as it is
        with pytest.raises(ValueError, match="API secret is empty or holds whitespace") as e:
            lo.Credentials(KEY, bad)
        assert bad not in str(e.value) or not bad


class _Broken:
    """A connection whose every request fails as a keep-alive the venue closed does, counting."""

    made = 0

    def __init__(self, *a, error=ConnectionResetError("reset"), **kw):
        type(self).made += 1
        self.error = error

    def request(self, *a, **kw):
        raise self.error

    def close(self):
        pass


def test_a_post_is_not_retried_and_no_error_quotes_a_header(monkeypatch):
    rest = lo.Rest("http://127.0.0.1:9", CREDS)
    rest._conn_cls = _Broken
    _Broken.made = 0
    with pytest.raises(OSError, match="GET /x"):
        rest.call("GET", "/x")
    assert _Broken.made == 2  # an idempotent request: retried once on a fresh connection
    _Broken.made = 0
    with pytest.raises(OSError, match="POST /fapi/v1/order"):
        rest.call("POST", "/fapi/v1/order", {"symbol": "BTCUSDT"})
    assert _Broken.made == 1  # an order: never sent twice
    # http.client refuses a bad header with its value in the message: the error here has none.
    rest._conn_cls = lambda *a, **kw: _Broken(error=ValueError(f"Invalid header value {KEY!r}"))
    with pytest.raises(OSError, match="could not be encoded") as e:
        rest.call("GET", "/x")
    assert KEY not in str(e.value)


# -- the venue on its own (requests built by hand) ----------------------------------------------


def _req(v: venue.Venue, method: str, path: str, key: str = KEY, secret: str = SECRET, ts_ms=None, **params):
    import urllib.parse

    q = urllib.parse.urlencode({**params, "recvWindow": 5000, "timestamp": ts_ms or int(time.time() * 1000)})
    return v.handle(method, f"{path}?{q}&signature={lo.sign(q, secret)}", {"x-mbx-apikey": key})


def _market(v: venue.Venue, bid: float, bid_qty: float = 2.0, ask_qty: float = 3.0, t_ms: int = T0_MS) -> None:
    d = {"e": "bookTicker", "s": "BTCUSDT", "b": f"{bid:.1f}", "B": f"{bid_qty}", "a": f"{bid + 0.1:.1f}"}
    v.on_message(json.dumps({"stream": "btcusdt@bookTicker", "data": {**d, "A": f"{ask_qty}", "T": t_ms}}))


def _print(v: venue.Venue, px: float, qty: float, sell: bool, t_ms: int = T0_MS) -> None:
    d = {"e": "trade", "s": "BTCUSDT", "p": f"{px:.1f}", "q": f"{qty}", "m": sell, "X": "MARKET", "T": t_ms}
    v.on_message(json.dumps({"stream": "btcusdt@trade", "data": d}))


def _new(v, side, price, qty, **kw):
    p = dict(symbol="BTCUSDT", side=side, type="LIMIT", timeInForce="GTX", price=price, quantity=qty)
    return _req(v, "POST", "/fapi/v1/order", **{**p, **kw})


def test_the_venue_refuses_what_binance_refuses():
    v = venue.Venue(KEY, SECRET)
    _market(v, 60_000.0)
    assert _new(v, "BUY", "59999.0", "0.01", key="other")[1]["code"] == -2014
    assert _new(v, "BUY", "59999.0", "0.01", secret="wrong")[1]["code"] == -1022
    assert _new(v, "BUY", "59999.0", "0.01", ts_ms=int(time.time() * 1000) - 60_000)[1]["code"] == -1021
    assert _new(v, "BUY", "59999.05", "0.01")[1]["code"] == -4014  # off the tick
    assert _new(v, "BUY", "59999.0", "0.0105")[1]["code"] == -4003  # off the size step
    assert _new(v, "BUY", "59999.0", "0.001")[1]["code"] == -4164  # under the minimum notional
    assert _new(v, "BUY", "60000.1", "0.01")[1]["code"] == lo.POST_ONLY_REJECTED  # would take the ask
    assert _new(v, "SELL", "60000.0", "0.01")[1]["code"] == lo.POST_ONLY_REJECTED
    assert _new(v, "BUY", "59999.0", "0.01", type="MARKET")[1]["code"] == -1116
    assert _req(v, "DELETE", "/fapi/v1/order", symbol="BTCUSDT", orderId=99)[1]["code"] == lo.UNKNOWN_ORDER
    assert not v.open and not v.trades


def test_the_venue_fills_by_the_shared_rule():
    """At the touch an order waits behind the displayed 2.0; inside the spread it is first; a trade
    through its price fills it whole."""
    v = venue.Venue(KEY, SECRET)
    _market(v, 60_000.0, bid_qty=2.0)
    s, at_touch = _new(v, "BUY", "60000.0", "0.5")
    assert s == 200 and at_touch["status"] == "NEW"
    _print(v, 60_000.0, 1.5, sell=True)  # 1.5 of the 2.0 ahead
    assert not v.trades
    _print(v, 60_000.0, 0.7, sell=True)  # 0.2 reaches us
    assert [float(t["qty"]) for t in v.trades] == pytest.approx([0.2])
    _print(v, 60_000.0, 0.7, sell=False)  # a buy does not fill a bid
    _print(v, 59_999.0, 0.01, sell=True)  # through: the remaining 0.3
    assert [float(t["qty"]) for t in v.trades] == pytest.approx([0.2, 0.3]) and not v.open
    pos = _req(v, "GET", "/fapi/v2/positionRisk", symbol="BTCUSDT")[1][0]
    assert float(pos["positionAmt"]) == pytest.approx(0.5) and float(pos["entryPrice"]) == pytest.approx(60_000.0)
    # An ask one tick inside a two-tick spread is first in line.
    _market(v, 60_000.0)
    v.ask = 60_000.2
    _new(v, "SELL", "60000.1", "0.2")
    _print(v, 60_000.1, 0.15, sell=False)
    assert float(v.trades[-1]["qty"]) == pytest.approx(0.15) and v.trades[-1]["side"] == "SELL"
    assert float(_req(v, "GET", "/fapi/v2/positionRisk", symbol="BTCUSDT")[1][0]["positionAmt"]) == pytest.approx(0.35)
    got = _req(v, "GET", "/fapi/v1/userTrades", symbol="BTCUSDT", fromId=2)[1]
    assert [t["id"] for t in got] == [2, 3]


# -- the gateway against the venue over HTTP ----------------------------------------------------


@pytest.fixture
def desk():
    """A venue on the loopback address and a gateway talking to it; events collected."""
    with _desk() as d:
        yield d


@contextlib.contextmanager
def _desk(venue_kw=None, **gateway_kw):
    v = venue.Venue(KEY, SECRET, **(venue_kw or {}))
    with emulator.Running(emulator.Emulator([], venue=v)) as em:
        events = []
        rest = lo.Rest(em.order_url, CREDS, timeout_s=2.0)
        limits = lo.Limits(max_position=1.0, leverage=20.0, max_orders_10s=50)
        g = lo.OrderGateway(
            rest, "BTCUSDT", limits, lambda what, **kw: events.append((what, kw)), tag="t1", **gateway_kw
        )
        _market(v, 60_000.0)
        try:
            yield v, g, events
        finally:
            rest.close()


def _quote(bid=59_999.0, ask=60_001.0, size=0.1, bid_on=True, ask_on=True):
    return {
        "bid_price": bid,
        "ask_price": ask,
        "bid_size": size,
        "ask_size": size,
        "bid_active": bid_on,
        "ask_active": ask_on,
    }


KW = dict(position=0.0, equity=10_000.0, mid=60_000.05, healthy=True)


def test_the_gateway_keeps_a_repeated_quote_and_replaces_a_changed_one(desk):
    v, g, events = desk
    assert g.start(0.1) == 0.0 and g.rules == lo.SymbolRules(0.1, 0.001, 0.001, 100.0)
    g.sync(_quote(), **KW)
    first = set(v.open)
    assert len(first) == 2 and g.counts["sent"] == 2
    g.sync(_quote(), **KW)  # the same quote: the same orders (their places in the queue kept)
    assert set(v.open) == first and g.counts["kept"] == 2
    g.sync(_quote(bid=59_998.0), **KW)  # the bid moves: cancelled and sent anew; the ask stays
    assert len(v.open) == 2 and len(set(v.open) & first) == 1 and g.counts["cancelled"] == 1
    g.sync(_quote(ask_on=False), **KW)  # the ask withdrawn
    assert [o.side for o in v.open.values()] == [1]
    g.sync(_quote(bid=60_000.1), **KW)  # would take the ask: the venue rejects it
    assert g.counts["post_only_rejected"] == 1 and g.orders[1] is None
    g.sync(_quote(), **{**KW, "healthy": False})  # an unhealthy feed: nothing new goes out
    assert not any(g.orders.values())
    assert g.cancel_all("stop") and not v.open
    kinds = [w for w, _ in events]
    assert kinds[:2] == ["cancel_all", "gateway_start"] and kinds.count("order") == g.counts["sent"] - 1
    assert SECRET not in json.dumps(events)


def test_fills_from_the_stream_and_the_trade_list_are_booked_once(desk):
    v, g, _ = desk
    g.start(0.1)
    g.sync(_quote(bid=60_000.0, ask=60_000.1, size=0.2), **KW)
    _print(v, 59_999.0, 0.01, sell=True, t_ms=T0_MS + 500)  # our bid traded through: trade 1
    g.stream_gen, g.stream_connected = 1, True  # a stream just connected: one read catches up
    assert g.fills(T0_MS + 1000) == pytest.approx((0.2, 60_000.0, 0.0, 0.0)) and g.counts["fill_reads"] == 1
    t1 = {**v.trades[0], "price": 60_000.0, "qty": 0.2}
    g.inbox.append(t1)  # the same fill, late on the stream: not booked again
    _print(v, 60_000.1, 3.1, sell=False, t_ms=T0_MS + 1500)  # trade 2, which the stream brings
    g.inbox.append({**v.trades[1], "price": 60_000.1, "qty": 0.1})
    assert g.fills(T0_MS + 2000) == pytest.approx((0.0, 0.0, 0.1, 60_000.1))
    assert g.counts["fill_reads"] == 1 and g.counts["stream_fills"] == 1 and g.counts["fills"] == 2
    g.stream_connected = False  # down: the trade list is read again, from the last booked fill on
    assert g.fills(T0_MS + 3000) == (0.0, 0.0, 0.0, 0.0) and g.counts["fill_reads"] == 2


def test_a_changed_size_replaces_and_an_unconfirmed_cancel_keeps_the_order(desk, monkeypatch):
    v, g, events = desk
    g.start(0.1)
    g.sync(_quote(size=0.2), **KW)
    first = set(v.open)
    g.sync(_quote(size=0.1), **KW)  # smaller: the venue must not hold more than the quote
    assert not set(v.open) & first and len(v.open) == 2 and g.counts["kept"] == 0
    second = set(v.open)
    g.sync(_quote(size=0.3), **KW)  # larger: a new order of the quote's size
    assert not set(v.open) & second and sorted(o.qty for o in v.open.values()) == [0.3, 0.3]
    g.sync(_quote(bid=60_000.0, size=0.3), **KW)  # at the touch, behind its 2.0
    _print(v, 60_000.0, 2.1, sell=True, t_ms=T0_MS + 100)  # 0.1 past the queue: 0.1 of our 0.3 fills
    assert g.fills(T0_MS + 1000) == pytest.approx((0.1, 60_000.0, 0.0, 0.0))
    third, kept = set(v.open), g.counts["kept"]
    g.sync(_quote(bid=60_000.0, size=0.3), **KW)  # partly filled at the quote's price: kept, and its place
    assert set(v.open) == third and g.counts["kept"] == kept + 2 and g.orders[1].open_qty == pytest.approx(0.2)

    call = g.rest.call

    def no_cancel(method, path, params=None, **kw):
        if method == "DELETE" and path == "/fapi/v1/order":
            raise OSError("DELETE /fapi/v1/order: timed out")
        return call(method, path, params, **kw)

    monkeypatch.setattr(g.rest, "call", no_cancel)
    bid = g.orders[1]
    g.sync(_quote(bid=59_998.0, size=0.3), **KW)  # the cancel gets no answer: the order may still rest
    assert g.orders[1] is bid and [o.price for o in v.open.values() if o.side == 1] == [60_000.0]
    assert events[-1][0] == "cancel_failed" and g.counts["venue_errors"] == 1
    monkeypatch.setattr(g.rest, "call", call)
    g.sync(_quote(bid=59_998.0, size=0.3), **KW)  # the venue answers again: replaced
    assert [o.price for o in v.open.values() if o.side == 1] == [59_998.0] and g.orders[1] is not bid


def test_near_the_venues_weight_limit_new_orders_and_read_backs_wait():
    # The gateway holds at 20 of the venue's 40 a minute.
    with _desk({"weight_limit": 40}, max_weight_share=0.5) as (v, g, _):
        g.start(0.1)  # exchangeInfo, cancel-all, the trade list and the position: 12
        assert g.rules.weight_limit == 40 and g.rest.used_weight == 12
        for k in range(8):  # a new price every time: two cancels (1 each) and two new orders (0)
            g.sync(_quote(bid=59_990.0 - k, ask=60_010.0 + k), **KW)
        assert g.counts["weight_held"] >= 2 and g.rest.used_weight >= 20
        assert v.refusals.get(-1003, 0) == 0 and v.max_weight_seen < 40  # the venue never had to refuse
        g._n = g.reconcile_every
        n = g.counts["reconciliations"]
        assert g.reconcile(0.0) == 0.0 and g.counts["reconciliations"] == n  # the read-back waits too


def test_a_venues_429_stops_every_request_for_its_retry_after():
    # The gateway's own guard off: the venue's limit binds.
    with _desk({"weight_limit": 14}, max_weight_share=1.0) as (v, g, events):
        g.start(0.1)  # 12
        g.sync(_quote(), **KW)  # two new orders (0)
        g.sync(_quote(bid=59_998.0, ask=60_002.0), **KW)  # two cancels: 14; two new orders
        g.sync(_quote(bid=59_997.0, ask=60_003.0), **KW)  # the first cancel: 15 > 14, HTTP 429
        assert v.refusals[-1003] == 1 and g.counts["backed_off"] == 1 and g.backing_off()
        back = [kw for w, kw in events if w == "venue_back_off"]
        assert back == [{"status": 429, "retry_s": 1.0}]
        g.sync(_quote(bid=59_996.0, ask=60_004.0), **KW)  # nothing is sent while backing off
        assert not g.cancel_all("test") and v.refusals[-1003] == 1
        time.sleep(1.1)
        assert not g.backing_off()
        g.cancel_all("test")  # after the Retry-After, requests go again (and meet the venue's limit)
        assert v.refusals[-1003] == 2


def test_the_limits_refuse_what_would_grow_the_position_past_them(desk):
    v, g, _ = desk
    g.start(0.1)
    g.sync(_quote(size=0.5), **{**KW, "position": 0.8})  # 1.3 > max_position 1.0: no bid; the ask reduces
    assert [o.side for o in v.open.values()] == [-1] and g.counts["refused"] == {"position_limit": 1}
    g.cancel_all("test")
    g.sync(_quote(size=0.5), **{**KW, "equity": 100.0})  # 0.5 x 60,000 / 20 = 1,500 of margin > 100
    assert not v.open and g.counts["refused"] == {"position_limit": 1, "margin": 2}
    g.sync(_quote(size=0.5), **{**KW, "equity": 100.0, "position": -0.4})  # the bid reduces: it goes out
    assert [o.side for o in v.open.values()] == [1] and g.counts["refused"]["margin"] == 3


def test_the_rate_limit_holds_new_orders_below_the_setting(desk):
    v, g, _ = desk
    g.start(0.1)
    g.limits.max_orders_10s = 5
    for k in range(10):  # a new price every time: every sync wants two new orders
        g.sync(_quote(bid=59_990.0 - k, ask=60_010.0 + k), **KW)
    assert g.counts["sent"] == 5 and g.counts["rate_limited"] == 15 and v.max_orders_10s_seen == 5


def test_fills_are_read_back_by_interval_and_a_difference_is_reconciled(desk):
    v, g, events = desk
    g.start(0.1)
    g.sync(_quote(bid=60_000.0, ask=60_000.1, size=0.2), **KW)
    _print(v, 59_999.0, 0.01, sell=True, t_ms=T0_MS + 500)  # through our bid: 0.2 at 60,000.0
    _print(v, 60_000.1, 3.1, sell=False, t_ms=T0_MS + 1500)  # 0.1 past the 3.0 ahead of our ask
    assert g.fills(T0_MS + 1000) == pytest.approx((0.2, 60_000.0, 0.0, 0.0))
    assert g.fills(T0_MS + 2000) == pytest.approx((0.0, 0.0, 0.1, 60_000.1))
    assert g.orders[1] is None and g.orders[-1].open_qty == pytest.approx(0.1)
    assert g.reconcile(0.1) == 0.0  # the engine holds what the venue does
    v.position += 0.05  # a fill the gateway never saw (a manual trade, say)
    g._n = g.reconcile_every  # its turn
    assert g.reconcile(0.1) == 0.0  # seen once: it may be a fill on its way to the trade list
    assert events[-1][0] == "reconcile_seen"
    g._n = g.reconcile_every
    assert g.reconcile(0.1) == pytest.approx(0.05)  # seen twice: booked
    assert events[-1][0] == "reconcile" and events[-1][1]["booked"] == pytest.approx(0.05)
    assert lo.with_correction((0.2, 60_000.0, 0.0, 0.0), 0.05, 60_010.0) == pytest.approx((0.25, 60_002.0, 0, 0))
    v.open[999] = venue._Order(999, "x", 1, 59_000.0, 0.01)  # an order we do not know: cancelled
    g._n = g.reconcile_every
    g.reconcile(0.15)
    assert 999 not in v.open


# -- sessions end to end ------------------------------------------------------------------------


def busy_lines(n_s: int = 40) -> list[str]:
    """A capture whose aggressors trade through the touch both ways every second (a book every
    250 ms drifting by a tick, a sell through the bid and a buy through the ask each second, a
    mark price every second), so that quotes near the touch fill."""
    out = []
    for k in range(n_s * 4):
        t = T0_MS + 250 * k
        bid = 60_000.0 + 0.1 * ((k // 8) % 5)
        out.append(book(t, bid))
        if k % 4 == 1:
            d = {"e": "trade", "E": t + 1, "T": t + 1, "p": f"{bid - 3.0:.1f}", "q": "1.500", "m": True}
            out.append(_line(t + 6, "btcusdt@trade", {**d, "t": k, "X": "MARKET"}))
        if k % 4 == 3:
            d = {"e": "trade", "E": t + 1, "T": t + 1, "p": f"{bid + 3.1:.1f}", "q": "1.500", "m": False}
            out.append(_line(t + 6, "btcusdt@trade", {**d, "t": k, "X": "MARKET"}))
        if k % 4 == 0:
            out.append(mark(t + 2, 1e-4, T0_MS + 3_600_000))
    return out


OVR = ["experiment=baseline", "engine.warmup_s=5"]


@pytest.fixture(scope="module")
def world():
    cfg = mcfg.compose(OVR)
    _, mp, ep, _ = mcfg.build(cfg)
    return ep, float(mp.fills.depth_per_tick), Trader(ep).step


@pytest.fixture(scope="module")
def busy(tmp_path_factory):
    return emulator.read_lines(write(tmp_path_factory.mktemp("cap") / "busy.gz", busy_lines()))


def orders_session(world, lines, run_dir, *, v=None, resume=False, speed=20.0, during=None, **st_kw):
    """An orders session against an emulator with a venue, in this process, at most 60 s
    (``during(session, emulator)``: a coroutine run beside it)."""
    ep, dpt, step = world
    v = v or venue.Venue(KEY, SECRET)

    async def main():
        em = await emulator.Emulator(lines, speed=speed, venue=v).start()
        kw = dict(ws_url=em.ws_url, rest_url=em.rest_url, order_url=em.order_url, max_clock_skew_s=SKEW, status_s=0)
        st = ls.LiveSettings(
            **{**kw, "gateway": "orders", "max_runtime_s": 60.0, "reconcile_every": 5, "depth": False, **st_kw}
        )
        s, _ = ls.open_session(ep, st, run_dir, symbol="BTCUSDT", depth_per_tick=dpt, step_fn=step,
                               resume=resume, credentials=CREDS)  # fmt: skip
        task = asyncio.create_task(during(s, em)) if during else None
        why = await s.run()
        if task:
            task.cancel()
        await em.stop()
        return s, why

    s, why = asyncio.run(main())
    return s, why, v, ls.result(s)


def _files_text(run_dir) -> str:
    return "".join(p.read_bytes().decode("latin-1") for p in run_dir.rglob("*") if p.is_file())


def test_an_orders_session_books_the_venues_fills_and_leaves_nothing_resting(world, busy, tmp_path):
    s, why, v, res = orders_session(world, busy, tmp_path, max_observations=30)
    assert why == "max_observations"
    c = res.metrics["live"]["orders"]
    assert res.metrics["live"]["gateway"] == "orders" and c["sent"] > 4 and c["fills"] > 2
    # The engine's account holds the venue's position, built from the venue's own fills; what
    # filled after the last observation's interval is named at the stop.
    end = res.metrics["live"]["venue_at_stop"]
    assert end["venue_position"] == pytest.approx(v.position) and end["cancelled"]
    engine_q = float(res.state.account.position[0])
    assert engine_q + end["unbooked_qty"] == pytest.approx(v.position, abs=1e-6)
    j = res.journal
    booked = j["fill_bid"].sum() - j["fill_ask"].sum()
    assert booked == pytest.approx(engine_q, abs=1e-6) and (j["fill_bid"] > 0).sum() + (j["fill_ask"] > 0).sum() > 0
    assert not v.open  # cancel-all at the stop
    assert v.refusals.get(-1022, 0) == 0 and v.refusals.get(-1021, 0) == 0  # every request signed and in time
    assert np.isfinite(j["equity"]).all()
    assert SECRET not in _files_text(tmp_path) and KEY not in _files_text(tmp_path)


def _booked_once(res, v, recs):
    """Every venue fill booked once: the journal's fills, and those after the last observation."""
    fills = [r for r in recs if r.get("what") == "fill"]
    end = res.metrics["live"]["venue_at_stop"]
    j = res.journal
    booked = j["fill_bid"].sum() - j["fill_ask"].sum()
    assert len({f["id"] for f in fills}) == len(fills)  # no fill booked twice
    assert booked == pytest.approx(float(res.state.account.position[0]), abs=1e-5)
    assert booked + end["unbooked_qty"] == pytest.approx(v.position, abs=1e-5)
    assert len(fills) + end["unbooked_fills"] == len(v.trades)
    return fills


def test_a_user_stream_event_is_read_as_the_venues_trade_list_has_it():
    o = {"s": "BTCUSDT", "x": "TRADE", "X": "PARTIALLY_FILLED", "i": 7, "t": 42, "S": "SELL", "L": "60000.1",
         "l": "0.004", "n": "0.01", "T": T0_MS}  # fmt: skip
    t = lo.trade_of_event({"e": "ORDER_TRADE_UPDATE", "o": o}, "BTCUSDT")
    assert t == {"id": 42, "orderId": 7, "side": "SELL", "price": 60000.1, "qty": 0.004, "commission": 0.01,
                 "time": T0_MS}  # fmt: skip
    for bad in (
        {"e": "ACCOUNT_UPDATE", "o": o},
        {"e": "ORDER_TRADE_UPDATE", "o": {**o, "x": "NEW"}},  # not a fill
        {"e": "ORDER_TRADE_UPDATE", "o": {**o, "s": "ETHUSDT"}},
        {"e": "ORDER_TRADE_UPDATE", "o": {**o, "l": "NaN"}},
        {"e": "ORDER_TRADE_UPDATE", "o": {**o, "L": "x"}},
        {"e": "ORDER_TRADE_UPDATE", "o": {k: v for k, v in o.items() if k != "t"}},
        {"e": "ORDER_TRADE_UPDATE", "o": {**o, "S": "HOLD"}},
        {"e": "ORDER_TRADE_UPDATE", "o": None},
        [1, 2],
    ):
        assert lo.trade_of_event(bad, "BTCUSDT") is None, bad


def test_the_venues_countdown_cancels_everything_when_it_runs_out(desk):
    v, g, events = desk
    g.dead_man_s = 1.0
    g.start(0.1)  # armed at the start
    assert g.counts["heartbeats"] == 1 and v.countdown_at is not None
    g.sync(_quote(), **KW)  # renewed only once a third of it has passed
    assert g.counts["heartbeats"] == 1 and len(v.open) == 2
    time.sleep(0.4)
    g.sync(_quote(), **KW)
    assert g.counts["heartbeats"] == 2
    deadline = time.monotonic() + 5.0
    while v.open and time.monotonic() < deadline:  # no renewal: the venue cancels by itself
        time.sleep(0.02)
    assert not v.open and v.countdown_cancels == 1 and v.countdown_at is None
    g._n = g.reconcile_every
    g.reconcile(0.0)  # the read-back (or the user-data stream's CANCELED events) finds them gone
    assert g.orders == {1: None, -1: None} and [w for w, _ in events].count("order_gone") == 2
    g.sync(_quote(), **KW)  # so the next sync sends new ones, and re-arms the countdown
    assert len(v.open) == 2 and g.counts["heartbeats"] == 3 and v.countdown_at is not None
    g.close("stop")
    assert not v.open and v.countdown_at is None  # switched off once nothing rests


def test_the_user_stream_tells_the_gateway_of_an_order_the_venue_cancelled(world, busy, tmp_path):
    async def cancel_behind_its_back(s, em):
        while s.seq < 8 or not em.venue.open:
            await asyncio.sleep(0.01)
        em.venue._cancel_all({})  # as the venue's countdown, or a cancel from another client

    s, why, v, res = orders_session(
        world, busy, tmp_path, during=cancel_behind_its_back, max_observations=20, reconcile_every=1000
    )
    recs, _ = journal.read(tmp_path)
    assert why == "max_observations" and any(r.get("what") == "order_gone" for r in recs)
    assert res.metrics["live"]["orders"]["reconciliations"] == 1  # the first, at the start: not a read-back


def test_a_hangup_ends_an_orders_session_cleanly(world, busy, tmp_path):
    import os

    async def hang_up(s, em):
        while s.seq < 6:
            await asyncio.sleep(0.01)
        os.kill(os.getpid(), signal.SIGHUP)

    s, why, v, res = orders_session(world, busy, tmp_path, during=hang_up, max_observations=60)
    assert why == "hangup" and not v.open and v.countdown_at is None
    assert res.metrics["live"]["orders"]["heartbeats"] >= 1


def test_the_listen_key_takes_the_api_key_alone():
    v = venue.Venue(KEY, SECRET)
    assert v.handle("POST", "/fapi/v1/listenKey", {"x-mbx-apikey": "other"})[1]["code"] == -2014
    assert v.handle("PUT", "/fapi/v1/listenKey", {"x-mbx-apikey": KEY})[1]["code"] == -1125  # none yet
    st, a = v.handle("POST", "/fapi/v1/listenKey", {"x-mbx-apikey": KEY})
    assert st == 200 and len(a["listenKey"]) == 64
    assert v.handle("POST", "/fapi/v1/listenKey", {"x-mbx-apikey": KEY})[1] == a  # the account's one key
    assert v.subscribe("0" * 64) is None and v.subscribe(a["listenKey"]) is not None
    assert v.handle("DELETE", "/fapi/v1/listenKey", {"x-mbx-apikey": KEY}) == (200, {}) and v.listen_key is None


def test_an_orders_session_takes_its_fills_from_the_user_stream(world, busy, tmp_path):
    """With the user-data stream the trade list is read at the first observations only (before the
    stream is up, and once after it connects); every fill comes once, as without it."""
    s, why, v, res = orders_session(world, busy, tmp_path / "a", max_observations=30)
    c, u = res.metrics["live"]["orders"], res.metrics["live"]["user_stream"]
    assert why == "max_observations" and u["on"] and u["connections"] == 1 and u["malformed"] == 0
    assert c["fills"] > 2 and c["stream_fills"] >= c["fills"] - 1 and c["fill_reads"] <= 3
    _booked_once(res, v, journal.read(tmp_path / "a")[0])
    s, why, v2, off = orders_session(world, busy, tmp_path / "b", max_observations=30, user_stream=False)
    co = off.metrics["live"]["orders"]
    assert co["fill_reads"] == 30 and co["stream_fills"] == 0 and off.metrics["live"]["user_stream"]["connections"] == 0
    _booked_once(off, v2, journal.read(tmp_path / "b")[0])


def test_a_dropped_user_stream_is_reconnected_and_no_fill_is_lost(world, busy, tmp_path):
    async def drop(s, em):
        for k, seq in ((1, 8), (2, 16)):  # the k-th connection dropped after observation seq
            while s.seq < seq or s.user_connections < k:
                await asyncio.sleep(0.01)
            em.venue.drop_user_streams()

    s, why, v, res = orders_session(world, busy, tmp_path, max_observations=30, during=drop, reconnect_min_s=0.05)
    recs, _ = journal.read(tmp_path)
    assert why == "max_observations" and res.metrics["live"]["user_stream"]["connections"] == 3
    assert sum(r.get("what") == "user_stream_disconnect" for r in recs) == 2
    c = res.metrics["live"]["orders"]
    assert c["fill_reads"] >= 3 and c["fills"] > 2  # the trade list read while it was down, and after
    _booked_once(res, v, recs)
    assert v.listen_key is None  # closed at the stop


def test_the_kill_switch_cancels_the_venues_orders(world, busy, tmp_path):
    kill = tmp_path / "KILL"
    v = venue.Venue(KEY, SECRET)
    orig = v._new

    def new_then_kill(p):  # the switch trips once orders rest
        out = orig(p)
        if len(v.open) >= 2:
            kill.touch()
        return out

    v._new = new_then_kill
    s, why, v, res = orders_session(world, busy, tmp_path / "run", v=v, kill_file=str(kill))
    assert why == "kill" and res.metrics["live"]["orders"]["sent"] >= 2 and not v.open


def test_a_resumed_orders_session_books_every_fill_once(world, busy, tmp_path):
    v = venue.Venue(KEY, SECRET)
    _, _, v, first = orders_session(world, busy, tmp_path, v=v, max_observations=12)
    v.open[7777] = venue._Order(7777, "left", 1, 59_000.0, 0.01)  # as if a killed session had left it
    # As after a crash: no snapshot, so the resume re-steps every observation with the venue's
    # journaled fills, and comes to the state the first session ended in.
    for f in tmp_path.glob("state-*.npz"):
        f.unlink()
    t = Trader(world[0], step_fn=world[2])
    assert journal.restore(tmp_path, t)["restepped"] == 12
    np.testing.assert_array_equal(np.asarray(t.state.account.cash), np.asarray(first.state.account.cash))
    np.testing.assert_array_equal(np.asarray(t.state.account.position), np.asarray(first.state.account.position))
    s, why, v, res = orders_session(world, busy, tmp_path, v=v, resume=True, max_observations=30)
    recs, _ = journal.read(tmp_path)
    assert s.seq == 30 and [r["seq"] for r in recs if r.get("k") == "obs"] == list(range(30))
    assert "resume" in {r.get("what") for r in recs}
    fills = [r for r in recs if r.get("what") == "fill"]
    assert first.metrics["live"]["orders"]["fills"] > 0 and len(fills) > first.metrics["live"]["orders"]["fills"]
    assert len({f["id"] for f in fills}) == len(fills)  # no fill booked twice
    # Every venue fill is booked once over the two sessions: the first's late ones by the second.
    end = res.metrics["live"]["venue_at_stop"]
    j = res.journal
    assert len(j) == 30 and first.metrics["live"]["venue_at_stop"]["unbooked_fills"] >= 0
    booked = j["fill_bid"].sum() - j["fill_ask"].sum()
    assert booked == pytest.approx(float(res.state.account.position[0]), abs=1e-5)
    assert booked + end["unbooked_qty"] == pytest.approx(v.position, abs=1e-5)
    assert len(fills) + end["unbooked_fills"] == len(v.trades)
    assert not v.open  # the order "left" by the first was cancelled at the second's start


def test_an_event_driven_session_cancels_its_orders_when_books_stop_but_trades_go_on(world, tmp_path):
    """``cadence=book``: an observation comes only with a book. Trades without books for more
    than ``stale_s`` (exchange time) pull the quotes and cancel the venue's orders at once."""
    lines = busy_lines(8)
    for k in range(60):  # 15 s of trades every 250 ms, and no book
        t = T0_MS + 8_000 + 250 * k
        d = {"e": "trade", "E": t, "T": t, "p": "60010.0", "q": "0.010", "m": k % 2 == 0}
        lines.append(_line(t + 5, "btcusdt@trade", {**d, "t": 1000 + k, "X": "MARKET"}))
    lines = emulator.read_lines(write(tmp_path / "books_stop.gz", lines))
    s, why, v, res = orders_session(
        world, lines, tmp_path / "run", cadence="book", cadence_s=0.05, stale_s=3.0, max_runtime_s=3.0, speed=10.0
    )
    recs, _ = journal.read(tmp_path / "run")
    ev = [r for r in recs if r["k"] == "event"]
    k = next(i for i, r in enumerate(ev) if r["what"] == "stale")
    assert 3.0 < ev[k]["book_age_s"] < 3.5
    assert ev[k + 1]["what"] == "cancel_all" and ev[k + 1]["why"] == "stale_book"
    assert not any(r["what"] == "order" for r in ev[k:])  # nothing new without a book
    last_obs = max(r["wall"] for r in recs if r["k"] == "obs")
    assert last_obs < ev[k]["wall"] and s.stale_events == 1 and not v.open


def test_orders_settings_are_safe_by_default():
    st = ls.LiveSettings(gateway="orders")
    assert st.order_url == lo.TESTNET_REST and st.ws_url == lo.TESTNET_WS and st.rest_url == lo.TESTNET_REST
    for url in (
        "https://fapi.binance.com",
        "https://FAPI.Binance.com.",
        "https://fapi-mm.binance.com",
        "http://10.0.0.1",
    ):
        with pytest.raises(ValueError, match=r"live.order_url .* neither the testnet.*live.mainnet=true"):
            ls.LiveSettings(gateway="orders", order_url=url)
    assert ls.LiveSettings(gateway="orders", order_url="http://127.0.0.1:9").order_url == "http://127.0.0.1:9"
    main = ls.LiveSettings(gateway="orders", mainnet=True)
    assert main.order_url == lo.MAINNET_REST and main.ws_url == ls.BINANCE_USDM_WS
    assert ls.LiveSettings().ws_url == ls.BINANCE_USDM_WS  # paper reads the mainnet's public streams
    for bad, field in (
        ({"gateway": "live"}, "live.gateway"),
        ({"max_orders_10s": 300}, "live.max_orders_10s"),
        ({"reconcile_every": 0}, "live.reconcile_every"),
        ({"api_key_env": "not a name"}, "live.api_key_env"),
        ({"mainnet": "yes"}, "live.mainnet"),
    ):
        with pytest.raises(ValueError, match=field):
            ls.LiveSettings(**bad)


def test_an_orders_session_refuses_a_policy_with_taker_orders(tmp_path):
    cfg = mcfg.compose(["experiment=baseline", "policy.event_flatten=0.5", "policy.event_times_s=[100]"])
    _, _, ep, _ = mcfg.build(cfg)
    with pytest.raises(ValueError, match="post-only limit orders only"):
        ls.open_session(ep, ls.LiveSettings(gateway="orders"), tmp_path, symbol="BTCUSDT", credentials=CREDS)


def test_mmsim_live_check_names_missing_keys_and_the_testnet(tmp_path, monkeypatch, capsys):
    best = str(write_best(tmp_path / "best.yaml", {"gamma": 0.0042}))
    monkeypatch.delenv("MMSIM_API_KEY", raising=False)
    monkeypatch.delenv("MMSIM_API_SECRET", raising=False)
    assert cli.main(["live", "--check", "--params", best, *OVR, "live.gateway=orders"]) == 2
    assert (
        "$MMSIM_API_KEY (live.api_key_env), $MMSIM_API_SECRET (live.api_secret_env) not set" in capsys.readouterr().err
    )
    monkeypatch.setenv("MMSIM_API_KEY", KEY)
    monkeypatch.setenv("MMSIM_API_SECRET", SECRET)
    assert cli.main(["live", "--check", "--params", best, *OVR, "live.gateway=orders"]) == 0
    out = capsys.readouterr().out
    assert f"orders on the testnet at {lo.TESTNET_REST}" in out and SECRET not in out and KEY not in out


def _kill_an_orders_session(lines, tmp_path, v, run, extra, *, speed, ready, after=None):
    """``mmsim live`` with the orders gateway against an emulated venue, as a user runs it,
    SIGKILLed once ``ready(v, run)`` (no clean-up at all): its output, and ``after(v)`` called
    while the venue still runs."""
    best = write_best(tmp_path / "best.yaml", {"gamma": 0.0042})
    env = {"MMSIM_API_KEY": KEY, "MMSIM_API_SECRET": SECRET}
    args = [f"live.max_clock_skew_s={SKEW}", "live.status_s=0", "live.gateway=orders", "live.depth=false"]
    with emulator.Running(emulator.Emulator(lines, speed=speed, venue=v)) as em:
        urls = [f"live.ws_url={em.ws_url}", f"live.rest_url={em.rest_url}", f"live.order_url={em.order_url}"]
        proc = _mmsim(["live", "--params", str(best), "--out", str(run), *urls, *args, *extra, *OVR], env_extra=env)
        deadline = time.monotonic() + 120
        while not ready(v, run) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        out = proc.communicate(timeout=10)[0].decode()
        extra_out = after(v) if after else None
    return out, extra_out


def test_the_venue_cancels_what_a_killed_session_left_once_its_countdown_runs_out(busy, tmp_path):
    """A dead-man switch of 1 s: the killed session's orders rest, nobody cancels them, and the
    venue does, within the countdown."""
    v = venue.Venue(KEY, SECRET)

    def wait_for_the_venue(v):
        killed_at, left = time.monotonic(), len(v.open)
        while v.open and time.monotonic() < killed_at + 5.0:
            time.sleep(0.02)
        return left, time.monotonic() - killed_at

    out, (left, gone) = _kill_an_orders_session(
        busy, tmp_path, v, tmp_path / "run", ["live.dead_man_s=1"], speed=2.0,
        ready=lambda v, run: bool(v.open), after=wait_for_the_venue,
    )  # fmt: skip
    assert left > 0, out[-2000:]  # left resting by the killed process
    assert not v.open and v.countdown_cancels == 1 and gone < 1.5, gone


def test_a_killed_orders_session_is_resumed_with_what_it_left_cancelled(busy, tmp_path):
    """``mmsim live`` with the orders gateway as a user runs it, SIGKILLed while its orders rest on
    the venue (no clean-up at all), then ``mmsim live --resume``: the resumed session cancels what
    the killed one left, books every venue fill once, and no file holds the keys."""
    run = tmp_path / "run"
    v = venue.Venue(KEY, SECRET)
    env = {"MMSIM_API_KEY": KEY, "MMSIM_API_SECRET": SECRET}
    first, left = _kill_an_orders_session(
        busy, tmp_path, v, run, ["live.reconcile_every=5"], speed=8.0,
        ready=lambda v, run: _obs(run) >= 10 and bool(v.open), after=lambda v: len(v.open),
    )  # fmt: skip
    assert left > 0, first[-2000:]  # the killed process could not cancel
    with emulator.Running(emulator.Emulator(busy, speed=8.0, venue=v)) as em:
        urls = [f"live.ws_url={em.ws_url}", f"live.rest_url={em.rest_url}", f"live.order_url={em.order_url}"]
        proc = _mmsim(["live", "--resume", str(run), *urls, "live.max_observations=30"], env_extra=env)
        out = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 0, out[-2000:]
    assert "gateway: orders on the testnet" in out and not v.open
    recs, _ = journal.read(run)
    starts = [r for r in recs if r.get("what") == "cancel_all" and r.get("why") == "start"]
    assert len(starts) == 2  # the first session's, and the resumed one's (which removed what was left)
    assert cli.main(["report", str(run)]) == 0
    m = json.loads((run / "metrics.json").read_text())
    assert m["observations"] == 30 and m["live"]["gateway"] == "orders"
    end = m["live"]["venue_at_stop"]
    fills = [r for r in recs if r.get("what") == "fill"]
    assert len({f["id"] for f in fills}) == len(fills) and len(fills) + end["unbooked_fills"] == len(v.trades)
    assert m["final_position"] + end["unbooked_qty"] == pytest.approx(v.position, abs=1e-5)
    assert "- orders: " in (run / "report.md").read_text()
    text = _files_text(run) + first + out
    assert SECRET not in text and KEY not in text
