"""Simulate the composed world (every process on) for a few paths and draw one figure of it.

    python scripts/demo_processes.py --out outputs/demo [--hours 2] [--paths 4] [--seed 0]

Writes ``processes.png`` (mid with regime shading, variance, order-flow and liquidation
intensities, spread in ticks, funding) and ``summary.json`` in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mmsim import rng  # noqa: E402
from mmsim.world import market

REGIME_COLOURS = ("#d8ecd8", "#ffffff", "#fde7c8", "#f7c6c6")


def simulate(mp, n_paths, n_steps, dt, seed):
    def path(k):
        def body(w, t):
            w, obs, info = market.step(rng.fold_in(k, t), w, mp, dt)
            return w, (
                obs.mid[0],
                info.regime,
                info.variance[0],
                info.flow.lam_buy[0],
                info.flow.lam_sell[0],
                info.liquidation.lam_long[0] + info.liquidation.lam_short[0],
                info.liquidation.vol_long[0] + info.liquidation.vol_short[0],
                info.spread[0],
                obs.funding_rate[0],
                obs.funding_ref[0],
            )

        return jax.lax.scan(body, market.init(mp), jnp.arange(n_steps))[1]

    f = jax.jit(jax.vmap(path))
    keys = rng.path_keys(rng.key(seed), 0, n_paths)
    t0 = time.perf_counter()
    out = jax.block_until_ready(f(keys))
    return [np.asarray(x) for x in out], time.perf_counter() - t0


def shade_regimes(ax, t, regime):
    change = np.flatnonzero(np.diff(regime)) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [len(regime)]])
    for s, e in zip(starts, ends):
        ax.axvspan(t[s], t[e - 1], color=REGIME_COLOURS[int(regime[s])], lw=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="outputs/demo")
    ap.add_argument("--hours", type=float, default=2.0)
    ap.add_argument("--paths", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    dt = 1.0
    n_steps = int(a.hours * 3600 / dt)
    mp = market.default_params()
    (mid, regime, var, lb, ls, liq_lam, liq_vol, spread, fund, fund_ref), secs = simulate(
        mp, a.paths, n_steps, dt, a.seed
    )
    t = np.arange(1, n_steps + 1) * dt / 3600.0
    fig, axes = plt.subplots(6, 1, figsize=(11, 13), sharex=True)
    ax = axes[0]
    shade_regimes(ax, t, regime[0])
    for i in range(a.paths):
        ax.plot(t, mid[i], lw=0.7, alpha=1.0 if i == 0 else 0.5)
    ax.set_ylabel("mid (USDT)")
    ax.set_title(
        "mmsim world: every process on (shading: regime of path 0 — green low, white normal, orange high, red extreme)",
        fontsize=9,
    )
    axes[1].plot(t, np.sqrt(var[0] * 365.25 * 86400), lw=0.7)
    axes[1].set_ylabel("vol (annualised)")
    axes[2].plot(t, lb[0], lw=0.5, label="buy")
    axes[2].plot(t, ls[0], lw=0.5, label="sell")
    axes[2].set_ylabel("flow intensity (/s)")
    axes[2].legend(loc="upper right", fontsize=8)
    axes[3].plot(t, liq_lam[0], lw=0.7, color="firebrick")
    ax3b = axes[3].twinx()
    ax3b.plot(t, liq_vol[0], lw=0.5, color="grey", alpha=0.6)
    axes[3].set_ylabel("liq. intensity (/s)")
    ax3b.set_ylabel("liq. volume (BTC)")
    axes[4].plot(t, spread[0] / mp.spread.tick, lw=0.5)
    axes[4].set_ylabel("spread (ticks)")
    axes[5].plot(t, fund[0] * 1e4, lw=0.7, label="this venue")
    axes[5].plot(t, fund_ref[0] * 1e4, lw=0.7, label="reference")
    axes[5].set_ylabel("funding (bp / 8 h)")
    axes[5].legend(loc="upper right", fontsize=8)
    axes[5].set_xlabel("hours")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "processes.png", dpi=110)
    summary = {
        "n_paths": a.paths,
        "n_steps": n_steps,
        "dt_s": dt,
        "seed": a.seed,
        "seconds_incl_compile": secs,
        "regime_occupancy_path0": np.bincount(regime[0], minlength=4).tolist(),
        "final_mid": mid[:, -1].tolist(),
        "liquidations_total_base_units": liq_vol.sum(axis=1).tolist(),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    print(f"wrote {out / 'processes.png'}")


if __name__ == "__main__":
    main()
