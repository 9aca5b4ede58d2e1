"""``streamer consume`` and ``streamer replicate``: the two processes that apply changes."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from streamer.cli.root import _OPTIONS, _config_path, app, settings_of
from streamer.settings import Settings, load_settings

# ---------------------------------------------------------------- consume
LOCKED_TARGET_WAIT_S = 30.0  # how long start-up waits for another process's lock on the target


def _upgrade_target(engine: object) -> None:
    """``state.upgrade`` for consume/replicate: a target that cannot be reached is exit 3, named.

    Another process migrating the same new target at the same moment (several consumers started
    at once on SQLite, which has no migration lock) makes one of them fail on a table the other
    just created: that is tried once more, when the other's migration is committed and there is
    nothing left to do. A lock the other one holds (SQLite's "database is locked") is waited
    for, up to ``LOCKED_TARGET_WAIT_S``, before the target counts as unavailable.
    """
    import sqlalchemy as sa

    from streamer import logs
    from streamer.apply import state
    from streamer.core.errors import TargetUnavailableError, one_line
    from streamer.db import is_transient

    assert isinstance(engine, sa.engine.Engine)
    locked_until = time.monotonic() + LOCKED_TARGET_WAIT_S
    attempt, races = 0, 0
    while True:
        attempt += 1
        try:
            state.upgrade(engine)
            return
        except sa.exc.DBAPIError as exc:
            text = str(exc.orig)
            unreachable = (
                isinstance(exc, sa.exc.InterfaceError)
                or exc.connection_invalidated
                or "unable to open database" in text
                or "connect" in text.lower()
            )
            if is_transient(exc) and not unreachable and time.monotonic() < locked_until:
                # a lock another process holds (SQLite's "database is locked" while the other
                # consumer started at the same moment migrates the new target): wait for it
                time.sleep(min(0.2 * attempt, 2.0))
                continue
            if unreachable or is_transient(exc):
                raise TargetUnavailableError(
                    f"cannot reach the target {engine.url.render_as_string(hide_password=True)}: "
                    f"{one_line(text)[:500]} (check that it is running and reachable and "
                    "STREAMER_TARGET_URL is right, then run again)"
                ) from exc
            races += 1
            if races >= 2:
                raise
            logs.get("cli").warning(
                "migrating the target failed, trying once more", error=one_line(text)[:300]
            )


def _settings_with_policy(ctx: typer.Context, error_policy: str | None) -> Settings:
    """The settings, with ``--error-policy`` over ``consumer.error_policy``; logging configured."""
    from streamer import logs

    settings = settings_of(ctx)
    if error_policy is not None:
        settings = load_settings(
            overrides={"consumer": {"error_policy": error_policy}}, path=_config_path(ctx)
        )
    logs.configure(settings.log_format, settings.log_level)
    return settings


@app.command("consume")
def consume(
    ctx: typer.Context,
    group: Annotated[str | None, typer.Option(help="Consumer group (default: consumer.group).")] = None,
    topics: Annotated[
        str | None,
        typer.Option(help="Topic regex (default: consumer.topics, else from the connector files)."),
    ] = None,
    until_idle: Annotated[
        float | None, typer.Option(help="Stop after the stream has been quiet for this many seconds.")
    ] = None,
    max_events: Annotated[int | None, typer.Option(help="Stop after this many records.")] = None,
    error_policy: Annotated[
        str | None, typer.Option(help="stop or dlq (default: consumer.error_policy).")
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(help="Serve Prometheus metrics on this port (with --processes N: ports P to P+N-1)."),
    ] = None,
    processes: Annotated[
        int | None,
        typer.Option(
            min=1, help="Run N consumer processes in this group under a supervisor that restarts them."
        ),
    ] = None,
) -> None:
    """Read change events as a member of a consumer group and apply them to the target."""
    from streamer.apply.sink import build_sink
    from streamer.consume import ConsumerProcess, build_decoder

    settings = _settings_with_policy(ctx, error_policy)
    if processes is not None:  # issue 6: supervisor of N `streamer consume` children
        from streamer.ops.supervise import supervise_consume

        options = {
            "group": group,
            "topics": topics,
            "until-idle": until_idle,
            "max-events": max_events,
            "error-policy": error_policy,
        }
        if _OPTIONS["debug"]:
            os.environ["STREAMER_DEBUG"] = "1"  # the children inherit it
        raise typer.Exit(supervise_consume(processes, _config_path(ctx), options, metrics_port))
    hooks = None
    if metrics_port is not None:  # issue 6: Prometheus metrics through ConsumerProcess's hooks
        from streamer.ops.metrics import start_metrics

        settings, hooks = start_metrics(settings, group or settings.consumer.group, metrics_port)
    sink = build_sink(settings)
    try:
        _upgrade_target(sink.engine)
        proc = ConsumerProcess(
            settings,
            sink,
            build_decoder(settings),
            group=group,
            topics=topics,
            until_idle=until_idle,
            max_events=max_events,
            hooks=hooks,
        )
        stats = proc.run()
    finally:
        sink.engine.dispose()
    print(
        f"streamer: done: consumed {stats.records} records, applied {stats.events_applied} events in {stats.batches} batches, "
        f"dead-lettered {stats.dead_lettered}",
        file=sys.stderr,
    )


# ---------------------------------------------------------------- replicate (issue 7)
@app.command("replicate")
def replicate(
    ctx: typer.Context,
    slot: Annotated[str, typer.Option(help="Logical replication slot (pgoutput) to read.")],
    publication: Annotated[str, typer.Option(help="Publication naming the tables to replicate.")],
    source: Annotated[
        str | None, typer.Option(help="Source PostgreSQL URL (default: settings source_url).")
    ] = None,
    tables: Annotated[
        str | None,
        typer.Option(help="Comma-separated schema.table list for --create (publication FOR TABLE ...)."),
    ] = None,
    create: Annotated[
        bool,
        typer.Option(
            "--create",
            help="Create the publication and the slot when missing (reuse them when present); prints the "
            "slot's consistent point.",
        ),
    ] = False,
    group: Annotated[
        str | None, typer.Option(help="Name of the position in _streamer_offsets (default: the slot name).")
    ] = None,
    until_idle: Annotated[
        float | None, typer.Option(help="Stop after the stream has been quiet for this many seconds.")
    ] = None,
    max_events: Annotated[
        int | None,
        typer.Option(help="Stop after this many events (at a transaction boundary); 0: set up and exit."),
    ] = None,
    error_policy: Annotated[
        str | None, typer.Option(help="stop or dlq (default: consumer.error_policy); dlq needs --dlq-file.")
    ] = None,
    dlq_file: Annotated[
        Path | None,
        typer.Option(
            help="With --error-policy dlq: append changes that cannot be applied here (JSON lines)."
        ),
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve Prometheus metrics on this port (as consume does).")
    ] = None,
) -> None:
    """Stream a PostgreSQL logical replication slot (pgoutput) into the target, without Kafka."""
    from streamer.apply.sink import build_sink
    from streamer.replicate import ReplicationProcess

    settings = _settings_with_policy(ctx, error_policy)
    observers = []
    if metrics_port is not None:  # the runner's batches, retries and dead letters (streamer.ops.metrics)
        from streamer.ops.metrics import ConsumerMetrics

        metrics = ConsumerMetrics(group or slot)
        metrics.serve(metrics_port)
        observers.append(metrics.observer())
    sink = build_sink(settings, source_url=source or settings.source_url)
    try:
        _upgrade_target(sink.engine)
        proc = ReplicationProcess(
            settings,
            sink,
            source_url=source or settings.source_url,
            slot=slot,
            publication=publication,
            tables=[t.strip() for t in (tables or "").split(",") if t.strip()],
            create=create,
            group=group,
            until_idle=until_idle,
            max_events=max_events,
            dlq_file=dlq_file,
            report=lambda line: print(line, flush=True),
            observers=observers,
        )
        stats = proc.run()
    finally:
        sink.engine.dispose()
    print(
        f"streamer: done: replicated {stats.transactions} transactions, applied {stats.events_applied} events in "
        f"{stats.batches} batches ({stats.streamed_transactions} transactions streamed in progress), "
        f"skipped {stats.skipped_transactions} already applied, dead-lettered {stats.dead_lettered}",
        file=sys.stderr,
    )


# ---------------------------------------------------------------- end replicate
