"""What multilevel splitting costs against plain paths, and where: the same paths and steps run
as a plain scan and as one splitting stage (its vmapped ``while_loop``) in the same process, then
a replicate's stages with the share of the loop's lane-steps that are active (a lane whose path
has reached the level, or the horizon, idles until the last one of its batch is done).

    python scripts/bench_split.py                       # cascade_stress, 1,024 paths
    python scripts/bench_split.py --paths 512 --overrides sim.horizon_s=600

Prints a table and writes nothing; the figures of a run are in experiments/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import time


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", default="cascade_stress")
    p.add_argument("--overrides", nargs="*", default=[])
    p.add_argument("--paths", type=int, default=1024)
    p.add_argument("--equal-work-s", type=float, default=600.0, help="horizon of the plain-vs-stage comparison, s")
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()

    import jax
    import jax.numpy as jnp
    import numpy as np

    from mmsim import config, rng
    from mmsim._pytree import cast_floats
    from mmsim.sim import rare
    from mmsim.sim import simulate as sim

    sim.use_cpu_cores()
    print(f"{platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}, {a.paths} paths")

    def world_of(extra):
        world, mp, ep, s = config.build(config.compose([f"experiment={a.experiment}", *a.overrides, *extra]))
        kw = s.simulate_kwargs()
        m, e = cast_floats(mp, kw["dtype"]), cast_floats(ep, kw["dtype"])
        start, one, _ = sim._path_fns(
            m, e, world=world, dt=kw["dt"], dtype=kw["dtype"], trace=False, substeps=kw["world_substeps"]
        )

        def score(c):
            return c[3].min_margin_ratio.astype(jnp.float64), c[3].liquidated

        stage = rare._stage_fn(lambda k, c, t: one(k, c, t)[0], score, kw["n_steps"], jax.local_devices())
        return world, mp, ep, kw, jax.jit(jax.vmap(start)), stage, score

    n = a.paths
    keys = rng.path_keys(rng.key(a.seed), 0, n)

    # 1. Equal work: every path runs to the horizon, as a scan and as one stage with no level.
    world, mp, ep, kw, start, stage, _ = world_of([f"sim.horizon_s={a.equal_work_s}"])
    steps = kw["n_steps"]
    walls = {}
    for name in ("plain", "stage"):
        for _ in range(2):  # the first call compiles
            t0 = time.perf_counter()
            if name == "plain":
                sim.simulate(
                    world, mp, ep, n_paths=n, n_steps=steps, dt=kw["dt"], seed=a.seed, dtype=kw["dtype"],
                    progress=False, world_substeps=kw["world_substeps"], chunk_size=n,
                )  # fmt: skip
            else:
                out = stage(keys, start(keys), jnp.zeros((n,), jnp.int32), jnp.float64(-np.inf), jnp.bool_(True))
                jax.block_until_ready(out)
            walls[name] = time.perf_counter() - t0
    print(f"\nequal work, {n} paths x {steps} steps: plain scan {walls['plain']:.2f} s, one splitting stage "
          f"{walls['stage']:.2f} s: ratio {walls['stage'] / walls['plain']:.2f}")  # fmt: skip

    # 2. A replicate of the experiment's own horizon, levels from a pilot on the same paths.
    _, _, _, kw, start, stage, _ = world_of([])
    levels, _ = rare._pilot_levels(start, stage, n, a.seed, 0.2, 1.0, 40)
    carry, t = start(keys), jnp.zeros((n,), jnp.int32)
    gen = np.random.default_rng(a.seed)
    head = ("stage", 5), ("level", 8), ("kept", 6), ("active lane-steps", 18), ("loop lane-steps", 16)
    print("\n" + " ".join(f"{h:>{w}}" for h, w in (*head, ("active share", 13), ("wall s", 7))))
    tot_a = tot_w = 0
    for s, lv in enumerate([*levels, -np.inf]):
        final = s == len(levels)
        t0 = time.perf_counter()
        carry, t_end, hit, _ = stage(keys, carry, t, jnp.float64(lv), jnp.bool_(final))
        hit = np.asarray(hit)
        wall = time.perf_counter() - t0
        d = np.asarray(t_end) - np.asarray(t)
        act, width = int(d.sum()), int(d.max()) * n
        tot_a, tot_w = tot_a + act, tot_w + width
        print(f"{s:>5} {lv:>8.3g} {hit.mean():>6.3f} {act:>18,} {width:>16,} {act / width:>13.2f} {wall:>7.1f}")
        if final or not hit.any():
            break
        pick = gen.choice(np.flatnonzero(hit), size=n, replace=True)
        carry = jax.tree_util.tree_map(lambda x, pick=pick: x[pick], carry)
        t = jnp.asarray(np.asarray(t_end)[pick])
        keys = rng.path_keys(rng.fold_in(rng.key(a.seed), s + 1), 0, n)
    print(f"\nactive share of the loop over the replicate: {tot_a / tot_w:.2f} (compacting the active "
          f"paths between chunks of steps would save at most {1 - tot_a / tot_w:.0%} of its lane-steps)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
