"""PostgreSQL column types for direct replication: text values -> the Python values Debezium gives.

``streamer replicate`` receives column values as PostgreSQL prints them (pgoutput's text
format). This module turns each into the *identical* Python value that the Debezium path
(Debezium's PostgreSQL connector with its defaults, then :mod:`streamer.decode.decoder`) produces for
the same source value, and describes each column with the :class:`~streamer.core.events.ColumnType`
Debezium's schema would carry (with ``column.propagate.source.type``), so both paths create the
same target tables and write the same rows.

The replication session is opened with fixed output settings (``DateStyle=ISO``,
``IntervalStyle=postgres``, ``TimeZone=UTC``, ``bytea_output=hex``, ``extra_float_digits=1``,
``lc_monetary=C``; see :data:`SESSION_OPTIONS`), so the text forms parsed here do not depend on
the server's or the role's defaults.

=============================  ==========================================  ============================
PostgreSQL type                ColumnType (base / logical)                 Python value
=============================  ==========================================  ============================
bool                           boolean                                     bool
int2 / int4 / int8, oid        int16 / int32 / int64, int64                int
float4                         float32                                     float: the shortest decimal
                                                                           that is the same float32
                                                                           (as decode does); NaN, +-inf
float8                         float64                                     float; NaN, +-inf
numeric(p, s)                  bytes / Connect ``Decimal`` (scale,         ``Decimal`` with exactly s
                               ``connect.decimal.precision``)              digits after the point
numeric                        struct / ``VariableScaleDecimal``           ``Decimal``, trailing zeros
                                                                           stripped, never a positive
                                                                           exponent (Debezium's
                                                                           ``stripTrailingZeros``)
numeric NaN / +-Infinity       as above                                    ``Decimal('NaN')``,
                                                                           ``Decimal('Infinity')``, ...
                                                                           (Debezium's default
                                                                           ``precise`` mode cannot
                                                                           carry them; we can)
money                          bytes / ``Decimal`` (scale 2)               ``Decimal``, 2 decimals. The
                                                                           session's ``lc_monetary=C``
                                                                           makes the text
                                                                           ``-$1,234.56``; any currency
                                                                           sign, group separator and
                                                                           ``(..)`` negative is accepted
text, varchar, bpchar, name,   string                                      str
char, citext
bytea                          bytes                                       bytes (hex form; the escape
                                                                           form is accepted too)
date                           int32 / ``io.debezium.time.Date``           date;
                                                                           ``DATE_[NEG_]INFINITY``
time(p)                        ``Time`` (p <= 3) / ``MicroTime``           time; ``24:00:00`` gives
                                                                           ``TIME_24_00``
timetz                         string / ``ZonedTime``                      aware time, moved to UTC
timestamp(p)                   ``Timestamp`` (p <= 3) / ``MicroTimestamp`` naive datetime;
                                                                           ``TIMESTAMP_[NEG_]INFINITY``
timestamptz                    string / ``ZonedTimestamp``                 aware datetime in UTC;
                                                                           ``TIMESTAMPTZ_[NEG_]INFINITY``
interval                       int64 / ``MicroDuration``                   timedelta, computed exactly
                                                                           as Debezium does (pgjdbc's
                                                                           ``PGInterval`` parse, then
                                                                           ``MicroDuration.durationMicros``
                                                                           with 365.25/12 days a month
                                                                           in double precision)
uuid                           string / ``io.debezium.data.Uuid``          ``uuid.UUID``
json, jsonb                    string / ``io.debezium.data.Json``          str, the text as sent
xml                            string / ``io.debezium.data.Xml``           str
enum types                     string / ``io.debezium.data.Enum``          str
                               (``allowed``: the labels)
bit(1), varbit(1)              boolean                                     bool
bit(n), varbit                 bytes / ``io.debezium.data.Bits``           str of ``0``/``1`` (as
                                                                           decode gives, but varbit
                                                                           keeps its leading zeros)
arrays of the above            array (items: the element's type)           list (nested for
                                                                           multi-dimensional arrays),
                                                                           ``None`` for NULL elements
domains                        those of their base type                    those of their base type
inet, cidr, macaddr(8),        string                                      str, as PostgreSQL prints it
ranges, tsvector, ltree,
pg_lsn, geometric types,
composite types, hstore and
**any other type**
=============================  ==========================================  ============================

Any other type is taken as text (``string`` with its source type name): unlike Debezium, which
drops columns of unknown types unless ``include.unknown.datatypes`` is on (and then sends
bytes), the value reaches the target as PostgreSQL prints it. Geometric types and hstore differ
from Debezium too (it sends structs / a JSON map for them): text here.

Values outside what Python can hold (dates and timestamps BC or after 9999) raise
:class:`PgValueError`, as decode raises ``DecodeError`` for them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import math
import re
import struct
import uuid
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Final, Protocol

from streamer.core.errors import StreamerError
from streamer.core.events import (
    DATE_INFINITY,
    DATE_NEG_INFINITY,
    TIME_24_00,
    TIMESTAMP_INFINITY,
    TIMESTAMP_NEG_INFINITY,
    TIMESTAMPTZ_INFINITY,
    TIMESTAMPTZ_NEG_INFINITY,
    ColumnType,
)

__all__ = [
    "SESSION_OPTIONS",
    "ColumnPlan",
    "PgType",
    "PgValueError",
    "TypeLookup",
    "builtin_type",
    "column_plan",
    "parse_array",
]

Converter = Callable[[str], Any]

# GUCs of the replication session: they fix the text forms parsed below.
SESSION_OPTIONS: Final = (
    ("DateStyle", "ISO"),
    ("IntervalStyle", "postgres"),
    ("TimeZone", "UTC"),
    ("bytea_output", "hex"),
    ("extra_float_digits", "1"),
    ("lc_monetary", "C"),
)


class PgValueError(StreamerError):
    """A column value PostgreSQL sent cannot be converted (e.g. a date BC: Python has no year 0)."""

    def __init__(self, message: str, lsn: int | None = None) -> None:
        super().__init__(message)
        self.lsn = lsn


# --------------------------------------------------------------------------- type catalog
@dataclasses.dataclass(frozen=True, slots=True)
class PgType:
    """What ``pg_type`` says of a type (and ``pg_enum`` of an enum)."""

    oid: int
    name: str  # typname
    kind: str = "b"  # typtype: b base, e enum, d domain, c composite, r range, m multirange, p pseudo
    category: str = "U"  # typcategory (A = array)
    elem: int = 0  # typelem: element type of an array
    base: int = 0  # typbasetype: base type of a domain
    base_typmod: int = -1  # typtypmod: the domain's typmod
    delim: str = ","
    enum_labels: tuple[str, ...] = ()

    @property
    def is_array(self) -> bool:
        return self.category == "A" and self.elem != 0


class TypeLookup(Protocol):
    """Resolves a type OID (the built-in ones need no database; others come from the catalog)."""

    def __call__(self, oid: int) -> PgType: ...


BOOL, BYTEA, CHAR, NAME, INT8, INT2, INT4, TEXT, OID = 16, 17, 18, 19, 20, 21, 23, 25, 26
JSON, XML, FLOAT4, FLOAT8, MONEY = 114, 142, 700, 701, 790
BPCHAR, VARCHAR, DATE, TIME, TIMESTAMP, TIMESTAMPTZ, INTERVAL, TIMETZ = (
    1042,
    1043,
    1082,
    1083,
    1114,
    1184,
    1186,
    1266,
)
BIT, VARBIT, NUMERIC, UUID, JSONB = 1560, 1562, 1700, 2950, 3802

_BUILTIN_BASE: Final = {
    BOOL: ("bool", "B"),
    BYTEA: ("bytea", "U"),
    CHAR: ("char", "Z"),
    NAME: ("name", "S"),
    INT8: ("int8", "N"),
    INT2: ("int2", "N"),
    INT4: ("int4", "N"),
    TEXT: ("text", "S"),
    OID: ("oid", "N"),
    JSON: ("json", "U"),
    XML: ("xml", "U"),
    600: ("point", "G"),
    650: ("cidr", "I"),
    FLOAT4: ("float4", "N"),
    FLOAT8: ("float8", "N"),
    774: ("macaddr8", "U"),
    MONEY: ("money", "N"),
    829: ("macaddr", "U"),
    869: ("inet", "I"),
    BPCHAR: ("bpchar", "S"),
    VARCHAR: ("varchar", "S"),
    DATE: ("date", "D"),
    TIME: ("time", "D"),
    TIMESTAMP: ("timestamp", "D"),
    TIMESTAMPTZ: ("timestamptz", "D"),
    INTERVAL: ("interval", "T"),
    TIMETZ: ("timetz", "D"),
    BIT: ("bit", "V"),
    VARBIT: ("varbit", "V"),
    NUMERIC: ("numeric", "N"),
    UUID: ("uuid", "U"),
    3220: ("pg_lsn", "U"),
    3614: ("tsvector", "U"),
    JSONB: ("jsonb", "U"),
    3904: ("int4range", "R"),
    3906: ("numrange", "R"),
    3908: ("tsrange", "R"),
    3910: ("tstzrange", "R"),
    3912: ("daterange", "R"),
    3926: ("int8range", "R"),
}
_BUILTIN_ARRAYS: Final = {
    1000: BOOL,
    1001: BYTEA,
    1002: CHAR,
    1003: NAME,
    1016: INT8,
    1005: INT2,
    1007: INT4,
    1009: TEXT,
    1028: OID,
    199: JSON,
    143: XML,
    1017: 600,
    651: 650,
    1021: FLOAT4,
    1022: FLOAT8,
    775: 774,
    791: MONEY,
    1040: 829,
    1041: 869,
    1014: BPCHAR,
    1015: VARCHAR,
    1182: DATE,
    1183: TIME,
    1115: TIMESTAMP,
    1185: TIMESTAMPTZ,
    1187: INTERVAL,
    1270: TIMETZ,
    1561: BIT,
    1563: VARBIT,
    1231: NUMERIC,
    2951: UUID,
    3221: 3220,
    3643: 3614,
    3807: JSONB,
    3905: 3904,
    3907: 3906,
    3909: 3908,
    3911: 3910,
    3913: 3912,
    3927: 3926,
}


# what a catalog lookup of a type reads (one row, or none when the type was dropped since)
TYPE_QUERY: Final = (
    "SELECT t.typname, t.typtype, t.typcategory, t.typelem, t.typbasetype, t.typtypmod, t.typdelim, "
    "CASE WHEN t.typtype = 'e' THEN ARRAY(SELECT e.enumlabel::text FROM pg_enum e "
    "WHERE e.enumtypid = t.oid ORDER BY e.enumsortorder) END "
    "FROM pg_type t WHERE t.oid = %s"
)
_SERIALS: Final = {"int2": "smallserial", "int4": "serial", "int8": "bigserial"}


def type_from_row(oid: int, row: Sequence[Any] | None) -> PgType:
    """The :class:`PgType` of a :data:`TYPE_QUERY` row; a dropped type's values are taken as text."""
    if row is None:
        return PgType(oid, f"oid{oid}")
    name, kind, category, elem, base, typmod, delim, labels = row
    return PgType(oid, name, kind, category, int(elem), int(base), int(typmod), delim, tuple(labels or ()))


