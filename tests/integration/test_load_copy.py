"""The loader's PostgreSQL COPY path: source COPY piped into target COPY, binary where types allow.

Each test compares whole tables (every row, every column as text) between source and target.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg2
import psycopg2.errors
import pytest

from streamer.apply.sink import Sink, build_sink
from streamer.load.loader import Loader, _pipe_copy, describe_source, plan_from_statistics
from streamer.settings import load_settings
from streamer.stack.local import Stack
from tests.conftest import run_on_source, source_connection

BUILTIN_COLUMNS = (
    "id bigint PRIMARY KEY, n numeric(12, 3), t text NOT NULL, b bytea, ts timestamptz, j jsonb, "
    "a int[], iv interval, u uuid, f double precision, v varchar(20), d date, ok boolean"
)
BUILTIN_ROWS = (
    "SELECT g, g / 7.0, 'row ' || g || E'\\ttab\\\\slash', decode(md5(g::text), 'hex'), "
    "timestamptz '2024-03-01 12:00:00+00' + g * interval '37 seconds', "
    "jsonb_build_object('g', g, 'x', ARRAY[g, g + 1]), ARRAY[g, NULL, -g], g * interval '1 minute', "
    "md5(g::text)::uuid, CASE g % 500 WHEN 0 THEN 'NaN'::float8 WHEN 1 THEN '-Infinity' ELSE g / 3.0 END, "
    "left('v' || g, 20), date '2000-01-01' + g, g % 2 = 0 FROM generate_series(1, {n}) g"
)


@pytest.fixture
def sink(stack: Stack) -> Iterator[Sink]:
    s = build_sink(load_settings(overrides={"target_url": stack.settings.target_url}))
    yield s
    s.engine.dispose()


def _target(stack: Stack) -> Any:
    conn = psycopg2.connect(stack.settings.target_url)
    conn.autocommit = True
    return conn


def _rows(conn: Any, table: str, columns: str) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(f"SELECT {columns} FROM {table} ORDER BY id")
        return list(cur.fetchall())


def _text_columns(names: str) -> str:
    return ", ".join(f"{c.strip()}::text" for c in names.split(","))


def _plain(stack: Stack, schema: str, rows: int, *more: str) -> None:
    """A source table ``plain`` of built-in types with ``rows`` rows, then ``more`` statements."""
    run_on_source(
        stack,
        f'CREATE TABLE "{schema}".plain ({BUILTIN_COLUMNS})',
        f'INSERT INTO "{schema}".plain ' + BUILTIN_ROWS.format(n=rows),
        *more,
    )


@pytest.fixture
def tables(stack: Stack, unique: str) -> Iterator[str]:
    run_on_source(stack, f'CREATE SCHEMA "{unique}"')
    yield unique
    run_on_source(stack, f'DROP SCHEMA IF EXISTS "{unique}" CASCADE')
    target = _target(stack)
    with target.cursor() as cur:
        cur.execute(f'DROP SCHEMA IF EXISTS "{unique}" CASCADE')
        cur.execute("DELETE FROM _streamer_loads WHERE table_name LIKE %s", (f"{unique}.%",))
        cur.execute("DELETE FROM _streamer_load_chunks WHERE table_name LIKE %s", (f"{unique}.%",))
    target.close()


def test_builtin_types_go_binary_and_user_types_go_text_both_equal_to_the_source(
    stack: Stack, sink: Sink, tables: str
) -> None:
    schema = tables
    _plain(
        stack,
        schema,
        25_000,
        f"CREATE TYPE \"{schema}\".mood AS ENUM ('sad', 'ok', 'happy')",
        f'CREATE TABLE "{schema}".moods (id int PRIMARY KEY, m "{schema}".mood, t text)',
        f"INSERT INTO \"{schema}\".moods SELECT g, (ARRAY['sad', 'ok', 'happy'])[1 + g % 3]::\"{schema}\".mood, "
        f"'t' || g FROM generate_series(1, 3000) g",
    )
    target = _target(stack)
    with target.cursor() as cur:
        cur.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    loader = Loader(stack.settings.source_url, sink, workers=2, chunk_rows=4_000)
    plain, moods = loader.run([f"{schema}.plain", f"{schema}.moods"])
    assert loader._binary[f"{schema}.plain"] is not None  # every column built in: binary
    assert loader._binary[f"{schema}.moods"] is None  # an enum: text
    assert (plain.rows, moods.rows) == (25_000, 3_000)
    assert plain.swept == 0 and plain.phases["sweep"] >= 0 and plain.phases["copy"] > 0
    src = source_connection(stack)
    try:
        plain_cols = _text_columns("id, n, t, b, ts, j, a, iv, u, f, v, d, ok")
        assert _rows(target, f'"{schema}".plain', plain_cols) == _rows(src, f'"{schema}".plain', plain_cols)
        mood_cols = _text_columns("id, m, t")
        assert _rows(target, f'"{schema}".moods', mood_cols) == _rows(src, f'"{schema}".moods', mood_cols)
    finally:
        src.close()
        target.close()


def test_a_row_written_after_the_empty_check_turns_the_copy_into_a_merge_and_a_sweep(
    stack: Stack, sink: Sink, tables: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race the straight COPY cannot win: a key lands in the table after it was found empty.

    The chunk's COPY then fails on the key, the chunk is read again (same snapshot) into a stage
    and merged, and since a merge happened the sweep runs: a row the source never had goes.
    """
    schema = tables
    _plain(stack, schema, 9_000)
    target = _target(stack)
    with target.cursor() as cur:
        cur.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    loader = Loader(stack.settings.source_url, sink, workers=2, chunk_rows=2_000)
    ensure = Loader._ensure_target

    def ensure_then_race(self: Loader, *args: Any) -> Any:
        made = ensure(self, *args)
        with target.cursor() as cur:  # a stale row for a key the source has, and one it never had
            cur.execute(
                f"INSERT INTO \"{schema}\".plain (id, t, _streamer_version) VALUES (4321, 'stale', NULL)"
            )
            cur.execute(
                f"INSERT INTO \"{schema}\".plain (id, t, _streamer_version) VALUES (-1, 'ghost', NULL)"
            )
        return made

    monkeypatch.setattr(Loader, "_ensure_target", ensure_then_race)
    monkeypatch.setattr(Loader, "_is_empty", lambda self, route: True)  # it was, a moment ago
    (report,) = loader.run([f"{schema}.plain"])
    assert f"{schema}.plain" in loader._merged
    assert report.rows == 9_000 and report.swept == 1
    src = source_connection(stack)
    try:
        cols = _text_columns("id, n, t, b, ts, j, a, iv, u, f, v, d, ok")
        assert _rows(target, f'"{schema}".plain', cols) == _rows(src, f'"{schema}".plain', cols)
    finally:
        src.close()
        target.close()


