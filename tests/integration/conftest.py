"""Target databases for integration tests: the stack's PostgreSQL, the machine's MariaDB, SQLite files."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from streamer.db import create_target_engine
from streamer.stack.local import Stack

MARIADB_URL = os.environ.get("STREAMER_TEST_MARIADB_URL", "mysql://root@127.0.0.1:3306/streamer_test")
TARGET_KINDS = ("postgresql", "mariadb", "sqlite")


def _mariadb_engine() -> Engine:
    url = sa.engine.make_url(MARIADB_URL)
    server = create_target_engine(url.set(database="").render_as_string(hide_password=False))
    try:
        with server.begin() as conn:
            conn.execute(sa.text(f"CREATE DATABASE IF NOT EXISTS `{url.database}` CHARACTER SET utf8mb4"))
    finally:
        server.dispose()
    return create_target_engine(MARIADB_URL)


def target_url(kind: str, stack: Stack, tmp_path: Path) -> str:
    if kind == "postgresql":
        return stack.settings.target_url
    if kind == "mariadb":
        return MARIADB_URL
    return f"sqlite:///{tmp_path / 'target.db'}"


@pytest.fixture(params=TARGET_KINDS)
def target_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def target(target_kind: str, stack: Stack, tmp_path: Path) -> Iterator[tuple[str, Engine]]:
    """(url, engine) of an empty-enough target of each kind; tests use unique table names."""
    if target_kind == "mariadb":
        engine = _mariadb_engine()
    else:
        engine = create_target_engine(target_url(target_kind, stack, tmp_path))
    yield target_url(target_kind, stack, tmp_path), engine
    engine.dispose()


@pytest.fixture(autouse=True)
def _drop_target_leftovers(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a test that used `unique`, drop what it left in the shared PostgreSQL and MariaDB targets."""
    if "unique" not in request.fixturenames or "stack" not in request.fixturenames:
        yield
        return
    name = request.getfixturevalue("unique")
    stack: Stack = request.getfixturevalue("stack")
    yield
    pg = create_target_engine(stack.settings.target_url)
    try:
        with pg.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
            for (table,) in conn.execute(
                sa.text("SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename LIKE :p"),
                {"p": f"{name}%"},
            ).all():
                quoted = conn.dialect.identifier_preparer.quote(table)  # hostile names too
                conn.execute(sa.text(f"DROP TABLE IF EXISTS public.{quoted} CASCADE"))
    finally:
        pg.dispose()
    try:
        my = create_target_engine(MARIADB_URL)
        with my.begin() as conn:
            for (table,) in conn.execute(
                sa.text(
                    "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name LIKE :p"
                ),
                {"p": f"{name}%"},
            ).all():
                conn.execute(sa.text(f"DROP TABLE IF EXISTS {conn.dialect.identifier_preparer.quote(table)}"))
        my.dispose()
    except sa.exc.OperationalError:
        pass  # no MariaDB database yet: nothing to drop
