"""Margin account: hand-worked fills, fees, spread capture, margins, funding, liquidation, the exact
PnL decomposition, and the hard inventory limit of ``limit_sizes``.

All arithmetic is float64 and checked against numbers worked out by hand in the comments.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmsim import observation
from mmsim.engine import account as acct

A = 2  # two assets on one cross-margin account; asset 1 is flat unless a test says otherwise
TEMPLATE = jax.tree_util.tree_map(np.asarray, observation.empty(A, jnp.float64))

_update = jax.jit(acct.update)
_limit = jax.jit(acct.limit_sizes)


def aparams(**kw) -> acct.AccountParams:
    p = acct.AccountParams(**kw)
    return dataclasses.replace(p, **{f.name: np.asarray(getattr(p, f.name), np.float64) for f in dataclasses.fields(p)})


def obs(
    t,
    mid,
    *,
    dt=1.0,
    fill_bid=(0.0, 0.0),
    bid_px=(0.0, 0.0),
    fill_ask=(0.0, 0.0),
    ask_px=(0.0, 0.0),
    settled=(False, False),
    rate=(0.0, 0.0),
    book=True,
    fills=True,
    funding=True,
):
    f64 = lambda v: np.broadcast_to(np.asarray(v, np.float64), (A,))  # noqa: E731
    b = lambda v: np.broadcast_to(np.asarray(v, bool), (A,))  # noqa: E731
    mid = f64(mid)
    return TEMPLATE._replace(
        t=np.float64(t),
        dt=np.float64(dt),
        mid=mid,
        best_bid=mid - 0.05,
        best_ask=mid + 0.05,
        fill_bid_size=f64(fill_bid),
        fill_bid_price=f64(bid_px),
        fill_ask_size=f64(fill_ask),
        fill_ask_price=f64(ask_px),
        funding_settled=b(settled),
        settled_rate=f64(rate),
        book_valid=b(book),
        fills_valid=b(fills),
        funding_valid=b(funding),
    )


def run(params, observations):
    state = acct.init(params, A, jnp.float64)
    out = []
    for o in observations:
        state, info = _update(params, state, o)
        out.append((state, info))
    return out


def check_pnl_identity(params, state, info):
    np.testing.assert_allclose(
        float(acct.total_pnl(state)), float(info.equity) - float(params.initial_equity), rtol=0, atol=1e-9
    )


P1 = dict(
    initial_equity=10_000.0,
    leverage=10.0,
    maintenance_margin=0.01,
    maker_fee=-1e-4,
    liquidation_fee=0.005,
    liquidation_slippage=0.001,
    max_inventory=5.0,
    as_horizon_s=5.0,
)


def test_fills_fees_spread_capture_and_margins_by_hand():
    p = aparams(**P1)
    (s1, i1), (s2, i2) = run(
        p,
        [
            obs(1.0, [100.0, 50.0], fill_bid=[2.0, 0.0], bid_px=[99.5, 0.0]),
            obs(2.0, [101.0, 50.0], fill_ask=[1.0, 0.0], ask_px=[100.6, 0.0], fill_bid=[0.0, 4.0], bid_px=[0.0, 49.9]),
        ],
    )
    # Step 1: buy 2 @ 99.5 against mid 100; rebate 1e-4 of 199.
    np.testing.assert_allclose(float(s1.cash), 10_000.0 - 199.0 + 0.0199, rtol=1e-15)
    np.testing.assert_array_equal(np.asarray(s1.position), [2.0, 0.0])
    np.testing.assert_allclose(float(s1.pnl_spread), 2 * 0.5, rtol=1e-14)
    np.testing.assert_allclose(float(s1.pnl_fees), 0.0199, rtol=1e-12)
    np.testing.assert_allclose(float(i1.equity), 9801.0199 + 200.0, rtol=1e-15)
    np.testing.assert_allclose(float(i1.notional), 200.0, rtol=1e-15)
    np.testing.assert_allclose(float(i1.maintenance), 0.01 * 200.0, rtol=1e-14)
    np.testing.assert_allclose(float(i1.margin_ratio), 10_001.0199 / 2.0, rtol=1e-14)
    np.testing.assert_allclose(float(i1.available_margin), 10_001.0199 - 200.0 / 10.0, rtol=1e-14)
    assert bool(s1.alive) and not bool(i1.liquidated_now)
    check_pnl_identity(p, s1, i1)
    # Step 2: sell 1 @ 100.6 (quoted against the previous mid, 100) and buy 4 @ 49.9 (mid 50).
    np.testing.assert_allclose(float(s2.pnl_spread), 1.0 + 0.6 + 0.4, rtol=1e-13)
    np.testing.assert_allclose(float(s2.pnl_fees), 0.0199 + 1e-4 * (100.6 + 4 * 49.9), rtol=1e-12)
    np.testing.assert_allclose(float(s2.cash), 9801.0199 + 100.6 - 199.6 + 1e-4 * 300.2, rtol=1e-15)
    np.testing.assert_array_equal(np.asarray(s2.position), [1.0, 4.0])
    # Mark to market of q = 1 over dmid = 1, split by the decaying fill inventory y = 2 e^{-1/5} - 1.
    y = 2.0 * np.exp(-1.0 / 5.0) - 1.0
    np.testing.assert_allclose(float(s2.pnl_adverse), y, rtol=1e-13)
    np.testing.assert_allclose(float(s2.pnl_inventory), 1.0 - y, rtol=1e-13)
    np.testing.assert_allclose(float(i2.maintenance), 0.01 * (101.0 + 200.0), rtol=1e-14)
    np.testing.assert_allclose(float(i2.available_margin), float(i2.equity) - 301.0 / 10.0, rtol=1e-14)
    np.testing.assert_array_equal(np.asarray(s2.volume_bid), [2.0, 4.0])
    np.testing.assert_array_equal(np.asarray(s2.volume_ask), [1.0, 0.0])
    np.testing.assert_array_equal(np.asarray(s2.n_fills), [[1, 1], [1, 0]])
    check_pnl_identity(p, s2, i2)


@pytest.mark.parametrize("fee", [2e-4, -1e-4, 0.0])
def test_maker_fee_and_rebate(fee):
    p = aparams(**{**P1, "maker_fee": fee})
    ((s, i),) = run(
        p, [obs(1.0, [100.0, 50.0], fill_bid=[2.0, 0.0], bid_px=[99.5, 0.0], fill_ask=[0.0, 1.0], ask_px=[0.0, 50.2])]
    )
    notional = 2 * 99.5 + 50.2
    np.testing.assert_allclose(float(s.pnl_fees), -fee * notional, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(float(s.cash), 10_000.0 - 199.0 + 50.2 - fee * notional, rtol=1e-15)
    np.testing.assert_allclose(float(s.pnl_spread), 2 * 0.5 + 0.2, rtol=1e-12)
    check_pnl_identity(p, s, i)


def test_taker_executions_pay_the_spread_and_the_taker_fee():
    """A taker order's execution (observation.fill_take_*): cash moves by its notional, the taker
    fee is charged on it, its spread capture is negative (the price paid through the mid the order
    was sent against), and it joins the recent fills of the adverse-selection attribution."""
    p = aparams(**{**P1, "taker_fee": 5e-4})
    tmpl = jax.tree_util.tree_map(np.asarray, observation.empty(A, jnp.float64, takes=True))
    o1 = obs(1.0, [100.0, 50.0], fill_bid=[2.0, 0.0], bid_px=[99.5, 0.0])
    o1 = tmpl._replace(**{f: getattr(o1, f) for f in o1._fields if getattr(o1, f) is not None})
    # Step 2: sell 1.5 of asset 0 at 100.9 (mid was 101 when the order went out) with a taker order.
    o2 = obs(2.0, [101.5, 50.0])
    o2 = tmpl._replace(**{f: getattr(o2, f) for f in o2._fields if getattr(o2, f) is not None})._replace(
        fill_take_size=np.asarray([-1.5, 0.0]), fill_take_price=np.asarray([100.9, 0.0])
    )
    o_mid = obs(1.5, [101.0, 50.0])  # the mid the order was sent against
    o_mid = tmpl._replace(**{f: getattr(o_mid, f) for f in o_mid._fields if getattr(o_mid, f) is not None})
    state = acct.init(p, A, jnp.float64)
    state, _ = _update(p, state, o1)
    state, _ = _update(p, state, o_mid)
    s2, i2 = _update(p, state, o2)
    np.testing.assert_allclose(np.asarray(s2.position), [0.5, 0.0], rtol=0, atol=1e-15)
    fee = 5e-4 * 1.5 * 100.9
    np.testing.assert_allclose(float(s2.cash), float(state.cash) + 1.5 * 100.9 - fee, rtol=1e-15)
    np.testing.assert_allclose(float(s2.pnl_fees - state.pnl_fees), -fee, rtol=1e-12)
    np.testing.assert_allclose(float(s2.pnl_spread - state.pnl_spread), -1.5 * 0.1, rtol=1e-9)
    # recent fills: 2 * exp(-2/5) from step 1 (two observations later), minus the 1.5 sold.
    np.testing.assert_allclose(float(s2.recent_fills[0]), 2.0 * np.exp(-2.0 / 5.0) - 1.5, rtol=1e-12)
    np.testing.assert_array_equal(np.asarray(s2.n_fills), np.asarray(state.n_fills))  # fills of our quotes only
    check_pnl_identity(p, s2, i2)
    # Not counted once the account is dead.
    dead = state._replace(alive=jnp.asarray(False))
    s3, _ = _update(p, dead, o2)
    np.testing.assert_array_equal(np.asarray(s3.position), np.asarray(dead.position))


def test_funding_sign_long_pays_positive_rate():
    p = aparams(**P1)
    out = run(
        p,
        [
            obs(1.0, [100.0, 50.0], fill_bid=[1.0, 0.0], bid_px=[100.0, 0.0], fill_ask=[0.0, 4.0], ask_px=[0.0, 50.0]),
            # Settlement on both: long 1 of asset 0 at +1e-4 pays 0.01; short 4 of asset 1 at +2e-4 receives 0.04.
            obs(2.0, [100.0, 50.0], settled=True, rate=[1e-4, 2e-4]),
            # A negative rate reverses both.
            obs(3.0, [100.0, 50.0], settled=True, rate=[-1e-4, -2e-4]),
            # Not settled or not valid: nothing.
            obs(4.0, [100.0, 50.0], settled=False, rate=[1e-2, 1e-2]),
            obs(5.0, [100.0, 50.0], settled=True, rate=[1e-2, 1e-2], funding=False),
        ],
    )
    cash = [float(s.cash) for s, _ in out]
    np.testing.assert_allclose(cash[1] - cash[0], -0.01 + 0.04, rtol=1e-9)
    np.testing.assert_allclose(float(out[1][0].pnl_funding), 0.03, rtol=1e-9)
    np.testing.assert_allclose(cash[2] - cash[1], 0.01 - 0.04, rtol=1e-9)
    assert cash[4] == cash[3] == cash[2]
    for s, i in out:
        check_pnl_identity(p, s, i)


P_LIQ = dict(
    initial_equity=100.0,
    leverage=10.0,
    maintenance_margin=0.05,
    maker_fee=0.0,
    liquidation_fee=0.005,
    liquidation_slippage=0.001,
    max_inventory=10.0,
    as_horizon_s=5.0,
)


def test_liquidation_arithmetic_and_dead_account():
    p = aparams(**P_LIQ)
    # Long 5 @ 100 with 100 of equity: equity = 5 m - 400, maintenance 0.25 m -> liquidated at m <= 84.2105...
    out = run(
        p,
        [
            obs(1.0, [100.0, 50.0], fill_bid=[5.0, 0.0], bid_px=[100.0, 0.0]),
            obs(2.0, [84.22, 50.0]),
            obs(3.0, [84.0, 50.0]),
            obs(4.0, [90.0, 50.0], fill_bid=[1.0, 0.0], bid_px=[89.0, 0.0], fill_ask=[0.0, 2.0], ask_px=[0.0, 51.0]),
            obs(5.0, [80.0, 50.0], settled=True, rate=[1e-3, 1e-3]),
        ],
    )
    (s1, i1), (s2, i2), (s3, i3), (s4, i4), (s5, i5) = out
    np.testing.assert_allclose(float(i1.margin_ratio), 100.0 / 25.0, rtol=1e-14)
    # Just above the threshold: alive, equity 21.1 > maintenance 21.055.
    assert bool(s2.alive) and not bool(i2.liquidated_now)
    np.testing.assert_allclose(float(i2.margin_ratio), 21.1 / 21.055, rtol=1e-12)
    # Equity 20 <= maintenance 21: close 5 at 84 (1 - 0.001) = 83.916, fee 0.005 x 420 = 2.1.
    assert bool(i3.liquidated_now) and bool(s3.liquidated) and not bool(s3.alive)
    assert float(s3.liq_time) == 3.0
    np.testing.assert_array_equal(np.asarray(s3.position), [0.0, 0.0])
    np.testing.assert_allclose(float(s3.cash), -400.0 + 5 * 83.916 - 2.1, rtol=1e-13)
    np.testing.assert_allclose(float(s3.pnl_liquidation), -(5 * 84.0 * 0.001 + 2.1), rtol=1e-13)
    np.testing.assert_allclose(float(i3.equity), 17.48, rtol=1e-13)
    np.testing.assert_allclose(float(i3.margin_ratio), acct.FLAT_MARGIN_RATIO)
    # Dead: later fills are ignored, nothing moves, the liquidation time stays.
    for s, i in ((s4, i4), (s5, i5)):
        assert not bool(s.alive) and bool(s.liquidated) and not bool(i.liquidated_now)
        assert float(s.liq_time) == 3.0
        np.testing.assert_array_equal(np.asarray(s.position), [0.0, 0.0])
        assert float(s.cash) == float(s3.cash) and float(i.equity) == float(i3.equity)
    np.testing.assert_array_equal(np.asarray(s5.volume_bid), [5.0, 0.0])
    for s, i in out:
        check_pnl_identity(p, s, i)
    # ... and its quotes are pulled.
    bsz, asz, bok, aok = _limit(p, s5, i5, np.array([80.0, 50.0]), np.array([0.1, 0.1]), np.array([0.1, 0.1]))
    assert not np.asarray(bok).any() and not np.asarray(aok).any()


def test_short_liquidation_closes_above_mid():
    p = aparams(**P_LIQ)
    # Short 5 @ 100: equity 600 - 5 m, maintenance 0.25 m -> liquidated at m >= 114.28...
    (_, _), (s, i) = run(
        p, [obs(1.0, [100.0, 50.0], fill_ask=[5.0, 0.0], ask_px=[100.0, 0.0]), obs(2.0, [115.0, 50.0])]
    )
    assert bool(i.liquidated_now) and float(s.liq_time) == 2.0
    np.testing.assert_allclose(float(s.cash), 600.0 - 5 * 115.0 * 1.001 - 0.005 * 575.0, rtol=1e-13)
    check_pnl_identity(p, s, i)


def test_pnl_components_sum_to_equity_change_on_a_random_stream():
    rs = np.random.default_rng(7)
    p = aparams(
        initial_equity=300.0,
        leverage=20.0,
        maintenance_margin=0.02,
        maker_fee=-5e-5,
        liquidation_fee=0.004,
        liquidation_slippage=0.002,
        max_inventory=50.0,
        as_horizon_s=3.0,
    )
    mid = np.array([100.0, 50.0])
    state = acct.init(p, A, jnp.float64)
    liquidated = False
    for t in range(1, 81):
        drift = np.array([-0.4, 0.1]) if t > 40 else 0.0
        new_mid = mid * np.exp(0.004 * rs.standard_normal(A) + 0.004 * drift)
        fb = rs.uniform(0, 3, A) * (rs.uniform(size=A) < 0.5)
        fa = rs.uniform(0, 1, A) * (rs.uniform(size=A) < 0.3)
        o = obs(
            float(t),
            new_mid,
            dt=rs.uniform(0.2, 2.0),
            fill_bid=fb,
            bid_px=mid - 0.05,
            fill_ask=fa,
            ask_px=mid + 0.05,
            settled=rs.uniform(size=A) < 0.1,
            rate=rs.normal(0, 1e-3, A),
            book=rs.uniform() < 0.95,
        )
        state, info = _update(p, state, o)
        check_pnl_identity(p, state, info)
        liquidated |= bool(info.liquidated_now)
        mid = np.where(np.asarray(o.book_valid), new_mid, mid)
    assert liquidated, "the stream is meant to end in a liquidation"


def test_limit_sizes_hard_inventory_limit_and_margin_cap():
    p = aparams(**{**P1, "max_inventory": 1.0})
    mid = np.array([100.0, 50.0])
    st = acct.init(p, A, jnp.float64)._replace(position=jnp.array([0.8, -0.8]))
    info = acct.margins(p, st, mid)
    bsz, asz, bok, aok = map(np.asarray, _limit(p, st, info, mid, np.array([0.5, 0.5]), np.array([0.5, 0.5])))
    # Long 0.8: buying 0.5 would reach 1.3 > 1 -> bid not quoted; selling is fine (and vice versa).
    np.testing.assert_array_equal(bok, [False, True])
    np.testing.assert_array_equal(aok, [True, False])
    np.testing.assert_array_equal(bsz[1], 0.5)
    np.testing.assert_array_equal(asz[0], 0.5)
    # Exactly reaching the limit is allowed.
    bsz, asz, bok, aok = map(np.asarray, _limit(p, st, info, mid, np.array([0.2, 1.8]), np.array([1.8, 0.2])))
    np.testing.assert_array_equal(bok, [True, True])
    np.testing.assert_array_equal(aok, [True, True])
    # Margin cap on the side that adds: 10 of available margin x leverage 10 / mid 100 = 1 unit.
    p2 = aparams(**{**P1, "initial_equity": 10.0, "max_inventory": 5.0})
    st2 = acct.init(p2, A, jnp.float64)
    info2 = acct.margins(p2, st2, mid)
    np.testing.assert_allclose(float(info2.available_margin), 10.0)
    bsz, asz, bok, aok = map(np.asarray, _limit(p2, st2, info2, mid, np.array([2.0, 0.5]), np.array([0.0, 3.0])))
    np.testing.assert_allclose(bsz, [1.0, 0.5], rtol=1e-14)
    np.testing.assert_allclose(asz, [0.0, 2.0], rtol=1e-14)
    np.testing.assert_array_equal(bok, [True, True])
    np.testing.assert_array_equal(aok, [False, True])  # a zero size is not quoted


@pytest.mark.parametrize(
    "field, value",
    [
        ("initial_equity", 0.0),
        ("leverage", -1.0),
        ("maintenance_margin", 0.0),
        ("maintenance_margin", 0.2),
        ("maker_fee", 0.05),
        ("taker_fee", -1e-4),
        ("taker_fee", 0.05),
        ("liquidation_fee", -0.01),
        ("liquidation_slippage", 0.9),
        ("max_inventory", 0.0),
        ("as_horizon_s", 0.0),
    ],
)
def test_bad_parameters_name_the_field(field, value):
    with pytest.raises(ValueError, match=rf"AccountParams\.{field}\b"):
        acct.AccountParams(**{field: value})
