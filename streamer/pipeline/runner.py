"""The one run loop: read a source into bounded batches, apply each with the error policy, ack.

:class:`Runner` drives any :class:`~streamer.sources.base.Source`:

1. read into the source's open batch (at most ``min(1000, what the bounds leave)`` records a read);
2. close the batch when it reaches ``batch_max_events`` (the source's count: records or events),
   ``batch_max_bytes`` or ``batch_max_ms``, when the source is caught up after a short read
   (``close_batch_when_caught_up``), when ``--max-events`` is reached, or when the source says it
   must (a lost connection, a change that stops the run);
3. hold it while ``streamer load`` writes one of its tables (:mod:`streamer.apply.holds`: the loading
   set is read before the batch is applied, and checked again inside its transaction);
4. apply it in one target transaction with :func:`~streamer.pipeline.policy.apply_with_policy`
   (retry transient errors with backoff, isolate a rejected event, dead-letter it inside the same
   transaction under error policy ``dlq``);
5. only after that commit, :meth:`~streamer.sources.base.Source.ack`; a batch that failed, was
   refused or was left while holding is never acknowledged; a batch fenced in some streams
   (:class:`~streamer.apply.sink.FencedBatchError`: another owner applied past it) is handed back to the
   source, which drops those streams (:meth:`~streamer.sources.base.Source.fenced`), and the rest
   is applied again;
6. count it (stats, ``--max-events``), tell the observers, log it.

Between reads it writes the progress line every 5 s and the member's heartbeat in
``_streamer_members``, and stops for ``--until-idle`` once the source has read nothing for that
long and is drained. A clean stop (signal, ``--until-idle``, ``--max-events``) applies the open
batch first; an error leaves it (it is read again by the next run).

Two ways to apply, chosen by the source (:attr:`~streamer.sources.base.Source.pipelined`):

* in the caller's thread, one batch at a time (the pgoutput source: one ordered stream, whose
  feedback and hold waits belong to the reading thread);
* *pipelined* (the Kafka source): one batch in flight on an apply thread while the next is read
  and decoded, so decoding (Python) and the target's round trips (no GIL held) overlap. Batches
  still commit strictly in order: a batch is handed to the apply thread only after the one
  before it was committed and acknowledged (:meth:`Runner.flush`: take the open batch, finish
  the one in flight, drop from the taken batch the streams that one found fenced, hold, submit).

Either way a hold generation is acknowledged only once no batch filtered with an older loading
set is still to be applied: the generation a batch was filtered with is captured when it is
handed over, and :meth:`Runner._can_ack` compares it with the batch in flight.

The source may call back into the runner (:meth:`~streamer.sources.base.Source.attach`): the
Kafka source applies its open batch before partitions are revoked (:meth:`Runner.flush` with
``wait``) and settles the batch in flight when they are lost (:meth:`Runner.finish_inflight`).

An error ends the run without applying the open batch (it is read again by the next run); the
batch in flight is settled first: acknowledged if the target committed it, else not.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import tenacity
from sqlalchemy.engine import Connection

from streamer.apply.holds import HoldView, check_batch
from streamer.apply.sink import ApplyResult, EventRejectedError, FencedBatchError, Sink
from streamer.core.checkpoint import StreamKey
from streamer.core.errors import one_line
from streamer.core.events import ChangeEvent
from streamer.pipeline.policy import BatchNotIsolatedError, RetryPolicy, apply_with_policy, sink_apply
from streamer.settings import ConsumerSettings
from streamer.sources.base import Batch, BatchDone, BatchObserver, Source

PROGRESS_EVERY_S = 5.0
HOLD_RECHECK_S = 1.0


@dataclasses.dataclass(frozen=True)
class BatchBounds:
    """``consumer.batch_max_events|bytes|ms`` and ``consumer.close_batch_when_caught_up``."""

    max_events: int
    max_bytes: int
    max_ms: int
    close_when_caught_up: bool = True


@dataclasses.dataclass
class RunStats:
    """The counters the runner keeps; a source's stats class adds its own (records, transactions)."""

    events_applied: int = 0
    batches: int = 0
    dead_lettered: int = 0
    retries: int = 0
    started: float = dataclasses.field(default_factory=time.monotonic)
    last_batch_at: float | None = None  # time.perf_counter() when the last batch was committed


