"""Stylised facts of the recorded BTCUSDT windows and of the simulated market, by the same code
(:func:`mmsim.fit.stylised.facts`): the share of 1-s intervals with an unchanged mid, how often the
bid falls while sells trade, the kurtosis and scale of 1-s returns, the touch depth and the traded
volume. Simulated: the configured market alone (nothing quoting), each path a window of the
recording's length; mean over paths with its standard error.

    python scripts/stylised_facts.py [--paths 64] [experiment=baseline ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from mmsim import config, live  # noqa: E402
from mmsim.fit import data, stylised  # noqa: E402
from mmsim.sim import world_only  # noqa: E402

CAPTURES = ("hftbacktest_binance_usdm_btcusdt_20230405.dat.gz", "hftbacktest_binance_usdm_btcusdt_20240808.gz")
KEYS = (
    "unchanged_mid",
    "bid_falls_with_sells",
    "return_kurtosis",
    "sigma_per_sqrt_s",
    "touch_depth_median",
    "volume_per_s",
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--paths", type=int, default=64)
    ap.add_argument("overrides", nargs="*", default=["experiment=baseline"])
    a = ap.parse_args()
    world, mp, _, _ = config.build(config.compose(a.overrides))
    tick = float(np.max(np.asarray(mp.spread.tick)))
    print("| window | " + " | ".join(KEYS) + " | intervals |")
    print("|---|" + "---|" * (len(KEYS) + 1))
    for name in CAPTURES:
        path = data.data_file(name)
        if path is None:
            print(f"| {name} | (not in the data directory) |")
            continue
        f = stylised.facts(stylised.window_from_feed(live.feed_from_capture(data.read_capture(path), 1.0), tick))
        print(
            f"| {name.split('_')[-1].split('.')[0]} (recorded) | "
            + " | ".join(f"{f[k]:.4g}" for k in KEYS)
            + f" | {f['n']} |"
        )
        obs = world_only.observations(world, mp, n_paths=a.paths, n_steps=f["n"] + 1, dt=1.0, seed=0)
        per = [stylised.facts(stylised.window_from_observations(obs, 1.0, tick, path=i)) for i in range(a.paths)]
        cells = []
        for k in KEYS:
            x = np.array([p[k] for p in per])
            cells.append(f"{x.mean():.4g} ± {x.std(ddof=1) / np.sqrt(len(x)):.2g}")
        print(
            f"| simulated ({' '.join(a.overrides)}), {a.paths} windows of {f['n']} s | "
            + " | ".join(cells)
            + f" | {f['n']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
