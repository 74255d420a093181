"""Frozen dataclass pytrees, host-side parameter validation and dtype casting."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

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
        _refuse_words(self)
        if validate is not None and _all_concrete(self):
            validate(self)

    cls.__post_init__ = __post_init__
    cls = dataclasses.dataclass(frozen=True)(cls)
    data, meta = [], []
    for f in dataclasses.fields(cls):
        (meta if f.metadata.get("static") else data).append(f.name)
    jax.tree_util.register_dataclass(cls, data_fields=data, meta_fields=meta)
    return cls


def _refuse_words(obj: Any) -> None:
    """A parameter leaf that is a string (``gamma: abc``, ``event_times_s: [abc]``) is an error naming
    the field: left alone it would make the object look traced and skip its validation."""
    for f in dataclasses.fields(obj):
        if f.metadata.get("static"):
            continue
        v = getattr(obj, f.name)
        if any(isinstance(leaf, str) for leaf in jax.tree_util.tree_leaves(v)):
            raise ValueError(f"{type(obj).__name__}.{f.name} = {v!r}: must be a number or an array of numbers")


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
    """Every parameter leaf of ``tree`` as a jnp array: floats (Python numbers and floating arrays,
    and Python ints) in ``dtype``, booleans as booleans, other arrays as they are.

    The one cast every caller of the engine or a world applies (the simulator and the live side),
    so that both compile the same program, and new values of the same structure reuse it.
    """

    def conv(x: Any) -> Any:
        if isinstance(x, bool) or (hasattr(x, "dtype") and x.dtype == bool):
            return jnp.asarray(x)
        if isinstance(x, (int, float)) or (hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)):
            return jnp.asarray(x, dtype)
        return jnp.asarray(x)

    return jax.tree_util.tree_map(conv, tree)


def to_plain(x: Any, *, nonfinite: str = "keep") -> Any:
    """``x`` as plain Python for YAML, JSON or a message: mappings to dicts (string keys), sequences
    and arrays to lists, numpy and jax scalars to bool/int/float, strings and None as they are,
    anything else to its ``str``. ``nonfinite="none"`` turns NaN and infinities into None (strict
    JSON has no NaN); ``"keep"`` keeps them."""
    if isinstance(x, Mapping):
        return {str(k): to_plain(v, nonfinite=nonfinite) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_plain(v, nonfinite=nonfinite) for v in x]
    if isinstance(x, str) or x is None:
        return x
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        f = float(x)
        return None if nonfinite == "none" and not math.isfinite(f) else f
    try:
        a = np.asarray(x)
    except Exception:  # noqa: BLE001 (an object numpy cannot read: say what it is)
        return str(x)
    if a.dtype == bool or np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating):
        return to_plain(a.tolist(), nonfinite=nonfinite) if a.ndim else to_plain(a.item(), nonfinite=nonfinite)
    return str(x)


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
        shown = to_plain(v)
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

    def between(
        self, field: str, lo: float, hi: float, what: str = "", *, open_lo: bool = False, open_hi: bool = False
    ) -> None:
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
