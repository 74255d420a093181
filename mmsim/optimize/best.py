"""``best.yaml``: the optimised policy and the account it was validated with (in the schemas of the
``policy`` and ``account`` config groups), the market, the constraints and the validation."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mmsim._pytree import to_plain
from mmsim.optimize.objective import Constraints


def _plain(x: Any) -> Any:
    """numpy / jax scalars and arrays, tuples and mappings as plain YAML-able Python."""
    return to_plain(x)


def policy_dict(policy_params: Any, theta: Mapping[str, float] | None = None) -> dict:
    """A :class:`mmsim.engine.policy.PolicyParams` (or a mapping of its fields) as a plain dict in the
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


def best_document(
    policy: Mapping[str, Any],
    market: Mapping[str, Any],
    constraints: Constraints,
    validation: dict,
    feasible: bool,
    *,
    account: Mapping[str, Any] | None = None,
    **extra: Any,
) -> dict:
    """The ``best.yaml`` document: policy, account (when given: the account the validation ran
    with, which ``+params`` then applies, so that a policy is never run at another leverage by
    accident), market, constraints, validation, feasible (+ extra keys)."""
    val = {
        "seed": validation.get("seed"),
        "n_paths": int(validation["n_paths"]),
        "p_liquidation": dict(validation["p_liquidation"]),
    }
    if "p_drawdown" in validation:
        val["p_drawdown"] = dict(validation["p_drawdown"])
    if validation.get("rare_event"):  # the certificate of risk.estimator = splitting or is
        rare = validation["rare_event"]
        val["p_liquidation_rare_event"] = {
            k: rare.get(k) for k in ("method", "estimate", "ci_low", "ci_high", "certified", "why")
        }
    val["objective"] = float(validation["objective"])
    doc = {"policy": _plain(dict(policy))}
    if account is not None:
        doc["account"] = _plain(dict(account))
    doc.update(
        {
            "market": _plain(dict(market)),
            "constraints": {
                "epsilon_liq": float(constraints.epsilon_liq),
                "drawdown_threshold": None
                if constraints.drawdown_threshold is None
                else float(constraints.drawdown_threshold),
                "epsilon_dd": None if constraints.epsilon_dd is None else float(constraints.epsilon_dd),
            },
            "validation": _plain(val),
            "feasible": bool(feasible),
        }
    )
    doc.update(_plain(extra))
    return doc


def write_best_yaml(
    path: str | os.PathLike,
    policy: Mapping[str, Any],
    market: Mapping[str, Any],
    constraints: Constraints,
    validation: dict,
    feasible: bool,
    *,
    account: Mapping[str, Any] | None = None,
    **extra: Any,
) -> Path:
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
