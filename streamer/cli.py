"""The ``streamer`` command line. Each command group lives beside the module it drives."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from streamer.errors import StreamerError
from streamer.settings import Settings, load_settings
from streamer.stack import Stack

app = typer.Typer(
    name="streamer",
    help="Change-data-capture: Debezium/Kafka or PostgreSQL logical replication into SQL databases.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
stack_app = typer.Typer(
    help="The native development stack (PostgreSQL, broker, Kafka Connect).", no_args_is_help=True
)
app.add_typer(stack_app, name="stack")


def settings_of(ctx: typer.Context) -> Settings:
    """The settings loaded by the top-level callback."""
    obj = ctx.find_root().obj
    assert isinstance(obj, Settings)
    return obj


@app.callback()
def _root(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="Settings file (default: ./streamer.toml, $STREAMER_CONFIG)."),
    ] = None,
) -> None:
    ctx.obj = load_settings(config)


# ---------------------------------------------------------------- stack
@stack_app.command("fetch")
def stack_fetch(ctx: typer.Context) -> None:
    """Download the broker and Kafka Connect/Debezium artifacts (idempotent)."""
    Stack(settings_of(ctx)).fetch()


@stack_app.command("up")
def stack_up(ctx: typer.Context) -> None:
    """Start the native stack (what is not running yet) and wait until every part is healthy."""
    stack = Stack(settings_of(ctx))
    stack.fetch()
    stack.up()
    _print_status(stack)


@stack_app.command("down")
def stack_down(
    ctx: typer.Context,
    purge: Annotated[bool, typer.Option(help="Also delete the source database's data and logs.")] = False,
) -> None:
    """Stop what `stack up` started."""
    stack = Stack(settings_of(ctx))
    stopped = stack.down()
    print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")
    if purge:
        stack.purge()
        print(f"purged {stack.dir} (artifacts kept)")


@stack_app.command("status")
def stack_status(ctx: typer.Context) -> None:
    """Each part: pid, port, health. Exit 1 unless all are healthy."""
    stack = Stack(settings_of(ctx))
    if not _print_status(stack):
        raise typer.Exit(1)


@stack_app.command("env")
def stack_env(ctx: typer.Context) -> None:
    """`export STREAMER_...=...` lines for the running stack (eval them in a shell)."""
    for name, value in Stack(settings_of(ctx)).env().items():
        print(f"export {name}={value}")


def _print_status(stack: Stack) -> bool:
    table = Table(title="streamer stack (native)")
    for col in ("part", "pid", "port", "health", "detail"):
        table.add_column(col)
    statuses = stack.status()
    for st in statuses:
        table.add_row(
            st.name,
            str(st.pid or "-"),
            str(st.port),
            "[green]healthy[/]" if st.healthy else "[red]down[/]",
            st.detail,
        )
    Console().print(table)
    for name, value in stack.env().items():
        print(f"{name}={value}")
    return all(st.healthy for st in statuses)


def main() -> None:
    """Console-script entry point: named errors become one line on stderr and a non-zero exit."""
    try:
        app()
    except StreamerError as exc:
        print(f"streamer: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
