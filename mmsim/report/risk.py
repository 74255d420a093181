"""The evidence of one Monte Carlo risk run: the PnL histogram with VaR/CVaR, the drawdown
distribution, the cumulative P(liquidation) with its Clopper-Pearson band, sample paths, and
``report.md``. PnL, drawdowns and equity in quote currency; times in seconds; positions in base units.

Each figure has a builder that returns the matplotlib Figure (``*_figure``, for tests and
notebooks) and a ``fig_*`` function that saves it as a PNG and closes it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from mmsim import regimes
from mmsim.report.common import (
    REGIME_COLORS,
    _time_axis,
    fmt,
    liquidation_claim,
    md_table,
    rare_event_claim,
    rare_event_paragraph,
    save_figure,
    summary_rows,
)
from mmsim.sim.risk import clopper_pearson, paths_to_certify


def signed(x: float) -> str:
    """A figure label's number: ``fmt(x)``, thousands separated from 1,000 on, with a typographic
    minus sign for negative numbers (``signed(-1234.5) == "−1,234"``)."""
    v = float(x)
    s = f"{v:,.0f}" if np.isfinite(v) and abs(v) >= 1000 else fmt(v)
    return "\u2212" + s[1:] if s.startswith("-") and s != "-" else s


def pnl_hist_figure(pnl: np.ndarray, pnl_metrics: dict, unit: str = "USDT") -> Figure:
    """The final-PnL histogram (quote currency ``unit``), log counts. ``pnl_metrics`` holds
    ``var_99`` and ``cvar_99`` as positive losses: the lines are drawn at the PnL values -VaR and
    -CVaR and their labels state those PnL values (with the sign that is plotted)."""
    pnl = np.asarray(pnl, float)
    fig, ax = plt.subplots(figsize=(7, 4))
    counts, _, _ = ax.hist(pnl, bins=min(100, max(10, pnl.size // 20)), color="#4c72b0", alpha=0.85)
    var, cvar, mean = (float(pnl_metrics[k]) for k in ("var_99", "cvar_99", "mean"))
    for x, ls, label in (
        (-var, "--", f"VaR 99 % (PnL = {signed(-var)})"),
        (-cvar, ":", f"CVaR 99 % (PnL = {signed(-cvar)})"),
        (mean, "-", f"mean PnL = {signed(mean)}"),
    ):
        ax.axvline(x, color="k" if ls != "-" else "#c44e52", ls=ls, lw=1.3, label=label)
    ax.set_yscale("log")  # the tails are the point of a risk report
    ax.set_ylim(0.7, 20.0 * max(1.0, float(np.max(counts, initial=1.0))))  # room above the bars for the legend
    ax.set_xlabel(f"final PnL ({unit})")
    ax.set_ylabel("paths (log scale)")
    ax.set_title(f"PnL distribution ({pnl.size:,} paths); losses to the left of 0")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def fig_pnl_hist(pnl: np.ndarray, pnl_metrics: dict, path: Path, unit: str = "USDT") -> Path:
    """Histogram of the final PnL (quote currency) with VaR 99 and CVaR 99 (positive losses in the
    metrics) drawn at the PnL values -VaR and -CVaR; see :func:`pnl_hist_figure`."""
    return save_figure(pnl_hist_figure(pnl, pnl_metrics, unit), path)


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
    return save_figure(fig, path)


def zero_event_note(upper: float, n_paths: int | None, epsilon: float | None, ci_level: float = 0.95) -> str:
    """What a run with no liquidation shows, in words: "0 / N paths liquidated; 95 % upper bound U;
    N_eps paths needed for eps = ..." (``upper``: the Clopper-Pearson upper bound at 0 events;
    N_eps: the paths at which 0 events would certify ``epsilon``,
    :func:`mmsim.sim.risk.paths_to_certify`), and whether U certifies epsilon; on three lines (a
    line break after each "; " but the first)."""
    head = f"0 / {n_paths:,} paths liquidated" if n_paths else "0 paths liquidated"
    head += f"; {100 * ci_level:g} % upper bound {upper:.3g}"
    if epsilon is None:
        return head
    n_eps = paths_to_certify(epsilon, 1.0 - ci_level)
    verdict = "certified: upper bound ≤ ε" if upper <= epsilon else "not certified: upper bound > ε"
    return f"{head};\n{n_eps:,} paths needed for ε = {epsilon:g}\n{verdict}"


def liquidation_curve_figure(
    curve: dict, epsilon: float | None = None, n_paths: int | None = None, ci_level: float = 0.95
) -> Figure:
    """Cumulative P(liquidated by t) (``curve`` from :func:`mmsim.sim.risk.liquidation_curve`, times
    in seconds) with its pointwise Clopper-Pearson band and the target ``epsilon``. With no
    liquidation at all, the figure says so in words (:func:`zero_event_note`)."""
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
    final = int(np.asarray(curve["count"])[-1]) if "count" in curve else None
    if final == 0 or (final is None and not np.any(np.asarray(curve["estimate"], float) > 0)):
        hi = np.asarray(curve["ci_high"], float)
        upper = float(hi[-1]) if hi.size else clopper_pearson(0, int(n_paths), 1.0 - ci_level)[1]
        ax.text(
            0.5,
            0.45,
            zero_event_note(upper, n_paths, epsilon, ci_level),
            transform=ax.transAxes,
            ha="center",
            va="center",
            fontsize=9,
            bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "0.5", "alpha": 0.9},
            gid="zero_event_note",
        )
    ax.set_xlabel(xlabel)
    ax.set_ylabel("P(liquidated by t)")
    ax.set_ylim(bottom=0)
    ax.set_title("Cumulative probability of liquidation" + (f" ({n_paths:,} paths)" if n_paths else ""))
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def fig_liquidation_curve(
    curve: dict, path: Path, epsilon: float | None = None, n_paths: int | None = None, ci_level: float = 0.95
) -> Path:
    """Cumulative P(liquidated by t) with its pointwise Clopper-Pearson band; see
    :func:`liquidation_curve_figure`."""
    return save_figure(liquidation_curve_figure(curve, epsilon, n_paths, ci_level), path)


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


def _regime_handles(regime: np.ndarray) -> list[Patch]:
    """One legend entry per regime present in ``regime`` (indices into regimes.REGIME_NAMES): its shading,
    or "<name>: unshaded" for a regime drawn without colour."""
    handles = []
    for r in sorted({int(x) for x in np.unique(np.asarray(regime)) if x >= 0}):
        name = regimes.name(r)
        color = REGIME_COLORS[r] if r < len(REGIME_COLORS) else None
        if color:
            handles.append(Patch(facecolor=color, edgecolor="none", label=name))
        else:
            handles.append(Patch(facecolor="white", edgecolor="0.6", lw=0.6, label=f"{name}: unshaded"))
    return handles


def sample_paths_figure(
    trace,
    *,
    asset_names: Sequence[str] | None = None,
    max_paths: int = 4,
    unit: str = "USDT",
    events: Sequence[tuple[float, float, float]] = (),
    initial_equity: float | None = None,
) -> Figure:
    """The sample-paths figure of a :class:`mmsim.sim.simulate.Trace` (see :func:`fig_sample_paths`);
    path 0 is drawn bold, paths 1 .. max_paths - 1 faint behind it."""
    t_s = np.asarray(trace.t, float)
    t, xlabel = _time_axis(t_s)
    scale = float(t[-1] / t_s[-1]) if t_s.size and t_s[-1] > 0 else 1.0
    n = min(max_paths, np.shape(trace.mid)[0])
    a = np.shape(trace.mid)[2]
    names = list(asset_names or [f"asset {i}" for i in range(a)])
    regime = np.asarray(trace.true_regime[0])
    source = "world"
    if np.all(regime < 0) and np.any(np.asarray(trace.true_cascade_intensity) > 0):
        regime, source = np.asarray(trace.regime[0]), "engine's estimate"
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    others = "" if n < 2 else ("path 1" if n == 2 else f"paths 1–{n - 1}")

    def path_style(i: int, j: int) -> dict:
        c = colors[j % len(colors)] if a > 1 else colors[0]
        if i == 0:
            return {"color": c, "lw": 1.4, "zorder": 3}
        return {"color": c if a > 1 else "0.45", "lw": 0.7, "alpha": 0.35, "zorder": 2}

    def path_label(i: int, j: int) -> str | None:
        who = names[j] if a > 1 else ""
        if i == 0:
            return f"path 0{', ' + who if who else ''}"
        if i == 1:
            return f"{others}{', ' + who if who else ''} (faint)"
        return None

    fig, axes = plt.subplots(4, 1, figsize=(9, 11), sharex=True)
    mid = np.asarray(trace.mid, float)
    pos = np.asarray(trace.position, float)
    for i in range(n):  # path 0 first in the legends, on top by its zorder
        for j in range(a):
            y = mid[i, :, j] if a == 1 else 100.0 * (mid[i, :, j] / mid[i, 0, j] - 1.0)
            axes[0].plot(t, y, label=path_label(i, j), **path_style(i, j))
            axes[1].plot(t, pos[i, :, j], drawstyle="steps-post", label=path_label(i, j), **path_style(i, j))
    axes[0].set_ylabel(f"mid ({unit})" if a == 1 else "mid change since t = 0 (%)")
    axes[1].axhline(0.0, color="k", lw=0.6)
    axes[1].set_ylabel("position (base units)")

    # Equity around its starting value, linear, quote currency; the maintenance margin of path 0
    # (the level at which it would be liquidated) on the right axis.
    eq = np.asarray(trace.equity, float)[:n]
    eq0 = np.full(n, float(initial_equity)) if initial_equity is not None else eq[:, 0]
    for i in range(n):
        st = path_style(i, 0) if a == 1 else {**path_style(i, 0), "color": "#8172b2" if i == 0 else "0.45"}
        axes[2].plot(
            t, eq[i] - eq0[i], label=path_label(i, 0) if a == 1 else {0: "path 0", 1: f"{others} (faint)"}.get(i), **st
        )
    axes[2].axhline(0.0, color="k", lw=0.6)
    axes[2].set_ylabel(f"equity − initial equity\n({unit}; initial {signed(eq0[0])})")
    maint = np.asarray(trace.maintenance, float)[0]
    ax_m = axes[2].twinx()
    ax_m.plot(
        t, np.where(maint > 0, maint, np.nan), color="#c44e52", lw=0.9, ls=":", label="maintenance margin, path 0"
    )
    ax_m.set_ylabel(f"maintenance margin of path 0\n(dotted, right axis, {unit})", color="#c44e52", fontsize=9)
    ax_m.tick_params(axis="y", colors="#c44e52", labelsize=8)
    ax_m.set_ylim(bottom=0)
    h1, l1 = axes[2].get_legend_handles_labels()
    h2, l2 = ax_m.get_legend_handles_labels()
    axes[2].legend(h1 + h2, l1 + l2, fontsize=7, loc="upper left")

    # The liquidation intensity of path 0: the world's true one against the engine's estimate.
    lam_true = np.asarray(trace.true_cascade_intensity, float)[0].sum(-1)
    lam_est = np.asarray(trace.cascade_intensity, float)[0].sum(-1)
    axes[3].plot(t, lam_true, color="k", lw=1.1, ls="-", label="world (true), path 0")
    axes[3].plot(t, lam_est, color="#dd8452", lw=1.1, ls="--", label="engine's estimate, path 0")
    axes[3].set_ylabel("liquidation intensity (1/s)" + ("" if a == 1 else "\nsummed over assets"))
    axes[3].legend(fontsize=7, loc="upper left")
    axes[3].set_xlabel(xlabel)

    for ax in axes:
        _shade_regimes(ax, t, regime)
        for t_e, before, after in events:
            ax.axvspan(
                scale * (t_e - before), scale * (t_e + after), facecolor="none", hatch="//", edgecolor="0.45", lw=0.0
            )
            ax.axvline(scale * t_e, color="k", ls="--", lw=0.8)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="upper left", ncol=1 if a == 1 else 2)
    axes[1].legend(fontsize=7, loc="upper left", ncol=1 if a == 1 else 2)

    regime_handles = _regime_handles(regime)
    handles = list(regime_handles)
    if len(events):
        handles += [
            plt.Line2D([], [], color="k", ls="--", lw=0.8, label="scheduled event"),
            Patch(facecolor="none", hatch="//", edgecolor="0.45", lw=0.0, label="quotes pulled"),
        ]
    title = f"Sample paths: path 0 bold{', ' + others + ' faint' if others else ''}"
    if handles:
        legend_title = f"regime of path 0 ({source})" if regime_handles else None
        fig.legend(
            handles=handles,
            loc="upper center",
            bbox_to_anchor=(0.5, 0.975),
            ncol=len(handles),
            fontsize=8,
            title=legend_title,
            title_fontsize=8,
            frameon=False,
        )
    fig.suptitle(title, fontsize=11, y=0.995)
    fig.tight_layout(rect=(0, 0, 1, 0.96 if handles else 0.98))
    return fig


def fig_sample_paths(
    trace,
    path: Path,
    *,
    asset_names: Sequence[str] | None = None,
    max_paths: int = 4,
    unit: str = "USDT",
    events: Sequence[tuple[float, float, float]] = (),
    initial_equity: float | None = None,
) -> Path:
    """Sample paths of a :class:`mmsim.sim.simulate.Trace`, path 0 bold and up to ``max_paths - 1``
    others faint: the mid (quote currency; % change per asset with several), the position (base
    units), the equity minus the initial equity (quote currency, linear; ``initial_equity``, default
    each path's equity at t = 0) with path 0's maintenance margin on the right axis, and path 0's
    liquidation intensity (1/s), the world's true one (solid black) against the engine's estimate
    (dashed orange). Path 0's volatility regime is shaded, every regime present named in the legend
    (the world's; the engine's estimate where the world has none); the policy's scheduled events
    ``(t_e, before, after)`` in seconds, as a dashed line at ``t_e`` and its pull window hatched."""
    fig = sample_paths_figure(
        trace,
        asset_names=asset_names,
        max_paths=max_paths,
        unit=unit,
        events=events,
        initial_equity=initial_equity,
    )
    return save_figure(fig, path)


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
            fig_sample_paths(
                result.trace,
                out_dir / "sample_paths.png",
                asset_names=asset_names,
                events=events,
                initial_equity=result.initial_equity or None,
            )
        )
    claim = liquidation_claim({**metrics["p_liquidation"], "n": metrics["n_paths"]}, epsilon_liq, ci_level)
    rare = metrics.get("rare_event")
    if rare:
        claim = rare_event_claim(rare, epsilon_liq, ci_level)
    lines = [f"# {title}", ""]
    if description:
        lines += [description, ""]
    lines += [f"**{claim}**", ""]
    if config_lines:
        lines += ["## Set-up", "", md_table(["", ""], config_lines), ""]
    lines += ["## Summary", "", md_table(["quantity", "value"], summary_rows(metrics)), ""]
    if rare:
        lines += ["## How P(liquidation) was certified", "", rare_event_paragraph(rare), ""]
    dec = metrics.get("pnl_decomposition") or {}
    if dec:
        lines += ["## PnL decomposition (mean per path)", "", md_table(list(dec), [list(dec.values())]), ""]
    lines += ["## Figures", ""]
    captions = {
        "pnl_hist.png": "Final PnL, with VaR 99 and CVaR 99 (positive losses) marked at the PnL values -VaR and -CVaR.",
        "drawdown.png": "Maximum drawdown as a fraction of the initial equity, with the threshold.",
        "liquidation_curve.png": f"Cumulative P(liquidation by t) with its pointwise {100 * ci_level:g} % "
        "Clopper-Pearson band (with no liquidation: the upper bound and the paths needed to certify ε, in words).",
        "sample_paths.png": "Sample paths (path 0 bold, the others faint): mid, position, equity minus the initial "
        "equity with path 0's maintenance margin, path 0's liquidation intensity (world against the engine's "
        "estimate); path 0's volatility regime shaded, named in the legend.",
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
