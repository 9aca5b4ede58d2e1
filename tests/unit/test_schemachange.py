"""The pure classification of a source column's type change (streamer.apply.schemachange)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql

from streamer.apply.schema import sql_type
from streamer.apply.schemachange import TypeChange, TypeShape, classify, mysql_shape, shape_of
from streamer.core.events import ColumnType
from streamer.settings import load_settings

DEC = "org.apache.kafka.connect.data.Decimal"


def dec(p: int, s: int) -> ColumnType:
    return ColumnType("bytes", DEC, params={"connect.decimal.precision": str(p), "scale": str(s)})


def varchar(n: int) -> ColumnType:
    return ColumnType(
        "string",
        params={"__debezium.source.column.type": "VARCHAR", "__debezium.source.column.length": str(n)},
    )


@pytest.mark.parametrize(
    ("old", "new", "kind"),
    [
        (ColumnType("int32"), ColumnType("int64"), TypeChange.WIDEN),
        (ColumnType("int16"), ColumnType("int32"), TypeChange.WIDEN),
        (ColumnType("int64"), ColumnType("int32"), TypeChange.NARROW),
        (ColumnType("int32"), ColumnType("int32"), TypeChange.SAME),
        (varchar(10), varchar(20), TypeChange.WIDEN),
        (varchar(10), ColumnType("string"), TypeChange.WIDEN),
        (ColumnType("string"), varchar(10), TypeChange.NARROW),
        (dec(10, 2), dec(12, 2), TypeChange.WIDEN),
        (dec(10, 2), dec(12, 4), TypeChange.WIDEN),
        (dec(12, 4), dec(10, 2), TypeChange.NARROW),
        (dec(10, 2), dec(10, 4), TypeChange.INCOMPATIBLE),  # more scale, fewer integer digits
        (ColumnType("int32"), dec(12, 0), TypeChange.WIDEN),
        (ColumnType("int32"), dec(8, 0), TypeChange.NARROW),  # every numeric(8,0) fits an int
        (ColumnType("int32"), dec(12, 2), TypeChange.WIDEN),
        (dec(12, 2), ColumnType("int32"), TypeChange.NARROW),
        (dec(6, 2), ColumnType("int32"), TypeChange.INCOMPATIBLE),
        (ColumnType("int32"), ColumnType("string"), TypeChange.INCOMPATIBLE),
        (ColumnType("string"), ColumnType("int32"), TypeChange.INCOMPATIBLE),
        (ColumnType("float64"), ColumnType("int64"), TypeChange.INCOMPATIBLE),
        (ColumnType("float32"), ColumnType("float64"), TypeChange.WIDEN),
        (ColumnType("boolean"), ColumnType("int32"), TypeChange.SAME),  # not comparable: left to the database
    ],
)
@pytest.mark.parametrize("dialect", ["postgresql", "mysql", "sqlite"])
def test_classify_source_type_changes(
    old: ColumnType, new: ColumnType, kind: TypeChange, dialect: str
) -> None:
    assert classify(shape_of(sql_type(old, dialect)), shape_of(sql_type(new, dialect))) is kind


def test_reflected_types_have_the_shapes_of_the_compiled_ones() -> None:
    assert shape_of(postgresql.INTEGER()) == TypeShape("int", 32)
    assert shape_of(postgresql.BIGINT()) == TypeShape("int", 64)
    assert shape_of(postgresql.DOUBLE_PRECISION()) == shape_of(sa.Double())
    assert shape_of(postgresql.NUMERIC(12, 2)) == TypeShape("decimal", 12, 2)
    assert shape_of(sa.VARCHAR(20)) == TypeShape("string", 20)
    assert shape_of(postgresql.JSONB()) == TypeShape("other")
    assert shape_of(mysql.LONGTEXT()) == TypeShape("string", None)
    assert mysql_shape("int", None, 10, 0) == TypeShape("int", 32)
    assert mysql_shape("decimal", None, 12, 2) == TypeShape("decimal", 12, 2)
    assert mysql_shape("longtext", 4294967295, None, None) == TypeShape("string", None)
    assert mysql_shape("varchar", 20, None, None) == TypeShape("string", 20)
    assert mysql_shape("tinyint", None, 3, 0) == TypeShape("other")


def test_schema_change_settings_defaults_and_environment() -> None:
    s = load_settings(path=None, env={"STREAMER_SCHEMA_CHANGES__WIDEN_TYPE": "stop"})
    c = s.schema_changes
    assert (c.add_column, c.drop_column, c.rename_column) == ("propagate", "ignore", "stop")
    assert (c.widen_type, c.narrow_type, c.incompatible_type, c.new_table) == (
        "stop",
        "ignore",
        "stop",
        "propagate",
    )
