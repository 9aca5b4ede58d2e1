"""The one run loop (:mod:`streamer.pipeline.runner`) over an in-memory source, into a SQLite target.

The source is a fake (a list of records, Kafka-like streams ``("t", partition)``); the target is
real: a :class:`~streamer.apply.sink.Sink` on a SQLite file with streamer's state tables, so a batch's
rows and its offsets are committed, or not, together. Every test compares the whole target table.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from streamer import logs
from streamer.apply import state
from streamer.apply.holds import HoldChangedError, raise_generation
from streamer.apply.sink import (
    ApplyResult,
    EventRejectedError,
    FencedBatchError,
    Sink,
    build_sink,
    is_permanent,
)
from streamer.core.checkpoint import Checkpoint, KafkaOrigin, OffsetIdentity, StreamKey
from streamer.core.errors import TargetUnavailableError
from streamer.core.events import ChangeEvent, ColumnType, Op, SourcePosition, TableId, pg_version
from streamer.db import create_target_engine
from streamer.pipeline.policy import BatchNotIsolatedError, RetryPolicy
from streamer.pipeline.runner import BatchBounds, Runner, RunStats
from streamer.settings import load_settings
from streamer.sources.base import Batch, BatchDone, Observers, Pending, RunHandle

T = TableId("db", "public", "items")
TARGET = "public_items"  # SQLite has no schemas: the router joins them


def event(partition: int, offset: int, key: int, value: str, op: Op = Op.CREATE) -> ChangeEvent:
    lsn = 1000 * (partition + 1) + offset
    return ChangeEvent(
        op=op,
        table=T,
        key={"id": key},
        before=None,
        after={"id": key, "v": value} if op is not Op.DELETE else None,
        columns={"id": ColumnType("int64"), "v": ColumnType("string")},
        key_columns=("id",),
        position=SourcePosition(pg_version(lsn), lsn=lsn),
        txid=None,
        source_ts=None,
        event_ts=None,
        origin=KafkaOrigin("t", partition, offset),
    )


class Undecodable(Exception):
    """A record the fake source cannot decode (error policy stop)."""


@dataclasses.dataclass
class Record:
    stream: StreamKey
    offset: int
    event: ChangeEvent | None  # None: undecodable


def records(partition: int, values: Sequence[tuple[int, str]], start: int = 0) -> list[Record]:
    return [
        Record(("t", partition), start + i, event(partition, start + i, key, value))
        for i, (key, value) in enumerate(values)
    ]


class Transient(Exception):
    """What the fake sink raises to stand for a lost target connection."""


class Stopped(Exception):
    """The fake source's error for an event the target rejected under error policy stop."""


