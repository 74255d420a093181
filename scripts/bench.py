"""Throughput of the simulator against a plain numpy reference, measured in one process.

Rows (path-steps per second = paths x steps / run seconds, compilation excluded and reported
apart; the best of ``--repeat`` runs):

* ``numpy as2008``: the Avellaneda & Stoikov (2008) simulation written as plain vectorised numpy
  over paths: coin-flip mid ``+- sigma sqrt(dt)``, the inventory strategy's quotes (reservation
  price ``s - q gamma sigma^2 (T - t)``, spread ``gamma sigma^2 (T - t) + (2/gamma) ln(1 + gamma/k)``)
  and fills with probability ``min(1, A exp(-k delta) dt)`` on each side; 200 steps of 0.005.
  It is the reference every ratio is taken against (same process, same moment: the ratio is
  what survives a shared or throttled machine).
* ``mmsim as2008``: the same model through :func:`mmsim.sim.simulate.simulate` (world ``as2008``, the
  ``lite`` engine, the margin account and the running risk metrics), float32, for a few chunk
  sizes.
* ``mmsim cascade_stress``: ``experiment=cascade_stress`` (every world process on, the full
  engine with the spec policy), float32, a number of steps of its 1-hour horizon, for a few chunk
  sizes.
* ``1e6-path run``: ``cascade_stress`` with a million paths in chunks, in a child process whose
  peak resident memory (``getrusage``) is reported; ``--big-steps`` steps only (the memory does
  not grow with the steps: only per-path summaries leave a chunk).

* ``as2008 experiment``: ``experiment=as2008`` as a user runs it (the task of
  ``python -m mmsim.run``: six runs of 1,000 paths, float64 and float32, compiled once in the
  process), its reported throughput against the numpy reference at the same size.
* ``--gpu``: on an accelerator, as2008 and cascade_stress at 1e6 and 1e7 paths (the accelerator's
  default chunk), against the same numpy reference on the host; refused where there is none.

    python scripts/bench.py            # full (a few minutes on 2 cores)
    python scripts/bench.py --quick    # small sizes (about a minute)
    python scripts/bench.py --gpu      # on a machine with an accelerator
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np

AS = dict(s0=100.0, sigma=2.0, A=140.0, k=1.5, gamma=0.1, T=1.0, dt=0.005)


def numpy_as2008(
    n_paths: int,
    seed: int = 0,
    *,
    s0=AS["s0"],
    sigma=AS["sigma"],
    A=AS["A"],
    k=AS["k"],
    gamma=AS["gamma"],
    T=AS["T"],
    dt=AS["dt"],
) -> tuple[np.ndarray, float]:
    """The AS (2008) inventory strategy, vectorised over paths with numpy (float64).

    Returns ``(final PnL per path, run seconds)``. Each step: quote around the reservation price,
    fill each side with probability ``min(1, A e^{-k delta} dt)`` against the mid of the start of
    the step, then move the mid ``+- sigma sqrt(dt)``.
    """
    rng = np.random.default_rng(seed)
    n_steps = int(round(T / dt))
    s = np.full(n_paths, s0)
    q = np.zeros(n_paths)
    cash = np.zeros(n_paths)
    half_base = np.log1p(gamma / k) / gamma  # (2/gamma) ln(1 + gamma/k) / 2
    step = sigma * np.sqrt(dt)
    u = np.empty((3, n_paths))
    pb = np.empty(n_paths)
    pa = np.empty(n_paths)
    t0 = time.perf_counter()
    for i in range(n_steps):
        tau = T - i * dt
        skew = gamma * sigma**2 * tau
        r = s - q * skew  # reservation price
        half = 0.5 * skew + half_base  # half the optimal spread
        bid = r - half
        ask = r + half
        np.multiply(-k, s - bid, out=pb)
        np.exp(pb, out=pb)
        pb *= A * dt
        np.multiply(-k, ask - s, out=pa)
        np.exp(pa, out=pa)
        pa *= A * dt
        rng.random(out=u)
        fb = u[0] < pb  # p >= 1 fills for sure, as min(1, p)
        fa = u[1] < pa
        q += fb
        q -= fa
        cash -= np.where(fb, bid, 0.0)
        cash += np.where(fa, ask, 0.0)
        s += np.where(u[2] < 0.5, step, -step)
    run = time.perf_counter() - t0
    return cash + q * s, run


def _machine() -> dict:
    import jax

    cpu = platform.processor() or ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return dict(
        cpu=cpu,
        cores=os.cpu_count(),
        jax=jax.__version__,
        backend=jax.default_backend(),
        device=str(jax.devices()[0].device_kind),
        python=platform.python_version(),
    )


def _configs(quick: bool):
    from mmsim import config

    _, mp_as, ep_as, sim_as = config.build(config.compose(["experiment=as2008"]))
    _, mp_cs, ep_cs, sim_cs = config.build(config.compose(["experiment=cascade_stress"]))
    return (mp_as, ep_as, sim_as), (mp_cs, ep_cs, sim_cs)


def _run(world, mp, ep, *, n_paths, n_steps, dt, chunk, repeat, dtype, devices):
    from mmsim.sim.simulate import simulate

    kw = dict(
        n_paths=n_paths, n_steps=n_steps, dt=dt, seed=0, chunk_size=chunk, dtype=dtype, progress=False, devices=devices
    )
    runs = [simulate(world, mp, ep, **kw) for _ in range(repeat)]  # the first compiles, the others reuse it
    return runs[0].compile_s, max(r.path_steps_per_s for r in runs), runs[0].chunk_size


def experiment_rows(repeat: int) -> list[dict]:
    """``experiment=as2008`` through the task a run performs, in float64 and float32: the best
    reported throughput of ``repeat`` runs (the first compiles; later ones reuse the programs)."""
    import tempfile

    from mmsim import config, tasks

    rows = []
    for dtype in ("float64", "float32"):
        best, first_compile = 0.0, None
        for _ in range(repeat):
            with tempfile.TemporaryDirectory() as d:
                cfg = config.compose(
                    ["experiment=as2008", f"sim.dtype={dtype}", "sim.progress=false", "compile_cache_dir=null"]
                )
                t0 = time.perf_counter()
                m = tasks.run_task(cfg, d)
                if first_compile is None:
                    first_compile = time.perf_counter() - t0
            best = max(best, float(m["throughput_path_steps_per_s"]))
        n_paths = int(config.compose(["experiment=as2008"]).sim.n_paths)
        rows.append(
            dict(
                name=f"as2008 experiment {dtype}",
                paths=n_paths,
                steps=200,
                chunk="-",
                compile_s=first_compile,
                rate=best,
            )
        )
    return rows


def gpu_rows(repeat: int) -> list[dict]:
    """as2008 and cascade_stress at 1e6 and 1e7 paths on the accelerator."""
    import jax
    import jax.numpy as jnp

    (mp_as, ep_as, sim_as), (mp_cs, ep_cs, sim_cs) = _configs(False)
    devs = jax.local_devices()
    rows = []
    for n in (1_000_000, 10_000_000):
        for world, mp, ep, steps, dt in (
            ("as2008", mp_as, ep_as, sim_as.n_steps, sim_as.dt),
            ("market", mp_cs, ep_cs, 200, sim_cs.dt),
        ):
            c, rate, ch = _run(
                world,
                mp,
                ep,
                n_paths=n,
                n_steps=steps,
                dt=dt,
                chunk=None,
                repeat=repeat,
                dtype=jnp.float32,
                devices=devs,
            )
            name = "as2008" if world == "as2008" else "cascade_stress"
            rows.append(
                dict(
                    name=f"{name} f32, {len(devs)} {devs[0].platform}",
                    paths=n,
                    steps=steps,
                    chunk=ch,
                    compile_s=c,
                    rate=rate,
                )
            )
    return rows


def big_run(n_paths: int, n_steps: int, chunk: int) -> dict:
    """The million-path chunked cascade_stress run (called in a child process), on every core."""
    import jax.numpy as jnp

    from mmsim.sim.simulate import simulate, use_cpu_cores

    use_cpu_cores()

    (_, _, _), (mp, ep, sim) = _configs(False)
    t0 = time.perf_counter()
    r = simulate(
        "market",
        mp,
        ep,
        n_paths=n_paths,
        n_steps=n_steps,
        dt=sim.dt,
        seed=0,
        chunk_size=chunk or None,
        dtype=jnp.float32,
        progress=False,
    )
    wall = time.perf_counter() - t0
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return dict(
        n_paths=n_paths,
        n_steps=n_steps,
        chunk=r.chunk_size,
        compile_s=r.compile_s,
        run_s=r.run_s,
        wall_s=wall,
        path_steps_per_s=r.path_steps_per_s,
        peak_rss_gib=rss_kib / 2**20,
        liquidated=float(np.mean(r.summary.liquidated)),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (about a minute)")
    ap.add_argument("--repeat", type=int, default=None, help="timed runs per row (best kept)")
    ap.add_argument("--big-paths", type=int, default=None, help="paths of the memory run (default 1e6)")
    ap.add_argument("--big-steps", type=int, default=None, help="steps of the memory run")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    ap.add_argument(
        "--cpu-devices",
        type=int,
        default=None,
        help="JAX CPU devices (default: one per core); mmsim rows run on one and on all",
    )
    ap.add_argument("--gpu", action="store_true", help="measure on the accelerator (1e6 and 1e7 paths)")
    ap.add_argument("--child-big", nargs=3, type=int, metavar=("PATHS", "STEPS", "CHUNK"), help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.child_big:
        print(json.dumps(big_run(*a.child_big)))
        return

    import jax
    import jax.numpy as jnp

    from mmsim.sim.simulate import use_cpu_cores

    if a.gpu and jax.default_backend() == "cpu":
        print("bench.py --gpu: no accelerator on this machine (JAX runs on the CPU); nothing measured", file=sys.stderr)
        raise SystemExit(2)
    n_dev = use_cpu_cores(a.cpu_devices) if not a.gpu else len(jax.local_devices())
    device_sets = [("1 core", jax.local_devices()[:1])]
    if len(jax.local_devices()) > 1:
        device_sets.append((f"{len(jax.local_devices())} cores", jax.local_devices()))
    quick = a.quick
    repeat = a.repeat or (2 if quick else 3)
    n_as = 65_536 if quick else 131_072
    n_cs = 16_384 if quick else 65_536
    cs_steps = 50 if quick else 200
    as_chunks = [None] if quick else [None, 65_536]
    cs_chunks = [None] if quick else [None, 2_048]
    big_paths = a.big_paths or (100_000 if quick else 1_000_000)
    big_steps = a.big_steps or (5 if quick else 20)

    m = _machine()
    print(
        f"machine: {m['cpu']}, {m['cores']} cores; jax {m['jax']} ({m['backend']}, {m['device']}); python {m['python']}"
    )
    (mp_as, ep_as, sim_as), (mp_cs, ep_cs, sim_cs) = _configs(quick)

    rows = []

    def ref():
        best = 0.0
        for i in range(repeat):
            _, run = numpy_as2008(n_as, seed=i)
            best = max(best, n_as * 200 / run)
        return best

    ref0 = ref()
    rows.append(dict(name="numpy as2008 (float64)", paths=n_as, steps=200, chunk="-", compile_s=0.0, rate=ref0))
    if a.gpu:
        device_sets = []  # the CPU rows are skipped: the accelerator's rows follow
        rows += gpu_rows(repeat)
    # The experiment as a user runs it, against the numpy reference at its own size.
    exp = experiment_rows(repeat)
    ref_small = max(1000 * 200 / numpy_as2008(1000, seed=i)[1] for i in range(max(repeat, 5)))
    for r in exp:
        r["vs_same_size_numpy"] = r["rate"] / ref_small
    rows += exp
    rows.append(
        dict(name="numpy as2008 (float64), 1000 paths", paths=1000, steps=200, chunk="-", compile_s=0.0, rate=ref_small)
    )
    for label, devs in device_sets:
        for chunk in as_chunks:
            c, rate, ch = _run(
                "as2008",
                mp_as,
                ep_as,
                n_paths=n_as,
                n_steps=sim_as.n_steps,
                dt=sim_as.dt,
                chunk=chunk,
                repeat=repeat,
                dtype=jnp.float32,
                devices=devs,
            )
            rows.append(
                dict(
                    name=f"mmsim as2008 f32, {label}",
                    paths=n_as,
                    steps=sim_as.n_steps,
                    chunk=ch,
                    compile_s=c,
                    rate=rate,
                )
            )
    for label, devs in device_sets:
        for chunk in cs_chunks:
            c, rate, ch = _run(
                "market",
                mp_cs,
                ep_cs,
                n_paths=n_cs,
                n_steps=cs_steps,
                dt=sim_cs.dt,
                chunk=chunk,
                repeat=repeat,
                dtype=jnp.float32,
                devices=devs,
            )
            rows.append(
                dict(
                    name=f"mmsim cascade_stress f32, {label}",
                    paths=n_cs,
                    steps=cs_steps,
                    chunk=ch,
                    compile_s=c,
                    rate=rate,
                )
            )
    ref1 = ref()  # the reference again: the machine may have changed speed meanwhile
    rows.append(dict(name="numpy as2008 (float64), again", paths=n_as, steps=200, chunk="-", compile_s=0.0, rate=ref1))
    ref_rate = 0.5 * (ref0 + ref1)

    big_chunk = 0  # the simulator's default
    cmd = [sys.executable, os.path.abspath(__file__), "--child-big", str(big_paths), str(big_steps), str(big_chunk)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    big = None
    if out.returncode == 0 and out.stdout.strip():
        big = json.loads(out.stdout.strip().splitlines()[-1])
    else:
        print(out.stderr[-2000:], file=sys.stderr)

    print()
    print(f"{n_dev} JAX CPU devices; chunk = paths per compiled call (split over the devices)")
    print(f"{'run':<34} {'paths':>9} {'steps':>6} {'chunk':>7} {'compile s':>10} {'M path-steps/s':>15} {'x numpy':>8}")
    for r in rows:
        print(
            f"{r['name']:<34} {r['paths']:>9} {r['steps']:>6} {str(r['chunk']):>7} {r['compile_s']:>10.2f} "
            f"{r['rate'] / 1e6:>15.2f} {r['rate'] / ref_rate:>8.2f}"
        )
    if big is not None:
        print(
            f"\n{big['n_paths']:.0e}-path cascade_stress, chunks of {big['chunk']}, {big['n_steps']} steps "
            f"(of {sim_cs.n_steps} in the experiment): peak RSS {big['peak_rss_gib']:.2f} GiB, "
            f"{big['path_steps_per_s'] / 1e6:.2f} M path-steps/s, compile {big['compile_s']:.1f} s, "
            f"run {big['run_s']:.1f} s"
        )
    for r in rows:
        if "vs_same_size_numpy" in r:
            print(f"{r['name']}: {r['vs_same_size_numpy']:.2f} x numpy at the experiment's size (1,000 paths)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(machine=m, rows=rows, reference_rate=ref_rate, big=big), f, indent=2, default=str)


if __name__ == "__main__":
    main()
