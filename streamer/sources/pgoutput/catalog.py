"""The source catalog of the pgoutput source: a normal connection to the source PostgreSQL.

:class:`SourceCatalog` runs the setup checks (``wal_level``, the REPLICATION privilege, the slot,
the publication and its tables' keys) and answers the transaction assembler's type and relation
lookups. Moved verbatim from ``streamer/replicate.py`` (issue 12).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions

from streamer.core.checkpoint import wal_stream
from streamer.core.errors import (
    PublicationNotFoundError,
    ReplicationPrivilegeError,
    ReplicationUnavailableError,
    SlotInUseError,
    SlotNotFoundError,
    TableIdentityError,
    WalLevelError,
    one_line,
)
from streamer.core.events import parse_lsn
from streamer.db import quote_ident
from streamer.decode.pgtypes import (
    SESSION_OPTIONS,
    TYPE_QUERY,
    PgType,
    builtin_type,
    reported_type_name,
    type_from_row,
)
from streamer.sources.pgoutput.protocol import RelationMeta

__all__ = ["SourceCatalog", "origin_topic", "quote_ident"]


def origin_topic(slot: str) -> str:
    """The ``topic`` of this path's positions in ``_streamer_offsets`` (see :func:`streamer.core.checkpoint.wal_stream`)."""
    return wal_stream(slot)


def _qualified(table: str) -> tuple[str, str]:
    """``schema.table`` (default schema ``public``) -> (schema, table); quotes not interpreted."""
    schema, _, name = table.strip().rpartition(".")
    return schema or "public", name


def _connect_params(url: str) -> dict[str, Any]:
    """psycopg2 keyword parameters of a ``postgresql://`` URL (SQLAlchemy's ``+driver`` removed)."""
    if "://" in url:
        scheme, rest = url.split("://", 1)
        url = scheme.split("+", 1)[0] + "://" + rest
    return dict(psycopg2.extensions.parse_dsn(url))


def _session_options(existing: str | None) -> str:
    ours = " ".join(f"-c {k}={v}" for k, v in SESSION_OPTIONS)
    return f"{existing} {ours}" if existing else ours


def _lsn_text(value: Any) -> int | None:
    return parse_lsn(str(value)) if value else None


