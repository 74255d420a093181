"""The market-config writer: what it writes reads back through the configuration to the very same
parameters, and every provenance note lands beside its value."""

from __future__ import annotations

import shutil

import jax
import numpy as np
import pytest
import yaml

from mmsim import config
from mmsim.fit import market_config


def _params_equal(a, b) -> bool:
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    return ta == tb and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


def test_a_written_market_builds_the_same_params(tmp_path, monkeypatch):
    conf = tmp_path / "conf"
    shutil.copytree(config.conf_dir(), conf)
    market = yaml.safe_load((conf / "market" / "btcusdt.yaml").read_text())
    notes = {
        "price.s0": "USDT; mean mid of the capture ± 0.4",
        "flow.beta": "per s; bivariate Hawkes MLE ± 1.1",
        "vol.generator": "transitions per s",
        "world": "every process",
        "spread": "OU + jumps",
    }
    path = market_config.write(conf / "market" / "fitted.yaml", market, notes, header=["written by a test"])
    text = path.read_text()
    assert text.startswith("# written by a test\n")
    assert "  s0: 28146.0  # USDT; mean mid of the capture ± 0.4" in text
    assert "  beta: 22.6  # per s; bivariate Hawkes MLE ± 1.1" in text
    assert "spread:  # OU + jumps" in text
    assert yaml.safe_load(text) == market
    monkeypatch.setenv("MMSIM_CONF", str(conf))
    _, mine, *_ = config.build(config.compose(["experiment=baseline", "market=fitted"]))
    _, ref, *_ = config.build(config.compose(["experiment=baseline", "market=btcusdt"]))
    assert _params_equal(mine, ref)


def test_values_read_back_exactly_and_notes_must_name_real_keys():
    m = {
        "world": "market",
        "price": {"s0": 1 / 3, "jump_rate": np.float64(9.71e-5), "cap": float("inf")},
        "vol": {"theta": np.array([2.96e-9, 1.01e-8]), "generator": [[-1.0, 1.0], [2.0, -2.0]]},
    }
    back = yaml.safe_load(market_config.render(m))
    assert back["price"] == {"s0": 1 / 3, "jump_rate": 9.71e-5, "cap": float("inf")}
    assert back["vol"] == {"theta": [2.96e-9, 1.01e-8], "generator": [[-1.0, 1.0], [2.0, -2.0]]}
    with pytest.raises(ValueError, match="price.nope"):
        market_config.render(m, {"price.nope": "x"})
