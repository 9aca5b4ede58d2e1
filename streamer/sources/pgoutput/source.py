"""The pgoutput source: one replication slot read as a :class:`~streamer.sources.base.Source`.

Moved out of ``streamer/replicate.py`` (issue 12); what it does is described there (the
command's docstring). This module owns the WAL side: setup checks through the
:class:`~streamer.sources.pgoutput.catalog.SourceCatalog`, the replication connection (slot
creation, ``START_REPLICATION``, :class:`~streamer.sources.pgoutput.walstream.WalStream` with its status
updates), reconnecting after a lost connection, assembling whole transactions
(:class:`~streamer.sources.pgoutput.protocol.TransactionAssembler`), skipping transactions the target already
holds, moving the position over idle WAL, and the dead-letter file. The batching, the hold, the
apply and the order "target commit, then feedback" are the runner's
(:mod:`streamer.pipeline.runner`).

Reconnects: a lost connection closes the stream and asks the runner to apply the complete
transactions received (:meth:`PgoutputSource.must_close`; transactions are skipped up to the
last one received, so they must not wait for the server to send them again); the next
:meth:`~PgoutputSource.read` waits its backoff and opens the stream again from the target's
LSN, or gives up with :class:`~streamer.core.errors.ReplicationUnavailableError` after
``consumer.retry_attempts`` failures in a row.

Spilled transactions
--------------------
A transaction larger than ``replicate.max_transaction_memory_bytes`` spills to a file (the
command's docstring, "Large transactions") and is applied alone, in chunks of
``consumer.batch_max_events`` events. Decision: the chunks are ordinary batches of the runner, so
the hold while loading, the retry, the error policy, the observers and the order "target commit,
then ack" are the runner's, per chunk, with nothing of the loop copied here. When such a
transaction arrives the source stops reading the stream and asks the runner to close batches
(:meth:`PgoutputSource.must_close`) until it is done; :meth:`PgoutputSource.take` returns, in
order, the open batch of whole transactions before it (if any), then one chunk per call. A
chunk's :class:`~streamer.core.checkpoint.Checkpoint` is empty (``save_offsets`` then writes no
row: the stored position stays before the transaction), except the last chunk's, which carries
the transaction's end LSN; :meth:`PgoutputSource.ack` confirms to the server only that one, and
then deletes the spill file. A chunk counts 0 towards ``--max-events`` and the last one the
whole transaction's events, so ``--max-events`` stops at a transaction's end as it does for
batches of whole transactions; ``--until-idle`` does not count while chunks are left
(:meth:`PgoutputSource.idle_seconds` is None). A status update with the applied position goes to
the server before every chunk after the first. A chunk taken but never acknowledged (the run
stopped while a load held it) or a stop between chunks ends the transaction's apply: the spill
file is deleted, nothing more of it is applied, and the server sends it again whole next run (the
chunks applied are replayed under the version guard). :meth:`PgoutputSource.close` deletes a spill
file still open (an error, a stop).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import select
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extras
import sqlalchemy as sa

from streamer import logs
from streamer.apply.holds import HoldChangedError
from streamer.apply.sink import EventRejectedError, FencedBatchError, Sink, is_permanent
from streamer.apply.state import load_offsets, save_offsets
from streamer.core.checkpoint import Checkpoint, StreamKey
from streamer.core.errors import (
    PublicationNotFoundError,
    ReplicationApplyError,
    ReplicationError,
    ReplicationPrivilegeError,
    ReplicationUnavailableError,
    SlotAheadError,
    SlotInUseError,
    SlotNotFoundError,
    one_line,
)
from streamer.core.events import ChangeEvent, format_lsn, parse_lsn
from streamer.db import is_transient
from streamer.decode.pgtypes import PgValueError
from streamer.pipeline.policy import BatchNotIsolatedError
from streamer.pipeline.runner import RunStats
from streamer.settings import ConsumerSettings
from streamer.sources.base import Batch, Pending, RunHandle
from streamer.sources.pgoutput.catalog import SourceCatalog, _session_options, origin_topic, quote_ident
from streamer.sources.pgoutput.protocol import (
    ProtocolError,
    RawChange,
    Transaction,
    TransactionAssembler,
    tuple_values,
)
from streamer.sources.pgoutput.walstream import WalStream, WalStreamEnded, WalStreamLost

SLOT_BUSY_GRACE_S = 5.0  # how long a slot still held by another process is waited for at start


@dataclasses.dataclass
class ReplicateStats(RunStats):
    """Counters of one replicate process, for progress lines, tests and the benchmark."""

    transactions: int = 0
    skipped_transactions: int = 0  # already in the target (resent after a restart)
    streamed_transactions: int = 0  # arrived in stream blocks (protocol 2)
    spilled_transactions: int = 0  # larger than replicate.max_transaction_memory_bytes: applied in chunks
    reconnects: int = 0
    last_lsn: int = 0  # end LSN of the last transaction applied
    first_message_at: float | None = None  # time.perf_counter() of the first replication message


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
    so that :func:`~streamer.db.is_transient` and :func:`~streamer.apply.sink.is_permanent` can judge it."""
    if isinstance(exc, psycopg2.Error):
        wrapped: BaseException = sa.exc.DBAPIError.instance(None, None, exc, psycopg2.Error)
        return wrapped
    return exc


