"""Samplers by transformation of uniforms: fixed cost, no loops, exact where stated.

Each takes uniforms drawn by the caller (see :mod:`mmsim.rng`), so a process's draws are laid
out once and a test can feed hand-picked uniforms.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtr, ndtri


def materialise(tree):
    """``tree`` unchanged, but its arrays computed once and stored before their consumers run.

    XLA's CPU fusion duplicates chains of cheap operations (integer hashes, the compare-and-add
    loop of :func:`poisson`, whole process steps) into every fused consumer of their result; on
    the composed model step that multiplied the executed operations by ten or more (see
    experiments/PERFORMANCE.md). ``jax.lax.optimization_barrier`` does not prevent it on CPU (the
    barrier is removed before fusion). A loop boundary does: the arrays pass through a
    ``while_loop`` that runs its body once (a flag the compiler does not evaluate), so they are
    computed, stored, and read back by every consumer. The cost is one small loop per call and a
    copy of each array, not a pass over the batch per array: group the arrays of one stage into
    one call. Use it where a long chain feeds many consumers.
    """
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    if not leaves:
        return tree
    arrs = [jnp.asarray(x) for x in leaves]
    zeros = [jnp.zeros_like(a) for a in arrs]
    _, out = jax.lax.while_loop(lambda c: c[0], lambda c: (jnp.zeros((), bool), arrs), (jnp.ones((), bool), zeros))
    return jax.tree_util.tree_unflatten(treedef, out)


def materialise_small(x):
    """:func:`materialise` of a few arrays that are cheap to store element by element: each goes
    through a reduction over a stacked axis of two, ``[x, filler]``, that returns ``x`` exactly
    (NaN and -0.0 included). A reduction is never duplicated into consumers either, and its
    producers fuse into it, so this costs no loop and no copy; but it is a pass over the batch
    per array, so :func:`materialise` is cheaper for groups of arrays."""

    def one(a):
        a = jnp.asarray(a)
        if a.dtype == bool:
            return jnp.any(jnp.stack([a, jnp.zeros_like(a)]), axis=0)
        # On the bits, as signed integers: max(bits, INT_MIN) is the bits of any value (NaN and
        # -0.0 included), and an integer max is kept as a plain fused loop (a float max reduction
        # of a large batch may be handed to a library kernel that fuses nothing).
        ity = {1: jnp.int8, 2: jnp.int16, 4: jnp.int32, 8: jnp.int64}[a.dtype.itemsize]
        b = jax.lax.bitcast_convert_type(a, ity) if a.dtype != ity else a
        m = jnp.max(jnp.stack([b, jnp.full_like(b, jnp.iinfo(ity).min)]), axis=0)
        return jax.lax.bitcast_convert_type(m, a.dtype) if a.dtype != ity else m

    return jax.tree_util.tree_map(one, x)


#: Means below this use exact inversion of the Poisson CDF; at or above, the Cornish-Fisher
#: approximation (total-variation distance from the exact law 7.1e-4 at mean 10, 2.4e-4 at 20, 9e-5
#: at 40 and 400; mean and variance exact to 1e-5 relative: see tests/test_distributions.py).
POISSON_CF_MIN = 10.0
#: Terms of the inversion search: P(N > 36 | mean < 10) < 1e-10.
POISSON_K_MAX = 36


def poisson(u: jax.Array, mean: jax.Array, *, k_max: int = POISSON_K_MAX, cf_min: float = POISSON_CF_MIN) -> jax.Array:
    """Poisson(mean) counts from uniforms ``u`` (same shape), as floats of ``u``'s dtype.

    For ``mean < cf_min``: exact inversion, N = #{k < k_max : u > F(k)}; the law is truncated at
    ``k_max`` (callers that know their mean is tiny, such as price jumps, pass a small k_max and
    document P(N > k_max)). For ``mean >= cf_min``: the Cornish-Fisher expansion of the quantile
    (skewness 1/sqrt(m), excess kurtosis 1/m) with the variance deflated by 1/12 to undo the
    rounding, N = ceil(m + sqrt(m - 1/12) * w(z) - 1/2), z = ndtri(u).
    """
    n = _poisson(u, mean, k_max, cf_min)
    # The inversion search is a long chain of cheap operations: computed once, not in every
    # consumer (a caller drawing several counts can group them: poisson_many).
    return materialise_small(n) if k_max > _SHORT_SEARCH else n


#: Searches of at most this many terms are cheap enough to be recomputed by their consumers.
_SHORT_SEARCH = 4


def poisson_many(u: tuple, mean: tuple, *, k_max: int = POISSON_K_MAX, cf_min: float = POISSON_CF_MIN) -> tuple:
    """:func:`poisson` of several (uniforms, mean) pairs, the same draws, stored together (one
    :func:`materialise` for all rather than one each)."""
    return materialise_small(tuple(_poisson(ui, mi, k_max, cf_min) for ui, mi in zip(u, mean)))


def _poisson(u, mean, k_max, cf_min):
    dt = u.dtype
    m = jnp.maximum(mean.astype(dt), 0.0)
    small = m < cf_min
    m_s = jnp.where(small, m, 0.0)
    p = jnp.exp(-m_s)
    cdf = p
    n = jnp.zeros_like(u)
    for k in range(k_max):
        n = n + (u > cdf).astype(dt)
        p = p * (m_s * np.asarray(1.0 / (k + 1), dt))  # a multiplication: cheaper than / (k + 1)
        cdf = cdf + p
    m_l = jnp.where(small, cf_min, m)
    z = std_normal(u)
    g1 = jax.lax.rsqrt(m_l)
    g2 = g1 * g1
    z2 = z * z
    z3 = z2 * z
    w = (
        z
        + (z2 - 1.0) * (g1 * (1.0 / 6.0))
        + (z3 - 3.0 * z) * (g2 * (1.0 / 24.0))
        - (2.0 * z3 - 5.0 * z) * (g2 * (1.0 / 36.0))
    )
    x = m_l + jnp.sqrt(m_l - 1.0 / 12.0) * w
    n_cf = jnp.maximum(jnp.ceil(x - 0.5), 0.0)
    return jnp.where(small, n, n_cf)


#: Taylor coefficients 1/k! (k = 2..9) of expm1, highest first, for |x| < _EXPM1_SERIES.
_EXPM1_TAYLOR = tuple(1.0 / math.factorial(k) for k in range(9, 1, -1))
_EXPM1_SERIES = 0.5


def expm1(x: jax.Array, exp_x: jax.Array | None = None) -> jax.Array:
    """``exp(x) - 1`` without cancellation near 0, as ``jnp.expm1`` but in float32 from operations
    that vectorise on a CPU: XLA's CPU backend computes ``expm1`` element by element, several times
    slower than ``exp``, and a per-path expm1 cost the composed model step a few percent
    (experiments/PERFORMANCE.md). For ``|x| < 1/2`` the Taylor series to ``x^9 / 9!`` (truncation
    below 1e-8 relative), else ``exp(x) - 1`` (no cancellation: |result| > 0.39); relative error
    below 3e-7 over float32 (tests/test_distributions.py). float64 uses ``jnp.expm1``.

    ``exp_x``: ``exp(x)`` when the caller needs it too and has computed it (float32 only).
    """
    x = jnp.asarray(x)
    if x.dtype != jnp.float32:
        return jnp.expm1(x)
    if exp_x is None:
        exp_x = jnp.exp(x)
    f = jnp.float32
    p = jnp.full_like(x, _EXPM1_TAYLOR[0])
    for c in _EXPM1_TAYLOR[1:]:
        p = f(c) + p * x
    series = x + (x * x) * p
    return jnp.where(jnp.abs(x) < f(_EXPM1_SERIES), series, exp_x - f(1.0))


def exponential(u: jax.Array, rate: jax.Array) -> jax.Array:
    """Exp(rate) by inversion: -log(u) / rate."""
    return -jnp.log(u) / rate


def pareto(u: jax.Array, scale: jax.Array, tail: jax.Array) -> jax.Array:
    """Pareto type I: P(X > x) = (scale / x)^tail for x >= scale; X = scale * u^(-1/tail)."""
    return scale * jnp.exp(-jnp.log(u) / tail)


def pareto_sum(
    u: jax.Array, n: jax.Array, scale: jax.Array, tail: jax.Array, cap: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """Total and largest of ``n`` i.i.d. Pareto(scale, tail) sizes from one uniform, each size
    truncated at ``cap`` when given (the law conditioned on X <= cap; ``inf``: no cap).

    The largest, M = F_c^{-1}(u^{1/n}) with F_c = F / F(cap), is exact. Given M, the other n - 1
    sizes are i.i.d. Pareto truncated at M, and they enter the total through their conditional
    mean, total = M + (n - 1) E[X | X <= M]: the total has the exact mean and the exact tail (the
    heavy tail of a sum is carried by its largest term) and under-states only the variance of
    the bulk. Returns ``(total, largest)``, both 0 where n == 0.
    """
    has = n > 0
    nn = jnp.where(has, n, 1.0)
    a = jnp.log(u) / nn
    # u^{1/n} = F(M / scale), and 1 - u^{1/n} without cancellation. exp(a) feeds both: stored
    # once (XLA's CPU backend compiles a shared exp as a kernel of its own, element by element).
    below = materialise_small(jnp.exp(a)) if a.dtype == jnp.float32 else jnp.exp(a)
    tail_prob = -expm1(a, below)
    if cap is not None:
        # F(M) = F(cap) u^{1/n}: P(X > M) = p_c + F(cap) (1 - u^{1/n}), p_c = (scale / cap)^tail
        # (exactly the uncapped values when cap = inf).
        p_c = jnp.exp(tail * jnp.log(scale / cap))
        tail_prob = p_c + (1.0 - p_c) * tail_prob
        below = (1.0 - p_c) * below
    g = jnp.exp(-jnp.log(tail_prob) * (1.0 / tail))  # M / scale = tail_prob^{-1/tail}
    largest = scale * g
    # E[X | X <= M] = tail scale / (tail - 1) (1 - r^(tail - 1)) / (1 - r^tail) with r = scale / M
    # = 1/g, r^tail = tail_prob and r^(tail - 1) = tail_prob g: no powers and no division by M.
    num = 1.0 - tail_prob * g
    safe = below > 1e-12
    mean = jnp.where(safe, (tail * scale / (tail - 1.0)) * num / jnp.where(safe, below, 1.0), scale)
    rest = (nn - 1.0) * mean
    return jnp.where(has, largest + rest, 0.0), jnp.where(has, largest, 0.0)


def lognormal_sum(u: jax.Array, n: jax.Array, median: jax.Array, sigma: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Total and largest of ``n`` i.i.d. lognormal sizes (``median`` e^{sigma Z}, Z ~ N(0, 1))
    from one uniform, as :func:`pareto_sum` does for Pareto sizes.

    The largest, M = median e^{sigma z} with Phi(z) = u^{1/n}, is exact; above the median z is
    taken as ``-ndtri(1 - u^{1/n})`` from ``1 - u^{1/n} = -expm1(log(u) / n)``, so a large order
    keeps its probability in float32. Given M, the other n - 1 sizes enter at their mean truncated at M,
    ``E[X | X <= M] = median e^{sigma^2 / 2} Phi(z - sigma) / Phi(z)``: the total has the exact mean
    ``n median e^{sigma^2 / 2}`` and the largest term's law. Returns ``(total, largest)``, both 0
    where n == 0.
    """
    has = n > 0
    nn = jnp.where(has, n, 1.0)
    a = jnp.log(u) / nn
    below = jnp.exp(a)  # Phi(z) = u^{1/n}
    tail_prob = -expm1(a, below)  # P(X > M) = 1 - u^{1/n}, without cancellation
    # Each half from the probability that is small there: ndtri is accurate near 0, not near 1.
    tiny = jnp.finfo(u.dtype).tiny
    lower = below < 0.5
    p = jnp.clip(jnp.where(lower, below, tail_prob), tiny, 0.5)
    zp = std_normal(p)
    z = jnp.where(lower, zp, -zp)
    largest = median * jnp.exp(sigma * z)
    safe = below > 1e-12
    ratio = ndtr(z - sigma) / jnp.where(safe, below, 1.0)
    trunc = jnp.where(safe, jnp.minimum(median * jnp.exp(0.5 * sigma * sigma) * ratio, largest), largest)
    rest = (nn - 1.0) * trunc
    return jnp.where(has, largest + rest, 0.0), jnp.where(has, largest, 0.0)


