"""``streamer demo``: the whole product on sample data, ending with a validation that must pass.

Run by ``make demo`` after ``make up``. Steps:

1. reset: the demo connector, its slot and topics, the sample tables in source and target and
   streamer's state rows for them are removed, so the demo can run again and again;
2. sample source data: ``customers``, ``products``, ``orders`` (``--rows``, default 100,000) in
   the source database's ``public`` schema;
3. ``streamer connectors apply --wait 120`` with ``connectors/`` (``inventory.json``: the slot is
   created now and captures every change from here on; no Debezium snapshot);
4. ``streamer load`` of the three tables (one consistent snapshot);
5. consumers (``--consumers``, default 2, one group) apply the stream;
6. a live workload of inserts, updates and deletes for ``--seconds`` (default 30);
7. the status view, then waiting until the consumers have caught up (idle for 10 s);
8. ``streamer validate`` of the three tables; the summary shows tables, rows, events applied,
   events/s, end-to-end delay (source commit to target commit) p50/p99 and the result.

Exit status 0 only when validation passes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

import httpx
import psycopg2
import sqlalchemy as sa
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from rich.console import Console
from rich.table import Table

from streamer import logs
from streamer.apply import state
from streamer.apply.sink import build_sink
from streamer.consume import BatchReport, ConsumerProcess, Hooks, build_decoder
from streamer.core.errors import StreamerError
from streamer.core.events import TableId
from streamer.db import create_target_engine
from streamer.load.loader import Loader
from streamer.ops.groups import BrokerError, describe_group
from streamer.settings import Settings
from streamer.stack.workload import SAMPLE_TABLES, create_sample, run_workload
from streamer.validate import TableDiff, validate_table

CONNECTOR = "inventory"
SLOT = "streamer_inventory"
PREFIX = "inventory"
GROUP = "streamer-demo"
SCHEMA = "public"


class DemoError(StreamerError):
    """A demo step failed."""


@dataclasses.dataclass
class Delays:
    """End-to-end delays (source commit -> target commit), in seconds, collected by the consumers.

    Source commit: the event's ``source_ts`` (Debezium's ``source.ts_us``, the transaction's commit
    time on the source server). Target commit: the batch's ``committed_at``, taken right after the
    target's COMMIT returned (not when the consumer loop noticed it). Both clocks are this machine's.
    """

    values: list[float] = dataclasses.field(default_factory=list)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    events: int = 0
    first: float | None = None
    last: float | None = None

    def on_batch_report(self, report: BatchReport) -> None:
        committed = dt.datetime.fromtimestamp(report.committed_at, dt.UTC)
        mono = time.monotonic()
        with self.lock:
            self.events += report.result.events
            if report.result.events:
                self.first = self.first if self.first is not None else mono
                self.last = mono
            for ev in report.events:
                if ev.source_ts is not None:
                    self.values.append((committed - ev.source_ts).total_seconds())

    def percentile(self, q: float) -> float:
        if not self.values:
            return float("nan")
        data = sorted(self.values)
        return data[min(len(data) - 1, int(q * len(data)))]


def create_topics(settings: Settings, topics: Sequence[str], partitions: int) -> None:
    """Create the change topics before the consumers subscribe (Connect would create them at the first
    change, with the same partitions): a member whose pattern matches no topic yet does not join its
    group, and the demo's first changes would wait for the topic's discovery and the group join."""
    admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers})
    existing = set(admin.list_topics(timeout=10).topics)
    wanted = [NewTopic(t, partitions, 1) for t in topics if t not in existing]
    if not wanted:
        return
    for topic, future in admin.create_topics(wanted, operation_timeout=30).items():
        try:
            future.result(30)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise DemoError(f"could not create topic {topic}: {exc}") from exc


def consumer_thread(proc: ConsumerProcess, errors: list[BaseException]) -> threading.Thread:
    """A thread (not started) running ``proc`` until it stops; its error, if any, goes to
    ``errors`` (reported once the threads are stopped) and its target engine is disposed."""

    def target() -> None:
        try:
            proc.run()
        except BaseException as exc:  # reported after the threads stop
            errors.append(exc)
        finally:
            proc.sink.engine.dispose()

    return threading.Thread(target=target, daemon=True)


def wait_joined(settings: Settings, group: str, members: int, timeout: float = 120.0) -> float:
    """Wait until ``group`` is STABLE with ``members`` members; the seconds it took.

    The demo's workload starts only then: the delays measure the running pipeline, and the group
    join (seconds on the local broker, see README) is reported on its own.
    """
    started = time.monotonic()
    deadline = started + timeout
    seen = "no answer"
    while time.monotonic() < deadline:
        try:
            d = describe_group(settings.bootstrap_servers, group)
        except BrokerError as exc:
            seen = str(exc)
        else:
            seen = f"state {d.state}, {len(d.members)} member(s)"
            if d.state == "STABLE" and len(d.members) >= members:
                return time.monotonic() - started
        time.sleep(0.2)
    raise DemoError(
        f"consumer group {group!r} did not settle with {members} members within {timeout:.0f} s "
        f"(last seen: {seen}); check it with `streamer status`"
    )


def _step(console: Console, n: int, text: str) -> None:
    console.print(f"\n[bold cyan][{n}/8][/] {text}")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streamer.cli", *args], text=True, capture_output=True)


def reset(settings: Settings, console: Console) -> None:
    """Remove what an earlier demo left: connector, slot, publication, topics, tables, state rows."""
    httpx.delete(f"{settings.connect_url}/connectors/{CONNECTOR}", timeout=30)
    src = psycopg2.connect(settings.source_url)
    src.autocommit = True
    try:
        with src.cursor() as cur:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                cur.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (SLOT,))
                row = cur.fetchone()
                if row is None:
                    break
                if not row[0]:
                    cur.execute("SELECT pg_drop_replication_slot(%s)", (SLOT,))
                    break
                time.sleep(0.5)
            cur.execute(f"DROP PUBLICATION IF EXISTS {SLOT}")
            for t in SAMPLE_TABLES:
                cur.execute(f"DROP TABLE IF EXISTS {SCHEMA}.{t}")
            cur.execute(f"DROP TYPE IF EXISTS {SCHEMA}.order_status")
    finally:
        src.close()
    admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers})
    topics = [t for t in admin.list_topics(timeout=10).topics if t.startswith(PREFIX + ".") or t == PREFIX]
    if topics:
        for f in admin.delete_topics(topics, operation_timeout=30).values():
            f.result(30)
    sink = build_sink(settings)
    try:
        state.upgrade(sink.engine)
        with sink.engine.begin() as conn:
            for t in SAMPLE_TABLES:
                route = sink.router.route(TableId(None, SCHEMA, t))
                conn.execute(
                    sa.schema.DropTable(
                        sa.Table(route.target_table, sa.MetaData(), schema=route.target_schema),
                        if_exists=True,
                    )
                )
                for table in (state.tables_table, state.loads_table, state.load_chunks_table):
                    conn.execute(sa.delete(table).where(table.c.table_name == route.qualified))
            conn.execute(sa.delete(state.offsets_table).where(state.offsets_table.c.consumer_group == GROUP))
    finally:
        sink.engine.dispose()
    console.print(f"removed earlier demo state ({len(topics)} topics)")


def run(settings: Settings, rows: int = 100_000, seconds: float = 30.0, consumers: int = 2) -> bool:
    """The demo; True when validation passed."""
    console = Console()
    logs.configure("console", "warning")
    started = time.monotonic()
    _step(console, 1, "reset")
    reset(settings, console)

    _step(console, 2, f"sample source data: {rows:,} rows in {SCHEMA}.{{{', '.join(SAMPLE_TABLES)}}}")
    counts = create_sample(settings.source_url, SCHEMA, rows)
    console.print(", ".join(f"{t}: {n:,}" for t, n in counts.items()))

    _step(console, 3, "streamer connectors apply --wait 120")
    applied = _cli("connectors", "apply", "--wait", "120")
    console.print(applied.stdout.rstrip())
    if applied.returncode != 0:
        raise DemoError(f"connectors apply failed:\n{applied.stderr[-2000:]}")

    tables = [f"{SCHEMA}.{t}" for t in SAMPLE_TABLES]
    _step(console, 4, "streamer load " + " ".join(f"--table {t}" for t in tables))
    sink = build_sink(settings)
    t0 = time.monotonic()
    reports = Loader(settings.source_url, sink, workers=2).run(tables)
    sink.engine.dispose()
    for r in reports:
        console.print(f"{r.table} -> {r.target}: {r.rows:,} rows")
    console.print(f"loaded in {time.monotonic() - t0:.1f} s")

    _step(console, 5, f"{consumers} consumers in group {GROUP}")
    connector = json.loads((settings.connectors_dir / f"{CONNECTOR}.json").read_text())["config"]
    create_topics(
        settings,
        [f"{PREFIX}.{SCHEMA}.{t}" for t in SAMPLE_TABLES],
        int(connector.get("topic.creation.default.partitions", "1")),
    )
    delays = Delays()
    procs: list[ConsumerProcess] = []
    threads: list[threading.Thread] = []
    errors: list[BaseException] = []
    for _ in range(consumers):
        csink = build_sink(settings)
        state.upgrade(csink.engine)
        proc = ConsumerProcess(
            settings,
            csink,
            build_decoder(settings),
            group=GROUP,
            until_idle=None,
            hooks=Hooks(on_batch_report=delays.on_batch_report),
        )
        procs.append(proc)
        threads.append(consumer_thread(proc, errors))
    for thread in threads:
        thread.start()
    joined = wait_joined(settings, GROUP, consumers)
    console.print(f"group {GROUP} stable with {consumers} members after {joined:.1f} s")

    _step(console, 6, f"live workload for {seconds:.0f} s")
    stats = run_workload(settings.source_url, SCHEMA, seconds=seconds, rate=100, seed=int(time.time()))
    console.print(
        f"{stats.transactions:,} transactions: {stats.inserts:,} inserts, {stats.updates:,} updates, "
        f"{stats.deletes:,} deletes"
    )

    _step(console, 7, "status, then waiting for the consumers to catch up")
    status = _cli("status")
    console.print(
        status.stdout.rstrip() if status.returncode in (0, 1) and status.stdout else "(status unavailable)"
    )
    last_events, idle_since = -1, time.monotonic()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        time.sleep(1)
        if errors:
            break
        if delays.events != last_events:
            last_events, idle_since = delays.events, time.monotonic()
        elif time.monotonic() - idle_since >= 10:
            break
    for p in procs:
        p.stop()
    for thread in threads:
        thread.join(60)
    if errors:
        raise DemoError(f"a consumer failed: {errors[0]}")

    _step(console, 8, "streamer validate")
    results: list[tuple[str, str, TableDiff]] = []
    source = create_target_engine(settings.source_url)
    vsink = build_sink(settings)
    try:
        for t in SAMPLE_TABLES:
            route = vsink.router.route(TableId(None, SCHEMA, t))
            diff = validate_table(
                source, (SCHEMA, t), vsink.engine, (route.target_schema, route.target_table)
            )
            results.append((f"{SCHEMA}.{t}", route.qualified, diff))
    finally:
        source.dispose()
        vsink.engine.dispose()
    ok = all(d.equal for _, _, d in results)

    summary = Table(title="streamer demo: summary")
    for col in ("table", "target", "source rows", "target rows", "validation"):
        summary.add_column(col)
    for src, tgt, d in results:
        summary.add_row(
            src,
            tgt,
            f"{d.source_rows:,}",
            f"{d.target_rows:,}",
            "[green]equal[/]" if d.equal else "[red]DIFFERENT[/]",
        )
    console.print(summary)
    span = (delays.last - delays.first) if delays.first is not None and delays.last is not None else 0.0
    rate = delays.events / span if span > 0 else float("nan")
    console.print(f"events applied: {delays.events:,} ({rate:,.0f} events/s while streaming)")
    console.print(
        f"end-to-end delay (source commit -> target commit): p50 {delays.percentile(0.50) * 1000:,.0f} ms, "
        f"p99 {delays.percentile(0.99) * 1000:,.0f} ms over {len(delays.values):,} events"
    )
    console.print(f"target: {_redact(settings.target_url)}")
    console.print(f"demo took {time.monotonic() - started:.0f} s")
    console.print("[bold green]VALIDATION PASSED[/]" if ok else "[bold red]VALIDATION FAILED[/]")
    if not ok:
        for src, _, d in results:
            if not d.equal:
                console.print(f"{src}: missing {d.missing[:5]} extra {d.extra[:5]} changed {d.changed[:5]}")
    return ok


def _redact(url: str) -> str:
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL is shown as it is
        return url
