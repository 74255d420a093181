"""The two messages between a world and the engine: the :class:`Observation` a world (simulated,
recorded or live) sends the engine, and the :class:`Quote` the engine sends back.

The simulator fills an :class:`Observation` from the world; the live adapter fills it from
exchange messages. Nothing in it is simulation-only: every field is something an exchange feed
or our own order gateway reports. Shapes are fixed (leading asset axis ``(A,)``) so the engine
step compiles once; each part has a validity mask, and a part that is not valid is ignored by
the estimators (for instance a feed event that carries only trades leaves the book untouched).

Units: time in seconds; prices in quote currency per base unit; sizes and volumes in base units;
funding rates per settlement interval (a fraction, e.g. 1e-4 = 0.01 %).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Observation(NamedTuple):
    t: jax.Array  # () seconds since the start of the run (or session)
    dt: jax.Array  # () seconds since the previous observation (> 0)
    # Top of book.
    best_bid: jax.Array  # (A,) price
    best_ask: jax.Array  # (A,) price
    bid_size: jax.Array  # (A,) base units resting at the best bid
    ask_size: jax.Array  # (A,) base units resting at the best ask
    mid: jax.Array  # (A,) (best_bid + best_ask) / 2
    # Public trades since the previous observation, by aggressor side.
    n_buy: jax.Array  # (A,) count of aggressive buys
    n_sell: jax.Array  # (A,) count of aggressive sells
    vol_buy: jax.Array  # (A,) base units bought by aggressors
    vol_sell: jax.Array  # (A,) base units sold by aggressors
    vwap_buy: jax.Array  # (A,) price (0 where vol_buy == 0)
    vwap_sell: jax.Array  # (A,) price (0 where vol_sell == 0)
    last_price: jax.Array  # (A,) price of the last trade (mid where none)
    # Forced liquidations since the previous observation (public liquidation stream).
    liq_long: jax.Array  # (A,) base units of LONG positions liquidated (forced sells)
    liq_short: jax.Array  # (A,) base units of SHORT positions liquidated (forced buys)
    # Funding.
    funding_rate: jax.Array  # (A,) current (predicted) rate of this venue, per interval
    funding_ref: jax.Array  # (A,) the same on a reference venue, per interval
    funding_settled: jax.Array  # (A,) bool: a settlement happened since the previous observation
    settled_rate: jax.Array  # (A,) the rate applied at that settlement (0 where none)
    next_funding_s: jax.Array  # (A,) seconds to the next settlement
    # Our own fills since the previous observation (from the order gateway).
    fill_bid_size: jax.Array  # (A,) base units bought on our bid
    fill_bid_price: jax.Array  # (A,) average price of those buys (0 where none)
    fill_ask_size: jax.Array  # (A,) base units sold on our ask
    fill_ask_price: jax.Array  # (A,) average price of those sells (0 where none)
    # Our taker orders' executions since the previous observation; None where we send none (static:
    # a post-only policy's observations have no such fields).
    fill_take_size: jax.Array | None  # (A,) base units, > 0 bought, < 0 sold
    fill_take_price: jax.Array | None  # (A,) average price (0 where none)
    # Validity masks.
    book_valid: jax.Array  # (A,) bool
    trades_valid: jax.Array  # (A,) bool
    liq_valid: jax.Array  # (A,) bool
    funding_valid: jax.Array  # (A,) bool
    fills_valid: jax.Array  # (A,) bool


def empty(n_assets: int, dtype=jnp.float32, *, takes: bool = False) -> Observation:
    """An all-invalid observation at t = 0 (a template for the live adapter and for tests);
    ``takes``: with (zero) taker-fill fields, for a policy that sends taker orders."""
    z = jnp.zeros((n_assets,), dtype)
    f = jnp.zeros((n_assets,), bool)
    scalar = jnp.zeros((), dtype)
    return Observation(
        t=scalar,
        dt=jnp.ones((), dtype),
        best_bid=z,
        best_ask=z,
        bid_size=z,
        ask_size=z,
        mid=z,
        n_buy=z,
        n_sell=z,
        vol_buy=z,
        vol_sell=z,
        vwap_buy=z,
        vwap_sell=z,
        last_price=z,
        liq_long=z,
        liq_short=z,
        funding_rate=z,
        funding_ref=z,
        funding_settled=f,
        settled_rate=z,
        next_funding_s=z,
        fill_bid_size=z,
        fill_bid_price=z,
        fill_ask_size=z,
        fill_ask_price=z,
        fill_take_size=z if takes else None,
        fill_take_price=z if takes else None,
        book_valid=f,
        trades_valid=f,
        liq_valid=f,
        funding_valid=f,
        fills_valid=f,
    )


class Quote(NamedTuple):
    """What the engine sends to a world (or an order gateway): one resting quote per asset and side,
    and optionally a taker order."""

    bid_price: jax.Array  # (A,) quote currency
    ask_price: jax.Array  # (A,)
    bid_size: jax.Array  # (A,) base units
    ask_size: jax.Array  # (A,)
    bid_active: jax.Array  # (A,) bool
    ask_active: jax.Array  # (A,) bool
    # (A,) base units to trade at once against the book (a taker order: > 0 buys, < 0 sells), or
    # None for a post-only policy (static: a policy takes only when it flattens before events).
    take: jax.Array | None = None


def no_quote(n_assets: int, dtype=jnp.float32, *, take: bool = False) -> Quote:
    """No order; ``take``: with a zero taker order (the structure of a policy that sends taker orders,
    :func:`mmsim.engine.policy.takes`)."""
    z = jnp.zeros((n_assets,), dtype)
    f = jnp.zeros((n_assets,), bool)
    return Quote(z, z, z, z, f, f, z if take else None)


#: Fields that count what happened over an interval: summed when consecutive observations merge.
SUMMED = (
    "dt",
    "n_buy",
    "n_sell",
    "vol_buy",
    "vol_sell",
    "liq_long",
    "liq_short",
    "settled_rate",
    "fill_bid_size",
    "fill_ask_size",
    "fill_take_size",
)
#: Average prices and the sizes that weight them when consecutive observations merge.
WEIGHTED = {
    "vwap_buy": "vol_buy",
    "vwap_sell": "vol_sell",
    "fill_bid_price": "fill_bid_size",
    "fill_ask_price": "fill_ask_size",
    "fill_take_price": "fill_take_size",
}


def merge(stacked: Observation, axis: int = 0) -> Observation:
    """Consecutive observations stacked on ``axis`` as the one observation of their whole interval:
    counts, volumes, fills, ``dt`` and settled funding summed; average prices weighted by their
    sizes (0 where nothing traded); a settlement flagged if any; every other field (the book, the
    last trade, rates, masks) the last observation's."""
    out = {}
    for name, x in stacked._asdict().items():
        if x is None:
            out[name] = None
        elif name in SUMMED:
            out[name] = jnp.sum(x, axis=axis)
        elif name == "funding_settled":
            out[name] = jnp.any(x, axis=axis)
        else:
            out[name] = jnp.take(x, -1, axis=axis)
    for name, size in WEIGHTED.items():
        p, w = getattr(stacked, name), getattr(stacked, size)
        if p is None:
            continue
        w = jnp.abs(w)
        tot = jnp.sum(w, axis=axis)
        out[name] = jnp.where(tot > 0, jnp.sum(w * p, axis=axis) / jnp.where(tot > 0, tot, 1.0), 0.0).astype(p.dtype)
    return Observation(**out)
