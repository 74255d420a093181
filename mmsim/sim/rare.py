"""Rare events: importance sampling and multilevel splitting estimates of a small probability.

Plain Monte Carlo bounds a probability at best by about 3.7 / n (no event in n paths, see
:func:`mmsim.sim.risk.min_certifiable`). Two estimators do better:

- **Importance sampling** (:func:`is_estimate`): the paths are drawn from a tilted world
  (:mod:`mmsim.world.tilt`; in a test, any tilted law of the uniforms) and each carries its
  likelihood ratio ``w = dP/dQ`` (accumulated in log space, float64, inside the scan, up to the
  stopping time). ``p = E_Q[1{event} w]``: the estimate is the mean of ``h_i w_i``, its interval
  the normal one of that mean (weighted CLT), checked by a Poisson bootstrap; the report carries
  the effective sample size of the hits, the relative error per path ``sd(h w) / p`` and the
  variance-reduction factor ``p (1 - p) / var(h w)`` against plain Monte Carlo at equal paths.
  :func:`cross_entropy_tilt` chooses the tilt (the cross-entropy method, Rubinstein & Kroese
  2004): its statistics come with every tilted path.
- **Multilevel splitting** (:func:`split`), which needs no tilt: the paths that reach a level of
  an importance function (the margin ratio falling below ``levels[k]``) are resampled to the
  stage's size and continue from the state they reached with fresh randomness; the estimate is
  the product of the stages' fractions (fixed-effort splitting; unbiased, Del Moral 2004,
  Cérou & Guyader 2007). A path's draws come from counter-based keys ``fold_in(key, t)``: a clone
  differs from its parent only by its key, and a run is reproducible. The interval comes from
  independent replicates (a t-interval over their estimates): the clones of one replicate are
  correlated, and a formula that ignores it understates the error.

Neither claims a probability is about 0 from no hits: with none, the estimate is 0, the interval
is absent and the result says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from mmsim import rng

# ------------------------------------------------------------------------------------------------
# Importance sampling


def is_estimate(hit, log_w, alpha: float = 0.05, *, n_boot: int = 2000, seed: int = 0) -> dict:
    """The importance-sampling estimate of ``P(event)`` from tilted paths.

    Args:
        hit: (n,) bool, the event on each path (drawn under the tilted law).
        log_w: (n,) log likelihood ratio (nominal over tilted) of each path up to its stopping time.
        alpha: 1 - the interval's level.
        n_boot: Poisson-bootstrap resamples for the check of the interval.

    Returns a JSON-ready dict: ``estimate``, ``ci_low``/``ci_high`` (normal interval of the mean
    of ``h w``; None without hits), ``se``, ``boot_low``/``boot_high`` (percentile interval of the
    Poisson bootstrap), ``hits``, ``n``, ``ess`` (effective sample size of the hits, ``(sum hw)^2
    / sum (hw)^2``), ``rel_err_per_path`` (``sd(hw) / estimate``: the relative error of one path,
    so ``n`` paths give ``rel_err_per_path / sqrt(n)``), ``vrf`` (``p (1 - p) / var(hw)``, the
    plain paths one tilted path is worth) and ``max_weight_share`` (the largest ``hw`` over their
    sum: near 1, one path carries the estimate and the interval is not to be trusted).
    """
    h = np.asarray(hit, bool).reshape(-1)
    lw = np.asarray(log_w, float).reshape(-1)
    if h.shape != lw.shape:
        raise ValueError(f"hit has {h.size} paths but log_w {lw.size}: one of each per path")
    if h.size < 2:
        raise ValueError(f"n = {h.size}: importance sampling needs at least 2 paths")
    bad = h & ~np.isfinite(lw)
    if bad.any():
        raise ValueError(f"log_w is not finite on {int(bad.sum())} path(s) with the event")
    n, k = int(h.size), int(h.sum())
    out: dict[str, Any] = {"method": "importance sampling", "n": n, "hits": k, "alpha": alpha}
    if k == 0:
        return {
            **out,
            "estimate": 0.0,
            "se": None,
            "ci_low": None,
            "ci_high": None,
            "boot_low": None,
            "boot_high": None,
            "ess": 0.0,
            "rel_err_per_path": None,
            "vrf": None,
            "max_weight_share": None,
            "note": f"no tilted path of {n} reached the event: nothing is estimated or certified",
        }
    y = np.where(h, np.exp(np.where(h, lw, 0.0)), 0.0)
    p = float(y.mean())
    sd = float(y.std(ddof=1))
    se = sd / math.sqrt(n)
    z = float(stats.norm.ppf(1 - alpha / 2))
    yh = y[h]
    gen = np.random.default_rng(seed)
    # Poisson bootstrap: every path weighs Poisson(1), and the paths without the event (y = 0)
    # enter only through the total weight, drawn at once.
    pw = gen.poisson(1.0, size=(n_boot, k))
    total = pw.sum(1) + gen.poisson(float(n - k), size=n_boot)
    boot = (pw * yh).sum(1) / np.maximum(total, 1)
    var = sd * sd
    return {
        **out,
        "estimate": p,
        "se": se,
        "ci_low": max(p - z * se, 0.0),
        "ci_high": p + z * se,
        "boot_low": float(np.quantile(boot, alpha / 2)),
        "boot_high": float(np.quantile(boot, 1 - alpha / 2)),
        "ess": float(yh.sum() ** 2 / np.sum(yh * yh)),
        "rel_err_per_path": sd / p if p > 0 else None,
        "vrf": p * (1 - p) / var if var > 0 else None,
        "max_weight_share": float(yh.max() / yh.sum()),
    }


#: The effective sample size of the hits below which an importance-sampling interval is not
#: used to certify: a handful of weighted hits gives a normal interval that means nothing.
MIN_ESS = 30.0


def certifies(est: dict, epsilon: float) -> tuple[bool, str]:
    """Whether a rare-event estimate (:func:`is_estimate` or :func:`split`) certifies
    ``P <= epsilon``, and why not: its interval's upper end must be at most ``epsilon``, it must
    have one (hits), and an importance-sampling one must rest on an effective sample size of at
    least :data:`MIN_ESS`."""
    if est.get("ci_high") is None:
        return False, "no path reached the event"
    if est["method"] == "importance sampling" and est["ess"] < MIN_ESS:
        return False, f"the hits' effective sample size {est['ess']:.3g} is below {MIN_ESS:g}"
    if est["ci_high"] > epsilon:
        return False, f"the upper end {est['ci_high']:.3g} exceeds {epsilon:g}"
    return True, f"the upper end {est['ci_high']:.3g} is at most {epsilon:g}"


#: Bounds of the cross-entropy tilt: counts at most 1000 times as likely per quiet step, the
#: largest size's tail index at least 0.2 of its own.
_CE_BOOST_MAX = 1000.0
_CE_SIZE_MAX = 0.8
#: and a diffusion drift or a flow imbalance of at most a quarter of a standard deviation per step.
_CE_DRIFT_MAX = 0.25


#: How the cross-entropy elite is ranked: the score's name and the per-path field it reads
#: (:class:`mmsim.sim.simulate.PathSummary`; lower is nearer the liquidation).
CE_SCORES = {"margin_ratio": "min_margin_ratio", "excess": "min_excess"}


def cross_entropy_tilt(score, hit, log_w, tilt_stats, *, elite_frac: float = 0.1) -> dict:
    """One cross-entropy update of the world's tilt (:class:`mmsim.world.tilt.TiltParams`) from
    paths drawn under the current one (multilevel CE: the elite is the paths with the event when
    at least ``elite_frac`` of them have it, else the ``elite_frac`` with the lowest ``score``).

    The tilted family's CE optimum is closed-form, and separate in each time bucket: an intensity
    multiplier is the elite's weighted count of events over its weighted nominal compensator (a
    Poisson rate's MLE), the size tilt ``1 - 1 / mean(E)`` from the elite's weighted mean of the
    tilted Exp(1) variables of its largest sizes, and each shift (the drift, the flow imbalance,
    ``liq_busy``, ``var_drift``) the elite's weighted mean of its normals or scores: the
    diffusion's, the order counts' score differences, the busy liquidation counts', the
    variance's.
    ``tilt_stats`` is the (n, 13) or (n, K, 13) per-path statistics of
    :class:`mmsim.world.tilt.TiltInfo` (events, compensator, size E, jump events, jump
    compensator, sum of the normals, their count, sum of the score differences, their count, sum
    of the busy liquidation scores, their count, sum of the variance normals, their count) in
    each of the K time buckets; ``score``: (n,) the importance function (lower is nearer the
    event, e.g. the minimum margin ratio). Returns ``{"tilt": {...}, "level": ..., "elite":
    ...}``, the tilt's fields numbers with one bucket and lists of K with several.
    """
    score = np.asarray(score, float)
    h = np.asarray(hit, bool)
    w = np.exp(np.asarray(log_w, float) - np.max(np.asarray(log_w, float)))  # a common scale
    st = np.asarray(tilt_stats, float)
    one = st.ndim == 2
    st = st[:, None, :] if one else st
    n = score.size
    if h.mean() >= elite_frac:
        elite, level = h, "event"
    else:  # the hits and the lowest scores of the others: ceil(elite_frac n) paths in all
        rest = np.sort(score[~h])
        q = float(rest[max(math.ceil(elite_frac * n) - int(h.sum()), 1) - 1])
        elite, level = h | (score <= q), q
    we = w * elite
    tilts = [_ce_bucket((we[:, None] * st[:, k]).sum(0)) for k in range(st.shape[1])]
    tilt = {f: (tilts[0][f] if one else [t[f] for t in tilts]) for f in tilts[0]}
    return {"tilt": tilt, "level": level, "elite": int(elite.sum()), "n": n}


def _ce_bucket(s: np.ndarray) -> dict:
    """The CE tilt of one time bucket from the elite's weighted sums ``s`` of the 13 statistics."""

    def boost(events, comp):
        return float(np.clip(events / comp, 1.0, _CE_BOOST_MAX)) if comp > 0 and events > 0 else 1.0

    def mean(total, count):
        return float(np.clip(total / count, -_CE_DRIFT_MAX, _CE_DRIFT_MAX)) if count > 0 else 0.0

    return {
        "liq_count": boost(s[0], s[1]),
        "liq_size": float(np.clip(1.0 - s[0] / s[2], 0.0, _CE_SIZE_MAX)) if s[2] > 0 else 0.0,
        "jump_count": boost(s[3], s[4]),
        "price_drift": mean(s[5], s[6]),
        "flow_imbalance": mean(s[7], s[8]),
        "liq_busy": mean(s[9], s[10]),
        "var_drift": mean(s[11], s[12]),
    }


