"""``mmsim calibrate`` (mmsim.fit.capture): a synthetic capture drawn from known laws is fitted
back within its standard errors; the written config is a market a run can build; bad input gets
a one-line error; on the shared captures the committed calibrated market is what the command
writes today."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from omegaconf import OmegaConf

from mmsim import cli, config
from mmsim.fit import capture, data

TICK = 0.1
T_S = 1200.0  # seconds of synthetic capture
RATE = 2.0  # market orders per second per side (Poisson)
MEDIAN, SIGMA = 0.02, 1.5  # lognormal order sizes, base units
MOVE_P = 0.4  # probability per second that the book moves one tick (up or down alike)
TOUCH = 3.0  # base units at each touch
BEHIND = (0.5, 1.0, 0.0, 2.5)  # base units 1..4 ticks behind the touch
MID0 = 30_000.0


def _line(ts_ns: int, stream: str, payload: dict) -> str:
    return f"{ts_ns} " + json.dumps({"stream": stream, "data": payload})


def _synthetic(path: Path, seed: int = 3, duration_s: float = T_S) -> Path:
    """A Binance USD-M recording: a one-tick book moving by one tick with probability MOVE_P each
    second, Poisson buys and sells with lognormal sizes, a depth snapshot and no-op diffs."""
    rng = np.random.default_rng(seed)
    t0 = 1_700_000_000.0
    lines = []
    bid = round(MID0 / TICK) - 0  # ticks
    snap_levels = lambda b: (  # noqa: E731
        [[f"{(b - j) * TICK:.1f}", f"{s}"] for j, s in enumerate((TOUCH, *BEHIND)) if s > 0],
        [[f"{(b + 1 + j) * TICK:.1f}", f"{s}"] for j, s in enumerate((TOUCH, *BEHIND)) if s > 0],
    )
    bids, asks = snap_levels(bid)
    E0 = int(t0 * 1e3)
    lines.append(f"{int(t0 * 1e9)} " + json.dumps({"lastUpdateId": 100, "E": E0, "T": E0, "bids": bids, "asks": asks}))
    events = []
    for side in (1, -1):
        n = rng.poisson(RATE * duration_s)
        events += [(t, side) for t in np.sort(rng.uniform(1.0, duration_s, n))]
    events.sort()
    ei, tid, uid = 0, 1, 101
    for sec in range(int(duration_s)):
        t = t0 + sec
        if sec > 0 and rng.random() < MOVE_P:
            bid += 1 if rng.random() < 0.5 else -1
        E = int(t * 1e3)
        book = {"e": "bookTicker", "u": uid, "b": f"{bid * TICK:.1f}", "B": f"{TOUCH}", "a": f"{(bid + 1) * TICK:.1f}"}
        lines.append(_line(int(t * 1e9), "btcusdt@bookTicker", {**book, "A": f"{TOUCH}", "T": E, "E": E}))
        if sec % 5 == 0:  # a diff that re-sets the touch of the snapshot's book (a no-op on the levels)
            diff = {"e": "depthUpdate", "E": E, "T": E, "U": uid, "u": uid, "pu": uid - 1, "b": [bids[0]], "a": []}
            lines.append(_line(int(t * 1e9) + 1, "btcusdt@depth@0ms", diff))
        uid += 1
        while ei < len(events) and events[ei][0] < sec + 1:
            te, side = events[ei]
            qty = round(max(0.001, MEDIAN * np.exp(SIGMA * rng.standard_normal())), 6)
            Te = int((t0 + te) * 1e3)
            tr = {"e": "trade", "E": Te, "T": Te, "t": tid, "p": f"{bid * TICK:.1f}", "q": f"{qty}", "X": "MARKET"}
            lines.append(_line(int((t0 + te) * 1e9), "btcusdt@trade", {**tr, "m": side < 0}))
            ei, tid = ei + 1, tid + 1
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    path = _synthetic(tmp_path_factory.mktemp("cap") / "hftbacktest_binance_usdm_btcusdt_synthetic.gz")
    return path, capture.calibrate([path])


def _within(value, want, se, k=4.0):
    assert abs(value - want) <= k * se, (value, want, se)


def test_a_synthetic_capture_is_fitted_back(synthetic):
    _, cal = synthetic
    m, rows = cal.market, {r["field"]: r for r in cal.rows}
    f = m["flow"]
    # Poisson flow: the Hawkes fit's stationary rate is the rate (the excitation it finds is noise).
    h = cal.measured["hawkes"]
    n_side = (h["n_buy"] + h["n_sell"]) / 2
    for side in ("buy", "sell"):
        _within(h[f"stationary_rate_{side}"], RATE, np.sqrt(n_side) / cal.measured["window_s"])
    # Sizes: lognormal chosen, its parameters within their standard errors (the 0.001 floor and the
    # 6-decimal rounding touch under 2 % of orders at these parameters).
    assert f["size_law"] == "lognormal"
    _within(np.log(f["size_scale"]), np.log(MEDIAN), rows["flow.size_scale"]["se"] / MEDIAN)
    _within(f["size_sigma"], SIGMA, max(rows["flow.size_sigma"]["se"], 0.02 * SIGMA))
    # The book: tick inferred, the touch and the depth behind it as recorded (exact: no noise).
    assert m["spread"]["tick"] == TICK
    assert m["book"]["depth_touch"] == TOUCH and m["fills"]["touch_depth"] == TOUCH
    assert m["book"]["depth_level"] == pytest.approx(np.mean(BEHIND), rel=1e-3)
    # Variance of log mid per second: MOVE_P ticks^2 per second at the mid (a random walk on the grid).
    v_true = MOVE_P * (TICK / MID0) ** 2
    _within(m["vol"]["v0"], v_true, rows["vol.v0"]["se"])
    theta = np.asarray(m["vol"]["theta"])
    base = capture.base_market("btcusdt")["vol"]["theta"]
    np.testing.assert_allclose(theta / theta[1], np.asarray(base) / base[1], rtol=1e-3)  # regimes keep their ratios
    assert m["price"]["s0"] == pytest.approx(MID0, rel=1e-3)
    # What a window cannot identify is the base's and says so.
    assert m["funding"] == capture.base_market("btcusdt")["funding"]
    assert cal.notes["funding"].startswith("from btcusdt")
    assert cal.notes["flow.size_sigma"].startswith("sd of log size; fit ±")
    # Poisson flow: the excitation sits at its bound 0, where the likelihood has no curvature.
    assert h["at_bound"] and "no standard error" in cal.notes["flow.mu_buy"]


def test_the_written_config_is_a_market_a_run_builds(synthetic, tmp_path):
    path, _ = synthetic
    out = tmp_path / "conf" / "market" / "mine.yaml"
    assert cli.main(["calibrate", str(path), "-o", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("# A BTCUSDT market fitted to the capture")
    market = yaml.safe_load(text)
    world, mp = config.market_params(OmegaConf.create({"market": market}))
    assert world == "market" and mp.flow.size_law == "lognormal" and mp.book.model == "tick"
    # Every field has its comment, fitted or kept, or its block has one (a block kept whole).
    block_noted = False
    for ln in text.splitlines():
        if not ln.strip() or ln.startswith("#") or ln.lstrip().startswith("-"):
            continue
        if not ln.startswith(" "):  # a block, or a top-level field
            block_noted = "#" in ln
            if ln.split(":")[1].split("#")[0].strip():  # a top-level field with its value
                assert block_noted or ln.split(":")[0] in ("world", "n_assets", "asset_names"), ln
            continue
        assert "#" in ln or block_noted, ln
    rep = out.with_name("mine.calibration")
    names = sorted(p.name for p in rep.iterdir())
    assert names == [
        "calibration.json",
        "calibration.md",
        "depth_profile.png",
        "size_law.png",
        "variance_signature.png",
    ]
    md = (rep / "calibration.md").read_text()
    assert "## Fitted from the window" in md and "## Kept from the base market" in md
    assert json.loads((rep / "calibration.json").read_text())["checks"]["size_law"]["law"] == "lognormal"


def _bars_file(path: Path, var_per_s: float, days: float = 10.0, seed: int = 1) -> Path:
    """One-minute bars of a driftless log price with a constant variance per second."""
    rng = np.random.default_rng(seed)
    n = int(days * 1440)
    close = 30_000.0 * np.exp(np.cumsum(rng.standard_normal(n) * np.sqrt(var_per_s * 60.0)))
    t = np.datetime64("2023-03-01T00:00") + np.arange(n) * np.timedelta64(60, "s")
    rows = [
        f"{str(d).replace('T', ' ')},{c:.2f},{c * 1.0001:.2f},{c * 0.9999:.2f},{c:.2f},1\n" for d, c in zip(t, close)
    ]
    path.write_text("timestamp,open,high,low,close,volume\n" + "".join(rows))
    return path


def test_bars_give_the_regimes_and_the_window_picks_its_own(synthetic, tmp_path):
    path, _ = synthetic
    bars = _bars_file(tmp_path / "bars.csv", 4e-9)
    out = tmp_path / "m.yaml"
    assert cli.main(["calibrate", str(path), "--bars", str(bars), "-o", str(out)]) == 0
    market = yaml.safe_load(out.read_text())
    world, mp = config.market_params(OmegaConf.create({"market": market}))  # a valid generator
    theta, seen = (
        np.asarray(mp.vol.theta),
        np.asarray(
            json.loads((out.with_name("m.calibration") / "calibration.json").read_text())["measured"]["bars"]["time_in"]
        )
        > 0,
    )
    # A constant-variance price: every visited regime's diffusive variance is near it (the
    # hourly classifier splits one law's noise into neighbouring regimes).
    assert seen.any() and np.all(np.abs(np.log(theta[seen] / 4e-9)) < np.log(2.0))
    assert np.allclose(np.asarray(mp.vol.generator).sum(axis=1), 0.0, atol=1e-12)
    assert "nearest the window's variance" in out.read_text()
    assert cli.main(["calibrate", str(path), "--bars", str(tmp_path / "none.csv"), "-o", str(out)]) == cli.EXIT_CONFIG


def test_funding_is_fitted_to_the_trailing_year(synthetic, tmp_path):
    """An exact OU of the paid rate, 8-hourly for three years: the fit over the year before the
    window recovers kappa and theta within their standard errors, and older rows are not used."""
    import copy

    cal = copy.deepcopy(synthetic[1])  # the fixture is shared: fit a copy
    kappa, theta, sigma, dt = 1.5e-5, 5e-5, 4e-7, 28_800.0
    rng = np.random.default_rng(4)
    t0 = cal.measured["t0"]
    n = 3 * 1095
    b = np.exp(-kappa * dt)
    sd = sigma * np.sqrt((1 - b * b) / (2 * kappa))
    x = np.empty(n)
    x[0] = theta
    for i in range(1, n):
        x[i] = theta + b * (x[i - 1] - theta) + sd * rng.standard_normal()
    x[: n - 1095] = 0.01  # years before the trailing one: a level the fit must not see
    times = t0 - dt * np.arange(n, 0, -1)
    dates = [str(np.datetime64(int(s), "s")).replace("T", " ") for s in times]
    path = tmp_path / "funding.csv"
    path.write_text("Symbol,Date,Funding Rate\n" + "".join(f"BTCUSDT,{d},{r:.10f}\n" for d, r in zip(dates, x)))
    fund = capture.measure_funding(data.read_funding(path), t0)
    assert fund["trailing"] and fund["n"] <= 1096
    _within(fund["kappa"], kappa, fund["kappa_se"])
    _within(fund["theta"], theta, fund["theta_se"])
    out = capture.with_funding(cal, fund, path.name)
    assert out.market["funding"]["clamp"] == 0.0 and out.notes["funding.kappa"].startswith("per s; fit ±")
    assert "funding" not in out.notes


def test_bad_input_is_one_line(tmp_path, capsys):
    assert cli.main(["calibrate", str(tmp_path / "none.gz"), "-o", str(tmp_path / "m.yaml")]) == cli.EXIT_CONFIG
    assert "no such capture file" in capsys.readouterr().err
    assert cli.main(["calibrate", str(tmp_path / "none.gz"), "-o", str(tmp_path / "m.txt")]) == cli.EXIT_CONFIG
    assert "must be a .yaml file" in capsys.readouterr().err
    argv = ["calibrate", str(tmp_path / "none.gz"), "-o", str(tmp_path / "m.yaml"), "--world-substeps", "0"]
    assert cli.main(argv) == cli.EXIT_CONFIG
    assert "--world-substeps 0: must be an integer >= 1" in capsys.readouterr().err
    empty = tmp_path / "empty.gz"
    with gzip.open(empty, "wt") as fh:
        fh.write(_line(1, "btcusdt@bookTicker", {"e": "bookTicker", "b": "1", "B": "1", "a": "2", "A": "1", "T": 1}))
    assert cli.main(["calibrate", str(empty), "-o", str(tmp_path / "m.yaml")]) == cli.EXIT_CONFIG
    assert "too few to fit a market" in capsys.readouterr().err
    assert not (tmp_path / "m.yaml").exists()


def test_base_must_be_a_one_asset_market(synthetic):
    with pytest.raises(ValueError, match="one-asset market world"):
        capture.fit(synthetic[1].measured, capture.base_market("btc_eth"), "btc_eth")
    with pytest.raises(ValueError, match="--base nosuch: no such market config"):
        capture.base_market("nosuch")


#: The committed calibrated markets and the commands that write them (docs/MODEL.md §17): the
#: shared files, and the command's options after them.
COMMANDS = {
    "btcusdt_captured": (
        ("hftbacktest_binance_usdm_btcusdt_20230404.dat.gz", "hftbacktest_binance_usdm_btcusdt_20230405.dat.gz"),
        # the three weeks before the captures; the trailing year of funding
        {"--bars": "binanceus_btcusdt_1m_20230301-20230321.csv",
         "--funding": "funding_BTC-USDT_binance_2020-01-01_2024-01-01_funding_history.csv"},
        [],
    ),
    "ethusdt_captured": (
        ("hftbacktest_binance_usdm_ethusdt_20240808.gz",),
        {"--funding": "funding_ETH-USDT_binance_2020-01-01_2024-01-01_funding_history.csv"},
        # ETH's book moves faster than the default grid reaches (experiments/validation.md)
        ["--base", "ethusdt", "--book-grid", "pull_rate=0.5,0.6,0.7,0.8,1 refill_rate=10,30"],
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_the_committed_calibrated_market_is_the_commands_output(name, tmp_path):
    captures, named, extra = COMMANDS[name]
    wanted = (*captures, *named.values())
    files = {n: data.data_file(n) for n in wanted}
    if any(f is None for f in files.values()):
        pytest.skip(f"the shared files {wanted} are not all in the data directory (MMSIM_DATA)")
    committed = Path(config.conf_dir()) / "market" / f"{name}.yaml"
    out = tmp_path / committed.name
    argv = ["calibrate", *(str(files[n]) for n in captures), *extra, "--symmetric-flow"]
    for opt, n in named.items():
        argv += [opt, str(files[n])]
    argv += ["--fit-book", "--world-substeps", "4", "-o", str(out), "--report", str(tmp_path / "rep")]
    assert cli.main(argv) == 0
    assert out.read_text() == committed.read_text(), "regenerate it with the command in docs/MODEL.md §17"
