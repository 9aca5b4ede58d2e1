"""streamer's own tables in the target database, and their migrations.

* ``_streamer_offsets``: per consumer group and topic-partition, the next offset to read. Written
  in the same transaction as the rows it covers, so it is exact even when the Kafka commit that
  follows is lost; on assignment the consumer starts from it when it is ahead of Kafka's. It
  only moves forward (except by ``streamer replay``), and carries the identity of the topic it
  came from (``topic_id``, ``fingerprint`` of the record at ``next_offset - 1``), checked on
  every assignment.
* ``_streamer_tables``: per target table, the newest source position applied and the position
  of the latest truncate (changes older than that are not applied again).
* ``_streamer_loads`` and ``_streamer_load_chunks``: the loader's progress per table and chunk
  (``streamer load --resume``), and which tables are being loaded right now.
* ``_streamer_hold_generation`` and ``_streamer_members``: the load hold barrier (see
  :mod:`streamer.apply.holds`): a counter the loader raises when it marks tables ``loading``, and per
  live consumer process the generation it has acknowledged and its last heartbeat.
* ``_streamer_incomplete``: per target table and key, a row the target lacks because its change
  event left values out (unchanged TOAST) and the source could not be read for them (see
  :mod:`streamer.apply.fetch`); removed when a later change writes the key whole.

The tables are created and upgraded by the Alembic migrations in ``streamer/apply/migrations``
(``streamer db upgrade``; every command that writes to a target runs it first). Alembic's own
version table is ``_streamer_alembic_version`` so it never meets a user's ``alembic_version``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from streamer.apply.dialects import dialect_for
from streamer.core.checkpoint import OffsetIdentity

VERSION_TABLE = "_streamer_alembic_version"
#: the newest migration's revision (``tests/unit/test_state_head.py`` checks it against the scripts):
#: a target already there is not upgraded, and the command does not import alembic at all
HEAD_REVISION = "0005"
_meta = sa.MetaData()
offsets_table = sa.Table(
    "_streamer_offsets",
    _meta,
    sa.Column("consumer_group", sa.String(255), primary_key=True),
    sa.Column("topic", sa.String(255), primary_key=True),
    sa.Column("partition_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("next_offset", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),
    sa.Column("topic_id", sa.String(64)),  # the broker's topic id, when it has one
    sa.Column("fingerprint", sa.String(64)),  # identity of the record at next_offset - 1
)
tables_table = sa.Table(
    "_streamer_tables",
    _meta,
    sa.Column("table_name", sa.String(512), primary_key=True),
    sa.Column("last_version", sa.String(40)),
    sa.Column("truncated_version", sa.String(40)),
    sa.Column("updated_at", sa.DateTime, nullable=False),
)

loads_table = sa.Table(
    "_streamer_loads",
    _meta,
    sa.Column("table_name", sa.String(512), primary_key=True),
    sa.Column("source_table", sa.String(512), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("floor_version", sa.String(40), nullable=False),
    sa.Column("snapshot_version", sa.String(40), nullable=False),
    sa.Column("rows_loaded", sa.BigInteger, nullable=False),
    sa.Column("started_at", sa.DateTime, nullable=False),
    sa.Column("finished_at", sa.DateTime),
)
load_chunks_table = sa.Table(
    "_streamer_load_chunks",
    _meta,
    sa.Column("table_name", sa.String(512), primary_key=True),
    sa.Column("chunk_no", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("lo_key", sa.Text),
    sa.Column("hi_key", sa.Text),
    sa.Column("done", sa.Boolean, nullable=False),
    sa.Column("rows_loaded", sa.BigInteger),
)


hold_generation_table = sa.Table(
    "_streamer_hold_generation",
    _meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("generation", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),
)
members_table = sa.Table(
    "_streamer_members",
    _meta,
    sa.Column("member_id", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("consumer_group", sa.String(255), nullable=False),
    sa.Column("process", sa.String(255), nullable=False),
    sa.Column("acked_generation", sa.BigInteger, nullable=False),
    sa.Column("heartbeat_at", sa.DateTime, nullable=False),
)


incomplete_table = sa.Table(
    "_streamer_incomplete",
    _meta,
    sa.Column("table_name", sa.String(512), primary_key=True),
    sa.Column("key_hash", sa.String(40), primary_key=True),  # sha1 of key_json
    sa.Column("key_json", sa.Text, nullable=False),
    sa.Column("source_table", sa.String(512), nullable=False),
    sa.Column("version", sa.String(40), nullable=False),
    sa.Column("columns", sa.Text, nullable=False),  # the values the event did not carry
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("recorded_at", sa.DateTime, nullable=False),
)


def _alembic_config() -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    return cfg


def head_revision() -> str:
    """The newest revision among the migration scripts."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        return ctx.get_current_revision()


