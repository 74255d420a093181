"""The ``mmsim`` command: help pages written from the config, ``live --check`` validating a best.yaml and
refusing one made for another market, the optimiser's dispatch."""

from __future__ import annotations

import re

import pytest
from omegaconf import OmegaConf

from mmsim import cli
from mmsim import config as mcfg
from tests.test_config import write_best


def test_live_check_validates_and_connects_to_nothing(tmp_path, capsys):
    best = write_best(tmp_path / "best.yaml", {"kind": "spec", "gamma": 0.0042})
    rc = cli.main(["live", "--params", str(best), "--check", "experiment=baseline"])
    out = capsys.readouterr()
    assert rc == 0
    assert "gamma" in out.out and "0.0042" in out.out
    assert "nothing was connected or sent" in out.out
    # The account comes from best.yaml, and live says which configured values it replaces.
    best50 = write_best(tmp_path / "best50.yaml", {"gamma": 0.0042}, account={"leverage": 50.0})
    assert cli.main(["live", "--params", str(best50), "--check", "experiment=baseline"]) == 0
    out = capsys.readouterr().out
    assert "it replaces the configured leverage=20.0" in out
    assert re.search(r"leverage\s+50\.0", out)
    bad = tmp_path / "bad.yaml"
    bad.write_text("policy: {gamma: -1}\n")
    assert cli.main(["live", "--params", str(bad)]) == cli.EXIT_CONFIG


def test_cli_dispatches_optimize(monkeypatch):
    import sys
    import types

    seen = {}
    fake = types.ModuleType("mmsim.optimize")
    fake.main = lambda overrides: seen.setdefault("overrides", overrides) and 0
    monkeypatch.setitem(sys.modules, "mmsim.optimize", fake)
    # `from mmsim import optimize` reads the package attribute once the real module was imported.
    import mmsim

    monkeypatch.setattr(mmsim, "optimize", fake, raising=False)
    assert cli.main(["optimize", "experiment=baseline", "optim.steps=3"]) == 0
    assert seen["overrides"] == ["experiment=baseline", "optim.steps=3"]
    assert cli.main(["no-such-command"]) == 1


@pytest.mark.parametrize("command", ["run", "optimize"])
def test_help_says_what_the_command_does_from_the_config(command, capsys):
    """``mmsim run --help`` and ``mmsim optimize --help``: what the command does, every config group
    with its options, every experiment with its description, the main options with units."""
    assert cli.main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: mmsim {command}")
    conf = mcfg.conf_dir()
    for exp in (conf / "experiment").glob("*.yaml"):
        assert f"\n  {exp.stem}\n" in out, exp.stem
    for group in ("account/", "market/", "policy/", "sim/"):
        assert f"\n  {group}\n" in out
    assert "sim.n_paths=4096" in out and "sim.dt_s=1.0" in out and "s per step" in out
    assert "Calm BTCUSDT perpetual" in out  # an experiment's description
    assert len(out.splitlines()) < 120  # a page, not the raw config


def test_live_refuses_a_best_yaml_made_for_another_market_unless_forced(tmp_path, capsys):
    here = OmegaConf.to_container(mcfg.compose(["experiment=baseline"]).market, resolve=True)
    other = {**here, "price": {**here["price"], "s0": 2 * here["price"]["s0"]}}
    best = write_best(tmp_path / "best.yaml", {"gamma": 0.0042}, market=other)
    assert cli.main(["live", "--params", str(best), "experiment=baseline"]) == cli.EXIT_CONFIG
    err = capsys.readouterr().err
    assert "validated for another market" in err and "differs in ['price']" in err and "--force" in err
    assert cli.main(["live", "--params", str(best), "--force", "--check", "experiment=baseline"]) == 0
    same = write_best(tmp_path / "same.yaml", {"gamma": 0.0042}, market=here)
    assert cli.main(["live", "--params", str(same), "--check", "experiment=baseline"]) == 0
