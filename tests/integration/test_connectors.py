"""`streamer connectors` end to end against the running stack's Kafka Connect, driven as a user would.

Every test writes connector files into a directory of its own (whose name, unique, is also the
connectors' ``streamer.scope``), runs the real CLI in a subprocess and checks the worker, the
source database and the broker. Fixtures delete the connectors, slots, publications, topics,
tables and roles each test made.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient

from streamer.stack.local import Stack
from tests.conftest import debezium_config, drop_connector, kafka_consumer_config, source_connection

REPO = Path(__file__).resolve().parents[2]
FILE_SOURCE = "org.apache.kafka.connect.file.FileStreamSourceConnector"


# ---------------------------------------------------------------------- helpers
def cli(stack: Stack, directory: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """`streamer connectors ARGS --dir DIRECTORY --connect-url URL` in a subprocess."""
    cmd = [sys.executable, "-m", "streamer.cli", "connectors", *args]
    cmd += ["--dir", str(directory), "--connect-url", stack.settings.connect_url]
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)


def write_connector(directory: Path, name: str, config: dict[str, str], filename: str | None = None) -> Path:
    path = directory / (filename or f"{name}.json")
    path.write_text(json.dumps({"name": name, "config": config}, indent=2) + "\n")
    return path


def get(stack: Stack, path: str) -> httpx.Response:
    """GET on the worker; retried while it answers 409/500 for a rebalance (after creates and deletes)."""
    deadline = time.monotonic() + 60
    while True:
        resp = httpx.get(f"{stack.settings.connect_url}{path}", timeout=90)
        if resp.status_code not in (409, 500) or time.monotonic() > deadline:
            return resp
        time.sleep(0.5)


def config_topic(stack: Stack) -> str:
    props = (stack.conf_dir / "connect-distributed.properties").read_text().splitlines()
    return next(line.split("=", 1)[1] for line in props if line.startswith("config.storage.topic="))


def config_records(stack: Stack, name: str) -> int:
    """How many records Connect wrote to its config topic for connector ``name``'s config.

    Every ``PUT /connectors/{name}/config`` writes one (``connector-<name>``), even an identical
    one, and restarts the connector (KAFKA-17719): an apply that restarts nothing writes none.
    """
    consumer = Consumer({**kafka_consumer_config(stack, f"probe-{name}"), "enable.partition.eof": True})
    try:
        consumer.assign([TopicPartition(config_topic(stack), 0, OFFSET_BEGINNING)])
        count, deadline = 0, time.monotonic() + 30
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    return count
                continue
            if msg.key() == f"connector-{name}".encode():
                count += 1
        raise AssertionError(f"did not reach the end of {config_topic(stack)} in 30 s")
    finally:
        consumer.close()


def delete_connector(stack: Stack, name: str) -> None:
    """DELETE, retried while the worker answers 409/500 for a rebalance; a missing connector is fine."""
    deadline = time.monotonic() + 60
    while True:
        resp = httpx.delete(f"{stack.settings.connect_url}/connectors/{name}", timeout=90)
        if resp.status_code in (204, 404) or time.monotonic() > deadline:
            return
        time.sleep(0.5)


def slot_pid(stack: Stack, slot: str) -> int | None:
    conn = source_connection(stack)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (slot,))
            row = cur.fetchone()
    finally:
        conn.close()
    return row[0] if row else None


@pytest.fixture
def workdir(tmp_path: Path, unique: str) -> Path:
    """The connector directory; its (unique) name is the scope `apply` marks connectors with."""
    path = tmp_path / unique
    path.mkdir()
    return path


@pytest.fixture
def cleanup(stack: Stack) -> Iterator[Callable[..., None]]:
    """``cleanup(name, prefix=None, tables=(), role=None)``: connectors deleted, then slots, topics, tables, roles."""
    items: list[tuple[str, str | None, tuple[str, ...], str | None]] = []

    def register(
        name: str, prefix: str | None = None, tables: tuple[str, ...] = (), role: str | None = None
    ) -> None:
        items.append((name, prefix, tables, role))

    yield register
    for name, _prefix, _tables, _role in items:  # all deletions first: their rebalances overlap
        delete_connector(stack, name)
    admin = AdminClient({"bootstrap.servers": stack.settings.bootstrap_servers})
    for name, prefix, tables, role in items:
        if prefix is not None:
            drop_connector(stack, name, prefix)  # waits for the slot's release; drops it and the publication
            topics = [
                t
                for t in admin.list_topics(timeout=10).topics
                if t.startswith(f"{prefix}.") or t.endswith(f".{prefix}")
            ]
            for future in admin.delete_topics(topics).values() if topics else []:
                try:
                    future.result(10)
                except Exception:  # a topic another cleanup already removed
                    pass
        if not tables and not role:
            continue
        conn = source_connection(stack)
        try:
            with conn.cursor() as cur:
                for table in tables:
                    cur.execute(f'DROP TABLE IF EXISTS public."{table}"')
                if role:
                    cur.execute(f'DROP ROLE IF EXISTS "{role}"')
        finally:
            conn.close()


def file_source(unique: str) -> dict[str, str]:
    """A connector that needs no database: Kafka's FileStreamSource on a file that does not exist."""
    return {"connector.class": FILE_SOURCE, "file": f"/tmp/{unique}-absent.txt", "topic": f"{unique}-file"}


