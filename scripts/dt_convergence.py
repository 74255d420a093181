"""Liquidation triggering against the world's step dt: the two trigger kinds of the liquidation
process on a Brownian log price (sigma per sqrt(second), no jumps, no self-excitation, no impact),
liquidations per second at dt = 1, 0.5, 0.25, 0.1 s (after a 200-s burn-in) against the exact law of
each scheme and the continuous-time limit; the table in docs/MODEL.md is its output.

    python scripts/dt_convergence.py --paths 4096 --horizon 3600
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from mmsim.world.processes import liquidation as liq  # noqa: E402
from tests.world.processes.test_liquidation import DIFFUSION, diffusion_rate  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--paths", type=int, default=4096)
    ap.add_argument("--horizon", type=float, default=3600.0)
    ap.add_argument("--sigma", type=float, default=1e-4, help="per sqrt(second)")
    a = ap.parse_args()
    jax.config.update("jax_enable_x64", True)
    print("| trigger kind | dt (s) | liquidations / s | ± se | exact law of the scheme | continuous limit |")
    print("|---|---|---|---|---|---|")
    for kind in ("step_return", "drawdown"):
        p = liq.LiqParams(**DIFFUSION, trigger_kind=kind)
        lim = liq.stationary_rate_on_a_diffusion(p, a.sigma, None) if kind == "drawdown" else math.inf
        for dt in (1.0, 0.5, 0.25, 0.1):
            rates = diffusion_rate(p, a.sigma, dt, a.horizon, a.paths)
            m, se = rates.mean(), rates.std(ddof=1) / math.sqrt(a.paths)
            exact = liq.stationary_rate_on_a_diffusion(p, a.sigma, dt)
            print(f"| {kind} | {dt:g} | {m:.5f} | {se:.5f} | {exact:.5f} | {lim:.5f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
