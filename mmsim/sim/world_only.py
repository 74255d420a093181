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

from mmsim import observation, rng
from mmsim import world as worlds
from mmsim._pytree import cast_floats
from mmsim.observation import Observation, Quote


def merge(obs: Observation, every: int) -> Observation:
    """Observations of ``(paths, steps * every, ...)`` as ``(paths, steps, ...)``, each ``every``
    consecutive steps merged into one interval by :func:`mmsim.observation.merge`."""
    if every == 1:
        return obs
    folded = jax.tree_util.tree_map(lambda x: x.reshape((x.shape[0], x.shape[1] // every, every) + x.shape[2:]), obs)
    return observation.merge(folded, axis=2)


#: Size of a probe quote, base units (small against any touch).
PROBE_SIZE = 0.01


def _probe_quote(obs: Observation, ticks_behind: float, tick: jax.Array) -> Quote:
    """A fresh quote of :data:`PROBE_SIZE` on each side, ``ticks_behind`` ticks behind the touch."""
    size = jnp.full_like(obs.best_bid, PROBE_SIZE)
    on = jnp.ones(obs.best_bid.shape, bool)
    d = ticks_behind * tick
    return Quote(obs.best_bid - d, obs.best_ask + d, size, size, on, on)


@functools.partial(jax.jit, static_argnames=("world", "n_steps", "dt", "dtype", "probe", "every"))
def _paths(keys, mp, *, world: str, n_steps: int, dt: float, dtype, probe: float | None, every: int) -> Observation:
    w_mod = worlds.get(world)
    tick = None if probe is None else jnp.asarray(mp.spread.tick, dtype)

    def path(key):
        def body(c, t):
            s, last, q = c
            if probe is not None:  # a fresh probe at each interval's start, resting through it
                start = t % every == 0
                s = jax.lax.cond(start, w_mod.forget_orders, lambda x: x, s)
                q = jax.tree_util.tree_map(
                    lambda new, old: jnp.where(start, new, old), _probe_quote(last, probe, tick), q
                )
            s, obs, _ = w_mod.step(rng.fold_in(key, t), s, mp, dt, q)
            return (s, obs, q), obs

        s0 = w_mod.init(mp, dtype)
        o0 = w_mod.observe(s0, mp)
        q0 = _probe_quote(o0, probe, tick) if probe is not None else None
        return jax.lax.scan(body, (s0, o0, q0), jnp.arange(n_steps, dtype=jnp.int32))[1]

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
    probe: float | None = None,
) -> Observation:
    """The observations of ``n_paths`` paths of ``n_steps`` intervals of ``dt`` seconds (path ``i``
    draws from ``fold_in(key(seed), i)`` as in the simulator), nothing quoting. ``every``: the world
    steps ``every`` times per interval (steps of ``dt / every`` seconds), merged by :func:`merge`.

    ``probe``: instead of nothing, a fresh quote of :data:`PROBE_SIZE` base units on each side,
    ``probe`` ticks behind the touch of the previous observation, sent at the start of every
    interval and resting through it (the world forgets the previous one: each joins the back of its
    queue; a probe filled in one sub-step may fill again in the next, so read its fills as "filled
    in the interval or not"); its fills are the observations' ``fill_*`` fields. Needs a world with
    ``forget_orders``."""
    if not (isinstance(every, int) and every >= 1):
        raise ValueError(f"every = {every!r}: must be an integer >= 1 (world steps per interval)")
    if probe is not None and not hasattr(worlds.get(world), "forget_orders"):
        raise ValueError(f"probe = {probe!r}: world {world!r} cannot forget our orders (no forget_orders)")
    mp = cast_floats(market_params, dtype)
    keys = rng.path_keys(rng.key(seed), 0, n_paths)
    obs = _paths(
        keys,
        mp,
        world=world,
        n_steps=n_steps * every,
        dt=float(dt) / every,
        dtype=jnp.dtype(dtype).name,
        probe=None if probe is None else float(probe),
        every=every,
    )
    return merge(obs, every)
