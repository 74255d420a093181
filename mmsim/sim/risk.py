"""Risk: per-path running metrics (inside the scan, O(1) per path) and the statistics across paths.

Per path, updated every step without storing traces: running peak equity, maximum drawdown
(absolute, quote currency, and as a fraction of the running peak), minimum margin ratio, maximum
|inventory| per asset, liquidation flag and time. Final PnL, its decomposition and the fill counts
come from the account state at the end of the path.

Across paths (host side, numpy/scipy): P(liquidation) and P(max drawdown > x) with exact
Clopper-Pearson intervals and the counts behind them, PnL mean, sd, quantiles, VaR and CVaR at
95 % and 99 % (as positive losses), the distribution of the time to liquidation and the cumulative
P(liquidation by t) with its pointwise band. "Approximately zero" is only ever claimed from an
upper bound: see :func:`certify_below`.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from mmsim.world import tilt as tilt_mod


class PathRisk(NamedTuple):
    peak_equity: jax.Array  # () quote currency
    max_dd: jax.Array  # () quote currency
    max_dd_frac: jax.Array  # () fraction of the running peak
    min_margin_ratio: jax.Array  # ()
    min_excess: jax.Array  # () minimum equity - maintenance margin, quote currency (<= 0: liquidated)
    max_abs_inventory: jax.Array  # (A,) base units
    liquidated: jax.Array  # () bool
    liq_time: jax.Array  # () seconds, -1 if never
    n_bad: jax.Array  # () int32 steps whose equity was not finite (flagged, not propagated)
    tilt: Any = None  # TiltInfo summed up to the liquidation (a tilted world only)
    log_lr_full: Any = None  # () float64 log likelihood ratio of the whole path (a tilted world only)


def init(initial_equity, n_assets: int, dtype=jnp.float32, *, tilt_buckets: int = 0) -> PathRisk:
    """A path's running metrics at t = 0; ``tilt_buckets``: the time buckets of the world's tilt
    (0: an untilted world)."""
    return PathRisk(
        peak_equity=jnp.asarray(initial_equity, dtype),
        max_dd=jnp.zeros((), dtype),
        max_dd_frac=jnp.zeros((), dtype),
        min_margin_ratio=jnp.asarray(np.inf, dtype),
        min_excess=jnp.asarray(initial_equity, dtype),
        max_abs_inventory=jnp.zeros((n_assets,), dtype),
        liquidated=jnp.zeros((), bool),
        liq_time=-jnp.ones((), dtype),
        n_bad=jnp.zeros((), jnp.int32),
        tilt=tilt_mod.zero(tilt_buckets) if tilt_buckets else None,
        log_lr_full=jnp.zeros((), jnp.float64) if tilt_buckets else None,
    )


def add_tilt(r: PathRisk, step) -> PathRisk:
    """Add a world step's change of measure (a :class:`mmsim.world.tilt.TiltInfo`, or None) to
    the path's: up to the liquidation for the liquidation estimate (what follows it cannot change
    the event, and leaving it out lowers the variance), and over the whole path."""
    if step is None or r.tilt is None:
        return r
    keep = ~r.liquidated
    upto = tilt_mod.TiltInfo(*(a + jnp.where(keep, b, 0.0) for a, b in zip(r.tilt, step)))
    return r._replace(tilt=upto, log_lr_full=r.log_lr_full + step.log_lr)


def tilt_summary(r: PathRisk) -> dict:
    """The per-path fields of the change of measure: the log likelihood ratios (up to the
    liquidation and of the whole path) and the tilt's statistics, ``(K, 13)`` over its K time
    buckets (``(1, 13)`` zeros without a tilt)."""
    if r.tilt is None:
        z = jnp.zeros((), jnp.float64)
        return {"log_w": z, "log_w_full": z, "tilt_stats": jnp.zeros((1, tilt_mod.N_STATS), jnp.float64)}
    return {"log_w": r.tilt.log_lr, "log_w_full": r.log_lr_full, "tilt_stats": jnp.stack(r.tilt[1:], axis=-1)}


def update(r: PathRisk, equity, margin_ratio, position, liquidated_now, t) -> PathRisk:
    """One step of the running metrics (equity in quote currency, t in seconds). The excess over
    the maintenance margin is ``equity (1 - 1 / margin_ratio)``, 0 at a liquidation."""
    ok = jnp.isfinite(equity)
    maintenance = jnp.where(jnp.isfinite(margin_ratio) & (margin_ratio > 0), equity / margin_ratio, 0.0)
    excess = jnp.where(liquidated_now, 0.0, equity - maintenance)
    eq = jnp.where(ok, equity, r.peak_equity)
    peak = jnp.maximum(r.peak_equity, eq)
    dd = peak - eq
    return PathRisk(
        peak_equity=peak,
        max_dd=jnp.maximum(r.max_dd, dd),
        max_dd_frac=jnp.maximum(r.max_dd_frac, dd / jnp.maximum(peak, 1e-12)),
        min_margin_ratio=jnp.minimum(r.min_margin_ratio, jnp.where(jnp.isfinite(margin_ratio), margin_ratio, np.inf)),
        min_excess=jnp.minimum(r.min_excess, jnp.where(jnp.isfinite(excess), excess, r.min_excess)).astype(
            r.min_excess.dtype
        ),
        max_abs_inventory=jnp.maximum(r.max_abs_inventory, jnp.abs(position)),
        liquidated=r.liquidated | liquidated_now,
        liq_time=jnp.where(liquidated_now & ~r.liquidated, t, r.liq_time).astype(r.liq_time.dtype),
        n_bad=r.n_bad + (~ok).astype(jnp.int32),
        tilt=r.tilt,
        log_lr_full=r.log_lr_full,
    )


# ------------------------------------------------------------------------------------------------
# Across paths


def _beta_upper(k: float, n: int, alpha: float) -> float:
    """The Clopper-Pearson upper end ``Beta^-1(1 - alpha/2; k + 1, n - k)`` at a count ``k`` (real
    counts allowed, 0 <= k < n)."""
    return float(stats.beta.ppf(1 - alpha / 2, k + 1, n - k))


def clopper_pearson(count: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Exact two-sided (1 - alpha) interval for a binomial proportion (Clopper & Pearson 1934):
    [Beta^-1(alpha/2; k, n - k + 1), Beta^-1(1 - alpha/2; k + 1, n - k)]; at k = 0 the upper end is
    1 - (alpha/2)^(1/n)."""
    if n <= 0:
        raise ValueError(f"n = {n}: must be a positive number of paths")
    if not 0 <= count <= n:
        raise ValueError(f"count = {count}: must lie in [0, n = {n}]")
    lo = 0.0 if count == 0 else float(stats.beta.ppf(alpha / 2, count, n - count + 1))
    hi = 1.0 if count == n else _beta_upper(count, n, alpha)
    return lo, hi


