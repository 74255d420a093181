"""Queue-position estimator: joining at the back (at, behind and inside the touch), moving up on
trades at our level, decay by cancellations, fills, re-joins, masks, fill-probability values and
limits, jit/vmap and dtypes."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import norm

from mmsim.engine.estimators import queue as qu
from tests.engine.estimators._harness import check_eager_jit_vmap, obs_of

P = qu.QueueEstParams(cancel_rate=0.1, depth_per_tick=2.0, tick=0.1, fill_horizon_s=2.0)
UPDATE = jax.jit(qu.update)  # compiled once per shape: fast hand-made sequences (eager is tested below)
BOOK = dict(best_bid=100.0, best_ask=100.5, bid_size=3.0, ask_size=4.0, mid=100.25, book_valid=True)


def quotes(dtype, bids, asks):
    return jnp.asarray(bids, dtype), jnp.asarray(asks, dtype), jnp.ones((len(bids), 2), bool)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_join_at_the_back(dtype):
    # Assets: at the touch, 2 ticks behind, inside the spread (better than the best).
    qb, qa, act = quotes(dtype, [100.0, 99.8, 100.2], [100.5, 100.8, 100.3])
    s = UPDATE(P, qu.init(P, 3, dtype), obs_of(dtype, 3, t=1.0, dt=1.0, **BOOK), qb, qa, act)
    assert s.queue_ahead.dtype == dtype
    np.testing.assert_allclose(
        np.asarray(s.queue_ahead), [[3.0, 4.0], [3.0 + 2 * 2.0, 4.0 + 3 * 2.0], [0.0, 0.0]], rtol=1e-6
    )
    np.testing.assert_allclose(np.asarray(s.quote_price), [[100.0, 100.5], [99.8, 100.8], [100.2, 100.3]], rtol=1e-7)


def test_move_up_on_trades_decay_and_fills():
    d = jnp.float64
    qb, qa, act = quotes(d, [100.0, 99.8, 100.0, 100.0], [100.5, 100.5, 100.5, 100.5])
    s = UPDATE(P, qu.init(P, 4, d), obs_of(d, 4, t=1.0, dt=1.0, **BOOK), qb, qa, act)
    # 0.5 s later: 1.0 sold and 5.0 bought by aggressors; the bid book has grown (ignored: we stay put).
    o = obs_of(d, 4, t=1.5, dt=0.5, **{**BOOK, "bid_size": 9.0}, vol_sell=1.0, vol_buy=5.0, trades_valid=True)
    o = o._replace(
        fill_bid_size=jnp.asarray([0.0, 0.0, 0.3, 0.0]),
        fills_valid=jnp.ones((4,), bool),
        trades_valid=jnp.asarray([True, True, True, False]),
    )
    s = UPDATE(P, s, o, qb, qa, act)
    dec = np.exp(-0.1 * 0.5)
    expect = np.array(
        [
            [(3.0 - 1.0) * dec, 0.0],  # bid at the touch moves up by the sells; the buys clear the ask queue
            [7.0 * dec, 0.0],  # bid behind the touch: sells not credited, cancellations only
            [0.0, 0.0],  # our bid was filled: nothing ahead
            [3.0 * dec, 4.0 * dec],  # trades not valid: cancellations only
        ]
    )
    np.testing.assert_allclose(np.asarray(s.queue_ahead), expect, rtol=1e-13)
    # Moving the quote re-joins at the back of the current book; an inactive side is cleared.
    qb2 = jnp.asarray([99.9, 99.8, 100.0, 100.0])
    act2 = jnp.asarray([[True, True], [True, True], [True, False], [False, True]])
    s = UPDATE(P, s, obs_of(d, 4, t=2.0, dt=0.5, **{**BOOK, "bid_size": 9.0}), qb2, qa, act2)
    np.testing.assert_allclose(
        np.asarray(s.queue_ahead),
        [[9.0 + 2.0, 0.0], [7.0 * dec * dec, 0.0], [0.0, 0.0], [0.0, 4.0 * dec * dec]],
        rtol=1e-13,
    )
    np.testing.assert_allclose(np.asarray(s.quote_price), [[99.9, 100.5], [99.8, 100.5], [100.0, 0.0], [0.0, 100.5]])
    # A side that comes back joins afresh.
    s = UPDATE(P, s, obs_of(d, 4, t=2.5, dt=0.5, **BOOK), qb2, qa, jnp.ones((4, 2), bool))
    np.testing.assert_allclose(np.asarray(s.queue_ahead[2:]), [[0.0, 4.0], [3.0, 4.0 * dec**3]], rtol=1e-13)


def test_exact_decay_over_long_intervals_and_invalid_book_join():
    d = jnp.float64
    p = dataclasses.replace(P, cancel_rate=2.0)
    qb, qa, act = quotes(d, [100.0], [100.5])
    s = UPDATE(p, qu.init(p, 1, d), obs_of(d, 1, t=0.0, dt=1.0, **BOOK), qb, qa, act)
    s = UPDATE(p, s, obs_of(d, 1, t=1.0, dt=1.0, **BOOK), qb, qa, act)  # cancel_rate dt = 2: the spec's 1 - 2 < 0
    np.testing.assert_allclose(np.asarray(s.queue_ahead[0]), [3.0 * np.exp(-2.0), 4.0 * np.exp(-2.0)], rtol=1e-13)
    assert bool(jnp.all(s.queue_ahead >= 0))
    # Joining without a valid book: one tick's depth.
    s = UPDATE(p, qu.init(p, 1, d), obs_of(d, 1, t=0.0, dt=1.0), qb, qa, act)
    np.testing.assert_allclose(np.asarray(s.queue_ahead[0]), [2.0, 2.0])


def test_fill_probability_values_and_limits():
    d = jnp.float64
    s = qu.QueueEst(
        queue_ahead=jnp.asarray([[3.0, 0.0], [0.0, 1e9], [5.0, 5.0], [1.0, 1.0]]),
        quote_price=jnp.asarray([[99.9, 100.0], [150.0, 100.1], [0.0, 100.2], [99.0, 101.0]]),
    )
    mid = jnp.asarray([100.0, 100.0, 100.0, 100.0])
    sigma = jnp.asarray([1e-3, 1e-3, 1e-3, 0.0])
    ev = jnp.asarray([[6.0, 6.0], [6.0, 6.0], [6.0, 0.0], [0.0, 0.0]])
    pf = qu.fill_probability(P, s, mid, sigma, 1.0, ev)
    assert pf.dtype == d
    expect = np.array(
        [
            [2 * norm.cdf(-1.0) * np.exp(-0.5), 1.0],  # 1 sigma away, queue/volume 1/2; at the mid with no queue
            [1.0, 0.0],  # a bid above the mid touches surely; a huge queue never fills
            [0.0, 0.0],  # no bid quote; no expected volume with a queue
            [0.0, 0.0],  # zero volatility away from the mid
        ]
    )
    np.testing.assert_allclose(np.asarray(pf), expect, rtol=1e-12, atol=1e-300)
    # Default horizon: params.fill_horizon_s = 2 s: x = 1 / sqrt(2).
    pf2 = qu.fill_probability(P, s, mid, sigma, None, ev)
    np.testing.assert_allclose(float(pf2[0, 0]), 2 * norm.cdf(-1 / np.sqrt(2)) * np.exp(-0.5), rtol=1e-12)
    # Zero expected volume with an empty queue executes on touch.
    s0 = s._replace(queue_ahead=jnp.zeros((4, 2)))
    np.testing.assert_allclose(
        float(qu.fill_probability(P, s0, mid, sigma, 1.0, jnp.zeros((4, 2)))[0, 0]), 2 * norm.cdf(-1.0), rtol=1e-12
    )


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_fill_probability_bounds_and_monotonicity(dtype):
    rs = np.random.default_rng(4)
    n = 64
    mid = jnp.asarray(100 + rs.random(n), dtype)
    st = qu.QueueEst(
        queue_ahead=jnp.asarray(rs.exponential(2.0, (n, 2)), dtype),
        quote_price=jnp.asarray(np.asarray(mid)[:, None] * (1 + rs.normal(0, 2e-3, (n, 2))), dtype),
    )
    sigma = jnp.asarray(rs.uniform(0, 2e-3, n), dtype)
    ev = jnp.asarray(rs.exponential(3.0, (n, 2)), dtype)
    p1 = qu.fill_probability(P, st, mid, sigma, 1.0, ev)
    assert p1.dtype == dtype
    assert bool(jnp.all((p1 >= 0) & (p1 <= 1)))
    # More queue ahead, a shorter horizon or less volume: never more likely to fill.
    p_q = qu.fill_probability(P, st._replace(queue_ahead=st.queue_ahead + 1), mid, sigma, 1.0, ev)
    p_h = qu.fill_probability(P, st, mid, sigma, 0.25, ev)
    p_v = qu.fill_probability(P, st, mid, sigma, 1.0, 0.5 * ev)
    for other in (p_q, p_h, p_v):
        assert bool(jnp.all(other <= p1 + 1e-6))
    # Degenerate inputs give numbers, not NaN.
    z = jnp.zeros((n,), dtype)
    for args in ((z, sigma, 1.0, ev), (mid, z, 0.0, 0.0 * ev), (mid, sigma, 1e9, ev)):
        assert bool(jnp.all(jnp.isfinite(qu.fill_probability(P, st, *args))))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_jit_vmap_equal_eager_and_dtype(dtype):
    n_a, n = 2, 8
    p = dataclasses.replace(P, tick=np.array([0.1, 0.5]))

    def path(seed):
        r = np.random.default_rng(seed)
        out = []
        for k in range(n):
            bb = 100.0 + np.round(r.normal(0, 2, n_a)) * 0.5
            o = obs_of(
                dtype,
                n_a,
                t=0.5 * (k + 1),
                dt=0.5,
                best_bid=bb,
                best_ask=bb + 0.5,
                bid_size=r.exponential(3, n_a),
                ask_size=r.exponential(3, n_a),
                mid=bb + 0.25,
                book_valid=True,
                trades_valid=True,
                vol_buy=r.exponential(1, n_a),
                vol_sell=r.exponential(1, n_a),
                fills_valid=True,
                fill_bid_size=(r.random(n_a) < 0.2) * 1.0,
            )
            q = (
                jnp.asarray(bb - 0.5 * (k % 3 == 0), dtype),
                jnp.asarray(bb + 0.5, dtype),
                jnp.asarray(r.random((n_a, 2)) < 0.8),
            )
            out.append((o, q))
        return out

    paths = [path(1), path(2)]
    tol = 1e-5 if dtype == jnp.float32 else 1e-12
    ones, small = jnp.ones((n_a, 2), dtype), jnp.full((n_a,), 1e-3, dtype)
    s_v, pf_v = check_eager_jit_vmap(
        lambda: qu.init(p, n_a, dtype),
        lambda s, x: qu.update(p, s, x[0], *x[1]),
        paths,
        dtype=dtype,
        rtol=tol,
        atol=tol,
        query=lambda s, x: qu.fill_probability(p, s, x[0].mid, small, None, ones),
    )
    assert pf_v.dtype == dtype


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_no_nan_on_edge_cases(dtype):
    qb, qa, act = quotes(dtype, [100.0], [100.5])
    s = qu.init(P, 1, dtype)
    for kw in (
        dict(t=0.0, dt=1.0),
        dict(t=0.0, dt=0.0, **BOOK),
        dict(t=1.0, dt=1e-30, vol_sell=1e30, trades_valid=True),
        dict(t=2.0, dt=1e9, **BOOK),
    ):
        s = UPDATE(P, s, obs_of(dtype, 1, **kw), qb, qa, act)
        for leaf in s:
            assert leaf.dtype == dtype and bool(jnp.all(jnp.isfinite(leaf))), kw
    s = UPDATE(P, s, obs_of(dtype, 1, t=3.0, dt=1.0, **BOOK), jnp.asarray([jnp.nan], dtype), qa, act)
    assert bool(jnp.all(jnp.isfinite(s.queue_ahead))) and float(s.quote_price[0, 0]) == 0.0


@pytest.mark.parametrize(
    "field, bad",
    [
        ("cancel_rate", -0.1),
        ("depth_per_tick", -1.0),
        ("tick", 0.0),
        ("tick", np.array([0.1, -0.1])),
        ("fill_horizon_s", 0.0),
    ],
)
def test_invalid_params_raise(field, bad):
    with pytest.raises(ValueError, match=rf"QueueEstParams\.{field} = "):
        dataclasses.replace(P, **{field: bad})
