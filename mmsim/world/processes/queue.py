"""Fills (world side): our resting quotes resolved against one step of the world's order flow.

Equations, units, the discretisation over a step and the known biases: ``docs/MODEL.md``, section 8.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from mmsim import distributions as dist
from mmsim import rng
from mmsim._pytree import Check, pytree_dataclass, static_field
from mmsim.observation import Quote

MODELS = ("poisson_exp", "queue")


@pytree_dataclass
class FillParams:
    """Attributes:
    A: poisson_exp fill intensity at zero distance, per second.
    k: poisson_exp decay per unit of price distance, 1 / quote currency.
    touch_depth: queue model: base units resting at the best bid/ask ((A,) or scalar).
    depth_per_tick: queue model: base units resting at each level behind the touch.
    cancel_rate: queue model: fraction of the queue ahead that cancels, per second.
    model: "poisson_exp" or "queue" (static).
    """

    A: jax.Array | float = 140.0
    k: jax.Array | float = 1.5
    touch_depth: jax.Array | float = 2.0
    depth_per_tick: jax.Array | float = 0.5
    cancel_rate: jax.Array | float = 0.05
    model: str = static_field(default="queue")

    def validate(self) -> None:
        c = Check(self)
        c.require(self.model in MODELS, "model", f"must be one of {MODELS}")
        c.nonneg("A", "fill intensity per second")
        c.positive("k", "decay per unit of price")
        c.nonneg("touch_depth", "base units")
        c.nonneg("depth_per_tick", "base units per tick")
        c.nonneg("cancel_rate", "fraction per second")


class FillState(NamedTuple):
    queue: jax.Array  # (A, 2) base units ahead of our bid [0] and ask [1]
    price: jax.Array  # (A, 2) price of the resting quote we are queued with (0: none)


class Fills(NamedTuple):
    bid_size: jax.Array  # (A,) base units bought
    bid_price: jax.Array  # (A,) price (0 where none)
    ask_size: jax.Array  # (A,)
    ask_price: jax.Array  # (A,)


def init(n_assets: int, dtype=jnp.float32) -> FillState:
    z = jnp.zeros((n_assets, 2), dtype)
    return FillState(queue=z, price=z)


def _side(queue, qprice, quote_px, size, active, best, new_opposite, mid_after, volume, tick, params, dt, is_bid):
    """One side of the queue model. Distances are counted in ticks behind the best (>= 0) or inside."""
    sgn = 1.0 if is_bid else -1.0
    # Prices sit on the tick grid, so "at or through" is tested with a quarter tick of slack: an exact
    # tie must not depend on float rounding (a compiler may fuse the book's k * tick into the
    # subtraction, and k * tick rounded differs from it unrounded).
    tie = -0.25 * tick  # grid prices and mids (half ticks) differ by 0.5 tick or more
    behind = jnp.round(sgn * (best - quote_px) / tick)  # ticks behind the touch (< 0: inside the spread)
    # A quote the mid path reaches during the step is at the touch.
    behind = jnp.where(sgn * (quote_px - mid_after) > tie, jnp.minimum(behind, 0.0), behind)
    at_or_inside = behind <= 0
    joined = (quote_px != qprice) | ~active
    fresh_queue = jnp.where(behind < 0, 0.0, jnp.where(behind == 0, params.touch_depth, params.depth_per_tick))
    q = jnp.where(joined, fresh_queue, queue) * jnp.exp(-params.cancel_rate * dt)
    in_front = jnp.where(at_or_inside, 0.0, params.touch_depth + params.depth_per_tick * (behind - 1.0))
    reach = jnp.maximum(volume - in_front, 0.0)
    filled = jnp.clip(reach - q, 0.0, size)
    crossed = sgn * (quote_px - new_opposite) > tie
    filled = jnp.where(crossed, size, filled)
    filled = jnp.where(active, filled, 0.0)
    q_after = jnp.where(filled > 0, 0.0, jnp.maximum(q - reach, 0.0))
    return filled, q_after, jnp.where(active, quote_px, 0.0)


def take(
    size: jax.Array, best_bid: jax.Array, best_ask: jax.Array, tick: jax.Array, params: FillParams
) -> tuple[jax.Array, jax.Array]:
    """A taker order of ``size`` base units ((A,), > 0 buys at the asks, < 0 sells at the bids) walks
    the book: ``touch_depth`` at the touch, then ``depth_per_tick`` at every tick behind it. With
    ``depth_per_tick`` 0 the book holds the touch only, and what exceeds it is not executed.

    Returns ``(executed, price)``: signed base units and their average price, quote currency (0
    where nothing executed). Units needing ``n`` levels behind the touch pay ``n`` ticks more: for
    ``r = |size| - touch_depth > 0`` spread over ``m = floor(r / depth_per_tick)`` full levels and a
    part of the next, the extra cost is ``tick (depth_per_tick m (m + 1) / 2 + (r - m depth_per_tick) (m + 1))``.
    """
    dtype = best_bid.dtype
    s = jnp.abs(size).astype(dtype)
    d0 = jnp.asarray(params.touch_depth, dtype)
    dpt = jnp.asarray(params.depth_per_tick, dtype)
    deep = dpt > 0
    s = jnp.where(deep, s, jnp.minimum(s, d0))
    r = jnp.maximum(s - d0, 0.0)
    m = jnp.floor(r / jnp.where(deep, dpt, 1.0))
    extra = tick * (dpt * m * (m + 1.0) / 2.0 + (r - m * dpt) * (m + 1.0))
    avg_extra = extra / jnp.where(s > 0, s, 1.0)
    buy = size > 0
    price = jnp.where(buy, best_ask + avg_extra, best_bid - avg_extra)
    executed = jnp.where(buy, s, -s)
    return executed.astype(dtype), jnp.where(s > 0, price, 0.0).astype(dtype)


def resolve(
    key: jax.Array,
    state: FillState,
    params: FillParams,
    quote: Quote,
    dt: float,
    *,
    mid_before: jax.Array,
    best_bid_before: jax.Array,
    best_ask_before: jax.Array,
    best_bid_after: jax.Array,
    best_ask_after: jax.Array,
    mid_after: jax.Array,
    sell_volume: jax.Array,
    buy_volume: jax.Array,
    tick: jax.Array,
) -> tuple[FillState, Fills]:
    """Fill our resting ``quote`` over one step of ``dt`` seconds.

    Args:
        key: :mod:`mmsim.rng` key (used by poisson_exp).
        mid_before, best_bid_before, best_ask_before: (A,) book at the start of the step.
        best_bid_after, best_ask_after, mid_after: (A,) book at the end of the step (crossing tests).
        sell_volume, buy_volume: (A,) aggressive volume of the step, base units (market orders
            plus liquidations), hitting bids and asks respectively.
        tick: (A,) price tick (> 0 for the queue model).
    """
    dtype = state.queue.dtype
    quote = quote._replace(
        bid_price=quote.bid_price.astype(dtype),
        ask_price=quote.ask_price.astype(dtype),
        bid_size=quote.bid_size.astype(dtype),
        ask_size=quote.ask_size.astype(dtype),
    )
    if params.model == "poisson_exp":
        u = rng.uniform(key, (quote.bid_price.shape[0], 2), dtype)
        db = mid_before - quote.bid_price
        da = quote.ask_price - mid_before
        pb = jnp.minimum(1.0, params.A * jnp.exp(-params.k * db) * dt)
        pa = jnp.minimum(1.0, params.A * jnp.exp(-params.k * da) * dt)
        fb = jnp.where(quote.bid_active & (u[:, 0] < pb), quote.bid_size, 0.0)
        fa = jnp.where(quote.ask_active & (u[:, 1] < pa), quote.ask_size, 0.0)
        fb, fa = dist.materialise_small((fb, fa))  # many consumers: computed once
        new = state
    else:
        fb, qb, pxb = _side(
            state.queue[:, 0],
            state.price[:, 0],
            quote.bid_price,
            quote.bid_size,
            quote.bid_active,
            best_bid_before,
            best_ask_after,
            mid_after,
            sell_volume,
            tick,
            params,
            dt,
            True,
        )
        fa, qa, pxa = _side(
            state.queue[:, 1],
            state.price[:, 1],
            quote.ask_price,
            quote.ask_size,
            quote.ask_active,
            best_ask_before,
            best_bid_after,
            mid_after,
            buy_volume,
            tick,
            params,
            dt,
            False,
        )
        new = FillState(queue=jnp.stack([qb, qa], -1).astype(dtype), price=jnp.stack([pxb, pxa], -1).astype(dtype))
    fills = Fills(
        bid_size=fb.astype(dtype),
        bid_price=jnp.where(fb > 0, quote.bid_price, 0.0).astype(dtype),
        ask_size=fa.astype(dtype),
        ask_price=jnp.where(fa > 0, quote.ask_price, 0.0).astype(dtype),
    )
    return new, fills