def upgrade(engine: Engine) -> str:
    """Create or upgrade streamer's tables to the newest revision; safe to run from many processes."""
    if _stored_revision(engine) == HEAD_REVISION:
        return HEAD_REVISION
    from alembic import command

    cfg = _alembic_config()
    with engine.begin() as conn:
        dialect = dialect_for(conn.dialect.name)
        dialect.lock_migrations(conn)  # serialize concurrent upgrades (several consumers starting at once)
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
        dialect.unlock_migrations(conn)
    return head_revision()


def _stored_revision(engine: Engine) -> str | None:
    """The target's recorded revision, or None where the version table is missing or unreadable."""
    version = sa.table(VERSION_TABLE, sa.column("version_num"))
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(version.c.version_num)).scalars().all()
    except sa.exc.DBAPIError:
        return None
    return rows[0] if len(rows) == 1 else None


def _upsert(
    conn: Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]], update: Iterable[str]
) -> None:
    if not rows:
        return
    key = [c.name for c in table.primary_key.columns]
    conn.execute(dialect_for(conn.dialect.name).upsert(table, key, list(update)), list(rows))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


@dataclasses.dataclass(frozen=True)
class StoredOffset:
    """One ``_streamer_offsets`` row: the next offset and its identity."""

    next_offset: int
    identity: OffsetIdentity = OffsetIdentity()


def save_offsets(
    conn: Connection,
    group: str,
    positions: Mapping[tuple[str, int], int],
    identities: Mapping[tuple[str, int], OffsetIdentity] | None = None,
    *,
    force: bool = False,
) -> None:
    """Record the next offsets of a group's partitions (inside the caller's transaction).

    A stored offset never moves backwards: a row already at a larger offset is left as it is
    (a late writer cannot undo a newer owner's progress). ``force=True`` (``streamer replay``)
    writes the offsets as given. The identity written with each offset is the one in
    ``identities``, or none (NULL) when it has no entry.
    """
    now = _now()
    idents = identities or {}
    rows = [
        {
            "consumer_group": group,
            "topic": t,
            "partition_id": p,
            "next_offset": o,
            "updated_at": now,
            "topic_id": idents.get((t, p), _NO_IDENTITY).topic_id,
            "fingerprint": idents.get((t, p), _NO_IDENTITY).fingerprint,
        }
        for (t, p), o in sorted(positions.items())
    ]
    cols = ["topic_id", "fingerprint", "updated_at", "next_offset"]  # next_offset last (MySQL order)
    if force:
        _upsert(conn, offsets_table, rows, cols)
        return
    if not rows:
        return
    t = offsets_table
    key = [c.name for c in t.primary_key.columns]
    stmt = dialect_for(conn.dialect.name).upsert(
        t, key, cols, guard=lambda new: t.c.next_offset <= new.next_offset
    )
    conn.execute(stmt, rows)


_NO_IDENTITY = OffsetIdentity()


def lock_offsets(
    conn: Connection, group: str, first: Mapping[tuple[str, int], int]
) -> dict[tuple[str, int], int]:
    """The stored next offsets of the partitions of ``first``, their rows locked until the transaction ends.

    A partition without a stored row gets one first, holding its batch's first offset (insert if
    absent): so a batch is fenced even when it is the first one of its partition. Two owners whose
    first batches overlap meet on that row: the second waits on the first one's insert and then
    reads its committed offset (PostgreSQL and MySQL/MariaDB take the wait on the primary key;
    SQLite has one writer at a time, and a writer that meets another's open write transaction
    gets "database is locked", a transient error whose retry reads again).

    PostgreSQL and MySQL/MariaDB lock with ``SELECT .. FOR UPDATE`` (rows in key order, so two
    writers cannot deadlock on them); on SQLite the read inside the write transaction is enough.
    """
    wanted = sorted(first)
    if not wanted:
        return {}
    t = offsets_table
    now = _now()
    placeholders = [
        {
            "consumer_group": group,
            "topic": tp,
            "partition_id": p,
            "next_offset": first[(tp, p)],
            "updated_at": now,
        }
        for tp, p in wanted
    ]
    dialect = dialect_for(conn.dialect.name)
    conn.execute(dialect.insert_ignore(t), placeholders)
    q = (
        sa.select(t.c.topic, t.c.partition_id, t.c.next_offset)
        .where(t.c.consumer_group == group, t.c.topic.in_(sorted({tp for tp, _ in wanted})))
        .order_by(t.c.topic, t.c.partition_id)
    )
    if dialect.locks_rows:
        q = q.with_for_update()
    found = {(r.topic, r.partition_id): int(r.next_offset) for r in conn.execute(q)}
    return {tp: found[tp] for tp in wanted if tp in found}


