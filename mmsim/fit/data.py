"""Readers of real exchange data (websocket captures, funding, minute bars, liquidations) into pandas.

Every reader returns pandas DataFrames with documented columns and units. Conventions:

* ``time`` columns are seconds since the Unix epoch, UTC, as float64 (1 ms resolution is kept:
  float64 resolves 0.25 us at 2e9 s); ``date`` columns, where present, are tz-aware UTC
  ``Timestamp``s of the same instants.
* Prices are in quote currency per base unit (USDT or USD); sizes in base units (BTC, ETH) unless
  a docstring says otherwise (COIN-M ``BTCUSD_PERP`` sizes are contracts of 100 USD; FTX bar
  volumes are USD notional).
* Trade ``side`` is the aggressor's side: +1 an aggressive buy (lifts the ask), -1 an aggressive
  sell (hits the bid). Binance's ``m`` ("buyer is the maker") true means the aggressor SOLD.
* Funding rates are fractions per settlement interval (1e-4 = 0.01 % per interval).

Bad input follows the project rule for feed data: a malformed line or row is counted and skipped,
never a crash and never a NaN in the output. Only pandas, numpy, json and gzip are used.

The data directory is found by :func:`data_dir`; no reader assumes where it is.
"""

from __future__ import annotations

import gzip
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "CaptureError",
    "data_dir",
    "data_file",
    "Decoder",
    "read_capture",
    "read_funding",
    "read_bars",
    "read_hl_liquidations",
    "read_hl_trades",
    "TRADE_COLUMNS",
    "BOOK_COLUMNS",
    "MARK_COLUMNS",
    "DEPTH_COLUMNS",
]

#: Columns of ``read_capture(...)["trades"]``.
TRADE_COLUMNS = ("time", "local_time", "price", "qty", "side", "type", "trade_id", "symbol")
#: Columns of ``read_capture(...)["book_ticker"]``.
BOOK_COLUMNS = ("time", "local_time", "bid", "bid_qty", "ask", "ask_qty", "symbol")
#: Columns of ``read_capture(...)["mark_price"]``.
MARK_COLUMNS = ("time", "local_time", "mark", "index", "settle_estimate", "funding_rate", "next_funding_time")
#: Columns of ``read_capture(..., depth=True)["depth"]`` (long format, one row per level update).
DEPTH_COLUMNS = ("time", "local_time", "msg", "snapshot", "side", "price", "qty")


# ----------------------------------------------------------------------------------------------
# Where the data lives

#: The repository root: the parent of the ``mmsim`` package directory (in a source checkout).
_REPO_ROOT = Path(__file__).resolve().parents[2]


def data_dir() -> Path | None:
    """The real-data directory, or None when it is absent.

    Looks at the environment variable ``MMSIM_DATA`` first, then at ``../shared/data`` relative to
    the repository root (the parent of the ``mmsim`` package directory). Returns the first that
    is an existing directory; None when neither is (callers then skip, they never fail).
    """
    env = os.environ.get("MMSIM_DATA")
    candidates = []
    if env:
        candidates.append(Path(env).expanduser())
    candidates.append(_REPO_ROOT.parent / "shared" / "data")
    for c in candidates:
        if c.is_dir():
            return c
    return None


def data_file(name: str) -> Path | None:
    """``data_dir() / name`` if that file exists, else None (the name is relative to the data dir)."""
    d = data_dir()
    if d is None:
        return None
    p = d / name
    return p if p.is_file() else None


# ----------------------------------------------------------------------------------------------
# Websocket captures


class DataError(ValueError):
    """A data file that cannot be read: the message names the file and what is wrong with it (the
    column, the byte offset)."""


class CaptureError(DataError):
    """A capture that cannot be read at all (not gzip, a directory, no line before the damage);
    the message names the file and, where known, the byte offset."""


def _ts_scale(token: str) -> float:
    """Seconds per unit of an integer epoch timestamp, from its digit count.

    19 digits (ns) -> 1e-9; 16 (us) -> 1e-6; 13 (ms) -> 1e-3; 10 (s) -> 1. Epochs since 2001 have
    10 digits in seconds, so the ranges below are unambiguous until 2286.
    """
    n = len(token.lstrip("-"))
    if n >= 18:
        return 1e-9
    if n >= 15:
        return 1e-6
    if n >= 12:
        return 1e-3
    return 1.0


