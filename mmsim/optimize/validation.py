"""Validation and certification: a candidate re-simulated on fresh paths, every constraint judged by
the upper end of its exact Clopper-Pearson interval, and the frontier of a grid of candidates."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from mmsim.optimize.objective import Constraints, Evaluator, Objective, PathOutcomes
from mmsim.sim import risk
from mmsim.sim.risk import min_certifiable, paths_to_certify


def _prop(flags: np.ndarray, alpha: float) -> dict:
    p = risk.proportion(np.asarray(flags, bool), alpha)
    return {
        "count": int(p["count"]),
        "estimate": float(p["estimate"]),
        "ci_low": float(p["ci_low"]),
        "ci_high": float(p["ci_high"]),
    }


def assess(
    out: PathOutcomes, constraints: Constraints, objective: Objective = Objective(), *, seed: int | None = None
) -> dict:
    """P(liquidation), P(drawdown > x) with Clopper-Pearson intervals, the objective and
    feasibility (every upper bound <= its epsilon) of one batch of paths."""
    n = int(np.asarray(out.pnl).size)
    alpha = constraints.alpha
    pnl = np.asarray(out.pnl, float)
    ok = np.isfinite(pnl)
    v = {
        "seed": None if seed is None else int(seed),
        "n_paths": n,
        "objective": float(objective(pnl[ok])) if ok.any() else float("-inf"),
        "objective_se": float(objective.se(pnl[ok])),
        "pnl_mean": float(pnl[ok].mean()) if ok.any() else float("nan"),
        "n_nonfinite": int((~ok).sum()),
    }
    v["p_liquidation"] = _prop(out.liquidated, alpha)
    ok_liq = risk.certify_below(v["p_liquidation"], constraints.epsilon_liq)
    ok_dd = True
    if constraints.has_dd:
        v["p_drawdown"] = _prop(np.asarray(out.max_dd_frac, float) > float(constraints.drawdown_threshold), alpha)
        ok_dd = risk.certify_below(v["p_drawdown"], float(constraints.epsilon_dd))
    v["feasible_drawdown"] = bool(ok_dd)  # alone: a rare-event estimator may certify the liquidation instead
    v["feasible"] = bool(ok_liq and ok_dd)
    floor = min_certifiable(n, alpha)
    v["min_certifiable"] = floor
    v["certifiable"] = bool(all(e >= floor for e in constraints.epsilons))
    return v


def validate(
    evaluate: Evaluator,
    theta: Mapping[str, float],
    constraints: Constraints,
    *,
    seed: int,
    n_paths: int,
    objective: Objective = Objective(),
    train_seed: int | None = None,
    train_paths: int | None = None,
) -> dict:
    """Re-run ``theta`` on fresh paths (``seed``, ``n_paths``) and :func:`assess` them.

    Raises ValueError when the validation would reuse the training seed or use fewer paths."""
    if train_seed is not None and int(seed) == int(train_seed):
        raise ValueError(f"validation seed = {seed} equals the training seed: validation needs fresh paths")
    if train_paths is not None and int(n_paths) < int(train_paths):
        raise ValueError(
            f"validation n_paths = {n_paths} < training n_paths = {train_paths}: "
            "validate on at least as many paths as in training"
        )
    out = evaluate(dict(theta), int(seed), int(n_paths))
    v = assess(out, constraints, objective, seed=seed)
    v["theta"] = {k: float(x) for k, x in theta.items()}
    return v


def certification_message(v: dict, constraints: Constraints) -> str:
    """One sentence on the validation: feasible, infeasible, or uncertifiable at this path budget."""
    n = v["n_paths"]
    parts = []
    pl = v["p_liquidation"]
    parts.append(
        f"P(liquidation) = {pl['estimate']:.3g} ({pl['count']}/{n}), 95 % CP upper bound "
        f"{pl['ci_high']:.3g} vs epsilon_liq = {constraints.epsilon_liq:g}"
    )
    if constraints.has_dd:
        pd = v["p_drawdown"]
        parts.append(
            f"P(max drawdown > {constraints.drawdown_threshold:g}) = {pd['estimate']:.3g} "
            f"({pd['count']}/{n}), upper bound {pd['ci_high']:.3g} vs epsilon_dd = {constraints.epsilon_dd:g}"
        )
    s = "; ".join(parts)
    if v["feasible"]:
        return "feasible: " + s
    if not v["certifiable"]:
        need = max(paths_to_certify(e, constraints.alpha) for e in constraints.epsilons)
        return (
            f"not certifiable: epsilon is below the smallest upper bound {n} paths can give "
            f"({v['min_certifiable']:.3g}, with 0 events); at least {need} paths are needed. " + s
        )
    return "infeasible: " + s


@dataclasses.dataclass
class FrontierResult:
    """A grid of parameter values evaluated on common paths.

    Attributes:
        points: one :func:`assess` dict per grid point (with ``theta``).
        best_feasible: index of the feasible point with the highest objective, or None.
        safest: index of the point with the lowest upper bounds (liquidation first).
        seed, n_paths: the paths every point used.
    """

    points: list
    best_feasible: int | None
    safest: int
    seed: int
    n_paths: int

    def column(self, key: str, sub: str | None = None, theta: str | None = None) -> np.ndarray:
        if theta is not None:
            return np.array([p["theta"][theta] for p in self.points], float)
        if sub is None:
            return np.array([p[key] for p in self.points], float)
        return np.array([p[key][sub] for p in self.points], float)


def _safety_key(v: dict) -> tuple:
    dd = v.get("p_drawdown", {"ci_high": 0.0})["ci_high"]
    return (v["p_liquidation"]["ci_high"], dd, -v["objective"])


def frontier(
    evaluate: Evaluator,
    grid: Sequence[Mapping[str, float]] | Mapping[str, Sequence[float]],
    constraints: Constraints,
    *,
    seed: int,
    n_paths: int,
    objective: Objective = Objective(),
    base: Mapping[str, float] | None = None,
    progress: Callable[[int, dict], None] | None = None,
) -> FrontierResult:
    """Evaluate a grid on the same paths (``seed``, ``n_paths``: common random numbers) and mark
    the best feasible point (feasible: every Clopper-Pearson upper bound <= its epsilon).

    ``grid`` is a list of theta dicts, or ``{name: values}`` for a one-parameter grid; ``base``
    supplies the other entries of theta.
    """
    if isinstance(grid, Mapping):
        if len(grid) != 1:
            raise ValueError(f"a mapping grid must name exactly one parameter, got {list(grid)}")
        ((name, values),) = grid.items()
        thetas = [{name: float(x)} for x in values]
    else:
        thetas = [dict(t) for t in grid]
    if not thetas:
        raise ValueError("empty grid")
    pts = []
    for i, th in enumerate(thetas):
        full = {**(base or {}), **th}
        v = assess(evaluate(full, int(seed), int(n_paths)), constraints, objective, seed=seed)
        v["theta"] = {k: float(x) for k, x in full.items()}
        pts.append(v)
        if progress:
            progress(i, v)
    feas = [i for i, p in enumerate(pts) if p["feasible"]]
    best = max(feas, key=lambda i: pts[i]["objective"]) if feas else None
    safest = min(range(len(pts)), key=lambda i: _safety_key(pts[i]))
    return FrontierResult(points=pts, best_feasible=best, safest=safest, seed=int(seed), n_paths=int(n_paths))


def within_of_best(value: float, best: float, rel: float = 0.02) -> bool:
    """``value`` is no more than ``rel`` |best| below ``best``."""
    return bool(value >= best - rel * abs(best))
