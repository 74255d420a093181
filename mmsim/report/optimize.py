"""The optimiser's figures and report: the frontier over the grid (E[PnL] against the constraints'
upper bounds), the training trace, and ``report.md``. The objective is in quote currency; the
probabilities are over the horizon, on a log axis where a count of 0 cannot be drawn: a grid point
or an iteration with 0 events is drawn as its Clopper-Pearson upper bound, a "v" marker ("the true
probability is below this"), never as a floor value that could sit above epsilon.

Each figure has a builder that returns the matplotlib Figure (:func:`frontier_figure`,
:func:`trace_figure`) and a ``plot_*`` function that saves it as a PNG and closes it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mmsim.sim.risk import clopper_pearson

if TYPE_CHECKING:  # annotations only: importing them here would be circular (optimize.task imports this module)
    from matplotlib.figure import Figure

    from mmsim.optimize.lagrangian import OptResult
    from mmsim.optimize.objective import Constraints
    from mmsim.optimize.validation import FrontierResult

#: The label of the markers of the points with 0 events (their upper bound).
ZERO_LABEL = "0 events: {ci:g} % upper bound (p below)"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=120)
    _pyplot().close(fig)
    return p


def _log_limits(ax, values, eps_lines) -> float:
    """Log-axis limits that hold every positive value and every epsilon line (a decade of room
    below the smallest, a factor 3 above the largest, at most 1.5); returns the bottom."""
    v = np.asarray([x for x in np.concatenate([np.ravel(values), np.ravel(eps_lines)]) if np.isfinite(x) and x > 0])
    lo = float(v.min()) / 10.0 if v.size else 1e-6
    hi = min(1.5, 3.0 * float(v.max())) if v.size else 1.0
    ax.set_ylim(lo, max(hi, 10.0 * lo))
    return lo


def frontier_figure(
    fr: FrontierResult,
    param: str,
    constraints: Constraints,
    *,
    optimum: dict | None = None,
    objective_label: str = "E[PnL]",
) -> Figure:
    """The frontier figure (see :func:`plot_frontier`)."""
    plt = _pyplot()
    ci = 100.0 * (1.0 - constraints.alpha)
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
    ax.set_ylabel(f"{objective_label} (quote ccy)\n± 2 standard errors")
    ax.legend(fontsize=7)
    ax.set_xscale("log")

    def prob_panel(ax, key, eps, label):
        est = fr.column(key, "estimate")
        lo = fr.column(key, "ci_low")
        hi = fr.column(key, "ci_high")
        zero = ~(est > 0)  # 0 events (the estimate is count / n)
        shown = [hi, est[~zero], lo[~zero], [eps]]
        o = optimum.get(key) if optimum is not None else None
        if o is not None:
            shown += [[o["ci_high"]], [o["estimate"]], [o["ci_low"]]]
        bottom = _log_limits(ax, np.concatenate([np.ravel(s) for s in shown]), [eps])
        # A lower end of 0 runs to the bottom of the log axis; a 0 estimate is not drawn (a gap).
        ax.fill_between(x, np.where(lo > 0, lo, bottom), hi, color="C1", alpha=0.25, label=f"{ci:g} % Clopper-Pearson")
        ax.plot(x, np.where(zero, np.nan, est), "o-", color="C1", ms=3, lw=1, label="estimate (> 0 events)")
        if zero.any():
            ax.plot(
                x[zero],
                hi[zero],
                "v",
                color="C1",
                mfc="white",
                mew=1.2,
                ms=7,
                ls="none",
                label=ZERO_LABEL.format(ci=ci),
                gid="zero_upper_bound",
            )
        ax.axhline(eps, color="k", ls="--", lw=1, label=f"epsilon = {eps:g}")
        if o is not None:
            xo = [optimum["theta"][param]]
            if not o["estimate"] > 0:
                ax.plot(
                    xo,
                    [o["ci_high"]],
                    "v",
                    color="C3",
                    ms=10,
                    ls="none",
                    label=f"optimiser (validation): 0 events, {ci:g} % upper bound",
                    gid="zero_upper_bound",
                )
            else:
                ax.errorbar(
                    xo,
                    [o["estimate"]],
                    yerr=[[o["estimate"] - max(o["ci_low"], bottom)], [o["ci_high"] - o["estimate"]]],
                    fmt="*",
                    color="C3",
                    ms=12,
                    label="optimiser (validation)",
                )
        ax.set_yscale("log")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)

    prob_panel(axes[1], "p_liquidation", constraints.epsilon_liq, "P(liquidation)")
    if constraints.has_dd:
        prob_panel(
            axes[2], "p_drawdown", float(constraints.epsilon_dd), f"P(max dd > {constraints.drawdown_threshold:g})"
        )
    axes[-1].set_xlabel(param)
    fig.suptitle(f"Frontier over {param} (validation paths, seed {fr.seed})", fontsize=10)
    fig.tight_layout()
    return fig


def plot_frontier(
    fr: FrontierResult,
    param: str,
    constraints: Constraints,
    path: str | os.PathLike,
    *,
    optimum: dict | None = None,
    objective_label: str = "E[PnL]",
) -> Path:
    """Objective (quote currency, with +-2 standard errors) and P(liquidation) with its Clopper-Pearson
    band (level 1 - alpha) against ``param`` (log axis), the epsilon line, the feasible points and the
    optimum (``optimum``: a validation dict with ``theta``) marked. A point with 0 events is drawn as
    its upper bound ("v", the probability is below it), never as a 0 clipped to a floor."""
    fig = frontier_figure(fr, param, constraints, optimum=optimum, objective_label=objective_label)
    return _save(fig, path)


def trace_figure(res: OptResult) -> Figure:
    """The optimiser's trace figure (see :func:`plot_trace`)."""
    plt = _pyplot()
    tr = res.trace_arrays()
    it = tr["iter"]
    names = res.constraints.names
    alpha = res.constraints.alpha
    n = int(res.settings.n_paths)
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
    ax.set_ylabel(f"training {res.objective.label()}\n(quote ccy, ± 2 se)")
    ax = axes[2]
    shown, lines = [], []
    u0 = clopper_pearson(0, n, alpha)[1]  # the upper bound of 0 events in n training paths
    for j, c in enumerate(names):
        eps = res.constraints.epsilons[j]
        p, ps = np.asarray(tr[f"p_{c}"], float), np.asarray(tr[f"p_{c}_s"], float)
        zero, zero_s = np.rint(p * n) == 0, ps <= 0
        ax.plot(it, np.where(zero, np.nan, p), "o-", ms=3, color=f"C{j}", label=f"P({c}) training (> 0 events)")
        ax.plot(
            it,
            np.where(zero_s, np.nan, ps),
            color=f"C{j}",
            ls="--",
            label=f"P({c}) surrogate" + (f" (0 at {int(zero_s.sum())} iterations: not drawn)" if zero_s.any() else ""),
        )
        if zero.any():
            ax.plot(
                it[zero],
                np.full(int(zero.sum()), u0),
                "v",
                color=f"C{j}",
                mfc="white",
                ms=5,
                ls="none",
                label=f"P({c}) training, 0 / {n} events: {100 * (1 - alpha):g} % upper bound (p below)",
                gid="zero_upper_bound",
            )
            shown.append(u0)
        ax.axhline(eps, color=f"C{j}", ls=":", lw=1, label=f"epsilon_{c}")
        lines.append(eps)
        if res.targets.get(c, eps) != eps and res.targets.get(c, 0) > 0:
            ax.axhline(res.targets[c], color=f"C{j}", ls="-.", lw=1, label=f"training target ({c})")
            lines.append(res.targets[c])
        shown += [p[~zero], ps[~zero_s]]
    _log_limits(ax, np.concatenate([np.ravel(s) for s in shown]) if shown else [], lines)
    ax.set_yscale("log")
    ax.set_ylabel(f"training probabilities\n({n} paths)")
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
    return fig


def plot_trace(res: OptResult, path: str | os.PathLike) -> Path:
    """The optimiser's trace: parameters, training objective (quote currency), training probabilities
    (indicator and surrogate) against their epsilon, constraint values and multipliers, per iteration.
    An iteration with 0 events on the training paths is drawn as the Clopper-Pearson upper bound of
    0 events in ``settings.n_paths`` paths ("v"), never as a 0 clipped to a floor."""
    return _save(trace_figure(res), path)


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
    rare = s.get("rare_event")
    if rare:
        if rare.get("ci_high") is None:
            cell = "no path reached the event: not certified"
        else:
            cell = (
                f"{rare['estimate']:.3g}, 95 % interval [{rare['ci_low']:.3g}, {rare['ci_high']:.3g}]; "
                + ("certified" if rare.get("certified") else "not certified")
                + f" ({rare.get('why')})"
            )
        lines.append(f"| P(liquidation) by {rare['method']} | {cell} |")
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
