"""Coalescing a batch gives the same target rows as applying its events one by one with the guard.

The reference model is the sink's documented semantics, event by event in arrival order: an upsert
replaces a row it supersedes (a lower or NULL version, or a snapshot row replaced by a streamed
change: `streamer.core.events.supersedes`) and leaves unavailable (unchanged TOAST) columns as
they are; on a missing row it inserts, with NULL for unavailable columns; a delete removes a row
whose version is lower (or NULL). Positions of one key need not increase with arrival: a
deferrable primary key lets a transaction committed later insert a key at a smaller LSN than the
delete of the same key committed before it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.apply.coalesce import MissingVersionError, TablePlan, coalesce, coalesce_rounds
from streamer.apply.schema import Router
from streamer.core.checkpoint import KafkaOrigin
from streamer.core.events import (
    UNAVAILABLE,
    ChangeEvent,
    ColumnType,
    Op,
    SourcePosition,
    TableId,
    pg_version,
    read_version,
    supersedes,
)

T = TableId("db", "public", "items")
COLUMNS = ("id", "a", "b")
Row = dict[str, Any]
State = dict[int, tuple[Row, str | None]]  # key -> (row, version); version None: written by someone else


def event(op: Op, key: int, after: Mapping[str, Any] | None, version: str, offset: int = 0) -> ChangeEvent:
    return ChangeEvent(
        op=op,
        table=T,
        key={"id": key},
        before=None,
        after=after,
        columns={c: ColumnType("int64" if c == "id" else "string") for c in COLUMNS},
        key_columns=("id",),
        position=SourcePosition(version),
        txid=None,
        source_ts=None,
        event_ts=None,
        origin=KafkaOrigin("t", 0, offset),
    )


def plan_of(events: list[ChangeEvent]) -> TablePlan:
    plans = coalesce(events, Router("postgresql"))
    assert len(plans) == 1
    return next(iter(plans.values()))


# ---------------------------------------------------------------- the model
def _newer(current: str | None, version: str) -> bool:
    return supersedes(current, version)


def model_upsert(state: State, key: int, row: Mapping[str, Any], version: str) -> None:
    found = state.get(key)
    if found is None:
        state[key] = (
            {c: (None if row.get(c, UNAVAILABLE) is UNAVAILABLE else row[c]) for c in COLUMNS},
            version,
        )
    elif _newer(found[1], version):
        values = dict(found[0])
        values.update({c: v for c, v in row.items() if v is not UNAVAILABLE})
        state[key] = (values, version)


def model_delete(state: State, key: int, version: str) -> None:
    found = state.get(key)
    if found is not None and _newer(found[1], version):
        del state[key]


def one_by_one(state: State, events: list[ChangeEvent]) -> State:
    out = dict(state)
    for ev in events:
        key = ev.key["id"]
        if ev.op is Op.DELETE:
            model_delete(out, key, ev.position.version)
        else:
            assert ev.after is not None
            model_upsert(out, key, ev.after, ev.position.version)
    return out


def apply_plan(state: State, plan: TablePlan) -> State:
    """What ``Sink._apply_table`` does with a plan: all guarded deletes first, then all upserts."""
    out = dict(state)
    for (key,), (_key_row, version) in plan.deletes.items():
        model_delete(out, key, version)
    for (key,), (row, version) in plan.upserts.items():
        model_upsert(out, key, row, version)
    return out


# ---------------------------------------------------------------- examples
def test_deferrable_key_delete_then_insert_at_a_smaller_position_keeps_the_insert() -> None:
    """B deletes k at 200 and commits; A, begun before, inserted k at 100 and commits after B."""
    events = [
        event(Op.DELETE, 1, None, pg_version(200)),
        event(Op.CREATE, 1, {"id": 1, "a": "A", "b": "x"}, pg_version(100)),
    ]
    plan = plan_of(events)
    assert plan.deletes == {(1,): ({"id": 1}, pg_version(200))}
    assert plan.upserts == {(1,): ({"id": 1, "a": "A", "b": "x"}, pg_version(100))}
    # the old row was last updated at 150: the delete removes it, the insert brings k back
    before: State = {1: ({"id": 1, "a": "old", "b": "old"}, pg_version(150))}
    expected = {1: ({"id": 1, "a": "A", "b": "x"}, pg_version(100))}
    assert one_by_one(before, events) == expected
    assert apply_plan(before, plan) == expected


def test_an_older_delete_after_an_upsert_does_not_lose_the_upsert() -> None:
    plan = plan_of(
        [
            event(Op.UPDATE, 1, {"id": 1, "a": "new", "b": "x"}, pg_version(20)),
            event(Op.DELETE, 1, None, pg_version(10)),
        ]
    )
    assert plan.upserts == {(1,): ({"id": 1, "a": "new", "b": "x"}, pg_version(20))}
    assert plan.deletes == {}


def test_delete_then_newer_insert_keeps_both_in_order() -> None:
    """The row is deleted first, so columns the insert leaves out are not kept from the old row."""
    plan = plan_of(
        [
            event(Op.DELETE, 1, None, pg_version(10)),
            event(Op.CREATE, 1, {"id": 1, "a": "again"}, pg_version(20)),
        ]
    )
    assert plan.deletes == {(1,): ({"id": 1}, pg_version(10))}
    assert plan.upserts == {(1,): ({"id": 1, "a": "again"}, pg_version(20))}


def test_delete_after_delete_and_reinsert_leaves_one_delete() -> None:
    plan = plan_of(
        [
            event(Op.DELETE, 1, None, pg_version(200)),
            event(Op.CREATE, 1, {"id": 1, "a": "A", "b": "x"}, pg_version(100)),
            event(Op.DELETE, 1, None, pg_version(150)),
        ]
    )
    assert plan.upserts == {}
    assert plan.deletes == {(1,): ({"id": 1}, pg_version(200))}


def test_an_event_without_a_version_is_refused() -> None:
    with pytest.raises(MissingVersionError, match=r"t\[0\]@7"):
        coalesce([event(Op.UPDATE, 1, {"id": 1, "a": "x", "b": "y"}, "", offset=7)], Router("postgresql"))


# ---------------------------------------------------------------- the property
VALUES = st.sampled_from(["p", "q", "r", UNAVAILABLE])
VERSIONS = st.integers(min_value=1, max_value=12).map(pg_version)
KEYS = st.integers(min_value=1, max_value=3)


@st.composite
def events_and_state(draw: st.DrawFn) -> tuple[State, list[ChangeEvent]]:
    state: State = {}
    for key in draw(st.sets(KEYS)):
        version = draw(st.one_of(st.none(), VERSIONS, VERSIONS.map(read_version)))
        state[key] = ({"id": key, "a": draw(st.sampled_from(["p", "q", None])), "b": "old"}, version)
    events = []
    for i in range(draw(st.integers(min_value=0, max_value=8))):
        key = draw(KEYS)
        op = draw(st.sampled_from([Op.CREATE, Op.UPDATE, Op.DELETE, Op.READ]))
        version = draw(VERSIONS)
        if op is Op.READ:
            version = read_version(version)
        after = None if op is Op.DELETE else {"id": key, "a": draw(VALUES), "b": draw(VALUES)}
        events.append(event(op, key, after, version, offset=i))
    return state, events


def _impossible_target(state: State, events: list[ChangeEvent]) -> bool:
    """A target row at a version from the first of two upserts of its key in the batch up to (not
    including) the second, the second leaving a column unavailable, with values the first did not
    write. Unchanged TOAST values are filled from the earlier upsert of the batch, which is right for
    every target state a source can produce: a row at a change's version holds what that change
    wrote, and no change of the key lies between two consecutive ones, so a row at a version in
    between holds the earlier change's values too. The generated states do not keep to that."""
    for key, (_row, s) in state.items():
        ups = [e for e in events if e.key["id"] == key and e.op is not Op.DELETE]
        for i, first in enumerate(ups):
            for later in ups[i + 1 :]:
                assert later.after is not None
                partial = any(v is UNAVAILABLE for v in later.after.values())
                if partial and s is not None and first.position.version <= s < later.position.version:
                    return True
    return False


