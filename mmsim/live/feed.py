"""The feed adapter: exchange messages cut into :class:`~mmsim.observation.Observation` rows at a
cadence (``cadence_s`` seconds of exchange time): the last top of book, the interval's trades by
aggressor side, its liquidation fills and the funding stream. A recording is a feed; the rules are in
``docs/ARCHITECTURE.md``."""

from __future__ import annotations

import math
from collections import deque
from typing import NamedTuple

import numpy as np

from mmsim.live.guard import GuardParams, check


class Feed(NamedTuple):
    """A recording cut into intervals; arrays of length ``n`` (one per observation) unless said."""

    t: np.ndarray  # end of each interval, s since the recording's start
    t0: float  # the recording's start, s since the Unix epoch
    best_bid: np.ndarray  # top of book at the end of the interval
    best_ask: np.ndarray
    bid_size: np.ndarray  # base units displayed at the touch
    ask_size: np.ndarray
    n_buy: np.ndarray  # aggressive buys in the interval (count)
    n_sell: np.ndarray
    vol_buy: np.ndarray  # base units
    vol_sell: np.ndarray
    vwap_buy: np.ndarray  # 0 where none
    vwap_sell: np.ndarray
    last_price: np.ndarray  # last trade price (the mid where none)
    liq_long: np.ndarray  # base units of long positions liquidated (forced sells)
    liq_short: np.ndarray
    liq_valid: bool  # the capture marks liquidation fills
    funding_rate: np.ndarray  # per interval of the venue (0 where the capture has none)
    funding_settled: np.ndarray  # bool
    settled_rate: np.ndarray
    next_funding_s: np.ndarray
    funding_valid: bool
    # The trades themselves, sorted by time, for the paper gateway: interval i holds
    # trades [trade_start[i], trade_start[i + 1]).
    trade_price: np.ndarray
    trade_qty: np.ndarray
    trade_side: np.ndarray  # +1 aggressive buy, -1 aggressive sell
    trade_start: np.ndarray  # (n + 1,)
    # Seconds since the last valid book update at each interval's end (the quotes are pulled past
    # the guard's stale_s), the messages the guard refused by class, and the symbol replayed.
    book_age: np.ndarray | None = None
    quality: dict | None = None
    symbol: str | None = None
    trade_time: np.ndarray | None = None  # each trade's exchange time, s since the recording's start
    on_book: bool = False  # an observation at each book update (at least the cadence apart), not a clock
    # The L2 book at each interval's end (DepthSampler): (n, ticks) base units displayed at
    # best_bid - j ticks and best_ask + j ticks, j = 0 .. ticks - 1; NaN where it is not known.
    bid_depth: np.ndarray | None = None
    ask_depth: np.ndarray | None = None

    @property
    def mid(self) -> np.ndarray:
        return 0.5 * (self.best_bid + self.best_ask)

    def row(self, i: int) -> Interval:
        """Observation ``i`` as one :class:`Interval` (what a live stream yields)."""
        lo, hi = self.trade_start[i], self.trade_start[i + 1]
        return Interval(
            **{f: getattr(self, f)[i] for f in _PER_INTERVAL},
            liq_valid=self.liq_valid,
            funding_valid=self.funding_valid,
            trade_price=self.trade_price[lo:hi],
            trade_qty=self.trade_qty[lo:hi],
            trade_side=self.trade_side[lo:hi],
            book_age=float(self.book_age[i]) if self.book_age is not None else 0.0,
            trade_time=self.trade_time[lo:hi] if self.trade_time is not None else None,
            bid_depth=self.bid_depth[i] if self.bid_depth is not None else None,
            ask_depth=self.ask_depth[i] if self.ask_depth is not None else None,
        )


