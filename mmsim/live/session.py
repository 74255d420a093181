"""A live session: the venue's public market streams ▸ :class:`~mmsim.live.stream.FeedBuilder` ▸
:class:`~mmsim.live.replay.Trader` (the simulator's ``engine.step``, compiled at start-up, and the
paper gateway's fill rule) ▸ quotes, with every observation, quote and event in the journal
(:mod:`mmsim.live.journal`). The gateway is paper by default (``live.gateway=paper``: nothing is
sent to the venue, the quotes fill against its live trades as in a replay); ``live.gateway=orders``
sends them as post-only orders (:mod:`mmsim.live.orders`), on the venue's testnet unless
``live.mainnet=true`` is given as well, and the engine books the venue's own fills.

Health: no message for ``stale_s`` seconds of the local clock pulls the quotes until one arrives
(a book older than ``stale_s`` at an interval's end does the same, as in a replay); a broken
connection pulls them and reconnects with exponential back-off; the kill switch (a file that
appears, or SIGUSR1) pulls them and ends the session; SIGINT, SIGTERM and SIGHUP end it cleanly. The
clock offset (receive minus exchange time of the books) is measured and journaled.

Times: ``wall`` and receive times in s since the epoch on the local clock; latencies in ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import signal
import sys
import time
from pathlib import Path

import numpy as np

from mmsim.live import orders as lo
from mmsim.live.guard import GuardParams
from mmsim.live.journal import Journal
from mmsim.live.replay import Trader
from mmsim.live.stream import FeedBuilder

#: Binance USD-M's public market-data endpoints (the default venue).
BINANCE_USDM_WS = "wss://fstream.binance.com"
BINANCE_USDM_REST = "https://fapi.binance.com"


@dataclasses.dataclass(frozen=True)
class LiveSettings:
    """``live.*`` in the configuration (``conf/live/binance_usdm.yaml``).

    Attributes:
        venue: "binance_usdm" (the one venue with a connector).
        symbol: the contract, e.g. "BTCUSDT" (default: the market's first asset).
        ws_url, rest_url: the venue's market-data endpoints (a local emulator's in tests).
        cadence_s: seconds of exchange time per observation (the engine's step); with
            ``cadence: book`` the least seconds between two observations.
        cadence: "clock" (an observation every ``cadence_s``) or "book" (event-driven: one at
            each top-of-book update, at least ``cadence_s`` apart).
        grace_s: an observation closes once a book stamped this long past its end arrives, s.
        stale_s: no message for this long (local clock) pulls the quotes, s.
        max_clock_skew_s: a message stamped further than this from its receive time is refused
            (the guard's check); a recording streamed by the local emulator is years old, and
            its sessions raise this past its age, s.
        reconnect_min_s, reconnect_max_s: the back-off's first and largest wait, s.
        open_timeout_s: a connection not open after this long is retried, s.
        max_observations: end after this many observations (0: no limit).
        max_runtime_s: end after this long (0: no limit), s.
        kill_file: a path whose appearance pulls the quotes and ends the session ("" for none).
        snapshot_every: observations between two engine-state snapshots in the journal.
        fsync_s: the journal is fsynced at least this often, s.
        status_s: a status line on stderr this often (0: none), s.
        gateway: "paper" (fills by the fill rule, nothing sent) or "orders" (post-only orders on
            the venue, its fills booked).
        mainnet: with gateway "orders", send to the venue's mainnet (default: its testnet, whose
            market streams the session then also reads).
        order_url: the venue's order API ("": the testnet's, or the mainnet's with ``mainnet``).
        api_key_env, api_secret_env: the environment variables holding the API key pair (the
            values are never written anywhere).
        max_orders_10s: new orders per 10 s at most (the venue allows 300).
        recv_window_ms: how far the venue may find our clock off, ms.
        order_timeout_s: one order-API request's timeout, s.
        reconcile_every: observations between two read-backs of the venue's position and orders.
        dead_man_s: with gateway "orders", the venue's countdown to cancel all our orders, renewed
            every third of it while the session runs: a process killed or hung without a word has
            its orders cancelled by the venue this long after the last renewal, s (0: off).
        max_weight_share: with gateway "orders", past this share of the venue's request weight per
            minute (its count in each answer) new orders and read-backs wait; cancels still go.
        user_stream: with gateway "orders", take our fills from the venue's user-data stream
            (``<ws_url>/ws/<listenKey>``), reading them by REST only while it is down and once
            after each (re)connection; false: a REST read at every observation.
        depth: also read the L2 book (``depth@100ms`` diffs kept consistent with the REST snapshot
            by their update ids); a gap in the ids, a crossed book or no snapshot pulls the quotes
            until a new snapshot resynchronises it.
        depth_limit: levels per side of the REST snapshot.
        l2_queue: with ``depth``, the paper gateway's queue behind the touch comes from the L2
            book: a quote behind the touch joins behind the size displayed at its price when it
            was sent, and fills from the volume traded there past it, as at the touch (without:
            only when traded through). A replay does the same (``mmsim live --replay``).
        latency_ms: the paper gateway's order latency, ms: a quote reaches the venue this long
            after it is sent, and the order it replaces rests until then (0: none).
        latency_file: instead, an empirical law: a file of latencies in ms, one per line, one
            drawn per quote ("" for none).
        latency_seed: the draws' seed.
    """

    venue: str = "binance_usdm"
    symbol: str = ""
    ws_url: str = BINANCE_USDM_WS
    rest_url: str = BINANCE_USDM_REST
    cadence_s: float = 1.0
    cadence: str = "clock"
    grace_s: float = 0.05
    stale_s: float = 10.0
    max_clock_skew_s: float = 300.0
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    open_timeout_s: float = 10.0
    max_observations: int = 0
    max_runtime_s: float = 0.0
    kill_file: str = ""
    snapshot_every: int = 60
    fsync_s: float = 1.0
    status_s: float = 5.0
    gateway: str = "paper"
    mainnet: bool = False
    order_url: str = ""
    api_key_env: str = "MMSIM_API_KEY"
    api_secret_env: str = "MMSIM_API_SECRET"
    max_orders_10s: int = 50
    recv_window_ms: int = 5000
    order_timeout_s: float = 5.0
    reconcile_every: int = 10
    user_stream: bool = True
    dead_man_s: float = 60.0
    max_weight_share: float = 0.8
    depth: bool = True
    depth_limit: int = 1000
    l2_queue: bool = True
    latency_ms: float = 0.0
    latency_file: str = ""
    latency_seed: int = 0

    def __post_init__(self) -> None:
        if self.cadence not in ("clock", "book"):
            raise ValueError(
                f"live.cadence = {self.cadence!r}: must be 'clock' or 'book' (an observation per book update)"
            )
        if self.gateway not in ("paper", "orders"):
            raise ValueError(f"live.gateway = {self.gateway!r}: must be 'paper' or 'orders'")
        for f in ("mainnet", "depth", "user_stream", "l2_queue"):
            if not isinstance(getattr(self, f), bool):
                raise ValueError(f"live.{f} = {getattr(self, f)!r}: must be true or false")
        if self.depth_limit not in (5, 10, 20, 50, 100, 500, 1000):
            raise ValueError(
                f"live.depth_limit = {self.depth_limit!r}: must be one of the venue's 5, 10, 20, 50, 100, 500, 1000"
            )
        if not (isinstance(self.max_orders_10s, int) and 1 <= self.max_orders_10s < lo.VENUE_ORDERS_10S):
            raise ValueError(
                f"live.max_orders_10s = {self.max_orders_10s!r}: must be an integer in [1, {lo.VENUE_ORDERS_10S}) "
                "(below the venue's limit)"
            )
        for f in ("recv_window_ms", "reconcile_every"):
            v = getattr(self, f)
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"live.{f} = {v!r}: must be an integer >= 1")
        for f in ("api_key_env", "api_secret_env"):
            v = getattr(self, f)
            if not (isinstance(v, str) and v.isidentifier()):
                raise ValueError(f"live.{f} = {v!r}: must name an environment variable")
        if self.gateway == "orders":
            if not self.order_url:
                object.__setattr__(self, "order_url", lo.MAINNET_REST if self.mainnet else lo.TESTNET_REST)
            if not self.mainnet:
                import urllib.parse

                # An allowlist: without live.mainnet, orders go to the testnet or the loopback
                # address (a local emulator) and nowhere else, whatever the host's spelling.
                host = (urllib.parse.urlsplit(self.order_url).hostname or "").lower()
                if host not in (urllib.parse.urlsplit(lo.TESTNET_REST).hostname, "127.0.0.1", "localhost", "::1"):
                    raise ValueError(
                        f"live.order_url = {self.order_url!r} is neither the testnet nor the loopback address: "
                        "real orders anywhere else need live.mainnet=true as well"
                    )
                if self.ws_url == BINANCE_USDM_WS and self.rest_url == BINANCE_USDM_REST:
                    # Orders on the testnet meet the testnet's book: read its market streams.
                    object.__setattr__(self, "ws_url", lo.TESTNET_WS)
                    object.__setattr__(self, "rest_url", lo.TESTNET_REST)
        if self.venue != "binance_usdm":
            raise ValueError(f"live.venue = {self.venue!r}: the connector speaks 'binance_usdm' only")
        for f in ("ws_url", "rest_url") + (("order_url",) if self.gateway == "orders" else ()):
            v = getattr(self, f)
            ok = ("ws://", "wss://") if f == "ws_url" else ("http://", "https://")
            if not (isinstance(v, str) and v.startswith(ok)):
                raise ValueError(f"live.{f} = {v!r}: must start with {' or '.join(ok)}")
        for f in (
            "cadence_s",
            "stale_s",
            "max_clock_skew_s",
            "reconnect_min_s",
            "reconnect_max_s",
            "open_timeout_s",
            "order_timeout_s",
        ):
            v = getattr(self, f)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"live.{f} = {v!r}: must be a positive number of seconds")
        for f in ("grace_s", "max_runtime_s", "fsync_s", "status_s"):
            v = getattr(self, f)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"live.{f} = {v!r}: must be a number of seconds >= 0")
        for f in ("max_observations", "snapshot_every"):
            v = getattr(self, f)
            if not (isinstance(v, int) and v >= (1 if f == "snapshot_every" else 0)):
                raise ValueError(f"live.{f} = {v!r}: must be an integer >= {1 if f == 'snapshot_every' else 0}")
        if not (isinstance(self.dead_man_s, (int, float)) and (self.dead_man_s == 0 or 1 <= self.dead_man_s <= 3600)):
            raise ValueError(
                f"live.dead_man_s = {self.dead_man_s!r}: must be 0 (off) or a number of seconds in [1, 3600]"
            )
        if not (isinstance(self.max_weight_share, (int, float)) and 0 < self.max_weight_share <= 1):
            raise ValueError(f"live.max_weight_share = {self.max_weight_share!r}: must be in (0, 1]")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("live.reconnect_max_s must be >= live.reconnect_min_s")
        if not (isinstance(self.latency_seed, int) and self.latency_seed >= 0):
            raise ValueError(f"live.latency_seed = {self.latency_seed!r}: must be an integer >= 0")
        if not (isinstance(self.latency_ms, (int, float)) and math.isfinite(self.latency_ms)):
            raise ValueError(f"live.latency_ms = {self.latency_ms!r}: must be a number of ms")
        try:
            self.latency()  # the law is valid (and its file readable) before anything connects
        except OSError as e:
            raise ValueError(f"live.latency_file = {self.latency_file!r}: {e.strerror or e}") from None
        except ValueError as e:
            raise ValueError(str(e) if str(e).startswith("live.") else f"live.latency_file: {e}") from None

    def latency(self):
        """The paper gateway's :class:`~mmsim.live.paper.Latency` from ``latency_*``."""
        from mmsim.live.paper import Latency

        if self.latency_file:
            if self.latency_ms:
                raise ValueError("live.latency_ms and live.latency_file: one or the other")
            return Latency.from_file(self.latency_file, seed=self.latency_seed)
        try:
            return Latency(constant_s=self.latency_ms / 1e3)
        except ValueError:
            raise ValueError(f"live.latency_ms = {self.latency_ms!r}: must be in [0, 60000) ms") from None

    def depth_url(self, symbol: str) -> str:
        """The REST depth snapshot."""
        return f"{self.rest_url.rstrip('/')}/fapi/v1/depth?symbol={symbol.upper()}&limit={self.depth_limit}"

    def stream_url(self, symbol: str) -> str:
        """The combined stream: top of book, trades (with the liquidation marker), mark price and
        funding every second, forced orders, and with ``depth`` the L2 diffs every 100 ms."""
        s = symbol.lower()
        streams = [f"{s}@bookTicker", f"{s}@trade", f"{s}@markPrice@1s", f"{s}@forceOrder"]
        if self.depth:
            streams.append(f"{s}@depth@100ms")
        return f"{self.ws_url.rstrip('/')}/stream?streams={'/'.join(streams)}"


def live_settings(block) -> LiveSettings:
    """``LiveSettings`` from the ``live`` block of a configuration (unknown keys named)."""
    d = dict(block or {})
    known = {f.name for f in dataclasses.fields(LiveSettings)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"live: unknown key(s) {unknown}; valid keys: {sorted(known)}")
    return LiveSettings(**d)


class Session:
    """One live session (see the module docstring). ``trader`` and ``builder`` may come from a
    journal (:func:`open_session` with ``resume``); ``journal`` is appended to."""

    def __init__(
        self,
        settings: LiveSettings,
        trader: Trader,
        builder: FeedBuilder,
        journal: Journal,
        *,
        seq: int = 0,
        gateway: lo.OrderGateway | None = None,
        booked_id: int | None = None,
    ):
        self.s = settings
        self.trader, self.builder, self.journal = trader, builder, journal
        self.gateway = gateway  # None: paper fills
        self._booked_id = booked_id  # a resumed orders session: the last venue fill its engine booked
        self._correction = 0.0  # base units the venue holds and the engine does not (booked next)
        self.venue_at_stop: dict = {}  # an orders session's last word from the venue (Gateway.close)
        # The L2 book (live.depth): in sync with a snapshot, or the quotes are held.
        self.depth_ok = not settings.depth
        self.resyncs = 0
        self._gaps_seen = 0
        self._resync_at = 0.0  # monotonic time of the next snapshot request while out of sync
        self._resync_delay = settings.reconnect_min_s
        self.seq = seq  # the next observation's number
        self.stop_reason: str | None = None
        self.reconnects = 0
        self.connections = 0
        self.stale_events = 0
        self.step_ms: list[float] = []
        self.tick_to_quote_ms: list[float] = []
        self.rows: list[tuple] = []
        self.terms: list[dict | None] = []  # each observation's quote terms (engine.explain_step)
        self.fills = 0  # observations with a paper fill (the status line's count)
        self._started = time.monotonic()
        self._last_status = 0.0
        self._last_msg = time.monotonic()
        self._healthy = True
        self._book_stale = False  # event-driven: trades come, but no book for stale_s of their time
        self._user_task: asyncio.Task | None = None  # the user-data stream (orders gateway)
        self.user_connections = 0
        self.user_malformed = 0  # user-data stream messages that could not be read

    # -- the loop ---------------------------------------------------------------------------
    async def run(self) -> str:
        """Run until a limit, the kill switch or a signal; returns why it stopped."""
        loop = asyncio.get_running_loop()
        stops = ((signal.SIGINT, "interrupted"), (signal.SIGTERM, "terminated"), (signal.SIGHUP, "hangup"))
        for sig, why in (*stops, (signal.SIGUSR1, "kill")):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self.stop, why)
        from websockets.asyncio.client import connect
        from websockets.exceptions import WebSocketException

        url = self.s.stream_url(self.builder.symbol or "")
        delay = self.s.reconnect_min_s
        self.journal.event("start", url=url, seq=self.seq, gateway=self.s.gateway)
        try:
            if self.gateway is not None:
                # Rules, cancel-all (what a killed session left), where our fills start.
                await asyncio.to_thread(self.gateway.start, self.trader.tick, last_trade_id=self._booked_id)
                if self.s.user_stream:
                    self._user_task = asyncio.create_task(self._user_stream())
            while self.stop_reason is None:
                try:
                    # close_timeout: at a stop, messages not yet read hold back the venue's reply to
                    # our close frame; the connection is dropped after 1 s rather than 10.
                    async with connect(
                        url,
                        open_timeout=self.s.open_timeout_s,
                        max_size=2**22,
                        compression=None,
                        proxy=None,
                        close_timeout=1.0,
                    ) as ws:
                        self.connections += 1
                        self.journal.event("connect", n=self.connections)
                        if self.s.depth:  # a new connection: its diffs start after a fresh snapshot
                            self._out_of_sync("connect")
                        got = await self._receive(ws)
                        if got:
                            delay = self.s.reconnect_min_s
                except (OSError, TimeoutError, WebSocketException) as e:
                    if self.stop_reason is not None:
                        break
                    await self._pull("disconnect")
                    self.reconnects += 1
                    self.journal.event("disconnect", error=f"{type(e).__name__}: {e}", retry_s=delay)
                    await self._sleep(delay)
                    delay = min(2 * delay, self.s.reconnect_max_s)
        finally:
            self.trader.pull()  # cancel-all: nothing rests after the session
            closing = {}
            if self._user_task is not None:
                self._user_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._user_task
            if self.gateway is not None:
                # Also after an exception (a signal or a kill switch stops the loop first).
                closing = await asyncio.to_thread(self.gateway.close, self.stop_reason or "error")
                self.venue_at_stop = closing
            self.journal.event(
                "stop",
                why=self.stop_reason,
                seq=self.seq,
                quality=self.builder.quality,
                trades=self.builder.trades_total,
                connections=self.connections,
                reconnects=self.reconnects,
                stale_events=self.stale_events,
                clock_offset_s=self.builder.clock_offset_s,
                depth_resyncs=self.resyncs,
                **(
                    {"orders": self.gateway.counts, "venue_at_stop": closing, "user_connections": self.user_connections}
                    if self.gateway is not None
                    else {}
                ),
            )
            if self.trader.n:
                self.journal.snapshot(self.seq - 1, self.trader)
            self.journal.close()
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1):
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.remove_signal_handler(sig)
        return self.stop_reason or "stopped"

    def stop(self, why: str) -> None:
        """End the session (a limit, the kill switch, a signal): the quotes are pulled now, and the
        orders gateway cancels the venue's orders as the loop ends (:meth:`run`'s ``finally``)."""
        if self.stop_reason is None:
            self.stop_reason = why
            self.trader.pull()

    async def _pull(self, why: str) -> None:
        """Withdraw the quotes (a stale or broken feed): the paper ones, and the venue's orders."""
        self.trader.pull()
        if self.gateway is not None:
            await asyncio.to_thread(self.gateway.cancel_all, why)

    async def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while self.stop_reason is None and time.monotonic() < end:
            await asyncio.sleep(min(0.05, max(end - time.monotonic(), 0.0)))
            self._check_limits()

    def _check_limits(self) -> None:
        if self.s.kill_file and Path(self.s.kill_file).exists():
            self.stop("kill")
        if self.s.max_runtime_s and time.monotonic() - self._started >= self.s.max_runtime_s:
            self.stop("max_runtime_s")
        if self.s.max_observations and self.seq >= self.s.max_observations:
            self.stop("max_observations")

    async def _user_stream(self) -> None:
        """The venue's user-data stream: its events to the gateway as they happen
        (:meth:`~mmsim.live.orders.OrderGateway.on_stream_event`). A listen key is asked for at each
        connection and renewed every ``LISTEN_KEY_KEEPALIVE_S``; a broken stream (or a refused key)
        is reconnected with the feed's back-off, the gateway reading its fills by REST meanwhile.
        The key is a credential: neither it nor the URL is journaled."""
        from websockets.asyncio.client import connect
        from websockets.exceptions import WebSocketException

        g = self.gateway
        delay = self.s.reconnect_min_s
        try:
            while self.stop_reason is None:
                try:
                    key = await asyncio.to_thread(g.listen_key)
                    url = f"{self.s.ws_url.rstrip('/')}/ws/{key}"
                    async with connect(url, open_timeout=self.s.open_timeout_s, compression=None, proxy=None,
                                       close_timeout=1.0) as ws:  # fmt: skip
                        g.stream_gen += 1
                        g.stream_connected = True
                        self.user_connections += 1
                        self.journal.event("user_stream_connect", n=self.user_connections)
                        delay = self.s.reconnect_min_s
                        renew = time.monotonic() + lo.LISTEN_KEY_KEEPALIVE_S
                        while self.stop_reason is None:
                            try:
                                raw = await asyncio.wait_for(ws.recv(), timeout=1.0)
                            except TimeoutError:
                                raw = None
                            if time.monotonic() >= renew:
                                await asyncio.to_thread(g.keep_alive)
                                renew = time.monotonic() + lo.LISTEN_KEY_KEEPALIVE_S
                            if raw is None:
                                continue
                            try:
                                event = json.loads(raw)
                            except ValueError:
                                self.user_malformed += 1
                                continue
                            if isinstance(event, dict) and event.get("e") == "listenKeyExpired":
                                raise ConnectionError("the listen key expired")
                            if not g.on_stream_event(event):
                                self.user_malformed += 1
                except (OSError, TimeoutError, WebSocketException, lo.VenueError) as e:
                    g.stream_connected = False
                    if self.stop_reason is not None:
                        break
                    self.journal.event("user_stream_disconnect", error=f"{type(e).__name__}", retry_s=delay)
                    await self._sleep(delay)
                    delay = min(2 * delay, self.s.reconnect_max_s)
        finally:  # whatever ends it (a stop, a cancel, an error of ours): fills by REST from now on
            g.stream_connected = False

    async def _receive(self, ws) -> bool:
        """Messages until the connection closes (``ConnectionClosed`` raised to :meth:`run`) or the
        session stops; True if any arrived."""
        got = False
        self._last_msg = time.monotonic()
        while self.stop_reason is None:
            try:
                raw = await asyncio.wait_for(ws.recv(), timeout=min(self.s.stale_s, 0.25))
            except TimeoutError:
                self._check_limits()
                if self._healthy and time.monotonic() - self._last_msg >= self.s.stale_s:
                    self._healthy = False
                    self.stale_events += 1
                    self.journal.event("stale", silent_s=time.monotonic() - self._last_msg)
                    await self._pull("stale")
                continue
            got = True
            received = time.time()
            self._last_msg = time.monotonic()
            if not self._healthy:
                self._healthy = True
                self.journal.event("healthy")
            if isinstance(raw, bytes):
                raw = raw.decode("utf-8", errors="replace")
            for iv in self.builder.message(received, raw):
                await self._observe(iv, received)
                if self.stop_reason is not None:
                    break
            if self.s.depth:
                await self._watch_depth()
            if self.s.cadence == "book":
                await self._watch_book_age()
            self._check_limits()
        return got

    async def _watch_book_age(self) -> None:
        """Event-driven, an observation comes only with a book: when trades keep coming but the
        newest book is ``stale_s`` older than the newest trade (exchange times), the quotes are
        pulled at once (on a clock the next observation's book age does it). They go out again
        with the next observation after a book arrives."""
        b = self.builder
        old = math.isfinite(b.latest) and b.trade_latest - b.latest > self.s.stale_s
        if old and not self._book_stale:
            self._book_stale = True
            self.stale_events += 1
            self.journal.event("stale", book_age_s=b.trade_latest - b.latest)
            await self._pull("stale_book")
        elif not old and self._book_stale:
            self._book_stale = False
            self.journal.event("healthy", what="book")

    async def _observe(self, iv, received: float) -> None:
        venue_fills = None
        if self.gateway is not None:
            venue_fills = await self._venue_fills(iv)
        t = time.perf_counter()
        row = self.trader.on_interval(iv, venue_fills=venue_fills, hold=not self.depth_ok)
        step_ms = 1e3 * (time.perf_counter() - t)
        if self.gateway is not None:
            await self._send(row, stale=bool(iv.book_age > self.s.stale_s) or not self.depth_ok)
        ttq_ms = 1e3 * (time.time() - received)
        self.step_ms.append(step_ms)
        self.tick_to_quote_ms.append(ttq_ms)
        self.rows.append(row)
        self.terms.append(self.trader.terms)
        self.fills += row[9] > 0 or row[10] > 0
        self.journal.observation(
            self.seq,
            self.builder.t0,
            iv,
            row,
            self.trader.quote,
            step_ms=step_ms,
            tick_to_quote_ms=ttq_ms,
            clock_offset_s=self.builder.clock_offset_s,
            terms=self.trader.terms,  # why it quoted there (non-finite terms written as null)
            **({"held": True} if not self.depth_ok else {}),  # quotes withdrawn: the L2 book out of sync
            **(
                {"venue_fills": list(venue_fills), "booked_id": self.gateway.booked_id}
                if self.gateway is not None
                else {}
            ),
        )
        if (self.seq + 1) % self.s.snapshot_every == 0:
            self.journal.snapshot(self.seq, self.trader)
        self.seq += 1
        self._check_limits()
        self._status(row)

    # -- the L2 book ---------------------------------------------------------------------------
    def _out_of_sync(self, why: str) -> None:
        d = self.builder.decoder
        d.sync.update(snapshot=None, synced=False, last_u=None)  # diffs wait for the next snapshot
        if self.depth_ok:
            self.journal.event("depth_out_of_sync", why=why)
        self.depth_ok = False
        self._resync_at = 0.0
        self._resync_delay = self.s.reconnect_min_s

    async def _watch_depth(self) -> None:
        """After each message: a gap in the diffs' update ids (or a crossed book, which drops the
        decoder's snapshot) takes the book out of sync and pulls the quotes; out of sync, a new
        snapshot is requested (with back-off when the venue does not answer)."""
        d = self.builder.decoder
        if d.gaps > self._gaps_seen:
            self._gaps_seen = d.gaps
            self._out_of_sync("gap")
        elif self.depth_ok and d.sync["snapshot"] is None:
            self._out_of_sync("crossed")
        if self.depth_ok or time.monotonic() < self._resync_at:
            return
        await self._pull("depth")
        self.resyncs += 1
        try:
            snap = await asyncio.to_thread(
                _get_json, self.s.depth_url(self.builder.symbol or ""), self.s.open_timeout_s
            )
            self.builder.snapshot(time.time(), snap)
            if d.sync["snapshot"] is None:
                raise ValueError("the snapshot's book is crossed")
        except (OSError, ValueError, KeyError, TypeError) as e:
            self.journal.event("resync_failed", error=f"{type(e).__name__}: {e}", retry_s=self._resync_delay)
            self._resync_at = time.monotonic() + self._resync_delay
            self._resync_delay = min(2 * self._resync_delay, self.s.reconnect_max_s)
            return
        self.depth_ok = True
        self.journal.event("depth_synced", last_update_id=int(snap["lastUpdateId"]), n=self.resyncs)

    async def _venue_fills(self, iv) -> tuple[float, float, float, float]:
        """The venue's fills of our orders up to the interval's end, with a pending reconciliation
        booked at the interval's mid; none (read at the next observation) if the venue cannot answer."""
        g = self.gateway
        try:
            fills = await asyncio.to_thread(g.fills, 1e3 * (self.builder.t0 + iv.t))
        except (OSError, lo.VenueError) as e:
            g.counts["venue_errors"] += 1
            self.journal.event("venue_error", during="fills", error=str(e))
            fills = (0.0, 0.0, 0.0, 0.0)
        fills = lo.with_correction(fills, self._correction, 0.5 * (iv.best_bid + iv.best_ask))
        self._correction = 0.0
        return fills

    async def _send(self, row: tuple, *, stale: bool) -> None:
        """The new quote to the venue: the reconciliation's turn, then the orders (none new on an
        unhealthy feed or a venue that does not answer; what rests is then cancelled)."""
        g = self.gateway
        try:
            self._correction = await asyncio.to_thread(g.reconcile, row[12])
            await asyncio.to_thread(
                g.sync,
                self.trader.quote,
                position=row[12],
                equity=row[13],
                mid=row[1],
                healthy=self._healthy and not stale,
            )
        except (OSError, lo.VenueError) as e:
            g.counts["venue_errors"] += 1
            self.journal.event("venue_error", during="orders", error=str(e))
            await asyncio.to_thread(g.cancel_all, "venue_error")

    def _status(self, row: tuple) -> None:
        if not self.s.status_s:
            return
        now = time.monotonic()
        if now - self._last_status < self.s.status_s:
            return
        self._last_status = now
        q = self.trader.quote or {}
        off = self.builder.clock_offset_s
        p50 = np.median(self.step_ms[-1000:]) if self.step_ms else float("nan")
        g = self.gateway
        orders = (
            ""
            if g is None
            else f"orders {g.counts['sent']} sent, {sum(o is not None for o in g.orders.values())} open  "
        )
        line = (
            f"[live] obs {self.seq:,}  pos {row[12]:+.4f}  equity {row[13]:,.2f}  "
            f"bid {q.get('bid_price', 0):.2f}{'' if q.get('bid_active') else ' (off)'}  "
            f"ask {q.get('ask_price', 0):.2f}{'' if q.get('ask_active') else ' (off)'}  "
            f"fills {self.fills}  {orders}"
            f"clock offset {'n/a' if off is None else f'{off:.3f} s'}  step p50 {p50:.2f} ms"
        )
        print(line, file=sys.stderr, flush=True)

    def latency(self) -> dict:
        """Step and tick-to-quote latency percentiles over the session, ms."""
        return {"step_ms": percentiles(self.step_ms), "tick_to_quote_ms": percentiles(self.tick_to_quote_ms)}


