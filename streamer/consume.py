"""``streamer consume``: a member of a Kafka consumer group that makes the target equal the source.

The loop
--------
Records are read with confluent-kafka (classic group protocol, ``cooperative-sticky`` assignor,
auto-commit off), subscribed by topic regex so a new table's topic is picked up without a
restart (``topic.metadata.refresh.interval.ms``). They are gathered into batches bounded by
count, bytes and time (``consumer.batch_max_events|bytes|ms``), so memory stays bounded
whatever the backlog. Each batch is decoded, applied by :class:`~streamer.apply.sink.Sink` in one
database transaction that also records the batch's next offsets in ``_streamer_offsets``, and
only after that commit are the offsets committed to Kafka.

Offsets
-------
On assignment each partition starts from the offset in ``_streamer_offsets`` when it is ahead of
the group's committed Kafka offset (the process died between the database commit and the Kafka
commit), else from Kafka's. So a crash anywhere loses nothing and applies nothing twice; and
the version guard makes even a replay of applied records harmless.

That offset is checked first (:mod:`streamer.offsetcheck`): each stored offset carries the
topic's id and a fingerprint of the record before it, so an offset of a deleted and re-created
topic, of another cluster, or past the partition's end is not used: the partition is read again
from its start, with a warning naming topic, partition, both offsets and the reason.

Fencing: each batch transaction locks its partitions' stored offset rows and refuses the batch
(:class:`~streamer.apply.sink.FencedBatchError`) when one is already past the batch's first offset: a
member that lost the partition while its batch was in flight cannot write over the new owner's
work. Such partitions are treated as lost (their pending records dropped, nothing committed for
them); the rest of the batch is applied again.

Errors
------
* Transient database errors (lost connection, deadlock, serialization failure) retry the whole
  batch with exponential backoff, ``consumer.retry_attempts`` times, logged.
* A record that cannot be decoded, or an event the target rejects (constraint violation, bad
  value, schema mismatch), follows ``consumer.error_policy``: ``stop`` (default) commits the
  records before it and exits non-zero naming its topic, partition and offset; ``dlq`` produces
  the original record to ``consumer.dlq_topic`` with headers ``streamer.error``,
  ``streamer.error.class``, ``streamer.origin.topic``, ``streamer.origin.partition``,
  ``streamer.origin.offset`` and ``streamer.consumer.group`` and goes on. Dead letters are
  flushed before the database commit of their batch, so a crash can repeat one, never lose one.
* Rebalance: before partitions are revoked, the pending batch is applied and committed. On
  SIGTERM/SIGINT the current batch is finished and committed, the member leaves the group, and
  the process exits 0.
* Every exit goes through ``_shutdown``: clean stops have finished the pending batch; error
  paths abandon the pending records and settle the batch in flight (its offsets go to Kafka only
  if the target committed it); then the rebalance callbacks apply nothing more, the member leaves
  the group and the dead-letter producer is flushed. The exit code and the one stderr line come
  from the error's class (:mod:`streamer.core.errors`: 1 stopped on a record, 2 bad settings, 3 broker
  or target unavailable), see the README's "Exit codes".
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import tenacity
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from sqlalchemy.engine import Connection

from streamer import logs
from streamer.apply.sink import (
    ApplyResult,
    EventRejectedError,
    FencedBatchError,
    Sink,
    is_permanent,
)
from streamer.apply.state import StoredOffset, forget_offset, load_offset_rows
from streamer.core.checkpoint import OffsetIdentity, Origin
from streamer.core.errors import (
    BrokerUnavailableError,
    DecodeError,
    NoAssignmentError,
    RecordStoppedError,
    SettingsError,
    TargetUnavailableError,
    one_line,
)
from streamer.core.events import ChangeEvent
from streamer.db import is_transient
from streamer.decode import Decoder
from streamer.holds import HoldChangedError, HoldView, check_batch
from streamer.offsetcheck import check_starts, fingerprint
from streamer.pipeline.policy import RetryPolicy, apply_with_policy, sink_apply
from streamer.settings import Settings


class PoisonRecordError(RecordStoppedError):
    """A record could not be decoded or applied and the error policy is ``stop``."""

    def __init__(self, topic: str, partition: int, offset: int, reason: str) -> None:
        self.topic, self.partition, self.offset, self.reason = topic, partition, offset, reason
        super().__init__(
            f"record {topic}[{partition}]@{offset} cannot be applied: {one_line(reason)} "
            "(error_policy=stop: nothing at or after it was committed; fix the cause, or set "
            "consumer.error_policy=dlq to dead-letter such records)"
        )


class DeadLetterError(BrokerUnavailableError):
    """A dead letter could not be produced; the batch was not committed."""


def default_topic_regex(connectors_dir: Path) -> str:
    """Table topics of the connectors in ``connectors_dir``: ``^(prefix)\\.[^.]+\\.[^.]+$``.

    Debezium names table topics ``<topic.prefix>.<schema>.<table>``; the schema-change topic
    (``<prefix>``), transaction topic (``<prefix>.transaction``) and heartbeats do not match.
    """
    prefixes = []
    for path in sorted(connectors_dir.glob("*.json")):
        try:
            data = json.loads(path.read_text())
            prefix = data["config"]["topic.prefix"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if isinstance(prefix, str) and prefix:
            prefixes.append(re.escape(prefix))
    if not prefixes:
        raise SettingsError(
            f"no topic regex: set consumer.topics (STREAMER_CONSUMER__TOPICS) or add connector files with "
            f"topic.prefix to {connectors_dir}"
        )
    # librdkafka's regex engine has no non-capturing groups
    return rf"^({'|'.join(sorted(set(prefixes)))})\.[^.]+\.[^.]+$"


@dataclasses.dataclass
class Stats:
    """Counters of one consumer process, for progress lines, metrics and tests."""

    records: int = 0
    events_applied: int = 0
    batches: int = 0
    dead_lettered: int = 0
    retries: int = 0
    started: float = dataclasses.field(default_factory=time.monotonic)
    first_record_at: float | None = None  # time.perf_counter() of the first record read
    last_batch_at: float | None = None  # time.perf_counter() when the last batch was committed
    last_positions: dict[tuple[str, int], int] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class BatchReport:
    """One batch after its database and Kafka commits (for metrics)."""

    number: int  # 1, 2, ... in this process
    records: int
    result: ApplyResult
    events: Sequence[ChangeEvent]
    offsets: Mapping[tuple[str, int], tuple[int, int]]  # per partition: first offset read, next offset
    apply_seconds: float  # the database transaction(s), retries included
    committed_at: float  # time.time() right after the database commit


@dataclasses.dataclass
class Hooks:
    """Optional observers (metrics); every callable may be None."""

    on_batch: Callable[[ApplyResult, float, Sequence[ChangeEvent]], None] | None = None
    on_retry: Callable[[], None] | None = None
    on_dead_letter: Callable[[], None] | None = None
    on_stats: Callable[[str], None] | None = None
    on_batch_report: Callable[[BatchReport], None] | None = None


class ConsumerProcess:
    """One consumer-group member applying change events to the target through a :class:`Sink`."""

    def __init__(
        self,
        settings: Settings,
        sink: Sink,
        decoder: Decoder,
        *,
        group: str | None = None,
        topics: str | None = None,
        until_idle: float | None = None,
        max_events: int | None = None,
        hooks: Hooks | None = None,
    ) -> None:
        self.settings = settings
        self.cfg = settings.consumer
        self.sink = sink
        self.decoder = decoder
        self.group = group or self.cfg.group
        regex = topics or self.cfg.topics or default_topic_regex(settings.connectors_dir)
        self.topic_regex = regex if regex.startswith("^") else "^" + regex
        self.until_idle = until_idle
        self.max_events = max_events
        self.hooks = hooks or Hooks()
        self.stats = Stats()
        self.log = logs.get("consume").bind(group=self.group)
        self._stop = threading.Event()
        self._pending: list[Message] = []
        self._pending_bytes = 0
        self._batch_started = 0.0
        self._last_activity = time.monotonic()
        self._assigned: set[tuple[str, int]] = set()
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._held: dict[tuple[str, int], tuple[int, str]] = {}
        self._holds = HoldView(sink.engine, "consume", self.group)
        self._inflight: tuple[concurrent.futures.Future[ApplyResult], _Prepared] | None = None
        self._topic_ids: dict[str, str | None] = {}
        self._fenced: set[tuple[str, int]] = set()  # partitions fenced while _flush drained (see there)
        self._closing = False  # set by _shutdown: rebalance callbacks apply nothing from then on
        self._subscribed_at = 0.0
        self._joined_at: float | None = None  # the first assignment (even an empty one)

    # ------------------------------------------------------------ kafka plumbing
    def _consumer_config(self) -> dict[str, Any]:
        conf: dict[str, Any] = {
            "bootstrap.servers": self.settings.bootstrap_servers,
            "group.id": self.group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "cooperative-sticky",
            "session.timeout.ms": self.cfg.session_timeout_ms,
            "heartbeat.interval.ms": self.cfg.heartbeat_interval_ms,
            "topic.metadata.refresh.interval.ms": self.cfg.metadata_refresh_ms,
            "isolation.level": "read_committed",
            "enable.partition.eof": False,
            "statistics.interval.ms": self.cfg.statistics_interval_ms,
            "fetch.wait.max.ms": self.cfg.fetch_wait_max_ms,
            # bounded memory whatever the backlog (see ConsumerSettings)
            "queued.max.messages.kbytes": self.cfg.queued_max_messages_kbytes,
            "queued.min.messages": self.cfg.queued_min_messages,
            "fetch.max.bytes": self.cfg.fetch_max_bytes,
            "max.partition.fetch.bytes": self.cfg.max_partition_fetch_bytes,
            "client.id": f"streamer-{self.group}",
            "logger": kafka_logger(),
        }
        if self.hooks.on_stats is not None:
            conf["stats_cb"] = self.hooks.on_stats
        return conf

    def _dlq(self) -> Producer:
        if self._producer is None:
            self._producer = Producer(
                {
                    "bootstrap.servers": self.settings.bootstrap_servers,
                    "enable.idempotence": True,
                    "acks": "all",
                    "client.id": f"streamer-dlq-{self.group}",
                    "logger": kafka_logger(),
                }
            )
        return self._producer

    def stop(self, *_: object) -> None:
        """Ask the loop to finish its batch, commit and leave (signal-handler compatible)."""
        self._stop.set()

    # ------------------------------------------------------------ rebalance callbacks
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self._joined_at is None:
            self._joined_at = time.monotonic()
            self.log.info("joined the group", seconds=round(self._joined_at - self._subscribed_at, 1))
        if partitions:
            committed = {
                (tp.topic, tp.partition): tp.offset for tp in consumer.committed(partitions, timeout=30)
            }
            with self.sink.engine.connect() as conn:
                stored = load_offset_rows(conn, self.group, {tp.topic for tp in partitions})
            starts: dict[tuple[str, int], tuple[int, StoredOffset | None]] = {}
            for tp in partitions:
                key = (tp.topic, tp.partition)
                kafka_off = committed.get(key, OFFSET_INVALID)
                ours = stored.get(key)
                if ours is not None and (kafka_off < 0 or ours.next_offset > kafka_off):
                    starts[key] = (ours.next_offset, ours)
                elif kafka_off >= 0:
                    starts[key] = (kafka_off, None)
            self._check_starts(partitions, starts, stored)
            for tp in partitions:
                key = (tp.topic, tp.partition)
                if key in starts:
                    tp.offset = starts[key][0]
                self._assigned.add(key)
            self.log.info(
                "partitions assigned",
                partitions=[f"{tp.topic}[{tp.partition}]@{tp.offset}" for tp in partitions],
            )
        consumer.incremental_assign(partitions)
        self._last_activity = time.monotonic()

    def _check_starts(
        self,
        partitions: list[TopicPartition],
        starts: dict[tuple[str, int], tuple[int, StoredOffset | None]],
        stored: Mapping[tuple[str, int], StoredOffset],
    ) -> None:
        """Verify each start offset belongs to this topic (see :mod:`streamer.offsetcheck`); a
        partition whose offset fails is re-read from its start, and a stale stored row is dropped."""
        # librdkafka's own lines (a purge of unserved events when the client goes) into the structured log
        admin_conf: dict[str, Any] = {
            "bootstrap.servers": self.settings.bootstrap_servers,
            "logger": kafka_logger(),
        }
        admin = AdminClient(admin_conf)
        ids, failed = check_starts(
            self.settings.bootstrap_servers, admin, {tp.topic for tp in partitions}, starts
        )
        for tp in partitions:
            self._topic_ids[tp.topic] = ids.get(tp.topic)
        for key, reason in sorted(failed.items()):
            offset, row = starts.pop(key)
            ours = stored.get(key)
            self.log.warning(
                "stored offset does not belong to this topic: reading the partition again from its start",
                topic=key[0],
                partition=key[1],
                offset=offset,
                source="target" if row is not None else "kafka",
                stored_offset=ours.next_offset if ours is not None else None,
                stored_topic_id=ours.identity.topic_id if ours is not None else None,
                topic_id=ids.get(key[0]),
                reason=reason,
            )
            if ours is not None:
                with self.sink.engine.begin() as conn:
                    forget_offset(conn, self.group, key, ours.next_offset)
            starts[key] = (OFFSET_BEGINNING, None)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if not self._closing and (self._pending or self._inflight is not None):
            self.log.info("partitions revoked: applying pending batch first", records=len(self._pending))
            self._flush(wait=True)
        for tp in partitions:
            self._assigned.discard((tp.topic, tp.partition))
            self._held.pop((tp.topic, tp.partition), None)
        if partitions:
            self.log.info(
                "partitions revoked", partitions=[f"{tp.topic}[{tp.partition}]" for tp in partitions]
            )
        consumer.incremental_unassign(partitions)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        lost = {(tp.topic, tp.partition) for tp in partitions}
        kept = [m for m in self._pending if _coords(m)[:2] not in lost]
        self.log.warning(
            "partitions lost", partitions=sorted(lost), dropped_uncommitted=len(self._pending) - len(kept)
        )
        self._pending = kept
        self._pending_bytes = sum(len(m.value() or b"") + len(m.key() or b"") for m in kept)
        if not self._closing:  # while shutting down, _shutdown has settled the batch in flight
            self._drain()  # its database commit stands (version-guarded); its Kafka commit may fail
        self._assigned -= lost
        consumer.incremental_unassign(partitions)

    # ------------------------------------------------------------ main loop
    def run(self) -> Stats:
        """Consume until stopped (signal, ``--until-idle``, ``--max-events``). Returns the counters."""
        consumer = Consumer(self._consumer_config())
        self._consumer = consumer
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="streamer-apply"
        )
        previous = {
            sig: signal.signal(sig, self.stop)
            for sig in (signal.SIGTERM, signal.SIGINT)
            if threading.current_thread() is threading.main_thread()
        }
        clean = False
        try:
            consumer.subscribe(
                [self.topic_regex],
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_lost,
            )
            self._subscribed_at = time.monotonic()
            self.log.info("subscribed", topics=self.topic_regex)
            self._loop(consumer)
            self._flush(wait=True)  # a clean stop: the pending batch is finished and committed
            clean = True
        except KafkaException as exc:
            raise BrokerUnavailableError(
                f"the broker failed: {one_line(str(exc))} (every batch the target committed is committed "
                "to Kafka too, or its offsets are in _streamer_offsets; run again once the broker is back)"
            ) from exc
        except sa.exc.DBAPIError as exc:
            if not is_transient(exc) and not isinstance(exc, sa.exc.InterfaceError):
                raise
            raise TargetUnavailableError(
                f"the target is unavailable: {type(exc.orig).__name__}: {one_line(str(exc.orig))[:500]} "
                "(nothing after the last committed batch was applied; run again once the target is back)"
            ) from exc
        finally:
            self._shutdown(consumer, previous, abandon=not clean)
        self.log.info(
            "stopped",
            records=self.stats.records,
            events_applied=self.stats.events_applied,
            batches=self.stats.batches,
            dead_lettered=self.stats.dead_lettered,
        )
        return self.stats

    def _shutdown(
        self, consumer: Consumer, previous_handlers: Mapping[signal.Signals, Any], *, abandon: bool
    ) -> None:
        """The one way out of :meth:`run`, for every exit path.

        Clean paths (signal, ``--until-idle``, ``--max-events``) have finished the pending batch
        before. Error paths (``abandon``) drop the pending records (they are read again on the
        next run) and wait for the batch in flight: if its database commit happened, exactly its
        positions are committed to Kafka, else nothing of it. Then no rebalance callback applies
        anything any more, the member leaves the group (``consumer.close()``; the apply thread
        is still alive, unused), the apply thread ends and the dead-letter producer is flushed.
        Errors while closing are logged, never raised over the error that ended the loop.
        """
        self._closing = True
        try:
            if abandon:
                if self._pending:
                    self.log.warning(
                        "abandoning records read but not applied (read again on the next run)",
                        records=len(self._pending),
                    )
                self._pending, self._pending_bytes = [], 0
                if self._inflight is not None:
                    try:
                        self._drain()  # commits its positions to Kafka only if the target committed it
                    except Exception as exc:
                        self.log.warning(
                            "the batch in flight was not committed", error=one_line(str(exc))[:300]
                        )
            try:
                consumer.close()  # leaves the group; _on_revoke applies nothing now
            # confluent-kafka raises a bare KafkaError (no BaseException subclass) from close() when
            # the leave's committed-offsets fetch times out: only a bare except catches it
            except:  # noqa: E722
                self.log.warning("leaving the group failed", error=one_line(str(sys.exc_info()[1]))[:300])
            self._leave_holds()
        finally:
            assert self._executor is not None
            self._executor.shutdown(wait=True)
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)
            if self._producer is not None:
                left = self._producer.flush(30)
                if left:
                    self.log.warning("dead-letter producer closed with messages undelivered", messages=left)

    def _loop(self, consumer: Consumer) -> None:
        cfg = self.cfg
        last_progress = time.monotonic()
        while not self._stop.is_set():
            budget = cfg.batch_max_events - len(self._pending)
            if self.max_events is not None:
                budget = min(budget, self.max_events - self._accounted())
            wanted = max(1, min(budget, 1000))
            msgs = consumer.consume(num_messages=wanted, timeout=0.1) if budget > 0 else []
            now = time.monotonic()
            for msg in msgs:
                err = msg.error()
                if err is not None:
                    if err.fatal() or err.code() in (
                        KafkaError._AUTHENTICATION,
                        KafkaError.TOPIC_AUTHORIZATION_FAILED,
                    ):
                        raise KafkaException(err)
                    if err.code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                        self.log.warning("kafka", error=str(err))
                    continue
                if not self._pending:
                    self._batch_started = now
                if self.stats.first_record_at is None:
                    self.stats.first_record_at = time.perf_counter()
                self._pending.append(msg)
                self._pending_bytes += len(msg.value() or b"") + len(msg.key() or b"")
            if msgs:
                self._last_activity = now
            if self._inflight is not None and self._inflight[0].done():
                self._drain()  # a quiet stream: commit to Kafka and account now, not at the next batch
            if self._pending and (
                len(self._pending) >= cfg.batch_max_events
                or self._pending_bytes >= cfg.batch_max_bytes
                or (now - self._batch_started) * 1000 >= cfg.batch_max_ms
                or (cfg.close_batch_when_caught_up and len(msgs) < wanted and self._caught_up(consumer))
                or (self.max_events is not None and self._accounted() >= self.max_events)
            ):
                self._flush()
            if self.max_events is not None and self._accounted() >= self.max_events:
                break
            if self._joined_at is None:
                self._check_assignment_wait(now)
            elif (
                self.until_idle is not None
                and not self._pending
                and now - self._last_activity >= self.until_idle
                and self._drained(consumer)
            ):
                self.log.info("idle, stopping", idle_seconds=self.until_idle)
                break
            if self._held:
                self._release_held()  # the loading set is re-read at most every 2 s
            self._holds.heartbeat(self._can_ack, self.log)  # and see a new load even when idle
            if now - last_progress >= 5:
                last_progress = now
                elapsed = max(now - self.stats.started, 1e-9)
                self.log.info(
                    "progress",
                    records=self.stats.records,
                    events_applied=self.stats.events_applied,
                    rate=round(self.stats.events_applied / elapsed, 1),
                    partitions=len(self._assigned),
                )

    def _check_assignment_wait(self, now: float) -> None:
        """No assignment yet: idle time does not count (``--until-idle`` must not end a run that never
        read), and a group that never completes a rebalance for this member is an error, not a wait
        without end. Seen on the local broker: a member gone while it led the group stays its leader,
        and every SyncGroup of a new member answers REBALANCE_IN_PROGRESS; real Kafka expires it."""
        waited = now - self._subscribed_at
        if waited < self.cfg.assignment_timeout_s:
            return
        raise NoAssignmentError(
            f"group {self.group!r} assigned no partitions to this member (not even an empty assignment) "
            f"within {waited:.0f} s of subscribing to {self.topic_regex!r} (consumer.assignment_timeout_s): "
            "the group coordinator never completed a rebalance. Check the group with "
            f"`streamer status`; when no other member of it is alive, the broker keeps a member that is "
            f"gone: move the group's positions to a new group with `streamer replay --group NEW "
            f"--to group:{self.group}` and consume with --group NEW"
        )

    def _caught_up(self, consumer: Consumer) -> bool:
        """Every assigned partition is read to the high watermark of its last fetch response: waiting
        longer for the batch to fill only adds delay (a backlog keeps the batch filling)."""
        live = [TopicPartition(t, p) for t, p in self._assigned if (t, p) not in self._held]
        for tp in consumer.position(live) if live else []:
            _low, high = consumer.get_watermark_offsets(tp, cached=True)
            if tp.offset >= 0 and high >= 0 and tp.offset < high:
                return False
        return True

    def _drained(self, consumer: Consumer) -> bool:
        """Whether every assigned partition that is not held has been read to its end, as far as the
        client knows (position and the high watermark of the last fetch response; ListOffsets is not
        trusted, see :mod:`streamer.groups`). A partition whose position or end is not known yet
        does not block: the idle time is the bound there."""
        live = [TopicPartition(t, p) for t, p in sorted(self._assigned) if (t, p) not in self._held]
        if not live:
            return True
        behind = []
        for tp in consumer.position(live):
            if tp.offset < 0:
                continue
            _low, high = consumer.get_watermark_offsets(tp, cached=True)
            if high >= 0 and tp.offset < high:
                behind.append(f"{tp.topic}[{tp.partition}]@{tp.offset}<{high}")
        if behind:
            self.log.info("idle, but not at the end of every partition: reading on", behind=behind[:10])
            self._last_activity = time.monotonic()
            return False
        return True

    # ------------------------------------------------------------ one batch
    def _flush(self, wait: bool = False) -> None:
        """Decode the pending records and hand them to the apply thread.

        The previous batch is finished (database commit, then Kafka commit) first, so batches are
        applied strictly in order while the next one is read and decoded: decoding (Python) and
        the database round trips (no GIL) overlap. ``wait`` also finishes this batch.
        """
        batch, self._pending, self._pending_bytes = self._pending, [], 0
        prepared = self._decode(batch) if batch else None
        # partitions the batch in flight finds fenced are sought back to the stored offset: this
        # batch's records of them were read before that seek (they are read again after it); only
        # those, never records read after the seek (a stale set here once dropped them for good)
        self._fenced = set()
        self._drain()
        if prepared is not None and self._fenced:
            prepared = prepared.without(self._fenced)  # read before the seek back; read again
        if prepared is not None:
            assert self._executor is not None
            future = self._executor.submit(self._apply_timed, prepared)
            self._inflight = (future, prepared)
            if wait or prepared.poison is not None:
                self._drain()

    def _apply_timed(self, prepared: _Prepared) -> ApplyResult:
        started = time.monotonic()
        result = self._apply_with_retry(prepared)
        prepared.committed_at = time.time()
        prepared.apply_seconds = time.monotonic() - started
        return result

    def _decode(self, batch: list[Message]) -> _Prepared:
        prepared = _Prepared(started=time.monotonic())
        last: dict[tuple[str, int], Message] = {}
        loading = self._loading_tables()
        prepared.generation = self._holds.generation
        for msg in batch:
            topic, partition, offset = _coords(msg)
            if (topic, partition) in self._held:
                continue  # fetched before the pause took effect; read again after the load
            try:
                decoded = self.decoder.decode(
                    topic, partition, offset, msg.key(), msg.value(), headers_of(msg)
                )
            except DecodeError as exc:
                if self.cfg.error_policy == "stop":
                    prepared.poison = (msg, exc)
                    break
                prepared.dead.append((msg, exc))
            else:
                if isinstance(decoded, ChangeEvent):
                    table = self.sink.router.route(decoded.table).qualified if loading else ""
                    if table in loading:
                        self._hold(topic, partition, offset, table)
                        continue
                    prepared.events.append(decoded)
                    prepared.origins[decoded.origin] = msg
            prepared.positions[(topic, partition)] = offset + 1
            prepared.first.setdefault((topic, partition), offset)
            prepared.counts[(topic, partition)] = prepared.counts.get((topic, partition), 0) + 1
            last[(topic, partition)] = msg
            prepared.records += 1
        for tp, msg in last.items():
            prepared.identities[tp] = OffsetIdentity(self._topic_ids.get(tp[0]), fingerprint(msg))
        return prepared

    # ------------------------------------------------------------ tables being loaded
    def _loading_tables(self) -> set[str]:
        """Target tables ``streamer load`` is writing now (re-read at most every 2 s).

        Each re-read is also this member's heartbeat in ``_streamer_members``, and acknowledges
        the load's hold generation once no batch decoded with an older loading set is in flight
        (:mod:`streamer.holds`): the loader opens its snapshot only after every live member did.
        """
        return self._holds.tables(self._can_ack)

    def _can_ack(self, generation: int) -> bool:
        """No batch filtered with a loading set older than ``generation`` is still to be applied."""
        return self._inflight is None or self._inflight[1].generation >= generation

    def _leave_holds(self) -> None:
        try:
            self._holds.leave()
        except Exception as exc:  # the row expires by itself (load.member_expiry_s)
            self.log.warning("could not remove this member from _streamer_members", error=str(exc)[:300])

    def _hold(self, topic: str, partition: int, offset: int, table: str) -> None:
        """Stop at ``offset`` until the load of ``table`` is done: seek back there and pause."""
        assert self._consumer is not None
        self._held[(topic, partition)] = (offset, table)
        tp = TopicPartition(topic, partition, offset)
        self._consumer.pause([tp])
        self._consumer.seek(tp)
        self.log.info(
            "holding partition while its table is loaded",
            topic=topic,
            partition=partition,
            offset=offset,
            table=table,
        )

    def _release_held(self) -> None:
        if not self._held:
            return
        loading = self._loading_tables()
        done = [(tp, off) for tp, (off, table) in self._held.items() if table not in loading]
        if done and self._consumer is not None:
            for (topic, partition), _ in done:
                del self._held[(topic, partition)]
            self._consumer.resume([TopicPartition(t, p) for (t, p), _ in done])
            self.log.info(
                "load finished: resuming partitions", partitions=[f"{t}[{p}]@{o}" for (t, p), o in done]
            )

    def _accounted(self) -> int:
        """Records read so far: applied, in flight and pending."""
        inflight = self._inflight[1].records if self._inflight is not None else 0
        return self.stats.records + inflight + len(self._pending)

    def _drain(self) -> None:
        """Wait for the batch in flight, then commit its offsets to Kafka and account for it."""
        if self._inflight is None:
            return
        future, prepared = self._inflight
        self._inflight = None
        while True:
            try:
                result = future.result()
                break
            except FencedBatchError as fenced:
                rest = self._on_fenced(prepared, fenced)
                if rest is None:
                    return
                assert self._executor is not None
                prepared, future = rest, self._executor.submit(self._apply_timed, rest)
        self._commit(prepared.positions)
        self.stats.records += prepared.records
        self.stats.events_applied += result.events
        self.stats.batches += 1
        self.stats.last_positions.update(prepared.positions)
        self.stats.last_batch_at = time.perf_counter()
        elapsed = time.monotonic() - prepared.started
        if self.hooks.on_batch is not None:
            self.hooks.on_batch(result, elapsed, prepared.events)
        offsets = {tp: (prepared.first.get(tp, nxt - 1), nxt) for tp, nxt in prepared.positions.items()}
        if self.hooks.on_batch_report is not None:
            self.hooks.on_batch_report(
                BatchReport(
                    self.stats.batches,
                    prepared.records,
                    result,
                    prepared.events,
                    offsets,
                    prepared.apply_seconds,
                    prepared.committed_at,
                )
            )
        self.log.info(
            "batch applied",
            batch=self.stats.batches,
            records=prepared.records,
            events=result.events,
            tables=result.tables,
            seconds=round(elapsed, 4),
            apply_seconds=round(prepared.apply_seconds, 4),
            partitions=[f"{t}[{p}]" for t, p in sorted(offsets)],
            offsets={f"{t}[{p}]": [first, nxt - 1] for (t, p), (first, nxt) in sorted(offsets.items())},
        )
        if prepared.poison is not None:
            msg, err = prepared.poison
            raise PoisonRecordError(*_coords(msg), err.reason if isinstance(err, DecodeError) else str(err))

    def _on_fenced(self, prepared: _Prepared, fenced: FencedBatchError) -> _Prepared | None:
        """Another owner applied past this batch in some partitions: treat them as lost (drop their
        pending records, commit nothing for them, seek them to the stored offset in case they are
        still ours) and return the rest of the batch to apply again, or None when nothing is left."""
        lost = set(fenced.partitions)
        self._fenced |= lost
        kept = [m for m in self._pending if _coords(m)[:2] not in lost]
        self.log.warning(
            "batch fenced: another member applied these partitions past it; dropping them",
            partitions={
                f"{t}[{p}]": [fenced.first[(t, p)], o] for (t, p), o in sorted(fenced.partitions.items())
            },
            dropped_pending=len(self._pending) - len(kept),
        )
        self._pending = kept
        self._pending_bytes = sum(len(m.value() or b"") + len(m.key() or b"") for m in kept)
        if self._consumer is not None:
            for (t, p), off in sorted(fenced.partitions.items()):
                if (t, p) in self._assigned:
                    try:
                        self._consumer.seek(TopicPartition(t, p, off))
                    except KafkaException as exc:
                        self.log.warning("seek after fence failed", topic=t, partition=p, error=str(exc))
        rest = prepared.without(lost)
        return rest if rest.records or rest.poison is not None else None

    def _apply_with_retry(self, prepared: _Prepared) -> ApplyResult:
        events, positions, origins, dead = (
            prepared.events,
            prepared.positions,
            prepared.origins,
            prepared.dead,
        )
        route = self.sink.router.route
        touched = {route(ev.table).qualified for ev in events}
        generation = prepared.generation

        def check_hold(conn: Connection) -> None:
            check_batch(conn, self._holds.member.member_id, generation, touched)

        def before_commit(result: ApplyResult) -> None:
            letters = list(dead)
            for ev, exc in result.failed:
                letters.append((origins[ev.origin], exc))
            if letters:
                self._dead_letter(letters)

        apply = sink_apply(
            self.sink,
            events,
            positions,
            self.group,
            dead_letter=self.cfg.error_policy == "dlq",
            before_commit=before_commit,
            first=prepared.first,
            identities=prepared.identities,
            in_transaction=check_hold,
        )
        try:
            return apply_with_policy(
                apply,
                retry=RetryPolicy(self.cfg.retry_attempts, self.cfg.retry_max_wait_s),
                transient=is_transient,
                permanent=is_permanent,
                passthrough=(DeadLetterError, FencedBatchError, HoldChangedError),
                isolate_passthrough=(Exception,),  # every error of the event-by-event pass as it is
                before_sleep=self._before_retry,
            )
        except EventRejectedError as failed:
            raise PoisonRecordError(
                *_coords(origins[failed.event.origin]), f"{type(failed.error).__name__}: {failed.error}"
            ) from None

    def _before_retry(self, state: tenacity.RetryCallState) -> None:
        self.stats.retries += 1
        if self.hooks.on_retry is not None:
            self.hooks.on_retry()
        exc = state.outcome.exception() if state.outcome else None
        self.log.warning(
            "transient database error, retrying batch", attempt=state.attempt_number, error=str(exc)[:300]
        )

    def _dead_letter(self, letters: list[tuple[Message, Exception]]) -> None:
        producer = self._dlq()
        errors: list[str] = []

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                errors.append(str(err))

        for msg, exc in letters:
            topic, partition, offset = _coords(msg)
            headers: list[tuple[str, str | bytes | None]] = list(headers_of(msg))
            headers += [
                ("streamer.error", str(exc).encode()[:4000]),
                ("streamer.error.class", type(exc).__name__.encode()),
                ("streamer.origin.topic", topic.encode()),
                ("streamer.origin.partition", str(partition).encode()),
                ("streamer.origin.offset", str(offset).encode()),
                ("streamer.consumer.group", self.group.encode()),
            ]
            producer.produce(
                self.cfg.dlq_topic, value=msg.value(), key=msg.key(), headers=headers, on_delivery=delivered
            )
            self.log.warning(
                "dead-lettered",
                topic=topic,
                partition=partition,
                offset=offset,
                error=str(exc)[:300],
            )
        remaining = producer.flush(30)
        if remaining or errors:
            raise DeadLetterError(
                f"could not produce {remaining + len(errors)} dead letter(s) to {self.cfg.dlq_topic}: {errors[:3]}"
            )
        self.stats.dead_lettered += len(letters)
        if self.hooks.on_dead_letter is not None:
            for _ in letters:
                self.hooks.on_dead_letter()

    def _commit(self, positions: Mapping[tuple[str, int], int]) -> None:
        if not positions or self._consumer is None:
            return
        offsets = [TopicPartition(t, p, o) for (t, p), o in positions.items()]
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # the target already holds these offsets (_streamer_offsets); the next assignment uses them
            self.log.warning("kafka commit failed; offsets are safe in the target", error=str(exc))


class _KafkaLogHandler(logging.Handler):
    """librdkafka's own log lines (session timeouts, broker down, ...) as structured log events."""

    def emit(self, record: logging.LogRecord) -> None:
        log = logs.get("librdkafka")
        if record.levelno >= logging.ERROR:
            log.error("librdkafka", message=record.getMessage())
        elif record.levelno >= logging.WARNING:
            log.warning("librdkafka", message=record.getMessage())
        else:
            log.info("librdkafka", message=record.getMessage())


