"""Kafka Connect worker killed -9 and restarted mid-stream (a private stack): the connector resumes from
its stored offset (re-sending what it had not flushed), the consumers keep going, the tables end equal."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg2
import pytest

from streamer.stack.local import Stack
from tests.conftest import drop_connector, wait_running
from tests.faults.conftest import apply_connector, drop_target_tables
from tests.faults.harness import (
    ConsumerProc,
    Workload,
    drain_and_compare,
    end_all,
    stop_part,
    topics_regex,
    wait_progress,
    wait_until,
)

SMALL_BATCHES = {"STREAMER_CONSUMER__BATCH_MAX_EVENTS": "40"}
pytestmark = pytest.mark.xdist_group("private_stack")  # one private stack, one worker


def _slot_lsns(st: Stack, prefix: str) -> tuple[int, int | None]:
    """(the source's current WAL LSN, the connector slot's confirmed flush LSN), as integers."""
    conn = psycopg2.connect(st.source_admin_dsn(st.cfg.source_database))
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT pg_current_wal_lsn() - '0/0', (SELECT confirmed_flush_lsn - '0/0' "
                "FROM pg_replication_slots WHERE slot_name = %s)",
                (f"{prefix}_slot",),
            )
            row = cur.fetchone()
    finally:
        conn.close()
    assert row is not None
    return int(row[0]), None if row[1] is None else int(row[1])


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


def test_connect_worker_killed_and_restarted(
    private_stack: Stack, stack: Stack, private_workload: Workload, unique: str, tmp_path: Path
) -> None:
    wl = private_workload
    url = stack.settings.target_url  # the shared target database; the scenario's own schema
    group = f"{unique}-connect"
    topics = topics_regex(unique, unique)
    env = {**SMALL_BATCHES, "STREAMER_BOOTSTRAP_SERVERS": private_stack.settings.bootstrap_servers}
    wl.start(seconds=45, rate=30)
    consumers = [ConsumerProc(group, topics, url, tmp_path / f"c{i}.log", settings=env) for i in range(2)]
    done = wait_progress(url, group)
    time.sleep(2)
    stop_part(private_stack, "connect", signal.SIGKILL)
    time.sleep(3)  # the workload goes on writing into the slot while Connect is down
    private_stack.up()
    wait_running(private_stack.settings.connect_url, unique, timeout=180)
    restarted_at = _slot_lsns(private_stack, unique)[0]
    wait_progress(url, group, beyond=done, timeout=180)
    wl.join()

    def confirmed_after_restart() -> bool:
        current, confirmed = _slot_lsns(private_stack, unique)
        return confirmed is not None and confirmed > restarted_at

    # the restarted task streams again: its slot confirms a change written after the restart
    wait_until(confirmed_after_restart, 180, "the slot to confirm a change made after the Connect restart")
    for c in consumers:
        assert c.alive(), c.tail()
        c.terminate()
    try:
        drain_and_compare(
            private_stack.settings.source_url,
            url,
            private_stack.cfg.source_database,
            unique,
            group,
            topics,
            tmp_path / "drain.log",
            idle=15,
            settings=env,
        )
    except AssertionError as exc:  # name what Connect said: a lagging task or lost changes
        status = httpx.get(
            f"{private_stack.settings.connect_url}/connectors/{unique}/status", timeout=10
        ).text
        raise AssertionError(f"{exc}\nconnector status after the drain: {status}") from None
