"""``streamer replicate``: PostgreSQL logical replication (pgoutput) straight into the apply engine.

No broker, no Kafka Connect: one process reads the source's replication slot with psycopg2's
``LogicalReplicationConnection`` and the built-in ``pgoutput`` plugin (protocol 2 with
``streaming 'on'`` from PostgreSQL 14, else 1), parses the messages itself
(:mod:`streamer.sources.pgoutput.protocol`), converts the text values into the same Python values the Debezium
path gives (:mod:`streamer.decode.pgtypes`), and applies them through the same
:class:`~streamer.apply.sink.Sink` as ``streamer consume``: same routing, coalescing, version guard
(the version column holds the change's LSN, as with Debezium) and state tables.

Batches and positions
---------------------
A batch holds whole transactions only, so a transaction that spans tables lands in the target
atomically. It closes at a transaction boundary once it reaches ``consumer.batch_max_events``
events or ``consumer.batch_max_bytes`` bytes, or ``consumer.batch_max_ms`` after its first
transaction arrived (a single larger transaction is one batch of its own). The batch is
applied in one target transaction that also records, in ``_streamer_offsets`` (group = the slot
name unless ``--group``, topic ``pg:<slot>``, partition 0), the end LSN of its last transaction.

Large transactions
------------------
A transaction whose buffered changes exceed ``replicate.max_transaction_memory_bytes`` spills the
rest to a file under ``<replicate.state_dir>/spill`` (:mod:`streamer.sources.pgoutput.spill`,
:class:`~streamer.sources.pgoutput.protocol.TransactionAssembler`), so memory stays bounded whatever its size.
When it commits, the batch before it is applied first, then the transaction alone, in chunks of
``consumer.batch_max_events`` events, one target transaction each, read from the file in WAL
order. Only the last chunk records the transaction's end LSN in ``_streamer_offsets``, and only
then is it confirmed: a crash in the middle leaves the target with part of the transaction and
the stored position before it, so the whole transaction is sent again and applied again from its
first change; the version-guarded upserts and deletes make that idempotent (a change already
applied is the same version, not newer), and the target converges once the replay passes the
transaction's end. The spill file is deleted once the transaction is applied (or skipped, or
aborted); files a crashed run left are deleted when the next run of the slot starts. A run that
stops between chunks (signal, ``--max-events``, an error, a stop while a load holds a chunk)
deletes the file and leaves the rest to the server, which sends the whole transaction again.
How the chunks go through the runner is described in
:mod:`streamer.sources.pgoutput.source` ("Spilled transactions").

Only then is that LSN confirmed to the server, so the slot never moves past what the target
holds. The stream is read and answered by :class:`~streamer.sources.pgoutput.walstream.WalStream` (libpq on
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

Layout (issue 12): this module is the command's façade. The WAL side (setup checks, stream,
feedback, reconnect, transaction assembly, dead-letter file) is
:class:`~streamer.sources.pgoutput.source.PgoutputSource`; the loop (batch bounds, until-idle,
max-events, progress, hold while loading, apply with the error policy, feedback only after the
target commit) is the one :class:`~streamer.pipeline.runner.Runner` every source runs on.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from streamer import logs
from streamer.apply.sink import ApplyResult, Sink
from streamer.core.errors import SettingsError
from streamer.core.events import format_lsn
from streamer.pipeline.runner import Runner, stopping_on_signals
from streamer.settings import Settings
from streamer.sources.base import BatchDone, BatchObserver, Observers
from streamer.sources.pgoutput.catalog import SourceCatalog, origin_topic, quote_ident
from streamer.sources.pgoutput.protocol import Transaction
from streamer.sources.pgoutput.source import PgoutputSource, ReplicateStats, SlotReport
from streamer.sources.pgoutput.spill import spill_directory

__all__ = [
    "ReplicateStats",
    "ReplicationProcess",
    "SlotReport",
    "SourceCatalog",
    "origin_topic",
    "quote_ident",
]


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
        observers: Sequence[BatchObserver] = (),
    ) -> None:
        self.settings = settings
        self.cfg = settings.consumer
        self.sink = sink
        self.slot = slot
        self.group = group or slot
        self.topic = origin_topic(slot)
        self.until_idle = until_idle
        self.max_events = max_events
        if self.cfg.error_policy == "dlq" and dlq_file is None:
            raise SettingsError(
                "error policy dlq without Kafka needs --dlq-file PATH (changes that cannot be applied are "
                "appended there as JSON lines)"
            )
        self.on_batch = on_batch
        self.observers = [Observers(batch=self._on_batch), *observers]
        self.stats = ReplicateStats()
        self.log = logs.get("replicate").bind(slot=slot, group=self.group)
        self._stop = threading.Event()
        self.source = PgoutputSource(
            self.cfg,
            sink,
            source_url=source_url,
            slot=slot,
            publication=publication,
            tables=tables,
            create=create,
            group=self.group,
            dlq_file=dlq_file,
            report=report or (lambda line: None),
            stats=self.stats,
            stop=self._stop,
            max_transaction_memory_bytes=settings.replicate.max_transaction_memory_bytes,
            spill_dir=spill_directory(settings.replicate.state_dir),
        )

    @property
    def slot_report(self) -> SlotReport | None:
        return self.source.slot_report

    def stop(self, *_: object) -> None:
        """Finish the complete transactions received, confirm, and return (signal-handler compatible)."""
        self._stop.set()

    def _on_batch(self, done: BatchDone) -> None:
        if self.on_batch is not None:
            self.on_batch(done.result, done.seconds, done.batch.token)

    def run(self) -> ReplicateStats:
        """Stream until stopped (signal, ``until_idle``, ``max_events``); returns the counters."""
        with stopping_on_signals(self.stop):
            try:
                self.source.prepare()
                if self.max_events is not None and self.max_events <= 0:
                    self.source.create_slot_only()
                    return self.stats
                Runner.configured(
                    self.source,
                    self.sink,
                    self.cfg,
                    stop=self._stop,
                    stats=self.stats,
                    log=self.log,
                    until_idle=self.until_idle,
                    max_events=self.max_events,
                    observers=self.observers,
                    keepalive_interval=self.source.status_interval,
                ).run()
            finally:
                self.source.close()
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
