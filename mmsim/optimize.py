"""Optimise the quoting policy under P(liquidation) ~ 0: optax on an augmented Lagrangian of
Monte Carlo estimates, validated on fresh paths with exact intervals.

**Problem.** Maximise an objective of the path PnL over policy parameters theta (by default the
risk aversion gamma; also the base size fraction, the inventory normalisation and the exchange
leverage when asked) subject to

* P(liquidation) <= epsilon_liq (default 1e-3), and
* P(max drawdown > x) <= epsilon_dd (drawdown as a fraction of the initial equity, as in the risk report),

where the objective is E[PnL] (quote currency) or E[PnL] - lambda * CVaR_99(PnL) (CVaR as a
positive loss, quote currency). Everything is written against one pure callable,
``evaluate(theta, seed, n_paths) -> PathOutcomes`` (per-path PnL, liquidation flag, maximum
drawdown fraction, minimum margin ratio), so it runs on toy problems with known answers as well as
on the simulator (:func:`simulator_evaluator`).

**Search space.** Each parameter lives in unconstrained coordinates ``z`` (``log`` for positive
scales such as gamma, leverage or the inventory normalisation, ``logit`` for fractions, or
``linear``: the position in the box, ``(x - lo) / (hi - lo)``) and is projected onto its box
``[lo, hi]`` (natural units) after every step. Smoothing and learning rates are therefore
dimensionless: sigma = 0.1 on log gamma perturbs gamma by about 10 %, on a linear parameter by a
tenth of its box.

**Gradient estimator: smoothing with antithetic pairs and common random numbers.** Fills,
liquidations and drawdown breaches are discrete events: on a fixed set of paths the Monte Carlo
estimate F(z) is piecewise constant in the parameters (a fill happens or it does not), so its
pathwise (autodiff) derivative is zero almost everywhere and misses the jumps, which carry the
whole effect; differentiating through the simulator is therefore biased, and a relaxed simulator
would no longer be the engine that quotes live. The score-function (likelihood-ratio) estimator
needs the density of the path with respect to the policy parameters, which the engine does not
expose (the policy acts through the queue, the fills and the account, not through a tractable
density), and its variance grows with the horizon. The estimator used here needs only forward
simulations: for M directions u_m with ``E[u u^T] = I``,

    g_hat = 1/M sum_m [F(z + sigma u_m) - F(z - sigma u_m)] / (2 sigma) u_m,

an unbiased estimate of the gradient of the smoothed objective ``F_sigma(z) = E F(z + sigma w)``
(Nesterov & Spokoiny 2017; Flaxman et al. 2005 for the ball), which is differentiable even though
F jumps: with Gaussian directions w ~ N(0, I); with the default "sphere" directions (blocks of d
orthonormal directions of length sqrt(d), a random rotation) w is uniform on the ball of radius
sigma sqrt(d), and in one dimension the estimator is the central difference over
``[z - sigma, z + sigma]``. A full orthogonal block measures a linear function exactly, so the
direction noise comes only from curvature (Choromanski et al. 2018). Smoothing changes F by
O(sigma^2) (a quadratic only by a constant), so sigma trades bias for variance. Two devices keep
the variance low: the antithetic pair removes the even part of F around z, and **common random
numbers** make F(z + sigma u) and F(z - sigma u) use the same paths (same seed), so the path noise
cancels in the difference. The training seed is the same at every iteration (same seed -> same
paths): the optimiser works on one deterministic sample-average problem and compares successive
iterates on the same paths; overfitting to those paths is what the validation on fresh paths
checks. The estimator's standard error is reported from the spread of the per-direction terms; the
test suite compares the estimator with central finite differences of the Monte Carlo objective
within their joint standard errors.

**Constraints: indicators on the scale of the certificate, steered by smooth surrogates.** A
constraint's value is the training proportion of paths with the event (liquidated; maximum
drawdown above x), the same indicator the validation counts. Its gradient needs more than the few
events a rare constraint has on the training paths, so each indicator also has a smooth surrogate:
``max(1{liquidated}, s(-log m / tau))`` with m the path's minimum margin ratio (equity /
maintenance margin; liquidation at m <= 1) and s the logistic function, and
``max(1{dd > x}, s(log(dd / x) / tau))``. Both bound their indicators from above and add the near
misses, paths that came within a factor ~exp(tau) of the threshold, which move continuously with
the parameters; the smoothed gradient of the log of the surrogate probability stands in for that
of the indicator's (the near misses and the events are assumed to respond alike, in relative
terms, to the parameters; tau = 0 gives the indicator's own smoothed gradient). Using the surrogate
as the value too (``surrogate_value``) is conservative, and much too conservative for a policy
that sizes its quotes by the available margin, whose margin ratio sits near 1 on every path.
The training probability p is constrained on the scale on which feasibility is finally judged
(:class:`ConstraintMap`): by default (``bound = "certify"``) p must stay below the target p_beta
at which a validation run of ``n_certify`` paths is predicted to certify epsilon with probability
``certify_power`` (negative binomial predictive of the validation count given the training count),
so the Poisson noise of both runs is budgeted for; ``bound = "upper"`` constrains the
Clopper-Pearson bound that validation would report at the training estimate, and
``bound = "estimate"`` p itself. The constraint enters as ``c = log(p / target) <= 0``: logarithms
keep tail probabilities that span orders of magnitude on one scale and never saturate.

**Optimiser: augmented Lagrangian + Adam.** The Powell-Hestenes-Rockafellar augmented Lagrangian
``L = -F / s_F + sum_j [max(0, lambda_j + rho c_j)^2 - lambda_j^2] / (2 rho)`` (s_F: the path
standard deviation of the PnL at the start, so L is dimensionless) is minimised by ``optax.adam``
(constant learning rate, then a cosine decay); its gradient combines the smoothed gradients of F
and of each surrogate probability by the chain rule at the centre point. The multipliers are the
first-order (least-squares) estimates of the KKT stationarity condition, ``lambda >= 0``
minimising ``|sum_j lambda_j grad c_j - grad F / s_F|^2`` (with a ridge equal to the noise variance
of each constraint gradient), recomputed at every iteration for the constraints near their bound
and capped: then ``grad L`` is the part of the objective's gradient tangent to the active
constraints plus ``rho c grad c``, which pulls c to 0 from either side, so the iterate settles on
the boundary instead of overshooting it as accumulated dual-ascent multipliers do. Adam is fed the
unit vector of ``grad L`` (see :class:`OptSettings`). The returned parameters are the
training-feasible iterate with the highest training objective, or, among those within half a
standard error of it, the one furthest inside the constraints (the least infeasible iterate when
none is feasible).

**Validation.** The chosen parameters are re-run on fresh paths (another seed, at least as many
paths as in training) and P(liquidation), P(drawdown > x) are reported with exact two-sided
Clopper-Pearson intervals (:func:`mmsim.risk.proportion`). "Feasible" is declared only when every
upper bound is at most its epsilon (:func:`mmsim.risk.certify_below`); otherwise the safest
parameters evaluated (lowest upper bounds) are reported instead, and when epsilon is below the
smallest bound n paths can certify (``1 - (alpha/2)^(1/n)``, about 3.7 / n at alpha = 0.05, reached
with 0 events) the result says so and how many paths would be needed. A grid over gamma on the
validation paths (common random numbers across the grid) gives the reference feasible frontier.

Outputs (:func:`run_from_config`): ``best.yaml`` (the policy and the account in the schemas of
the ``policy`` and ``account`` config groups, the market it was optimised for, the constraints,
the validation and ``feasible``; ``+params=best.yaml`` applies its policy and account),
``optimize.json`` (trace, frontier, validation), ``optimize_frontier.png`` and
``optimize_trace.png``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np
import optax
from scipy import special, stats

from mmsim import risk

# ------------------------------------------------------------------------------------------------
# Types


class PathOutcomes(NamedTuple):
    """What the optimiser needs from a batch of paths (numpy, one entry per path).

    Attributes:
        pnl: (n,) final equity minus initial equity, quote currency.
        liquidated: (n,) bool, the account was liquidated.
        max_dd_frac: (n,) maximum drawdown as a fraction of the initial equity.
        min_margin_ratio: (n,) minimum of equity / maintenance margin (liquidation at <= 1).
    """

    pnl: np.ndarray
    liquidated: np.ndarray
    max_dd_frac: np.ndarray
    min_margin_ratio: np.ndarray


#: ``evaluate(theta, seed, n_paths)``: parameters in natural units -> per-path outcomes. Must be
#: deterministic in (theta, seed, n_paths): the same seed gives the same paths.
Evaluator = Callable[[Mapping[str, float], int, int], PathOutcomes]

TRANSFORMS = ("log", "logit", "linear")
#: Fewer expected events than this at the training target on the training paths draw a warning.
MIN_TARGET_EVENTS = 3.0


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """One optimised parameter: its box in natural units and the map to unconstrained coordinates.

    Attributes:
        name: parameter name (``gamma``, ``size_fraction``, ``max_inventory``, ``leverage`` or any
            name the evaluator understands).
        lo, hi: bounds in natural units (gamma in 1 / quote currency, leverage dimensionless, ...).
        transform: "log" (positive scales), "logit" (fractions in (0, 1)) or "linear" (z is the
            position in the box, ``(x - lo) / (hi - lo)``, so that smoothing and learning rates
            are fractions of the box whatever the parameter's units, e.g. seconds).
    """

    name: str
    lo: float
    hi: float
    transform: str = "log"

    def __post_init__(self) -> None:
        if self.transform not in TRANSFORMS:
            raise ValueError(f"{self.name}: transform = {self.transform!r}: must be one of {TRANSFORMS}")
        lo, hi = float(self.lo), float(self.hi)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"{self.name}: bounds [{lo}, {hi}] must be finite with lo < hi")
        if self.transform == "log" and lo <= 0:
            raise ValueError(f"{self.name}: lo = {lo}: a log-transformed parameter needs lo > 0")
        if self.transform == "logit" and not (0.0 < lo and hi < 1.0):
            raise ValueError(f"{self.name}: bounds [{lo}, {hi}]: a logit-transformed parameter needs 0 < lo < hi < 1")

    def to_z(self, x: float) -> float:
        x = min(max(float(x), self.lo), self.hi)
        if self.transform == "log":
            return math.log(x)
        if self.transform == "logit":
            return float(special.logit(x))
        return (x - float(self.lo)) / (float(self.hi) - float(self.lo))   # linear: the fraction of the box

    def from_z(self, z: float) -> float:
        if self.transform == "log":
            x = math.exp(z)
        elif self.transform == "logit":
            x = float(special.expit(z))
        else:
            x = float(self.lo) + float(z) * (float(self.hi) - float(self.lo))
        return min(max(x, self.lo), self.hi)

    @property
    def z_bounds(self) -> tuple[float, float]:
        return self.to_z(self.lo), self.to_z(self.hi)


def param_specs(bounds: Mapping[str, Any] | Sequence[ParamSpec]) -> list[ParamSpec]:
    """Normalise ``{name: (lo, hi)}``, ``{name: (lo, hi, transform)}``, ``{name: {lo, hi,
    transform}}`` or a list of :class:`ParamSpec` into a list of specs (transform "log" unless
    given)."""
    if isinstance(bounds, Mapping):
        out = []
        for name, b in bounds.items():
            if isinstance(b, ParamSpec):
                out.append(b)
            elif isinstance(b, Mapping):
                out.append(ParamSpec(str(name), float(b["lo"]), float(b["hi"]), str(b.get("transform", "log"))))
            else:
                b = tuple(b)
                out.append(ParamSpec(str(name), float(b[0]), float(b[1]), str(b[2]) if len(b) > 2 else "log"))
    else:
        out = list(bounds)
    if not out:
        raise ValueError("no parameters to optimise: bounds is empty")
    names = [p.name for p in out]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate parameter names in {names}")
    return out


@dataclasses.dataclass(frozen=True)
class Constraints:
    """Risk constraints.

    Attributes:
        epsilon_liq: bound on P(liquidation over the horizon).
        drawdown_threshold: x, maximum drawdown as a fraction of the initial equity; None
            (or epsilon_dd None) disables the drawdown constraint.
        epsilon_dd: bound on P(max drawdown > x).
        alpha: the Clopper-Pearson intervals are two-sided at level 1 - alpha.
    """

    epsilon_liq: float = 1e-3
    drawdown_threshold: float | None = None
    epsilon_dd: float | None = None
    alpha: float = 0.05

    def __post_init__(self) -> None:
        if not 0.0 < self.epsilon_liq < 1.0:
            raise ValueError(f"epsilon_liq = {self.epsilon_liq}: must lie in (0, 1)")
        if self.has_dd:
            if not 0.0 < float(self.epsilon_dd) < 1.0:
                raise ValueError(f"epsilon_dd = {self.epsilon_dd}: must lie in (0, 1)")
            if not float(self.drawdown_threshold) > 0.0:
                raise ValueError(f"drawdown_threshold = {self.drawdown_threshold}: must be a positive fraction")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha = {self.alpha}: must lie in (0, 1)")

    @property
    def has_dd(self) -> bool:
        return self.drawdown_threshold is not None and self.epsilon_dd is not None

    @property
    def names(self) -> tuple[str, ...]:
        return ("liq", "dd") if self.has_dd else ("liq",)

    @property
    def epsilons(self) -> tuple[float, ...]:
        return (float(self.epsilon_liq), float(self.epsilon_dd)) if self.has_dd else (float(self.epsilon_liq),)

    def as_dict(self) -> dict:
        return {"epsilon_liq": float(self.epsilon_liq),
                "drawdown_threshold": None if self.drawdown_threshold is None else float(self.drawdown_threshold),
                "epsilon_dd": None if self.epsilon_dd is None else float(self.epsilon_dd),
                "alpha": float(self.alpha)}


@dataclasses.dataclass(frozen=True)
class Objective:
    """What is maximised, in quote currency.

    Attributes:
        kind: "mean" (E[PnL]) or "mean_cvar" (E[PnL] - cvar_weight * CVaR_level(PnL)).
        cvar_weight: lambda >= 0 (dimensionless).
        cvar_level: CVaR level, e.g. 0.99 (the mean loss of the worst 1 % of paths).
    """

    kind: str = "mean"
    cvar_weight: float = 0.0
    cvar_level: float = 0.99

    def __post_init__(self) -> None:
        if self.kind not in ("mean", "mean_cvar"):
            raise ValueError(f"objective kind = {self.kind!r}: must be 'mean' or 'mean_cvar'")
        if self.cvar_weight < 0:
            raise ValueError(f"cvar_weight = {self.cvar_weight}: must be >= 0")
        if not 0.5 <= self.cvar_level < 1.0:
            raise ValueError(f"cvar_level = {self.cvar_level}: must lie in [0.5, 1)")

    def __call__(self, pnl: np.ndarray) -> float:
        pnl = np.asarray(pnl, float)
        m = float(pnl.mean())
        if self.kind == "mean" or self.cvar_weight == 0.0:
            return m
        return m - self.cvar_weight * risk.var_cvar(pnl, self.cvar_level)[1]

    def se(self, pnl: np.ndarray) -> float:
        """Standard error of the objective (of the mean; the CVaR term is not included)."""
        pnl = np.asarray(pnl, float)
        return float(pnl.std(ddof=1) / math.sqrt(pnl.size)) if pnl.size > 1 else 0.0

    def label(self) -> str:
        if self.kind == "mean" or self.cvar_weight == 0.0:
            return "E[PnL]"
        return f"E[PnL] - {self.cvar_weight:g} CVaR{int(round(self.cvar_level * 100))}"


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


# ------------------------------------------------------------------------------------------------
# Per-batch statistics


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return special.expit(x)


def liquidation_surrogate(out: PathOutcomes, tau: float) -> np.ndarray:
    """Per path ``max(1{liquidated}, sigmoid(-log(min margin ratio) / tau))`` in [0, 1]: an upper
    bound of the liquidation indicator that also counts near misses (tau = 0: the indicator)."""
    liq = np.asarray(out.liquidated, bool)
    if tau <= 0:
        return liq.astype(float)
    m = np.asarray(out.min_margin_ratio, float)
    m = np.where(np.isnan(m), np.inf, m)
    with np.errstate(divide="ignore"):
        logm = np.log(np.maximum(m, 1e-300))
    s = _sigmoid(-logm / tau)
    return np.where(liq | (m <= 1.0), 1.0, s)


def drawdown_surrogate(out: PathOutcomes, threshold: float, tau: float) -> np.ndarray:
    """Per path ``max(1{dd > x}, sigmoid(log(dd / x) / tau))``: an upper bound of the drawdown
    indicator with near misses (tau = 0: the indicator); dd and x are fractions of the peak."""
    dd = np.asarray(out.max_dd_frac, float)
    dd = np.where(np.isnan(dd), np.inf, dd)
    ind = dd > threshold
    if tau <= 0:
        return ind.astype(float)
    with np.errstate(divide="ignore"):
        r = np.log(np.maximum(dd, 1e-300) / threshold)
    return np.where(ind, 1.0, _sigmoid(r / tau))


def cp_upper(p: float, n: int, alpha: float = 0.05) -> float:
    """Clopper-Pearson upper bound ``Beta^-1(1 - alpha/2; k + 1, n - k)`` at a real count
    ``k = n p`` (smooth and increasing in p; at k = 0 it is ``1 - (alpha/2)^(1/n)``)."""
    k = min(max(float(p) * n, 0.0), n - 1e-9)
    return float(stats.beta.ppf(1.0 - alpha / 2.0, k + 1.0, n - k))


def min_certifiable(n: int, alpha: float = 0.05) -> float:
    """The smallest epsilon n paths can certify: the upper bound with 0 events, 1 - (alpha/2)^(1/n)."""
    return 1.0 - (alpha / 2.0) ** (1.0 / n)


def paths_to_certify(epsilon: float, alpha: float = 0.05) -> int:
    """Paths needed so that 0 events give an upper bound <= epsilon: ln(alpha/2) / ln(1 - epsilon)."""
    return int(math.ceil(math.log(alpha / 2.0) / math.log1p(-epsilon)))


def certifiable_count(epsilon: float, n: int, alpha: float = 0.05) -> int:
    """The largest event count k whose Clopper-Pearson upper bound at n paths is <= epsilon
    (-1 when even 0 events cannot certify epsilon)."""
    if cp_upper(0.0, n, alpha) > epsilon:
        return -1
    lo, hi = 0, max(1, int(epsilon * n))          # the bound exceeds k / n, so k* < epsilon n
    while lo < hi:                                 # largest k with bound <= epsilon
        mid = (lo + hi + 1) // 2
        if cp_upper(mid / n, n, alpha) <= epsilon:
            lo = mid
        else:
            hi = mid - 1
    return lo


def certify_target(epsilon: float, n_train: int, n_certify: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The training probability p_beta at which a validation of ``n_certify`` paths certifies
    ``epsilon`` (count <= :func:`certifiable_count`) with predictive probability ``power``.

    The training count n_train p gives the event rate a Gamma(n_train p + 1/2, n_train)
    distribution (Jeffreys prior), so the validation count is negative binomial with
    r = n_train p + 1/2 and success probability n_train / (n_train + n_certify); its probability
    of exceeding k* increases with p, and p_beta is where it equals 1 - power. This keeps a margin
    for the Poisson noise of the training and of the validation counts. Returns 0 when even p = 0
    does not reach ``power`` (or when epsilon cannot be certified at all)."""
    from scipy.optimize import brentq

    k = certifiable_count(epsilon, n_certify, alpha)
    if k < 0:
        return 0.0
    q = n_train / (n_train + n_certify)
    fail = lambda p: float(stats.nbinom.sf(k, n_train * p + 0.5, q)) - (1.0 - power)  # noqa: E731
    if fail(0.0) >= 0:
        return 0.0
    return float(brentq(fail, 0.0, epsilon, xtol=1e-12 * max(epsilon, 1e-300), rtol=1e-10))


@dataclasses.dataclass(frozen=True)
class ConstraintMap:
    """The map from a training (surrogate) probability p to the constraint value c <= 0.

    Modes (``n_t`` training paths, ``n_v`` validation paths):

    * "estimate": ``c = log((p + delta) / epsilon)`` (delta = 0.01 / n_t keeps the log finite);
    * "upper": ``c = log(U(p) / epsilon)``, U the Clopper-Pearson upper bound a validation of n_v
      paths would report if its count were n_v p (:func:`cp_upper`);
    * "certify": ``c = log((p + delta) / p_beta)`` with p_beta from :func:`certify_target`: the
      validation is predicted to certify epsilon with probability ``power``.

    The logarithm keeps probabilities spanning orders of magnitude on one scale and never
    saturates, so an infeasible start is pulled back however far it is. ``epsilon`` here already
    includes the target fraction.
    """

    mode: str
    epsilon: float
    n_train: int
    n_certify: int
    alpha: float = 0.05
    power: float = 0.8

    def __post_init__(self) -> None:
        if self.mode not in ("estimate", "upper", "certify"):
            raise ValueError(f"bound = {self.mode!r}: must be 'estimate', 'upper' or 'certify'")
        tgt = self.epsilon
        if self.mode == "certify":
            tgt = certify_target(self.epsilon, self.n_train, self.n_certify, self.alpha, self.power)
        object.__setattr__(self, "target", tgt)

    def value(self, p: float) -> float:
        p = max(float(p), 0.0)
        if self.mode == "upper":
            return math.log(cp_upper(p, self.n_certify, self.alpha) / self.epsilon)
        delta = 0.01 / self.n_train
        return math.log((p + delta) / max(self.target, delta))

    def __call__(self, p: float) -> tuple[float, float]:
        """(c, dc/dp) at p (the derivative by a central difference of 1e-3 paths' worth)."""
        h = 1e-3 / self.n_train
        lo, hi = max(p - h, 0.0), p + h
        return self.value(p), (self.value(hi) - self.value(lo)) / (hi - lo)


def batch_stats(out: PathOutcomes, objective: Objective, constraints: Constraints, *, tau_liq: float = 0.0,
                tau_dd: float = 0.0) -> dict:
    """Objective and (surrogate) probabilities of one batch of paths."""
    pnl = np.asarray(out.pnl, float)
    ok = np.isfinite(pnl)
    d = {"objective": objective(pnl[ok]) if ok.any() else -np.inf, "objective_se": objective.se(pnl[ok]),
         "n": int(pnl.size), "n_nonfinite": int((~ok).sum()),
         "p_liq": float(np.mean(out.liquidated)), "p_liq_s": float(np.mean(liquidation_surrogate(out, tau_liq)))}
    if constraints.has_dd:
        x = float(constraints.drawdown_threshold)
        d["p_dd"] = float(np.mean(np.asarray(out.max_dd_frac, float) > x))
        d["p_dd_s"] = float(np.mean(drawdown_surrogate(out, x, tau_dd)))
    return d


# ------------------------------------------------------------------------------------------------
# Gradient estimator


class GradientEstimate(NamedTuple):
    value: np.ndarray    # (Q,) the quantities at the centre z
    grad: np.ndarray     # (Q, d) gradient of the Gaussian-smoothed quantities with respect to z
    se: np.ndarray       # (Q, d) standard error over the M directions (0 when M = 1)
    samples: np.ndarray  # (M, Q, d) per-direction terms [F(z+su) - F(z-su)] / (2s) u
    n_evals: int


def directions(rng: np.random.Generator, n: int, d: int, kind: str = "sphere") -> np.ndarray:
    """``n`` smoothing directions in R^d, shape (n, d), with ``E[v v^T] = I``.

    "gaussian": i.i.d. N(0, I). "sphere": blocks of d orthonormal directions (a random rotation,
    QR of a Gaussian matrix) scaled by sqrt(d): each is uniform on the sphere of radius sqrt(d),
    and a full block measures every direction of a linear function exactly (orthogonal sampling,
    Choromanski et al. 2018), so the estimator's variance comes only from curvature and jumps."""
    if kind == "gaussian":
        return rng.standard_normal((n, d))
    if kind != "sphere":
        raise ValueError(f"directions = {kind!r}: must be 'sphere' or 'gaussian'")
    out = []
    while len(out) < n:
        q, r = np.linalg.qr(rng.standard_normal((d, d)))
        q = q * np.sign(np.diag(r))[None, :]          # Haar-distributed rotation
        out.extend(list(q.T * math.sqrt(d)))
    return np.asarray(out[:n])


def smoothed_gradient(fn: Callable[[np.ndarray], np.ndarray], z: np.ndarray, *, sigma: float, n_directions: int,
                      rng: np.random.Generator, z_lo: np.ndarray | None = None, z_hi: np.ndarray | None = None,
                      antithetic: bool = True, centre: np.ndarray | None = None,
                      kind: str = "sphere") -> GradientEstimate:
    """Smoothing gradient of a vector of Monte Carlo quantities ``fn(z) -> (Q,)``.

    ``g = 1/M sum_m [fn(z + sigma u_m) - fn(z - sigma u_m)] / (2 sigma) u_m`` (antithetic) or
    ``[fn(z + sigma u_m) - fn(z)] / sigma u_m`` (one-sided), with the directions of
    :func:`directions`. With ``kind = "gaussian"`` it is unbiased for the gradient of the Gaussian
    smoothing ``E fn(z + sigma N(0, I))``; with ``kind = "sphere"`` (``|u| = sqrt(d)``) for the
    gradient of the uniform smoothing over the ball of radius ``sigma sqrt(d)`` (in one dimension:
    the central difference over ``[z - sigma, z + sigma]``). Both smoothings are differentiable
    even where ``fn`` jumps, and change a quadratic only by a constant. ``fn`` must be
    deterministic (common random numbers: the same paths at every z). Perturbed points are clipped
    into ``[z_lo, z_hi]``. ``sigma`` is in z units; ``centre`` may pass an already computed ``fn(z)``.
    """
    z = np.asarray(z, float)
    d = z.size
    lo = np.full(d, -np.inf) if z_lo is None else np.asarray(z_lo, float)
    hi = np.full(d, np.inf) if z_hi is None else np.asarray(z_hi, float)
    n_evals = 0
    if centre is None:
        centre = np.asarray(fn(z), float)
        n_evals += 1
    f0 = np.asarray(centre, float)
    u = directions(rng, n_directions, d, kind)
    samples = np.empty((n_directions, f0.size, d))
    for m in range(n_directions):
        fp = np.asarray(fn(np.clip(z + sigma * u[m], lo, hi)), float)
        if antithetic:
            fm = np.asarray(fn(np.clip(z - sigma * u[m], lo, hi)), float)
            diff = (fp - fm) / (2.0 * sigma)
            n_evals += 2
        else:
            diff = (fp - f0) / sigma
            n_evals += 1
        samples[m] = diff[:, None] * u[m][None, :]
    grad = samples.mean(axis=0)
    se = samples.std(axis=0, ddof=1) / math.sqrt(n_directions) if n_directions > 1 else np.zeros_like(grad)
    return GradientEstimate(f0, grad, se, samples, n_evals)


# ------------------------------------------------------------------------------------------------
# The optimiser


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
    a = g_c[idx].T                                           # (d, k)
    ridge = np.sqrt(np.sum(se_c[idx] ** 2, axis=1))          # (k,)
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


def _theta(specs: Sequence[ParamSpec], z: np.ndarray, fixed: Mapping[str, float]) -> dict:
    th = {k: float(v) for k, v in fixed.items()}
    for s, zi in zip(specs, z):
        th[s.name] = s.from_z(float(zi))
    return th


def optimize(evaluate: Evaluator, theta0: Mapping[str, float], bounds: Mapping[str, Any] | Sequence[ParamSpec],
             constraints: Constraints = Constraints(), *, objective: Objective = Objective(),
             settings: OptSettings = OptSettings(), fixed: Mapping[str, float] | None = None,
             callback: Callable[[dict], None] | None = None) -> OptResult:
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
            notes.append(f"epsilon below the smallest bound {n_cert} paths can certify ({floor:.3g}, with 0 events; "
                         f"certifying epsilon_liq = {constraints.epsilon_liq:g} needs "
                         f"{paths_to_certify(constraints.epsilon_liq, alpha)} paths): training constrains the "
                         "surrogate probability itself instead")
            bound_mode = "estimate"
    maps = [ConstraintMap(bound_mode, t, int(st.n_paths), n_cert, alpha, st.certify_power) for t in targets]
    for m, cname in zip(maps, constraints.names):
        if m.mode == "certify" and m.target <= 0:
            notes.append(f"P({cname}): even 0 training events do not predict certification with probability "
                         f"{st.certify_power:g} at {n_cert} validation paths; more paths are needed")
        elif m.mode != "upper" and m.target * st.n_paths < MIN_TARGET_EVENTS:
            notes.append(f"P({cname}): the training target {m.target:.3g} is {m.target * st.n_paths:.2g} events on "
                         f"{st.n_paths} training paths, too few to resolve the constraint (the training count is "
                         f"mostly luck and validation may fail); use at least "
                         f"{int(math.ceil(MIN_TARGET_EVENTS / max(m.target, 1e-300)))} training paths")

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
    still = 0                    # consecutive iterations without a move

    for it in range(st.n_iter + 1):
        v0, s0 = quantities(z, full=True)
        if s_f is None:
            s_f = _objective_scale(s0)
        c, dc = con_values(v0)
        rec = {"iter": it, "theta": {s.name: s.from_z(float(zi)) for s, zi in zip(specs, z)},
               "z": [float(x) for x in z], "objective": float(s0["objective"]),
               "objective_se": float(s0["objective_se"]), "lr": float(schedule(min(it, st.n_iter)))}
        for j, cname in enumerate(names):
            rec[f"p_{cname}"] = float(s0[f"p_{cname}"])
            rec[f"p_{cname}_s"] = float(s0[f"p_{cname}_s"])
            rec[f"c_{cname}"] = float(c[j])
        rec["feasible"] = bool(np.all(c <= 0))
        if it == st.n_iter:       # the last record only evaluates the final iterate
            for j, cname in enumerate(names):
                rec[f"lambda_{cname}"] = float(lam[j])
            trace.append(rec)
            if callback:
                callback(rec)
            break
        ge = smoothed_gradient(quantities, z, sigma=st.sigma, n_directions=int(st.n_directions or d), rng=dir_rng,
                               z_lo=z_lo, z_hi=z_hi, centre=v0, kind=st.directions)
        g_f = ge.grad[0] / s_f
        # grad c_j = dc/dp grad p, with grad log p taken from the surrogate (grad log p_s): the
        # near misses carry the relative sensitivity of the rare events (equal to it when tau = 0).
        p_val, p_sur = v0[i_val], v0[i_sur]
        scale = dc * (p_val + delta) / (p_sur + delta)
        g_c = ge.grad[i_sur] * scale[:, None]              # (n_con, d): gradients of c_j
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
        rec.update({"L": lval, "grad_norm": float(np.linalg.norm(grad)),
                    "grad_objective": [float(x) for x in ge.grad[0]],
                    "grad_objective_se": [float(x) for x in ge.se[0]]})
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
            notes.append(f"stopped after iteration {it}: the iterate has not moved for {still} iterations "
                         f"({', '.join(f'{sp.name}={sp.from_z(float(zi)):.4g}' for sp, zi in zip(specs, z))})")
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
    return OptResult(theta=_theta(specs, z_sel, fixed), z=z_sel, selected_iter=sel,
                     feasible_in_training=bool(trace[sel]["feasible"]), trace=trace,
                     lambdas={c: float(lam[j]) for j, c in enumerate(names)}, n_evals=n_evals,
                     wall_s=time.perf_counter() - t_start, specs=specs, settings=st, constraints=constraints,
                     objective=objective, notes=notes,
                     targets={c: float(m.target if m.mode != "upper" else m.epsilon) for c, m in zip(names, maps)})


# ------------------------------------------------------------------------------------------------
# Validation and the frontier


def _prop(flags: np.ndarray, alpha: float) -> dict:
    p = risk.proportion(np.asarray(flags, bool), alpha)
    return {"count": int(p["count"]), "estimate": float(p["estimate"]), "ci_low": float(p["ci_low"]),
            "ci_high": float(p["ci_high"])}


def assess(out: PathOutcomes, constraints: Constraints, objective: Objective = Objective(), *,
           seed: int | None = None) -> dict:
    """P(liquidation), P(drawdown > x) with Clopper-Pearson intervals, the objective and
    feasibility (every upper bound <= its epsilon) of one batch of paths."""
    n = int(np.asarray(out.pnl).size)
    alpha = constraints.alpha
    pnl = np.asarray(out.pnl, float)
    ok = np.isfinite(pnl)
    v = {"seed": None if seed is None else int(seed), "n_paths": n,
         "objective": float(objective(pnl[ok])) if ok.any() else float("-inf"),
         "objective_se": float(objective.se(pnl[ok])), "pnl_mean": float(pnl[ok].mean()) if ok.any() else float("nan"),
         "n_nonfinite": int((~ok).sum())}
    v["p_liquidation"] = _prop(out.liquidated, alpha)
    ok_liq = risk.certify_below(v["p_liquidation"], constraints.epsilon_liq)
    ok_dd = True
    if constraints.has_dd:
        v["p_drawdown"] = _prop(np.asarray(out.max_dd_frac, float) > float(constraints.drawdown_threshold), alpha)
        ok_dd = risk.certify_below(v["p_drawdown"], float(constraints.epsilon_dd))
    v["feasible"] = bool(ok_liq and ok_dd)
    floor = min_certifiable(n, alpha)
    v["min_certifiable"] = floor
    v["certifiable"] = bool(all(e >= floor for e in constraints.epsilons))
    return v


def validate(evaluate: Evaluator, theta: Mapping[str, float], constraints: Constraints, *, seed: int, n_paths: int,
             objective: Objective = Objective(), train_seed: int | None = None, train_paths: int | None = None) -> dict:
    """Re-run ``theta`` on fresh paths (``seed``, ``n_paths``) and :func:`assess` them.

    Raises ValueError when the validation would reuse the training seed or use fewer paths."""
    if train_seed is not None and int(seed) == int(train_seed):
        raise ValueError(f"validation seed = {seed} equals the training seed: validation needs fresh paths")
    if train_paths is not None and int(n_paths) < int(train_paths):
        raise ValueError(f"validation n_paths = {n_paths} < training n_paths = {train_paths}: "
                         "validate on at least as many paths as in training")
    out = evaluate(dict(theta), int(seed), int(n_paths))
    v = assess(out, constraints, objective, seed=seed)
    v["theta"] = {k: float(x) for k, x in theta.items()}
    return v


def certification_message(v: dict, constraints: Constraints) -> str:
    """One sentence on the validation: feasible, infeasible, or uncertifiable at this path budget."""
    n = v["n_paths"]
    parts = []
    pl = v["p_liquidation"]
    parts.append(f"P(liquidation) = {pl['estimate']:.3g} ({pl['count']}/{n}), 95 % CP upper bound "
                 f"{pl['ci_high']:.3g} vs epsilon_liq = {constraints.epsilon_liq:g}")
    if constraints.has_dd:
        pd = v["p_drawdown"]
        parts.append(f"P(max drawdown > {constraints.drawdown_threshold:g}) = {pd['estimate']:.3g} "
                     f"({pd['count']}/{n}), upper bound {pd['ci_high']:.3g} vs epsilon_dd = {constraints.epsilon_dd:g}")
    s = "; ".join(parts)
    if v["feasible"]:
        return "feasible: " + s
    if not v["certifiable"]:
        need = max(paths_to_certify(e, constraints.alpha) for e in constraints.epsilons)
        return (f"not certifiable: epsilon is below the smallest upper bound {n} paths can give "
                f"({v['min_certifiable']:.3g}, with 0 events); at least {need} paths are needed. " + s)
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


def frontier(evaluate: Evaluator, grid: Sequence[Mapping[str, float]] | Mapping[str, Sequence[float]],
             constraints: Constraints, *, seed: int, n_paths: int, objective: Objective = Objective(),
             base: Mapping[str, float] | None = None, progress: Callable[[int, dict], None] | None = None) \
        -> FrontierResult:
    """Evaluate a grid on the same paths (``seed``, ``n_paths``: common random numbers) and mark
    the best feasible point (feasible: every Clopper-Pearson upper bound <= its epsilon).

    ``grid`` is a list of theta dicts, or ``{name: values}`` for a one-parameter grid; ``base``
    supplies the other entries of theta.
    """
    if isinstance(grid, Mapping):
        if len(grid) != 1:
            raise ValueError(f"a mapping grid must name exactly one parameter, got {list(grid)}")
        (name, values), = grid.items()
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


# ------------------------------------------------------------------------------------------------
# best.yaml


def _plain(x: Any) -> Any:
    """numpy / jax scalars and arrays, tuples and mappings as plain YAML-able Python."""
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x)
    if isinstance(x, str) or x is None:
        return x
    a = np.asarray(x)
    if a.dtype == bool:
        return a.tolist() if a.ndim else bool(a)
    if np.issubdtype(a.dtype, np.integer):
        return a.tolist() if a.ndim else int(a)
    if np.issubdtype(a.dtype, np.floating):
        return a.astype(float).tolist() if a.ndim else float(a)
    return str(x)