def double_exponential(u: jax.Array, p_up: jax.Array, eta_up: jax.Array, eta_down: jax.Array) -> jax.Array:
    """Kou's double exponential by inversion of one uniform: with probability p_up an
    Exp(eta_up) up-move, else minus an Exp(eta_down)."""
    up = u > 1.0 - p_up
    v_up = (u - (1.0 - p_up)) / jnp.maximum(p_up, 1e-30)  # uniform on (0, 1) given up
    v_dn = u / jnp.maximum(1.0 - p_up, 1e-30)  # uniform on (0, 1) given down
    x_up = -jnp.log1p(-jnp.clip(v_up, 0.0, 1.0 - 1e-7)) / eta_up
    x_dn = jnp.log(jnp.clip(v_dn, 1e-30, 1.0)) / eta_down
    return jnp.where(up, x_up, x_dn)


#: Giles (2010), "Approximating the erfinv function" (GPU Computing Gems, single precision):
#: erfinv(x) = x p(w), w = -log((1 - x)(1 + x)), with p a polynomial in w - 2.5 (w < 5) or in
#: sqrt(w) - 3 (w >= 5). Highest degree first.
_GILES_CENTRAL = (
    2.81022636e-08,
    3.43273939e-07,
    -3.5233877e-06,
    -4.39150654e-06,
    0.00021858087,
    -0.00125372503,
    -0.00417768164,
    0.246640727,
    1.50140941,
)
_GILES_TAIL = (
    -0.000200214257,
    0.000100950558,
    0.00134934322,
    -0.00367342844,
    0.00573950773,
    -0.0076224613,
    0.00943887047,
    1.00167406,
    2.83297682,
)


