"""What the L2 queue behind the touch does to a replay: the configured policy on each recorded
BTCUSDT window of the data directory, replayed with the paper gateway with and without the L2
book's size as the queue ahead of a quote behind the touch, at one observation a second and at
every book update (at least 0.05 s apart). Prints a Markdown table of fills, PnL and its parts,
and writes it with ``--out``.

    python scripts/replay_l2.py [--out FILE] [overrides ...]

Needs the data directory (MMSIM_DATA or ../shared/data). The 2023-04-04 and 2023-04-05 files are
one recording read as one (the snapshot is in the first file): on 2023-04-05 alone the L2 book is
not known.
"""

from __future__ import annotations

from _replay import parser, policy_engine, write_table

WINDOWS = {
    "2023-04-04/05": (
        "hftbacktest_binance_usdm_btcusdt_20230404.dat.gz",
        "hftbacktest_binance_usdm_btcusdt_20230405.dat.gz",
    ),
    "2024-08-08": ("hftbacktest_binance_usdm_btcusdt_20240808.gz",),
}


def main() -> int:
    a = parser(__doc__).parse_args()
    from mmsim import live
    from mmsim.fit import data
    from mmsim.live.replay import venue_tick

    ep, dpt, step = policy_engine(a.overrides)
    tick = venue_tick(ep.tick)
    lines = [
        f"Policy and market: `{' '.join(a.overrides)}`; paper fills.",
        "",
        "| window | cadence | L2 queue | fills (bid + ask) | PnL | spread capture | adverse selection |",
        "|---|---|---|---|---|---|---|",
    ]
    for window, names in WINDOWS.items():
        paths = [data.data_file(n) for n in names]
        if any(x is None for x in paths):
            print(f"skipped {window}: no data directory (MMSIM_DATA or ../shared/data)")
            continue
        cap = data.read_capture(paths, depth=True)
        for cadence, on_book in ((1.0, False), (0.05, True)):
            for l2 in (False, True):
                feed = live.feed_from_capture(
                    cap, cadence, symbol="BTCUSDT", on_book=on_book, depth_tick=tick if l2 else 0.0
                )
                m = live.replay(ep, feed, depth_per_tick=dpt, step_fn=step).metrics
                d = m["pnl_decomposition"]
                lines.append(
                    f"| {window} | {'book, >= 0.05 s' if on_book else '1 s'} | {'yes' if l2 else 'no'} | "
                    f"{m['fills']['bid'] + m['fills']['ask']} | {m['pnl']:.2f} | {d['spread_capture']:.2f} | "
                    f"{d['adverse_selection']:.2f} |"
                )
                print(lines[-1], flush=True)
    write_table(lines, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
