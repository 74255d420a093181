"""Throughput of the simulator: as2008 and cascade_stress, against a numpy as2008 in the same process.

    python scripts/bench.py            # full: 1e5 as2008 paths, 16384 cascade_stress paths x 600 steps
    python scripts/bench.py --quick    # a smaller version
    python scripts/bench.py --memory   # also 1e6 cascade_stress paths (chunked) for peak memory

Path-steps per second count every simulated path-step over the run time without compilation
(the compile time is printed separately). The numpy reference is the same as2008 model written the
way peers vectorise over paths with numpy (mid coin flip, AS quotes, exponential fill
probabilities), float64 and float32. Ratios against it are what to compare across machines.
"""

from __future__ import annotations

import argparse
import platform
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
from hydra import compose, initialize_config_dir

from mmsim import config
from mmsim import simulate as sim

CONF = str((__import__("pathlib").Path(__file__).resolve().parents[1] / "conf"))


def numpy_as2008(n_paths: int, gamma: float = 0.1, dtype=np.float64, seed: int = 0) -> float:
    """Seconds to simulate the AS 2008 inventory strategy for ``n_paths`` paths in numpy."""
    sigma, a, k, t_end, dt = 2.0, 140.0, 1.5, 1.0, 0.005
    g = np.random.default_rng(seed)
    s = np.full(n_paths, 100.0, dtype)
    q = np.zeros(n_paths, dtype)
    cash = np.zeros(n_paths, dtype)
    t0 = time.perf_counter()
    for i in range(int(round(t_end / dt))):
        tau = t_end - i * dt
        r = s - q * (gamma * sigma**2 * tau)
        half = 0.5 * (gamma * sigma**2 * tau + 2.0 / gamma * np.log1p(gamma / k))
        bid, ask = r - half, r + half
        u = g.random((3, n_paths), dtype=dtype)
        hb = u[0] < np.minimum(1.0, a * np.exp(-k * (s - bid)) * dt)
        ha = u[1] < np.minimum(1.0, a * np.exp(-k * (ask - s)) * dt)
        q += hb.astype(dtype) - ha.astype(dtype)
        cash += np.where(ha, ask, 0.0) - np.where(hb, bid, 0.0)
        s += np.where(u[2] < 0.5, 1.0, -1.0).astype(dtype) * (sigma * np.sqrt(dt))
    _ = float((cash + q * s).mean())
    return time.perf_counter() - t0


def build(*overrides: str):
    with initialize_config_dir(config_dir=CONF, version_base=None):
        cfg = compose(config_name="config", overrides=list(overrides))
    return config.build(cfg)


def run(world, mp, ep, n_paths, n_steps, dt, dtype, chunk=None):
    r = sim.simulate(world, mp, ep, n_paths=n_paths, n_steps=n_steps, dt=dt, seed=0, dtype=dtype,
                     chunk_size=chunk, progress=False)
    if r.compile_s == 0.0:   # cached: compile time already reported by an earlier call
        return r
    # Time a second, compiled, run so that first-call effects do not count.
    r2 = sim.simulate(world, mp, ep, n_paths=n_paths, n_steps=n_steps, dt=dt, seed=1, dtype=dtype,
                      chunk_size=chunk, progress=False)
    r2.compile_s = r.compile_s
    return r2


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--memory", action="store_true", help="1e6 chunked cascade_stress paths (slow on a CPU)")
    a = ap.parse_args()
    n_as = 20_000 if a.quick else 100_000
    n_cs, steps_cs = (2048, 300) if a.quick else (16_384, 600)
    dev = jax.devices()[0]
    print(f"# {platform.processor() or platform.machine()}, {jax.device_count()} x {dev.platform} "
          f"({dev.device_kind}), jax {jax.__version__}")
    rows = []
    ref64 = n_as * 200 / numpy_as2008(n_as)
    ref32 = n_as * 200 / numpy_as2008(n_as, dtype=np.float32)
    rows.append(("as2008 numpy float64 (reference)", ref64, 1.0, float("nan")))
    rows.append(("as2008 numpy float32", ref32, ref32 / ref64, float("nan")))
    world, mp, ep, s = build("experiment=as2008")
    for dtype in (jnp.float32, jnp.float64):
        r = run(world, mp, ep, n_as, s.n_steps, s.dt, dtype)
        rows.append((f"as2008 mmsim {jnp.dtype(dtype).name}", r.path_steps_per_s, r.path_steps_per_s / ref64,
                     r.compile_s))
    world, mp, ep, s = build("experiment=cascade_stress")
    r = run(world, mp, ep, n_cs, steps_cs, s.dt, jnp.float32)
    rows.append((f"cascade_stress mmsim float32 ({n_cs} x {steps_cs})", r.path_steps_per_s,
                 r.path_steps_per_s / ref64, r.compile_s))
    print(f"\n{'run':<46} {'path-steps/s':>14} {'vs numpy f64':>13} {'compile s':>10}")
    for name, rate, ratio, comp in rows:
        print(f"{name:<46} {rate:>14,.0f} {ratio:>13.2f} {comp:>10.1f}")
    if a.memory:
        n, steps = 1_000_000, 60
        t0 = time.perf_counter()
        r = sim.simulate(world, mp, ep, n_paths=n, n_steps=steps, dt=s.dt, seed=0, progress=True)
        print(f"\ncascade_stress 1e6 paths x {steps} steps, chunks of {r.chunk_size}: "
              f"{r.path_steps_per_s:,.0f} path-steps/s, {time.perf_counter() - t0:.0f} s, "
              f"peak RSS {peak_rss_gib():.2f} GiB")
    print(f"\npeak RSS of this process: {peak_rss_gib():.2f} GiB")


if __name__ == "__main__":
    main()
