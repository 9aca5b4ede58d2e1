"""`streamer replicate` end to end: the stack's PostgreSQL -> logical replication (pgoutput) -> target.

No Kafka. Every test compares whole target tables with the source tables (every row, every
column); each names its slots, publications and schemas uniquely and drops them afterwards.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import sqlalchemy as sa

from streamer.apply import state
from streamer.apply.schema import Router
from streamer.apply.sink import build_sink
from streamer.core.errors import (
    PublicationNotFoundError,
    ReplicationPrivilegeError,
    SlotNotFoundError,
    TableIdentityError,
)
from streamer.core.events import UNAVAILABLE, TableId, format_lsn, parse_lsn
from streamer.db import create_target_engine
from streamer.replicate import ReplicationProcess, origin_topic
from streamer.settings import load_settings
from streamer.stack.local import Stack
from streamer.stack.workload import SAMPLE_TABLES, create_sample, ddl, run_workload
from streamer.validate import compare_tables

KINDS_DDL = """
CREATE TYPE {s}.mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE {s}.kinds (
    id int PRIMARY KEY,
    b boolean, i2 smallint, i8 bigint,
    n numeric(12, 3), nv numeric, m money, f4 real, f8 double precision,
    vc varchar(20), bp char(4), t text, by bytea,
    d date, tm time, ttz timetz, ts timestamp(3), tstz timestamptz, iv interval,
    u uuid, j json, jb jsonb, e {s}.mood, ta text[], ia int4[], ea {s}.mood[]
);
"""
KINDS_ROWS = [
    "(1, true, -32768, 9223372036854775807, 123456789.123, 1.500, '-1234.56', 1.1, 0.1, 'héllo', 'ab', "
    "'quote '' and \\ backslash', '\\x00ff10', '2024-02-29', '03:04:05.123456', '10:00:00.5+05:30', "
    "'2024-01-02 03:04:05.678', '2024-01-02 03:04:05.5+02', '3 days 04:05:06.789', "
    "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{\"b\": 1, \"a\": [1, 2]}', '{\"a\": {\"b\": null}}', 'happy', "
    "'{\"a b\",NULL,\"\",\"x\\\\y\"}', '{1,NULL,3}', '{sad,ok}')",
    "(2, false, 0, 0, '0', '-1', '0', '-0.5', '1e300', '', '', '', '\\x', 'infinity', '00:00:00', "
    "'00:00:00+00', '1999-12-31 23:59:59.999', '2038-01-19 03:14:08+00', '-1 days +02:03:00', "
    "'00000000-0000-0000-0000-000000000000', '[]', '[]', 'sad', '{}', '{}', '{}')",
    "(3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, "
    "NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
    "(4, true, 1, -1, -0.001, 12345.25, '0.01', '3.4e38', '5e-324', 'x', 'abcd', "
    "repeat('long ', 2000), '\\x0102', '-infinity', '23:59:59.999999', '23:59:59-11', '2000-01-01 00:00:00', "
    "'1900-01-01 00:00:00+00', '-00:00:00.000001', 'ffffffff-ffff-ffff-ffff-ffffffffffff', 'null', '[1, \"s\"]', "
    "'ok', '{\"{}\",\"NULL\"}', '{{1,2},{3,4}}', '{happy}')",
]
# NaN, infinities and extremes of numbers and timestamps: a PostgreSQL target holds them all (SQLite has
# no NaN, keeps numerics as doubles, and the sink writes its timestamps before year 1000 unreadably)
SPECIALS_DDL = (
    "CREATE TABLE {s}.specials (id int PRIMARY KEY, n numeric(10, 2), nv numeric, f4 real, f8 double precision, "
    "d date, ts timestamp, tstz timestamptz)"
)
SPECIALS_ROWS = [
    "(1, 'NaN', 'NaN', 'NaN', 'NaN', 'infinity', 'infinity', 'infinity')",
    "(2, 'NaN', 'Infinity', 'Infinity', '-Infinity', '-infinity', '-infinity', '-infinity')",
    "(3, 1.5, '-Infinity', '-Infinity', 'Infinity', '0001-01-01', '0001-01-01 00:00:00', '0001-01-01 00:00:00+00')",
    "(4, -0.01, 123456789012345678901234567890.000000000001, 0, -0, '9999-12-31', '9999-12-31 23:59:59.999999', "
    "'9999-12-31 23:59:59.999999+00')",
]


def cmd(slot: str, publication: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "streamer.cli",
        "replicate",
        "--slot",
        slot,
        "--publication",
        publication,
        *extra,
    ]


def env_for(url: str, settings: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["STREAMER_TARGET_URL"] = url
    env["STREAMER_LOG_FORMAT"] = "json"
    env.update(settings or {})
    return env


def run(
    slot: str,
    publication: str,
    url: str,
    *extra: str,
    timeout: float = 120,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd(slot, publication, *extra),
        env=env_for(url, env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def source_conn(stack: Stack) -> Any:
    conn = psycopg2.connect(stack.settings.source_url)
    conn.autocommit = True
    return conn


def execute(stack: Stack, *statements: str) -> None:
    conn = source_conn(stack)
    try:
        with conn.cursor() as cur:
            for st in statements:
                cur.execute(st)
    finally:
        conn.close()


def slot_row(stack: Stack, slot: str) -> tuple[Any, ...] | None:
    conn = source_conn(stack)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT active, active_pid, confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
                (slot,),
            )
            row = cur.fetchone()
            return tuple(row) if row is not None else None
    finally:
        conn.close()


def wait_until(cond: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class Replication:
    """Creates what a test needs on the source and drops all of it afterwards (slots first: they pin WAL)."""

    def __init__(self, stack: Stack, unique: str) -> None:
        self.stack = stack
        self.unique = unique
        self.slots: list[str] = []
        self.publications: list[str] = []
        self.schemas: list[str] = []
        self.roles: list[str] = []
        self.procs: list[subprocess.Popen[str]] = []

    def slot(self, suffix: str = "") -> str:
        name = f"{self.unique}{suffix}"
        self.slots.append(name)
        return name

    def schema(self) -> str:
        self.schemas.append(self.unique)
        self.publications.append(self.unique)
        return self.unique

    def start(
        self, slot: str, publication: str, url: str, *extra: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            cmd(slot, publication, *extra),
            env=env_for(url, env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.procs.append(proc)
        return proc

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=30)
        conn = source_conn(self.stack)
        try:
            with conn.cursor() as cur:
                for slot in self.slots:
                    deadline = time.monotonic() + 20
                    while time.monotonic() < deadline:
                        cur.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,))
                        row = cur.fetchone()
                        if row is None:
                            break
                        if not row[0]:
                            cur.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                            break
                        time.sleep(0.2)
                for pub in self.publications:
                    cur.execute(f'DROP PUBLICATION IF EXISTS "{pub}"')
                for schema in self.schemas:
                    cur.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
                for role in self.roles:
                    cur.execute(f'DROP ROLE IF EXISTS "{role}"')
        finally:
            conn.close()
        target = create_target_engine(self.stack.settings.target_url)
        try:
            with target.begin() as tconn:
                for schema in self.schemas:
                    tconn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        finally:
            target.dispose()


@pytest.fixture
def repl(stack: Stack, unique: str) -> Iterator[Replication]:
    r = Replication(stack, unique)
    yield r
    r.cleanup()


def assert_same(stack: Stack, schema: str, url: str, tables: tuple[str, ...]) -> None:
    source = create_target_engine(stack.settings.source_url)
    target = create_target_engine(url)
    try:
        router = Router(target.dialect.name)
        for table in tables:
            route = router.route(TableId(stack.cfg.source_database, schema, table))
            diff = compare_tables(source, (schema, table), target, (route.target_schema, route.target_table))
            assert diff.source_rows > 0, table
            assert diff.equal, (
                f"{url} {table}: missing {diff.missing[:5]} extra {diff.extra[:5]} changed {diff.changed[:5]}"
            )
    finally:
        source.dispose()
        target.dispose()


def stored_lsn(url: str, group: str, slot: str) -> int:
    engine = create_target_engine(url)
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table("_streamer_offsets"):
                return 0
            return state.load_offsets(conn, group, [origin_topic(slot)]).get((origin_topic(slot), 0), 0)
    finally:
        engine.dispose()


def in_process(stack: Stack, url: str, slot: str, publication: str, **kw: Any) -> ReplicationProcess:
    settings = load_settings(env={}, overrides={"target_url": url})
    sink = build_sink(settings)
    state.upgrade(sink.engine)
    return ReplicationProcess(
        settings, sink, source_url=stack.settings.source_url, slot=slot, publication=publication, **kw
    )


# --------------------------------------------------------------------------- the workload


def test_workload_reaches_postgresql_and_sqlite(stack: Stack, repl: Replication, tmp_path: Path) -> None:
    """Inserts, updates (unchanged TOAST columns included), key updates, deletes and truncates of several
    tables, and every supported type, reach a PostgreSQL and a SQLite target equal to the source."""
    schema = repl.schema()
    s = f'"{schema}"'
    execute(stack, *ddl(schema), KINDS_DDL.format(s=s), SPECIALS_DDL.format(s=s))
    # description out of line and uncompressed: updates that leave it alone send it as 'unchanged TOAST'
    execute(stack, f"ALTER TABLE {s}.products ALTER COLUMN description SET STORAGE EXTERNAL")
    tables = (*SAMPLE_TABLES, "kinds", "specials")
    slot_pg, slot_lite = repl.slot("pg"), repl.slot("lite")
    pg_url, lite_url = stack.settings.target_url, f"sqlite:///{tmp_path / 'target.db'}"
    table_list = ",".join(f"{schema}.{t}" for t in tables)
    made = run(slot_pg, schema, pg_url, "--create", "--tables", table_list, "--max-events", "0")
    assert made.returncode == 0, made.stderr[-3000:]
    assert f"created publication {schema}" in made.stdout and "consistent point" in made.stdout
    again = run(slot_lite, schema, lite_url, "--create", "--tables", table_list, "--max-events", "0")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"publication {schema} exists" in again.stdout and f"created slot {slot_lite}" in again.stdout

    create_sample(stack.settings.source_url, schema, rows=400)
    execute(
        stack,
        *(f"INSERT INTO {s}.kinds VALUES {row}" for row in KINDS_ROWS),
        *(f"INSERT INTO {s}.specials VALUES {row}" for row in SPECIALS_ROWS),
        f"UPDATE {s}.products SET description = repeat(md5(id::text), 200) WHERE id % 10 = 0",
    )
    run_workload(stack.settings.source_url, schema, transactions=150, seed=3)
    execute(
        stack,
        # unchanged TOAST columns under the default replica identity
        f"UPDATE {s}.products SET price = price + 1 WHERE id % 10 = 0",
        f"UPDATE {s}.kinds SET b = NOT b, ia = '{{7}}' WHERE id = 4",
        # a key update, a truncate inside a transaction with later inserts, deletes
        f"UPDATE {s}.customers SET id = id + 100000 WHERE id IN (SELECT min(id) FROM {s}.customers)",
        f"BEGIN; TRUNCATE {s}.orders; INSERT INTO {s}.orders (customer_id, product_id, quantity, total, placed_at) "
        "VALUES (1, 1, 1, 9.99, '2025-01-01 00:00'); COMMIT",
        f"DELETE FROM {s}.kinds WHERE id = 3",
    )
    run_workload(stack.settings.source_url, schema, transactions=60, seed=4)

    # PostgreSQL target: in process, to look at the events themselves
    seen_unavailable: list[str] = []

    def on_batch(_result: Any, _elapsed: float, txns: Any) -> None:
        for txn in txns:
            for ev in txn.events:
                if ev.after and any(v is UNAVAILABLE for v in ev.after.values()):
                    seen_unavailable.append(ev.table.table)

    proc = in_process(stack, pg_url, slot_pg, schema, until_idle=1.5, on_batch=on_batch)
    stats = proc.run()
    proc.sink.engine.dispose()
    assert stats.events_applied > 500 and stats.skipped_transactions == 0
    assert "products" in seen_unavailable  # the TOAST path was really taken
    # SQLite target: the real CLI
    lite = run(slot_lite, schema, lite_url, "--until-idle", "2")
    assert lite.returncode == 0, lite.stderr[-3000:]
    assert_same(stack, schema, pg_url, tables)
    assert_same(stack, schema, lite_url, tables[:-1])  # specials: see SPECIALS_DDL
    # the target and the slot agree on the last transaction applied
    row = slot_row(stack, slot_pg)
    assert row is not None and not row[0]
    assert stored_lsn(pg_url, slot_pg, slot_pg) == stats.last_lsn > 0
    # a second run finds nothing new and changes nothing
    again_stats = in_process(stack, pg_url, slot_pg, schema, until_idle=1.0).run()
    assert again_stats.events_applied == 0
    assert_same(stack, schema, pg_url, tables)


# --------------------------------------------------------------------------- crash and restart


def test_kill_9_mid_stream_and_restart(stack: Stack, repl: Replication, tmp_path: Path) -> None:
    schema = repl.schema()
    execute(stack, *ddl(schema))
    slot = repl.slot()
    url = f"sqlite:///{tmp_path / 'target.db'}"
    tables = ",".join(f"{schema}.{t}" for t in SAMPLE_TABLES)
    made = run(slot, schema, url, "--create", "--tables", tables, "--max-events", "0")
    assert made.returncode == 0, made.stderr[-3000:]
    create_sample(stack.settings.source_url, schema, rows=200)
    small_batches = {"STREAMER_CONSUMER__BATCH_MAX_EVENTS": "40", "STREAMER_CONSUMER__BATCH_MAX_MS": "50"}

    done = threading.Event()

    def work() -> None:
        run_workload(stack.settings.source_url, schema, transactions=600, rate=80, seed=7)
        done.set()

    worker = threading.Thread(target=work)
    worker.start()
    try:
        killed = 0
        for _ in range(2):  # twice, each time while transactions keep arriving
            proc = repl.start(slot, schema, url, env=small_batches)
            before = stored_lsn(url, slot, slot)
            wait_until(lambda: stored_lsn(url, slot, slot) > before, 60, "batches to be applied")  # noqa: B023
            time.sleep(0.7)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            killed += 1
            assert not done.is_set(), "the workload ended before the kill: nothing was mid-stream"
        assert killed == 2
    finally:
        worker.join(timeout=120)
    final = run(slot, schema, url, "--until-idle", "2", env=small_batches)
    assert final.returncode == 0, final.stderr[-3000:]
    assert_same(stack, schema, url, SAMPLE_TABLES)
    row = slot_row(stack, slot)
    assert row is not None and not row[0]


def test_lost_replication_connection_is_reopened(stack: Stack, repl: Replication, tmp_path: Path) -> None:
    """The server ends the walsender twice mid-stream: streamer reconnects from the target's LSN, exit 0."""
    schema = repl.schema()
    execute(stack, *ddl(schema))
    slot = repl.slot()
    url = f"sqlite:///{tmp_path / 'target.db'}"
    tables = ",".join(f"{schema}.{t}" for t in SAMPLE_TABLES)
    made = run(slot, schema, url, "--create", "--tables", tables, "--max-events", "0")
    assert made.returncode == 0, made.stderr[-3000:]
    create_sample(stack.settings.source_url, schema, rows=100)
    proc = repl.start(slot, schema, url, "--until-idle", "3", env={"STREAMER_CONSUMER__BATCH_MAX_MS": "50"})
    worker = threading.Thread(
        target=run_workload,
        args=(stack.settings.source_url, schema),
        kwargs={"transactions": 300, "rate": 100},
    )
    worker.start()
    try:
        for _ in range(2):
            wait_until(lambda: (slot_row(stack, slot) or (False,))[0], 30, "the slot to be read")
            time.sleep(0.8)
            execute(
                stack,
                f"SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = '{slot}'",
            )
    finally:
        worker.join(timeout=60)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert err.count("replication connection lost, reconnecting") >= 2
    assert_same(stack, schema, url, SAMPLE_TABLES)


