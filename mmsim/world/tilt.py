"""Importance sampling of the world: a change of measure on what drives a liquidation.

A :class:`TiltParams` in ``MarketParams.tilt`` makes the world draw three of its streams from a
tilted law (:func:`mmsim.distributions.tilt_event`, :func:`mmsim.distributions.tilt_exp`):

- ``liq_count``: each side's liquidation count has an event in a step as if its Hawkes
  intensity were ``liq_count`` times larger (the cascade then excites itself as it would);
- ``liq_size``: the largest liquidation of a step with an event has its Pareto tail index ``a``
  lowered to ``a (1 - liq_size)``;
- ``jump_count``: a price jump happens as if the jump rate were ``jump_count`` times larger;
- ``flow_imbalance``: the uninformed market-order counts' uniforms have their normal scores
  shifted, sells by ``+flow_imbalance`` and buys by ``-flow_imbalance`` (positive: more selling,
  so a market maker's bids fill more and it drifts long);
- ``price_drift``: the diffusion's standard normal of each step has mean ``price_drift`` instead
  of 0 (the exponential tilt of a normal: a drift of ``price_drift`` standard deviations per
  step, negative for down; one asset only, whose normal is independent of the other draws).

Every other draw keeps its law. The world reports per step a :class:`TiltInfo`: the log
likelihood ratio of the step's tilted draws (nominal over tilted, float64) and the sufficient
statistics the cross-entropy rule (:mod:`mmsim.sim.rare`) uses to choose the tilt. With
``MarketParams.tilt = None`` (the default) none of this is compiled. Equations and the choice
of the tilt: ``docs/MODEL.md``, section 14.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from mmsim._pytree import Check, pytree_dataclass


@pytree_dataclass
class TiltParams:
    """The tilt of the world's rare-event streams (dimensionless; 1, 0, 1: the nominal law).

    Attributes:
        liq_count: multiplier of the per-step liquidation event probability's intensity, > 0.
        liq_size: exponential tilt of the largest liquidation's tail, in [0, 1).
        jump_count: multiplier of the price-jump intensity, > 0.
        price_drift: mean of the price diffusion's N(0, 1) draw of a step, standard deviations.
        flow_imbalance: shift of the sell (+) and buy (-) order counts' normal scores per step.
    """

    liq_count: jax.Array | float = 1.0
    liq_size: jax.Array | float = 0.0
    jump_count: jax.Array | float = 1.0
    price_drift: jax.Array | float = 0.0
    flow_imbalance: jax.Array | float = 0.0

    def validate(self) -> None:
        c = Check(self)
        c.positive("liq_count", "multiplier of the liquidation event intensity")
        c.positive("jump_count", "multiplier of the price-jump intensity")
        c.finite("price_drift", "mean of the diffusion's normal per step, standard deviations")
        c.finite("flow_imbalance", "shift of the order counts' normal scores per step")
        c.require(
            0.0 <= float(c.value("liq_size").min()) and float(c.value("liq_size").max()) < 1.0,
            "liq_size",
            "must lie in [0, 1) (tilt of the largest liquidation's tail)",
        )


class TiltInfo(NamedTuple):
    """One step's change of measure (float64 scalars, summed over assets and sides)."""

    log_lr: jax.Array  # log of nominal over tilted density of the step's tilted draws
    liq_events: jax.Array  # sides with a liquidation in the step
    liq_comp: jax.Array  # their nominal expected counts (compensators), summed
    liq_size_e: jax.Array  # sum of the tilted Exp(1) variables of the largest sizes drawn
    jump_events: jax.Array  # assets with a price jump in the step
    jump_comp: jax.Array  # nominal expected jump counts, summed
    price_z: jax.Array  # the step's (tilted) diffusion normal
    price_n: jax.Array  # 1 per step (the normals drawn)
    flow_z: jax.Array  # half the (tilted) sell score minus the buy score, summed over assets
    flow_n: jax.Array  # assets (the score pairs drawn)


#: The tilt's statistics a path carries (every TiltInfo field but the log likelihood ratio).
N_STATS = 9


def zero() -> TiltInfo:
    z = jnp.zeros((), jnp.float64)
    return TiltInfo(*(z for _ in TiltInfo._fields))


def shift_normal(z: jax.Array, theta: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``z + theta`` (the N(theta, 1) draw made from the N(0, 1) draw ``z``), its log likelihood
    ratio ``-theta (z + theta) + theta^2 / 2`` (float64, summed) and the shifted draw's sum."""
    th = jnp.asarray(theta, jnp.float64)
    zt = z.astype(jnp.float64) + th
    return (zt.astype(z.dtype), jnp.sum(-th * zt + 0.5 * th * th), jnp.sum(zt))
