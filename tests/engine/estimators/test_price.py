"""Price estimator (spec Part 1, engine side): returns, drift, jump detection, masks, dtypes."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmsim import observation
from mmsim.engine.estimators import price

LN2 = math.log(2.0)


def book_seq(mids, dts, valid=None, dtype=jnp.float64):
    """A stacked observation sequence: mids (..., T, A), intervals (..., T) seconds, valid like mids."""
    mids = np.asarray(mids, float)
    lead, n_a = mids.shape[:-1], mids.shape[-1]
    valid = np.ones(mids.shape, bool) if valid is None else np.asarray(valid, bool)
    tmpl = observation.empty(n_a, dtype)
    seq = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, lead + x.shape), tmpl)
    return seq._replace(
        mid=jnp.asarray(mids, dtype),
        dt=jnp.asarray(dts, dtype),
        t=jnp.asarray(np.cumsum(dts, axis=-1), dtype),
        book_valid=jnp.asarray(valid),
    )


def _scan(params, seq, n_assets, dtype):
    def body(s, o):
        s = price.update(params, s, o)
        return s, s

    return jax.lax.scan(body, price.init(params, n_assets, dtype), seq)


_scan_jit = jax.jit(_scan, static_argnums=(2, 3))
_scan_vmap = jax.jit(jax.vmap(_scan, in_axes=(None, 0, None, None)), static_argnums=(2, 3))


def run(params, seq, n_assets, dtype=jnp.float64):
    """Scan the estimator over a stacked observation sequence; returns (final, stacked states)."""
    return _scan_jit(params, seq, n_assets, dtype)


def run_paths(params, seq, n_assets, dtype=jnp.float64):
    """``run`` vmapped over a leading path axis of ``seq``."""
    return _scan_vmap(params, seq, n_assets, dtype)


def reference(params, mids, dts, valid):
    """Plain numpy/Python version of the documented update, one asset."""
    hl_d, hl_v, k = params.drift_half_life_s, params.ret_var_half_life_s, params.jump_threshold
    st = dict(mid=0.0, log=0.0, drift=0.0, var=0.0, wsum=0.0, n=0, since=0.0, last=0.0, jump=False)
    warm = 1 - 2 ** (-params.jump_min_s / hl_v)
    out = []
    for m, dt_obs, ok in zip(mids, dts, valid):
        ok = ok and np.isfinite(m) and m > 0
        dt = st["since"] + dt_obs
        complete = dt >= params.return_window_s * (1 - 1e-3)  # the return spans the window
        if ok and st["n"] > 0 and complete:
            r = math.log(m) - st["log"]
            w = 1 - 2 ** (-dt / hl_d)
            st["drift"] = (1 - w) * st["drift"] + w * r / dt
            vb = max(st["var"], params.min_ret_var)
            active = st["n"] - 1 >= params.jump_min_obs and st["wsum"] >= warm
            jump = active and abs(r) > k * math.sqrt(vb * dt)
            x = r * r / dt
            if params.winsorize_jumps and jump:
                x = k * k * vb
            if params.winsorize_jumps or not jump:
                wv = 1 - 2 ** (-dt / hl_v)
                st["wsum"] = st["wsum"] + wv * (1 - st["wsum"])
                st["var"] += wv / st["wsum"] * (x - st["var"])
            st["last"], st["jump"] = r, jump
        if ok and (complete or st["n"] == 0):  # the next return starts here
            st["log"], st["since"] = math.log(m), 0.0
        else:
            st["since"] = dt
        if ok:
            st["mid"], st["n"] = m, st["n"] + 1
        out.append(dict(st))
    return out


def test_hand_computed_first_steps():
    """Three valid mids 100, 101, 99 at dt = 1 s, 2 s: worked by hand."""
    p = price.PriceEstParams(drift_half_life_s=10.0, ret_var_half_life_s=5.0)
    seq = book_seq([[100.0], [101.0], [99.0]], [1.0, 1.0, 2.0])
    final, states = run(p, seq, 1)
    # First observation: the mid only.
    assert float(states.mid[0, 0]) == 100.0 and not bool(states.fresh[0, 0])
    assert float(states.drift[0, 0]) == 0.0 and float(states.ret_var[0, 0]) == 0.0
    # Second: r1 = ln(1.01) over 1 s.
    r1 = math.log(1.01)
    w1 = 1 - 2 ** (-1 / 10)
    np.testing.assert_allclose(states.last_ret[1, 0], r1, rtol=1e-12)
    np.testing.assert_allclose(states.drift[1, 0], w1 * r1, rtol=1e-13)
    np.testing.assert_allclose(states.ret_var[1, 0], r1**2, rtol=1e-13)  # first return sets it
    # Third: r2 = ln(99/101) over 2 s.
    r2 = math.log(99 / 101)
    w2 = 1 - 2 ** (-2 / 10)
    np.testing.assert_allclose(final.drift[0], (1 - w2) * w1 * r1 + w2 * r2 / 2, rtol=1e-13)
    v1 = 1 - 2 ** (-1 / 5)
    v2 = 1 - 2 ** (-2 / 5)
    wsum = v1 + v2 * (1 - v1)
    np.testing.assert_allclose(final.ret_var[0], r1**2 + v2 / wsum * (r2**2 / 2 - r1**2), rtol=1e-13)
    assert int(final.n_obs[0]) == 3 and bool(final.initialised[0])
    np.testing.assert_allclose(final.ret_dt[0], 2.0)


@pytest.mark.parametrize("window", [0.0, 1.0])
@pytest.mark.parametrize("winsorize", [False, True])
def test_matches_reference_with_masks_and_jumps(winsorize, window, seed):
    rng = np.random.default_rng(seed)
    t_len = 300
    dts = rng.uniform(0.2, 2.0, t_len)
    r = 1e-4 * np.sqrt(dts) * rng.standard_normal(t_len)
    r[[120, 121, 200]] = [5e-3, -4e-3, 6e-3]  # jumps, two in a row
    mids = 30_000.0 * np.exp(np.cumsum(r))
    valid = rng.uniform(size=t_len) > 0.2
    valid[[120, 121, 200]] = True
    mids[~valid & (rng.uniform(size=t_len) < 0.5)] = np.nan  # junk behind an off mask
    p = price.PriceEstParams(jump_min_obs=20, winsorize_jumps=winsorize, return_window_s=window)
    final, states = run(p, book_seq(mids[:, None], dts, valid[:, None]), 1)
    ref = reference(p, mids, dts, valid)
    for name, key in (("drift", "drift"), ("ret_var", "var"), ("last_ret", "last"), ("mid", "mid")):
        np.testing.assert_allclose(
            np.asarray(getattr(states, name)[:, 0]), [s[key] for s in ref], rtol=1e-10, atol=1e-18, err_msg=name
        )
    np.testing.assert_array_equal(np.asarray(states.is_jump[:, 0]), [s["jump"] for s in ref])
    np.testing.assert_array_equal(np.asarray(states.n_obs[:, 0]), [s["n"] for s in ref])
    if window > 0:
        # Every return spans the window at least, from the mid where it started; the returns
        # holding the jumps are found.
        fresh = np.asarray(states.fresh[:, 0])
        assert fresh.sum() > 100 and np.all(np.asarray(states.ret_dt[fresh, 0]) >= window * (1 - 1e-3))
        holding = [np.flatnonzero(fresh & (np.arange(t_len) >= i))[0] for i in (120, 200)]
        assert all(bool(states.is_jump[h, 0]) for h in holding)
        return
    # The jumps are found; a jump right after a jump too (it was not added to the variance).
    assert bool(states.is_jump[120, 0]) and bool(states.is_jump[121, 0]) and bool(states.is_jump[200, 0])
    # Returns span the invalid observations in between.
    i = np.flatnonzero(valid)
    j = i[np.argmax(np.diff(i) > 1)]  # a valid index followed by an invalid one
    nxt = i[i > j][0]
    np.testing.assert_allclose(states.ret_dt[nxt, 0], dts[j + 1 : nxt + 1].sum(), rtol=1e-12)
    np.testing.assert_allclose(states.last_ret[nxt, 0], np.log(mids[nxt] / mids[j]), rtol=1e-10)


def test_masked_observation_leaves_state():
    p = price.PriceEstParams()
    seq = book_seq([[100.0, 50.0], [101.0, 0.0]], [1.0, 1.0], valid=[[True, True], [True, False]])
    final, states = run(p, seq, 2)
    s1 = jax.tree_util.tree_map(lambda x: x[0], states)
    for f in ("mid", "log_mid", "last_ret", "drift", "ret_var", "n_obs", "initialised", "is_jump"):
        np.testing.assert_array_equal(getattr(final, f)[1], getattr(s1, f)[1], err_msg=f)
    assert not bool(final.fresh[1]) and bool(final.fresh[0])
    np.testing.assert_allclose(final.since_s[1], 1.0)


def test_edge_cases_no_nan():
    """Zero, negative, NaN and infinite mids; a tiny dt; nothing valid at all."""
    for dtype in (jnp.float32, jnp.float64):
        mids = [
            [0.0, 100.0],
            [np.nan, 100.0],
            [-1.0, 100.0],
            [np.inf, 100.0],
            [100.0, 101.0],
            [100.0, 150.0],
            [100.0, 100.0],
        ]
        dts = [1.0, 1.0, 1.0, 1.0, 1e-12, 1e-9, 1.0]
        final, states = run(price.PriceEstParams(), book_seq(mids, dts, dtype=dtype), 2, dtype)
        for leaf in jax.tree_util.tree_leaves(states):
            if jnp.issubdtype(leaf.dtype, jnp.floating):
                assert bool(jnp.all(jnp.isfinite(leaf)))
        assert int(final.n_obs[0]) == 3 and int(final.n_obs[1]) == 7
        empty, _ = run(price.PriceEstParams(), book_seq(mids, dts, np.zeros((7, 2), bool), dtype), 2, dtype)
        assert not bool(jnp.any(empty.initialised)) and float(jnp.max(jnp.abs(empty.ret_var))) == 0.0


def test_jit_vmap_dtype(seed):
    """Eager (op by op) steps, a jitted scan and a vmapped jitted scan agree; dtypes are kept."""
    rng = np.random.default_rng(seed)
    p = price.PriceEstParams(jump_min_obs=3)
    t_len = 12
    mids = 100 * np.exp(np.cumsum(1e-3 * rng.standard_normal((3, t_len, 2)), axis=1))
    mids[:, 8, 0] *= 1.05  # a jump
    valid = rng.uniform(size=(3, t_len, 2)) > 0.1
    dts = rng.uniform(0.5, 1.5, (3, t_len))
    for dtype in (jnp.float32, jnp.float64):
        tol = 1e-5 if dtype == jnp.float32 else 1e-12
        batched = book_seq(mids, dts, valid, dtype)
        vm, _ = run_paths(p, batched, 2, dtype)
        for i in range(3):
            inp = jax.tree_util.tree_map(lambda x: x[i], batched)
            jt, _ = run(p, inp, 2, dtype)
            for name, a, b in zip(jt._fields, jt, vm):
                assert a.dtype == b.dtype, name
                if jnp.issubdtype(a.dtype, jnp.floating):
                    assert a.dtype == dtype, name
                np.testing.assert_allclose(np.asarray(a), np.asarray(b[i]), rtol=tol, atol=0, err_msg=name)
        # Op by op (eager) over the first 2 steps of the last path, against the jitted scan.
        inp = jax.tree_util.tree_map(lambda x: x[:2], inp)
        jt, _ = run(p, inp, 2, dtype)
        s = price.init(p, 2, dtype)
        for t in range(2):
            s = price.update(p, s, jax.tree_util.tree_map(lambda x: x[t], inp))
        for name, a, b in zip(s._fields, s, jt):
            assert a.dtype == b.dtype, name
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=0, err_msg=name)


def test_statistics_gaussian_returns(seed):
    """On Gaussian returns with drift mu and volatility sigma: the drift EWMA is unbiased for mu,
    ret_var for E[r^2] (means over paths within 4 SE), their spreads over paths match the EWMA
    closed forms, and the count of false jumps matches its expectation given the estimates."""
    n_paths, t_len, sigma, mu = 400, 1200, 2e-4, 5e-5
    rng = np.random.default_rng(seed)
    r = mu + sigma * rng.standard_normal((n_paths, t_len))
    mids = 1000.0 * np.exp(np.cumsum(r, axis=1))
    batched = book_seq(mids[:, :, None], np.ones((n_paths, t_len)))
    # No jump exclusion (threshold out of reach): plain EWMAs.
    p = price.PriceEstParams(drift_half_life_s=50.0, ret_var_half_life_s=50.0, jump_threshold=1e6)
    final, _ = run_paths(p, batched, 1)
    d = np.asarray(final.drift[:, 0])
    v = np.asarray(final.ret_var[:, 0])
    assert abs(d.mean() - mu) < 4 * d.std() / math.sqrt(n_paths), (d.mean(), mu)
    assert abs(v.mean() - (mu**2 + sigma**2)) < 4 * v.std() / math.sqrt(n_paths), (v.mean(), sigma**2)
    # Spread of a stationary EWMA with per-step weight w (Gaussian returns):
    # Var(ret_var) ~ 2 sigma^4 w / (2 - w) (+ the small mu^2 terms), Var(drift) = sigma^2 w / (2 - w).
    w = 1 - 2 ** (-1 / 50)
    sd_v = math.sqrt((2 * sigma**4 + 4 * mu**2 * sigma**2) * w / (2 - w))
    assert abs(v.std() - sd_v) < 4 * sd_v / math.sqrt(2 * n_paths), (v.std(), sd_v)
    sd_d = sigma * math.sqrt(w / (2 - w))
    assert abs(d.std() - sd_d) < 4 * sd_d / math.sqrt(2 * n_paths), (d.std(), sd_d)
    # False jumps at the default threshold 4: each tested return is flagged with probability
    # P(|mu + sigma Z| > 4 sqrt(v_before)), v_before independent of the return; the count of these
    # independent Bernoullis is within 4 sqrt(expectation) (its variance is below its mean).
    p4 = dataclasses.replace(p, jump_threshold=4.0)
    _, states = run_paths(p4, batched, 1)
    v_before = np.asarray(states.ret_var[:, :-1, 0])
    tested = (np.arange(1, t_len) - 1 >= p4.jump_min_obs)[None, :]
    thr = 4.0 * np.sqrt(np.maximum(v_before, p4.min_ret_var))
    from scipy.special import ndtr

    prob = ndtr((-thr - mu) / sigma) + ndtr((mu - thr) / sigma)
    expect = float(np.sum(np.where(tested, prob, 0.0)))
    n_jumps = int(np.asarray(states.is_jump[:, 1:, 0] & states.fresh[:, 1:, 0]).sum())
    assert expect > 10
    assert abs(n_jumps - expect) < 4 * math.sqrt(expect), (n_jumps, expect)


def test_mid_only_tracks_the_last_valid_mid():
    """returns=False: mid and initialised follow the valid books; nothing else moves."""
    p = price.PriceEstParams(returns=False)
    mids = [[100.0, 0.0], [101.0, np.nan], [99.0, 50.0]]
    final, states = run(p, book_seq(mids, [1.0, 2.0, 1.0], valid=[[True, True], [False, True], [True, True]]), 2)
    np.testing.assert_array_equal(np.asarray(states.mid), [[100.0, 0.0], [100.0, 0.0], [99.0, 50.0]])
    np.testing.assert_array_equal(np.asarray(states.initialised), [[True, False], [True, False], [True, True]])
    empty = price.init(p, 2, jnp.float64)
    for f in price.PriceEst._fields:
        if f not in ("mid", "initialised"):
            np.testing.assert_array_equal(getattr(final, f), getattr(empty, f), err_msg=f)
    with pytest.raises(ValueError, match="returns"):
        price.PriceEstParams(returns=0)


def test_invalid_params_raise():
    base = price.PriceEstParams()
    for field, bad in (
        ("drift_half_life_s", 0.0),
        ("ret_var_half_life_s", -1.0),
        ("jump_threshold", 0.0),
        ("min_ret_var", -1e-9),
        ("jump_min_obs", 0),
        ("drift_half_life_s", np.nan),
    ):
        with pytest.raises(ValueError, match=rf"PriceEstParams\.{field} = "):
            dataclasses.replace(base, **{field: bad})


def test_the_variance_does_not_depend_on_the_observation_cadence():
    """A Brownian log price (sigma 1e-4 per sqrt s) on a 0.5 grid at 60,000, observed every 1 s
    and every 0.05 s for 20 minutes: with returns measured over at least a second, both give the
    diffusion's variance plus the grid's rounding noise over a second (64 paths; 4 standard
    errors of the mean over paths). Returns of single 0.05-s updates (``return_window_s = 0``)
    carry that noise twenty times over, as its exact law says."""
    rng = np.random.default_rng(11)
    n_p, fine, horizon, sigma = 64, 0.05, 1200.0, 1e-4
    n = int(horizon / fine)
    x = np.cumsum(sigma * np.sqrt(fine) * rng.standard_normal((n_p, n)), axis=1)
    mids = np.round(60_000.0 * np.exp(x) / 0.5) * 0.5
    est = {}
    for name, every, window in (("1 s", 20, 1.0), ("0.05 s", 1, 1.0), ("0.05 s, no window", 1, 0.0)):
        m = mids[:, every - 1 :: every]
        seq = book_seq(m[:, :, None], np.full(m.shape, fine * every), None)
        p = price.PriceEstParams(return_window_s=window)
        final, _ = run_paths(p, seq, 1)
        est[name] = np.asarray(final.ret_var[:, 0])
    # The grid's rounding adds 2 (tick / mid)^2 / 12 to a 1-s return's variance (0.1 %).
    exact = sigma**2 + 2 * (0.5 / 60_000.0) ** 2 / 12
    for name in ("1 s", "0.05 s"):
        v = est[name]
        se = v.std(ddof=1) / np.sqrt(n_p)
        assert abs(v.mean() - exact) < 4 * se, (name, v.mean(), se)
    d = est["1 s"] - est["0.05 s"]
    assert abs(d.mean()) < 4 * d.std(ddof=1) / np.sqrt(n_p)
    v = est["0.05 s, no window"]
    assert abs(v.mean() - (sigma**2 + 2 * (0.5 / 60_000.0) ** 2 / 12 / fine)) < 4 * v.std(ddof=1) / np.sqrt(n_p)
