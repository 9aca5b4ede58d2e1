"""MySQL and MariaDB targets: ``ON DUPLICATE KEY UPDATE`` guarded per column, ``GET_LOCK`` migrations,
and the values these targets cannot hold (:func:`check_value`)."""

from __future__ import annotations

import datetime as dt
import decimal
import math
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Connection

from streamer.apply.dialects import values
from streamer.apply.dialects.base import Guard, ValueCheck
from streamer.apply.dialects.types import SqlType, TargetTypes, mysql_decimal
from streamer.core.errors import StreamerError

ColumnShape = tuple[str, int | None, int | None]  # data_type, numeric_precision, numeric_scale

# information_schema data types that hold numbers only (no NaN, no infinities)
_NUMERIC_TYPES = frozenset(
    {"decimal", "numeric", "double", "float", "real", "tinyint", "smallint", "mediumint", "int",
     "integer", "bigint", "bit", "year"}
)  # fmt: skip


class UnrepresentableValueError(StreamerError):
    """A value the MySQL/MariaDB target column cannot hold exactly: NaN or an infinity in a numeric
    column, or a decimal with more digits than the column's ``DECIMAL(M, D)`` (the server would round
    the fraction with only a warning, or refuse the integer part). Per record: the error policy
    stops on it or dead-letters it; the rest of the batch is applied."""

    def __init__(self, table: str, column: str, shape: ColumnShape, value: Any, why: str) -> None:
        self.table, self.column, self.value = table, column, value
        kind = shape[0].upper() + (f"({shape[1]},{shape[2]})" if shape[0] == "decimal" else "")
        super().__init__(
            f"target table {table} column {column!r} ({kind}) cannot hold the value {shown(value)} exactly: "
            f'{why}. Next: route the column to a text type ([routes."<schema.table>"] cast = '
            f'{{{column} = "text"}}, then recreate the target table and `streamer load` it), or change '
            "the value at the source; under --error-policy dlq the record is in the dead-letter topic"
        )


