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

Layout (issue 12): this module is the command's façade (signals, the exit's error classes, the
metrics hooks). The Kafka side (consumer, rebalance, offset checks, holds, dead-letter topic) is
:class:`~streamer.sources.kafka.source.KafkaSource`; the loop (batch bounds, until-idle,
max-events, progress, hold while loading, apply with the error policy on an apply thread with one
batch in flight, Kafka commit only after the target's) is the one
:class:`~streamer.pipeline.runner.Runner` every source runs on.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Mapping, Sequence

import sqlalchemy as sa
from confluent_kafka import KafkaException

from streamer import logs
from streamer.apply.sink import ApplyResult, Sink
from streamer.core.errors import BrokerUnavailableError, TargetUnavailableError, one_line
from streamer.core.events import ChangeEvent
from streamer.db import is_transient
from streamer.decode.decoder import Decoder
from streamer.pipeline.runner import Runner, stopping_on_signals
from streamer.settings import Settings
from streamer.sources.base import BatchDone
from streamer.sources.kafka.source import (
    DeadLetterError,
    KafkaSource,
    PoisonRecordError,
    Stats,
    default_topic_regex,
    headers_of,
    kafka_logger,
    offset_ranges,
)

__all__ = [
    "BatchReport",
    "ConsumerProcess",
    "DeadLetterError",
    "Hooks",
    "PoisonRecordError",
    "Stats",
    "build_decoder",
    "default_topic_regex",
    "headers_of",
    "kafka_logger",
]


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


@dataclasses.dataclass
class _HooksObserver:
    """:class:`Hooks` as the runner's :class:`~streamer.sources.base.BatchObserver`."""

    hooks: Hooks

    def on_batch(self, done: BatchDone) -> None:
        hooks, batch = self.hooks, done.batch
        if hooks.on_batch is not None:
            hooks.on_batch(done.result, done.seconds, batch.events)
        if hooks.on_batch_report is not None:
            hooks.on_batch_report(
                BatchReport(
                    done.number,
                    batch.units or 0,
                    done.result,
                    batch.events,
                    offset_ranges(batch),
                    done.apply_seconds,
                    done.committed_at,
                )
            )

    def on_retry(self) -> None:
        if self.hooks.on_retry is not None:
            self.hooks.on_retry()

    def on_dead_letter(self, count: int) -> None:
        if self.hooks.on_dead_letter is not None:
            for _ in range(count):
                self.hooks.on_dead_letter()


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
        self.cfg = settings.consumer
        self.sink = sink
        self.group = group or self.cfg.group
        regex = topics or self.cfg.topics or default_topic_regex(settings.connectors_dir)
        self.topic_regex = regex if regex.startswith("^") else "^" + regex
        self.until_idle = until_idle
        self.max_events = max_events
        self.hooks = hooks or Hooks()
        self.stats = Stats()
        self.log = logs.get("consume").bind(group=self.group)
        self._stop = threading.Event()
        self.source = KafkaSource(
            self.cfg,
            sink,
            decoder,
            bootstrap_servers=settings.bootstrap_servers,
            group=self.group,
            topic_regex=self.topic_regex,
            stats=self.stats,
            on_stats=self.hooks.on_stats,
        )

    def stop(self, *_: object) -> None:
        """Ask the loop to finish its batch, commit and leave (signal-handler compatible)."""
        self._stop.set()

    def run(self) -> Stats:
        """Consume until stopped (signal, ``--until-idle``, ``--max-events``). Returns the counters.

        Every exit goes the same way: a clean stop has applied the open batch; an error leaves it
        (read again next run) and settles the batch in flight (its offsets go to Kafka only if the
        target committed it); then the member leaves ``_streamer_members`` and the group, and the
        dead-letter producer is flushed. Broker and target errors become
        :class:`~streamer.core.errors.BrokerUnavailableError` and
        :class:`~streamer.core.errors.TargetUnavailableError` (exit 3).
        """
        runner = Runner.configured(
            self.source,
            self.sink,
            self.cfg,
            stop=self._stop,
            stats=self.stats,
            log=self.log,
            until_idle=self.until_idle,
            max_events=self.max_events,
            observers=[_HooksObserver(self.hooks)],
        )
        with stopping_on_signals(self.stop):
            try:
                self.source.open()
                runner.run()
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
                self.source.close()
        self.log.info(
            "stopped",
            records=self.stats.records,
            events_applied=self.stats.events_applied,
            batches=self.stats.batches,
            dead_lettered=self.stats.dead_lettered,
        )
        return self.stats


def build_decoder(settings: Settings) -> Decoder:
    """A decoder with the Schema Registry client the settings name (for Avro), if any."""
    registry = None
    if settings.schema_registry_url:
        from confluent_kafka.schema_registry import SchemaRegistryClient

        registry = SchemaRegistryClient({"url": settings.schema_registry_url})
    return Decoder(schema_registry=registry)
