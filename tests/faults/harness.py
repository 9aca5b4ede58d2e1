"""The fault matrix's harness: a seeded live workload, consumer subprocesses, faults, drain, whole-table equality.

Pieces, each usable on its own (the scenarios in this package and ``python -m tests.faults.chaos``):

* :class:`Workload`: three tables (``alpha``, ``beta``, ``gamma``) in a schema of the source
  PostgreSQL, with int, text, numeric, timestamptz, jsonb columns and a ``big`` text column whose
  values are larger than 2 kB and stored out of line (``STORAGE EXTERNAL``): an update that leaves
  ``big`` alone makes Debezium send the unavailable-value placeholder. REPLICA IDENTITY is the
  default. Transactions of inserts, updates (with and without ``big``), deletes and primary-key
  updates (``UPDATE ... SET id = new``), chosen by a seeded RNG (the seed is printed), for N
  transactions or T seconds, in the caller's thread or a background thread.
* :class:`ConsumerProc`: one ``streamer consume`` subprocess (settings through the environment,
  output in a log file) with the faults a process can suffer: kill -9, SIGSTOP/SIGCONT, SIGTERM.
* :class:`PrivatePostgres`: a PostgreSQL cluster of the test's own on a free port, which the test
  may stop, crash and start (the shared stack's parts are never restarted).
* :func:`drain_and_compare`: runs ``streamer consume --until-idle`` in the group until the target
  equals the source or a deadline passes, then asserts whole-table equality twice: through
  :func:`streamer.validate.compare_tables` and through a direct comparison of fetched rows that
  names the differing keys and columns.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import psycopg2
import psycopg2.extras
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from streamer.apply.schema import Router
from streamer.core.events import TableId
from streamer.db import create_target_engine
from streamer.stack.local import reachable_by_postgres
from streamer.validate import compare_tables, describe, normalize

TABLES = ("alpha", "beta", "gamma")
VERSION_COLUMN = "_streamer_version"
PG_BINDIR = Path("/usr/lib/postgresql/15/bin")


def say(msg: str) -> None:
    """Progress on stderr (pytest shows it for a failing test; the chaos runner shows it always)."""
    print(f"[faults {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(cond: Callable[[], bool], timeout: float, what: str, every: float = 0.2) -> None:
    """Poll ``cond`` until it is true; AssertionError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


# ---------------------------------------------------------------- workload
@dataclasses.dataclass
class WorkloadStats:
    transactions: int = 0
    inserts: int = 0
    updates: int = 0
    toast_kept: int = 0  # updates that left ``big`` unchanged (Debezium sends the placeholder)
    deletes: int = 0
    key_updates: int = 0

    def __str__(self) -> str:
        return (
            f"{self.transactions} tx: {self.inserts} inserts, {self.updates} updates "
            f"({self.toast_kept} leaving the TOAST column unchanged), {self.deletes} deletes, "
            f"{self.key_updates} key updates"
        )


def _big(rng: random.Random) -> str:
    """A value stored out of line: > 2 kB, random, not compressed (the column is STORAGE EXTERNAL)."""
    return "".join(
        rng.choice("abcdefghijklmnopqrstuvwxyz0123456789 ") for _ in range(rng.randrange(2500, 4000))
    )


