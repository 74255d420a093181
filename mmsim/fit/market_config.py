"""The writer of a market config: a fitted (or hand-made) market as YAML in the ``conf/market``
schema, every value with a comment saying where it came from (a fit with its standard error and
data window, or *assumption*), so that the file a calibration writes is the file a run reads."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from mmsim._pytree import to_plain

#: Top-level keys written before the process blocks, in this order.
TOP_KEYS = ("world", "n_assets", "asset_names")


def _scalar(v: Any) -> str:
    """One value as YAML that reads back exactly (floats keep every digit, infinities as .inf)."""
    if isinstance(v, float) and math.isinf(v):
        return ".inf" if v > 0 else "-.inf"
    return yaml.safe_dump(v, default_flow_style=True, width=10_000).strip().removesuffix("\n...").strip()


def _line(indent: str, key: str, value: Any, note: str | None) -> list[str]:
    comment = f"  # {note}" if note else ""
    if isinstance(value, list) and value and all(isinstance(r, list) for r in value):  # a matrix: one row a line
        return [f"{indent}{key}:{comment}"] + [f"{indent}  - {_scalar(row)}" for row in value]
    return [f"{indent}{key}: {_scalar(value)}{comment}"]


def render(market: Mapping[str, Any], notes: Mapping[str, str] | None = None, header: Sequence[str] = ()) -> str:
    """The YAML text of ``market`` (``{"world": ..., "price": {"s0": ...}, ...}``; numpy values are
    fine). ``notes`` maps ``"block.field"`` (or a top-level key, or a block name) to the comment
    written beside it: units and provenance. ``header``: comment lines at the top of the file."""
    notes = dict(notes or {})
    m = to_plain(dict(market))
    out = [f"# {h}".rstrip() for h in header]
    for k in TOP_KEYS:
        if k in m:
            out += _line("", k, m[k], notes.get(k))
    for block, fields in m.items():
        if block in TOP_KEYS:
            continue
        if not isinstance(fields, dict):
            out += _line("", block, fields, notes.get(block))
            continue
        out.append(f"\n{block}:" + (f"  # {notes[block]}" if block in notes else ""))
        for field, value in fields.items():
            out += _line("  ", field, value, notes.get(f"{block}.{field}"))
    unused = sorted(set(notes) - {k for k in notes if _known(m, k)})
    if unused:
        raise ValueError(f"notes for keys the market does not have: {unused}")
    return "\n".join(out) + "\n"


def _known(m: dict, key: str) -> bool:
    block, _, field = key.partition(".")
    if not field:
        return block in m
    return isinstance(m.get(block), dict) and field in m[block]


def write(
    path: str | Path, market: Mapping[str, Any], notes: Mapping[str, str] | None = None, header: Sequence[str] = ()
) -> Path:
    """Write :func:`render` to ``path`` (a ``mmsim/conf/market/NAME.yaml``); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(market, notes, header))
    return path
