"""The engine on a recorded feed: each observation of a :class:`~mmsim.live.feed.Feed` goes through
the simulator's own ``engine.step`` (compiled once), and the paper gateway (:mod:`mmsim.live.paper`)
fills its quotes against the recorded trades. Nothing is sent anywhere. Units: seconds of exchange
time from the recording's first book update, prices in quote currency, sizes in base units."""

from __future__ import annotations

import dataclasses
import math
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
from mmsim.live.feed import Feed, Interval
from mmsim.live.guard import GuardParams
from mmsim.live.paper import Latency, Resting, latent_fills, paper_fills
from mmsim.world.processes import queue as fills


class ReplayResult(NamedTuple):
    journal: pd.DataFrame  # one row per observation
    metrics: dict
    state: engine.EngineState
    terms: pd.DataFrame | None = None  # why each quote is where it is (one row per observation)


#: Columns of the per-observation journal of a replay or a live session.
JOURNAL_COLUMNS = (
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
)


def venue_tick(tick) -> float:
    """The venue's price grid (quote currency) in float64 from a configured tick: a tick held in
    float32 is read back as the shortest decimal that float32 holds (0.1, not 0.10000000149)."""
    t = np.asarray(tick)
    value = float(np.max(t.astype(np.float64)))
    return float(str(np.float32(value))) if t.dtype == np.float32 else value


