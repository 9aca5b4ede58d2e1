"""The Kafka source: a consumer-group member's records as a :class:`~streamer.sources.base.Source`.

Records are read with confluent-kafka (classic group protocol, ``cooperative-sticky`` assignor,
auto-commit off), subscribed by topic regex so a new table's topic is picked up without a
restart (``topic.metadata.refresh.interval.ms``). The open batch is the list of records read and
not yet applied; :meth:`KafkaSource.take` decodes it (in the reading thread, while the batch
before it is applied on the runner's apply thread: the source is *pipelined*).

Offsets: on assignment each partition starts from the offset in ``_streamer_offsets`` when it is
ahead of the group's committed Kafka offset (the process died between the target's commit and
Kafka's), else from Kafka's; that offset is checked first (:mod:`.offsetcheck`: the topic's id
and a fingerprint of the record before it), and one that fails is not used: the partition is
read again from its start, with a warning naming both offsets and the reason. Kafka's offsets are
committed in :meth:`KafkaSource.ack`, after the target's commit.

Rebalance: before partitions are revoked, the open batch is applied and acknowledged
(:meth:`~streamer.sources.base.RunHandle.flush`); when they are lost, their records read but not
applied are dropped and the batch in flight is settled. Fencing
(:class:`~streamer.apply.sink.FencedBatchError`): such partitions are treated as lost and sought
back to the target's stored offset, in case they are still ours.

Holding while ``streamer load`` writes a table: the partition is paused and sought back to its
first record of that table (:meth:`KafkaSource.hold`); the rest of the batch is applied, and
the partition resumes once the load is done (:meth:`KafkaSource.release`).

Dead letters (error policy ``dlq``) are produced to ``consumer.dlq_topic`` with the original
key, value and headers plus ``streamer.error``, ``streamer.error.class``,
``streamer.origin.topic``, ``streamer.origin.partition``, ``streamer.origin.offset`` and
``streamer.consumer.group``, and flushed before the target commits their batch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

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

from streamer import logs
from streamer.apply.holds import HoldChangedError
from streamer.apply.sink import EventRejectedError, FencedBatchError, Sink, is_permanent
from streamer.apply.state import StoredOffset, forget_offset, load_offset_rows
from streamer.core.checkpoint import Checkpoint, OffsetIdentity, Origin, StreamKey
from streamer.core.errors import (
    BrokerUnavailableError,
    DecodeError,
    NoAssignmentError,
    RecordStoppedError,
    SettingsError,
    one_line,
)
from streamer.core.events import ChangeEvent
from streamer.db import is_transient
from streamer.decode.decoder import Decoder
from streamer.pipeline.runner import RunStats
from streamer.settings import ConsumerSettings
from streamer.sources.base import Batch, Pending, RunHandle
from streamer.sources.kafka.offsetcheck import check_starts, fingerprint


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
class Stats(RunStats):
    """Counters of one consumer process, for progress lines, metrics and tests."""

    records: int = 0
    first_record_at: float | None = None  # time.perf_counter() of the first record read
    last_positions: dict[tuple[str, int], int] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True)
class _Record:
    """One record of a batch, decoded: an event, a record with nothing to apply, or a dead letter."""

    msg: Message
    stream: StreamKey
    offset: int
    event: ChangeEvent | None  # None: nothing to apply (a tombstone, a heartbeat) or undecodable
    error: DecodeError | None = None  # undecodable under error policy dlq: dead-lettered


@dataclasses.dataclass(frozen=True)
class _Token:
    """The Kafka side of a :class:`~streamer.sources.base.Batch`: its records, in the order read."""

    records: list[_Record]
    origins: dict[Origin, Message]  # the record of each event
    poison: StreamKey | None  # the partition of the record the batch stops before (error policy stop)

    def letters(self) -> list[tuple[Message, Exception]]:
        return [(r.msg, r.error) for r in self.records if r.error is not None]


class KafkaSource:
    """One consumer-group member's records (see the module docstring)."""

    member_kind = "consume"
    batch_log_level = "info"
    unavailable_hint = "nothing of this batch was applied nor committed; run again once the target is back"
    passthrough: tuple[type[BaseException], ...] = (DeadLetterError, FencedBatchError, HoldChangedError)
    isolate_passthrough: tuple[type[BaseException], ...] = (
        Exception,
    )  # the event-by-event pass's, as they are
    pipelined = True

    def __init__(
        self,
        cfg: ConsumerSettings,
        sink: Sink,
        decoder: Decoder,
        *,
        bootstrap_servers: str,
        group: str,
        topic_regex: str,
        stats: Stats,
        on_stats: Callable[[str], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.sink = sink
        self.decoder = decoder
        self.bootstrap_servers = bootstrap_servers
        self.group = group
        self.member_group = group
        self.topic_regex = topic_regex
        self.stats = stats
        self.on_stats = on_stats
        self.log = logs.get("consume").bind(group=group)
        self._run: RunHandle | None = None
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._pending: list[Message] = []
        self._pending_bytes = 0
        self._batch_started = 0.0
        self._last_activity = time.monotonic()
        self._assigned: set[StreamKey] = set()
        self._held: dict[StreamKey, tuple[int, str]] = {}
        self._topic_ids: dict[str, str | None] = {}
        self._closing = False  # set by close(): rebalance callbacks apply nothing from then on
        self._subscribed_at = 0.0
        self._joined_at: float | None = None  # the first assignment (even an empty one)

    # ------------------------------------------------------------ opening, closing
    def _consumer_config(self) -> dict[str, Any]:
        cfg = self.cfg
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "group.id": self.group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "cooperative-sticky",
            "session.timeout.ms": cfg.session_timeout_ms,
            "heartbeat.interval.ms": cfg.heartbeat_interval_ms,
            "topic.metadata.refresh.interval.ms": cfg.metadata_refresh_ms,
            "isolation.level": "read_committed",
            "enable.partition.eof": False,
            "statistics.interval.ms": cfg.statistics_interval_ms,
            **fetch_config(cfg),
            "client.id": f"streamer-{self.group}",
            "logger": kafka_logger(),
        }
        if self.on_stats is not None:
            conf["stats_cb"] = self.on_stats
        return conf

    def attach(self, run: RunHandle) -> None:
        self._run = run

    def open(self) -> None:
        """Create the consumer and subscribe (the group is joined by the first read)."""
        consumer = Consumer(self._consumer_config())
        self._consumer = consumer
        consumer.subscribe(
            [self.topic_regex], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        self._subscribed_at = time.monotonic()
        self.log.info("subscribed", topics=self.topic_regex)

    def close(self) -> None:
        """Leave the group (the rebalance callbacks apply nothing any more) and flush the dead-letter
        producer. Errors are logged, never raised over the error that ended the run."""
        self._closing = True
        self._pending, self._pending_bytes = [], 0
        try:
            if self._consumer is not None:
                self._consumer.close()
        # confluent-kafka raises a bare KafkaError (no BaseException subclass) from close() when
        # the leave's committed-offsets fetch times out: only a bare except catches it
        except:  # noqa: E722
            self.log.warning("leaving the group failed", error=one_line(str(sys.exc_info()[1]))[:300])
        finally:
            self._consumer = None
            if self._producer is not None:
                left = self._producer.flush(30)
                if left:
                    self.log.warning("dead-letter producer closed with messages undelivered", messages=left)

    def _dlq(self) -> Producer:
        if self._producer is None:
            self._producer = Producer(
                {
                    "bootstrap.servers": self.bootstrap_servers,
                    "enable.idempotence": True,
                    "acks": "all",
                    "client.id": f"streamer-dlq-{self.group}",
                    "logger": kafka_logger(),
                }
            )
        return self._producer

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
            starts: dict[StreamKey, tuple[int, StoredOffset | None]] = {}
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
        starts: dict[StreamKey, tuple[int, StoredOffset | None]],
        stored: Mapping[StreamKey, StoredOffset],
    ) -> None:
        """Verify each start offset belongs to this topic (see :mod:`.offsetcheck`); a partition
        whose offset fails is re-read from its start, and a stale stored row is dropped."""
        # librdkafka's own lines (a purge of unserved events when the client goes) into the structured log
        admin_conf: dict[str, Any] = {"bootstrap.servers": self.bootstrap_servers, "logger": kafka_logger()}
        admin = AdminClient(admin_conf)
        ids, failed = check_starts(self.bootstrap_servers, admin, {tp.topic for tp in partitions}, starts)
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
        if not self._closing and self._run is not None:
            if self._pending:
                self.log.info("partitions revoked: applying pending batch first", records=len(self._pending))
            self._run.flush(wait=True)  # and the batch in flight before it
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
        dropped = self._drop_pending(lost)
        self.log.warning("partitions lost", partitions=sorted(lost), dropped_uncommitted=dropped)
        if not self._closing and self._run is not None:  # while closing, the run settled it
            self._run.finish_inflight()  # its target commit stands (version-guarded); Kafka's may fail
        self._assigned -= lost
        for key in lost:
            self._held.pop(key, None)
        consumer.incremental_unassign(partitions)

    def _drop_pending(self, streams: set[StreamKey]) -> int:
        kept = [m for m in self._pending if _coords(m)[:2] not in streams]
        dropped = len(self._pending) - len(kept)
        self._pending = kept
        self._pending_bytes = sum(len(m.value() or b"") + len(m.key() or b"") for m in kept)
        return dropped

    # ------------------------------------------------------------ reading
    def read(self, wanted: int) -> int:
        assert self._consumer is not None, "open() first"
        msgs = self._consumer.consume(num_messages=wanted, timeout=0.1)
        now = time.monotonic()
        got = 0
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
            got += 1
        if msgs:
            self._last_activity = now
        if self._joined_at is None:
            self._check_assignment_wait(now)
        return got

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

    def pending(self) -> Pending:
        n = len(self._pending)
        return Pending(n, n, self._pending_bytes, self._batch_started)

    def must_close(self) -> bool:
        return False  # records are decoded when the batch is taken

    def caught_up(self) -> bool:
        """Every assigned partition is read to the high watermark of its last fetch response: waiting
        longer for the batch to fill only adds delay (a backlog keeps the batch filling)."""
        assert self._consumer is not None
        live = [TopicPartition(t, p) for t, p in self._assigned if (t, p) not in self._held]
        for tp in self._consumer.position(live) if live else []:
            _low, high = self._consumer.get_watermark_offsets(tp, cached=True)
            if tp.offset >= 0 and high >= 0 and tp.offset < high:
                return False
        return True

    def idle_seconds(self, now: float) -> float | None:
        return None if self._joined_at is None else now - self._last_activity

    def drained(self) -> bool:
        """Whether every assigned partition that is not held has been read to its end, as far as the
        client knows (position and the high watermark of the last fetch response; ListOffsets is not
        trusted, see :mod:`streamer.ops.groups`). A partition whose position or end is not known yet
        does not block: the idle time is the bound there."""
        assert self._consumer is not None
        live = [TopicPartition(t, p) for t, p in sorted(self._assigned) if (t, p) not in self._held]
        if not live:
            return True
        behind = []
        for tp in self._consumer.position(live):
            if tp.offset < 0:
                continue
            _low, high = self._consumer.get_watermark_offsets(tp, cached=True)
            if high >= 0 and tp.offset < high:
                behind.append(f"{tp.topic}[{tp.partition}]@{tp.offset}<{high}")
        if behind:
            self.log.info("idle, but not at the end of every partition: reading on", behind=behind[:10])
            self._last_activity = time.monotonic()
            return False
        return True

    # ------------------------------------------------------------ batches
    def take(self) -> Batch | None:
        """Decode the records read (skipping those of held partitions: fetched before the pause took
        effect, read again after the load). Under error policy ``stop`` the batch ends before the
        first record that cannot be decoded, and carries its :class:`PoisonRecordError`."""
        msgs, self._pending, self._pending_bytes = self._pending, [], 0
        records: list[_Record] = []
        stop: PoisonRecordError | None = None
        decode = self.decoder.decode
        for msg in msgs:
            topic, partition, offset = _coords(msg)
            stream = (topic, partition)
            if stream in self._held:
                continue
            try:
                decoded = decode(topic, partition, offset, msg.key(), msg.value(), headers_of(msg))
            except DecodeError as exc:
                if self.cfg.error_policy == "stop":
                    stop = PoisonRecordError(topic, partition, offset, exc.reason)
                    break
                records.append(_Record(msg, stream, offset, None, exc))
            else:
                records.append(
                    _Record(msg, stream, offset, decoded if isinstance(decoded, ChangeEvent) else None)
                )
        if not records and stop is None:
            return None
        return self._batch(records, self._batch_started, stop)

    def _batch(self, records: list[_Record], started: float, stop: PoisonRecordError | None) -> Batch:
        events: list[ChangeEvent] = []
        origins: dict[Origin, Message] = {}
        positions: dict[StreamKey, int] = {}
        first: dict[StreamKey, int] = {}
        last: dict[StreamKey, Message] = {}
        for r in records:
            if r.event is not None:
                events.append(r.event)
                origins[r.event.origin] = r.msg
            positions[r.stream] = r.offset + 1
            first.setdefault(r.stream, r.offset)
            last[r.stream] = r.msg
        identities = {
            tp: OffsetIdentity(self._topic_ids.get(tp[0]), fingerprint(msg)) for tp, msg in last.items()
        }
        poison = (stop.topic, stop.partition) if stop is not None else None
        return Batch(
            events,
            Checkpoint(positions, first, identities),
            started,
            token=_Token(records, origins, poison),
            units=len(records),
            stop_error=stop,
            empty=not records,
        )

    def without(self, batch: Batch, streams: set[StreamKey]) -> Batch | None:
        token: _Token = batch.token
        records = [r for r in token.records if r.stream not in streams]
        stop = _stop_outside(batch, streams)
        if not records and stop is None:
            return None
        return self._batch(records, batch.started, stop)

    def hold(self, batch: Batch, loading: set[str]) -> Batch | None:
        """Pause each partition at its first record of a table in ``loading`` (sought back there, read
        again once the load is done); the rest of the batch is applied now."""
        route = self.sink.router.route
        token: _Token = batch.token
        held: set[StreamKey] = set()
        for r in token.records:
            if r.stream in held or r.event is None:
                continue
            table = route(r.event.table).qualified
            if table in loading:
                held.add(r.stream)
                self._hold(r.stream, r.offset, table)
        if not held:
            return batch
        records = [r for r in token.records if r.stream not in held or self._held[r.stream][0] > r.offset]
        return self._batch(records, batch.started, _stop_outside(batch, held))

    def _hold(self, stream: StreamKey, offset: int, table: str) -> None:
        """Stop at ``offset`` until the load of ``table`` is done: seek back there and pause."""
        assert self._consumer is not None
        topic, partition = stream
        self._held[stream] = (offset, table)
        tp = TopicPartition(topic, partition, offset)
        self._consumer.pause([tp])
        self._consumer.seek(tp)
        # records of it read since the batch was taken are past ``offset``: read again after the load
        # (kept, they could go out with a later batch once the partition is released)
        self._drop_pending({stream})
        self.log.info(
            "holding partition while its table is loaded",
            topic=topic,
            partition=partition,
            offset=offset,
            table=table,
        )

    def release(self, loading: set[str]) -> None:
        if not self._held or self._consumer is None:
            return
        done = [(tp, off) for tp, (off, table) in self._held.items() if table not in loading]
        if done:
            for stream, _ in done:
                del self._held[stream]
            self._consumer.resume([TopicPartition(t, p) for (t, p), _ in done])
            self.log.info(
                "load finished: resuming partitions", partitions=[f"{t}[{p}]@{o}" for (t, p), o in done]
            )

    def keepalive(self) -> None:
        pass  # librdkafka heartbeats on its own thread; a retry's wait stays within max.poll.interval.ms

    # ------------------------------------------------------------ after the apply
    def dead_letter(self, batch: Batch, failed: Sequence[tuple[ChangeEvent, Exception]]) -> int:
        token: _Token = batch.token
        letters = token.letters() + [(token.origins[ev.origin], exc) for ev, exc in failed]
        if letters:
            self._dead_letter(letters)
        return len(letters)

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
                "dead-lettered", topic=topic, partition=partition, offset=offset, error=str(exc)[:300]
            )
        remaining = producer.flush(30)
        if remaining or errors:
            raise DeadLetterError(
                f"could not produce {remaining + len(errors)} dead letter(s) to {self.cfg.dlq_topic}: {errors[:3]}"
            )

    def fenced(self, batch: Batch, error: FencedBatchError) -> Batch | None:
        """Another owner applied past this batch in some partitions: treat them as lost (drop their
        records read but not applied, commit nothing for them, seek them to the stored offset in case
        they are still ours) and return the rest of the batch, or None when nothing is left."""
        lost = set(error.partitions)
        dropped = self._drop_pending(lost)
        self.log.warning(
            "batch fenced: another member applied these partitions past it; dropping them",
            partitions={
                f"{t}[{p}]": [error.first[(t, p)], o] for (t, p), o in sorted(error.partitions.items())
            },
            dropped_pending=dropped,
        )
        if self._consumer is not None:
            for (t, p), off in sorted(error.partitions.items()):
                if (t, p) in self._assigned:
                    try:
                        self._consumer.seek(TopicPartition(t, p, off))
                    except KafkaException as exc:
                        self.log.warning("seek after fence failed", topic=t, partition=p, error=str(exc))
        return self.without(batch, lost)

    def ack(self, batch: Batch) -> None:
        positions = batch.checkpoint.positions
        if positions and self._consumer is not None:
            offsets = [TopicPartition(t, p, o) for (t, p), o in positions.items()]
            try:
                self._consumer.commit(offsets=offsets, asynchronous=False)
            except KafkaException as exc:
                # the target already holds these offsets (_streamer_offsets); the next assignment uses them
                self.log.warning("kafka commit failed; offsets are safe in the target", error=str(exc))
        self.stats.records += batch.units or 0
        self.stats.last_positions.update(positions)

    def rejected(self, batch: Batch, error: BaseException) -> BaseException:
        if isinstance(error, EventRejectedError):
            token: _Token = batch.token
            return PoisonRecordError(
                *_coords(token.origins[error.event.origin]), f"{type(error.error).__name__}: {error.error}"
            )
        return error

    def transient(self, exc: BaseException) -> bool:
        return is_transient(exc)

    def permanent(self, exc: BaseException) -> bool:
        return is_permanent(exc)

    def batch_fields(self, batch: Batch) -> Mapping[str, Any]:
        offsets = offset_ranges(batch)
        return {
            "records": batch.units,
            "partitions": [f"{t}[{p}]" for t, p in sorted(offsets)],
            "offsets": {f"{t}[{p}]": [first, nxt - 1] for (t, p), (first, nxt) in sorted(offsets.items())},
        }

    def progress_fields(self) -> Mapping[str, Any]:
        return {"records": self.stats.records, "partitions": len(self._assigned)}


