"""Decode throughput per core: ``python -m streamer.bench.decode [--records N]``.

Generates realistic Debezium 3.1 PostgreSQL change records for a 12-column table (int, varchar,
numeric(12,2), bigint, timestamp, timestamptz, date, boolean, jsonb, uuid, double, text[]) in
three encodings - JSON with schemas, JSON without schemas, and Avro in the Confluent wire
format through confluent-kafka's in-process ``mock://`` schema registry, encoded as Confluent's
``AvroConverter`` (``AvroData``) encodes Debezium's Connect schemas - then decodes them on one
core and prints records/s per format. For JSON with schemas it also times ``orjson.loads`` alone
on the same records; the exit status is 1 when the decoder reaches less than 80% of that rate.

The encoding helpers (:func:`avro_schema`, :func:`avro_datum`, :func:`json_record`,
:func:`avro_record`, :func:`pg_envelope_schema`) are also what the unit tests use to produce Avro
records the way Debezium's converter does.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import io
import random
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson
from fastavro import parse_schema, schemaless_writer

from streamer.bench.report import Figure, run_module
from streamer.decode.decoder import Decoder

TARGET_RATIO = 0.80

# --- Connect schemas as Debezium 3.1's PostgreSQL connector writes them -------------------------

SNAPSHOT_ALLOWED = "true,first,first_in_data_collection,last_in_data_collection,last,false,incremental"


def pg_source_schema() -> dict[str, Any]:
    """``io.debezium.connector.postgresql.Source`` (Debezium 3.1)."""
    return {
        "type": "struct",
        "fields": [
            {"type": "string", "optional": False, "field": "version"},
            {"type": "string", "optional": False, "field": "connector"},
            {"type": "string", "optional": False, "field": "name"},
            {"type": "int64", "optional": False, "field": "ts_ms"},
            {
                "type": "string",
                "optional": True,
                "name": "io.debezium.data.Enum",
                "version": 1,
                "parameters": {"allowed": SNAPSHOT_ALLOWED},
                "default": "false",
                "field": "snapshot",
            },
            {"type": "string", "optional": False, "field": "db"},
            {"type": "string", "optional": True, "field": "sequence"},
            {"type": "int64", "optional": True, "field": "ts_us"},
            {"type": "int64", "optional": True, "field": "ts_ns"},
            {"type": "string", "optional": False, "field": "schema"},
            {"type": "string", "optional": False, "field": "table"},
            {"type": "int64", "optional": True, "field": "txId"},
            {"type": "int64", "optional": True, "field": "lsn"},
            {"type": "int64", "optional": True, "field": "xmin"},
        ],
        "optional": False,
        "name": "io.debezium.connector.postgresql.Source",
        "version": 1,
        "field": "source",
    }


def transaction_block_schema() -> dict[str, Any]:
    return {
        "type": "struct",
        "fields": [
            {"type": "string", "optional": False, "field": "id"},
            {"type": "int64", "optional": False, "field": "total_order"},
            {"type": "int64", "optional": False, "field": "data_collection_order"},
        ],
        "optional": True,
        "name": "event.block",
        "version": 1,
        "field": "transaction",
    }


def pg_envelope_schema(topic: str, columns: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The value schema of a PostgreSQL change event on ``topic`` (``<prefix>.<schema>.<table>``)."""
    row = {"type": "struct", "fields": [dict(c) for c in columns], "optional": True, "name": f"{topic}.Value"}
    return {
        "type": "struct",
        "fields": [
            dict(row, field="before"),
            dict(row, field="after"),
            pg_source_schema(),
            transaction_block_schema(),
            {"type": "string", "optional": False, "field": "op"},
            {"type": "int64", "optional": True, "field": "ts_ms"},
            {"type": "int64", "optional": True, "field": "ts_us"},
            {"type": "int64", "optional": True, "field": "ts_ns"},
        ],
        "optional": False,
        "name": f"{topic}.Envelope",
        "version": 2,
    }


