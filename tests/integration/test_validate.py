"""`streamer validate` against real databases: every column type's differences found, by key and column.

A source table with a column of every type the suite's tables use is loaded by `streamer load`
into PostgreSQL, MariaDB and SQLite targets; then differences are planted in the target (a
changed value in each column, a missing row, an extra row, NULL against a value, NULL against an
empty string) and the validator must name exactly those keys and columns.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from streamer.apply.sink import build_router
from streamer.core.events import TableId
from streamer.db import create_target_engine
from streamer.settings import load_settings
from streamer.stack.local import Stack
from streamer.validate import validate_table

ROWS = 1200

# every column type of the suite's tables (workload.py, the fault harness), one column each
COLUMNS = {
    "i4": "integer",
    "i2": "smallint",
    "i8": "bigint",
    "num": "numeric(14, 4)",
    "r4": "real",
    "f8": "double precision",
    "t": "text",
    "vc": "varchar(50)",
    "b": "boolean",
    "tstz": "timestamptz",
    "ts": "timestamp",
    "d": "date",
    "iv": "interval",
    "jb": "jsonb",
    "js": "json",
    "tm": "time",
    "by": "bytea",
    "u": "uuid",
    "arr": "text[]",
    "en": "{schema}.mood",
}
VALUES = {
    "i4": "g * 7",
    "i2": "(g % 30000)::smallint",
    "i8": "g::bigint * 1000000007",
    "num": "g / 8.0",
    "r4": "(g * 1.5)::real",
    "f8": "g * 0.1",
    "t": "CASE WHEN g = 3 THEN NULL WHEN g = 4 THEN '' ELSE 'text ' || g || E' \\t tab, \"q\" ''s' END",
    "vc": "'vc' || g",
    "b": "g % 2 = 0",
    "tstz": "timestamptz '2024-03-01 12:00:00.123456+02' + g * interval '61 seconds'",
    "ts": "timestamp '2023-01-01 00:00:00' + g * interval '1 hour 1.5 seconds'",
    "d": "date '2020-01-01' + g",
    "iv": "g * interval '1 day 2 hours 3.25 seconds'",
    "jb": "jsonb_build_object('n', g, 'tags', jsonb_build_array('a', g % 5), 'nested', jsonb_build_object('z', g))",
    "js": "json_build_object('k', g, 'list', json_build_array(g, 'x'))",
    "tm": "time '00:00:00' + g * interval '37.25 seconds'",
    "by": "decode(lpad(to_hex(g), 8, '0') || '00ff5c09', 'hex')",
    "u": "md5(g::text)::uuid",
    "arr": "ARRAY['x' || g, 'y']",
    "en": "(ARRAY['happy', 'sad', 'ok'])[1 + g % 3]::{schema}.mood",
}


def streamer(*args: str, url: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STREAMER_TARGET_URL": url, "STREAMER_LOG_FORMAT": "json"}
    return subprocess.run(
        [sys.executable, "-m", "streamer.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def typed_source(stack: Stack, unique: str) -> Iterator[str]:
    """``<unique>.typed``: a key and a column of every type, ROWS rows all differing from each other."""
    engine = create_target_engine(stack.settings.source_url)
    cols = ", ".join(f"{n} {t.format(schema=unique)}" for n, t in COLUMNS.items())
    exprs = ", ".join(VALUES[n].format(schema=unique) for n in COLUMNS)
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{unique}"'))
        conn.execute(sa.text(f"CREATE TYPE \"{unique}\".mood AS ENUM ('happy', 'sad', 'ok')"))
        conn.execute(sa.text(f'CREATE TABLE "{unique}".typed (id bigint PRIMARY KEY, {cols})'))
        conn.execute(
            sa.text(f'INSERT INTO "{unique}".typed SELECT g, {exprs} FROM generate_series(1, {ROWS}) g')
        )
    yield unique
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{unique}" CASCADE'))
    engine.dispose()


def _target_table(url: str, schema: str, table: str) -> tuple[str | None, str]:
    settings = load_settings(overrides={"target_url": url})
    route = build_router(settings, sa.engine.make_url(url).get_backend_name()).route(
        TableId(None, schema, table)
    )
    return route.target_schema, route.target_table


def _plant(engine: Engine, table: sa.Table) -> tuple[dict[int, list[str]], int, int]:
    """Differences in the target: returns {key: [changed columns]}, the deleted key, the added key."""
    changed: dict[int, list[str]] = {}
    with engine.begin() as conn:

        def row(key: int) -> Any:
            return conn.execute(sa.select(table).where(table.c.id == key)).one()

        for i, name in enumerate(COLUMNS):
            key = 100 + 2 * i
            value = row(key + 1)._mapping[name]  # the next row's value: of the column's own type, different
            conn.execute(sa.update(table).where(table.c.id == key).values({name: value}))
            changed[key] = [name]
        # NULL against a value, a value against NULL, NULL against '' and '' against NULL
        conn.execute(sa.update(table).where(table.c.id == 300).values(num=None, jb=None))
        changed[300] = ["num", "jb"]
        conn.execute(sa.update(table).where(table.c.id == 3).values(t=""))  # NULL at the source
        conn.execute(sa.update(table).where(table.c.id == 4).values(t=None))  # '' at the source
        changed[3] = ["t"]
        changed[4] = ["t"]
        conn.execute(sa.delete(table).where(table.c.id == 777))
        extra = dict(row(500)._mapping)
        extra["id"] = ROWS + 50
        conn.execute(sa.insert(table).values(extra))
    return changed, 777, ROWS + 50


@pytest.mark.parametrize("chunk_rows", [250, 5000])
def test_every_planted_difference_is_found_by_key_and_column(
    stack: Stack, typed_source: str, target: tuple[str, Engine], chunk_rows: int
) -> None:
    url, engine = target
    schema = typed_source
    loaded = streamer("load", "--table", f"{schema}.typed", url=url)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    source = create_target_engine(stack.settings.source_url)
    tschema, tname = _target_table(url, schema, "typed")
    try:
        # equal first: the fast tier itself must agree for every type (no range differs)
        diff = validate_table(source, (schema, "typed"), engine, (tschema, tname), chunk_rows=chunk_rows)
        assert diff.equal, (diff.missing, diff.extra, diff.changed)
        assert diff.ranges_differing == 0
        assert diff.source_rows == diff.target_rows == ROWS

        table = sa.Table(tname, sa.MetaData(), schema=tschema, autoload_with=engine)
        changed, deleted, added = _plant(engine, table)
        diff = validate_table(source, (schema, "typed"), engine, (tschema, tname), chunk_rows=chunk_rows)
    finally:
        source.dispose()
    assert diff.missing == [(deleted,)]
    assert diff.extra == [(added,)]
    assert {k[0]: sorted(cols) for k, cols in diff.changed} == {k: sorted(v) for k, v in changed.items()}
    assert all(isinstance(k[0], int) for k, _ in diff.changed)  # typed keys, not Decimal or text
    assert diff.source_rows == ROWS and diff.target_rows == ROWS
    assert not diff.equal


# ---------------------------------------------------------------- repair under a live stream
def _corrupt(url: str, schema: str) -> None:
    """Rows changed, deleted and added in the target behind the stream's back (versions untouched)."""
    engine = create_target_engine(url)
    try:
        with engine.begin() as conn:
            for key in (11, 222, 3333):
                conn.execute(
                    sa.text(f"UPDATE \"{schema}\".customers SET email = 'corrupt@example.com' WHERE id = :k"),
                    {"k": key},
                )
            conn.execute(
                sa.text(f'UPDATE "{schema}".orders SET total = total + 1, note = NULL WHERE id IN (40, 2040)')
            )
            conn.execute(sa.text(f'UPDATE "{schema}".products SET tags = NULL, weight = 0.5 WHERE id = 77'))
            conn.execute(sa.text(f'DELETE FROM "{schema}".orders WHERE id IN (5, 1500, 3999)'))
            conn.execute(sa.text(f'DELETE FROM "{schema}".customers WHERE id = 2500'))
            # added in the target only: a copy of a row under a key the source does not have
            conn.execute(
                sa.text(
                    f'INSERT INTO "{schema}".customers (id, name, email, created_at, balance, active, profile, _streamer_version) '
                    f'SELECT id + 900000, name, email, created_at, balance, active, profile, _streamer_version FROM "{schema}".customers WHERE id = 12'
                )
            )
            conn.execute(
                sa.text(
                    f'INSERT INTO "{schema}".products (id, sku, title, price, tags, weight, available_from, description) '
                    f"VALUES (800000, gen_random_uuid(), 'made up', 1.00, NULL, NULL, NULL, NULL)"
                )
            )
    finally:
        engine.dispose()


