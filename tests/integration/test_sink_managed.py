"""Managed (user-migrated) target tables with NOT NULL columns take every kind of change.

The tables are created by hand as a user's migration would (NOT NULL everywhere, a column the
source does not have, with a default), and the sink runs with ``schema_mode="managed"``. Deletes,
unchanged-TOAST updates, a delete and re-insert in one batch and a deferrable-key reordering are
applied; the whole table is compared after each batch.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from streamer.apply import state
from streamer.apply.fetch import incomplete_rows
from streamer.apply.schema import Router, SchemaManager
from streamer.apply.sink import Sink
from streamer.core.checkpoint import KafkaOrigin
from streamer.core.events import (
    UNAVAILABLE,
    ChangeEvent,
    ColumnType,
    Op,
    SourcePosition,
    TableId,
    pg_version,
)
from streamer.db import create_target_engine
from streamer.load.loader import Loader
from streamer.stack.local import Stack

VERSION = "_streamer_version"
COLUMNS = {
    "id": ColumnType("int64", optional=False),
    "name": ColumnType("string", optional=False),
    "qty": ColumnType("int32", optional=False),
    "body": ColumnType("string", optional=False),
}
BIG = "T" * 20_000  # TOAST-size: PostgreSQL stores it out of line and Debezium leaves it out when unchanged


class Events:
    def __init__(self, table: str) -> None:
        self.table = TableId("inventory", "public", table)
        self.offset = 0

    def __call__(self, op: Op, key: int, after: dict[str, Any] | None, lsn: int) -> ChangeEvent:
        self.offset += 1
        return ChangeEvent(
            op=op,
            table=self.table,
            key={"id": key},
            before={"id": key} if op is Op.DELETE else None,
            after=after,
            columns=COLUMNS,
            key_columns=("id",),
            position=SourcePosition(version=pg_version(lsn), lsn=lsn),
            txid=None,
            source_ts=None,
            event_ts=None,
            origin=KafkaOrigin("topic", 0, self.offset),
        )


def _create(engine: sa.Engine, router: Router, table: TableId) -> str:
    """A user's table: every column NOT NULL, an extra column with a default, text version column."""
    prep = engine.dialect.identifier_preparer
    route = router.route(table)
    qualified = prep.format_table(sa.table(route.target_table, schema=route.target_schema))
    text = "TEXT" if engine.dialect.name != "mysql" else "LONGTEXT"
    version = "TEXT" if engine.dialect.name != "mysql" else "VARCHAR(40)"
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                f"CREATE TABLE {qualified} (id BIGINT NOT NULL PRIMARY KEY, name VARCHAR(50) NOT NULL, "
                f"qty INTEGER NOT NULL, body {text} NOT NULL, note VARCHAR(20) NOT NULL DEFAULT 'n/a', "
                f"{VERSION} {version} NULL)"
            )
        )
    return qualified


def _table(engine: sa.Engine, qualified: str) -> dict[int, tuple[Any, ...]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text(f"SELECT id, name, qty, body, note, {VERSION} FROM {qualified}"))
        return {r[0]: tuple(r[1:]) for r in rows}


