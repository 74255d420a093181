"""Formatting shared by every report: numbers for tables, JSON that never holds NaN or Infinity,
Markdown and text tables, the liquidation claim sentence, and the matplotlib set-up (Agg backend)
with the one figure writer."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mmsim._pytree import to_plain
from mmsim.regimes import REGIME_NAMES  # noqa: F401  (re-exported for the figures)

REGIME_COLORS = ("#d8f0d8", None, "#ffe0b0", "#ffb0b0")


DPI = 110


def fmt(x: Any, digits: int = 4) -> str:
    """A number for a table: 4 significant digits, thousands kept readable; '-' for None/NaN."""
    if x is None:
        return "-"
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return f"{int(x):,}"
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if not math.isfinite(v):
        return "-" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if v == 0:
        return "0"
    if 10**digits <= abs(v) < 1e12:
        return f"{v:,.0f}"
    if 1e-3 <= abs(v) < 1e6:
        s = f"{v:.{digits}g}"
        return s if "e" not in s else f"{v:.{digits}e}"
    return f"{v:.{digits - 1}e}"


def sanitize(obj: Any) -> Any:
    """JSON-ready copy: numpy scalars/arrays to Python, non-finite floats to None (strict JSON)."""
    return to_plain(obj, nonfinite="none")


def save_figure(fig, path: Path, **savefig_kw) -> Path:
    """Write ``fig`` to ``path`` at the reports' resolution and close it; returns the path."""
    fig.savefig(path, dpi=DPI, **savefig_kw)
    plt.close(fig)
    return Path(path)


def write_json(path: Path, obj: Any) -> None:
    Path(path).write_text(json.dumps(sanitize(obj), indent=2, allow_nan=False) + "\n")


def md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(c if isinstance(c, str) else fmt(c) for c in r) + " |")
    return "\n".join(lines)