def test_repair_under_a_live_stream_ends_equal(
    stack: Stack, debezium: Any, unique: str, tmp_path: Path
) -> None:
    from streamer.stack.workload import SAMPLE_TABLES, create_sample, run_workload
    from tests.faults.harness import ConsumerProc, assert_equal, differences, end_all, topics_regex

    schema = unique
    url = stack.settings.target_url
    database = stack.cfg.source_database
    create_sample(stack.settings.source_url, schema, rows=4000)
    debezium(
        schema,
        ",".join(f"{schema}.{t}" for t in SAMPLE_TABLES),
        **{"snapshot.mode": "no_data", "column.propagate.source.type": ".*"},
    )
    tables = [a for t in SAMPLE_TABLES for a in ("--table", f"{schema}.{t}")]
    loaded = streamer("load", *tables, url=url)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    consumer = ConsumerProc(f"{schema}-g", topics_regex(schema, schema), url, tmp_path / "consume.log")
    stop = threading.Event()
    writer = threading.Thread(
        target=run_workload,
        args=(stack.settings.source_url, schema),
        kwargs={"stop": stop.is_set, "rate": 40, "seed": 11},
    )
    writer.start()
    try:
        time.sleep(3)
        _corrupt(url, schema)
        before = streamer("validate", *tables, "--json", url=url)
        assert before.returncode == 1, before.stdout[-3000:] + before.stderr[-3000:]
        found = json.loads(before.stdout)
        assert not found["ok"]
        # the planted rows the workload did not touch meanwhile are reported (at least most of them)
        by_table = {t["table"].split(".")[1]: t for t in found["tables"]}
        assert by_table["customers"]["extra"] and by_table["products"]["extra"]
        assert by_table["orders"]["missing"]

        dry = streamer("validate", *tables, "--repair", "--dry-run", "--chunk-rows", "200", url=url)
        assert dry.returncode == 1
        assert any(
            line.startswith(f"REPAIR table={schema}.customers would re-copy range id ")
            for line in dry.stdout.splitlines()
        ), dry.stdout

        repaired = streamer(
            "validate", *tables, "--repair", "--chunk-rows", "200", "--settle", "3", "--json", url=url
        )
        assert repaired.returncode in (0, 1), repaired.stderr[-3000:]
        report = json.loads(repaired.stdout)
        assert all("repair" in t for t in report["tables"] if not t["equal"]), report
        assert any(t.get("repair", {}).get("rows_copied", 0) > 0 for t in report["tables"]), report
        time.sleep(3)  # the stream keeps writing over the repaired ranges
    finally:
        stop.set()
        writer.join()
    try:
        deadline = time.monotonic() + 180
        left = differences(stack.settings.source_url, url, database, schema, SAMPLE_TABLES)
        while left and time.monotonic() < deadline:
            assert consumer.alive(), consumer.tail()
            time.sleep(2)
            left = differences(stack.settings.source_url, url, database, schema, SAMPLE_TABLES)
        assert_equal(stack.settings.source_url, url, database, schema, SAMPLE_TABLES)
    finally:
        assert consumer.terminate() == 0, consumer.tail()
        end_all()


