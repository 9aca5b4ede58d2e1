"""``streamer load``: seed target tables from a consistent snapshot of the source, in bulk.

How a load joins the stream
---------------------------
1. The loader opens one snapshot of the source for all its workers: it creates a *temporary
   logical replication slot* with ``EXPORT_SNAPSHOT`` and every worker imports that snapshot
   (``SET TRANSACTION SNAPSHOT``) in a ``REPEATABLE READ`` transaction. The slot's
   ``restart_lsn`` R is a point before the first change of every transaction the snapshot does
   not see (logical decoding must be able to decode those from R on).
2. Rows are written with the version ``pg_version(R - 1)``. Every change the snapshot misses has
   an LSN >= R, so the consumer's version guard applies it over the loaded row; changes the
   snapshot already holds and that are older than R are skipped. Between R and the snapshot a
   few changes the snapshot already holds may be applied again: they are re-applied in order, so
   the row converges to the same state (the guard never lets a row move back past what the
   stream has applied).
3. Loaded rows never overwrite a newer row (same guard), and after every chunk of a table is
   loaded, rows older than the load's floor (and rows without a version) are deleted: they were
   not in the snapshot, so they no longer exist at the source.
4. A streamed *delete* leaves no row to win with, so no change of a table may be applied
   between the snapshot and the end of that table's load. Before it opens the snapshot the
   loader marks **every** table of the run ``loading`` in ``_streamer_loads`` (one transaction,
   which also raises the hold generation), then waits at a barrier until every live consumer
   (``streamer consume`` and ``streamer replicate`` processes, registered with heartbeats in
   ``_streamer_members``) has acknowledged that generation: a member acknowledges only once no
   batch filtered with an older loading set is left to apply, so from then on it holds those
   tables' partitions (or its stream) until each table's load is done. Members silent for
   ``load.member_expiry_s`` are taken as stopped and removed (their batches filtered before the
   mark are then refused inside their own transaction, :func:`streamer.apply.holds.check_batch`); when live ones have not acknowledged within
   ``load.hold_timeout_s`` the load stops with :class:`~streamer.apply.holds.HoldTimeoutError` naming
   them and unmarks its tables, before anything is read (see :mod:`streamer.apply.holds`). A table
   whose load began stays ``loading`` when the run fails, until ``--resume`` finishes it.
5. Rows older than a table's recorded truncate position (``_streamer_tables``) are not loaded,
   on the COPY path as on the upsert path.

Without the replication privilege the loader falls back to ``pg_export_snapshot()`` and writes
rows with the lowest version: still correct (every streamed change applies over them), only the
stream re-applies more.

Order of operations for "add a table": add it to the connector's ``table.include.list`` and
``streamer connectors apply`` (the connector's slot now captures it), then ``streamer load
--table schema.table``, and run (or keep running) ``streamer consume``.

Reading and writing
-------------------
Each table is split into chunks of ``--chunk-rows`` keys by a keyset scan of the primary key
(never ``OFFSET``); ``--workers`` threads take chunks from a queue, each with its own source
and target connection. A chunk is read with ``COPY (SELECT ... WHERE key > lo AND key <= hi)
TO STDOUT``. PostgreSQL targets receive the bytes as they are read, piped into ``COPY ... FROM
STDIN`` (:func:`_pipe_copy`; binary where :meth:`Loader._binary_copy` allows it), straight into
a table that was empty when its load began, else into a temporary table and one guarded merge;
other targets get the text parsed into the same Python values the stream decoder produces and
written with the sink's batched upserts. The sweep (step 3 above) is skipped for a table that
was empty, held and copied straight in: it cannot hold a row older than the snapshot. Each chunk's completion is recorded in the target in
the chunk's own transaction, so ``--resume`` continues an interrupted load with the chunks not
yet done.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import io
import json
import os
import queue
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.extras
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from streamer import logs
from streamer.apply import holds, state
from streamer.apply.dialects import dialect_for
from streamer.apply.dialects import postgresql as pg
from streamer.apply.schema import Route, TargetTable, cast_type
from streamer.apply.sink import Sink
from streamer.core.checkpoint import KafkaOrigin
from streamer.core.errors import StreamerError
from streamer.core.events import (
    ChangeEvent,
    ColumnType,
    Op,
    SourcePosition,
    TableId,
    format_lsn,
    parse_lsn,
    pg_version,
)
from streamer.db import dsn_params, quote_ident
from streamer.decode.pgtypes import (
    SESSION_OPTIONS,
    TYPE_QUERY,
    ColumnPlan,
    PgType,
    builtin_type,
    column_plan,
    reported_type_name,
    type_from_row,
)

LOWEST_VERSION = pg_version(0)
_COPY_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{1,2}|[0-7]{1,3}|.)")
_SIMPLE_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}


class LoadError(StreamerError):
    """The load cannot start or continue; the message says why."""


class NoPrimaryKeyError(LoadError):
    """A table without a primary key; copy it whole with ``--no-key``."""


# ---------------------------------------------------------------- source description
@dataclasses.dataclass(frozen=True)
class SourceColumn:
    name: str
    plan: ColumnPlan
    type_name: str
    generated: bool = False  # a stored generated column (pgoutput does not send it)
    #: ``format_type(atttypid, atttypmod)`` where the type is built into PostgreSQL (the same in every
    #: database, so COPY's binary format carries it unchanged), else None
    builtin_type: str | None = None


@dataclasses.dataclass(frozen=True)
class SourceTable:
    schema: str
    table: str
    columns: tuple[SourceColumn, ...]
    key: tuple[str, ...]

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.table}"

    @property
    def column_types(self) -> dict[str, ColumnType]:
        return {c.name: c.plan.column_type for c in self.columns}


def _connect(params: Mapping[str, Any], **extra: Any) -> Any:
    options = " ".join(f"-c {k}={v}" for k, v in SESSION_OPTIONS)
    return psycopg2.connect(**{**params, "options": options, "application_name": "streamer-load"}, **extra)


class _Types:
    """Type lookup for column plans: built-in OIDs, else the source catalog."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.cache: dict[int, PgType] = {}

    def __call__(self, oid: int) -> PgType:
        known = builtin_type(oid) or self.cache.get(oid)
        if known is not None:
            return known
        with self.conn.cursor() as cur:
            cur.execute(TYPE_QUERY, (oid,))
            found = type_from_row(oid, cur.fetchone())
        self.cache[oid] = found
        return found


