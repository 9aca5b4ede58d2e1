"""`streamer replicate` of transactions larger than its memory bound: they spill to a file and apply in chunks.

Whole-table comparison of source and target afterwards; the spill files are gone.
"""

from __future__ import annotations

import json
from pathlib import Path

from streamer.stack import Stack
from tests.integration.test_replicate import Replication, assert_same, execute, repl, run, stored_lsn

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
