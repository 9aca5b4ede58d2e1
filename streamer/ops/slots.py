"""Replication slots of the source: what they are, who owns them, what they cost, and dropping one.

A logical replication slot keeps every WAL segment from its ``restart_lsn`` on until its reader
confirms it. A slot nobody reads (its connector deleted, a ``streamer replicate`` stopped for good)
therefore fills the source's disk; so does a connector whose confirmed position stops moving. This
module reads ``pg_replication_slots`` (:func:`read_slots`), names the connector that owns each slot
(its ``slot.name``, from the connector files and the worker's configs: :func:`slot_owners`), says
what is wrong with it (:func:`slot_warnings`) and drops a slot and its publication
(:func:`drop_slot_and_publication`) for ``streamer connectors delete --drop-slot``.

Reading and formatting are separate: :func:`slot_warnings` and :func:`human_bytes` are pure.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import sqlalchemy as sa

from streamer.core.errors import SlotStillActiveError, SourceUnavailableError

POSTGRES_CONNECTOR_SUFFIX = "PostgresConnector"
DEBEZIUM_DEFAULT_SLOT = "debezium"  # Debezium's slot.name default
DEBEZIUM_DEFAULT_PUBLICATION = "dbz_publication"  # Debezium's publication.name default
_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})

# the server's current position (the replay position on a standby, where pg_current_wal_lsn fails)
_SLOTS_SQL = """
SELECT s.slot_name, s.plugin, s.slot_type, s.database, s.active, s.active_pid,
       s.restart_lsn::text, s.confirmed_flush_lsn::text, s.wal_status,
       pg_wal_lsn_diff(w.lsn, s.restart_lsn)::bigint,
       pg_wal_lsn_diff(w.lsn, s.confirmed_flush_lsn)::bigint
FROM pg_replication_slots AS s,
     (SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END AS lsn) AS w
ORDER BY s.slot_name
"""


@dataclasses.dataclass(frozen=True)
class Slot:
    """One row of ``pg_replication_slots`` with its costs in bytes (None where the server has no value)."""

    name: str
    plugin: str | None  # None for a physical slot
    type: str  # logical, physical
    database: str | None
    active: bool
    active_pid: int | None
    restart_lsn: str | None
    confirmed_flush_lsn: str | None
    wal_status: str | None  # reserved, extended, unreserved, lost
    retained_wal_bytes: int | None  # current LSN - restart_lsn: WAL the server keeps for this slot
    flush_lag_bytes: int | None  # current LSN - confirmed_flush_lsn: how far its reader has confirmed


@dataclasses.dataclass(frozen=True)
class Owner:
    """A connector whose ``slot.name`` is a slot's name."""

    connector: str
    on_worker: bool  # registered on Kafka Connect (else only a file)
    file: str | None  # the connector file that defines it, if any

    def to_json(self) -> dict[str, Any]:
        return {"connector": self.connector, "on_worker": self.on_worker, "file": self.file}


def is_postgres_connector(config: Mapping[str, str]) -> bool:
    return config.get("connector.class", "").endswith(POSTGRES_CONNECTOR_SUFFIX)


def slot_of(config: Mapping[str, str]) -> str:
    """A Debezium PostgreSQL connector's slot (``slot.name``, Debezium's default when absent)."""
    return config.get("slot.name") or DEBEZIUM_DEFAULT_SLOT


def publication_of(config: Mapping[str, str]) -> str:
    return config.get("publication.name") or DEBEZIUM_DEFAULT_PUBLICATION


def slot_owners(
    worker: Mapping[str, Mapping[str, str]], files: Iterable[tuple[str, str, Mapping[str, str]]]
) -> dict[str, list[Owner]]:
    """Slot name -> the connectors that name it: ``worker`` is Connect's configs by connector name,
    ``files`` are ``(connector name, file path, config)``. Only Debezium PostgreSQL connectors own slots."""
    by_name: dict[str, tuple[str | None, Mapping[str, str]]] = {}
    for name, file_path, file_cfg in files:
        by_name[name] = (file_path, file_cfg)
    out: dict[str, list[Owner]] = {}
    for name in sorted(set(worker) | set(by_name)):
        owned_by, file_config = by_name.get(name, (None, {}))
        config = worker.get(name) or file_config  # what runs wins over what the file says
        if not is_postgres_connector(config):
            continue
        out.setdefault(slot_of(config), []).append(Owner(name, name in worker, owned_by))
    return out


