"""Inventory estimator: a hand-worked fill sequence with a flip (position, average entry and realized
PnL to the cent), fill rates on constant and random fill streams against their exact means, skew,
risk, masks, bad prices, jit/vmap and dtypes."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmsim import rng
from mmsim.engine.estimators import inventory as inv
from tests.engine.estimators._harness import check_eager_jit_vmap, obs_of

P = inv.InventoryEstParams(max_position=2.0, target=0.0, fill_rate_half_life_s=30.0)
UPDATE = jax.jit(inv.update)  # compiled once per shape: fast hand-made sequences (eager is tested below)


# (buy size, buy price, sell size, sell price) -> (position, avg entry, realized PnL), worked by hand:
SEQUENCE = [
    ((0.5, 60000.10, 0.0, 0.0), (0.5, 60000.10, 0.0)),
    # add: (0.5 * 60000.10 + 0.25 * 60300.40) / 0.75 = 45075.15 / 0.75 = 60100.20
    ((0.25, 60300.40, 0.0, 0.0), (0.75, 60100.20, 0.0)),
    # reduce: 0.25 * (60500.00 - 60100.20) = 99.95
    ((0.0, 0.0, 0.25, 60500.00), (0.5, 60100.20, 99.95)),
    # flip: close 0.5 at 59900: 0.5 * (59900 - 60100.20) = -100.10; open a 0.75 short at 59900
    ((0.0, 0.0, 1.25, 59900.00), (-0.75, 59900.00, -0.15)),
    # buy first: cover 0.25 at 59700: +0.25 * 200 = +50.00; then sell 0.5 at 59800 adds to the short:
    # (0.5 * 59900 + 0.5 * 59800) / 1.0 = 59850
    ((0.25, 59700.00, 0.5, 59800.00), (-1.0, 59850.00, 49.85)),
    # cover all at 59850.50: -1.0 * 0.50 -> flat, entry reset
    ((1.0, 59850.50, 0.0, 0.0), (0.0, 0.0, 49.35)),
]


@pytest.mark.parametrize("dtype, atol", [(jnp.float64, 0.005), (jnp.float32, 0.1)])
def test_hand_worked_sequence_with_flip(dtype, atol):
    """float64: to the cent; float32 resolves a 60,000 price to ~0.004, so PnL only to ~0.1."""
    s = inv.init(P, 1, dtype)
    for i, ((bs, bp, ss, sp), (q, e, r)) in enumerate(SEQUENCE):
        s = UPDATE(
            P,
            s,
            obs_of(
                dtype,
                t=i + 1.0,
                dt=1.0,
                fills_valid=True,
                fill_bid_size=bs,
                fill_bid_price=bp,
                fill_ask_size=ss,
                fill_ask_price=sp,
            ),
        )
        assert s.position.dtype == dtype
        np.testing.assert_allclose(float(s.position[0]), q, atol=1e-12)
        np.testing.assert_allclose(float(s.avg_entry[0]), e, atol=atol / 10 if dtype == jnp.float64 else 0.01)
        np.testing.assert_allclose(float(s.realized_pnl[0]), r, atol=atol)
        if i == 4:  # short 1.0 from 59850, marked at 60000
            np.testing.assert_allclose(
                float(inv.unrealized_pnl(s, jnp.asarray([60000.0], dtype))[0]), -150.0, atol=atol
            )
    np.testing.assert_array_equal(np.asarray(s.n_fills), [[4, 3]])


def test_flip_is_a_close_and_an_open_not_an_average():
    """The spec's record_fill averages a short's entry into the long it flips to; here the closed part
    realizes PnL and the new position's entry is the fill price."""
    q, e, r = inv.apply_fill(
        jnp.asarray([-1.0]), jnp.asarray([100.0]), jnp.asarray([0.0]), jnp.asarray([3.0]), jnp.asarray([90.0])
    )
    np.testing.assert_allclose([q[0], e[0], r[0]], [2.0, 90.0, 10.0])
    # Zero size: nothing; flat start: entry = price.
    q, e, r = inv.apply_fill(
        jnp.asarray([0.0, 1.0]),
        jnp.asarray([0.0, 50.0]),
        jnp.asarray([0.0, 1.0]),
        jnp.asarray([-2.0, 0.0]),
        jnp.asarray([70.0, 80.0]),
    )
    np.testing.assert_allclose(np.asarray([q, e, r]), [[-2.0, 1.0], [70.0, 50.0], [0.0, 1.0]])


