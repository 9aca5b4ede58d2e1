"""End-to-end delay (issue 14, item 5): source commit -> target commit under the demo's workload.

The demo's pipeline on tables of its own: the sample tables in a new schema of the source, a
connector made from ``connectors/inventory.json`` (its settings; name, prefix, slot, publication and
tables of its own), two consumers in one group (after `streamer load` of the tables; started and settled first, as in the demo), then the
demo's live workload (100 transactions/s of 1-5 changes) for ``--seconds``. Each event's delay is
the batch's target commit time minus the event's source commit time (``source.ts_us``); the split
at Debezium's processing time (the envelope's ``ts_us``) shows capture vs delivery and apply.

Figures: p50 <= 300 ms and p99 <= 1 s (the limits are the issue's targets, not measured).
Run: ``python -m streamer.bench.delay [--seconds S]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import httpx
import psycopg2
import sqlalchemy as sa

from streamer import logs
from streamer.apply import state
from streamer.apply.sink import build_sink
from streamer.bench.report import Figure, run_module
from streamer.consume import BatchReport, ConsumerProcess, Hooks, build_decoder
from streamer.load.loader import Loader
from streamer.settings import Settings, load_settings
from streamer.stack.demo import Delays, consumer_thread, create_topics, wait_joined
from streamer.stack.local import running_stack
from streamer.stack.workload import SAMPLE_TABLES, create_sample, run_workload

ROOT = Path(__file__).resolve().parents[2]


def connector_config(name: str, schema: str, connectors_dir: Path = ROOT / "connectors") -> dict[str, str]:
    """inventory.json's config for tables of ``schema``, with a name, slot and publication of its own."""
    config: dict[str, str] = dict(json.loads((connectors_dir / "inventory.json").read_text())["config"])
    config.update(
        {
            "topic.prefix": name,
            "slot.name": f"{name}_slot",
            "publication.name": f"{name}_pub",
            "table.include.list": ",".join(f"{schema}.{t}" for t in SAMPLE_TABLES),
        }
    )
    return config


class Split:
    """Per-event capture (source commit -> Debezium) and delivery (Debezium -> target commit) delays."""

    def __init__(self) -> None:
        self.capture: list[float] = []
        self.deliver: list[float] = []
        self.worst: list[tuple[float, float, int, int]] = []  # (delay, source commit, batch records, batch)
        self.lock = threading.Lock()
        self.workload_started = 0.0

    def on_batch_report(self, report: BatchReport) -> None:
        with self.lock:
            for ev in report.events:
                if ev.source_ts is not None and ev.event_ts is not None:
                    self.capture.append((ev.event_ts - ev.source_ts).total_seconds())
                    self.deliver.append(report.committed_at - ev.event_ts.timestamp())
                    delay = report.committed_at - ev.source_ts.timestamp()
                    self.worst.append((delay, ev.source_ts.timestamp(), report.records, report.number))
            self.worst = sorted(self.worst, reverse=True)[:10]


def _pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    data = sorted(values)
    return data[min(len(data) - 1, int(q * len(data)))]


def _wait_streaming(settings: Settings, name: str, slot: str, timeout: float = 120) -> None:
    """The task runs and holds its slot: changes committed from now on are captured."""
    deadline = time.monotonic() + timeout
    conn = psycopg2.connect(settings.source_url)
    conn.autocommit = True
    try:
        while time.monotonic() < deadline:
            st = httpx.get(f"{settings.connect_url}/connectors/{name}/status", timeout=10).json()
            tasks = st.get("tasks") or []
            if any(t.get("state") == "FAILED" for t in tasks):
                raise RuntimeError(f"connector {name} failed: {str(st)[:2000]}")
            with conn.cursor() as cur:
                cur.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,))
                row = cur.fetchone()
            if tasks and tasks[0].get("state") == "RUNNING" and row is not None and row[0]:
                return
            time.sleep(0.5)
    finally:
        conn.close()
    raise RuntimeError(f"connector {name} was not streaming from slot {slot} within {timeout:.0f} s")


