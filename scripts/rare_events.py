"""P(liquidation) three ways on one scenario: plain Monte Carlo, multilevel splitting and
importance sampling (cross-entropy tilt), with their intervals, costs and diagnostics.

    python scripts/rare_events.py --overrides market.shock_return=-0.10 --plain 131072 \
        --out experiments/rare_events/crash10_1h.json
    python scripts/rare_events.py --horizon 86400 --plain 0 --is 0 --split-paths 512 --replicates 4 --out ...

Every run uses the experiment's config (``experiment=cascade_stress`` unless ``--experiment``)
with the given overrides; ``--plain 0`` / ``--is 0`` / ``--split-paths 0`` skip an estimator.
Writes one JSON file (the estimates, their wall times and path-steps, the machine) and prints
a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", default="cascade_stress")
    p.add_argument("--overrides", nargs="*", default=[])
    p.add_argument("--horizon", type=float, default=None, help="seconds (default: the experiment's)")
    p.add_argument("--plain", type=int, default=65536, help="plain paths (0: skip)")
    p.add_argument("--is", dest="n_is", type=int, default=16384, help="importance-sampling paths (0: skip)")
    p.add_argument("--ce-paths", type=int, default=4096)
    p.add_argument("--ce-iterations", type=int, default=3)
    p.add_argument("--bucket-s", type=float, default=0.0, help="seconds per time bucket of the CE tilt (0: one tilt)")
    p.add_argument("--against-position", action="store_true", help="CE drift and flow against the position")
    p.add_argument("--score", default="margin_ratio", choices=["margin_ratio", "excess"], help="CE's elite ranking")
    p.add_argument("--elite-frac", type=float, default=0.1)
    p.add_argument("--tilt", default=None, help='a fixed tilt as JSON, no cross-entropy: {"price_drift": -0.01}')
    p.add_argument("--split-paths", type=int, default=2048, help="paths per splitting stage (0: skip)")
    p.add_argument("--replicates", type=int, default=8)
    p.add_argument("--pilot-paths", type=int, default=1024)
    p.add_argument("--stage-p", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--loss", type=float, default=0.2, help="drain threshold, fraction of equity")
    p.add_argument("--out", required=True)
    a = p.parse_args()

    import numpy as np

    from mmsim import config
    from mmsim.sim import risk
    from mmsim.sim import simulate as sim
    from mmsim.world import tilt as tilt_mod

    sim.use_cpu_cores()
    ov = [f"experiment={a.experiment}", *a.overrides]
    if a.horizon is not None:
        ov.append(f"sim.horizon_s={a.horizon}")
    world, mp, ep, s = config.build(config.compose(ov))
    kw = s.simulate_kwargs()
    n_steps, dt, dtype, sub = kw["n_steps"], kw["dt"], kw["dtype"], kw["world_substeps"]
    out: dict = {
        "overrides": ov,
        "n_steps": n_steps,
        "dt_s": dt,
        "world_substeps": sub,
        "dtype": str(np.dtype(dtype)),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
    }
    rows = []
    if a.plain:
        t0 = time.perf_counter()
        r = sim.simulate(
            world, mp, ep, n_paths=a.plain, n_steps=n_steps, dt=dt, seed=a.seed, dtype=dtype, progress=False,
            world_substeps=sub,
        )  # fmt: skip
        wall = time.perf_counter() - t0
        pl = risk.proportion(r.summary.liquidated)
        loss = risk.proportion(r.summary.pnl < -a.loss * r.initial_equity)
        liq_t = r.summary.liq_time[r.summary.liquidated]
        out["plain"] = {
            **pl,
            "wall_s": wall,
            "path_steps": a.plain * n_steps,
            "p_loss": {"threshold": a.loss, **loss},
            "pnl_over_equity_q50": float(np.median(r.summary.pnl) / r.initial_equity),
            "liq_time_q": np.quantile(liq_t, [0.05, 0.5, 0.95]).tolist() if liq_t.size else None,
        }
        rows.append(("plain", pl["estimate"], pl["ci_low"], pl["ci_high"], wall, a.plain * n_steps))
    if a.split_paths:
        t0 = time.perf_counter()
        est = sim.split(
            world,
            mp,
            ep,
            levels="auto",
            n_paths=a.split_paths,
            n_steps=n_steps,
            dt=dt,
            seed=a.seed + 1,
            replicates=a.replicates,
            dtype=dtype,
            pilot_paths=a.pilot_paths,
            stage_p=a.stage_p,
            world_substeps=sub,
        )
        est["wall_s"] = time.perf_counter() - t0
        out["splitting"] = est
        rows.append(("splitting", est["estimate"], est["ci_low"], est["ci_high"], est["wall_s"], est["path_steps"]))
    if a.n_is:
        t0 = time.perf_counter()
        est, _ = sim.importance_sample(
            world,
            mp,
            ep,
            n_paths=a.n_is,
            n_steps=n_steps,
            dt=dt,
            seed=a.seed + 2,
            tilt=None if a.tilt is None else tilt_mod.from_dict(json.loads(a.tilt)),
            ce_iterations=0 if a.tilt is not None else a.ce_iterations,
            ce_paths=a.ce_paths,
            bucket_s=a.bucket_s,
            against_position=a.against_position,
            score=a.score,
            elite_frac=a.elite_frac,
            dtype=dtype,
            progress=False,
            world_substeps=sub,
        )
        est["wall_s"] = time.perf_counter() - t0
        est["path_steps"] = (a.n_is + (0 if a.tilt is not None else a.ce_iterations) * a.ce_paths) * n_steps
        out["importance"] = est
        rows.append(("importance", est["estimate"], est["ci_low"], est["ci_high"], est["wall_s"], est["path_steps"]))
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1, default=float)
    print(" ".join(ov))
    print(f"{'estimator':<12}{'estimate':>12}{'ci_low':>12}{'ci_high':>12}{'wall s':>9}{'path-steps':>14}")
    for name, e, lo, hi, w, ps in rows:
        f = lambda x: "-" if x is None else f"{x:.3g}"  # noqa: E731
        print(f"{name:<12}{f(e):>12}{f(lo):>12}{f(hi):>12}{w:>9.0f}{ps:>14,}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
