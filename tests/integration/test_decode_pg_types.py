"""Every common PostgreSQL type, captured by the real Debezium connector and decoded by streamer.

A table with a column of each common type gets rows before the connector starts (read by the
snapshot, through JDBC) and after (streamed through pgoutput): ordinary values, PostgreSQL's
special values (infinity, 24:00:00, NaN), NULLs, an update that leaves a TOASTed text unchanged
and a delete. Every decoded value is compared with what PostgreSQL returns for that row at that
moment (psycopg2's Python value, or PostgreSQL's own text where Python has no value for it).
"""

from __future__ import annotations

import datetime as dt
import math
import re
import secrets
import time
import uuid
from decimal import Decimal
from typing import Any

from confluent_kafka import Consumer

from streamer.core.events import UNAVAILABLE, ChangeEvent, Op, OtherRecord, RecordKind, TableId
from streamer.decode.decoder import Decoder
from streamer.stack.local import Stack
from tests.conftest import kafka_consumer_config

JSON_CONVERTER = "org.apache.kafka.connect.json.JsonConverter"

COLUMNS = {
    "c_smallint": "smallint",
    "c_integer": "integer",
    "c_bigint": "bigint",
    "c_numeric": "numeric(12,4)",
    "c_numeric_any": "numeric",
    "c_money": "money",
    "c_real": "real",
    "c_double": "double precision",
    "c_boolean": "boolean",
    "c_text": "text",
    "c_varchar": "varchar(50)",
    "c_char": "char(5)",
    "c_bytea": "bytea",
    "c_date": "date",
    "c_time": "time",
    "c_timetz": "timetz",
    "c_timestamp": "timestamp",
    "c_timestamptz": "timestamptz",
    "c_interval": "interval",
    "c_uuid": "uuid",
    "c_json": "json",
    "c_jsonb": "jsonb",
    "c_mood": "{schema}.mood",
    "c_int_array": "integer[]",
    "c_text_array": "text[]",
    "c_big": "text",
}
# columns read back as text too, for values Python has no exact form of (infinity, 24:00, json text)
TEXT_FORMS = ("c_date", "c_time", "c_timestamp", "c_timestamptz", "c_json", "c_jsonb")

BIG = secrets.token_hex(10_000)  # 20,000 incompressible characters: stored out of line (TOAST)

ORDINARY = {
    "c_smallint": -32768,
    "c_integer": 2147483647,
    "c_bigint": -9223372036854775808,
    "c_numeric": "12345678.9012",
    "c_numeric_any": "-123456789012345678901234567890.123456789",
    "c_money": "1234.56",
    "c_real": 1.1,
    "c_double": 3.141592653589793,
    "c_boolean": True,
    "c_text": 'grüße ✓ "quoted" \\ back\nslash',
    "c_varchar": "varchar",
    "c_char": "ab",
    "c_bytea": b"\x00\x01\xfe\xff",
    "c_date": "2024-02-29",
    "c_time": "13:14:15.123456",
    "c_timetz": "13:14:15.5+02",
    "c_timestamp": "2024-02-29 13:14:15.123456",
    "c_timestamptz": "2024-02-29 13:14:15.123456+05:30",
    "c_interval": "1 day 02:03:04.567891",
    "c_uuid": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    "c_json": '{"b": [1, 2.50, "x"],  "a": null}',
    "c_jsonb": '{"b": [1, 2.50, "x"],  "a": null}',
    "c_mood": "happy",
    "c_int_array": [1, None, -3],
    "c_text_array": ["a", "b c", None, '"q"'],
    "c_big": BIG,
}
SPECIAL = {
    "c_numeric": "-0.0001",
    "c_numeric_any": "0",
    "c_money": "-42.42",
    "c_real": float("-inf"),
    "c_double": float("nan"),
    "c_text": "",
    "c_bytea": b"",
    "c_date": "infinity",
    "c_time": "24:00:00",
    "c_timestamp": "infinity",
    "c_timestamptz": "infinity",
    "c_interval": "-3 hours",
    "c_int_array": [],
    "c_text_array": [],
}
NEGATIVE_SPECIAL = {
    **SPECIAL,
    "c_date": "-infinity",
    "c_time": "00:00:00",
    "c_timestamp": "-infinity",
    "c_timestamptz": "-infinity",
    "c_double": float("inf"),
    "c_interval": "00:00:00.000001",
}