@contextlib.contextmanager
def stopping_on_signals(stop: Callable[..., None]) -> Iterator[None]:
    """SIGTERM and SIGINT call ``stop`` (a clean stop: the open batch is applied) while inside; the
    handlers before come back after. Outside the main thread (tests, the demo) signals stay as they are."""
    previous = {
        sig: signal.signal(sig, stop)
        for sig in (signal.SIGTERM, signal.SIGINT)
        if threading.current_thread() is threading.main_thread()
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@dataclasses.dataclass
class _InFlight:
    """A batch handed to the apply thread (or applied in the caller's), not yet acknowledged."""

    future: concurrent.futures.Future[ApplyResult]
    batch: Batch
    generation: int  # the hold generation of the loading set it was filtered with
    started: float  # time.monotonic() when it was taken
    apply_started: float = 0.0
    apply_seconds: float = 0.0
    committed_at: float = 0.0


class Runner:
    """One run of one source into one sink (see the module docstring)."""

    @classmethod
    def configured(cls, source: Source, sink: Sink, cfg: ConsumerSettings, **kw: Any) -> Runner:
        """A runner with the batch bounds, retries and error policy of ``cfg`` (the ``consumer``
        section, which ``streamer replicate`` shares); ``kw`` as for the constructor."""
        bounds = BatchBounds(
            cfg.batch_max_events, cfg.batch_max_bytes, cfg.batch_max_ms, cfg.close_batch_when_caught_up
        )
        retry = RetryPolicy(cfg.retry_attempts, cfg.retry_max_wait_s)
        return cls(source, sink, bounds=bounds, retry=retry, dead_letter=cfg.error_policy == "dlq", **kw)

    def __init__(
        self,
        source: Source,
        sink: Sink,
        *,
        bounds: BatchBounds,
        retry: RetryPolicy,
        dead_letter: bool,
        stop: threading.Event,
        stats: RunStats,
        log: Any,
        until_idle: float | None = None,
        max_events: int | None = None,
        observers: Sequence[BatchObserver] = (),
        keepalive_interval: float = 10.0,
    ) -> None:
        self.source = source
        self.sink = sink
        self.bounds = bounds
        self.retry = retry
        self.dead_letter = dead_letter
        self.stop = stop
        self.stats = stats
        self.log = log
        self.until_idle = until_idle
        self.max_events = max_events
        self.observers = list(observers)
        self.keepalive_interval = keepalive_interval
        self.holds = HoldView(sink.engine, source.member_kind, source.member_group)
        self.counted = 0  # what --max-events counts, applied so far
        self._holds_read = False
        self._inflight: _InFlight | None = None
        self._fenced: set[StreamKey] = set()  # streams the batch in flight found fenced (see flush)
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        if source.pipelined:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="streamer-apply"
            )
        source.attach(self)

    # ------------------------------------------------------------ the loop
    def run(self) -> None:
        """Run until stopped, idle (``until_idle``) or ``max_events``; then leave ``_streamer_members``."""
        clean = False
        try:
            if self._loop():
                self.flush(wait=True)  # a clean stop: the open batch is applied and acknowledged
            clean = True
        finally:
            try:
                if not clean:
                    self._abandon()
            finally:
                if self._executor is not None:
                    self._executor.shutdown(wait=True)
                try:
                    self.holds.leave()
                except Exception as exc:  # the row expires by itself (load.member_expiry_s)
                    self.log.warning(
                        "could not remove this member from _streamer_members", error=str(exc)[:300]
                    )

    def _abandon(self) -> None:
        """An error ends the run: the open batch is left (read again next run), the batch in flight
        is settled (acknowledged only if the target committed it); errors here are logged only."""
        pending = self.source.pending()
        if pending.items:
            self.log.warning(
                "abandoning records read but not applied (read again on the next run)", records=pending.count
            )
        if self._inflight is not None:
            try:
                self.finish_inflight()
            except Exception as exc:
                self.log.warning("the batch in flight was not committed", error=one_line(str(exc))[:300])

    def _loop(self) -> bool:
        """The loop; True when it ended cleanly (the open batch is still to be applied)."""
        source, bounds = self.source, self.bounds
        last_progress = time.monotonic()
        while not self.stop.is_set():
            pending = source.pending()
            budget = bounds.max_events - pending.count
            if self.max_events is not None:
                budget = min(budget, self.max_events - self._accounted() - pending.count)
            wanted = max(1, min(budget, 1000))
            got = source.read(wanted) if budget > 0 else 0
            now = time.monotonic()
            if self._inflight is not None and self._inflight.future.done():
                self.finish_inflight()  # a quiet stream: acknowledge and count now, not at the next batch
            pending = source.pending()
            if source.must_close() or (
                pending.items
                and (
                    pending.count >= bounds.max_events
                    or pending.bytes >= bounds.max_bytes
                    or (now - pending.started) * 1000 >= bounds.max_ms
                    or (bounds.close_when_caught_up and got < wanted and source.caught_up())
                    or (self.max_events is not None and self._accounted() + pending.count >= self.max_events)
                )
            ):
                self.flush()
            if self.max_events is not None and self._accounted() + source.pending().count >= self.max_events:
                self.log.info("max events reached, stopping", max_events=self.max_events)
                return True
            if now - last_progress >= PROGRESS_EVERY_S:
                last_progress = now
                elapsed = max(now - self.stats.started, 1e-9)
                self.log.info(
                    "progress",
                    events_applied=self.stats.events_applied,
                    rate=round(self.stats.events_applied / elapsed, 1),
                    **source.progress_fields(),
                )
            if not self._holds_read:  # registers the member first
                self._holds_read = True
                self.holds.tables(self._can_ack)
            else:  # heartbeat in _streamer_members, and see a new load even when idle
                self.holds.heartbeat(self._can_ack, self.log)
            source.release(self.holds.loading)  # held streams whose load is done go on
            if got or self.until_idle is None or source.pending().items:
                continue
            idle = source.idle_seconds(now)
            if idle is not None and idle >= self.until_idle and source.drained():
                self.log.info("idle, stopping", idle_seconds=self.until_idle)
                return True
        return True

    def _accounted(self) -> int:
        """What ``--max-events`` counts so far: applied, and in flight."""
        inflight = self._inflight
        if inflight is None:
            return self.counted
        return self.counted + (
            inflight.batch.units if inflight.batch.units is not None else len(inflight.batch.events)
        )

    def _can_ack(self, generation: int) -> bool:
        """No batch filtered with a loading set older than ``generation`` is still to be applied (the
        open batch is filtered when it is taken, with the set read then)."""
        return self._inflight is None or self._inflight.generation >= generation

    # ------------------------------------------------------------ one batch
    def flush(self, wait: bool = False) -> None:
        """Close the open batch and hand it over; ``wait`` (or a source that is not pipelined) also
        finishes it. The batch in flight is finished first, so batches commit in order."""
        batch = self.source.take()
        started = time.monotonic()
        self._fenced = set()
        self.finish_inflight()
        if batch is None:
            return
        if self._fenced:  # read before the fenced streams were sought back: they are read again
            rest = self.source.without(batch, self._fenced)
            if rest is None:
                return
            batch = rest
        if batch.empty:
            if batch.stop_error is not None:
                raise batch.stop_error
            return
        held = self._wait_for_loads(batch)
        if held is None:  # stopped while a load ran: nothing applied nor acknowledged, read again next run
            if batch.stop_error is not None:
                raise batch.stop_error
            return
        self._submit(held, started)
        if wait or self._executor is None or held.stop_error is not None:
            self.finish_inflight()

    def _submit(self, batch: Batch, started: float) -> None:
        flight = _InFlight(concurrent.futures.Future(), batch, self.holds.generation, started)
        touched = self._touched(batch.events)
        if self._executor is not None:
            flight.future = self._executor.submit(self._apply_timed, flight, touched)
        else:
            self._apply_now(flight, touched)
        self._inflight = flight

    def _apply_now(self, flight: _InFlight, touched: set[str]) -> None:
        """Apply ``flight`` in this thread, its outcome into its future (as the apply thread would)."""
        try:
            flight.future.set_result(self._apply_timed(flight, touched))
        except BaseException as exc:
            flight.future.set_exception(exc)

    def _apply_timed(self, flight: _InFlight, touched: set[str]) -> ApplyResult:
        flight.apply_started = time.monotonic()
        result = self._apply_with_policy(flight.batch, flight.generation, touched)
        flight.committed_at = time.time()
        flight.apply_seconds = time.monotonic() - flight.apply_started
        return result

    def finish_inflight(self) -> None:
        """Wait for the batch in flight; a batch fenced in some streams is handed back to the source
        and the rest applied again; then acknowledge it, count it, tell the observers; and raise
        its :attr:`~streamer.sources.base.Batch.stop_error`, if any."""
        flight = self._inflight
        if flight is None:
            return
        self._inflight = None
        while True:
            try:
                result = flight.future.result()
                break
            except FencedBatchError as fenced:
                self._fenced |= set(fenced.partitions)
                rest = self.source.fenced(flight.batch, fenced)
                if rest is None:
                    return  # every stream of it was fenced: nothing applied nor acknowledged
                flight = _InFlight(concurrent.futures.Future(), rest, flight.generation, flight.started)
                self._apply_now(flight, self._touched(rest.events))
        self._done(flight, result)

    def _done(self, flight: _InFlight, result: ApplyResult) -> None:
        batch = flight.batch
        self.source.ack(batch)
        self.stats.events_applied += result.events
        self.stats.batches += 1
        self.stats.last_batch_at = time.perf_counter()
        self.counted += batch.units if batch.units is not None else result.events
        elapsed = time.monotonic() - flight.started
        done = BatchDone(
            self.stats.batches, batch, result, elapsed, flight.apply_seconds, flight.committed_at
        )
        for observer in self.observers:
            observer.on_batch(done)
        line = self.log.info if self.source.batch_log_level == "info" else self.log.debug
        line(
            "batch applied",
            batch=self.stats.batches,
            events=result.events,
            tables=result.tables,
            seconds=round(elapsed, 4),
            apply_seconds=round(flight.apply_seconds, 4),
            **self.source.batch_fields(batch),
        )
        if batch.stop_error is not None:
            raise batch.stop_error

    def _touched(self, events: Sequence[ChangeEvent]) -> set[str]:
        route = self.sink.router.route
        return {route(ev.table).qualified for ev in events}

    def _wait_for_loads(self, batch: Batch) -> Batch | None:
        """The part of ``batch`` that may be applied while ``streamer load`` writes tables of it: a
        delete applied before the load's snapshot row is written would be undone by it. The source
        decides (:meth:`~streamer.sources.base.Source.hold`); when it holds the whole batch, the
        loading set is re-read every second while the source is kept alive. None if stopped."""
        if not self.holds.tables(self._can_ack):
            return batch
        tables = self._touched(batch.events)
        held = False
        while True:
            busy = tables & self.holds.tables(self._can_ack, fresh=held)
            if not busy:
                if held:
                    self.log.info("load finished: resuming the stream")
                return batch
            part = self.source.hold(batch, busy)
            if part is not None:
                return part
            if not held:
                held = True
                self.log.info("holding the stream while tables are loaded", tables=sorted(busy))
            if self.stop.wait(HOLD_RECHECK_S):
                return None
            self.source.keepalive()

    def _apply_with_policy(self, batch: Batch, generation: int, touched: set[str]) -> ApplyResult:
        source = self.source
        member_id = self.holds.member.member_id

        def check_hold(conn: Connection) -> None:
            check_batch(conn, member_id, generation, touched)  # see streamer.apply.holds

        def before_commit(result: ApplyResult) -> None:
            count = source.dead_letter(batch, result.failed)
            if count:
                self.stats.dead_lettered += count
                for observer in self.observers:
                    observer.on_dead_letter(count)

        apply = sink_apply(
            self.sink,
            batch.events,
            batch.checkpoint,
            source.group,
            dead_letter=self.dead_letter,
            before_commit=before_commit,
            in_transaction=check_hold,
        )
        try:
            return apply_with_policy(
                apply,
                retry=self.retry,
                transient=source.transient,
                permanent=source.permanent,
                passthrough=source.passthrough,
                isolate_passthrough=source.isolate_passthrough,
                before_sleep=self._before_retry,
                sleep=self._sleep,
                unavailable_hint=source.unavailable_hint,
            )
        except (BatchNotIsolatedError, EventRejectedError) as failed:
            raise source.rejected(batch, failed) from None

    def _before_retry(self, state: tenacity.RetryCallState) -> None:
        self.stats.retries += 1
        for observer in self.observers:
            observer.on_retry()
        exc = state.outcome.exception() if state.outcome else None
        self.log.warning(
            "transient database error, retrying batch", attempt=state.attempt_number, error=str(exc)[:300]
        )
        self.source.keepalive()

    def _sleep(self, seconds: float) -> None:
        """A retry's backoff, keeping the source alive at least every ``keepalive_interval``."""
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, self.keepalive_interval))
            self.source.keepalive()
