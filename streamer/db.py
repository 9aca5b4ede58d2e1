"""Database connections: engines with the right driver options, and which errors are worth a retry."""

from __future__ import annotations

from typing import Any

import psycopg2.extensions
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

# PostgreSQL SQLSTATEs that a retry of the whole transaction can cure
_PG_TRANSIENT = {
    "40001",  # serialization_failure
    "40P01",  # deadlock_detected
    "55P03",  # lock_not_available
    "57P01",  # admin_shutdown
    "57P02",  # crash_shutdown
    "57P03",  # cannot_connect_now
    "53300",  # too_many_connections
    "08000",
    "08003",
    "08006",
    "08001",
    "08004",
}
# MySQL/MariaDB error numbers: lock wait timeout, deadlock, server gone away, lost connection,
# can't connect, too many connections, server shutdown in progress
_MYSQL_TRANSIENT = {1205, 1213, 2006, 2013, 2003, 1040, 1053, 4031}


def create_target_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for a target or source URL.

    ``postgresql://`` uses psycopg2 with batched executemany; ``mysql://`` and ``mariadb://`` use
    PyMySQL; ``sqlite:///path`` waits up to 30 s for a lock instead of failing at once.
    """
    u = make_url(url)
    backend = u.get_backend_name()
    opts: dict[str, Any] = {"pool_pre_ping": True}
    if backend == "postgresql":
        if u.drivername == "postgresql":
            u = u.set(drivername="postgresql+psycopg2")
        opts["executemany_mode"] = "values_plus_batch"
        opts["insertmanyvalues_page_size"] = 2000
    elif backend in ("mysql", "mariadb"):
        if "+" not in u.drivername:
            u = u.set(drivername=f"{backend}+pymysql")
        opts["pool_recycle"] = 3600
        opts["connect_args"] = {"charset": "utf8mb4"}
    elif backend == "sqlite":
        opts["connect_args"] = {"timeout": 30}
    opts.update(kwargs)
    engine = sa.create_engine(u, **opts)
    if backend == "sqlite":
        _sqlite_transactions(engine)
    return engine


def _sqlite_transactions(engine: Engine) -> None:
    """Let SQLAlchemy, not the ``sqlite3`` module, begin SQLite transactions.

    Left alone, Python's ``sqlite3`` (3.11) opens a transaction only before a DML statement and
    commits on its own around others, so a ``SAVEPOINT`` outside such a transaction is a
    transaction by itself and its ``RELEASE`` commits: a batch applied event by event on
    savepoints (error policy stop) kept the events before a rejected one although the batch was
    refused. With the driver's handling off and an explicit ``BEGIN`` per SQLAlchemy transaction
    (SQLAlchemy's documented recipe for pysqlite), a batch is one transaction again.
    """

    @sa.event.listens_for(engine, "connect")
    def _no_driver_transactions(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN")


def is_transient(exc: BaseException) -> bool:
    """True for errors that a retry of the whole batch can cure (lost connection, deadlock, ...)."""
    if isinstance(exc, sa.exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        orig = exc.orig
        code = getattr(orig, "pgcode", None)
        if code is not None:
            return str(code) in _PG_TRANSIENT
        args = getattr(orig, "args", ())
        if args and isinstance(args[0], int):
            return args[0] in _MYSQL_TRANSIENT
        text = str(orig).lower()
        if "database is locked" in text:  # SQLite
            return True
        return isinstance(exc, sa.exc.OperationalError) and (
            "server closed the connection" in text or "could not connect" in text or "connection" in text
        )
    return isinstance(exc, ConnectionError | TimeoutError)


def quote_ident(name: str) -> str:
    """A PostgreSQL identifier, double-quoted (embedded quotes doubled): never interpolated bare."""
    return '"' + name.replace('"', '""') + '"'


def dsn_params(url: str) -> dict[str, Any]:
    """libpq connection parameters of a URL (SQLAlchemy's ``postgresql+psycopg2://`` included)."""
    if "://" in url:
        scheme, rest = url.split("://", 1)
        url = scheme.split("+", 1)[0] + "://" + rest
    return dict(psycopg2.extensions.parse_dsn(url))
