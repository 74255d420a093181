"""The world without a market maker: a registered world stepped on its own (no quote resting) for
many paths, returning its observations, for comparing the simulated market with a recorded one
(:mod:`mmsim.fit.stylised`). Steps of ``dt`` seconds; observations stacked ``(paths, steps, ...)``."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from mmsim import rng
from mmsim import world as worlds
from mmsim._pytree import cast_floats
from mmsim.observation import Observation


def observations(
    world: str, market_params: Any, *, n_paths: int, n_steps: int, dt: float, seed: int, dtype: Any = jnp.float32
) -> Observation:
    """The observations of ``n_paths`` paths of ``n_steps`` steps of ``dt`` seconds (path ``i``
    draws from ``fold_in(key(seed), i)`` as in the simulator), nothing quoting."""
    w_mod = worlds.get(world)
    mp = cast_floats(market_params, dtype)

    def path(key):
        def body(s, t):
            s, obs, _ = w_mod.step(rng.fold_in(key, t), s, mp, dt, None)
            return s, obs

        return jax.lax.scan(body, w_mod.init(mp, dtype), jnp.arange(n_steps, dtype=jnp.int32))[1]

    return jax.jit(jax.vmap(path))(rng.path_keys(rng.key(seed), 0, n_paths))
