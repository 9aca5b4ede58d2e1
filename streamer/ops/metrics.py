"""Prometheus metrics of one ``streamer consume`` or ``streamer replicate`` process (``--metrics-port``).

Every process has its own :class:`~prometheus_client.CollectorRegistry` (never the global default
one), filled through :class:`streamer.consume.Hooks` (consume) or as a
:class:`~streamer.sources.base.BatchObserver` of the one runner (replicate:
:meth:`ConsumerMetrics.observer`; there a batch's records are its change events, there is no
partition lag, and dead letters go to the ``--dlq-file``) and served over HTTP at ``/metrics``.
Under ``--processes N`` child *i* serves port ``P + i``.

====================================================  =========  ===============================================
metric                                                type       meaning
====================================================  =========  ===============================================
``streamer_consumer_info{group}``                     info       the consumer group of this process
``streamer_events_applied_total{table,op}``           counter    change events applied, per target table and
                                                                 operation (create, update, delete, read, truncate)
``streamer_records_total``                            counter    Kafka records consumed and committed
``streamer_batches_total``                            counter    batches committed
``streamer_batch_records``                            histogram  records per batch
``streamer_batch_apply_seconds``                      histogram  a batch's database transaction, retries included
``streamer_end_to_end_delay_seconds``                 histogram  source commit (``source.ts``) to target commit,
                                                                 per event
``streamer_partition_lag{topic,partition}``           gauge      records behind the partition's end, per assigned
                                                                 partition (librdkafka statistics, every
                                                                 ``consumer.statistics_interval_ms``)
``streamer_batch_retries_total``                      counter    whole-batch retries after a transient error
``streamer_dead_letters_total``                       counter    records produced to the dead-letter topic
====================================================  =========  ===============================================

Lag comes from librdkafka's statistics, whose high watermark is the one carried by fetch
responses, so it is right on the local broker too (its ListOffsets "latest" is not).

The source's replication slots (``streamer status --metrics-port``, :class:`SlotCollector`), read
from ``pg_replication_slots`` at every scrape (the slots ``status.slots`` matches):

=====================================================================  =====  =====================================
metric                                                                 type   meaning
=====================================================================  =====  =====================================
``streamer_replication_slot_retained_wal_bytes{slot,plugin,connector}``  gauge  current LSN - ``restart_lsn``: WAL the
                                                                              source keeps for the slot
``streamer_replication_slot_flush_lag_bytes{slot,plugin,connector}``     gauge  current LSN - ``confirmed_flush_lsn``
``streamer_replication_slot_active{slot,plugin,connector}``              gauge  1 while a process reads the slot
``streamer_replication_slot_warnings{slot,plugin,connector}``            gauge  warnings ``streamer status`` shows
``streamer_replication_slots_up``                                        gauge  1 when the source answered the scrape
=====================================================================  =====  =====================================

``connector`` is the owning connector's name (several: comma-separated; none: empty).
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from streamer import logs
from streamer.apply.sink import ApplyResult
from streamer.consume import BatchReport, Hooks
from streamer.core.events import ChangeEvent, Op
from streamer.settings import Settings
from streamer.sources.base import BatchDone, Observers

DEFAULT_STATISTICS_INTERVAL_MS = 5000
_OPS = {op.value: op.name.lower() for op in Op}
_DELAY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 86400.0)
_APPLY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_SIZE_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000)


class ConsumerMetrics:
    """The metrics of one consumer process, in their own registry."""

    def __init__(self, group: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        Info("streamer_consumer", "The consumer group of this process.", registry=r).info({"group": group})
        self.events = Counter(
            "streamer_events_applied",
            "Change events applied, by target table and operation.",
            ["table", "op"],
            registry=r,
        )
        self.records = Counter("streamer_records", "Kafka records consumed and committed.", registry=r)
        self.batches = Counter("streamer_batches", "Batches committed.", registry=r)
        self.batch_records = Histogram(
            "streamer_batch_records", "Records per batch.", buckets=_SIZE_BUCKETS, registry=r
        )
        self.apply_seconds = Histogram(
            "streamer_batch_apply_seconds",
            "Seconds of a batch's database transaction, retries included.",
            buckets=_APPLY_BUCKETS,
            registry=r,
        )
        self.delay = Histogram(
            "streamer_end_to_end_delay_seconds",
            "Seconds from the source commit of a change to the target commit that applied it.",
            buckets=_DELAY_BUCKETS,
            registry=r,
        )
        self.lag = Gauge(
            "streamer_partition_lag",
            "Records behind the end of an assigned partition.",
            ["topic", "partition"],
            registry=r,
        )
        self.retries = Counter(
            "streamer_batch_retries", "Whole-batch retries after a transient error.", registry=r
        )
        self.dead_letters = Counter(
            "streamer_dead_letters", "Records produced to the dead-letter topic.", registry=r
        )
        self._lag_labels: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self.log = logs.get("metrics").bind(group=group)

    def hooks(self) -> Hooks:
        return Hooks(
            on_retry=self.on_retry,
            on_dead_letter=self.on_dead_letter,
            on_stats=self.on_stats,
            on_batch_report=self.on_batch_report,
        )

    # ------------------------------------------------------------ hooks
    def on_batch_report(self, report: BatchReport) -> None:
        self._batch(report.records, report.result, report.events, report.apply_seconds, report.committed_at)

    def observer(self) -> Observers:
        """The same metrics as a :class:`~streamer.sources.base.BatchObserver` of the one runner
        (``streamer replicate --metrics-port``): a batch's records there are its change events."""
        return Observers(batch=self.on_batch_done, retry=self.on_retry, dead_letter=self._dead_letters)

    def on_batch_done(self, done: BatchDone) -> None:
        events = done.batch.events
        self._batch(len(events), done.result, events, done.apply_seconds, done.committed_at)

    def _dead_letters(self, count: int) -> None:
        self.dead_letters.inc(count)

    def _batch(
        self,
        records: int,
        result: ApplyResult,
        events: Sequence[ChangeEvent],
        apply_seconds: float,
        committed: float,
    ) -> None:
        self.batches.inc()
        self.records.inc(records)
        self.batch_records.observe(records)
        self.apply_seconds.observe(apply_seconds)
        for table, ops in result.tables.items():
            for op, n in ops.items():
                if n:
                    self.events.labels(table=table, op=_OPS.get(op, op)).inc(n)
        for ev in events:
            ts = ev.source_ts
            if ts is None:
                continue
            if ts.tzinfo is None:
                ts = ts.replace(tzinfo=dt.UTC)
            self.delay.observe(max(0.0, committed - ts.timestamp()))

    def on_retry(self) -> None:
        self.retries.inc()

    def on_dead_letter(self) -> None:
        self.dead_letters.inc()

    def on_stats(self, raw: str) -> None:
        """librdkafka statistics: the lag of every partition assigned to this consumer."""
        try:
            stats: dict[str, Any] = json.loads(raw)
        except ValueError:
            return
        seen: set[tuple[str, str]] = set()
        for topic, tstats in (stats.get("topics") or {}).items():
            for pid, p in (tstats.get("partitions") or {}).items():
                if pid == "-1" or not p.get("desired"):
                    continue
                lag = lag_of(p)
                if lag is None:
                    continue
                key = (topic, str(pid))
                seen.add(key)
                self.lag.labels(topic=topic, partition=str(pid)).set(lag)
        with self._lock:
            for topic, pid in self._lag_labels - seen:
                try:
                    self.lag.remove(topic, pid)
                except KeyError:
                    pass
            self._lag_labels = seen

    # ------------------------------------------------------------ serving
    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        """Serve ``/metrics`` on ``addr:port`` from a daemon thread."""
        start_http_server(port, addr=addr, registry=self.registry)
        self.log.info("serving metrics", address=f"http://{addr}:{port}/metrics")