# ------------------------------------------------------------------------------------------------
# Multilevel splitting


def split(
    init: Callable,
    advance: Callable,
    score: Callable,
    *,
    levels,
    n_paths: int,
    n_steps: int,
    seed: int,
    replicates: int = 8,
    alpha: float = 0.05,
    pilot_paths: int = 1024,
    stage_p: float = 0.2,
    floor: float = -np.inf,
    max_levels: int = 40,
    mark: Callable | None = None,
    mark_at=None,
) -> dict:
    """Fixed-effort multilevel splitting of ``P(event by step n_steps)``.

    Args:
        init: ``init(key) -> carry``, one path's state at t = 0 (JAX, per path).
        advance: ``advance(key, carry, t) -> carry``, step ``t`` of one path (``t = 0 ..
            n_steps``: a path is at most ``n_steps + 1`` calls long); its
            draws must come from ``key`` and ``t`` alone (counter-based), so that a clone with a
            new key continues with fresh randomness.
        score: ``score(carry) -> (value, event)``: the importance function (a level ``l`` is
            reached once ``value <= l``) and the event itself (bool; it reaches every level).
        levels: decreasing thresholds of ``value``, the last stage being the event itself; or
            ``"auto"``: chosen by a pilot of ``pilot_paths`` paths on a stream of its own (each
            level the ``stage_p`` quantile of the minimum ``value`` its paths reach, until the
            quantile falls to ``floor`` or ``stage_p`` of them reach the event), so that the
            estimate, on other draws, stays unbiased.
        n_paths: paths per stage of one replicate.
        replicates: independent runs; the interval is the t-interval over their estimates.
        mark: ``mark(carry) -> value`` of a path that reached the event (e.g. its time), and
            ``mark_at`` the values at which ``P(event and mark <= x)`` is estimated: in each
            replicate the product of the earlier stages' fractions times the final stage's
            fraction of hits with ``mark <= x`` (unbiased like the estimate), with the same
            t-interval over the replicates (``curve`` in the result).

    Returns a JSON-ready dict: ``estimate`` (mean over replicates), ``ci_low``/``ci_high``,
    ``se``, per-stage fractions (``stage_p``, mean over replicates), the replicates' estimates,
    ``path_steps`` (steps simulated, all stages and replicates), ``rel_err_per_path`` (relative
    error scaled to one path of work: ``se / p * sqrt(path-steps / n_steps)``) and ``vrf`` (plain
    Monte Carlo's variance at the same path-steps over this one's).
    """
    if not (isinstance(replicates, int) and replicates >= 2):
        raise ValueError(f"replicates = {replicates!r}: the interval needs at least 2")
    if not (isinstance(n_paths, int) and n_paths >= 2):
        raise ValueError(f"n_paths = {n_paths!r}: must be an integer >= 2")
    devices = jax.local_devices()
    if n_paths % len(devices):
        devices = devices[:1]  # paths split evenly over the devices, or all on one
    stage = _stage_fn(advance, score, n_steps, devices)
    start = jax.jit(jax.vmap(init))
    root = rng.key(seed)
    pilot = None
    if isinstance(levels, str):
        if levels != "auto":
            raise ValueError(f"levels = {levels!r}: a decreasing list of thresholds or 'auto'")
        if not 0 < stage_p < 1:
            raise ValueError(f"stage_p = {stage_p!r}: must lie in (0, 1)")
        levels, pilot = _pilot_levels(start, stage, pilot_paths, seed, stage_p, floor, max_levels)
    levels = [float(x) for x in levels]
    if any(b >= a for a, b in zip(levels, levels[1:])):
        raise ValueError(f"levels = {levels}: must be strictly decreasing")
    ests, stage_ps, work = [], [], 0
    xs = None if mark is None or mark_at is None else np.asarray(mark_at, float).reshape(-1)
    curves = []
    marks = None if xs is None else jax.jit(jax.vmap(mark))
    n_stages = len(levels) + 1
    for r in range(replicates):
        rkey = rng.fold_in(root, r)
        keys = rng.path_keys(rng.fold_in(rkey, 0), 0, n_paths)
        carry = start(keys)
        t = jnp.zeros((n_paths,), jnp.int32)
        p, ps = 1.0, []
        curve = None if xs is None else np.zeros(xs.size)
        gen = np.random.default_rng([seed, r])
        for s in range(n_stages):
            final = s == len(levels)
            level = -np.inf if final else levels[s]
            carry, t_end, hit, _ = stage(keys, carry, t, jnp.float64(level), jnp.bool_(final))
            hit = np.asarray(hit)
            work += int(np.sum(np.asarray(t_end) - np.asarray(t)))
            frac = float(hit.mean())
            ps.append(frac)
            if final and curve is not None:  # the final stage's hits, by their mark
                m = np.asarray(marks(carry), float)[hit]
                curve = p * (m[None, :] <= xs[:, None]).sum(1) / n_paths
            p *= frac
            if frac == 0.0:
                ps += [0.0] * (n_stages - s - 1)
                break
            if final:
                break
            pick = gen.choice(np.flatnonzero(hit), size=n_paths, replace=True)
            carry = jax.tree_util.tree_map(lambda x, pick=pick: x[pick], carry)
            t = jnp.asarray(np.asarray(t_end)[pick])
            keys = rng.path_keys(rng.fold_in(rkey, s + 1), 0, n_paths)
        ests.append(p)
        stage_ps.append(ps)
        if curve is not None:
            curves.append(curve)
    ests_a = np.asarray(ests)
    est = float(ests_a.mean())
    se = float(ests_a.std(ddof=1) / math.sqrt(replicates))
    tq = float(stats.t.ppf(1 - alpha / 2, replicates - 1))
    hits_any = bool(np.any(ests_a > 0))
    paths_equiv = work / max(n_steps, 1)
    out = {
        "method": "multilevel splitting",
        "levels": levels,
        "n_paths": n_paths,
        "replicates": replicates,
        "alpha": alpha,
        "estimate": est,
        "se": se if hits_any else None,
        "ci_low": max(est - tq * se, 0.0) if hits_any else None,
        "ci_high": est + tq * se if hits_any else None,
        "replicate_estimates": ests_a.tolist(),
        "stage_p": np.asarray(stage_ps).mean(0).tolist(),
        "path_steps": int(work),
        "rel_err_per_path": (se / est * math.sqrt(paths_equiv)) if est > 0 and se > 0 else None,
        "vrf": (est * (1 - est) / paths_equiv) / se**2 if est > 0 and se > 0 else None,
    }
    if xs is not None:
        c = np.asarray(curves)
        c_mean, c_se = c.mean(0), c.std(0, ddof=1) / math.sqrt(replicates)
        out["curve"] = {
            "x": xs.tolist(),
            "estimate": c_mean.tolist(),
            "ci_low": np.maximum(c_mean - tq * c_se, 0.0).tolist() if hits_any else None,
            "ci_high": (c_mean + tq * c_se).tolist() if hits_any else None,
        }
    if pilot is not None:
        out["pilot"] = pilot
    if not hits_any:
        out["note"] = "no replicate reached the event: nothing is estimated or certified"
    return out