def reported_type_name(typname: str, default: str | None) -> str:
    """The type name Debezium reports (pgjdbc's): integer columns fed by a sequence are serials."""
    return _SERIALS[typname] if typname in _SERIALS and default and "nextval(" in default else typname


def builtin_type(oid: int) -> PgType | None:
    """The built-in types this module knows without asking the catalog."""
    base = _BUILTIN_BASE.get(oid)
    if base is not None:
        return PgType(oid, base[0], category=base[1])
    elem = _BUILTIN_ARRAYS.get(oid)
    if elem is not None:
        return PgType(oid, "_" + _BUILTIN_BASE[elem][0], category="A", elem=elem)
    return None


# --------------------------------------------------------------------------- pgjdbc's lengths
# Debezium takes a column's length and scale from pgjdbc's TypeInfoCache (getPrecision, getScale,
# getDisplaySize) applied to the pgoutput relation's type OID and typmod; reproduced here for the
# ``__debezium.source.column.length``/``scale`` parameters.
_UNKNOWN_LENGTH: Final = 2**31 - 1


def _display_size(oid: int, typmod: int) -> int:
    if oid in (INT2,):
        return 6
    if oid == INT4:
        return 11
    if oid == OID:
        return 10
    if oid == INT8:
        return 20
    if oid == FLOAT4:
        return 15
    if oid == FLOAT8:
        return 25
    if oid in (CHAR, BOOL):
        return 1
    if oid == DATE:
        return 13
    if oid in (TIME, TIMETZ, TIMESTAMP, TIMESTAMPTZ):
        second = {-1: 7, 0: 0, 1: 3}.get(typmod, typmod + 1)
        return {TIME: 8, TIMETZ: 14, TIMESTAMP: 22, TIMESTAMPTZ: 28}[oid] + second
    if oid == INTERVAL:
        return 49
    if oid in (VARCHAR, BPCHAR):
        return _UNKNOWN_LENGTH if typmod == -1 else typmod - 4
    if oid == NUMERIC:
        if typmod == -1:
            return 131089
        precision = ((typmod - 4) >> 16) & 0xFFFF
        scale = (typmod - 4) & 0xFFFF
        return 1 + precision + (1 if scale != 0 else 0)
    if oid == BIT:
        return typmod
    if oid == VARBIT:
        return _UNKNOWN_LENGTH if typmod == -1 else typmod
    return _UNKNOWN_LENGTH


