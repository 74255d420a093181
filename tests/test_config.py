"""Hydra configuration: every experiment composes and builds; bad configs fail with clear messages
before any compilation; +params=best.yaml replaces the policy and the account; the launcher and CLI plumbing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf

from mmsim import config as mcfg
from mmsim.engine import EngineParams
from mmsim.world.as2008 import AS2008Params
from mmsim.world.market import MarketParams

CONF = Path(__file__).resolve().parents[1] / "mmsim" / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def make_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose(config_name="config", overrides=list(overrides))


def no_simulate(*args, **kwargs):
    raise AssertionError("the simulator was called: validation must fail before any compilation")


def test_experiments_exist():
    assert {"baseline", "cascade_stress", "high_vol", "funding_squeeze", "multi_asset", "as2008"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("exp", EXPERIMENTS)
def test_every_experiment_composes_and_builds(exp):
    cfg = make_cfg(f"experiment={exp}")
    world, mp, ep, sim = mcfg.build(cfg)
    assert cfg.name == exp
    assert isinstance(ep, EngineParams)
    assert sim.n_steps * sim.dt == pytest.approx(sim.horizon_s)
    assert sim.n_paths >= 1 and sim.n_trace <= sim.n_paths
    if exp == "as2008":
        assert world == "as2008" and isinstance(mp, AS2008Params)
        assert ep.lite and float(ep.tick) == 0.0 and float(ep.warmup_s) == 0.0
        assert sim.n_steps == 200 and sim.dt == pytest.approx(0.005)
        assert float(mp.A) == 140.0 and float(mp.k) == 1.5 and float(mp.sigma) == 2.0 and float(mp.s0) == 100.0
        assert float(ep.account.maker_fee) == 0.0
        assert list(cfg.as2008.gammas) == [0.1, 0.01, 1.0]
    else:
        assert world == "market" and isinstance(mp, MarketParams)
        assert ep.n_assets == mp.n_assets
        assert ep.policy.kind in ("spec", "as2008", "symmetric", "glft")
    mcfg.risk_settings(cfg)


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF / "market").glob("*.yaml")))
def test_every_market_builds(name):
    cfg = make_cfg(f"market={name}")
    world, mp = mcfg.market_params(cfg)
    if name.startswith("ethusdt"):  # ETH's grid and base units (conf/market/ethusdt.yaml)
        assert world == "market" and list(cfg.market.asset_names) == ["ETHUSDT"]
        assert float(mp.spread.tick) == pytest.approx(0.01) and float(mp.liquidation.size_scale) == pytest.approx(2.3)


def test_default_config_builds_the_calibrated_market():
    world, mp, ep, sim = mcfg.build(make_cfg())
    assert world == "market" and mp.n_assets == 1
    # The default market is `mmsim calibrate`'s output on the shared 2023 captures
    # (conf/market/btcusdt_captured.yaml, docs/MODEL.md §17).
    assert float(mp.price.s0) == 28146.0
    np.testing.assert_allclose(np.asarray(mp.vol.theta), [1.587e-09, 1.036e-08, 3.385e-08, 6.132e-08])
    assert float(mp.flow.beta) == pytest.approx(22.63) and float(mp.spread.tick) == 0.1
    assert mp.flow.size_law == "lognormal" and mp.vol.regime0 == 0
    # The engine's estimator priors come from the world (priors_from_market): the regimes'
    # long-run variance is the Normal regime's.
    assert float(ep.vol.long_run_var) == pytest.approx(1.036e-8)
    assert float(ep.flow.beta) == pytest.approx(22.63)
    assert float(ep.liquidation.mu) == pytest.approx(2e-3)
    assert float(ep.tick) == 0.1
    assert float(ep.account.maintenance_margin) == 0.004 and float(ep.account.maker_fee) == 0.0002


#: Binance USD-M fee tiers shipped as account configs: (maker, taker), fractions of notional.
FEE_TIERS = {
    "binance_vip0": (2e-4, 5e-4),
    "binance_vip1": (1.6e-4, 4e-4),
    "binance_vip3": (1.2e-4, 3.2e-4),
    "binance_vip6": (6e-5, 2.5e-4),
    "binance_lp1": (-1e-5, 5e-4),
    "binance_lp2": (-2e-5, 5e-4),
    "binance_lp3": (-3e-5, 5e-4),
    "binance_mm": (-5e-5, 5e-4),
}


def test_fee_tiers_are_named_accounts_with_their_rates():
    """Each tier builds and carries its schedule's rates; the rest of the account is VIP 0's, and
    the maker fee falls with the tier."""
    _, _, base, _ = mcfg.build(make_cfg())
    makers = []
    for name, (maker, taker) in FEE_TIERS.items():
        _, _, ep, _ = mcfg.build(make_cfg(f"account={name}"))
        assert float(ep.account.maker_fee) == pytest.approx(maker, rel=1e-6), name
        assert float(ep.account.taker_fee) == pytest.approx(taker, rel=1e-6), name
        assert float(ep.account.maintenance_margin) == float(base.account.maintenance_margin)
        makers.append(maker)
    assert makers == sorted(makers, reverse=True)
    conf = Path(CONF) / "account"
    assert {p.stem for p in conf.glob("binance_*.yaml")} == set(FEE_TIERS)
    for name in FEE_TIERS:
        assert "Source" in (conf / f"{name}.yaml").read_text(), name


def test_experiment_deltas():
    _, mp, ep, _ = mcfg.build(make_cfg("experiment=cascade_stress"))
    from mmsim.world.processes import liquidation as liq

    n = float(liq.branching_ratio(mp.liquidation))
    assert 0.9 <= n < 1.0  # near-critical, still subcritical
    assert mp.shock_regime == 3 and float(mp.shock_return) < 0 and float(mp.shock_time_s) > 0
    assert float(ep.account.leverage) == 50.0
    _, mp, ep, _ = mcfg.build(make_cfg("experiment=multi_asset"))
    assert mp.n_assets == 2 and ep.n_assets == 2
    c, cs = np.asarray(mp.correlation.corr), np.asarray(mp.correlation.corr_stress)
    assert cs[0, 1] > c[0, 1] > 0
    assert np.shape(ep.tick) == (2,)
    _, mp, _, _ = mcfg.build(make_cfg("experiment=high_vol"))
    from mmsim.world.processes import volatility as vol

    pi = vol.stationary_distribution(mp.vol)
    assert pi[2] + pi[3] > 0.8  # High and Extreme dominate
    _, mp, _, sim = mcfg.build(make_cfg("experiment=funding_squeeze"))
    assert sim.horizon_s >= 2 * mp.funding.interval_s  # several settlements in the horizon


@pytest.mark.parametrize(
    "override, where",
    [
        ("sim.n_paths=-5", "sim.n_paths"),
        ("sim.n_paths=0", "sim.n_paths"),
        ("sim.horizon_s=10.5", "whole number of steps"),
        ("sim.dt_s=0", "sim.dt_s"),
        ("sim.dtype=float16", "sim.dtype"),
        ("sim.chunk_size=0", "sim.chunk_size"),
        ("risk.epsilon_liq=0", "risk.epsilon_liq"),
        ("risk.drawdown_threshold=-0.1", "risk.drawdown_threshold"),
        ("market.flow.alpha_buy=30.0", "market.flow: FlowParams.alpha_buy"),  # explosive Hawkes
        ("market.liquidation.alpha=5.0", "market.liquidation"),  # explosive cascade
        ("market.vol.theta=[1e-8,-1e-8,1e-8,1e-8]", "market.vol: VolParams.theta"),
        ("+market.flow.alpha_bye=1.0", "unknown key(s) ['alpha_bye']"),  # a typo
        ("account.leverage=400", "account: AccountParams.maintenance_margin"),  # 0.4 % >= 1/400
        ("policy.kind=nonsense", "policy: PolicyParams.kind"),
        ("policy.gamma=0", "policy: PolicyParams.gamma"),
        ("market.correlation.corr=[[1.0,0.5],[0.5,1.0]]", "market"),  # 2x2 for one asset
        ("policy.gamma=[0.01,0.02,0.03]", "policy.gamma"),  # per-asset size != 1
        ("task=optimise", "task"),
        ("market.flow.mu_buy=[2.6,1.7]", "market.flow.mu_buy"),  # two values, one asset
        ("market.vol.theta=[1e-8,2e-8]", "market.vol"),  # two regimes, generator has 4
        ("market.liquidation.size_cap=big", "market.liquidation.size_cap = 'big': must be a number"),
        ("market.liquidation.size_cap=0.01", "market.liquidation: LiqParams.size_cap"),  # below x_m
        ("cpu_devices=0", "cpu_devices"),
    ],
)
def test_bad_config_fails_before_compiling(override, where, tmp_path):
    from mmsim import tasks

    cfg = make_cfg("experiment=baseline", override)
    with pytest.raises(mcfg.ConfigError) as e:
        tasks.run_task(cfg, tmp_path, simulate_fn=no_simulate)
    assert where in str(e.value)
    assert not (tmp_path / "metrics.json").exists()


def test_unknown_experiment_is_hydras_error():
    with pytest.raises(MissingConfigException, match="experiment"):
        make_cfg("experiment=does_not_exist")


def test_an_unknown_override_is_a_one_line_config_error():
    """What a user mistypes on the command line (``mmsim live live.foo=1``) is named, no traceback."""
    with pytest.raises(mcfg.ConfigError, match=r"Could not override 'live.foo'\. To append"):
        mcfg.compose(["live.foo=1"])
    with pytest.raises(mcfg.ConfigError, match="experiment"):
        mcfg.compose(["experiment=does_not_exist"])


def test_as2008_needs_the_lite_engine():
    with pytest.raises(mcfg.ConfigError, match="engine.lite"):
        mcfg.build(make_cfg("experiment=as2008", "engine=default"))


def test_as2008_world_has_no_book_to_take_from():
    with pytest.raises(mcfg.ConfigError, match="policy.event_flatten"):
        mcfg.build(make_cfg("experiment=as2008", "policy.event_times_s=[0.5]", "policy.event_flatten=1"))


def test_adverse_slots_sized_from_the_step():
    """Unless given, the adverse-selection estimator keeps ceil(horizon / dt) + 1 pending slots."""
    ep = mcfg.build(make_cfg("experiment=cascade_stress"))[2]  # horizon 1 s, dt 1 s
    assert ep.adverse.n_slots == 2
    ep = mcfg.build(make_cfg("experiment=cascade_stress", "sim.dt_s=0.25", "sim.horizon_s=100"))[2]
    assert ep.adverse.n_slots == 5
    ep = mcfg.build(make_cfg("experiment=cascade_stress", "sim.dt_s=0.01", "sim.horizon_s=1"))[2]
    assert ep.adverse.n_slots == 16  # capped at MAX_SLOTS
    ep = mcfg.build(make_cfg("experiment=cascade_stress", "+engine.adverse.n_slots=7"))[2]
    assert ep.adverse.n_slots == 7  # an explicit value wins
    assert mcfg.engine_params(make_cfg("experiment=cascade_stress")).adverse.n_slots == 8  # live: default


def write_best(path: Path, policy: dict, **extra) -> Path:
    body = {
        "policy": policy,
        "market": "btcusdt",
        "constraints": {"p_liquidation_max": 1e-3},
        "validation": {"n_paths": 10000},
        "feasible": True,
        **extra,
    }
    path.write_text(OmegaConf.to_yaml(OmegaConf.create(body)))
    return path


def test_params_file_replaces_the_policy(tmp_path):
    best = write_best(tmp_path / "best.yaml", {"kind": "spec", "gamma": 0.0042, "size_fraction": 0.05})
    base = mcfg.build(make_cfg("experiment=baseline"))[2]
    _, _, ep, _ = mcfg.build(make_cfg("experiment=baseline", f"+params={best}"))
    assert float(ep.policy.gamma) == pytest.approx(0.0042)
    assert float(ep.policy.size_fraction) == pytest.approx(0.05)
    assert float(ep.policy.k) == float(base.policy.k)  # keys best.yaml does not give stay
    # A different kind is taken over as well.
    best2 = write_best(tmp_path / "best2.yaml", {"kind": "glft", "gamma": 0.02, "A": 2.0})
    _, _, ep2, _ = mcfg.build(make_cfg("experiment=baseline", f"+params={best2}"))
    assert ep2.policy.kind == "glft" and float(ep2.policy.A) == 2.0
    merged = mcfg.merged_params_cfg(make_cfg("experiment=baseline", f"+params={best}"))
    assert merged.policy.gamma == pytest.approx(0.0042)


def test_params_file_carries_the_account(tmp_path):
    """best.yaml's account replaces the configured one (command-line overrides included), so that a
    policy validated at one leverage is not run at another by accident; keys it does not give stay."""
    best = write_best(tmp_path / "best.yaml", {"gamma": 0.0042}, account={"leverage": 37.0, "initial_equity": 5000.0})
    base = mcfg.build(make_cfg("experiment=baseline"))[2]
    assert float(base.account.leverage) == 20.0
    for extra in ((), ("account.leverage=10",)):
        _, _, ep, _ = mcfg.build(make_cfg("experiment=baseline", *extra, f"+params={best}"))
        assert float(ep.account.leverage) == 37.0 and float(ep.account.initial_equity) == 5000.0
        assert float(ep.account.maker_fee) == float(base.account.maker_fee)
    merged = mcfg.merged_params_cfg(make_cfg("experiment=baseline", f"+params={best}"))
    assert merged.account.leverage == 37.0 and merged.policy.gamma == pytest.approx(0.0042)
    # A best.yaml without an account (older files) keeps the configured account.
    old = write_best(tmp_path / "old.yaml", {"gamma": 0.0042})
    assert float(mcfg.build(make_cfg("experiment=baseline", f"+params={old}"))[2].account.leverage) == 20.0


@pytest.mark.parametrize(
    "body, msg",
    [
        ({"policy": {"gama": 0.01}}, "unknown key(s) ['gama']"),
        ({"policy": {}}, "non-empty mapping"),
        ({"policy": {"gamma": -1.0}}, "PolicyParams.gamma"),
        ({"policy": {"gamma": 0.01}, "extra_stuff": 1}, "unknown top-level key(s) ['extra_stuff']"),
        ({"policy": {"gamma": 0.01}, "account": {"levrage": 50}}, "unknown key(s) ['levrage']"),
        ({"policy": {"gamma": 0.01}, "account": [50]}, "account: must be a mapping"),
        ({"policy": {"gamma": 0.01}, "account": {"leverage": -5.0}}, "AccountParams.leverage"),
    ],
)
def test_bad_params_file(tmp_path, body, msg):
    p = tmp_path / "best.yaml"
    p.write_text(OmegaConf.to_yaml(OmegaConf.create(body)))
    with pytest.raises(mcfg.ConfigError) as e:
        mcfg.build(make_cfg("experiment=baseline", f"+params={p}"))
    assert msg in str(e.value)
    with pytest.raises(mcfg.ConfigError, match="no such file"):
        mcfg.build(make_cfg("experiment=baseline", f"+params={tmp_path / 'missing.yaml'}"))


def test_launcher_configs_name_the_plugins():
    j = OmegaConf.load(CONF / "hydra" / "launcher" / "joblib.yaml")
    assert j._target_ == "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    s = OmegaConf.load(CONF / "hydra" / "launcher" / "submitit_slurm.yaml")
    assert s._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    cfg = make_cfg()
    assert "launcher" not in str(OmegaConf.to_yaml(cfg))  # not the default


@pytest.mark.parametrize(
    "overrides",
    [
        ["experiment=as2008", "policy.sigma_price=0"],  # the policy needs the estimate
        ["experiment=cascade_stress", "+engine.price.returns=false"],  # the full engine reads returns
    ],
)
def test_mid_only_price_estimator_is_refused_where_it_is_read(overrides):
    with pytest.raises(mcfg.ConfigError, match="engine.price.returns"):
        mcfg.build(mcfg.compose(overrides))
    assert not mcfg.build(mcfg.compose(["experiment=as2008"]))[2].price.returns


def test_infinity_spelled_in_yaml_on_the_command_line():
    """``.inf`` (YAML) and ``inf`` on the command line are numbers, e.g. no liquidation size cap."""
    for spelling in (".inf", "inf"):
        world, mp, ep, sim = mcfg.build(
            make_cfg("experiment=cascade_stress", f"market.liquidation.size_cap={spelling}")
        )
        assert np.isinf(float(np.asarray(mp.liquidation.size_cap)))


def test_a_word_in_a_list_field_is_refused_and_never_skips_validation():
    """A non-numeric list entry used to turn the list into a tuple of strings, which made the whole
    params class look traced and skip its validation (so ``gamma: -1`` beside it passed)."""
    with pytest.raises(mcfg.ConfigError, match=r"policy.event_times_s = \['abc'\]: must be a number or a list"):
        mcfg.build(mcfg.compose(["experiment=baseline", "policy.event_times_s=[abc]", "policy.gamma=-1"]))
    from mmsim.engine.policy import PolicyParams

    with pytest.raises(ValueError, match=r"PolicyParams.event_times_s = \('abc',\): must be a number"):
        PolicyParams(event_times_s=("abc",), gamma=-1.0)
    with pytest.raises(ValueError, match=r"PolicyParams.gamma"):
        PolicyParams(gamma=-1.0)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (
            ["sim.horizon_s=1e9", "sim.n_paths=1000000", "sim.n_trace=1000000"],
            r"sim: 1,000,000,000 steps with 1000000 traced paths need about",
        ),
        (["sim.dt_s=1e-9", "sim.horizon_s=3600"], r"sim.horizon_s / sim.dt_s = 3,600,000,000,000 steps: at most"),
    ],
)
def test_a_horizon_the_machine_cannot_hold_is_refused_before_compiling(overrides, match):
    with pytest.raises(mcfg.ConfigError, match=match):
        mcfg.build(mcfg.compose(["experiment=baseline", *overrides]))


def test_params_files_are_read_safely(tmp_path):
    best = write_best(tmp_path / "best.yaml", {"gamma": 0.01}, feasible="no")
    with pytest.raises(mcfg.ConfigError, match=r"feasible = 'no': must be true or false"):
        mcfg.load_best(best)
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(
        "a: &a [x, x, x, x, x, x, x, x, x]\n"
        + "".join(f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True))
        + "policy: {gamma: 0.01}\n"
    )
    with pytest.raises(mcfg.ConfigError, match=r"has 72 YAML aliases \(at most 50\)"):
        mcfg.load_best(bomb)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(mcfg.ConfigError, match="not readable as YAML"):
        mcfg.load_best(binary)


def test_an_unwritable_compile_cache_is_a_warning_not_a_failure(tmp_path):
    from mmsim import tasks

    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    cfg = mcfg.compose(["experiment=baseline", f"compile_cache_dir={blocker}/cache", "cpu_devices=1"])
    with pytest.warns(UserWarning, match="is not writable"):
        assert tasks.prepare_jax(cfg) is None


def test_a_jump_cap_that_cuts_more_than_a_trace_is_noted_with_the_cap_that_would_not():
    # The continuous book uses the spread process; the tick book does not, so it is not noted there.
    _, tick_mp, _, _ = mcfg.build(mcfg.compose(["experiment=baseline"]))
    assert mcfg.jump_truncation_warnings(tick_mp, 1.0) == []
    cont = ["experiment=baseline", "market.book.model=continuous"]
    _, mp, _, sim = mcfg.build(mcfg.compose(cont))
    (note,) = mcfg.jump_truncation_warnings(mp, sim.dt)  # spread widenings: 0.243 per second
    assert note.startswith("market.spread.max_jumps = 2 truncates the jump count per step with probability 0.002")
    assert "market.spread.max_jumps=6 keeps it below 1e-06" in note
    _, mp6, _, _ = mcfg.build(mcfg.compose([*cont, "market.spread.max_jumps=6"]))
    assert mcfg.jump_truncation_warnings(mp6, sim.dt) == []
    assert mcfg.jump_truncation_warnings(mp, 1e-3) == []  # a finer step: the cap cuts nothing worth saying
