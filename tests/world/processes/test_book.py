"""The tick book: the walk of market orders on a hand-made book, the queues' immigration-death law
(exact conditional mean and variance for any step, stationary depth independent of dt), the
repricing and spread-closing events at their continuous-time probabilities, and our quote filled
by the exchange rule (back of the queue, cancellations ahead, sniped when stale)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmsim import rng
from mmsim.observation import Quote, no_quote
from mmsim.world.processes import book as bk

F64 = jnp.float64
TICK = 0.1


def params(**kw) -> bk.BookParams:
    base = dict(model="tick", levels=3, depth_touch=2.0, depth_level=0.2, refill_rate=0.5, lot=0.5)
    return bk.BookParams(**{**base, **kw})


def state(bid=1000, ask=1001, qb=(2.0, 1.0, 0.5), qa=(2.0, 1.0, 0.5)) -> bk.BookState:
    return bk.BookState(
        bid=jnp.asarray([bid], jnp.int32),
        ask=jnp.asarray([ask], jnp.int32),
        q_bid=levels(qb),
        q_ask=levels(qa),
    )


def levels(x):
    """One asset's levels as the book holds them: a tuple of (A,) arrays, the touch first."""
    return tuple(jnp.asarray([v], F64) for v in x)


def v(x):
    return jnp.asarray([x], F64)


def test_shift_moves_the_levels():
    q = levels([1.0, 2.0, 3.0, 4.0, 5.0])
    b, f = v(-1.0), v(-2.0)
    got = lambda k: [float(x[0]) for x in bk._shift(q, jnp.asarray([k]), b, f)]  # noqa: E731
    assert got(0) == [1, 2, 3, 4, 5]
    assert got(2) == [3, 4, 5, -1, -1]
    assert got(5) == got(7) == [-1] * 5
    assert got(-3) == [-2, -2, -2, 1, 2]
    assert got(-6) == [-2] * 5


def test_walk_hand_made_book():
    q = levels([2.0, 1.0, 0.5])
    beyond = v(0.2)
    w = bk.walk(q, v(2.5), beyond, jnp.asarray([0]))
    assert int(w.moved[0]) == 1
    np.testing.assert_allclose([float(x[0]) for x in w.queues], [0.5, 0.5, 0.2])
    assert float(w.traded_at[0]) == 2.0 and bool(w.through[0])
    np.testing.assert_allclose(float(w.avg_ticks[0]), 0.5 / 2.5)
    w1 = bk.walk(q, v(2.5), beyond, jnp.asarray([1]))
    assert float(w1.traded_at[0]) == 0.5 and not bool(w1.through[0])
    # Past every held level: 0.5 more walks levels of 0.2 (two full, 0.1 of the third).
    w = bk.walk(q, v(4.0), beyond, jnp.asarray([4]))
    assert int(w.moved[0]) == 5
    np.testing.assert_allclose(float(w.queues[0][0]), 0.1, atol=1e-12)
    np.testing.assert_allclose(float(w.avg_ticks[0]), (0 * 2 + 1 * 1 + 2 * 0.5 + 3 * 0.2 + 4 * 0.2 + 5 * 0.1) / 4.0)
    assert float(w.traded_at[0]) == pytest.approx(0.2) and bool(w.through[0])  # level 4 fully traded
    # Nothing trades: nothing moves.
    w = bk.walk(q, v(0.0), beyond, jnp.asarray([0]))
    assert int(w.moved[0]) == 0 and float(w.traded_at[0]) == 0.0 and not bool(w.through[0])


N = 20_000


def _touch_after(p, q0, dt, n_steps):
    """Touch queue after ``n_steps`` relaxations of ``dt`` seconds, for N paths (no flow)."""

    def path(k):
        q = levels([q0, 0.2, 0.2])

        def body(q, t):
            q, _ = bk._relax(rng.fold_in(k, t), q, p, dt, 1)
            return q, None

        return jax.lax.scan(body, q, jnp.arange(n_steps))[0][0][0]

    return np.asarray(jax.jit(jax.vmap(path))(rng.path_keys(rng.key(3), 0, N)))


def _assert_mean_var(x, mean, var):
    n = x.size
    xc = x - x.mean()
    assert abs(x.mean() - mean) < 4 * np.sqrt(xc.var() / n), (x.mean(), mean)
    assert abs(xc.var() - var) < 4 * np.sqrt(np.var(xc**2) / n), (xc.var(), var)


