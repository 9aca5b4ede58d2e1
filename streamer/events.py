"""Old import path of :mod:`streamer.core.events`, kept for the modules not yet moved into the package layout.

``Origin`` here is :class:`~streamer.core.checkpoint.KafkaOrigin` (the loader builds empty ones).
"""

from streamer.core.checkpoint import KafkaOrigin
from streamer.core.events import *  # noqa: F403

Origin = KafkaOrigin
