"""``streamer connectors ...``: connector files validated, planned and applied through Kafka Connect."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from streamer.cli.root import _err, _say, app, settings_of
from streamer.core.errors import (
    ConnectError,
    ConnectorFailedError,
    ConnectorFileError,
    SettingsError,
)

if TYPE_CHECKING:
    from streamer.connect import files as connectors
    from streamer.connect.client import ConnectClient

# the connector modules (httpx, tenacity) are imported by the commands that use them, so that every
# other command (load, consume, ...) starts without them
# ---------------------------------------------------------------- connectors (issue 8)
connectors_app = typer.Typer(
    help="Connectors as files: validate, plan and apply connectors/*.json on Kafka Connect.",
    no_args_is_help=True,
)
app.add_typer(connectors_app, name="connectors")

ConnectorsDirOption = Annotated[
    Path | None,
    typer.Option("--dir", help="Directory of connector files (default: settings connectors_dir)."),
]
ConnectUrlOption = Annotated[
    str | None, typer.Option("--connect-url", help="Kafka Connect REST URL (default: settings connect_url).")
]
ConnectTimeoutOption = Annotated[
    float,
    typer.Option(
        "--connect-timeout", help="Seconds to keep retrying while Connect is unreachable or rebalancing."
    ),
]


def _connectors_setup(
    ctx: typer.Context, directory: Path | None, url: str | None, timeout: float
) -> tuple[Path, ConnectClient]:
    from streamer.connect.client import ConnectClient

    settings = settings_of(ctx)
    return directory or settings.connectors_dir, ConnectClient(url or settings.connect_url, timeout=timeout)


def _load_connector_files(directory: Path) -> list[connectors.ConnectorFile]:
    from streamer.connect import files as connectors

    files = connectors.load_dir(directory)
    for warning in connectors.literal_secrets(files):
        _err().print(Text(f"warning: {warning}", style="yellow"))
    if not files:
        _err().print(Text(f"no connector files (*.json) in {directory}", style="yellow"))
    return files


@connectors_app.command("validate")
def connectors_validate(
    ctx: typer.Context,
    directory: ConnectorsDirOption = None,
    connect_url: ConnectUrlOption = None,
    connect_timeout: ConnectTimeoutOption = 30.0,
) -> None:
    """Check every file's syntax and shape, then ask Connect to validate each config. Pushes nothing."""
    from streamer.connect import files as connectors

    directory, client = _connectors_setup(ctx, directory, connect_url, connect_timeout)
    files = _load_connector_files(directory)
    with client:
        connectors.validate(client, files)
    for f in files:
        _say(f"= valid {f.name}  ({f.path})")
    _say_dropped_columns(files, settings_of(ctx).source_url)
    _say(f"{len(files)} connector file(s) valid on {client.url}")


def _say_dropped_columns(files: Sequence[connectors.ConnectorFile], source_url: str) -> None:
    """Issue 13: captured columns whose type the connector drops (streamer.connect.publications)."""
    from streamer.connect.publications import dropped_columns

    for item in dropped_columns(files, source_url):
        _say(item if isinstance(item, str) else item.line())


@connectors_app.command("plan")
def connectors_plan(
    ctx: typer.Context,
    directory: ConnectorsDirOption = None,
    connect_url: ConnectUrlOption = None,
    connect_timeout: ConnectTimeoutOption = 30.0,
    prune: Annotated[
        bool, typer.Option(help="Also plan deleting this scope's connectors that have no file.")
    ] = False,
) -> None:
    """Compare the files with the worker: + create, ~ update (key by key), = unchanged, - delete (with --prune)."""
    from streamer.connect import files as connectors

    directory, client = _connectors_setup(ctx, directory, connect_url, connect_timeout)
    files = _load_connector_files(directory)
    with client:
        plan = connectors.make_plan(files, client.configs(), connectors.scope_of(directory), prune)
    for line in plan.render():
        _say(line)
    from streamer.connect.publications import plan_publications  # issue 13: partitioned tables

    for step in plan_publications(files, settings_of(ctx).source_url):
        _say(step if isinstance(step, str) else step.line())
    _say_dropped_columns(files, settings_of(ctx).source_url)


