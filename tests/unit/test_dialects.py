"""The dialect registry and the guarded upsert every target gets from it (SQLite runs it; the others compile)."""

from __future__ import annotations

from decimal import Decimal

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql

from streamer.apply.dialects import dialect_for
from streamer.apply.dialects.mysql import ColumnShape, UnrepresentableValueError, check_value
from streamer.apply.dialects.types import mysql_decimal
from streamer.apply.schema import sql_type
from streamer.core.events import ColumnType

META = sa.MetaData()
T = sa.Table(
    "t",
    META,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("v", sa.String),
    sa.Column("ver", sa.String),
)


def _guarded(name: str) -> sa.sql.Insert:
    stmt: sa.sql.Insert = dialect_for(name).upsert(
        T, ["id"], ["v", "ver"], guard=lambda new: sa.or_(T.c.ver.is_(None), T.c.ver < new.ver)
    )
    return stmt


def test_registry_knows_every_target_and_names_the_unknown() -> None:
    assert dialect_for("mariadb").name == "mysql"
    assert [dialect_for(n).name for n in ("postgresql", "mysql", "sqlite")] == [
        "postgresql",
        "mysql",
        "sqlite",
    ]
    with pytest.raises(NotImplementedError, match="oracle"):
        dialect_for("oracle")


def test_guarded_upsert_on_sqlite_keeps_the_newer_row() -> None:
    engine = sa.create_engine("sqlite://")
    META.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            _guarded("sqlite"), [{"id": 1, "v": "new", "ver": "b"}, {"id": 2, "v": "two", "ver": "a"}]
        )
        conn.execute(
            _guarded("sqlite"), [{"id": 1, "v": "old", "ver": "a"}, {"id": 2, "v": "2nd", "ver": "b"}]
        )
        rows = conn.execute(sa.select(T).order_by(T.c.id)).all()
    assert [tuple(r) for r in rows] == [(1, "new", "b"), (2, "2nd", "b")]


def test_guarded_upsert_sql_of_the_server_targets() -> None:
    pg = str(_guarded("postgresql").compile(dialect=postgresql.dialect()))  # type: ignore[no-untyped-call]
    assert (
        "ON CONFLICT (id) DO UPDATE SET v = excluded.v, ver = excluded.ver WHERE t.ver IS NULL OR t.ver < excluded.ver"
        in pg
    )
    my = str(_guarded("mysql").compile(dialect=mysql.dialect()))
    # no WHERE on ON DUPLICATE KEY UPDATE: every column guarded, the version assigned last
    assert my.index("v = CASE WHEN") < my.index("ver = CASE WHEN")
    assert "ELSE t.ver END" in my


# ---------------------------------------------------------------- MySQL/MariaDB numeric limits
DECIMAL = "org.apache.kafka.connect.data.Decimal"


def _decimal_type(precision: int | None, scale: int) -> ColumnType:
    params = {"scale": str(scale)}
    if precision is not None:
        params["connect.decimal.precision"] = str(precision)
    return ColumnType("bytes", DECIMAL, params=params)


def _string_numeric(length: int | None, scale: int | None) -> ColumnType:
    params = {"__debezium.source.column.type": "NUMERIC"}
    if length is not None:
        params["__debezium.source.column.length"] = str(length)
    if scale is not None:
        params["__debezium.source.column.scale"] = str(scale)
    return ColumnType("string", params=params)


def _compiled(ct: ColumnType, dialect: str = "mysql") -> str:
    d: sa.engine.Dialect = mysql.dialect() if dialect == "mysql" else postgresql.dialect()  # type: ignore[no-untyped-call]
    return str(sql_type(ct, dialect).compile(dialect=d))


@pytest.mark.parametrize(
    ("precision", "scale", "expected"),
    [
        (12, 4, (12, 4)),  # exact
        (65, 30, (65, 30)),  # the largest exact one
        (65, 0, (65, 0)),
        (70, 10, (65, 10)),  # integer digits cut: checked per value
        (40, 35, (35, 30)),  # fraction cut: checked per value
        (100, 50, (65, 30)),
        (3, 5, (5, 5)),  # PostgreSQL 15: scale over precision (0.00xyz)
        (3, -2, (5, 0)),  # PostgreSQL 15: negative scale (xyz00)
        (None, None, (65, 30)),  # unconstrained
        (None, 40, (65, 30)),
        (None, 4, (65, 4)),
        (131089, 2, (65, 2)),  # a precision past 1000 is unknown; the scale is kept
    ],
)
def test_mysql_decimal_keeps_what_fits(
    precision: int | None, scale: int | None, expected: tuple[int, int]
) -> None:
    assert mysql_decimal(precision, scale) == expected
    m, d = expected
    assert m <= 65 and d <= 30 and d <= m


