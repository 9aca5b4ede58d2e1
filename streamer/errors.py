"""Old import path of :mod:`streamer.core.errors`, kept for the modules not yet moved into the package layout."""

from streamer.core.errors import *  # noqa: F403
