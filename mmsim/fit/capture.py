"""A market fitted to recorded exchange captures: what ``mmsim calibrate`` runs.

:func:`measure` reads what a window of a capture identifies (order flow, order sizes, the touch,
the book behind it, spread widenings, the mid's variance, liquidation fills); :func:`fit` turns
those measurements into a market config in the ``conf/market`` schema. Each field is either
fitted (its value, standard error, the files and the window it came from go into the comment
beside it) or taken from a base market and marked as such: a window of minutes cannot identify
an 8-hour funding process, a regime generator or a liquidation cascade's branching, and saying
so is part of the output. Host side, numpy/scipy. Units: seconds, per second, base units, quote
currency, variance of log price per second.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmsim.fit import calibrate as cal
from mmsim.fit import data

#: Sampling step of the mid for the efficient price's variance, seconds: long enough that the
#: book's one-tick noise adds little (a 10-s return of a 30 %-a-year market is ~20 ticks).
VAR_STEP_S = 10.0
#: Steps of the variance signature shown in the report, seconds.
SIGNATURE_STEPS_S = (1.0, 5.0, 10.0, 30.0)
#: Depth samples every this many seconds of exchange time.
DEPTH_EVERY_S = 10.0
#: Significant digits written for a fitted value (its standard error never warrants more).
DIGITS = 4


def _round(x: float, digits: int = DIGITS) -> float:
    """``x`` to ``digits`` significant digits (exactly representable text in the YAML)."""
    x = float(x)
    if x == 0.0 or not math.isfinite(x):
        return x
    return float(f"{x:.{digits - 1}e}")


def _g(x: float, digits: int = 3) -> str:
    x = float(x)
    if not math.isfinite(x):
        return "n/a"
    return f"{x:.{digits}g}"


@dataclass
class Calibration:
    """A fitted market: ``market`` (the ``conf/market`` mapping), ``notes`` (``"block.field"``
    -> the comment written beside it), ``header`` (comment lines at the top), ``rows`` (one dict
    per field: ``field``, ``value``, ``se``, ``unit``, ``source``, ``fitted``), ``measured``
    (everything measured, JSON-able), ``checks`` (goodness of fit) and ``sizes``."""

    market: dict
    notes: dict
    header: list
    rows: list = field(default_factory=list)
    measured: dict = field(default_factory=dict)
    checks: dict = field(default_factory=dict)
    sizes: np.ndarray | None = None  # the recorded market-order sizes, base units (for the figure)


def read(paths: Sequence[str | Path], *, symbol: str | None = None) -> dict:
    """The capture files (consecutive files of one recording, in time order) read as one with
    their depth, restricted to ``symbol`` (lower case, e.g. ``btcusdt``; needed only when the
    recording carries several). Raises ValueError naming the problem."""
    paths = [Path(p) for p in paths]
    cap = data.read_capture(paths, depth=True)
    syms = sorted(set(cap["trades"]["symbol"]) | set(cap["book_ticker"]["symbol"]))
    if symbol is None:
        if len(syms) != 1:
            raise ValueError(f"the captures hold the symbols {syms}: say which with --symbol")
        symbol = syms[0]
    symbol = symbol.lower()
    if symbol not in syms:
        raise ValueError(f"--symbol {symbol}: the captures hold {syms}")
    for k in ("trades", "book_ticker"):
        cap[k] = cap[k][cap[k]["symbol"] == symbol].reset_index(drop=True)
    if len(cap["trades"]) < 10 or len(cap["book_ticker"]) < 10:
        raise ValueError(
            f"{', '.join(p.name for p in paths)}: {len(cap['trades'])} trades and "
            f"{len(cap['book_ticker'])} books of {symbol}: too few to fit a market"
        )
    cap["symbol"] = symbol
    cap["files"] = [p.name for p in paths]
    return cap


def measure(cap: dict, *, tick: float | None = None, levels: int = 5) -> dict:
    """Everything a capture window identifies (a dict of plain values; see the module docstring).

    ``tick``: the venue's price grid (quote currency); inferred from the quoted prices when None.
    ``levels``: book levels per side for the depth profile."""
    tr, bk = cap["trades"], cap["book_ticker"]
    t0 = float(min(tr["time"].min(), bk["time"].min()))
    t1 = float(max(tr["time"].max(), bk["time"].max()))
    T = t1 - t0
    tick = float(tick) if tick else cal.infer_tick(np.concatenate([bk["bid"].to_numpy(), bk["ask"].to_numpy()]))
    market = tr[tr["type"].isin(["MARKET", ""])]
    orders = cal.aggregate_market_orders(market)
    buys = orders.loc[orders["side"] == 1, "time"].to_numpy()
    sells = orders.loc[orders["side"] == -1, "time"].to_numpy()
    liq = cal.aggregate_market_orders(tr[tr["type"] == "INSURANCE_FUND"])
    q = orders["qty"].to_numpy(float)
    touch = cal.touch_stats(bk, tick)
    out: dict[str, Any] = {
        "symbol": cap["symbol"],
        "files": list(cap["files"]),
        "t0": t0,
        "t1": t1,
        "window_s": T,
        "tick": tick,
        "n_trades": int(len(tr)),
        "n_orders": int(len(orders)),
        "hawkes": cal.fit_hawkes_bivariate_exp(buys, sells, t1, t0),
        "sizes": {
            "median": float(np.median(q)),
            "mean": float(q.mean()),
            "q90": float(np.quantile(q, 0.9)),
            "q99": float(np.quantile(q, 0.99)),
            "max": float(q.max()),
            "n": int(len(q)),
            "hill_10pct": cal.hill_tail_index(q, max(10, len(q) // 10)),
            "pareto": cal.matched_pareto(float(np.median(q)), float(q.mean())),
            "lognormal": _lognormal_mle(q),
        },
        "touch": touch,
        "widening": cal.spread_widening(bk, tick),
        "variance": {f"{s:g}": cal.mid_variance_per_second(bk, s) for s in SIGNATURE_STEPS_S if 4 * s < T},
        "liquidations": {
            "n_long": int((liq["side"] == -1).sum()),  # a long position closed by a forced sell
            "n_short": int((liq["side"] == 1).sum()),
            "qty": liq["qty"].astype(float).tolist(),
        },
        "funding_rate_mean": (
            float(cap["mark_price"]["funding_rate"].mean()) if len(cap.get("mark_price", [])) else None
        ),
    }
    try:
        out["depth"] = cal.depth_profile(cap.get("depth"), tick, levels, DEPTH_EVERY_S)
    except ValueError as e:
        out["depth"] = {"skipped": str(e)}
    for law in SIZE_LAWS:
        out["sizes"][law]["check"] = _size_check(q, law, out["sizes"][law])
    out["order_sizes"] = q  # an array: :func:`calibrate` moves it out of the JSON-able dict
    return out


#: The order-size laws a calibration fits; it writes the one closer to the recorded sizes.
SIZE_LAWS = ("lognormal", "pareto")


def _lognormal_mle(q: np.ndarray) -> dict:
    """Lognormal MLE of sizes: ``size_scale`` the median e^{mean log}, ``size_sigma`` the sd of
    the logs, with their asymptotic standard errors."""
    lq = np.log(q)
    n, mu, sd = len(lq), float(lq.mean()), float(lq.std())
    return {
        "size_scale": math.exp(mu),
        "size_scale_se": math.exp(mu) * sd / math.sqrt(n),
        "size_sigma": sd,
        "size_sigma_se": sd / math.sqrt(2 * n),
    }


def _size_quantile(law: str, par: dict, p):
    """The fitted law's quantile at probability ``p``, base units."""
    from scipy import stats

    if law == "lognormal":
        return par["size_scale"] * np.exp(par["size_sigma"] * stats.norm.ppf(p))
    return par["size_scale"] * (1.0 - np.asarray(p)) ** (-1.0 / par["size_tail"])


