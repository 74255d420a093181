"""The report of ``mmsim calibrate``: ``calibration.md`` (every field fitted or kept, with its
standard error and source; the goodness of fit), ``calibration.json`` (everything measured) and
figures: the order-size law against the recorded sizes, the mid's variance signature and the
book's depth profile."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from mmsim.report.common import fmt, md_table, save_figure, write_json

#: A fitted law whose recorded quantile differs from the fitted one by more than this factor is
#: flagged in the report.
QUANTILE_FLAG = 1.5


def warnings(checks: dict) -> list[str]:
    """The goodness-of-fit failures of a calibration, one sentence each."""
    out = []
    s = checks["size_law"]
    law = s["law"]
    chosen = s[law]
    if chosen["ks_stat"] > s["ks_critical_5pct"]:
        out.append(
            f"the {law} order-size law is rejected: Kolmogorov distance {chosen['ks_stat']:.3f} against the 5 % "
            f"critical value {s['ks_critical_5pct']:.3f}"
        )
    for q in ("q90", "q99"):
        rec, fit = s["recorded"][q], chosen[q]
        if fit > 0 and not (1 / QUANTILE_FLAG <= rec / fit <= QUANTILE_FLAG):
            out.append(f"order sizes: recorded {q} {rec:.3g} against the fitted {law} law's {fit:.3g}")
    for side, k in checks["hawkes_ks"].items():
        if k["pvalue"] < 0.01:
            out.append(
                f"the Hawkes fit of the {side} orders fails the time-rescaling test (KS {k['stat']:.3f}, "
                f"p = {k['pvalue']:.2g})"
            )
    return out


def write(cal, out_dir: str | Path, yaml_path: str | Path, command: str, sizes: np.ndarray | None = None) -> list[Path]:
    """Write the report of the :class:`~mmsim.fit.capture.Calibration` ``cal`` (whose market was
    written to ``yaml_path`` by ``command``) into ``out_dir``; ``sizes``: the recorded
    market-order sizes (base units) for the size-law figure. Returns the files written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    m = cal.measured
    files = [out / "calibration.json"]
    write_json(files[0], {"measured": m, "checks": cal.checks, "fields": cal.rows, "market": cal.market})
    figs = []
    if sizes is not None and len(sizes):
        figs.append(_size_figure(out / "size_law.png", np.asarray(sizes, float), m["sizes"]))
    if m["variance"]:
        figs.append(_signature_figure(out / "variance_signature.png", m["variance"]))
    if "mean" in m["depth"]:
        figs.append(_depth_figure(out / "depth_profile.png", m["depth"]))
    lines = [
        f"# Calibration: {m['symbol'].upper()} from {', '.join(m['files'])}",
        "",
        f"Written by `{command}` to `{Path(yaml_path).name}`. Window: {fmt(m['window_s'])} s of exchange "
        f"time, {m['n_trades']:,} trades ({m['n_orders']:,} market orders after merging the fills "
        f"of one order), tick {m['tick']:g}.",
        "",
    ]
    warn = warnings(cal.checks)
    if warn:
        lines += ["**Goodness-of-fit warnings.**", ""] + [f"- {w}" for w in warn] + [""]
    fitted = [r for r in cal.rows if r["fitted"]]
    kept = [r for r in cal.rows if not r["fitted"]]
    lines += [
        "## Fitted from the window",
        "",
        md_table(
            ["field", "value", "standard error", "unit", "how"],
            [
                (f"`{r['field']}`", r["value"], fmt(r["se"]) if r["se"] is not None else "–", r["unit"], r["source"])
                for r in fitted
            ],
        ),
        "",
        "## Kept from the base market",
        "",
        md_table(["field", "value", "why"], [(f"`{r['field']}`", r["value"], r["source"]) for r in kept]),
        "",
        "## Goodness of fit",
        "",
    ]
    c = cal.checks
    s = c["size_law"]
    size_rows = []
    for law in ("lognormal", "pareto"):
        k = s[law]
        tag = f"{law} (written)" if law == s["law"] else law
        size_rows += [
            (
                f"order size q90, {tag}",
                fmt(s["recorded"]["q90"]),
                fmt(k["q90"]),
                _ratio(s["recorded"]["q90"], k["q90"]),
            ),
            (
                f"order size q99, {tag}",
                fmt(s["recorded"]["q99"]),
                fmt(k["q99"]),
                _ratio(s["recorded"]["q99"], k["q99"]),
            ),
            (
                f"order sizes, Kolmogorov distance, {tag}",
                fmt(k["ks_stat"]),
                f"5 % critical {fmt(s['ks_critical_5pct'])}",
                "rejected" if k["ks_stat"] > s["ks_critical_5pct"] else "not rejected",
            ),
        ]
    lines += [
        md_table(
            ["check", "recorded", "fitted", "verdict"],
            [
                *size_rows,
                ("Hill tail index of the largest 10 %", f"{fmt(s['hill_10pct'])} ± {fmt(s['hill_10pct_se'])}", "", ""),
                *[
                    (
                        f"Hawkes time rescaling, {side} (KS)",
                        fmt(k["stat"]),
                        f"p = {k['pvalue']:.2g}",
                        "rejected at 1 %" if k["pvalue"] < 0.01 else "not rejected",
                    )
                    for side, k in c["hawkes_ks"].items()
                ],
            ],
        ),
        "",
        "Variance signature (variance of log mid per second at each sampling step; a flat "
        "signature means the book's tick noise does not bias the level the fit uses):",
        "",
        md_table(
            ["step, s", "variance per s", "standard error", "sigma per sqrt(s)"],
            [
                (k, fmt(v["value"]), fmt(v["se"]), fmt(math.sqrt(v["value"])))
                for k, v in c["variance_signature"].items()
            ],
        ),
        "",
    ]
    if "mean" in m["depth"]:
        d = m["depth"]
        lines += [
            f"Depth profile (base units at the touch and each tick behind it; both sides, "
            f"{d['n']} samples every {d['every_s']:g} s):",
            "",
            md_table(
                ["level", "mean", "standard error", "median"],
                [
                    (str(i), fmt(a), fmt(b), fmt(c_))
                    for i, (a, b, c_) in enumerate(zip(d["mean"], d["se"], d["median"]))
                ],
            ),
            "",
        ]
    bf = m.get("book_fit")
    if bf:
        keys = [k for k in bf["table"][0] if k != "score" and not k.startswith("sim_")]
        lines += [
            f"Book fit by simulation ({bf['n_paths']} simulated windows per grid point, float64): the "
            "best grid points, their simulated facts (medians over the windows) and the score (squared "
            "distance in units of each recorded fact's 95 % half-width, summed):",
            "",
            md_table(
                [*keys, *[f"`{k}`" for k in bf["facts"]], "score"],
                [
                    ("recorded",)
                    + ("",) * (len(keys) - 1)
                    + tuple(fmt(bf["recorded"][k], 3) for k in bf["facts"])
                    + ("",),
                    *[
                        (*[fmt(r[k]) for k in keys], *[fmt(r[f"sim_{k}"], 3) for k in bf["facts"]], fmt(r["score"], 3))
                        for r in bf["table"][:8]
                    ],
                ],
            ),
            "",
        ]
    captions = {
        "size_law.png": "recorded market-order sizes (quantiles) against the fitted law's",
        "variance_signature.png": "variance of log mid per second against the sampling step",
        "depth_profile.png": "mean base units at the touch (level 0) and behind it",
    }
    lines += ["## Figures", ""] + [f"- `{f.name}`: {captions[f.name]}" for f in figs] + [""]
    md = out / "calibration.md"
    md.write_text("\n".join(lines))
    return [*files, md, *figs]


