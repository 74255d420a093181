"""Quote functions (spec Part 11): closed forms of AS 2008 and GLFT, the spec policy's adjustments,
tick rounding, validate_quote, parameter validation, and properties over random valid inputs.

Every quote goes through one module-level jitted ``quote`` (one compile per policy kind) with
float64 inputs of fixed shapes, so the many calls below never retrace.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmsim.engine import policy as pol

F64 = jnp.float64
A = 2  # assets in the hand-made states

_quote = jax.jit(pol.quote)
_round = jax.jit(pol.round_to_tick)
_validate = jax.jit(pol.validate_quote)

DEFAULT_INPUTS = dict(
    t=0.0,
    mid=60_000.0,
    tick=0.0,
    sigma=1e-4,
    regime=1,
    position=0.0,
    available_margin=10_000.0,
    margin_ratio=1e6,
    leverage=10.0,
    as_adjust=0.0,
    informed=0.0,
    tail_risk=1.0,
    pull_cascade=False,
    flow_imbalance=0.0,
    daily_volume=1e4,
    ready=True,
)
SCALARS = ("t", "regime", "available_margin", "margin_ratio", "leverage", "ready")


def inputs(**kw) -> pol.PolicyInputs:
    """Hand-made float64 PolicyInputs (numpy leaves: cheap to build); per-asset fields are broadcast
    to (A,)."""
    d = {**DEFAULT_INPUTS, **kw}
    out = {}
    for name, v in d.items():
        dtype = np.int32 if name == "regime" else np.bool_ if name in ("ready", "pull_cascade") else np.float64
        shape = () if name in SCALARS else (A,)
        out[name] = np.broadcast_to(np.asarray(v, dtype), shape)
    return pol.PolicyInputs(**out)


def params(**kw) -> pol.PolicyParams:
    """PolicyParams with float64 leaves (same pytree types every call: no retrace)."""
    p = pol.PolicyParams(**kw)
    leaves = {
        f.name: np.asarray(getattr(p, f.name), np.float64)
        for f in dataclasses.fields(p)
        if not f.metadata.get("static")
    }
    return dataclasses.replace(p, **leaves)


def quote(p: pol.PolicyParams, x: pol.PolicyInputs) -> dict[str, np.ndarray]:
    q = _quote(p, x)
    return {f: np.asarray(v) for f, v in q._asdict().items()}


# --------------------------------------------------------------------------------------------
# Closed forms, computed independently in numpy.


def np_as2008(mid, q, gamma, sigma_p, T, t, k):
    tau = max(T - t, 0.0)
    r = mid - q * gamma * sigma_p**2 * tau
    spread = gamma * sigma_p**2 * tau + (2.0 / gamma) * np.log(1.0 + gamma / k)
    return r - spread / 2.0, r + spread / 2.0


def np_glft(mid, q, gamma, sigma_p, k, A_, lot):
    """Gueant (2017) approximation for orders of size ``lot`` (lot = 1: GLFT 2013)."""
    xi = gamma * lot
    base = np.log(1.0 + xi / k) / xi
    c = np.sqrt(gamma * sigma_p**2 / (2.0 * A_ * k * lot) * (1.0 + xi / k) ** (1.0 + k / xi))
    return mid - (base + (2.0 * q + lot) / 2.0 * c), mid + (base - (2.0 * q - lot) / 2.0 * c)


@pytest.mark.parametrize("q", [0.0, 1.5, -2.0])
@pytest.mark.parametrize("sigma_price", [0.0, 4.0])
def test_as2008_matches_closed_form(q, sigma_price):
    mid, sigma, gamma, k, T, t = 60_000.0, 1e-4, 0.01, 0.1, 300.0, 100.0
    p = params(kind="as2008", gamma=gamma, k=k, horizon_s=T, sigma_price=sigma_price, order_size=0.3)
    out = quote(p, inputs(t=t, mid=mid, sigma=sigma, position=q))
    sigma_p = sigma_price if sigma_price > 0 else sigma * mid
    bid, ask = np_as2008(mid, q, gamma, sigma_p, T, t, k)
    np.testing.assert_allclose(out["bid_price"], bid, rtol=1e-13)
    np.testing.assert_allclose(out["ask_price"], ask, rtol=1e-13)
    np.testing.assert_array_equal(out["bid_size"], 0.3)
    np.testing.assert_array_equal(out["ask_size"], 0.3)
    assert out["bid_active"].all() and out["ask_active"].all()
    # Reservation price r = s - q gamma sigma^2 (T - t) is the midpoint of the quotes.
    np.testing.assert_allclose(
        (out["bid_price"] + out["ask_price"]) / 2, mid - q * gamma * sigma_p**2 * (T - t), rtol=1e-13
    )


def test_as2008_past_terminal_time_keeps_only_the_intensity_spread():
    mid, gamma, k = 60_000.0, 0.01, 0.1
    p = params(kind="as2008", gamma=gamma, k=k, horizon_s=100.0)
    out = quote(p, inputs(t=250.0, mid=mid, position=3.0))
    half = np.log(1.0 + gamma / k) / gamma
    np.testing.assert_allclose(out["bid_price"], mid - half, rtol=1e-13)
    np.testing.assert_allclose(out["ask_price"], mid + half, rtol=1e-13)


@pytest.mark.parametrize("q", [0.0, 2.0, -1.0])
@pytest.mark.parametrize("lot", [1.0, 0.25])
def test_glft_matches_closed_form(q, lot):
    mid, sigma, gamma, k, A_ = 60_000.0, 1e-4, 0.01, 0.1, 1.5
    p = params(kind="glft", gamma=gamma, k=k, A=A_, lot=lot, order_size=0.5)
    out = quote(p, inputs(mid=mid, sigma=sigma, position=q))
    bid, ask = np_glft(mid, q, gamma, sigma * mid, k, A_, lot)
    np.testing.assert_allclose(out["bid_price"], bid, rtol=1e-13)
    np.testing.assert_allclose(out["ask_price"], ask, rtol=1e-13)
    assert out["bid_active"].all() and out["ask_active"].all()
    np.testing.assert_array_equal(out["bid_size"], 0.5)


def test_glft_offsets_do_not_depend_on_the_base_unit():
    """Re-denominating the base unit (1 new unit = u old units: q, lot / u; prices, sigma x u;
    k / u; gamma unchanged) multiplies both offsets by u."""
    q, gamma, sigma_p, k, A_, lot, u = 0.6, 0.02, 3.0, 0.4, 2.0, 0.2, 4.0
    db, da = pol.glft_offsets(q, gamma, sigma_p, k, A_, lot)
    db2, da2 = pol.glft_offsets(q / u, gamma, sigma_p * u, k / u, A_, lot / u)
    np.testing.assert_allclose([float(db2), float(da2)], [u * float(db), u * float(da)], rtol=1e-12)


def test_symmetric_is_a_fixed_spread_centred_on_mid():
    p = params(kind="symmetric", fixed_spread=3.0, order_size=0.2)
    out = quote(p, inputs(mid=[60_000.0, 3_000.0], position=[1.0, -2.0], regime=3, tail_risk=5.0))
    np.testing.assert_allclose(out["bid_price"], [59_998.5, 2_998.5], rtol=1e-15)
    np.testing.assert_allclose(out["ask_price"], [60_001.5, 3_001.5], rtol=1e-15)
    np.testing.assert_array_equal(out["bid_size"], 0.2)


# --------------------------------------------------------------------------------------------
# The spec policy's adjustments.

SPEC = dict(
    kind="spec", gamma=0.01, k=0.1, horizon_s=60.0, min_spread_frac=0.0, max_spread_frac=0.05, max_inventory=10.0
)


def spread(out):
    return out["ask_price"] - out["bid_price"]


def test_spec_base_case_is_the_as_spread_around_the_reservation_price():
    mid, sigma, q = 60_000.0, 1e-4, 0.5
    p = params(**SPEC)
    out = quote(p, inputs(mid=mid, sigma=sigma, position=q))
    bid, ask = np_as2008(mid, q, 0.01, sigma * mid, 60.0, 0.0, 0.1)
    np.testing.assert_allclose(out["bid_price"], bid, rtol=1e-13)
    np.testing.assert_allclose(out["ask_price"], ask, rtol=1e-13)
    # Sizes: min(margin size, volume size) x inventory asymmetry; the reducing side (the ask of a
    # long) is not capped by margin up to the position.
    margin_size, volume_size = 10_000.0 * 0.1 / (mid / 10.0), 1e4 * 0.001
    base = min(margin_size, volume_size)
    np.testing.assert_allclose(out["bid_size"], base * (1 - q / 10.0), rtol=1e-13)
    np.testing.assert_allclose(out["ask_size"], max(base, min(volume_size, q)), rtol=1e-13)


def test_spec_is_post_only_when_the_skew_would_cross_the_mid():
    # q = 2: r = mid - 43.2 and the AS half spread is 20.3, so the raw ask would sit 22.9 below the mid.
    mid, sigma, q = 60_000.0, 1e-4, 2.0
    out = quote(params(**SPEC), inputs(mid=mid, sigma=sigma, position=q, tick=0.1))
    bid, _ = np_as2008(mid, q, 0.01, sigma * mid, 60.0, 0.0, 0.1)
    np.testing.assert_allclose(out["ask_price"], mid + 0.1, rtol=1e-13)  # mid + tick/2, ceiled to the grid
    np.testing.assert_allclose(out["bid_price"], np.floor(bid / 0.1 + 1e-6) * 0.1, rtol=1e-13)
    assert np.all(out["ask_active"]) and np.all(out["bid_active"])
    # The closed-form policies are left as published: as2008 quotes through the mid.
    raw = quote(
        params(**(SPEC | dict(kind="as2008", horizon_s=60.0))),
        inputs(mid=mid, sigma=sigma, position=q, tick=0.0, t=0.0),
    )
    assert np.all(raw["ask_price"] < mid)


def test_spec_long_inventory_lowers_both_quotes_and_the_bid_size():
    p = params(**SPEC)
    flat = quote(p, inputs(position=0.0))
    long = quote(p, inputs(position=0.5))  # skew 10.8 < half spread 20.3: no post-only clamp
    short = quote(p, inputs(position=-0.5))
    assert np.all(long["bid_price"] < flat["bid_price"]) and np.all(long["ask_price"] < flat["ask_price"])
    assert np.all(short["bid_price"] > flat["bid_price"]) and np.all(short["ask_price"] > flat["ask_price"])
    np.testing.assert_allclose(spread(long), spread(flat), rtol=1e-12)  # a shift, not a widening
    assert np.all(long["bid_size"] < flat["bid_size"]) and np.all(long["ask_size"] >= flat["ask_size"])
    assert np.all(short["ask_size"] < flat["ask_size"]) and np.all(short["bid_size"] >= flat["bid_size"])


def test_spec_cascade_widens_and_shrinks():
    p = params(**SPEC)
    calm = quote(p, inputs(tail_risk=1.0))
    casc = quote(p, inputs(tail_risk=2.0))
    np.testing.assert_allclose(spread(casc), 2.0 * spread(calm), rtol=1e-12)
    np.testing.assert_allclose(casc["bid_size"], calm["bid_size"] / 2.0, rtol=1e-12)
    np.testing.assert_allclose(casc["ask_size"], calm["ask_size"] / 2.0, rtol=1e-12)
    # The spread multiplier is capped at 3, the size divisor is not.
    big = quote(p, inputs(tail_risk=5.0))
    np.testing.assert_allclose(spread(big), 3.0 * spread(calm), rtol=1e-12)
    np.testing.assert_allclose(big["bid_size"], calm["bid_size"] / 5.0, rtol=1e-12)


def test_spec_extreme_regime_quarter_size_and_triple_spread():
    p = params(**SPEC)
    normal = quote(p, inputs(regime=1))
    extreme = quote(p, inputs(regime=3))
    np.testing.assert_array_equal(extreme["bid_size"], 0.25 * normal["bid_size"])
    np.testing.assert_array_equal(extreme["ask_size"], 0.25 * normal["ask_size"])
    np.testing.assert_allclose(spread(extreme), 3.0 * spread(normal), rtol=1e-12)
    # Regimes 0 .. 3 widen the spread monotonically (0.8, 1, 1.5, 3).
    s = [spread(quote(p, inputs(regime=r)))[0] for r in range(4)]
    np.testing.assert_allclose(np.array(s) / s[1], pol.REGIME_SPREAD_MULT, rtol=1e-12)


def test_spec_size_multiplier_floor():
    """informed = 1 and tail_risk = 3 give 1/6; Extreme x 0.25 would give 1/24 but the floor is 0.1."""
    p = params(**SPEC)
    normal = quote(p, inputs(regime=1, informed=1.0, tail_risk=3.0))
    extreme = quote(p, inputs(regime=3, informed=1.0, tail_risk=3.0))
    np.testing.assert_allclose(extreme["bid_size"], normal["bid_size"] * 0.1 * 6.0, rtol=1e-12)


def test_spec_spread_floor_and_ceiling():
    mid = 60_000.0
    tight = quote(params(**{**SPEC, "min_spread_frac": 1e-2}), inputs(mid=mid))
    np.testing.assert_allclose(spread(tight), 1e-2 * mid, rtol=1e-12)
    wide = quote(params(**{**SPEC, "max_spread_frac": 1e-5}), inputs(mid=mid))
    np.testing.assert_allclose(spread(wide), 1e-5 * mid, rtol=1e-9)


def test_spec_adverse_selection_and_flow_adjustments():
    p = params(**SPEC)
    base = quote(p, inputs())
    adv = quote(p, inputs(as_adjust=1e-4, informed=0.5))
    np.testing.assert_allclose(spread(adv) - spread(base), 1e-4 * 60_000.0, rtol=1e-9)
    np.testing.assert_allclose(adv["bid_size"], base["bid_size"] / 1.5, rtol=1e-12)
    # Heavy buy flow: both quotes move down by flow_skew * mid (spec step 7).
    buy = quote(p, inputs(flow_imbalance=1.0))
    np.testing.assert_allclose(base["bid_price"] - buy["bid_price"], 1e-4 * 60_000.0, rtol=1e-9)
    np.testing.assert_allclose(base["ask_price"] - buy["ask_price"], 1e-4 * 60_000.0, rtol=1e-9)


def test_pull_cascade_not_ready_and_dead_mid_pull_every_quote():
    p = params(**SPEC)
    for x in (inputs(pull_cascade=True), inputs(ready=False), inputs(mid=0.0)):
        out = quote(p, x)
        assert not out["bid_active"].any() and not out["ask_active"].any()
        for f in ("bid_price", "ask_price", "bid_size", "ask_size"):
            np.testing.assert_array_equal(out[f], 0.0)
    # Only the spec policy reacts to the cascade flag.
    out = quote(params(kind="symmetric"), inputs(pull_cascade=True))
    assert out["bid_active"].all() and out["ask_active"].all()


def test_spec_cascade_keep_reducing_quotes_only_the_reducing_side():
    """cascade_keep_reducing: on a severe cascade a long keeps its ask, a short its bid, flat
    pulls both; without a cascade nothing changes; fractions scale the kept side's size."""
    p = params(**SPEC, cascade_keep_reducing=True)
    own = jax.jit(lambda p, x: pol.quote(p, x))  # its own cache (the shared one counts compilations)

    def quote(p, x):
        return {f: np.asarray(v) for f, v in own(p, x)._asdict().items()}

    out = quote(p, inputs(pull_cascade=True, position=[2.0, -2.0]))
    np.testing.assert_array_equal(out["bid_active"], [False, True])
    np.testing.assert_array_equal(out["ask_active"], [True, False])
    assert out["ask_size"][0] > 0 and out["bid_size"][1] > 0
    assert out["bid_size"][0] == 0.0 and out["ask_size"][1] == 0.0
    out = quote(p, inputs(pull_cascade=True, position=0.0))
    assert not out["bid_active"].any() and not out["ask_active"].any()
    calm = quote(p, inputs(position=[2.0, -2.0]))
    spec = quote(params(**SPEC), inputs(position=[2.0, -2.0]))
    for f in calm:
        np.testing.assert_array_equal(calm[f], spec[f])
    # A fraction in between keeps the reducing side at that fraction of its size (the number is
    # traced: one compiled quote serves every value), 1 is true, 0 is the spec (both pulled).
    full = quote(params(**SPEC, cascade_keep_reducing=1.0), inputs(pull_cascade=True, position=[2.0, -2.0]))
    for f in full:
        np.testing.assert_array_equal(full[f], quote(p, inputs(pull_cascade=True, position=[2.0, -2.0]))[f])
    half = quote(params(**SPEC, cascade_keep_reducing=0.25), inputs(pull_cascade=True, position=[2.0, -2.0]))
    np.testing.assert_array_equal(half["ask_active"], [True, False])
    np.testing.assert_allclose(
        [half["ask_size"][0], half["bid_size"][1]], [0.25 * full["ask_size"][0], 0.25 * full["bid_size"][1]], rtol=1e-6
    )
    np.testing.assert_array_equal(half["ask_price"], full["ask_price"])
    off = quote(params(**SPEC, cascade_keep_reducing=0.0), inputs(pull_cascade=True, position=[2.0, -2.0]))
    assert not off["bid_active"].any() and not off["ask_active"].any()
    with pytest.raises(ValueError, match="cascade_keep_reducing"):
        params(**SPEC, cascade_keep_reducing=1.5)