# ---------------------------------------------------------------- what it prints
@pytest.fixture
def planted(stack: Stack, unique: str) -> Iterator[str]:
    """Equal tables in source and target but for: accounts 20030 missing, 90001 extra, 77777 changed
    (amount) and 120 changed (email); lines (5, 12) changed (a composite key)."""
    schema = unique
    source = create_target_engine(stack.settings.source_url)
    target = create_target_engine(stack.settings.target_url)
    for engine in (source, target):
        with engine.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
            conn.execute(
                sa.text(
                    f'CREATE TABLE "{schema}".accounts (id bigint PRIMARY KEY, email text, amount numeric(12, 2))'
                )
            )
            conn.execute(
                sa.text(
                    f"INSERT INTO \"{schema}\".accounts SELECT g, 'user' || g || '@example.com', g / 100.0 "
                    "FROM generate_series(1, 80000) g"
                )
            )
            conn.execute(
                sa.text(
                    f'CREATE TABLE "{schema}".lines (customer_id int, order_no int, qty int, '
                    "PRIMARY KEY (customer_id, order_no))"
                )
            )
            conn.execute(
                sa.text(
                    f'INSERT INTO "{schema}".lines SELECT c, o, c * o FROM generate_series(1, 20) c, generate_series(1, 20) o'
                )
            )
    with target.begin() as conn:
        conn.execute(sa.text(f'DELETE FROM "{schema}".accounts WHERE id = 20030'))
        conn.execute(sa.text(f"INSERT INTO \"{schema}\".accounts VALUES (90001, 'nobody@example.com', 1)"))
        conn.execute(sa.text(f'UPDATE "{schema}".accounts SET amount = amount + 1 WHERE id = 77777'))
        conn.execute(sa.text(f"UPDATE \"{schema}\".accounts SET email = 'it''s changed' WHERE id = 120"))
        conn.execute(sa.text(f'UPDATE "{schema}".lines SET qty = 0 WHERE customer_id = 5 AND order_no = 12'))
    target.dispose()
    yield schema
    with source.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    source.dispose()