class Trader:
    """The live loop's body, for a recording and a live session alike: each observation interval
    (:class:`~mmsim.live.feed.Interval`) first fills the quote sent at the end of the previous one
    on paper against the interval's trades (:mod:`mmsim.live.paper`), then goes through the
    simulator's ``engine.step`` (compiled ahead of time here, in the simulator's parameter cast),
    which returns the next quote. Prices in quote currency, sizes in base units.

    Args:
        ep: the engine's parameters (one asset).
        depth_per_tick: base units resting per tick behind the touch, for a taker order's walk.
        dtype: the engine's float type.
        step_fn: a compiled step to reuse (default: compiled here, before the first observation).
        stale_s: an interval whose book is older than this (s) pulls the quotes.
        state: an engine state to start from (a resumed session's), default ``engine.init``.
        latency: the paper gateway's order latency (:class:`~mmsim.live.paper.Latency`; default
            none: a quote rests from the end of the interval it was sent at).
    """

    def __init__(
        self,
        ep: engine.EngineParams,
        *,
        depth_per_tick: float = 0.5,
        dtype=jnp.float32,
        step_fn=None,
        stale_s: float = GuardParams().stale_s,
        state: engine.EngineState | None = None,
        latency: Latency | None = None,
    ) -> None:
        if ep.n_assets != 1:
            raise ValueError(f"the live loop runs one asset (the feed's); the engine is configured for {ep.n_assets}")
        self.takes = pol.takes(ep.policy)
        # The simulator's parameter cast, so that live and simulation compile the same program; the
        # step is compiled here, ahead of the first observation (a live loop must not compile on a tick).
        self.ep = cast_floats(ep, dtype)
        self.state = state if state is not None else engine.init(self.ep, dtype)
        self.template = jax.tree_util.tree_map(np.asarray, observation.empty(1, dtype, takes=self.takes))
        t_compile = time.perf_counter()
        # engine.explain_step: engine.step's computation, with the policy's terms of each quote,
        # packed into one vector on the device (one transfer back instead of one per term).
        self.step = step_fn or jax.jit(packed_explain_step).lower(self.ep, self.state, self.template).compile()
        self.term_names = term_names(self.ep)
        self.compile_s = time.perf_counter() - t_compile
        # The venue's grid in float64 from the configured tick, not its cast: a float32 0.1 is
        # 0.10000000149, and a price rounded on that grid sits 4e-4 off the venue's at 28,000,
        # above the touch, where the paper rule would put it first in line and fill it on every sell.
        self.tick = venue_tick(ep.tick)
        self.fp = fills.FillParams(depth_per_tick=depth_per_tick)
        self.stale_s = stale_s
        self.np_dtype = np.dtype(jnp.dtype(dtype).name)
        self.bid_rest, self.ask_rest = Resting(), Resting()
        self.latency = latency or Latency()
        self.rng = np.random.default_rng(self.latency.seed)
        self.lag_s = 0.0  # the latency of the quote now on its way (drawn when it is sent)
        self.bid_left = self.ask_left = 0.0  # base units left of the resting orders
        self.quote: dict | None = None
        self.terms: dict | None = None  # why the last quote is where it is (engine.explain_step)
        self.sent: Interval | None = None  # the interval whose end the quote was sent at
        self.n = 0  # observations so far
        self.n_stale = 0

    def on_interval(
        self, iv: Interval, venue_fills: tuple[float, float, float, float] | None = None, *, hold: bool = False
    ) -> tuple:
        """One observation: paper fills of the resting quote over ``iv`` (or, from the orders
        gateway, the venue's own fills ``(bid size, bid VWAP, ask size, ask VWAP)``), the engine
        step, the next quote (``self.quote``; withdrawn when ``hold``: the session's L2 book is out
        of sync). Returns the journal row (:data:`JOURNAL_COLUMNS`)."""
        v = lambda x: np.asarray([x], self.np_dtype)  # noqa: E731   (numpy in, one transfer per call)
        scalar = lambda x: np.asarray(x, self.np_dtype)  # noqa: E731
        tp, tq, ts = iv.trade_price, iv.trade_qty, iv.trade_side
        stale = bool(iv.book_age > self.stale_s)
        self.n_stale += stale
        off = stale or hold  # no quote goes out
        fb = fa = tk = tk_px = 0.0
        quote, j = self.quote, self.sent
        fb_px = quote["bid_price"] if quote is not None else 0.0
        fa_px = quote["ask_price"] if quote is not None else 0.0
        if venue_fills is not None:
            fb, fb_px, fa, fa_px = venue_fills
        elif quote is not None and not self.latency.zero and iv.trade_time is not None:
            # A latency past the interval is capped at it: a quote is never overtaken by the next.
            tt, arrive = iv.trade_time, j.t + min(self.lag_s, iv.t - j.t)
            fb, fb_px, self.bid_rest, self.bid_left = latent_fills(
                1, quote["bid_price"], quote["bid_size"], quote["bid_active"], self.bid_rest, self.bid_left,
                j.best_bid, j.bid_size, tp, tq, ts, tt, arrive,
                self._behind(j, 1, self.bid_rest.price), self._behind(j, 1, quote["bid_price"]),
            )  # fmt: skip
            fa, fa_px, self.ask_rest, self.ask_left = latent_fills(
                -1, quote["ask_price"], quote["ask_size"], quote["ask_active"], self.ask_rest, self.ask_left,
                j.best_ask, j.ask_size, tp, tq, ts, tt, arrive,
                self._behind(j, -1, self.ask_rest.price), self._behind(j, -1, quote["ask_price"]),
            )  # fmt: skip
            tk, tk_px = self._take(quote, j)
        elif quote is not None:  # j: the book the quote was sent against
            fb, self.bid_rest = paper_fills(
                1,
                quote["bid_price"],
                quote["bid_size"],
                quote["bid_active"],
                self.bid_rest,
                j.best_bid,
                j.bid_size,
                tp,
                tq,
                ts,
                self._behind(j, 1, quote["bid_price"]),
            )
            fa, self.ask_rest = paper_fills(
                -1,
                quote["ask_price"],
                quote["ask_size"],
                quote["ask_active"],
                self.ask_rest,
                j.best_ask,
                j.ask_size,
                tp,
                tq,
                ts,
                self._behind(j, -1, quote["ask_price"]),
            )
            tk, tk_px = self._take(quote, j)
        mid = 0.5 * (iv.best_bid + iv.best_ask)
        obs = self.template._replace(
            t=scalar(iv.t),
            dt=scalar(iv.t - j.t if j is not None else iv.t),
            best_bid=v(iv.best_bid),
            best_ask=v(iv.best_ask),
            bid_size=v(iv.bid_size),
            ask_size=v(iv.ask_size),
            mid=v(mid),
            n_buy=v(iv.n_buy),
            n_sell=v(iv.n_sell),
            vol_buy=v(iv.vol_buy),
            vol_sell=v(iv.vol_sell),
            vwap_buy=v(iv.vwap_buy),
            vwap_sell=v(iv.vwap_sell),
            last_price=v(iv.last_price),
            liq_long=v(iv.liq_long),
            liq_short=v(iv.liq_short),
            funding_rate=v(iv.funding_rate),
            funding_ref=v(iv.funding_rate),
            funding_settled=np.asarray([iv.funding_settled]),
            settled_rate=v(iv.settled_rate),
            next_funding_s=v(iv.next_funding_s),
            fill_bid_size=v(fb),
            fill_bid_price=v(fb_px if fb > 0 else 0.0),
            fill_ask_size=v(fa),
            fill_ask_price=v(fa_px if fa > 0 else 0.0),
            book_valid=np.full(1, not stale),
            trades_valid=np.ones(1, bool),
            liq_valid=np.full(1, iv.liq_valid),
            funding_valid=np.full(1, iv.funding_valid),
            fills_valid=np.ones(1, bool),
        )
        if self.takes:
            obs = obs._replace(fill_take_size=v(tk), fill_take_price=v(tk_px))
        self.state, q, info, packed = self.step(self.ep, self.state, obs)
        q, info, packed = jax.device_get((q, info, packed))
        self.terms = unpack_terms(self.term_names, packed)
        quote = {f: float(np.asarray(getattr(q, f))[0]) for f in ("bid_price", "ask_price", "bid_size", "ask_size")}
        if self.tick > 0:  # an order goes out on the venue's grid (the engine rounded it in its own precision)
            quote.update(
                bid_price=round(quote["bid_price"] / self.tick) * self.tick,
                ask_price=round(quote["ask_price"] / self.tick) * self.tick,
            )
        quote.update(
            # A stale feed (no valid book for stale_s) pulls the quotes until a book arrives.
            bid_active=bool(q.bid_active[0]) and not off,
            ask_active=bool(q.ask_active[0]) and not off,
            take=float(q.take[0]) if self.takes and not off else 0.0,
        )
        self.quote, self.sent = quote, iv
        if not self.latency.zero:
            self.lag_s = self.latency.draw(self.rng)
        self.n += 1
        return (
            iv.t,
            mid,
            iv.best_bid,
            iv.best_ask,
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

    def _behind(self, j: Interval, side: int, price: float) -> float:
        """The base units the L2 book of interval ``j`` (the quote's send time) displayed at
        ``price``, behind the touch on ``side``; ``inf`` where it is not known (no L2 sample, a
        price past its reach or at or inside the touch, where the paper rule has its own)."""
        depth = j.bid_depth if side > 0 else j.ask_depth
        if depth is None or self.tick <= 0 or price <= 0:
            return math.inf
        k = int(round(side * ((j.best_bid if side > 0 else j.best_ask) - price) / self.tick))
        if 1 <= k < len(depth) and math.isfinite(depth[k]):
            return float(depth[k])
        return math.inf

    def _take(self, quote: dict, j: Interval) -> tuple[float, float]:
        """The quote's taker order, through the displayed touch of the book it was sent against,
        then the configured depth per tick behind it: (signed base units executed, average price)."""
        if not (self.takes and quote["take"] != 0):
            return 0.0, 0.0
        touch_qty = j.ask_size if quote["take"] > 0 else j.bid_size
        ex, pr = fills.take(
            np.asarray([quote["take"]]),
            np.asarray([j.best_bid]),
            np.asarray([j.best_ask]),
            np.asarray([self.tick]),
            dataclasses.replace(self.fp, touch_depth=touch_qty),
        )
        return float(ex[0]), float(pr[0])

    def pull(self) -> None:
        """Withdraw the resting quote (a stale or broken feed, a kill switch): nothing fills until
        the next observation sends a new one."""
        if self.quote is not None:
            self.quote.update(bid_active=False, ask_active=False, take=0.0)
        self.bid_rest, self.ask_rest = Resting(), Resting()
        self.bid_left = self.ask_left = 0.0


def term_names(ep) -> tuple[tuple[str, str], ...]:
    """``(name, kind)`` of the policy's terms in :func:`packed_explain_step`'s order (static: they
    depend on the policy's kind and events only), kind "b" bool, "i" int, "f" float."""
    shapes = jax.eval_shape(lambda p: pol.terms(p.policy, _inputs_like(p)), ep)
    names = [*sorted(shapes), "bid_size_limited", "ask_size_limited"]
    kind = lambda d: "b" if d == jnp.bool_ else ("i" if jnp.issubdtype(d, jnp.integer) else "f")  # noqa: E731
    return tuple((n, kind(shapes[n].dtype) if n in shapes else "f") for n in names)


def _inputs_like(p) -> pol.PolicyInputs:
    f = jnp.zeros((1,), jnp.float32)
    return pol.PolicyInputs(
        t=f[0], mid=f, tick=f, sigma=f, regime=jnp.int32(0), position=f, available_margin=f[0], margin_ratio=f[0],
        leverage=f[0], as_adjust=f, informed=f, tail_risk=f, pull_cascade=jnp.zeros((1,), bool), flow_imbalance=f,
        daily_volume=f, ready=jnp.bool_(True),
    )  # fmt: skip


def packed_explain_step(ep, state, obs):
    """:func:`mmsim.engine.explain_step` with the first asset's terms in one float64-or-float32
    vector, in :func:`_term_names` order (``unpack_terms`` reads it)."""
    new, q, info, terms = engine.explain_step(ep, state, obs)
    dtype = q.bid_price.dtype
    vec = jnp.stack([jnp.reshape(terms[n], (-1,))[0].astype(dtype) for n, _ in term_names(ep)])  # traced once
    return new, q, info, vec


def unpack_terms(names: tuple[tuple[str, str], ...], vec) -> dict:
    """The terms of :func:`packed_explain_step`'s vector as plain numbers by name (``names``:
    :func:`term_names` of the same parameters)."""
    conv = {"b": bool, "i": int, "f": float}
    return {n: conv[k](v) for (n, k), v in zip(names, np.asarray(vec).tolist())}


def replay(
    ep: engine.EngineParams,
    feed: Feed,
    *,
    depth_per_tick: float = 0.5,
    dtype=jnp.float32,
    step_fn=None,
    stale_s: float = GuardParams().stale_s,
    latency: Latency | None = None,
) -> ReplayResult:
    """Run the engine on ``feed`` with paper fills (the live loop, one compiled ``engine.step`` per
    observation: :class:`Trader`). ``step_fn``: a compiled or jitted step to reuse; by default the
    step is compiled ahead of time, before the first observation. ``latency``: the paper
    gateway's order latency (default none)."""
    trader = Trader(ep, depth_per_tick=depth_per_tick, dtype=dtype, step_fn=step_fn, stale_s=stale_s, latency=latency)
    t_start = time.perf_counter()
    rows, terms = [], []
    for i in range(len(feed.t)):
        rows.append(trader.on_interval(feed.row(i)))
        terms.append(trader.terms)
    run_s = time.perf_counter() - t_start
    journal = pd.DataFrame(rows, columns=list(JOURNAL_COLUMNS))
    m = _metrics(trader.ep, feed_summary(feed), journal, trader.state, trader.compile_s, run_s, trader.n_stale)
    m["paper_latency"] = latency_summary(trader.latency)
    return ReplayResult(journal, m, trader.state, terms_frame(journal["t"], terms))


def latency_summary(lat: Latency) -> dict:
    """What the metrics say of the paper gateway's order latency, s."""
    if lat.samples_s:
        a = np.asarray(lat.samples_s)
        return {"law": "empirical", "samples": len(a), "median_s": float(np.median(a)), "seed": lat.seed}
    return {"law": "constant", "constant_s": lat.constant_s}


#: The order of the terms' columns: the inputs, the flags, the price terms, the size terms.
TERMS_ORDER = (
    "t", "mid", "sigma", "position", "regime", "ready", "near_liquidation", "pull_cascade", "in_event",
    "reservation", "base_spread", "as_adjust", "regime_mult", "liq_mult", "half_spread", "flow_adjust",
    "spread", "bid_offset", "ask_offset", "fixed_spread",
    "margin_size", "volume_size", "size_mult", "bid_size_mult", "ask_size_mult", "bid_size_limited", "ask_size_limited",
)  # fmt: skip


def terms_frame(t, terms: list[dict]) -> pd.DataFrame:
    """The quotes' terms (:func:`mmsim.engine.policy.terms`), one row per observation at time ``t`` (s)."""
    d = pd.DataFrame(terms).assign(t=np.asarray(t, float))
    return d[[c for c in TERMS_ORDER if c in d] + sorted(c for c in d if c not in TERMS_ORDER)]


def feed_summary(feed: Feed) -> dict:
    """What the metrics say of a feed: cadence, duration, start, trade count, quality, symbol."""
    n = len(feed.t)
    return {
        # An event-driven feed's cadence is its mean spacing.
        "cadence_s": float(feed.t[-1] / n)
        if feed.on_book
        else float(feed.t[1] - feed.t[0])
        if n > 1
        else float(feed.t[0]),
        "cadence": "book" if feed.on_book else "clock",
        "duration_s": float(feed.t[-1]),
        "start_epoch_s": feed.t0,
        "trades": int(feed.trade_start[-1]),
        "quality": feed.quality,
        "symbol": feed.symbol,
    }


def _metrics(ep, fs: dict, journal: pd.DataFrame, state, compile_s: float, run_s: float, n_stale: int = 0) -> dict:
    s = state.account
    eq = journal["equity"].to_numpy(float)
    peak = np.maximum.accumulate(np.concatenate([[float(np.asarray(ep.account.initial_equity))], eq]))[1:]
    comps = dict(zip(acct.PNL_COMPONENTS, np.asarray(acct.pnl_components(s), float).tolist()))
    n = len(journal)
    return {
        "observations": n,
        "cadence_s": fs["cadence_s"],
        "cadence": fs.get("cadence", "clock"),  # "book": an observation at each book update
        "duration_s": fs["duration_s"],
        "start_epoch_s": fs["start_epoch_s"],
        "trades": fs["trades"],
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
            **(fs["quality"] or {}),
            "stale_observations": n_stale,
        },
        "symbol": fs["symbol"],
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
