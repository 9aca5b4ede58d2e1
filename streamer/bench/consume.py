"""Benchmark of the consumer's apply rate into PostgreSQL, against two baselines, in one run.

Real records: a table of the stack's source PostgreSQL gets N inserts and N/2 updates, a real
Debezium connector captures them to Kafka (JSON with schemas). Then, over the same records:

1. **decode only**: a consumer reads and decodes every record, applying nothing;
2. **streamer consume**: one consumer process applies every record to a PostgreSQL target
   (batches, coalescing, offsets in the target, Kafka commits);
3. **one event per transaction**: the first records applied one by one, each in its own
   transaction, through the same sink.

Floors (issue 4): (2) >= 70% of (1), and (2) >= 10x (3). Exit status 1 when a floor is missed.
Run: ``python -m streamer.bench.consume [--rows N]`` (starts the stack if it is not running).
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

import httpx
import psycopg2
import sqlalchemy as sa
from confluent_kafka import Consumer, TopicPartition

from streamer import logs
from streamer.apply import state
from streamer.apply.sink import build_sink
from streamer.bench.report import Figure, run_module
from streamer.consume import ConsumerProcess, build_decoder, headers_of
from streamer.core.events import ChangeEvent
from streamer.db import create_target_engine
from streamer.settings import Settings, load_settings
from streamer.stack.local import Stack, running_stack

COLUMNS = """
    id bigint PRIMARY KEY,
    name text NOT NULL,
    email varchar(200),
    amount numeric(12, 2),
    score double precision,
    active boolean,
    created_at timestamptz,
    updated_at timestamp,
    payload jsonb
"""


def _connector(stack: Stack, prefix: str, table: str) -> dict[str, str]:
    return {
        "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
        "plugin.name": "pgoutput",
        "database.hostname": "${env:STREAMER_SOURCE_HOST}",
        "database.port": "${env:STREAMER_SOURCE_PORT}",
        "database.user": "${env:STREAMER_SOURCE_USER}",
        "database.password": "${env:STREAMER_SOURCE_PASSWORD}",
        "database.dbname": stack.cfg.source_database,
        "topic.prefix": prefix,
        "slot.name": f"{prefix}_slot",
        "publication.name": f"{prefix}_pub",
        "publication.autocreate.mode": "filtered",
        "table.include.list": f"public.{table}",
        "snapshot.mode": "no_data",
        "column.propagate.source.type": ".*",
        "topic.creation.default.partitions": "3",
        "topic.creation.default.replication.factor": "1",
        "max.batch.size": "8192",
        "max.queue.size": "32768",
    }


def produce_records(
    stack: Stack,
    prefix: str,
    rows: int,
    setup: Sequence[tuple[str, tuple[Any, ...]]] = (),
    deliver_timeout: float = 600,
) -> tuple[str, int]:
    """Create a table, capture it, write ``rows`` inserts and ``rows // 2`` updates; wait for them in Kafka.

    ``setup`` statements run right after the table is created, before anything is written (the
    replicate benchmark makes its own publication and slot there). Returns (topic, records).
    """
    table = prefix
    conn = psycopg2.connect(stack.source_admin_dsn(stack.cfg.source_database))
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"CREATE TABLE public.{table} ({COLUMNS})")
        for statement, params in setup:
            cur.execute(statement, params)
    url = stack.settings.connect_url
    httpx.put(
        f"{url}/connectors/{prefix}/config", json=_connector(stack, prefix, table), timeout=60
    ).raise_for_status()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        st = httpx.get(f"{url}/connectors/{prefix}/status", timeout=10).json()
        if st.get("tasks") and st["tasks"][0]["state"] == "RUNNING":
            break
        time.sleep(0.5)
    time.sleep(2)
    with conn.cursor() as cur:
        for start in range(0, rows, 10_000):
            n = min(10_000, rows - start)
            cur.execute(
                f"INSERT INTO public.{table} SELECT g, 'name ' || g, 'u' || g || '@example.com', (g % 100000) / 100.0, "
                "g * 1.5, g % 2 = 0, now() - g * interval '1 second', localtimestamp, "
                "jsonb_build_object('g', g, 'tags', jsonb_build_array('a', 'b')) "
                f"FROM generate_series({start + 1}, {start + n}) g"
            )
        cur.execute(f"UPDATE public.{table} SET amount = amount + 1, active = NOT active WHERE id % 2 = 0")
    conn.close()
    topic = f"{prefix}.public.{table}"
    expected = rows + rows // 2
    deadline = time.monotonic() + deliver_timeout
    while time.monotonic() < deadline:
        if _topic_size(stack.settings, topic) >= expected:
            return topic, expected
        time.sleep(1)
    raise RuntimeError(f"Debezium did not deliver {expected} records to {topic} in time")


def _topic_size(settings: Settings, topic: str) -> int:
    """Records in a topic, by reading it (the local broker's ListOffsets is not exact)."""
    c = Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": "bench-count",
            "enable.auto.commit": False,
        }
    )
    try:
        md = c.list_topics(topic, timeout=10)
        if topic not in md.topics or md.topics[topic].error is not None:
            return 0
        parts = [TopicPartition(topic, p, 0) for p in md.topics[topic].partitions]
        c.assign(parts)
        n, idle_since = 0, time.monotonic()
        while time.monotonic() - idle_since < 1.0:
            batch = c.consume(10_000, timeout=0.2)
            n += sum(1 for m in batch if m.error() is None)
            if batch:
                idle_since = time.monotonic()
        return n
    finally:
        c.close()


