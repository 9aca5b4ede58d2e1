"""`streamer replicate` of transactions larger than its memory bound: they spill to a file and apply in chunks.

Whole-table comparison of source and target afterwards; the spill files are gone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from streamer.apply import state
from streamer.apply.sink import build_sink
from streamer.core.events import parse_lsn
from streamer.replicate import ReplicationProcess
from streamer.settings import load_settings
from streamer.stack.local import Stack
from tests.integration.test_replicate import (
    Replication,
    assert_same,
    execute,
    repl,
    run,
    slot_row,
    stored_lsn,
)

__all__ = ["repl"]  # the fixture, used by name

ROWS = 200_000


def _spilled(stderr: str) -> list[dict[str, object]]:
    out = []
    for line in stderr.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("event") == "spilled transaction applied":
            out.append(rec)
    return out


def test_transaction_larger_than_the_memory_bound_spills_and_lands_whole(
    stack: Stack, repl: Replication, tmp_path: Path
) -> None:
    schema = repl.schema()
    s = f'"{schema}"'
    execute(
        stack,
        f"CREATE SCHEMA {s}",
        f"CREATE TABLE {s}.big (id int PRIMARY KEY, note text, n bigint, at timestamptz)",
        f"CREATE TABLE {s}.side (id int PRIMARY KEY, v text)",
    )
    slot = repl.slot()
    url = stack.settings.target_url
    made = run(slot, schema, url, "--create", "--tables", f"{schema}.big,{schema}.side", "--max-events", "0")
    assert made.returncode == 0, made.stderr[-3000:]
    # one transaction: 200k inserts, then updates and deletes of some of them, and a second table
    execute(
        stack,
        f"BEGIN; INSERT INTO {s}.big SELECT g, 'row ' || g || repeat('x', g % 40), g * 7, "
        "'2024-01-01'::timestamptz + g * interval '1 second' FROM generate_series(1, 200000) g; "
        f"UPDATE {s}.big SET note = 'updated', n = -n WHERE id % 1000 = 0; "
        f"DELETE FROM {s}.big WHERE id % 997 = 0; "
        f"INSERT INTO {s}.side SELECT g, 'side ' || g FROM generate_series(1, 100) g; COMMIT",
    )
    state_dir = tmp_path / "state"
    spill_dir = state_dir / "spill"
    spill_dir.mkdir(parents=True)
    stale = spill_dir / f"replicate-{slot}-123-0123456789ab.spill"
    stale.write_bytes(b"left by a crashed run")
    env = {
        "STREAMER_REPLICATE__MAX_TRANSACTION_MEMORY_BYTES": str(4 * 1024 * 1024),
        "STREAMER_REPLICATE__STATE_DIR": str(state_dir),
        "STREAMER_CONSUMER__BATCH_MAX_EVENTS": "20000",
    }
    done = run(slot, schema, url, "--until-idle", "3", env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (applied,) = _spilled(done.stderr)
    assert applied["streamed"] is False
    assert applied["events"] == ROWS + 200 + 200 + 100  # inserts, updates, deletes, inserts into side
    assert_same(stack, schema, url, ("big", "side"))
    assert list(spill_dir.iterdir()) == []  # the stale file and this run's file are gone
    first = stored_lsn(url, slot, slot)
    assert first > 0

    # streamed in progress (logical_decoding_work_mem at its minimum) with a savepoint rolled back
    execute(
        stack,
        f"BEGIN; UPDATE {s}.big SET note = 'second', at = NULL WHERE id <= 60000; "
        "SAVEPOINT sp; "
        f"INSERT INTO {s}.big SELECT g, 'rolled back', 0, NULL FROM generate_series(300001, 330000) g; "
        "ROLLBACK TO SAVEPOINT sp; "
        f"DELETE FROM {s}.big WHERE id > 190000; "
        f"UPDATE {s}.side SET v = 'second' WHERE id <= 10; COMMIT",
    )
    source = stack.settings.source_url + "?options=-c%20logical_decoding_work_mem%3D64kB"
    again = run(slot, schema, url, "--source", source, "--until-idle", "3", env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    (second,) = _spilled(again.stderr)
    assert second["streamed"] is True
    # updates of ids up to 60000 (60 of them deleted before), deletes above 190000, side; no savepoint rows
    assert second["events"] == (60000 - 60) + (10000 - 10) + 10
    assert_same(stack, schema, url, ("big", "side"))
    assert list(spill_dir.iterdir()) == []
    assert stored_lsn(url, slot, slot) > first


def test_chunks_of_a_spilled_transaction_store_and_confirm_its_end_only_with_the_last(
    stack: Stack, repl: Replication, tmp_path: Path
) -> None:
    """The runner's layout: the open batch before the spilled transaction is applied first, each chunk
    is a batch of its own, and while chunks are left neither ``_streamer_offsets`` nor the slot's
    confirmed position moves past the transaction before it; the last chunk stores its end LSN."""
    schema = repl.schema()
    s = f'"{schema}"'
    execute(stack, f"CREATE SCHEMA {s}", f"CREATE TABLE {s}.big (id int PRIMARY KEY, note text)")
    slot = repl.slot()
    url = stack.settings.target_url
    made = run(slot, schema, url, "--create", "--tables", f"{schema}.big", "--max-events", "0")
    assert made.returncode == 0, made.stderr[-3000:]
    execute(
        stack,
        f"INSERT INTO {s}.big VALUES (-1, 'before')",  # a small transaction: the open batch before it
        f"BEGIN; INSERT INTO {s}.big SELECT g, 'row ' || g || repeat('y', 60) FROM generate_series(1, 20000) g; "
        f"DELETE FROM {s}.big WHERE id % 7 = 0; COMMIT",
        f"INSERT INTO {s}.big VALUES (-2, 'after')",
    )
    state_dir = tmp_path / "state"
    settings = load_settings(
        env={},
        overrides={
            "target_url": url,
            "replicate": {"max_transaction_memory_bytes": 256 * 1024, "state_dir": str(state_dir)},
            "consumer": {"batch_max_events": 3000},
        },
    )
    sink = build_sink(settings)
    state.upgrade(sink.engine)
    seen: list[tuple[int, int, int, int]] = []  # (events, batch end LSN, stored LSN, confirmed LSN)

    def on_batch(_result: Any, _elapsed: float, txns: Any) -> None:
        row = slot_row(stack, slot)
        assert row is not None
        confirmed = parse_lsn(row[2])
        events = sum(len(txn.events) for txn in txns)
        seen.append((events, txns[-1].end_lsn, stored_lsn(url, slot, slot), confirmed))

    proc = ReplicationProcess(
        settings,
        sink,
        source_url=stack.settings.source_url,
        slot=slot,
        publication=schema,
        until_idle=3,
        on_batch=on_batch,
    )
    try:
        stats = proc.run()
    finally:
        sink.engine.dispose()
    assert stats.spilled_transactions == 1
    deletes = 20000 // 7
    chunks = seen[1:-1]
    assert len(seen) == 1 + 8 + 1  # 20000 + 2857 events: 7 chunks of 3000, the last one the rest
    assert chunks[-1][0] == 20000 + deletes - 7 * 3000
    before = seen[0]
    assert before[0] == 1 and before[2] == before[1]  # the small transaction first, alone, stored
    spilled_end = chunks[-1][1]
    for events, _end, stored, confirmed in chunks[:-1]:
        assert events == 3000
        assert stored == before[1]  # a chunk in the middle stores nothing
        assert confirmed <= before[1]  # nor is anything of the transaction confirmed
    assert chunks[-1][2] == spilled_end > before[1]  # the last chunk stores the transaction's end
    assert seen[-1][0] == 1 and seen[-1][2] == seen[-1][1] > spilled_end  # then the stream goes on
    assert stats.transactions == 3
    assert_same(stack, schema, url, ("big",))
    assert list((state_dir / "spill").iterdir()) == []
