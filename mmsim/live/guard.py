"""The guard between exchange messages and the feed adapter: a message is refused, counted by
class, when its exchange time is implausible, it belongs to another symbol, its price leaves a band
around the recent market, or its funding fields make no sense. Recorded and live messages go
through the same checks; the counts are the run's ``feed_quality``. Times in seconds, prices in
quote currency, funding rates per settlement interval."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd


@dataclasses.dataclass(frozen=True)
class GuardParams:
    """Attributes:
    max_clock_skew_s: a message whose exchange time is further than this from its receive time
        is refused (a stamp in the wrong unit, a day early, in the future), seconds.
    band: a book whose mid, or a trade whose price, is further than this fraction from the recent
        market (the median mid of the last ``ref_books`` valid books; the book mid at the trade's
        time) is refused.
    ref_books: valid books in the reference median.
    max_funding_rate: a funding rate above this in absolute value is refused (fraction per
        interval; venues cap theirs at a few per cent).
    stale_s: no valid book for longer than this: the quotes are pulled until one arrives, seconds.
    """

    max_clock_skew_s: float = 300.0
    band: float = 0.05
    ref_books: int = 50
    max_funding_rate: float = 0.03
    stale_s: float = 10.0

    def __post_init__(self) -> None:
        for f in ("max_clock_skew_s", "band", "max_funding_rate", "stale_s"):
            v = getattr(self, f)
            if not (isinstance(v, (int, float)) and np.isfinite(v) and v > 0):
                raise ValueError(f"GuardParams.{f} = {v!r}: must be a positive number")
        if not (isinstance(self.ref_books, int) and self.ref_books >= 1):
            raise ValueError(f"GuardParams.ref_books = {self.ref_books!r}: must be an integer >= 1")


def _skewed(df: pd.DataFrame, gp: GuardParams) -> np.ndarray:
    """Rows whose exchange time is further than ``max_clock_skew_s`` from their receive time."""
    if not len(df) or "local_time" not in df:
        return np.zeros(len(df), bool)
    return np.abs(df["time"].to_numpy(float) - df["local_time"].to_numpy(float)) > gp.max_clock_skew_s


_QUOTES = ("usdt", "usdc", "usd")


def base_asset(symbol: str) -> str:
    """The traded asset of a symbol, lower case: ``BTCUSDT`` and Hyperliquid's ``BTC`` are both ``btc``."""
    s = symbol.lower().removesuffix("_perp")
    for q in _QUOTES:
        if s.endswith(q) and len(s) > len(q):
            return s[: -len(q)]
    return s


def choose_symbol(cap: dict, symbol: str | None) -> str | None:
    """The capture's symbol to replay: the one matching ``symbol`` (any case; ``BTCUSDT`` matches
    Hyperliquid's ``btc``) when given, else the one with the most book updates; None for a capture
    without symbols. ``ValueError`` when the capture has no such symbol."""
    syms = cap["book_ticker"]["symbol"] if "symbol" in cap["book_ticker"] else pd.Series([], dtype=object)
    present = sorted({s for s in syms.unique() if s})
    if symbol is not None:
        if not present:
            return None
        match = [s for s in present if s == symbol.lower() or base_asset(s) == base_asset(symbol)]
        if not match:
            raise ValueError(
                f"the capture holds {[s.upper() for s in present]}, not {symbol.upper()} (the configured market); "
                "name the capture's symbol to replay it against this market anyway (mmsim live --symbol)"
            )
        return match[0]
    if not present:
        return None
    return str(syms[syms != ""].value_counts().idxmax())


def check(cap: dict, gp: GuardParams = GuardParams(), *, symbol: str | None = None) -> tuple[dict, dict]:
    """The capture (:func:`mmsim.fit.data.read_capture`'s dict) with every implausible message
    removed, and the counts of what was removed, by class (plus the reader's own counts)."""
    q: dict[str, int] = {}

    def drop(df: pd.DataFrame, mask: np.ndarray, what: str) -> pd.DataFrame:
        n = int(np.sum(mask))
        if n:
            q[what] = q.get(what, 0) + n
        return df[~mask] if n else df

    books, trades, marks = cap["book_ticker"], cap["trades"], cap.get("mark_price")
    sym = choose_symbol(cap, symbol)
    if sym is not None:
        books = drop(books, (books["symbol"] != sym).to_numpy() & (books["symbol"] != "").to_numpy(), "other_symbol")
        if len(trades):
            mask = (trades["symbol"] != sym).to_numpy() & (trades["symbol"] != "").to_numpy()
            trades = drop(trades, mask, "other_symbol")
    books = drop(books, _skewed(books, gp), "book_bad_time")
    trades = drop(trades, _skewed(trades, gp), "trade_bad_time")
    books = books.sort_values("time", kind="stable")
    if len(books):
        mid = 0.5 * (books["bid"].to_numpy(float) + books["ask"].to_numpy(float))
        ok = _plausible_mids(mid, gp)
        books = drop(books, ~ok, "book_outside_band")
    if len(trades) and len(books):
        trades = trades.sort_values(["time", "trade_id"], kind="stable")
        bt = books["time"].to_numpy(float)
        bmid = 0.5 * (books["bid"].to_numpy(float) + books["ask"].to_numpy(float))
        i = np.clip(np.searchsorted(bt, trades["time"].to_numpy(float), side="right") - 1, 0, len(bt) - 1)
        off = np.abs(trades["price"].to_numpy(float) / bmid[i] - 1.0) > gp.band
        trades = drop(trades, off, "trade_outside_band")
    if marks is not None and len(marks):
        marks = drop(marks, _skewed(marks, gp), "funding_bad_time")
        marks = drop(
            marks, (np.abs(marks["funding_rate"].to_numpy(float)) > gp.max_funding_rate), "funding_rate_implausible"
        )
        marks = marks.sort_values("time", kind="stable")
        # The next settlement time only moves forward: one that goes back (and the jump forward after
        # it) would read as a settlement at every flap.
        nxt = marks["next_funding_time"].to_numpy(float)
        back = nxt < np.maximum.accumulate(nxt)
        marks = drop(marks, back, "funding_time_backwards")
    for k, v in (cap.get("rejected") or {}).items():
        q[k] = q.get(k, 0) + int(v)
    if cap.get("malformed"):
        q["malformed"] = int(cap["malformed"])
    if cap.get("crossed"):
        q["crossed_book"] = int(cap["crossed"])
    out = dict(cap, book_ticker=books.reset_index(drop=True), trades=trades.reset_index(drop=True))
    if marks is not None:
        out["mark_price"] = marks.reset_index(drop=True)
    out["symbol"] = sym
    return out, q


def _plausible_mids(mid: np.ndarray, gp: GuardParams) -> np.ndarray:
    """Whether each book mid lies within the band of the median of the ``ref_books`` mids before it
    (causal, as a live feed must be; the first ``ref_books`` books are judged against the median of
    the first ``ref_books``, so a bad first book does not become the reference)."""
    k = gp.ref_books
    ref = np.array(pd.Series(mid).rolling(k, min_periods=1).median().shift(1), dtype=float)
    ref[: min(k, len(mid))] = np.median(mid[:k])
    return np.abs(mid / ref - 1.0) <= gp.band