def decode_only(settings: Settings, topic: str, expected: int) -> tuple[float, list[ChangeEvent]]:
    """Seconds to read and decode every record of the topic (first-record to last-record)."""
    decoder = build_decoder(settings)
    c = Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": "bench-decode",
            "enable.auto.commit": False,
        }
    )
    md = c.list_topics(topic, timeout=10)
    c.assign([TopicPartition(topic, p, 0) for p in md.topics[topic].partitions])
    sample: list[ChangeEvent] = []
    n, started = 0, 0.0
    try:
        while n < expected:
            batch = c.consume(1000, timeout=1.0)
            if batch and not started:
                started = time.perf_counter()
            for m in batch:
                if m.error() is not None:
                    continue
                ev = decoder.decode(
                    m.topic() or "", m.partition() or 0, m.offset() or 0, m.key(), m.value(), headers_of(m)
                )
                if isinstance(ev, ChangeEvent) and len(sample) < 5000:
                    sample.append(ev)
                n += 1
        return time.perf_counter() - started, sample
    finally:
        c.close()


def apply_consumer(settings: Settings, topic: str, expected: int, target_url: str, group: str) -> float:
    """Seconds for one consumer process to apply every record (first record read to last commit)."""
    s = load_settings(overrides={"target_url": target_url})
    sink = build_sink(s)
    state.upgrade(sink.engine)
    proc = ConsumerProcess(s, sink, build_decoder(s), group=group, topics=f"^{topic}$", max_events=expected)
    stats = proc.run()
    sink.engine.dispose()
    if stats.records < expected or stats.first_record_at is None or stats.last_batch_at is None:
        raise RuntimeError(f"consumer applied {stats.records} of {expected} records")
    return stats.last_batch_at - stats.first_record_at


def one_per_transaction(settings: Settings, events: Sequence[ChangeEvent], target_url: str) -> float:
    """Seconds to apply ``events`` one per transaction through the same sink."""
    s = load_settings(overrides={"target_url": target_url})
    sink = build_sink(s)
    state.upgrade(sink.engine)
    started = time.perf_counter()
    for i, ev in enumerate(events):
        sink.apply([ev], {("bench-single", 0): i + 1}, "bench-single")
    elapsed = time.perf_counter() - started
    sink.engine.dispose()
    return elapsed


def figures(argv: Sequence[str] | None = None) -> list[Figure]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument(
        "--rows", type=int, default=100_000, help="inserted rows (updates add half as many records)"
    )
    parser.add_argument(
        "--single", type=int, default=3000, help="events for the one-per-transaction baseline"
    )
    args = parser.parse_args(argv)
    settings = load_settings()
    logs.configure("console", "warning")
    with running_stack(settings) as (stack, _started):
        prefix = "bench" + uuid.uuid4().hex[:6]
        print(f"producing {args.rows} inserts + {args.rows // 2} updates through Debezium ...", flush=True)
        topic, expected = produce_records(stack, prefix, args.rows)
        target_db = create_target_engine(stack.settings.target_url)
        schema = f"bench_{prefix}"
        results: dict[str, Any] = {}
        try:
            t_decode, sample = decode_only(settings, topic, expected)
            results["decode only"] = (expected, t_decode)
            with target_db.begin() as conn:
                conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
            apply_url = stack.settings.target_url
            t_apply = apply_consumer(settings, topic, expected, apply_url, f"{prefix}-apply")
            results["streamer consume -> PostgreSQL"] = (expected, t_apply)
            single = sample[: args.single]
            # a separate target table for the baseline: route by renaming the source table
            single_events = [
                ChangeEvent(
                    **{
                        **{f: getattr(e, f) for f in e.__dataclass_fields__},
                        "table": type(e.table)(e.table.database, schema, e.table.table),
                    }
                )
                for e in single
            ]
            t_single = one_per_transaction(settings, single_events, apply_url)
            results["one event per transaction"] = (len(single), t_single)
        finally:
            httpx.delete(f"{stack.settings.connect_url}/connectors/{prefix}", timeout=30)
            _cleanup(stack, prefix, schema, target_db)
            target_db.dispose()
    rates = {name: n / t for name, (n, t) in results.items()}
    print(f"\n{'path':<34} {'records':>9} {'seconds':>9} {'records/s':>11}")
    for name, (n, t) in results.items():
        print(f"{name:<34} {n:>9} {t:>9.2f} {rates[name]:>11.0f}")
    apply = rates["streamer consume -> PostgreSQL"]
    return [
        Figure("consume", "consume -> PostgreSQL", apply, "ev/s", "decode only", rates["decode only"], 0.70),
        Figure(
            "consume",
            "consume -> PostgreSQL",
            apply,
            "ev/s",
            "1 per txn",
            rates["one event per transaction"],
            10,
        ),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    return run_module(figures, argv)


def _cleanup(stack: Stack, prefix: str, schema: str, target: sa.Engine) -> None:
    conn = psycopg2.connect(stack.source_admin_dsn(stack.cfg.source_database))
    conn.autocommit = True
    with conn.cursor() as cur:
        for _ in range(60):
            cur.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (f"{prefix}_slot",))
            row = cur.fetchone()
            if row is None:
                break
            if not row[0]:
                cur.execute("SELECT pg_drop_replication_slot(%s)", (f"{prefix}_slot",))
                break
            time.sleep(0.5)
        cur.execute(f'DROP PUBLICATION IF EXISTS "{prefix}_pub"')
        cur.execute(f"DROP TABLE IF EXISTS public.{prefix}")
    conn.close()
    with target.begin() as tconn:
        tconn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        tconn.execute(sa.text(f"DROP TABLE IF EXISTS public.{prefix}"))


if __name__ == "__main__":
    sys.exit(main())
