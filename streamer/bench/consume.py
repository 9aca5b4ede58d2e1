"""Benchmark of the consumer into PostgreSQL against the machine's limits for the same records, in one run.

Real records: a table of the stack's source PostgreSQL gets N inserts and N/2 updates, a real
Debezium connector captures them to Kafka (JSON with schemas). Then, over the same records:

1. **plain read**: a plain confluent-kafka consumer reads every record (key and value as bytes, no
   decoding), once with librdkafka's defaults and once with the fetch settings consume uses;
2. **orjson.loads** of the same values in memory (records/s);
3. **streamer consume**: one consumer process applies every record to a PostgreSQL target
   (batches, coalescing, offsets in the target, Kafka commits), first record read to last commit;
4. **the apply engine alone**: the same records decoded beforehand, applied by the sink in consume's
   batches (no Kafka), against **a plain COPY** of the same rows (the events' after images, as COPY
   text in memory) into a same-shaped table without a key;
5. **the server's merge alone**: the same rows, each with a version, staged and merged with the
   sink's statements in consume's batches from COPY text in memory (no Python work per row):
   reported against the plain COPY, it is the most any guarded upsert engine can reach;
6. **one event per transaction**: the first records applied one by one through the same sink.

Floors (issues 4 and 14): (3) >= 0.7 x (1, defaults), (3) >= 0.35 x (2), (4) >= 0.5 x its COPY,
(3) >= 10 x (6); (3) against the tuned read and (5) are reported. Exit status 1 when a floor is missed.
Run: ``python -m streamer.bench.consume [--rows N]`` (starts the stack if it is not running).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

import httpx
import orjson
import psycopg2
import sqlalchemy as sa
from confluent_kafka import Consumer, TopicPartition

from streamer import logs
from streamer.apply import state
from streamer.apply.dialects import postgresql as pg
from streamer.apply.sink import build_sink
from streamer.bench.report import Figure, run_module
from streamer.consume import ConsumerProcess, build_decoder
from streamer.core.events import ChangeEvent
from streamer.db import create_target_engine, dsn_params, quote_ident
from streamer.settings import Settings, load_settings
from streamer.sources.kafka.source import fetch_config
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


def plain_read(
    settings: Settings, topic: str, expected: int, *, tuned: bool
) -> tuple[float, list[tuple[bytes | None, bytes]]]:
    """Seconds for a plain confluent-kafka consumer to read every record (first to last), and the records.

    No decoding: each record's key and value are taken as bytes, nothing else. ``tuned`` False reads with
    librdkafka's defaults (what a plain consumer written by a user gets); True with the fetch and
    queue settings ``streamer consume`` uses (``consumer.*``), the faster of the two here.
    """
    conf: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap_servers,
        "group.id": "bench-plain",
        "enable.auto.commit": False,
    }
    if tuned:
        conf.update(fetch_config(settings.consumer))
    consumer = Consumer(conf)
    md = consumer.list_topics(topic, timeout=10)
    consumer.assign([TopicPartition(topic, p, 0) for p in md.topics[topic].partitions])
    values: list[tuple[bytes | None, bytes]] = []
    started = 0.0
    try:
        while len(values) < expected:
            batch = consumer.consume(1000, timeout=1.0)
            if batch and not started:
                started = time.perf_counter()
            for m in batch:
                if m.error() is None:
                    v = m.value()
                    if v is not None:
                        values.append((m.key(), v))
        return time.perf_counter() - started, values
    finally:
        consumer.close()


def orjson_loads(values: Sequence[bytes], min_seconds: float = 1.0) -> float:
    """records/s of ``orjson.loads`` over the same values in memory (repeated to at least ``min_seconds``)."""
    n, started = 0, time.perf_counter()
    while True:
        for v in values:
            orjson.loads(v)
        n += len(values)
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds:
            return n / elapsed


def decode_all(
    settings: Settings, topic: str, records: Sequence[tuple[bytes | None, bytes]]
) -> list[ChangeEvent]:
    """The change events of the records, decoded in memory (input of the apply-engine figure)."""
    decoder = build_decoder(settings)
    out: list[ChangeEvent] = []
    for i, (k, v) in enumerate(records):
        ev = decoder.decode(topic, 0, i, k, v, [])
        if isinstance(ev, ChangeEvent):
            out.append(ev)
    return out


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


def _in_schema(events: Sequence[ChangeEvent], schema: str) -> list[ChangeEvent]:
    """The events routed to a table of the same name in another target schema."""
    return [
        dataclasses.replace(e, table=type(e.table)(e.table.database, schema, e.table.table)) for e in events
    ]


def apply_engine(settings: Settings, events: Sequence[ChangeEvent], target_url: str) -> float:
    """Seconds for the sink alone to apply decoded events in consume's batches (no Kafka, one thread)."""
    s = load_settings(overrides={"target_url": target_url})
    sink = build_sink(s)
    state.upgrade(sink.engine)
    size = s.consumer.batch_max_events
    # the first batch creates the table; time the rest of the work from a table that exists, as consume
    sink.apply(list(events[:1]), {("bench-engine", 0): 1}, "bench-engine")
    started = time.perf_counter()
    for i in range(1, len(events), size):
        batch = list(events[i : i + size])
        sink.apply(batch, {("bench-engine", 0): i + len(batch)}, "bench-engine")
    elapsed = time.perf_counter() - started
    sink.engine.dispose()
    return elapsed


