"""Values a change event does not carry (unchanged TOAST) for rows the target lacks: read from the source
by key, or recorded incomplete when the source cannot be read (streamer.apply.fetch, issue 13 item 6).

The source table's ``big`` column is stored out of line uncompressed (``STORAGE EXTERNAL``), so
every update that leaves it alone sends it as unavailable, in Debezium's events and in pgoutput's.
Every test ends comparing whole tables.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from streamer.apply import fetch
from streamer.db import create_target_engine
from streamer.stack.local import Stack
from streamer.validate import compare_tables
from tests.conftest import run_on_source
from tests.integration.conftest import target_url
from tests.integration.test_consume import consume_cmd, consumer_env
from tests.integration.test_replicate import Replication

ROWS = 30
UNREACHABLE = "postgresql://postgres:postgres@127.0.0.1:1/inventory"


def _create(stack: Stack, schema: str) -> None:
    s = f'"{schema}"'
    run_on_source(
        stack,
        f"CREATE SCHEMA {s}",
        f"CREATE TABLE {s}.docs (id integer PRIMARY KEY, n integer NOT NULL, big text NOT NULL)",
        f"ALTER TABLE {s}.docs ALTER COLUMN big SET STORAGE EXTERNAL",
        f"INSERT INTO {s}.docs SELECT i, 0, i || ':' || repeat(md5(i::text), 200) FROM generate_series(1, {ROWS}) i",
    )


def _changes(stack: Stack, schema: str) -> None:
    """Updates leaving ``big`` unchanged: of rows the target lacks (1-5), key updates (6-10 -> 106-110),
    a key updated twice (12 -> 112 -> 212), a row updated then deleted (11)."""
    s = f'"{schema}"'
    run_on_source(
        stack,
        f"UPDATE {s}.docs SET n = n + 1 WHERE id <= 5",
        f"UPDATE {s}.docs SET id = id + 100 WHERE id BETWEEN 6 AND 10",
        f"UPDATE {s}.docs SET id = 112 WHERE id = 12",
        f"UPDATE {s}.docs SET id = 212, n = 7 WHERE id = 112",
        f"UPDATE {s}.docs SET n = 9 WHERE id = 11",
        f"DELETE FROM {s}.docs WHERE id = 11",
        f"UPDATE {s}.docs SET big = 'changed' WHERE id = 13",  # a changed TOAST value is carried
    )


def _target_table(url: str, schema: str) -> tuple[str | None, str]:
    return (schema, "docs") if url.startswith("postgresql") else (None, f"{schema}_docs")


def _assert_same(stack: Stack, url: str, schema: str) -> None:
    source = create_target_engine(stack.settings.source_url)
    target = create_target_engine(url)
    try:
        diff = compare_tables(source, (schema, "docs"), target, _target_table(url, schema))
        assert diff.source_rows > 0
        assert diff.equal, f"missing {diff.missing[:10]} extra {diff.extra[:10]} changed {diff.changed[:10]}"
    finally:
        source.dispose()
        target.dispose()


def _incomplete(url: str) -> list[fetch.IncompleteRow]:
    engine = create_target_engine(url)
    try:
        with engine.connect() as conn:
            return fetch.incomplete_rows(conn)
    finally:
        engine.dispose()


def _drop_target_rows(url: str, schema: str, ids: range) -> None:
    engine = create_target_engine(url)
    try:
        with engine.begin() as conn:
            sch, name = _target_table(url, schema)
            t = sa.table(name, sa.column("id"), schema=sch)
            conn.execute(sa.delete(t).where(t.c.id.in_(list(ids))))
    finally:
        engine.dispose()


@pytest.fixture
def captured(stack: Stack, debezium: Any, unique: str) -> Iterator[str]:
    _create(stack, unique)
    debezium(unique, f"{unique}.docs", **{"column.propagate.source.type": ".*"})
    yield unique
    run_on_source(stack, f'DROP SCHEMA IF EXISTS "{unique}" CASCADE')


def _consume(url: str, group: str, schema: str, tmp_path: Path, source: str | None = None) -> None:
    settings = {} if source is None else {"STREAMER_SOURCE_URL": source}
    settings["STREAMER_CONNECTORS_DIR"] = str(tmp_path / "no-connectors")
    done = subprocess.run(
        consume_cmd(group, rf"^{schema}\.{schema}\.docs$", "--until-idle", "6"),
        env=consumer_env(url, **settings),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize("kind", ["postgresql", "mariadb"])
def test_consume_reads_missing_toast_values_from_therun_on_source(
    stack: Stack, captured: str, tmp_path: Path, kind: str
) -> None:
    """Rows the target lacks and key updates leaving ``big`` unchanged land complete: whole tables equal."""
    schema = captured
    url = target_url(kind, stack, tmp_path)
    if kind == "mariadb":
        from tests.integration.conftest import _mariadb_engine

        _mariadb_engine().dispose()
    group = f"{schema}-fetch"
    _consume(url, group, schema, tmp_path)
    _assert_same(stack, url, schema)
    _drop_target_rows(url, schema, range(1, 6))  # the target lacks these rows from here on
    _changes(stack, schema)
    _consume(url, group, schema, tmp_path)
    _assert_same(stack, url, schema)
    assert [r for r in _incomplete(url) if r.table.endswith("docs") and schema in r.table] == []


def test_unreadable_source_records_keys_incomplete_then_completes_them(
    stack: Stack, captured: str, tmp_path: Path
) -> None:
    """With the source unreachable the rows lacking values are not written (never NULL), their keys are
    recorded and reported by `streamer status` and `streamer validate`; once the source is readable a
    later change of those rows completes them and clears the record."""
    schema = captured
    url = stack.settings.target_url
    group = f"{schema}-nosrc"
    _consume(url, group, schema, tmp_path, UNREACHABLE)
    _drop_target_rows(url, schema, range(1, 3))
    run_on_source(
        stack,
        f'UPDATE "{schema}".docs SET n = n + 1 WHERE id <= 2',
        f'UPDATE "{schema}".docs SET id = id + 100 WHERE id BETWEEN 6 AND 7',
    )
    _consume(url, group, schema, tmp_path, UNREACHABLE)
    mine = [r for r in _incomplete(url) if r.table == f"{schema}.docs"]
    assert sorted(r.key for r in mine) == [["1"], ["106"], ["107"], ["2"]]
    assert {tuple(r.columns) for r in mine} == {("big",)}
    assert all("cannot connect to the source" in r.reason for r in mine), mine[0].reason
    engine = create_target_engine(url)
    try:
        with engine.connect() as conn:
            t = sa.table("docs", sa.column("id"), sa.column("big"), schema=schema)
            ids = {r.id for r in conn.execute(sa.select(t.c.id).where(t.c.id.in_([1, 2, 106, 107])))}
            assert ids == set(), "rows without their values must not be written"
            assert (
                conn.execute(sa.select(sa.func.count()).select_from(t).where(t.c.big.is_(None))).scalar() == 0
            )
    finally:
        engine.dispose()
    env = consumer_env(url, STREAMER_CONNECTORS_DIR=str(tmp_path / "no-connectors"))
    status = subprocess.run(
        [sys.executable, "-m", "streamer.cli", "status", "--json", "--group", group],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    doc = json.loads(status.stdout)
    keys = sorted(r["key"] for r in doc["target"]["incomplete"] if r["table"] == f"{schema}.docs")
    assert keys == [["1"], ["106"], ["107"], ["2"]], status.stdout[-2000:]
    validate = subprocess.run(
        [sys.executable, "-m", "streamer.cli", "validate", "--table", f"{schema}.docs", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert validate.returncode == 1, validate.stderr[-2000:]
    vdoc = json.loads(validate.stdout)
    assert sorted(r["key"] for r in vdoc["incomplete"]) == [["1"], ["106"], ["107"], ["2"]]
    # the source readable again: a later change of each row completes it
    run_on_source(stack, f'UPDATE "{schema}".docs SET n = n + 10 WHERE id IN (1, 2, 106, 107)')
    _consume(url, group, schema, tmp_path)
    _assert_same(stack, url, schema)
    assert [r for r in _incomplete(url) if r.table == f"{schema}.docs"] == []


def test_replicate_reads_missing_toast_values_from_itsrun_on_source(
    stack: Stack, unique: str, tmp_path: Path
) -> None:
    """`streamer replicate` goes through the same hook with its --source: key updates and rows the
    target lacks land complete."""
    repl = Replication(stack, unique)
    try:
        schema = repl.schema()
        slot = repl.slot()
        _create(stack, schema)
        url = stack.settings.target_url
        base = [sys.executable, "-m", "streamer.cli", "replicate", "--slot", slot, "--publication", schema]
        env = consumer_env(url, STREAMER_SOURCE_URL=UNREACHABLE)  # only --source may be read
        setup = subprocess.run(
            [
                *base,
                "--source",
                stack.settings.source_url,
                "--create",
                "--tables",
                f"{schema}.docs",
                "--max-events",
                "0",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert setup.returncode == 0, setup.stderr[-3000:]
        # the slot starts after the rows: the target has none of them, the changes say what to fetch
        _changes(stack, schema)
        run_on_source(
            stack,
            f'INSERT INTO "{schema}".docs SELECT i, 0, repeat(md5(i::text), 100) FROM generate_series(500, 505) i',
        )
        done = subprocess.run(
            [*base, "--source", stack.settings.source_url, "--until-idle", "4"],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        source = create_target_engine(stack.settings.source_url)
        target = create_target_engine(url)
        try:
            t = sa.table("docs", sa.column("id"), sa.column("n"), sa.column("big"), schema=schema)
            changed = [1, 2, 3, 4, 5, 106, 107, 108, 109, 110, 212, 13, *range(500, 506)]
            query = sa.select(t.c.id, t.c.n, t.c.big).order_by(t.c.id)
            with source.connect() as sc, target.connect() as tc:
                want = sc.execute(query.where(t.c.id.in_(changed))).all()
                got = tc.execute(query).all()
            assert len(want) == len(changed)
            assert got == want  # the whole target table: exactly the changed rows, complete
        finally:
            source.dispose()
            target.dispose()
        assert [r for r in _incomplete(url) if r.table == f"{schema}.docs"] == []
    finally:
        repl.cleanup()
