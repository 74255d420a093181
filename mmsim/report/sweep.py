"""A multirun's summary: every job's ``metrics.json`` gathered into ``sweep_summary.{md,csv,png}``,
with the swept parameters as columns."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mmsim.report.common import DPI, md_table


def _job_label(job_dir: Path) -> str:
    ov = job_dir / ".hydra" / "overrides.yaml"
    if ov.is_file():
        try:
            import yaml

            items = yaml.safe_load(ov.read_text()) or []
            return " ".join(str(x) for x in items) or job_dir.name
        except Exception:  # noqa: BLE001
            pass
    return job_dir.name


def sweep_rows(sweep_dir: Path) -> list[dict]:
    """One flat dict per job directory of ``sweep_dir`` that holds a metrics.json."""

    def order(mfile):  # Hydra's job number first (jobs 2 .. 9 before 10), then the name
        head = mfile.parent.name.split("_", 1)[0]
        return (int(head) if head.isdigit() else math.inf, mfile.parent.name)

    rows = []
    for mfile in sorted(Path(sweep_dir).glob("*/metrics.json"), key=order):
        try:
            m = json.loads(mfile.read_text())
        except (OSError, ValueError):
            continue
        job = mfile.parent
        row = {"job": job.name, "overrides": _job_label(job)}
        if "as2008" in m:
            for r in m["as2008"]:
                row[f"profit_mean[{r['strategy']},γ={r['gamma']:g}]"] = r["profit_mean"]
        else:
            pl, pdd, p = m["p_liquidation"], m["p_drawdown"], m["pnl"]
            row.update(
                {
                    "pnl_mean": p["mean"],
                    "pnl_se": p.get("se_mean"),
                    "pnl_std": p["std"],
                    "var_99": p["var_99"],
                    "cvar_99": p["cvar_99"],
                    "p_liq": pl["estimate"],
                    "p_liq_ci_high": pl["ci_high"],
                    "p_dd": pdd["estimate"],
                    "p_dd_ci_high": pdd["ci_high"],
                    "max_dd_q99": m["max_drawdown"]["q99"],
                }
            )
        row["n_paths"] = m.get("n_paths")
        rows.append(row)
    return rows


def _number(v: str):
    """A swept value as a number when it reads as one (``0.01``, ``1e-3``, ``.inf``), else the string."""
    try:
        return float(v.replace(".inf", "inf"))
    except ValueError:
        return v


def swept_params(overrides: list[str]) -> dict[str, list]:
    """The parameters that differ between jobs: ``{key: [value per job]}``, values as numbers where
    they read as numbers (None where a job does not set the key)."""
    parsed = [dict(tok.lstrip("+~").split("=", 1) for tok in o.split() if "=" in tok) for o in overrides]
    keys = list(dict.fromkeys(k for d in parsed for k in d))
    out = {}
    for k in keys:
        vals = [d.get(k) for d in parsed]
        if len(set(vals)) > 1:
            out[k] = [None if v is None else _number(v) for v in vals]
    return out


def varying_labels(overrides: list[str]) -> list[str]:
    """Short plot labels for jobs' override strings: only the overrides that differ between
    jobs, each key by its last component (``policy.event_pull_before_s=300`` ->
    ``event_pull_before_s=300``), one per line."""
    toks = [o.split() for o in overrides]
    common = set.intersection(*map(set, toks)) if len(toks) > 1 else set()
    out = []
    for t in toks:
        parts = [x for x in t if x not in common] or t
        out.append(
            "\n".join(f"{x.split('=', 1)[0].rsplit('.', 1)[-1]}={x.split('=', 1)[1]}" if "=" in x else x for x in parts)
        )
    return out


def write_sweep_summary(sweep_dir: Path) -> list[Path]:
    """Aggregate the jobs of a multirun into ``sweep_summary.md``, ``.csv`` and ``.png`` (PnL mean
    ± 2 se, P(liquidation) and P(drawdown > x) with their Clopper-Pearson upper bounds, per job,
    labelled by the overrides that vary). Returns the files written (none when no job has a
    metrics.json)."""
    sweep_dir = Path(sweep_dir)
    rows = sweep_rows(sweep_dir)
    if not rows:
        return []
    swept = swept_params([r["overrides"] for r in rows])
    for k, vals in swept.items():  # the swept parameters as columns of their own (numbers where numeric)
        for r, v in zip(rows, vals, strict=True):
            r[k] = v
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(sweep_dir / "sweep_summary.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k) for k in keys})
    md = [
        "# Sweep summary",
        "",
        f"{len(rows)} job(s) in `{sweep_dir}`.",
        "",
        md_table(keys, [[r.get(k) if not isinstance(r.get(k), str) else r[k] for k in keys] for r in rows]),
        "",
    ]
    files = [sweep_dir / "sweep_summary.csv"]
    risk_rows = [r for r in rows if "pnl_mean" in r]
    if risk_rows:
        x = np.arange(len(risk_rows), dtype=float)
        labels = varying_labels([r["overrides"] for r in risk_rows])
        n_lines = max(lab.count("\n") + 1 for lab in labels)
        # One numeric parameter swept: a numeric x axis (log-scaled over a wide positive range).
        one = swept_params([r["overrides"] for r in risk_rows])
        numeric_x = None
        if len(one) == 1:
            ((key, vals),) = one.items()
            if all(isinstance(v, float) and math.isfinite(v) for v in vals):
                numeric_x, x = key, np.asarray(vals, float)
        fig, (a1, a2, a3) = plt.subplots(
            3, 1, figsize=(max(6, 0.8 * len(risk_rows) + 2), 8 + 0.3 * n_lines), sharex=True
        )
        mean = np.array([r["pnl_mean"] for r in risk_rows], float)
        se = np.array([r.get("pnl_se") or 0.0 for r in risk_rows], float)
        a1.errorbar(x, mean, yerr=2 * se, fmt="o", capsize=3)
        a1.set_ylabel("PnL mean ± 2 se")
        a1.grid(alpha=0.3)
        for ax, est, hi, what in (
            (a2, "p_liq", "p_liq_ci_high", "P(liquidation)"),
            (a3, "p_dd", "p_dd_ci_high", "P(max drawdown > x)"),
        ):
            if numeric_x is None:
                ax.bar(x, [r[hi] for r in risk_rows], color="#c44e52", alpha=0.6, label="CP upper bound")
            else:  # bars have no width on a numeric (possibly log) axis: thick lines from 0
                ax.vlines(x, 0, [r[hi] for r in risk_rows], colors="#c44e52", lw=8, alpha=0.6, label="CP upper bound")
            ax.plot(x, [r[est] for r in risk_rows], "ko", label="estimate")
            ax.set_ylabel(what)
            ax.grid(alpha=0.3, axis="y")
        a2.legend(fontsize=8)
        if numeric_x is not None:
            if np.all(x > 0) and x.max() / x.min() > 20:
                a3.set_xscale("log")
            a3.set_xlabel(numeric_x)
        else:
            a3.set_xticks(x)
            a3.set_xticklabels(labels, fontsize=7, rotation=30, ha="right", rotation_mode="anchor")
        fig.tight_layout()
        fig.savefig(sweep_dir / "sweep_summary.png", dpi=DPI)
        plt.close(fig)
        files.append(sweep_dir / "sweep_summary.png")
        md += ["![sweep summary](sweep_summary.png)", ""]
    (sweep_dir / "sweep_summary.md").write_text("\n".join(md))
    return [sweep_dir / "sweep_summary.md"] + files