_quote_events = jax.jit(lambda p, x: pol.quote(p, x))  # its own cache: event lists change the shapes


@pytest.mark.parametrize("kind", pol.POLICIES)
def test_scheduled_event_window_pulls_quotes(kind):
    """event_times_s: quotes made in [t_e - before, t_e + after] of any event are pulled (only the
    reducing side may stay, at event_keep_reducing of its size); outside, and without events, the
    quote is the policy's own."""
    base = {**SPEC, "kind": kind}
    ev = params(**base, event_times_s=[100.0, 500.0], event_pull_before_s=10.0, event_pull_after_s=30.0)

    def q(p, **x):
        x = {"position": [2.0, -2.0], **x}
        return {f: np.asarray(v) for f, v in _quote_events(p, inputs(**x))._asdict().items() if v is not None}

    for t in (0.0, 89.0, 131.0, 469.0, 531.0):  # outside every window
        out, own = q(ev, t=t), q(params(**base), t=t)
        assert set(out) - set(own) == {"take"}  # an event policy's quotes carry a taker order (0 here)
        for f in own:
            np.testing.assert_array_equal(out[f], own[f], err_msg=f"t = {t}, {f}")
        np.testing.assert_array_equal(out["take"], 0.0)
        assert out["bid_active"].all() and out["ask_active"].all()
    for t in (90.0, 100.0, 130.0, 490.0, 530.0):  # inside, edges included
        out = q(ev, t=t)
        assert not out["bid_active"].any() and not out["ask_active"].any(), t
        np.testing.assert_array_equal(out["bid_size"], 0.0)
    # Keeping the reducing side: a long keeps its ask, a short its bid, at the given fraction.
    full = q(params(**base), t=100.0)
    keep = q(params(**base, event_times_s=[100.0], event_pull_after_s=30.0, event_keep_reducing=0.5), t=120.0)
    np.testing.assert_array_equal(keep["bid_active"], [False, True])
    np.testing.assert_array_equal(keep["ask_active"], [True, False])
    np.testing.assert_allclose(
        [keep["ask_size"][0], keep["bid_size"][1]], [0.5 * full["ask_size"][0], 0.5 * full["bid_size"][1]], rtol=1e-12
    )
    # At the touch: the kept side rests at mid -+ tick/2 (rounded to the grid), the pulled side
    # stays pulled; outside the window the prices are the policy's own.
    touch = params(
        **base, event_times_s=[100.0], event_pull_after_s=30.0, event_keep_reducing=1.0, event_reduce_at_touch=1.0
    )
    at = q(touch, t=120.0, tick=0.1)
    np.testing.assert_allclose([at["ask_price"][0], at["bid_price"][1]], [60_000.1, 59_999.9], rtol=0, atol=1e-9)
    np.testing.assert_array_equal(at["bid_active"], [False, True])
    np.testing.assert_array_equal(at["ask_active"], [True, False])
    away = q(touch, t=131.0, tick=0.1)
    own = q(params(**base), t=131.0, tick=0.1)
    for f in own:
        np.testing.assert_array_equal(away[f], own[f], err_msg=f)
    # Flat: neither side reduces, nothing is quoted.
    flat = q(params(**base, event_times_s=[100.0], event_keep_reducing=1.0), t=100.0, position=0.0)
    assert not flat["bid_active"].any() and not flat["ask_active"].any()


