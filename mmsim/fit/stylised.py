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


def window_from_feed(feed, tick: float) -> Window:
    """A recorded feed (:func:`mmsim.live.feed.feed_from_capture`) as a :class:`Window`."""
    dt = float(np.median(np.diff(feed.t))) if len(feed.t) > 1 else float(feed.t[0])
    return Window(
        dt,
        float(tick),
        np.asarray(feed.best_bid, float),
        np.asarray(feed.best_ask, float),
        np.asarray(feed.bid_size, float),
        np.asarray(feed.vol_buy, float),
        np.asarray(feed.vol_sell, float),
    )


def window_from_observations(obs, dt: float, tick: float, path: int = 0, asset: int = 0) -> Window:
    """One path of stacked simulated observations (leading axes ``(paths, steps)``, then assets)."""
    pick = lambda x: np.asarray(x, float)[path, :, asset]  # noqa: E731
    return Window(
        float(dt),
        float(tick),
        pick(obs.best_bid),
        pick(obs.best_ask),
        pick(obs.bid_size),
        pick(obs.vol_buy),
        pick(obs.vol_sell),
    )


def facts(w: Window) -> dict:
    """The window's stylised facts, each over consecutive intervals t -> t + 1:

    * ``unchanged_mid``: share of intervals whose mid does not move (within half a tick);
    * ``bid_falls_with_sells``: share of intervals in which aggressive sells trade and the best bid
      ends lower than it started (the touch traded through, or emptied and not refilled);
    * ``return_kurtosis``: kurtosis of the interval log mid returns (3 for a Gaussian);
    * ``sigma_per_sqrt_s``: their standard deviation per sqrt(second);
    * ``touch_depth_median``: median displayed size at the best bid, base units;
    * ``volume_per_s``: traded volume (both sides), base units per second;
    * ``n``: intervals used.
    """
    mid = 0.5 * (w.bid + w.ask)
    tol = 0.5 * w.tick if w.tick > 0 else 1e-12 * float(np.median(mid))
    dm = np.diff(mid)
    r = np.diff(np.log(mid))
    sd = float(np.std(r))
    kurt = float(np.mean((r - r.mean()) ** 4) / sd**4) if sd > 0 else float("nan")
    sells = w.vol_sell[1:] > 0
    return {
        "unchanged_mid": float(np.mean(np.abs(dm) <= tol)),
        "bid_falls_with_sells": float(np.mean(sells & (np.diff(w.bid) < -tol))),
        "return_kurtosis": kurt,
        "sigma_per_sqrt_s": sd / np.sqrt(w.dt),
        "touch_depth_median": float(np.median(w.bid_size)),
        "volume_per_s": float(np.sum(w.vol_buy + w.vol_sell) / (len(w.bid) * w.dt)),
        "n": int(len(dm)),
    }