class _Damaged(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason


def _lines_until_damage(fh):
    """The text lines of a gzip stream, up to the first damage (bad gzip data, a truncated stream,
    binary garbage after the last member), which raises :class:`_Damaged`."""
    import zlib

    try:
        yield from fh
    except (gzip.BadGzipFile, EOFError, zlib.error, OSError, UnicodeDecodeError) as e:
        raise _Damaged(f"{type(e).__name__}: {e}") from None


def _finite_pos(*xs: float) -> bool:
    return all(math.isfinite(x) and x > 0.0 for x in xs)


class Decoder:
    """The one decoder of exchange messages, recorded or live: each message (a Binance
    combined-stream or REST-snapshot JSON, or a Hyperliquid channel message, with its local receive
    time) appends its rows to the lists below, in :data:`TRADE_COLUMNS`, :data:`BOOK_COLUMNS`,
    :data:`MARK_COLUMNS` and :data:`DEPTH_COLUMNS` order, and counts what it refuses. A recording
    read by :func:`read_capture` and a live session (:mod:`mmsim.live.stream`) go through the same
    :meth:`message`; a live consumer takes the rows it has used off the front of the lists.

    Attributes (the counts are those :func:`read_capture` returns): ``trades``, ``agg`` (aggTrade
    rows), ``books``, ``marks``, ``depth_rows`` (row lists); ``book_on_local`` (per book: stamped on
    receipt); ``messages``, ``rejected`` (dicts of counts); ``malformed``, ``crossed``, ``n_msg``
    (ints); ``venue``; ``symbols`` (set); ``synced`` (the depth levels follow a snapshot without a
    break since the last one); ``gaps`` (depth breaks seen, each a reason to resynchronise).
    """

    def __init__(self, depth: bool = False) -> None:
        self.depth = depth
        self.trades: list[tuple] = []
        self.agg: list[tuple] = []
        self.books: list[tuple] = []
        self.marks: list[tuple] = []
        self.depth_rows: list[tuple] = []
        self.book_on_local: list[bool] = []
        self.messages: dict[str, int] = {}
        self.rejected: dict[str, int] = {}
        self.symbols: set[str] = set()
        self.malformed = 0
        self.crossed = 0
        self.n_msg = 0
        self.venue = "unknown"
        self.gaps = 0
        self.sync: dict = {"snapshot": None, "last_u": None, "synced": False}  # depth diffs against the snapshot
        self.book = _DepthBook()  # the levels the diffs build, to see a crossed book

    @property
    def synced(self) -> bool:
        return bool(self.sync["synced"])

    def reject(self, kind: str) -> None:
        self.rejected[kind] = self.rejected.get(kind, 0) + 1

    def bump(self, kind: str) -> None:
        self.messages[kind] = self.messages.get(kind, 0) + 1

    def line(self, line: str) -> None:
        """One recorded line, ``<local receive time> <raw JSON>`` (the time's unit from its digit count)."""
        try:
            sp = line.index(" ")
            tok = line[:sp]
            local = int(tok) * _ts_scale(tok)
        except (ValueError, OverflowError):
            self.malformed += 1
            return
        self.message(local, line[sp + 1 :])

    def message(self, local: float, body: str) -> None:
        """One raw message received at ``local`` (s since the epoch). A message that cannot be
        parsed, or has invalid fields, is counted in ``malformed`` and skipped."""
        try:
            self._message(local, body)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError, OverflowError):
            self.malformed += 1

    def _message(self, local: float, body: str) -> None:
        # The large messages are depth: count them without decoding unless asked.
        if not self.depth and ('"depthUpdate"' in body or '"lastUpdateId"' in body):
            self.bump("depth" if '"depthUpdate"' in body else "snapshot")
            if self.venue == "unknown" and '"stream"' in body:
                self.venue = "binance"
            return
        msg = json.loads(body)
        self.n_msg += 1
        kind = "binance" if "stream" in msg else "hyperliquid" if "channel" in msg else None
        if kind is not None and self.venue not in ("unknown", kind):
            self.reject("other_venue")  # one capture, one venue: the other's lines are not mixed in
            return
        if "stream" in msg:
            self.venue = "binance"
            self._binance(local, msg)
        elif "channel" in msg:
            self.venue = "hyperliquid"
            self._hyperliquid(local, msg)
        elif "lastUpdateId" in msg:
            self.snapshot(local, msg)
        else:
            self.bump("other")

    def snapshot(self, local: float, msg: dict) -> None:
        """A REST depth snapshot (``lastUpdateId``, ``bids``, ``asks``): the diffs start again from it."""
        self.sync.update(snapshot=int(msg["lastUpdateId"]), last_u=None, synced=False)
        ts = msg.get("T") or msg.get("E")
        self.bump("snapshot")
        self.book.reset()
        if self.book.apply(msg["bids"], msg["asks"]):
            self.reject("depth_crossed")
            self.sync.update(synced=False, snapshot=None)
            return
        if self.depth:
            _depth_rows(self.depth_rows, ts * 1e-3 if ts else local, local, self.n_msg, True, msg["bids"], msg["asks"])

    def _binance(self, local: float, msg: dict) -> None:
        sym = str(msg["stream"]).split("@")[0]
        self.symbols.add(sym)
        d = msg["data"]
        e = d.get("e")
        if e in ("trade", "aggTrade"):
            m = d["m"]
            if not isinstance(m, bool):
                raise ValueError("m")
            p, q, t = float(d["p"]), float(d["q"]), d["T"] * 1e-3
            if not _finite_pos(p, q, t):
                raise ValueError("p/q/T")
            if e == "trade":
                self.trades.append((t, local, p, q, -1 if m else 1, d.get("X", ""), int(d["t"]), sym))
            else:
                self.agg.append((t, local, p, q, -1 if m else 1, "", int(d["a"]), sym))
            self.bump(e)
        elif e == "bookTicker" or msg["stream"].endswith("@bookTicker"):
            b, bq, a, aq = float(d["b"]), float(d["B"]), float(d["a"]), float(d["A"])
            if not _finite_pos(b, a) or not (bq >= 0.0 and aq >= 0.0 and math.isfinite(bq + aq)):
                raise ValueError("book")
            ts = d.get("T") or d.get("E")
            t = ts * 1e-3 if ts else local
            if not _finite_pos(t):
                raise ValueError("time")
            self.bump("bookTicker")
            if b >= a:
                self.crossed += 1
                return
            self.books.append((t, local, b, bq, a, aq, sym))
            self.book_on_local.append(not ts)
        elif e == "markPriceUpdate":
            vals = (float(d["p"]), float(d["i"]), float(d.get("P", "nan")), float(d["r"]))
            t, t_next = d["E"] * 1e-3, d["T"] * 1e-3
            if not (_finite_pos(vals[0], vals[1], t, t_next) and math.isfinite(vals[3])):
                raise ValueError("mark")
            self.marks.append((t, local, *vals, t_next))
            self.bump("markPrice")
        elif e == "depthUpdate":
            ts = d.get("T") or d.get("E")
            self.bump("depth")
            verdict, apply = _depth_continuity(self.sync, int(d["U"]), int(d["u"]), d.get("pu"))
            if verdict is not None:
                self.reject(verdict)
                if verdict == "depth_gap":
                    self.gaps += 1
            if not apply:
                return
            if self.book.apply(d["b"], d["a"]):  # crossed levels: the book is wrong until resynced
                self.reject("depth_crossed")
                self.sync.update(synced=False, snapshot=None)
                return
            _depth_rows(self.depth_rows, ts * 1e-3 if ts else local, local, self.n_msg, False, d["b"], d["a"])
        elif e == "forceOrder":
            self.bump("forceOrder")  # the liquidation fills themselves arrive as trades with X = INSURANCE_FUND
        else:
            self.bump(str(e))

    def _hyperliquid(self, local: float, msg: dict) -> None:
        ch = msg["channel"]
        d = msg["data"]
        if ch == "trades":
            rows = []
            for f in d:
                s = f["side"]
                if s not in ("A", "B"):
                    raise ValueError("side")
                p, q, t = float(f["px"]), float(f["sz"]), f["time"] * 1e-3
                if not _finite_pos(p, q, t):
                    raise ValueError("px/sz/time")
                coin = str(f.get("coin", "")).lower()
                rows.append((t, local, p, q, 1 if s == "B" else -1, "", int(f["tid"]), coin))
            self.trades.extend(rows)
            self.bump("trades")
        elif ch == "l2Book":
            bids, asks = d["levels"][0], d["levels"][1]
            t = d["time"] * 1e-3
            if not _finite_pos(t):
                raise ValueError("time")
            if bids and asks:
                b, bq = float(bids[0]["px"]), float(bids[0]["sz"])
                a, aq = float(asks[0]["px"]), float(asks[0]["sz"])
                if not _finite_pos(b, a, bq, aq):
                    raise ValueError("l2")
                if b >= a:
                    self.crossed += 1
                else:
                    self.books.append((t, local, b, bq, a, aq, str(d.get("coin", "")).lower()))
            if self.depth:
                _depth_rows(
                    self.depth_rows,
                    t,
                    local,
                    self.n_msg,
                    True,
                    [(x["px"], x["sz"]) for x in bids],
                    [(x["px"], x["sz"]) for x in asks],
                )
            self.bump("l2Book")
        else:
            self.bump(str(ch))


