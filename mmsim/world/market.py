"""The world: one step of every market process, wired together, and what a market maker sees of it.

Equations, units, the discretisation over a step and the known biases: ``docs/MODEL.md``, section 12.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mmsim import distributions as dist
from mmsim import observation, rng
from mmsim._pytree import Check, pytree_dataclass, static_field
from mmsim.observation import Observation, Quote, no_quote
from mmsim.world import tilt as tilt_mod
from mmsim.world.processes import adverse_selection as adv
from mmsim.world.processes import book as bk
from mmsim.world.processes import correlation as corr
from mmsim.world.processes import funding as fund
from mmsim.world.processes import liquidation as liq
from mmsim.world.processes import order_flow as flow
from mmsim.world.processes import price as px
from mmsim.world.processes import queue as fl
from mmsim.world.processes import spread as spr
from mmsim.world.processes import volatility as vol
from mmsim.world.tilt import TiltInfo, TiltParams, shift_normal

# Stable per-process stream ids: never renumber (it would change every path's draws).
PROCESS_ID = {
    "price": 1,
    "volatility": 2,
    "order_flow": 3,
    "spread": 4,
    "adverse_selection": 5,
    "funding": 6,
    "liquidation": 7,
    "correlation": 8,
    "fills": 9,
    "book": 10,
}


@pytree_dataclass
class MarketParams:
    """All world parameters of one market (A assets on one venue).

    Attributes:
        price, vol, flow, spread, adverse, funding, liquidation, correlation: the processes' params.
        fills: how our quotes fill in the continuous book (``book.model = "continuous"``).
        book: the tick-level book (``book.model = "tick"``) or, by default, none: the continuous
            book of the spread process around the mid (the world of earlier releases).
        flow_regime_mult: (R,) multiplier of the order-flow baselines in each volatility regime.
        shock_time_s: time of a scheduled shock, seconds from the start (< 0: none).
        shock_return: (A,) or scalar log return applied to the mid at the shock.
        shock_regime: regime forced at the shock (-1: none), e.g. 3 to jump into Extreme.
        tilt: importance sampling of the liquidation and jump streams (:mod:`mmsim.world.tilt`);
            None (the default): the nominal law, and nothing of it compiled.
        n_assets: number of assets (static).
    """

    price: px.PriceParams
    vol: vol.VolParams
    flow: flow.FlowParams
    spread: spr.SpreadParams
    adverse: adv.ASParams
    funding: fund.FundingParams
    liquidation: liq.LiqParams
    correlation: corr.CorrParams
    fills: fl.FillParams
    book: bk.BookParams = dataclasses.field(default_factory=bk.BookParams)
    flow_regime_mult: jax.Array | tuple = (0.7, 1.0, 1.6, 3.0)
    shock_time_s: float = -1.0
    shock_return: jax.Array | float = 0.0
    shock_regime: int = static_field(default=-1)
    tilt: TiltParams | None = None
    n_assets: int = static_field(default=1)

    def validate(self) -> None:
        c = Check(self)
        c.positive("flow_regime_mult", "order-flow baseline multiplier per regime")
        c.finite("shock_time_s", "seconds from the start; negative for none")
        c.finite("shock_return", "log return of the scheduled shock")
        c.require(isinstance(self.n_assets, int) and self.n_assets >= 1, "n_assets", "must be an integer >= 1")
        n_reg = np.asarray(self.vol.generator).shape[0]
        c.require(
            np.shape(self.flow_regime_mult) == (n_reg,),
            "flow_regime_mult",
            f"must have one entry per volatility regime ({n_reg})",
        )
        c.require(-1 <= self.shock_regime < n_reg, "shock_regime", f"must be -1 or a regime index < {n_reg}")
        c.require(
            self.tilt is None
            or self.n_assets == 1
            or not (np.any(np.asarray(self.tilt.price_drift)) or np.any(np.asarray(self.tilt.var_drift))),
            "tilt",
            "price_drift and var_drift must be 0 with several assets (their normals are correlated)",
        )
        c.require(
            self.tilt is None or self.n_assets == 1 or not self.tilt.against_position,
            "tilt",
            "against_position needs one asset (it follows the sign of one position)",
        )
        a = self.n_assets
        c.require(np.shape(self.correlation.corr) == (a, a), "correlation", f"corr must be {a}x{a} for n_assets = {a}")
        for name in ("s0",):
            shape = np.shape(getattr(self.price, name))
            c.require(shape in ((), (a,)), "price", f"price.{name} must be a scalar or have shape ({a},)")


class WorldState(NamedTuple):
    t_index: jax.Array  # () int32, steps taken
    price: px.PriceState
    vol: vol.VolState
    flow: flow.FlowState
    spread: spr.SpreadState
    adverse: adv.ASState
    funding: fund.FundingState
    liquidation: liq.LiqState
    correlation: corr.CorrState
    fills: fl.FillState  # our resting orders: queue ahead and price (both book models)
    book: bk.BookState  # the tick book (carried unchanged by the continuous model)
    best_bid: jax.Array  # (A,) book at the end of the last step
    best_ask: jax.Array  # (A,)
    last_n_liq: jax.Array  # (A,) liquidations in the last step (drive adverse selection)


class WorldInfo(NamedTuple):
    """Ground truth of one step (the market maker never sees it; risk reports and plots do)."""

    mid: jax.Array  # (A,) mid at the end of the step, quote currency (the tick book's: (bid + ask) / 2)
    ret: jax.Array  # (A,) log return of the step
    variance: jax.Array  # (A,) variance per second at the end of the step
    regime: jax.Array  # () regime during the step
    spread: jax.Array  # (A,) book spread, price
    best_bid: jax.Array  # (A,)
    best_ask: jax.Array  # (A,)
    informed: jax.Array  # (A,) informed fraction
    funding_rate: jax.Array  # (A,) per interval
    funding_ref: jax.Array  # (A,) reference exchange, per interval
    settled: jax.Array  # () bool
    settled_rate: jax.Array  # (A,)
    flow: flow.FlowInfo
    liquidation: liq.LiqInfo
    stress: jax.Array  # () correlation stress weight
    tilt: TiltInfo | None = None  # the step's change of measure (a tilted world only)


def init(params: MarketParams, dtype=jnp.float32) -> WorldState:
    a = params.n_assets
    price = px.init(params.price, a, dtype)
    latent = px.mid(price, params.price).astype(dtype)
    return WorldState(
        t_index=jnp.zeros((), jnp.int32),
        price=price,
        vol=vol.init(params.vol, a, dtype),
        flow=flow.init(params.flow, a, dtype),
        spread=spr.init(params.spread, a, dtype),
        adverse=adv.init(params.adverse, a, dtype),
        funding=fund.init(params.funding, a, dtype),
        liquidation=liq.init(params.liquidation, a, dtype),
        correlation=corr.init(params.correlation, a, dtype),
        fills=fl.init(a, dtype),
        book=bk.init(params.book, latent, _tick(params, a), dtype),
        best_bid=jnp.zeros((a,), dtype),
        best_ask=jnp.zeros((a,), dtype),
        last_n_liq=jnp.zeros((a,), dtype),
    )


def _tick(params: MarketParams, a: int) -> jax.Array:
    return jnp.broadcast_to(jnp.asarray(params.spread.tick), (a,))


def _ticked(params: MarketParams) -> bool:
    return params.book.model == "tick"


def initial_book(world: WorldState, params: MarketParams) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(mid, best bid, best ask) of the initial state, before any step."""
    dtype = world.price.x.dtype
    if _ticked(params):
        tick = _tick(params, params.n_assets)
        bid, ask = bk.prices(world.book, tick, dtype)
        return bk.mid(world.book, tick, dtype), bid, ask
    mid = dist.materialise_small(px.mid(world.price, params.price).astype(dtype))
    sp = spr.book_spread(world.spread.s, mid, params.spread.tick)
    bid, ask = spr.best_bid_ask(mid, sp, params.spread.tick)
    return mid, bid.astype(mid.dtype), ask.astype(mid.dtype)


