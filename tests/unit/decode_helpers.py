"""Building Debezium 3.1 records for the decoder's tests: JSON (with and without schemas) and Avro.

Avro records go through :class:`streamer.bench.decode.AvroEncoder`, which writes the Avro schema
Confluent's ``AvroData`` makes of Debezium's Connect schema (checked against a literal schema in
``test_decode_avro.py``) into confluent-kafka's in-process ``mock://`` registry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from streamer.bench.decode import (
    AvroEncoder,
    json_record,
    key_schema,
    mock_registry,
    pg_envelope_schema,
    pg_source,
)
from streamer.core.events import ChangeEvent, Decoded
from streamer.decode.decoder import Decoder

TOPIC = "dbserver1.public.items"
ID_COLUMN: dict[str, Any] = {"type": "int32", "optional": False, "default": 0, "field": "id"}
FORMATS = ("json", "avro")

LSN = 0x16B374D848
TS_US = 1_717_171_717_123_456


def source(**overrides: Any) -> dict[str, Any]:
    base = pg_source(
        db="inventory", schema="public", table="items", lsn=LSN, txid=771, ts_us=TS_US, commit_lsn=LSN - 200
    )
    base.update(overrides)
    return base


def value_payload(
    op: str,
    *,
    before: Mapping[str, Any] | None = None,
    after: Mapping[str, Any] | None = None,
    src: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "before": None if before is None else dict(before),
        "after": None if after is None else dict(after),
        "source": dict(src) if src is not None else source(),
        "transaction": None,
        "op": op,
        "ts_ms": TS_US // 1000 + 5,
        "ts_us": TS_US + 5000,
        "ts_ns": (TS_US + 5000) * 1000,
    }


class Records:
    """Encodes key/value payloads for one table in a given format."""

    def __init__(
        self,
        fmt: str,
        columns: Sequence[Mapping[str, Any]],
        key_columns: Sequence[Mapping[str, Any]] = (ID_COLUMN,),
        topic: str = TOPIC,
    ) -> None:
        self.fmt = fmt
        self.topic = topic
        self.value_schema = pg_envelope_schema(topic, columns)
        self.key_schema = key_schema(topic, key_columns)
        self.registry = mock_registry() if fmt == "avro" else None
        self.encoder = AvroEncoder(self.registry) if self.registry is not None else None

    def encode(self, schema: Mapping[str, Any], payload: Any, subject: str) -> bytes:
        if self.fmt == "avro":
            assert self.encoder is not None
            return self.encoder.encode(subject, schema, payload)
        if self.fmt == "json":
            return json_record(schema, payload)
        if self.fmt == "json-schemaless":
            return json_record(None, payload)
        raise AssertionError(self.fmt)

    def key(self, payload: Mapping[str, Any]) -> bytes:
        return self.encode(self.key_schema, payload, f"{self.topic}-key")

    def value(self, payload: Mapping[str, Any]) -> bytes:
        return self.encode(self.value_schema, payload, f"{self.topic}-value")

    def decoder(self, **options: Any) -> Decoder:
        return Decoder(schema_registry=self.registry, **options)


def decode_column(fmt: str, column: Mapping[str, Any], raw: Any, *, op: str = "c", **options: Any) -> Any:
    """Decode a one-column row (plus ``id``) whose column has the JsonConverter value ``raw``."""
    records = Records(fmt, [ID_COLUMN, column])
    row = {"id": 1, column["field"]: raw}
    before = row if op == "d" else None
    after = None if op == "d" else row
    event = records.decoder(**options).decode(
        TOPIC, 0, 42, records.key({"id": 1}), records.value(value_payload(op, before=before, after=after))
    )
    assert isinstance(event, ChangeEvent)
    values = event.before if op == "d" else event.after
    assert values is not None
    return values[column["field"]]


def decode_one(
    records: Records,
    key: Mapping[str, Any] | None,
    value: Mapping[str, Any] | None,
    offset: int = 7,
    **options: Any,
) -> Decoded:
    return records.decoder(**options).decode(
        records.topic,
        2,
        offset,
        None if key is None else records.key(key),
        None if value is None else records.value(value),
    )
