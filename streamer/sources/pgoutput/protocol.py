"""PostgreSQL's ``pgoutput`` logical replication protocol: message parsing and transaction assembly.

:class:`Parser` turns the payload of one ``XLogData`` message into a message object (protocol
versions 1 and 2: Begin, Commit, Origin, Relation, Type, Insert, Update, Delete, Truncate,
Message, Stream Start/Stop/Commit/Abort), following
https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html.
:class:`TransactionAssembler` feeds on those messages and hands back whole committed
transactions whose changes are :class:`~streamer.core.events.ChangeEvent`\\ s:

* a plain transaction is Begin, its changes, Commit;
* with protocol 2 and ``streaming 'on'`` a large in-progress transaction arrives in blocks
  (Stream Start .. Stream Stop, every change carrying the (sub)transaction id), possibly
  interleaved with other transactions; its changes are buffered per top-level transaction id
  and become a transaction at Stream Commit. Stream Abort drops the whole transaction, or only
  the changes of the aborted subtransaction (``ROLLBACK TO SAVEPOINT``).

Changes are kept as received (text values) and converted into events when their transaction
commits, when the commit LSN and time are known.

Bounded memory
--------------
With ``max_memory_bytes`` and ``spill_dir``, an open transaction (plain or streamed) whose
buffered changes exceed ``max_memory_bytes`` moves them to a :class:`~streamer.sources.pgoutput.spill.SpillFile`
and goes on buffering; the bound is on an *estimate* of the Python objects' size
(:data:`CHANGE_OVERHEAD` + :data:`CHANGE_FACTOR` x the message's bytes per change: a rough
estimate of a RawChange with its tuples and strings, not a measurement), so one open transaction holds at most about that much, whatever its size.
A transaction that spilled commits as a :class:`Transaction` with ``spilled`` true and no
``events``: :meth:`Transaction.event_chunks` converts its changes lazily, in WAL order (the
file's first, then the ones still in memory), a chunk at a time, and :meth:`Transaction.discard`
deletes the file (the caller calls it once the transaction is applied or skipped). An abort
(Stream Abort) deletes the file; an aborted subtransaction's changes already in the file are
left out when it is read back. :meth:`TransactionAssembler.reset` deletes the files of every open
transaction (the server sends them again). At construction the assembler deletes spill files
``replicate-<slot>-*`` that a crashed earlier run of the same slot left behind. Column values: ``'n'`` NULL -> ``None``,
``'u'`` unchanged TOASTed value -> :data:`~streamer.core.events.UNAVAILABLE`, ``'t'`` text ->
converted by :mod:`streamer.decode.pgtypes`; ``'b'`` (binary, only with the ``binary`` option, which
streamer does not request) is a :class:`ProtocolError`.

Events
------
``op`` c/u/d/t; ``key`` the key columns' values (see :class:`RelationInfo`); ``before`` the old
row for deletes (only the key columns under the default replica identity, the whole row under
``REPLICA IDENTITY FULL``) and for updates under ``FULL``; ``after`` the new row;
``position=SourcePosition(version=pg_version(lsn), lsn=lsn, commit_lsn=<commit LSN>)`` where
``lsn`` is the change's WAL position (what Debezium reports as ``source.lsn``); ``txid`` the
transaction id; ``source_ts`` the commit time; ``origin=WalOrigin(slot,
lsn)``. An update that changes the key gives a delete of the old key followed by the
update of the new one (both at the change's LSN), as Debezium does.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from streamer.core.checkpoint import WalOrigin
from streamer.core.errors import StreamerError, TableIdentityError
from streamer.core.events import (
    UNAVAILABLE,
    ChangeEvent,
    ColumnType,
    Op,
    SourcePosition,
    TableId,
    format_lsn,
    pg_version,
)
from streamer.decode.pgtypes import Converter, PgValueError, TypeLookup, column_plan
from streamer.sources.pgoutput.spill import SpillFile, remove_stale

__all__ = [
    "Begin",
    "Commit",
    "Delete",
    "Insert",
    "LogicalMessage",
    "OriginMessage",
    "Parser",
    "ProtocolError",
    "Relation",
    "RelationColumn",
    "RelationInfo",
    "RelationMeta",
    "StreamAbort",
    "StreamCommit",
    "StreamStart",
    "StreamStop",
    "Transaction",
    "TransactionAssembler",
    "Truncate",
    "TypeMessage",
    "Update",
]


class ProtocolError(StreamerError):
    """A replication message does not follow the pgoutput protocol (or uses a feature we did not ask for)."""


class _Unchanged:
    """An unchanged TOASTed value ('u') in a tuple, before conversion."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNCHANGED_TOAST"

    def __reduce__(self) -> str:
        return "UNCHANGED"  # the module's singleton, also when read back from a spill file


