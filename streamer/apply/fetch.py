"""Values a change event does not carry: unchanged TOAST columns of a row the target lacks.

With ``REPLICA IDENTITY DEFAULT`` PostgreSQL leaves an unchanged out-of-line (TOASTed) value out
of an update; Debezium sends ``__debezium_unavailable_value`` in its place and pgoutput an
"unchanged" marker, both decoded to :data:`~streamer.core.events.UNAVAILABLE`. When the target has
the row, the sink leaves such a column out of its update and the target keeps its value. When it
does not (the row was never loaded, or the event is the create half of a primary-key update,
which Debezium and pgoutput send as delete old key + create new key, with the TOAST columns
unavailable), the target never had the value:

* :class:`RowCompleter` (called by the sink once per batch, inside the batch's transaction)
  finds those rows: an upsert with an unavailable value whose key the target lacks, or whose key
  the same batch deletes first;
* :class:`SourceFetcher` reads the missing columns from the source by key (the root of a
  partitioned table, so a row that moved between partitions is found), converted exactly as the
  loader converts source rows, and the row is written complete under the event's version;
* a key the source no longer has is not written: the source deleted it (or moved it to another
  key) after the event, and that later change is in the stream behind this event;
* when the source cannot be read (no source URL for the event's database, connection or query
  refused), the row is not written either and its key is recorded in ``_streamer_incomplete``
  with the reason; :func:`incomplete_rows` lists them for ``streamer status`` and ``streamer
  validate``. A later event that writes the key whole (an insert, a completed update, a delete)
  removes the record.

Why writing the source's *current* value under the event's version is safe: the value fetched
is the value of the row at the time of the read, which is at or after the event. Between the
event and the read the column either did not change (then it is the value at the event) or it
changed, and each such change is a later event of the same key, in the same partition, with a
higher version. A change to a TOAST column carries the new value (only unchanged ones are left
out), so the last of those events writes the column itself, over the fetched value: the guard
lets it through because its version is higher. Until it is applied the target row shows a value
from its own future, never one the source did not have; after it, the row equals the source.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg2
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from streamer import logs
from streamer.apply import state
from streamer.apply.schema import SchemaMismatchError
from streamer.connect.files import resolve_env
from streamer.core.events import UNAVAILABLE, TableId
from streamer.db import dsn_params, quote_ident

if TYPE_CHECKING:
    from streamer.apply.coalesce import TablePlan
    from streamer.apply.schema import Router, TargetTable
    from streamer.settings import Settings

KeyTuple = tuple[Any, ...]


class GeneratedColumnError(SchemaMismatchError):
    """A target column holds a source column the source generates (the capture does not send it)
    and its values cannot be read from the source: stop rather than leave it stale."""

    def __init__(self, table: str, columns: Sequence[str], reason: str) -> None:
        super().__init__(
            f"target table {table}: column(s) {', '.join(columns)} are generated at the source, the change "
            f"events do not carry them and they cannot be read from the source ({reason}); next: make the "
            "source readable (source_url), or make them generated columns in the target (schema_mode=managed), "
            'or drop them from the route ([routes."schema.table"] drop = [...])'
        )


class SourceReadError(Exception):
    """The source could not be read for a row (kept inside this module: the row is recorded)."""


def _param(value: Any) -> Any:
    """A key value as psycopg2 binds it (the literal is coerced to the key column's type)."""
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def _norm(key: Iterable[Any]) -> tuple[str, ...]:
    """Key values compared across drivers (a target's uuid may come back as text, a number as int)."""
    return tuple(str(v) for v in key)


class SourceFetcher:
    """Reads current rows of PostgreSQL source tables by primary key.

    ``sources`` maps a source database name to its psycopg2 connection parameters; ``None``
    is the source of events that name no database. One connection per database, opened on first
    use and opened again after an error.
    """

    def __init__(self, sources: Mapping[str | None, Mapping[str, Any]], retry_after_s: float = 30.0) -> None:
        self.sources = {db: dict(params) for db, params in sources.items()}
        self.retry_after_s = retry_after_s
        self._conns: dict[str | None, Any] = {}
        self._generated: dict[TableId, frozenset[str]] = {}
        self._failed_at: dict[TableId, float] = {}

    @classmethod
    def for_url(cls, url: str) -> SourceFetcher:
        """A fetcher of one source URL (``streamer replicate --source``)."""

        params = dsn_params(url)
        return cls({params.get("dbname"): params, None: params})

    def _conn(self, database: str | None) -> Any:
        conn = self._conns.get(database)
        if conn is not None and not conn.closed:
            return conn
        params = self.sources.get(database)
        if params is None:
            known = ", ".join(sorted(str(d) for d in self.sources if d is not None)) or "none"
            raise SourceReadError(
                f"no source URL for database {database!r} (known: {known}); set source_url "
                "or the connector file's database.* settings"
            )
        try:
            conn = psycopg2.connect(**{"connect_timeout": 10, **params}, application_name="streamer-fetch")
        except psycopg2.Error as exc:
            raise SourceReadError(f"cannot connect to the source: {str(exc).strip()}") from exc
        conn.set_session(readonly=True, autocommit=True)
        self._conns[database] = conn
        return conn

    def close(self) -> None:
        for conn in self._conns.values():
            if not conn.closed:
                conn.close()
        self._conns.clear()

    def _root(self, conn: Any, table: TableId) -> tuple[str, str]:
        with conn.cursor() as cur:
            ident = f"{quote_ident(table.schema or 'public')}.{quote_ident(table.table)}"
            # the partition root: a row that moved between partitions is found wherever it is
            cur.execute(
                "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.oid = coalesce(pg_partition_root(%s::regclass), %s::regclass)",
                (ident, ident),
            )
            schema, name = cur.fetchone()
        return str(schema), str(name)

    def partition_root(self, table: TableId) -> TableId | None:
        """The partitioned root of a source table (the table itself when it is not a partition);
        None when the source cannot be read now (asked again ``retry_after_s`` later)."""
        failed = self._failed_at.get(table)
        if failed is not None and time.monotonic() - failed < self.retry_after_s:
            return None
        if table.database not in self.sources:
            return table  # no PostgreSQL source of that database (a MySQL source): no partitions to know
        try:
            schema, name = self._root(self._conn(table.database), table)
        except (SourceReadError, psycopg2.Error) as exc:
            self._failed_at[table] = time.monotonic()
            conn = self._conns.get(table.database)
            if conn is not None:
                conn.close()
            logs.get("fetch").warning(
                "source catalog not read", table=table.qualified, error=str(exc).strip()
            )
            return None
        return TableId(table.database, schema, name)

    def generated(self, table: TableId) -> frozenset[str] | None:
        """The source table's stored generated columns (which pgoutput does not send); None when the
        source cannot be read now (asked again ``retry_after_s`` later). Cached per table."""
        known = self._generated.get(table)
        if known is not None:
            return known
        failed = self._failed_at.get(table)
        if failed is not None and time.monotonic() - failed < self.retry_after_s:
            return None
        try:
            conn = self._conn(table.database)
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT a.attname FROM pg_attribute a WHERE a.attrelid = %s::regclass AND a.attnum > 0 "
                    "AND NOT a.attisdropped AND a.attgenerated = 's'",
                    (f"{quote_ident(table.schema or 'public')}.{quote_ident(table.table)}",),
                )
                found = frozenset(str(r[0]) for r in cur.fetchall())
        except (SourceReadError, psycopg2.Error) as exc:
            self._failed_at[table] = time.monotonic()
            logs.get("fetch").warning(
                "source catalog not read", table=table.qualified, error=str(exc).strip()
            )
            return None
        self._generated[table] = found
        return found

    def fetch(
        self, table: TableId, columns: Sequence[str], keys: Sequence[Mapping[str, Any]]
    ) -> dict[tuple[str, ...], dict[str, Any]]:
        """Current values of ``columns`` (source names) of the rows with these keys (source names).

        Returns normalized key -> {column: value} for the keys the source has (values converted
        as the loader converts them). Raises :class:`SourceReadError` when the source cannot be read.
        """
        from streamer.load.loader import LoadError, describe_source, parse_copy_text

        conn = self._conn(table.database)
        try:
            schema, name = self._root(conn, table)
            src = describe_source(conn, schema, name)
            by_name = {c.name: c for c in src.columns}
            key_cols = list(keys[0]) if keys else list(src.key)
            wanted = [c for c in columns if c in by_name and c not in key_cols]
            cols = [by_name[c] for c in [*key_cols, *wanted]]
            exprs = [quote_ident(c.name) + ("::numeric" if c.type_name == "money" else "") for c in cols]
            found: dict[tuple[str, ...], dict[str, Any]] = {}
            with conn.cursor() as cur:
                for i in range(0, len(keys), 500):
                    part = keys[i : i + 500]
                    marks = ", ".join("(" + ", ".join(["%s"] * len(key_cols)) + ")" for _ in part)
                    params = [_param(k[c]) for k in part for c in key_cols]
                    where = "(" + ", ".join(quote_ident(c) for c in key_cols) + f") IN ({marks})"
                    query = cur.mogrify(
                        f"SELECT {', '.join(exprs)} FROM {quote_ident(schema)}.{quote_ident(name)} WHERE {where}",  # noqa: S608
                        params,
                    ).decode()
                    buf = _Buffer()
                    cur.copy_expert(f"COPY ({query}) TO STDOUT", buf)
                    for values in parse_copy_text(buf.text(), [c.plan.convert for c in cols]):
                        row = dict(zip([c.name for c in cols], values, strict=True))
                        found[_norm(row[c] for c in key_cols)] = {c: row[c] for c in wanted}
            return found
        except (psycopg2.Error, LoadError) as exc:
            conn.close()
            raise SourceReadError(f"cannot read {table.qualified} at the source: {str(exc).strip()}") from exc


