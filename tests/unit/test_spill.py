"""Bounded memory in the pgoutput assembler: open transactions spill to a file and are read back in order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from streamer.core.events import UNAVAILABLE, ChangeEvent, Op
from streamer.decode.pgtypes import PgValueError
from streamer.sources.pgoutput.protocol import UNCHANGED, RelationMeta, Transaction, TransactionAssembler
from streamer.sources.pgoutput.spill import SpillFile, remove_stale
from tests.unit.test_pgoutput import (
    ITEMS,
    RELID,
    TS,
    assembler,
    begin,
    commit,
    delete,
    feed_all,
    insert,
    relation,
    stream_abort,
    stream_commit,
    stream_start,
    truncate,
    update,
)

OTHER = RELID + 1
META = {RELID: RelationMeta(("id",)), OTHER: RelationMeta(("id",))}


def _plain(n: int) -> list[tuple[bytes, int]]:
    """One transaction: n inserts into items, updates (one with an unchanged TOAST value), a delete, a truncate."""
    msgs: list[tuple[bytes, int]] = [
        (begin(0x100000, TS, 771), 0x100),
        (relation(RELID, "public", "items", ITEMS), 0x100),
        (relation(OTHER, "public", "other", ITEMS), 0x100),
    ]
    lsn = 0x200
    for i in range(n):
        lsn += 0x10
        msgs.append((insert(RELID if i % 3 else OTHER, str(i), f"name {i}", "x" * (i % 50), f"{i}.25"), lsn))
    msgs += [
        (update(RELID, (str(1), "renamed", UNCHANGED, "1.50")), lsn + 0x10),
        (delete(RELID, (str(2), None, None, None)), lsn + 0x20),
        (truncate(OTHER), lsn + 0x30),
        (insert(OTHER, "7", "after truncate", None, None), lsn + 0x40),
        (commit(0x100000, 0x100028, TS), 0x100028),
    ]
    return msgs


def _events(txn: Transaction, max_events: int = 7) -> list[ChangeEvent]:
    chunks = list(txn.event_chunks(max_events))
    assert all(len(c.events) <= max_events and not c.spilled for c in chunks)
    return [ev for c in chunks for ev in c.events]


def _spilling(tmp_path: Path, limit: int = 2000, meta: Any = None, **kw: Any) -> TransactionAssembler:
    return assembler(META if meta is None else meta, max_memory_bytes=limit, spill_dir=tmp_path, **kw)


def test_plain_transaction_spills_and_reads_back_in_order(tmp_path: Path) -> None:
    (expected,) = feed_all(assembler(META), _plain(100))
    assert not expected.spilled
    a = _spilling(tmp_path)
    (txn,) = feed_all(a, _plain(100))
    assert txn.spilled and txn.events == [] and a.spills == 1
    assert txn.spill is not None and txn.spill.records > 50  # most of it went to the file
    (path,) = tmp_path.iterdir()
    got = _events(txn)
    assert got == expected.events  # every event, every field, in WAL order
    assert [e.op for e in got[-3:]] == [Op.DELETE, Op.TRUNCATE, Op.CREATE] and got[-4].op is Op.UPDATE
    assert got[-4].after is not None and got[-4].after["big"] is UNAVAILABLE  # 'u' read back from the file
    assert (txn.commit_lsn, txn.end_lsn, txn.size) == (expected.commit_lsn, expected.end_lsn, expected.size)
    txn.discard()
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_small_transaction_stays_in_memory(tmp_path: Path) -> None:
    (txn,) = feed_all(_spilling(tmp_path, limit=10_000_000), _plain(20))
    assert not txn.spilled and len(txn.events) == 24
    assert list(tmp_path.iterdir()) == []


def test_last_chunk_is_always_yielded(tmp_path: Path) -> None:
    (txn,) = feed_all(_spilling(tmp_path), _plain(100))
    chunks = list(txn.event_chunks(52))  # 104 events: two full chunks and an empty last one
    assert [len(c.events) for c in chunks] == [52, 52, 0]
    assert all(c.end_lsn == txn.end_lsn for c in chunks)


def _streamed(n: int) -> list[tuple[bytes, int]]:
    msgs: list[tuple[bytes, int]] = [
        (stream_start(900), 0x100),
        (relation(RELID, "public", "items", ITEMS, xid=900), 0x100),
    ]
    lsn = 0x100
    for i in range(n):
        lsn += 0x10
        msgs.append((insert(RELID, str(i), "top", "b", "1.00", xid=900), lsn))
    for i in range(n):  # a savepoint rolled back later: half of its changes are in the file by then
        lsn += 0x10
        msgs.append((insert(RELID, str(10_000 + i), "rolled back", "b", "1.00", xid=901), lsn))
    msgs += [
        (b"E", lsn),
        (begin(0x90000, TS, 950), lsn + 1),  # another transaction commits in between, plain
        (insert(RELID, "-1", "other", "b", "1.00"), lsn + 2),
        (commit(0x90000, 0x90010, TS), 0x90010),
        (stream_start(900, first=False), 0x90020),
    ]
    lsn = 0x90020
    for i in range(n):
        lsn += 0x10
        msgs.append((insert(RELID, str(20_000 + i), "kept too", "b", "1.00", xid=902), lsn))
    msgs += [
        (b"E", lsn),
        (stream_abort(900, 901), lsn + 0x10),  # ROLLBACK TO SAVEPOINT: only 901's changes go
        (stream_commit(900, 0xA0000, 0xA0040, TS), 0xA0040),
    ]
    return msgs


def test_streamed_transaction_spills_and_drops_an_aborted_subtransaction(tmp_path: Path) -> None:
    plain, expected = feed_all(assembler(META), _streamed(60))
    a = _spilling(tmp_path)
    small, txn = feed_all(a, _streamed(60))
    assert not small.spilled and small.events == plain.events
    assert txn.streamed and txn.spilled and txn.xid == 900
    got = _events(txn, 50)
    assert got == expected.events
    ids = [e.key["id"] for e in got]
    assert ids == list(range(60)) + list(range(20_000, 20_060))  # none of savepoint 901
    txn.discard()
    assert list(tmp_path.iterdir()) == [] and not a.in_transaction


def test_abort_and_reset_delete_the_spill_file(tmp_path: Path) -> None:
    a = _spilling(tmp_path)
    open_part = _streamed(60)[:-3]  # up to the second block's last insert: open
    feed_all(a, open_part)
    assert a.in_transaction and len(list(tmp_path.iterdir())) == 1
    a.feed(b"E", 0xF0000)
    assert a.feed(stream_abort(900, 900), 0xF0010) is None
    assert list(tmp_path.iterdir()) == [] and not a.in_transaction
    feed_all(a, _plain(100)[:-1])  # a plain transaction, not committed yet
    assert len(list(tmp_path.iterdir())) == 1
    a.reset()  # reconnect: the server sends it again
    assert list(tmp_path.iterdir()) == [] and not a.in_transaction


def test_stale_spill_files_of_the_slot_are_removed_at_start(tmp_path: Path) -> None:
    stale = SpillFile(tmp_path, "replicate-slot1", 5)
    stale.append([("c", 0, 1, None, ("1",), None, ())])
    other = SpillFile(tmp_path, "replicate-slot2", 5)  # another slot's process: left alone
    other.append([("c", 0, 1, None, ("1",), None, ())])
    _spilling(tmp_path)
    assert list(tmp_path.iterdir()) == [other.path]
    assert list(other) == [("c", 0, 1, None, ("1",), None, ())]
    assert remove_stale(tmp_path, "replicate-slot2") == [other.path]
    assert remove_stale(tmp_path / "missing", "replicate-slot2") == []


def test_conversion_failures_of_a_spilled_transaction_per_chunk(tmp_path: Path) -> None:
    cols = [(1, "id", 23, -1), (0, "d", 1082, -1)]
    msgs: list[tuple[bytes, int]] = [(begin(1, TS, 5), 0x100), (relation(RELID, "s", "t", cols), 0x100)]
    for i in range(40):
        msgs.append((insert(RELID, str(i), "0044-03-15 BC" if i == 33 else "2024-01-01"), 0x110 + i))
    msgs.append((commit(1, 0x200, TS), 0x200))
    meta = {RELID: RelationMeta(("id",))}
    (txn,) = feed_all(_spilling(tmp_path, limit=500, meta=meta, keep_failed=True), msgs)
    assert txn.spilled
    chunks = list(txn.event_chunks(10))
    assert [e.key["id"] for c in chunks for e in c.events] == [i for i in range(40) if i != 33]
    ((change, exc),) = [f for c in chunks for f in c.failed]
    assert change.lsn == 0x110 + 33 and isinstance(exc, PgValueError)
    txn.discard()
    (strict,) = feed_all(_spilling(tmp_path / "strict", limit=500, meta=meta), msgs)
    try:
        list(strict.event_chunks(10))
    except PgValueError as exc:
        assert "s.t.d at LSN 0/131" in str(exc)
    else:
        raise AssertionError("a value that cannot be converted must raise under error policy stop")
    strict.discard()
