"""Latency of the live loop, measured in one process on this machine.

* ``step``: :meth:`mmsim.live.replay.Trader.on_interval` (paper fills of the resting quote, the
  compiled ``engine.step``, the quote back on the host) over every observation of a recorded
  capture, replayed in memory: p50 / p99 / max in ms.
* ``session``: a live paper session against the local emulator (a websocket server on 127.0.0.1
  streaming the same capture at ``--speed`` times its recorded pace): the step as above, and the
  tick-to-quote latency (message received ▸ quote ready, for the message that closed an
  observation), p50 / p99 / max in ms, with the feed's message rate.
* ``orders_session``: the same session with the orders gateway against the emulated venue (signed
  REST on 127.0.0.1): tick-to-quote then includes reading our fills, the periodic read-backs and
  the order requests; with the counts of orders sent, kept and cancelled. Our fills come from the
  venue's user-data stream; ``orders_session_rest`` is the same session reading them by REST at
  every observation instead (``live.user_stream=false``), for the requests the stream saves.
* ``session_emulator_apart``: the paper session with the emulator in a process of its own
  (``python -m mmsim.live.emulator``), as a venue is: the step and tick-to-quote without the
  emulator's work in the session's process (the two processes still share the machine's cores).

    python scripts/bench_live.py [--capture NAME] [--speed 10]

Needs the data directory (MMSIM_DATA or ../shared/data) for the capture.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--capture", default="hftbacktest_binance_usdm_btcusdt_20240808.gz")
    p.add_argument("--speed", type=float, default=10.0, help="the recording's pace times this in the session row")
    p.add_argument("--overrides", nargs="*", default=["experiment=baseline", "engine.warmup_s=30"])
    a = p.parse_args()
    from mmsim import config as mcfg
    from mmsim import live
    from mmsim.fit import data
    from mmsim.live import emulator, venue
    from mmsim.live import orders as lo
    from mmsim.live import session as ls
    from mmsim.live.replay import Trader
    from mmsim.live.session import percentiles as pct

    path = data.data_file(a.capture)
    if path is None:
        print(f"no data directory (MMSIM_DATA or ../shared/data): {a.capture} is needed")
        return 1
    cfg = mcfg.compose(a.overrides)
    _, mp, ep, sim = mcfg.build(cfg)
    dpt = float(mp.fills.depth_per_tick)
    feed = live.feed_from_capture(data.read_capture(path), 1.0, symbol="BTCUSDT" if "btc" in a.capture else None)
    trader = Trader(ep, depth_per_tick=dpt)
    step_ms = []
    for i in range(len(feed.t)):
        t = time.perf_counter()
        trader.on_interval(feed.row(i))
        step_ms.append(1e3 * (time.perf_counter() - t))
    out = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or platform.platform()}",
        "capture": a.capture,
        "compile_s": trader.compile_s,
        "replay_step_ms": pct(step_ms[1:]),  # the first call allocates its buffers
    }
    lines = emulator.read_lines(path)
    span = lines[-1][0] - lines[0][0]

    async def session(orders: bool, user_stream: bool = True, apart: bool = False):
        v = venue.Venue("bench-key", "bench-secret") if orders else None
        proc = None
        if apart:  # the emulator in a process of its own; its first line names its URLs
            cmd = [sys.executable, "-m", "mmsim.live.emulator", str(path), "--speed", str(a.speed)]
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
            urls = dict(kv.split("=", 1) for kv in proc.stdout.readline().split() if kv.startswith("live."))
            ws_url, rest_url = urls["live.ws_url"], urls["live.rest_url"]
        else:
            em = await emulator.Emulator(lines, speed=a.speed, venue=v).start()
            ws_url, rest_url = em.ws_url, em.rest_url
        kw = {"gateway": "orders", "order_url": em.order_url, "user_stream": user_stream} if orders else {}
        st = ls.LiveSettings(
            ws_url=ws_url,
            rest_url=rest_url,
            max_clock_skew_s=1e12,
            status_s=0,
            max_observations=len(feed.t) - 1,
            **kw,
        )
        creds = lo.Credentials("bench-key", "bench-secret") if orders else None
        with tempfile.TemporaryDirectory() as d:
            s, _ = ls.open_session(
                ep, st, d, symbol=feed.symbol or "BTCUSDT", depth_per_tick=dpt, step_fn=trader.step, credentials=creds
            )
            t = time.perf_counter()
            await s.run()
            wall = time.perf_counter() - t
        if proc is not None:
            proc.terminate()
            proc.wait(10)
            sent = s.builder.decoder.n_msg
        else:
            await em.stop()
            sent = em.sent
        row = {
            "speed": a.speed,
            "messages": sent,
            "messages_per_s": sent / wall,
            "recorded_messages_per_s": sent / span,
            "step_ms": pct(s.step_ms[1:]),
            "tick_to_quote_ms": pct(s.tick_to_quote_ms[1:]),
        }
        if orders:
            row["orders"] = s.gateway.counts
            row["venue_requests_per_observation"] = v.requests / max(s.seq, 1)
            row["user_stream_connections"] = s.user_connections
        return row

    out["session"] = asyncio.run(session(False))
    # The orders gateway against the emulated venue on the loopback address: tick-to-quote now
    # includes reading the fills, the read-backs and the order requests (the step itself is the same).
    out["orders_session"] = asyncio.run(session(True))
    out["orders_session_rest"] = asyncio.run(session(True, user_stream=False))
    out["session_emulator_apart"] = asyncio.run(session(False, apart=True))
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
