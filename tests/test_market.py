"""The composed world: every process wired, one step per path, under jit and vmap."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmsim import market, rng
from mmsim.policy import Quote

N_STEPS = 30


def run(mp, n_paths=4, n_steps=N_STEPS, dtype=jnp.float32, quote=None, seed=0, start=0):
    def path(k):
        def body(w, t):
            w, obs, info = market.step(rng.fold_in(k, t), w, mp, 1.0, quote)
            return w, (obs, info)
        return jax.lax.scan(body, market.init(mp, dtype), jnp.arange(n_steps))

    return jax.jit(jax.vmap(path))(rng.path_keys(rng.key(seed), start, n_paths))


@pytest.fixture(scope="module")
def two_assets():
    return market.default_params(n_assets=2)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_world_runs_finite_and_keeps_dtype(two_assets, dtype):
    w, (obs, info) = run(two_assets, dtype=dtype)
    for leaf in jax.tree_util.tree_leaves((w, obs, info)):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            assert leaf.dtype == dtype
            assert bool(jnp.all(jnp.isfinite(leaf)))
    assert obs.mid.shape == (4, N_STEPS, 2)
    assert bool(jnp.all(obs.best_bid < obs.best_ask))
    assert bool(jnp.all(obs.book_valid))
    # No quote, no fills.
    assert float(jnp.sum(obs.fill_bid_size) + jnp.sum(obs.fill_ask_size)) == 0.0


def test_same_key_same_path_and_chunk_invariance(two_assets):
    _, (a, _) = run(two_assets, n_paths=4)
    _, (b, _) = run(two_assets, n_paths=4)
    np.testing.assert_array_equal(np.asarray(a.mid), np.asarray(b.mid))
    _, (c, _) = run(two_assets, n_paths=2, start=2)   # paths 2 and 3 alone
    np.testing.assert_array_equal(np.asarray(a.mid)[2:], np.asarray(c.mid))
    assert not np.allclose(np.asarray(a.mid)[0], np.asarray(a.mid)[1])


def test_scheduled_shock_moves_mid_and_forces_extreme():
    base = market.default_params()
    shocked = dataclasses.replace(base, shock_time_s=10.5, shock_return=-0.03, shock_regime=3)
    _, (o0, i0) = run(base, dtype=jnp.float64)
    _, (o1, i1) = run(shocked, dtype=jnp.float64)
    # Identical draws: before the shock the paths agree; in the shock's step the log mids differ by
    # exactly the shock; from the next step on the regime is Extreme.
    np.testing.assert_array_equal(np.asarray(o0.mid)[:, :10], np.asarray(o1.mid)[:, :10])
    d = np.log(np.asarray(o1.mid)[:, 10]) - np.log(np.asarray(o0.mid)[:, 10])
    np.testing.assert_allclose(d, -0.03, atol=1e-12)
    assert np.all(np.asarray(i1.regime)[:, 11] == 3)


def test_quotes_at_the_touch_get_filled(two_assets):
    """A quote one tick inside the spread is first in line: heavy flow fills it."""
    mid = 60_000.0
    q = Quote(jnp.full(2, mid - 5.0), jnp.full(2, mid + 5.0), jnp.full(2, 0.01), jnp.full(2, 0.01),
              jnp.ones(2, bool), jnp.ones(2, bool))
    _, (obs, _) = run(two_assets, n_paths=8, n_steps=200, quote=q)
    fb = np.asarray(obs.fill_bid_size)
    assert fb.sum() > 0 and np.all(fb <= 0.01 + 1e-7)
    px_ = np.asarray(obs.fill_bid_price)
    assert np.all((px_ == 0) | np.isclose(px_, mid - 5.0))


def test_bad_market_config_is_refused():
    mp = market.default_params()
    with pytest.raises(ValueError, match=r"MarketParams.shock_regime = 7"):
        dataclasses.replace(mp, shock_regime=7)
    with pytest.raises(ValueError, match=r"MarketParams.correlation"):
        dataclasses.replace(mp, n_assets=3)
