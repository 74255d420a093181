"""The engine face of each process: online estimators updated from :class:`~mmsim.observation.Observation`.

Every module has the same contract:

* ``<Name>EstParams`` — a validated frozen pytree dataclass (half-lives in seconds, thresholds).
* ``<Name>Est`` — a NamedTuple state, O(1) per path and asset (leading asset axis ``(A,)``).
* ``init(params, n_assets, dtype) -> state`` and ``update(params, state, obs, *drivers) -> state``:
  pure, no key, no Python control flow on values; a part of the observation whose validity mask is
  off leaves the state as it was. Drivers are other estimators' outputs, passed by the engine.

The spec's windows (1 min, 5 min, 1 h ring buffers, VecDeques) are replaced by exponentially
weighted equivalents with a documented half-life: in Monte Carlo every byte of engine state is
multiplied by the number of paths. An EWMA with time constant tau has mean age tau and an effective
sample of 2 tau / dt observations, both equal to those of a flat window of length W when
tau = W / 2; the helpers below use that mapping (half-life = (W / 2) ln 2).
"""