@pytest.mark.parametrize("kind", pol.POLICIES)
def test_event_flatten_sends_a_taker_order_for_a_fraction_of_the_position(kind):
    """event_flatten: in an event window each quote carries a taker order of -event_flatten times the
    position (towards flat), 0 outside the windows and before the estimators are ready; a policy
    without events is post-only (no taker order at all, a static None)."""
    base = {**SPEC, "kind": kind}
    ev = params(
        **base,
        event_times_s=[100.0],
        event_pull_before_s=10.0,
        event_pull_after_s=30.0,
        event_keep_reducing=1.0,
        event_flatten=0.25,
    )

    def take(p, **x):
        return np.asarray(_quote_events(p, inputs(**{"position": [2.0, -0.8], **x})).take)

    np.testing.assert_allclose(take(ev, t=95.0), [-0.5, 0.2], rtol=1e-12)
    np.testing.assert_allclose(take(ev, t=130.0), [-0.5, 0.2], rtol=1e-12)
    np.testing.assert_array_equal(take(ev, t=89.0), 0.0)
    np.testing.assert_array_equal(take(ev, t=131.0), 0.0)
    np.testing.assert_array_equal(take(ev, t=100.0, ready=False), 0.0)
    np.testing.assert_array_equal(take(ev, t=100.0, position=0.0), 0.0)
    full = params(**base, event_times_s=[100.0], event_flatten=1.0)
    np.testing.assert_allclose(take(full, t=100.0), [-2.0, 0.8], rtol=1e-12)
    assert _quote_events(params(**base), inputs(t=100.0)).take is None
    assert pol.takes(ev) and not pol.takes(params(**base))
    # The kept reducing side offers only what the taker order leaves: 0.75 of its size here, and
    # nothing when the order closes the whole position.
    kept = {f: np.asarray(v) for f, v in _quote_events(ev, inputs(t=100.0, position=[2.0, -0.8]))._asdict().items()}
    own = _quote_events(
        params(**base, event_times_s=[100.0], event_keep_reducing=1.0), inputs(t=100.0, position=[2.0, -0.8])
    )
    np.testing.assert_allclose(
        [kept["ask_size"][0], kept["bid_size"][1]],
        [0.75 * float(own.ask_size[0]), 0.75 * float(own.bid_size[1])],
        rtol=1e-12,
    )
    none = _quote_events(
        params(**base, event_times_s=[100.0], event_keep_reducing=1.0, event_flatten=1.0),
        inputs(t=100.0, position=[2.0, -0.8]),
    )
    assert not np.any(np.asarray(none.bid_active)) and not np.any(np.asarray(none.ask_active))


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(event_flatten=1.5), "event_flatten"),
        (dict(event_flatten=-0.1), "event_flatten"),
        (dict(event_pull_before_s=-1.0), "event_pull_before_s"),
        (dict(event_pull_after_s=float("nan")), "event_pull_after_s"),
        (dict(event_keep_reducing=2.0), "event_keep_reducing"),
        (dict(event_times_s=[float("inf")]), "event_times_s"),
        (dict(event_times_s=[[1.0, 2.0]]), "event_times_s"),
        (dict(event_reduce_at_touch=0.5), "event_reduce_at_touch"),
    ],
)
def test_bad_event_params_are_rejected(bad, match):
    with pytest.raises(ValueError, match=match):
        pol.PolicyParams(**bad)