def _after_images(stack: Stack, source_table: str, *, versioned: bool) -> list[bytes]:
    """The events' after images as COPY text lines, read from the source: its rows (the inserts),
    then its updated rows; ``versioned`` appends a version per row (first image < second)."""
    src = psycopg2.connect(stack.source_admin_dsn(stack.cfg.source_database))
    lines: list[bytes] = []
    with src.cursor() as cur:
        for n, where in ((0, ""), (1, "WHERE id % 2 = 0")):
            version = f", '{n}/' || lpad(to_hex(id), 12, '0')" if versioned else ""
            buf = io.BytesIO()
            cur.copy_expert(
                f"COPY (SELECT *{version} FROM public.{source_table} {where} ORDER BY id) TO STDOUT", buf
            )
            lines += buf.getvalue().splitlines(keepends=True)
    src.close()
    return lines


def plain_copy(stack: Stack, source_table: str, schema: str, target_url: str) -> tuple[int, float]:
    """The same rows as the apply-engine figure's events, by one plain COPY into a same-shaped table.

    The rows are the events' after images (:func:`_after_images`), as COPY text read from the source
    beforehand; timed: the target's ``COPY FROM STDIN`` and its commit.
    """
    lines = _after_images(stack, source_table, versioned=False)
    conn = psycopg2.connect(**dsn_params(target_url))
    with conn.cursor() as cur:
        cur.execute(f'CREATE TABLE "{schema}".plain ({COLUMNS.replace("PRIMARY KEY", "")})')
    conn.commit()
    buf = io.BytesIO(b"".join(lines))
    started = time.perf_counter()
    with conn.cursor() as cur:
        cur.copy_expert(f'COPY "{schema}".plain FROM STDIN', buf)
    conn.commit()
    elapsed = time.perf_counter() - started
    conn.close()
    return len(lines), elapsed