class Interval(NamedTuple):
    """One observation interval of a feed, recorded (:meth:`Feed.row`) or live
    (:class:`mmsim.live.stream.FeedBuilder`): the fields of :class:`Feed` at one index, scalars,
    with the interval's own trades. ``t``: its end, s since the feed's start; ``book_age``: seconds
    since the last valid book update at that end."""

    t: float
    best_bid: float
    best_ask: float
    bid_size: float
    ask_size: float
    n_buy: float
    n_sell: float
    vol_buy: float
    vol_sell: float
    vwap_buy: float
    vwap_sell: float
    last_price: float
    liq_long: float
    liq_short: float
    liq_valid: bool
    funding_rate: float
    funding_settled: bool
    settled_rate: float
    next_funding_s: float
    funding_valid: bool
    trade_price: np.ndarray
    trade_qty: np.ndarray
    trade_side: np.ndarray
    book_age: float
    trade_time: np.ndarray | None = None  # the trades' exchange times, s since the feed's start
    bid_depth: np.ndarray | None = None  # the L2 book at the end, (ticks,) base units (see Feed)
    ask_depth: np.ndarray | None = None


#: The fields of :class:`Feed` held per interval (one value each).
_PER_INTERVAL = (
    "t",
    "best_bid",
    "best_ask",
    "bid_size",
    "ask_size",
    "n_buy",
    "n_sell",
    "vol_buy",
    "vol_sell",
    "vwap_buy",
    "vwap_sell",
    "last_price",
    "liq_long",
    "liq_short",
    "funding_rate",
    "funding_settled",
    "settled_rate",
    "next_funding_s",
)


#: Prices per side an interval's L2 sample holds, from the touch outwards (the spec policy quotes
#: 10-40 ticks from the BTCUSDT touch).
DEPTH_TICKS = 64


class DepthSampler:
    """The L2 book at each observation's end, for the paper rule's queue behind the touch: the
    decoder's depth rows (:data:`mmsim.fit.data.DEPTH_COLUMNS` order: a snapshot's rows start the
    book again, a diff's replace their levels, size 0 deletes) applied in arrival order up to the
    first row stamped after the end, then the size displayed at ``ticks`` prices from each touch.

    One rule for a recording (:func:`feed_from_capture`: every row given at once) and a live
    stream (:class:`mmsim.live.stream.FeedBuilder`: rows as they arrive), so that a replay and a
    session of the same messages see the same levels. A diff stamped before an end that arrives
    after it (another stream's message closed the interval) counts at the next end, as it would
    live. ``tick``: the venue's price grid, quote currency; sizes in base units."""

    def __init__(self, tick: float, ticks: int = DEPTH_TICKS) -> None:
        if not (tick > 0 and math.isfinite(tick)):
            raise ValueError(f"the L2 sample needs the venue's tick (> 0), not {tick!r}")
        if not (isinstance(ticks, int) and ticks >= 2):
            raise ValueError(f"ticks = {ticks!r}: must be an integer >= 2")
        self.tick, self.ticks = float(tick), ticks
        self.levels: dict[int, dict[int, float]] = {1: {}, -1: {}}
        self.known = False  # a snapshot has been applied
        self._snap_msg = None
        self._rows: deque = deque()

    def add(self, rows) -> None:
        """Depth rows ``(time, local_time, msg, snapshot, side, price, qty)``, in arrival order."""
        self._rows.extend(rows)

    def sample(self, end: float, best_bid: float, best_ask: float) -> tuple[np.ndarray, np.ndarray]:
        """The book as of ``end`` (s since the epoch): ``(bid sizes at best_bid - j ticks, ask sizes
        at best_ask + j ticks)`` for j = 0 .. ticks - 1, NaN before the first snapshot."""
        rows, lv = self._rows, self.levels
        while rows and rows[0][0] <= end:
            _, _, msg, snap, side, price, qty = rows.popleft()
            if snap and msg != self._snap_msg:  # a snapshot's first row: the book starts again
                self._snap_msg, self.known = msg, True
                lv[1].clear()
                lv[-1].clear()
            key = int(round(price / self.tick))
            if qty > 0:
                lv[int(side)][key] = float(qty)
            else:
                lv[int(side)].pop(key, None)
        if not self.known:
            nan = np.full(self.ticks, np.nan)
            return nan, nan.copy()
        b0, a0 = int(round(best_bid / self.tick)), int(round(best_ask / self.tick))
        bid = np.array([lv[1].get(b0 - j, 0.0) for j in range(self.ticks)])
        ask = np.array([lv[-1].get(a0 + j, 0.0) for j in range(self.ticks)])
        return bid, ask


#: Bounds of the cadence, seconds: finer than a millisecond is below the venues' time stamps.
MIN_CADENCE_S, MAX_CADENCE_S = 1e-3, 3600.0
#: The most observations one feed may hold (memory never depends on a bad time stamp).
MAX_OBSERVATIONS = 20_000_000


