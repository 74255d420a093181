"""The market maker: estimators > policy > account, one pure step shared by simulation and live.

Equations, units, the discretisation over a step and the known biases: ``docs/MODEL.md``, section 12.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from mmsim._pytree import Check, pytree_dataclass, static_field
from mmsim.engine import account as acct
from mmsim.engine import policy as pol
from mmsim.engine.estimators import _ewma
from mmsim.engine.estimators import adverse_selection as e_adv
from mmsim.engine.estimators import correlation as e_corr
from mmsim.engine.estimators import funding as e_fund
from mmsim.engine.estimators import inventory as e_inv
from mmsim.engine.estimators import liquidation as e_liq
from mmsim.engine.estimators import order_flow as e_flow
from mmsim.engine.estimators import price as e_price
from mmsim.engine.estimators import queue as e_queue
from mmsim.engine.estimators import spread as e_spread
from mmsim.engine.estimators import volatility as e_vol
from mmsim.observation import Observation


@pytree_dataclass
class EngineParams:
    """Attributes:
    price, vol, spread, flow, liquidation, funding, correlation, inventory, adverse, queue:
        the estimators' params.
    policy: quote function and its (tunable) parameters.
    account: margin account.
    tick: (A,) or scalar price tick, quote currency.
    warmup_s: seconds of observations before the first quote (estimators warm up).
    volume_half_life_s: half-life of the traded-volume rate behind ``daily_volume``, seconds.
    n_assets: number of assets (static).
    lite: skip all estimators but the price (static).
    """

    policy: pol.PolicyParams
    account: acct.AccountParams
    price: e_price.PriceEstParams = e_price.PriceEstParams()
    vol: e_vol.VolEstParams = e_vol.VolEstParams()
    spread: e_spread.SpreadEstParams = e_spread.SpreadEstParams()
    flow: e_flow.OrderFlowEstParams = e_flow.OrderFlowEstParams()
    liquidation: e_liq.LiquidationEstParams = e_liq.LiquidationEstParams()
    funding: e_fund.FundingEstParams = e_fund.FundingEstParams()
    correlation: e_corr.CorrEstParams = e_corr.CorrEstParams()
    inventory: e_inv.InventoryEstParams = e_inv.InventoryEstParams()
    adverse: e_adv.AdverseSelectionEstParams = e_adv.AdverseSelectionEstParams()
    queue: e_queue.QueueEstParams = e_queue.QueueEstParams()
    tick: jax.Array | float = 0.1
    warmup_s: jax.Array | float = 60.0
    volume_half_life_s: jax.Array | float = _ewma.window_half_life(3600.0)
    n_assets: int = static_field(default=1)
    lite: bool = static_field(default=False)

    def validate(self) -> None:
        c = Check(self)
        c.nonneg("tick", "price tick (0: continuous prices)")
        c.nonneg("warmup_s", "seconds")
        c.positive("volume_half_life_s", "seconds")
        c.require(isinstance(self.n_assets, int) and self.n_assets >= 1, "n_assets", "must be an integer >= 1")


class EngineState(NamedTuple):
    price: e_price.PriceEst
    vol: e_vol.VolEst
    spread: e_spread.SpreadEst
    flow: e_flow.OrderFlowEst
    liquidation: e_liq.LiquidationEst
    funding: e_fund.FundingEst
    correlation: e_corr.CorrEst
    inventory: e_inv.InventoryEst
    adverse: e_adv.AdverseSelectionEst
    queue: e_queue.QueueEst
    account: acct.AccountState
    volume_rate: jax.Array  # (A,) traded volume, base units per second (normalised EWMA)
    volume_wsum: jax.Array  # (A,) its total weight
    quote: pol.Quote  # our resting quote (the last one sent)


class EngineInfo(NamedTuple):
    """Per-step diagnostics (stacked by the simulator for risk metrics and plots)."""

    equity: jax.Array  # () quote currency
    margin_ratio: jax.Array  # () equity / maintenance margin
    position: jax.Array  # (A,) base units
    spread_quoted: jax.Array  # (A,) ask - bid of our quote, quote currency (0 if a side is off)
    regime: jax.Array  # () estimated regime
    sigma: jax.Array  # (A,) estimated volatility per sqrt second
    cascade_intensity: jax.Array  # (A,) estimated liquidation intensity, per second
    alive: jax.Array  # () bool
    liquidated_now: jax.Array  # () bool
    pnl: jax.Array  # (6,) cumulative spread, inventory, adverse, fees, funding, liquidation


PNL_COMPONENTS = acct.PNL_COMPONENTS


def init(params: EngineParams, dtype=jnp.float32) -> EngineState:
    a = params.n_assets
    z = jnp.zeros((a,), dtype)
    return EngineState(
        price=e_price.init(params.price, a, dtype),
        vol=e_vol.init(params.vol, a, dtype),
        spread=e_spread.init(params.spread, a, dtype),
        flow=e_flow.init(params.flow, a, dtype),
        liquidation=e_liq.init(params.liquidation, a, dtype),
        funding=e_fund.init(params.funding, a, dtype),
        correlation=e_corr.init(params.correlation, a, dtype),
        inventory=e_inv.init(params.inventory, a, dtype),
        adverse=e_adv.init(params.adverse, a, dtype),
        queue=e_queue.init(params.queue, a, dtype),
        account=acct.init(params.account, a, dtype),
        volume_rate=z,
        volume_wsum=z,
        quote=pol.no_quote(a, dtype, take=pol.takes(params.policy)),
    )


def step(params: EngineParams, state: EngineState, obs: Observation) -> tuple[EngineState, pol.Quote, EngineInfo]:
    """One observation in, one quote out (see the module docstring)."""
    new, q, info, _ = _step(params, state, obs)
    return new, q, info


def explain_step(
    params: EngineParams, state: EngineState, obs: Observation
) -> tuple[EngineState, pol.Quote, EngineInfo, dict]:
    """:func:`step`, and why it quoted where it did: the policy's terms
    (:func:`mmsim.engine.policy.terms`) and the sizes after the account's limits
    (``bid_size_limited``, ``ask_size_limited``, base units). The state, quote and info are
    :func:`step`'s, the same computation."""
    new, q, info, (inputs, bid_sz, ask_sz) = _step(params, state, obs)
    return new, q, info, {**pol.terms(params.policy, inputs), "bid_size_limited": bid_sz, "ask_size_limited": ask_sz}


