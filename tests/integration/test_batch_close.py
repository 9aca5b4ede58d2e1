"""A caught-up consumer closes its batch at once instead of waiting for ``batch_max_ms`` (issue 14).

The end-to-end delay of a live stream was the batch's age: a batch of a few records waited
``batch_max_ms`` (500 ms by default) for more. Now a read that returns fewer records than asked
closes the batch. ``batch_max_ms`` is set to 10 minutes here: batches that arrive while the
consumer runs can only have been closed by that rule.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from streamer.apply import state
from streamer.apply.sink import build_sink
from streamer.consume import BatchReport, ConsumerProcess, Hooks, build_decoder
from streamer.settings import load_settings
from streamer.stack.local import Stack
from tests.integration.test_exit_paths import Topic, checked_target, rows_of, stored_offset


@pytest.fixture
def topic(stack: Stack, unique: str) -> Iterator[Topic]:
    t = Topic(stack, unique)
    yield t
    AdminClient({"bootstrap.servers": stack.settings.bootstrap_servers}).delete_topics([t.name])


def _wait_batches(reports: list[BatchReport], n: int, errors: list[BaseException], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(reports) < n and not errors and time.monotonic() < deadline:
        time.sleep(0.1)


def test_live_records_are_committed_without_waiting_for_batch_max_ms(
    stack: Stack, topic: Topic, unique: str, tmp_path: Path
) -> None:
    url, table = checked_target("sqlite", tmp_path, unique)
    settings = load_settings(
        overrides={
            "bootstrap_servers": stack.settings.bootstrap_servers,
            "target_url": url,
            "consumer": {"batch_max_ms": 600_000, "batch_max_events": 5000},
        }
    )
    sink = build_sink(settings)
    state.upgrade(sink.engine)
    reports: list[BatchReport] = []
    errors: list[BaseException] = []
    proc = ConsumerProcess(
        settings,
        sink,
        build_decoder(settings),
        group=f"{unique}-close",
        topics=topic.regex,
        hooks=Hooks(on_batch_report=reports.append),
    )

    def run() -> None:
        try:
            proc.run()
        except BaseException as exc:  # asserted below
            errors.append(exc)

    first = [(i, i) for i in range(3)]
    topic.produce(first)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        _wait_batches(reports, 1, errors, 60)
        assert not errors
        assert [r.records for r in reports] == [3], "the caught-up batch was not closed"
        assert rows_of(url, table) == first
        assert stored_offset(url, f"{unique}-close", topic.name) == 3
        more = [(i, i) for i in range(3, 5)]
        topic.produce(more)
        _wait_batches(reports, 2, errors, 60)
        assert not errors
        assert [r.records for r in reports] == [3, 2]
        assert rows_of(url, table) == first + more
        assert thread.is_alive(), "the batches were committed by the consumer's stop, not while it ran"
    finally:
        proc.stop()
        thread.join(60)
        sink.engine.dispose()
    assert not errors
