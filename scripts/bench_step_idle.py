"""The live step's latency after the process has been idle: :meth:`mmsim.live.replay.Trader.on_interval`
over a recorded capture in memory, with the thread asleep for ``gap`` seconds before each call (a
live session waits for the next observation between two steps). Prints p50 / p99 in ms per gap.

    python scripts/bench_step_idle.py [--gaps 0 0.001 0.01 0.05 0.2] [--steps 150]

Needs the data directory (MMSIM_DATA or ../shared/data) for the capture.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--capture", default="hftbacktest_binance_usdm_btcusdt_20240808.gz")
    p.add_argument("--gaps", type=float, nargs="+", default=[0.0, 0.001, 0.01, 0.05, 0.2], help="s")
    p.add_argument("--steps", type=int, default=150)
    a = p.parse_args()
    from mmsim import config as mcfg
    from mmsim import live
    from mmsim.fit import data
    from mmsim.live.replay import Trader
    from mmsim.live.session import percentiles as pct

    path = data.data_file(a.capture)
    if path is None:
        print(f"no data directory (MMSIM_DATA or ../shared/data): {a.capture} is needed")
        return 1
    _, mp, ep, _ = mcfg.build(mcfg.compose(["experiment=baseline", "engine.warmup_s=30"]))
    feed = live.feed_from_capture(data.read_capture(path), 1.0, symbol="BTCUSDT")
    trader = Trader(ep, depth_per_tick=float(mp.fills.depth_per_tick))
    out = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or platform.platform()}",
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
    }
    n = min(a.steps, len(feed.t))
    for gap in a.gaps:
        trader = Trader(ep, depth_per_tick=float(mp.fills.depth_per_tick), step_fn=trader.step)
        ms = []
        for i in range(n):
            if gap:
                time.sleep(gap)
            t = time.perf_counter()
            trader.on_interval(feed.row(i))
            ms.append(1e3 * (time.perf_counter() - t))
        out[f"gap_{gap:g}_s"] = pct(ms[1:])
        print(f"idle {gap:g} s before each step: p50 {out[f'gap_{gap:g}_s']['p50']:.2f} ms, "
              f"p99 {out[f'gap_{gap:g}_s']['p99']:.2f} ms", flush=True)  # fmt: skip
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