def text_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain-text table for the terminal."""
    rows = [[c if isinstance(c, str) else fmt(c) for c in r] for r in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in rows)) if rows else len(str(h)) for i, h in enumerate(headers)]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(str(h).ljust(w) for h, w in zip(headers, widths)), line]
    for r in rows:
        out.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return "\n".join(out)


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100.0 * float(x):.3g} %"


def liquidation_claim(p_liq: dict, epsilon: float, ci_level: float = 0.95) -> str:
    """The sentence the report may make about P(liquidation): "≈ 0" only when the Clopper-Pearson
    upper bound is at most ``epsilon``; otherwise the bound is stated."""
    n = p_liq.get("n") or None
    k, hi = p_liq["count"], p_liq["ci_high"]
    paths = f" of {n:,} paths" if n else ""
    if hi <= epsilon:
        return (
            f"P(liquidation) ≈ 0: {k} liquidation(s){paths}; the {ci_level:.0%} Clopper-Pearson upper bound "
            f"{hi:.3g} is below the target ε = {epsilon:g}."
        )
    return (
        f"P(liquidation) is NOT certified to be approximately 0: {k} liquidation(s){paths}, estimate "
        f"{p_liq['estimate']:.3g}, {ci_level:.0%} Clopper-Pearson interval [{p_liq['ci_low']:.3g}, {hi:.3g}]; "
        f"the upper bound {hi:.3g} exceeds the target ε = {epsilon:g}"
        + (" (more paths would be needed to certify it)" if k == 0 else "")
        + "."
    )


def rare_event_claim(rare: dict, epsilon: float, ci_level: float = 0.95) -> str:
    """The sentence the report may make about P(liquidation) from a rare-event estimate
    (:mod:`mmsim.sim.rare`): "≈ 0" only when it certifies ``epsilon`` (its ``certified`` and
    ``why``, from :func:`mmsim.sim.rare.certifies`; else its upper end against ``epsilon``);
    with no hits, that nothing is certified."""
    how = rare["method"]
    if rare.get("ci_high") is None:
        return f"P(liquidation) is NOT certified: {how} found no liquidation ({rare.get('note', '')})."
    est, lo, hi = rare["estimate"], rare["ci_low"], rare["ci_high"]
    span = f"estimate {est:.3g}, {ci_level:.0%} interval [{lo:.3g}, {hi:.3g}] by {how}"
    ok, why = rare.get("certified", hi <= epsilon), rare.get("why", f"the upper end exceeds {epsilon:g}")
    if ok:
        return f"P(liquidation) ≈ 0: {span}; the upper end is below the target ε = {epsilon:g}."
    return f"P(liquidation) is NOT certified to be approximately 0: {span}; {why} (target ε = {epsilon:g})."


def _tilt_term(name: str, value) -> str:
    """One field of a tilt for the report: a number, one per time bucket, or a flag."""
    if isinstance(value, bool):
        return f"{name} {'yes' if value else 'no'}"
    if isinstance(value, list):
        return f"{name} [" + ", ".join(f"{v:.3g}" for v in value) + "] by bucket"
    return f"{name} {value:.3g}"


def rare_event_paragraph(rare: dict) -> str:
    """One paragraph saying what the rare-event estimate certified and how."""
    if rare["method"] == "importance sampling":
        t = rare.get("tilt") or {}
        tilt = ", ".join(_tilt_term(k, v) for k, v in t.items() if not (k == "bucket_s" and not v))
        its = len(rare.get("ce_iterations") or [])
        how = (
            f"{rare['n']:,} paths were drawn from the tilted world ({tilt}; "
            + (f"chosen by {its} cross-entropy iterations" if its else "given in the config")
            + "), each weighted by its likelihood ratio up to its liquidation; the interval is the normal "
            "interval of the weighted mean"
        )
        if rare.get("ci_high") is None:
            return how + ". No tilted path was liquidated, so nothing is certified."
        vrf = rare.get("vrf")
        return (
            how + f", checked by a Poisson bootstrap [{rare['boot_low']:.3g}, {rare['boot_high']:.3g}]. "
            f"{rare['hits']:,} liquidated paths carry an effective sample size of {rare['ess']:.3g}; "
            f"one tilted path is worth {vrf:.3g} plain ones (variance-reduction factor)"
            + (
                "; below 2, the tilt does not pay: the tilted streams are not what liquidates this policy."
                if vrf < 2
                else "."
            )
        )
    lv = ", ".join(f"{x:.3g}" for x in rare["levels"])
    ps = ", ".join(f"{x:.3g}" for x in rare["stage_p"])
    out = (
        f"Multilevel splitting: {rare['replicates']} independent replicates of {rare['n_paths']:,} paths per stage; "
        f"a path whose running minimum margin ratio falls below a level ({lv}) is cloned, with fresh draws, "
        f"to fill the next stage, whose last is the liquidation itself (mean fractions per stage: {ps}). "
        "The estimate is the product of the fractions, its interval the t-interval over the replicates"
    )
    if rare.get("vrf") is not None:
        vrf = rare["vrf"]
        out += f"; its variance-reduction factor against plain Monte Carlo at the same path-steps is {vrf:.3g}" + (
            " (below 1: at this probability plain paths would do better)." if vrf < 1 else "."
        )
    else:
        out += ". No replicate reached the liquidation, so nothing is certified."
    return out


def summary_rows(m: dict) -> list[tuple[str, str]]:
    """The headline numbers of a risk run as (label, value) rows."""
    pl, pd_, p = m["p_liquidation"], m["p_drawdown"], m["pnl"]
    dd = m["max_drawdown"]
    rows = [
        (
            "paths x steps (dt)",
            f"{m['n_paths']:,} x {m['n_steps']:,} ({fmt(m['dt_s'])} s"
            + (f"; world {fmt(m['world_dt_s'])} s)" if m.get("world_substeps", 1) > 1 else ")"),
        ),
        ("horizon", f"{fmt(m['horizon_s'])} s"),
        ("P(liquidation) [CI]", f"{fmt(pl['estimate'])} [{fmt(pl['ci_low'])}, {fmt(pl['ci_high'])}] ({pl['count']})"),
        (
            f"P(max DD > {pct(pd_['threshold'])} equity) [CI]",
            f"{fmt(pd_['estimate'])} [{fmt(pd_['ci_low'])}, {fmt(pd_['ci_high'])}] ({pd_['count']})",
        ),
    ]
    pls = m.get("p_loss")
    if pls:
        rows.append(
            (
                f"P(loss > {pct(pls['threshold'])} equity) [CI]",
                f"{fmt(pls['estimate'])} [{fmt(pls['ci_low'])}, {fmt(pls['ci_high'])}] ({pls['count']})",
            )
        )
    rare = m.get("rare_event")
    if rare and rare.get("ci_high") is not None:
        rows.append(
            (
                f"P(liquidation) by {rare['method']} [CI]",
                f"{fmt(rare['estimate'])} [{fmt(rare['ci_low'])}, {fmt(rare['ci_high'])}]",
            )
        )
    rows += [
        ("PnL mean ± se", f"{fmt(p['mean'])} ± {fmt(p.get('se_mean'))}"),
        ("PnL sd", fmt(p["std"])),
        ("PnL q01 / q50 / q99", f"{fmt(p['q01'])} / {fmt(p['q50'])} / {fmt(p['q99'])}"),
        ("VaR 99 / CVaR 99", f"{fmt(p['var_99'])} / {fmt(p['cvar_99'])}"),
        ("VaR 95 / CVaR 95", f"{fmt(p['var_95'])} / {fmt(p['cvar_95'])}"),
        ("max drawdown mean / q95 / q99", f"{fmt(dd['mean'])} / {fmt(dd['q95'])} / {fmt(dd['q99'])}"),
        ("fills per path bid / ask", f"{fmt(m['fills']['bid_mean'])} / {fmt(m['fills']['ask_mean'])}"),
    ]
    ttl = m.get("time_to_liquidation") or {}
    if ttl.get("count"):
        rows.append(
            ("time to liquidation q05 / q50 / q95 (s)", f"{fmt(ttl['q05'])} / {fmt(ttl['q50'])} / {fmt(ttl['q95'])}")
        )
    rows += [
        ("throughput (path-steps / s)", fmt(m["throughput_path_steps_per_s"])),
        ("compile / run (s)", f"{fmt(m['compile_s'])} / {fmt(m['run_s'])}"),
    ]
    if m.get("non_finite_steps"):
        rows.append(("non-finite equity steps (flagged)", fmt(m["non_finite_steps"])))
    return rows


def _time_axis(t: np.ndarray) -> tuple[np.ndarray, str]:
    t = np.asarray(t, float)
    span = float(t[-1] - t[0]) if t.size else 0.0
    if span >= 7200:
        return t / 3600.0, "time (h)"
    if span >= 600:
        return t / 60.0, "time (min)"
    return t, "time (s)"
