"""The counter-based SplitMix64 generator: known answers, range, uniformity, independence, invariance."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from mmsim import rng

MASK = (1 << 64) - 1


def splitmix64_reference(state: int, n: int) -> list[int]:
    """Steele, Lea & Flood's SplitMix64 in plain Python integers (the published algorithm)."""
    out = []
    for _ in range(n):
        state = (state + 0x9E3779B97F4A7C15) & MASK
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        out.append(z ^ (z >> 31))
    return out


def test_bits_are_splitmix64():
    for seed in (0, 1, 0xDEADBEEF, MASK):
        got = [int(x) for x in np.asarray(rng.bits(jnp.uint64(seed), 5))]
        assert got == splitmix64_reference(seed, 5)
    # The published first output from state 0.
    assert splitmix64_reference(0, 1)[0] == 0xE220A8397B1DCDAF


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_uniform_open_interval_and_extremes(dtype):
    # The extreme words map strictly inside (0, 1), even after rounding to the dtype.
    bits = 23 if dtype == jnp.float32 else 52
    lo = (np.float64(0) + 0.5) * 2.0**-bits
    hi = (np.float64(2**bits - 1) + 0.5) * 2.0**-bits
    assert 0 < np.asarray(lo, dtype) < 1 and 0 < np.asarray(hi, dtype) < 1
    u = np.asarray(rng.uniform(rng.key(3), (200_000,), dtype))
    assert u.dtype == dtype and u.min() > 0 and u.max() < 1
    assert stats.kstest(u.astype(np.float64), "uniform").pvalue > 1e-3
    z = np.asarray(rng.normal(rng.key(4), (200_000,), dtype))
    assert np.all(np.isfinite(z))
    assert abs(z.mean()) < 4 / np.sqrt(z.size) and abs(z.var() - 1) < 4 * np.sqrt(2 / z.size)


def test_streams_independent():
    """Neighbouring paths and steps are uncorrelated (4 SE of a correlation, 1/sqrt(n))."""
    n = 100_000
    keys = rng.path_keys(rng.key(11), 0, n)
    step = jax.vmap(lambda k: rng.uniform(rng.fold_in(k, 0), (2,), jnp.float64))(keys)
    nxt = jax.vmap(lambda k: rng.uniform(rng.fold_in(k, 1), (2,), jnp.float64))(keys)
    u = np.asarray(step)
    v = np.asarray(nxt)
    se = 4 / np.sqrt(n)
    assert abs(np.corrcoef(u[:-1, 0], u[1:, 0])[0, 1]) < se  # adjacent paths
    assert abs(np.corrcoef(u[:, 0], v[:, 0])[0, 1]) < se  # adjacent steps
    assert abs(np.corrcoef(u[:, 0], u[:, 1])[0, 1]) < se  # adjacent slots
    # Uniform pairs fill the unit square evenly (chi-square over a 10 x 10 grid).
    h, _, _ = np.histogram2d(u[:, 0], v[:, 0], bins=10, range=[[0, 1], [0, 1]])
    assert stats.chisquare(h.ravel()).pvalue > 1e-3


def test_path_keys_do_not_depend_on_chunking():
    k = rng.key(5)
    whole = np.asarray(rng.path_keys(k, 0, 10))
    parts = np.concatenate([np.asarray(rng.path_keys(k, 0, 4)), np.asarray(rng.path_keys(k, 4, 6))])
    np.testing.assert_array_equal(whole, parts)
    assert len(set(whole.tolist())) == 10


def test_fold_in_distinct_and_deterministic():
    k = rng.key(9)
    folded = np.asarray(rng.fold_in(k, jnp.arange(10_000)))
    assert len(set(folded.tolist())) == 10_000
    assert int(rng.fold_in(k, 3)) == int(rng.fold_in(k, 3))
    assert int(rng.key(1)) != int(rng.key(2))


def test_key_from_jax_key_and_errors():
    a = rng.key(jax.random.key(0))
    b = rng.key(jax.random.key(0))
    assert int(a) == int(b) and a.dtype == jnp.uint64
    with pytest.raises(ValueError, match="seed = -1"):
        rng.key(-1)
    with pytest.raises(ValueError, match="float32 and float64"):
        rng.uniform(rng.key(0), (3,), jnp.float16)
