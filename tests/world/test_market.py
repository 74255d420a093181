"""The composed world: every process wired, one step per path, under jit and vmap.

Compiling the world is most of this module's time (about 10 s a program on a 2-core CPU, running
it a few ms), so each program is compiled once, ahead of time, and shared by the tests that need
it: the two-asset world per dtype (4 paths of ``N_STEPS`` steps, not quoting) and the two-asset
float32 world with a resting quote as an argument (``QUOTE_PATHS`` paths of ``QUOTE_STEPS``).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmsim import rng
from mmsim.observation import Quote
from mmsim.world import market
from mmsim.world.processes import price as px

N_STEPS = 30  # steps of 1 s of the plain world
QUOTE_PATHS = 8  # paths of the quoting world
QUOTE_STEPS = 200  # steps of 1 s of the quoting world
MID = 60_000.0  # initial mid of default_params, quote currency


def keys(n_paths=4, start=0, seed=0):
    """Keys of paths ``start .. start + n_paths - 1`` of run ``seed``."""
    return rng.path_keys(rng.key(seed), start, n_paths)


def quote(bid, ask, size, active):
    """The same (A = 2) quote on both assets; prices in quote currency, sizes in base units."""
    return Quote(
        jnp.full(2, bid),
        jnp.full(2, ask),
        jnp.full(2, size),
        jnp.full(2, size),
        jnp.full(2, active),
        jnp.full(2, active),
    )


#: Not quoting, as an argument of the quoting world: what ``market.step`` builds for ``quote=None``.
NO_QUOTE = quote(0.0, 0.0, 0.0, False)


def everything(w, obs, info):
    """What a compiled world returns by default: (final worlds, (observations, infos))."""
    return w, (obs, info)


def compile_world(mp, dtype=jnp.float32, n_paths=4, n_steps=N_STEPS, quoting=False, report=everything):
    """``mp``'s world, ``n_paths`` vmapped paths of ``n_steps`` steps of 1 s, compiled once.

    Returns ``f(keys)`` (not quoting: ``quote=None``), or ``f(keys, quote)`` when ``quoting``
    (the resting quote of every step, shaped like :data:`NO_QUOTE`); both give ``report(final
    world, observations, infos)`` stacked over paths (and steps). A ``report`` of a few fields lets
    XLA drop what feeds nothing else, which compiles faster. Compiled for these shapes only: a call
    with others fails instead of compiling again.
    """

    def path(k, q):
        def body(w, t):
            w, obs, info = market.step(rng.fold_in(k, t), w, mp, 1.0, q)
            return w, (obs, info)

        w, (obs, info) = jax.lax.scan(body, market.init(mp, dtype), jnp.arange(n_steps))
        return report(w, obs, info)

    if quoting:
        return jax.jit(jax.vmap(path, in_axes=(0, None))).lower(keys(n_paths), NO_QUOTE).compile()
    return jax.jit(jax.vmap(lambda k: path(k, None))).lower(keys(n_paths)).compile()


@pytest.fixture(scope="module")
def two_assets():
    return market.default_params(n_assets=2)


@pytest.fixture(scope="module")
def world(two_assets):
    """``world(dtype)``: the two-asset world, 4 paths of ``N_STEPS`` steps, not quoting (compiled
    on first use, once per dtype)."""
    compiled = {}

    def get(dtype):
        if dtype not in compiled:
            compiled[dtype] = compile_world(two_assets, dtype)
        return compiled[dtype]

    return get


@pytest.fixture(scope="module")
def quoting_world(two_assets):
    """The two-asset float32 world, ``QUOTE_PATHS`` paths of ``QUOTE_STEPS`` steps, the quote an
    argument; reports (mid, bid fill size, bid fill price)."""
    return compile_world(
        two_assets,
        jnp.float32,
        QUOTE_PATHS,
        QUOTE_STEPS,
        quoting=True,
        report=lambda w, obs, info: (obs.mid, obs.fill_bid_size, obs.fill_bid_price),
    )


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_world_runs_finite_and_keeps_dtype(world, dtype):
    w, (obs, info) = world(dtype)(keys())
    for leaf in jax.tree_util.tree_leaves((w, obs, info)):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            assert leaf.dtype == dtype
            assert bool(jnp.all(jnp.isfinite(leaf)))
    assert obs.mid.shape == (4, N_STEPS, 2)
    assert bool(jnp.all(obs.best_bid < obs.best_ask))
    assert bool(jnp.all(obs.book_valid))
    # No quote, no fills.
    assert float(jnp.sum(obs.fill_bid_size) + jnp.sum(obs.fill_ask_size)) == 0.0


def test_same_key_same_path_and_chunk_invariance(world, quoting_world):
    f = world(jnp.float32)
    _, (a, _) = f(keys(4))
    _, (b, _) = f(keys(4))
    np.testing.assert_array_equal(np.asarray(a.mid), np.asarray(b.mid))
    # Paths 2 and 3 in another chunk: of another size (8, paths 2 .. 9), from another start, in
    # another compiled program (longer, the quote an argument, here not quoting).
    c_mid, _, _ = quoting_world(keys(QUOTE_PATHS, start=2), NO_QUOTE)
    np.testing.assert_array_equal(np.asarray(a.mid)[2:], np.asarray(c_mid)[:2, :N_STEPS])
    assert not np.allclose(np.asarray(a.mid)[0], np.asarray(a.mid)[1])


def test_scheduled_shock_moves_mid_and_forces_extreme(two_assets, world):
    shocked = dataclasses.replace(two_assets, shock_time_s=10.5, shock_return=-0.03, shock_regime=3)
    _, (o0, _) = world(jnp.float64)(keys())
    shocked_world = compile_world(shocked, jnp.float64, report=lambda w, obs, info: (obs.mid, info.regime))
    mid1, regime1 = shocked_world(keys())
    # Identical draws: before the shock the paths agree; in the shock's step the log mids differ by
    # exactly the shock (on every asset); from the next step on the regime is Extreme.
    np.testing.assert_array_equal(np.asarray(o0.mid)[:, :10], np.asarray(mid1)[:, :10])
    d = np.log(np.asarray(mid1)[:, 10]) - np.log(np.asarray(o0.mid)[:, 10])
    np.testing.assert_allclose(d, -0.03, atol=1e-12)
    assert np.all(np.asarray(regime1)[:, 11] == 3)


def test_quotes_at_the_touch_get_filled(quoting_world):
    """A quote one tick inside the spread is first in line: heavy flow fills it."""
    q = quote(MID - 5.0, MID + 5.0, 0.01, True)
    _, fill_bid_size, fill_bid_price = quoting_world(keys(QUOTE_PATHS), q)
    fb = np.asarray(fill_bid_size)
    assert fb.sum() > 0 and np.all(fb <= 0.01 + 1e-7)
    px_ = np.asarray(fill_bid_price)
    assert np.all((px_ == 0) | np.isclose(px_, MID - 5.0))


def test_bad_market_config_is_refused():
    mp = market.default_params()
    with pytest.raises(ValueError, match=r"MarketParams.shock_regime = 7"):
        dataclasses.replace(mp, shock_regime=7)
    with pytest.raises(ValueError, match=r"MarketParams.correlation"):
        dataclasses.replace(mp, n_assets=3)


@pytest.fixture(scope="module")
def tick_market(two_assets):
    book = dataclasses.replace(
        two_assets.book, model="tick", refill_rate=3.0, pull_band=3.0, pull_rate=0.3, pull_rate_per_tick=0.2
    )
    return dataclasses.replace(two_assets, book=book)


def test_tick_book_world_trades_on_the_grid(tick_market):
    """The tick book: prices on the grid, never crossed, the displayed touch is the book's queue,
    the mid stands still in some seconds and follows the efficient price over the run."""
    f = compile_world(
        tick_market,
        jnp.float64,
        n_paths=4,
        n_steps=120,
        report=lambda w, obs, info: (
            obs.best_bid,
            obs.best_ask,
            obs.bid_size,
            w.book.q_bid[0],
            px.mid(w.price, tick_market.price),
        ),
    )
    bid, ask, bid_size, q_touch, x = (np.asarray(a) for a in f(keys()))
    tick = float(np.asarray(tick_market.spread.tick))
    np.testing.assert_allclose(bid / tick, np.round(bid / tick), atol=1e-6)
    np.testing.assert_allclose(ask / tick, np.round(ask / tick), atol=1e-6)
    assert np.all(ask - bid > 0.5 * tick)
    np.testing.assert_array_equal(bid_size[:, -1], q_touch)
    still = np.mean(np.diff(0.5 * (bid + ask), axis=1) == 0)
    assert 0.0 < still < 1.0
    # Near the efficient price at the end (the default's sigma moves it ~60 ticks per sqrt(s); the
    # repricing rate grows with the excess, 0.2 per s per tick, so the lag stays a few seconds' move).
    gap_ticks = np.abs(0.5 * (bid[:, -1] + ask[:, -1]) - x) / tick
    assert np.all(gap_ticks < 30), gap_ticks


def test_tick_book_fills_a_quote_at_the_touch_within_its_size(tick_market):
    """A small quote at the initial touch: it fills (from flow beyond the queue ahead, or taken
    when stale), never beyond its size."""
    rep = lambda w, obs, info: (obs.fill_bid_size, obs.best_bid)  # noqa: E731
    f = compile_world(tick_market, jnp.float32, QUOTE_PATHS, 60, quoting=True, report=rep)
    tick = float(np.asarray(tick_market.spread.tick))
    w0 = market.init(tick_market, jnp.float32)
    b0 = float(np.asarray(w0.book.bid)[0]) * tick
    q = quote(b0, b0 + tick, 0.01, True)
    fb, bid = (np.asarray(a) for a in f(keys(QUOTE_PATHS), q))
    assert np.all(fb <= 0.01 + 1e-7) and np.all(fb >= 0)
    assert fb.sum() > 0
