"""Benchmark: peak RSS of ``streamer replicate`` on one 2M-row transaction and of ``streamer consume`` on a backlog.

Issue 14, item 6 (bounded memory). Both run as real ``streamer`` processes (``python -m
streamer.cli``); their peak resident set size is the child's own ``VmHWM`` (see
:func:`_run_child`), so nothing of the benchmark's own process is counted.

1. **replicate**: a table of the stack's source gets N rows (default 2,000,000) in *one*
   transaction; a replicate process with the default ``replicate.max_transaction_memory_bytes``
   applies it (the transaction spills to ``<state_dir>/spill`` and is applied in chunks). The
   limit is that setting plus :data:`REPLICATE_OVERHEAD` (the interpreter with its libraries,
   the chunk of ``consumer.batch_max_events`` events being applied and its coalesced rows).
2. **consume**: a topic gets a backlog of M Debezium JSON records with schemas (default 60,000,
   about 7 KB each, 400+ MB: many times the consumer's queue) before the consumer starts; one
   consumer applies them all. The limit is librdkafka's queue (``consumer.queued_max_messages_kbytes``)
   plus one fetch (``consumer.fetch_max_bytes``) plus two batches of ``consumer.batch_max_bytes``
   (one pending, one in flight) plus :data:`CONSUME_OVERHEAD` (the interpreter, its libraries,
   the decoded events of those two batches, which are several times their bytes).

Both figures pass when the peak RSS is at most the limit (ratio <= 1). The target tables are
routed into a schema of their own (a settings file with ``[routes]``) and dropped afterwards.
Run: ``python -m streamer.bench.memory [--rows N] [--records M]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import psycopg2
import sqlalchemy as sa
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from streamer import logs
from streamer.bench.decode import COLUMNS, KEY_COLUMNS, generate, json_record, key_schema, pg_envelope_schema
from streamer.bench.report import Figure, run_module
from streamer.db import create_target_engine
from streamer.settings import Settings, load_settings
from streamer.stack.local import Stack, running_stack

MIB = 1024 * 1024
# what a process holds besides its bound: the interpreter with SQLAlchemy, psycopg2, pydantic and
# confluent-kafka imported (about 100-130 MiB resident), the chunk or batches being applied (events,
# coalesced rows, statement parameters) and allocator slack. Stated once, not fitted per run: the
# issue's 2M-row transaction held in memory peaks at gigabytes (README, "Bounded memory").
REPLICATE_OVERHEAD = 256 * MIB
CONSUME_OVERHEAD = 256 * MIB


def _hwm(pid: int) -> int:
    """The process's peak resident set size so far (``VmHWM``, bytes); 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def _run_child(argv: list[str], env: dict[str, str], timeout: float) -> tuple[int, int, str]:
    """Run a streamer command; returns (exit status, peak RSS in bytes, the tail of its stderr).

    The peak is the child's own ``VmHWM`` (its address space's high-water mark, reset by exec),
    read every 50 ms while it runs: not ``ru_maxrss`` of :func:`os.wait4`, which Linux carries over
    from the parent's address space at exec (this benchmark's process holds the produced backlog,
    so every child reported at least that).
    """
    peak = 0
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=err, text=True)
        deadline = time.monotonic() + timeout
        while proc.poll() is None:
            peak = max(peak, _hwm(proc.pid))
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                break
            time.sleep(0.05)
        err.seek(0)
        tail = err.read()[-3000:]
    return proc.returncode, peak, tail


def _env(settings_file: Path, target_url: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(STREAMER_CONFIG=str(settings_file), STREAMER_TARGET_URL=target_url, STREAMER_LOG_FORMAT="json")
    env.update(extra or {})
    return env


def replicate_peak(stack: Stack, prefix: str, schema: str, rows: int, workdir: Path) -> tuple[int, Settings]:
    """Peak RSS (bytes) of ``streamer replicate`` applying one transaction of ``rows`` inserts."""
    table, slot, pub = f"{prefix}_big", f"{prefix}_mslot", f"{prefix}_mpub"
    conn = psycopg2.connect(stack.source_admin_dsn(stack.cfg.source_database))
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(
                f'CREATE TABLE public."{table}" (id int PRIMARY KEY, note text, n bigint, at timestamptz)'
            )
            cur.execute(f'CREATE PUBLICATION "{pub}" FOR TABLE public."{table}"')
            cur.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
            print(f"one transaction of {rows} inserts ...", flush=True)
            cur.execute(
                f"INSERT INTO public.\"{table}\" SELECT g, 'row ' || g || repeat('x', g %% 40), g * 7, "
                "'2024-01-01'::timestamptz + g * interval '1 second' FROM generate_series(1, %s) g",
                (rows,),
            )
        settings_file = workdir / "replicate.toml"
        settings_file.write_text(f'[routes."public.{table}"]\ntarget = "{schema}.{table}"\n')
        env = _env(settings_file, stack.settings.target_url, {"STREAMER_REPLICATE__STATE_DIR": str(workdir)})
        settings = load_settings(settings_file, env=env)
        argv = [sys.executable, "-m", "streamer.cli", "replicate", "--slot", slot, "--publication", pub]
        started = time.monotonic()
        code, peak, tail = _run_child([*argv, "--until-idle", "5"], env, timeout=900)
        print(f"replicate: exit {code}, {time.monotonic() - started:.0f} s, peak RSS {peak / MIB:.0f} MiB")
        if code != 0:
            raise RuntimeError(f"streamer replicate exited {code}: {tail}")
        target = create_target_engine(stack.settings.target_url)
        try:
            with target.connect() as tconn:
                got = tconn.execute(sa.text(f'SELECT count(*) FROM "{schema}"."{table}"')).scalar_one()
        finally:
            target.dispose()
        if got != rows:
            raise RuntimeError(f"replicate left {got} of {rows} rows in the target")
        leftovers = list((workdir / "spill").glob("*.spill")) if (workdir / "spill").exists() else []
        if leftovers:
            raise RuntimeError(f"spill files left behind: {leftovers}")
        return peak, settings
    finally:
        with conn.cursor() as cur:
            for _ in range(60):
                cur.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,))
                row = cur.fetchone()
                if row is None:
                    break
                if not row[0]:
                    cur.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                    break
                time.sleep(0.5)
            cur.execute(f'DROP PUBLICATION IF EXISTS "{pub}"')
            cur.execute(f'DROP TABLE IF EXISTS public."{table}"')
        conn.close()


