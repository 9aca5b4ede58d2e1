"""PostgreSQL COPY text format: Python values (as the decoders produce them) to COPY lines.

The apply engine loads each batch into a temporary table with ``COPY ... FROM STDIN`` and merges
it with one statement: on this machine about three times the rows per second of a multi-row
``INSERT ... ON CONFLICT`` (see ``make bench``).
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from streamer.core.events import EndOfDay, InfiniteDate, InfiniteDatetime

_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
NULL = "\\N"


def _escape(s: str) -> str:
    if "\\" in s or "\t" in s or "\n" in s or "\r" in s:
        return s.translate(_ESCAPES)
    return s


def _array_element(v: Any) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, list | tuple):
        return "{" + ",".join(_array_element(x) for x in v) + "}"
    s = _text(v)
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _float(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "Infinity" if v > 0 else "-Infinity"
    return repr(v)


def _decimal(v: decimal.Decimal) -> str:
    if v.is_nan():
        return "NaN"
    if v.is_infinite():
        return "Infinity" if v > 0 else "-Infinity"
    return str(v)


def _datetime(v: dt.datetime) -> str:
    if isinstance(v, InfiniteDatetime):
        return v.pg_literal
    return v.isoformat()


def _date(v: dt.date) -> str:
    if isinstance(v, InfiniteDate):
        return v.pg_literal
    return v.isoformat()


def _time(v: dt.time) -> str:
    if isinstance(v, EndOfDay):
        return EndOfDay.pg_literal
    return v.isoformat()


def _interval(v: dt.timedelta) -> str:
    return f"{v.days} days {v.seconds} seconds {v.microseconds} microseconds"


def _bytes(v: bytes | bytearray | memoryview) -> str:
    return "\\x" + bytes(v).hex()


_TEXT: dict[type, Callable[[Any], str]] = {
    str: lambda v: v,
    int: str,
    float: _float,
    decimal.Decimal: _decimal,
    dt.datetime: _datetime,
    InfiniteDatetime: _datetime,
    dt.date: _date,
    InfiniteDate: _date,
    dt.time: _time,
    EndOfDay: _time,
    dt.timedelta: _interval,
    uuid.UUID: str,
    bytes: _bytes,
    bytearray: _bytes,
    memoryview: _bytes,
    dict: lambda v: json.dumps(v, separators=(",", ":")),
    list: lambda v: "{" + ",".join(_array_element(x) for x in v) + "}",
    tuple: lambda v: "{" + ",".join(_array_element(x) for x in v) + "}",
}


def _text(v: Any) -> str:
    """PostgreSQL's text input form of a value (before COPY escaping)."""
    if v is True:
        return "t"
    if v is False:
        return "f"
    fn = _TEXT.get(type(v))
    if fn is None:
        for base, f in _TEXT.items():
            if isinstance(v, base):
                return f(v)
        return str(v)
    return fn(v)


def _escaped_text(v: Any) -> str:
    return _escape(_text(v))


# types whose text form can hold no tab, newline or backslash: their COPY field is that text
_PLAIN = (
    int,
    float,
    decimal.Decimal,
    dt.datetime,
    InfiniteDatetime,
    dt.date,
    InfiniteDate,
    dt.time,
    EndOfDay,
    dt.timedelta,
    uuid.UUID,
)
# type -> COPY field; any other type: its text, escaped
_COPY: dict[type, Callable[[Any], str]] = {
    **{t: _TEXT[t] for t in _PLAIN},
    type(None): lambda v: NULL,
    str: _escape,
    bool: lambda v: "t" if v else "f",
    # bytea's text starts with a backslash, doubled for COPY
    bytes: lambda v: "\\" + _bytes(v),
    bytearray: lambda v: "\\" + _bytes(v),
    memoryview: lambda v: "\\" + _bytes(v),
}


def copy_value(v: Any) -> str:
    """One COPY text field."""
    return _COPY.get(type(v), _escaped_text)(v)


def copy_rows(rows: Iterable[Sequence[Any]]) -> str:
    """COPY text for rows of values, one line each."""
    get = _COPY.get
    slow = _escaped_text
    return "".join("\t".join([get(type(v), slow)(v) for v in row]) + "\n" for row in rows)