@pytest.mark.parametrize("kind", pol.POLICIES)
def test_near_liquidation_only_the_reducing_side_is_quoted(kind):
    p = params(**{**SPEC, "kind": kind, "pull_margin_ratio": 1.5})
    x = dict(margin_ratio=1.2, position=[2.0, -2.0])
    out = quote(p, inputs(**x))
    np.testing.assert_array_equal(out["bid_active"], [False, True])  # long: sell only; short: buy only
    np.testing.assert_array_equal(out["ask_active"], [True, False])
    np.testing.assert_array_equal(out["bid_size"][0], 0.0)
    # Flat and near liquidation: neither side reduces, nothing is quoted.
    out = quote(p, inputs(margin_ratio=1.2, position=0.0))
    assert not out["bid_active"].any() and not out["ask_active"].any()
    # Above the threshold both sides are back.
    out = quote(p, inputs(margin_ratio=1.6, position=[2.0, -2.0]))
    assert out["bid_active"].all() and out["ask_active"].all()


def test_spec_margin_exhausted_still_quotes_the_reducing_side():
    """No available margin (e.g. close to liquidation): nothing adds to the position, but the side
    that reduces it is quoted, sized by the volume cap up to the position."""
    p = params(**{**SPEC, "pull_margin_ratio": 1.5})
    out = quote(p, inputs(available_margin=0.0, margin_ratio=1.2, position=[2.0, -0.004], daily_volume=1e4))
    np.testing.assert_array_equal(out["bid_active"], [False, True])
    np.testing.assert_array_equal(out["ask_active"], [True, False])
    np.testing.assert_allclose(out["ask_size"][0], min(1e4 * 0.001, 2.0), rtol=1e-13)
    np.testing.assert_allclose(out["bid_size"][1], 0.004, rtol=1e-13)
    # Flat with no margin: nothing to reduce, nothing quoted.
    out = quote(p, inputs(available_margin=0.0))
    assert not out["bid_active"].any() and not out["ask_active"].any()