def server_merge(
    stack: Stack, source_table: str, schema: str, target_url: str, batch: int
) -> tuple[int, float]:
    """The server's own share of the apply engine: its statements on the same rows, without Python work.

    The same after images as :func:`plain_copy`, each with a version, as COPY text in memory; per
    batch of ``batch`` rows (consume's ``batch_max_events``): COPY into a temporary stage, the
    guarded ``INSERT .. ON CONFLICT .. DO UPDATE .. WHERE`` newer into a keyed table, commit: the
    sink's own statements (:func:`~streamer.apply.dialects.postgresql.stage_sql` and ``merge_sql``),
    without the offsets table and the catalog.
    """
    lines = _after_images(stack, source_table, versioned=True)
    names = ["id", "name", "email", "amount", "score", "active", "created_at", "updated_at", "payload", "_v"]
    cols = ", ".join(quote_ident(c) for c in names)
    target, stage = f"{quote_ident(schema)}.merged", quote_ident("bench_stage")
    conn = psycopg2.connect(**dsn_params(target_url))
    with conn.cursor() as cur:
        cur.execute(f"CREATE TABLE {target} ({COLUMNS}, _v text)")
    conn.commit()
    started = time.perf_counter()
    with conn.cursor() as cur:
        for i in range(0, len(lines), batch):
            cur.execute(pg.stage_sql(stage, target, cols, on_commit="DELETE ROWS"))
            cur.copy_expert(f"COPY {stage} ({cols}) FROM STDIN", io.BytesIO(b"".join(lines[i : i + batch])))
            cur.execute(pg.merge_sql(target, stage, names, ["id"], "_v", quote_ident))
            conn.commit()
    elapsed = time.perf_counter() - started
    conn.close()
    return len(lines), elapsed


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
        schemas = [f"bench_{prefix}", f"bench_{prefix}_engine"]
        results: dict[str, tuple[int, float]] = {}
        try:
            t_default, _ = plain_read(settings, topic, expected, tuned=False)
            results["plain read, librdkafka defaults"] = (expected, t_default)
            t_tuned, records = plain_read(settings, topic, expected, tuned=True)
            results["plain read, consume's fetch settings"] = (expected, t_tuned)
            orjson_rate = orjson_loads([v for _, v in records])
            events = decode_all(settings, topic, records)
            del records
            with target_db.begin() as conn:
                for schema in schemas:
                    conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
            apply_url = stack.settings.target_url
            t_apply = apply_consumer(settings, topic, expected, apply_url, f"{prefix}-apply")
            results["streamer consume -> PostgreSQL"] = (expected, t_apply)
            t_engine = apply_engine(settings, _in_schema(events, schemas[1]), apply_url)
            results["apply engine alone (decoded events)"] = (len(events) - 1, t_engine)
            results["plain COPY of the same rows"] = plain_copy(stack, prefix, schemas[1], apply_url)
            results["the server's merge alone (same rows)"] = server_merge(
                stack, prefix, schemas[1], apply_url, settings.consumer.batch_max_events
            )
            single = _in_schema(events[: args.single], schemas[0])
            t_single = one_per_transaction(settings, single, apply_url)
            results["one event per transaction"] = (len(single), t_single)
        finally:
            httpx.delete(f"{stack.settings.connect_url}/connectors/{prefix}", timeout=30)
            _cleanup(stack, prefix, schemas, target_db)
            target_db.dispose()
    rates = {name: n / t for name, (n, t) in results.items()}
    print(f"\n{'path':<38} {'records':>9} {'seconds':>9} {'records/s':>11}")
    for name, (n, t) in results.items():
        print(f"{name:<38} {n:>9} {t:>9.2f} {rates[name]:>11.0f}")
    print(f"{'orjson.loads of the values, in memory':<38} {'':>9} {'':>9} {orjson_rate:>11.0f}")
    apply = rates["streamer consume -> PostgreSQL"]
    name = "consume -> PostgreSQL"
    return [
        Figure("consume", name, apply, "ev/s", "plain read", rates["plain read, librdkafka defaults"], 0.70),
        Figure(
            "consume", name, apply, "ev/s", "tuned read", rates["plain read, consume's fetch settings"], None
        ),
        Figure("consume", name, apply, "ev/s", "orjson.loads", orjson_rate, 0.35),
        Figure(
            "consume",
            "apply engine -> PostgreSQL",
            rates["apply engine alone (decoded events)"],
            "ev/s",
            "plain COPY",
            rates["plain COPY of the same rows"],
            0.5,
        ),
        Figure(
            "consume",
            "server's merge alone",
            rates["the server's merge alone (same rows)"],
            "ev/s",
            "plain COPY",
            rates["plain COPY of the same rows"],
            None,
        ),
        Figure("consume", name, apply, "ev/s", "1 per txn", rates["one event per transaction"], 10),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    return run_module(figures, argv)


def _cleanup(stack: Stack, prefix: str, schemas: Sequence[str], target: sa.Engine) -> None:
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
        for schema in schemas:
            tconn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        tconn.execute(sa.text(f"DROP TABLE IF EXISTS public.{prefix}"))


if __name__ == "__main__":
    sys.exit(main())