def _step(params: EngineParams, state: EngineState, obs: Observation):
    dtype = state.account.cash.dtype
    a = params.n_assets
    p = params
    price = e_price.update(p.price, state.price, obs, p.tick)
    mid = price.mid
    if p.lite:
        vol, spread, flow, liq, fund, corr, inv, adv, queue = (
            state.vol,
            state.spread,
            state.flow,
            state.liquidation,
            state.funding,
            state.correlation,
            state.inventory,
            state.adverse,
            state.queue,
        )
        volume_rate, volume_wsum = state.volume_rate, state.volume_wsum
    else:
        vol_ret = e_price.winsorised_return(p.price, state.price, price, p.tick)
        vol = e_vol.update(p.vol, state.vol, obs, vol_ret, price.fresh)
        sigma_now = e_vol.sigma(vol)
        spread = e_spread.update(p.spread, state.spread, obs, sigma_now, vol.regime)
        flow = e_flow.update(p.flow, state.flow, obs)
        liq = e_liq.update(p.liquidation, state.liquidation, obs)
        fund = e_fund.update(p.funding, state.funding, obs)
        corr = e_corr.update(p.correlation, state.correlation, obs, price.last_ret, price.fresh)
        inv = e_inv.update(p.inventory, state.inventory, obs)
        volume_rate, volume_wsum = e_flow.traded_volume(state.volume_rate, state.volume_wsum, obs, p.volume_half_life_s)

    account, ainfo = acct.update(p.account, state.account, obs)
    # The policy inputs every engine fills in the same way (the full and the lite one).
    common = dict(
        t=obs.t,
        mid=mid,
        tick=jnp.broadcast_to(jnp.asarray(p.tick, dtype), (a,)),
        position=account.position,
        available_margin=ainfo.available_margin,
        margin_ratio=ainfo.margin_ratio,
        leverage=jnp.asarray(p.account.leverage, dtype),
        ready=(obs.t >= p.warmup_s) & jnp.all(price.initialised),
    )

    if not p.lite:
        implied = jnp.sqrt(jnp.maximum(vol.rv_1h, 1e-30))
        vol_surprise = jnp.sqrt(jnp.maximum(vol.rv_1m, 0.0)) / implied - 1.0
        liq_ratio = e_liq.intensity(p.liquidation, liq) / p.liquidation.mu
        adv = e_adv.update(
            p.adverse, state.adverse, obs, e_fund.divergence(fund), vol_surprise, e_flow.flow_imbalance(flow), liq_ratio
        )
        q_prev = state.quote
        queue = e_queue.update(
            p.queue,
            state.queue,
            obs,
            q_prev.bid_price,
            q_prev.ask_price,
            jnp.stack([q_prev.bid_active, q_prev.ask_active], -1),
        )
        sigma_h = e_vol.sigma_for_horizon(p.vol, vol, p.policy.horizon_s)
        inputs = pol.PolicyInputs(
            **common,
            sigma=sigma_h,
            regime=vol.regime,
            as_adjust=e_adv.spread_adjustment(p.adverse, adv),
            informed=adv.alpha,
            tail_risk=e_liq.tail_risk_multiplier(p.liquidation, liq),
            pull_cascade=e_liq.should_pull_quotes(p.liquidation, liq),
            flow_imbalance=e_flow.flow_imbalance(flow),
            daily_volume=volume_rate * 86_400.0,
        )
        regime = vol.regime
        cascade = e_liq.intensity(p.liquidation, liq)
        sigma_est = e_vol.sigma(vol)
    else:  # the lite engine: neutral inputs for everything but the price
        zeros = jnp.zeros((a,), dtype)
        inputs = pol.PolicyInputs(
            **common,
            sigma=e_price.sigma(price),
            regime=jnp.int32(1),
            as_adjust=zeros,
            informed=zeros,
            tail_risk=jnp.ones((a,), dtype),
            pull_cascade=jnp.zeros((a,), bool),
            flow_imbalance=zeros,
            daily_volume=zeros,
        )
        regime = jnp.int32(1)
        cascade = jnp.zeros((a,), dtype)
        sigma_est = e_price.sigma(price)

    q = pol.quote(p.policy, inputs)
    bid_sz, ask_sz, bid_ok, ask_ok = acct.limit_sizes(p.account, account, ainfo, mid, q.bid_size, q.ask_size)
    zero = jnp.zeros_like(q.bid_price)
    q = pol.Quote(
        jnp.where(bid_ok, q.bid_price, zero).astype(dtype),
        jnp.where(ask_ok, q.ask_price, zero).astype(dtype),
        jnp.where(bid_ok, bid_sz, zero).astype(dtype),
        jnp.where(ask_ok, ask_sz, zero).astype(dtype),
        bid_ok,
        ask_ok,
        None if q.take is None else jnp.where(account.alive, q.take, zero).astype(dtype),
    )

    new = EngineState(
        price=price,
        vol=vol,
        spread=spread,
        flow=flow,
        liquidation=liq,
        funding=fund,
        correlation=corr,
        inventory=inv,
        adverse=adv,
        queue=queue,
        account=account,
        volume_rate=volume_rate,
        volume_wsum=volume_wsum,
        quote=q,
    )
    info = EngineInfo(
        equity=ainfo.equity,
        margin_ratio=ainfo.margin_ratio,
        position=account.position,
        spread_quoted=jnp.where(q.bid_active & q.ask_active, q.ask_price - q.bid_price, 0.0).astype(dtype),
        regime=jnp.asarray(regime, jnp.int32),
        sigma=sigma_est.astype(dtype),
        cascade_intensity=cascade.astype(dtype),
        alive=account.alive,
        liquidated_now=ainfo.liquidated_now,
        pnl=acct.pnl_components(account),
    )
    return new, q, info, (inputs, bid_sz, ask_sz)
