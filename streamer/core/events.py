"""The one normalized change event every source produces and the apply engine consumes.

Both paths (Debezium records read from Kafka, and PostgreSQL logical replication read
directly) turn their input into :class:`ChangeEvent`, so the sink never needs to know
where a change came from: an event carries no Kafka coordinates, only an
:class:`~streamer.core.checkpoint.Origin` (a Kafka record's or a WAL change's, see
:mod:`streamer.core.checkpoint`).

Positions
---------
``SourcePosition.version`` is a fixed-width string that orders the changes of one source
row by row: for PostgreSQL it is the WAL position (LSN) of the change, for MySQL/MariaDB
the binlog file number, position and row index.  Row locks make the LSN of successive
changes of one primary key strictly increasing, which is what the sink's version guard
relies on.  Being a string of fixed width, it compares the same in Python and in every
target database (``VARCHAR`` comparison), so the guard can run inside the upsert
statement itself.

Snapshot rows and the stream that follows them
----------------------------------------------
A row read by a Debezium snapshot (``op`` ``r``) carries the log position the snapshot started
at, S. That position does not order it against every change: a source transaction open when the
snapshot began wrote its changes *before* S (smaller LSNs) and commits after it, so the snapshot
does not see them, and Debezium streams them after the snapshot's rows. Ordered by LSN alone the
snapshot row would win and the update or delete would be refused for good (Debezium does not say
when such a transaction commits: ``source.sequence[0]`` is the commit of the *previous*
transaction). Debezium snapshots with an open transaction like that whenever it snapshots with a
slot that exists: after Kafka Connect was killed before it stored a finished snapshot's offsets,
with ``snapshot.mode=always``, and after a new slot's consistent point.

So the version of a snapshot row carries a mark (:func:`read_version`, ``pg:<S>:r``), and the
guard is :func:`supersedes`: a change from the stream replaces a snapshot row whatever their
positions (Debezium streams after its snapshot only transactions that commit after it, so a
streamed change that follows a snapshot row in the topic is the newer one), and a snapshot row
replaces what is older than S (a stream row that a lost slot left stale included). Replaying a
topic from before a snapshot can move a row back to an older streamed state for a moment; the
replay's own snapshot rows and later changes bring it forward again, so the drained target is the
same. The mark keeps the order of plain comparison among snapshot rows (``pg:<S>`` < ``pg:<S>:r``
< ``pg:<S+1>``) and fits the version column (40 characters).
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from streamer.core.checkpoint import KafkaOrigin, Origin

__all__ = [
    "DATE_INFINITY",
    "DATE_NEG_INFINITY",
    "TIMESTAMPTZ_INFINITY",
    "TIMESTAMPTZ_NEG_INFINITY",
    "TIMESTAMP_INFINITY",
    "TIMESTAMP_NEG_INFINITY",
    "TIME_24_00",
    "UNAVAILABLE",
    "ChangeEvent",
    "ColumnType",
    "Decoded",
    "EndOfDay",
    "InfiniteDate",
    "InfiniteDatetime",
    "Op",
    "OtherRecord",
    "RecordKind",
    "SourcePosition",
    "TableId",
    "format_lsn",
    "mysql_version",
    "parse_lsn",
    "is_read_version",
    "pg_version",
    "read_version",
    "supersedes",
]


class Op(enum.StrEnum):
    """Kind of change, with Debezium's one-letter codes as values."""

    CREATE = "c"
    UPDATE = "u"
    DELETE = "d"
    READ = "r"  # snapshot row
    TRUNCATE = "t"


class RecordKind(enum.StrEnum):
    """What a Kafka record turned out to be; only ``CHANGE`` carries a row change."""

    CHANGE = "change"
    TOMBSTONE = "tombstone"  # null value after a delete (log compaction marker)
    HEARTBEAT = "heartbeat"
    SCHEMA_CHANGE = "schema_change"
    TRANSACTION = "transaction"  # transaction metadata topic (BEGIN/END)
    MESSAGE = "message"  # PostgreSQL logical decoding message (pg_logical_emit_message, op "m")


