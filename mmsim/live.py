"""The live side of "two worlds, one engine": exchange messages > Observation > ``engine.step`` > quote.

This version has no exchange connector (no websocket feed, no order gateway). What it has is the
adapter and a paper gateway, run on a recorded websocket capture (:func:`mmsim.data.read_capture`):
``mmsim live --replay CAPTURE`` feeds the recording, at a fixed cadence, through the very
``engine.step`` the simulator runs (jitted once, called once per observation, as a live loop would)
and fills its quotes on paper against the recorded trades. Nothing is sent anywhere.

The adapter (:func:`feed_from_capture`): the recording is cut into intervals of ``cadence_s``
seconds (exchange time); the observation at the end of an interval carries the last top of book at
or before that time (``bookTicker``), the interval's public trades by aggressor side (counts,
volumes, VWAPs, last price), its liquidation fills (Binance trades of type ``INSURANCE_FUND``; the
liquidation part is invalid for captures without trade types) and the funding rate of the
``markPriceUpdate`` stream where the capture has one (a settlement when ``next_funding_time``
passes; a capture holds one venue, so the reference venue's rate is the same rate). An interval
without a book update repeats the last book.

The paper gateway (:func:`paper_fills`): our quote, sent at the end of interval ``i - 1``, rests
through interval ``i``. A bid fills in full when an aggressive sell trades below its price, and by
the volume that trades at its price beyond the queue ahead of it otherwise; the ask likewise. The
queue ahead when the quote joins a level is the displayed size at the touch when the quote is at
the best price, 0 when it improves it, and unknown (fills only when traded through) when it rests
behind it; a quote left at the same price keeps its place, and its queue shrinks by the volume
traded at that price and to at most the displayed size while it is at the touch; after a
partial fill the rest is first in line. Our prices go out on the venue's tick grid (the engine's
own rounding, redone in float64). Fills are at our price; the account charges the maker fee. A
taker order (a policy flattening into a scheduled event) executes at the touch seen when it was
sent, through the displayed size and then ``market.fills.depth_per_tick`` per tick
(:func:`mmsim.fills.take`). Our orders do not move the recorded market and reach it without
latency. A paper fill is a model of a small order's
execution (cautious about the queue ahead, blind to our own impact), not a venue's matching.

Units: seconds (exchange time, from the recording's first book update), prices in quote
currency, sizes in base units.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from mmsim import account as acct
from mmsim import engine, fills, observation
from mmsim import policy as pol


class Feed(NamedTuple):
    """A recording cut into intervals; arrays of length ``n`` (one per observation) unless said."""

    t: np.ndarray            # end of each interval, s since the recording's start
    t0: float                # the recording's start, s since the Unix epoch
    best_bid: np.ndarray     # top of book at the end of the interval
    best_ask: np.ndarray
    bid_size: np.ndarray     # base units displayed at the touch
    ask_size: np.ndarray
    n_buy: np.ndarray        # aggressive buys in the interval (count)
    n_sell: np.ndarray
    vol_buy: np.ndarray      # base units
    vol_sell: np.ndarray
    vwap_buy: np.ndarray     # 0 where none
    vwap_sell: np.ndarray
    last_price: np.ndarray   # last trade price (the mid where none)
    liq_long: np.ndarray     # base units of long positions liquidated (forced sells)
    liq_short: np.ndarray
    liq_valid: bool          # the capture marks liquidation fills
    funding_rate: np.ndarray  # per interval of the venue (0 where the capture has none)
    funding_settled: np.ndarray  # bool
    settled_rate: np.ndarray
    next_funding_s: np.ndarray
    funding_valid: bool
    # The trades themselves, sorted by time, for the paper gateway: interval i holds
    # trades [trade_start[i], trade_start[i + 1]).
    trade_price: np.ndarray
    trade_qty: np.ndarray
    trade_side: np.ndarray   # +1 aggressive buy, -1 aggressive sell
    trade_start: np.ndarray  # (n + 1,)

    @property
    def mid(self) -> np.ndarray:
        return 0.5 * (self.best_bid + self.best_ask)


def feed_from_capture(cap: dict, cadence_s: float = 1.0) -> Feed:
    """Cut a capture (:func:`mmsim.data.read_capture`'s dict) into observations every ``cadence_s``
    seconds of exchange time, from the first book update to the last event."""
    if not cadence_s > 0:
        raise ValueError(f"cadence_s = {cadence_s!r}: must be a positive number of seconds")
    inverse = [s for s in cap.get("symbols", []) if s.endswith("_perp")]
    if inverse:
        raise ValueError(f"the capture is of an inverse (COIN-M) contract {inverse}: sizes are 100-USD contracts and "
                         "PnL is in the coin, while the engine's account is linear (USDT-margined)")
    book, trades = cap["book_ticker"], cap["trades"]
    if len(book) == 0:
        raise ValueError("the capture has no top-of-book stream (bookTicker / l2Book): nothing to quote against")
    book = book.sort_values("time", kind="stable")
    trades = trades.sort_values(["time", "trade_id"], kind="stable") if len(trades) else trades
    t0 = float(book["time"].iloc[0])
    t_end = max(float(book["time"].iloc[-1]), float(trades["time"].iloc[-1]) if len(trades) else t0)
    n = max(int(np.floor((t_end - t0) / cadence_s)), 1)
    edges = t0 + cadence_s * np.arange(1, n + 1)           # interval ends, epoch s
    bt = book["time"].to_numpy(float)
    ib = np.searchsorted(bt, edges, side="right") - 1       # last book update at or before each end
    bb, ba = book["bid"].to_numpy(float)[ib], book["ask"].to_numpy(float)[ib]
    bq, aq = book["bid_qty"].to_numpy(float)[ib], book["ask_qty"].to_numpy(float)[ib]

    tt = trades["time"].to_numpy(float) if len(trades) else np.zeros(0)
    keep = tt > t0                                          # trades before the first book are dropped
    tt = tt[keep]
    px = trades["price"].to_numpy(float)[keep] if len(trades) else tt
    qty = trades["qty"].to_numpy(float)[keep] if len(trades) else tt
    side = trades["side"].to_numpy(np.int8)[keep] if len(trades) else tt.astype(np.int8)
    kind = trades["type"].to_numpy(str)[keep] if len(trades) else tt.astype(str)
    start = np.searchsorted(tt, np.concatenate([[t0], edges]), side="right")
    start[0] = 0
    idx = np.repeat(np.arange(n), np.diff(start))          # interval of each kept trade
    tt, px, qty, side, kind = (a[:start[-1]] for a in (tt, px, qty, side, kind))

    def per_interval(w):
        return np.bincount(idx, weights=w, minlength=n)[:n]

    buy, sell = side > 0, side < 0
    vol_buy, vol_sell = per_interval(qty * buy), per_interval(qty * sell)
    notional_buy, notional_sell = per_interval(px * qty * buy), per_interval(px * qty * sell)
    last = np.where(np.diff(start) > 0, px[np.maximum(start[1:] - 1, 0)] if len(px) else 0.0, 0.5 * (bb + ba))
    liq = kind == "INSURANCE_FUND"
    marks = cap.get("mark_price")
    funding_valid = marks is not None and len(marks) > 0
    rate = settled = settled_rate = next_s = np.zeros(n)
    if funding_valid:
        marks = marks.sort_values("time", kind="stable")
        im = np.searchsorted(marks["time"].to_numpy(float), edges, side="right") - 1
        ok = im >= 0
        im = np.maximum(im, 0)
        rate = np.where(ok, marks["funding_rate"].to_numpy(float)[im], 0.0)
        nxt = np.where(ok, marks["next_funding_time"].to_numpy(float)[im], np.inf)
        next_s = np.where(np.isfinite(nxt), np.maximum(nxt - edges, 0.0), 0.0)
        prev_nxt = np.concatenate([[nxt[0]], nxt[:-1]])
        settled = (nxt > prev_nxt) & ok
        prev_rate = np.concatenate([[rate[0]], rate[:-1]])
        settled_rate = np.where(settled, prev_rate, 0.0)
    return Feed(
        t=edges - t0, t0=t0, best_bid=bb, best_ask=ba, bid_size=bq, ask_size=aq,
        n_buy=per_interval(buy.astype(float)), n_sell=per_interval(sell.astype(float)),
        vol_buy=vol_buy, vol_sell=vol_sell,
        vwap_buy=np.where(vol_buy > 0, notional_buy / np.where(vol_buy > 0, vol_buy, 1.0), 0.0),
        vwap_sell=np.where(vol_sell > 0, notional_sell / np.where(vol_sell > 0, vol_sell, 1.0), 0.0),
        last_price=last, liq_long=per_interval(qty * (liq & sell)), liq_short=per_interval(qty * (liq & buy)),
        liq_valid=bool(np.any(kind != "")), funding_rate=rate, funding_settled=np.asarray(settled, bool),
        settled_rate=settled_rate, next_funding_s=next_s, funding_valid=bool(funding_valid),
        trade_price=px, trade_qty=qty, trade_side=side, trade_start=start)


class Resting(NamedTuple):
    """A paper order resting on one side: its price (0: none) and the base units ahead of it."""

    price: float = 0.0
    queue: float = 0.0


def paper_fills(side: int, price: float, size: float, active: bool, resting: Resting, touch: float,
                touch_qty: float, trade_price: np.ndarray, trade_qty: np.ndarray, trade_side: np.ndarray
                ) -> tuple[float, Resting]:
    """One side of the paper gateway over one interval (see the module docstring).

    Args:
        side: +1 our bid (filled by aggressive sells), -1 our ask (by aggressive buys).
        price, size, active: our quote on that side, sent at the start of the interval.
        resting: that side's resting order before the quote (its price and queue ahead).
        touch, touch_qty: the best price on that side and its displayed size when the quote was sent.
        trade_price, trade_qty, trade_side: the interval's public trades.

    Returns ``(filled base units, the resting order after the interval)``.
    """
    if not active or size <= 0 or price <= 0:
        return 0.0, Resting()
    # Recorded prices and our quote (rounded to the tick in float64) are both on the venue's grid:
    # a relative 1e-9 separates "at" from "through" without any float doubt.
    eps = 1e-9 * price
    if resting.price > 0 and abs(resting.price - price) <= eps:
        queue = resting.queue                                  # kept our place in the queue
    elif side * (price - touch) > eps:
        queue = 0.0                                            # improves the touch: first in line
    elif abs(price - touch) <= eps:
        queue = touch_qty                                      # joins the back of the touch
    else:
        queue = np.inf                                         # behind the touch: depth unknown
    if abs(price - touch) <= eps:
        queue = min(queue, touch_qty)
    hits = trade_side == -side                                  # aggressors on the other side
    through = np.any(hits & (side * (price - trade_price) > eps))
    at = float(np.sum(trade_qty[hits & (np.abs(trade_price - price) <= eps)]))
    if through:
        return float(size), Resting()
    filled = float(np.clip(at - queue, 0.0, size)) if np.isfinite(queue) else 0.0
    if filled >= size:
        return float(size), Resting()
    if filled > 0:
        return filled, Resting(price, 0.0)   # partly filled: the rest is first in line
    return 0.0, Resting(price, max(queue - at, 0.0))


class ReplayResult(NamedTuple):
    journal: pd.DataFrame    # one row per observation
    metrics: dict
    state: engine.EngineState


def replay(ep: engine.EngineParams, feed: Feed, *, depth_per_tick: float = 0.5, dtype=jnp.float32,
           step_fn=None) -> ReplayResult:
    """Run the engine on ``feed`` with paper fills (the live loop, one jitted ``engine.step`` per
    observation). ``step_fn``: a jitted step to reuse (it is compiled on the first call)."""
    if ep.n_assets != 1:
        raise ValueError(f"replay runs one asset (the capture's); the engine is configured for {ep.n_assets}")
    step = step_fn or jax.jit(engine.step)
    takes = pol.takes(ep.policy)
    state = engine.init(ep, dtype)
    template = jax.tree_util.tree_map(np.asarray, observation.empty(1, dtype, takes=takes))
    tick = float(np.max(np.asarray(ep.tick)))
    fp = fills.FillParams(depth_per_tick=depth_per_tick)
    n = len(feed.t)
    bid_rest, ask_rest = Resting(), Resting()
    quote = None
    rows = []
    compile_s = None
    t_start = time.perf_counter()
    dt0 = float(feed.t[0])
    np_dtype = np.dtype(jnp.dtype(dtype).name)
    v = lambda x: np.asarray([x], np_dtype)  # noqa: E731   (numpy in, one transfer per call)
    scalar = lambda x: np.asarray(x, np_dtype)  # noqa: E731
    for i in range(n):
        lo, hi = feed.trade_start[i], feed.trade_start[i + 1]
        tp, tq, ts = feed.trade_price[lo:hi], feed.trade_qty[lo:hi], feed.trade_side[lo:hi]
        fb = fa = tk = tk_px = 0.0
        if quote is not None:
            j = i - 1   # the book the quote was sent against
            fb, bid_rest = paper_fills(1, quote["bid_price"], quote["bid_size"], quote["bid_active"], bid_rest,
                                       feed.best_bid[j], feed.bid_size[j], tp, tq, ts)
            fa, ask_rest = paper_fills(-1, quote["ask_price"], quote["ask_size"], quote["ask_active"], ask_rest,
                                       feed.best_ask[j], feed.ask_size[j], tp, tq, ts)
            if takes and quote["take"] != 0:
                # Through the displayed touch, then the configured depth per tick behind it.
                touch_qty = feed.ask_size[j] if quote["take"] > 0 else feed.bid_size[j]
                ex, pr = fills.take(np.asarray([quote["take"]]), np.asarray([feed.best_bid[j]]),
                                    np.asarray([feed.best_ask[j]]), np.asarray([tick]),
                                    dataclasses.replace(fp, touch_depth=touch_qty))
                tk, tk_px = float(ex[0]), float(pr[0])
        mid = 0.5 * (feed.best_bid[i] + feed.best_ask[i])
        obs = template._replace(
            t=scalar(feed.t[i]), dt=scalar(feed.t[i] - feed.t[i - 1] if i else dt0),
            best_bid=v(feed.best_bid[i]), best_ask=v(feed.best_ask[i]), bid_size=v(feed.bid_size[i]),
            ask_size=v(feed.ask_size[i]), mid=v(mid), n_buy=v(feed.n_buy[i]), n_sell=v(feed.n_sell[i]),
            vol_buy=v(feed.vol_buy[i]), vol_sell=v(feed.vol_sell[i]), vwap_buy=v(feed.vwap_buy[i]),
            vwap_sell=v(feed.vwap_sell[i]), last_price=v(feed.last_price[i]), liq_long=v(feed.liq_long[i]),
            liq_short=v(feed.liq_short[i]), funding_rate=v(feed.funding_rate[i]), funding_ref=v(feed.funding_rate[i]),
            funding_settled=np.asarray([feed.funding_settled[i]]), settled_rate=v(feed.settled_rate[i]),
            next_funding_s=v(feed.next_funding_s[i]),
            fill_bid_size=v(fb), fill_bid_price=v(quote["bid_price"] if fb > 0 else 0.0),
            fill_ask_size=v(fa), fill_ask_price=v(quote["ask_price"] if fa > 0 else 0.0),
            book_valid=np.ones(1, bool), trades_valid=np.ones(1, bool),
            liq_valid=np.full(1, feed.liq_valid), funding_valid=np.full(1, feed.funding_valid),
            fills_valid=np.ones(1, bool))
        if takes:
            obs = obs._replace(fill_take_size=v(tk), fill_take_price=v(tk_px))
        t_call = time.perf_counter()
        state, q, info = step(ep, state, obs)
        q, info = jax.device_get((q, info))
        if compile_s is None:
            compile_s = time.perf_counter() - t_call
        quote = {f: float(np.asarray(getattr(q, f))[0]) for f in ("bid_price", "ask_price", "bid_size", "ask_size")}
        if tick > 0:   # an order goes out on the venue's grid (the engine rounded it in its own precision)
            quote.update(bid_price=round(quote["bid_price"] / tick) * tick,
                         ask_price=round(quote["ask_price"] / tick) * tick)
        quote.update(bid_active=bool(q.bid_active[0]), ask_active=bool(q.ask_active[0]),
                     take=float(q.take[0]) if takes else 0.0)
        rows.append((feed.t[i], mid, feed.best_bid[i], feed.best_ask[i], quote["bid_price"] if quote["bid_active"]
                     else np.nan, quote["ask_price"] if quote["ask_active"] else np.nan, quote["bid_size"],
                     quote["ask_size"], quote["take"], fb, fa, tk, float(info.position[0]), float(info.equity),
                     float(info.margin_ratio), int(info.regime), float(info.sigma[0])))
    run_s = time.perf_counter() - t_start - (compile_s or 0.0)
    journal = pd.DataFrame(rows, columns=["t", "mid", "best_bid", "best_ask", "bid", "ask", "bid_size", "ask_size",
                                          "take", "fill_bid", "fill_ask", "fill_take", "position", "equity",
                                          "margin_ratio", "regime", "sigma"])
    return ReplayResult(journal, _metrics(ep, feed, journal, state, compile_s or 0.0, run_s), state)


def _metrics(ep, feed, journal: pd.DataFrame, state, compile_s: float, run_s: float) -> dict:
    s = state.account
    eq = journal["equity"].to_numpy(float)
    peak = np.maximum.accumulate(np.concatenate([[float(np.asarray(ep.account.initial_equity))], eq]))[1:]
    comps = dict(zip(acct.PNL_COMPONENTS, np.asarray(acct.pnl_components(s), float).tolist()))
    n = len(journal)
    return {
        "observations": n, "cadence_s": float(feed.t[1] - feed.t[0]) if n > 1 else float(feed.t[0]),
        "duration_s": float(feed.t[-1]), "start_epoch_s": feed.t0,
        "trades": int(feed.trade_start[-1]), "pnl": float(eq[-1] - float(np.asarray(ep.account.initial_equity))),
        "pnl_decomposition": comps, "pnl_decomposition_sum": float(acct.total_pnl(s)),
        "max_drawdown": float(np.max(peak - eq)), "min_margin_ratio": float(journal["margin_ratio"].min()),
        "liquidated": bool(np.asarray(s.liquidated)), "final_position": float(journal["position"].iloc[-1]),
        "max_abs_position": float(journal["position"].abs().max()),
        "fills": {"bid": int((journal["fill_bid"] > 0).sum()), "ask": int((journal["fill_ask"] > 0).sum()),
                  "taker": int((journal["fill_take"] != 0).sum()),
                  "volume_bid": float(journal["fill_bid"].sum()), "volume_ask": float(journal["fill_ask"].sum())},
        "quoting_fraction": float(np.mean(journal["bid"].notna() | journal["ask"].notna())),
        "compile_s": compile_s, "run_s": run_s,
        "observations_per_s": n / run_s if run_s > 0 else None,
    }


def compare_with_simulation(metrics: dict, world: str, mp, ep, *, n_paths: int, dt: float, seed: int,
                            dtype=jnp.float32) -> dict:
    """Where the replay falls in the simulator's distribution for the same policy over the same
    horizon (``floor(duration / dt)`` steps of ``dt`` seconds, ``n_paths`` paths of the configured
    market): the PnL's and the fill count's quantiles, the replay's percentile, the mean PnL
    decomposition. Returns a dict for ``metrics["simulated"]``."""
    from mmsim import simulate

    n_steps = int(np.floor(metrics["duration_s"] / dt))
    if n_steps < 1:
        raise ValueError(f"the replay ({metrics['duration_s']} s) is shorter than one simulation step ({dt} s)")
    r = simulate.simulate(world, mp, ep, n_paths=n_paths, n_steps=n_steps, dt=dt, seed=seed, dtype=dtype,
                          progress=False)
    s = r.summary
    pnl = np.asarray(s.pnl, float)
    n_fills = np.asarray(s.n_fills, float).sum(axis=(1, 2))
    real_fills = metrics["fills"]["bid"] + metrics["fills"]["ask"]
    q = lambda x: {f"q{int(100 * p):02d}": float(np.quantile(x, p)) for p in (0.05, 0.5, 0.95)}  # noqa: E731
    return {
        "n_paths": n_paths, "horizon_s": n_steps * dt, "seed": seed,
        "pnl": {"mean": float(pnl.mean()), "std": float(pnl.std()), **q(pnl)},
        "replay_pnl_percentile": float(100.0 * np.mean(pnl <= metrics["pnl"])),
        "fills": {"mean": float(n_fills.mean()), **q(n_fills)},
        "replay_fills_percentile": float(100.0 * np.mean(n_fills <= real_fills)),
        "pnl_decomposition": dict(zip(metrics["pnl_decomposition"],
                                      np.asarray(s.pnl_components, float).mean(0).tolist())),
        "compile_s": r.compile_s, "run_s": r.run_s,
    }


def write_outputs(result: ReplayResult, out_dir: Path, title: str) -> list[Path]:
    """The journal (CSV), metrics.json and a figure (mid with our quotes and fills, position,
    equity) into ``out_dir``; returns the files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    j = result.journal
    files = [out_dir / "journal.csv", out_dir / "metrics.json", out_dir / "replay.png"]
    j.to_csv(files[0], index=False)
    files[1].write_text(json.dumps(result.metrics, indent=2))
    fig, ax = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    t = j["t"].to_numpy(float)
    ax[0].plot(t, j["mid"], color="k", lw=0.8, label="mid")
    ax[0].plot(t, j["bid"], color="tab:green", lw=0.7, label="our bid")
    ax[0].plot(t, j["ask"], color="tab:red", lw=0.7, label="our ask")
    fb, fa = j["fill_bid"] > 0, j["fill_ask"] > 0
    # A fill in row i is of the quote sent in row i - 1.
    ax[0].scatter(t[fb.to_numpy()], j["bid"].shift(1)[fb], marker="^", color="tab:green", s=14, label="bid filled")
    ax[0].scatter(t[fa.to_numpy()], j["ask"].shift(1)[fa], marker="v", color="tab:red", s=14, label="ask filled")
    ax[0].set_ylabel("price")
    ax[0].legend(fontsize=7, ncol=3)
    ax[1].step(t, j["position"], where="post", color="tab:blue", lw=0.9)
    ax[1].set_ylabel("position (base units)")
    ax[2].plot(t, j["equity"], color="tab:purple", lw=0.9)
    ax[2].set_ylabel("equity")
    ax[2].set_xlabel("time since the recording's start (s)")
    for a in ax:
        a.grid(alpha=0.3)
    ax[0].set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(files[2], dpi=110)
    plt.close(fig)
    return files
