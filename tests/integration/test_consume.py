"""`streamer consume` end to end: source PostgreSQL -> Debezium -> Kafka -> consumer -> target.

Every test asserts that whole target tables equal the source tables (every row, every column).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from streamer.apply.schema import Router
from streamer.core.events import TableId
from streamer.db import create_target_engine
from streamer.stack.local import Stack
from streamer.stack.workload import SAMPLE_TABLES, create_sample, run_workload
from streamer.validate import compare_tables
from tests.conftest import kafka_consumer_config
from tests.integration.conftest import TARGET_KINDS, _mariadb_engine, target_url

VERSION = "_streamer_version"


def consume_cmd(group: str, topics: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "streamer.cli", "consume", "--group", group, "--topics", topics, *extra]


def consumer_env(url: str, **settings: str) -> dict[str, str]:
    env = dict(os.environ)
    env["STREAMER_TARGET_URL"] = url
    env["STREAMER_LOG_FORMAT"] = "json"
    env.update(settings)
    return env


def run_consumer(
    group: str, topics: str, url: str, *extra: str, timeout: float = 240, **settings: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        consume_cmd(group, topics, *extra),
        env=consumer_env(url, **settings),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_same(
    stack: Stack, schema: str, url: str, tables: tuple[str, ...] = SAMPLE_TABLES, detail: str = ""
) -> None:
    """Whole-table equality of ``tables`` between the source's and the target's ``schema``;
    ``detail`` (what explains a difference) goes into the failure message."""
    source = create_target_engine(stack.settings.source_url)
    target = create_target_engine(url)
    try:
        router = Router(target.dialect.name)
        for table in tables:
            route = router.route(TableId(stack.cfg.source_database, schema, table))
            diff = compare_tables(source, (schema, table), target, (route.target_schema, route.target_table))
            assert diff.source_rows > 0
            assert diff.equal, (
                f"{table}: missing {diff.missing[:5]} extra {diff.extra[:5]} changed {diff.changed[:5]}\n{detail}"
            )
    finally:
        source.dispose()
        target.dispose()


@pytest.fixture
def pipeline(stack: Stack, debezium, unique: str) -> Iterator[dict[str, Any]]:
    """A sample schema on the source, captured by a Debezium connector (initial snapshot)."""
    create_sample(stack.settings.source_url, unique, rows=600)
    tables = ",".join(f"{unique}.{t}" for t in SAMPLE_TABLES)
    debezium(unique, tables, **{"column.propagate.source.type": ".*"})
    yield {"schema": unique, "topics": rf"^{unique}\.{unique}\.[^.]+$", "prefix": unique}
    with create_target_engine(stack.settings.source_url).begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{unique}" CASCADE'))


def _dsn(stack: Stack) -> str:
    return stack.settings.source_url


def test_live_workload_reaches_every_target(stack: Stack, pipeline, tmp_path: Path) -> None:
    """A workload runs while three consumers (PostgreSQL, MariaDB, SQLite targets) apply it."""
    schema, topics = pipeline["schema"], pipeline["topics"]
    _mariadb_engine().dispose()  # make sure the MariaDB test database exists
    urls = {kind: target_url(kind, stack, tmp_path) for kind in TARGET_KINDS}
    procs = {
        kind: subprocess.Popen(
            consume_cmd(f"{schema}-{kind}", topics, "--until-idle", "15"),
            env=consumer_env(url),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for kind, url in urls.items()
    }
    stats = run_workload(_dsn(stack), schema, transactions=300, rate=60)
    assert stats.inserts and stats.updates and stats.deletes
    for kind, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{kind}: {err[-3000:]}"
    for url in urls.values():
        assert_same(stack, schema, url)


def _state_offsets(url: str, group: str) -> int:
    engine = create_target_engine(url)
    try:
        with engine.connect() as conn:
            insp = sa.inspect(conn)
            if not insp.has_table("_streamer_offsets"):
                return 0
            return int(
                conn.execute(
                    sa.text(
                        "SELECT coalesce(sum(next_offset), 0) FROM _streamer_offsets WHERE consumer_group = :g"
                    ),
                    {"g": group},
                ).scalar_one()
            )
    finally:
        engine.dispose()


def _wait_until(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("kind", TARGET_KINDS)
def test_kill_9_mid_batch_then_restart(stack: Stack, pipeline, tmp_path: Path, kind: str) -> None:
    schema, topics = pipeline["schema"], pipeline["topics"]
    if kind == "mariadb":
        _mariadb_engine().dispose()
    url = target_url(kind, stack, tmp_path)
    group = f"{schema}-k9"
    small = {"STREAMER_CONSUMER__BATCH_MAX_EVENTS": "40"}
    for round_ in range(3):
        before = _state_offsets(url, group)
        proc = subprocess.Popen(
            consume_cmd(group, topics),
            env=consumer_env(url, **small),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        run_workload(_dsn(stack), schema, transactions=60, rate=100, seed=10 + round_)
        # kill as soon as it has made progress, so it dies while batches are in flight
        _wait_until(lambda before=before: _state_offsets(url, group) > before, 120, "consumer progress")
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    done = run_consumer(group, topics, url, "--until-idle", "12", STREAMER_CONSUMER__BATCH_MAX_EVENTS="40")
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same(stack, schema, url)


@pytest.mark.parametrize("kind", TARGET_KINDS)
def test_three_consumers_one_killed(stack: Stack, pipeline, tmp_path: Path, kind: str) -> None:
    schema, topics = pipeline["schema"], pipeline["topics"]
    if kind == "mariadb":
        _mariadb_engine().dispose()
    url = target_url(kind, stack, tmp_path)
    group = f"{schema}-three"
    env = consumer_env(url, STREAMER_CONSUMER__BATCH_MAX_EVENTS="50")
    procs = [
        subprocess.Popen(
            consume_cmd(group, topics, "--until-idle", "20"),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    run_workload(_dsn(stack), schema, transactions=150, rate=100, seed=21)
    _wait_until(lambda: _state_offsets(url, group) > 0, 120, "consumer progress")
    procs[0].send_signal(signal.SIGKILL)
    procs[0].wait(30)
    run_workload(_dsn(stack), schema, transactions=150, rate=100, seed=22)
    for proc in procs[1:]:
        _out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    assert_same(stack, schema, url)


def _versions(url: str, schema: str) -> dict[tuple[str, Any], str]:
    engine = create_target_engine(url)
    router = Router(engine.dialect.name)
    try:
        out = {}
        with engine.connect() as conn:
            for table in SAMPLE_TABLES:
                route = router.route(TableId("inventory", schema, table))
                t = sa.table(
                    route.target_table, sa.column("id"), sa.column(VERSION), schema=route.target_schema
                )
                rows = conn.execute(sa.select(t.c.id, t.c[VERSION]))
                out.update({(table, r[0]): r[1] for r in rows})
        return out
    finally:
        engine.dispose()


@pytest.mark.parametrize("kind", TARGET_KINDS)
def test_replay_from_earliest_converges_and_never_moves_back(
    stack: Stack, pipeline, tmp_path: Path, kind: str
) -> None:
    schema, topics = pipeline["schema"], pipeline["topics"]
    if kind == "mariadb":
        _mariadb_engine().dispose()
    url = target_url(kind, stack, tmp_path)
    group = f"{schema}-replay"
    run_workload(_dsn(stack), schema, transactions=100, seed=31)
    first = run_consumer(group, topics, url, "--until-idle", "10")
    assert first.returncode == 0, first.stderr[-3000:]
    assert_same(stack, schema, url)
    before = _versions(url, schema)
    # move the group back to the start: Kafka's committed offsets and the target's state rows
    admin = AdminClient({"bootstrap.servers": stack.settings.bootstrap_servers})
    md = admin.list_topics(timeout=10)
    parts = [
        TopicPartition(t, p, 0)
        for t in md.topics
        if t.startswith(f"{schema}.{schema}.")
        for p in md.topics[t].partitions
    ]
    admin.alter_consumer_group_offsets([ConsumerGroupTopicPartitions(group, parts)])[group].result(30)
    engine = create_target_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM _streamer_offsets WHERE consumer_group = :g"), {"g": group})
    engine.dispose()
    replay = run_consumer(group, topics, url, "--until-idle", "10", STREAMER_CONSUMER__BATCH_MAX_EVENTS="25")
    assert replay.returncode == 0, replay.stderr[-3000:]
    assert "consumed 0 records" not in replay.stderr
    after = _versions(url, schema)
    assert after == before  # same rows, same versions: nothing moved backwards
    assert_same(stack, schema, url)


def _produce_poison(stack: Stack, topic: str) -> None:
    producer = Producer({"bootstrap.servers": stack.settings.bootstrap_servers})
    producer.produce(
        topic, key=b'{"schema":null,"payload":{"id":999999}}', value=b"\x00not a debezium record", partition=0
    )
    assert producer.flush(10) == 0


def test_poison_record_dlq_and_stop(stack: Stack, pipeline, tmp_path: Path, unique: str) -> None:
    schema, topics = pipeline["schema"], pipeline["topics"]
    url = target_url("postgresql", stack, tmp_path)
    topic = f"{schema}.{schema}.customers"
    run_workload(_dsn(stack), schema, transactions=30, seed=41)
    # wait for the topic to exist (the snapshot created it)
    _produce_poison(stack, topic)
    run_workload(_dsn(stack), schema, transactions=30, seed=42)
    dlq = f"{unique}.dlq"
    res = run_consumer(
        f"{schema}-dlq",
        topics,
        url,
        "--until-idle",
        "10",
        STREAMER_CONSUMER__ERROR_POLICY="dlq",
        STREAMER_CONSUMER__DLQ_TOPIC=dlq,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "dead-lettered 1" in res.stderr
    assert_same(stack, schema, url)
    reader = Consumer(kafka_consumer_config(stack, f"{unique}-dlq-reader"))
    reader.subscribe([dlq])
    letter = None
    deadline = time.monotonic() + 30
    while letter is None and time.monotonic() < deadline:
        msg = reader.poll(0.5)
        if msg is not None and not msg.error():
            letter = msg
    reader.close()
    assert letter is not None
    assert letter.value() == b"\x00not a debezium record"
    headers: dict[str, Any] = dict(letter.headers() or [])
    assert headers["streamer.origin.topic"] == topic.encode()
    assert headers["streamer.origin.partition"] == b"0"
    assert int(headers["streamer.origin.offset"]) >= 0
    assert headers["streamer.error.class"] == b"DecodeError"
    assert headers["streamer.error"]
    # policy stop: exits non-zero naming the record, commits nothing at or after it
    stop_url = target_url("sqlite", stack, tmp_path)
    res = run_consumer(f"{schema}-stop", topics, stop_url, "--until-idle", "10")
    assert res.returncode != 0
    offset = int(headers["streamer.origin.offset"])
    assert f"record {topic}[0]@{offset} cannot be applied" in res.stderr
    engine = create_target_engine(stop_url)
    with engine.connect() as conn:
        committed = conn.execute(
            sa.text(
                "SELECT next_offset FROM _streamer_offsets WHERE consumer_group = :g AND topic = :t AND partition_id = 0"
            ),
            {"g": f"{schema}-stop", "t": topic},
        ).scalar()
    engine.dispose()
    assert committed is None or committed <= offset