@pytest.mark.parametrize("dt", [0.3, 2.0])
def test_queue_conditional_law_is_exact_for_any_step(dt):
    """From q0, one step of dt: mean q0 s + T (1 - s), variance lot (q0 s (1 - s) + T (1 - s)),
    s = exp(-refill_rate dt), the immigration-death process's moments."""
    p = params(depth_touch=20.0, lot=0.5)
    q0 = 12.0
    s = np.exp(-0.5 * dt)
    x = _touch_after(p, q0, dt, 1)
    _assert_mean_var(x, q0 * s + 20.0 * (1 - s), 0.5 * (q0 * s * (1 - s) + 20.0 * (1 - s)))


def test_queue_stationary_depth_does_not_depend_on_dt():
    """Stationary law: mean T, variance lot T, at a tenth of a second and at 1 s."""
    p = params(depth_touch=20.0, lot=0.5)
    for dt, n in ((0.1, 200), (1.0, 20)):
        _assert_mean_var(_touch_after(p, 20.0, dt, n), 20.0, 10.0)


def _step(p, st, dt, latent, sells=0.0, buys=0.0, quote=None, rp=(0.0, 0.0), ra=(0.0, 0.0), key=0):
    quote = no_quote(1, F64) if quote is None else quote
    return bk.step(
        rng.key(key),
        st,
        p,
        dt,
        latent_mid=v(latent),
        sell_volume=v(sells),
        buy_volume=v(buys),
        tick=v(TICK),
        quote=quote,
        resting_price=jnp.asarray([rp], F64),
        resting_ahead=jnp.asarray([ra], F64),
    )


def test_repricing_happens_at_its_continuous_time_probability():
    """Efficient price 4.5 ticks under the bid (band 1, so 3.5 ticks of excess): the book reprices
    in a step of dt with probability 1 - exp(-(pull_rate + pull_rate_per_tick 3.5) dt), and then
    clears the stale levels and closes the spread around the efficient price."""
    p = params(pull_rate=0.5, pull_rate_per_tick=0.2, pull_band=1.0, gap_rate=1e9)
    dt = 0.2
    latent = 99.55  # bid 100.0 = 1000 ticks; efficient price 995.5 ticks

    def moved(k):
        s, info, _, _ = bk.step(
            k, state(), p, dt, latent_mid=v(latent), sell_volume=v(0.0), buy_volume=v(0.0), tick=v(TICK),
            quote=no_quote(1, F64), resting_price=jnp.zeros((1, 2), F64), resting_ahead=jnp.zeros((1, 2), F64),
        )  # fmt: skip
        return s.bid[0], s.ask[0], info.n_reprice[0]

    b, a, n = (np.asarray(x) for x in jax.jit(jax.vmap(moved))(rng.path_keys(rng.key(1), 0, N)))
    prob = -np.expm1(-(0.5 + 0.2 * 3.5) * dt)
    hit = b != 1000
    assert abs(hit.mean() - prob) < 4 * np.sqrt(prob * (1 - prob) / N)
    # Stale levels: prices above 995.5 + 1 ticks, i.e. 1000 .. 997 (4 levels).
    assert set(np.unique(n[hit])) == {4.0}
    # The new bid 996 is within the band of 995.5; the spread closes to one tick above it.
    assert set(np.unique(b[hit])) == {996} and set(np.unique(a[hit])) == {997}
    assert set(np.unique(a[~hit])) == {1001}


def _quote(bid=None, ask=None, size=0.01):
    return Quote(
        bid_price=v(bid or 0.0),
        ask_price=v(ask or 0.0),
        bid_size=v(size),
        ask_size=v(size),
        bid_active=jnp.asarray([bid is not None]),
        ask_active=jnp.asarray([ask is not None]),
    )


