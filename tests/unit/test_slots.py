"""Replication slots: byte formatting, warnings and thresholds, owners, server checks, the status view, gauges."""

from __future__ import annotations

import dataclasses
from typing import Any

from rich.console import Console

from streamer.ops import metrics, slots, status
from streamer.ops.slots import Owner, Slot

GIB = 1024**3


def slot(**changes: Any) -> Slot:
    base = Slot(
        name="streamer_inventory",
        plugin="pgoutput",
        type="logical",
        database="inventory",
        active=True,
        active_pid=4242,
        restart_lsn="0/1000000",
        confirmed_flush_lsn="0/1000100",
        wal_status="reserved",
        retained_wal_bytes=4096,
        flush_lag_bytes=3840,
    )
    return dataclasses.replace(base, **changes)


ON_WORKER = Owner("inventory", True, "connectors/inventory.json")


def test_human_bytes() -> None:
    assert [slots.human_bytes(n) for n in (None, 0, 1023, 1024, 1536, 10 * 1024**2, GIB, 3 * GIB // 2)] == [
        "-",
        "0 B",
        "1023 B",
        "1.0 KiB",
        "1.5 KiB",
        "10.0 MiB",
        "1.0 GiB",
        "1.5 GiB",
    ]
    assert slots.human_bytes(5 * 1024**5) == "5120.0 TiB"


def test_an_active_slot_below_the_threshold_is_fine() -> None:
    assert slots.slot_warnings(slot(), [ON_WORKER], GIB) == []


def test_retained_wal_threshold_is_strictly_above() -> None:
    assert slots.slot_warnings(slot(retained_wal_bytes=GIB), [ON_WORKER], GIB) == []
    assert slots.slot_warnings(slot(retained_wal_bytes=GIB + 1), [ON_WORKER], GIB) == [
        "retains 1.0 GiB of WAL, above status.max_retained_wal_bytes (1.0 GiB): its reader is behind or "
        "idle (see the README, Idle databases and WAL)"
    ]
    assert slots.slot_warnings(slot(retained_wal_bytes=None, type="physical"), [], GIB) == []


def test_inactive_slot_warnings_name_the_next_step() -> None:
    assert slots.slot_warnings(slot(active=False, name="old'one"), [], GIB) == [
        "inactive and no connector has this slot.name: the source keeps its WAL; if nothing will read it "
        "again, drop it: SELECT pg_drop_replication_slot('old''one');"
    ]
    assert slots.slot_warnings(slot(active=False), [ON_WORKER], GIB) == [
        "inactive although connector inventory is on the worker: its task does not read the slot (see "
        "`streamer connectors status`)"
    ]
    file_only = Owner("inventory", False, "connectors/inventory.json")
    assert slots.slot_warnings(slot(active=False, retained_wal_bytes=2 * GIB), [file_only], GIB) == [
        "inactive: connector inventory (connectors/inventory.json) is not on the worker; `streamer "
        "connectors apply` starts it, `streamer connectors delete inventory --drop-slot` is for a connector "
        "that is gone for good",
        "retains 2.0 GiB of WAL, above status.max_retained_wal_bytes (1.0 GiB): its reader is behind or "
        "idle (see the README, Idle databases and WAL)",
    ]


def test_lost_wal_and_shared_slot() -> None:
    two = [ON_WORKER, Owner("copy", True, None)]
    assert slots.slot_warnings(slot(wal_status="lost"), two, GIB) == [
        "WAL the slot needs was removed (wal_status=lost): its reader cannot resume; drop the slot, "
        "re-create the connector and reload the tables (streamer load)",
        "named by 2 connectors (inventory, copy): only one can read a slot at a time; give each its own "
        "slot.name",
    ]


def test_owners_from_worker_and_files() -> None:
    pg = "io.debezium.connector.postgresql.PostgresConnector"
    worker = {
        "inventory": {"connector.class": pg, "slot.name": "s1"},
        "nodefault": {"connector.class": pg},
        "sink": {"connector.class": "io.confluent.connect.jdbc.JdbcSinkConnector", "slot.name": "s1"},
    }
    files = [
        # on the worker with another slot: the worker's config is what runs
        ("inventory", "connectors/inventory.json", {"connector.class": pg, "slot.name": "edited"}),
        ("planned", "connectors/planned.json", {"connector.class": pg, "slot.name": "s2"}),
    ]
    assert slots.slot_owners(worker, files) == {
        "s1": [Owner("inventory", True, "connectors/inventory.json")],
        "debezium": [Owner("nodefault", True, None)],
        "s2": [Owner("planned", False, "connectors/planned.json")],
    }


def test_server_mismatch() -> None:
    url = "postgresql://postgres:pw@127.0.0.1:15432/inventory"
    assert slots.server_mismatch({"database.hostname": "${env:H}", "database.port": "${env:P}"}, url) is None
    assert slots.server_mismatch({"database.hostname": "localhost", "database.port": "15432"}, url) is None
    assert slots.server_mismatch({"database.hostname": "db.example", "database.port": "5432"}, url) == (
        "the connector reads host db.example and port 5432, source_url is 127.0.0.1:15432: set source_url "
        "(STREAMER_SOURCE_URL) to the connector's database server"
    )
    assert slots.server_mismatch({"database.port": "5432"}, "postgresql://u@db/x") is None


def test_postgres_url_and_names() -> None:
    assert slots.is_postgres_url("postgresql+psycopg2://u@h/d") and slots.is_postgres_url("postgresql://h/d")
    assert not slots.is_postgres_url("mysql://root@h/d") and not slots.is_postgres_url("nonsense")
    assert (slots.slot_of({}), slots.publication_of({})) == ("debezium", "dbz_publication")


def _doc(*entries: Slot, owners: list[Owner] | None = None, limit: int = GIB) -> dict[str, Any]:
    found = []
    for s in entries:
        mine = owners or []
        warnings = slots.slot_warnings(s, mine, limit)
        found.append(
            {
                **dataclasses.asdict(s),
                "owners": [o.to_json() for o in mine],
                "warnings": warnings,
                "ok": not warnings,
            }
        )
    return {
        "source": {
            "url": "postgresql://postgres:***@h/db",
            "kind": "postgresql",
            "reachable": True,
            "error": None,
        },
        "slots": found,
        "max_retained_wal_bytes": limit,
    }


def test_status_rows_and_warning_lines() -> None:
    doc = _doc(slot(), slot(name="gone", active=False, active_pid=None, retained_wal_bytes=3 * GIB))
    assert status.slot_rows(doc) == [
        ("streamer_inventory", "pgoutput", "yes (pid 4242)", "-", "4.0 KiB", "3.8 KiB"),
        ("gone", "pgoutput", "NO", "-", "3.0 GiB", "3.8 KiB"),
    ]
    assert status.slot_warning_lines(doc) == [
        "slot gone: inactive and no connector has this slot.name: the source keeps its WAL; if nothing will "
        "read it again, drop it: SELECT pg_drop_replication_slot('gone');",
        "slot gone: retains 3.0 GiB of WAL, above status.max_retained_wal_bytes (1.0 GiB): its reader is "
        "behind or idle (see the README, Idle databases and WAL)",
    ]
    owned = _doc(slot(), owners=[Owner("inventory", False, "f.json")])
    assert status.slot_rows(owned)[0][3] == "inventory (file only)"


def test_rendered_slots_keep_every_warning_whole_on_a_wide_console() -> None:
    doc = _doc(slot(name="gone", active=False, active_pid=None))
    console = Console(width=200, record=True, color_system=None)
    for part in status.render_slots(doc):
        console.print(part)
    text = console.export_text()
    assert (
        "replication slots of postgresql://postgres:***@h/db (warning: inactive, or above 1.0 GiB retained WAL)"
        in text
    )
    assert status.slot_warning_lines(doc)[0] in text.splitlines()
    unreachable = {
        **doc,
        "source": {**doc["source"], "reachable": False, "error": "source down"},
        "slots": [],
    }
    console = Console(width=200, record=True, color_system=None)
    for part in status.render_slots(unreachable):
        console.print(part)
    assert "source down" in console.export_text()


def test_slot_gauges() -> None:
    doc = _doc(slot(), slot(name="gone", active=False, flush_lag_bytes=None), owners=[ON_WORKER])
    families = {f.name: f for f in metrics.slot_metrics(doc["source"], doc["slots"])}
    got = {
        name: {(s.labels["slot"], s.labels["connector"]): s.value for s in f.samples}
        for name, f in families.items()
        if name != "streamer_replication_slots_up"
    }
    assert got == {
        "streamer_replication_slot_retained_wal_bytes": {
            ("streamer_inventory", "inventory"): 4096,
            ("gone", "inventory"): 4096,
        },
        "streamer_replication_slot_flush_lag_bytes": {("streamer_inventory", "inventory"): 3840},
        "streamer_replication_slot_active": {
            ("streamer_inventory", "inventory"): 1,
            ("gone", "inventory"): 0,
        },
        "streamer_replication_slot_warnings": {
            ("streamer_inventory", "inventory"): 0,
            ("gone", "inventory"): 1,
        },
    }
    assert [s.value for s in families["streamer_replication_slots_up"].samples] == [1.0]
