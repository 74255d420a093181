"""Stylised facts of a market at the scale a market maker lives on, computed by the same code on a
recorded window and on a simulated one: how often the mid stands still over an interval, how often
the best bid falls while sells trade into it, the shape of interval returns, the depth at the touch
and the traded volume. Inputs are per-interval arrays (:class:`Window`); prices in quote currency,
sizes in base units, intervals in seconds."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Window(NamedTuple):
    """A market observed at the end of equal intervals of ``dt`` seconds (one row per interval)."""

    dt: float  # seconds per interval
    tick: float  # price grid, quote currency (0: continuous)
    bid: np.ndarray  # best bid at the end of each interval
    ask: np.ndarray  # best ask
    bid_size: np.ndarray  # base units displayed at the best bid
    vol_buy: np.ndarray  # base units bought by aggressors during the interval
    vol_sell: np.ndarray  # base units sold by aggressors
    # Optional probes, one row per interval t -> t + 1, (bid, ask) bool: was a fresh 0.01 base-unit
    # quote sent at t at the back of the touch (``probe_touch``) / 10 ticks behind it
    # (``probe_behind``) filled in the interval.
    probe_touch: np.ndarray | None = None
    probe_behind: np.ndarray | None = None


def window_from_feed(feed, tick: float, probes: tuple | None = None) -> Window:
    """A recorded feed (:func:`mmsim.live.feed.feed_from_capture`) as a :class:`Window`;
    ``probes``: its ``(probe_touch, probe_behind)`` (:func:`mmsim.live.paper.probe`)."""
    dt = float(np.median(np.diff(feed.t))) if len(feed.t) > 1 else float(feed.t[0])
    return Window(
        dt,
        float(tick),
        np.asarray(feed.best_bid, float),
        np.asarray(feed.best_ask, float),
        np.asarray(feed.bid_size, float),
        np.asarray(feed.vol_buy, float),
        np.asarray(feed.vol_sell, float),
        *(probes or (None, None)),
    )


def window_from_observations(obs, dt: float, tick: float, path: int = 0, asset: int = 0, probes=None) -> Window:
    """One path of stacked simulated observations (leading axes ``(paths, steps)``, then assets);
    ``probes``: the observations of the same paths with a probe at the touch and 10 ticks behind
    (:func:`mmsim.sim.world_only.observations` with ``probe=0`` and ``probe=10``), whose fills
    give the window's probe columns."""
    pick = lambda x: np.asarray(x, float)[path, :, asset]  # noqa: E731
    return Window(
        float(dt),
        float(tick),
        pick(obs.best_bid),
        pick(obs.best_ask),
        pick(obs.bid_size),
        pick(obs.vol_buy),
        pick(obs.vol_sell),
        *(tuple(_filled(o, path, asset)[1:] for o in probes) if probes else (None, None)),
    )


def _filled(obs, path: int, asset: int) -> np.ndarray:
    """(steps, 2) bool: the probe's bid / ask filled in each step."""
    b = np.asarray(obs.fill_bid_size, float)[path, :, asset] > 0
    a = np.asarray(obs.fill_ask_size, float)[path, :, asset] > 0
    return np.stack([b, a], -1)


def _series(w: Window) -> dict:
    """Per-interval values whose means (or moments) are the facts, one per interval t -> t + 1."""
    mid = 0.5 * (w.bid + w.ask)
    tol = 0.5 * w.tick if w.tick > 0 else 1e-12 * float(np.median(mid))
    return {
        "unchanged": np.abs(np.diff(mid)) <= tol,
        "ticks_moved": np.abs(np.diff(mid)) / w.tick if w.tick > 0 else np.full(len(mid) - 1, np.nan),
        "bid_falls": (w.vol_sell[1:] > 0) & (np.diff(w.bid) < -tol),
        "ret": np.diff(np.log(mid)),
        # One per observation (the intervals' ends and the first): the bootstrap takes the ends.
        "depth": np.asarray(w.bid_size, float),
        "volume": np.asarray(w.vol_buy + w.vol_sell, float),
        "probe_touch": _probe(w.probe_touch, len(w.bid) - 1),
        "probe_behind": _probe(w.probe_behind, len(w.bid) - 1),
    }


