"""streamer: change-data-capture into SQL databases."""

__version__ = "0.1.0"