def policy_dict(policy_params: Any, theta: Mapping[str, float] | None = None) -> dict:
    """A :class:`mmsim.policy.PolicyParams` (or a mapping of its fields) as a plain dict in the
    schema of the ``policy`` config group (every field, ``kind`` included), with the policy entries
    of ``theta`` substituted."""
    if dataclasses.is_dataclass(policy_params):
        d = {f.name: getattr(policy_params, f.name) for f in dataclasses.fields(policy_params)}
    else:
        d = dict(policy_params)
    for k, v in (theta or {}).items():
        name = k.split(".", 1)[1] if k.startswith("policy.") else k
        if name in d and name != "kind":
            d[name] = float(v)
    return _plain(d)


def best_document(policy: Mapping[str, Any], market: Mapping[str, Any], constraints: Constraints, validation: dict,
                  feasible: bool, *, account: Mapping[str, Any] | None = None, **extra: Any) -> dict:
    """The ``best.yaml`` document: policy, account (when given: the account the validation ran
    with, which ``+params`` then applies, so that a policy is never run at another leverage by
    accident), market, constraints, validation, feasible (+ extra keys)."""
    val = {"seed": validation.get("seed"), "n_paths": int(validation["n_paths"]),
           "p_liquidation": dict(validation["p_liquidation"])}
    if "p_drawdown" in validation:
        val["p_drawdown"] = dict(validation["p_drawdown"])
    val["objective"] = float(validation["objective"])
    doc = {"policy": _plain(dict(policy))}
    if account is not None:
        doc["account"] = _plain(dict(account))
    doc.update({"market": _plain(dict(market)),
                "constraints": {"epsilon_liq": float(constraints.epsilon_liq),
                                "drawdown_threshold": None if constraints.drawdown_threshold is None
                                else float(constraints.drawdown_threshold),
                                "epsilon_dd": None if constraints.epsilon_dd is None
                                else float(constraints.epsilon_dd)},
                "validation": _plain(val), "feasible": bool(feasible)})
    doc.update(_plain(extra))
    return doc


