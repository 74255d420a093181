"""The ``--help`` of each command, written from the configuration itself: what the command does,
the config groups and their options, the experiments with their one-line descriptions, and the
main options with their units (the YAML comments beside them)."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

#: What each command does (one paragraph) and its usage line.
COMMANDS = {
    "run": (
        "mmsim run [overrides ...]   (= python -m mmsim.run [overrides ...]; -m for a sweep)",
        "Simulate the configured market and quoting policy over many paths and write the evidence: "
        "metrics.json, report.md, figures, paths.parquet (one row per path) and the resolved config, in "
        "outputs/<name>/<time>/. P(liquidation) is reported with its exact Clopper-Pearson interval and is "
        "only called ~0 from the interval's upper end.",
    ),
    "optimize": (
        "mmsim optimize [out_dir=DIR] [overrides ...]",
        "Optimise the policy's parameters (gamma first) to maximise the PnL objective subject to "
        "P(liquidation) <= epsilon_liq and P(max drawdown > x) <= epsilon_dd, validate the result on fresh "
        "paths and write best.yaml (run it with `mmsim run +params=best.yaml` or `mmsim live --params "
        "best.yaml`). Default experiment: optimize_gamma.",
    ),
}
#: Options worth naming in a help page: config key -> (file under conf/, key in that file).
MAIN_OPTIONS = (
    ("sim.n_paths", "sim/default.yaml", "n_paths"),
    ("sim.horizon_s", "sim/default.yaml", "horizon_s"),
    ("sim.dt_s", "sim/default.yaml", "dt_s"),
    ("sim.world_substeps", "sim/default.yaml", "world_substeps"),
    ("market.book.model", "market/btcusdt.yaml", "book.model"),
    ("sim.seed", "sim/default.yaml", "seed"),
    ("sim.dtype", "sim/default.yaml", "dtype"),
    ("account.leverage", "account/binance_vip0.yaml", "leverage"),
    ("account.initial_equity", "account/binance_vip0.yaml", "initial_equity"),
    ("policy.gamma", "policy/spec.yaml", "gamma"),
    ("policy.horizon_s", "policy/spec.yaml", "horizon_s"),
    ("risk.epsilon_liq", "risk/default.yaml", "epsilon_liq"),
    ("risk.drawdown_threshold", "risk/default.yaml", "drawdown_threshold"),
)
_SKIP_GROUPS = ("hydra", "local", "experiment")


def _first_comment(path: Path) -> str:
    """The first comment line of a YAML file that says something (not a Hydra directive)."""
    for line in path.read_text().splitlines():
        s = line.strip()
        if s.startswith("#") and "@package" not in s and s.strip("# "):
            return s.lstrip("# ").strip()
    return ""


def _description(path: Path) -> str:
    """An experiment's ``description:`` (folded over lines), else its first comment line."""
    text = path.read_text()
    m = re.search(r"^description:\s*>-?\s*\n((?:[ \t]+.*\n?)+)", text, re.M)
    if m:
        return " ".join(line.strip() for line in m.group(1).splitlines())
    return _first_comment(path)


def _option(conf: Path, rel: str, key: str) -> tuple[str, str]:
    """The default value and the comment of ``key`` in ``conf/rel`` (``block.key``: ``key``
    indented under the top-level ``block:``)."""
    block, _, key = key.rpartition(".")
    inside = not block
    for line in (conf / rel).read_text().splitlines():
        if block and re.match(r"^\S", line):
            inside = line.startswith(f"{block}:")
            continue
        indent = r"\s+" if block else ""
        m = re.match(rf"^{indent}{re.escape(key)}:\s*([^#]*?)\s*(?:#\s*(.*))?$", line)
        if inside and m:
            return m.group(1), (m.group(2) or "").strip()
    return "", ""


def _short(text: str, n: int) -> str:
    """``text`` cut at a word boundary to at most ``n`` characters (an ellipsis marks the cut)."""
    if len(text) <= n:
        return text
    return text[: n - 1].rsplit(" ", 1)[0].rstrip(",;:") + " …"


def _wrap(text: str, indent: str) -> str:
    return textwrap.fill(text, 100, initial_indent=indent, subsequent_indent=indent)


def command_help(command: str, conf: Path) -> str:
    """The help page of ``command`` ("run" or "optimize") from the config directory ``conf``."""
    usage, what = COMMANDS[command]
    out = [f"usage: {usage}", "", _wrap(what, ""), "", "config groups (choose one with group=option):"]
    for d in sorted(p for p in conf.iterdir() if p.is_dir() and p.name not in _SKIP_GROUPS):
        out.append(f"  {d.name}/")
        for f in sorted(d.glob("*.yaml")):
            out.append(f"    {f.stem:18s} {_short(_first_comment(f), 78)}")
    out += ["", "experiments (experiment=NAME; each sets the groups and overrides above):"]
    for f in sorted((conf / "experiment").glob("*.yaml")):
        out.append(f"  {f.stem}")
        out.append(_wrap(_description(f), "      "))
    out += ["", "main options (key=value; units in the comment; every config key can be overridden):"]
    for name, rel, key in MAIN_OPTIONS:
        value, comment = _option(conf, rel, key)
        out.append(f"  {name + '=' + value:34s} {_short(comment, 64)}")
    out += ["", "examples:"]
    if command == "run":
        out += [
            "  mmsim run experiment=cascade_stress",
            "  mmsim run experiment=cascade_stress sim.n_paths=100000 account.leverage=20",
            "  mmsim run -m experiment=baseline policy.gamma=0.005,0.01,0.02   # a sweep, summarised",
            "  mmsim run experiment=baseline +params=outputs/optimize_gamma/<time>/best.yaml",
        ]
    else:
        out += ["  mmsim optimize", "  mmsim optimize optimize.epsilon_liq=1e-4 out_dir=out/opt"]
    out += ["", f"configuration: {conf} (MMSIM_CONF overrides it); Hydra's own help: --hydra-help"]
    return "\n".join(out)
