"""The evidence of one Monte Carlo risk run: the PnL histogram with VaR/CVaR, the drawdown
distribution, the cumulative P(liquidation) with its Clopper-Pearson band, sample paths, and
``report.md``. PnL, drawdowns and equity in quote currency; times in seconds; positions in base units."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mmsim.report.common import DPI, REGIME_COLORS, _time_axis, fmt, liquidation_claim, md_table, summary_rows


def fig_pnl_hist(pnl: np.ndarray, pnl_metrics: dict, path: Path, unit: str = "USDT") -> Path:
    """Histogram of the final PnL with VaR 99 and CVaR 99 (positive losses) marked."""
    pnl = np.asarray(pnl, float)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(pnl, bins=min(100, max(10, pnl.size // 20)), color="#4c72b0", alpha=0.85)
    for x, ls, label in (
        (-pnl_metrics["var_99"], "--", f"VaR 99 = {fmt(pnl_metrics['var_99'])}"),
        (-pnl_metrics["cvar_99"], ":", f"CVaR 99 = {fmt(pnl_metrics['cvar_99'])}"),
        (pnl_metrics["mean"], "-", f"mean = {fmt(pnl_metrics['mean'])}"),
    ):
        ax.axvline(x, color="k" if ls != "-" else "#c44e52", ls=ls, lw=1.3, label=label)
    ax.set_yscale("log")  # the tails are the point of a risk report
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
    ax.axvline(
        100 * threshold,
        color="#c44e52",
        ls="--",
        label=f"threshold {100 * threshold:.3g} %: P = {fmt(p_dd['estimate'])} "
        f"[{fmt(p_dd['ci_low'])}, {fmt(p_dd['ci_high'])}]",
    )
    ax.set_yscale("log")
    ax.set_xlabel("max drawdown (% of initial equity)")
    ax.set_ylabel("paths (log scale)")
    ax.set_title("Maximum drawdown")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def fig_liquidation_curve(
    curve: dict, path: Path, epsilon: float | None = None, n_paths: int | None = None, ci_level: float = 0.95
) -> Path:
    """Cumulative P(liquidated by t) with its pointwise Clopper-Pearson band."""
    t, xlabel = _time_axis(np.asarray(curve["t"], float))
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.fill_between(
        t,
        curve["ci_low"],
        curve["ci_high"],
        color="#c44e52",
        alpha=0.25,
        step="post",
        label=f"{100 * ci_level:g} % Clopper-Pearson band",
    )
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


def fig_sample_paths(
    trace,
    path: Path,
    *,
    asset_names: Sequence[str] | None = None,
    max_paths: int = 4,
    unit: str = "USDT",
    events: Sequence[tuple[float, float, float]] = (),
) -> Path:
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
            axes[0].plot(
                t,
                y,
                color=colors[i % len(colors)],
                ls=styles[j % 4],
                lw=0.9,
                label=(f"path {i}" if j == 0 else None) if a == 1 else f"path {i}, {names[j]}",
            )
            axes[1].plot(
                t, np.asarray(trace.position)[i, :, j], color=colors[i % len(colors)], ls=styles[j % 4], lw=0.9
            )
        axes[2].plot(t, np.asarray(trace.equity, float)[i], color=colors[i % len(colors)], lw=0.9)
        maint = np.asarray(trace.maintenance, float)[i]
        axes[2].plot(t, np.where(maint > 0, maint, np.nan), color=colors[i % len(colors)], lw=0.8, ls=":")
        lam_true = np.asarray(trace.true_cascade_intensity)[i].sum(-1)
        lam_est = np.asarray(trace.cascade_intensity)[i].sum(-1)
        axes[3].plot(t, lam_true, color=colors[i % len(colors)], lw=0.9)
        axes[3].plot(t, lam_est, color=colors[i % len(colors)], lw=0.8, ls="--")
    axes[0].set_ylabel(f"mid ({unit})" if a == 1 else "mid change (%)")
    axes[1].set_ylabel(
        "position (base units)"
        + ("" if a == 1 else "\n" + ", ".join(f"{nm}: {styles[j % 4]}" for j, nm in enumerate(names)))
    )
    eq = np.asarray(trace.equity, float)[:n]
    if eq.size and np.all(eq > 0):
        axes[2].set_yscale("log")  # equity and maintenance margin differ by orders of magnitude
    axes[2].set_ylabel(f"equity (solid) and\nmaintenance margin (dotted), {unit}")
    axes[3].set_ylabel("liquidation intensity (1/s)\nworld (solid), engine (dashed)")
    axes[3].set_xlabel(xlabel)
    for ax in axes:
        _shade_regimes(ax, t, regime)
        for t_e, before, after in events:
            ax.axvspan(
                scale * (t_e - before), scale * (t_e + after), facecolor="none", hatch="//", edgecolor="0.45", lw=0.0
            )
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


def write_risk_report(
    out_dir: Path,
    metrics: dict,
    result,
    *,
    drawdown_threshold: float,
    epsilon_liq: float,
    ci_level: float = 0.95,
    title: str = "mmsim risk report",
    description: str = "",
    config_lines: Sequence[tuple[str, str]] = (),
    asset_names: Sequence[str] | None = None,
    curve: dict | None = None,
    notes: Sequence[str] = (),
    events: Sequence[tuple[float, float, float]] = (),
) -> list[Path]:
    """Figures and ``report.md`` of one Monte Carlo risk run into ``out_dir``; returns the files.
    ``events``: the policy's scheduled events ``(t_e, before, after)``, seconds, marked on the sample paths."""
    out_dir = Path(out_dir)
    s = result.summary
    files = [
        fig_pnl_hist(s.pnl, metrics["pnl"], out_dir / "pnl_hist.png"),
        fig_drawdown(
            s.max_dd, result.initial_equity, drawdown_threshold, metrics["p_drawdown"], out_dir / "drawdown.png"
        ),
    ]
    if curve is not None:
        files.append(
            fig_liquidation_curve(curve, out_dir / "liquidation_curve.png", epsilon_liq, metrics["n_paths"], ci_level)
        )
    if result.trace is not None:
        files.append(
            fig_sample_paths(result.trace, out_dir / "sample_paths.png", asset_names=asset_names, events=events)
        )
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
    captions = {
        "pnl_hist.png": "Final PnL, with VaR 99 and CVaR 99 (losses) marked.",
        "drawdown.png": "Maximum drawdown as a fraction of the initial equity, with the threshold.",
        "liquidation_curve.png": f"Cumulative P(liquidation by t) with its pointwise {100 * ci_level:g} % "
        "Clopper-Pearson band.",
        "sample_paths.png": "Sample paths: mid, inventory, equity against the maintenance margin, "
        "cascade intensity; volatility regime shaded.",
    }
    for f in files:
        lines += [f"![{f.stem}]({f.name})", "", captions.get(f.name, ""), ""]
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    lines += [
        "Intervals are exact two-sided Clopper-Pearson at the stated level; VaR and CVaR are positive losses "
        "(quote currency). Full numbers: `metrics.json`; configuration: `config_resolved.yaml`.",
        "",
    ]
    (out_dir / "report.md").write_text("\n".join(lines))
    return files + [out_dir / "report.md"]
