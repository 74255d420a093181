"""The Cramer-Lundberg surplus driven through the project's margin account, for the ruin tests
(tests/sim/test_risk.py, plain paths; tests/sim/test_rare.py, the rare-event estimators).

The surplus U(t) = u + c t - (claims) marks one long unit bought at ``SHIFT`` against cash
``u - SHIFT``, so equity = U(t); the observations arrive at the claim times (irregular dt, as
from a live feed), which is where ruin can happen; the maintenance margin is negligible, so the
account's liquidation <=> U < 0. psi(u) = exp(-R u) / (1 + theta), R = theta / ((1 + theta) mu).
With ``tilted``, the Lundberg tilt: the exponential tilts of the two Exp(1) variables behind each
claim, by -R mu / (1 - R mu) (waiting time) and R mu (claim size).
"""

import math

import jax
import jax.numpy as jnp

from mmsim import distributions as dist
from mmsim import observation, rng
from mmsim.engine import account
from mmsim.sim import risk

LAM, MU, THETA = 1.0, 1.0, 0.25
C = (1 + THETA) * LAM * MU
R = THETA / ((1 + THETA) * MU)
SHIFT = 1e4
PARAMS = account.AccountParams(
    initial_equity=1.0,
    leverage=1.0,
    maintenance_margin=1e-12,
    max_inventory=10.0,
    liquidation_fee=0.0,
    liquidation_slippage=0.0,
)


def psi(u):
    return math.exp(-R * u) / (1 + THETA)


def u_for(p):
    return math.log(1 / ((1 + THETA) * p)) / R


def init(u):
    """A path's start at surplus ``u``: (account, risk, mid, t, log weight)."""

    def start(key):
        st = account.init(PARAMS, 1, jnp.float64)
        st = st._replace(cash=jnp.float64(u - SHIFT), position=jnp.ones(1), last_mid=jnp.full(1, SHIFT))
        z = jnp.zeros((), jnp.float64)
        return st, risk.init(u, 1, jnp.float64), jnp.float64(SHIFT), z, z  # account, risk, mid, t, log w

    return start


def advance(tilted: bool):
    """One claim of a path (nominal, or under the Lundberg tilt), its weight summed to the ruin."""
    eta_c = R * MU if tilted else 0.0
    eta_w = -R * MU / (1 - R * MU) if tilted else 0.0

    def claim_step(key, carry, i):
        st, r, mid, t, lw = carry
        uu = rng.uniform(rng.fold_in(key, i), (2,), jnp.float64)
        u_w, lr_w, _ = dist.tilt_exp(uu[0], eta_w)
        u_c, lr_c, _ = dist.tilt_exp(uu[1], eta_c)
        wait = dist.exponential(1.0 - u_w, LAM)  # -log(1 - u) / lam: the Exp(1) variable tilted
        claim = dist.exponential(1.0 - u_c, 1.0 / MU)
        mid = mid + C * wait - claim
        t = t + wait
        obs = observation.empty(1, jnp.float64)._replace(
            t=t,
            dt=wait,
            mid=jnp.full(1, mid),
            best_bid=jnp.full(1, mid),
            best_ask=jnp.full(1, mid),
            book_valid=jnp.ones(1, bool),
        )
        lw = lw + jnp.where(r.liquidated, 0.0, lr_w + lr_c)  # up to the ruin
        st, info = account.update(PARAMS, st, obs)
        r = risk.update(r, info.equity, info.margin_ratio, st.position, info.liquidated_now, t)
        return st, r, mid, t, lw

    return claim_step


def score(carry):
    st, r, mid, _, _ = carry
    return mid + st.cash, r.liquidated  # the surplus U (one unit marked at mid, plus cash) and the ruin


def run(u, n, n_claims, seed, *, tilted=True):
    """``(ruined, log weight up to the ruin)`` of ``n`` paths of ``n_claims`` claims."""
    init_u, adv = init(u), advance(tilted)

    def path(k):
        c = init_u(k)
        c, _ = jax.lax.scan(lambda c, i: (adv(k, c, i), None), c, jnp.arange(n_claims))
        return c[1].liquidated, c[4]

    return jax.jit(jax.vmap(path))(rng.path_keys(rng.key(seed), 0, n))