class _Buffer:
    """A write-only byte sink for ``copy_expert``."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes | str) -> int:
        self.parts.append(data.encode() if isinstance(data, str) else data)
        return len(data)

    def text(self) -> str:
        return b"".join(self.parts).decode()


def connector_sources(directory: Path, env: Mapping[str, str]) -> dict[str | None, dict[str, Any]]:
    """Source databases of the PostgreSQL connector files whose ``database.*`` settings resolve
    (``${env:NAME}`` from the environment; other config providers are not read)."""
    out: dict[str | None, dict[str, Any]] = {}
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        try:
            config = json.loads(path.read_text())["config"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not isinstance(config, dict) or "postgres" not in str(config.get("connector.class", "")).lower():
            continue
        keys = {"host": "database.hostname", "port": "database.port", "user": "database.user"}
        keys |= {"password": "database.password", "dbname": "database.dbname"}
        params = {p: resolve_env(config[k], env) for p, k in keys.items() if k in config}
        if any(v is None for v in params.values()) or not params.get("dbname"):
            continue
        out.setdefault(params["dbname"], params)
    return out


def build_fetcher(settings: Settings, env: Mapping[str, str] | None = None) -> SourceFetcher:
    """The sources the consumer can read: ``source_url`` first, then the connector files'."""

    sources: dict[str | None, dict[str, Any]] = connector_sources(
        settings.connectors_dir, os.environ if env is None else env
    )
    if settings.source_url:
        params = dsn_params(settings.source_url)
        sources[params.get("dbname")] = params
        sources[None] = params
    return SourceFetcher(sources)