def _size_cdf(law: str, par: dict, x: np.ndarray) -> np.ndarray:
    from scipy import stats

    if law == "lognormal":
        return stats.norm.cdf(np.log(x / par["size_scale"]) / par["size_sigma"])
    xm, a = par["size_scale"], par["size_tail"]
    return np.where(x >= xm, 1.0 - (xm / x) ** a, 0.0)


def _size_check(q: np.ndarray, law: str, par: dict) -> dict:
    """Kolmogorov distance between the recorded sizes and a fitted law, and its q90/q99.
    (The recorded sizes sit on a lot grid, so even the right law keeps a distance of about the
    largest lot's share; the figure shows where the laws depart.)"""
    if not all(math.isfinite(par[k]) for k in par if not k.endswith("_se")):
        return {"ks_stat": float("nan"), "q90": float("nan"), "q99": float("nan")}
    x = np.sort(q)
    n = len(x)
    F = _size_cdf(law, par, x)
    d = float(max(np.max(np.arange(1, n + 1) / n - F), np.max(F - np.arange(n) / n)))
    return {"ks_stat": d, "q90": float(_size_quantile(law, par, 0.9)), "q99": float(_size_quantile(law, par, 0.99))}


class _Builder:
    """Collects fields, their notes and the report's rows."""

    def __init__(self, base: dict, base_name: str, where: str):
        self.m = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
        self.notes: dict[str, str] = {}
        self.rows: list[dict] = []
        self.base_name = base_name
        self.where = where

    def fit(self, key: str, value, se, unit: str, how: str, *, digits: int = DIGITS) -> None:
        block, _, name = key.partition(".")
        v = [_round(x, digits) for x in value] if isinstance(value, (list, tuple)) else _round(value, digits)
        self.m.setdefault(block, {})[name] = v
        if se is None:
            se_txt = ""
        elif math.isfinite(se):
            se_txt = f" ± {_g(se, 2)}"
        else:  # e.g. a Hawkes excitation at its bound 0: the information matrix is singular there
            se_txt = " (no standard error: the likelihood is flat or at a bound there)"
        shown = "[" + ", ".join(_g(x, digits) for x in v) + "]" if isinstance(v, list) else _g(v, digits)
        self.notes[key] = f"{unit}; fit{se_txt}: {how} ({self.where})"
        self.rows.append(dict(field=key, value=shown, se=se, unit=unit, source=how, fitted=True))

    def rest(self) -> None:
        """A note on every field that has none yet: the base's, not fitted."""
        for block, fields in self.m.items():
            if block in self.notes:
                continue
            if not isinstance(fields, dict):
                if block not in ("world", "n_assets", "asset_names"):
                    self.notes[block] = f"from {self.base_name}: not fitted (a setting or an assumption)"
                continue
            for name in fields:
                key = f"{block}.{name}"
                if key not in self.notes:
                    self.notes[key] = f"from {self.base_name}: not fitted (a setting or an assumption)"

    def keep(self, key: str, why: str) -> None:
        block, _, name = key.partition(".")
        v = self.m.get(block, {}).get(name)
        self.notes[key] = f"from {self.base_name}: {why}"
        self.rows.append(dict(field=key, value=str(v), se=None, unit="", source=why, fitted=False))