class _Unavailable:
    """Marker for a column value the source did not send (unchanged TOASTed column).

    The sink leaves such columns as they are in the target; it never writes the marker.
    """

    _instance: _Unavailable | None = None

    def __new__(cls) -> _Unavailable:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNAVAILABLE"

    def __reduce__(self) -> str:
        return "UNAVAILABLE"


UNAVAILABLE: Final = _Unavailable()


@dataclass(frozen=True, slots=True)
class TableId:
    """Source table identity.

    PostgreSQL: ``database`` is the source database, ``schema`` the schema (``public``).
    MySQL/MariaDB: ``database`` is the MySQL database and ``schema`` is ``None``.
    """

    database: str | None
    schema: str | None
    table: str
    # computed once: every event's table is a dict or set key several times on its way to the target
    _hash: int = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.database, self.schema, self.table)))

    def __hash__(self) -> int:
        return self._hash

    def __reduce__(self) -> tuple[type[TableId], tuple[str | None, str | None, str]]:
        # string hashes differ between processes: an unpickled TableId computes its own
        return (TableId, (self.database, self.schema, self.table))

    @property
    def qualified(self) -> str:
        """``schema.table`` (PostgreSQL) or ``database.table`` (MySQL) for display and routing."""
        ns = self.schema if self.schema is not None else self.database
        return f"{ns}.{self.table}" if ns else self.table


@dataclass(frozen=True, slots=True)
class ColumnType:
    """A column's type as the record schema states it.

    ``base`` is the Connect/Avro base type (``int16``, ``int32``, ``int64``, ``float32``,
    ``float64``, ``boolean``, ``string``, ``bytes``, ``array``, ``map``, ``struct``);
    ``logical`` the semantic type name when there is one (``io.debezium.time.MicroTimestamp``,
    ``org.apache.kafka.connect.data.Decimal``, ...); ``params`` the schema parameters
    (``scale``, ``connect.decimal.precision``, ``__debezium.source.column.type``, ...).
    """

    base: str
    logical: str | None = None
    optional: bool = True
    params: Mapping[str, str] = field(default_factory=dict)
    items: ColumnType | None = None  # element type of an array

    @property
    def source_type(self) -> str | None:
        """Source column type, when the connector propagates it (``column.propagate.source.type``)."""
        return self.params.get("__debezium.source.column.type")


@dataclass(frozen=True, slots=True)
class SourcePosition:
    """Where a change sits in its source's log.

    ``version`` orders the changes of one row (see the module docstring). ``lsn`` is the
    PostgreSQL WAL position; ``binlog_file``/``binlog_pos``/``row``/``gtid`` the MySQL
    coordinates. ``snapshot`` is true for rows read by a snapshot.
    """

    version: str
    lsn: int | None = None
    commit_lsn: int | None = None
    binlog_file: str | None = None
    binlog_pos: int | None = None
    row: int | None = None
    gtid: str | None = None
    snapshot: bool = False


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """One row change, normalized.

    ``key`` holds the primary-key values (column name -> value, in key order). ``before``
    and ``after`` are ``None`` where the operation has none (no ``before`` for a create,
    no ``after`` for a delete); any value in them may be :data:`UNAVAILABLE`. ``columns``
    maps every column of the row to its type. For ``Op.TRUNCATE`` key/before/after are empty.
    """

    op: Op
    table: TableId
    key: Mapping[str, Any]
    before: Mapping[str, Any] | None
    after: Mapping[str, Any] | None
    columns: Mapping[str, ColumnType]
    key_columns: tuple[str, ...]
    position: SourcePosition
    txid: str | None
    source_ts: dt.datetime | None  # commit time at the source
    event_ts: dt.datetime | None  # when the connector produced the event
    origin: Origin  # where it was read from (see streamer.core.checkpoint)


@dataclass(frozen=True, slots=True)
class OtherRecord:
    """A record that is not a row change: tombstone, heartbeat, schema change, transaction marker."""

    kind: RecordKind
    origin: KafkaOrigin
    payload: Mapping[str, Any] | None = None


Decoded = ChangeEvent | OtherRecord


def pg_version(lsn: int) -> str:
    """Sortable version string of a PostgreSQL LSN."""
    return f"pg:{lsn:016x}"


READ_MARK: Final = ":r"