def _transient(exc: BaseException) -> bool:
    return is_transient(_as_dbapi_error(exc))


def _permanent(exc: BaseException) -> bool:
    return is_permanent(_as_dbapi_error(exc))


@dataclasses.dataclass
class _Spilling:
    """A spilled transaction being applied chunk by chunk (see "Spilled transactions")."""

    txn: Transaction
    chunks: Iterator[Transaction] | None = None  # None until the first chunk is taken
    next_chunk: Transaction | None = None  # read one ahead: the last chunk carries the end LSN
    taken: list[Transaction] | None = None  # the token of the chunk taken and not yet acknowledged
    last_taken: bool = False
    events: int = 0  # events of the chunks taken so far
    started: float = 0.0


def _jsonable(values: Mapping[str, Any] | None) -> Any:
    if values is None:
        return None
    return {
        k: (v if isinstance(v, str | int | float | bool | type(None)) else str(v)) for k, v in values.items()
    }


class PgoutputSource:
    """One slot's transactions as a :class:`~streamer.sources.base.Source` (see the module docstring)."""

    member_kind = "replicate"
    batch_log_level = "debug"
    unavailable_hint = "nothing of this batch was applied nor confirmed; run again once the target is back"
    passthrough: tuple[type[BaseException], ...] = (HoldChangedError,)
    isolate_passthrough: tuple[type[BaseException], ...] = (EventRejectedError, HoldChangedError)
    pipelined = False  # feedback, keep-alives and hold waits belong to the reading thread

    def __init__(
        self,
        cfg: ConsumerSettings,
        sink: Sink,
        *,
        source_url: str,
        slot: str,
        publication: str,
        tables: Sequence[str],
        create: bool,
        group: str,
        dlq_file: Path | None,
        report: Callable[[str], None],
        stats: ReplicateStats,
        stop: threading.Event,
        max_transaction_memory_bytes: int | None = None,
        spill_dir: Path | None = None,
    ) -> None:
        self.cfg = cfg
        self.max_transaction_memory_bytes = max_transaction_memory_bytes
        self.spill_dir = spill_dir
        self.sink = sink
        self.source_url = source_url
        self.slot = slot
        self.publication = publication
        self.tables = list(tables)
        self.create = create
        self.group = group
        self.member_group = slot
        self.topic = origin_topic(slot)
        self.dlq_file = dlq_file
        self.report = report
        self.stats = stats
        self.slot_report: SlotReport | None = None
        self.log = logs.get("replicate").bind(slot=slot, group=group)
        self._stop = stop
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
        self._idle_recorded = time.monotonic()
        self._applied_lsn = 0  # end LSN of the last transaction committed in the target
        self._skip_to = 0  # transactions ending at or before this are already applied or pending
        self._status_interval = 10.0
        self._messages = 0
        self._failures = 0  # connection losses in a row (reset once a connection delivered messages)
        self._received = 0  # messages received when the stream was last opened
        self._lost: BaseException | None = None  # the last loss, until the next read waits its backoff
        self._close_now = False  # the runner must apply the complete transactions now
        self._stop_error: BaseException | None = None  # raised after the open batch is applied
        self._spilling: _Spilling | None = None  # a spilled transaction applied chunk by chunk

    @property
    def status_interval(self) -> float:
        return self._status_interval

    # ------------------------------------------------------------ setup
    def prepare(self) -> SourceCatalog:
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
            max_memory_bytes=self.max_transaction_memory_bytes,
            spill_dir=self.spill_dir,
        )
        return catalog

    def create_slot_only(self) -> None:
        """``--max-events 0`` with ``--create``: make the slot (when ``prepare`` found none) and stop."""
        assert self._catalog is not None
        if self.create and self.slot_report is None:
            try:
                self._open_stream(self._catalog, start=False)  # creates the slot
            except _StreamLost as lost:
                raise ReplicationUnavailableError(
                    f"cannot open a replication connection: {one_line(str(lost))}"
                ) from lost.error

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

    def close(self) -> None:
        if self._spilling is not None:
            self._end_spill("the run stopped before the spilled transaction was applied")
        self._close_stream()
        if self._catalog is not None:
            self._catalog.close()

    # ------------------------------------------------------------ sessions (connect, lose, reconnect)
    def _connect(self) -> bool:
        """Open the stream (after the backoff of a loss); False when stopped or lost again."""
        if self._lost is not None:
            exc, self._lost = self._lost, None
            if self._failures >= self.cfg.retry_attempts:
                raise ReplicationUnavailableError(
                    f"replication connection lost {self._failures} times, giving up: {one_line(str(exc))} "
                    "(the target and the slot hold every transaction applied; run again once the source "
                    "is back)"
                ) from exc
            wait = min(self.cfg.retry_max_wait_s, 0.2 * 2**self._failures)
            self.stats.reconnects += 1
            self.log.warning(
                "replication connection lost, reconnecting", error=str(exc).strip()[:300], wait=wait
            )
            if self._stop.wait(wait):
                return False
        assert self._catalog is not None and self._assembler is not None
        self._received = self._messages
        try:
            self._open_stream(self._catalog)
        except (_StreamLost, SlotInUseError) as lost:
            self._on_lost(lost)
            return False
        self._assembler.reset()
        self._last_activity = self._idle_recorded = time.monotonic()
        return True

    def _on_lost(self, lost: _StreamLost | SlotInUseError) -> None:
        if isinstance(lost, SlotInUseError) and self._failures == 0:
            raise lost  # another reader; on a reconnect it is our own old session, still ending
        exc: BaseException = lost.error if isinstance(lost, _StreamLost) else lost
        if self._messages > self._received:  # the connection worked for a while: a fresh failure
            self._failures = 0
        self._failures += 1
        self._close_stream()
        self._lost = exc
        self._close_now = bool(self._pending)  # complete transactions are fine: apply them first

    # ------------------------------------------------------------ Source
    def read(self, wanted: int) -> int:
        """One message of the stream (``wanted`` is not needed: a batch closes at a transaction's end)."""
        if self._spilling is not None:
            return 0  # a spilled transaction's chunks are taken first; the stream waits
        if self._wal is None and not self._connect():
            return 0
        try:
            return self._read_one()
        except (_StreamLost, SlotInUseError) as lost:
            self._on_lost(lost)
            return 0

    def _read_one(self) -> int:
        wal, assembler = self._wal, self._assembler
        assert wal is not None and assembler is not None
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
                error = ReplicationApplyError(
                    format_lsn(exc.lsn) if exc.lsn is not None else format_lsn(msg.data_start), str(exc)
                )
                error.__cause__ = exc
                self._stop_error, self._close_now = error, True
                return 1
            if txn is not None:
                self._accept(txn)
            return 1
        if (
            not self._pending
            and wal.server_wal_end > self._applied_lsn
            and now - self._idle_recorded >= self._status_interval
        ):
            self._idle_recorded = now
            self._advance_idle(self._cursor, wal.server_wal_end)
        timeout = 0.2
        if self._pending:
            timeout = max(0.0, min(timeout, self.cfg.batch_max_ms / 1000 - (now - self._batch_started)))
        try:
            select.select([self._conn], [], [], timeout)
        except InterruptedError:
            pass
        except (OSError, ValueError) as exc:  # the connection's socket is gone
            raise _StreamLost(exc) from exc
        return 0

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
            self._spilling = _Spilling(txn)  # applied alone, after the open batch: see take()
            return
        if not self._pending:
            self._batch_started = time.monotonic()
        self._pending.append(txn)
        self._pending_events += len(txn.events)
        self._pending_bytes += txn.size

    def pending(self) -> Pending:
        items = len(self._pending) + (self._spilling is not None)
        return Pending(items, self._pending_events, self._pending_bytes, self._batch_started)

    def must_close(self) -> bool:
        return self._close_now or self._spilling is not None

    def caught_up(self) -> bool:
        return False  # a batch of this source closes on its bounds only

    def idle_seconds(self, now: float) -> float | None:
        if self._spilling is not None:
            return None  # chunks of a spilled transaction are left to apply
        return now - self._last_activity

    def drained(self) -> bool:
        return self._wal is not None  # never "idle" while the stream is lost (it reconnects, or gives up)

    def take(self) -> Batch | None:
        if self._spilling is not None and not self._pending and self._stop_error is None:
            return self._take_chunk(self._spilling)
        batch, self._pending = self._pending, []
        self._pending_events = self._pending_bytes = 0
        error, self._stop_error, self._close_now = self._stop_error, None, False
        if not batch:
            if error is None:
                return None
            return Batch([], Checkpoint({}), time.monotonic(), stop_error=error, empty=True)
        events = [ev for txn in batch for ev in txn.events]
        checkpoint = Checkpoint({(self.topic, 0): batch[-1].end_lsn})
        return Batch(events, checkpoint, time.monotonic(), token=batch, stop_error=error)

    def _take_chunk(self, spilling: _Spilling) -> Batch | None:
        """The next chunk of the spilled transaction as a batch (see "Spilled transactions")."""
        if spilling.taken is not None:
            self._end_spill("a chunk was not applied (stopped while a load held it)")
            return None
        if self._stop.is_set():
            self._end_spill("stopped between chunks")
            return None
        txn = spilling.txn
        try:
            if spilling.chunks is None:
                self.stats.spilled_transactions += 1
                spilling.started = time.monotonic()
                spilling.chunks = txn.event_chunks(self.cfg.batch_max_events)
                chunk = next(spilling.chunks)
            else:
                assert spilling.next_chunk is not None
                chunk = spilling.next_chunk
                self._keepalive(self._cursor)
            after = next(spilling.chunks, None)
        except PgValueError as exc:  # error policy stop: the chunks before it are applied, not confirmed
            self._end_spill("a value cannot be converted")
            error = ReplicationApplyError(
                format_lsn(exc.lsn if exc.lsn is not None else txn.commit_lsn), str(exc)
            )
            error.__cause__ = exc
            return Batch([], Checkpoint({}), time.monotonic(), stop_error=error, empty=True)
        spilling.next_chunk = after
        spilling.last_taken = after is None
        spilling.events += len(chunk.events)
        token = [chunk]
        spilling.taken = token
        if spilling.last_taken:
            return Batch(
                chunk.events,
                Checkpoint({(self.topic, 0): txn.end_lsn}),
                time.monotonic(),
                token=token,
                units=spilling.events,
            )
        return Batch(chunk.events, Checkpoint({}), time.monotonic(), token=token, units=0)

    def _end_spill(self, why: str | None = None) -> None:
        """Delete the spill file and forget the transaction (``why``: it was not applied whole)."""
        spilling, self._spilling = self._spilling, None
        if spilling is None:
            return
        spilling.txn.discard()
        if why is not None:
            self._skip_to = self._applied_lsn  # nothing after the applied position is pending now
            self.log.warning(
                "spilled transaction not applied whole; the server sends it again next run",
                reason=why,
                xid=spilling.txn.xid,
                end_lsn=format_lsn(spilling.txn.end_lsn),
            )

    def attach(self, run: RunHandle) -> None:
        pass  # nothing in a read calls back into the loop

    def hold(self, batch: Batch, loading: set[str]) -> Batch | None:
        return None  # one stream, one order: the whole batch waits

    def release(self, loading: set[str]) -> None:
        pass  # nothing is held between batches: a held batch waits in the runner

    def without(self, batch: Batch, streams: set[StreamKey]) -> Batch | None:
        return None if (self.topic, 0) in streams else batch  # one stream: all of it or nothing

    def fenced(self, batch: Batch, error: FencedBatchError) -> Batch | None:
        raise error  # never: this source's batches carry no first positions (one reader per slot)

    def ack(self, batch: Batch) -> None:
        txns: list[Transaction] = batch.token
        spilling = self._spilling
        if spilling is not None and txns is spilling.taken:
            spilling.taken = None
            if not spilling.last_taken:
                return  # a chunk in the middle: the stored and confirmed position stay before the transaction
            txn = spilling.txn
            self.log.info(
                "spilled transaction applied",
                xid=txn.xid,
                streamed=txn.streamed,
                events=spilling.events,
                spill_bytes=txn.spill.bytes if txn.spill is not None else 0,
                seconds=round(time.monotonic() - spilling.started, 3),
                end_lsn=format_lsn(txn.end_lsn),
            )
            self._end_spill()
        end_lsn = txns[-1].end_lsn
        self._applied_lsn = end_lsn
        self._confirm(self._cursor, end_lsn)
        self.stats.transactions += len(txns)
        self.stats.last_lsn = end_lsn

    def rejected(self, batch: Batch, error: BaseException) -> BaseException:
        txns: list[Transaction] = batch.token
        if isinstance(error, BatchNotIsolatedError):
            first = min((ev.position.lsn or 0 for ev in batch.events), default=0)
            return ReplicationApplyError(
                f"{format_lsn(first)}..{format_lsn(txns[-1].commit_lsn)}",
                f"a change of this batch of {len(txns)} transaction(s) (applying it event by event did not "
                f"isolate it): {type(error.error).__name__}: {str(error.error)[:1000]}",
            )
        assert isinstance(error, EventRejectedError)
        lsn = error.event.position.lsn or 0
        return ReplicationApplyError(
            format_lsn(lsn),
            f"{error.event.table.qualified} ({error.event.op.value}): "
            f"{type(error.error).__name__}: {str(error.error)[:1000]}",
        )

    def transient(self, exc: BaseException) -> bool:
        return _transient(exc)

    def permanent(self, exc: BaseException) -> bool:
        return _permanent(exc)

    def batch_fields(self, batch: Batch) -> Mapping[str, Any]:
        txns: list[Transaction] = batch.token
        return {"transactions": len(txns), "end_lsn": format_lsn(txns[-1].end_lsn)}

    def progress_fields(self) -> Mapping[str, Any]:
        return {"transactions": self.stats.transactions, "lsn": format_lsn(self.stats.last_lsn)}

    def keepalive(self) -> None:
        self._keepalive(self._cursor)

    # ------------------------------------------------------------ feedback
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

    # ------------------------------------------------------------ dead letters (error policy dlq)
    def dead_letter(self, batch: Batch, failed: Sequence[tuple[ChangeEvent, Exception]]) -> int:
        txns: list[Transaction] = batch.token
        txn_of = {id(ev): txn for txn in txns for ev in txn.events}
        letters = [self._letter_of_change(txn, change, exc) for txn in txns for change, exc in txn.failed]
        letters += [self._letter_of_event(txn_of.get(id(ev)), ev, exc) for ev, exc in failed]
        if letters:
            self._dead_letter(letters)
        return len(letters)

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
