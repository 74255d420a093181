"""Counter-based random numbers: SplitMix64 indexed by (seed, path, step, process, slot).

Equations, units, the discretisation over a step and the known biases: ``docs/MODEL.md``, section 13.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtri

from mmsim.distributions import materialise_small

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_FOLD = np.uint64(0xD1B54A32D192ED03)
_MASK = (1 << 64) - 1
_F32_BITS = 23  # mantissa bits of a float32 uniform (two per 64-bit word)
_F64_BITS = 52  # mantissa bits of a float64 uniform (one per word)
_SMALL_DRAW = 16  # draws of at most this many uniforms per key are built entry by entry


def mix64(z: jax.Array) -> jax.Array:
    """Stafford's Mix13 finaliser of SplitMix64 (a bijection of uint64)."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def key(seed: Any) -> jax.Array:
    """A uint64 key from an integer seed, or from a typed/raw ``jax.random`` key."""
    if isinstance(seed, (int, np.integer)):
        if seed < 0:
            raise ValueError(f"seed = {seed}: must be a non-negative integer")
        return mix64(jnp.uint64(int(seed) % (1 << 64)) * GOLDEN + _FOLD)
    data = seed
    if jnp.issubdtype(getattr(seed, "dtype", np.float32), jax.dtypes.prng_key):
        data = jax.random.key_data(seed)
    data = jnp.asarray(data).astype(jnp.uint64).reshape(-1)
    k = jnp.uint64(0)
    for i in range(data.shape[0]):
        k = mix64(k * GOLDEN + data[i] + _FOLD)
    return k


def _mix64_host(z: int) -> int:
    """:func:`mix64` of a Python integer (host side, for constants)."""
    z &= _MASK
    z = ((z ^ (z >> 30)) * int(_M1)) & _MASK
    z = ((z ^ (z >> 27)) * int(_M2)) & _MASK
    return z ^ (z >> 31)


def fold_in(k: jax.Array, data: Any) -> jax.Array:
    """A new key that is a bijective mix of ``k`` and the integer ``data`` (any int dtype)."""
    if isinstance(data, (int, np.integer)) and not isinstance(data, bool):
        # A constant stream id (process, slot): its half of the mix is computed on the host.
        return mix64(jnp.asarray(k, jnp.uint64) + np.uint64(_mix64_host((int(data) % (1 << 64) + 1) * int(_FOLD))))
    d = jnp.asarray(data).astype(jnp.uint64)
    # A traced index (the step): the key feeds every process of the step, computed once.
    return materialise_small(mix64(k + mix64((d + np.uint64(1)) * _FOLD)))


def bits(k: jax.Array, n: int) -> jax.Array:
    """``n`` uint64 words from key ``k``; shape ``k.shape + (n,)``."""
    return _word(k, np.arange(n))


