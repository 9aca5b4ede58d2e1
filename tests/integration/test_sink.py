"""The apply engine against real PostgreSQL, MariaDB and SQLite targets (events built by hand)."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from typing import Any

import pytest
import sqlalchemy as sa

from streamer.apply import state
from streamer.apply.schema import Router, SchemaManager
from streamer.apply.sink import EventRejectedError, Sink, is_permanent, refuse_failures
from streamer.core.checkpoint import Checkpoint, KafkaOrigin
from streamer.core.events import (
    UNAVAILABLE,
    ChangeEvent,
    ColumnType,
    Op,
    SourcePosition,
    TableId,
    pg_version,
    read_version,
)
from streamer.db import is_transient

COLUMNS = {
    "id": ColumnType("int64", optional=False),
    "name": ColumnType("string"),
    "price": ColumnType(
        "bytes",
        "org.apache.kafka.connect.data.Decimal",
        params={"scale": "2", "connect.decimal.precision": "10"},
    ),
    "created": ColumnType("int64", "io.debezium.time.MicroTimestamp"),
    "seen": ColumnType("string", "io.debezium.time.ZonedTimestamp"),
    "day": ColumnType("int32", "io.debezium.time.Date"),
    "active": ColumnType("boolean"),
    "blob": ColumnType("bytes"),
    "doc": ColumnType("string", "io.debezium.data.Json"),
    "uid": ColumnType("string", "io.debezium.data.Uuid"),
    "big": ColumnType("string"),
}
VERSION = "_streamer_version"


def _row(i: int, name: str = "n", big: Any = "x" * 10) -> dict[str, Any]:
    return {
        "id": i,
        "name": name,
        "price": decimal.Decimal("12.34") + i,
        "created": dt.datetime(2024, 1, 2, 3, 4, 5, 678901),
        "seen": dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.UTC),
        "day": dt.date(2024, 2, 29),
        "active": i % 2 == 0,
        "blob": bytes([0, 1, 2, 255]),
        "doc": '{"a": 1}',
        "uid": uuid.UUID(int=i),
        "big": big,
    }


class Events:
    def __init__(self, table: str) -> None:
        self.table = TableId("inventory", "public", table)
        self.offset = 0

    def __call__(
        self, op: Op, key: int | None, after: dict[str, Any] | None, lsn: int, *, read: bool = False
    ) -> ChangeEvent:
        """An event at ``lsn``; ``read``: a snapshot row (its version carries the read mark)."""
        self.offset += 1
        return ChangeEvent(
            op=op,
            table=self.table,
            key={"id": key} if key is not None else {},
            before=None,
            after=after,
            columns=COLUMNS,
            key_columns=("id",),
            position=SourcePosition(
                version=read_version(pg_version(lsn)) if read else pg_version(lsn), lsn=lsn, snapshot=read
            ),
            txid=None,
            source_ts=None,
            event_ts=None,
            origin=KafkaOrigin("topic", 0, self.offset),
        )


def _sink(engine: sa.Engine) -> Sink:
    state.upgrade(engine)
    dialect = engine.dialect.name
    return Sink(engine, Router(dialect), SchemaManager(engine, VERSION))


def _rows(engine: sa.Engine, sink: Sink, table: TableId) -> dict[int, dict[str, Any]]:
    route = sink.router.route(table)
    t = sa.table(route.target_table, schema=route.target_schema)
    with engine.connect() as conn:
        return {r.id: dict(r._mapping) for r in conn.execute(sa.select(sa.text("*")).select_from(t))}


def test_apply_coalesce_guard_toast_truncate(target, unique: str) -> None:
    _url, engine = target
    sink = _sink(engine)
    ev = Events(unique)
    # batch 1: inserts, an update, an insert+delete of one key inside the batch
    b1 = [
        ev(Op.CREATE, 1, _row(1, "one"), 100),
        ev(Op.CREATE, 2, _row(2, "two"), 110),
        ev(Op.CREATE, 3, _row(3, "three"), 120),
        ev(Op.UPDATE, 1, _row(1, "one-b"), 130),
        ev(Op.CREATE, 4, _row(4, "four"), 140),
        ev(Op.DELETE, 4, None, 150),
        ev(Op.READ, 5, _row(5, "snap"), 90),
    ]
    res = sink.apply(b1, {("topic", 0): 8}, "g1")
    assert res.events == 7
    rows = _rows(engine, sink, ev.table)
    assert sorted(rows) == [1, 2, 3, 5]
    assert rows[1]["name"] == "one-b" and rows[1][VERSION] == pg_version(130)
    assert decimal.Decimal(str(rows[2]["price"])) == decimal.Decimal("14.34")
    assert bytes(rows[3]["blob"]) == bytes([0, 1, 2, 255])
    # batch 2: a replay of older changes is ignored, a newer TOAST-less update keeps "big"
    b2 = [
        ev(Op.UPDATE, 1, _row(1, "stale"), 125),
        ev(Op.DELETE, 2, None, 105),
        ev(Op.UPDATE, 3, _row(3, "three-b", big=UNAVAILABLE), 200),
    ]
    sink.apply(b2, {("topic", 0): 11}, "g1")
    rows = _rows(engine, sink, ev.table)
    assert rows[1]["name"] == "one-b"
    assert 2 in rows
    assert rows[3]["name"] == "three-b" and rows[3]["big"] == "x" * 10 and rows[3][VERSION] == pg_version(200)
    # batch 3: truncate at 210 removes every row older than it; older events after it are not applied
    b3 = [
        ev(Op.UPDATE, 5, _row(5, "after"), 220),
        ev(Op.TRUNCATE, None, None, 210),
        ev(Op.CREATE, 6, _row(6, "late-but-old"), 205),
    ]
    sink.apply(b3, {("topic", 0): 14}, "g1")
    assert {k: v["name"] for k, v in _rows(engine, sink, ev.table).items()} == {5: "after"}
    sink.apply([ev(Op.CREATE, 7, _row(7, "older-than-truncate"), 150)], {("topic", 0): 15}, "g1")
    assert sorted(_rows(engine, sink, ev.table)) == [5]
    with engine.connect() as conn:
        assert state.load_offsets(conn, "g1", ["topic"]) == {("topic", 0): 15}


def test_streamed_changes_replace_snapshot_rows_whatever_their_positions(target, unique: str) -> None:
    """A snapshot at 200 did not see a transaction open across it (changes at 150-180, committed
    after): its changes follow the snapshot's rows and must replace them, in later batches and in
    the same batch; a snapshot row still replaces older streamed rows, and replays stay refused."""
    _url, engine = target
    sink = _sink(engine)
    ev = Events(unique)
    group = f"g-{unique}"  # the shared target keeps every group's offsets: its own group
    stale = [ev(Op.CREATE, k, _row(k, "stale"), 100) for k in (1, 2, 3)]
    sink.apply([*stale, ev(Op.CREATE, 4, _row(4, "newer than the snapshot"), 300)], {("topic", 0): 5}, group)
    reads = [ev(Op.READ, k, _row(k, "snap"), 200, read=True) for k in (1, 2, 3, 4, 5)]
    sink.apply(reads, {("topic", 0): 10}, group)
    rows = _rows(engine, sink, ev.table)
    names = {k: r["name"] for k, r in rows.items()}
    assert names == {1: "snap", 2: "snap", 3: "snap", 4: "newer than the snapshot", 5: "snap"}
    assert rows[1][VERSION] == read_version(pg_version(200)) and rows[4][VERSION] == pg_version(300)
    # the open transaction's changes, below the snapshot's position, in a later batch ...
    sink.apply(
        [
            ev(Op.UPDATE, 1, _row(1, "open tx"), 150),
            ev(Op.DELETE, 2, None, 160),
            ev(Op.UPDATE, 5, _row(5, "open tx, toast unchanged", big=UNAVAILABLE), 180),
        ],
        {("topic", 0): 13},
        group,
    )
    # ... and in the batch of the snapshot row itself
    sink.apply(
        [ev(Op.READ, 6, _row(6, "snap"), 200, read=True), ev(Op.UPDATE, 6, _row(6, "open tx"), 170)],
        {("topic", 0): 15},
        group,
    )
    # a replay: an older streamed change and the snapshot row itself change nothing
    sink.apply(
        [ev(Op.UPDATE, 1, _row(1, "replayed, older"), 120), ev(Op.READ, 4, _row(4, "snap"), 200, read=True)],
        {("topic", 0): 17},
        group,
    )
    rows = _rows(engine, sink, ev.table)
    assert {k: r["name"] for k, r in rows.items()} == {
        1: "open tx",
        3: "snap",
        4: "newer than the snapshot",
        5: "open tx, toast unchanged",
        6: "open tx",
    }
    assert rows[5]["big"] == "x" * 10
    assert {k: r[VERSION] for k, r in rows.items()} == {
        1: pg_version(150),
        3: read_version(pg_version(200)),
        4: pg_version(300),
        5: pg_version(180),
        6: pg_version(170),
    }


def test_insert_then_toast_update_in_one_batch_keeps_value(target, unique: str) -> None:
    _url, engine = target
    sink = _sink(engine)
    ev = Events(unique)
    sink.apply(
        [
            ev(Op.CREATE, 1, _row(1, "a", big="B" * 5000), 10),
            ev(Op.UPDATE, 1, _row(1, "b", big=UNAVAILABLE), 20),
        ],
        {("topic", 0): 2},
        "g2",
    )
    rows = _rows(engine, sink, ev.table)
    assert rows[1]["name"] == "b" and rows[1]["big"] == "B" * 5000


def test_hostile_identifiers_are_quoted(target, unique: str) -> None:
    _url, engine = target
    sink = _sink(engine)
    table = TableId("inventory", "public", f'{unique}"; DROP TABLE x; --')
    event = ChangeEvent(
        op=Op.CREATE,
        table=table,
        key={"id": 1},
        before=None,
        after={"id": 1, 'evil"`col': "v"},
        columns={"id": ColumnType("int64", optional=False), 'evil"`col': ColumnType("string")},
        key_columns=("id",),
        position=SourcePosition(version=pg_version(1), lsn=1),
        txid=None,
        source_ts=None,
        event_ts=None,
        origin=KafkaOrigin("t", 0, 0),
    )
    sink.apply([event], {("t", 0): 1}, "g3")
    rows = _rows(engine, sink, table)
    assert rows[1]['evil"`col'] == "v"


def test_rejected_event_is_isolated_and_the_rest_applied(target, unique: str) -> None:
    """A constraint violation (any dialect, PostgreSQL's COPY path included) is a permanent error
    that names the event; the isolate mode applies everything else."""
    _url, engine = target
    sink = _sink(engine)
    ev = Events(unique)
    route = sink.router.route(ev.table)
    prep = engine.dialect.identifier_preparer
    name = prep.format_table(sa.table(route.target_table, schema=route.target_schema))
    with engine.begin() as conn:
        if route.target_schema:
            conn.execute(sa.text(f"CREATE SCHEMA IF NOT EXISTS {prep.quote(route.target_schema)}"))
        conn.execute(
            sa.text(
                f"CREATE TABLE {name} (id BIGINT PRIMARY KEY, name VARCHAR(50) NOT NULL CHECK (name <> 'bad'), "
                f"{VERSION} VARCHAR(40))"
            )
        )

    def row(i: int, n: str) -> dict[str, Any]:
        return {"id": i, "name": n}

    events = [
        ev(Op.CREATE, 1, row(1, "ok"), 10),
        ev(Op.CREATE, 2, row(2, "bad"), 20),
        ev(Op.CREATE, 3, row(3, "fine"), 30),
    ]
    with pytest.raises(sa.exc.DBAPIError) as err:
        sink.apply(events, {("topic", 0): 3}, "gx")
    assert is_permanent(err.value) and not is_transient(err.value)
    result = sink.apply(events, {("topic", 0): 3}, "gx", isolate=True)
    assert [e.origin for e, _ in result.failed] == [KafkaOrigin("topic", 0, 2)]
    assert {k: v["name"] for k, v in _rows(engine, sink, ev.table).items()} == {1: "ok", 3: "fine"}


def test_refused_isolated_batch_commits_nothing(target, unique: str) -> None:
    """Error policy stop: the batch is applied event by event on savepoints to find the culprit, and
    then refused whole. Nothing of it may stay in the target: neither the events before the rejected
    one nor the batch's offsets (on SQLite the driver's own transaction handling once let savepoints
    commit on their own)."""
    _url, engine = target
    sink = _sink(engine)
    ev = Events(unique)
    route = sink.router.route(ev.table)
    prep = engine.dialect.identifier_preparer
    name = prep.format_table(sa.table(route.target_table, schema=route.target_schema))
    with engine.begin() as conn:
        if route.target_schema:
            conn.execute(sa.text(f"CREATE SCHEMA IF NOT EXISTS {prep.quote(route.target_schema)}"))
        conn.execute(
            sa.text(
                f"CREATE TABLE {name} (id BIGINT PRIMARY KEY, name VARCHAR(50) NOT NULL CHECK (name <> 'bad'), "
                f"{VERSION} VARCHAR(40))"
            )
        )
    sink.apply([ev(Op.CREATE, 1, {"id": 1, "name": "before"}, 5)], {("topic", 0): 1}, "gs")
    events = [
        ev(Op.UPDATE, 1, {"id": 1, "name": "changed"}, 10),
        ev(Op.CREATE, 2, {"id": 2, "name": "ok"}, 20),
        ev(Op.CREATE, 3, {"id": 3, "name": "bad"}, 30),
        ev(Op.CREATE, 4, {"id": 4, "name": "after"}, 40),
    ]
    with pytest.raises(EventRejectedError) as err:
        sink.apply(events, {("topic", 0): 5}, "gs", isolate=True, before_commit=refuse_failures)
    assert err.value.event.origin == KafkaOrigin("topic", 0, 4)
    assert {k: v["name"] for k, v in _rows(engine, sink, ev.table).items()} == {1: "before"}
    with engine.connect() as conn:
        assert state.load_offsets(conn, "gs") == {("topic", 0): 1}


def test_zombie_batch_is_fenced(target, unique: str) -> None:
    """Owner B applied [10..20) with a delete of key k; zombie A's older batch starting at 5 with an
    insert of k is refused with FencedBatchError: k stays deleted, the stored offset stays 20."""
    from streamer.apply.sink import FencedBatchError

    _url, engine = target
    sink = _sink(engine)
    ev = Events(unique)
    tp = (f"{unique}-topic", 0)
    group = f"{unique}-g"
    keep = ev(Op.CREATE, 1, _row(1, "kept"), 50)
    sink.apply([keep, ev(Op.CREATE, 2, _row(2, "k"), 60)], Checkpoint({tp: 10}, {tp: 0}), group)
    # owner B: offsets 10..19, the delete of key 2 among them
    ev.offset = 9
    b = [ev(Op.UPDATE, 1, _row(1, "b"), 200), ev(Op.DELETE, 2, None, 210)]
    sink.apply(b, Checkpoint({tp: 20}, {tp: 10}), group)
    # zombie A: its batch from offset 5 re-inserts key 2 with a newer-looking version
    ev.offset = 4
    zombie = [ev(Op.CREATE, 2, _row(2, "zombie"), 300), ev(Op.CREATE, 3, _row(3, "zombie"), 310)]
    with pytest.raises(FencedBatchError) as err:
        sink.apply(zombie, Checkpoint({tp: 12}, {tp: 5}), group)
    assert err.value.partitions == {tp: 20}
    rows = _rows(engine, sink, ev.table)
    assert {k: v["name"] for k, v in rows.items()} == {1: "b"}
    with engine.connect() as conn:
        assert state.load_offsets(conn, group, [tp[0]]) == {tp: 20}
    # the next batch of B (from 20) is applied
    ev.offset = 19
    sink.apply([ev(Op.CREATE, 4, _row(4, "next"), 400)], Checkpoint({tp: 21}, {tp: 20}), group)
    assert sorted(_rows(engine, sink, ev.table)) == [1, 4]


def test_first_batches_of_two_owners_are_fenced_too(target, unique: str) -> None:
    """No offset is stored yet for the partition. New owner B's first batch (from 0: an insert and
    then a delete of key 2) is still open when zombie A's first batch (from 5, re-inserting key 2)
    starts. A must wait for B and then be fenced: key 2 stays deleted, the stored offset stays 20."""
    import threading

    from streamer.apply.sink import FencedBatchError

    _url, engine = target
    sink = _sink(engine)
    ev = Events(unique)
    tp = (f"{unique}-topic", 0)
    group = f"{unique}-g"
    ev.offset = 0
    b = [ev(Op.CREATE, 1, _row(1, "b"), 100), ev(Op.CREATE, 2, _row(2, "k"), 110)]
    ev.offset = 14
    b.append(ev(Op.DELETE, 2, None, 150))
    ev.offset = 4
    zombie = [ev(Op.CREATE, 2, _row(2, "zombie"), 120)]
    b_open, b_release = threading.Event(), threading.Event()
    outcome: dict[str, BaseException | None] = {}

    def hold_b(_result: Any) -> None:
        b_open.set()
        assert b_release.wait(30)

    def run_a() -> None:
        for _attempt in range(5):  # transient errors are retried, as the consumer does
            try:
                sink.apply(zombie, Checkpoint({tp: 6}, {tp: 5}), group)
                outcome["a"] = None
            except BaseException as exc:  # the assertion below says which
                outcome["a"] = exc
                if is_transient(exc):
                    continue
            return

    def run_b() -> None:
        sink.apply(b, Checkpoint({tp: 20}, {tp: 0}), group, before_commit=hold_b)

    tb = threading.Thread(target=run_b)
    tb.start()
    assert b_open.wait(30)
    ta = threading.Thread(target=run_a)
    ta.start()
    ta.join(1.0)  # A runs into B's open transaction (or, on old code, commits past it)
    b_release.set()
    tb.join(30)
    ta.join(30)
    assert isinstance(outcome.get("a"), FencedBatchError), outcome
    assert {k: v["name"] for k, v in _rows(engine, sink, ev.table).items()} == {1: "b"}
    with engine.connect() as conn:
        assert state.load_offsets(conn, group, [tp[0]]) == {tp: 20}


def test_stored_offsets_never_move_backwards(target, unique: str) -> None:
    """save_offsets keeps the larger offset; only an explicit replay (force) moves one back."""
    _url, engine = target
    state.upgrade(engine)
    group = f"{unique}-g"
    a, b = (f"{unique}-t", 0), (f"{unique}-t", 1)
    with engine.begin() as conn:
        state.save_offsets(conn, group, {a: 20, b: 7})
    with engine.begin() as conn:
        state.save_offsets(conn, group, {a: 5, b: 9})
    with engine.connect() as conn:
        assert state.load_offsets(conn, group) == {a: 20, b: 9}
    with engine.begin() as conn:
        state.save_offsets(conn, group, {a: 3}, force=True)
    with engine.connect() as conn:
        assert state.load_offsets(conn, group) == {a: 3, b: 9}


class _LosesTheCreateRace(SchemaManager):
    """Another process creates the table between this one's look (none there) and its CREATE TABLE."""

    def __init__(self, engine: sa.Engine, other: SchemaManager, event: ChangeEvent) -> None:
        super().__init__(engine, VERSION)
        self.other, self.event, self.raced = other, event, False

    def _create(self, conn: Any, route: Any, columns: Any, key: tuple[str, ...]) -> None:
        if self.raced:
            super()._create(conn, route, columns, key)
            return
        self.raced = True
        self.other.ensure(route, self.event)  # the winner, on its own connection, commits its table
        self._sa_table(route, dict(columns), key).create(conn, checkfirst=False)  # "already exists"


@pytest.mark.parametrize("target_kind", ["postgresql", "mariadb"])
def test_two_processes_creating_one_table_both_go_on(target, unique: str) -> None:
    """Several consumers applying a new table's first events race on its CREATE TABLE: the loser's
    DDL fails, and it goes on against the winner's table instead of stopping on the error."""
    _url, engine = target
    state.upgrade(engine)
    ev = Events(unique)
    first = ev(Op.CREATE, 1, _row(1), 100)
    winner_engine = sa.create_engine(engine.url)
    try:
        racing = _LosesTheCreateRace(engine, SchemaManager(winner_engine, VERSION), first)
        sink = Sink(engine, Router(engine.dialect.name), racing)
        sink.apply(
            [first, ev(Op.CREATE, 2, _row(2), 110)], {("topic", 0): 3}, f"{unique}-g", record_state=False
        )
        assert racing.raced
        rows = _rows(engine, sink, ev.table)
        assert sorted(rows) == [1, 2]
        assert rows[2]["name"] == "n" and rows[2][VERSION] == pg_version(110)
    finally:
        winner_engine.dispose()