def read_capture(path: str | os.PathLike | Sequence[str | os.PathLike], *, depth: bool = False) -> dict:
    """Read one ``hftbacktest_*.gz`` websocket capture (Binance or Hyperliquid), or several
    consecutive files of one recording as one (a list of paths in time order: one decoder reads
    them all, so the depth chain of a snapshot and its diffs carries across the files).

    The file is gzip text, one message per line: ``<local_receive_ts> <raw exchange JSON>``. The
    local timestamp's unit is detected per line from its digit count (ns in the 2024/2025 files,
    us in the 2023 ``.dat.gz`` files).

    Binance combined-stream messages (``{"stream": ..., "data": ...}``) give ``trade``,
    ``bookTicker``, ``markPriceUpdate`` and ``depthUpdate``; a line without ``stream`` is a REST
    depth snapshot. Hyperliquid messages (``{"channel": "trades"|"l2Book", "data": ...}``) give
    fills (``side`` "B" = aggressive buy, "A" = aggressive sell) and 20-level book snapshots
    whose first level on each side is the touch. Hyperliquid's first ``trades`` message after
    subscribing replays recent fills, whose exchange times precede the capture: keep
    ``time >= local_time.min()`` (minus the clock offset) to study the live window only.

    Args:
        path: the capture file, or a list of consecutive files.
        depth: also decode depth diffs and REST/L2 snapshots into a long-format ``depth`` table
            (slower: those are the large messages). Without it they are counted, not parsed.

    Returns:
        A dict with

        * ``trades`` (DataFrame, sorted by ``time`` then ``trade_id``): ``time`` exchange trade
          time ``T`` (s, UTC epoch), ``local_time`` receive time (s), ``price`` (quote/base),
          ``qty`` (base units; contracts for COIN-M), ``side`` (+1 aggressor bought, -1 sold,
          int8), ``type`` (Binance ``X``: "MARKET", "INSURANCE_FUND" = liquidation fill, "ADL";
          "" where absent), ``trade_id`` (int64).
        * ``book_ticker`` (DataFrame, receive order): ``time`` exchange time (``T``, else ``E``,
          else the receive time for spot, which carries neither; s), ``local_time``, ``bid``,
          ``bid_qty``, ``ask``, ``ask_qty`` (prices, base units). From Hyperliquid: the l2Book
          touch. Crossed or locked quotes (bid >= ask) are dropped and counted.
        * ``mark_price`` (DataFrame): ``time`` (``E``, s), ``local_time``, ``mark``, ``index``,
          ``settle_estimate`` (prices), ``funding_rate`` (current rate ``r``, fraction per 8 h
          interval), ``next_funding_time`` (s, UTC epoch). Empty where the capture has no
          markPrice stream (only the 2023 files have one).
        * ``depth`` (only with ``depth=True``): ``time`` (s), ``local_time``, ``msg`` (message
          index), ``snapshot`` (bool: a full snapshot, else a diff), ``side`` (+1 bid, -1 ask),
          ``price``, ``qty`` (new absolute size; 0 deletes the level).
        * ``malformed`` (int): lines that could not be parsed or had invalid fields (skipped).
        * ``crossed`` (int): book updates dropped because bid >= ask.
        * ``messages`` (dict str -> int): lines seen per message kind.
        * ``venue`` (str): "binance", "hyperliquid" or "unknown".
        * ``symbols`` (list of str): the Binance streams' symbols (``btcusdt``, ``btcusd_perp`` for
          COIN-M); empty for Hyperliquid. Every trade and book row also has its ``symbol``
          (the stream's, or Hyperliquid's coin, lower case).
        * ``rejected`` (dict str -> int): messages refused by class: ``other_venue`` (a line of
          another venue than the file's first), ``duplicate_trade_id``,
          ``aggTrade_beside_trade_stream`` (aggregated trades are read only where there is no
          trade stream), and, with ``depth=True``, ``depth_before_snapshot``,
          ``depth_before_snapshot_id`` (both refused) and ``depth_gap`` (counted; the chain goes on:
          Binance's ``U``/``u``/``pu`` rule), and ``depth_crossed`` (the levels built from the
          snapshot and its diffs cross: the diffs wait for the next snapshot).
        * ``truncated`` (dict or None): where a damaged file stopped being readable
          (``after_lines``, ``compressed_byte``, ``reason``, and ``file`` when several were given);
          what came before is returned.
        * ``clock_offset_s`` (float or None): for books without an exchange time (spot), the
          trades' median receive delay subtracted from their receive times.

    Raises :class:`CaptureError` (naming the file and the byte offset) for a file that cannot be
    read at all.
    """
    paths = [Path(path)] if isinstance(path, (str, os.PathLike)) else [Path(p) for p in path]
    if not paths:
        raise CaptureError("no capture file given")
    for p in paths:
        if p.is_dir():
            raise CaptureError(f"{p}: a directory, not a capture file")
        if not p.is_file():
            raise CaptureError(f"{p}: no such capture file")
    dec = Decoder(depth=depth)
    truncated = None
    for p in paths:
        damage = _decode_file(p, dec)
        if damage is not None and truncated is None:
            truncated = damage if len(paths) == 1 else {"file": p.name, **damage}
    return _assemble(dec, truncated)


