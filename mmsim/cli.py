"""The ``mmsim`` command.

Subcommands::

    mmsim run [hydra overrides ...]        # = python -m mmsim.run ...; e.g. experiment=cascade_stress
    mmsim optimize [hydra overrides ...]   # policy optimisation (mmsim.optimize.main)
    mmsim live --params best.yaml [--check] [--out DIR] [overrides ...]   # live.* overrides the connector
    mmsim live --resume RUN_DIR            # continue a stopped or crashed session from its journal
    mmsim live [--params best.yaml] --replay CAPTURE [--cadence S] [--out DIR] [--compare-paths N] [overrides ...]
    mmsim report RUN_DIR                   # a live session's journal -> metrics.json, report.md, figure
    mmsim sweep-summary DIR                # aggregate a multirun's metrics.json files
    mmsim calibrate CAPTURE... -o conf/market/NAME.yaml [--base btcusdt] [--symbol S] [--report DIR]
    mmsim validate CAPTURE[,NEXT]... [--params best.yaml] [--paths N] [--out DIR] [overrides ...]
    mmsim markouts FILLS.csv CAPTURE... [--horizons S ...] [--out DIR]   # a desk's own adverse selection

``live`` loads and validates ``best.yaml`` over the configured experiment, builds the very
:class:`~mmsim.engine.EngineParams` the simulator would run and prints the policy; ``--check``
stops there. Otherwise it connects to the venue's public streams (``live.ws_url``; Binance USD-M by
default) and runs the engine with the paper gateway (:mod:`mmsim.live.session`): nothing is sent to
the venue. ``live.gateway=orders`` sends the quotes as post-only orders (:mod:`mmsim.live.orders`;
the venue's testnet unless ``live.mainnet=true``; keys from ``$MMSIM_API_KEY`` and
``$MMSIM_API_SECRET``). With ``--replay`` it runs the same loop on a recorded websocket capture.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

#: Exit status for a configuration error.
EXIT_CONFIG = 2

_USAGE = """usage: mmsim <command> [args]

commands:
  run [overrides]                 Monte Carlo risk report (Hydra overrides, e.g. experiment=cascade_stress)
  optimize [overrides]            optimise the policy under risk constraints (mmsim.optimize)
  live --params best.yaml [ovr]   run best.yaml's policy on the venue's live feed: paper fills, or
                                  live.gateway=orders for post-only orders on the testnet (--check: validate only)
  live --resume RUN_DIR           continue a live session from its journal
  live --replay CAPTURE [ovr]     run the engine on a recorded capture with paper fills (--params optional)
  report RUN_DIR                  a live session's journal as metrics.json, report.md and a figure
  sweep-summary DIR               aggregate the metrics.json files of a multirun directory
  calibrate CAPTURE... -o FILE    fit a market config (conf/market schema) to recorded captures
  validate CAPTURE... [ovr]       the simulator against recorded windows: the same statistics, side by side
  markouts FILLS.csv CAPTURE...   a desk's own fills: spread capture, adverse selection and markouts per horizon
"""


def _help(command: str, argv: list[str]) -> bool:
    """Print the command's help page when asked for it (``-h``/``--help``); True if printed."""
    if not any(a in ("-h", "--help") for a in argv):
        return False
    from mmsim import config, helptext

    print(helptext.command_help(command, config.conf_dir()))
    return True


def _run(argv: list[str]) -> int:
    if _help("run", argv):
        return 0
    from mmsim import run

    sys.argv = ["mmsim run", *argv]
    run.main()
    return 0


def _optimize(argv: list[str]) -> int:
    if _help("optimize", argv):
        return 0
    from mmsim import optimize

    out = optimize.main(list(argv))
    return out if isinstance(out, int) else 0


def describe_policy(ep) -> str:
    """A readable dump of the engine's policy, account and tick."""
    import dataclasses

    import numpy as np

    lines = [f"policy: {ep.policy.kind}"]
    for f in dataclasses.fields(ep.policy):
        if f.name == "kind":
            continue
        v = np.asarray(getattr(ep.policy, f.name))
        lines.append(f"  {f.name:22s} {v.tolist()}")
    lines.append("account:")
    for f in dataclasses.fields(ep.account):
        lines.append(f"  {f.name:22s} {np.asarray(getattr(ep.account, f.name)).tolist()}")
    lines.append(
        f"engine: n_assets {ep.n_assets}, tick {np.asarray(ep.tick).tolist()}, warmup_s "
        f"{float(np.asarray(ep.warmup_s)):g}, lite {ep.lite}"
    )
    return "\n".join(lines)


