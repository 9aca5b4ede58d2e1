"""PostgreSQL targets: ``ON CONFLICT``, advisory-lock migrations, schemas, and the COPY merge."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection

from streamer.apply.dialects.base import Guard

_MIGRATION_LOCK = 7301945  # pg_advisory_xact_lock key of `streamer db upgrade`


class PostgreSQL:
    name = "postgresql"
    has_schemas = True
    namespaces_as_schemas = True
    locks_rows = True
    merges_by_copy = True

    def upsert(
        self, table: sa.TableClause, key: Sequence[str], columns: Sequence[str], guard: Guard | None = None
    ) -> Any:
        ins = postgresql.insert(table)
        return ins.on_conflict_do_update(
            index_elements=list(key),
            set_={c: ins.excluded[c] for c in columns},
            where=guard(ins.excluded) if guard is not None else None,
        )

    def insert_ignore(self, table: sa.TableClause) -> Any:
        return postgresql.insert(table).on_conflict_do_nothing()

    def lock_migrations(self, conn: Connection) -> None:
        conn.execute(sa.text(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})"))

    def unlock_migrations(self, conn: Connection) -> None:
        """The advisory lock ends with the transaction."""

    def partial_insert_may_refuse(self) -> bool:
        return False
