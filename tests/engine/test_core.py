"""The market maker's step: compiled once, vmapped over paths, float32 and float64 on a stream from
the world (quotes fed back to the world's fills), warm-up, a liquidated account, and the order-flow
estimator's Hawkes intensity against the world's.

Compiles are the cost here, so every test shares three programs: the world step and the engine step
vmapped over ``N_PATHS`` paths in float64, and the engine step in float32.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmsim import engine, rng
from mmsim.engine import account as acct
from mmsim.engine import policy as pol
from mmsim.engine.estimators import order_flow as e_flow
from mmsim.world import market
from mmsim.world.processes import order_flow as p_flow

N_PATHS = 3
N_STEPS = 40
DT = 1.0
WARMUP_S = 20.0

MP = market.default_params()
# The engine's Hawkes estimator is given the world's order-flow parameters.
FLOW_EST = e_flow.OrderFlowEstParams(
    **{f: getattr(MP.flow, f) for f in ("mu_buy", "mu_sell", "alpha_buy", "alpha_sell", "gamma", "beta")}
)
EP = engine.EngineParams(
    policy=pol.PolicyParams(kind="spec", gamma=1e-3, k=1.0, min_spread_frac=1e-5),
    account=acct.AccountParams(initial_equity=10_000.0, leverage=20.0, maintenance_margin=0.005),
    flow=FLOW_EST,
    tick=MP.spread.tick,
    warmup_s=WARMUP_S,
)

TRACES = {"f64": 0, "f32": 0}


def _counted(tag):
    def step(p, s, o):
        TRACES[tag] += 1
        return engine.step(p, s, o)

    return step


ENGINE64 = jax.jit(jax.vmap(_counted("f64"), in_axes=(None, 0, 0)))
ENGINE32 = jax.jit(jax.vmap(_counted("f32"), in_axes=(None, 0, 0)))
WORLD64 = jax.jit(jax.vmap(lambda k, w, q: market.step(k, w, MP, DT, q)))


# Host-side (numpy) helpers: eager jnp ops would compile a small kernel for every leaf shape. Arrays
# handed to the jitted steps are put on the device, so every call has the same signature.


def batch(tree, n=N_PATHS):
    return jax.device_put(jax.tree_util.tree_map(lambda x: np.broadcast_to(np.asarray(x), (n,) + np.shape(x)), tree))


def take(tree, idx):
    return jax.device_put(jax.tree_util.tree_map(lambda x: np.asarray(x)[idx], tree))


def stack(trees):
    return jax.tree_util.tree_map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


def cast(tree, dtype):
    return jax.device_put(
        jax.tree_util.tree_map(
            lambda x: np.asarray(x).astype(dtype) if np.issubdtype(np.asarray(x).dtype, np.floating) else np.asarray(x),
            tree,
        )
    )


def all_finite(tree):
    leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]
    return all(np.all(np.isfinite(x)) for x in leaves if np.issubdtype(x.dtype, np.floating))


@pytest.fixture(scope="module")
def loop64():
    """World and engine in a closed loop, float64: the engine's quote of step t rests in the world
    during step t + 1. Returns per-step observations, quotes, infos and the final states."""
    keys = rng.path_keys(rng.key(11), 0, N_PATHS)
    world = batch(market.init(MP, jnp.float64))
    state = batch(engine.init(EP, jnp.float64))
    traces0 = TRACES["f64"]
    obs_, quotes, infos, states = [], [], [], []
    for t in range(N_STEPS):
        world, obs, _ = WORLD64(rng.fold_in(keys, t), world, state.quote)
        state, q, info = ENGINE64(EP, state, obs)
        obs_.append(obs), quotes.append(q), infos.append(info), states.append(state)
    return dict(obs=obs_, quotes=quotes, infos=infos, states=states, traces=TRACES["f64"] - traces0)


def test_compiles_once_and_never_retraces(loop64):
    assert loop64["traces"] == 1  # 40 calls with new data: only the first traced
    n = TRACES["f64"]
    s, o = loop64["states"][5], loop64["obs"][7]
    ENGINE64(EP, s, o)
    ENGINE64(dataclasses.replace(EP, warmup_s=3.0), s, o)  # new parameter values are data too
    assert TRACES["f64"] == n
    assert ENGINE64._cache_size() == 1


def test_float64_stream_is_finite_and_quotes_after_warmup(loop64):
    obs, quotes, infos = stack(loop64["obs"]), stack(loop64["quotes"]), stack(loop64["infos"])
    assert all_finite((obs, quotes, infos, loop64["states"][-1]))
    t = obs.t[:, 0]  # (steps,) same clock on every path
    on = quotes.bid_active | quotes.ask_active  # (steps, paths, A)
    assert not on[t < WARMUP_S].any(), "quoted before the warm-up"
    assert on[t >= WARMUP_S].any(axis=(0, 2)).all(), "every path quotes after the warm-up"
    assert (quotes.bid_active & quotes.ask_active)[t >= WARMUP_S + 1].mean() > 0.5
    both = quotes.bid_active & quotes.ask_active
    assert np.all(quotes.bid_price[both] < quotes.ask_price[both])
    # The quotes are on the tick grid and reach the world: some of them get filled.
    tick = MP.spread.tick
    px = quotes.bid_price[quotes.bid_active]
    np.testing.assert_allclose(px / tick, np.round(px / tick), atol=1e-6)
    assert (obs.fill_bid_size + obs.fill_ask_size).sum() > 0
    # The account books them: the PnL components add up to the equity change on every path.
    np.testing.assert_allclose(infos.pnl.sum(-1), infos.equity - EP.account.initial_equity, atol=1e-8)
    assert np.all(np.abs(infos.position) <= EP.account.max_inventory + 1e-12)


def test_vmapped_paths_are_independent(loop64):
    """Reordering the paths of a batch reorders the results, bit for bit."""
    s, o = loop64["states"][25], loop64["obs"][26]
    perm = np.array([2, 0, 1])
    a = ENGINE64(EP, s, o)
    b = ENGINE64(EP, take(s, perm), take(o, perm))
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x)[perm], np.asarray(y))


def test_float32_on_the_same_stream(loop64):
    state = batch(engine.init(EP, jnp.float32))
    for leaf in jax.tree_util.tree_leaves(state):
        assert not np.issubdtype(leaf.dtype, np.floating) or leaf.dtype == np.float32, leaf.dtype
    n_on = 0
    for t, o in enumerate(loop64["obs"]):
        state, q, info = ENGINE32(EP, state, cast(o, np.float32))
        assert all_finite((state, q, info)), f"non-finite at step {t}"
        n_on += int(np.sum(np.asarray(q.bid_active)))
    assert TRACES["f32"] == 1 and ENGINE32._cache_size() == 1
    for leaf in jax.tree_util.tree_leaves((state, q, info)):
        assert not np.issubdtype(leaf.dtype, np.floating) or leaf.dtype == np.float32, leaf.dtype
    assert n_on > 0
    # float32 tracks float64: same account (positions come from the same fills).
    np.testing.assert_allclose(
        np.asarray(state.account.position), np.asarray(loop64["states"][-1].account.position), atol=1e-6
    )


def test_liquidated_account_stops_quoting(loop64):
    s = loop64["states"][-1]
    o = loop64["obs"][-1]
    # A hand-made, very leveraged long of 30 units bought at the mid (1.8 M notional on 10 k of equity).
    a = s.account
    s = s._replace(account=a._replace(position=a.position + 30.0, cash=a.cash - 30.0 * np.asarray(a.last_mid).sum(-1)))

    def next_obs(o, move):
        mid = o.mid * (1.0 + move)
        return o._replace(
            t=o.t + DT,
            mid=mid,
            best_bid=o.best_bid * (1.0 + move),
            best_ask=o.best_ask * (1.0 + move),
            fill_bid_size=jnp.zeros_like(mid),
            fill_ask_size=jnp.zeros_like(mid),
        )

    # A flat step: still alive, but close to liquidation only the reducing side (the ask) is quoted.
    calm = next_obs(o, 0.0)
    s1, q1, i1 = ENGINE64(EP, s, calm)
    assert np.asarray(i1.alive).all() and not np.asarray(i1.liquidated_now).any()
    assert np.asarray(q1.ask_active).all() and not np.asarray(q1.bid_active).any()
    # -0.5 %: a loss of 9 k leaves about 1 k of equity against a maintenance margin of 8.96 k.
    crash = next_obs(calm, -0.005)
    s2, q2, i2 = ENGINE64(EP, s1, crash)
    assert np.asarray(i2.liquidated_now).all() and not np.asarray(i2.alive).any()
    np.testing.assert_array_equal(np.asarray(s2.account.liq_time), np.asarray(crash.t))
    np.testing.assert_array_equal(np.asarray(s2.account.position), 0.0)
    assert not np.asarray(q2.bid_active).any() and not np.asarray(q2.ask_active).any()
    # For good: later observations (even ones reporting fills) bring no quote back and no position.
    s3, o3 = s2, crash
    for _ in range(3):
        o3 = next_obs(o3, 0.001)._replace(fill_bid_size=jnp.full_like(o3.mid, 0.1), fill_bid_price=o3.best_bid)
        s3, q3, i3 = ENGINE64(EP, s3, o3)
        assert not np.asarray(q3.bid_active).any() and not np.asarray(q3.ask_active).any()
        np.testing.assert_array_equal(np.asarray(q3.bid_size), 0.0)
        np.testing.assert_array_equal(np.asarray(s3.account.position), 0.0)
        assert not np.asarray(i3.alive).any()


def test_order_flow_intensity_equals_the_worlds(loop64):
    """The world's discretised Hawkes flow (events of a step excite from the step's end) and the
    engine's recursion on the step's counts are the same recursion: fed the world's counts, the
    engine's intensity after observation t equals the world's intensity at the end of step t (the
    ``lam_*`` the world reports at the start of step t + 1), to float64 rounding.

    The engine starts with no excitation; from the world's stationary start the two differ by
    the initial excitation decayed over the elapsed time, ``ex_0 e^{-beta t}``, exactly.
    (In the composed world the observation's counts also include forced liquidations, which the
    engine counts as trades, as a live feed would; here the counts are the order flow's alone.)
    """
    n = 30
    keys = rng.path_keys(rng.key(5), 0, N_PATHS)

    def world(k, s0):
        def body(s, t):
            s, info = p_flow.step(rng.fold_in(k, t), s, MP.flow, DT, informed_frac=0.2)
            return s, (info, p_flow.intensity(s, MP.flow))

        return jax.lax.scan(body, s0, jnp.arange(n))[1]

    run = jax.jit(jax.vmap(world, in_axes=(0, None)))
    start0 = p_flow.init(MP.flow, 1, jnp.float64, stationary=False)  # empty history, like the engine
    start1 = p_flow.init(MP.flow, 1, jnp.float64)  # stationary start
    info0, lam0 = jax.tree_util.tree_map(np.asarray, run(keys, start0))
    info1, lam1 = jax.tree_util.tree_map(np.asarray, run(keys, start1))
    assert np.asarray(info0.n_buy).sum() > 0 and np.asarray(info0.n_sell).sum() > 0
    ex0 = np.asarray(start1.ex_buy)
    # Any observation of the stream (same shapes and dtypes: no retrace), without our fills.
    template = loop64["obs"][0]
    template = template._replace(
        fill_bid_size=jax.device_put(np.zeros(template.fill_bid_size.shape)),
        fill_ask_size=jax.device_put(np.zeros(template.fill_ask_size.shape)),
    )

    for info, lam, stationary in ((info0, lam0, False), (info1, lam1, True)):
        state = batch(engine.init(EP, jnp.float64))
        for t in range(n):
            o = template._replace(
                **jax.device_put(
                    dict(
                        t=np.full((N_PATHS,), (t + 1) * DT),
                        n_buy=info.n_buy[:, t],
                        n_sell=info.n_sell[:, t],
                        vol_buy=info.vol_buy[:, t],
                        vol_sell=info.vol_sell[:, t],
                    )
                )
            )
            state, _, _ = ENGINE64(EP, state, o)
            eng_b, eng_s = e_flow.intensity(EP.flow, state.flow)
            w_b, w_s = np.asarray(lam[0][:, t]), np.asarray(lam[1][:, t])
            if stationary:
                # ex_world - ex_engine = ex_0 e^{-beta t}, on both sides (symmetric parameters).
                gap = np.broadcast_to(ex0 * np.exp(-MP.flow.beta * (t + 1) * DT), w_b.shape)
                np.testing.assert_allclose(w_b - np.asarray(eng_b), gap, rtol=1e-9, atol=1e-12)
                np.testing.assert_allclose(w_s - np.asarray(eng_s), gap, rtol=1e-9, atol=1e-12)
            else:
                np.testing.assert_allclose(np.asarray(eng_b), w_b, rtol=1e-13)
                np.testing.assert_allclose(np.asarray(eng_s), w_s, rtol=1e-13)
                if t + 1 < n:  # ... which is what the world reports at the start of the next step
                    np.testing.assert_allclose(np.asarray(eng_b), np.asarray(info.lam_buy[:, t + 1]), rtol=1e-13)


@pytest.mark.parametrize(
    "field, value", [("tick", -0.1), ("warmup_s", -1.0), ("volume_half_life_s", 0.0), ("n_assets", 0)]
)
def test_bad_engine_parameters_name_the_field(field, value):
    with pytest.raises(ValueError, match=rf"EngineParams\.{field}\b"):
        dataclasses.replace(EP, **{field: value})
