"""From market data to a market: the readers of exchange captures, funding histories, bars and
liquidation lists (:mod:`mmsim.fit.data`) and the estimators fitted on them
(:mod:`mmsim.fit.calibrate`)."""
