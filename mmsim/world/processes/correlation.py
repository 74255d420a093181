"""Correlation: correlated standard normal shocks across the asset axis (spec Part 8, world side).

Equations, units, the discretisation over a step and the known biases: ``docs/MODEL.md``, section 9.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mmsim import distributions as dist
from mmsim import rng
from mmsim._pytree import Check, pytree_dataclass, static_field

#: Regime index of the volatility process's Extreme regime (Low, Normal, High, Extreme = 0..3).
EXTREME = 3
#: Smallest eigenvalue accepted for a correlation matrix: positive definite with a margin that
#: keeps the Cholesky factorisation of every blend finite in float32 (eps32 ~ 1.2e-7).
MIN_EIGENVALUE = 1e-6
#: Tolerance of the symmetry and unit-diagonal checks (absolute, per entry).
MATRIX_TOL = 1e-8


def equicorrelation(n_assets: int, rho: float) -> np.ndarray:
    """The (A, A) correlation matrix with every off-diagonal entry ``rho`` (positive definite
    for ``-1/(A - 1) < rho < 1``)."""
    c = np.full((n_assets, n_assets), float(rho))
    np.fill_diagonal(c, 1.0)
    return c


@pytree_dataclass
class CorrParams:
    """Regime-dependent correlation of the assets' shocks.

    Attributes:
        corr: (A, A) correlation matrix outside stress (symmetric, unit diagonal, positive
            definite).
        corr_stress: (A, A) correlation matrix in the stress regime (same rules, same shape).
        stress_speed: speed at which the stress weight moves toward its target, per second (>= 0).
        stress_regime: volatility-regime index that counts as stress (static; 3 = Extreme).
        n_shocks: number of independent sets of correlated shocks per step (static; 2 = price
            and variance).
    """

    corr: jax.Array | np.ndarray = dataclasses.field(default_factory=lambda: np.eye(1))
    corr_stress: jax.Array | np.ndarray = dataclasses.field(default_factory=lambda: np.eye(1))
    stress_speed: jax.Array | float = 1.0 / 60.0
    stress_regime: int = static_field(default=EXTREME)
    n_shocks: int = static_field(default=2)

    def validate(self) -> None:
        c = Check(self)
        for field in ("corr", "corr_stress"):
            _check_corr(c, field)
        c.require(
            np.shape(self.corr) == np.shape(self.corr_stress),
            "corr_stress",
            f"must have the shape of corr {np.shape(self.corr)}, got {np.shape(self.corr_stress)}",
        )
        c.nonneg("stress_speed", "speed of the stress weight, per second")
        c.require(np.ndim(self.stress_speed) == 0, "stress_speed", "must be a scalar")
        c.require(
            isinstance(self.stress_regime, (int, np.integer)) and self.stress_regime >= 0,
            "stress_regime",
            "must be an integer >= 0 (a volatility-regime index)",
        )
        c.require(
            isinstance(self.n_shocks, (int, np.integer)) and self.n_shocks >= 1, "n_shocks", "must be an integer >= 1"
        )

    @property
    def n_assets(self) -> int:
        return int(np.shape(self.corr)[0])


def _check_corr(c: Check, field: str) -> None:
    m = c.finite(field, "correlation matrix")
    c.require(
        m.ndim == 2 and m.shape[0] == m.shape[1] and m.shape[0] >= 1,
        field,
        f"must be a square (A, A) matrix, got shape {m.shape}",
    )
    c.require(
        bool(np.all(np.abs(m - m.T) <= MATRIX_TOL)),
        field,
        f"must be symmetric (largest |C - C^T| = {np.max(np.abs(m - m.T)):.3g})",
    )
    c.require(
        bool(np.all(np.abs(np.diag(m) - 1.0) <= MATRIX_TOL)), field, "must have a unit diagonal (a correlation matrix)"
    )
    lam = float(np.linalg.eigvalsh(m).min())
    c.require(
        lam >= MIN_EIGENVALUE, field, f"must be positive definite (smallest eigenvalue {lam:.6g} < {MIN_EIGENVALUE:g})"
    )


class CorrState(NamedTuple):
    stress: jax.Array  # () stress weight s in [0, 1]
    last_z: jax.Array  # (A, n_shocks) the last step's shocks, asset-major (CorrInfo.z transposed)


class CorrInfo(NamedTuple):
    z: jax.Array  # (n_shocks, A) correlated standard normals of the step
    stress: jax.Array  # () stress weight used for the step's correlation


def init(params: CorrParams, n_assets: int, dtype=jnp.float32) -> CorrState:
    """Stress weight 0 (calm correlation), no shocks yet."""
    if params.n_assets != n_assets:
        raise ValueError(
            f"CorrParams.corr has shape {np.shape(params.corr)}: must be "
            f"({n_assets}, {n_assets}) for n_assets = {n_assets}"
        )
    return CorrState(stress=jnp.zeros((), dtype), last_z=jnp.zeros((n_assets, params.n_shocks), dtype))


def n_uniforms(params: CorrParams) -> int:
    """Uniforms drawn per asset per step: two per shock set (calm and stress parts) when A > 1."""
    return 2 * params.n_shocks


def current_corr(state: CorrState, params: CorrParams) -> jax.Array:
    """(A, A) correlation matrix ``(1 - s) corr + s corr_stress`` at the state's stress weight,
    in the state's dtype."""
    dtype = state.stress.dtype
    s = state.stress
    c0 = jnp.asarray(params.corr).astype(dtype)
    c1 = jnp.asarray(params.corr_stress).astype(dtype)
    return c0 + s * (c1 - c0)


def step(
    key: jax.Array, state: CorrState, params: CorrParams, dt: float, *, regime: jax.Array | int
) -> tuple[CorrState, CorrInfo]:
    """Move the stress weight over ``dt`` seconds and draw this step's correlated shocks.

    Args:
        key: :mod:`mmsim.rng` key for this step.
        state: stress weight () and the last shocks.
        dt: step length, seconds.
        regime: () integer volatility regime during the step (0 Low, 1 Normal, 2 High, 3 Extreme).

    Returns:
        The new state and ``CorrInfo(z=(n_shocks, A) correlated N(0, 1), stress=() weight used)``.
    """
    dtype = state.stress.dtype
    n_a = state.last_z.shape[0]
    target = (jnp.asarray(regime) == params.stress_regime).astype(dtype)
    decay = jnp.exp(-jnp.asarray(params.stress_speed).astype(dtype) * jnp.asarray(dt).astype(dtype))
    s = (target + (state.stress - target) * decay).astype(dtype)
    n_sh = params.n_shocks
    if n_a == 1:
        # L = [[1]]: each shock set is one (A,) row of the (n_shocks, A) draw, drawn as its own array.
        flat = np.arange(n_sh * n_a).reshape(n_sh, n_a)
        rows = rng.uniform_at(key, n_sh * n_a, *flat, dtype=dtype)
        z = jnp.stack([dist.std_normal(r) for r in rows])
    else:
        w = dist.std_normal(rng.uniform(key, (2, n_sh, n_a), dtype))
        l0 = jnp.linalg.cholesky(jnp.asarray(params.corr).astype(dtype))
        l1 = jnp.linalg.cholesky(jnp.asarray(params.corr_stress).astype(dtype))
        z = jnp.sqrt(1.0 - s) * (w[0] @ l0.T) + jnp.sqrt(s) * (w[1] @ l1.T)  # row k: L w_k + ...
    z = z.astype(dtype)
    return CorrState(stress=s, last_z=z.T), CorrInfo(z=z, stress=s)
