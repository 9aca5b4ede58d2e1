"""``streamer db prepare`` on user-made (managed) target tables of every target kind.

A table made as a user's migration would make it (NOT NULL columns, a primary key, no version
column): ``db prepare`` prints the ``ALTER TABLE .. ADD COLUMN`` and changes nothing, ``--apply``
adds the column, a second run prints nothing, and then a managed sink applies changes into it
(whole table compared). A missing table and a table without a primary key are named errors; a
PostgreSQL foreign key checked per statement is named in a warning, a deferred one is not.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from typing import Any

import sqlalchemy as sa

from streamer.apply import state
from streamer.apply.schema import Router, SchemaManager
from streamer.apply.sink import Sink
from streamer.core.checkpoint import KafkaOrigin
from streamer.core.events import ChangeEvent, ColumnType, Op, SourcePosition, TableId, pg_version

VERSION = "_streamer_version"
COLUMNS = {
    "id": ColumnType("int64", optional=False),
    "name": ColumnType("string", optional=False),
    "qty": ColumnType("int32", optional=False),
}


def prepare_cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STREAMER_TARGET_URL": url}
    return subprocess.run(
        [sys.executable, "-m", "streamer.cli", "db", "prepare", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _qualified(engine: sa.Engine, table: TableId) -> str:
    route = Router(engine.dialect.name).route(table)
    return engine.dialect.identifier_preparer.format_table(
        sa.table(route.target_table, schema=route.target_schema)
    )


def _make(engine: sa.Engine, table: TableId, body: str) -> str:
    qualified = _qualified(engine, table)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{table.schema}"'))
        conn.execute(sa.text(f"CREATE TABLE {qualified} ({body})"))
    return qualified


def _event(table: TableId, op: Op, key: int, after: dict[str, Any] | None, lsn: int) -> ChangeEvent:
    return ChangeEvent(
        op=op,
        table=table,
        key={"id": key},
        before={"id": key} if op is Op.DELETE else None,
        after=after,
        columns=COLUMNS,
        key_columns=("id",),
        position=SourcePosition(version=pg_version(lsn), lsn=lsn),
        txid=None,
        source_ts=None,
        event_ts=None,
        origin=KafkaOrigin("topic", 0, lsn),
    )


def test_prepare_adds_the_version_column_once_then_managed_apply_works(target, unique: str) -> None:
    url, engine = target
    table = TableId("inventory", unique, "items")
    qualified = _make(
        engine, table, "id BIGINT NOT NULL PRIMARY KEY, name VARCHAR(50) NOT NULL, qty INTEGER NOT NULL"
    )

    printed = prepare_cli(url, "--table", f"{unique}.items")
    assert printed.returncode == 0, printed.stderr
    expected_ddl = f"ALTER TABLE {qualified} ADD COLUMN {VERSION} VARCHAR(40);"
    assert printed.stdout.strip().splitlines() == [expected_ddl]
    with engine.connect() as conn:  # printing changed nothing
        names = [c["name"] for c in sa.inspect(conn).get_columns(*_name(engine, table))]
    assert names == ["id", "name", "qty"]

    applied = prepare_cli(url, "--table", f"{unique}.items", "--apply")
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.strip().splitlines() == [expected_ddl]
    again = prepare_cli(url, "--table", f"{unique}.items")
    assert again.returncode == 0, again.stderr
    assert again.stdout == ""

    state.upgrade(engine)
    router = Router(engine.dialect.name)
    sink = Sink(engine, router, SchemaManager(engine, VERSION, "managed"))
    sink.apply(
        [
            _event(table, Op.CREATE, 1, {"id": 1, "name": "one", "qty": 1}, 100),
            _event(table, Op.CREATE, 2, {"id": 2, "name": "two", "qty": 2}, 110),
            _event(table, Op.UPDATE, 1, {"id": 1, "name": "one-b", "qty": 10}, 120),
            _event(table, Op.CREATE, 3, {"id": 3, "name": "three", "qty": 3}, 130),
            _event(table, Op.DELETE, 2, None, 140),
        ],
        {("topic", 0): 5},
        "g",
    )
    with engine.connect() as conn:
        rows = conn.execute(sa.text(f"SELECT id, name, qty, {VERSION} FROM {qualified} ORDER BY id")).all()
    assert [tuple(r) for r in rows] == [
        (1, "one-b", 10, pg_version(120)),
        (3, "three", 3, pg_version(130)),
    ]


def _name(engine: sa.Engine, table: TableId) -> tuple[str, str | None]:
    route = Router(engine.dialect.name).route(table)
    return route.target_table, route.target_schema


def test_prepare_names_a_missing_table_and_a_table_without_key(target, unique: str) -> None:
    url, engine = target
    missing = prepare_cli(url, "--table", f"{unique}.nothing")
    assert missing.returncode == 1
    assert "PrepareError" in missing.stderr or "does not exist" in missing.stderr
    assert f"{_name(engine, TableId('inventory', unique, 'nothing'))[0]} does not exist" in missing.stderr
    assert missing.stdout == ""

    _make(engine, TableId("inventory", unique, "nokey"), "id BIGINT NOT NULL, name VARCHAR(50)")
    nokey = prepare_cli(url, "--table", f"{unique}.nokey", "--apply")
    assert nokey.returncode == 1
    assert "has no primary key" in nokey.stderr
    assert nokey.stdout == ""
    with engine.connect() as conn:  # nothing ran
        names = [
            c["name"]
            for c in sa.inspect(conn).get_columns(*_name(engine, TableId("inventory", unique, "nokey")))
        ]
    assert names == ["id", "name"]


def test_prepare_warns_about_foreign_keys_checked_per_statement(stack, unique: str) -> None:
    from streamer.db import create_target_engine

    url = stack.settings.target_url
    engine = create_target_engine(url)
    try:
        _make(engine, TableId("inventory", unique, "parent"), f"id BIGINT PRIMARY KEY, {VERSION} VARCHAR(40)")
        _make(
            engine,
            TableId("inventory", unique, "child"),
            f'id BIGINT PRIMARY KEY, parent_id BIGINT CONSTRAINT child_parent REFERENCES "{unique}".parent, '
            f"{VERSION} VARCHAR(40)",
        )
        _make(
            engine,
            TableId("inventory", unique, "calm"),
            f'id BIGINT PRIMARY KEY, parent_id BIGINT CONSTRAINT calm_parent REFERENCES "{unique}".parent '
            f"DEFERRABLE INITIALLY DEFERRED, {VERSION} VARCHAR(40)",
        )
        child = prepare_cli(url, "--table", f"{unique}.child")
        assert child.returncode == 0, child.stderr
        assert child.stdout == ""
        warnings = [line for line in child.stderr.splitlines() if line.startswith("warning:")]
        assert len(warnings) == 1
        assert f"child_parent ({unique}.child -> {unique}.parent)" in warnings[0]
        assert "DEFERRABLE INITIALLY DEFERRED" in warnings[0]
        parent = prepare_cli(url, "--table", f"{unique}.parent")  # the key refers to it: named too
        parent_warnings = [line for line in parent.stderr.splitlines() if line.startswith("warning:")]
        assert len(parent_warnings) == 1
        assert "child_parent" in parent_warnings[0]
        calm = prepare_cli(url, "--table", f"{unique}.calm")
        assert "warning:" not in calm.stderr
    finally:
        engine.dispose()


def _fk_event(table: TableId, key: int, after: dict[str, Any], lsn: int) -> ChangeEvent:
    cols = {n: ColumnType("int64", optional=n != "id") for n in after}
    return dataclasses.replace(_event(table, Op.CREATE, key, after, lsn), columns=cols)


def test_foreign_keys_in_a_managed_postgresql_target_as_documented(stack, unique: str) -> None:
    """A child applied before its parent: refused per statement (the event isolated and named);
    with DEFERRABLE INITIALLY DEFERRED accepted when the parent is in the same batch, refused at
    commit when it is not."""
    from streamer.db import create_target_engine

    engine = create_target_engine(stack.settings.target_url)
    try:
        state.upgrade(engine)
        parent, child, calm = (TableId("inventory", unique, n) for n in ("parent", "child", "calm"))
        _make(engine, parent, f"id BIGINT PRIMARY KEY, {VERSION} VARCHAR(40)")
        _make(
            engine,
            child,
            f'id BIGINT PRIMARY KEY, pid BIGINT REFERENCES "{unique}".parent, {VERSION} VARCHAR(40)',
        )
        _make(
            engine,
            calm,
            f'id BIGINT PRIMARY KEY, pid BIGINT REFERENCES "{unique}".parent DEFERRABLE INITIALLY DEFERRED, '
            f"{VERSION} VARCHAR(40)",
        )
        router = Router(engine.dialect.name)
        sink = Sink(engine, router, SchemaManager(engine, VERSION, "managed"))

        orphan = _fk_event(child, 1, {"id": 1, "pid": 10}, 100)
        result = sink.apply([orphan], {("topic", 0): 1}, "g", isolate=True)
        assert [ev for ev, _exc in result.failed] == [orphan]
        assert isinstance(result.failed[0][1], sa.exc.IntegrityError)

        # deferred: the child first, its parent later in the same batch: both applied
        sink.apply(
            [_fk_event(calm, 1, {"id": 1, "pid": 10}, 110), _fk_event(parent, 10, {"id": 10}, 105)],
            {("topic", 0): 3},
            "g",
        )
        with engine.connect() as conn:
            rows = conn.execute(sa.text(f"SELECT id, pid, {VERSION} FROM {_qualified(engine, calm)}")).all()
        assert [tuple(r) for r in rows] == [(1, 10, pg_version(110))]
        # deferred, the parent not in the batch: refused at the batch's commit, nothing applied
        late = _fk_event(calm, 2, {"id": 2, "pid": 20}, 120)
        try:
            sink.apply([late], {("topic", 0): 4}, "g", isolate=True)
        except sa.exc.IntegrityError:
            pass
        else:
            raise AssertionError("a deferred key without its parent committed")
        with engine.connect() as conn:
            assert conn.execute(sa.text(f"SELECT count(*) FROM {_qualified(engine, calm)}")).scalar_one() == 1
    finally:
        engine.dispose()
