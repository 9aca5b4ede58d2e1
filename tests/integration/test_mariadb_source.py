"""A MariaDB source end to end: the stack's MariaDB -> Debezium's MySQL connector -> Kafka ->
`streamer consume` -> PostgreSQL target, compared as whole tables (every row, every column).

The connector is ``connectors/mariadb-inventory.json`` with names of this test's own. The shared
Connect worker may have been started before the ``STREAMER_MARIADB_*`` variables existed, so the
test resolves the file's ``${env:...}`` placeholders itself, from the values a worker started by
``streamer stack up`` gets (:meth:`Stack.connect_env`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import re
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from streamer.apply.schema import Router
from streamer.core.events import TableId
from streamer.db import create_target_engine
from streamer.stack.local import Stack
from streamer.validate import compare_tables
from tests.conftest import wait_running

ROOT = Path(__file__).resolve().parents[2]
VERSION = "_streamer_version"
TABLE = "items"
MARKER = 999_999  # the workload's last insert: once the target has it, the consumer has read that far
COLUMNS = (
    "id",
    "big",
    "counter",
    "price",
    "name",
    "notes",
    "happened",
    "stamped",
    "day",
    "data",
    "doc",
    "state",
)
STATES = ("new", "paid", "shipped")


def _ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


@pytest.fixture
def mariadb_db(stack: Stack, unique: str) -> Iterator[str]:
    """A database of this test's own on the stack's MariaDB source, dropped afterwards."""
    conn = stack.mariadb_connect(autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE {_ident(unique)} CHARACTER SET utf8mb4")
        yield unique
    finally:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {_ident(unique)}")
        conn.close()


def connector_config(stack: Stack, name: str, database: str) -> dict[str, str]:
    """connectors/mariadb-inventory.json for ``database``, under names of this test's own."""
    config: dict[str, str] = json.loads((ROOT / "connectors" / "mariadb-inventory.json").read_text())[
        "config"
    ]
    env = stack.connect_env()

    def resolve(value: str) -> str:
        return re.sub(r"\$\{env:([A-Za-z0-9_]+)\}", lambda m: env[m.group(1)], value)

    config = {k: resolve(v) for k, v in config.items()}
    config.update(
        {
            "topic.prefix": name,
            "database.include.list": database,
            "schema.history.internal.kafka.topic": f"schema-history.{name}",
            # two binlog readers with one server id push each other off the server
            "database.server.id": str(100_000 + int(name[1:], 16) % 4_000_000_000),
        }
    )
    return config


@pytest.fixture
def mariadb_connector(stack: Stack, unique: str) -> Iterator[Any]:
    made: list[str] = []

    def register(database: str) -> None:
        cfg = connector_config(stack, unique, database)
        resp = httpx.put(f"{stack.settings.connect_url}/connectors/{unique}/config", json=cfg, timeout=60)
        assert resp.status_code in (200, 201), resp.text
        made.append(unique)
        wait_running(stack.settings.connect_url, unique, timeout=120)

    yield register
    for name in made:
        httpx.delete(f"{stack.settings.connect_url}/connectors/{name}", timeout=30)


def _row(rng: random.Random, key: int) -> dict[str, Any]:
    """A row with every column type; nullable columns are sometimes NULL."""

    def maybe(value: Any) -> Any:
        return None if rng.random() < 0.15 else value

    return {
        "id": key,
        "big": rng.choice([-(2**63), 2**63 - 1, rng.randint(-(10**15), 10**15)]),
        # past a signed bigint: the connector file's bigint.unsigned.handling.mode=precise
        "counter": rng.choice([0, 2**64 - 1, rng.randint(2**63, 2**64 - 1)]),
        "price": Decimal(rng.randint(-(10**11), 10**11)) / 1000,
        "name": "".join(rng.choice("abcdé 'ü\\xyz") for _ in range(rng.randint(0, 40))),
        "notes": maybe("ñ" * rng.randint(0, 3000)),
        "happened": dt.datetime(2020, 1, 1)
        + dt.timedelta(seconds=rng.randint(0, 10**8), microseconds=rng.randint(0, 999_999)),
        "stamped": maybe(
            dt.datetime(2001, 1, 1)
            + dt.timedelta(seconds=rng.randint(0, 10**9), microseconds=rng.randint(0, 999_999))
        ),
        "day": maybe(dt.date(1900, 1, 1) + dt.timedelta(days=rng.randint(0, 80_000))),
        "data": maybe(bytes(rng.randrange(256) for _ in range(rng.randint(0, 300)))),
        "doc": maybe(json.dumps({"k": key, "tags": [rng.randint(0, 9) for _ in range(3)], "s": 'é"x'})),
        "state": rng.choice(STATES),
    }


