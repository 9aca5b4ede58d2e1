"""A pagila-shaped schema migrated with the documented steps alone, under a live workload (issue 13).

The source has what real schemas have: a range-partitioned ``payment`` table whose rows move between
partitions, an enum, a domain, a ``text[]`` array, a ``tsvector`` kept by a source trigger (a type
the capture drops), a stored generated column, NOT NULL columns and foreign keys. The steps are the
README's: a connector file applied with ``streamer connectors apply`` (it creates the publication
``WITH (publish_via_partition_root = true)`` for the partitioned table), ``streamer load`` while the
workload writes, ``streamer consume`` while it still writes, then whole tables compared.

- **auto**: streamer creates the target tables; the ``tsvector`` column is excluded in the
  connector and dropped from the route (the README's first choice for a column the capture drops).
- **managed**: the user's own migration creates the tables (no foreign keys: the documented choice;
  ``payment`` partitioned in the target too; the ``tsvector`` computed by the target's own trigger,
  the generated column by the target), ``streamer db prepare --apply`` adds the version column.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from streamer.db import create_target_engine
from streamer.stack.local import Stack
from streamer.validate import compare_tables
from tests.conftest import debezium_config, drop_connector, run_on_source, source_connection
from tests.integration.test_consume import consumer_env

MONTHS = ("2022_01", "2022_02", "2022_03")
TABLES = ("customer", "film", "payment")


def _month_range(month: str) -> tuple[str, str]:
    year, m = month.split("_")
    nxt = f"{year}-{int(m) + 1:02d}-01"
    return f"{year}-{m}-01", nxt


def _source_ddl(s: str) -> list[str]:
    return [
        f"CREATE SCHEMA {s}",
        f"CREATE TYPE {s}.mpaa_rating AS ENUM ('G', 'PG', 'PG-13', 'R', 'NC-17')",
        f"CREATE DOMAIN {s}.year AS integer CHECK (VALUE >= 1901 AND VALUE <= 2155)",
        f"CREATE TABLE {s}.customer (customer_id integer PRIMARY KEY, first_name text NOT NULL, "
        "last_name text NOT NULL, email text, activebool boolean NOT NULL DEFAULT true, "
        "create_date date NOT NULL DEFAULT current_date)",
        f"CREATE TABLE {s}.film (film_id integer PRIMARY KEY, title text NOT NULL, description text, "
        f"release_year {s}.year, rating {s}.mpaa_rating NOT NULL DEFAULT 'G', special_features text[], "
        "rental_rate numeric(4, 2) NOT NULL DEFAULT 4.99, fulltext tsvector NOT NULL, "
        "title_length integer GENERATED ALWAYS AS (length(title)) STORED)",
        f"CREATE TRIGGER film_fulltext BEFORE INSERT OR UPDATE ON {s}.film FOR EACH ROW "
        "EXECUTE FUNCTION tsvector_update_trigger(fulltext, 'pg_catalog.english', title, description)",
        f"CREATE TABLE {s}.payment (payment_id integer NOT NULL, "
        f"customer_id integer NOT NULL REFERENCES {s}.customer, film_id integer NOT NULL REFERENCES {s}.film, "
        "amount numeric(5, 2) NOT NULL, payment_date timestamptz NOT NULL, "
        "PRIMARY KEY (payment_date, payment_id)) PARTITION BY RANGE (payment_date)",
        *(
            f"CREATE TABLE {s}.payment_p{m} PARTITION OF {s}.payment "
            f"FOR VALUES FROM ('{_month_range(m)[0]} 00:00:00+00') TO ('{_month_range(m)[1]} 00:00:00+00')"
            for m in MONTHS
        ),
        f"INSERT INTO {s}.customer (customer_id, first_name, last_name, email, create_date) "
        "SELECT g, 'first' || g, 'last' || g, CASE WHEN g % 5 = 0 THEN NULL ELSE 'c' || g || '@example.com' END, "
        "date '2021-01-01' + g FROM generate_series(1, 200) g",
        f"INSERT INTO {s}.film (film_id, title, description, release_year, rating, special_features, fulltext) "
        "SELECT g, 'FILM ' || g, 'a story of ' || g || ' dogs', 1990 + g % 30, "
        f"(ARRAY['G', 'PG', 'PG-13', 'R', 'NC-17'])[1 + g % 5]::{s}.mpaa_rating, "
        "(ARRAY['Trailers', 'Deleted Scenes'])[1:1 + g % 2], '' FROM generate_series(1, 100) g",
        f"INSERT INTO {s}.payment SELECT g, 1 + g % 200, 1 + g % 100, (g % 1000) / 100.0, "
        "timestamptz '2022-01-01 00:00:00+00' + (g % 85) * interval '1 day' + g * interval '1 second' "
        "FROM generate_series(1, 3000) g",
    ]


def _target_ddl(s: str) -> list[str]:
    """The user's own migration of the managed target: no foreign keys, payment partitioned too."""
    return [
        f"CREATE SCHEMA {s}",
        f"CREATE TABLE {s}.customer (customer_id integer PRIMARY KEY, first_name text NOT NULL, "
        "last_name text NOT NULL, email text, activebool boolean NOT NULL, create_date date NOT NULL)",
        f"CREATE TABLE {s}.film (film_id integer PRIMARY KEY, title text NOT NULL, description text, "
        "release_year integer, rating text NOT NULL, special_features text[], rental_rate numeric(4, 2) NOT NULL, "
        "fulltext tsvector NOT NULL DEFAULT ''::tsvector, "
        "title_length integer GENERATED ALWAYS AS (length(title)) STORED)",
        f"CREATE TRIGGER film_fulltext BEFORE INSERT OR UPDATE ON {s}.film FOR EACH ROW "
        "EXECUTE FUNCTION tsvector_update_trigger(fulltext, 'pg_catalog.english', title, description)",
        f"CREATE TABLE {s}.payment (payment_id integer NOT NULL, customer_id integer NOT NULL, "
        "film_id integer NOT NULL, amount numeric(5, 2) NOT NULL, payment_date timestamptz NOT NULL, "
        "PRIMARY KEY (payment_date, payment_id)) PARTITION BY RANGE (payment_date)",
        *(
            f"CREATE TABLE {s}.payment_p{m} PARTITION OF {s}.payment "
            f"FOR VALUES FROM ('{_month_range(m)[0]} 00:00:00+00') TO ('{_month_range(m)[1]} 00:00:00+00')"
            for m in MONTHS
        ),
    ]


