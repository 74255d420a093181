"""Order-flow estimator: the O(1) Hawkes recursion against the spec's O(n) sum over event times, the
exact expected counts against an ODE integration and the stationary closed form, the world's own
intensity on identical counts, the volume imbalance, masks, jit/vmap and dtypes."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

from mmsim import observation
from mmsim.engine.estimators import order_flow as of
from tests.engine.estimators._harness import check_eager_jit_vmap, obs_of

P = of.OrderFlowEstParams(
    mu_buy=0.4, mu_sell=0.7, alpha_buy=0.5, alpha_sell=0.3, gamma=0.2, beta=1.5, imbalance_half_life_s=10.0
)


def seq(dtype, rows, n_assets=1):
    """rows of (dt, n_buy, n_sell, vol_buy, vol_sell, valid) -> list of observations."""
    out, t = [], 0.0
    for dt, nb, ns, vb, vs, ok in rows:
        t += dt
        out.append(obs_of(dtype, n_assets, t=t, dt=dt, n_buy=nb, n_sell=ns, vol_buy=vb, vol_sell=vs, trades_valid=ok))
    return out


EVENTS = [  # dt, n_buy, n_sell, vol_buy, vol_sell, trades_valid
    (0.3, 1, 0, 0.5, 0.0, True),
    (0.05, 0, 1, 0.0, 0.2, True),
    (1.2, 2, 0, 1.0, 0.0, True),
    (0.7, 0, 0, 0.0, 0.0, True),
    (0.01, 1, 3, 0.1, 0.9, True),
    (2.5, 0, 1, 0.0, 0.3, True),
    (0.4, 1, 1, 0.4, 0.4, True),
]


@pytest.mark.parametrize("dtype, rtol", [(jnp.float64, 1e-12), (jnp.float32, 2e-6)])
def test_recursion_equals_direct_sum_over_event_times(dtype, rtol):
    """The spec's compute_intensity: mu + sum over past events (t_i <= t) of alpha e^{-beta (t - t_i)}."""
    obs = seq(dtype, EVENTS)
    s = of.init(P, 1, dtype)
    times, buys, sells = [], [], []
    t = 0.0
    for (dt, nb, ns, *_), o in zip(EVENTS, obs):
        t += dt
        times.append(t)
        buys.append(nb)
        sells.append(ns)
        s = of.update(P, s, o)
        el = t - np.asarray(times)
        k = np.exp(-P.beta * el)
        lam_b = P.mu_buy + np.sum(k * (P.alpha_buy * np.asarray(buys) + P.gamma * np.asarray(sells)))
        lam_s = P.mu_sell + np.sum(k * (P.alpha_sell * np.asarray(sells) + P.gamma * np.asarray(buys)))
        lb, ls = of.intensity(P, s)
        assert lb.dtype == dtype and ls.dtype == dtype
        np.testing.assert_allclose(float(lb[0]), lam_b, rtol=rtol)
        np.testing.assert_allclose(float(ls[0]), lam_s, rtol=rtol)


def test_two_steps_by_hand():
    p = of.OrderFlowEstParams(
        mu_buy=1.0,
        mu_sell=2.0,
        alpha_buy=0.5,
        alpha_sell=0.25,
        gamma=0.125,
        beta=np.log(2.0),
        imbalance_half_life_s=1.0,
    )
    s = of.init(p, 1, jnp.float64)
    s = of.update(
        p, s, obs_of(jnp.float64, t=1.0, dt=1.0, n_buy=2, n_sell=1, vol_buy=3.0, vol_sell=1.0, trades_valid=True)
    )
    # ex_buy = 0.5*2 + 0.125*1 = 1.125; ex_sell = 0.25*1 + 0.125*2 = 0.5; imbalance = 0.5 * (2/4) = 0.25.
    np.testing.assert_allclose([s.ex_buy[0], s.ex_sell[0], s.imbalance[0]], [1.125, 0.5, 0.25], rtol=1e-14)
    s = of.update(
        p, s, obs_of(jnp.float64, t=2.0, dt=1.0, n_buy=0, n_sell=4, vol_buy=0.0, vol_sell=2.0, trades_valid=True)
    )
    # half-life 1 s: ex_buy = 1.125/2 + 0.125*4 = 1.0625; ex_sell = 0.25 + 0.25*4 = 1.25; imb = 0.25 + 0.5(-1 - 0.25).
    np.testing.assert_allclose([s.ex_buy[0], s.ex_sell[0], s.imbalance[0]], [1.0625, 1.25, -0.375], rtol=1e-14)
    lb, ls = of.intensity(p, s)
    np.testing.assert_allclose([lb[0], ls[0]], [2.0625, 3.25], rtol=1e-14)
    np.testing.assert_allclose(of.flow_imbalance(s)[0], -0.375, rtol=1e-14)