def _probe(p, n: int) -> np.ndarray:
    return np.full(n, np.nan) if p is None else np.asarray(p, float).mean(axis=-1)


def _aggregate(x: dict, dt: float) -> dict:
    r = x["ret"]
    sd = float(np.std(r))
    kurt = float(np.mean((r - r.mean()) ** 4) / sd**4) if sd > 0 else float("nan")
    return {
        "unchanged_mid": float(np.mean(x["unchanged"])),
        "tick_moves_per_min": float(np.mean(x["ticks_moved"]) * 60.0 / dt),
        "bid_falls_with_sells": float(np.mean(x["bid_falls"])),
        "return_kurtosis": kurt,
        "sigma_per_sqrt_s": sd / np.sqrt(dt),
        "touch_depth_median": float(np.median(x["depth"])),
        "volume_per_s": float(np.mean(x["volume"]) / dt),
        "fill_prob_touch": float(np.mean(x["probe_touch"])),
        "fill_prob_10_behind": float(np.mean(x["probe_behind"])),
        "n": int(len(r)),
    }


#: The facts :func:`facts` returns (besides the interval count ``n``).
KEYS = (
    "unchanged_mid",
    "bid_falls_with_sells",
    "tick_moves_per_min",
    "return_kurtosis",
    "sigma_per_sqrt_s",
    "touch_depth_median",
    "volume_per_s",
    "fill_prob_touch",
    "fill_prob_10_behind",
)


def facts(w: Window) -> dict:
    """The window's stylised facts, each over consecutive intervals t -> t + 1:

    * ``unchanged_mid``: share of intervals whose mid does not move (within half a tick);
    * ``tick_moves_per_min``: ticks the mid travels per minute (the sum of its absolute moves,
      interval by interval, in ticks; NaN on a continuous grid);
    * ``bid_falls_with_sells``: share of intervals in which aggressive sells trade and the best bid
      ends lower than it started (the touch traded through, or emptied and not refilled);
    * ``return_kurtosis``: kurtosis of the interval log mid returns (3 for a Gaussian);
    * ``sigma_per_sqrt_s``: their standard deviation per sqrt(second);
    * ``touch_depth_median``: median displayed size at the best bid, base units;
    * ``volume_per_s``: traded volume (both sides), base units per second;
    * ``fill_prob_touch``, ``fill_prob_10_behind``: the share of intervals in which the window's
      probe quote (at the back of the touch, 10 ticks behind it) filled, both sides averaged
      (NaN without probes);
    * ``n``: intervals used.
    """
    return _aggregate(_series(w), w.dt)


def interval(w: Window, *, block_s: float = 20.0, n_boot: int = 500, level: float = 0.95, seed: int = 0) -> dict:
    """A ``level`` interval of each fact of one window by the moving-block bootstrap: the window's
    per-interval values resampled in blocks of ``block_s`` seconds (keeping the clustering within
    a block), the facts recomputed on each resample; returns ``{fact: (lo, hi)}``."""
    x = _series(w)
    n = len(x["ret"])
    b = max(1, min(n, int(round(block_s / w.dt))))
    rs = np.random.default_rng(seed)
    n_blocks = -(-n // b)
    out = {k: [] for k in KEYS}
    for _ in range(n_boot):
        starts = rs.integers(0, n - b + 1, n_blocks)
        idx = (starts[:, None] + np.arange(b)[None, :]).ravel()[:n]
        f = _aggregate({k: v[idx + 1] if k in ("depth", "volume") else v[idx] for k, v in x.items()}, w.dt)
        for k in KEYS:
            out[k].append(f[k])
    q = (1.0 - level) / 2.0
    res = {}
    for k, v in out.items():
        v = np.asarray(v, float)
        ok = v[np.isfinite(v)]
        res[k] = (float(np.quantile(ok, q)), float(np.quantile(ok, 1.0 - q))) if ok.size else (np.nan, np.nan)
    return res
