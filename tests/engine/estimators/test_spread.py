"""Spread estimator (spec Part 4, engine side): fair spread, flags and the histogram percentile."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmsim import observation
from mmsim.engine.estimators import spread


def book_seq(frac, dts, mid=100.0, valid=None, sigma=1e-4, regime=1, dtype=jnp.float64):
    """Scan inputs (obs, sigma, regime) for spreads ``frac`` (..., T, A) in fraction of mid."""
    frac = np.asarray(frac, float)
    lead, n_a = frac.shape[:-1], frac.shape[-1]
    mid = np.broadcast_to(np.asarray(mid, float), frac.shape)
    valid = np.ones(frac.shape, bool) if valid is None else np.asarray(valid, bool)
    tmpl = observation.empty(n_a, dtype)
    obs = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, lead + x.shape), tmpl)
    obs = obs._replace(
        dt=jnp.asarray(dts, dtype),
        mid=jnp.asarray(mid, dtype),
        best_bid=jnp.asarray(mid * (1 - frac / 2), dtype),
        best_ask=jnp.asarray(mid * (1 + frac / 2), dtype),
        book_valid=jnp.asarray(valid),
    )
    sig = jnp.asarray(np.broadcast_to(sigma, frac.shape), dtype)
    reg = jnp.asarray(np.broadcast_to(regime, lead), jnp.int32)
    return obs, sig, reg


def _scan(params, inputs, n_assets, dtype):
    def body(s, x):
        s = spread.update(params, s, *x)
        return s, s

    return jax.lax.scan(body, spread.init(params, n_assets, dtype), inputs)


_run = jax.jit(_scan, static_argnums=(2, 3))
_run_paths = jax.jit(jax.vmap(_scan, in_axes=(None, 0, None, None)), static_argnums=(2, 3))

SMALL = dict(n_bins=4, bin_lo=1e-4, bin_hi=1.0, hist_half_life_s=1.0, theta0=1e-3, beta_vol=2.0)


def test_hand_computed_percentile_and_flags():
    """Bins [1e-4, 1e-3, 1e-2, 1e-1, 1], half-life 1 s at dt = 1 s (w = 1/2)."""
    p = spread.SpreadEstParams(**SMALL)
    fr = [5e-4, 5e-3, 2e-3, 1.5e-2]
    final, st = _run(p, book_seq(np.asarray(fr)[:, None], np.ones(4), sigma=1e-3, regime=2), 1, jnp.float64)
    np.testing.assert_allclose(st.spread[:, 0], np.asarray(fr) * 100.0, rtol=1e-10)
    np.testing.assert_allclose(st.spread_frac[:, 0], fr, rtol=1e-10)
    np.testing.assert_allclose(st.hist[0, 0], [0.5, 0, 0, 0], atol=1e-15)
    np.testing.assert_allclose(st.hist[2, 0], [0.125, 0.75, 0, 0], atol=1e-15)
    l5, l2 = math.log10(5), math.log10(2)
    want = [l5, (0.25 + l5 * 0.5) / 0.75, (0.125 + l2 * 0.75) / 0.875, (0.4375 + math.log10(1.5) * 0.5) / 0.9375]
    np.testing.assert_allclose(st.percentile[:, 0], want, rtol=1e-10)
    # Fair spread (theta0 + beta sigma) * regime_mult[High] = (1e-3 + 2e-3) * 1.5 = 4.5e-3.
    np.testing.assert_allclose(st.fair[:, 0], 4.5e-3, rtol=1e-12)
    # Tight below 0.8 * 4.5e-3 = 3.6e-3; wide above 1.5 * 4.5e-3 = 6.75e-3.
    np.testing.assert_array_equal(st.tight[:, 0], [True, False, True, False])
    np.testing.assert_array_equal(st.wide[:, 0], [False, False, False, True])
    # The quantisation bound is the mass of the current bin.
    np.testing.assert_allclose(spread.percentile_error_bound(p, final)[0], 0.5 / 0.9375, rtol=1e-12)


def test_regime_multiplier_per_asset():
    p = spread.SpreadEstParams(
        theta0=np.asarray([1e-4, 2e-4]),
        beta_vol=0.0,
        regime_mult=np.asarray([[1.0, 2.0, 3.0, 4.0], [0.5, 1.0, 1.5, 2.0]]),
    )
    final, _ = _run(p, book_seq([[1e-4, 1e-4]], [1.0], regime=3), 2, jnp.float64)
    np.testing.assert_allclose(final.fair, [4e-4, 4e-4], rtol=1e-12)


def test_masks_crossed_book_and_interval():
    p = spread.SpreadEstParams(**SMALL)
    obs, sig, reg = book_seq([[5e-4], [5e-3], [5e-3]], np.ones(3), valid=[[True], [False], [True]])
    # Make the first invalid book a crossed one too (it must not matter), and add a crossed valid one.
    obs = obs._replace(best_bid=obs.best_bid.at[1, 0].set(101.0))
    final, st = _run(p, (obs, sig, reg), 1, jnp.float64)
    s0 = jax.tree_util.tree_map(lambda x: x[0], st)
    s1 = jax.tree_util.tree_map(lambda x: x[1], st)
    for f in ("spread", "spread_frac", "hist", "percentile", "initialised"):
        np.testing.assert_array_equal(getattr(s1, f), getattr(s0, f), err_msg=f)
    np.testing.assert_allclose(s1.since_s, 1.0)
    # The next valid book decays the history over 2 s: w = 1 - 2^-2 = 0.75.
    np.testing.assert_allclose(final.hist[0], [0.125, 0.75, 0, 0], atol=1e-15)
    crossed = obs._replace(best_bid=obs.best_bid.at[2, 0].set(101.0), book_valid=jnp.ones((3, 1), bool))
    f2, _ = _run(p, (crossed, sig, reg), 1, jnp.float64)
    np.testing.assert_array_equal(f2.hist, s1.hist)  # the crossed book was skipped


def test_edge_cases_no_nan():
    p = spread.SpreadEstParams()
    for dtype in (jnp.float32, jnp.float64):
        frac = np.asarray([[0.0, 1e-9], [1e-4, 0.5], [2e-4, 1e-4]])
        obs, sig, reg = book_seq(frac, [1e-9, 1.0, 1.0], mid=[[100.0, 0.0], [100.0, np.nan], [100.0, 1.0]], dtype=dtype)
        final, st = _run(p, (obs, sig, reg), 2, dtype)
        for leaf in jax.tree_util.tree_leaves(st):
            if jnp.issubdtype(leaf.dtype, jnp.floating):
                assert bool(jnp.all(jnp.isfinite(leaf)))
                assert leaf.dtype == dtype
        assert bool(jnp.all((st.percentile >= 0) & (st.percentile <= 1)))
        # Asset 1: mid 0 and NaN are skipped; until the third step no flags and percentile 0.5.
        assert not bool(st.initialised[1, 1]) and not bool(st.tight[1, 1] | st.wide[1, 1])
        np.testing.assert_allclose(st.percentile[1, 1], 0.5)
        empty = spread.init(p, 2, dtype)
        np.testing.assert_allclose(spread.percentile_error_bound(p, empty), 1.0)


def test_jit_vmap_dtype(seed):
    rng = np.random.default_rng(seed)
    p = spread.SpreadEstParams()
    t_len = 8
    frac = np.exp(rng.normal(np.log(2e-4), 0.5, (3, t_len, 2)))
    valid = rng.uniform(size=(3, t_len, 2)) > 0.2
    dts = rng.uniform(0.5, 1.5, (3, t_len))
    for dtype in (jnp.float32, jnp.float64):
        tol = 2e-5 if dtype == jnp.float32 else 1e-12
        batched = book_seq(frac, dts, valid=valid, sigma=1e-4, regime=np.zeros((3, t_len), int), dtype=dtype)
        vm, _ = _run_paths(p, batched, 2, dtype)
        for i in range(3):
            inp = jax.tree_util.tree_map(lambda x: x[i], batched)
            jt, _ = _run(p, inp, 2, dtype)
            for name, a, b in zip(jt._fields, jt, vm):
                assert a.dtype == b.dtype, name
                if jnp.issubdtype(a.dtype, jnp.floating):
                    assert a.dtype == dtype, name
                np.testing.assert_allclose(np.asarray(a), np.asarray(b[i]), rtol=tol, atol=tol * 1e-3, err_msg=name)
        inp = jax.tree_util.tree_map(lambda x: x[:2], inp)
        jt, _ = _run(p, inp, 2, dtype)
        s = spread.init(p, 2, dtype)
        for t in range(2):
            s = spread.update(p, s, *jax.tree_util.tree_map(lambda x: x[t], inp))
        for name, a, b in zip(s._fields, s, jt):
            assert a.dtype == b.dtype, name
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol * 1e-3, err_msg=name)


def _decayed_percentile(x, dts, half_life):
    """Exact decayed empirical fraction of the history <= the current value, every step (one asset):
    observation i has weight w_i prod_{i < j <= t} (1 - w_j), w = 1 - 2^(-dt / half_life)."""
    w = -np.expm1(-math.log(2) * dts / half_life)
    log_keep = np.cumsum(np.log1p(-w))  # sum_{j <= t} log(1 - w_j)
    t_idx = np.arange(len(x))
    # weight of i at time t (i <= t): w_i exp(log_keep[t] - log_keep[i])
    lw = np.log(w)[None, :] + log_keep[:, None] - log_keep[None, :]
    wt = np.where(t_idx[None, :] <= t_idx[:, None], np.exp(np.minimum(lw, 0.0)), 0.0)
    le = x[None, :] <= x[:, None]
    return np.sum(wt * le, axis=1) / np.sum(wt, axis=1)


@pytest.mark.parametrize("half_life", [200.0, 1e12])
def test_percentile_vs_exact_empirical(half_life, seed):
    """Long i.i.d. lognormal spreads at random intervals: the histogram percentile is within the
    current bin's mass of the exact (decayed) empirical percentile at every step; with an infinite
    half-life that is the time-weighted rank (the spec's rank / count at equal intervals)."""
    rng = np.random.default_rng(seed)
    t_len = 3000
    x = np.exp(rng.normal(np.log(3e-4), 0.8, t_len))
    dts = rng.uniform(0.5, 1.5, t_len)
    p = spread.SpreadEstParams(hist_half_life_s=half_life)
    _, st = _run(p, book_seq(x[:, None], dts), 1, jnp.float64)
    pct = np.asarray(st.percentile[:, 0])
    exact = _decayed_percentile(x, dts, half_life)
    if half_life > 1e9:
        # No decay: each spread weighs the time since the previous one (the spec's rank / count
        # when the intervals are equal).
        rank = np.array([np.sum(dts[: t + 1] * (x[: t + 1] <= x[t])) / np.sum(dts[: t + 1]) for t in range(t_len)])
        np.testing.assert_allclose(exact, rank, atol=1e-6)
    bound = np.asarray(jax.vmap(lambda s: spread.percentile_error_bound(p, s))(st)[:, 0])
    # The histogram's bin mass is the exact decayed mass of the bin (the history is not lost).
    edges = spread.bin_edges(p)
    k = np.clip(np.searchsorted(edges[1:-1], x, side="right"), 0, p.n_bins - 1)
    t = t_len - 1
    w = -np.expm1(-math.log(2) * dts / half_life)
    wt = w * np.exp(np.cumsum(np.log1p(-w))[t] - np.cumsum(np.log1p(-w)))
    np.testing.assert_allclose(
        np.asarray(st.hist[t, 0]), np.bincount(k, weights=wt, minlength=p.n_bins), rtol=1e-9, atol=1e-15
    )
    err = np.abs(pct - exact)
    assert np.all(err <= bound + 1e-9), (err.max(), bound[np.argmax(err - bound)])
    # The interpolation does much better than the bound on a smooth law (measured, loose check).
    assert err.mean() < 0.25 * bound.mean()


def test_invalid_params_raise():
    base = spread.SpreadEstParams()
    for field, bad in (
        ("theta0", -1e-4),
        ("beta_vol", np.nan),
        ("regime_mult", np.asarray([1.0, 0.0])),
        ("regime_mult", np.ones((2, 2, 2))),
        ("hist_half_life_s", 0.0),
        ("tight_factor", 0.0),
        ("wide_factor", 0.5),
        ("n_bins", 1),
        ("bin_lo", 0.0),
        ("bin_hi", 1e-7),
    ):
        with pytest.raises(ValueError, match=rf"SpreadEstParams\.{field} = "):
            dataclasses.replace(base, **{field: bad})