# --------------------------------------------------------------------------- atomic transactions


def test_transaction_spanning_tables_lands_atomically(stack: Stack, repl: Replication) -> None:
    """Transfers between two tables: the target never shows a half-applied one, even with batches of 3 events
    and a transaction large enough to be streamed in progress (protocol 2)."""
    schema = repl.schema()
    s = f'"{schema}"'
    execute(
        stack,
        f"CREATE SCHEMA {s}",
        f"CREATE TABLE {s}.acc_a (id int PRIMARY KEY, v bigint NOT NULL)",
        f"CREATE TABLE {s}.acc_b (id int PRIMARY KEY, v bigint NOT NULL)",
        f"CREATE TABLE {s}.bulk (id int PRIMARY KEY, note text)",
    )
    slot = repl.slot()
    url = stack.settings.target_url
    made = run(
        slot,
        schema,
        url,
        "--create",
        "--tables",
        f"{schema}.acc_a,{schema}.acc_b,{schema}.bulk",
        "--max-events",
        "0",
    )
    assert made.returncode == 0, made.stderr[-3000:]
    execute(
        stack,
        f"BEGIN; INSERT INTO {s}.acc_a SELECT g, 1000 FROM generate_series(1, 10) g; "
        f"INSERT INTO {s}.acc_b SELECT g, 0 FROM generate_series(1, 10) g; COMMIT",
    )
    # logical_decoding_work_mem at its minimum: the bulk transaction is streamed before it commits
    source = stack.settings.source_url + "?options=-c%20logical_decoding_work_mem%3D64kB"
    proc = repl.start(
        slot,
        schema,
        url,
        "--source",
        source,
        "--until-idle",
        "3",
        env={"STREAMER_CONSUMER__BATCH_MAX_EVENTS": "3", "STREAMER_CONSUMER__BATCH_MAX_MS": "20"},
    )
    target = create_target_engine(url)
    observations: list[tuple[int, int]] = []
    stop = threading.Event()

    def watch() -> None:
        q = sa.text(
            f"SELECT (SELECT count(*) FROM {s}.acc_a) + (SELECT count(*) FROM {s}.acc_b), "
            f"(SELECT coalesce(sum(v), 0) FROM {s}.acc_a) + (SELECT coalesce(sum(v), 0) FROM {s}.acc_b)"
        )
        with target.connect() as conn:
            while not stop.is_set():
                try:
                    n, total = conn.execute(q).one()
                except sa.exc.ProgrammingError:  # tables not created yet
                    conn.rollback()
                    time.sleep(0.01)
                    continue
                conn.rollback()
                observations.append((int(n), int(total)))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        conn = psycopg2.connect(stack.settings.source_url)
        try:
            with conn.cursor() as cur:
                for i in range(300):
                    with conn:
                        cur.execute(f"UPDATE {s}.acc_a SET v = v - %s WHERE id = %s", (i % 7 + 1, i % 10 + 1))
                        cur.execute(
                            f"UPDATE {s}.acc_b SET v = v + %s WHERE id = %s", (i % 7 + 1, (i * 3) % 10 + 1)
                        )
                    if i == 150:  # one large transfer, with a rolled-back savepoint, streamed in progress
                        with conn:
                            cur.execute(f"UPDATE {s}.acc_a SET v = v - 5")
                            cur.execute(
                                f"INSERT INTO {s}.bulk SELECT g, repeat('x', 200) FROM generate_series(1, 3000) g"
                            )
                            cur.execute("SAVEPOINT sp")
                            cur.execute(
                                f"INSERT INTO {s}.bulk SELECT g, 'gone' FROM generate_series(3001, 5000) g"
                            )
                            cur.execute("ROLLBACK TO SAVEPOINT sp")
                            cur.execute(f"UPDATE {s}.acc_b SET v = v + 5")
                    time.sleep(0.004)
        finally:
            conn.close()
        out, err = proc.communicate(timeout=120)
    finally:
        stop.set()
        watcher.join(timeout=30)
        target.dispose()
    assert proc.returncode == 0, err[-3000:]
    complete = [total for n, total in observations if n == 20]
    assert len(complete) > 50, f"too few observations of the target while it was written: {len(complete)}"
    assert all(total == 10_000 for total in complete), sorted(set(complete))
    streamed = re.search(r"\((\d+) transactions streamed in progress\)", err)
    assert streamed is not None and int(streamed.group(1)) >= 1, err[
        -1000:
    ]  # the bulk one came in stream blocks
    assert_same(stack, schema, url, ("acc_a", "acc_b", "bulk"))