def kafka_logger() -> logging.Logger:
    """The logger given to confluent-kafka clients, so that librdkafka writes nothing to stderr itself."""
    logger = logging.getLogger("streamer.librdkafka")
    if not logger.handlers:
        logger.addHandler(_KafkaLogHandler())
        logger.propagate = False
        logger.setLevel(logging.INFO)
    return logger


def _coords(msg: Message) -> tuple[str, int, int]:
    topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
    assert topic is not None and partition is not None and offset is not None
    return topic, partition, offset


def headers_of(msg: Message) -> list[tuple[str, bytes | None]]:
    raw = msg.headers() or []
    items = raw.items() if isinstance(raw, dict) else raw
    return [(k, v.encode() if isinstance(v, str) else v) for k, v in items]


@dataclasses.dataclass
class _Prepared:
    """A decoded batch on its way to the apply thread."""

    started: float
    records: int = 0
    events: list[ChangeEvent] = dataclasses.field(default_factory=list)
    origins: dict[Origin, Message] = dataclasses.field(default_factory=dict)  # the record of each event
    positions: dict[tuple[str, int], int] = dataclasses.field(default_factory=dict)
    dead: list[tuple[Message, Exception]] = dataclasses.field(default_factory=list)
    poison: tuple[Message, Exception] | None = None
    first: dict[tuple[str, int], int] = dataclasses.field(default_factory=dict)
    generation: int = 0  # the hold generation of the loading set it was filtered with
    apply_seconds: float = 0.0
    committed_at: float = 0.0
    counts: dict[tuple[str, int], int] = dataclasses.field(default_factory=dict)  # records per partition
    identities: dict[tuple[str, int], OffsetIdentity] = dataclasses.field(default_factory=dict)

    def without(self, partitions: set[tuple[str, int]]) -> _Prepared:
        """The same batch minus the records of ``partitions``."""

        def keep(msg: Message) -> bool:
            return _coords(msg)[:2] not in partitions

        poison = self.poison if self.poison is not None and keep(self.poison[0]) else None
        return _Prepared(
            started=self.started,
            records=self.records - sum(n for tp, n in self.counts.items() if tp in partitions),
            events=[e for e in self.events if e.origin.stream not in partitions],
            origins={k: m for k, m in self.origins.items() if k.stream not in partitions},
            positions={tp: o for tp, o in self.positions.items() if tp not in partitions},
            dead=[(m, e) for m, e in self.dead if keep(m)],
            poison=poison,
            first={tp: o for tp, o in self.first.items() if tp not in partitions},
            generation=self.generation,
            counts={tp: n for tp, n in self.counts.items() if tp not in partitions},
            identities={tp: i for tp, i in self.identities.items() if tp not in partitions},
        )


def build_decoder(settings: Settings) -> Decoder:
    """A decoder with the Schema Registry client the settings name (for Avro), if any."""
    registry = None
    if settings.schema_registry_url:
        from confluent_kafka.schema_registry import SchemaRegistryClient

        registry = SchemaRegistryClient({"url": settings.schema_registry_url})
    return Decoder(schema_registry=registry)
