"""Every way `streamer consume` (and `streamer replicate`) stops: exit code, one stderr line, commits.

Records are real Debezium 3.1 JSON change events (built as ``JsonConverter`` writes them)
produced to a topic of one partition, so the batch boundaries (``batch_max_events``, with
``batch_max_ms`` out of the way) and therefore the committed offsets are exact. Each test
asserts the exit code, that stderr holds exactly one ``streamer: ...`` line and no Python
traceback (the other lines are JSON log lines), the offsets committed in ``_streamer_offsets``
and in Kafka, and the whole target table.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import sqlalchemy as sa
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from streamer.bench.decode import json_record, key_schema, pg_envelope_schema, pg_source
from streamer.db import create_target_engine
from streamer.stack.local import Stack
from tests.conftest import kafka_consumer_config
from tests.integration.conftest import MARIADB_URL, _mariadb_engine

ID = {"type": "int32", "optional": False, "field": "id"}
V = {"type": "int32", "optional": True, "field": "v"}
BATCH = {"STREAMER_CONSUMER__BATCH_MAX_EVENTS": "5", "STREAMER_CONSUMER__BATCH_MAX_MS": "600000"}


class Topic:
    """A one-partition topic of change events of the source table ``<schema>.items``."""

    def __init__(self, stack: Stack, schema: str) -> None:
        self.stack, self.schema = stack, schema
        self.name = f"{schema}.{schema}.items"
        self.regex = rf"^{schema}\.{schema}\.items$"
        self.value_schema = pg_envelope_schema(self.name, [ID, V])
        self.key_schema = key_schema(self.name, [ID])
        self.produced = 0
        admin = AdminClient({"bootstrap.servers": stack.settings.bootstrap_servers})
        admin.create_topics([NewTopic(self.name, 1, 1)])[self.name].result(30)

    def produce(self, rows: list[tuple[int, int]]) -> None:
        """Inserts of ``(id, v)``, one record each, at offsets ``self.produced, ...``."""
        producer = Producer({"bootstrap.servers": self.stack.settings.bootstrap_servers})
        for rid, v in rows:
            lsn = 1_000_000 + 100 * self.produced
            src = pg_source(
                db="inventory", schema=self.schema, table="items", lsn=lsn, txid=500 + self.produced, ts_us=1
            )
            payload = {"before": None, "after": {"id": rid, "v": v}, "source": src, "op": "c", "ts_ms": 1}
            payload["transaction"] = None
            producer.produce(
                self.name,
                key=json_record(self.key_schema, {"id": rid}),
                value=json_record(self.value_schema, payload),
                partition=0,
            )
            self.produced += 1
        assert producer.flush(30) == 0


def kafka_committed(stack: Stack, group: str, topic: str) -> int | None:
    reader = Consumer(kafka_consumer_config(stack, group))
    try:
        [tp] = reader.committed([TopicPartition(topic, 0)], timeout=30)
        return tp.offset if tp.offset >= 0 else None
    finally:
        reader.close()


def stored_row(url: str, group: str, topic: str) -> tuple[Any, ...] | None:
    """``(next_offset, topic_id, fingerprint)`` of the group's stored row for partition 0 of ``topic``."""
    engine = create_target_engine(url)
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table("_streamer_offsets"):
                return None
            row = conn.execute(
                sa.text(
                    "SELECT next_offset, topic_id, fingerprint FROM _streamer_offsets "
                    "WHERE consumer_group = :g AND topic = :t AND partition_id = 0"
                ),
                {"g": group, "t": topic},
            ).one_or_none()
            return None if row is None else tuple(row)
    finally:
        engine.dispose()


def stored_offset(url: str, group: str, topic: str) -> int | None:
    row = stored_row(url, group, topic)
    return None if row is None else int(row[0])


