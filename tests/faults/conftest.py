"""Fixtures of the fault matrix: targets, a captured workload on the shared stack, a private stack.

The shared stack (tests/conftest.py ``stack``) is never restarted here; scenarios that restart a
broker, a Connect worker or a target database use processes of their own (``private_stack``,
:class:`tests.faults.harness.PrivatePostgres`).
"""

from __future__ import annotations

import dataclasses
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from streamer.db import create_target_engine
from streamer.settings import load_settings
from streamer.stack.local import Stack
from tests.conftest import debezium_config, wait_running
from tests.faults.harness import TABLES, Workload, end_all, free_port, say, topics_regex
from tests.integration.conftest import MARIADB_URL, _mariadb_engine

TARGET_KINDS = ("postgresql", "mariadb")


@pytest.fixture(autouse=True)
def _end_leftover_processes() -> Iterator[None]:
    """A failing scenario leaves its processes running: end them (the fixtures that drop slots and tables
    call :func:`end_all` first themselves)."""
    yield
    end_all()


def target_url_of(kind: str, stack: Stack) -> str:
    if kind == "postgresql":
        return stack.settings.target_url
    _mariadb_engine().dispose()  # the MariaDB test database exists from here on
    return MARIADB_URL


def drop_target_tables(url: str, schema: str) -> None:
    """Drop what a scenario left in a target: its schema (PostgreSQL) or its prefixed tables."""
    engine = create_target_engine(url)
    try:
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
                return
            for t in TABLES:
                conn.execute(
                    sa.text(f"DROP TABLE IF EXISTS {conn.dialect.identifier_preparer.quote(f'{schema}_{t}')}")
                )
    except sa.exc.OperationalError as exc:
        say(f"cleanup of {schema} in {url.split('@')[-1]} skipped: {exc}")
    finally:
        engine.dispose()


@dataclasses.dataclass
class Pipeline:
    """A workload's tables captured by a Debezium connector of the scenario's own."""

    stack: Stack
    workload: Workload
    prefix: str
    logs: Path

    @property
    def schema(self) -> str:
        return self.workload.schema

    @property
    def topics(self) -> str:
        return topics_regex(self.prefix, self.schema)

    @property
    def source_url(self) -> str:
        return self.stack.settings.source_url

    @property
    def database(self) -> str:
        return self.stack.cfg.source_database

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"


@pytest.fixture
def make_pipeline(
    stack: Stack, debezium: Callable[..., dict[str, Any]], unique: str, tmp_path: Path
) -> Iterator[Callable[..., Pipeline]]:
    """``make_pipeline(rows=200, snapshot="initial", **workload_options)``: tables, rows, connector.

    Afterwards: drops the source schema and the scenario's tables in the shared PostgreSQL and
    MariaDB targets.
    """
    made: list[Pipeline] = []

    def make(rows: int = 200, snapshot: str = "initial", **options: Any) -> Pipeline:
        wl = Workload(stack.settings.source_url, unique, **options)
        wl.create(rows)
        debezium(
            unique,
            ",".join(wl.qualified),
            **{"snapshot.mode": snapshot, "column.propagate.source.type": ".*"},
        )
        p = Pipeline(stack, wl, unique, tmp_path)
        made.append(p)
        return p

    yield make
    end_all()  # a failed scenario's consumers first: they hold the slot and write the tables
    for p in made:
        p.workload.stop()
        p.workload.drop()
    for url in (stack.settings.target_url, MARIADB_URL):
        drop_target_tables(url, unique)


@pytest.fixture(params=TARGET_KINDS)
def target(request: pytest.FixtureRequest, stack: Stack) -> str:
    """The URL of a shared target of each kind (PostgreSQL target database, MariaDB test database)."""
    return target_url_of(str(request.param), stack)


@pytest.fixture(scope="session")
def private_stack(stack: Stack) -> Iterator[Stack]:
    """A second stack (source PostgreSQL, tansu, Connect) on free ports, which scenarios may restart.

    Its directory is inside the shared stack's (the postgres user can reach it) and shares the
    fetched artifacts. Stopped and removed at the end of the session.
    """
    path = stack.dir / f"faults-side-{uuid.uuid4().hex[:6]}"
    path.mkdir()
    (path / "artifacts").symlink_to(stack.art_dir)
    env = {
        "STREAMER_STACK__DIR": str(path),
        "STREAMER_STACK__BROKER_PORT": str(free_port()),
        "STREAMER_STACK__CONNECT_PORT": str(free_port()),
        "STREAMER_STACK__SOURCE_PORT": str(free_port()),
        "STREAMER_STACK__CONNECT_HEAP": "512m",
        "STREAMER_STACK__MARIADB": "false",  # no MariaDB source: not needed here
    }
    other = Stack(load_settings(env=env), log=say)
    try:
        other.up()
        yield other
    finally:
        other.down()
        shutil.rmtree(path, ignore_errors=True)


def apply_connector(st: Stack, prefix: str, tables: str, **extra: str) -> None:
    """PUT a Debezium connector's config on a stack's Connect and wait until it runs."""
    cfg = debezium_config(st, prefix, tables, **{"column.propagate.source.type": ".*", **extra})
    resp = httpx.put(f"{st.settings.connect_url}/connectors/{prefix}/config", json=cfg, timeout=60)
    assert resp.status_code in (200, 201), resp.text
    wait_running(st.settings.connect_url, prefix, timeout=120)
