"""Hydra configuration > validated params pytrees: the only place a config is read.

``build(cfg)`` turns a composed config (``conf/config.yaml`` and its groups) into what the
simulator takes::

    world, market_params, engine_params, sim = build(cfg)
    simulate(world, market_params, engine_params, **sim.simulate_kwargs())

Everything is checked here, on the host, before any compilation: unknown keys (a typo in a field
name), the Monte Carlo size (positive path count, a horizon that is a whole number of steps), the
risk thresholds and every params class's own rules (which raise ``ValueError`` naming the field;
here the message is prefixed with the config path, e.g. ``market.flow: FlowParams.alpha_buy =
30.0: spectral radius ... must be < 1``). Every failure is a :class:`ConfigError` (a
``ValueError``).

Config layout (see ``conf/config.yaml``): ``market`` (``world: market`` with one block per process
of :class:`mmsim.world.market.MarketParams`, or ``world: as2008`` with the fields of
:class:`mmsim.world.as2008.AS2008Params`), ``account`` (:class:`mmsim.engine.account.AccountParams`), ``engine``
(warm-up, lite, tick, estimator overrides), ``policy`` (:class:`mmsim.engine.policy.PolicyParams`),
``sim`` and ``risk``. Units are those of the params classes: seconds, rates per second, prices in
quote currency, sizes in base units.

``+params=path/to/best.yaml`` (an optimiser's output, top-level keys ``policy``, ``account``,
``market``, ``constraints``, ``validation``, ``feasible``): its ``policy`` and ``account`` blocks
are merged over the configured policy and account (the keys it gives replace the configured ones,
command-line overrides included; the others stay) before building, so that a policy optimised
at 50x leverage is run at 50x; :func:`load_best` reads and checks such a file.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

from mmsim.world import WORLDS

DTYPES = ("float32", "float64")
TASKS = ("risk", "as2008", "optimize")
#: A horizon is a whole number of steps when |horizon / dt - round(horizon / dt)| <= this.
STEP_TOL = 1e-6
#: Limits of a params file (best.yaml): its size, and YAML aliases (an alias bomb expands exponentially).
MAX_PARAMS_BYTES = 1_000_000
MAX_PARAMS_ALIASES = 50
#: The top-level keys of an optimiser's best.yaml.
BEST_KEYS = ("policy", "account", "market", "constraints", "validation", "feasible")


class ConfigError(ValueError):
    """A configuration that cannot be run; the message names the config path and the rule."""


def conf_dir() -> Path:
    """The configuration directory every entry point composes from: ``$MMSIM_CONF`` when set (it
    must hold a ``config.yaml``), else the ``conf/`` shipped inside the package."""
    env = os.environ.get("MMSIM_CONF")
    if env:
        d = Path(env).expanduser().resolve()
        if not (d / "config.yaml").is_file():
            raise ConfigError(f"MMSIM_CONF = {env!r}: no config.yaml in that directory")
        return d
    return Path(str(importlib.resources.files("mmsim") / "conf")).resolve()


def compose(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """``config.yaml`` of :func:`conf_dir` composed with Hydra ``overrides`` (outside a Hydra run),
    e.g. ``compose(["experiment=cascade_stress", "sim.n_paths=1024"])``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        try:
            return hydra_compose(config_name="config", overrides=list(overrides))
        except HydraException as e:  # an unknown key or group, a malformed override: one line, no traceback
            raise ConfigError(" ".join(str(e).split())) from None