def test_sql_type_never_asks_mysql_for_more_than_decimal_65_30() -> None:
    assert _compiled(_decimal_type(70, 10)) == "NUMERIC(65, 10)"
    assert _compiled(_decimal_type(40, 35)) == "NUMERIC(35, 30)"
    assert _compiled(_decimal_type(12, 4)) == "NUMERIC(12, 4)"
    assert _compiled(ColumnType("struct", "io.debezium.data.VariableScaleDecimal")) == "NUMERIC(65, 30)"
    assert _compiled(_string_numeric(70, 10)) == "NUMERIC(65, 10)"  # decimal.handling.mode=string
    assert _compiled(_string_numeric(0, 0)) == "NUMERIC(65, 30)"
    assert _compiled(_string_numeric(None, None)) == "NUMERIC(65, 30)"
    # PostgreSQL keeps the source's type
    assert _compiled(_decimal_type(70, 10), "postgresql") == "NUMERIC(70, 10)"
    assert _compiled(ColumnType("struct", "io.debezium.data.VariableScaleDecimal"), "postgresql") == "NUMERIC"


DEC_65_30 = ("decimal", 65, 30)
DEC_35_30 = ("decimal", 35, 30)


@pytest.mark.parametrize(
    ("shape", "value"),
    [
        (DEC_65_30, Decimal("1234567890.123456789012345678901234567890")),  # 40 digits, 30 after the point
        (DEC_65_30, Decimal("-" + "9" * 35 + ".5")),
        (DEC_35_30, Decimal("1.50000000000000000000000000000000000")),  # trailing zeros are no digits
        (DEC_65_30, Decimal("0E-40")),
        (DEC_65_30, Decimal("1E+34")),
        (("decimal", 5, 0), Decimal("12300")),
        (("double", None, None), 1.5),
        (("longtext", None, None), Decimal("NaN")),  # a text column holds NaN as text
        (DEC_65_30, None),
        (DEC_65_30, 7),
    ],
)
def test_check_value_lets_exact_values_through(shape: ColumnShape, value: object) -> None:
    if shape[0] == "longtext":
        assert check_value("t", "c", shape, value) == str(value)
    else:
        assert check_value("t", "c", shape, value) is value


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (Decimal("NaN"), "NaN"),
        (Decimal("-Infinity"), "-Infinity"),
        (float("inf"), "Infinity"),
        (float("nan"), "NaN"),
        (Decimal("1" * 40), "1" * 40),
        (Decimal("0.12345678901234567890123456789012345"), "0.12345678901234567890123456789012345"),
        (Decimal("1.50"), "1.50"),  # the source's scale kept, as PostgreSQL prints it
        (1.5, 1.5),  # a finite float binds as a number
    ],
)
def test_a_text_column_gets_the_exact_text(value: object, text: object) -> None:
    assert check_value("t", "c", ("longtext", None, None), value) == text


@pytest.mark.parametrize(
    ("shape", "value", "shown", "why"),
    [
        (DEC_65_30, Decimal("NaN"), "NaN", "no NaN or infinity"),
        (DEC_65_30, Decimal("-Infinity"), "-Infinity", "no NaN or infinity"),
        (("double", None, None), float("nan"), "NaN", "no NaN or infinity"),
        (("double", None, None), float("inf"), "Infinity", "no NaN or infinity"),
        (DEC_65_30, Decimal("0.12345678901234567890123456789012345"), "0.12345678901234567890123456789012345", "35 digits after the point, the column keeps 30"),
        (DEC_65_30, Decimal("1" * 40), "1" * 40, "40 digits before the point, the column holds 35"),
        (DEC_65_30, Decimal("1E+35"), "1" + "0" * 35, "36 digits before the point"),
        (("decimal", 12, 4), Decimal("1.23456"), "1.23456", "5 digits after the point, the column keeps 4"),
    ],
)  # fmt: skip
def test_check_value_names_table_column_and_value(
    shape: ColumnShape, value: object, shown: str, why: str
) -> None:
    with pytest.raises(UnrepresentableValueError) as info:
        check_value("db_nums", "n", shape, value)
    text = str(info.value)
    assert text.startswith(f"target table db_nums column 'n' ({shape[0].upper()}")
    assert f"cannot hold the value {shown} exactly" in text
    assert why in text
    assert 'cast = {n = "text"}' in text
    assert info.value.value is value


def test_only_mysql_checks_values() -> None:
    types = {"n": DEC_65_30}
    assert dialect_for("postgresql").value_check("t", types) is None
    assert dialect_for("sqlite").value_check("t", types) is None
    check = dialect_for("mariadb").value_check("t", types)
    assert check is not None
    nan = Decimal("NaN")
    assert check("other", nan) is nan  # a column the target does not describe: not checked
    with pytest.raises(UnrepresentableValueError):
        check("n", Decimal("NaN"))
