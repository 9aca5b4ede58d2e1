"""SQLite targets: ``ON CONFLICT``, no schemas (folded into table names), one writer at a time."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Connection

from streamer.apply.dialects.base import OnConflictUpsert


class SQLite(OnConflictUpsert):
    name = "sqlite"
    has_schemas = False
    namespaces_as_schemas = False
    locks_rows = False
    merges_by_copy = False

    @staticmethod
    def _insert(table: sa.TableClause) -> Any:
        return sqlite.insert(table)

    def lock_migrations(self, conn: Connection) -> None:
        """SQLite's one writer at a time serializes migrations already."""

    def unlock_migrations(self, conn: Connection) -> None:
        """Nothing to release."""
