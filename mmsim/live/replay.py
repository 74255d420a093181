"""The engine on a recorded feed: each observation of a :class:`~mmsim.live.feed.Feed` goes through
the simulator's own ``engine.step`` (compiled once), and the paper gateway (:mod:`mmsim.live.paper`)
fills its quotes against the recorded trades. Nothing is sent anywhere. Units: seconds of exchange
time from the recording's first book update, prices in quote currency, sizes in base units."""

from __future__ import annotations

import dataclasses
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from mmsim import engine, observation
from mmsim._pytree import cast_floats
from mmsim.engine import account as acct
from mmsim.engine import policy as pol
from mmsim.live.feed import Feed
from mmsim.live.guard import GuardParams
from mmsim.live.paper import Resting, paper_fills
from mmsim.world.processes import queue as fills


class ReplayResult(NamedTuple):
    journal: pd.DataFrame  # one row per observation
    metrics: dict
    state: engine.EngineState


def replay(
    ep: engine.EngineParams,
    feed: Feed,
    *,
    depth_per_tick: float = 0.5,
    dtype=jnp.float32,
    step_fn=None,
    stale_s: float = GuardParams().stale_s,
) -> ReplayResult:
    """Run the engine on ``feed`` with paper fills (the live loop, one compiled ``engine.step`` per
    observation). ``step_fn``: a compiled or jitted step to reuse; by default the step is compiled
    ahead of time, before the first observation."""
    if ep.n_assets != 1:
        raise ValueError(f"replay runs one asset (the capture's); the engine is configured for {ep.n_assets}")
    takes = pol.takes(ep.policy)
    # The simulator's parameter cast, so that live and simulation compile the same program; the
    # step is compiled here, ahead of the first observation (a live loop must not compile on a tick).
    ep = cast_floats(ep, dtype)
    state = engine.init(ep, dtype)
    template = jax.tree_util.tree_map(np.asarray, observation.empty(1, dtype, takes=takes))
    t_compile = time.perf_counter()
    step = step_fn or jax.jit(engine.step).lower(ep, state, template).compile()
    compile_s = time.perf_counter() - t_compile
    tick = float(np.max(np.asarray(ep.tick)))
    fp = fills.FillParams(depth_per_tick=depth_per_tick)
    n = len(feed.t)
    stale = (feed.book_age > stale_s) if feed.book_age is not None else np.zeros(n, bool)
    bid_rest, ask_rest = Resting(), Resting()
    quote = None
    rows = []
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
            j = i - 1  # the book the quote was sent against
            fb, bid_rest = paper_fills(
                1,
                quote["bid_price"],
                quote["bid_size"],
                quote["bid_active"],
                bid_rest,
                feed.best_bid[j],
                feed.bid_size[j],
                tp,
                tq,
                ts,
            )
            fa, ask_rest = paper_fills(
                -1,
                quote["ask_price"],
                quote["ask_size"],
                quote["ask_active"],
                ask_rest,
                feed.best_ask[j],
                feed.ask_size[j],
                tp,
                tq,
                ts,
            )
            if takes and quote["take"] != 0:
                # Through the displayed touch, then the configured depth per tick behind it.
                touch_qty = feed.ask_size[j] if quote["take"] > 0 else feed.bid_size[j]
                ex, pr = fills.take(
                    np.asarray([quote["take"]]),
                    np.asarray([feed.best_bid[j]]),
                    np.asarray([feed.best_ask[j]]),
                    np.asarray([tick]),
                    dataclasses.replace(fp, touch_depth=touch_qty),
                )
                tk, tk_px = float(ex[0]), float(pr[0])
        mid = 0.5 * (feed.best_bid[i] + feed.best_ask[i])
        obs = template._replace(
            t=scalar(feed.t[i]),
            dt=scalar(feed.t[i] - feed.t[i - 1] if i else dt0),
            best_bid=v(feed.best_bid[i]),
            best_ask=v(feed.best_ask[i]),
            bid_size=v(feed.bid_size[i]),
            ask_size=v(feed.ask_size[i]),
            mid=v(mid),
            n_buy=v(feed.n_buy[i]),
            n_sell=v(feed.n_sell[i]),
            vol_buy=v(feed.vol_buy[i]),
            vol_sell=v(feed.vol_sell[i]),
            vwap_buy=v(feed.vwap_buy[i]),
            vwap_sell=v(feed.vwap_sell[i]),
            last_price=v(feed.last_price[i]),
            liq_long=v(feed.liq_long[i]),
            liq_short=v(feed.liq_short[i]),
            funding_rate=v(feed.funding_rate[i]),
            funding_ref=v(feed.funding_rate[i]),
            funding_settled=np.asarray([feed.funding_settled[i]]),
            settled_rate=v(feed.settled_rate[i]),
            next_funding_s=v(feed.next_funding_s[i]),
            fill_bid_size=v(fb),
            fill_bid_price=v(quote["bid_price"] if fb > 0 else 0.0),
            fill_ask_size=v(fa),
            fill_ask_price=v(quote["ask_price"] if fa > 0 else 0.0),
            book_valid=np.full(1, not stale[i]),
            trades_valid=np.ones(1, bool),
            liq_valid=np.full(1, feed.liq_valid),
            funding_valid=np.full(1, feed.funding_valid),
            fills_valid=np.ones(1, bool),
        )
        if takes:
            obs = obs._replace(fill_take_size=v(tk), fill_take_price=v(tk_px))
        state, q, info = step(ep, state, obs)
        q, info = jax.device_get((q, info))
        quote = {f: float(np.asarray(getattr(q, f))[0]) for f in ("bid_price", "ask_price", "bid_size", "ask_size")}
        if tick > 0:  # an order goes out on the venue's grid (the engine rounded it in its own precision)
            quote.update(
                bid_price=round(quote["bid_price"] / tick) * tick, ask_price=round(quote["ask_price"] / tick) * tick
            )
        quote.update(
            # A stale feed (no valid book for stale_s) pulls the quotes until a book arrives.
            bid_active=bool(q.bid_active[0]) and not stale[i],
            ask_active=bool(q.ask_active[0]) and not stale[i],
            take=float(q.take[0]) if takes and not stale[i] else 0.0,
        )
        rows.append(
            (
                feed.t[i],
                mid,
                feed.best_bid[i],
                feed.best_ask[i],
                quote["bid_price"] if quote["bid_active"] else np.nan,
                quote["ask_price"] if quote["ask_active"] else np.nan,
                quote["bid_size"],
                quote["ask_size"],
                quote["take"],
                fb,
                fa,
                tk,
                float(info.position[0]),
                float(info.equity),
                float(info.margin_ratio),
                int(info.regime),
                float(info.sigma[0]),
            )
        )
    run_s = time.perf_counter() - t_start
    journal = pd.DataFrame(
        rows,
        columns=[
            "t",
            "mid",
            "best_bid",
            "best_ask",
            "bid",
            "ask",
            "bid_size",
            "ask_size",
            "take",
            "fill_bid",
            "fill_ask",
            "fill_take",
            "position",
            "equity",
            "margin_ratio",
            "regime",
            "sigma",
        ],
    )
    return ReplayResult(journal, _metrics(ep, feed, journal, state, compile_s, run_s, int(stale.sum())), state)


