"""The one error policy of every source's batches (streamer.pipeline.policy), on a scripted apply."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from streamer.core.errors import TargetUnavailableError
from streamer.pipeline.policy import BatchNotIsolatedError, RetryPolicy, apply_with_policy


class Transient(Exception):
    pass


class Permanent(Exception):
    pass


class Fenced(Exception):
    pass


def scripted(outcomes: list[BaseException | str]) -> tuple[Callable[[bool], str], list[bool]]:
    """An apply that raises or returns the next outcome, and the list of its ``isolate`` arguments."""
    calls: list[bool] = []

    def apply(isolate: bool) -> str:
        calls.append(isolate)
        out = outcomes.pop(0)
        if isinstance(out, BaseException):
            raise out
        return out

    return apply, calls


def run(apply: Callable[[bool], str], **kw: object) -> str:
    return apply_with_policy(
        apply,
        retry=RetryPolicy(attempts=3, max_wait_s=0.0),
        transient=lambda e: isinstance(e, Transient),
        permanent=lambda e: isinstance(e, Permanent | Fenced),
        sleep=lambda _s: None,
        **kw,  # type: ignore[arg-type]
    )


def test_transient_errors_retry_the_whole_batch() -> None:
    apply, calls = scripted([Transient("deadlock"), Transient("deadlock"), "ok"])
    assert run(apply) == "ok"
    assert calls == [False, False, False]


def test_transient_through_every_attempt_is_target_unavailable() -> None:
    apply, calls = scripted([Transient("gone")] * 3)
    with pytest.raises(TargetUnavailableError, match="through 3 attempts: Transient: gone"):
        run(apply)
    assert calls == [False, False, False]


def test_a_permanent_error_isolates_event_by_event() -> None:
    apply, calls = scripted([Permanent("constraint"), "isolated"])
    assert run(apply) == "isolated"
    assert calls == [False, True]


def test_a_permanent_error_no_event_explains_is_named() -> None:
    apply, calls = scripted([Permanent("constraint"), Permanent("still")])
    with pytest.raises(BatchNotIsolatedError) as err:
        run(apply)
    assert str(err.value.error) == "still" and calls == [False, True]


def test_passthrough_errors_are_raised_as_they_are() -> None:
    apply, calls = scripted([Fenced("overtaken")])
    with pytest.raises(Fenced):
        run(apply, passthrough=(Fenced,))
    assert calls == [False]
    apply, calls = scripted([Permanent("constraint"), Permanent("refused")])
    with pytest.raises(Permanent, match="refused"):
        run(apply, isolate_passthrough=(Exception,))
    assert calls == [False, True]


def test_a_transient_error_while_isolating_retries_from_the_batch() -> None:
    apply, calls = scripted([Permanent("constraint"), Transient("lost"), Permanent("constraint"), "isolated"])
    assert run(apply) == "isolated"
    assert calls == [False, True, False, True]


def test_a_batch_no_event_can_be_blamed_for_stops_with_exit_1_naming_the_error() -> None:
    from streamer.cli import classify

    code, headline, message = classify(BatchNotIsolatedError(ValueError("deferred key fk_child_parent")))
    assert (code, headline) == (1, "stopped on a batch")
    assert "ValueError: deferred key fk_child_parent" in message and "Managed tables" in message
