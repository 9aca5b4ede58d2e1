"""Prometheus metrics of a consumer process, fed through its hooks (no broker, no database)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any

from streamer.apply.sink import ApplyResult
from streamer.consume import BatchReport
from streamer.core.events import ChangeEvent
from streamer.ops.metrics import ConsumerMetrics, lag_of
from tests.unit.decode_helpers import ID_COLUMN, Records, decode_one, value_payload

NAME = {"type": "string", "optional": True, "field": "name"}


def _event(source_ts: dt.datetime | None) -> ChangeEvent:
    records = Records("json", [ID_COLUMN, NAME])
    ev = decode_one(records, {"id": 1}, value_payload("c", after={"id": 1, "name": "a"}))
    assert isinstance(ev, ChangeEvent)
    return dataclasses.replace(ev, source_ts=source_ts)


def _value(m: ConsumerMetrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def test_each_process_has_its_own_registry() -> None:
    a, b = ConsumerMetrics("g1"), ConsumerMetrics("g2")
    a.on_retry()
    assert _value(a, "streamer_batch_retries_total") == 1
    assert _value(b, "streamer_batch_retries_total") == 0
    assert _value(a, "streamer_consumer_info", group="g1") == 1


def test_batch_report_feeds_counters_and_histograms() -> None:
    m = ConsumerMetrics("g")
    committed = dt.datetime(2025, 5, 1, 12, 0, 10, tzinfo=dt.UTC).timestamp()
    events = [
        _event(dt.datetime(2025, 5, 1, 12, 0, 8, tzinfo=dt.UTC)),  # 2 s
        _event(dt.datetime(2025, 5, 1, 12, 0, 9, 800000)),  # naive: UTC, 0.2 s
        _event(None),  # no source time: not observed
    ]
    result = ApplyResult(events=3, tables={"public.items": {"c": 2, "d": 1}, "public.other": {"u": 0}})
    report = BatchReport(1, 5, result, events, {("t", 0): (10, 15)}, 0.25, committed)
    m.on_batch_report(report)
    m.on_batch_report(dataclasses.replace(report, number=2, records=7, events=[], apply_seconds=0.004))
    assert _value(m, "streamer_events_applied_total", table="public.items", op="create") == 4
    assert _value(m, "streamer_events_applied_total", table="public.items", op="delete") == 2
    assert _value(m, "streamer_events_applied_total", table="public.other", op="update") is None
    assert _value(m, "streamer_batches_total") == 2
    assert _value(m, "streamer_records_total") == 12
    assert _value(m, "streamer_batch_records_count") == 2
    assert _value(m, "streamer_batch_records_sum") == 12
    assert _value(m, "streamer_batch_records_bucket", le="10.0") == 2
    assert _value(m, "streamer_batch_records_bucket", le="1.0") == 0
    assert _value(m, "streamer_batch_apply_seconds_count") == 2
    assert _value(m, "streamer_batch_apply_seconds_bucket", le="0.005") == 1
    assert _value(m, "streamer_end_to_end_delay_seconds_count") == 2
    assert _value(m, "streamer_end_to_end_delay_seconds_bucket", le="0.1") == 0
    assert _value(m, "streamer_end_to_end_delay_seconds_bucket", le="0.25") == 1
    assert _value(m, "streamer_end_to_end_delay_seconds_bucket", le="2.0") == 2
    assert abs((_value(m, "streamer_end_to_end_delay_seconds_sum") or 0) - 2.2) < 1e-6


def test_dead_letters_and_retries() -> None:
    m = ConsumerMetrics("g")
    for _ in range(3):
        m.on_dead_letter()
    m.on_retry()
    assert _value(m, "streamer_dead_letters_total") == 3
    assert _value(m, "streamer_batch_retries_total") == 1


def _partition(desired: bool, lag: int, hi: int = 100, ls: int = 100, committed: int = 50) -> dict[str, Any]:
    return {
        "desired": desired,
        "consumer_lag": lag,
        "hi_offset": hi,
        "ls_offset": ls,
        "committed_offset": committed,
        "fetch_state": "active" if desired else "none",
    }


def test_lag_gauge_follows_the_assignment() -> None:
    m = ConsumerMetrics("g")
    stats = {
        "topics": {
            "a": {
                "partitions": {
                    "0": _partition(True, 7),
                    "1": _partition(True, 0),
                    "2": _partition(False, 9),  # not assigned to this member
                    "-1": _partition(False, -1),
                }
            }
        }
    }
    m.on_stats(json.dumps(stats))
    assert _value(m, "streamer_partition_lag", topic="a", partition="0") == 7
    assert _value(m, "streamer_partition_lag", topic="a", partition="1") == 0
    assert _value(m, "streamer_partition_lag", topic="a", partition="2") is None
    del stats["topics"]["a"]["partitions"]["0"]  # revoked
    stats["topics"]["a"]["partitions"]["1"]["consumer_lag"] = 3
    m.on_stats(json.dumps(stats))
    assert _value(m, "streamer_partition_lag", topic="a", partition="0") is None
    assert _value(m, "streamer_partition_lag", topic="a", partition="1") == 3
    m.on_stats("not json")  # ignored


def test_lag_of() -> None:
    assert lag_of(_partition(True, 4)) == 4
    # librdkafka's own lag unknown: computed from the last stable offset and the committed offset
    assert lag_of(_partition(True, -1, hi=120, ls=110, committed=100)) == 10
    assert lag_of(_partition(True, -1, hi=120, ls=-1, committed=100)) == 20
    # nothing committed yet: the consumer started at the log start
    assert lag_of({**_partition(True, -1, hi=30, ls=30, committed=-1001), "lo_offset": 0}) == 30
    assert lag_of({**_partition(True, -1, hi=-1001, ls=-1001, committed=-1001), "lo_offset": -1001}) is None


def test_the_runner_observer_feeds_the_same_metrics() -> None:
    """``replicate --metrics-port``: the one runner's batches, retries and dead letters."""
    from streamer.core.checkpoint import Checkpoint
    from streamer.sources.base import Batch, BatchDone

    m = ConsumerMetrics("slot")
    observer = m.observer()
    committed = dt.datetime(2025, 5, 1, 12, 0, 10, tzinfo=dt.UTC).timestamp()
    events = [_event(dt.datetime(2025, 5, 1, 12, 0, 9, tzinfo=dt.UTC)), _event(None)]
    batch = Batch(events, Checkpoint({("pg:slot", 0): 0x500}), 0.0)
    result = ApplyResult(events=2, tables={"public.items": {"c": 2}})
    observer.on_batch(BatchDone(1, batch, result, 0.3, 0.02, committed))
    observer.on_retry()
    observer.on_dead_letter(3)
    assert _value(m, "streamer_events_applied_total", table="public.items", op="create") == 2
    assert _value(m, "streamer_batches_total") == 1
    assert _value(m, "streamer_records_total") == 2
    assert _value(m, "streamer_batch_apply_seconds_sum") == 0.02
    assert _value(m, "streamer_end_to_end_delay_seconds_count") == 1
    assert _value(m, "streamer_end_to_end_delay_seconds_sum") == 1.0
    assert _value(m, "streamer_batch_retries_total") == 1
    assert _value(m, "streamer_dead_letters_total") == 3