def test_managed_not_null_table_takes_deletes_and_toast_updates(target, unique: str) -> None:
    _url, engine = target
    state.upgrade(engine)
    ev = Events(f"{unique}_managed")
    router = Router(engine.dialect.name)
    qualified = _create(engine, router, ev.table)
    sink = Sink(engine, router, SchemaManager(engine, VERSION, "managed"))

    def row(i: int, n: str, qty: int, body: Any) -> dict[str, Any]:
        return {"id": i, "name": n, "qty": qty, "body": body}

    sink.apply(
        [
            ev(Op.READ, 1, row(1, "one", 1, BIG), 100),
            ev(Op.READ, 2, row(2, "two", 2, "small"), 100),
            ev(Op.CREATE, 3, row(3, "three", 3, BIG), 110),
            ev(Op.CREATE, 4, row(4, "four", 4, "b4"), 120),
        ],
        {("topic", 0): 4},
        "g",
    )
    v = pg_version
    expected = {
        1: ("one", 1, BIG, "n/a", v(100)),
        2: ("two", 2, "small", "n/a", v(100)),
        3: ("three", 3, BIG, "n/a", v(110)),
        4: ("four", 4, "b4", "n/a", v(120)),
    }
    assert _table(engine, qualified) == expected

    # a delete, and an update whose TOAST column is unchanged, each alone in its batch
    sink.apply([ev(Op.DELETE, 2, None, 200)], {("topic", 0): 5}, "g")
    del expected[2]
    assert _table(engine, qualified) == expected
    sink.apply([ev(Op.UPDATE, 1, row(1, "one-b", 10, UNAVAILABLE), 210)], {("topic", 0): 6}, "g")
    expected[1] = ("one-b", 10, BIG, "n/a", v(210))
    assert _table(engine, qualified) == expected

    # one batch: TOAST-unchanged updates (one older than the target: ignored), a delete, a delete and
    # re-insert of one key, and a deferrable-key reordering (delete at 400, re-insert at 390 after it)
    sink.apply(
        [
            ev(Op.UPDATE, 3, row(3, "three-b", 30, UNAVAILABLE), 300),
            ev(Op.UPDATE, 1, row(1, "stale", 0, UNAVAILABLE), 205),
            ev(Op.UPDATE, 3, row(3, "three-c", 31, UNAVAILABLE), 310),
            ev(Op.DELETE, 4, None, 320),
            ev(Op.CREATE, 4, row(4, "four-again", 44, "b4b"), 330),
            ev(Op.DELETE, 1, None, 400),
            ev(Op.CREATE, 1, row(1, "one-deferred", 11, "d"), 390),
        ],
        {("topic", 0): 13},
        "g",
    )
    expected[3] = ("three-c", 31, BIG, "n/a", v(310))
    expected[4] = ("four-again", 44, "b4b", "n/a", v(330))
    expected[1] = ("one-deferred", 11, "d", "n/a", v(390))
    assert _table(engine, qualified) == expected

    # an unchanged-TOAST update of a row the target does not have, and this sink has no source to
    # read the value from: the row is not written (never with NULL), its key is recorded incomplete,
    # and the rest of the batch is applied
    result = sink.apply(
        [ev(Op.UPDATE, 9, row(9, "nine", 9, UNAVAILABLE), 500), ev(Op.DELETE, 3, None, 510)],
        {("topic", 0): 15},
        "g",
        isolate=True,
    )
    assert result.failed == []
    del expected[3]
    assert _table(engine, qualified) == expected
    with engine.connect() as conn:
        assert state.load_offsets(conn, "g", ["topic"]) == {("topic", 0): 15}
        name = router.route(ev.table).qualified
        mine = [(r.key, r.columns, r.version) for r in incomplete_rows(conn) if r.table == name]
    assert mine == [(["9"], ["body"], v(500))]
    # a later insert of the key (all values) writes it whole and clears the record
    sink.apply([ev(Op.CREATE, 9, row(9, "nine-b", 9, "b9"), 520)], {}, "g")
    expected[9] = ("nine-b", 9, "b9", "n/a", v(520))
    assert _table(engine, qualified) == expected
    with engine.connect() as conn:
        assert [r for r in incomplete_rows(conn) if r.table == name] == []


def test_loader_merges_into_a_managed_not_null_table(stack: Stack, unique: str) -> None:
    """The loader's merge path (target not empty) stages only the columns it copies."""
    source = create_target_engine(stack.settings.source_url)
    target = create_target_engine(stack.settings.target_url)
    big = "L" * 20_000
    try:
        with source.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{unique}"'))
            conn.execute(
                sa.text(
                    f'CREATE TABLE "{unique}".items (id BIGINT PRIMARY KEY, name TEXT NOT NULL, body TEXT NOT NULL)'
                )
            )
            conn.execute(
                sa.text(
                    f"INSERT INTO \"{unique}\".items VALUES (1, 'one', :b), (2, 'two', 'small'), (3, 'three', :b)"
                ),
                {"b": big},
            )
        state.upgrade(target)
        with target.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{unique}"'))
            conn.execute(
                sa.text(
                    f'CREATE TABLE "{unique}".items (id BIGINT PRIMARY KEY, name TEXT NOT NULL, body TEXT NOT NULL, '
                    f"note VARCHAR(20) NOT NULL DEFAULT 'n/a', {VERSION} TEXT)"
                )
            )
            conn.execute(
                sa.text(f"INSERT INTO \"{unique}\".items VALUES (1, 'someone else', 'x', 'kept', NULL)")
            )
        sink = Sink(target, Router("postgresql"), SchemaManager(target, VERSION, "managed"))
        (report,) = Loader(stack.settings.source_url, sink, workers=1).run([f"{unique}.items"])
        assert report.rows == 3
        with target.connect() as conn:
            rows = {
                r[0]: tuple(r[1:])
                for r in conn.execute(
                    sa.text(f'SELECT id, name, body, note, {VERSION} FROM "{unique}".items')
                )
            }
        versions = {r[3] for r in rows.values()}
        assert len(versions) == 1 and next(iter(versions)).startswith("pg:")
        (v,) = versions
        assert rows == {
            1: ("one", big, "kept", v),
            2: ("two", "small", "n/a", v),
            3: ("three", big, "n/a", v),
        }
    finally:
        with source.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{unique}" CASCADE'))
        source.dispose()
        target.dispose()
