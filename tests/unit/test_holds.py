"""The load hold barrier's pure logic: which members the loader waits for, and the member's ack rule."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from streamer.apply.holds import MemberRow, classify
from streamer.ops.replay import _answers

AT = dt.datetime(2026, 12, 1, 12, 0, 0)


def member(name: str, acked: int, seconds_ago: float) -> MemberRow:
    return MemberRow(name, "consume", "g", "host:1", acked, AT - dt.timedelta(seconds=seconds_ago))


def test_live_members_below_the_generation_are_waited_for() -> None:
    rows = [member("fresh-acked", 5, 1), member("fresh-behind", 4, 1), member("new", 0, 0)]
    waiting, dead = classify(rows, 5, AT, expiry_s=30)
    assert [m.member_id for m in waiting] == ["fresh-behind", "new"]
    assert dead == []


def test_silent_members_are_taken_as_stopped_only_past_the_expiry() -> None:
    rows = [member("killed", 4, 31), member("slow", 4, 29), member("killed-but-acked", 5, 100)]
    waiting, dead = classify(rows, 5, AT, expiry_s=30)
    assert [m.member_id for m in waiting] == ["slow"]
    assert [m.member_id for m in dead] == ["killed"]


def test_no_members_no_wait() -> None:
    assert classify([], 1, AT, expiry_s=30) == ([], [])


def test_describe_names_the_member() -> None:
    text = member("abc", 3, 0).describe()
    assert "'abc'" in text and "'g'" in text and "host:1" in text and "generation 3" in text


def test_broker_answers_are_quoted_and_grouped() -> None:
    refused = {
        ("t", 0): "UNKNOWN_MEMBER_ID: Broker: Unknown member",
        ("t", 1): "UNKNOWN_MEMBER_ID: Broker: Unknown member",
        ("u", 0): "GROUP_AUTHORIZATION_FAILED: Broker: Group authorization failed",
    }
    assert _answers(refused) == (
        "'UNKNOWN_MEMBER_ID: Broker: Unknown member' for t[0], t[1]; "
        "'GROUP_AUTHORIZATION_FAILED: Broker: Group authorization failed' for u[0]"
    )
    many = {("t", p): "X" for p in range(7)}
    assert _answers(many) == "'X' for t[0], t[1], t[2], t[3], t[4] and 2 more"


def test_member_registers_before_reading_and_acks_only_when_allowed(tmp_path: Path) -> None:
    """HoldView on a real (SQLite) target: registration, heartbeat, the ack rule, leaving."""
    import sqlalchemy as sa

    from streamer.apply import holds, state
    from streamer.db import create_target_engine

    engine = create_target_engine(f"sqlite:///{tmp_path / 't.db'}")
    try:
        state.upgrade(engine)
        view = holds.HoldView(engine, "consume", "g", interval=0)
        in_flight_old_batch = True

        def can_ack(generation: int) -> bool:
            return not in_flight_old_batch

        with engine.begin() as conn:
            generation = holds.raise_generation(conn)
        assert view.tables(can_ack) == set() and view.generation == generation
        with engine.connect() as conn:
            [row] = holds.members(conn)
        assert (row.member_id, row.kind, row.group, row.acked_generation) == (
            view.member.member_id,
            "consume",
            "g",
            0,
        )
        view.ack(can_ack)  # the old batch is still in flight: no ack
        with engine.connect() as conn:
            assert holds.members(conn)[0].acked_generation == 0
        in_flight_old_batch = False
        view.ack(can_ack)
        with engine.connect() as conn:
            assert holds.members(conn)[0].acked_generation == generation
            waiting, dead = holds.classify(holds.members(conn), generation, holds.now(), 30)
        assert waiting == dead == []
        view.leave()
        with engine.connect() as conn:
            assert holds.members(conn) == []
            assert conn.execute(sa.select(state.members_table)).all() == []
    finally:
        engine.dispose()
