"""Estimators that turn real data into process parameters (spec Part 13); host side, numpy/scipy.

Every estimator returns a plain dict: the estimates, a standard error ``<name>_se`` wherever one
exists (``se`` for single-value estimators, whose estimate is ``value``), and the sample size
``n``. Units are stated per function: time in seconds, rates per second, variances of log price per
second, funding rates per settlement interval.

Contents:

* :func:`aggregate_market_orders` — fills sharing one exchange timestamp and side become one order.
* :func:`hawkes_exp_loglik`, :func:`fit_hawkes_exp` — univariate Hawkes, exponential kernel, MLE
  with Ozaki's recursion (solved as a vectorised prefix scan), observed-information standard
  errors and a time-rescaling KS test.
* :func:`fit_hawkes_bivariate_exp` — the spec's buy/sell pair (Part 5): own excitation
  ``alpha_buy``/``alpha_sell``, symmetric cross excitation ``gamma`` and one decay ``beta``.
* :func:`fit_ou` — exact-discretisation AR(1) regression for an Ornstein-Uhlenbeck process.
* :func:`hill_tail_index` — Hill estimator of a Pareto tail.
* :func:`realized_variance_per_second`, :func:`volatility_regimes`, :func:`fit_variance_process`,
  :func:`detect_jumps` — volatility from 1-minute bars.
* :func:`mid_variance_per_second`, :func:`touch_stats`, :func:`spread_widening` — volatility,
  spread and depth from a top-of-book stream; :func:`depth_profile` — the book behind the touch
  from depth diffs; :func:`infer_tick`; :func:`matched_pareto`; :func:`poisson_rate_interval`.
* :func:`funding_divergence` — two venues' funding series aligned on settlement times.
* :func:`fit_funding_premium` — the premium-index OU behind a clamped funding series.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import os

import numpy as np
import pandas as pd
from scipy import optimize, stats

from mmsim.regimes import REGIME_NAMES, REGIME_THRESHOLDS

__all__ = [
    "aggregate_market_orders",
    "hawkes_exp_loglik",
    "fit_hawkes_exp",
    "fit_hawkes_bivariate_exp",
    "fit_ou",
    "hill_tail_index",
    "realized_variance_per_second",
    "volatility_regimes",
    "fit_variance_process",
    "detect_jumps",
    "mid_variance_per_second",
    "touch_stats",
    "spread_widening",
    "depth_profile",
    "infer_tick",
    "matched_pareto",
    "poisson_rate_interval",
    "funding_divergence",
    "fit_funding_premium",
    "REGIME_NAMES",
    "REGIME_THRESHOLDS",
]

# ----------------------------------------------------------------------------------------------
# BLAS threads


@contextlib.contextmanager
def _single_thread_blas():
    """Run the block with every loaded OpenBLAS limited to one thread, then restore.

    scipy's L-BFGS-B makes many tiny BLAS calls; on a small CPU shared with other jobs, OpenBLAS's
    spinning worker threads then make each iteration tens of times slower (measured: 14 ms
    instead of 0.2 ms per iteration on 2 busy cores). Done through the libraries' own
    ``*_set_num_threads`` entry points, found in the process's loaded objects (Linux); anywhere
    else this is a no-op.
    """
    restore = []
    try:
        with open("/proc/self/maps") as fh:
            paths = {
                parts[-1]
                for parts in (ln.split() for ln in fh)
                if len(parts) >= 6 and "openblas" in os.path.basename(parts[-1]).lower()
            }
        for path in paths:
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            for get, set_ in (
                ("openblas_get_num_threads", "openblas_set_num_threads"),
                ("scipy_openblas_get_num_threads", "scipy_openblas_set_num_threads"),
                ("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
                ("openblas_get_num_threads64_", "openblas_set_num_threads64_"),
            ):
                if hasattr(lib, get) and hasattr(lib, set_):
                    n = int(getattr(lib, get)())
                    getattr(lib, set_)(1)
                    restore.append((getattr(lib, set_), n))
                    break
    except OSError:
        pass
    try:
        yield
    finally:
        for fn, n in restore:
            fn(n)


def _blas_one_thread(fn):
    """Decorator: run ``fn`` under :func:`_single_thread_blas`."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with _single_thread_blas():
            return fn(*args, **kwargs)

    return wrapper


#: The spec's volatility regimes (Part 2) and their thresholds on (1-hour realized vol) / (long-run vol).


# ----------------------------------------------------------------------------------------------
# Market orders


def aggregate_market_orders(trades: pd.DataFrame) -> pd.DataFrame:
    """Merge the fills of one aggressive order: same exchange timestamp and same aggressor side.

    A market order that sweeps several resting orders prints one trade per maker, all with the
    same exchange transaction time ``T`` (1 ms resolution on Binance). Fills of one side at one
    timestamp are taken as one market order; two distinct orders of one side in the same
    millisecond are merged too (rare, and indistinguishable in the public stream).

    Args:
        trades: ``read_capture(...)["trades"]`` (columns ``time`` s, ``price``, ``qty`` base
            units, ``side`` +1/-1).

    Returns:
        DataFrame sorted by time with ``time`` (s), ``side`` (+1 buy, -1 sell), ``qty`` (base
        units, summed), ``notional`` (quote currency), ``vwap``, ``first_price``, ``last_price``
        (quote per base) and ``n_fills``.
    """
    t = trades.assign(notional=trades["price"] * trades["qty"])
    g = t.groupby(["time", "side"], sort=True)
    out = g.agg(
        qty=("qty", "sum"),
        notional=("notional", "sum"),
        first_price=("price", "first"),
        last_price=("price", "last"),
        n_fills=("qty", "size"),
    ).reset_index()
    out["vwap"] = out["notional"] / out["qty"]
    return out[["time", "side", "qty", "notional", "vwap", "first_price", "last_price", "n_fills"]]


# ----------------------------------------------------------------------------------------------
# Hawkes processes with an exponential kernel


