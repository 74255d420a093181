"""The simulator: invariance to chunking and devices, traces, the PnL identity, the AS 2008 model
against an independent numpy Monte Carlo of the same model, and input validation."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest

from mmsim import engine
from mmsim.engine import account, policy
from mmsim.sim import simulate as sim
from mmsim.world import as2008, market

GAMMA, SIGMA, A, K, T, DT = 0.1, 2.0, 140.0, 1.5, 1.0, 0.005
N_STEPS = int(round(T / DT))


def as2008_engine(gamma=GAMMA, kind="as2008"):
    fixed = as2008.average_spread(gamma, SIGMA, K, T, DT)
    pp = policy.PolicyParams(
        kind=kind,
        gamma=gamma,
        k=K,
        horizon_s=T,
        sigma_price=SIGMA,
        order_size=1.0,
        fixed_spread=fixed,
        band_max_frac=1.0,
        pull_margin_ratio=0.0,
    )
    # Equity small enough for float32 cash to resolve cents, leverage large enough never to bind.
    ap = account.AccountParams(
        initial_equity=1e3,
        leverage=1e3,
        maintenance_margin=1e-6,
        max_inventory=1e6,
        liquidation_fee=0.0,
        liquidation_slippage=0.0,
    )
    return engine.EngineParams(policy=pp, account=ap, tick=0.0, warmup_s=0.0, lite=True)


@pytest.fixture(scope="module")
def as_run():
    return sim.simulate(
        "as2008",
        as2008.AS2008Params(),
        as2008_engine(),
        n_paths=4000,
        n_steps=N_STEPS,
        dt=DT,
        seed=7,
        n_trace=3,
        progress=False,
    )


def numpy_as2008(gamma, n_paths, seed):
    """An independent vectorised numpy Monte Carlo of the paper's model (inventory strategy)."""
    g = np.random.default_rng(seed)
    s = np.full(n_paths, 100.0)
    q = np.zeros(n_paths)
    cash = np.zeros(n_paths)
    for i in range(N_STEPS):
        tau = T - i * DT
        r = s - q * gamma * SIGMA**2 * tau
        half = 0.5 * (gamma * SIGMA**2 * tau + 2.0 / gamma * np.log1p(gamma / K))
        bid, ask = r - half, r + half
        hit_b = g.random(n_paths) < np.minimum(1.0, A * np.exp(-K * (s - bid)) * DT)
        hit_a = g.random(n_paths) < np.minimum(1.0, A * np.exp(-K * (ask - s)) * DT)
        q += hit_b.astype(float) - hit_a
        cash += np.where(hit_a, ask, 0.0) - np.where(hit_b, bid, 0.0)
        s += np.where(g.random(n_paths) < 0.5, 1.0, -1.0) * SIGMA * np.sqrt(DT)
    return cash + q * s, q


def test_as2008_matches_independent_numpy_model(as_run):
    pnl, q = numpy_as2008(GAMMA, 40_000, 11)
    s = as_run.summary
    for ours, ref in ((s.pnl, pnl), (s.final_position[:, 0], q)):
        ours = np.asarray(ours, float)
        se = np.sqrt(ours.var(ddof=1) / ours.size + ref.var(ddof=1) / ref.size)
        assert abs(ours.mean() - ref.mean()) < 4 * se, (ours.mean(), ref.mean(), se)
        # Standard deviations: the SE of a sample sd is sd * sqrt((kurtosis - 1) / (4 n)).
        sd_se = np.sqrt(
            sum(x.var() * (np.mean((x - x.mean()) ** 4) / x.var() ** 2 - 1) / (4 * x.size) for x in (ours, ref))
        )
        assert abs(ours.std() - ref.std()) < 4 * sd_se, (ours.std(), ref.std(), sd_se)


def test_trace_replays_the_first_paths(as_run):
    tr, s = as_run.trace, as_run.summary
    assert tr.mid.shape == (3, N_STEPS + 1, 1)
    np.testing.assert_allclose(tr.t[[0, -1]], [0.0, T])
    np.testing.assert_array_equal(tr.position[:, -1], s.final_position[:3])
    np.testing.assert_allclose(tr.equity[:, -1] - 1e3, s.pnl[:3], atol=1e-3)
    # The inventory strategy's quoted spread is deterministic: its time average is the closed form.
    np.testing.assert_allclose(
        tr.spread_quoted[:, :-1].mean(1)[:, 0], as2008.average_spread(GAMMA, SIGMA, K, T, DT), rtol=1e-5
    )
    assert np.all(tr.true_regime == -1)


def test_pnl_components_add_up(as_run):
    s = as_run.summary
    np.testing.assert_allclose(s.pnl_components.sum(1), s.pnl, atol=2e-3)
    assert not s.liquidated.any() and np.all(s.n_bad == 0)
    assert as_run.path_steps_per_s > 0 and as_run.run_s > 0