def _get_json(url: str, timeout_s: float):
    """A GET request's JSON answer (the REST depth snapshot); an HTTP error raises ``OSError``."""
    import json
    import urllib.request

    req = urllib.request.Request(url, headers={"Accept": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout_s) as r:  # noqa: S310 (http(s) only: LiveSettings checks)
        return json.loads(r.read())


def percentiles(xs) -> dict | None:
    """``{"p50", "p99", "max", "n"}`` of latencies (ms), None for none."""
    a = np.asarray(xs, float)
    if not len(a):
        return None
    return {"p50": float(np.median(a)), "p99": float(np.quantile(a, 0.99)), "max": float(a.max()), "n": len(a)}


def open_session(
    ep,
    settings: LiveSettings,
    run_dir: str | Path,
    *,
    symbol: str,
    depth_per_tick: float = 0.5,
    dtype=None,
    resume: bool = False,
    step_fn=None,
    credentials: lo.Credentials | None = None,
) -> tuple[Session, dict | None]:
    """A session writing to ``run_dir`` (its engine step compiled here), or, with ``resume``, the
    journaled session there brought back to where it stopped (:func:`mmsim.live.journal.restore`)
    and continued on the same observation grid. Returns ``(session, what restore said or None)``.

    With ``settings.gateway == "orders"``: ``credentials`` (default: from the environment variables
    the settings name) sign the orders; a policy with taker orders is refused (the gateway sends
    post-only limit orders only)."""
    import jax.numpy as jnp

    from mmsim.engine import policy as pol
    from mmsim.live import journal as jr

    if settings.gateway == "orders":
        if pol.takes(ep.policy):
            raise ValueError(
                "live.gateway = 'orders' sends post-only limit orders only; this policy sends taker orders "
                "(policy.event_flatten): use live.gateway=paper or set policy.event_flatten=0"
            )
        credentials = credentials or lo.Credentials.from_env(settings.api_key_env, settings.api_secret_env)

    trader = Trader(
        ep,
        depth_per_tick=depth_per_tick,
        dtype=dtype or jnp.float32,
        step_fn=step_fn,
        stale_s=settings.stale_s,
        latency=settings.latency(),
    )
    builder = FeedBuilder(
        settings.cadence_s,
        guard=GuardParams(max_clock_skew_s=settings.max_clock_skew_s, stale_s=settings.stale_s),
        symbol=symbol,
        grace_s=settings.grace_s,
        liq_valid=True,
        depth=settings.depth,
        on_book=settings.cadence == "book",
        depth_tick=float(trader.tick) if settings.depth and settings.l2_queue else 0.0,
    )
    restored = None
    if resume:
        restored = jr.restore(run_dir, trader)
        if restored["last"] is not None:
            builder.resume(restored["t0"], restored["seq"] + 1, restored["last"])
    journal = Journal(run_dir, fsync_s=settings.fsync_s)
    if restored is not None:
        journal.event("resume", seq=restored["seq"], restepped=restored["restepped"], torn=restored["torn"])
    seq = restored["seq"] + 1 if restored else 0
    gateway = None
    if settings.gateway == "orders":
        rest = lo.Rest(settings.order_url, credentials, timeout_s=settings.order_timeout_s,
                       recv_window_ms=settings.recv_window_ms)  # fmt: skip
        acc = trader.ep.account
        limits = lo.Limits(
            max_position=float(np.max(np.asarray(acc.max_inventory, float))),
            leverage=float(np.asarray(acc.leverage, float)),
            max_orders_10s=settings.max_orders_10s,
        )
        tag = f"mm{int(time.time()) % 10**8}"  # client order ids: mm<start>-<n>, unique per session start
        gateway = lo.OrderGateway(
            rest, symbol, limits, journal.event, tag=tag, reconcile_every=settings.reconcile_every,
            dead_man_s=settings.dead_man_s, max_weight_share=settings.max_weight_share,
        )  # fmt: skip
    booked = None
    if restored is not None and gateway is not None:
        ids = [r["booked_id"] for r in restored["records"] if r.get("k") == "obs" and "booked_id" in r]
        booked = ids[-1] if ids else None
    session = Session(settings, trader, builder, journal, seq=seq, gateway=gateway, booked_id=booked)
    if restored:
        session.rows = list(restored["rows"])
        session.terms = [r.get("terms") for r in restored["records"] if r.get("k") == "obs"]
        session.fills = sum(r[9] > 0 or r[10] > 0 for r in session.rows)
    return session, restored


def _result(trader: Trader, rows: list, fs: dict, run_s: float, live: dict, terms: list | None = None):
    """A :class:`~mmsim.live.replay.ReplayResult` of journal rows: the replay's metrics (``fs``: the
    feed's summary without its duration) and the live ones."""
    import pandas as pd

    from mmsim.live.replay import JOURNAL_COLUMNS, ReplayResult, _metrics, terms_frame

    journal = pd.DataFrame(rows, columns=list(JOURNAL_COLUMNS)).astype({"bid": float, "ask": float})
    if len(journal):
        fs = {**fs, "duration_s": float(journal["t"].iloc[-1])}
        if fs.get("cadence") == "book":  # event-driven: the mean spacing
            fs["cadence_s"] = fs["duration_s"] / len(journal)
        m = _metrics(trader.ep, fs, journal, trader.state, trader.compile_s, run_s, trader.n_stale)
    else:
        m = {"observations": 0}
    m["live"] = {"gateway": "paper", **live}  # live["gateway"] says "orders" for an orders session
    if m["live"]["gateway"] == "paper":
        from mmsim.live.replay import latency_summary

        m["paper_latency"] = latency_summary(trader.latency)
    tf = None
    if terms and len(terms) == len(journal) and all(t is not None for t in terms):
        tf = terms_frame(journal["t"], [{k: (np.nan if v is None else v) for k, v in t.items()} for t in terms])
    return ReplayResult(journal, m, trader.state, tf)


def result(session: Session):
    """The session as a :class:`~mmsim.live.replay.ReplayResult` (journal, metrics, final state):
    the replay's metrics plus the live ones (connections, reconnects, stale events, latency)."""
    b = session.builder
    fs = {
        "cadence_s": session.s.cadence_s,
        "cadence": session.s.cadence,
        "start_epoch_s": b.t0,
        "trades": b.trades_total,
        "quality": b.quality,
        "symbol": b.symbol,
    }
    live = {
        "gateway": session.s.gateway,
        **(
            {
                "orders": session.gateway.counts,
                "venue_at_stop": session.venue_at_stop,
                "user_stream": {
                    "on": session.s.user_stream,
                    "connections": session.user_connections,
                    "malformed": session.user_malformed,
                },
                "order_requests": session.gateway.rest.requests,
            }
            if session.gateway is not None
            else {}
        ),
        "stop_reason": session.stop_reason,
        "connections": session.connections,
        "reconnects": session.reconnects,
        "stale_events": session.stale_events,
        "depth_resyncs": session.resyncs,
        "clock_offset_s": b.clock_offset_s,
        "latency": session.latency(),
    }
    return _result(session.trader, session.rows, fs, time.monotonic() - session._started, live, session.terms)


def report_journal(run_dir: str | Path, ep, settings: LiveSettings, *, depth_per_tick: float = 0.5, dtype=None):
    """A journaled session (stopped or crashed) as a :class:`~mmsim.live.replay.ReplayResult`:
    the engine state from its last snapshot and the observations after it, the journal rows of
    every observation, the session's counts from its stop record where it has one."""
    import jax.numpy as jnp

    from mmsim.live import journal as jr

    trader = Trader(
        ep, depth_per_tick=depth_per_tick, dtype=dtype or jnp.float32, stale_s=settings.stale_s,
        latency=settings.latency(),
    )  # fmt: skip
    r = jr.restore(run_dir, trader)
    if not r["rows"]:
        raise ValueError(f"{run_dir}: the journal holds no observation")
    stops = [x for x in r["records"] if x.get("k") == "event" and x.get("what") == "stop"]
    last = stops[-1] if stops else {}
    obs = [x for x in r["records"] if x.get("k") == "obs"]
    fs = {
        "cadence_s": settings.cadence_s,
        "cadence": settings.cadence,
        "start_epoch_s": r["t0"],
        "trades": int(sum(len(x["iv"]["trade_price"]) for x in obs)),
        "quality": last.get("quality") or {},
        "symbol": None,
    }
    lat = {
        name: percentiles([x[name] for x in obs if x.get(name) is not None]) for name in ("step_ms", "tick_to_quote_ms")
    }
    starts = [x for x in r["records"] if x.get("k") == "event" and x.get("what") == "start"]
    gateway = starts[-1].get("gateway", "paper") if starts else "paper"
    live = {
        "gateway": gateway,
        **({"orders": last["orders"], "venue_at_stop": last.get("venue_at_stop")} if "orders" in last else {}),
        "stop_reason": last.get("why", "no stop record (the session crashed or is running)"),
        "connections": sum(1 for x in r["records"] if x.get("what") == "connect"),
        "reconnects": sum(1 for x in r["records"] if x.get("what") == "disconnect"),
        "stale_events": sum(1 for x in r["records"] if x.get("what") == "stale"),
        "resumes": sum(1 for x in r["records"] if x.get("what") == "resume"),
        "clock_offset_s": last.get("clock_offset_s"),
        "latency": lat,
        "torn_lines": r["torn"],
    }
    return _result(trader, r["rows"], fs, obs[-1]["wall"] - obs[0]["wall"], live, [x.get("terms") for x in obs])
