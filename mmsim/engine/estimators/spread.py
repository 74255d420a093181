"""Spread estimator: observed spread, fair spread, spread percentile, tight/wide flags (spec Part 4).

Equations, units, the discretisation over a step and the known biases: ``docs/MODEL.md``, section 4.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mmsim import _small
from mmsim import distributions as dist
from mmsim._pytree import Check, pytree_dataclass, static_field
from mmsim.engine.estimators import _ewma
from mmsim.regimes import REGIME_SPREAD_MULT

#: Default fair-spread multipliers of the volatility regimes low, normal, high, extreme.
DEFAULT_REGIME_MULT = REGIME_SPREAD_MULT


@pytree_dataclass
class SpreadEstParams:
    """Parameters of the spread estimator.

    Attributes:
        theta0: base fair spread, fraction of mid (>= 0), scalar or (A,).
        beta_vol: fair-spread sensitivity to volatility, sqrt(second) (>= 0), scalar or (A,).
        regime_mult: (R,) or (A, R) fair-spread multiplier of each volatility regime (> 0).
        hist_half_life_s: half-life of the histogram's decay, seconds (> 0).
        tight_factor: spread is tight below this multiple of the fair spread (> 0).
        wide_factor: spread is wide above this multiple of the fair spread (>= tight_factor).
        n_bins: number of histogram bins (static, >= 2).
        bin_lo: lower edge of the first bin, fraction of mid (static, > 0).
        bin_hi: upper edge of the last bin, fraction of mid (static, > bin_lo).
    """

    theta0: jax.Array | float = 1e-4
    beta_vol: jax.Array | float = 1.0
    regime_mult: jax.Array | np.ndarray = dataclasses.field(default_factory=lambda: np.asarray(DEFAULT_REGIME_MULT))
    hist_half_life_s: jax.Array | float = _ewma.window_half_life(3600.0)
    tight_factor: jax.Array | float = 0.8
    wide_factor: jax.Array | float = 1.5
    n_bins: int = static_field(default=24)
    bin_lo: float = static_field(default=1e-6)
    bin_hi: float = static_field(default=1e-2)

    def validate(self) -> None:
        c = Check(self)
        c.nonneg("theta0", "base fair spread, fraction of mid")
        c.nonneg("beta_vol", "sqrt(second)")
        rm = c.value("regime_mult")
        c.require(
            rm.ndim in (1, 2) and rm.shape[-1] >= 1,
            "regime_mult",
            "must be an (R,) or (A, R) array of regime multipliers",
        )
        c.positive("regime_mult", "fair-spread multiplier per volatility regime")
        c.positive("hist_half_life_s", "half-life, seconds")
        c.positive("tight_factor", "multiple of the fair spread")
        c.positive("wide_factor", "multiple of the fair spread")
        c.require(
            bool(np.all(c.value("wide_factor") >= c.value("tight_factor"))), "wide_factor", "must be >= tight_factor"
        )
        c.require(isinstance(self.n_bins, int) and self.n_bins >= 2, "n_bins", "must be an integer >= 2")
        c.require(
            isinstance(self.bin_lo, (int, float)) and 0 < self.bin_lo < np.inf,
            "bin_lo",
            "must be a finite float > 0 (fraction of mid)",
        )
        c.require(
            isinstance(self.bin_hi, (int, float)) and self.bin_lo < self.bin_hi < np.inf,
            "bin_hi",
            "must be a finite float > bin_lo (fraction of mid)",
        )


class SpreadEst(NamedTuple):
    spread: jax.Array  # (A,) last valid book spread, quote currency
    spread_frac: jax.Array  # (A,) spread / mid, fraction
    fair: jax.Array  # (A,) fair spread, fraction of mid
    hist: jax.Array  # (A, n_bins) decayed histogram mass of spread_frac (sum <= 1)
    percentile: jax.Array  # (A,) decayed fraction of the history <= the current spread, [0, 1]
    tight: jax.Array  # (A,) bool
    wide: jax.Array  # (A,) bool
    since_s: jax.Array  # (A,) seconds since the last valid book
    initialised: jax.Array  # (A,) bool: a valid book has been seen


def bin_edges(params: SpreadEstParams) -> np.ndarray:
    """(n_bins + 1,) log-spaced bin edges, fraction of mid (host numpy, float64)."""
    return np.geomspace(params.bin_lo, params.bin_hi, params.n_bins + 1)


def init(params: SpreadEstParams, n_assets: int, dtype=jnp.float32) -> SpreadEst:
    """Empty history; percentile 0.5 and no flags before the first valid book."""
    z = jnp.zeros((n_assets,), dtype)
    f = jnp.zeros((n_assets,), bool)
    return SpreadEst(
        spread=z,
        spread_frac=z,
        fair=z,
        hist=jnp.zeros((n_assets, params.n_bins), dtype),
        percentile=jnp.full((n_assets,), 0.5, dtype),
        tight=f,
        wide=f,
        since_s=z,
        initialised=f,
    )


def fair_spread(params: SpreadEstParams, sigma: jax.Array, regime: jax.Array, dtype) -> jax.Array:
    """(A,) fair spread ``(theta0 + beta_vol sigma) regime_mult[regime]``, fraction of mid;
    ``sigma`` (A,) in log-price per sqrt(second), ``regime`` () int."""
    rm = jnp.asarray(params.regime_mult, dtype)
    idx = jnp.clip(jnp.asarray(regime, jnp.int32), 0, rm.shape[-1] - 1)
    mult = _small.take_last(rm, idx)
    return (jnp.asarray(params.theta0, dtype) + jnp.asarray(params.beta_vol, dtype) * jnp.asarray(sigma, dtype)) * mult


def update(params: SpreadEstParams, state: SpreadEst, obs, sigma: jax.Array, regime: jax.Array) -> SpreadEst:
    """Fold one observation into the state.

    Args:
        params: :class:`SpreadEstParams`.
        state: :class:`SpreadEst`.
        obs: :class:`~mmsim.observation.Observation`: ``best_bid``, ``best_ask``, ``mid`` (A,)
            quote currency where ``book_valid``; ``dt`` seconds.
        sigma: (A,) current volatility, log-price per sqrt(second) (``volatility.sigma``).
        regime: () int volatility regime (``VolEst.regime``).
    """
    dtype = state.spread.dtype
    n_bins = params.n_bins
    bid = jnp.asarray(obs.best_bid, dtype)
    ask = jnp.asarray(obs.best_ask, dtype)
    mid = jnp.asarray(obs.mid, dtype)
    spread = ask - bid
    ok = jnp.asarray(obs.book_valid) & jnp.isfinite(spread) & jnp.isfinite(mid) & (mid > 0) & (spread >= 0)
    spread = jnp.where(ok, spread, state.spread)
    frac = jnp.where(ok, spread / jnp.where(ok, mid, 1.0), state.spread_frac)
    dt = state.since_s + jnp.asarray(obs.dt, dtype)

    # Bin and in-bin position (log scale) of the current spread.
    edges = bin_edges(params)
    log_edges = np.log(edges).astype(dtype)
    lf = jnp.log(jnp.maximum(frac, jnp.asarray(edges[0] * 1e-3, dtype)))
    # Everything per bin on (A,) arrays, bin by bin (the bin axis is short and trailing: a
    # reduction, gather or vector op over it is slow on CPU, see _small): the bin k of the
    # current spread, its edges, then the decayed histogram and its three sums in one pass.
    k = jnp.zeros(lf.shape, jnp.int32)  # (A,) in [0, n_bins - 1]
    for e in log_edges[1:-1]:
        k = k + (lf >= e).astype(jnp.int32)
    k = dist.materialise(k)  # used by every bin: computed once (XLA would copy it into each)
    lo = _small.take_last(jnp.asarray(log_edges[:-1]), k)
    hi = _small.take_last(jnp.asarray(log_edges[1:]), k)
    pos = jnp.clip((lf - lo) / (hi - lo), 0.0, 1.0)

    w = _ewma.weight(dt, jnp.asarray(params.hist_half_life_s, dtype))[:, None]
    bins = jnp.arange(n_bins)[None, :]
    hist = jnp.where(ok[:, None], state.hist * (1.0 - w) + jnp.where(bins == k[:, None], w, 0.0), state.hist)
    below = in_bin = total = jnp.zeros_like(lf)
    for b in range(n_bins):
        h = hist[:, b]
        below = below + jnp.where(b < k, h, 0.0)
        in_bin = in_bin + jnp.where(b == k, h, 0.0)
        total = total + h
    has = total > 0
    pct = jnp.where(has, (below + pos * in_bin) / jnp.where(has, total, 1.0), 0.5)
    pct = jnp.where(ok, jnp.clip(pct, 0.0, 1.0), state.percentile)

    initialised = state.initialised | ok
    fair = fair_spread(params, sigma, regime, dtype)
    tight = initialised & (frac < jnp.asarray(params.tight_factor, dtype) * fair)
    wide = initialised & (frac > jnp.asarray(params.wide_factor, dtype) * fair)
    return SpreadEst(
        spread=spread,
        spread_frac=frac,
        fair=fair,
        hist=hist,
        percentile=pct,
        tight=tight,
        wide=wide,
        since_s=jnp.where(ok, jnp.zeros_like(dt), dt),
        initialised=initialised,
    )


def percentile_error_bound(params: SpreadEstParams, state: SpreadEst) -> jax.Array:
    """(A,) bound on the quantisation error of ``percentile``: the mass of the current spread's
    bin over the total mass (the exact decayed percentile lies within this of the estimate)."""
    dtype = state.hist.dtype
    log_edges = jnp.asarray(np.log(bin_edges(params)), dtype)
    lf = jnp.log(jnp.maximum(state.spread_frac, jnp.asarray(params.bin_lo * 1e-3, dtype)))
    k = jnp.sum(lf[:, None] >= log_edges[None, 1:-1], axis=1)
    total = jnp.sum(state.hist, axis=1)
    in_bin = jnp.take_along_axis(state.hist, k[:, None], axis=1)[:, 0]
    return jnp.where(total > 0, in_bin / jnp.where(total > 0, total, 1.0), 1.0)