# --------------------------------------------------------------------------- named errors


def test_slot_in_use_then_sigterm_exits_cleanly(stack: Stack, repl: Replication, tmp_path: Path) -> None:
    schema = repl.schema()
    execute(stack, f'CREATE SCHEMA "{schema}"', f'CREATE TABLE "{schema}".t (id int PRIMARY KEY, v text)')
    slot = repl.slot()
    url = f"sqlite:///{tmp_path / 'target.db'}"
    holder = repl.start(slot, schema, url, "--create", "--tables", f"{schema}.t")
    wait_until(lambda: (slot_row(stack, slot) or (False,))[0], 60, "the slot to be active")
    execute(stack, f"INSERT INTO \"{schema}\".t VALUES (1, 'a'), (2, 'b')")
    wait_until(lambda: stored_lsn(url, slot, slot) > 0, 30, "the insert to be applied")
    pid = slot_row(stack, slot)[1]  # type: ignore[index]
    second = run(slot, schema, url, timeout=60)
    assert second.returncode == 3  # SlotInUseError: unavailable
    assert f"replication slot '{slot}' is in use by another process (active_pid {pid})" in second.stderr
    holder.send_signal(signal.SIGTERM)
    out, err = holder.communicate(timeout=30)
    assert holder.returncode == 0, err[-3000:]
    assert "applied 2 events" in err
    assert_same(stack, schema, url, ("t",))


