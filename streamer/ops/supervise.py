"""``streamer consume --processes N``: N consumer processes in one group under one supervisor.

Each child is ``python -m streamer.cli [--config F] consume ...`` with the same options (minus
``--processes``; with ``--metrics-port P`` child *i* serves ``P + i``), so a child is exactly a
``streamer consume`` that more machines could run too. They join the same consumer group and
the group spreads the partitions over them: a topic's partitions bound the parallelism (a
fourth process for three partitions idles), so size ``topic.creation.default.partitions`` in
the connector file to the parallelism wanted.

Restart policy (:class:`RestartPolicy`, pure, unit-tested):

* a child that exits 0 (``--until-idle``, ``--max-events``, or stopped) is done and not restarted;
  the supervisor exits 0 once every child is done;
* a child that exits 1 (stopped on a record under ``error_policy=stop``: a restart would stop on
  the same record) or 2 (bad settings) is not restarted: the supervisor stops every child and
  exits with that code;
* a child that exits otherwise (3 unavailable, 4 internal error) or is killed is restarted after a
  backoff of 1, 2, 4, ... seconds (at most 30), logged with its exit code and its meaning (the
  words of :data:`~streamer.core.errors.EXIT_REASONS`, as in the README's table) or signal;
* a child that ran ``stable_after`` seconds (60) before failing starts its count anew; after
  ``max_failures`` (5) failures in a row without such a run, the supervisor gives up: it stops
  every child and exits with the child's code (1 if it was killed by a signal).

SIGTERM or SIGINT: the supervisor sends SIGTERM to every child, which finishes and commits its
batch and leaves the group; a child still running after ``grace`` seconds (60) is killed.
On Linux a child also gets SIGTERM when the supervisor dies (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import ctypes
import dataclasses
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

from streamer import logs
from streamer.core.errors import EXIT_SETTINGS, EXIT_STOPPED_ON_RECORD, exit_reason


@dataclasses.dataclass(frozen=True)
class RestartPolicy:
    base_delay: float = 1.0
    max_delay: float = 30.0
    max_failures: int = 5
    stable_after: float = 60.0

    def decide(self, failures: int, returncode: int, ran_for: float) -> Decision:
        """What to do when a child exits: ``failures`` is its count of failures in a row so far.

        Exit 1 (stopped on a record) and 2 (bad settings) are never restarted: the same record
        or the same settings would stop the child again.
        """
        if returncode == 0:
            return Decision("done", 0.0, 0)
        if returncode in (EXIT_STOPPED_ON_RECORD, EXIT_SETTINGS):
            return Decision("give_up", 0.0, failures + 1)
        count = 1 if ran_for >= self.stable_after else failures + 1
        if count >= self.max_failures:
            return Decision("give_up", 0.0, count)
        return Decision("restart", min(self.base_delay * 2 ** (count - 1), self.max_delay), count)


@dataclasses.dataclass(frozen=True)
class Decision:
    action: Literal["done", "restart", "give_up"]
    delay: float
    failures: int


def describe_exit(returncode: int) -> str:
    """``exit code 1 (stopped on a record ...)``, ``killed by SIGKILL``: the words of the README's table."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode} ({exit_reason(returncode)})"


def supervisor_code(returncode: int) -> int:
    """The supervisor's exit code when it gives up on a child that exited ``returncode``."""
    return returncode if returncode > 0 else 1