def proportion(flags: np.ndarray, alpha: float = 0.05) -> dict:
    """Count, estimate and Clopper-Pearson interval of a boolean array (one entry per path)."""
    flags = np.asarray(flags, bool)
    k, n = int(flags.sum()), int(flags.size)
    lo, hi = clopper_pearson(k, n, alpha)
    return {"count": k, "n": n, "estimate": k / n, "ci_low": lo, "ci_high": hi}


def cp_upper(p: float, n: int, alpha: float = 0.05) -> float:
    """Clopper-Pearson upper bound ``Beta^-1(1 - alpha/2; k + 1, n - k)`` at a real count
    ``k = n p`` (smooth and increasing in p; at k = 0 it is ``1 - (alpha/2)^(1/n)``)."""
    return _beta_upper(min(max(float(p) * n, 0.0), n - 1e-9), n, alpha)


def min_certifiable(n: int, alpha: float = 0.05) -> float:
    """The smallest epsilon n paths can certify: the upper bound with 0 events, 1 - (alpha/2)^(1/n)."""
    return 1.0 - (alpha / 2.0) ** (1.0 / n)


def paths_to_certify(epsilon: float, alpha: float = 0.05) -> int:
    """Paths needed so that 0 events give an upper bound <= epsilon: ln(alpha/2) / ln(1 - epsilon)."""
    return int(math.ceil(math.log(alpha / 2.0) / math.log1p(-epsilon)))


def certifiable_count(epsilon: float, n: int, alpha: float = 0.05) -> int:
    """The largest event count k whose Clopper-Pearson upper bound at n paths is <= epsilon
    (-1 when even 0 events cannot certify epsilon)."""
    if cp_upper(0.0, n, alpha) > epsilon:
        return -1
    lo, hi = 0, max(1, int(epsilon * n))  # the bound exceeds k / n, so k* < epsilon n
    while lo < hi:  # largest k with bound <= epsilon
        mid = (lo + hi + 1) // 2
        if cp_upper(mid / n, n, alpha) <= epsilon:
            lo = mid
        else:
            hi = mid - 1
    return lo


def certify_below(p: dict, epsilon: float) -> bool:
    """True only when the upper end of the interval is at most ``epsilon`` ("approximately 0")."""
    return p["ci_high"] <= epsilon


def var_cvar(pnl: np.ndarray, level: float) -> tuple[float, float]:
    """Value at risk and conditional value at risk at ``level`` (e.g. 0.99) as positive losses:
    VaR = -q_{1-level}(PnL), CVaR = -E[PnL | PnL <= q_{1-level}]."""
    pnl = np.asarray(pnl, float)
    q = float(np.quantile(pnl, 1.0 - level))
    tail = pnl[pnl <= q]
    return -q, float(-tail.mean()) if tail.size else -q


def pnl_summary(pnl: np.ndarray) -> dict:
    pnl = np.asarray(pnl, float)
    out = {
        "mean": float(pnl.mean()),
        "std": float(pnl.std(ddof=1)) if pnl.size > 1 else 0.0,
        "se_mean": float(pnl.std(ddof=1) / np.sqrt(pnl.size)) if pnl.size > 1 else 0.0,
    }
    for q in (0.01, 0.05, 0.5, 0.95, 0.99):
        out[f"q{int(round(q * 100)):02d}"] = float(np.quantile(pnl, q))
    for level in (0.95, 0.99):
        v, c = var_cvar(pnl, level)
        out[f"var_{int(level * 100)}"] = v
        out[f"cvar_{int(level * 100)}"] = c
    return out