def _workload(stack: Stack, s: str, stop: threading.Event, seed: int, done: list[int]) -> None:
    """Small transactions over all three tables until ``stop``: inserts, updates (payments moving
    between months, i.e. partitions; film titles, so the tsvector and the generated column change),
    deletes in foreign-key order; payments only for customers that still exist. ``done`` counts
    the committed transactions."""
    rnd = random.Random(seed)
    conn = source_connection(stack)
    conn.autocommit = False
    next_customer, next_film, next_payment = 1000, 1000, 10_000
    try:
        with conn.cursor() as cur:
            while not stop.is_set():
                op = rnd.randrange(8)
                if op == 0:
                    next_customer += 1
                    cur.execute(
                        f"INSERT INTO {s}.customer (customer_id, first_name, last_name, email) "
                        "VALUES (%s, %s, 'new', NULL)",
                        (next_customer, f"n{next_customer}"),
                    )
                elif op == 1:
                    next_film += 1
                    cur.execute(
                        f"INSERT INTO {s}.film (film_id, title, description, release_year, rating, fulltext) "
                        f"VALUES (%s, %s, %s, 2020, 'R', '')",
                        (next_film, f"NEW FILM {next_film}", "a tale of robots"),
                    )
                elif op == 2:
                    cur.execute(
                        f"UPDATE {s}.film SET title = title || ' II', description = 'sequel', "
                        "special_features = ARRAY['Commentaries'] WHERE film_id = %s",
                        (rnd.randint(1, next_film),),
                    )
                elif op == 3:
                    next_payment += 1
                    cur.execute(
                        f"INSERT INTO {s}.payment SELECT %s, c.customer_id, %s, %s, "
                        "timestamptz '2022-01-01 00:00:00+00' + %s * interval '1 hour' "
                        f"FROM {s}.customer c WHERE c.customer_id >= %s ORDER BY c.customer_id LIMIT 1",
                        (
                            next_payment,
                            rnd.randint(1, 100),
                            rnd.randint(1, 999) / 100,
                            rnd.randint(0, 2000),
                            rnd.randint(1, 200),
                        ),
                    )
                elif op == 4:  # moves the row to another month's partition
                    cur.execute(
                        f"UPDATE {s}.payment SET payment_date = payment_date + interval '31 days', amount = amount + 1 "
                        "WHERE payment_id = %s AND payment_date < '2022-03-01 00:00:00+00'",
                        (rnd.randint(1, next_payment),),
                    )
                elif op == 5:
                    cur.execute(
                        f"DELETE FROM {s}.payment WHERE payment_id = %s", (rnd.randint(1, next_payment),)
                    )
                elif op == 6:
                    cid = rnd.randint(1, next_customer)
                    cur.execute(f"DELETE FROM {s}.payment WHERE customer_id = %s", (cid,))
                    cur.execute(f"DELETE FROM {s}.customer WHERE customer_id = %s", (cid,))
                else:
                    cur.execute(
                        f"UPDATE {s}.customer SET email = NULL, activebool = NOT activebool WHERE customer_id = %s",
                        (rnd.randint(1, next_customer),),
                    )
                conn.commit()
                done[0] += 1
                time.sleep(0.01)
    finally:
        conn.close()


