"""A live session end to end against the local emulator (a real websocket server on 127.0.0.1
streaming a capture in Binance's own format; nothing leaves the machine, every wait is bounded):
the session's journal equals the replay's on the same messages; it survives disconnections, a
silent feed, damaged messages and the kill switch; a session killed mid-run and resumed from its
journal issues the quotes an uninterrupted one does; ``mmsim report`` turns a journal into outputs."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mmsim import cli, live
from mmsim import config as mcfg
from mmsim.fit import data
from mmsim.live import emulator, journal
from mmsim.live import session as ls
from mmsim.live.replay import Trader
from tests.live.test_guard import T0_MS, _line, clean_lines, mutate, write
from tests.test_config import write_best

SKEW = 1e12  # the recording is years old: the guard's receive-time check is lifted for it
OVR = ["experiment=baseline", "engine.warmup_s=5"]  # quotes from the 5th second


@pytest.fixture(scope="module")
def world():
    cfg = mcfg.compose(OVR)
    _, mp, ep, sim = mcfg.build(cfg)
    step = Trader(ep).step  # compiled once for the module
    return ep, float(mp.fills.depth_per_tick), step


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    p = write(tmp_path_factory.mktemp("cap") / "clean.gz", clean_lines())
    return p, live.feed_from_capture(data.read_capture(p), 1.0, symbol="BTCUSDT")


def run_session(world, path, run_dir, *, lines=None, em_kw=None, during=None, **st_kw):
    """A session against an emulator of ``path`` (or ``lines``), in this process, at most 60 s."""
    ep, dpt, step = world

    async def main():
        em = await emulator.Emulator(lines or emulator.read_lines(path), **(em_kw or {})).start()
        kw = dict(ws_url=em.ws_url, rest_url=em.rest_url, max_clock_skew_s=SKEW, status_s=0, reconnect_min_s=0.05)
        # A hand-made capture has no depth: the L2 book is off unless a test asks for it.
        st = ls.LiveSettings(**{**kw, "max_runtime_s": 60.0, "depth": False, **st_kw})
        s, _ = ls.open_session(ep, st, run_dir, symbol="BTCUSDT", depth_per_tick=dpt, step_fn=step)
        task = asyncio.create_task(during(s)) if during else None
        why = await s.run()
        if task:
            task.cancel()
        await em.stop()
        return s, why, em

    s, why, em = asyncio.run(main())
    return s, why, em, ls.result(s)


def test_a_paper_session_issues_the_replays_quotes(world, capture, tmp_path):
    path, feed = capture
    rep = live.replay(world[0], feed, depth_per_tick=world[1], step_fn=world[2])
    n = len(feed.t) - 1  # the last interval closes only at the recording's end
    s, why, em, res = run_session(world, path, tmp_path, max_observations=n)
    assert why == "max_observations" and em.connections == 1
    pd.testing.assert_frame_equal(res.journal, rep.journal.iloc[:n])
    pd.testing.assert_frame_equal(res.terms, rep.terms.iloc[:n])  # why it quoted there, journaled
    assert res.journal["bid"].notna().sum() > n // 2  # quoting (the tiny trades of this capture fill nothing)
    m = res.metrics
    assert m["live"]["reconnects"] == 0 and m["live"]["latency"]["step_ms"]["n"] == n
    assert m["feed_quality"] == {"stale_observations": 0}
    recs, torn = journal.read(tmp_path)
    assert torn == 0 and [r["what"] for r in recs if r["k"] == "event"] == ["start", "connect", "stop"]
    assert sum(r["k"] == "obs" for r in recs) == n and any(r["k"] == "state" for r in recs)


def test_a_paper_session_on_a_shared_capture_fills_as_the_replay_does(world, tmp_path):
    name = "hftbacktest_binance_usdm_btcusdt_20230404.dat.gz"
    path = data.data_file(name)
    if path is None:
        pytest.skip(f"no data directory (MMSIM_DATA or ../shared/data): {name} is not streamed")
    feed = live.feed_from_capture(data.read_capture(path), 1.0, symbol="BTCUSDT")
    rep = live.replay(world[0], feed, depth_per_tick=world[1], step_fn=world[2])
    n = len(feed.t) - 1
    s, why, em, res = run_session(world, path, tmp_path, max_observations=n, depth=True)
    assert why == "max_observations"
    # With the L2 book read (one snapshot at the connection), the same quotes. (The emulator
    # streams as fast as the client reads: by the snapshot's request it has sent every diff, so
    # the chain never reaches the snapshot's id; the gap test below runs at a finite pace.)
    assert res.metrics["live"]["depth_resyncs"] == 1 and s.depth_ok
    pd.testing.assert_frame_equal(res.journal, rep.journal.iloc[:n])
    fills = res.metrics["fills"]
    assert fills["bid"] + fills["ask"] > 5
    assert res.metrics["pnl"] == pytest.approx(rep.journal["equity"].iloc[n - 1] - 1e4)


def test_disconnections_reconnect_and_lose_no_observation(world, capture, tmp_path):
    path, feed = capture
    n = len(feed.t) - 1
    s, why, em, res = run_session(world, path, tmp_path, max_observations=n, em_kw={"drop_after": 60})
    assert why == "max_observations" and em.connections >= 4 and s.reconnects == em.connections - 1
    np.testing.assert_array_equal(res.journal["t"], feed.t[:n])
    assert np.all(np.isfinite(res.journal["equity"]))


def test_a_silent_feed_pulls_the_quotes_until_messages_return(world, capture, tmp_path):
    path, feed = capture
    seen = {}

    async def watch(s):
        while not s.stale_events:
            await asyncio.sleep(0.02)
        seen["quote"] = dict(s.trader.quote)

    pause = {"pause_after": 100, "pause_s": 1.0}
    n = len(feed.t) - 1
    s, why, _, _ = run_session(world, path, tmp_path, max_observations=n, stale_s=0.3, em_kw=pause, during=watch)
    assert why == "max_observations" and s.stale_events == 1
    assert not seen["quote"]["bid_active"] and not seen["quote"]["ask_active"]
    events = [r["what"] for r in journal.read(tmp_path)[0] if r["k"] == "event"]
    assert events.index("stale") < events.index("healthy")


def test_the_kill_switch_pulls_the_quotes_and_ends_the_session(world, capture, tmp_path):
    path, _ = capture
    kill = tmp_path / "KILL"

    async def trip(s):
        while s.seq < 5:
            await asyncio.sleep(0.01)
        kill.touch()

    s, why, _, res = run_session(world, path, tmp_path / "run", kill_file=str(kill), during=trip, em_kw={"speed": 20})
    assert why == "kill" and 5 <= res.metrics["observations"] < 39
    q = s.trader.quote
    assert not q["bid_active"] and not q["ask_active"] and s.trader.bid_rest.price == 0


def test_damaged_duplicated_and_reordered_messages_are_counted_never_quoted(world, tmp_path):
    muts = [("dup", 40, 1.0), ("garble", 77, 1.0), ("cut", 91, 1.0), ("swap", 120, 1.0), ("empty", 5, 1.0)]
    lines = mutate(clean_lines(), muts)
    p = write(tmp_path / "m.gz", lines)
    s, why, _, res = run_session(world, p, tmp_path / "run", max_observations=30)
    q = res.metrics["feed_quality"]
    assert why == "max_observations" and sum(v for k, v in q.items() if k != "stale_observations") >= 2
    j = res.journal
    for side in ("bid", "ask"):
        sent = j[side].notna()
        assert sent.any() and np.all(np.isfinite(j[side][sent])) and np.all(np.isfinite(j[f"{side}_size"][sent]))
    json.dumps(res.metrics, allow_nan=True)


def test_bad_settings_name_the_field():
    with pytest.raises(ValueError, match="live.stale_s"):
        ls.LiveSettings(stale_s=0)
    with pytest.raises(ValueError, match="live.ws_url"):
        ls.LiveSettings(ws_url="fstream.binance.com")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['stale'\]"):
        ls.live_settings({"stale": 1})
    assert (
        ls.LiveSettings()
        .stream_url("BTCUSDT")
        .endswith(
            "/stream?streams=btcusdt@bookTicker/btcusdt@trade/btcusdt@markPrice@1s/btcusdt@forceOrder/btcusdt@depth@100ms"
        )
    )


def _mmsim(args, env_extra=None, **kw):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", **(env_extra or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "mmsim.cli", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw
    )


def _obs(run_dir: Path) -> int:
    try:
        with open(run_dir / journal.JOURNAL) as fh:
            return sum(1 for line in fh if line.startswith('{"k":"obs"'))
    except FileNotFoundError:
        return 0


def test_a_session_killed_mid_run_resumes_to_the_quotes_of_an_uninterrupted_one(world, capture, tmp_path):
    """SIGKILL (no clean-up at all) part-way, then ``mmsim live --resume``: the resumed session
    restores the engine from the last snapshot and the observations after it, and continues on the
    same grid; every quote equals the replay's (= an uninterrupted session's, test above)."""
    path, feed = capture
    n = len(feed.t) - 1
    rep = live.replay(world[0], feed, depth_per_tick=world[1], step_fn=world[2])
    best = write_best(tmp_path / "best.yaml", {"gamma": 0.0042})
    run = tmp_path / "run"
    common = [f"live.max_clock_skew_s={SKEW}", "live.status_s=0", "live.snapshot_every=7", "live.depth=false", *OVR]
    lines = emulator.read_lines(path)
    with emulator.Running(emulator.Emulator(lines, speed=8.0)) as em:
        proc = _mmsim(["live", "--params", str(best), "--out", str(run), f"live.ws_url={em.ws_url}", *common])
        deadline = time.monotonic() + 120
        while _obs(run) < 12 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        first = proc.communicate(timeout=10)[0].decode()
    k = _obs(run)
    assert 12 <= k < n, first[-2000:]
    with emulator.Running(emulator.Emulator(lines)) as em:  # the same messages again, from the start
        proc = _mmsim(["live", "--resume", str(run), f"live.ws_url={em.ws_url}", f"live.max_observations={n}"])
        out = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 0, out[-2000:]
    assert f"resumed {run} after observation {k - 1}" in out
    recs, _ = journal.read(run)
    obs = [r for r in recs if r["k"] == "obs"]
    assert [r["seq"] for r in obs] == list(range(n))
    rows = pd.DataFrame([[np.nan if x is None else x for x in r["row"]] for r in obs], columns=rep.journal.columns)
    pd.testing.assert_frame_equal(rows, rep.journal.iloc[:n], check_dtype=False)
    stop = [r for r in recs if r.get("what") == "stop"][-1]
    assert stop["quality"].get("before_resume", 0) > 0  # the re-sent messages the first session had used
    # mmsim report: the journal as the replay's outputs.
    assert cli.main(["report", str(run)]) == 0
    m = json.loads((run / "metrics.json").read_text())
    assert m["observations"] == n and m["live"]["resumes"] == 1 and m["live"]["stop_reason"] == "max_observations"
    assert m["pnl"] == pytest.approx(rep.journal["equity"].iloc[n - 1] - 1e4)
    terms = pd.read_csv(run / "quote_terms.csv")  # from the journal of both sessions
    np.testing.assert_allclose(terms["reservation"], rep.terms["reservation"].iloc[:n], rtol=1e-12)


def depth_lines(n_s: int = 40, *, snapshot: bool = True) -> list[str]:
    """The clean capture with an L2 book: a REST snapshot first (update id 1000), then a diff every
    100 ms whose ``U``/``u``/``pu`` chain on from it, moving a level behind each touch."""
    out = clean_lines()
    t0 = T0_MS - 50
    snap = {"lastUpdateId": 1000, "E": t0, "T": t0, "bids": [["59999.0", "4.0"]], "asks": [["60001.0", "5.0"]]}
    head = [f"{t0 * 1_000_000} {json.dumps(snap)}"] if snapshot else []
    u = 1000
    for k in range(n_s * 10):
        t = T0_MS + 100 * k + 3
        d = {"e": "depthUpdate", "E": t, "T": t, "s": "BTCUSDT", "U": u + 1, "u": u + 3, "pu": u,
             "b": [["59999.0", f"{4 + k % 3}.0"]], "a": [["60001.0", f"{5 + k % 2}.0"]]}  # fmt: skip
        u += 3
        out.append(_line(t + 5, "btcusdt@depth@100ms", d))
    out.sort(key=lambda line: int(line.split(" ", 1)[0]))
    return head + out


def test_a_depth_gap_pulls_the_quotes_and_a_fresh_snapshot_resynchronises(world, tmp_path):
    """A diff lost in transit (the emulator skips the 50th): the update ids break, the book is out
    of sync, the quotes are pulled, and the current book's snapshot (not the capture's first)
    puts it back in sync; the diffs after it chain on."""
    lines = [(t, b) for t, b in emulator.read_lines(write(tmp_path / "d.gz", depth_lines()))]
    em_kw = {"skip_diff": 50, "speed": 20}
    s, why, em, res = run_session(
        world, None, tmp_path / "run", lines=lines, depth=True, em_kw=em_kw, max_observations=30
    )
    recs, _ = journal.read(tmp_path / "run")
    what = [r["what"] for r in recs if r.get("k") == "event" and "sync" in r["what"]]
    assert what == ["depth_synced", "depth_out_of_sync", "depth_synced"], what
    synced = [r for r in recs if r.get("what") == "depth_synced"]
    # Each snapshot is the book where the stream stands (the capture's first one and the diffs
    # reached since): the second holds the skipped diff.
    assert synced[0]["last_update_id"] >= 1000 and synced[1]["last_update_id"] >= 1000 + 3 * 50
    assert em.snapshots_served == 2 and s.depth_ok and res.metrics["live"]["depth_resyncs"] == 2
    assert res.metrics["feed_quality"].get("depth_gap") == 1
    assert s.builder.decoder.synced  # the diffs after the new snapshot chain on from it
    assert res.journal["bid"].notna().sum() > 20  # quoting again after the resync


def test_without_a_snapshot_the_quotes_are_held_and_the_snapshot_retried(world, tmp_path):
    lines = [(t, b) for t, b in emulator.read_lines(write(tmp_path / "d.gz", depth_lines(snapshot=False)))]
    s, why, em, res = run_session(
        world, None, tmp_path / "run", lines=lines, depth=True, em_kw={"speed": 20}, max_observations=30
    )
    recs, _ = journal.read(tmp_path / "run")
    failed = [r for r in recs if r.get("what") == "resync_failed"]
    assert len(failed) >= 3 and failed[1]["retry_s"] == 2 * failed[0]["retry_s"]  # with back-off
    obs = [r for r in recs if r.get("k") == "obs"]
    assert len(obs) > 20 and all(r.get("held") for r in obs) and res.journal["bid"].isna().all()


def test_an_event_driven_session_issues_the_event_driven_replays_quotes(world, capture, tmp_path):
    """``live.cadence=book``: the engine steps at each book update (at least 0.05 s apart), as the
    replay of the same messages with ``on_book`` does."""
    path, _ = capture
    feed = live.feed_from_capture(data.read_capture(path), 0.05, symbol="BTCUSDT", on_book=True)
    rep = live.replay(world[0], feed, depth_per_tick=world[1], step_fn=world[2])
    n = len(feed.t) - 1
    s, why, em, res = run_session(world, path, tmp_path, max_observations=n, cadence="book", cadence_s=0.05)
    assert why == "max_observations" and n > 100, (why, n, s.seq)
    pd.testing.assert_frame_equal(res.journal, rep.journal.iloc[:n])
    assert res.metrics["cadence"] == "book" and res.metrics["cadence_s"] == pytest.approx(
        rep.metrics["cadence_s"], rel=0.02
    )