def test_imbalance_skips_empty_intervals_and_merges_their_time():
    p = dataclasses.replace(P, imbalance_half_life_s=2.0)
    s = of.init(p, 1, jnp.float64)
    s = of.update(p, s, obs_of(jnp.float64, t=1.0, dt=1.0, vol_buy=1.0, vol_sell=0.0, trades_valid=True))
    w1 = 1 - 2**-0.5
    np.testing.assert_allclose(s.imbalance[0], w1, rtol=1e-14)
    # Two intervals without volume: unchanged (not pulled towards 0), their time is kept.
    for t in (2.0, 3.0):
        s = of.update(p, s, obs_of(jnp.float64, t=t, dt=1.0, trades_valid=True))
        np.testing.assert_allclose(s.imbalance[0], w1, rtol=1e-14)
    np.testing.assert_allclose(s.imb_gap[0], 2.0)
    # Then a pure-sell interval of 1 s: weight over the merged 3 s span.
    s = of.update(p, s, obs_of(jnp.float64, t=4.0, dt=1.0, vol_buy=0.0, vol_sell=5.0, trades_valid=True))
    w3 = 1 - 2**-1.5
    np.testing.assert_allclose(s.imbalance[0], w1 + w3 * (-1 - w1), rtol=1e-14)
    assert s.imb_gap[0] == 0.0
    # Stays within [-1, 1] under any volumes.
    for _ in range(50):
        s = of.update(p, s, obs_of(jnp.float64, t=0.0, dt=100.0, vol_buy=0.0, vol_sell=1e30, trades_valid=True))
    assert -1.0 <= float(s.imbalance[0]) <= 1.0
    np.testing.assert_allclose(s.imbalance[0], -1.0)


def test_mask_off_counts_no_trades_but_time_passes():
    s0 = of.init(P, 2, jnp.float64)
    s0 = of.update(
        P, s0, obs_of(jnp.float64, 2, t=1.0, dt=1.0, n_buy=3, n_sell=1, vol_buy=2.0, vol_sell=1.0, trades_valid=True)
    )
    o = obs_of(jnp.float64, 2, t=2.0, dt=0.5, n_buy=5, n_sell=5, vol_buy=9.0, vol_sell=0.0)
    o = o._replace(trades_valid=jnp.asarray([False, True]))
    s = of.update(P, s0, o)
    d = np.exp(-P.beta * 0.5)
    np.testing.assert_allclose(s.ex_buy[0], s0.ex_buy[0] * d, rtol=1e-14)
    np.testing.assert_allclose(s.ex_sell[0], s0.ex_sell[0] * d, rtol=1e-14)
    assert s.imbalance[0] == s0.imbalance[0]
    np.testing.assert_allclose(s.ex_buy[1], s0.ex_buy[1] * d + 5 * (P.alpha_buy + P.gamma), rtol=1e-14)
    assert s.imbalance[1] > s0.imbalance[1]


def ode_counts(p, lam0, h):
    k = np.array([[p.alpha_buy, p.gamma], [p.gamma, p.alpha_sell]])
    mu = np.array([p.mu_buy, p.mu_sell])

    def rhs(_, y):
        m = y[:2]
        return np.concatenate([(k - p.beta * np.eye(2)) @ m + p.beta * mu, m])

    sol = solve_ivp(rhs, (0.0, h), np.concatenate([lam0, [0.0, 0.0]]), rtol=1e-11, atol=1e-12)
    return sol.y[2:, -1]


@pytest.mark.parametrize("h", [0.01, 0.7, 5.0, 60.0])
def test_expected_trades_matches_ode_integration(h):
    s = of.init(P, 1, jnp.float64)
    for o in seq(jnp.float64, EVENTS):
        s = of.update(P, s, o)
    lam0 = np.array([float(x[0]) for x in of.intensity(P, s)])
    nb, ns = of.expected_trades(P, s, h)
    np.testing.assert_allclose([nb[0], ns[0]], ode_counts(P, lam0, h), rtol=1e-8)
    if h == 0.01:  # the spec's lambda h is the first-order term
        np.testing.assert_allclose([nb[0], ns[0]], lam0 * h, rtol=2e-2)


@pytest.mark.parametrize("dtype, rtol", [(jnp.float64, 1e-10), (jnp.float32, 1e-5)])
def test_expected_trades_stationary_univariate(dtype, rtol):
    """gamma = 0: each side is a univariate Hawkes; from the stationary intensity mu / (1 - n) the
    expected count over h is mu h / (1 - n) exactly, for any h."""
    p = of.OrderFlowEstParams(mu_buy=0.3, mu_sell=1.1, alpha_buy=0.6, alpha_sell=0.2, gamma=0.0, beta=0.8)
    n_b, n_s = 0.6 / 0.8, 0.2 / 0.8
    s = of.init(p, 3, dtype)
    s = s._replace(
        ex_buy=jnp.full((3,), 0.3 / (1 - n_b) - 0.3, dtype), ex_sell=jnp.full((3,), 1.1 / (1 - n_s) - 1.1, dtype)
    )
    h = jnp.asarray([0.5, 10.0, 300.0], dtype)
    nb, ns = of.expected_trades(p, s, h)
    assert nb.dtype == dtype and ns.dtype == dtype
    np.testing.assert_allclose(np.asarray(nb), 0.3 * np.asarray(h) / (1 - n_b), rtol=rtol)
    np.testing.assert_allclose(np.asarray(ns), 1.1 * np.asarray(h) / (1 - n_s), rtol=rtol)
    # Zero horizon: nothing.
    z = of.expected_trades(p, s, 0.0)
    assert float(jnp.max(jnp.abs(z[0]))) == 0.0


