"""The orders gateway: the engine's quotes as real post-only limit orders on Binance USD-M (its
testnet unless the mainnet is asked for explicitly), through the venue's signed REST API.

- **Keys** come from environment variables only (their names are settings; the values are never
  written to the journal, the outputs, a log line or an error message).
- **Signing**: Binance's SIGNED endpoint scheme, HMAC-SHA256 of the query string with the API
  secret, the key in the ``X-MBX-APIKEY`` header, a ``timestamp`` (ms) and ``recvWindow``.
- **Orders**: ``LIMIT`` with ``timeInForce=GTX`` (post-only: the venue rejects an order that would
  take). An order at the next quote's price that was sent with at least the quote's size and
  whose open size is not larger (a partly filled one too) stays where it is, keeping its place in
  the queue; a changed price or size cancels it and sends a new one, so the venue never holds more
  than the engine quotes. An order whose cancel the venue did not confirm is kept as ours, and
  nothing new goes out on its side until it is gone.
- **Safety**: cancel-all at start, at every stop (a limit, the kill switch, a signal, an exception),
  on a stale or broken feed; a next start cancels what a killed process left. With
  ``dead_man_s`` the venue's own countdown (``POST /fapi/v1/countdownCancelAll``) is armed at the
  start and renewed every third of it: a process that dies or hangs without a word (SIGKILL, a
  lost machine) has its orders cancelled by the venue ``dead_man_s`` seconds after its last
  renewal. New orders are limited to ``max_orders_10s`` per 10 s (below the venue's 300); an
  order that would take ``|position|`` past the account's ``max_inventory``, or to a position
  whose initial margin (notional / leverage) the equity does not cover, is not sent (reducing
  orders always are).
- **Request weight**: the venue's count of our weight (``X-MBX-USED-WEIGHT-1M``, against
  exchangeInfo's per-minute ``REQUEST_WEIGHT``) is read from every answer: past
  ``max_weight_share`` of the limit, new orders and read-backs wait (cancels still go). A 429 or
  418 stops every request for the ``Retry-After`` the venue gives (60 s if none); the dead-man
  switch cancels what rests meanwhile.
- **Fills** are the venue's own, given to the engine in place of the paper rule's. They come from
  the user-data stream (``ORDER_TRADE_UPDATE`` events, :func:`trade_of_event`, put in
  :attr:`OrderGateway.inbox` by the session) while it is connected and caught up, and otherwise
  from ``GET /fapi/v1/userTrades`` at every observation; a trade id is booked once whichever way
  it came. The position and the open orders are read back every ``reconcile_every``
  observations, and a difference is journaled and booked.

Prices in quote currency, sizes in base units, times in ms since the epoch where the venue's API
uses them (``timestamp``, a trade's ``time``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import http.client
import json
import math
import os
import threading
import time
import urllib.parse
from collections import deque
from decimal import Decimal

#: Binance USD-M futures: the mainnet's and the testnet's REST endpoints.
MAINNET_REST = "https://fapi.binance.com"
TESTNET_REST = "https://testnet.binancefuture.com"
TESTNET_WS = "wss://stream.binancefuture.com"
#: The venue's order-rate limit (orders per 10 s per account) that ``max_orders_10s`` must stay below.
VENUE_ORDERS_10S = 300
#: The venue's error codes the gateway acts on.
UNKNOWN_ORDER = -2011  # cancel of an order that is no longer open (filled, or cancelled already)
POST_ONLY_REJECTED = -5022  # a GTX order that would have taken
#: A user-data stream's listen key lapses 60 min after its last keep-alive; we renew it this often, s.
LISTEN_KEY_KEEPALIVE_S = 30 * 60.0


def sign(query: str, secret: str) -> str:
    """Binance's request signature: hex HMAC-SHA256 of the total parameter string."""
    return hmac.new(secret.encode(), query.encode(), hashlib.sha256).hexdigest()


#: The venue's request weight per minute when its exchangeInfo does not say (Binance USD-M's).
WEIGHT_LIMIT_1M = 2400
#: HTTP statuses of a venue that wants us to back off (429 too many requests, 418 banned for a while).
BACK_OFF_STATUS = (418, 429)


