"""Session fixtures: the real stack (PostgreSQL, broker, Kafka Connect with Debezium), started once.

If a stack is already running (``make up``), the tests use it and leave it running;
otherwise they start it and stop it at the end of the session.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import psycopg2
import pytest

from streamer.settings import Settings, load_settings
from streamer.stack.local import Stack, running_stack


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        path = str(item.fspath)
        if "/integration/" in path or "/faults/" in path:
            item.add_marker(pytest.mark.integration)
        if "/faults/" in path:
            item.add_marker(pytest.mark.faults)


@pytest.fixture(scope="session")
def settings() -> Settings:
    return load_settings(env=os.environ)


@pytest.fixture(scope="session")
def stack(settings: Settings) -> Iterator[Stack]:
    with running_stack(settings) as (st, _started_here):
        yield st


@pytest.fixture
def unique() -> str:
    """A short name unique to this test, for connectors, slots, topics and tables."""
    return "t" + uuid.uuid4().hex[:8]


def source_connection(stack: Stack, database: str | None = None) -> Any:
    conn = psycopg2.connect(stack.source_admin_dsn(database or stack.cfg.source_database))
    conn.autocommit = True
    return conn


def run_on_source(stack: Stack, *statements: str) -> None:
    """Run SQL statements on the stack's source database, each in its own autocommit transaction."""
    conn = source_connection(stack)
    try:
        with conn.cursor() as cur:
            for st in statements:
                cur.execute(st)
    finally:
        conn.close()


@pytest.fixture
def source_db(stack: Stack) -> Iterator[Any]:
    """An autocommit psycopg2 connection to the stack's source database."""
    conn = source_connection(stack)
    yield conn
    conn.close()


def debezium_config(stack: Stack, prefix: str, tables: str, **extra: str) -> dict[str, str]:
    """A Debezium PostgreSQL connector config for the stack's source, secrets as ${env:...}."""
    cfg = {
        "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
        "plugin.name": "pgoutput",
        "database.hostname": "${env:STREAMER_SOURCE_HOST}",
        "database.port": "${env:STREAMER_SOURCE_PORT}",
        "database.user": "${env:STREAMER_SOURCE_USER}",
        "database.password": "${env:STREAMER_SOURCE_PASSWORD}",
        "database.dbname": stack.cfg.source_database,
        "topic.prefix": prefix,
        "slot.name": f"{prefix}_slot",
        "publication.name": f"{prefix}_pub",
        "publication.autocreate.mode": "filtered",
        "table.include.list": tables,
        "snapshot.mode": "initial",
        "topic.creation.default.partitions": "3",
        "topic.creation.default.replication.factor": "1",
        # another connector's heartbeat messages (connectors/inventory.json) reach every slot of the
        # database: drop them as the sample connector does (README, "Idle databases and WAL")
        "message.prefix.exclude.list": "streamer-heartbeat",
    }
    cfg.update(extra)
    return cfg


def wait_running(connect_url: str, name: str, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        resp = httpx.get(f"{connect_url}/connectors/{name}/status", timeout=10)
        if resp.status_code == 200:
            status = resp.json()
            tasks = status.get("tasks", [])
            if (
                status["connector"]["state"] == "RUNNING"
                and tasks
                and all(t["state"] == "RUNNING" for t in tasks)
            ):
                return status
            if any(t["state"] == "FAILED" for t in tasks):
                raise AssertionError(f"connector {name} failed: {status}")
        time.sleep(0.5)
    raise AssertionError(f"connector {name} not RUNNING after {timeout}s: {status}")


def drop_connector(stack: Stack, name: str, prefix: str) -> None:
    """Delete a connector and the replication slot and publication it made."""
    httpx.delete(f"{stack.settings.connect_url}/connectors/{name}", timeout=30)
    conn = source_connection(stack)
    try:
        with conn.cursor() as cur:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                cur.execute(
                    "SELECT active FROM pg_replication_slots WHERE slot_name = %s", (f"{prefix}_slot",)
                )
                row = cur.fetchone()
                if row is None:
                    break
                if not row[0]:
                    cur.execute("SELECT pg_drop_replication_slot(%s)", (f"{prefix}_slot",))
                    break
                time.sleep(0.5)
            cur.execute(f'DROP PUBLICATION IF EXISTS "{prefix}_pub"')
    finally:
        conn.close()


@pytest.fixture
def debezium(stack: Stack) -> Iterator[Callable[..., dict[str, Any]]]:
    """Register Debezium connectors for a test: ``debezium(prefix, "public.t1,public.t2", **extra)``.

    Waits until each is RUNNING; deletes them, their slots and publications afterwards.
    """
    made: list[str] = []

    def register(prefix: str, tables: str, **extra: str) -> dict[str, Any]:
        cfg = debezium_config(stack, prefix, tables, **extra)
        resp = httpx.put(f"{stack.settings.connect_url}/connectors/{prefix}/config", json=cfg, timeout=60)
        assert resp.status_code in (200, 201), resp.text
        made.append(prefix)
        return wait_running(stack.settings.connect_url, prefix)

    yield register
    for prefix in made:
        drop_connector(stack, prefix, prefix)


def kafka_consumer_config(stack: Stack, group: str) -> dict[str, Any]:
    return {
        "bootstrap.servers": stack.settings.bootstrap_servers,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 1000,
        "topic.metadata.refresh.interval.ms": 1000,
    }