def rows_of(url: str, table: tuple[str | None, str]) -> list[tuple[int, int]]:
    """Every row of the target table ``(schema, name)``, as ``(id, v)`` by id; [] when it does not exist."""
    engine = create_target_engine(url)
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table(table[1], schema=table[0]):
                return []
            t = sa.table(table[1], sa.column("id"), sa.column("v"), schema=table[0])
            return [(int(a), int(b)) for a, b in conn.execute(sa.select(t.c.id, t.c.v).order_by(t.c.id))]
    finally:
        engine.dispose()


def env_of(url: str, **settings: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("STREAMER_DEBUG", None)
    env["STREAMER_TARGET_URL"] = url
    env["STREAMER_LOG_FORMAT"] = "json"
    env.update(settings)
    return env


def consume(group: str, topic: Topic, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "streamer.cli",
        "consume",
        "--group",
        group,
        "--topics",
        topic.regex,
        *extra,
    ]


def the_line(stderr: str) -> str:
    """The one ``streamer:`` line of stderr; every other line is a JSON log line; no traceback."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    ours = [ln for ln in lines if ln.startswith("streamer: ")]
    assert len(ours) == 1, stderr[-3000:]
    for ln in lines:
        if ln is not ours[0]:
            assert isinstance(json.loads(ln), dict), ln  # a JSON log line (a traceback in it is one field)
    assert not any(ln.startswith("Traceback") for ln in lines)
    return ours[0]


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def topic(stack: Stack, unique: str) -> Iterator[Topic]:
    t = Topic(stack, unique)
    yield t
    AdminClient({"bootstrap.servers": stack.settings.bootstrap_servers}).delete_topics([t.name])


def checked_target(kind: str, tmp_path: Path, schema: str) -> tuple[str, tuple[str | None, str]]:
    """A target whose table rejects ``v >= 100`` (a CHECK constraint): (url, (schema, table)).

    ``kind`` sqlite or mariadb (both name the table ``<schema>_items``).
    """
    if kind == "mariadb":
        _mariadb_engine().dispose()  # the test database exists
        url = MARIADB_URL
    else:
        url = f"sqlite:///{tmp_path / 'target.db'}"
    engine = create_target_engine(url)
    q = engine.dialect.identifier_preparer.quote
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                f"CREATE TABLE {q(schema + '_items')} (id int PRIMARY KEY, v int CHECK (v < 100), "
                "_streamer_version varchar(40))"
            )
        )
    engine.dispose()
    return url, (None, f"{schema}_items")


def test_poison_record_under_stop_exits_1_with_one_line(
    stack: Stack, topic: Topic, unique: str, tmp_path: Path
) -> None:
    """The issue's case: batch 30..34 holds a rejected record (offset 32) and 35, 36 are read meanwhile.

    MariaDB, not SQLite: on SQLite the sink's per-event savepoints commit the events before the
    rejected one although the batch is refused (see the report of issue 16).
    """
    url, table = checked_target("mariadb", tmp_path, unique)
    rows = [(i, 500 if i == 32 else i) for i in range(37)]
    topic.produce(rows)
    group = f"{unique}-stop"
    res = subprocess.run(
        consume(group, topic), env=env_of(url, **BATCH), capture_output=True, text=True, timeout=240
    )
    assert res.returncode == 1, res.stderr[-3000:]
    line = the_line(res.stderr)
    assert line.startswith(f"streamer: stopped on a record: record {topic.name}[0]@32 cannot be applied: ")
    assert "CONSTRAINT" in line and "failed" in line and "consumer.error_policy=dlq" in line
    [exiting] = [e for e in map(json.loads, res.stderr.splitlines()[:-1]) if e["event"] == "exiting"]
    assert exiting["exit_code"] == 1 and "Traceback" in exiting["exception"]  # the traceback: in the log
    # whole batches before the poison one are committed, in the target and in Kafka; nothing after
    assert stored_offset(url, group, topic.name) == 30
    assert kafka_committed(stack, group, topic.name) == 30
    assert rows_of(url, table) == rows[:30]
    # a supervisor does not restart such a child: one start, exit 1
    sup = subprocess.run(
        consume(group, topic, "--processes", "2"),
        env=env_of(url, **BATCH),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert sup.returncode == 1, sup.stderr[-3000:]
    assert "child stopped for good, stopping all" in sup.stderr
    assert "exit code 1 (stopped on a record" in sup.stderr
    assert "child died, restarting" not in sup.stderr
    assert stored_offset(url, group, topic.name) == 30
    assert kafka_committed(stack, group, topic.name) == 30
    assert rows_of(url, table) == rows[:30]


def test_clean_exits_max_events_until_idle_and_sigterm(
    stack: Stack, topic: Topic, unique: str, tmp_path: Path
) -> None:
    url, table = checked_target("sqlite", tmp_path, unique)
    rows = [(i, i % 100) for i in range(23)]
    topic.produce(rows)
    group = f"{unique}-clean"
    env = env_of(url, **BATCH)
    res = subprocess.run(consume(group, topic, "--max-events", "12"), env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert the_line(res.stderr).startswith("streamer: done: consumed 12 records")
    assert stored_offset(url, group, topic.name) == kafka_committed(stack, group, topic.name) == 12
    assert rows_of(url, table) == rows[:12]
    # --until-idle: the rest (its last batch of 1 closes by batch_max_ms, then the stream is idle)
    idle_env = env_of(url, STREAMER_CONSUMER__BATCH_MAX_EVENTS="5")
    res = subprocess.run(
        consume(group, topic, "--until-idle", "8"), env=idle_env, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert the_line(res.stderr).startswith("streamer: done: consumed 11 records")
    assert stored_offset(url, group, topic.name) == kafka_committed(stack, group, topic.name) == 23
    assert rows_of(url, table) == rows
    # SIGTERM while 3 records wait in a batch that is not full: they are applied and committed
    proc = subprocess.Popen(
        consume(group, topic), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    more = [(i, i % 100) for i in range(23, 31)]
    topic.produce(more)
    wait_until(lambda: (stored_offset(url, group, topic.name) or 0) >= 28, 120, "one more batch")
    time.sleep(1.0)  # most likely the consumer has read the 3 records after it by now (not asserted)
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    stored = stored_offset(url, group, topic.name)
    assert stored is not None and stored in (28, 31)  # 31: the 3 pending records were finished first
    assert the_line(err).startswith(f"streamer: done: consumed {stored - 23} records")
    assert kafka_committed(stack, group, topic.name) == stored
    assert rows_of(url, table) == (rows + more)[:stored]


def test_bad_settings_exit_2(stack: Stack, topic: Topic, unique: str, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'target.db'}"
    res = subprocess.run(
        consume(f"{unique}-bad", topic, "--until-idle", "1"),
        env=env_of(url, STREAMER_CONSUMER__BATCH_MAX_EVENTS="0"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2, res.stderr[-3000:]
    assert the_line(res.stderr).startswith("streamer: bad settings: setting consumer.batch_max_events")
    assert not (tmp_path / "target.db").exists()  # nothing was started
    # --debug: the same line last, after the traceback
    argv = consume(f"{unique}-bad", topic, "--until-idle", "1")
    argv.insert(argv.index("consume"), "--debug")
    res = subprocess.run(
        argv, env=env_of(url, STREAMER_CONSUMER__BATCH_MAX_EVENTS="0"), capture_output=True, text=True
    )
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Traceback (most recent call last):" in res.stderr.splitlines()
    assert res.stderr.splitlines()[-1].startswith("streamer: bad settings: setting consumer.batch_max_events")


def test_target_unreachable_at_start_exits_3(stack: Stack, topic: Topic, unique: str) -> None:
    url = f"postgresql://postgres:postgres@127.0.0.1:{free_port()}/nothing"
    res = subprocess.run(
        consume(f"{unique}-down", topic, "--until-idle", "1"),
        env=env_of(url),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 3, res.stderr[-3000:]
    line = the_line(res.stderr)
    assert line.startswith("streamer: target unavailable: cannot reach the target postgresql")
    assert "run again" in line
    assert kafka_committed(stack, f"{unique}-down", topic.name) is None


@pytest.fixture
def private_db(stack: Stack, unique: str) -> Iterator[tuple[str, Any]]:
    """A PostgreSQL target database of this test only (on the stack's server): (url, admin connection)."""
    admin = psycopg2.connect(stack.source_admin_dsn("postgres"))
    admin.autocommit = True
    name = f"{unique}_target"
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    url = (
        sa.engine.make_url(stack.settings.source_url).set(database=name).render_as_string(hide_password=False)
    )
    yield url, admin
    with admin.cursor() as cur:
        cur.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


def test_target_lost_mid_run_exits_3_after_retries(
    stack: Stack, topic: Topic, unique: str, private_db: tuple[str, Any]
) -> None:
    url, admin = private_db
    name = sa.engine.make_url(url).database
    rows = [(i, i) for i in range(20)]
    topic.produce(rows)
    group = f"{unique}-lost"
    env = env_of(
        url, **BATCH, STREAMER_CONSUMER__RETRY_ATTEMPTS="3", STREAMER_CONSUMER__RETRY_MAX_WAIT_S="0.5"
    )
    proc = subprocess.Popen(
        consume(group, topic), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    wait_until(lambda: stored_offset(url, group, topic.name) == 20, 120, "the first 20 records")
    with admin.cursor() as cur:  # the target goes away: no new connection, the open ones closed
        cur.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
    more = [(i, i) for i in range(20, 25)]
    topic.produce(more)
    _out, err = proc.communicate(timeout=180)
    assert proc.returncode == 3, err[-3000:]
    line = the_line(err)  # the apply thread's retries, or the main thread's look at loading tables
    assert line.startswith("streamer: target unavailable: "), line
    assert "run again once the target is back" in line
    with admin.cursor() as cur:
        cur.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    table = (unique, "items")
    assert stored_offset(url, group, topic.name) == kafka_committed(stack, group, topic.name) == 20
    assert rows_of(url, table) == rows
    # once it is back, a run goes on from there
    res = subprocess.run(
        consume(group, topic, "--until-idle", "8"), env=env_of(url), capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert the_line(res.stderr).startswith("streamer: done: consumed 5 records")
    assert stored_offset(url, group, topic.name) == kafka_committed(stack, group, topic.name) == 25
    assert rows_of(url, table) == rows + more


def test_replicate_source_unreachable_exits_3(unique: str, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'target.db'}"
    source = f"postgresql://postgres:postgres@127.0.0.1:{free_port()}/inventory"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "streamer.cli",
            "replicate",
            "--source",
            source,
            "--slot",
            unique,
            "--publication",
            unique,
            "--until-idle",
            "1",
        ],
        env=env_of(url),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 3, res.stderr[-3000:]
    line = the_line(res.stderr)
    assert line.startswith("streamer: source unavailable: cannot connect to the source"), line
    assert stored_offset(url, unique, f"pg:{unique}") is None


def test_lost_session_then_sigterm_exits_0(stack: Stack, topic: Topic, unique: str, tmp_path: Path) -> None:
    """Frozen (SIGSTOP) past its session timeout, the member loses its partitions, rejoins, goes on."""
    url, table = checked_target("sqlite", tmp_path, unique)
    rows = [(i, i) for i in range(10)]
    topic.produce(rows)
    group = f"{unique}-lost"
    env = env_of(url, **BATCH)
    proc = subprocess.Popen(
        consume(group, topic), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    wait_until(lambda: stored_offset(url, group, topic.name) == 10, 120, "the first 10 records")
    proc.send_signal(signal.SIGSTOP)
    more = [(i, i) for i in range(10, 20)]
    topic.produce(more)
    time.sleep(12)  # twice the session timeout (6 s): the broker expires the frozen member
    proc.send_signal(signal.SIGCONT)
    wait_until(lambda: stored_offset(url, group, topic.name) == 20, 120, "the next 10 records")
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert the_line(err).startswith("streamer: done: consumed 20 records")
    assert '"event": "partitions lost"' in err, err[-3000:]
    assert stored_offset(url, group, topic.name) == kafka_committed(stack, group, topic.name) == 20
    assert rows_of(url, table) == rows + more


def test_until_idle_counts_from_the_first_assignment(
    stack: Stack, topic: Topic, unique: str, tmp_path: Path
) -> None:
    """An idle time shorter than the group join (3 s on the local broker) must still read everything:
    idle time counts only once the member is assigned (before, such a run ended 0 having read nothing)."""
    url, table = checked_target("sqlite", tmp_path, unique)
    rows = [(i, i % 100) for i in range(17)]
    topic.produce(rows)
    res = subprocess.run(
        consume(f"{unique}-short", topic, "--until-idle", "0.5"),
        env=env_of(url),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert the_line(res.stderr).startswith("streamer: done: consumed 17 records")
    assert rows_of(url, table) == rows
    assert stored_offset(url, f"{unique}-short", topic.name) == 17


def test_no_assignment_within_the_timeout_exits_3(
    stack: Stack, topic: Topic, unique: str, tmp_path: Path
) -> None:
    """A member that is never assigned (here: a timeout shorter than any join) does not end "idle" with
    exit 0: it stops with exit 3, one line naming the group and the way out, and writes nothing."""
    url, table = checked_target("sqlite", tmp_path, unique)
    topic.produce([(1, 1), (2, 2)])
    group = f"{unique}-never"
    res = subprocess.run(
        consume(group, topic, "--until-idle", "1"),
        env=env_of(url, STREAMER_CONSUMER__ASSIGNMENT_TIMEOUT_S="0.2"),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert res.returncode == 3, res.stderr[-3000:]
    line = the_line(res.stderr)
    assert line.startswith(f"streamer: no partitions assigned: group '{group}' assigned no partitions"), line
    assert f"streamer replay --group NEW --to group:{group}" in line
    assert rows_of(url, table) == []
    assert stored_offset(url, group, topic.name) is None


def test_replay_to_another_groups_positions(stack: Stack, topic: Topic, unique: str, tmp_path: Path) -> None:
    """`replay --group B --to group:A`: B starts exactly where A would (Kafka offset and stored row with
    its topic identity), so B reads the rest and nothing twice or never."""
    url, table = checked_target("sqlite", tmp_path, unique)
    rows = [(i, i % 100) for i in range(23)]
    topic.produce(rows)
    a, b = f"{unique}-a", f"{unique}-b"
    env = env_of(url, **BATCH)
    res = subprocess.run(consume(a, topic, "--max-events", "12"), env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    replay = [sys.executable, "-m", "streamer.cli", "replay", "--group", b]
    res = subprocess.run([*replay, "--to", f"group:{b}"], env=env, capture_output=True, text=True)
    assert res.returncode == 1 and "names the group being replayed" in res.stderr, res.stderr[-2000:]
    res = subprocess.run([*replay, "--to", f"group:{a}"], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert kafka_committed(stack, b, topic.name) == 12
    assert stored_row(url, b, topic.name) == stored_row(url, a, topic.name)
    assert stored_row(url, b, topic.name) is not None
    res = subprocess.run(
        consume(b, topic, "--until-idle", "3"), env=env_of(url), capture_output=True, text=True, timeout=180
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert the_line(res.stderr).startswith("streamer: done: consumed 11 records")
    assert rows_of(url, table) == rows
    assert stored_offset(url, b, topic.name) == kafka_committed(stack, b, topic.name) == 23