class VenueError(RuntimeError):
    """An answer of the venue that is not a success: its HTTP status, error code and message."""

    def __init__(self, status: int, code: int | None, msg: str) -> None:
        super().__init__(f"HTTP {status}, code {code}: {msg}")
        self.status, self.code, self.msg = status, code, msg


@dataclasses.dataclass(frozen=True)
class Credentials:
    """An API key pair. ``repr`` shows neither value, and no error message quotes one."""

    key: str = dataclasses.field(repr=False)
    secret: str = dataclasses.field(repr=False)

    def __post_init__(self) -> None:
        for name, v in (("key", self.key), ("secret", self.secret)):
            # A value with whitespace or a control character cannot go into a header or a signature
            # as the venue reads it (http.client would refuse it with the value in its message).
            if not v or not v.isprintable() or any(c.isspace() for c in v):
                raise ValueError(f"the API {name} is empty or holds whitespace or a non-printable character")

    @classmethod
    def from_env(cls, key_env: str, secret_env: str) -> Credentials:
        """The pair from the environment variables named ``key_env`` and ``secret_env``; a missing
        one is an error naming the variable (and the setting that names it)."""
        missing = [
            f"${n} (live.{f})"
            for n, f in ((key_env, "api_key_env"), (secret_env, "api_secret_env"))
            if not os.environ.get(n)
        ]
        if missing:
            raise ValueError(f"live.gateway = 'orders' needs an API key pair: {', '.join(missing)} not set")
        return cls(os.environ[key_env], os.environ[secret_env])


class Rest:
    """A keep-alive HTTP(S) connection to the venue's REST API, signing what needs signing.
    ``timeout_s``: per request, seconds; ``recv_window_ms``: the venue's tolerance of our clock."""

    def __init__(self, base_url: str, creds: Credentials | None, *, timeout_s: float = 5.0, recv_window_ms: int = 5000):
        u = urllib.parse.urlsplit(base_url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"live.order_url = {base_url!r}: must be an http(s) URL")
        self._conn_cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
        self.host, self.port, self.prefix = u.hostname, u.port, u.path.rstrip("/")
        self.creds, self.timeout_s, self.recv_window_ms = creds, timeout_s, recv_window_ms
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()  # one request at a time on the connection (worker threads share it)
        self.requests = 0
        # The venue's count of our request weight in the current minute (X-MBX-USED-WEIGHT-1M)
        # and when it was read (monotonic s); None before an answer carried it.
        self.used_weight: int | None = None
        self.weight_read_at = -math.inf
        # A 429 / 418 answer: nothing should be sent before this monotonic time (its Retry-After,
        # 60 s if it gives none); on_back_off(status, wait_s) is told of each.
        self.hold_until = -math.inf
        self.on_back_off = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def call(self, method: str, path: str, params: dict | None = None, *, signed: bool = True, keyed: bool = False):
        """The decoded JSON answer; a venue error raises :class:`VenueError`, a broken connection
        ``OSError``. A GET or DELETE (idempotent) is retried once on a fresh connection, for a
        keep-alive the venue closed; a POST is not (the order may have arrived: a reconciliation
        finds it and cancels it as unknown), and its error says so. ``keyed``: an unsigned request
        that carries the API key (the user-data stream's listen key endpoints)."""
        q = dict(params or {})
        headers = {}
        if signed:
            if self.creds is None:
                raise ValueError("a signed request needs credentials")
            q["recvWindow"] = self.recv_window_ms
            q["timestamp"] = int(time.time() * 1000)
            qs = urllib.parse.urlencode(q)
            qs += "&signature=" + sign(qs, self.creds.secret)
            headers["X-MBX-APIKEY"] = self.creds.key
        else:
            qs = urllib.parse.urlencode(q)
            if keyed:
                if self.creds is None:
                    raise ValueError("a keyed request needs credentials")
                headers["X-MBX-APIKEY"] = self.creds.key
        target = f"{self.prefix}{path}" + (f"?{qs}" if qs else "")
        attempts = (0,) if method == "POST" else (0, 1)
        with self._lock:  # the feed's worker threads and the user-data stream's share the connection
            r, body = self._send(method, path, target, headers, attempts)
            self.requests += 1
            w = r.getheader("X-MBX-USED-WEIGHT-1M")
            if w is not None and w.strip().isdigit():
                self.used_weight, self.weight_read_at = int(w), time.monotonic()
        try:
            data = json.loads(body) if body else None
        except ValueError:
            data = None
        if r.status >= 400 or (isinstance(data, dict) and isinstance(data.get("code"), int) and data["code"] < 0):
            code = data.get("code") if isinstance(data, dict) else None
            msg = data.get("msg", "") if isinstance(data, dict) else body[:200].decode("utf-8", "replace")
            if r.status in BACK_OFF_STATUS:
                retry = r.getheader("Retry-After")
                wait = float(retry) if retry is not None and retry.strip().isdigit() else 60.0
                self.hold_until = time.monotonic() + wait
                if self.on_back_off is not None:
                    self.on_back_off(r.status, wait)
            raise VenueError(r.status, code, str(msg))
        return data

    def _send(self, method: str, path: str, target: str, headers: dict, attempts: tuple):
        """One request on the keep-alive connection (a fresh one after a failure): the response
        and its body; OSError when the last attempt fails."""
        for attempt in attempts:
            if self._conn is None:
                self._conn = self._conn_cls(self.host, self.port, timeout=self.timeout_s)
            try:
                self._conn.request(method, target, headers=headers)
                r = self._conn.getresponse()
                return r, r.read()
            except ValueError:
                # http.client's refusal of a header or URL quotes the value: it never goes out.
                self.close()
                raise OSError(f"{method} {path}: the request could not be encoded") from None
            except (OSError, http.client.HTTPException) as e:
                self.close()
                if attempt == attempts[-1]:
                    raise OSError(f"{method} {path}: {type(e).__name__}: {e}") from None
        raise OSError(f"{method} {path}: no attempt made")