def insert(cur: Any, schema: str, row_id: int, values: dict[str, Any]) -> None:
    names = ", ".join(["id", *values])
    marks = ", ".join(["%s"] * (len(values) + 1))
    cur.execute(f"INSERT INTO {schema}.types ({names}) VALUES ({marks})", [row_id, *values.values()])


def fetch(cur: Any, schema: str, row_id: int) -> dict[str, Any]:
    """What PostgreSQL returns for a row: psycopg2's values, money as numeric, and text forms."""
    exprs = [f"{c}::numeric" if c == "c_money" else c for c in COLUMNS] + [f"{c}::text" for c in TEXT_FORMS]
    cur.execute(f"SELECT {', '.join(exprs)} FROM {schema}.types WHERE id = %s", (row_id,))
    row = cur.fetchone()
    values = dict(zip([*COLUMNS, *(f"{c}::text" for c in TEXT_FORMS)], row, strict=True))
    values["id"] = row_id
    return values


def assert_value(name: str, decoded: Any, pg: dict[str, Any]) -> None:
    expected = pg[name]
    text = pg.get(f"{name}::text")
    where = f"{name}: decoded {decoded!r}, PostgreSQL {expected!r} / {text!r}"
    if expected is None:
        assert decoded is None, where
    elif text in ("infinity", "-infinity", "24:00:00"):
        assert getattr(decoded, "pg_literal", None) == text, where
        if text != "24:00:00":  # psycopg2 gives date.max/datetime.max (UTC for timestamptz) too
            assert decoded == expected, where
    elif name in ("c_json", "c_jsonb"):
        assert decoded == text, where  # the exact text PostgreSQL has
    elif name == "c_bytea":
        assert decoded == bytes(expected), where
    elif name == "c_uuid":
        assert decoded == uuid.UUID(expected), where
    elif isinstance(expected, float) and math.isnan(expected):
        assert isinstance(decoded, float) and math.isnan(decoded), where
    elif isinstance(expected, Decimal):
        assert isinstance(decoded, Decimal) and decoded == expected, where
        assert decoded.as_tuple().exponent == expected.as_tuple().exponent, where  # same scale
    elif isinstance(expected, dt.datetime) and expected.tzinfo is not None:
        assert isinstance(decoded, dt.datetime) and decoded.tzinfo is not None and decoded == expected, where
    elif isinstance(expected, dt.datetime):
        assert isinstance(decoded, dt.datetime) and decoded.tzinfo is None and decoded == expected, where
    elif isinstance(expected, dt.time) and expected.tzinfo is not None:
        assert isinstance(decoded, dt.time) and decoded.tzinfo is not None, where
        as_utc = dt.datetime.combine(dt.date(2000, 1, 1), expected).astimezone(dt.UTC).timetz()
        assert decoded == as_utc, where
    else:
        assert type(decoded) is type(expected) and decoded == expected, where


def assert_row(decoded: Any, pg: dict[str, Any], unavailable: tuple[str, ...] = ()) -> None:
    assert decoded is not None
    assert set(decoded) == {"id", *COLUMNS}
    assert decoded["id"] == pg["id"]
    for name in COLUMNS:
        if name in unavailable:
            assert decoded[name] is UNAVAILABLE, name
        else:
            assert_value(name, decoded[name], pg)


def consume(stack: Stack, topic: str, group: str, expected: int, timeout: float = 180) -> list[Any]:
    decoder = Decoder()
    consumer = Consumer(kafka_consumer_config(stack, group))
    consumer.subscribe(["^" + re.escape(topic) + "$"])
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < expected and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            topic_name, partition, offset = msg.topic(), msg.partition(), msg.offset()
            assert topic_name is not None and partition is not None and offset is not None
            out.append(decoder.decode(topic_name, partition, offset, msg.key(), msg.value(), msg.headers()))
    finally:
        consumer.close()
    assert len(out) >= expected, f"{len(out)} of {expected} records after {timeout}s: {out}"
    return out