def _ndtri_f32(u: jax.Array) -> jax.Array:
    """Normal quantile of float32 uniforms: sqrt(2) erfinv(2u - 1) by Giles' approximation, with
    ``w = -log(4 u (1 - u))`` taken from ``u`` itself (no cancellation near u = 0 or 1; ``2u - 1``
    is exact for u >= 1/4). Over every float32 uniform of :mod:`mmsim.rng` (all 2^23 values) the
    relative error is below 3e-7 (4.3 ulp; ``jax.scipy.special.ndtri`` in float32: 4.2e-7, 4.1 ulp),
    at about a third of the operations (no divisions, one log, one sqrt, two polynomials)."""
    f = jnp.float32
    x = f(2.0) * u - f(1.0)
    w = -jnp.log(f(4.0) * u * (f(1.0) - u))
    wc = w - f(2.5)
    p1 = jnp.full_like(u, _GILES_CENTRAL[0])
    for c in _GILES_CENTRAL[1:]:
        p1 = f(c) + p1 * wc
    wt = jnp.sqrt(w) - f(3.0)
    p2 = jnp.full_like(u, _GILES_TAIL[0])
    for c in _GILES_TAIL[1:]:
        p2 = f(c) + p2 * wt
    return f(np.sqrt(2.0)) * jnp.where(w < f(5.0), p1, p2) * x


