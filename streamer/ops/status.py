"""``streamer status``: one view of the pipeline, as a table, as JSON (``--json``) or live (``--watch``).

Sections, each read independently (one that cannot be read carries an ``error`` and the others
are still shown):

* Kafka Connect: each connector of the connector files (and orphans of their scope), its state,
  worker and tasks; "unreachable" when Connect does not answer.
* The consumer group: state, members, each member's assignment (``null`` when the broker does not
  report it: the local broker does not).
* Per topic-partition of the group's topics (see :func:`streamer.ops.groups.group_topics`): the
  committed Kafka offset, the target's stored offset, the position the consumer resumes from (the
  larger of the two), the log's start and true end (from a fetch, exact on the local broker too)
  and the lag (end - position).
* Per target table: the newest source position applied (``_streamer_tables``) and when.
* The dead-letter topic (``consumer.dlq_topic``): records in it (true end - start).
* The source's replication slots (those matching ``status.slots``, default all): plugin, active
  or not, the connector that owns it (the Debezium PostgreSQL connectors, on the worker or in the
  files, whose ``slot.name`` it is), the WAL it retains (current LSN - ``restart_lsn``) and its
  confirmed-flush lag (current LSN - ``confirmed_flush_lsn``), in bytes. An inactive slot, one
  retaining more than ``status.max_retained_wal_bytes`` (1 GiB), one whose WAL is lost and one
  named by two connectors carry warnings and make ``ok`` false (see :mod:`streamer.ops.slots`).

JSON schema (``--json``; ``schema`` is bumped on any incompatible change)::

    {
      "schema": 1,
      "generated_at": str,                 # ISO-8601 UTC
      "group": str,
      "ok": bool,                          # every section read, every connector RUNNING (or PAUSED/STOPPED)
      "broker": {"bootstrap_servers": str, "reachable": bool, "error": str | null},
      "connect": {"url": str, "reachable": bool, "error": str | null,
                  "connectors": [{"name": str, "state": str,      # RUNNING, FAILED, ..., ABSENT
                                  "worker_id": str | null,
                                  "tasks": [{"id": int, "state": str, "worker_id": str}],
                                  "topics": [str],
                                  "ok": bool}]},         # RUNNING, or deliberately PAUSED/STOPPED
      "consumer_group": {"state": str | null,  # STABLE, EMPTY, PREPARING_REBALANCE, ...
                         "members": [{"member_id": str, "client_id": str, "host": str,
                                      "instance_id": str | null,
                                      "assignment": [{"topic": str, "partition": int}] | null}],
                         "error": str | null},
      "partitions": [{"topic": str, "partition": int,
                      "committed": int | null,   # Kafka
                      "stored": int | null,      # target's _streamer_offsets
                      "position": int,           # where the consumer resumes
                      "start": int, "end": int,  # log start, true end (high watermark)
                      "lag": int}],              # end - position
      "lag": int | null,                   # sum over partitions (null when the broker was not read)
      "target": {"url": str, "reachable": bool, "error": str | null},   # password masked
      "tables": [{"table": str, "last_position": str | null, "updated_at": str | null}],
      "dead_letters": {"topic": str, "exists": bool, "records": int | null},  # null: broker not read
      "source": {"url": str, "kind": str, "reachable": bool, "error": str | null},  # password masked
      "slots": [{"name": str, "plugin": str | null, "type": str, "database": str | null,
                 "active": bool, "active_pid": int | null,
                 "restart_lsn": str | null, "confirmed_flush_lsn": str | null,
                 "wal_status": str | null,          # reserved, extended, unreserved, lost
                 "retained_wal_bytes": int | null,  # current LSN - restart_lsn
                 "flush_lag_bytes": int | null,     # current LSN - confirmed_flush_lsn
                 "owners": [{"connector": str, "on_worker": bool, "file": str | null}],
                 "warnings": [str],
                 "ok": bool}],                      # no warnings
      "max_retained_wal_bytes": int                 # status.max_retained_wal_bytes
    }

Slots are read only when ``source_url`` is PostgreSQL (``kind`` is then ``postgresql``; otherwise
``slots`` is empty and ``reachable`` false without an error).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import time
from typing import Any

import sqlalchemy as sa
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from streamer.apply import state
from streamer.apply.fetch import incomplete_rows, incomplete_text
from streamer.connect import files as connectors
from streamer.connect.client import ConnectClient
from streamer.core.errors import StreamerError
from streamer.db import create_target_engine
from streamer.ops import groups, slots
from streamer.ops.groups import TP
from streamer.settings import Settings

SCHEMA_VERSION = 1
CONNECT_TIMEOUT = 3.0


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _masked(url: str) -> str:
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "<unparseable url>"


def _connect_section(
    settings: Settings,
) -> tuple[dict[str, Any], dict[str, dict[str, str]], list[connectors.ConnectorFile]]:
    """The Connect section, the worker's connector configs (empty when unreachable) and the files."""
    out: dict[str, Any] = {"url": settings.connect_url, "reachable": False, "error": None, "connectors": []}
    worker: dict[str, dict[str, str]] = {}
    directory = settings.connectors_dir
    files: list[connectors.ConnectorFile] = []
    if directory.is_dir():
        try:
            files = connectors.load_dir(directory)
        except StreamerError as exc:
            out["error"] = f"connector files: {exc}"
    try:
        with ConnectClient(settings.connect_url, timeout=CONNECT_TIMEOUT, request_timeout=5.0) as client:
            reports, _ = connectors.collect_status(client, files, connectors.scope_of(directory))
            worker = client.configs()
    except StreamerError as exc:
        out["error"] = f"unreachable: {exc}"
        return out, worker, files
    out["reachable"] = True
    for r in reports:
        st = r.status
        out["connectors"].append(
            {
                "name": r.name,
                "state": st.state if st else "ABSENT",
                "worker_id": st.worker_id if st else None,
                "tasks": [
                    {"id": t.id, "state": t.state, "worker_id": t.worker_id} for t in (st.tasks if st else ())
                ],
                "topics": list(r.topics),
                "ok": r.ok,
            }
        )
    return out, worker, files