class Workload:
    """Three tables in ``schema`` of the source and a seeded random workload against them.

    ``key_updates_keep_toast``: whether a primary-key update may leave ``big`` unchanged (then the
    new key's change event carries the unavailable placeholder for a value the target never had
    under that key). Off by default; the scenario of that case turns it on.
    """

    def __init__(
        self,
        dsn: str,
        schema: str,
        seed: int | None = None,
        *,
        key_updates_keep_toast: bool = False,
        big_not_null: bool = False,
    ) -> None:
        self.dsn = dsn
        self.schema = schema
        self.seed = seed if seed is not None else random.randrange(2**31)
        self.rng = random.Random(self.seed)
        self.key_updates_keep_toast = key_updates_keep_toast
        self.big_not_null = big_not_null
        self.ids: dict[str, list[int]] = {t: [] for t in TABLES}
        self.next_id: dict[str, int] = {t: 1 for t in TABLES}
        self.stats = WorkloadStats()
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        say(f"workload {schema}: seed {self.seed}")

    @property
    def qualified(self) -> list[str]:
        return [f"{self.schema}.{t}" for t in TABLES]

    def connect(self) -> Any:
        conn = psycopg2.connect(self.dsn)
        conn.autocommit = False
        return conn

    def create(self, rows: int = 200) -> None:
        """Create the schema and tables and insert ``rows`` rows into each (one transaction per table)."""
        s = f'"{self.schema}"'
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
                for t in TABLES:
                    cur.execute(
                        f"""CREATE TABLE {s}."{t}" (
                            id integer PRIMARY KEY,
                            n integer NOT NULL,
                            label text,
                            amount numeric(12, 2),
                            at timestamptz,
                            doc jsonb,
                            big text{" NOT NULL" if self.big_not_null else ""}
                        )"""
                    )
                    cur.execute(f'ALTER TABLE {s}."{t}" ALTER COLUMN big SET STORAGE EXTERNAL')
            conn.commit()
            for t in TABLES:
                with conn.cursor() as cur:
                    values = [self._new_row(t) for _ in range(rows)]
                    psycopg2.extras.execute_values(
                        cur, f'INSERT INTO {s}."{t}" (id, n, label, amount, at, doc, big) VALUES %s', values
                    )
                conn.commit()
        finally:
            conn.close()

    def drop(self) -> None:
        conn = psycopg2.connect(self.dsn)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        finally:
            conn.close()

    def _new_id(self, table: str) -> int:
        i = self.next_id[table]
        self.next_id[table] = i + 1
        return i

    def _new_row(self, table: str) -> tuple[Any, ...]:
        rng = self.rng
        i = self._new_id(table)
        self.ids[table].append(i)
        return (i, *self._values(), _big(rng) if self.big_not_null or rng.random() < 0.6 else None)

    def _values(self) -> tuple[Any, ...]:
        rng = self.rng
        at = dt.datetime(2020, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=rng.randrange(2 * 10**14))
        return (
            rng.randrange(-(10**6), 10**6),
            rng.choice([None, f"label {rng.randrange(10**6)}", "ünïcødé ✓", ""]),
            f"{rng.randrange(-(10**8), 10**8) / 100:.2f}" if rng.random() < 0.9 else None,
            at if rng.random() < 0.9 else None,
            psycopg2.extras.Json({"k": rng.randrange(100), "tags": ["x", "y"][: rng.randrange(3)]})
            if rng.random() < 0.9
            else None,
        )

    def _operation(self, cur: Any) -> None:
        rng = self.rng
        t = rng.choice(TABLES)
        q = f'"{self.schema}"."{t}"'
        ids = self.ids[t]
        r = rng.random()
        if r < 0.3 or len(ids) < 10:
            cur.execute(
                f"INSERT INTO {q} (id, n, label, amount, at, doc, big) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                self._new_row(t),
            )
            self.stats.inserts += 1
        elif r < 0.7:
            i = rng.choice(ids)
            n, label, amount, at, doc = self._values()
            if rng.random() < 0.6:  # big left unchanged: the placeholder when it is out of line
                cur.execute(
                    f"UPDATE {q} SET n = %s, label = %s, amount = %s, at = %s, doc = %s WHERE id = %s",
                    (n, label, amount, at, doc, i),
                )
                self.stats.toast_kept += 1
            else:
                big = _big(rng) if self.big_not_null or rng.random() < 0.8 else None
                cur.execute(
                    f"UPDATE {q} SET n = %s, label = %s, amount = %s, at = %s, doc = %s, big = %s WHERE id = %s",
                    (n, label, amount, at, doc, big, i),
                )
            self.stats.updates += 1
        elif r < 0.85:
            i = ids.pop(rng.randrange(len(ids)))
            cur.execute(f"DELETE FROM {q} WHERE id = %s", (i,))
            self.stats.deletes += 1
        else:
            pos = rng.randrange(len(ids))
            old, new = ids[pos], self._new_id(t)
            ids[pos] = new
            if self.key_updates_keep_toast and rng.random() < 0.5:
                cur.execute(f"UPDATE {q} SET id = %s, n = n + 1 WHERE id = %s", (new, old))
            else:
                cur.execute(
                    f"UPDATE {q} SET id = %s, n = n + 1, big = %s WHERE id = %s", (new, _big(rng), old)
                )
            self.stats.key_updates += 1

    def big_transaction(self, operations: int, halfway: Callable[[], None] | None = None) -> None:
        """One transaction of ``operations`` operations; ``halfway()`` is called with it still open."""
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                for i in range(operations):
                    self._operation(cur)
                    if halfway is not None and i == operations // 2:
                        halfway()
            conn.commit()
            self.stats.transactions += 1
        finally:
            conn.close()

    def run(
        self,
        transactions: int | None = None,
        seconds: float | None = None,
        rate: float = 40.0,
        stop: Callable[[], bool] | None = None,
    ) -> WorkloadStats:
        """Run transactions of 1-4 operations (possibly across tables) at about ``rate`` per second.

        Ends after ``transactions`` transactions, ``seconds`` seconds, or when ``stop()`` is true,
        whichever comes first (at least one bound must be given).
        """
        if transactions is None and seconds is None and stop is None:
            raise ValueError("an unbounded workload: give transactions, seconds or stop")
        end = time.monotonic() + seconds if seconds is not None else None
        conn = self.connect()
        done = 0
        try:
            while True:
                if transactions is not None and done >= transactions:
                    break
                if end is not None and time.monotonic() >= end:
                    break
                if stop is not None and stop():
                    break
                started = time.monotonic()
                with conn.cursor() as cur:
                    for _ in range(self.rng.randrange(1, 5)):
                        self._operation(cur)
                conn.commit()
                done += 1
                self.stats.transactions += 1
                pause = 1.0 / rate - (time.monotonic() - started)
                if pause > 0:
                    time.sleep(pause)
        finally:
            conn.close()
        return self.stats

    def start(
        self, transactions: int | None = None, seconds: float | None = None, rate: float = 40.0
    ) -> None:
        """Run :meth:`run` in a background thread (until its bound, or :meth:`stop`)."""

        def body() -> None:
            try:
                self.run(transactions, seconds, rate, stop=self._stop.is_set)
            except BaseException as exc:  # re-raised by join()
                self.error = exc

        self._stop.clear()
        self._thread = threading.Thread(target=body, name=f"workload-{self.schema}", daemon=True)
        self._thread.start()

    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float = 600.0) -> WorkloadStats:
        """Wait for the background run to end; re-raises its error."""
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise AssertionError(f"workload {self.schema} did not end within {timeout}s")
            self._thread = None
        if self.error is not None:
            raise self.error
        say(f"workload {self.schema} done: {self.stats}")
        return self.stats