def test_setup_errors_are_named(stack: Stack, repl: Replication, tmp_path: Path) -> None:
    schema = repl.schema()
    s = f'"{schema}"'
    execute(
        stack,
        f"CREATE SCHEMA {s}",
        f"CREATE TABLE {s}.nokey (a int, b text)",
        f"CREATE TABLE {s}.ok (id int PRIMARY KEY)",
    )
    url = f"sqlite:///{tmp_path / 'target.db'}"
    slot = repl.slot()
    # a table without primary key nor replica identity index: refused before any slot exists
    res = run(slot, schema, url, "--create", "--tables", f"{schema}.ok,{schema}.nokey")
    assert res.returncode == 2  # TableIdentityError: the source is not set up
    assert f"{schema}.nokey has no primary key and no replica identity index" in res.stderr
    assert slot_row(stack, slot) is None
    with pytest.raises(TableIdentityError, match="nokey"):
        in_process(stack, url, slot, schema).run()
    # the same table with a replica identity index is accepted
    execute(
        stack, f"ALTER TABLE {s}.nokey ALTER COLUMN a SET NOT NULL", f"CREATE UNIQUE INDEX ON {s}.nokey (a)"
    )
    execute(stack, f"ALTER TABLE {s}.nokey REPLICA IDENTITY USING INDEX nokey_a_idx")
    with pytest.raises(SlotNotFoundError, match="--create"):
        in_process(stack, url, slot, schema).run()
    with pytest.raises(PublicationNotFoundError, match="does not exist"):
        in_process(stack, url, slot, f"{schema}_nopub").run()
    # a role without the REPLICATION attribute
    role = f"{schema}_role"
    repl.roles.append(role)
    execute(stack, f"CREATE ROLE \"{role}\" LOGIN PASSWORD 'pw'")
    url_role = stack.settings.source_url.replace("postgres:postgres@", f"{role}:pw@")
    settings = load_settings(env={}, overrides={"target_url": url})
    sink = build_sink(settings)
    try:
        with pytest.raises(ReplicationPrivilegeError, match="REPLICATION attribute"):
            ReplicationProcess(settings, sink, source_url=url_role, slot=slot, publication=schema).run()
    finally:
        sink.engine.dispose()