#: The pilot's stream: far from the replicates' ``fold_in(root, r)``.
_PILOT_STREAM = 2**31 - 1


def _pilot_levels(start, stage, n: int, seed: int, stage_p: float, floor: float, max_levels: int):
    """Levels for :func:`split` from a pilot on its own stream: the paths run to the horizon, the
    next level is the ``stage_p`` quantile of the minimum value they reached, and the same paths
    (the same keys: the same draws) run again to that level to give the next stage's states."""
    key = rng.fold_in(rng.key(seed), _PILOT_STREAM)
    keys = rng.path_keys(rng.fold_in(key, 0), 0, n)
    carry, t = start(keys), jnp.zeros((n,), jnp.int32)
    gen = np.random.default_rng([seed, _PILOT_STREAM])
    levels: list[float] = []
    reason = f"{max_levels} levels"
    for s in range(max_levels):
        _, _, event, vmin = stage(keys, carry, t, jnp.float64(-np.inf), jnp.bool_(True))
        event, vmin = np.asarray(event), np.asarray(vmin, float)
        if event.mean() >= stage_p:
            reason = f"{event.mean():.2f} of the pilot's paths reach the event from the last level"
            break
        q = float(np.quantile(vmin, stage_p))
        if not np.isfinite(q) or q <= floor or (levels and q >= levels[-1]):
            reason = f"the {stage_p} quantile of the minimum ({q:.4g}) is at the floor ({floor}) or no lower"
            break
        levels.append(q)
        carry, t_end, hit, _ = stage(keys, carry, t, jnp.float64(q), jnp.bool_(False))
        pick = gen.choice(np.flatnonzero(np.asarray(hit)), size=n, replace=True)
        carry = jax.tree_util.tree_map(lambda x, pick=pick: x[pick], carry)
        t = jnp.asarray(np.asarray(t_end)[pick])
        keys = rng.path_keys(rng.fold_in(key, s + 1), 0, n)
    return levels, {"n_paths": n, "stage_p": stage_p, "floor": floor, "stopped": reason}