@connectors_app.command("apply")
def connectors_apply(
    ctx: typer.Context,
    directory: ConnectorsDirOption = None,
    connect_url: ConnectUrlOption = None,
    connect_timeout: ConnectTimeoutOption = 30.0,
    prune: Annotated[
        bool, typer.Option(help="Delete this scope's connectors (streamer.scope marker) that have no file.")
    ] = False,
    wait: Annotated[
        float | None,
        typer.Option(
            help="Wait up to SECONDS until every connector and task is RUNNING; FAILED exits 1 with the trace."
        ),
    ] = None,
) -> None:
    """Validate, then create/update only what differs (Connect restarts a connector on every PUT), prune, wait."""
    from streamer.connect import files as connectors

    directory, client = _connectors_setup(ctx, directory, connect_url, connect_timeout)
    files = _load_connector_files(directory)
    scope = connectors.scope_of(directory)
    with client:
        masker = connectors.Masker(f.config for f in files)
        connectors.validate(client, files, masker)
        current = client.configs()
        for config in current.values():
            masker.add(config)
        plan = connectors.make_plan(files, current, scope, prune)
        for line in plan.render():
            _say(line)
        changed = {a.name for a in plan.actions if a.writes}
        try:
            before = connectors.failed_traces(client, [a.name for a in plan.of("update")])
            from streamer.connect.publications import (
                apply_publications,  # issue 13: before the connectors start
            )

            apply_publications(files, settings_of(ctx).source_url, _say)
            if plan.changes_anything:
                connectors.execute(client, plan, _say)
            else:
                _say("= nothing to change")
            if wait is not None and files:
                _say(f"waiting up to {wait:g}s for {len(files)} connector(s) to be RUNNING")
                targets = {f.name: f.desired(scope) for f in files}
                created = {a.name for a in plan.of("create")}
                connectors.wait_running(client, targets, changed, wait, _say, masker, before, created)
        except ConnectError as exc:
            raise type(exc)(masker.scrub(str(exc))) from None
    counts = {k: len(plan.of(k)) for k in ("create", "update", "unchanged", "delete")}
    _say(
        f"Apply complete: {counts['create']} created, {counts['update']} updated, "
        f"{counts['unchanged']} unchanged, {counts['delete']} deleted."
    )


@connectors_app.command("status")
def connectors_status(
    ctx: typer.Context,
    directory: ConnectorsDirOption = None,
    connect_url: ConnectUrlOption = None,
    connect_timeout: ConnectTimeoutOption = 30.0,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON (with full traces) instead of a table.")
    ] = False,
    everything: Annotated[
        bool,
        typer.Option("--all", help="Every connector on the worker, not only the files' and this scope's."),
    ] = False,
) -> None:
    """Each connector: state, tasks, worker ids, topics. Exit 1 if one is absent, FAILED or not yet RUNNING."""
    from streamer.connect import files as connectors

    directory, client = _connectors_setup(ctx, directory, connect_url, connect_timeout)
    files = _load_connector_files(directory) if directory.is_dir() or not everything else []
    with client:
        reports, masker = connectors.collect_status(client, files, connectors.scope_of(directory), everything)
    if as_json:
        print(json.dumps([r.to_json(masker) for r in reports], indent=2))
    else:
        table = Table(title=f"connectors on {client.url}")
        for col in ("connector", "state", "worker", "tasks", "topics"):
            table.add_column(col, overflow="fold")
        for r in reports:
            st = r.status
            state = st.state if st else "ABSENT"
            color = "green" if state == "RUNNING" else "red" if state in ("FAILED", "ABSENT") else "yellow"
            tasks = "\n".join(f"{t.id} {t.state} @{t.worker_id}" for t in st.tasks) if st else ""
            table.add_row(
                r.name, Text(state, style=color), st.worker_id if st else "", tasks, "\n".join(r.topics)
            )
        # not a terminal (CI logs, pipes): wide enough that topic names are not folded
        Console(highlight=False, width=None if sys.stdout.isatty() else 200).print(table)
        for r in reports:
            for line in _trace_summaries(r, masker):
                _err().print(Text(line, style="red"))
    bad = [r for r in reports if not r.ok]
    if bad:
        states = "; ".join(f"{r.name}: {connectors.state_line(r.status)}" for r in bad)
        raise ConnectorFailedError(f"{len(bad)} connector(s) not RUNNING: {states}")


def _trace_summaries(report: connectors.ConnectorReport, masker: connectors.Masker) -> list[str]:
    """For each FAILED instance: its trace's first line and its last 'Caused by' line."""
    st = report.status
    if st is None:
        return []
    out = []
    for label, trace in [("connector", st.trace if st.state == "FAILED" else None)] + [
        (f"task {t.id}", t.trace) for t in st.tasks if t.state == "FAILED"
    ]:
        if not trace:
            continue
        lines = [ln for ln in masker.scrub(trace).splitlines() if ln.strip()]
        causes = [ln for ln in lines if ln.startswith("Caused by:")]
        summary = lines[0] + (f" ... {causes[-1]}" if causes else "")
        out.append(f"{report.name} {label} FAILED: {summary} (full trace: --json)")
    return out


ConnectorName = Annotated[str, typer.Argument(help="The connector's name on the worker.")]


