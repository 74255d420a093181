"""Reductions and look-ups over short, static axes, written out element by element.

The estimators keep small per-path tables (a spread histogram, pending adverse-selection slots,
regime parameters), and the volatility process picks its regime's row of per-regime tables.
Under ``vmap`` over many paths, XLA's CPU backend compiles a reduction over such a short trailing
axis (``jnp.sum(x, axis=-1)`` with 8 or 24 entries), or a gather with a per-path index, into a
separate kernel (for large batches, a library call that fuses nothing), which cost more than the
rest of the step's arithmetic. A chain of elementwise adds and selects over the slices (or over
arrays kept separate, the ``_of`` forms) instead fuses with the arithmetic around it. The results
are the same up to the order of floating-point additions (exactly the same for counts, ``all``,
``argmin`` and look-ups).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def sum_last(x: jax.Array) -> jax.Array:
    """``jnp.sum(x, axis=-1)``, summed left to right."""
    out = x[..., 0]
    for i in range(1, x.shape[-1]):
        out = out + x[..., i]
    return out


def all_of(xs) -> jax.Array:
    """``jnp.all(jnp.stack(xs, -1), axis=-1)`` for a sequence of same-shape boolean arrays,
    without stacking them."""
    out = xs[0]
    for x in xs[1:]:
        out = out & x
    return out


def any_last(x: jax.Array) -> jax.Array:
    """``jnp.any(x, axis=-1)`` for a boolean ``x``."""
    out = x[..., 0]
    for i in range(1, x.shape[-1]):
        out = out | x[..., i]
    return out


def max_last(x: jax.Array) -> jax.Array:
    """``jnp.max(x, axis=-1)``."""
    out = x[..., 0]
    for i in range(1, x.shape[-1]):
        out = jnp.maximum(out, x[..., i])
    return out


def argmin_of(xs) -> jax.Array:
    """``jnp.argmin(jnp.stack(xs, -1), axis=-1)`` (the first index of the minimum; int32) for a
    sequence of same-shape NaN-free arrays, without stacking them."""
    best = xs[0]
    idx = jnp.zeros(best.shape, jnp.int32)
    for i, x in enumerate(xs[1:], start=1):
        better = x < best
        idx = jnp.where(better, i, idx)
        best = jnp.where(better, x, best)
    return idx


def take_last(table: jax.Array, index: jax.Array) -> jax.Array:
    """``table[..., index]`` for a static table (last axis of length R) and an integer ``index``
    in ``[0, R)`` (any shape broadcastable against ``table.shape[:-1]``): a chain of selects."""
    out = jnp.broadcast_to(table[..., 0], jnp.broadcast_shapes(table.shape[:-1], jnp.shape(index)))
    for i in range(1, table.shape[-1]):
        out = jnp.where(index == i, table[..., i], out)
    return out
