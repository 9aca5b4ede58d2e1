"""Debezium's and Kafka Connect's logical types as Python values.

The schema names Debezium and Connect give their logical types (``io.debezium.time.*``,
``io.debezium.data.*``, ``org.apache.kafka.connect.data.*``), the conversions from their wire
representation (epoch days, micro/nano seconds, unscaled decimals, bit strings, ISO texts) to
``datetime``, ``Decimal``, ``UUID`` and friends, with the infinities and special values named
in :mod:`streamer.core.events`, and the fast constructors the plans build values with.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import hashlib
import struct
import uuid
from collections.abc import Callable, Mapping
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Final, Literal, TypeVar

from streamer.core.checkpoint import KafkaOrigin
from streamer.core.events import (
    DATE_INFINITY,
    DATE_NEG_INFINITY,
    TIME_24_00,
    TIMESTAMP_INFINITY,
    TIMESTAMP_NEG_INFINITY,
    TIMESTAMPTZ_INFINITY,
    TIMESTAMPTZ_NEG_INFINITY,
    ChangeEvent,
    Op,
    SourcePosition,
)

Converter = Callable[[Any], Any]
BinaryHandlingMode = Literal["bytes", "base64", "base64-url-safe", "hex"]


# --- names -----------------------------------------------------------------------------------

_DBZ_TIME = "io.debezium.time."
_DBZ_DATA = "io.debezium.data."
_CONNECT = "org.apache.kafka.connect.data."

DATE: Final = _DBZ_TIME + "Date"
TIME: Final = _DBZ_TIME + "Time"
MICRO_TIME: Final = _DBZ_TIME + "MicroTime"
NANO_TIME: Final = _DBZ_TIME + "NanoTime"
TIMESTAMP: Final = _DBZ_TIME + "Timestamp"
MICRO_TIMESTAMP: Final = _DBZ_TIME + "MicroTimestamp"
NANO_TIMESTAMP: Final = _DBZ_TIME + "NanoTimestamp"
ZONED_TIMESTAMP: Final = _DBZ_TIME + "ZonedTimestamp"
ZONED_TIME: Final = _DBZ_TIME + "ZonedTime"
ISO_DATE: Final = _DBZ_TIME + "IsoDate"
ISO_TIME: Final = _DBZ_TIME + "IsoTime"
ISO_TIMESTAMP: Final = _DBZ_TIME + "IsoTimestamp"
MICRO_DURATION: Final = _DBZ_TIME + "MicroDuration"
NANO_DURATION: Final = _DBZ_TIME + "NanoDuration"
INTERVAL: Final = _DBZ_TIME + "Interval"
YEAR: Final = _DBZ_TIME + "Year"
CONNECT_DECIMAL: Final = _CONNECT + "Decimal"
CONNECT_DATE: Final = _CONNECT + "Date"
CONNECT_TIME: Final = _CONNECT + "Time"
CONNECT_TIMESTAMP: Final = _CONNECT + "Timestamp"
VARIABLE_SCALE_DECIMAL: Final = _DBZ_DATA + "VariableScaleDecimal"
JSON: Final = _DBZ_DATA + "Json"
UUID: Final = _DBZ_DATA + "Uuid"
ENUM: Final = _DBZ_DATA + "Enum"
ENUM_SET: Final = _DBZ_DATA + "EnumSet"
BITS: Final = _DBZ_DATA + "Bits"
XML: Final = _DBZ_DATA + "Xml"
LTREE: Final = _DBZ_DATA + "Ltree"
DOUBLE_VECTOR: Final = _DBZ_DATA + "DoubleVector"
FLOAT_VECTOR: Final = _DBZ_DATA + "FloatVector"
SPARSE_DOUBLE_VECTOR: Final = _DBZ_DATA + "SparseDoubleVector"
GEOMETRY: Final = _DBZ_DATA + "geometry.Geometry"
GEOGRAPHY: Final = _DBZ_DATA + "geometry.Geography"
POINT: Final = _DBZ_DATA + "geometry.Point"

HEARTBEAT_SCHEMA: Final = "io.debezium.connector.common.Heartbeat"
TRANSACTION_SCHEMA: Final = "io.debezium.connector.common.TransactionMetadataValue"
SCHEMA_CHANGE_SUFFIX: Final = ".SchemaChangeValue"

SOURCE_TYPE_PARAM: Final = "__debezium.source.column.type"

_STRING_PASSTHROUGH: Final = frozenset({ENUM, ENUM_SET, XML, LTREE, INTERVAL})
_KNOWN_STRUCTS: Final = frozenset({VARIABLE_SCALE_DECIMAL, GEOMETRY, GEOGRAPHY, POINT, SPARSE_DOUBLE_VECTOR})
_NUMERIC_SOURCE_TYPES: Final = frozenset(
    {"NUMERIC", "DECIMAL", "DEC", "MONEY", "FIXED", "NUMBER", "SMALLMONEY", "DECFLOAT"}
)
_BINARY_SOURCE_TYPES: Final = frozenset(
    {
        "BYTEA",
        "BINARY",
        "VARBINARY",
        "BLOB",
        "TINYBLOB",
        "MEDIUMBLOB",
        "LONGBLOB",
        "RAW",
        "LONG RAW",
        "IMAGE",
    }
)

_OPS: Final = MappingProxyType({op.value: op for op in Op})
_SNAPSHOT_FALSE: Final = frozenset({None, "false", False})

# --- temporal helpers ------------------------------------------------------------------------

_EPOCH: Final = dt.datetime(1970, 1, 1)
_EPOCH_UTC: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_EPOCH_DATE: Final = dt.date(1970, 1, 1)
_EPOCH_ORDINAL: Final = _EPOCH_DATE.toordinal()
_DAY_US: Final = 86_400_000_000
_timedelta: Final = dt.timedelta
_date_fromordinal: Final = dt.date.fromordinal
_INT64_MAX: Final = 2**63 - 1
_INT64_MIN: Final = -(2**63)

# PostgreSQL +/-infinity as Debezium sends them (PGJDBC's DATE_POSITIVE/NEGATIVE_INFINITY).
_TS_US_SPECIAL: Final = MappingProxyType(
    {
        9223372036825200000: TIMESTAMP_INFINITY,
        -9223372036832400000: TIMESTAMP_NEG_INFINITY,
        _INT64_MAX: TIMESTAMP_INFINITY,
        _INT64_MIN: TIMESTAMP_NEG_INFINITY,
    }
)
_TS_MS_SPECIAL: Final = MappingProxyType(
    {
        9223372036825200: TIMESTAMP_INFINITY,
        -9223372036832400: TIMESTAMP_NEG_INFINITY,
        _INT64_MAX: TIMESTAMP_INFINITY,
        _INT64_MIN: TIMESTAMP_NEG_INFINITY,
    }
)
_TS_NS_SPECIAL: Final = MappingProxyType({_INT64_MAX: TIMESTAMP_INFINITY, _INT64_MIN: TIMESTAMP_NEG_INFINITY})
_DATE_SPECIAL: Final = MappingProxyType(
    {
        # streamed (pgoutput): Debezium's POSITIVE/NEGATIVE_INFINITY_LOCAL_DATE, -5877611-06-21/22
        -2147472692: DATE_INFINITY,
        -2147472691: DATE_NEG_INFINITY,
        # snapshot (JDBC): java.sql.Date(DATE_POSITIVE/NEGATIVE_INFINITY).toLocalDate()
        -622191234: DATE_INFINITY,
        -625821272: DATE_NEG_INFINITY,
        2**31 - 1: DATE_INFINITY,
        -(2**31): DATE_NEG_INFINITY,
    }
)
_TSTZ_SPECIAL: Final = MappingProxyType(
    {"infinity": TIMESTAMPTZ_INFINITY, "-infinity": TIMESTAMPTZ_NEG_INFINITY}
)
_TS_TEXT_SPECIAL: Final = MappingProxyType(
    {"infinity": TIMESTAMP_INFINITY, "-infinity": TIMESTAMP_NEG_INFINITY}
)
_DECIMAL_SPECIAL: Final = MappingProxyType(
    {
        "NaN": Decimal("NaN"),
        "NAN": Decimal("NaN"),
        "Infinity": Decimal("Infinity"),
        "POSITIVE_INFINITY": Decimal("Infinity"),
        "-Infinity": Decimal("-Infinity"),
        "NEGATIVE_INFINITY": Decimal("-Infinity"),
    }
)


_WIDE: Final = decimal.Context(prec=decimal.MAX_PREC, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)


class _BadValue(ValueError):
    """A value that does not fit its schema; becomes a DecodeError naming the column."""


def _datetime_from_units(
    value: int, per_us: int, div_us: int, special: Mapping[int, dt.datetime]
) -> dt.datetime:
    micros = value * per_us if per_us != 1 else value // div_us
    try:
        return _EPOCH + dt.timedelta(microseconds=micros)
    except OverflowError:
        hit = special.get(value)
        if hit is not None:
            return hit
        raise _BadValue(f"timestamp {value} is outside the years 1-9999 Python can represent") from None


def _timestamp_ms(value: int) -> dt.datetime:
    return _datetime_from_units(value, 1000, 1, _TS_MS_SPECIAL)


def _timestamp_us(value: int) -> dt.datetime:
    try:
        return _EPOCH + _timedelta(0, 0, value)
    except OverflowError:
        return _datetime_from_units(value, 1, 1, _TS_US_SPECIAL)


def _timestamp_ns(value: int) -> dt.datetime:
    return _datetime_from_units(value, 1, 1000, _TS_NS_SPECIAL)


def _date_days(value: int) -> dt.date:
    try:
        return _date_fromordinal(_EPOCH_ORDINAL + value)
    except (ValueError, OverflowError):
        hit = _DATE_SPECIAL.get(value)
        if hit is not None:
            return hit
        raise _BadValue(f"date {value} days from 1970-01-01 is outside the years 1-9999") from None


def _time_from_micros(micros: int) -> dt.time | dt.timedelta:
    if 0 <= micros < _DAY_US:
        seconds, us = divmod(micros, 1_000_000)
        minutes, s = divmod(seconds, 60)
        h, m = divmod(minutes, 60)
        return dt.time(h, m, s, us)
    if micros == _DAY_US:
        return TIME_24_00
    return dt.timedelta(microseconds=micros)


def _time_ms(value: int) -> dt.time | dt.timedelta:
    return _time_from_micros(value * 1000)


def _time_us(value: int) -> dt.time | dt.timedelta:
    return _time_from_micros(value)


def _time_ns(value: int) -> dt.time | dt.timedelta:
    return _time_from_micros(value // 1000)


def _zoned_timestamp(value: str) -> dt.datetime:
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        hit = _TSTZ_SPECIAL.get(value)
        if hit is not None:
            return hit
        raise _BadValue(f"not an ISO 8601 timestamp with offset: {value!r}") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)


def _zoned_time(value: str) -> dt.time:
    parsed = dt.time.fromisoformat(value)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)


def _iso_timestamp(value: str) -> dt.datetime:
    hit = _TS_TEXT_SPECIAL.get(value)
    if hit is not None:
        return hit
    parsed = dt.datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        return parsed
    return parsed.astimezone(dt.UTC).replace(tzinfo=None)


def _iso_time(value: str) -> dt.time:
    parsed = dt.time.fromisoformat(value)
    if parsed.tzinfo is None or parsed.utcoffset() == dt.timedelta(0):
        return parsed.replace(tzinfo=None)
    as_dt = dt.datetime.combine(_EPOCH_DATE, parsed).astimezone(dt.UTC)
    return as_dt.time()


def _iso_date(value: str) -> dt.date:
    text = value[:-1] if value.endswith("Z") else value
    if len(text) > 10 and text[10] in "+-":  # 2023-11-21+02:00
        text = text[:10]
    return dt.date.fromisoformat(text)


def _duration_us(value: int) -> dt.timedelta:
    return dt.timedelta(microseconds=value)


def _duration_ns(value: int) -> dt.timedelta:
    return dt.timedelta(microseconds=value // 1000)


_F32: Final = struct.Struct("<f")


# the JsonConverter's schema names FLOAT32 "float" and FLOAT64 "double"
_JSON_TYPE_NAMES: Final = MappingProxyType({"float": "float32", "double": "float64"})


def _connect_type(schema: Mapping[str, Any]) -> str:
    """The Connect type of a field schema, whichever spelling (JSON converter or Connect) it uses."""
    stype = str(schema.get("type"))
    return _JSON_TYPE_NAMES.get(stype, stype)


def _float32(value: Any) -> float:
    """The shortest decimal float that is the same float32 (what PostgreSQL prints for ``real``)."""
    x = float(value)
    if x != x or x in (float("inf"), float("-inf")) or x == 0.0:
        return x
    packed = _F32.pack(x)
    for digits in range(6, 10):
        candidate = float(f"{x:.{digits}g}")
        if _F32.pack(candidate) == packed:
            return candidate
    return x


def _unscaled_decimal(unscaled: int, scale: int) -> Decimal:
    return Decimal(f"{unscaled}E{-scale}")


def _bits_to_str(raw: bytes, width: int) -> str:
    bits = format(int.from_bytes(raw, "little"), "b")
    return bits.zfill(width) if width else bits


def _java_name_uuid(data: bytes) -> str:
    """``java.util.UUID.nameUUIDFromBytes``: MD5, version 3."""
    return str(uuid.UUID(bytes=hashlib.md5(data, usedforsecurity=False).digest(), version=3))


# --- fast constructors -------------------------------------------------------------------------

_T = TypeVar("_T")


def _fast_constructor(cls: type[_T]) -> Callable[..., _T]:
    """A keyword-only constructor of a frozen, slotted dataclass that sets the slots through their
    descriptors instead of ``object.__setattr__`` by name (what the dataclass ``__init__`` does):
    about twice as fast, and the decoder makes three such objects per record. Same result (same
    fields, defaults, equality, hash, immutability); the class itself is returned whenever it has
    anything this cannot reproduce (``__post_init__``, default factories, ``init=False`` fields,
    no slots)."""
    if not dataclasses.is_dataclass(cls) or "__slots__" not in cls.__dict__ or hasattr(cls, "__post_init__"):
        return cls
    env: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    params: list[str] = []
    body: list[str] = []
    for i, f in enumerate(dataclasses.fields(cls)):
        if not f.init or f.default_factory is not dataclasses.MISSING or not f.name.isidentifier():
            return cls
        env[f"_set{i}"] = getattr(cls, f.name).__set__
        if f.default is dataclasses.MISSING:
            params.append(f.name)
        else:
            env[f"_default{i}"] = f.default
            params.append(f"{f.name}=_default{i}")
        body.append(f"    _set{i}(obj, {f.name})")
    source = (
        f"def make(*, {', '.join(params)}):\n    obj = _new(_cls)\n" + "\n".join(body) + "\n    return obj\n"
    )
    exec(source, env)  # field names only (checked identifiers), as dataclasses itself does
    make: Callable[..., _T] = env["make"]
    return make


_new_change_event: Final = _fast_constructor(ChangeEvent)
_new_position: Final = _fast_constructor(SourcePosition)
_new_origin: Final = _fast_constructor(KafkaOrigin)
