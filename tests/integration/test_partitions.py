"""A partitioned source table lands in one target table (issue 13 item 1): Debezium's filtered publication
publishes per leaf partition (one topic each), `streamer replicate` too without
``publish_via_partition_root``; the sink routes every leaf as its root (``pg_partition_root``). Rows in
several partitions, updates moving rows between partitions, deletes; whole-table equality after drain."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import sqlalchemy as sa
from confluent_kafka.admin import AdminClient

from streamer.db import create_target_engine
from streamer.stack.local import Stack
from streamer.validate import compare_tables
from tests.conftest import debezium_config, drop_connector, run_on_source
from tests.integration.test_consume import consume_cmd, consumer_env
from tests.integration.test_replicate import Replication, run

LEAVES = ("p_1", "p_2", "p_3")


def _create(stack: Stack, schema: str) -> None:
    s = f'"{schema}"'
    run_on_source(
        stack,
        f"CREATE SCHEMA IF NOT EXISTS {s}",
        f"CREATE TABLE {s}.p (id integer NOT NULL, region integer NOT NULL, v text, "
        "PRIMARY KEY (id, region)) PARTITION BY LIST (region)",
        *(f"CREATE TABLE {s}.p_{r} PARTITION OF {s}.p FOR VALUES IN ({r})" for r in (1, 2, 3)),
        f"INSERT INTO {s}.p SELECT i, 1 + i % 3, 'v' || i FROM generate_series(1, 60) i",
    )


def _changes(stack: Stack, schema: str) -> None:
    s = f'"{schema}"'
    run_on_source(
        stack,
        f"INSERT INTO {s}.p SELECT i, 1 + i % 3, 'new' || i FROM generate_series(100, 120) i",
        f"UPDATE {s}.p SET region = 1 + region % 3, v = 'moved' WHERE id % 4 = 0",  # to another partition
        f"UPDATE {s}.p SET v = 'stayed' WHERE id % 5 = 0",
        f"UPDATE {s}.p SET region = 3 WHERE id = 101 AND region <> 3",
        f"DELETE FROM {s}.p WHERE id % 7 = 0",
    )


def _assert_same(stack: Stack, url: str, schema: str) -> None:
    source = create_target_engine(stack.settings.source_url)
    target = create_target_engine(url)
    try:
        diff = compare_tables(source, (schema, "p"), target, (schema, "p"))
        assert diff.source_rows > 0
        assert diff.equal, f"missing {diff.missing[:10]} extra {diff.extra[:10]} changed {diff.changed[:10]}"
        with target.connect() as conn:
            leaves = [t for t in sa.inspect(conn).get_table_names(schema=schema) if t in LEAVES]
        assert leaves == [], "no target table per leaf partition"
    finally:
        source.dispose()
        target.dispose()


@pytest.fixture
def partitioned(stack: Stack, unique: str) -> Iterator[str]:
    _create(stack, unique)
    yield unique
    run_on_source(stack, f'DROP SCHEMA IF EXISTS "{unique}" CASCADE')


def test_consume_lands_leaf_partition_topics_in_the_root_table(
    stack: Stack, debezium: Any, partitioned: str, tmp_path: Path
) -> None:
    schema = partitioned
    url = stack.settings.target_url
    debezium(
        schema, ",".join(f"{schema}.{leaf}" for leaf in LEAVES), **{"column.propagate.source.type": ".*"}
    )
    env = {"STREAMER_CONNECTORS_DIR": str(tmp_path / "none")}
    admin = AdminClient({"bootstrap.servers": stack.settings.bootstrap_servers})
    wanted = {f"{schema}.{schema}.{leaf}" for leaf in LEAVES}
    deadline = time.monotonic() + 90
    while not wanted <= set(admin.list_topics(timeout=10).topics):  # the snapshot made every leaf's topic
        assert time.monotonic() < deadline, "Debezium made no topic per leaf partition"
        time.sleep(1)

    def drain() -> None:
        done = subprocess.run(
            consume_cmd(f"{schema}-parts", rf"^{schema}\.{schema}\.p_[0-9]$", "--until-idle", "6"),
            env=consumer_env(url, **env),
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert done.returncode == 0, done.stderr[-3000:]

    drain()
    _assert_same(stack, url, schema)
    _changes(stack, schema)
    drain()
    _assert_same(stack, url, schema)


def _published(stack: Stack, publication: str) -> list[tuple[bool, str, str]]:
    """``(pubviaroot, schema, table)`` of every table the publication publishes."""
    conn = psycopg2.connect(stack.settings.source_url)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT p.pubviaroot, t.schemaname, t.tablename FROM pg_publication p "
                "JOIN pg_publication_tables t ON t.pubname = p.pubname WHERE p.pubname = %s",
                (publication,),
            )
            return list(cur.fetchall())
    finally:
        conn.close()


@pytest.mark.parametrize("listed", ["leaves", "root"])
def test_replicate_lands_partitions_in_the_root_table(stack: Stack, unique: str, listed: str) -> None:
    """``replicate --create`` given the leaf partitions (published per leaf: the sink routes each as
    its root) or the partitioned root (the publication it creates has publish_via_partition_root, so
    the stream names the root, as ``connectors apply`` makes it for Debezium)."""
    repl = Replication(stack, unique)
    url = stack.settings.target_url
    try:
        schema = repl.schema()
        slot = repl.slot()
        _create(stack, schema)
        tables = ",".join(f"{schema}.{leaf}" for leaf in LEAVES) if listed == "leaves" else f"{schema}.p"
        made = run(slot, schema, url, "--create", "--tables", tables, "--max-events", "0")
        assert made.returncode == 0, made.stderr[-3000:]
        if listed == "root":
            assert _published(stack, schema) == [(True, schema, "p")]
        else:
            assert sorted(_published(stack, schema)) == [(False, schema, leaf) for leaf in LEAVES]
        load = subprocess.run(
            [*consume_cmd("x", "x")[:3], "load", f"--table={schema}.p"],
            env=consumer_env(url),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert load.returncode == 0, load.stderr[-3000:]
        _changes(stack, schema)
        done = run(slot, schema, url, "--until-idle", "4", timeout=180)
        assert done.returncode == 0, done.stderr[-3000:]
        _assert_same(stack, url, schema)
    finally:
        repl.cleanup()


def test_connectors_apply_creates_the_publication_via_partition_root(
    stack: Stack, partitioned: str, tmp_path: Path
) -> None:
    """A connector file listing the partitioned root: `connectors plan` says what it will do, `apply`
    creates the publication WITH (publish_via_partition_root = true) before pushing the connector, and
    the changes arrive on the root's one topic."""
    schema = partitioned
    url = stack.settings.target_url
    workdir = tmp_path / schema
    workdir.mkdir()
    config = debezium_config(stack, schema, f"{schema}.p", **{"column.propagate.source.type": ".*"})
    (workdir / f"{schema}.json").write_text(json.dumps({"name": schema, "config": config}))

    def connectors(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [*consume_cmd("x", "x")[:3], "connectors", *args, "--dir", str(workdir)]
        return subprocess.run(cmd, env=consumer_env(url), capture_output=True, text=True, timeout=180)

    try:
        plan = connectors("plan")
        assert plan.returncode == 0, plan.stderr
        assert (
            f"+ publication {schema}_pub ({schema}): create WITH (publish_via_partition_root = true): "
            f"{schema}.p partitioned"
        ) in plan.stdout.splitlines(), plan.stdout
        applied = connectors("apply", "--wait", "90")
        assert applied.returncode == 0, applied.stdout + applied.stderr
        assert _published(stack, f"{schema}_pub") == [(True, schema, "p")]
        again = connectors("plan")
        assert f"= publication {schema}_pub ({schema}): publish_via_partition_root already on" in again.stdout

        def drain() -> None:
            done = subprocess.run(
                consume_cmd(f"{schema}-root", rf"^{schema}\.{schema}\.p$", "--until-idle", "6"),
                env=consumer_env(url, STREAMER_CONNECTORS_DIR=str(tmp_path / "none")),
                capture_output=True,
                text=True,
                timeout=240,
            )
            assert done.returncode == 0, done.stderr[-3000:]

        admin = AdminClient({"bootstrap.servers": stack.settings.bootstrap_servers})
        deadline = time.monotonic() + 90
        while f"{schema}.{schema}.p" not in admin.list_topics(timeout=10).topics:
            assert time.monotonic() < deadline, "no topic for the root table"
            time.sleep(1)
        drain()
        _assert_same(stack, url, schema)
        _changes(stack, schema)
        drain()
        _assert_same(stack, url, schema)
        leaf_topics = [
            t for t in admin.list_topics(timeout=10).topics if t.startswith(f"{schema}.{schema}.p_")
        ]
        assert leaf_topics == []
    finally:
        drop_connector(stack, schema, schema)