def write_best_yaml(path: str | os.PathLike, policy: Mapping[str, Any], market: Mapping[str, Any],
                    constraints: Constraints, validation: dict, feasible: bool, *,
                    account: Mapping[str, Any] | None = None, **extra: Any) -> Path:
    """Write ``best.yaml`` (see :func:`best_document`); returns the path."""
    import yaml

    doc = best_document(policy, market, constraints, validation, feasible, account=account, **extra)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "w") as fh:
        yaml.safe_dump(doc, fh, sort_keys=False, default_flow_style=False)
    return p


def load_best_yaml(path: str | os.PathLike) -> dict:
    import yaml

    with open(path) as fh:
        return yaml.safe_load(fh)


# ------------------------------------------------------------------------------------------------
# Figures


def plot_frontier(fr: FrontierResult, param: str, constraints: Constraints, path: str | os.PathLike, *,
                  optimum: dict | None = None, objective_label: str = "E[PnL]") -> Path:
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
        ax.errorbar([optimum["theta"][param]], [optimum["objective"]], yerr=[2 * optimum.get("objective_se", 0.0)],
                    fmt="*", color="C3", ms=12, label="optimiser (validation)")
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
            ax.errorbar([optimum["theta"][param]], [max(o["estimate"], floor)],
                        yerr=[[max(o["estimate"], floor) - max(o["ci_low"], floor * 0.5)],
                              [o["ci_high"] - max(o["estimate"], floor)]], fmt="*", color="C3", ms=12,
                        label="optimiser (validation)")
        ax.set_yscale("log")
        ax.set_ylabel(f"{label}\n(0 drawn at {floor:.2g})")
        ax.legend(fontsize=7)

    prob_panel(axes[1], "p_liquidation", constraints.epsilon_liq, "P(liquidation)")
    if constraints.has_dd:
        prob_panel(axes[2], "p_drawdown", float(constraints.epsilon_dd),
                   f"P(max dd > {constraints.drawdown_threshold:g})")
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
    ax.fill_between(it, tr["objective"] - 2 * tr["objective_se"], tr["objective"] + 2 * tr["objective_se"],
                    color="C0", alpha=0.2)
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


