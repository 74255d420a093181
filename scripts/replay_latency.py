"""What an order latency does to a replay: the configured policy on each recorded BTCUSDT window
of the data directory, replayed with the paper gateway at several constant latencies (ms), one
compiled engine step shared by all. Prints a Markdown table of fills, PnL and its
adverse-selection part per window and latency, and writes it with ``--out``.

    python scripts/replay_latency.py [--latencies 0 5 20 50 100 250] [--out FILE] [overrides ...]

Needs the data directory (MMSIM_DATA or ../shared/data).
"""

from __future__ import annotations

from _replay import parser, policy_engine, write_table

WINDOWS = (
    "hftbacktest_binance_usdm_btcusdt_20230404.dat.gz",
    "hftbacktest_binance_usdm_btcusdt_20230405.dat.gz",
    "hftbacktest_binance_usdm_btcusdt_20240808.gz",
)


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--latencies", type=float, nargs="+", default=[0, 5, 20, 50, 100, 250], help="ms")
    a = p.parse_args()
    from mmsim import live
    from mmsim.fit import data
    from mmsim.live.paper import Latency

    ep, dpt, step = policy_engine(a.overrides)
    lines = [
        f"Policy and market: `{' '.join(a.overrides)}`; paper fills; one observation a second.",
        "",
        "| window | latency (ms) | fills (bid + ask) | PnL | of which adverse selection | spread capture |",
        "|---|---|---|---|---|---|",
    ]
    for name in WINDOWS:
        path = data.data_file(name)
        if path is None:
            print(f"skipped {name}: no data directory (MMSIM_DATA or ../shared/data)")
            continue
        feed = live.feed_from_capture(data.read_capture(path), 1.0, symbol="BTCUSDT")
        for ms in a.latencies:
            m = live.replay(ep, feed, depth_per_tick=dpt, step_fn=step, latency=Latency(constant_s=ms / 1e3)).metrics
            d = m["pnl_decomposition"]
            n = m["fills"]["bid"] + m["fills"]["ask"]
            lines.append(
                f"| {name.split('_')[-1].split('.')[0]} | {ms:g} | {n} | {m['pnl']:.2f} | "
                f"{d['adverse_selection']:.2f} | {d['spread_capture']:.2f} |"
            )
            print(lines[-1], flush=True)
    write_table(lines, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