def uniform(k: jax.Array, shape: tuple[int, ...] = (), dtype: Any = jnp.float32) -> jax.Array:
    """Uniforms on the open interval (0, 1), shape ``k.shape + shape``.

    float32: 23-bit values ``(m + 0.5) / 2^23``, two per word; float64: 52-bit values.
    """
    dtype = jnp.dtype(dtype)
    n = math.prod(shape)
    kshape = jnp.shape(k)
    if dtype in (jnp.float32, jnp.float64) and 1 <= n <= _SMALL_DRAW:
        # A few uniforms per key (a step's draws): one array per entry, stacked. Consumers that
        # slice single entries then read those arrays directly (no concatenation, which vectorises
        # badly on CPU); bit for bit the same values as below.
        parts = _entries(k, n, range(n), dtype)
        return jnp.stack(parts, axis=-1).reshape(kshape + tuple(shape))
    if dtype == jnp.float64:
        w = bits(k, n)
        u = _to_unit(w >> np.uint64(12), _F64_BITS, np.float64)
    elif dtype == jnp.float32:
        w = bits(k, (n + 1) // 2)
        hi = w >> np.uint64(41)
        lo = (w >> np.uint64(9)) & np.uint64(0x7FFFFF)
        m = jnp.concatenate([hi, lo], axis=-1)[..., :n]
        u = _to_unit(m, _F32_BITS, np.float32)
    else:
        raise ValueError(f"dtype = {dtype}: uniform supports float32 and float64")
    return u.reshape(kshape + tuple(shape))


def _word(k: jax.Array, index: np.ndarray) -> jax.Array:
    """Words ``index`` (static non-negative integers, any shape) of key ``k``: ``mix(k + (i + 1) GOLDEN)``,
    shape ``k.shape + index.shape``; the offsets are host constants."""
    off = np.asarray([((int(i) + 1) * int(GOLDEN)) & _MASK for i in index.reshape(-1)], np.uint64)
    kk = jnp.asarray(k, jnp.uint64)
    if index.ndim == 0:
        return mix64(kk + off[0])
    return mix64(kk.reshape(kk.shape + (1,) * index.ndim) + off.reshape(index.shape))


def _to_unit(m: jax.Array, bits: int, dtype) -> jax.Array:
    """``(m + 1/2) 2^-bits`` for an integer array ``m < 2^bits`` (exact), through a signed
    integer conversion (uint64 -> float has no vector instruction on common CPUs)."""
    ity = jnp.int32 if bits <= 31 else jnp.int64
    return (m.astype(ity).astype(dtype) + dtype(0.5)) * dtype(2.0**-bits)


def uniform_at(k: jax.Array, n: int, *index: Any, dtype: Any = jnp.float32) -> tuple[jax.Array, ...]:
    """Selected entries of ``uniform(k, (n,), dtype)``, without building the whole draw.

    Each ``index`` is a static integer or integer array (flat positions ``< n``); the result for
    it has shape ``k.shape + np.shape(index)`` and is bit for bit ``uniform(k, (n,), dtype)[..., index]``.
    Words shared by several requested entries (the two float32 halves of one word) are hashed
    once. This is the fast way to draw a step's uniforms as separate per-column arrays: on CPUs a
    ``(paths, k)`` array with a short trailing axis, fed through concatenations and slices into
    transcendental functions, vectorises badly (about ten times slower per uniform than ``(paths,)``
    arrays, see experiments/PERFORMANCE.md).
    """
    return materialise_small(_entries(k, n, index, dtype))


def _entries(k: jax.Array, n: int, index, dtype) -> tuple[jax.Array, ...]:
    """The arrays of :func:`uniform_at` (not stored: see there)."""
    dtype = jnp.dtype(dtype)
    if dtype not in (jnp.float32, jnp.float64):
        raise ValueError(f"dtype = {dtype}: uniform supports float32 and float64")
    ft = dtype.type
    nw = (n + 1) // 2 if dtype == jnp.float32 else n
    cache: dict[int, jax.Array] = {}
    out = []
    for idx in index:
        idx = np.asarray(idx, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise ValueError(f"index {idx.tolist()} out of range for {n} uniforms")
        hi = (idx < nw) | (dtype == jnp.float64)
        widx = np.where(hi, idx, idx - nw)
        if widx.size == 1:  # one word: hashed once per call, shared by both of its halves
            key_ = int(widx.reshape(-1)[0])
            if key_ not in cache:
                cache[key_] = _word(k, np.asarray(key_))
            w = cache[key_].reshape(jnp.shape(k) + widx.shape)
        else:
            w = _word(k, widx)
        if dtype == jnp.float64:
            out.append(_to_unit(w >> np.uint64(12), _F64_BITS, ft))
            continue
        m_hi = w >> np.uint64(41)  # bits 63..41
        m_lo = (w >> np.uint64(9)) & np.uint64(0x7FFFFF)  # bits 31..9
        if np.all(hi):
            m = m_hi
        elif not np.any(hi):
            m = m_lo
        else:
            m = jnp.where(hi, m_hi, m_lo)
        out.append(_to_unit(m, _F32_BITS, ft))
    return tuple(out)


def uniform_columns(k: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> tuple[jax.Array, ...]:
    """``uniform(k, shape, dtype)`` split along its last axis: ``shape[-1]`` arrays of shape
    ``k.shape + shape[:-1]``, bit for bit ``uniform(k, shape, dtype)[..., j]`` (see :func:`uniform_at`)."""
    shape = tuple(shape)
    n = math.prod(shape)
    flat = np.arange(n).reshape(shape)
    return uniform_at(k, n, *(flat[..., j] for j in range(shape[-1])), dtype=dtype)


def normal(k: jax.Array, shape: tuple[int, ...] = (), dtype: Any = jnp.float32) -> jax.Array:
    """Standard normals by inversion, ``ndtri(uniform)``; shape ``k.shape + shape``."""
    return ndtri(uniform(k, shape, dtype))


def path_keys(k: jax.Array, start: int | jax.Array, n: int) -> jax.Array:
    """Keys of paths ``start .. start + n - 1``: ``fold_in(k, global_path_index)``.

    A path's key depends only on the run key and its global index, never on the chunk or the
    device it runs on.
    """
    idx = jnp.asarray(start, jnp.uint64) + jnp.arange(n, dtype=jnp.uint64)
    return fold_in(k, idx)
