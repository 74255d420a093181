"""A replay's outputs: ``journal.csv`` (one row per observation), ``metrics.json`` and ``replay.png``
(the market's touch with our quotes, the position and the PnL over the recording)."""

from __future__ import annotations

import json
from pathlib import Path

from mmsim.live.replay import ReplayResult


def write_outputs(result: ReplayResult, out_dir: Path, title: str) -> list[Path]:
    """The journal (CSV), metrics.json and a figure (mid with our quotes and fills, position,
    equity) into ``out_dir``; returns the files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    j = result.journal
    files = [out_dir / "journal.csv", out_dir / "metrics.json", out_dir / "replay.png"]
    j.to_csv(files[0], index=False)
    files[1].write_text(json.dumps(result.metrics, indent=2))
    fig, ax = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    t = j["t"].to_numpy(float)
    ax[0].plot(t, j["mid"], color="k", lw=0.8, label="mid")
    ax[0].plot(t, j["bid"], color="tab:green", lw=0.7, label="our bid")
    ax[0].plot(t, j["ask"], color="tab:red", lw=0.7, label="our ask")
    fb, fa = j["fill_bid"] > 0, j["fill_ask"] > 0
    # A fill in row i is of the quote sent in row i - 1.
    ax[0].scatter(t[fb.to_numpy()], j["bid"].shift(1)[fb], marker="^", color="tab:green", s=14, label="bid filled")
    ax[0].scatter(t[fa.to_numpy()], j["ask"].shift(1)[fa], marker="v", color="tab:red", s=14, label="ask filled")
    ax[0].set_ylabel("price")
    ax[0].legend(fontsize=7, ncol=3)
    ax[1].step(t, j["position"], where="post", color="tab:blue", lw=0.9)
    ax[1].set_ylabel("position (base units)")
    ax[2].plot(t, j["equity"], color="tab:purple", lw=0.9)
    ax[2].set_ylabel("equity")
    ax[2].set_xlabel("time since the recording's start (s)")
    for a in ax:
        a.grid(alpha=0.3)
    ax[0].set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(files[2], dpi=110)
    plt.close(fig)
    return files
