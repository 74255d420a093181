"""The market maker: estimators ▸ account ▸ policy, one pure step shared by simulation, replay and
live. :func:`step` and :func:`init` live in :mod:`mmsim.engine.core`; they are re-exported here so
that ``from mmsim import engine; engine.step(...)`` is the one call every world and feed makes."""

from mmsim.engine.core import (
    PNL_COMPONENTS,
    EngineInfo,
    EngineParams,
    EngineState,
    explain_step,
    init,
    step,
)

__all__ = ["PNL_COMPONENTS", "EngineInfo", "EngineParams", "EngineState", "explain_step", "init", "step"]
