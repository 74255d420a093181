"""The optimiser's figures and report: the frontier over the grid (E[PnL] against the constraints'
upper bounds), the training trace, and ``report.md``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mmsim.optimize.lagrangian import OptResult
from mmsim.optimize.objective import Constraints
from mmsim.optimize.validation import FrontierResult


def plot_frontier(
    fr: FrontierResult,
    param: str,
    constraints: Constraints,
    path: str | os.PathLike,
    *,
    optimum: dict | None = None,
    objective_label: str = "E[PnL]",
) -> Path:
    """Objective (with +-2 standard errors) and P(liquidation) with its 95 % Clopper-Pearson band
    against ``param`` (log axis), the epsilon line, the feasible points and the optimum
    (``optimum``: a validation dict with ``theta``) marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = fr.column("", theta=param)
    obj = fr.column("objective")
    se = fr.column("objective_se")
    feas = np.array([p["feasible"] for p in fr.points])
    rows = 3 if constraints.has_dd else 2
    fig, axes = plt.subplots(rows, 1, figsize=(7, 2.6 * rows + 0.6), sharex=True)
    ax = axes[0]
    ax.errorbar(x, obj, yerr=2 * se, fmt="o-", color="C0", ms=3, lw=1, capsize=2, label=f"grid ({fr.n_paths} paths)")
    ax.plot(x[feas], obj[feas], "o", color="C2", ms=6, mfc="none", label="feasible (upper bound <= epsilon)")
    if fr.best_feasible is not None:
        ax.axhline(obj[fr.best_feasible], color="C2", lw=0.6, ls=":")
    if optimum is not None:
        ax.errorbar(
            [optimum["theta"][param]],
            [optimum["objective"]],
            yerr=[2 * optimum.get("objective_se", 0.0)],
            fmt="*",
            color="C3",
            ms=12,
            label="optimiser (validation)",
        )
    ax.set_ylabel(f"{objective_label} (quote ccy)")
    ax.legend(fontsize=7)
    ax.set_xscale("log")

    def prob_panel(ax, key, eps, label):
        est = fr.column(key, "estimate")
        lo = fr.column(key, "ci_low")
        hi = fr.column(key, "ci_high")
        floor = 0.3 / fr.n_paths
        ax.fill_between(x, np.maximum(lo, floor), hi, color="C1", alpha=0.25, label="95 % Clopper-Pearson")
        ax.plot(x, np.maximum(est, floor), "o-", color="C1", ms=3, lw=1, label="estimate")
        ax.axhline(eps, color="k", ls="--", lw=1, label=f"epsilon = {eps:g}")
        if optimum is not None and key in optimum:
            o = optimum[key]
            ax.errorbar(
                [optimum["theta"][param]],
                [max(o["estimate"], floor)],
                yerr=[
                    [max(o["estimate"], floor) - max(o["ci_low"], floor * 0.5)],
                    [o["ci_high"] - max(o["estimate"], floor)],
                ],
                fmt="*",
                color="C3",
                ms=12,
                label="optimiser (validation)",
            )
        ax.set_yscale("log")
        ax.set_ylabel(f"{label}\n(0 drawn at {floor:.2g})")
        ax.legend(fontsize=7)

    prob_panel(axes[1], "p_liquidation", constraints.epsilon_liq, "P(liquidation)")
    if constraints.has_dd:
        prob_panel(
            axes[2], "p_drawdown", float(constraints.epsilon_dd), f"P(max dd > {constraints.drawdown_threshold:g})"
        )
    axes[-1].set_xlabel(param)
    fig.suptitle(f"Frontier over {param} (validation paths, seed {fr.seed})", fontsize=10)
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=120)
    plt.close(fig)
    return p