def create_tables(stack: Stack, *tables: str) -> None:
    conn = source_connection(stack)
    try:
        with conn.cursor() as cur:
            for table in tables:
                cur.execute(f'CREATE TABLE public."{table}" (id bigint PRIMARY KEY, name text NOT NULL)')
    finally:
        conn.close()


# ---------------------------------------------------------------------- errors before anything is pushed
def test_bad_json_exits_1_with_file_line_col_and_pushes_nothing(
    stack: Stack, workdir: Path, unique: str, cleanup
) -> None:
    good = f"{unique}-good"
    cleanup(good)
    write_connector(workdir, good, file_source(unique))
    (workdir / "broken.json").write_text(
        '{\n  "name": "x",\n  "config": {\n    "connector.class": "C",\n  }\n}\n'
    )
    for command in ("validate", "plan", "apply"):
        proc = cli(stack, workdir, command)
        assert proc.returncode == 1, (command, proc.stdout, proc.stderr)
        assert (
            f"{workdir}/broken.json:5:3: invalid JSON: Expecting property name enclosed in double quotes"
            in proc.stderr
        )
        assert "Traceback" not in proc.stderr
    assert get(stack, f"/connectors/{good}").status_code == 404


def test_configs_connect_rejects_are_shown_by_file_and_key(
    stack: Stack, workdir: Path, unique: str, cleanup
) -> None:
    fields, password, klass = f"{unique}-fields", f"{unique}-pw", f"{unique}-class"
    for name in (fields, password, klass):
        cleanup(name)
    base = debezium_config(stack, unique, "public.nothing_here")
    write_connector(workdir, fields, {**base, "snapshot.mode": "bogus", "heartbeat.interval.ms": "soon"})
    write_connector(workdir, password, {**base, "database.password": "Wr0ng-Passw0rd!"})
    write_connector(workdir, klass, {**base, "connector.class": "com.example.NoSuchConnector"})
    proc = cli(stack, workdir, "validate")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    err = proc.stderr
    # each field error: file:line:col: key: Connect's message
    assert (
        f"{workdir}/{fields}.json:16:5: snapshot.mode: The 'snapshot.mode' value is invalid: Value must be one of"
        in err
    )
    lines = (workdir / f"{fields}.json").read_text().splitlines()
    line = 1 + next(i for i, text in enumerate(lines) if text.startswith('    "heartbeat.interval.ms"'))
    assert (
        f"{workdir}/{fields}.json:{line}:5: heartbeat.interval.ms: The 'heartbeat.interval.ms' value is invalid"
        in err
    )
    # Debezium's validation connects with the (resolved) credentials: a wrong password is rejected here
    assert f"{workdir}/{password}.json:6:5: database.hostname: Error while validating connector config" in err
    assert 'password authentication failed for user "postgres"' in err
    assert (
        f"{workdir}/{klass}.json:4:5: connector.class 'com.example.NoSuchConnector' is not installed" in err
    )
    assert (
        "it has: io.debezium.connector.mysql.MySqlConnector, io.debezium.connector.postgresql.PostgresConnector"
        in err
    )
    assert "Wr0ng-Passw0rd!" not in proc.stdout + err
    apply = cli(stack, workdir, "apply")
    assert apply.returncode == 1
    assert "Wr0ng-Passw0rd!" not in apply.stdout + apply.stderr
    for name in (fields, password, klass):
        assert get(stack, f"/connectors/{name}").status_code == 404, name


