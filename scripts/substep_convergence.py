"""Headline metrics against the world's step with the engine's cadence held: an experiment run at
``sim.world_substeps`` = 1, 2, 4, 10 (world steps of dt, dt/2, dt/4, dt/10; the engine still
quotes every dt), the same seed and paths; each metric with its Monte Carlo standard error (or
Clopper-Pearson interval for the probabilities). The tables in docs/MODEL.md section 8b are its
output.

    python scripts/substep_convergence.py [--paths 1024] [--substeps 1 2 4 10] \
        experiment=baseline market.book.model=tick
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from mmsim import config  # noqa: E402
from mmsim.sim import risk, simulate  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--paths", type=int, default=1024)
    ap.add_argument("--substeps", type=int, nargs="+", default=[1, 2, 4, 10])
    ap.add_argument("overrides", nargs="*", default=["experiment=baseline"])
    a = ap.parse_args()
    cfg = config.compose([*a.overrides, f"sim.n_paths={a.paths}", "sim.n_trace=0", "sim.progress=false"])
    world, mp, ep, sim = config.build(cfg)
    dd = config.risk_settings(cfg).drawdown_threshold
    print(f"{' '.join(a.overrides)}: {a.paths} paths, {sim.n_steps} engine steps of {sim.dt:g} s, seed {sim.seed}\n")
    print(
        "| world dt (s) | P(liquidation) [95 % CI] | P(max DD > "
        f"{dd:.0%}) [95 % CI] | PnL mean ± se | PnL sd | CVaR 99 | fills per hour ± se | adverse selection per fill "
        "| path-steps/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for n in a.substeps:
        kw = {**sim.simulate_kwargs(), "world_substeps": n}
        r = simulate.simulate(world, mp, ep, **kw)
        m = risk.summarize(r, dd)
        pnl = np.asarray(r.summary.pnl, float)
        fills = np.asarray(r.summary.n_fills, float).sum(axis=(-1, -2)) * 3600.0 / sim.horizon_s
        pl, pd = m["p_liquidation"], m["p_drawdown"]
        adverse = m["pnl_decomposition"]["adverse_selection"] / max(fills.mean() * sim.horizon_s / 3600.0, 1e-12)
        print(
            f"| {sim.dt / n:g} | {pl['estimate']:.4f} [{pl['ci_low']:.4f}, {pl['ci_high']:.4f}] "
            f"| {pd['estimate']:.3f} [{pd['ci_low']:.3f}, {pd['ci_high']:.3f}] "
            f"| {pnl.mean():.1f} ± {pnl.std(ddof=1) / np.sqrt(pnl.size):.1f} | {pnl.std(ddof=1):.1f} "
            f"| {m['pnl']['cvar_99']:.0f} | {fills.mean():.1f} ± {fills.std(ddof=1) / np.sqrt(fills.size):.1f} "
            f"| {adverse:.3f} | {r.path_steps_per_s:,.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