def test_a_failing_write_leaves_the_source_usable_and_a_failing_read_commits_nothing(
    stack: Stack, tables: str
) -> None:
    schema = tables
    target = psycopg2.connect(stack.settings.target_url)
    src = source_connection(stack)
    try:
        with target.cursor() as cur:
            cur.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            cur.execute(f'CREATE TABLE "{schema}".p (id int PRIMARY KEY, x int)')
            cur.execute(f'INSERT INTO "{schema}".p VALUES (40000, 0)')
        target.commit()
        rows = "SELECT g, g FROM generate_series(1, 100000) g"
        with target.cursor() as cur, pytest.raises(psycopg2.errors.UniqueViolation):
            _pipe_copy(src, rows, cur, f'COPY "{schema}".p (id, x) FROM STDIN')
        target.rollback()
        with src.cursor() as cur:  # the read ended its COPY: the connection takes the next command
            cur.execute("SELECT 41")
            assert cur.fetchone() == (41,)
        broken = "SELECT g, 1 / (g - 70000) FROM generate_series(50001, 100000) g"
        with target.cursor() as cur, pytest.raises(psycopg2.errors.DivisionByZero):
            _pipe_copy(src, broken, cur, f'COPY "{schema}".p (id, x) FROM STDIN')
        target.rollback()
        with target.cursor() as cur:
            cur.execute(f'SELECT id, x FROM "{schema}".p ORDER BY id')
            assert cur.fetchall() == [(40000, 0)]
    finally:
        src.close()
        target.close()


def test_fresh_statistics_plan_the_chunks_without_a_scan_and_stale_ones_do_not(
    stack: Stack, sink: Sink, tables: str
) -> None:
    schema = tables
    _plain(stack, schema, 30_000, f'ANALYZE "{schema}".plain')
    src = source_connection(stack)
    try:
        with src.cursor() as cur:
            described = describe_source(src, schema, "plain")
            planned = plan_from_statistics(cur, described, 4_000)
        assert planned is not None
        chunks, estimate = planned
        assert 7 <= len(chunks) <= 9 and 27_000 <= estimate <= 33_000
        target = _target(stack)
        with target.cursor() as cur:
            cur.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        (report,) = Loader(stack.settings.source_url, sink, workers=2, chunk_rows=4_000).run(
            [f"{schema}.plain"]
        )
        assert report.rows == 30_000 and report.chunks == len(chunks)
        cols = _text_columns("id, n, t, b, ts, j, a, iv, u, f, v, d, ok")
        assert _rows(target, f'"{schema}".plain', cols) == _rows(src, f'"{schema}".plain', cols)
        target.close()
        # the table grew threefold since ANALYZE: its statistics no longer say where the keys are
        run_on_source(
            stack,
            f'INSERT INTO "{schema}".plain '
            + BUILTIN_ROWS.format(n=90_000).replace("generate_series(1,", "generate_series(30001,"),
        )
        with src.cursor() as cur:
            assert plan_from_statistics(cur, described, 4_000) is None
    finally:
        src.close()
