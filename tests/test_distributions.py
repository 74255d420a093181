"""Samplers and the compiler helpers of :mod:`mmsim.distributions`: exact laws, known answers,
and that the performance rewrites return what the plain formulas return."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.special import ndtri
from scipy import stats

from mmsim import distributions as dist
from mmsim import rng


def test_materialise_is_the_identity():
    x = jnp.asarray([1.5, -0.0, np.nan, np.inf, -3.0], jnp.float32)
    tree = {"a": x, "b": (jnp.arange(4), jnp.asarray([True, False]))}
    for fn in (dist.materialise, dist.materialise_small):
        out = jax.jit(fn)(tree)
        got = np.asarray(out["a"])
        np.testing.assert_array_equal(got.view(np.int32), np.asarray(x).view(np.int32))  # bits: NaN, -0.0
        np.testing.assert_array_equal(np.asarray(out["b"][0]), np.arange(4))
        np.testing.assert_array_equal(np.asarray(out["b"][1]), [True, False])
    assert dist.materialise(()) == ()
    # Under vmap and grad-free transformations it stays the identity.
    v = jax.vmap(dist.materialise)(jnp.arange(6.0).reshape(3, 2))
    np.testing.assert_array_equal(np.asarray(v), np.arange(6.0).reshape(3, 2))


def test_std_normal_float32_matches_ndtri():
    """The float32 quantile (Giles' erfinv) against float64 ndtri over every float32 uniform
    that :mod:`mmsim.rng` can produce: relative error below 3e-7 (a few ulp)."""
    m = np.arange(2**23, dtype=np.float64)
    u64 = (m + 0.5) * 2.0**-23
    u32 = jnp.asarray(u64.astype(np.float32))
    got = np.asarray(jax.jit(dist.std_normal)(u32)).astype(np.float64)
    want = np.asarray(ndtri(jnp.asarray(u64.astype(np.float32).astype(np.float64))))
    rel = np.abs(got - want) / np.maximum(np.abs(want), 1e-30)
    assert rel.max() < 3e-7, rel.max()
    # float64 uniforms still go through ndtri itself.
    u = jnp.asarray([1e-12, 0.3, 0.5, 0.999], jnp.float64)
    np.testing.assert_array_equal(np.asarray(dist.std_normal(u)), np.asarray(ndtri(u)))


def test_expm1_float32_matches_float64():
    """The vectorisable float32 expm1 against float64 expm1: relative error below 3e-7 from 1e-12
    to 80 in magnitude (both signs, both sides of the series/exp switch at 1/2), exactly 0 at 0
    (callers rely on 1 - e^{-0} = 0), and IEEE behaviour at the ends."""
    mag = np.concatenate([np.logspace(-12, np.log10(80.0), 200_001), np.linspace(0.45, 0.55, 10_001)])
    x = np.concatenate([-mag, mag]).astype(np.float32)
    got = np.asarray(jax.jit(dist.expm1)(jnp.asarray(x))).astype(np.float64)
    want = np.expm1(x.astype(np.float64))
    rel = np.abs(got - want) / np.abs(want)
    assert rel.max() < 3e-7, (rel.max(), x[np.argmax(rel)])
    ends = np.asarray(dist.expm1(jnp.asarray([0.0, 100.0, -np.inf, np.inf, np.nan], jnp.float32)))
    assert ends[0] == 0.0 and np.isinf(ends[1]) and ends[2] == -1.0 and np.isinf(ends[3]) and np.isnan(ends[4])
    # float64 is jnp.expm1 itself.
    y = jnp.asarray([-3.0, 1e-9, 0.7], jnp.float64)
    np.testing.assert_array_equal(np.asarray(dist.expm1(y)), np.asarray(jnp.expm1(y)))


@pytest.mark.parametrize("mean", [0.02, 0.7, 3.0, 9.5])
def test_poisson_inversion_is_exact(mean):
    """Below the Cornish-Fisher threshold the sampler inverts the exact CDF: the count for a
    uniform u is the smallest n with F(n) >= u."""
    u = np.linspace(1e-6, 1 - 1e-6, 20_001)
    got = np.asarray(dist.poisson(jnp.asarray(u), jnp.full(u.shape, mean)))
    want = stats.poisson.ppf(u, mean)
    # Only where u lies within float rounding of a CDF jump may they differ, by one.
    cdf = stats.poisson.cdf(want, mean)
    near = np.abs(cdf - u) < 1e-12
    assert np.all((got == want) | near)


@pytest.mark.parametrize("mean", [10.0, 40.0, 400.0])
def test_poisson_cornish_fisher_law(mean):
    """Above it: mean and variance of the approximation (by quadrature over u) within 1e-5
    relative; total variation from the exact law below 8e-4."""
    u = (np.arange(400_000) + 0.5) / 400_000
    n = np.asarray(dist.poisson(jnp.asarray(u), jnp.full(u.shape, mean)))
    assert abs(n.mean() / mean - 1) < 1e-5
    assert abs(n.var() / mean - 1) < 1e-5
    ks = np.arange(0, int(mean + 12 * np.sqrt(mean)) + 1)
    emp = np.bincount(n.astype(int), minlength=ks.size)[: ks.size] / u.size
    tv = 0.5 * np.abs(emp - stats.poisson.pmf(ks, mean)).sum()
    assert tv < 8e-4, tv


def test_poisson_many_equals_poisson():
    k = rng.key(2)
    u1, u2 = rng.uniform(k, (2, 1000), jnp.float32)
    m1 = jnp.linspace(0.0, 30.0, 1000, dtype=jnp.float32)
    m2 = jnp.linspace(0.0, 3.0, 1000, dtype=jnp.float32)
    a, b = jax.jit(dist.poisson_many)((u1, u2), (m1, m2))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(dist.poisson(u1, m1)))
    np.testing.assert_array_equal(np.asarray(b), np.asarray(dist.poisson(u2, m2)))


def _pareto_sum_reference(u, n, scale, tail):
    """The sum of n Pareto(scale, tail) sizes: the largest by inversion of the maximum's law, the
    other n - 1 at the mean truncated at it (the textbook formulas, float64)."""
    largest = scale * (1 - u ** (1 / n)) ** (-1 / tail)
    r = scale / largest
    trunc = tail * scale / (tail - 1) * (1 - r ** (tail - 1)) / (1 - r**tail)
    return largest + (n - 1) * trunc, largest


@pytest.mark.parametrize("tail", [1.2, 1.5, 2.5])
def test_pareto_sum_matches_textbook_formulas(tail):
    u = np.linspace(0.01, 0.99, 99)
    for n in (1.0, 2.0, 7.0, 50.0):
        total, largest = dist.pareto_sum(jnp.asarray(u), jnp.full(u.shape, n), jnp.asarray(2.0), jnp.asarray(tail))
        want_t, want_l = _pareto_sum_reference(u, n, 2.0, tail)
        np.testing.assert_allclose(np.asarray(largest), want_l, rtol=1e-12)
        np.testing.assert_allclose(np.asarray(total), want_t, rtol=1e-10)
    zero_t, zero_l = dist.pareto_sum(jnp.asarray([0.5]), jnp.asarray([0.0]), jnp.asarray(2.0), jnp.asarray(tail))
    assert float(zero_t[0]) == 0.0 and float(zero_l[0]) == 0.0


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_uniform_entries_are_the_whole_draw(dtype):
    """uniform_at / uniform_columns / small draws give bit for bit the entries of uniform()."""
    keys = rng.path_keys(rng.key(7), 0, 64)
    for n in (1, 3, 8, 17, 40):
        whole = np.asarray(jax.vmap(lambda k: rng.uniform(k, (n,), dtype))(keys))
        # The general path (n > the small-draw size) against the per-entry one.
        parts = jax.vmap(lambda k: rng.uniform_at(k, n, *range(n), dtype=dtype))(keys)
        np.testing.assert_array_equal(np.stack([np.asarray(p) for p in parts], -1), whole)
    cols = jax.vmap(lambda k: rng.uniform_columns(k, (3, 5), dtype))(keys)
    full = np.asarray(jax.vmap(lambda k: rng.uniform(k, (3, 5), dtype))(keys))
    for j, c in enumerate(cols):
        np.testing.assert_array_equal(np.asarray(c), full[..., j])
    with pytest.raises(ValueError, match="out of range"):
        rng.uniform_at(rng.key(0), 4, 4)


def test_fold_in_constant_equals_traced():
    k = rng.key(13)
    for d in (0, 1, 9, 2**40):
        traced = jax.jit(lambda k, d: rng.fold_in(k, d))(k, jnp.asarray(d, jnp.uint64))
        assert int(rng.fold_in(k, d)) == int(traced)


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_lognormal_sum_has_the_exact_largest_and_mean(dtype):
    """lognormal_sum against its exact law: the largest of n is median e^{sigma z}, Phi(z) = u^{1/n}
    (closed form at every u), and the total's mean over uniform u is n median e^{sigma^2 / 2}
    (quadrature over a fine grid of u, so the tolerance is the grid's, not Monte Carlo's)."""
    from scipy import stats

    median, sigma = 0.03, 2.1
    u = (np.arange(200_000) + 0.5) / 200_000
    for n in (1.0, 3.0, 20.0):
        total, largest = dist.lognormal_sum(
            jnp.asarray(u, dtype), jnp.full(u.shape, n, dtype), jnp.asarray(median, dtype), jnp.asarray(sigma, dtype)
        )
        total, largest = np.asarray(total, float), np.asarray(largest, float)
        u_seen = np.asarray(jnp.asarray(u, dtype), float)  # the uniforms as the dtype holds them
        want = median * np.exp(sigma * -stats.norm.ppf(-np.expm1(np.log(u_seen) / n)))
        # float32: z to a few ulp of log terms, so M to ~1e-6 * sigma * |z| relative.
        rtol = 1e-9 if dtype == jnp.float64 else 2e-5
        np.testing.assert_allclose(largest, want, rtol=rtol)
        assert np.all(total >= largest * (1 - 1e-6)) and np.all(total <= n * largest * (1 + 1e-6))
        mean = n * median * np.exp(0.5 * sigma**2)
        # The grid's midpoint rule misses the tail beyond u = 1 - 2.5e-6: bounded by that mass's share.
        assert abs(total.mean() / mean - 1) < 0.02, (n, total.mean(), mean)
    # n = 1: the total is the size itself; n = 0: nothing.
    one, _ = dist.lognormal_sum(jnp.asarray([0.5], dtype), jnp.asarray([1.0], dtype), median, sigma)
    np.testing.assert_allclose(np.asarray(one), [median], rtol=1e-6)
    zero_t, zero_l = dist.lognormal_sum(jnp.asarray([0.5], dtype), jnp.asarray([0.0], dtype), median, sigma)
    assert float(zero_t[0]) == 0.0 and float(zero_l[0]) == 0.0
    # A uniform next to 1 in float32 is still a finite, large order.
    big, _ = dist.lognormal_sum(jnp.asarray([1.0 - 2**-24], dtype), jnp.asarray([1.0], dtype), median, sigma)
    assert np.isfinite(float(big[0])) and float(big[0]) > median * np.exp(4.5 * sigma)