@dataclasses.dataclass
class _Slot:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    failures: int = 0
    restart_at: float | None = None
    done: bool = False


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Supervisor:
    """Runs ``n`` children built by ``command(i)``; see the module docstring."""

    def __init__(
        self,
        command: Callable[[int], Sequence[str]],
        n: int,
        policy: RestartPolicy | None = None,
        grace: float = 60.0,
        env: dict[str, str] | None = None,
    ) -> None:
        self.command = command
        self.slots = [_Slot(i) for i in range(n)]
        self.policy = policy or RestartPolicy()
        self.grace = grace
        self.env = env
        self.log = logs.get("supervise")
        self._stop = threading.Event()
        self._stop_signal = ""

    def stop(self, signum: int = signal.SIGTERM, _frame: object = None) -> None:
        self._stop_signal = signal.Signals(signum).name
        self._stop.set()

    def _start(self, slot: _Slot) -> None:
        argv = list(self.command(slot.index))
        slot.proc = subprocess.Popen(
            argv, env=self.env, preexec_fn=_die_with_parent if sys.platform == "linux" else None
        )
        slot.started = time.monotonic()
        slot.restart_at = None
        self.log.info("child started", child=slot.index, pid=slot.proc.pid, failures_in_a_row=slot.failures)

    def run(self) -> int:
        """Supervise until every child is done, a signal arrives, or a child keeps failing. Returns the exit code."""
        previous = {}
        if threading.current_thread() is threading.main_thread():
            previous = {sig: signal.signal(sig, self.stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        code = 0
        try:
            self.log.info("supervising", children=len(self.slots))
            for slot in self.slots:
                self._start(slot)
            while not self._stop.is_set():
                now = time.monotonic()
                for slot in self.slots:
                    if slot.proc is not None and (rc := slot.proc.poll()) is not None:
                        code = max(code, self._exited(slot, rc, now))
                        if code:
                            break
                    elif slot.proc is None and slot.restart_at is not None and now >= slot.restart_at:
                        self._start(slot)
                if code or all(s.done for s in self.slots):
                    break
                self._stop.wait(0.2)
            if self._stop.is_set():
                self.log.info("stopping children", signal=self._stop_signal or "SIGTERM")
            code = max(code, self._stop_all())
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        self.log.info("supervisor exiting", exit_code=code)
        return code

    def _exited(self, slot: _Slot, rc: int, now: float) -> int:
        assert slot.proc is not None
        ran = now - slot.started
        pid = slot.proc.pid
        slot.proc = None
        decision = self.policy.decide(slot.failures, rc, ran)
        slot.failures = decision.failures
        if decision.action == "done":
            slot.done = True
            self.log.info("child finished", child=slot.index, pid=pid, seconds=round(ran, 1))
            return 0
        if decision.action == "restart":
            slot.restart_at = now + decision.delay
            self.log.warning(
                "child died, restarting",
                child=slot.index,
                pid=pid,
                status=describe_exit(rc),
                seconds=round(ran, 1),
                failures_in_a_row=decision.failures,
                restart_in=decision.delay,
            )
            return 0
        self.log.error(
            "child stopped for good, stopping all"
            if rc in (EXIT_STOPPED_ON_RECORD, EXIT_SETTINGS)
            else "child keeps failing, giving up",
            child=slot.index,
            pid=pid,
            status=describe_exit(rc),
            failures_in_a_row=decision.failures,
        )
        return supervisor_code(rc)

    def _stop_all(self) -> int:
        """SIGTERM every live child, wait up to ``grace``, then SIGKILL. 1 if a child failed to stop cleanly."""
        live = [s for s in self.slots if s.proc is not None]
        for s in live:
            assert s.proc is not None
            if s.proc.poll() is None:
                s.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        code = 0
        for s in live:
            assert s.proc is not None
            try:
                rc = s.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.log.error("child did not stop in time, killing it", child=s.index, pid=s.proc.pid)
                s.proc.kill()
                rc = s.proc.wait()
            if rc != 0:
                code = 1
            self.log.info("child stopped", child=s.index, pid=s.proc.pid, status=describe_exit(rc))
            s.proc = None
        return code


def child_command(
    config: str | None,
    options: Sequence[str],
    metrics_port: int | None,
) -> Callable[[int], list[str]]:
    """The argv of child ``i``: this interpreter running ``streamer consume`` with the same options."""

    def build(i: int) -> list[str]:
        argv = [sys.executable, "-m", "streamer.cli"]
        if config:
            argv += ["--config", config]
        argv += ["consume", *options]
        if metrics_port is not None:
            argv += ["--metrics-port", str(metrics_port + i)]
        return argv

    return build


def supervise_consume(
    processes: int, config: object, options: Mapping[str, object], metrics_port: int | None
) -> int:
    """``consume --processes N``: children get the given ``consume`` options (None ones left out)."""
    command = child_command(str(config) if config else None, options_argv(options), metrics_port)
    return Supervisor(command, processes).run()


def options_argv(options: Mapping[str, object]) -> list[str]:
    """``{"until-idle": 6.0, "topics": None}`` -> ``["--until-idle", "6.0"]``."""
    argv: list[str] = []
    for name, value in options.items():
        if value is not None:
            argv += [f"--{name}", str(value)]
    return argv
