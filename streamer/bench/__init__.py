"""Benchmarks (``python -m streamer.bench.<name>``); ``make bench`` runs them."""