def shown(value: Any) -> str:
    """A value as the error names it: NaN and infinities spelled as PostgreSQL does, decimals in full."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, decimal.Decimal) and value.is_finite():
        return format(value, "f")
    return str(value)


def _digits(v: decimal.Decimal) -> tuple[int, int]:
    """(digits before the point, digits after it) of a finite decimal, trailing fraction zeros dropped."""
    sign, digits, exponent = v.as_tuple()
    assert isinstance(exponent, int)
    coeff = int("".join(map(str, digits)) or "0")
    if coeff == 0:
        return 0, 0
    while exponent < 0 and coeff % 10 == 0:
        coeff //= 10
        exponent += 1
    n = len(str(coeff))
    if exponent >= 0:
        return n + exponent, 0
    return max(0, n + exponent), -exponent


_TEXT_TYPES = frozenset({"char", "varchar", "tinytext", "text", "mediumtext", "longtext"})


def check_value(table: str, column: str, shape: ColumnShape, value: Any) -> Any:
    """``value`` as the target column holds it exactly, or :class:`UnrepresentableValueError`.

    A decimal or float for a text column (a route's ``cast``) is its exact text, NaN and infinities
    spelled as PostgreSQL does (the driver refuses to bind a NaN at all); anything else is returned
    as it is once it fits.
    """
    data_type, precision, scale = shape
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        if data_type in _TEXT_TYPES:
            return shown(value)
        raise UnrepresentableValueError(
            table, column, shape, value, "MySQL/MariaDB have no NaN or infinity in a numeric column"
        )
    if not isinstance(value, decimal.Decimal):
        return value
    if data_type in _TEXT_TYPES:
        return shown(value)
    if not value.is_finite():
        if data_type in _NUMERIC_TYPES:
            raise UnrepresentableValueError(
                table, column, shape, value, "MySQL/MariaDB DECIMAL and DOUBLE have no NaN or infinity"
            )
        return value
    if data_type not in ("decimal", "numeric") or precision is None:
        return value
    whole, frac = _digits(value)
    d = scale or 0
    if frac > d:
        raise UnrepresentableValueError(
            table,
            column,
            shape,
            value,
            f"{frac} digits after the point, the column keeps {d} (it would round)",
        )
    if whole > precision - d:
        raise UnrepresentableValueError(
            table, column, shape, value, f"{whole} digits before the point, the column holds {precision - d}"
        )
    return value


def _checker(table: str, types: Mapping[str, ColumnShape]) -> ValueCheck:
    def check(column: str, value: Any) -> Any:
        shape = types.get(column)
        return value if shape is None else check_value(table, column, shape, value)

    return check


#: no zones in DATETIME/TIME, intervals as microseconds (BIGINT), JSON as text
ADAPTERS: values.Adapters = values.with_plain_bounds(
    {
        **values.COMMON,
        dt.datetime: values.utc_naive,
        dt.time: lambda v: v.replace(tzinfo=None) if v.tzinfo is None else values.time_text(v),
        dt.timedelta: values.micros,
        list: values.json_text,
        dict: values.json_text,
    }
)


class MySQLTypes(TargetTypes):
    """``DECIMAL(M, D)`` within MySQL's bounds, ``TIME(6)``/``DATETIME(6)`` (no zones: the sink writes
    UTC), ``LONGBLOB``/``LONGTEXT``, and ``VARCHAR(255)`` for key columns (a key needs a length)."""

    def decimal(self, precision: int | None, scale: int) -> SqlType:
        return sa.Numeric(*mysql_decimal(precision, scale))

    def string_decimal(self, length: int | None, scale: int | None) -> SqlType:
        known = length is not None and 0 < length <= 1000  # unconstrained: 0 or 131089
        return sa.Numeric(*mysql_decimal(length if known else None, scale if known else None))

    def time(self) -> SqlType:
        return mysql.TIME(fsp=6)

    def timestamp(self) -> SqlType:
        return mysql.DATETIME(fsp=6)

    def zoned_timestamp(self) -> SqlType:
        return mysql.DATETIME(fsp=6)  # no zone-aware type: the sink writes UTC

    def enum(self, key: bool) -> SqlType:
        return sa.String(255) if key else sa.Text()

    def binary(self) -> SqlType:
        return mysql.LONGBLOB()

    def text(self, key: bool) -> SqlType:
        return sa.String(255) if key else mysql.LONGTEXT()


class MySQL:
    name = "mysql"
    adapters = ADAPTERS
    types: TargetTypes = MySQLTypes()
    has_schemas = True
    namespaces_as_schemas = False
    locks_rows = True
    merges_by_copy = False
    checks_foreign_keys = True
    defers_constraints = False  # no deferred constraints: a foreign key is checked per statement

    def alter_type_sql(self, table: str, column: str, coltype: str, not_null: bool) -> str | None:
        return f"ALTER TABLE {table} MODIFY COLUMN {column} {coltype} {'NOT NULL' if not_null else 'NULL'}"

    def upsert(
        self, table: sa.TableClause, key: Sequence[str], columns: Sequence[str], guard: Guard | None = None
    ) -> Any:
        """``ON DUPLICATE KEY UPDATE`` has no WHERE: with a guard each column is set to
        ``CASE WHEN guard THEN new ELSE old END``. Assignments run left to right and see the
        columns already assigned, so the guarded-on columns must be last in ``columns``."""
        ins = mysql.insert(table)
        if guard is None:
            return ins.on_duplicate_key_update({c: ins.inserted[c] for c in columns})
        cond = guard(ins.inserted)
        return ins.on_duplicate_key_update(
            [(c, sa.case((cond, ins.inserted[c]), else_=table.c[c])) for c in columns]
        )

    def insert_ignore(self, table: sa.TableClause) -> Any:
        return mysql.insert(table).prefix_with("IGNORE")

    def lock_migrations(self, conn: Connection) -> None:
        conn.execute(sa.text("SELECT GET_LOCK('streamer_migrations', 60)"))

    def unlock_migrations(self, conn: Connection) -> None:
        conn.execute(sa.text("SELECT RELEASE_LOCK('streamer_migrations')"))

    def partial_insert_may_refuse(self) -> bool:
        return True

    def value_check(self, table: str, types: Mapping[str, ColumnShape]) -> ValueCheck | None:
        return _checker(table, types)