def _decode_file(path: Path, dec: Decoder) -> dict | None:
    """Feed one capture file's lines to ``dec``; where the file is damaged, what came before is
    kept and the damage is returned (``after_lines``, ``compressed_byte``, ``reason``)."""
    lines = 0
    raw = open(path, "rb")  # noqa: SIM115 (closed below; its offset says where damage starts)
    fh = gzip.open(raw, "rt", encoding="utf-8", errors="replace")
    try:
        for line in _lines_until_damage(fh):
            lines += 1
            dec.line(line)
    except _Damaged as e:
        offset = raw.tell()
        if lines == 0:
            raise CaptureError(f"{path}: not a readable gzip capture ({e.reason}) at byte {offset}") from None
        return {"after_lines": lines, "compressed_byte": offset, "reason": e.reason}
    finally:
        fh.close()
        raw.close()
    return None


def _assemble(dec: Decoder, truncated: dict | None) -> dict:
    """The capture dict of :func:`read_capture` from a decoder's rows and counts."""
    trades, agg, rejected, book_on_local, depth = dec.trades, dec.agg, dec.rejected, dec.book_on_local, dec.depth
    depth_rows = dec.depth_rows
    if not trades and agg:  # Binance's aggregated trade stream, when it is the only one
        trades = agg
    elif agg:
        rejected["aggTrade_beside_trade_stream"] = len(agg)  # the same volume twice otherwise
    out = {
        "trades": _frame(
            trades, TRADE_COLUMNS, {"side": np.int8, "trade_id": np.int64, "type": object, "symbol": object}
        ),
        "book_ticker": _frame(dec.books, BOOK_COLUMNS, {"symbol": object}),
        "mark_price": _frame(dec.marks, MARK_COLUMNS),
        "malformed": dec.malformed,
        "crossed": dec.crossed,
        "messages": dec.messages,
        "venue": dec.venue,
        "symbols": sorted(dec.symbols),
        "rejected": rejected,
        "truncated": truncated,
    }
    # Spot books carry no exchange time and are stamped on receipt, while trades carry the exchange's:
    # put those books on the exchange clock (receive time minus the trades' median receive delay), or
    # a replay would see each book about a second before its trades.
    out["clock_offset_s"] = None
    on_local = np.zeros(len(out["book_ticker"]), bool)
    if book_on_local:
        on_local[: len(book_on_local)] = book_on_local  # Hyperliquid books (not in the list) have their time
    if on_local.any() and len(out["trades"]):
        delay = float(np.median(out["trades"]["local_time"].to_numpy() - out["trades"]["time"].to_numpy()))
        bt = out["book_ticker"]["time"].to_numpy(copy=True)
        bt[on_local] -= delay
        out["book_ticker"]["time"] = bt
        out["clock_offset_s"] = delay
    tr = out["trades"]
    if len(tr):
        # A trade id seen twice (a resent message, a reconnect) is one trade.
        dup = tr.duplicated(["symbol", "trade_id"], keep="first").to_numpy()
        if dup.any():
            rejected["duplicate_trade_id"] = int(dup.sum())
            tr = tr[~dup]
        out["trades"] = tr.sort_values(["time", "trade_id"], kind="mergesort").reset_index(drop=True)
    if depth:
        out["depth"] = _frame(depth_rows, DEPTH_COLUMNS, {"msg": np.int64, "snapshot": bool, "side": np.int8})
    return out