# --------------------------------------------------------------------------------------------
# Tick rounding and validate_quote.


def test_round_to_tick_hand_cases():
    b, a = _round(np.array([100.04, 100.0, 99.99]), np.array([100.06, 100.1, 100.01]), np.array([0.1, 0.1, 0.0]))
    np.testing.assert_allclose(np.asarray(b), [100.0, 100.0, 99.99], rtol=1e-15)
    np.testing.assert_allclose(np.asarray(a), [100.1, 100.1, 100.01], rtol=1e-15)


@settings(max_examples=100, deadline=None, database=None, derandomize=True)
@given(mid=st.floats(1.0, 1e5), lo=st.floats(-0.5, 0.5), width=st.floats(0.0, 30.0), tick_exp=st.integers(-4, 1))
def test_round_to_tick_never_tightens(mid, lo, width, tick_exp):
    tick = 10.0**tick_exp
    bid = mid + lo * tick * 7.0
    ask = bid + width * tick
    b, a = _round(np.array([bid]), np.array([ask]), np.array([tick]))
    b, a = float(b[0]), float(a[0])
    # Within the grid snap tolerance of 1e-6 tick (plus float rounding of k * tick).
    tol = 1e-6 * tick + 4 * np.finfo(float).eps * mid
    assert b <= bid + tol and a >= ask - tol
    assert a - b >= ask - bid - 2 * tol
    assert abs(b / tick - round(b / tick)) < 1e-6 and abs(a / tick - round(a / tick)) < 1e-6


