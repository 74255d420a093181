"""What the replay scripts share: their command line (``--out`` and the config overrides), the
configured policy's engine with one compiled step for every replay of a run, and the Markdown
table they print and write."""

from __future__ import annotations

import argparse
from pathlib import Path


def parser(doc: str) -> argparse.ArgumentParser:
    """A parser with ``--out`` (write the table there too) and the config overrides (default
    ``experiment=baseline``); a script adds its own options."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--out", help="write the table here too")
    p.add_argument("overrides", nargs="*", default=["experiment=baseline"])
    return p


def policy_engine(overrides: list[str]):
    """``(engine params, depth per tick, step)`` of the policy and market the
    overrides configure: the step is compiled once and shared by every replay."""
    from mmsim import config as mcfg
    from mmsim.live.replay import Trader

    _, mp, ep, _ = mcfg.build(mcfg.compose(overrides))
    dpt = float(mp.fills.depth_per_tick)
    return ep, dpt, Trader(ep, depth_per_tick=dpt).step


def write_table(lines: list[str], out: str | None) -> None:
    """The table's lines to ``out`` (when given)."""
    if out:
        Path(out).write_text("\n".join(lines) + "\n")
