"""The book: a limit order book on the venue's tick grid around the latent (efficient) price.

The price process (:mod:`mmsim.world.processes.price`) stays the efficient price; the book is what
trades. It holds the base units resting at the best ``levels`` prices of each side and moves only
by discrete events, as a large-tick book does:

* **queues** relax towards their mean depth: limit orders arrive and resting ones cancel (an
  immigration-death process: arrivals at ``refill_rate * depth`` base units per second, each
  resting unit cancelling at ``refill_rate`` per second, orders of ``lot`` base units at the touch);
* **market orders** (the Hawkes flow and the forced liquidations of the step) walk the book from
  the touch: a level whose queue is exhausted is gone and the price moves a tick; impact comes
  from depth;
* **repricing**: when the efficient price has left the touch by more than ``pull_band`` ticks, the
  stale levels are cleared (makers cancel, arbitrageurs take what is left, our order included) in
  events at ``pull_rate + pull_rate_per_tick * excess`` per second, ``excess`` the ticks the
  efficient price lies beyond the band;
* **the spread closes**: a spread wider than a tick is closed at ``gap_rate`` per second by new
  orders of ``new_level_depth`` placed around the efficient price.

Every rate is per second and every probability over a step of ``dt`` seconds is the exact one of
its continuous-time event (``1 - exp(-rate dt)``); the queue's mean and variance after ``dt``
are those of the immigration-death process for any ``dt``. Within a step the events run in a fixed
order (half a step of queues, repricing, market orders, spread, the other half of queues), which
is where a long step is biased: the
convergence in ``dt`` is measured in ``docs/MODEL.md``, section 8b.

Prices are integers of ticks (``int32``), sizes base units. Our quote is not added to the public
book (its size is small against the depth); it fills by :mod:`mmsim.exchange`'s rule.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from mmsim import distributions as dist
from mmsim import exchange, rng
from mmsim._pytree import Check, pytree_dataclass, static_field

QUEUE_BOUNDS = ("none", "level")
MODELS = ("continuous", "tick")


@pytree_dataclass
class BookParams:
    """Attributes (float fields scalars or per-asset ``(A,)``):
    model: "tick" (this book) or "continuous" (the spread process and the queue-depth fill model,
        no book) (static).
    levels: price levels held per side (static, >= 2).
    depth_touch: mean base units resting at each best price.
    depth_level: mean base units resting at each level behind the touch (and beyond the held ones).
    refill_rate: per second: the rate at which a queue relaxes to its mean (cancellations per
        resting unit, and arrivals of ``refill_rate * depth`` base units per second).
    lot: base units per limit-order event at the touch: sets the queue's noise (stationary
        variance ``lot * depth_touch``).
    new_level_depth: base units resting at a price newly placed inside the spread.
    pull_band: ticks the efficient price may sit beyond the touch before its levels are stale.
    pull_rate: repricing events per second while levels are stale (each clears all of them).
    pull_rate_per_tick: more repricing events per second per tick the efficient price lies beyond
        the band (a stale price repriced the faster the more it is worth taking).
    gap_rate: per second: the rate at which a spread wider than one tick closes.
    cancel_ahead_share: the share of a level's cancellation rate that falls on the orders ahead of
        ours (1: cancellations uniform over the queue; real queues cancel mostly at the back, where
        the newest orders are: fitted on the recorded back-of-queue fill probability).
    queue_bound: "level" or "none" (static): with "level" the queue ahead of our resting order is
        bounded by its level's public size each step (``exchange.within_level``), as the paper
        gateway bounds it by the displayed touch, so a level that shrinks below our place in line
        takes the orders ahead with it; "none" (the earlier releases') lets only executions and
        ``cancel_ahead_share`` move us up.
    """

    model: str = static_field(default="continuous")
    levels: int = static_field(default=5)
    depth_touch: jax.Array | float = 10.0
    depth_level: jax.Array | float = 10.0
    refill_rate: jax.Array | float = 0.5
    lot: jax.Array | float = 1.0
    new_level_depth: jax.Array | float = 1.0
    pull_band: jax.Array | float = 1.0
    pull_rate: jax.Array | float = 0.3
    pull_rate_per_tick: jax.Array | float = 0.0
    gap_rate: jax.Array | float = 20.0
    cancel_ahead_share: jax.Array | float = 1.0
    queue_bound: str = static_field(default="none")

    def validate(self) -> None:
        c = Check(self)
        c.require(self.model in MODELS, "model", f"must be one of {MODELS}")
        c.require(isinstance(self.levels, int) and self.levels >= 2, "levels", "must be an integer >= 2")
        c.positive("depth_touch", "base units")
        c.positive("depth_level", "base units")
        c.positive("refill_rate", "per second")
        c.positive("lot", "base units")
        c.positive("new_level_depth", "base units")
        c.nonneg("pull_band", "ticks")
        c.nonneg("pull_rate", "per second")
        c.nonneg("pull_rate_per_tick", "per second per tick")
        c.nonneg("gap_rate", "per second")
        c.between("cancel_ahead_share", 0.0, 1.0, "share of the level's cancellation rate")
        c.require(self.queue_bound in QUEUE_BOUNDS, "queue_bound", f"must be one of {QUEUE_BOUNDS}")


class BookState(NamedTuple):
    bid: jax.Array  # (A,) int32 best bid, ticks
    ask: jax.Array  # (A,) int32 best ask, ticks (> bid)
    # Base units at bid - j ticks / ask + j ticks, j = 0..L-1: one (A,) array per level (arrays
    # of paths vectorise on a CPU; a short trailing level axis does not).
    q_bid: tuple
    q_ask: tuple


class Walk(NamedTuple):
    """One side's market orders walking the book, seen from one price (ours)."""

    moved: jax.Array  # (A,) int32 levels exhausted (the touch moved this many ticks)
    queues: tuple  # the side's L levels afterwards (index 0 the new touch), (A,) each
    traded_at: jax.Array  # (A,) base units executed at the given level
    through: jax.Array  # (A,) bool: executed at a worse price than the given level
    avg_ticks: jax.Array  # (A,) volume-weighted ticks behind the old touch of the executions


class BookInfo(NamedTuple):
    bid_fill: jax.Array  # (A,) base units filled on our bid
    ask_fill: jax.Array  # (A,) base units filled on our ask
    bid_ahead: jax.Array  # (A,) queue ahead of our bid afterwards (base units)
    ask_ahead: jax.Array  # (A,)
    sniped_sell: jax.Array  # (A,) base units of our bid taken by repricing (public sells)
    sniped_buy: jax.Array  # (A,) base units of our ask taken by repricing (public buys)
    vwap_ticks_sell: jax.Array  # (A,) sells' average execution, ticks below the start's best bid
    vwap_ticks_buy: jax.Array  # (A,) buys' average execution, ticks above the start's best ask
    n_reprice: jax.Array  # (A,) levels cleared by repricing in the step


def _f(x, a, dtype):
    return jnp.broadcast_to(jnp.asarray(x, dtype), (a,))


def init(params: BookParams, latent_mid: jax.Array, tick: jax.Array, dtype=jnp.float32) -> BookState:
    """A one-tick book around ``latent_mid`` ((A,) quote currency) with every queue at its mean."""
    a = latent_mid.shape[0]
    bid = jnp.floor(latent_mid / tick).astype(jnp.int32)
    q = (_f(params.depth_touch, a, dtype),) + tuple(_f(params.depth_level, a, dtype) for _ in range(params.levels - 1))
    return BookState(bid=bid, ask=bid + 1, q_bid=q, q_ask=q)


def prices(state: BookState, tick: jax.Array, dtype) -> tuple[jax.Array, jax.Array]:
    """(best bid, best ask), quote currency."""
    t = tick.astype(dtype)
    return state.bid.astype(dtype) * t, state.ask.astype(dtype) * t


def mid(state: BookState, tick: jax.Array, dtype) -> jax.Array:
    """(best bid + best ask) / 2, quote currency: the tick sum (an exact integer) times half a
    tick, one rounding, the same in every compiled program."""
    return (state.bid + state.ask).astype(dtype) * (0.5 * tick.astype(dtype))


def _pick(x: tuple, j: jax.Array) -> jax.Array:
    """``x[j]`` of levels ``x`` (a tuple of (A,) arrays) at ``j`` ((A,) int in [0, L)), by selects."""
    out = x[-1]
    for i in range(len(x) - 2, -1, -1):
        out = jnp.where(j == i, x[i], out)
    return out


def _shift(q: tuple, k: jax.Array, back: jax.Array, front: jax.Array) -> tuple:
    """Levels ``q`` (a tuple of L (A,) arrays) with the touch moved ``k`` ((A,) int) levels away
    from the spread (``k > 0``: the first ``k`` levels are gone, new far levels hold ``back``) or
    towards it (``k < 0``: ``-k`` new levels holding ``front`` in front). Composed of static
    shifts by powers of two, each taken where its bit of ``|k|`` is set."""
    lv = len(q)
    kk = jnp.clip(k, -lv, lv)
    away, towards = jnp.maximum(kk, 0), jnp.maximum(-kk, 0)
    back = back.astype(q[0].dtype)
    front = front.astype(q[0].dtype)
    out = tuple(q)
    b = 1
    while b <= lv:
        on = (away & b) != 0
        out = tuple(jnp.where(on, out[j + b] if j + b < lv else back, out[j]) for j in range(lv))
        b *= 2
    b = 1
    while b <= lv:
        on = (towards & b) != 0
        out = tuple(jnp.where(on, out[j - b] if j - b >= 0 else front, out[j]) for j in range(lv))
        b *= 2
    return out


def walk(q: tuple, volume: jax.Array, beyond: jax.Array, level: jax.Array, ours: jax.Array | float = 0.0) -> Walk:
    """Market orders of ``volume`` base units ((A,)) walk the levels ``q`` (a tuple of L (A,)
    arrays, the touch first) from the touch; past the held levels every level holds ``beyond``
    base units. ``level`` ((A,) int, >= 0): the level (ticks behind the touch) whose executions
    are reported, where an order of ours of ``ours`` base units rests besides the public queue: it
    is counted in that level's executions (what reaches it fills it before the walk goes on) but
    not in the public book the walk leaves."""
    lv = len(q)
    dtype = q[0].dtype
    cum, c = [], jnp.zeros_like(volume)
    for x in q:
        c = c + x
        cum.append(c)
    total = cum[-1]
    k_in = sum((volume >= c).astype(jnp.int32) for c in cum)
    rem = jnp.maximum(volume - total, 0.0)
    extra = jnp.floor(rem / beyond)
    moved = jnp.where(k_in >= lv, lv + extra.astype(jnp.int32), k_in)
    left_in = _pick(cum, jnp.clip(k_in, 0, lv - 1)) - volume
    left = jnp.where(k_in >= lv, beyond - (rem - extra * beyond), left_in)
    queues = _shift(q, moved, beyond, beyond)
    queues = (left.astype(dtype),) + queues[1:]
    # Executions at ``level`` and whether the walk went past it.
    j = jnp.clip(level, 0, lv - 1)
    cum_j = _pick(cum, j)
    q_j = _pick(q, j)
    held = level < lv
    far = (level - lv).astype(dtype)  # levels past the held ones
    start = jnp.where(held, cum_j - q_j, total + far * beyond)
    depth = jnp.where(held, q_j, beyond)
    traded_at = jnp.clip(volume - start, 0.0, depth + ours)
    through = volume > start + depth + ours
    # Volume-weighted ticks behind the touch: held levels, full levels beyond, the last part.
    s_held = sum(float(i) * jnp.clip(volume - (cum[i] - q[i]), 0.0, q[i]) for i in range(1, lv))
    part = rem - extra * beyond
    s_far = beyond * (lv * extra + extra * (extra - 1.0) / 2.0) + part * (lv + extra)
    avg = (s_held + s_far) / jnp.where(volume > 0, volume, 1.0)
    return Walk(moved=moved, queues=queues, traded_at=traded_at, through=through, avg_ticks=avg)


def _relax(key: jax.Array, q: tuple, params: BookParams, dt: float, a: int) -> tuple[tuple, jax.Array]:
    """Levels after ``dt`` seconds of arrivals and cancellations; returns ``(levels, kept)`` with
    ``kept = exp(-refill_rate dt)`` the fraction of resting units that did not cancel. The touch
    draws the immigration-death process's exact conditional mean and variance (a normal, clipped
    at 0); the levels behind follow their conditional mean."""
    dtype = q[0].dtype
    kept = jnp.exp(-_f(params.refill_rate, a, dtype) * dt)
    t0 = _f(params.depth_touch, a, dtype)
    tl = _f(params.depth_level, a, dtype)
    z = dist.std_normal(rng.uniform(key, (a,), dtype))
    var0 = _f(params.lot, a, dtype) * (q[0] * kept * (1.0 - kept) + t0 * (1.0 - kept))
    touch = jnp.maximum(q[0] * kept + t0 * (1.0 - kept) + jnp.sqrt(jnp.maximum(var0, 0.0)) * z, 0.0)
    return (touch,) + tuple(x * kept + tl * (1.0 - kept) for x in q[1:]), kept


def step(
    key: jax.Array,
    state: BookState,
    params: BookParams,
    dt: float,
    *,
    latent_mid: jax.Array,
    sell_volume: jax.Array,
    buy_volume: jax.Array,
    tick: jax.Array,
    quote,
    resting_price: jax.Array,
    resting_ahead: jax.Array,
) -> tuple[BookState, BookInfo, jax.Array, jax.Array]:
    """One step of ``dt`` seconds of the book of one path.

    Args:
        key: :mod:`mmsim.rng` key.
        latent_mid: (A,) efficient price at the end of the step, quote currency.
        sell_volume, buy_volume: (A,) aggressive volume of the step (market orders and forced
            liquidations), base units, hitting the bids and the asks.
        tick: (A,) price tick, quote currency.
        quote: our resting :class:`mmsim.observation.Quote` (prices on the tick grid).
        resting_price, resting_ahead: (A, 2) price of our resting bid [0] / ask [1] before the
            step (0: none) and the base units ahead of each.

    Returns ``(state, info, resting_price, resting_ahead)``: the book after the step, what
    happened to our quote, and our resting orders afterwards.
    """
    dtype = state.q_bid[0].dtype
    a = state.bid.shape[0]
    k_q, k_pull, k_gap = (rng.fold_in(key, i) for i in (1, 2, 3))
    tick = tick.astype(dtype)
    beyond = _f(params.depth_level, a, dtype)

    # Our order's level at the start, in ticks behind each touch (< 0: inside the spread).
    bp = quote.bid_price.astype(dtype)
    ap = quote.ask_price.astype(dtype)
    b_level0 = (state.bid - jnp.round(bp / tick).astype(jnp.int32)).astype(jnp.int32)
    a_level0 = (jnp.round(ap / tick).astype(jnp.int32) - state.ask).astype(jnp.int32)
    b_same = quote.bid_active & (resting_price[:, 0] == bp)
    a_same = quote.ask_active & (resting_price[:, 1] == ap)
    q_bid0, q_ask0 = state.q_bid, state.q_ask

    # 1. Arrivals and cancellations over the first half of the step (the second half ends it: the
    # queues' law over dt is exact either way, and the split keeps the events in the middle).
    kb, ka, kb2, ka2 = (rng.fold_in(k_q, i) for i in range(4))
    q_bid, _ = _relax(kb, q_bid0, params, 0.5 * dt, a)
    q_ask, _ = _relax(ka, q_ask0, params, 0.5 * dt, a)
    # The queue ahead of ours keeps what does not cancel over each half step.
    share = _f(params.cancel_ahead_share, a, dtype)
    kept = jnp.exp(-share * _f(params.refill_rate, a, dtype) * (0.5 * dt))

    # 2. Repricing: levels the efficient price has left behind by more than the band.
    x = latent_mid.astype(dtype) / tick  # efficient price, ticks
    band = _f(params.pull_band, a, dtype)
    excess_b = state.bid.astype(dtype) - x - band  # ticks beyond the band (> 0: stale bids)
    excess_a = x - state.ask.astype(dtype) - band
    stale_b = jnp.maximum(jnp.ceil(excess_b), 0.0).astype(jnp.int32)
    stale_a = jnp.maximum(jnp.ceil(excess_a), 0.0).astype(jnp.int32)
    excess = jnp.maximum(excess_b, excess_a)
    rate = jnp.where(excess > 0, _f(params.pull_rate, a, dtype) + _f(params.pull_rate_per_tick, a, dtype) * excess, 0.0)
    u_pull = rng.uniform(k_pull, (a,), dtype)
    event = u_pull < -jnp.expm1(-rate * dt)
    clr_b = jnp.where(event, stale_b, 0)
    clr_a = jnp.where(event, stale_a, 0)
    bid1 = state.bid - clr_b
    ask1 = state.ask + clr_a
    q_bid = _shift(q_bid, clr_b, beyond, beyond)
    q_ask = _shift(q_ask, clr_a, beyond, beyond)
    # Our order is stale on the same rule (inside the spread too): ``level < touch - x - band``.
    our_b_stale = quote.bid_active & event & (b_level0.astype(dtype) < state.bid.astype(dtype) - x - band)
    our_a_stale = quote.ask_active & event & (a_level0.astype(dtype) < x - state.ask.astype(dtype) - band)

    # 3. Market orders walk the book. An order of ours inside the spread is hit first.
    b_level1 = b_level0 - clr_b
    a_level1 = a_level0 - clr_a
    bsize = jnp.where(quote.bid_active & ~our_b_stale, quote.bid_size.astype(dtype), 0.0)
    asize = jnp.where(quote.ask_active & ~our_a_stale, quote.ask_size.astype(dtype), 0.0)
    b_inside_fill = jnp.where(b_level1 < 0, jnp.minimum(sell_volume, bsize), 0.0)
    a_inside_fill = jnp.where(a_level1 < 0, jnp.minimum(buy_volume, asize), 0.0)
    wb = walk(q_bid, sell_volume - b_inside_fill, beyond, jnp.maximum(b_level1, 0), bsize)
    wa = walk(q_ask, buy_volume - a_inside_fill, beyond, jnp.maximum(a_level1, 0), asize)

    def ours(level0, level1, same, prev, q0, q1, size, active, stale, inside_fill, w):
        ahead = exchange.queue_on_arrival(prev, same, jnp.where(level0 < 0, 0.0, _level_qty(q0, level0, beyond)), jnp)
        ahead = exchange.after_cancels(ahead, kept)
        if params.queue_bound == "level":  # what the level holds after the half step bounds what is ahead
            ahead = exchange.within_level(ahead, _level_qty(q1, jnp.maximum(level1, 0), beyond), jnp)
        live = jnp.where(active, size.astype(dtype), 0.0)
        sniped = jnp.where(stale, live, 0.0)
        in_book = (level1 >= 0) & ~stale
        f_w, ahead_w = exchange.fill(jnp.where(in_book, live, 0.0), ahead, w.traded_at, w.through, jnp)
        filled = sniped + inside_fill + f_w
        rest = live - filled
        ahead_after = jnp.where(in_book & (f_w == 0), ahead_w, 0.0)
        return filled, sniped, jnp.where(rest > 0, ahead_after, 0.0), rest > 0

    fb, snb, ahead_b, rest_b = ours(
        b_level0, b_level1, b_same, resting_ahead[:, 0], q_bid0, q_bid, quote.bid_size, quote.bid_active,
        our_b_stale, b_inside_fill, wb,
    )  # fmt: skip
    fa, sna, ahead_a, rest_a = ours(
        a_level0, a_level1, a_same, resting_ahead[:, 1], q_ask0, q_ask, quote.ask_size, quote.ask_active,
        our_a_stale, a_inside_fill, wa,
    )  # fmt: skip
    bid2 = bid1 - wb.moved
    ask2 = ask1 + wa.moved

    # 4. A spread wider than a tick closes around the efficient price.
    wide = (ask2 - bid2) > 1
    u_gap = rng.uniform(k_gap, (a,), dtype)
    close = wide & (u_gap < -jnp.expm1(-_f(params.gap_rate, a, dtype) * dt))
    target = jnp.clip(jnp.floor(x).astype(jnp.int32), bid2, ask2 - 1)
    new_b = jnp.where(close, target - bid2, 0)
    new_a = jnp.where(close, ask2 - (target + 1), 0)
    fresh = _f(params.new_level_depth, a, dtype)
    q_bid, _ = _relax(kb2, _shift(wb.queues, -new_b, beyond, fresh), params, 0.5 * dt, a)
    q_ask, _ = _relax(ka2, _shift(wa.queues, -new_a, beyond, fresh), params, 0.5 * dt, a)
    ahead_b, ahead_a = exchange.after_cancels(ahead_b, kept), exchange.after_cancels(ahead_a, kept)
    new = BookState(bid=bid2 + new_b, ask=ask2 - new_a, q_bid=q_bid, q_ask=q_ask)

    r_price = jnp.stack(
        [jnp.where(rest_b & quote.bid_active, bp, 0.0), jnp.where(rest_a & quote.ask_active, ap, 0.0)], -1
    )
    r_ahead = jnp.stack([ahead_b, ahead_a], -1)
    info = BookInfo(
        bid_fill=fb,
        ask_fill=fa,
        bid_ahead=ahead_b,
        ask_ahead=ahead_a,
        sniped_sell=snb,
        sniped_buy=sna,
        vwap_ticks_sell=wb.avg_ticks + clr_b.astype(dtype),
        vwap_ticks_buy=wa.avg_ticks + clr_a.astype(dtype),
        n_reprice=(clr_b + clr_a).astype(dtype),
    )
    return new, info, r_price.astype(dtype), r_ahead.astype(dtype)


def _level_qty(q: tuple, level: jax.Array, beyond: jax.Array) -> jax.Array:
    """Base units resting ``level`` ((A,) int >= 0) ticks behind the touch of levels ``q``."""
    return jnp.where(level < len(q), _pick(q, jnp.clip(level, 0, len(q) - 1)), beyond)
