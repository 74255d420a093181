"""``python -m mmsim.run experiment=...``: the Hydra entry point. It composes ``conf/config.yaml``
with the command-line overrides and hands the config to :func:`mmsim.tasks.run_task`; after a
multirun it writes ``sweep_summary.{md,csv,png}``.

Examples::

    python -m mmsim.run experiment=cascade_stress
    python -m mmsim.run experiment=baseline sim.n_paths=20000 account.leverage=50
    python -m mmsim.run -m experiment=baseline policy.gamma=0.005,0.01,0.02   # a sweep
    python -m mmsim.run experiment=baseline +params=outputs/optimize/best.yaml"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from mmsim import config as mcfg
from mmsim import report
from mmsim.tasks import run_task

try:  # Hydra's callback base class (hydra-core is a dependency; keep the import soft for tooling)
    from hydra.experimental.callback import Callback as _HydraCallback
except Exception:  # noqa: BLE001
    _HydraCallback = object


class SweepSummaryCallback(_HydraCallback):
    """Hydra callback: after a multirun, write ``sweep_summary.{md,csv,png}`` into the sweep dir."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            files = report.write_sweep_summary(Path(config.hydra.sweep.dir))
            if files:
                print(f"sweep summary: {files[0]}", flush=True)
        except Exception as e:  # noqa: BLE001 (a summary must never fail the sweep)
            print(f"warning: sweep summary not written: {e}", file=sys.stderr)


def mark_failed(out_dir: Path, why: str) -> None:
    """Leave a ``FAILED`` file (the reason) in a run directory whose run did not finish."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "FAILED").write_text(why.rstrip() + "\n")
    except OSError:
        pass


def _hydra_main():
    import hydra
    from hydra.core.hydra_config import HydraConfig

    # The package's conf/ (or $MMSIM_CONF), as an absolute path so that the entry point works
    # whether it is run as a script, a module, from mmsim.cli or from an installed wheel.
    conf = str(mcfg.conf_dir())

    @hydra.main(config_path=conf, config_name="config", version_base=None)
    def main(cfg: DictConfig) -> float | None:
        out_dir = Path(HydraConfig.get().runtime.output_dir)
        try:
            m = run_task(cfg, out_dir)
        except mcfg.ConfigError as e:
            mark_failed(out_dir, f"configuration error: {e}")
            print(f"mmsim: configuration error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        except BaseException as e:  # the outputs of a run that did not finish must not look current
            mark_failed(out_dir, f"{type(e).__name__}: {e}")
            raise
        pnl = m.get("pnl", {}).get("mean") if isinstance(m.get("pnl"), dict) else None
        return None if pnl is None else float(pnl)

    return main


def main() -> None:
    """Console entry: ``python -m mmsim.run [hydra overrides]``."""
    if any(a in ("-h", "--help") for a in sys.argv[1:]):
        from mmsim import helptext

        print(helptext.command_help("run", mcfg.conf_dir()))
        return
    _hydra_main()()


if __name__ == "__main__":
    main()