# ---------------------------------------------------------------- consumers
def topics_regex(prefix: str, schema: str) -> str:
    return rf"^{prefix}\.{schema}\.[^.]+$"


def streamer_env(url: str, **settings: str) -> dict[str, str]:
    env = dict(os.environ)
    env["STREAMER_TARGET_URL"] = url
    env["STREAMER_LOG_FORMAT"] = "json"
    env.update(settings)
    return env


LIVE: list[StreamerProc] = []  # every process started here; end_all() ends what a test left running


def end_all() -> None:
    """Kill -9 every streamer process this harness started that still runs (after a failed test)."""
    while LIVE:
        p = LIVE.pop()
        if p.alive():
            say(f"ending leftover pid {p.pid}")
            p.proc.send_signal(signal.SIGCONT)
            p.proc.kill()
            p.proc.wait(30)
        p._out.close()


class StreamerProc:
    """One ``streamer`` subprocess (``args`` after ``streamer``); its output goes to ``log`` (never a pipe)."""

    def __init__(
        self, args: Sequence[str], url: str, log: Path, settings: Mapping[str, str] | None = None
    ) -> None:
        self.log = log
        self._out: IO[bytes] = log.open("ab")
        cmd = [sys.executable, "-m", "streamer.cli", *args]
        self.proc = subprocess.Popen(
            cmd, env=streamer_env(url, **(settings or {})), stdout=self._out, stderr=subprocess.STDOUT
        )
        LIVE.append(self)
        say(f"streamer {' '.join(args)[:160]}: pid {self.proc.pid}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill9(self) -> None:
        say(f"kill -9 consumer pid {self.pid}")
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self._out.close()

    def sigstop(self) -> None:
        say(f"SIGSTOP consumer pid {self.pid}")
        self.proc.send_signal(signal.SIGSTOP)

    def sigcont(self) -> None:
        say(f"SIGCONT consumer pid {self.pid}")
        self.proc.send_signal(signal.SIGCONT)

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM (a clean stop), then SIGKILL after ``timeout``. Returns the exit status."""
        if self.alive():
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self._out.close()
        return int(self.proc.returncode)

    def wait(self, timeout: float) -> int:
        rc = self.proc.wait(timeout)
        self._out.close()
        return int(rc)

    def tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


class ConsumerProc(StreamerProc):
    """One ``streamer consume`` subprocess in ``group``."""

    def __init__(
        self,
        group: str,
        topics: str,
        url: str,
        log: Path,
        *extra: str,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self.group = group
        super().__init__(["consume", "--group", group, "--topics", topics, *extra], url, log, settings)


def run_streamer(
    *args: str, url: str, timeout: float = 300, **settings: str
) -> subprocess.CompletedProcess[str]:
    """Run a ``streamer`` command to its end with the target ``url``."""
    return subprocess.run(
        [sys.executable, "-m", "streamer.cli", *args],
        env=streamer_env(url, **settings),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def committed_offsets(url: str, group: str) -> int:
    """The sum of the next offsets the target's state holds for ``group`` (0 before any batch)."""
    engine = create_target_engine(url)
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table("_streamer_offsets"):
                return 0
            return int(
                conn.execute(
                    sa.text(
                        "SELECT coalesce(sum(next_offset), 0) FROM _streamer_offsets WHERE consumer_group = :g"
                    ),
                    {"g": group},
                ).scalar_one()
            )
    except sa.exc.OperationalError:
        return 0  # a target that is down right now has made no visible progress
    finally:
        engine.dispose()


def wait_progress(url: str, group: str, beyond: int = 0, timeout: float = 120.0) -> int:
    """Wait until the group's committed target offsets pass ``beyond``; returns the new sum."""
    seen = [0]

    def moved() -> bool:
        seen[0] = committed_offsets(url, group)
        return seen[0] > beyond

    wait_until(moved, timeout, f"group {group} to commit past {beyond}", every=0.3)
    return seen[0]


# ---------------------------------------------------------------- comparison
def target_table(url: str, database: str, schema: str, table: str) -> tuple[str | None, str]:
    dialect = sa.engine.make_url(url).get_backend_name()
    route = Router(dialect).route(TableId(database, schema, table))
    return route.target_schema, route.target_table


def _fetch(
    engine: Engine, where: tuple[str | None, str], kinds: Mapping[str, str]
) -> dict[int, tuple[Any, ...]]:
    """Every row of a table keyed by its integer ``id``, each value normalized by the source column's kind."""
    t = sa.Table(where[1], sa.MetaData(), schema=where[0], autoload_with=engine)
    exprs = []
    for name, kind in kinds.items():
        col = t.c[name]
        exprs.append(sa.cast(col, sa.Text) if kind == "json" else col)
    rows: dict[Any, tuple[Any, ...]] = {}
    with engine.connect() as conn:
        for row in conn.execute(sa.select(*exprs)):
            norm = tuple(normalize(kind, v) for kind, v in zip(kinds.values(), row, strict=True))
            rows[int(row[0])] = norm
    return rows


@dataclasses.dataclass
class Difference:
    table: str
    missing: list[Any]
    extra: list[Any]
    changed: list[tuple[Any, list[str]]]

    def __str__(self) -> str:
        return (
            f"{self.table}: {len(self.missing)} missing {self.missing[:8]}, {len(self.extra)} extra "
            f"{self.extra[:8]}, {len(self.changed)} changed {self.changed[:8]}"
        )


def differences(
    source_url: str, url: str, database: str, schema: str, tables: Sequence[str] = TABLES
) -> list[Difference]:
    """Whole-table differences by key, every column, from rows fetched from both sides and normalized."""
    source = create_target_engine(source_url)
    target = create_target_engine(url)
    out = []
    try:
        for table in tables:
            columns, key = describe(source, schema, table)
            assert key == ("id",), f"{table}: the harness compares tables keyed by id, not {key}"
            kinds = {c.name: c.kind for c in columns}
            src = _fetch(source, (schema, table), kinds)
            try:
                tgt = _fetch(target, target_table(url, database, schema, table), kinds)
            except sa.exc.NoSuchTableError:
                tgt = {}
            changed = [
                (k, [n for n, a, b in zip(kinds, row, tgt[k], strict=True) if a != b])
                for k, row in src.items()
                if k in tgt and tgt[k] != row
            ]
            missing = sorted(k for k in src if k not in tgt)
            extra = sorted(k for k in tgt if k not in src)
            if missing or extra or changed:
                out.append(Difference(table, missing, extra, sorted(changed)))
    finally:
        source.dispose()
        target.dispose()
    return out


def key_history(
    settings: Mapping[str, str],
    topics: str,
    url: str,
    database: str,
    schema: str,
    diffs: Sequence[Difference],
    limit: int = 12,
) -> str:
    """What the topics and the target hold for the keys that differ: every record of each such key
    (offset, op, before/after id, source LSN, txId, snapshot flag) and the target row's version.

    A failing drain then tells a change the capture never sent (no record) from one the consumer
    skipped or undid (a record whose effect the target does not show)."""
    from streamer.settings import load_settings
    from tests.topic_records import read_topic

    bootstrap = settings.get("STREAMER_BOOTSTRAP_SERVERS") or load_settings().bootstrap_servers
    wanted = {
        d.table: {*d.missing[:limit], *d.extra[:limit], *(k for k, _ in d.changed[:limit])} for d in diffs
    }
    lines: list[str] = []
    target = create_target_engine(url)
    try:
        import re

        from confluent_kafka.admin import AdminClient

        pattern = re.compile(topics)
        admin = AdminClient({"bootstrap.servers": bootstrap})
        names = [t for t in admin.list_topics(timeout=20).topics if pattern.search(t)]
        for table, keys in wanted.items():
            for topic in (t for t in names if t.endswith(f".{table}")):
                for part, offset, key, value in read_topic(bootstrap, topic):
                    if not isinstance(key, dict) or key.get("id") not in keys:
                        continue
                    if value is None:
                        lines.append(f"  {topic}[{part}]@{offset} key {key.get('id')}: tombstone")
                        continue
                    src = value.get("source") or {}
                    ids = [(value.get(side) or {}).get("id") for side in ("before", "after")]
                    lines.append(
                        f"  {topic}[{part}]@{offset} key {key.get('id')}: op={value.get('op')} "
                        f"before.id={ids[0]} after.id={ids[1]} lsn={src.get('lsn')} txId={src.get('txId')} "
                        f"snapshot={src.get('snapshot')}"
                    )
            where = target_table(url, database, schema, table)
            with contextlib.suppress(sa.exc.SQLAlchemyError), target.connect() as conn:
                t = sa.Table(where[1], sa.MetaData(), schema=where[0], autoload_with=conn)
                if VERSION_COLUMN in t.c:
                    for row in conn.execute(sa.select(t.c.id, t.c[VERSION_COLUMN]).where(t.c.id.in_(keys))):
                        lines.append(f"  target {table} id={row[0]}: {VERSION_COLUMN}={row[1]}")
    except Exception as exc:  # a diagnostic: its own failure must not hide the assertion
        lines.append(f"  (history incomplete: {type(exc).__name__}: {exc})")
    finally:
        target.dispose()
    return "what the topics and the target hold for those keys:\n" + ("\n".join(lines) or "  nothing")


def assert_equal(
    source_url: str, url: str, database: str, schema: str, tables: Sequence[str] = TABLES
) -> None:
    """Whole-table equality, asserted by streamer's validator and by the direct row comparison."""
    diffs = differences(source_url, url, database, schema, tables)
    assert not diffs, "target differs from source:\n" + "\n".join(str(d) for d in diffs)
    source = create_target_engine(source_url)
    target = create_target_engine(url)
    try:
        for table in tables:
            diff = compare_tables(source, (schema, table), target, target_table(url, database, schema, table))
            assert diff.equal, f"validate: {table}: {diff}"
            assert diff.source_rows > 0, f"{table}: empty source table proves nothing"
    finally:
        source.dispose()
        target.dispose()


DRAIN_ASSIGNMENT_TIMEOUT_S = "45"


def drain_and_compare(
    source_url: str,
    url: str,
    database: str,
    schema: str,
    group: str,
    topics: str,
    log: Path,
    *,
    idle: float = 8.0,
    timeout: float = 300.0,
    settings: Mapping[str, str] | None = None,
    tables: Sequence[str] = TABLES,
) -> None:
    """Drain ``group`` with ``streamer consume --until-idle`` runs until the target equals the source.

    A run ends 0 only after it was assigned partitions and read them to their end (idle time counts
    from the first assignment). A run that gets no assignment at all stops with exit 3 "no partitions
    assigned" (after ``DRAIN_ASSIGNMENT_TIMEOUT_S``): the local broker keeps a member that is gone as
    the group's leader for good after some faults, and no member is ever assigned again. The drain
    then follows the documented way out: ``streamer replay --group NEW --to group:OLD`` (the new group
    starts exactly where the old one would, stored topic identities included) and drains NEW. Any
    other exit fails the test. Between runs the tables are compared; the differences fail the test
    when three runs in a row leave them unchanged or after ``timeout`` seconds. Ends with
    :func:`assert_equal`.
    """
    deadline = time.monotonic() + timeout
    runs, moves = 0, 0
    stuck, last = 0, ""
    run_settings = {"STREAMER_CONSUMER__ASSIGNMENT_TIMEOUT_S": DRAIN_ASSIGNMENT_TIMEOUT_S, **(settings or {})}
    while True:
        runs += 1
        start = log.stat().st_size if log.exists() else 0
        proc = ConsumerProc(group, topics, url, log, "--until-idle", str(idle), settings=run_settings)
        rc = proc.wait(timeout=max(120.0, deadline - time.monotonic() + 60))
        with log.open("rb") as fh:
            fh.seek(start)
            output = fh.read().decode(errors="replace")
        if rc == 3 and "no partitions assigned" in output:
            moves += 1
            assert moves <= 2, (
                f"drain: no partitions assigned again after moving the group:\n{output[-3000:]}"
            )
            new = f"{group}-moved{moves}"
            say(f"drain run {runs}: group {group} assigned nothing; moving its positions to {new}")
            moved = subprocess.run(
                [sys.executable, "-m", "streamer.cli", "replay", "--group", new, "--to", f"group:{group}"],
                env=streamer_env(url, **dict(settings or {})),
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert moved.returncode == 0, f"replay to group:{group} failed:\n{moved.stdout}\n{moved.stderr}"
            say(f"replay --group {new} --to group:{group}:\n{moved.stdout.strip()[-1500:]}")
            group = new
            continue
        assert rc == 0, f"drain consumer exited {rc}:\n{output[-4000:]}"
        assert "partitions assigned" in output or "joined the group" in output, output[-3000:]
        diffs = differences(source_url, url, database, schema, tables)
        if not diffs:
            break
        text = "\n".join(str(d) for d in diffs)
        # the same differences after runs that read to the end: the stream has nothing more to give
        stuck = stuck + 1 if text == last else 0
        last = text
        if time.monotonic() >= deadline or stuck >= 2:
            why = f"; unchanged over the last {stuck + 1} runs" if stuck >= 2 else ""
            history = key_history(settings or {}, topics, url, database, schema, diffs)
            raise AssertionError(
                f"target still differs from source after {runs} drain runs{why}:\n{text}\n{history}"
            )
        say(f"drain run {runs}: still differs ({'; '.join(str(d) for d in diffs)[:300]}), draining again")
    assert_equal(source_url, url, database, schema, tables)
    say(
        f"{schema} -> {url.split('@')[-1]}: whole tables equal after {runs} drain run(s), {moves} group move(s)"
    )


# ---------------------------------------------------------------- private processes
def _postgres_ids() -> dict[str, int]:
    if os.geteuid() != 0:
        return {}
    pw = pwd.getpwnam("postgres")
    return {"user": pw.pw_uid, "group": pw.pw_gid}


class PrivatePostgres:
    """A PostgreSQL cluster of one test, under ``base`` (the postgres user must reach it), on a free port.

    Started with :meth:`start`; :meth:`crash` stops it the hard way (``pg_ctl stop -m immediate``:
    every connection dies, the next start runs crash recovery), :meth:`stop` the clean way.
    """

    def __init__(self, base: Path, database: str = "target") -> None:
        # as root in a private checkout the server's user cannot reach base: a directory of its own
        self.base = reachable_by_postgres(base)
        self.data = self.base / "data"
        self.sock = Path("/tmp") / f"faults-pg-{os.getpid()}-{id(self)}"
        self.port = free_port()
        self.database = database
        self.url = f"postgresql://postgres:postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc: subprocess.CompletedProcess[str] = subprocess.run(  # type: ignore[call-overload]
            list(cmd), capture_output=True, text=True, cwd="/", **_postgres_ids()
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"{cmd[0]} failed: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc

    def _chown(self, path: Path) -> None:
        ids = _postgres_ids()
        if ids:
            os.chown(path, ids["user"], ids["group"])

    def init(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self._chown(self.base)
        self.sock.mkdir(exist_ok=True)
        self._chown(self.sock)
        pwfile = self.base / "pwfile"
        pwfile.write_text("postgres\n")
        self._chown(pwfile)
        self._run(
            str(PG_BINDIR / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
        )
        pwfile.unlink()
        with (self.data / "postgresql.conf").open("a") as fh:
            fh.write(
                f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.sock}'\nshared_buffers = 32MB\nfsync = off\n"
                "max_connections = 50\n"
            )
        self.start()
        conn = psycopg2.connect(
            host="127.0.0.1", port=self.port, user="postgres", password="postgres", dbname="postgres"
        )
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{self.database}"')
        conn.close()

    def start(self) -> None:
        log = self.base / "postgres.log"
        log.touch()
        self._chown(log)
        self._run(str(PG_BINDIR / "pg_ctl"), "-D", str(self.data), "-l", str(log), "-w", "-t", "60", "start")
        say(f"private PostgreSQL on port {self.port} started")

    def stop(self) -> None:
        self._run(str(PG_BINDIR / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")
        say(f"private PostgreSQL on port {self.port} stopped")

    def crash(self) -> None:
        self._run(
            str(PG_BINDIR / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "-t", "60", "stop"
        )
        say(f"private PostgreSQL on port {self.port} crashed (stop -m immediate)")

    def running(self) -> bool:
        return (
            self._run(str(PG_BINDIR / "pg_ctl"), "-D", str(self.data), "status", check=False).returncode == 0
        )

    def destroy(self) -> None:
        if self.data.exists() and self.running():
            self._run(
                str(PG_BINDIR / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False
            )
        shutil.rmtree(self.base, ignore_errors=True)
        shutil.rmtree(self.sock, ignore_errors=True)


@contextlib.contextmanager
def private_postgres(base: Path) -> Iterator[PrivatePostgres]:
    pg = PrivatePostgres(base)
    try:
        pg.init()
        yield pg
    finally:
        pg.destroy()


def jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of a log file (other lines skipped)."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            item = json.loads(line)
            if isinstance(item, dict):
                out.append(item)
    return out


def stop_part(st: Any, part: str, sig: int = signal.SIGTERM) -> None:
    """Stop one part ("broker" or "connect") of a *private* :class:`streamer.stack.local.Stack`.

    SIGTERM waits for a clean exit (SIGKILL after 30 s); SIGKILL is a crash. ``Stack.up()`` starts
    it again. Never call this for the shared stack.
    """
    from streamer.stack.local import _alive, _terminate

    pid = st.pid(part)
    assert pid is not None, f"{part} of the private stack is not running"
    say(f"private stack: {signal.Signals(sig).name} {part} (pid {pid})")
    if sig == signal.SIGKILL:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        wait_until(lambda: not _alive(pid), 30, f"{part} pid {pid} to die")
    else:
        _terminate(pid, timeout=30.0)
    st._pidfile(part).unlink(missing_ok=True)
