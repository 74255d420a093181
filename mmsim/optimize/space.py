"""The search space: each tuned parameter in unconstrained coordinates (log, logit or linear in its
box, natural units at the ends) and its projection onto the box, and how a parameter vector is
written into the engine's parameters."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import special

TRANSFORMS = ("log", "logit", "linear")


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
        return (x - float(self.lo)) / (float(self.hi) - float(self.lo))  # linear: the fraction of the box

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


def _theta(specs: Sequence[ParamSpec], z: np.ndarray, fixed: Mapping[str, float]) -> dict:
    th = {k: float(v) for k, v in fixed.items()}
    for s, zi in zip(specs, z):
        th[s.name] = s.from_z(float(zi))
    return th


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