#: Every observation field is set by this world (trades, liquidations, funding and fills included).
OBS_FIELDS = None


def observe(world: WorldState, params: MarketParams, takes: bool = False) -> Observation:
    """The observation at t = 0 (book only), on which the engine makes its first quote; ``takes``:
    with the taker-fill fields of a policy that sends taker orders."""
    mid, bid, ask = initial_book(world, params)
    on = jnp.ones(mid.shape, bool)
    obs = observation.empty(mid.shape[0], mid.dtype, takes=takes)._replace(
        best_bid=bid, best_ask=ask, mid=mid, last_price=mid, book_valid=on
    )
    if _ticked(params):
        obs = obs._replace(bid_size=world.book.q_bid[0], ask_size=world.book.q_ask[0])
    return obs


def forget_orders(world: WorldState) -> WorldState:
    """The world with no resting order of ours remembered: the next quote is a fresh order at the
    back of its queue (for probes that send a new quote every step)."""
    return world._replace(fills=fl.init(world.fills.queue.shape[0], world.fills.queue.dtype))


def truth(info: WorldInfo | None, n_assets: int, dtype) -> tuple[jax.Array, jax.Array]:
    """The world's regime (int32) and liquidation intensity (per second, ``(A,)``) of a step, for
    trace figures; -1 and 0 before the first step (``info`` None)."""
    if info is None:
        return jnp.asarray(-1, jnp.int32), jnp.zeros((n_assets,), dtype)
    lam = info.liquidation.lam_long + info.liquidation.lam_short
    return jnp.asarray(info.regime, jnp.int32), lam.astype(dtype)