def _precision(oid: int, typmod: int) -> int:
    if oid == INT2:
        return 5
    if oid in (OID, INT4):
        return 10
    if oid == INT8:
        return 19
    if oid == FLOAT4:
        return 8
    if oid == FLOAT8:
        return 17
    if oid == NUMERIC:
        return 0 if typmod == -1 else ((typmod - 4) & 0xFFFF0000) >> 16
    if oid in (CHAR, BOOL):
        return 1
    if oid in (BPCHAR, VARCHAR):
        return _UNKNOWN_LENGTH if typmod == -1 else typmod - 4
    if oid in (DATE, TIME, TIMETZ, INTERVAL, TIMESTAMP, TIMESTAMPTZ):
        return _display_size(oid, typmod)
    if oid == BIT:
        return typmod
    if oid == VARBIT:
        return _UNKNOWN_LENGTH if typmod == -1 else typmod
    return _UNKNOWN_LENGTH


def _scale(oid: int, typmod: int) -> int:
    if oid == FLOAT4:
        return 8
    if oid == FLOAT8:
        return 17
    if oid == NUMERIC:
        return 0 if typmod == -1 else (typmod - 4) & 0xFFFF
    if oid in (TIME, TIMETZ, TIMESTAMP, TIMESTAMPTZ):
        return 6 if typmod == -1 else typmod
    if oid == INTERVAL:
        return 6 if typmod == -1 else typmod & 0xFFFF
    return 0


