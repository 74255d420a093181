"""Fills: the Avellaneda-Stoikov Poisson model's fill probability (Monte Carlo against the closed
form) and the queue model on hand-made steps (queue depletion, partial fills, cancellations,
crossing, re-joining the back of a level).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmsim import rng
from mmsim.observation import Quote
from mmsim.world.processes import queue as fills

F64 = np.float64


def fparams(**kw) -> fills.FillParams:
    p = fills.FillParams(**kw)
    return fills.FillParams(
        **{f: np.asarray(getattr(p, f), F64) for f in ("A", "k", "touch_depth", "depth_per_tick", "cancel_rate")},
        model=p.model,
    )


def vec(x, n):
    return np.broadcast_to(np.asarray(x, F64), (n,))


# --------------------------------------------------------------------------------------------
# poisson_exp


N_KEYS = 40_000
DT = 0.01
MID = 100.0
# Bid and ask distances per asset (quote currency); A = 140 / s, k = 1.5 / unit of price.
D_BID = np.array([0.0, 0.5, 1.0, 3.0])
D_ASK = np.array([0.2, 2.0, 4.0, 0.8])


def test_poisson_exp_fill_frequency_matches_closed_form(seed):
    params = fparams(model="poisson_exp", A=140.0, k=1.5)
    n = D_BID.size
    quote = Quote(
        vec(MID, n) - D_BID,
        vec(MID, n) + D_ASK,
        vec(0.3, n),
        vec(0.7, n),
        np.ones(n, bool),
        np.array([True, True, True, False]),
    )
    book = dict(
        mid_before=vec(MID, n),
        best_bid_before=vec(MID - 0.05, n),
        best_ask_before=vec(MID + 0.05, n),
        best_bid_after=vec(MID - 0.05, n),
        best_ask_after=vec(MID + 0.05, n),
        mid_after=vec(MID, n),
        sell_volume=vec(0.0, n),
        buy_volume=vec(0.0, n),
        tick=vec(0.1, n),
    )
    state = fills.init(n, jnp.float64)

    def one(k):
        return fills.resolve(k, state, params, quote, DT, **book)[1]

    f = jax.jit(jax.vmap(one))(rng.path_keys(rng.key(seed), 0, N_KEYS))
    fb, fa = np.asarray(f.bid_size), np.asarray(f.ask_size)
    # Fills are all-or-nothing, at our prices.
    assert np.all((fb == 0) | (fb == 0.3)) and np.all((fa == 0) | (fa == 0.7))
    np.testing.assert_array_equal(np.asarray(f.bid_price)[fb > 0], np.broadcast_to(quote.bid_price, fb.shape)[fb > 0])
    np.testing.assert_array_equal(np.asarray(f.ask_price)[fa == 0], 0.0)
    # Frequencies within 4 Monte Carlo standard errors of min(1, A e^{-k delta} dt).
    sides = ((np.mean(fb > 0, 0), D_BID, quote.bid_active), (np.mean(fa > 0, 0), D_ASK, quote.ask_active))
    for freq, d, active in sides:
        p = np.where(active, np.minimum(1.0, 140.0 * np.exp(-1.5 * d) * DT), 0.0)
        se = np.sqrt(p * (1 - p) / N_KEYS)
        assert np.all(np.abs(freq - p) <= 4 * se + 1e-12), (freq, p, se)
    assert np.mean(fb[:, 0] > 0) == 1.0  # A dt = 1.4 >= 1: always filled
    assert np.all(fa[:, 3] == 0)  # inactive side never fills


# --------------------------------------------------------------------------------------------
# queue: one asset, tick 0.5, book 99.5 / 100.5 around mid 100.

TICK = 0.5
BOOK = dict(
    mid_before=100.0,
    best_bid_before=99.5,
    best_ask_before=100.5,
    best_bid_after=99.5,
    best_ask_after=100.5,
    mid_after=100.0,
)


@jax.jit
def _resolve(state, params, quote, dt, book, sell, buy):
    return fills.resolve(
        rng.key(0),
        state,
        params,
        quote,
        dt,
        **book,
        sell_volume=sell,
        buy_volume=buy,
        tick=jnp.full((1,), TICK, jnp.float64),
    )


def step(state, params, *, bid=None, ask=None, bid_size=1.0, ask_size=1.0, sell=0.0, buy=0.0, dt=1.0, **book):
    """One queue-model step for a single asset; ``bid``/``ask`` None means that side is not quoted."""
    q = Quote(
        vec(bid or 0.0, 1),
        vec(ask or 0.0, 1),
        vec(bid_size, 1),
        vec(ask_size, 1),
        np.array([bid is not None]),
        np.array([ask is not None]),
    )
    b = {k: vec(v, 1) for k, v in {**BOOK, **book}.items()}
    new, f = _resolve(state, params, q, F64(dt), b, vec(sell, 1), vec(buy, 1))
    return new, {k: float(v[0]) for k, v in f._asdict().items()}


QP = dict(model="queue", touch_depth=2.0, depth_per_tick=0.5, cancel_rate=0.0)


def test_queue_depleted_by_volume_then_partial_then_full_fill():
    p = fparams(**QP)
    s = fills.init(1, jnp.float64)
    # Join the best bid behind the 2 units resting there; 1.5 sold eats 1.5 of the queue ahead.
    s, f = step(s, p, bid=99.5, sell=1.5)
    assert f["bid_size"] == 0.0 and f["bid_price"] == 0.0
    np.testing.assert_allclose(np.asarray(s.queue)[0, 0], 0.5)
    np.testing.assert_allclose(np.asarray(s.price)[0, 0], 99.5)
    # 1.0 more: 0.5 clears the queue, the remaining 0.5 fills half of our 1.0.
    s, f = step(s, p, bid=99.5, sell=1.0)
    assert f["bid_size"] == pytest.approx(0.5, abs=1e-15) and f["bid_price"] == 99.5
    assert float(s.queue[0, 0]) == 0.0
    # First in line now: the next 3.0 fill the whole (re-posted) 1.0.
    s, f = step(s, p, bid=99.5, sell=3.0)
    assert f["bid_size"] == 1.0
    # The same on the ask side with buy volume; sells never touch the ask.
    s2, f = step(fills.init(1, jnp.float64), p, ask=100.5, buy=2.25, sell=10.0)
    assert f["ask_size"] == pytest.approx(0.25, abs=1e-15) and f["ask_price"] == 100.5


def test_cancellations_decay_the_queue_ahead():
    p = fparams(**{**QP, "cancel_rate": 0.1})
    s = fills.init(1, jnp.float64)
    s, _ = step(s, p, bid=99.5, dt=2.0)  # joined: 2 e^{-0.2}
    np.testing.assert_allclose(float(s.queue[0, 0]), 2.0 * np.exp(-0.2), rtol=1e-14)
    s, _ = step(s, p, bid=99.5, dt=2.0)  # 2 e^{-0.4}
    np.testing.assert_allclose(float(s.queue[0, 0]), 2.0 * np.exp(-0.4), rtol=1e-14)
    s, f = step(s, p, bid=99.5, dt=2.0, sell=2.0 * np.exp(-0.6) + 0.3)
    assert f["bid_size"] == pytest.approx(0.3, rel=1e-12)


def test_crossed_quote_fills_in_full():
    p = fparams(**QP)
    s = fills.init(1, jnp.float64)
    # No aggressive flow at all, but the price path moves through our quotes.
    _, f = step(s, p, ask=100.5, ask_size=0.7, best_bid_after=100.5, best_ask_after=101.0, mid_after=100.75)
    assert f["ask_size"] == 0.7 and f["ask_price"] == 100.5
    _, f = step(s, p, bid=99.5, bid_size=0.4, best_bid_after=98.5, best_ask_after=99.5, mid_after=99.0)
    assert f["bid_size"] == 0.4 and f["bid_price"] == 99.5
    # Touched but not crossed (new best ask one tick above our bid): no fill without flow.
    _, f = step(s, p, bid=99.5, best_bid_after=99.0, best_ask_after=100.0, mid_after=99.5)
    assert f["bid_size"] == 0.0


def test_exact_tie_with_the_book_crosses_whatever_the_rounding():
    """A float32 bid exactly at the new best ask, the book computed as ``k * tick`` in the same
    program (where the compiler may fuse the product into the comparison unrounded:
    599950 * 0.1f is 59995.0 rounded, 59995.00089 exact), is a crossed quote and fills in full."""
    p = fparams(**QP)
    f32 = jnp.float32
    ks = jnp.asarray([599950.0, 600001.0, 123457.0], f32)
    tick = f32(0.1)

    @jax.jit
    def run(ks, bid, lo):
        # Only the new best ask comes from k * tick; the rest of the book is given (lo = a tick below).
        q = Quote(bid, bid + 1.0, jnp.ones(3, f32), jnp.ones(3, f32), jnp.ones(3, bool), jnp.zeros(3, bool))
        z = jnp.zeros(3, f32)
        _, f = fills.resolve(
            rng.key(0),
            fills.init(3, f32),
            p,
            q,
            f32(1.0),
            mid_before=lo + 1.0,
            best_bid_before=lo + 0.9,
            best_ask_before=lo + 1.1,
            best_bid_after=lo,
            best_ask_after=ks * tick,
            mid_after=lo + 0.05,
            sell_volume=z,
            buy_volume=z,
            tick=jnp.full(3, tick),
        )
        return f.bid_size

    bid = np.asarray(ks) * np.float32(0.1)  # the rounded book price, as a runtime quote
    lo = jnp.asarray(bid - np.float32(0.1), f32)
    np.testing.assert_array_equal(np.asarray(jax.jit(lambda k: k * tick)(ks)), bid)
    size = run(ks, jnp.asarray(bid, f32), lo)
    np.testing.assert_array_equal(np.asarray(size), [1.0, 1.0, 1.0])
    # One tick below the new best ask it is not crossed (and no flow reaches it).
    size = run(ks, lo, lo - np.float32(0.1))
    np.testing.assert_array_equal(np.asarray(size), [0.0, 0.0, 0.0])


def test_moving_a_quote_joins_the_back_of_its_level():
    p = fparams(**QP)
    s = fills.init(1, jnp.float64)
    s, _ = step(s, p, bid=99.5, sell=1.5)  # 0.5 left ahead at 99.5
    # One tick behind the touch: 2.0 at the touch in front, then 0.5 of our level ahead of us.
    s1, f = step(s, p, bid=99.0, sell=2.3)
    assert f["bid_size"] == 0.0
    np.testing.assert_allclose(float(s1.queue[0, 0]), 0.2, rtol=1e-12)
    # The touch in front is whole again next step (the book refills between steps): 2.5 sold reach
    # 0.5 past it, 0.2 of which clear our queue.
    _, f = step(s1, p, bid=99.0, sell=2.5)
    assert f["bid_size"] == pytest.approx(0.3, rel=1e-12)
    # Back to 99.5: the old place in line is lost, the full touch depth (2.0) is ahead again.
    s2, f = step(s1, p, bid=99.5, sell=1.0)
    assert f["bid_size"] == 0.0
    np.testing.assert_allclose(float(s2.queue[0, 0]), 1.0, rtol=1e-12)
    # Inside the spread we are the new best: nothing ahead, the first sells fill us.
    _, f = step(s, p, bid=100.0, sell=0.4)
    assert f["bid_size"] == pytest.approx(0.4, rel=1e-12)
    # Pulling the quote forgets the queue: re-posting at the same price joins the back.
    s3, _ = step(s, p, bid=None)
    assert float(s3.price[0, 0]) == 0.0
    s4, f = step(s3, p, bid=99.5, sell=1.5)
    assert f["bid_size"] == 0.0 and float(s4.queue[0, 0]) == pytest.approx(0.5)


def _walk(size, touch, d0, dpt, tick):
    """A taker order's average price, level by level: what is left of the order takes the level's
    depth (d0 at the touch, dpt behind it) at that level's price."""
    left, cost, level = abs(size), 0.0, 0
    while left > 0:
        got = min(left, d0 if level == 0 else dpt)
        cost += got * (touch + np.sign(size) * tick * level)
        left, level = left - got, level + 1
    return cost / abs(size)


