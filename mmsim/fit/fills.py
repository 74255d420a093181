"""A desk's own fills and their markouts: the adverse selection it actually meets.

A public capture shows the market, not who was informed against whom; a desk's own fills do. This
module reads a CSV of the desk's fills and measures, at each horizon ``h`` (seconds), per base
unit traded and with the side ``s`` = +1 for a buy, -1 for a sell:

* the **spread capture** ``s (mid(t) - price)``: what the fill earned against the mid at the fill;
* the **adverse selection** ``s (mid(t + h) - mid(t))``: how the mid moved against the fill after it;
* the **markout** ``s (mid(t + h) - price)``, their sum.

``mid(x)`` is the last recorded mid at or before ``x`` (quote currency), from a capture's
``bookTicker`` (:func:`mids_from_capture`). Each value is the quantity-weighted mean over the fills
that have ``h`` seconds of recording after them, with its standard error (the weighted sample
variance over the effective number of fills, ``(sum w)^2 / sum w^2``). The same decomposition is
what the simulator's PnL attribution and :func:`mmsim.validation.markouts` report for a simulated or
replayed policy, so a desk can set the market's ``adverse`` block against its own numbers.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd

from mmsim.fit.data import DataError, _read_csv

#: Markout horizons reported by default, seconds.
HORIZONS_S = (1.0, 5.0, 10.0, 30.0, 60.0)

_SIDES = {"buy": 1.0, "b": 1.0, "bid": 1.0, "long": 1.0, "1": 1.0, "+1": 1.0,
          "sell": -1.0, "s": -1.0, "ask": -1.0, "short": -1.0, "-1": -1.0}  # fmt: skip


def read_fills(path: str | os.PathLike) -> pd.DataFrame:
    """Read a desk's fills: a CSV with columns ``time`` (UTC: epoch seconds, epoch milliseconds
    when above 1e11, or an ISO 8601 date-time; aliases ``timestamp``, ``ts``), ``side`` (buy/sell,
    b/s, bid/ask or +1/-1), ``price`` (quote currency per base unit) and ``qty`` (base units;
    aliases ``quantity``, ``size``, ``amount``). Rows with an unreadable time or side, a
    non-positive or non-finite price or quantity are dropped and counted
    (``df.attrs["rejected"]``, ``df.attrs["malformed"]``). Returns ``time`` (s, UTC epoch),
    ``side`` (+1 / -1), ``price``, ``qty``, sorted by time; :class:`DataError` naming the file
    and the column when a column is missing or no fill is usable."""
    want = {
        "time": ("time", "timestamp", "ts"),
        "side": ("side",),
        "price": ("price", "px"),
        "qty": ("qty", "quantity", "size", "amount"),
    }
    raw, cols = _read_csv(path, want, dtype=str)
    t_raw = raw[cols["time"]].astype(str).str.strip()
    num = pd.to_numeric(t_raw, errors="coerce")
    dates = pd.to_datetime(t_raw.where(num.isna()), errors="coerce", utc=True, format="mixed")
    secs = (dates - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
    t = np.where(num.notna(), np.where(num > 1e11, num / 1e3, num), secs).astype(float)
    side = raw[cols["side"]].astype(str).str.strip().str.lower().map(_SIDES).to_numpy(float)
    price = pd.to_numeric(raw[cols["price"]], errors="coerce").to_numpy(float)
    qty = pd.to_numeric(raw[cols["qty"]], errors="coerce").to_numpy(float)
    checks = {
        "bad_time": ~np.isfinite(t),
        "bad_side": ~np.isfinite(side),
        "bad_price": ~(np.isfinite(price) & (price > 0)),
        "bad_qty": ~(np.isfinite(qty) & (qty > 0)),
    }
    bad = np.zeros(len(raw), bool)
    rejected = {}
    for what, b in checks.items():
        n = int(np.sum(b & ~bad))
        if n:
            rejected[what] = n
        bad |= b
    out = pd.DataFrame({"time": t, "side": side, "price": price, "qty": qty})[~bad]
    out = out.sort_values("time", kind="mergesort").reset_index(drop=True)
    if not len(out):
        raise DataError(f"{path}: no usable fill (rejected: {rejected or 'no rows'})")
    out.attrs["rejected"] = rejected
    out.attrs["malformed"] = int(sum(rejected.values()))
    return out


def mids_from_capture(cap: dict) -> tuple[np.ndarray, np.ndarray]:
    """``(times, mids)`` of a capture read by :func:`mmsim.fit.capture.read`: every
    ``bookTicker`` update's (bid + ask) / 2, exchange time in seconds, sorted."""
    bt = cap["book_ticker"]
    t = bt["time"].to_numpy(float)
    mid = 0.5 * (bt["bid"].to_numpy(float) + bt["ask"].to_numpy(float))
    order = np.argsort(t, kind="mergesort")
    return t[order], mid[order]


def _weighted(x: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    """Weighted mean and its standard error (NaN below two fills)."""
    if len(x) == 0:
        return float("nan"), float("nan")
    m = float(np.sum(w * x) / np.sum(w))
    if len(x) < 2:
        return m, float("nan")
    n_eff = float(np.sum(w) ** 2 / np.sum(w**2))
    if not n_eff > 1.0 + 1e-12:  # one fill carries all the weight
        return m, float("nan")
    var = float(np.sum(w * (x - m) ** 2) / np.sum(w)) * n_eff / (n_eff - 1.0)
    return m, math.sqrt(var / n_eff)


def fill_markouts(fills: pd.DataFrame, t_mid: np.ndarray, mid: np.ndarray, horizons=HORIZONS_S) -> dict:
    """The desk's markouts (module docstring) of ``fills`` (:func:`read_fills`) against the mid
    path ``(t_mid, mid)`` (seconds, quote currency). Fills before the first recorded mid are not
    measured (``outside``); a horizon counts only the fills with ``h`` seconds of recording after
    them. Returns ``{"n_fills", "outside", "volume", "spread_capture": (mean, se), "rows": [{"horizon_s",
    "n", "markout", "markout_se", "adverse", "adverse_se"}, ...]}`` (quote currency per base unit)."""
    t, s, px, q = (fills[c].to_numpy(float) for c in ("time", "side", "price", "qty"))
    inside = (t >= t_mid[0]) & (t <= t_mid[-1])
    t, s, px, q = t[inside], s[inside], px[inside], q[inside]

    def mid_at(x):
        return mid[np.clip(np.searchsorted(t_mid, x, side="right") - 1, 0, len(mid) - 1)]

    m0 = mid_at(t)
    capture = s * (m0 - px)
    rows = []
    for h in horizons:
        ok = t + h <= t_mid[-1]
        mh = mid_at(t[ok] + h)
        mark = _weighted(s[ok] * (mh - px[ok]), q[ok])
        adv = _weighted(s[ok] * (mh - m0[ok]), q[ok])
        rows.append(
            {"horizon_s": float(h), "n": int(ok.sum()), "markout": mark[0], "markout_se": mark[1],
             "adverse": adv[0], "adverse_se": adv[1]}
        )  # fmt: skip
    return {
        "n_fills": int(inside.sum()),
        "outside": int((~inside).sum()),
        "volume": float(q.sum()),
        "spread_capture": _weighted(capture, q),
        "rows": rows,
    }
