"""Normalization makes equal values from different databases compare equal, and unequal ones not."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamer.validate import normalize


@pytest.mark.parametrize(
    ("kind", "a", "b"),
    [
        ("number", decimal.Decimal("1.50"), decimal.Decimal("1.5")),
        ("number", decimal.Decimal("0.00"), 0),
        ("number", "12.30", decimal.Decimal("12.3")),
        ("bool", True, 1),
        (
            "timestamptz",
            dt.datetime(2024, 1, 1, 12, tzinfo=dt.timezone(dt.timedelta(hours=2))),
            dt.datetime(2024, 1, 1, 10),
        ),
        ("timestamptz", "2024-01-01T10:00:00Z", dt.datetime(2024, 1, 1, 10, tzinfo=dt.UTC)),
        ("timestamp", dt.datetime(2024, 1, 1, 10, 0, 0, 5), "2024-01-01 10:00:00.000005"),
        ("timestamp", dt.datetime.max, "infinity"),
        ("timetz", dt.time(10, 0, tzinfo=dt.timezone(dt.timedelta(hours=2))), "08:00:00Z"),
        ("interval", dt.timedelta(days=1, seconds=2), 86_402_000_000),
        ("json", '{"b": 1, "a": [1, 2]}', {"a": [1, 2], "b": 1}),
        ("array", "[1, 2]", [1, 2]),
        ("bytes", memoryview(b"\x00\xff"), b"\x00\xff"),
        ("uuid", uuid.UUID(int=1), "00000000-0000-0000-0000-000000000001"),
        ("float4", 1.100000023841858, 1.1),
    ],
)
def test_equal_values_normalize_equal(kind, a, b) -> None:
    assert normalize(kind, a) == normalize(kind, b)


@pytest.mark.parametrize(
    ("kind", "a", "b"),
    [
        ("number", decimal.Decimal("1.50"), decimal.Decimal("1.51")),
        # past 28 significant digits (the default context's precision): a value rounded at 30
        # fraction digits by a DECIMAL(65,30) target must not compare equal to the source's
        (
            "number",
            decimal.Decimal("0.12345678901234567890123456789012345"),
            decimal.Decimal("0.123456789012345678901234567890"),
        ),
        ("number", decimal.Decimal("1" * 40), decimal.Decimal("1" * 39 + "2")),
        ("timestamptz", dt.datetime(2024, 1, 1, 12, tzinfo=dt.UTC), dt.datetime(2024, 1, 1, 10)),
        ("json", '{"a": 1}', {"a": 2}),
        ("text", "a", "b"),
        ("bool", True, 0),
    ],
)
def test_unequal_values_stay_unequal(kind, a, b) -> None:
    assert normalize(kind, a) != normalize(kind, b)


@given(st.decimals(allow_nan=False, allow_infinity=False, places=4, min_value=-(10**9), max_value=10**9))
def test_number_normalization_ignores_trailing_zeros(d: decimal.Decimal) -> None:
    assert normalize("number", d) == normalize("number", decimal.Decimal(f"{d:.6f}"))


def test_a_mysql_timestamp_is_an_instant_and_a_datetime_is_not() -> None:
    """MySQL/MariaDB TIMESTAMP is stored in UTC and arrives from Debezium as an instant (a
    timestamptz target column): compared as UTC; DATETIME is a wall-clock value."""
    from sqlalchemy.dialects import mysql

    from streamer.validate.core import _kind

    assert _kind(mysql.TIMESTAMP(fsp=6)) == "timestamptz"
    assert _kind(mysql.DATETIME(fsp=6)) == "timestamp"
    stamp = dt.datetime(2024, 5, 1, 12, 0, 0, 123456)
    aware = stamp.replace(tzinfo=dt.timezone(dt.timedelta(hours=2))) + dt.timedelta(hours=2)
    assert normalize("timestamptz", stamp) == normalize("timestamptz", aware)