class _DepthBook:
    """Price levels built from a snapshot and its diffs, with the best bid and ask kept current
    (a level's new size replaces the old; 0 deletes it)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.levels: dict[int, dict[float, float]] = {1: {}, -1: {}}
        self.best = {1: -math.inf, -1: math.inf}

    def apply(self, bids, asks) -> bool:
        """Apply levels ``[[price, size], ...]`` per side; True when the book is then crossed."""
        for side, levels in ((1, bids), (-1, asks)):
            book, better = self.levels[side], (max if side > 0 else min)
            for px, sz in levels:
                p, q = float(px), float(sz)
                if q > 0:
                    book[p] = q
                    self.best[side] = better(self.best[side], p)
                else:
                    book.pop(p, None)
                    if p == self.best[side]:
                        self.best[side] = better(book, default=-math.inf if side > 0 else math.inf)
        return self.best[1] >= self.best[-1]


def _depth_continuity(sync: dict, first: int, last: int, prev) -> tuple[str | None, bool]:
    """Binance's rule for depth diffs against a REST snapshot: none before a snapshot, and diffs
    that end before it are already in it (both refused); then each diff's ``pu`` is the previous
    one's ``u``, and the first spans the snapshot's update id. A break (the first diff starting
    after the snapshot, or a ``pu`` that is not the last ``u``) is a gap: the levels that changed
    inside it are unknown. It is counted, and the chain goes on from the diff after it (the
    recordings have gaps right after their snapshot, and refusing every later diff would leave no
    book at all). Returns ``(class to count or None, whether to apply the diff)``."""
    snap = sync["snapshot"]
    if snap is None:
        return "depth_before_snapshot", False
    if not sync["synced"]:
        if last < snap:
            return "depth_before_snapshot_id", False
        sync.update(synced=True, last_u=last)
        return ("depth_gap" if first > snap + 1 else None), True
    # USD-M diffs name the previous one's last id (pu); spot diffs have none and follow on by one.
    gap = int(prev) != sync["last_u"] if prev is not None else first != sync["last_u"] + 1
    sync["last_u"] = last
    return ("depth_gap" if gap else None), True


def _depth_rows(rows: list, t: float, local: float, msg: int, snapshot: bool, bids, asks) -> None:
    """Append one message's level updates; raises ValueError on a bad level (caller counts it)."""
    new = []
    for side, levels in ((1, bids), (-1, asks)):
        for px, sz in levels:
            p, q = float(px), float(sz)
            if not (math.isfinite(p) and p > 0 and math.isfinite(q) and q >= 0):
                raise ValueError("level")
            new.append((t, local, msg, snapshot, side, p, q))
    rows.extend(new)


