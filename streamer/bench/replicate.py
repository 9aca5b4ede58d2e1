"""Benchmark: the same changes applied through ``streamer replicate`` and through the Kafka path.

One table of the stack's source PostgreSQL (the columns of :mod:`streamer.bench.consume`) is
captured twice from the start: by a pgoutput slot of our own and by a Debezium connector. Then
it gets N inserts and N/2 updates (the same statements as the Kafka benchmark). Once Debezium
has delivered every record to Kafka, both backlogs are applied to the stack's PostgreSQL target,
each into its own table:

1. **streamer replicate**: one process reads the slot (the server decodes the WAL, streamer
   parses pgoutput, converts the values, applies batches); timed from the first replication
   message to the last batch committed;
2. **streamer consume** (Kafka path): one consumer process reads the topic and applies it; timed
   from the first record read to the last batch committed. Debezium's own capture time is not
   included (the records are already in Kafka), so this path is favoured.

Prints events/s for each. Run: ``python -m streamer.bench.replicate [--rows N]`` (starts the
stack if it is not running); the default of 20000 rows keeps it well under two minutes.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import uuid
from collections.abc import Sequence

import httpx
import psycopg2
import sqlalchemy as sa

from streamer import logs
from streamer.apply import state
from streamer.apply.sink import build_sink
from streamer.bench.consume import _cleanup, apply_consumer, produce_records
from streamer.bench.report import Figure, run_module
from streamer.db import create_target_engine
from streamer.replicate import ReplicationProcess
from streamer.settings import load_settings
from streamer.stack.local import Stack, running_stack


def prepare(stack: Stack, prefix: str, rows: int) -> tuple[str, str, int]:
    """Create the table, our slot and the Debezium connector, write the changes, wait for Kafka.

    Returns (table, topic, number of change events).
    """
    slot = f"{prefix}_rslot"
    topic, expected = produce_records(
        stack,
        prefix,
        rows,
        setup=[
            (f'CREATE PUBLICATION "{prefix}_rpub" FOR TABLE public.{prefix}', ()),
            ("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,)),
        ],
        deliver_timeout=300,
    )
    return prefix, topic, expected


def apply_replicate(stack: Stack, prefix: str, table: str, expected: int, schema: str) -> float:
    """Seconds for one replicate process to apply the slot's backlog (first message to last commit)."""
    s = load_settings(
        overrides={
            "target_url": stack.settings.target_url,
            "routes": {f"public.{table}": {"target": f"{schema}.{table}"}},
        }
    )
    sink = build_sink(s)
    state.upgrade(sink.engine)
    proc = ReplicationProcess(
        s,
        sink,
        source_url=stack.settings.source_url,
        slot=f"{prefix}_rslot",
        publication=f"{prefix}_rpub",
        max_events=expected,
        until_idle=30,
    )
    stats = proc.run()
    sink.engine.dispose()
    if stats.events_applied < expected or stats.first_message_at is None or stats.last_batch_at is None:
        raise RuntimeError(f"replicate applied {stats.events_applied} of {expected} events")
    return stats.last_batch_at - stats.first_message_at


def _drop_ours(stack: Stack, prefix: str) -> None:
    conn = psycopg2.connect(stack.source_admin_dsn(stack.cfg.source_database))
    conn.autocommit = True
    with conn.cursor() as cur:
        for _ in range(60):
            cur.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (f"{prefix}_rslot",))
            row = cur.fetchone()
            if row is None:
                break
            if not row[0]:
                cur.execute("SELECT pg_drop_replication_slot(%s)", (f"{prefix}_rslot",))
                break
            time.sleep(0.5)
        cur.execute(f'DROP PUBLICATION IF EXISTS "{prefix}_rpub"')
    conn.close()


def figures(argv: Sequence[str] | None = None) -> list[Figure]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=20_000, help="inserted rows (updates add half as many)")
    parser.add_argument("--skip-kafka", action="store_true", help="measure only the replicate path")
    args = parser.parse_args(argv)
    settings = load_settings()
    logs.configure("console", "warning")
    results: dict[str, tuple[int, float]] = {}
    with running_stack(settings) as (stack, _started):
        prefix = "benchr" + uuid.uuid4().hex[:6]
        schema = f"bench_{prefix}"
        target = create_target_engine(stack.settings.target_url)
        try:
            print(
                f"writing {args.rows} inserts + {args.rows // 2} updates, captured by a slot and by Debezium ..."
            )
            table, topic, expected = prepare(stack, prefix, args.rows)
            with target.begin() as conn:
                conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
            results["streamer replicate -> PostgreSQL"] = (
                expected,
                apply_replicate(stack, prefix, table, expected, schema),
            )
            if not args.skip_kafka:
                t_kafka = apply_consumer(
                    settings, topic, expected, stack.settings.target_url, f"{prefix}-apply"
                )
                results["streamer consume (Kafka) -> PostgreSQL"] = (expected, t_kafka)
        finally:
            httpx.delete(f"{stack.settings.connect_url}/connectors/{prefix}", timeout=30)
            _drop_ours(stack, prefix)
            _cleanup(stack, prefix, schema, target)
            target.dispose()
    print(f"\n{'path':<40} {'events':>9} {'seconds':>9} {'events/s':>10}")
    for name, (n, t) in results.items():
        print(f"{name:<40} {n:>9} {t:>9.2f} {n / t:>10.0f}")
    print(
        "\nreplicate: from the first replication message to the last commit (the server's WAL decoding "
        "included);\nconsume: from the first Kafka record to the last commit (Debezium's capture not included)."
    )
    n, t = results["streamer replicate -> PostgreSQL"]
    kafka = results.get("streamer consume (Kafka) -> PostgreSQL")
    limit = kafka[0] / kafka[1] if kafka is not None else math.nan
    return [Figure("replicate", "replicate -> PostgreSQL", n / t, "ev/s", "consume (Kafka)", limit, None)]


def main(argv: Sequence[str] | None = None) -> int:
    return run_module(figures, argv)


if __name__ == "__main__":
    sys.exit(main())
