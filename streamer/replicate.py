"""``streamer replicate``: PostgreSQL logical replication (pgoutput) straight into the apply engine.

No broker, no Kafka Connect: one process reads the source's replication slot with psycopg2's
``LogicalReplicationConnection`` and the built-in ``pgoutput`` plugin (protocol 2 with
``streaming 'on'`` from PostgreSQL 14, else 1), parses the messages itself
(:mod:`streamer.pgoutput`), converts the text values into the same Python values the Debezium
path gives (:mod:`streamer.pgtypes`), and applies them through the same
:class:`~streamer.sink.Sink` as ``streamer consume``: same routing, coalescing, version guard
(the version column holds the change's LSN, as with Debezium) and state tables.

Batches and positions
---------------------
A batch holds whole transactions only, so a transaction that spans tables lands in the target
atomically. It closes at a transaction boundary once it reaches ``consumer.batch_max_events``
events or ``consumer.batch_max_bytes`` bytes, or ``consumer.batch_max_ms`` after its first
transaction arrived (a single larger transaction is one batch of its own). The batch is applied in one target transaction that also records, in
``_streamer_offsets`` (group = the slot name unless ``--group``, topic ``pg:<slot>``,
partition 0), the end LSN of its last transaction.

Large transactions
------------------
A transaction whose buffered changes exceed ``replicate.max_transaction_memory_bytes`` spills the
rest to a file under ``<replicate.state_dir>/spill`` (:mod:`streamer.spill`,
:class:`~streamer.pgoutput.TransactionAssembler`), so memory stays bounded whatever its size.
When it commits, the batch before it is applied first, then the transaction alone, in chunks of
``consumer.batch_max_events`` events, one target transaction each, read from the file in WAL
order. Only the last chunk records the transaction's end LSN in ``_streamer_offsets``, and only
then is it confirmed: a crash in the middle leaves the target with part of the transaction and
the stored position before it, so the whole transaction is sent again and applied again from its
first change; the version-guarded upserts and deletes make that idempotent (a change already
applied is the same version, not newer), and the target converges once the replay passes the
transaction's end. The spill file is deleted once the transaction is applied (or skipped, or
aborted); files a crashed run left are deleted when the next run of the slot starts.

Only then is that LSN confirmed to the server, so the slot never moves past what the target
holds. The stream is read and answered by :class:`~streamer.walstream.WalStream` (libpq on
psycopg2's connection), not by psycopg2's ``read_message``/``send_feedback``: psycopg2 moves its
flush position on to a keep-alive's ``wal_end`` whenever the last message's ``dataStart`` is not
beyond the last confirmed LSN, which a streamed chunk of an older in-progress transaction makes
true while a committed transaction still waits in the open batch (that transaction was lost on a
crash); see that module. Every status update carries exactly the LSN last committed in the
target. When the stream is idle (no complete transaction waiting), the keep-alive's position is
first written to ``_streamer_offsets`` and then confirmed, at most once per status interval:
every transaction committed before it has been received and applied, and one still open commits
after it (it is sent again whole), so this loses nothing and keeps the slot from pinning WAL
while only unpublished tables change.

On restart streaming resumes from the target's LSN, and every transaction whose end LSN is not
beyond it is skipped: the slot may lag the target by one confirmation (crash between the target
commit and the feedback), and what it sends again is not applied twice. A slot *ahead* of the
target (its ``confirmed_flush_lsn`` beyond the target's LSN for it: advanced by hand, by another
reader, or by an older version of streamer) may have passed changes the target never got: the
start stops with :class:`~streamer.core.errors.SlotAheadError` naming both LSNs. Keep-alives are
answered when the server asks and feedback is sent at least every ``min(10 s,
wal_sender_timeout / 2)``, also while a batch is being retried.

Errors
------
* Transient target errors retry the whole batch (``consumer.retry_attempts``, exponential
  backoff), as ``consume`` does; a lost replication connection is reopened the same way, from
  the last applied LSN.
* A value that cannot be converted or a change the target rejects follows
  ``consumer.error_policy``: ``stop`` exits non-zero naming the change's LSN
  (:class:`~streamer.core.errors.ReplicationApplyError`), with the target and slot at the
  transaction before it. There is no dead-letter *topic* without Kafka: ``dlq`` needs
  ``--dlq-file PATH`` and appends each such change there as one JSON line (error, LSN, commit
  LSN, xid, table, op, key, values), fsynced before the batch commits (so a crash can repeat a
  dead letter, never lose one), and goes on.
* Setup problems are named: :class:`~streamer.core.errors.WalLevelError`,
  :class:`~streamer.core.errors.ReplicationPrivilegeError`, :class:`~streamer.core.errors.SlotInUseError`,
  :class:`~streamer.core.errors.SlotNotFoundError`, :class:`~streamer.core.errors.PublicationNotFoundError`,
  :class:`~streamer.core.errors.TableIdentityError` (a published table without primary key or replica
  identity index).

SIGTERM/SIGINT: the complete transactions received are applied and confirmed, the partly
received one is left to the server (it sends it again next time), exit 0.

``--create``
------------
Creates the publication (``FOR TABLE`` the ``--tables``; an existing one gets the missing tables
added) and the slot (``pgoutput``) when missing and reuses them when present. A new slot's
*consistent point* C is printed: every transaction committed after C is streamed, none before;
and its restart LSN R (at or before C). The snapshot the slot exports is only usable while its
creating connection stays idle, which it does not here, so an initial load takes its own
snapshot, after C:

1. ``streamer replicate --create --tables ... --max-events 0`` (slot and publication, exit);
2. ``streamer load --table ...``: its snapshot is later than C, so every change it misses is in
   the slot. The rows it copies must carry a version below every change the snapshot misses,
   and such a change may belong to a transaction that started before C and commits after it, so
   its LSN can be *below* C: C itself is not a safe floor. The slot's restart LSN minus one is
   (decoding starts there, so no change of a transaction committed after C is older); the
   loader takes the same floor from its own temporary slot. Streamed changes then win under the
   version guard and the loaded rows never overwrite newer ones;
3. ``streamer replicate`` (before, during or after the load): while the load marks a table
   ``loading`` in ``_streamer_loads``, batches touching it are held back (feedback continues),
   as ``streamer consume`` holds partitions, so a delete cannot be undone by a snapshot row
   written after it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import select
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras
import sqlalchemy as sa
import tenacity
from sqlalchemy.engine import Connection

from streamer import logs
from streamer.core.checkpoint import wal_stream
from streamer.core.errors import (
    PublicationNotFoundError,
    ReplicationApplyError,
    ReplicationError,
    ReplicationPrivilegeError,
    ReplicationUnavailableError,
    SettingsError,
    SlotAheadError,
    SlotInUseError,
    SlotNotFoundError,
    TableIdentityError,
    WalLevelError,
    one_line,
)
from streamer.core.events import ChangeEvent, format_lsn, parse_lsn
from streamer.db import is_transient
from streamer.holds import HoldChangedError, HoldView, check_batch
from streamer.pgoutput import (
    ProtocolError,
    RawChange,
    RelationMeta,
    Transaction,
    TransactionAssembler,
    tuple_values,
)
from streamer.pgtypes import (
    SESSION_OPTIONS,
    TYPE_QUERY,
    PgType,
    PgValueError,
    builtin_type,
    reported_type_name,
    type_from_row,
)
from streamer.pipeline.policy import BatchNotIsolatedError, RetryPolicy, apply_with_policy, sink_apply
from streamer.settings import Settings
from streamer.sink import ApplyResult, EventRejectedError, Sink, is_permanent
from streamer.spill import spill_directory
from streamer.state import load_offsets, save_offsets
from streamer.walstream import WalStream, WalStreamEnded, WalStreamLost

SLOT_BUSY_GRACE_S = 5.0  # how long a slot still held by another process is waited for at start

__all__ = ["ReplicateStats", "ReplicationProcess", "SourceCatalog", "origin_topic", "quote_ident"]


def origin_topic(slot: str) -> str:
    """The ``topic`` of this path's positions in ``_streamer_offsets`` (see :func:`streamer.core.checkpoint.wal_stream`)."""
    return wal_stream(slot)


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _qualified(table: str) -> tuple[str, str]:
    """``schema.table`` (default schema ``public``) -> (schema, table); quotes not interpreted."""
    schema, _, name = table.strip().rpartition(".")
    return schema or "public", name


