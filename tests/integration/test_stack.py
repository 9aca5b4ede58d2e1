"""The stack works end to end, and `up`/`down`/`status`/`env` behave as documented."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg2
import pytest
import sqlalchemy as sa
from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient

from streamer.core.errors import StackError
from streamer.settings import load_settings
from streamer.stack.local import PARTS, Stack, _alive, outside_dir_for, reachable_by_postgres, running_stack
from tests.conftest import kafka_consumer_config


def test_insert_reaches_kafka_within_15s(stack: Stack, source_db, debezium, unique: str) -> None:
    with source_db.cursor() as cur:
        cur.execute(f"CREATE TABLE public.{unique} (id bigint PRIMARY KEY, name text NOT NULL)")
    debezium(unique, f"public.{unique}")
    consumer = Consumer(kafka_consumer_config(stack, f"{unique}-g"))
    topic = f"{unique}.public.{unique}"
    consumer.subscribe([f"^{unique}\\..*"])
    try:
        with source_db.cursor() as cur:
            cur.execute(f"INSERT INTO public.{unique} VALUES (42, 'hello')")
        inserted = time.monotonic()
        event = None
        while time.monotonic() - inserted < 15 and event is None:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            event = msg
        elapsed = time.monotonic() - inserted
    finally:
        consumer.close()
    assert event is not None, "no change event within 15 s of the insert"
    assert elapsed < 15
    assert event.topic() == topic
    value = json.loads(event.value() or b"null")
    assert value["payload"]["op"] == "c"
    assert value["payload"]["after"] == {"id": 42, "name": "hello"}
    assert value["payload"]["source"]["table"] == unique
    assert json.loads(event.key() or b"null")["payload"] == {"id": 42}


def test_env_and_status_describe_the_running_stack(stack: Stack) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "streamer.cli", "stack", "env"], capture_output=True, text=True, check=True
    ).stdout
    exports = dict(line.removeprefix("export ").split("=", 1) for line in out.splitlines())
    assert exports["STREAMER_BOOTSTRAP_SERVERS"] == stack.settings.bootstrap_servers
    assert exports["STREAMER_CONNECT_URL"] == stack.settings.connect_url
    assert exports["STREAMER_SOURCE_URL"] == stack.settings.source_url
    assert exports["STREAMER_MARIADB_PORT"] == str(stack.cfg.mariadb_port)
    assert exports["STREAMER_MARIADB_URL"] == stack.mariadb_url()
    statuses = stack.status()
    assert [s.name for s in statuses] == list(PARTS)
    assert all(s.healthy and s.pid for s in statuses), statuses


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def side_dir(stack: Stack, unique: str) -> Iterator[Path]:
    """A directory for a second stack, inside the stack dir (the postgres user must reach it)."""
    path = stack.dir / f"side-{unique}"
    path.mkdir()
    (path / "artifacts").symlink_to(stack.art_dir)  # share the fetched artifacts
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_second_stack_up_twice_then_down_leaves_nothing(stack: Stack, side_dir: Path) -> None:
    """A stack on its own ports and dir: `up` twice starts nothing twice; `down` stops every pid and port."""
    ports = {"broker": _free_port(), "connect": _free_port(), "source": _free_port(), "mariadb": _free_port()}
    env = {
        "STREAMER_STACK__DIR": str(side_dir),
        "STREAMER_STACK__BROKER_PORT": str(ports["broker"]),
        "STREAMER_STACK__CONNECT_PORT": str(ports["connect"]),
        "STREAMER_STACK__SOURCE_PORT": str(ports["source"]),
        "STREAMER_STACK__MARIADB_PORT": str(ports["mariadb"]),
    }
    other = Stack(load_settings(env=env))
    try:
        other.up()
        first = {p: other.pid(p) for p in PARTS}
        assert all(first.values()), first
        other.up()
        assert {p: other.pid(p) for p in PARTS} == first
        assert all(_listening(port) for port in ports.values())
    finally:
        stopped = other.down()
    assert sorted(stopped) == sorted(PARTS)
    assert all(other.pid(p) is None for p in PARTS)
    assert not any(_listening(port) for port in ports.values())
    # the session's stack is untouched
    assert all(s.healthy for s in stack.status())


def test_only_one_part_starts_and_stops_alone(stack: Stack, side_dir: Path) -> None:
    """`up --only mariadb` next to nothing else; `running_stack` stops exactly what it started."""
    port = _free_port()
    env = {
        "STREAMER_STACK__DIR": str(side_dir),
        "STREAMER_STACK__MARIADB_PORT": str(port),
        # quotes, backslashes and URL characters survive the init file and the URL
        "STREAMER_STACK__MARIADB_PASSWORD": "it's \\ a; test",
        "STREAMER_STACK__MARIADB_ROOT_PASSWORD": "r@o:t/'%",
    }
    settings = load_settings(env=env)
    with running_stack(settings, only=["mariadb"]) as (other, started):
        assert started
        assert other.pid("mariadb") is not None
        assert [p for p in PARTS if other.pid(p) is not None] == ["mariadb"]
        # healthy means the replication user logged in with its password
        assert [s.name for s in other.status() if s.healthy] == ["mariadb"]
        root = sa.create_engine(other.mariadb_url().replace("mysql://", "mysql+pymysql://", 1))
        try:
            with root.connect() as conn:
                assert conn.execute(sa.text("SELECT DATABASE(), @@port")).one() == ("inventory", port)
        finally:
            root.dispose()
        with running_stack(settings, only=["mariadb"]) as (_, started_again):
            assert not started_again  # already running: left running
        assert other.pid("mariadb") is not None
    assert other.pid("mariadb") is None and not _listening(port)
    with pytest.raises(StackError, match="unknown stack part"):
        other.up(["mysql"])
    off = Stack(load_settings(env={**env, "STREAMER_STACK__MARIADB": "false"}))
    assert "mariadb" not in off.parts and "STREAMER_MARIADB_URL" not in off.env()
    with pytest.raises(StackError, match=r"mariadb is off"):
        off.up(["mariadb"])


def test_port_taken_is_one_clear_error(stack: Stack, side_dir: Path) -> None:
    env = {"STREAMER_STACK__DIR": str(side_dir), "STREAMER_STACK__SOURCE_PORT": str(stack.cfg.broker_port)}
    other = Stack(load_settings(env=env))
    with pytest.raises(StackError, match=r"port .* is taken .*STREAMER_STACK__SOURCE_PORT"):
        other.up()
    assert other.pid("source") is None


def _processes_mentioning(*needles: str) -> list[str]:
    """Command lines of live processes whose command line or working directory names one of ``needles``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if any(n in cmdline or cwd.startswith(n) for n in needles):
            found.append(f"{proc.name}: {cmdline.strip()} (cwd {cwd})")
    return found


