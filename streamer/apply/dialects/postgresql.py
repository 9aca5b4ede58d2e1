"""PostgreSQL targets: ``ON CONFLICT``, advisory-lock migrations, schemas, and the COPY merge."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection

from streamer.apply.dialects.base import OnConflictUpsert

_MIGRATION_LOCK = 7301945  # pg_advisory_xact_lock key of `streamer db upgrade`


class PostgreSQL(OnConflictUpsert):
    name = "postgresql"
    has_schemas = True
    namespaces_as_schemas = True
    locks_rows = True
    merges_by_copy = True

    @staticmethod
    def _insert(table: sa.TableClause) -> Any:
        return postgresql.insert(table)

    def lock_migrations(self, conn: Connection) -> None:
        conn.execute(sa.text(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})"))

    def unlock_migrations(self, conn: Connection) -> None:
        """The advisory lock ends with the transaction."""