# ------------------------------------------------------------------------------------------------
# The simulator as an evaluator

#: theta names that live in the account rather than the policy.
ACCOUNT_NAMES = ("leverage",)


def apply_theta(engine_params: Any, theta: Mapping[str, float]) -> Any:
    """``engine_params`` with ``theta`` substituted: ``leverage`` and ``account.<field>`` go to the
    account, ``policy.<field>`` and bare policy field names (gamma, size_fraction, max_inventory,
    ...) to the policy."""
    pol_kw: dict = {}
    acc_kw: dict = {}
    pol_fields = {f.name for f in dataclasses.fields(engine_params.policy)}
    acc_fields = {f.name for f in dataclasses.fields(engine_params.account)}
    for k, v in theta.items():
        if k.startswith("account."):
            name, dst, fields = k.split(".", 1)[1], acc_kw, acc_fields
        elif k.startswith("policy."):
            name, dst, fields = k.split(".", 1)[1], pol_kw, pol_fields
        elif k in ACCOUNT_NAMES:
            name, dst, fields = k, acc_kw, acc_fields
        else:
            name, dst, fields = k, pol_kw, pol_fields
        if name not in fields or name == "kind":
            raise ValueError(f"theta entry {k!r}: not a tunable policy or account field")
        dst[name] = float(v)
    ep = engine_params
    if pol_kw:
        ep = dataclasses.replace(ep, policy=dataclasses.replace(ep.policy, **pol_kw))
    if acc_kw:
        ep = dataclasses.replace(ep, account=dataclasses.replace(ep.account, **acc_kw))
    return ep