def lag_of(p: dict[str, Any]) -> int | None:
    """A partition's lag from its statistics: librdkafka's ``consumer_lag`` (end - committed offset).

    The end is the last stable offset (``read_committed``, what the consumer uses) or else the high
    watermark, both from the latest fetch response. Before the group's first commit on a partition the
    consumer started at the log start (``auto.offset.reset=earliest``): end - log start. None while
    nothing has been fetched.
    """
    lag = p.get("consumer_lag")
    if isinstance(lag, int) and lag >= 0:
        return lag
    end = _offset(p, "ls_offset")
    if end is None:
        end = _offset(p, "hi_offset")
    start = _offset(p, "committed_offset")
    if start is None:
        start = _offset(p, "lo_offset")
    if end is None or start is None:
        return None
    return max(0, end - start)


def _offset(p: dict[str, Any], key: str) -> int | None:
    value = p.get(key)
    return value if isinstance(value, int) and value >= 0 else None


def start_metrics(settings: Settings, group: str, port: int) -> tuple[Settings, Hooks]:
    """For ``consume --metrics-port``: serve the metrics; turn librdkafka statistics on if they are off."""
    if settings.consumer.statistics_interval_ms == 0:
        consumer = settings.consumer.model_copy(
            update={"statistics_interval_ms": DEFAULT_STATISTICS_INTERVAL_MS}
        )
        settings = settings.model_copy(update={"consumer": consumer})
    metrics = ConsumerMetrics(group)
    metrics.serve(port)
    return settings, metrics.hooks()