# --------------------------------------------------------------------------- positions and error policies


def test_transactions_the_target_already_has_are_skipped(
    stack: Stack, repl: Replication, tmp_path: Path
) -> None:
    """A slot behind the target (crash between the target commit and the feedback) resends transactions:
    those not beyond the LSN in _streamer_offsets are skipped, the rest applied."""
    schema = repl.schema()
    s = f'"{schema}"'
    execute(stack, f"CREATE SCHEMA {s}", f"CREATE TABLE {s}.t (id int PRIMARY KEY, v text)")
    ahead, behind = repl.slot("a"), repl.slot("b")
    url = f"sqlite:///{tmp_path / 'target.db'}"
    for slot in (ahead, behind):  # two slots at the same point of the stream
        in_process(stack, url, slot, schema, create=True, tables=[f"{schema}.t"], max_events=0).run()
    for i in range(5):
        execute(stack, f"INSERT INTO {s}.t VALUES ({i}, 'v{i}')")
    first = in_process(stack, url, ahead, schema, until_idle=1.0).run()
    assert first.transactions == 5
    # the target now holds for `behind` what `ahead` applied: as if `behind` had crashed before its feedback
    engine = create_target_engine(url)
    with engine.begin() as conn:
        state.save_offsets(conn, behind, {(origin_topic(behind), 0): first.last_lsn})
    engine.dispose()
    execute(stack, f"UPDATE {s}.t SET v = 'new' WHERE id = 0")
    second = in_process(stack, url, behind, schema, until_idle=1.0).run()
    # the server skips what ends before the start LSN (the target's); streamer skips what it still sends
    assert (second.transactions, second.events_applied) == (1, 1)
    assert second.skipped_transactions in (0, 5)
    assert second.last_lsn > first.last_lsn
    row = slot_row(stack, behind)
    assert row is not None and parse_lsn(row[2]) >= second.last_lsn  # confirmed what the target holds
    assert_same(stack, schema, url, ("t",))