def _metrics(ep, feed, journal: pd.DataFrame, state, compile_s: float, run_s: float, n_stale: int = 0) -> dict:
    s = state.account
    eq = journal["equity"].to_numpy(float)
    peak = np.maximum.accumulate(np.concatenate([[float(np.asarray(ep.account.initial_equity))], eq]))[1:]
    comps = dict(zip(acct.PNL_COMPONENTS, np.asarray(acct.pnl_components(s), float).tolist()))
    n = len(journal)
    return {
        "observations": n,
        "cadence_s": float(feed.t[1] - feed.t[0]) if n > 1 else float(feed.t[0]),
        "duration_s": float(feed.t[-1]),
        "start_epoch_s": feed.t0,
        "trades": int(feed.trade_start[-1]),
        "pnl": float(eq[-1] - float(np.asarray(ep.account.initial_equity))),
        "pnl_decomposition": comps,
        "pnl_decomposition_sum": float(acct.total_pnl(s)),
        "max_drawdown": float(np.max(peak - eq)),
        "min_margin_ratio": float(journal["margin_ratio"].min()),
        "liquidated": bool(np.asarray(s.liquidated)),
        "final_position": float(journal["position"].iloc[-1]),
        "max_abs_position": float(journal["position"].abs().max()),
        "fills": {
            "bid": int((journal["fill_bid"] > 0).sum()),
            "ask": int((journal["fill_ask"] > 0).sum()),
            "taker": int((journal["fill_take"] != 0).sum()),
            "volume_bid": float(journal["fill_bid"].sum()),
            "volume_ask": float(journal["fill_ask"].sum()),
        },
        "quoting_fraction": float(np.mean(journal["bid"].notna() | journal["ask"].notna())),
        # What the guard refused, by class, and the observations whose book was stale (quotes pulled).
        "feed_quality": {
            **(feed.quality or {}),
            "stale_observations": n_stale,
        },
        "symbol": feed.symbol,
        "compile_s": compile_s,
        "run_s": run_s,
        "observations_per_s": n / run_s if run_s > 0 else None,
    }


def compare_with_simulation(
    metrics: dict, world: str, mp, ep, *, n_paths: int, dt: float, seed: int, dtype=jnp.float32
) -> dict:
    """Where the replay falls in the simulator's distribution for the same policy over the same
    horizon (``floor(duration / dt)`` steps of ``dt`` seconds, ``n_paths`` paths of the configured
    market): the PnL's and the fill count's quantiles, the replay's percentile, the mean PnL
    decomposition. Returns a dict for ``metrics["simulated"]``."""
    from mmsim.sim import simulate

    n_steps = int(np.floor(metrics["duration_s"] / dt))
    if n_steps < 1:
        raise ValueError(f"the replay ({metrics['duration_s']} s) is shorter than one simulation step ({dt} s)")
    r = simulate.simulate(
        world, mp, ep, n_paths=n_paths, n_steps=n_steps, dt=dt, seed=seed, dtype=dtype, progress=False
    )
    s = r.summary
    pnl = np.asarray(s.pnl, float)
    n_fills = np.asarray(s.n_fills, float).sum(axis=(1, 2))
    real_fills = metrics["fills"]["bid"] + metrics["fills"]["ask"]
    q = lambda x: {f"q{int(100 * p):02d}": float(np.quantile(x, p)) for p in (0.05, 0.5, 0.95)}  # noqa: E731
    return {
        "n_paths": n_paths,
        "horizon_s": n_steps * dt,
        "seed": seed,
        "pnl": {"mean": float(pnl.mean()), "std": float(pnl.std()), **q(pnl)},
        "replay_pnl_percentile": float(100.0 * np.mean(pnl <= metrics["pnl"])),
        "fills": {"mean": float(n_fills.mean()), **q(n_fills)},
        "replay_fills_percentile": float(100.0 * np.mean(n_fills <= real_fills)),
        "pnl_decomposition": dict(
            zip(metrics["pnl_decomposition"], np.asarray(s.pnl_components, float).mean(0).tolist())
        ),
        "compile_s": r.compile_s,
        "run_s": r.run_s,
    }
