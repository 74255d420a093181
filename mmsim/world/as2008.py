"""The Avellaneda & Stoikov (2008) world: a coin-flip mid and exponential fill intensities.

The paper's simulation study (section 4): the mid moves ``+- sigma sqrt(dt)`` with equal
probability each step, and a resting quote at distance ``delta`` from the mid is hit with
probability ``min(1, A exp(-k delta) dt)`` per step (the ``poisson_exp`` model of
:mod:`mmsim.world.processes.queue`), one unit at a time, independently on each side and of the mid move.

It speaks the same :class:`~mmsim.observation.Observation` as the full market, so the very same
:func:`mmsim.engine.step` quotes in it (with ``EngineParams.lite``: only the price estimator runs).

Units: the paper's time unit is called a second here (``T = 1``, ``dt = 0.005``); prices in the
paper's currency (``s0 = 100``); ``sigma`` in price units per sqrt(time unit) (``2``); ``A`` per
time unit (``140``); ``k`` per price unit (``1.5``). Fills are reported at our quoted prices; the
distances are measured from the mid the quote was made against (the mid at the start of the step).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mmsim import observation, rng
from mmsim._pytree import Check, pytree_dataclass, static_field
from mmsim.observation import Observation, Quote, no_quote
from mmsim.world.processes import queue as fl

#: The observation fields this world sets (in :func:`observe` and :func:`step`); every other field
#: is :func:`mmsim.observation.empty`'s, always (no trades, liquidations or funding here).
OBS_FIELDS = (
    "t",
    "dt",
    "best_bid",
    "best_ask",
    "mid",
    "last_price",
    "book_valid",
    "fill_bid_size",
    "fill_bid_price",
    "fill_ask_size",
    "fill_ask_price",
    "fills_valid",
)


@pytree_dataclass
class AS2008Params:
    """Attributes:
    s0: initial mid, price units.
    sigma: mid volatility, price units per sqrt(time unit); each step moves +- sigma sqrt(dt).
    A: fill intensity at zero distance, per time unit.
    k: decay of the fill intensity with the distance from the mid, per price unit.
    n_assets: independent copies of the market (static; the paper has one).
    """

    s0: jax.Array | float = 100.0
    sigma: jax.Array | float = 2.0
    A: jax.Array | float = 140.0
    k: jax.Array | float = 1.5
    n_assets: int = static_field(default=1)

    def validate(self) -> None:
        c = Check(self)
        c.positive("s0", "price units")
        c.positive("sigma", "price units per sqrt(time unit)")
        c.positive("A", "fills per time unit")
        c.positive("k", "per price unit")
        c.require(isinstance(self.n_assets, int) and self.n_assets >= 1, "n_assets", "must be an integer >= 1")

    @property
    def fills(self) -> fl.FillParams:
        return fl.FillParams(A=self.A, k=self.k, model="poisson_exp")


class AS2008State(NamedTuple):
    t_index: jax.Array  # () int32 steps taken
    mid: jax.Array  # (A,) price units
    fills: fl.FillState


class AS2008Info(NamedTuple):
    mid: jax.Array  # (A,) mid at the end of the step
    regime: jax.Array  # () always -1 (no regimes in this world)
    cascade_intensity: jax.Array  # (A,) always 0 (no liquidations in this world)


def init(params: AS2008Params, dtype=jnp.float32) -> AS2008State:
    a = params.n_assets
    return AS2008State(t_index=jnp.zeros((), jnp.int32), mid=jnp.full((a,), params.s0, dtype), fills=fl.init(a, dtype))


def _book_obs(mid: jax.Array, t: jax.Array, dt) -> Observation:
    """An observation carrying only a (zero-width) book at ``mid``."""
    a = mid.shape[0]
    on = jnp.ones((a,), bool)
    return observation.empty(a, mid.dtype)._replace(
        t=jnp.asarray(t, mid.dtype),
        dt=jnp.asarray(dt, mid.dtype),
        best_bid=mid,
        best_ask=mid,
        mid=mid,
        last_price=mid,
        book_valid=on,
    )


def observe(state: AS2008State, params: AS2008Params, takes: bool = False) -> Observation:
    """The observation at t = 0, before any step (the engine quotes on it). This world has no book
    to take from, so a policy that sends taker orders is refused by the configuration."""
    return _book_obs(state.mid, 0.0, 1.0)


def truth(info: AS2008Info | None, n_assets: int, dtype) -> tuple[jax.Array, jax.Array]:
    """No regime (-1) and no liquidations (0 per second) in this world."""
    return jnp.asarray(-1, jnp.int32), jnp.zeros((n_assets,), dtype)


def step(
    key: jax.Array, state: AS2008State, params: AS2008Params, dt: float, quote: Quote | None = None
) -> tuple[AS2008State, Observation, AS2008Info]:
    """One step of ``dt`` time units: our resting ``quote`` fills against the mid of the start of the
    step, then the mid flips ``+- sigma sqrt(dt)``."""
    dtype = state.mid.dtype
    a = params.n_assets
    if quote is None:
        quote = no_quote(a, dtype)
    mid0 = state.mid
    # One hash per asset feeds the step's three draws: the fills' two uniforms are the high bits
    # of the step key's words (float32: bits 63-41 and 31-9 of word i; float64: bits 63-12 of
    # words 2i, 2i + 1) and the mid's fair coin is bit 0 of word i, which no uniform uses. The
    # bits of one SplitMix64 output are independent for this purpose (a coin and two uniforms; the
    # test suite checks the model's moments against an independent numpy Monte Carlo).
    fstate, f = fl.resolve(
        key,
        state.fills,
        params.fills,
        quote,
        dt,
        mid_before=mid0,
        best_bid_before=mid0,
        best_ask_before=mid0,
        best_bid_after=mid0,
        best_ask_after=mid0,
        mid_after=mid0,
        sell_volume=jnp.zeros_like(mid0),
        buy_volume=jnp.zeros_like(mid0),
        tick=jnp.zeros_like(mid0),
    )
    up = (rng.bits(key, a) & np.uint64(1)) == np.uint64(1)
    mid = mid0 + jnp.where(up, 1.0, -1.0).astype(dtype) * jnp.asarray(params.sigma * np.sqrt(dt), dtype)
    t = (state.t_index + 1).astype(dtype) * jnp.asarray(dt, dtype)
    obs = _book_obs(mid, t, dt)._replace(
        fill_bid_size=f.bid_size,
        fill_bid_price=f.bid_price,
        fill_ask_size=f.ask_size,
        fill_ask_price=f.ask_price,
        fills_valid=jnp.ones((a,), bool),
    )
    info = AS2008Info(mid=mid, regime=jnp.asarray(-1, jnp.int32), cascade_intensity=jnp.zeros_like(mid))
    return AS2008State(t_index=state.t_index + 1, mid=mid, fills=fstate), obs, info


def average_spread(gamma: float, sigma: float, k: float, horizon: float, dt: float) -> float:
    """Time average of the inventory strategy's spread ``gamma sigma^2 (T - t) + (2/gamma) ln(1 + gamma/k)``
    over the quoting times ``t = 0, dt, .., T - dt`` (the paper's symmetric benchmark uses it)."""
    t = np.arange(int(round(horizon / dt))) * dt
    return float(np.mean(gamma * sigma**2 * (horizon - t) + 2.0 / gamma * np.log1p(gamma / k)))
