"""End to end: the tasks (``mmsim.tasks``, and ``mmsim.run`` for a multirun) write metrics.json,
report.md, paths.parquet, figures and the resolved config.

Compilation dominates these tests (the full market and engine take tens of seconds to compile on a
2-core CPU), so:

* every experiment runs through the whole pipeline (config > metrics > report) against a fast
  stand-in simulator with the real result types and shapes;
* the real simulator runs end to end at tiny size for the AS 2008 world (cheap to compile, through
  the Hydra command line, as a multirun with its sweep summary) and for cascade_stress (the full
  market: scheduled shock, liquidation cascades, traces);
* every other experiment runs on the real simulator at tiny size, without traces.

Compiled programs go to a persistent cache under .pytest_cache, so reruns skip most compilation.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from hydra import compose, initialize_config_dir

from mmsim import config as mcfg
from mmsim import tasks
from mmsim.sim.simulate import PathSummary, SimResult, Trace

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "mmsim" / "conf"
EXPERIMENTS = sorted(
    p.stem for p in (CONF / "experiment").glob("*.yaml") if "task: optimize" not in p.read_text()
)  # the optimiser has its own tests
CACHE = ROOT / ".pytest_cache" / "mmsim-jax"

RISK_KEYS = {
    "n_paths",
    "horizon_s",
    "dt_s",
    "seed",
    "p_liquidation",
    "p_drawdown",
    "pnl",
    "max_drawdown",
    "pnl_decomposition",
    "fills",
    "time_to_liquidation",
    "throughput_path_steps_per_s",
    "compile_s",
    "run_s",
}
PNL_KEYS = {"mean", "std", "q01", "q05", "q50", "q95", "q99", "var_99", "cvar_99", "var_95", "cvar_95"}
AS_KEYS = {"gamma", "strategy", "spread", "profit_mean", "profit_std", "q_mean", "q_std"}
FIGURES = ("pnl_hist.png", "drawdown.png", "liquidation_curve.png", "sample_paths.png")


def make_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose(config_name="config", overrides=[f"compile_cache_dir={CACHE}", *overrides])


TINY = ("sim.n_paths=8", "sim.n_trace=2", "sim.progress=false")


def tiny(exp: str) -> tuple[str, ...]:
    """Small overrides that keep each experiment's character (the shock still falls inside)."""
    if exp == "as2008":
        return ("experiment=as2008", "sim.n_paths=16", "sim.n_trace=2", "sim.progress=false")
    dt = 2.0 if exp == "funding_squeeze" else 1.0
    extra = (
        ("market.funding.first_settlement_s=20.0", "market.funding.interval_s=40.0") if exp == "funding_squeeze" else ()
    )
    shock = ("market.shock_time_s=20.0",) if exp in ("cascade_stress", "multi_asset") else ()
    return (f"experiment={exp}", *TINY, "sim.horizon_s=60.0", f"sim.dt_s={dt}", "engine.warmup_s=5.0", *shock, *extra)