def test_error_policies_stop_and_dlq(stack: Stack, repl: Replication, tmp_path: Path) -> None:
    schema = repl.schema()
    s = f'"{schema}"'
    execute(stack, f"CREATE SCHEMA {s}", f"CREATE TABLE {s}.t (id int PRIMARY KEY, v int)")
    # a SQLite target whose table rejects v >= 100 (see the report: the PostgreSQL target's COPY path
    # raises errors the sink cannot yet pin on one event)
    url = f"sqlite:///{tmp_path / 'target.db'}"
    target = create_target_engine(url)
    with target.begin() as conn:
        conn.execute(
            sa.text(
                f'CREATE TABLE "{schema}_t" (id int PRIMARY KEY, v int CHECK (v < 100), _streamer_version varchar(40))'
            )
        )
    slot = repl.slot()
    made = run(slot, schema, url, "--create", "--tables", f"{schema}.t", "--max-events", "0")
    assert made.returncode == 0, made.stderr[-3000:]
    execute(
        stack,
        f"INSERT INTO {s}.t VALUES (1, 1)",
        f"INSERT INTO {s}.t VALUES (2, 500)",
        f"INSERT INTO {s}.t VALUES (3, 3)",
    )
    stopped = run(slot, schema, url, "--until-idle", "1")
    assert stopped.returncode == 1
    ours = [ln for ln in stopped.stderr.splitlines() if ln.startswith("streamer: ")]  # issue 16: one line
    assert len(ours) == 1 and ours[0].startswith("streamer: stopped on a record: change at LSN ")
    assert not any(ln.startswith("Traceback") for ln in stopped.stderr.splitlines())
    named = re.search(r"change at LSN ([0-9A-F]+/[0-9A-F]+) cannot be applied: (\S+) \(c\)", stopped.stderr)
    assert named is not None and named.group(2) == f"{schema}.t", stopped.stderr[-2000:]
    assert "CHECK constraint failed" in stopped.stderr
    with target.connect() as conn:  # nothing from the failing change on was committed
        rows = conn.execute(sa.text(f'SELECT id, v FROM "{schema}_t" ORDER BY id')).all()
        assert [tuple(r) for r in rows] in ([], [(1, 1)])
    refused = run(slot, schema, url, "--error-policy", "dlq")
    assert refused.returncode == 2 and "--dlq-file" in refused.stderr  # bad settings
    dlq = tmp_path / "dead.jsonl"
    lettered = run(slot, schema, url, "--until-idle", "1", "--error-policy", "dlq", "--dlq-file", str(dlq))
    assert lettered.returncode == 0, lettered.stderr[-3000:]
    letters = [json.loads(line) for line in dlq.read_text().splitlines()]
    assert len(letters) == 1
    assert letters[0]["table"] == f"{schema}.t" and letters[0]["op"] == "c" and letters[0]["key"] == {"id": 2}
    assert letters[0]["after"] == {"id": 2, "v": 500} and letters[0]["xid"]
    assert letters[0]["lsn"] == named.group(1)  # the change the stop policy named
    with target.connect() as conn:
        rows = conn.execute(sa.text(f'SELECT id, v FROM "{schema}_t" ORDER BY id')).all()
    target.dispose()
    assert [tuple(r) for r in rows] == [(1, 1), (3, 3)]
    # the position moved past the dead letter: nothing is applied or dead-lettered twice
    again = run(slot, schema, url, "--until-idle", "1", "--error-policy", "dlq", "--dlq-file", str(dlq))
    assert again.returncode == 0 and len(dlq.read_text().splitlines()) == 1


def test_stream_waits_while_streamer_load_writes_a_table(
    stack: Stack, repl: Replication, tmp_path: Path
) -> None:
    """While `streamer load` marks a table loading, its changes are held back (then applied)."""
    schema = repl.schema()
    s = f'"{schema}"'
    execute(stack, f"CREATE SCHEMA {s}", f"CREATE TABLE {s}.t (id int PRIMARY KEY, v text)")
    slot = repl.slot()
    url = f"sqlite:///{tmp_path / 'target.db'}"
    in_process(stack, url, slot, schema, create=True, tables=[f"{schema}.t"], max_events=0).run()
    engine = create_target_engine(url)
    state.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(
            state.loads_table.insert().values(
                table_name=f"{schema}_t",
                source_table=f"{schema}.t",
                status="loading",
                floor_version="",
                snapshot_version="",
                rows_loaded=0,
                started_at=dt.datetime.now(),
            )
        )
    execute(stack, f"INSERT INTO {s}.t VALUES (1, 'a'), (2, 'b')", f"DELETE FROM {s}.t WHERE id = 2")
    proc = in_process(stack, url, slot, schema, until_idle=1.0)
    thread = threading.Thread(target=proc.run)
    thread.start()
    try:
        time.sleep(3)
        assert thread.is_alive() and proc.stats.events_applied == 0
        assert stored_lsn(url, slot, slot) == 0
    finally:
        with engine.begin() as conn:
            conn.execute(sa.update(state.loads_table).values(status="done"))
        thread.join(timeout=30)
        engine.dispose()
    assert proc.stats.events_applied == 3
    assert_same(stack, schema, url, ("t",))


