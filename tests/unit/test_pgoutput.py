"""pgoutput parsing (bytes built per the protocol docs), transaction assembly, and text-to-value conversion.

Conversions are checked against literal values and, where Debezium has an encoding of the same
value, against what :mod:`streamer.decode.decoder` makes of Debezium's JSON: both paths must give identical
Python values and target types.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import struct
import uuid
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import pytest

from streamer.apply.schema import sql_type
from streamer.core.checkpoint import WalOrigin
from streamer.core.errors import TableIdentityError
from streamer.core.events import (
    DATE_INFINITY,
    DATE_NEG_INFINITY,
    TIME_24_00,
    TIMESTAMP_INFINITY,
    TIMESTAMP_NEG_INFINITY,
    TIMESTAMPTZ_INFINITY,
    TIMESTAMPTZ_NEG_INFINITY,
    UNAVAILABLE,
    ChangeEvent,
    ColumnType,
    Op,
    TableId,
    pg_version,
)
from streamer.decode.pgtypes import (
    PgType,
    PgValueError,
    builtin_type,
    column_plan,
    interval_micros,
    parse_array,
)
from streamer.sources.pgoutput.protocol import (
    UNCHANGED,
    Begin,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    OriginMessage,
    Parser,
    ProtocolError,
    Relation,
    RelationColumn,
    RelationMeta,
    StreamAbort,
    StreamCommit,
    StreamStart,
    StreamStop,
    TransactionAssembler,
    Truncate,
    TypeMessage,
    Update,
    pg_timestamp,
)
from tests.unit.decode_helpers import ID_COLUMN, TOPIC, Records, value_payload

# --------------------------------------------------------------------------- message builders


def _s(text: str) -> bytes:
    return text.encode() + b"\x00"


def _xid(xid: int | None) -> bytes:
    return b"" if xid is None else struct.pack(">I", xid)


def tup(*values: Any) -> bytes:
    out = struct.pack(">h", len(values))
    for v in values:
        if v is None:
            out += b"n"
        elif v is UNCHANGED:
            out += b"u"
        else:
            raw = v.encode()
            out += b"t" + struct.pack(">i", len(raw)) + raw
    return out


def begin(final_lsn: int, ts: int, xid: int) -> bytes:
    return b"B" + struct.pack(">QqI", final_lsn, ts, xid)


def commit(commit_lsn: int, end_lsn: int, ts: int, flags: int = 0) -> bytes:
    return b"C" + struct.pack(">BQQq", flags, commit_lsn, end_lsn, ts)


def relation(
    relid: int,
    ns: str,
    name: str,
    cols: list[tuple[int, str, int, int]],
    ident: str = "d",
    xid: int | None = None,
) -> bytes:
    out = b"R" + _xid(xid) + struct.pack(">I", relid) + _s(ns) + _s(name) + ident.encode()
    out += struct.pack(">h", len(cols))
    for flags, cname, oid, typmod in cols:
        out += struct.pack(">B", flags) + _s(cname) + struct.pack(">Ii", oid, typmod)
    return out


def insert(relid: int, *values: Any, xid: int | None = None) -> bytes:
    return b"I" + _xid(xid) + struct.pack(">I", relid) + b"N" + tup(*values)


def update(
    relid: int,
    new: tuple[Any, ...],
    old: tuple[Any, ...] | None = None,
    kind: str = "K",
    xid: int | None = None,
) -> bytes:
    out = b"U" + _xid(xid) + struct.pack(">I", relid)
    if old is not None:
        out += kind.encode() + tup(*old)
    return out + b"N" + tup(*new)


def delete(relid: int, old: tuple[Any, ...], kind: str = "K", xid: int | None = None) -> bytes:
    return b"D" + _xid(xid) + struct.pack(">I", relid) + kind.encode() + tup(*old)


def truncate(*relids: int, options: int = 0, xid: int | None = None) -> bytes:
    return (
        b"T"
        + _xid(xid)
        + struct.pack(">iB", len(relids), options)
        + b"".join(struct.pack(">I", r) for r in relids)
    )


def stream_start(xid: int, first: bool = True) -> bytes:
    return b"S" + struct.pack(">IB", xid, 1 if first else 0)


def stream_commit(xid: int, commit_lsn: int, end_lsn: int, ts: int) -> bytes:
    return b"c" + struct.pack(">IBQQq", xid, 0, commit_lsn, end_lsn, ts)


def stream_abort(xid: int, subxid: int) -> bytes:
    return b"A" + struct.pack(">II", xid, subxid)


# --------------------------------------------------------------------------- parser


def test_parse_every_message_kind() -> None:
    p = Parser()
    assert p.parse(begin(0x16B374D848, 770_000_000, 771)) == Begin(0x16B374D848, 770_000_000, 771)
    assert p.parse(commit(0x10, 0x20, 5, flags=0)) == Commit(0, 0x10, 0x20, 5)
    assert p.parse(b"O" + struct.pack(">Q", 0x99) + _s("node1")) == OriginMessage(0x99, "node1")
    rel = p.parse(relation(16384, "public", "items", [(1, "id", 23, -1), (0, "name", 1043, 104)], ident="f"))
    assert rel == Relation(
        None,
        16384,
        "public",
        "items",
        "f",
        (RelationColumn(1, "id", 23, -1), RelationColumn(0, "name", 1043, 104)),
    )
    assert p.parse(b"Y" + struct.pack(">I", 90001) + _s("s") + _s("mood")) == TypeMessage(
        None, 90001, "s", "mood"
    )
    assert p.parse(insert(16384, "1", None, UNCHANGED)) == Insert(None, 16384, ("1", None, UNCHANGED))
    assert p.parse(update(16384, ("2", "b"))) == Update(None, 16384, None, None, ("2", "b"))
    assert p.parse(update(16384, ("2", "b"), old=("1", None), kind="K")) == Update(
        None, 16384, "K", ("1", None), ("2", "b")
    )
    assert p.parse(update(16384, ("1", "b"), old=("1", "a"), kind="O")).old_kind == "O"  # type: ignore[union-attr]
    assert p.parse(delete(16384, ("1", None))) == Delete(None, 16384, "K", ("1", None))
    assert p.parse(truncate(1, 2, options=3)) == Truncate(None, 3, (1, 2))
    msg = b"M" + struct.pack(">BQ", 1, 0x55) + _s("app") + struct.pack(">i", 3) + b"abc"
    assert p.parse(msg) == LogicalMessage(None, 1, 0x55, "app", b"abc")
    # v2 stream blocks: inside, changes, relations, types, truncates and messages carry the xid first
    assert p.parse(stream_start(900, first=True)) == StreamStart(900, True)
    assert p.in_stream
    assert p.parse(insert(16384, "5", xid=901)) == Insert(901, 16384, ("5",))
    assert p.parse(relation(7, "s", "t", [(1, "id", 20, -1)], xid=900)).xid == 900  # type: ignore[union-attr]
    assert p.parse(truncate(7, xid=900)) == Truncate(900, 0, (7,))
    assert p.parse(b"E") == StreamStop()
    assert not p.in_stream
    assert p.parse(stream_commit(900, 0x100, 0x180, 42)) == StreamCommit(900, 0, 0x100, 0x180, 42)
    assert p.parse(stream_abort(900, 901)) == StreamAbort(900, 901)


def test_text_values_are_utf8() -> None:
    assert Parser().parse(insert(1, "grüße ✓")) == Insert(None, 1, ("grüße ✓",))


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"Z", "unknown pgoutput message"),
        (
            b"I" + struct.pack(">I", 1) + b"N" + struct.pack(">h", 1) + b"b" + struct.pack(">i", 1) + b"x",
            "binary",
        ),
        (
            b"I" + struct.pack(">I", 1) + b"N" + struct.pack(">h", 1) + b"t" + struct.pack(">i", 50) + b"x",
            "past the end",
        ),
        (b"I" + struct.pack(">I", 1) + b"X", "without new tuple"),
        (b"B" + b"\x00" * 5, "malformed"),
    ],
)
def test_protocol_errors(payload: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        Parser().parse(payload)


# --------------------------------------------------------------------------- assembly

TS = 770_000_000_123_456  # µs since 2000-01-01
RELID = 16400
ITEMS = [
    (1, "id", 20, -1),
    (0, "name", 1043, 104),
    (0, "big", 25, -1),
    (0, "price", 1700, (10 << 16 | 2) + 4),
]


def assembler(meta: Mapping[int, RelationMeta] | None = None, **kw: Any) -> TransactionAssembler:
    metas = (
        meta if meta is not None else {RELID: RelationMeta(("id",), frozenset({"id"}), {"id": "bigserial"})}
    )

    def lookup(oid: int) -> PgType:
        found = builtin_type(oid)
        if found is None:
            raise AssertionError(f"unexpected type {oid}")
        return found

    return TransactionAssembler(
        database="inventory",
        slot="slot1",
        lookup=lookup,
        relation_meta=lambda relid, _s, _t: metas.get(relid, RelationMeta()),
        now=lambda: dt.datetime(2030, 1, 1, tzinfo=dt.UTC),
        **kw,
    )


def feed_all(a: TransactionAssembler, messages: list[tuple[bytes, int]]) -> list[Any]:
    out = []
    for payload, lsn in messages:
        txn = a.feed(payload, lsn)
        if txn is not None:
            out.append(txn)
    return out


def test_plain_transaction_becomes_events() -> None:
    a = assembler()
    txns = feed_all(
        a,
        [
            (begin(0x300, TS, 771), 0x100),
            (relation(RELID, "public", "items", ITEMS), 0x100),
            (insert(RELID, "1", "one", "x" * 3000, "12.30"), 0x110),
            (update(RELID, ("1", "uno", UNCHANGED, "12.40")), 0x120),
            (delete(RELID, ("1", None, None, None)), 0x130),
            (commit(0x300, 0x328, TS), 0x328),
        ],
    )
    assert len(txns) == 1
    txn = txns[0]
    assert (txn.xid, txn.commit_lsn, txn.end_lsn) == (771, 0x300, 0x328)
    assert txn.commit_ts == dt.datetime(2000, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=TS)
    c, u, d = txn.events
    assert isinstance(c, ChangeEvent)
    assert c.op is Op.CREATE and c.table == TableId("inventory", "public", "items")
    assert c.key == {"id": 1} and c.key_columns == ("id",)
    assert c.after == {"id": 1, "name": "one", "big": "x" * 3000, "price": Decimal("12.30")}
    assert c.before is None
    assert (
        c.position.version == pg_version(0x110) and c.position.lsn == 0x110 and c.position.commit_lsn == 0x300
    )
    assert c.origin == WalOrigin("slot1", 0x110)
    assert (
        c.txid == "771"
        and c.source_ts == txn.commit_ts
        and c.event_ts == dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    )
    assert u.op is Op.UPDATE and u.after["big"] is UNAVAILABLE and u.before is None
    # under the default replica identity a delete carries the key only
    assert d.op is Op.DELETE and d.key == {"id": 1} and d.before == {"id": 1} and d.after is None
    assert set(c.columns) == {"id", "name", "big", "price"}
    assert c.columns["id"].params["__debezium.source.column.type"] == "BIGSERIAL"
    assert not c.columns["id"].optional and c.columns["name"].optional


def test_update_of_the_key_is_delete_then_update() -> None:
    a = assembler()
    (txn,) = feed_all(
        a,
        [
            (begin(0x300, TS, 5), 0x100),
            (relation(RELID, "public", "items", ITEMS), 0x100),
            (update(RELID, ("2", "n", UNCHANGED, "1.00"), old=("1", None, None, None), kind="K"), 0x110),
            (commit(0x300, 0x328, TS), 0x328),
        ],
    )
    d, u = txn.events
    assert d.op is Op.DELETE and d.key == {"id": 1} and d.position.lsn == 0x110
    assert u.op is Op.UPDATE and u.key == {"id": 2} and u.after["big"] is UNAVAILABLE


def test_replica_identity_full_gives_before_rows_and_pk_keys() -> None:
    a = assembler()
    (txn,) = feed_all(
        a,
        [
            (begin(0x300, TS, 5), 0x100),
            (relation(RELID, "public", "items", [(1, c[1], c[2], c[3]) for c in ITEMS], ident="f"), 0x100),
            (update(RELID, ("1", "b", "x", "2.00"), old=("1", "a", "x", "1.00"), kind="O"), 0x110),
            (delete(RELID, ("1", "b", "x", "2.00"), kind="O"), 0x120),
            (commit(0x300, 0x328, TS), 0x328),
        ],
    )
    u, d = txn.events
    assert u.key_columns == ("id",) and u.before == {
        "id": 1,
        "name": "a",
        "big": "x",
        "price": Decimal("1.00"),
    }
    assert d.before == {"id": 1, "name": "b", "big": "x", "price": Decimal("2.00")} and d.key == {"id": 1}


def test_key_order_follows_the_primary_key() -> None:
    meta = {RELID: RelationMeta(("b", "a"))}
    a = assembler(meta)
    (txn,) = feed_all(
        a,
        [
            (begin(1, TS, 5), 0x100),
            (relation(RELID, "s", "t", [(1, "a", 23, -1), (1, "b", 23, -1), (0, "v", 25, -1)]), 0x100),
            (insert(RELID, "1", "2", "v"), 0x110),
            (commit(1, 2, TS), 2),
        ],
    )
    assert txn.events[0].key_columns == ("b", "a") and list(txn.events[0].key) == ["b", "a"]


def test_replica_identity_index_is_the_key_without_primary_key() -> None:
    a = assembler({RELID: RelationMeta(())})
    (txn,) = feed_all(
        a,
        [
            (begin(1, TS, 5), 0x100),
            (relation(RELID, "s", "t", [(0, "a", 23, -1), (1, "code", 25, -1)], ident="i"), 0x100),
            (delete(RELID, (None, "X1")), 0x110),
            (commit(1, 2, TS), 2),
        ],
    )
    assert txn.events[0].key == {"code": "X1"}


def test_table_without_key_is_a_named_error() -> None:
    a = assembler({RELID: RelationMeta(())})
    a.feed(begin(1, TS, 5), 0x100)
    a.feed(relation(RELID, "s", "nokey", [(0, "a", 23, -1)]), 0x100)
    a.feed(insert(RELID, "1"), 0x110)
    with pytest.raises(TableIdentityError, match="s.nokey has no primary key"):
        a.feed(commit(1, 2, TS), 2)


def test_truncate_events_for_each_table() -> None:
    a = assembler({RELID: RelationMeta(("id",)), RELID + 1: RelationMeta(("id",))})
    (txn,) = feed_all(
        a,
        [
            (begin(1, TS, 5), 0x100),
            (relation(RELID, "s", "t1", [(1, "id", 23, -1)]), 0x100),
            (relation(RELID + 1, "s", "t2", [(1, "id", 23, -1)]), 0x100),
            (truncate(RELID, RELID + 1), 0x110),
            (commit(1, 2, TS), 2),
        ],
    )
    assert [(e.op, e.table.table, e.key, e.key_columns) for e in txn.events] == [
        (Op.TRUNCATE, "t1", {}, ()),
        (Op.TRUNCATE, "t2", {}, ()),
    ]
    assert all(e.position.lsn == 0x110 for e in txn.events)


def test_streamed_transaction_with_subtransaction_abort_and_interleaving() -> None:
    a = assembler()
    rel = relation(RELID, "public", "items", ITEMS, xid=900)
    txns = feed_all(
        a,
        [
            (stream_start(900), 0x100),
            (rel, 0x100),
            (insert(RELID, "1", "kept", "b", "1.00", xid=900), 0x110),
            (insert(RELID, "2", "rolled back", "b", "1.00", xid=901), 0x120),  # in savepoint 901
            (b"E", 0x120),
            # another transaction commits in between, plain
            (begin(0x200, TS, 950), 0x150),
            (insert(RELID, "10", "other", "b", "1.00"), 0x150),
            (commit(0x200, 0x210, TS), 0x210),
            (stream_start(900, first=False), 0x220),
            (insert(RELID, "3", "kept too", "b", "1.00", xid=902), 0x230),
            (b"E", 0x230),
            (stream_abort(900, 901), 0x240),  # ROLLBACK TO SAVEPOINT: only 901's changes go
            (stream_commit(900, 0x300, 0x340, TS), 0x340),
        ],
    )
    assert [t.xid for t in txns] == [950, 900]
    plain, streamed = txns
    assert not plain.streamed and [e.key["id"] for e in plain.events] == [10]
    assert streamed.streamed and (streamed.commit_lsn, streamed.end_lsn) == (0x300, 0x340)
    assert [e.key["id"] for e in streamed.events] == [1, 3]
    assert all(e.position.commit_lsn == 0x300 and e.txid == "900" for e in streamed.events)
    assert not a.in_transaction


def test_streamed_transaction_aborted_entirely() -> None:
    a = assembler()
    feed_all(
        a,
        [
            (stream_start(900), 0x100),
            (relation(RELID, "public", "items", ITEMS, xid=900), 0x100),
            (insert(RELID, "1", "x", "b", "1.00", xid=900), 0x110),
            (b"E", 0x110),
        ],
    )
    assert a.in_transaction
    assert a.feed(stream_abort(900, 900), 0x120) is None
    assert not a.in_transaction


def test_change_outside_a_transaction_is_a_protocol_error() -> None:
    a = assembler()
    a.feed(relation(RELID, "public", "items", ITEMS), 0x100)
    with pytest.raises(ProtocolError, match="outside a transaction"):
        a.feed(insert(RELID, "1", "x", "b", "1.00"), 0x110)


def test_conversion_failure_kept_for_dead_letters() -> None:
    a = assembler({RELID: RelationMeta(("id",))}, keep_failed=True)
    (txn,) = feed_all(
        a,
        [
            (begin(1, TS, 5), 0x100),
            (relation(RELID, "s", "t", [(1, "id", 23, -1), (0, "d", 1082, -1)]), 0x100),
            (insert(RELID, "1", "0044-03-15 BC"), 0x110),
            (insert(RELID, "2", "2024-01-01"), 0x120),
            (commit(1, 2, TS), 2),
        ],
    )
    assert [e.key["id"] for e in txn.events] == [2]
    ((change, exc),) = txn.failed
    assert change.lsn == 0x110 and isinstance(exc, PgValueError) and "s.t.d at LSN 0/110" in str(exc)
    strict = assembler({RELID: RelationMeta(("id",))})
    strict.feed(begin(1, TS, 5), 0x100)
    strict.feed(relation(RELID, "s", "t", [(1, "id", 23, -1), (0, "d", 1082, -1)]), 0x100)
    strict.feed(insert(RELID, "1", "0044-03-15 BC"), 0x110)
    with pytest.raises(PgValueError) as info:
        strict.feed(commit(1, 2, TS), 2)
    assert info.value.lsn == 0x110


def test_pg_timestamp() -> None:
    assert pg_timestamp(0) == dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


# --------------------------------------------------------------------------- values


def conv(oid: int, text: str, typmod: int = -1, lookup: Any = None) -> Any:
    plan = column_plan("c", oid, typmod, lookup or _lookup)
    return text if plan.convert is None else plan.convert(text)


ENUM = PgType(90001, "mood", kind="e", enum_labels=("sad", "ok", "happy"))
ENUM_ARRAY = PgType(90002, "_mood", category="A", elem=90001)
DOMAIN = PgType(90003, "positive_amount", kind="d", base=1700, base_typmod=(12 << 16 | 2) + 4)
COMPOSITE = PgType(90004, "pair", kind="c")


def _lookup(oid: int) -> PgType:
    found = builtin_type(oid) or {t.oid: t for t in (ENUM, ENUM_ARRAY, DOMAIN, COMPOSITE)}.get(oid)
    assert found is not None, oid
    return found


def num(p: int, s: int) -> int:
    return (p << 16 | s) + 4


@pytest.mark.parametrize(
    "oid, typmod, text, value",
    [
        (16, -1, "t", True),
        (16, -1, "f", False),
        (21, -1, "-32768", -32768),
        (23, -1, "2147483647", 2147483647),
        (20, -1, "-9223372036854775808", -(2**63)),
        (26, -1, "4294967295", 4294967295),
        (1700, num(12, 2), "12.30", Decimal("12.30")),
        (1700, num(12, 2), "-0.05", Decimal("-0.05")),
        (1700, num(5, 0), "12345", Decimal("12345")),
        (1700, -1, "1.500", Decimal("1.5")),
        (1700, -1, "100", Decimal("100")),
        (1700, -1, "0.000", Decimal("0")),
        (
            1700,
            -1,
            "123456789012345678901234567890.123456789",
            Decimal("123456789012345678901234567890.123456789"),
        ),
        (790, -1, "$1,234.56", Decimal("1234.56")),
        (790, -1, "-$1,234,567.89", Decimal("-1234567.89")),
        (790, -1, "($0.01)", Decimal("-0.01")),
        (790, -1, "€1.5", Decimal("1.50")),
        (700, -1, "1.1", 1.1),
        (700, -1, "3.4028235e+38", 3.4028235e38),
        (701, -1, "0.1", 0.1),
        (701, -1, "-1.7976931348623157e+308", -1.7976931348623157e308),
        (25, -1, "text with 'quotes' and \\backslash", "text with 'quotes' and \\backslash"),
        (1043, 104, "varchar", "varchar"),
        (1042, 9, "bpchar   ", "bpchar   "),
        (19, -1, "a_name", "a_name"),
        (17, -1, "\\x00ff10", b"\x00\xff\x10"),
        (17, -1, "\\x", b""),
        (17, -1, "a\\\\b\\000\\377", b"a\\b\x00\xff"),  # escape format
        (1082, -1, "2024-02-29", dt.date(2024, 2, 29)),
        (1082, -1, "0001-01-01", dt.date(1, 1, 1)),
        (1082, -1, "infinity", DATE_INFINITY),
        (1082, -1, "-infinity", DATE_NEG_INFINITY),
        (1083, -1, "03:04:05.123456", dt.time(3, 4, 5, 123456)),
        (1083, -1, "00:00:00", dt.time(0, 0)),
        (1083, -1, "24:00:00", TIME_24_00),
        (1266, -1, "10:00:00.5+05:30", dt.time(4, 30, 0, 500000, tzinfo=dt.UTC)),
        (1266, -1, "01:00:00-03", dt.time(4, 0, tzinfo=dt.UTC)),
        (1266, -1, "01:00:00+05:53:28", dt.time(19, 6, 32, tzinfo=dt.UTC)),
        (1266, -1, "24:00:00+02", dt.time(22, 0, tzinfo=dt.UTC)),
        (1114, -1, "2024-01-02 03:04:05.678901", dt.datetime(2024, 1, 2, 3, 4, 5, 678901)),
        (1114, -1, "0001-01-01 00:00:00", dt.datetime(1, 1, 1)),
        (1114, -1, "infinity", TIMESTAMP_INFINITY),
        (1114, -1, "-infinity", TIMESTAMP_NEG_INFINITY),
        (1184, -1, "2024-01-02 03:04:05.5+00", dt.datetime(2024, 1, 2, 3, 4, 5, 500000, tzinfo=dt.UTC)),
        (1184, -1, "2024-01-02 03:04:05+05:30", dt.datetime(2024, 1, 1, 21, 34, 5, tzinfo=dt.UTC)),
        (1184, -1, "infinity", TIMESTAMPTZ_INFINITY),
        (1184, -1, "-infinity", TIMESTAMPTZ_NEG_INFINITY),
        (1186, -1, "3 days 04:00:00", dt.timedelta(days=3, hours=4)),
        (1186, -1, "-00:00:01.5", dt.timedelta(seconds=-1.5)),
        (1186, -1, "1 mon", dt.timedelta(days=30.4375)),  # Debezium's 365.25/12-day month
        (2950, -1, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")),
        (114, -1, '{"b": 1, "a": [1, 2]}', '{"b": 1, "a": [1, 2]}'),
        (3802, -1, '{"a": [1, 2], "b": 1}', '{"a": [1, 2], "b": 1}'),
        (142, -1, "<a>1</a>", "<a>1</a>"),
        (1560, 1, "1", True),
        (1560, 5, "00101", "00101"),
        (1562, -1, "0011", "0011"),
        (869, -1, "192.168.0.1/24", "192.168.0.1/24"),
        (3904, -1, "[1,5)", "[1,5)"),
        (600, -1, "(1,2)", "(1,2)"),
        (90001, -1, "happy", "happy"),
        (90003, -1, "12.50", Decimal("12.50")),
        (90004, -1, '(1,"a b")', '(1,"a b")'),
    ],
)
def test_text_to_value(oid: int, typmod: int, text: str, value: Any) -> None:
    got = conv(oid, text, typmod)
    assert got == value
    assert type(got) is type(value)
    if isinstance(value, Decimal):
        assert got.as_tuple() == value.as_tuple()  # same digits and exponent, not only equal
    if isinstance(value, dt.time | dt.datetime):
        assert got.tzinfo == value.tzinfo


@pytest.mark.parametrize(
    "oid, text, check",
    [
        (1700, "NaN", lambda v: v.is_nan()),
        (1700, "Infinity", lambda v: v == Decimal("Infinity")),
        (1700, "-Infinity", lambda v: v == Decimal("-Infinity")),
        (700, "NaN", lambda v: v != v),
        (700, "Infinity", lambda v: v == float("inf")),
        (701, "-Infinity", lambda v: v == float("-inf")),
        (701, "NaN", lambda v: v != v),
    ],
)
def test_special_numbers(oid: int, text: str, check: Any) -> None:
    assert check(conv(oid, text))
    assert check(conv(oid, text, num(10, 2) if oid == 1700 else -1))


@pytest.mark.parametrize(
    "oid, text",
    [
        (1082, "0044-03-15 BC"),
        (1082, "10000-01-01"),
        (1114, "0044-03-15 00:00:00 BC"),
        (1114, "10000-01-01 00:00:00"),
        (1184, "9999-12-31 23:00:00-05"),
        (1184, "0044-03-15 00:00:00+00 BC"),
    ],
)
def test_values_python_cannot_hold_are_named_errors(oid: int, text: str) -> None:
    with pytest.raises(PgValueError, match="outside the years 1-9999"):
        conv(oid, text)


# every expected value computed by Debezium 3.1.1 itself: pgjdbc 42.6.1's PGInterval(text), then
# io.debezium.time.MicroDuration.durationMicros(..., MicroDuration.DAYS_PER_MONTH_AVG)
DEBEZIUM_INTERVALS = {
    "1 year 2 mons 3 days 04:05:06.789": 37091106789000,
    "-1 days +02:03:00": -79020000000,
    "-00:00:01.5": -1500000,
    "1 mon -1 days -00:00:00.000001": 2543399999999,
    "100:00:00": 360000000000,
    "00:00:00": 0,
    "3 days": 259200000000,
    "6 mons": 15778800000000,
    "-2 years -3 mons": -71004600000000,
    "00:00:00.000001": 1,
    "1 day 00:00:00.1": 86400100000,
    "7 mons 00:00:00.3": 18408600300000,
    "1 year 00:00:33.333333": 31557633333333,
    "-11 mons -29 days -23:59:59.999999": -31519799999999,
}


@pytest.mark.parametrize("text, micros", list(DEBEZIUM_INTERVALS.items()))
def test_interval_micros_as_debezium_computes_them(text: str, micros: int) -> None:
    assert interval_micros(text) == micros
    assert conv(1186, text) == dt.timedelta(microseconds=micros)


def test_array_literals() -> None:
    assert parse_array("{}") == []
    assert parse_array('{"a b","c\\"d",NULL,"NULL","","x\\\\y",plain}') == [
        "a b",
        'c"d',
        None,
        "NULL",
        "",
        "x\\y",
        "plain",
    ]
    assert parse_array("{{1,2},{3,NULL}}") == [["1", "2"], ["3", None]]
    assert parse_array("[0:1]={1,2}") == ["1", "2"]
    assert parse_array('{"(0,0),(1,1)";"(2,2),(3,3)"}', ";") == ["(0,0),(1,1)", "(2,2),(3,3)"]
    with pytest.raises(ValueError):
        parse_array("{1,2")


@pytest.mark.parametrize(
    "oid, text, value",
    [
        (1009, '{"a b",NULL,"",c}', ["a b", None, "", "c"]),
        (1007, "{{1,2},{3,4}}", [[1, 2], [3, 4]]),
        (1007, "[0:1]={1,2}", [1, 2]),
        (1000, "{t,f,NULL}", [True, False, None]),
        (1001, '{"\\\\x0102",NULL}', [b"\x01\x02", None]),
        (1231, "{1.50,-Infinity}", [Decimal("1.5"), Decimal("-Infinity")]),
        (1182, "{2024-01-01,infinity}", [dt.date(2024, 1, 1), DATE_INFINITY]),
        (1185, '{"2024-01-01 00:00:00+00"}', [dt.datetime(2024, 1, 1, tzinfo=dt.UTC)]),
        (2951, "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}", [uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")]),
        (3807, '{"{\\"a\\": 1}"}', ['{"a": 1}']),
        (1187, '{"1 day","-00:00:01.5"}', [dt.timedelta(days=1), dt.timedelta(seconds=-1.5)]),
        (1017, '{"(1,2)"}', ["(1,2)"]),
        (90002, "{sad,happy}", ["sad", "happy"]),
        (1007, "{}", []),
    ],
)
def test_array_values(oid: int, text: str, value: Any) -> None:
    assert conv(oid, text) == value


def test_numeric_array_nan() -> None:
    got = conv(1231, "{NaN,NULL}")
    assert got[0].is_nan() and got[1] is None


def test_numeric_array_with_typmod_keeps_scale() -> None:
    got = conv(1231, "{1.50,2.00}", num(10, 2))
    assert [v.as_tuple() for v in got] == [Decimal("1.50").as_tuple(), Decimal("2.00").as_tuple()]


# --------------------------------------------------------------------------- column types


def ctype(oid: int, typmod: int = -1, **kw: Any) -> ColumnType:
    return column_plan("c", oid, typmod, _lookup, **kw).column_type


def test_column_types_as_debezium_describes_them() -> None:
    assert (ctype(23).base, ctype(23).logical) == ("int32", None)
    dec = ctype(1700, num(12, 2))
    assert (dec.base, dec.logical) == ("bytes", "org.apache.kafka.connect.data.Decimal")
    assert dec.params["scale"] == "2" and dec.params["connect.decimal.precision"] == "12"
    assert dec.params["__debezium.source.column.type"] == "NUMERIC"
    assert dec.params["__debezium.source.column.length"] == "12"
    assert dec.params["__debezium.source.column.scale"] == "2"
    assert ctype(1700).logical == "io.debezium.data.VariableScaleDecimal"
    vc = ctype(1043, 204)
    assert vc.base == "string" and vc.params["__debezium.source.column.length"] == "200"
    assert ctype(25).params["__debezium.source.column.length"] == str(2**31 - 1)
    assert ctype(1114).logical == "io.debezium.time.MicroTimestamp"
    assert ctype(1114, 3).logical == "io.debezium.time.Timestamp"
    assert ctype(1083).logical == "io.debezium.time.MicroTime"
    assert ctype(1083, 0).logical == "io.debezium.time.Time"
    assert ctype(1184).logical == "io.debezium.time.ZonedTimestamp"
    assert ctype(1266).logical == "io.debezium.time.ZonedTime"
    assert ctype(1186).logical == "io.debezium.time.MicroDuration"
    assert ctype(3802).params["__debezium.source.column.type"] == "JSONB"
    assert ctype(114).params["__debezium.source.column.type"] == "JSON"
    enum = ctype(90001)
    assert enum.logical == "io.debezium.data.Enum" and enum.params["allowed"] == "sad,ok,happy"
    arr = ctype(1009)
    assert arr.base == "array" and arr.items is not None and arr.items.base == "string"
    assert arr.params["__debezium.source.column.type"] == "_TEXT"
    assert ctype(1560, 1).base == "boolean"
    assert ctype(1560, 8).params["length"] == "8"
    assert ctype(90003).logical == "org.apache.kafka.connect.data.Decimal"  # domain: its base type
    assert ctype(90003).params["__debezium.source.column.type"] == "POSITIVE_AMOUNT"
    assert ctype(20, source_type="bigserial").params["__debezium.source.column.type"] == "BIGSERIAL"
    assert ctype(90004).base == "string"  # other types: text


# --------------------------------------------------------------------------- equality with the Debezium path


def _schema(type_: str, name: str | None = None, **params: str) -> dict[str, Any]:
    s: dict[str, Any] = {"type": type_, "optional": True, "field": "v"}
    if name:
        s["name"] = name
    if params:
        s["parameters"] = params
    return s


def _b64_unscaled(unscaled: int) -> str:
    n = max(1, (unscaled.bit_length() + 8) // 8)
    return base64.b64encode(unscaled.to_bytes(n, "big", signed=True)).decode()


T = "io.debezium.time."
D = "io.debezium.data."
DEC = "org.apache.kafka.connect.data.Decimal"

# (pg type oid, typmod, text PostgreSQL sends, Debezium's Connect field schema, Debezium's JSON value)
SAME_VALUES: list[tuple[int, int, str, dict[str, Any], Any]] = [
    (16, -1, "t", _schema("boolean"), True),
    (20, -1, "9007199254740993", _schema("int64"), 9007199254740993),
    (700, -1, "1.1", _schema("float32"), 1.100000023841858),
    (701, -1, "0.30000000000000004", _schema("float64"), 0.30000000000000004),
    (
        1700,
        num(12, 2),
        "12.30",
        _schema("bytes", DEC, scale="2", **{"connect.decimal.precision": "12"}),
        _b64_unscaled(1230),
    ),
    (
        1700,
        num(5, 2),
        "-7.05",
        _schema("bytes", DEC, scale="2", **{"connect.decimal.precision": "5"}),
        _b64_unscaled(-705),
    ),
    (
        1700,
        -1,
        "1.500",
        _schema("struct", D + "VariableScaleDecimal")
        | {
            "fields": [
                {"type": "int32", "optional": False, "field": "scale"},
                {"type": "bytes", "optional": False, "field": "value"},
            ]
        },
        {"scale": 1, "value": _b64_unscaled(15)},
    ),
    (790, -1, "-$1,234.56", _schema("bytes", DEC, scale="2"), _b64_unscaled(-123456)),
    (17, -1, "\\x00ff", _schema("bytes"), "AP8="),
    (1082, -1, "2024-02-29", _schema("int32", T + "Date"), 19782),
    (1082, -1, "infinity", _schema("int32", T + "Date"), -2147472692),  # as Debezium streams it
    (1082, -1, "-infinity", _schema("int32", T + "Date"), -2147472691),
    (1083, -1, "03:04:05.123456", _schema("int64", T + "MicroTime"), 11045123456),
    (1083, -1, "24:00:00", _schema("int64", T + "MicroTime"), 86_400_000_000),
    (1083, 0, "03:04:05", _schema("int32", T + "Time"), 11045000),
    (1266, -1, "10:00:00.5+05:30", _schema("string", T + "ZonedTime"), "04:30:00.5Z"),
    (1114, -1, "2024-01-02 03:04:05.678901", _schema("int64", T + "MicroTimestamp"), 1704164645678901),
    (1114, 3, "2024-01-02 03:04:05.678", _schema("int64", T + "Timestamp"), 1704164645678),
    (1114, -1, "infinity", _schema("int64", T + "MicroTimestamp"), 9223372036825200000),
    (1114, -1, "-infinity", _schema("int64", T + "MicroTimestamp"), -9223372036832400000),
    (1184, -1, "2024-01-02 03:04:05.5+00", _schema("string", T + "ZonedTimestamp"), "2024-01-02T03:04:05.5Z"),
    (1184, -1, "infinity", _schema("string", T + "ZonedTimestamp"), "infinity"),
    (1186, -1, "1 year 2 mons 3 days 04:05:06.789", _schema("int64", T + "MicroDuration"), 37091106789000),
    (
        2950,
        -1,
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        _schema("string", D + "Uuid"),
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    ),
    (3802, -1, '{"a": 1}', _schema("string", D + "Json"), '{"a": 1}'),
    (90001, -1, "happy", _schema("string", D + "Enum", allowed="sad,ok,happy"), "happy"),
    (
        1009,
        -1,
        '{"a b",NULL}',
        _schema("array") | {"items": {"type": "string", "optional": True}},
        ["a b", None],
    ),
    (1007, -1, "{1,2}", _schema("array") | {"items": {"type": "int32", "optional": True}}, [1, 2]),
]


def _decode_debezium(field: dict[str, Any], raw: Any) -> tuple[Any, ColumnType]:
    records = Records("json", [ID_COLUMN, field])
    event = records.decoder().decode(
        TOPIC, 0, 1, records.key({"id": 1}), records.value(value_payload("c", after={"id": 1, "v": raw}))
    )
    assert isinstance(event, ChangeEvent) and event.after is not None
    return event.after["v"], event.columns["v"]


@pytest.mark.parametrize("oid, typmod, text, field, raw", SAME_VALUES)
def test_same_value_and_target_type_as_the_debezium_path(
    oid: int, typmod: int, text: str, field: dict[str, Any], raw: Any
) -> None:
    expected, debezium_type = _decode_debezium(field, raw)
    got = conv(oid, text, typmod)
    assert got == expected
    assert type(got) is type(expected)
    if isinstance(expected, Decimal):
        assert got.as_tuple() == expected.as_tuple()
    if isinstance(expected, dt.time | dt.datetime):
        assert got.tzinfo == expected.tzinfo
    ours = ctype(oid, typmod)
    assert (ours.base, ours.logical) == (debezium_type.base, debezium_type.logical)
    for dialect in ("postgresql", "sqlite", "mysql"):
        a, b = sql_type(ours, dialect), sql_type(debezium_type, dialect)
        assert type(a) is type(b) and repr(a) == repr(b), dialect


def test_decimal_context_is_not_limited_to_28_digits() -> None:
    text = "1" * 60 + "." + "5" * 40 + "000"
    assert conv(1700, text) == Decimal("1" * 60 + "." + "5" * 40)
    with decimal.localcontext() as ctx:
        ctx.prec = 5
        assert conv(1700, text, num(110, 43)).as_tuple() == Decimal(text).as_tuple()


# --------------------------------------------------------------------------- the process's bookkeeping


def test_transactions_not_beyond_the_target_position_are_skipped() -> None:
    from typing import cast

    from streamer.apply.sink import Sink
    from streamer.replicate import ReplicationProcess
    from streamer.settings import load_settings
    from streamer.sources.pgoutput.protocol import Transaction

    proc = ReplicationProcess(
        load_settings(env={}), cast(Sink, None), source_url="postgresql://x/y", slot="s", publication="p"
    )
    source = proc.source
    source._applied_lsn = source._skip_to = 0x500  # what _streamer_offsets held at start

    def txn(end: int) -> Transaction:
        return Transaction(1, end - 0x10, end, dt.datetime(2024, 1, 1, tzinfo=dt.UTC), [], 10)

    for end in (0x400, 0x500):  # resent by a slot that lags the target
        source._accept(txn(end))
    assert proc.stats.skipped_transactions == 2 and source._pending == []
    source._accept(txn(0x510))  # the next one (its commit record may start exactly at 0x500)
    source._accept(txn(0x510))  # the same one again (after a reconnect, while still pending)
    assert [t.end_lsn for t in source._pending] == [0x510] and proc.stats.skipped_transactions == 3


def test_dead_letter_policy_needs_a_file() -> None:
    from typing import cast

    from streamer.apply.sink import Sink
    from streamer.core.errors import SettingsError
    from streamer.replicate import ReplicationProcess
    from streamer.settings import load_settings

    settings = load_settings(env={}, overrides={"consumer": {"error_policy": "dlq"}})
    with pytest.raises(SettingsError, match="--dlq-file"):
        ReplicationProcess(
            settings, cast(Sink, None), source_url="postgresql://x/y", slot="s", publication="p"
        )