def test_fill_rate_constant_stream_converges_to_the_true_rate():
    s = inv.init(P, 1, jnp.float64)
    for k in range(10):  # 0.01 bought and 0.03 sold every 0.5 s
        s = UPDATE(
            P,
            s,
            obs_of(
                jnp.float64,
                t=0.5 * (k + 1),
                dt=0.5,
                fills_valid=True,
                fill_bid_size=0.01,
                fill_bid_price=100.0,
                fill_ask_size=0.03,
                fill_ask_price=100.0,
            ),
        )
    g = 1 - 2 ** (-5.0 / 30.0)  # EWMA from 0 after 5 s
    np.testing.assert_allclose([s.fill_rate_bid[0], s.fill_rate_ask[0]], [0.02 * g, 0.06 * g], rtol=1e-12)
    o = obs_of(
        jnp.float64,
        dt=0.5,
        fills_valid=True,
        fill_bid_size=0.01,
        fill_bid_price=100.0,
        fill_ask_size=0.03,
        fill_ask_price=100.0,
    )
    run = jax.jit(lambda s: jax.lax.scan(lambda s, _: (inv.update(P, s, o), None), s, None, length=6000))
    s, _ = run(s)  # 100 half-lives
    np.testing.assert_allclose([s.fill_rate_bid[0], s.fill_rate_ask[0]], [0.02, 0.06], rtol=1e-12)


def _final_rates(params, draws_to_obs, n_paths, n_steps, seed):
    def path(k):
        def body(s, t):
            s = inv.update(params, s, draws_to_obs(rng.uniform(rng.fold_in(k, t), (2,), jnp.float64)))
            return s, None

        s, _ = jax.lax.scan(body, inv.init(params, 1, jnp.float64), jnp.arange(n_steps))
        return s.fill_rate_bid[0]

    keys = rng.path_keys(rng.key(seed), 0, n_paths)
    return np.asarray(jax.jit(jax.vmap(path))(keys))


def test_fill_rate_random_fills_on_a_fixed_clock_is_unbiased(seed):
    """Bernoulli(0.3) fills of 0.2 every 1 s: true rate 0.06 per second; the final EWMA values of
    independent paths (25 half-lives, so the start is forgotten to 2^-25) average to it within 4 SE."""
    p = inv.InventoryEstParams(fill_rate_half_life_s=60.0)

    def to_obs(u):
        return obs_of(jnp.float64, dt=1.0, fills_valid=True)._replace(
            fill_bid_size=jnp.where(u[:1] < 0.3, 0.2, 0.0), fill_bid_price=jnp.full((1,), 100.0)
        )

    x = _final_rates(p, to_obs, 2000, 1500, seed)
    se = x.std() / np.sqrt(len(x))
    assert abs(x.mean() - 0.06) < 4 * se, (x.mean(), se)


def test_fill_rate_fill_driven_clock_bias_matches_the_docstring(seed):
    """One observation per fill at Poisson times (dt ~ Exp(lambda)): the mean of the EWMA is
    lambda (1 + 1/eps) ln(1 + eps), eps = ln 2 / (lambda half_life), as documented (3 % here)."""
    lam, hl = 0.1, inv.InventoryEstParams().fill_rate_half_life_s
    p = inv.InventoryEstParams()

    def to_obs(u):
        dt = -jnp.log1p(-u[0]) / lam
        return obs_of(jnp.float64, fills_valid=True)._replace(
            dt=dt, fill_bid_size=jnp.ones((1,)), fill_bid_price=jnp.full((1,), 100.0)
        )

    x = _final_rates(p, to_obs, 2000, 400, seed)  # 400 fills ~ 4000 s ~ 38 half-lives
    eps = math.log(2.0) / (lam * hl)
    expect = lam * (1 + 1 / eps) * math.log1p(eps)
    se = x.std() / np.sqrt(len(x))
    assert abs(x.mean() - expect) < 4 * se, (x.mean(), expect, se)
    assert abs(x.mean() - lam) > 4 * se  # the bias is real, not noise


