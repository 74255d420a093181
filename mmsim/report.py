"""Figures, tables and report files of a run (matplotlib with the Agg backend, numpy; no JAX).

Used by :mod:`mmsim.run` and reusable by any entry point that has a
:class:`mmsim.simulate.SimResult` and its metrics (``mmsim.risk.summarize``):

* :func:`write_risk_report` writes the PNG figures and ``report.md`` of one Monte Carlo risk run
  (PnL histogram with VaR/CVaR 99 %, max-drawdown distribution with the threshold, cumulative
  P(liquidation) with its Clopper-Pearson band, sample paths);
* :func:`write_as2008_report` the Avellaneda-Stoikov (2008) comparison;
* :func:`write_sweep_summary` aggregates the ``metrics.json`` of every job of a multirun.

Units: PnL, drawdowns, equity and margins in quote currency (USDT, or the paper's price units in
the AS 2008 world); times in seconds; positions in base units.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

REGIME_NAMES = ("low", "normal", "high", "extreme")
REGIME_COLORS = ("#d8f0d8", None, "#ffe0b0", "#ffb0b0")
DPI = 110


# ------------------------------------------------------------------------------------------------
# Formatting


def fmt(x: Any, digits: int = 4) -> str:
    """A number for a table: 4 significant digits, thousands kept readable; '-' for None/NaN."""
    if x is None:
        return "-"
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return f"{int(x):,}"
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if not math.isfinite(v):
        return "-" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if v == 0:
        return "0"
    if 10 ** digits <= abs(v) < 1e12:
        return f"{v:,.0f}"
    if 1e-3 <= abs(v) < 1e6:
        s = f"{v:.{digits}g}"
        return s if "e" not in s else f"{v:.{digits}e}"
    return f"{v:.{digits - 1}e}"


def sanitize(obj: Any) -> Any:
    """JSON-ready copy: numpy scalars/arrays to Python, non-finite floats to None (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): sanitize(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [sanitize(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return sanitize(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    return obj


def write_json(path: Path, obj: Any) -> None:
    Path(path).write_text(json.dumps(sanitize(obj), indent=2, allow_nan=False) + "\n")


def md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(c if isinstance(c, str) else fmt(c) for c in r) + " |")
    return "\n".join(lines)


def text_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain-text table for the terminal."""
    rows = [[c if isinstance(c, str) else fmt(c) for c in r] for r in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in rows)) if rows else len(str(h)) for i, h in enumerate(headers)]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(str(h).ljust(w) for h, w in zip(headers, widths)), line]
    for r in rows:
        out.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return "\n".join(out)


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100.0 * float(x):.3g} %"


def liquidation_claim(p_liq: dict, epsilon: float, ci_level: float = 0.95) -> str:
    """The sentence the report may make about P(liquidation): "≈ 0" only when the Clopper-Pearson
    upper bound is at most ``epsilon``; otherwise the bound is stated."""
    n = p_liq.get("n") or None
    k, hi = p_liq["count"], p_liq["ci_high"]
    paths = f" of {n:,} paths" if n else ""
    if hi <= epsilon:
        return (f"P(liquidation) ≈ 0: {k} liquidation(s){paths}; the {ci_level:.0%} Clopper-Pearson upper bound "
                f"{hi:.3g} is below the target ε = {epsilon:g}.")
    return (f"P(liquidation) is NOT certified to be approximately 0: {k} liquidation(s){paths}, estimate "
            f"{p_liq['estimate']:.3g}, {ci_level:.0%} Clopper-Pearson interval [{p_liq['ci_low']:.3g}, {hi:.3g}]; "
            f"the upper bound {hi:.3g} exceeds the target ε = {epsilon:g}"
            + (" (more paths would be needed to certify it)" if k == 0 else "") + ".")


def summary_rows(m: dict) -> list[tuple[str, str]]:
    """The headline numbers of a risk run as (label, value) rows."""
    pl, pd_, p = m["p_liquidation"], m["p_drawdown"], m["pnl"]
    dd = m["max_drawdown"]
    rows = [
        ("paths x steps (dt)", f"{m['n_paths']:,} x {m['n_steps']:,} ({fmt(m['dt_s'])} s)"),
        ("horizon", f"{fmt(m['horizon_s'])} s"),
        ("P(liquidation) [CI]", f"{fmt(pl['estimate'])} [{fmt(pl['ci_low'])}, {fmt(pl['ci_high'])}] ({pl['count']})"),
        (f"P(max DD > {pct(pd_['threshold'])} equity) [CI]",
         f"{fmt(pd_['estimate'])} [{fmt(pd_['ci_low'])}, {fmt(pd_['ci_high'])}] ({pd_['count']})"),
        ("PnL mean ± se", f"{fmt(p['mean'])} ± {fmt(p.get('se_mean'))}"),
        ("PnL sd", fmt(p["std"])),
        ("PnL q01 / q50 / q99", f"{fmt(p['q01'])} / {fmt(p['q50'])} / {fmt(p['q99'])}"),
        ("VaR 99 / CVaR 99", f"{fmt(p['var_99'])} / {fmt(p['cvar_99'])}"),
        ("VaR 95 / CVaR 95", f"{fmt(p['var_95'])} / {fmt(p['cvar_95'])}"),
        ("max drawdown mean / q95 / q99", f"{fmt(dd['mean'])} / {fmt(dd['q95'])} / {fmt(dd['q99'])}"),
        ("fills per path bid / ask", f"{fmt(m['fills']['bid_mean'])} / {fmt(m['fills']['ask_mean'])}"),
    ]
    ttl = m.get("time_to_liquidation") or {}
    if ttl.get("count"):
        rows.append(("time to liquidation q05 / q50 / q95 (s)",
                     f"{fmt(ttl['q05'])} / {fmt(ttl['q50'])} / {fmt(ttl['q95'])}"))
    rows += [
        ("throughput (path-steps / s)", fmt(m["throughput_path_steps_per_s"])),
        ("compile / run (s)", f"{fmt(m['compile_s'])} / {fmt(m['run_s'])}"),
    ]
    if m.get("non_finite_steps"):
        rows.append(("non-finite equity steps (flagged)", fmt(m["non_finite_steps"])))
    return rows


# ------------------------------------------------------------------------------------------------
# Figures


def _time_axis(t: np.ndarray) -> tuple[np.ndarray, str]:
    t = np.asarray(t, float)
    span = float(t[-1] - t[0]) if t.size else 0.0
    if span >= 7200:
        return t / 3600.0, "time (h)"
    if span >= 600:
        return t / 60.0, "time (min)"
    return t, "time (s)"


def fig_pnl_hist(pnl: np.ndarray, pnl_metrics: dict, path: Path, unit: str = "USDT") -> Path:
    """Histogram of the final PnL with VaR 99 and CVaR 99 (positive losses) marked."""
    pnl = np.asarray(pnl, float)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(pnl, bins=min(100, max(10, pnl.size // 20)), color="#4c72b0", alpha=0.85)
    for x, ls, label in ((-pnl_metrics["var_99"], "--", f"VaR 99 = {fmt(pnl_metrics['var_99'])}"),
                         (-pnl_metrics["cvar_99"], ":", f"CVaR 99 = {fmt(pnl_metrics['cvar_99'])}"),
                         (pnl_metrics["mean"], "-", f"mean = {fmt(pnl_metrics['mean'])}")):
        ax.axvline(x, color="k" if ls != "-" else "#c44e52", ls=ls, lw=1.3, label=label)
    ax.set_yscale("log")   # the tails are the point of a risk report
    ax.set_xlabel(f"final PnL ({unit})")
    ax.set_ylabel("paths (log scale)")
    ax.set_title(f"PnL distribution ({pnl.size:,} paths)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def fig_drawdown(max_dd: np.ndarray, initial_equity: float, threshold: float, p_dd: dict, path: Path) -> Path:
    """Distribution of the maximum drawdown as a fraction of the initial equity, with the threshold."""
    dd = np.asarray(max_dd, float) / float(initial_equity)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(100 * dd, bins=min(100, max(10, dd.size // 20)), color="#55a868", alpha=0.85)
    ax.axvline(100 * threshold, color="#c44e52", ls="--",
               label=f"threshold {100 * threshold:.3g} %: P = {fmt(p_dd['estimate'])} "
                     f"[{fmt(p_dd['ci_low'])}, {fmt(p_dd['ci_high'])}]")
    ax.set_yscale("log")
    ax.set_xlabel("max drawdown (% of initial equity)")
    ax.set_ylabel("paths (log scale)")
    ax.set_title("Maximum drawdown")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def fig_liquidation_curve(curve: dict, path: Path, epsilon: float | None = None, n_paths: int | None = None,
                          ci_level: float = 0.95) -> Path:
    """Cumulative P(liquidated by t) with its pointwise Clopper-Pearson band."""
    t, xlabel = _time_axis(np.asarray(curve["t"], float))
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.fill_between(t, curve["ci_low"], curve["ci_high"], color="#c44e52", alpha=0.25, step="post",
                    label=f"{100 * ci_level:g} % Clopper-Pearson band")
    ax.step(t, curve["estimate"], where="post", color="#c44e52", label="estimate")
    if epsilon is not None:
        ax.axhline(epsilon, color="k", ls=":", lw=1, label=f"target ε = {epsilon:g}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("P(liquidated by t)")
    ax.set_ylim(bottom=0)
    ax.set_title("Cumulative probability of liquidation" + (f" ({n_paths:,} paths)" if n_paths else ""))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _shade_regimes(ax, t: np.ndarray, regime: np.ndarray) -> None:
    regime = np.asarray(regime)
    if regime.size == 0 or np.all(regime < 0):
        return
    edges = np.flatnonzero(np.diff(regime)) + 1
    starts = np.concatenate([[0], edges])
    ends = np.concatenate([edges, [regime.size - 1]])
    for s, e in zip(starts, ends):
        r = int(regime[s])
        if 0 <= r < len(REGIME_COLORS) and REGIME_COLORS[r]:
            ax.axvspan(t[s], t[e], color=REGIME_COLORS[r], lw=0, zorder=0)


def fig_sample_paths(trace, path: Path, *, asset_names: Sequence[str] | None = None, max_paths: int = 4,
                     unit: str = "USDT", events: Sequence[tuple[float, float, float]] = ()) -> Path:
    """Sample paths: mid, inventory, equity against the maintenance margin, liquidation-cascade
    intensity; the world's volatility regime of the first path shaded (low green, high orange,
    extreme red; the engine's estimate where the world has none); the policy's scheduled events
    ``(t_e, before, after)`` in seconds, as a dashed line at ``t_e`` and its pull window hatched."""
    t_s = np.asarray(trace.t, float)
    t, xlabel = _time_axis(t_s)
    scale = float(t[-1] / t_s[-1]) if t_s.size and t_s[-1] > 0 else 1.0
    n = min(max_paths, np.shape(trace.mid)[0])
    a = np.shape(trace.mid)[2]
    names = list(asset_names or [f"asset {i}" for i in range(a)])
    regime = np.asarray(trace.true_regime[0])
    if np.all(regime < 0):
        regime = np.asarray(trace.regime[0]) if np.any(np.asarray(trace.true_cascade_intensity) > 0) else regime
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ["-", "--", ":", "-."]
    fig, axes = plt.subplots(4, 1, figsize=(9, 10), sharex=True)
    mid = np.asarray(trace.mid, float)
    for i in range(n):
        for j in range(a):
            y = mid[i, :, j] if a == 1 else 100.0 * (mid[i, :, j] / mid[i, 0, j] - 1.0)
            axes[0].plot(t, y, color=colors[i % len(colors)], ls=styles[j % 4], lw=0.9,
                         label=(f"path {i}" if j == 0 else None) if a == 1 else f"path {i}, {names[j]}")
            axes[1].plot(t, np.asarray(trace.position)[i, :, j], color=colors[i % len(colors)], ls=styles[j % 4],
                         lw=0.9)
        axes[2].plot(t, np.asarray(trace.equity, float)[i], color=colors[i % len(colors)], lw=0.9)
        maint = np.asarray(trace.maintenance, float)[i]
        axes[2].plot(t, np.where(maint > 0, maint, np.nan), color=colors[i % len(colors)], lw=0.8, ls=":")
        lam_true = np.asarray(trace.true_cascade_intensity)[i].sum(-1)
        lam_est = np.asarray(trace.cascade_intensity)[i].sum(-1)
        axes[3].plot(t, lam_true, color=colors[i % len(colors)], lw=0.9)
        axes[3].plot(t, lam_est, color=colors[i % len(colors)], lw=0.8, ls="--")
    axes[0].set_ylabel(f"mid ({unit})" if a == 1 else "mid change (%)")
    axes[1].set_ylabel("position (base units)" + ("" if a == 1 else "\n" + ", ".join(
        f"{nm}: {styles[j % 4]}" for j, nm in enumerate(names))))
    eq = np.asarray(trace.equity, float)[:n]
    if eq.size and np.all(eq > 0):
        axes[2].set_yscale("log")   # equity and maintenance margin differ by orders of magnitude
    axes[2].set_ylabel(f"equity (solid) and\nmaintenance margin (dotted), {unit}")
    axes[3].set_ylabel("liquidation intensity (1/s)\nworld (solid), engine (dashed)")
    axes[3].set_xlabel(xlabel)
    for ax in axes:
        _shade_regimes(ax, t, regime)
        for t_e, before, after in events:
            ax.axvspan(scale * (t_e - before), scale * (t_e + after), facecolor="none", hatch="//",
                       edgecolor="0.45", lw=0.0)
            ax.axvline(scale * t_e, color="k", ls="--", lw=0.8)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    title = "Sample paths" + ("" if np.all(regime < 0) else " (regime of path 0: low green, high orange, extreme red)")
    if len(events):
        title += "\nscheduled events dashed, the policy's pull windows hatched"
    axes[0].set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------
# Reports


def write_risk_report(out_dir: Path, metrics: dict, result, *, drawdown_threshold: float, epsilon_liq: float,
                      ci_level: float = 0.95, title: str = "mmsim risk report", description: str = "",
                      config_lines: Sequence[tuple[str, str]] = (), asset_names: Sequence[str] | None = None,
                      curve: dict | None = None, notes: Sequence[str] = (),
                      events: Sequence[tuple[float, float, float]] = ()) -> list[Path]:
    """Figures and ``report.md`` of one Monte Carlo risk run into ``out_dir``; returns the files.
    ``events``: the policy's scheduled events ``(t_e, before, after)``, seconds, marked on the sample paths."""
    out_dir = Path(out_dir)
    s = result.summary
    files = [fig_pnl_hist(s.pnl, metrics["pnl"], out_dir / "pnl_hist.png"),
             fig_drawdown(s.max_dd, result.initial_equity, drawdown_threshold, metrics["p_drawdown"],
                          out_dir / "drawdown.png")]
    if curve is not None:
        files.append(fig_liquidation_curve(curve, out_dir / "liquidation_curve.png", epsilon_liq, metrics["n_paths"],
                                           ci_level))
    if result.trace is not None:
        files.append(fig_sample_paths(result.trace, out_dir / "sample_paths.png", asset_names=asset_names,
                                      events=events))
    claim = liquidation_claim({**metrics["p_liquidation"], "n": metrics["n_paths"]}, epsilon_liq, ci_level)
    lines = [f"# {title}", ""]
    if description:
        lines += [description, ""]
    lines += [f"**{claim}**", ""]
    if config_lines:
        lines += ["## Set-up", "", md_table(["", ""], config_lines), ""]
    lines += ["## Summary", "", md_table(["quantity", "value"], summary_rows(metrics)), ""]
    dec = metrics.get("pnl_decomposition") or {}
    if dec:
        lines += ["## PnL decomposition (mean per path)", "", md_table(list(dec), [list(dec.values())]), ""]
    lines += ["## Figures", ""]
    captions = {"pnl_hist.png": "Final PnL, with VaR 99 and CVaR 99 (losses) marked.",
                "drawdown.png": "Maximum drawdown as a fraction of the initial equity, with the threshold.",
                "liquidation_curve.png": f"Cumulative P(liquidation by t) with its pointwise {100 * ci_level:g} % "
                                         "Clopper-Pearson band.",
                "sample_paths.png": "Sample paths: mid, inventory, equity against the maintenance margin, "
                                    "cascade intensity; volatility regime shaded."}
    for f in files:
        lines += [f"![{f.stem}]({f.name})", "", captions.get(f.name, ""), ""]
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    lines += ["Intervals are exact two-sided Clopper-Pearson at the stated level; VaR and CVaR are positive losses "
              "(quote currency). Full numbers: `metrics.json`; configuration: `config_resolved.yaml`.", ""]
    (out_dir / "report.md").write_text("\n".join(lines))
    return files + [out_dir / "report.md"]


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


def write_as2008_report(out_dir: Path, metrics: dict, pnls: dict, *, config_lines: Sequence[tuple[str, str]] = (),
                        notes: Sequence[str] = ()) -> list[Path]:
    out_dir = Path(out_dir)
    ours, paper = metrics["as2008"], metrics.get("paper", [])
    fig = fig_as2008(ours, pnls, out_dir / "as2008_profit.png", paper)
    headers = ["γ", "strategy"]
    for c in AS2008_COLUMNS:
        headers += [f"{c} (ours)", f"{c} (paper)"]
    lines = ["# Avellaneda & Stoikov (2008): inventory vs symmetric strategy", "",
             "Avellaneda, M. and Stoikov, S. (2008), High-frequency trading in a limit order book, Quantitative "
             "Finance 8(3):217-224, section 4, Tables 1-3: s = 100, T = 1, σ = 2, dt = 0.005, A = 140, k = 1.5, "
             "q0 = 0. The inventory strategy quotes around the reservation price; the symmetric strategy quotes "
             "the inventory strategy's time-averaged spread around the mid.", ""]
    if config_lines:
        lines += [md_table(["", ""], config_lines), ""]
    lines += [md_table(headers, as2008_rows(ours, paper)), "",
              f"![as2008 profit]({fig.name})", "",
              "Profit is the final equity change (cash plus inventory at the final mid); q is the final inventory; "
              "sd over paths. With " + f"{metrics['n_paths']:,}" + " paths the standard error of a mean profit is "
              "about sd / sqrt(n).", ""]
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    lines += [f"Throughput: {fmt(metrics['throughput_path_steps_per_s'])} path-steps/s over all "
              f"{len(ours)} runs (compile {fmt(metrics['compile_s'])} s, run {fmt(metrics['run_s'])} s).", ""]
    (out_dir / "report.md").write_text("\n".join(lines))
    return [fig, out_dir / "report.md"]


# ------------------------------------------------------------------------------------------------
# Sweeps


def _job_label(job_dir: Path) -> str:
    ov = job_dir / ".hydra" / "overrides.yaml"
    if ov.is_file():
        try:
            import yaml

            items = yaml.safe_load(ov.read_text()) or []
            return " ".join(str(x) for x in items) or job_dir.name
        except Exception:  # noqa: BLE001
            pass
    return job_dir.name


def sweep_rows(sweep_dir: Path) -> list[dict]:
    """One flat dict per job directory of ``sweep_dir`` that holds a metrics.json."""
    def order(mfile):   # Hydra's job number first (jobs 2 .. 9 before 10), then the name
        head = mfile.parent.name.split("_", 1)[0]
        return (int(head) if head.isdigit() else math.inf, mfile.parent.name)

    rows = []
    for mfile in sorted(Path(sweep_dir).glob("*/metrics.json"), key=order):
        try:
            m = json.loads(mfile.read_text())
        except (OSError, ValueError):
            continue
        job = mfile.parent
        row = {"job": job.name, "overrides": _job_label(job)}
        if "as2008" in m:
            for r in m["as2008"]:
                row[f"profit_mean[{r['strategy']},γ={r['gamma']:g}]"] = r["profit_mean"]
        else:
            pl, pdd, p = m["p_liquidation"], m["p_drawdown"], m["pnl"]
            row.update({"pnl_mean": p["mean"], "pnl_se": p.get("se_mean"), "pnl_std": p["std"],
                        "var_99": p["var_99"], "cvar_99": p["cvar_99"], "p_liq": pl["estimate"],
                        "p_liq_ci_high": pl["ci_high"], "p_dd": pdd["estimate"], "p_dd_ci_high": pdd["ci_high"],
                        "max_dd_q99": m["max_drawdown"]["q99"]})
        row["n_paths"] = m.get("n_paths")
        rows.append(row)
    return rows


def varying_labels(overrides: list[str]) -> list[str]:
    """Short plot labels for jobs' override strings: only the overrides that differ between
    jobs, each key by its last component (``policy.event_pull_before_s=300`` ->
    ``event_pull_before_s=300``), one per line."""
    toks = [o.split() for o in overrides]
    common = set.intersection(*map(set, toks)) if len(toks) > 1 else set()
    out = []
    for t in toks:
        parts = [x for x in t if x not in common] or t
        out.append("\n".join(f"{x.split('=', 1)[0].rsplit('.', 1)[-1]}={x.split('=', 1)[1]}" if "=" in x else x
                             for x in parts))
    return out


def write_sweep_summary(sweep_dir: Path) -> list[Path]:
    """Aggregate the jobs of a multirun into ``sweep_summary.md``, ``.csv`` and ``.png`` (PnL mean
    ± 2 se, P(liquidation) and P(drawdown > x) with their Clopper-Pearson upper bounds, per job,
    labelled by the overrides that vary). Returns the files written (none when no job has a
    metrics.json)."""
    sweep_dir = Path(sweep_dir)
    rows = sweep_rows(sweep_dir)
    if not rows:
        return []
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(sweep_dir / "sweep_summary.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k) for k in keys})
    md = ["# Sweep summary", "", f"{len(rows)} job(s) in `{sweep_dir}`.", "",
          md_table(keys, [[r.get(k) if not isinstance(r.get(k), str) else r[k] for k in keys] for r in rows]), ""]
    files = [sweep_dir / "sweep_summary.csv"]
    risk_rows = [r for r in rows if "pnl_mean" in r]
    if risk_rows:
        x = np.arange(len(risk_rows))
        labels = varying_labels([r["overrides"] for r in risk_rows])
        n_lines = max(lab.count("\n") + 1 for lab in labels)
        fig, (a1, a2, a3) = plt.subplots(3, 1, figsize=(max(6, 0.8 * len(risk_rows) + 2), 8 + 0.3 * n_lines),
                                         sharex=True)
        mean = np.array([r["pnl_mean"] for r in risk_rows], float)
        se = np.array([r.get("pnl_se") or 0.0 for r in risk_rows], float)
        a1.errorbar(x, mean, yerr=2 * se, fmt="o", capsize=3)
        a1.set_ylabel("PnL mean ± 2 se")
        a1.grid(alpha=0.3)
        for ax, est, hi, what in ((a2, "p_liq", "p_liq_ci_high", "P(liquidation)"),
                                  (a3, "p_dd", "p_dd_ci_high", "P(max drawdown > x)")):
            ax.bar(x, [r[hi] for r in risk_rows], color="#c44e52", alpha=0.6, label="CP upper bound")
            ax.plot(x, [r[est] for r in risk_rows], "ko", label="estimate")
            ax.set_ylabel(what)
            ax.grid(alpha=0.3, axis="y")
        a2.legend(fontsize=8)
        a3.set_xticks(x)
        a3.set_xticklabels(labels, fontsize=7, rotation=30, ha="right", rotation_mode="anchor")
        fig.tight_layout()
        fig.savefig(sweep_dir / "sweep_summary.png", dpi=DPI)
        plt.close(fig)
        files.append(sweep_dir / "sweep_summary.png")
        md += ["![sweep summary](sweep_summary.png)", ""]
    (sweep_dir / "sweep_summary.md").write_text("\n".join(md))
    return [sweep_dir / "sweep_summary.md"] + files