def length_and_scale(oid: int, typmod: int) -> tuple[int, int]:
    """(length, scale) of a column as Debezium's pgoutput decoder computes them (``oid``: array -> element)."""
    if typmod != -1:
        return _precision(oid, typmod), _scale(oid, typmod)
    size = _precision(oid, -1)
    if size == 0:
        size = _display_size(oid, -1)
    return size, _scale(oid, -1)


# --------------------------------------------------------------------------- converters
_EPOCH_DATE: Final = dt.date(2000, 1, 1)
_WIDE: Final = decimal.Context(prec=decimal.MAX_PREC, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)
_F32: Final = struct.Struct("<f")
_NUMERIC_SPECIAL: Final = MappingProxyType(
    {"NaN": Decimal("NaN"), "Infinity": Decimal("Infinity"), "-Infinity": Decimal("-Infinity")}
)


def _bool(text: str) -> bool:
    return text == "t"


def _float32(text: str) -> float:
    """float4 text -> the shortest decimal that is the same float32 (what decode gives)."""
    x = float(text)
    if x != x or x in (math.inf, -math.inf) or x == 0.0:
        return x
    x = float(_F32.unpack(_F32.pack(x))[0])
    packed = _F32.pack(x)
    for digits in range(6, 10):
        candidate = float(f"{x:.{digits}g}")
        if _F32.pack(candidate) == packed:
            return candidate
    return x