def _validate(schema: str, url: str, *extra: str, columns: str = "40") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STREAMER_TARGET_URL": url, "STREAMER_LOG_FORMAT": "json", "COLUMNS": columns}
    args = ["validate", "--table", f"{schema}.accounts", "--table", f"{schema}.lines", *extra]
    return subprocess.run(
        [sys.executable, "-m", "streamer.cli", *args], env=env, capture_output=True, text=True, timeout=300
    )


def test_plain_lines_off_a_terminal_name_every_key_uncut(stack: Stack, planted: str) -> None:
    out = _validate(planted, stack.settings.target_url)  # stdout is a pipe; COLUMNS=40 must not matter
    assert out.returncode == 1, out.stderr
    lines = out.stdout.splitlines()
    s = planted
    assert f"DIFF table={s}.accounts key=id=20030 missing in target" in lines
    assert f"DIFF table={s}.accounts key=id=90001 extra in target" in lines
    assert f"DIFF table={s}.accounts key=id=120 changed columns=email" in lines
    assert f"DIFF table={s}.accounts key=id=77777 changed columns=amount" in lines
    assert f"DIFF table={s}.lines key=customer_id=5, order_no=12 changed columns=qty" in lines
    assert lines[-1] == "RESULT DIFFERENT tables=2 different=2"
    tables = [line for line in lines if line.startswith("TABLE ")]
    assert tables[0].startswith(
        f"TABLE table={s}.accounts target={s}.accounts source_rows=80000 target_rows=80000 "
    ) and tables[0].endswith("missing=1 extra=1 changed=2 method=server hashes result=DIFFERENT")
    assert "Decimal" not in out.stdout and "(" not in "".join(
        line.split(" key=")[1] for line in lines if " key=" in line
    )
    assert "example.com" not in out.stdout  # values only with --show-values


