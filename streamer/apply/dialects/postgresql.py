"""PostgreSQL targets: ``ON CONFLICT``, advisory-lock migrations, schemas, and the COPY merge."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection

from streamer.apply.dialects import values
from streamer.apply.dialects.base import OnConflictUpsert
from streamer.apply.dialects.types import SqlType, TargetTypes
from streamer.apply.guard import newer_sql
from streamer.core.events import ColumnType

#: psycopg2 binds nearly everything; a JSON object goes as text
ADAPTERS: values.Adapters = {**values.COMMON, dict: values.json_text}


class PostgreSQLTypes(TargetTypes):
    """Unconstrained numerics, intervals, ``json``/``jsonb``, ``uuid``, arrays, ``time with time zone``."""

    def decimal(self, precision: int | None, scale: int) -> SqlType:
        return sa.Numeric(precision, scale) if precision and precision <= 1000 else sa.Numeric()

    def variable_decimal(self) -> SqlType:
        return sa.Numeric()

    def string_decimal(self, length: int | None, scale: int | None) -> SqlType:
        return sa.Numeric()

    def zoned_time(self) -> SqlType:
        return postgresql.TIME(timezone=True)

    def duration(self) -> SqlType:
        return postgresql.INTERVAL()

    def json(self, source_type: str) -> SqlType:
        return postgresql.JSON() if source_type == "JSON" else postgresql.JSONB()

    def uuid(self) -> SqlType:
        return postgresql.UUID(as_uuid=True)

    def array(self, items: ColumnType | None, element: Callable[[ColumnType], SqlType]) -> SqlType:
        if items is not None and items.base != "array":
            return postgresql.ARRAY(element(items))
        return sa.JSON()  # arrays of arrays: PostgreSQL's arrays are not nested lists


_MIGRATION_LOCK = 7301945  # pg_advisory_xact_lock key of `streamer db upgrade`


class PostgreSQL(OnConflictUpsert):
    name = "postgresql"
    has_schemas = True
    namespaces_as_schemas = True
    locks_rows = True
    merges_by_copy = True
    checks_foreign_keys = True
    defers_constraints = True
    adapters = ADAPTERS
    types: TargetTypes = PostgreSQLTypes()

    @staticmethod
    def _insert(table: sa.TableClause) -> Any:
        return postgresql.insert(table)

    def lock_migrations(self, conn: Connection) -> None:
        conn.execute(sa.text(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})"))

    def alter_type_sql(self, table: str, column: str, coltype: str, not_null: bool) -> str | None:
        return f"ALTER TABLE {table} ALTER COLUMN {column} TYPE {coltype}"  # NOT NULL stays

    def unlock_migrations(self, conn: Connection) -> None:
        """The advisory lock ends with the transaction."""


# ---------------------------------------------------------------- the COPY merge (sink batches and loader chunks)
def stage_sql(stage: str, target: str, columns: str, *, on_commit: str) -> str:
    """Create the temporary stage ``stage`` for ``columns`` of ``target`` (all quoted by the caller).

    ``CREATE TEMP TABLE .. AS SELECT columns FROM target WITH NO DATA`` keeps exactly those columns,
    typed as the target's, and drops their NOT NULL, defaults and checks: a managed table's columns
    a batch or a load does not write must not refuse the stage's rows. ``on_commit``: ``DROP`` (a
    loader chunk's stage) or ``DELETE ROWS`` (the sink's, reused by the next batch).
    """
    return (
        f"CREATE TEMP TABLE IF NOT EXISTS {stage} ON COMMIT {on_commit} "  # noqa: S608
        f"AS SELECT {columns} FROM {target} WITH NO DATA"
    )


def merge_sql(
    target: str,
    stage: str,
    names: Sequence[str],
    key: Sequence[str],
    version_column: str,
    quote: Callable[[str], str],
) -> str:
    """The guarded merge of a stage's rows into ``target`` (both quoted): ``INSERT .. ON CONFLICT
    (key) DO UPDATE``, only where the target's row is older (:func:`~streamer.apply.guard.newer_sql`).
    ``names`` are the stage's columns (the version column among them), unquoted."""
    cols = ", ".join(quote(c) for c in names)
    sets = ", ".join(f"{quote(c)} = EXCLUDED.{quote(c)}" for c in names if c not in key)
    ver = quote(version_column)
    return (
        f"INSERT INTO {target} AS t ({cols}) SELECT {cols} FROM {stage} "  # noqa: S608
        f"ON CONFLICT ({', '.join(quote(k) for k in key)}) DO UPDATE SET {sets} "
        f"WHERE {newer_sql(f't.{ver}', f'EXCLUDED.{ver}')}"
    )