def _frame(rows: list, columns: tuple, dtypes: dict | None = None) -> pd.DataFrame:
    df = pd.DataFrame.from_records(rows, columns=list(columns))
    dtypes = dtypes or {}
    for c in columns:
        df[c] = df[c].astype(dtypes.get(c, np.float64))
    return df


# ----------------------------------------------------------------------------------------------
# CSV files


def _read_csv(path: str | os.PathLike, columns: dict[str, tuple[str, ...]], **kw) -> tuple[pd.DataFrame, dict]:
    """Read a CSV whose delimiter may be ``,``, ``;``, tab or ``|``, and map each wanted column
    (any case, any of its aliases) to its name in the file. Returns the frame and ``{wanted: file
    column}``; :class:`DataError` (one line: the file and what is wrong) for a missing file, a
    directory, an empty or binary file or a missing column."""
    import csv

    p = Path(path)
    if p.is_dir():
        raise DataError(f"{p}: a directory, not a CSV file")
    if not p.is_file():
        raise DataError(f"{p}: no such file")
    try:
        with open(p, encoding="utf-8") as fh:
            head = fh.readline()
    except UnicodeDecodeError as e:
        raise DataError(f"{p}: not a text CSV (undecodable byte at offset {e.start})") from None
    if not head.strip():
        raise DataError(f"{p}: empty file (no header line)")
    try:
        sep = csv.Sniffer().sniff(head, delimiters=",;\t|").delimiter
    except csv.Error:
        sep = ","
    try:
        raw = pd.read_csv(p, sep=sep, **kw)
    except UnicodeDecodeError as e:
        raise DataError(f"{p}: not a text CSV (undecodable byte at offset {e.start})") from None
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as e:
        raise DataError(f"{p}: not a readable CSV ({str(e).splitlines()[0]})") from None
    lower = {str(c).strip().lower(): c for c in raw.columns}
    found = {}
    for want, aliases in columns.items():
        hit = next((lower[a] for a in aliases if a in lower), None)
        if hit is None:
            raise DataError(f"{p}: no column {want!r} (looked for {list(aliases)}; the file has {list(raw.columns)})")
        found[want] = hit
    return raw, found


# ----------------------------------------------------------------------------------------------
# Funding history


def read_funding(path: str | os.PathLike, *, utc_offset_hours: float | None = None) -> pd.DataFrame:
    """Read a ``funding_*.csv`` history (columns ``Symbol,Date,Funding Rate``).

    Args:
        path: the CSV file.
        utc_offset_hours: hours to subtract from ``Date`` to get UTC. None (default) detects it:
            the interval (h hours) is inferred from the median spacing, and when the settlement
            hours share one non-zero phase modulo h (the Binance and Bybit files were written in
            UTC+3, so every row falls on 03/11/19 h) that phase is subtracted, putting settlements
            on 00/08/16 UTC. Files already in UTC (dYdX, hourly) are left as they are.

    Returns:
        DataFrame with ``date`` (tz-aware UTC settlement time), ``time`` (s, UTC epoch), ``rate``
        (fraction per interval) and ``symbol``, sorted by time; malformed rows dropped.
        ``df.attrs`` holds ``interval_hours`` (median spacing, rounded to 1e-3 h),
        ``utc_offset_hours`` (what was subtracted) and ``malformed`` (rows dropped).
    """
    raw, cols = _read_csv(
        path,
        {"date": ("date", "time", "timestamp"), "funding rate": ("funding rate", "rate", "funding_rate")},
        dtype=str,
    )
    cols["symbol"] = next((c for c in raw.columns if str(c).strip().lower() == "symbol"), None)
    date = pd.to_datetime(raw[cols["date"]], errors="coerce", utc=True, format="mixed")
    rate = pd.to_numeric(raw[cols["funding rate"]], errors="coerce")
    sym = raw[cols["symbol"]] if cols["symbol"] is not None else pd.Series([""] * len(raw))
    # A date written with its zone (Z, +00:00) is already UTC: never shift it again.
    explicit_zone = bool(raw[cols["date"]].astype(str).str.strip().str.contains(r"(?:Z|[+-]\d\d:?\d\d)$").mean() > 0.5)
    ok = date.notna() & rate.notna() & np.isfinite(rate.to_numpy(dtype=float, na_value=np.nan))
    df = pd.DataFrame({"date": date[ok], "rate": rate[ok].astype(float), "symbol": sym[ok]})
    df = df.sort_values("date", kind="mergesort").reset_index(drop=True)
    spacing_h = df["date"].diff().dt.total_seconds().dropna() / 3600.0
    interval = float(np.round(spacing_h.median(), 3)) if len(spacing_h) else float("nan")
    if utc_offset_hours is None:
        utc_offset_hours = 0.0
        if np.isfinite(interval) and interval >= 1.0 and not explicit_zone:
            hours = df["date"].dt.round("1min")
            h = (hours.dt.hour + hours.dt.minute / 60.0).to_numpy()
            phase = np.round(np.mod(h, interval), 3)
            vals, counts = np.unique(phase, return_counts=True)
            top = vals[np.argmax(counts)]
            if counts.max() >= 0.95 * len(phase) and top != 0.0:
                utc_offset_hours = float(top)
    df["date"] = df["date"] - pd.Timedelta(hours=utc_offset_hours)
    df["time"] = (df["date"] - pd.Timestamp(0, tz="UTC")).dt.total_seconds().astype(np.float64)
    df = df[["date", "time", "rate", "symbol"]]
    df.attrs.update(interval_hours=interval, utc_offset_hours=float(utc_offset_hours), malformed=int((~ok).sum()))
    return df