#: Fields of the base market kept as they are, with the reason (a window does not identify them).
KEPT = {
    "price.drift": "no drift at these horizons (assumption)",
    "price.jump_rate": "price jumps are rarer than one a day: minutes cannot identify them",
    "price.jump_mean": "as jump_rate",
    "price.jump_std": "as jump_rate",
    "vol.kappa": "variance mean reversion (hours): not identified by minutes",
    "vol.rho": "not estimated",
    "vol.generator": "regime switching (hours to days): not identified by minutes",
    "spread.beta_vol": "the touch is pinned at one tick: no volatility sensitivity to fit",
    "spread.sigma": "as beta_vol",
    "spread.regime_mult": "one window sees one regime",
    "adverse": "informed flow needs our own fills: not in a public capture",
    "funding": "the 8-h funding process needs a funding history, not minutes",
    "liquidation.alpha": "cascade branching: a scenario assumption (a window sees a handful of liquidations)",
    "liquidation.beta": "as alpha",
    "liquidation.size_scale": "as alpha",
    "liquidation.size_tail": "as alpha",
    "liquidation.trigger": "as alpha",
    "book.refill_rate": "fitted by simulation against a window's 1-s facts only with --fit-book (MODEL.md §8b, §17)",
    "book.pull_band": "as refill_rate",
    "book.pull_rate": "as refill_rate",
    "book.cancel_ahead_share": "as refill_rate",
    "book.lot": "assumption (sets the queue's noise)",
    "book.new_level_depth": "assumption",
}