def _stage_fn(advance: Callable, score: Callable, n_steps: int, devices=None):
    """One stage for a batch of paths (compiled once; the level and the final flag are traced):
    each path runs from its own step until it reaches the level (or the event) or the horizon.
    Returns the carries, the steps reached, the hits and the minimum value each path saw. With
    several devices the paths are split over them (each runs its share's loop to its own end)."""

    def one(key, carry, t, level, final):
        def reached(c):
            value, event = score(c)
            return jnp.where(final, event, (value <= level) | event)

        def cond(c):
            _, tt, hit, _ = c
            return (tt <= n_steps) & ~hit

        def body(c):
            cc, tt, _, vmin = c
            cc = advance(key, cc, tt)
            return cc, tt + 1, reached(cc), jnp.minimum(vmin, score(cc)[0])

        return jax.lax.while_loop(cond, body, (carry, t, reached(carry), score(carry)[0]))

    fn = jax.vmap(one, in_axes=(0, 0, 0, None, None))
    if devices is not None and len(devices) > 1:  # paths are independent: split over the devices
        from jax.sharding import Mesh
        from jax.sharding import PartitionSpec as P

        mesh = Mesh(np.asarray(devices), ("paths",))
        fn = jax.shard_map(
            fn,
            mesh=mesh,
            in_specs=(P("paths"), P("paths"), P("paths"), P(), P()),
            out_specs=P("paths"),
            check_vma=False,
        )
    return jax.jit(fn)