def plot_trace(res: OptResult, path: str | os.PathLike) -> Path:
    """The optimiser's trace: parameters, training objective, training probabilities (indicator and
    surrogate) against their epsilon, constraint values and multipliers, per iteration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tr = res.trace_arrays()
    it = tr["iter"]
    names = res.constraints.names
    fig, axes = plt.subplots(4, 1, figsize=(7, 10), sharex=True)
    ax = axes[0]
    for s in res.specs:
        ax.plot(it, tr[f"theta.{s.name}"], label=s.name)
    ax.set_yscale("log" if all(s.transform == "log" for s in res.specs) else "linear")
    ax.axvline(res.selected_iter, color="C3", ls=":", lw=1, label="selected")
    ax.set_ylabel("parameters")
    ax.legend(fontsize=7)
    ax = axes[1]
    ax.plot(it, tr["objective"], color="C0")
    ax.fill_between(
        it, tr["objective"] - 2 * tr["objective_se"], tr["objective"] + 2 * tr["objective_se"], color="C0", alpha=0.2
    )
    ax.axvline(res.selected_iter, color="C3", ls=":", lw=1)
    ax.set_ylabel(f"training {res.objective.label()}")
    ax = axes[2]
    floor = 0.3 / res.settings.n_paths
    for j, c in enumerate(names):
        eps = res.constraints.epsilons[j]
        ax.plot(it, np.maximum(tr[f"p_{c}"], floor), color=f"C{j}", label=f"P({c}) training")
        ax.plot(it, np.maximum(tr[f"p_{c}_s"], floor), color=f"C{j}", ls="--", label=f"P({c}) surrogate")
        ax.axhline(eps, color=f"C{j}", ls=":", lw=1, label=f"epsilon_{c}")
        if res.targets.get(c, eps) != eps and res.targets.get(c, 0) > 0:
            ax.axhline(res.targets[c], color=f"C{j}", ls="-.", lw=1, label=f"training target ({c})")
    ax.set_yscale("log")
    ax.set_ylabel(f"training probabilities\n(0 drawn at {floor:.2g})")
    ax.legend(fontsize=7)
    ax = axes[3]
    ax2 = ax.twinx()
    for j, c in enumerate(names):
        ax.plot(it, tr[f"c_{c}"], color=f"C{j}", label=f"c_{c} (<= 0: satisfied)")
        ax2.plot(it, tr[f"lambda_{c}"], color=f"C{j}", ls="--", lw=0.8, label=f"lambda_{c}")
    ax.axhline(0.0, color="k", lw=0.6)
    ax.set_ylabel("constraint c = log(p / target)")
    ax2.set_ylabel("multiplier (dashed)")
    ax.set_xlabel("iteration")
    ax.legend(fontsize=7, loc="upper left")
    ax2.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=120)
    plt.close(fig)
    return p


def _markdown(s: dict) -> str:
    v = s["selected_validation"]
    lines = [
        f"# Policy optimisation ({s['world']} world, {s['horizon_s']:g} s horizon)",
        "",
        f"Maximise {s['objective']} subject to P(liquidation) <= {s['constraints']['epsilon_liq']:g}"
        + (
            f" and P(max drawdown > {s['constraints']['drawdown_threshold']:g}) <= {s['constraints']['epsilon_dd']:g}"
            if s["constraints"]["epsilon_dd"] is not None
            else ""
        )
        + ".",
        "",
        f"**{'Feasible' if s['feasible'] else 'Not feasible'}** — {s['message']}",
        "",
        "| | value |",
        "|---|---|",
        f"| start | {s['theta0']}"
        + (" (best of the frontier grid on the training paths)" if s.get("start") == "frontier" else "")
        + " |",
        f"| optimiser result | {s['optimum']['theta']} (iteration {s['optimum']['selected_iter']}, "
        f"{s['optimum']['n_evals']} evaluations, {s['optimum']['wall_s']:.1f} s) |",
        f"| reported ({s['selected']}) | {v['theta']} |",
        f"| validation | seed {v['seed']}, {v['n_paths']} paths |",
        f"| objective | {v['objective']:.6g} ± {v['objective_se']:.2g} |",
        f"| P(liquidation) | {v['p_liquidation']['count']}/{v['n_paths']}, 95 % CI "
        f"[{v['p_liquidation']['ci_low']:.3g}, {v['p_liquidation']['ci_high']:.3g}] |",
    ]
    if "p_drawdown" in v:
        lines.append(
            f"| P(drawdown > x) | {v['p_drawdown']['count']}/{v['n_paths']}, 95 % CI "
            f"[{v['p_drawdown']['ci_low']:.3g}, {v['p_drawdown']['ci_high']:.3g}] |"
        )
    c = s.get("comparison") or {}
    if c.get("best_feasible_grid_objective") is not None:
        lines.append(
            f"| best feasible grid point | {c['best_feasible_grid_theta']}: "
            f"{c['best_feasible_grid_objective']:.6g}"
            f" (optimiser {100 * c['relative_gap']:+.2f} % below; within 2 %: {c['within_2pct']}) |"
        )
    elif s.get("frontier") is not None:
        lines.append("| best feasible grid point | none of the grid is certified feasible |")
    lines += [""]
    for k in ("frontier", "trace"):
        if k in s["files"]:
            lines.append(f"![{k}]({Path(s['files'][k]).name})")
    return "\n".join(lines) + "\n"
