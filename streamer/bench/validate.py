"""Benchmark of ``streamer validate`` on 1M equal rows: PostgreSQL -> PostgreSQL and PostgreSQL -> MariaDB.

One source table of ``--rows`` rows (the columns of :mod:`streamer.bench.load`: bigint key, text,
numeric, timestamptz, jsonb, boolean, double, varchar), and two equal copies:

* a PostgreSQL target loaded by ``streamer load``;
* a MariaDB target (``--mariadb-url``, default ``mysql://root@127.0.0.1:3306/streamer_bench``)
  whose table ``streamer load`` creates (an empty key range copied), filled by MariaDB itself
  from its ``seq_1_to_N`` sequence table with the values the sink writes (JSON in the source's
  jsonb text form, timestamps at UTC): the loader would take a minute to write them. The
  validation must find the copy equal **in the fast tier** (no range differs), which also checks
  that the filled rows are what streamer would have written.

The PostgreSQL copy is ``VACUUM ANALYZE``-d after its load, like the source (the first scan of a
freshly copied table would otherwise also write every page to set its hint bits). Each
validation is timed as a whole command (``python -m streamer.cli validate --json``, process
start to exit). Floors (issue 14 item 4): >= 200,000 rows/s PG->PG, >= 100,000 rows/s
PG->MariaDB. Exit status 1 when a floor is missed or a comparison is not equal.
Run: ``python -m streamer.bench.validate [--rows N]`` (starts the stack if it is not running).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence

import psycopg2
import sqlalchemy as sa

from streamer import logs
from streamer.apply import state
from streamer.apply.sink import build_sink
from streamer.bench.load import make_source, streamer_load
from streamer.bench.report import Figure, run_module
from streamer.core.events import TableId
from streamer.db import create_target_engine
from streamer.load.loader import Loader
from streamer.settings import load_settings
from streamer.stack.local import running_stack

FLOORS = {"postgresql": 200_000.0, "mariadb": 100_000.0}


def fill_mariadb(url: str, source_url: str, table: str, rows: int) -> str:
    """Create the MariaDB target with streamer's own types (an empty load), fill it in the server."""
    settings = load_settings(overrides={"target_url": url})
    sink = build_sink(settings)
    try:
        Loader(source_url, sink, ranges={f"public.{table}": [((0,), (0,))]}).run([f"public.{table}"])
        route = sink.router.route(TableId(None, "public", table))
        name = route.target_table
        ver = sink.version_column
        with sink.engine.begin() as conn:
            quote = conn.dialect.identifier_preparer.quote
            conn.execute(
                sa.text(
                    f"INSERT INTO {quote(name)} (id, name, amount, created_at, payload, active, score, note, {quote(ver)}) "
                    "SELECT seq, CONCAT('customer name ', seq), (seq % 1000000) / 100.0, "
                    "TIMESTAMP '2024-01-01 00:00:00' + INTERVAL seq SECOND, "
                    """CONCAT('{"id": ', seq, ', "ok": ', IF(seq % 2 = 0, 'true', 'false'), """
                    """', "tags": ["a", "b", ', seq % 7, ']}'), """
                    "seq % 3 = 0, seq * 0.25, CONCAT('note ', seq % 1000), 'pg:0000000000000000' "
                    f"FROM seq_1_to_{int(rows)}"
                )
            )
        return name
    finally:
        sink.engine.dispose()


def vacuum(url: str, table: str) -> None:
    """VACUUM ANALYZE the freshly loaded target, as the source was: a settled table, hint bits set."""
    engine = create_target_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(f"VACUUM ANALYZE public.{table}"))
    finally:
        engine.dispose()


def timed_validate(table: str, url: str) -> tuple[float, dict[str, object]]:
    """Seconds for ``streamer validate --table public.<table> --json`` as a process, and its result."""
    env = {**os.environ, "STREAMER_TARGET_URL": url, "STREAMER_LOG_FORMAT": "json"}
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "streamer.cli", "validate", "--table", f"public.{table}", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    elapsed = time.perf_counter() - started
    try:
        result: dict[str, object] = json.loads(out.stdout)
    except ValueError:
        result = {"ok": False, "error": out.stderr[-2000:]}
    return elapsed, result


