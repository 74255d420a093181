"""The element-by-element reductions of :mod:`mmsim._small` against jax.numpy's."""

import jax
import jax.numpy as jnp
import numpy as np

from mmsim import _small


def test_reductions_match_jax_numpy():
    g = np.random.default_rng(3)
    x = g.normal(size=(5, 3, 8))
    x[0, 0, [2, 6]] = -9.0  # a tie for the minimum: the first index wins
    b = x > 0.3
    np.testing.assert_allclose(_small.sum_last(jnp.asarray(x)), x.sum(-1), rtol=1e-12)
    np.testing.assert_array_equal(_small.max_last(jnp.asarray(x)), x.max(-1))
    cols = [jnp.asarray(x[..., i]) for i in range(x.shape[-1])]
    np.testing.assert_array_equal(_small.argmin_of(cols), x.argmin(-1))
    np.testing.assert_array_equal(_small.all_of([jnp.asarray(b[..., i]) for i in range(b.shape[-1])]), b.all(-1))
    np.testing.assert_array_equal(_small.any_last(jnp.asarray(b)), b.any(-1))
    assert _small.argmin_of(cols).dtype == jnp.int32


def test_take_last_is_a_lookup_and_vmaps():
    table = jnp.asarray([[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0]])  # (A, R)
    idx = jnp.asarray([3, 0])
    np.testing.assert_array_equal(_small.take_last(table, idx), [4.0, 10.0])
    np.testing.assert_array_equal(_small.take_last(table, jnp.asarray(2)), [3.0, 30.0])  # one index
    per_path = jnp.asarray([0, 1, 2, 3, 1])
    out = jax.jit(jax.vmap(lambda i: _small.take_last(table, i)))(per_path)
    np.testing.assert_array_equal(out, np.asarray(table).T[np.asarray(per_path)])
