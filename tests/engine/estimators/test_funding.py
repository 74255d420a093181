"""Funding estimator (spec Part 9, engine side): rates, long-term mean, prediction, arbitrage and
expected cost, by hand."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmsim import observation
from mmsim.engine.estimators import funding

P = funding.FundingEstParams(mean_reversion=1e-4, long_run_half_life_s=3600.0)


def fund_seq(dts, rate, ref, nxt, valid, settled=None, settled_rate=None, dtype=jnp.float64):
    """A stacked observation sequence of funding parts: each array (..., T, A), dts (..., T)."""
    rate = np.asarray(rate, float)
    lead, n_a = rate.shape[:-1], rate.shape[-1]
    settled = np.zeros(rate.shape, bool) if settled is None else np.asarray(settled, bool)
    settled_rate = np.zeros(rate.shape) if settled_rate is None else np.asarray(settled_rate, float)
    tmpl = observation.empty(n_a, dtype)
    obs = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, lead + x.shape), tmpl)
    return obs._replace(
        dt=jnp.asarray(dts, dtype),
        funding_rate=jnp.asarray(rate, dtype),
        funding_ref=jnp.asarray(ref, dtype),
        next_funding_s=jnp.asarray(nxt, dtype),
        funding_valid=jnp.asarray(valid),
        funding_settled=jnp.asarray(settled),
        settled_rate=jnp.asarray(settled_rate, dtype),
    )


def _scan(params, seq, n_assets, dtype):
    def body(s, o):
        s = funding.update(params, s, o)
        return s, s

    return jax.lax.scan(body, funding.init(params, n_assets, dtype), seq)


_run = jax.jit(_scan, static_argnums=(2, 3))
_run_paths = jax.jit(jax.vmap(_scan, in_axes=(None, 0, None, None)), static_argnums=(2, 3))


def test_hand_computed():
    """Asset 0: rate 1e-4, a missing update 10 s later, then rate 3e-4 with a settlement at 2.5e-4.
    Asset 1: rate -2e-4 throughout."""
    seq = fund_seq(
        dts=[1.0, 10.0, 5.0],
        rate=[[1e-4, -2e-4], [9.0, 9.0], [3e-4, -2e-4]],
        ref=[[2e-4, -2e-4], [9.0, 9.0], [-5e-4, -1e-4]],
        nxt=[[100.0, 100.0], [1.0, 1.0], [200.0, 200.0]],
        valid=[[True, True], [False, False], [True, True]],
        settled=[[False, False], [True, True], [True, False]],
        settled_rate=[[0.0, 0.0], [7.0, 7.0], [2.5e-4, 7.0]],
    )
    final, st = _run(P, seq, 2, jnp.float64)
    s0, s1 = (jax.tree_util.tree_map(lambda x: x[i], st) for i in (0, 1))
    np.testing.assert_allclose(s0.long_term_mean, [1e-4, -2e-4], rtol=1e-12)  # the first rate sets it
    # The missing update: rates held, the settlement flag ignored, the countdown runs.
    np.testing.assert_array_equal(s1.rate, s0.rate)
    np.testing.assert_array_equal(s1.last_settled_rate, [0.0, 0.0])
    np.testing.assert_allclose(s1.next_settlement_s, [90.0, 90.0])
    # Third: 15 s since the last update of asset 0.
    w0 = 1 - 2 ** (-1 / 3600)
    w = 1 - 2 ** (-15 / 3600)
    ltm = 1e-4 + w / (w0 + w * (1 - w0)) * (3e-4 - 1e-4)
    np.testing.assert_allclose(final.long_term_mean, [ltm, -2e-4], rtol=1e-12)
    np.testing.assert_allclose(final.rate, [3e-4, -2e-4])
    np.testing.assert_allclose(final.ref_rate, [-5e-4, -1e-4])
    np.testing.assert_allclose(final.next_settlement_s, [200.0, 200.0])
    np.testing.assert_allclose(final.last_settled_rate, [2.5e-4, 0.0])
    # Prediction over tau = 200 s at kappa = 1e-4 per second.
    exact = 3e-4 + (ltm - 3e-4) * (1 - math.exp(-0.02))
    np.testing.assert_allclose(funding.predicted_rate(P, final), [exact, -2e-4], rtol=1e-12)
    lin = dataclasses.replace(P, exact_mean_reversion=False)
    np.testing.assert_allclose(
        funding.predicted_rate(lin, final), [3e-4 + 1e-4 * (ltm - 3e-4) * 200, -2e-4], rtol=1e-12
    )
    # Divergence 8e-4 and 1e-4; only the first exceeds 5e-4, signed (higher here).
    np.testing.assert_allclose(funding.divergence(final), [8e-4, 1e-4], rtol=1e-12)
    np.testing.assert_allclose(funding.arbitrage_signal(P, final), [8e-4, 0.0], rtol=1e-12)
    # Cost of 2 long at 100 and 3 short at 50 for half an interval (4 h):
    # 3e-4 * 2 * 100 * 0.5 = +0.03 (long pays a positive rate); -2e-4 * 3 * 50 * 0.5 * -1 = +0.015
    # (short pays a negative rate).
    cost = funding.expected_funding_cost(P, final, jnp.asarray([2.0, -3.0]), jnp.asarray([100.0, 50.0]), 14_400.0)
    np.testing.assert_allclose(cost, [0.03, 0.015], rtol=1e-12)
    cost_rev = funding.expected_funding_cost(P, final, jnp.asarray([-2.0, 3.0]), jnp.asarray([100.0, 50.0]), 14_400.0)
    np.testing.assert_allclose(cost_rev, [-0.03, -0.015], rtol=1e-12)
    flat = funding.expected_funding_cost(P, final, jnp.zeros(2), jnp.asarray([100.0, 50.0]), 1.0)
    np.testing.assert_allclose(flat, 0.0)


def test_prediction_limits():
    s = funding.init(P, 1, jnp.float64)._replace(rate=jnp.asarray([1e-3]), long_term_mean=jnp.asarray([1e-4]))
    for tau, frac in ((0.0, 0.0), (1e9, 1.0)):
        np.testing.assert_allclose(
            funding.predicted_rate(P, s._replace(next_settlement_s=jnp.asarray([tau]))),
            1e-3 + (1e-4 - 1e-3) * frac,
            rtol=1e-12,
        )
    # The spec's linear rule overshoots theta when kappa tau > 1 (here 2): 1e-3 - 2 * 9e-4 < theta.
    lin = dataclasses.replace(P, exact_mean_reversion=False)
    far = s._replace(next_settlement_s=jnp.asarray([20_000.0]))
    assert float(funding.predicted_rate(lin, far)[0]) < 1e-4 < float(funding.predicted_rate(P, far)[0])


def test_countdown_wraps_without_updates():
    seq = fund_seq(
        dts=[1.0, 10.0, 10.0],
        rate=np.zeros((3, 1)),
        ref=np.zeros((3, 1)),
        nxt=[[5.0], [0.0], [0.0]],
        valid=[[True], [False], [False]],
    )
    _, st = _run(P, seq, 1, jnp.float64)
    np.testing.assert_allclose(st.next_settlement_s[:, 0], [5.0, 28_795.0, 28_785.0])
    # Before any update: one interval away, counting down.
    s0 = funding.init(P, 1, jnp.float64)
    np.testing.assert_allclose(s0.next_settlement_s, [28_800.0])


def test_edge_cases_no_nan():
    for dtype in (jnp.float32, jnp.float64):
        seq = fund_seq(
            dts=[1e-9, 1.0, 1.0],
            rate=[[np.nan, 1e-4], [1e-4, np.inf], [0.0, 1e-4]],
            ref=[[0.0, 0.0], [np.nan, 0.0], [0.0, 0.0]],
            nxt=[[1.0, -5.0], [1.0, 1.0], [0.0, 0.0]],
            valid=np.ones((3, 2), bool),
            settled=np.ones((3, 2), bool),
            settled_rate=[[np.nan, 1e-4], [1e-4, 1e-4], [1e-4, 1e-4]],
            dtype=dtype,
        )
        final, st = _run(P, seq, 2, dtype)
        for leaf in jax.tree_util.tree_leaves(st):
            if jnp.issubdtype(leaf.dtype, jnp.floating):
                assert bool(jnp.all(jnp.isfinite(leaf))) and leaf.dtype == dtype
        assert not bool(st.initialised[1, 0])  # NaN rate, then NaN ref: skipped
        assert float(st.next_settlement_s[0, 1]) == 0.0  # a negative countdown is clipped
        for q in (
            funding.predicted_rate(P, final),
            funding.divergence(final),
            funding.arbitrage_signal(P, final),
            funding.expected_funding_cost(P, final, jnp.ones(2, dtype), jnp.ones(2, dtype), 10.0),
        ):
            assert q.dtype == dtype and bool(jnp.all(jnp.isfinite(q)))


def test_jit_vmap_dtype(seed):
    rng = np.random.default_rng(seed)
    t_len = 6
    shape = (3, t_len, 2)
    args = dict(
        dts=rng.uniform(0.5, 2.0, shape[:2]),
        rate=1e-4 * rng.standard_normal(shape),
        ref=1e-4 * rng.standard_normal(shape),
        nxt=rng.uniform(0, 28_800, shape),
        valid=rng.uniform(size=shape) > 0.3,
        settled=rng.uniform(size=shape) > 0.5,
        settled_rate=1e-4 * rng.standard_normal(shape),
    )
    for dtype in (jnp.float32, jnp.float64):
        tol = 2e-5 if dtype == jnp.float32 else 1e-12
        batched = fund_seq(**args, dtype=dtype)
        vm, _ = _run_paths(P, batched, 2, dtype)
        for i in range(3):
            seq = jax.tree_util.tree_map(lambda x: x[i], batched)
            jt, _ = _run(P, seq, 2, dtype)
            for name, a, b in zip(jt._fields, jt, vm):
                assert a.dtype == b.dtype, name
                if jnp.issubdtype(a.dtype, jnp.floating):
                    assert a.dtype == dtype, name
                np.testing.assert_allclose(np.asarray(a), np.asarray(b[i]), rtol=tol, atol=tol * 1e-4, err_msg=name)
        seq = jax.tree_util.tree_map(lambda x: x[:2], seq)
        jt, _ = _run(P, seq, 2, dtype)
        s = funding.init(P, 2, dtype)
        for t in range(2):
            s = funding.update(P, s, jax.tree_util.tree_map(lambda x: x[t], seq))
        for name, a, b in zip(s._fields, s, jt):
            assert a.dtype == b.dtype, name
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol * 1e-4, err_msg=name)


def test_invalid_params_raise():
    for field, bad in (
        ("interval_s", 0.0),
        ("mean_reversion", -1e-5),
        ("long_run_half_life_s", 0.0),
        ("arb_threshold", -1e-4),
        ("interval_s", np.inf),
    ):
        with pytest.raises(ValueError, match=rf"FundingEstParams\.{field} = "):
            dataclasses.replace(P, **{field: bad})
