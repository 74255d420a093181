"""The paper gateway: our resting quotes filled against recorded (or live) public trades, with the
queue ahead of us taken from the displayed book. One quote side at a time, in float64 on the host;
prices in quote currency, sizes in base units. The fill arithmetic is :mod:`mmsim.exchange`'s, the
same that fills quotes in the simulated tick book; the rule is written out in ``docs/ARCHITECTURE.md``."""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import numpy as np

from mmsim import exchange


@dataclasses.dataclass(frozen=True)
class Latency:
    """The paper gateway's order latency: a quote sent at an interval's end reaches the venue this
    long after, and the order it replaces rests until then. Constant (``constant_s``), or drawn
    per quote from ``samples_s`` (an empirical law: measured round trips) with a seeded generator.
    Seconds."""

    constant_s: float = 0.0
    samples_s: tuple[float, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        vals = (self.constant_s, *self.samples_s)
        if not all(isinstance(v, (int, float)) and math.isfinite(v) and 0 <= v < 60 for v in vals):
            raise ValueError("latency: every value must be a number of seconds in [0, 60)")
        if self.constant_s and self.samples_s:
            raise ValueError("latency: a constant or samples, not both")

    @property
    def zero(self) -> bool:
        return not self.samples_s and self.constant_s == 0

    def draw(self, rng: np.random.Generator) -> float:
        return float(rng.choice(self.samples_s)) if self.samples_s else float(self.constant_s)

    @classmethod
    def from_file(cls, path, seed: int = 0) -> Latency:
        """Samples from a text file of latencies in milliseconds, one per line (``#`` comments)."""
        vals = []
        with open(path, encoding="utf-8") as fh:
            for k, line in enumerate(fh, 1):
                line = line.split("#", 1)[0].strip()
                if not line:
                    continue
                try:
                    vals.append(float(line) / 1e3)
                except ValueError:
                    raise ValueError(f"{path}, line {k}: {line!r} is not a latency in ms") from None
        if not vals:
            raise ValueError(f"{path}: no latency in it")
        return cls(samples_s=tuple(vals), seed=seed)


class Resting(NamedTuple):
    """A paper order resting on one side: its price (0: none) and the base units ahead of it."""

    price: float = 0.0
    queue: float = 0.0


def paper_fills(
    side: int,
    price: float,
    size: float,
    active: bool,
    resting: Resting,
    touch: float,
    touch_qty: float,
    trade_price: np.ndarray,
    trade_qty: np.ndarray,
    trade_side: np.ndarray,
    behind_qty: float = math.inf,
) -> tuple[float, Resting]:
    """One side of the paper gateway over one interval (see the module docstring).

    Args:
        side: +1 our bid (filled by aggressive sells), -1 our ask (by aggressive buys).
        price, size, active: our quote on that side, sent at the start of the interval.
        resting: that side's resting order before the quote (its price and queue ahead).
        touch, touch_qty: the best price on that side and its displayed size when the quote was sent.
        trade_price, trade_qty, trade_side: the interval's public trades.
        behind_qty: for a quote behind the touch, the base units the L2 book displayed at its
            price when it was sent (``inf``: not known). A new order joins behind them, and a kept
            one's queue ahead is bounded by them, as at the touch; unknown, it fills only when
            traded through.

    Returns ``(filled base units, the resting order after the interval)``.
    """
    if not active or size <= 0 or price <= 0:
        return 0.0, Resting()
    # Recorded prices and our quote (rounded to the tick in float64) are both on the venue's grid:
    # a relative 1e-9 separates "at" from "through" without any float doubt.
    eps = 1e-9 * price
    same = resting.price > 0 and abs(resting.price - price) <= eps
    if side * (price - touch) > eps:
        level_qty = 0.0  # improves the touch: first in line
    elif abs(price - touch) <= eps:
        level_qty = touch_qty  # joins the back of the touch
    else:
        level_qty = behind_qty  # behind the touch: the L2 level's size (inf: the depth is unknown)
    queue = float(exchange.queue_on_arrival(resting.queue, same, level_qty))
    if abs(price - touch) <= eps or (side * (price - touch) < -eps and math.isfinite(level_qty)):
        queue = float(exchange.within_level(queue, level_qty))  # the displayed level bounds what is ahead
    hits = trade_side == -side  # aggressors on the other side
    through = bool(np.any(hits & (side * (price - trade_price) > eps)))
    at = float(np.sum(trade_qty[hits & (np.abs(trade_price - price) <= eps)]))
    filled, ahead = (float(x) for x in exchange.fill(float(size), queue, at, through))
    if filled >= size:
        return float(size), Resting()
    return filled, Resting(price, ahead)


def probe(feed, ticks_behind: float, tick: float, size: float = 0.01) -> np.ndarray:
    """A fresh paper quote of ``size`` base units on each side, ``ticks_behind`` ticks behind the
    touch, sent at every observation of ``feed`` and resting through the next interval: whether
    each was filled (at all) by the interval's trades, by :func:`paper_fills`. Returns ``(n - 1,
    2)`` bool (bid, ask) for the intervals t -> t + 1. Behind the touch the queue ahead is unknown,
    so such a quote fills only when traded through."""
    n = len(feed.t)
    out = np.zeros((max(n - 1, 0), 2), bool)
    d = ticks_behind * tick
    for i in range(n - 1):
        lo, hi = feed.trade_start[i + 1], feed.trade_start[i + 2]
        tp, tq, ts = feed.trade_price[lo:hi], feed.trade_qty[lo:hi], feed.trade_side[lo:hi]
        for col, side, touch, qty in (
            (0, 1, feed.best_bid[i], feed.bid_size[i]),
            (1, -1, feed.best_ask[i], feed.ask_size[i]),
        ):
            price = touch - side * d
            filled, _ = paper_fills(side, price, size, True, Resting(), touch, qty, tp, tq, ts)
            out[i, col] = filled > 0
    return out


def latent_fills(
    side: int,
    price: float,
    size: float,
    active: bool,
    resting: Resting,
    left: float,
    touch: float,
    touch_qty: float,
    trade_price: np.ndarray,
    trade_qty: np.ndarray,
    trade_side: np.ndarray,
    trade_time: np.ndarray,
    arrive: float,
    behind_old: float = math.inf,
    behind_new: float = math.inf,
) -> tuple[float, float, Resting, float]:
    """:func:`paper_fills` with an order latency: the quote sent at the interval's start reaches the
    venue at ``arrive`` (s, the trades' clock), and until then the order it replaces rests (at
    ``resting.price`` with ``left`` base units, its queue carried on). Trades before ``arrive`` fill
    the old order, the later ones the new, which joins its queue on arrival (or keeps the old one's
    place when it repeats its price, as the venue's order would). ``behind_old``, ``behind_new``:
    :func:`paper_fills`' ``behind_qty`` at the old order's and the new quote's prices.

    Returns ``(filled base units, their VWAP, the resting order after the interval, its size left)``.
    """
    early = trade_time < arrive
    f_old, rest = 0.0, resting
    if left > 0 and resting.price > 0 and early.any():
        f_old, rest = paper_fills(
            side, resting.price, left, True, resting, touch, touch_qty,
            trade_price[early], trade_qty[early], trade_side[early], behind_old,
        )  # fmt: skip
    if left - f_old <= 0:
        rest = Resting()  # the old order filled whole before the new one arrived
    late = ~early
    f_new, after = paper_fills(
        side, price, size, active, rest, touch, touch_qty, trade_price[late], trade_qty[late], trade_side[late],
        behind_new,
    )  # fmt: skip
    filled = f_old + f_new
    vwap = (f_old * resting.price + f_new * price) / filled if filled > 0 else 0.0
    return filled, vwap, after, (size - f_new if after.price > 0 else 0.0)
