"""``mmsim validate`` (mmsim.validation): markouts, percentiles and uniformity against hand
computations, and the command end to end on a short synthetic recording."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmsim import cli, validation
from tests.fit.test_capture import _synthetic


def test_markouts_from_position_changes():
    # Step 2 buys at the bid of step 1 (99); step 4 sells at the ask of step 3 (103).
    mid = np.array([100.0, 100.0, 101.0, 102.0, 104.0, 101.0])
    bid = np.array([99.0, 99.0, 100.0, 101.0, 103.0, 100.0])
    ask = bid + 2.0
    pos = np.array([0.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    m = validation.markouts(mid, bid, ask, pos, horizons=(1, 3))
    # 1 step: buy (mid[3] - 99) = 3, sell (103 - mid[5]) = 2 -> 2.5; 3 steps: only the buy has them (mid[5] - 99).
    assert m == {"markout_1s": 2.5, "markout_3s": 2.0}
    # Half-second steps: a 1-s markout is two steps, which only the buy has (mid[4] - 99).
    assert validation.markouts(mid, bid, ask, pos, step_s=0.5, horizons=(1,)) == {"markout_1s": 5.0}
    assert np.isnan(validation.markouts(mid, bid, ask, np.zeros(6))["markout_1s"])


def test_compare_gives_the_recorded_percentile():
    sim = np.arange(100.0)
    c = validation.compare(10.0, sim, (9.0, 11.0))
    assert c["percentile"] == pytest.approx(10.5)  # 10 below, one tie counted half
    assert c["sim_mean"] == pytest.approx(49.5) and not c["outside"] and c["real_ci"] == [9.0, 11.0]
    assert validation.compare(-1.0, sim)["outside"] and validation.compare(-1.0, sim)["percentile"] == 0.0
    assert np.isnan(validation.compare(1.0, [np.nan])["percentile"])


def test_uniformity_over_windows():
    u = validation.uniformity(np.linspace(5, 95, 10))
    assert u["n"] == 10 and u["ks_stat"] == pytest.approx(0.05) and u["pvalue"] > 0.9
    assert validation.uniformity([100.0, 100.0, 99.0])["pvalue"] < 0.01


def test_validate_end_to_end_on_a_synthetic_recording(tmp_path):
    path = _synthetic(tmp_path / "hftbacktest_binance_usdm_btcusdt_synthetic.gz", seed=5, duration_s=120.0)
    out = tmp_path / "val"
    argv = ["validate", str(path), "--paths", "8", "--trace", "4", "--fact-paths", "2", "--out", str(out)]
    assert cli.main([*argv, "market=btcusdt_captured"]) == 0  # the window market has its structure: compiles shared
    res = json.loads((out / "validation.json").read_text())
    assert res["markets"] == ["btcusdt_captured", "window"]
    w = res["windows"][0]
    for name in res["markets"]:
        stats = w["markets"][name]["stats"]
        assert set(stats) == set(validation.MARKET_STATS + validation.POLICY_STATS)
        assert stats["pnl"]["n_sim"] == 8 and stats["unchanged_mid"]["n_sim"] == 2
        assert 0.0 <= stats["pnl"]["percentile"] <= 100.0
    # The window's market is fitted to the window: its touch is the recording's.
    assert w["calibrated_market"]["book"]["depth_touch"] == 3.0
    md = (out / "validation.md").read_text()
    assert "## Over the windows" in md and "our fills per hour" in md
    assert len(list(out.glob("*.png"))) == len(validation.MARKET_STATS + validation.POLICY_STATS)


def test_validate_refuses_bad_input(tmp_path, capsys):
    assert cli.main(["validate", str(tmp_path / "none.gz")]) == cli.EXIT_CONFIG
    assert "no such capture file" in capsys.readouterr().err
    path = _synthetic(tmp_path / "s.gz", duration_s=30.0)
    assert cli.main(["validate", str(path), "--paths", "0"]) == cli.EXIT_CONFIG
    assert "--paths = 0: must be >= 1" in capsys.readouterr().err
    assert cli.main(["validate", str(path), "market=btc_eth"]) == cli.EXIT_CONFIG
    assert "one-asset market world" in capsys.readouterr().err


def test_a_recording_of_another_grid_is_refused(tmp_path):
    path = _synthetic(tmp_path / "s.gz", duration_s=30.0)
    with pytest.raises(ValueError, match="the market's tick is 0.01 but the recording of btcusdt quotes on a 0.1 grid"):
        validation.prepare([path], 0.01)
    assert validation.prepare([path], 0.1).tick == 0.1


def test_the_book_fit_chooses_the_closest_grid_point(tmp_path):
    """fit_book scores each grid point by its simulated facts' distance from the recording's and
    returns the best first; with_book_fit writes the choice as fitted by simulation."""
    from omegaconf import OmegaConf

    from mmsim import config
    from mmsim.fit import capture

    path = _synthetic(tmp_path / "s.gz", duration_s=60.0)
    cal = capture.calibrate([path])
    world, mp = config.market_params(OmegaConf.create({"market": cal.market}))
    rec = validation.prepare([path], 0.1)
    grid = {"pull_rate": (0.3, 3.0), "refill_rate": (10.0,)}
    res = validation.fit_book(rec, world, mp, n_paths=4, grid=grid, every=2)
    scores = [r[0] for r in res["table"]]
    assert len(scores) == 2 and scores == sorted(scores) and res["score"] == scores[0]
    assert res["chosen"] == res["table"][0][1] and set(res["chosen"]) == set(grid)
    capture.with_book_fit(cal, res)
    assert cal.market["book"]["pull_rate"] == res["chosen"]["pull_rate"]
    assert cal.notes["book.pull_rate"].startswith("fit by simulation: of 2 grid points")
    assert res["world_dt_s"] == 0.5 and "(world steps of 0.5 s)" in cal.notes["book.pull_rate"]
    assert cal.measured["book_fit"]["table"][0]["score"] == scores[0]


def test_a_percentile_is_written_as_an_ordinal():
    assert [validation._ordinal(p) for p in (0, 1, 2, 3, 4, 11, 12, 13, 21.4, 22, 100, 101.6)] == [
        "0th", "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "100th", "102nd",
    ]  # fmt: skip


def test_the_book_grid_takes_other_values_for_named_axes_only():
    g = validation.book_grid("pull_rate=0.5,0.7,1 refill_rate=10,30")
    assert g["pull_rate"] == (0.5, 0.7, 1.0) and g["refill_rate"] == (10.0, 30.0)
    assert g["lot"] == validation.BOOK_GRID["lot"] and validation.book_grid("") == validation.BOOK_GRID
    for bad, match in (("pull=1", "NAME=V"), ("lot=a", "numbers"), ("lot=-1", ">= 0"), ("lot", "NAME=V")):
        with pytest.raises(ValueError, match=match):
            validation.book_grid(bad)


def test_calibrate_names_a_bad_book_grid_in_one_line(tmp_path, capsys):
    assert cli.main(["calibrate", "x.gz", "-o", str(tmp_path / "m.yaml"), "--book-grid", "speed=2"]) == cli.EXIT_CONFIG
    err = capsys.readouterr().err
    assert err.startswith("mmsim calibrate: --book-grid: 'speed=2'") and len(err.strip().splitlines()) == 1
