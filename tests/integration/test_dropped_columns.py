"""Columns the capture drops (issue 13 item 2): `connectors validate` and `plan` name every captured column
whose type Debezium 3.1 sends no field for, with the choices; excluded columns are not named."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest

from streamer.stack.local import Stack
from tests.conftest import debezium_config


@pytest.fixture
def typed(stack: Stack, unique: str) -> Iterator[str]:
    conn = psycopg2.connect(stack.settings.source_url)
    conn.autocommit = True
    s = f'"{unique}"'
    with conn.cursor() as cur:
        cur.execute(f"CREATE SCHEMA {s}")
        cur.execute(f"CREATE TYPE {s}.pair AS (a integer, b text)")
        cur.execute(
            f"CREATE TABLE {s}.doc (id integer PRIMARY KEY, body text, search tsvector, q tsquery, "
            f"pos pg_lsn, pair {s}.pair, words tsvector[], rel regclass, ip inet, skipped tsvector)"
        )
    yield unique
    with conn.cursor() as cur:
        cur.execute(f"DROP SCHEMA {s} CASCADE")
    conn.close()


def test_validate_and_plan_name_columns_the_capture_drops(stack: Stack, typed: str, tmp_path: Path) -> None:
    schema = typed
    workdir = tmp_path / schema
    workdir.mkdir()
    config = debezium_config(
        stack, schema, f"{schema}.doc", **{"column.exclude.list": rf"{schema}\.doc\.skipped"}
    )
    (workdir / "c.json").write_text(json.dumps({"name": schema, "config": config}))
    for command in ("validate", "plan"):
        done = subprocess.run(
            [sys.executable, "-m", "streamer.cli", "connectors", command, "--dir", str(workdir)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        named = sorted(
            line.split(" column ", 1)[1].split(" is not captured")[0]
            for line in done.stdout.splitlines()
            if line.startswith(f"! {schema}: column ")
        )
        table = f"{schema}.doc"
        assert named == sorted(
            [
                f"{table}.pair ({schema}.pair)",
                f"{table}.pos (pg_lsn)",
                f"{table}.q (tsquery)",
                f"{table}.rel (regclass)",
                f"{table}.search (tsvector)",
                f"{table}.words (tsvector[])",
            ]
        ), done.stdout
        line = next(x for x in done.stdout.splitlines() if f"{table}.search" in x)
        assert "column.exclude.list" in line and "managed table" in line
