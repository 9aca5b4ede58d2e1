"""``streamer load``: bulk snapshot seeding, with its progress bars."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import ProgressColumn, Task
from rich.table import Table
from rich.text import Text

from streamer.cli.root import app, settings_of
from streamer.core.errors import (
    StreamerError,
)


# ---------------------------------------------------------------- load
@app.command("load")
def load(
    ctx: typer.Context,
    table: Annotated[
        list[str] | None,
        typer.Option(
            "--table", "-t", help="schema.table to load (repeatable; default: the connector files' tables)."
        ),
    ] = None,
    workers: Annotated[int, typer.Option(help="Parallel workers over disjoint key ranges.")] = 2,
    chunk_rows: Annotated[
        int, typer.Option(help="Rows per chunk (keyset pagination, checkpointed).")
    ] = 50_000,
    resume: Annotated[
        bool, typer.Option(help="Continue an interrupted load with the chunks not yet done.")
    ] = False,
    no_key: Annotated[
        bool, typer.Option(help="Copy tables without a primary key whole (no merge with the stream).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Seed target tables from one consistent snapshot of the source, in bulk (see README, "The loader")."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from streamer import logs
    from streamer.apply.sink import build_sink
    from streamer.load.loader import Loader, tables_from_connectors

    settings = settings_of(ctx)
    logs.configure(settings.log_format, "warning" if sys.stderr.isatty() else settings.log_level)
    tables = list(table or tables_from_connectors(settings.connectors_dir))
    if not tables:
        raise StreamerError(
            f"no tables: pass --table schema.table or add connector files to {settings.connectors_dir}"
        )
    sink = build_sink(settings)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("rows"),
        _RateColumn(),
        TimeRemainingColumn(),
    )
    try:
        with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
            loader = Loader(
                settings.source_url,
                sink,
                workers=workers,
                chunk_rows=chunk_rows,
                resume=resume,
                no_key=no_key,
                progress=progress,
                hold_timeout_s=settings.load.hold_timeout_s,
                member_expiry_s=settings.load.member_expiry_s,
            )
            reports = loader.run(tables)
    finally:
        sink.engine.dispose()
    if as_json:
        import dataclasses
        import json as _json

        print(_json.dumps([dataclasses.asdict(r) for r in reports]))
        return
    out = Table(title="streamer load")
    for col in ("table", "target", "rows", "chunks", "resumed past", "rows/s", "swept"):
        out.add_column(col)
    for r in reports:
        rate = r.rows / r.seconds if r.seconds else 0
        out.add_row(
            r.table, r.target, str(r.rows), str(r.chunks), str(r.chunks_skipped), f"{rate:,.0f}", str(r.swept)
        )
    Console().print(out)


class _RateColumn(ProgressColumn):
    """Rows per second of a task."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:>9,.0f} rows/s" if speed else "        - rows/s")
