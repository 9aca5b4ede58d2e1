"""``streamer db ...``: streamer's own tables in the target (upgrade, prepare)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from streamer.cli.root import app, sa_url_database, settings_of

# ---------------------------------------------------------------- db
db_app = typer.Typer(help="streamer's own tables in the target database.", no_args_is_help=True)
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context) -> None:
    """Create or upgrade streamer's state tables in the target (Alembic migrations)."""
    from streamer.apply import state
    from streamer.db import create_target_engine

    engine = create_target_engine(settings_of(ctx).target_url)
    try:
        print(f"target schema at revision {state.upgrade(engine)}")
    finally:
        engine.dispose()


@db_app.command("prepare")
def db_prepare(
    ctx: typer.Context,
    table: Annotated[
        list[str],
        typer.Option(
            "--table", "-t", help="Source schema.table (repeatable); routed as the consumer routes it."
        ),
    ],
    apply: Annotated[bool, typer.Option("--apply", help="Run the DDL (else only print it).")] = False,
) -> None:
    """Print the DDL a managed (user-migrated) target table lacks for streamer; --apply runs it.

    Prints nothing for a table that has everything. Warnings (foreign keys checked per statement)
    go to stderr. A missing table or primary key is an error naming the table.
    """
    from streamer.apply.prepare import prepare
    from streamer.apply.sink import build_router
    from streamer.core.events import TableId
    from streamer.db import create_target_engine

    settings = settings_of(ctx)
    engine = create_target_engine(settings.target_url)
    try:
        router = build_router(settings, engine.dialect.name)
        database = sa_url_database(settings.source_url)
        routes = []
        for name in table:
            schema, _, tbl = name.rpartition(".")
            routes.append(router.route(TableId(database, schema or "public", tbl)))
        found = prepare(engine, routes, settings.consumer.version_column, apply=apply)
    finally:
        engine.dispose()
    for prepared in found:
        for line in prepared.warnings:
            print(f"warning: {line}", file=sys.stderr)
        for stmt in prepared.statements:
            print(f"{stmt};")
    if apply:
        ran = sum(len(p.statements) for p in found)
        print(f"-- applied {ran} statement(s)" if ran else "-- nothing to apply", file=sys.stderr)
