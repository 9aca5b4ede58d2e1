"""`stack down` stops only what `up` started: a pid file whose pid now belongs to another process is not ours."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from streamer.settings import load_settings
from streamer.stack.local import Stack, _start_time


def _stack(tmp_path: Path) -> Stack:
    st = Stack(load_settings(env={"STREAMER_STACK__DIR": str(tmp_path / ".stack")}))
    st.run_dir.mkdir(parents=True)
    return st


def test_a_pid_file_with_another_processes_start_time_is_not_ours(tmp_path: Path) -> None:
    st = _stack(tmp_path)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started = _start_time(child.pid)
        assert started is not None and started.isdigit()
        pidfile = st.run_dir / "broker.pid"
        pidfile.write_text(f"{child.pid} {started}\n")
        assert st.pid("broker") == child.pid
        pidfile.write_text(f"{child.pid} {int(started) + 1}\n")  # the pid was reused by another process
        assert st.pid("broker") is None
        pidfile.write_text(f"{child.pid}\n")  # written before start times were recorded: taken as is
        assert st.pid("broker") == child.pid
    finally:
        child.kill()
        child.wait()
    pidfile.write_text(f"{child.pid} {started}\n")
    assert st.pid("broker") is None  # gone


def test_a_postmaster_pid_of_a_process_outside_the_data_directory_is_not_ours(tmp_path: Path) -> None:
    st = _stack(tmp_path)
    st.pg_data.mkdir(parents=True)
    (st.pg_data / "postmaster.pid").write_text(f"{os.getpid()}\n{st.pg_data}\n")
    assert st.pid("source") is None  # this test process runs elsewhere
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], cwd=st.pg_data)
    try:
        (st.pg_data / "postmaster.pid").write_text(f"{child.pid}\n{st.pg_data}\n")
        assert st.pid("source") == child.pid
    finally:
        child.kill()
        child.wait()


def test_the_cluster_place_is_recorded_and_read_back(tmp_path: Path) -> None:
    st = _stack(tmp_path)
    assert st.pg_dir == st.dir / "pg" and not st.pg_outside
    elsewhere = tmp_path / "elsewhere"
    st.pg_location_file.write_text(f"{elsewhere}\n")
    assert (st.pg_dir, st.pg_data, st.pg_outside) == (elsewhere, elsewhere / "data", True)
    explicit = Stack(
        load_settings(env={"STREAMER_STACK__DIR": str(st.dir), "STREAMER_STACK__PG_DIR": str(tmp_path / "x")})
    )
    assert explicit.pg_dir == tmp_path / "x"  # the setting wins over the record
