"""The volatility regimes' one vocabulary, shared by the world, the engine, the fits and the
reports: their names, the volatility-ratio thresholds that separate them (ratios of the current
volatility to its long-run level, dimensionless) and the spread multipliers the spec gives each."""

from __future__ import annotations

#: Regime names, from the calmest; a regime index r in 0 .. R-1 names ``REGIME_NAMES[r]``.
REGIME_NAMES = ("low", "normal", "high", "extreme")
#: Boundaries between consecutive regimes, as ratios sigma / sigma_long_run (spec Part 2).
REGIME_THRESHOLDS = (0.5, 1.5, 3.0)
#: Spread multipliers of the regimes (spec Part 2): the fair spread is scaled by these.
REGIME_SPREAD_MULT = (0.8, 1.0, 1.5, 3.0)


def name(r: int) -> str:
    """The name of regime index ``r`` (``"regime r"`` beyond the named ones, ``"-"`` for -1: none)."""
    if r < 0:
        return "-"
    return REGIME_NAMES[r] if r < len(REGIME_NAMES) else f"regime {r}"