@dataclasses.dataclass(frozen=True)
class SymbolRules:
    """The contract's grid from ``GET /fapi/v1/exchangeInfo``: price tick (quote currency), size
    step and minimum size (base units), minimum notional (quote currency)."""

    tick: float
    step: float
    min_qty: float
    min_notional: float
    weight_limit: int = WEIGHT_LIMIT_1M  # request weight per minute (exchangeInfo's REQUEST_WEIGHT)

    @classmethod
    def from_exchange_info(cls, info: dict, symbol: str) -> SymbolRules:
        for s in info.get("symbols", []):
            if str(s.get("symbol", "")).upper() == symbol.upper():
                f = {x.get("filterType"): x for x in s.get("filters", [])}
                limits = [
                    r for r in info.get("rateLimits", []) if isinstance(r, dict)
                    and r.get("rateLimitType") == "REQUEST_WEIGHT" and r.get("interval") == "MINUTE"
                    and r.get("intervalNum", 1) == 1
                ]  # fmt: skip
                try:
                    return cls(
                        tick=float(f["PRICE_FILTER"]["tickSize"]),
                        step=float(f["LOT_SIZE"]["stepSize"]),
                        min_qty=float(f["LOT_SIZE"]["minQty"]),
                        min_notional=float(f.get("MIN_NOTIONAL", {}).get("notional", 0.0)),
                        weight_limit=int(limits[0]["limit"]) if limits else WEIGHT_LIMIT_1M,
                    )
                except (KeyError, TypeError, ValueError) as e:
                    raise ValueError(f"exchangeInfo: {symbol}'s filters are incomplete ({e})") from None
        raise ValueError(f"exchangeInfo: the venue lists no contract {symbol!r}")

    def price(self, x: float) -> str:
        return _on_grid(round(x / self.tick), self.tick)

    def qty(self, x: float) -> str:
        return _on_grid(math.floor(x / self.step + 1e-9), self.step)


def with_correction(fills: tuple[float, float, float, float], diff: float, mid: float) -> tuple:
    """The venue's fills ``(bid size, bid VWAP, ask size, ask VWAP)`` with a reconciliation's
    missing position ``diff`` (base units, + bought) booked as one more fill at ``mid``: the
    engine's account then holds the venue's position, its equity unchanged at the mid."""
    fb, pb, fa, pa = fills
    if diff > 0:
        pb, fb = (fb * pb + diff * mid) / (fb + diff), fb + diff
    elif diff < 0:
        pa, fa = (fa * pa - diff * mid) / (fa - diff), fa - diff
    return fb, pb, fa, pa


