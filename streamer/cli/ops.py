"""``streamer replay`` and ``streamer status``: the operator's commands."""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated

import typer
from rich.console import Console

from streamer.cli.root import app, settings_of


# ---------------------------------------------------------------- operations (issue 6): replay, status
@app.command("replay")
def replay(
    ctx: typer.Context,
    group: Annotated[str, typer.Option(help="The consumer group to move.")],
    to: Annotated[
        list[str],
        typer.Option(
            help="earliest, latest, an ISO-8601 timestamp (UTC without a zone), TOPIC:PARTITION:OFFSET "
            "positions (repeat --to, separate with commas, or list more after it), or group:NAME (start "
            "where group NAME would)."
        ),
    ],
    positions: Annotated[
        list[str] | None, typer.Argument(help="More TOPIC:PARTITION:OFFSET positions.", show_default=False)
    ] = None,
    topics: Annotated[
        str | None,
        typer.Option(help="Topic regex (default: the group's topics and the consumer's topic regex)."),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the moves; change nothing.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the moves as JSON.")] = False,
) -> None:
    """Move a group's committed Kafka offsets and the target's stored offsets together; refused while it has members."""
    from streamer.ops import replay as rp

    settings = settings_of(ctx)
    target = rp.parse_to([*to, *(positions or [])])
    plan = rp.make_plan(settings, group, target, topics)
    if as_json:
        print(json.dumps(plan.to_json(dry_run), indent=2))
    else:
        _ops_console().print(rp.render(plan, dry_run))
    if dry_run:
        rp.refuse_if_active(plan)  # a dry run reports the refusal too (exit 1)
        return
    rp.execute(settings, plan)
    print(
        f"moved group {group!r} to {plan.target} on {len(plan.moves)} partition(s): the next "
        f"consume re-reads {plan.reread} record(s) and skips {plan.skipped}",
        file=sys.stderr if as_json else sys.stdout,
    )


def _ops_console() -> Console:
    # names (tables, topics) are data, not markup; not a terminal: wide enough not to fold them
    return Console(highlight=False, markup=False, width=None if sys.stdout.isatty() else 200)


@app.command("status")
def status(
    ctx: typer.Context,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON (schema: streamer/ops/status.py).")
    ] = False,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh in place until Ctrl-C.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes with --watch.")] = 2.0,
    group: Annotated[str | None, typer.Option(help="Consumer group (default: consumer.group).")] = None,
    topics: Annotated[
        str | None,
        typer.Option(help="Topic regex (default: the group's topics and the consumer's topic regex)."),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            help="Serve the replication slots' Prometheus gauges on this port until Ctrl-C (with --watch too)."
        ),
    ] = None,
) -> None:
    """Connectors and tasks, the consumer group, offsets and true lag per partition, table positions, dead
    letters, the source's replication slots (owner, retained WAL, flush lag).

    Exit 1 when a part cannot be read, a connector is not RUNNING, or a slot is inactive or retains more WAL
    than status.max_retained_wal_bytes (not with --watch or --metrics-port).
    """
    from streamer.ops import status as st

    settings = settings_of(ctx)
    if metrics_port is not None:
        from streamer.ops.metrics import serve_slot_metrics

        serve_slot_metrics(settings, metrics_port)
        if not watch:
            print(f"serving replication slot metrics on http://0.0.0.0:{metrics_port}/metrics (Ctrl-C stops)")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                return
    if watch:
        st.watch(settings, group, topics, interval, _ops_console())
        return
    doc = st.collect(settings, group, topics)
    if as_json:
        print(st.to_json(doc))
    else:
        _ops_console().print(st.render(doc))
    if not doc["ok"]:
        raise typer.Exit(1)


# ---------------------------------------------------------------- end operations
