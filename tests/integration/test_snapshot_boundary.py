"""A Debezium snapshot taken while a source transaction is open: the transaction's changes, written
to the WAL before the snapshot started and committed after it, must win over the snapshot's rows.

Debezium takes such a snapshot whenever it snapshots with a slot that already exists: after Kafka
Connect was killed before it stored the offsets of a finished snapshot (the task snapshots again),
or with ``snapshot.mode=always``, which this test uses to reach the same code path on demand. The
read events carry the LSN the snapshot started at; the open transaction's changes carry smaller
LSNs (where they were written), although the snapshot does not see them. Ordered by LSN alone the
read would win and the update and the delete would be refused for good: the target would keep the
row the source deleted (the fault matrix's Connect restart saw exactly that, one extra row).
Before snapshot rows carried the read mark (``streamer.core.events.supersedes``) this test failed
so: extra rows 6 and 7, row 5 with the snapshot's values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import psycopg2

from streamer.stack.local import Stack
from tests.conftest import run_on_source, wait_running
from tests.faults.harness import wait_until
from tests.integration.test_consume import assert_same, run_consumer
from tests.topic_records import read_topic


def _values(stack: Stack, topic: str) -> list[dict[str, Any]]:
    """The change events of ``topic`` in each partition's order (tombstones left out)."""
    return [r.value for r in read_topic(stack.settings.bootstrap_servers, topic) if r.value is not None]


def _reads(stack: Stack, topic: str) -> int:
    return sum(1 for value in _values(stack, topic) if value.get("op") == "r")


def test_changes_open_across_a_resnapshot_win_over_its_rows(
    stack: Stack, debezium, unique: str, tmp_path: Path
) -> None:
    schema, topic = unique, f"{unique}.{unique}.t"
    run_on_source(
        stack,
        f'CREATE SCHEMA "{schema}"',
        f'CREATE TABLE "{schema}".t (id int PRIMARY KEY, n int NOT NULL, label text)',
        f'CREATE TABLE "{schema}".other (id serial PRIMARY KEY, at timestamptz DEFAULT now())',
        f"INSERT INTO \"{schema}\".t SELECT g, g, 'row ' || g FROM generate_series(1, 20) g",
    )
    try:
        debezium(unique, f"{schema}.t,{schema}.other", **{"snapshot.mode": "always"})
        url = stack.settings.target_url
        group = f"{unique}-g"
        topics = rf"^{unique}\.{unique}\.[^.]+$"
        wait_until(lambda: _reads(stack, topic) >= 20, 120, "the first snapshot's 20 rows")
        first = run_consumer(group, topics, url, "--until-idle", "8")
        assert first.returncode == 0, first.stderr[-3000:]
        assert_same(stack, schema, url, ("t",))

        # a transaction writes an update, a delete, an insert and a key update, and stays open
        open_tx = psycopg2.connect(stack.source_admin_dsn(stack.cfg.source_database))
        try:
            with open_tx.cursor() as cur:
                cur.execute(f'UPDATE "{schema}".t SET n = n + 1000, label = NULL WHERE id = 5')
                cur.execute(f'DELETE FROM "{schema}".t WHERE id = 6')
                cur.execute(f"INSERT INTO \"{schema}\".t VALUES (100, 100, 'new')")
                cur.execute(f'UPDATE "{schema}".t SET id = 107 WHERE id = 7')
            run_on_source(stack, f'INSERT INTO "{schema}".other DEFAULT VALUES')  # flushes the WAL
            # the task starts again and snapshots with the slot it has (the open changes unseen)
            resp = httpx.post(f"{stack.settings.connect_url}/connectors/{unique}/tasks/0/restart", timeout=30)
            assert resp.status_code in (200, 202, 204), resp.text
            wait_running(stack.settings.connect_url, unique, timeout=120)
            wait_until(lambda: _reads(stack, topic) >= 40, 120, "the second snapshot's 20 rows")
            open_tx.commit()
        finally:
            open_tx.close()
        run_on_source(stack, f"UPDATE \"{schema}\".t SET label = 'after' WHERE id = 9")
        wait_until(
            lambda: any(
                v.get("op") == "u" and (v.get("after") or {}).get("label") == "after"
                for v in _values(stack, topic)
            ),
            120,
            "the update after the commit",
        )
        second = run_consumer(group, topics, url, "--until-idle", "8")
        assert second.returncode == 0, second.stderr[-3000:]
        assert_same(stack, schema, url, ("t",), _history(stack, topic, {5, 6, 7, 100, 107}))
    finally:
        run_on_source(stack, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _history(stack: Stack, topic: str, keys: set[int]) -> str:
    """The topic's records of ``keys``: op, LSN, sequence and snapshot flag, in topic order."""
    lines = []
    for partition, offset, _key, value in read_topic(stack.settings.bootstrap_servers, topic):
        row = (value or {}).get("after") or (value or {}).get("before") or {}
        if value is not None and row.get("id") in keys:
            src = value["source"]
            lines.append(
                f"[{partition}]@{offset} id={row.get('id')} op={value['op']} "
                f"lsn={src.get('lsn')} sequence={src.get('sequence')} snapshot={src.get('snapshot')}"
            )
    return "\n".join(lines)
