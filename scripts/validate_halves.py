"""Out of sample on one recording: cut a capture in two at the middle of its receive times, fit a
market to the first half with ``mmsim calibrate``, and ``mmsim validate`` both halves against it
(the second half is out of sample, the first in sample) and against each half's own window market.

    python scripts/validate_halves.py CAPTURE --out DIR [--calibrate="ARGS"] [overrides ...]

e.g. for ETHUSDT (experiments/validation.md, "ETHUSDT 2024-08-08")::

    python scripts/validate_halves.py $MMSIM_DATA/hftbacktest_binance_usdm_ethusdt_20240808.gz \\
        --out experiments/validation/ethusdt_halves \\
        --calibrate="--base ethusdt --symmetric-flow --fit-book --world-substeps 4 \\
                     --funding $MMSIM_DATA/funding_ETH-USDT_binance_2020-01-01_2024-01-01_funding_history.csv" \\
        experiment=baseline policy.k=21.0 policy.max_inventory=21.0 account.max_inventory=74.0

The halves, the fitted market and a copy of the configuration directory holding it
(``MMSIM_CONF``) go to a temporary directory; only the validation is written to ``--out``, with
the first half's market beside it (``first_half.yaml``).
"""

from __future__ import annotations

import argparse
import gzip
import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path


def split(capture: Path, into: Path) -> tuple[Path, Path]:
    """The capture's lines before and from the middle of its receive times, as two gzip files
    named as the capture with ``_first`` / ``_second`` (the time's unit does not matter: a midpoint
    in the file's own unit). Malformed lines go with the half of the line before them."""
    stem = capture.name.split(".")[0]
    first, second = into / f"{stem}_first.gz", into / f"{stem}_second.gz"
    with gzip.open(capture, "rt", encoding="utf-8", errors="replace") as fh:
        lines = fh.read().splitlines()
    times = []
    for line in lines:
        tok = line.split(" ", 1)[0]
        times.append(int(tok) if tok.isdigit() else None)
    known = [t for t in times if t is not None]
    if len(known) < 2:
        raise ValueError(f"{capture}: fewer than two time-stamped lines")
    mid = (min(known) + max(known)) // 2
    halves: tuple[list[str], list[str]] = ([], [])
    side = 0
    for line, t in zip(lines, times, strict=True):
        if t is not None:
            side = int(t >= mid)
        halves[side].append(line)
    for path, part in ((first, halves[0]), (second, halves[1])):
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.write("\n".join(part) + "\n")
    return first, second


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("capture", type=Path)
    p.add_argument("--out", type=Path, required=True, help="the validation's directory")
    p.add_argument("--calibrate", default="", help='mmsim calibrate\'s options, one string (--calibrate="--base ...")')
    p.add_argument("overrides", nargs="*", default=["experiment=baseline"])
    a = p.parse_intermixed_args()
    if not a.capture.is_file():
        print(f"no capture at {a.capture}", file=sys.stderr)
        return 2
    from mmsim import cli
    from mmsim import config as mcfg

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        first, second = split(a.capture, tmp)
        market = tmp / "first_half.yaml"
        argv = ["calibrate", str(first), *shlex.split(a.calibrate), "-o", str(market), "--report", str(tmp / "rep")]
        if cli.main(argv) != 0:
            return 1
        conf = tmp / "conf"
        shutil.copytree(mcfg.conf_dir(), conf)
        shutil.copy(market, conf / "market" / "first_half.yaml")
        os.environ["MMSIM_CONF"] = str(conf)
        argv = ["validate", str(second), str(first), *a.overrides, "market=first_half", "--out", str(a.out)]
        rc = cli.main(argv)
        a.out.mkdir(parents=True, exist_ok=True)
        shutil.copy(market, a.out / "first_half.yaml")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