def describe_source(conn: Any, schema: str, table: str) -> SourceTable:
    """Columns (with the ColumnTypes Debezium would give them) and primary key of a source table."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
            (schema, table),
        )
        row = cur.fetchone()
        if row is None:
            raise LoadError(f"source table {schema}.{table} does not exist")
        relid = row[0]
        cur.execute(
            "SELECT a.attname, a.atttypid, a.atttypmod, a.attnotnull, t.typname, pg_get_expr(d.adbin, d.adrelid), "
            "a.attgenerated = 's', CASE WHEN a.atttypid < 16384 THEN format_type(a.atttypid, a.atttypmod) END "
            "FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
            "LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
            "WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            (relid,),
        )
        cols = cur.fetchall()
        cur.execute(
            "SELECT a.attname FROM pg_index i "
            "CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
            "WHERE i.indrelid = %s AND i.indisprimary ORDER BY k.ord",
            (relid,),
        )
        key = tuple(r[0] for r in cur.fetchall())
    lookup = _Types(conn)
    columns = []
    for name, oid, typmod, notnull, typname, default, generated, builtin in cols:
        source_type = reported_type_name(typname, None if generated else default)
        plan = column_plan(name, int(oid), int(typmod), lookup, optional=not notnull, source_type=source_type)
        columns.append(SourceColumn(name, plan, typname, bool(generated), builtin))
    return SourceTable(schema, table, tuple(columns), key)


# ---------------------------------------------------------------- snapshot
@dataclasses.dataclass
class Snapshot:
    """An exported snapshot of the source and the version rows loaded from it carry."""

    name: str
    version: str
    consistent_lsn: int | None
    holder: Any  # the connection keeping the snapshot alive until the workers imported it
    method: str

    def release(self) -> None:
        if self.holder is not None:
            try:
                self.holder.close()
            finally:
                self.holder = None


def open_snapshot(params: Mapping[str, Any]) -> Snapshot:
    """A temporary replication slot's exported snapshot (exact version), else ``pg_export_snapshot``."""
    slot = "streamer_load_" + uuid.uuid4().hex[:12]
    try:
        repl = _connect(params, connection_factory=psycopg2.extras.LogicalReplicationConnection)
    except psycopg2.OperationalError as exc:
        if "replication" not in str(exc).lower() and "pg_hba" not in str(exc):
            raise LoadError(f"cannot connect to the source: {str(exc).strip()}") from exc
        repl = None
    if repl is not None:
        try:
            cur = repl.cursor()
            cur.execute(f"CREATE_REPLICATION_SLOT {slot} TEMPORARY LOGICAL pgoutput EXPORT_SNAPSHOT")
            _slot, consistent, snapshot_name, _plugin = cur.fetchone()
            with _connect(params) as plain, plain.cursor() as c2:
                c2.execute("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = %s", (slot,))
                restart = parse_lsn(c2.fetchone()[0])
            plain.close()
            return Snapshot(
                snapshot_name,
                pg_version(max(restart - 1, 0)),
                parse_lsn(consistent),
                repl,
                "replication slot",
            )
        except psycopg2.Error as exc:
            repl.close()
            logs.get("load").warning(
                "no replication slot for the snapshot; falling back", error=str(exc).strip()
            )
    conn = _connect(params)
    conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
    with conn.cursor() as cur:
        cur.execute("SELECT pg_export_snapshot()")
        name = cur.fetchone()[0]
    return Snapshot(name, LOWEST_VERSION, None, conn, "pg_export_snapshot (no replication privilege)")


# ---------------------------------------------------------------- chunks
@dataclasses.dataclass(frozen=True)
class Chunk:
    no: int
    lo: tuple[Any, ...] | None  # exclusive
    hi: tuple[Any, ...] | None  # inclusive


def _key_json(key: tuple[Any, ...] | None) -> str | None:
    if key is None:
        return None
    return json.dumps([v if isinstance(v, int | str) else str(v) for v in key])


def _key_from_json(text: str | None) -> tuple[Any, ...] | None:
    return None if text is None else tuple(json.loads(text))


def _chunks_between(bounds: Sequence[tuple[Any, ...]]) -> list[Chunk]:
    """Chunks ``(None, b1], (b1, b2], ..., (bn, None)``: together they cover every key."""
    chunks: list[Chunk] = []
    lo: tuple[Any, ...] | None = None
    for i, hi in enumerate(bounds):
        chunks.append(Chunk(i, lo, hi))
        lo = hi
    chunks.append(Chunk(len(bounds), lo, None))
    return chunks


def pick_bounds(histogram: Sequence[Any], chunks: int) -> list[Any] | None:
    """``chunks - 1`` boundaries spread evenly over a column's histogram, or None when it has too few
    bins for that many chunks of about even size (each bin holds the same share of the rows)."""
    bins = len(histogram) - 1
    if chunks <= 1:
        return []
    if bins < chunks:
        return None
    picked = [histogram[round(i * bins / chunks)] for i in range(1, chunks)]
    return sorted(set(picked))


