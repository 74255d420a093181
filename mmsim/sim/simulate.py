"""The Monte Carlo simulator: the world and the engine in one ``lax.scan``, vmapped over paths,
sharded over devices, run in chunks.

One path (``_paths`` is written per path and vmapped): the engine quotes on the world's initial
observation (t = 0), then each of ``n_steps`` steps advances the world by ``dt`` seconds against
the engine's resting quote (``world.step(key_t, state, params, dt, quote)``), the engine reads
the step's :class:`~mmsim.observation.Observation` and quotes again (``engine.step``), and the
running risk metrics (:mod:`mmsim.sim.risk`) are updated. Step ``t`` of path ``i`` draws from
``fold_in(fold_in(run_key, i), t)``: a path's numbers depend only on the seed and its global index,
never on the chunk size or the number of devices (tests check both).

Paths are vmapped, split over the local devices with ``jax.shard_map`` (no communication: every
path is independent) and run ``chunk_size`` at a time so memory stays bounded whatever the number
of paths; a progress bar counts chunks. Across hosts, call ``jax.distributed.initialize()`` first:
each process then runs the chunks ``process_index :: process_count`` and the caller gathers. Only
per-path summaries leave the device; full traces (for figures) are recorded for the first
``n_trace`` paths by a second compiled function that replays exactly those paths; XLA compiles it
on a background thread while it compiles the first.

Compiled functions are cached by (world, static structure, shapes, n_steps, dt, dtype, devices):
calling :func:`simulate` again with new parameter values (a sweep over gamma, an optimiser)
does not recompile.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import os
import time
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from mmsim import engine, observation, rng
from mmsim import world as worlds
from mmsim._pytree import cast_floats
from mmsim.engine import account as acct
from mmsim.engine import policy as pol
from mmsim.sim import risk
from mmsim.world import tilt as tilt_mod

WORLDS = worlds.WORLDS
#: Paths per device per compiled call when not given. On a CPU every compiled step is a few
#: hundred loops over the chunk, each with a fixed launch cost: 8192 paths per device amortise it
#: while the per-path state stays in the caches (measured in experiments/PERFORMANCE.md);
#: accelerators want many paths in flight.
DEFAULT_CHUNK = {"cpu": 8192}
DEFAULT_CHUNK_ACCELERATOR = 65536
#: XLA options for the CPU backend. The step's state is carried through the scan's loop, and XLA
#: copies a carried array before it is overwritten unless it can prove the old value's last read
#: comes first; its region-based analysis proves it for more of them (cascade_stress: 123 instead
#: of 169 copies per step, each a pass over the chunk). Results are bit for bit the same.
CPU_COMPILER_OPTIONS = {"xla_cpu_copy_insertion_use_region_analysis": True}


class PathSummary(NamedTuple):
    """Per-path results (numpy on the host; one row per path)."""

    pnl: Any  # (n,) final equity - initial equity, quote currency
    pnl_components: Any  # (n, 6) engine.PNL_COMPONENTS, quote currency
    max_dd: Any  # (n,) maximum drawdown, quote currency
    max_dd_frac: Any  # (n,) maximum drawdown, fraction of the running peak equity
    min_margin_ratio: Any  # (n,) minimum equity / maintenance margin
    min_excess: Any  # (n,) minimum equity - maintenance margin, quote currency (0 when liquidated)
    max_abs_inventory: Any  # (n, A) base units
    liquidated: Any  # (n,) bool
    liq_time: Any  # (n,) seconds, -1 if never
    n_fills: Any  # (n, A, 2) fills on the bid, on the ask
    final_position: Any  # (n, A) base units
    n_bad: Any  # (n,) steps whose equity was not finite
    log_w: Any = None  # (n,) log likelihood ratio up to the liquidation (0 without a tilt)
    log_w_full: Any = None  # (n,) log likelihood ratio of the whole path (0 without a tilt)
    tilt_stats: Any = None  # (n, K, 13) the tilt's statistics per time bucket up to the liquidation (TiltInfo[1:])
    fill_volume: Any = None  # (n, A, 2) base units filled on our bid, on our ask


class Trace(NamedTuple):
    """Full traces of the first paths, shape (n_trace, n_steps + 1, ...); index 0 is t = 0. Beyond
    :data:`MAX_TRACE_POINTS` steps, every k-th step (``t`` says which)."""

    t: Any  # (n_steps + 1,) seconds
    mid: Any  # (n, T+1, A) quote currency
    position: Any  # (n, T+1, A) base units
    bid: Any  # (n, T+1, A) our bid (0 when the side is off)
    ask: Any  # (n, T+1, A) our ask (0 when the side is off)
    spread_quoted: Any  # (n, T+1, A) quote currency
    sigma: Any  # (n, T+1, A) estimated log-mid volatility per sqrt second
    cascade_intensity: Any  # (n, T+1, A) estimated liquidation intensity, per second
    equity: Any  # (n, T+1) quote currency
    maintenance: Any  # (n, T+1) maintenance margin, quote currency
    margin_ratio: Any  # (n, T+1)
    regime: Any  # (n, T+1) estimated regime (0 low .. 3 extreme)
    true_regime: Any  # (n, T+1) the world's regime (-1 where the world has none)
    true_cascade_intensity: Any  # (n, T+1, A) the world's liquidation intensity, per second


@dataclasses.dataclass
class SimResult:
    summary: PathSummary
    trace: Trace | None
    n_paths: int
    n_steps: int
    dt: float
    seed: int
    chunk_size: int
    n_devices: int
    compile_s: float
    run_s: float
    path_steps_per_s: float
    world: str = "market"
    initial_equity: float = 0.0
    world_substeps: int = 1  # world steps per engine step

    @property
    def horizon_s(self) -> float:
        return self.n_steps * self.dt


# ------------------------------------------------------------------------------------------------
# One path


def _pack_obs(fields, obs):
    """What of an observation the scan carries: the ``fields`` a world sets (its ``OBS_FIELDS``), or
    all of them (None). The rest are :func:`observation.empty`'s values in every observation of
    that world; rebuilt inside the step (:func:`_unpack_obs`), they are constants the compiler
    folds (the as2008 world has no trades, liquidations or funding: the engine's work on them
    vanishes), where carried they would be loop values it must compute with."""
    return obs if fields is None else tuple(getattr(obs, f) for f in fields)


def _unpack_obs(fields, packed, a: int, dtype) -> observation.Observation:
    return packed if fields is None else observation.empty(a, dtype)._replace(**dict(zip(fields, packed)))


def _row(obs, est, info, truth, dtype):
    q = est.quote
    true_regime, true_lam = truth
    maint = jnp.where(
        info.margin_ratio >= acct.FLAT_MARGIN_RATIO, 0.0, info.equity / jnp.maximum(info.margin_ratio, 1e-12)
    ).astype(dtype)
    return (
        obs.mid,
        info.position,
        q.bid_price,
        q.ask_price,
        info.spread_quoted,
        info.sigma,
        info.cascade_intensity,
        info.equity,
        maint,
        info.margin_ratio,
        info.regime,
        true_regime,
        true_lam,
    )


def _world_interval(w_mod, key, w, mp, dt: float, q, n: int):
    """The world over one engine step of ``dt`` seconds in ``n`` steps of ``dt / n``, our quote
    resting through them (what fills in one sub-step no longer rests in the next; a taker order
    executes in the first), their observations merged into the interval's
    (:func:`mmsim.observation.merge`); the ground truth is the last sub-step's."""
    if n == 1:
        return w_mod.step(key, w, mp, dt, q)
    h = dt / n

    def sub(c, j):
        w, q = c
        w, o, info = w_mod.step(rng.fold_in(key, j), w, mp, h, q)
        if q is not None:
            bid = jnp.maximum(q.bid_size - o.fill_bid_size.astype(q.bid_size.dtype), 0.0)
            ask = jnp.maximum(q.ask_size - o.fill_ask_size.astype(q.ask_size.dtype), 0.0)
            q = q._replace(
                bid_size=bid,
                ask_size=ask,
                bid_active=q.bid_active & (bid > 0),
                ask_active=q.ask_active & (ask > 0),
                take=None if q.take is None else jnp.zeros_like(q.take),
            )
        return (w, q), (o, info)

    (w, _), (obs, infos) = jax.lax.scan(sub, (w, q), jnp.arange(n, dtype=jnp.int32))
    last = jax.tree_util.tree_map(lambda x: x[-1], infos)
    if getattr(infos, "tilt", None) is not None:  # the change of measure of every sub-step
        last = last._replace(tilt=jax.tree_util.tree_map(lambda x: x.sum(0), infos.tilt))
    return w, observation.merge(obs), last


