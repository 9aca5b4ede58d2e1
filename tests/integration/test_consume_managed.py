"""Real Debezium pipelines into user-migrated targets and with flattened records.

* A PostgreSQL target table created by hand (NOT NULL columns, ``schema_mode=managed``) takes the
  source's deletes and updates that leave a TOASTed NOT NULL column unchanged.
* ``ExtractNewRecordState`` without the position in ``add.fields``: the consumer stops naming the
  record and the setting, instead of dropping later changes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from streamer.db import create_target_engine
from streamer.stack.local import Stack
from tests.integration.test_consume import run_consumer

VERSION = "_streamer_version"


def _source_table(stack: Stack, schema: str) -> None:
    with create_target_engine(stack.settings.source_url).begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        conn.execute(
            sa.text(
                f'CREATE TABLE "{schema}".docs (id BIGINT PRIMARY KEY, title VARCHAR(40) NOT NULL, '
                "qty INTEGER NOT NULL, body TEXT NOT NULL)"
            )
        )
        # ~25 kB of md5 text: stored out of line (TOAST), so an update not touching it leaves it out
        conn.execute(
            sa.text(
                f"INSERT INTO \"{schema}\".docs SELECT i, 't' || i, i, "
                "(SELECT string_agg(md5((i * 1000 + j)::text), '') FROM generate_series(1, 800) j) "
                "FROM generate_series(1, 6) i"
            )
        )


def _drop_source(stack: Stack, schema: str) -> None:
    with create_target_engine(stack.settings.source_url).begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


def _rows(url: str, schema: str) -> dict[int, tuple[Any, ...]]:
    engine = create_target_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text(f'SELECT id, title, qty, body FROM "{schema}".docs'))
            return {r[0]: tuple(r[1:]) for r in rows}
    finally:
        engine.dispose()


def test_managed_not_null_target_takes_deletes_and_toast_unchanged_updates(
    stack: Stack, debezium: Callable[..., dict[str, Any]], unique: str
) -> None:
    schema = unique
    url = stack.settings.target_url
    _source_table(stack, schema)
    try:
        target = create_target_engine(url)
        with target.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
            conn.execute(
                sa.text(
                    f'CREATE TABLE "{schema}".docs (id BIGINT PRIMARY KEY, title VARCHAR(40) NOT NULL, '
                    f"qty INTEGER NOT NULL, body TEXT NOT NULL, {VERSION} TEXT)"
                )
            )
        target.dispose()
        debezium(schema, f"{schema}.docs")
        with create_target_engine(stack.settings.source_url).begin() as conn:
            conn.execute(
                sa.text(f"UPDATE \"{schema}\".docs SET title = 'changed', qty = qty + 10 WHERE id IN (1, 2)")
            )
            conn.execute(sa.text(f'DELETE FROM "{schema}".docs WHERE id IN (3, 4)'))
            conn.execute(sa.text(f'UPDATE "{schema}".docs SET qty = 99 WHERE id = 5'))
            conn.execute(sa.text(f'DELETE FROM "{schema}".docs WHERE id = 5'))
        done = run_consumer(
            f"{schema}-managed",
            rf"^{schema}\.{schema}\.docs$",
            url,
            "--until-idle",
            "10",
            STREAMER_CONSUMER__SCHEMA_MODE="managed",
        )
        assert done.returncode == 0, done.stderr[-3000:]
        source = create_target_engine(stack.settings.source_url)
        with source.connect() as conn:
            expected = {
                r[0]: tuple(r[1:])
                for r in conn.execute(sa.text(f'SELECT id, title, qty, body FROM "{schema}".docs'))
            }
        source.dispose()
        assert sorted(expected) == [1, 2, 6] and expected[1][0] == "changed"
        assert _rows(url, schema) == expected
    finally:
        _drop_source(stack, schema)


def test_flattened_records_without_a_position_stop_the_consumer_naming_the_setting(
    stack: Stack, debezium: Callable[..., dict[str, Any]], unique: str
) -> None:
    schema = unique
    url = stack.settings.target_url
    _source_table(stack, schema)
    try:
        debezium(
            schema,
            f"{schema}.docs",
            **{
                "transforms": "unwrap",
                "transforms.unwrap.type": "io.debezium.transforms.ExtractNewRecordState",
                "transforms.unwrap.add.fields": "op,table",
            },
        )
        done = run_consumer(f"{schema}-flat", rf"^{schema}\.{schema}\.docs$", url, "--until-idle", "10")
        assert done.returncode != 0
        assert "MissingPositionError" in done.stderr or "no log position" in done.stderr, done.stderr[-3000:]
        assert "add.fields" in done.stderr and "lsn" in done.stderr
        engine = create_target_engine(url)
        with engine.connect() as conn:
            assert not sa.inspect(conn).has_table("docs", schema=schema)  # nothing applied before it
        engine.dispose()
    finally:
        _drop_source(stack, schema)