def fit(measured: dict, base: dict, base_name: str, *, symmetric_flow: bool = False) -> Calibration:
    """The market config of ``measured`` (:func:`measure`) over the one-asset market ``base`` (a
    plain ``conf/market`` mapping, named ``base_name`` in the notes). ``symmetric_flow``: buy and
    sell baselines and self-excitations set to the mean of the two sides (a calm market without
    net flow). Raises ValueError when the base is not a one-asset ``market`` world."""
    if base.get("world", "market") != "market" or int(base.get("n_assets", 1)) != 1:
        raise ValueError(f"base market {base_name!r}: calibrate writes a one-asset market world; the base must be one")
    m = measured
    start = pd.Timestamp(m["t0"], unit="s").strftime("%Y-%m-%d %H:%M:%S")
    where = f"{m['symbol'].upper()} {start} UTC +{m['window_s']:.0f} s"
    b = _Builder(base, base_name, where)
    b.m["asset_names"] = [m["symbol"].upper()]

    mid = m["touch"]["mid_mean"]
    b.fit("price.s0", mid, None, "quote currency", "time-weighted mean mid", digits=6)
    for k in ("price.drift", "price.jump_rate", "price.jump_mean", "price.jump_std"):
        b.keep(k, KEPT[k])

    # Variance: the window identifies its level, the base's regimes keep their ratios.
    v = m["variance"].get(f"{VAR_STEP_S:g}") or m["variance"][max(m["variance"], key=float)]
    vol = base["vol"]
    r0 = int(vol.get("regime0", 1))
    theta = np.atleast_1d(np.asarray(vol["theta"], float))
    c = v["value"] / theta[r0]
    how = (
        f"mid variance per s at {v['step']:g}-s returns ({v['n']} returns); every regime's "
        f"base level times {_g(c)}, so the start regime's is the window's"
    )
    b.fit("vol.theta", (theta * c).tolist(), v["se"], "variance per s", how)
    b.fit("vol.v0", v["value"], v["se"], "variance per s", "the same variance: the window's level at the start")
    b.fit(
        "vol.xi",
        (np.atleast_1d(np.asarray(vol["xi"], float)) * math.sqrt(c)).tolist(),
        None,
        "per s",
        "the base's, times sqrt of the same factor (the variance process's law rescaled)",
    )
    for k in ("vol.kappa", "vol.rho", "vol.generator"):
        b.keep(k, KEPT[k])

    h = m["hawkes"]
    flow_how = f"bivariate Hawkes MLE, {h['n_buy']} buy / {h['n_sell']} sell orders"
    if symmetric_flow:
        for a, bb, name in (("mu_buy", "mu_sell", "mu"), ("alpha_buy", "alpha_sell", "alpha")):
            val = 0.5 * (h[a] + h[bb])
            se = 0.5 * math.hypot(h[a + "_se"], h[bb + "_se"])
            how = f"mean of buy {_g(h[a])} and sell {_g(h[bb])}, {flow_how} (symmetric)"
            unit = "per s" if name == "mu" else "per s per order"
            b.fit(f"flow.{a}", val, se, unit, how)
            b.fit(f"flow.{bb}", val, se, unit, how)
    else:
        for k in ("mu_buy", "mu_sell"):
            b.fit(f"flow.{k}", h[k], h[k + "_se"], "per s", flow_how)
        for k in ("alpha_buy", "alpha_sell"):
            b.fit(f"flow.{k}", h[k], h[k + "_se"], "per s per order", flow_how)
    b.fit("flow.gamma", h["gamma"], h["gamma_se"], "per s per order", flow_how)
    b.fit("flow.beta", h["beta"], h["beta_se"], "per s", f"{flow_how}; branching radius {_g(h['spectral_radius'])}")
    s = m["sizes"]
    law = best_size_law(s)
    par = s[law]
    others = ", ".join(f"{k} {s[k]['check']['ks_stat']:.3f}" for k in SIZE_LAWS)
    b.m["flow"]["size_law"] = law
    if law == "lognormal":
        how = f"lognormal MLE of {s['n']} order sizes (Kolmogorov distance {others})"
        b.fit("flow.size_scale", par["size_scale"], par["size_scale_se"], "base units (median)", how)
        b.fit("flow.size_sigma", par["size_sigma"], par["size_sigma_se"], "sd of log size", how)
    else:
        how = f"Pareto with the median {_g(s['median'])} and mean {_g(s['mean'])} of {s['n']} orders ({others})"
        b.fit("flow.size_scale", par["size_scale"], None, "base units (minimum)", how)
        b.fit("flow.size_tail", par["size_tail"], None, "tail index", how)
    b.notes["flow.size_law"] = f"the law closer to the recorded sizes by Kolmogorov distance ({others})"
    unused = "flow.size_tail" if law == "lognormal" else "flow.size_sigma"
    if unused.split(".")[1] in b.m["flow"]:
        b.notes[unused] = f"from {base_name}: not used by size_law {law}"

    tick = m["tick"]
    w = m["widening"]
    b.fit("spread.tick", tick, None, "quote currency", "the smallest gap between quoted prices", digits=6)
    b.fit("spread.theta0", tick / mid, None, "fraction of mid", "one tick at the mean mid")
    b.fit("spread.s0", tick / mid, None, "fraction of mid", "one tick at the mean mid")
    close, close_se = _closing_rate(w)
    if w["n"] >= 2:
        b.fit("spread.jump_rate", w["rate"], w["rate_se"], "per s", f"{w['n']} widenings, per s of one-tick time")
        b.fit("spread.jump_mean", w["mean_peak_excess"], None, "fraction of mid", "mean peak excess of the widenings")
        b.fit("spread.kappa", close, close_se, "per s", "1 / mean widening duration")
    else:
        for k in ("spread.jump_rate", "spread.jump_mean", "spread.kappa"):
            b.keep(k, f"{w['n']} widenings in the window: too few to fit")
    for k in ("spread.beta_vol", "spread.sigma", "spread.regime_mult"):
        b.keep(k, KEPT[k])

    t = m["touch"]
    touch = 0.5 * (t["bid_qty_median"] + t["ask_qty_median"])
    touch_how = (
        f"mean of the time-weighted median bid / ask sizes {_g(t['bid_qty_median'])} / {_g(t['ask_qty_median'])}"
    )
    b.fit("book.depth_touch", touch, None, "base units", touch_how)
    b.fit("fills.touch_depth", touch, None, "base units", touch_how)
    d = m["depth"]
    if "mean" in d:
        levels = int(base.get("book", {}).get("levels", 5))
        behind = np.asarray(d["mean"][1:levels], float)
        se = float(np.sqrt(np.sum(np.asarray(d["se"][1:levels], float) ** 2))) / len(behind)
        how = (
            f"mean over the {len(behind)} prices behind the touch, depth rebuilt from the snapshot "
            f"and diffs, {d['n']} samples every {d['every_s']:g} s"
        )
        b.fit("book.depth_level", float(behind.mean()), se, "base units per level", how)
        b.fit("fills.depth_per_tick", float(behind.mean()), se, "base units per tick", how)
    else:
        b.keep("book.depth_level", f"no depth to rebuild ({d['skipped']})")
        b.keep("fills.depth_per_tick", "as book.depth_level")
    if w["n"] >= 2:
        b.fit("book.gap_rate", close, close_se, "per s", "1 / mean duration of a spread wider than one tick")
    else:
        b.keep("book.gap_rate", f"{w['n']} widenings in the window: too few to fit")
    for k in ("book.refill_rate", "book.pull_band", "book.pull_rate", "book.cancel_ahead_share", "book.lot"):
        b.keep(k, KEPT[k])
    b.keep("book.new_level_depth", KEPT["book.new_level_depth"])

    _liquidations(b, m, base)
    for k in ("liquidation.alpha", "liquidation.beta", "liquidation.size_scale", "liquidation.size_tail"):
        b.keep(k, KEPT[k])
    b.keep("liquidation.trigger", KEPT["liquidation.trigger"])
    b.keep("adverse", KEPT["adverse"])
    b.keep("funding", KEPT["funding"])

    b.rest()
    header = [
        # "An ETHUSDT", "A BTCUSDT": the symbol is read letter by letter.
        f"{'An' if m['symbol'][:1].upper() in 'AEFHILMNORSX' else 'A'} {m['symbol'].upper()} market fitted to the "
        f"capture {', '.join(m['files'])}",
        f"({where}) by `mmsim calibrate`, over the base market {base_name!r}.",
        "Every field's comment says whether it was fitted (value ± standard error, how, the window)",
        f"or taken from {base_name!r} because a window of minutes cannot identify it.",
        "The calibration report (calibration.md, figures, calibration.json) was written beside this file.",
    ]
    return Calibration(b.m, b.notes, header, b.rows, m, checks(m))


