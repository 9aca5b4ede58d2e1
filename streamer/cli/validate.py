"""``streamer validate``: source == target down to keys and columns (and ``--repair``)."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from rich.console import Console

from streamer.cli.root import app, settings_of
from streamer.core.errors import (
    StreamerError,
)
from streamer.settings import Settings


# ---------------------------------------------------------------- validate
@app.command("validate")
def validate(
    ctx: typer.Context,
    table: Annotated[
        list[str] | None,
        typer.Option(
            "--table", "-t", help="Source schema.table (repeatable; default: the connector files' tables)."
        ),
    ] = None,
    sample: Annotated[
        int | None, typer.Option(help="Compare only N random rows per table (counts stay exact).")
    ] = None,
    chunk_rows: Annotated[int, typer.Option(help="Keys per compared range (where tables differ).")] = 20_000,
    settle: Annotated[
        float,
        typer.Option(
            help="While the stream runs: re-check a differing table after this many seconds (3 tries)."
        ),
    ] = 0.0,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable result.")] = False,
    show_values: Annotated[
        bool,
        typer.Option(
            "--show-values",
            help="Also print the differing values (source and target); rows may hold personal data.",
        ),
    ] = False,
    limit: Annotated[
        int, typer.Option(help="Differences listed per table (the counts are always complete).")
    ] = 1000,
    repair: Annotated[
        bool,
        typer.Option(
            "--repair",
            help="Re-copy the differing key ranges from the source (version-guarded, safe while consumers run), "
            "then compare them again.",
        ),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="With --repair: print what would be re-copied.")
    ] = False,
    workers: Annotated[int, typer.Option(help="With --repair: parallel copy workers.")] = 2,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="Fail (exit 1) when a compared table has columns the capture cannot carry (not captured).",
        ),
    ] = False,
) -> None:
    """Prove source == target: range hashes, then the differing keys and columns.

    Exit 0 all equal, 1 a table differs, 2 a table cannot be compared.

    On a terminal: a summary table and the differences under it; otherwise plain lines
    (DIFF table=... key=... ...) that are never cut.
    """
    import json as _json
    import time as _time

    from streamer.apply.fetch import incomplete_rows, incomplete_text
    from streamer.apply.sink import build_router
    from streamer.core.events import TableId
    from streamer.db import create_target_engine
    from streamer.load.loader import tables_from_connectors
    from streamer.validate import repair as repairing
    from streamer.validate import validate_table
    from streamer.validate.report import TableResult, print_plain, print_terminal
    from streamer.validate.report import as_json as report_json

    settings = settings_of(ctx)
    if dry_run and not repair:
        raise typer.BadParameter(
            "goes with --repair: streamer validate --repair --dry-run", param_hint="--dry-run"
        )
    if repair and sample is not None:
        raise typer.BadParameter(
            "--repair needs the whole comparison, not a sample: drop --sample", param_hint="--sample"
        )
    tables = list(table or tables_from_connectors(settings.connectors_dir))
    if not tables:
        raise StreamerError(
            f"no tables: pass --table schema.table or add connector files to {settings.connectors_dir}"
        )
    source = create_target_engine(settings.source_url)
    target = create_target_engine(settings.target_url)
    router = build_router(settings, target.dialect.name)
    results: list[TableResult] = []
    try:
        database = source.url.database
        for name in tables:
            schema, _, tbl = name.rpartition(".")
            schema = schema or "public"
            route = router.route(TableId(database, schema, tbl))
            for attempt in range(3 if settle > 0 else 1):
                diff = validate_table(
                    source,
                    (schema, tbl),
                    target,
                    (route.target_schema, route.target_table),
                    rename=route.rename,
                    drop=route.drop,
                    chunk_rows=chunk_rows,
                    sample=sample,
                )
                if diff.equal or attempt == 2 or settle <= 0:
                    break
                _time.sleep(settle)
            result = TableResult(f"{schema}.{tbl}", route.qualified, diff)
            if repair and not diff.equal:
                result.repaired = repairing.plan(result.table, diff)
                if not dry_run:
                    result.repaired = _repair(
                        settings, result.repaired, source, (schema, tbl), route, settle, workers
                    )
            results.append(result)
        with target.connect() as tconn:  # rows the stream left incomplete (streamer.apply.fetch)
            names = {r.target for r in results}
            incomplete = [row.to_json() for row in incomplete_rows(tconn) if row.table in names]
    finally:
        source.dispose()
        target.dispose()
    uncaptured = [(r.table, c) for r in results for c in r.diff.not_captured]
    ok = all(r.equal for r in results) and not incomplete and not (strict and uncaptured)
    for tname, column in uncaptured:  # compared without them: a warning, an error with --strict
        print(
            f"{'error' if strict else 'warning'}: {tname}.{column} is not captured (not compared); "
            "see the NOT_CAPTURED line for the fix",
            file=sys.stderr,
        )
    if as_json:
        doc = report_json(results, limit=limit, show_values=show_values)
        doc["incomplete"] = incomplete
        doc["ok"] = ok
        print(_json.dumps(doc))
    elif sys.stdout.isatty():
        title = "streamer validate" + (f" (sample of {sample} rows per table)" if sample else "")
        print_terminal(results, limit=limit, show_values=show_values, title=title, console=Console())
    else:
        print_plain(results, limit=limit, show_values=show_values)
    if not as_json:
        for line in incomplete_text(incomplete):
            print(line)
    if not ok:
        raise typer.Exit(1)


def _repair(
    settings: Settings,
    report: Any,
    source: Any,
    source_table: tuple[str, str],
    route: Any,
    settle: float,
    workers: int,
) -> Any:
    """``validate --repair`` of one table: re-copy its differing ranges, compare them again (with --settle)."""
    import time as _time

    from streamer import logs
    from streamer.apply.sink import build_sink
    from streamer.validate import repair as repairing
    from streamer.validate import validate_table

    logs.configure(settings.log_format, "warning" if sys.stderr.isatty() else settings.log_level)
    sink = build_sink(settings)
    try:
        report = repairing.repair(
            report,
            settings.source_url,
            sink,
            source,
            source_table,
            (route.target_schema, route.target_table),
            rename=route.rename,
            drop=route.drop,
            hold_timeout_s=settings.load.hold_timeout_s,
            member_expiry_s=settings.load.member_expiry_s,
            workers=workers,
        )
        for _ in range(2 if settle > 0 else 0):
            if report.equal_after:
                break
            _time.sleep(settle)
            report.after = validate_table(
                source,
                source_table,
                sink.engine,
                (route.target_schema, route.target_table),
                rename=route.rename,
                drop=route.drop,
                ranges=report.ranges,
            )
    finally:
        sink.engine.dispose()
    return report
