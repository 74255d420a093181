"""A replay's outputs: ``journal.csv`` (one row per observation), ``metrics.json`` and ``replay.png``
(the market's touch with our quotes, the position and the PnL over the recording). Prices and
equity in quote currency, positions in base units, times in seconds since the recording's start."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from mmsim.live.replay import ReplayResult
from mmsim.report.common import write_json

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Colours: the market's touch dashed and dark, our quotes solid, one hue per side.
MARKET_BID, MARKET_ASK, OUR_BID, OUR_ASK = "#1b5e20", "#7f0000", "tab:green", "tab:red"


def warmup_end(journal: pd.DataFrame) -> float | None:
    """The end of the engine's warm-up, in seconds: the time of the first observation at which it
    quotes a side (None when it never quotes)."""
    quoting = (journal["bid"].notna() | journal["ask"].notna()).to_numpy()
    return float(journal["t"].to_numpy(float)[np.argmax(quoting)]) if quoting.any() else None


def replay_figure(
    journal: pd.DataFrame,
    title: str,
    *,
    warmup_s: float | None = None,
    initial_equity: float | None = None,
) -> Figure:
    """The replay figure of a journal (:func:`mmsim.live.replay`): (1) the mid, the market's best bid
    and best ask and our quotes with the fills, (2) the same prices as distances from the mid
    (quote currency; the touch's half-spread against ours), (3) the position (base units) and (4)
    the equity minus the initial equity (quote currency; ``initial_equity``, default the first
    row's). The engine's warm-up (no quotes) is shaded up to ``warmup_s`` seconds (default
    :func:`warmup_end`, the first quote) and its end marked by a vertical line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    j = journal
    t = j["t"].to_numpy(float)
    mid = j["mid"].to_numpy(float)
    fig, ax = plt.subplots(4, 1, figsize=(9, 10), sharex=True, height_ratios=(3, 2, 1.5, 1.5))
    ax[0].plot(t, mid, color="k", lw=0.6, label="mid")
    ax[0].step(t, j["best_bid"], where="post", color=MARKET_BID, lw=0.8, ls="--", label="market best bid")
    ax[0].step(t, j["best_ask"], where="post", color=MARKET_ASK, lw=0.8, ls="--", label="market best ask")
    ax[0].plot(t, j["bid"], color=OUR_BID, lw=0.9, label="our bid")
    ax[0].plot(t, j["ask"], color=OUR_ASK, lw=0.9, label="our ask")
    fb, fa = (j["fill_bid"] > 0).to_numpy(), (j["fill_ask"] > 0).to_numpy()
    # A fill in row i is of the quote sent in row i - 1.
    ax[0].scatter(t[fb], j["bid"].shift(1)[fb], marker="^", color=OUR_BID, s=14, zorder=4, label="bid filled")
    ax[0].scatter(t[fa], j["ask"].shift(1)[fa], marker="v", color=OUR_ASK, s=14, zorder=4, label="ask filled")
    ax[0].set_ylabel("price (quote ccy)")
    ax[1].axhline(0.0, color="k", lw=0.6)
    ax[1].step(t, j["best_bid"] - mid, where="post", color=MARKET_BID, lw=0.8, ls="--", label="market best bid")
    ax[1].step(t, j["best_ask"] - mid, where="post", color=MARKET_ASK, lw=0.8, ls="--", label="market best ask")
    ax[1].plot(t, j["bid"] - mid, color=OUR_BID, lw=0.9, label="our bid")
    ax[1].plot(t, j["ask"] - mid, color=OUR_ASK, lw=0.9, label="our ask")
    ax[1].set_ylabel("distance from the mid\n(quote ccy; lines as above)")
    ax[2].step(t, j["position"], where="post", color="tab:blue", lw=0.9)
    ax[2].axhline(0.0, color="k", lw=0.6)
    ax[2].set_ylabel("position (base units)")
    eq = j["equity"].to_numpy(float)
    eq0 = float(initial_equity) if initial_equity is not None else (float(eq[0]) if eq.size else 0.0)
    ax[3].plot(t, eq - eq0, color="tab:purple", lw=0.9)
    ax[3].axhline(0.0, color="k", lw=0.6)
    ax[3].set_ylabel("equity − initial\nequity (quote ccy)")
    ax[3].text(
        0.01,
        0.95,
        f"initial equity {eq0:,.2f}",
        transform=ax[3].transAxes,
        va="top",
        fontsize=7,
        bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8},
    )
    ax[3].set_xlabel("time since the recording's start (s)")
    w = warmup_end(j) if warmup_s is None else float(warmup_s)
    if w is None and t.size:  # never quoted: the whole recording is warm-up
        w = float(t[-1])
    for k, a in enumerate(ax):
        if w is not None and t.size and w > t[0]:
            a.axvspan(t[0], w, color="0.5", alpha=0.15, lw=0, zorder=0, label="warm-up (no quotes)" if k == 0 else None)
            a.axvline(w, color="0.3", ls="-.", lw=0.9, label="end of warm-up" if k == 0 else None)
        a.grid(alpha=0.3)
    if w is not None and t.size and w > t[0]:
        ax[0].text(
            0.5 * (t[0] + w), 0.97, "warm-up", transform=ax[0].get_xaxis_transform(), ha="center", va="top", fontsize=8
        )
    ax[0].legend(fontsize=7, ncol=5, loc="lower left", bbox_to_anchor=(0.0, 1.0), frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def report_lines(m: dict, title: str) -> list[str]:
    """``report.md`` of a replay or a live session from its metrics: the run, PnL and its parts,
    fills, the feed's quality, and for a live session its connection, latency and orders."""
    f = lambda x, d=2: "n/a" if x is None else f"{x:,.{d}f}"  # noqa: E731
    lines = [f"# {title}", "", "| | |", "|---|---|"]
    rows = [
        ("symbol", m.get("symbol") or "n/a"),
        ("observations", f"{m.get('observations', 0):,} every {f(m.get('cadence_s'), 3)} s"),
        ("duration", f"{f(m.get('duration_s'), 1)} s"),
        ("public trades", f"{m.get('trades', 0):,}"),
        ("PnL", f"{f(m.get('pnl'))} (quote currency)"),
        ("max drawdown", f(m.get("max_drawdown"))),
        ("min margin ratio", f(m.get("min_margin_ratio"), 3)),
        ("liquidated", str(m.get("liquidated"))),
        ("final position", f"{f(m.get('final_position'), 4)} (max |position| {f(m.get('max_abs_position'), 4)})"),
        ("quoting fraction", f(m.get("quoting_fraction"), 3)),
    ]
    fills = m.get("fills") or {}
    if fills:
        rows.append(
            (
                "fills",
                f"{fills['bid']:,} bid ({f(fills['volume_bid'], 4)}), {fills['ask']:,} ask "
                f"({f(fills['volume_ask'], 4)}), {fills['taker']:,} taker",
            )
        )
    lat = m.get("paper_latency")
    if lat:
        law = (
            f"{1e3 * lat['constant_s']:g} ms" if lat["law"] == "constant"
            else f"empirical, {lat['samples']} samples, median {1e3 * lat['median_s']:g} ms"
        )  # fmt: skip
        rows.append(("paper order latency", law))
    lines += [f"| {k} | {v} |" for k, v in rows]
    parts = m.get("pnl_decomposition") or {}
    if parts:
        lines += ["", "PnL decomposition (quote currency):", "", "| " + " | ".join(parts) + " |"]
        lines += ["|" + "---|" * len(parts), "| " + " | ".join(f(v) for v in parts.values()) + " |"]
    q = {k: v for k, v in (m.get("feed_quality") or {}).items() if v}
    lines += [
        "",
        "Feed quality (refused or stale, by class): " + (", ".join(f"{k} {v:,}" for k, v in q.items()) or "clean"),
    ]
    live = m.get("live")
    if live:
        lines += ["", "## Live", "", f"- gateway: {live.get('gateway')}; stopped: {live.get('stop_reason')}"]
        lines.append(
            f"- connections {live.get('connections')}, reconnects {live.get('reconnects')}, "
            f"stale events {live.get('stale_events')}, clock offset {f(live.get('clock_offset_s'), 3)} s"
        )
        for name, lat in (live.get("latency") or {}).items():
            if lat:
                lines.append(
                    f"- {name.replace('_ms', '')}: p50 {f(lat['p50'])} ms, p99 {f(lat['p99'])} ms, "
                    f"max {f(lat['max'])} ms"
                )
        o = live.get("orders")
        if o:
            refused = ", ".join(f"{k} {v}" for k, v in (o.get("refused") or {}).items()) or "none"
            lines.append(
                f"- orders: {o['sent']} sent, {o['kept']} kept, {o['cancelled']} cancelled, "
                f"{o['post_only_rejected']} rejected as takers, {o['rate_limited']} held by the rate limit, "
                f"refused by a limit: {refused}; {o['fills']} venue fills; {o['reconciliations']} read-backs; "
                f"{o['venue_errors']} venue errors"
            )
            end = live.get("venue_at_stop") or {}
            if end:
                lines.append(
                    f"- at the stop: orders cancelled {end.get('cancelled')}, venue position "
                    f"{f(end.get('venue_position'), 4)}, {end.get('unbooked_fills', 'n/a')} fill(s) after the last "
                    f"observation ({f(end.get('unbooked_qty'), 4)} base units, not in the PnL above)"
                )
    sim = m.get("simulated")
    if sim:
        lines += [
            "",
            "## Against the simulator",
            "",
            f"{sim['n_paths']:,} simulated paths of {f(sim['horizon_s'], 0)} s: PnL mean {f(sim['pnl']['mean'])} "
            f"(5-95 % {f(sim['pnl']['q05'])} to {f(sim['pnl']['q95'])}); the run's PnL is at percentile "
            f"{f(sim['replay_pnl_percentile'], 1)} of them, its fills at percentile "
            f"{f(sim['replay_fills_percentile'], 1)}.",
        ]
    return lines + [""]


def write_outputs(result: ReplayResult, out_dir: Path, title: str, *, warmup_s: float | None = None) -> list[Path]:
    """The journal (CSV), metrics.json, report.md, the quotes' terms (``quote_terms.csv``: the policy's
    reservation price, half spread, each adjustment and size factor per observation, where the
    result has them) and a figure (:func:`replay_figure`: the mid, the market's
    best bid and ask and our quotes with the fills, the quotes' distances from the mid, position,
    equity minus the initial equity, the warm-up marked; ``warmup_s``, seconds, default the first
    quote) into ``out_dir``; returns the files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Written beside the directory's files first and moved in only once all three are written, so
    # that a failure never leaves a mix of this run's and a previous run's files looking current.
    tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=out_dir))
    names = ("journal.csv", "metrics.json", "report.md", "replay.png")
    try:
        j = result.journal
        j.to_csv(tmp / names[0], index=False)
        write_json(tmp / names[1], result.metrics)  # strict JSON: a non-finite number is null, never NaN
        (tmp / names[2]).write_text("\n".join(report_lines(result.metrics, title)))
        if result.terms is not None:  # why each quote is where it is
            result.terms.to_csv(tmp / "quote_terms.csv", index=False)
            names = (*names, "quote_terms.csv")
        eq0 = None
        if "pnl" in result.metrics and len(j):  # pnl = final equity - initial equity
            eq0 = float(j["equity"].iloc[-1]) - float(result.metrics["pnl"])
        fig = replay_figure(j, title, warmup_s=warmup_s, initial_equity=eq0)
        fig.savefig(tmp / names[3], dpi=110)
        plt.close(fig)
        for n in names:
            os.replace(tmp / n, out_dir / n)
        (out_dir / "FAILED").unlink(missing_ok=True)
    except BaseException as e:
        (out_dir / "FAILED").write_text(f"{type(e).__name__}: {e}\n")
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [out_dir / n for n in names]
