"""Path-steps per second of each world process, of the composed world step and of world + engine.

Each case runs as ``vmap`` over paths of a ``lax.scan`` over steps, jitted once, with the params
passed as float32 arguments of the compiled function (as :func:`mmsim.sim.simulate.simulate` does, so
nothing is folded into constants that the simulator would compute at run time). Processes run
alone with constant drivers; ``world`` is :func:`mmsim.world.market.step` of the calm BTCUSDT market
(every process on, our quote resolved against the flow); ``world + engine`` adds
:func:`mmsim.engine.step` with the spec policy. The first call compiles (timed apart); the figure
is the best of ``--repeat`` timed calls. Run on CPU by default; on a machine with a GPU, JAX uses
it and the device is printed.

    python scripts/bench_processes.py [--paths 16384] [--steps 100] [--dtype float32] [--only world]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from mmsim import engine, rng
from mmsim._pytree import cast_floats
from mmsim.engine import account, policy
from mmsim.world import market
from mmsim.world.processes import adverse_selection as adv
from mmsim.world.processes import correlation as corr
from mmsim.world.processes import funding as fund
from mmsim.world.processes import liquidation as liq
from mmsim.world.processes import order_flow as flow
from mmsim.world.processes import price as px
from mmsim.world.processes import spread as spr
from mmsim.world.processes import volatility as vol


def bench(name, init_fn, step_fn, params, n_paths, n_steps, repeat):
    def path(k, p):
        def body(s, t):
            return step_fn(rng.fold_in(k, t), s, p)[0], None

        return jax.lax.scan(body, init_fn(p), jnp.arange(n_steps))[0]

    f = jax.jit(jax.vmap(path, in_axes=(0, None)))
    keys = rng.path_keys(rng.key(0), 0, n_paths)
    t0 = time.perf_counter()
    compiled = f.lower(keys, params).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(compiled(keys, params))
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(keys, params))
        best = min(best, time.perf_counter() - t0)
    rate = n_paths * n_steps / best
    print(f"{name:<20} {rate / 1e6:10.2f} M path-steps/s   (compile {compile_s:5.2f} s)", flush=True)
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--paths", type=int, default=16_384)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--only", default="", help="comma-separated case names")
    a = ap.parse_args()
    dt_ = jnp.dtype(a.dtype)
    mp = market.default_params()
    ep = engine.EngineParams(policy=policy.PolicyParams(), account=account.AccountParams())
    params = cast_floats((mp, ep), dt_)
    n = mp.n_assets
    dt = 1.0
    z = jnp.zeros((n,), dt_)
    v = jnp.full((n,), 1e-8, dt_)
    print(
        f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), {a.paths} paths x {a.steps} steps, "
        f"{a.dtype}"
    )
    print(f"{'case':<20} {'throughput':>10}")

    def world_init(p):
        m, e = p
        return market.init(m, dt_), engine.init(e, dt_), policy.no_quote(n, dt_)

    def world_step(k, s, p):
        m, e = p
        w, est, q = s
        w, obs, _ = market.step(k, w, m, dt, q)
        est, q, _ = engine.step(e, est, obs)
        return (w, est, q), None

    cases = {
        "price": (
            lambda p: px.init(p[0].price, n, dt_),
            lambda k, s, p: px.step(k, s, p[0].price, dt, v, lev_shock=z, resid_var=v, z=z),
        ),
        "volatility": (lambda p: vol.init(p[0].vol, n, dt_), lambda k, s, p: vol.step(k, s, p[0].vol, dt, z_var=z)),
        "order_flow": (
            lambda p: flow.init(p[0].flow, n, dt_),
            lambda k, s, p: flow.step(k, s, p[0].flow, dt, informed_frac=jnp.full((n,), 0.15, dt_)),
        ),
        "spread": (
            lambda p: spr.init(p[0].spread, n, dt_),
            lambda k, s, p: spr.step(
                k, s, p[0].spread, dt, sigma=jnp.sqrt(v), regime=jnp.int32(1), mid=jnp.full((n,), 6e4, dt_)
            ),
        ),
        "adverse_selection": (
            lambda p: adv.init(p[0].adverse, n, dt_),
            lambda k, s, p: adv.step(k, s, p[0].adverse, dt),
        ),
        "funding": (lambda p: fund.init(p[0].funding, n, dt_), lambda k, s, p: fund.step(k, s, p[0].funding, dt)),
        "liquidation": (
            lambda p: liq.init(p[0].liquidation, n, dt_),
            lambda k, s, p: liq.step(k, s, p[0].liquidation, dt, last_ret=z),
        ),
        "correlation": (
            lambda p: corr.init(p[0].correlation, n, dt_),
            lambda k, s, p: corr.step(k, s, p[0].correlation, dt, regime=jnp.int32(1)),
        ),
        "world": (lambda p: market.init(p[0], dt_), lambda k, s, p: market.step(k, s, p[0], dt)),
        "world + engine": (world_init, world_step),
    }
    only = {x.strip() for x in a.only.split(",") if x.strip()}
    for name, (i, s) in cases.items():
        if not only or name in only:
            bench(name, i, s, params, a.paths, a.steps, a.repeat)


if __name__ == "__main__":
    main()