def best_size_law(sizes: dict) -> str:
    """Of :data:`SIZE_LAWS`, the fitted law with the smaller Kolmogorov distance to the sizes."""
    ok = [k for k in SIZE_LAWS if math.isfinite(sizes[k]["check"]["ks_stat"])]
    if not ok:
        raise ValueError(
            f"market-order sizes (median {sizes['median']:g}, mean {sizes['mean']:g}): no size law fits them"
        )
    return min(ok, key=lambda k: sizes[k]["check"]["ks_stat"])


def _closing_rate(w: dict) -> tuple[float, float]:
    """1 / mean duration of the widenings, per second, with its delta-method error from the
    exponential law's sd = mean (an approximation: no duration list is kept)."""
    d = w["mean_duration"]
    if not (w["n"] >= 2 and d > 0):
        return float("nan"), float("nan")
    return 1.0 / d, 1.0 / d / math.sqrt(w["n"])


def _liquidations(b: _Builder, m: dict, base: dict) -> None:
    """Liquidation baselines: the window's forced fills (``X = INSURANCE_FUND`` in the trade
    stream, every one of them: unlike the ``forceOrder`` stream, which pushes at most one order a
    second per symbol) give an exact Poisson interval per side. A base rate inside the pooled
    interval is kept (a handful of events does not identify it better); one outside is
    replaced by the pooled estimate."""
    liq = m["liquidations"]
    n = liq["n_long"] + liq["n_short"]
    T = m["window_s"]
    lo, hi = cal.poisson_rate_interval(n, 2.0 * T)  # per side, sides pooled
    base_liq = base.get("liquidation", {})
    for side in ("mu_long", "mu_short"):
        mu = float(np.mean(np.atleast_1d(base_liq.get(side, 0.0))))
        if lo <= mu <= hi:
            b.keep(
                f"liquidation.{side}",
                f"inside the window's 95 % interval [{_g(lo)}, {_g(hi)}] per s per side "
                f"({n} forced orders in {T:.0f} s)",
            )
        else:
            b.fit(
                f"liquidation.{side}",
                n / (2.0 * T),
                math.sqrt(max(n, 1)) / (2.0 * T),
                "per s",
                f"{n} forced orders in {T:.0f} s, sides pooled",
            )


