"""The sweep summary (swept parameters as numeric columns, job order, labels) and the liquidation
claim sentence of every report."""

from __future__ import annotations

import json

import pandas as pd

from mmsim import cli, report


def test_sweep_summary(tmp_path, capsys):
    m = {
        "n_paths": 10,
        "p_liquidation": {"count": 0, "estimate": 0.0, "ci_low": 0.0, "ci_high": 0.3},
        "p_drawdown": {"threshold": 0.1, "count": 1, "estimate": 0.1, "ci_low": 0.0, "ci_high": 0.4},
        "pnl": {"mean": 1.0, "se_mean": 0.5, "std": 2.0, "var_99": 3.0, "cvar_99": 4.0},
        "max_drawdown": {"q99": 5.0},
    }
    for i, g in enumerate((0.01, 0.02)):
        d = tmp_path / f"{i}_policy.gamma={g}"
        (d / ".hydra").mkdir(parents=True)
        (d / ".hydra" / "overrides.yaml").write_text(f"- policy.gamma={g}\n")
        (d / "metrics.json").write_text(json.dumps({**m, "pnl": {**m["pnl"], "mean": float(i)}}))
    assert cli.main(["sweep-summary", str(tmp_path)]) == 0
    md = (tmp_path / "sweep_summary.md").read_text()
    assert "policy.gamma=0.01" in md and "policy.gamma=0.02" in md
    assert (tmp_path / "sweep_summary.csv").exists() and (tmp_path / "sweep_summary.png").exists()
    assert len(report.sweep_rows(tmp_path)) == 2
    # The swept parameter is a numeric column of its own.
    csv = pd.read_csv(tmp_path / "sweep_summary.csv")
    assert csv["policy.gamma"].tolist() == [0.01, 0.02] and csv["policy.gamma"].dtype == float


def test_swept_params_are_numbers_where_they_read_as_numbers():
    sw = report.swept_params(
        [
            "experiment=x policy.gamma=0.1 market.liquidation.size_cap=50 policy.kind=spec",
            "experiment=x policy.gamma=1e-3 market.liquidation.size_cap=.inf policy.kind=glft",
        ]
    )
    assert sw == {
        "policy.gamma": [0.1, 1e-3],
        "market.liquidation.size_cap": [50.0, float("inf")],
        "policy.kind": ["spec", "glft"],
    }
    assert report.swept_params(["a=1", "a=1"]) == {}


def test_sweep_rows_follow_the_job_numbers_and_labels_show_what_varies(tmp_path):
    m = {
        "n_paths": 10,
        "p_liquidation": {"count": 0, "estimate": 0.0, "ci_low": 0.0, "ci_high": 0.3},
        "p_drawdown": {"threshold": 0.1, "count": 1, "estimate": 0.1, "ci_low": 0.0, "ci_high": 0.4},
        "pnl": {"mean": 1.0, "se_mean": 0.5, "std": 2.0, "var_99": 3.0, "cvar_99": 4.0},
        "max_drawdown": {"q99": 5.0},
    }
    for i in (10, 2, 1):  # written out of order; "10_..." sorts before "2_..." as text
        d = tmp_path / f"{i}_sim.seed={i}"
        d.mkdir()
        (d / "metrics.json").write_text(json.dumps(m))
    assert [r["job"] for r in report.sweep_rows(tmp_path)] == ["1_sim.seed=1", "2_sim.seed=2", "10_sim.seed=10"]
    labels = report.varying_labels(
        ["experiment=x policy.gamma=0.1 sim.seed=1", "experiment=x policy.gamma=0.2 sim.seed=1"]
    )
    assert labels == ["gamma=0.1", "gamma=0.2"]
    assert report.varying_labels(["experiment=x"]) == ["experiment=x"]
    assert report.varying_labels(["a.b=1 c=2", "a.b=3 c=4"]) == ["b=1\nc=2", "b=3\nc=4"]


def test_liquidation_claim_needs_the_upper_bound():
    ok = report.liquidation_claim({"count": 0, "estimate": 0.0, "ci_low": 0.0, "ci_high": 3.7e-4, "n": 10000}, 1e-3)
    assert ok.startswith("P(liquidation) ≈ 0")
    no = report.liquidation_claim({"count": 0, "estimate": 0.0, "ci_low": 0.0, "ci_high": 0.3, "n": 10}, 1e-3)
    assert "NOT certified" in no and "0.3" in no
