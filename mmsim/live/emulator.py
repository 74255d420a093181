"""A local stand-in for Binance USD-M's public market data, on the loopback address only: a real
websocket server that streams a recorded capture's messages, in the venue's own combined-stream
format, to ``/stream?streams=...``, and answers the REST depth snapshot (``/fapi/v1/depth``) with
the book as it stands where the stream has reached: the capture's first snapshot and every depth
diff streamed (or passed) since, so that a client resynchronising after a gap gets the current
book and the diffs that follow it continue its update ids. Tests, benchmarks and a user's dry run
point ``mmsim live`` at it; nothing leaves the machine.

The clock is the recording's, accelerated ``speed`` times (``inf``: as fast as the client reads).
For the failure paths, a connection can be closed after ``drop_after`` messages (the next one
continues where it stopped), the stream can go silent for ``pause_s`` seconds after
``pause_after`` messages, and ``skip_diff`` depth diffs can be left out to make an update-id gap.

With a :class:`~mmsim.live.venue.Venue` (``venue=``), the emulator also takes signed post-only
orders on its own port (``order_url``) and fills them against the book and trades it streams, each
message reaching the venue's matcher as it is sent (or passed, for a stream nobody subscribed to),
and serves the account's user-data stream at ``/ws/<listenKey>``.

Run one by hand: ``python -m mmsim.live.emulator CAPTURE [--port P] [--speed X] [--orders]``
(``--orders``: with the order API, accepting the key pair in ``$MMSIM_API_KEY`` and
``$MMSIM_API_SECRET``).
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import math
import sys
import threading
import urllib.parse
from pathlib import Path

from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from mmsim.fit.data import _ts_scale

HOST = "127.0.0.1"


def read_lines(path: str | Path) -> list[tuple[float, str]]:
    """A capture's lines as ``(local receive time in s, raw JSON)``; unreadable lines are dropped."""
    out = []
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            try:
                sp = line.index(" ")
                tok = line[:sp]
                out.append((int(tok) * _ts_scale(tok), line[sp + 1 :].strip()))
            except (ValueError, OverflowError):
                continue
    return out


def _depth_kind(stream: str) -> str:
    """A stream's name with a depth stream's update speed dropped (``btcusdt@depth@100ms`` ->
    ``btcusdt@depth``); other names as they are."""
    i = stream.find("@depth")
    return stream[: i + 6] if i >= 0 else stream


def _stream_of(body: str) -> str | None:
    """The combined-stream name of a message (None for a REST snapshot or another venue's)."""
    i = body.find('"stream"')
    if i < 0:
        return None
    try:
        return str(json.loads(body)["stream"])
    except (ValueError, KeyError, TypeError):
        return None


