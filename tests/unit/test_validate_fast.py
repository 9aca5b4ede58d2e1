"""The validator's fast tier and its output, as pure logic: what PostgreSQL and MariaDB/SQLite hand
back must reach the same text when the values are equal and stay apart when they are not."""

from __future__ import annotations

import decimal
import io

import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamer.validate.core import TableDiff
from streamer.validate.fast import compare_frames, copy_escape, fast_norm, read_copy_text, typed_key
from streamer.validate.report import (
    TableResult,
    as_json,
    difference_lines,
    json_value,
    key_text,
    sql_text,
)


def _norm(kind: str, values: list[str | None]) -> list[str | None]:
    return (
        pl.DataFrame({"v": values}, schema={"v": pl.String})
        .select(fast_norm(kind, pl.col("v")).alias("v"))["v"]
        .to_list()
    )


@pytest.mark.parametrize(
    ("kind", "postgres", "other"),
    [
        ("number", "1.50", "1.500000000000000000000000000000"),  # numeric(12,2) vs DECIMAL(65,30)
        ("number", "1.5", "1.50"),
        ("number", "-0.00", "0"),
        ("number", "12", "12"),
        ("number", "100", "100.00"),
        ("float4", "1.1", "1.100000023841858"),  # a real read back as a double
        ("float8", "0.1", "0.1"),
        ("float8", "25000", "25000.0"),
        ("bool", "true", "1"),
        ("bool", "f", "0"),
        ("timestamptz", "2024-01-01 10:00:00+00", "2024-01-01 10:00:00.000000"),
        ("timestamptz", "2024-01-01 10:00:00.5+00", "2024-01-01 10:00:00.500000"),
        ("timestamp", "2024-01-01 10:00:00.000005", "2024-01-01T10:00:00.000005"),
        ("time", "10:00:00", "10:00:00.000000"),
        ("bytes", "00ff", "00FF"),
        ("uuid", "00000000-0000-0000-0000-00000000000a", "00000000-0000-0000-0000-00000000000A"),
    ],
)
def test_equal_values_from_both_sides_reach_the_same_text(kind: str, postgres: str, other: str) -> None:
    a, b = _norm(kind, [postgres, other])
    assert a == b


@pytest.mark.parametrize(
    ("kind", "a", "b"),
    [
        ("number", "1.5", "1.51"),
        ("number", "10", "1"),
        ("number", "100", "1"),
        ("float8", "0.1", "0.10000001"),
        ("bool", "t", "0"),
        ("timestamptz", "2024-01-01 10:00:00.5+00", "2024-01-01 10:00:00.05"),
        ("timestamp", "2024-01-01 10:00:00", "2024-01-01 10:00:01"),
        ("text", "a", "a "),
        ("float8", "NaN-ish", "0"),  # not a number at all: kept apart, never equal to one
    ],
)
def test_unequal_values_stay_apart(kind: str, a: str, b: str) -> None:
    x, y = _norm(kind, [a, b])
    assert x != y


def test_null_and_empty_text_differ() -> None:
    s = pl.DataFrame({"c0": ["1", "2"], "c1": [None, ""]})
    t = pl.DataFrame({"c0": ["1", "2"], "c1": ["", None]})
    found = compare_frames(s, t, ["c0"])
    assert sorted(found.changed) == [("1",), ("2",)]


def test_copy_text_keeps_null_empty_and_escapes_apart() -> None:
    values = [None, "", "\\N", "a\tb", "a\\tb", "line\nbreak", "back\\slash"]
    escaped = (
        pl.DataFrame({"v": values}, schema={"v": pl.String})
        .select(copy_escape(pl.col("v")).alias("v"))["v"]
        .to_list()
    )
    data = "".join(("\\N" if v is None else v) + "\t1\n" for v in escaped).encode()
    read = read_copy_text(data, ["c0", "c1"])
    assert read["c0"].to_list() == escaped
    assert len(set(read["c0"].to_list())) == len(values)  # injective: no two values collide
    assert read["c0"][0] is None and read["c0"][1] == ""