@settings(max_examples=100, deadline=None, database=None, derandomize=True)
@given(mid=st.floats(100.0, 1e5), off=st.floats(-0.5, 0.5), tick_exp=st.integers(-2, 1), q=st.floats(-5.0, 5.0))
def test_ticked_quotes_are_on_grid_and_never_crossed(mid, off, tick_exp, q):
    """A sub-tick AS spread around a reservation price anywhere on the grid still gives bid < ask."""
    tick = 10.0**tick_exp
    # gamma, k such that the AS spread is far below one tick.
    p = params(kind="as2008", gamma=1.0, k=1e4, horizon_s=1.0, sigma_price=1e-4, band_max_frac=1.0)
    out = quote(p, inputs(mid=mid + off * tick, tick=tick, position=q))
    assert out["bid_active"].all() and out["ask_active"].all()
    assert np.all(out["ask_price"] - out["bid_price"] >= tick * (1 - 1e-6))
    b, a = np_as2008(mid + off * tick, q, 1.0, 1e-4, 1.0, 0.0, 1e4)
    assert np.all(out["bid_price"] <= b + 1e-6 * tick + 1e-9) and np.all(out["ask_price"] >= a - 1e-6 * tick - 1e-9)


def test_validate_quote_masks():
    p = params(band_min_frac=1e-4, band_max_frac=1e-2)
    mid = jnp.full((7,), 100.0)
    good = (99.9, 100.1)
    cases = [  # (bid, ask, bid size, ask size) -> expected (bid_ok, ask_ok)
        ((*good, 1.0, 1.0), (True, True)),
        ((np.nan, 100.1, 1.0, 1.0), (False, False)),  # not finite
        ((100.1, 99.9, 1.0, 1.0), (False, False)),  # crossed
        ((99.999, 100.0, 1.0, 1.0), (False, False)),  # spread below band_min (1e-5 < 1e-4)
        ((99.0, 101.5, 1.0, 1.0), (False, False)),  # spread above band_max (2.5e-2)
        ((*good, 0.0, 1.0), (False, True)),  # zero size: that side only
        ((*good, 1.0, np.inf), (False, False)),  # infinite size
    ]
    cols = list(zip(*[c[0] for c in cases]))
    q = pol.Quote(*(jnp.asarray(c, F64) for c in cols), jnp.ones(7, bool), jnp.ones(7, bool))
    bid_ok, ask_ok = _validate(p, q, mid)
    np.testing.assert_array_equal(np.asarray(bid_ok), [c[1][0] for c in cases])
    np.testing.assert_array_equal(np.asarray(ask_ok), [c[1][1] for c in cases])
    # A negative bid price is refused; inactive sides stay inactive.
    q2 = pol.Quote(
        jnp.full(7, -0.05), jnp.full(7, 0.05), jnp.ones(7), jnp.ones(7), jnp.ones(7, bool), jnp.zeros(7, bool)
    )
    bid_ok, ask_ok = _validate(params(band_max_frac=1.0), q2, mid)
    assert not np.asarray(bid_ok).any() and not np.asarray(ask_ok).any()