def key_schema(topic: str, columns: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {"type": "struct", "fields": [dict(c) for c in columns], "optional": False, "name": f"{topic}.Key"}


def pg_source(
    *,
    db: str,
    schema: str,
    table: str,
    lsn: int,
    txid: int,
    ts_us: int,
    snapshot: str = "false",
    commit_lsn: int | None = None,
    server: str = "dbserver1",
) -> dict[str, Any]:
    sequence = orjson.dumps([None if commit_lsn is None else str(commit_lsn), str(lsn)]).decode()
    return {
        "version": "3.1.1.Final",
        "connector": "postgresql",
        "name": server,
        "ts_ms": ts_us // 1000,
        "snapshot": snapshot,
        "db": db,
        "sequence": sequence,
        "ts_us": ts_us,
        "ts_ns": ts_us * 1000,
        "schema": schema,
        "table": table,
        "txId": txid,
        "lsn": lsn,
        "xmin": None,
    }


def json_record(schema: Mapping[str, Any] | None, payload: Any) -> bytes:
    """What ``JsonConverter`` writes: ``{"schema":...,"payload":...}``, or the bare payload."""
    if schema is None:
        return orjson.dumps(payload)
    return orjson.dumps({"schema": schema, "payload": payload})


# --- Confluent AvroData, Connect -> Avro ---------------------------------------------------------

_AVRO_PRIMITIVE = {
    "int8": "int",
    "int16": "int",
    "int32": "int",
    "int64": "long",
    "float32": "float",
    "float64": "double",
    "boolean": "boolean",
    "string": "string",
    "bytes": "bytes",
}
_CONNECT_LOGICAL = {
    "org.apache.kafka.connect.data.Date": "date",
    "org.apache.kafka.connect.data.Time": "time-millis",
    "org.apache.kafka.connect.data.Timestamp": "timestamp-millis",
}
_DECIMAL = "org.apache.kafka.connect.data.Decimal"


def avro_schema(connect: Mapping[str, Any], seen: set[str] | None = None) -> Any:
    """The Avro schema Confluent's ``AvroData.fromConnectSchema`` makes of a Connect schema
    (``connect.meta.data=true``, the default): ``connect.*`` properties, Avro logical types for
    Connect's Decimal/Date/Time/Timestamp, ``[null, T]`` unions for optional schemas (``[T, null]``
    when there is a default), named records referenced by name after their first definition."""
    seen = set() if seen is None else seen
    base = _avro_base(connect, seen)
    if connect.get("optional"):
        return [base, "null"] if connect.get("default") is not None else ["null", base]
    return base


def _avro_base(connect: Mapping[str, Any], seen: set[str]) -> Any:
    ctype = connect["type"]
    name = connect.get("name")
    node: dict[str, Any]
    if ctype == "struct":
        full = name or "io.confluent.connect.avro.ConnectDefault"
        if full in seen:
            return full
        seen.add(full)
        namespace, _, short = full.rpartition(".")
        node = {"type": "record", "name": short}
        if namespace:
            node["namespace"] = namespace
        fields = []
        for f in connect["fields"]:
            field: dict[str, Any] = {"name": f["field"], "type": avro_schema(f, seen)}
            if f.get("default") is not None:
                field["default"] = f["default"]
            elif f.get("optional"):
                field["default"] = None
            fields.append(field)
        node["fields"] = fields
    elif ctype == "array":
        node = {"type": "array", "items": avro_schema(connect["items"], seen)}
    elif ctype == "map":
        keys = connect.get("keys", {"type": "string"})
        if keys["type"] == "string" and not keys.get("optional"):
            node = {"type": "map", "values": avro_schema(connect["values"], seen)}
        else:
            entry = {
                "type": "record",
                "name": "MapEntry",
                "namespace": "io.confluent.connect.avro",
                "fields": [
                    {"name": "key", "type": avro_schema(keys, seen)},
                    {"name": "value", "type": avro_schema(connect["values"], seen)},
                ],
            }
            node = {"type": "array", "items": entry}
    else:
        node = {"type": _AVRO_PRIMITIVE[ctype]}
        if name == _DECIMAL:
            params = connect.get("parameters", {})
            node["scale"] = int(params.get("scale", 0))
            node["precision"] = int(params.get("connect.decimal.precision", 64))
    if ctype in ("int8", "int16"):
        node["connect.type"] = ctype
    if connect.get("doc") is not None:
        node["connect.doc"] = connect["doc"]
    if connect.get("version") is not None:
        node["connect.version"] = connect["version"]
    if connect.get("parameters"):
        node["connect.parameters"] = dict(connect["parameters"])
    if connect.get("default") is not None and ctype != "struct":
        node["connect.default"] = connect["default"]
    if name is not None:
        node["connect.name"] = name
    if name == _DECIMAL:
        node["logicalType"] = "decimal"
    elif name in _CONNECT_LOGICAL:
        node["logicalType"] = _CONNECT_LOGICAL[name]
    if len(node) == 1 and ctype in _AVRO_PRIMITIVE:
        return node["type"]  # a bare primitive is written as its name
    return node


def avro_datum(connect: Mapping[str, Any], value: Any) -> Any:
    """The Avro datum (raw: ints, bytes) of a value given in JsonConverter's form."""
    if value is None:
        return None
    ctype = connect["type"]
    if ctype == "struct":
        return {f["field"]: avro_datum(f, value.get(f["field"])) for f in connect["fields"]}
    if ctype == "bytes":
        return base64.b64decode(value) if isinstance(value, str) else value
    if ctype in ("float32", "float64"):
        return float(value)
    if ctype == "array":
        return [avro_datum(connect["items"], v) for v in value]
    if ctype == "map":
        if isinstance(value, dict):
            return {k: avro_datum(connect["values"], v) for k, v in value.items()}
        return [
            {"key": avro_datum(connect["keys"], k), "value": avro_datum(connect["values"], v)}
            for k, v in value
        ]
    return value


def _strip_logical(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip_logical(v) for k, v in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [_strip_logical(v) for v in node]
    return node


class AvroEncoder:
    """Registers Connect schemas (as Avro) in a registry and writes the Confluent wire format."""

    def __init__(self, registry: Any) -> None:
        self.registry = registry
        self._ids: dict[str, tuple[int, Any]] = {}

    def schema_id(self, subject: str, connect: Mapping[str, Any]) -> tuple[int, Any]:
        text = orjson.dumps(avro_schema(connect)).decode()
        found = self._ids.get(text)
        if found is None:
            from confluent_kafka.schema_registry import Schema

            schema_id = self.registry.register_schema(subject, Schema(text, "AVRO"))
            writer = parse_schema(_strip_logical(orjson.loads(text)), named_schemas={})
            found = (schema_id, writer)
            self._ids[text] = found
        return found

    def encode(self, subject: str, connect: Mapping[str, Any], value: Any) -> bytes:
        schema_id, writer = self.schema_id(subject, connect)
        out = io.BytesIO()
        out.write(b"\x00" + schema_id.to_bytes(4, "big"))
        schemaless_writer(out, writer, avro_datum(connect, value))
        return out.getvalue()


def mock_registry() -> Any:
    """confluent-kafka's in-process registry (``mock://``): one fresh, private store per call."""
    with warnings.catch_warnings(record=True):  # authlib's import-time deprecation notice, not ours
        from confluent_kafka.schema_registry import SchemaRegistryClient

        return SchemaRegistryClient.new_client({"url": "mock://"})


def avro_record(encoder: AvroEncoder, subject: str, connect: Mapping[str, Any], value: Any) -> bytes:
    return encoder.encode(subject, connect, value)


# --- the bench table -----------------------------------------------------------------------------

TOPIC = "dbserver1.public.orders"

COLUMNS: list[dict[str, Any]] = [
    {"type": "int32", "optional": False, "default": 0, "field": "id"},
    {"type": "string", "optional": True, "field": "customer"},
    {
        "type": "bytes",
        "optional": True,
        "name": "org.apache.kafka.connect.data.Decimal",
        "version": 1,
        "parameters": {"scale": "2", "connect.decimal.precision": "12"},
        "field": "price",
    },
    {"type": "int64", "optional": True, "field": "quantity"},
    {
        "type": "int64",
        "optional": True,
        "name": "io.debezium.time.MicroTimestamp",
        "version": 1,
        "field": "created_at",
    },
    {
        "type": "string",
        "optional": True,
        "name": "io.debezium.time.ZonedTimestamp",
        "version": 1,
        "field": "updated_at",
    },
    {"type": "int32", "optional": True, "name": "io.debezium.time.Date", "version": 1, "field": "ship_date"},
    {"type": "boolean", "optional": True, "field": "paid"},
    {"type": "string", "optional": True, "name": "io.debezium.data.Json", "version": 1, "field": "attrs"},
    {"type": "string", "optional": True, "name": "io.debezium.data.Uuid", "version": 1, "field": "ref"},
    {"type": "float64", "optional": True, "field": "score"},
    {"type": "array", "items": {"type": "string", "optional": True}, "optional": True, "field": "tags"},
]
KEY_COLUMNS = [COLUMNS[0]]


def _row(rng: random.Random, ident: int) -> dict[str, Any]:
    cents = rng.randrange(1, 10**9)
    created = dt.datetime(2024, 1, 1) + dt.timedelta(microseconds=rng.randrange(0, 10**14))
    return {
        "id": ident,
        "customer": rng.choice(["Alice Martin", "Bob Stone", "Chloé Dupont", "Dmitri Ivanov", "Eve"])
        + f" #{ident}",
        "price": base64.b64encode(cents.to_bytes((cents.bit_length() + 8) // 8, "big", signed=True)).decode(),
        "quantity": rng.randrange(0, 10_000),
        "created_at": (created - dt.datetime(1970, 1, 1)) // dt.timedelta(microseconds=1),
        "updated_at": (created + dt.timedelta(seconds=rng.randrange(0, 10**6)))
        .replace(tzinfo=dt.UTC)
        .isoformat()
        .replace("+00:00", "Z"),
        "ship_date": rng.randrange(19000, 21000),
        "paid": rng.random() < 0.5,
        "attrs": orjson.dumps(
            {"channel": rng.choice(["web", "shop", "phone"]), "items": rng.randrange(1, 9)}
        ).decode(),
        "ref": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "score": rng.random() * 100,
        "tags": rng.sample(["gift", "express", "fragile", "bulk", "eu", "us"], k=rng.randrange(0, 4)),
    }


def generate(n: int, seed: int = 7) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """``n`` (key payload, value payload) pairs: inserts, updates and a few deletes."""
    rng = random.Random(seed)
    out = []
    lsn = 0x16B374D848
    ts_us = 1_717_000_000_000_000
    for i in range(n):
        ident = rng.randrange(1, n // 2 + 2)
        op = "c" if i % 3 == 0 else ("u" if i % 17 else "d")
        lsn += rng.randrange(40, 400)
        ts_us += rng.randrange(10, 5000)
        row = _row(rng, ident)
        value = {
            "before": row if op == "d" else None,
            "after": None if op == "d" else row,
            "source": pg_source(
                db="shop",
                schema="public",
                table="orders",
                lsn=lsn,
                txid=700 + i // 5,
                ts_us=ts_us,
                commit_lsn=lsn - 500,
            ),
            "transaction": None,
            "op": op,
            "ts_ms": ts_us // 1000 + 3,
            "ts_us": ts_us + 3000,
            "ts_ns": (ts_us + 3000) * 1000,
        }
        out.append(({"id": ident}, value))
    return out


Record = tuple[bytes, bytes]


def build_records(n: int) -> dict[str, tuple[list[Record], Any]]:
    """Per format: the encoded (key, value) records and the registry needed to decode them."""
    payloads = generate(n)
    value_schema = pg_envelope_schema(TOPIC, COLUMNS)
    kschema = key_schema(TOPIC, KEY_COLUMNS)
    registry = mock_registry()
    encoder = AvroEncoder(registry)
    return {
        "json+schemas": (
            [(json_record(kschema, k), json_record(value_schema, v)) for k, v in payloads],
            None,
        ),
        "json": ([(json_record(None, k), json_record(None, v)) for k, v in payloads], None),
        "avro": (
            [
                (
                    encoder.encode(f"{TOPIC}-key", kschema, k),
                    encoder.encode(f"{TOPIC}-value", value_schema, v),
                )
                for k, v in payloads
            ],
            registry,
        ),
    }


def _decode_loop(decoder: Decoder, records: list[Record]) -> Callable[[], None]:
    decode = decoder.decode

    def run() -> None:
        for offset, (key, value) in enumerate(records):
            decode(TOPIC, 0, offset, key, value)

    return run


def _loads_loop(records: list[Record]) -> Callable[[], None]:
    loads = orjson.loads

    def run() -> None:
        for _key, value in records:
            loads(value)

    return run


def _seconds(run: Callable[[], None]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def bench(n: int, repeats: int) -> tuple[list[tuple[str, int, float]], float]:
    """(rows of (format, records, best seconds), best ``orjson.loads`` seconds on the JSON-with-schemas
    records). Runs are interleaved - every format, then the baseline, ``repeats`` times - so a
    passing load on the machine weighs on all of them alike."""
    formats = build_records(n)
    runs = {}
    for name, (records, registry) in formats.items():
        runs[name] = _decode_loop(Decoder(schema_registry=registry), records)
        runs[name]()  # warm: plans built, schemas fetched
    baseline_run = _loads_loop(formats["json+schemas"][0])
    best = dict.fromkeys(runs, float("inf"))
    baseline = float("inf")
    for _ in range(repeats):
        for name, run in runs.items():
            best[name] = min(best[name], _seconds(run))
        baseline = min(baseline, _seconds(baseline_run))
    return [(name, len(formats[name][0]), best[name]) for name in runs], baseline


def figures(argv: Sequence[str] | None = None) -> list[Figure]:
    parser = argparse.ArgumentParser(
        prog="python -m streamer.bench.decode", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--records", type=int, default=20_000, help="records per format (default 20000)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per format, best kept (default 5)")
    args = parser.parse_args(argv)
    rows, baseline = bench(args.records, args.repeats)
    print(f"{'format':<30}{'records':>9}{'seconds':>10}{'records/s':>12}")
    rate_json = 0.0
    for name, count, seconds in rows:
        rate = count / seconds
        if name == "json+schemas":
            rate_json = rate
        print(f"{name:<30}{count:>9}{seconds:>10.3f}{rate:>12,.0f}")
    count = rows[0][1]
    base_rate = count / baseline
    print(f"{'orjson.loads (json+schemas)':<30}{count:>9}{baseline:>10.3f}{base_rate:>12,.0f}")
    return [
        Figure("decode", "JSON+schemas decode", rate_json, "rec/s", "orjson.loads", base_rate, TARGET_RATIO)
    ]


def main(argv: Sequence[str] | None = None) -> int:
    return run_module(figures, argv)


if __name__ == "__main__":
    sys.exit(main())
