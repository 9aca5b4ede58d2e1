"""Exit codes and the one stderr line of ``streamer.cli.main`` for each kind of error (pure mapping).

A fatal broker error cannot be produced on the local broker (tansu), so its mapping to exit 3 is
covered here; the other exit paths run for real in tests/integration/test_exit_paths.py.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from confluent_kafka import KafkaError, KafkaException

from streamer.cli import root as cli
from streamer.consume import DeadLetterError, PoisonRecordError
from streamer.core.errors import (
    BrokerUnavailableError,
    ReplicationApplyError,
    SettingsError,
    SlotInUseError,
    SlotNotFoundError,
    StreamerError,
    TargetUnavailableError,
    exit_reason,
)


@pytest.mark.parametrize(
    ("exc", "code", "headline"),
    [
        (PoisonRecordError("t", 0, 3, "bad\nvalue"), 1, "stopped on a record"),
        (ReplicationApplyError("0/1", "rejected"), 1, "stopped on a record"),
        (StreamerError("other"), 1, "error"),
        (SettingsError("setting x"), 2, "bad settings"),
        (SlotNotFoundError("no slot"), 2, "source not set up"),
        (SlotInUseError("in use"), 3, "slot in use"),
        (TargetUnavailableError("down"), 3, "target unavailable"),
        (BrokerUnavailableError("down"), 3, "broker unavailable"),
        (DeadLetterError("no dlq"), 3, "broker unavailable"),
        (KafkaException(KafkaError(KafkaError._FATAL, "fenced", fatal=True)), 3, "broker unavailable"),
        (sa.exc.OperationalError("SELECT 1", {}, Exception("could not connect")), 3, "database unavailable"),
        (RuntimeError("cannot schedule new futures after shutdown"), 4, "internal error"),
    ],
)
def test_classify(exc: BaseException, code: int, headline: str) -> None:
    got_code, got_headline, message = cli.classify(exc)
    assert (got_code, got_headline) == (code, headline)
    assert "\n" not in message
    assert exit_reason(code)


def test_poison_message_is_one_line() -> None:
    err = PoisonRecordError("t", 2, 7, "CheckViolation: new row violates\nDETAIL:  Failing row")
    assert str(err).startswith("record t[2]@7 cannot be applied: CheckViolation: new row violates DETAIL: ")


def _raise() -> None:
    raise RuntimeError("boom")


@pytest.mark.parametrize("debug", [False, True])
def test_main_prints_one_line_and_the_traceback_only_with_debug(
    debug: bool, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "app", _raise)
    monkeypatch.setitem(cli._OPTIONS, "debug", debug)
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == 4
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert lines[-1] == (
        "streamer: internal error: RuntimeError: boom (a bug in streamer: run again with --debug for the "
        "traceback, and report it)"
    )
    assert ("Traceback (most recent call last):" in lines) is debug
