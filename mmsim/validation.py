"""``mmsim validate``: does the simulator trade like the recorded market it claims to model?

For each recorded window: the policy is replayed on the recording with the paper gateway, and the
same window (start price, tick, duration, the same engine and its warm-up, the same fees) is
simulated many times with (a) the named market and (b) a market calibrated to that window alone
(:mod:`mmsim.fit.capture`). Every statistic is computed by the same function on the recording
and on each simulated path: the market's stylised facts (:mod:`mmsim.fit.stylised`: the market
stepped without us, with probe quotes) and the policy's own (fills, markouts, PnL per fill and
per unit traded, our share of the traded volume). A recorded value is reported with its
percentile among the simulated paths; the replay's PnL and fill-count percentiles should be
uniform over many windows, which a Kolmogorov–Smirnov statistic over the windows checks.

Units: seconds, quote currency, base units; markouts in quote currency per base unit.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np

from mmsim.fit import stylised

#: Market statistics shown, in order: every stylised fact of :mod:`mmsim.fit.stylised`.
MARKET_STATS = stylised.KEYS
#: The policy's statistics, in order.
POLICY_STATS = (
    "fills_per_hour",
    "pnl",
    "markout_1s",
    "markout_10s",
    "spread_capture_per_fill",
    "adverse_selection_per_fill",
    "fees_per_fill",
    "pnl_per_volume",
    "volume_share",
)
LABELS = {
    "unchanged_mid": ("share of seconds with an unchanged mid", ""),
    "bid_falls_with_sells": ("P(bid traded through within 1 s, sells trading)", ""),
    "tick_moves_per_min": ("tick moves per minute", "ticks / min"),
    "return_kurtosis": ("kurtosis of 1-s returns", ""),
    "sigma_per_sqrt_s": ("sd of 1-s log returns", "per sqrt(s)"),
    "touch_depth_median": ("median touch depth", "base units"),
    "volume_per_s": ("traded volume", "base units / s"),
    "fill_prob_touch": ("P(fill in 1 s), 0.01 at the back of the touch", ""),
    "fill_prob_10_behind": ("P(fill in 1 s), 0.01 10 ticks behind", ""),
    "fills_per_hour": ("our fills per hour", "per h"),
    "pnl": ("our PnL", "quote"),
    "markout_1s": ("1-s markout per fill", "quote / base unit"),
    "markout_10s": ("10-s markout per fill", "quote / base unit"),
    "spread_capture_per_fill": ("spread capture per fill", "quote"),
    "adverse_selection_per_fill": ("adverse selection per fill", "quote"),
    "fees_per_fill": ("fees (rebate) per fill", "quote"),
    "pnl_per_volume": ("PnL per unit we traded", "quote / base unit"),
    "volume_share": ("our share of the traded volume", ""),
}
#: A replay percentile outside this range is flagged.
PERCENTILE_BAND = (5.0, 95.0)
#: Markout horizons, seconds.
MARKOUT_S = (1, 10)


def markouts(mid, bid, ask, position, step_s: float = 1.0, horizons=MARKOUT_S) -> dict:
    """Markouts of our fills from per-step arrays (the same on a replay's journal and on a
    simulated trace): a fill in step t is the change of position over it, at the quote sent at
    the end of step t - 1 (bought at ``bid[t-1]`` when the position rose, sold at ``ask[t-1]``
    when it fell; both sides filling in one step count as their net). The h-step markout per
    fill is ``side (mid[t + h] - price)``, quote currency per base unit, averaged over the fills
    that have h steps after them; ``horizons`` are in seconds, ``step_s`` the steps' length (a
    taker order moves the position too and is counted the same way). Returns
    ``{"markout_{h}s": value}`` (NaN without fills)."""
    mid, bid, ask, pos = (np.asarray(x, float) for x in (mid, bid, ask, position))
    dq = np.diff(pos)
    t = np.flatnonzero(np.abs(dq) > 1e-12) + 1
    out = {}
    for h_s in horizons:
        h = max(1, int(round(h_s / step_s)))
        ok = t[t + h < len(mid)]
        side = np.sign(dq[ok - 1])
        price = np.where(side > 0, bid[ok - 1], ask[ok - 1])
        m = side * (mid[ok + h] - price)
        m = m[np.isfinite(m)]
        out[f"markout_{h_s:g}s"] = float(m.mean()) if len(m) else float("nan")
    return out


def policy_stats(
    pnl: float, components: dict, n_fills: float, volume: float, market_volume: float, horizon_s: float, marks: dict
) -> dict:
    """The policy's statistics of one path or one replay: PnL and its components (quote
    currency), fills, the volume we traded and the market's traded volume (base units) over
    ``horizon_s`` seconds, and its :func:`markouts`."""
    per_fill = (lambda x: x / n_fills) if n_fills > 0 else (lambda x: float("nan"))  # noqa: E731
    return {
        "fills_per_hour": n_fills / horizon_s * 3600.0,
        "pnl": pnl,
        **marks,
        "spread_capture_per_fill": per_fill(components["spread_capture"]),
        "adverse_selection_per_fill": per_fill(components["adverse_selection"]),
        "fees_per_fill": per_fill(components["fees"]),
        "pnl_per_volume": pnl / volume if volume > 0 else float("nan"),
        "volume_share": volume / market_volume if market_volume > 0 else float("nan"),
    }


def compare(real: float, sim, ci: tuple | None = None) -> dict:
    """A recorded value against simulated ones: the simulated mean, 2.5 %/97.5 % quantiles, the
    recorded value's percentile among them (ties counted half) and whether it falls outside the
    simulated 95 % range. ``ci``: the recorded value's own 95 % interval (a block bootstrap)."""
    x = np.asarray(sim, float)
    x = x[np.isfinite(x)]
    out: dict[str, Any] = {"real": float(real), "real_ci": list(ci) if ci else None, "n_sim": int(len(x))}
    if not len(x) or not math.isfinite(real):
        return {**out, "sim_mean": float("nan"), "sim_q025": float("nan"), "sim_q975": float("nan"),
                "percentile": float("nan"), "outside": False}  # fmt: skip
    pct = 100.0 * (np.mean(x < real) + 0.5 * np.mean(x == real))
    lo, hi = float(np.quantile(x, 0.025)), float(np.quantile(x, 0.975))
    return {
        **out,
        "sim_mean": float(x.mean()),
        "sim_q025": lo,
        "sim_q975": hi,
        "percentile": float(pct),
        "outside": bool(real < lo or real > hi),
    }


