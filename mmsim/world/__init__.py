"""The simulated worlds the engine can quote in, and their registry.

A world is a module with the same face: ``init(params, dtype) -> state``, ``observe(state, params,
takes) -> Observation`` (what the engine sees at t = 0), ``step(key, state, params, dt, quote) ->
(state, Observation, info)`` (one path, one step of ``dt`` seconds), ``truth(info, n_assets,
dtype) -> (regime, liquidation intensity per second)`` (ground truth for figures; ``info`` None at
t = 0) and ``OBS_FIELDS`` (the observation fields it sets, or None for all). The simulator looks a
world up here by name and never names one itself. A world never imports the engine: the two speak
only through :mod:`mmsim.observation`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

#: The registered worlds: the full market of every process, and the Avellaneda-Stoikov (2008) world.
WORLDS = ("market", "as2008")


def get(name: str) -> ModuleType:
    """The world module registered as ``name`` (``ValueError`` naming the known ones otherwise)."""
    if name not in WORLDS:
        raise ValueError(f"world = {name!r}: must be one of {WORLDS}")
    return importlib.import_module(f"mmsim.world.{name}")
