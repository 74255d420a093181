"""Policy optimisation under P(liquidation) ≈ 0: maximise an objective of the PnL over policy (and
account) parameters subject to exact-interval risk constraints. The search space
(:mod:`~mmsim.optimize.space`), the objective and constraints (:mod:`~mmsim.optimize.objective`),
the gradient estimator (:mod:`~mmsim.optimize.gradient`), the augmented Lagrangian
(:mod:`~mmsim.optimize.lagrangian`), validation and certification (:mod:`~mmsim.optimize.validation`),
``best.yaml`` (:mod:`~mmsim.optimize.best`) and the task a run performs (:mod:`~mmsim.optimize.task`).
Everything is written against one callable, ``evaluate(theta, seed, n_paths) -> PathOutcomes``."""

from mmsim.optimize.best import best_document, load_best_yaml, policy_dict, write_best_yaml
from mmsim.optimize.gradient import GradientEstimate, directions, smoothed_gradient
from mmsim.optimize.lagrangian import OptResult, OptSettings, lr_schedule, optimize
from mmsim.optimize.objective import (
    MIN_TARGET_EVENTS,
    ConstraintMap,
    Constraints,
    Evaluator,
    Objective,
    PathOutcomes,
    batch_stats,
    certify_target,
    drawdown_surrogate,
    liquidation_surrogate,
    outcomes_from_summary,
)
from mmsim.optimize.space import ACCOUNT_NAMES, TRANSFORMS, ParamSpec, apply_theta, param_specs, theta_from_engine
from mmsim.optimize.task import (
    CONFIG_DEFAULTS,
    STARTS,
    main,
    run,
    run_from_config,
    settings_from_config,
    simulator_evaluator,
)
from mmsim.optimize.validation import FrontierResult, assess, certification_message, frontier, validate, within_of_best

__all__ = [
    "ACCOUNT_NAMES",
    "CONFIG_DEFAULTS",
    "MIN_TARGET_EVENTS",
    "STARTS",
    "TRANSFORMS",
    "ConstraintMap",
    "Constraints",
    "Evaluator",
    "FrontierResult",
    "GradientEstimate",
    "Objective",
    "OptResult",
    "OptSettings",
    "ParamSpec",
    "PathOutcomes",
    "apply_theta",
    "assess",
    "batch_stats",
    "best_document",
    "certification_message",
    "certify_target",
    "directions",
    "drawdown_surrogate",
    "frontier",
    "liquidation_surrogate",
    "load_best_yaml",
    "lr_schedule",
    "main",
    "optimize",
    "outcomes_from_summary",
    "param_specs",
    "policy_dict",
    "run",
    "run_from_config",
    "settings_from_config",
    "simulator_evaluator",
    "smoothed_gradient",
    "theta_from_engine",
    "validate",
    "within_of_best",
    "write_best_yaml",
]
