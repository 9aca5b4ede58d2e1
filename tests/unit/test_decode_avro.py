"""Avro in the Confluent wire format, through confluent-kafka's in-process ``mock://`` registry.

No Confluent-compatible registry server is installable from the package registries this project
reaches, so these tests use the client's ``mock://`` store with schemas exactly as Confluent's
``AvroData`` writes Debezium's Connect schemas (see ``LITERAL_ENVELOPE``).
"""

from __future__ import annotations

import datetime as dt
import io
import uuid
from decimal import Decimal
from typing import Any

import orjson
import pytest
from fastavro import parse_schema, schemaless_writer
from fastavro.schema import to_parsing_canonical_form

from streamer.bench.decode import avro_schema, mock_registry
from streamer.core.errors import DecodeError
from streamer.core.events import ChangeEvent, Op, TableId
from streamer.decode.decoder import Decoder, SchemaRegistryUnavailableError
from tests.unit.decode_helpers import ID_COLUMN, TOPIC, Records, source, value_payload

COLUMNS: list[dict[str, Any]] = [
    ID_COLUMN,
    {"type": "string", "optional": True, "field": "name"},
    {
        "type": "bytes",
        "optional": True,
        "name": "org.apache.kafka.connect.data.Decimal",
        "version": 1,
        "parameters": {"scale": "2", "connect.decimal.precision": "10"},
        "field": "price",
    },
]

# What Confluent's AvroData (connect.meta.data=true) prints for the value schema of
# dbserver1.public.items with the columns above: records named after the Connect schema names,
# the second use of a record by its short name within its namespace, connect.* properties,
# Avro's decimal logical type, [null, T] unions with null defaults and [T, null] with a default.
_SOURCE_FIELDS: list[dict[str, Any]] = [
    {"name": "version", "type": "string"},
    {"name": "connector", "type": "string"},
    {"name": "name", "type": "string"},
    {"name": "ts_ms", "type": "long"},
    {
        "name": "snapshot",
        "type": [
            {
                "type": "string",
                "connect.version": 1,
                "connect.parameters": {
                    "allowed": "true,first,first_in_data_collection,last_in_data_collection,last,false,incremental"
                },
                "connect.default": "false",
                "connect.name": "io.debezium.data.Enum",
            },
            "null",
        ],
        "default": "false",
    },
    {"name": "db", "type": "string"},
    {"name": "sequence", "type": ["null", "string"], "default": None},
    {"name": "ts_us", "type": ["null", "long"], "default": None},
    {"name": "ts_ns", "type": ["null", "long"], "default": None},
    {"name": "schema", "type": "string"},
    {"name": "table", "type": "string"},
    {"name": "txId", "type": ["null", "long"], "default": None},
    {"name": "lsn", "type": ["null", "long"], "default": None},
    {"name": "xmin", "type": ["null", "long"], "default": None},
]
LITERAL_ENVELOPE: dict[str, Any] = {
    "type": "record",
    "name": "Envelope",
    "namespace": "dbserver1.public.items",
    "fields": [
        {
            "name": "before",
            "type": [
                "null",
                {
                    "type": "record",
                    "name": "Value",
                    "fields": [
                        {"name": "id", "type": {"type": "int", "connect.default": 0}, "default": 0},
                        {"name": "name", "type": ["null", "string"], "default": None},
                        {
                            "name": "price",
                            "type": [
                                "null",
                                {
                                    "type": "bytes",
                                    "scale": 2,
                                    "precision": 10,
                                    "connect.version": 1,
                                    "connect.parameters": {"scale": "2", "connect.decimal.precision": "10"},
                                    "connect.name": "org.apache.kafka.connect.data.Decimal",
                                    "logicalType": "decimal",
                                },
                            ],
                            "default": None,
                        },
                    ],
                    "connect.name": "dbserver1.public.items.Value",
                },
            ],
            "default": None,
        },
        {"name": "after", "type": ["null", "Value"], "default": None},
        {
            "name": "source",
            "type": {
                "type": "record",
                "name": "Source",
                "namespace": "io.debezium.connector.postgresql",
                "fields": _SOURCE_FIELDS,
                "connect.version": 1,
                "connect.name": "io.debezium.connector.postgresql.Source",
            },
        },
        {
            "name": "transaction",
            "type": [
                "null",
                {
                    "type": "record",
                    "name": "block",
                    "namespace": "event",
                    "fields": [
                        {"name": "id", "type": "string"},
                        {"name": "total_order", "type": "long"},
                        {"name": "data_collection_order", "type": "long"},
                    ],
                    "connect.version": 1,
                    "connect.name": "event.block",
                },
            ],
            "default": None,
        },
        {"name": "op", "type": "string"},
        {"name": "ts_ms", "type": ["null", "long"], "default": None},
        {"name": "ts_us", "type": ["null", "long"], "default": None},
        {"name": "ts_ns", "type": ["null", "long"], "default": None},
    ],
    "connect.version": 2,
    "connect.name": "dbserver1.public.items.Envelope",
}
LITERAL_KEY: dict[str, Any] = {
    "type": "record",
    "name": "Key",
    "namespace": "dbserver1.public.items",
    "fields": [{"name": "id", "type": {"type": "int", "connect.default": 0}, "default": 0}],
    "connect.name": "dbserver1.public.items.Key",
}