class Workload:
    """Writes to the MariaDB source table and keeps the keys it holds."""

    def __init__(self, conn: Any, database: str, seed: int) -> None:
        self.conn = conn
        self.table = f"{_ident(database)}.{_ident(TABLE)}"
        self.rng = random.Random(seed)
        self.keys: set[int] = set()
        self.next_key = 1

    def execute(self, sql: str, args: Any = None) -> None:
        with self.conn.cursor() as cur:
            cur.execute(sql, args)

    def create(self) -> None:
        self.execute(
            f"""CREATE TABLE {self.table} (
                id INT PRIMARY KEY,
                big BIGINT NOT NULL,
                counter BIGINT UNSIGNED NOT NULL,
                price DECIMAL(14,3) NOT NULL,
                name VARCHAR(100) NOT NULL,
                notes TEXT NULL,
                happened DATETIME(6) NOT NULL,
                stamped TIMESTAMP(6) NULL DEFAULT NULL,
                day DATE NULL,
                data BLOB NULL,
                doc JSON NULL,
                state ENUM('new','paid','shipped') NOT NULL
            )"""
        )

    def insert(self, n: int, key: int | None = None) -> None:
        rows = []
        for _ in range(n):
            k = key if key is not None else self.next_key
            self.next_key = max(self.next_key, k + 1)
            rows.append(_row(self.rng, k))
            self.keys.add(k)
        cols = ", ".join(_ident(c) for c in COLUMNS)
        marks = ", ".join(["%s"] * len(COLUMNS))
        with self.conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO {self.table} ({cols}) VALUES ({marks})", [[r[c] for c in COLUMNS] for r in rows]
            )

    def update(self, key: int) -> None:
        fresh = _row(self.rng, key)
        cols = self.rng.sample(COLUMNS[1:], self.rng.randint(1, len(COLUMNS) - 1))
        sets = ", ".join(f"{_ident(c)} = %s" for c in cols)
        self.execute(f"UPDATE {self.table} SET {sets} WHERE id = %s", [*(fresh[c] for c in cols), key])

    def delete(self, key: int) -> None:
        self.execute(f"DELETE FROM {self.table} WHERE id = %s", [key])
        self.keys.discard(key)

    def move_key(self, key: int) -> None:
        """A primary-key update (Debezium: a delete of the old key, a create of the new one)."""
        new = self.next_key
        self.next_key += 1
        self.execute(f"UPDATE {self.table} SET id = %s WHERE id = %s", [new, key])
        self.keys.discard(key)
        self.keys.add(new)

    def truncate(self) -> None:
        self.execute(f"TRUNCATE TABLE {self.table}")
        self.keys.clear()

    def pick(self) -> int:
        return self.rng.choice(sorted(self.keys))

    def run(self, steps: int) -> None:
        for _ in range(steps):
            op = self.rng.random()
            if op < 0.3 or len(self.keys) < 10:
                self.insert(self.rng.randint(1, 3))
            elif op < 0.6:
                self.update(self.pick())
            elif op < 0.72:
                self.delete(self.pick())
            elif op < 0.82:
                self.move_key(self.pick())
            elif op < 0.92:
                # one transaction: the same key twice, then a multi-row update (one binlog event)
                key = self.pick()
                self.execute("BEGIN")
                self.update(key)
                self.update(key)
                self.execute(
                    f"UPDATE {self.table} SET state = %s WHERE id %% 4 = 1", [self.rng.choice(STATES)]
                )
                self.execute("COMMIT")
            else:
                # deleted and inserted again under the same key, in one transaction
                key = self.pick()
                self.execute("BEGIN")
                self.delete(key)
                self.insert(1, key=key)
                self.execute("COMMIT")