def _linear_scan(c: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Solve ``y_i = c_i y_{i-1} + d_i`` (``y_{-1} = 0``) for all i by a parallel prefix scan.

    Hillis-Steele doubling: log2(n) vectorised passes, each composing affine maps
    ``(c, d)_early o (c, d)_late = (c_early c_late, c_late d_early + d_late)``. With 0 <= c <= 1
    and d >= 0 every step multiplies numbers at most 1 and adds positives, so it neither
    overflows nor cancels (relative error O(eps log n)). ``c`` is (n,), ``d`` (n,) or (n, D).
    """
    C = np.array(c, dtype=np.float64)
    D = np.array(d, dtype=np.float64)
    Cb = C[:, None] if D.ndim == 2 else C
    n = len(C)
    s = 1
    while s < n:
        D[s:] = D[s:] + Cb[s:] * D[:-s]
        C[s:] = C[s:] * C[:-s]
        Cb = C[:, None] if D.ndim == 2 else C
        s *= 2
    return D


def _exp_sums(t: np.ndarray, beta: float, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Decayed sums over strictly earlier events, O(n log n) work in O(log n) numpy passes.

    For sorted times ``t`` (n,) and weights ``w`` (n, D) returns
    ``A[i, d] = sum_{j: t_j < t_i} w[j, d] e^{-beta (t_i - t_j)}`` and
    ``B[i, d] = sum_{j: t_j < t_i} w[j, d] (t_i - t_j) e^{-beta (t_i - t_j)}`` (= -dA/dbeta).

    These are Ozaki's recursions ``A_i = e^{-beta (t_i - t_{i-1})} (A_{i-1} + w_{i-1})`` and
    ``B_i = e^{-beta (t_i - t_{i-1})} B_{i-1} + (t_i - t_{i-1}) A_i``, solved by
    :func:`_linear_scan`. Simultaneous events (ties) do not excite one another (the intensity is
    left-continuous): ties are merged into one time with their summed weight first.
    """
    n, dim = w.shape
    if n == 0:
        return np.zeros((0, dim)), np.zeros((0, dim))
    u, first, grp = np.unique(t, return_index=True, return_inverse=True)
    W = np.zeros((len(u), dim))
    np.add.at(W, grp, w)
    gap = np.diff(u, prepend=u[0])
    c = np.exp(-beta * gap)
    d = np.zeros_like(W)
    d[1:] = c[1:, None] * W[:-1]
    Ag = _linear_scan(c, d)
    Bg = _linear_scan(c, gap[:, None] * Ag)
    return Ag[grp], Bg[grp]


def _mv_loglik(t, k, T, mu, a, beta, grad=True):
    """Log-likelihood (and gradient) of a D-variate exponential Hawkes with one decay ``beta``.

    ``lambda_m(t) = mu[m] + sum_d a[m, d] sum_{j: type d, t_j < t} e^{-beta (t - t_j)}``; events
    ``t`` (sorted) of types ``k`` on [0, T]. Returns (loglik, dmu, da, dbeta, lam, A).
    """
    dim = len(mu)
    w = (k[:, None] == np.arange(dim)[None, :]).astype(float)
    A, Bm = _exp_sums(t, beta, w)
    ak = a[k]  # (n, D): row of the excitation matrix for each event's own type
    lam = mu[k] + np.sum(ak * A, axis=1)
    if np.any(lam <= 0) or not np.all(np.isfinite(lam)):
        return -np.inf, None, None, None, lam, A
    E = np.exp(-beta * (T - t))

    # Sums by event type via bincount rather than matrix products: tiny BLAS calls wake
    # OpenBLAS's thread pool, whose spinning threads slow everything else on a shared CPU.
    def by_type(v):
        return np.bincount(k, weights=v, minlength=dim)

    G = by_type(1.0 - E)  # (D,) sum over type-d events of (1 - e^{-beta (T - t_j)})
    colsum = a.sum(axis=0)  # total excitation a type-d event gives all dimensions
    ll = float(np.sum(np.log(lam)) - T * mu.sum() - np.dot(colsum, G) / beta)
    if not grad:
        return ll, None, None, None, lam, A
    inv = 1.0 / lam
    dmu = by_type(inv) - T
    da = np.stack([by_type(A[:, d] * inv) for d in range(dim)], axis=1) - (G / beta)[None, :]
    H = by_type((T - t) * E)
    dbeta = float(-np.sum(np.sum(ak * Bm, axis=1) * inv) + np.dot(colsum, G / beta**2 - H / beta))
    return ll, dmu, da, dbeta, lam, A


def _prepare_times(times, T, t0):
    t = np.sort(np.asarray(times, dtype=np.float64).ravel()) - float(t0)
    horizon = float(T) - float(t0)
    if not np.isfinite(horizon) or horizon <= 0:
        raise ValueError(f"observation window must be positive: T - t0 = {horizon}")
    if not np.all(np.isfinite(t)):
        raise ValueError("event times must be finite")
    if len(t) and (t[0] < 0 or t[-1] > horizon):
        raise ValueError(f"event times must lie in [t0, T] = [{t0}, {T}]; got [{t[0] + t0}, {t[-1] + t0}]")
    return t, horizon


def hawkes_exp_loglik(times, T: float, mu: float, alpha: float, beta: float, t0: float = 0.0) -> float:
    """Exact log-likelihood of a univariate exponential Hawkes process on [t0, T].

    ``lambda(t) = mu + alpha sum_{t_i < t} e^{-beta (t - t_i)}`` (Ozaki 1979):
    ``l = -mu T - (alpha / beta) sum_i (1 - e^{-beta (T - t_i)}) + sum_i log(mu + alpha A_i)``,
    ``A_1 = 0``, ``A_i = e^{-beta (t_i - t_{i-1})} (1 + A_{i-1})`` (times measured from t0).

    Args:
        times: event times (s), inside [t0, T].
        T: end of the observation window (s, same clock as ``times``).
        mu: baseline intensity (per second); alpha: jump of the intensity per event (per second);
        beta: decay rate (per second).
        t0: start of the observation window (s).
    """
    t, horizon = _prepare_times(times, T, t0)
    k = np.zeros(len(t), dtype=np.int64)
    ll, *_ = _mv_loglik(t, k, horizon, np.array([mu], float), np.array([[alpha]], float), float(beta), grad=False)
    return ll


def _hessian(grad_fn, p, rel=1e-4):
    """Central-difference Jacobian of an analytic gradient (symmetrised): the Hessian at p."""
    p = np.asarray(p, float)
    m = len(p)
    H = np.empty((m, m))
    for j in range(m):
        h = rel * max(abs(p[j]), 1e-12)
        e = np.zeros(m)
        e[j] = h
        H[:, j] = (grad_fn(p + e) - grad_fn(p - e)) / (2 * h)
    return 0.5 * (H + H.T)


def _cov_from_info(H):
    """Inverse of the observed information -H, or NaNs when it is not positive definite."""
    info = -H
    try:
        np.linalg.cholesky(info)
        return np.linalg.inv(info)
    except np.linalg.LinAlgError:
        return np.full_like(info, np.nan)


def _compensator_increments(t, k, mu, a, beta, A, dim_sel):
    """Time-rescaled inter-event gaps of dimension ``dim_sel``: i.i.d. Exp(1) under the model.

    ``Lambda_m(t_i) = mu_m t_i + sum_d a[m, d] / beta (N_d(< t_i) - A[i, d])``, evaluated at the
    events of type m, then differenced (Lambda_m(0) = 0).
    """
    dim = len(mu)
    w = (k[:, None] == np.arange(dim)[None, :]).astype(float)
    counts = np.cumsum(w, axis=0) - w  # events strictly before, by type (ties counted once below)
    first = np.searchsorted(t, t, side="left")
    counts = counts[first] if len(t) else counts
    sel = k == dim_sel
    lam_int = mu[dim_sel] * t[sel] + np.sum((counts[sel] - A[sel]) * (a[dim_sel] / beta), axis=1)
    return np.diff(np.concatenate([[0.0], lam_int]))


def _ks_exp(tau):
    if len(tau) < 2:
        return float("nan"), float("nan")
    res = stats.kstest(tau, "expon")
    return float(res.statistic), float(res.pvalue)


@_blas_one_thread
def fit_hawkes_exp(times, T: float, t0: float = 0.0, *, max_branching: float = 0.999) -> dict:
    """Maximum-likelihood fit of a univariate exponential Hawkes process on [t0, T].

    Model: ``lambda(t) = mu + alpha sum_{t_i < t} e^{-beta (t - t_i)}``, branching ratio
    ``n = alpha / beta < 1``. The likelihood is Ozaki's recursive form (:func:`hawkes_exp_loglik`);
    it is maximised by L-BFGS-B over (log mu, log n, log beta) with ``n <= max_branching`` (so
    alpha < beta holds), from several starts, with the analytic gradient. Standard errors come
    from the observed information (the Hessian of the log-likelihood in (mu, alpha, beta),
    central differences of the analytic gradient); they are NaN when the information is not
    positive definite. Goodness of fit: under the fitted model the compensator increments
    ``Lambda(t_i) - Lambda(t_{i-1})`` are i.i.d. Exp(1) (time rescaling); the KS statistic and
    p-value of that test are returned, and the same for the best Poisson fit for comparison.

    Args:
        times: event times (s) in [t0, T].
        T: end of the observation window (s).
        t0: start of the observation window (s).
        max_branching: upper bound on alpha / beta.

    Returns:
        dict with ``mu`` (per second), ``alpha`` (per second per event), ``beta`` (per second),
        ``branching`` (alpha / beta), each with ``*_se``; ``stationary_rate`` = mu / (1 - n) (per
        second) and ``mean_rate`` = n_events / window (per second); ``loglik``,
        ``loglik_poisson`` and ``lr_stat`` (2 x their difference); ``ks_stat``, ``ks_pvalue``,
        ``ks_stat_poisson``, ``ks_pvalue_poisson``; ``n`` (events), ``window`` (s), ``converged``,
        ``at_bound`` (True when the optimum sits on a parameter bound, where SEs are unreliable).
    """
    t, horizon = _prepare_times(times, T, t0)
    n = len(t)
    if n < 3:
        raise ValueError(f"need at least 3 events to fit a Hawkes process, got {n}")
    k = np.zeros(n, dtype=np.int64)
    rate = n / horizon

    def unpack(z):
        mu, nb, beta = np.exp(z)
        return mu, nb * beta, beta

    def nll(z):
        mu, alpha, beta = unpack(z)
        ll, dmu, da, db, _, _ = _mv_loglik(t, k, horizon, np.array([mu]), np.array([[alpha]]), beta)
        if not np.isfinite(ll):
            return 1e300, np.zeros(3)
        g_mu, g_al, g_be = dmu[0], da[0, 0], db
        g = np.array([mu * g_mu, alpha * g_al, alpha * g_al + beta * g_be])
        return -ll / n, -g / n

    lo_b, hi_b = math.log(1e-3 / horizon), math.log(1e4 * max(rate, 1.0 / horizon) + 1e3)
    bounds = [(math.log(1e-6 * rate), math.log(10 * rate)), (math.log(1e-6), math.log(max_branching)), (lo_b, hi_b)]
    best = None
    for b0 in (0.3, 3.0, 30.0):
        for n0 in (0.2, 0.6):
            beta0 = b0 * rate
            z0 = np.clip(
                [math.log(rate * (1 - n0)), math.log(n0), math.log(beta0)],
                [b[0] for b in bounds],
                [b[1] for b in bounds],
            )
            res = optimize.minimize(
                nll,
                z0,
                jac=True,
                method="L-BFGS-B",
                bounds=bounds,
                options={"maxiter": 1000, "ftol": 1e-13, "gtol": 1e-9},
            )
            if best is None or res.fun < best.fun:
                best = res
    mu, alpha, beta = unpack(best.x)
    p = np.array([mu, alpha, beta])

    def grad_nat(q):
        _, dmu, da, db, _, _ = _mv_loglik(t, k, horizon, q[:1], q[1:2].reshape(1, 1), q[2])
        if dmu is None:
            return np.full(3, np.nan)
        return np.array([dmu[0], da[0, 0], db])

    cov = _cov_from_info(_hessian(grad_nat, p))
    se = np.sqrt(np.diag(cov))
    jb = np.array([0.0, 1.0 / beta, -alpha / beta**2])  # delta method for n = alpha / beta
    nb = alpha / beta
    ll, _, _, _, _, A = _mv_loglik(t, k, horizon, p[:1], p[1:2].reshape(1, 1), beta, grad=False)
    tau = _compensator_increments(t, k, p[:1], p[1:2].reshape(1, 1), beta, A, 0)
    ks, ksp = _ks_exp(tau)
    ll0 = n * math.log(rate) - n
    ks0, ksp0 = _ks_exp(np.diff(np.concatenate([[0.0], t])) * rate)
    at_bound = bool(
        np.any(
            np.isclose(best.x, [b[0] for b in bounds], atol=1e-6)
            | np.isclose(best.x, [b[1] for b in bounds], atol=1e-6)
        )
    )
    return {
        "mu": mu,
        "mu_se": se[0],
        "alpha": alpha,
        "alpha_se": se[1],
        "beta": beta,
        "beta_se": se[2],
        "branching": nb,
        "branching_se": float(np.sqrt(jb @ cov @ jb)),
        "stationary_rate": mu / (1 - nb),
        "mean_rate": rate,
        "loglik": ll,
        "loglik_poisson": ll0,
        "lr_stat": 2 * (ll - ll0),
        "ks_stat": ks,
        "ks_pvalue": ksp,
        "ks_stat_poisson": ks0,
        "ks_pvalue_poisson": ksp0,
        "n": n,
        "window": horizon,
        "converged": bool(best.success),
        "at_bound": at_bound,
    }


@_blas_one_thread
def fit_hawkes_bivariate_exp(times_buy, times_sell, T: float, t0: float = 0.0, *, max_branching: float = 0.999) -> dict:
    """MLE of the spec's buy/sell Hawkes pair (Part 5) with one decay rate.

    Model (times in seconds, intensities per second)::

        lambda_buy(t)  = mu_buy  + alpha_buy  sum_buy  e^{-beta (t - s)} + gamma sum_sell e^{-beta (t - s)}
        lambda_sell(t) = mu_sell + alpha_sell sum_sell e^{-beta (t - s)} + gamma sum_buy  e^{-beta (t - s)}

    The likelihood is the sum of the two dimensions' exact log-likelihoods (the recursion of
    :func:`hawkes_exp_loglik` for each source dimension). It is maximised by L-BFGS-B over the
    logs of (mu_buy, mu_sell, alpha_buy / beta, alpha_sell / beta, gamma / beta, beta), each
    ratio at most ``max_branching``; stability (spectral radius of the branching matrix
    ``[[alpha_buy, gamma], [gamma, alpha_sell]] / beta`` below 1) is reported, not imposed.
    Standard errors from the observed information; KS statistics of the time-rescaled gaps per
    side.

    Returns:
        dict with ``mu_buy``, ``mu_sell``, ``alpha_buy``, ``alpha_sell``, ``gamma``, ``beta``
        (per second) with ``*_se``; ``spectral_radius``; ``stationary_rate_buy``/``_sell``
        (``(I - K)^{-1} mu``, per second); ``loglik``; ``ks_stat_buy``, ``ks_pvalue_buy``,
        ``ks_stat_sell``, ``ks_pvalue_sell``; ``n_buy``, ``n_sell``, ``n``; ``window`` (s);
        ``converged``; ``at_bound``.
    """
    tb, horizon = _prepare_times(times_buy, T, t0)
    ts, _ = _prepare_times(times_sell, T, t0)
    t = np.concatenate([tb, ts])
    k = np.concatenate([np.zeros(len(tb), np.int64), np.ones(len(ts), np.int64)])
    order = np.argsort(t, kind="mergesort")
    t, k = t[order], k[order]
    n = len(t)
    if len(tb) < 3 or len(ts) < 3:
        raise ValueError(f"need at least 3 events per side, got {len(tb)} buys and {len(ts)} sells")

    def natural(z):
        mb, ms, kb, ks_, kc, beta = np.exp(z)
        return np.array([mb, ms]), np.array([[kb * beta, kc * beta], [kc * beta, ks_ * beta]]), beta

    def nll(z):
        mu, a, beta = natural(z)
        ll, dmu, da, db, _, _ = _mv_loglik(t, k, horizon, mu, a, beta)
        if not np.isfinite(ll):
            return 1e300, np.zeros(6)
        g_ab, g_as, g_c = da[0, 0], da[1, 1], da[0, 1] + da[1, 0]
        ab, as_, c = a[0, 0], a[1, 1], a[0, 1]
        g = np.array(
            [
                mu[0] * dmu[0],
                mu[1] * dmu[1],
                ab * g_ab,
                as_ * g_as,
                c * g_c,
                ab * g_ab + as_ * g_as + c * g_c + beta * db,
            ]
        )
        return -ll / n, -g / n

    rb, rs = len(tb) / horizon, len(ts) / horizon
    rate = n / horizon
    lk = (math.log(1e-8), math.log(max_branching))
    bounds = [
        (math.log(1e-6 * rb), math.log(10 * rb)),
        (math.log(1e-6 * rs), math.log(10 * rs)),
        lk,
        lk,
        lk,
        (math.log(1e-3 / horizon), math.log(1e4 * rate + 1e3)),
    ]
    # Starts: the univariate fits (a good beta) and a few generic points.
    starts = []
    for b0 in (0.3, 3.0, 30.0):
        for n0 in (0.2, 0.5):
            starts.append(
                [
                    math.log(rb * (1 - n0)),
                    math.log(rs * (1 - n0)),
                    math.log(0.8 * n0),
                    math.log(0.8 * n0),
                    math.log(0.2 * n0),
                    math.log(b0 * rate),
                ]
            )
    try:
        ub = fit_hawkes_exp(tb + t0, T, t0)
        us = fit_hawkes_exp(ts + t0, T, t0)
        b_init = math.sqrt(ub["beta"] * us["beta"])
        starts.append(
            [
                math.log(ub["mu"]),
                math.log(us["mu"]),
                math.log(max(ub["branching"], 1e-3)),
                math.log(max(us["branching"], 1e-3)),
                math.log(0.05),
                math.log(b_init),
            ]
        )
    except (ValueError, FloatingPointError):
        pass
    lo, hi = np.array([b[0] for b in bounds]), np.array([b[1] for b in bounds])
    best = None
    for z0 in starts:
        res = optimize.minimize(
            nll,
            np.clip(z0, lo, hi),
            jac=True,
            method="L-BFGS-B",
            bounds=bounds,
            options={"maxiter": 2000, "ftol": 1e-13, "gtol": 1e-9},
        )
        if best is None or res.fun < best.fun:
            best = res
    mu, a, beta = natural(best.x)
    p = np.array([mu[0], mu[1], a[0, 0], a[1, 1], a[0, 1], beta])

    def grad_nat(q):
        m = q[:2]
        am = np.array([[q[2], q[4]], [q[4], q[3]]])
        _, dmu, da, db, _, _ = _mv_loglik(t, k, horizon, m, am, q[5])
        if dmu is None:
            return np.full(6, np.nan)
        return np.array([dmu[0], dmu[1], da[0, 0], da[1, 1], da[0, 1] + da[1, 0], db])

    cov = _cov_from_info(_hessian(grad_nat, p))
    se = np.sqrt(np.diag(cov))
    K = a / beta
    radius = float(np.max(np.abs(np.linalg.eigvals(K))))
    stat = np.linalg.solve(np.eye(2) - K, mu) if radius < 1 else np.full(2, np.inf)
    ll, _, _, _, _, A = _mv_loglik(t, k, horizon, mu, a, beta, grad=False)
    ksb = _ks_exp(_compensator_increments(t, k, mu, a, beta, A, 0))
    kss = _ks_exp(_compensator_increments(t, k, mu, a, beta, A, 1))
    at_bound = bool(np.any(np.isclose(best.x, lo, atol=1e-6) | np.isclose(best.x, hi, atol=1e-6)))
    names = ("mu_buy", "mu_sell", "alpha_buy", "alpha_sell", "gamma", "beta")
    out = {}
    for i, name in enumerate(names):
        out[name] = float(p[i])
        out[name + "_se"] = float(se[i])
    out.update(
        spectral_radius=radius,
        stationary_rate_buy=float(stat[0]),
        stationary_rate_sell=float(stat[1]),
        loglik=ll,
        ks_stat_buy=ksb[0],
        ks_pvalue_buy=ksb[1],
        ks_stat_sell=kss[0],
        ks_pvalue_sell=kss[1],
        n_buy=len(tb),
        n_sell=len(ts),
        n=n,
        window=horizon,
        converged=bool(best.success),
        at_bound=at_bound,
    )
    return out


# ----------------------------------------------------------------------------------------------
# Ornstein-Uhlenbeck


def fit_ou(x, dt: float) -> dict:
    """Fit dX = kappa (theta - X) dt + sigma dW from equally spaced observations.

    Exact discretisation: ``X_{t+dt} = a + b X_t + e``, ``b = e^{-kappa dt}``,
    ``a = theta (1 - b)``, ``Var e = sigma^2 (1 - b^2) / (2 kappa)``. ``a, b`` by least squares;
    then ``kappa = -ln b / dt``, ``theta = a / (1 - b)``, ``sigma = sqrt(2 kappa s^2 / (1 - b^2))``,
    with standard errors by the delta method from the OLS covariance of (a, b) and
    ``Var s^2 = 2 s^4 / (n - 2)``. Needs 0 < b < 1 (mean reversion); otherwise kappa, theta and
    sigma are NaN and ``mean_reverting`` is False.

    Args:
        x: the observations (1-D), in the process's own units.
        dt: the spacing (e.g. seconds).

    Returns:
        dict with ``kappa`` (per unit of dt's time), ``theta`` (units of x), ``sigma`` (units of x
        per sqrt time), each with ``*_se``; ``half_life`` (time), ``stationary_sd`` =
        sigma / sqrt(2 kappa) (units of x), ``b`` and ``b_se`` (AR(1) coefficient), ``resid_sd``,
        ``n`` (transitions), ``dt``, ``mean_reverting``.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if len(x) < 4:
        raise ValueError(f"need at least 4 observations, got {len(x)}")
    if not (dt > 0):
        raise ValueError(f"dt must be positive, got {dt}")
    x0, x1 = x[:-1], x[1:]
    if np.ptp(x0) == 0:
        raise ValueError("the series is constant: an OU fit needs variation")
    n = len(x1)
    X = np.column_stack([np.ones(n), x0])
    coef, *_ = np.linalg.lstsq(X, x1, rcond=None)
    a, b = coef
    resid = x1 - X @ coef
    s2 = float(resid @ resid / (n - 2))
    cov_ab = s2 * np.linalg.inv(X.T @ X)
    out = {"b": float(b), "b_se": float(np.sqrt(cov_ab[1, 1])), "resid_sd": math.sqrt(s2), "n": n, "dt": float(dt)}
    nan = float("nan")
    if not (0.0 < b < 1.0):
        out.update(
            kappa=nan,
            kappa_se=nan,
            theta=nan,
            theta_se=nan,
            sigma=nan,
            sigma_se=nan,
            half_life=nan,
            stationary_sd=nan,
            mean_reverting=False,
        )
        return out

    def g(q):
        aa, bb, ss = q
        kap = -math.log(bb) / dt
        return np.array([kap, aa / (1 - bb), math.sqrt(ss * 2 * kap / (1 - bb * bb))])

    q = np.array([a, b, s2])
    cov = np.zeros((3, 3))
    cov[:2, :2] = cov_ab
    cov[2, 2] = 2 * s2 * s2 / (n - 2)
    J = np.empty((3, 3))
    for j in range(3):
        h = 1e-6 * max(abs(q[j]), 1e-12)
        h = min(h, 0.5 * min(b, 1 - b)) if j == 1 else h
        e = np.zeros(3)
        e[j] = h
        J[:, j] = (g(q + e) - g(q - e)) / (2 * h)
    val = g(q)
    se = np.sqrt(np.diag(J @ cov @ J.T))
    out.update(
        kappa=float(val[0]),
        kappa_se=float(se[0]),
        theta=float(val[1]),
        theta_se=float(se[1]),
        sigma=float(val[2]),
        sigma_se=float(se[2]),
        half_life=math.log(2) / val[0],
        stationary_sd=float(val[2] / math.sqrt(2 * val[0])),
        mean_reverting=True,
    )
    return out


# ----------------------------------------------------------------------------------------------
# Tails


def hill_tail_index(sizes, k: int | None = None) -> dict:
    """Hill estimator of the Pareto tail index of positive sizes.

    With order statistics ``x_(1) >= x_(2) >= ...``, ``alpha = k / sum_{i <= k} ln(x_(i) / x_(k+1))``
    and ``se = alpha / sqrt(k)`` (asymptotic). The fitted tail is
    ``P(X > x | X > x_(k+1)) = (x / x_(k+1))^{-alpha}``: a Pareto law with scale
    ``x_min = x_(k+1)`` and tail ``alpha`` for the top ``k / n`` fraction.

    Args:
        sizes: positive values (non-positive and non-finite values are dropped).
        k: number of upper order statistics; default ``max(10, n // 10)``.

    Returns:
        dict with ``value`` (alpha), ``se``, ``k``, ``n``, ``x_min`` (the threshold, in the
        sizes' units) and ``tail_fraction`` = k / n.
    """
    x = np.asarray(sizes, dtype=np.float64).ravel()
    x = x[np.isfinite(x) & (x > 0)]
    n = len(x)
    if k is None:
        k = max(10, n // 10)
    k = int(k)
    if not 1 <= k < n:
        raise ValueError(f"k must satisfy 1 <= k < n = {n}, got {k}")
    xs = np.sort(x)[::-1]
    thr = xs[k]
    s = float(np.sum(np.log(xs[:k] / thr)))
    alpha = k / s if s > 0 else float("inf")
    return {"value": alpha, "se": alpha / math.sqrt(k), "k": k, "n": n, "x_min": float(thr), "tail_fraction": k / n}


# ----------------------------------------------------------------------------------------------
# Volatility from bars


def _bar_returns(bars: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Log close-to-close returns, their spacing (s) and the end time of each return (s)."""
    t = bars["time"].to_numpy(dtype=np.float64)
    c = bars["close"].to_numpy(dtype=np.float64)
    r = np.diff(np.log(c))
    dt = np.diff(t)
    ok = np.isfinite(r) & (dt > 0)
    return r[ok], dt[ok], t[1:][ok]


def _batch_se(y: np.ndarray, w: np.ndarray, block: int) -> float:
    """Standard error of sum(y) / sum(w) by batch means over consecutive blocks (robust to
    volatility clustering); falls back to i.i.d. when there are fewer than 5 blocks."""
    n = len(y)
    nb = n // block
    if nb >= 5:
        ys = y[: nb * block].reshape(nb, block).sum(1)
        ws = w[: nb * block].reshape(nb, block).sum(1)
        ratio = ys / ws
        return float(np.std(ratio, ddof=1) / math.sqrt(nb))
    z = y / w.mean()
    return float(np.std(z, ddof=1) / math.sqrt(n))


def realized_variance_per_second(bars: pd.DataFrame, *, block: int = 1440) -> dict:
    """Realized variance of log price per second from 1-minute bars.

    ``v = sum r_i^2 / sum dt_i`` over close-to-close log returns r_i with spacing dt_i (s). The
    standard error is by batch means over blocks of ``block`` returns (one day of minutes by
    default), which keeps volatility clustering out of the error bar.

    Returns:
        dict with ``value`` (variance per second), ``se``, ``sigma`` = sqrt(value) (per sqrt
        second) with ``sigma_se``, ``sigma_annual`` (sqrt(value * 365.25 * 86400), for reference)
        and ``n`` (returns).
    """
    r, dt, _ = _bar_returns(bars)
    if len(r) < 2:
        raise ValueError("need at least 3 bars")
    v = float(np.sum(r * r) / np.sum(dt))
    se = _batch_se(r * r, dt, block)
    sig = math.sqrt(v)
    return {
        "value": v,
        "se": se,
        "sigma": sig,
        "sigma_se": se / (2 * sig) if sig > 0 else float("nan"),
        "sigma_annual": math.sqrt(v * 365.25 * 86400),
        "n": len(r),
    }


def volatility_regimes(
    bars: pd.DataFrame, *, window_s: float = 3600.0, thresholds: tuple[float, float, float] = REGIME_THRESHOLDS
) -> dict:
    """Classify minutes into the spec's volatility regimes and estimate the regime chain.

    The regime at each bar is read from the trailing realized vol over ``window_s`` (1 hour, the
    spec's ``realized_vol_1h``): ``ratio = sqrt(RV_window / v_bar)`` with ``v_bar`` the long-run
    variance per second of the whole sample (the spec divides by the Normal regime's sqrt(theta);
    the sample's long-run level is the data-driven stand-in). low: ratio < 0.5, normal: < 1.5,
    high: < 3, extreme: >= 3. Bars before the first full window are not classified.

    Per regime r: occupancy (fraction of classified time), mean variance per second
    ``sum_{i in r} r_i^2 / sum_{i in r} dt_i`` with its batch-means SE, and the number of bars.
    The generator is the continuous-time Markov-chain MLE from the classified path:
    ``Q[i, j] = N_ij / T_i`` (transitions i -> j per second spent in i), ``Q[i, i] = -sum_j Q[i, j]``,
    ``se = sqrt(N_ij) / T_i``. Threshold flicker of a rolling classifier inflates these rates,
    and a rolling window makes the path smoother than the latent regime: read them as the rates
    at which a 1-hour realized-vol classifier changes its mind.

    Returns:
        dict with ``names``, ``thresholds``, ``long_run_variance`` (per second), ``occupancy``
        (4,), ``variance`` (4,) per second and ``variance_se``, ``sigma`` (4,) per sqrt second,
        ``n_bars`` (4,), ``time_in`` (4,) seconds, ``counts`` (4, 4) transitions,
        ``generator`` (4, 4) per second and ``generator_se``, ``mean_holding_s`` (4,), ``n``
        (classified bars) and ``regime`` (the classified path, int array aligned with the
        returns ending at ``time``), ``time`` (s).
    """
    r, dt, tend = _bar_returns(bars)
    n_all = len(r)
    step = float(np.median(dt))
    win = max(2, int(round(window_s / step)))
    if n_all <= win:
        raise ValueError(f"need more than {win} returns for a {window_s:.0f} s window")
    v_bar = float(np.sum(r * r) / np.sum(dt))
    c2 = np.concatenate([[0.0], np.cumsum(r * r)])
    cd = np.concatenate([[0.0], np.cumsum(dt)])
    idx = np.arange(win, n_all + 1)  # window (idx - win, idx]
    rv = (c2[idx] - c2[idx - win]) / (cd[idx] - cd[idx - win])
    ratio = np.sqrt(rv / v_bar)
    reg = np.digitize(ratio, thresholds)  # 0 low, 1 normal, 2 high, 3 extreme
    rr, dd = r[win - 1 :], dt[win - 1 :]  # the return classified at each idx
    m = len(REGIME_NAMES)
    occ = np.zeros(m)
    var = np.full(m, np.nan)
    var_se = np.full(m, np.nan)
    nbar = np.zeros(m, dtype=np.int64)
    time_in = np.zeros(m)
    for j in range(m):
        sel = reg == j
        nbar[j] = int(sel.sum())
        time_in[j] = float(dd[sel].sum())
        if nbar[j]:
            var[j] = float(np.sum(rr[sel] ** 2) / time_in[j])
            y = rr[sel] ** 2
            var_se[j] = float(np.std(y / dd[sel], ddof=1) / math.sqrt(nbar[j])) if nbar[j] > 1 else np.nan
    occ = time_in / time_in.sum()
    counts = np.zeros((m, m), dtype=np.int64)
    np.add.at(counts, (reg[:-1], reg[1:]), 1)
    np.fill_diagonal(counts, 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        Q = counts / time_in[:, None]
        Qse = np.sqrt(counts) / time_in[:, None]
    Q[time_in == 0] = np.nan
    Qse[time_in == 0] = np.nan
    np.fill_diagonal(Q, 0.0)
    np.fill_diagonal(Q, -np.nansum(Q, axis=1))
    Q[time_in == 0] = np.nan
    np.fill_diagonal(Qse, np.nan)
    with np.errstate(divide="ignore"):
        hold = np.where(np.diag(Q) < 0, -1.0 / np.diag(Q), np.inf)
    return {
        "names": REGIME_NAMES,
        "thresholds": tuple(thresholds),
        "long_run_variance": v_bar,
        "occupancy": occ,
        "variance": var,
        "variance_se": var_se,
        "sigma": np.sqrt(var),
        "n_bars": nbar,
        "time_in": time_in,
        "counts": counts,
        "generator": Q,
        "generator_se": Qse,
        "mean_holding_s": hold,
        "n": len(reg),
        "regime": reg,
        "time": tend[win - 1 :],
    }


def _variance_moments(rv: np.ndarray, keep: np.ndarray, blk: float) -> tuple[float, float, float]:
    """(kappa, theta, xi) from the mean and lag-1/lag-2 autocovariances of the kept blocks."""
    theta = float(rv[keep].mean())
    d = rv - theta
    k1 = keep[:-1] & keep[1:]
    k2 = keep[:-2] & keep[2:]
    g1 = float(np.mean((d[:-1] * d[1:])[k1]))
    g2 = float(np.mean((d[:-2] * d[2:])[k2]))
    if not (g1 > 0 and 0 < g2 < g1):
        return float("nan"), theta, float("nan")
    b = g2 / g1
    kappa = -math.log(b) / blk
    var_v = g1 * (kappa * blk) ** 2 / (1 - b) ** 2
    return kappa, theta, math.sqrt(2 * kappa * var_v / theta)


def fit_variance_process(bars: pd.DataFrame, *, block_s: float = 3600.0, groups: int = 20) -> dict:
    """Mean reversion and vol-of-vol of the variance, dv = kappa (theta - v) dt + xi sqrt(v) dW.

    Non-overlapping blocks of ``block_s`` seconds give realized variances per second
    ``Y_b = sum r^2 / block length``: the block average of v plus measurement noise that is white
    across blocks. For a stationary process whose autocovariance is ``s^2 e^{-kappa |tau|}``
    (CIR and OU alike), the block averages have, at lags k >= 1,
    ``Cov(Y_b, Y_{b+k}) = s^2 e^{-kappa D (k - 1)} (1 - e^{-kappa D})^2 / (kappa D)^2`` (D the
    block length), untouched by the noise, which only enters lag 0. Hence

    * ``e^{-kappa D} = gamma(2) / gamma(1)``, ``theta`` = mean of Y;
    * ``Var v = s^2 = gamma(1) (kappa D)^2 / (1 - e^{-kappa D})^2`` and, for CIR, whose stationary
      variance is ``theta xi^2 / (2 kappa)``, ``xi = sqrt(2 kappa Var v / theta)``.

    A moment estimator pooled over the whole sample (regime switches included). Standard errors
    by a delete-one-group jackknife over ``groups`` contiguous groups of blocks.

    Returns:
        dict with ``kappa`` (per second), ``theta`` (variance per second), ``xi`` (per sqrt
        second: xi^2 v is the variance rate of v), each with ``*_se``; ``feller``
        (2 kappa theta / xi^2, >= 1 keeps v > 0), ``half_life`` (s), ``noise_share`` (the share
        of Var Y not explained by the fitted latent variance: measurement noise and misfit),
        ``n`` (blocks) and ``block_s``.
    """
    r, dt, _ = _bar_returns(bars)
    step = float(np.median(dt))
    m = max(2, int(round(block_s / step)))
    nb = len(r) // m
    if nb < 2 * groups:
        raise ValueError(f"need at least {2 * groups} blocks of {block_s:.0f} s, got {nb}")
    rb = r[: nb * m].reshape(nb, m)
    db = dt[: nb * m].reshape(nb, m).sum(1)
    rv = (rb**2).sum(1) / db
    blk = float(np.mean(db))
    all_ = np.ones(nb, dtype=bool)
    kappa, theta, xi = _variance_moments(rv, all_, blk)
    jk = []
    edges = np.linspace(0, nb, groups + 1).astype(int)
    for g in range(groups):
        keep = all_.copy()
        keep[edges[g] : edges[g + 1]] = False
        jk.append(_variance_moments(rv, keep, blk))
    jk = np.array(jk)
    with np.errstate(invalid="ignore"):
        se = np.sqrt((groups - 1) / groups * np.sum((jk - jk.mean(0)) ** 2, axis=0))
    nan = float("nan")
    out = {
        "kappa": kappa,
        "kappa_se": float(se[0]),
        "theta": theta,
        "theta_se": float(se[1]),
        "xi": xi,
        "xi_se": float(se[2]),
        "n": nb,
        "block_s": blk,
    }
    if kappa == kappa:
        kd = kappa * blk
        var_v = theta * xi**2 / (2 * kappa)
        var_y_model = var_v * 2 * (kd - 1 + math.exp(-kd)) / kd**2
        out.update(
            feller=2 * kappa * theta / xi**2,
            half_life=math.log(2) / kappa,
            noise_share=1 - var_y_model / float(np.var(rv, ddof=1)),
        )
    else:
        out.update(feller=nan, half_life=nan, noise_share=nan)
    return out


def detect_jumps(bars: pd.DataFrame, *, k: float = 4.0, window: int = 240) -> dict:
    """Threshold jump detection on bar returns against a local bipower volatility.

    The local variance per second at bar i is the bipower variation of the ``window`` returns
    before it, ``(pi/2) sum |r_j||r_{j-1}| / sum dt`` (robust to the jumps themselves). Return i
    is a jump when ``|r_i| > k sqrt(v_local dt_i)``. With Gaussian diffusion the false-alarm rate
    is ``2 (1 - Phi(k))`` per bar (6e-5 at k = 4), somewhat more because v_local is itself
    estimated (a longer window helps: 240 one-minute bars by default); volatility bursts within
    the window also pass as jumps, so on real bars this is an upper bound on the jump rate.

    Returns:
        dict with ``rate`` (jumps per second) and ``rate_se`` (sqrt(N) / T), ``jump_mean`` and
        ``jump_std`` (log price), ``jump_abs_mean``, ``n_jumps``, ``n`` (bars tested),
        ``diffusive_variance`` (per second, realized variance without the jump returns) and
        ``jump_variance_share`` (fraction of realized variance in the jump returns), ``times``
        (end times of the jump bars, s).
    """
    r, dt, tend = _bar_returns(bars)
    a = np.abs(r)
    bp = np.concatenate([[0.0], a[1:] * a[:-1]])
    cbp = np.concatenate([[0.0], np.cumsum(bp)])
    cd = np.concatenate([[0.0], np.cumsum(dt)])
    idx = np.arange(window + 1, len(r))  # bipower over returns (i - window, i - 1]
    lo = idx - window
    v_loc = (np.pi / 2) * (cbp[idx] - cbp[lo + 1]) / (cd[idx] - cd[lo + 1])
    ri, di = r[idx], dt[idx]
    jump = np.abs(ri) > k * np.sqrt(np.maximum(v_loc, 0) * di)
    jr = ri[jump]
    T = float(di.sum())
    tot = float(np.sum(ri**2))
    return {
        "rate": jump.sum() / T,
        "rate_se": math.sqrt(jump.sum()) / T,
        "jump_mean": float(jr.mean()) if len(jr) else float("nan"),
        "jump_std": float(jr.std(ddof=1)) if len(jr) > 1 else float("nan"),
        "jump_abs_mean": float(np.abs(jr).mean()) if len(jr) else float("nan"),
        "n_jumps": int(jump.sum()),
        "n": len(ri),
        "diffusive_variance": (tot - float(np.sum(jr**2))) / T,
        "jump_variance_share": float(np.sum(jr**2)) / tot if tot > 0 else float("nan"),
        "k": k,
        "window": window,
        "times": tend[idx][jump],
    }


# ----------------------------------------------------------------------------------------------
# Top of book


def _sorted_book(book: pd.DataFrame) -> pd.DataFrame:
    return book.sort_values("time", kind="mergesort").reset_index(drop=True)


def mid_variance_per_second(book: pd.DataFrame, step: float = 1.0, *, block: int | None = None) -> dict:
    """Variance of log mid per second from a top-of-book stream sampled every ``step`` seconds.

    The mid ``(bid + ask) / 2`` is sampled on a regular grid (the last quote at or before each
    grid time, previous-tick), log returns are taken over each step, and
    ``v = sum r^2 / (n step)``. Microstructure noise (bid-ask bounce of the mid) adds about
    ``2 Var(noise) / step`` to v; compare steps to see it.

    Returns:
        dict with ``value`` (variance per second), ``se`` (batch means over blocks of
        ``block`` returns, default ~30 blocks), ``sigma`` (per sqrt second), ``n`` (returns),
        ``step`` (s).
    """
    b = _sorted_book(book)
    t = b["time"].to_numpy()
    mid = 0.5 * (b["bid"].to_numpy() + b["ask"].to_numpy())
    grid = np.arange(t[0] + step, t[-1] + 1e-12, step)
    pos = np.searchsorted(t, grid, side="right") - 1
    lm = np.log(mid[pos])
    r = np.diff(lm)
    n = len(r)
    if n < 2:
        raise ValueError("window too short for this step")
    v = float(np.sum(r * r) / (n * step))
    block = block or max(1, n // 30)
    se = _batch_se(r * r, np.full(n, step), block)
    return {"value": v, "se": se, "sigma": math.sqrt(v), "n": n, "step": float(step)}


def _weighted_quantile(x, w, qs):
    o = np.argsort(x, kind="mergesort")
    xs, ws = x[o], w[o]
    cw = np.cumsum(ws)
    cw = cw / cw[-1]
    return np.array([xs[min(np.searchsorted(cw, q, side="left"), len(xs) - 1)] for q in qs])


def touch_stats(book: pd.DataFrame, tick: float) -> dict:
    """Spread and depth at the touch, weighted by the time each quote was live.

    Each top-of-book state is weighted by the time until the next update (exchange time); the
    last state gets no weight.

    Args:
        book: ``read_capture(...)["book_ticker"]``.
        tick: price tick (quote currency).

    Returns:
        dict with ``spread_ticks`` quantiles (``q05, q50, q95, q99``), ``spread_ticks_mean``,
        ``frac_one_tick`` (time fraction at exactly one tick), ``spread_bps`` quantiles and
        ``spread_bps_mean`` (1e4 x spread / mid), ``spread_frac_mean`` (spread / mid),
        ``bid_qty_median``, ``ask_qty_median`` (base units, time-weighted medians),
        ``bid_qty_mean``, ``ask_qty_mean``, ``mid_mean``, ``n`` (updates), ``duration`` (s).
    """
    b = _sorted_book(book)
    t = b["time"].to_numpy()
    w = np.diff(t, append=t[-1])
    bid, ask = b["bid"].to_numpy(), b["ask"].to_numpy()
    mid = 0.5 * (bid + ask)
    spread = ask - bid
    ticks = np.round(spread / tick, 6)
    bps = 1e4 * spread / mid
    qs = (0.05, 0.5, 0.95, 0.99)
    W = w.sum()
    tq = _weighted_quantile(ticks, w, qs)
    bq = _weighted_quantile(bps, w, qs)
    out = {
        "n": len(b),
        "duration": float(t[-1] - t[0]),
        "spread_ticks_mean": float(np.sum(w * ticks) / W),
        "frac_one_tick": float(np.sum(w * (np.abs(ticks - 1) < 1e-6)) / W),
        "spread_bps_mean": float(np.sum(w * bps) / W),
        "spread_frac_mean": float(np.sum(w * spread / mid) / W),
        "bid_qty_median": float(_weighted_quantile(b["bid_qty"].to_numpy(), w, [0.5])[0]),
        "ask_qty_median": float(_weighted_quantile(b["ask_qty"].to_numpy(), w, [0.5])[0]),
        "bid_qty_mean": float(np.sum(w * b["bid_qty"].to_numpy()) / W),
        "ask_qty_mean": float(np.sum(w * b["ask_qty"].to_numpy()) / W),
        "mid_mean": float(np.sum(w * mid) / W),
    }
    for q, a_, c_ in zip(qs, tq, bq):
        tag = f"q{int(round(q * 100)):02d}"
        out[f"spread_ticks_{tag}"] = float(a_)
        out[f"spread_bps_{tag}"] = float(c_)
    return out


def spread_widening(book: pd.DataFrame, tick: float) -> dict:
    """Episodes in which the touch spread is wider than one tick: how often, how wide, how long.

    For a market whose spread sits at one tick almost all the time (BTCUSDT perp), the spread
    process is best read as rare widening jumps that decay: an episode starts when the spread
    leaves one tick and ends when it returns. Durations are in exchange time.

    Returns:
        dict with ``rate`` (episodes per second of one-tick time, i.e. the jump intensity) and
        ``rate_se`` (sqrt(N) / T), ``mean_excess`` (mean of the time-averaged spread in excess of
        one tick during an episode, fraction of mid), ``mean_peak_excess`` (mean of the widest
        excess of each episode, fraction of mid), ``mean_duration`` (s; 1 / duration estimates
        the decay rate), ``frac_wide`` (time fraction wider than one tick) and ``n`` (episodes).
    """
    b = _sorted_book(book)
    t = b["time"].to_numpy()
    mid = 0.5 * (b["bid"].to_numpy() + b["ask"].to_numpy())
    excess = (b["ask"].to_numpy() - b["bid"].to_numpy()) - tick
    wide = excess > 1e-9 * tick
    w = np.diff(t, append=t[-1])
    starts = np.flatnonzero(wide & ~np.concatenate([[False], wide[:-1]]))
    ends = np.flatnonzero(~wide & np.concatenate([[False], wide[:-1]]))  # first narrow index after
    dur, avg, peak = [], [], []
    for s0 in starts:
        e = ends[ends > s0]
        if not len(e):
            break  # episode still open at the end of the capture
        e0 = e[0]
        d = t[e0] - t[s0]
        ex = excess[s0:e0] / mid[s0:e0]
        ww = w[s0:e0]
        dur.append(d)
        avg.append(float(np.sum(ex * ww) / d) if d > 0 else float(ex.mean()))
        peak.append(float(ex.max()))
    narrow_time = float(np.sum(w[~wide]))
    n = len(starts)
    nan = float("nan")
    return {
        "rate": n / narrow_time if narrow_time > 0 else nan,
        "rate_se": math.sqrt(n) / narrow_time if narrow_time > 0 else nan,
        "mean_excess": float(np.mean(avg)) if avg else nan,
        "mean_peak_excess": float(np.mean(peak)) if peak else nan,
        "mean_duration": float(np.mean(dur)) if dur else nan,
        "frac_wide": float(np.sum(w[wide]) / w.sum()),
        "n": n,
    }


def infer_tick(prices) -> float:
    """The price grid of a venue from quoted prices (quote currency): the smallest positive gap
    between distinct prices, rounded to the nearest power-of-ten multiple of 1, 2.5 or 5 (the
    ticks venues use). Raises ValueError with fewer than two distinct finite prices."""
    x = np.unique(np.asarray(prices, float)[np.isfinite(np.asarray(prices, float))])
    if len(x) < 2:
        raise ValueError("need at least two distinct prices to infer the tick")
    gap = float(np.min(np.diff(x)))
    mag = 10.0 ** math.floor(math.log10(gap))
    steps = np.array([1.0, 2.0, 2.5, 5.0, 10.0]) * mag
    return float(steps[np.argmin(np.abs(np.log(steps / gap)))])


def depth_profile(depth: pd.DataFrame, tick: float, levels: int = 5, every_s: float = 10.0) -> dict:
    """Base units resting at the touch and at each of the ``levels - 1`` prices behind it, from a
    snapshot and its diffs (``read_capture(..., depth=True)["depth"]``), sampled every
    ``every_s`` seconds of exchange time from the first snapshot on (a price with no order
    counts 0).

    Returns:
        dict with ``mean`` and ``se`` (``(levels,)`` lists, base units, both sides pooled; the
        standard error over samples, each sample's two sides averaged), ``median``, ``bid`` and
        ``ask`` (per-side means), ``n`` (samples) and ``every_s``. Raises ValueError when the
        table has no snapshot or fewer than two samples.
    """
    if depth is None or not len(depth) or not bool(depth["snapshot"].any()):
        raise ValueError("the depth table has no snapshot: the book behind the touch cannot be rebuilt")
    d = depth.sort_values(["msg"], kind="mergesort")
    first = int(np.flatnonzero(d["snapshot"].to_numpy())[0])
    t, msg, snap = d["time"].to_numpy(), d["msg"].to_numpy(), d["snapshot"].to_numpy()
    side, price, qty = d["side"].to_numpy(), d["price"].to_numpy(), d["qty"].to_numpy()
    book: dict[int, dict[int, float]] = {1: {}, -1: {}}
    samples: list[np.ndarray] = []
    next_t = t[first]
    last_msg = None
    for i in range(first, len(d)):
        if msg[i] != last_msg:  # a new message: sample the book the previous one left
            if last_msg is not None and t[i] >= next_t and book[1] and book[-1]:
                samples.append(_book_levels(book, levels))
                next_t += every_s * max(1.0, math.floor((t[i] - next_t) / every_s) + 1.0)
            if snap[i]:
                book = {1: {}, -1: {}}
            last_msg = msg[i]
        k = int(round(price[i] / tick))
        if qty[i] > 0:
            book[int(side[i])][k] = float(qty[i])
        else:
            book[int(side[i])].pop(k, None)
    if len(samples) < 2:
        raise ValueError(f"only {len(samples)} depth samples every {every_s:g} s: the window is too short")
    x = np.stack(samples)  # (n, 2, levels): bid, ask
    pooled = x.mean(axis=1)
    n = len(x)
    return {
        "mean": pooled.mean(0).tolist(),
        "se": (pooled.std(0, ddof=1) / math.sqrt(n)).tolist(),
        "median": np.median(x.reshape(n * 2, levels), axis=0).tolist(),
        "bid": x[:, 0].mean(0).tolist(),
        "ask": x[:, 1].mean(0).tolist(),
        "n": n,
        "every_s": float(every_s),
    }


def _book_levels(book: dict, levels: int) -> np.ndarray:
    """``(2, levels)``: the sizes at the best bid/ask and the prices behind them, in ticks."""
    bb, ba = max(book[1]), min(book[-1])
    return np.array(
        [[book[1].get(bb - j, 0.0) for j in range(levels)], [book[-1].get(ba + j, 0.0) for j in range(levels)]]
    )


def matched_pareto(median: float, mean: float) -> dict:
    """The Pareto(x_m, a) with this median and mean (base units): mean / median =
    a / ((a - 1) 2^{1/a}). Returns ``size_scale`` (x_m) and ``size_tail`` (a > 1); NaN where no
    a in (1, 50] matches (a mean below the median's Pareto bound)."""
    ratio = mean / median

    def f(a):
        return a / ((a - 1) * 2 ** (1 / a)) - ratio

    try:
        a = optimize.brentq(f, 1 + 1e-9, 50.0)
    except ValueError:
        return {"size_scale": float("nan"), "size_tail": float("nan")}
    return {"size_scale": median / 2 ** (1 / a), "size_tail": a}


def poisson_rate_interval(n: int, T: float, level: float = 0.95) -> tuple[float, float]:
    """Exact (Garwood) interval of a Poisson rate from ``n`` events in ``T`` seconds, per second."""
    a = 1.0 - level
    lo = stats.chi2.ppf(a / 2, 2 * n) / 2 / T if n > 0 else 0.0
    hi = stats.chi2.ppf(1 - a / 2, 2 * n + 2) / 2 / T
    return float(lo), float(hi)


# ----------------------------------------------------------------------------------------------
# Funding


def _num_hessian(f, p, rel=1e-4):
    """Central-difference Hessian of a scalar function at p."""
    p = np.asarray(p, float)
    m = len(p)
    h = rel * np.maximum(np.abs(p), 1e-8)
    H = np.empty((m, m))
    for i in range(m):
        for j in range(i, m):
            ei, ej = np.zeros(m), np.zeros(m)
            ei[i], ej[j] = h[i], h[j]
            H[i, j] = H[j, i] = (f(p + ei + ej) - f(p + ei - ej) - f(p - ei + ej) + f(p - ei - ej)) / (4 * h[i] * h[j])
    return H


def fit_funding_premium(
    rates, *, interest: float = 1e-4, clamp: float = 5e-4, cap: float = 3e-3, dt: float = 28_800.0
) -> dict:
    """Premium-index OU behind a clamped funding series (Binance's formula), per interval.

    The exchange pays ``F = clip(P + clip(I - P, -clamp, clamp), -cap, cap)``: F equals the
    interest rate I whenever the premium index P is within ``clamp`` of it, else
    ``P = F - clamp`` (below the band) or ``P = F + clamp`` (above). The stationary law of an OU
    premium is N(theta, s^2); it is fitted by maximum likelihood with the in-band settlements
    (and those at ``±cap``) as interval-censored observations (a two-sided Tobit). The mean
    reversion speed is taken from the OU fit of the rate itself (:func:`fit_ou` of F): the clamp
    flattens F, so this kappa is an upper bound for the premium's. Then
    ``sigma = s sqrt(2 kappa)``. The likelihood treats settlements as independent; the standard
    errors of theta and s are inflated by the AR(1) factors sqrt((1 + rho) / (1 - rho)) and
    sqrt((1 + rho^2) / (1 - rho^2)) with rho = e^{-kappa dt}.

    Args:
        rates: funding rates, fractions per interval, in time order.
        interest, clamp, cap: the exchange's formula, per interval.
        dt: the settlement interval, seconds.

    Returns:
        dict with ``theta`` (premium mean, per interval), ``stationary_sd`` (per interval),
        ``kappa`` (per second), ``sigma`` (per interval per sqrt(second)), each with ``*_se``;
        ``frac_in_band`` (settlements at exactly I), ``n``.
    """
    F = np.asarray(rates, dtype=np.float64)
    F = F[np.isfinite(F)]
    tol = 1e-9
    in_band = np.abs(F - interest) <= tol
    at_lo = F <= -cap + tol
    at_hi = F >= cap - tol
    obs = ~(in_band | at_lo | at_hi)
    P = np.where(F < interest, F - clamp, F + clamp)[obs]
    n_band, n_lo, n_hi = int(in_band.sum()), int(at_lo.sum()), int(at_hi.sum())
    if len(P) < 3:
        raise ValueError("too few settlements outside the clamp band to fit the premium")

    def ll(q):
        m, logs = q
        sd = math.exp(logs)
        out = np.sum(stats.norm.logpdf(P, m, sd))
        if n_band:
            out += n_band * math.log(
                max(stats.norm.cdf(interest + clamp, m, sd) - stats.norm.cdf(interest - clamp, m, sd), 1e-300)
            )
        if n_lo:
            out += n_lo * stats.norm.logcdf(-cap - clamp, m, sd)
        if n_hi:
            out += n_hi * stats.norm.logsf(cap + clamp, m, sd)
        return float(out)

    z0 = [float(np.mean(F)), math.log(max(float(np.std(P)), 1e-8))]
    res = optimize.minimize(
        lambda q: -ll(q), z0, method="Nelder-Mead", options={"xatol": 1e-12, "fatol": 1e-10, "maxiter": 4000}
    )
    m, logs = res.x
    sd = math.exp(logs)
    cov = _cov_from_info(_num_hessian(ll, res.x))
    ou = fit_ou(F, dt)
    kappa, kappa_se = ou["kappa"], ou["kappa_se"]
    rho = math.exp(-kappa * dt) if kappa == kappa else 0.0
    f_mean = math.sqrt((1 + rho) / (1 - rho))
    f_var = math.sqrt((1 + rho**2) / (1 - rho**2))
    theta_se = math.sqrt(cov[0, 0]) * f_mean
    sd_se = sd * math.sqrt(cov[1, 1]) * f_var
    sigma = sd * math.sqrt(2 * kappa)
    sigma_se = sigma * math.sqrt((sd_se / sd) ** 2 + (kappa_se / (2 * kappa)) ** 2)
    return {
        "theta": float(m),
        "theta_se": theta_se,
        "stationary_sd": sd,
        "stationary_sd_se": sd_se,
        "kappa": kappa,
        "kappa_se": kappa_se,
        "sigma": sigma,
        "sigma_se": sigma_se,
        "frac_in_band": n_band / len(F),
        "n": len(F),
        "converged": bool(res.success),
    }


def funding_divergence(a: pd.DataFrame, b: pd.DataFrame, *, tolerance_s: float = 60.0) -> dict:
    """Difference of two venues' funding rates at common settlement times (``a - b``).

    Settlements are matched when their times (``read_funding``'s ``time``, s) agree within
    ``tolerance_s``. The SE of the mean uses the AR(1)-effective sample size
    ``n (1 - rho) / (1 + rho)``.

    Returns:
        dict with ``mean``, ``mean_se``, ``sd`` (fractions per interval), ``rho1`` (lag-1
        autocorrelation), ``n`` (matched settlements), ``ou`` (:func:`fit_ou` of the difference
        with ``dt`` the median spacing in seconds; None for a constant difference) and ``diff``
        (the aligned series, DataFrame with ``time``, ``a``, ``b``, ``diff``).
    """
    x = a[["time", "rate"]].sort_values("time").rename(columns={"rate": "a"})
    y = b[["time", "rate"]].sort_values("time").rename(columns={"rate": "b", "time": "time_b"})
    m = pd.merge_asof(x, y, left_on="time", right_on="time_b", direction="nearest", tolerance=tolerance_s).dropna()
    m = m.drop_duplicates("time_b")
    d = (m["a"] - m["b"]).to_numpy()
    n = len(d)
    if n < 4:
        raise ValueError(f"only {n} common settlements")
    sd = float(np.std(d, ddof=1))
    varying = np.ptp(d[:-1]) > 0 and np.ptp(d[1:]) > 0
    rho = float(np.corrcoef(d[:-1], d[1:])[0, 1]) if varying else float("nan")
    n_eff = n * (1 - rho) / (1 + rho) if -1 < rho < 1 else n
    spacing = float(np.median(np.diff(m["time"].to_numpy())))
    return {
        "mean": float(d.mean()),
        "mean_se": sd / math.sqrt(max(n_eff, 1.0)),
        "sd": sd,
        "rho1": rho,
        "n": n,
        "ou": fit_ou(d, spacing) if varying else None,
        "diff": pd.DataFrame({"time": m["time"].to_numpy(), "a": m["a"].to_numpy(), "b": m["b"].to_numpy(), "diff": d}),
    }
