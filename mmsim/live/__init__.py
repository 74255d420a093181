"""The live side of "two worlds, one engine": exchange messages ▸ :class:`~mmsim.observation.Observation`
▸ ``engine.step`` ▸ quote, with a paper gateway for fills. :mod:`mmsim.live.feed` adapts messages
(recorded or live) to observations, :mod:`mmsim.live.paper` fills quotes on paper and
:mod:`mmsim.live.replay` runs the engine over a recording."""

from mmsim.live.feed import DepthSampler, Feed, feed_from_capture
from mmsim.live.paper import Resting, paper_fills
from mmsim.live.replay import ReplayResult, compare_with_simulation, replay

__all__ = [
    "DepthSampler",
    "Feed",
    "Resting",
    "ReplayResult",
    "compare_with_simulation",
    "feed_from_capture",
    "paper_fills",
    "replay",
]
