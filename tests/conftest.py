"""Shared test set-up: 64-bit JAX (mmsim turns it on at import), fixed seeds, helpers."""

import numpy as np
import pytest

import mmsim  # noqa: F401  (enables x64 before any test builds arrays)


def pytest_configure(config):
    np.set_printoptions(precision=6, suppress=True)


@pytest.fixture
def seed():
    """The fixed seed of statistical tests: change it and every tolerance must still hold."""
    return 20261125