def _live(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="mmsim live",
        description="Run the engine on a venue's live feed with paper fills (nothing is sent to the venue; "
        "live.gateway=orders: post-only orders on its testnet), "
        "or on a recorded capture (--replay). The connector's settings are live.* overrides "
        "(conf/live/binance_usdm.yaml).",
    )
    p.add_argument("--check", action="store_true", help="validate best.yaml, show the policy and exit")
    p.add_argument("--resume", help="a live session's run directory: continue it from its journal")
    p.add_argument("--params", help="best.yaml written by the optimiser (required without --replay)")
    p.add_argument(
        "--replay",
        help="a recorded websocket capture (hftbacktest_*.gz) to run the engine on, with "
        "paper fills against its trades",
    )
    p.add_argument(
        "--cadence",
        default="1.0",
        help="seconds between observations in a replay (1e-3 to 3600), or 'book': an observation at every "
        "top-of-book update (event-driven), never two within --min-interval",
    )
    p.add_argument(
        "--min-interval",
        type=float,
        default=0.05,
        help="with --cadence book: the least seconds between two observations",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="run a best.yaml made for another market than the configured one (refused by default)",
    )
    p.add_argument(
        "--symbol",
        help="the symbol to replay (default: the market's asset, which the capture must hold; a capture of "
        "another symbol is refused unless it is named here)",
    )
    p.add_argument("--out", help="output directory of a replay (default outputs/replay/<capture name>/<time>)")
    p.add_argument(
        "--compare-paths",
        type=int,
        default=0,
        help="also simulate this many paths of the configured market over the replay's duration "
        "and report where the replay falls in that distribution (0: off)",
    )
    p.add_argument(
        "overrides", nargs="*", help="Hydra overrides selecting the market and account (e.g. experiment=baseline)"
    )
    a = p.parse_args(argv)
    if a.resume:
        return _resume(a)
    if a.params is None and a.replay is None:
        p.error("--params is required (or --replay CAPTURE to run the configured policy on a recording)")
    from mmsim import config as mcfg

    try:
        best = mcfg.load_best(a.params) if a.params else None
        params = [f"+params={Path(a.params).resolve()}"] if a.params else []
        cfg = mcfg.compose([*a.overrides, *params, *(["+params_force=true"] if a.force and params else [])])
        world, mp, ep, sim = mcfg.build(cfg)
    except mcfg.ConfigError as e:
        hint = " (mmsim live: --force)" if "params_force" in str(e) else ""
        print(f"mmsim live: configuration error: {e}{hint}", file=sys.stderr)
        return EXIT_CONFIG
    if world != "market":
        print(f"mmsim live: the {world!r} world is a simulation model, not a venue; choose a market", file=sys.stderr)
        return EXIT_CONFIG
    if best is not None:
        _check_best(a.params, best, cfg)
    print(describe_policy(ep))
    if a.replay:
        from mmsim.live import session as ls

        try:  # the paper gateway's order latency and L2 queue (live.latency_ms, live.l2_queue), as in a session
            st = ls.live_settings(cfg.get("live"))
            latency = st.latency()
        except ValueError as e:
            print(f"mmsim live: configuration error: {e}", file=sys.stderr)
            return EXIT_CONFIG
        assets = list(cfg.market.get("asset_names") or [])
        return _replay(a, world, mp, ep, sim, assets, latency, l2=st.l2_queue and st.depth)
    if a.check:
        return _check_live(cfg)
    return _session(a, cfg, mp, ep, sim)


