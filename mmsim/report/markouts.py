"""The report of ``mmsim markouts``: a desk's own fills against the recorded mid
(:mod:`mmsim.fit.fills`): ``markouts.md``, ``markouts.json`` and ``markouts.png`` (markout and
adverse selection per base unit against the horizon, with 95 % intervals)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from mmsim.report.common import fmt, md_table, save_figure, write_json


def write(res: dict, out_dir: str | Path, command: str, sources: dict) -> list[Path]:
    """Write the markouts ``res`` (:func:`mmsim.fit.fills.fill_markouts`) of the fills and
    capture named in ``sources`` into ``out_dir``; returns the files written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "markouts.json", out / "markouts.md", out / "markouts.png"]
    write_json(files[0], {"command": command, **sources, **res})
    cap, cap_se = res["spread_capture"]
    rows = [
        (fmt(r["horizon_s"]), r["n"], f"{fmt(r['markout'])} ± {fmt(r['markout_se'])}",
         f"{fmt(r['adverse'])} ± {fmt(r['adverse_se'])}")
        for r in res["rows"]
    ]  # fmt: skip
    rejected = sources.get("rejected") or {}
    lines = [
        "# Markouts of the desk's fills",
        "",
        f"`{command}`",
        "",
        f"{res['n_fills']} fills ({fmt(res['volume'])} base units) inside the recording; "
        f"{res['outside']} outside it were not measured" + (f"; rejected rows: {rejected}" if rejected else "") + ".",
        "",
        f"Spread capture, `side (mid(t) - price)`: {fmt(cap)} ± {fmt(cap_se)} quote currency per base unit "
        "(quantity-weighted mean ± standard error).",
        "",
        md_table(
            [
                "horizon (s)",
                "fills",
                "markout `side (mid(t+h) - price)`",
                "adverse selection `side (mid(t+h) - mid(t))`",
            ],
            rows,
        ),
        "",
        "Quote currency per base unit. The markout is the spread capture plus the adverse selection. "
        "The simulator's PnL attribution (spread capture, adverse selection) and `mmsim validate`'s "
        "markouts measure the same quantities for a simulated or replayed policy.",
        "",
        "![markouts](markouts.png)",
        "",
    ]
    files[1].write_text("\n".join(lines))
    _figure(files[2], res)
    return files


def _figure(path: Path, res: dict) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    h = np.array([r["horizon_s"] for r in res["rows"]])
    for key, label, color in (("markout", "markout", "tab:blue"), ("adverse", "adverse selection", "tab:red")):
        m = np.array([r[key] for r in res["rows"]], float)
        se = np.array([r[f"{key}_se"] for r in res["rows"]], float)
        ax.errorbar(h, m, yerr=1.96 * np.nan_to_num(se), marker="o", capsize=3, color=color, label=f"{label} (95 %)")
    cap = res["spread_capture"][0]
    ax.axhline(cap, color="tab:green", linestyle="--", label=f"spread capture {cap:.3g}")
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("horizon h (s)")
    ax.set_ylabel("quote currency per base unit")
    ax.set_title(f"the desk's fills: {res['n_fills']} fills")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)
