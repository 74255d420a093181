"""The exchange's fill rule for one resting limit order: the one function that fills our quotes in
the simulated tick book (:mod:`mmsim.world.processes.book`) and in the paper gateway of a replay or
a live session (:mod:`mmsim.live.paper`).

A resting order waits behind the base units that were at its price when it arrived (it joins the
back of the queue), moves up when orders ahead of it execute or cancel, and fills only from
aggressive volume at its price beyond the queue ahead, or in full when the price is traded through
(aggressors executed at a worse price than ours, so every order at our price went first).
Partly filled orders stay first in line. Quantities are base units; the functions take the array
namespace (``numpy`` on the host, ``jax.numpy`` inside a compiled step) so both worlds run the same
arithmetic, elementwise on scalars or on arrays of any shape.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def queue_on_arrival(ahead_kept: Any, same_order: Any, level_qty: Any, xp: Any = np) -> Any:
    """Base units ahead of our order after it is (re)sent: ``ahead_kept`` where it is the same
    order as before (``same_order``: same price, still resting), else ``level_qty``, the base
    units already resting at its price (0 for a price inside the spread, where it is first in
    line; ``inf`` where the depth is unknown, which then never fills but by a trade-through)."""
    return xp.where(same_order, ahead_kept, level_qty)


def within_level(ahead: Any, level_qty: Any, xp: Any = np) -> Any:
    """The queue ahead bounded by what its level shows now: the orders ahead of ours are among the
    level's public size, so when that size falls below our place in line (cancellations, or
    executions we did not see), they have gone. An upper bound on the true queue ahead (the
    orders behind ours may have been the ones to leave)."""
    return xp.minimum(ahead, level_qty)


def after_cancels(ahead: Any, kept_fraction: Any) -> Any:
    """The queue ahead after cancellations, spread uniformly over the queue: each order ahead of
    ours cancels with the probability that one resting at our level does over the interval, so
    the expected queue ahead shrinks by ``kept_fraction`` (in [0, 1]) like the level itself."""
    return ahead * kept_fraction


def fill(size: Any, ahead: Any, traded_at: Any, traded_through: Any, xp: Any = np) -> tuple[Any, Any]:
    """Fill one resting order of ``size`` base units over one interval.

    Args:
        size: our order's remaining size, base units (0 where none rests).
        ahead: base units ahead of it in its price's queue at the start of the interval.
        traded_at: aggressive volume executed at our price during the interval, base units.
        traded_through: True where aggressors executed at a worse price than ours.

    Returns ``(filled, ahead_after)``: base units filled (in [0, size]) and the queue ahead of
    what rests afterwards (0 once part of it has filled: the rest is first in line).
    """
    reach = xp.maximum(traded_at - ahead, 0.0)
    filled = xp.where(traded_through, size, xp.minimum(reach, size))
    ahead_after = xp.where(filled > 0, 0.0, xp.maximum(ahead - traded_at, 0.0))
    return filled, ahead_after