def _path_fns(mp, ep, *, world: str, dt: float, dtype, trace: bool, substeps: int = 1):
    """One path's ``start(key) -> carry``, ``one(key, carry, t) -> (carry, trace row)`` (step
    ``t``: the engine on the observation at t, then the world to t + 1) and ``finish(carry) ->``
    :class:`PathSummary`, for :func:`_paths` and for multilevel splitting (:func:`split`)."""
    w_mod = worlds.get(world)
    obs_fields = w_mod.OBS_FIELDS
    a = ep.n_assets

    def start(key):
        w = w_mod.init(mp, dtype)
        obs = _pack_obs(obs_fields, w_mod.observe(w, mp, pol.takes(ep.policy)))
        truth = w_mod.truth(None, a, dtype) if trace else None
        tilt = getattr(mp, "tilt", None)
        r = risk.init(ep.account.initial_equity, a, dtype, tilt_buckets=0 if tilt is None else tilt_mod.n_buckets(tilt))
        return w, engine.init(ep, dtype), obs, r, truth

    def one(key, carry, t):
        # The engine acts on the observation at time t (its quote at t = 0 comes from the first
        # iteration), then the world moves to t + 1 with that quote. Iteration t = n_steps only
        # needs the engine's half: its world step is computed and dropped, which compiles the
        # engine step once instead of twice (a separate t = 0 call added 38 of cascade_stress's
        # 367 kernels) at the price of one extra world step per path.
        w, e, obs, r, truth = carry
        obs = _unpack_obs(obs_fields, obs, a, dtype)
        e, q, info = engine.step(ep, e, obs)
        r = risk.update(r, info.equity, info.margin_ratio, info.position, info.liquidated_now, obs.t)
        out = _row(obs, e, info, truth, dtype) if trace else None
        mp_t = mp  # a tilt against the position reads its sign (the world never sees the engine)
        if getattr(mp, "tilt", None) is not None and mp.tilt.against_position:
            mp_t = dataclasses.replace(mp, tilt=tilt_mod.facing(mp.tilt, info.position))
        w, obs, winfo = _world_interval(w_mod, rng.fold_in(key, t), w, mp_t, dt, q, substeps)
        r = risk.add_tilt(r, getattr(winfo, "tilt", None))
        truth = w_mod.truth(winfo, a, dtype) if trace else None
        return (w, e, _pack_obs(obs_fields, obs), r, truth), out

    def finish(carry):
        _, e, _, r, _ = carry
        s = e.account
        comps = acct.pnl_components(s)
        pnl = acct.equity(s, s.last_mid) - jnp.asarray(ep.account.initial_equity, dtype)
        return PathSummary(
            pnl=pnl.astype(dtype),
            pnl_components=comps.astype(dtype),
            max_dd=r.max_dd,
            max_dd_frac=r.max_dd_frac,
            min_margin_ratio=r.min_margin_ratio,
            min_excess=r.min_excess,
            max_abs_inventory=r.max_abs_inventory,
            liquidated=r.liquidated,
            liq_time=r.liq_time,
            n_fills=s.n_fills.astype(jnp.int32),
            final_position=s.position,
            n_bad=r.n_bad,
            **risk.tilt_summary(r),
            fill_volume=jnp.stack([s.volume_bid, s.volume_ask], axis=-1).astype(dtype),
        )

    return start, one, finish


