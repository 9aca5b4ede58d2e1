"""Decoded Python values as each target's driver binds them correctly.

Each dialect module names its conversions by Python type (:data:`Adapters`); :func:`adapter`
turns such a table into one function. PostgreSQL binds nearly everything natively (JSON objects
go as text); MySQL/MariaDB and SQLite need datetimes without zones, intervals as microseconds,
JSON as text, and PostgreSQL's infinities and 24:00 (marker subclasses of the values they bound)
as the plain values they stand for.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from streamer.core.events import EndOfDay, InfiniteDate, InfiniteDatetime

Adapter = Callable[[Any], Any]
Adapters = Mapping[type, Adapter]

COMMON: dict[type, Adapter] = {uuid.UUID: str}


def iso_dt(v: dt.datetime) -> str:
    if v.tzinfo is not None:
        v = v.astimezone(dt.UTC).replace(tzinfo=None)
    return v.isoformat(sep=" ", timespec="microseconds")  # zero-padded years, unlike strftime


def utc_naive(v: dt.datetime) -> dt.datetime:
    return v.astimezone(dt.UTC).replace(tzinfo=None) if v.tzinfo is not None else v


def micros(v: dt.timedelta) -> int:
    return (v.days * 86400 + v.seconds) * 1_000_000 + v.microseconds


def json_text(v: Any) -> str:
    return json.dumps(v, default=str, separators=(",", ":"))


def time_text(v: dt.time) -> str:
    return v.isoformat()


# PostgreSQL's infinities and 24:00 arrive as marker subclasses; other targets store their bounds
def plain_datetime(v: dt.datetime) -> dt.datetime:
    return dt.datetime(v.year, v.month, v.day, v.hour, v.minute, v.second, v.microsecond, v.tzinfo)


def plain_date(v: dt.date) -> dt.date:
    return dt.date(v.year, v.month, v.day)


def plain_time(v: dt.time) -> dt.time:
    return dt.time(v.hour, v.minute, v.second, v.microsecond, v.tzinfo)


def then(first: Adapter, second: Adapter | None) -> Adapter:
    return first if second is None else lambda v: second(first(v))


def with_plain_bounds(table: Adapters) -> dict[type, Adapter]:
    """``table`` plus PostgreSQL's infinities and 24:00 as the plain values they stand for, then
    converted as ``table`` converts those (targets without such values store their bounds)."""
    return {
        **table,
        InfiniteDatetime: then(plain_datetime, table[dt.datetime]),
        InfiniteDate: then(plain_date, table.get(dt.date)),
        EndOfDay: then(plain_time, table.get(dt.time)),
    }


def adapter(table: Adapters) -> Adapter:
    """One function applying ``table``'s conversion of a value's exact type (others pass as they are)."""

    def adapt(v: Any) -> Any:
        fn = table.get(type(v))
        return fn(v) if fn is not None else v

    return adapt
