"""The paper gateway's order latency: until a new quote reaches the venue the order it replaces
rests and takes the trades; the new one joins its queue on arrival, or keeps the old one's place
when it repeats the price; a zero latency is the plain rule bit for bit; the empirical law's draws
are seeded and survive a snapshot."""

from __future__ import annotations

import numpy as np
import pytest

from mmsim import config, live
from mmsim.live.paper import Latency, Resting, latent_fills, paper_fills
from tests.live.test_replay import synthetic_feed

SELL = np.int8(-1)


def trades(*rows):
    """``(time s, price, qty, side)`` rows as the four arrays."""
    t, p, q, s = (np.asarray(x) for x in zip(*rows))
    return p.astype(float), q.astype(float), s.astype(np.int8), t.astype(float)


def test_before_arrival_the_old_order_takes_the_trades_and_after_it_the_new():
    # Our old bid rests at 99.9 first in line (queue 0) with 1.0 left; the new bid of 0.5 at 100.0
    # (the touch, 2.0 displayed ahead) arrives at t = 0.3.
    tp, tq, ts, tt = trades((0.1, 99.9, 0.4, -1), (0.5, 100.0, 2.3, -1))
    old = Resting(99.9, 0.0)
    filled, vwap, after, left = latent_fills(1, 100.0, 0.5, True, old, 1.0, 100.0, 2.0, tp, tq, ts, tt, 0.3)
    # 0.4 on the old order at 99.9, then 0.3 of the 2.3 sold at 100.0 reach past the 2.0 ahead.
    assert filled == pytest.approx(0.7) and vwap == pytest.approx((0.4 * 99.9 + 0.3 * 100.0) / 0.7)
    assert after == Resting(100.0, 0.0) and left == pytest.approx(0.2)
    # Without the latency the new bid alone sees both trades: the first is through nothing of
    # ours (99.9 < 100.0 is a trade-through), so it fills whole.
    assert paper_fills(1, 100.0, 0.5, True, old, 100.0, 2.0, tp, tq, ts)[0] == pytest.approx(0.5)


def test_a_repeated_price_keeps_its_place_in_the_queue_through_the_latency():
    tp, tq, ts, tt = trades((0.1, 100.0, 1.5, -1), (0.6, 100.0, 1.0, -1))
    old = Resting(100.0, 2.0)  # 2.0 ahead of us at 100.0
    filled, vwap, after, left = latent_fills(1, 100.0, 1.0, True, old, 1.0, 100.0, 5.0, tp, tq, ts, tt, 0.3)
    # 1.5 then 1.0 traded at our price: 0.5 past the 2.0 ahead, on the same order (amended to 1.0).
    assert filled == pytest.approx(0.5) and vwap == pytest.approx(100.0) and after == Resting(100.0, 0.0)
    assert left == pytest.approx(0.5)


def test_an_old_order_filled_whole_before_arrival_leaves_the_new_one_to_join_the_back():
    tp, tq, ts, tt = trades((0.1, 99.8, 0.01, -1), (0.5, 100.0, 1.0, -1))
    filled, vwap, after, _ = latent_fills(
        1, 100.0, 0.5, True, Resting(100.0, 0.0), 0.3, 100.0, 2.0, tp, tq, ts, tt, 0.3
    )
    # Traded through at 99.8: the old 0.3 fills; the new 0.5 joins behind 2.0 and the 1.0 does not reach it.
    assert filled == pytest.approx(0.3) and vwap == pytest.approx(100.0) and after == Resting(100.0, 1.0)


def test_a_withdrawn_quote_cancels_the_old_order_on_arrival():
    tp, tq, ts, tt = trades((0.1, 100.0, 0.5, -1), (0.6, 99.0, 0.5, -1))
    filled, _, after, left = latent_fills(1, 0.0, 0.0, False, Resting(100.0, 0.0), 1.0, 100.0, 2.0, tp, tq, ts, tt, 0.3)
    assert filled == pytest.approx(0.5) and after == Resting() and left == 0.0  # the through at 0.6 is too late


def test_the_latency_law_is_validated_and_its_draws_seeded(tmp_path):
    with pytest.raises(ValueError, match=r"\[0, 60\)"):
        Latency(constant_s=-0.01)
    with pytest.raises(ValueError, match="not both"):
        Latency(constant_s=0.01, samples_s=(0.02,))
    f = tmp_path / "lat.txt"
    f.write_text("# round trips, ms\n12\n30.5\n\n250\n")
    lat = Latency.from_file(f, seed=3)
    assert lat.samples_s == (0.012, 0.0305, 0.25)
    g1, g2 = np.random.default_rng(3), np.random.default_rng(3)
    draws = [lat.draw(g1) for _ in range(50)]
    assert draws == [lat.draw(g2) for _ in range(50)] and set(draws) == set(lat.samples_s)
    f.write_text("12\nfast\n")
    with pytest.raises(ValueError, match="line 2: 'fast'"):
        Latency.from_file(f)


@pytest.fixture(scope="module")
def engine_and_feed():
    _, _, ep, _ = config.build(config.compose(["experiment=baseline", "engine.warmup_s=20", "account.max_inventory=2"]))
    return ep, synthetic_feed()


def test_a_zero_latency_is_the_plain_rule_and_a_latency_moves_the_fills(engine_and_feed):
    ep, feed = engine_and_feed
    plain = live.replay(ep, feed)
    zero = live.replay(ep, feed, latency=Latency(constant_s=0.0))
    assert plain.journal.equals(zero.journal)
    slow = live.replay(ep, feed, latency=Latency(constant_s=0.3))
    assert slow.metrics["paper_latency"] == {"law": "constant", "constant_s": 0.3}
    fills = lambda r: (r.journal["fill_bid"] > 0).sum() + (r.journal["fill_ask"] > 0).sum()  # noqa: E731
    assert fills(slow) > 0 and not slow.journal[["fill_bid", "fill_ask"]].equals(
        plain.journal[["fill_bid", "fill_ask"]]
    )
    # The engine books the fills at their own prices (the old order's, before arrival): the PnL
    # identity holds as without a latency.
    np.testing.assert_allclose(
        slow.journal["position"], np.cumsum(slow.journal["fill_bid"] - slow.journal["fill_ask"]), atol=1e-5
    )


def test_a_snapshot_carries_the_latency_draws_on(engine_and_feed, tmp_path):
    """A session resumed from a snapshot draws the same latencies as one that never stopped."""
    from mmsim.live import journal
    from mmsim.live.replay import Trader

    ep, feed = engine_and_feed
    lat = Latency(samples_s=(0.05, 0.2, 0.6), seed=7)
    whole = Trader(ep, latency=lat)
    rows = [whole.on_interval(feed.row(i)) for i in range(len(feed.t))]
    first = Trader(ep, latency=lat, step_fn=whole.step)
    for i in range(100):
        first.on_interval(feed.row(i))
    j = journal.Journal(tmp_path)
    j.snapshot(99, first)
    j.close()
    resumed = Trader(ep, latency=lat, step_fn=whole.step)
    journal.load_snapshot(tmp_path, "state-000000099.npz", resumed)
    after = [resumed.on_interval(feed.row(i)) for i in range(100, len(feed.t))]
    np.testing.assert_array_equal(np.asarray(after, float), np.asarray(rows[100:], float))
    assert sum(r[9] > 0 or r[10] > 0 for r in after) > 0  # fills in the continued part
