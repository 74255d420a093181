"""Frozen dataclass pytrees, host-side parameter validation and dtype casting."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np


def static_field(**kwargs: Any) -> Any:
    """A dataclass field that is pytree metadata (static under jit), e.g. a size or a flag."""
    return dataclasses.field(metadata={"static": True}, **kwargs)


def pytree_dataclass(cls: type) -> type:
    """Make ``cls`` a frozen dataclass registered as a pytree.

    Fields made with :func:`static_field` are metadata (hashable, static under ``jit``); all
    other fields are leaves. If the class defines ``validate(self)``, it is called from
    ``__post_init__`` whenever every leaf is concrete (numbers or arrays, not tracers), so a
    params object built by hand or from a config is checked once, on the host, while the
    copies JAX rebuilds inside ``jit``/``vmap`` are not re-checked.
    """
    validate: Callable[[Any], None] | None = getattr(cls, "validate", None)

    def __post_init__(self: Any) -> None:
        if validate is not None and _all_concrete(self):
            validate(self)

    cls.__post_init__ = __post_init__
    cls = dataclasses.dataclass(frozen=True)(cls)
    data, meta = [], []
    for f in dataclasses.fields(cls):
        (meta if f.metadata.get("static") else data).append(f.name)
    jax.tree_util.register_dataclass(cls, data_fields=data, meta_fields=meta)
    return cls


def _all_concrete(obj: Any) -> bool:
    for f in dataclasses.fields(obj):
        if f.metadata.get("static"):
            continue
        for leaf in jax.tree_util.tree_leaves(getattr(obj, f.name)):
            if isinstance(leaf, jax.core.Tracer):
                return False
            if not isinstance(leaf, (int, float, bool, np.ndarray, np.generic, jax.Array)):
                return False
    return True


def cast_floats(tree: Any, dtype: Any) -> Any:
    """Convert every floating (or Python float) leaf of ``tree`` to a jnp array of ``dtype``.

    Integer and boolean leaves are kept; this is how params reach the dtype of the simulation.
    """

    def conv(x: Any) -> Any:
        if isinstance(x, bool):
            return x
        if isinstance(x, float) or (hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)):
            return jnp.asarray(x, dtype=dtype)
        return x

    return jax.tree_util.tree_map(conv, tree)


class Check:
    """Host-side validation of one params object; every failure is a ``ValueError`` naming the
    class, the field, the offending value and the rule, e.g.
    ``PriceParams.jump_rate = -1.0: must be >= 0 (jump intensity, per second)``.
    """

    def __init__(self, obj: Any) -> None:
        self.obj = obj
        self.name = type(obj).__name__

    def value(self, field: str) -> np.ndarray:
        return np.asarray(getattr(self.obj, field), dtype=float)

    def fail(self, field: str, rule: str, value: Any = None) -> None:
        v = getattr(self.obj, field) if value is None else value
        v = np.asarray(v)
        shown = v.item() if v.ndim == 0 else v.tolist()
        raise ValueError(f"{self.name}.{field} = {shown}: {rule}")

    def finite(self, field: str, what: str = "") -> np.ndarray:
        v = self.value(field)
        if not np.all(np.isfinite(v)):
            self.fail(field, _rule("must be finite", what))
        return v

    def positive(self, field: str, what: str = "") -> None:
        v = self.finite(field, what)
        if not np.all(v > 0):
            self.fail(field, _rule("must be > 0", what))

    def nonneg(self, field: str, what: str = "") -> None:
        v = self.finite(field, what)
        if not np.all(v >= 0):
            self.fail(field, _rule("must be >= 0", what))

    def between(self, field: str, lo: float, hi: float, what: str = "", *, open_lo: bool = False,
                open_hi: bool = False) -> None:
        v = self.finite(field, what)
        ok_lo = v > lo if open_lo else v >= lo
        ok_hi = v < hi if open_hi else v <= hi
        if not np.all(ok_lo & ok_hi):
            lb = "(" if open_lo else "["
            rb = ")" if open_hi else "]"
            self.fail(field, _rule(f"must lie in {lb}{lo}, {hi}{rb}", what))

    def require(self, cond: bool, field: str, rule: str, value: Any = None) -> None:
        if not cond:
            self.fail(field, rule, value)


def _rule(rule: str, what: str) -> str:
    return f"{rule} ({what})" if what else rule