def _thinned(times: np.ndarray, t0: float, spacing: float) -> np.ndarray:
    """The book times kept as observation ends: each the first at least ``spacing`` s after the
    previous one kept (or after ``t0``)."""
    out, last = [], t0
    for t in times:
        if t - last >= spacing:
            out.append(t)
            last = t
    return np.asarray(out, float)


def feed_from_capture(
    cap: dict,
    cadence_s: float = 1.0,
    *,
    guard: GuardParams | None = GuardParams(),
    symbol: str | None = None,
    on_book: bool = False,
    depth_tick: float = 0.0,
    depth_ticks: int = DEPTH_TICKS,
) -> Feed:
    """Cut a capture (:func:`mmsim.fit.data.read_capture`'s dict) into observations every ``cadence_s``
    seconds of exchange time, from the first book update to the last event, after the guard
    (:func:`mmsim.live.guard.check`; None: none) has refused the implausible messages. ``symbol``:
    the symbol to replay (``ValueError`` if the capture lacks it); default the capture's main one.

    ``on_book``: event-driven instead: an observation at every top-of-book update, but never two
    within ``cadence_s`` seconds (a book update sooner than that after the last observation waits
    for the next one past it).

    ``depth_tick`` > 0 (the venue's tick): the L2 book at each end as well (:class:`DepthSampler`,
    ``depth_ticks`` prices a side), from the capture's ``depth`` table (``read_capture(...,
    depth=True)``); NaN throughout when it has none."""
    if not (isinstance(cadence_s, (int, float)) and MIN_CADENCE_S <= cadence_s <= MAX_CADENCE_S):
        raise ValueError(
            f"cadence_s = {cadence_s!r}: must be a number of seconds in [{MIN_CADENCE_S:g}, {MAX_CADENCE_S:g}]"
        )
    quality: dict = {}
    if guard is not None:
        cap, quality = check(cap, guard, symbol=symbol)
    elif symbol is not None:
        raise ValueError("symbol selection needs the guard")
    inverse = [s for s in cap.get("symbols", []) if s.endswith("_perp")]
    if inverse:
        raise ValueError(
            f"the capture is of an inverse (COIN-M) contract {inverse}: sizes are 100-USD contracts and "
            "PnL is in the coin, while the engine's account is linear (USDT-margined)"
        )
    book, trades = cap["book_ticker"], cap["trades"]
    if len(book) == 0:
        raise ValueError("the capture has no top-of-book stream (bookTicker / l2Book): nothing to quote against")
    book = book.sort_values("time", kind="stable")
    trades = trades.sort_values(["time", "trade_id"], kind="stable") if len(trades) else trades
    t0 = float(book["time"].iloc[0])
    t_end = max(float(book["time"].iloc[-1]), float(trades["time"].iloc[-1]) if len(trades) else t0)
    if cadence_s > t_end - t0:
        raise ValueError(
            f"cadence_s = {cadence_s:g} s is longer than the capture ({t_end - t0:.3g} s of books and trades)"
        )
    bt = book["time"].to_numpy(float)
    if on_book:
        edges = _thinned(bt[bt > t0], t0, cadence_s)
        n = len(edges)
        if n == 0:
            raise ValueError("the capture has a single top-of-book update: no event to observe at")
    else:
        n = int(np.floor((t_end - t0) / cadence_s))
    if n > MAX_OBSERVATIONS:
        raise ValueError(
            f"the capture spans {t_end - t0:.4g} s: a cadence of {cadence_s:g} s gives {n:,} observations "
            f"(at most {MAX_OBSERVATIONS:,}); choose a coarser cadence"
        )
    if not on_book:
        edges = t0 + cadence_s * np.arange(1, n + 1)  # interval ends, epoch s
    ib = np.searchsorted(bt, edges, side="right") - 1  # last book update at or before each end
    bb, ba = book["bid"].to_numpy(float)[ib], book["ask"].to_numpy(float)[ib]
    bq, aq = book["bid_qty"].to_numpy(float)[ib], book["ask_qty"].to_numpy(float)[ib]

    tt = trades["time"].to_numpy(float) if len(trades) else np.zeros(0)
    keep = tt > t0  # trades before the first book are dropped
    tt = tt[keep]
    px = trades["price"].to_numpy(float)[keep] if len(trades) else tt
    qty = trades["qty"].to_numpy(float)[keep] if len(trades) else tt
    side = trades["side"].to_numpy(np.int8)[keep] if len(trades) else tt.astype(np.int8)
    kind = trades["type"].to_numpy(str)[keep] if len(trades) else tt.astype(str)
    start = np.searchsorted(tt, np.concatenate([[t0], edges]), side="right")
    start[0] = 0
    idx = np.repeat(np.arange(n), np.diff(start))  # interval of each kept trade
    tt, px, qty, side, kind = (a[: start[-1]] for a in (tt, px, qty, side, kind))

    def per_interval(w):
        return np.bincount(idx, weights=w, minlength=n)[:n]

    buy, sell = side > 0, side < 0
    vol_buy, vol_sell = per_interval(qty * buy), per_interval(qty * sell)
    notional_buy, notional_sell = per_interval(px * qty * buy), per_interval(px * qty * sell)
    last = np.where(np.diff(start) > 0, px[np.maximum(start[1:] - 1, 0)] if len(px) else 0.0, 0.5 * (bb + ba))
    liq = kind == "INSURANCE_FUND"
    marks = cap.get("mark_price")
    funding_valid = marks is not None and len(marks) > 0
    rate = settled = settled_rate = next_s = np.zeros(n)
    if funding_valid:
        marks = marks.sort_values("time", kind="stable")
        im = np.searchsorted(marks["time"].to_numpy(float), edges, side="right") - 1
        ok = im >= 0
        im = np.maximum(im, 0)
        rate = np.where(ok, marks["funding_rate"].to_numpy(float)[im], 0.0)
        nxt = np.where(ok, marks["next_funding_time"].to_numpy(float)[im], np.inf)
        next_s = np.where(np.isfinite(nxt), np.maximum(nxt - edges, 0.0), 0.0)
        prev_nxt = np.concatenate([[nxt[0]], nxt[:-1]])
        settled = (nxt > prev_nxt) & ok
        prev_rate = np.concatenate([[rate[0]], rate[:-1]])
        settled_rate = np.where(settled, prev_rate, 0.0)
    bid_depth = ask_depth = None
    if depth_tick > 0:
        sampler = DepthSampler(depth_tick, depth_ticks)
        dep = cap.get("depth")
        if dep is not None and len(dep):
            cols = [dep[c].to_numpy() for c in ("time", "local_time", "msg", "snapshot", "side", "price", "qty")]
            sampler.add(zip(*(c.tolist() for c in cols), strict=True))
        samples = [sampler.sample(e, b, a) for e, b, a in zip(edges, bb, ba, strict=True)]
        bid_depth = np.array([x[0] for x in samples]).reshape(n, depth_ticks)
        ask_depth = np.array([x[1] for x in samples]).reshape(n, depth_ticks)
    return Feed(
        t=edges - t0,
        t0=t0,
        best_bid=bb,
        best_ask=ba,
        bid_size=bq,
        ask_size=aq,
        n_buy=per_interval(buy.astype(float)),
        n_sell=per_interval(sell.astype(float)),
        vol_buy=vol_buy,
        vol_sell=vol_sell,
        vwap_buy=np.where(vol_buy > 0, notional_buy / np.where(vol_buy > 0, vol_buy, 1.0), 0.0),
        vwap_sell=np.where(vol_sell > 0, notional_sell / np.where(vol_sell > 0, vol_sell, 1.0), 0.0),
        last_price=last,
        liq_long=per_interval(qty * (liq & sell)),
        liq_short=per_interval(qty * (liq & buy)),
        liq_valid=bool(np.any(kind != "")),
        funding_rate=rate,
        funding_settled=np.asarray(settled, bool),
        settled_rate=settled_rate,
        next_funding_s=next_s,
        funding_valid=bool(funding_valid),
        trade_price=px,
        trade_qty=qty,
        trade_side=side,
        trade_start=start,
        book_age=edges - bt[ib],
        quality=quality,
        symbol=cap.get("symbol"),
        trade_time=tt - t0,
        on_book=on_book,
        bid_depth=bid_depth,
        ask_depth=ask_depth,
    )