def _connect_params(url: str) -> dict[str, Any]:
    """psycopg2 keyword parameters of a ``postgresql://`` URL (SQLAlchemy's ``+driver`` removed)."""
    if "://" in url:
        scheme, rest = url.split("://", 1)
        url = scheme.split("+", 1)[0] + "://" + rest
    return dict(psycopg2.extensions.parse_dsn(url))


def _session_options(existing: str | None) -> str:
    ours = " ".join(f"-c {k}={v}" for k, v in SESSION_OPTIONS)
    return f"{existing} {ours}" if existing else ours


def _lsn_text(value: Any) -> int | None:
    return parse_lsn(str(value)) if value else None


# --------------------------------------------------------------------------- source catalog
class SourceCatalog:
    """A normal connection to the source: setup checks, type and relation metadata."""

    def __init__(self, url: str) -> None:
        self.params = _connect_params(url)
        self.params.setdefault("application_name", "streamer-replicate-catalog")
        self.conn: Any = None
        self._types: dict[int, PgType] = {}
        self.connect()
        self.database: str = self.scalar("SELECT current_database()")
        self.server_version: int = int(self.scalar("SELECT current_setting('server_version_num')"))

    def connect(self) -> None:
        self.close()
        try:
            self.conn = psycopg2.connect(**self.params)
        except psycopg2.OperationalError as exc:
            raise ReplicationUnavailableError(
                f"cannot connect to the source: {one_line(str(exc))} (check that it is running and reachable, "
                "then run again)"
            ) from exc
        self.conn.autocommit = True

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except psycopg2.Error:
                pass
            self.conn = None

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        for attempt in range(2):
            try:
                with self.conn.cursor() as cur:
                    cur.execute(sql, args)
                    return list(cur.fetchall()) if cur.description is not None else []
            except (psycopg2.OperationalError, psycopg2.InterfaceError):
                if attempt:
                    raise
                self.connect()
        raise AssertionError("unreachable")

    def scalar(self, sql: str, args: Sequence[Any] = ()) -> Any:
        rows = self.query(sql, args)
        return rows[0][0] if rows else None

    # -- types and relations (for the assembler) --
    def type(self, oid: int) -> PgType:
        known = builtin_type(oid) or self._types.get(oid)
        if known is not None:
            return known
        rows = self.query(TYPE_QUERY, (oid,))
        found = type_from_row(oid, rows[0] if rows else None)
        self._types[oid] = found
        return found

    def relation_meta(self, relid: int, schema: str, table: str) -> RelationMeta:
        cols = self.query(
            "SELECT a.attname, a.attnotnull, t.typname, pg_get_expr(d.adbin, d.adrelid), "
            "col_description(a.attrelid, a.attnum) "
            "FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
            "LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
            "WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped",
            (relid,),
        )
        pk = self.query(
            "SELECT a.attname FROM pg_index i "
            "CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
            "WHERE i.indrelid = %s AND i.indisprimary ORDER BY k.ord",
            (relid,),
        )
        source_types: dict[str, str] = {}
        comments: dict[str, str] = {}
        not_null: set[str] = set()
        for name, notnull, typname, default, comment in cols:
            if notnull:
                not_null.add(name)
            source_types[name] = reported_type_name(typname, default)
            if comment:
                comments[name] = comment
        return RelationMeta(tuple(r[0] for r in pk), frozenset(not_null), source_types, comments)

    # -- setup checks --
    def check_wal_level(self) -> None:
        level = self.scalar("SHOW wal_level")
        if level != "logical":
            raise WalLevelError(
                f"the source's wal_level is {level!r}, logical replication needs 'logical': set "
                "wal_level = logical in postgresql.conf (ALTER SYSTEM SET wal_level = logical) and restart PostgreSQL"
            )

    def check_privilege(self) -> None:
        row = self.query(
            "SELECT current_user, rolsuper, rolreplication FROM pg_roles WHERE rolname = current_user"
        )
        if row and not (row[0][1] or row[0][2]):
            user = row[0][0]
            raise ReplicationPrivilegeError(
                f"role {user!r} may not read replication slots: it needs the REPLICATION attribute "
                f"(ALTER ROLE {quote_ident(user)} REPLICATION) and a 'replication'/'all' line in pg_hba.conf"
            )

    def slot(self, name: str) -> dict[str, Any] | None:
        rows = self.query(
            "SELECT plugin, slot_type, database, active, active_pid, confirmed_flush_lsn::text, restart_lsn::text "
            "FROM pg_replication_slots WHERE slot_name = %s",
            (name,),
        )
        if not rows:
            return None
        plugin, slot_type, database, active, pid, confirmed, restart = rows[0]
        return {
            "plugin": plugin,
            "type": slot_type,
            "database": database,
            "active": active,
            "active_pid": pid,
            "confirmed_flush": _lsn_text(confirmed),
            "restart": _lsn_text(restart),
        }

    def check_slot(self, name: str, info: Mapping[str, Any]) -> None:
        if info["type"] != "logical" or info["plugin"] != "pgoutput":
            raise SlotNotFoundError(
                f"replication slot {name!r} is a {info['type']} slot of plugin {info['plugin']!r}, not a "
                "logical pgoutput slot: use another --slot name"
            )
        if info["database"] != self.database:
            raise SlotNotFoundError(
                f"replication slot {name!r} belongs to database {info['database']!r}, not {self.database!r}"
            )
        if info["active_pid"] is not None:
            raise SlotInUseError(
                f"replication slot {name!r} is in use by another process (active_pid {info['active_pid']}): "
                "one slot feeds one reader; stop it, or use another --slot"
            )

    def publication(self, name: str) -> bool:
        return bool(self.query("SELECT 1 FROM pg_publication WHERE pubname = %s", (name,)))

    def published_tables(self, name: str) -> list[tuple[str, str]]:
        return [
            (r[0], r[1])
            for r in self.query(
                "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s ORDER BY 1, 2",
                (name,),
            )
        ]

    def ensure_publication(self, name: str, tables: Sequence[str]) -> list[str]:
        """Create the publication for ``tables``, or add the missing ones; returns what was done."""
        wanted = [_qualified(t) for t in tables]
        missing_tables = [
            f"{s}.{t}"
            for s, t in wanted
            if self.scalar("SELECT to_regclass(%s)", (f"{quote_ident(s)}.{quote_ident(t)}",)) is None
        ]
        if missing_tables:
            raise PublicationNotFoundError(
                f"cannot publish tables that do not exist: {', '.join(missing_tables)}"
            )
        idents = {(s, t): f"{quote_ident(s)}.{quote_ident(t)}" for s, t in wanted}
        if not self.publication(name):
            if not wanted:
                raise PublicationNotFoundError(
                    f"publication {name!r} does not exist: give --tables schema.t1,schema.t2 with --create"
                )
            try:
                self.query(f"CREATE PUBLICATION {quote_ident(name)} FOR TABLE {', '.join(idents.values())}")
            except psycopg2.errors.DuplicateObject:
                pass  # created by a concurrent --create: add what is missing below
            else:
                return [f"created publication {name} for {', '.join(f'{s}.{t}' for s, t in wanted)}"]
        have = set(self.published_tables(name))
        add = [(s, t) for s, t in wanted if (s, t) not in have]
        if add:
            self.query(f"ALTER PUBLICATION {quote_ident(name)} ADD TABLE {', '.join(idents[k] for k in add)}")
            return [f"added {', '.join(f'{s}.{t}' for s, t in add)} to publication {name}"]
        return [f"publication {name} exists"]

    def check_identities(self, publication: str) -> None:
        rows = self.query(
            "SELECT pt.schemaname, pt.tablename, c.relreplident, "
            "EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary), "
            "EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident) "
            "FROM pg_publication_tables pt "
            "JOIN pg_namespace n ON n.nspname = pt.schemaname "
            "JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename "
            "WHERE pt.pubname = %s ORDER BY 1, 2",
            (publication,),
        )
        bad = []
        for schema, table, ident, has_pk, has_ident_index in rows:
            q = f"{schema}.{table}"
            if ident == "n":
                bad.append(f"{q} has REPLICA IDENTITY NOTHING (ALTER TABLE {q} REPLICA IDENTITY DEFAULT)")
            elif ident == "i" and has_ident_index:
                continue
            elif not has_pk:
                bad.append(
                    f"{q} has no primary key and no replica identity index "
                    f"(ALTER TABLE {q} ADD PRIMARY KEY (...), or REPLICA IDENTITY USING INDEX <unique index>)"
                )
        if bad:
            raise TableIdentityError(
                "streamer needs a key for every published table to apply updates and deletes: "
                + "; ".join(bad)
            )