@settings(max_examples=1000, deadline=None)
@given(events_and_state())
def test_coalesced_plan_equals_one_by_one_application(case: tuple[State, list[ChangeEvent]]) -> None:
    state, events = case
    if _impossible_target(state, events):
        return
    expected = one_by_one(state, events)
    got = state
    for plans in coalesce_rounds(events, Router("postgresql")):
        assert len(plans) == 1
        got = apply_plan(got, next(iter(plans.values())))
    assert got == expected


def test_a_streamed_change_after_a_snapshot_row_of_its_key_is_its_own_round() -> None:
    """A transaction open across the snapshot updated k at 5; the snapshot read k at 9 without it."""
    events = [
        event(Op.READ, 1, {"id": 1, "a": "snap", "b": "x"}, read_version(pg_version(9))),
        event(Op.UPDATE, 1, {"id": 1, "a": "open tx", "b": "x"}, pg_version(5)),
    ]
    rounds = coalesce_rounds(events, Router("postgresql"))
    assert len(rounds) == 2
    before: State = {1: ({"id": 1, "a": "old", "b": "x"}, pg_version(7))}
    expected = {1: ({"id": 1, "a": "open tx", "b": "x"}, pg_version(5))}
    got = before
    for plans in rounds:
        got = apply_plan(got, next(iter(plans.values())))
    assert one_by_one(before, events) == expected == got
    # one coalesced plan would keep the update alone and lose it against the row at 7
    assert apply_plan(before, plan_of(events)) == before


