"""Importance sampling of the world: a change of measure on what drives a liquidation.

A :class:`TiltParams` in ``MarketParams.tilt`` makes the world draw three of its streams from a
tilted law (:func:`mmsim.distributions.tilt_event`, :func:`mmsim.distributions.tilt_exp`):

- ``liq_count``: each side's liquidation count has an event in a step as if its Hawkes
  intensity were ``liq_count`` times larger (the cascade then excites itself as it would);
- ``liq_busy``: a busy side's liquidation count (expected count of the step at least 0.05, where
  ``liq_count`` does not act) has its uniform's normal score shifted by ``liq_busy``, about as
  many standard deviations more liquidations; with ``against_position``, only the side whose
  liquidations move the price against the position;
- ``liq_size``: the largest liquidation of a step with an event has its Pareto tail index ``a``
  lowered to ``a (1 - liq_size)``;
- ``jump_count``: a price jump happens as if the jump rate were ``jump_count`` times larger;
- ``flow_imbalance``: the uninformed market-order counts' uniforms have their normal scores
  shifted, sells by ``+flow_imbalance`` and buys by ``-flow_imbalance`` (positive: more selling,
  so a market maker's bids fill more and it drifts long);
- ``var_drift``: the variance's standard normal of each step (the Heston shock; one asset) has
  mean ``var_drift`` instead of 0: positive, the variance is pushed up, and the regime's moves
  are larger either way;
- ``price_drift``: the diffusion's standard normal of each step has mean ``price_drift`` instead
  of 0 (the exponential tilt of a normal: a drift of ``price_drift`` standard deviations per
  step, negative for down; one asset only, whose normal is independent of the other draws).

With ``against_position`` the drift and the flow imbalance act against the market maker's
position: the simulator sets ``side`` to the sign of the position before each engine interval
(+1 long, -1 short, 0 flat), and the world uses ``price_drift * side`` and ``flow_imbalance *
side``; a negative drift then pushes the price against the position whichever it is, a positive
imbalance sends more market orders that add to it. A parameter that depends on the path's past
only leaves the likelihood ratio exact, and the statistics come oriented the same way. The
world does not know the engine: it reads ``side`` as a number.

Each of the five may be one number or a vector of ``K`` numbers: the tilt of ``K`` consecutive
time buckets of ``bucket_s`` seconds (the last bucket runs to the horizon), so that a path can be
pushed one way before a scheduled shock and another after it. The world picks the bucket of
each step from the step's start time, and the statistics below come per bucket.

Every other draw keeps its law. The world reports per step a :class:`TiltInfo`: the log
likelihood ratio of the step's tilted draws (nominal over tilted, float64) and the sufficient
statistics the cross-entropy rule (:mod:`mmsim.sim.rare`) uses to choose the tilt. With
``MarketParams.tilt = None`` (the default) none of this is compiled. Equations and the choice
of the tilt: ``docs/MODEL.md``, section 14.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mmsim._pytree import Check, pytree_dataclass, static_field


@pytree_dataclass
class TiltParams:
    """The tilt of the world's rare-event streams (dimensionless; 1, 0, 1, 0, 0: the nominal law).

    Each tilt field is a number or a ``(K,)`` vector, one value per time bucket (a number is the
    same in every bucket); ``K > 1`` needs ``bucket_s``.

    Attributes:
        liq_count: multiplier of the per-step liquidation event probability's intensity, > 0.
        liq_busy: shift of a busy side's liquidation-count normal score per step.
        liq_size: exponential tilt of the largest liquidation's tail, in [0, 1).
        jump_count: multiplier of the price-jump intensity, > 0.
        price_drift: mean of the price diffusion's N(0, 1) draw of a step, standard deviations.
        flow_imbalance: shift of the sell (+) and buy (-) order counts' normal scores per step.
        bucket_s: length of a time bucket, seconds (bucket k covers [k bucket_s, (k + 1) bucket_s),
            the last one runs to the horizon); 0 with one bucket.
        side: the sign the drift and the imbalance are multiplied by (1; with
            ``against_position``, the simulator's sign of the position, +1, 0 or -1).
        against_position: whether the simulator sets ``side`` (static).
    """

    liq_count: jax.Array | float = 1.0
    liq_size: jax.Array | float = 0.0
    jump_count: jax.Array | float = 1.0
    price_drift: jax.Array | float = 0.0
    flow_imbalance: jax.Array | float = 0.0
    liq_busy: jax.Array | float = 0.0
    var_drift: jax.Array | float = 0.0
    bucket_s: jax.Array | float = 0.0
    side: jax.Array | float = 1.0
    against_position: bool = static_field(default=False)

    def validate(self) -> None:
        c = Check(self)
        sizes = {f: int(np.size(getattr(self, f))) for f in FIELDS}
        k = max(sizes.values())
        for f, n in sizes.items():
            c.require(
                n in (1, k) and np.ndim(getattr(self, f)) <= 1,
                f,
                f"has {n} values where another field has {k}: one number or one per time bucket",
            )
        c.require(
            np.size(self.bucket_s) == 1 and np.isfinite(float(self.bucket_s)) and float(self.bucket_s) >= 0,
            "bucket_s",
            "must be a number of seconds >= 0 (the length of a time bucket)",
        )
        c.require(k == 1 or float(self.bucket_s) > 0, "bucket_s", f"must be > 0 seconds with {k} time buckets")
        c.positive("liq_count", "multiplier of the liquidation event intensity")
        c.positive("jump_count", "multiplier of the price-jump intensity")
        c.finite("price_drift", "mean of the diffusion's normal per step, standard deviations")
        c.finite("flow_imbalance", "shift of the order counts' normal scores per step")
        c.finite("liq_busy", "shift of a busy liquidation count's normal score per step")
        c.finite("var_drift", "mean of the variance's normal per step, standard deviations")
        c.require(
            0.0 <= float(c.value("liq_size").min()) and float(c.value("liq_size").max()) < 1.0,
            "liq_size",
            "must lie in [0, 1) (tilt of the largest liquidation's tail)",
        )


#: The tilt's fields, each a number or one value per time bucket.
FIELDS = ("liq_count", "liq_size", "jump_count", "price_drift", "flow_imbalance", "liq_busy", "var_drift")


def n_buckets(tilt: TiltParams) -> int:
    """The number of time buckets of ``tilt`` (static: from the fields' shapes)."""
    return max(int(np.size(getattr(tilt, f))) for f in FIELDS)


def at(tilt: TiltParams, t0: jax.Array) -> tuple[TiltParams, jax.Array]:
    """The tilt of the bucket holding time ``t0`` (seconds, the step's start) as numbers, and
    that bucket's index (int32)."""
    k = n_buckets(tilt)
    if k == 1:
        return tilt, jnp.zeros((), jnp.int32)
    b = jnp.clip(jnp.floor(t0 / tilt.bucket_s), 0, k - 1).astype(jnp.int32)
    pick = {f: jnp.broadcast_to(jnp.asarray(getattr(tilt, f)), (k,))[b] for f in FIELDS}
    return dataclasses.replace(tilt, **pick), b


def per_bucket(tilt: TiltParams, values: dict) -> dict:
    """A step's ``values`` (fields of a :class:`TiltInfo` but the log ratio) made
    :func:`n_buckets` long: each value in its bucket ``values['bucket']``, 0 in the others."""
    k = n_buckets(tilt)
    b = values.pop("bucket")
    one = jax.nn.one_hot(b, k, dtype=jnp.float64)
    return {name: one * jnp.asarray(v, jnp.float64) for name, v in values.items()}


def neutral(k: int, bucket_s: float = 0.0, against_position: bool = False) -> TiltParams:
    """The nominal law written as a tilt of ``k`` time buckets of ``bucket_s`` seconds."""
    if k == 1:
        return TiltParams(against_position=against_position)
    ones, zeros = np.ones(k), np.zeros(k)
    return TiltParams(
        ones, zeros, ones, zeros, zeros, zeros, bucket_s=float(bucket_s), against_position=against_position
    )


def facing(tilt: TiltParams, position: jax.Array) -> TiltParams:
    """``tilt`` with ``side`` the sign of ``position`` (base units, the first asset's), for a
    tilt ``against_position``."""
    return dataclasses.replace(tilt, side=jnp.sign(position[0]).astype(jnp.float64))


def from_dict(values: dict) -> TiltParams:
    """A tilt from a mapping of its fields (a list: one value per time bucket)."""
    return TiltParams(
        **{f: np.asarray(v, float) if isinstance(v, (list, tuple)) else v for f, v in values.items() if f != "side"}
    )


def as_dict(tilt: TiltParams) -> dict:
    """The tilt as JSON-ready numbers (lists with several time buckets)."""
    out = {}
    for f in (*FIELDS, "bucket_s"):
        v = np.asarray(getattr(tilt, f), float)
        out[f] = float(v) if v.size == 1 else v.reshape(-1).tolist()
    return {**out, "against_position": bool(tilt.against_position)}


class TiltInfo(NamedTuple):
    """One step's change of measure (float64, summed over assets and sides): the log ratio a
    scalar, every statistic a ``(K,)`` vector over the tilt's time buckets (0 but in the step's)."""

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
    liq_busy_z: jax.Array  # the busy liquidation sides' (tilted) count scores, summed
    liq_busy_n: jax.Array  # the busy sides tilted
    var_z: jax.Array  # the step's (tilted) variance normal
    var_n: jax.Array  # 1 per step (the normals drawn)


#: The tilt's statistics a path carries (every TiltInfo field but the log likelihood ratio).
N_STATS = 13


def zero(k: int = 1) -> TiltInfo:
    """No change of measure yet, with statistics over ``k`` time buckets."""
    z = jnp.zeros((k,), jnp.float64)
    return TiltInfo(jnp.zeros((), jnp.float64), *(z for _ in TiltInfo._fields[1:]))


def shift_normal(z: jax.Array, theta: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``z + theta`` (the N(theta, 1) draw made from the N(0, 1) draw ``z``), its log likelihood
    ratio ``-theta (z + theta) + theta^2 / 2`` (float64, summed) and the shifted draw's sum."""
    th = jnp.asarray(theta, jnp.float64)
    zt = z.astype(jnp.float64) + th
    return (zt.astype(z.dtype), jnp.sum(-th * zt + 0.5 * th * th), jnp.sum(zt))
