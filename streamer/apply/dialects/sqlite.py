"""SQLite targets: ``ON CONFLICT``, no schemas (folded into table names), one writer at a time."""

from __future__ import annotations

import datetime as dt
import decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Connection

from streamer.apply.dialects import values
from streamer.apply.dialects.base import OnConflictUpsert
from streamer.apply.dialects.types import TargetTypes

#: text for datetimes, dates, times and decimals (SQLite has no such types), intervals as microseconds
ADAPTERS: values.Adapters = values.with_plain_bounds(
    {
        **values.COMMON,
        dt.datetime: values.iso_dt,
        dt.date: lambda v: v.isoformat(),
        dt.time: lambda v: v.strftime("%H:%M:%S.%f") if v.tzinfo is None else values.time_text(v),
        dt.timedelta: values.micros,
        decimal.Decimal: str,
        list: values.json_text,
        dict: values.json_text,
    }
)


class SQLite(OnConflictUpsert):
    name = "sqlite"
    adapters = ADAPTERS
    types = TargetTypes()  # few types of its own: the base choices are SQLite's
    has_schemas = False
    namespaces_as_schemas = False
    locks_rows = False
    merges_by_copy = False
    checks_foreign_keys = False  # streamer's connections leave PRAGMA foreign_keys off
    defers_constraints = False

    def alter_type_sql(self, table: str, column: str, coltype: str, not_null: bool) -> str | None:
        return None  # a declared type holds any value already

    @staticmethod
    def _insert(table: sa.TableClause) -> Any:
        return sqlite.insert(table)

    def lock_migrations(self, conn: Connection) -> None:
        """SQLite's one writer at a time serializes migrations already."""

    def unlock_migrations(self, conn: Connection) -> None:
        """Nothing to release."""
