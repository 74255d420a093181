"""The one fill rule (mmsim.exchange) on hand-made intervals, identical in numpy and in jax."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from mmsim import exchange

# (size, ahead, traded_at, through) -> (filled, ahead after)
CASES = [
    ((0.01, 2.0, 1.5, False), (0.0, 0.5)),  # the queue ahead absorbs the volume
    ((0.01, 2.0, 2.005, False), (0.005, 0.0)),  # part fills: the rest is first in line
    ((0.01, 2.0, 3.0, False), (0.01, 0.0)),  # enough beyond the queue: full
    ((0.01, 2.0, 0.0, True), (0.01, 0.0)),  # traded through: full whatever traded at our price
    ((0.01, 0.0, 0.004, False), (0.004, 0.0)),  # first in line
    ((0.01, np.inf, 5.0, False), (0.0, np.inf)),  # unknown depth ahead: only a trade-through fills
    ((0.0, 1.0, 5.0, False), (0.0, 0.0)),  # nothing resting
]


@pytest.mark.parametrize(("args", "expect"), CASES)
def test_fill_cases(args, expect):
    for xp in (np, jnp):
        filled, ahead = exchange.fill(*args, xp=xp)
        np.testing.assert_allclose([float(filled), float(ahead)], expect, rtol=1e-12, atol=1e-12)


def test_vectorised_equals_scalar_and_numpy_equals_jax():
    rs = np.random.default_rng(0)
    n = 1000
    size = rs.uniform(0, 1, n)
    ahead = rs.exponential(2.0, n)
    traded = rs.exponential(2.0, n) * (rs.uniform(size=n) < 0.7)
    through = rs.uniform(size=n) < 0.1
    f_np, a_np = exchange.fill(size, ahead, traded, through)
    f_j, a_j = exchange.fill(jnp.asarray(size), jnp.asarray(ahead), jnp.asarray(traded), jnp.asarray(through), xp=jnp)
    np.testing.assert_allclose(np.asarray(f_j), f_np, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(a_j), a_np, rtol=1e-12)
    for i in range(0, n, 97):
        f, a = exchange.fill(size[i], ahead[i], traded[i], through[i])
        assert float(f) == f_np[i] and float(a) == a_np[i]
    assert np.all((f_np >= 0) & (f_np <= size))


def test_queue_on_arrival_and_cancels():
    assert float(exchange.queue_on_arrival(0.3, True, 5.0)) == 0.3  # kept its place
    assert float(exchange.queue_on_arrival(0.3, False, 5.0)) == 5.0  # a new order joins the back
    assert float(exchange.after_cancels(4.0, 0.25)) == 1.0
