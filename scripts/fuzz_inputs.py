"""The long version of the capture fuzz test: many random mutations of a small synthetic capture
(dropped, duplicated, cut, garbled, rescaled, re-stamped, swapped and emptied lines) through the
reader, the guard and the feed adapter; every outcome must be a clear error or a finite, bounded
feed. Prints the outcome counts; exits 1 on the first input that crashes or leaves a NaN.

    python scripts/fuzz_inputs.py --examples 2000
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.live.test_guard import MUTATIONS, clean_lines, mutate, outcome, write  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=2000, help="random inputs to try")
    ap.add_argument("--max-mutations", type=int, default=40, help="mutations per input, at most")
    a = ap.parse_args()
    counts: collections.Counter = collections.Counter()
    tmp = Path(tempfile.mkdtemp(prefix="mmsim-fuzz-"))
    clean = clean_lines()
    muts = st.tuples(st.sampled_from(MUTATIONS), st.integers(0, 10_000), st.floats(1e-9, 1e9))

    @settings(max_examples=a.examples, deadline=None, database=None)
    @given(st.lists(muts, min_size=1, max_size=a.max_mutations))
    def one(m):
        counts[outcome(write(tmp / "m.gz", mutate(clean, m)))] += 1

    try:
        one()
    except Exception as e:  # noqa: BLE001 (report the failing input's error and fail)
        print(f"FAILED after {sum(counts.values())} inputs: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(f"{sum(counts.values())} inputs: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
