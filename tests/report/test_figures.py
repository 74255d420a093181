"""The figures say what their captions say: checked on the matplotlib objects (lines, texts,
legends), not on pixels, from inputs built by hand (fixed seeds, no simulation). PnL and equity in
quote currency, times in seconds, positions in base units."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from mmsim.live.replay import ReplayResult  # noqa: E402
from mmsim.optimize.lagrangian import OptResult, OptSettings  # noqa: E402
from mmsim.optimize.objective import Constraints, Objective  # noqa: E402
from mmsim.optimize.space import ParamSpec  # noqa: E402
from mmsim.optimize.validation import FrontierResult  # noqa: E402
from mmsim.regimes import REGIME_NAMES  # noqa: E402
from mmsim.report import live as live_report  # noqa: E402
from mmsim.report import optimize as opt_report  # noqa: E402
from mmsim.report import risk as risk_report  # noqa: E402
from mmsim.sim.risk import clopper_pearson, liquidation_curve, paths_to_certify, proportion  # noqa: E402
from mmsim.sim.simulate import Trace  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def legend_texts(ax_or_fig) -> list[str]:
    legends = getattr(ax_or_fig, "legends", None) or [ax_or_fig.get_legend()]
    return [t.get_text() for lg in legends if lg is not None for t in lg.get_texts()]


def line(ax, label: str) -> Line2D:
    found = [ln for ln in ax.lines if ln.get_label() == label]
    assert len(found) == 1, f"{label!r} not among {[ln.get_label() for ln in ax.lines]}"
    return found[0]


# ------------------------------------------------------------------------------------------------
# PnL histogram


def test_var_and_cvar_lines_sit_at_minus_the_losses_and_say_so():
    pnl = np.random.default_rng(0).normal(0.0, 300.0, 2000)
    m = {"var_99": 653.2, "cvar_99": 1234.5, "mean": 11.11}
    ax = risk_report.pnl_hist_figure(pnl, m).axes[0]
    var = [ln for ln in ax.lines if ln.get_label().startswith("VaR 99")]
    cvar = [ln for ln in ax.lines if ln.get_label().startswith("CVaR 99")]
    assert len(var) == len(cvar) == 1
    assert var[0].get_xdata()[0] == pytest.approx(-653.2)
    assert cvar[0].get_xdata()[0] == pytest.approx(-1234.5)
    # The labels state the plotted (negative) PnL, not the positive loss.
    assert var[0].get_label() == "VaR 99 % (PnL = −653.2)"
    assert cvar[0].get_label() == "CVaR 99 % (PnL = −1,234)"
    assert set(legend_texts(ax)) >= {var[0].get_label(), cvar[0].get_label()}


def test_signed_numbers_for_labels():
    assert risk_report.signed(-1234.5) == "−1,234"
    assert risk_report.signed(653.2) == "653.2"
    assert risk_report.signed(-0.5) == "−0.5"


# ------------------------------------------------------------------------------------------------
# Cumulative P(liquidation)


def test_zero_liquidations_are_stated_in_words():
    n, eps = 512, 1e-3
    curve = liquidation_curve(np.full(n, -1.0), 1800.0, n_points=20, alpha=0.05)
    ax = risk_report.liquidation_curve_figure(curve, eps, n, 0.95).axes[0]
    (note,) = [t.get_text() for t in ax.texts if t.get_gid() == "zero_event_note"]
    upper = clopper_pearson(0, n, 0.05)[1]
    n_eps = paths_to_certify(eps, 0.05)
    assert n_eps == 3688
    assert note.replace("\n", " ").startswith(
        f"0 / 512 paths liquidated; 95 % upper bound {upper:.3g}; 3,688 paths needed for ε = 0.001"
    )
    assert note.endswith("\nnot certified: upper bound > ε")  # 0.00718 > 0.001


def test_zero_liquidations_certified_and_no_note_with_events():
    n, eps = 5000, 1e-3
    ax = risk_report.liquidation_curve_figure(liquidation_curve(np.full(n, -1.0), 60.0, 10), eps, n).axes[0]
    (note,) = [t.get_text() for t in ax.texts]
    assert "0 / 5,000 paths liquidated" in note and "\ncertified: upper bound ≤ ε" in note
    liq = np.where(np.arange(n) < 3, 30.0, -1.0)  # 3 liquidations at t = 30 s
    ax = risk_report.liquidation_curve_figure(liquidation_curve(liq, 60.0, 10), eps, n).axes[0]
    assert not ax.texts


# ------------------------------------------------------------------------------------------------
# The optimiser's figures: a zero count is never drawn above epsilon


def assert_no_zero_above(ax, zero_x: np.ndarray, eps: float, labels: tuple[str, ...] | None = None) -> None:
    """No point drawn at a zero-count x lies above eps, except the upper-bound markers."""
    checked = 0
    for ln in ax.lines:
        if ln.get_gid() == "zero_upper_bound" or (labels is not None and ln.get_label() not in labels):
            continue
        xd, yd = np.asarray(ln.get_xdata(), float), np.asarray(ln.get_ydata(), float)
        if xd.shape != yd.shape:
            continue
        at = np.isin(xd, zero_x) & np.isfinite(yd)
        checked += int(np.isin(xd, zero_x).sum())
        assert np.all(yd[at] <= eps), f"{ln.get_label()!r}: {yd[at]} above epsilon {eps}"
    assert checked, "no line at the zero-count points: the check would prove nothing"


def frontier_inputs(n=200):
    counts = [0, 0, 1, 5]
    gammas = [1e-3, 3e-3, 1e-2, 3e-2]
    pts = []
    for g, k in zip(gammas, counts):
        p = proportion(np.arange(n) < k, 0.05)
        pts.append(
            {
                "theta": {"gamma": g},
                "objective": 10.0 + 100 * g,
                "objective_se": 1.0,
                "feasible": False,
                "p_liquidation": {x: p[x] for x in ("count", "estimate", "ci_low", "ci_high")},
            }
        )
    fr = FrontierResult(points=pts, best_feasible=None, safest=0, seed=7, n_paths=n)
    lo, hi = clopper_pearson(0, 5000, 0.05)
    optimum = {
        "theta": {"gamma": 2e-3},
        "objective": 10.2,
        "objective_se": 0.5,
        "p_liquidation": {"count": 0, "estimate": 0.0, "ci_low": lo, "ci_high": hi},
    }
    return fr, optimum, np.array(gammas)[np.array(counts) == 0]


def test_frontier_draws_zero_counts_as_upper_bounds_below_which_p_lies():
    eps = 1e-3  # below the old floor 0.3 / 200 = 1.5e-3: a clipped zero would sit above it
    fr, optimum, zero_x = frontier_inputs()
    fig = opt_report.frontier_figure(fr, "gamma", Constraints(epsilon_liq=eps), optimum=optimum)
    ax = fig.axes[1]
    assert_no_zero_above(ax, zero_x, eps)
    est = line(ax, "estimate (> 0 events)")
    assert np.all(np.isnan(np.asarray(est.get_ydata(), float)[:2]))  # a 0 estimate is not drawn
    bounds = [ln for ln in ax.lines if ln.get_gid() == "zero_upper_bound"]
    grid, opt = bounds
    assert grid.get_marker() == "v" and opt.get_marker() == "v"
    np.testing.assert_allclose(grid.get_xdata(), zero_x)
    np.testing.assert_allclose(grid.get_ydata(), clopper_pearson(0, 200, 0.05)[1])
    assert opt.get_ydata()[0] == pytest.approx(optimum["p_liquidation"]["ci_high"])  # 7.4e-4 <= eps
    assert "0 events: 95 % upper bound (p below)" in legend_texts(ax)
    assert ax.get_yscale() == "log" and ax.get_ylim()[0] < eps
    assert not any("drawn at" in t for t in (ax.get_ylabel(), *legend_texts(ax)))


def opt_result(n_paths=200, eps=1e-3):
    p = [0.0, 0.0, 0.005, 0.0, 0.01]
    ps = [2e-3, 3e-3, 8e-3, 2e-3, 1.2e-2]  # the surrogate of a zero count is positive
    trace = [
        {
            "iter": i,
            "theta": {"gamma": 1e-3 * (1 + i)},
            "objective": 10.0 + i,
            "objective_se": 1.0,
            "p_liq": p[i],
            "p_liq_s": ps[i],
            "c_liq": float(np.log((p[i] + 1e-4) / eps)),
            "lambda_liq": 0.1 * i,
        }
        for i in range(len(p))
    ]
    res = OptResult(
        theta={"gamma": 1e-3},
        z=np.zeros(1),
        selected_iter=1,
        feasible_in_training=False,
        trace=trace,
        lambdas={"liq": 0.0},
        n_evals=10,
        wall_s=1.0,
        specs=[ParamSpec("gamma", 1e-4, 1e-1)],
        settings=OptSettings(n_paths=n_paths),
        constraints=Constraints(epsilon_liq=eps),
        objective=Objective(),
    )
    return res, np.array([0, 1, 3])


def test_trace_draws_zero_training_counts_as_upper_bounds():
    res, zero_it = opt_result()
    ax = opt_report.trace_figure(res).axes[2]
    assert_no_zero_above(ax, zero_it, 1e-3, labels=("P(liq) training (> 0 events)",))
    (bound,) = [ln for ln in ax.lines if ln.get_gid() == "zero_upper_bound"]
    assert bound.get_marker() == "v"
    np.testing.assert_array_equal(bound.get_xdata(), zero_it)
    np.testing.assert_allclose(bound.get_ydata(), clopper_pearson(0, 200, 0.05)[1])
    assert ax.get_ylim()[0] < 1e-3


def test_optimiser_figures_are_written(tmp_path):
    fr, optimum, _ = frontier_inputs()
    c = Constraints(epsilon_liq=1e-3)
    assert opt_report.plot_frontier(fr, "gamma", c, tmp_path / "f.png", optimum=optimum).stat().st_size > 1000
    assert opt_report.plot_trace(opt_result()[0], tmp_path / "t.png").stat().st_size > 1000


# ------------------------------------------------------------------------------------------------
# Sample paths


def make_trace(regime_path0, k=4, t_n=241, a=1, dt=1.0, seed=0, eq0=10_000.0) -> Trace:
    """A Trace with the simulator's shapes (random numbers); path 0's world regime given."""
    rng = np.random.default_rng(seed)
    mid = 28_000.0 * np.exp(np.cumsum(rng.normal(0, 1e-4, (k, t_n, a)), 1))
    lam = np.abs(rng.normal(0, 0.5, (k, t_n, a)))
    true_regime = np.ones((k, t_n), np.int32)
    true_regime[0] = regime_path0
    return Trace(
        t=np.arange(t_n) * dt,
        mid=mid,
        position=np.round(np.cumsum(rng.normal(0, 0.05, (k, t_n, a)), 1), 2),
        bid=mid - 1,
        ask=mid + 1,
        spread_quoted=np.full((k, t_n, a), 2.0),
        sigma=np.full((k, t_n, a), 1e-4),
        cascade_intensity=0.8 * lam,
        equity=eq0 + np.cumsum(rng.normal(0, 5, (k, t_n)), 1) - np.cumsum(rng.normal(0, 5, (k, 1)), 1),
        maintenance=np.full((k, t_n), 120.0),
        margin_ratio=np.full((k, t_n), 80.0),
        regime=np.ones((k, t_n), np.int32),
        true_regime=true_regime,
        true_cascade_intensity=lam,
    )


def test_sample_paths_name_every_regime_present():
    regime = np.repeat(np.arange(4), 61)[:241]  # low, normal, high, extreme
    fig = risk_report.sample_paths_figure(make_trace(regime))
    names = legend_texts(fig)
    assert set(names) >= {"low", "normal: unshaded", "high", "extreme"}
    regime = np.where(np.arange(241) < 100, 1, 3)  # normal, then extreme
    names = legend_texts(risk_report.sample_paths_figure(make_trace(regime)))
    assert "normal: unshaded" in names and "extreme" in names
    assert not {"low", "high"} & set(names)
    assert all(n in REGIME_NAMES for n in ("low", "normal", "high", "extreme"))


def test_sample_paths_are_readable():
    tr = make_trace(np.ones(241, np.int32))
    fig = risk_report.sample_paths_figure(tr)
    _, ax_pos, ax_eq, ax_lam = fig.axes[:4]
    # (a) one path stands out: path 0 bold and opaque, the others thin and faint.
    p0 = line(ax_pos, "path 0")
    np.testing.assert_allclose(p0.get_ydata(), tr.position[0, :, 0])
    rest = [ln for ln in ax_pos.lines if ln is not p0 and len(ln.get_xdata()) == 241]
    assert len(rest) == 3
    assert all(ln.get_linewidth() < p0.get_linewidth() and (ln.get_alpha() or 1.0) < 0.5 for ln in rest)
    assert (p0.get_alpha() or 1.0) == 1.0
    # (b) equity minus the initial equity, linear.
    e0 = line(ax_eq, "path 0")
    np.testing.assert_allclose(e0.get_ydata(), tr.equity[0] - tr.equity[0, 0])
    assert ax_eq.get_yscale() == "linear" and "initial equity" in ax_eq.get_ylabel()
    fig = risk_report.sample_paths_figure(tr, initial_equity=10_000.0)
    np.testing.assert_allclose(line(fig.axes[2], "path 0").get_ydata(), tr.equity[0] - 10_000.0)
    # (c) the world's intensity and the engine's estimate: different style and colour, both named.
    world = line(ax_lam, "world (true), path 0")
    est = line(ax_lam, "engine's estimate, path 0")
    assert world.get_linestyle() != est.get_linestyle() and world.get_color() != est.get_color()
    assert {"world (true), path 0", "engine's estimate, path 0"} <= set(legend_texts(ax_lam))
    np.testing.assert_allclose(est.get_ydata(), tr.cascade_intensity[0].sum(-1))


def test_sample_paths_written_with_events_and_assets(tmp_path):
    tr = make_trace(np.repeat(np.arange(4), 61)[:241], a=2)
    out = risk_report.fig_sample_paths(tr, tmp_path / "s.png", asset_names=["BTC", "ETH"], events=[(120.0, 10, 5)])
    assert out.stat().st_size > 1000


# ------------------------------------------------------------------------------------------------
# Replay


def make_journal(n=120, first_quote=20, seed=0) -> pd.DataFrame:
    """A replay journal (the columns of :func:`mmsim.live.replay`): a 0.1 touch around a random
    walk, our quotes 2 away from the mid from ``first_quote`` seconds on."""
    g = np.random.default_rng(seed)
    t = np.arange(1, n + 1, dtype=float)
    mid = 60_000.05 + 0.1 * np.cumsum(g.integers(-20, 21, n))
    quoting = t >= first_quote
    fill_bid = np.where(quoting & (g.random(n) < 0.1), 0.01, 0.0)
    fill_ask = np.where(quoting & (g.random(n) < 0.1), 0.01, 0.0)
    pos = np.cumsum(fill_bid - fill_ask)
    return pd.DataFrame(
        {
            "t": t,
            "mid": mid,
            "best_bid": mid - 0.05,
            "best_ask": mid + 0.05,
            "bid": np.where(quoting, mid - 2.0, np.nan),
            "ask": np.where(quoting, mid + 2.0, np.nan),
            "bid_size": 0.01,
            "ask_size": 0.01,
            "take": 0.0,
            "fill_bid": fill_bid,
            "fill_ask": fill_ask,
            "fill_take": 0.0,
            "position": pos,
            "equity": 10_000.0 + np.cumsum(g.normal(0, 0.5, n)),
            "margin_ratio": 50.0,
            "regime": 1,
            "sigma": 1e-4,
        }
    )


def warmup_span(ax) -> tuple[float, float]:
    (span,) = [p for p in ax.patches if p.get_label().startswith("warm-up")]
    if hasattr(span, "get_width"):
        return span.get_x(), span.get_x() + span.get_width()
    xy = np.asarray(span.get_xy())
    return float(xy[:, 0].min()), float(xy[:, 0].max())


def test_replay_figure_shows_the_touch_and_the_warmup():
    j = make_journal()
    ax = live_report.replay_figure(j, "synthetic").axes[0]
    np.testing.assert_allclose(line(ax, "market best bid").get_ydata(), j["best_bid"])
    np.testing.assert_allclose(line(ax, "market best ask").get_ydata(), j["best_ask"])
    line(ax, "our bid")
    line(ax, "our ask")
    assert {"market best bid", "market best ask", "our bid", "our ask", "warm-up (no quotes)"} <= set(legend_texts(ax))
    assert live_report.warmup_end(j) == 20.0
    assert warmup_span(ax) == pytest.approx((1.0, 20.0))  # up to the first quote
    assert line(ax, "end of warm-up").get_xdata()[0] == pytest.approx(20.0)
    assert "warm-up" in [t.get_text() for t in ax.texts]
    ax = live_report.replay_figure(j, "synthetic", warmup_s=30.0).axes[0]  # given explicitly
    assert warmup_span(ax) == pytest.approx((1.0, 30.0))


def test_replay_outputs_keep_their_files(tmp_path):
    j = make_journal()
    res = ReplayResult(j, {"observations": len(j), "pnl": float(j["equity"].iloc[-1] - 10_000.0)}, None)
    files = live_report.write_outputs(res, tmp_path, "synthetic")
    assert [f.name for f in files] == ["journal.csv", "metrics.json", "report.md", "replay.png"]
    assert (tmp_path / "replay.png").stat().st_size > 1000
    assert "| observations |" in (tmp_path / "report.md").read_text()  # what the metrics hold, no more


def test_a_failed_rerun_never_leaves_old_outputs_looking_current(tmp_path, monkeypatch):
    j = make_journal()
    res = ReplayResult(j, {"observations": len(j), "pnl": float(j["equity"].iloc[-1] - 10_000.0), "x": np.nan}, None)
    live_report.write_outputs(res, tmp_path, "first")
    assert json.loads((tmp_path / "metrics.json").read_text())["x"] is None  # strict JSON: NaN as null
    before = (tmp_path / "metrics.json").read_text()

    def broken(*a, **k):
        raise RuntimeError("the figure could not be drawn")

    monkeypatch.setattr(live_report, "replay_figure", broken)
    res2 = ReplayResult(j, {"observations": 1, "pnl": 0.0}, None)
    with pytest.raises(RuntimeError):
        live_report.write_outputs(res2, tmp_path, "second")
    assert "the figure could not be drawn" in (tmp_path / "FAILED").read_text()
    assert (tmp_path / "metrics.json").read_text() == before  # the first run's, untouched, beside FAILED
    assert not list(tmp_path.glob(".partial-*"))
    monkeypatch.undo()
    live_report.write_outputs(res2, tmp_path, "third")
    assert not (tmp_path / "FAILED").exists()
