"""Apply one batch under the error policy, the same way for every source.

:func:`apply_with_policy` runs ``apply(isolate=False)`` (one transaction for the batch). A
transient error (lost connection, deadlock, serialization failure, ``database is locked``) is
retried with exponential backoff, ``attempts`` times in all. A permanent one (constraint,
bad value, schema mismatch) makes it apply the batch again with ``isolate=True``: each event on
its own savepoint, so the events the target rejects are found (and dead-lettered, or refused by
:func:`~streamer.apply.sink.refuse_failures` with :class:`~streamer.apply.sink.EventRejectedError`). When that
too fails with a permanent error no event could be blamed for, :class:`BatchNotIsolatedError`
carries it. Transient errors through every attempt become
:class:`~streamer.core.errors.TargetUnavailableError` (exit 3).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TypeVar

import tenacity
from sqlalchemy.engine import Connection

from streamer.apply.sink import ApplyResult, Sink, refuse_failures
from streamer.core.checkpoint import Checkpoint
from streamer.core.errors import RecordStoppedError, TargetUnavailableError, one_line
from streamer.core.events import ChangeEvent

R = TypeVar("R")
Classifier = Callable[[BaseException], bool]


class BatchNotIsolatedError(RecordStoppedError):
    """A permanent error that applying the batch event by event could not pin on one event.

    Seen with a deferred foreign key in the target (checked at the batch's commit, which no single
    event's savepoint sees) and with a trigger of the target refusing the batch as a whole. Nothing
    of the batch is committed and no position moves past it (exit 1); the message names the error
    and the way out. A source that knows the batch's positions names them in its own error.
    """

    headline = "stopped on a batch"

    def __init__(self, error: BaseException) -> None:
        super().__init__(
            f"{type(error).__name__}: {one_line(str(error))[:1000]}: applying the batch event by event did "
            "not isolate it (a deferred constraint or a trigger of the target checks the batch as a whole); "
            "nothing of it was committed and it is read again at the next start. Next: drop or fix that "
            "constraint or trigger in the target (see README, Managed tables: foreign keys), then run again"
        )
        self.error = error


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How transient target errors are retried (``consumer.retry_attempts``, ``consumer.retry_max_wait_s``)."""

    attempts: int
    max_wait_s: float


def sink_apply(
    sink: Sink,
    events: Sequence[ChangeEvent],
    checkpoint: Checkpoint,
    group: str,
    *,
    dead_letter: bool,
    before_commit: Callable[[ApplyResult], None],
    in_transaction: Callable[[Connection], None] | None = None,
) -> Callable[[bool], ApplyResult]:
    """The ``apply(isolate)`` of :func:`apply_with_policy` for a batch of a sink.

    ``before_commit`` (dead letters) runs in the batch transaction; on the event-by-event pass
    it does only under error policy ``dlq`` (``dead_letter``), else a rejected event is refused
    (:func:`~streamer.apply.sink.refuse_failures`). ``in_transaction`` as for :meth:`~streamer.apply.sink.Sink.apply`.
    """

    def apply(isolate: bool) -> ApplyResult:
        hook = before_commit if not isolate or dead_letter else refuse_failures
        return sink.apply(
            events, checkpoint, group, isolate=isolate, before_commit=hook, in_transaction=in_transaction
        )

    return apply


def apply_with_policy(
    apply: Callable[[bool], R],
    *,
    retry: RetryPolicy,
    transient: Classifier,
    permanent: Classifier,
    passthrough: tuple[type[BaseException], ...] = (),
    isolate_passthrough: tuple[type[BaseException], ...] = (),
    before_sleep: Callable[[tenacity.RetryCallState], None] | None = None,
    sleep: Callable[[float], None] | None = None,
    unavailable_hint: str = "nothing of this batch was applied nor committed; run again once the target is back",
) -> R:
    """``apply(isolate)`` under the policy of the module docstring.

    ``passthrough`` errors of the batch transaction and ``isolate_passthrough`` errors of the
    event-by-event one are raised as they are (fencing, a changed load hold, a dead letter that
    could not be written, an event refused under error policy ``stop``).
    """

    def attempt() -> R:
        try:
            return apply(False)
        except passthrough:
            raise
        except Exception as exc:
            if transient(exc) or not permanent(exc):
                raise
        # a permanent error in the batch: event by event, to find the culprit(s)
        try:
            return apply(True)
        except isolate_passthrough:
            raise
        except Exception as exc:
            if transient(exc) or not permanent(exc):
                raise
            raise BatchNotIsolatedError(exc) from exc

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(transient),
        stop=tenacity.stop_after_attempt(retry.attempts),
        wait=tenacity.wait_exponential(multiplier=0.2, max=retry.max_wait_s),
        before_sleep=before_sleep,
        reraise=True,
        sleep=sleep if sleep is not None else tenacity.nap.sleep,
    )
    try:
        return retrying(attempt)
    except Exception as exc:
        if not transient(exc):
            raise
        raise TargetUnavailableError(
            f"the target kept failing through {retry.attempts} attempts: {type(exc).__name__}: "
            f"{one_line(str(exc))[:500]} ({unavailable_hint})"
        ) from exc