@pytest.mark.parametrize(
    "field, value",
    [
        ("gamma", -1.0),
        ("k", 0.0),
        ("A", -2.0),
        ("horizon_s", 0.0),
        ("size_fraction", 0.0),
        ("size_fraction", 1.5),
        ("volume_fraction", 0.0),
        ("max_inventory", -1.0),
        ("fixed_spread", 0.0),
        ("order_size", 0.0),
        ("lot", 0.0),
        ("flow_skew", np.nan),
        ("sigma_price", np.inf),
        ("pull_margin_ratio", -0.1),
        ("band_min_frac", -1e-3),
        ("min_spread_frac", -1e-4),
        ("max_spread_frac", 1e-5),
        ("band_max_frac", 0.0),
        ("kind", "optimal"),
    ],
)
def test_bad_parameters_name_the_field(field, value):
    with pytest.raises(ValueError, match=rf"PolicyParams\.{field}\b"):
        pol.PolicyParams(**{field: value})


# --------------------------------------------------------------------------------------------
# Properties over random valid inputs and parameters, every kind.

unit = st.floats(0.0, 1.0)
pos = lambda lo, hi: st.floats(lo, hi, allow_nan=False, allow_infinity=False)  # noqa: E731


@st.composite
def random_case(draw, kind):
    mid = draw(st.lists(pos(1.0, 1e5), min_size=A, max_size=A))
    tick_frac = draw(st.sampled_from([0.0, 1e-6, 1e-4, 1e-3]))
    min_sf = draw(pos(0.0, 1e-3))
    band_min = draw(pos(0.0, 1e-4))
    p = dict(
        kind=kind,
        gamma=draw(pos(1e-4, 1.0)),
        k=draw(pos(1e-3, 10.0)),
        A=draw(pos(1e-2, 100.0)),
        horizon_s=draw(pos(1.0, 3600.0)),
        size_fraction=draw(pos(1e-3, 1.0)),
        volume_fraction=draw(pos(1e-5, 0.1)),
        max_inventory=draw(pos(0.1, 10.0)),
        min_spread_frac=min_sf,
        max_spread_frac=min_sf + draw(pos(1e-5, 0.1)),
        flow_skew=draw(pos(-1e-3, 1e-3)),
        fixed_spread=draw(pos(1e-3, 100.0)),
        sigma_price=draw(pos(-1.0, 10.0)),
        order_size=draw(pos(1e-3, 10.0)),
        lot=draw(pos(0.1, 10.0)),
        pull_margin_ratio=draw(pos(0.0, 3.0)),
        band_min_frac=band_min,
        band_max_frac=band_min + draw(pos(1e-4, 0.2)),
    )
    vec = lambda s: draw(st.lists(s, min_size=A, max_size=A))  # noqa: E731
    x = dict(
        t=draw(pos(0.0, 7200.0)),
        mid=mid,
        tick=[m * tick_frac for m in mid],
        sigma=vec(pos(0.0, 1e-3)),
        regime=draw(st.integers(0, 3)),
        position=vec(pos(-10.0, 10.0)),
        available_margin=draw(pos(0.0, 1e6)),
        margin_ratio=draw(pos(0.0, 10.0)),
        leverage=draw(pos(1.0, 100.0)),
        as_adjust=vec(pos(0.0, 1e-2)),
        informed=vec(unit),
        tail_risk=vec(pos(1.0, 10.0)),
        pull_cascade=vec(st.booleans()),
        flow_imbalance=vec(pos(-1.0, 1.0)),
        daily_volume=vec(pos(0.0, 1e5)),
        ready=draw(st.booleans()),
    )
    return params(**p), inputs(**x)


