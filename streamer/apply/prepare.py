"""``streamer db prepare``: the DDL a user-migrated (managed) target table lacks for streamer.

What a managed table needs (``consumer.schema_mode = "managed"``; see README "Managed tables"):

* the table exists (streamer never creates it in managed mode);
* a PRIMARY KEY on the routed source key columns (the upsert's ``ON CONFLICT``/``ON DUPLICATE KEY``
  and the guarded deletes match rows by it; a unique index alone is not read);
* every routed source column (the user's migration makes them);
* the version column (``consumer.version_column``, ``_streamer_version``) as a nullable string of
  at least :data:`~streamer.apply.schema.VERSION_TYPE_LENGTH` characters: positions are compared as text.

This module only adds the version column: the table, its key and its columns are the user's
schema. A missing table or key is :class:`PrepareError` naming the table and what to do. The DDL is
built from SQLAlchemy constructs compiled for the target's dialect (identifiers quoted by the
dialect), so it can be pasted into a migration.

Foreign keys: per-table topics are not applied in a cross-table order, so a foreign key the target
checks per statement can refuse a child row that arrives before its parent (or a parent delete
before its children's). :func:`foreign_key_warnings` names every such key of the table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.schema import DDLElement
from sqlalchemy.sql.compiler import DDLCompiler

from streamer.apply.dialects import dialect_for
from streamer.apply.schema import VERSION_TYPE_LENGTH, Route
from streamer.core.errors import StreamerError


class PrepareError(StreamerError):
    """A managed target table cannot be prepared: missing, without a primary key, or a wrong version column."""


class AddColumn(DDLElement):
    """``ALTER TABLE <table> ADD COLUMN <column>`` for one SQLAlchemy column (quoted by the dialect)."""

    inherit_cache = False

    def __init__(self, table: sa.TableClause, column: sa.Column[Any]) -> None:
        self.table = table
        self.column = column


@compiles(AddColumn)
def _compile_add_column(element: AddColumn, compiler: DDLCompiler, **kw: Any) -> str:
    table = compiler.preparer.format_table(element.table)
    return f"ALTER TABLE {table} ADD COLUMN {compiler.get_column_specification(element.column)}"


def add_version_column(route: Route, version_column: str) -> AddColumn:
    """The DDL element adding the version column (nullable ``VARCHAR(40)``) to a target table."""
    table = sa.table(route.target_table, schema=route.target_schema)
    column: sa.Column[Any] = sa.Column(version_column, sa.String(VERSION_TYPE_LENGTH), nullable=True)
    return AddColumn(table, column)


def version_column_ddl(route: Route, version_column: str, dialect: sa.engine.Dialect) -> str:
    """The statement adding the version column, as the target's dialect writes it."""
    return str(add_version_column(route, version_column).compile(dialect=dialect))


@dataclasses.dataclass(frozen=True)
class Prepared:
    """What one table needs: the statements to run (none when it is ready) and warnings."""

    route: Route
    elements: tuple[DDLElement, ...]
    statements: tuple[str, ...]  # the elements compiled for the target's dialect
    warnings: tuple[str, ...]


def _version_ok(column: dict[str, Any]) -> str | None:
    """Why an existing version column does not fit, or None when it does."""
    typ = column["type"]
    if not isinstance(typ, sa.types.String):
        return f"has type {typ}, not a string type"
    if typ.length is not None and typ.length < VERSION_TYPE_LENGTH:
        return f"has type {typ}, shorter than {VERSION_TYPE_LENGTH} characters"
    if not column.get("nullable", True):
        return "is NOT NULL (rows written by others carry NULL there)"
    return None


