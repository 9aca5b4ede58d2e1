"""SQLite targets: ``ON CONFLICT``, no schemas (folded into table names), one writer at a time."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Connection

from streamer.apply.dialects.base import Guard


class SQLite:
    name = "sqlite"
    has_schemas = False
    namespaces_as_schemas = False
    locks_rows = False
    merges_by_copy = False

    def upsert(
        self, table: sa.TableClause, key: Sequence[str], columns: Sequence[str], guard: Guard | None = None
    ) -> Any:
        ins = sqlite.insert(table)
        return ins.on_conflict_do_update(
            index_elements=list(key),
            set_={c: ins.excluded[c] for c in columns},
            where=guard(ins.excluded) if guard is not None else None,
        )

    def insert_ignore(self, table: sa.TableClause) -> Any:
        return sqlite.insert(table).on_conflict_do_nothing()

    def lock_migrations(self, conn: Connection) -> None:
        """SQLite's one writer at a time serializes migrations already."""

    def unlock_migrations(self, conn: Connection) -> None:
        """Nothing to release."""

    def partial_insert_may_refuse(self) -> bool:
        return False
