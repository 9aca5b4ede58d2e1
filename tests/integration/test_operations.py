"""Operations end to end on the real stack: `streamer replay`, `streamer status`, metrics and logs of
`streamer consume`, and `streamer consume --processes N`.

Two kinds of input: topics this module produces itself (Debezium-shaped JSON records with exactly
known partitions, offsets and timestamps, written in several batches so that the local broker's
ListOffsets "latest" is wrong for them), and a real pipeline (source PostgreSQL -> Debezium ->
Kafka) where the target must end equal to the source.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from prometheus_client.parser import text_string_to_metric_families

from streamer.bench.decode import json_record, key_schema, pg_envelope_schema, pg_source
from streamer.db import create_target_engine
from streamer.ops import groups
from streamer.stack.local import Stack
from streamer.stack.workload import SAMPLE_TABLES, create_sample, run_workload
from tests.conftest import debezium_config, kafka_consumer_config
from tests.integration.test_consume import assert_same, consumer_env

ID = {"type": "int32", "optional": False, "default": 0, "field": "id"}
NAME = {"type": "string", "optional": True, "field": "name"}


# ---------------------------------------------------------------- helpers
def streamer(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamer.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def admin(stack: Stack) -> AdminClient:
    return AdminClient({"bootstrap.servers": stack.settings.bootstrap_servers})


@pytest.fixture
def topics(stack: Stack) -> Iterator[Callable[[str, int], str]]:
    """Create topics for a test (deleted afterwards)."""
    made: list[str] = []

    def create(name: str, partitions: int = 3) -> str:
        client = admin(stack)  # referenced until the answer: a destroyed client fails its futures
        client.create_topics([NewTopic(name, partitions, 1)])[name].result(30)
        made.append(name)
        return name

    yield create
    if made:
        client = admin(stack)
        for future in client.delete_topics(made).values():
            try:
                future.result(30)
            except Exception:  # the local broker may not implement deletes of every kind
                pass


class Items:
    """Debezium PostgreSQL change records of a table ``items(id int primary key, name text)``."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        _prefix, self.schema, self.table = topic.split(".")
        self.value_schema = pg_envelope_schema(topic, [ID, NAME])
        self.key_schema = key_schema(topic, [ID])
        self.lsn = 1000

    def key(self, ident: int) -> bytes:
        return json_record(self.key_schema, {"id": ident})

    def value(self, op: str, ident: int, ts_us: int) -> bytes:
        self.lsn += 8
        row = {"id": ident, "name": f"name {ident} at {self.lsn}"}
        source = pg_source(
            db="inventory", schema=self.schema, table=self.table, lsn=self.lsn, txid=self.lsn, ts_us=ts_us
        )
        payload = {
            "before": {"id": ident, "name": None} if op == "d" else None,
            "after": None if op == "d" else row,
            "source": source,
            "transaction": None,
            "op": op,
            "ts_ms": ts_us // 1000,
            "ts_us": ts_us,
            "ts_ns": ts_us * 1000,
        }
        return json_record(self.value_schema, payload)


def producer(stack: Stack) -> Producer:
    return Producer({"bootstrap.servers": stack.settings.bootstrap_servers, "linger.ms": 20})


def committed_by_admin(stack: Stack, group: str) -> dict[tuple[str, int], int]:
    client = admin(stack)
    res = client.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group].result(30)
    return {(tp.topic, tp.partition): tp.offset for tp in res.topic_partitions if tp.offset >= 0}


def stored_by_sql(url: str, group: str) -> dict[tuple[str, int], int]:
    engine = create_target_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT topic, partition_id, next_offset FROM _streamer_offsets WHERE consumer_group = :g"
                ),
                {"g": group},
            )
            return {(r[0], r[1]): r[2] for r in rows}
    finally:
        engine.dispose()


