"""Stylised facts of the recorded BTCUSDT windows and of the simulated market, by the same code
(:func:`mmsim.fit.stylised.facts`): the share of 1-s intervals with an unchanged mid, how often the
bid falls while sells trade, the kurtosis and scale of 1-s returns, the touch depth and the traded
volume.

Each recorded window gets a 95 % moving-block bootstrap interval (:func:`mmsim.fit.stylised.interval`).
Each is simulated (nothing quoting, ``--paths`` windows of the recording's length) at the window's
own levels: its mean mid as the start price, the variance of its 1-s mid returns as the efficient
price's variance in every regime (no price jumps), and the order-flow baselines scaled so the
simulated traded volume matches its volume (a first run at the configured baselines measures the
ratio). The levels are the window's; the book's microstructure parameters (the configured
``market.book``) are not: ``--fit`` chooses ``pull_band``, ``pull_rate``, ``refill_rate`` and
``cancel_ahead_share``
on the fit window alone (2023-04-05), the others check them. Both book models are shown: the
continuous book (the spread process) and the tick book. Columns: the recorded value [95 % interval],
and for a model the mean over simulated windows with the percentile of the recorded value among
them (a recorded value outside the 2.5-97.5 % range of the simulated windows is marked ``!``).

    python scripts/stylised_facts.py [--paths 64] [--fit | --dt] [experiment=baseline ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from mmsim import config, live, validation  # noqa: E402
from mmsim.fit import data, stylised  # noqa: E402
from mmsim.live import paper  # noqa: E402
from mmsim.sim import world_only  # noqa: E402

#: (capture, role): the book is fitted on "fit" windows only.
CAPTURES = (
    ("hftbacktest_binance_usdm_btcusdt_20230405.dat.gz", "fit"),
    ("hftbacktest_binance_usdm_btcusdt_20230404.dat.gz", "check"),
    ("hftbacktest_binance_usdm_btcusdt_20240808.gz", "check"),
)
SHOWN = (
    "unchanged_mid",
    "bid_falls_with_sells",
    "return_kurtosis",
    "sigma_per_sqrt_s",
    "touch_depth_median",
    "fill_prob_touch",
    "fill_prob_10_behind",
)
#: Facts the fit matches, each in units of its recorded interval's half-width, and the grid: those
#: of ``mmsim calibrate --fit-book`` (which fits at the window's calibrated levels, without the
#: volume scaling used here for the configured market).
FITTED = validation.BOOK_FACTS
GRID = validation.BOOK_GRID


def at_levels(mp, real: stylised.Window, model: str, flow_mult: float = 1.0):
    """The configured market at a recorded window's levels (see the module docstring)."""
    mid = 0.5 * (real.bid + real.ask)
    var = float(np.var(np.diff(np.log(mid)))) / real.dt
    r = np.shape(mp.vol.theta)[-1]
    vol = dataclasses.replace(mp.vol, theta=np.full(r, var), v0=var, xi=np.full(r, 1e-12))
    price = dataclasses.replace(mp.price, s0=float(mid.mean()), jump_rate=0.0)
    flow = dataclasses.replace(
        mp.flow, mu_buy=np.asarray(mp.flow.mu_buy) * flow_mult, mu_sell=np.asarray(mp.flow.mu_sell) * flow_mult
    )
    book = dataclasses.replace(mp.book, model=model)
    return dataclasses.replace(mp, vol=vol, price=price, flow=flow, book=book)


def simulate(world, mp, n: int, paths: int, tick: float, probes: bool = False, every: int = 1) -> list[dict]:
    run = lambda **kw: world_only.observations(
        world, mp, n_paths=paths, n_steps=n + 1, dt=1.0, seed=0, every=every, **kw
    )  # noqa: E731
    obs = run()
    pr = (run(probe=0.0), run(probe=10.0)) if probes else None
    return [stylised.facts(stylised.window_from_observations(obs, 1.0, tick, path=i, probes=pr)) for i in range(paths)]


def matched(world, mp, real, model, paths, tick, probes=False, every=1):
    """Per-window facts of ``model`` at the window's levels, the flow scaled to its volume."""
    n = len(real.bid) - 1
    first = simulate(world, at_levels(mp, real, model), n, paths, tick, every=every)
    ratio = stylised.facts(real)["volume_per_s"] / np.mean([f["volume_per_s"] for f in first])
    return simulate(world, at_levels(mp, real, model, ratio), n, paths, tick, probes, every), ratio


def cell(sim: list[dict], key: str, real_value: float) -> str:
    x = np.array([f[key] for f in sim])
    pct = 100.0 * np.mean(x < real_value)
    mark = "!" if pct < 2.5 or pct > 97.5 else ""
    return f"{x.mean():.3g} ({pct:.0f}%{mark})"