def test_stack_up_and_down_from_a_clone_in_a_private_directory(stack: Stack, tmp_path: Path) -> None:
    """Issue 15: a clone in a mode-700 directory (root's home) starts its stack and stops all of it.

    The clone runs its own code (the committed branch), on ports of its own; the shared stack is
    untouched. As root the server runs as postgres, which cannot reach the clone: the cluster must
    then live outside it, in a directory of that clone's own, which `down --purge` removes.
    """
    repo = Path(__file__).resolve().parents[2]
    private = tmp_path / "home"
    private.mkdir()
    private.chmod(0o700)
    clone = private / "streamer"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True, capture_output=True)
    (clone / ".stack").mkdir()
    (clone / ".stack" / "artifacts").symlink_to(stack.art_dir)  # fetched once, shared
    ports = {"broker": _free_port(), "connect": _free_port(), "source": _free_port(), "mariadb": _free_port()}
    overrides = {f"STREAMER_STACK__{part.upper()}_PORT": str(port) for part, port in ports.items()}
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMER_")}
    env.update(overrides, PYTHONPATH=str(clone), STREAMER_STACK__CONNECT_HEAP="512m")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "streamer.cli", *args],
            cwd=clone,
            env=env,
            capture_output=True,
            text=True,
            timeout=400,
        )

    which = subprocess.run(
        [sys.executable, "-c", "import streamer; print(streamer.__file__)"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert which.stdout.strip() == str(clone / "streamer" / "__init__.py")
    view = Stack(load_settings(env={**overrides, "STREAMER_STACK__DIR": str(clone / ".stack")}))
    pids: dict[str, int | None] = {}
    try:
        up = cli("stack", "up")
        assert up.returncode == 0, up.stderr[-3000:]
        pids = {p: view.pid(p) for p in PARTS}
        assert all(pids.values()), (pids, up.stderr[-2000:])
        # the cluster is outside the private directory, and not the shared stack's
        assert view.pg_outside and not view.pg_dir.is_relative_to(private)
        assert view.pg_dir != stack.pg_dir and view.pg_dir == view.outside_pg_dir()
        assert view.pg_dir.name.startswith("streamer-")  # <checkout name>-<hash>
        assert f"the cluster lives in {view.pg_dir}" in up.stderr
        # each part answers on its own port
        conn = psycopg2.connect(view.source_admin_dsn(view.cfg.source_database), connect_timeout=5)
        with conn.cursor() as cur:
            cur.execute("SHOW wal_level")
            assert cur.fetchone() == ("logical",)
            cur.execute("SHOW port")
            assert cur.fetchone() == (str(ports["source"]),)
        conn.close()
        md = AdminClient({"bootstrap.servers": f"127.0.0.1:{ports['broker']}"}).list_topics(timeout=10)
        assert [b.port for b in md.brokers.values()] == [ports["broker"]]
        resp = httpx.get(f"http://127.0.0.1:{ports['connect']}/connectors", timeout=10)
        assert (resp.status_code, resp.json()) == (200, [])
        # `stack status` and `stack env` of the clone find the same stack
        status = cli("stack", "status")
        assert status.returncode == 0, status.stdout + status.stderr
        for pid in pids.values():
            assert str(pid) in status.stdout
        exports = dict(
            line.removeprefix("export ").split("=", 1) for line in cli("stack", "env").stdout.splitlines()
        )
        assert exports["STREAMER_BOOTSTRAP_SERVERS"] == f"127.0.0.1:{ports['broker']}"
        assert exports["STREAMER_CONNECT_URL"] == f"http://127.0.0.1:{ports['connect']}"
        assert f":{ports['source']}/" in exports["STREAMER_SOURCE_URL"]
        # the MariaDB source: in the clone (it runs as root there), binlog in ROW format, the
        # replication user's grants, the variables its connector file reads
        assert exports["STREAMER_MARIADB_PORT"] == str(ports["mariadb"])
        assert (clone / ".stack" / "mariadb" / "data" / "mysql").is_dir()
        my = view.mariadb_connect(view.cfg.mariadb_user, view.cfg.mariadb_password, connect_timeout=5)
        with my.cursor() as cur:
            cur.execute("SELECT @@port, @@log_bin, @@binlog_format, @@binlog_row_image")
            assert cur.fetchone() == (ports["mariadb"], 1, "ROW", "FULL")
            cur.execute("SHOW GRANTS")
            grants = " ".join(r[0] for r in cur.fetchall())
        my.close()
        for grant in ("SELECT", "RELOAD", "SHOW DATABASES", "REPLICATION SLAVE", "BINLOG MONITOR"):
            assert grant in grants, grants
        # the worker `up` started resolves every placeholder of connectors/*.json, the MariaDB
        # file's included (Connect's validation connects to each source as its file says)
        validated = cli("connectors", "validate")
        assert validated.returncode == 0, validated.stdout + validated.stderr
        assert (clone / ".stack" / "logs" / "source.log").resolve() == view.pg_dir / "source.log"
    finally:
        down = cli("stack", "down", "--purge")
    assert down.returncode == 0, down.stderr
    assert down.stdout.splitlines()[0] == "stopped: connect, broker, mariadb, source"
    assert all(not _alive(pid) for pid in pids.values() if pid), pids
    assert _processes_mentioning(str(clone), str(view.outside_pg_dir())) == []
    assert not any(_listening(port) for port in ports.values())
    assert not view.outside_pg_dir().exists()  # --purge removed the cluster outside the clone
    assert not (clone / ".stack" / "mariadb").exists()
    assert all(s.healthy for s in stack.status())  # the shared stack is untouched


def test_clusters_of_a_private_checkout_go_where_postgres_reaches(stack: Stack, tmp_path: Path) -> None:
    """The fault matrix's private PostgreSQL in a private checkout: root's server user needs another place."""
    tmp_path.chmod(0o700)
    inside = stack.dir / "x"
    private = tmp_path / "checkout" / ".stack" / "faults-target-x"
    if os.geteuid() != 0:  # the server runs as us: every path is reachable
        assert (reachable_by_postgres(inside), reachable_by_postgres(private)) == (inside, private)
        return
    # the shared stack's directory stays where it is when every directory above it lets others
    # through (a clone in /tmp); in a private checkout (root's home, mode 700) it moves too
    home = stack.dir.resolve()
    through = all(p.stat().st_mode & 0o001 for p in [home, *home.parents])
    assert reachable_by_postgres(inside) == (inside if through else outside_dir_for(inside))
    moved = reachable_by_postgres(private)
    assert moved == outside_dir_for(private) and moved.parent.name == "streamer-stacks"
    assert moved.name.startswith("faults-target-x-")
    assert moved != outside_dir_for(tmp_path / "other" / ".stack" / "faults-target-x")