def at_window(mp, mid0: float):
    """``mp`` started at a window's first mid (quote currency): the price's start and the spread
    process's one-tick start move with it (the tick is the market's)."""
    tick = np.asarray(mp.spread.tick, float)
    one = tick / mid0
    price = dataclasses.replace(mp.price, s0=np.full_like(np.asarray(mp.price.s0, float), mid0))
    spread = dataclasses.replace(mp.spread, s0=np.broadcast_to(one, np.shape(mp.spread.s0)).copy())
    return dataclasses.replace(mp, price=price, spread=spread)


def _facts(
    world: str, mp, n_paths: int, n_steps: int, tick: float, seed: int, *, behind=True, dtype=None, every: int = 1
):
    """The stylised facts of ``n_paths`` simulated windows of ``n_steps`` 1-s intervals (the
    market alone, with probe quotes at the touch and, with ``behind``, 10 ticks behind), the world
    stepped ``every`` times a second (world steps of ``1 / every`` seconds)."""
    import jax.numpy as jnp

    from mmsim.sim import world_only

    run = lambda **kw: world_only.observations(  # noqa: E731
        world,
        mp,
        n_paths=n_paths,
        n_steps=n_steps + 1,
        dt=1.0,
        seed=seed,
        dtype=dtype or jnp.float32,
        every=every,
        **kw,
    )
    obs = run()
    touch = run(probe=0.0)
    probes = (touch, run(probe=10.0) if behind else touch)
    out = [
        stylised.facts(stylised.window_from_observations(obs, 1.0, tick, path=i, probes=probes)) for i in range(n_paths)
    ]
    if not behind:
        for f in out:
            f["fill_prob_10_behind"] = float("nan")
    return out


#: The tick book's microstructure rates a book fit chooses, and the grid it searches (docs/MODEL.md §8b).
BOOK_GRID = {
    "pull_band": (1.0, 2.0, 3.0),
    "pull_rate": (0.2, 0.3, 0.5),
    "refill_rate": (3.0, 10.0),
    # Every fit so far chose 0 (the bound): two values keep the check.
    "cancel_ahead_share": (0.0, 0.1),
    # base units per arrival at the touch: the queue's noise. The recorded touch queue is
    # persistent (log-size correlation 0.82 over 1 s at an unchanged bid, 2023-04-04/05), and a
    # noisy queue fills a fresh order without the touch moving (docs/MODEL.md §15, 6e).
    "lot": (0.03, 0.1, 0.3, 1.0),
}