class Emulator:
    """The server (see the module docstring). ``lines``: ``(local s, raw JSON)`` pairs, e.g. from
    :func:`read_lines`; the first REST snapshot among them answers ``/fapi/v1/depth``."""

    def __init__(
        self,
        lines: list[tuple[float, str]],
        *,
        speed: float = math.inf,
        port: int = 0,
        drop_after: int | None = None,
        pause_after: int | None = None,
        pause_s: float = 0.0,
        skip_diff: int | None = None,
        venue=None,
    ) -> None:
        if not (speed > 0):
            raise ValueError(f"speed = {speed!r}: must be > 0 (inf: as fast as the client reads)")
        self.lines = [(t, b, _stream_of(b)) for t, b in lines]
        self.snapshot = next((b for _, b, s in self.lines if s is None and '"lastUpdateId"' in b), None)
        self._book: dict | None = None  # the levels of the current book (from the snapshot and diffs)
        self._book_u = -1  # its update id
        self._book_t = 0
        self._diffs: list[str] = []  # depth diffs reached since the book was last brought up to date
        self.speed, self.port = float(speed), port
        self.drop_after, self.pause_after, self.pause_s, self.skip_diff = drop_after, pause_after, pause_s, skip_diff
        self.position = 0  # the next line to send (shared by reconnections)
        self.connections = 0
        self.user_connections = 0  # to the user-data stream
        self.snapshots_served = 0
        self.sent = 0
        self.done: asyncio.Event | None = None  # made in start(), on the server's loop; set when all is sent
        self.venue = venue  # a mmsim.live.venue.Venue, or None (market data only)
        self._server = None

    @property
    def ws_url(self) -> str:
        return f"ws://{HOST}:{self.port}"

    @property
    def rest_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def order_url(self) -> str:
        if self.venue is None:
            raise ValueError("this emulator has no venue (Emulator(..., venue=Venue(...)))")
        return self.venue.url

    async def start(self) -> Emulator:
        self.done = asyncio.Event()
        self._server = await serve(
            self._handler, HOST, self.port, process_request=self._http, compression=None, close_timeout=1.0
        )
        self.port = self._server.sockets[0].getsockname()[1]
        if self.venue is not None:
            await self.venue.start()
        return self

    async def stop(self) -> None:
        if self.venue is not None:
            await self.venue.stop()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def _http(self, conn: ServerConnection, request: Request) -> Response | None:
        url = urllib.parse.urlsplit(request.path)
        if url.path == "/stream":
            return None  # the websocket upgrade
        if url.path.startswith("/ws/") and self.venue is not None:
            if self.venue.listen_key is not None and url.path[4:] == self.venue.listen_key:
                return None  # the user-data stream's upgrade
            return Response(400, "Bad Request", Headers([("Content-Type", "text/plain")]), b"invalid listen key\n")
        if url.path == "/fapi/v1/depth" and self.snapshot is not None:
            self.snapshots_served += 1
            body = json.dumps(self._current_book()).encode()
            return Response(200, "OK", Headers([("Content-Type", "application/json")]), body)
        return Response(404, "Not Found", Headers([("Content-Type", "text/plain")]), b"not found\n")

    def _current_book(self) -> dict:
        """The book where the stream stands: the first snapshot with the diffs reached since."""
        if self._book is None:
            snap = json.loads(self.snapshot)
            self._book = {side: {float(p): q for p, q in snap[side]} for side in ("bids", "asks")}
            self._book_u = int(snap["lastUpdateId"])
            self._book_t = int(snap.get("T") or snap.get("E") or 0)
        for body in self._diffs:
            try:
                d = json.loads(body)["data"]
                if int(d["u"]) <= self._book_u:
                    continue  # already in the book
                for side, key in (("bids", "b"), ("asks", "a")):
                    for p, q in d[key]:
                        if float(q) > 0:
                            self._book[side][float(p)] = q
                        else:
                            self._book[side].pop(float(p), None)
                self._book_u = int(d["u"])
                self._book_t = int(d.get("T") or d.get("E") or self._book_t)
            except (ValueError, KeyError, TypeError):
                continue
        self._diffs.clear()
        bids = sorted(self._book["bids"].items(), reverse=True)
        asks = sorted(self._book["asks"].items())
        level = lambda p, q: [repr(p), q]  # noqa: E731
        return {
            "lastUpdateId": self._book_u,
            "E": self._book_t,
            "T": self._book_t,
            "bids": [level(p, q) for p, q in bids[:1000]],
            "asks": [level(p, q) for p, q in asks[:1000]],
        }

    async def _handler(self, ws: ServerConnection) -> None:
        try:
            if urllib.parse.urlsplit(ws.request.path).path.startswith("/ws/"):
                await self._user_stream(ws)
            else:
                await self._stream(ws)
        except ConnectionClosed:
            pass  # the client went away (a test killed it): the next connection continues

    async def _user_stream(self, ws: ServerConnection) -> None:
        """The venue's account events, as they happen, until the client leaves or the venue drops
        the stream (its key deleted, or :meth:`~mmsim.live.venue.Venue.drop_user_streams`)."""
        q = self.venue.subscribe(urllib.parse.urlsplit(ws.request.path).path[4:])
        if q is None:
            await ws.close(1008, "invalid listen key")
            return
        self.user_connections += 1
        try:
            while (body := await q.get()) is not None:
                await ws.send(body)
            await ws.close(1011, "emulated user-data stream disconnect")
        finally:
            self.venue.unsubscribe(q)

    async def _stream(self, ws: ServerConnection) -> None:
        self.connections += 1
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(ws.request.path).query)
        # A recording holds one depth stream (hftbacktest records ``@depth@0ms``): it answers a
        # subscription to the symbol's depth diffs at any update speed.
        streams = {_depth_kind(x) for x in ",".join(query.get("streams", [""])).replace("/", ",").split(",")}
        sent_here = 0
        diffs = 0
        t_prev = None
        while self.position < len(self.lines):
            t, body, stream = self.lines[self.position]
            self.position += 1
            if stream is not None and "@depth" in stream:
                self._diffs.append(body)  # the venue's book moves whether or not a client reads it
            if stream is None or _depth_kind(stream) not in streams:
                if self.venue is not None and stream is not None:
                    self.venue.on_message(body)
                continue
            if "@depth" in stream:
                diffs += 1
                if self.skip_diff is not None and diffs == self.skip_diff:
                    continue
            if math.isfinite(self.speed) and t_prev is not None and t > t_prev:
                await asyncio.sleep((t - t_prev) / self.speed)
            t_prev = t
            if self.venue is not None:
                self.venue.on_message(body)  # the venue matches before it publishes
            await ws.send(body)
            sent_here += 1
            self.sent += 1
            if self.pause_after is not None and self.sent == self.pause_after:
                await asyncio.sleep(self.pause_s)
            if self.drop_after is not None and sent_here >= self.drop_after:
                await ws.close(1011, "emulated disconnect")
                return
        self.done.set()
        await ws.wait_closed()