@connectors_app.command("restart")
def connectors_restart(
    ctx: typer.Context,
    name: ConnectorName,
    directory: ConnectorsDirOption = None,
    connect_url: ConnectUrlOption = None,
    connect_timeout: ConnectTimeoutOption = 30.0,
    all_instances: Annotated[
        bool, typer.Option("--all", help="Restart the connector and every task, not only the failed ones.")
    ] = False,
) -> None:
    """Restart a connector's failed instances (connector and tasks); --all restarts running ones too."""
    _, client = _connectors_setup(ctx, directory, connect_url, connect_timeout)
    with client:
        status = client.restart(name, only_failed=not all_instances)
    if status is None:
        _say(f"~ restarted {name}")
        return
    states = [f"connector {status.state}"] + [f"task {t.id} {t.state}" for t in status.tasks]
    if "RESTARTING" in {status.state, *(t.state for t in status.tasks)}:
        _say(f"~ restarting {name}: {', '.join(states)}")
    else:
        _say(f"= nothing failed in {name} ({', '.join(states)}); --all restarts running instances too")


@connectors_app.command("pause")
def connectors_pause(
    ctx: typer.Context,
    name: ConnectorName,
    directory: ConnectorsDirOption = None,
    connect_url: ConnectUrlOption = None,
    connect_timeout: ConnectTimeoutOption = 30.0,
) -> None:
    """Pause a connector and its tasks (apply --wait reports it as PAUSED until resumed)."""
    _, client = _connectors_setup(ctx, directory, connect_url, connect_timeout)
    with client:
        client.pause(name)
    _say(f"~ pause requested for {name}")


@connectors_app.command("resume")
def connectors_resume(
    ctx: typer.Context,
    name: ConnectorName,
    directory: ConnectorsDirOption = None,
    connect_url: ConnectUrlOption = None,
    connect_timeout: ConnectTimeoutOption = 30.0,
) -> None:
    """Resume a paused connector and its tasks."""
    _, client = _connectors_setup(ctx, directory, connect_url, connect_timeout)
    with client:
        client.resume(name)
    _say(f"~ resume requested for {name}")


@connectors_app.command("delete")
def connectors_delete(
    ctx: typer.Context,
    name: ConnectorName,
    directory: ConnectorsDirOption = None,
    connect_url: ConnectUrlOption = None,
    connect_timeout: ConnectTimeoutOption = 30.0,
    drop_slot: Annotated[
        bool,
        typer.Option(
            "--drop-slot",
            help="Debezium PostgreSQL: once the connector is gone, drop its replication slot and publication "
            "(source_url's server; refused while the slot is still read).",
        ),
    ] = False,
    slot_wait: Annotated[
        float,
        typer.Option(
            help="With --drop-slot: seconds to wait for the slot to become inactive after the delete."
        ),
    ] = 30.0,
) -> None:
    """Delete a connector from the worker (its file, if any, stays: the next apply creates it again)."""
    from streamer.connect import files as connectors
    from streamer.ops import slots

    settings = settings_of(ctx)
    directory, client = _connectors_setup(ctx, directory, connect_url, connect_timeout)
    with client:
        config = client.config(name)
        is_pg = slots.is_postgres_connector(config)
        slot, publication = slots.slot_of(config), slots.publication_of(config)
        if drop_slot:  # refuse before deleting anything when the slot cannot be dropped from here
            if not is_pg:
                raise ConnectError(
                    f"connector {name} is a {config.get('connector.class', '?')}, not a Debezium PostgreSQL "
                    "connector: it has no replication slot to drop (run again without --drop-slot)"
                )
            if not slots.is_postgres_url(settings.source_url):
                raise SettingsError(
                    f"--drop-slot drops {slot!r} through source_url, which is not PostgreSQL: set "
                    "source_url (STREAMER_SOURCE_URL) to the connector's database server"
                )
            mismatch = slots.server_mismatch(config, settings.source_url)
            if mismatch:
                raise SettingsError(f"connector {name} not deleted: {mismatch}")
        client.delete(name)
        _say(f"- deleted {name}")
        if drop_slot:
            deadline = time.monotonic() + slot_wait
            while name in client.connectors() and time.monotonic() < deadline:
                time.sleep(0.5)
            database = config.get("database.dbname")
            slots.drop_slot_and_publication(
                settings.source_url,
                name,
                slot,
                publication,
                database if database and "${" not in database else None,
                max(0.0, deadline - time.monotonic()),
                _say,
            )
    if is_pg and not drop_slot:
        q = slot.replace("'", "''")
        _say(
            f"note: replication slot {slot!r} and publication {publication!r} stay in the source database "
            f"(the slot keeps WAL): if {name} is gone for good, run "
            f"SELECT pg_drop_replication_slot('{q}'); DROP PUBLICATION \"{publication}\"; "
            f"(or delete with --drop-slot)"
        )
    try:
        still = [f for f in connectors.load_dir(directory) if f.name == name] if directory.is_dir() else []
    except ConnectorFileError:
        still = []
    for f in still:
        _say(f"note: {f.path} still defines {name}: the next apply creates it again")


# ---------------------------------------------------------------- end connectors