# --------------------------------------------------------------------------- the process
@dataclasses.dataclass
class ReplicateStats:
    """Counters of one replicate process, for progress lines, tests and the benchmark."""

    transactions: int = 0
    events_applied: int = 0
    batches: int = 0
    skipped_transactions: int = 0  # already in the target (resent after a restart)
    streamed_transactions: int = 0  # arrived in stream blocks (protocol 2)
    spilled_transactions: int = 0  # larger than replicate.max_transaction_memory_bytes: applied in chunks
    dead_lettered: int = 0
    retries: int = 0
    reconnects: int = 0
    last_lsn: int = 0  # end LSN of the last transaction applied
    started: float = dataclasses.field(default_factory=time.monotonic)
    first_message_at: float | None = None  # time.perf_counter() of the first replication message
    last_batch_at: float | None = None  # time.perf_counter() when the last batch was committed


@dataclasses.dataclass
class SlotReport:
    name: str
    created: bool
    consistent_point: int | None = None
    snapshot_name: str | None = None
    restart_lsn: int | None = None  # a load joined to this slot stamps its rows with at most restart_lsn - 1


class _StreamLost(Exception):
    """The replication connection broke (server restart, network): reconnect from the applied LSN."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error).strip())
        self.error = error


def _as_dbapi_error(exc: BaseException) -> BaseException:
    """A raw psycopg2 error (the sink's COPY path uses the DBAPI cursor) as SQLAlchemy would wrap it,
    so that :func:`~streamer.db.is_transient` and :func:`~streamer.sink.is_permanent` can judge it."""
    if isinstance(exc, psycopg2.Error):
        wrapped: BaseException = sa.exc.DBAPIError.instance(None, None, exc, psycopg2.Error)
        return wrapped
    return exc


def _transient(exc: BaseException) -> bool:
    return is_transient(_as_dbapi_error(exc))


def _permanent(exc: BaseException) -> bool:
    return is_permanent(_as_dbapi_error(exc))


def _jsonable(values: Mapping[str, Any] | None) -> Any:
    if values is None:
        return None
    return {
        k: (v if isinstance(v, str | int | float | bool | type(None)) else str(v)) for k, v in values.items()
    }


class ReplicationProcess:
    """Streams one slot into the target through a :class:`Sink` until stopped."""

    def __init__(
        self,
        settings: Settings,
        sink: Sink,
        *,
        source_url: str,
        slot: str,
        publication: str,
        tables: Sequence[str] = (),
        create: bool = False,
        group: str | None = None,
        until_idle: float | None = None,
        max_events: int | None = None,
        dlq_file: Path | None = None,
        report: Callable[[str], None] | None = None,
        on_batch: Callable[[ApplyResult, float, Sequence[Transaction]], None] | None = None,
    ) -> None:
        self.settings = settings
        self.cfg = settings.consumer
        self.sink = sink
        self.source_url = source_url
        self.slot = slot
        self.publication = publication
        self.tables = list(tables)
        self.create = create
        self.group = group or slot
        self.topic = origin_topic(slot)
        self.until_idle = until_idle
        self.max_events = max_events
        self.dlq_file = dlq_file
        if self.cfg.error_policy == "dlq" and dlq_file is None:
            raise SettingsError(
                "error policy dlq without Kafka needs --dlq-file PATH (changes that cannot be applied are "
                "appended there as JSON lines)"
            )
        self.report = report or (lambda line: None)
        self.on_batch = on_batch
        self.stats = ReplicateStats()
        self.slot_report: SlotReport | None = None
        self.log = logs.get("replicate").bind(slot=slot, group=self.group)
        self._stop = threading.Event()
        self._catalog: SourceCatalog | None = None
        self._conn: Any = None
        self._cursor: Any = None
        self._wal: WalStream | None = None
        self._assembler: TransactionAssembler | None = None
        self._pending: list[Transaction] = []
        self._pending_events = 0
        self._pending_bytes = 0
        self._batch_started = 0.0
        self._last_activity = time.monotonic()
        self._applied_lsn = 0  # end LSN of the last transaction committed in the target
        self._skip_to = 0  # transactions ending at or before this are already applied or pending
        self._status_interval = 10.0
        self._messages = 0
        self._holds: HoldView | None = None

    def stop(self, *_: object) -> None:
        """Finish the complete transactions received, confirm, and return (signal-handler compatible)."""
        self._stop.set()

    # ------------------------------------------------------------ setup
    def _prepare(self) -> SourceCatalog:
        catalog = SourceCatalog(self.source_url)
        self._catalog = catalog
        catalog.check_wal_level()
        catalog.check_privilege()
        if self.create:
            for line in catalog.ensure_publication(self.publication, self.tables):
                self.report(line)
        elif not catalog.publication(self.publication):
            raise PublicationNotFoundError(
                f"publication {self.publication!r} does not exist in {catalog.database}: create it "
                f"(CREATE PUBLICATION ... FOR TABLE ...) or run with --create --tables schema.t1,schema.t2"
            )
        published = catalog.published_tables(self.publication)
        if not published:
            self.log.warning("the publication publishes no table yet", publication=self.publication)
        catalog.check_identities(self.publication)
        info = catalog.slot(self.slot)
        if info is None:
            if not self.create:
                raise SlotNotFoundError(
                    f"replication slot {self.slot!r} does not exist: run with --create to make it "
                    "(its consistent point is where streaming starts)"
                )
        else:
            deadline = time.monotonic() + SLOT_BUSY_GRACE_S
            while info["active_pid"] is not None and time.monotonic() < deadline:
                # a reader that just died (kill -9, lost connection) holds the slot until the server notices
                time.sleep(0.25)
                info = catalog.slot(self.slot) or info
            catalog.check_slot(self.slot, info)
            self.slot_report = SlotReport(self.slot, False, info["confirmed_flush"])
            self.report(
                f"slot {self.slot} exists (confirmed flush LSN "
                f"{format_lsn(info['confirmed_flush']) if info['confirmed_flush'] else '-'})"
            )
        timeout_ms = int(
            catalog.scalar("SELECT setting FROM pg_settings WHERE name = 'wal_sender_timeout'") or 0
        )
        self._status_interval = max(1.0, min(10.0, timeout_ms / 2000.0)) if timeout_ms > 0 else 10.0
        with self.sink.engine.connect() as conn:
            stored = load_offsets(conn, self.group, [self.topic]).get((self.topic, 0))
        if stored is not None:
            self._applied_lsn = self._skip_to = stored
            confirmed = info["confirmed_flush"] if info is not None else None
            if confirmed is not None and confirmed > stored:
                raise SlotAheadError(self.slot, format_lsn(confirmed), self.group, format_lsn(stored))
        self.log.info(
            "source ready",
            database=catalog.database,
            server_version=catalog.server_version,
            publication=self.publication,
            tables=[f"{s}.{t}" for s, t in published],
            target_lsn=format_lsn(stored) if stored is not None else None,
        )
        self._assembler = TransactionAssembler(
            database=catalog.database,
            slot=self.slot,
            lookup=catalog.type,
            relation_meta=catalog.relation_meta,
            keep_failed=self.cfg.error_policy == "dlq",
            max_memory_bytes=self.settings.replicate.max_transaction_memory_bytes,
            spill_dir=spill_directory(self.settings.replicate.state_dir),
        )
        return catalog

    def _open_stream(self, catalog: SourceCatalog, *, start: bool = True) -> Any:
        """A replication connection: creates the slot first (``--create``), then starts streaming."""
        params = dict(catalog.params)
        params["options"] = _session_options(params.get("options"))
        params["application_name"] = f"streamer-replicate-{self.slot}"
        try:
            conn = psycopg2.connect(connection_factory=psycopg2.extras.LogicalReplicationConnection, **params)
        except psycopg2.OperationalError as exc:
            text = str(exc).strip()
            if "pg_hba" in text or "permission" in text or "must be" in text or "authentication" in text:
                raise ReplicationPrivilegeError(
                    f"the source refuses a replication connection: {text}"
                ) from exc
            raise _StreamLost(exc) from exc
        self._conn = conn
        cur = conn.cursor()
        self._cursor = cur
        if self.create and catalog.slot(self.slot) is None:
            try:
                cur.create_replication_slot(self.slot, output_plugin="pgoutput")
                name, point, snapshot, _plugin = cur.fetchone()
            except psycopg2.errors.DuplicateObject:
                info = catalog.slot(self.slot)
                if info is not None:
                    catalog.check_slot(self.slot, info)
            else:
                info = catalog.slot(self.slot)
                restart = info["restart"] if info is not None else None
                self.slot_report = SlotReport(name, True, parse_lsn(point), snapshot, restart)
                self.report(
                    f"created slot {name} (pgoutput) at consistent point {point}: transactions committed "
                    f"after it are streamed; restart LSN {format_lsn(restart) if restart else '-'}: an initial "
                    "load taken from now on stamps its rows with a version below it (streamer load does)"
                )
                self.log.info(
                    "slot created",
                    consistent_point=point,
                    restart_lsn=format_lsn(restart) if restart else None,
                    snapshot=snapshot,
                )
        if not start:
            return cur
        proto = "2" if catalog.server_version >= 140000 else "1"
        options = {"proto_version": proto, "publication_names": quote_ident(self.publication)}
        if proto == "2":
            options["streaming"] = "on"
        try:
            cur.start_replication(
                slot_name=self.slot,
                slot_type=psycopg2.extras.REPLICATION_LOGICAL,
                start_lsn=self._applied_lsn,
                options=options,
                decode=False,
                status_interval=self._status_interval,
            )
        except psycopg2.errors.ObjectInUse as exc:
            raise SlotInUseError(
                f"replication slot {self.slot!r} is in use by another process: {str(exc).strip()}"
            ) from exc
        except psycopg2.errors.UndefinedObject as exc:
            raise SlotNotFoundError(f"{str(exc).strip()}: run with --create to make it") from exc
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
            raise _StreamLost(exc) from exc
        except psycopg2.Error as exc:
            raise ReplicationError(f"the source refused to start replication: {str(exc).strip()}") from exc
        self._wal = WalStream(conn, self._status_interval)
        if self._applied_lsn:
            # the target holds everything up to here: let a slot that lags (crash before its feedback) catch up
            self._confirm(cur, self._applied_lsn)
        self.log.info(
            "streaming",
            proto_version=proto,
            start_lsn=format_lsn(self._applied_lsn),
            status_interval=self._status_interval,
        )
        return cur

    def _close_stream(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg2.Error:
                pass
        self._conn = self._cursor = self._wal = None

    # ------------------------------------------------------------ main loop
    def run(self) -> ReplicateStats:
        """Stream until stopped (signal, ``until_idle``, ``max_events``); returns the counters."""
        previous = {
            sig: signal.signal(sig, self.stop)
            for sig in (signal.SIGTERM, signal.SIGINT)
            if threading.current_thread() is threading.main_thread()
        }
        try:
            catalog = self._prepare()
            if self.max_events is not None and self.max_events <= 0:
                if self.create and self.slot_report is None:
                    try:
                        self._open_stream(catalog, start=False)  # creates the slot
                    except _StreamLost as lost:
                        raise ReplicationUnavailableError(
                            f"cannot open a replication connection: {one_line(str(lost))}"
                        ) from lost.error
                return self.stats
            self._run_sessions(catalog)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._close_stream()
            if self._catalog is not None:
                self._catalog.close()
            if self._holds is not None:
                try:
                    self._holds.leave()
                except Exception as exc:  # the row expires by itself (load.member_expiry_s)
                    self.log.warning(
                        "could not remove this member from _streamer_members", error=str(exc)[:300]
                    )
        self.log.info(
            "stopped",
            transactions=self.stats.transactions,
            events_applied=self.stats.events_applied,
            batches=self.stats.batches,
            skipped_transactions=self.stats.skipped_transactions,
            dead_lettered=self.stats.dead_lettered,
            last_lsn=format_lsn(self.stats.last_lsn),
        )
        return self.stats

    def _run_sessions(self, catalog: SourceCatalog) -> None:
        failures = 0
        while not self._stop.is_set():
            received = self._messages
            try:
                cur = self._open_stream(catalog)
                self._session(cur)
                return
            except (_StreamLost, SlotInUseError) as lost:
                if isinstance(lost, SlotInUseError) and failures == 0:
                    raise  # another reader; on a reconnect it is our own old session, still ending
                exc: BaseException = lost.error if isinstance(lost, _StreamLost) else lost
                if self._messages > received:  # the connection worked for a while: a fresh failure
                    failures = 0
                failures += 1
                if self._pending:  # complete transactions are fine: apply them before reconnecting
                    self._flush(None)
                self._close_stream()
                if failures >= self.cfg.retry_attempts:
                    raise ReplicationUnavailableError(
                        f"replication connection lost {failures} times, giving up: {one_line(str(exc))} "
                        "(the target and the slot hold every transaction applied; run again once the source "
                        "is back)"
                    ) from exc
                wait = min(self.cfg.retry_max_wait_s, 0.2 * 2**failures)
                self.stats.reconnects += 1
                self.log.warning(
                    "replication connection lost, reconnecting", error=str(exc).strip()[:300], wait=wait
                )
                self._stop.wait(wait)

    def _session(self, cur: Any) -> None:
        assembler = self._assembler
        assert assembler is not None
        assembler.reset()
        cfg = self.cfg
        conn = self._conn
        wal = self._wal
        assert wal is not None
        last_progress = time.monotonic()
        self._last_activity = time.monotonic()
        idle_recorded = time.monotonic()
        while not self._stop.is_set():
            try:
                if wal.feedback_due():
                    wal.feedback(self._applied_lsn)
                msg = wal.read()
            except WalStreamLost as exc:
                raise _StreamLost(psycopg2.OperationalError(str(exc))) from exc
            except WalStreamEnded as exc:
                raise ReplicationError(f"the source ended replication: {exc}") from exc
            now = time.monotonic()
            if msg is not None:
                self._last_activity = now
                self._messages += 1
                if self.stats.first_message_at is None:
                    self.stats.first_message_at = time.perf_counter()
                try:
                    txn = assembler.feed(msg.payload, msg.data_start)
                except ProtocolError as exc:
                    raise ReplicationError(f"cannot read the replication stream: {exc}") from exc
                except psycopg2.Error as exc:
                    raise ReplicationError(f"source catalog query failed: {str(exc).strip()}") from exc
                except PgValueError as exc:  # error policy stop: what came before it is fine
                    if self._pending:
                        self._flush(cur)
                    raise ReplicationApplyError(
                        format_lsn(exc.lsn) if exc.lsn is not None else format_lsn(msg.data_start), str(exc)
                    ) from exc
                if txn is not None:
                    self._accept(txn)
            if self._pending and (
                self._pending_events >= cfg.batch_max_events
                or self._pending_bytes >= cfg.batch_max_bytes
                or (now - self._batch_started) * 1000 >= cfg.batch_max_ms
                or (
                    self.max_events is not None
                    and self.stats.events_applied + self._pending_events >= self.max_events
                )
            ):
                self._flush(cur)
            if self.max_events is not None and self.stats.events_applied >= self.max_events:
                self.log.info("max events reached, stopping", max_events=self.max_events)
                break
            if now - last_progress >= 5:
                last_progress = now
                elapsed = max(now - self.stats.started, 1e-9)
                self.log.info(
                    "progress",
                    transactions=self.stats.transactions,
                    events_applied=self.stats.events_applied,
                    rate=round(self.stats.events_applied / elapsed, 1),
                    lsn=format_lsn(self.stats.last_lsn),
                )
            if self._holds is None:
                self._loading_tables()
            else:  # heartbeat in _streamer_members, and see a new load even when idle
                self._holds.heartbeat(lambda _generation: True, self.log)
            if msg is not None:
                continue
            if (
                not self._pending
                and wal.server_wal_end > self._applied_lsn
                and now - idle_recorded >= self._status_interval
            ):
                idle_recorded = now
                self._advance_idle(cur, wal.server_wal_end)
            if (
                self.until_idle is not None
                and not self._pending
                and now - self._last_activity >= self.until_idle
            ):
                self.log.info("idle, stopping", idle_seconds=self.until_idle)
                break
            timeout = 0.2
            if self._pending:
                timeout = max(0.0, min(timeout, cfg.batch_max_ms / 1000 - (now - self._batch_started)))
            try:
                select.select([conn], [], [], timeout)
            except InterruptedError:
                pass
            except (OSError, ValueError) as exc:  # the connection's socket is gone
                raise _StreamLost(exc) from exc
        if self._pending:
            self._flush(cur)

    def _accept(self, txn: Transaction) -> None:
        if txn.end_lsn <= self._skip_to:
            txn.discard()
            self.stats.skipped_transactions += 1
            if txn.end_lsn <= self._applied_lsn and self._cursor is not None:
                self._confirm(self._cursor, txn.end_lsn)  # in the target already: confirm it
            self.log.debug(
                "transaction already applied, skipped", xid=txn.xid, end_lsn=format_lsn(txn.end_lsn)
            )
            return
        self._skip_to = txn.end_lsn
        if txn.streamed:
            self.stats.streamed_transactions += 1
        if txn.spilled:
            try:
                if self._pending:
                    self._flush(self._cursor)
                self._apply_spilled(txn, self._cursor)
            finally:
                txn.discard()
            return
        if not self._pending:
            self._batch_started = time.monotonic()
        self._pending.append(txn)
        self._pending_events += len(txn.events)
        self._pending_bytes += txn.size

    # ------------------------------------------------------------ one batch
    def _flush(self, cur: Any) -> None:
        batch, self._pending = self._pending, []
        self._pending_events = self._pending_bytes = 0
        if not batch:
            return
        started = time.monotonic()
        events = [ev for txn in batch for ev in txn.events]
        if not self._wait_for_loads(events, cur):
            return  # stopped while a load ran: nothing applied nor confirmed, the server sends it again
        end_lsn = batch[-1].end_lsn
        positions = {(self.topic, 0): end_lsn}
        result = self._apply_with_retry(events, positions, batch, cur)
        self._applied_lsn = end_lsn
        self._confirm(cur, end_lsn)
        self.stats.transactions += len(batch)
        self.stats.events_applied += result.events
        self.stats.batches += 1
        self.stats.last_lsn = end_lsn
        self.stats.last_batch_at = time.perf_counter()
        elapsed = time.monotonic() - started
        if self.on_batch is not None:
            self.on_batch(result, elapsed, batch)
        self.log.debug(
            "batch applied",
            transactions=len(batch),
            events=result.events,
            tables=result.tables,
            seconds=round(elapsed, 4),
            end_lsn=format_lsn(end_lsn),
        )

    def _apply_spilled(self, txn: Transaction, cur: Any) -> None:
        """A transaction that spilled, alone, in chunks; its end LSN recorded and confirmed with the last."""
        self.stats.spilled_transactions += 1
        started = time.monotonic()
        chunks = txn.event_chunks(self.cfg.batch_max_events)
        chunk = next(chunks)
        applied = 0
        while True:
            after = next(chunks, None)
            positions = {(self.topic, 0): txn.end_lsn} if after is None else {}
            if not self._wait_for_loads(chunk.events, cur):
                return  # stopped while a load ran: the server sends the whole transaction again
            result = self._apply_with_retry(chunk.events, positions, [chunk], cur)
            applied += result.events
            self.stats.events_applied += result.events
            self.stats.batches += 1
            if self.on_batch is not None:
                self.on_batch(result, time.monotonic() - started, [chunk])
            if after is None:
                break
            chunk = after
            self._keepalive(cur)
        self._applied_lsn = txn.end_lsn
        self._confirm(cur, txn.end_lsn)
        self.stats.transactions += 1
        self.stats.last_lsn = txn.end_lsn
        self.stats.last_batch_at = time.perf_counter()
        self.log.info(
            "spilled transaction applied",
            xid=txn.xid,
            streamed=txn.streamed,
            events=applied,
            spill_bytes=txn.spill.bytes if txn.spill is not None else 0,
            seconds=round(time.monotonic() - started, 3),
            end_lsn=format_lsn(txn.end_lsn),
        )

    # ------------------------------------------------------------ tables ``streamer load`` is writing
    def _loading_tables(self, fresh: bool = False) -> set[str]:
        """Target tables a load is writing now (re-read at most every 2 s unless ``fresh``).

        Each re-read is also this process's heartbeat in ``_streamer_members`` and acknowledges
        the load's hold generation (:mod:`streamer.holds`): batches are applied in this thread,
        one at a time, each checked against the loading set just before it is applied, so once
        the set is read no batch filtered with an older one is left to apply.
        """
        if self._holds is None:
            self._holds = HoldView(self.sink.engine, "replicate", self.slot)
        return self._holds.tables(lambda _generation: True, fresh=fresh)

    def _wait_for_loads(self, events: Sequence[ChangeEvent], cur: Any) -> bool:
        """Hold the stream while ``streamer load`` writes a table of the batch (as consume holds partitions):
        a delete applied before the load's snapshot row is written would be undone by it. False if stopped."""
        if not self._loading_tables():
            return True
        route = self.sink.router.route
        tables = {route(ev.table).qualified for ev in events}
        held = False
        while True:
            busy = tables & self._loading_tables(fresh=held)
            if not busy:
                if held:
                    self.log.info("load finished: resuming the stream")
                return True
            if not held:
                held = True
                self.log.info("holding the stream while tables are loaded", tables=sorted(busy))
            if self._stop.wait(1.0):
                return False
            self._keepalive(cur)

    def _apply_with_retry(
        self,
        events: list[ChangeEvent],
        positions: dict[tuple[str, int], int],
        batch: Sequence[Transaction],
        cur: Any,
    ) -> ApplyResult:
        txn_of = {id(ev): txn for txn in batch for ev in txn.events}
        conversion_failures = [(txn, change, exc) for txn in batch for change, exc in txn.failed]

        def before_commit(result: ApplyResult) -> None:
            letters = [self._letter_of_change(txn, change, exc) for txn, change, exc in conversion_failures]
            letters += [self._letter_of_event(txn_of.get(id(ev)), ev, exc) for ev, exc in result.failed]
            if letters:
                self._dead_letter(letters)

        generation = self._holds.generation if self._holds is not None else 0
        member_id = self._holds.member.member_id if self._holds is not None else ""
        touched = {self.sink.router.route(ev.table).qualified for ev in events}

        def check_hold(conn: Connection) -> None:
            check_batch(conn, member_id, generation, touched)  # see streamer.holds

        apply = sink_apply(
            self.sink,
            events,
            positions,
            self.group,
            dead_letter=self.cfg.error_policy == "dlq",
            before_commit=before_commit,
            in_transaction=check_hold,
        )

        def before_sleep(state: tenacity.RetryCallState) -> None:
            self.stats.retries += 1
            exc = state.outcome.exception() if state.outcome else None
            self.log.warning(
                "transient database error, retrying batch", attempt=state.attempt_number, error=str(exc)[:300]
            )
            self._keepalive(cur)

        try:
            return apply_with_policy(
                apply,
                retry=RetryPolicy(self.cfg.retry_attempts, self.cfg.retry_max_wait_s),
                transient=_transient,
                permanent=_permanent,
                passthrough=(HoldChangedError,),
                isolate_passthrough=(EventRejectedError, HoldChangedError),
                before_sleep=before_sleep,
                sleep=lambda seconds: self._sleep_with_keepalive(seconds, cur),
                unavailable_hint="nothing of this batch was applied nor confirmed; run again once the target is back",
            )
        except BatchNotIsolatedError as failed:
            first = min((ev.position.lsn or 0 for ev in events), default=0)
            raise ReplicationApplyError(
                f"{format_lsn(first)}..{format_lsn(batch[-1].commit_lsn)}",
                f"a change of this batch of {len(batch)} transaction(s) (applying it event by event did not "
                f"isolate it): {type(failed.error).__name__}: {str(failed.error)[:1000]}",
            ) from None
        except EventRejectedError as failed:
            lsn = failed.event.position.lsn or 0
            raise ReplicationApplyError(
                format_lsn(lsn),
                f"{failed.event.table.qualified} ({failed.event.op.value}): "
                f"{type(failed.error).__name__}: {str(failed.error)[:1000]}",
            ) from None

    def _confirm(self, cur: Any, lsn: int) -> None:
        """Tell the server everything up to ``lsn`` is in the target (only ever called with such an LSN)."""
        if cur is None or self._wal is None:
            return
        try:
            self._wal.feedback(lsn)
        except WalStreamLost as exc:
            # the target holds the position; the slot catches up after the reconnect
            self.log.warning("feedback failed; the target holds the position", error=str(exc).strip())

    def _keepalive(self, cur: Any) -> None:
        """A status update with the position the target holds (never more)."""
        if cur is None or self._wal is None:
            return
        try:
            self._wal.feedback(self._applied_lsn)
        except WalStreamLost:
            pass

    def _advance_idle(self, cur: Any, lsn: int) -> None:
        """Move the position over WAL without transactions of ours: the keep-alive position ``lsn``, taken
        while no complete transaction waits, is written to the target first, then confirmed. Every
        transaction committed before it was sent before that keep-alive and is applied; one still open
        commits after it and is sent again whole. A transient target error leaves it for the next time."""
        try:
            with self.sink.engine.begin() as conn:
                save_offsets(conn, self.group, {(self.topic, 0): lsn})
        except Exception as exc:
            if not _transient(exc):
                raise
            self.log.warning("could not record the idle position, later", error=str(exc).strip()[:300])
            return
        self._applied_lsn = lsn
        self._skip_to = max(self._skip_to, lsn)
        self._confirm(cur, lsn)
        self.log.debug("idle: position moved to the keep-alive's", lsn=format_lsn(lsn))

    def _sleep_with_keepalive(self, seconds: float, cur: Any) -> None:
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, self._status_interval))
            self._keepalive(cur)

    # ------------------------------------------------------------ dead letters (error policy dlq)
    def _letter_base(self, txn: Transaction | None, lsn: int, exc: Exception) -> dict[str, Any]:
        return {
            "error": str(exc)[:4000],
            "error_class": type(exc).__name__,
            "slot": self.slot,
            "group": self.group,
            "lsn": format_lsn(lsn),
            "commit_lsn": format_lsn(txn.commit_lsn) if txn else None,
            "xid": txn.xid if txn else None,
            "commit_ts": txn.commit_ts.isoformat() if txn else None,
            "written_at": dt.datetime.now(dt.UTC).isoformat(),
        }

    def _letter_of_event(self, txn: Transaction | None, ev: ChangeEvent, exc: Exception) -> dict[str, Any]:
        letter = self._letter_base(txn, ev.position.lsn or 0, exc)
        letter.update(
            table=ev.table.qualified,
            op=ev.op.value,
            key=_jsonable(ev.key),
            before=_jsonable(ev.before),
            after=_jsonable(ev.after),
        )
        return letter

    def _letter_of_change(self, txn: Transaction, change: RawChange, exc: Exception) -> dict[str, Any]:
        letter = self._letter_base(txn, change.lsn, exc)
        rel = change.relation
        names = rel.names if rel is not None else ()
        letter.update(
            table=rel.table.qualified if rel is not None else None,
            op=change.op.value,
            old_text=dict(zip(names, tuple_values(change.old), strict=False))
            if change.old is not None
            else None,
            new_text=dict(zip(names, tuple_values(change.new), strict=False))
            if change.new is not None
            else None,
        )
        return letter

    def _dead_letter(self, letters: list[dict[str, Any]]) -> None:
        assert self.dlq_file is not None
        with open(self.dlq_file, "a", encoding="utf-8") as f:
            for letter in letters:
                f.write(json.dumps(letter, default=str, ensure_ascii=False) + "\n")
                self.log.warning(
                    "dead-lettered", lsn=letter["lsn"], table=letter.get("table"), error=letter["error"][:300]
                )
            f.flush()
            os.fsync(f.fileno())
        self.stats.dead_lettered += len(letters)