@pytest.mark.parametrize("kind", pol.POLICIES)
def test_quote_properties(kind):
    @settings(
        max_examples=60, deadline=None, database=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
    )
    @given(case=random_case(kind))
    def check(case):
        p, x = case
        out = quote(p, x)
        for f in ("bid_price", "ask_price", "bid_size", "ask_size"):
            assert np.all(np.isfinite(out[f])), f
        assert np.all(out["bid_size"] >= 0) and np.all(out["ask_size"] >= 0)
        both = out["bid_active"] & out["ask_active"]
        assert np.all(out["bid_price"][both] < out["ask_price"][both])
        for side in ("bid", "ask"):
            off = ~out[f"{side}_active"]
            assert np.all(out[f"{side}_size"][off] == 0) and np.all(out[f"{side}_price"][off] == 0)
            on = out[f"{side}_active"]
            assert np.all(out[f"{side}_size"][on] > 0) and np.all(out[f"{side}_price"][on] > 0)
        if not bool(x.ready):
            assert not out["bid_active"].any() and not out["ask_active"].any()

    check()


def test_quote_compiles_once_per_kind():
    """New data never retraces: one compiled program per policy kind, however many calls."""
    for kind in pol.POLICIES:
        for q in (0.0, 1.0, -2.5):
            quote(params(kind=kind, gamma=0.02 + q * 1e-3), inputs(position=q, t=q + 1.0))
    assert _quote._cache_size() <= len(pol.POLICIES)