def book_grid(spec: str) -> dict:
    """:data:`BOOK_GRID` with some axes given other values: ``"pull_rate=0.5,0.7,1 refill_rate=10,30"``
    (space-separated ``name=v,v,...``; "" is the default grid). A bad name or value is a
    ValueError naming it."""
    grid = dict(BOOK_GRID)
    for item in spec.split():
        name, sep, values = item.partition("=")
        if not sep or name not in BOOK_GRID:
            raise ValueError(f"{item!r}: must be NAME=V,V,... with NAME one of {', '.join(BOOK_GRID)}")
        try:
            vals = tuple(float(v) for v in values.split(","))
        except ValueError:
            raise ValueError(f"{item!r}: the values must be numbers") from None
        if not vals or not all(math.isfinite(v) and v >= 0 for v in vals):
            raise ValueError(f"{item!r}: the values must be finite numbers >= 0")
        grid[name] = vals
    return grid


#: The facts a book fit matches, each in units of its recorded 95 % interval's half-width.
BOOK_FACTS = ("unchanged_mid", "bid_falls_with_sells", "return_kurtosis", "touch_depth_median", "fill_prob_touch")


def fit_book(rec: Recording, world: str, mp, *, n_paths: int = 32, seed: int = 0, grid=None, every: int = 1) -> dict:
    """The tick book's microstructure rates (:data:`BOOK_GRID`) that make ``mp``'s simulated
    1-s facts closest to a recorded window's: for each grid point, ``n_paths`` simulated
    windows of the recording's length from its first mid (float64, so that the choice does not
    depend on the machine's float32 rounding; the world stepped ``every`` times a second, as the
    runs that will use the fitted market step it: the 1-s facts move with the world's step), the
    squared distance of the median over windows of each of :data:`BOOK_FACTS` from the recorded
    value in units of its 95 % block-bootstrap half-width, summed. Returns ``{"chosen": {field:
    value}, "score": ..., "table": [(score, values, means), ...] best first, "facts": BOOK_FACTS,
    "world_dt_s": 1 / every, ...}``."""
    import itertools

    import jax.numpy as jnp

    from mmsim.live import paper

    grid = grid or BOOK_GRID
    feed, tick = rec.feed, rec.tick
    real = stylised.window_from_feed(feed, tick, (paper.probe(feed, 0, tick), paper.probe(feed, 0, tick)))
    f_real, ci = stylised.facts(real), stylised.interval(real)
    mpw = at_window(mp, 0.5 * float(feed.best_bid[0] + feed.best_ask[0]))
    n = len(feed.t) - 1
    # A fact the recording holds constant (a zero-width interval) is scored at 1 % of its value.
    half = {k: max(0.5 * (ci[k][1] - ci[k][0]), 0.01 * abs(f_real[k]), 1e-12) for k in BOOK_FACTS}
    rows = []
    for values in itertools.product(*grid.values()):
        trial = dataclasses.replace(mpw, book=dataclasses.replace(mpw.book, **dict(zip(grid, values))))
        sim = _facts(world, trial, n_paths, n, tick, seed, behind=False, dtype=jnp.float64, every=every)
        # The median over windows: a 1-s kurtosis is heavy-tailed across windows (one large order
        # walking the book makes one window's), and its mean would rule the score.
        means = {k: float(np.median([f[k] for f in sim])) for k in BOOK_FACTS}
        score = sum(((means[k] - f_real[k]) / half[k]) ** 2 for k in BOOK_FACTS)
        rows.append((float(score), dict(zip(grid, values)), means))
    rows.sort(key=lambda r: r[0])
    return {
        "chosen": rows[0][1],
        "score": rows[0][0],
        "table": rows,
        "facts": BOOK_FACTS,
        "recorded": {k: f_real[k] for k in BOOK_FACTS},
        "n_paths": n_paths,
        "world_dt_s": 1.0 / every,
    }