def consume_peak(stack: Stack, prefix: str, schema: str, records: int, workdir: Path) -> tuple[int, Settings]:
    """Peak RSS (bytes) of ``streamer consume`` applying a backlog of ``records`` JSON records."""
    topic = f"{prefix}.public.orders"
    producer = Producer(
        {
            "bootstrap.servers": stack.settings.bootstrap_servers,
            "linger.ms": 50,
            "batch.size": 1_000_000,
            "queue.buffering.max.kbytes": 262144,
        }
    )
    vschema, kschema = pg_envelope_schema(topic, COLUMNS), key_schema(topic, KEY_COLUMNS)
    print(f"producing a backlog of {records} records ...", flush=True)
    for k, v in generate(records):
        while True:
            try:
                producer.produce(topic, key=json_record(kschema, k), value=json_record(vschema, v))
                break
            except BufferError:
                producer.poll(0.1)
    producer.flush(120)
    settings_file = workdir / "consume.toml"
    settings_file.write_text(f'[routes."public.orders"]\ntarget = "{schema}.orders"\n')
    env = _env(settings_file, stack.settings.target_url)
    settings = load_settings(settings_file, env=env)
    argv = [
        sys.executable,
        "-m",
        "streamer.cli",
        "consume",
        "--group",
        f"{prefix}-mem",
        "--topics",
        f"^{topic}$",
    ]
    started = time.monotonic()
    try:
        code, peak, tail = _run_child([*argv, "--max-events", str(records)], env, timeout=900)
    finally:
        AdminClient({"bootstrap.servers": stack.settings.bootstrap_servers}).delete_topics([topic])
    print(f"consume: exit {code}, {time.monotonic() - started:.0f} s, peak RSS {peak / MIB:.0f} MiB")
    if code != 0:
        raise RuntimeError(f"streamer consume exited {code}: {tail}")
    return peak, settings


def figures(argv: Sequence[str] | None = None) -> list[Figure]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=2_000_000, help="rows of the one replicated transaction")
    parser.add_argument("--records", type=int, default=60_000, help="records of the consumer's backlog")
    args = parser.parse_args(argv)
    settings = load_settings()
    logs.configure("console", "warning")
    out: list[Figure] = []
    with running_stack(settings) as (stack, _started), tempfile.TemporaryDirectory() as tmp:
        prefix = "benchm" + uuid.uuid4().hex[:6]
        schema = f"bench_{prefix}"
        target = create_target_engine(stack.settings.target_url)
        try:
            with target.begin() as conn:
                conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
            peak, rs = replicate_peak(stack, prefix, schema, args.rows, Path(tmp))
            bound = rs.replicate.max_transaction_memory_bytes
            limit = bound + REPLICATE_OVERHEAD
            print(
                f"replicate limit: replicate.max_transaction_memory_bytes {bound / MIB:.0f} MiB + "
                f"{REPLICATE_OVERHEAD / MIB:.0f} MiB fixed = {limit / MIB:.0f} MiB"
            )
            out.append(
                Figure(
                    "memory",
                    f"replicate peak RSS, {args.rows / 1e6:g}M-row transaction",
                    peak / MIB,
                    "MiB",
                    "setting + overhead",
                    limit / MIB,
                    1.0,
                    at_most=True,
                )
            )
            peak, cs = consume_peak(stack, prefix, schema, args.records, Path(tmp))
            c = cs.consumer
            bound = c.queued_max_messages_kbytes * 1024 + c.fetch_max_bytes + 2 * c.batch_max_bytes
            limit = bound + CONSUME_OVERHEAD
            print(
                f"consume limit: queue {c.queued_max_messages_kbytes // 1024} MiB + fetch "
                f"{c.fetch_max_bytes / MIB:.0f} MiB + 2 x batch {c.batch_max_bytes / MIB:.0f} MiB + "
                f"{CONSUME_OVERHEAD / MIB:.0f} MiB fixed = {limit / MIB:.0f} MiB"
            )
            out.append(
                Figure(
                    "memory",
                    "consume peak RSS",
                    peak / MIB,
                    "MiB",
                    "settings + overhead",
                    limit / MIB,
                    1.0,
                    at_most=True,
                )
            )
        finally:
            with target.begin() as conn:
                conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
            target.dispose()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    return run_module(figures, argv)


if __name__ == "__main__":
    sys.exit(main())