# ----------------------------------------------------------------------------------------------
# Minute bars


def read_bars(path: str | os.PathLike) -> pd.DataFrame:
    """Read a 1-minute OHLCV CSV (FTX ``timestamp,...`` or Binance.US ``open_time,...``).

    Returns:
        DataFrame with ``date`` (tz-aware UTC bar time as written in the file), ``time`` (s, UTC
        epoch), ``open``, ``high``, ``low``, ``close`` (quote currency per base unit) and
        ``volume`` (as in the file: USD notional for the FTX file, BTC for Binance.US), sorted by
        time with duplicate times and rows with non-positive or non-finite prices dropped
        (``df.attrs["malformed"]`` counts them).
    """
    want = {"time": ("timestamp", "open_time", "time", "date")} | {
        c: (c,) for c in ("open", "high", "low", "close", "volume")
    }
    raw, cols = _read_csv(path, want)
    date = pd.to_datetime(raw[cols["time"]], errors="coerce", utc=True, format="mixed")
    out = pd.DataFrame({"date": date})
    for c in ("open", "high", "low", "close", "volume"):
        out[c] = pd.to_numeric(raw[cols[c]], errors="coerce").astype(np.float64)
    px = out[["open", "high", "low", "close"]].to_numpy()
    rejected: dict[str, int] = {}

    def drop(frame, bad, what):
        n = int(np.sum(bad))
        if n:
            rejected[what] = n
        return frame[~bad]

    out = drop(out, ~(out["date"].notna().to_numpy() & np.all(np.isfinite(px) & (px > 0), axis=1)), "bad_price_or_time")
    v = out["volume"].to_numpy()
    out = drop(out, ~(np.isfinite(v) & (v >= 0)), "bad_volume")
    o, h, lo, c = (out[k].to_numpy() for k in ("open", "high", "low", "close"))
    out = drop(out, (h < lo) | (h < np.maximum(o, c)) | (lo > np.minimum(o, c)), "high_low_inconsistent")
    out = out.sort_values("date", kind="mergesort")
    out = drop(out, out["date"].duplicated().to_numpy(), "duplicate_time")
    # A close far from its neighbours' (a x1000 close) is a typo, not a move: judged against the
    # median close of the 30 bars around it (at least 11 of them), within a factor 1.5.
    med = out["close"].rolling(31, center=True, min_periods=11).median().to_numpy()
    close = out["close"].to_numpy()
    with np.errstate(invalid="ignore"):
        off = (close > 1.5 * med) | (close < med / 1.5)
    out = drop(out, off, "outside_band")
    out = out.reset_index(drop=True)
    out.insert(1, "time", (out["date"] - pd.Timestamp(0, tz="UTC")).dt.total_seconds().astype(np.float64))
    out.attrs["malformed"] = int(sum(rejected.values()))
    out.attrs["rejected"] = rejected
    return out


# ----------------------------------------------------------------------------------------------
# Hyperliquid exports