def checks(m: dict) -> dict:
    """Goodness of fit: the Hawkes time-rescaling KS per side, the size law's Kolmogorov distance
    and its q90/q99 against the recorded ones, the variance signature."""
    h, s = m["hawkes"], m["sizes"]
    return {
        "hawkes_ks": {
            "buy": {"stat": h["ks_stat_buy"], "pvalue": h["ks_pvalue_buy"]},
            "sell": {"stat": h["ks_stat_sell"], "pvalue": h["ks_pvalue_sell"]},
        },
        "size_law": {
            "law": best_size_law(s),
            "ks_critical_5pct": 1.358 / math.sqrt(s["n"]),
            "recorded": {"q90": s["q90"], "q99": s["q99"]},
            **{k: s[k]["check"] for k in SIZE_LAWS},
            "hill_10pct": s["hill_10pct"]["value"],
            "hill_10pct_se": s["hill_10pct"]["se"],
        },
        "variance_signature": {k: {"value": v["value"], "se": v["se"]} for k, v in m["variance"].items()},
    }


def with_book_fit(cal: Calibration, result: dict) -> Calibration:
    """``cal`` with the tick book's microstructure rates set to a book fit's choice
    (:func:`mmsim.validation.fit_book`): each field noted as fitted by simulation, with the
    score of the chosen grid point and of the runner-up (a small gap: weakly identified)."""
    table = result["table"]
    runner = table[1][0] if len(table) > 1 else float("nan")
    how = (
        f"fit by simulation: of {len(table)} grid points, the one whose {result['n_paths']} simulated "
        f"windows (world steps of {_g(result.get('world_dt_s', 1.0))} s) are closest to the window's 1-s facts "
        f"(score {_g(result['score'])}, next {_g(runner)})"
    )
    for k, v in result["chosen"].items():
        cal.market["book"][k] = _round(v)
        cal.notes[f"book.{k}"] = f"{how}"
        cal.rows = [r for r in cal.rows if r["field"] != f"book.{k}"]
        cal.rows.append(dict(field=f"book.{k}", value=_g(v), se=None, unit="", source=how, fitted=True))
    cal.measured["book_fit"] = {
        "facts": list(result["facts"]),
        "recorded": result["recorded"],
        "n_paths": result["n_paths"],
        "world_dt_s": result.get("world_dt_s", 1.0),
        "table": [{"score": sc, **vals, **{f"sim_{k}": m[k] for k in m}} for sc, vals, m in table],
    }
    return cal


def measure_bars(bars: pd.DataFrame, *, jump_k: float = 4.0) -> dict:
    """What minute bars identify (:mod:`mmsim.fit.calibrate`): the 1-hour realized-variance
    regimes and their generator, each regime's diffusive variance (the returns flagged as jumps at
    ``jump_k`` robust standard deviations removed, so that the price's jump part does not count
    them twice), the variance process's mean reversion and vol-of-vol, and the jumps seen while
    the market is low or normal. Plain values (JSON-able)."""
    reg = cal.volatility_regimes(bars)
    vp = cal.fit_variance_process(bars)
    jumps = cal.detect_jumps(bars, k=jump_k)
    r = np.diff(np.log(bars["close"].to_numpy(float)))[-len(reg["regime"]) :]
    is_jump = np.isin(reg["time"], jumps["times"])
    time_in = np.asarray(reg["time_in"], float)
    diffusive = [
        float(np.sum(r[(reg["regime"] == i) & ~is_jump] ** 2) / time_in[i]) if time_in[i] > 0 else float("nan")
        for i in range(len(time_in))
    ]
    calm = np.isin(jumps["times"], reg["time"][reg["regime"] <= 1])
    t = bars["time"].to_numpy(float)
    sizes = np.diff(np.log(bars["close"].to_numpy(float)))[np.isin(t[1:], np.asarray(jumps["times"])[calm])]
    calm_time = float(time_in[:2].sum())
    n_calm = int(calm.sum())
    return {
        "start": str(bars["date"].iloc[0]),
        "end": str(bars["date"].iloc[-1]),
        "n_bars": int(len(bars)),
        "variance": diffusive,
        "variance_se": [float(x) for x in reg["variance_se"]],
        "time_in": time_in.tolist(),
        "occupancy": [float(x) for x in reg["occupancy"]],
        "generator": np.asarray(reg["generator"], float).tolist(),
        "kappa": vp["kappa"],
        "kappa_se": vp["kappa_se"],
        "xi": vp["xi"],
        "xi_se": vp["xi_se"],
        "jump_rate": n_calm / calm_time if calm_time > 0 else float("nan"),
        "jump_rate_se": math.sqrt(max(n_calm, 1)) / calm_time if calm_time > 0 else float("nan"),
        "jump_n": n_calm,
        "jump_mean": float(np.mean(sizes)) if len(sizes) else float("nan"),
        "jump_std": float(np.std(sizes, ddof=1)) if len(sizes) > 1 else float("nan"),
    }


