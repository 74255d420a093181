"""The optimisation task as a run performs it: settings from the config, the simulator as the
evaluator, the optimiser, the validation and frontier, and the outputs (``best.yaml``,
``optimize.json``, figures, ``report.md``)."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmsim.optimize.best import _plain, policy_dict, write_best_yaml
from mmsim.optimize.lagrangian import OptResult, OptSettings, optimize
from mmsim.optimize.objective import Constraints, Evaluator, Objective, PathOutcomes, outcomes_from_summary
from mmsim.optimize.space import apply_theta, param_specs, theta_from_engine
from mmsim.optimize.validation import (
    FrontierResult,
    _safety_key,
    certification_message,
    frontier,
    validate,
    within_of_best,
)
from mmsim.report.common import sanitize
from mmsim.report.optimize import _markdown, plot_frontier, plot_trace


def simulator_evaluator(
    world: str,
    market_params: Any,
    engine_params: Any,
    *,
    n_steps: int,
    dt: float,
    dtype: Any = None,
    chunk_size: int | None = None,
    progress: bool = False,
    stats: dict | None = None,
    world_substeps: int = 1,
) -> Evaluator:
    """The Monte Carlo simulator as an :data:`Evaluator`: ``theta`` (natural units) is substituted
    into ``engine_params`` (:func:`apply_theta`) and ``n_paths`` paths of ``n_steps`` steps of
    ``dt`` seconds (the world in ``world_substeps`` steps each) are simulated with ``seed``. The
    compiled simulation is reused across theta (only leaf values change). ``stats``, if given,
    accumulates calls, simulated seconds and compile seconds."""
    import jax.numpy as jnp

    from mmsim.sim import simulate as sim

    dtype = jnp.float32 if dtype is None else dtype

    def evaluate(theta: Mapping[str, float], seed: int, n_paths: int) -> PathOutcomes:
        ep = apply_theta(engine_params, theta)
        r = sim.simulate(
            world,
            market_params,
            ep,
            n_paths=int(n_paths),
            n_steps=int(n_steps),
            dt=float(dt),
            seed=int(seed),
            chunk_size=chunk_size,
            dtype=dtype,
            progress=progress,
            world_substeps=world_substeps,
        )
        if stats is not None:
            stats["calls"] = stats.get("calls", 0) + 1
            stats["run_s"] = stats.get("run_s", 0.0) + float(r.run_s)
            stats["compile_s"] = stats.get("compile_s", 0.0) + float(r.compile_s)
            stats["path_steps"] = stats.get("path_steps", 0) + int(n_paths) * int(n_steps)
        return outcomes_from_summary(r.summary, r.initial_equity)

    return evaluate


#: The optimiser settings a config block may set, with their defaults: those of :class:`OptSettings`
#: (one source), except that a run stops after 5 iterations pinned at a bound (``patience``).
_OPT_FIELDS = (
    "n_iter",
    "learning_rate",
    "lr_final_frac",
    "lr_constant_frac",
    "b1",
    "b2",
    "normalize",
    "sigma",
    "n_directions",
    "directions",
    "rho",
    "active_margin",
    "lambda_max",
    "tau_liq",
    "tau_dd",
    "surrogate_value",
    "bound",
    "certify_power",
    "target_fraction",
    "select",
    "select_tol",
)
#: Defaults of the ``optimize`` config block (conf/experiment/optimize_gamma.yaml documents them).
CONFIG_DEFAULTS: dict = {
    "objective": "mean",
    "cvar_weight": 0.0,
    "cvar_level": 0.99,
    "epsilon_liq": None,
    "drawdown_threshold": None,
    "epsilon_dd": None,
    "params": {"gamma": {"lo": 1e-4, "hi": 1.0, "transform": "log"}},
    **{f.name: f.default for f in dataclasses.fields(OptSettings) if f.name in _OPT_FIELDS},
    "n_paths_train": 16384,
    "n_paths_validation": 16384,
    "seed_train": 1,
    "seed_validation": 2,
    "frontier": {"param": "gamma", "values": None, "n_points": 13},
    "start": "config",
    "patience": 5,
}


#: Where the optimiser starts: "config" (the configured policy and account), or "frontier" (the
#: best training-feasible point of the frontier grid evaluated on the training paths first).
STARTS = ("config", "frontier")


def _cfg_block(cfg) -> dict:
    from omegaconf import DictConfig, OmegaConf

    node = cfg.get("optimize") if isinstance(cfg, (DictConfig, dict)) else None
    block = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})
    unknown = sorted(set(block) - set(CONFIG_DEFAULTS))
    if unknown:
        raise ValueError(f"optimize: unknown key(s) {unknown}; valid keys: {sorted(CONFIG_DEFAULTS)}")
    out = {**CONFIG_DEFAULTS, **{k: v for k, v in block.items() if v is not None or k in ("n_directions",)}}
    out["frontier"] = {**CONFIG_DEFAULTS["frontier"], **(block.get("frontier") or {})}
    if "params" in block and block["params"]:
        out["params"] = block["params"]
    return out


def settings_from_config(cfg) -> dict:
    """The ``optimize`` block (over :data:`CONFIG_DEFAULTS`, with ``risk.epsilon_liq`` and
    ``risk.ci_level`` as fallbacks) as ``{objective, constraints, settings, specs, frontier,
    seed_validation, n_paths_validation}``. Raises ValueError on a bad block."""
    b = _cfg_block(cfg)
    risk_cfg = cfg.get("risk") or {}
    eps = b["epsilon_liq"] if b["epsilon_liq"] is not None else risk_cfg.get("epsilon_liq", 1e-3)
    alpha = round(1.0 - float(risk_cfg.get("ci_level", 0.95)), 12)
    dd_x, dd_eps = b["drawdown_threshold"], b["epsilon_dd"]
    constraints = Constraints(
        epsilon_liq=float(eps),
        drawdown_threshold=None if dd_x is None else float(dd_x),
        epsilon_dd=None if dd_eps is None else float(dd_eps),
        alpha=alpha,
    )
    objective = Objective(
        kind=str(b["objective"]), cvar_weight=float(b["cvar_weight"]), cvar_level=float(b["cvar_level"])
    )
    n_train, n_val = int(b["n_paths_train"]), int(b["n_paths_validation"])
    if n_val < n_train:
        raise ValueError(
            f"optimize.n_paths_validation = {n_val} < n_paths_train = {n_train}: validation needs at "
            "least as many paths as training"
        )
    if int(b["seed_validation"]) == int(b["seed_train"]):
        raise ValueError(
            f"optimize.seed_validation = {b['seed_validation']} equals seed_train: validation needs fresh paths"
        )
    settings = OptSettings(
        n_iter=int(b["n_iter"]),
        learning_rate=float(b["learning_rate"]),
        lr_final_frac=float(b["lr_final_frac"]),
        lr_constant_frac=float(b["lr_constant_frac"]),
        b1=float(b["b1"]),
        b2=float(b["b2"]),
        normalize=bool(b["normalize"]),
        sigma=float(b["sigma"]),
        n_directions=None if b["n_directions"] is None else int(b["n_directions"]),
        directions=str(b["directions"]),
        n_paths=n_train,
        seed=int(b["seed_train"]),
        rho=float(b["rho"]),
        active_margin=float(b["active_margin"]),
        lambda_max=float(b["lambda_max"]),
        tau_liq=float(b["tau_liq"]),
        tau_dd=float(b["tau_dd"]),
        surrogate_value=bool(b["surrogate_value"]),
        bound=str(b["bound"]),
        certify_power=float(b["certify_power"]),
        n_certify=n_val,
        target_fraction=float(b["target_fraction"]),
        select=str(b["select"]),
        select_tol=float(b["select_tol"]),
        patience=int(b["patience"]),
    )
    specs = param_specs(b["params"])
    start = str(b["start"])
    if start not in STARTS:
        raise ValueError(f"optimize.start = {start!r}: must be one of {STARTS}")
    fr = b["frontier"]
    fr_param = fr.get("param")
    fr_values = fr.get("values")
    if start == "frontier" and fr_param is None:
        raise ValueError("optimize.start = 'frontier' needs optimize.frontier.param (the grid it starts from)")
    if fr_param is not None and fr_values is None:
        spec = next((s for s in specs if s.name == fr_param), None)
        if spec is None:
            raise ValueError(f"optimize.frontier.param = {fr_param!r}: give values, or optimise that parameter")
        n_pts = int(fr.get("n_points", 13))
        fr_values = (
            np.geomspace(spec.lo, spec.hi, n_pts) if spec.transform == "log" else np.linspace(spec.lo, spec.hi, n_pts)
        ).tolist()
    return {
        "objective": objective,
        "constraints": constraints,
        "settings": settings,
        "specs": specs,
        "frontier": None if fr_param is None else {"param": str(fr_param), "values": [float(v) for v in fr_values]},
        "seed_validation": int(b["seed_validation"]),
        "n_paths_validation": n_val,
        "start": start,
    }


def run(evaluate: Evaluator, theta0: Mapping[str, float], opts: dict, *, log: Callable[[str], None] = print) -> dict:
    """Optimise, validate on fresh paths, evaluate the frontier grid on the same validation paths
    and choose what to report. ``opts`` is :func:`settings_from_config`'s dict (``start``
    "frontier": start from the best point of the frontier grid on the training paths). Returns
    ``{result, validation, frontier, selected, selected_validation, feasible, message, comparison,
    start, start_grid}`` (``start``: the optimiser's starting theta; ``start_grid``: the grid on the
    training paths it was chosen from, or None)."""
    st: OptSettings = opts["settings"]
    con: Constraints = opts["constraints"]
    obj: Objective = opts["objective"]
    specs = opts["specs"]
    fixed = {k: v for k, v in theta0.items() if k not in {s.name for s in specs}}

    def cb(rec: dict) -> None:
        if rec["iter"] % max(1, st.n_iter // 10) == 0 or rec["iter"] == st.n_iter:
            th = ", ".join(f"{k}={v:.4g}" for k, v in rec["theta"].items())
            cs = ", ".join(f"P({c})={rec[f'p_{c}']:.3g} c={rec[f'c_{c}']:+.2f}" for c in con.names)
            log(f"  iter {rec['iter']:3d}: {th}; {obj.label()}={rec['objective']:.4g}; {cs}")

    start, start_grid = dict(theta0), None
    if opts.get("start", "config") == "frontier":
        # A local optimiser on a flat, noisy objective stays near where it starts (E[PnL] of the
        # cascade-stress hour moves by less than its noise over a decade of gamma): start it from
        # the best point of the grid, evaluated on the training paths (the validation paths stay
        # fresh for the validation and the reported frontier).
        p, values = opts["frontier"]["param"], opts["frontier"]["values"]
        log(f"start: {len(values)} values of {p} on the training paths")
        start_grid = frontier(evaluate, {p: values}, con, seed=st.seed, n_paths=st.n_paths, objective=obj, base=theta0)
        i = start_grid.best_feasible if start_grid.best_feasible is not None else start_grid.safest
        start = {**theta0, **start_grid.points[i]["theta"]}
        log(
            f"  start at {start} ({'best feasible' if start_grid.best_feasible is not None else 'safest'} "
            f"on the training paths: {obj.label()}={start_grid.points[i]['objective']:.4g})"
        )
    log(f"optimising {[s.name for s in specs]} on {st.n_paths} training paths (seed {st.seed}), {st.n_iter} iterations")
    res = optimize(evaluate, start, specs, con, objective=obj, settings=st, fixed=fixed, callback=cb)
    for n in res.notes:
        log("  note: " + n)
    seed_v, n_v = opts["seed_validation"], opts["n_paths_validation"]
    log(f"validating {res.theta} on {n_v} fresh paths (seed {seed_v})")
    val = validate(
        evaluate, res.theta, con, seed=seed_v, n_paths=n_v, objective=obj, train_seed=st.seed, train_paths=st.n_paths
    )
    fr = None
    comparison: dict = {}
    if opts.get("frontier"):
        p = opts["frontier"]["param"]
        log(f"frontier: {len(opts['frontier']['values'])} values of {p} on the validation paths")
        fr = frontier(
            evaluate, {p: opts["frontier"]["values"]}, con, seed=seed_v, n_paths=n_v, objective=obj, base=res.theta
        )
        if fr.best_feasible is not None:
            best = fr.points[fr.best_feasible]["objective"]
            gap = (best - val["objective"]) / abs(best) if best != 0 else float("nan")
            comparison = {
                "best_feasible_grid_objective": best,
                "best_feasible_grid_theta": fr.points[fr.best_feasible]["theta"],
                "relative_gap": gap,
                "within_2pct": within_of_best(val["objective"], best, 0.02),
            }
        else:
            comparison = {"best_feasible_grid_objective": None, "relative_gap": None, "within_2pct": None}
    feasible = bool(val["feasible"])
    selected, sel_val = "optimum", val
    msg = certification_message(val, con)
    if not feasible:
        # Not certified: report the safest parameters evaluated on the validation paths (lowest
        # upper bounds, then the best objective among equally safe ones).
        cands = [val] + (fr.points if fr is not None else [])
        sel_val = min(cands, key=_safety_key)
        selected = "safest"
        feasible = bool(sel_val["feasible"])
        if sel_val is not val:
            msg = (
                f"the optimiser's parameters {val['theta']} are not certified ({msg}); the safest parameters "
                f"found are {sel_val['theta']}: "
                + certification_message(sel_val, con)
                + (" (chosen on the validation paths)" if feasible else "")
            )
        else:
            msg = "the optimiser's parameters are the safest found but not certified: " + msg
    log(msg)
    return {
        "result": res,
        "validation": val,
        "frontier": fr,
        "selected": selected,
        "selected_validation": sel_val,
        "feasible": feasible,
        "message": msg,
        "comparison": comparison,
        "start": start,
        "start_grid": start_grid,
    }


def _keep_optimum_for_the_estimator(r: dict, con: Constraints) -> None:
    """With a rare-event estimator the plain validation's liquidation bound does not decide: the
    optimiser's own parameters stay the reported ones (instead of the safest of the grid) unless
    the plain paths refute them (the Clopper-Pearson lower end above ``epsilon_liq``) or the
    drawdown constraint is not certified."""
    val = r["validation"]
    if r["selected"] == "optimum":
        return
    if val["feasible_drawdown"] and val["p_liquidation"]["ci_low"] <= con.epsilon_liq:
        r["selected"], r["selected_validation"] = "optimum", val
        r["message"] = "the optimiser's parameters, on the validation paths: " + certification_message(val, con)


def certify_rare(world, mp, ep, sim, rs, con: Constraints, sel: dict, *, seed: int, log=print) -> dict:
    """P(liquidation) of the reported parameters by the run's rare-event estimator (``rs``, its
    :class:`mmsim.config.RiskSettings`: ``splitting`` or ``is``), on the validation seed, and the
    feasibility it gives: the estimator's interval must certify ``epsilon_liq``
    (:func:`mmsim.sim.rare.certifies`), the drawdown constraint still by its Clopper-Pearson bound on
    the validation paths. The optimiser itself steers by the plain paths' smoothed estimate; this
    is what certifies its result below the plain bound's floor of about 3.7 / n. Returns
    ``{estimate, feasible, message}``."""
    from mmsim import tasks
    from mmsim.sim import rare as rare_mod

    log(f"certifying P(liquidation) of {sel['theta']} by {rs.estimator} (seed {seed})")
    est = tasks.rare_event(world, mp, ep, dataclasses.replace(sim, seed=int(seed), progress=False), rs)
    ok, why = rare_mod.certifies(est, con.epsilon_liq)
    est = {**est, "certified": ok, "why": why}
    ok_dd = sel["feasible_drawdown"]
    lo, hi = est.get("ci_low"), est.get("ci_high")
    span = f"{est['estimate']:.3g}" + ("" if hi is None else f", 95 % interval [{lo:.3g}, {hi:.3g}]")
    msg = (
        f"By {est['method']}, P(liquidation) = {span}: "
        + ("certified" if ok else "not certified")
        + f" below epsilon_liq = {con.epsilon_liq:g} ({why})"
        + ("" if ok_dd else "; the drawdown constraint is not certified")
        + "."
    )
    log(msg)
    return {"estimate": est, "feasible": bool(ok and ok_dd), "message": msg}


def run_from_config(
    cfg, out_dir: str | os.PathLike, *, evaluate: Evaluator | None = None, log: Callable[[str], None] = print
) -> dict:
    """The ``optimize`` task: build the world and engine from ``cfg`` (:func:`mmsim.config.build`),
    optimise the parameters of ``cfg.optimize.params``, validate, run the frontier, and write into
    ``out_dir``: ``best.yaml``, ``optimize.json``, ``optimize.md``, ``optimize_frontier.png``,
    ``optimize_trace.png``. ``evaluate`` replaces the simulator (tests). Returns a summary dict
    (the content of ``optimize.json`` without the trace)."""
    from omegaconf import OmegaConf

    from mmsim import config as mcfg

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    opts = settings_from_config(cfg)
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain["task"] = "risk"  # build() validates the world, engine and sim; the task is ours
    world, mp, ep, sim = mcfg.build(OmegaConf.create(plain))
    sim_stats: dict = {}
    if evaluate is None:
        import jax.numpy as jnp

        evaluate = simulator_evaluator(
            world,
            mp,
            ep,
            n_steps=sim.n_steps,
            dt=sim.dt,
            dtype=getattr(jnp, sim.dtype),
            chunk_size=sim.chunk_size,
            world_substeps=sim.world_substeps,
            progress=False,
            stats=sim_stats,
        )
    names = [s.name for s in opts["specs"]]
    for spec in opts["specs"]:
        if spec.name in ("leverage", "account.leverage"):
            mm = float(np.max(np.asarray(ep.account.maintenance_margin)))
            if spec.hi >= 1.0 / mm:
                raise ValueError(
                    f"optimize.params.{spec.name}.hi = {spec.hi:g}: the initial margin 1/leverage must "
                    f"stay above the maintenance margin {mm:g}, so hi < {1.0 / mm:g}"
                )
    theta0 = theta_from_engine(ep, names)
    t0 = time.perf_counter()
    r = run(evaluate, theta0, opts, log=log)
    wall = time.perf_counter() - t0
    res: OptResult = r["result"]
    con: Constraints = opts["constraints"]
    rs = mcfg.risk_settings(cfg)
    if rs.estimator != "plain":
        _keep_optimum_for_the_estimator(r, con)
    sel = r["selected_validation"]
    chosen = apply_theta(ep, sel["theta"])  # the engine the validation ran
    rare = None
    if rs.estimator != "plain":
        rare = certify_rare(world, mp, chosen, sim, rs, con, sel, seed=opts["seed_validation"], log=log)
    if rare is not None:
        r["feasible"] = rare["feasible"]
        r["message"] = r["message"].rstrip(".") + ". " + rare["message"]
    policy = policy_dict(chosen.policy)
    market = plain.get("market", {})
    validation = {
        **{k: sel[k] for k in ("seed", "n_paths", "p_liquidation", "objective")},
        **({"p_drawdown": sel["p_drawdown"]} if "p_drawdown" in sel else {}),
        "objective_se": sel["objective_se"],
        "objective_kind": opts["objective"].label(),
        "theta": sel["theta"],
        "selected": r["selected"],
        "message": r["message"],
        "certifiable": sel["certifiable"],
        "min_certifiable": sel["min_certifiable"],
        **({} if rare is None else {"rare_event": rare["estimate"]}),
    }
    acc = chosen.account
    account = {f.name: getattr(acc, f.name) for f in dataclasses.fields(acc)}
    best_path = write_best_yaml(out / "best.yaml", policy, market, con, validation, r["feasible"], account=account)
    figs = {}
    fr: FrontierResult | None = r["frontier"]
    if fr is not None:
        figs["frontier"] = str(
            plot_frontier(
                fr,
                opts["frontier"]["param"],
                con,
                out / "optimize_frontier.png",
                optimum=r["validation"],
                objective_label=opts["objective"].label(),
            )
        )
    figs["trace"] = str(plot_trace(res, out / "optimize_trace.png"))
    summary = {
        "world": world,
        "n_steps": sim.n_steps,
        "dt_s": sim.dt,
        "horizon_s": sim.horizon_s,
        "objective": opts["objective"].label(),
        "constraints": con.as_dict(),
        "settings": dataclasses.asdict(opts["settings"]),
        "theta0": r["start"],
        "theta_config": theta0,
        "start": opts["start"],
        "start_grid": None if r["start_grid"] is None else r["start_grid"].points,
        "optimum": {
            "theta": res.theta,
            "selected_iter": res.selected_iter,
            "feasible_in_training": res.feasible_in_training,
            "n_evals": res.n_evals,
            "wall_s": res.wall_s,
            "notes": res.notes,
        },
        "validation": r["validation"],
        "selected": r["selected"],
        "selected_validation": sel,
        "feasible": r["feasible"],
        "message": r["message"],
        "comparison": r["comparison"],
        "frontier": None
        if fr is None
        else {
            "param": opts["frontier"]["param"],
            "seed": fr.seed,
            "n_paths": fr.n_paths,
            "best_feasible": fr.best_feasible,
            "safest": fr.safest,
            "points": fr.points,
        },
        "rare_event": None if rare is None else rare["estimate"],
        "simulation": sim_stats,
        "wall_s": wall,
        "files": {"best": str(best_path), **figs},
        "pnl": {"mean": sel["pnl_mean"]},  # the reported parameters' validated E[PnL], quote currency
    }
    summary = _plain(summary)
    with open(out / "optimize.json", "w") as fh:
        # Strict JSON: a non-finite number is written as null (report.sanitize), never as NaN.
        json.dump(sanitize({**summary, "trace": res.trace}), fh, indent=1, allow_nan=False)
    (out / "optimize.md").write_text(_markdown(summary))
    log(f"wrote {best_path} and optimize.json, optimize.md, figures in {out}")
    return summary


def main(overrides: Sequence[str] | None = None) -> dict:
    """``mmsim optimize [out_dir=DIR] [hydra overrides ...]``: compose ``conf/config.yaml`` with
    ``experiment=optimize_gamma`` (unless another experiment is given) and the overrides, then
    :func:`run_from_config` into ``out_dir`` (default ``outputs/<name>/<timestamp>``)."""

    overrides = list(overrides or [])
    from mmsim import config as mcfg

    if any(a in ("-h", "--help") for a in overrides):
        from mmsim import helptext

        print(helptext.command_help("optimize", mcfg.conf_dir()))
        return {}
    out_dir = None
    rest = []
    for o in overrides:
        if o.startswith("out_dir=") or o.startswith("hydra.run.dir="):
            out_dir = o.split("=", 1)[1]
        else:
            rest.append(o)
    if not any(o.lstrip("+~").startswith("experiment=") for o in rest):
        rest = ["experiment=optimize_gamma"] + rest
    cfg = mcfg.compose(rest)
    if out_dir is None:
        out_dir = Path("outputs") / str(cfg.get("name", "optimize")) / time.strftime("%Y-%m-%d_%H-%M-%S")
    return run_from_config(cfg, out_dir)


if __name__ == "__main__":  # python -m mmsim.optimize [overrides]
    import sys

    main(sys.argv[1:])