def _consume(stack: Stack, group: str, topics: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STREAMER_TARGET_URL": stack.settings.target_url, "STREAMER_LOG_FORMAT": "json"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "streamer.cli",
            "consume",
            "--group",
            group,
            "--topics",
            topics,
            "--until-idle",
            "10",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _source_rows(stack: Stack, database: str) -> dict[int, tuple[Any, ...]]:
    conn = stack.mariadb_connect(database=database)
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT {', '.join(_ident(c) for c in COLUMNS)} FROM {_ident(TABLE)}")
            return {r[0]: _normal(r) for r in cur.fetchall()}
    finally:
        conn.close()


def _target_rows(url: str, schema: str, table: str) -> dict[int, tuple[Any, ...]]:
    engine = create_target_engine(url)
    try:
        t = sa.Table(table, sa.MetaData(), schema=schema, autoload_with=engine)
        with engine.connect() as conn:
            rows = conn.execute(sa.select(*(t.c[c] for c in COLUMNS))).all()
        return {r[0]: _normal(tuple(r)) for r in rows}
    finally:
        engine.dispose()


def _normal(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """One comparable form per column: TIMESTAMP as UTC (the source session is UTC, the target's
    timestamptz aware), JSON parsed (the source keeps its text, a jsonb target normalizes it),
    BLOB/bytea as bytes."""
    out = list(row)
    i = COLUMNS.index
    stamped = out[i("stamped")]
    if isinstance(stamped, dt.datetime) and stamped.tzinfo is not None:
        out[i("stamped")] = stamped.astimezone(dt.UTC).replace(tzinfo=None)
    doc = out[i("doc")]
    if isinstance(doc, str):
        out[i("doc")] = json.loads(doc)
    data = out[i("data")]
    if isinstance(data, memoryview | bytearray):
        out[i("data")] = bytes(data)
    return tuple(out)


def test_mariadb_changes_reach_postgresql(
    stack: Stack, mariadb_db: str, mariadb_connector: Any, unique: str
) -> None:
    """Snapshot rows, inserts, updates, deletes, primary-key updates, one key twice in a transaction,
    multi-row events, delete + re-insert of a key and a TRUNCATE amid the writes: the PostgreSQL
    target equals the source."""
    seed = random.randrange(2**32)
    print(f"seed {seed}")
    conn = stack.mariadb_connect(database=mariadb_db, autocommit=True)
    try:
        work = Workload(conn, mariadb_db, seed)
        work.create()
        work.insert(40)  # read by the connector's snapshot
        mariadb_connector(mariadb_db)
        work.run(150)  # streamed from the binlog
        work.truncate()  # every row so far goes; the rows written after it stay
        work.run(150)
        work.insert(1, key=MARKER)
    finally:
        conn.close()

    route = Router("postgresql").route(TableId(database=mariadb_db, schema=None, table=TABLE))
    assert (route.target_schema, route.target_table) == (mariadb_db, TABLE)
    topics = rf"^{unique}\.{mariadb_db}\.{TABLE}$"
    target = create_target_engine(stack.settings.target_url)
    try:
        for _ in range(6):
            done = _consume(stack, unique, topics)
            assert done.returncode == 0, done.stderr[-3000:]
            with target.connect() as tconn:
                has_marker = (
                    sa.inspect(tconn).has_table(TABLE, schema=mariadb_db)
                    and tconn.execute(
                        sa.text(f'SELECT 1 FROM "{mariadb_db}"."{TABLE}" WHERE id = :k'), {"k": MARKER}
                    ).first()
                )
            if has_marker:
                break
        else:
            raise AssertionError(
                f"the target never got the workload's last row; last run:\n{done.stderr[-3000:]}"
            )
        with target.connect() as tconn:
            versions = [
                v for (v,) in tconn.execute(sa.text(f'SELECT "{VERSION}" FROM "{mariadb_db}"."{TABLE}"'))
            ]
    finally:
        target.dispose()

    source = _source_rows(stack, mariadb_db)
    got = _target_rows(stack.settings.target_url, mariadb_db, TABLE)
    assert len(source) > 40 and MARKER in source
    missing = sorted(source.keys() - got.keys())
    extra = sorted(got.keys() - source.keys())
    changed = {
        k: [
            (c, repr(a)[:60], repr(b)[:60])
            for c, a, b in zip(COLUMNS, source[k], got[k], strict=True)
            if a != b
        ]
        for k in source.keys() & got.keys()
        if source[k] != got[k]
    }
    assert not missing and not extra and not changed, (
        f"seed {seed}: missing {missing[:5]} extra {extra[:5]} changed {dict(list(changed.items())[:3])}"
    )
    # and so does streamer's own validator, reading MariaDB as the source
    source_engine = create_target_engine(stack.mariadb_url(mariadb_db))
    target_engine = create_target_engine(stack.settings.target_url)
    try:
        diff = compare_tables(source_engine, (None, TABLE), target_engine, (mariadb_db, TABLE))
    finally:
        source_engine.dispose()
        target_engine.dispose()
    assert diff.source_rows == len(source)
    assert diff.equal, f"missing {diff.missing[:5]} extra {diff.extra[:5]} changed {diff.changed[:5]}"
    # every row carries its binlog coordinate (file number, position, row), so the guard can order it;
    # a row last written by the connector's snapshot carries the read mark too (streamer.core.events)
    assert all(re.fullmatch(r"my:\d{8}:[0-9a-f]{16}:\d{6}(:r)?", v) for v in versions), versions[:5]