def plan_from_statistics(cur: Any, src: SourceTable, chunk_rows: int) -> tuple[list[Chunk], int] | None:
    """Chunks from the planner's statistics of a one-column key, with no scan of the table.

    ``pg_stats.histogram_bounds`` splits the key's values into bins of equal row counts as of the
    last ANALYZE; ``reltuples`` scaled by the table's current size estimates the rows now. The
    boundaries only need to be increasing for the chunks to cover every key exactly once; stale
    statistics only make chunks uneven, so they are used only while the table's size is within a
    fifth of what ANALYZE saw, and only for a built-in key type. None: plan by a scan instead.
    """
    if len(src.key) != 1:
        return None
    key = next(c for c in src.columns if c.name == src.key[0])
    if key.builtin_type is None:
        return None
    table = f"{quote_ident(src.schema)}.{quote_ident(src.table)}"
    # the array type is format_type() of a built-in type read from the catalog, never user input
    sql = (
        "SELECT c.reltuples, c.relpages, pg_relation_size(c.oid) / current_setting('block_size')::int, "  # noqa: S608
        f"(SELECT s.histogram_bounds::text::{key.builtin_type}[] FROM pg_stats s "
        "WHERE s.schemaname = %s AND s.tablename = %s AND s.attname = %s) "
        "FROM pg_class c WHERE c.oid = %s::regclass"
    )
    cur.execute(sql, (src.schema, src.table, key.name, table))
    row = cur.fetchone()
    if row is None:
        return None
    reltuples, relpages, pages, histogram = row
    if histogram is None or reltuples is None or reltuples < 0 or not relpages:
        return None
    if abs(pages - relpages) > relpages / 5:
        return None
    total = int(reltuples * pages / relpages)
    bounds = pick_bounds(histogram, max(1, -(-total // chunk_rows)))
    if bounds is None:
        return None
    return _chunks_between([(b,) for b in bounds]), total


def plan_chunks(cur: Any, src: SourceTable, chunk_rows: int) -> tuple[list[Chunk], int]:
    """Chunk boundaries and the row count (an estimate where the statistics planned it).

    From the planner's statistics where they are fresh (:func:`plan_from_statistics`, no scan),
    else from a keyset scan of the key inside the snapshot.
    """
    planned = plan_from_statistics(cur, src, chunk_rows)
    if planned is not None:
        return planned
    keys = ", ".join(quote_ident(k) for k in src.key)
    table = f"{quote_ident(src.schema)}.{quote_ident(src.table)}"
    # every chunk_rows-th key, streamed from an index scan (no count(*) OVER (): that window
    # materializes the whole key set before the first row); the last chunk is open above
    cur.execute(
        f"SELECT {keys} FROM (SELECT {keys}, row_number() OVER (ORDER BY {keys}) AS rn "  # noqa: S608
        f"FROM {table}) x WHERE rn %% %s = 0 ORDER BY {keys}",
        (chunk_rows,),
    )
    bounds = [tuple(r) for r in cur.fetchall()]
    cur.execute(f"SELECT count(*) FROM {table}")  # noqa: S608
    total = int(cur.fetchone()[0])
    if bounds and len(bounds) * chunk_rows == total:
        bounds.pop()  # the last key is the table's last row: no empty chunk after it
    return _chunks_between(bounds), total


# ---------------------------------------------------------------- COPY text parsing (non-PostgreSQL targets)
def _unescape(field: str) -> str:
    def repl(m: re.Match[str]) -> str:
        s = m.group(1)
        if s[0] == "x" and len(s) > 1:
            return chr(int(s[1:], 16))
        if s[0].isdigit():
            return chr(int(s, 8))
        return _SIMPLE_ESCAPES.get(s, s)

    return _COPY_ESCAPE.sub(repl, field) if "\\" in field else field


def parse_copy_text(data: str, converters: Sequence[Callable[[str], Any] | None]) -> Iterator[list[Any]]:
    """Rows of COPY text format as Python values (``\\N`` is NULL)."""
    for line in data.split("\n"):
        if not line:
            continue
        out: list[Any] = []
        for field, conv in zip(line.split("\t"), converters, strict=True):
            if field == "\\N":
                out.append(None)
            else:
                text = _unescape(field)
                out.append(conv(text) if conv is not None else text)
        yield out


# ---------------------------------------------------------------- the loader
@dataclasses.dataclass(frozen=True)
class _Marked:
    generation: int
    previous: Mapping[str, Any]  # target table -> its _streamer_loads row before this run (or None)


@dataclasses.dataclass
class TableReport:
    table: str
    target: str
    rows: int = 0
    chunks: int = 0
    chunks_skipped: int = 0
    seconds: float = 0.0
    swept: int = 0
    #: seconds per phase: the run's ``upgrade`` (state tables), ``mark`` (tables marked loading),
    #: ``hold`` (the barrier) and ``snapshot`` (the same in every table of one run), then the
    #: table's ``prepare`` (catalog, target table), ``plan`` (chunking), ``copy`` and ``sweep``
    phases: dict[str, float] = dataclasses.field(default_factory=dict)


class Loader:
    """Loads source tables into the sink's target. One instance per ``streamer load`` run."""

    def __init__(
        self,
        source_url: str,
        sink: Sink,
        *,
        workers: int = 2,
        chunk_rows: int = 50_000,
        resume: bool = False,
        no_key: bool = False,
        progress: Any = None,
        on_table_start: Callable[[str], None] | None = None,
        hold_timeout_s: float = 60.0,
        member_expiry_s: float = 30.0,
        ranges: Mapping[str, Sequence[tuple[tuple[Any, ...] | None, tuple[Any, ...] | None]]] | None = None,
    ) -> None:
        self.params = dsn_params(source_url)
        # a repair (``streamer validate --repair``): per source ``schema.table``, only these key
        # ranges ``(lo, hi]`` are copied, and only rows inside them are swept
        self.ranges = {k: list(v) for k, v in (ranges or {}).items()}
        self.sink = sink
        self.engine = sink.engine
        self.dialect = sink.dialect
        self.copies_in = dialect_for(sink.dialect).merges_by_copy  # chunks piped in with COPY FROM
        self.workers = max(1, workers)
        self.chunk_rows = max(1, chunk_rows)
        self.resume = resume
        self.no_key = no_key
        self.progress = progress
        self.on_table_start = on_table_start  # test hook: called with each table's name before it is read
        self.hold_timeout_s = hold_timeout_s
        self.member_expiry_s = member_expiry_s
        self._barrier_wakeup = threading.Event()  # never set: a wait between polls of the members
        self.log = logs.get("load")
        self.database = ""
        # target table -> its version column's type where its chunks are copied in binary
        self._binary: dict[str, str | None] = {}
        self._source_encoding = ""

    # -------------------------------------------------------- entry point
    def run(self, tables: Sequence[str]) -> list[TableReport]:
        """Load each ``schema.table``; all tables from one snapshot."""
        self.phases: dict[str, float] = {}
        with self._phase(self.phases, "upgrade"):
            state.upgrade(self.engine)
        with self._phase(self.phases, "mark"):
            marked = self._mark_loading(tables)
        self._started: set[str] = set()
        try:
            return self._run(tables, marked)
        except BaseException:
            # tables whose load began stay loading (``--resume`` continues them); the others go back
            self._unmark(marked, keep=self._started)
            raise

    def _run(self, tables: Sequence[str], marked: _Marked) -> list[TableReport]:
        with self._phase(self.phases, "hold"):
            self._await_holds(marked)
        snap_started = time.monotonic()
        snapshot = open_snapshot(self.params)
        self.log.info(
            "snapshot",
            method=snapshot.method,
            version=snapshot.version,
            consistent_lsn=format_lsn(snapshot.consistent_lsn)
            if snapshot.consistent_lsn is not None
            else None,
        )
        reports: list[TableReport] = []
        try:
            conns = [self._worker_source(snapshot) for _ in range(self.workers)]
            snapshot.release()  # every worker holds the snapshot now
            self.phases["snapshot"] = time.monotonic() - snap_started
            try:
                with conns[0].cursor() as cur:
                    cur.execute("SELECT current_database(), current_setting('server_encoding')")
                    self.database, self._source_encoding = cur.fetchone()
                for name in tables:
                    if self.on_table_start is not None:
                        self.on_table_start(name)
                    reports.append(self._load_table(conns, name, snapshot.version, marked.previous))
            finally:
                for c in conns:
                    c.close()
        finally:
            snapshot.release()
        return reports

    @staticmethod
    @contextlib.contextmanager
    def _phase(phases: dict[str, float], name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            phases[name] = phases.get(name, 0.0) + time.monotonic() - started

    # -------------------------------------------------------- the hold barrier
    def _mark_loading(self, tables: Sequence[str]) -> _Marked:
        """Mark every table of the run ``loading`` and raise the hold generation, in one transaction."""
        routes = []
        conn = _connect(self.params)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT current_database()")
                database = cur.fetchone()[0]
            for name in tables:
                schema, _, table = name.rpartition(".")
                src = describe_source(conn, schema or "public", table)  # refuse before marking anything
                if not src.key and not self.no_key:
                    raise _no_key(src)
                routes.append((name, self.sink.router.route(TableId(database, src.schema, table)).qualified))
        finally:
            conn.close()
        loads = state.loads_table
        previous: dict[str, Any] = {}
        with self.engine.begin() as tconn:
            # the generation row first: waits for batches that read it FOR SHARE (holds.check_batch)
            generation = holds.raise_generation(tconn)
            for source_name, target_name in routes:
                row = tconn.execute(sa.select(loads).where(loads.c.table_name == target_name)).first()
                previous[target_name] = row
                if row is None:
                    tconn.execute(
                        sa.insert(loads).values(
                            table_name=target_name,
                            source_table=source_name,
                            status="loading",
                            floor_version=LOWEST_VERSION,
                            snapshot_version=LOWEST_VERSION,
                            rows_loaded=0,
                            started_at=_now(),
                        )
                    )
                elif row.status != "loading":
                    tconn.execute(
                        sa.update(loads).where(loads.c.table_name == target_name).values(status="loading")
                    )
        self.log.info("tables marked loading", tables=[t for _, t in routes], hold_generation=generation)
        return _Marked(generation, previous)

    def _unmark(self, marked: _Marked, keep: set[str] | frozenset[str] = frozenset()) -> None:
        """Undo :meth:`_mark_loading` for the tables not in ``keep`` (their load never began)."""
        loads = state.loads_table
        with self.engine.begin() as tconn:
            for name, row in marked.previous.items():
                if name in keep:
                    continue
                if row is None:
                    tconn.execute(sa.delete(loads).where(loads.c.table_name == name))
                else:
                    tconn.execute(
                        sa.update(loads).where(loads.c.table_name == name).values(status=row.status)
                    )

    def _await_holds(self, marked: _Marked) -> None:
        """Wait until every live consumer has acknowledged the hold (see :mod:`streamer.apply.holds`)."""
        deadline = time.monotonic() + self.hold_timeout_s
        warned: set[str] = set()
        waiting: list[holds.MemberRow] = []
        while True:
            with self.engine.connect() as tconn:
                rows = holds.members(tconn)
            waiting, dead = holds.classify(rows, marked.generation, holds.now(), self.member_expiry_s)
            for m in dead:
                with self.engine.begin() as tconn:
                    removed = holds.remove_silent(tconn, m)
                if removed and m.member_id not in warned:
                    warned.add(m.member_id)
                    self.log.warning(
                        "no heartbeat: taking the member as stopped and removing it", member=m.describe()
                    )
            if any(m.member_id not in warned for m in dead):
                continue  # it sent a heartbeat meanwhile: read the members again
            if not waiting:
                self.log.info("every live consumer holds the tables", hold_generation=marked.generation)
                return
            if time.monotonic() >= deadline:
                break
            self._barrier_wakeup.wait(0.2)  # polls the state table; the members write their acks there
        raise holds.HoldTimeoutError(
            f"{len(waiting)} live consumer(s) did not acknowledge hold generation {marked.generation} within "
            f"{self.hold_timeout_s:g} s (load.hold_timeout_s): "
            + "; ".join(m.describe() for m in waiting)
            + ". Nothing was loaded and the tables are no longer marked loading; stop or fix those "
            "consumers (a stuck batch, a stopped clock), then run the load again"
        )

    def _worker_source(self, snapshot: Snapshot) -> Any:
        conn = _connect(self.params)
        conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
        with conn.cursor() as cur:
            cur.execute("SET TRANSACTION SNAPSHOT %s", (snapshot.name,))
        return conn

    # -------------------------------------------------------- one table
    def _load_table(
        self, conns: list[Any], name: str, version: str, previous: Mapping[str, Any]
    ) -> TableReport:
        schema, _, table = name.rpartition(".")
        schema = schema or "public"
        started = time.monotonic()
        phases = dict(self.phases)
        with self._phase(phases, "prepare"):
            src = describe_source(conns[0], schema, table)
            if not src.key and not self.no_key:
                raise _no_key(src)
            route = self.sink.router.route(TableId(self.database, schema, table))
            target = self._ensure_target(src, route, version)
            self._binary[route.qualified] = self._binary_copy(src, route, target)
        report = TableReport(src.qualified, route.qualified, phases=phases)
        self._started.add(route.qualified)
        with self._phase(phases, "plan"):
            chunks, total, floor = self._chunks(conns[0], src, route, version, previous.get(route.qualified))
        done = {c.no for c in chunks if c.no in self._done_chunks(route)}
        report.chunks = len(chunks)
        report.chunks_skipped = len(done)
        fresh = not done and self._is_empty(route)
        self._merged: set[str] = set()  # target tables a chunk was merged into (not copied straight in)
        task = None
        if self.progress is not None:
            task = self.progress.add_task(f"{src.qualified} -> {route.qualified}", total=total)
        todo: queue.Queue[Chunk] = queue.Queue()
        for c in chunks:
            if c.no not in done:
                todo.put(c)
        errors: list[BaseException] = []
        lock = threading.Lock()

        def work(conn: Any) -> None:
            while not errors:
                try:
                    chunk = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    n = self._copy_chunk(conn, src, route, target, chunk, version, fresh)
                except BaseException as exc:  # reported by the caller after all workers stop
                    errors.append(exc)
                    return
                with lock:
                    report.rows += n
                    if self.progress is not None and task is not None:
                        self.progress.advance(task, n)

        threads = [threading.Thread(target=work, args=(c,), daemon=True) for c in conns]
        with self._phase(phases, "copy"):
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        if errors:
            raise errors[0]
        # the sweep deletes rows older than the snapshot; a table that was empty when its load
        # began, held from the stream since the barrier and copied straight in holds none
        sweep = not fresh or route.qualified in self._merged or src.qualified in self.ranges
        with self._phase(phases, "sweep"):
            report.swept = self._finish(
                route, target, floor, report.rows, self.ranges.get(src.qualified), sweep=sweep
            )
        report.seconds = time.monotonic() - started
        self.log.info(
            "table loaded",
            table=src.qualified,
            target=route.qualified,
            rows=report.rows,
            seconds=round(report.seconds, 2),
            swept=report.swept,
        )
        return report

    def _binary_copy(self, src: SourceTable, route: Route, target: TargetTable) -> str | None:
        """The target version column's type where this table's chunks can go in COPY's binary format.

        Binary means less parsing on both servers.
        Only PostgreSQL -> PostgreSQL with the same server encoding (binary text is not converted),
        and only when every copied column is a built-in type (the same OIDs in every database)
        stored in the target as exactly the same type and modifier, without a cast or a money
        conversion. Anything else (None) is copied as text, which the target parses into its own types.
        """
        if not self.copies_in:
            return None
        kept = loaded_columns(src, route, target)
        if any(c.builtin_type is None or c.type_name == "money" for c in kept):
            return None
        names = {c.name: route.target_column(c.name) for c in kept}
        if any(t is None or t in route.cast for t in names.values()):
            return None
        qualified = self.engine.dialect.identifier_preparer.format_table(
            sa.table(route.target_table, schema=route.target_schema)
        )
        with self.engine.connect() as conn:
            encoding = conn.execute(sa.text("SELECT current_setting('server_encoding')")).scalar()
            rows = conn.execute(
                sa.text(
                    "SELECT attname, CASE WHEN atttypid < 16384 THEN format_type(atttypid, atttypmod) END "
                    "FROM pg_attribute WHERE attrelid = CAST(:t AS regclass) AND attnum > 0 AND NOT attisdropped"
                ),
                {"t": qualified},
            ).all()
        types = {r[0]: r[1] for r in rows}
        version_type = types.get(self.sink.version_column)
        if encoding != self._source_encoding or version_type is None:
            return None
        if all(types.get(str(names[c.name])) == c.builtin_type for c in kept):
            return str(version_type)
        return None

    def _ensure_target(self, src: SourceTable, route: Route, version: str) -> TargetTable:
        sample = ChangeEvent(
            op=Op.READ,
            table=TableId(self.database, src.schema, src.table),
            key={},
            before=None,
            after=None,
            columns=src.column_types,
            key_columns=src.key,
            position=SourcePosition(version, snapshot=True),
            txid=None,
            source_ts=None,
            event_ts=None,
            origin=KafkaOrigin("", 0, 0),
        )
        return self.sink.schema.ensure(route, sample, allow_no_key=self.no_key)

    def _chunks(
        self, conn: Any, src: SourceTable, route: Route, version: str, row: Any
    ) -> tuple[list[Chunk], int, str]:
        """This load's chunks: planned now, or (``--resume``) the ones recorded by the interrupted load.

        ``row`` is the table's ``_streamer_loads`` row as it was before this run marked it loading.
        """
        loads, chunks_t = state.loads_table, state.load_chunks_table
        with self.engine.begin() as tconn:
            recorded = (
                tconn.execute(
                    sa.select(chunks_t)
                    .where(chunks_t.c.table_name == route.qualified)
                    .order_by(chunks_t.c.chunk_no)
                ).all()
                if self.resume and row is not None and row.status == "loading"
                else []
            )
            # a table marked loading by the interrupted run before its turn came has no chunks
            # recorded: its load never began, so it is planned now like a new one
            if recorded:
                chunks = [
                    Chunk(r.chunk_no, _key_from_json(r.lo_key), _key_from_json(r.hi_key)) for r in recorded
                ]
                with conn.cursor() as cur:
                    cur.execute(f"SELECT count(*) FROM {quote_ident(src.schema)}.{quote_ident(src.table)}")  # noqa: S608
                    total = int(cur.fetchone()[0])
                tconn.execute(
                    sa.update(loads)
                    .where(loads.c.table_name == route.qualified)
                    .values(snapshot_version=version, started_at=_now())
                )
                # rows written by the interrupted attempt carry its (older) version: sweep below that
                return chunks, total, min(row.floor_version, version)
        if self.resume and row is not None and row.status == "done":
            self.log.info("already loaded; loading again", table=route.qualified)
        with conn.cursor() as cur:
            if src.key and src.qualified in self.ranges:
                chunks = [Chunk(i, lo, hi) for i, (lo, hi) in enumerate(self.ranges[src.qualified])]
                total = 0
            elif src.key:
                chunks, total = plan_chunks(cur, src, self.chunk_rows)
            else:
                cur.execute(f"SELECT count(*) FROM {quote_ident(src.schema)}.{quote_ident(src.table)}")  # noqa: S608
                chunks, total = [Chunk(0, None, None)], int(cur.fetchone()[0])
        with self.engine.begin() as tconn:
            tconn.execute(sa.delete(chunks_t).where(chunks_t.c.table_name == route.qualified))
            tconn.execute(sa.delete(loads).where(loads.c.table_name == route.qualified))
            tconn.execute(
                sa.insert(loads).values(
                    table_name=route.qualified,
                    source_table=src.qualified,
                    status="loading",
                    floor_version=version,
                    snapshot_version=version,
                    rows_loaded=0,
                    started_at=_now(),
                )
            )
            if chunks:
                tconn.execute(
                    sa.insert(chunks_t),
                    [
                        {
                            "table_name": route.qualified,
                            "chunk_no": c.no,
                            "lo_key": _key_json(c.lo),
                            "hi_key": _key_json(c.hi),
                            "done": False,
                            "rows_loaded": None,
                        }
                        for c in chunks
                    ],
                )
        return chunks, total, version

    def _done_chunks(self, route: Route) -> set[int]:
        t = state.load_chunks_table
        with self.engine.connect() as conn:
            return {
                r[0]
                for r in conn.execute(
                    sa.select(t.c.chunk_no).where(t.c.table_name == route.qualified, t.c.done.is_(True))
                )
            }

    def _is_empty(self, route: Route) -> bool:
        t = sa.table(route.target_table, schema=route.target_schema)
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.literal(1)).select_from(t).limit(1)).first() is None

    def _finish(
        self,
        route: Route,
        target: TargetTable,
        floor: str,
        rows: int,
        ranges: Sequence[tuple[tuple[Any, ...] | None, tuple[Any, ...] | None]] | None = None,
        *,
        sweep: bool = True,
    ) -> int:
        """Sweep rows the snapshot did not have (only inside ``ranges`` when given), mark the load done.

        ``sweep=False`` (a table that was empty, held and copied straight in: nothing in it is
        older than the snapshot) skips the scan of the whole table.
        """
        ver = target.version_column
        t = sa.table(
            route.target_table,
            sa.column(ver),
            *(sa.column(k) for k in target.key),
            schema=route.target_schema,
        )
        loads = state.loads_table
        with self.engine.begin() as conn:
            swept = 0
            if target.key and sweep:
                older = sa.or_(t.c[ver].is_(None), t.c[ver] < floor)
                if ranges is not None:
                    older = sa.and_(
                        older, sa.or_(*(_in_range([t.c[k] for k in target.key], r) for r in ranges))
                    )
                swept = conn.execute(sa.delete(t).where(older)).rowcount
            if ranges is None:
                # keys left incomplete by changes older than the snapshot are complete now (streamer.apply.fetch);
                # a repair of some ranges leaves the records of keys it did not copy
                inc = state.incomplete_table
                conn.execute(sa.delete(inc).where(inc.c.table_name == route.qualified, inc.c.version < floor))
            conn.execute(
                sa.update(loads)
                .where(loads.c.table_name == route.qualified)
                .values(status="done", finished_at=_now(), rows_loaded=loads.c.rows_loaded + rows)
            )
        return int(swept or 0)

    # -------------------------------------------------------- one chunk
    def _select(
        self,
        cur: Any,
        src: SourceTable,
        route: Route,
        target_table: TargetTable,
        chunk: Chunk,
        version: str,
        version_type: str | None = None,
    ) -> tuple[str, list[str]]:
        """The chunk's COPY source query and the target column names it yields, in order.

        ``version_type`` (for ``COPY ... (FORMAT binary)``, where :meth:`_binary_copy` allows it):
        the target version column's exact type, which the version is cast to.
        """
        exprs: list[str] = []
        names: list[str] = []
        for c in loaded_columns(src, route, target_table):
            target = route.target_column(c.name)
            assert target is not None
            expr = quote_ident(c.name)
            if c.type_name == "money":
                expr += "::numeric"
            if target in route.cast and self.copies_in:
                expr = f"CAST({expr} AS {cast_type(route.cast[target]).compile(dialect=self.engine.dialect)})"
            exprs.append(expr)
            names.append(target)
        # the type comes from the target's catalog (format_type of a built-in type), never from input
        exprs.append(cur.mogrify(f"CAST(%s AS {version_type or 'varchar'})", (version,)).decode())
        names.append(self.sink.version_column)
        where, params = _range(src.key, chunk)
        # no ORDER BY: COPY into a table, a stage or batched upserts needs no order, and the
        # planner stays free to read a large range with a sequential scan
        sql = f"SELECT {', '.join(exprs)} FROM {quote_ident(src.schema)}.{quote_ident(src.table)}" + (  # noqa: S608
            f" WHERE {where}" if where else ""
        )
        return cur.mogrify(sql, params).decode(), names

    def _copy_chunk(
        self,
        conn: Any,
        src: SourceTable,
        route: Route,
        target: TargetTable,
        chunk: Chunk,
        version: str,
        fresh: bool,
    ) -> int:
        version_type = self._binary.get(route.qualified)
        with conn.cursor() as cur:
            query, names = self._select(cur, src, route, target, chunk, version, version_type)
        if self.copies_in:
            binary = version_type is not None
            return self._write_pg(conn, query, route, target, names, chunk, fresh, version, binary=binary)
        with conn.cursor() as cur:
            buf = io.BytesIO()
            cur.copy_expert(f"COPY ({query}) TO STDOUT", buf)
            rows = int(cur.rowcount)
        self._write_other(src, route, target, buf.getvalue().decode(), chunk, rows, version)
        return rows

    def _checkpoint(self, conn: Connection, route: Route, chunk: Chunk, rows: int) -> None:
        """Mark a chunk done (the table's rows_loaded is summed when the load finishes)."""
        t = state.load_chunks_table
        conn.execute(
            sa.update(t)
            .where(t.c.table_name == route.qualified, t.c.chunk_no == chunk.no)
            .values(done=True, rows_loaded=rows)
        )

    def _write_pg(
        self,
        source: Any,
        query: str,
        route: Route,
        target: TargetTable,
        names: list[str],
        chunk: Chunk,
        fresh: bool,
        version: str,
        *,
        binary: bool = False,
    ) -> int:
        """COPY a chunk from the source straight into the target (one transaction with its checkpoint).

        The source's ``COPY TO`` runs in a thread writing into a pipe that the target's ``COPY
        FROM`` reads, so both servers work at once, as in ``psql | psql``. Into an empty table the
        rows go straight in; when someone wrote those keys meanwhile (a unique violation), or the
        table was not empty, the chunk is read again (the worker's snapshot gives the same rows)
        into a temporary table and merged with the version guard.

        Like the sink's upserts, rows older than the table's stored truncate position are not
        written: every row of a chunk carries the snapshot's version, so a truncate recorded
        after it (``_streamer_tables.truncated_version``) drops the whole chunk.
        """
        prep = self.engine.dialect.identifier_preparer
        table = prep.format_table(sa.table(route.target_table, schema=route.target_schema))
        cols = ", ".join(prep.quote(n) for n in names)
        with self.engine.begin() as conn:
            truncated = state.truncate_versions(conn, [route.qualified]).get(route.qualified)
            if truncated is not None and version < truncated:
                self._checkpoint(conn, route, chunk, 0)
                return 0
            dbapi: Any = conn.connection.dbapi_connection
            assert dbapi is not None
            with dbapi.cursor() as cur:
                if fresh or not target.key:
                    try:
                        cur.execute("SAVEPOINT streamer_copy")
                        rows = _pipe_copy(source, query, cur, f"COPY {table} ({cols}) FROM STDIN", binary)
                        cur.execute("RELEASE SAVEPOINT streamer_copy")
                        self._checkpoint(conn, route, chunk, rows)
                        return rows
                    except psycopg2.errors.UniqueViolation:
                        if not target.key:
                            raise
                        cur.execute("ROLLBACK TO SAVEPOINT streamer_copy")  # merge instead
                self._merged.add(route.qualified)
                stage = prep.quote("_streamer_load_" + uuid.uuid4().hex[:12])
                cur.execute(pg.stage_sql(stage, table, cols, on_commit="DROP"))  # see there: no NOT NULL
                rows = _pipe_copy(source, query, cur, f"COPY {stage} ({cols}) FROM STDIN", binary)
                cur.execute(pg.merge_sql(table, stage, names, target.key, target.version_column, prep.quote))
            self._checkpoint(conn, route, chunk, rows)
            return rows

    def _write_other(
        self,
        src: SourceTable,
        route: Route,
        target: TargetTable,
        text: str,
        chunk: Chunk,
        rows: int,
        version: str,
    ) -> None:
        kept = loaded_columns(src, route, target)
        converters = [c.plan.convert for c in kept] + [None]
        table = TableId(self.database, src.schema, src.table)
        columns = src.column_types
        position = SourcePosition(version, snapshot=True)
        origin = KafkaOrigin("", 0, 0)
        events = []
        for values in parse_copy_text(text, converters):
            after = {c.name: v for c, v in zip(kept, values, strict=False)}
            events.append(
                ChangeEvent(
                    op=Op.READ,
                    table=table,
                    key={k: after[k] for k in src.key},
                    before=None,
                    after=after,
                    columns=columns,
                    key_columns=src.key,
                    position=position,
                    txid=None,
                    source_ts=None,
                    event_ts=None,
                    origin=origin,
                )
            )
        self.sink.apply(
            events,
            {},
            "",
            record_state=False,
            in_transaction=lambda conn: self._checkpoint(conn, route, chunk, rows),
        )


_PIPE_READ = 1 << 20  # bytes per read of the target's COPY FROM


def _pipe_copy(source: Any, query: str, target_cur: Any, copy_in: str, binary: bool = False) -> int:
    """``COPY (query) TO STDOUT`` on ``source`` piped into ``copy_in`` on ``target_cur``; the row count.

    ``binary`` uses COPY's binary format on both sides (see :meth:`Loader._binary_copy`).

    The read runs in a thread (psycopg2 releases the GIL while libpq waits), the write in the
    caller. When the write fails, the rest of the pipe is drained so that the read ends its
    ``COPY`` normally and the source connection stays usable (the caller may read the chunk
    again into a stage); a failed read ends the pipe early and is raised after the write, so the
    caller's transaction never commits a cut chunk. The read's error wins: the write then only
    saw a cut stream.
    """
    r, w = os.pipe()
    failed: list[BaseException] = []
    counted: list[int] = []

    def read() -> None:
        try:
            with os.fdopen(w, "wb", buffering=_PIPE_READ) as out, source.cursor() as cur:
                cur.copy_expert(f"COPY ({query}) TO STDOUT" + (" (FORMAT binary)" if binary else ""), out)
                counted.append(int(cur.rowcount))
        except BaseException as exc:  # re-raised in the caller's thread below
            failed.append(exc)

    reader = threading.Thread(target=read, name="load-copy-out", daemon=True)
    with os.fdopen(r, "rb", buffering=_PIPE_READ) as inp:
        reader.start()
        try:
            target_cur.copy_expert(copy_in + (" (FORMAT binary)" if binary else ""), inp, size=_PIPE_READ)
        except BaseException:
            while inp.read(_PIPE_READ):
                pass
            reader.join()
            if failed:
                raise failed[0] from None
            raise
    reader.join()
    if failed:
        raise failed[0]
    return counted[0]


def loaded_columns(src: SourceTable, route: Route, target: TargetTable) -> list[SourceColumn]:
    """The source columns a load copies: routed, and not computed by the target itself (a generated
    column there: PostgreSQL refuses it in COPY, every target in INSERT)."""
    out = []
    for c in src.columns:
        name = route.target_column(c.name)
        if name is not None and name not in target.generated:
            out.append(c)
    return out


def _no_key(src: SourceTable) -> NoPrimaryKeyError:
    return NoPrimaryKeyError(
        f"source table {src.qualified} has no primary key: changes to it cannot be applied by key; "
        "copy it whole with --no-key (no resume, no merge with the stream)"
    )


def _in_range(cols: Sequence[Any], rng: tuple[tuple[Any, ...] | None, tuple[Any, ...] | None]) -> Any:
    """``lo < (cols) <= hi`` as an SQLAlchemy condition (``None``: unbounded)."""
    lo, hi = rng
    parts: list[Any] = [sa.true()]
    if lo is not None:
        parts.append(sa.tuple_(*cols) > sa.tuple_(*(sa.literal(v) for v in lo)))
    if hi is not None:
        parts.append(sa.tuple_(*cols) <= sa.tuple_(*(sa.literal(v) for v in hi)))
    return sa.and_(*parts)


def _range(key: Sequence[str], chunk: Chunk) -> tuple[str, list[Any]]:
    if not key:
        return "", []
    cols = "(" + ", ".join(quote_ident(k) for k in key) + ")"
    marks = "(" + ", ".join(["%s"] * len(key)) + ")"
    parts: list[str] = []
    params: list[Any] = []
    if chunk.lo is not None:
        parts.append(f"{cols} > {marks}")
        params.extend(chunk.lo)
    if chunk.hi is not None:
        parts.append(f"{cols} <= {marks}")
        params.extend(chunk.hi)
    return " AND ".join(parts), params


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def loading_tables(conn: Connection) -> set[str]:
    """Target tables a load is writing now (consumers hold their partitions back)."""
    t = state.loads_table
    return {r[0] for r in conn.execute(sa.select(t.c.table_name).where(t.c.status == "loading"))}


def tables_from_connectors(directory: Path) -> list[str]:
    """The tables the connector files capture (``table.include.list``, plain names only)."""
    tables: list[str] = []
    for path in sorted(directory.glob("*.json")):
        try:
            listed = json.loads(path.read_text())["config"].get("table.include.list", "")
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        for name in str(listed).split(","):
            name = name.strip()
            if name and not any(ch in name for ch in "*?[]()|+\\") and name not in tables:
                tables.append(name)
    return tables