def outcomes_from_summary(summary: Any, initial_equity: float) -> PathOutcomes:
    """:class:`PathOutcomes` (float64) from a :class:`mmsim.simulate.PathSummary`; the drawdown is
    taken as a fraction of ``initial_equity`` (quote currency), as in :func:`mmsim.risk.summarize`."""
    return PathOutcomes(pnl=np.asarray(summary.pnl, float), liquidated=np.asarray(summary.liquidated, bool),
                        max_dd_frac=np.asarray(summary.max_dd, float) / float(initial_equity),
                        min_margin_ratio=np.asarray(summary.min_margin_ratio, float))


def simulator_evaluator(world: str, market_params: Any, engine_params: Any, *, n_steps: int, dt: float,
                        dtype: Any = None, chunk_size: int | None = None, progress: bool = False,
                        stats: dict | None = None) -> Evaluator:
    """The Monte Carlo simulator as an :data:`Evaluator`: ``theta`` (natural units) is substituted
    into ``engine_params`` (:func:`apply_theta`) and ``n_paths`` paths of ``n_steps`` steps of
    ``dt`` seconds are simulated with ``seed``. The compiled simulation is reused across theta (only
    leaf values change). ``stats``, if given, accumulates calls, simulated seconds and compile
    seconds."""
    import jax.numpy as jnp

    from mmsim import simulate as sim

    dtype = jnp.float32 if dtype is None else dtype

    def evaluate(theta: Mapping[str, float], seed: int, n_paths: int) -> PathOutcomes:
        ep = apply_theta(engine_params, theta)
        r = sim.simulate(world, market_params, ep, n_paths=int(n_paths), n_steps=int(n_steps), dt=float(dt),
                         seed=int(seed), chunk_size=chunk_size, dtype=dtype, progress=progress)
        if stats is not None:
            stats["calls"] = stats.get("calls", 0) + 1
            stats["run_s"] = stats.get("run_s", 0.0) + float(r.run_s)
            stats["compile_s"] = stats.get("compile_s", 0.0) + float(r.compile_s)
            stats["path_steps"] = stats.get("path_steps", 0) + int(n_paths) * int(n_steps)
        return outcomes_from_summary(r.summary, r.initial_equity)

    return evaluate