def std_normal(u: jax.Array) -> jax.Array:
    """N(0, 1) by inversion of a uniform: ``ndtri(u)`` (float64), or for float32 uniforms a
    cheaper approximation of the same function that is as accurate in float32 (see
    :func:`_ndtri_f32`)."""
    u = jnp.asarray(u)
    if u.dtype == jnp.float32:
        return _ndtri_f32(u)
    return ndtri(u)


def hawkes_spectral_radius(alpha_buy, alpha_sell, gamma, beta) -> np.ndarray:
    """Spectral radius of the bivariate Hawkes branching matrix ``[[alpha_buy, gamma], [gamma,
    alpha_sell]] / beta`` (numpy, host side; rates per second, dimensionless result): the mean
    number of events one event triggers directly, at the worst mix of sides; < 1 is stationary."""
    ab, as_, g, b = (np.asarray(x, dtype=float) for x in (alpha_buy, alpha_sell, gamma, beta))
    return np.asarray(((ab + as_) + np.sqrt((ab - as_) ** 2 + 4.0 * g**2)) / (2.0 * b))


# ------------------------------------------------------------------------------------------------
# Importance sampling: draws of a tilted law of the uniforms, with their likelihood ratios.
#
# Every sampler above maps a uniform u to its variate by inversion, so changing the law of u
# changes the law of the variate, and the likelihood ratio of the change is the ratio of the
# uniform's densities (1 over the tilted density): exact whatever the map (a truncated inversion,
# a Cornish-Fisher quantile). Both tilts below return ``(u, log_lr)`` with ``log_lr = log(1 /
# g(u))`` in float64: the sum over a path's steps is the log of its Radon-Nikodym derivative.

