"""Benchmark of ``streamer load`` PostgreSQL -> PostgreSQL against the physical limit and the seed's loop.

One run, one machine, one table of ``--rows`` rows (default 1,000,000; bigint key, text, numeric,
timestamptz, jsonb, boolean, double, varchar):

1. **COPY pipe**: ``psql -c "COPY src TO STDOUT" | psql -c "COPY dst FROM STDIN"`` into a table
   with the same columns and primary key: the physical limit of moving the rows here;
2. **streamer load**: the loader (snapshot, keyset chunks, parallel workers, checkpoints, version
   column) into an empty target table;
3. **seed loop**: the seed's shape, ``LIMIT/OFFSET`` pages read with ``pl.read_database`` and
   written with ``DataFrame.write_database``, on the first ``--seed-rows`` rows (100,000).

Floors (issue 5): (2) >= 80% of (1) and >= 8x (3). Exit status 1 when a floor is missed.
Run: ``python -m streamer.bench.load [--rows N]`` (starts the stack if it is not running;
needs the ``bench`` extra for the seed loop: pandas and pyarrow, which polars' writer uses).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence

import psycopg2
import sqlalchemy as sa

from streamer import logs
from streamer.bench.report import Figure, run_module
from streamer.db import create_target_engine
from streamer.load import Loader
from streamer.settings import load_settings
from streamer.sink import build_sink
from streamer.stack import Stack, running_stack

COLUMNS = """
    id bigint PRIMARY KEY,
    name text NOT NULL,
    amount numeric(14, 2) NOT NULL,
    created_at timestamptz NOT NULL,
    payload jsonb,
    active boolean NOT NULL,
    score double precision,
    note varchar(100)
"""


def make_source(stack: Stack, table: str, rows: int) -> None:
    conn = psycopg2.connect(stack.source_admin_dsn(stack.cfg.source_database))
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"CREATE TABLE public.{table} ({COLUMNS})")
        for start in range(0, rows, 200_000):
            n = min(200_000, rows - start)
            cur.execute(
                f"INSERT INTO public.{table} SELECT g, 'customer name ' || g, (g % 1000000) / 100.0, "
                "timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second', "
                "jsonb_build_object('id', g, 'tags', jsonb_build_array('a', 'b', g % 7), 'ok', g % 2 = 0), "
                "g % 3 = 0, g * 0.25, 'note ' || (g % 1000) "
                f"FROM generate_series({start + 1}, {start + n}) g"
            )
        cur.execute(f"VACUUM ANALYZE public.{table}")
    conn.close()


def psql(stack: Stack, database: str) -> list[str]:
    c = stack.cfg
    return ["psql", "-X", "-q", "-h", c.host, "-p", str(c.source_port), "-U", c.source_user, "-d", database]


def copy_pipe(stack: Stack, table: str) -> float:
    """Seconds for COPY TO STDOUT | COPY FROM STDIN into a same-shaped table with the same key."""
    env = {**os.environ, "PGPASSWORD": stack.cfg.source_password}
    target = stack.cfg.target_database
    subprocess.run(
        [
            *psql(stack, target),
            "-c",
            f"DROP TABLE IF EXISTS public.{table}_pipe; CREATE TABLE public.{table}_pipe ({COLUMNS})",
        ],
        env=env,
        check=True,
    )
    started = time.perf_counter()
    out = subprocess.Popen(
        [*psql(stack, stack.cfg.source_database), "-c", f"COPY public.{table} TO STDOUT"],
        stdout=subprocess.PIPE,
        env=env,
    )
    into = subprocess.run(
        [*psql(stack, target), "-c", f"COPY public.{table}_pipe FROM STDIN"],
        stdin=out.stdout,
        env=env,
        check=True,
    )
    assert out.stdout is not None
    out.stdout.close()
    if out.wait() != 0 or into.returncode != 0:
        raise RuntimeError("COPY pipe failed")
    return time.perf_counter() - started


def streamer_load(stack: Stack, table: str, workers: int) -> tuple[float, int]:
    settings = load_settings(overrides={"target_url": stack.settings.target_url})
    sink = build_sink(settings)
    try:
        loader = Loader(stack.settings.source_url, sink, workers=workers, chunk_rows=100_000)
        started = time.perf_counter()
        (report,) = loader.run([f"public.{table}"])
        return time.perf_counter() - started, report.rows
    finally:
        sink.engine.dispose()


def seed_loop(stack: Stack, table: str, rows: int, page: int = 10_000) -> float:
    """The seed's shape: LIMIT/OFFSET pages with pl.read_database, DataFrame.write_database."""
    import polars as pl

    source = create_target_engine(stack.settings.source_url)
    target_engine = create_target_engine(stack.settings.target_url)
    started = time.perf_counter()
    with source.connect() as conn:
        for offset in range(0, rows, page):
            # jsonb as text: polars cannot build a column from mixed-type JSON arrays
            df = pl.read_database(
                f"SELECT id, name, amount, created_at, payload::text AS payload, active, score, note "
                f"FROM public.{table} LIMIT {page} OFFSET {offset}",
                connection=conn,
            )
            df.write_database(f"public.{table}_seed", connection=target_engine, if_table_exists="append")
    elapsed = time.perf_counter() - started
    source.dispose()
    target_engine.dispose()
    return elapsed