class FakeSource:
    """An in-memory :class:`~streamer.sources.base.Source`: ``per_read`` records per read."""

    member_kind = "consume"
    member_group = "g"
    group = "g"
    batch_log_level = "info"
    unavailable_hint = "nothing of this batch was acknowledged"
    passthrough: tuple[type[BaseException], ...] = (FencedBatchError, HoldChangedError)
    isolate_passthrough: tuple[type[BaseException], ...] = (Exception,)
    pipelined = False

    def __init__(self, engine: sa.Engine, items: Sequence[Record], per_read: int = 1000) -> None:
        self.engine = engine
        self.queue = list(items)
        self.per_read = per_read
        self.open: list[Record] = []
        self.started = 0.0
        self.last_activity = time.monotonic()
        self.error: BaseException | None = None
        self.acked: list[tuple[dict[StreamKey, int], list[tuple[Any, ...]]]] = []  # positions, rows seen
        self.batches: list[list[int]] = []  # offsets of each batch taken
        self.letters: list[tuple[ChangeEvent, Exception]] = []
        self.keepalives = 0
        self.joined_after_reads: int = 0  # idle time counts only after this many reads
        self.reads = 0

    # -- reading
    def read(self, wanted: int) -> int:
        self.reads += 1
        n = min(wanted, self.per_read)
        got = 0
        while self.queue and got < n and self.error is None:
            record = self.queue.pop(0)
            if record.event is None:
                self.error = Undecodable(f"t[{record.stream[1]}]@{record.offset}")
                break
            if not self.open:
                self.started = time.monotonic()
            self.open.append(record)
            got += 1
        if got:
            self.last_activity = time.monotonic()
        else:
            time.sleep(0.01)
        return got

    def pending(self) -> Pending:
        return Pending(len(self.open), len(self.open), 0, self.started)

    def must_close(self) -> bool:
        return self.error is not None

    def caught_up(self) -> bool:
        return not self.queue

    def idle_seconds(self, now: float) -> float | None:
        return now - self.last_activity if self.reads > self.joined_after_reads else None

    def drained(self) -> bool:
        return not self.queue

    def take(self) -> Batch | None:
        batch, self.open = self.open, []
        error, self.error = self.error, None
        if not batch:
            return None if error is None else Batch([], Checkpoint({}), 0.0, stop_error=error, empty=True)
        self.batches.append([r.offset for r in batch])
        return self._batch(batch, error)

    def _batch(self, batch: list[Record], error: BaseException | None = None) -> Batch:
        positions: dict[StreamKey, int] = {}
        first: dict[StreamKey, int] = {}
        for r in batch:
            positions[r.stream] = r.offset + 1
            first.setdefault(r.stream, r.offset)
        identities = {k: OffsetIdentity() for k in positions}
        events = [r.event for r in batch if r.event is not None]
        return Batch(events, Checkpoint(positions, first, identities), self.started, batch, stop_error=error)

    def attach(self, run: RunHandle) -> None:
        self.run = run

    # -- holding, keeping alive
    def hold(self, batch: Batch, loading: set[str]) -> Batch | None:
        return None

    def release(self, loading: set[str]) -> None:
        pass

    def without(self, batch: Batch, streams: set[StreamKey]) -> Batch | None:
        kept = [r for r in batch.token if r.stream not in streams]
        return self._batch(kept, batch.stop_error) if kept else None

    def keepalive(self) -> None:
        self.keepalives += 1

    # -- after the apply
    def dead_letter(self, batch: Batch, failed: Sequence[tuple[ChangeEvent, Exception]]) -> int:
        self.letters += failed
        return len(failed)

    def fenced(self, batch: Batch, error: FencedBatchError) -> Batch | None:
        kept = [r for r in batch.token if r.stream not in error.partitions]
        return self._batch(kept) if kept else None

    def ack(self, batch: Batch) -> None:
        # what a new connection sees at this moment: the batch must be committed already
        self.acked.append((dict(batch.checkpoint.positions), table(self.engine)))

    def rejected(self, batch: Batch, error: BaseException) -> BaseException:
        assert isinstance(error, EventRejectedError | BatchNotIsolatedError)
        return Stopped(str(error))

    def transient(self, exc: BaseException) -> bool:
        return isinstance(exc, Transient)

    def permanent(self, exc: BaseException) -> bool:
        return is_permanent(exc)

    def batch_fields(self, batch: Batch) -> Mapping[str, Any]:
        return {"records": len(batch.token)}

    def progress_fields(self) -> Mapping[str, Any]:
        return {}


class FlakySink(Sink):
    """A real sink whose first ``failures`` applies raise :class:`Transient` before writing anything."""

    failures = 0

    def apply(self, *args: Any, **kw: Any) -> ApplyResult:
        if self.failures > 0:
            self.failures -= 1
            raise Transient("connection lost")
        return super().apply(*args, **kw)


