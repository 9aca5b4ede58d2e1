"""`streamer consume --processes N`: the restart policy, and the supervisor over real (tiny) child processes."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from streamer.ops.supervise import RestartPolicy, Supervisor, child_command, describe_exit, options_argv

POLICY = RestartPolicy(base_delay=1.0, max_delay=30.0, max_failures=5, stable_after=60.0)


def test_clean_exit_is_done_and_resets() -> None:
    d = POLICY.decide(failures=3, returncode=0, ran_for=1.0)
    assert (d.action, d.failures) == ("done", 0)


def test_backoff_doubles_up_to_the_cap() -> None:
    failures, delays = 0, []
    for _ in range(4):
        d = POLICY.decide(failures, returncode=3, ran_for=2.0)
        assert d.action == "restart"
        failures = d.failures
        delays.append(d.delay)
    assert delays == [1.0, 2.0, 4.0, 8.0]
    capped = RestartPolicy(base_delay=10, max_delay=15, max_failures=10).decide(3, 3, 0.0)
    assert capped.delay == 15


def test_gives_up_after_max_failures_in_a_row() -> None:
    d = POLICY.decide(failures=4, returncode=3, ran_for=0.5)
    assert (d.action, d.failures) == ("give_up", 5)
    assert POLICY.decide(failures=4, returncode=-9, ran_for=0.5).action == "give_up"


def test_a_long_run_starts_the_count_anew() -> None:
    d = POLICY.decide(failures=4, returncode=-9, ran_for=61.0)
    assert (d.action, d.failures, d.delay) == ("restart", 1, 1.0)


def test_describe_exit() -> None:
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(3) == "exit code 3 (source, broker or target unavailable)"
    assert describe_exit(1) == "exit code 1 (stopped on a record (or another named error))"


def test_a_child_stopped_on_a_record_or_bad_settings_is_not_restarted() -> None:
    for code in (1, 2):  # a restart would meet the same record, the same settings
        d = POLICY.decide(failures=0, returncode=code, ran_for=120.0)
        assert d.action == "give_up", code
    assert POLICY.decide(failures=0, returncode=3, ran_for=1.0).action == "restart"  # unavailable
    assert POLICY.decide(failures=0, returncode=4, ran_for=1.0).action == "restart"  # internal error


def test_child_command_passes_options_and_spreads_metrics_ports() -> None:
    build = child_command("cfg.toml", ["--group", "g"], 9100)
    assert build(0)[1:] == [
        "-m",
        "streamer.cli",
        "--config",
        "cfg.toml",
        "consume",
        "--group",
        "g",
        "--metrics-port",
        "9100",
    ]
    assert build(2)[-1] == "9102"
    assert "--metrics-port" not in child_command(None, [], None)(0)


def _script(tmp_path: Path, body: str) -> list[str]:
    path = tmp_path / "child.py"
    path.write_text(body)
    return [sys.executable, str(path)]


FAST = RestartPolicy(base_delay=0.05, max_delay=0.2, max_failures=3, stable_after=30.0)


def test_supervisor_gives_up_on_a_child_that_keeps_failing(tmp_path: Path) -> None:
    log = tmp_path / "starts"
    argv = _script(tmp_path, f"import sys\nopen({str(log)!r}, 'a').write('x')\nsys.exit(3)\n")
    started = time.monotonic()
    code = Supervisor(lambda i: argv, 2, FAST, grace=5).run()
    assert code == 3  # the child's code: unavailable
    assert time.monotonic() - started < 10
    # 3 starts of the slot that gave up first, at most 3 of the other
    assert 3 <= len(log.read_text()) <= 6


def test_supervisor_exits_0_when_every_child_is_done(tmp_path: Path) -> None:
    argv = _script(tmp_path, "import time\ntime.sleep(0.2)\n")
    assert Supervisor(lambda i: argv, 3, FAST, grace=5).run() == 0


def test_supervisor_restarts_a_killed_child_and_stops_all_on_sigterm(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    body = (
        "import os, signal, sys, time\n"
        f"open({str(pids)!r}, 'a').write(f'{{sys.argv[1]}} {{os.getpid()}}\\n')\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
        "while True:\n    time.sleep(0.05)\n"
    )
    path = tmp_path / "child.py"
    path.write_text(body)
    sup = Supervisor(lambda i: [sys.executable, str(path), str(i)], 2, FAST, grace=5)
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(sup.run()))
    thread.start()

    def lines() -> list[tuple[str, int]]:
        if not pids.exists():
            return []
        return [(a, int(b)) for a, b in (ln.split() for ln in pids.read_text().splitlines() if ln)]

    deadline = time.monotonic() + 10
    while len(lines()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    first = dict(lines())
    os.kill(first["0"], signal.SIGKILL)
    while len(lines()) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    restarted = lines()[2]
    assert restarted[0] == "0" and restarted[1] != first["0"]
    sup.stop(signal.SIGTERM)
    thread.join(10)
    assert result == [0]
    for _slot, pid in lines()[1:]:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_options_argv_leaves_out_unset_options() -> None:
    argv = options_argv(
        {"group": "g", "topics": None, "until-idle": 6.5, "max-events": None, "error-policy": "dlq"}
    )
    assert argv == ["--group", "g", "--until-idle", "6.5", "--error-policy", "dlq"]


def test_supervisor_stops_all_at_once_on_a_child_stopped_on_a_record(tmp_path: Path) -> None:
    starts = tmp_path / "starts"
    body = (
        "import os, signal, sys, time\n"
        f"open({str(starts)!r}, 'a').write(sys.argv[1])\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
        # child 0 stops on a record once child 1 runs, so both have started before the supervisor acts
        f"while sys.argv[1] == '0' and '1' not in open({str(starts)!r}).read():\n    time.sleep(0.02)\n"
        "if sys.argv[1] == '0':\n    sys.exit(1)\n"
        "while True:\n    time.sleep(0.05)\n"
    )
    path = tmp_path / "child.py"
    path.write_text(body)
    code = Supervisor(lambda i: [sys.executable, str(path), str(i)], 2, FAST, grace=5).run()
    assert code == 1
    assert sorted(starts.read_text()) == ["0", "1"]  # child 0 was not restarted; child 1 was stopped