UNCHANGED: Final = _Unchanged()
TupleValue = str | None | _Unchanged
TupleData = tuple[TupleValue, ...]

_PG_EPOCH: Final = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


def pg_timestamp(micros: int) -> dt.datetime:
    """A protocol timestamp (microseconds since 2000-01-01 UTC) as an aware datetime."""
    return _PG_EPOCH + dt.timedelta(microseconds=micros)


# --------------------------------------------------------------------------- messages
@dataclasses.dataclass(frozen=True, slots=True)
class Begin:
    final_lsn: int
    commit_ts: int  # microseconds since 2000-01-01 UTC
    xid: int


@dataclasses.dataclass(frozen=True, slots=True)
class Commit:
    flags: int
    commit_lsn: int
    end_lsn: int
    commit_ts: int


@dataclasses.dataclass(frozen=True, slots=True)
class OriginMessage:
    lsn: int
    name: str


@dataclasses.dataclass(frozen=True, slots=True)
class RelationColumn:
    flags: int  # 1: part of the replica identity (key)
    name: str
    type_oid: int
    typmod: int


@dataclasses.dataclass(frozen=True, slots=True)
class Relation:
    xid: int | None
    relid: int
    namespace: str
    name: str
    replica_identity: str  # d default, n nothing, f full, i index
    columns: tuple[RelationColumn, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class TypeMessage:
    xid: int | None
    oid: int
    namespace: str
    name: str


@dataclasses.dataclass(frozen=True, slots=True)
class Insert:
    xid: int | None
    relid: int
    new: TupleData


@dataclasses.dataclass(frozen=True, slots=True)
class Update:
    xid: int | None
    relid: int
    old_kind: str | None  # 'K' key columns, 'O' whole old row, None: not sent
    old: TupleData | None
    new: TupleData


@dataclasses.dataclass(frozen=True, slots=True)
class Delete:
    xid: int | None
    relid: int
    old_kind: str  # 'K' or 'O'
    old: TupleData


@dataclasses.dataclass(frozen=True, slots=True)
class Truncate:
    xid: int | None
    options: int  # 1 CASCADE, 2 RESTART IDENTITY
    relids: tuple[int, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class LogicalMessage:
    xid: int | None
    flags: int  # 1: transactional
    lsn: int
    prefix: str
    content: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class StreamStart:
    xid: int
    first_segment: bool


@dataclasses.dataclass(frozen=True, slots=True)
class StreamStop:
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class StreamCommit:
    xid: int
    flags: int
    commit_lsn: int
    end_lsn: int
    commit_ts: int


@dataclasses.dataclass(frozen=True, slots=True)
class StreamAbort:
    xid: int
    subxid: int


Message = (
    Begin
    | Commit
    | OriginMessage
    | Relation
    | TypeMessage
    | Insert
    | Update
    | Delete
    | Truncate
    | LogicalMessage
    | StreamStart
    | StreamStop
    | StreamCommit
    | StreamAbort
)

_I8: Final = struct.Struct(">b")
_U8: Final = struct.Struct(">B")
_I16: Final = struct.Struct(">h")
_I32: Final = struct.Struct(">i")
_U32: Final = struct.Struct(">I")
_I64: Final = struct.Struct(">q")
_U64: Final = struct.Struct(">Q")


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        v: int = _U8.unpack_from(self.data, self.pos)[0]
        self.pos += 1
        return v

    def char(self) -> str:
        return chr(self.byte())

    def int16(self) -> int:
        v: int = _I16.unpack_from(self.data, self.pos)[0]
        self.pos += 2
        return v

    def int32(self) -> int:
        v: int = _I32.unpack_from(self.data, self.pos)[0]
        self.pos += 4
        return v

    def uint32(self) -> int:
        v: int = _U32.unpack_from(self.data, self.pos)[0]
        self.pos += 4
        return v

    def int64(self) -> int:
        v: int = _I64.unpack_from(self.data, self.pos)[0]
        self.pos += 8
        return v

    def uint64(self) -> int:
        v: int = _U64.unpack_from(self.data, self.pos)[0]
        self.pos += 8
        return v

    def string(self) -> str:
        end = self.data.index(b"\x00", self.pos)
        v = self.data[self.pos : end].decode()
        self.pos = end + 1
        return v

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ProtocolError(f"message truncated: {n} bytes wanted at {self.pos} of {len(self.data)}")
        v = self.data[self.pos : self.pos + n]
        self.pos += n
        return v

    def tuple_data(self) -> TupleData:
        n = self.int16()
        out: list[TupleValue] = []
        data = self.data
        for _ in range(n):
            kind = data[self.pos]
            self.pos += 1
            if kind == 0x74:  # 't'
                size = self.int32()
                end = self.pos + size
                if end > len(data):
                    raise ProtocolError("tuple value runs past the end of the message")
                out.append(data[self.pos : end].decode())
                self.pos = end
            elif kind == 0x6E:  # 'n'
                out.append(None)
            elif kind == 0x75:  # 'u'
                out.append(UNCHANGED)
            elif kind == 0x62:  # 'b'
                raise ProtocolError("binary tuple value received, but streamer does not ask for binary mode")
            else:
                raise ProtocolError(f"unknown tuple value kind {chr(kind)!r}")
        return tuple(out)


class Parser:
    """Parses pgoutput messages; remembers whether it is inside a Stream Start/Stop block (v2)."""

    def __init__(self) -> None:
        self.in_stream = False

    def reset(self) -> None:
        self.in_stream = False

    def parse(self, data: bytes) -> Message:
        try:
            return self._parse(data)
        except ProtocolError:
            raise
        except (struct.error, IndexError, ValueError, UnicodeDecodeError) as exc:
            kind = chr(data[0]) if data else "?"
            raise ProtocolError(f"malformed {kind!r} message ({type(exc).__name__}: {exc})") from exc

    def _xid(self, r: _Reader) -> int | None:
        return r.uint32() if self.in_stream else None

    def _parse(self, data: bytes) -> Message:
        r = _Reader(data)
        kind = r.char()
        if kind == "B":
            return Begin(r.uint64(), r.int64(), r.uint32())
        if kind == "C":
            return Commit(r.byte(), r.uint64(), r.uint64(), r.int64())
        if kind == "I":
            xid = self._xid(r)
            relid = r.uint32()
            marker = r.char()
            if marker != "N":
                raise ProtocolError(f"Insert without new tuple (got {marker!r})")
            return Insert(xid, relid, r.tuple_data())
        if kind == "U":
            xid = self._xid(r)
            relid = r.uint32()
            marker = r.char()
            old_kind: str | None = None
            old: TupleData | None = None
            if marker in ("K", "O"):
                old_kind, old = marker, r.tuple_data()
                marker = r.char()
            if marker != "N":
                raise ProtocolError(f"Update without new tuple (got {marker!r})")
            return Update(xid, relid, old_kind, old, r.tuple_data())
        if kind == "D":
            xid = self._xid(r)
            relid = r.uint32()
            marker = r.char()
            if marker not in ("K", "O"):
                raise ProtocolError(f"Delete without old tuple (got {marker!r})")
            return Delete(xid, relid, marker, r.tuple_data())
        if kind == "R":
            xid = self._xid(r)
            relid = r.uint32()
            namespace = r.string()
            name = r.string()
            ident = r.char()
            count = r.int16()
            cols = tuple(RelationColumn(r.byte(), r.string(), r.uint32(), r.int32()) for _ in range(count))
            return Relation(xid, relid, namespace, name, ident, cols)
        if kind == "Y":
            xid = self._xid(r)
            return TypeMessage(xid, r.uint32(), r.string(), r.string())
        if kind == "T":
            xid = self._xid(r)
            count = r.int32()
            options = r.byte()
            return Truncate(xid, options, tuple(r.uint32() for _ in range(count)))
        if kind == "O":
            return OriginMessage(r.uint64(), r.string())
        if kind == "M":
            xid = self._xid(r)
            flags = r.byte()
            lsn = r.uint64()
            prefix = r.string()
            size = r.int32()
            return LogicalMessage(xid, flags, lsn, prefix, r.take(size))
        if kind == "S":
            self.in_stream = True
            return StreamStart(r.uint32(), r.byte() == 1)
        if kind == "E":
            self.in_stream = False
            return StreamStop()
        if kind == "c":
            return StreamCommit(r.uint32(), r.byte(), r.uint64(), r.uint64(), r.int64())
        if kind == "A":
            return StreamAbort(r.uint32(), r.uint32())
        raise ProtocolError(
            f"unknown pgoutput message {kind!r} (streamer asks for protocol 1 or 2; two-phase not supported)"
        )


# --------------------------------------------------------------------------- relations
@dataclasses.dataclass(frozen=True)
class RelationMeta:
    """What the catalog adds to a Relation message (queried once per relation)."""

    primary_key: tuple[str, ...] = ()  # in key order
    not_null: frozenset[str] = frozenset()
    source_types: Mapping[str, str] = dataclasses.field(default_factory=dict)  # pgjdbc's type names
    comments: Mapping[str, str] = dataclasses.field(default_factory=dict)


class RelationInfo:
    """A relation as the stream describes it, with its column types and converters.

    Key columns: the primary key when the old tuples of deletes carry it (replica identity
    default, or full), else the replica identity's columns (``USING INDEX``); ``key_error`` says
    why there is none (no primary key and no identity index).
    """

    def __init__(self, msg: Relation, database: str | None, meta: RelationMeta, lookup: TypeLookup) -> None:
        self.relid = msg.relid
        self.table = TableId(database, msg.namespace, msg.name)
        self.replica_identity = msg.replica_identity
        self.names: tuple[str, ...] = tuple(c.name for c in msg.columns)
        columns: dict[str, ColumnType] = {}
        convs: list[Converter | None] = []
        for c in msg.columns:
            plan = column_plan(
                c.name,
                c.type_oid,
                c.typmod,
                lookup,
                optional=c.name not in meta.not_null,
                source_type=meta.source_types.get(c.name),
                comment=meta.comments.get(c.name),
            )
            columns[c.name] = plan.column_type
            convs.append(plan.convert)
        self.columns: Mapping[str, ColumnType] = MappingProxyType(columns)
        self.converters: tuple[Converter | None, ...] = tuple(convs)
        identity = tuple(c.name for c in msg.columns if c.flags & 1)
        pk = tuple(k for k in meta.primary_key if k in columns)
        ident = msg.replica_identity
        if pk and (ident == "f" or set(pk) == set(identity)):
            key = pk  # default identity (the primary key), or full: old tuples carry the key
        elif ident == "i" and identity:
            key = identity  # REPLICA IDENTITY USING INDEX: what deletes carry
        else:
            key = ()
        self.key_error: str | None = None
        if not key:
            q = self.table.qualified
            if ident == "n":
                self.key_error = (
                    f"table {q} has REPLICA IDENTITY NOTHING: its updates and deletes carry no key "
                    f"(ALTER TABLE {q} REPLICA IDENTITY DEFAULT)"
                )
            elif pk:
                self.key_error = (
                    f"table {q}: its replica identity ({', '.join(identity) or 'none'}) is not its primary key "
                    f"({', '.join(pk)}); deletes would not carry the key (ALTER TABLE {q} REPLICA IDENTITY DEFAULT)"
                )
            else:
                self.key_error = (
                    f"table {q} has no primary key and no replica identity index: streamer needs a key to "
                    f"apply changes (ALTER TABLE {q} ADD PRIMARY KEY (...), or REPLICA IDENTITY USING INDEX "
                    "on a unique index of NOT NULL columns)"
                )
        self.key_columns = key
        self._key_index = tuple(self.names.index(k) for k in key)

    def convert(self, values: TupleData, lsn: int) -> dict[str, Any]:
        """A tuple's values by column name; raises :class:`PgValueError` naming table, column and LSN."""
        out: dict[str, Any] = {}
        name = ""
        raw: TupleValue = None
        try:
            for name, conv, raw in zip(self.names, self.converters, values, strict=True):
                if raw is None:
                    out[name] = None
                elif isinstance(raw, str):
                    out[name] = raw if conv is None else conv(raw)
                else:
                    out[name] = UNAVAILABLE
        except PgValueError as exc:
            raise PgValueError(f"{self.table.qualified}.{name} at LSN {format_lsn(lsn)}: {exc}", lsn) from exc
        except (ValueError, TypeError, ArithmeticError, IndexError, OverflowError) as exc:
            if len(values) != len(self.names):
                raise ProtocolError(
                    f"{self.table.qualified}: tuple has {len(values)} values, relation has {len(self.names)} columns"
                ) from exc
            raise PgValueError(
                f"{self.table.qualified}.{name} at LSN {format_lsn(lsn)}: cannot convert {str(raw)[:200]!r} "
                f"({type(exc).__name__}: {exc})",
                lsn,
            ) from exc
        return out

    def key_of(self, values: Mapping[str, Any]) -> dict[str, Any]:
        return {k: values.get(k) for k in self.key_columns}


# --------------------------------------------------------------------------- transactions
@dataclasses.dataclass(slots=True)
class RawChange:
    """A change as received: converted into an event when its transaction commits."""

    op: Op
    relation: RelationInfo | None  # None for truncate (relations in ``truncated``)
    lsn: int
    subxid: int | None
    old: TupleData | None = None
    new: TupleData | None = None
    truncated: tuple[RelationInfo, ...] = ()


# estimated in-memory bytes of one buffered change: the RawChange, its tuples and strings
CHANGE_OVERHEAD: Final = 200
CHANGE_FACTOR: Final = 3
SPILL_BATCH: Final = 10_000  # changes per pickled record batch in a spill file


@dataclasses.dataclass
class Transaction:
    """A committed transaction: its changes as events, in WAL order.

    A transaction that spilled (``spilled``) has no ``events`` nor ``failed``: read them with
    :meth:`event_chunks`, then :meth:`discard` it.
    """

    xid: int
    commit_lsn: int
    end_lsn: int
    commit_ts: dt.datetime
    events: list[ChangeEvent]
    size: int  # bytes of the messages that carried it
    streamed: bool = False
    failed: list[tuple[RawChange, Exception]] = dataclasses.field(default_factory=list)
    changes: Callable[[], Iterator[RawChange]] | None = None  # a spilled transaction's changes
    convert: Callable[[RawChange], list[ChangeEvent]] | None = None
    keep_failed: bool = False
    spill: SpillFile | None = None

    @property
    def spilled(self) -> bool:
        return self.changes is not None

    def event_chunks(self, max_events: int) -> Iterator[Transaction]:
        """A spilled transaction's events in WAL order, as transactions of about ``max_events``
        events each (same xid and positions; ``events`` and ``failed`` filled); the last one is
        always yielded, possibly empty."""
        if self.changes is None or self.convert is None:
            yield self
            return
        events: list[ChangeEvent] = []
        failed: list[tuple[RawChange, Exception]] = []
        for change in self.changes():
            try:
                events.extend(self.convert(change))
            except PgValueError as exc:
                if not self.keep_failed:
                    raise
                failed.append((change, exc))
            if len(events) + len(failed) >= max_events:
                yield self._chunk(events, failed)
                events, failed = [], []
        yield self._chunk(events, failed)

    def _chunk(self, events: list[ChangeEvent], failed: list[tuple[RawChange, Exception]]) -> Transaction:
        return dataclasses.replace(self, events=events, failed=failed, changes=None, convert=None, spill=None)

    def discard(self) -> None:
        """Delete the spill file (after the transaction is applied, or skipped); idempotent."""
        if self.spill is not None:
            self.spill.delete()


@dataclasses.dataclass
class _Open:
    xid: int
    changes: list[RawChange] = dataclasses.field(default_factory=list)
    size: int = 0
    final_lsn: int = 0
    commit_ts: int = 0
    memory: int = 0  # estimated bytes of ``changes``
    spill: SpillFile | None = None
    relations: list[RelationInfo] = dataclasses.field(default_factory=list)  # referenced by the spill
    aborted: set[int] = dataclasses.field(default_factory=set)  # subtransactions rolled back

    def discard(self) -> None:
        if self.spill is not None:
            self.spill.delete()
            self.spill = None


RelationMetaLookup = Callable[[int, str, str], RelationMeta]


class TransactionAssembler:
    """Builds committed :class:`Transaction` s from pgoutput messages.

    ``relation_meta(relid, schema, table)`` is asked once per Relation message for what the
    message does not carry (primary key, NOT NULL, type names); ``lookup`` resolves type OIDs.
    With ``keep_failed`` a value that cannot be converted puts the change in
    ``Transaction.failed`` (the error policy ``dlq``); otherwise it raises :class:`PgValueError`.
    With ``max_memory_bytes`` and ``spill_dir`` an open transaction spills beyond that bound (see
    the module's "Bounded memory"); stale spill files of this slot in ``spill_dir`` are deleted
    here, at start.
    """

    def __init__(
        self,
        *,
        database: str | None,
        slot: str,
        lookup: TypeLookup,
        relation_meta: RelationMetaLookup,
        keep_failed: bool = False,
        now: Callable[[], dt.datetime] | None = None,
        max_memory_bytes: int | None = None,
        spill_dir: Path | None = None,
    ) -> None:
        self.database = database
        self.slot = slot
        self.lookup = lookup
        self.relation_meta = relation_meta
        self.keep_failed = keep_failed
        self.parser = Parser()
        self.relations: dict[int, RelationInfo] = {}
        self.types: dict[int, TypeMessage] = {}
        self._now = now or (lambda: dt.datetime.now(dt.UTC))
        self._current: _Open | None = None
        self._streams: dict[int, _Open] = {}
        self._stream_xid: int | None = None
        self.max_memory_bytes = max_memory_bytes if spill_dir is not None else None
        self.spill_dir = spill_dir
        self.spill_prefix = f"replicate-{slot}"
        self.spills = 0  # transactions that spilled (for the stats)
        if spill_dir is not None:
            remove_stale(spill_dir, self.spill_prefix)

    # -- state --
    @property
    def in_transaction(self) -> bool:
        """True while a transaction (plain, or streamed and not yet committed/aborted) is open."""
        return self._current is not None or bool(self._streams)

    def reset(self) -> None:
        """Forget everything not committed (after a reconnect the server sends it again)."""
        self.parser.reset()
        self.relations.clear()
        for open_ in [self._current, *self._streams.values()]:
            if open_ is not None:
                open_.discard()
        self._current = None
        self._streams.clear()
        self._stream_xid = None

    # -- feeding --
    def feed(self, payload: bytes, lsn: int) -> Transaction | None:
        """One XLogData payload at WAL position ``lsn``; returns a transaction when one commits."""
        msg = self.parser.parse(payload)
        size = len(payload)
        if isinstance(msg, Insert | Update | Delete | Truncate):
            target = self._target(msg.xid, msg)
            target.size += size
            self._change(target, msg, lsn)
            if self.max_memory_bytes is not None:
                target.memory += CHANGE_OVERHEAD + CHANGE_FACTOR * size
                if target.memory > self.max_memory_bytes:
                    self._spill(target)
            return None
        if isinstance(msg, Begin):
            if self._current is not None:
                raise ProtocolError(f"Begin of xid {msg.xid} inside xid {self._current.xid}")
            self._current = _Open(msg.xid, size=size, final_lsn=msg.final_lsn, commit_ts=msg.commit_ts)
            return None
        if isinstance(msg, Commit):
            current = self._current
            if current is None:
                raise ProtocolError(f"Commit at {format_lsn(msg.commit_lsn)} without Begin")
            self._current = None
            return self._finish(current, msg.commit_lsn, msg.end_lsn, msg.commit_ts, size, streamed=False)
        if isinstance(msg, Relation):
            meta = self.relation_meta(msg.relid, msg.namespace, msg.name)
            self.relations[msg.relid] = RelationInfo(msg, self.database, meta, self.lookup)
            return None
        if isinstance(msg, StreamStart):
            self._stream_xid = msg.xid
            self._streams.setdefault(msg.xid, _Open(msg.xid)).size += size
            return None
        if isinstance(msg, StreamStop):
            self._stream_xid = None
            return None
        if isinstance(msg, StreamCommit):
            streamed = self._streams.pop(msg.xid, None)
            if streamed is None:  # a transaction streamed before we connected: nothing of it was kept
                raise ProtocolError(f"Stream Commit of xid {msg.xid} that was never streamed to us")
            return self._finish(streamed, msg.commit_lsn, msg.end_lsn, msg.commit_ts, size, streamed=True)
        if isinstance(msg, StreamAbort):
            if msg.subxid == msg.xid:
                dropped = self._streams.pop(msg.xid, None)
                if dropped is not None:
                    dropped.discard()
            else:
                open_ = self._streams.get(msg.xid)
                if open_ is not None:
                    open_.changes = [c for c in open_.changes if c.subxid != msg.subxid]
                    if open_.spill is not None:
                        open_.aborted.add(msg.subxid)  # left out when the file is read back
            return None
        if isinstance(msg, TypeMessage):
            self.types[msg.oid] = msg
            return None
        # Origin, logical decoding messages: nothing to apply
        if self._current is not None:
            self._current.size += size
        return None

    def _target(self, xid: int | None, msg: Message) -> _Open:
        if xid is not None:
            top = self._stream_xid
            if top is None:
                raise ProtocolError(f"{type(msg).__name__} with xid {xid} outside a stream block")
            open_ = self._streams.get(top)
            if open_ is None:
                open_ = self._streams[top] = _Open(top)
            return open_
        if self._current is None:
            raise ProtocolError(f"{type(msg).__name__} outside a transaction")
        return self._current

    def _relation(self, relid: int) -> RelationInfo:
        rel = self.relations.get(relid)
        if rel is None:
            raise ProtocolError(f"change for relation {relid} before its Relation message")
        return rel

    def _change(self, target: _Open, msg: Insert | Update | Delete | Truncate, lsn: int) -> None:
        if isinstance(msg, Insert):
            target.changes.append(RawChange(Op.CREATE, self._relation(msg.relid), lsn, msg.xid, new=msg.new))
        elif isinstance(msg, Update):
            target.changes.append(
                RawChange(Op.UPDATE, self._relation(msg.relid), lsn, msg.xid, old=msg.old, new=msg.new)
            )
        elif isinstance(msg, Delete):
            target.changes.append(RawChange(Op.DELETE, self._relation(msg.relid), lsn, msg.xid, old=msg.old))
        else:
            rels = tuple(self._relation(r) for r in msg.relids)
            target.changes.append(RawChange(Op.TRUNCATE, None, lsn, msg.xid, truncated=rels))

    # -- spilling --
    def _spill(self, open_: _Open) -> None:
        """Move the open transaction's buffered changes to its spill file."""
        assert self.spill_dir is not None
        if open_.spill is None:
            open_.spill = SpillFile(self.spill_dir, self.spill_prefix, open_.xid)
            self.spills += 1
        index = {id(rel): i for i, rel in enumerate(open_.relations)}

        def ref(rel: RelationInfo) -> int:
            i = index.get(id(rel))
            if i is None:
                i = index[id(rel)] = len(open_.relations)
                open_.relations.append(rel)
            return i

        changes = open_.changes
        for start in range(0, len(changes), SPILL_BATCH):  # pickled in slices: a small transient buffer
            open_.spill.append(
                [
                    (
                        c.op.value,
                        -1 if c.relation is None else ref(c.relation),
                        c.lsn,
                        c.subxid,
                        c.old,
                        c.new,
                        tuple(ref(r) for r in c.truncated),
                    )
                    for c in changes[start : start + SPILL_BATCH]
                ]
            )
        open_.changes = []
        open_.memory = 0

    @staticmethod
    def _spilled_changes(open_: _Open) -> Iterator[RawChange]:
        """The changes of a transaction that spilled, in WAL order: the file's, then memory's."""
        assert open_.spill is not None
        rels = open_.relations
        aborted = frozenset(open_.aborted)
        for op, rel, lsn, subxid, old, new, truncated in open_.spill:
            if subxid in aborted:
                continue
            yield RawChange(
                Op(op),
                None if rel < 0 else rels[rel],
                lsn,
                subxid,
                old,
                new,
                tuple(rels[r] for r in truncated),
            )
        yield from open_.changes

    # -- events --
    def _finish(
        self, open_: _Open, commit_lsn: int, end_lsn: int, commit_ts: int, size: int, *, streamed: bool
    ) -> Transaction:
        if open_.spill is not None:
            ts = pg_timestamp(commit_ts)
            event_ts = self._now()
            txid = str(open_.xid)
            return Transaction(
                xid=open_.xid,
                commit_lsn=commit_lsn,
                end_lsn=end_lsn,
                commit_ts=ts,
                events=[],
                size=open_.size + size,
                streamed=streamed,
                changes=lambda: self._spilled_changes(open_),
                convert=lambda change: self.events(change, commit_lsn, ts, event_ts, txid),
                keep_failed=self.keep_failed,
                spill=open_.spill,
            )
        txn = Transaction(
            xid=open_.xid,
            commit_lsn=commit_lsn,
            end_lsn=end_lsn,
            commit_ts=pg_timestamp(commit_ts),
            events=[],
            size=open_.size + size,
            streamed=streamed,
        )
        event_ts = self._now()
        txid = str(open_.xid)
        for change in open_.changes:
            try:
                txn.events.extend(self.events(change, commit_lsn, txn.commit_ts, event_ts, txid))
            except PgValueError as exc:
                if not self.keep_failed:
                    raise
                txn.failed.append((change, exc))
        return txn

    def events(
        self, change: RawChange, commit_lsn: int, source_ts: dt.datetime, event_ts: dt.datetime, txid: str
    ) -> list[ChangeEvent]:
        """The events of one change (two for an update of the key)."""
        lsn = change.lsn
        position = SourcePosition(version=pg_version(lsn), lsn=lsn, commit_lsn=commit_lsn)
        origin = WalOrigin(self.slot, lsn)

        def event(
            op: Op,
            rel: RelationInfo,
            key: Mapping[str, Any],
            before: Mapping[str, Any] | None,
            after: Mapping[str, Any] | None,
        ) -> ChangeEvent:
            return ChangeEvent(
                op=op,
                table=rel.table,
                key=key,
                before=before,
                after=after,
                columns=rel.columns,
                key_columns=rel.key_columns if op is not Op.TRUNCATE else (),
                position=position,
                txid=txid,
                source_ts=source_ts,
                event_ts=event_ts,
                origin=origin,
            )

        if change.op is Op.TRUNCATE:
            return [event(Op.TRUNCATE, rel, {}, None, None) for rel in change.truncated]
        rel = change.relation
        assert rel is not None
        if rel.key_error is not None:
            raise TableIdentityError(rel.key_error)
        if change.op is Op.CREATE:
            assert change.new is not None
            after = rel.convert(change.new, lsn)
            return [event(Op.CREATE, rel, rel.key_of(after), None, after)]
        if change.op is Op.DELETE:
            assert change.old is not None
            old = rel.convert(change.old, lsn)
            key = rel.key_of(old)
            old_row = old if any(v is not None for n, v in old.items() if n not in key) else key
            return [event(Op.DELETE, rel, key, old_row, None)]
        assert change.new is not None
        after = rel.convert(change.new, lsn)
        key = rel.key_of(after)
        before: dict[str, Any] | None = rel.convert(change.old, lsn) if change.old is not None else None
        if before is not None:
            old_key = rel.key_of(before)
            if old_key != key and any(v is not None for v in old_key.values()):
                full = any(v is not None for n, v in before.items() if n not in old_key)
                return [
                    event(Op.DELETE, rel, old_key, before if full else old_key, None),
                    event(Op.UPDATE, rel, key, None, after),
                ]
            if not any(v is not None for n, v in before.items() if n not in old_key):
                before = None  # a key-only old tuple says nothing about the old row
        return [event(Op.UPDATE, rel, key, before, after)]


def tuple_values(values: Sequence[TupleValue]) -> list[Any]:
    """Raw tuple values for a dead letter (text as sent, None, or the marker name)."""
    return [v if not isinstance(v, _Unchanged) else "__unchanged_toast__" for v in values]
