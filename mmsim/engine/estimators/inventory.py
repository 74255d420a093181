"""Inventory estimator: position, average entry, realized PnL and fill rates from our fills (spec Part 3).

Equations, units, the discretisation over a step and the known biases: ``docs/MODEL.md``, section 10.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from mmsim import observation as _obs
from mmsim._pytree import Check, pytree_dataclass
from mmsim.engine.estimators import _ewma


@pytree_dataclass
class InventoryEstParams:
    """Inventory parameters; each field is a scalar or a per-asset ``(A,)`` array.

    Attributes:
        max_position: position limit, base units (> 0); the skew is ``(q - target) / max``.
        target: target position, base units (usually 0).
        fill_rate_half_life_s: half-life of the fill-rate EWMAs, seconds (default: the
            equivalent of the spec's 5-minute window).
    """

    max_position: jax.Array | float = 1.0
    target: jax.Array | float = 0.0
    fill_rate_half_life_s: jax.Array | float = _ewma.window_half_life(300.0)

    def validate(self) -> None:
        c = Check(self)
        c.positive("max_position", "position limit, base units")
        c.finite("target", "target position, base units")
        c.positive("fill_rate_half_life_s", "EWMA half-life, seconds")


class InventoryEst(NamedTuple):
    position: jax.Array  # (A,) base units, long > 0
    avg_entry: jax.Array  # (A,) average entry price of the open position (0 when flat)
    realized_pnl: jax.Array  # (A,) quote currency, cumulative, before fees
    fill_rate_bid: jax.Array  # (A,) base units bought per second (EWMA)
    fill_rate_ask: jax.Array  # (A,) base units sold per second (EWMA)
    n_fills: jax.Array  # (A, 2) int32: observations with a bid [0] / ask [1] fill


def init(params: InventoryEstParams, n_assets: int, dtype=jnp.float32) -> InventoryEst:
    """Flat, no PnL, no fills."""
    z = jnp.zeros((n_assets,), dtype)
    return InventoryEst(
        position=z,
        avg_entry=z,
        realized_pnl=z,
        fill_rate_bid=z,
        fill_rate_ask=z,
        n_fills=jnp.zeros((n_assets, 2), jnp.int32),
    )


def apply_fill(
    position: jax.Array, avg_entry: jax.Array, realized: jax.Array, signed_size: jax.Array, price: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One fill of ``signed_size`` base units (> 0 buy, < 0 sell) at ``price``; returns the new
    ``(position, avg_entry, realized_pnl)`` (see the module docstring). A zero size is a no-op."""
    q, e, d, p = position, avg_entry, signed_size, price
    aq, ad = jnp.abs(q), jnp.abs(d)
    adding = (q == 0.0) | (jnp.sign(q) == jnp.sign(d))
    tot = aq + ad
    e_add = (e * aq + p * ad) / jnp.where(tot > 0.0, tot, 1.0)
    close = jnp.minimum(ad, aq)
    r_red = realized + close * (p - e) * jnp.sign(q)
    q_new = q + d
    e_red = jnp.where(ad > aq, p, jnp.where(ad == aq, 0.0, e))
    e_new = jnp.where(adding, e_add, e_red)
    r_new = jnp.where(adding, realized, r_red)
    has = d != 0.0
    return (jnp.where(has, q_new, q), jnp.where(has, e_new, e), jnp.where(has, r_new, realized))


def _rate_update(old, amount, dt, half_life, valid):
    """EWMA of the rate ``amount / dt`` (per second) with weight ``1 - 2^(-dt / half_life)``,
    computed as ``old (1 - w) + amount (w / dt)`` (``w / dt -> ln 2 / half_life`` as dt -> 0, so a
    zero ``dt`` gives no NaN)."""
    w = _ewma.weight(dt, half_life)
    pos = dt > 0
    w_dt = jnp.where(pos, w / jnp.where(pos, dt, 1.0), math.log(2.0) / half_life)
    return jnp.where(valid, old * (1.0 - w) + amount * w_dt, old)


def update(params: InventoryEstParams, state: InventoryEst, obs: _obs.Observation) -> InventoryEst:
    """Apply the observation's fills (where ``obs.fills_valid``): the buy, then the sell.

    Uses ``fill_bid_size``/``fill_bid_price``, ``fill_ask_size``/``fill_ask_price`` (base units,
    quote currency) and ``dt`` (seconds). Negative sizes are treated as 0; a fill whose price is
    not a positive finite number (bad feed data) is booked at the observation's mid where the book
    is valid, else at the current average entry (no PnL), so the position always follows the fills.
    """
    dtype = state.position.dtype
    cast = lambda x: jnp.asarray(x).astype(dtype)  # noqa: E731
    n_a = state.position.shape[0]
    valid = obs.fills_valid
    dt = jnp.maximum(cast(obs.dt), 0.0)
    mid = cast(obs.mid)
    mid_ok = obs.book_valid & (mid > 0.0) & jnp.isfinite(mid)

    def size(x):
        x = cast(x)
        return jnp.where(valid & jnp.isfinite(x), jnp.maximum(x, 0.0), 0.0)

    def price(x, entry):
        x = cast(x)
        return jnp.where(jnp.isfinite(x) & (x > 0.0), x, jnp.where(mid_ok, mid, entry))

    sb, sa = size(obs.fill_bid_size), size(obs.fill_ask_size)
    q, e, r = apply_fill(
        state.position, state.avg_entry, state.realized_pnl, sb, price(obs.fill_bid_price, state.avg_entry)
    )
    q, e, r = apply_fill(q, e, r, -sa, price(obs.fill_ask_price, e))
    hl = cast(params.fill_rate_half_life_s)
    fb = _rate_update(state.fill_rate_bid, sb, dt, hl, valid)
    fa = _rate_update(state.fill_rate_ask, sa, dt, hl, valid)
    n = state.n_fills + jnp.stack([sb > 0.0, sa > 0.0], axis=-1).astype(jnp.int32)
    b = lambda x: jnp.broadcast_to(x, (n_a,)).astype(dtype)  # noqa: E731
    return InventoryEst(
        position=b(q), avg_entry=b(e), realized_pnl=b(r), fill_rate_bid=b(fb), fill_rate_ask=b(fa), n_fills=n
    )


def unrealized_pnl(state: InventoryEst, mid: jax.Array) -> jax.Array:
    """(A,) PnL of the open position marked at ``mid``, quote currency: ``q (mid - avg_entry)``."""
    return state.position * (jnp.asarray(mid).astype(state.position.dtype) - state.avg_entry)


def inventory_skew(params: InventoryEstParams, state: InventoryEst) -> jax.Array:
    """(A,) ``clip((q - target) / max_position, -1, 1)``: positive = long, want to sell."""
    dtype = state.position.dtype
    t = jnp.asarray(params.target).astype(dtype)
    m = jnp.asarray(params.max_position).astype(dtype)
    return jnp.clip((state.position - t) / m, -1.0, 1.0)


def inventory_risk(state: InventoryEst, mid: jax.Array, sigma: jax.Array, horizon_s: jax.Array | float) -> jax.Array:
    """(A,) one-sigma move of the position's value over ``horizon_s`` seconds, quote currency:
    ``|q| mid sigma sqrt(h)`` with ``sigma`` the volatility of the log mid per sqrt(second).

    Fix of the spec, which multiplies by the entry price (defaulting to 1.0 when unknown): the
    value at risk moves with the current mid, not with what was paid.
    """
    dtype = state.position.dtype
    c = lambda x: jnp.asarray(x).astype(dtype)  # noqa: E731
    return jnp.abs(state.position) * c(mid) * c(sigma) * jnp.sqrt(jnp.maximum(c(horizon_s), 0.0))
