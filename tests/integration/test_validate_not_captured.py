"""`streamer validate` reports columns the capture cannot carry as "not captured".

A source table keeps a ``tsvector`` with its own trigger; ``streamer load`` copies it into a
PostgreSQL target. Then a change is written to the target as the stream writes it (Debezium sends
no field for the ``tsvector``, so only the title changes there while the source's trigger
recomputed the ``tsvector``). validate must list the column as not captured (plain lines, JSON),
compare the other columns (equal: exit 0, a warning; ``--strict``: exit 1), still find a planted
difference in another column, and compare the column as usual once the target computes it itself
(a trigger of its own on the target table).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from streamer.db import create_target_engine
from streamer.stack.local import Stack
from tests.integration.test_consume import run_consumer

TRIGGER = (
    "CREATE TRIGGER docs_fts BEFORE INSERT OR UPDATE ON {t} FOR EACH ROW "
    "EXECUTE FUNCTION tsvector_update_trigger(fulltext, 'pg_catalog.english', title, body)"
)


def streamer(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STREAMER_TARGET_URL": url, "STREAMER_LOG_FORMAT": "json"}
    return subprocess.run(
        [sys.executable, "-m", "streamer.cli", *args], env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture
def docs(stack: Stack, unique: str) -> Iterator[str]:
    """``<unique>.docs`` at the source, loaded into the stack's PostgreSQL target."""
    source = create_target_engine(stack.settings.source_url)
    t = f'"{unique}".docs'
    with source.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{unique}"'))
        conn.execute(
            sa.text(
                f"CREATE TABLE {t} (id bigint PRIMARY KEY, title text NOT NULL, body text, fulltext tsvector)"
            )
        )
        conn.execute(sa.text(TRIGGER.format(t=t)))
        conn.execute(
            sa.text(
                f"INSERT INTO {t} (id, title, body) SELECT g, 'title ' || g, 'the quick brown fox ' || g "
                "FROM generate_series(1, 50) g"
            )
        )
    loaded = streamer("load", "--table", f"{unique}.docs", url=stack.settings.target_url)
    assert loaded.returncode == 0, loaded.stderr
    yield unique
    with source.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{unique}" CASCADE'))
    source.dispose()