def load_offset_rows(
    conn: Connection, group: str, topics: Iterable[str] | None = None
) -> dict[tuple[str, int], StoredOffset]:
    """The recorded next offsets of a group with their identities, optionally only for some topics."""
    t = offsets_table
    q = sa.select(t.c.topic, t.c.partition_id, t.c.next_offset, t.c.topic_id, t.c.fingerprint).where(
        t.c.consumer_group == group
    )
    if topics is not None:
        q = q.where(t.c.topic.in_(list(topics)))
    return {
        (r.topic, r.partition_id): StoredOffset(int(r.next_offset), OffsetIdentity(r.topic_id, r.fingerprint))
        for r in conn.execute(q)
    }


def forget_offset(conn: Connection, group: str, tp: tuple[str, int], seen: int) -> bool:
    """Delete a stored offset found to belong to another incarnation of its topic, only when it
    still holds ``seen`` (a newer owner's write stays). True when it was deleted."""
    t = offsets_table
    res = conn.execute(
        sa.delete(t).where(
            t.c.consumer_group == group,
            t.c.topic == tp[0],
            t.c.partition_id == tp[1],
            t.c.next_offset == seen,
        )
    )
    return bool(res.rowcount)


def load_offsets(
    conn: Connection, group: str, topics: Iterable[str] | None = None
) -> dict[tuple[str, int], int]:
    """The recorded next offsets of a group, optionally only for some topics."""
    q = sa.select(offsets_table.c.topic, offsets_table.c.partition_id, offsets_table.c.next_offset).where(
        offsets_table.c.consumer_group == group
    )
    if topics is not None:
        q = q.where(offsets_table.c.topic.in_(list(topics)))
    return {(r.topic, r.partition_id): r.next_offset for r in conn.execute(q)}


def delete_offsets(conn: Connection, group: str, partitions: Iterable[tuple[str, int]]) -> None:
    for topic, partition in partitions:
        conn.execute(
            sa.delete(offsets_table).where(
                offsets_table.c.consumer_group == group,
                offsets_table.c.topic == topic,
                offsets_table.c.partition_id == partition,
            )
        )


def truncate_versions(conn: Connection, tables: Iterable[str]) -> dict[str, str]:
    names = list(tables)
    if not names:
        return {}
    q = sa.select(tables_table.c.table_name, tables_table.c.truncated_version).where(
        tables_table.c.table_name.in_(names), tables_table.c.truncated_version.is_not(None)
    )
    return {r.table_name: r.truncated_version for r in conn.execute(q)}


def record_tables(conn: Connection, last_versions: Mapping[str, str], truncates: Mapping[str, str]) -> None:
    """Remember per table the newest applied position and the newest truncate."""
    now = _now()
    rows = []
    for name, version in sorted(last_versions.items()):
        rows.append({"table_name": name, "last_version": version, "updated_at": now})  # type: dict[str, Any]
    if rows:
        # last_version only moves forward: read, compare, write (rows are few: one per table)
        existing = {
            r.table_name: (r.last_version, r.truncated_version)
            for r in conn.execute(
                sa.select(
                    tables_table.c.table_name, tables_table.c.last_version, tables_table.c.truncated_version
                ).where(tables_table.c.table_name.in_(list(last_versions)))
            )
        }
        for row in rows:
            name = str(row["table_name"])
            old_last, old_trunc = existing.get(name, (None, None))
            if old_last is not None and old_last > row["last_version"]:
                row["last_version"] = old_last
            new_trunc = truncates.get(name)
            row["truncated_version"] = max(filter(None, (old_trunc, new_trunc)), default=None)
        _upsert(conn, tables_table, rows, ["last_version", "truncated_version", "updated_at"])


def table_positions(conn: Connection) -> dict[str, str | None]:
    """Per target table, the newest source position applied (for status views)."""
    return {
        r.table_name: r.last_version
        for r in conn.execute(sa.select(tables_table.c.table_name, tables_table.c.last_version))
    }


def record_incomplete(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Record keys left incomplete (``_streamer_incomplete`` rows); a key recorded again is replaced."""
    _upsert(
        conn,
        incomplete_table,
        rows,
        ["key_json", "source_table", "version", "columns", "reason", "recorded_at"],
    )