def with_bars(cal_: Calibration, bars: dict, name: str) -> Calibration:
    """``cal_`` with the regimes, their levels and the variance process from minute bars
    (:func:`measure_bars` of the file ``name``), and the window starting in the regime whose
    level is nearest its own variance (on a log scale). Regimes the bars never visited keep the
    window-scaled level and get a zero generator row (nothing leads into them)."""
    m = cal_.market
    where = f"{name}, {bars['start'][:16]} to {bars['end'][:16]} UTC, {bars['n_bars']:,} bars"
    b = _Builder({}, "", where)
    theta = np.asarray(m["vol"]["theta"], float)
    var = np.asarray(bars["variance"], float)
    seen = np.isfinite(var) & (np.asarray(bars["time_in"]) > 0)
    theta = np.where(seen, var, theta)
    v0 = float(m["vol"]["v0"])
    r0 = int(np.argmin(np.where(seen, np.abs(np.log(np.where(seen, theta, 1.0) / v0)), np.inf)))
    b.fit("vol.theta", theta.tolist(), None, "variance per s",
          "each 1-hour realized-variance regime's variance without the jump returns")  # fmt: skip
    # A regime the bars never visited has no row (NaN) and no transitions into it: a zero row.
    g = np.nan_to_num(np.asarray(bars["generator"], float), nan=0.0)
    off = g - np.diag(np.diag(g))
    off = np.array([[_round(x) for x in row] for row in off])
    gen = off - np.diag([_round(x, 10) for x in off.sum(axis=1)])  # rows sum to 0 within rounding
    b.m["vol"]["generator"] = gen.tolist()
    b.notes["vol.generator"] = f"per s; fit: transitions of the classified 1-hour regimes ({where})"
    b.rows.append(dict(field="vol.generator", value=str(gen.tolist()), se=None, unit="per s",
                       source="transitions of the classified 1-hour regimes", fitted=True))  # fmt: skip
    n_r = len(theta)
    if all(math.isfinite(bars[k]) and bars[k] > 0 for k in ("kappa", "xi")):
        how = "hourly-RV moment fit, shared by the regimes"
        b.fit("vol.kappa", [bars["kappa"]] * n_r, bars["kappa_se"], "per s", how)
        b.fit("vol.xi", [bars["xi"]] * n_r, bars["xi_se"], "per sqrt s", how)
    else:  # e.g. a variance without mean reversion in the bars' span
        for k in ("vol.kappa", "vol.xi"):
            cal_.notes[k] = f"{cal_.notes.get(k, '')}; the bars ({name}) do not identify it (no mean reversion found)"
    if bars["jump_n"] >= 2:
        how = f"{bars['jump_n']} returns beyond 4 robust sd while low or normal"
        b.fit("price.jump_rate", bars["jump_rate"], bars["jump_rate_se"], "per s", how)
        b.fit("price.jump_mean", bars["jump_mean"], None, "log price", how)
        b.fit("price.jump_std", bars["jump_std"], None, "log price", how)
    b.m["vol"]["regime0"] = r0
    b.notes["vol.regime0"] = f"the bars' regime nearest the window's variance {_g(v0)} per s"
    # The flow's baselines are multiplied by the regime's factor in simulation: divide the window's
    # fitted baselines by the start regime's, so that the window's rates are what it simulates.
    mult = np.atleast_1d(np.asarray(m.get("flow_regime_mult", [1.0] * n_r), float))
    f = float(mult[r0]) if len(mult) > r0 else 1.0
    if f != 1.0:
        for k in ("mu_buy", "mu_sell"):
            m["flow"][k] = _round(float(m["flow"][k]) / f)
            cal_.notes[f"flow.{k}"] += (
                f"; divided by flow_regime_mult {_g(f)} of the start regime {r0} (the ± is the fit's, before)"
            )
    for block, fields in b.m.items():
        m.setdefault(block, {}).update(fields)
    for k, note in b.notes.items():
        cal_.notes[k] = note
    done = {r["field"] for r in b.rows}
    cal_.rows = [r for r in cal_.rows if r["field"] not in done] + b.rows
    cal_.measured["bars"] = bars
    return cal_