def trade_of_event(event: dict, symbol: str) -> dict | None:
    """One of our fills from a user-data stream event (``ORDER_TRADE_UPDATE`` with execution type
    ``TRADE`` on ``symbol``), in ``GET /fapi/v1/userTrades``'s form (``id`` the trade id, ``orderId``,
    ``side``, ``price``, ``qty``, ``commission``, ``time`` in exchange ms); None for any other event,
    or one with a field missing or malformed (counted by the caller)."""
    if not isinstance(event, dict) or event.get("e") != "ORDER_TRADE_UPDATE":
        return None
    o = event.get("o")
    if not isinstance(o, dict) or o.get("x") != "TRADE" or str(o.get("s", "")).upper() != symbol.upper():
        return None
    try:
        t = {
            "id": int(o["t"]), "orderId": int(o["i"]), "side": str(o["S"]), "price": float(o["L"]),
            "qty": float(o["l"]), "commission": float(o.get("n", 0.0)), "time": int(o["T"]),
        }  # fmt: skip
    except (KeyError, TypeError, ValueError):
        return None
    ok = t["side"] in ("BUY", "SELL") and t["qty"] > 0 and t["price"] > 0 and math.isfinite(t["price"] * t["qty"])
    return t if ok else None


def _on_grid(n: int, unit: float) -> str:
    """``n`` units of ``unit`` as the venue's decimal string (no float digits past the unit's)."""
    return str(Decimal(n) * Decimal(str(unit)).normalize())


@dataclasses.dataclass
class Order:
    """One of our resting orders as the gateway believes it to be."""

    client_id: str
    order_id: int
    side: int  # +1 bid (BUY), -1 ask (SELL)
    price: float
    qty: float
    filled: float = 0.0

    @property
    def open_qty(self) -> float:
        return self.qty - self.filled


class Limits:
    """What may be sent: the account's position limit, the margin check, and the
    order-rate limit (a sliding window of 10 s of the local monotonic clock)."""

    def __init__(self, *, max_position: float, leverage: float, max_orders_10s: int) -> None:
        self.max_position, self.leverage, self.max_orders_10s = max_position, leverage, max_orders_10s
        self._sent: deque[float] = deque()

    def allows(self, side: int, qty: float, price: float, position: float, equity: float, mid: float) -> str | None:
        """None if an order of ``qty`` on ``side`` may go out, else why not."""
        new = position + side * qty
        if abs(new) <= abs(position):
            return None  # it reduces the position: always allowed
        if abs(new) > self.max_position + 1e-12:
            return "position_limit"
        if abs(new) * price / self.leverage > equity:
            return "margin"  # the initial margin of the position it would open is not covered
        return None

    def take_token(self) -> bool:
        now = time.monotonic()
        while self._sent and now - self._sent[0] >= 10.0:
            self._sent.popleft()
        if len(self._sent) >= self.max_orders_10s:
            return False
        self._sent.append(now)
        return True


