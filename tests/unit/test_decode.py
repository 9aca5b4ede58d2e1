"""The decoder on whole records: envelopes, flattened records, other record kinds, positions, errors.

Literal records below are shaped exactly like Debezium 3.1's output through Kafka's JsonConverter
(field names, schema names and parameters, key order); value types have their own file
(``test_decode_types.py``), Avro its own (``test_decode_avro.py``).
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import orjson
import pytest

from streamer.core.checkpoint import KafkaOrigin
from streamer.core.errors import DecodeError
from streamer.core.events import (
    UNAVAILABLE,
    ChangeEvent,
    ColumnType,
    Op,
    OtherRecord,
    RecordKind,
    TableId,
    is_read_version,
    mysql_version,
    pg_version,
    read_version,
)
from streamer.decode.decoder import Decoder, MissingPositionError
from tests.unit.decode_helpers import FORMATS, ID_COLUMN, TOPIC, Records, decode_one, source, value_payload

# --- a real PostgreSQL insert, as the JSON converter writes it -----------------------------------

PG_KEY = (
    b'{"schema":{"type":"struct","fields":[{"type":"int32","optional":false,"default":0,"field":"id"}],'
    b'"optional":false,"name":"dbserver1.inventory.customers.Key"},"payload":{"id":1004}}'
)

_ROW_FIELDS = (
    '[{"type":"int32","optional":false,"default":0,"field":"id"},'
    '{"type":"string","optional":false,"field":"first_name"},'
    '{"type":"string","optional":false,"field":"last_name"},'
    '{"type":"string","optional":false,"field":"email"}]'
)
PG_VALUE_SCHEMA = (
    '{"type":"struct","fields":['
    '{"type":"struct","fields":' + _ROW_FIELDS + ',"optional":true,'
    '"name":"dbserver1.inventory.customers.Value","field":"before"},'
    '{"type":"struct","fields":' + _ROW_FIELDS + ',"optional":true,'
    '"name":"dbserver1.inventory.customers.Value","field":"after"},'
    '{"type":"struct","fields":['
    '{"type":"string","optional":false,"field":"version"},'
    '{"type":"string","optional":false,"field":"connector"},'
    '{"type":"string","optional":false,"field":"name"},'
    '{"type":"int64","optional":false,"field":"ts_ms"},'
    '{"type":"string","optional":true,"name":"io.debezium.data.Enum","version":1,"parameters":'
    '{"allowed":"true,first,first_in_data_collection,last_in_data_collection,last,false,incremental"},'
    '"default":"false","field":"snapshot"},'
    '{"type":"string","optional":false,"field":"db"},'
    '{"type":"string","optional":true,"field":"sequence"},'
    '{"type":"int64","optional":true,"field":"ts_us"},'
    '{"type":"int64","optional":true,"field":"ts_ns"},'
    '{"type":"string","optional":false,"field":"schema"},'
    '{"type":"string","optional":false,"field":"table"},'
    '{"type":"int64","optional":true,"field":"txId"},'
    '{"type":"int64","optional":true,"field":"lsn"},'
    '{"type":"int64","optional":true,"field":"xmin"}],'
    '"optional":false,"name":"io.debezium.connector.postgresql.Source","version":1,"field":"source"},'
    '{"type":"struct","fields":['
    '{"type":"string","optional":false,"field":"id"},'
    '{"type":"int64","optional":false,"field":"total_order"},'
    '{"type":"int64","optional":false,"field":"data_collection_order"}],'
    '"optional":true,"name":"event.block","version":1,"field":"transaction"},'
    '{"type":"string","optional":false,"field":"op"},'
    '{"type":"int64","optional":true,"field":"ts_ms"},'
    '{"type":"int64","optional":true,"field":"ts_us"},'
    '{"type":"int64","optional":true,"field":"ts_ns"}],'
    '"optional":false,"name":"dbserver1.inventory.customers.Envelope","version":2}'
)
PG_INSERT_PAYLOAD = (
    '{"before":null,"after":{"id":1004,"first_name":"Anne","last_name":"Kretchmar",'
    '"email":"annek@noanswer.org"},"source":{"version":"3.1.1.Final","connector":"postgresql",'
    '"name":"dbserver1","ts_ms":1559033904863,"snapshot":"false","db":"postgres",'
    '"sequence":"[\\"24023119\\",\\"24023128\\"]","ts_us":1559033904863123,'
    '"ts_ns":1559033904863123000,"schema":"inventory","table":"customers","txId":555,'
    '"lsn":24023128,"xmin":null},"transaction":null,"op":"c","ts_ms":1559033904961,'
    '"ts_us":1559033904961654,"ts_ns":1559033904961654000}'
)
PG_INSERT = ('{"schema":' + PG_VALUE_SCHEMA + ',"payload":' + PG_INSERT_PAYLOAD + "}").encode()
CUSTOMERS = "dbserver1.inventory.customers"


def test_real_postgres_insert_with_schemas() -> None:
    event = Decoder().decode(CUSTOMERS, 1, 4711, PG_KEY, PG_INSERT)
    assert isinstance(event, ChangeEvent)
    assert event.op is Op.CREATE
    assert event.table == TableId(database="postgres", schema="inventory", table="customers")
    assert event.key == {"id": 1004}
    assert event.key_columns == ("id",)
    assert event.before is None
    assert event.after == {
        "id": 1004,
        "first_name": "Anne",
        "last_name": "Kretchmar",
        "email": "annek@noanswer.org",
    }
    assert list(event.columns) == ["id", "first_name", "last_name", "email"]
    assert event.columns["id"] == ColumnType(base="int32", optional=False)
    assert event.columns["email"].base == "string"
    assert event.position.version == pg_version(24023128)
    assert event.position.lsn == 24023128
    assert event.position.commit_lsn == 24023119
    assert event.position.snapshot is False
    assert event.txid == "555"
    assert event.source_ts == dt.datetime(2019, 5, 28, 8, 58, 24, 863123, tzinfo=dt.UTC)
    assert event.event_ts == dt.datetime(2019, 5, 28, 8, 58, 24, 961654, tzinfo=dt.UTC)
    assert event.origin == KafkaOrigin(CUSTOMERS, 1, 4711)


def test_same_record_twice_and_after_other_schemas_decodes_the_same() -> None:
    """The schema-prefix cache must give the same result as a cold decoder, whatever came between."""
    decoder = Decoder()
    first = decoder.decode(CUSTOMERS, 0, 1, PG_KEY, PG_INSERT)
    other = Records("json", [ID_COLUMN, {"type": "string", "optional": True, "field": "name"}])
    for i in range(12):  # more schemas than the recent-schema list holds
        topic = f"dbserver1.public.t{i}"
        rec = Records("json", [ID_COLUMN, {"type": "int64", "optional": True, "field": f"c{i}"}], topic=topic)
        decoder.decode(
            topic, 0, i, rec.key({"id": i}), rec.value(value_payload("c", after={"id": i, f"c{i}": i}))
        )
    decoder.decode(
        TOPIC, 0, 2, other.key({"id": 1}), other.value(value_payload("c", after={"id": 1, "name": "x"}))
    )
    again = decoder.decode(CUSTOMERS, 0, 1, PG_KEY, PG_INSERT)
    assert again == first
    assert again == Decoder().decode(CUSTOMERS, 0, 1, PG_KEY, PG_INSERT)


def test_payload_that_repeats_the_schema_separator_is_parsed_right() -> None:
    """A column literally named "payload" puts ',"payload":' inside the payload: the split must not care."""
    rec = Records("json", [ID_COLUMN, {"type": "string", "optional": True, "field": "payload"}])
    decoder = rec.decoder()
    for i in range(3):
        value = rec.value(value_payload("c", after={"id": i, "payload": f',"payload":{i}'}))
        event = decoder.decode(TOPIC, 0, i, rec.key({"id": i}), value)
        assert isinstance(event, ChangeEvent)
        assert event.after == {"id": i, "payload": f',"payload":{i}'}


def test_pretty_printed_json_with_schemas_decodes() -> None:
    doc = orjson.loads(PG_INSERT)
    pretty = orjson.dumps(doc, option=orjson.OPT_INDENT_2)
    decoder = Decoder()
    for _ in range(2):
        event = decoder.decode(CUSTOMERS, 0, 3, PG_KEY, pretty)
        assert isinstance(event, ChangeEvent)
        assert event.after is not None and event.after["last_name"] == "Kretchmar"


# --- operations ----------------------------------------------------------------------------------

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


@pytest.mark.parametrize("fmt", [*FORMATS, "json-schemaless"])
def test_update_with_before(fmt: str) -> None:
    rec = Records(fmt, COLUMNS)
    before = {"id": 7, "name": "old", "price": "AMk="}  # 2.01
    after = {"id": 7, "name": "new", "price": "AJY="}  # 1.50
    event = decode_one(rec, {"id": 7}, value_payload("u", before=before, after=after))
    assert isinstance(event, ChangeEvent)
    assert event.op is Op.UPDATE
    assert event.key == {"id": 7}
    if fmt == "json-schemaless":  # no types: the Decimal stays base64 text
        assert event.before == before and event.after == after
        assert event.columns["price"].base == "string"
    else:
        assert event.before == {"id": 7, "name": "old", "price": Decimal("2.01")}
        assert event.after == {"id": 7, "name": "new", "price": Decimal("1.50")}
        assert event.columns["price"].logical == "org.apache.kafka.connect.data.Decimal"
        assert event.columns["price"].params["scale"] == "2"


@pytest.mark.parametrize("fmt", [*FORMATS, "json-schemaless"])
def test_delete_and_snapshot_read(fmt: str) -> None:
    rec = Records(fmt, COLUMNS)
    row = {"id": 9, "name": "gone", "price": None}
    deleted = decode_one(rec, {"id": 9}, value_payload("d", before=row))
    assert isinstance(deleted, ChangeEvent)
    assert deleted.op is Op.DELETE and deleted.after is None and deleted.before == row
    snap = value_payload("r", after=row, src=source(snapshot="first"))
    read = decode_one(rec, {"id": 9}, snap)
    assert isinstance(read, ChangeEvent)
    assert read.op is Op.READ and read.before is None and read.after == row
    assert read.position.snapshot is True
    assert deleted.position.snapshot is False


@pytest.mark.parametrize("fmt", [*FORMATS, "json-schemaless"])
def test_truncate_has_no_key_and_no_rows(fmt: str) -> None:
    rec = Records(fmt, COLUMNS)
    event = decode_one(rec, None, value_payload("t"))
    assert isinstance(event, ChangeEvent)
    assert event.op is Op.TRUNCATE
    assert event.key == {} and event.key_columns == ()
    assert event.before is None and event.after is None
    assert event.table == TableId("inventory", "public", "items")


@pytest.mark.parametrize("fmt", [*FORMATS, "json-schemaless"])
@pytest.mark.parametrize(
    ("op", "snapshot"), [("c", "false"), ("u", "false"), ("d", "false"), ("r", "incremental")]
)
def test_envelope_without_a_log_position_is_refused(fmt: str, op: str, snapshot: str) -> None:
    """Without lsn (or file/pos) the version would be "" and the guard would drop later changes."""
    rec = Records(fmt, COLUMNS)
    src = source(snapshot=snapshot, lsn=None, txId=None, sequence=None)
    row = {"id": 1, "name": None, "price": None}
    payload = value_payload(op, before=row if op == "d" else None, after=None if op == "d" else row, src=src)
    with pytest.raises(MissingPositionError, match="no log position") as info:
        decode_one(rec, {"id": 1}, payload, offset=31)
    assert isinstance(info.value, DecodeError)
    assert (info.value.topic, info.value.partition, info.value.offset) == (TOPIC, 2, 31)
    assert "lsn" in str(info.value) and "file" in str(info.value)


def test_snapshot_rows_carry_their_lsn_with_the_read_mark() -> None:
    rec = Records("json", COLUMNS)
    src = source(snapshot="first")
    event = decode_one(
        rec, {"id": 1}, value_payload("r", after={"id": 1, "name": None, "price": None}, src=src)
    )
    assert isinstance(event, ChangeEvent)
    assert event.position.snapshot and event.position.version == read_version(pg_version(src["lsn"]))
    assert is_read_version(event.position.version)
    # a streamed change at the same position carries no mark
    streamed = decode_one(
        rec, {"id": 1}, value_payload("u", after={"id": 1, "name": None, "price": None}, src=source())
    )
    assert isinstance(streamed, ChangeEvent) and not is_read_version(streamed.position.version)


def test_transaction_block_gives_txid_when_source_has_none() -> None:
    rec = Records("json", COLUMNS)
    payload = value_payload("c", after={"id": 1, "name": "a", "price": None}, src=source(txId=None))
    payload["transaction"] = {"id": "571:53737808", "total_order": 1, "data_collection_order": 1}
    event = decode_one(rec, {"id": 1}, payload)
    assert isinstance(event, ChangeEvent)
    assert event.txid == "571:53737808"


def test_unknown_operation_is_an_error() -> None:
    rec = Records("json", COLUMNS)
    with pytest.raises(DecodeError, match="unknown operation 'x'") as info:
        decode_one(rec, {"id": 1}, value_payload("x", after={"id": 1, "name": "a", "price": None}), offset=99)
    assert (info.value.topic, info.value.partition, info.value.offset) == (TOPIC, 2, 99)


# --- MySQL ---------------------------------------------------------------------------------------

MYSQL_SOURCE_SCHEMA = {
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
            "parameters": {
                "allowed": "true,first,first_in_data_collection,last_in_data_collection,last,false,incremental"
            },
            "default": "false",
            "field": "snapshot",
        },
        {"type": "string", "optional": False, "field": "db"},
        {"type": "string", "optional": True, "field": "sequence"},
        {"type": "int64", "optional": True, "field": "ts_us"},
        {"type": "int64", "optional": True, "field": "ts_ns"},
        {"type": "string", "optional": True, "field": "table"},
        {"type": "int64", "optional": False, "field": "server_id"},
        {"type": "string", "optional": True, "field": "gtid"},
        {"type": "string", "optional": False, "field": "file"},
        {"type": "int64", "optional": False, "field": "pos"},
        {"type": "int32", "optional": False, "field": "row"},
        {"type": "int64", "optional": True, "field": "thread"},
        {"type": "string", "optional": True, "field": "query"},
    ],
    "optional": False,
    "name": "io.debezium.connector.mysql.Source",
    "version": 1,
    "field": "source",
}


@pytest.mark.parametrize("fmt", FORMATS)
def test_mysql_binlog_position(fmt: str) -> None:
    rec = Records(fmt, COLUMNS, topic="mysqlserver1.inventory.items")
    rec.value_schema["fields"][2] = MYSQL_SOURCE_SCHEMA
    src = {
        "version": "3.1.1.Final",
        "connector": "mysql",
        "name": "mysqlserver1",
        "ts_ms": 1465491411000,
        "snapshot": "false",
        "db": "inventory",
        "sequence": None,
        "ts_us": 1465491411000000,
        "ts_ns": 1465491411000000000,
        "table": "items",
        "server_id": 223344,
        "gtid": "3E11FA47-71CA-11E1-9E33-C80AA9429562:23",
        "file": "mysql-bin.000003",
        "pos": 484,
        "row": 2,
        "thread": 7,
        "query": None,
    }
    event = decode_one(
        rec, {"id": 3}, value_payload("c", after={"id": 3, "name": "m", "price": "AA=="}, src=src)
    )
    assert isinstance(event, ChangeEvent)
    assert event.table == TableId(database="inventory", schema=None, table="items")
    assert event.table.qualified == "inventory.items"
    assert event.position.version == mysql_version(3, 484, 2)
    assert event.position.binlog_file == "mysql-bin.000003"
    assert (event.position.binlog_pos, event.position.row) == (484, 2)
    assert event.position.gtid == "3E11FA47-71CA-11E1-9E33-C80AA9429562:23"
    assert event.txid == "3E11FA47-71CA-11E1-9E33-C80AA9429562:23"
    assert event.source_ts == dt.datetime(2016, 6, 9, 16, 56, 51, tzinfo=dt.UTC)
    assert event.after == {"id": 3, "name": "m", "price": Decimal("0.00")}


def test_mysql_versions_order_like_binlog_coordinates() -> None:
    coords = [(3, 484, 0), (3, 484, 1), (3, 1200, 0), (4, 4, 0), (10, 4, 0)]
    versions = [mysql_version(*c) for c in coords]
    assert versions == sorted(versions)


# --- ExtractNewRecordState -----------------------------------------------------------------------


def flattened_schema(topic: str, extra: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "struct", "fields": [*COLUMNS, *extra], "optional": False, "name": f"{topic}.Value"}


META = [
    {"type": "string", "optional": True, "field": "__op"},
    {"type": "string", "optional": True, "field": "__table"},
    {"type": "int64", "optional": True, "field": "__lsn"},
    {"type": "int64", "optional": True, "field": "__source_ts_ms"},
    {"type": "string", "optional": True, "field": "__db"},
    {"type": "string", "optional": True, "field": "__schema"},
    {"type": "string", "optional": True, "field": "__deleted"},
]


@pytest.mark.parametrize("fmt", [*FORMATS, "json-schemaless"])
def test_flattened_with_metadata(fmt: str) -> None:
    rec = Records(fmt, COLUMNS)
    schema = flattened_schema(TOPIC, META)
    row = {"id": 5, "name": "flat", "price": "AJY="}
    meta = {"__op": "u", "__table": "items", "__lsn": 33816872, "__source_ts_ms": 1717171717123,
            "__db": "inventory", "__schema": "public", "__deleted": "false"}  # fmt: skip
    key = rec.encode(rec.key_schema, {"id": 5}, f"{TOPIC}-key")
    value = rec.encode(schema, {**row, **meta}, f"{TOPIC}-value")
    event = rec.decoder().decode(TOPIC, 0, 12, key, value)
    assert isinstance(event, ChangeEvent)
    assert event.op is Op.UPDATE
    assert event.table == TableId("inventory", "public", "items")
    assert event.key == {"id": 5}
    assert event.before is None
    expected_price = "AJY=" if fmt == "json-schemaless" else Decimal("1.50")
    assert event.after == {"id": 5, "name": "flat", "price": expected_price}
    assert set(event.columns) == {"id", "name", "price"}  # metadata is not a column
    assert event.position.version == pg_version(33816872) and event.position.lsn == 33816872
    assert event.source_ts == dt.datetime(2024, 5, 31, 16, 8, 37, 123000, tzinfo=dt.UTC)

    deleted = rec.encode(schema, {**row, **meta, "__op": "d", "__deleted": "true"}, f"{TOPIC}-value")
    gone = rec.decoder().decode(TOPIC, 0, 13, key, deleted)
    assert isinstance(gone, ChangeEvent)
    assert gone.op is Op.DELETE and gone.after is None
    assert gone.before == {"id": 5, "name": "flat", "price": expected_price}


@pytest.mark.parametrize("fmt", FORMATS)
def test_flattened_without_op_is_an_upsert_and_table_comes_from_topic(fmt: str) -> None:
    rec = Records(fmt, COLUMNS)
    schema = flattened_schema(TOPIC, [{"type": "int64", "optional": True, "field": "__lsn"}])
    value = rec.encode(schema, {"id": 6, "name": "x", "price": None, "__lsn": 4711}, f"{TOPIC}-value")
    event = rec.decoder().decode(TOPIC, 1, 2, rec.key({"id": 6}), value)
    assert isinstance(event, ChangeEvent)
    assert event.op is Op.UPDATE
    assert event.after == {"id": 6, "name": "x", "price": None} and event.before is None
    assert event.table == TableId(None, "public", "items")
    assert event.position.version == pg_version(4711)


@pytest.mark.parametrize("fmt", [*FORMATS, "json-schemaless"])
@pytest.mark.parametrize("meta", [["__table"], ["__op"], ["__op", "__deleted", "__table"]])
def test_flattened_without_lsn_is_refused_naming_the_setting(fmt: str, meta: list[str]) -> None:
    """``ExtractNewRecordState`` without ``add.fields=lsn``: no position, so refused, never version ""."""
    rec = Records(fmt, COLUMNS)
    fields = {"__op": "u", "__deleted": "true", "__table": "items"}
    schema = flattened_schema(TOPIC, [{"type": "string", "optional": True, "field": f} for f in meta])
    payload = {"id": 6, "name": "x", "price": None, **{f: fields[f] for f in meta}}
    value = rec.encode(schema, payload, f"{TOPIC}-value")
    with pytest.raises(MissingPositionError) as info:
        rec.decoder().decode(TOPIC, 1, 2, rec.key({"id": 6}), value)
    assert (info.value.topic, info.value.partition, info.value.offset) == (TOPIC, 1, 2)
    message = str(info.value)
    assert "add.fields" in message and "lsn" in message  # the transform setting that adds __lsn
    assert "file,pos,row" in message  # and the MySQL/MariaDB equivalent


def test_flattened_mysql_record_with_binlog_coordinates_has_a_version() -> None:
    rec = Records("json-schemaless", COLUMNS)
    payload = {"id": 1, "name": "m", "price": None, "__file": "mysql-bin.000003", "__pos": 154, "__row": 2,
               "__db": "inventory", "__table": "items", "__op": "c"}  # fmt: skip
    event = rec.decoder().decode("my.inventory.items", 0, 1, rec.key({"id": 1}), rec.encode({}, payload, ""))
    assert isinstance(event, ChangeEvent)
    assert event.position.version == mysql_version(3, 154, 2)


def test_flattened_deleted_as_boolean_and_op_from_headers() -> None:
    rec = Records("json-schemaless", COLUMNS)
    value = rec.encode({}, {"id": 1, "name": "h", "price": None, "__deleted": True, "__lsn": 99}, "")
    event = rec.decoder().decode(TOPIC, 0, 1, rec.key({"id": 1}), value)
    assert isinstance(event, ChangeEvent) and event.op is Op.DELETE
    value = rec.encode({}, {"id": 1, "name": "h", "price": None, "__table": "items"}, "")
    headers = [("__op", b"c"), ("__lsn", b"4242"), ("other", b"x")]
    event = rec.decoder().decode(TOPIC, 0, 1, rec.key({"id": 1}), value, headers)
    assert isinstance(event, ChangeEvent)
    assert event.op is Op.CREATE and event.position.lsn == 4242
    # confluent-kafka may also hand headers over as a dict, with str values
    event = rec.decoder().decode(TOPIC, 0, 1, rec.key({"id": 1}), value, {"__op": "r", "__source_lsn": "77"})
    assert isinstance(event, ChangeEvent)
    assert event.op is Op.READ and event.position.lsn == 77


def test_schemaless_object_without_envelope_or_metadata_is_an_error() -> None:
    with pytest.raises(DecodeError, match="not a Debezium envelope") as info:
        Decoder().decode("some.topic", 3, 17, None, b'{"id": 1, "name": "x"}')
    assert (info.value.topic, info.value.partition, info.value.offset) == ("some.topic", 3, 17)


def test_struct_that_is_no_debezium_record_is_an_error() -> None:
    schema = {
        "type": "struct",
        "fields": [{"type": "int32", "optional": False, "field": "x"}],
        "optional": False,
        "name": "com.acme.Thing",
    }
    with pytest.raises(DecodeError, match="not a Debezium envelope") as info:
        Decoder().decode("acme", 0, 5, None, orjson.dumps({"schema": schema, "payload": {"x": 1}}))
    assert (info.value.topic, info.value.partition, info.value.offset) == ("acme", 0, 5)


# --- other record kinds --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [*FORMATS, "json-schemaless"])
def test_tombstone_carries_the_key(fmt: str) -> None:
    rec = Records(fmt, COLUMNS)
    result = decode_one(rec, {"id": 77}, None)
    assert result == OtherRecord(RecordKind.TOMBSTONE, KafkaOrigin(TOPIC, 2, 7), {"id": 77})
    assert rec.decoder().decode(TOPIC, 0, 1, None, None) == OtherRecord(
        RecordKind.TOMBSTONE, KafkaOrigin(TOPIC, 0, 1)
    )


def test_json_null_envelope_is_a_tombstone() -> None:
    result = Decoder().decode(TOPIC, 0, 1, None, b'{"schema":null,"payload":null}')
    assert isinstance(result, OtherRecord) and result.kind is RecordKind.TOMBSTONE


HEARTBEAT_SCHEMA = {
    "type": "struct",
    "fields": [{"type": "int64", "optional": False, "field": "ts_ms"}],
    "optional": False,
    "name": "io.debezium.connector.common.Heartbeat",
    "version": 1,
}
HEARTBEAT_KEY_SCHEMA = {
    "type": "struct",
    "fields": [{"type": "string", "optional": False, "field": "serverName"}],
    "optional": False,
    "name": "io.debezium.connector.common.ServerNameKey",
    "version": 1,
}


@pytest.mark.parametrize("fmt", [*FORMATS, "json-schemaless"])
@pytest.mark.parametrize("topic", ["__debezium-heartbeat.dbserver1", "heartbeats.custom"])
def test_heartbeat(fmt: str, topic: str) -> None:
    rec = Records(fmt, COLUMNS, topic=topic)
    key = rec.encode(HEARTBEAT_KEY_SCHEMA, {"serverName": "dbserver1"}, f"{topic}-key")
    value = rec.encode(HEARTBEAT_SCHEMA, {"ts_ms": 1717171717123}, f"{topic}-value")
    result = rec.decoder().decode(topic, 0, 3, key, value)
    assert result == OtherRecord(RecordKind.HEARTBEAT, KafkaOrigin(topic, 0, 3), {"ts_ms": 1717171717123})


TRANSACTION_SCHEMA = {
    "type": "struct",
    "fields": [
        {"type": "string", "optional": False, "field": "status"},
        {"type": "string", "optional": False, "field": "id"},
        {"type": "int64", "optional": True, "field": "event_count"},
        {
            "type": "array",
            "items": {
                "type": "struct",
                "fields": [
                    {"type": "string", "optional": False, "field": "data_collection"},
                    {"type": "int64", "optional": False, "field": "event_count"},
                ],
                "optional": True,
                "name": "event.collection",
                "version": 1,
            },
            "optional": True,
            "field": "data_collections",
        },
        {"type": "int64", "optional": False, "field": "ts_ms"},
    ],
    "optional": False,
    "name": "io.debezium.connector.common.TransactionMetadataValue",
    "version": 1,
}


@pytest.mark.parametrize("fmt", [*FORMATS, "json-schemaless"])
def test_transaction_metadata(fmt: str) -> None:
    topic = "dbserver1.transaction"
    rec = Records(fmt, COLUMNS, topic=topic)
    end = {
        "status": "END",
        "id": "571:53737808",
        "event_count": 2,
        "data_collections": [{"data_collection": "public.items", "event_count": 2}],
        "ts_ms": 1486500577691,
    }
    result = rec.decoder().decode(topic, 0, 8, None, rec.encode(TRANSACTION_SCHEMA, end, f"{topic}-value"))
    assert result == OtherRecord(RecordKind.TRANSACTION, KafkaOrigin(topic, 0, 8), end)


SCHEMA_CHANGE_SCHEMA = {
    "type": "struct",
    "fields": [
        MYSQL_SOURCE_SCHEMA,
        {"type": "int64", "optional": False, "field": "ts_ms"},
        {"type": "string", "optional": True, "field": "databaseName"},
        {"type": "string", "optional": True, "field": "schemaName"},
        {"type": "string", "optional": True, "field": "ddl"},
        {
            "type": "array",
            "items": {
                "type": "struct",
                "fields": [
                    {"type": "string", "optional": False, "field": "type"},
                    {"type": "string", "optional": False, "field": "id"},
                    {
                        "type": "struct",
                        "fields": [
                            {"type": "string", "optional": True, "field": "defaultCharsetName"},
                            {
                                "type": "array",
                                "items": {"type": "string", "optional": False},
                                "optional": True,
                                "field": "primaryKeyColumnNames",
                            },
                            {"type": "string", "optional": True, "field": "comment"},
                        ],
                        "optional": True,
                        "name": "io.debezium.connector.schema.Table",
                        "version": 1,
                        "field": "table",
                    },
                ],
                "optional": False,
                "name": "io.debezium.connector.schema.Change",
                "version": 1,
            },
            "optional": False,
            "field": "tableChanges",
        },
    ],
    "optional": False,
    "name": "io.debezium.connector.mysql.SchemaChangeValue",
    "version": 1,
}


@pytest.mark.parametrize("fmt", [*FORMATS, "json-schemaless"])
def test_schema_change(fmt: str) -> None:
    topic = "mysqlserver1"
    rec = Records(fmt, COLUMNS, topic=topic)
    src = {
        "version": "3.1.1.Final", "connector": "mysql", "name": "mysqlserver1", "ts_ms": 1, "snapshot": "false",
        "db": "inventory", "sequence": None, "ts_us": 1000, "ts_ns": 1000000, "table": "items", "server_id": 1,
        "gtid": None, "file": "mysql-bin.000003", "pos": 154, "row": 0, "thread": None, "query": None,
    }  # fmt: skip
    payload = {
        "source": src,
        "ts_ms": 1486500577691,
        "databaseName": "inventory",
        "schemaName": None,
        "ddl": "ALTER TABLE items ADD COLUMN note VARCHAR(20)",
        "tableChanges": [
            {
                "type": "ALTER",
                "id": '"inventory"."items"',
                "table": {"defaultCharsetName": "utf8mb4", "primaryKeyColumnNames": ["id"], "comment": None},
            }
        ],
    }
    result = rec.decoder().decode(
        topic, 0, 4, None, rec.encode(SCHEMA_CHANGE_SCHEMA, payload, f"{topic}-value")
    )
    assert isinstance(result, OtherRecord)
    assert result.kind is RecordKind.SCHEMA_CHANGE
    assert result.payload is not None and result.payload["ddl"] == payload["ddl"]


def test_logical_decoding_message() -> None:
    payload = {
        "op": "m",
        "ts_ms": 1559033904961,
        "source": source(table="", schema=""),
        "message": {"prefix": "audit", "content": "aGVsbG8="},
    }
    result = Decoder().decode("dbserver1.message", 0, 1, None, orjson.dumps(payload))
    assert isinstance(result, OtherRecord) and result.kind is RecordKind.MESSAGE
    assert result.payload is not None and result.payload["message"]["prefix"] == "audit"


# --- TOAST ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [*FORMATS, "json-schemaless"])
def test_unchanged_toast_columns_are_unavailable(fmt: str) -> None:
    columns = [
        ID_COLUMN,
        {"type": "string", "optional": True, "field": "body"},
        {"type": "bytes", "optional": True, "field": "blob"},
        {"type": "array", "items": {"type": "string", "optional": True}, "optional": True, "field": "tags"},
    ]
    rec = Records(fmt, columns)
    placeholder = "__debezium_unavailable_value"
    after = {
        "id": 1,
        "body": placeholder,
        "blob": "X19kZWJleml1bV91bmF2YWlsYWJsZV92YWx1ZQ==",
        "tags": [placeholder],
    }
    before = {"id": 1, "body": "old text", "blob": "AAE=", "tags": ["a"]}
    event = decode_one(rec, {"id": 1}, value_payload("u", before=before, after=after))
    assert isinstance(event, ChangeEvent)
    assert event.after == {"id": 1, "body": UNAVAILABLE, "blob": UNAVAILABLE, "tags": UNAVAILABLE}
    if fmt != "json-schemaless":
        assert event.before == {"id": 1, "body": "old text", "blob": b"\x00\x01", "tags": ["a"]}


def test_custom_placeholder_and_disabled_placeholder() -> None:
    rec = Records("json", [ID_COLUMN, {"type": "string", "optional": True, "field": "body"}])
    payload = value_payload("u", after={"id": 1, "body": "__debezium_unavailable_value"})
    event = decode_one(rec, {"id": 1}, payload, unavailable_placeholder=None)
    assert isinstance(event, ChangeEvent) and event.after == {"id": 1, "body": "__debezium_unavailable_value"}
    payload = value_payload("u", after={"id": 1, "body": "<toast>"})
    event = decode_one(rec, {"id": 1}, payload, unavailable_placeholder="<toast>")
    assert isinstance(event, ChangeEvent) and event.after == {"id": 1, "body": UNAVAILABLE}


# --- schemaless hints ----------------------------------------------------------------------------


def test_schemaless_with_column_hints_decodes_exactly() -> None:
    hints = {
        TableId("inventory", "public", "items"): {
            "id": ColumnType("int32", optional=False),
            "price": ColumnType("bytes", "org.apache.kafka.connect.data.Decimal", params={"scale": "2"}),
            "day": ColumnType("int32", "io.debezium.time.Date"),
        }
    }
    decoder = Decoder(column_hints=hints.get)
    payload = value_payload("c", after={"id": 1, "price": "AJY=", "day": 19000})
    event = decoder.decode(TOPIC, 0, 1, b'{"id":1}', orjson.dumps(payload))
    assert isinstance(event, ChangeEvent)
    assert event.after == {"id": 1, "price": Decimal("1.50"), "day": dt.date(2022, 1, 8)}
    assert event.columns["day"].logical == "io.debezium.time.Date"
    other = value_payload("c", after={"id": 2, "x": 19000}, src=source(table="other"))
    plain = decoder.decode(TOPIC, 0, 2, b'{"id":2}', orjson.dumps(other))
    assert isinstance(plain, ChangeEvent) and plain.after == {"id": 2, "x": 19000}
    assert plain.columns["x"] == ColumnType("int64")


# --- errors --------------------------------------------------------------------------------------


def _coords(info: pytest.ExceptionInfo[DecodeError]) -> tuple[str, int, int]:
    return info.value.topic, info.value.partition, info.value.offset


def test_bad_magic_byte() -> None:
    with pytest.raises(DecodeError, match="bad magic byte 0x01") as info:
        Decoder().decode("t.x", 4, 1234, None, b"\x01\x00\x00\x00\x01abc")
    assert _coords(info) == ("t.x", 4, 1234)
    assert "t.x[4]@1234" in str(info.value)


def test_invalid_json() -> None:
    with pytest.raises(DecodeError, match="invalid JSON") as info:
        Decoder().decode("t.x", 0, 5, None, b'{"schema": {"type"')
    assert _coords(info) == ("t.x", 0, 5)


def test_json_that_is_not_an_object() -> None:
    with pytest.raises(DecodeError, match="not a Debezium envelope") as info:
        Decoder().decode("t.x", 0, 6, None, b"[1, 2, 3]")
    assert _coords(info) == ("t.x", 0, 6)


def test_empty_value() -> None:
    with pytest.raises(DecodeError, match="empty record") as info:
        Decoder().decode("t.x", 1, 2, None, b"")
    assert _coords(info) == ("t.x", 1, 2)


def test_key_that_is_not_a_struct() -> None:
    rec = Records("json", COLUMNS)
    value = rec.value(value_payload("c", after={"id": 1, "name": "a", "price": None}))
    with pytest.raises(DecodeError, match="key is int") as info:
        rec.decoder().decode(TOPIC, 0, 3, b"42", value)
    assert _coords(info) == (TOPIC, 0, 3)


def test_value_that_does_not_fit_its_schema_names_the_column() -> None:
    rec = Records("json", COLUMNS)
    value = rec.value(value_payload("c", after={"id": 1, "name": "a", "price": "not base64!"}))
    with pytest.raises(DecodeError, match="column 'price'") as info:
        rec.decoder().decode(TOPIC, 1, 8, rec.key({"id": 1}), value)
    assert _coords(info) == (TOPIC, 1, 8)


def test_payload_missing_a_schema_field() -> None:
    rec = Records("json", COLUMNS)
    doc = {"schema": rec.value_schema, "payload": value_payload("c", after={"id": 1, "name": "a"})}
    with pytest.raises(DecodeError, match="column 'price'") as info:
        rec.decoder().decode(TOPIC, 1, 9, rec.key({"id": 1}), orjson.dumps(doc))
    assert _coords(info) == (TOPIC, 1, 9)


def test_unknown_logical_type_in_a_record() -> None:
    column = {
        "type": "int64",
        "optional": True,
        "name": "io.debezium.time.PicoTimestamp",
        "version": 1,
        "field": "t",
    }
    rec = Records("json", [ID_COLUMN, column])
    value = rec.value(value_payload("c", after={"id": 1, "t": 5}))
    with pytest.raises(DecodeError, match="unknown logical type 'io.debezium.time.PicoTimestamp'") as info:
        rec.decoder().decode(TOPIC, 0, 31, rec.key({"id": 1}), value)
    assert _coords(info) == (TOPIC, 0, 31)
    # listed as passthrough, its values come through as they are
    event = rec.decoder(passthrough_logical_types={"io.debezium.time.PicoTimestamp"}).decode(
        TOPIC, 0, 31, rec.key({"id": 1}), value
    )
    assert isinstance(event, ChangeEvent) and event.after == {"id": 1, "t": 5}