def fetch_config(cfg: ConsumerSettings) -> dict[str, Any]:
    """librdkafka's fetch and prefetch-queue properties of the settings: how fast a backlog is read,
    and the memory bound whatever the backlog (see :class:`~streamer.settings.ConsumerSettings`)."""
    return {
        "fetch.wait.max.ms": cfg.fetch_wait_max_ms,
        "queued.max.messages.kbytes": cfg.queued_max_messages_kbytes,
        "queued.min.messages": cfg.queued_min_messages,
        "fetch.max.bytes": cfg.fetch_max_bytes,
        "max.partition.fetch.bytes": cfg.max_partition_fetch_bytes,
        "fetch.queue.backoff.ms": cfg.fetch_queue_backoff_ms,
    }


def _stop_outside(batch: Batch, streams: set[StreamKey]) -> PoisonRecordError | None:
    """The batch's stop error unless its record is in ``streams`` (dropped from the batch: read again)."""
    token: _Token = batch.token
    if token.poison is None or token.poison in streams:
        return None
    assert isinstance(batch.stop_error, PoisonRecordError)
    return batch.stop_error


def offset_ranges(batch: Batch) -> dict[StreamKey, tuple[int, int]]:
    """Per partition of a Kafka batch: (first offset read, next offset)."""
    cp = batch.checkpoint
    return {tp: (cp.first.get(tp, nxt - 1), nxt) for tp, nxt in cp.positions.items()}


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
