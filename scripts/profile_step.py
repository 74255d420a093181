"""Where a compiled simulation spends its time: kernel times from JAX's profiler, by source line.

    python scripts/profile_step.py [experiment] [--paths 8192] [--steps 20] [--by file|line] [--top 30]

Compiles the simulator's program for one chunk (one device), runs it once under
``jax.profiler.trace`` (a Perfetto trace: one event per executed kernel), and attributes each
kernel's time to the source lines of the operations fused into it (in proportion to their count;
broadcasts and constants are not counted). Kernels that are copies, loops or single operations
(``copy``, ``while``, ``wrapped_*``) are listed by kind. This is how the costs in
experiments/PERFORMANCE.md were found: XLA's CPU backend computing ``expm1`` element by element,
shared ``exp`` results compiled as kernels of their own, copies of the scan's carried state.

Kernel times are thread times (XLA runs independent kernels on several threads) and move with the
load on the machine; compare shares, not absolute times.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import tempfile

import jax
import jax.numpy as jnp

from mmsim import config, rng
from mmsim._pytree import cast_floats
from mmsim.sim import simulate as sim

_SKIP_OPS = ("parameter", "constant", "broadcast", "bitcast", "get-tuple-element", "tuple")


def _section(lines, name):
    i = lines.index(name) + 1
    out = []
    while i < len(lines) and lines[i].strip() and not re.match(r"^[A-Z]", lines[i]):
        out.append(lines[i])
        i += 1
    return out


def _source_of_frames(lines):
    """stack frame id -> 'file:line function' of its innermost frame in the mmsim package."""
    files = {int(x.split()[0]): x.split(None, 1)[1].strip('"') for x in _section(lines, "FileNames")}
    funcs = {int(x.split()[0]): x.split(None, 1)[1].strip('"') for x in _section(lines, "FunctionNames")}
    locs, frames = {}, {}
    for x in _section(lines, "FileLocations"):
        m = re.match(r"\s*(\d+) \{file_name_id=(\d+) function_name_id=(\d+) line=(\d+)", x)
        if m:
            locs[int(m.group(1))] = (files[int(m.group(2))], funcs[int(m.group(3))], int(m.group(4)))
    for x in _section(lines, "StackFrames"):
        m = re.match(r"\s*(\d+) \{file_location_id=(\d+)(?: parent_frame_id=(\d+))?", x)
        if m:
            frames[int(m.group(1))] = (int(m.group(2)), int(m.group(3)) if m.group(3) else None)

    def where(fid):
        seen = set()
        while fid in frames and fid not in seen:
            seen.add(fid)
            loc, fid_parent = frames[fid]
            f = locs.get(loc)
            if f and "/mmsim/" in f[0]:
                return f"{f[0].split('/mmsim/')[-1]}:{f[2]} {f[1]}"
            fid = fid_parent
        return "?"

    return where


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("experiment", nargs="?", default="cascade_stress")
    ap.add_argument("--paths", type=int, default=8192, help="paths of the chunk (one device)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--by", choices=("file", "line"), default="file")
    ap.add_argument("--top", type=int, default=30)
    a = ap.parse_args()

    world, mp, ep, s = config.build(config.compose([f"experiment={a.experiment}"]))
    mp, ep = cast_floats(mp, jnp.float32), cast_floats(ep, jnp.float32)
    keys = rng.path_keys(rng.key(0), 0, a.paths)

    def fn(k, m, e):
        return sim._paths(k, m, e, world=world, n_steps=a.steps, dt=s.dt, dtype=jnp.float32, trace=False)

    compiled = jax.jit(fn).lower(keys, mp, ep).compile(compiler_options=sim.CPU_COMPILER_OPTIONS)
    jax.block_until_ready(compiled(keys, mp, ep))
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d, create_perfetto_trace=True):
            jax.block_until_ready(compiled(keys, mp, ep))
        events = json.load(gzip.open(glob.glob(f"{d}/**/perfetto_trace.json.gz", recursive=True)[0]))
    events = events["traceEvents"] if isinstance(events, dict) else events
    per_kernel = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and not e["name"].startswith(("$", "Thunk", "Pjit", "CommonPjRt")):
            per_kernel[e["name"]] += e.get("dur", 0.0)

    lines = compiled.as_text().splitlines()
    where = _source_of_frames(lines)
    comps, cur = {}, None
    for x in lines:
        m = re.match(r"^(?:ENTRY )?%([\w.\-]+) .*\{$", x)
        if m:
            cur = m.group(1)
            comps[cur] = []
        elif x.startswith("}"):
            cur = None
        elif cur:
            comps[cur].append(x)
    defs = {}
    for body in comps.values():
        for x in body:
            m = re.match(r"^\s*(?:ROOT )?%([\w.\-]+) = ", x)
            if m:
                defs[m.group(1)] = x

    def sources(comp):
        for x in comps.get(comp, []):
            c = re.search(r"calls=%([\w.\-]+)", x)
            if c:
                yield from sources(c.group(1))
                continue
            fid, op = re.search(r"stack_frame_id=(\d+)", x), re.search(r"= \S+ ([a-z\-]+)\(", x)
            if fid and op and op.group(1) not in _SKIP_OPS:
                yield where(int(fid.group(1)))

    by = collections.Counter()
    for name, t in per_kernel.items():
        kind = re.sub(r"\.\d+$", "", name)
        x = defs.get(name, "")
        c = re.search(r"calls=%([\w.\-]+)", x)
        src = list(sources(c.group(1))) if c and not kind.startswith(("wrapped_", "while")) else []
        if not src:
            by[f"[{kind}]"] += t
            continue
        cnt = collections.Counter(w if a.by == "line" else w.split(":")[0] for w in src)
        n = sum(cnt.values())
        for w, k in cnt.items():
            by[w] += t * k / n
    total = sum(by.values())
    print(
        f"{a.experiment}: {a.paths} paths x {a.steps} steps, {len(per_kernel)} kernels, "
        f"{total / 1e3:.1f} ms of kernel time ({total / a.steps / 1e3:.2f} ms per step)"
    )
    for w, t in by.most_common(a.top):
        print(f"{t / 1e3:8.2f} ms {100 * t / total:5.1f} %  {w}")


if __name__ == "__main__":
    main()
