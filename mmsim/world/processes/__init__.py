"""The world side of the spec's stochastic processes, one module per process.

Every module has the same contract:

* ``<Name>Params`` — a frozen pytree dataclass, validated on construction (``ValueError`` naming
  the field, the value and the rule); per-asset fields broadcast against the asset axis.
* ``<Name>State`` / ``<Name>Info`` — NamedTuples; arrays carry a leading asset axis ``(A,)``.
* ``init(params, n_assets, dtype) -> State``.
* ``step(key, state, params, dt, *drivers) -> (State, Info)`` for one path and one step:
  ``key`` is an :mod:`mmsim.rng` key, ``dt`` is in seconds, and the drivers are what the process
  needs from the others (passed as arguments: processes never import each other;
  :mod:`mmsim.world.market` wires them).

Nothing here is jitted or vmapped: the simulator does that once, at the top.
"""
