"""Capture batching (issue 14, item 1): how fast a plain reader reads what Debezium produced.

A table of N rows whose Debezium records are about 7 KB (JSON with schemas) is snapshotted by two
connectors on the same worker, one after the other, into two topics:

* **old**: Kafka's and Debezium's defaults, set explicitly per connector (``producer.override.*``:
  linger.ms 0, batch.size 16 KiB, no compression; Debezium max.batch.size 2048, max.queue.size
  8192, poll.interval.ms 500), whatever the worker's own producer settings are;
* **new**: the worker producer settings of :data:`streamer.stack.local.CONNECT_PRODUCER` (as overrides,
  so a worker started before them measures the same) and the Debezium tuning keys of
  ``connectors/inventory.json``.

Each topic is then read from the start by a plain confluent-kafka consumer (no decoding): records/s
from the assignment to the last record, best of 3 interleaved reads. Figure: new / old read rate (floor 3: large batches must read
clearly faster). Run: ``python -m streamer.bench.capture [--rows N]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import httpx
import psycopg2
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from streamer import logs
from streamer.bench.report import Figure, run_module
from streamer.settings import Settings, load_settings
from streamer.stack.local import CONNECT_PRODUCER, Stack, running_stack

ROOT = Path(__file__).resolve().parents[2]
# the keys of connectors/inventory.json that tune Debezium's batching (the "new" connector's)
DEBEZIUM_TUNING = ("max.batch.size", "max.queue.size", "max.queue.size.in.bytes", "poll.interval.ms")
OLD = {
    "producer.override.linger.ms": "0",
    "producer.override.batch.size": "16384",
    "producer.override.compression.type": "none",
    "producer.override.max.request.size": "1048576",
    "max.batch.size": "2048",
    "max.queue.size": "8192",
    "poll.interval.ms": "500",
}


def new_settings(connectors_dir: Path = ROOT / "connectors") -> dict[str, str]:
    """The tuned settings: the worker's producer (as overrides) and inventory.json's Debezium keys."""
    inventory = json.loads((connectors_dir / "inventory.json").read_text())["config"]
    out = {f"producer.override.{k}": v for k, v in CONNECT_PRODUCER.items()}
    out.update({k: inventory[k] for k in DEBEZIUM_TUNING if k in inventory})
    return out


def _connector(stack: Stack, name: str, table: str, tuning: dict[str, str]) -> dict[str, str]:
    return {
        "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
        "plugin.name": "pgoutput",
        "database.hostname": "${env:STREAMER_SOURCE_HOST}",
        "database.port": "${env:STREAMER_SOURCE_PORT}",
        "database.user": "${env:STREAMER_SOURCE_USER}",
        "database.password": "${env:STREAMER_SOURCE_PASSWORD}",
        "database.dbname": stack.cfg.source_database,
        "topic.prefix": name,
        "slot.name": f"{name}_slot",
        "publication.name": f"{name}_pub",
        "publication.autocreate.mode": "filtered",
        "table.include.list": f"public.{table}",
        "snapshot.mode": "initial",
        "decimal.handling.mode": "precise",
        "column.propagate.source.type": ".*",
        "topic.creation.default.partitions": "3",
        "topic.creation.default.replication.factor": "1",
        **tuning,
    }


def create_table(stack: Stack, table: str, rows: int) -> None:
    """``rows`` rows whose Debezium record (JSON with schemas) is about 7 KB: a 4 KB jsonb document."""
    conn = psycopg2.connect(stack.source_admin_dsn(stack.cfg.source_database))
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(
            f'CREATE TABLE public."{table}" (id bigint PRIMARY KEY, name text NOT NULL, '
            "amount numeric(12, 2), created_at timestamptz, doc jsonb)"
        )
        cur.execute(
            f"INSERT INTO public.\"{table}\" SELECT g, 'name ' || g, (g %% 100000) / 100.0, "
            "now() - g * interval '1 second', "
            "(SELECT jsonb_agg(jsonb_build_object('sku', 'sku-' || g || '-' || i, 'qty', i, "
            "'note', md5((g * 100 + i)::text))) FROM generate_series(1, 30) i) "
            "FROM generate_series(1, %s) g",
            (rows,),
        )
    conn.close()


def plain_read(settings: Settings, topic: str, expected: int, timeout: float) -> tuple[int, int, float]:
    """Read the topic from the start without decoding: (records, value bytes, seconds from the
    assignment to the last record, the first fetch's round trip included).

    Stops at ``expected`` records, or after 3 s without a record, or at ``timeout``.
    """
    c = Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": "bench-capture-" + uuid.uuid4().hex[:6],
            "enable.auto.commit": False,
            "enable.partition.eof": False,
        }
    )
    try:
        md = c.list_topics(topic, timeout=10)
        if topic not in md.topics or md.topics[topic].error is not None:
            return 0, 0, 0.0
        n = size = 0
        first = last = time.perf_counter()
        c.assign([TopicPartition(topic, p, 0) for p in md.topics[topic].partitions])
        deadline = time.monotonic() + timeout
        idle_since = time.monotonic()
        while n < expected and time.monotonic() < deadline and time.monotonic() - idle_since < 3:
            batch = c.consume(10_000, timeout=0.5)
            if not batch:
                continue
            for m in batch:
                if m.error() is None:
                    n += 1
                    size += len(m.value() or b"")
            last = time.perf_counter()
            idle_since = time.monotonic()
        return n, size, last - first
    finally:
        c.close()


def snapshot(stack: Stack, name: str, table: str, rows: int, tuning: dict[str, str]) -> str:
    """Snapshot ``table`` through a connector named ``name``; its topic once every record is in it."""
    url = stack.settings.connect_url
    config = _connector(stack, name, table, tuning)
    httpx.put(f"{url}/connectors/{name}/config", json=config, timeout=60).raise_for_status()
    topic = f"{name}.public.{table}"
    delivered_by = time.monotonic() + 600
    n = 0
    while time.monotonic() < delivered_by:
        n, _, _ = plain_read(stack.settings, topic, rows, timeout=600)
        if n >= rows:
            return topic
        state = httpx.get(f"{url}/connectors/{name}/status", timeout=10).json()
        if any(t.get("state") == "FAILED" for t in state.get("tasks", [])):
            raise RuntimeError(f"connector {name} failed: {str(state)[:2000]}")
        time.sleep(1)
    raise RuntimeError(f"connector {name} delivered {n} of {rows} snapshot records to {topic} in time")


def _drop_connector(stack: Stack, name: str) -> None:
    httpx.delete(f"{stack.settings.connect_url}/connectors/{name}", timeout=30)
    conn = psycopg2.connect(stack.source_admin_dsn(stack.cfg.source_database))
    conn.autocommit = True
    with conn.cursor() as cur:
        for _ in range(60):
            cur.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (f"{name}_slot",))
            row = cur.fetchone()
            if row is None:
                break
            if not row[0]:
                cur.execute("SELECT pg_drop_replication_slot(%s)", (f"{name}_slot",))
                break
            time.sleep(0.5)
        cur.execute(f'DROP PUBLICATION IF EXISTS "{name}_pub"')
    conn.close()
    admin = AdminClient({"bootstrap.servers": stack.settings.bootstrap_servers})
    topics = [t for t in admin.list_topics(timeout=10).topics if t.startswith(name + ".")]
    if topics:
        for f in admin.delete_topics(topics, operation_timeout=30).values():
            try:
                f.result(30)
            except Exception as exc:  # a topic left behind costs broker memory only; say so
                print(f"could not delete a benchmark topic: {exc}", file=sys.stderr)


def figures(argv: Sequence[str] | None = None) -> list[Figure]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=30_000, help="snapshotted rows (records per topic)")
    parser.add_argument("--reads", type=int, default=3, help="reads of each topic (the best counts)")
    args = parser.parse_args(argv)
    settings = load_settings()
    logs.configure("console", "warning")
    with running_stack(settings) as (stack, _started):
        base = "bcap" + uuid.uuid4().hex[:6]
        table = base
        print(f"creating a {args.rows:,}-row table of ~7 KB records ...", flush=True)
        create_table(stack, table, args.rows)
        topics: dict[str, str] = {}
        best: dict[str, tuple[int, float, float]] = {}
        try:
            for label, tuning in (("old", OLD), ("new", new_settings())):
                print(f"snapshot through connector {base}_{label} ({label} settings) ...", flush=True)
                topics[label] = snapshot(stack, f"{base}_{label}", table, args.rows, tuning)
            # the machine is shared: read each topic --reads times, interleaved, and keep the best
            for _ in range(args.reads):
                for label, topic in topics.items():
                    n, size, seconds = plain_read(stack.settings, topic, args.rows, timeout=600)
                    if n < args.rows:
                        raise RuntimeError(f"read {n} of {args.rows} records of {topic}")
                    if label not in best or seconds < best[label][2]:
                        best[label] = (n, size / n, seconds)
        finally:
            for label in ("old", "new"):
                _drop_connector(stack, f"{base}_{label}")
            conn = psycopg2.connect(stack.source_admin_dsn(stack.cfg.source_database))
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'DROP TABLE IF EXISTS public."{table}"')
            conn.close()
    results = best
    rate = {label: n / s if s > 0 else float("nan") for label, (n, _, s) in results.items()}
    for label, (n, mean, s) in results.items():
        print(f"{label}: {n:,} records of {mean:,.0f} bytes read in {s:.2f} s: {rate[label]:,.0f} records/s")
    return [
        Figure("capture", "plain read, old settings", rate["old"], "rec/s", "", float("nan"), None),
        Figure("capture", "plain read, new settings", rate["new"], "rec/s", "old", rate["old"], 3.0),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    return run_module(figures, argv)


if __name__ == "__main__":
    sys.exit(main())