class Running:
    """An :class:`Emulator` on its own thread and event loop (for a session in another thread or
    process): ``with Running(Emulator(lines)) as em: ... em.ws_url``."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.emulator.start())
        self._ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.emulator.stop())
        pending = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
        for t in pending:
            t.cancel()
        self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()

    def __enter__(self) -> Emulator:
        self._thread.start()
        if not self._ready.wait(10.0):
            raise RuntimeError("the emulator did not start within 10 s")
        return self.emulator

    def __exit__(self, *exc) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10.0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mmsim.live.emulator", description=__doc__.split("\n\n")[0])
    p.add_argument("capture", help="a recorded capture (hftbacktest_*.gz)")
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free one)")
    p.add_argument("--speed", type=float, default=1.0, help="the recording's clock times this (inf: flat out)")
    p.add_argument(
        "--orders",
        action="store_true",
        help="also serve the signed order API (a venue accepting the key pair in $MMSIM_API_KEY and $MMSIM_API_SECRET)",
    )
    a = p.parse_args(argv)
    if not Path(a.capture).is_file():
        print(f"python -m mmsim.live.emulator: no capture file at {a.capture}", file=sys.stderr)
        return 2
    if not a.speed > 0:
        print(f"python -m mmsim.live.emulator: --speed {a.speed}: must be > 0", file=sys.stderr)
        return 2

    v = None
    if a.orders:
        import os

        from mmsim.live.venue import Venue

        key, secret = os.environ.get("MMSIM_API_KEY"), os.environ.get("MMSIM_API_SECRET")
        if not (key and secret):
            print("python -m mmsim.live.emulator: --orders needs $MMSIM_API_KEY and $MMSIM_API_SECRET", file=sys.stderr)
            return 2
        v = Venue(key, secret)

    async def run() -> None:
        em = await Emulator(read_lines(a.capture), speed=a.speed, port=a.port, venue=v).start()
        urls = f"live.ws_url={em.ws_url} live.rest_url={em.rest_url}"
        if v is not None:
            urls += f" live.order_url={em.order_url} live.gateway=orders"
        print(f"streaming {a.capture} at {a.speed:g}x: {urls}", flush=True)
        await em.done.wait()
        print(f"the recording is over ({em.sent:,} messages sent)", flush=True)
        if v is not None:
            print(
                f"the venue: {len(v.trades)} fills, position {v.position:+.4f}, {len(v.open)} open orders", flush=True
            )
        await asyncio.sleep(1.0)
        await em.stop()

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