def step(
    key: jax.Array, world: WorldState, params: MarketParams, dt: float, quote: Quote | None = None
) -> tuple[WorldState, Observation, WorldInfo]:
    """Advance the world of one path by ``dt`` seconds (see the module docstring for the order),
    resolving our resting ``quote`` (None: not quoting) against the step's flow.

    Returns the new world, the :class:`Observation` a market maker receives for the step (book at
    the end of the step, the step's trades, liquidations, funding, our fills) and the ground truth.
    """
    k = {name: rng.fold_in(key, pid) for name, pid in PROCESS_ID.items()}
    dtype = world.price.x.dtype
    regime = world.vol.regime
    a = params.n_assets
    mid0, bid0_init, ask0_init = initial_book(world, params)
    started = world.t_index > 0
    bid0 = jnp.where(started, world.best_bid, bid0_init)
    ask0 = jnp.where(started, world.best_ask, ask0_init)
    # The book feeds the fills, the observation and, through it, every estimator: each array is
    # computed once (XLA would recompute exp(x) in every consumer).
    bid0, ask0 = dist.materialise_small((bid0, ask0))

    corr_s, corr_i = corr.step(k["correlation"], world.correlation, params.correlation, dt, regime=regime)
    z_price, z_var = corr_i.z[0], corr_i.z[1]
    t0 = world.t_index.astype(jnp.float64) * dt
    t1 = t0 + dt
    tilt = None
    if params.tilt is not None:  # the step's bucket of the tilt; the diffusion's drift tilt (one
        tilt, bucket = tilt_mod.at(params.tilt, t0)  # asset: its normal is independent)
        z_price, lr_z, sum_z = shift_normal(z_price, tilt.price_drift * tilt.side)
        # the variance's (Heston) normal; unshifted, the draw as it was (bit for bit)
        z_var_t, lr_var, sum_var = shift_normal(z_var, tilt.var_drift)
        z_var = jnp.where(tilt.var_drift != 0, z_var_t, z_var)
    shock_now = (params.shock_time_s >= 0) & (t0 <= params.shock_time_s) & (params.shock_time_s < t1)
    force = jnp.where(shock_now, params.shock_regime, -1) if params.shock_regime >= 0 else -1
    vol_s, vol_i = vol.step(k["volatility"], world.vol, params.vol, dt, z_var=z_var, force_regime=force)

    fund_s, fund_i = fund.step(k["funding"], world.funding, params.funding, dt)

    adv_s, adv_i = adv.step(
        k["adverse_selection"],
        world.adverse,
        params.adverse,
        dt,
        n_liq=world.last_n_liq,
        funding_shock=fund_i.settled.astype(dtype),
    )

    mult = jnp.asarray(params.flow_regime_mult, dtype)[regime]
    flow_s, flow_i = flow.step(
        k["order_flow"],
        world.flow,
        params.flow,
        dt,
        informed_frac=adv_s.alpha,
        baseline_mult=mult,
        imbalance=None if tilt is None else tilt.flow_imbalance * tilt.side,
    )

    liq_s, liq_i = liq.step(
        k["liquidation"],
        world.liquidation,
        params.liquidation,
        dt,
        last_ret=world.price.last_ret,
        log_price=world.price.x,
        tilt=tilt,
    )

    impact = adv.impact(params.adverse, flow_i.n_buy_informed, flow_i.n_sell_informed) + liq_i.impact
    impact = impact + jnp.where(shock_now, params.shock_return, 0.0)
    price_s, price_i = px.step(
        k["price"],
        world.price,
        params.price,
        dt,
        vol_i.int_var,
        lev_shock=vol_i.lev_shock,
        resid_var=vol_i.resid_var,
        z=z_price,
        funding_rate_per_s=fund_i.rate_per_s,
        impact=impact.astype(dtype),
        tilt=tilt,
    )
    mid = dist.materialise_small(px.mid(price_s, params.price).astype(dtype))

    # Aggressive flow of the step: market orders plus forced liquidations.
    sell_vol = flow_i.vol_sell + liq_i.vol_long
    buy_vol = flow_i.vol_buy + liq_i.vol_short
    if quote is None:
        quote = no_quote(a, dtype)
    tick = jnp.broadcast_to(params.spread.tick, (a,)).astype(dtype)
    if _ticked(params):
        # The tick book trades; the price process is the efficient price it follows.
        spr_s = world.spread
        book_s, b_i, r_price, r_ahead = bk.step(
            k["book"],
            world.book,
            params.book,
            dt,
            latent_mid=mid,
            sell_volume=sell_vol,
            buy_volume=buy_vol,
            tick=tick,
            quote=quote,
            resting_price=world.fills.price,
            resting_ahead=world.fills.queue,
        )
        bid, ask = dist.materialise_small(bk.prices(book_s, tick, dtype))
        fill_s = fl.FillState(queue=r_ahead, price=r_price)
        f = fl.Fills(
            bid_size=b_i.bid_fill,
            bid_price=jnp.where(b_i.bid_fill > 0, quote.bid_price.astype(dtype), 0.0),
            ask_size=b_i.ask_fill,
            ask_price=jnp.where(b_i.ask_fill > 0, quote.ask_price.astype(dtype), 0.0),
        )
        # Repricing takes our stale order: a public trade at our price.
        sell_vol = sell_vol + b_i.sniped_sell
        buy_vol = buy_vol + b_i.sniped_buy
        vwap_sell = bid0 - tick * b_i.vwap_ticks_sell
        vwap_buy = ask0 + tick * b_i.vwap_ticks_buy
        bid_size, ask_size = book_s.q_bid[0], book_s.q_ask[0]
        book_spread = ask - bid
        take_params = fl.FillParams(touch_depth=0.0, depth_per_tick=params.book.depth_level)
    else:
        book_s = world.book
        spr_s, spr_i = spr.step(
            k["spread"],
            world.spread,
            params.spread,
            dt,
            sigma=jnp.sqrt(vol_i.v),
            regime=regime,
            mid=mid,
            liq_volume=liq_i.vol_long + liq_i.vol_short,
        )
        bid, ask = spr.best_bid_ask(mid, spr_i.spread, params.spread.tick)
        bid, ask = dist.materialise_small((bid.astype(dtype), ask.astype(dtype)))
        fill_s, f = fl.resolve(
            k["fills"],
            world.fills,
            params.fills,
            quote,
            dt,
            mid_before=mid0,
            best_bid_before=bid0,
            best_ask_before=ask0,
            best_bid_after=bid,
            best_ask_after=ask,
            mid_after=mid,
            sell_volume=sell_vol,
            buy_volume=buy_vol,
            tick=tick,
        )
        # Aggressive orders execute at the touch they find (the book of the start of the step).
        vwap_sell, vwap_buy = bid0, ask0
        bid_size = ask_size = jnp.broadcast_to(params.fills.touch_depth, (a,)).astype(dtype)
        book_spread = spr_i.spread
        take_params = params.fills
    f = dist.materialise(f)  # the fills feed the observation and the account: computed once
    take_size = take_price = None
    if quote.take is not None:  # a taker order executes against the book of the start of the step
        take = quote.take.astype(dtype)
        if _ticked(params):
            touch = jnp.where(take > 0, world.book.q_ask[0], world.book.q_bid[0])
            take_params = dataclasses.replace(take_params, touch_depth=touch)
        take_size, take_price = fl.take(take, bid0, ask0, tick, take_params)

    new = WorldState(
        t_index=world.t_index + 1,
        price=price_s,
        vol=vol_s,
        flow=flow_s,
        spread=spr_s,
        adverse=adv_s,
        funding=fund_s,
        liquidation=liq_s,
        correlation=corr_s,
        fills=fill_s,
        book=book_s,
        best_bid=bid,
        best_ask=ask,
        last_n_liq=(liq_i.n_long + liq_i.n_short).astype(dtype),
    )
    ones = jnp.ones((a,), bool)
    n_buy = flow_i.n_buy + liq_i.n_short
    n_sell = flow_i.n_sell + liq_i.n_long
    net = buy_vol - sell_vol
    vwap_buy = jnp.where(buy_vol > 0, vwap_buy, 0.0)
    vwap_sell = jnp.where(sell_vol > 0, vwap_sell, 0.0)
    seen_mid = bk.mid(book_s, tick, dtype) if _ticked(params) else mid
    obs = Observation(
        t=(t1).astype(dtype),
        dt=jnp.asarray(dt, dtype),
        best_bid=bid,
        best_ask=ask,
        bid_size=bid_size,
        ask_size=ask_size,
        mid=seen_mid,
        n_buy=n_buy,
        n_sell=n_sell,
        vol_buy=buy_vol,
        vol_sell=sell_vol,
        vwap_buy=vwap_buy,
        vwap_sell=vwap_sell,
        last_price=jnp.where(net > 0, vwap_buy, jnp.where(net < 0, vwap_sell, seen_mid)),
        liq_long=liq_i.vol_long,
        liq_short=liq_i.vol_short,
        funding_rate=fund_i.rate,
        funding_ref=fund_i.ref_rate,
        funding_settled=jnp.broadcast_to(fund_i.settled, (a,)),
        settled_rate=fund_i.settled_rate,
        next_funding_s=jnp.broadcast_to(fund_i.time_to_settlement, (a,)).astype(dtype),
        fill_bid_size=f.bid_size,
        fill_bid_price=f.bid_price,
        fill_ask_size=f.ask_size,
        fill_ask_price=f.ask_price,
        fill_take_size=take_size,
        fill_take_price=take_price,
        book_valid=ones,
        trades_valid=ones,
        liq_valid=ones,
        funding_valid=ones,
        fills_valid=ones,
    )
    info = WorldInfo(
        mid=seen_mid,
        ret=price_i.ret,
        variance=vol_i.v,
        regime=regime,
        spread=book_spread,
        best_bid=bid.astype(dtype),
        best_ask=ask.astype(dtype),
        informed=adv_s.alpha,
        funding_rate=fund_i.rate,
        funding_ref=fund_i.ref_rate,
        settled=fund_i.settled,
        settled_rate=fund_i.settled_rate,
        flow=flow_i,
        liquidation=liq_i,
        stress=corr_i.stress,
        tilt=None
        if params.tilt is None
        else TiltInfo(
            log_lr=liq_i.tilt[0] + price_i.tilt[0] + lr_z + lr_var + flow_i.tilt[0],
            **tilt_mod.per_bucket(
                params.tilt,
                {
                    "bucket": bucket,
                    "liq_events": liq_i.tilt[1],
                    "liq_comp": liq_i.tilt[2],
                    "liq_size_e": liq_i.tilt[3],
                    "jump_events": price_i.tilt[1],
                    "jump_comp": price_i.tilt[2],
                    # oriented as the drift and the imbalance act (side 1 without orientation)
                    "price_z": sum_z * tilt.side,
                    "price_n": float(a) * jnp.abs(tilt.side),
                    "flow_z": flow_i.tilt[1] * tilt.side,
                    "flow_n": flow_i.tilt[2] * jnp.abs(tilt.side),
                    "liq_busy_z": liq_i.tilt[4],
                    "liq_busy_n": liq_i.tilt[5],
                    "var_z": sum_var,
                    "var_n": float(a),
                },
            ),
        ),
    )
    return new, obs, info


def default_params(n_assets: int = 1) -> MarketParams:
    """A calm BTCUSDT-perpetual-like market with every process on (the processes' defaults plus
    a BTC price level, tick and book). Experiments build theirs from the Hydra config instead."""
    eye = np.eye(n_assets)
    stress = np.full((n_assets, n_assets), 0.9) + 0.1 * eye
    calm = np.full((n_assets, n_assets), 0.7) + 0.3 * eye
    return MarketParams(
        price=px.PriceParams(s0=60_000.0, jump_rate=1.0 / 3600.0, jump_mean=0.0, jump_std=2e-3, martingale=True),
        vol=vol.VolParams(),
        flow=flow.FlowParams(),
        spread=spr.SpreadParams(
            theta0=2e-6, beta_vol=0.0, sigma=1e-6, jump_rate=0.01, jump_mean=5e-6, s0=2e-6, tick=0.1
        ),
        adverse=adv.ASParams(),
        funding=fund.FundingParams(),
        liquidation=liq.LiqParams(),
        correlation=corr.CorrParams(corr=calm if n_assets > 1 else eye, corr_stress=stress if n_assets > 1 else eye),
        fills=fl.FillParams(),
        n_assets=n_assets,
    )
