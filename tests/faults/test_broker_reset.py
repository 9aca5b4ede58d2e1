"""Broker restart with topic loss (a private stack; tansu keeps topics in memory only).

The pipeline streams and the consumers catch up; then Connect and the broker stop and start again:
every topic is gone, Kafka's committed offsets and Connect's stored source offsets with them. The
connector is applied again and streams from its replication slot (nothing was lost: the slot holds
every change not yet confirmed), into new topics whose offsets start at 0 again. The consumers of
the same group must notice that the positions stored in the target belong to the *old* topics and
not skip the new topics' first records; the tables must end equal.

Expected to fail until stored offsets carry topic identity (branch ``offsets``): a consumer then
seeks the new topics to the old topics' next offsets and skips every record below them.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from streamer.stack.local import Stack
from tests.conftest import drop_connector
from tests.faults.conftest import apply_connector, drop_target_tables
from tests.faults.harness import (
    ConsumerProc,
    Workload,
    differences,
    drain_and_compare,
    end_all,
    stop_part,
    topics_regex,
    wait_progress,
    wait_until,
)

SMALL_BATCHES = {"STREAMER_CONSUMER__BATCH_MAX_EVENTS": "40"}
pytestmark = pytest.mark.xdist_group("private_stack")  # one private stack, one worker


@pytest.fixture
def private_workload(private_stack: Stack, stack: Stack, unique: str) -> Iterator[Workload]:
    wl = Workload(private_stack.settings.source_url, unique)
    wl.create(200)
    apply_connector(private_stack, unique, ",".join(wl.qualified))
    yield wl
    end_all()
    wl.stop()
    drop_connector(private_stack, unique, unique)
    wl.drop()
    drop_target_tables(stack.settings.target_url, unique)


def test_broker_restart_with_topic_loss(
    private_stack: Stack, stack: Stack, private_workload: Workload, unique: str, tmp_path: Path
) -> None:
    wl = private_workload
    src = private_stack.settings.source_url
    db = private_stack.cfg.source_database
    url = stack.settings.target_url
    group = f"{unique}-reset"
    topics = topics_regex(unique, unique)
    env = {**SMALL_BATCHES, "STREAMER_BOOTSTRAP_SERVERS": private_stack.settings.bootstrap_servers}
    consumers = [ConsumerProc(group, topics, url, tmp_path / f"c{i}.log", settings=env) for i in range(2)]
    wl.run(transactions=300, rate=40)
    # caught up before the loss: whatever is lost with the topics is in the target already
    wait_until(lambda: not differences(src, url, db, unique), 180, "the consumers to catch up", every=2)
    done = wait_progress(url, group)
    stop_part(private_stack, "connect")
    stop_part(private_stack, "broker", signal.SIGTERM)
    private_stack.up()  # an empty broker: no topics, no group offsets, no Connect state
    assert httpx.get(f"{private_stack.settings.connect_url}/connectors", timeout=10).json() == []
    # applied again; no stored source offset, so it streams from where its slot was confirmed
    apply_connector(private_stack, unique, ",".join(wl.qualified), **{"snapshot.mode": "no_data"})
    wl.start(seconds=20, rate=30)
    wl.join()
    del done
    for c in consumers:
        c.terminate()
    drain_and_compare(src, url, db, unique, group, topics, tmp_path / "drain.log", settings=env)
