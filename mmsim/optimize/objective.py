"""What is optimised and what constrains it: per-path outcomes (PnL in quote currency, liquidation
flags, drawdown fractions), the objective (E[PnL] or E[PnL] - lambda CVaR 99), the constraints
P(liquidation) <= epsilon_liq and P(max drawdown > x) <= epsilon_dd, their smooth surrogates and the
training target that leaves room for the validation's Clopper-Pearson bound."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np
from scipy import special, stats

from mmsim.sim import risk
from mmsim.sim.risk import certifiable_count, cp_upper


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


#: Fewer expected events than this at the training target on the training paths draw a warning.
MIN_TARGET_EVENTS = 3.0


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
        return {
            "epsilon_liq": float(self.epsilon_liq),
            "drawdown_threshold": None if self.drawdown_threshold is None else float(self.drawdown_threshold),
            "epsilon_dd": None if self.epsilon_dd is None else float(self.epsilon_dd),
            "alpha": float(self.alpha),
        }


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


def batch_stats(
    out: PathOutcomes, objective: Objective, constraints: Constraints, *, tau_liq: float = 0.0, tau_dd: float = 0.0
) -> dict:
    """Objective and (surrogate) probabilities of one batch of paths."""
    pnl = np.asarray(out.pnl, float)
    ok = np.isfinite(pnl)
    d = {
        "objective": objective(pnl[ok]) if ok.any() else -np.inf,
        "objective_se": objective.se(pnl[ok]),
        "n": int(pnl.size),
        "n_nonfinite": int((~ok).sum()),
        "p_liq": float(np.mean(out.liquidated)),
        "p_liq_s": float(np.mean(liquidation_surrogate(out, tau_liq))),
    }
    if constraints.has_dd:
        x = float(constraints.drawdown_threshold)
        d["p_dd"] = float(np.mean(np.asarray(out.max_dd_frac, float) > x))
        d["p_dd_s"] = float(np.mean(drawdown_surrogate(out, x, tau_dd)))
    return d


def outcomes_from_summary(summary: Any, initial_equity: float) -> PathOutcomes:
    """:class:`PathOutcomes` (float64) from a :class:`mmsim.sim.simulate.PathSummary`; the drawdown is
    taken as a fraction of ``initial_equity`` (quote currency), as in :func:`mmsim.sim.risk.summarize`."""
    return PathOutcomes(
        pnl=np.asarray(summary.pnl, float),
        liquidated=np.asarray(summary.liquidated, bool),
        max_dd_frac=np.asarray(summary.max_dd, float) / float(initial_equity),
        min_margin_ratio=np.asarray(summary.min_margin_ratio, float),
    )