def _ratio(rec: float, fit: float) -> str:
    if not (fit > 0 and math.isfinite(rec)):
        return ""
    r = rec / fit
    return f"recorded/fitted {r:.2g}" + (" (flagged)" if not (1 / QUANTILE_FLAG <= r <= QUANTILE_FLAG) else "")


def _size_figure(path: Path, sizes: np.ndarray, s: dict) -> Path:
    """Recorded quantiles of the order size against each fitted law's, log-log, with the 1:1 line."""
    from scipy import stats

    p = np.linspace(0.005, 0.999, 300)
    rec = np.quantile(sizes, p)
    ln, pa = s["lognormal"], s["pareto"]
    laws = {
        f"lognormal: median {ln['size_scale']:.3g}, sigma {ln['size_sigma']:.3g}": ln["size_scale"]
        * np.exp(ln["size_sigma"] * stats.norm.ppf(p)),
    }
    if math.isfinite(pa["size_tail"]):
        laws[f"Pareto: x_m {pa['size_scale']:.3g}, tail {pa['size_tail']:.3g}"] = pa["size_scale"] * (1 - p) ** (
            -1 / pa["size_tail"]
        )
    fig, ax = plt.subplots(figsize=(6, 4.8))
    lo, hi = rec.min(), rec.max()
    for (label, fit), mk in zip(laws.items(), (".", "x")):
        ax.loglog(rec, fit, mk, ms=3, label=label)
        lo, hi = min(lo, fit.min()), max(hi, fit.max())
    ax.loglog([lo, hi], [lo, hi], "k--", lw=0.8, label="fitted = recorded")
    for q in (0.5, 0.9, 0.99):
        ax.axvline(np.quantile(sizes, q), color="0.7", lw=0.6)
        ax.annotate(f"q{int(q * 100)}", (np.quantile(sizes, q), lo), fontsize=8, rotation=90, va="bottom")
    ax.set_xlabel("recorded quantile, base units")
    ax.set_ylabel("fitted law's quantile, base units")
    ax.set_title("market-order sizes, quantiles 0.5 %-99.9 %")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def _signature_figure(path: Path, variance: dict) -> Path:
    steps = np.array([float(k) for k in variance])
    v = np.array([variance[k]["value"] for k in variance])
    se = np.array([variance[k]["se"] for k in variance])
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.errorbar(steps, v, yerr=2 * se, fmt="o-", capsize=3, label="± 2 standard errors")
    ax.set_xscale("log")
    ax.set_ylim(0, None)
    ax.set_xlabel("sampling step, s")
    ax.set_ylabel("variance of log mid per second")
    ax.set_title("variance signature")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def _depth_figure(path: Path, d: dict) -> Path:
    lv = np.arange(len(d["mean"]))
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.bar(lv, d["mean"], yerr=2 * np.asarray(d["se"]), capsize=3, color="#8fb3d9", label="mean ± 2 se")
    ax.plot(lv, d["median"], "ko", ms=4, label="median")
    ax.set_xticks(lv)
    ax.set_xlabel("ticks behind the touch (0: the touch)")
    ax.set_ylabel("base units resting")
    ax.set_title(f"depth profile, {d['n']} samples every {d['every_s']:g} s")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)