def test_every_common_type_decodes_to_what_postgresql_has(
    stack: Stack, source_db: Any, debezium: Any, unique: str
) -> None:
    schema = unique
    columns = ", ".join(f"{name} {sqltype.format(schema=schema)}" for name, sqltype in COLUMNS.items())
    with source_db.cursor() as cur:
        cur.execute(f"CREATE SCHEMA {schema}")
        cur.execute(f"CREATE TYPE {schema}.mood AS ENUM ('sad', 'ok', 'happy')")
        cur.execute(f"CREATE TABLE {schema}.types (id integer PRIMARY KEY, {columns})")
        cur.execute(f"ALTER TABLE {schema}.types ALTER COLUMN c_big SET STORAGE EXTERNAL")
        insert(cur, schema, 1, ORDINARY)  # read by the snapshot
        insert(cur, schema, 6, SPECIAL)
        insert(cur, schema, 7, NEGATIVE_SPECIAL)
        snapshot_rows = {i: fetch(cur, schema, i) for i in (1, 6, 7)}

    debezium(
        unique,
        f"{schema}.types",
        **{
            "key.converter": JSON_CONVERTER,
            "value.converter": JSON_CONVERTER,
            "key.converter.schemas.enable": "true",
            "value.converter.schemas.enable": "true",
            "column.propagate.source.type": ".*",
        },
    )

    with source_db.cursor() as cur:  # streamed through pgoutput
        insert(cur, schema, 2, {**ORDINARY, "c_money": "-42.42", "c_mood": "sad"})
        insert(cur, schema, 3, SPECIAL)
        insert(cur, schema, 4, NEGATIVE_SPECIAL)
        insert(cur, schema, 5, {})
        streamed = {i: fetch(cur, schema, i) for i in (2, 3, 4, 5)}
        cur.execute(f"UPDATE {schema}.types SET c_integer = 7, c_text = 'changed' WHERE id = 2")
        updated = fetch(cur, schema, 2)
        cur.execute(f"DELETE FROM {schema}.types WHERE id = 3")

    records = consume(stack, f"{unique}.{schema}.types", f"{unique}-decode", expected=10)
    events = [r for r in records if isinstance(r, ChangeEvent)]
    others = [r for r in records if isinstance(r, OtherRecord)]
    by_op: dict[tuple[Op, int], ChangeEvent] = {(e.op, e.key["id"]): e for e in events}
    assert sorted((op.value, i) for op, i in by_op) == [
        ("c", 2), ("c", 3), ("c", 4), ("c", 5), ("d", 3), ("r", 1), ("r", 6), ("r", 7), ("u", 2)
    ]  # fmt: skip
    assert [(o.kind, o.payload) for o in others] == [(RecordKind.TOMBSTONE, {"id": 3})]

    table = TableId(database=stack.cfg.source_database, schema=schema, table="types")
    for (op, row_id), event in by_op.items():
        assert event.table == table
        assert event.key_columns == ("id",)
        assert event.position.lsn is not None and event.position.version.startswith("pg:")
        assert event.position.snapshot is (op is Op.READ)
        assert event.source_ts is not None and event.source_ts.tzinfo is not None
        assert event.columns["c_numeric"].source_type == "NUMERIC"
        if op is Op.READ:
            assert_row(event.after, snapshot_rows[row_id])
        elif op is Op.CREATE:
            assert_row(event.after, streamed[row_id])

    update = by_op[(Op.UPDATE, 2)]
    assert_row(update.after, updated, unavailable=("c_big",))  # unchanged TOAST: never the placeholder
    assert update.after is not None and update.after["c_integer"] == 7 and update.after["c_text"] == "changed"
    delete = by_op[(Op.DELETE, 3)]
    assert delete.after is None and delete.before is not None and delete.before["id"] == 3
    # streamed changes come in log order
    lsns = [
        by_op[k].position.lsn or 0 for k in [(Op.CREATE, 2), (Op.CREATE, 3), (Op.UPDATE, 2), (Op.DELETE, 3)]
    ]
    assert 0 not in lsns and lsns == sorted(lsns)
