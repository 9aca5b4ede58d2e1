"""Benchmark of ``streamer load`` PostgreSQL -> PostgreSQL against the physical limit and the seed's loop.

One run, one machine, tables of ``--rows`` rows (default 1,000,000 and 5,000,000; bigint key,
text, numeric, timestamptz, jsonb, boolean, double, varchar). Both paths are timed as a user
runs them, whole commands from start to exit:

1. **COPY pipe**: ``psql -c "COPY src TO STDOUT" | psql -c "COPY dst FROM STDIN"`` into a table
   with the same columns and primary key: the physical limit of moving the rows here;
2. **streamer load**: the ``streamer`` command (start-up, state tables, hold barrier, snapshot,
   keyset chunks, parallel workers, checkpoints, version column, sweep) into an empty target
   table; its ``--json`` phases are printed beside it;
3. **seed loop**: the seed's shape, ``LIMIT/OFFSET`` pages read with ``pl.read_database`` and
   written with ``DataFrame.write_database``, on the first ``--seed-rows`` rows (100,000).

Below 5M rows both commands run ``--rounds`` times (default 2), interleaved, and the best of each
counts; every timed command starts after a ``CHECKPOINT`` (the previous benchmark's writes are not
billed to the next command). Floors (issue 14): (2) >= 0.9 x (1) at 1M rows and >= 1.0 x (1) at 5M, and >= 8x (3). Exit
status 1 when a floor is missed. Run: ``python -m streamer.bench.load [--rows 1000000,5000000]``
(starts the stack if it is not running; needs the ``bench`` extra for the seed loop: pandas and
pyarrow, which polars' writer uses).
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
from pathlib import Path
from typing import Any

import psycopg2
import sqlalchemy as sa

from streamer import logs
from streamer.bench.report import Figure, run_module
from streamer.db import create_target_engine
from streamer.settings import load_settings
from streamer.stack.local import Stack, running_stack

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


def streamer_load(stack: Stack, table: str, workers: int, chunk_rows: int) -> tuple[float, dict[str, Any]]:
    """Seconds for ``streamer load`` as a user runs it (a process, start to exit) and its JSON report."""
    command = str(Path(sys.executable).with_name("streamer"))
    env = {
        **os.environ,
        "STREAMER_TARGET_URL": stack.settings.target_url,
        "STREAMER_LOG_LEVEL": "warning",
    }
    args = ["load", "--table", f"public.{table}", "--workers", str(workers), "--chunk-rows", str(chunk_rows)]
    started = time.perf_counter()
    done = subprocess.run([command, *args, "--json"], env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"streamer load exited {done.returncode}: {done.stderr[-2000:]}")
    (report,) = json.loads(done.stdout)
    return elapsed, dict(report)


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


def checkpoint(stack: Stack) -> None:
    """A CHECKPOINT of the stack's PostgreSQL (source and target databases share the server)."""
    conn = psycopg2.connect(stack.source_admin_dsn(stack.cfg.source_database))
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("CHECKPOINT")
    conn.close()


def _drop_target(stack: Stack, table: str) -> None:
    """Drop the target's tables of this run and the load state of the table (a new round starts empty)."""
    target = create_target_engine(stack.settings.target_url)
    try:
        with target.begin() as conn:
            for suffix in ("", "_pipe", "_seed"):
                conn.execute(sa.text(f"DROP TABLE IF EXISTS public.{table}{suffix}"))
            for state_table in ("_streamer_loads", "_streamer_load_chunks"):
                conn.execute(
                    sa.text(f"DELETE FROM {state_table} WHERE table_name = :t"),
                    {"t": f"public.{table}"},
                )
    finally:
        target.dispose()


def _drop(stack: Stack, table: str) -> None:
    _drop_target(stack, table)
    src = psycopg2.connect(stack.source_admin_dsn(stack.cfg.source_database))
    src.autocommit = True
    with src.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS public.{table}")
    src.close()


def figures(argv: Sequence[str] | None = None) -> list[Figure]:
    parser = argparse.ArgumentParser(description="streamer load benchmark")
    parser.add_argument(
        "--rows", default="1000000,5000000", help="comma-separated table sizes (default 1M and 5M rows)"
    )
    parser.add_argument("--seed-rows", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chunk-rows", type=int, default=100_000)
    parser.add_argument(
        "--rounds", type=int, default=2, help="interleaved rounds below 5M rows, best of each (5M: one)"
    )
    args = parser.parse_args(argv)
    logs.configure("console", "warning")
    settings = load_settings()
    sizes = [int(x) for x in str(args.rows).split(",") if x.strip()]
    out: list[Figure] = []
    with running_stack(settings) as (stack, _started):
        print(f"\n{'path':<40} {'rows':>10} {'seconds':>9} {'rows/s':>10}")
        for i, rows in enumerate(sizes):
            table = "benchload_" + uuid.uuid4().hex[:6]
            print(f"creating a {rows:,}-row source table ...", flush=True)
            make_source(stack, table, rows)
            try:
                # rounds interleaved (pipe, load, pipe, load), best of each; before every timed
                # command a CHECKPOINT, so that neither pays for the dirty buffers of what ran before
                rounds = args.rounds if rows < 5_000_000 else 1
                pipes, loads = [], []
                for r in range(rounds):
                    if r:
                        _drop_target(stack, table)
                    checkpoint(stack)
                    pipes.append(copy_pipe(stack, table))
                    checkpoint(stack)
                    loads.append(streamer_load(stack, table, args.workers, args.chunk_rows))
                pipe = min(pipes)
                t_load, report = min(loads, key=lambda x: x[0])
                if rounds > 1:
                    print(
                        f"  rounds: pipe {', '.join(f'{t:.2f}' for t in pipes)} s; "
                        f"load {', '.join(f'{t:.2f}' for t, _ in loads)} s (best of each below)",
                        flush=True,
                    )
                phases = ", ".join(f"{k} {v:.2f}" for k, v in report.get("phases", {}).items())
                results = [("COPY pipe (psql | psql), command", rows, pipe)]
                results.append((f"streamer load ({args.workers} workers), command", report["rows"], t_load))
                if i == 0:
                    results.append(
                        (
                            "seed loop (LIMIT/OFFSET, polars)",
                            args.seed_rows,
                            seed_loop(stack, table, args.seed_rows),
                        )
                    )
            finally:
                _drop(stack, table)
            for name, n, t in results:
                print(f"{name:<40} {n:>10,} {t:>9.2f} {n / t:>10,.0f}")
            print(f"  streamer load phases (s): {phases}", flush=True)
            load_rate, pipe_rate = report["rows"] / t_load, rows / pipe
            label = f"load {rows / 1e6:g}M rows ({args.workers} workers, command)"
            out.append(
                Figure(
                    "load",
                    label,
                    load_rate,
                    "rows/s",
                    "COPY pipe (command)",
                    pipe_rate,
                    0.9 if rows < 5_000_000 else 1.0,
                )
            )
            if i == 0:
                seed_rate = args.seed_rows / results[2][2]
                out.append(Figure("load", label, load_rate, "rows/s", "seed loop", seed_rate, 8))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    return run_module(figures, argv)


if __name__ == "__main__":
    sys.exit(main())