def fit(world, mp, real, paths, tick) -> dict:
    """The grid point of the book whose simulated windows best match ``real`` (see FITTED): each
    fact's squared distance in units of its recorded interval's half-width, summed."""
    f_real, ci = stylised.facts(real), stylised.interval(real)
    n = len(real.bid) - 1
    first = simulate(world, at_levels(mp, real, "tick"), n, paths, tick)
    ratio = f_real["volume_per_s"] / np.mean([f["volume_per_s"] for f in first])  # the flow's: one for all
    best, rows = None, []
    for values in itertools.product(*GRID.values()):
        trial = dataclasses.replace(mp, book=dataclasses.replace(mp.book, **dict(zip(GRID, values))))
        sim = simulate(world, at_levels(trial, real, "tick", ratio), n, paths, tick, probes=True)
        means = {k: float(np.mean([f[k] for f in sim])) for k in FITTED}
        score = sum(((means[k] - f_real[k]) / (0.5 * (ci[k][1] - ci[k][0]))) ** 2 for k in FITTED)
        rows.append((score, values, means))
        if best is None or score < best[0]:
            best = (score, values)
    print("| " + " | ".join(GRID) + " | " + " | ".join(FITTED) + " | score |")
    print("|" + "---|" * (len(GRID) + len(FITTED) + 1))
    for score, values, means in sorted(rows, key=lambda r: r[0])[:12]:
        print(
            "| "
            + " | ".join(f"{v:g}" for v in values)
            + " | "
            + " | ".join(f"{means[k]:.3g}" for k in FITTED)
            + f" | {score:.2f} |"
        )
    return dict(zip(GRID, best[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--paths", type=int, default=64)
    ap.add_argument("--fit", action="store_true", help="choose the book's parameters on the fit window first")
    ap.add_argument(
        "--dt",
        action="store_true",
        help="the tick book's facts on the fit window at world steps of 1, 0.5, 0.25, 0.1 s",
    )
    ap.add_argument("overrides", nargs="*", default=["experiment=baseline"])
    a = ap.parse_args()
    world, mp, _, _ = config.build(config.compose(a.overrides))
    tick = float(np.max(np.asarray(mp.spread.tick)))
    windows = {}
    for name, role in CAPTURES:
        path = data.data_file(name)
        if path is None:
            print(f"{name}: not in the data directory (set MMSIM_DATA); skipped")
            continue
        feed = live.feed_from_capture(data.read_capture(path), 1.0)
        probes = (paper.probe(feed, 0, tick), paper.probe(feed, 10, tick))
        windows[name] = (role, stylised.window_from_feed(feed, tick, probes))
    if not windows:
        return 0
    if a.fit:
        fit_name = next(n for n, (role, _) in windows.items() if role == "fit")
        chosen = fit(world, mp, windows[fit_name][1], a.paths, tick)
        print(f"\nchosen on {fit_name}: {chosen}\n")
        mp = dataclasses.replace(mp, book=dataclasses.replace(mp.book, **chosen))
    if a.dt:
        fit_name = next(n for n, (role, _) in windows.items() if role == "fit")
        real = windows[fit_name][1]
        print(f"tick book on {fit_name} at world steps of dt (1-s intervals; mean ± standard error over windows)\n")
        print("| world dt (s) | " + " | ".join(SHOWN) + " |")
        print("|---|" + "---|" * len(SHOWN))
        for every in (1, 2, 4, 10):
            sim, _ = matched(world, mp, real, "tick", a.paths, tick, probes=True, every=every)
            cells = []
            for k in SHOWN:
                x = np.array([f[k] for f in sim])
                cells.append(f"{x.mean():.4g} ± {x.std(ddof=1) / np.sqrt(len(x)):.2g}")
            print(f"| {1 / every:g} | " + " | ".join(cells) + " |")
        return 0
    b = mp.book
    print(
        f"tick book: pull_band {b.pull_band:g} ticks, pull_rate {b.pull_rate:g}/s, pull_rate_per_tick "
        f"{b.pull_rate_per_tick:g}/s, new_level_depth {b.new_level_depth:g}, refill_rate {b.refill_rate:g}/s, "
        f"depth_touch {b.depth_touch:g}, depth_level {b.depth_level:g}, lot {b.lot:g}\n"
    )
    print("| window | source | " + " | ".join(SHOWN) + " | flow x |")
    print("|---|---|" + "---|" * (len(SHOWN) + 1))
    for name, (role, real) in windows.items():
        day = name.split("_")[-1].split(".")[0]
        f, ci = stylised.facts(real), stylised.interval(real)
        print(
            f"| {day} ({role}, {f['n']} s) | recorded | "
            + " | ".join(f"{f[k]:.3g} [{ci[k][0]:.3g}, {ci[k][1]:.3g}]" for k in SHOWN)
            + " | |"
        )
        for model in ("continuous", "tick"):
            sim, ratio = matched(world, mp, real, model, a.paths, tick, probes=True)
            print(f"| | {model} book | " + " | ".join(cell(sim, k, f[k]) for k in SHOWN) + f" | {ratio:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
