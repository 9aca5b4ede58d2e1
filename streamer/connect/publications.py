"""What ``connectors validate/plan/apply`` read from the source catalog of PostgreSQL connector files.

Columns the capture drops: :func:`dropped_columns` names every captured column whose type
Debezium 3.1 sends no field for (measured on the stack's Debezium 3.1.1: ``tsvector``,
``tsquery``, ``pg_lsn``, ``txid_snapshot``, the ``reg*`` OID aliases, composite types, and arrays
of these), so that the stream would leave the column stale in the target while the loader
copied it.

Publications for connectors that capture partitioned tables (``connectors plan`` / ``apply``).

Debezium 3.1 creates its publication without ``publish_via_partition_root``, so a partitioned
table's changes arrive per leaf partition. When a PostgreSQL connector file lists a partitioned
table (``table.include.list``, literal names), ``connectors apply`` creates the publication itself
first, ``WITH (publish_via_partition_root = true)``, or turns the option on in an existing one;
Debezium then finds it (in ``filtered`` mode it may change its table list; the option stays) and
the changes arrive on the root table's topic. ``connectors plan`` prints what apply would do.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import psycopg2

from streamer.connect.files import ConnectorFile, resolve_env
from streamer.core.errors import StreamerError
from streamer.db import dsn_params, quote_ident

PUBLICATION_DEFAULT = "dbz_publication"  # Debezium's default publication.name


class PublicationError(StreamerError):
    """The source refused creating or altering a publication; nothing was pushed to Connect."""


@dataclasses.dataclass(frozen=True)
class PublicationStep:
    """What apply does for one connector's publication; ``sql`` is None when nothing is to do."""

    connector: str
    publication: str
    partitioned: tuple[str, ...]
    sql: str | None
    note: str

    def line(self) -> str:
        mark = "=" if self.sql is None else "+"
        return f"{mark} publication {self.publication} ({self.connector}): {self.note}"


def _listed(config: Mapping[str, str]) -> list[tuple[str, str]]:
    out = []
    for name in str(config.get("table.include.list", "")).split(","):
        name = name.strip()
        if name and "." in name and not any(ch in name for ch in "*?[]()|+\\^$"):
            schema, _, table = name.partition(".")
            out.append((schema, table))
    return out


def _params(f: ConnectorFile, source_url: str, env: Mapping[str, str]) -> dict[str, Any] | None:
    """The source of a connector file: its ``database.*`` settings when they resolve, else
    ``source_url`` when it names the same database."""
    keys = {"host": "database.hostname", "port": "database.port", "user": "database.user"}
    keys |= {"password": "database.password", "dbname": "database.dbname"}
    resolved = {p: resolve_env(f.config[k], env) for p, k in keys.items() if k in f.config}
    if resolved and all(v is not None for v in resolved.values()):
        return resolved
    fallback = dsn_params(source_url) if source_url else {}
    if fallback and resolved.get("dbname") in (None, fallback.get("dbname")):
        return fallback
    return None


def _connect(params: Mapping[str, Any]) -> Any:
    return psycopg2.connect(**{"connect_timeout": 10, **params}, application_name="streamer-connectors")


def _catalog_reads(
    files: Sequence[ConnectorFile], source_url: str, env: Mapping[str, str], what: str
) -> Iterator[tuple[ConnectorFile, list[tuple[str, str]], Any] | str]:
    """Per PostgreSQL connector file listing tables: ``(file, listed tables, open connection)``
    (the caller closes it), or a ``! ...`` line saying why ``what`` was not checked for it."""
    for f in files:
        if "postgres" not in f.config.get("connector.class", "").lower():
            continue
        listed = _listed(f.config)
        if not listed:
            continue
        params = _params(f, source_url, env)
        if params is None:
            yield f"! {f.name}: {what} not checked: its database.* settings do not resolve here"
            continue
        try:
            conn = _connect(params)
        except psycopg2.Error as exc:
            yield f"! {f.name}: {what} not checked: cannot connect to the source: {str(exc).strip()}"
            continue
        yield f, listed, conn


DROPPED_TYPES = frozenset({"tsvector", "tsquery", "pg_lsn", "txid_snapshot", "pg_snapshot"})

# one row per column of the listed (schema, table) pairs: schema, table, column, type as shown,
# the element type's name (the type's own for non-arrays) and its typtype ('c': composite)
COLUMN_TYPES_SQL = (
    "SELECT n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod), "
    "coalesce(e.typname, t.typname), coalesce(e.typtype, t.typtype) "
    "FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
    "JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_type t ON t.oid = a.atttypid "
    "LEFT JOIN pg_type e ON e.oid = t.typelem AND t.typcategory = 'A' "
    "WHERE a.attnum > 0 AND NOT a.attisdropped AND (n.nspname, c.relname) IN %s "
    "ORDER BY n.nspname, c.relname, a.attnum"
)


def capture_drops(base: str, kind: str) -> bool:
    """Whether Debezium 3.1 sends no field for a column of this (element) type name and typtype."""
    return base in DROPPED_TYPES or base.startswith("reg") or kind == "c"