def _check_live(cfg) -> int:
    """``mmsim live --check``: the connector's settings, and for the orders gateway that its key
    pair is in the environment (the values are not shown)."""
    from mmsim.live import orders as lo
    from mmsim.live import session as ls

    try:
        st = ls.live_settings(cfg.get("live"))
        if st.gateway == "orders":
            lo.Credentials.from_env(st.api_key_env, st.api_secret_env)
    except ValueError as e:
        print(f"mmsim live: configuration error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"\n{_gateway_line(st)}\nmmsim live --check: valid; nothing was connected or sent.")
    return 0


def _gateway_line(st) -> str:
    if st.gateway == "paper":
        return f"gateway: paper (market data from {st.ws_url}; nothing is sent to the venue)"
    where = "MAINNET (real money)" if st.mainnet else "testnet"
    return (
        f"gateway: orders on the {where} at {st.order_url} (market data from {st.ws_url}); keys from "
        f"${st.api_key_env} and ${st.api_secret_env}; at most {st.max_orders_10s} new orders per 10 s"
    )


def _session(a, cfg, mp, ep, sim, *, run_dir: Path | None = None, resume: bool = False) -> int:
    """Run (or resume) a live session (paper fills, or orders on the venue) and write its outputs."""
    import asyncio
    import json

    import jax.numpy as jnp

    from mmsim.live import orders as lo
    from mmsim.live import session as ls
    from mmsim.report import live as live_report

    try:
        st = ls.live_settings(cfg.get("live"))
    except ValueError as e:
        print(f"mmsim live: configuration error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    assets = list(cfg.market.get("asset_names") or [])
    symbol = st.symbol or (str(assets[0]) if assets else "")
    if not symbol:
        print("mmsim live: no symbol (live.symbol or market.asset_names)", file=sys.stderr)
        return EXIT_CONFIG
    if run_dir is None:
        run_dir = (
            Path(a.out) if a.out else Path("outputs") / "live" / symbol.upper() / time.strftime("%Y-%m-%d_%H-%M-%S")
        )
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "session.json").write_text(
            json.dumps(
                {
                    "params": str(Path(a.params).resolve()) if a.params else None,
                    "force": bool(a.force),
                    "overrides": list(a.overrides),
                    "symbol": symbol,
                },
                indent=2,
            )
        )
    try:
        session, restored = ls.open_session(
            ep,
            st,
            run_dir,
            symbol=symbol,
            depth_per_tick=float(mp.fills.depth_per_tick),
            dtype=jnp.dtype(sim.dtype),
            resume=resume,
        )
    except (ValueError, FileNotFoundError) as e:
        print(f"mmsim live: {e}", file=sys.stderr)
        return EXIT_CONFIG
    if restored is not None:
        print(
            f"mmsim live: resumed {run_dir} after observation {restored['seq']} "
            f"({restored['restepped']} re-stepped from the last snapshot, {restored['torn']} torn line(s) skipped)"
        )
    print(
        f"mmsim live: {symbol.upper()}; {_gateway_line(st)}; "
        f"journal {run_dir / 'journal.jsonl'}; engine step compiled in {session.trader.compile_s:.2f} s",
        flush=True,
    )
    try:
        why = asyncio.run(session.run())
    except (OSError, lo.VenueError) as e:
        # The venue could not be reached or refused the start (the journal says so; nothing rests).
        print(f"mmsim live: the venue's order API failed: {e}", file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"mmsim live: {e}", file=sys.stderr)
        return EXIT_CONFIG
    res = ls.result(session)
    fills = "paper fills" if st.gateway == "paper" else "the venue's fills of its orders"
    files = live_report.write_outputs(res, run_dir, f"live session on {symbol.upper()}: the engine's quotes, {fills}")
    lat = res.metrics["live"]["latency"]["step_ms"]
    print(
        f"mmsim live: stopped ({why}) after {res.metrics['observations']:,} observations; "
        f"PnL {res.metrics.get('pnl', 0.0):.2f}; "
        + (f"step p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms; " if lat else "")
        + "written: "
        + ", ".join(str(f) for f in files)
    )
    return 0


def _compose_run(run_dir: Path, extra: list[str] | tuple = ()):
    """The configuration a live session was started with (its ``session.json``), with ``extra``
    overrides after its own (new ``live.*`` endpoints or limits for a continuation)."""
    import json

    from mmsim import config as mcfg

    meta = json.loads((run_dir / "session.json").read_text())
    params = [f"+params={meta['params']}"] if meta.get("params") else []
    force = ["+params_force=true"] if meta.get("force") and params else []
    cfg = mcfg.compose([*meta.get("overrides", []), *extra, *params, *force])
    return cfg, mcfg.build(cfg)


def _is_session_dir(run_dir: Path, prog: str) -> bool:
    ok = (run_dir / "session.json").is_file() and (run_dir / "journal.jsonl").is_file()
    if not ok:
        why = "no session.json and journal.jsonl"
        print(f"{prog}: {run_dir} is not a live session's run directory ({why})", file=sys.stderr)
    return ok


def _resume(a) -> int:
    from mmsim import config as mcfg

    run_dir = Path(a.resume)
    if not _is_session_dir(run_dir, "mmsim live"):
        return EXIT_CONFIG
    try:
        cfg, (world, mp, ep, sim) = _compose_run(run_dir, a.overrides)
    except mcfg.ConfigError as e:
        print(f"mmsim live: configuration error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    return _session(a, cfg, mp, ep, sim, run_dir=run_dir, resume=True)


def _report(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="mmsim report", description="A live session's journal as the replay's outputs.")
    p.add_argument("run_dir", help="a live session's run directory (journal.jsonl, session.json)")
    a = p.parse_args(argv)
    from mmsim import config as mcfg
    from mmsim.live import session as ls
    from mmsim.report import live as live_report

    run_dir = Path(a.run_dir)
    if not _is_session_dir(run_dir, "mmsim report"):
        return EXIT_CONFIG
    try:
        cfg, (world, mp, ep, sim) = _compose_run(run_dir)
        import jax.numpy as jnp

        res = ls.report_journal(
            run_dir,
            ep,
            ls.live_settings(cfg.get("live")),
            depth_per_tick=float(mp.fills.depth_per_tick),
            dtype=jnp.dtype(sim.dtype),
        )
    except (mcfg.ConfigError, ValueError) as e:
        print(f"mmsim report: {e}", file=sys.stderr)
        return EXIT_CONFIG
    fills = "paper fills" if res.metrics["live"]["gateway"] == "paper" else "the venue's fills of its orders"
    files = live_report.write_outputs(res, run_dir, f"live session {run_dir.name}: the engine's quotes, {fills}")
    print(f"mmsim report: {res.metrics['observations']:,} observations; written: " + ", ".join(str(f) for f in files))
    return 0


def _replay_symbol(a, assets: list[str]) -> str | None:
    """The symbol a replay must find in its capture: ``--symbol``, else the market's asset."""
    return a.symbol or (str(assets[0]) if assets else None)


def _replay(a, world, mp, ep, sim, cfg_assets: list[str], latency=None, l2: bool = True) -> int:
    import jax.numpy as jnp

    from mmsim import live, report
    from mmsim.fit import data
    from mmsim.report import live as live_report

    path = Path(a.replay)
    if not path.exists():
        print(f"mmsim live: no capture at {path}", file=sys.stderr)
        return EXIT_CONFIG
    if a.out and Path(a.out).exists() and not Path(a.out).is_dir():
        print(f"mmsim live: --out {a.out} is a file, not a directory", file=sys.stderr)
        return EXIT_CONFIG
    try:
        if a.compare_paths < 0:
            raise ValueError(f"--compare-paths = {a.compare_paths}: must be >= 0")
        cap = data.read_capture(path, depth=l2)  # with the L2 levels for the paper queue behind the touch
        if cap.get("truncated"):
            t = cap["truncated"]
            print(
                f"warning: {path.name} is damaged after {t['after_lines']:,} lines (compressed byte "
                f"{t['compressed_byte']:,}: {t['reason']}); replaying what it holds",
                file=sys.stderr,
            )
        on_book = a.cadence == "book"
        try:
            cadence = a.min_interval if on_book else float(a.cadence)
        except ValueError:
            raise ValueError(f"--cadence {a.cadence!r}: a number of seconds or 'book'") from None
        from mmsim.live.replay import venue_tick

        feed = live.feed_from_capture(
            cap, cadence, symbol=_replay_symbol(a, cfg_assets), on_book=on_book,
            depth_tick=venue_tick(ep.tick) if l2 else 0.0,
        )  # fmt: skip
        res = live.replay(
            ep, feed, depth_per_tick=float(mp.fills.depth_per_tick), dtype=jnp.dtype(sim.dtype), latency=latency
        )
        if a.compare_paths:
            res.metrics["simulated"] = live.compare_with_simulation(
                res.metrics,
                world,
                mp,
                ep,
                n_paths=a.compare_paths,
                dt=sim.dt,
                seed=sim.seed,
                dtype=jnp.dtype(sim.dtype),
            )
    except ValueError as e:
        print(f"mmsim live: {e}", file=sys.stderr)
        return EXIT_CONFIG
    name = path.name.split(".")[0]
    # A new directory per run (like a simulation's), so that a rerun never overwrites the last one.
    out = Path(a.out) if a.out else Path("outputs") / "replay" / name / time.strftime("%Y-%m-%d_%H-%M-%S")
    files = live_report.write_outputs(res, out, f"replay of {name}: the engine's quotes with paper fills")
    m = res.metrics
    rows = [
        (
            "observations",
            f"{m['observations']:,} "
            + ("at book updates, on average " if m.get("cadence") == "book" else "")
            + f"every {m['cadence_s']:.3g} s ({m['duration_s']:g} s)",
        ),
        ("trades in the recording", f"{m['trades']:,}"),
        ("PnL", report.fmt(m["pnl"])),
        *[(f"  {k}", report.fmt(v)) for k, v in m["pnl_decomposition"].items()],
        ("max drawdown", report.fmt(m["max_drawdown"])),
        ("fills bid / ask / taker", f"{m['fills']['bid']} / {m['fills']['ask']} / {m['fills']['taker']}"),
        ("max |position|, final", f"{report.fmt(m['max_abs_position'])}, {report.fmt(m['final_position'])}"),
        ("quoting", f"{100 * m['quoting_fraction']:.0f} % of observations"),
        ("liquidated", report.fmt(m["liquidated"])),
        ("engine step compile / run (s)", f"{m['compile_s']:.2f} / {m['run_s']:.2f}"),
        (
            "feed quality: refused / stale",
            ", ".join(f"{k} {v:,}" for k, v in m["feed_quality"].items() if v) or "nothing refused, never stale",
        ),
    ]
    if "simulated" in m:
        c = m["simulated"]
        rows += [
            (
                f"simulated ({c['n_paths']:,} paths, {c['horizon_s']:g} s): PnL mean (sd)",
                f"{report.fmt(c['pnl']['mean'])} ({report.fmt(c['pnl']['std'])})",
            ),
            ("  PnL 5 % / 50 % / 95 %", " / ".join(report.fmt(c["pnl"][k]) for k in ("q05", "q50", "q95"))),
            ("  the replay's PnL percentile", f"{c['replay_pnl_percentile']:.1f} %"),
            (
                "  fills mean [5 %, 95 %]",
                f"{report.fmt(c['fills']['mean'])} [{report.fmt(c['fills']['q05'])}, {report.fmt(c['fills']['q95'])}]",
            ),
            ("  the replay's fills percentile", f"{c['replay_fills_percentile']:.1f} %"),
        ]
    print(
        f"\nmmsim live --replay {path.name} (paper fills; nothing was sent)\n"
        + report.text_table(["quantity", "value"], rows)
    )
    print("written: " + ", ".join(str(f) for f in files))
    return 0


def _check_best(params: str, best: dict, cfg) -> None:
    """Say what ``best.yaml`` brings. (One made for another market never gets here unless forced:
    the configuration refuses it.)"""
    print(f"mmsim live: {params} is valid (feasible: {best.get('feasible')}).")
    from omegaconf import OmegaConf

    from mmsim import config as mcfg

    diff = mcfg.market_differences(best, cfg)
    if diff:
        print(
            f"warning (--force): best.yaml was optimised and certified for a different market than the one "
            f"configured (differs in {diff}); its certificate does not hold here",
            file=sys.stderr,
        )
    acc = best.get("account")
    if isinstance(acc, dict) and acc:
        here = OmegaConf.to_container(cfg.account, resolve=True)
        replaced = sorted(k for k in acc if k in here and here[k] != acc[k])
        print(
            "account from best.yaml (the one its validation ran with)"
            + (f"; it replaces the configured {', '.join(f'{k}={here[k]}' for k in replaced)}" if replaced else "")
        )
    if best.get("feasible") is False:
        print(
            "warning: the optimiser marked these parameters infeasible (its risk constraints were not met)",
            file=sys.stderr,
        )
    if best.get("constraints") is not None:
        print(f"constraints: {best['constraints']}")


def _sweep_summary(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="mmsim sweep-summary", description="Aggregate a multirun directory.")
    p.add_argument("dir", help="a Hydra multirun directory (its jobs' subdirectories hold metrics.json)")
    a = p.parse_args(argv)
    from mmsim import report

    files = report.write_sweep_summary(Path(a.dir))
    if not files:
        print(f"mmsim sweep-summary: no */metrics.json under {a.dir}", file=sys.stderr)
        return 1
    print((Path(a.dir) / "sweep_summary.md").read_text())
    print("written: " + ", ".join(str(f) for f in files))
    return 0


def _calibrate(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="mmsim calibrate",
        description=(
            "Fit a market config to recorded exchange captures (consecutive files of one recording, "
            "in time order): order flow, order sizes, touch and depth, spread widenings and the "
            "mid's variance from the window; what a window cannot identify is taken from --base and "
            "marked so. Writes the YAML and, beside it, a calibration report."
        ),
    )
    p.add_argument("captures", nargs="+", help="capture files (Binance USD-M or Hyperliquid websocket recordings)")
    p.add_argument("-o", "--out", required=True, help="the market config to write, e.g. conf/market/mine.yaml")
    p.add_argument("--base", default="btcusdt", help="market config the unfitted fields come from (default btcusdt)")
    p.add_argument("--symbol", help="the symbol to fit, when a recording holds several (e.g. btcusdt)")
    p.add_argument("--tick", type=float, help="the venue's price tick (default: inferred from the quotes)")
    p.add_argument(
        "--symmetric-flow", action="store_true", help="buy and sell flow set to the mean of both sides (no net flow)"
    )
    p.add_argument(
        "--bars",
        help="one-minute bars (CSV) before the window: the volatility regimes, their generator, the variance "
        "process and the price jumps come from them instead of the base market",
    )
    p.add_argument(
        "--funding",
        help="a funding-rate history (CSV): the funding process is fitted to its trailing year before the window",
    )
    p.add_argument(
        "--fit-book",
        action="store_true",
        help="also choose the tick book's microstructure rates by simulating the fitted market against "
        "the window's 1-s facts (a grid search, minutes)",
    )
    p.add_argument(
        "--world-substeps",
        type=int,
        default=4,
        help="world steps per second in the book fit's simulations (default 4: the experiments' "
        "sim.world_substeps at 1-s engine steps; the 1-s facts move with the world's step)",
    )
    p.add_argument(
        "--book-grid",
        default="",
        metavar="NAME=V,V ...",
        help="with --fit-book, other values for some of the book fit's axes (e.g. "
        "'pull_rate=0.5,0.7,1 refill_rate=10,30'); the rest keep the default grid",
    )
    p.add_argument("--report", help="directory of the calibration report (default: NAME.calibration beside -o)")
    a = p.parse_args(argv)
    from omegaconf import OmegaConf

    from mmsim import config as mcfg
    from mmsim import validation
    from mmsim.fit import capture, data, market_config
    from mmsim.report import calibration as cal_report

    out = Path(a.out)
    if out.suffix not in (".yaml", ".yml"):
        print(f"mmsim calibrate: -o {a.out}: the market config must be a .yaml file", file=sys.stderr)
        return EXIT_CONFIG
    if a.world_substeps < 1:
        print(f"mmsim calibrate: --world-substeps {a.world_substeps}: must be an integer >= 1", file=sys.stderr)
        return EXIT_CONFIG
    if a.tick is not None and not a.tick > 0:
        print(f"mmsim calibrate: --tick {a.tick}: must be a positive price step", file=sys.stderr)
        return EXIT_CONFIG
    try:
        grid = validation.book_grid(a.book_grid)
    except ValueError as e:
        print(f"mmsim calibrate: --book-grid: {e}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        cap = capture.read(a.captures, symbol=a.symbol)  # read once: the book fit replays it too
        cal = capture.calibrate(a.captures, base=a.base, tick=a.tick, symmetric_flow=a.symmetric_flow, cap=cap)
    except (ValueError, data.CaptureError) as e:
        print(f"mmsim calibrate: {e}", file=sys.stderr)
        return EXIT_CONFIG
    if a.bars:
        try:
            cal = capture.with_bars(cal, capture.measure_bars(data.read_bars(a.bars)), Path(a.bars).name)
        except (ValueError, data.DataError) as e:
            print(f"mmsim calibrate: --bars {a.bars}: {e}", file=sys.stderr)
            return EXIT_CONFIG
    if a.funding:
        try:
            fund = capture.measure_funding(data.read_funding(a.funding), cal.measured["t0"])
            cal = capture.with_funding(cal, fund, Path(a.funding).name)
        except (ValueError, data.DataError) as e:
            print(f"mmsim calibrate: --funding {a.funding}: {e}", file=sys.stderr)
            return EXIT_CONFIG
    if a.fit_book:
        print("mmsim calibrate: fitting the tick book's rates by simulation ...", flush=True)
        try:
            world, mp = mcfg.market_params(OmegaConf.create({"market": cal.market}))
            rec = validation.recording(cap, float(cal.market["spread"]["tick"]))
            fit = validation.fit_book(rec, world, mp, every=a.world_substeps, grid=grid)
            cal = capture.with_book_fit(cal, fit)
        except (ValueError, mcfg.ConfigError) as e:
            print(f"mmsim calibrate: the book fit failed: {e}", file=sys.stderr)
            return EXIT_CONFIG
    try:  # what is written must be a market a run can build
        mcfg.market_params(OmegaConf.create({"market": cal.market}))
    except (ValueError, mcfg.ConfigError) as e:
        print(f"mmsim calibrate: the fitted market is not valid: {e}", file=sys.stderr)
        return EXIT_CONFIG
    command = "mmsim calibrate " + " ".join(
        [*(Path(c).name for c in a.captures), "-o", out.name, "--base", a.base]
        + (["--symbol", a.symbol] if a.symbol else [])
        + (["--tick", f"{a.tick:g}"] if a.tick else [])
        + (["--symmetric-flow"] if a.symmetric_flow else [])
        + (["--bars", Path(a.bars).name] if a.bars else [])
        + (["--funding", Path(a.funding).name] if a.funding else [])
        + (["--fit-book", "--world-substeps", str(a.world_substeps)] if a.fit_book else [])
        + ([f"--book-grid '{a.book_grid.strip()}'"] if a.fit_book and a.book_grid.strip() else [])
    )
    market_config.write(out, cal.market, cal.notes, [*cal.header, f"Command: {command}"])
    report_dir = Path(a.report) if a.report else out.with_name(out.stem + ".calibration")
    files = cal_report.write(cal, report_dir, out, command, cal.sizes)
    n_fit = sum(r["fitted"] for r in cal.rows)
    print(f"mmsim calibrate: {n_fit} fields fitted, {len(cal.rows) - n_fit} kept from {a.base}; wrote {out}")
    for w in cal_report.warnings(cal.checks):
        print(f"warning: {w}", file=sys.stderr)
    print("report: " + ", ".join(str(f) for f in files))
    return 0


def _validate(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="mmsim validate",
        description=(
            "For each recorded window: replay the policy with paper fills, simulate the same window "
            "(start price, tick, duration, engine, fees) with the configured market and with a market "
            "calibrated to the window alone, and write every statistic side by side with the recorded "
            "value's percentile among the simulated paths."
        ),
    )
    p.add_argument(
        "items",
        nargs="+",
        metavar="CAPTURE|OVERRIDE",
        help="a window per capture argument (consecutive files of one window joined by commas), and Hydra "
        "overrides (key=value) selecting the market and policy, e.g. market=btcusdt_captured",
    )
    p.add_argument("--params", help="best.yaml written by the optimiser (default: the configured policy)")
    p.add_argument("--paths", type=int, default=256, help="simulated policy paths per window and market")
    p.add_argument("--trace", type=int, default=64, help="of them, paths traced for the markouts")
    p.add_argument("--fact-paths", type=int, default=32, help="simulated market-only windows for the market facts")
    p.add_argument("--cadence", type=float, default=1.0, help="seconds between the replay's observations")
    p.add_argument("--symbol", help="the symbol to validate on, when a recording holds several")
    p.add_argument("--no-window-market", action="store_true", help="skip the market calibrated to each window")
    p.add_argument("--out", help="output directory (default outputs/validate/<time>)")
    a = p.parse_intermixed_args(argv)
    a.overrides = [x for x in a.items if "=" in x and not Path(x).exists()]
    a.captures = [x for x in a.items if x not in a.overrides]
    if not a.captures:
        p.error("give at least one capture")
    from omegaconf import OmegaConf

    from mmsim import config as mcfg
    from mmsim import validation
    from mmsim.fit import data
    from mmsim.report import validation as val_report

    for name, v, lo in (("--paths", a.paths, 1), ("--trace", a.trace, 0), ("--fact-paths", a.fact_paths, 2)):
        if v < lo:
            print(f"mmsim validate: {name} = {v}: must be >= {lo}", file=sys.stderr)
            return EXIT_CONFIG
    windows = [[Path(f) for f in c.split(",")] for c in a.captures]
    missing = [str(f) for w in windows for f in w if not f.is_file()]
    if missing:
        print(f"mmsim validate: no such capture file: {', '.join(missing)}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        params = [f"+params={Path(a.params).resolve()}"] if a.params else []
        cfg = mcfg.compose([*a.overrides, *params])
        world, mp, ep, sim = mcfg.build(cfg)
        market_name = mcfg.group_choice([*a.overrides, *params], "market") or "configured"
    except mcfg.ConfigError as e:
        print(f"mmsim validate: configuration error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    if world != "market" or int(cfg.market.get("n_assets", 1)) != 1:
        print("mmsim validate: the configured market must be a one-asset market world", file=sys.stderr)
        return EXIT_CONFIG
    import jax.numpy as jnp
    import numpy as np

    settings = validation.Settings(
        n_paths=a.paths, n_trace=min(a.trace, a.paths), fact_paths=a.fact_paths, dt=sim.dt,
        world_substeps=sim.world_substeps, cadence=a.cadence, seed=sim.seed, dtype=jnp.dtype(sim.dtype),
    )  # fmt: skip
    base = None if a.no_window_market else (market_name, OmegaConf.to_container(cfg.market, resolve=True))
    tick = float(np.max(np.asarray(mp.spread.tick)))
    recordings = []
    for files in windows:  # every window read and checked before anything is simulated
        try:
            recordings.append(validation.prepare(files, tick, a.cadence, symbol=a.symbol))
        except (ValueError, data.CaptureError) as e:
            print(f"mmsim validate: {', '.join(f.name for f in files)}: {e}", file=sys.stderr)
            return EXIT_CONFIG
    results = []
    for rec in recordings:
        print(f"mmsim validate: {', '.join(f.name for f in rec.files)} ...", flush=True)
        try:
            results.append(validation.validate_window(rec, world, {market_name: mp}, ep, settings, base=base))
        except ValueError as e:
            print(f"mmsim validate: {', '.join(f.name for f in rec.files)}: {e}", file=sys.stderr)
            return EXIT_CONFIG
    result = {
        "windows": results,
        "summary": validation.summarize(results),
        "settings": {k: (str(v) if k == "dtype" else v) for k, v in vars(settings).items()},
        "markets": list(results[0]["markets"]),
        "policy": describe_policy(ep),
    }
    out = Path(a.out) if a.out else Path("outputs") / "validate" / time.strftime("%Y-%m-%d_%H-%M-%S")
    command = "mmsim validate " + " ".join([*(",".join(f.name for f in w) for w in windows), *a.overrides])
    files = val_report.write(result, out, command)
    for name, s in result["summary"].items():
        print(
            f"{name}: replay PnL percentiles {[round(p) for p in s['pnl_percentiles']]}, "
            f"fill-count percentiles {[round(p) for p in s['fills_percentiles']]}"
        )
        for f in s["flags"]:
            print(f"warning: {f}", file=sys.stderr)
    print("written: " + ", ".join(str(f) for f in files[:2]) + f" and {len(files) - 2} figures in {out}")
    return 0


def _markouts(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="mmsim markouts",
        description=(
            "A desk's own fills (CSV: time, side, price, qty) against a recording of the market: spread "
            "capture, adverse selection and markout per base unit at each horizon, with standard errors. "
            "Writes markouts.md, markouts.json and markouts.png."
        ),
    )
    p.add_argument("fills", help="CSV of the desk's fills: time (UTC epoch s or ms, or ISO), side, price, qty")
    p.add_argument("captures", nargs="+", help="capture files covering the fills (consecutive, in time order)")
    p.add_argument("--symbol", help="the symbol, when a recording holds several (e.g. btcusdt)")
    p.add_argument(
        "--horizons", type=float, nargs="+", default=None, help="markout horizons in seconds (default 1 5 10 30 60)"
    )
    p.add_argument("--out", default="markouts", help="directory of the report (default ./markouts)")
    a = p.parse_args(argv)
    from mmsim.fit import capture, data, fills
    from mmsim.report import markouts as report

    horizons = tuple(a.horizons) if a.horizons else fills.HORIZONS_S
    if not all(h > 0 for h in horizons):
        print(f"mmsim markouts: --horizons {list(horizons)}: every horizon must be > 0 s", file=sys.stderr)
        return EXIT_CONFIG
    try:
        own = fills.read_fills(a.fills)
        cap = capture.read(a.captures, symbol=a.symbol)
    except (ValueError, data.DataError) as e:
        print(f"mmsim markouts: {e}", file=sys.stderr)
        return EXIT_CONFIG
    t_mid, mid = fills.mids_from_capture(cap)
    if not len(t_mid):
        print("mmsim markouts: the recording has no bookTicker update to take mids from", file=sys.stderr)
        return EXIT_CONFIG
    res = fills.fill_markouts(own, t_mid, mid, horizons)
    if res["n_fills"] == 0:
        print(
            f"mmsim markouts: none of the {len(own)} fills lies inside the recording "
            f"({t_mid[0]:.0f} to {t_mid[-1]:.0f} s UTC epoch)",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    command = "mmsim markouts " + " ".join([Path(a.fills).name, *(Path(c).name for c in a.captures)])
    sources = {
        "fills": Path(a.fills).name,
        "captures": [Path(c).name for c in a.captures],
        "rejected": own.attrs.get("rejected", {}),
    }
    files = report.write(res, a.out, command, sources)
    one = next((r for r in res["rows"] if r["horizon_s"] == 10.0), res["rows"][0])
    print(
        f"mmsim markouts: {res['n_fills']} fills; spread capture {res['spread_capture'][0]:.4g}, "
        f"{one['horizon_s']:g}-s markout {one['markout']:.4g} ± {one['markout_se']:.2g} per base unit"
    )
    print("wrote " + ", ".join(str(f) for f in files))
    return 0


COMMANDS = {
    "calibrate": _calibrate,
    "markouts": _markouts,
    "validate": _validate,
    "run": _run,
    "optimize": _optimize,
    "live": _live,
    "report": _report,
    "sweep-summary": _sweep_summary,
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_USAGE)
        return 0 if argv else 1
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"mmsim: unknown command {cmd!r}\n\n{_USAGE}", file=sys.stderr)
        return 1
    return COMMANDS[cmd](rest)


if __name__ == "__main__":
    sys.exit(main())