def liquidation_curve(liq_time: np.ndarray, horizon_s: float, n_points: int = 100, alpha: float = 0.05) -> dict:
    """Cumulative P(liquidated by t) on a grid of times with pointwise Clopper-Pearson bands."""
    liq_time = np.asarray(liq_time, float)
    n = liq_time.size
    grid = np.linspace(0.0, horizon_s, n_points + 1)[1:]
    counts = np.array([np.sum((liq_time >= 0) & (liq_time <= t)) for t in grid])
    bands = np.array([clopper_pearson(int(k), n, alpha) for k in counts])
    return {"t": grid, "count": counts, "estimate": counts / n, "ci_low": bands[:, 0], "ci_high": bands[:, 1]}


def time_to_liquidation(liq_time: np.ndarray) -> dict:
    t = np.asarray(liq_time, float)
    t = t[t >= 0]
    if t.size == 0:
        return {"count": 0}
    return {
        "count": int(t.size),
        "mean": float(t.mean()),
        "q05": float(np.quantile(t, 0.05)),
        "q50": float(np.quantile(t, 0.5)),
        "q95": float(np.quantile(t, 0.95)),
    }


def summarize(result, drawdown_threshold: float, alpha: float = 0.05, loss_threshold: float = 0.2) -> dict:
    """The across-path statistics of a :class:`mmsim.sim.simulate.SimResult` as a JSON-ready dict.

    ``drawdown_threshold`` is a fraction of the initial equity: P(max drawdown > threshold *
    initial equity); ``loss_threshold`` too: P(final PnL < -threshold * initial equity), the
    drain that empties an account without liquidating it. Intervals are exact two-sided
    Clopper-Pearson at level ``1 - alpha``.
    """
    from mmsim.engine import PNL_COMPONENTS

    s = result.summary
    n = int(np.asarray(s.pnl).shape[0])
    if not 0.0 < drawdown_threshold:
        raise ValueError(f"drawdown_threshold = {drawdown_threshold!r}: must be a positive fraction of equity")
    dd_abs = np.asarray(s.max_dd, float)
    dd_frac_init = dd_abs / result.initial_equity
    p_liq = proportion(np.asarray(s.liquidated), alpha)
    p_dd = proportion(dd_frac_init > drawdown_threshold, alpha)
    if not 0.0 < loss_threshold:
        raise ValueError(f"loss_threshold = {loss_threshold!r}: must be a positive fraction of equity")
    p_loss = proportion(np.asarray(s.pnl, float) < -loss_threshold * result.initial_equity, alpha)
    comps = np.asarray(s.pnl_components, float)
    fills = np.asarray(s.n_fills, float)
    liq_time = np.asarray(s.liq_time, float)
    return {
        "n_paths": n,
        "horizon_s": result.n_steps * result.dt,
        "dt_s": result.dt,
        "world_substeps": result.world_substeps,
        "world_dt_s": result.dt / result.world_substeps,
        "n_steps": result.n_steps,
        "seed": result.seed,
        "initial_equity": result.initial_equity,
        "p_liquidation": {k: p_liq[k] for k in ("count", "estimate", "ci_low", "ci_high")},
        "p_drawdown": {
            "threshold": drawdown_threshold,
            **{k: p_dd[k] for k in ("count", "estimate", "ci_low", "ci_high")},
        },
        "p_loss": {
            "threshold": loss_threshold,
            **{k: p_loss[k] for k in ("count", "estimate", "ci_low", "ci_high")},
        },
        "pnl": pnl_summary(np.asarray(s.pnl, float)),
        "max_drawdown": {
            "mean": float(dd_abs.mean()),
            "q50": float(np.quantile(dd_abs, 0.5)),
            "q95": float(np.quantile(dd_abs, 0.95)),
            "q99": float(np.quantile(dd_abs, 0.99)),
            "frac_of_peak_q99": float(np.quantile(np.asarray(s.max_dd_frac, float), 0.99)),
        },
        "pnl_decomposition": {name: float(comps[:, i].mean()) for i, name in enumerate(PNL_COMPONENTS)},
        "fills": {"bid_mean": float(fills[..., 0].sum(-1).mean()), "ask_mean": float(fills[..., 1].sum(-1).mean())},
        "min_margin_ratio": {
            "q01": float(np.quantile(np.asarray(s.min_margin_ratio, float), 0.01)),
            "q50": float(np.quantile(np.asarray(s.min_margin_ratio, float), 0.5)),
        },
        "max_abs_inventory": {
            "mean": float(np.asarray(s.max_abs_inventory, float).max(-1).mean()),
            "q99": float(np.quantile(np.asarray(s.max_abs_inventory, float).max(-1), 0.99)),
        },
        "time_to_liquidation": time_to_liquidation(liq_time),
        "non_finite_steps": int(np.asarray(s.n_bad).sum()),
        "throughput_path_steps_per_s": result.path_steps_per_s,
        "compile_s": result.compile_s,
        "run_s": result.run_s,
    }
