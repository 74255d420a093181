"""The Avellaneda-Stoikov (2008) comparison: our six runs against the paper's Tables 1-3, and the
profit histograms (the paper's price units)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mmsim.report.common import DPI, fmt, md_table

AS2008_COLUMNS = ("spread", "profit_mean", "profit_std", "q_mean", "q_std")


def as2008_rows(ours: Sequence[dict], paper: Sequence[dict]) -> list[list[Any]]:
    """Rows gamma, strategy, then (ours, paper) for each column of the paper's tables."""
    key = {(float(p["gamma"]), p["strategy"]): p for p in paper}
    rows = []
    for r in ours:
        p = key.get((float(r["gamma"]), r["strategy"]), {})
        row = [fmt(r["gamma"]), r["strategy"]]
        for c in AS2008_COLUMNS:
            row += [fmt(r[c], 4), fmt(p.get(c), 4)]
        rows.append(row)
    return rows


def fig_as2008(ours: Sequence[dict], pnls: dict, path: Path, paper: Sequence[dict] = ()) -> Path:
    """Profit histograms per gamma, inventory vs symmetric, with the paper's means marked."""
    gammas = sorted({float(r["gamma"]) for r in ours}, key=lambda g: [float(r["gamma"]) for r in ours].index(g))
    fig, axes = plt.subplots(1, len(gammas), figsize=(4.2 * len(gammas), 3.6), squeeze=False)
    pmap = {(float(p["gamma"]), p["strategy"]): p for p in paper}
    for ax, g in zip(axes[0], gammas):
        both = [np.asarray(x, float) for (gg, _), x in pnls.items() if gg == g]
        bins = np.histogram_bin_edges(np.concatenate(both), bins=50) if both else 50
        for strat, color in (("inventory", "#4c72b0"), ("symmetric", "#dd8452")):
            x = pnls.get((g, strat))
            if x is None:
                continue
            ax.hist(np.asarray(x, float), bins=bins, alpha=0.55, color=color, label=strat)
            p = pmap.get((g, strat))
            if p:
                ax.axvline(p["profit_mean"], color=color, ls="--", lw=1.2)
        ax.set_title(f"γ = {g:g}")
        ax.set_xlabel("profit (price units)")
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("paths")
    fig.suptitle("Avellaneda-Stoikov 2008: profit per path (dashed: the paper's mean)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def write_as2008_report(
    out_dir: Path, metrics: dict, pnls: dict, *, config_lines: Sequence[tuple[str, str]] = (), notes: Sequence[str] = ()
) -> list[Path]:
    out_dir = Path(out_dir)
    ours, paper = metrics["as2008"], metrics.get("paper", [])
    fig = fig_as2008(ours, pnls, out_dir / "as2008_profit.png", paper)
    headers = ["γ", "strategy"]
    for c in AS2008_COLUMNS:
        headers += [f"{c} (ours)", f"{c} (paper)"]
    lines = [
        "# Avellaneda & Stoikov (2008): inventory vs symmetric strategy",
        "",
        "Avellaneda, M. and Stoikov, S. (2008), High-frequency trading in a limit order book, Quantitative "
        "Finance 8(3):217-224, section 4, Tables 1-3: s = 100, T = 1, σ = 2, dt = 0.005, A = 140, k = 1.5, "
        "q0 = 0. The inventory strategy quotes around the reservation price; the symmetric strategy quotes "
        "the inventory strategy's time-averaged spread around the mid.",
        "",
    ]
    if config_lines:
        lines += [md_table(["", ""], config_lines), ""]
    lines += [
        md_table(headers, as2008_rows(ours, paper)),
        "",
        f"![as2008 profit]({fig.name})",
        "",
        "Profit is the final equity change (cash plus inventory at the final mid); q is the final inventory; "
        "sd over paths. With " + f"{metrics['n_paths']:,}" + " paths the standard error of a mean profit is "
        "about sd / sqrt(n).",
        "",
    ]
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    lines += [
        f"Throughput: {fmt(metrics['throughput_path_steps_per_s'])} path-steps/s over all "
        f"{len(ours)} runs (compile {fmt(metrics['compile_s'])} s, run {fmt(metrics['run_s'])} s).",
        "",
    ]
    (out_dir / "report.md").write_text("\n".join(lines))
    return [fig, out_dir / "report.md"]
