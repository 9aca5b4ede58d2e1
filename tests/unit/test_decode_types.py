"""Every value type Debezium sends, decoded from JSON and from Avro to the same exact Python value.

Each case is a Connect field schema (as Debezium 3.1 writes it), the value as the JSON converter
writes it (the Avro record is made from it the way Confluent's AvroConverter does), and the
expected Python value.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import math
import uuid
from decimal import Decimal
from typing import Any

import pytest

from streamer.core.errors import DecodeError
from streamer.core.events import (
    DATE_INFINITY,
    DATE_NEG_INFINITY,
    TIME_24_00,
    TIMESTAMP_INFINITY,
    TIMESTAMP_NEG_INFINITY,
    TIMESTAMPTZ_INFINITY,
    TIMESTAMPTZ_NEG_INFINITY,
    UNAVAILABLE,
    ChangeEvent,
    EndOfDay,
    InfiniteDate,
    InfiniteDatetime,
)
from streamer.decode.decoder import parse_json
from tests.unit.decode_helpers import FORMATS, ID_COLUMN, TOPIC, Records, decode_column, value_payload

PLACEHOLDER = "__debezium_unavailable_value"
SOURCE_TYPE = "__debezium.source.column.type"
UTC = dt.UTC


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unscaled(value: int) -> str:
    """A Connect Decimal's JSON form: base64 of the big-endian two's-complement unscaled value."""
    return b64(value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big", signed=True))


def col(
    ctype: str, name: str | None = None, params: dict[str, str] | None = None, **extra: Any
) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": ctype, "optional": True}
    if name is not None:
        schema["name"] = name
        schema["version"] = 1
    if params:
        schema["parameters"] = params
    schema.update(extra)
    schema["field"] = "v"
    return schema


def assert_same(actual: Any, expected: Any) -> None:
    """Equal *and* of the same type, with NaN, Decimal digits and time zones compared exactly."""
    if expected is UNAVAILABLE:
        assert actual is UNAVAILABLE
        return
    assert type(actual) is type(expected), f"{actual!r} is {type(actual).__name__}, expected {expected!r}"
    if isinstance(expected, float) and math.isnan(expected):
        assert math.isnan(actual)
    elif isinstance(expected, Decimal):
        assert str(actual) == str(expected)  # digits and exponent, NaN and Infinity included
    elif isinstance(expected, (dt.datetime, dt.time)):
        assert actual == expected and actual.utcoffset() == expected.utcoffset()
    elif isinstance(expected, list):
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected, strict=True):
            assert_same(a, e)
    elif isinstance(expected, dict):
        assert actual.keys() == expected.keys()
        for k in expected:
            assert_same(actual[k], expected[k])
    else:
        assert actual == expected


DEC = "org.apache.kafka.connect.data.Decimal"
VSD = {
    "type": "struct",
    "fields": [
        {"type": "int32", "optional": False, "field": "scale"},
        {"type": "bytes", "optional": False, "field": "value"},
    ],
    "optional": True,
    "name": "io.debezium.data.VariableScaleDecimal",
    "version": 1,
    "doc": "Variable scaled decimal",
    "field": "v",
}
GEOMETRY = {
    "type": "struct",
    "fields": [
        {"type": "bytes", "optional": False, "field": "wkb"},
        {"type": "int32", "optional": True, "field": "srid"},
    ],
    "optional": True,
    "name": "io.debezium.data.geometry.Geometry",
    "version": 1,
    "doc": "Geometry",
    "field": "v",
}
POINT_WKB = bytes.fromhex("0101000000000000000000f03f0000000000000040")

CASES: list[tuple[str, dict[str, Any], Any, Any]] = [
    # plain Connect types
    ("int16", col("int16"), -32768, -32768),
    ("int32", col("int32"), 2147483647, 2147483647),
    ("int64", col("int64"), -9223372036854775808, -9223372036854775808),
    ("boolean", col("boolean"), True, True),
    ("string", col("string"), "grüße ✓", "grüße ✓"),
    ("float64", col("float64"), 3.141592653589793, 3.141592653589793),
    ("float64 NaN", col("float64"), "NaN", math.nan),
    ("float64 -inf", col("float64"), "-Infinity", -math.inf),
    ("float32 real", col("float32"), 1.1, 1.1),
    ("float32 small", col("float32"), 3.4e-38, 3.4e-38),
    ("float32 NaN", col("float32"), "NaN", math.nan),
    ("bytes", col("bytes"), b64(b"\x00\x01\x02\xff"), b"\x00\x01\x02\xff"),
    ("bytes empty", col("bytes"), "", b""),
    # dates and times (time.precision.mode=adaptive / adaptive_time_microseconds)
    ("Date", col("int32", "io.debezium.time.Date"), 19874, dt.date(2024, 5, 31)),
    ("Date before epoch", col("int32", "io.debezium.time.Date"), -719162, dt.date(1, 1, 1)),
    ("Date +infinity streamed", col("int32", "io.debezium.time.Date"), -2147472692, DATE_INFINITY),
    ("Date -infinity streamed", col("int32", "io.debezium.time.Date"), -2147472691, DATE_NEG_INFINITY),
    ("Date +infinity snapshot", col("int32", "io.debezium.time.Date"), -622191234, DATE_INFINITY),
    ("Date -infinity snapshot", col("int32", "io.debezium.time.Date"), -625821272, DATE_NEG_INFINITY),
    ("Time ms", col("int32", "io.debezium.time.Time"), 45296789, dt.time(12, 34, 56, 789000)),
    ("MicroTime", col("int64", "io.debezium.time.MicroTime"), 45296789012, dt.time(12, 34, 56, 789012)),
    ("MicroTime midnight", col("int64", "io.debezium.time.MicroTime"), 0, dt.time(0, 0)),
    ("MicroTime 24:00", col("int64", "io.debezium.time.MicroTime"), 86400000000, TIME_24_00),
    ("MicroTime MySQL -01:00", col("int64", "io.debezium.time.MicroTime"), -3600000000, dt.timedelta(hours=-1)),
    ("MicroTime MySQL 838:59:59", col("int64", "io.debezium.time.MicroTime"), 3020399000000, dt.timedelta(hours=838, minutes=59, seconds=59)),
    ("NanoTime", col("int64", "io.debezium.time.NanoTime"), 45296789012345, dt.time(12, 34, 56, 789012)),
    ("Timestamp ms", col("int64", "io.debezium.time.Timestamp"), 1717171717123, dt.datetime(2024, 5, 31, 16, 8, 37, 123000)),
    ("Timestamp ms +infinity", col("int64", "io.debezium.time.Timestamp"), 9223372036825200, TIMESTAMP_INFINITY),
    ("Timestamp ms -infinity", col("int64", "io.debezium.time.Timestamp"), -9223372036832400, TIMESTAMP_NEG_INFINITY),
    ("MicroTimestamp", col("int64", "io.debezium.time.MicroTimestamp"), 1717171717123456, dt.datetime(2024, 5, 31, 16, 8, 37, 123456)),
    ("MicroTimestamp pre-epoch", col("int64", "io.debezium.time.MicroTimestamp"), -1, dt.datetime(1969, 12, 31, 23, 59, 59, 999999)),
    ("MicroTimestamp +infinity", col("int64", "io.debezium.time.MicroTimestamp"), 9223372036825200000, TIMESTAMP_INFINITY),
    ("MicroTimestamp -infinity", col("int64", "io.debezium.time.MicroTimestamp"), -9223372036832400000, TIMESTAMP_NEG_INFINITY),
    ("MicroTimestamp Long.MAX", col("int64", "io.debezium.time.MicroTimestamp"), 9223372036854775807, TIMESTAMP_INFINITY),
    ("MicroTimestamp Long.MIN", col("int64", "io.debezium.time.MicroTimestamp"), -9223372036854775808, TIMESTAMP_NEG_INFINITY),
    ("NanoTimestamp", col("int64", "io.debezium.time.NanoTimestamp"), 1717171717123456789, dt.datetime(2024, 5, 31, 16, 8, 37, 123456)),
    ("ZonedTimestamp", col("string", "io.debezium.time.ZonedTimestamp"), "2024-05-31T16:08:37.123456Z", dt.datetime(2024, 5, 31, 16, 8, 37, 123456, tzinfo=UTC)),
    ("ZonedTimestamp offset", col("string", "io.debezium.time.ZonedTimestamp"), "2024-05-31T18:08:37+02:00", dt.datetime(2024, 5, 31, 18, 8, 37, tzinfo=dt.timezone(dt.timedelta(hours=2)))),
    ("ZonedTimestamp +infinity", col("string", "io.debezium.time.ZonedTimestamp"), "infinity", TIMESTAMPTZ_INFINITY),
    ("ZonedTimestamp -infinity", col("string", "io.debezium.time.ZonedTimestamp"), "-infinity", TIMESTAMPTZ_NEG_INFINITY),
    ("ZonedTime", col("string", "io.debezium.time.ZonedTime"), "16:08:37.123456Z", dt.time(16, 8, 37, 123456, tzinfo=UTC)),
    ("IsoDate", col("string", "io.debezium.time.IsoDate"), "2024-05-31Z", dt.date(2024, 5, 31)),
    ("IsoTime", col("string", "io.debezium.time.IsoTime"), "16:08:37.5Z", dt.time(16, 8, 37, 500000)),
    ("IsoTimestamp", col("string", "io.debezium.time.IsoTimestamp"), "2024-05-31T16:08:37.5Z", dt.datetime(2024, 5, 31, 16, 8, 37, 500000)),
    ("MicroDuration", col("int64", "io.debezium.time.MicroDuration"), 93784000005, dt.timedelta(days=1, hours=2, minutes=3, seconds=4, microseconds=5)),
    ("MicroDuration month", col("int64", "io.debezium.time.MicroDuration"), 2629800000000, dt.timedelta(days=30, hours=10, minutes=30)),
    ("MicroDuration negative", col("int64", "io.debezium.time.MicroDuration"), -1500000, dt.timedelta(seconds=-1.5)),
    ("NanoDuration", col("int64", "io.debezium.time.NanoDuration"), 1500000999, dt.timedelta(seconds=1.500000)),
    ("Interval string", col("string", "io.debezium.time.Interval"), "P1Y2M3DT4H5M6.78S", "P1Y2M3DT4H5M6.78S"),
    ("Year", col("int32", "io.debezium.time.Year"), 2024, 2024),
    # Connect's own temporal types (time.precision.mode=connect)
    ("Connect Date", col("int32", "org.apache.kafka.connect.data.Date"), 19874, dt.date(2024, 5, 31)),
    ("Connect Time", col("int32", "org.apache.kafka.connect.data.Time"), 45296789, dt.time(12, 34, 56, 789000)),
    ("Connect Timestamp", col("int64", "org.apache.kafka.connect.data.Timestamp"), 1717171717123, dt.datetime(2024, 5, 31, 16, 8, 37, 123000)),
    # decimals
    ("Decimal", col("bytes", DEC, {"scale": "2", "connect.decimal.precision": "10"}), unscaled(12345), Decimal("123.45")),
    ("Decimal negative", col("bytes", DEC, {"scale": "2", "connect.decimal.precision": "10"}), unscaled(-12345), Decimal("-123.45")),
    ("Decimal trailing zeros", col("bytes", DEC, {"scale": "3", "connect.decimal.precision": "10"}), unscaled(1500), Decimal("1.500")),
    ("Decimal zero", col("bytes", DEC, {"scale": "2"}), unscaled(0), Decimal("0.00")),
    ("Decimal scale 0", col("bytes", DEC, {"scale": "0", "connect.decimal.precision": "38"}), unscaled(-(10**37)), Decimal(-(10**37))),
    ("Decimal 38 digits", col("bytes", DEC, {"scale": "10", "connect.decimal.precision": "38"}), unscaled(12345678901234567890123456789012345678), Decimal("1234567890123456789012345678.9012345678")),
    ("money", col("bytes", DEC, {"scale": "2", SOURCE_TYPE: "MONEY"}), unscaled(-99999999), Decimal("-999999.99")),
    ("VariableScaleDecimal", VSD, {"scale": 3, "value": unscaled(-1234567)}, Decimal("-1234.567")),
    ("VariableScaleDecimal integer", VSD, {"scale": 0, "value": unscaled(10**30)}, Decimal(10**30)),
    ("decimal string", col("string", None, {SOURCE_TYPE: "NUMERIC", "__debezium.source.column.length": "20"}), "12345.678900", Decimal("12345.678900")),
    ("decimal string NAN", col("string", None, {SOURCE_TYPE: "NUMERIC"}), "NAN", Decimal("NaN")),
    ("decimal string NaN", col("string", None, {SOURCE_TYPE: "NUMERIC"}), "NaN", Decimal("NaN")),
    ("decimal string +inf", col("string", None, {SOURCE_TYPE: "NUMERIC"}), "POSITIVE_INFINITY", Decimal("Infinity")),
    ("decimal string -inf", col("string", None, {SOURCE_TYPE: "DECIMAL"}), "NEGATIVE_INFINITY", Decimal("-Infinity")),
    ("decimal double", col("float64", None, {SOURCE_TYPE: "NUMERIC"}), 1234.5678, 1234.5678),
    ("decimal string without source type stays text", col("string"), "12.50", "12.50"),
    # strings with meaning
    ("Json", col("string", "io.debezium.data.Json"), '{"a": [1, 2.50, "x"]}', '{"a": [1, 2.50, "x"]}'),
    ("Uuid", col("string", "io.debezium.data.Uuid"), "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")),
    ("Enum", col("string", "io.debezium.data.Enum", {"allowed": "sad,ok,happy"}), "happy", "happy"),
    ("EnumSet", col("string", "io.debezium.data.EnumSet", {"allowed": "a,b,c"}), "a,c", "a,c"),
    ("Xml", col("string", "io.debezium.data.Xml"), "<a>1</a>", "<a>1</a>"),
    ("Ltree", col("string", "io.debezium.data.Ltree"), "Top.Science.Astronomy", "Top.Science.Astronomy"),
    ("unknown string logical passes", col("string", "com.acme.Color"), "teal", "teal"),
    # bits
    ("Bits bit(10)", col("bytes", "io.debezium.data.Bits", {"length": "10"}), b64((0b1010000001).to_bytes(2, "little")), "1010000001"),
    ("Bits leading zeros", col("bytes", "io.debezium.data.Bits", {"length": "10"}), b64(b"\x05"), "0000000101"),
    ("Bits varbit", col("bytes", "io.debezium.data.Bits", {"length": "10", SOURCE_TYPE: "VARBIT"}), b64(b"\x05"), "101"),
    ("Bits 64+", col("bytes", "io.debezium.data.Bits", {"length": "72"}), b64((1 << 71 | 1).to_bytes(9, "little")), "1" + "0" * 70 + "1"),
    # binary.handling.mode=base64/hex seen through the propagated source type
    ("bytea base64", col("string", None, {SOURCE_TYPE: "BYTEA"}), b64(b"\x00\xff\x10"), b"\x00\xff\x10"),
    # arrays and maps
    ("int array", col("array", items={"type": "int32", "optional": True}), [1, None, -3], [1, None, -3]),
    ("date array", col("array", items={"type": "int32", "optional": True, "name": "io.debezium.time.Date", "version": 1}), [19874, None], [dt.date(2024, 5, 31), None]),
    ("timestamp array", col("array", items={"type": "int64", "optional": True, "name": "io.debezium.time.MicroTimestamp", "version": 1}), [1717171717123456], [dt.datetime(2024, 5, 31, 16, 8, 37, 123456)]),
    ("uuid array", col("array", items={"type": "string", "optional": True, "name": "io.debezium.data.Uuid", "version": 1}), ["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"], [uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")]),
    ("decimal array", col("array", items={"type": "bytes", "optional": True, "name": DEC, "version": 1, "parameters": {"scale": "1"}}), [unscaled(15), unscaled(-5)], [Decimal("1.5"), Decimal("-0.5")]),
    ("numeric string array", col("array", None, {SOURCE_TYPE: "_NUMERIC"}, items={"type": "string", "optional": True}), ["1.50", "NaN"], [Decimal("1.50"), Decimal("NaN")]),
    ("bytea array", col("array", items={"type": "bytes", "optional": True}), [b64(b"\x01"), None], [b"\x01", None]),
    ("empty array", col("array", items={"type": "string", "optional": True}), [], []),
    ("float vector", col("array", "io.debezium.data.DoubleVector", items={"type": "float64", "optional": False}), [1.0, 2.5], [1.0, 2.5]),
    ("hstore map", col("map", keys={"type": "string", "optional": False}, values={"type": "string", "optional": True}), {"a": "1", "b": None}, {"a": "1", "b": None}),
    ("int-keyed map", col("map", keys={"type": "int16", "optional": False}, values={"type": "float64", "optional": False}), [[3, 0.5], [7, 1.5]], {3: 0.5, 7: 1.5}),
    ("geometry", GEOMETRY, {"wkb": b64(POINT_WKB), "srid": 4326}, {"wkb": POINT_WKB, "srid": 4326}),
    # unchanged TOAST columns, every form
    ("toast text", col("string"), PLACEHOLDER, UNAVAILABLE),
    ("toast json", col("string", "io.debezium.data.Json"), PLACEHOLDER, UNAVAILABLE),
    ("toast hstore json", col("string", "io.debezium.data.Json"), '{"__debezium_unavailable_value":"__debezium_unavailable_value"}', UNAVAILABLE),
    ("toast xml", col("string", "io.debezium.data.Xml"), PLACEHOLDER, UNAVAILABLE),
    ("toast bytea", col("bytes"), "X19kZWJleml1bV91bmF2YWlsYWJsZV92YWx1ZQ==", UNAVAILABLE),
    ("toast text array", col("array", items={"type": "string", "optional": True}), [PLACEHOLDER], UNAVAILABLE),
    ("toast bytea array", col("array", items={"type": "bytes", "optional": True}), [b64(PLACEHOLDER.encode())], UNAVAILABLE),
    ("toast int array", col("array", items={"type": "int32", "optional": True}), list(PLACEHOLDER.encode()), UNAVAILABLE),
    ("toast bigint array", col("array", items={"type": "int64", "optional": True}), list(PLACEHOLDER.encode()), UNAVAILABLE),
    ("toast uuid array", col("array", items={"type": "string", "optional": True, "name": "io.debezium.data.Uuid", "version": 1}),
     [str(uuid.UUID(bytes=hashlib.md5(PLACEHOLDER.encode()).digest(), version=3))], UNAVAILABLE),
    ("toast hstore map", col("map", keys={"type": "string", "optional": False}, values={"type": "string", "optional": True}), {PLACEHOLDER: PLACEHOLDER}, UNAVAILABLE),
    ("toast bytea base64 mode", col("string", None, {SOURCE_TYPE: "BYTEA"}), "X19kZWJleml1bV91bmF2YWlsYWJsZV92YWx1ZQ==", UNAVAILABLE),
    ("toast bytea hex mode", col("string", None, {SOURCE_TYPE: "BYTEA"}), PLACEHOLDER, UNAVAILABLE),
]  # fmt: skip


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(("column", "raw", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_value(fmt: str, column: dict[str, Any], raw: Any, expected: Any) -> None:
    assert_same(decode_column(fmt, column, raw, binary_handling_mode="base64"), expected)


@pytest.mark.parametrize("fmt", FORMATS)
def test_values_in_before_of_a_delete_are_decoded_too(fmt: str) -> None:
    column = col("int64", "io.debezium.time.MicroTimestamp")
    assert decode_column(fmt, column, 1717171717123456, op="d") == dt.datetime(2024, 5, 31, 16, 8, 37, 123456)


def test_special_values_are_subclasses_of_their_type() -> None:
    assert isinstance(TIMESTAMP_INFINITY, InfiniteDatetime) and TIMESTAMP_INFINITY == dt.datetime.max
    assert TIMESTAMP_INFINITY.pg_literal == "infinity" and TIMESTAMP_NEG_INFINITY.pg_literal == "-infinity"
    assert TIMESTAMPTZ_INFINITY.tzinfo is UTC and TIMESTAMPTZ_NEG_INFINITY.pg_literal == "-infinity"
    assert isinstance(DATE_NEG_INFINITY, InfiniteDate) and DATE_NEG_INFINITY == dt.date.min
    assert (
        isinstance(TIME_24_00, EndOfDay) and TIME_24_00 == dt.time.max and TIME_24_00.pg_literal == "24:00:00"
    )
    assert not isinstance(dt.datetime.max, InfiniteDatetime)


@pytest.mark.parametrize(
    ("mode", "raw", "expected"),
    [
        ("base64", b64(b"\x00\xfb\xff"), b"\x00\xfb\xff"),
        ("base64-url-safe", base64.urlsafe_b64encode(b"\x00\xfb\xff").decode(), b"\x00\xfb\xff"),
        ("hex", "00fbff", b"\x00\xfb\xff"),
    ],
)
@pytest.mark.parametrize("fmt", FORMATS)
def test_binary_handling_modes(fmt: str, mode: str, raw: str, expected: bytes) -> None:
    column = col("string", None, {SOURCE_TYPE: "BYTEA", "__debezium.source.column.length": "2147483647"})
    assert decode_column(fmt, column, raw, binary_handling_mode=mode) == expected


@pytest.mark.parametrize("fmt", FORMATS)
def test_binary_string_without_a_binary_mode_is_an_error(fmt: str) -> None:
    column = col("string", None, {SOURCE_TYPE: "BYTEA"})
    with pytest.raises(DecodeError, match="binary_handling_mode") as info:
        decode_column(fmt, column, b64(b"x"))
    assert (info.value.topic, info.value.offset) == (TOPIC, 42)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(12345, Decimal("12345.00")), (-7, Decimal("-7.00")), (1.25, Decimal("1.25")), (0.1, Decimal("0.10"))],
)
def test_decimal_numeric_json_format(raw: Any, expected: Decimal) -> None:
    """``decimal.format=NUMERIC`` on the JSON converter: the value is a JSON number."""
    column = col("bytes", DEC, {"scale": "2", "connect.decimal.precision": "12"})
    assert_same(decode_column("json", column, raw), expected)


def test_json_helper_parses_the_kept_text() -> None:
    text = decode_column("json", col("string", "io.debezium.data.Json"), '{"a": [1, {"b": null}]}')
    assert parse_json(text) == {"a": [1, {"b": None}]}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    "column",
    [
        col("int64", "io.debezium.time.FemtoTimestamp"),
        col("bytes", "com.acme.Packed"),
        {**VSD, "name": "io.debezium.data.SuperDecimal"},
    ],
    ids=["unknown int64", "unknown bytes", "unknown debezium struct"],
)
def test_unknown_logical_types_are_errors(fmt: str, column: dict[str, Any]) -> None:
    raw = (
        {"scale": 1, "value": unscaled(1)}
        if column["type"] == "struct"
        else (5 if column["type"] == "int64" else b64(b"x"))
    )
    with pytest.raises(DecodeError, match="unknown logical type") as info:
        decode_column(fmt, column, raw)
    assert (info.value.topic, info.value.partition, info.value.offset) == (TOPIC, 0, 42)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    ("column", "raw"),
    [
        (col("int64", "io.debezium.time.MicroTimestamp"), 400_000_000_000_000_000),  # year 14645
        (col("int32", "io.debezium.time.Date"), 3_000_000),
        (col("string", "io.debezium.time.ZonedTimestamp"), "yesterday"),
        (col("string", "io.debezium.data.Uuid"), "not-a-uuid"),
        (col("string", None, {SOURCE_TYPE: "NUMERIC"}), "12,5"),
    ],
    ids=["timestamp beyond 9999", "date beyond 9999", "bad zoned timestamp", "bad uuid", "bad decimal text"],
)
def test_values_out_of_range_or_malformed_are_errors(fmt: str, column: dict[str, Any], raw: Any) -> None:
    with pytest.raises(DecodeError, match="column 'v'") as info:
        decode_column(fmt, column, raw)
    assert (info.value.topic, info.value.partition, info.value.offset) == (TOPIC, 0, 42)


@pytest.mark.parametrize("fmt", FORMATS)
def test_column_types_come_from_the_schema(fmt: str) -> None:
    columns = [
        ID_COLUMN,
        col("bytes", DEC, {"scale": "2", "connect.decimal.precision": "10", SOURCE_TYPE: "NUMERIC"})
        | {"field": "price"},
        col(
            "array",
            items={
                "type": "int64",
                "optional": True,
                "name": "io.debezium.time.MicroTimestamp",
                "version": 1,
            },
        )
        | {"field": "times"},
        {"type": "int16", "optional": False, "field": "small"},
    ]
    rec = Records(fmt, columns)
    event = rec.decoder().decode(
        TOPIC,
        0,
        1,
        rec.key({"id": 1}),
        rec.value(value_payload("c", after={"id": 1, "price": None, "times": None, "small": 3})),
    )
    assert isinstance(event, ChangeEvent)
    price = event.columns["price"]
    assert (price.base, price.logical, price.optional) == ("bytes", DEC, True)
    assert dict(price.params) == {"scale": "2", "connect.decimal.precision": "10", SOURCE_TYPE: "NUMERIC"}
    assert price.source_type == "NUMERIC"
    times = event.columns["times"]
    assert times.base == "array" and times.items is not None
    assert (times.items.base, times.items.logical) == ("int64", "io.debezium.time.MicroTimestamp")
    assert (event.columns["small"].base, event.columns["small"].optional) == ("int16", False)
    assert (event.columns["id"].base, event.columns["id"].optional) == ("int32", False)