def slots_section(
    settings: Settings,
    worker: dict[str, dict[str, str]] | None = None,
    files: list[connectors.ConnectorFile] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The source (reachable or not) and its replication slots with owners and warnings.

    ``worker`` (Connect's configs) and ``files`` (the connector files) name the owners; when not
    given they are read here (Connect unreachable: owners from the files only).
    """
    url = settings.source_url
    source: dict[str, Any] = {"url": _masked(url), "kind": "?", "reachable": False, "error": None}
    if not slots.is_postgres_url(url):
        try:
            source["kind"] = sa.engine.make_url(url).get_backend_name()
        except sa.exc.ArgumentError:
            source["error"] = "source_url is not a database URL"
        return source, []
    source["kind"] = "postgresql"
    if files is None:
        files = []
        if settings.connectors_dir.is_dir():
            try:
                files = connectors.load_dir(settings.connectors_dir)
            except StreamerError:
                files = []  # the Connect section reports the files' errors
    if worker is None:
        try:
            with ConnectClient(settings.connect_url, timeout=CONNECT_TIMEOUT, request_timeout=5.0) as client:
                worker = client.configs()
        except StreamerError:
            worker = {}
    try:
        found = slots.read_slots(url)
    except StreamerError as exc:
        source["error"] = str(exc)
        return source, []
    source["reachable"] = True
    owners = slots.slot_owners(worker, [(f.name, str(f.path), f.config) for f in files])
    pattern = re.compile(settings.status.slots)
    limit = settings.status.max_retained_wal_bytes
    out = []
    for slot in found:
        if not pattern.search(slot.name):
            continue
        mine = owners.get(slot.name, [])
        warnings = slots.slot_warnings(slot, mine, limit)
        entry: dict[str, Any] = dataclasses.asdict(slot)
        entry["owners"] = [o.to_json() for o in mine]
        entry["warnings"] = warnings
        entry["ok"] = not warnings
        out.append(entry)
    return source, out


def _target_section(
    settings: Settings, group: str
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[TP, int]]:
    info: dict[str, Any] = {
        "url": _masked(settings.target_url),
        "reachable": False,
        "error": None,
        "incomplete": [],  # rows left incomplete (streamer.apply.fetch)
    }
    tables: list[dict[str, Any]] = []
    stored: dict[TP, int] = {}
    try:
        engine = create_target_engine(settings.target_url)
    except Exception as exc:  # bad URL, missing driver
        info["error"] = _first_line(exc)
        return info, tables, stored
    try:
        with engine.connect() as conn:
            info["reachable"] = True
            insp = sa.inspect(conn)
            info["incomplete"] = [r.to_json() for r in incomplete_rows(conn, 100)]  # issue 13
            if insp.has_table(state.offsets_table.name):
                stored = state.load_offsets(conn, group)
            if insp.has_table(state.tables_table.name):
                positions = state.table_positions(conn)
                t = state.tables_table
                updated = {
                    r.table_name: r.updated_at
                    for r in conn.execute(sa.select(t.c.table_name, t.c.updated_at))
                }
                for name in sorted(positions):
                    when = updated.get(name)
                    tables.append(
                        {
                            "table": name,
                            "last_position": positions[name],
                            "updated_at": when.replace(tzinfo=dt.UTC).isoformat() if when else None,
                        }
                    )
    except sa.exc.SQLAlchemyError as exc:
        info["error"] = _first_line(exc)
    finally:
        engine.dispose()
    return info, tables, stored


def collect(settings: Settings, group: str | None = None, topics: str | None = None) -> dict[str, Any]:
    """Read every section; never raises for an unreachable part (see the module docstring)."""
    group = group or settings.consumer.group
    bootstrap = settings.bootstrap_servers
    doc: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "group": group,
        "ok": False,
        "broker": {"bootstrap_servers": bootstrap, "reachable": False, "error": None},
        "connect": {},
        "consumer_group": {"state": None, "members": [], "error": None},
        "partitions": [],
        "lag": None,
        "tables": [],
        "dead_letters": {
            "topic": settings.consumer.dlq_topic,
            "exists": False,
            "records": None,
        },
    }
    doc["connect"], worker, files = _connect_section(settings)
    doc["source"], doc["slots"] = slots_section(settings, worker, files)
    doc["max_retained_wal_bytes"] = settings.status.max_retained_wal_bytes
    target, doc["tables"], stored = _target_section(settings, group)
    doc["target"] = target
    try:
        admin = groups.admin_client(bootstrap)
        md = groups.metadata(admin, bootstrap)
        doc["broker"]["reachable"] = True
        try:
            described = groups.describe_group(bootstrap, group)
            doc["consumer_group"]["state"] = described.state
            doc["consumer_group"]["members"] = [m.to_json() for m in described.members]
        except StreamerError as exc:
            doc["consumer_group"]["error"] = str(exc)
        committed = groups.committed_offsets(admin, group)
        regex = topics or groups.consumer_regex(settings)
        names = groups.group_topics(
            md, regex, {t for t, _ in committed} | {t for t, _ in stored}, explicit_regex=topics is not None
        )
        parts = groups.partitions_of(md, names)
        dlq = settings.consumer.dlq_topic
        dlq_parts = groups.partitions_of(md, [dlq])
        marks = groups.true_watermarks(bootstrap, [*parts, *dlq_parts])
        total = 0
        for t, p in parts:
            wm = marks[(t, p)]
            pos = groups.effective_position(committed.get((t, p)), stored.get((t, p)), wm.low)
            lag = max(0, wm.high - pos)
            total += lag
            doc["partitions"].append(
                {
                    "topic": t,
                    "partition": p,
                    "committed": committed.get((t, p)),
                    "stored": stored.get((t, p)),
                    "position": pos,
                    "start": wm.low,
                    "end": wm.high,
                    "lag": lag,
                }
            )
        doc["lag"] = total
        doc["dead_letters"]["exists"] = bool(dlq_parts)
        doc["dead_letters"]["records"] = sum(marks[tp].records for tp in dlq_parts)
    except StreamerError as exc:
        doc["broker"]["error"] = str(exc)
    doc["ok"] = bool(
        doc["broker"]["reachable"]
        and doc["broker"]["error"] is None
        and doc["connect"]["reachable"]
        and doc["connect"]["error"] is None
        and all(c["ok"] for c in doc["connect"]["connectors"])
        and target["reachable"]
        and target["error"] is None
        and not target["incomplete"]
        and doc["consumer_group"]["error"] is None
        and doc["source"]["error"] is None
        and (doc["source"]["reachable"] or doc["source"]["kind"] != "postgresql")
        and all(sl["ok"] for sl in doc["slots"])
    )
    return doc


def to_json(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=False)


# ---------------------------------------------------------------- rendering
_GOOD = {"RUNNING", "STABLE", "EMPTY"}
_WARN = {"PAUSED", "STOPPED", "UNASSIGNED", "RESTARTING", "PREPARING_REBALANCE", "COMPLETING_REBALANCE"}


def _state(text: str | None) -> Text:
    value = text or "?"
    return Text(value, style="green" if value in _GOOD else "yellow" if value in _WARN else "red")


def render(doc: dict[str, Any]) -> RenderableType:
    parts: list[RenderableType] = []
    head = Text(f"streamer status  group {doc['group']}  at {doc['generated_at']}  ", style="bold")
    head.append("OK" if doc["ok"] else "ATTENTION", style="green" if doc["ok"] else "red")
    parts.append(head)

    connect = doc["connect"]
    ct = Table(title=f"Kafka Connect {connect['url']}", title_justify="left", expand=False)
    for col in ("connector", "state", "worker", "tasks"):
        ct.add_column(col, overflow="fold")
    if not connect["reachable"]:
        ct.add_row("-", Text("UNREACHABLE", style="red"), "-", connect["error"] or "")
    for c in connect["connectors"]:
        tasks = Text()
        for i, t in enumerate(c["tasks"]):
            if i:
                tasks.append("\n")
            tasks.append(f"{t['id']} ")
            tasks.append_text(_state(t["state"]))
            tasks.append(f" @{t['worker_id']}")
        ct.add_row(c["name"], _state(c["state"]), c["worker_id"] or "-", tasks)
    if connect["reachable"] and not connect["connectors"]:
        ct.add_row("(none)", "", "", "")
    parts.append(ct)
    if connect["reachable"] and connect["error"]:
        parts.append(Text(connect["error"], style="red"))

    cg = doc["consumer_group"]
    gt = Table(title=f"consumer group {doc['group']}", title_justify="left")
    for col in ("state", "member", "client / host", "assignment"):
        gt.add_column(col, overflow="fold")
    if cg["error"] or not doc["broker"]["reachable"]:
        gt.add_row(Text("UNKNOWN", style="red"), "", "", cg["error"] or doc["broker"]["error"] or "")
    elif not cg["members"]:
        gt.add_row(_state(cg["state"]), "(no members)", "", "")
    for i, m in enumerate(cg["members"]):
        assignment = (
            "not reported by the broker"
            if m["assignment"] is None
            else ", ".join(f"{a['topic']}[{a['partition']}]" for a in m["assignment"]) or "(none)"
        )
        who = " / ".join(x for x in (m["client_id"], m["host"]) if x) or "-"
        gt.add_row(_state(cg["state"]) if i == 0 else Text(""), m["member_id"], who, assignment)
    parts.append(gt)

    pt = Table(
        title=f"partitions (total lag {doc['lag'] if doc['lag'] is not None else '?'})", title_justify="left"
    )
    for col in ("topic", "partition", "committed", "stored", "end", "lag"):
        pt.add_column(col, justify="right" if col not in ("topic",) else "left", overflow="fold")
    for p in doc["partitions"]:
        pt.add_row(
            p["topic"],
            str(p["partition"]),
            "-" if p["committed"] is None else str(p["committed"]),
            "-" if p["stored"] is None else str(p["stored"]),
            str(p["end"]),
            Text(str(p["lag"]), style="green" if p["lag"] == 0 else "yellow"),
        )
    if doc["broker"]["error"]:
        pt.add_row(Text("broker: " + doc["broker"]["error"], style="red"), "", "", "", "", "")
    parts.append(pt)

    tt = Table(title=f"target {doc['target']['url']}", title_justify="left")
    for col in ("table", "last applied position", "updated at"):
        tt.add_column(col, overflow="fold")
    if doc["target"]["error"]:
        tt.add_row(Text(doc["target"]["error"], style="red"), "", "")
    for t in doc["tables"]:
        tt.add_row(t["table"], t["last_position"] or "-", t["updated_at"] or "-")
    parts.append(tt)
    for note in incomplete_text(doc["target"].get("incomplete", [])):  # issue 13: streamer.apply.fetch
        parts.append(Text(note, style="red"))

    dl = doc["dead_letters"]
    records = dl["records"]
    line = Text(f"dead-letter topic {dl['topic']}: ")
    if not dl["exists"]:
        line.append("absent (no dead letters)" if doc["broker"]["reachable"] else "unknown")
    else:
        line.append(f"{records} record(s)", style="green" if not records else "red")
    parts.append(line)
    parts.extend(render_slots(doc))
    return Group(*parts)


def slot_rows(doc: dict[str, Any]) -> list[tuple[str, str, str, str, str, str]]:
    """The slots table's cells: slot, plugin, active, connector, retained WAL, flush lag."""
    rows = []
    for sl in doc["slots"]:
        owners = ", ".join(o["connector"] + ("" if o["on_worker"] else " (file only)") for o in sl["owners"])
        active = f"yes (pid {sl['active_pid']})" if sl["active"] else "NO"
        rows.append(
            (
                sl["name"],
                sl["plugin"] or sl["type"],
                active,
                owners or "-",
                slots.human_bytes(sl["retained_wal_bytes"]),
                slots.human_bytes(sl["flush_lag_bytes"]),
            )
        )
    return rows


def slot_warning_lines(doc: dict[str, Any]) -> list[str]:
    """One line per warning, ``slot NAME: ...``, never cut (printed below the table)."""
    return [f"slot {sl['name']}: {w}" for sl in doc["slots"] for w in sl["warnings"]]


def render_slots(doc: dict[str, Any]) -> list[RenderableType]:
    source = doc["source"]
    limit = slots.human_bytes(doc["max_retained_wal_bytes"])
    # the heading is a line of its own: a table title wraps at the table's width
    head = Text(
        f"replication slots of {source['url']} (warning: inactive, or above {limit} retained WAL)",
        style="italic",
    )
    st = Table()
    for col in ("slot", "plugin", "active", "connector", "retained WAL", "flush lag"):
        st.add_column(
            col, justify="right" if col in ("retained WAL", "flush lag") else "left", overflow="fold"
        )
    if source["error"]:
        st.add_row(Text(source["error"], style="red"), "", "", "", "", "")
    elif source["kind"] != "postgresql":
        st.add_row(f"(source is {source['kind']}: no replication slots)", "", "", "", "", "")
    elif not doc["slots"]:
        st.add_row("(none)", "", "", "", "", "")
    for sl, row in zip(doc["slots"], slot_rows(doc), strict=True):
        style = "" if sl["ok"] else "red"
        st.add_row(*(Text(cell, style=style) for cell in row))
    out: list[RenderableType] = [head, st]
    out.extend(Text(line, style="red") for line in slot_warning_lines(doc))
    return out


def watch(
    settings: Settings, group: str | None, topics: str | None, interval: float, console: Console
) -> None:
    """Refresh the view in place every ``interval`` seconds until interrupted."""
    with Live(render(collect(settings, group, topics)), console=console, auto_refresh=False) as live:
        try:
            while True:
                time.sleep(interval)
                live.update(render(collect(settings, group, topics)), refresh=True)
        except KeyboardInterrupt:
            pass