def read_topics(stack: Stack, names: list[str]) -> list[tuple[str, int, int, int]]:
    """Every record of the topics, read from the beginning: (topic, partition, offset, timestamp ms)."""
    c = Consumer(
        {**kafka_consumer_config(stack, f"reader-{uuid.uuid4().hex[:8]}"), "enable.partition.eof": True}
    )
    md = c.list_topics(timeout=10)
    parts = [TopicPartition(t, p, OFFSET_BEGINNING) for t in names for p in md.topics[t].partitions]
    c.assign(parts)
    out: list[tuple[str, int, int, int]] = []
    eof: set[tuple[str | None, int | None]] = set()
    deadline = time.monotonic() + 60
    while len(eof) < len(parts) and time.monotonic() < deadline:
        for m in c.consume(10_000, 0.2):
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    eof.add((m.topic(), m.partition()))
                continue
            out.append((m.topic() or "", m.partition() or 0, m.offset() or 0, m.timestamp()[1]))
    c.close()
    assert len(eof) == len(parts), "did not reach the end of every partition"
    return out


def per_partition(records: list[tuple[str, int, int, int]]) -> dict[tuple[str, int], int]:
    counts: dict[tuple[str, int], int] = {}
    for t, p, _o, _ts in records:
        counts[(t, p)] = counts.get((t, p), 0) + 1
    return counts