def fake_simulate(
    world,
    mp,
    ep,
    *,
    n_paths,
    n_steps,
    dt,
    seed,
    chunk_size=None,
    n_trace=0,
    dtype=None,
    progress=True,
    world_substeps=1,
):
    """A stand-in with the simulator's result types and shapes (random numbers, no JAX)."""
    rng = np.random.default_rng(seed)
    a, n = ep.n_assets, n_paths
    liq = rng.random(n) < 0.2
    s = PathSummary(
        pnl=rng.normal(0, 100, n),
        pnl_components=rng.normal(0, 10, (n, 6)),
        max_dd=np.abs(rng.normal(0, 500, n)),
        max_dd_frac=np.abs(rng.normal(0, 0.05, n)),
        min_margin_ratio=np.full(n, 1e6),
        min_excess=np.full(n, 1e3),
        max_abs_inventory=np.abs(rng.normal(0, 1, (n, a))),
        liquidated=liq,
        liq_time=np.where(liq, rng.random(n) * n_steps * dt, -1.0),
        n_fills=rng.integers(0, 10, (n, a, 2)),
        final_position=rng.normal(0, 1, (n, a)),
        n_bad=np.zeros(n, np.int32),
    )
    tr = None
    if n_trace:
        k, t = min(n_trace, n), n_steps + 1
        mid = 100 * np.exp(np.cumsum(rng.normal(0, 1e-3, (k, t, a)), 1))
        f = lambda: np.abs(rng.normal(0, 1e-3, (k, t, a)))  # noqa: E731
        tr = Trace(
            t=np.arange(t) * dt,
            mid=mid,
            position=rng.normal(0, 1, (k, t, a)),
            bid=mid - 1,
            ask=mid + 1,
            spread_quoted=np.full((k, t, a), 2.0),
            sigma=f(),
            cascade_intensity=f(),
            equity=1e4 + np.cumsum(rng.normal(0, 10, (k, t)), 1),
            maintenance=np.full((k, t), 100.0),
            margin_ratio=np.full((k, t), 100.0),
            regime=np.ones((k, t), np.int32),
            true_regime=np.repeat(np.minimum(np.arange(t) // max(1, t // 4), 3)[None], k, 0),
            true_cascade_intensity=f(),
        )
    return SimResult(
        summary=s,
        trace=tr,
        n_paths=n,
        n_steps=n_steps,
        dt=dt,
        seed=seed,
        chunk_size=n,
        n_devices=1,
        compile_s=0.5,
        run_s=1.0,
        path_steps_per_s=n * n_steps,
        world=world,
        initial_equity=float(np.asarray(ep.account.initial_equity)),
    )


def check_risk_outputs(out: Path, m: dict, *, trace: bool = True) -> None:
    assert RISK_KEYS <= set(m), RISK_KEYS - set(m)
    assert PNL_KEYS <= set(m["pnl"])
    assert {"count", "estimate", "ci_low", "ci_high"} <= set(m["p_liquidation"])
    assert {"threshold", "count", "estimate", "ci_low", "ci_high"} <= set(m["p_drawdown"])
    assert {"mean", "q50", "q95", "q99"} <= set(m["max_drawdown"])
    assert set(m["pnl_decomposition"]) == {
        "spread_capture",
        "inventory",
        "adverse_selection",
        "fees",
        "funding",
        "liquidation",
    }
    assert m["p_liquidation"]["ci_low"] <= m["p_liquidation"]["estimate"] <= m["p_liquidation"]["ci_high"]
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["n_paths"] == m["n_paths"] and RISK_KEYS <= set(on_disk)
    report = (out / "report.md").read_text()
    assert "P(liquidation)" in report
    if m["p_liquidation_certified_zero"]:
        assert "P(liquidation) ≈ 0" in report
    else:
        assert "NOT certified" in report and "P(liquidation) ≈ 0" not in report
    assert (out / "config_resolved.yaml").exists()
    paths = pd.read_parquet(out / "paths.parquet")  # one row per path, the metrics' sources
    assert len(paths) == m["n_paths"]
    assert paths["pnl"].mean() == pytest.approx(m["pnl"]["mean"], rel=1e-6, abs=1e-9)
    assert int(paths["liquidated"].sum()) == m["p_liquidation"]["count"]
    assert paths["liquidation_time_s"].isna().sum() == m["n_paths"] - m["p_liquidation"]["count"]
    for f in FIGURES if trace else FIGURES[:3]:
        assert (out / f).stat().st_size > 1000, f
        assert f"({f})" in report


@pytest.mark.parametrize("exp", EXPERIMENTS)
def test_pipeline_every_experiment(exp, tmp_path):
    m = tasks.run_task(make_cfg(*tiny(exp)), tmp_path, simulate_fn=fake_simulate)
    if exp == "as2008":
        assert len(m["as2008"]) == 6
        assert all(AS_KEYS <= set(r) for r in m["as2008"])
        assert {(r["gamma"], r["strategy"]) for r in m["as2008"]} == {
            (g, s) for g in (0.1, 0.01, 1.0) for s in ("inventory", "symmetric")
        }
        assert "paper" in (tmp_path / "report.md").read_text()
    else:
        check_risk_outputs(tmp_path, m)


def test_report_states_the_scheduled_events(tmp_path):
    """A policy with scheduled events: the report's set-up states them (times, window, what is
    kept, the taker order) and the taker fee; the sample paths mark them."""
    ev = (
        "policy.event_times_s=[20,40]",
        "policy.event_pull_before_s=5",
        "policy.event_pull_after_s=3",
        "policy.event_flatten=0.5",
    )
    tasks.run_task(make_cfg(*tiny("cascade_stress"), *ev), tmp_path, simulate_fn=fake_simulate)
    report = (tmp_path / "report.md").read_text()
    assert "| scheduled events | t = 20, 40 s; quotes pulled from 5 s before to 3 s after;" in report
    assert "a taker order for 0.5 of the position" in report
    assert "taker fee 0.05 %" in report
    assert (tmp_path / "sample_paths.png").stat().st_size > 1000
    world, mp, ep, _ = tasks.mcfg.build(make_cfg(*tiny("cascade_stress"), *ev))
    assert tasks._events(ep) == [(20.0, 5.0, 3.0), (40.0, 5.0, 3.0)]


def test_certified_claim_only_under_the_bound(tmp_path):
    def safe(*a, **k):
        r = fake_simulate(*a, **k)
        s = r.summary._replace(
            liquidated=np.zeros_like(r.summary.liquidated), liq_time=-np.ones_like(r.summary.liq_time)
        )
        return SimResult(**{**r.__dict__, "summary": s})

    m = tasks.run_task(
        make_cfg("experiment=baseline", "sim.n_paths=5000", "sim.n_trace=0", "risk.epsilon_liq=1e-3"),
        tmp_path / "a",
        simulate_fn=safe,
    )
    assert m["p_liquidation"]["count"] == 0 and m["p_liquidation_certified_zero"]  # CP upper bound 7.4e-4 <= 1e-3
    assert "P(liquidation) ≈ 0" in (tmp_path / "a" / "report.md").read_text()
    m = tasks.run_task(
        make_cfg("experiment=baseline", "sim.n_paths=100", "sim.n_trace=0"), tmp_path / "b", simulate_fn=safe
    )
    assert m["p_liquidation"]["count"] == 0 and not m["p_liquidation_certified_zero"]
    assert "NOT certified" in (tmp_path / "b" / "report.md").read_text()


def test_params_file_reaches_the_run(tmp_path):
    best = tmp_path / "best.yaml"
    best.write_text("policy: {gamma: 0.0042}\nfeasible: true\n")
    seen = {}

    def spy(world, mp, ep, **kw):
        seen["gamma"] = float(ep.policy.gamma)
        return fake_simulate(world, mp, ep, **kw)

    m = tasks.run_task(make_cfg("experiment=baseline", *TINY, f"+params={best}"), tmp_path / "out", simulate_fn=spy)
    assert seen["gamma"] == pytest.approx(0.0042)
    assert m["params"]["source"] == str(best)
    assert "0.0042" in (tmp_path / "out" / "config_resolved.yaml").read_text()


def test_cascade_stress_end_to_end(tmp_path):
    """The real simulator on the full market at tiny size: shock, cascades, figures."""
    # No traces here: they need a second compilation of the full model (the AS 2008 test covers
    # real traces, the stand-in tests cover the sample-path figure).
    m = tasks.run_task(make_cfg(*tiny("cascade_stress"), "sim.n_trace=0"), tmp_path)
    check_risk_outputs(tmp_path, m, trace=False)
    assert not (tmp_path / "sample_paths.png").exists()
    assert m["n_paths"] == 8 and m["horizon_s"] == 60.0
    assert m["throughput_path_steps_per_s"] > 0 and m["run_s"] > 0
    assert m["non_finite_steps"] == 0
    # The experiment's world moves in steps of 0.25 s, and the report says so.
    assert m["world_substeps"] == 4 and m["world_dt_s"] == 0.25
    report = (tmp_path / "report.md").read_text()
    assert "3,600" not in report and "60 steps of 1 s (world steps of 0.25 s)" in report
    assert "(1 s; world 0.25 s)" in report
    # The per-path table's six PnL components add up to each path's PnL (float32 equity ~1e4 USDT).
    paths = pd.read_parquet(tmp_path / "paths.parquet")
    comps = paths[[c for c in paths.columns if c.startswith("pnl_")]].sum(axis=1)
    np.testing.assert_allclose(comps, paths["pnl"], rtol=0, atol=0.05)


@pytest.mark.slow
def test_as2008_cli_multirun(tmp_path):
    """``python -m mmsim.run -m experiment=as2008 ...``: two jobs, each with the six-run table, then
    the sweep summary of the callback."""
    env = {**os.environ, "MMSIM_COMPILE_CACHE": str(CACHE)}
    cmd = [
        sys.executable,
        "-m",
        "mmsim.run",
        "-m",
        "experiment=as2008",
        "sim.n_paths=16",
        "sim.n_trace=2",
        "sim.progress=false",
        "sim.seed=1,2",
        f"hydra.sweep.dir={tmp_path}",
    ]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    jobs = sorted(d for d in tmp_path.iterdir() if (d / "metrics.json").exists())
    assert len(jobs) == 2
    for d in jobs:
        m = json.loads((d / "metrics.json").read_text())
        assert len(m["as2008"]) == 6 and all(AS_KEYS <= set(r) for r in m["as2008"])
        inv = {r["gamma"]: r for r in m["as2008"] if r["strategy"] == "inventory"}
        sym = {r["gamma"]: r for r in m["as2008"] if r["strategy"] == "symmetric"}
        for g in (0.1, 0.01, 1.0):
            assert sym[g]["spread"] == pytest.approx(inv[g]["spread"])
            assert inv[g]["spread"] == pytest.approx(inv[g]["spread_closed_form"], rel=1e-6)  # continuous prices
        assert (d / "report.md").exists() and (d / "as2008_profit.png").exists()
        assert (d / ".hydra" / "config.yaml").exists() and (d / "config_resolved.yaml").exists()
        assert m["throughput_path_steps_per_s"] > 0
    assert (tmp_path / "sweep_summary.md").exists()


@pytest.mark.parametrize("exp", [e for e in EXPERIMENTS if e not in ("as2008", "cascade_stress")])
def test_every_experiment_end_to_end(exp, tmp_path):
    """The real simulator, without traces: experiments of the same static structure (baseline,
    high_vol, funding_squeeze) share one compiled program in the process."""
    # funding_squeeze's own 8 world steps per 2-s step become 4 per 1-s step: the world step of the
    # others, so that the three share one compiled program.
    m = tasks.run_task(make_cfg(*tiny(exp), "sim.n_trace=0", "sim.dt_s=1.0", "sim.world_substeps=4"), tmp_path)
    check_risk_outputs(tmp_path, m, trace=False)
    assert m["non_finite_steps"] == 0 and m["n_paths"] == 8


def test_a_run_that_fails_leaves_a_failed_marker(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "mmsim.run", "experiment=baseline", "sim.n_paths=0", f"hydra.run.dir={out}"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 2 and "sim.n_paths" in res.stderr
    assert "configuration error: sim.n_paths" in (out / "FAILED").read_text()
    assert not (out / "metrics.json").exists()


def test_a_params_file_certified_for_another_market_is_refused_unless_forced(tmp_path):
    from omegaconf import OmegaConf

    from mmsim import config as mcfg

    cascade = OmegaConf.to_container(make_cfg(*tiny("cascade_stress")).market, resolve=True)
    best = tmp_path / "best.yaml"
    best.write_text(yaml.safe_dump({"policy": {"gamma": 0.0042}, "market": cascade, "feasible": True}))
    with pytest.raises(mcfg.ConfigError, match=r"validated for another market .*\+params_force=true"):
        tasks.run_task(
            make_cfg("experiment=baseline", *TINY, f"+params={best}"), tmp_path / "a", simulate_fn=fake_simulate
        )
    forced = make_cfg("experiment=baseline", *TINY, f"+params={best}", "+params_force=true")
    assert tasks.run_task(forced, tmp_path / "b", simulate_fn=fake_simulate)["n_paths"] > 0
    same = make_cfg(*tiny("cascade_stress"), f"+params={best}")
    assert tasks.run_task(same, tmp_path / "c", simulate_fn=fake_simulate)["n_paths"] > 0


def test_rare_event_estimators_reach_the_report(tmp_path):
    """risk.estimator=splitting and =is run besides the plain run; metrics.json says which, and
    the report says what was certified and how."""
    # Splitting in the AS 2008 world (a fast compile; the adapter is the same for every world).
    split = ("risk.estimator=splitting", "risk.splitting.n_paths=8", "risk.splitting.replicates=2")
    tiny_as = ("experiment=as2008", "task=risk", "sim.n_paths=16", "sim.n_trace=0", "sim.progress=false")
    cfg = make_cfg(*tiny_as, *split, "risk.splitting.pilot_paths=8")
    # The plain run is the stand-in's; the estimators run the real simulator.
    m = tasks.run_task(cfg, tmp_path / "s", simulate_fn=fake_simulate)
    rare = m["rare_event"]
    assert m["p_liquidation_estimator"] == "splitting" and rare["method"] == "multilevel splitting"
    assert rare["replicates"] == 2 and len(rare["replicate_estimates"]) == 2
    ttl = rare["time_to_liquidation"]  # P(liquidated by t) at ten times, as importance sampling gives it
    assert len(ttl["t"]) == 10 and ttl["estimate"] == [0.0] * 10 and ttl["ci_high"] is None
    assert not m["p_liquidation_certified_zero"] and "nothing" in rare["note"]  # never liquidated
    text = (tmp_path / "s" / "report.md").read_text()
    assert "## How P(liquidation) was certified" in text and "Multilevel splitting" in text
    assert m["liquidation_claim"] in text
    base = (*tiny("cascade_stress"), "sim.n_trace=0", "engine=lite", "policy=symmetric")
    # The shapes of tests/world/test_tilt.py's tilted runs: the compiled program is shared.
    imp = ("risk.estimator=is", "risk.importance.n_paths=2048", "risk.importance.ce_iterations=0")
    shape = ("sim.horizon_s=300", "market.shock_time_s=100")
    cfg = make_cfg(*base, *shape, *imp, "+risk.importance.tilt={jump_count: 2.0}")
    m = tasks.run_task(cfg, tmp_path / "i", simulate_fn=fake_simulate)
    rare = m["rare_event"]
    assert m["p_liquidation_estimator"] == "is" and rare["tilt"]["jump_count"] == 2.0 and rare["n"] == 2048
    assert "tilted world" in (tmp_path / "i" / "report.md").read_text()
    assert {"threshold", "count", "estimate", "ci_low", "ci_high"} <= set(m["p_loss"])


def test_rare_event_settings_are_checked():
    with pytest.raises(mcfg.ConfigError, match="risk.estimator"):
        mcfg.build(make_cfg("risk.estimator=magic"))
    with pytest.raises(mcfg.ConfigError, match="needs the market world"):
        mcfg.build(make_cfg("experiment=as2008", "risk.estimator=is"))
    with pytest.raises(mcfg.ConfigError, match="risk.splitting.levels"):
        mcfg.build(make_cfg("risk.estimator=splitting", "risk.splitting.levels=[2.0,3.0]"))
    with pytest.raises(mcfg.ConfigError, match="risk.importance.tilt"):
        mcfg.build(make_cfg("risk.estimator=is", "+risk.importance.tilt={liq_size: 1.5}"))
    with pytest.raises(mcfg.ConfigError, match="risk.importance.bucket_s"):
        mcfg.build(make_cfg("risk.estimator=is", "risk.importance.bucket_s=-5"))
    with pytest.raises(mcfg.ConfigError, match="risk.importance.score"):
        mcfg.build(make_cfg("risk.estimator=is", "risk.importance.score=pnl"))
    with pytest.raises(mcfg.ConfigError, match="risk.loss_threshold"):
        mcfg.build(make_cfg("risk.loss_threshold=-1"))