def test_our_quote_joins_the_back_and_fills_from_volume_beyond_the_queue():
    p = params(refill_rate=1e-9, lot=1e-12, pull_rate=0.0, gap_rate=0.0)
    q = _quote(bid=100.0)  # at the touch (1000 ticks), behind its 2.0
    _, info, rp, ra = _step(p, state(), 1.0, 100.05, sells=1.5, quote=q)
    assert float(info.bid_fill[0]) == 0.0
    np.testing.assert_allclose(float(ra[0, 0]), 0.5, rtol=1e-6)  # 2.0 - 1.5 still ahead
    assert float(rp[0, 0]) == 100.0
    # The next step keeps our place: 0.505 more sells fill half of our 0.01.
    st = state(qb=(0.5, 1.0, 0.5))
    _, info, rp, ra = _step(p, st, 1.0, 100.05, sells=0.505, quote=q, rp=(100.0, 0.0), ra=(0.5, 0.0))
    np.testing.assert_allclose(float(info.bid_fill[0]), 0.005, rtol=1e-6)
    assert float(ra[0, 0]) == 0.0  # the rest is first in line
    # A new price joins the back of its level: one tick behind, 1.0 ahead.
    q2 = _quote(bid=99.9)
    _, info, _, ra = _step(p, state(), 1.0, 100.05, sells=2.5, quote=q2)
    assert float(info.bid_fill[0]) == 0.0
    np.testing.assert_allclose(float(ra[0, 0]), 0.5, rtol=1e-6)
    # Traded through: the walk went past our level (its 1.0 and our 0.01).
    _, info, _, _ = _step(p, state(), 1.0, 100.05, sells=3.02, quote=q2)
    np.testing.assert_allclose(float(info.bid_fill[0]), 0.01)


@pytest.mark.parametrize("share", [1.0, 0.25, 0.0])
def test_cancellations_ahead_move_us_up(share):
    """The queue ahead keeps exp(-share refill_rate dt) of itself over a step of dt."""
    p = params(refill_rate=0.5, lot=1e-12, pull_rate=0.0, gap_rate=0.0, cancel_ahead_share=share)
    q = _quote(ask=100.1)
    _, info, _, ra = _step(p, state(), 2.0, 100.05, quote=q)
    np.testing.assert_allclose(float(ra[0, 1]), 2.0 * np.exp(-share * 1.0), rtol=1e-9)


@pytest.mark.parametrize("bound", ["none", "level"])
def test_a_level_smaller_than_our_place_in_line_bounds_the_queue_ahead(bound):
    """Resting with 1.5 ahead at a touch that now holds 0.6: with ``queue_bound=level`` at most
    0.6 can be ahead (the paper gateway's rule against the displayed touch), so 0.605 of sells
    fill half our 0.01; without it the 1.5 stands and nothing fills."""
    p = params(refill_rate=1e-9, lot=1e-12, pull_rate=0.0, gap_rate=0.0, queue_bound=bound)
    q = _quote(bid=100.0)
    st = state(qb=(0.6, 1.0, 0.5))
    _, info, _, ra = _step(p, st, 1.0, 100.05, sells=0.605, quote=q, rp=(100.0, 0.0), ra=(1.5, 0.0))
    if bound == "level":
        np.testing.assert_allclose(float(info.bid_fill[0]), 0.005, rtol=1e-6)
        assert float(ra[0, 0]) == 0.0
    else:
        assert float(info.bid_fill[0]) == 0.0
        np.testing.assert_allclose(float(ra[0, 0]), 1.5 - 0.605, rtol=1e-6)


def test_a_stale_quote_is_taken_when_the_book_reprices():
    p = params(pull_rate=1e9, pull_band=1.0, gap_rate=1e9)
    q = _quote(bid=100.0, ask=100.1)
    _, info, rp, _ = _step(p, state(), 1.0, 99.55, quote=q)
    np.testing.assert_allclose(float(info.bid_fill[0]), 0.01)
    assert float(info.sniped_sell[0]) == pytest.approx(0.01)
    assert float(info.ask_fill[0]) == 0.0 and float(rp[0, 0]) == 0.0 and float(rp[0, 1]) == pytest.approx(100.1)


def test_inside_the_spread_we_are_hit_first():
    p = params(refill_rate=1e-9, lot=1e-12, pull_rate=0.0, gap_rate=0.0)
    st = state(bid=1000, ask=1003)
    q = _quote(bid=100.1)
    s, info, _, _ = _step(p, st, 1.0, 100.15, sells=0.004, quote=q)
    np.testing.assert_allclose(float(info.bid_fill[0]), 0.004, rtol=1e-9)
    assert int(s.bid[0]) == 1000  # the public touch was not reached


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("depth_touch", 0.0),
        ("refill_rate", -1.0),
        ("pull_rate", float("nan")),
        ("model", "lob"),
        ("levels", 1),
        ("cancel_ahead_share", 1.5),
        ("queue_bound", "display"),
    ],
)
def test_bad_parameters_name_the_field(field, bad):
    with pytest.raises(ValueError, match=rf"\.{field} = "):
        dataclasses.replace(params(), **{field: bad})
