"""The report of ``mmsim validate``: ``validation.md`` (per window, every statistic recorded
against each simulated market with its 95 % range and the recorded value's percentile; over the
windows, the replay percentiles' uniformity), ``validation.json`` and one figure per statistic."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from mmsim.report.common import fmt, md_table, save_figure, write_json
from mmsim.validation import LABELS, MARKET_STATS, POLICY_STATS

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")


def _window_name(w: dict) -> str:
    return w["files"][0].split(".")[0].removeprefix("hftbacktest_") + (" +" if len(w["files"]) > 1 else "")


def _cell(c: dict) -> str:
    if not math.isfinite(c["sim_mean"]):
        return "–"
    mark = " **!**" if c["outside"] else ""
    return f"{fmt(c['sim_mean'], 3)} [{fmt(c['sim_q025'], 3)}, {fmt(c['sim_q975'], 3)}] ({c['percentile']:.0f} %){mark}"


def _real(c: dict) -> str:
    ci = c.get("real_ci")
    if ci and all(math.isfinite(x) for x in ci):
        return f"{fmt(c['real'], 3)} [{fmt(ci[0], 3)}, {fmt(ci[1], 3)}]"
    return fmt(c["real"], 3)


def write(result: dict, out_dir: str | Path, command: str) -> list[Path]:
    """Write ``result`` (``{"windows": [...], "summary": {...}, "settings": {...}}``) into
    ``out_dir``; returns the files written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    windows, summary = result["windows"], result["summary"]
    files = [out / "validation.json"]
    write_json(files[0], result)
    figs = [_figure(out / f"{k}.png", k, windows) for k in MARKET_STATS + POLICY_STATS]
    st = result["settings"]
    lines = [
        "# Validation: the simulator against recorded windows",
        "",
        f"`{command}`",
        "",
        f"Per window and market: {st['n_paths']} simulated paths of the "
        f"policy ({st['n_trace']} traced for the markouts) and {st['fact_paths']} of the market alone "
        f"with probe quotes; engine step {st['dt']:g} s; replay cadence {st['cadence']:g} s. Markets: "
        + ", ".join(f"`{k}`" for k in result["markets"])
        + ("; `window`: calibrated to each window alone" if "window" in result["markets"] else "")
        + ".",
        "",
        "Cells: the simulated mean [2.5 %, 97.5 % of the simulated paths] (the recorded value's "
        "percentile among them); **!** marks a recorded value outside that range. Recorded market "
        "statistics carry their 95 % block-bootstrap interval.",
        "",
        "## Over the windows",
        "",
    ]
    rows = []
    for name, s in summary.items():
        rows.append(
            (
                f"`{name}`",
                ", ".join(f"{p:.0f}" for p in s["pnl_percentiles"]),
                f"{fmt(s['pnl_uniformity']['ks_stat'], 3)} (p = {fmt(s['pnl_uniformity']['pvalue'], 2)})",
                ", ".join(f"{p:.0f}" for p in s["fills_percentiles"]),
                f"{fmt(s['fills_uniformity']['ks_stat'], 3)} (p = {fmt(s['fills_uniformity']['pvalue'], 2)})",
            )
        )
    lines += [
        md_table(
            ["market", "replay PnL percentiles", "KS (uniform)", "replay fill-count percentiles", "KS (uniform)"],
            rows,
        ),
        "",
    ]
    flags = [f for s in summary.values() for f in s["flags"]]
    if flags:
        lines += ["**Outside 5–95 %:**", ""] + [f"- {f}" for f in flags] + [""]
    lines += [
        md_table(
            ["statistic", *[f"`{n}`: windows outside the simulated 95 %" for n in summary]],
            [
                (LABELS[k][0], *[f"{s['outside_95'][k]} / {len(windows)}" for s in summary.values()])
                for k in MARKET_STATS + POLICY_STATS
            ],
        ),
        "",
    ]
    for w in windows:
        names = list(w["markets"])
        lines += [
            f"## {', '.join(w['files'])}",
            "",
            f"{w['symbol'].upper()}, {fmt(w['duration_s'])} s from mid {fmt(w['start_mid'])}. Replay: PnL "
            f"{fmt(w['replay']['pnl'])}, fills {w['replay']['fills']['bid']} bid / {w['replay']['fills']['ask']} ask"
            + "; simulated fills / replay fills: "
            + ", ".join(f"`{n}` {fmt(w['markets'][n]['fills_ratio'], 3)}" for n in names)
            + ".",
            "",
            md_table(
                ["statistic", "unit", "recorded", *[f"`{n}`" for n in names]],
                [
                    (
                        LABELS[k][0],
                        LABELS[k][1],
                        _real(w["markets"][names[0]]["stats"][k]),
                        *[_cell(w["markets"][n]["stats"][k]) for n in names],
                    )
                    for k in MARKET_STATS + POLICY_STATS
                ],
            ),
            "",
        ]
    lines += ["## Figures", ""] + [f"- `{f.name}`: {LABELS[f.stem][0]}, recorded and simulated" for f in figs]
    lines += ["", "## The policy and account", "", "```", result["policy"], "```"]
    md = out / "validation.md"
    md.write_text("\n".join(lines) + "\n")
    return [*files, md, *figs]


def _figure(path: Path, key: str, windows: list[dict]) -> Path:
    """Per window: the recorded value (black, with its interval where it has one) and each
    market's simulated mean with the 2.5-97.5 % range of its paths."""
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(windows) + 2.5), 4))
    names = list(windows[0]["markets"]) if windows else []
    width = 0.6 / max(1, len(names) + 1)
    for i, w in enumerate(windows):
        c0 = w["markets"][names[0]]["stats"][key]
        ci = c0.get("real_ci")
        yerr = None
        if ci and all(math.isfinite(x) for x in ci):
            yerr = [[c0["real"] - ci[0]], [ci[1] - c0["real"]]]
        ax.errorbar([i], [c0["real"]], yerr=yerr, fmt="ks", ms=6, capsize=3, label="recorded" if i == 0 else None)
        for j, n in enumerate(names):
            c = w["markets"][n]["stats"][key]
            if not math.isfinite(c["sim_mean"]):
                continue
            x = i + (j + 1) * width
            err = [[c["sim_mean"] - c["sim_q025"]], [c["sim_q975"] - c["sim_mean"]]]
            ax.errorbar([x], [c["sim_mean"]], yerr=err, fmt="o", color=COLORS[j % len(COLORS)], capsize=3,
                        label=f"simulated, {n} market (mean, 95 % of paths)" if i == 0 else None)  # fmt: skip
    ax.set_xlim(-0.5, len(windows) - 0.5 + width * len(names))
    ax.set_xticks(np.arange(len(windows)) + 0.5 * width * len(names))
    ax.set_xticklabels([_window_name(w) for w in windows], fontsize=7, rotation=10)
    label, unit = LABELS[key]
    ax.set_ylabel(unit or "share")
    ax.set_title(label, fontsize=10)
    # Below the axes: inside, it would cover a window's interval.
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=1, frameon=False)
    fig.tight_layout()
    return save_figure(fig, path, bbox_inches="tight")