def test_initial_load_and_stream_join_exactly(stack: Stack, repl: Replication) -> None:
    """Rows written before the slot come from `streamer load`, run while a workload changes them; the
    stream brings the rest: the target ends equal to the source."""
    schema = repl.schema()
    create_sample(stack.settings.source_url, schema, rows=600)  # before the slot: only the load has these
    slot = repl.slot()
    url = stack.settings.target_url
    tables = ",".join(f"{schema}.{t}" for t in SAMPLE_TABLES)
    made = run(slot, schema, url, "--create", "--tables", tables, "--max-events", "0")
    assert made.returncode == 0, made.stderr[-3000:]
    assert "restart LSN" in made.stdout
    worker = threading.Thread(
        target=run_workload,
        args=(stack.settings.source_url, schema),
        kwargs={"transactions": 250, "rate": 60},
    )
    worker.start()
    try:
        streaming = repl.start(slot, schema, url, "--until-idle", "3")
        time.sleep(1.0)
        load = subprocess.run(
            [sys.executable, "-m", "streamer.cli", "load", *(f"--table={schema}.{t}" for t in SAMPLE_TABLES)],
            env=env_for(url),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert load.returncode == 0, load.stderr[-3000:]
    finally:
        worker.join(timeout=60)
    out, err = streaming.communicate(timeout=120)
    assert streaming.returncode == 0, err[-3000:]
    assert_same(stack, schema, url, SAMPLE_TABLES)


# --------------------------------------------------------------------------- feedback never passes the target

# per session of `streamer replicate` (the catalog connection reads wal_sender_timeout there too): streaming
# of in-progress transactions from 64 kB of decoded changes, and feedback every 3 s
SMALL_DECODING = "options=-c%20logical_decoding_work_mem%3D64kB%20-c%20wal_sender_timeout%3D6s"
ROW_TEXT = (
    "repeat('x', 200)"  # a row of `big` takes ~340 bytes of the 64 kB in the walsender's reorder buffer
)


def walsender(stack: Stack, slot: str) -> tuple[Any, ...] | None:
    conn = source_conn(stack)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT sent_lsn::text, reply_time FROM pg_stat_replication WHERE application_name = %s",
                (f"streamer-replicate-{slot}",),
            )
            row = cur.fetchone()
            return tuple(row) if row is not None else None
    finally:
        conn.close()


def current_lsn(stack: Stack) -> int:
    conn = source_conn(stack)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_current_wal_lsn()::text")
            return parse_lsn(cur.fetchone()[0])
    finally:
        conn.close()


def test_feedback_never_confirms_a_transaction_still_in_the_pending_batch(
    stack: Stack, repl: Replication, tmp_path: Path
) -> None:
    """A committed transaction waits in the open batch while the server streams a chunk of a large
    in-progress transaction whose changes all lie before the last confirmed LSN. psycopg2 (2.9) would then
    take the next keep-alive's position as flushed and report it: the slot passed the waiting transaction
    and, after kill -9, it was never sent again. The slot must stay at what the target committed."""
    schema = repl.schema()
    s = f'"{schema}"'
    execute(
        stack,
        f"CREATE SCHEMA {s}",
        f"CREATE TABLE {s}.big (id int PRIMARY KEY, v text)",
        f"CREATE TABLE {s}.small (id int PRIMARY KEY, v text)",
    )
    slot = repl.slot()
    url = f"sqlite:///{tmp_path / 'target.db'}"
    made = run(slot, schema, url, "--create", "--tables", f"{schema}.big,{schema}.small", "--max-events", "0")
    assert made.returncode == 0, made.stderr[-3000:]
    source = f"{stack.settings.source_url}?{SMALL_DECODING}"
    held_open = {"STREAMER_CONSUMER__BATCH_MAX_EVENTS": "5", "STREAMER_CONSUMER__BATCH_MAX_MS": "600000"}
    proc = repl.start(slot, schema, url, "--source", source, env=held_open)
    wait_until(lambda: walsender(stack, slot) is not None, 60, "the walsender of the slot")
    b1, b2 = source_conn(stack), source_conn(stack)
    b1.autocommit = b2.autocommit = False
    try:
        # B1: 130 rows (~44 kB) stay in the reorder buffer, below the limit: nothing streamed yet
        with b1.cursor() as cur:
            cur.execute(f"INSERT INTO {s}.big SELECT g, {ROW_TEXT} FROM generate_series(1, 130) g")
        # T0: 5 events close a batch at once: the target holds it and the slot is confirmed at its end E0
        execute(stack, f"INSERT INTO {s}.small SELECT g, 't0' FROM generate_series(1, 5) g")
        wait_until(lambda: stored_lsn(url, slot, slot) > 0, 60, "T0 to be applied")
        e0 = stored_lsn(url, slot, slot)
        # T1: one event, committed, waits in the open batch (batch_max_ms 10 min)
        execute(stack, f"INSERT INTO {s}.small VALUES (6, 't1')")
        e1 = current_lsn(stack)
        # B2: its changes push the buffer past 64 kB: the largest transaction, B1, is streamed, every change
        # of that chunk before E0; then the walsender, caught up, sends keep-alives past T1
        with b2.cursor() as cur:
            cur.execute(f"INSERT INTO {s}.big SELECT g, {ROW_TEXT} FROM generate_series(1001, 1090) g")
        end = current_lsn(stack)
        wait_until(
            lambda: parse_lsn((walsender(stack, slot) or ("0/0",))[0]) >= end, 60, "the walsender to catch up"
        )
        # two feedback intervals (3 s) after that: psycopg2's own reports would have been sent by then
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            confirmed = parse_lsn((slot_row(stack, slot) or (None, None, "0/0"))[2])
            if confirmed > e0:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        slot_confirmed = parse_lsn((slot_row(stack, slot) or (None, None, "0/0"))[2])
        target_lsn = stored_lsn(url, slot, slot)
        conn = source_conn(stack)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT stream_txns FROM pg_stat_replication_slots WHERE slot_name = %s", (slot,))
                streamed = cur.fetchone()
        finally:
            conn.close()
        assert streamed is not None and streamed[0] >= 1, "B1 was not streamed: the case was not built"
        with b1.cursor() as cur:
            cur.execute(f"UPDATE {s}.big SET v = 'b1' WHERE id <= 130")
        b1.commit()
        b2.commit()
    finally:
        b1.close()
        b2.close()
    final = run(slot, schema, url, "--until-idle", "2")
    assert final.returncode == 0, final.stderr[-3000:]
    assert_same(stack, schema, url, ("big", "small"))
    # the slot never passed what the target held (T1 is after E0 and was not in the target at the kill)
    assert target_lsn == e0 < e1
    assert slot_confirmed <= target_lsn


