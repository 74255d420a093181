"""Monte Carlo over a world and the engine (:mod:`mmsim.sim.simulate`) and the risk statistics of
its paths (:mod:`mmsim.sim.risk`)."""
