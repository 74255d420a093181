"""What every estimator test needs, once: observations built from keyword arguments, and the
contract that an estimator's update gives the same state eagerly, under ``jit`` of a scan and under
``vmap`` of that scan over paths, keeping the run's dtype and finite values."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mmsim import observation


def obs_of(dtype, n_assets: int = 1, **fields) -> observation.Observation:
    """An all-invalid :func:`observation.empty` with ``fields`` set (broadcast to their shapes and
    cast to their dtypes), e.g. ``obs_of(jnp.float32, 2, t=1.0, mid=[100, 50], book_valid=True)``."""
    o = observation.empty(n_assets, dtype)
    rep = {}
    for k, v in fields.items():
        ref = getattr(o, k)
        rep[k] = jnp.broadcast_to(jnp.asarray(v, ref.dtype), ref.shape)
    return o._replace(**rep)


def stack(xs: Sequence[Any]) -> Any:
    """A list of pytrees of one structure as one pytree with a new leading axis."""
    return jax.tree_util.tree_map(lambda *a: jnp.stack(a), *xs)


def check_eager_jit_vmap(
    init: Callable[[], Any],
    update: Callable[[Any, Any], Any],
    paths: Sequence[Sequence[Any]],
    *,
    dtype,
    rtol: float,
    atol: float = 0.0,
    query: Callable[[Any, Any], Any] | None = None,
    query_atol: float | None = None,
) -> tuple[Any, Any]:
    """Run ``update(state, x)`` over each path of inputs ``x`` three ways (a Python loop, a jitted
    ``lax.scan``, the scan vmapped over the paths) and check that the states (and ``query(state,
    x)`` after every step, if given) agree within ``rtol``/``atol``, that floating leaves keep
    ``dtype`` and that every floating leaf is finite; ``query_atol`` (default ``atol``) for queries
    that cancel large numbers. Returns the vmapped (states, queries)."""
    q_atol = atol if query_atol is None else query_atol

    def scan(xs):
        def body(s, x):
            s = update(s, x)
            return s, (None if query is None else query(s, x))

        return jax.lax.scan(body, init(), xs)

    s_v, q_v = jax.jit(jax.vmap(scan))(stack([stack(p) for p in paths]))
    jscan = jax.jit(scan)
    for i, xs in enumerate(paths):
        s = init()
        qs = []
        for x in xs:
            s = update(s, x)
            if query is not None:
                qs.append(query(s, x))
        s_j, q_j = jscan(stack(xs))
        for a, b, c in zip(*(jax.tree_util.tree_leaves(t) for t in (s, s_j, s_v)), strict=True):
            assert a.dtype == b.dtype == c.dtype
            if jnp.issubdtype(a.dtype, jnp.floating):
                assert a.dtype == dtype
                assert bool(jnp.all(jnp.isfinite(a)))
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=rtol, atol=atol)
            np.testing.assert_allclose(np.asarray(c[i]), np.asarray(a), rtol=rtol, atol=atol)
        if query is not None:
            eager = stack(qs)
            for a, b, c in zip(*(jax.tree_util.tree_leaves(t) for t in (eager, q_j, q_v)), strict=True):
                np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=rtol, atol=q_atol)
                np.testing.assert_allclose(np.asarray(c[i]), np.asarray(a), rtol=rtol, atol=q_atol)
    for leaf in jax.tree_util.tree_leaves(q_v):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            assert leaf.dtype == dtype and bool(jnp.all(jnp.isfinite(leaf)))
    return s_v, q_v