@given(st.lists(st.one_of(st.none(), st.text(alphabet="ab\\\t\n\r\x08\x0b\x0cN", max_size=6)), max_size=20))
def test_copy_escape_is_injective(values: list[str | None]) -> None:
    escaped = (
        pl.DataFrame({"v": values}, schema={"v": pl.String})
        .select(copy_escape(pl.col("v")).alias("v"))["v"]
        .to_list()
    )
    assert len(set(escaped)) == len(set(values))
    buf = io.BytesIO("".join(("\\N" if v is None else v) + "\n" for v in escaped).encode())
    assert read_copy_text(buf.getvalue(), ["c0"])["c0"].to_list() == escaped


def test_compare_frames_names_missing_extra_and_changed_keys() -> None:
    s = pl.DataFrame({"c0": ["1", "2", "3"], "c1": ["a", "b", "c"]})
    t = pl.DataFrame({"c0": ["1", "3", "4"], "c1": ["a", "x", "d"]})
    found = compare_frames(s, t, ["c0"])
    assert found.missing == [("2",)] and found.extra == [("4",)] and found.changed == [("3",)]
    assert compare_frames(s, s.clone(), ["c0"]).differs is False


def test_typed_keys() -> None:
    assert typed_key(["number", "text"], ["77777", "abc"]) == (77777, "abc")
    assert typed_key(["number"], ["1.5"]) == (decimal.Decimal("1.5"),)


def _diff() -> TableDiff:
    d = TableDiff(
        key_columns=("customer_id", "order_no"),
        kinds={"customer_id": "number", "order_no": "number", "note": "text", "total": "number"},
    )
    d.missing = [(decimal.Decimal("2.003E+4"), 1)]
    d.extra = [(5, 13)]
    d.changed = [((5, 12), ["note", "total"])]
    d.values = {(5, 12): {"note": ("it's", None), "total": (decimal.Decimal("1.5"), decimal.Decimal("2E+1"))}}
    d.source_rows, d.target_rows = 10, 10
    return d


def test_keys_and_values_read_as_sql_text_never_a_python_repr() -> None:
    d = _diff()
    assert sql_text("number", decimal.Decimal("2.003E+4")) == "20030"
    assert sql_text("text", "it's") == "'it''s'"
    assert sql_text("text", None) == "NULL"
    assert sql_text("bool", True) == "true"
    assert sql_text("bytes", "00ff") == "'\\x00ff'"
    assert key_text(d, (5, 12)) == "customer_id=5, order_no=12"
    lines = difference_lines(TableResult("public.orders", "public.orders", d), limit=10, show_values=True)
    assert lines == [
        "DIFF table=public.orders key=customer_id=20030, order_no=1 missing in target",
        "DIFF table=public.orders key=customer_id=5, order_no=13 extra in target",
        "DIFF table=public.orders key=customer_id=5, order_no=12 changed columns=note,total "
        "note: source 'it''s' target NULL; total: source 1.5 target 20",
    ]
    hidden = difference_lines(TableResult("public.orders", "public.orders", d), limit=10, show_values=False)
    assert hidden[2] == "DIFF table=public.orders key=customer_id=5, order_no=12 changed columns=note,total"
    assert difference_lines(TableResult("t", "t", d), limit=1, show_values=False)[-1] == (
        "DIFF table=t ... 2 more (raise --limit to list them)"
    )


def test_json_keys_are_typed_and_values_only_when_asked() -> None:
    d = _diff()
    doc = as_json([TableResult("public.orders", "public.orders", d)], limit=100, show_values=False)
    table = doc["tables"][0]
    assert table["missing"] == [{"customer_id": 20030, "order_no": 1}]
    assert table["changed"] == [{"key": {"customer_id": 5, "order_no": 12}, "columns": ["note", "total"]}]
    shown = as_json([TableResult("public.orders", "public.orders", d)], limit=100, show_values=True)
    assert shown["tables"][0]["changed"][0]["values"] == {
        "note": {"source": "'it''s'", "target": "NULL"},
        "total": {"source": "1.5", "target": "20"},
    }
    assert json_value(decimal.Decimal("2.5")) == 2.5 and json_value("x") == "x"
