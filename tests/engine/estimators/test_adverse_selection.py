"""Adverse-selection estimator: realized post-fill moves by hand (sign and magnitude), the time-decayed
mean, slot bookkeeping (freeing, overwriting the oldest, drop count), the logistic alpha, masks,
no NaN without fills, jit/vmap and dtypes."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmsim.engine.estimators import adverse_selection as asel
from tests.engine.estimators._harness import check_eager_jit_vmap, obs_of

UPDATE = jax.jit(asel.update)  # compiled once per shape: fast hand-made sequences (eager is tested below)

P = asel.AdverseSelectionEstParams(horizon_s=1.0, as_half_life_s=2.0)


def zeros(n=1, dtype=jnp.float64):
    z = jnp.zeros((n,), dtype)
    return z, z, z, jnp.ones((n,), dtype)  # quiet market: liquidation ratio 1


def step(p, s, dtype=jnp.float64, n=1, **kw):
    kw.setdefault("book_valid", True)
    kw.setdefault("fills_valid", True)
    return UPDATE(p, s, obs_of(dtype, n, **kw), *zeros(n, dtype))


@pytest.mark.parametrize("dtype, rtol", [(jnp.float64, 1e-12), (jnp.float32, 1e-4)])
def test_realized_sign_and_magnitude_by_hand(dtype, rtol):
    s = asel.init(P, 1, dtype)
    s = step(P, s, dtype, t=1.0, dt=1.0, mid=100.0, fill_bid_size=0.1, fill_bid_price=99.95)
    assert bool(s.slot_live[0, 0].sum() == 1) and not bool(s.slot_live[0, 1].any())
    np.testing.assert_allclose(float(s.slot_due[0, 0, 0]), 2.0)
    s = step(P, s, dtype, t=1.5, dt=0.5, mid=99.9)  # not due yet
    assert float(s.realized_bid[0]) == 0.0 and float(s.weight_bid[0]) == 0.0
    # t = 2: the bid measurement is due; the mid fell 0.2 %: we were picked off (+0.002).
    # An ask fill in the same observation is recorded after the measurement.
    s = step(P, s, dtype, t=2.0, dt=0.5, mid=99.8, fill_ask_size=0.2, fill_ask_price=99.85)
    np.testing.assert_allclose(float(s.realized_bid[0]), 0.002, rtol=rtol)
    np.testing.assert_allclose(float(s.weight_bid[0]), 1.0)
    assert not bool(s.slot_live[0, 0].any())  # the bid slot is freed
    assert int(s.slot_live[0, 1].sum()) == 1
    # t = 3: after our sell the mid fell: favourable, negative adverse selection.
    s = step(P, s, dtype, t=3.0, dt=1.0, mid=99.6, fill_bid_size=0.1, fill_bid_price=99.55)
    ask_as = (99.6 - 99.8) / 99.8
    np.testing.assert_allclose(float(s.realized_ask[0]), ask_as, rtol=rtol)
    # t = 4: the second bid measurement: the mid rose (favourable); decayed mean with half-life 2 s:
    # the first measurement (at t = 2) has weight 2^{-2/2} = 0.5.
    s = step(P, s, dtype, t=4.0, dt=1.0, mid=99.9)
    b2 = -(99.9 - 99.6) / 99.6
    np.testing.assert_allclose(float(s.realized_bid[0]), (0.5 * 0.002 + b2) / 1.5, rtol=rtol)
    np.testing.assert_allclose(float(s.weight_bid[0]), 1.5, rtol=rtol)
    assert not bool(s.slot_live.any())
    ras = 0.5 * (abs((0.5 * 0.002 + b2) / 1.5) + abs(ask_as))
    np.testing.assert_allclose(float(asel.realized_adverse_selection(s)[0]), ras, rtol=rtol)
    np.testing.assert_allclose(float(asel.spread_adjustment(P, s)[0]), 0.15 * ras * 2.0, rtol=rtol)
    assert int(s.dropped[0]) == 0


def test_matches_plain_mean_on_a_random_sequence():
    """With a very long half-life the estimate is the plain mean of every completed measurement,
    recomputed here from the mid path; fills overlap (up to 4 pending per side)."""
    p = asel.AdverseSelectionEstParams(horizon_s=1.0, as_half_life_s=1e12, n_slots=8)
    rs = np.random.default_rng(3)
    n, dt = 400, 0.3
    t = dt * np.arange(1, n + 1)
    mid = 100.0 * np.exp(np.cumsum(2e-3 * rs.standard_normal(n)))
    fb = (rs.random(n) < 0.4) * 0.1
    fa = (rs.random(n) < 0.4) * 0.1
    s = asel.init(p, 1, jnp.float64)
    for k in range(n):
        s = step(
            p,
            s,
            t=t[k],
            dt=dt,
            mid=mid[k],
            fill_bid_size=fb[k],
            fill_ask_size=fa[k],
            fill_bid_price=mid[k],
            fill_ask_price=mid[k],
        )
    exp_b, exp_a = [], []
    for k in range(n):
        js = np.flatnonzero(t >= t[k] + 1.0)
        js = js[js > k]
        if len(js) == 0:
            continue
        mv = (mid[js[0]] - mid[k]) / mid[k]
        if fb[k] > 0:
            exp_b.append(-mv)
        if fa[k] > 0:
            exp_a.append(mv)
    np.testing.assert_allclose(float(s.realized_bid[0]), np.mean(exp_b), rtol=1e-9)
    np.testing.assert_allclose(float(s.realized_ask[0]), np.mean(exp_a), rtol=1e-9)
    np.testing.assert_allclose(float(s.weight_bid[0]), len(exp_b), rtol=1e-9)
    assert int(s.dropped[0]) == 0


def test_full_slots_overwrite_the_oldest_and_count():
    p = asel.AdverseSelectionEstParams(horizon_s=1.0, n_slots=2)
    s = asel.init(p, 1, jnp.float64)
    for i, m in enumerate((100.0, 101.0, 102.0)):
        s = step(p, s, t=0.1 * (i + 1), dt=0.1, mid=m, fill_bid_size=1.0, fill_bid_price=m)
    assert int(s.dropped[0]) == 1
    np.testing.assert_allclose(np.sort(np.asarray(s.slot_due[0, 0])), [1.2, 1.3])
    np.testing.assert_allclose(np.sort(np.asarray(s.slot_price[0, 0])), [101.0, 102.0])
    # t = 1.25: only the fill of t = 0.2 (mid 101) is due.
    s = step(p, s, t=1.25, dt=0.95, mid=100.0)
    np.testing.assert_allclose(float(s.realized_bid[0]), -(100.0 - 101.0) / 101.0, rtol=1e-12)
    assert int(s.slot_live[0, 0].sum()) == 1


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_sized_slots_drop_nothing_at_a_fixed_step(dtype):
    """Steps of dt with fills on both sides at every step: ceil(horizon / dt) + 1 slots (what the
    simulator's config gives) measure every fill but the last few, and drop none; one slot fewer
    than the pending count would drop."""
    for horizon, dt in ((1.0, 1.0), (1.0, 0.25), (0.7, 0.3)):
        n = int(np.ceil(horizon / dt - 1e-9)) + 1
        for slots, drops in ((n, False), (n - 2, True)):
            if slots < 1:
                continue
            p = asel.AdverseSelectionEstParams(horizon_s=horizon, as_half_life_s=1e12, n_slots=slots)
            s = asel.init(p, 1, dtype)
            for i in range(1, 41):
                s = step(
                    p,
                    s,
                    dtype,
                    t=np.float32(i * dt),
                    dt=dt,
                    mid=100.0 + i,
                    fill_bid_size=1.0,
                    fill_bid_price=100.0 + i,
                    fill_ask_size=1.0,
                    fill_ask_price=100.0 + i,
                )
            assert (int(s.dropped[0]) > 0) == drops, (horizon, dt, slots)
            if not drops:  # every fill older than the horizon was measured on both sides
                measured = sum(1 for i in range(1, 41) if (i * dt) + horizon <= 40 * dt + 1e-6)
                assert float(s.weight_bid[0]) == pytest.approx(measured, rel=1e-6)
                assert float(s.weight_ask[0]) == pytest.approx(measured, rel=1e-6)


def test_measurement_waits_for_a_valid_book_and_masks():
    s = asel.init(P, 2, jnp.float64)
    o = obs_of(
        jnp.float64, 2, t=0.0, dt=1.0, mid=100.0, book_valid=True, fill_bid_size=1.0, fill_bid_price=100.0
    )._replace(fills_valid=jnp.asarray([True, False]))
    s = UPDATE(P, s, o, *zeros(2))
    np.testing.assert_array_equal(np.asarray(s.slot_live[:, 0].sum(axis=1)), [1, 0])  # fills mask
    s = UPDATE(P, s, obs_of(jnp.float64, 2, t=1.5, dt=1.5, mid=0.0, book_valid=False), *zeros(2))
    assert bool(s.slot_live[0, 0].any()) and float(s.weight_bid[0]) == 0.0
    s = UPDATE(P, s, obs_of(jnp.float64, 2, t=2.0, dt=0.5, mid=101.0, book_valid=True), *zeros(2))
    np.testing.assert_allclose(float(s.realized_bid[0]), -0.01, rtol=1e-12)
    # A fill while the book is invalid is referenced to its fill price.
    s = UPDATE(
        P,
        s,
        obs_of(
            jnp.float64,
            2,
            t=3.0,
            dt=1.0,
            mid=0.0,
            book_valid=False,
            fills_valid=True,
            fill_ask_size=1.0,
            fill_ask_price=99.0,
        ),
        *zeros(2),
    )
    np.testing.assert_allclose(np.asarray(s.slot_price[:, 1].max(axis=1)), [99.0, 99.0])


def test_logistic_alpha():
    p = asel.AdverseSelectionEstParams()
    np.testing.assert_allclose(float(asel.predict_alpha(p, 0.0, 0.0, 0.0, 1.0, jnp.float64)[()]), 0.15, rtol=1e-12)
    n = 4
    fd = jnp.asarray([-2e-4, 0.0, 0.0, jnp.nan])
    vs = jnp.asarray([0.5, -1.0, 0.0, 0.0])
    fl = jnp.asarray([-0.4, 0.0, 1.0, 0.0])
    lr = jnp.asarray([3.0, 1.0, 0.5, jnp.inf])
    s = UPDATE(p, asel.init(p, n, jnp.float64), obs_of(jnp.float64, n, t=1.0, dt=1.0), fd, vs, fl, lr)
    b0 = math.log(0.15 / 0.85)
    z = np.array(
        [
            b0 + 5000 * 2e-4 + 0.5 + 0.4 + 0.5 * 2.0,  # |funding|, |flow|, excess liq ratio
            b0 - 1.0,  # calm: vol below implied lowers alpha
            b0 + 1.0,  # liquidation ratio below 1: no effect
            b0,
        ]
    )  # non-finite signals count as 0
    np.testing.assert_allclose(np.asarray(s.alpha), 1 / (1 + np.exp(-z)), rtol=1e-12)
    s0 = asel.init(p, n, jnp.float32)
    np.testing.assert_allclose(np.asarray(s0.alpha), 0.15, rtol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_no_nan_without_fills_and_on_edge_cases(dtype):
    s = asel.init(P, 2, dtype)
    for kw in (
        dict(t=0.0, dt=1.0),
        dict(t=1.0, dt=1.0, book_valid=True, mid=100.0),
        dict(t=2.0, dt=0.0, book_valid=True, mid=0.0, fills_valid=True, fill_bid_size=1.0),
        dict(t=3.0, dt=1e-30, book_valid=True, mid=100.0, fills_valid=True, fill_ask_size=1.0),
        dict(t=1e6, dt=1e6, book_valid=True, mid=1e5),
    ):
        s = UPDATE(P, s, obs_of(dtype, 2, **kw), *zeros(2, dtype))
        for leaf in jax.tree_util.tree_leaves(s):
            assert bool(jnp.all(jnp.isfinite(leaf))), kw
            if jnp.issubdtype(leaf.dtype, jnp.floating):
                assert leaf.dtype == dtype
    assert bool(jnp.all(jnp.isfinite(asel.spread_adjustment(P, s))))
    s = asel.init(P, 2, dtype)
    assert float(jnp.max(asel.spread_adjustment(P, s))) == 0.0


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_jit_vmap_equal_eager_and_dtype(dtype):
    p = asel.AdverseSelectionEstParams(horizon_s=0.5, n_slots=2)
    rs = np.random.default_rng(8)
    n, n_a = 12, 2

    def path(seed):
        r = np.random.default_rng(seed)
        mids = 100 * np.exp(np.cumsum(1e-3 * r.standard_normal((n, n_a)), axis=0))
        out = []
        for k in range(n):
            out.append(
                obs_of(
                    dtype,
                    n_a,
                    t=0.2 * (k + 1),
                    dt=0.2,
                    mid=mids[k],
                    book_valid=True,
                    fills_valid=True,
                    fill_bid_size=(r.random(n_a) < 0.7) * 1.0,
                    fill_ask_size=(r.random(n_a) < 0.5) * 1.0,
                    fill_bid_price=mids[k],
                    fill_ask_price=mids[k],
                )
            )
        return out

    paths = [path(1), path(2)]
    drv = tuple(jnp.asarray(rs.standard_normal(n_a) * 0.1, dtype) for _ in range(4))
    tol = 1e-5 if dtype == jnp.float32 else 1e-12
    s_v, adj_v = check_eager_jit_vmap(
        lambda: asel.init(p, n_a, dtype),
        lambda s, o: asel.update(p, s, o, *drv),
        paths,
        dtype=dtype,
        rtol=tol,
        atol=1e-9,
        query=lambda s, o: asel.spread_adjustment(p, s),
    )
    assert int(jnp.sum(s_v.dropped)) > 0 and float(jnp.min(s_v.weight_bid)) > 0  # slots recycled and full
    assert adj_v.dtype == dtype


@pytest.mark.parametrize(
    "field, bad",
    [
        ("horizon_s", 0.0),
        ("as_half_life_s", -1.0),
        ("beta_0", np.nan),
        ("beta_liq", np.inf),
        ("safety", -1.0),
        ("n_slots", 0),
        ("n_slots", 17),
        ("n_slots", 2.5),
    ],
)
def test_invalid_params_raise(field, bad):
    with pytest.raises(ValueError, match=rf"AdverseSelectionEstParams\.{field} = "):
        dataclasses.replace(P, **{field: bad})
