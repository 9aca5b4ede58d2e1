"""The state tables' head revision constant matches the migration scripts."""

from __future__ import annotations

from streamer.apply import state


def test_head_revision_constant_is_the_newest_migration() -> None:
    assert state.HEAD_REVISION == state.head_revision()
