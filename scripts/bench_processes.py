"""Path-steps per second of each world process and of the composed world step.

Each process runs alone (with constant drivers) as ``vmap`` over paths of a ``lax.scan`` over
steps, jitted once; the composed world step runs the same way. The first call compiles (timed
apart); the figure is the best of ``--repeat`` timed calls. Run on CPU by default; on a machine
with a GPU, JAX uses it and the device is printed.

    python scripts/bench_processes.py [--paths 100000] [--steps 200] [--dtype float32]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from mmsim import market, rng
from mmsim.processes import adverse_selection as adv
from mmsim.processes import correlation as corr
from mmsim.processes import funding as fund
from mmsim.processes import liquidation as liq
from mmsim.processes import order_flow as flow
from mmsim.processes import price as px
from mmsim.processes import spread as spr
from mmsim.processes import volatility as vol


def bench(name, init_fn, step_fn, n_paths, n_steps, repeat):
    def path(k):
        def body(s, t):
            return step_fn(rng.fold_in(k, t), s)[0], None
        return jax.lax.scan(body, init_fn(), jnp.arange(n_steps))[0]

    f = jax.jit(jax.vmap(path))
    keys = rng.path_keys(rng.key(0), 0, n_paths)
    t0 = time.perf_counter()
    jax.block_until_ready(f(keys))
    compile_s = time.perf_counter() - t0
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        jax.block_until_ready(f(keys))
        best = min(best, time.perf_counter() - t0)
    rate = n_paths * n_steps / best
    print(f"{name:<20} {rate / 1e6:10.2f} M path-steps/s   (first call {compile_s:5.2f} s)")
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--paths", type=int, default=100_000)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dtype", default="float32")
    a = ap.parse_args()
    dt_ = jnp.dtype(a.dtype)
    mp = market.default_params()
    n = mp.n_assets
    dt = 1.0
    z = jnp.zeros((n,), dt_)
    v = jnp.full((n,), 1e-8, dt_)
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), {a.paths} paths x {a.steps} steps, {a.dtype}")
    print(f"{'process':<20} {'throughput':>10}")
    cases = {
        "price": (lambda: px.init(mp.price, n, dt_), lambda k, s: px.step(k, s, mp.price, dt, v)),
        "volatility": (lambda: vol.init(mp.vol, n, dt_), lambda k, s: vol.step(k, s, mp.vol, dt)),
        "order_flow": (lambda: flow.init(mp.flow, n, dt_), lambda k, s: flow.step(k, s, mp.flow, dt)),
        "spread": (lambda: spr.init(mp.spread, n, dt_),
                   lambda k, s: spr.step(k, s, mp.spread, dt, sigma=jnp.sqrt(v), regime=jnp.int32(1),
                                         mid=jnp.full((n,), 6e4, dt_))),
        "adverse_selection": (lambda: adv.init(mp.adverse, n, dt_), lambda k, s: adv.step(k, s, mp.adverse, dt)),
        "funding": (lambda: fund.init(mp.funding, n, dt_), lambda k, s: fund.step(k, s, mp.funding, dt)),
        "liquidation": (lambda: liq.init(mp.liquidation, n, dt_),
                        lambda k, s: liq.step(k, s, mp.liquidation, dt, last_ret=z)),
        "correlation": (lambda: corr.init(mp.correlation, n, dt_),
                        lambda k, s: corr.step(k, s, mp.correlation, dt, regime=jnp.int32(1))),
        "world (all)": (lambda: market.init(mp, dt_), lambda k, s: market.step(k, s, mp, dt)),
    }
    for name, (i, s) in cases.items():
        bench(name, i, s, a.paths, a.steps, a.repeat)


if __name__ == "__main__":
    main()