def wire(registry: Any, subject: str, schema: dict[str, Any], datum: Any) -> bytes:
    from confluent_kafka.schema_registry import Schema

    schema_id = registry.register_schema(subject, Schema(orjson.dumps(schema).decode(), "AVRO"))
    out = io.BytesIO()
    out.write(b"\x00" + schema_id.to_bytes(4, "big"))
    schemaless_writer(out, parse_schema(schema, named_schemas={}), datum)
    return out.getvalue()


def literal_records() -> tuple[Any, bytes, bytes]:
    registry = mock_registry()
    src = source()
    src.update({"xmin": None})
    datum = {
        "before": None,
        "after": {"id": 11, "name": "widget", "price": Decimal("19.99")},
        "source": src,
        "transaction": {"id": "771:97500000000", "total_order": 1, "data_collection_order": 1},
        "op": "c",
        "ts_ms": 1717171717128,
        "ts_us": 1717171717128456,
        "ts_ns": None,
    }
    key = wire(registry, f"{TOPIC}-key", LITERAL_KEY, {"id": 11})
    value = wire(registry, f"{TOPIC}-value", LITERAL_ENVELOPE, datum)
    return registry, key, value


def test_literal_avrodata_schema_decodes() -> None:
    registry, key, value = literal_records()
    event = Decoder(schema_registry=registry).decode(TOPIC, 0, 3, key, value)
    assert isinstance(event, ChangeEvent)
    assert event.op is Op.CREATE
    assert event.table == TableId("inventory", "public", "items")
    assert event.key == {"id": 11} and event.key_columns == ("id",)
    assert event.after == {"id": 11, "name": "widget", "price": Decimal("19.99")}
    assert event.columns["price"].logical == "org.apache.kafka.connect.data.Decimal"
    assert dict(event.columns["price"].params) == {"scale": "2", "connect.decimal.precision": "10"}
    assert event.columns["id"].base == "int32" and not event.columns["id"].optional
    assert event.txid == "771"


def test_encoder_used_by_tests_and_bench_writes_what_avrodata_writes() -> None:
    """The test/bench encoder must produce the same Avro schema as the literal AvroData output."""
    records = Records("avro", COLUMNS)
    made = avro_schema(records.value_schema)
    assert to_parsing_canonical_form(parse_schema(made, named_schemas={})) == to_parsing_canonical_form(
        parse_schema(LITERAL_ENVELOPE, named_schemas={})
    )
    made_price = made["fields"][0]["type"][1]["fields"][2]["type"][1]
    literal_price = LITERAL_ENVELOPE["fields"][0]["type"][1]["fields"][2]["type"][1]
    assert made_price == literal_price
    assert avro_schema(records.key_schema)["fields"] == LITERAL_KEY["fields"]


def test_avro_and_json_give_identical_events() -> None:
    payload = value_payload(
        "u", before={"id": 4, "name": "a", "price": "AMk="}, after={"id": 4, "name": "b", "price": None}
    )
    events = []
    for fmt in ("json", "avro"):
        rec = Records(fmt, COLUMNS)
        events.append(rec.decoder().decode(TOPIC, 0, 9, rec.key({"id": 4}), rec.value(payload)))
    assert events[0] == events[1]


