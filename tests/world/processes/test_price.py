"""Price jump-diffusion against its closed-form moments (REFERENCES: jump-diffusion, Merton, Kou)."""

import jax.numpy as jnp
import numpy as np
import pytest

from mmsim import rng
from mmsim.world.processes import price
from tests.world.processes._harness import check_contract, run_paths

SIGMA = 2e-4  # per sqrt(second)
DT = 1.0  # seconds
N_STEPS = 20  # horizon h = 20 s
N_PATHS = 200_000


def const_var(dtype, n_assets):
    return (jnp.full((n_assets,), SIGMA**2 * DT, dtype),), {}


def moments_vs_closed_form(x, mean, var, m4):
    """Compare sample mean, variance and 4th central moment with closed forms within 4 SE."""
    n = x.size
    xc = x - x.mean()
    s2 = xc.var()
    assert abs(x.mean() - mean) < 4 * np.sqrt(s2 / n), (x.mean(), mean)
    se_var = np.sqrt(np.var(xc**2) / n)
    assert abs(s2 - var) < 4 * se_var, (s2, var, se_var)
    se_m4 = np.sqrt(np.var(xc**4) / n)
    assert abs(np.mean(xc**4) - m4) < 4 * se_m4, (np.mean(xc**4), m4, se_m4)


@pytest.mark.parametrize("law", ["merton", "kou"])
def test_jump_diffusion_moments(law, seed):
    if law == "merton":
        p = price.PriceParams(jump_rate=0.02, jump_mean=-1e-3, jump_std=2e-3, drift=1e-5)
        ey = p.jump_mean
        ey2 = p.jump_mean**2 + p.jump_std**2
        ey3 = p.jump_mean**3 + 3 * p.jump_mean * p.jump_std**2
        ey4 = p.jump_mean**4 + 6 * p.jump_mean**2 * p.jump_std**2 + 3 * p.jump_std**4
    else:
        p = price.PriceParams(
            jump_rate=0.02, jump_law="kou", kou_p_up=0.4, kou_eta_up=800.0, kou_eta_down=500.0, drift=1e-5
        )
        q = 1 - p.kou_p_up
        ey = p.kou_p_up / p.kou_eta_up - q / p.kou_eta_down
        ey2 = 2 * p.kou_p_up / p.kou_eta_up**2 + 2 * q / p.kou_eta_down**2
        ey3 = 6 * p.kou_p_up / p.kou_eta_up**3 - 6 * q / p.kou_eta_down**3
        ey4 = 24 * p.kou_p_up / p.kou_eta_up**4 + 24 * q / p.kou_eta_down**4
    (state, info), *_ = run_paths(
        price, p, const_var, n_assets=1, n_paths=N_PATHS, n_steps=N_STEPS, dt=DT, dtype=jnp.float64, seed=seed
    )
    x = np.asarray(state.x[:, 0])
    h = N_STEPS * DT
    lam_h = p.jump_rate * h
    # Cumulants of X = drift h + sigma W_h + sum of N_h jumps: k1 = drift h + lam h E[Y],
    # k2 = sigma^2 h + lam h E[Y^2], k4 = lam h E[Y^4]; 4th central moment = k4 + 3 k2^2.
    k1 = p.drift * h + lam_h * ey
    k2 = SIGMA**2 * h + lam_h * ey2
    k4 = lam_h * ey4
    moments_vs_closed_form(x, k1, k2, k4 + 3 * k2**2)
    assert np.isfinite(ey3)
    # Excess kurtosis = lam h E[Y^4] / Var^2 is large here: the jumps are really there.
    assert k4 / k2**2 > 0.5


def test_martingale_mid(seed):
    p = price.PriceParams(jump_rate=0.05, jump_mean=-5e-3, jump_std=5e-3, martingale=True)
    (state, _), *_ = run_paths(
        price, p, const_var, n_assets=1, n_paths=N_PATHS, n_steps=N_STEPS, dt=DT, dtype=jnp.float64, seed=seed
    )
    s = np.exp(np.asarray(state.x[:, 0]))
    assert abs(s.mean() - 1.0) < 4 * s.std() / np.sqrt(s.size)
    # The compensated mean log return: -sigma^2 h/2 - lam h (E[e^J] - 1) + lam h E[J].
    lr = np.log(s)
    expect = -0.5 * SIGMA**2 * 20 - 0.05 * 20 * np.expm1(-5e-3 + 12.5e-6) + 0.05 * 20 * -5e-3
    assert abs(lr.mean() - expect) < 4 * lr.std() / np.sqrt(lr.size)


def test_jump_count_law(seed):
    """Jumps per step are Poisson(lambda dt), truncated at max_jumps."""
    p = price.PriceParams(jump_rate=0.3, jump_mean=0.0, jump_std=1e-3, max_jumps=6)
    (_, info), *_ = run_paths(
        price, p, const_var, n_assets=1, n_paths=20_000, n_steps=10, dt=DT, dtype=jnp.float64, seed=seed
    )
    n = np.asarray(info.n_jumps).ravel()
    assert abs(n.mean() - 0.3) < 4 * np.sqrt(0.3 / n.size)
    assert abs(n.var() - 0.3) < 4 * np.sqrt(np.var((n - n.mean()) ** 2) / n.size)


def test_leverage_and_funding_drivers():
    p = price.PriceParams(funding_coupling=1.0)
    s = price.init(p, 1, jnp.float64)
    k = rng.key(1)
    a, _ = price.step(k, s, p, 1.0, jnp.zeros(1), funding_rate_per_s=jnp.array([2e-6]))
    b, _ = price.step(
        k,
        s,
        p,
        1.0,
        jnp.zeros(1),
        funding_rate_per_s=jnp.array([0.0]),
        lev_shock=jnp.array([3e-4]),
        impact=jnp.array([-1e-4]),
    )
    # zero variance, no jumps: the return is the drift alone, then the shocks alone.
    np.testing.assert_allclose(a.x, [-2e-6], atol=1e-15)
    np.testing.assert_allclose(b.x, [2e-4], atol=1e-15)
    np.testing.assert_allclose(price.mid(b, p), p.s0 * np.exp(2e-4))


@pytest.mark.parametrize("law", ["merton", "kou"])
def test_contract(law):
    p = price.PriceParams(jump_rate=0.1, jump_std=1e-3, jump_law=law, s0=np.array([60000.0, 3000.0]))
    check_contract(
        price,
        p,
        const_var,
        invalid=[
            ("s0", -1.0),
            ("jump_rate", -0.1),
            ("jump_std", -1.0),
            ("kou_p_up", 1.5),
            ("kou_eta_up", 0.0),
            ("jump_law", "levy"),
            ("max_jumps", 0),
            ("drift", float("nan")),
        ],
    )
    with pytest.raises(ValueError, match=r"kou_eta_up = 0.5: must be > 1 when martingale"):
        price.PriceParams(jump_law="kou", kou_eta_up=0.5, martingale=True)