def test_show_values_prints_sql_text(stack: Stack, planted: str) -> None:
    out = _validate(planted, stack.settings.target_url, "--show-values")
    assert out.returncode == 1, out.stderr
    lines = out.stdout.splitlines()
    s = planted
    assert (
        f"DIFF table={s}.accounts key=id=77777 changed columns=amount amount: source 777.77 target 778.77"
        in lines
    )
    assert (
        f"DIFF table={s}.accounts key=id=120 changed columns=email email: source 'user120@example.com' "
        "target 'it''s changed'"
    ) in lines
    assert (
        f"DIFF table={s}.lines key=customer_id=5, order_no=12 changed columns=qty qty: source 60 target 0"
        in lines
    )


def test_json_has_typed_keys_and_columns_values_only_when_asked(stack: Stack, planted: str) -> None:
    out = _validate(planted, stack.settings.target_url, "--json")
    assert out.returncode == 1, out.stderr
    doc = json.loads(out.stdout)
    assert doc["ok"] is False
    accounts, lines = doc["tables"]
    assert accounts["key_columns"] == ["id"]
    assert accounts["missing"] == [{"id": 20030}]
    assert accounts["extra"] == [{"id": 90001}]
    assert accounts["changed"] == [
        {"key": {"id": 120}, "columns": ["email"]},
        {"key": {"id": 77777}, "columns": ["amount"]},
    ]
    assert lines["changed"] == [{"key": {"customer_id": 5, "order_no": 12}, "columns": ["qty"]}]
    assert (accounts["source_rows"], accounts["target_rows"]) == (80000, 80000)
    shown = json.loads(_validate(planted, stack.settings.target_url, "--json", "--show-values").stdout)
    assert shown["tables"][0]["changed"][1]["values"] == {"amount": {"source": "777.77", "target": "778.77"}}
    assert shown["tables"][1]["changed"][0]["values"] == {"qty": {"source": "60", "target": "0"}}


def test_terminal_shows_a_summary_table_then_the_differences(stack: Stack, planted: str) -> None:
    import pty
    import select

    env = {**os.environ, "STREAMER_TARGET_URL": stack.settings.target_url, "COLUMNS": "160", "LINES": "50"}
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamer.cli",
            "validate",
            "--table",
            f"{planted}.accounts",
            "--table",
            f"{planted}.lines",
        ],
        env=env,
        stdout=secondary,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    os.close(secondary)
    chunks: list[bytes] = []
    while True:
        ready, _, _ = select.select([primary], [], [], 120)
        if not ready:
            break
        try:
            data = os.read(primary, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(primary)
    assert proc.wait(60) == 1
    import re

    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode(errors="replace"))
    header = next(line for line in text.splitlines() if "source rows" in line)
    assert "ranges differing" in header and "missing" in header and "changed" in header
    assert text.index("source rows") < text.index("id=20030 missing in target")
    assert "id=77777 changed columns=amount" in text
    assert "customer_id=5, order_no=12 changed columns=qty" in text
    assert "DIFF table=" not in text  # the terminal form lists them under the table, by table


def test_a_target_of_other_column_types_is_compared_by_value(stack: Stack, unique: str) -> None:
    """A managed target holding jsonb and numeric as text: equal values equal, a non-JSON text found, no crash."""
    schema = unique
    source = create_target_engine(stack.settings.source_url)
    target = create_target_engine(stack.settings.target_url)
    try:
        with source.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
            conn.execute(
                sa.text(f'CREATE TABLE "{schema}".docs (id int PRIMARY KEY, doc jsonb, amount numeric(8, 2))')
            )
            conn.execute(
                sa.text(
                    f"INSERT INTO \"{schema}\".docs SELECT g, jsonb_build_object('b', g, 'a', 'x'), g / 4.0 "
                    "FROM generate_series(1, 300) g"
                )
            )
        with target.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
            conn.execute(sa.text(f'CREATE TABLE "{schema}".docs (id int PRIMARY KEY, doc text, amount text)'))
            # other key order and spacing, other scale: equal values all the same
            conn.execute(
                sa.text(
                    f"""INSERT INTO "{schema}".docs SELECT g, '{{"b":' || g || ',"a":"x"}}', (g / 4.0)::numeric(8, 4)::text """
                    "FROM generate_series(1, 300) g"
                )
            )
            conn.execute(sa.text(f"UPDATE \"{schema}\".docs SET doc = 'not json' WHERE id = 7"))
            conn.execute(sa.text(f"UPDATE \"{schema}\".docs SET amount = 'abc' WHERE id = 8"))
        diff = validate_table(source, (schema, "docs"), target, (schema, "docs"), chunk_rows=100)
    finally:
        source.dispose()
        target.dispose()
    assert diff.changed == [((7,), ["doc"]), ((8,), ["amount"])]
    assert diff.missing == [] and diff.extra == []
    assert (diff.source_rows, diff.target_rows) == (300, 300)