def foreign_key_warnings(conn: Connection, route: Route) -> list[str]:
    """A warning per foreign key of the table (from it or to it) the target checks per statement."""
    insp = sa.inspect(conn)
    dialect = conn.dialect.name
    target = dialect_for(dialect)
    out: list[str] = []
    keys: list[tuple[str, dict[str, Any]]] = []
    for reflected in insp.get_foreign_keys(route.target_table, schema=route.target_schema):
        parent = ".".join(p for p in (reflected.get("referred_schema"), reflected["referred_table"]) if p)
        keys.append((f"{route.qualified} -> {parent}", dict(reflected)))
    if dialect == "postgresql":  # keys of other tables referring to this one
        rows = conn.execute(
            sa.text(
                "SELECT c.conname, c.conrelid::regclass::text, c.condeferrable, c.condeferred "
                "FROM pg_constraint c WHERE c.contype = 'f' AND c.confrelid = "
                "(SELECT oid FROM pg_class WHERE relname = :t AND relnamespace = "
                "(SELECT oid FROM pg_namespace WHERE nspname = COALESCE(:s, current_schema())))"
            ),
            {"t": route.target_table, "s": route.target_schema},
        ).all()
        for name, child, deferrable, deferred in rows:
            refer = {"deferrable": deferrable, "initially": "DEFERRED" if deferred else "IMMEDIATE"}
            keys.append((f"{child} -> {route.qualified}", {"name": name, "options": refer}))
    for where, fk in keys:
        name = fk.get("name") or "(unnamed)"
        opts = fk.get("options") or {}
        if not target.checks_foreign_keys:
            continue  # streamer's connections do not check them
        if (
            target.defers_constraints
            and opts.get("deferrable")
            and str(opts.get("initially")).upper() == "DEFERRED"
        ):
            continue
        fix = (
            "recreate it DEFERRABLE INITIALLY DEFERRED, or drop it"
            if target.defers_constraints
            else "MariaDB/MySQL cannot defer it: drop it"
        )
        out.append(
            f"foreign key {name} ({where}) is checked per statement: changes of different tables are not "
            f"applied in source order, so a child row arriving before its parent is refused; {fix} "
            "(README, Managed tables)"
        )
    return out


def inspect_table(conn: Connection, route: Route, version_column: str) -> Prepared:
    """What ``route``'s target table lacks for managed mode; :class:`PrepareError` when it cannot be fixed here."""
    insp = sa.inspect(conn)
    if not insp.has_table(route.target_table, schema=route.target_schema):
        raise PrepareError(
            f"target table {route.qualified} does not exist: create it in your migration (schema_mode=managed "
            "never creates tables), or use schema_mode=auto, then run `streamer db prepare` again"
        )
    pk = insp.get_pk_constraint(route.target_table, schema=route.target_schema)
    if not pk.get("constrained_columns"):
        raise PrepareError(
            f"target table {route.qualified} has no primary key: add PRIMARY KEY on the source table's key "
            "columns in your migration (streamer matches rows by it), then run `streamer db prepare` again"
        )
    columns = {c["name"]: dict(c) for c in insp.get_columns(route.target_table, schema=route.target_schema)}
    elements: list[DDLElement] = []
    found = columns.get(version_column)
    if found is None:
        elements.append(add_version_column(route, version_column))
    else:
        wrong = _version_ok(found)
        if wrong is not None:
            raise PrepareError(
                f"target table {route.qualified}: version column {version_column!r} {wrong}; change it to "
                f"VARCHAR({VERSION_TYPE_LENGTH}) NULL in your migration"
            )
    statements = tuple(str(e.compile(dialect=conn.dialect)) for e in elements)
    return Prepared(route, tuple(elements), statements, tuple(foreign_key_warnings(conn, route)))


def prepare(engine: Engine, routes: Sequence[Route], version_column: str, *, apply: bool) -> list[Prepared]:
    """Inspect every table first (nothing runs when one fails), then run the statements when ``apply``."""
    with engine.connect() as conn:
        found = [inspect_table(conn, r, version_column) for r in routes]
    if apply:
        with engine.begin() as conn:
            for p in found:
                for element in p.elements:
                    conn.execute(element)
    return found
