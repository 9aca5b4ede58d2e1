"""`streamer replay`: parsing --to, resolving new offsets and planning the moves (no broker)."""

from __future__ import annotations

import datetime as dt

import pytest

from streamer.ops.groups import Watermarks, effective_position
from streamer.ops.replay import (
    AtTime,
    Earliest,
    FromGroup,
    Latest,
    Move,
    Positions,
    ReplayError,
    new_offsets,
    parse_timestamp,
    parse_to,
    plan_moves,
)


def test_parse_another_group() -> None:
    assert parse_to(["group:old-group"]) == FromGroup("old-group")
    assert str(parse_to(["group:g.1"])) == "group:g.1"
    with pytest.raises(ReplayError, match="needs a group name"):
        parse_to(["group:"])


def test_parse_words() -> None:
    assert parse_to(["earliest"]) == Earliest()
    assert parse_to(["LATEST"]) == Latest()
    assert parse_to([" latest "]) == Latest()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-05-01T12:00:00Z", dt.datetime(2025, 5, 1, 12, tzinfo=dt.UTC)),
        ("2025-05-01T12:00:00+02:00", dt.datetime(2025, 5, 1, 10, tzinfo=dt.UTC)),
        ("2025-05-01T12:00:00", dt.datetime(2025, 5, 1, 12, tzinfo=dt.UTC)),  # no zone: UTC
        ("2025-05-01 12:00:00.250", dt.datetime(2025, 5, 1, 12, 0, 0, 250000, tzinfo=dt.UTC)),
        ("2025-05-01", dt.datetime(2025, 5, 1, tzinfo=dt.UTC)),
    ],
)
def test_parse_timestamps(text: str, expected: dt.datetime) -> None:
    ms = int(expected.timestamp() * 1000)
    assert parse_timestamp(text) == ms
    assert parse_to([text]) == AtTime(ms)


def test_a_timestamp_is_not_taken_for_a_position() -> None:
    # "2025-05-01T12:00:00" also splits into three colon-separated parts
    assert isinstance(parse_to(["2025-05-01T12:00:00"]), AtTime)


def test_parse_positions_in_every_spelling() -> None:
    expected = Positions({("a.b.c", 0): 5, ("a.b.c", 1): 7, ("x-y_z", 2): 0})
    assert parse_to(["a.b.c:0:5", "a.b.c:1:7", "x-y_z:2:0"]) == expected
    assert parse_to(["a.b.c:0:5,a.b.c:1:7", "x-y_z:2:0"]) == expected
    assert parse_to(["a.b.c:0:5, a.b.c:1:7 ,x-y_z:2:0"]) == expected
    assert parse_to(["a.b.c:0:5", "a.b.c:0:5"]) == Positions({("a.b.c", 0): 5})  # same twice is fine


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([], "empty"),
        ([""], "empty"),
        (["yesterday"], "expected earliest"),
        (["earliest", "latest"], "expected earliest"),
        (["earliest,t:0:1"], "expected earliest"),
        (["t:0:1", "t:0:2"], "twice"),
        (["t:0:-1"], "expected earliest"),
        (["t:x:1"], "expected earliest"),
        (["2025-13-45T00:00:00"], "not an ISO-8601 timestamp"),
    ],
)
def test_parse_errors(values: list[str], message: str) -> None:
    with pytest.raises(ReplayError, match=message):
        parse_to(values)


MARKS = {("t", 0): Watermarks(0, 100), ("t", 1): Watermarks(40, 50), ("t", 2): Watermarks(0, 0)}
PARTS = sorted(MARKS)


def test_new_offsets_earliest_latest() -> None:
    assert new_offsets(Earliest(), PARTS, MARKS) == {("t", 0): 0, ("t", 1): 40, ("t", 2): 0}
    assert new_offsets(Latest(), PARTS, MARKS) == {("t", 0): 100, ("t", 1): 50, ("t", 2): 0}


def test_new_offsets_by_time_falls_back_to_the_end_and_stays_in_the_log() -> None:
    found = {("t", 0): 60, ("t", 1): -1, ("t", 2): -1}
    assert new_offsets(AtTime(0), PARTS, MARKS, found) == {("t", 0): 60, ("t", 1): 50, ("t", 2): 0}
    # an answer below the log start (records since deleted) is clamped to it
    assert new_offsets(AtTime(0), [("t", 1)], MARKS, {("t", 1): 3}) == {("t", 1): 40}


def test_new_offsets_positions_must_be_inside_the_log() -> None:
    target = Positions({("t", 0): 100, ("t", 1): 40})
    assert new_offsets(target, [("t", 0), ("t", 1)], MARKS) == {("t", 0): 100, ("t", 1): 40}
    with pytest.raises(ReplayError, match=r"offset 39 of t\[1\] is outside .*\[40, 50\]"):
        new_offsets(Positions({("t", 1): 39}), [("t", 1)], MARKS)
    with pytest.raises(ReplayError, match=r"offset 101 of t\[0\]"):
        new_offsets(Positions({("t", 0): 101}), [("t", 0)], MARKS)


@pytest.mark.parametrize(
    ("committed", "stored", "low", "expected"),
    [
        (None, None, 0, 0),  # never consumed: auto.offset.reset=earliest
        (None, None, 40, 40),
        (10, None, 0, 10),
        (None, 12, 0, 12),  # Kafka commit lost: the target's offset
        (10, 12, 0, 12),  # died between the database commit and the Kafka commit
        (12, 10, 0, 12),  # target moved back alone: Kafka's is larger and wins
        (10, 10, 0, 10),
        (5, None, 40, 40),  # committed offset deleted by retention: reset to the log start
    ],
)
def test_effective_position_is_what_consume_does_on_assignment(
    committed: int | None, stored: int | None, low: int, expected: int
) -> None:
    assert effective_position(committed, stored, low) == expected


def test_plan_moves_counts_reread_and_skipped() -> None:
    committed = {("t", 0): 80, ("t", 1): 45}
    stored = {("t", 0): 90}
    new = {("t", 0): 30, ("t", 1): 50, ("t", 2): 0}
    moves = plan_moves(PARTS, committed, stored, MARKS, new)
    assert [(m.topic, m.partition) for m in moves] == PARTS
    m0, m1, m2 = moves
    assert (m0.committed, m0.stored, m0.current, m0.new, m0.reread, m0.skipped) == (80, 90, 90, 30, 60, 0)
    assert (m1.committed, m1.stored, m1.current, m1.new, m1.reread, m1.skipped) == (45, None, 45, 50, 0, 5)
    assert (m2.current, m2.reread, m2.skipped) == (0, 0, 0)
    assert m0.to_json() == {
        "topic": "t",
        "partition": 0,
        "committed": 80,
        "stored": 90,
        "current": 90,
        "new": 30,
        "start": 0,
        "end": 100,
        "reread": 60,
        "skipped": 0,
    }


def test_move_to_earliest_rereads_everything_consumed() -> None:
    m = Move("t", 0, committed=100, stored=100, low=0, high=100, new=0)
    assert (m.reread, m.skipped) == (100, 0)


def test_which_moves_write() -> None:
    assert not Move("t", 0, committed=5, stored=5, low=0, high=9, new=5).writes  # already there
    assert Move("t", 0, committed=5, stored=7, low=0, high=9, new=5).writes  # the target is ahead
    assert Move("t", 0, committed=5, stored=None, low=0, high=9, new=5).writes  # no row in the target yet
    assert not Move("t", 0, committed=None, stored=None, low=2, high=9, new=2).writes  # starts there anyway
    assert Move("t", 0, committed=None, stored=None, low=2, high=9, new=9).writes  # latest: skip history