def _simulated_policy(
    world, mp, ep, *, n_paths, n_steps, dt, seed, n_trace, market_volume_per_s, dtype, world_substeps=1
) -> dict:
    """Per-path policy statistics of the simulated window: fills, PnL and its components from
    every path, markouts from the first ``n_trace`` traced paths."""
    from mmsim.engine import account as acct
    from mmsim.sim import simulate

    r = simulate.simulate(
        world, mp, ep, n_paths=n_paths, n_steps=n_steps, dt=dt, seed=seed, dtype=dtype, progress=False,
        n_trace=n_trace, world_substeps=world_substeps,
    )  # fmt: skip
    s = r.summary
    horizon = n_steps * dt
    comps = np.asarray(s.pnl_components, float)
    fills = np.asarray(s.n_fills, float).sum(axis=(1, 2))
    vol = np.asarray(s.fill_volume, float).sum(axis=(1, 2))
    marks = [{} for _ in range(n_paths)]
    if r.trace is not None:
        tr = r.trace
        for i in range(len(tr.mid)):
            marks[i] = markouts(tr.mid[i, :, 0], tr.bid[i, :, 0], tr.ask[i, :, 0], tr.position[i, :, 0], dt)
    nan_marks = {f"markout_{h}s": float("nan") for h in MARKOUT_S}
    rows = [
        policy_stats(
            float(s.pnl[i]),
            dict(zip(acct.PNL_COMPONENTS, comps[i])),
            fills[i],
            vol[i],
            market_volume_per_s * horizon,
            horizon,
            marks[i] or nan_marks,
        )
        for i in range(n_paths)
    ]
    return {"rows": rows, "compile_s": r.compile_s, "run_s": r.run_s}


def _replay_stats(res, feed) -> dict:
    """The policy's statistics of a replay (:func:`mmsim.live.replay.replay`)."""
    m, j = res.metrics, res.journal
    fills = m["fills"]["bid"] + m["fills"]["ask"]
    vol = m["fills"]["volume_bid"] + m["fills"]["volume_ask"]
    market = float(np.sum(feed.vol_buy) + np.sum(feed.vol_sell))
    marks = markouts(j["mid"], j["bid"], j["ask"], j["position"], m["cadence_s"])
    return policy_stats(m["pnl"], m["pnl_decomposition"], fills, vol, market, m["duration_s"], marks)


@dataclasses.dataclass
class Settings:
    """How much to simulate per window: ``n_paths`` policy paths (``n_trace`` of them traced for
    the markouts), ``fact_paths`` market-only windows, the engine's step ``dt`` (seconds), the
    world's steps per engine step ``world_substeps`` (the market facts' 1-s intervals get the same
    world step, ``world_substeps / dt`` per second),
    the replay's ``cadence`` (seconds), ``seed``, ``dtype``."""

    n_paths: int = 256
    n_trace: int = 64
    fact_paths: int = 32
    dt: float = 1.0
    world_substeps: int = 1
    cadence: float = 1.0
    seed: int = 0
    dtype: Any = None


@dataclasses.dataclass
class Recording:
    """A recorded window ready to validate against: its files, the capture (with depth), its
    feed of observations every ``cadence`` seconds and the venue's tick (quote currency)."""

    files: list
    cap: dict
    feed: Any
    tick: float


def prepare(files, tick: float, cadence: float = 1.0, *, symbol=None) -> Recording:
    """Read a window's consecutive capture files and cut its feed; raises ValueError when the
    recording's price grid is not the market's ``tick`` (a market of another symbol)."""
    from mmsim.fit import capture

    return recording(capture.read(files, symbol=symbol), tick, cadence)


def recording(cap: dict, tick: float, cadence: float = 1.0) -> Recording:
    """:func:`prepare` of a capture already read (:func:`mmsim.fit.capture.read`)."""
    from mmsim import live
    from mmsim.fit import calibrate

    book = cap["book_ticker"]
    recorded = calibrate.infer_tick(np.concatenate([book["bid"].to_numpy(float), book["ask"].to_numpy(float)]))
    if not math.isclose(recorded, tick, rel_tol=1e-9):
        raise ValueError(
            f"the market's tick is {tick:g} but the recording of {cap['symbol']} quotes on a {recorded:g} "
            "grid: validate it against a market of that symbol"
        )
    # The replay's paper queue behind the touch from the L2 book, as `mmsim live --replay` has it.
    feed = live.feed_from_capture(cap, cadence, symbol=cap["symbol"], depth_tick=float(tick))
    return Recording([Path(f) for f in cap["files"]], cap, feed, float(tick))