def test_recompiles_only_for_new_shapes(as_run):
    again = sim.simulate(
        "as2008",
        as2008.AS2008Params(),
        as2008_engine(gamma=0.5),
        n_paths=4000,
        n_steps=N_STEPS,
        dt=DT,
        seed=7,
        progress=False,
    )
    assert again.compile_s == 0.0  # same shapes, new gamma: the cached executable
    assert not np.array_equal(again.summary.pnl, as_run.summary.pnl)


def test_a_new_path_count_in_the_same_bucket_does_not_recompile(as_run):
    """4,000 paths compile a 4,096-path chunk (see chunk_bucket): 3,900 reuse it, and the first
    3,900 paths are the first 3,900 of the 4,000-path run (a path depends only on its index)."""
    assert as_run.chunk_size == sim.chunk_bucket(4000) == 4096
    fewer = sim.simulate(
        "as2008", as2008.AS2008Params(), as2008_engine(), n_paths=3900, n_steps=N_STEPS, dt=DT, seed=7, progress=False
    )
    assert fewer.compile_s == 0.0 and fewer.chunk_size == 4096
    np.testing.assert_array_equal(fewer.summary.pnl, as_run.summary.pnl[:3900])


def test_chunk_buckets_pad_at_most_a_quarter_and_respect_the_devices():
    for n in (1, 2, 3, 7, 100, 1000, 4097, 10_000, 65_537):
        b = sim.chunk_bucket(n)
        assert n <= b <= max(n * 1.25, n + 1), (n, b)
    assert len({sim.chunk_bucket(n) for n in range(1025, 2049)}) == 4  # four shapes per octave
    assert sim.chunk_bucket(1000, 3) % 3 == 0 and sim.chunk_bucket(1000, 3) >= 1000


def test_an_xla_that_refuses_our_compiler_options_compiles_without_them(monkeypatch):
    """A jaxlib that does not know one of the CPU options must not fail every compile."""

    class Lowered:
        calls = []

        def compile(self, compiler_options=None):
            self.calls.append(compiler_options)
            if compiler_options:
                raise RuntimeError(f"INVALID_ARGUMENT: No such compile option: '{next(iter(compiler_options))}'")
            return "compiled"

    monkeypatch.setattr(sim, "_OPTIONS_REFUSED", False)
    with pytest.warns(UserWarning, match="does not accept the compiler options"):
        assert sim._compile_guarded(Lowered(), {"xla_no_such_flag": True}) == "compiled"
    assert Lowered.calls == [{"xla_no_such_flag": True}, None]
    assert sim._compile_guarded(Lowered(), {"xla_no_such_flag": True}) == "compiled"  # not tried again
    assert Lowered.calls[-1] is None

    class Broken(Lowered):
        def compile(self, compiler_options=None):
            raise RuntimeError("RESOURCE_EXHAUSTED: out of memory")

    monkeypatch.setattr(sim, "_OPTIONS_REFUSED", False)
    with pytest.raises(RuntimeError, match="RESOURCE_EXHAUSTED"):  # any other failure is not swallowed
        sim._compile_guarded(Broken(), {"xla_no_such_flag": True})


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_as2008_coin_and_fill_uniforms_from_one_word_are_independent(dtype):
    """The as2008 step takes its mid's coin from bit 0 of the word whose high bits are the fills'
    uniforms: over 200,000 keys the coin is fair and uncorrelated with either uniform (4 SE)."""
    from mmsim import rng

    n = 200_000
    keys = rng.path_keys(rng.key(5), 0, n)
    u = np.asarray(rng.uniform(keys, (1, 2), dtype), float).reshape(n, 2)
    coin = (np.asarray(rng.bits(keys, 1))[:, 0] & np.uint64(1)).astype(float)
    assert abs(coin.mean() - 0.5) < 4 * 0.5 / np.sqrt(n)
    for j in range(2):
        assert abs(np.corrcoef(coin, u[:, j])[0, 1]) < 4 / np.sqrt(n)
        # Also within each half of the unit interval (a dependence a correlation could miss).
        for lo in (0.0, 0.5):
            m = (u[:, j] >= lo) & (u[:, j] < lo + 0.5)
            assert abs(coin[m].mean() - 0.5) < 4 * 0.5 / np.sqrt(m.sum())