def test_skew_risk_and_masks():
    d = jnp.float64
    p = inv.InventoryEstParams(max_position=np.array([2.0, 2.0, 1.0]), target=np.array([0.0, 0.5, 0.0]))
    s = inv.init(p, 3, d)._replace(position=jnp.asarray([1.0, -1.0, 5.0]), avg_entry=jnp.asarray([100.0, 100.0, 10.0]))
    np.testing.assert_allclose(np.asarray(inv.inventory_skew(p, s)), [0.5, -0.75, 1.0])
    risk = inv.inventory_risk(s, jnp.asarray([200.0, 100.0, 20.0]), jnp.asarray([1e-3, 2e-3, 0.0]), 4.0)
    np.testing.assert_allclose(np.asarray(risk), [1.0 * 200 * 1e-3 * 2, 1.0 * 100 * 2e-3 * 2, 0.0], rtol=1e-14)
    # fills_valid off: nothing changes.
    o = obs_of(d, 3, t=1.0, dt=1.0, fill_bid_size=1.0, fill_bid_price=99.0)
    s2 = UPDATE(p, s, o._replace(fills_valid=jnp.asarray([False, True, False])))
    np.testing.assert_allclose(np.asarray(s2.position), [1.0, 0.0, 5.0])
    np.testing.assert_allclose(np.asarray(s2.realized_pnl), [0.0, 1.0, 0.0])
    np.testing.assert_array_equal(np.asarray(s2.n_fills), [[0, 0], [1, 0], [0, 0]])
    assert s2.fill_rate_bid[0] == 0.0 and s2.fill_rate_bid[1] > 0.0


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_bad_prices_and_edge_cases_give_no_nan(dtype):
    s = inv.init(P, 2, dtype)
    cases = (
        dict(dt=1.0),
        dict(dt=0.0, fills_valid=True, fill_bid_size=1.0, fill_bid_price=100.0),
        dict(dt=1e-30, fills_valid=True, fill_ask_size=3.0, fill_ask_price=101.0),
        dict(dt=1.0, fills_valid=True, fill_bid_size=1.0, fill_bid_price=np.nan, mid=102.0, book_valid=True),
        dict(dt=1.0, fills_valid=True, fill_ask_size=1.0, fill_ask_price=0.0),
        dict(dt=1.0, fills_valid=True, fill_bid_size=np.nan, fill_bid_price=100.0),
        dict(dt=1.0, fills_valid=True, fill_bid_size=-1.0, fill_bid_price=100.0),
    )
    for kw in cases:
        s = UPDATE(P, s, obs_of(dtype, 2, **kw))
        for leaf in s:
            assert bool(jnp.all(jnp.isfinite(leaf))), kw
            if jnp.issubdtype(leaf.dtype, jnp.floating):
                assert leaf.dtype == dtype
    # +1 at 100, -3 at 101 (short 2 at 101), +1 at the mid 102 (bad price): realized 1 + (-1) = 0;
    # -1 with price 0: booked at the entry (no mid), no PnL.
    np.testing.assert_allclose(np.asarray(s.position), [-2.0, -2.0])
    np.testing.assert_allclose(np.asarray(s.realized_pnl), [0.0, 0.0], atol=1e-4)
    np.testing.assert_allclose(np.asarray(s.avg_entry), [101.0, 101.0], rtol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_jit_vmap_equal_eager_and_dtype(dtype):
    n_a, n = 2, 10

    def path(seed):
        r = np.random.default_rng(seed)
        return [
            obs_of(
                dtype,
                n_a,
                t=k + 1.0,
                dt=1.0,
                fills_valid=True,
                fill_bid_size=(r.random(n_a) < 0.5) * r.random(n_a),
                fill_bid_price=100 + r.random(n_a),
                fill_ask_size=(r.random(n_a) < 0.5) * r.random(n_a),
                fill_ask_price=100 + r.random(n_a),
            )
            for k in range(n)
        ]

    paths = [path(1), path(2)]
    tol = 1e-5 if dtype == jnp.float32 else 1e-12
    check_eager_jit_vmap(
        lambda: inv.init(P, n_a, dtype),
        lambda s, o: inv.update(P, s, o),
        paths,
        dtype=dtype,
        rtol=tol,
        atol=tol,
        query=lambda s, o: (inv.unrealized_pnl(s, o.fill_bid_price), inv.inventory_skew(P, s)),
        # Unrealized PnL is position x (price - entry) at prices ~100: in float32 the jitted and eager
        # programs round the price differently, by a few ulps of 100 (1.2e-5 each).
        query_atol=1e-4 if dtype == jnp.float32 else tol,
    )


@pytest.mark.parametrize(
    "field, bad",
    [
        ("max_position", 0.0),
        ("max_position", np.array([1.0, -1.0])),
        ("target", np.nan),
        ("fill_rate_half_life_s", 0.0),
    ],
)
def test_invalid_params_raise(field, bad):
    with pytest.raises(ValueError, match=rf"InventoryEstParams\.{field} = "):
        dataclasses.replace(P, **{field: bad})
