"""The optimiser: Adam (optax) on an augmented Lagrangian of Monte Carlo estimates, with the
multipliers of the active constraints from their gradients and the step size in the search space's
dimensionless coordinates. The method and its reasons are in ``docs/MODEL.md``, section 16."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import optax

from mmsim.optimize.gradient import smoothed_gradient
from mmsim.optimize.objective import MIN_TARGET_EVENTS, ConstraintMap, Constraints, Evaluator, Objective, batch_stats
from mmsim.optimize.space import ParamSpec, _theta, param_specs
from mmsim.sim.risk import min_certifiable, paths_to_certify


@dataclasses.dataclass(frozen=True)
class OptSettings:
    """Optimiser settings (z: the unconstrained coordinates of :class:`ParamSpec`).

    Attributes:
        n_iter: Adam iterations.
        learning_rate: initial Adam step size, z units (log units for gamma).
        lr_final_frac: the learning rate is constant for the first ``lr_constant_frac`` of the
            iterations, then decays along a cosine to ``learning_rate * lr_final_frac``.
        lr_constant_frac: see lr_final_frac.
        b1, b2: Adam's moment decay rates.
        normalize: feed Adam the unit vector of the Lagrangian's gradient. Its magnitude changes
            by orders of magnitude between the restoration of a violated constraint and the
            objective's pull near the optimum, and Adam's second moment would remember the large
            values for many iterations; normalised, every step is about the learning rate and the
            schedule alone sets the distance travelled and the final precision.
        sigma: smoothing scale, z units.
        n_directions: antithetic direction pairs per iteration (2 n_directions + 1 evaluations);
            None: one orthogonal block, as many as optimised parameters.
        directions: "sphere" (orthogonal blocks, uniform smoothing over a ball) or "gaussian".
        n_paths: paths per evaluation in training.
        seed: training seed, the same at every iteration (common random numbers).
        rho: augmented-Lagrangian penalty (on the dimensionless log constraints).
        active_margin: a constraint with c_j > -active_margin gets a multiplier estimate.
        lambda_max: cap of the multiplier estimates (dimensionless).
        tau_liq: temperature of the liquidation surrogate, in log margin-ratio units (0: indicator).
        tau_dd: temperature of the drawdown surrogate, in log(dd / x) units (0: indicator).
        surrogate_value: constrain the surrogate probability itself (conservative: it counts the
            near misses) instead of the indicator's; by default the surrogate only supplies the
            direction (grad log p_s) and the value is the indicator's, judged as the validation is.
        bound: how the training probability is constrained (:class:`ConstraintMap`): "certify"
            (the predictive probability that a validation of n_certify paths fails to certify
            epsilon is at most 1 - certify_power), "upper" (the Clopper-Pearson upper bound that
            validation would report at the training estimate is at most epsilon) or "estimate"
            (the surrogate probability itself is at most epsilon).
        certify_power: see bound.
        n_certify: paths of the validation the bound anticipates (default n_paths).
        target_fraction: constrain B(p) <= target_fraction * epsilon (a safety margin, <= 1).
        select: "best_feasible" (the training-feasible iterate with the best objective; among
            those within ``select_tol`` standard errors of it, the one furthest inside the
            constraints) or "last".
        select_tol: see select, in standard errors of the training objective.
        patience: stop once the iterate has not moved for this many consecutive iterations (an
            iterate pinned at a bound of the box by a gradient pointing out of it; with common
            random numbers it is evaluated on the same paths every time); 0: run all n_iter.
    """

    n_iter: int = 60
    learning_rate: float = 0.15
    lr_final_frac: float = 0.05
    lr_constant_frac: float = 0.5
    b1: float = 0.7
    b2: float = 0.9
    normalize: bool = True
    sigma: float = 0.1
    n_directions: int | None = None
    directions: str = "sphere"
    n_paths: int = 4096
    seed: int = 0
    rho: float = 2.0
    active_margin: float = 1.0
    lambda_max: float = 100.0
    tau_liq: float = 0.05
    tau_dd: float = 0.05
    surrogate_value: bool = False
    bound: str = "certify"
    certify_power: float = 0.8
    n_certify: int | None = None
    target_fraction: float = 1.0
    select: str = "best_feasible"
    select_tol: float = 0.5
    patience: int = 0

    def __post_init__(self) -> None:
        for f in ("n_iter", "n_directions", "n_paths"):
            if getattr(self, f) is not None and int(getattr(self, f)) < 1:
                raise ValueError(f"{f} = {getattr(self, f)}: must be a positive integer")
        for f in ("learning_rate", "sigma", "rho"):
            if not float(getattr(self, f)) > 0:
                raise ValueError(f"{f} = {getattr(self, f)}: must be positive")
        for f in ("tau_liq", "tau_dd"):
            if float(getattr(self, f)) < 0:
                raise ValueError(f"{f} = {getattr(self, f)}: must be >= 0")
        if not (0 <= self.b1 < 1 and 0 <= self.b2 < 1):
            raise ValueError(f"b1 = {self.b1}, b2 = {self.b2}: must lie in [0, 1)")
        if not self.lambda_max > 0:
            raise ValueError(f"lambda_max = {self.lambda_max}: must be positive")
        if not self.active_margin > 0:
            raise ValueError(f"active_margin = {self.active_margin}: must be positive")
        if not 0 <= self.lr_constant_frac <= 1:
            raise ValueError(f"lr_constant_frac = {self.lr_constant_frac}: must lie in [0, 1]")
        if not 0 < self.lr_final_frac <= 1:
            raise ValueError(f"lr_final_frac = {self.lr_final_frac}: must lie in (0, 1]")
        if self.directions not in ("sphere", "gaussian"):
            raise ValueError(f"directions = {self.directions!r}: must be 'sphere' or 'gaussian'")
        if self.bound not in ("certify", "upper", "estimate"):
            raise ValueError(f"bound = {self.bound!r}: must be 'certify', 'upper' or 'estimate'")
        if not 0 < self.certify_power < 1:
            raise ValueError(f"certify_power = {self.certify_power}: must lie in (0, 1)")
        if not 0 < self.target_fraction <= 1:
            raise ValueError(f"target_fraction = {self.target_fraction}: must lie in (0, 1]")
        if not self.select_tol >= 0:
            raise ValueError(f"select_tol = {self.select_tol}: must be >= 0")
        if self.select not in ("best_feasible", "last"):
            raise ValueError(f"select = {self.select!r}: must be 'best_feasible' or 'last'")
        if self.n_certify is not None and int(self.n_certify) < 1:
            raise ValueError(f"n_certify = {self.n_certify}: must be a positive integer")
        if int(self.patience) < 0:
            raise ValueError(f"patience = {self.patience}: must be >= 0 (0: never stop early)")


def lr_schedule(st: OptSettings) -> optax.Schedule:
    """Constant ``learning_rate`` for ``lr_constant_frac`` of the iterations, then a cosine decay
    to ``learning_rate * lr_final_frac`` at ``n_iter``."""
    n_const = int(round(st.lr_constant_frac * st.n_iter))
    n_decay = max(st.n_iter - n_const, 1)
    decay = optax.cosine_decay_schedule(st.learning_rate, n_decay, alpha=st.lr_final_frac)
    if n_const == 0:
        return decay
    return optax.join_schedules([optax.constant_schedule(st.learning_rate), decay], [n_const])


def _objective_scale(s0: dict) -> float:
    """s_F: the path standard deviation of the PnL at the start (objective_se * sqrt(n)), or |F|,
    so that the objective term of the Lagrangian is dimensionless."""
    sd = float(s0["objective_se"]) * math.sqrt(max(int(s0["n"]), 1))
    f = abs(float(s0["objective"])) if math.isfinite(float(s0["objective"])) else 0.0
    out = max(sd, f)
    return out if math.isfinite(out) and out > 0 else 1.0


def _multipliers(g_f: np.ndarray, g_c: np.ndarray, se_c: np.ndarray, active: np.ndarray) -> np.ndarray:
    """First-order multiplier estimates: ``lambda >= 0`` minimising
    ``|sum_j lambda_j grad c_j - grad F / s_F|^2 + sum_j |se(grad c_j)|^2 lambda_j^2`` over the
    active constraints (the KKT stationarity residual, with a ridge equal to the noise variance of
    each constraint gradient, so that a constraint whose gradient is lost in its noise, or below
    the resolution of the path count, gets no weight)."""
    from scipy.optimize import nnls

    lam = np.zeros(g_c.shape[0])
    idx = np.flatnonzero(active)
    if idx.size == 0:
        return lam
    a = g_c[idx].T  # (d, k)
    ridge = np.sqrt(np.sum(se_c[idx] ** 2, axis=1))  # (k,)
    a_aug = np.vstack([a, np.diag(ridge)])
    b_aug = np.concatenate([g_f, np.zeros(idx.size)])
    if not (np.all(np.isfinite(a_aug)) and np.all(np.isfinite(b_aug))):
        return lam
    lam[idx] = nnls(a_aug, b_aug)[0]
    return lam


@dataclasses.dataclass
class OptResult:
    """Result of :func:`optimize`.

    Attributes:
        theta: the selected parameters, natural units.
        z: the same in unconstrained coordinates.
        selected_iter: index of the selected iterate in ``trace``.
        feasible_in_training: whether the selected iterate satisfies the constraints on the
            training paths (surrogates, through the chosen bound).
        trace: one dict per iteration (theta, objective, probabilities, constraint values,
            multipliers, learning rate, gradient norm).
        lambdas: final multipliers, one per constraint.
        n_evals: evaluator calls.
        wall_s: seconds.
        notes: human-readable remarks (e.g. epsilon below what the path budget can certify).
        targets: per constraint, the training probability the constraint aims at (p_beta in
            "certify" mode, epsilon otherwise).
    """

    theta: dict
    z: np.ndarray
    selected_iter: int
    feasible_in_training: bool
    trace: list
    lambdas: dict
    n_evals: int
    wall_s: float
    specs: list
    settings: OptSettings
    constraints: Constraints
    objective: Objective
    notes: list = dataclasses.field(default_factory=list)
    targets: dict = dataclasses.field(default_factory=dict)

    def trace_arrays(self) -> dict:
        """The trace as arrays keyed by field (theta entries as ``theta.<name>``)."""
        out: dict = {}
        for rec in self.trace:
            for k, v in rec.items():
                if isinstance(v, dict):
                    for kk, vv in v.items():
                        out.setdefault(f"{k}.{kk}", []).append(vv)
                else:
                    out.setdefault(k, []).append(v)
        return {k: np.asarray(v) for k, v in out.items()}


def optimize(
    evaluate: Evaluator,
    theta0: Mapping[str, float],
    bounds: Mapping[str, Any] | Sequence[ParamSpec],
    constraints: Constraints = Constraints(),
    *,
    objective: Objective = Objective(),
    settings: OptSettings = OptSettings(),
    fixed: Mapping[str, float] | None = None,
    callback: Callable[[dict], None] | None = None,
) -> OptResult:
    """Maximise ``objective`` over the parameters in ``bounds`` subject to ``constraints``.

    Args:
        evaluate: ``evaluate(theta, seed, n_paths) -> PathOutcomes`` (theta in natural units).
        theta0: starting values (natural units) of the optimised parameters; values outside the
            box are projected onto it.
        bounds: the optimised parameters (see :func:`param_specs`).
        constraints: epsilon_liq, and the drawdown threshold and epsilon_dd.
        objective: E[PnL] or E[PnL] - lambda CVaR.
        settings: :class:`OptSettings`.
        fixed: further entries passed unchanged in every theta.
        callback: called with each iteration's trace record.

    Returns an :class:`OptResult`; the training objective and probabilities in its trace are on
    the training paths (``settings.seed``, ``settings.n_paths``).
    """
    specs = param_specs(bounds)
    missing = [s.name for s in specs if s.name not in theta0]
    if missing:
        raise ValueError(f"theta0 lacks a starting value for {missing}")
    fixed = dict(fixed or {})
    st = settings
    t_start = time.perf_counter()
    n_cert = int(st.n_certify or st.n_paths)
    alpha = constraints.alpha
    notes: list[str] = []
    targets = [st.target_fraction * e for e in constraints.epsilons]
    bound_mode = st.bound
    if bound_mode != "estimate":
        floor = min_certifiable(n_cert, alpha)
        if any(t < floor for t in targets):
            notes.append(
                f"epsilon below the smallest bound {n_cert} paths can certify ({floor:.3g}, with 0 events; "
                f"certifying epsilon_liq = {constraints.epsilon_liq:g} needs "
                f"{paths_to_certify(constraints.epsilon_liq, alpha)} paths): training constrains the "
                "surrogate probability itself instead"
            )
            bound_mode = "estimate"
    maps = [ConstraintMap(bound_mode, t, int(st.n_paths), n_cert, alpha, st.certify_power) for t in targets]
    for m, cname in zip(maps, constraints.names):
        if m.mode == "certify" and m.target <= 0:
            notes.append(
                f"P({cname}): even 0 training events do not predict certification with probability "
                f"{st.certify_power:g} at {n_cert} validation paths; more paths are needed"
            )
        elif m.mode != "upper" and m.target * st.n_paths < MIN_TARGET_EVENTS:
            notes.append(
                f"P({cname}): the training target {m.target:.3g} is {m.target * st.n_paths:.2g} events on "
                f"{st.n_paths} training paths, too few to resolve the constraint (the training count is "
                f"mostly luck and validation may fail); use at least "
                f"{int(math.ceil(MIN_TARGET_EVENTS / max(m.target, 1e-300)))} training paths"
            )

    z_lo = np.array([s.z_bounds[0] for s in specs])
    z_hi = np.array([s.z_bounds[1] for s in specs])
    z = np.clip(np.array([s.to_z(theta0[s.name]) for s in specs], float), z_lo, z_hi)
    d = z.size
    names = constraints.names
    n_con = len(names)
    # Quantities: the objective, then per constraint the indicator and the surrogate probability.
    keys = ["objective"] + [k for c in names for k in (f"p_{c}", f"p_{c}_s")]
    i_ind = np.array([1 + 2 * j for j in range(n_con)])
    i_sur = i_ind + 1
    delta = 0.01 / st.n_paths
    n_evals = 0

    def quantities(zz: np.ndarray, full: bool = False):
        nonlocal n_evals
        n_evals += 1
        out = evaluate(_theta(specs, zz, fixed), int(st.seed), int(st.n_paths))
        s = batch_stats(out, objective, constraints, tau_liq=st.tau_liq, tau_dd=st.tau_dd)
        v = np.array([s[k] for k in keys], float)
        return (v, s) if full else v

    i_val = i_sur if st.surrogate_value else i_ind

    def con_values(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """c_j (<= 0 when satisfied) and dc_j/dp_j at the training probabilities."""
        cd = np.array([maps[j](float(v[i_val[j]])) for j in range(n_con)], float).reshape(n_con, 2)
        return cd[:, 0], cd[:, 1]

    schedule = lr_schedule(st)
    opt = optax.adam(schedule, b1=st.b1, b2=st.b2)
    opt_state = opt.init(np.zeros(d))
    lam = np.zeros(n_con)
    dir_rng = np.random.default_rng([int(st.seed) & 0xFFFFFFFF, 0x6F7074])
    s_f = None
    trace: list[dict] = []
    still = 0  # consecutive iterations without a move

    for it in range(st.n_iter + 1):
        v0, s0 = quantities(z, full=True)
        if s_f is None:
            s_f = _objective_scale(s0)
        c, dc = con_values(v0)
        rec = {
            "iter": it,
            "theta": {s.name: s.from_z(float(zi)) for s, zi in zip(specs, z)},
            "z": [float(x) for x in z],
            "objective": float(s0["objective"]),
            "objective_se": float(s0["objective_se"]),
            "lr": float(schedule(min(it, st.n_iter))),
        }
        for j, cname in enumerate(names):
            rec[f"p_{cname}"] = float(s0[f"p_{cname}"])
            rec[f"p_{cname}_s"] = float(s0[f"p_{cname}_s"])
            rec[f"c_{cname}"] = float(c[j])
        rec["feasible"] = bool(np.all(c <= 0))
        if it == st.n_iter:  # the last record only evaluates the final iterate
            for j, cname in enumerate(names):
                rec[f"lambda_{cname}"] = float(lam[j])
            trace.append(rec)
            if callback:
                callback(rec)
            break
        ge = smoothed_gradient(
            quantities,
            z,
            sigma=st.sigma,
            n_directions=int(st.n_directions or d),
            rng=dir_rng,
            z_lo=z_lo,
            z_hi=z_hi,
            centre=v0,
            kind=st.directions,
        )
        g_f = ge.grad[0] / s_f
        # grad c_j = dc/dp grad p, with grad log p taken from the surrogate (grad log p_s): the
        # near misses carry the relative sensitivity of the rare events (equal to it when tau = 0).
        p_val, p_sur = v0[i_val], v0[i_sur]
        scale = dc * (p_val + delta) / (p_sur + delta)
        g_c = ge.grad[i_sur] * scale[:, None]  # (n_con, d): gradients of c_j
        # Noise of each constraint gradient: the spread over directions, and at least the
        # resolution of the estimate (one path's worth of probability across the window).
        se_c = np.sqrt((ge.se[i_sur] * scale[:, None]) ** 2 + (scale / (st.n_paths * 2.0 * st.sigma))[:, None] ** 2)
        active = c > -st.active_margin
        lam = np.minimum(_multipliers(g_f, g_c, se_c, active), st.lambda_max)
        # grad L = -grad F / s_F + sum_j max(0, lambda_j + rho c_j) grad c_j
        act = np.maximum(0.0, lam + st.rho * c)
        grad = -g_f + act @ g_c
        lval = -float(v0[0]) / s_f + float(np.sum(act**2 - lam**2) / (2.0 * st.rho))
        for j, cname in enumerate(names):
            rec[f"lambda_{cname}"] = float(lam[j])
        rec.update(
            {
                "L": lval,
                "grad_norm": float(np.linalg.norm(grad)),
                "grad_objective": [float(x) for x in ge.grad[0]],
                "grad_objective_se": [float(x) for x in ge.se[0]],
            }
        )
        trace.append(rec)
        if callback:
            callback(rec)
        if not np.all(np.isfinite(grad)):
            notes.append(f"iteration {it}: non-finite gradient; stopped")
            break
        gnorm = float(np.linalg.norm(grad))
        step_in = grad / gnorm if (st.normalize and gnorm > 0) else grad
        updates, opt_state = opt.update(step_in, opt_state, z)
        z_new = np.clip(z + np.asarray(updates, float), z_lo, z_hi)
        still = still + 1 if np.array_equal(z_new, z) else 0
        z = z_new
        if st.patience and still >= st.patience:
            notes.append(
                f"stopped after iteration {it}: the iterate has not moved for {still} iterations "
                f"({', '.join(f'{sp.name}={sp.from_z(float(zi)):.4g}' for sp, zi in zip(specs, z))})"
            )
            break

    # Selection among the evaluated iterates (all on the same training paths).
    feas = [i for i, r in enumerate(trace) if r["feasible"]]
    if st.select == "last":
        sel = len(trace) - 1
    elif feas:
        # Among the training-feasible iterates whose objective is within select_tol standard
        # errors of the best (differences the paths cannot resolve), the safest.
        best = max(feas, key=lambda i: (trace[i]["objective"], i))
        floor = trace[best]["objective"] - st.select_tol * trace[best]["objective_se"]
        near = [i for i in feas if trace[i]["objective"] >= floor]
        sel = min(near, key=lambda i: (max(trace[i][f"c_{c}"] for c in names), -trace[i]["objective"], -i))
    else:
        sel = min(range(len(trace)), key=lambda i: max(trace[i][f"c_{c}"] for c in names))
        notes.append("no iterate satisfied the constraints on the training paths: returning the least infeasible")
    z_sel = np.array(trace[sel]["z"], float)
    return OptResult(
        theta=_theta(specs, z_sel, fixed),
        z=z_sel,
        selected_iter=sel,
        feasible_in_training=bool(trace[sel]["feasible"]),
        trace=trace,
        lambdas={c: float(lam[j]) for j, c in enumerate(names)},
        n_evals=n_evals,
        wall_s=time.perf_counter() - t_start,
        specs=specs,
        settings=st,
        constraints=constraints,
        objective=objective,
        notes=notes,
        targets={c: float(m.target if m.mode != "upper" else m.epsilon) for c, m in zip(names, maps)},
    )
