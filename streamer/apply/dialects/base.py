"""The :class:`Dialect` protocol: the statements whose SQL differs between targets."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from streamer.apply.dialects.types import TargetTypes
from streamer.apply.dialects.values import Adapters

Guard = Callable[[Any], sa.ColumnElement[bool]]
"""Given the proposed row's columns (``EXCLUDED`` / ``VALUES()``), the condition under which an
existing row is overwritten (e.g. its version is older)."""

ValueCheck = Callable[[str, Any], Any]
"""Given a target column and a value for it, the value to bind (as the column holds it exactly), or
a named error when the column cannot hold it exactly (MySQL/MariaDB: NaN, infinities, decimals
past ``DECIMAL(M, D)``)."""


class Dialect(Protocol):
    """What one kind of target database does its own way."""

    name: str
    has_schemas: bool  # False: a route's target schema is folded into the table name (SQLite)
    namespaces_as_schemas: bool  # True: a source schema becomes a target schema, created when missing
    locks_rows: bool  # SELECT .. FOR UPDATE locks rows (SQLite: the one writer locks the database)
    merges_by_copy: bool  # True: batches are COPYed into a stage and merged, loads COPYed in (PostgreSQL)
    checks_foreign_keys: bool  # False: streamer's connections leave them unchecked (SQLite's PRAGMA off)
    defers_constraints: bool  # True: a DEFERRABLE INITIALLY DEFERRED key is checked at commit (PostgreSQL)
    adapters: Adapters  # decoded values as the driver binds them (streamer.apply.dialects.values)
    types: TargetTypes  # column types where targets differ (streamer.apply.dialects.types)

    def upsert(
        self, table: sa.TableClause, key: Sequence[str], columns: Sequence[str], guard: Guard | None = None
    ) -> Any:
        """INSERT of ``table`` that, on a ``key`` conflict, sets ``columns`` from the proposed row,
        only where ``guard`` holds when given. Columns the guard reads must come last in
        ``columns`` (MySQL assigns left to right, and each assignment sees the ones before)."""
        ...

    def insert_ignore(self, table: sa.TableClause) -> Any:
        """INSERT of ``table`` that skips rows whose key exists."""
        ...

    def lock_migrations(self, conn: Connection) -> None:
        """Serialize schema migrations between processes (inside ``conn``'s transaction)."""
        ...

    def unlock_migrations(self, conn: Connection) -> None:
        """Release what :meth:`lock_migrations` took, where the lock outlives the transaction."""
        ...

    def alter_type_sql(self, table: str, column: str, coltype: str, not_null: bool) -> str | None:
        """The statement giving ``column`` (quoted, of ``table``, quoted) the wider type ``coltype``
        (compiled), keeping its NOT NULL; None where declared types already hold any value (SQLite)."""
        ...

    def partial_insert_may_refuse(self) -> bool:
        """Whether an INSERT leaving out a NOT NULL column without default fails even when it inserts
        no row (MySQL/MariaDB strict mode), so the caller must check that every key exists instead."""
        ...

    def value_check(
        self, table: str, types: Mapping[str, tuple[str, int | None, int | None]]
    ) -> ValueCheck | None:
        """The check of values for ``table`` (its columns' reflected ``types``), or None: every value the
        decoder gives fits (PostgreSQL, SQLite)."""
        ...


class OnConflictUpsert:
    """``INSERT .. ON CONFLICT (key) DO UPDATE .. WHERE guard`` / ``DO NOTHING``: PostgreSQL and SQLite."""

    @staticmethod
    def _insert(table: sa.TableClause) -> Any:
        raise NotImplementedError

    def upsert(
        self, table: sa.TableClause, key: Sequence[str], columns: Sequence[str], guard: Guard | None = None
    ) -> Any:
        ins = self._insert(table)
        return ins.on_conflict_do_update(
            index_elements=list(key),
            set_={c: ins.excluded[c] for c in columns},
            where=guard(ins.excluded) if guard is not None else None,
        )

    def insert_ignore(self, table: sa.TableClause) -> Any:
        return self._insert(table).on_conflict_do_nothing()

    def partial_insert_may_refuse(self) -> bool:
        return False

    def value_check(
        self, table: str, types: Mapping[str, tuple[str, int | None, int | None]]
    ) -> ValueCheck | None:
        return None