def test_only_the_key_with_both_kinds_is_split_into_rounds() -> None:
    """Key 2's unchanged-TOAST fill comes from its earlier upsert of the batch, as without rounds;
    key 1 passes from a snapshot row to the stream, so each of its events is a round of its own."""
    events = [
        event(Op.CREATE, 2, {"id": 2, "a": "p", "b": "kept"}, pg_version(2)),
        event(Op.READ, 1, {"id": 1, "a": "snap", "b": "x"}, read_version(pg_version(9))),
        event(Op.UPDATE, 1, {"id": 1, "a": "open tx", "b": UNAVAILABLE}, pg_version(5)),
        event(Op.UPDATE, 2, {"id": 2, "a": "q", "b": UNAVAILABLE}, pg_version(3)),
    ]
    rounds = coalesce_rounds(events, Router("postgresql"))
    assert len(rounds) == 2
    first = next(iter(rounds[0].values()))
    assert first.upserts[(2,)] == ({"id": 2, "a": "q", "b": "kept"}, pg_version(3))
    assert set(first.upserts) == {(1,), (2,)} and set(next(iter(rounds[1].values())).upserts) == {(1,)}
    got: State = {}
    for plans in rounds:
        got = apply_plan(got, next(iter(plans.values())))
    assert got == one_by_one({}, events)
    assert got[1] == ({"id": 1, "a": "open tx", "b": "x"}, pg_version(5))


def test_supersedes() -> None:
    read9, read7 = read_version(pg_version(9)), read_version(pg_version(7))
    assert supersedes(None, read9) and supersedes(pg_version(7), read9)  # a snapshot row over older
    assert not supersedes(pg_version(10), read9)  # ... not over a newer streamed change
    assert supersedes(read9, pg_version(5))  # a streamed change replaces a snapshot row
    assert supersedes(read7, read9) and not supersedes(read9, read7)  # snapshots among themselves
    assert not supersedes(read9, read9) and not supersedes(pg_version(5), pg_version(5))
    assert supersedes(pg_version(9), read9)  # a snapshot at 9 holds the change at 9
    assert pg_version(9) < read9 < pg_version(10)