def test_repair_never_overwrites_or_deletes_rows_newer_than_its_snapshot(
    stack: Stack, typed_source: str
) -> None:
    """The version guard: a row the stream moved past the repair's snapshot keeps the stream's value."""
    schema = typed_source
    url = stack.settings.target_url
    loaded = streamer("load", "--table", f"{schema}.typed", url=url)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    newer = "pg:ffffffffffffffff"  # past any position of the source
    target = create_target_engine(url)
    try:
        with target.begin() as conn:
            q = f'"{schema}".typed'
            conn.execute(
                sa.text(f"UPDATE {q} SET t = 'newer', _streamer_version = :v WHERE id = 10"), {"v": newer}
            )
            conn.execute(sa.text(f"UPDATE {q} SET t = 'corrupt' WHERE id = 11"))
            conn.execute(sa.text(f"DELETE FROM {q} WHERE id = 12"))
            for key, version in ((5000, newer), (5001, "pg:0000000000000001")):
                conn.execute(
                    sa.text(f"INSERT INTO {q} (id, t, _streamer_version) VALUES (:k, 'added', :v)"),
                    {"k": key, "v": version},
                )
        dry = streamer(
            "validate", "--table", f"{schema}.typed", "--repair", "--dry-run", "--chunk-rows", "100", url=url
        )
        assert dry.returncode == 1, dry.stderr
        assert f"REPAIR table={schema}.typed would re-copy range id <= 100" in dry.stdout.splitlines()
        with target.connect() as conn:  # the dry run changed nothing
            assert conn.execute(sa.text(f"SELECT t FROM {q} WHERE id = 11")).scalar_one() == "corrupt"
        out = streamer("validate", "--table", f"{schema}.typed", "--repair", "--chunk-rows", "100", url=url)
        with target.connect() as conn:
            rows: dict[int, str] = dict(
                conn.execute(sa.text(f"SELECT id, t FROM {q} WHERE id IN (10, 11, 12, 5000, 5001)")).all()
            )
    finally:
        target.dispose()
    assert out.returncode == 1, out.stdout  # what the guard kept still differs, and is reported
    assert rows == {10: "newer", 11: 'text 11 \t tab, "q" \'s', 12: 'text 12 \t tab, "q" \'s', 5000: "added"}
    lines = out.stdout.splitlines()
    assert any(
        line.startswith(f"REPAIR table={schema}.typed ranges=") and "checked_again=STILL DIFFERENT" in line
        for line in lines
    ), out.stdout


def test_a_table_that_cannot_be_compared_exits_2_naming_it_and_the_next_command(
    stack: Stack, typed_source: str
) -> None:
    schema = typed_source
    out = streamer("validate", "--table", f"{schema}.typed", url=stack.settings.target_url)  # never loaded
    assert out.returncode == 2, out.stdout + out.stderr
    assert (
        f"streamer: cannot validate: target table {schema}.typed does not exist: load it first "
        f"(streamer load --table {schema}.typed)"
    ) in out.stderr
    assert "Traceback" not in out.stderr
    usage = streamer("validate", "--table", f"{schema}.typed", "--dry-run", url=stack.settings.target_url)
    assert usage.returncode == 2 and "--repair" in usage.stderr