def measure(settings: Settings, seconds: float, consumers: int) -> tuple[Delays, Split, float]:
    """Run the pipeline and the workload; (delays, their split, group join seconds)."""
    name = "bdel" + uuid.uuid4().hex[:6]
    schema, group = name, f"{name}-group"
    url = settings.connect_url
    create_sample(settings.source_url, schema, 2000)
    delays, split = Delays(), Split()
    errors: list[BaseException] = []
    procs: list[ConsumerProcess] = []
    threads: list[threading.Thread] = []
    try:
        httpx.put(
            f"{url}/connectors/{name}/config", json=connector_config(name, schema), timeout=60
        ).raise_for_status()
        _wait_streaming(settings, name, f"{name}_slot")
        # as the demo: the loader seeds the target (and creates its tables) once the slot exists
        sink = build_sink(settings)
        state.upgrade(sink.engine)
        Loader(settings.source_url, sink, workers=2).run([f"{schema}.{t}" for t in SAMPLE_TABLES])
        sink.engine.dispose()
        config = connector_config(name, schema)
        partitions = int(config.get("topic.creation.default.partitions", "1"))
        create_topics(settings, [f"{name}.{schema}.{t}" for t in SAMPLE_TABLES], partitions)

        def on_batch_report(report: BatchReport) -> None:
            delays.on_batch_report(report)
            split.on_batch_report(report)

        for _ in range(consumers):
            sink = build_sink(settings)
            state.upgrade(sink.engine)
            proc = ConsumerProcess(
                settings,
                sink,
                build_decoder(settings),
                group=group,
                topics=rf"^{name}\.[^.]+\.[^.]+$",
                hooks=Hooks(on_batch_report=on_batch_report),
            )
            procs.append(proc)
            threads.append(consumer_thread(proc, errors))
        for thread in threads:
            thread.start()
        joined = wait_joined(settings, group, consumers)
        print(
            f"group stable with {consumers} members after {joined:.1f} s; workload for {seconds:.0f} s",
            flush=True,
        )
        split.workload_started = time.time()
        stats = run_workload(settings.source_url, schema, seconds=seconds, rate=100, seed=7)
        last, idle_since = -1, time.monotonic()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not errors and time.monotonic() - idle_since < 3:
            time.sleep(0.5)
            if delays.events != last:
                last, idle_since = delays.events, time.monotonic()
        print(f"{stats.transactions:,} transactions, {delays.events:,} events applied", flush=True)
    finally:
        for p in procs:
            p.stop()
        for thread in threads:
            thread.join(60)
        _cleanup(settings, name, schema, group)
    if errors:
        raise RuntimeError(f"a consumer failed: {errors[0]}")
    return delays, split, joined


def _cleanup(settings: Settings, name: str, schema: str, group: str) -> None:
    httpx.delete(f"{settings.connect_url}/connectors/{name}", timeout=30)
    conn = psycopg2.connect(settings.source_url)
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
        cur.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    conn.close()
    sink = build_sink(settings)
    try:
        with sink.engine.begin() as tconn:
            tconn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
            tconn.execute(sa.delete(state.offsets_table).where(state.offsets_table.c.consumer_group == group))
    finally:
        sink.engine.dispose()


def figures(argv: Sequence[str] | None = None) -> list[Figure]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=20.0, help="workload duration")
    parser.add_argument("--consumers", type=int, default=2, help="consumers in the group (the demo's 2)")
    args = parser.parse_args(argv)
    settings = load_settings()
    logs.configure("console", "warning")
    with running_stack(settings) as (stack, _started):
        delays, split, _joined = measure(stack.settings, args.seconds, args.consumers)
    ms = 1000.0
    print(
        f"{len(delays.values):,} events; capture (source commit -> Debezium) p50 {_pct(split.capture, 0.5) * ms:.0f} "
        f"ms p99 {_pct(split.capture, 0.99) * ms:.0f} ms; delivery+apply (Debezium -> target commit) p50 "
        f"{_pct(split.deliver, 0.5) * ms:.0f} ms p99 {_pct(split.deliver, 0.99) * ms:.0f} ms"
    )
    print(
        "slowest events (delay ms @ seconds into the workload / records in their batch / batch number): "
        + ", ".join(
            f"{d * ms:.0f}@{t - split.workload_started:.1f}s/{n}/#{b}" for d, t, n, b in split.worst[:5]
        )
    )
    return [
        Figure(
            "delay", "end-to-end p50", delays.percentile(0.50) * ms, "ms", "target", 300.0, 1.0, at_most=True
        ),
        Figure(
            "delay", "end-to-end p99", delays.percentile(0.99) * ms, "ms", "target", 1000.0, 1.0, at_most=True
        ),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    return run_module(figures, argv)


if __name__ == "__main__":
    sys.exit(main())