def test_engine_intensity_equals_world_on_same_counts():
    from mmsim import rng
    from mmsim.world.processes import order_flow as world

    wp = world.FlowParams(mu_buy=0.4, mu_sell=0.7, alpha_buy=0.5, alpha_sell=0.3, gamma=0.2, beta=1.5)
    ep = of.OrderFlowEstParams(mu_buy=0.4, mu_sell=0.7, alpha_buy=0.5, alpha_sell=0.3, gamma=0.2, beta=1.5)
    n_a, dt, n_steps = 2, 0.2, 300
    for dtype, rtol in ((jnp.float64, 1e-12), (jnp.float32, 1e-5)):
        ws = world.init(wp, n_a, dtype, stationary=False)
        es = of.init(ep, n_a, dtype)
        key = rng.key(11)

        def body(carry, t):
            ws, es = carry
            ws, info = world.step(rng.fold_in(key, t), ws, wp, dt)
            o = observation.empty(n_a, dtype)._replace(
                t=(t + 1) * jnp.asarray(dt, dtype),
                dt=jnp.asarray(dt, dtype),
                n_buy=info.n_buy,
                n_sell=info.n_sell,
                vol_buy=info.vol_buy,
                vol_sell=info.vol_sell,
                trades_valid=jnp.ones((n_a,), bool),
            )
            es = of.update(ep, es, o)
            return (ws, es), (world.intensity(ws, wp), of.intensity(ep, es), info.n_buy + info.n_sell)

        _, (lw, le, n) = jax.jit(lambda: jax.lax.scan(body, (ws, es), jnp.arange(n_steps)))()
        assert float(jnp.sum(n)) > 100  # the comparison sees many events
        for a, b in zip(lw, le):
            assert b.dtype == dtype
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=rtol)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_jit_vmap_equal_eager_and_dtype(dtype):
    rows2 = [(dt, ns, nb, vs, vb, ok) for dt, nb, ns, vb, vs, ok in EVENTS]  # a second, mirrored path
    paths = [seq(dtype, EVENTS, 2), seq(dtype, rows2, 2)]

    tol = 2e-6 if dtype == jnp.float32 else 1e-13
    s_v, (lam_v, et_v) = check_eager_jit_vmap(
        lambda: of.init(P, 2, dtype),
        lambda s, o: of.update(P, s, o),
        paths,
        dtype=dtype,
        rtol=tol,
        atol=tol,
        query=lambda s, o: (of.intensity(P, s), of.expected_trades(P, s, 3.0)),
    )
    for leaf in jax.tree_util.tree_leaves(s_v):
        assert leaf.dtype == dtype


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_no_nan_on_edge_cases(dtype):
    s = of.init(P, 1, dtype)
    # First observation, empty, tiny and zero dt, zero volumes, huge counts.
    for kw in (
        dict(dt=1.0),
        dict(dt=1e-30, trades_valid=True),
        dict(dt=0.0, n_buy=1, trades_valid=True),
        dict(dt=1.0, vol_buy=0.0, vol_sell=0.0, trades_valid=True),
        dict(dt=1e6, n_buy=1e6, n_sell=0, vol_buy=1.0, trades_valid=True),
    ):
        s = of.update(P, s, obs_of(dtype, **kw))
        for leaf in s:
            assert leaf.dtype == dtype and bool(jnp.all(jnp.isfinite(leaf))), kw
    for h in (0.0, 1e-6, 1.0, 3600.0):
        for x in of.expected_trades(P, s, h):
            assert bool(jnp.all(jnp.isfinite(x))) and bool(jnp.all(x >= 0))


@pytest.mark.parametrize(
    "field, bad",
    [
        ("mu_buy", -1.0),
        ("mu_sell", np.nan),
        ("alpha_buy", -0.1),
        ("gamma", -0.1),
        ("beta", 0.0),
        ("imbalance_half_life_s", 0.0),
        ("alpha_buy", 1.6),
    ],
)
def test_invalid_params_raise(field, bad):
    with pytest.raises(ValueError, match=rf"OrderFlowEstParams\.{field} = "):
        dataclasses.replace(P, **{field: bad})


def test_explosive_branching_refused_per_asset():
    with pytest.raises(ValueError, match="spectral radius"):
        of.OrderFlowEstParams(alpha_buy=np.array([0.5, 1.0]), alpha_sell=0.5, gamma=0.2, beta=1.0)