def _numeric_fixed(scale: int) -> Converter:
    quantum = Decimal(1).scaleb(-scale)

    def conv(text: str) -> Decimal:
        special = _NUMERIC_SPECIAL.get(text)
        if special is not None:
            return special
        value = Decimal(text)
        if value.as_tuple().exponent != -scale:
            value = value.quantize(quantum, rounding=decimal.ROUND_HALF_UP, context=_WIDE)
        return value

    return conv


def _numeric_variable(text: str) -> Decimal:
    special = _NUMERIC_SPECIAL.get(text)
    if special is not None:
        return special
    value = Decimal(text).normalize(_WIDE)
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent > 0:
        value = value.quantize(Decimal(1), context=_WIDE)
    return value


_MONEY_JUNK: Final = re.compile(r"[^0-9.]")
_CENT: Final = Decimal("0.01")


def _money(text: str) -> Decimal:
    """``-$1,234.56``, ``($1,234.56)``, ``1.234,56 EUR``-free forms: sign, digits and the point."""
    t = text.strip()
    negative = t.startswith(("-", "(")) or t.endswith(("-", ")"))
    digits = _MONEY_JUNK.sub("", t)
    if not digits or digits == ".":
        raise ValueError(f"not a money value: {text!r}")
    value = Decimal(digits).quantize(_CENT, rounding=decimal.ROUND_HALF_UP, context=_WIDE)
    return -value if negative else value


_BYTEA_ESCAPE: Final = re.compile(r"\\(\\|[0-7]{3})")


def _bytea(text: str) -> bytes:
    if text.startswith("\\x"):
        return bytes.fromhex(text[2:])
    # escape format: printable bytes as they are, \\ and \ooo octal escapes
    raw = text.encode("latin-1")
    out = bytearray()
    i = 0
    n = len(raw)
    while i < n:
        c = raw[i]
        if c == 0x5C:  # backslash
            if raw[i + 1 : i + 2] == b"\\":
                out.append(0x5C)
                i += 2
            else:
                out.append(int(raw[i + 1 : i + 4], 8))
                i += 4
        else:
            out.append(c)
            i += 1
    return bytes(out)


def _date(text: str) -> dt.date:
    if len(text) == 10:
        return dt.date.fromisoformat(text)
    if text == "infinity":
        return DATE_INFINITY
    if text == "-infinity":
        return DATE_NEG_INFINITY
    raise PgValueError(f"date {text!r} is outside the years 1-9999 Python can represent")


def _time(text: str) -> dt.time:
    if text.startswith("24:"):
        return TIME_24_00
    return dt.time.fromisoformat(text)


_DAY: Final = dt.timedelta(days=1)