def test_unreachable_connect_is_one_line_naming_the_url(workdir: Path, unique: str) -> None:
    (workdir / "c.json").write_text(json.dumps({"name": unique, "config": file_source(unique)}))
    url = "http://127.0.0.1:9"  # discard port: connection refused
    cmd = [sys.executable, "-m", "streamer.cli", "connectors", "plan", "--dir", str(workdir)]
    started = time.monotonic()
    proc = subprocess.run(
        [*cmd, "--connect-url", url, "--connect-timeout", "2"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert proc.returncode == 1
    assert time.monotonic() - started < 30
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(
        f"streamer: error: Kafka Connect at {url} did not answer GET /connectors within 2s"
    )


# ---------------------------------------------------------------------- create, re-apply, update, prune
def test_create_reapply_update_and_prune(
    stack: Stack, workdir: Path, unique: str, cleanup, tmp_path: Path
) -> None:
    table = unique
    create_tables(stack, table)
    extra, by_hand, other = f"{unique}-extra", f"{unique}-hand", f"{unique}-other"
    cleanup(unique, prefix=unique, tables=(table,))
    for name in (extra, by_hand, other):
        cleanup(name)
    # bystanders prune must never touch: one made by hand, one applied from a directory of another name
    resp = httpx.put(
        f"{stack.settings.connect_url}/connectors/{by_hand}/config",
        json=file_source(f"{unique}-h"),
        timeout=90,
    )
    assert resp.status_code == 201, resp.text
    other_dir = tmp_path / f"{unique}-elsewhere"
    other_dir.mkdir()
    write_connector(other_dir, other, file_source(f"{unique}-o"))
    assert cli(stack, other_dir, "apply").returncode == 0
    path = write_connector(
        workdir, unique, debezium_config(stack, unique, f"public.{table}", **{"snapshot.mode": "no_data"})
    )
    extra_path = write_connector(workdir, extra, file_source(f"{unique}-x"))

    created = cli(stack, workdir, "apply", "--wait", "90")
    assert created.returncode == 0, created.stdout + created.stderr
    assert f"+ create {unique}  ({path})" in created.stdout
    assert f"+ create {extra}  ({extra_path})" in created.stdout
    # the placeholder is pushed and shown as written; Connect stores it unresolved
    assert "    + database.password: ${env:STREAMER_SOURCE_PASSWORD}" in created.stdout
    assert f"{unique}: RUNNING, 1 task(s)" in created.stdout
    stored = get(stack, f"/connectors/{unique}/config").json()
    assert stored["database.password"] == "${env:STREAMER_SOURCE_PASSWORD}"
    assert stored["streamer.scope"] == unique

    # the second apply PUTs nothing: no new config record, the same walsender serves the slot
    records, pid = config_records(stack, unique), slot_pid(stack, f"{unique}_slot")
    assert records == 1 and pid is not None
    again = cli(stack, workdir, "apply", "--wait", "30")
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"= unchanged {unique}  ({path})" in again.stdout
    assert "Plan: 0 to create, 0 to update, 2 unchanged, 0 to delete." in again.stdout
    time.sleep(2)  # a restart, had there been one, would have reconnected by now
    assert config_records(stack, unique) == records
    assert slot_pid(stack, f"{unique}_slot") == pid

    # update: the plan shows the key-level diff, apply PUTs once
    data = json.loads(path.read_text())
    data["config"]["heartbeat.interval.ms"] = "5000"
    data["config"]["snapshot.mode"] = "never"
    path.write_text(json.dumps(data, indent=2))
    plan = cli(stack, workdir, "plan")
    assert plan.returncode == 0, plan.stderr
    assert plan.stdout.splitlines() == [
        f"= unchanged {extra}  ({extra_path})",
        f"~ update {unique}  ({path})",
        "    + heartbeat.interval.ms: 5000",
        "    ~ snapshot.mode: no_data -> never",
        "Plan: 0 to create, 1 to update, 1 unchanged, 0 to delete.",
    ]
    updated = cli(stack, workdir, "apply", "--wait", "90")
    assert updated.returncode == 0, updated.stdout + updated.stderr
    assert f"~ updated {unique}" in updated.stdout
    assert get(stack, f"/connectors/{unique}/config").json()["heartbeat.interval.ms"] == "5000"
    assert config_records(stack, unique) == records + 1

    # prune: only this directory's connectors without a file
    extra_path.unlink()
    kept = cli(stack, workdir, "plan")
    assert f"have no file and are kept (--prune deletes them): {extra}" in kept.stdout
    pruned = cli(stack, workdir, "apply", "--prune", "--wait", "60")
    assert pruned.returncode == 0, pruned.stdout + pruned.stderr
    assert f"- delete {extra}  (no file; streamer.scope={unique})" in pruned.stdout
    assert f"- deleted {extra}" in pruned.stdout
    assert "Plan: 0 to create, 0 to update, 1 unchanged, 1 to delete." in pruned.stdout
    assert get(stack, f"/connectors/{extra}").status_code == 404
    for name in (unique, by_hand, other):
        assert get(stack, f"/connectors/{name}").status_code == 200, name
    assert config_records(stack, unique) == records + 1  # pruning touched nothing else


def test_status_pause_resume_restart_delete(stack: Stack, workdir: Path, unique: str, cleanup) -> None:
    cleanup(unique)
    write_connector(workdir, unique, file_source(unique))
    absent = cli(stack, workdir, "status")
    assert absent.returncode == 1
    assert f"not RUNNING: {unique}: ABSENT" in absent.stderr
    assert cli(stack, workdir, "apply", "--wait", "60").returncode == 0

    def status() -> dict[str, Any]:
        proc = cli(stack, workdir, "status", "--json")
        rows = json.loads(proc.stdout)
        assert [r["name"] for r in rows] == [unique]
        return dict(rows[0]) | {"rc": proc.returncode}

    def wait_state(state: str) -> None:
        """Until the connector and every task report ``state`` (the tasks follow the connector)."""
        deadline = time.monotonic() + 30
        while True:
            st = get(stack, f"/connectors/{unique}/status").json()
            if st["connector"]["state"] == state and all(t["state"] == state for t in st["tasks"]):
                return
            assert time.monotonic() < deadline, f"not {state} after 30 s: {st}"
            time.sleep(0.3)

    running = status()
    assert running["rc"] == 0
    assert running["state"] == "RUNNING"
    assert running["worker_id"] == running["tasks"][0]["worker_id"] != ""
    assert [t["state"] for t in running["tasks"]] == ["RUNNING"]
    assert running["topics"]["configured"] == [f"{unique}-file"]

    assert cli(stack, workdir, "pause", unique).returncode == 0
    wait_state("PAUSED")
    assert status() | {"rc": 0} == running | {
        "state": "PAUSED",
        "tasks": [running["tasks"][0] | {"state": "PAUSED"}],
    }
    waited = cli(stack, workdir, "apply", "--wait", "10")
    assert waited.returncode == 1
    assert f"connector {unique} is PAUSED" in waited.stderr
    assert cli(stack, workdir, "resume", unique).returncode == 0
    wait_state("RUNNING")

    nothing = cli(stack, workdir, "restart", unique)
    assert nothing.returncode == 0
    assert f"= nothing failed in {unique}" in nothing.stdout
    everything = cli(stack, workdir, "restart", unique, "--all")
    assert everything.returncode == 0
    assert f"~ restarting {unique}" in everything.stdout

    deleted = cli(stack, workdir, "delete", unique)
    assert deleted.returncode == 0
    assert f"- deleted {unique}" in deleted.stdout
    assert f"still defines {unique}: the next apply creates it again" in deleted.stdout
    assert get(stack, f"/connectors/{unique}").status_code == 404
    missing = cli(stack, workdir, "delete", unique)
    assert missing.returncode == 1
    assert (
        f"connector '{unique}' not found on Kafka Connect at {stack.settings.connect_url}" in missing.stderr
    )


# ---------------------------------------------------------------------- a task that fails
def test_failed_task_is_reported_with_its_trace(stack: Stack, workdir: Path, unique: str, cleanup) -> None:
    """The role can log in (so Connect's validation passes) but lacks REPLICATION: the task fails at start."""
    secret = f"Pw-{unique}-literal"
    conn = source_connection(stack)
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE ROLE \"{unique}\" LOGIN PASSWORD '{secret}'")
    finally:
        conn.close()
    cleanup(unique, prefix=unique, role=unique)
    config = debezium_config(
        stack, unique, "public.nothing_here", **{"database.user": unique, "database.password": secret}
    )
    write_connector(workdir, unique, config)
    proc = cli(stack, workdir, "apply", "--wait", "90")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "    + database.password: ****" in proc.stdout
    assert "database.password is a literal secret" in proc.stderr
    assert f"connector {unique} has failed tasks" in proc.stderr
    assert "task 0 FAILED on worker" in proc.stderr
    assert "io.debezium.DebeziumException: Creation of replication slot failed" in proc.stderr
    assert (
        "Caused by: org.postgresql.util.PSQLException: FATAL: must be superuser or replication role"
        in proc.stderr
    )
    assert "\tat io.debezium.connector.postgresql.PostgresConnectorTask" in proc.stderr  # the full trace
    assert secret not in out
    status = cli(stack, workdir, "status")
    assert status.returncode == 1
    assert (
        f"{unique} task 0 FAILED: io.debezium.DebeziumException: Creation of replication slot failed"
        in status.stderr
    )
    assert secret not in status.stdout + status.stderr


# ---------------------------------------------------------------------- adding a table
def test_adding_a_table_is_an_edit_and_an_apply(stack: Stack, workdir: Path, unique: str, cleanup) -> None:
    table_a, table_b = f"{unique}_a", f"{unique}_b"
    create_tables(stack, table_a, table_b)
    cleanup(unique, prefix=unique, tables=(table_a, table_b))
    extra = {"snapshot.mode": "no_data", "heartbeat.interval.ms": "10000"}
    path = write_connector(workdir, unique, debezium_config(stack, unique, f"public.{table_a}", **extra))
    assert cli(stack, workdir, "apply", "--wait", "90").returncode == 0

    data = json.loads(path.read_text())
    data["config"]["table.include.list"] = f"public.{table_a},public.{table_b}"
    path.write_text(json.dumps(data, indent=2))
    proc = cli(stack, workdir, "apply", "--wait", "90")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"    ~ table.include.list: public.{table_a} -> public.{table_a},public.{table_b}" in proc.stdout

    topic_b = f"{unique}.public.{table_b}"
    consumer = Consumer(kafka_consumer_config(stack, f"{unique}-g"))
    consumer.subscribe([f"^{unique}\\.public\\.{table_b}$"])
    changed = time.monotonic()
    try:
        conn = source_connection(stack)
        try:
            with conn.cursor() as cur:
                cur.execute(f"INSERT INTO public.\"{table_b}\" VALUES (1, 'one'), (2, 'two')")
                cur.execute(f"UPDATE public.\"{table_b}\" SET name = 'uno' WHERE id = 1")
        finally:
            conn.close()
        events: list[dict[str, Any]] = []
        while len(events) < 3 and time.monotonic() - changed < 45:
            msg = consumer.poll(0.5)
            if msg is None or msg.error() or msg.value() is None:
                continue
            assert msg.topic() == topic_b
            events.append(json.loads(msg.value() or b"null")["payload"])
        elapsed = time.monotonic() - changed
    finally:
        consumer.close()
    by_row: dict[int, list[tuple[str, dict[str, Any]]]] = {}
    for e in events:  # order holds per key (one key, one partition), not across partitions
        by_row.setdefault(e["after"]["id"], []).append((e["op"], e["after"]))
    assert by_row == {
        1: [("c", {"id": 1, "name": "one"}), ("u", {"id": 1, "name": "uno"})],
        2: [("c", {"id": 2, "name": "two"})],
    }, f"after {elapsed:.1f}s"
    assert elapsed < 45

    status = json.loads(cli(stack, workdir, "status", "--json").stdout)[0]
    assert topic_b in status["topics"]["configured"]
    assert status["topics"]["active"] is None or topic_b in status["topics"]["active"]
