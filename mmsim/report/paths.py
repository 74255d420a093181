"""Per-path results as a table: one row per simulated path, written as ``paths.parquet`` beside
``metrics.json`` (``pandas.read_parquet`` reads it). PnL, drawdowns and equity in quote currency,
times in seconds, sizes in base units."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from mmsim.engine.account import PNL_COMPONENTS


def path_table(summary, asset_names: Sequence[str]) -> pd.DataFrame:
    """The :class:`~mmsim.sim.simulate.PathSummary` of a run as a DataFrame, one row per path:
    ``pnl`` and its six components (``pnl_spread`` ...), ``max_drawdown``, ``max_drawdown_frac``,
    ``min_margin_ratio``, ``min_margin_excess`` (the least equity above the maintenance margin),
    ``liquidated``, ``liquidation_time_s`` (NaN when never), ``n_bad_steps``
    and per asset ``fills_bid_<asset>``, ``fills_ask_<asset>``, ``max_abs_inventory_<asset>`` and
    ``final_position_<asset>``."""
    s = summary
    liq_t = np.asarray(s.liq_time, float)
    cols: dict[str, np.ndarray] = {
        "path": np.arange(len(np.asarray(s.pnl))),
        "pnl": np.asarray(s.pnl, float),
        **{f"pnl_{c}": np.asarray(s.pnl_components, float)[:, i] for i, c in enumerate(PNL_COMPONENTS)},
        "max_drawdown": np.asarray(s.max_dd, float),
        "max_drawdown_frac": np.asarray(s.max_dd_frac, float),
        "min_margin_ratio": np.asarray(s.min_margin_ratio, float),
        "min_margin_excess": np.asarray(s.min_excess, float),
        "liquidated": np.asarray(s.liquidated, bool),
        "liquidation_time_s": np.where(liq_t >= 0, liq_t, np.nan),
        "n_bad_steps": np.asarray(s.n_bad, np.int64),
    }
    fills = np.asarray(s.n_fills, np.int64)
    for a, name in enumerate(asset_names):
        cols[f"fills_bid_{name}"] = fills[:, a, 0]
        cols[f"fills_ask_{name}"] = fills[:, a, 1]
        cols[f"max_abs_inventory_{name}"] = np.asarray(s.max_abs_inventory, float)[:, a]
        cols[f"final_position_{name}"] = np.asarray(s.final_position, float)[:, a]
    return pd.DataFrame(cols)


def write_paths(path: Path, summary, asset_names: Sequence[str]) -> Path:
    """Write :func:`path_table` to ``path`` (parquet); returns the path."""
    path_table(summary, asset_names).to_parquet(path, index=False)
    return Path(path)
