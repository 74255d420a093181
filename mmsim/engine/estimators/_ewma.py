"""Time-based exponentially weighted averages shared by the estimators."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from mmsim.distributions import expm1, materialise_small


def weight(dt: jax.Array, half_life: jax.Array | float) -> jax.Array:
    """Weight of a new observation after ``dt`` seconds for an EWMA of half-life ``half_life`` seconds:
    ``1 - 2^(-dt / half_life)`` (irregular feed intervals are handled exactly). Stored once: a
    weight feeds several updates, and XLA's CPU backend would otherwise split its exp into a
    kernel of its own, computed element by element."""
    return materialise_small(-expm1(-math.log(2.0) * dt / half_life))


def update(
    old: jax.Array, new: jax.Array, dt: jax.Array, half_life: jax.Array | float, valid: jax.Array | bool = True
) -> jax.Array:
    """EWMA step ``old + w (new - old)``; unchanged where ``valid`` is False."""
    w = weight(dt, half_life)
    return jnp.where(valid, old + w * (new - old), old)


def normalised(wsum: jax.Array, w: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One step of a normalised EWMA (weights divided by their running total, the bias correction
    of an average started from 0): the new total ``wsum + w (1 - wsum)`` and the gain
    ``w / total`` to apply as ``avg + gain (x - avg)``. The total goes 0 -> 1; the first sample
    gets gain 1, so the average starts at the first value instead of being pulled towards 0."""
    total = wsum + w * (1.0 - wsum)
    return total, w / jnp.maximum(total, jnp.finfo(total.dtype).tiny)


def window_half_life(window_s: float) -> float:
    """Half-life (seconds) of the EWMA equivalent to a flat window of ``window_s`` seconds
    (same mean age and effective sample size: time constant W/2)."""
    return 0.5 * window_s * math.log(2.0)


def per_update_to_half_life(lam: float, interval_s: float) -> float:
    """Half-life of the spec's per-update decay ``lam`` (e.g. RiskMetrics 0.94) at one update every
    ``interval_s`` seconds: ``interval_s * ln 2 / -ln(lam)``."""
    return interval_s * math.log(2.0) / -math.log(lam)