def read_hl_trades(path: str | os.PathLike) -> pd.DataFrame:
    """Read Hyperliquid's ``non_mm_trades`` export.

    Returns:
        DataFrame with ``date`` (UTC, 1 s resolution), ``time`` (s, UTC epoch), ``user``,
        ``coin``, ``side`` (+1 the user bought, -1 sold), ``price`` (USD), ``qty`` (coin units)
        and ``crossed`` (bool: the user's order took liquidity); malformed rows dropped
        (``attrs["malformed"]``).
    """
    raw, _ = _read_csv(path, {c: (c,) for c in ("time", "user", "coin", "side", "px", "sz", "crossed")}, dtype=str)
    date = pd.to_datetime(raw["time"], errors="coerce", utc=True, format="mixed")
    side = raw["side"].map({"Bid": 1, "Ask": -1, "B": 1, "A": -1})
    px = pd.to_numeric(raw["px"], errors="coerce")
    sz = pd.to_numeric(raw["sz"], errors="coerce")
    crossed = raw["crossed"].str.lower().map({"true": True, "false": False})
    ok = date.notna() & side.notna() & (px > 0) & (sz > 0) & crossed.notna()
    out = (
        pd.DataFrame(
            {
                "date": date[ok],
                "time": (date[ok] - pd.Timestamp(0, tz="UTC")).dt.total_seconds().astype(np.float64),
                "user": raw["user"][ok],
                "coin": raw["coin"][ok],
                "side": side[ok].astype(np.int8),
                "price": px[ok].astype(float),
                "qty": sz[ok].astype(float),
                "crossed": crossed[ok].astype(bool),
            }
        )
        .sort_values("time", kind="mergesort")
        .reset_index(drop=True)
    )
    out.attrs["malformed"] = int((~ok).sum())
    return out


def read_hl_liquidations(path: str | os.PathLike, trades: pd.DataFrame | None = None) -> pd.DataFrame:
    """Read Hyperliquid's ``liquidations`` export (every liquidation, no coin or side column).

    Args:
        path: the CSV file.
        trades: optionally the output of :func:`read_hl_trades`; the liquidated account's fills at
            the same second are then joined on (``user``, ``time``) to recover the coin and side.

    Returns:
        DataFrame sorted by time with ``date`` (UTC, 1 s resolution), ``time`` (s, UTC epoch),
        ``user``, ``notional`` (USD notional of the liquidated position), ``account_value`` (USD)
        and ``leverage_type`` ("Cross"/"Isolated"). With ``trades``: ``coin`` (the coin with the
        largest filled notional, "" when no fill matched), ``side`` (+1 the account's fills
        bought, i.e. a short was liquidated; -1 sold, a long was liquidated; 0 unknown), ``qty``
        (coin units filled) and ``n_fills``. ``attrs["malformed"]`` counts dropped rows.
    """
    raw, _ = _read_csv(
        path, {c: (c,) for c in ("time", "user", "liquidated_ntl_pos", "liquidated_account_value")}, dtype=str
    )
    date = pd.to_datetime(raw["time"], errors="coerce", utc=True, format="mixed")
    ntl = pd.to_numeric(raw["liquidated_ntl_pos"], errors="coerce")
    acct = pd.to_numeric(raw["liquidated_account_value"], errors="coerce")
    ok = (
        date.notna()
        & np.isfinite(ntl.to_numpy(dtype=float, na_value=np.nan))
        & (ntl >= 0)
        & np.isfinite(acct.to_numpy(dtype=float, na_value=np.nan))  # an account value must be a number too
    )
    out = (
        pd.DataFrame(
            {
                "date": date[ok],
                "time": (date[ok] - pd.Timestamp(0, tz="UTC")).dt.total_seconds().astype(np.float64),
                "user": raw["user"][ok],
                "notional": ntl[ok].astype(float),
                "account_value": acct[ok].astype(float),
                "leverage_type": raw["leverage_type"][ok] if "leverage_type" in raw else "",
            }
        )
        .sort_values("time", kind="mergesort")
        .reset_index(drop=True)
    )
    out.attrs["malformed"] = int((~ok).sum())
    if trades is not None:
        f = trades.assign(
            notional_fill=trades["price"] * trades["qty"], signed_ntl=trades["price"] * trades["qty"] * trades["side"]
        )
        keys = out[["user", "time"]].drop_duplicates()
        m = f.merge(keys, on=["user", "time"], how="inner")
        if len(m):
            by_coin = m.groupby(["user", "time", "coin"], as_index=False).agg(
                ntl=("notional_fill", "sum"), qty=("qty", "sum"), signed=("signed_ntl", "sum"), n_fills=("qty", "size")
            )
            top = by_coin.sort_values("ntl", ascending=False, kind="mergesort").drop_duplicates(["user", "time"])
            top = top.assign(side=np.sign(top["signed"]).astype(np.int8))
            out = out.merge(top[["user", "time", "coin", "side", "qty", "n_fills"]], on=["user", "time"], how="left")
        else:
            out = out.assign(coin=np.nan, side=np.nan, qty=np.nan, n_fills=np.nan)
        out["coin"] = out["coin"].fillna("")
        out["side"] = out["side"].fillna(0).astype(np.int8)
        out["qty"] = out["qty"].fillna(0.0).astype(float)
        out["n_fills"] = out["n_fills"].fillna(0).astype(np.int64)
        out.attrs["malformed"] = int((~ok).sum())
    return out
