"""MySQL and MariaDB targets: ``ON DUPLICATE KEY UPDATE`` guarded per column, ``GET_LOCK`` migrations."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Connection

from streamer.apply.dialects.base import Guard


class MySQL:
    name = "mysql"
    has_schemas = True
    namespaces_as_schemas = False
    locks_rows = True
    merges_by_copy = False

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
