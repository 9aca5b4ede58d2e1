"""Chunk boundaries picked from a key's histogram (pure logic of streamer.load.loader)."""

from __future__ import annotations

from streamer.load.loader import _chunks_between, pick_bounds


def test_bounds_are_spread_evenly_over_the_histogram() -> None:
    histogram = list(range(0, 1001, 10))  # 101 bounds, 100 bins
    assert pick_bounds(histogram, 4) == [250, 500, 750]
    assert pick_bounds(histogram, 1) == []


def test_too_few_bins_for_the_chunks_asks_for_a_scan() -> None:
    assert pick_bounds([1, 2, 3], 5) is None


def test_chunks_cover_every_key_once() -> None:
    chunks = _chunks_between([(10,), (20,)])
    assert [(c.no, c.lo, c.hi) for c in chunks] == [(0, None, (10,)), (1, (10,), (20,)), (2, (20,), None)]
    (whole,) = _chunks_between([])
    assert (whole.lo, whole.hi) == (None, None)
