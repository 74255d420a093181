"""The live session's journal: an append-only file of JSON lines in the run directory
(``journal.jsonl``), one record per observation (the interval the engine saw, the journal row, the
quote it sent), per event (connect, disconnect, stale feed, kill switch, stop) and per engine-state
snapshot (``state-<seq>.npz`` beside it, written whole before the record that names it). Lines are
flushed as they are written and the file is fsynced every ``fsync_s`` seconds and at every
snapshot, so that a crash loses at most that much; a torn last line is skipped on reading.

:func:`restore` rebuilds a :class:`~mmsim.live.replay.Trader` from the last snapshot and the
observations after it (re-stepped through the same compiled engine step: the engine is
deterministic, so the state is the one the crashed session had). Times: ``wall`` in s since the
epoch (local clock), ``t`` in s since the feed's first book (exchange clock).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import jax
import numpy as np

from mmsim.live.feed import Interval
from mmsim.live.paper import Resting

JOURNAL = "journal.jsonl"
_ARRAYS = ("trade_price", "trade_qty", "trade_side", "trade_time")
_DEPTH = ("bid_depth", "ask_depth")  # the L2 sample: NaN (not known) written as null


def interval_to_json(iv: Interval) -> dict:
    def js(f):
        v = getattr(iv, f)
        if v is not None and f in _DEPTH:
            return _plain(v.tolist())
        return v.tolist() if f in _ARRAYS and v is not None else _plain(v)

    return {f: js(f) for f in iv._fields}


def interval_from_json(d: dict) -> Interval:
    kw = {f: d[f] for f in Interval._fields if f in d}  # a journal from before trade_time has none
    kw["trade_price"] = np.asarray(d["trade_price"], float)
    kw["trade_qty"] = np.asarray(d["trade_qty"], float)
    kw["trade_side"] = np.asarray(d["trade_side"], np.int8)
    if d.get("trade_time") is not None:
        kw["trade_time"] = np.asarray(d["trade_time"], float)
    for f in _DEPTH:
        if d.get(f) is not None:
            kw[f] = np.asarray([np.nan if x is None else x for x in d[f]], float)
    return Interval(**kw)


def _plain(x):
    """A value as strict JSON holds it: numpy scalars as Python ones, a non-finite float as None,
    dicts and lists element by element."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, (np.bool_, bool)):
        return bool(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return x if np.isfinite(x) else None
    return x


class Journal:
    """Append records to ``run_dir/journal.jsonl`` (created, or continued by a resumed session)."""

    def __init__(self, run_dir: str | Path, *, fsync_s: float = 1.0) -> None:
        if not (isinstance(fsync_s, (int, float)) and fsync_s >= 0):
            raise ValueError(f"fsync_s = {fsync_s!r}: must be >= 0 seconds")
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / JOURNAL
        self.fsync_s = float(fsync_s)
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        self._synced = time.monotonic()

    def write(self, rec: dict) -> None:
        self._fh.write(json.dumps(rec, allow_nan=False, separators=(",", ":")) + "\n")
        self._fh.flush()
        if time.monotonic() - self._synced >= self.fsync_s:
            self.sync()

    def sync(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._synced = time.monotonic()

    def event(self, what: str, **kw) -> None:
        self.write({"k": "event", "what": what, "wall": time.time(), **{k: _plain(v) for k, v in kw.items()}})

    def observation(self, seq: int, t0: float, iv: Interval, row: tuple, quote: dict, **kw) -> None:
        self.write(
            {
                "k": "obs",
                "seq": seq,
                "t0": t0,
                "wall": time.time(),
                "iv": interval_to_json(iv),
                "row": [_plain(x) for x in row],
                "quote": {k: _plain(v) for k, v in quote.items()},
                **{k: _plain(v) for k, v in kw.items()},
            }
        )

    def snapshot(self, seq: int, trader) -> None:
        """The trader's whole state after observation ``seq`` (an npz written then renamed into place)."""
        name = f"state-{seq:09d}.npz"
        leaves = jax.tree_util.tree_leaves(trader.state)
        meta = {
            "quote": trader.quote,
            "bid_rest": list(trader.bid_rest),
            "ask_rest": list(trader.ask_rest),
            "sent": interval_to_json(trader.sent) if trader.sent is not None else None,
            "n": trader.n,
            "n_stale": trader.n_stale,
            "left": [trader.bid_left, trader.ask_left],
            "lag_s": trader.lag_s,
            "rng": trader.rng.bit_generator.state,  # the latency draws continue where they were
        }
        tmp = self.dir / (name + ".tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, meta=np.asarray(json.dumps(meta)), **{f"leaf{i}": np.asarray(x) for i, x in enumerate(leaves)})
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.dir / name)
        self.write({"k": "state", "seq": seq, "file": name, "wall": time.time()})
        self.sync()

    def close(self) -> None:
        if not self._fh.closed:
            self.sync()
            self._fh.close()


def read(run_dir: str | Path) -> tuple[list[dict], int]:
    """The journal's records, and how many unreadable lines (a torn last line after a crash) were skipped."""
    path = Path(run_dir) / JOURNAL
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no {JOURNAL} (not a live session's run directory)")
    recs, bad = [], 0
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                recs.append(json.loads(line))
            except ValueError:
                bad += 1
    return recs, bad


def load_snapshot(run_dir: str | Path, name: str, trader) -> None:
    """Put a snapshot's state into ``trader`` (built for the same configuration)."""
    with np.load(Path(run_dir) / name) as z:
        meta = json.loads(str(z["meta"]))
        leaves, treedef = jax.tree_util.tree_flatten(trader.state)
        n = len(leaves)
        if sum(k.startswith("leaf") for k in z.files) != n:
            raise ValueError(f"{name}: the engine state has another structure (a different configuration)")
        new = [np.asarray(z[f"leaf{i}"], dtype=np.asarray(leaves[i]).dtype) for i in range(n)]
    for i, (a, b) in enumerate(zip(leaves, new)):
        if np.shape(a) != np.shape(b):
            raise ValueError(f"{name}: engine state leaf {i} has shape {np.shape(b)}, not {np.shape(a)}")
    trader.state = jax.tree_util.tree_unflatten(treedef, new)
    trader.quote = meta["quote"]
    trader.bid_rest, trader.ask_rest = Resting(*meta["bid_rest"]), Resting(*meta["ask_rest"])
    trader.sent = interval_from_json(meta["sent"]) if meta["sent"] is not None else None
    trader.n, trader.n_stale = int(meta["n"]), int(meta["n_stale"])
    if "left" in meta:  # (snapshots from before the latency model have none)
        trader.bid_left, trader.ask_left = (float(x) for x in meta["left"])
        trader.lag_s = float(meta["lag_s"])
        trader.rng.bit_generator.state = meta["rng"]


def restore(run_dir: str | Path, trader) -> dict:
    """Bring ``trader`` to where the journaled session stopped: the last readable snapshot, then the
    observations journaled after it, re-stepped. Returns ``{"records", "rows", "t0", "seq",
    "last", "torn", "restepped"}``: the records, the journal rows of every observation (tuples,
    NaN where a side was not quoted), the feed's
    start (epoch s), the last observation's seq and interval."""
    recs, torn = read(run_dir)
    obs = [r for r in recs if r.get("k") == "obs"]
    states = [r for r in recs if r.get("k") == "state" and (Path(run_dir) / r["file"]).is_file()]
    start = -1
    if states:
        load_snapshot(run_dir, states[-1]["file"], trader)
        start = int(states[-1]["seq"])
    restepped = 0
    for r in obs:
        if r["seq"] > start:
            vf = r.get("venue_fills")  # an orders session's fills, from the venue
            trader.on_interval(
                interval_from_json(r["iv"]), venue_fills=tuple(vf) if vf is not None else None, hold=bool(r.get("held"))
            )
            restepped += 1
    return {
        "records": recs,
        "rows": [tuple(np.nan if x is None else x for x in r["row"]) for r in obs],  # NaN: no quote
        "t0": obs[0]["t0"] if obs else None,
        "seq": obs[-1]["seq"] if obs else -1,
        "last": interval_from_json(obs[-1]["iv"]) if obs else None,
        "torn": torn,
        "restepped": restepped,
    }