def test_plain_avro_logical_types_without_connect_names() -> None:
    """Schemas not written by Connect: Avro's own logical types map to the same Python values."""
    registry = mock_registry()
    schema = {
        "type": "record",
        "name": "Value",
        "namespace": "other.public.t",
        "fields": [
            {"name": "id", "type": "int"},
            {"name": "at", "type": {"type": "long", "logicalType": "timestamp-micros"}},
            {"name": "day", "type": {"type": "int", "logicalType": "date"}},
            {
                "name": "amount",
                "type": {"type": "bytes", "logicalType": "decimal", "precision": 6, "scale": 3},
            },
            {"name": "ref", "type": {"type": "string", "logicalType": "uuid"}},
            {"name": "__op", "type": "string"},
            {"name": "__lsn", "type": "long"},
        ],
    }
    datum = {"id": 1, "at": 1717171717123456, "day": 19874, "amount": Decimal("-1.250"),
             "ref": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "__op": "c", "__lsn": 5}  # fmt: skip
    value = wire(registry, "other.public.t-value", schema, datum)
    event = Decoder(schema_registry=registry).decode("other.public.t", 0, 1, None, value)
    assert isinstance(event, ChangeEvent)
    assert event.op is Op.CREATE
    assert event.after == {
        "id": 1,
        "at": dt.datetime(2024, 5, 31, 16, 8, 37, 123456),
        "day": dt.date(2024, 5, 31),
        "amount": Decimal("-1.250"),
        "ref": uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
    }
    assert str(event.after["amount"]) == "-1.250"


class CountingRegistry:
    """Wraps the mock registry to count look-ups (the decoder must cache schemas per id)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[int] = []

    def get_schema(self, schema_id: int) -> Any:
        self.calls.append(schema_id)
        return self.inner.get_schema(schema_id)


def test_schemas_are_fetched_once_per_id() -> None:
    registry, key, value = literal_records()
    counting = CountingRegistry(registry)
    decoder = Decoder(schema_registry=counting)
    for offset in range(5):
        decoder.decode(TOPIC, 0, offset, key, value)
    assert sorted(counting.calls) == sorted(
        {int.from_bytes(key[1:5], "big"), int.from_bytes(value[1:5], "big")}
    )


def _coords(info: pytest.ExceptionInfo[DecodeError]) -> tuple[str, int, int]:
    return info.value.topic, info.value.partition, info.value.offset


def test_unknown_schema_id() -> None:
    registry, _key, value = literal_records()
    bad = b"\x00" + (4242).to_bytes(4, "big") + value[5:]
    with pytest.raises(DecodeError, match="unknown schema id 4242") as info:
        Decoder(schema_registry=registry).decode(TOPIC, 5, 123, None, bad)
    assert _coords(info) == (TOPIC, 5, 123)


def test_truncated_avro_body() -> None:
    registry, key, value = literal_records()
    with pytest.raises(DecodeError, match="truncated or corrupt") as info:
        Decoder(schema_registry=registry).decode(TOPIC, 1, 77, key, value[:-9])
    assert _coords(info) == (TOPIC, 1, 77)


def test_avro_body_with_bytes_left_over() -> None:
    registry, key, value = literal_records()
    with pytest.raises(DecodeError, match="left over") as info:
        Decoder(schema_registry=registry).decode(TOPIC, 1, 78, key, value + b"\x02\x04")
    assert _coords(info) == (TOPIC, 1, 78)


def test_avro_header_too_short() -> None:
    with pytest.raises(DecodeError, match="shorter than the 5-byte") as info:
        Decoder(schema_registry=mock_registry()).decode(TOPIC, 0, 1, None, b"\x00\x00\x01")
    assert _coords(info) == (TOPIC, 0, 1)


def test_avro_without_a_registry_client() -> None:
    _registry, key, value = literal_records()
    with pytest.raises(DecodeError, match="no schema registry") as info:
        Decoder().decode(TOPIC, 0, 2, key, value)
    assert _coords(info) == (TOPIC, 0, 2)


def test_registry_down_is_not_a_decode_error() -> None:
    class Down:
        def get_schema(self, schema_id: int) -> Any:
            raise ConnectionError("connection refused")

    _registry, key, value = literal_records()
    with pytest.raises(SchemaRegistryUnavailableError, match="connection refused"):
        Decoder(schema_registry=Down()).decode(TOPIC, 0, 2, key, value)


def test_non_avro_schema_type() -> None:
    from confluent_kafka.schema_registry import Schema

    registry = mock_registry()
    schema_id = registry.register_schema("p-value", Schema('{"type":"object"}', "JSON"))
    value = b"\x00" + schema_id.to_bytes(4, "big") + b"{}"
    with pytest.raises(DecodeError, match="is JSON, not AVRO") as info:
        Decoder(schema_registry=registry).decode("p", 0, 3, None, value)
    assert _coords(info) == ("p", 0, 3)


def test_json_key_with_avro_value() -> None:
    registry, _key, value = literal_records()
    event = Decoder(schema_registry=registry).decode(TOPIC, 0, 3, b'{"id": 11}', value)
    assert isinstance(event, ChangeEvent) and event.key == {"id": 11}