def _cli(*args: str, url: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamer.cli", *args],
        env=consumer_env(url, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _assert_equal(stack: Stack, url: str, s: str, mode: str) -> None:
    source = create_target_engine(stack.settings.source_url)
    target = create_target_engine(url)
    try:
        for table in TABLES:
            drop = ("fulltext",) if (mode == "auto" and table == "film") else ()
            diff = compare_tables(source, (s, table), target, (s, table), drop=drop)
            assert diff.source_rows > 0, table
            assert diff.equal, (
                f"{table}: missing {diff.missing[:5]} extra {diff.extra[:5]} changed {diff.changed[:5]}"
            )
        with target.connect() as conn:
            leaves = [t for t in sa.inspect(conn).get_table_names(schema=s) if t.startswith("payment_p")]
            if mode == "auto":
                assert leaves == [], "auto: no target table per leaf partition"
                cols = {c["name"] for c in sa.inspect(conn).get_columns("film", schema=s)}
                assert "fulltext" not in cols and "title_length" in cols
            else:  # the target's own trigger computed every tsvector: none is left empty
                empty = conn.execute(
                    sa.text(f"SELECT count(*) FROM {s}.film WHERE fulltext = ''::tsvector")
                ).scalar()
                assert empty == 0
    finally:
        source.dispose()
        target.dispose()


@pytest.fixture
def schema(stack: Stack, unique: str) -> Iterator[str]:
    run_on_source(stack, *_source_ddl(f'"{unique}"'))
    yield unique
    run_on_source(stack, f'DROP SCHEMA IF EXISTS "{unique}" CASCADE')


@pytest.mark.parametrize("mode", ["auto", "managed"])
def test_a_real_schema_migrates_with_the_documented_steps(
    stack: Stack, schema: str, tmp_path: Path, mode: str
) -> None:
    s = schema
    url = stack.settings.target_url
    workdir = tmp_path / "connectors"
    workdir.mkdir()
    extra = {"snapshot.mode": "no_data", "column.propagate.source.type": ".*"}
    if mode == "auto":
        extra["column.exclude.list"] = f"{s}.film.fulltext"
    config = debezium_config(stack, s, ",".join(f"{s}.{t}" for t in TABLES), **extra)
    (workdir / f"{s}.json").write_text(json.dumps({"name": s, "config": config}))
    settings = tmp_path / "streamer.toml"
    settings.write_text(
        f'[consumer]\nschema_mode = "{mode}"\n'
        + (f'[routes."{s}.film"]\ndrop = ["fulltext"]\n' if mode == "auto" else "")
    )
    env = {"STREAMER_CONFIG": str(settings), "STREAMER_CONNECTORS_DIR": str(workdir)}
    tables = [arg for t in TABLES for arg in ("--table", f"{s}.{t}")]
    if mode == "managed":
        target = create_target_engine(url)
        try:
            with target.begin() as conn:
                for ddl in _target_ddl(f'"{s}"'):
                    conn.execute(sa.text(ddl))
        finally:
            target.dispose()
        prepared = _cli("db", "prepare", *tables, "--apply", url=url, env=env)
        assert prepared.returncode == 0, prepared.stderr[-3000:]
        assert prepared.stdout.count("ADD COLUMN") == 3, prepared.stdout
    stop = threading.Event()
    committed: list[int] = [0]
    failed: list[BaseException] = []

    def write() -> None:
        try:
            _workload(stack, f'"{s}"', stop, 13, committed)
        except BaseException as exc:  # asserted below
            failed.append(exc)

    writer = threading.Thread(target=write)
    consumer: subprocess.Popen[str] | None = None
    try:
        applied = _cli("connectors", "apply", "--dir", str(workdir), "--wait", "120", url=url, env=env)
        assert applied.returncode == 0, applied.stdout + applied.stderr[-3000:]
        assert f"publication {s}_pub" in applied.stdout, applied.stdout
        writer.start()
        time.sleep(1)
        loaded = _cli("load", *tables, "--chunk-rows", "700", url=url, env=env)
        assert loaded.returncode == 0, loaded.stderr[-3000:]
        consumer = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamer.cli",
                "consume",
                "--group",
                f"{s}-real",
                "--topics",
                rf"^{s}\.{s}\.[a-z_0-9]+$",
                "--until-idle",
                "8",
            ],
            env=consumer_env(url, **env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(6)  # the consumer applies while the workload still writes
    finally:
        stop.set()
        if writer.is_alive():
            writer.join()
    assert consumer is not None
    assert not failed, failed
    assert committed[0] >= 100, committed
    try:
        _out, err = consumer.communicate(timeout=300)
    finally:
        if consumer.poll() is None:
            consumer.kill()
        drop_connector(stack, s, s)
    assert consumer.returncode == 0, err[-3000:]
    _assert_equal(stack, url, s, mode)
    checked = _cli("validate", *tables, url=url, env=env)
    assert checked.returncode == 0, checked.stdout[-3000:] + checked.stderr[-2000:]
