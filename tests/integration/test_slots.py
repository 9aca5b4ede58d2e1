"""Replication slots on the real stack: status shows what a deleted connector left, --drop-slot removes it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from streamer.ops.metrics import SlotCollector
from streamer.settings import load_settings
from streamer.stack.local import Stack
from tests.conftest import debezium_config, drop_connector, source_connection, wait_running


def streamer(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamer.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def slot_row(stack: Stack, slot: str) -> tuple[Any, ...] | None:
    """(active, active_pid, restart_lsn, current - restart_lsn) of a slot, from the server itself."""
    conn = source_connection(stack)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT active, active_pid, restart_lsn::text,"
                " pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint"
                " FROM pg_replication_slots WHERE slot_name = %s",
                (slot,),
            )
            row = cur.fetchone()
    finally:
        conn.close()
    return tuple(row) if row else None


def publication_exists(stack: Stack, name: str) -> bool:
    conn = source_connection(stack)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (name,))
            return cur.fetchone() is not None
    finally:
        conn.close()


def wait_inactive(stack: Stack, slot: str, timeout: float = 60) -> tuple[Any, ...]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = slot_row(stack, slot)
        assert row is not None, f"slot {slot} vanished"
        if not row[0]:
            return row
        time.sleep(0.5)
    raise AssertionError(f"slot {slot} still active after {timeout}s")


@pytest.fixture
def connector(stack: Stack, source_db: Any, unique: str) -> Iterator[str]:
    """A running Debezium connector named ``unique`` (slot ``<unique>_slot``) on a table of its own."""
    with source_db.cursor() as cur:
        cur.execute(f"CREATE TABLE public.{unique} (id bigint PRIMARY KEY, v text)")
    cfg = debezium_config(stack, unique, f"public.{unique}", **{"snapshot.mode": "no_data"})
    resp = httpx.put(f"{stack.settings.connect_url}/connectors/{unique}/config", json=cfg, timeout=60)
    assert resp.status_code == 201, resp.text
    wait_running(stack.settings.connect_url, unique, timeout=120)
    deadline = time.monotonic() + 60
    while slot_row(stack, f"{unique}_slot") is None and time.monotonic() < deadline:
        time.sleep(0.5)
    yield unique
    drop_connector(stack, unique, unique)
    with source_db.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS public.{unique}")


def status_env(stack: Stack, unique: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    """Status of this test's slot only (the shared source has other tests' slots), no connector files."""
    (tmp_path / "no-files").mkdir(exist_ok=True)
    return {
        **os.environ,
        "STREAMER_CONNECTORS_DIR": str(tmp_path / "no-files"),
        "STREAMER_STATUS__SLOTS": f"^{unique}_slot$",
        **extra,
    }


def test_slot_left_by_a_deleted_connector_is_inactive_retains_wal_and_fails_status(
    stack: Stack, connector: str, source_db: Any, tmp_path: Path
) -> None:
    slot = f"{connector}_slot"
    env = status_env(stack, connector, tmp_path)
    res = streamer("status", "--json", "--group", connector, env=env)
    doc = json.loads(res.stdout)
    assert res.returncode == 0, (res.stdout, res.stderr)
    [running] = doc["slots"]
    assert (running["name"], running["plugin"], running["type"], running["database"]) == (
        slot,
        "pgoutput",
        "logical",
        stack.cfg.source_database,
    )
    assert running["active"] is True and running["active_pid"] == slot_row(stack, slot)[1]  # type: ignore[index]
    assert running["owners"] == [{"connector": connector, "on_worker": True, "file": None}]
    assert running["warnings"] == [] and running["ok"] is True
    assert doc["source"] == {
        "url": stack.settings.source_url.replace(":postgres@", ":***@"),
        "kind": "postgresql",
        "reachable": True,
        "error": None,
    }
    assert doc["max_retained_wal_bytes"] == 1024**3

    # the connector goes, its slot stays; WAL written afterwards is retained for it
    res = streamer("connectors", "delete", connector, env=env)
    assert res.returncode == 0, res.stderr
    assert f"note: replication slot '{slot}' and publication '{connector}_pub' stay" in res.stdout
    _, _, restart_lsn, _ = wait_inactive(stack, slot)
    with source_db.cursor() as cur:
        cur.execute(
            f"INSERT INTO public.{connector} SELECT g, repeat('x', 200) FROM generate_series(1, 2000) g"
        )
    low = slot_row(stack, slot)[3]  # type: ignore[index]
    res = streamer("status", "--json", "--group", connector, env=env)
    high = slot_row(stack, slot)[3]  # type: ignore[index]
    assert res.returncode == 1, res.stderr
    doc = json.loads(res.stdout)
    [left] = doc["slots"]
    assert (left["active"], left["active_pid"], left["restart_lsn"], left["owners"]) == (
        False,
        None,
        restart_lsn,
        [],
    )
    assert low <= left["retained_wal_bytes"] <= high and low > 400_000  # the 2000 rows' WAL at least
    assert left["flush_lag_bytes"] is not None and left["flush_lag_bytes"] <= left["retained_wal_bytes"]
    assert left["warnings"] == [
        "inactive and no connector has this slot.name: the source keeps its WAL; if nothing will read it "
        f"again, drop it: SELECT pg_drop_replication_slot('{slot}');"
    ]
    # the slot is what failed: every other section is fine
    assert doc["ok"] is False and doc["connect"]["reachable"] and doc["connect"]["error"] is None
    assert (
        doc["broker"]["error"] is None and doc["target"]["error"] is None and doc["source"]["error"] is None
    )

    # the table view (not a terminal): the slot row and its warning uncut
    res = streamer("status", "--group", connector, env=env)
    assert res.returncode == 1
    lines = res.stdout.splitlines()
    assert f"slot {slot}: {left['warnings'][0]}" in lines
    assert any(slot in line and "NO" in line and "-" in line for line in lines)

    # a retained-WAL threshold below what the slot keeps: a second warning
    res = streamer(
        "status",
        "--json",
        "--group",
        connector,
        env={**env, "STREAMER_STATUS__MAX_RETAINED_WAL_BYTES": "1000"},
    )
    [warned] = json.loads(res.stdout)["slots"]
    assert (
        warned["warnings"][1].startswith("retains ")
        and "above status.max_retained_wal_bytes (1000 B)" in (warned["warnings"][1])
    )

    # the gauges read the same slot at scrape time
    registry = CollectorRegistry(auto_describe=False)
    settings = load_settings(env={k: v for k, v in env.items() if k.startswith("STREAMER_")})
    registry.register(SlotCollector(settings))
    low = slot_row(stack, slot)[3]  # type: ignore[index]
    text = generate_latest(registry).decode()
    high = slot_row(stack, slot)[3]  # type: ignore[index]
    samples = {
        s.name: s
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.labels.get("slot") == slot
    }
    assert samples["streamer_replication_slot_active"].value == 0
    assert samples["streamer_replication_slot_warnings"].value == 1
    assert samples["streamer_replication_slot_active"].labels == {
        "slot": slot,
        "plugin": "pgoutput",
        "connector": "",
    }
    assert low <= samples["streamer_replication_slot_retained_wal_bytes"].value <= high
    assert "streamer_replication_slot_flush_lag_bytes" in samples
    assert "streamer_replication_slots_up 1.0" in text


def test_delete_with_drop_slot_removes_the_slot_and_the_publication(
    stack: Stack, connector: str, tmp_path: Path
) -> None:
    slot, publication = f"{connector}_slot", f"{connector}_pub"
    assert slot_row(stack, slot) is not None and publication_exists(stack, publication)
    res = streamer(
        "connectors", "delete", connector, "--drop-slot", env=status_env(stack, connector, tmp_path)
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [
        f"- deleted {connector}",
        f"- dropped replication slot {slot}",
        f"- dropped publication {publication} (database {stack.cfg.source_database})",
    ]
    assert slot_row(stack, slot) is None and not publication_exists(stack, publication)
    assert connector not in httpx.get(f"{stack.settings.connect_url}/connectors", timeout=10).json()


def test_drop_slot_is_refused_while_another_reader_holds_the_slot(
    stack: Stack, connector: str, tmp_path: Path
) -> None:
    """A second connector configured with the first one's slot: deleting it must not drop the slot."""
    slot, publication = f"{connector}_slot", f"{connector}_pub"
    twin = f"{connector}b"
    cfg = debezium_config(
        stack,
        twin,
        f"public.{connector}",
        **{"snapshot.mode": "no_data", "slot.name": slot, "publication.name": publication},
    )
    resp = httpx.put(f"{stack.settings.connect_url}/connectors/{twin}/config", json=cfg, timeout=60)
    assert resp.status_code == 201, resp.text
    holder = slot_row(stack, slot)
    assert holder is not None and holder[0], holder
    env = status_env(stack, connector, tmp_path)
    res = streamer("connectors", "delete", twin, "--drop-slot", "--slot-wait", "3", env=env)
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert res.stdout.splitlines() == [f"- deleted {twin}"]
    assert res.stderr.startswith(
        f"streamer: slot still active: connector {twin} is deleted, but its replication slot '{slot}' is still "
        f"read by walsender pid {holder[1]} ("
    ), res.stderr
    assert (
        f"neither the slot nor publication '{publication}' was dropped. Find the reader in pg_stat_replication "
        f"(pid {holder[1]}), stop it, then run SELECT pg_drop_replication_slot('{slot}'); "
        f'DROP PUBLICATION "{publication}";'
    ) in res.stderr
    assert slot_row(stack, slot)[:2] == (True, holder[1])  # type: ignore[index]
    assert publication_exists(stack, publication)
    wait_running(stack.settings.connect_url, connector, timeout=30)  # the owner reads on
