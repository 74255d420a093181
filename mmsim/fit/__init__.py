"""From market data to a market: the readers of exchange captures, funding histories, bars and
liquidation lists (:mod:`mmsim.fit.data`) and the estimators fitted on them
(:mod:`mmsim.fit.calibrate`), and the writer of a market config in the ``conf/market`` schema
(:mod:`mmsim.fit.market_config`)."""