class SlotCollector(Collector):
    """Gauges of the source's replication slots, read at every scrape (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        from streamer.ops import status

        source, found = status.slots_section(self.settings)
        return iter(slot_metrics(source, found))


def slot_metrics(source: dict[str, Any], found: list[dict[str, Any]]) -> list[Metric]:
    """The slot gauges of a ``status`` slots section (``source``, ``slots``)."""
    labels = ["slot", "plugin", "connector"]
    retained = GaugeMetricFamily(
        "streamer_replication_slot_retained_wal_bytes",
        "Bytes of WAL the source keeps for the slot (current LSN - restart_lsn).",
        labels=labels,
    )
    lag = GaugeMetricFamily(
        "streamer_replication_slot_flush_lag_bytes",
        "Bytes between the current LSN and the slot's confirmed_flush_lsn.",
        labels=labels,
    )
    active = GaugeMetricFamily(
        "streamer_replication_slot_active", "1 while a process reads the slot.", labels=labels
    )
    warnings = GaugeMetricFamily(
        "streamer_replication_slot_warnings", "Warnings streamer status shows for the slot.", labels=labels
    )
    for sl in found:
        values = [sl["name"], sl["plugin"] or sl["type"], ",".join(o["connector"] for o in sl["owners"])]
        if sl["retained_wal_bytes"] is not None:
            retained.add_metric(values, sl["retained_wal_bytes"])
        if sl["flush_lag_bytes"] is not None:
            lag.add_metric(values, sl["flush_lag_bytes"])
        active.add_metric(values, 1.0 if sl["active"] else 0.0)
        warnings.add_metric(values, len(sl["warnings"]))
    up = GaugeMetricFamily("streamer_replication_slots_up", "1 when the source answered the scrape.")
    up.add_metric([], 1.0 if source["reachable"] else 0.0)
    return [retained, lag, active, warnings, up]


def serve_slot_metrics(settings: Settings, port: int, addr: str = "0.0.0.0") -> CollectorRegistry:
    """For ``status --metrics-port``: serve the slot gauges on ``addr:port`` from a daemon thread."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SlotCollector(settings))
    start_http_server(port, addr=addr, registry=registry)
    logs.get("metrics").info("serving slot metrics", address=f"http://{addr}:{port}/metrics")
    return registry
