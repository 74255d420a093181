"""Every figure and every Markdown writer: a risk run (:mod:`mmsim.report.risk`), the
Avellaneda-Stoikov comparison (:mod:`mmsim.report.as2008`), a sweep (:mod:`mmsim.report.sweep`),
the optimiser (:mod:`mmsim.report.optimize`) and a replay (:mod:`mmsim.report.live`), with the
formatting they share (:mod:`mmsim.report.common`). Matplotlib runs with the Agg backend; no JAX."""

from mmsim.report.as2008 import AS2008_COLUMNS, as2008_rows, fig_as2008, write_as2008_report
from mmsim.report.common import (
    DPI,
    REGIME_COLORS,
    REGIME_NAMES,
    fmt,
    liquidation_claim,
    md_table,
    pct,
    rare_event_claim,
    rare_event_paragraph,
    sanitize,
    summary_rows,
    text_table,
    write_json,
)
from mmsim.report.risk import (
    fig_drawdown,
    fig_liquidation_curve,
    fig_pnl_hist,
    fig_sample_paths,
    write_risk_report,
)
from mmsim.report.sweep import sweep_rows, swept_params, varying_labels, write_sweep_summary

__all__ = [
    "AS2008_COLUMNS",
    "DPI",
    "REGIME_COLORS",
    "REGIME_NAMES",
    "as2008_rows",
    "fig_as2008",
    "fig_drawdown",
    "fig_liquidation_curve",
    "fig_pnl_hist",
    "fig_sample_paths",
    "fmt",
    "rare_event_claim",
    "rare_event_paragraph",
    "liquidation_claim",
    "md_table",
    "pct",
    "sanitize",
    "summary_rows",
    "swept_params",
    "sweep_rows",
    "text_table",
    "varying_labels",
    "write_as2008_report",
    "write_json",
    "write_risk_report",
    "write_sweep_summary",
]
