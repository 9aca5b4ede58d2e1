"""Source schema changes mid-stream (README, "Schema changes"): PostgreSQL -> Debezium -> `streamer consume`.

The source table is altered between two consumer runs; the target is compared whole (every row, every
source column) afterwards, or, for a change whose policy is stop, the named error, exit 1 and nothing
applied past it (offsets included).
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from streamer.apply import state
from streamer.apply.schema import Router, SchemaManager
from streamer.apply.schemachange import SchemaChangeStoppedError
from streamer.apply.sink import Sink
from streamer.core.events import Op
from streamer.db import create_target_engine
from streamer.settings import SchemaChangeSettings
from streamer.stack.local import Stack
from tests.conftest import run_on_source
from tests.integration.conftest import TARGET_KINDS, _mariadb_engine, target_url
from tests.integration.test_consume import _state_offsets, run_consumer
from tests.integration.test_replicate import Replication, execute, repl, run
from tests.integration.test_sink import VERSION, Events

__all__ = ["repl"]  # the fixture, used by name


def _rows(engine: sa.Engine, schema: str | None, table: str, cols: list[str]) -> list[tuple[Any, ...]]:
    t = sa.table(table, *(sa.column(c) for c in cols), schema=schema)
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.select(*t.c).order_by(t.c[cols[0]]))]


def _target_name(kind: str, schema: str) -> tuple[str | None, str]:
    return (schema, "t") if kind == "postgresql" else (None, f"{schema}_t")


def _norm(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return [
        tuple(Decimal(str(v)).normalize() if isinstance(v, Decimal | float) else v for v in r) for r in rows
    ]


@pytest.fixture
def source_table(stack: Stack, unique: str) -> Any:
    run_on_source(
        stack,
        f'CREATE SCHEMA "{unique}"',
        f'CREATE TABLE "{unique}".t (id int PRIMARY KEY, n int, s varchar(10), d numeric(8,2), gone text)',
        f"INSERT INTO \"{unique}\".t VALUES (1, 10, 'a', 1.50, 'g1'), (2, 20, 'b', 2.25, 'g2'), (3, NULL, 'c', NULL, 'g3')",
    )
    yield unique
    run_on_source(stack, f'DROP SCHEMA IF EXISTS "{unique}" CASCADE')


@pytest.mark.parametrize("kind", TARGET_KINDS)
def test_add_drop_and_widen_mid_stream(
    stack: Stack, debezium: Any, source_table: str, tmp_path: Path, kind: str
) -> None:
    """int -> bigint, varchar(10) -> text, numeric(8,2) -> numeric(14,4), a new column and a dropped one.

    Before the policies the bigint value failed on PostgreSQL (integer out of range) and MariaDB.
    """
    schema = source_table
    if kind == "mariadb":
        _mariadb_engine().dispose()
    url = target_url(kind, stack, tmp_path)
    debezium(schema, f"{schema}.t", **{"column.propagate.source.type": ".*"})
    topics = rf"^{schema}\.{schema}\.t$"
    first = run_consumer(schema, topics, url, "--until-idle", "10")
    assert first.returncode == 0, first.stderr[-3000:]
    run_on_source(
        stack,
        f'ALTER TABLE "{schema}".t ALTER COLUMN n TYPE bigint, ALTER COLUMN s TYPE text, '
        "ALTER COLUMN d TYPE numeric(14,4)",
        # a new column of another type than the dropped one (same type in one step: taken as a rename)
        f'ALTER TABLE "{schema}".t ADD COLUMN extra int',
        f'ALTER TABLE "{schema}".t DROP COLUMN gone',
        f"INSERT INTO \"{schema}\".t VALUES (4, {2**40}, '{'x' * 50}', 1234567890.1234, 44)",
        f'UPDATE "{schema}".t SET extra = 11, n = {2**41} WHERE id = 1',
        f"UPDATE \"{schema}\".t SET s = '{'y' * 30}' WHERE id = 2",
    )
    second = run_consumer(schema, topics, url, "--until-idle", "10")
    assert second.returncode == 0, second.stderr[-3000:]
    source = create_target_engine(stack.settings.source_url)
    target = create_target_engine(url)
    try:
        cols = ["id", "n", "s", "d", "extra"]
        tschema, tname = _target_name(kind, schema)
        expected = _rows(source, schema, "t", cols)
        assert len(expected) == 4
        assert _norm(_rows(target, tschema, tname, cols)) == _norm(expected)
        # drop_column=ignore: the target keeps the column and its values; rows inserted later have NULL
        assert _rows(target, tschema, tname, ["id", "gone"]) == [(1, "g1"), (2, "g2"), (3, "g3"), (4, None)]
    finally:
        source.dispose()
        target.dispose()


@pytest.mark.parametrize(
    ("alter", "env", "column", "change"),
    [
        ("ALTER COLUMN n TYPE text", {}, "n", "incompatible type change"),
        (
            "ALTER COLUMN n TYPE smallint",
            {"STREAMER_SCHEMA_CHANGES__NARROW_TYPE": "stop"},
            "n",
            "type narrowed",
        ),
        ("ALTER COLUMN n TYPE bigint", {"STREAMER_SCHEMA_CHANGES__WIDEN_TYPE": "stop"}, "n", "type widened"),
        ("RENAME COLUMN gone TO kept", {}, "gone", "column rename"),
        ("DROP COLUMN gone", {"STREAMER_SCHEMA_CHANGES__DROP_COLUMN": "stop"}, "gone", "column drop"),
        ("ADD COLUMN extra int", {"STREAMER_SCHEMA_CHANGES__ADD_COLUMN": "stop"}, "extra", "column added"),
    ],
)
def test_stop_policies_name_the_change_and_apply_nothing_past_it(
    stack: Stack,
    debezium: Any,
    source_table: str,
    alter: str,
    env: dict[str, str],
    column: str,
    change: str,
) -> None:
    schema = source_table
    url = stack.settings.target_url
    debezium(schema, f"{schema}.t", **{"column.propagate.source.type": ".*"})
    topics = rf"^{schema}\.{schema}\.t$"
    first = run_consumer(schema, topics, url, "--until-idle", "10")
    assert first.returncode == 0, first.stderr[-3000:]
    before = _state_offsets(url, schema)
    target = create_target_engine(url)
    try:
        cols = [r[0] for r in _columns(target, schema)]
        rows_before = _rows(target, schema, "t", cols)
        run_on_source(
            stack,
            f'ALTER TABLE "{schema}".t {alter}',
            f'INSERT INTO "{schema}".t (id) VALUES (5)',
            f'UPDATE "{schema}".t SET n = 7 WHERE id = 2',
        )
        stopped = run_consumer(schema, topics, url, "--until-idle", "10", timeout=240, **env)
        assert stopped.returncode == 1, stopped.stderr[-3000:]
        assert "stopped on a schema change" in stopped.stderr
        assert f"target table {schema}.t, column '{column}': {change}" in stopped.stderr
        assert _state_offsets(url, schema) == before  # offsets not moved past the change
        assert [r[0] for r in _columns(target, schema)] == cols  # no DDL
        assert _rows(target, schema, "t", cols) == rows_before
    finally:
        target.dispose()


def _columns(engine: sa.Engine, schema: str) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                sa.text(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema = :s AND table_name = 't' "
                    "ORDER BY ordinal_position"
                ),
                {"s": schema},
            )
        ]


def test_rename_propagated(stack: Stack, debezium: Any, source_table: str) -> None:
    """schema_changes.rename_column=propagate: the target column is renamed, old values kept under the new name."""
    schema = source_table
    url = stack.settings.target_url
    debezium(schema, f"{schema}.t", **{"column.propagate.source.type": ".*"})
    topics = rf"^{schema}\.{schema}\.t$"
    first = run_consumer(schema, topics, url, "--until-idle", "10")
    assert first.returncode == 0, first.stderr[-3000:]
    run_on_source(
        stack,
        f'ALTER TABLE "{schema}".t RENAME COLUMN gone TO kept',
        f"INSERT INTO \"{schema}\".t (id, kept) VALUES (5, 'k5')",
    )
    done = run_consumer(
        schema, topics, url, "--until-idle", "10", STREAMER_SCHEMA_CHANGES__RENAME_COLUMN="propagate"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    source, target = create_target_engine(stack.settings.source_url), create_target_engine(url)
    try:
        cols = ["id", "n", "s", "d", "kept"]
        assert _norm(_rows(target, schema, "t", cols)) == _norm(_rows(source, schema, "t", cols))
        assert "gone" not in [r[0] for r in _columns(target, schema)]
    finally:
        source.dispose()
        target.dispose()


def test_replicate_adds_a_column_and_widens_types(stack: Stack, repl: Replication) -> None:
    """The pgoutput path (`streamer replicate`): Relation messages carry the new shape; same policies."""
    schema = repl.schema()
    s = f'"{schema}"'
    execute(
        stack,
        f"CREATE SCHEMA {s}",
        f"CREATE TABLE {s}.t (id int PRIMARY KEY, n int, d numeric(8,2))",
        f"INSERT INTO {s}.t VALUES (1, 10, 1.50), (2, NULL, 2.25)",
    )
    url = stack.settings.target_url
    slot = repl.slot()
    made = run(slot, schema, url, "--create", "--tables", f"{schema}.t", "--max-events", "0")
    assert made.returncode == 0, made.stderr[-3000:]
    execute(stack, f"INSERT INTO {s}.t VALUES (3, 30, 3.75)")
    first = run(slot, schema, url, "--until-idle", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    execute(
        stack,
        f"ALTER TABLE {s}.t ALTER COLUMN n TYPE bigint, ALTER COLUMN d TYPE numeric(16,4), ADD COLUMN extra text",
        f"INSERT INTO {s}.t VALUES (4, {2**40}, 123456789012.1234, 'e4')",
        f"UPDATE {s}.t SET n = {2**41}, extra = 'e3' WHERE id = 3",
    )
    second = run(slot, schema, url, "--until-idle", "2")
    assert second.returncode == 0, second.stderr[-3000:]
    source, target = create_target_engine(stack.settings.source_url), create_target_engine(url)
    try:
        cols = ["id", "n", "d", "extra"]
        # the slot starts after the rows 1 and 2 (no snapshot): the target has the rows streamed since
        expected = [r for r in _rows(source, schema, "t", cols) if r[0] >= 3]
        assert len(expected) == 2
        assert _norm(_rows(target, schema, "t", cols)) == _norm(expected)
    finally:
        source.dispose()
        target.dispose()


@pytest.mark.parametrize("policy", ["ignore", "stop"])
def test_new_table_policies(target: tuple[str, sa.Engine], unique: str, policy: str) -> None:
    """schema_changes.new_table: ignore skips the table's events (the batch commits), stop applies nothing."""
    _url, engine = target
    state.upgrade(engine)
    sink = Sink(
        engine,
        Router(engine.dialect.name),
        SchemaManager(engine, VERSION, changes=SchemaChangeSettings(new_table=policy)),
    )
    ev = Events(unique)
    route = sink.router.route(ev.table)
    events = [ev(Op.CREATE, 1, {"id": 1, "name": "a"}, 10)]
    if policy == "stop":
        with pytest.raises(SchemaChangeStoppedError, match=f"target table {route.qualified}.*new table"):
            sink.apply(events, {(unique, 0): 1}, unique)
        assert _state_offsets(_url, unique) == 0
    else:
        sink.apply(events, {(unique, 0): 1}, unique)
        assert _state_offsets(_url, unique) == 1  # the batch committed, the table's events skipped
    assert sink.schema.lookup(route) is None  # never created


