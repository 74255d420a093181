"""Queue-position estimator: base units resting ahead of our quotes, and fill probability (spec Part 7).

Equations, units, the discretisation over a step and the known biases: ``docs/MODEL.md``, section 8.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import ndtr

from mmsim import observation as _obs
from mmsim._pytree import Check, pytree_dataclass


@pytree_dataclass
class QueueEstParams:
    """Queue estimator parameters; each field is a scalar or a per-asset ``(A,)`` array.

    Attributes:
        cancel_rate: fraction of the queue ahead that cancels per second (>= 0).
        depth_per_tick: base units resting per tick of distance beyond the touch.
        tick: price tick, quote currency (> 0).
        fill_horizon_s: default horizon of :func:`fill_probability`, seconds.
    """

    cancel_rate: jax.Array | float = 0.05
    depth_per_tick: jax.Array | float = 1.0
    tick: jax.Array | float = 0.1
    fill_horizon_s: jax.Array | float = 1.0

    def validate(self) -> None:
        c = Check(self)
        c.nonneg("cancel_rate", "fraction of the queue ahead cancelling per second")
        c.nonneg("depth_per_tick", "base units resting per tick beyond the touch")
        c.positive("tick", "price tick, quote currency")
        c.positive("fill_horizon_s", "fill-probability horizon, seconds")


class QueueEst(NamedTuple):
    queue_ahead: jax.Array  # (A, 2) base units ahead of our bid [0] and ask [1]
    quote_price: jax.Array  # (A, 2) price of our resting quote, quote currency (0 = none)


def init(params: QueueEstParams, n_assets: int, dtype=jnp.float32) -> QueueEst:
    """No resting quotes."""
    z = jnp.zeros((n_assets, 2), dtype)
    return QueueEst(queue_ahead=z, quote_price=z)


def join_queue(
    params: QueueEstParams, obs: _obs.Observation, quote_bid: jax.Array, quote_ask: jax.Array, dtype=jnp.float32
) -> jax.Array:
    """(A, 2) base units ahead of new quotes at ``quote_bid``/``quote_ask`` given the book of
    ``obs`` (see the module docstring)."""
    cast = lambda x: jnp.asarray(x).astype(dtype)  # noqa: E731
    tick = cast(params.tick)
    dpt = cast(params.depth_per_tick)
    behind_b = jnp.round((cast(obs.best_bid) - cast(quote_bid)) / tick)  # ticks behind the best bid
    behind_a = jnp.round((cast(quote_ask) - cast(obs.best_ask)) / tick)  # ticks behind the best ask

    def one(behind, size):
        q = jnp.where(behind < 0.0, 0.0, jnp.maximum(cast(size), 0.0) + dpt * jnp.maximum(behind, 0.0))
        return jnp.where(obs.book_valid, q, dpt)

    q = jnp.stack([one(behind_b, obs.bid_size), one(behind_a, obs.ask_size)], axis=-1)
    return jnp.where(jnp.isfinite(q), q, dpt).astype(dtype)


def update(
    params: QueueEstParams,
    state: QueueEst,
    obs: _obs.Observation,
    quote_bid: jax.Array,
    quote_ask: jax.Array,
    active: jax.Array,
) -> QueueEst:
    """Age the resting quotes with the observation, then join the queue for new or moved quotes.

    Args:
        obs: uses ``dt``, the top of book (where ``book_valid``), ``vol_buy``/``vol_sell`` (where
            ``trades_valid``) and ``fill_bid_size``/``fill_ask_size`` (where ``fills_valid``).
        quote_bid, quote_ask: (A,) prices of our quotes from now on, quote currency.
        active: (A, 2) bool, the bid [0] / ask [1] quote is live.

    Returns:
        The state for the quotes now resting; an inactive side has price 0 and queue 0.
    """
    dtype = state.queue_ahead.dtype
    cast = lambda x: jnp.asarray(x).astype(dtype)  # noqa: E731
    n_a = state.queue_ahead.shape[0]
    dt = jnp.maximum(cast(obs.dt), 0.0)
    half = 0.5 * cast(params.tick)
    old_p = state.quote_price
    # Trades at our level during the observation's interval (against the quote that rested).
    at_touch_b = obs.book_valid & (old_p[:, 0] >= cast(obs.best_bid) - half)
    at_touch_a = obs.book_valid & (old_p[:, 1] <= cast(obs.best_ask) + half)
    vol_s = jnp.where(obs.trades_valid, jnp.maximum(cast(obs.vol_sell), 0.0), 0.0)
    vol_b = jnp.where(obs.trades_valid, jnp.maximum(cast(obs.vol_buy), 0.0), 0.0)
    traded = jnp.stack([jnp.where(at_touch_b, vol_s, 0.0), jnp.where(at_touch_a, vol_b, 0.0)], axis=-1)
    decay = jnp.broadcast_to(jnp.exp(-cast(params.cancel_rate) * dt), (n_a,))[:, None]
    aged = jnp.maximum(state.queue_ahead - traded, 0.0) * decay
    filled = obs.fills_valid[:, None] & (jnp.stack([cast(obs.fill_bid_size), cast(obs.fill_ask_size)], axis=-1) > 0.0)
    aged = jnp.where(filled, 0.0, aged)

    new_p = jnp.stack([jnp.broadcast_to(cast(quote_bid), (n_a,)), jnp.broadcast_to(cast(quote_ask), (n_a,))], axis=-1)
    act = jnp.broadcast_to(active, (n_a, 2)) & (new_p > 0.0) & jnp.isfinite(new_p)
    same = act & (old_p > 0.0) & (jnp.abs(new_p - old_p) < jnp.broadcast_to(half, (n_a,))[:, None])
    joined = join_queue(params, obs, quote_bid, quote_ask, dtype)
    q = jnp.where(act, jnp.where(same, aged, joined), 0.0)
    p = jnp.where(act, new_p, 0.0)
    return QueueEst(queue_ahead=q.astype(dtype), quote_price=p.astype(dtype))


def fill_probability(
    params: QueueEstParams,
    state: QueueEst,
    mid: jax.Array,
    sigma: jax.Array,
    horizon_s: jax.Array | float | None,
    expected_volume: jax.Array,
) -> jax.Array:
    """(A, 2) probability that our bid [0] / ask [1] fills within ``horizon_s`` seconds.

    ``P(touch) * P(execute | touch)`` with ``P(touch) = min(1, 2 Phi(-delta / (sigma sqrt h)))``,
    ``delta`` the distance the mid must travel to reach our quote as a fraction of the mid
    (``max(mid - bid, 0) / mid``, ``max(ask - mid, 0) / mid``: the spec's ``|mid - quote|``, made
    one-sided so that a quote at or through the mid touches surely) and ``P(execute | touch) =
    exp(-queue_ahead / expected_volume)``.

    Args:
        mid: (A,) mid price, quote currency.
        sigma: (A,) volatility of the log mid, per sqrt(second).
        horizon_s: horizon, seconds; None uses ``params.fill_horizon_s``.
        expected_volume: (A, 2) base units expected to trade at our bid [0] / ask [1] level over
            the horizon (e.g. expected sells x mean size for the bid).

    Returns 0 for a side without a quote; a zero expected volume gives P(execute) = 1 for an empty
    queue and 0 otherwise; a zero ``sigma`` gives P(touch) = 1 at the mid and 0 away from it.
    """
    dtype = state.queue_ahead.dtype
    cast = lambda x: jnp.asarray(x).astype(dtype)  # noqa: E731
    n_a = state.queue_ahead.shape[0]
    h = cast(params.fill_horizon_s if horizon_s is None else horizon_s)
    mid = jnp.broadcast_to(cast(mid), (n_a,))
    scale = jnp.broadcast_to(jnp.maximum(cast(sigma), 0.0) * jnp.sqrt(jnp.maximum(h, 0.0)), (n_a,))
    has = state.quote_price > 0.0
    safe_mid = jnp.where(mid > 0.0, mid, 1.0)[:, None]
    side = jnp.asarray([1.0, -1.0], dtype)  # the bid waits for a fall, the ask for a rise
    delta = jnp.maximum(side * (safe_mid - state.quote_price), 0.0) / safe_mid
    delta = jnp.where(has, delta, 0.0)
    tiny = jnp.finfo(dtype).tiny
    x = delta / jnp.maximum(scale, tiny)[:, None]
    p_touch = jnp.minimum(1.0, 2.0 * ndtr(-x))
    ev = cast(expected_volume)
    q = state.queue_ahead
    p_exec = jnp.where(ev > 0.0, jnp.exp(-q / jnp.where(ev > 0.0, ev, 1.0)), jnp.where(q <= 0.0, 1.0, 0.0))
    p = jnp.where(has & (mid > 0.0)[:, None], p_touch * p_exec, 0.0)
    return jnp.where(jnp.isfinite(p), p, 0.0).astype(dtype)