def group_choice(overrides: list[str] | tuple[str, ...], group: str) -> str | None:
    """The option of config group ``group`` (e.g. "market") that ``overrides`` compose to."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        cfg = hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
    return cfg.hydra.runtime.choices.get(group)


@dataclass(frozen=True)
class SimSettings:
    """Monte Carlo size and numerics (from the ``sim`` group).

    Attributes:
        n_paths: number of paths.
        horizon_s: simulated time, seconds (``n_steps * dt``).
        dt: step, seconds.
        n_steps: ``horizon_s / dt``.
        seed: run seed.
        chunk_size: paths per compiled call (None: the simulator's default).
        n_trace: paths recorded in full for figures.
        dtype: "float32" or "float64".
        progress: show a progress bar.
        world_substeps: world steps per engine step (the world moves in steps of
            ``dt / world_substeps`` seconds; the engine keeps its cadence ``dt``).
    """

    n_paths: int
    horizon_s: float
    dt: float
    n_steps: int
    seed: int
    chunk_size: int | None
    n_trace: int
    dtype: str
    progress: bool = True
    world_substeps: int = 1

    def simulate_kwargs(self) -> dict:
        """Keyword arguments of :func:`mmsim.sim.simulate.simulate`."""
        import jax.numpy as jnp

        return dict(
            n_paths=self.n_paths,
            n_steps=self.n_steps,
            dt=self.dt,
            seed=self.seed,
            chunk_size=self.chunk_size,
            n_trace=self.n_trace,
            dtype=getattr(jnp, self.dtype),
            progress=self.progress,
            world_substeps=self.world_substeps,
        )


@dataclass(frozen=True)
class RiskSettings:
    """Risk-report thresholds (from the ``risk`` group).

    Attributes:
        drawdown_threshold: P(max drawdown > drawdown_threshold x initial equity) is reported.
        epsilon_liq: "P(liquidation) ~ 0" only when the Clopper-Pearson upper bound is <= this.
        ci_level: two-sided level of the Clopper-Pearson intervals.
        loss_threshold: P(final loss > loss_threshold x initial equity) is reported (the drain).
        estimator: how P(liquidation) is certified: "plain" (Clopper-Pearson on the run's paths),
            "is" (importance sampling in the tilted world) or "splitting" (multilevel splitting).
        importance: the "is" settings (n_paths, ce_iterations, ce_paths, elite_frac, bucket_s,
            against_position, score, tilt).
        splitting: the "splitting" settings (n_paths, replicates, levels, pilot_paths, stage_p).
    """

    drawdown_threshold: float
    epsilon_liq: float
    ci_level: float = 0.95
    loss_threshold: float = 0.2
    estimator: str = "plain"
    importance: dict = field(default_factory=dict)
    splitting: dict = field(default_factory=dict)

    @property
    def alpha(self) -> float:
        return 1.0 - self.ci_level


# ------------------------------------------------------------------------------------------------
# Helpers


def _plain(node: Any) -> Any:
    """A config node as plain Python (dicts, lists, scalars), interpolations resolved."""
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return node


def _value(v: Any) -> Any:
    """Config value > params leaf: lists become float64 arrays (numbers only), scalars stay;
    a string that spells a number (``inf``, YAML's ``.inf`` as a command-line override) becomes
    that float (any other string stays, and :func:`_make` refuses it)."""
    if isinstance(v, str):
        s = v.strip().lower()
        s = s.replace(".inf", "inf").replace(".nan", "nan") if s.lstrip("+-").startswith(".") else s
        try:
            return float(s)
        except ValueError:
            return v
    if isinstance(v, (list, tuple)):
        try:
            return np.asarray(v, dtype=float)
        except (TypeError, ValueError):
            return tuple(v)
    return v


def _fields(cls) -> dict:
    return {f.name: f for f in dataclasses.fields(cls)}


def _make(cls, values: dict | None, path: str, *, skip: tuple = (), extra: dict | None = None):
    """Build the params dataclass ``cls`` from the config mapping ``values`` at ``path``.

    Unknown keys and the class's own ``ValueError`` become :class:`ConfigError` naming ``path``.
    ``extra`` supplies (already built) fields; ``skip`` lists keys of ``values`` handled elsewhere.
    """
    values = dict(values or {})
    fields = _fields(cls)
    unknown = sorted(k for k in values if k not in fields and k not in skip)
    if unknown:
        raise ConfigError(
            f"{path}: unknown key(s) {unknown} for {cls.__name__}; valid keys: {sorted(set(fields) - set(extra or {}))}"
        )
    kwargs = {}
    for k, v in values.items():
        if k in skip:
            continue
        if v is None:  # null: the class default
            continue
        if fields[k].metadata.get("static"):
            kwargs[k] = _static(v, cls, k, path)
        else:
            kwargs[k] = _value(v)
            if isinstance(kwargs[k], (str, tuple)):  # a word, or a list holding one
                raise ConfigError(f"{path}.{k} = {v!r}: must be a number or a list of numbers (.inf for infinity)")
    kwargs.update(extra or {})
    try:
        return cls(**kwargs)
    except ValueError as e:
        raise ConfigError(f"{path}: {e}") from None
    except TypeError as e:
        raise ConfigError(f"{path}: {cls.__name__}: {e}") from None


def _static(v: Any, cls, name: str, path: str) -> Any:
    """Static (hashable) fields: ints stay ints, lists become tuples, floats that are integers
    become ints for integer defaults."""
    default = _fields(cls)[name].default
    if isinstance(v, list):
        return tuple(v)
    if isinstance(default, bool) or isinstance(v, bool):
        if not isinstance(v, bool):
            raise ConfigError(f"{path}.{name} = {v!r}: must be true or false")
        return v
    if isinstance(default, int) and isinstance(v, float):
        if v != int(v):
            raise ConfigError(f"{path}.{name} = {v!r}: must be an integer")
        return int(v)
    return v


def _require(cond: bool, path: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{path} {msg}" if msg.startswith("= ") else f"{path}: {msg}")


def _section(cfg, name: str) -> dict:
    node = cfg.get(name) if isinstance(cfg, (DictConfig, dict)) else None
    if node is None:
        raise ConfigError(f"config has no '{name}' section (is the '{name}' group in the defaults list?)")
    return _plain(node)


# ------------------------------------------------------------------------------------------------
# Sections


def sim_settings(cfg: DictConfig) -> SimSettings:
    """Validate the ``sim`` group."""
    s = _section(cfg, "sim")
    known = {"n_paths", "horizon_s", "dt_s", "seed", "chunk_size", "n_trace", "dtype", "progress", "world_substeps"}
    unknown = sorted(set(s) - known)
    _require(not unknown, "sim", f"unknown key(s) {unknown}; valid keys: {sorted(known)}")
    n_paths = s.get("n_paths")
    _require(
        isinstance(n_paths, int) and not isinstance(n_paths, bool) and n_paths >= 1,
        "sim.n_paths",
        f"= {n_paths!r}: must be a positive integer",
    )
    horizon = s.get("horizon_s")
    dt = s.get("dt_s")
    for name, v in (("horizon_s", horizon), ("dt_s", dt)):
        _require(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0,
            f"sim.{name}",
            f"= {v!r}: must be a positive number of seconds",
        )
    ratio = horizon / dt
    n_steps = int(round(ratio))
    _require(
        n_steps >= 1 and abs(ratio - n_steps) <= STEP_TOL * max(1.0, ratio),
        "sim.horizon_s",
        f"= {horizon!r} is not a whole number of steps of sim.dt_s = {dt!r} (ratio {ratio:.9g})",
    )
    seed = s.get("seed", 0)
    _require(
        isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0,
        "sim.seed",
        f"= {seed!r}: must be a non-negative integer",
    )
    chunk = s.get("chunk_size")
    _require(
        chunk is None or (isinstance(chunk, int) and not isinstance(chunk, bool) and chunk >= 1),
        "sim.chunk_size",
        f"= {chunk!r}: must be null or a positive integer",
    )
    n_trace = s.get("n_trace", 0)
    _require(
        isinstance(n_trace, int) and not isinstance(n_trace, bool) and n_trace >= 0,
        "sim.n_trace",
        f"= {n_trace!r}: must be a non-negative integer",
    )
    dtype = s.get("dtype", "float32")
    _require(dtype in DTYPES, "sim.dtype", f"= {dtype!r}: must be one of {DTYPES}")
    sub = s.get("world_substeps", 1)
    _require(
        isinstance(sub, int) and not isinstance(sub, bool) and sub >= 1,
        "sim.world_substeps",
        f"= {sub!r}: must be a positive integer (world steps per engine step)",
    )
    return SimSettings(
        n_paths=n_paths,
        horizon_s=float(horizon),
        dt=float(dt),
        n_steps=n_steps,
        seed=seed,
        chunk_size=chunk,
        n_trace=min(n_trace, n_paths),
        dtype=dtype,
        progress=bool(s.get("progress", True)),
        world_substeps=sub,
    )


def cpu_devices(cfg: DictConfig) -> int | None:
    """The ``cpu_devices`` key: None (one JAX CPU device per core) or a positive integer."""
    n = cfg.get("cpu_devices") if isinstance(cfg, (DictConfig, dict)) else None
    _require(
        n is None or (isinstance(n, int) and not isinstance(n, bool) and n >= 1),
        "cpu_devices",
        f"= {n!r}: must be null (one device per core) or a positive integer",
    )
    return n


def risk_settings(cfg: DictConfig) -> RiskSettings:
    """Validate the ``risk`` group."""
    r = _section(cfg, "risk")
    known = {"drawdown_threshold", "epsilon_liq", "ci_level", "loss_threshold", "estimator", "importance", "splitting"}
    unknown = sorted(set(r) - known)
    _require(not unknown, "risk", f"unknown key(s) {unknown}; valid keys: {sorted(known)}")
    d = r.get("drawdown_threshold")
    _require(
        isinstance(d, (int, float)) and not isinstance(d, bool) and math.isfinite(d) and d > 0,
        "risk.drawdown_threshold",
        f"= {d!r}: must be a positive fraction of the initial equity",
    )
    e = r.get("epsilon_liq")
    _require(
        isinstance(e, (int, float)) and not isinstance(e, bool) and 0 < e < 1,
        "risk.epsilon_liq",
        f"= {e!r}: must lie in (0, 1)",
    )
    lvl = r.get("ci_level", 0.95)
    _require(isinstance(lvl, (int, float)) and 0 < lvl < 1, "risk.ci_level", f"= {lvl!r}: must lie in (0, 1)")
    loss = r.get("loss_threshold", 0.2)
    _require(
        isinstance(loss, (int, float)) and not isinstance(loss, bool) and math.isfinite(loss) and loss > 0,
        "risk.loss_threshold",
        f"= {loss!r}: must be a positive fraction of the initial equity",
    )
    est = r.get("estimator", "plain")
    _require(est in ESTIMATORS, "risk.estimator", f"= {est!r}: must be one of {list(ESTIMATORS)}")
    imp = _plain(r.get("importance") or {})
    spl = _plain(r.get("splitting") or {})
    _check_keys(imp, "risk.importance", _IS_KEYS)
    _check_keys(spl, "risk.splitting", _SPLIT_KEYS)
    for block, d_ in (("risk.importance", imp), ("risk.splitting", spl)):
        for k in ("n_paths", "ce_iterations", "ce_paths", "replicates", "pilot_paths"):
            if k in d_:
                v = d_[k]
                low = 0 if k == "ce_iterations" else 2
                _require(
                    isinstance(v, int) and not isinstance(v, bool) and v >= low,
                    f"{block}.{k}",
                    f"= {v!r}: must be an integer >= {low}",
                )
    for block, k, d_ in (("risk.importance", "elite_frac", imp), ("risk.splitting", "stage_p", spl)):
        if k in d_:
            _require(
                isinstance(d_[k], (int, float)) and 0 < d_[k] < 1, f"{block}.{k}", f"= {d_[k]!r}: must lie in (0, 1)"
            )
    lv = spl.get("levels", "auto")
    _require(
        lv == "auto"
        or (
            isinstance(lv, list)
            and lv
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in lv)
            and all(b < a for a, b in zip(lv, lv[1:]))
            and lv[-1] > 1.0
        ),
        "risk.splitting.levels",
        f"= {lv!r}: must be 'auto' or a strictly decreasing list of margin ratios above 1",
    )
    b = imp.get("bucket_s", 0.0)
    _require(
        isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) and b >= 0,
        "risk.importance.bucket_s",
        f"= {b!r}: must be a number of seconds >= 0 (0: one tilt for the whole horizon)",
    )
    _require(
        isinstance(imp.get("against_position", False), bool),
        "risk.importance.against_position",
        f"= {imp.get('against_position')!r}: must be true or false",
    )
    from mmsim.sim.rare import CE_SCORES

    sc = imp.get("score", "margin_ratio")
    _require(sc in CE_SCORES, "risk.importance.score", f"= {sc!r}: must be one of {sorted(CE_SCORES)}")
    tilt = imp.get("tilt")
    if tilt is not None:
        from mmsim.world.tilt import TiltParams

        _require(isinstance(tilt, dict), "risk.importance.tilt", "must be null (cross-entropy) or a mapping")
        _make(TiltParams, tilt, "risk.importance.tilt")
    return RiskSettings(
        drawdown_threshold=float(d),
        epsilon_liq=float(e),
        ci_level=float(lvl),
        loss_threshold=float(loss),
        estimator=est,
        importance=imp,
        splitting=spl,
    )


#: How P(liquidation) is estimated (``risk.estimator``).
ESTIMATORS = ("plain", "is", "splitting")
_IS_KEYS = {"n_paths", "ce_iterations", "ce_paths", "elite_frac", "tilt", "bucket_s", "score", "against_position"}
_SPLIT_KEYS = {"n_paths", "replicates", "levels", "pilot_paths", "stage_p"}


def _check_keys(d: dict, path: str, known: set) -> None:
    unknown = sorted(set(d) - known)
    _require(not unknown, path, f"unknown key(s) {unknown}; valid keys: {sorted(known)}")


def task(cfg: DictConfig) -> str:
    t = cfg.get("task", "risk")
    _require(t in TASKS, "task", f"= {t!r}: must be one of {TASKS}")
    return t


def world_name(cfg: DictConfig) -> str:
    m = _section(cfg, "market")
    w = m.get("world", "market")
    _require(w in WORLDS, "market.world", f"= {w!r}: must be one of {WORLDS}")
    return w


def market_params(cfg: DictConfig) -> tuple[str, Any]:
    """``(world, params)``: :class:`~mmsim.world.market.MarketParams` or :class:`~mmsim.world.as2008.AS2008Params`."""
    m = _section(cfg, "market")
    world = world_name(cfg)
    if world == "as2008":
        from mmsim.world.as2008 import AS2008Params

        return world, _make(AS2008Params, m, "market", skip=("world", "asset_names"))

    from mmsim.world.market import MarketParams
    from mmsim.world.processes import adverse_selection as adv
    from mmsim.world.processes import book as bk
    from mmsim.world.processes import correlation as corr
    from mmsim.world.processes import funding as fund
    from mmsim.world.processes import liquidation as liq
    from mmsim.world.processes import order_flow as flow
    from mmsim.world.processes import price as px
    from mmsim.world.processes import queue as fl
    from mmsim.world.processes import spread as spr
    from mmsim.world.processes import volatility as vol

    blocks = {
        "price": px.PriceParams,
        "vol": vol.VolParams,
        "flow": flow.FlowParams,
        "spread": spr.SpreadParams,
        "adverse": adv.ASParams,
        "funding": fund.FundingParams,
        "liquidation": liq.LiqParams,
        "correlation": corr.CorrParams,
        "fills": fl.FillParams,
        "book": bk.BookParams,
    }
    n_assets = m.get("n_assets", 1)
    _require(
        isinstance(n_assets, int) and not isinstance(n_assets, bool) and n_assets >= 1,
        "market.n_assets",
        f"= {n_assets!r}: must be a positive integer",
    )
    built = {}
    for name, cls in blocks.items():
        sub = m.get(name)
        _require(sub is None or isinstance(sub, dict), f"market.{name}", "must be a mapping of field: value")
        if name == "correlation" and not sub:
            eye = np.eye(n_assets).tolist()
            sub = {"corr": eye, "corr_stress": eye}
        built[name] = _make(cls, sub, f"market.{name}")
    names = m.get("asset_names")
    _require(
        names is None or (isinstance(names, list) and len(names) == n_assets),
        "market.asset_names",
        f"= {names!r}: must be a list of {n_assets} names (one per asset) or null",
    )
    return world, _make(MarketParams, m, "market", skip=("world", "asset_names") + tuple(blocks), extra=built)


def account_config(cfg: DictConfig) -> dict:
    """The account block as a plain dict, with ``+params=best.yaml``'s account merged over it."""
    return _with_best(cfg, "account")


def account_params(cfg: DictConfig) -> Any:
    from mmsim.engine.account import AccountParams

    return _make(AccountParams, account_config(cfg), "account" + (" (+params)" if _params_file(cfg) else ""))


def policy_config(cfg: DictConfig) -> dict:
    """The policy block as a plain dict, with ``+params=best.yaml``'s policy merged over it."""
    return _with_best(cfg, "policy")


def _params_file(cfg):
    return cfg.get("params") if isinstance(cfg, (DictConfig, dict)) else None


def _with_best(cfg, block: str) -> dict:
    """Config block ``block`` as a plain dict, with the same block of ``+params`` merged over it."""
    out = _section(cfg, block)
    src = _params_file(cfg)
    if src:
        out = {**out, **(load_best(src).get(block) or {})}
    return out


def policy_params(cfg: DictConfig) -> Any:
    from mmsim.engine.policy import PolicyParams

    return _make(PolicyParams, policy_config(cfg), "policy" + (" (+params)" if _params_file(cfg) else ""))


_ESTIMATORS = (
    "price",
    "vol",
    "spread",
    "flow",
    "liquidation",
    "funding",
    "correlation",
    "inventory",
    "adverse",
    "queue",
)


def _estimator_classes() -> dict:
    from mmsim.engine.estimators import adverse_selection as e_adv
    from mmsim.engine.estimators import correlation as e_corr
    from mmsim.engine.estimators import funding as e_fund
    from mmsim.engine.estimators import inventory as e_inv
    from mmsim.engine.estimators import liquidation as e_liq
    from mmsim.engine.estimators import order_flow as e_flow
    from mmsim.engine.estimators import price as e_price
    from mmsim.engine.estimators import queue as e_queue
    from mmsim.engine.estimators import spread as e_spread
    from mmsim.engine.estimators import volatility as e_vol

    return {
        "price": e_price.PriceEstParams,
        "vol": e_vol.VolEstParams,
        "spread": e_spread.SpreadEstParams,
        "flow": e_flow.OrderFlowEstParams,
        "liquidation": e_liq.LiquidationEstParams,
        "funding": e_fund.FundingEstParams,
        "correlation": e_corr.CorrEstParams,
        "inventory": e_inv.InventoryEstParams,
        "adverse": e_adv.AdverseSelectionEstParams,
        "queue": e_queue.QueueEstParams,
    }


def market_priors(mp: Any, account: Any) -> dict:
    """Estimator priors taken from the world's parameters (the calibration the engine would load
    live): ``{estimator: {field: value}}``. Only fields whose shapes the estimators accept are
    given; per-regime arrays are passed through when they are ``(R,)``."""
    from mmsim.world.processes import volatility as vol

    f = lambda x: np.asarray(x, dtype=float)  # noqa: E731
    out: dict = {}
    theta = f(mp.vol.theta)
    kappa = f(mp.vol.kappa)
    normal = vol.NORMAL if theta.shape[0] > vol.NORMAL else 0
    v: dict = {"long_run_var": theta[normal]}
    if theta.shape[0] == 4 and theta.ndim == 1:  # the estimator classifies four regimes
        v["regime_theta"] = theta
        v["regime_kappa"] = kappa
    out["vol"] = v
    out["flow"] = {k: f(getattr(mp.flow, k)) for k in ("mu_buy", "mu_sell", "alpha_buy", "alpha_sell", "gamma", "beta")}
    mu = f(mp.liquidation.mu_long) + f(mp.liquidation.mu_short)
    if np.all(mu > 0):
        out["liquidation"] = {
            "mu": mu,
            "alpha": f(mp.liquidation.alpha) + f(mp.liquidation.alpha_cross),
            "beta": f(mp.liquidation.beta),
        }
    rm = f(mp.spread.regime_mult)
    sp = {"theta0": f(mp.spread.theta0), "beta_vol": f(mp.spread.beta_vol)}
    if rm.ndim == 1 and rm.shape[0] == 4:
        sp["regime_mult"] = rm
    out["spread"] = sp
    out["queue"] = {
        "tick": f(mp.spread.tick),
        "depth_per_tick": f(mp.fills.depth_per_tick),
        "cancel_rate": f(mp.fills.cancel_rate),
    }
    out["funding"] = {"interval_s": float(mp.funding.interval_s), "mean_reversion": f(mp.funding.kappa)}
    out["inventory"] = {"max_position": f(account.max_inventory)}
    return out


def engine_params(cfg: DictConfig, mp: Any = None, world: str | None = None) -> Any:
    """:class:`~mmsim.engine.EngineParams` from the ``engine``, ``account`` and ``policy`` groups."""
    from mmsim.engine import EngineParams

    if mp is None:
        world, mp = market_params(cfg)
    e = _section(cfg, "engine")
    known = {"warmup_s", "lite", "tick", "volume_half_life_s", "priors_from_market", *_ESTIMATORS}
    unknown = sorted(set(e) - known)
    _require(not unknown, "engine", f"unknown key(s) {unknown}; valid keys: {sorted(known)}")
    account = account_params(cfg)
    policy = policy_params(cfg)
    n_assets = mp.n_assets
    classes = _estimator_classes()
    priors = market_priors(mp, account) if (e.get("priors_from_market", False) and world == "market") else {}
    extra = {"policy": policy, "account": account}
    for name in _ESTIMATORS:
        sub = e.get(name) or {}
        _require(isinstance(sub, dict), f"engine.{name}", "must be a mapping of field: value")
        merged = {**priors.get(name, {}), **{k: v for k, v in sub.items() if v is not None}}
        extra[name] = _make(
            classes[name], merged, f"engine.{name}" + (" (with market priors)" if name in priors else "")
        )
    tick = e.get("tick")
    if tick is None:
        tick = 0.0 if world == "as2008" else _value(np.asarray(mp.spread.tick, dtype=float))
    vals = {
        "warmup_s": e.get("warmup_s"),
        "tick": tick,
        "volume_half_life_s": e.get("volume_half_life_s"),
        "lite": bool(e.get("lite", False)),
        "n_assets": n_assets,
    }
    return _make(EngineParams, vals, "engine", extra=extra)


#: Market fields whose leading axis is not the asset axis: field -> the shapes allowed, with A the
#: asset count and R the number of volatility regimes.
_MARKET_SHAPES = {
    ("vol", "kappa"): ("R", "RA"),
    ("vol", "theta"): ("R", "RA"),
    ("vol", "xi"): ("R", "RA"),
    ("vol", "generator"): ("RR",),
    ("spread", "regime_mult"): ("R", "AR"),
    ("correlation", "corr"): ("AA",),
    ("correlation", "corr_stress"): ("AA",),
}


def _check_market_assets(mp) -> None:
    """Every per-asset field of the market is a scalar or has the market's asset count."""
    a, r = mp.n_assets, int(np.shape(mp.vol.generator)[0])
    dims = {"A": a, "R": r}
    for block in (
        "price",
        "vol",
        "flow",
        "spread",
        "adverse",
        "funding",
        "liquidation",
        "correlation",
        "fills",
        "book",
    ):
        obj = getattr(mp, block)
        for fld in dataclasses.fields(obj):
            if fld.metadata.get("static"):
                continue
            shape = np.shape(getattr(obj, fld.name))
            allowed = [tuple(dims[c] for c in pat) for pat in _MARKET_SHAPES.get((block, fld.name), ())]
            if (block, fld.name) not in _MARKET_SHAPES:
                allowed = [(), (a,)]
            _require(
                shape in allowed,
                f"market.{block}.{fld.name}",
                f"has shape {shape}; with n_assets = {a} and {r} regimes it must have one of the shapes {allowed}",
            )
    _require(
        np.shape(mp.shock_return) in ((), (a,)),
        "market.shock_return",
        f"has shape {np.shape(mp.shock_return)}: must be a scalar or ({a},)",
    )


def _check_assets(mp, ep) -> None:
    """Per-asset arrays of the account and policy must have the market's asset count."""
    a = mp.n_assets
    for path, obj in (("account", ep.account), ("policy", ep.policy)):
        for fld in dataclasses.fields(obj):
            if fld.metadata.get("static") or fld.metadata.get("per_asset") is False:  # e.g. a list of times
                continue
            shape = np.shape(getattr(obj, fld.name))
            _require(
                shape in ((), (a,)),
                f"{path}.{fld.name}",
                f"has shape {shape}: must be a scalar or one value per asset ({a},)",
            )
    shape = np.shape(ep.tick)
    _require(shape in ((), (a,)), "engine.tick", f"has shape {shape}: must be a scalar or ({a},)")


def _sized_adverse_slots(cfg, ep, dt: float):
    """``ep`` with the adverse-selection estimator's pending slots sized for steps of ``dt``
    seconds, unless ``engine.adverse.n_slots`` is given. A fill is measured ``horizon_s`` after
    it, at the first step at or after that time, and each step records at most one fill event per
    side, so at most ``ceil(horizon_s / dt)`` measurements are pending (one more is kept against
    rounding of the step times): no measurement is ever dropped, and no slot is carried that can
    never be used (each slot is state of every path, updated every step). Live trading, whose
    observations are irregular, keeps the estimator's default."""
    from mmsim.engine.estimators import adverse_selection as e_adv

    given = (_section(cfg, "engine").get("adverse") or {}).get("n_slots")
    if given is not None or ep.lite:  # lite: the estimator does not run
        return ep
    horizon = float(np.max(np.asarray(ep.adverse.horizon_s, dtype=float)))
    need = int(math.ceil(horizon / dt - 1e-9)) + 1
    slots = min(e_adv.MAX_SLOTS, max(1, need))
    return dataclasses.replace(ep, adverse=dataclasses.replace(ep.adverse, n_slots=slots))


#: A per-step jump count may be truncated with at most this probability before a run says so.
JUMP_TRUNCATION_TOL = 1e-6


def jump_truncation_warnings(mp: Any, dt: float) -> list[str]:
    """What the per-step jump caps of the price and spread processes cut at step ``dt`` seconds:
    a sentence for each process where ``P(N > max_jumps)`` for ``N ~ Poisson(jump_rate dt)``
    exceeds :data:`JUMP_TRUNCATION_TOL`, naming the field and the cap that would keep it below."""
    from scipy import stats

    out = []
    # The tick book does not use the spread process: its caps cut nothing that is used.
    ticked = getattr(getattr(mp, "book", None), "model", None) == "tick"
    for block in ("price",) if ticked else ("price", "spread"):
        p = getattr(mp, block)
        lam_dt = float(np.max(np.asarray(p.jump_rate, dtype=float))) * dt
        if lam_dt <= 0:
            continue
        cut = float(stats.poisson.sf(p.max_jumps, lam_dt))
        if cut > JUMP_TRUNCATION_TOL:
            need = int(stats.poisson.isf(JUMP_TRUNCATION_TOL, lam_dt)) + 1
            kept = sum(float(stats.poisson.sf(j, lam_dt)) for j in range(p.max_jumps))  # E[min(N, cap)]
            out.append(
                f"market.{block}.max_jumps = {p.max_jumps} truncates the jump count per step with probability "
                f"{cut:.2g} (Poisson mean {lam_dt:.3g} at dt = {dt:g} s: the mean number of jumps is "
                f"{1 - kept / lam_dt:.2%} low); market.{block}.max_jumps={need} keeps it below {JUMP_TRUNCATION_TOL:g}"
            )
    return out


def market_differences(best: dict, cfg: DictConfig) -> list[str]:
    """The ``market`` blocks in which a ``best.yaml`` (its ``market`` mapping) differs from the
    configured market; empty when it records none or the same one."""
    made_for = best.get("market")
    if not (isinstance(made_for, dict) and made_for):
        return []
    here = _section(cfg, "market")
    return sorted(k for k in set(made_for) | set(here) if made_for.get(k) != here.get(k))


def _check_params_market(cfg: DictConfig) -> None:
    """A ``+params`` file certified for another market than the configured one is refused (its
    validation holds only where it was made), unless ``+params_force=true``."""
    src = _params_file(cfg)
    if not src or cfg.get("params_force"):
        return
    diff = market_differences(load_best(src), cfg)
    if diff:
        raise ConfigError(
            f"params = {src!r} was optimised and validated for another market (differs in {diff}); select the "
            "same experiment and market overrides, or add +params_force=true to run it here anyway"
        )


def _check_memory(sim: SimSettings, n_assets: int) -> None:
    """Refuse, before anything compiles, a run whose traces need more memory than the machine has,
    or whose step count exceeds the int32 step index (a step of 1e-9 s over an hour)."""
    from mmsim.sim.simulate import MAX_STEPS, machine_memory, memory_estimate

    _require(
        sim.n_steps <= MAX_STEPS,
        "sim.horizon_s / sim.dt_s",
        f"= {sim.n_steps:,} steps: at most {MAX_STEPS:,} (raise sim.dt_s or shorten the horizon)",
    )
    need = memory_estimate(sim.n_steps, sim.n_trace, n_assets, 8 if sim.dtype == "float64" else 4)
    have = machine_memory()
    _require(
        have is None or need <= 0.5 * have,
        "sim",
        f"{sim.n_steps:,} steps with {sim.n_trace} traced paths need about {need / 2**30:,.1f} GiB, more than "
        f"half of this machine's {(have or 0) / 2**30:,.1f} GiB: shorten sim.horizon_s, raise sim.dt_s or "
        "lower sim.n_trace",
    )


def build(cfg: DictConfig) -> tuple[str, Any, Any, SimSettings]:
    """Config > ``(world, market_params, engine_params, sim_settings)``, everything validated on
    the host (see the module docstring). Raises :class:`ConfigError`."""
    task(cfg)
    sim = sim_settings(cfg)
    rs = risk_settings(cfg)
    world, mp = market_params(cfg)
    _require(
        rs.estimator != "is" or world == "market",
        "risk.estimator",
        f"= is needs the market world (its tilt); world {world!r} has none: use splitting or plain",
    )
    ep = engine_params(cfg, mp, world)
    _check_assets(mp, ep)
    ep = _sized_adverse_slots(cfg, ep, sim.dt)
    if not ep.price.returns:
        needs_sigma = ep.policy.kind in ("as2008", "glft")
        _require(
            ep.lite
            and (
                ep.policy.kind == "symmetric" or (needs_sigma and bool(np.all(np.asarray(ep.policy.sigma_price) > 0)))
            ),
            "engine.price.returns",
            "= false keeps only the mid: it needs engine.lite and a policy that is given its volatility "
            "(kind as2008 or glft with policy.sigma_price > 0, or symmetric); set engine.price.returns=true "
            "for the estimate",
        )
    _check_memory(sim, ep.n_assets)
    _check_params_market(cfg)
    if world == "as2008":
        _require(
            ep.lite,
            "engine.lite",
            "must be true in the as2008 world (it has no flow, spread or "
            "liquidation observations for the estimators); use engine=lite",
        )
        _require(
            bool(np.all(np.asarray(ep.policy.event_flatten) == 0)),
            "policy.event_flatten",
            "must be 0 in the as2008 world: the paper's market has no book to take from (post-only)",
        )
    if world == "market":
        _check_market_assets(mp)
        _require(
            not ep.lite or ep.policy.kind != "spec",
            "engine.lite",
            "the spec policy needs the full engine (lite skips its estimators)",
        )
        interval = float(mp.funding.interval_s)
        _require(sim.dt <= interval, "sim.dt_s", f"= {sim.dt} must not exceed market.funding.interval_s = {interval}")
    return world, mp, ep, sim


# ------------------------------------------------------------------------------------------------
# best.yaml


def load_best(path: str | os.PathLike) -> dict:
    """Read an optimiser's ``best.yaml`` and check its shape: a mapping with a ``policy`` mapping
    (fields of :class:`~mmsim.engine.policy.PolicyParams`) and optionally an ``account`` mapping (fields
    of :class:`~mmsim.engine.account.AccountParams`), ``market``, ``constraints``, ``validation`` and
    ``feasible``. Returns it as plain Python."""
    p = Path(str(path)).expanduser()
    if not p.is_file():
        raise ConfigError(f"params = {str(path)!r}: no such file (give the path of a best.yaml)")
    _require(p.stat().st_size <= MAX_PARAMS_BYTES, f"params ({p})", f"is larger than {MAX_PARAMS_BYTES:,} bytes")
    try:
        text = p.read_text(encoding="utf-8")
        n_alias = sum(isinstance(e, yaml.AliasEvent) for e in yaml.parse(text, Loader=yaml.SafeLoader))
    except Exception as e:  # noqa: BLE001 (any YAML or encoding error is a config error)
        raise ConfigError(f"params = {str(p)!r}: not readable as YAML: {e}") from None
    _require(
        n_alias <= MAX_PARAMS_ALIASES, f"params ({p})", f"has {n_alias} YAML aliases (at most {MAX_PARAMS_ALIASES})"
    )
    try:
        best = yaml.safe_load(text)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"params = {str(p)!r}: not readable as YAML: {e}") from None
    _require(isinstance(best, dict), f"params ({p})", "must be a mapping with a 'policy' key")
    feasible = best.get("feasible")
    _require(
        feasible is None or isinstance(feasible, bool),
        f"params ({p}).feasible",
        f"= {feasible!r}: must be true or false",
    )
    unknown = sorted(set(best) - set(BEST_KEYS))
    _require(not unknown, f"params ({p})", f"unknown top-level key(s) {unknown}; expected {list(BEST_KEYS)}")
    pol = best.get("policy")
    _require(isinstance(pol, dict) and pol, f"params ({p}).policy", "must be a non-empty mapping of policy fields")
    from mmsim.engine.policy import PolicyParams

    unknown = sorted(set(pol) - set(_fields(PolicyParams)))
    _require(
        not unknown, f"params ({p}).policy", f"unknown key(s) {unknown}; valid keys: {sorted(_fields(PolicyParams))}"
    )
    acc = best.get("account")
    if acc is not None:
        from mmsim.engine.account import AccountParams

        _require(isinstance(acc, dict), f"params ({p}).account", "must be a mapping of account fields")
        unknown = sorted(set(acc) - set(_fields(AccountParams)))
        _require(
            not unknown,
            f"params ({p}).account",
            f"unknown key(s) {unknown}; valid keys: {sorted(_fields(AccountParams))}",
        )
    return best


def merged_params_cfg(cfg: DictConfig) -> DictConfig:
    """The config with ``+params``'s policy and account merged in (what was actually run), for
    saving."""
    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    if _params_file(cfg):
        OmegaConf.set_struct(out, False)
        out.policy = OmegaConf.create(policy_config(cfg))
        out.account = OmegaConf.create(account_config(cfg))
    return out