# ---------------------------------------------------------------- the sink's hook
def _key_json(key: Sequence[Any]) -> str:
    return json.dumps([str(v) for v in key])


def _key_hash(key_json: str) -> str:
    return hashlib.sha1(key_json.encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class IncompleteRow:
    """A key whose row the target lacks because values the event did not carry could not be read."""

    table: str
    key: list[str]
    source_table: str
    version: str
    columns: list[str]
    reason: str
    recorded_at: dt.datetime

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "recorded_at": self.recorded_at.isoformat()}


class RowCompleter:
    """Fills unavailable values of upserts whose row the target lacks (see the module docstring)."""

    def __init__(self, fetcher: SourceFetcher | None) -> None:
        self.fetcher = fetcher
        self.log = logs.get("fetch")
        self._rooted: set[TableId] = set()  # source tables whose partition root is known

    def route_partitions(self, events: Iterable[Any], router: Router) -> None:
        """Route leaf partitions as their root (``pg_partition_root`` at the source), so a partitioned
        table lands in one target table whatever the publication publishes: changes of a publication
        without ``publish_via_partition_root`` arrive per leaf partition, a row moving between
        partitions as a delete in one and an insert in another (the version guard orders the two).
        Asked once per table and process; while the source cannot be read, by name (logged)."""
        if self.fetcher is None:
            return
        for table in {ev.table for ev in events} - self._rooted:
            if table.schema is None:  # MySQL/MariaDB sources: no partitions to resolve
                self._rooted.add(table)
                continue
            root = self.fetcher.partition_root(table)
            if root is None:
                continue
            self._rooted.add(table)
            if root != table:
                router.set_partition_root(table, root)
                self.log.info("partition routed as its root", table=table.qualified, root=root.qualified)

    def complete(
        self,
        conn: Connection,
        plans: Mapping[tuple[str | None, str], TablePlan],
        tables: Mapping[tuple[str | None, str], TargetTable],
    ) -> None:
        """Run inside the batch's transaction, before its plans are applied; changes ``plans``."""
        names = [tables[k].route.qualified for k in plans if k in tables]
        if not names:
            return
        t = state.incomplete_table
        recorded: dict[str, dict[str, str]] = {}  # table -> key hash -> version
        for name, khash, version in conn.execute(
            sa.select(t.c.table_name, t.c.key_hash, t.c.version).where(t.c.table_name.in_(names))
        ):
            recorded.setdefault(name, {})[khash] = version
        for tkey, plan in plans.items():
            table = tables.get(tkey)
            if table is not None and table.key:
                self._complete_table(conn, table, plan, recorded.get(table.route.qualified, {}))

    def _generated(self, table: TargetTable, plan: TablePlan) -> list[str]:
        """Target columns (plain there) holding a source column the source generates: their values
        are read from the source for every upsert (pgoutput, and so Debezium, do not send them)."""
        if self.fetcher is None or not plan.upserts:
            return []
        carried = set(plan.sample.columns)
        writable = set(table.columns) - table.generated
        if writable <= {table.route.target_column(n) for n in carried} | {table.version_column}:
            return []  # the events carry every column the target takes
        generated = self.fetcher.generated(plan.sample.table)
        if generated is None:  # the source catalog cannot be read now (logged; asked again later)
            return []
        out = []
        for name in sorted(generated - carried):
            target = table.route.target_column(name)
            if target is not None and target in writable:
                out.append(target)
        return out

    def _complete_table(
        self, conn: Connection, table: TargetTable, plan: TablePlan, recorded: Mapping[str, str]
    ) -> None:
        generated = self._generated(table, plan)
        if generated:
            for k, (row, version) in list(plan.upserts.items()):
                plan.upserts[k] = ({**row, **dict.fromkeys(generated, UNAVAILABLE)}, version)
        # `in` compares by identity first and UNAVAILABLE equals only itself: one C loop per row
        partial = {k: rv for k, rv in plan.upserts.items() if UNAVAILABLE in rv[0].values()}
        missing: dict[KeyTuple, tuple[dict[str, Any], str]] = {}
        if generated:
            missing = dict(partial)  # every row: the generated values change with the row
        elif partial:
            present = self._present(conn, table, [rv[0] for rv in partial.values()])
            deleted = {_norm(table_key(table, kr)) for kr, _v in plan.deletes.values()}
            for k, (row, version) in partial.items():
                norm = _norm(table_key(table, row))
                if norm in deleted or norm not in present:
                    missing[k] = (row, version)
        incomplete: dict[KeyTuple, str] = {}
        if missing:
            incomplete = self._fill(table, plan, missing)
        if incomplete and generated:
            raise GeneratedColumnError(table.route.qualified, generated, next(iter(incomplete.values())))
        if incomplete:
            self._record(conn, table, plan, incomplete)
        if recorded:
            # keys written whole now (or deleted) are no longer incomplete
            done: list[str] = []
            for k, (row, version) in plan.upserts.items():
                khash = _key_hash(_key_json(table_key(table, row)))
                if khash in recorded and recorded[khash] <= version and k not in incomplete:
                    if not any(v is UNAVAILABLE for v in row.values()):
                        done.append(khash)
            for key_row, version in plan.deletes.values():
                khash = _key_hash(_key_json(table_key(table, key_row)))
                if khash in recorded and recorded[khash] <= version:
                    done.append(khash)
            if done:
                t = state.incomplete_table
                conn.execute(
                    sa.delete(t).where(t.c.table_name == table.route.qualified, t.c.key_hash.in_(done))
                )

    def _present(
        self, conn: Connection, table: TargetTable, rows: Sequence[Mapping[str, Any]]
    ) -> set[tuple[str, ...]]:
        """The keys among ``rows`` the target has (normalized)."""
        t = sa.table(
            table.route.target_table, *(sa.column(k) for k in table.key), schema=table.route.target_schema
        )
        cols = [t.c[k] for k in table.key]
        found: set[tuple[str, ...]] = set()
        adapt = _adapter(conn)
        for i in range(0, len(rows), 500):
            keys = [tuple(adapt(r[k]) for k in table.key) for r in rows[i : i + 500]]
            cond = cols[0].in_([k[0] for k in keys]) if len(cols) == 1 else sa.tuple_(*cols).in_(keys)
            found.update(_norm(r) for r in conn.execute(sa.select(*cols).where(cond)))
        return found

    def _fill(
        self, table: TargetTable, plan: TablePlan, missing: Mapping[KeyTuple, tuple[dict[str, Any], str]]
    ) -> dict[KeyTuple, str]:
        """Fill ``missing`` rows of ``plan`` from the source; returns the keys left incomplete -> why."""
        route = table.route
        source = plan.sample.table
        names = list(plan.sample.columns) or list(plan.sample.after or {})
        to_source = {route.target_column(n): n for n in names if route.target_column(n) is not None}
        unavailable = sorted({c for row, _v in missing.values() for c, v in row.items() if v is UNAVAILABLE})
        keys = [{to_source.get(k, k): row[k] for k in table.key} for row, _v in missing.values()]
        if self.fetcher is None:
            why = "no source to read (the sink was built without one)"
            return dict.fromkeys(missing, why)
        try:
            found = self.fetcher.fetch(source, [to_source.get(c, c) for c in unavailable], keys)
        except SourceReadError as exc:
            self.log.warning(
                "unavailable values not read", table=route.qualified, rows=len(missing), error=str(exc)
            )
            return dict.fromkeys(missing, str(exc))
        gone = 0
        for k, (row, version) in missing.items():
            values = found.get(_norm(row[c] for c in table.key))
            if values is None:
                # deleted (or moved to another key) at the source after the event: that later
                # change is behind this event in the stream, so the row is not written now
                del plan.upserts[k]
                gone += 1
                continue
            filled = dict(row)
            for col, val in row.items():
                if val is UNAVAILABLE:
                    filled[col] = values.get(to_source.get(col, col), None)
            plan.upserts[k] = (filled, version)
        self.log.info(
            "unavailable values read from the source", table=route.qualified, rows=len(missing), gone=gone
        )
        return {}

    def _record(
        self, conn: Connection, table: TargetTable, plan: TablePlan, incomplete: Mapping[KeyTuple, str]
    ) -> None:
        rows = []
        for k, why in incomplete.items():
            row, version = plan.upserts.pop(k)  # never written with values it does not have
            key_json = _key_json(table_key(table, row))
            rows.append(
                {
                    "table_name": table.route.qualified,
                    "key_hash": _key_hash(key_json),
                    "key_json": key_json,
                    "source_table": plan.sample.table.qualified,
                    "version": version,
                    "columns": ",".join(sorted(c for c, v in row.items() if v is UNAVAILABLE)),
                    "reason": why[:2000],
                    "recorded_at": dt.datetime.now(dt.UTC).replace(tzinfo=None),
                }
            )
        self.log.warning(
            "rows left incomplete", table=table.route.qualified, rows=len(rows), reason=rows[0]["reason"]
        )
        state.record_incomplete(conn, rows)


