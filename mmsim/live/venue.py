"""A local stand-in for Binance USD-M's signed order API, beside the market-data emulator
(:mod:`mmsim.live.emulator`), on the loopback address only: post-only limit orders checked for
their signature, timestamp, grid and rate, matched against the emulator's streamed book and trades
with the same fill rule as the paper gateway and the simulated book (:func:`mmsim.live.paper.paper_fills`,
one public trade at a time), and the account's position, fills and open orders read back through
the venue's endpoints:

- ``GET /fapi/v1/exchangeInfo`` (the contract's tick, size step, minimum notional);
- ``POST /fapi/v1/order`` (``LIMIT``, ``timeInForce=GTX``), ``DELETE /fapi/v1/order``,
  ``DELETE /fapi/v1/allOpenOrders``, ``GET /fapi/v1/openOrders``;
- ``GET /fapi/v1/userTrades`` (``fromId``, ``limit``), ``GET /fapi/v2/positionRisk``;
- ``POST /fapi/v1/countdownCancelAll`` (``countdownTime`` ms, 0 off): the dead-man switch. When
  the countdown runs out every open order is cancelled (checked every 10 ms, and at each message
  and request);
- the user-data stream: ``POST``/``PUT``/``DELETE /fapi/v1/listenKey`` (the API key only, no
  signature), and on the market emulator's websocket port ``/ws/<listenKey>`` streams
  ``ORDER_TRADE_UPDATE`` (a new order, a cancel, each fill) and ``ACCOUNT_UPDATE`` (the position
  after a fill) as they happen, in the venue's event format.

Every answer carries the account's request weight used in the last minute
(``X-MBX-USED-WEIGHT-1M``, by the weights of :data:`WEIGHTS`, the emulator's own table); past
``weight_limit`` (served in exchangeInfo's ``rateLimits``) a request is refused with HTTP 429,
code -1003 and a ``Retry-After``.

Errors come in the venue's format (an HTTP 4xx with ``{"code", "msg"}``). Prices in quote
currency, sizes in base units, times in ms (our fills are stamped with the public trade's time, the
recording's exchange clock).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import secrets
import time
import urllib.parse
from collections import deque

import numpy as np

from mmsim.live.orders import POST_ONLY_REJECTED, UNKNOWN_ORDER, sign
from mmsim.live.paper import Resting, paper_fills

HOST = "127.0.0.1"
#: The emulator's request weights by endpoint (1 where not listed). They follow the venue's
#: published table in kind (account reads cost more than order actions); the gateway does not
#: depend on them, it reads the count the venue returns.
WEIGHTS = {
    ("GET", "/fapi/v1/userTrades"): 5,
    ("GET", "/fapi/v2/positionRisk"): 5,
    ("POST", "/fapi/v1/countdownCancelAll"): 10,
    ("POST", "/fapi/v1/order"): 0,
}


class Refused(Exception):
    def __init__(self, status: int, code: int, msg: str) -> None:
        super().__init__(msg)
        self.status, self.code, self.msg = status, code, msg


@dataclasses.dataclass
class _Order:
    order_id: int
    client_id: str
    side: int
    price: float
    qty: float
    filled: float = 0.0
    resting: Resting = Resting()


class Venue:
    """The emulated account and its order book side (see the module docstring).

    Args:
        api_key, api_secret: the one key pair it accepts.
        symbol: the contract.
        tick, step, min_qty, min_notional: the contract's rules (quote currency, base units).
        maker_fee: commission on our fills, fraction of notional (negative: a rebate).
        orders_10s: new orders accepted per 10 s (the venue's limit), then HTTP 429.
        recv_window_ms: the largest ``recvWindow`` it accepts, ms.
        weight_limit: request weight per minute, then HTTP 429 (``Retry-After``).
    """

    def __init__(
        self,
        api_key: str,
        api_secret: str,
        *,
        symbol: str = "BTCUSDT",
        tick: float = 0.1,
        step: float = 0.001,
        min_qty: float = 0.001,
        min_notional: float = 100.0,
        maker_fee: float = 0.0,
        orders_10s: int = 300,
        recv_window_ms: int = 60_000,
        weight_limit: int = 2400,
    ) -> None:
        self.key, self._secret = api_key, api_secret
        self.symbol = symbol.upper()
        self.tick, self.step, self.min_qty, self.min_notional = tick, step, min_qty, min_notional
        self.maker_fee, self.orders_10s, self.recv_window_ms = maker_fee, orders_10s, recv_window_ms
        self.weight_limit = weight_limit
        self._weights: deque[tuple[float, int]] = deque()  # (monotonic s, weight) of the last minute
        self.max_weight_seen = 0
        self.bid = self.ask = 0.0
        self.bid_qty = self.ask_qty = 0.0
        self.now_ms = 0  # the market's exchange time (the last message's)
        self.open: dict[int, _Order] = {}
        self.trades: list[dict] = []
        self.position = 0.0
        self.entry = 0.0
        self._next_id = 1
        self._new_orders: deque[float] = deque()
        self.requests = 0
        self.refusals: dict[int, int] = {}  # error code -> count
        self.max_orders_10s_seen = 0
        self.port = 0
        self._server = None
        self.listen_key: str | None = None  # the account's one user-data stream key (the venue's rule)
        self._listeners: list[asyncio.Queue] = []  # one per connected user-data stream
        self.user_events = 0  # events published
        self.countdown_at: float | None = None  # monotonic deadline of the dead-man switch
        self.countdown_cancels = 0  # times it ran out and cancelled
        self._watcher: asyncio.Task | None = None

    # -- the user-data stream ---------------------------------------------------------------------
    def subscribe(self, key: str) -> asyncio.Queue | None:
        """A queue of the account's events as JSON strings (None closes it), for a connection to
        ``/ws/<key>``; None if ``key`` is not the account's listen key."""
        if self.listen_key is None or not hmac.compare_digest(key, self.listen_key):
            return None
        q: asyncio.Queue = asyncio.Queue()
        self._listeners.append(q)
        return q

    def unsubscribe(self, q: asyncio.Queue) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(q)

    def drop_user_streams(self) -> None:
        """Close every user-data stream connection (a test's disconnect)."""
        for q in self._listeners:
            q.put_nowait(None)

    def _publish(self, event: dict) -> None:
        self.user_events += 1
        body = json.dumps({"E": self.now_ms, "T": self.now_ms, **event})
        for q in self._listeners:
            q.put_nowait(body)

    def _order_event(self, o: _Order, execution: str, status: str, **fill) -> None:
        self._publish({"e": "ORDER_TRADE_UPDATE", "o": {
            "s": self.symbol, "c": o.client_id, "S": "BUY" if o.side > 0 else "SELL", "o": "LIMIT", "f": "GTX",
            "q": _s(o.qty), "p": _s(o.price), "x": execution, "X": status, "i": o.order_id,
            "z": _s(o.filled), "l": "0", "L": "0", "n": "0", "N": "USDT", "T": self.now_ms, "t": 0, "m": True,
            **fill,
        }})  # fmt: skip

    # -- the market, as the emulator streams it ---------------------------------------------------
    def on_message(self, body: str) -> None:
        """A streamed market message: a ``bookTicker`` moves the touch, a ``trade`` (or
        ``aggTrade``) may fill our orders. Other messages and other contracts are ignored."""
        self._check_countdown()
        try:
            d = json.loads(body)
            d = d.get("data", d)
            if str(d.get("s", self.symbol)).upper() != self.symbol:
                return
            e = d.get("e")
            if e == "bookTicker":
                self.bid, self.bid_qty = float(d["b"]), float(d["B"])
                self.ask, self.ask_qty = float(d["a"]), float(d["A"])
                self.now_ms = int(d.get("T") or d.get("E") or self.now_ms)
            elif e in ("trade", "aggTrade"):
                if d.get("X", "MARKET") != "MARKET":
                    return  # liquidation and insurance-fund prints are not public aggressors at our queue
                self.now_ms = int(d.get("T") or d.get("E") or self.now_ms)
                self._match(float(d["p"]), float(d["q"]), -1 if d["m"] else 1)
        except (ValueError, KeyError, TypeError, AttributeError):
            return

    def _touch(self, side: int) -> tuple[float, float]:
        return (self.bid, self.bid_qty) if side > 0 else (self.ask, self.ask_qty)

    def _match(self, price: float, qty: float, aggressor: int) -> None:
        tp, tq, ts = np.asarray([price]), np.asarray([qty]), np.asarray([aggressor], np.int8)
        for o in sorted(self.open.values(), key=lambda o: o.order_id):
            if o.side != -aggressor:
                continue
            touch, touch_qty = self._touch(o.side)
            filled, o.resting = paper_fills(
                o.side, o.price, o.qty - o.filled, True, o.resting, touch, touch_qty, tp, tq, ts
            )
            if filled > 0:
                self._book_fill(o, filled)

    def _book_fill(self, o: _Order, qty: float) -> None:
        o.filled += qty
        q, d = self.position, o.side * qty
        if q == 0 or np.sign(q) == np.sign(d):
            self.entry = (self.entry * abs(q) + o.price * abs(d)) / (abs(q) + abs(d))
        elif abs(d) > abs(q):
            self.entry = o.price
        elif abs(d) == abs(q):
            self.entry = 0.0
        self.position = q + d
        t = {
            "symbol": self.symbol, "id": len(self.trades) + 1, "orderId": o.order_id,
            "side": "BUY" if o.side > 0 else "SELL", "price": _s(o.price), "qty": _s(qty),
            "commission": _s(self.maker_fee * o.price * qty), "commissionAsset": "USDT",
            "realizedPnl": "0", "time": self.now_ms, "maker": True, "buyer": o.side > 0,
        }  # fmt: skip
        self.trades.append(t)
        done = o.qty - o.filled <= 1e-12
        if done:
            del self.open[o.order_id]
        self._order_event(o, "TRADE", "FILLED" if done else "PARTIALLY_FILLED",
                          l=t["qty"], L=t["price"], n=t["commission"], t=t["id"], T=t["time"])  # fmt: skip
        self._publish({"e": "ACCOUNT_UPDATE", "a": {"m": "ORDER", "B": [], "P": [
            {"s": self.symbol, "pa": _s(self.position), "ep": _s(self.entry), "ps": "BOTH"}
        ]}})  # fmt: skip

    # -- the API ------------------------------------------------------------------------------
    def used_weight(self) -> int:
        """The request weight of the last 60 s."""
        now = time.monotonic()
        while self._weights and now - self._weights[0][0] >= 60.0:
            self._weights.popleft()
        return sum(w for _, w in self._weights)

    def handle(self, method: str, target: str, headers: dict) -> tuple[int, object]:
        """One request: ``(HTTP status, JSON body)``."""
        self.requests += 1
        self._check_countdown()
        u = urllib.parse.urlsplit(target)
        try:
            self._weigh(WEIGHTS.get((method, u.path), 1))
            if (method, u.path) == ("GET", "/fapi/v1/exchangeInfo"):
                return 200, self._exchange_info()
            if u.path == "/fapi/v1/listenKey" and method in ("POST", "PUT", "DELETE"):
                return 200, self._listen_key(method, headers)
            routes = {
                ("POST", "/fapi/v1/order"): self._new,
                ("DELETE", "/fapi/v1/order"): self._cancel,
                ("DELETE", "/fapi/v1/allOpenOrders"): self._cancel_all,
                ("GET", "/fapi/v1/openOrders"): self._open_orders,
                ("GET", "/fapi/v1/userTrades"): self._user_trades,
                ("GET", "/fapi/v2/positionRisk"): self._position_risk,
                ("POST", "/fapi/v1/countdownCancelAll"): self._countdown,
            }
            fn = routes.get((method, u.path))
            if fn is None:
                raise Refused(404, -1000, f"no endpoint {method} {u.path}")
            return 200, fn(self._signed(u.query, headers))
        except Refused as e:
            self.refusals[e.code] = self.refusals.get(e.code, 0) + 1
            return e.status, {"code": e.code, "msg": e.msg}

    def _weigh(self, w: int) -> None:
        """Count a request's weight against the minute's limit; past it, HTTP 429 (-1003)."""
        if self.used_weight() + w > self.weight_limit:
            raise Refused(429, -1003, "Too many requests; please use the websocket for live updates.")
        self._weights.append((time.monotonic(), w))
        self.max_weight_seen = max(self.max_weight_seen, self.used_weight())

    def _keyed(self, headers: dict) -> None:
        if headers.get("x-mbx-apikey") != self.key:
            raise Refused(401, -2014, "API-key format invalid.")

    def _signed(self, query: str, headers: dict) -> dict:
        self._keyed(headers)
        body, sep, sig = query.rpartition("&signature=")
        if not sep or not hmac.compare_digest(sign(body, self._secret), sig):
            raise Refused(400, -1022, "Signature for this request is not valid.")
        p = dict(urllib.parse.parse_qsl(body, keep_blank_values=True))
        try:
            ts, window = int(p["timestamp"]), int(p.get("recvWindow", 5000))
        except (KeyError, ValueError):
            raise Refused(400, -1102, "Mandatory parameter 'timestamp' was not sent or is malformed.") from None
        if window > self.recv_window_ms or abs(time.time() * 1000 - ts) > window:
            raise Refused(400, -1021, "Timestamp for this request is outside of the recvWindow.")
        if str(p.get("symbol", self.symbol)).upper() != self.symbol:
            raise Refused(400, -1121, "Invalid symbol.")
        return p

    def _listen_key(self, method: str, headers: dict) -> dict:
        """The venue's listen key rules: the API key only; POST makes the key or returns the
        current one, PUT keeps it alive, DELETE ends it (and its streams)."""
        self._keyed(headers)
        if method == "POST":
            self.listen_key = self.listen_key or secrets.token_hex(32)
            return {"listenKey": self.listen_key}
        if self.listen_key is None:
            raise Refused(400, -1125, "This listenKey does not exist.")
        if method == "DELETE":
            self.listen_key = None
            self.drop_user_streams()
        return {}

    def _exchange_info(self) -> dict:
        return {"rateLimits": [
            {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": self.weight_limit},
        ], "symbols": [{
            "symbol": self.symbol, "status": "TRADING", "contractType": "PERPETUAL",
            "filters": [
                {"filterType": "PRICE_FILTER", "tickSize": _s(self.tick)},
                {"filterType": "LOT_SIZE", "stepSize": _s(self.step), "minQty": _s(self.min_qty)},
                {"filterType": "MIN_NOTIONAL", "notional": _s(self.min_notional)},
            ],
        }]}  # fmt: skip

    def _new(self, p: dict) -> dict:
        now = time.monotonic()
        while self._new_orders and now - self._new_orders[0] >= 10.0:
            self._new_orders.popleft()
        if len(self._new_orders) >= self.orders_10s:
            raise Refused(429, -1015, f"Too many new orders; current limit is {self.orders_10s} orders per 10 SECOND.")
        self._new_orders.append(now)
        self.max_orders_10s_seen = max(self.max_orders_10s_seen, len(self._new_orders))
        if p.get("type") != "LIMIT" or p.get("timeInForce") != "GTX":
            raise Refused(400, -1116, "The emulator takes post-only limit orders only (type=LIMIT, timeInForce=GTX).")
        side = {"BUY": 1, "SELL": -1}.get(p.get("side", ""))
        if side is None:
            raise Refused(400, -1117, "Invalid side.")
        try:
            price, qty = float(p["price"]), float(p["quantity"])
        except (KeyError, ValueError):
            raise Refused(
                400, -1102, "Mandatory parameter 'price' or 'quantity' was not sent or is malformed."
            ) from None
        if not (price > 0 and abs(price / self.tick - round(price / self.tick)) < 1e-6):
            raise Refused(400, -4014, "Price not increased by tick size.")
        if not (qty >= self.min_qty and abs(qty / self.step - round(qty / self.step)) < 1e-6):
            raise Refused(400, -4003, "Quantity less than or not a multiple of the step size.")
        if price * qty < self.min_notional:
            raise Refused(400, -4164, f"Order's notional must be no smaller than {self.min_notional:g}.")
        touch = self.ask if side > 0 else self.bid
        if touch > 0 and side * (price - touch) >= -1e-9 * price:
            raise Refused(
                400,
                POST_ONLY_REJECTED,
                "Due to the order could not be executed as maker, the Post Only order will be rejected.",
            )
        o = _Order(self._next_id, p.get("newClientOrderId", ""), side, price, qty)
        self._next_id += 1
        # Its place in the queue on arrival: the fill rule's, with no trade yet.
        t0 = np.zeros(0)
        _, o.resting = paper_fills(side, price, qty, True, Resting(), *self._touch(side), t0, t0, t0.astype(np.int8))
        self.open[o.order_id] = o
        self._order_event(o, "NEW", "NEW")
        return self._order_json(o, "NEW")

    def _cancel(self, p: dict) -> dict:
        try:
            o = self.open.pop(int(p["orderId"]))
        except (KeyError, ValueError):
            raise Refused(400, UNKNOWN_ORDER, "Unknown order sent.") from None
        self._order_event(o, "CANCELED", "CANCELED")
        return self._order_json(o, "CANCELED")

    def _cancel_all(self, p: dict) -> dict:
        for o in self.open.values():
            self._order_event(o, "CANCELED", "CANCELED")
        self.open.clear()
        return {"code": 200, "msg": "The operation of cancel all open order is done."}

    def _countdown(self, p: dict) -> dict:
        try:
            ms = int(p["countdownTime"])
        except (KeyError, ValueError):
            raise Refused(400, -1102, "Mandatory parameter 'countdownTime' was not sent or is malformed.") from None
        if ms < 0:
            raise Refused(400, -1102, "Parameter 'countdownTime' must be >= 0.")
        self.countdown_at = None if ms == 0 else time.monotonic() + ms / 1e3
        return {"symbol": self.symbol, "countdownTime": str(ms)}

    def _check_countdown(self) -> None:
        if self.countdown_at is not None and time.monotonic() >= self.countdown_at:
            self.countdown_at = None
            self.countdown_cancels += 1
            self._cancel_all({})

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(0.01)
            self._check_countdown()

    def _open_orders(self, p: dict) -> list:
        return [self._order_json(o, "NEW" if o.filled == 0 else "PARTIALLY_FILLED") for o in self.open.values()]

    def _user_trades(self, p: dict) -> list:
        lo = int(p.get("fromId", 0))
        limit = min(int(p.get("limit", 500)), 1000)
        rows = [t for t in self.trades if t["id"] >= lo] if "fromId" in p else self.trades[-limit:]
        return rows[:limit]

    def _position_risk(self, p: dict) -> list:
        return [{"symbol": self.symbol, "positionAmt": _s(self.position), "entryPrice": _s(self.entry),
                 "markPrice": _s(0.5 * (self.bid + self.ask))}]  # fmt: skip

    def _order_json(self, o: _Order, status: str) -> dict:
        return {
            "symbol": self.symbol, "orderId": o.order_id, "clientOrderId": o.client_id, "status": status,
            "side": "BUY" if o.side > 0 else "SELL", "type": "LIMIT", "timeInForce": "GTX",
            "price": _s(o.price), "origQty": _s(o.qty), "executedQty": _s(o.filled),
        }  # fmt: skip

    # -- the HTTP server (keep-alive, one event loop) --------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    async def start(self, port: int = 0) -> Venue:
        self._server = await asyncio.start_server(self._serve, HOST, port)
        self.port = self._server.sockets[0].getsockname()[1]
        self._watcher = asyncio.create_task(self._watch())
        return self

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                parts = line.decode("latin-1").split()
                headers = {}
                while (h := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    k, _, v = h.decode("latin-1").partition(":")
                    headers[k.strip().lower()] = v.strip()
                n = int(headers.get("content-length", 0) or 0)
                if n:
                    await reader.readexactly(n)
                if len(parts) != 3:
                    status, body = 400, {"code": -1000, "msg": "malformed request line"}
                else:
                    status, body = self.handle(parts[0], parts[1], headers)
                data = json.dumps(body).encode()
                extra = f"X-MBX-USED-WEIGHT-1M: {self.used_weight()}\r\n"
                if status == 429:
                    extra += "Retry-After: 1\r\n"
                writer.write(
                    f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(data)}\r\n{extra}Connection: keep-alive\r\n\r\n".encode()
                    + data
                )
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()


def _s(x: float) -> str:
    """A number as the venue writes it (a decimal string, no float noise)."""
    return f"{x:.10f}".rstrip("0").rstrip(".") if x == x else "0"