def test_as2008_sets_only_its_declared_observation_fields():
    """The scan carries only as2008.OBS_FIELDS and rebuilds the rest from observation.empty: the
    world's observations must hold empty()'s values there, at t = 0 and after a step."""
    from mmsim import observation, rng

    mp = as2008.AS2008Params()
    st = as2008.init(mp, jnp.float32)
    q = policy.Quote(
        *(jnp.array([99.0, 101.0, 1.0, 1.0], jnp.float32).reshape(4, 1)), jnp.ones(1, bool), jnp.ones(1, bool)
    )
    empty = observation.empty(1, jnp.float32)
    for obs in (as2008.observe(st, mp), as2008.step(rng.key(0), st, mp, DT, q)[1]):
        for f in observation.Observation._fields:
            if f not in as2008.OBS_FIELDS:
                np.testing.assert_array_equal(getattr(obs, f), getattr(empty, f), err_msg=f)


def test_mid_only_price_estimator_gives_the_same_paths(as_run):
    """engine.price.returns = False (the as2008 experiment: the policy is given sigma) skips the
    estimator's returns, variance and jumps, which nothing in that engine reads: the same paths, bit
    for bit."""
    from mmsim.engine.estimators import price as e_price

    ep = as2008_engine()
    lean = dataclasses.replace(ep, price=e_price.PriceEstParams(returns=False))
    out = sim.simulate(
        "as2008", as2008.AS2008Params(), lean, n_paths=4000, n_steps=N_STEPS, dt=DT, seed=7, progress=False
    )
    for f in sim.PathSummary._fields:
        np.testing.assert_array_equal(getattr(out.summary, f), getattr(as_run.summary, f), err_msg=f)


SHARD_SCRIPT = textwrap.dedent("""
    import json, jax, numpy as np
    from mmsim.world import as2008
    from mmsim.sim import simulate as sim
    from tests.sim.test_simulate import as2008_engine, N_STEPS, DT
    devs = jax.local_devices()
    assert len(devs) == 4, devs
    kw = dict(n_steps=N_STEPS, dt=DT, seed=3, progress=False)
    one = sim.simulate("as2008", as2008.AS2008Params(), as2008_engine(), n_paths=20, chunk_size=8,
                       devices=devs[:1], **kw)
    four = sim.simulate("as2008", as2008.AS2008Params(), as2008_engine(), n_paths=20, chunk_size=20, **kw)
    assert (one.chunk_size, one.n_devices, four.chunk_size, four.n_devices) == (8, 1, 20, 4)
    same = {f: bool(np.array_equal(getattr(one.summary, f), getattr(four.summary, f)))
            for f in sim.PathSummary._fields}
    print(json.dumps({"same": same, "fills": int(one.summary.n_fills.sum())}))
""")


@pytest.mark.slow
def test_chunked_single_device_equals_unchunked_sharded():
    """Three padded chunks of 8 on one device == one chunk of 20 over 4 (forced host) devices."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run(
        [sys.executable, "-c", SHARD_SCRIPT], env=env, cwd=root, capture_output=True, text=True, timeout=900
    )
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert all(res["same"].values()), res
    assert res["fills"] > 0


USE_CORES_SCRIPT = textwrap.dedent("""
    import json, jax
    from mmsim.sim.simulate import use_cpu_cores
    n = use_cpu_cores(3)              # before the backend starts: three CPU devices
    again = use_cpu_cores(1)          # afterwards the count is fixed: unchanged
    print(json.dumps({"n": n, "again": again, "devices": len(jax.devices("cpu"))}))
""")


def test_use_cpu_cores_splits_the_host_before_the_backend_starts():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {"JAX_PLATFORMS": "cpu"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run(
        [sys.executable, "-c", USE_CORES_SCRIPT], env=env, cwd=root, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"n": 3, "again": 3, "devices": 3}
    with pytest.raises(ValueError, match="CPU devices"):
        sim.use_cpu_cores(0)


@pytest.mark.slow
def test_event_flatten_takes_the_position_to_flat_without_moving_the_world():
    """A policy flattening into a scheduled event: the quote made at the window's first step sends
    a taker order for the whole position, the next observation reports the execution and the
    position is exactly flat; nothing rests in the window, so it stays flat to the window's end.
    The world's mid paths are those of the run without the event (our orders do not move it)."""
    from mmsim import config

    base = ["experiment=baseline", "sim.horizon_s=120", "engine.warmup_s=10", "sim.dtype=float32"]
    event = [
        "policy.event_times_s=[80]",
        "policy.event_pull_before_s=20",
        "policy.event_pull_after_s=20",
        "policy.event_flatten=1",
    ]
    runs = []
    for ov in (base, base + event):
        world, mp, ep, s = config.build(config.compose(ov))
        runs.append(
            sim.simulate(world, mp, ep, n_paths=16, n_steps=s.n_steps, dt=s.dt, seed=3, n_trace=16, progress=False)
        )
    plain, flat = runs
    t = np.asarray(flat.trace.t)
    pos = np.asarray(flat.trace.position)[..., 0]
    i0 = int(np.searchsorted(t, 60.0))  # the window's first quote
    assert t[i0] == 60.0
    assert np.any(pos[:, i0] != 0.0), "no position to flatten: the test would prove nothing"
    np.testing.assert_array_equal(pos[:, i0 + 1 : int(np.searchsorted(t, 100.0)) + 2], 0.0)
    np.testing.assert_array_equal(np.asarray(flat.trace.mid), np.asarray(plain.trace.mid))
    np.testing.assert_array_equal(pos[:, : i0 + 1], np.asarray(plain.trace.position)[:, : i0 + 1, 0])
    # The PnL identity holds with the taker executions (float32: a cash of 1e4 rounds at ~1e-3).
    s = flat.summary
    np.testing.assert_allclose(s.pnl_components.sum(axis=1), s.pnl, rtol=0, atol=1e-3 * (1 + np.abs(s.pnl).max()))