def read_version(version: str) -> str:
    """The version of a snapshot row read at ``version`` (see "Snapshot rows" above)."""
    return version + READ_MARK


def is_read_version(version: str) -> bool:
    """Whether ``version`` is a snapshot row's (:func:`read_version`)."""
    return version.endswith(READ_MARK)


def supersedes(stored: str | None, incoming: str) -> bool:
    """Whether a change at ``incoming`` replaces a row at ``stored``: the one version guard.

    A row without a version is replaced; a streamed change replaces a snapshot row whatever the
    positions; otherwise the higher version wins (the SQL form is ``streamer.apply.guard.newer_sql``).
    """
    if stored is None or stored < incoming:
        return True
    return is_read_version(stored) and not is_read_version(incoming)


def mysql_version(file_number: int, pos: int, row: int) -> str:
    """Sortable version string of a MySQL/MariaDB binlog coordinate."""
    return f"my:{file_number:08d}:{pos:016x}:{row:06d}"


def format_lsn(lsn: int) -> str:
    """PostgreSQL's textual LSN form, ``16/B374D848``."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    """Inverse of :func:`format_lsn`."""
    hi, _, lo = text.partition("/")
    return (int(hi, 16) << 32) | int(lo, 16)


# --- special temporal values --------------------------------------------------------------
#
# PostgreSQL has ``'infinity'``/``'-infinity'`` dates and timestamps and the time ``24:00:00``;
# Python's types have neither. The decoder gives them as the nearest Python value (``date.max``,
# ``datetime.min``, ``time.max``, ...) but of a marker subclass, so that
#
# * code that only knows ``datetime`` keeps working (they *are* datetimes, compare and sort as
#   their bound, and equal it: ``TIMESTAMP_INFINITY == datetime.max``), and
# * a writer that can do better (PostgreSQL) tests ``isinstance(v, Infinite...)`` or
#   ``isinstance(v, EndOfDay)`` and writes ``'infinity'``/``'-infinity'``/``'24:00:00'``.


class _Bound:
    """What the two infinite markers share: which end they stand for, and PostgreSQL's literal."""

    __slots__ = ()

    @property
    def positive(self) -> bool:
        assert isinstance(self, dt.date)
        return self.year == dt.MAXYEAR

    @property
    def pg_literal(self) -> str:
        return "infinity" if self.positive else "-infinity"


class InfiniteDate(_Bound, dt.date):
    """``date.max``/``date.min`` standing for PostgreSQL's date ``'infinity'``/``'-infinity'``."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "DATE_INFINITY" if self.positive else "DATE_NEG_INFINITY"


class InfiniteDatetime(_Bound, dt.datetime):
    """``datetime.max``/``datetime.min`` (naive, or UTC for timestamptz) standing for ``'infinity'``/``'-infinity'``."""

    __slots__ = ()

    def __repr__(self) -> str:
        name = "TIMESTAMP" if self.tzinfo is None else "TIMESTAMPTZ"
        return f"{name}_INFINITY" if self.positive else f"{name}_NEG_INFINITY"


class EndOfDay(dt.time):
    """``time.max`` (23:59:59.999999) standing for PostgreSQL's ``time '24:00:00'``."""

    __slots__ = ()

    pg_literal = "24:00:00"

    def __repr__(self) -> str:
        return "TIME_24_00"


DATE_INFINITY: Final = InfiniteDate(dt.MAXYEAR, 12, 31)
DATE_NEG_INFINITY: Final = InfiniteDate(dt.MINYEAR, 1, 1)
TIMESTAMP_INFINITY: Final = InfiniteDatetime(dt.MAXYEAR, 12, 31, 23, 59, 59, 999999)
TIMESTAMP_NEG_INFINITY: Final = InfiniteDatetime(dt.MINYEAR, 1, 1)
TIMESTAMPTZ_INFINITY: Final = InfiniteDatetime(dt.MAXYEAR, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC)
TIMESTAMPTZ_NEG_INFINITY: Final = InfiniteDatetime(dt.MINYEAR, 1, 1, tzinfo=dt.UTC)
TIME_24_00: Final = EndOfDay(23, 59, 59, 999999)