def table(engine: sa.Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table(TARGET):
            return []
        return [tuple(r) for r in conn.execute(sa.text(f'SELECT id, v FROM "{TARGET}" ORDER BY id'))]


def offsets(engine: sa.Engine) -> dict[StreamKey, int]:
    with engine.connect() as conn:
        return state.load_offsets(conn, "g")


@pytest.fixture(autouse=True, params=[False, True], ids=["in-thread", "pipelined"])
def pipelined(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Every test runs twice: batches applied in the reading thread, and on the apply thread with
    one batch in flight (the Kafka source's way)."""
    monkeypatch.setattr(FakeSource, "pipelined", request.param)
    return bool(request.param)


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[Sink]:
    settings = load_settings(env={}, overrides={"target_url": f"sqlite:///{tmp_path / 't.db'}"})
    engine = create_target_engine(settings.target_url)
    state.upgrade(engine)
    built = build_sink(settings, engine)
    yield FlakySink(built.engine, built.router, built.schema, truncate=settings.consumer.truncate)
    engine.dispose()


def runner(
    source: FakeSource,
    sink: Sink,
    *,
    max_batch: int = 1000,
    max_ms: int = 50,
    caught_up_rule: bool = False,
    until_idle: float | None = 0.2,
    max_events: int | None = None,
    attempts: int = 3,
    dlq: bool = False,
    stop: threading.Event | None = None,
    observers: Sequence[Observers] = (),
) -> Runner:
    return Runner(
        source,
        sink,
        bounds=BatchBounds(max_batch, 1 << 30, max_ms, caught_up_rule),
        retry=RetryPolicy(attempts, 0.01),
        dead_letter=dlq,
        stop=stop or threading.Event(),
        stats=RunStats(),
        log=logs.get("test-runner"),
        until_idle=until_idle,
        max_events=max_events,
        observers=observers,
        keepalive_interval=0.05,
    )


def test_batches_close_at_their_bounds_and_each_is_acked_after_its_commit(sink: Sink) -> None:
    source = FakeSource(sink.engine, records(0, [(i, f"v{i}") for i in range(7)]), per_read=2)
    done: list[BatchDone] = []
    run = runner(source, sink, max_batch=3, observers=[Observers(batch=done.append)])
    run.run()
    assert source.batches == [[0, 1, 2], [3, 4, 5], [6]]
    rows = [(i, f"v{i}") for i in range(7)]
    # at each ack the batch's rows were already committed (seen from another connection)
    assert source.acked == [({("t", 0): 3}, rows[:3]), ({("t", 0): 6}, rows[:6]), ({("t", 0): 7}, rows)]
    assert table(sink.engine) == rows and offsets(sink.engine) == {("t", 0): 7}
    assert [d.number for d in done] == [1, 2, 3] and run.stats.events_applied == 7
    assert run.stats.batches == 3


def test_a_caught_up_source_closes_its_batch_at_once(sink: Sink) -> None:
    source = FakeSource(sink.engine, records(0, [(1, "a"), (2, "b")]), per_read=1)
    runner(source, sink, max_batch=100, caught_up_rule=True).run()
    # the first read came back short (1 of 100 wanted), but the source was not caught up yet
    assert source.batches == [[0, 1]]
    assert table(sink.engine) == [(1, "a"), (2, "b")]


def test_the_time_bound_closes_a_batch(sink: Sink) -> None:
    source = FakeSource(sink.engine, records(0, [(1, "a"), (2, "b")]), per_read=1)
    run = runner(source, sink, max_batch=100, max_ms=0)
    run.run()
    assert source.batches == [[0], [1]]
    assert table(sink.engine) == [(1, "a"), (2, "b")]


def test_until_idle_counts_only_once_idle_time_counts(sink: Sink) -> None:
    source = FakeSource(sink.engine, records(0, [(1, "a")]))
    source.joined_after_reads = 40  # like a group member before its first assignment
    started = time.monotonic()
    runner(source, sink, until_idle=0.1).run()
    assert source.reads > 40 and time.monotonic() - started >= 0.1
    assert table(sink.engine) == [(1, "a")]


def test_until_idle_waits_for_a_source_that_is_not_drained(sink: Sink) -> None:
    source = FakeSource(sink.engine, [])
    drained_after = time.monotonic() + 0.5
    source.drained = lambda: time.monotonic() >= drained_after  # type: ignore[method-assign]
    runner(source, sink, until_idle=0.05).run()
    assert time.monotonic() >= drained_after


def test_max_events_stops_after_exactly_that_many(sink: Sink) -> None:
    source = FakeSource(sink.engine, records(0, [(i, "x") for i in range(10)]), per_read=10)
    run = runner(source, sink, max_batch=3, max_events=4, until_idle=None)
    run.run()
    assert source.batches == [[0, 1, 2], [3]]
    assert table(sink.engine) == [(i, "x") for i in range(4)] and offsets(sink.engine) == {("t", 0): 4}
    assert [r.offset for r in source.queue] == list(range(4, 10))  # never read


def test_a_clean_stop_applies_the_open_batch(sink: Sink) -> None:
    stop = threading.Event()
    source = FakeSource(sink.engine, records(0, [(1, "a"), (2, "b")]))
    read = source.read

    def read_then_stop(wanted: int) -> int:
        got = read(wanted)
        stop.set()
        return got

    source.read = read_then_stop  # type: ignore[method-assign]
    runner(source, sink, until_idle=None, stop=stop).run()
    assert source.batches == [[0, 1]] and table(sink.engine) == [(1, "a"), (2, "b")]


def test_a_batch_waits_while_its_table_is_loaded(sink: Sink) -> None:
    with sink.engine.begin() as conn:
        raise_generation(conn)
        conn.execute(
            sa.insert(state.loads_table).values(
                table_name=TARGET,
                source_table="public.items",
                status="loading",
                floor_version="",
                snapshot_version="",
                rows_loaded=0,
                started_at=dt.datetime(2024, 1, 1),
            )
        )
    source = FakeSource(sink.engine, records(0, [(1, "a")]))
    seen_while_loading: list[list[tuple[Any, ...]]] = []

    def finish_load() -> None:
        time.sleep(1.3)
        seen_while_loading.append(table(sink.engine))
        with sink.engine.begin() as conn:
            conn.execute(sa.update(state.loads_table).values(status="done"))

    loader = threading.Thread(target=finish_load)
    loader.start()
    runner(source, sink).run()
    loader.join()
    assert seen_while_loading == [[]] and source.keepalives >= 1
    assert table(sink.engine) == [(1, "a")] and len(source.acked) == 1


def test_a_stop_while_holding_applies_and_acks_nothing(sink: Sink) -> None:
    with sink.engine.begin() as conn:
        conn.execute(
            sa.insert(state.loads_table).values(
                table_name=TARGET,
                source_table="public.items",
                status="loading",
                floor_version="",
                snapshot_version="",
                rows_loaded=0,
                started_at=dt.datetime(2024, 1, 1),
            )
        )
    stop = threading.Event()
    source = FakeSource(sink.engine, records(0, [(1, "a")]))
    threading.Timer(0.3, stop.set).start()
    runner(source, sink, until_idle=None, stop=stop).run()
    assert table(sink.engine) == [] and source.acked == [] and offsets(sink.engine) == {}


def test_transient_target_errors_retry_the_batch(sink: Sink) -> None:
    assert isinstance(sink, FlakySink)
    sink.failures = 2
    retries: list[int] = []
    source = FakeSource(sink.engine, records(0, [(1, "a"), (2, "b")]))
    run = runner(source, sink, attempts=3, observers=[Observers(retry=lambda: retries.append(1))])
    run.run()
    assert run.stats.retries == 2 and len(retries) == 2 and source.keepalives >= 2
    assert table(sink.engine) == [(1, "a"), (2, "b")] and len(source.acked) == 1


def test_a_target_down_through_every_attempt_acks_nothing(sink: Sink) -> None:
    assert isinstance(sink, FlakySink)
    sink.failures = 10
    source = FakeSource(sink.engine, records(0, [(1, "a")]))
    with pytest.raises(TargetUnavailableError, match="through 3 attempts"):
        runner(source, sink, attempts=3).run()
    assert source.acked == [] and table(sink.engine) == [] and offsets(sink.engine) == {}


def poison_table(sink: Sink) -> None:
    """The target table exists already and refuses the value 'poison'."""
    with sink.engine.begin() as conn:
        conn.execute(
            sa.text(
                f"CREATE TABLE \"{TARGET}\" (id BIGINT PRIMARY KEY, v TEXT CHECK (v <> 'poison'), "
                "_streamer_version VARCHAR(40))"
            )
        )


def test_a_poison_event_is_isolated_and_dead_lettered(sink: Sink) -> None:
    poison_table(sink)
    source = FakeSource(sink.engine, records(0, [(1, "a"), (2, "poison"), (3, "c")]))
    dead: list[int] = []
    run = runner(source, sink, dlq=True, observers=[Observers(dead_letter=dead.append)])
    run.run()
    assert [(ev.key["id"], type(exc).__name__) for ev, exc in source.letters] == [(2, "IntegrityError")]
    assert dead == [1] and run.stats.dead_lettered == 1
    assert table(sink.engine) == [(1, "a"), (3, "c")] and offsets(sink.engine) == {("t", 0): 3}
    assert [positions for positions, _ in source.acked] == [{("t", 0): 3}]


def test_a_poison_event_under_policy_stop_stops_and_acks_nothing(sink: Sink) -> None:
    poison_table(sink)
    source = FakeSource(sink.engine, records(0, [(1, "a"), (2, "poison"), (3, "c")]))
    with pytest.raises(Stopped, match=r"t\[0\]@1"):
        runner(source, sink).run()
    assert source.acked == [] and table(sink.engine) == [] and offsets(sink.engine) == {}


def test_an_undecodable_record_stops_after_the_records_before_it(sink: Sink) -> None:
    items = records(0, [(1, "a"), (2, "b")]) + [Record(("t", 0), 2, None)] + records(0, [(4, "d")], 3)
    source = FakeSource(sink.engine, items)
    with pytest.raises(Undecodable, match=r"t\[0\]@2"):
        runner(source, sink).run()
    assert table(sink.engine) == [(1, "a"), (2, "b")] and offsets(sink.engine) == {("t", 0): 2}
    assert [positions for positions, _ in source.acked] == [{("t", 0): 2}]


def test_a_fenced_stream_is_dropped_and_the_rest_applied(sink: Sink) -> None:
    with sink.engine.begin() as conn:  # another owner applied partition 1 up to 100
        state.save_offsets(conn, "g", {("t", 1): 100})
    items = records(0, [(1, "a"), (2, "b")]) + records(1, [(10, "stale")], start=5)
    source = FakeSource(sink.engine, items)
    runner(source, sink).run()
    assert table(sink.engine) == [(1, "a"), (2, "b")]
    assert offsets(sink.engine) == {("t", 0): 2, ("t", 1): 100}
    assert [positions for positions, _ in source.acked] == [{("t", 0): 2}]


def test_a_batch_fenced_in_every_stream_is_never_acked(sink: Sink) -> None:
    with sink.engine.begin() as conn:
        state.save_offsets(conn, "g", {("t", 1): 100})
    source = FakeSource(sink.engine, records(1, [(10, "stale"), (11, "stale")], start=5))
    run = runner(source, sink)
    run.run()
    assert source.acked == [] and table(sink.engine) == [] and offsets(sink.engine) == {("t", 1): 100}
    assert run.stats.batches == 0


def test_a_flush_from_inside_a_read_commits_everything_read_before_it_in_order(sink: Sink) -> None:
    """What the Kafka source does before partitions are revoked: apply the open batch (and the one in
    flight before it) from inside ``read``; when ``flush(wait=True)`` returns, all of it is committed."""
    source = FakeSource(sink.engine, records(0, [(i, f"v{i}") for i in range(9)]), per_read=2)
    read = source.read
    seen: list[tuple[list[tuple[Any, ...]], dict[StreamKey, int]]] = []

    def read_and_revoke(wanted: int) -> int:
        got = read(wanted)
        if source.reads == 3:  # 5 records read: 0-2 in a batch taken before, 3-4 open
            source.run.flush(wait=True)
            seen.append((table(sink.engine), offsets(sink.engine)))
        return got

    source.read = read_and_revoke  # type: ignore[method-assign]
    runner(source, sink, max_batch=3).run()
    rows = [(i, f"v{i}") for i in range(9)]
    assert seen == [(rows[:5], {("t", 0): 5})]
    assert [positions for positions, _ in source.acked] == [{("t", 0): n} for n in (3, 5, 8, 9)]
    assert table(sink.engine) == rows and offsets(sink.engine) == {("t", 0): 9}


def test_an_error_settles_the_batch_in_flight_and_leaves_the_open_one(sink: Sink) -> None:
    """A read that fails ends the run: the batch handed over before it is acknowledged only once the
    target committed it, the records read after it are neither applied nor acknowledged."""
    source = FakeSource(sink.engine, records(0, [(i, f"v{i}") for i in range(5)]), per_read=2)
    read = source.read

    def read_then_fail(wanted: int) -> int:
        if source.reads == 3:
            raise RuntimeError("broker gone")
        return read(wanted)

    source.read = read_then_fail  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="broker gone"):
        runner(source, sink, max_batch=3).run()
    # records 0-2 closed the first batch at the second read; 3 was read, never applied
    assert [positions for positions, _ in source.acked] == [{("t", 0): 3}]
    assert table(sink.engine) == [(i, f"v{i}") for i in range(3)] and offsets(sink.engine) == {("t", 0): 3}


def acked_generations(engine: sa.Engine) -> list[int]:
    with engine.connect() as conn:
        return [int(r[0]) for r in conn.execute(sa.select(state.members_table.c.acked_generation))]


def test_a_hold_generation_is_acknowledged_only_once_no_older_batch_is_left(sink: Sink) -> None:
    """A load raises the hold generation while a batch filtered with the older loading set is being
    applied (on the apply thread, or in the reading thread): the member acknowledges the new
    generation only after that batch is done, so the load never starts under it."""
    gate, entered = threading.Event(), threading.Event()
    apply = sink.apply

    def gated(*args: Any, **kw: Any) -> ApplyResult:
        if not gate.is_set():
            entered.set()
            gate.wait(30)
        return apply(*args, **kw)

    sink.apply = gated  # type: ignore[method-assign]
    stop = threading.Event()
    source = FakeSource(sink.engine, records(0, [(1, "a"), (2, "b")]))
    run = runner(source, sink, until_idle=None, stop=stop)
    thread = threading.Thread(target=run.run)
    thread.start()
    try:
        assert entered.wait(10)
        with sink.engine.begin() as conn:
            generation = raise_generation(conn)
        time.sleep(run.holds.interval + 1.5)  # the loop has read the new generation meanwhile
        assert acked_generations(sink.engine) == [0]  # the batch filtered with generation 0 is not done
        gate.set()
        deadline = time.monotonic() + run.holds.interval + 5
        while acked_generations(sink.engine) != [generation] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert acked_generations(sink.engine) == [generation]
        assert source.acked and table(sink.engine) == [(1, "a"), (2, "b")]
    finally:
        gate.set()
        stop.set()
        thread.join(30)
    assert not thread.is_alive() and acked_generations(sink.engine) == []  # left _streamer_members
