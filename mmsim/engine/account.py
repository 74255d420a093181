"""Margin account of a perpetual-futures market maker: cross margin over the asset axis.

Equations, units, the discretisation over a step and the known biases: ``docs/MODEL.md``, section 10.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from mmsim import distributions as dist
from mmsim._pytree import Check, pytree_dataclass
from mmsim.observation import Observation

#: Margin ratio reported for a flat account (no maintenance requirement).
FLAT_MARGIN_RATIO = 1e6


@pytree_dataclass
class AccountParams:
    """Attributes:
    initial_equity: starting cash, quote currency.
    leverage: exchange leverage L; the initial margin of a position is notional / L.
    maintenance_margin: maintenance margin rate, fraction of notional (liquidation threshold).
    maker_fee: fee on our (maker) fills, fraction of notional; negative = rebate.
    taker_fee: fee on our taker orders' executions, fraction of notional.
    liquidation_fee: fee charged on the notional closed at liquidation, fraction.
    liquidation_slippage: adverse price of the liquidation close, fraction of mid.
    max_inventory: hard limit on |position| per asset, base units ((A,) or scalar).
    as_horizon_s: time constant of the recent-fill inventory used to attribute adverse selection.
    """

    initial_equity: jax.Array | float = 10_000.0
    leverage: jax.Array | float = 20.0
    maintenance_margin: jax.Array | float = 0.005
    maker_fee: jax.Array | float = 0.0
    taker_fee: jax.Array | float = 0.0005
    liquidation_fee: jax.Array | float = 0.005
    liquidation_slippage: jax.Array | float = 0.001
    max_inventory: jax.Array | float = 1.0
    as_horizon_s: jax.Array | float = 5.0

    def validate(self) -> None:
        c = Check(self)
        c.positive("initial_equity", "starting cash, quote currency")
        c.positive("leverage", "exchange leverage")
        c.between("maintenance_margin", 0.0, 1.0, "fraction of notional", open_lo=True)
        c.require(
            float(c.value("maintenance_margin")) < 1.0 / float(c.value("leverage")),
            "maintenance_margin",
            f"must be below the initial margin rate 1/leverage = {1.0 / float(c.value('leverage')):g}",
        )
        c.between("maker_fee", -0.01, 0.01, "fraction of notional; negative is a rebate")
        c.between("taker_fee", 0.0, 0.01, "fraction of notional")
        c.between("liquidation_fee", 0.0, 0.5, "fraction of notional")
        c.between("liquidation_slippage", 0.0, 0.5, "fraction of mid")
        c.positive("max_inventory", "base units")
        c.positive("as_horizon_s", "seconds")


class AccountState(NamedTuple):
    cash: jax.Array  # () quote currency
    position: jax.Array  # (A,) base units
    last_mid: jax.Array  # (A,) mid of the previous observation
    recent_fills: jax.Array  # (A,) base units, decaying copy of fills (adverse-selection attribution)
    alive: jax.Array  # () bool, False after a liquidation
    liquidated: jax.Array  # () bool
    liq_time: jax.Array  # () seconds (-1 if never)
    # Cumulative PnL components, quote currency.
    pnl_spread: jax.Array  # ()
    pnl_inventory: jax.Array  # ()
    pnl_adverse: jax.Array  # ()
    pnl_fees: jax.Array  # ()
    pnl_funding: jax.Array  # ()
    pnl_liquidation: jax.Array  # ()
    volume_bid: jax.Array  # (A,) base units bought on our bid
    volume_ask: jax.Array  # (A,) base units sold on our ask
    n_fills: jax.Array  # (A, 2) fills on bid, ask


class AccountInfo(NamedTuple):
    equity: jax.Array  # () quote currency
    maintenance: jax.Array  # () quote currency
    margin_ratio: jax.Array  # () equity / maintenance (liquidation at <= 1; FLAT_MARGIN_RATIO when flat)
    notional: jax.Array  # () sum |q| mid
    available_margin: jax.Array  # () max(0, equity - notional / L)
    liquidated_now: jax.Array  # () bool


def init(params: AccountParams, n_assets: int, dtype=jnp.float32) -> AccountState:
    z = jnp.zeros((), dtype)
    za = jnp.zeros((n_assets,), dtype)
    return AccountState(
        cash=jnp.asarray(params.initial_equity, dtype),
        position=za,
        last_mid=za,
        recent_fills=za,
        alive=jnp.ones((), bool),
        liquidated=jnp.zeros((), bool),
        liq_time=-jnp.ones((), dtype),
        pnl_spread=z,
        pnl_inventory=z,
        pnl_adverse=z,
        pnl_fees=z,
        pnl_funding=z,
        pnl_liquidation=z,
        volume_bid=za,
        volume_ask=za,
        n_fills=jnp.zeros((n_assets, 2), dtype),
    )


def equity(state: AccountState, mid: jax.Array) -> jax.Array:
    """Cash plus the positions marked at ``mid``, quote currency."""
    return state.cash + jnp.sum(state.position * mid)


def margins(params: AccountParams, state: AccountState, mid: jax.Array) -> AccountInfo:
    eq = equity(state, mid)
    notional = jnp.sum(jnp.abs(state.position) * mid)
    maint = jnp.sum(params.maintenance_margin * jnp.abs(state.position) * mid)
    ratio = jnp.where(maint > 0, eq / jnp.where(maint > 0, maint, 1.0), FLAT_MARGIN_RATIO)
    avail = jnp.maximum(eq - jnp.sum(jnp.abs(state.position) * mid / params.leverage), 0.0)
    return AccountInfo(
        equity=eq,
        maintenance=maint,
        margin_ratio=ratio.astype(eq.dtype),
        notional=notional,
        available_margin=avail,
        liquidated_now=jnp.zeros((), bool),
    )


def update(params: AccountParams, state: AccountState, obs: Observation) -> tuple[AccountState, AccountInfo]:
    """Apply one observation: fills, mark to market, funding, liquidation (see the module docstring)."""
    dtype = state.cash.dtype
    first = jnp.all(state.last_mid == 0)
    mid = jnp.where(obs.book_valid, obs.mid, state.last_mid)
    mid = jnp.where(first & ~obs.book_valid, 0.0, mid)
    mid_before = jnp.where(first, mid, state.last_mid)

    # 1. Fills at our prices (none once liquidated: the account is closed for good).
    take = obs.fills_valid & state.alive
    fb = jnp.where(take, obs.fill_bid_size, 0.0)
    fa = jnp.where(take, obs.fill_ask_size, 0.0)
    pb = jnp.where(take, obs.fill_bid_price, 0.0)
    pa = jnp.where(take, obs.fill_ask_price, 0.0)
    notional_fills = fb * pb + fa * pa
    cash = state.cash - jnp.sum(fb * pb) + jnp.sum(fa * pa)
    fees = jnp.sum(params.maker_fee * notional_fills)
    cash = cash - fees
    spread_cap = jnp.sum(fb * (mid_before - pb) + fa * (pa - mid_before))
    q = state.position + fb - fa
    traded = fb - fa
    if obs.fill_take_size is not None:  # static: only a policy that sends taker orders reports these
        tk = jnp.where(take, obs.fill_take_size, 0.0)
        pk = jnp.where(take, obs.fill_take_price, 0.0)
        taker_fees = jnp.sum(params.taker_fee * jnp.abs(tk) * pk)
        cash = cash - jnp.sum(tk * pk) - taker_fees
        fees = fees + taker_fees
        spread_cap = spread_cap + jnp.sum(tk * (mid_before - pk))
        q = q + tk
        traded = traded + tk

    # 2. Mark to market over the mid change, split into adverse selection and inventory.
    decay = jnp.exp(-obs.dt / params.as_horizon_s)
    y = state.recent_fills * decay + traded
    dmid = mid - mid_before
    mtm_adverse = jnp.sum(y * dmid)
    mtm_total = jnp.sum(q * dmid)

    # 3. Funding at settlement (longs pay a positive rate).
    pay = jnp.sum(jnp.where(obs.funding_settled & obs.funding_valid, q * mid * obs.settled_rate, 0.0))
    cash = cash - pay

    new = state._replace(
        cash=cash,
        position=q,
        last_mid=mid,
        recent_fills=y,
        pnl_spread=state.pnl_spread + spread_cap,
        pnl_inventory=state.pnl_inventory + (mtm_total - mtm_adverse),
        pnl_adverse=state.pnl_adverse + mtm_adverse,
        pnl_fees=state.pnl_fees - fees,
        pnl_funding=state.pnl_funding - pay,
        volume_bid=state.volume_bid + fb,
        volume_ask=state.volume_ask + fa,
        n_fills=state.n_fills + jnp.stack([fb > 0, fa > 0], axis=-1).astype(dtype),
    )

    # 4. Liquidation.
    info = margins(params, new, mid)
    breach = dist.materialise_small(
        state.alive & (jnp.sum(jnp.abs(q)) > 0) & (info.equity <= info.maintenance)
    )  # feeds every field: computed once
    close_px = mid * (1.0 - jnp.sign(q) * params.liquidation_slippage)
    liq_cost = jnp.sum(jnp.abs(q) * mid * params.liquidation_slippage) + jnp.sum(
        params.liquidation_fee * jnp.abs(q) * mid
    )
    cash_liq = cash + jnp.sum(q * close_px) - jnp.sum(params.liquidation_fee * jnp.abs(q) * mid)
    new = new._replace(
        cash=jnp.where(breach, cash_liq, new.cash),
        position=jnp.where(breach, 0.0, new.position),
        recent_fills=jnp.where(breach, 0.0, new.recent_fills),
        alive=state.alive & ~breach,
        liquidated=state.liquidated | breach,
        liq_time=jnp.where(breach, obs.t, state.liq_time).astype(dtype),
        pnl_liquidation=state.pnl_liquidation - jnp.where(breach, liq_cost, 0.0),
    )
    # After a liquidation the account is flat: its margins follow without a second pass over the
    # positions (equity = cash, no maintenance requirement), the same numbers margins() gives.
    eq_liq = new.cash
    info = AccountInfo(
        equity=jnp.where(breach, eq_liq, info.equity),
        maintenance=jnp.where(breach, 0.0, info.maintenance),
        margin_ratio=jnp.where(breach, FLAT_MARGIN_RATIO, info.margin_ratio).astype(dtype),
        notional=jnp.where(breach, 0.0, info.notional),
        available_margin=jnp.where(breach, jnp.maximum(eq_liq, 0.0), info.available_margin),
        liquidated_now=breach,
    )
    return new, info


#: The cumulative PnL components, in the order of :func:`pnl_components`.
PNL_COMPONENTS = ("spread_capture", "inventory", "adverse_selection", "fees", "funding", "liquidation")


def pnl_components(state: AccountState) -> jax.Array:
    """The cumulative PnL components stacked in :data:`PNL_COMPONENTS` order, (6,) quote currency."""
    return jnp.stack(
        [
            state.pnl_spread,
            state.pnl_inventory,
            state.pnl_adverse,
            state.pnl_fees,
            state.pnl_funding,
            state.pnl_liquidation,
        ]
    )


def total_pnl(state: AccountState) -> jax.Array:
    """Sum of the PnL components (equals equity - initial equity)."""
    return (
        state.pnl_spread
        + state.pnl_inventory
        + state.pnl_adverse
        + state.pnl_fees
        + state.pnl_funding
        + state.pnl_liquidation
    )


def limit_sizes(
    params: AccountParams,
    state: AccountState,
    info: AccountInfo,
    mid: jax.Array,
    bid_size: jax.Array,
    ask_size: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Sizes the account admits, and whether each side may be quoted at all.

    A side whose fill would take |position| beyond ``max_inventory`` is not quoted (the hard limit);
    a side that adds to |position| is cut to what the available margin carries at the exchange
    leverage (``available_margin * leverage / mid``); a dead (liquidated) account quotes nothing.
    Returns ``(bid_size, ask_size, bid_ok, ask_ok)``, shapes (A,).
    """
    q = state.position
    room_bid = params.max_inventory - q  # buying raises q
    room_ask = params.max_inventory + q  # selling lowers q
    margin_cap = info.available_margin * params.leverage / jnp.maximum(mid, 1e-12)
    cap_bid = jnp.where(q >= 0, jnp.minimum(room_bid, margin_cap), room_bid)
    cap_ask = jnp.where(q <= 0, jnp.minimum(room_ask, margin_cap), room_ask)
    bid_ok = state.alive & (bid_size > 0) & (q + bid_size <= params.max_inventory)
    ask_ok = state.alive & (ask_size > 0) & (q - ask_size >= -params.max_inventory)
    bid = jnp.clip(bid_size, 0.0, jnp.maximum(cap_bid, 0.0))
    ask = jnp.clip(ask_size, 0.0, jnp.maximum(cap_ask, 0.0))
    return bid, ask, bid_ok & (bid > 0), ask_ok & (ask > 0)
