"""The contract every process module keeps (see mmsim/world/processes/__init__.py), checked once per
process: jit and vmap, float32 and float64, finite output, dtype kept, shapes, determinism,
compile-once, and a ValueError that names the field for each invalid parameter.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmsim import rng

Drivers = Callable[[Any, int], tuple[tuple, dict]]


def run_paths(
    module, params, drivers: Drivers, *, n_assets: int, n_paths: int, n_steps: int, dt: float, dtype, seed: int = 0
):
    """Scan ``n_steps`` steps of ``module.step`` for ``n_paths`` vmapped paths; returns
    (final states, stacked infos) and the number of times the step function was traced."""
    traces = {"n": 0}

    def path(k):
        s0 = module.init(params, n_assets, dtype)

        def body(s, t):
            traces["n"] += 1
            args, kwargs = drivers(dtype, n_assets)
            return module.step(rng.fold_in(k, t), s, params, dt, *args, **kwargs)

        return jax.lax.scan(body, s0, jnp.arange(n_steps))

    f = jax.jit(jax.vmap(path))
    keys = rng.path_keys(rng.key(seed), 0, n_paths)
    out = f(keys)
    return out, f, keys, traces


def check_contract(
    module, params, drivers: Drivers, *, n_assets: int = 2, dt: float = 0.5, invalid: list[tuple[str, Any]] = ()
) -> None:
    for dtype in (jnp.float32, jnp.float64):
        (state, info), f, keys, traces = run_paths(
            module, params, drivers, n_assets=n_assets, n_paths=3, n_steps=6, dt=dt, dtype=dtype
        )
        for leaf in jax.tree_util.tree_leaves((state, info)):
            assert leaf.shape[0] == 3, "vmapped leading axis"
            if jnp.issubdtype(leaf.dtype, jnp.floating):
                assert leaf.dtype == dtype, f"dtype {leaf.dtype} != {dtype}: silently promoted"
                assert bool(jnp.all(jnp.isfinite(leaf))), "non-finite output"
        for leaf in jax.tree_util.tree_leaves(state):
            if leaf.ndim >= 2:
                assert leaf.shape[1] == n_assets, "asset axis"
        # Same key, same path; compiled once.
        n0 = traces["n"]
        state2, _ = f(keys)
        assert traces["n"] == n0, "retraced on a second call"
        for a, b in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(state2)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        # Different paths differ (the process is random).
        leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)]
        assert any(not np.allclose(x[0], x[1]) for x in leaves), "paths with different keys are equal"
    # Un-jitted single step matches the jitted one.
    s = module.init(params, n_assets, jnp.float64)
    args, kwargs = drivers(jnp.float64, n_assets)
    k = rng.fold_in(rng.key(7), 0)
    eager = module.step(k, s, params, dt, *args, **kwargs)
    jitted = jax.jit(lambda k, s: module.step(k, s, params, dt, *args, **kwargs))(k, s)
    for a, b in zip(jax.tree_util.tree_leaves(eager), jax.tree_util.tree_leaves(jitted)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-14)
    # Each invalid parameter is refused with a message that names it.
    for field, bad in invalid:
        with pytest.raises(ValueError, match=rf"\.{field} = "):
            dataclasses.replace(params, **{field: bad})