def wait_for(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def json_logs(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


# ---------------------------------------------------------------- status
def test_status_json_against_a_known_state(stack: Stack, unique: str, topics, tmp_path: Path) -> None:
    """Exact committed offsets, true end offsets and lag after consuming part of a topic."""
    topic = topics(f"{unique}.{unique}.items", 3)
    dlq = topics(f"{unique}.dlq", 1)
    items, prod = Items(topic), producer(stack)
    now_us = int(time.time() * 1_000_000)
    ident = 0
    for _round in range(3):  # three batches per partition: ListOffsets "latest" is wrong on tansu
        for p in range(3):
            for _ in range(10 + p):
                ident += 1
                prod.produce(topic, key=items.key(ident), value=items.value("c", ident, now_us), partition=p)
        assert prod.flush(10) == 0
    for i in range(3):
        prod.produce(dlq, value=f"letter {i}".encode())
        assert prod.flush(10) == 0
    ends = {(topic, 0): 30, (topic, 1): 33, (topic, 2): 36}

    url = f"sqlite:///{tmp_path / 'target.db'}"
    group = f"{unique}-status"
    res = streamer(
        "consume",
        "--group",
        group,
        "--topics",
        f"^{re.escape(topic)}$",
        "--max-events",
        "40",
        env=consumer_env(url),
    )
    assert res.returncode == 0, res.stderr[-3000:]

    conn_dir = tmp_path / f"{unique}-connectors"  # the directory's name is the scope: only this file's
    conn_dir.mkdir()
    absent = f"{unique}-absent"
    cfg = debezium_config(stack, absent, "public.nothing")
    (conn_dir / f"{absent}.json").write_text(json.dumps({"name": absent, "config": cfg}))
    env = consumer_env(url, STREAMER_CONSUMER__DLQ_TOPIC=dlq, STREAMER_CONNECTORS_DIR=str(conn_dir))
    res = streamer("status", "--json", "--group", group, env=env)
    assert res.returncode == 1, res.stderr  # the file's connector is not on the worker
    doc = json.loads(res.stdout)

    committed = committed_by_admin(stack, group)
    stored = stored_by_sql(url, group)
    assert sum(committed.values()) == 40 and stored == committed  # --max-events 40 read exactly 40
    assert doc["group"] == group and doc["schema"] == 1 and doc["ok"] is False
    assert doc["broker"] == {
        "bootstrap_servers": stack.settings.bootstrap_servers,
        "reachable": True,
        "error": None,
    }
    got = {(p["topic"], p["partition"]): p for p in doc["partitions"]}
    assert set(got) == set(ends)  # the group's topics: only the one it has offsets for
    for tp, end in ends.items():
        p = got[tp]
        position = committed.get(tp, 0)
        assert (p["committed"], p["stored"]) == (committed.get(tp), stored.get(tp))
        assert (p["start"], p["end"], p["position"], p["lag"]) == (0, end, position, end - position)
    assert doc["lag"] == sum(ends.values()) - 40
    assert doc["consumer_group"] == {"state": "EMPTY", "members": [], "error": None}
    assert doc["dead_letters"] == {"topic": dlq, "exists": True, "records": 3}
    assert doc["connect"]["reachable"] is True
    assert doc["connect"]["connectors"] == [
        {
            "name": absent,
            "state": "ABSENT",
            "worker_id": None,
            "tasks": [],
            "topics": [f"{absent}.public.nothing"],
            "ok": False,
        }
    ]
    assert doc["target"]["reachable"] is True and doc["target"]["error"] is None
    engine = create_target_engine(url)
    with engine.connect() as conn:
        newest = conn.execute(sa.text(f'SELECT max(_streamer_version) FROM "{unique}_items"')).scalar_one()
    engine.dispose()
    tables = {t["table"]: t for t in doc["tables"]}
    assert tables[f"{unique}_items"]["last_position"] == newest
    assert tables[f"{unique}_items"]["updated_at"]

    # Kafka Connect down: one clear row, every other section still read
    env["STREAMER_CONNECT_URL"] = "http://127.0.0.1:9"
    res = streamer("status", "--json", "--group", group, env=env)
    down = json.loads(res.stdout)
    assert res.returncode == 1
    assert down["connect"]["reachable"] is False and down["connect"]["error"].startswith("unreachable")
    assert down["partitions"] == doc["partitions"] and down["lag"] == doc["lag"]
    res = streamer("status", "--group", group, env=env)
    assert "UNREACHABLE" in res.stdout and f"total lag {doc['lag']}" in res.stdout


# ---------------------------------------------------------------- metrics and logs
def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_endpoint_and_batch_logs(stack: Stack, unique: str, topics, tmp_path: Path) -> None:
    topic = topics(f"{unique}.{unique}.items", 3)
    dlq = topics(f"{unique}.dlq", 1)
    items, prod = Items(topic), producer(stack)
    ts_us = int((time.time() - 3.0) * 1_000_000)  # committed at the source 3 s ago
    for ident in range(1, 21):  # a key stays in one partition, as Debezium's keyed records do
        prod.produce(topic, key=items.key(ident), value=items.value("c", ident, ts_us), partition=ident % 3)
    assert prod.flush(10) == 0
    for ident in range(1, 6):
        prod.produce(topic, key=items.key(ident), value=items.value("u", ident, ts_us), partition=ident % 3)
    for ident in range(6, 9):
        prod.produce(topic, key=items.key(ident), value=items.value("d", ident, ts_us), partition=ident % 3)
        prod.produce(topic, key=items.key(ident), value=None, partition=ident % 3)  # Debezium's tombstone
    prod.produce(topic, key=items.key(999), value=b"\x00not a debezium record", partition=0)
    assert prod.flush(10) == 0
    records, events = 32, 28

    url = f"sqlite:///{tmp_path / 'target.db'}"
    group = f"{unique}-metrics"
    port = free_port()
    log_path = tmp_path / "consume.log"
    env = consumer_env(url, STREAMER_CONSUMER__STATISTICS_INTERVAL_MS="500", STREAMER_CONSUMER__DLQ_TOPIC=dlq)
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamer.cli",
                "consume",
                "--group",
                group,
                "--topics",
                f"^{re.escape(topic)}$",
            ]
            + ["--metrics-port", str(port), "--error-policy", "dlq", "--until-idle", "120"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:

        def all_read() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
            try:
                m = scrape(port)
            except httpx.HTTPError:
                return None
            return m if m.get(("streamer_records_total", ())) == records else None

        m = wait_for(all_read, 90, "the consumer to commit every record")
        table = f"{unique}_items"
        for op, n in (("create", 20), ("update", 5), ("delete", 3)):
            assert m[("streamer_events_applied_total", (("op", op), ("table", table)))] == n
        assert sum(v for (name, _), v in m.items() if name == "streamer_events_applied_total") == events
        assert m[("streamer_dead_letters_total", ())] == 1
        assert m[("streamer_batch_retries_total", ())] == 0
        batches = m[("streamer_batches_total", ())]
        assert batches >= 1
        assert m[("streamer_batch_records_count", ())] == batches
        assert m[("streamer_batch_records_sum", ())] == records
        assert m[("streamer_batch_apply_seconds_count", ())] == batches
        assert m[("streamer_end_to_end_delay_seconds_count", ())] == events
        assert m[("streamer_end_to_end_delay_seconds_bucket", (("le", "2.0"),))] == 0  # all at least 3 s old
        assert m[("streamer_end_to_end_delay_seconds_sum", ())] >= 3.0 * events
        assert m[("streamer_consumer_info", (("group", group),))] == 1

        def lags() -> dict[str, float] | None:
            found = {
                dict(labels)["partition"]: v
                for (name, labels), v in scrape(port).items()
                if name == "streamer_partition_lag"
            }
            return found if len(found) == 3 and all(v == 0 for v in found.values()) else None

        assert set(wait_for(lags, 20, "lag gauges of 0 on all three partitions")) == {"0", "1", "2"}

        # status while the member is up: the group, its member, no lag, the dead letter
        res = streamer("status", "--json", "--group", group, "--topics", f"^{re.escape(topic)}$", env=env)
        doc = json.loads(res.stdout)
        assert doc["consumer_group"]["state"] == "STABLE"
        [member] = doc["consumer_group"]["members"]
        assert member["member_id"].startswith(f"streamer-{group}-")
        assert doc["lag"] == 0 and len(doc["partitions"]) == 3
        assert doc["dead_letters"] == {"topic": dlq, "exists": True, "records": 1}
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(60)
    assert rc == 0, log_path.read_text()[-3000:]

    # structured logs: every batch names its number, partitions and offset range; together they cover each
    # partition's records exactly once, in order
    batch_lines = [e for e in json_logs(log_path.read_text()) if e.get("event") == "batch applied"]
    assert [e["batch"] for e in batch_lines] == list(range(1, len(batch_lines) + 1))
    assert len(batch_lines) == batches
    covered: dict[str, list[int]] = {}
    for e in batch_lines:
        assert e["level"] == "info" and e["timestamp"] and sorted(e["offsets"]) == e["partitions"]
        for tp, (first, last) in e["offsets"].items():
            covered.setdefault(tp, []).extend(range(first, last + 1))
    ends = {f"{t}[{p}]": n for (t, p), n in per_partition(read_topics(stack, [topic])).items()}
    assert {tp: sorted(offsets) for tp, offsets in covered.items()} == {
        tp: list(range(n)) for tp, n in ends.items()
    }


# ---------------------------------------------------------------- replay (real pipeline)
@pytest.fixture
def captured(stack: Stack, debezium, unique: str) -> Iterator[dict[str, Any]]:
    """A small sample schema on the source, captured by a Debezium connector (initial snapshot)."""
    create_sample(stack.settings.source_url, unique, rows=200)
    tables = ",".join(f"{unique}.{t}" for t in SAMPLE_TABLES)
    debezium(unique, tables, **{"column.propagate.source.type": ".*"})
    yield {"schema": unique, "regex": rf"^{unique}\.{unique}\.[^.]+$", "prefix": unique}
    with create_target_engine(stack.settings.source_url).begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{unique}" CASCADE'))
    with create_target_engine(stack.settings.target_url).begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{unique}" CASCADE'))


def _consume(group: str, regex: str, url: str, *extra: str) -> int:
    res = streamer("consume", "--group", group, "--topics", regex, *extra, env=consumer_env(url), timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    found = re.search(r"consumed (\d+) records", res.stderr)
    assert found, res.stderr[-2000:]
    return int(found.group(1))


def _versions(url: str, schema: str) -> dict[tuple[str, Any], str]:
    engine = create_target_engine(url)
    try:
        with engine.connect() as conn:
            return {
                (t, r[0]): r[1]
                for t in SAMPLE_TABLES
                for r in conn.execute(sa.text(f'SELECT id, _streamer_version FROM "{schema}"."{t}"'))
            }
    finally:
        engine.dispose()


def test_replay_dry_run_refusal_timestamp_and_earliest(stack: Stack, captured, tmp_path: Path) -> None:
    schema, regex = captured["schema"], captured["regex"]
    url = stack.settings.target_url
    group = f"{schema}-replay"
    # no connector files: replay's default topics are then exactly the ones the group has offsets for
    (tmp_path / "none").mkdir()
    env = consumer_env(url, STREAMER_CONNECTORS_DIR=str(tmp_path / "none"))
    run_workload(stack.settings.source_url, schema, transactions=40, seed=61)
    _consume(group, regex, url, "--until-idle", "6")
    assert_same(stack, schema, url)
    names = groups.matching_topics(admin(stack).list_topics(timeout=10), regex)
    assert len(names) == 3
    ends = per_partition(read_topics(stack, names))
    total = sum(ends.values())

    # status: the connector RUNNING on its worker, the group caught up (true ends on the local broker)
    conn_dir = tmp_path / f"{schema}-connectors"
    conn_dir.mkdir()
    name = captured["prefix"]
    (conn_dir / f"{name}.json").write_text(
        json.dumps({"name": name, "config": debezium_config(stack, name, "x")})
    )
    res = streamer(
        "status", "--json", "--group", group, env={**env, "STREAMER_CONNECTORS_DIR": str(conn_dir)}
    )
    doc = json.loads(res.stdout)
    rest = httpx.get(f"{stack.settings.connect_url}/connectors/{name}/status", timeout=10).json()
    [conn] = doc["connect"]["connectors"]
    assert (conn["name"], conn["state"], conn["worker_id"]) == (
        name,
        "RUNNING",
        rest["connector"]["worker_id"],
    )
    assert [(t["state"], t["worker_id"]) for t in conn["tasks"]] == [
        ("RUNNING", t["worker_id"]) for t in rest["tasks"]
    ]
    assert {(p["topic"], p["partition"]): p["end"] for p in doc["partitions"]} == ends
    assert doc["lag"] == 0 and all(p["committed"] == p["end"] == p["stored"] for p in doc["partitions"])

    # dry run to earliest: exact numbers, nothing changed
    res = streamer("replay", "--group", group, "--to", "earliest", "--dry-run", "--json", env=env)
    assert res.returncode == 0, res.stderr
    plan = json.loads(res.stdout)
    assert {
        (m["topic"], m["partition"]): (m["committed"], m["stored"], m["current"], m["new"], m["reread"])
        for m in plan["moves"]
    } == {tp: (n, n, n, 0, n) for tp, n in ends.items()}
    assert plan["reread"] == total and plan["skipped"] == 0 and plan["dry_run"] is True
    assert committed_by_admin(stack, group) == ends and stored_by_sql(url, group) == ends
    # explicit positions (one as a positional argument): only those partitions, exact counts
    (t0, p0), (t1, p1) = sorted(ends)[:2]
    res = streamer(
        "replay",
        "--group",
        group,
        "--to",
        f"{t0}:{p0}:1",
        f"{t1}:{p1}:{ends[(t1, p1)]}",
        "--dry-run",
        "--json",
        env=env,
    )
    plan = json.loads(res.stdout)
    assert [(m["topic"], m["partition"], m["new"], m["reread"]) for m in plan["moves"]] == [
        (t0, p0, 1, ends[(t0, p0)] - 1),
        (t1, p1, ends[(t1, p1)], 0),
    ]

    # refused while the group has a member, naming it; nothing written
    blocker = Consumer(
        {
            **kafka_consumer_config(stack, group),
            "client.id": f"{schema}-blocker",
            # the local broker keeps an empty group's assignor: join with the one `streamer consume` uses
            "partition.assignment.strategy": "cooperative-sticky",
        }
    )
    blocker.subscribe([regex])
    wait_for(lambda: (blocker.poll(0.2), blocker.assignment())[1], 30, "the blocking member's assignment")
    member_id = blocker.memberid()
    try:
        res = streamer("replay", "--group", group, "--to", "earliest", env=env)
        assert res.returncode == 1
        assert "active member" in res.stderr and member_id in res.stderr, res.stderr
        res = streamer("replay", "--group", group, "--to", "earliest", "--dry-run", env=env)
        assert res.returncode == 1 and member_id in res.stderr
    finally:
        blocker.close()
    assert committed_by_admin(stack, group) == ends and stored_by_sql(url, group) == ends
    bootstrap = stack.settings.bootstrap_servers
    wait_for(lambda: not groups.describe_group(bootstrap, group).active, 30, "the group to be empty")

    # replay to a timestamp: exactly the records at or after it are read again
    time.sleep(1.5)
    mark = time.time()
    time.sleep(1.5)
    run_workload(stack.settings.source_url, schema, transactions=25, seed=62)
    _consume(group, regex, url, "--until-idle", "6")
    everything = read_topics(stack, names)
    after = [r for r in everything if r[3] >= int(mark * 1000)]
    assert 0 < len(after) < len(everything)
    first_after: dict[tuple[str, int], int] = {}
    for t, p, o, _ts in sorted(after):
        first_after.setdefault((t, p), o)
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(mark)) + f".{int(mark * 1000) % 1000:03d}Z"
    res = streamer("replay", "--group", group, "--to", iso, "--json", env=env)
    assert res.returncode == 0, res.stderr
    plan = json.loads(res.stdout)
    ends = per_partition(everything)
    assert {(m["topic"], m["partition"]): m["new"] for m in plan["moves"]} == {
        tp: first_after.get(tp, n) for tp, n in ends.items()
    }
    assert plan["reread"] == len(after)
    moved = {tp: first_after.get(tp, n) for tp, n in ends.items()}
    assert committed_by_admin(stack, group) == moved and stored_by_sql(url, group) == moved
    assert _consume(group, regex, url, "--until-idle", "6") == len(after)
    assert_same(stack, schema, url)

    # replay to earliest over the up-to-date target: every record again, nothing moves back
    before = _versions(url, schema)
    res = streamer("replay", "--group", group, "--to", "earliest", env=env)
    assert res.returncode == 0, res.stderr
    zero = dict.fromkeys(ends, 0)
    assert committed_by_admin(stack, group) == zero
    assert stored_by_sql(url, group) == zero
    assert _consume(group, regex, url, "--until-idle", "6") == sum(ends.values())
    assert _versions(url, schema) == before
    assert_same(stack, schema, url)


# ---------------------------------------------------------------- --processes
def _child_pids(log: Path) -> list[tuple[int, int]]:
    return [(e["child"], e["pid"]) for e in json_logs(log.read_text()) if e.get("event") == "child started"]


def test_processes_3_survive_kill_9_of_a_child(stack: Stack, captured, tmp_path: Path) -> None:
    schema, regex = captured["schema"], captured["regex"]
    url = stack.settings.target_url
    group = f"{schema}-procs"
    log = tmp_path / "supervisor.log"
    env = consumer_env(url, STREAMER_CONSUMER__BATCH_MAX_EVENTS="50")
    with log.open("w") as err:
        sup = subprocess.Popen(
            [sys.executable, "-m", "streamer.cli", "consume", "--processes", "3", "--group", group]
            + ["--topics", regex, "--until-idle", "12"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        started = wait_for(lambda: len(_child_pids(log)) >= 3 and _child_pids(log), 30, "three children")
        assert sorted(c for c, _ in started) == [0, 1, 2]
        wait_for(lambda: sum(stored_by_sql(url, group).values()) > 0, 60, "consumer progress")
        run_workload(stack.settings.source_url, schema, transactions=80, rate=100, seed=71)
        victim_slot, victim = started[1]
        os.kill(victim, signal.SIGKILL)

        def restarted() -> bool:
            entries = json_logs(log.read_text())
            died = any(
                e.get("event") == "child died, restarting"
                and e["pid"] == victim
                and e["status"] == "killed by SIGKILL"
                for e in entries
            )
            return died and any(c == victim_slot and p != victim for c, p in _child_pids(log)[3:])

        wait_for(restarted, 30, "the supervisor to restart the killed child")
        run_workload(stack.settings.source_url, schema, transactions=80, rate=100, seed=72)
        rc = sup.wait(180)
    finally:
        if sup.poll() is None:
            sup.send_signal(signal.SIGTERM)
            sup.wait(60)
    assert rc == 0, log.read_text()[-4000:]
    entries = json_logs(log.read_text())
    assert sum(1 for e in entries if e.get("event") == "child finished") == 3
    with pytest.raises(ProcessLookupError):
        os.kill(victim, 0)
    assert_same(stack, schema, url)


def _stored_or_none(url: str, group: str) -> dict[tuple[str, int], int] | None:
    try:
        return stored_by_sql(url, group)
    except sa.exc.ProgrammingError:  # the consumer has not created its state tables yet
        return None


def test_replay_after_a_member_was_killed(stack: Stack, captured, tmp_path: Path) -> None:
    """Two members, one killed with -9 and one stopped cleanly: the empty group still replays.

    (The local broker then refuses offset changes for the group with UNKNOWN_MEMBER_ID; replay
    joins the empty group as its only member and commits the offsets as that member.)
    """
    schema, regex = captured["schema"], captured["regex"]
    url = stack.settings.target_url
    group = f"{schema}-crash"
    (tmp_path / "none").mkdir()
    env = consumer_env(url, STREAMER_CONNECTORS_DIR=str(tmp_path / "none"))
    member_env = consumer_env(url, STREAMER_CONSUMER__BATCH_MAX_EVENTS="30")
    bootstrap = stack.settings.bootstrap_servers
    names = wait_for(
        lambda: (
            (found := groups.matching_topics(admin(stack).list_topics(timeout=10), regex))
            and len(found) == 3
            and found
        ),
        60,
        "the three topics",
    )

    def crash_two_members(seed: int) -> None:
        """Two members apply a workload; then one is killed with -9 and the other stopped cleanly."""
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "streamer.cli", "consume", "--group", group, "--topics", regex],
                env=member_env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(2)
        ]
        try:
            run_workload(stack.settings.source_url, schema, transactions=20, seed=seed)
            wait_for(
                lambda: _stored_or_none(url, group) == per_partition(read_topics(stack, names)),
                120,
                "the members to apply everything",
                interval=1,
            )
            wait_for(lambda: len(groups.describe_group(bootstrap, group).members) == 2, 60, "two members")
            procs[0].send_signal(signal.SIGKILL)
            procs[0].wait(30)
            procs[1].send_signal(signal.SIGTERM)
            assert procs[1].wait(60) == 0
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait(30)
        wait_for(lambda: not groups.describe_group(bootstrap, group).members, 60, "the group to be empty")

    crash_two_members(71)
    ends = per_partition(read_topics(stack, names))

    res = streamer("replay", "--group", group, "--to", "earliest", env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    zero = dict.fromkeys(ends, 0)
    assert committed_by_admin(stack, group) == zero and stored_by_sql(url, group) == zero
    assert _consume(group, regex, url, "--until-idle", "6") == sum(ends.values())
    assert_same(stack, schema, url)

    # and to a timestamp, after the same crash again
    time.sleep(1.5)
    mark = time.time()
    time.sleep(1.5)
    crash_two_members(72)
    everything = read_topics(stack, names)
    ends = per_partition(everything)
    after = [r for r in everything if r[3] >= int(mark * 1000)]
    assert 0 < len(after) < len(everything)
    first_after: dict[tuple[str, int], int] = {}
    for t, p, o, _ts in sorted(after):
        first_after.setdefault((t, p), o)
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(mark)) + f".{int(mark * 1000) % 1000:03d}Z"
    res = streamer("replay", "--group", group, "--to", iso, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    moved = {tp: first_after.get(tp, n) for tp, n in ends.items()}
    assert committed_by_admin(stack, group) == moved and stored_by_sql(url, group) == moved
    assert _consume(group, regex, url, "--until-idle", "6") == len(after)
    assert_same(stack, schema, url)