def test_a_column_the_capture_drops_is_not_captured_not_different(stack: Stack, docs: str) -> None:
    url = stack.settings.target_url
    t = f'"{docs}".docs'
    source = create_target_engine(stack.settings.source_url)
    target = create_target_engine(url)
    try:
        # the change at the source (its trigger recomputes fulltext) and as the stream writes it
        with source.begin() as conn:
            conn.execute(sa.text(f"UPDATE {t} SET title = 'renamed seven' WHERE id = 7"))
        with target.begin() as conn:
            conn.execute(sa.text(f"UPDATE {t} SET title = 'renamed seven' WHERE id = 7"))
            stale = conn.execute(sa.text(f"SELECT fulltext::text FROM {t} WHERE id = 7")).scalar_one()
        with source.connect() as conn:
            fresh = conn.execute(sa.text(f"SELECT fulltext::text FROM {t} WHERE id = 7")).scalar_one()
        assert stale != fresh  # the column really differs: compared, it would be a difference

        plain = streamer("validate", "--table", f"{docs}.docs", url=url)
        assert plain.returncode == 0, plain.stdout + plain.stderr
        lines = plain.stdout.splitlines()
        assert [line for line in lines if line.startswith("DIFF")] == []
        assert [line.split(":", 1)[0] for line in lines if line.startswith("NOT_CAPTURED")] == [
            f"NOT_CAPTURED table={docs}.docs column=fulltext type=tsvector"
        ]
        assert f"column.exclude.list: {docs}.docs.fulltext" in plain.stdout
        assert lines[-1] == "RESULT equal tables=1 different=0 not_captured=1"
        assert f"warning: {docs}.docs.fulltext is not captured" in plain.stderr

        strict = streamer("validate", "--table", f"{docs}.docs", "--strict", url=url)
        assert strict.returncode == 1, strict.stdout + strict.stderr
        assert f"error: {docs}.docs.fulltext is not captured" in strict.stderr

        # a planted difference in another column is still found
        with target.begin() as conn:
            conn.execute(sa.text(f"UPDATE {t} SET body = 'planted' WHERE id = 12"))
        found = streamer("validate", "--table", f"{docs}.docs", "--json", url=url)
        assert found.returncode == 1, found.stderr
        doc = json.loads(found.stdout)
        (table,) = doc["tables"]
        assert doc["ok"] is False and table["equal"] is False
        assert table["changed"] == [{"key": {"id": 12}, "columns": ["body"]}]
        assert [(c["column"], c["type"]) for c in table["not_captured"]] == [("fulltext", "tsvector")]
        assert "column.exclude.list" in table["not_captured"][0]["fix"]

        # once the target computes the column (its own trigger), it is compared like any other (the
        # loader made it text: auto mode maps types it does not know to text)
        with target.begin() as conn:
            conn.execute(
                sa.text(f"ALTER TABLE {t} ALTER COLUMN fulltext TYPE tsvector USING fulltext::tsvector")
            )
            conn.execute(sa.text(TRIGGER.format(t=t)))
            conn.execute(sa.text(f"UPDATE {t} SET body = 'the quick brown fox 12' WHERE id = 12"))
        computed = streamer("validate", "--table", f"{docs}.docs", "--json", url=url)
        doc = json.loads(computed.stdout)
        (table,) = doc["tables"]
        assert table["not_captured"] == []
        # row 7's fulltext is still the stale one the stream left: now a real difference, found
        assert table["changed"] == [{"key": {"id": 7}, "columns": ["fulltext"]}]
        with target.begin() as conn:
            conn.execute(sa.text(f"UPDATE {t} SET title = title WHERE id = 7"))  # the trigger recomputes it
        again = streamer("validate", "--table", f"{docs}.docs", "--json", url=url)
        assert again.returncode == 0, again.stdout + again.stderr
        assert json.loads(again.stdout)["tables"][0]["not_captured"] == []
    finally:
        source.dispose()
        target.dispose()


def test_streamed_through_debezium_the_column_stays_stale_and_is_not_captured(
    stack: Stack, debezium: Callable[..., dict[str, Any]], docs: str
) -> None:
    """The real pipeline: loaded, then Debezium + ``streamer consume`` carry an update whose
    tsvector the source's trigger recomputed; the target keeps the loaded tsvector (no field in
    the record), validate lists the column as not captured and finds the other columns equal."""
    url = stack.settings.target_url
    t = f'"{docs}".docs'
    debezium(docs, f"{docs}.docs")
    source = create_target_engine(stack.settings.source_url)
    target = create_target_engine(url)
    try:
        with source.begin() as conn:
            conn.execute(sa.text(f"UPDATE {t} SET title = 'streamed change' WHERE id = 3"))
            conn.execute(sa.text(f"DELETE FROM {t} WHERE id = 4"))
        done = run_consumer(f"{docs}-nc", rf"^{docs}\.{docs}\.docs$", url, "--until-idle", "10")
        assert done.returncode == 0, done.stderr[-3000:]
        with source.connect() as conn:
            src = {
                r[0]: tuple(r[1:])
                for r in conn.execute(sa.text(f"SELECT id, title, body, fulltext::text FROM {t}"))
            }
        with target.connect() as conn:
            tgt = {
                r[0]: tuple(r[1:])
                for r in conn.execute(sa.text(f"SELECT id, title, body, fulltext FROM {t}"))
            }
        assert {k: v[:2] for k, v in tgt.items()} == {k: v[:2] for k, v in src.items()}  # title, body
        assert tgt[3][0] == "streamed change" and tgt[3][2] != src[3][2]  # the tsvector left stale
        assert [k for k in src if src[k][2] != tgt[k][2]] == [3]

        out = streamer("validate", "--table", f"{docs}.docs", "--json", url=url)
        assert out.returncode == 0, out.stdout + out.stderr
        (table,) = json.loads(out.stdout)["tables"]
        assert table["equal"] is True and table["changed"] == []
        assert [(c["column"], c["type"]) for c in table["not_captured"]] == [("fulltext", "tsvector")]
    finally:
        source.dispose()
        target.dispose()
