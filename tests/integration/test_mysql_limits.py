"""MySQL/MariaDB target limits (issue 13 item 7): numeric past DECIMAL(65,30), NaN and infinities.

Source PostgreSQL -> Debezium (``decimal.handling.mode=string``, the mode that carries NaN) ->
``streamer consume`` into MariaDB, and ``streamer load`` into MariaDB, of one table whose columns
no DECIMAL holds whole: ``numeric(70,10)``, ``numeric(40,35)``, unconstrained ``numeric`` and
``double precision``. Every value the target can hold exactly lands and compares equal (whole
table); each one it cannot is refused with ``UnrepresentableValueError`` naming table, column and
value: dead-lettered under ``--error-policy dlq`` (the rest applied), a stop under ``stop``, and the
load stops on it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from confluent_kafka import Consumer

from streamer.apply.schema import Router, RouteSpec, SchemaManager
from streamer.apply.sink import Sink
from streamer.core.checkpoint import KafkaOrigin
from streamer.core.events import ChangeEvent, ColumnType, Op, SourcePosition, TableId
from streamer.db import create_target_engine
from streamer.stack.local import Stack
from streamer.validate import compare_tables
from tests.conftest import kafka_consumer_config, run_on_source
from tests.integration.conftest import MARIADB_URL, _mariadb_engine
from tests.integration.test_consume import run_consumer
from tests.integration.test_load import streamer

COLUMNS = "id integer PRIMARY KEY, n70 numeric(70,10), n4035 numeric(40,35), nany numeric, d double precision"
BIG_60 = "9" * 60  # numeric(70,10) allows 60 digits before the point; DECIMAL(65,10) 55
# rows every target column holds exactly
GOOD = {
    1: ("1234567890123456789012345678901234567890.0123456789", "12345.123456789012345678901234567890",
        "1234567890.123456789012345678901234567890", "1.5"),
    2: ("-" + "9" * 55 + ".9999999999", "1.50000000000000000000000000000000000",
        "0.000000000000000000000000000001", "-2.25e-300"),
    3: (None, None, "-" + "9" * 35 + ".5", None),
}  # fmt: skip
# rows with one value the target cannot hold: id -> (column, value)
BAD = {
    10: ("n4035", "1.23456789012345678901234567890123456"),  # 35 digits after the point
    11: ("nany", "1234567890123456789012345678901234567890"),  # 40 digits before the point
    12: ("nany", "0.12345678901234567890123456789012345"),  # 35 digits after the point
    13: ("nany", "NaN"),
    14: ("d", "Infinity"),
    15: ("d", "NaN"),
    16: ("n70", BIG_60),
    17: ("nany", "-Infinity"),
    18: ("n4035", "NaN"),
}


def _insert(stack: Stack, schema: str, rows: Mapping[int, tuple[str | None, ...]]) -> None:
    stmts = []
    for i, values in rows.items():
        lits = ", ".join("NULL" if v is None else f"'{v}'" for v in values)
        stmts.append(f"INSERT INTO {schema}.nums (id, n70, n4035, nany, d) VALUES ({i}, {lits})")
    run_on_source(stack, *stmts)


def _bad_rows() -> dict[int, tuple[str | None, ...]]:
    order = ("n70", "n4035", "nany", "d")
    return {i: tuple(v if c == col else None for c in order) for i, (col, v) in BAD.items()}


def _target_table(stack: Stack, schema: str) -> tuple[str | None, str]:
    route = Router("mysql").route(TableId(stack.cfg.source_database, schema, "nums"))
    return route.target_schema, route.target_table


def _compare(stack: Stack, schema: str) -> Any:
    source = create_target_engine(stack.settings.source_url)
    target = create_target_engine(MARIADB_URL)
    try:
        return compare_tables(source, (schema, "nums"), target, _target_table(stack, schema))
    finally:
        source.dispose()
        target.dispose()


def _drop_target(stack: Stack, schema: str) -> None:
    engine = create_target_engine(MARIADB_URL)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS `{_target_table(stack, schema)[1]}`"))
    finally:
        engine.dispose()


def _column_types(stack: Stack, schema: str) -> dict[str, str]:
    engine = create_target_engine(MARIADB_URL)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT column_name, column_type FROM information_schema.columns "
                    "WHERE table_schema = DATABASE() AND table_name = :t"
                ),
                {"t": _target_table(stack, schema)[1]},
            ).all()
    finally:
        engine.dispose()
    return {str(r[0]): str(r[1]).lower() for r in rows}


def _letters(stack: Stack, topic: str, group: str, expected: int) -> list[Any]:
    reader = Consumer(kafka_consumer_config(stack, group))
    reader.subscribe([topic])
    out: list[Any] = []
    deadline = time.monotonic() + 60
    while len(out) < expected and time.monotonic() < deadline:
        msg = reader.poll(0.5)
        if msg is not None and not msg.error():
            out.append(msg)
    reader.close()
    return out


def _assert_named(text: str, table: str, column: str, value: str) -> None:
    assert "UnrepresentableValueError" in text or "cannot hold the value" in text, text[-2000:]
    assert f"target table {table} column {column!r}" in text, text[-2000:]
    assert f"cannot hold the value {value}" in text, text[-2000:]


def test_consume_into_mariadb_dead_letters_what_it_cannot_hold(
    stack: Stack, debezium: Any, unique: str, tmp_path: Path
) -> None:
    _mariadb_engine().dispose()
    schema = unique
    run_on_source(stack, f"CREATE SCHEMA {schema}", f"CREATE TABLE {schema}.nums ({COLUMNS})")
    try:
        _insert(stack, schema, {1: GOOD[1]})  # read by the snapshot
        _insert(stack, schema, {10: _bad_rows()[10]})
        debezium(
            unique,
            f"{schema}.nums",
            **{"decimal.handling.mode": "string", "column.propagate.source.type": ".*"},
        )
        _insert(stack, schema, {i: v for i, v in GOOD.items() if i != 1})  # streamed
        _insert(stack, schema, {i: v for i, v in _bad_rows().items() if i != 10})
        run_on_source(stack, f"UPDATE {schema}.nums SET nany = '-0.5', d = 3.5 WHERE id = 2")
        topics = rf"^{unique}\.{schema}\.nums$"
        dlq = f"{unique}.dlq"
        res = run_consumer(
            f"{unique}-dlq",
            topics,
            MARIADB_URL,
            "--until-idle",
            "10",
            STREAMER_CONSUMER__ERROR_POLICY="dlq",
            STREAMER_CONSUMER__DLQ_TOPIC=dlq,
        )
        assert res.returncode == 0, res.stderr[-3000:]
        assert f"dead-lettered {len(BAD)}" in res.stderr, res.stderr[-3000:]
        table = ".".join(p for p in _target_table(stack, schema) if p)
        types = _column_types(stack, schema)
        assert (types["n70"], types["n4035"], types["nany"], types["d"]) == (
            "decimal(65,10)",
            "decimal(35,30)",
            "decimal(65,30)",
            "double",
        )
        # every representable row whole and equal; exactly the refused ones missing
        diff = _compare(stack, schema)
        assert diff.extra == [] and diff.changed == [], (diff.extra, diff.changed)
        assert sorted(k[0] for k in diff.missing) == sorted(BAD), diff.missing
        letters = _letters(stack, dlq, f"{unique}-reader", len(BAD))
        assert len(letters) == len(BAD)
        seen: dict[int, str] = {}
        for letter in letters:
            headers = dict(letter.headers() or [])
            assert headers["streamer.error.class"] == b"UnrepresentableValueError", headers
            error = headers["streamer.error"].decode()
            row_id = json.loads(letter.key())["payload"]["id"]
            seen[row_id] = error
        assert sorted(seen) == sorted(BAD)
        for row_id, error in seen.items():
            column, value = BAD[row_id]
            _assert_named(error, table, column, value)

        # error policy stop: exits 1 on the first such record with the named error
        _drop_target(stack, schema)
        res = run_consumer(f"{unique}-stop", topics, MARIADB_URL, "--until-idle", "10")
        assert res.returncode == 1, res.stderr[-3000:]
        assert "UnrepresentableValueError" in res.stderr, res.stderr[-3000:]
        assert any(
            f"column {c!r}" in res.stderr and f"cannot hold the value {v}" in res.stderr
            for c, v in BAD.values()
        ), res.stderr[-3000:]
    finally:
        _drop_target(stack, schema)
        run_on_source(stack, f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def test_load_into_mariadb_stops_on_what_it_cannot_hold(stack: Stack, unique: str) -> None:
    _mariadb_engine().dispose()
    schema = unique
    run_on_source(stack, f"CREATE SCHEMA {schema}", f"CREATE TABLE {schema}.nums ({COLUMNS})")
    try:
        _insert(stack, schema, GOOD)
        _insert(stack, schema, {13: _bad_rows()[13]})
        table = ".".join(p for p in _target_table(stack, schema) if p)
        res = streamer("load", "--table", f"{schema}.nums", url=MARIADB_URL)
        assert res.returncode == 1, res.stderr[-3000:]
        _assert_named(res.stderr, table, "nany", "NaN")
        assert res.stderr.splitlines()[-1].startswith("streamer: error: target table"), res.stderr[-2000:]

        # without the row it cannot hold, the same table loads whole and equal
        run_on_source(stack, f"DELETE FROM {schema}.nums WHERE id = 13")
        _drop_target(stack, schema)
        res = streamer("load", "--table", f"{schema}.nums", url=MARIADB_URL)
        assert res.returncode == 0, res.stderr[-3000:]
        types = _column_types(stack, schema)
        assert (types["n70"], types["n4035"], types["nany"]) == (
            "decimal(65,10)",
            "decimal(35,30)",
            "decimal(65,30)",
        )
        diff = _compare(stack, schema)
        assert diff.source_rows == len(GOOD)
        assert diff.equal, (diff.missing, diff.extra, diff.changed)

        # a value with more digits than the column keeps stops the load: never rounded
        _insert(stack, schema, {12: _bad_rows()[12]})
        _drop_target(stack, schema)
        res = streamer("load", "--table", f"{schema}.nums", url=MARIADB_URL)
        assert res.returncode == 1, res.stderr[-3000:]
        _assert_named(res.stderr, table, *BAD[12])
    finally:
        _drop_target(stack, schema)
        run_on_source(stack, f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def test_a_column_cast_to_text_holds_every_value_exactly(stack: Stack, unique: str) -> None:
    """The error's way out: ``[routes."s.t"] cast = {n = "text"}`` stores the exact text, NaN too,
    and validate compares it equal to the source's numeric column."""
    engine = _mariadb_engine()
    table = TableId("inventory", unique, "nums")
    sink = Sink(
        engine,
        Router("mysql", {table.qualified: RouteSpec(cast={"n": "text"})}),
        SchemaManager(engine, "_streamer_version"),
    )
    columns = {
        "id": ColumnType("int32", optional=False),
        "n": ColumnType("struct", "io.debezium.data.VariableScaleDecimal"),
    }
    values = [Decimal("NaN"), Decimal("1" * 40), Decimal("0.12345678901234567890123456789012345"),
              Decimal("-Infinity"), Decimal("1.50"), None]  # fmt: skip
    events = [
        ChangeEvent(
            op=Op.CREATE,
            table=table,
            key={"id": i},
            before=None,
            after={"id": i, "n": v},
            columns=columns,
            key_columns=("id",),
            position=SourcePosition(f"pg:{i + 1:016x}"),
            txid=None,
            source_ts=None,
            event_ts=None,
            origin=KafkaOrigin("t", 0, i),
        )  # fmt: skip
        for i, v in enumerate(values)
    ]
    try:
        sink.apply(events, {}, "", record_state=False)
        with engine.connect() as conn:
            rows = conn.execute(sa.text(f"SELECT id, n FROM `{unique}_nums` ORDER BY id")).all()
        assert [tuple(r) for r in rows] == [
            (0, "NaN"),
            (1, "1" * 40),
            (2, "0.12345678901234567890123456789012345"),
            (3, "-Infinity"),
            (4, "1.50"),
            (5, None),
        ]
        # the same rows at the source: validate compares the text column equal, value by value
        run_on_source(
            stack,
            f"CREATE SCHEMA {unique}",
            f"CREATE TABLE {unique}.nums (id integer PRIMARY KEY, n numeric)",
        )
        inserts = [
            f"INSERT INTO {unique}.nums VALUES ({i}, {'NULL' if v is None else repr(str(v))})"
            for i, v in enumerate(values)
        ]
        run_on_source(stack, *inserts)
        source = create_target_engine(stack.settings.source_url)
        try:
            diff = compare_tables(source, (unique, "nums"), engine, (None, f"{unique}_nums"))
        finally:
            source.dispose()
        assert diff.source_rows == len(values)
        assert diff.equal, (diff.missing, diff.extra, diff.changed)
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS `{unique}_nums`"))
        engine.dispose()
        run_on_source(stack, f"DROP SCHEMA IF EXISTS {unique} CASCADE")
