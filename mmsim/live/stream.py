"""The feed adapter message by message: what :func:`mmsim.live.feed.feed_from_capture` does to a
whole recording, done as the messages arrive, so that a live session and a replay of the same
messages see the same observations. Messages go through the one decoder
(:class:`mmsim.fit.data.Decoder`) and the guard's checks (:class:`mmsim.live.guard.GuardParams`),
and each interval of ``cadence_s`` seconds of exchange time is closed, as one
:class:`~mmsim.live.feed.Interval`, once a message stamped ``grace_s`` past its end has arrived.

What a stream cannot know in advance, and how it is handled (each counted in :attr:`quality`):

* a message stamped inside an interval already closed (``late_trade``, ``late_book``,
  ``late_mark``): a late trade is skipped (our quote of that interval was already filled on paper);
  a late book or mark still replaces an older one for the intervals to come;
* the price band's reference for the first ``ref_books`` books: the recording is judged against
  the median of its first ``ref_books`` books; the stream waits for them (or for the first
  interval's end) before judging, which the first interval's length hides;
* whether the venue marks liquidation fills or streams funding: from the first message that shows it.

Times in seconds (exchange time; ``t`` of an interval since the feed's first accepted book),
prices in quote currency, sizes in base units.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from mmsim.fit import data
from mmsim.live.feed import DEPTH_TICKS, MAX_CADENCE_S, MIN_CADENCE_S, DepthSampler, Interval
from mmsim.live.guard import GuardParams, base_asset

#: Trade ids remembered to refuse a resent trade (a reconnect replays some), per stream.
_SEEN_IDS = 200_000


class FeedBuilder:
    """Messages in, observation intervals out (see the module docstring).

    Args:
        cadence_s: seconds of exchange time per interval.
        guard: the guard's bounds (skew, band, funding).
        symbol: the symbol to keep (any case; ``BTCUSDT`` matches Hyperliquid's ``btc``); None keeps all.
        grace_s: an interval closes once a book stamped ``grace_s`` seconds past its end arrives
            (the book stream is the feed's clock: trades are stamped up to a few tens of
            milliseconds behind the books around them, while the book stream can fall seconds
            behind the trades; closing on trades would use books from the interval's past).
        liq_valid: whether the venue's trade stream marks liquidation fills (Binance USD-M's
            ``X``); None: from the first trade that carries the field.
        depth: also decode depth diffs and snapshots (the L2 levels and their continuity).
        on_book: event-driven, as :func:`~mmsim.live.feed.feed_from_capture`'s ``on_book``: an
            interval ends at each accepted book update at least ``cadence_s`` after the last end
            (and closes, as on the clock, once a book stamped ``grace_s`` past it arrives).
        depth_tick: with ``depth``, the venue's tick: each interval carries the L2 book at its end
            (:class:`~mmsim.live.feed.DepthSampler`, ``depth_ticks`` prices a side), as
            :func:`~mmsim.live.feed.feed_from_capture` with the same ``depth_tick`` does (0: none).
    """

    def __init__(
        self,
        cadence_s: float = 1.0,
        *,
        guard: GuardParams = GuardParams(),
        symbol: str | None = None,
        grace_s: float = 0.0,
        depth: bool = False,
        liq_valid: bool | None = None,
        on_book: bool = False,
        depth_tick: float = 0.0,
        depth_ticks: int = DEPTH_TICKS,
    ) -> None:
        if not (isinstance(cadence_s, (int, float)) and MIN_CADENCE_S <= cadence_s <= MAX_CADENCE_S):
            raise ValueError(
                f"cadence_s = {cadence_s!r}: must be a number of seconds in [{MIN_CADENCE_S:g}, {MAX_CADENCE_S:g}]"
            )
        if not (isinstance(grace_s, (int, float)) and 0 <= grace_s < (60.0 if on_book else cadence_s)):
            bound = "60" if on_book else f"cadence_s = {cadence_s:g}"
            raise ValueError(f"grace_s = {grace_s!r}: must be in [0, {bound}) seconds")
        self.cadence_s = float(cadence_s)
        self.on_book = bool(on_book)
        self._edges: deque = deque()  # on_book: the interval ends not closed yet, epoch s
        self._end: float | None = None  # on_book: the end of the last closed interval
        self.grace_s = float(grace_s)
        self.guard = guard
        self.symbol = symbol
        self.decoder = data.Decoder(depth=depth)
        self.sampler = DepthSampler(depth_tick, depth_ticks) if depth and depth_tick > 0 else None
        self.counts: dict[str, int] = {}
        self.t0: float | None = None  # the first accepted book's exchange time, s since the epoch
        self.k = 0  # intervals closed
        self.latest = -math.inf  # the latest exchange time of a book accepted (the feed's clock)
        self.trade_latest = -math.inf  # of a trade
        self._warm: list[tuple] = []  # books held until the band's reference is known
        self._warm_trades: list[tuple] = []
        self._ref: deque = deque(maxlen=guard.ref_books)  # recent mids (the band's reference)
        self._ref0: float | None = None  # the first books' median
        self._books: list[tuple] = []  # accepted books stamped after the last closed end
        self._book: tuple | None = None  # the last book at or before the last closed end
        self._trades: list[tuple] = []  # accepted trades of the open intervals
        self._marks: list[tuple] = []
        self._mark: tuple | None = None
        self._max_next = -math.inf  # the latest next-funding time accepted
        self._prev: tuple | None = None  # (rate, next settlement) of the last closed interval
        self._seen: set = set()
        self._seen_order: deque = deque()
        self._liq_known = liq_valid is not None
        self.liq_valid = bool(liq_valid)
        self.funding_valid = False
        self.trades_total = 0
        self._trade_stream = False  # a trade (not aggTrade) message has come
        self._resume_end = -math.inf  # a resumed feed: messages stamped by then were the last session's
        self._lags: deque = deque(maxlen=1000)  # receive minus exchange time of recent books, s

    def resume(self, t0: float, k: int, last: Interval) -> None:
        """Continue a journaled feed: its start ``t0`` (epoch s), the ``k`` intervals it closed and
        the last of them. Messages stamped by its end are counted as ``before_resume``."""
        self.t0, self.k = float(t0), int(k)
        self._end = self.t0 + float(last.t)
        end = self.end
        self._resume_end = end
        self._ref0 = 0.5 * (last.best_bid + last.best_ask)
        self._book = (end - last.book_age, end, last.best_bid, last.bid_size, last.best_ask, last.ask_size, "")
        nxt = end + last.next_funding_s if last.funding_valid and last.next_funding_s > 0 else math.inf
        if last.funding_valid:
            self._mark = (end, end, 0.0, 0.0, 0.0, last.funding_rate, nxt)
            self._max_next = nxt if math.isfinite(nxt) else -math.inf
        self._prev = (last.funding_rate, nxt)
        self.liq_valid, self.funding_valid = bool(last.liq_valid), bool(last.funding_valid)
        self.latest = end

    @property
    def clock_offset_s(self) -> float | None:
        """Median receive time minus exchange time of the recent books, s (the local clock's offset
        plus the network's delay); None before any."""
        return float(np.median(self._lags)) if self._lags else None

    def _late(self, what: str, t: float) -> None:
        self._count("before_resume" if t <= self._resume_end else what)

    # ------------------------------------------------------------------------------------------
    @property
    def quality(self) -> dict:
        """What was refused or skipped, by class (the decoder's counts and the guard's)."""
        d = self.decoder
        q = dict(self.counts)
        for k, v in d.rejected.items():
            q[k] = q.get(k, 0) + int(v)
        if d.malformed:
            q["malformed"] = d.malformed
        if d.crossed:
            q["crossed_book"] = d.crossed
        return q

    @property
    def end(self) -> float | None:
        """The end of the last closed interval, s since the epoch (None before the first)."""
        if self.t0 is None:
            return None
        if self.on_book:
            return self._end if self._end is not None else self.t0
        return self.t0 + self.k * self.cadence_s

    def _count(self, what: str, n: int = 1) -> None:
        self.counts[what] = self.counts.get(what, 0) + n

    def _skewed(self, t: float, local: float) -> bool:
        return abs(t - local) > self.guard.max_clock_skew_s

    def _symbol_ok(self, sym: str) -> bool:
        if self.symbol is None or not sym:
            return True
        return sym == self.symbol.lower() or base_asset(sym) == base_asset(self.symbol)

    # ------------------------------------------------------------------------------------------
    def message(self, local: float, body: str) -> list[Interval]:
        """One raw message received at ``local`` (s since the epoch); returns the intervals it closes."""
        d = self.decoder
        d.message(local, body)
        return self._take()

    def line(self, line: str) -> list[Interval]:
        """One recorded line, ``<local receive time> <raw JSON>``."""
        self.decoder.line(line)
        return self._take()

    def snapshot(self, local: float, msg: dict) -> None:
        """A REST depth snapshot for the depth diffs (a resynchronisation)."""
        self.decoder.snapshot(local, msg)

    def flush(self) -> list[Interval]:
        """At the end of a stream: close every interval that ends by the latest message's time."""
        self._end_warmup()
        return self._close(max(self.latest, self.trade_latest))

    # ------------------------------------------------------------------------------------------
    def _take(self) -> list[Interval]:
        d = self.decoder
        if d.trades or d.agg:
            # Binance's aggregated stream counts only where there is no trade stream (the same
            # volume twice otherwise): once a trade message has come, aggregated ones are refused.
            self._trade_stream = self._trade_stream or bool(d.trades)
            if self._trade_stream and d.agg:
                self._count("aggTrade_beside_trade_stream", len(d.agg))
            for r in d.trades if self._trade_stream else d.agg:
                self._trade(r)
            d.trades.clear()
            d.agg.clear()
        if d.books:
            for r in d.books:
                self._book_row(r)
            d.books.clear()
            d.book_on_local.clear()
        if d.marks:
            for r in d.marks:
                self._mark_row(r)
            d.marks.clear()
        if self.sampler is not None:
            self.sampler.add(d.depth_rows)  # applied as each interval closes
        d.depth_rows.clear()
        if self.t0 is None:
            return []
        return self._close(self.latest - self.grace_s)

    def _trade(self, r: tuple) -> None:
        t, local, p, q, side, kind, tid, sym = r
        if not self._symbol_ok(sym):
            self._count("other_symbol")
            return
        key = (sym, tid)
        if key in self._seen:
            self._count("duplicate_trade_id")
            return
        self._seen.add(key)
        self._seen_order.append(key)
        if len(self._seen_order) > _SEEN_IDS:
            self._seen.discard(self._seen_order.popleft())
        if self._skewed(t, local):
            self._count("trade_bad_time")
            return
        if self.t0 is None:
            self._warm_trades.append(r)
            return
        self._accept_trade(r)

    def _accept_trade(self, r: tuple) -> None:
        t, _, p, _, _, kind, _, _ = r
        ref = self._mid()
        if ref is not None and abs(p / ref - 1.0) > self.guard.band:
            self._count("trade_outside_band")
            return
        if t <= self.t0:
            return  # before the first book: not in the feed
        if not self._liq_known:
            self.liq_valid = self.liq_valid or kind != ""
        self.trade_latest = max(self.trade_latest, t)
        if t <= self.end:
            self._late("late_trade", t)
            return
        self._trades.append(r)

    def _mid(self) -> float | None:
        """The mid of the last accepted book (the band's reference for a trade)."""
        b = self._books[-1] if self._books else self._book
        if b is None:
            return None
        return 0.5 * (b[2] + b[4])

    def _book_row(self, r: tuple) -> None:
        t, local, b, _, a, _, sym = r
        if not self._symbol_ok(sym):
            self._count("other_symbol")
            return
        if self._skewed(t, local):
            self._count("book_bad_time")
            return
        if self._ref0 is None:
            self._warm.append(r)
            if len(self._warm) >= self.guard.ref_books or (t - min(w[0] for w in self._warm)) >= self.cadence_s:
                self._end_warmup()
            return
        self._judge_book(r)

    def _end_warmup(self) -> None:
        if self._ref0 is not None or not self._warm:
            return
        warm = sorted(self._warm, key=lambda w: w[0])
        self._ref0 = float(np.median([0.5 * (w[2] + w[4]) for w in warm]))
        self._warm = []
        for i, w in enumerate(warm):
            self._judge_book(w, first=i < self.guard.ref_books)
        trades, self._warm_trades = self._warm_trades, []
        if self.t0 is not None:
            for r in sorted(trades, key=lambda x: (x[0], x[6])):
                self._accept_trade(r)

    def _judge_book(self, r: tuple, first: bool = False) -> None:
        t, local, b, _, a, _, _ = r
        self._lags.append(local - t)
        mid = 0.5 * (b + a)
        ref = self._ref0 if first or not self._ref else float(np.median(self._ref))
        self._ref.append(mid)
        if abs(mid / ref - 1.0) > self.guard.band:
            self._count("book_outside_band")
            return
        if self.t0 is None:
            self.t0 = t
        elif self.end is not None and t <= self.end:
            self._late("late_book", t)
            if self._book is None or t >= self._book[0]:
                self._book = r  # still the newest book for the intervals to come
            return
        self.latest = max(self.latest, t)
        self._books.append(r)
        if self.on_book and t > self.t0:
            last = self._edges[-1] if self._edges else self.end
            if t - last >= self.cadence_s:
                self._edges.append(t)

    def _mark_row(self, r: tuple) -> None:
        t, local, *_, rate, t_next = r
        if self._skewed(t, local):
            self._count("funding_bad_time")
            return
        if abs(rate) > self.guard.max_funding_rate:
            self._count("funding_rate_implausible")
            return
        if t_next < self._max_next:
            self._count("funding_time_backwards")
            return
        self._max_next = t_next
        self.funding_valid = True
        if self.end is not None and t <= self.end:
            self._late("late_mark", t)
            if self._mark is None or t >= self._mark[0]:
                self._mark = r
            return
        self._marks.append(r)

    # ------------------------------------------------------------------------------------------
    def _close(self, upto: float) -> list[Interval]:
        """Close every interval whose end is at or before ``upto`` (exchange s since the epoch)."""
        out = []
        if self.t0 is None:
            return out
        if self.on_book:
            while self._edges and self._edges[0] <= upto:
                out.append(self._close_one(self._edges.popleft()))
            return out
        while self.t0 + (self.k + 1) * self.cadence_s <= upto:
            out.append(self._close_one(self.t0 + (self.k + 1) * self.cadence_s))
        return out

    def _close_one(self, edge: float) -> Interval:
        self.k += 1
        self._end = edge
        self._books, self._book = _latest(self._books, edge, self._book)
        self._marks, self._mark = _latest(self._marks, edge, self._mark)
        book, mark = self._book, self._mark
        now = sorted((r for r in self._trades if r[0] <= edge), key=lambda r: (r[0], r[6]))
        self._trades = [r for r in self._trades if r[0] > edge]
        self.trades_total += len(now)
        bt, _, bid, bq, ask, aq, _ = book
        depth = self.sampler.sample(edge, bid, ask) if self.sampler is not None else (None, None)
        px = np.array([r[2] for r in now], float)
        qty = np.array([r[3] for r in now], float)
        side = np.array([r[4] for r in now], np.int8)
        liq = np.array([r[5] == "INSURANCE_FUND" for r in now], bool)
        buy, sell = side > 0, side < 0
        vb, vs, nb, ns = _sums(qty * buy, qty * sell, px * qty * buy, px * qty * sell)
        if mark is not None:
            rate, nxt = float(mark[5]), float(mark[6])
            next_s = max(nxt - edge, 0.0)
        else:
            rate, nxt, next_s = 0.0, math.inf, 0.0
        prev_rate, prev_nxt = self._prev if self._prev is not None else (rate, nxt)
        settled = mark is not None and nxt > prev_nxt
        self._prev = (rate, nxt)
        return Interval(
            t=edge - self.t0,
            best_bid=bid,
            best_ask=ask,
            bid_size=bq,
            ask_size=aq,
            n_buy=float(np.sum(buy)),
            n_sell=float(np.sum(sell)),
            vol_buy=vb,
            vol_sell=vs,
            vwap_buy=nb / vb if vb > 0 else 0.0,
            vwap_sell=ns / vs if vs > 0 else 0.0,
            last_price=float(px[-1]) if len(px) else 0.5 * (bid + ask),
            liq_long=_sums(qty * (liq & sell))[0],
            liq_short=_sums(qty * (liq & buy))[0],
            liq_valid=self.liq_valid,
            funding_rate=rate,
            funding_settled=bool(settled),
            settled_rate=prev_rate if settled else 0.0,
            next_funding_s=next_s,
            funding_valid=self.funding_valid,
            trade_price=px,
            trade_qty=qty,
            trade_side=side,
            book_age=edge - bt,
            trade_time=np.array([r[0] for r in now], float) - self.t0,
            bid_depth=depth[0],
            ask_depth=depth[1],
        )


def _latest(rows: list[tuple], edge: float, last: tuple | None) -> tuple[list[tuple], tuple | None]:
    """Split rows (exchange time first) at ``edge``: those stamped after it, and the latest at or
    before it, or ``last`` where none is later (the later arrival among equal stamps wins)."""
    keep = []
    for r in rows:
        if r[0] <= edge:
            if last is None or r[0] >= last[0]:
                last = r
        else:
            keep.append(r)
    return keep, last


def _sums(*ws: np.ndarray) -> list[float]:
    """Each array's sum, added in order as :func:`mmsim.live.feed.feed_from_capture` adds an
    interval's trades (``np.bincount``), so that both give the same float64 to the last bit."""
    if not len(ws[0]):
        return [0.0] * len(ws)
    zero = np.zeros(len(ws[0]), np.intp)
    return [float(np.bincount(zero, weights=w, minlength=1)[0]) for w in ws]
