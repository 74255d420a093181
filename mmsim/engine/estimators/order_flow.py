"""Order-flow estimator: recursive bivariate Hawkes intensities and flow imbalance (spec Part 5).

Equations, units, the discretisation over a step and the known biases: ``docs/MODEL.md``, section 3.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import expm

from mmsim import distributions as dist
from mmsim import observation as _obs
from mmsim._pytree import Check, pytree_dataclass, to_plain
from mmsim.engine.estimators import _ewma

_EXCITATION_FIELDS = ("alpha_buy", "alpha_sell", "gamma")


@pytree_dataclass
class OrderFlowEstParams:
    """Order-flow estimator parameters; each field is a scalar or a per-asset ``(A,)`` array.

    The Hawkes fields have the meaning and units of the world's
    :class:`mmsim.world.processes.order_flow.FlowParams` (calibrated by Part 13).

    Attributes:
        mu_buy: baseline intensity of buy market orders, per second.
        mu_sell: baseline intensity of sell market orders, per second.
        alpha_buy: buy self-excitation: buy-intensity jump per buy, per second.
        alpha_sell: sell self-excitation: sell-intensity jump per sell, per second.
        gamma: cross-excitation: intensity jump of one side per trade of the other, per second.
        beta: decay rate of the excitation, per second.
        imbalance_half_life_s: half-life of the volume-imbalance EWMA, seconds.
    """

    mu_buy: jax.Array | float = 0.5
    mu_sell: jax.Array | float = 0.5
    alpha_buy: jax.Array | float = 0.6
    alpha_sell: jax.Array | float = 0.6
    gamma: jax.Array | float = 0.1
    beta: jax.Array | float = 1.0
    imbalance_half_life_s: jax.Array | float = _ewma.per_update_to_half_life(0.99, 1.0)

    def validate(self) -> None:
        c = Check(self)
        c.nonneg("mu_buy", "baseline buy intensity, per second")
        c.nonneg("mu_sell", "baseline sell intensity, per second")
        c.nonneg("alpha_buy", "buy self-excitation, per second per trade")
        c.nonneg("alpha_sell", "sell self-excitation, per second per trade")
        c.nonneg("gamma", "cross-excitation, per second per trade")
        c.positive("beta", "excitation decay rate, per second")
        c.positive("imbalance_half_life_s", "EWMA half-life, seconds")
        rho = spectral_radius(self)
        if not np.all(rho < 1.0):
            shown = to_plain(rho)
            c.fail(
                "alpha_buy",
                "spectral radius of the branching matrix [[alpha_buy, gamma], "
                f"[gamma, alpha_sell]] / beta must be < 1 (it is {shown}; the flow "
                "is explosive otherwise)",
            )


class OrderFlowEst(NamedTuple):
    ex_buy: jax.Array  # (A,) buy intensity minus mu_buy, per second
    ex_sell: jax.Array  # (A,) sell intensity minus mu_sell, per second
    imbalance: jax.Array  # (A,) EWMA of (vol_buy - vol_sell) / (vol_buy + vol_sell), in [-1, 1]
    imb_gap: jax.Array  # (A,) seconds since the last observation with volume (merged into the next)


def spectral_radius(params: OrderFlowEstParams) -> np.ndarray:
    """Spectral radius of ``[[alpha_buy, gamma], [gamma, alpha_sell]] / beta`` (numpy, host side),
    dimensionless: the mean number of trades directly triggered by one trade, at the worst mix."""
    return dist.hawkes_spectral_radius(*(getattr(params, f) for f in ("alpha_buy", "alpha_sell", "gamma", "beta")))


def init(params: OrderFlowEstParams, n_assets: int, dtype=jnp.float32) -> OrderFlowEst:
    """No excitation (empty history: intensities at their baselines), no imbalance."""
    z = jnp.zeros((n_assets,), dtype)
    return OrderFlowEst(ex_buy=z, ex_sell=z, imbalance=z, imb_gap=z)


def update(params: OrderFlowEstParams, state: OrderFlowEst, obs: _obs.Observation) -> OrderFlowEst:
    """Fold one observation into the intensities and the imbalance.

    Uses ``obs.dt`` (seconds), and where ``obs.trades_valid``: ``n_buy``, ``n_sell`` (counts) and
    ``vol_buy``, ``vol_sell`` (base units). Negative counts or volumes are treated as 0.
    """
    dtype = state.ex_buy.dtype
    cast = lambda x: jnp.asarray(x).astype(dtype)  # noqa: E731
    dt = jnp.maximum(cast(obs.dt), 0.0)
    valid = obs.trades_valid
    nb = jnp.where(valid, jnp.maximum(cast(obs.n_buy), 0.0), 0.0)
    ns = jnp.where(valid, jnp.maximum(cast(obs.n_sell), 0.0), 0.0)
    decay = jnp.exp(-cast(params.beta) * dt)
    ex_b = state.ex_buy * decay + cast(params.alpha_buy) * nb + cast(params.gamma) * ns
    ex_s = state.ex_sell * decay + cast(params.alpha_sell) * ns + cast(params.gamma) * nb

    vb = jnp.maximum(cast(obs.vol_buy), 0.0)
    vs = jnp.maximum(cast(obs.vol_sell), 0.0)
    tot = vb + vs
    has = valid & (tot > 0.0) & jnp.isfinite(tot)
    ratio = jnp.clip((vb - vs) / jnp.where(has, tot, 1.0), -1.0, 1.0)
    span = state.imb_gap + dt
    imb = _ewma.update(state.imbalance, ratio, span, cast(params.imbalance_half_life_s), has)
    gap = jnp.where(has, 0.0, span)
    shape = state.ex_buy.shape
    return OrderFlowEst(
        ex_buy=jnp.broadcast_to(ex_b, shape).astype(dtype),
        ex_sell=jnp.broadcast_to(ex_s, shape).astype(dtype),
        imbalance=jnp.broadcast_to(imb, shape).astype(dtype),
        imb_gap=jnp.broadcast_to(gap, shape).astype(dtype),
    )


def traded_volume(
    rate: jax.Array, wsum: jax.Array, obs: _obs.Observation, half_life_s: jax.Array | float
) -> tuple[jax.Array, jax.Array]:
    """Traded volume per second (base units per second, ``(A,)``) as a normalised EWMA of
    half-life ``half_life_s`` seconds over the observations' public trades, and its total weight;
    unchanged where the trades part is not valid."""
    traded = jnp.where(obs.trades_valid, (obs.vol_buy + obs.vol_sell) / jnp.maximum(obs.dt, 1e-9), 0.0)
    w = _ewma.weight(obs.dt, half_life_s)
    new_wsum, g = _ewma.normalised(wsum, w)
    return (jnp.where(obs.trades_valid, rate + g * (traded - rate), rate), jnp.where(obs.trades_valid, new_wsum, wsum))


def intensity(params: OrderFlowEstParams, state: OrderFlowEst) -> tuple[jax.Array, jax.Array]:
    """``(lambda_buy, lambda_sell)``, (A,) each, trades per second: ``mu + ex``."""
    dtype = state.ex_buy.dtype
    return (
        (jnp.asarray(params.mu_buy).astype(dtype) + state.ex_buy),
        (jnp.asarray(params.mu_sell).astype(dtype) + state.ex_sell),
    )


def flow_imbalance(state: OrderFlowEst) -> jax.Array:
    """(A,) volume imbalance in [-1, 1]: positive = buy pressure, negative = sell pressure."""
    return jnp.clip(state.imbalance, -1.0, 1.0)


def expected_trades(
    params: OrderFlowEstParams, state: OrderFlowEst, horizon_s: jax.Array | float
) -> tuple[jax.Array, jax.Array]:
    """Exact expected numbers of buys and sells over the next ``horizon_s`` seconds.

    With ``m(s) = E[(lambda_buy, lambda_sell)(t + s)]``, taking expectations of the Hawkes dynamics
    ``d ex = -beta ex ds + K dN`` (``K = [[alpha_buy, gamma], [gamma, alpha_sell]]``) gives the
    linear ODE ``dm/ds = (K - beta I) m + beta mu``, ``m(0) = lambda(t)``, and the expected counts
    are ``N(h) = int_0^h m(s) ds``. The augmented state ``y = (m, 1, N)`` solves ``dy/ds = B y``
    with ``B = [[K - beta I, beta mu, 0], [0, 0, 0], [I, 0, 0]]``, so ``y(h) = expm(B h) y(0)``
    (:func:`jax.scipy.linalg.expm`, batched over assets). For small ``h`` this is the spec's
    ``lambda h``; from the stationary intensity of a univariate flow it is ``mu h / (1 - n)``.

    Args:
        horizon_s: scalar or (A,) horizon, seconds (negative is treated as 0).

    Returns:
        ``(n_buy, n_sell)``, (A,) each, expected counts (dimensionless).
    """
    dtype = state.ex_buy.dtype
    n_a = state.ex_buy.shape[0]
    vec = lambda x: jnp.broadcast_to(jnp.asarray(x).astype(dtype), (n_a,))  # noqa: E731
    beta, ab, as_, g = vec(params.beta), vec(params.alpha_buy), vec(params.alpha_sell), vec(params.gamma)
    mu_b, mu_s = vec(params.mu_buy), vec(params.mu_sell)
    h = jnp.maximum(vec(horizon_s), 0.0)
    lam_b, lam_s = intensity(params, state)
    z = jnp.zeros((n_a,), dtype)
    one = jnp.ones((n_a,), dtype)
    rows = [
        [ab - beta, g, beta * mu_b, z, z],
        [g, as_ - beta, beta * mu_s, z, z],
        [z, z, z, z, z],
        [one, z, z, z, z],
        [z, one, z, z, z],
    ]
    b = jnp.stack([jnp.stack(r, axis=-1) for r in rows], axis=-2)  # (A, 5, 5)
    e = expm(b * h[:, None, None], max_squarings=32)
    y0 = jnp.stack([lam_b, lam_s, one, z, z], axis=-1)  # (A, 5)
    y = jnp.einsum("aij,aj->ai", e, y0)
    return y[:, 3].astype(dtype), y[:, 4].astype(dtype)
