"""Samplers by transformation of uniforms: fixed cost, no loops, exact where stated.

Each takes uniforms drawn by the caller (see :mod:`mmsim.rng`), so a process's draws are laid
out once and a test can feed hand-picked uniforms.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.special import ndtri

#: Means below this use exact inversion of the Poisson CDF; at or above, the Cornish-Fisher
#: approximation (total-variation distance from the exact law < 6e-4 for mean >= 10, mean and
#: variance exact to 1e-5 relative: see tests/test_distributions.py).
POISSON_CF_MIN = 10.0
#: Terms of the inversion search: P(N > 36 | mean < 10) < 1e-10.
POISSON_K_MAX = 36


def poisson(u: jax.Array, mean: jax.Array, *, k_max: int = POISSON_K_MAX,
            cf_min: float = POISSON_CF_MIN) -> jax.Array:
    """Poisson(mean) counts from uniforms ``u`` (same shape), as floats of ``u``'s dtype.

    For ``mean < cf_min``: exact inversion, N = #{k < k_max : u > F(k)}; the law is truncated at
    ``k_max`` (callers that know their mean is tiny, such as price jumps, pass a small k_max and
    document P(N > k_max)). For ``mean >= cf_min``: the Cornish-Fisher expansion of the quantile
    (skewness 1/sqrt(m), excess kurtosis 1/m) with the variance deflated by 1/12 to undo the
    rounding, N = ceil(m + sqrt(m - 1/12) * w(z) - 1/2), z = ndtri(u).
    """
    dt = u.dtype
    m = jnp.maximum(mean.astype(dt), 0.0)
    small = m < cf_min
    m_s = jnp.where(small, m, 0.0)
    p = jnp.exp(-m_s)
    cdf = p
    n = jnp.zeros_like(u)
    for k in range(k_max):
        n = n + (u > cdf).astype(dt)
        p = p * m_s / (k + 1)
        cdf = cdf + p
    m_l = jnp.where(small, cf_min, m)
    z = ndtri(u)
    g1 = jax.lax.rsqrt(m_l)
    w = z + (z * z - 1.0) * g1 / 6.0 + (z**3 - 3.0 * z) * (g1 * g1) / 24.0 \
        - (2.0 * z**3 - 5.0 * z) * (g1 * g1) / 36.0
    x = m_l + jnp.sqrt(m_l - 1.0 / 12.0) * w
    n_cf = jnp.maximum(jnp.ceil(x - 0.5), 0.0)
    return jnp.where(small, n, n_cf)


def exponential(u: jax.Array, rate: jax.Array) -> jax.Array:
    """Exp(rate) by inversion: -log(u) / rate."""
    return -jnp.log(u) / rate


def pareto(u: jax.Array, scale: jax.Array, tail: jax.Array) -> jax.Array:
    """Pareto type I: P(X > x) = (scale / x)^tail for x >= scale; X = scale * u^(-1/tail)."""
    return scale * jnp.exp(-jnp.log(u) / tail)


def pareto_truncated_mean(scale: jax.Array, tail: jax.Array, upper: jax.Array) -> jax.Array:
    """E[X | X <= upper] for X ~ Pareto(scale, tail), tail != 1 (upper >= scale)."""
    r = jnp.clip(scale / upper, 0.0, 1.0)
    num = 1.0 - r ** (tail - 1.0)
    den = 1.0 - r**tail
    safe = den > 1e-12
    mean = tail * scale / (tail - 1.0) * num / jnp.where(safe, den, 1.0)
    return jnp.where(safe, mean, scale)


def pareto_sum(u: jax.Array, n: jax.Array, scale: jax.Array, tail: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Total and largest of ``n`` i.i.d. Pareto(scale, tail) sizes from one uniform.

    The largest, M = F^{-1}(u^{1/n}), is exact. Given M, the other n - 1 sizes are i.i.d.
    Pareto truncated at M, and they enter the total through their conditional mean,
    total = M + (n - 1) E[X | X <= M]: the total has the exact mean and the exact tail (the
    heavy tail of a sum is carried by its largest term) and under-states only the variance of
    the bulk. Returns ``(total, largest)``, both 0 where n == 0.
    """
    has = n > 0
    nn = jnp.where(has, n, 1.0)
    # 1 - u^{1/n}, computed without cancellation.
    tail_prob = -jnp.expm1(jnp.log(u) / nn)
    largest = scale * jnp.exp(-jnp.log(tail_prob) / tail)
    rest = (nn - 1.0) * pareto_truncated_mean(scale, tail, largest)
    return jnp.where(has, largest + rest, 0.0), jnp.where(has, largest, 0.0)


def double_exponential(u: jax.Array, p_up: jax.Array, eta_up: jax.Array, eta_down: jax.Array) -> jax.Array:
    """Kou's double exponential by inversion of one uniform: with probability p_up an
    Exp(eta_up) up-move, else minus an Exp(eta_down)."""
    up = u > 1.0 - p_up
    v_up = (u - (1.0 - p_up)) / jnp.maximum(p_up, 1e-30)       # uniform on (0, 1) given up
    v_dn = u / jnp.maximum(1.0 - p_up, 1e-30)                    # uniform on (0, 1) given down
    x_up = -jnp.log1p(-jnp.clip(v_up, 0.0, 1.0 - 1e-7)) / eta_up
    x_dn = jnp.log(jnp.clip(v_dn, 1e-30, 1.0)) / eta_down
    return jnp.where(up, x_up, x_dn)


def std_normal(u: jax.Array) -> jax.Array:
    """N(0, 1) by inversion of a uniform."""
    return ndtri(u)
