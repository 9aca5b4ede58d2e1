"""COPY text formatting against PostgreSQL's own input rules (checked end to end in test_sink)."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid

from streamer.apply.pgcopy import copy_rows, copy_value
from streamer.core.events import DATE_INFINITY, TIMESTAMP_NEG_INFINITY, EndOfDay


def test_scalars() -> None:
    assert copy_value(None) == "\\N"
    assert copy_value(True) == "t" and copy_value(False) == "f"
    assert copy_value(12) == "12"
    assert copy_value(decimal.Decimal("1.50")) == "1.50"
    assert copy_value(decimal.Decimal("NaN")) == "NaN"
    assert copy_value(float("inf")) == "Infinity" and copy_value(float("nan")) == "NaN"
    assert copy_value(b"\x00\xff") == "\\\\x00ff"
    assert copy_value(uuid.UUID(int=1)) == "00000000-0000-0000-0000-000000000001"
    assert (
        copy_value(dt.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC)) == "2024-01-02T03:04:05.000006+00:00"
    )
    assert copy_value(dt.timedelta(days=-1, microseconds=5)) == "-1 days 0 seconds 5 microseconds"


def test_escaping_of_delimiters() -> None:
    assert copy_value("a\tb\nc\\d\re") == "a\\tb\\nc\\\\d\\re"


def test_special_temporal_values() -> None:
    assert copy_value(DATE_INFINITY) == "infinity"
    assert copy_value(TIMESTAMP_NEG_INFINITY) == "-infinity"
    assert copy_value(EndOfDay(23, 59, 59, 999999)) == "24:00:00"


def test_arrays_and_json() -> None:
    assert copy_value(["a", None, 'q"uote', "back\\slash"]) == '{"a",NULL,"q\\\\"uote","back\\\\\\\\slash"}'
    assert copy_value([[1, 2], [3, 4]]) == '{{"1","2"},{"3","4"}}'
    assert copy_value({"k": [1, "x"]}) == '{"k":[1,"x"]}'


def test_rows() -> None:
    assert copy_rows([[1, "x", None], [2, "y\tz", True]]) == "1\tx\t\\N\n2\ty\\tz\tt\n"