def test_slot_ahead_of_the_target_stops_with_both_lsns(
    stack: Stack, repl: Replication, tmp_path: Path
) -> None:
    """A slot confirmed beyond the target's position (here advanced by hand over a published change) would
    never send that change again: replicate stops at start with SlotAheadError naming both LSNs, and the
    target is left as it was."""
    schema = repl.schema()
    s = f'"{schema}"'
    execute(stack, f"CREATE SCHEMA {s}", f"CREATE TABLE {s}.t (id int PRIMARY KEY, v text)")
    slot = repl.slot()
    url = f"sqlite:///{tmp_path / 'target.db'}"
    made = run(slot, schema, url, "--create", "--tables", f"{schema}.t", "--max-events", "0")
    assert made.returncode == 0, made.stderr[-3000:]
    execute(stack, f"INSERT INTO {s}.t VALUES (1, 'a')")
    first = run(slot, schema, url, "--until-idle", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    target_lsn = stored_lsn(url, slot, slot)
    assert target_lsn > 0
    execute(stack, f"INSERT INTO {s}.t VALUES (2, 'passed over')")
    conn = source_conn(stack)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_replication_slot_advance(%s, pg_current_wal_lsn())::text", (slot,))
    finally:
        conn.close()
    row = slot_row(stack, slot)
    assert row is not None
    slot_lsn = parse_lsn(row[2])
    assert slot_lsn > target_lsn
    again = run(slot, schema, url, "--until-idle", "1")
    assert again.returncode == 1
    assert f"confirmed up to LSN {format_lsn(slot_lsn)}" in again.stderr
    assert f"beyond the target's position {format_lsn(target_lsn)}" in again.stderr
    assert stored_lsn(url, slot, slot) == target_lsn


def test_idle_stream_moves_the_slot_and_the_target_together(
    stack: Stack, repl: Replication, tmp_path: Path
) -> None:
    """Only unpublished tables change: the keep-alive position is written to the target, then confirmed,
    so the slot does not pin WAL and is never ahead of the target; a restart goes on from there."""
    schema = repl.schema()
    s = f'"{schema}"'
    execute(
        stack,
        f"CREATE SCHEMA {s}",
        f"CREATE TABLE {s}.t (id int PRIMARY KEY, v text)",
        f"CREATE TABLE {s}.other (id int PRIMARY KEY, v text)",
    )
    slot = repl.slot()
    url = f"sqlite:///{tmp_path / 'target.db'}"
    made = run(slot, schema, url, "--create", "--tables", f"{schema}.t", "--max-events", "0")
    assert made.returncode == 0, made.stderr[-3000:]
    execute(stack, f"INSERT INTO {s}.t VALUES (1, 'a')")
    source = f"{stack.settings.source_url}?{SMALL_DECODING}"
    proc = repl.start(slot, schema, url, "--source", source)
    wait_until(lambda: stored_lsn(url, slot, slot) > 0, 60, "the insert to be applied")
    applied = stored_lsn(url, slot, slot)
    execute(stack, *(f"INSERT INTO {s}.other VALUES ({i}, 'unpublished')" for i in range(20)))
    moved = current_lsn(stack)
    # both positions only grow and the slot is read first: slot <= target holds at every look
    deadline = time.monotonic() + 60
    while True:
        row = slot_row(stack, slot)
        assert row is not None
        slot_lsn, target_lsn = parse_lsn(row[2]), stored_lsn(url, slot, slot)
        assert slot_lsn <= target_lsn, f"slot {format_lsn(slot_lsn)} ahead of target {format_lsn(target_lsn)}"
        if target_lsn >= moved and slot_lsn > applied:
            break
        assert time.monotonic() < deadline, "timed out waiting for the idle position to reach target and slot"
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    execute(stack, f"INSERT INTO {s}.t VALUES (2, 'b')")
    final = run(slot, schema, url, "--until-idle", "2")
    assert final.returncode == 0, final.stderr[-3000:]
    assert_same(stack, schema, url, ("t",))
