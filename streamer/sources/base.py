"""The contract between a source and the one run loop (:class:`~streamer.pipeline.runner.Runner`).

A source reads changes into an *open batch* (:meth:`Source.read`), reports how big it is
(:meth:`Source.pending`), and closes it on the runner's word into a :class:`Batch`
(:meth:`Source.take`): the decoded events plus the source-neutral
:class:`~streamer.core.checkpoint.Checkpoint` the batch reaches. The runner decides when a batch
closes (its bounds), applies it with the error policy and only after the target's commit calls
:meth:`Source.ack` (Kafka commit, WAL feedback). A batch that is not committed is never
acknowledged: its changes are read again by the next run.

Decisions where the issue was silent:

* The runner owns the batch bounds, so the source is asked for its open batch's size instead of
  being handed ``max_events``/``max_wait`` per poll: the Kafka source's "caught up" rule and the
  pgoutput source's "whole transactions only" rule both need to look at the open batch between
  reads, and a read of the WAL stream handles one message at a time.
* Holding while a table is loaded has two shapes: the Kafka source pauses single partitions and
  applies the rest, the pgoutput stream has one order and waits whole. :meth:`Source.hold`
  returns the part of a batch that may be applied now, or ``None`` to wait (the runner waits,
  keeping the source alive with :meth:`Source.keepalive`).
* Applying in the reading thread or on an apply thread with one batch in flight is the source's
  choice (:attr:`Source.pipelined`): the Kafka source overlaps decoding with the target's round
  trips; the pgoutput source's feedback belongs to its reading thread.
* A source whose reads can call back into the loop (Kafka's rebalance callbacks run inside
  ``consume()``) gets a :class:`RunHandle` (:meth:`Source.attach`): apply the open batch before
  partitions are revoked, settle the batch in flight when they are lost.
* A change the source cannot decode under error policy ``stop`` does not raise from
  :meth:`Source.read`: the source closes the open batch (:meth:`Source.must_close`), the runner
  applies and acknowledges what came before it, then raises the batch's :attr:`Batch.stop_error`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from streamer.apply.sink import ApplyResult, FencedBatchError
from streamer.core.checkpoint import Checkpoint
from streamer.core.events import ChangeEvent


@dataclasses.dataclass(frozen=True)
class Pending:
    """The size of a source's open batch.

    ``items`` is what it holds (records, or whole transactions: a batch is open while it is
    above 0); ``count`` is what ``consumer.batch_max_events`` and ``--max-events`` count (records
    for Kafka, events for pgoutput); ``started`` is ``time.monotonic()`` when its first item came.
    """

    items: int = 0
    count: int = 0
    bytes: int = 0
    started: float = 0.0


@dataclasses.dataclass
class Batch:
    """One closed batch: what the runner applies in one target transaction.

    ``units`` counts towards ``--max-events`` once applied (None: the events the target applied,
    ``ApplyResult.events``). ``token`` is the source's own view of the batch (its records or
    transactions), read back in :meth:`Source.ack` and :meth:`Source.dead_letter`.
    ``stop_error`` is raised once the batch is committed and acknowledged (a change after it
    could not be decoded under error policy ``stop``); a batch with ``empty`` set carries only
    that error.
    """

    events: list[ChangeEvent]
    checkpoint: Checkpoint
    started: float
    token: Any = None
    units: int | None = None
    stop_error: BaseException | None = None
    empty: bool = False


class RunHandle(Protocol):
    """What a source may ask of the loop that drives it, from inside :meth:`Source.read`."""

    def flush(self, wait: bool = False) -> None:
        """Close the open batch and apply it (``wait``: and finish it: committed and acknowledged)."""
        ...

    def finish_inflight(self) -> None:
        """Wait for the batch being applied, then acknowledge it (if the target committed it)."""
        ...


class Source(Protocol):
    """What the runner needs of a source (see the module docstring for the order of calls)."""

    group: str  # the group its positions are stored under in ``_streamer_offsets``
    member_kind: str  # ``_streamer_members.kind``: "consume" or "replicate"
    member_group: str  # ``_streamer_members.group``
    batch_log_level: str  # "info" or "debug": the level of the runner's "batch applied" line
    unavailable_hint: str  # the end of TargetUnavailableError's message: what was (not) acknowledged
    passthrough: tuple[type[BaseException], ...]  # errors of the batch transaction raised as they are
    isolate_passthrough: tuple[type[BaseException], ...]  # and of the event-by-event one
    pipelined: bool  # apply on a thread of its own, one batch in flight (see the runner)

    def attach(self, run: RunHandle) -> None:
        """The loop that drives this source (called once, before the first read)."""
        ...

    def read(self, wanted: int) -> int:
        """Read up to ``wanted`` records into the open batch, waiting briefly when none come;
        returns how many came (0: nothing)."""
        ...

    def pending(self) -> Pending:
        """The size of the open batch."""
        ...

    def must_close(self) -> bool:
        """The open batch must be applied now (a lost connection, a change that stops the run)."""
        ...

    def caught_up(self) -> bool:
        """Everything the source knows of is read: an open batch closes at once (a live stream)."""
        ...

    def idle_seconds(self, now: float) -> float | None:
        """Seconds without anything read, for ``--until-idle``; None while idle time does not count."""
        ...

    def drained(self) -> bool:
        """``--until-idle`` may stop: nothing is known to be left to read."""
        ...

    def take(self) -> Batch | None:
        """Close the open batch (decoded, filtered by the loading set); None when there is none."""
        ...

    def hold(self, batch: Batch, loading: set[str]) -> Batch | None:
        """The part of ``batch`` to apply now while ``loading`` (target tables) are loaded, or None
        to wait until they are not."""
        ...

    def release(self, loading: set[str]) -> None:
        """Called every turn with the loading set last read: go on with what :meth:`hold` held back
        for tables no longer in it (a source whose hold waits whole has nothing to do)."""
        ...

    def without(self, batch: Batch, streams: set[tuple[str, int]]) -> Batch | None:
        """``batch`` minus what it holds of ``streams`` (fenced while it waited to be applied: the
        source sought them back and reads them again), or None when nothing is left."""
        ...

    def keepalive(self) -> None:
        """Keep the source's session alive while the runner waits (a hold, a retry's backoff; a
        pipelined source's retries wait on the apply thread, which calls it from there)."""
        ...

    def dead_letter(self, batch: Batch, failed: Sequence[tuple[ChangeEvent, Exception]]) -> int:
        """Inside the batch's transaction, before its commit: write the batch's own rejected records
        and ``failed`` (events the target rejected) to the dead-letter place; returns how many."""
        ...

    def fenced(self, batch: Batch, error: FencedBatchError) -> Batch | None:
        """The target refused ``batch``: another owner applied past it in ``error.partitions``. The
        rest of the batch to apply again, or None when nothing is left (nothing is acknowledged
        for the fenced streams)."""
        ...

    def ack(self, batch: Batch) -> None:
        """The target committed ``batch``: move the source's position (never called otherwise)."""
        ...

    def rejected(self, batch: Batch, error: BaseException) -> BaseException:
        """The error to stop with when the target rejected an event of ``batch`` under error policy
        ``stop`` (``EventRejectedError`` or ``BatchNotIsolatedError``)."""
        ...

    def transient(self, exc: BaseException) -> bool:
        """A target error worth retrying (lost connection, deadlock, serialization failure)."""
        ...

    def permanent(self, exc: BaseException) -> bool:
        """A target error caused by the data (isolate the event)."""
        ...

    def batch_fields(self, batch: Batch) -> Mapping[str, Any]:
        """Extra fields of the "batch applied" log line."""
        ...

    def progress_fields(self) -> Mapping[str, Any]:
        """Extra fields of the "progress" log line."""
        ...


@dataclasses.dataclass(frozen=True)
class BatchDone:
    """One batch after its target commit and its acknowledgement, for observers."""

    number: int  # 1, 2, ... in this process
    batch: Batch
    result: ApplyResult
    seconds: float  # from the batch's first item to its acknowledgement
    apply_seconds: float  # the target transaction(s), retries included
    committed_at: float  # time.time() right after the target's commit


class BatchObserver(Protocol):
    """Metrics, logs, delay histograms: told of every batch, retry and dead letter of a run."""

    def on_batch(self, done: BatchDone) -> None: ...

    def on_retry(self) -> None: ...

    def on_dead_letter(self, count: int) -> None: ...


@dataclasses.dataclass
class Observers:
    """A :class:`BatchObserver` made of optional callables (what a caller passes one at a time)."""

    batch: Callable[[BatchDone], None] | None = None
    retry: Callable[[], None] | None = None
    dead_letter: Callable[[int], None] | None = None

    def on_batch(self, done: BatchDone) -> None:
        if self.batch is not None:
            self.batch(done)

    def on_retry(self) -> None:
        if self.retry is not None:
            self.retry()

    def on_dead_letter(self, count: int) -> None:
        if self.dead_letter is not None:
            self.dead_letter(count)
