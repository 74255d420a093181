"""The world without a market maker: a registered world stepped on its own (no quote resting) for
many paths, returning its observations, for comparing the simulated market with a recorded one
(:mod:`mmsim.fit.stylised`). Steps of ``dt`` seconds; observations stacked ``(paths, steps, ...)``.

The market's parameters are an argument of the compiled program (one compile per structure and
shape, however many parameter values a fit tries)."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from mmsim import rng
from mmsim import world as worlds
from mmsim._pytree import cast_floats
from mmsim.observation import Observation

#: Observation fields that count what happened over an interval (summed when sub-steps are merged);
#: every other field is a state at the interval's end (the last sub-step's).
SUMMED = ("n_buy", "n_sell", "vol_buy", "vol_sell", "liq_long", "liq_short", "fill_bid_size", "fill_ask_size")


def merge(obs: Observation, every: int) -> Observation:
    """Observations of ``(paths, steps * every, ...)`` as ``(paths, steps, ...)``: counts and volumes
    summed over each ``every`` consecutive steps, states taken at the last, the trade VWAPs
    volume-weighted, ``dt`` the interval's."""
    if every == 1:
        return obs

    def fold(x):
        return x.reshape((x.shape[0], x.shape[1] // every, every) + x.shape[2:])

    out = {}
    for name, x in obs._asdict().items():
        if x is None:
            out[name] = None
            continue
        f = fold(x)
        out[name] = f.sum(axis=2) if name in SUMMED else f[:, :, -1]
    for side in ("buy", "sell"):
        v = fold(getattr(obs, f"vol_{side}"))
        w = fold(getattr(obs, f"vwap_{side}"))
        tot = v.sum(axis=2)
        out[f"vwap_{side}"] = jnp.where(tot > 0, (v * w).sum(axis=2) / jnp.where(tot > 0, tot, 1.0), 0.0)
    out["dt"] = fold(obs.dt).sum(axis=2)
    return Observation(**out)


@functools.partial(jax.jit, static_argnames=("world", "n_steps", "dt", "dtype"))
def _paths(keys, mp, *, world: str, n_steps: int, dt: float, dtype) -> Observation:
    w_mod = worlds.get(world)

    def path(key):
        def body(s, t):
            s, obs, _ = w_mod.step(rng.fold_in(key, t), s, mp, dt, None)
            return s, obs

        return jax.lax.scan(body, w_mod.init(mp, dtype), jnp.arange(n_steps, dtype=jnp.int32))[1]

    return jax.vmap(path)(keys)


def observations(
    world: str,
    market_params: Any,
    *,
    n_paths: int,
    n_steps: int,
    dt: float,
    seed: int,
    dtype: Any = jnp.float32,
    every: int = 1,
) -> Observation:
    """The observations of ``n_paths`` paths of ``n_steps`` intervals of ``dt`` seconds (path ``i``
    draws from ``fold_in(key(seed), i)`` as in the simulator), nothing quoting. ``every``: the world
    steps ``every`` times per interval (steps of ``dt / every`` seconds), merged by :func:`merge`."""
    if not (isinstance(every, int) and every >= 1):
        raise ValueError(f"every = {every!r}: must be an integer >= 1 (world steps per interval)")
    mp = cast_floats(market_params, dtype)
    keys = rng.path_keys(rng.key(seed), 0, n_paths)
    obs = _paths(keys, mp, world=world, n_steps=n_steps * every, dt=float(dt) / every, dtype=jnp.dtype(dtype).name)
    return merge(obs, every)
