"""Stored generated columns at the source (issue 13 item 3): `streamer load` and the stream skip them where
the target computes them (managed: a generated column there too) and carry their values where the
target has a plain column (auto: the loader copies them, the stream reads them from the source by key,
since pgoutput does not send them). Every test compares whole tables."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from streamer.db import create_target_engine
from streamer.stack.local import Stack
from streamer.validate import compare_tables
from tests.conftest import run_on_source
from tests.integration.test_consume import consume_cmd, consumer_env
from tests.integration.test_replicate import Replication, run


def _create(stack: Stack, schema: str) -> None:
    s = f'"{schema}"'
    run_on_source(
        stack,
        f"CREATE SCHEMA IF NOT EXISTS {s}",
        f"CREATE TABLE {s}.g (id integer PRIMARY KEY, a integer NOT NULL, label text, "
        "doubled integer GENERATED ALWAYS AS (a * 2) STORED, "
        "tag text GENERATED ALWAYS AS (upper(label)) STORED)",
        f"INSERT INTO {s}.g (id, a, label) SELECT i, i, 'row ' || i FROM generate_series(1, 40) i",
    )


def _changes(stack: Stack, schema: str) -> None:
    s = f'"{schema}"'
    run_on_source(
        stack,
        f"INSERT INTO {s}.g (id, a, label) SELECT i, i * 3, 'new ' || i FROM generate_series(100, 110) i",
        f"UPDATE {s}.g SET a = a + 1000 WHERE id % 3 = 0",
        f"UPDATE {s}.g SET label = 'relabelled' WHERE id % 5 = 0",
        f"UPDATE {s}.g SET id = id + 500 WHERE id IN (7, 104)",  # a key update: every value read anew
        f"DELETE FROM {s}.g WHERE id % 7 = 1",
    )


def _managed_target(url: str, schema: str) -> None:
    engine = create_target_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
            conn.execute(
                sa.text(
                    f'CREATE TABLE "{schema}".g (id integer PRIMARY KEY, a integer NOT NULL, label text, '
                    "doubled integer GENERATED ALWAYS AS (a * 2) STORED, "
                    "tag text GENERATED ALWAYS AS (upper(label)) STORED, _streamer_version varchar(40))"
                )
            )
    finally:
        engine.dispose()


def _load(stack: Stack, url: str, schema: str, env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "streamer.cli", "load", f"--table={schema}.g"],
        env=consumer_env(url, **env),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def _assert_same(stack: Stack, url: str, schema: str) -> None:
    source = create_target_engine(stack.settings.source_url)
    target = create_target_engine(url)
    try:
        diff = compare_tables(source, (schema, "g"), target, (schema, "g"))
        assert diff.source_rows > 0
        assert diff.equal, f"missing {diff.missing[:10]} extra {diff.extra[:10]} changed {diff.changed[:10]}"
        with target.connect() as conn:  # the generated values are really there, not NULL on both sides
            t = sa.table("g", sa.column("doubled"), sa.column("tag"), schema=schema)
            nulls = conn.execute(
                sa.select(sa.func.count())
                .select_from(t)
                .where(sa.or_(t.c.doubled.is_(None), t.c.tag.is_(None)))
            ).scalar()
            assert nulls == 0
    finally:
        source.dispose()
        target.dispose()


@pytest.mark.parametrize("mode", ["auto", "managed"])
def test_load_and_replicate_a_table_with_generated_columns(stack: Stack, unique: str, mode: str) -> None:
    repl = Replication(stack, unique)
    url = stack.settings.target_url
    env = {"STREAMER_CONSUMER__SCHEMA_MODE": mode}
    try:
        schema = repl.schema()
        slot = repl.slot()
        _create(stack, schema)
        if mode == "managed":
            _managed_target(url, schema)
        made = run(slot, schema, url, "--create", "--tables", f"{schema}.g", "--max-events", "0", env=env)
        assert made.returncode == 0, made.stderr[-3000:]
        _load(stack, url, schema, env)
        _assert_same(stack, url, schema)
        _changes(stack, schema)
        done = run(slot, schema, url, "--until-idle", "4", env=env, timeout=180)
        assert done.returncode == 0, done.stderr[-3000:]
        _assert_same(stack, url, schema)
    finally:
        repl.cleanup()


@pytest.mark.parametrize("mode", ["auto", "managed"])
def test_load_and_consume_a_table_with_generated_columns(
    stack: Stack, debezium: Any, unique: str, tmp_path: Path, mode: str
) -> None:
    schema = unique
    url = stack.settings.target_url
    env = {"STREAMER_CONSUMER__SCHEMA_MODE": mode, "STREAMER_CONNECTORS_DIR": str(tmp_path / "none")}
    try:
        _create(stack, schema)
        if mode == "managed":
            _managed_target(url, schema)
        debezium(unique, f"{schema}.g", **{"snapshot.mode": "no_data", "column.propagate.source.type": ".*"})
        _load(stack, url, schema, env)
        _assert_same(stack, url, schema)
        _changes(stack, schema)
        done = subprocess.run(
            consume_cmd(f"{unique}-gen", rf"^{unique}\.{schema}\.g$", "--until-idle", "6"),
            env=consumer_env(url, **env),
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        _assert_same(stack, url, schema)
    finally:
        run_on_source(stack, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _target_rows(url: str, schema: str) -> set[tuple[Any, ...]]:
    engine = create_target_engine(url)
    try:
        with engine.connect() as conn:
            return {
                tuple(r)
                for r in conn.execute(
                    sa.text(f'SELECT id, a, label, doubled, tag, _streamer_version FROM "{schema}".g')
                )
            }
    finally:
        engine.dispose()


def test_generated_values_the_source_refuses_stop_by_name(
    stack: Stack, debezium: Any, unique: str, tmp_path: Path
) -> None:
    """Auto mode, and the consumer's source role may read the catalog but not the table: the
    generated values cannot be read, so the batch stops with GeneratedColumnError (no traceback)
    and commits nothing; with a source it can read, the same records apply and the tables match."""
    schema, role = unique, f"{unique}_nosel"
    url = stack.settings.target_url
    env = {"STREAMER_CONSUMER__SCHEMA_MODE": "auto", "STREAMER_CONNECTORS_DIR": str(tmp_path / "none")}
    s = stack.settings.stack
    try:
        _create(stack, schema)
        run_on_source(
            stack,
            f"CREATE ROLE \"{role}\" LOGIN PASSWORD 'nosel'",
            f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"',  # the catalog yes, the rows no
        )
        debezium(unique, f"{schema}.g", **{"snapshot.mode": "no_data", "column.propagate.source.type": ".*"})
        _load(stack, url, schema, env)
        _assert_same(stack, url, schema)
        loaded = _target_rows(url, schema)
        _changes(stack, schema)
        cmd = consume_cmd(f"{unique}-gen", rf"^{unique}\.{schema}\.g$", "--until-idle", "6")
        refused = subprocess.run(
            cmd,
            env=consumer_env(
                url,
                STREAMER_SOURCE_URL=f"postgresql://{role}:nosel@{s.host}:{s.source_port}/{s.source_database}",
                **env,
            ),
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert refused.returncode == 1, refused.stderr[-3000:]
        last = refused.stderr.strip().splitlines()[-1]  # the one line for the terminal
        assert last.startswith("streamer: stopped on a record: "), refused.stderr[-3000:]
        for part in ("GeneratedColumnError", f"{schema}.g", "doubled, tag", "permission denied", "next: "):
            assert part in last, last
        assert _target_rows(url, schema) == loaded  # the stopped batch wrote nothing
        done = subprocess.run(cmd, env=consumer_env(url, **env), capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stderr[-3000:]
        _assert_same(stack, url, schema)
    finally:
        run_on_source(
            stack,
            f'DROP SCHEMA IF EXISTS "{schema}" CASCADE',
            f'DROP ROLE IF EXISTS "{role}"',
        )
