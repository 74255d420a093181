"""The paper gateway: our resting quotes filled against recorded (or live) public trades, with the
queue ahead of us taken from the displayed book. One quote side at a time, in float64 on the host;
prices in quote currency, sizes in base units. The fill arithmetic is :mod:`mmsim.exchange`'s, the
same that fills quotes in the simulated tick book; the rule is written out in ``docs/ARCHITECTURE.md``."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from mmsim import exchange


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
) -> tuple[float, Resting]:
    """One side of the paper gateway over one interval (see the module docstring).

    Args:
        side: +1 our bid (filled by aggressive sells), -1 our ask (by aggressive buys).
        price, size, active: our quote on that side, sent at the start of the interval.
        resting: that side's resting order before the quote (its price and queue ahead).
        touch, touch_qty: the best price on that side and its displayed size when the quote was sent.
        trade_price, trade_qty, trade_side: the interval's public trades.

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
        level_qty = np.inf  # behind the touch: depth unknown
    queue = float(exchange.queue_on_arrival(resting.queue, same, level_qty))
    if abs(price - touch) <= eps:
        queue = float(exchange.within_level(queue, touch_qty))  # the displayed touch bounds what is ahead
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