#: Funding history used for a window: this many seconds before its start (a trailing year).
FUNDING_TRAILING_S = 365 * 86_400.0


def measure_funding(funding: pd.DataFrame, t0: float) -> dict:
    """The paid funding rate's Ornstein–Uhlenbeck fit (:func:`mmsim.fit.calibrate.fit_ou`, per
    settlement interval, time in seconds) over the trailing year before ``t0`` (s, UTC epoch); a
    history that ends before it gives its last year, and says so. Plain values."""
    t = funding["time"].to_numpy(float)
    interval_s = float(funding.attrs.get("interval_hours", 8.0)) * 3600.0
    sel = (t < t0) & (t >= t0 - FUNDING_TRAILING_S)
    trailing = bool(sel.sum() >= 30)
    if not trailing:
        sel = t >= t[-1] - FUNDING_TRAILING_S
    f = funding[sel]
    o = cal.fit_ou(f["rate"].to_numpy(float), interval_s)
    return {
        "start": str(f["date"].iloc[0]),
        "end": str(f["date"].iloc[-1]),
        "n": int(len(f)),
        "trailing": trailing,
        "interval_s": interval_s,
        "at_interest": float(np.mean(np.isclose(f["rate"].to_numpy(float), 1e-4))),
        **{k: o[k] for k in ("kappa", "kappa_se", "theta", "theta_se", "sigma", "sigma_se", "half_life")},
        "mean_reverting": bool(o["mean_reverting"]),
    }


def with_funding(cal_: Calibration, fund: dict, name: str) -> Calibration:
    """``cal_`` with the funding process fitted to a history (:func:`measure_funding` of the file
    ``name``): the OU of the paid rate (``clamp`` 0: the OU is the paid rate itself, as in the
    base market); the cap and the cross-venue divergence stay the base's."""
    if not fund["mean_reverting"]:
        raise ValueError(
            f"{name}: the funding rate shows no mean reversion in {fund['start'][:10]}..{fund['end'][:10]}"
        )
    span = f"{name}, {fund['n']} settlements {fund['start'][:10]} to {fund['end'][:10]}"
    span += "" if fund["trailing"] else " (the history ends before the window: its last year)"
    b = _Builder({}, "", span)
    how = f"OU of the paid rate, half-life {_g(fund['half_life'] / 3600)} h"
    b.fit("funding.kappa", fund["kappa"], fund["kappa_se"], "per s", how)
    b.fit("funding.theta", fund["theta"], fund["theta_se"], "per interval", how)
    b.fit("funding.sigma", fund["sigma"], fund["sigma_se"], "per interval per sqrt s", how)
    b.m["funding"]["clamp"] = 0.0
    b.notes["funding.clamp"] = "0: the fitted OU is the paid rate itself"
    b.m["funding"]["interval_s"] = fund["interval_s"]
    b.notes["funding.interval_s"] = f"s; the history's median spacing ({name})"
    cal_.market.setdefault("funding", {}).update(b.m["funding"])
    cal_.notes.pop("funding", None)  # the block is no longer kept whole
    base_note = "from the base: the interest rate, the cap and the divergence from another venue are not fitted"
    for k in cal_.market["funding"]:
        cal_.notes.setdefault(f"funding.{k}", base_note)
    cal_.notes.update(b.notes)
    cal_.rows = [r for r in cal_.rows if r["field"] != "funding"] + b.rows
    cal_.measured["funding"] = fund
    return cal_


def base_market(name: str) -> dict:
    """The plain mapping of ``conf/market/NAME.yaml`` as a run composes it."""
    from omegaconf import OmegaConf

    from mmsim import config

    try:
        cfg = config.compose([f"market={name}"])
    except Exception as e:  # Hydra's own message names the missing option
        raise ValueError(f"--base {name}: no such market config ({type(e).__name__})") from None
    return OmegaConf.to_container(cfg.market, resolve=True)


def calibrate(
    paths: Sequence[str | Path],
    *,
    base: str = "btcusdt",
    symbol: str | None = None,
    tick: float | None = None,
    symmetric_flow: bool = False,
    cap: dict | None = None,
) -> Calibration:
    """:func:`read`, :func:`measure` and :func:`fit` in one call (what ``mmsim calibrate`` runs);
    ``cap``: the captures already read by :func:`read` (then ``paths`` and ``symbol`` are not
    read again)."""
    base_cfg = base_market(base)
    levels = int(base_cfg.get("book", {}).get("levels", 5))
    measured = measure(cap if cap is not None else read(paths, symbol=symbol), tick=tick, levels=levels)
    sizes = measured.pop("order_sizes")
    out = fit(measured, base_cfg, base, symmetric_flow=symmetric_flow)
    out.sizes = sizes
    return out