def _timetz(text: str) -> dt.time:
    """timetz -> aware time in UTC (Debezium's ZonedTime moves the offset to UTC)."""
    if text.startswith("24:"):
        # 24:00:00+hh: the same instant as 00:00 of the next day at that offset
        parsed = dt.time.fromisoformat("00:" + text[3:])
        wall = dt.timedelta(hours=24)
    else:
        parsed = dt.time.fromisoformat(text)
        wall = dt.timedelta(
            hours=parsed.hour, minutes=parsed.minute, seconds=parsed.second, microseconds=parsed.microsecond
        )
    offset = parsed.utcoffset() or dt.timedelta(0)
    utc = (wall - offset) % _DAY
    seconds, micros = divmod(utc // dt.timedelta(microseconds=1), 1_000_000)
    minutes, s = divmod(seconds, 60)
    h, m = divmod(minutes, 60)
    return dt.time(h, m, s, micros, tzinfo=dt.UTC)


def _timestamp(text: str) -> dt.datetime:
    if text[4:5] == "-" and not text.endswith(" BC"):
        return dt.datetime.fromisoformat(text)
    if text == "infinity":
        return TIMESTAMP_INFINITY
    if text == "-infinity":
        return TIMESTAMP_NEG_INFINITY
    raise PgValueError(f"timestamp {text!r} is outside the years 1-9999 Python can represent")


def _timestamptz(text: str) -> dt.datetime:
    if text[4:5] == "-" and not text.endswith(" BC"):
        value = dt.datetime.fromisoformat(text)
        offset = value.utcoffset()
        if offset:
            try:
                return value.astimezone(dt.UTC)
            except OverflowError:
                raise PgValueError(
                    f"timestamptz {text!r} is outside the years 1-9999 Python can represent"
                ) from None
        return value.replace(tzinfo=dt.UTC)
    if text == "infinity":
        return TIMESTAMPTZ_INFINITY
    if text == "-infinity":
        return TIMESTAMPTZ_NEG_INFINITY
    raise PgValueError(f"timestamptz {text!r} is outside the years 1-9999 Python can represent")


_DAYS_PER_MONTH_AVG: Final = 365.25 / 12.0  # io.debezium.time.MicroDuration.DAYS_PER_MONTH_AVG


def _java_round(x: float) -> int:
    """``java.lang.Math.round(double)``: the closest long, ties toward positive infinity."""
    if x != x:
        return 0
    floor = math.floor(x)
    return int(floor) + (1 if x - floor >= 0.5 else 0)


def _java_div(a: int, b: int) -> int:
    """Java's long division (truncates toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def interval_micros(text: str) -> int:
    """Microseconds of an interval as Debezium computes them (``interval.handling.mode=numeric``).

    pgjdbc's ``PGInterval(String)`` parses the text into years, months, days, hours, minutes and
    seconds (a double, rounded to microseconds); ``MicroDuration.durationMicros`` then counts a
    month as 365.25/12 days, in double precision, and truncates to a long. Reproduced operation
    by operation, so the result is the same long.
    """
    years = months = days = hours = minutes = 0
    seconds = 0.0
    value_token: str | None = None
    tokens = text.replace("+", " ").replace("@", " ").lower().split()
    for i, token in enumerate(tokens, start=1):
        if i & 1:
            end_hours = token.find(":")
            if end_hours == -1:
                value_token = token
                continue
            negative = token[0] == "-"
            start = 1 if negative else 0
            hours = int(token[start:end_hours])
            minutes = int(token[end_hours + 1 : end_hours + 3])
            end_minutes = token.find(":", end_hours + 1)
            if end_minutes != -1:
                seconds = float(token[end_minutes + 1 :])
            if negative:
                hours, minutes, seconds = -hours, -minutes, -seconds
            value_token = None
        else:
            number = 0 if value_token is None else int(value_token)
            if token.startswith("year"):
                years = number
            elif token.startswith("mon"):
                months = number
            elif token.startswith("day"):
                days = number
            elif token.startswith("hour"):
                hours = number
            elif token.startswith("min"):
                minutes = number
            elif token.startswith("sec"):
                seconds = 0.0 if value_token is None else float(value_token)
    # PGInterval.setSeconds / getSeconds
    total_micros = _java_round(seconds * 1_000_000)
    whole = _java_div(total_micros, 1_000_000)
    micro = total_micros - whole * 1_000_000
    secs = whole + micro / 1_000_000
    # MicroDuration.durationMicros(years, months, days, hours, minutes, seconds, 0, 365.25 / 12)
    number_of_days = (years * 12 + months) * _DAYS_PER_MONTH_AVG + days
    number_of_seconds = (((number_of_days * 24 + hours) * 60) + minutes) * 60 + secs
    return int(number_of_seconds * 1e6 + 0)


def _interval(text: str) -> dt.timedelta:
    return dt.timedelta(microseconds=interval_micros(text))


def _bit_bool(text: str) -> bool:
    return text == "1"


# --------------------------------------------------------------------------- arrays
def parse_array(text: str, delim: str = ",") -> list[Any]:
    """A PostgreSQL array literal as printed by ``array_out``: nested lists of str, None for NULL.

    Accepts the ``[lo:hi]=`` dimension decoration (lower bounds other than 1 are dropped).
    """
    if text.startswith("["):
        text = text[text.index("=") + 1 :]
    try:
        result, end = _parse_array(text, 0, delim)
    except IndexError:
        raise ValueError(f"unterminated array literal: {text[:200]!r}") from None
    if text[end:].strip():
        raise ValueError(f"trailing characters after array literal: {text[end:]!r}")
    return result


def _parse_array(text: str, i: int, delim: str) -> tuple[list[Any], int]:
    if text[i] != "{":
        raise ValueError(f"array literal does not start with '{{' at {i}: {text!r}")
    i += 1
    out: list[Any] = []
    n = len(text)
    while i < n and text[i] == " ":
        i += 1
    if text[i] == "}":
        return out, i + 1
    while True:
        c = text[i]
        if c == "{":
            sub, i = _parse_array(text, i, delim)
            out.append(sub)
        elif c == '"':
            i += 1
            start = i
            parts: list[str] = []
            while True:
                c = text[i]
                if c == "\\":
                    parts.append(text[start:i])
                    parts.append(text[i + 1])
                    i += 2
                    start = i
                elif c == '"':
                    parts.append(text[start:i])
                    i += 1
                    break
                else:
                    i += 1
            out.append("".join(parts))
        else:
            j = i
            while text[j] != delim and text[j] != "}":
                j += 1
            token = text[i:j].strip()
            out.append(None if token.upper() == "NULL" else token)
            i = j
        while text[i] == " ":
            i += 1
        c = text[i]
        if c == delim:
            i += 1
            while text[i] == " ":
                i += 1
            continue
        if c == "}":
            return out, i + 1
        raise ValueError(f"unexpected {c!r} at {i} in array literal {text!r}")


def _map_nested(values: list[Any], conv: Converter | None) -> list[Any]:
    if conv is None:
        return [v if not isinstance(v, list) else _map_nested(v, None) for v in values]
    return [None if v is None else _map_nested(v, conv) if isinstance(v, list) else conv(v) for v in values]


def _array_converter(elem: Converter | None, delim: str) -> Converter:
    def conv(text: str) -> list[Any]:
        return _map_nested(parse_array(text, delim), elem)

    return conv


# --------------------------------------------------------------------------- column plans
_DBZ_TIME = "io.debezium.time."
_DBZ_DATA = "io.debezium.data."
_DECIMAL = "org.apache.kafka.connect.data.Decimal"


@dataclasses.dataclass(frozen=True, slots=True)
class ColumnPlan:
    """How one column is described (``ColumnType``) and converted (``None``: the text is the value)."""

    column_type: ColumnType
    convert: Converter | None


def _scalar(root: PgType, typmod: int, lookup: TypeLookup, optional: bool) -> ColumnPlan:
    """Base/logical type and converter of a non-array type (``root``: domains already resolved)."""
    oid = root.oid
    length, scale = length_and_scale(oid, typmod)

    def ct(base: str, logical: str | None = None, **params: str) -> ColumnType:
        return ColumnType(base, logical, optional, MappingProxyType(dict(params)))

    if oid == BOOL:
        return ColumnPlan(ct("boolean"), _bool)
    if oid == INT2:
        return ColumnPlan(ct("int16"), int)
    if oid == INT4:
        return ColumnPlan(ct("int32"), int)
    if oid in (INT8, OID):
        return ColumnPlan(ct("int64"), int)
    if oid == FLOAT4:
        return ColumnPlan(ct("float32"), _float32)
    if oid == FLOAT8:
        return ColumnPlan(ct("float64"), float)
    if oid == NUMERIC:
        if (length in (0, 131089)) and scale == 0:
            return ColumnPlan(ct("struct", _DBZ_DATA + "VariableScaleDecimal"), _numeric_variable)
        return ColumnPlan(
            ct("bytes", _DECIMAL, **{"scale": str(scale), "connect.decimal.precision": str(length)}),
            _numeric_fixed(scale),
        )
    if oid == MONEY:
        return ColumnPlan(ct("bytes", _DECIMAL, scale="2"), _money)
    if oid == BYTEA:
        return ColumnPlan(ct("bytes"), _bytea)
    if oid == DATE:
        return ColumnPlan(ct("int32", _DBZ_TIME + "Date"), _date)
    if oid == TIME:
        if scale <= 3:
            return ColumnPlan(ct("int32", _DBZ_TIME + "Time"), _time)
        return ColumnPlan(ct("int64", _DBZ_TIME + "MicroTime"), _time)
    if oid == TIMETZ:
        return ColumnPlan(ct("string", _DBZ_TIME + "ZonedTime"), _timetz)
    if oid == TIMESTAMP:
        if scale <= 3:
            return ColumnPlan(ct("int64", _DBZ_TIME + "Timestamp"), _timestamp)
        return ColumnPlan(ct("int64", _DBZ_TIME + "MicroTimestamp"), _timestamp)
    if oid == TIMESTAMPTZ:
        return ColumnPlan(ct("string", _DBZ_TIME + "ZonedTimestamp"), _timestamptz)
    if oid == INTERVAL:
        return ColumnPlan(ct("int64", _DBZ_TIME + "MicroDuration"), _interval)
    if oid == UUID:
        return ColumnPlan(ct("string", _DBZ_DATA + "Uuid"), uuid.UUID)
    if oid in (JSON, JSONB):
        return ColumnPlan(ct("string", _DBZ_DATA + "Json"), None)
    if oid == XML:
        return ColumnPlan(ct("string", _DBZ_DATA + "Xml"), None)
    if oid in (BIT, VARBIT):
        if length == 1:
            return ColumnPlan(ct("boolean"), _bit_bool)
        return ColumnPlan(ct("bytes", _DBZ_DATA + "Bits", length=str(length)), None)
    if root.kind == "e":
        return ColumnPlan(ct("string", _DBZ_DATA + "Enum", allowed=",".join(root.enum_labels)), None)
    if root.name == "ltree":
        return ColumnPlan(ct("string", _DBZ_DATA + "Ltree"), None)
    return ColumnPlan(ct("string"), None)  # text types and every other type: the text itself


def resolve_domain(pgtype: PgType, typmod: int, lookup: TypeLookup) -> tuple[PgType, int]:
    """The root (non-domain) type of a type, with the typmod that applies."""
    seen = 0
    while pgtype.kind == "d" and pgtype.base and seen < 32:
        if typmod == -1:
            typmod = pgtype.base_typmod
        pgtype = lookup(pgtype.base)
        seen += 1
    return pgtype, typmod


def column_plan(
    name: str,
    type_oid: int,
    typmod: int,
    lookup: TypeLookup,
    *,
    optional: bool = True,
    source_type: str | None = None,
    comment: str | None = None,
) -> ColumnPlan:
    """The :class:`ColumnType` (with Debezium's ``__debezium.source.column.*`` parameters) and the
    converter of a column of type ``type_oid``/``typmod`` as a pgoutput Relation message gives them.

    ``source_type`` is the type name Debezium reports (pgjdbc's, e.g. ``bigserial`` for a bigint
    column with a sequence default); default: the type's ``typname``.
    """
    declared = lookup(type_oid)
    root, root_typmod = resolve_domain(declared, typmod, lookup)
    if root.is_array:
        elem, _ = resolve_domain(lookup(root.elem), -1, lookup)
        elem_plan = _scalar(elem, root_typmod, lookup, True)
        length, scale = length_and_scale(elem.oid, root_typmod)
        base = ColumnType("array", None, optional, MappingProxyType({}), items=elem_plan.column_type)
        convert: Converter | None = _array_converter(elem_plan.convert, elem.delim)
    else:
        plan = _scalar(root, root_typmod, lookup, optional)
        length, scale = length_and_scale(root.oid, root_typmod)
        base, convert = plan.column_type, plan.convert
    params: dict[str, str] = dict(base.params)
    params["__debezium.source.column.type"] = (source_type or declared.name).upper()
    if length != -1:
        params["__debezium.source.column.length"] = str(length)
    params["__debezium.source.column.scale"] = str(scale)
    if comment:
        params["__debezium.source.column.comment"] = comment
    params["__debezium.source.column.name"] = name
    return ColumnPlan(dataclasses.replace(base, params=MappingProxyType(params)), convert)


def describe_type(columns: Mapping[str, ColumnType]) -> str:
    """One line per column for logs and errors."""
    return ", ".join(f"{n} {t.logical or t.base}" for n, t in columns.items())