def test_replicate_stops_on_an_incompatible_change(stack: Stack, repl: Replication) -> None:
    """The pgoutput path stops with the same named error; the target and its position stay before it."""
    schema = repl.schema()
    s = f'"{schema}"'
    execute(stack, f"CREATE SCHEMA {s}", f"CREATE TABLE {s}.t (id int PRIMARY KEY, n int)")
    url = stack.settings.target_url
    slot = repl.slot()
    made = run(slot, schema, url, "--create", "--tables", f"{schema}.t", "--max-events", "0")
    assert made.returncode == 0, made.stderr[-3000:]
    execute(stack, f"INSERT INTO {s}.t VALUES (1, 10)")
    first = run(slot, schema, url, "--until-idle", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    execute(stack, f"ALTER TABLE {s}.t ALTER COLUMN n TYPE text", f"INSERT INTO {s}.t VALUES (2, 'two')")
    for _ in range(2):  # stopped again on the next run: nothing moved past the change
        stopped = run(slot, schema, url, "--until-idle", "2")
        assert stopped.returncode == 1, stopped.stderr[-3000:]
        assert f"target table {schema}.t, column 'n': incompatible type change" in stopped.stderr
    target = create_target_engine(url)
    try:
        assert _rows(target, schema, "t", ["id", "n"]) == [(1, 10)]
    finally:
        target.dispose()