class OrderGateway:
    """The engine's quotes as orders on the venue (see the module docstring). ``rest``: the venue's
    API; ``journal_event``: ``(what, **fields)``, every order action and reconciliation goes there.

    Counts (``counts``): orders sent, kept, cancelled, rejected as takers, refused by a limit
    (by reason), deferred by the rate limit, fills, reconciliations, venue errors."""

    def __init__(
        self,
        rest: Rest,
        symbol: str,
        limits: Limits,
        journal_event,
        *,
        tag: str,
        reconcile_every: int = 10,
        dead_man_s: float = 0.0,
        max_weight_share: float = 0.8,
    ):
        self.rest, self.symbol, self.limits, self.event = rest, symbol.upper(), limits, journal_event
        self.tag, self.reconcile_every, self.dead_man_s = tag, reconcile_every, float(dead_man_s)
        self._beat = -math.inf  # monotonic time of the last countdown renewal (-inf: not armed)
        self.max_weight_share = float(max_weight_share)
        rest.on_back_off = self._backed_off
        self.rules: SymbolRules | None = None
        self.orders: dict[int, Order | None] = {1: None, -1: None}
        self.last_trade_id = -1  # the newest of our venue trades read
        self.booked_id = -1  # the newest given to the engine (a resumed session reads on from here)
        self.pending: list[dict] = []  # fills stamped after the interval that asked (kept for the next)
        # The user-data stream: the session appends our fills (trade_of_event's dicts) to the inbox
        # and says whether the stream is connected (``stream_gen`` counts its connections); after a
        # (re)connection one REST read catches up what came before it, and from then on fills come
        # from the stream alone.
        self.inbox: deque[dict] = deque()
        self.gone: deque[int] = deque()  # order ids the stream says were cancelled or expired
        self.stream_connected = False
        self.stream_gen = 0
        self._caught_up_gen = -1
        self._seen: set[int] = set()  # trade ids taken and not yet booked
        self._listening = False  # a listen key was asked for (closed at the stop)
        self.counts: dict = {
            "sent": 0, "kept": 0, "cancelled": 0, "post_only_rejected": 0, "rate_limited": 0,
            "refused": {}, "fills": 0, "stream_fills": 0, "fill_reads": 0, "reconciliations": 0,
            "heartbeats": 0, "weight_held": 0, "backed_off": 0, "venue_errors": 0,
        }  # fmt: skip
        self._n = 0
        self._last_diff: float | None = None  # the previous read-back's difference, not yet booked

    # -- start and stop ------------------------------------------------------------------------
    def start(self, engine_tick: float, *, last_trade_id: int | None = None) -> float:
        """Read the contract's rules, cancel whatever rests, and set where our fills start (after
        ``last_trade_id``, a resumed session's last journaled fill; else after the venue's latest).
        Returns the venue's position (base units). The engine's tick must be the venue's."""
        self.rules = SymbolRules.from_exchange_info(
            self.rest.call("GET", "/fapi/v1/exchangeInfo", signed=False), self.symbol
        )
        if engine_tick > 0 and abs(self.rules.tick - engine_tick) > 1e-9 * max(engine_tick, 1.0):
            raise ValueError(
                f"market.tick = {engine_tick:g}, but the venue's {self.symbol} tick is {self.rules.tick:g}: "
                "the engine would quote off the venue's grid"
            )
        self.cancel_all("start")
        self.heartbeat(force=True)  # the dead-man switch, armed before the first order
        if last_trade_id is None:
            trades = self.rest.call("GET", "/fapi/v1/userTrades", {"symbol": self.symbol, "limit": 1000})
            last_trade_id = max((int(t["id"]) for t in trades), default=-1)
        self.last_trade_id = self.booked_id = last_trade_id
        pos = self.position()
        self.event("gateway_start", tick=self.rules.tick, step=self.rules.step, venue_position=pos,
                   last_trade_id=self.last_trade_id)  # fmt: skip
        return pos

    def weight_ok(self) -> bool:
        """Whether a request that can wait may go now: not while the venue asks us to back off,
        nor once its count of our weight this minute passes ``max_weight_share`` of its limit (a
        count older than a minute no longer holds)."""
        if self.backing_off():
            return False
        w = self.rest.used_weight
        if w is None or time.monotonic() - self.rest.weight_read_at > 60.0:
            return True
        limit = self.rules.weight_limit if self.rules is not None else WEIGHT_LIMIT_1M
        return w < self.max_weight_share * limit

    def backing_off(self) -> bool:
        """Whether the venue's last 429 / 418 still asks us to send nothing (its Retry-After)."""
        return time.monotonic() < self.rest.hold_until

    def _backed_off(self, status: int, wait_s: float) -> None:
        self.counts["backed_off"] += 1
        self.event("venue_back_off", status=status, retry_s=wait_s)

    def cancel_all(self, why: str) -> bool:
        """Cancel every open order of ours on the contract; False if the venue could not be told
        (the error is journaled: a next start cancels again; while the venue asks us to back off,
        nothing is sent and its countdown cancels)."""
        if self.backing_off():
            self.event("cancel_all_deferred", why=why)
            return False
        try:
            self.rest.call("DELETE", "/fapi/v1/allOpenOrders", {"symbol": self.symbol})
        except (OSError, VenueError) as e:
            self.counts["venue_errors"] += 1
            self.event("cancel_all_failed", why=why, error=str(e))
            return False
        self.orders = {1: None, -1: None}
        self.event("cancel_all", why=why)
        return True

    def close(self, why: str) -> dict:
        """At a stop: cancel-all, then what the venue holds that the engine has not booked (fills
        after the last observation's interval, base units signed + bought) and its position."""
        out: dict = {"cancelled": self.cancel_all(why)}
        if math.isfinite(self._beat):  # nothing rests: the venue's countdown is no longer needed
            try:
                self._countdown(0)
            except (OSError, VenueError) as e:
                self.event("countdown_off_failed", error=str(e))
        try:
            new = self.rest.call("GET", "/fapi/v1/userTrades", {"symbol": self.symbol, "fromId": self.booked_id + 1})
            out["unbooked_fills"] = len(new)
            out["unbooked_qty"] = float(sum((1 if t["side"] == "BUY" else -1) * float(t["qty"]) for t in new))
            out["venue_position"] = self.position()
        except (OSError, VenueError) as e:
            out["error"] = str(e)
        if self._listening:  # end the user-data stream (its key lapses anyway within the hour)
            try:
                self.rest.call("DELETE", "/fapi/v1/listenKey", signed=False, keyed=True)
            except (OSError, VenueError) as e:
                self.event("listen_key_close_failed", error=str(e))
        self.rest.close()
        return out

    def heartbeat(self, *, force: bool = False) -> None:
        """Renew the venue's countdown to cancel all (``dead_man_s`` from now) once a third of it
        has passed since the last renewal (or now, ``force``); nothing with ``dead_man_s`` = 0. A
        failure raises (the caller pulls the quotes: the countdown may lapse)."""
        if self.dead_man_s <= 0 or self.backing_off():
            return
        now = time.monotonic()
        if not force and now - self._beat < self.dead_man_s / 3.0:
            return
        self._countdown(int(round(1e3 * self.dead_man_s)))
        self._beat = now
        self.counts["heartbeats"] += 1

    def _countdown(self, ms: int) -> None:
        """Set the venue's countdown to cancel all our orders on the contract to ``ms`` (0: off)."""
        self.rest.call("POST", "/fapi/v1/countdownCancelAll", {"symbol": self.symbol, "countdownTime": ms})

    def listen_key(self) -> str:
        """A user-data stream's listen key (``POST /fapi/v1/listenKey``; the venue returns the
        account's current one if it has one). It is a credential: never journaled."""
        r = self.rest.call("POST", "/fapi/v1/listenKey", signed=False, keyed=True)
        k = r.get("listenKey") if isinstance(r, dict) else None
        if not (isinstance(k, str) and k and k.isalnum()):
            raise VenueError(200, None, "the listen key answer holds no listen key")
        self._listening = True
        return k

    def on_stream_event(self, event: dict) -> bool:
        """One decoded user-data stream event: our fill to the inbox, an order the venue cancelled
        or expired to :attr:`gone`, anything else ignored. False for a fill that cannot be read
        (counted by the caller); the next observation then reads the venue's trade list, which has
        it."""
        t = trade_of_event(event, self.symbol)
        if t is not None:
            self.inbox.append(t)
            return True
        o = event.get("o") if isinstance(event, dict) and event.get("e") == "ORDER_TRADE_UPDATE" else None
        if not isinstance(o, dict):
            return True
        if o.get("x") == "TRADE":
            self.stream_gen += 1
            return False
        if o.get("X") in ("CANCELED", "EXPIRED"):
            with contextlib.suppress(KeyError, TypeError, ValueError):
                self.gone.append(int(o["i"]))  # forgotten at the next observation
        return True

    def keep_alive(self) -> None:
        """Renew the listen key (``PUT /fapi/v1/listenKey``), every :data:`LISTEN_KEY_KEEPALIVE_S`."""
        self.rest.call("PUT", "/fapi/v1/listenKey", signed=False, keyed=True)

    def position(self) -> float:
        rows = self.rest.call("GET", "/fapi/v2/positionRisk", {"symbol": self.symbol})
        return float(sum(float(r["positionAmt"]) for r in rows if str(r.get("symbol", "")).upper() == self.symbol))

    # -- every observation -----------------------------------------------------------------------
    def _take(self, t: dict, *, streamed: bool) -> None:
        """A fill of ours, from the stream or a REST read: kept for booking once per trade id."""
        i = int(t["id"])
        if i <= self.booked_id or i in self._seen:
            return
        self._seen.add(i)
        self.last_trade_id = max(self.last_trade_id, i)
        self.pending.append(t)
        self.counts["fills"] += 1
        self.counts["stream_fills"] += streamed
        side = 1 if t["side"] == "BUY" else -1
        o = self.orders.get(side)
        if o is not None and o.order_id == int(t["orderId"]):
            o.filled += float(t["qty"])
            if o.open_qty <= 1e-12:
                self.orders[side] = None

    def fills(self, until_ms: float) -> tuple[float, float, float, float]:
        """Our fills stamped up to ``until_ms`` (exchange ms) since the last call:
        ``(bid size, bid VWAP, ask size, ask VWAP)``, base units and quote currency. They come from
        the stream's inbox; the venue's trade list is read as well while the stream is not
        connected, and once after it (re)connects (what came before it)."""
        while self.inbox:
            self._take(self.inbox.popleft(), streamed=True)
        while self.gone:  # cancelled by the venue (its countdown, an expiry) or by hand
            oid = self.gone.popleft()
            for side, o in self.orders.items():
                if o is not None and o.order_id == oid:
                    self.event("order_gone", side=side, order_id=oid)
                    self.orders[side] = None
        gen, connected = self.stream_gen, self.stream_connected
        if (not connected or self._caught_up_gen != gen) and not self.backing_off():
            self.counts["fill_reads"] += 1
            new = self.rest.call(
                "GET", "/fapi/v1/userTrades", {"symbol": self.symbol, "fromId": self.booked_id + 1, "limit": 1000}
            )
            for t in sorted(new, key=lambda t: int(t["id"])):
                self._take(t, streamed=False)
            if connected:
                self._caught_up_gen = gen  # what came before this connection is read
        now = sorted((t for t in self.pending if int(t["time"]) <= until_ms), key=lambda t: int(t["id"]))
        self.pending = [t for t in self.pending if int(t["time"]) > until_ms]
        self.booked_id = max([self.booked_id] + [int(t["id"]) for t in now])
        self._seen = {i for i in self._seen if i > self.booked_id}
        for t in now:  # journaled as booked: a resumed session reads on after the last of these
            self.event("fill", id=int(t["id"]), order_id=int(t["orderId"]), side=t["side"],
                       price=float(t["price"]), qty=float(t["qty"]), commission=float(t.get("commission", 0.0)),
                       time=int(t["time"]))  # fmt: skip
        out = []
        for side in ("BUY", "SELL"):
            q = sum(float(t["qty"]) for t in now if t["side"] == side)
            px = sum(float(t["qty"]) * float(t["price"]) for t in now if t["side"] == side) / q if q > 0 else 0.0
            out += [q, px]
        return tuple(out)

    def reconcile(self, engine_position: float) -> float:
        """Every ``reconcile_every``-th call: the venue's open orders and position read back. An
        order we believe open that is not is dropped, an open one we do not know is cancelled.
        Returns the position the engine misses (venue minus engine, base units; 0 when they agree
        or it is not this call's turn). A difference is booked (and journaled) only when two
        read-backs in a row see the same one: a fill the venue's position shows before its trade
        list does is then not booked twice."""
        self._n += 1
        if (self._n - 1) % self.reconcile_every:
            return 0.0
        if not self.weight_ok():
            self._n -= 1  # its turn again at the next observation
            return 0.0
        self.counts["reconciliations"] += 1
        open_ = self.rest.call("GET", "/fapi/v1/openOrders", {"symbol": self.symbol})
        ids = {int(o["orderId"]) for o in open_}
        for side, o in self.orders.items():
            if o is not None and o.order_id not in ids:
                self.event("order_gone", side=side, order_id=o.order_id)
                self.orders[side] = None
        ours = {o.order_id for o in self.orders.values() if o is not None}
        for o in open_:
            if int(o["orderId"]) not in ours:
                self._cancel_id(int(o["orderId"]), "unknown")
        venue = self.position()
        diff = venue - engine_position
        half = 0.5 * (self.rules.step if self.rules else 1e-9)
        if abs(diff) <= half or self.pending:
            self._last_diff = None
            return 0.0  # agree (or fills stamped after the last interval are still to be booked)
        # A fill since the last read (before or after the position's) is in one and not the other:
        # the next observation books it and the comparison waits.
        if self.rest.call("GET", "/fapi/v1/userTrades", {"symbol": self.symbol, "fromId": self.last_trade_id + 1}):
            self._last_diff = None
            return 0.0
        if self._last_diff is None or abs(diff - self._last_diff) > half:
            self._last_diff = diff
            self.event("reconcile_seen", venue_position=venue, engine_position=engine_position, diff=diff)
            return 0.0
        self._last_diff = None
        self.event("reconcile", venue_position=venue, engine_position=engine_position, booked=diff)
        return diff

    def sync(self, quote: dict | None, *, position: float, equity: float, mid: float, healthy: bool) -> None:
        """Make the venue's orders the quote's: keep an order the quote repeats, cancel and replace
        one it changes, cancel one it withdraws. Nothing new goes out when the feed is unhealthy.
        The dead-man switch is renewed first when its turn has come."""
        self.heartbeat()
        for side, key in ((1, "bid"), (-1, "ask")):
            want = None
            if quote is not None and healthy and quote[f"{key}_active"] and self.rules is not None:
                qty = float(self.rules.qty(quote[f"{key}_size"]))
                px = float(self.rules.price(quote[f"{key}_price"]))
                if qty >= self.rules.min_qty and qty * px >= self.rules.min_notional and px > 0:
                    want = (px, qty)
            o = self.orders[side]
            if (
                o is not None
                and want is not None
                and abs(o.price - want[0]) <= 0.5 * self.rules.tick
                and o.open_qty <= want[1] + 0.5 * self.rules.step
                and o.qty >= want[1] - 0.5 * self.rules.step
            ):
                self.counts["kept"] += 1
                continue
            if o is not None and not self._cancel(side, "requote" if want is not None else "withdrawn"):
                continue  # still resting as far as we know: no second order beside it
            if want is None:
                continue
            why = self.limits.allows(side, want[1], want[0], position, equity, mid)
            if why is not None:
                self.counts["refused"][why] = self.counts["refused"].get(why, 0) + 1
                continue
            if not self.weight_ok():
                self.counts["weight_held"] += 1
                continue
            if not self.limits.take_token():
                self.counts["rate_limited"] += 1
                continue
            self._place(side, *want)

    # -- single orders ---------------------------------------------------------------------------
    def _place(self, side: int, price: float, qty: float) -> None:
        self.counts["sent"] += 1
        cid = f"{self.tag}-{self.counts['sent']}"
        params = {
            "symbol": self.symbol, "side": "BUY" if side > 0 else "SELL", "type": "LIMIT", "timeInForce": "GTX",
            "quantity": self.rules.qty(qty), "price": self.rules.price(price), "newClientOrderId": cid,
        }  # fmt: skip
        try:
            r = self.rest.call("POST", "/fapi/v1/order", params)
        except VenueError as e:
            if e.code == POST_ONLY_REJECTED:
                self.counts["post_only_rejected"] += 1
                self.event("order_rejected", side=side, price=price, qty=qty, client_id=cid, code=e.code)
                return
            self.counts["venue_errors"] += 1
            self.event("order_failed", side=side, price=price, qty=qty, client_id=cid, error=str(e))
            return
        except OSError as e:
            self.counts["venue_errors"] += 1
            self.event("order_failed", side=side, price=price, qty=qty, client_id=cid, error=str(e))
            return
        self.orders[side] = Order(cid, int(r["orderId"]), side, price, qty, float(r.get("executedQty", 0.0)))
        self.event("order", side=side, price=price, qty=qty, client_id=cid, order_id=int(r["orderId"]))

    def _cancel(self, side: int, why: str) -> bool:
        """Cancel our order on ``side``; it stops being ours only when the venue confirms (or says
        it is gone already). False: it may still rest, and stays tracked."""
        o = self.orders[side]
        if self._cancel_id(o.order_id, why):
            self.orders[side] = None
            return True
        return False

    def _cancel_id(self, order_id: int, why: str) -> bool:
        """True if the order is no longer open (cancelled now, or already filled or gone)."""
        if self.backing_off():
            return False
        try:
            self.rest.call("DELETE", "/fapi/v1/order", {"symbol": self.symbol, "orderId": order_id})
            self.counts["cancelled"] += 1
            self.event("cancel", order_id=order_id, why=why)
            return True
        except VenueError as e:
            if e.code == UNKNOWN_ORDER:  # already filled or gone: its fills come with the next read
                return True
            self.counts["venue_errors"] += 1
            self.event("cancel_failed", order_id=order_id, error=str(e))
        except OSError as e:
            self.counts["venue_errors"] += 1
            self.event("cancel_failed", order_id=order_id, error=str(e))
        return False
