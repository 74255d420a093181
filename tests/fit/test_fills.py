"""A desk's fills: the reader's formats and refusals, the markouts' exact values on a hand-made mid
path, and ``mmsim markouts`` end to end on a synthetic capture."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmsim import cli
from mmsim.fit import data, fills
from tests.fit.test_capture import _synthetic


def _csv(path, text: str):
    path.write_text(text)
    return path


def test_read_fills_formats_and_bad_rows(tmp_path):
    p = _csv(
        tmp_path / "f.csv",
        "Time,Side,Price,Qty\n"
        "1700000002,buy,99.9,1\n"
        "1700000003000,SELL,100.1,3\n"  # milliseconds
        "2023-11-14T22:13:24Z,b,100.0,0.5\n"  # ISO, 1700000004
        "1700000005,hold,100,1\n"  # bad side
        "1700000006,s,-1,1\n"  # bad price
        "1700000007,-1,100,0\n"  # bad quantity
        "soon,buy,100,1\n",  # bad time
    )
    f = fills.read_fills(p)
    np.testing.assert_allclose(f["time"], [1700000002.0, 1700000003.0, 1700000004.0])
    np.testing.assert_array_equal(f["side"], [1.0, -1.0, 1.0])
    np.testing.assert_allclose(f["qty"], [1.0, 3.0, 0.5])
    assert f.attrs["rejected"] == {"bad_time": 1, "bad_side": 1, "bad_price": 1, "bad_qty": 1}
    assert f.attrs["malformed"] == 4


def test_read_fills_refusals_name_the_problem(tmp_path):
    with pytest.raises(data.DataError, match="no column 'qty'"):
        fills.read_fills(_csv(tmp_path / "a.csv", "time,side,price\n1,buy,100\n"))
    with pytest.raises(data.DataError, match="no usable fill"):
        fills.read_fills(_csv(tmp_path / "b.csv", "time,side,price,qty\n1,up,100,1\n"))
    with pytest.raises(data.DataError, match="no such file"):
        fills.read_fills(tmp_path / "none.csv")


def test_markouts_exact_on_a_hand_made_path():
    """The mid is 100 until t = 5 s and 101 from then on. A buy of 1 at 99.9 (t = 2) and a sell of
    3 at 100.1 (t = 3): both capture 0.1; at h = 5 s the buy marks +1.1 and the sell -0.9, the
    adverse moves +1 and -1; quantity-weighted: markout (1.1 - 2.7) / 4 = -0.4, adverse -0.5."""
    t_mid = np.array([0.0, 5.0, 20.0])
    mid = np.array([100.0, 101.0, 101.0])
    import pandas as pd

    f = pd.DataFrame(
        {"time": [2.0, 3.0, 30.0], "side": [1.0, -1.0, 1.0], "price": [99.9, 100.1, 101.0], "qty": [1.0, 3.0, 1.0]}
    )
    r = fills.fill_markouts(f, t_mid, mid, horizons=(1.0, 5.0, 20.0))
    assert r["n_fills"] == 2 and r["outside"] == 1 and r["volume"] == 4.0
    assert r["spread_capture"][0] == pytest.approx(0.1)
    h1, h5, h20 = r["rows"]
    assert h1["n"] == 2 and h1["markout"] == pytest.approx(0.1) and h1["adverse"] == pytest.approx(0.0, abs=1e-12)
    assert h5["markout"] == pytest.approx(-0.4) and h5["adverse"] == pytest.approx(-0.5)
    # weighted sd of (+1, -1) with weights (1, 3) is sqrt(0.75); n_eff = 16 / 10 = 1.6
    n_eff = 1.6
    se = np.sqrt(0.75 * n_eff / (n_eff - 1.0) / n_eff)
    assert h5["adverse_se"] == pytest.approx(se)
    assert h20["n"] == 0 and np.isnan(h20["markout"])  # no fill has 20 s of recording after it


def test_mmsim_markouts_end_to_end(tmp_path, capsys):
    cap = _synthetic(tmp_path / "s.gz", duration_s=60.0)
    t0 = 1_700_000_000
    rows = "".join(
        f"{t0 + 5 + i},{'buy' if i % 2 else 'sell'},{30000.0 + (0.1 if i % 2 == 0 else -0.1)},0.01\n" for i in range(20)
    )
    f = _csv(tmp_path / "fills.csv", "time,side,price,qty\n" + rows)
    out = tmp_path / "mk"
    assert cli.main(["markouts", str(f), str(cap), "--horizons", "1", "10", "--out", str(out)]) == 0
    assert "20 fills" in capsys.readouterr().out
    res = json.loads((out / "markouts.json").read_text())
    assert [r["horizon_s"] for r in res["rows"]] == [1.0, 10.0] and res["n_fills"] == 20
    assert (out / "markouts.png").stat().st_size > 0 and "# Markouts" in (out / "markouts.md").read_text()
    late = _csv(tmp_path / "late.csv", "time,side,price,qty\n1800000000,buy,30000,1\n")
    assert cli.main(["markouts", str(late), str(cap), "--out", str(out)]) == cli.EXIT_CONFIG
    assert "none of the 1 fills lies inside the recording" in capsys.readouterr().err
    assert cli.main(["markouts", str(f), str(cap), "--horizons", "0"]) == cli.EXIT_CONFIG