# ------------------------------------------------------------------------------------------------
# From a Hydra config: `experiment=optimize_gamma`, `mmsim optimize ...`

#: Defaults of the ``optimize`` config block (conf/experiment/optimize_gamma.yaml documents them).
CONFIG_DEFAULTS: dict = {
    "objective": "mean", "cvar_weight": 0.0, "cvar_level": 0.99,
    "epsilon_liq": None, "drawdown_threshold": None, "epsilon_dd": None,
    "params": {"gamma": {"lo": 1e-4, "hi": 1.0, "transform": "log"}},
    "n_iter": 60, "learning_rate": 0.15, "lr_final_frac": 0.05, "lr_constant_frac": 0.5, "b1": 0.7, "b2": 0.9,
    "normalize": True,
    "sigma": 0.1, "n_directions": None, "directions": "sphere", "rho": 2.0, "active_margin": 1.0,
    "lambda_max": 100.0, "tau_liq": 0.05, "tau_dd": 0.05, "surrogate_value": False, "bound": "certify",
    "certify_power": 0.8, "target_fraction": 1.0,
    "select": "best_feasible", "select_tol": 0.5,
    "n_paths_train": 16384, "n_paths_validation": 16384, "seed_train": 1, "seed_validation": 2,
    "frontier": {"param": "gamma", "values": None, "n_points": 13},
    "start": "config", "patience": 5,
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
    constraints = Constraints(epsilon_liq=float(eps), drawdown_threshold=None if dd_x is None else float(dd_x),
                              epsilon_dd=None if dd_eps is None else float(dd_eps), alpha=alpha)
    objective = Objective(kind=str(b["objective"]), cvar_weight=float(b["cvar_weight"]),
                          cvar_level=float(b["cvar_level"]))
    n_train, n_val = int(b["n_paths_train"]), int(b["n_paths_validation"])
    if n_val < n_train:
        raise ValueError(f"optimize.n_paths_validation = {n_val} < n_paths_train = {n_train}: validation needs at "
                         "least as many paths as training")
    if int(b["seed_validation"]) == int(b["seed_train"]):
        raise ValueError(f"optimize.seed_validation = {b['seed_validation']} equals seed_train: validation needs "
                         "fresh paths")
    settings = OptSettings(
        n_iter=int(b["n_iter"]), learning_rate=float(b["learning_rate"]), lr_final_frac=float(b["lr_final_frac"]),
        lr_constant_frac=float(b["lr_constant_frac"]), b1=float(b["b1"]), b2=float(b["b2"]),
        normalize=bool(b["normalize"]), sigma=float(b["sigma"]),
        n_directions=None if b["n_directions"] is None else int(b["n_directions"]), directions=str(b["directions"]),
        n_paths=n_train, seed=int(b["seed_train"]), rho=float(b["rho"]), active_margin=float(b["active_margin"]),
        lambda_max=float(b["lambda_max"]), tau_liq=float(b["tau_liq"]), tau_dd=float(b["tau_dd"]),
        surrogate_value=bool(b["surrogate_value"]), bound=str(b["bound"]), certify_power=float(b["certify_power"]),
        n_certify=n_val, target_fraction=float(b["target_fraction"]), select=str(b["select"]),
        select_tol=float(b["select_tol"]), patience=int(b["patience"]))
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
        fr_values = (np.geomspace(spec.lo, spec.hi, n_pts) if spec.transform == "log"
                     else np.linspace(spec.lo, spec.hi, n_pts)).tolist()
    return {"objective": objective, "constraints": constraints, "settings": settings, "specs": specs,
            "frontier": None if fr_param is None else {"param": str(fr_param), "values": [float(v) for v in fr_values]},
            "seed_validation": int(b["seed_validation"]), "n_paths_validation": n_val, "start": start}


def theta_from_engine(engine_params: Any, names: Sequence[str]) -> dict:
    """Current values (natural units) of the named parameters in ``engine_params`` (see
    :func:`apply_theta` for the names)."""
    out = {}
    for k in names:
        if k.startswith("account.") or k in ACCOUNT_NAMES:
            obj, name = engine_params.account, k.split(".", 1)[-1]
        else:
            obj, name = engine_params.policy, k.split(".", 1)[-1]
        out[k] = float(np.asarray(getattr(obj, name)).reshape(-1)[0])
    return out


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
        start_grid = frontier(evaluate, {p: values}, con, seed=st.seed, n_paths=st.n_paths, objective=obj,
                              base=theta0)
        i = start_grid.best_feasible if start_grid.best_feasible is not None else start_grid.safest
        start = {**theta0, **start_grid.points[i]["theta"]}
        log(f"  start at {start} ({'best feasible' if start_grid.best_feasible is not None else 'safest'} "
            f"on the training paths: {obj.label()}={start_grid.points[i]['objective']:.4g})")
    log(f"optimising {[s.name for s in specs]} on {st.n_paths} training paths (seed {st.seed}), {st.n_iter} iterations")
    res = optimize(evaluate, start, specs, con, objective=obj, settings=st, fixed=fixed, callback=cb)
    for n in res.notes:
        log("  note: " + n)
    seed_v, n_v = opts["seed_validation"], opts["n_paths_validation"]
    log(f"validating {res.theta} on {n_v} fresh paths (seed {seed_v})")
    val = validate(evaluate, res.theta, con, seed=seed_v, n_paths=n_v, objective=obj, train_seed=st.seed,
                   train_paths=st.n_paths)
    fr = None
    comparison: dict = {}
    if opts.get("frontier"):
        p = opts["frontier"]["param"]
        log(f"frontier: {len(opts['frontier']['values'])} values of {p} on the validation paths")
        fr = frontier(evaluate, {p: opts["frontier"]["values"]}, con, seed=seed_v, n_paths=n_v, objective=obj,
                      base=res.theta)
        if fr.best_feasible is not None:
            best = fr.points[fr.best_feasible]["objective"]
            gap = (best - val["objective"]) / abs(best) if best != 0 else float("nan")
            comparison = {"best_feasible_grid_objective": best,
                          "best_feasible_grid_theta": fr.points[fr.best_feasible]["theta"],
                          "relative_gap": gap, "within_2pct": within_of_best(val["objective"], best, 0.02)}
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
            msg = (f"the optimiser's parameters {val['theta']} are not certified ({msg}); the safest parameters "
                   f"found are {sel_val['theta']}: " + certification_message(sel_val, con)
                   + (" (chosen on the validation paths)" if feasible else ""))
        else:
            msg = "the optimiser's parameters are the safest found but not certified: " + msg
    log(msg)
    return {"result": res, "validation": val, "frontier": fr, "selected": selected, "selected_validation": sel_val,
            "feasible": feasible, "message": msg, "comparison": comparison, "start": start, "start_grid": start_grid}


def _json_default(x: Any) -> Any:
    return _plain(x)


def run_from_config(cfg, out_dir: str | os.PathLike, *, evaluate: Evaluator | None = None,
                    log: Callable[[str], None] = print) -> dict:
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
    plain["task"] = "risk"          # build() validates the world, engine and sim; the task is ours
    world, mp, ep, sim = mcfg.build(OmegaConf.create(plain))
    sim_stats: dict = {}
    if evaluate is None:
        import jax.numpy as jnp

        evaluate = simulator_evaluator(world, mp, ep, n_steps=sim.n_steps, dt=sim.dt, dtype=getattr(jnp, sim.dtype),
                                       chunk_size=sim.chunk_size, progress=False, stats=sim_stats)
    names = [s.name for s in opts["specs"]]
    for spec in opts["specs"]:
        if spec.name in ("leverage", "account.leverage"):
            mm = float(np.max(np.asarray(ep.account.maintenance_margin)))
            if spec.hi >= 1.0 / mm:
                raise ValueError(f"optimize.params.{spec.name}.hi = {spec.hi:g}: the initial margin 1/leverage must "
                                 f"stay above the maintenance margin {mm:g}, so hi < {1.0 / mm:g}")
    theta0 = theta_from_engine(ep, names)
    t0 = time.perf_counter()
    r = run(evaluate, theta0, opts, log=log)
    wall = time.perf_counter() - t0
    res: OptResult = r["result"]
    sel = r["selected_validation"]
    con: Constraints = opts["constraints"]
    chosen = apply_theta(ep, sel["theta"])          # the engine the validation ran
    policy = policy_dict(chosen.policy)
    market = plain.get("market", {})
    validation = {**{k: sel[k] for k in ("seed", "n_paths", "p_liquidation", "objective")},
                  **({"p_drawdown": sel["p_drawdown"]} if "p_drawdown" in sel else {}),
                  "objective_se": sel["objective_se"], "objective_kind": opts["objective"].label(),
                  "theta": sel["theta"], "selected": r["selected"], "message": r["message"],
                  "certifiable": sel["certifiable"], "min_certifiable": sel["min_certifiable"]}
    acc = chosen.account
    account = {f.name: getattr(acc, f.name) for f in dataclasses.fields(acc)}
    best_path = write_best_yaml(out / "best.yaml", policy, market, con, validation, r["feasible"], account=account)
    figs = {}
    fr: FrontierResult | None = r["frontier"]
    if fr is not None:
        figs["frontier"] = str(plot_frontier(fr, opts["frontier"]["param"], con, out / "optimize_frontier.png",
                                             optimum=r["validation"], objective_label=opts["objective"].label()))
    figs["trace"] = str(plot_trace(res, out / "optimize_trace.png"))
    summary = {
        "world": world, "n_steps": sim.n_steps, "dt_s": sim.dt, "horizon_s": sim.horizon_s,
        "objective": opts["objective"].label(), "constraints": con.as_dict(),
        "settings": dataclasses.asdict(opts["settings"]), "theta0": r["start"], "theta_config": theta0,
        "start": opts["start"],
        "start_grid": None if r["start_grid"] is None else r["start_grid"].points,
        "optimum": {"theta": res.theta, "selected_iter": res.selected_iter,
                    "feasible_in_training": res.feasible_in_training, "n_evals": res.n_evals,
                    "wall_s": res.wall_s, "notes": res.notes},
        "validation": r["validation"], "selected": r["selected"], "selected_validation": sel,
        "feasible": r["feasible"], "message": r["message"], "comparison": r["comparison"],
        "frontier": None if fr is None else {"param": opts["frontier"]["param"], "seed": fr.seed,
                                             "n_paths": fr.n_paths, "best_feasible": fr.best_feasible,
                                             "safest": fr.safest, "points": fr.points},
        "simulation": sim_stats, "wall_s": wall, "files": {"best": str(best_path), **figs},
        "pnl": {"mean": sel["pnl_mean"]},       # the reported parameters' validated E[PnL], quote currency
    }
    summary = _plain(summary)
    with open(out / "optimize.json", "w") as fh:
        json.dump({**summary, "trace": res.trace}, fh, indent=1, default=_json_default)
    (out / "optimize.md").write_text(_markdown(summary))
    log(f"wrote {best_path} and optimize.json, optimize.md, figures in {out}")
    return summary


def _markdown(s: dict) -> str:
    v = s["selected_validation"]
    lines = [f"# Policy optimisation ({s['world']} world, {s['horizon_s']:g} s horizon)", "",
             f"Maximise {s['objective']} subject to P(liquidation) <= {s['constraints']['epsilon_liq']:g}"
             + (f" and P(max drawdown > {s['constraints']['drawdown_threshold']:g}) <= "
                f"{s['constraints']['epsilon_dd']:g}" if s["constraints"]["epsilon_dd"] is not None else "") + ".", "",
             f"**{'Feasible' if s['feasible'] else 'Not feasible'}** — {s['message']}", "",
             "| | value |", "|---|---|",
             f"| start | {s['theta0']}" + (" (best of the frontier grid on the training paths)"
                                            if s.get("start") == "frontier" else "") + " |",
             f"| optimiser result | {s['optimum']['theta']} (iteration {s['optimum']['selected_iter']}, "
             f"{s['optimum']['n_evals']} evaluations, {s['optimum']['wall_s']:.1f} s) |",
             f"| reported ({s['selected']}) | {v['theta']} |",
             f"| validation | seed {v['seed']}, {v['n_paths']} paths |",
             f"| objective | {v['objective']:.6g} ± {v['objective_se']:.2g} |",
             f"| P(liquidation) | {v['p_liquidation']['count']}/{v['n_paths']}, 95 % CI "
             f"[{v['p_liquidation']['ci_low']:.3g}, {v['p_liquidation']['ci_high']:.3g}] |"]
    if "p_drawdown" in v:
        lines.append(f"| P(drawdown > x) | {v['p_drawdown']['count']}/{v['n_paths']}, 95 % CI "
                     f"[{v['p_drawdown']['ci_low']:.3g}, {v['p_drawdown']['ci_high']:.3g}] |")
    c = s.get("comparison") or {}
    if c.get("best_feasible_grid_objective") is not None:
        lines.append(f"| best feasible grid point | {c['best_feasible_grid_theta']}: "
                     f"{c['best_feasible_grid_objective']:.6g}"
                     f" (optimiser {100 * c['relative_gap']:+.2f} % below; within 2 %: {c['within_2pct']}) |")
    elif s.get("frontier") is not None:
        lines.append("| best feasible grid point | none of the grid is certified feasible |")
    lines += [""]
    for k in ("frontier", "trace"):
        if k in s["files"]:
            lines.append(f"![{k}]({Path(s['files'][k]).name})")
    return "\n".join(lines) + "\n"


def main(overrides: Sequence[str] | None = None) -> dict:
    """``mmsim optimize [out_dir=DIR] [hydra overrides ...]``: compose ``conf/config.yaml`` with
    ``experiment=optimize_gamma`` (unless another experiment is given) and the overrides, then
    :func:`run_from_config` into ``out_dir`` (default ``outputs/<name>/<timestamp>``)."""
    from hydra import compose, initialize_config_dir

    overrides = list(overrides or [])
    out_dir = None
    rest = []
    for o in overrides:
        if o.startswith("out_dir=") or o.startswith("hydra.run.dir="):
            out_dir = o.split("=", 1)[1]
        else:
            rest.append(o)
    if not any(o.lstrip("+~").startswith("experiment=") for o in rest):
        rest = ["experiment=optimize_gamma"] + rest
    conf_dir = Path(os.environ.get("MMSIM_CONF", Path(__file__).resolve().parent.parent / "conf")).resolve()
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        cfg = compose(config_name="config", overrides=rest)
    if out_dir is None:
        out_dir = Path("outputs") / str(cfg.get("name", "optimize")) / time.strftime("%Y-%m-%d_%H-%M-%S")
    return run_from_config(cfg, out_dir)


if __name__ == "__main__":      # python -m mmsim.optimize [overrides]
    import sys

    main(sys.argv[1:])