def human_bytes(n: int | None) -> str:
    """``1536`` -> ``1.5 KiB``; exact below 1 KiB; ``-`` for None."""
    if n is None:
        return "-"
    if abs(n) < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if abs(value) < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


def slot_warnings(slot: Slot, owners: list[Owner], max_retained_wal_bytes: int) -> list[str]:
    """What makes a slot unhealthy, each with what to do; empty when it is fine.

    Unhealthy: inactive (nothing reads it, the source keeps WAL for it), retaining more WAL than
    ``max_retained_wal_bytes`` (setting ``status.max_retained_wal_bytes``), WAL it needs already
    removed (``wal_status=lost``), or two connectors naming the same slot.
    """
    out: list[str] = []
    q = slot.name.replace("'", "''")
    if not slot.active:
        if not owners:
            out.append(
                "inactive and no connector has this slot.name: the source keeps its WAL; if nothing "
                f"will read it again, drop it: SELECT pg_drop_replication_slot('{q}');"
            )
        else:
            o = owners[0]
            if o.on_worker:
                out.append(
                    f"inactive although connector {o.connector} is on the worker: its task does not read "
                    f"the slot (see `streamer connectors status`)"
                )
            else:
                out.append(
                    f"inactive: connector {o.connector} ({o.file}) is not on the worker; "
                    "`streamer connectors apply` starts it, `streamer connectors delete "
                    f"{o.connector} --drop-slot` is for a connector that is gone for good"
                )
    if slot.retained_wal_bytes is not None and slot.retained_wal_bytes > max_retained_wal_bytes:
        out.append(
            f"retains {human_bytes(slot.retained_wal_bytes)} of WAL, above status.max_retained_wal_bytes "
            f"({human_bytes(max_retained_wal_bytes)}): its reader is behind or idle (see the README, "
            "Idle databases and WAL)"
        )
    if slot.wal_status == "lost":
        out.append(
            "WAL the slot needs was removed (wal_status=lost): its reader cannot resume; drop the slot, "
            "re-create the connector and reload the tables (streamer load)"
        )
    if len(owners) > 1:
        out.append(
            f"named by {len(owners)} connectors ({', '.join(o.connector for o in owners)}): only one can "
            "read a slot at a time; give each its own slot.name"
        )
    return out


def _psycopg2_dsn(url: str, database: str | None = None) -> str:
    """A libpq URI of a SQLAlchemy-style PostgreSQL URL (driver suffix dropped), optionally another database."""
    u = sa.engine.make_url(url)
    if database is not None:
        u = u.set(database=database)
    return u.set(drivername="postgresql").render_as_string(hide_password=False)


def is_postgres_url(url: str) -> bool:
    try:
        return sa.engine.make_url(url).get_backend_name() == "postgresql"
    except sa.exc.ArgumentError:
        return False


def _connect(url: str, database: str | None = None) -> Any:
    import psycopg2

    try:
        conn = psycopg2.connect(_psycopg2_dsn(url, database), connect_timeout=5)
    except psycopg2.OperationalError as exc:
        shown = sa.engine.make_url(url).render_as_string(hide_password=True)
        raise SourceUnavailableError(
            f"source database {shown} does not answer: {' '.join(str(exc).split())} "
            "(check source_url / STREAMER_SOURCE_URL)"
        ) from exc
    conn.autocommit = True
    return conn


