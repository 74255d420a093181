"""mmsim: a JAX Monte Carlo risk and strategy simulator for leveraged crypto market making.

Importing mmsim turns on JAX's 64-bit types (``jax_enable_x64``): the counter-based random
number generator in :mod:`mmsim.rng` works on uint64 words. Simulation arrays stay in the dtype
the caller asks for (float32 by default in the simulator); nothing is silently upcast.
"""

import jax

jax.config.update("jax_enable_x64", True)

__version__ = "0.1.0"