#: The largest float32 below 1: a tilted uniform cast to float32 is kept below it (the float32
#: uniforms of :mod:`mmsim.rng` never exceed it either, 1 - 2^-24).
_F32_BELOW_ONE = float(np.nextafter(np.float32(1.0), np.float32(0.0)))


def _cast_uniform(u64: jax.Array, dtype) -> jax.Array:
    if jnp.dtype(dtype) == jnp.float32:
        return jnp.clip(u64, 2.0**-24, _F32_BELOW_ONE).astype(dtype)
    return u64.astype(dtype)


def tilt_event(u: jax.Array, p0: jax.Array, boost: jax.Array) -> tuple[jax.Array, jax.Array]:
    """A uniform whose mass above ``p0`` is raised from ``1 - p0`` to ``1 - p0^boost``, uniform on
    either side of ``p0``; ``u`` is the nominal uniform it is made from (the same shape).

    For a Poisson count of mean m drawn by inversion, ``p0 = e^{-m} = P(N = 0)``: the step has an
    event with probability ``1 - e^{-boost m}``, as if its intensity were ``boost`` times larger,
    and given an event the count has its nominal law. Steps without an event weigh
    ``e^{(boost - 1) m}``, close to 1, so a long horizon of quiet steps adds little variance (a tilt
    of the whole uniform would weigh every step). ``log_lr = log(p0 / p0^boost)`` below ``p0``,
    ``log((1 - p0) / (1 - p0^boost))`` above. Exact for any ``p0`` in (0, 1): ``p0`` only says
    where the tilt acts.
    """
    dtype = u.dtype
    p0 = jnp.clip(jnp.asarray(p0, jnp.float64), 1e-300, 1.0 - 1e-16)
    b = jnp.asarray(boost, jnp.float64)
    v = u.astype(jnp.float64)
    log_p0 = jnp.log(p0)
    q0 = jnp.exp(b * log_p0)  # tilted P(below p0) = p0^boost
    below = v < q0
    u_t = jnp.where(below, v / q0 * p0, p0 + (v - q0) / (1.0 - q0) * (1.0 - p0))
    log_lr = jnp.where(below, (1.0 - b) * log_p0, jnp.log1p(-p0) - jnp.log1p(-q0))
    return _cast_uniform(u_t, dtype), log_lr


def tilt_exp(u: jax.Array, eta: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Exponential tilting of ``E = -log(1 - u)`` (an Exp(1) variable) by ``eta < 1``: the tilted
    E is Exp(1 - eta), ``E / (1 - eta)`` of the nominal uniform ``u``'s E, so a size drawn by
    inversion from ``1 - u`` has a heavier tail (a Pareto tail index ``a`` becomes ``a (1 -
    eta)``). Returns ``(u_tilted, log_lr, E_tilted)`` with ``log_lr = -eta E - log(1 - eta)``."""
    dtype = u.dtype
    eta = jnp.asarray(eta, jnp.float64)
    e = -jnp.log1p(-u.astype(jnp.float64)) / (1.0 - eta)
    return _cast_uniform(-jnp.expm1(-e), dtype), -eta * e - jnp.log1p(-eta), e


def tilt_normal_score(u: jax.Array, theta: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """A mean shift of the uniform's normal score: ``z = ndtri(u)`` becomes N(theta, 1), so a
    count drawn by inversion of ``u`` (exact or Cornish-Fisher) moves up by about ``theta``
    standard deviations for ``theta > 0``. Returns ``(u_tilted, log_lr, z_tilted)`` with
    ``log_lr = -theta z + theta^2 / 2`` (float64)."""
    dtype = u.dtype
    th = jnp.asarray(theta, jnp.float64)
    z = ndtri(jnp.clip(u.astype(jnp.float64), 1e-300, 1.0 - 1e-16)) + th
    return _cast_uniform(jax.scipy.special.ndtr(z), dtype), -th * z + 0.5 * th * th, z
