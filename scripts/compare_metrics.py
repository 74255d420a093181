"""Compare two runs' metrics.json number by number, ignoring timings (compile, run and wall
seconds, throughput) and the machine's layout (devices, chunk size). Exit status 1 when a result
differs; used to check that a refactoring leaves every result unchanged:

    python -m mmsim.run experiment=cascade_stress sim.dtype=float64 hydra.run.dir=/tmp/a   # before
    python -m mmsim.run experiment=cascade_stress sim.dtype=float64 hydra.run.dir=/tmp/b   # after
    python scripts/compare_metrics.py /tmp/a/metrics.json /tmp/b/metrics.json
"""

from __future__ import annotations

import json
import sys

#: Keys that describe how fast or on what a run ran, not what it found.
IGNORED = ("compile_s", "run_s", "wall_s", "path_steps_per_s", "throughput_path_steps_per_s", "n_devices", "chunk_size")


def differences(a, b, path: str = "") -> list[str]:
    """Every place where ``a`` and ``b`` differ (exactly), as 'path: a != b' lines."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if k in IGNORED:
                continue
            if k not in a or k not in b:
                out.append(f"{path}{k}: present in only one run")
            else:
                out += differences(a[k], b[k], f"{path}{k}.")
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path.rstrip('.')}: lengths {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in differences(x, y, f"{path}{i}.")]
    return [] if a == b else [f"{path.rstrip('.')}: {a!r} != {b!r}"]


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__)
        return 2
    a, b = (json.loads(open(p).read()) for p in argv)
    diff = differences(a, b)
    for d in diff:
        print(d)
    print(f"{len(diff)} difference(s)" if diff else "identical (timings and device layout ignored)")
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