def _paths(keys, mp, ep, *, world: str, n_steps: int, dt: float, dtype, trace: bool, substeps: int = 1):
    """Simulate the paths of ``keys`` (one per path); returns their :class:`PathSummary` (device
    arrays, one row per path), and the trace rows (path, t = 0 first, ...) when ``trace``.

    Written per path (``start``, ``one``, ``finish``: :func:`_path_fns`) and vmapped, with the
    scan over steps outside the vmap: a vmapped scan makes JAX re-trace the step until the set of
    batched carries settles, which took two thirds of the tracing time of the composed model.
    Every carry is batched from the start here (``vmap`` returns batched outputs), so the step is
    traced once.
    """
    start, one, finish = _path_fns(mp, ep, world=world, dt=dt, dtype=dtype, trace=trace, substeps=substeps)
    carry = jax.vmap(start)(keys)
    step = jax.vmap(one, in_axes=(0, 0, None))
    every = trace_stride(n_steps) if trace else 1
    if every == 1:  # the step index is carried, not stored: nothing grows with the horizon

        def body(ct, _):
            c, t = ct
            c, row = step(keys, c, t)
            return (c, t + 1), row

        (carry, _), rows = jax.lax.scan(body, (carry, jnp.zeros((), jnp.int32)), None, length=n_steps + 1)
    else:  # a long horizon's traces keep every `every`-th step: their memory stays bounded

        def block(c, b):
            t0 = b * every
            c, row = step(keys, c, t0)

            def inner(c, j):  # the step index is the same for every path: a real branch, not a select
                t = t0 + j
                return jax.lax.cond(t <= n_steps, lambda c: step(keys, c, t)[0], lambda c: c, c), None

            c, _ = jax.lax.scan(inner, c, jnp.arange(1, every, dtype=jnp.int32))
            return c, row

        n_rows = -(-(n_steps + 1) // every)
        carry, rows = jax.lax.scan(block, carry, jnp.arange(n_rows, dtype=jnp.int32))
    summary = jax.vmap(finish)(carry)
    if not trace:
        return summary
    # rows: (t = 0 .. n_steps, paths, ...) -> (paths, t, ...)
    rows = jax.tree_util.tree_map(lambda xs: jnp.swapaxes(xs, 0, 1), rows)
    return summary, rows


# ------------------------------------------------------------------------------------------------
# Many paths


_COMPILED: dict = {}


def _signature(tree) -> tuple:
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return treedef, tuple((np.shape(x), str(jnp.asarray(x).dtype)) for x in leaves)


class _Compiling(NamedTuple):
    finish: Any  # () -> (compiled program, compile seconds)
    fresh: bool  # not in this process's cache: it compiles now
    restructured: bool  # a program of the same run but another structure was compiled before


def _compile_start(world, mp, ep, keys, *, n_steps, dt, dtype, trace, devices, substeps=1):
    """Start compiling the (vmapped, sharded) path function for these shapes: it is traced and
    lowered here, and XLA compiles it on a background thread (a second program then compiles
    while the first one does, on a machine with cores to spare). Returns a :class:`_Compiling`
    whose ``finish()`` waits and gives ``(compiled, seconds)``; the seconds are those spent in this
    call and in ``finish()``, 0 when the program came from the cache."""
    key = (
        world,
        _signature(mp),
        _signature(ep),
        keys.shape,
        n_steps,
        float(dt),
        jnp.dtype(dtype).name,
        trace,
        tuple(d.id for d in devices),
        substeps,
    )
    if key in _COMPILED:
        return _Compiling(lambda: (_COMPILED[key], 0.0), fresh=False, restructured=False)
    # The same run but another structure (a static field changed): worth saying, it costs a compile.
    restructured = any(k[0] == key[0] and k[3:] == key[3:] for k in _COMPILED)

    def fn(k, m, e):
        return _paths(k, m, e, world=world, n_steps=n_steps, dt=dt, dtype=dtype, trace=trace, substeps=substeps)

    if len(devices) > 1:
        mesh = Mesh(np.asarray(devices), ("paths",))
        fn = jax.shard_map(fn, mesh=mesh, in_specs=(P("paths"), P(), P()), out_specs=P("paths"), check_vma=False)
    t0 = time.perf_counter()
    options = CPU_COMPILER_OPTIONS if devices[0].platform == "cpu" else None
    lowered = jax.jit(fn).lower(keys, mp, ep)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    job = pool.submit(_compile_guarded, lowered, options)
    pool.shutdown(wait=False)
    lower_s = time.perf_counter() - t0

    def finish():
        t1 = time.perf_counter()
        compiled = job.result()
        _COMPILED[key] = compiled
        return compiled, lower_s + time.perf_counter() - t1

    return _Compiling(finish, fresh=True, restructured=restructured)


def _compile_guarded(lowered, options: dict | None):
    """Compile with our XLA options; an XLA that does not know one of them (a newer or older
    jaxlib renames flags) fails every compile, so retry without them and say so once."""
    global _OPTIONS_REFUSED
    if options and not _OPTIONS_REFUSED:
        try:
            return lowered.compile(compiler_options=options)
        except Exception as e:  # noqa: BLE001 (XLA raises a plain runtime error for an unknown option)
            if not any(k in str(e) for k in options):
                raise
            _OPTIONS_REFUSED = True
            warnings.warn(
                f"this XLA does not accept the compiler options {sorted(options)}; compiling without "
                f"them (same results, possibly slower): {str(e).splitlines()[0]}",
                stacklevel=2,
            )
    return lowered.compile()


_OPTIONS_REFUSED = False


def chunk_bucket(n: int, n_devices: int = 1) -> int:
    """The compiled chunk size for ``n`` paths: ``n`` rounded up to a multiple of
    ``2^(floor(log2 n) - 2)`` (at most 25 % padding, a handful of shapes per octave) and of the
    device count, so that a new path count reuses a compiled program instead of recompiling.
    The padding paths are simulated and dropped; every path's numbers depend only on its index."""
    n = max(int(n), 1)
    g = 1 << max(0, n.bit_length() - 3)
    b = -(-n // g) * g
    return int(math.ceil(b / n_devices) * n_devices)


def use_cpu_cores(n: int | None = None) -> int:
    """Split the host CPU into ``n`` JAX devices (default: one per core this process may use), so
    that :func:`simulate`, which shards paths over all local devices, runs on every core.

    XLA's CPU backend runs a compiled program mostly on one thread (a few large loops use more);
    paths are independent, so one device per core puts every core to work (2 devices on 2 cores:
    as2008 +50-70 %, cascade_stress, which already used 1.8 cores, +20 %;
    experiments/PERFORMANCE.md). Call it before JAX's first computation: afterwards the device
    count is fixed and this does nothing. It also does nothing when ``XLA_FLAGS`` already sets
    ``--xla_force_host_platform_device_count``. Returns the number of CPU devices in use.
    """
    if n is None:
        n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if int(n) < 1:
        raise ValueError(f"n = {n!r}: the number of CPU devices must be >= 1")
    if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        try:
            jax.config.update("jax_num_cpu_devices", int(n))
        except RuntimeError:  # the backend is already initialised: keep its devices
            pass
    return len(jax.devices("cpu"))


#: The largest step count a run may have: steps are indexed in int32 (the key of step t).
MAX_STEPS = 2**31 - 2


#: The most steps a trace keeps per path: a longer horizon's traces keep every k-th step
#: (:func:`trace_stride`), so their memory does not grow with the horizon.
MAX_TRACE_POINTS = 100_000


def trace_stride(n_steps: int) -> int:
    """Steps between two trace rows: 1 up to :data:`MAX_TRACE_POINTS` rows, more beyond."""
    return max(1, -(-(int(n_steps) + 1) // MAX_TRACE_POINTS))


def memory_estimate(n_steps: int, n_trace: int, n_assets: int, itemsize: int = 4) -> int:
    """Bytes a run needs that grow with its horizon, whatever the chunk: the traces of ``n_trace``
    paths (13 fields, per asset, per kept step: at most :data:`MAX_TRACE_POINTS`), so bounded
    whatever the horizon. The step index is carried through the scan, not stored, and the
    per-path state of a chunk is bounded by the chunk size."""
    trace = max(int(n_trace), 0) * (13 * max(int(n_assets), 1) * itemsize + 16)
    return -(-(int(n_steps) + 1) // trace_stride(n_steps)) * trace


def machine_memory() -> int | None:
    """Physical memory of this machine, bytes (None where the OS does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def _validate(n_paths, n_steps, dt, chunk_size, n_trace):
    if not isinstance(n_paths, (int, np.integer)) or n_paths < 1:
        raise ValueError(f"n_paths = {n_paths!r}: must be a positive integer")
    if not isinstance(n_steps, (int, np.integer)) or not 1 <= n_steps <= MAX_STEPS:
        raise ValueError(f"n_steps = {n_steps!r}: must be a positive integer of at most {MAX_STEPS:,}")
    if not (isinstance(dt, (int, float)) and math.isfinite(dt) and dt > 0):
        raise ValueError(f"dt = {dt!r}: must be a positive number of seconds")
    if chunk_size is not None and (not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1):
        raise ValueError(f"chunk_size = {chunk_size!r}: must be a positive integer or None")
    if not isinstance(n_trace, (int, np.integer)) or n_trace < 0:
        raise ValueError(f"n_trace = {n_trace!r}: must be a non-negative integer")


def simulate(
    world: str,
    market_params: Any,
    engine_params: engine.EngineParams,
    *,
    n_paths: int,
    n_steps: int,
    dt: float,
    seed: int,
    chunk_size: int | None = None,
    n_trace: int = 0,
    dtype: Any = jnp.float32,
    progress: bool = True,
    devices: Sequence[jax.Device] | None = None,
    world_substeps: int = 1,
) -> SimResult:
    """Simulate ``n_paths`` paths of ``n_steps`` steps of ``dt`` seconds.

    Args:
        world: "market" (:mod:`mmsim.world.market`, every process) or "as2008" (:mod:`mmsim.world.as2008`).
        market_params: the world's params (``MarketParams`` or ``AS2008Params``).
        engine_params: :class:`mmsim.engine.EngineParams`.
        seed: run seed; path ``i`` uses ``fold_in(key(seed), i)``.
        chunk_size: paths per compiled call (default 8192 per CPU device, 65536 per accelerator; at most
            ``n_paths``), rounded up to a multiple of the number of devices; the last chunk is
            padded and the padding dropped.
        n_trace: record full traces of the first ``n_trace`` paths.
        devices: devices to shard paths over (default: all local devices).
        world_substeps: world steps per engine step (the world moves in steps of ``dt /
            world_substeps`` seconds between two engine steps; the engine's cadence stays ``dt``).

    Returns a :class:`SimResult`; ``compile_s`` counts compilation only (0 when cached), ``run_s``
    the simulation of every chunk, and ``path_steps_per_s = n_paths * n_steps / run_s``.
    """
    worlds.get(world)
    _validate(n_paths, n_steps, dt, chunk_size, n_trace)
    if engine_params.n_assets != market_params.n_assets:
        raise ValueError(
            f"engine n_assets = {engine_params.n_assets} != market n_assets = "
            f"{market_params.n_assets}: the engine must quote every asset of the market"
        )
    dt = float(dt)
    n_paths, n_steps = int(n_paths), int(n_steps)
    devices = list(devices) if devices is not None else jax.local_devices()
    nd = len(devices)
    default = DEFAULT_CHUNK.get(devices[0].platform, DEFAULT_CHUNK_ACCELERATOR) * nd
    if chunk_size is None:
        chunk = chunk_bucket(min(default, n_paths), nd)
    else:
        chunk = int(math.ceil(min(int(chunk_size), n_paths) / nd) * nd)
    n_chunks = int(math.ceil(n_paths / chunk))
    mp = cast_floats(market_params, dtype)
    ep = cast_floats(engine_params, dtype)
    root = rng.key(seed)

    keys0 = rng.path_keys(root, 0, chunk)
    if not (isinstance(world_substeps, int) and world_substeps >= 1):
        raise ValueError(f"world_substeps = {world_substeps!r}: must be an integer >= 1")
    sub = world_substeps
    fn_done = _compile_start(
        world, mp, ep, keys0, n_steps=n_steps, dt=dt, dtype=dtype, trace=False, devices=devices, substeps=sub
    )
    trace_done = None
    if n_trace > 0:  # the trace program compiles alongside the simulation's
        nt = int(math.ceil(min(n_trace, n_paths) / nd) * nd)
        tkeys = rng.path_keys(root, 0, nt)
        trace_done = _compile_start(
            world, mp, ep, tkeys, n_steps=n_steps, dt=dt, dtype=dtype, trace=True, devices=devices, substeps=sub
        )
    fresh = fn_done.fresh or (trace_done is not None and trace_done.fresh)
    if progress and fresh:
        why = (
            " (the structure changed: a static field, the number of assets or scheduled events)"
            if fn_done.restructured
            else " (XLA's disk cache, when on, makes the next run faster)"
        )
        print(f"compiling the {world} simulation for {chunk} paths x {n_steps} steps{why} ...", end="", flush=True)
    fn, compile_s = fn_done.finish()
    tfn = None
    if trace_done is not None:  # before the chunks run: the compile must not slow (or time into) them
        tfn, tc = trace_done.finish()
        compile_s += tc
    if progress and fresh:
        print(f" done in {compile_s:.1f} s", flush=True)
    pid, pcount = jax.process_index(), jax.process_count()
    mine = list(range(pid, n_chunks, pcount))
    it = mine
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(mine, desc=f"{world}: chunks of {chunk} paths", unit="chunk")
    t0 = time.perf_counter()
    outs = []
    for c in it:
        outs.append(fn(rng.path_keys(root, c * chunk, chunk), mp, ep))
        if len(outs) >= 2:  # keep at most two chunks in flight
            outs[-2] = jax.device_get(outs[-2])
    outs = [jax.device_get(o) for o in outs]
    run_s = time.perf_counter() - t0
    summary = PathSummary(
        *(np.concatenate([np.asarray(getattr(o, f)) for o in outs])[:n_paths] for f in PathSummary._fields)
    )

    trace = None
    if tfn is not None:
        _, rows = jax.device_get(tfn(tkeys, mp, ep))
        rows = [np.asarray(x)[: min(n_trace, n_paths)] for x in rows]
        every = trace_stride(n_steps)
        trace = Trace(np.arange(0, n_steps + 1, every) * dt, *rows)

    done = len(mine) * chunk if pcount > 1 else n_paths
    return SimResult(
        summary=summary,
        trace=trace,
        n_paths=n_paths,
        n_steps=n_steps,
        dt=dt,
        seed=int(seed),
        chunk_size=chunk,
        n_devices=nd,
        compile_s=compile_s,
        run_s=run_s,
        path_steps_per_s=done * n_steps / max(run_s, 1e-12),
        world=world,
        initial_equity=float(np.asarray(engine_params.account.initial_equity)),
        world_substeps=sub,
    )


# ------------------------------------------------------------------------------------------------
# Multilevel splitting


def split(
    world: str,
    market_params: Any,
    engine_params: engine.EngineParams,
    *,
    levels,
    n_paths: int,
    n_steps: int,
    dt: float,
    seed: int,
    replicates: int = 8,
    dtype: Any = jnp.float32,
    world_substeps: int = 1,
    alpha: float = 0.05,
    **split_kwargs,
) -> dict:
    """P(liquidation by ``n_steps`` steps of ``dt`` seconds) by fixed-effort multilevel splitting
    (:func:`mmsim.sim.rare.split`) on the path's running minimum margin ratio (equity over the
    maintenance margin; the account is liquidated below 1): the paths whose margin ratio has
    fallen below ``levels[k]`` continue from there, cloned with fresh keys. The same per-path
    step as :func:`simulate`; ``market_params.tilt`` must be None (splitting needs no tilt).
    ``split_kwargs`` (``pilot_paths``, ``stage_p``, ...) go to :func:`mmsim.sim.rare.split`; the
    pilot's levels stop above a margin ratio of 1 (the liquidation itself is the last stage). The
    result's ``time_to_liquidation`` is P(liquidated by t) at ten times, with its t-interval over
    the replicates."""
    from mmsim.sim import rare

    worlds.get(world)
    _validate(n_paths, n_steps, dt, None, 0)
    if getattr(market_params, "tilt", None) is not None:
        raise ValueError("market.tilt must be null for splitting: it estimates under the nominal law")
    mp = cast_floats(market_params, dtype)
    ep = cast_floats(engine_params, dtype)
    start, one, _ = _path_fns(mp, ep, world=world, dt=float(dt), dtype=dtype, trace=False, substeps=world_substeps)

    def advance(key, carry, t):
        return one(key, carry, t)[0]

    def score(carry):
        r = carry[3]
        return r.min_margin_ratio.astype(jnp.float64), r.liquidated

    out = rare.split(
        start,
        advance,
        score,
        levels=levels,
        n_paths=int(n_paths),
        n_steps=int(n_steps),
        seed=seed,
        replicates=replicates,
        alpha=alpha,
        mark=lambda carry: carry[3].liq_time.astype(jnp.float64),
        mark_at=np.linspace(0.0, n_steps * float(dt), 11)[1:],
        **{"floor": 1.0, **split_kwargs},
    )
    c = out.pop("curve")  # P(liquidated by t), as the importance-sampling runs report it
    out["time_to_liquidation"] = {"t": c["x"], **{k: c[k] for k in ("estimate", "ci_low", "ci_high")}}
    return out


# ------------------------------------------------------------------------------------------------
# Importance sampling


def importance_sample(
    world: str,
    market_params: Any,
    engine_params: engine.EngineParams,
    *,
    n_paths: int,
    n_steps: int,
    dt: float,
    seed: int,
    tilt: Any = None,
    ce_iterations: int = 3,
    ce_paths: int = 2048,
    elite_frac: float = 0.1,
    bucket_s: float = 0.0,
    against_position: bool = False,
    score: str = "margin_ratio",
    alpha: float = 0.05,
    **kwargs,
) -> tuple[dict, SimResult]:
    """P(liquidation) by importance sampling in the tilted world (:mod:`mmsim.world.tilt`).

    The tilt is ``tilt`` (a :class:`~mmsim.world.tilt.TiltParams`) or, when None, chosen by
    ``ce_iterations`` cross-entropy updates (:func:`mmsim.sim.rare.cross_entropy_tilt`), each a
    run of ``ce_paths`` paths on a seed of its own (``seed + 1 + k``), starting from the nominal
    law; the estimate is then a run of ``n_paths`` paths on ``seed``. With ``bucket_s > 0`` the
    cross-entropy tilt has one value per time bucket of ``bucket_s`` seconds (0: one for the whole
    horizon), and with ``against_position`` its drift, flow imbalance and busy-cascade tilt act
    against the market maker's position (:func:`mmsim.world.tilt.facing`). ``score`` ranks the
    paths for the elite: ``margin_ratio`` (the minimum margin ratio) or ``excess`` (the minimum
    equity above the maintenance margin, which a large position alone does not lower).
    ``kwargs`` go to :func:`simulate`. Returns the estimate's dict (:func:`mmsim.sim.rare.is_estimate`,
    with the tilt and the iterations) and the tilted run (its ``summary.log_w`` the paths' log
    weights).
    """
    from mmsim.sim import rare

    if not hasattr(market_params, "tilt"):
        raise ValueError(f"world {world!r} has no tilt: importance sampling needs the market world")
    if not (isinstance(ce_iterations, int) and ce_iterations >= 0):
        raise ValueError(f"ce_iterations = {ce_iterations!r}: must be an integer >= 0")
    if not (math.isfinite(bucket_s) and bucket_s >= 0):
        raise ValueError(f"bucket_s = {bucket_s!r}: must be a number of seconds >= 0")
    if score not in rare.CE_SCORES:
        raise ValueError(f"score = {score!r}: must be one of {sorted(rare.CE_SCORES)}")
    iterations = []
    if tilt is None:
        k = max(1, math.ceil(n_steps * dt / bucket_s)) if bucket_s > 0 else 1
        tilt = tilt_mod.neutral(k, bucket_s, against_position)
        for i in range(ce_iterations):
            mp = dataclasses.replace(market_params, tilt=tilt)
            r = simulate(
                world, mp, engine_params, n_paths=ce_paths, n_steps=n_steps, dt=dt, seed=seed + 1 + i, **kwargs
            )
            s = r.summary
            upd = rare.cross_entropy_tilt(
                getattr(s, rare.CE_SCORES[score]), s.liquidated, s.log_w, s.tilt_stats, elite_frac=elite_frac
            )
            iterations.append({"tilt": tilt_mod.as_dict(tilt), "hits": int(np.sum(s.liquidated)), **upd})
            tilt = tilt_mod.from_dict({**upd["tilt"], "bucket_s": tilt.bucket_s, "against_position": against_position})
    mp = dataclasses.replace(market_params, tilt=tilt)
    r = simulate(world, mp, engine_params, n_paths=n_paths, n_steps=n_steps, dt=dt, seed=seed, **kwargs)
    est = rare.is_estimate(r.summary.liquidated, r.summary.log_w, alpha)
    est.update({"tilt": tilt_mod.as_dict(tilt), "ce_iterations": iterations, "elite_frac": elite_frac, "score": score})
    return est, r