# --------------------------------------------------------------------------- source catalog
class SourceCatalog:
    """A normal connection to the source: setup checks, type and relation metadata."""

    def __init__(self, url: str) -> None:
        self.params = _connect_params(url)
        self.params.setdefault("application_name", "streamer-replicate-catalog")
        self.conn: Any = None
        self._types: dict[int, PgType] = {}
        self.connect()
        self.database: str = self.scalar("SELECT current_database()")
        self.server_version: int = int(self.scalar("SELECT current_setting('server_version_num')"))

    def connect(self) -> None:
        self.close()
        try:
            self.conn = psycopg2.connect(**self.params)
        except psycopg2.OperationalError as exc:
            raise ReplicationUnavailableError(
                f"cannot connect to the source: {one_line(str(exc))} (check that it is running and reachable, "
                "then run again)"
            ) from exc
        self.conn.autocommit = True

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except psycopg2.Error:
                pass
            self.conn = None

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        for attempt in range(2):
            try:
                with self.conn.cursor() as cur:
                    cur.execute(sql, args)
                    return list(cur.fetchall()) if cur.description is not None else []
            except (psycopg2.OperationalError, psycopg2.InterfaceError):
                if attempt:
                    raise
                self.connect()
        raise AssertionError("unreachable")

    def scalar(self, sql: str, args: Sequence[Any] = ()) -> Any:
        rows = self.query(sql, args)
        return rows[0][0] if rows else None

    # -- types and relations (for the assembler) --
    def type(self, oid: int) -> PgType:
        known = builtin_type(oid) or self._types.get(oid)
        if known is not None:
            return known
        rows = self.query(TYPE_QUERY, (oid,))
        found = type_from_row(oid, rows[0] if rows else None)
        self._types[oid] = found
        return found

    def relation_meta(self, relid: int, schema: str, table: str) -> RelationMeta:
        cols = self.query(
            "SELECT a.attname, a.attnotnull, t.typname, pg_get_expr(d.adbin, d.adrelid), "
            "col_description(a.attrelid, a.attnum) "
            "FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
            "LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
            "WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped",
            (relid,),
        )
        pk = self.query(
            "SELECT a.attname FROM pg_index i "
            "CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
            "WHERE i.indrelid = %s AND i.indisprimary ORDER BY k.ord",
            (relid,),
        )
        source_types: dict[str, str] = {}
        comments: dict[str, str] = {}
        not_null: set[str] = set()
        for name, notnull, typname, default, comment in cols:
            if notnull:
                not_null.add(name)
            source_types[name] = reported_type_name(typname, default)
            if comment:
                comments[name] = comment
        return RelationMeta(tuple(r[0] for r in pk), frozenset(not_null), source_types, comments)

    # -- setup checks --
    def check_wal_level(self) -> None:
        level = self.scalar("SHOW wal_level")
        if level != "logical":
            raise WalLevelError(
                f"the source's wal_level is {level!r}, logical replication needs 'logical': set "
                "wal_level = logical in postgresql.conf (ALTER SYSTEM SET wal_level = logical) and restart PostgreSQL"
            )

    def check_privilege(self) -> None:
        row = self.query(
            "SELECT current_user, rolsuper, rolreplication FROM pg_roles WHERE rolname = current_user"
        )
        if row and not (row[0][1] or row[0][2]):
            user = row[0][0]
            raise ReplicationPrivilegeError(
                f"role {user!r} may not read replication slots: it needs the REPLICATION attribute "
                f"(ALTER ROLE {quote_ident(user)} REPLICATION) and a 'replication'/'all' line in pg_hba.conf"
            )

    def slot(self, name: str) -> dict[str, Any] | None:
        rows = self.query(
            "SELECT plugin, slot_type, database, active, active_pid, confirmed_flush_lsn::text, restart_lsn::text "
            "FROM pg_replication_slots WHERE slot_name = %s",
            (name,),
        )
        if not rows:
            return None
        plugin, slot_type, database, active, pid, confirmed, restart = rows[0]
        return {
            "plugin": plugin,
            "type": slot_type,
            "database": database,
            "active": active,
            "active_pid": pid,
            "confirmed_flush": _lsn_text(confirmed),
            "restart": _lsn_text(restart),
        }

    def check_slot(self, name: str, info: Mapping[str, Any]) -> None:
        if info["type"] != "logical" or info["plugin"] != "pgoutput":
            raise SlotNotFoundError(
                f"replication slot {name!r} is a {info['type']} slot of plugin {info['plugin']!r}, not a "
                "logical pgoutput slot: use another --slot name"
            )
        if info["database"] != self.database:
            raise SlotNotFoundError(
                f"replication slot {name!r} belongs to database {info['database']!r}, not {self.database!r}"
            )
        if info["active_pid"] is not None:
            raise SlotInUseError(
                f"replication slot {name!r} is in use by another process (active_pid {info['active_pid']}): "
                "one slot feeds one reader; stop it, or use another --slot"
            )

    def publication(self, name: str) -> bool:
        return bool(self.query("SELECT 1 FROM pg_publication WHERE pubname = %s", (name,)))

    def published_tables(self, name: str) -> list[tuple[str, str]]:
        return [
            (r[0], r[1])
            for r in self.query(
                "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s ORDER BY 1, 2",
                (name,),
            )
        ]

    def ensure_publication(self, name: str, tables: Sequence[str]) -> list[str]:
        """Create the publication for ``tables``, or add the missing ones; returns what was done."""
        wanted = [_qualified(t) for t in tables]
        missing_tables = [
            f"{s}.{t}"
            for s, t in wanted
            if self.scalar("SELECT to_regclass(%s)", (f"{quote_ident(s)}.{quote_ident(t)}",)) is None
        ]
        if missing_tables:
            raise PublicationNotFoundError(
                f"cannot publish tables that do not exist: {', '.join(missing_tables)}"
            )
        idents = {(s, t): f"{quote_ident(s)}.{quote_ident(t)}" for s, t in wanted}
        # a partitioned table publishes its changes as its own (one relation, as `connectors apply`
        # makes Debezium's publication): publish_via_partition_root
        partitioned = [
            k
            for k, ident in idents.items()
            if self.scalar("SELECT relkind FROM pg_class WHERE oid = %s::regclass", (ident,)) == "p"
        ]
        via_root = " WITH (publish_via_partition_root = true)" if partitioned else ""
        if not self.publication(name):
            if not wanted:
                raise PublicationNotFoundError(
                    f"publication {name!r} does not exist: give --tables schema.t1,schema.t2 with --create"
                )
            try:
                self.query(
                    f"CREATE PUBLICATION {quote_ident(name)} FOR TABLE {', '.join(idents.values())}{via_root}"
                )
            except psycopg2.errors.DuplicateObject:
                pass  # created by a concurrent --create: add what is missing below
            else:
                return [
                    f"created publication {name}{via_root} for {', '.join(f'{s}.{t}' for s, t in wanted)}"
                ]
        done: list[str] = []
        if partitioned and not self.scalar(
            "SELECT pubviaroot FROM pg_publication WHERE pubname = %s", (name,)
        ):
            self.query(f"ALTER PUBLICATION {quote_ident(name)} SET (publish_via_partition_root = true)")
            done.append(f"turned publish_via_partition_root on in publication {name}")
        have = set(self.published_tables(name))
        add = [(s, t) for s, t in wanted if (s, t) not in have]
        if add:
            self.query(f"ALTER PUBLICATION {quote_ident(name)} ADD TABLE {', '.join(idents[k] for k in add)}")
            done.append(f"added {', '.join(f'{s}.{t}' for s, t in add)} to publication {name}")
        return done or [f"publication {name} exists"]

    def check_identities(self, publication: str) -> None:
        rows = self.query(
            "SELECT pt.schemaname, pt.tablename, c.relreplident, "
            "EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary), "
            "EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident) "
            "FROM pg_publication_tables pt "
            "JOIN pg_namespace n ON n.nspname = pt.schemaname "
            "JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename "
            "WHERE pt.pubname = %s ORDER BY 1, 2",
            (publication,),
        )
        bad = []
        for schema, table, ident, has_pk, has_ident_index in rows:
            q = f"{schema}.{table}"
            if ident == "n":
                bad.append(f"{q} has REPLICA IDENTITY NOTHING (ALTER TABLE {q} REPLICA IDENTITY DEFAULT)")
            elif ident == "i" and has_ident_index:
                continue
            elif not has_pk:
                bad.append(
                    f"{q} has no primary key and no replica identity index "
                    f"(ALTER TABLE {q} ADD PRIMARY KEY (...), or REPLICA IDENTITY USING INDEX <unique index>)"
                )
        if bad:
            raise TableIdentityError(
                "streamer needs a key for every published table to apply updates and deletes: "
                + "; ".join(bad)
            )