def dropped_source_columns(cur: Any, tables: Sequence[tuple[str, str]]) -> list[tuple[str, str, str, str]]:
    """(schema, table, column, type) of every column of ``tables`` whose type the capture drops,
    read through a DB-API cursor on the source PostgreSQL."""
    if not tables:
        return []
    cur.execute(COLUMN_TYPES_SQL, (tuple(tables),))
    return [
        (schema, table, column, shown)
        for schema, table, column, shown, base, kind in cur.fetchall()
        if capture_drops(base, kind)
    ]


@dataclasses.dataclass(frozen=True)
class DroppedColumn:
    connector: str
    table: str
    column: str
    type_name: str

    def line(self) -> str:
        return (
            f"! {self.connector}: column {self.table}.{self.column} ({self.type_name}) is not captured: Debezium "
            "sends no field for this type, so the stream would leave it stale. Either exclude it "
            f"(column.exclude.list: {self.table}.{self.column}) or let the target compute it (a managed table "
            "with your own trigger or generated column)"
        )


def _excluded(config: Mapping[str, str], qualified: str) -> bool:
    """Whether Debezium's column.exclude.list / column.include.list leave ``schema.table.column`` out."""
    import re

    def matches(key: str) -> bool | None:
        listed = [p.strip() for p in str(config.get(key, "")).split(",") if p.strip()]
        if not listed:
            return None
        return any(re.fullmatch(p, qualified) for p in listed)

    include = matches("column.include.list")
    return bool(matches("column.exclude.list")) or include is False


def dropped_columns(
    files: Sequence[ConnectorFile], source_url: str, env: Mapping[str, str] | None = None
) -> list[DroppedColumn | str]:
    """Captured columns of listed tables whose type the connector drops; a string per file whose
    source could not be read."""
    out: list[DroppedColumn | str] = []
    for read in _catalog_reads(files, source_url, os.environ if env is None else env, "column types"):
        if isinstance(read, str):
            out.append(read)
            continue
        f, listed, conn = read
        try:
            with conn.cursor() as cur:
                found = dropped_source_columns(cur, listed)
        finally:
            conn.close()
        for schema, table, column, shown in found:
            if not _excluded(f.config, f"{schema}.{table}.{column}"):
                out.append(DroppedColumn(f.name, f"{schema}.{table}", column, shown))
    return out


def plan_publications(
    files: Sequence[ConnectorFile], source_url: str, env: Mapping[str, str] | None = None
) -> list[PublicationStep | str]:
    """One step per PostgreSQL connector that lists a partitioned table; a string for a file whose
    source could not be read (the reason: apply goes on, the message says what was not checked)."""
    out: list[PublicationStep | str] = []
    for read in _catalog_reads(files, source_url, os.environ if env is None else env, "partitioned tables"):
        if isinstance(read, str):
            out.append(read)
            continue
        f, listed, conn = read
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE c.relkind = 'p' AND (n.nspname, c.relname) IN %s",
                    (tuple(listed),),
                )
                partitioned = tuple(sorted(f"{s}.{t}" for s, t in cur.fetchall()))
                if not partitioned:
                    continue
                pub = f.config.get("publication.name", PUBLICATION_DEFAULT)
                cur.execute("SELECT pubviaroot FROM pg_publication WHERE pubname = %s", (pub,))
                row = cur.fetchone()
        finally:
            conn.close()
        mode = f.config.get("publication.autocreate.mode", "all_tables")
        if row is not None and row[0]:
            out.append(
                PublicationStep(f.name, pub, partitioned, None, "publish_via_partition_root already on")
            )
        elif row is not None:
            sql = f"ALTER PUBLICATION {quote_ident(pub)} SET (publish_via_partition_root = true)"
            out.append(PublicationStep(f.name, pub, partitioned, sql, "turn publish_via_partition_root on"))
        elif mode == "disabled":
            out.append(
                f"! {f.name}: publication {pub} does not exist and publication.autocreate.mode is disabled: "
                "create it WITH (publish_via_partition_root = true)"
            )
        else:
            tables = (
                "ALL TABLES"
                if mode == "all_tables"
                else "TABLE " + ", ".join(f"{quote_ident(s)}.{quote_ident(t)}" for s, t in listed)
            )
            sql = (
                f"CREATE PUBLICATION {quote_ident(pub)} FOR {tables} WITH (publish_via_partition_root = true)"
            )
            out.append(
                PublicationStep(
                    f.name,
                    pub,
                    partitioned,
                    sql,
                    f"create WITH (publish_via_partition_root = true): {', '.join(partitioned)} partitioned",
                )
            )
    return out


def apply_publications(
    files: Sequence[ConnectorFile], source_url: str, report: Callable[[str], None]
) -> None:
    """Carry out :func:`plan_publications` (before the connectors are pushed)."""
    for step in plan_publications(files, source_url):
        if isinstance(step, str):
            report(step)
            continue
        report(step.line())
        if step.sql is None:
            continue
        f = next(x for x in files if x.name == step.connector)
        params = _params(f, source_url, os.environ)
        assert params is not None
        try:
            conn = _connect(params)
            try:
                conn.autocommit = True
                with conn.cursor() as cur:
                    cur.execute(step.sql)  # identifiers quoted above
            finally:
                conn.close()
        except psycopg2.Error as exc:
            raise PublicationError(
                f"{step.connector}: {step.sql}: {' '.join(str(exc).split())}; nothing was pushed to Connect. "
                "Next: run it as a user that owns the tables (or ask your DBA), then apply again"
            ) from None