def read_slots(source_url: str) -> list[Slot]:
    """Every replication slot of the source's server, with the WAL each retains and its flush lag."""
    conn = _connect(source_url)
    try:
        with conn.cursor() as cur:
            cur.execute(_SLOTS_SQL)
            rows = cur.fetchall()
    finally:
        conn.close()
    return [
        Slot(
            name=r[0],
            plugin=r[1],
            type=r[2],
            database=r[3],
            active=bool(r[4]),
            active_pid=r[5],
            restart_lsn=r[6],
            confirmed_flush_lsn=r[7],
            wal_status=r[8],
            retained_wal_bytes=None if r[9] is None else int(r[9]),
            flush_lag_bytes=None if r[10] is None else int(r[10]),
        )
        for r in rows
    ]


def server_mismatch(config: Mapping[str, str], source_url: str) -> str | None:
    """Why the connector's database server is not ``source_url``'s, or None (placeholders: not knowable, None).

    ``localhost``, ``127.0.0.1`` and ``::1`` count as one host.
    """
    u = sa.engine.make_url(source_url)
    host = config.get("database.hostname", "")
    port = config.get("database.port", "")
    theirs = []
    if host and "${" not in host:
        same = host == (u.host or "") or (host in _LOCAL_HOSTS and (u.host or "localhost") in _LOCAL_HOSTS)
        if not same:
            theirs.append(f"host {host}")
    if port and "${" not in port and port != str(u.port or 5432):
        theirs.append(f"port {port}")
    if not theirs:
        return None
    return (
        f"the connector reads {' and '.join(theirs)}, source_url is {u.host}:{u.port or 5432}: "
        "set source_url (STREAMER_SOURCE_URL) to the connector's database server"
    )


def drop_slot_and_publication(
    source_url: str,
    connector: str,
    slot: str,
    publication: str,
    database: str | None,
    wait_s: float,
    say: Callable[[str], None],
) -> None:
    """Drop ``slot`` once it is inactive (waiting up to ``wait_s``), then ``publication``.

    Raises :class:`SlotStillActiveError` naming the reader when the slot stays active: then
    nothing is dropped. The publication is dropped in the slot's database (else ``database``, else
    the source URL's); a slot or publication that does not exist is said and skipped.
    """
    import psycopg2
    from psycopg2 import errors as pgerrors
    from psycopg2 import sql

    conn = _connect(source_url)
    try:
        with conn.cursor() as cur:
            deadline = time.monotonic() + wait_s
            while True:
                cur.execute(
                    "SELECT active, active_pid, database FROM pg_replication_slots WHERE slot_name = %s",
                    (slot,),
                )
                row = cur.fetchone()
                if row is None or not row[0] or time.monotonic() >= deadline:
                    break
                time.sleep(0.5)
            if row is None:
                say(f"note: replication slot {slot!r} does not exist (the connector never started?)")
            else:
                active, pid, database = bool(row[0]), row[1], row[2] or database
                if active:
                    raise SlotStillActiveError(connector, slot, publication, pid, wait_s, _reader(cur, pid))
                try:
                    cur.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                except pgerrors.ObjectInUse as exc:  # a reader took it between the check and the drop
                    raise SlotStillActiveError(
                        connector, slot, publication, None, wait_s, str(exc).strip()
                    ) from exc
                say(f"- dropped replication slot {slot}")
    except psycopg2.Error as exc:
        raise SourceUnavailableError(
            f"dropping replication slot {slot!r}: {' '.join(str(exc).split())}"
        ) from exc
    finally:
        conn.close()
    conn = _connect(source_url, database)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (publication,))
            if cur.fetchone() is None:
                say(f"note: publication {publication!r} does not exist in database {conn.info.dbname}")
                return
            cur.execute(sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(publication)))
            say(f"- dropped publication {publication} (database {conn.info.dbname})")
    finally:
        conn.close()


def _reader(cur: Any, pid: int | None) -> str:
    """Who holds a slot: the walsender's application name and client address, when visible."""
    if pid is None:
        return ""
    cur.execute(
        "SELECT application_name, client_addr::text, backend_start::text FROM pg_stat_activity WHERE pid = %s",
        (pid,),
    )
    row = cur.fetchone()
    if row is None:
        return ""
    app, addr, started = row
    return f"application_name={app or '-'}, client_addr={addr or 'local'}, since {started}"