def table_key(table: TargetTable, row: Mapping[str, Any]) -> KeyTuple:
    return tuple(row.get(k) for k in table.key)


def _adapter(conn: Connection) -> Any:
    from streamer.apply.dialects import value_adapter

    return value_adapter(conn.dialect.name)


def incomplete_rows(conn: Connection, limit: int = 1000) -> list[IncompleteRow]:
    """The keys recorded incomplete (for ``streamer status`` and ``streamer validate``), oldest first.

    Empty when the state tables predate the record (revision 0005).
    """
    t = state.incomplete_table
    if not sa.inspect(conn).has_table(t.name):
        return []
    out = []
    for r in conn.execute(sa.select(t).order_by(t.c.recorded_at, t.c.table_name).limit(limit)):
        out.append(
            IncompleteRow(
                r.table_name,
                json.loads(r.key_json),
                r.source_table,
                r.version,
                [c for c in r.columns.split(",") if c],
                r.reason,
                r.recorded_at,
            )
        )
    return out


def incomplete_text(rows: Sequence[Mapping[str, Any]], limit: int = 20) -> list[str]:
    """Report lines for incomplete rows (:meth:`IncompleteRow.to_json` dicts) and what to do; empty if none."""
    lines = [
        f"incomplete row {r['table']} key {r['key']}: {', '.join(r['columns'])} not carried by the change at "
        f"{r['version']} and not read from the source ({r['reason']})"
        for r in rows[:limit]
    ]
    if len(rows) > limit:
        lines.append(f"... {len(rows) - limit} more in table {state.incomplete_table.name}")
    if lines:
        lines.append(
            "these rows are not in the target; next: make the source readable (source_url, or the connector "
            "file's database.* settings), then any change of the rows at the source completes them (or "
            "reload the tables with `streamer load --table ...`)"
        )
    return lines