def test_bad_input_fails_before_compiling():
    ep, mp = as2008_engine(), as2008.AS2008Params()
    for kw, field in (
        (dict(n_paths=-1), "n_paths"),
        (dict(n_paths=0), "n_paths"),
        (dict(n_steps=0), "n_steps"),
        (dict(dt=-0.1), "dt"),
        (dict(chunk_size=0), "chunk_size"),
        (dict(n_trace=-2), "n_trace"),
    ):
        args = dict(n_paths=4, n_steps=5, dt=DT, seed=0) | kw
        with pytest.raises(ValueError, match=field):
            sim.simulate("as2008", mp, ep, **args)
    with pytest.raises(ValueError, match="world"):
        sim.simulate("moon", mp, ep, n_paths=4, n_steps=5, dt=DT, seed=0)
    with pytest.raises(ValueError, match="n_assets"):
        sim.simulate("market", market.default_params(2), ep, n_paths=4, n_steps=5, dt=1.0, seed=0)


@pytest.mark.slow
def test_world_substeps_keep_the_headline_metrics():
    """The engine every 1 s, the world at 1 s and in two steps of 0.5 s (``world_substeps``): the
    baseline's fills per path and PnL mean agree within 4 standard errors of their difference
    (independent draws), and a merged interval's dt is the engine's (docs/MODEL.md section 8b
    has the full table)."""
    from mmsim import config

    world, mp, ep, s = config.build(config.compose(["experiment=baseline", "sim.horizon_s=300"]))
    runs = [
        sim.simulate(world, mp, ep, n_paths=512, n_steps=s.n_steps, dt=1.0, seed=5, progress=False, world_substeps=n)
        for n in (1, 2)
    ]
    assert runs[1].world_substeps == 2
    fills = [np.asarray(r.summary.n_fills, float).sum(axis=(-1, -2)) for r in runs]
    assert fills[0].mean() > 10, "the policy must trade for the comparison to mean anything"
    for name, (a, b) in (("fills", fills), ("pnl", [np.asarray(r.summary.pnl, float) for r in runs])):
        se = np.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)
        assert abs(a.mean() - b.mean()) < 4 * se, (name, a.mean(), b.mean(), se)
    with pytest.raises(ValueError, match="world_substeps = 0"):
        sim.simulate(world, mp, ep, n_paths=4, n_steps=2, dt=1.0, seed=0, world_substeps=0)


def test_long_horizon_traces_keep_every_kth_step(monkeypatch):
    """Beyond MAX_TRACE_POINTS steps a trace keeps every k-th step: the same rows as the full
    trace at those steps, the same paths, and a memory that does not grow with the horizon."""
    kw = dict(n_paths=4, n_steps=37, dt=DT, seed=3, n_trace=2, progress=False)
    full = sim.simulate("as2008", as2008.AS2008Params(), as2008_engine(), **kw)
    monkeypatch.setattr(sim, "MAX_TRACE_POINTS", 10)
    sim._COMPILED.clear()  # the stride is part of the traced program
    thin = sim.simulate("as2008", as2008.AS2008Params(), as2008_engine(), **kw)
    sim._COMPILED.clear()
    assert sim.trace_stride(37) == 4
    np.testing.assert_array_equal(thin.trace.t, np.arange(0, 38, 4) * DT)
    np.testing.assert_array_equal(thin.trace.mid, full.trace.mid[:, ::4])
    np.testing.assert_array_equal(thin.trace.equity, full.trace.equity[:, ::4])
    np.testing.assert_array_equal(thin.summary.pnl, full.summary.pnl)
    # The memory a horizon needs: at most MAX_TRACE_POINTS rows of traces, whatever its length.
    assert sim.memory_estimate(10**7, 8, 1) == sim.memory_estimate(10**9, 8, 1) == 10 * 8 * (13 * 4 + 16)