def figures(argv: Sequence[str] | None = None) -> list[Figure]:
    parser = argparse.ArgumentParser(description="streamer validate benchmark")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument(
        "--mariadb-url",
        default=os.environ.get("STREAMER_BENCH_MARIADB_URL", "mysql://root@127.0.0.1:3306/streamer_bench"),
    )
    args = parser.parse_args(argv)
    logs.configure("console", "warning")
    settings = load_settings()
    results: dict[str, tuple[float, dict[str, object]]] = {}
    with running_stack(settings) as (stack, _started):
        table = "benchvalidate_" + uuid.uuid4().hex[:6]
        print(f"creating a {args.rows:,}-row source table ...", flush=True)
        make_source(stack, table, args.rows)
        pg_url = stack.settings.target_url
        my = sa.engine.make_url(args.mariadb_url)
        server = create_target_engine(my.set(database="").render_as_string(hide_password=False))
        with server.begin() as conn:
            conn.execute(sa.text(f"CREATE DATABASE IF NOT EXISTS `{my.database}` CHARACTER SET utf8mb4"))
        server.dispose()
        my_name = ""
        try:
            print("PostgreSQL target: streamer load ...", flush=True)
            streamer_load(stack, table, 2, 100_000)
            vacuum(pg_url, table)
            print("MariaDB target: created by streamer load, filled by the server ...", flush=True)
            my_name = fill_mariadb(args.mariadb_url, stack.settings.source_url, table, args.rows)
            print("streamer validate PG -> PG ...", flush=True)
            results["postgresql"] = timed_validate(table, pg_url)
            print("streamer validate PG -> MariaDB ...", flush=True)
            results["mariadb"] = timed_validate(table, args.mariadb_url)
        finally:
            for url, name, schema in ((pg_url, table, "public"), (args.mariadb_url, my_name, None)):
                engine = create_target_engine(url)
                try:
                    state.upgrade(engine)
                    with engine.begin() as conn:
                        if name:
                            t = sa.table(name, schema=schema)
                            conn.execute(
                                sa.text(
                                    f"DROP TABLE IF EXISTS {conn.dialect.identifier_preparer.format_table(t)}"
                                )
                            )
                        for tbl in (state.loads_table, state.load_chunks_table):
                            conn.execute(sa.delete(tbl).where(tbl.c.table_name.like(f"%{table}")))
                finally:
                    engine.dispose()
            src = psycopg2.connect(stack.source_admin_dsn(stack.cfg.source_database))
            src.autocommit = True
            with src.cursor() as cur:
                cur.execute(f"DROP TABLE IF EXISTS public.{table}")
            src.close()
    out: list[Figure] = []
    print(f"\n{'path':<28} {'rows':>10} {'seconds':>9} {'rows/s':>10} {'floor':>9} {'method':>14}  result")
    for kind, (seconds, result) in results.items():
        tables = result.get("tables") or [{}]
        first = tables[0] if isinstance(tables, list) else {}
        rows = int(first.get("source_rows", 0)) if isinstance(first, dict) else 0
        rate = rows / seconds if seconds else 0.0
        equal = bool(result.get("ok")) and isinstance(first, dict) and first.get("ranges_differing") == 0
        passed = equal and rows == args.rows and rate >= FLOORS[kind]
        # a comparison that is not equal, or saw another row count, is no figure: 0 rows/s
        counted = rate if equal and rows == args.rows else 0.0
        path = f"PG -> {'PG' if kind == 'postgresql' else 'MariaDB'}"
        out.append(
            Figure(
                "validate",
                f"{path}, {args.rows / 1e6:g}M equal rows",
                counted,
                "rows/s",
                "target",
                FLOORS[kind],
                1.0,
            )
        )
        method = str(first.get("method", "-")) if isinstance(first, dict) else "-"
        label = f"validate {path}"
        print(
            f"{label:<28} {rows:>10,} {seconds:>9.2f} {rate:>10,.0f} {FLOORS[kind]:>9,.0f} {method:>14}  "
            f"{'PASS' if passed else 'FAIL'}{'' if equal else ' (not equal: ' + json.dumps(result)[:300] + ')'}"
        )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    return run_module(figures, argv)


if __name__ == "__main__":
    sys.exit(main())