def validate_window(rec: Recording, world: str, markets: dict, ep, settings: Settings, *, base=None) -> dict:
    """One recorded window (:func:`prepare`) against each market of ``markets`` (name ->
    MarketParams) and, with ``base = (name, plain market mapping)``, a market calibrated to the
    window itself over that base. Returns the window's results (see the module docstring)."""
    import jax.numpy as jnp
    from omegaconf import OmegaConf

    from mmsim import config, live
    from mmsim.fit import capture
    from mmsim.live import paper

    dtype = settings.dtype or jnp.float32
    cap, feed, tick = rec.cap, rec.feed, rec.tick
    files = rec.files
    first = next(iter(markets.values()))
    probes = (paper.probe(feed, 0, tick), paper.probe(feed, 10, tick))
    real = stylised.window_from_feed(feed, tick, probes)
    real_facts, real_ci = stylised.facts(real), stylised.interval(real)
    res = live.replay(ep, feed, depth_per_tick=float(first.fills.depth_per_tick), dtype=dtype)
    real_policy = _replay_stats(res, feed)

    all_markets = dict(markets)
    calibrated = None
    if base is not None:
        cal = capture.fit(capture.measure(cap, tick=tick), base[1], base[0])
        calibrated = cal.market
        all_markets["window"] = config.market_params(OmegaConf.create({"market": cal.market}))[1]
    mid0 = 0.5 * float(feed.best_bid[0] + feed.best_ask[0])
    n = len(feed.t)
    n_steps = int(np.floor(res.metrics["duration_s"] / settings.dt))
    out = {
        "files": [Path(f).name for f in files],
        "symbol": cap["symbol"],
        "duration_s": res.metrics["duration_s"],
        "start_epoch_s": res.metrics["start_epoch_s"],
        "start_mid": mid0,
        "replay": {"pnl": res.metrics["pnl"], "fills": res.metrics["fills"], "liquidated": res.metrics["liquidated"]},
        "calibrated_market": calibrated,
        "markets": {},
    }
    # The market facts are 1-s intervals: the world steps as often per second as in the policy runs.
    per_s = max(1, round(settings.world_substeps / settings.dt))
    for name, mp in all_markets.items():
        mpw = at_window(mp, mid0)
        facts = _facts(world, mpw, settings.fact_paths, n - 1, tick, settings.seed, every=per_s)
        vol_rate = float(np.mean([f["volume_per_s"] for f in facts]))
        pol = _simulated_policy(
            world, mpw, ep, n_paths=settings.n_paths, n_steps=n_steps, dt=settings.dt, seed=settings.seed,
            n_trace=settings.n_trace, market_volume_per_s=vol_rate, dtype=dtype,
            world_substeps=settings.world_substeps,
        )  # fmt: skip
        stats = {k: compare(real_facts[k], [f[k] for f in facts], real_ci.get(k)) for k in MARKET_STATS}
        stats |= {k: compare(real_policy[k], [r[k] for r in pol["rows"]]) for k in POLICY_STATS}
        fills = [r["fills_per_hour"] for r in pol["rows"]]
        out["markets"][name] = {
            "stats": stats,
            "replay_pnl_percentile": stats["pnl"]["percentile"],
            "replay_fills_percentile": stats["fills_per_hour"]["percentile"],
            "fills_ratio": float(np.mean(fills) / real_policy["fills_per_hour"])
            if real_policy["fills_per_hour"] > 0
            else float("nan"),
            "compile_s": pol["compile_s"],
            "run_s": pol["run_s"],
        }
    return out


def uniformity(percentiles) -> dict:
    """Kolmogorov–Smirnov test that percentiles (0-100) over windows are uniform."""
    from scipy import stats

    p = np.asarray([x for x in percentiles if math.isfinite(x)], float) / 100.0
    if not len(p):
        return {"n": 0, "ks_stat": float("nan"), "pvalue": float("nan")}
    r = stats.kstest(p, "uniform")
    return {"n": int(len(p)), "ks_stat": float(r.statistic), "pvalue": float(r.pvalue)}


def summarize(windows: list[dict]) -> dict:
    """Over all windows, per market: the replay percentiles, their uniformity, the flags."""
    names = list(windows[0]["markets"]) if windows else []
    out = {}
    for name in names:
        pnl = [w["markets"][name]["replay_pnl_percentile"] for w in windows]
        fills = [w["markets"][name]["replay_fills_percentile"] for w in windows]
        lo, hi = PERCENTILE_BAND
        out[name] = {
            "pnl_percentiles": pnl,
            "fills_percentiles": fills,
            "pnl_uniformity": uniformity(pnl),
            "fills_uniformity": uniformity(fills),
            "flags": [
                f"{', '.join(w['files'])}: the replay's {what} at the {_ordinal(p)} percentile ({name} market)"
                for w, pp, fp in zip(windows, pnl, fills)
                for what, p in (("PnL", pp), ("fill count", fp))
                if math.isfinite(p) and not (lo <= p <= hi)
            ],
            "outside_95": {
                k: int(sum(w["markets"][name]["stats"][k]["outside"] for w in windows))
                for k in MARKET_STATS + POLICY_STATS
            },
        }
    return out


def _ordinal(p: float) -> str:
    """A percentile as an ordinal: 1st, 2nd, 3rd, 11th, 22nd, 100th."""
    n = int(round(p))
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"
