"""Liquidation estimator: the marked-Hawkes recursion against the spec's sum over marks, the world's
total intensity on identical volumes, cascade hysteresis, direction, quote pulling, masks, the
volume-rate EWMAs, jit/vmap and dtypes."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmsim import observation
from mmsim.engine.estimators import liquidation as lq
from tests.engine.estimators._harness import check_eager_jit_vmap, obs_of

P = lq.LiquidationEstParams(mu=0.01, alpha=0.3, beta=0.2)


MARKS = [  # dt, liq_long, liq_short
    (1.0, 0.5, 0.0),
    (0.2, 0.0, 1.5),
    (3.0, 2.0, 0.1),
    (10.0, 0.0, 0.0),
    (0.5, 0.25, 0.25),
    (7.0, 4.0, 0.0),
]


@pytest.mark.parametrize("dtype, rtol", [(jnp.float64, 1e-12), (jnp.float32, 2e-6)])
def test_recursion_equals_direct_sum_over_marks(dtype, rtol):
    s = lq.init(P, 1, dtype)
    times, sizes, t = [], [], 0.0
    for dt, ll, ls in MARKS:
        t += dt
        times.append(t)
        sizes.append(ll + ls)
        s = lq.update(P, s, obs_of(dtype, t=t, dt=dt, liq_long=ll, liq_short=ls, liq_valid=True))
        direct = P.mu + np.sum(P.alpha * np.asarray(sizes) * np.exp(-P.beta * (t - np.asarray(times))))
        lam = lq.intensity(P, s)
        assert lam.dtype == dtype
        np.testing.assert_allclose(float(lam[0]), direct, rtol=rtol)


def test_hysteresis_by_hand():
    # mu = 1, alpha = 1, half-life of the excitation 1 s: enter above 3, leave below 1.5.
    p = lq.LiquidationEstParams(mu=1.0, alpha=1.0, beta=np.log(2.0), enter_mult=3.0, exit_mult=1.5, pull_mult=3.2)
    s = lq.init(p, 1, jnp.float64)
    steps = [  # liq volume, expected lambda, active, pull
        (1.0, 2.0, False, False),  # ex 1
        (2.0, 3.5, True, True),  # ex 0.5 + 2 = 2.5 > 2: on; 3.5 > 3.2: pull
        (0.0, 2.25, True, False),  # ex 1.25: below enter, above exit: stays on
        (0.0, 1.625, True, False),  # ex 0.625: still >= 1.5
        (0.0, 1.3125, False, False),  # ex 0.3125: below 1.5: off
        (1.5, 2.65625, False, False),  # ex 0.15625 + 1.5 = 1.65625: above exit but below enter: stays off
        (2.0, 3.828125, True, True),  # ex 0.828125 + 2: on again
    ]
    for i, (v, lam, act, pull) in enumerate(steps):
        s = lq.update(p, s, obs_of(jnp.float64, t=i + 1.0, dt=1.0, liq_long=v, liq_valid=True))
        np.testing.assert_allclose(lq.intensity(p, s)[0], lam, rtol=1e-14)
        assert bool(s.active[0]) == act, i
        assert bool(lq.should_pull_quotes(p, s)[0]) == pull, i
        np.testing.assert_allclose(lq.tail_risk_multiplier(p, s)[0], lam, rtol=1e-14)


def test_direction():
    p = lq.LiquidationEstParams(mu=1.0, alpha=1.0, beta=0.1, direction_half_life_s=10.0, direction_ratio=1.5)
    n = 4
    s = lq.init(p, n, jnp.float64)
    # Asset 0: longs liquidated (downward), 1: shorts (upward), 2: balanced, 3: long-heavy but no cascade.
    ll = jnp.asarray([5.0, 1.0, 2.0, 0.05])
    ls = jnp.asarray([1.0, 5.0, 1.9, 0.0])
    o = obs_of(jnp.float64, n, t=1.0, dt=1.0, liq_valid=True)._replace(liq_long=ll, liq_short=ls)
    s = lq.update(p, s, o)
    np.testing.assert_array_equal(np.asarray(s.active), [True, True, True, False])
    d = lq.cascade_direction(p, s)
    assert d.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(d), [-1, 1, 0, 0])
    # The EWMAs are volume rates: one 1 s interval with weight w = 1 - 2^{-1/10}.
    w = 1 - 2**-0.1
    np.testing.assert_allclose(np.asarray(s.vol_long), w * np.asarray(ll), rtol=1e-13)
    np.testing.assert_allclose(np.asarray(s.vol_short), w * np.asarray(ls), rtol=1e-13)
    # No cascade at all: direction 0 everywhere.
    s0 = lq.init(p, n, jnp.float64)
    np.testing.assert_array_equal(np.asarray(lq.cascade_direction(p, s0)), [0, 0, 0, 0])


def test_volume_rate_converges_on_constant_stream():
    p = lq.LiquidationEstParams(direction_half_life_s=5.0)
    s = lq.init(p, 1, jnp.float64)
    for i in range(400):  # 80 half-lives of 0.5 s steps: 0.3 long and 0.1 short per step
        s = lq.update(p, s, obs_of(jnp.float64, t=0.5 * (i + 1), dt=0.5, liq_long=0.3, liq_short=0.1, liq_valid=True))
    np.testing.assert_allclose([s.vol_long[0], s.vol_short[0]], [0.6, 0.2], rtol=1e-12)


def test_mask_off():
    s0 = lq.init(P, 2, jnp.float64)
    s0 = lq.update(P, s0, obs_of(jnp.float64, 2, t=1.0, dt=1.0, liq_long=1.0, liq_short=0.5, liq_valid=True))
    o = obs_of(jnp.float64, 2, t=2.0, dt=2.0, liq_long=7.0, liq_short=7.0)._replace(
        liq_valid=jnp.asarray([False, True])
    )
    s = lq.update(P, s0, o)
    d = np.exp(-P.beta * 2.0)
    np.testing.assert_allclose(s.ex[0], s0.ex[0] * d, rtol=1e-14)  # time passed, no events counted
    assert s.vol_long[0] == s0.vol_long[0] and s.vol_short[0] == s0.vol_short[0]
    np.testing.assert_allclose(s.ex[1], s0.ex[1] * d + P.alpha * 14.0, rtol=1e-14)


def test_engine_total_intensity_equals_world():
    """Without price triggering the world's lambda_long + lambda_short is the engine's lambda with
    mu = mu_long + mu_short and alpha = alpha + alpha_cross, on the same liquidated volumes."""
    from mmsim import rng
    from mmsim.world.processes import liquidation as world

    wp = world.LiqParams(
        mu_long=0.02, mu_short=0.01, alpha=0.4, alpha_cross=0.1, beta=0.5, size_scale=0.1, size_tail=2.5, trigger=0.0
    )
    ep = lq.LiquidationEstParams(mu=0.03, alpha=0.5, beta=0.5)
    n_a, dt, n_steps = 3, 1.0, 2000
    for dtype, rtol in ((jnp.float64, 1e-12), (jnp.float32, 1e-5)):
        key = rng.key(5)

        def body(carry, t):
            ws, es = carry
            ws, info = world.step(rng.fold_in(key, t), ws, wp, dt)
            o = observation.empty(n_a, dtype)._replace(
                t=(t + 1) * jnp.asarray(dt, dtype),
                dt=jnp.asarray(dt, dtype),
                liq_long=info.vol_long,
                liq_short=info.vol_short,
                liq_valid=jnp.ones((n_a,), bool),
            )
            es = lq.update(ep, es, o)
            lw = sum(world.intensity(ws, wp))
            return (ws, es), (lw, lq.intensity(ep, es), info.n_long + info.n_short)

        init = (world.init(wp, n_a, dtype), lq.init(ep, n_a, dtype))
        _, (lw, le, n) = jax.jit(lambda: jax.lax.scan(body, init, jnp.arange(n_steps)))()
        assert float(jnp.sum(n)) > 50
        assert le.dtype == dtype
        np.testing.assert_allclose(np.asarray(le), np.asarray(lw), rtol=rtol)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_jit_vmap_equal_eager_and_dtype(dtype):
    def path(marks):
        out, t = [], 0.0
        for dt, ll, ls in marks:
            t += dt
            out.append(obs_of(dtype, 2, t=t, dt=dt, liq_long=ll, liq_short=ls, liq_valid=True))
        return out

    p = dataclasses.replace(P, mu=np.array([0.01, 0.5]))
    paths = [path(MARKS), path([(dt, b, a) for dt, a, b in MARKS])]

    tol = 2e-6 if dtype == jnp.float32 else 1e-13
    _, q_v = check_eager_jit_vmap(
        lambda: lq.init(p, 2, dtype),
        lambda s, o: lq.update(p, s, o),
        paths,
        dtype=dtype,
        rtol=tol,
        query=lambda s, o: (lq.tail_risk_multiplier(p, s), lq.should_pull_quotes(p, s), lq.cascade_direction(p, s)),
    )
    assert bool(jnp.any(q_v[1])) and bool(jnp.any(q_v[2] != 0))  # the sequence exercises the queries


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_no_nan_on_edge_cases(dtype):
    s = lq.init(P, 1, dtype)
    for kw in (
        dict(dt=1.0),
        dict(dt=0.0, liq_long=1.0, liq_valid=True),
        dict(dt=1e-30, liq_short=2.0, liq_valid=True),
        dict(dt=1e7, liq_valid=True),
        dict(dt=1.0, liq_long=-3.0, liq_valid=True),
    ):
        s = lq.update(P, s, obs_of(dtype, **kw))
        for leaf in s:
            assert bool(jnp.all(jnp.isfinite(leaf))), kw
            if jnp.issubdtype(leaf.dtype, jnp.floating):
                assert leaf.dtype == dtype
        assert bool(jnp.all(s.ex >= 0)) and bool(jnp.all(s.vol_long >= 0))
    assert bool(jnp.all(jnp.isfinite(lq.tail_risk_multiplier(P, s))))


@pytest.mark.parametrize(
    "field, bad",
    [
        ("mu", 0.0),
        ("alpha", -1.0),
        ("beta", 0.0),
        ("exit_mult", 1.0),
        ("exit_mult", 3.5),
        ("pull_mult", -1.0),
        ("direction_half_life_s", 0.0),
        ("direction_ratio", 0.9),
        ("enter_mult", np.inf),
    ],
)
def test_invalid_params_raise(field, bad):
    with pytest.raises(ValueError, match=rf"LiquidationEstParams\.{field} = "):
        dataclasses.replace(P, **{field: bad})