def figures(argv: Sequence[str] | None = None) -> list[Figure]:
    parser = argparse.ArgumentParser(description="streamer load benchmark")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed-rows", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    logs.configure("console", "warning")
    settings = load_settings()
    results: dict[str, tuple[int, float]] = {}
    with running_stack(settings) as (stack, _started):
        table = "benchload_" + uuid.uuid4().hex[:6]
        print(f"creating a {args.rows:,}-row source table ...", flush=True)
        make_source(stack, table, args.rows)
        target = create_target_engine(stack.settings.target_url)
        try:
            print("COPY pipe ...", flush=True)
            results["COPY pipe (psql | psql)"] = (args.rows, copy_pipe(stack, table))
            print("streamer load ...", flush=True)
            t_load, n = streamer_load(stack, table, args.workers)
            results[f"streamer load ({args.workers} workers)"] = (n, t_load)
            print("seed loop ...", flush=True)
            results["seed loop (LIMIT/OFFSET, polars)"] = (
                args.seed_rows,
                seed_loop(stack, table, args.seed_rows),
            )
        finally:
            with target.begin() as conn:
                for suffix in ("", "_pipe", "_seed"):
                    conn.execute(sa.text(f"DROP TABLE IF EXISTS public.{table}{suffix}"))
                conn.execute(
                    sa.text("DELETE FROM _streamer_loads WHERE table_name = :t"), {"t": f"public.{table}"}
                )
                conn.execute(
                    sa.text("DELETE FROM _streamer_load_chunks WHERE table_name = :t"),
                    {"t": f"public.{table}"},
                )
            target.dispose()
            src = psycopg2.connect(stack.source_admin_dsn(stack.cfg.source_database))
            src.autocommit = True
            with src.cursor() as cur:
                cur.execute(f"DROP TABLE IF EXISTS public.{table}")
            src.close()
    rates = {k: n / t for k, (n, t) in results.items()}
    print(f"\n{'path':<36} {'rows':>10} {'seconds':>9} {'rows/s':>10}")
    for k, (n, t) in results.items():
        print(f"{k:<36} {n:>10,} {t:>9.2f} {rates[k]:>10,.0f}")
    load_rate = rates[f"streamer load ({args.workers} workers)"]
    name = f"load ({args.workers} workers)"
    return [
        Figure("load", name, load_rate, "rows/s", "COPY pipe", rates["COPY pipe (psql | psql)"], 0.80),
        Figure("load", name, load_rate, "rows/s", "seed loop", rates["seed loop (LIMIT/OFFSET, polars)"], 8),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    return run_module(figures, argv)


if __name__ == "__main__":
    sys.exit(main())