_take = jax.jit(fills.take)


@pytest.mark.parametrize("size", [0.5, 2.0, 3.2, 7.9, -0.5, -3.2, -7.9])
def test_taker_order_walks_the_book(size):
    """fills.take: touch_depth at the touch, depth_per_tick at every further tick; a buy from the
    best ask up, a sell from the best bid down; the closed form against a brute-force walk."""
    p = fparams(touch_depth=2.0, depth_per_tick=0.5)
    bid, ask, tick = 99.95, 100.05, 0.1
    ex, px = _take(vec(size, 1), vec(bid, 1), vec(ask, 1), vec(tick, 1), p)
    np.testing.assert_allclose(np.asarray(ex), [size], rtol=1e-15)
    np.testing.assert_allclose(
        np.asarray(px), [_walk(size, ask if size > 0 else bid, 2.0, 0.5, tick)], rtol=0, atol=1e-9
    )


def test_taker_order_float32_and_vmap_agree_with_float64():
    """Per path under vmap and in float32: the same executions, prices within float32 rounding
    (a few ulps of a 100-unit price)."""
    p = fparams(touch_depth=2.0, depth_per_tick=0.5)
    sizes = np.array([[0.5, -3.2], [7.9, 0.0], [-7.9, 2.0]])  # (paths, A)
    bid, ask, tick = np.full((3, 2), 99.95), np.full((3, 2), 100.05), np.full((3, 2), 0.1)
    ref = [_take(sizes[i], bid[i], ask[i], tick[i], p) for i in range(3)]
    p32 = fills.FillParams(touch_depth=np.float32(2.0), depth_per_tick=np.float32(0.5))
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    ex, px = jax.jit(jax.vmap(fills.take, in_axes=(0, 0, 0, 0, None)))(f32(sizes), f32(bid), f32(ask), f32(tick), p32)
    assert ex.dtype == jnp.float32 and px.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(ex), np.stack([np.asarray(r[0]) for r in ref]), rtol=1e-6)
    np.testing.assert_allclose(
        np.asarray(px), np.stack([np.asarray(r[1]) for r in ref]), rtol=0, atol=8 * np.finfo(np.float32).eps * 100.0
    )


def test_taker_order_without_depth_behind_the_touch_executes_the_touch_only():
    p = fparams(touch_depth=2.0, depth_per_tick=0.0)
    ex, px = _take(np.asarray([-3.0, 1.0, 0.0]), vec(99.95, 3), vec(100.05, 3), vec(0.1, 3), p)
    np.testing.assert_array_equal(np.asarray(ex), [-2.0, 1.0, 0.0])
    np.testing.assert_array_equal(np.asarray(px), [99.95, 100.05, 0.0])


def test_fill_params_validation_names_the_field():
    for field, value in (
        ("model", "lognormal"),
        ("k", 0.0),
        ("A", -1.0),
        ("touch_depth", -1.0),
        ("depth_per_tick", np.nan),
        ("cancel_rate", -0.1),
    ):
        with pytest.raises(ValueError, match=rf"FillParams\.{field}\b"):
            fills.FillParams(**{field: value})
