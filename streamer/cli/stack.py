"""``streamer stack ...`` (the native development stack) and ``streamer demo``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from streamer.cli.root import app, settings_of
from streamer.core.errors import (
    StackError,
)

if TYPE_CHECKING:
    from streamer.stack.local import Stack

stack_app = typer.Typer(
    help="The native development stack (PostgreSQL, MariaDB, broker, Kafka Connect).", no_args_is_help=True
)
app.add_typer(stack_app, name="stack")


# ---------------------------------------------------------------- stack
def _stack(ctx: typer.Context) -> Stack:
    """The local stack of the settings; imported when a stack command runs (it brings httpx), so
    that the other commands start without it."""
    from streamer.stack.local import Stack

    return Stack(settings_of(ctx))


@stack_app.command("fetch")
def stack_fetch(ctx: typer.Context) -> None:
    """Download the broker and Kafka Connect/Debezium artifacts (idempotent)."""
    _stack(ctx).fetch()


_ONLY_HELP = "Just this part (source, mariadb, broker, connect); repeat for several."


@stack_app.command("up")
def stack_up(
    ctx: typer.Context,
    only: Annotated[list[str] | None, typer.Option("--only", help=_ONLY_HELP)] = None,
) -> None:
    """Start the native stack (what is not running yet) and wait until every part is healthy."""
    stack = _stack(ctx)
    stack.fetch()
    stack.up(only)
    _print_status(stack)


@stack_app.command("down")
def stack_down(
    ctx: typer.Context,
    purge: Annotated[bool, typer.Option(help="Also delete the source database's data and logs.")] = False,
    only: Annotated[list[str] | None, typer.Option("--only", help=_ONLY_HELP)] = None,
) -> None:
    """Stop what `stack up` started."""
    stack = _stack(ctx)
    if only and purge:
        raise StackError("--purge deletes the whole stack's data: use it without --only")
    stopped = stack.down(only)
    print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")
    if purge:
        stack.purge()
        print(f"purged {stack.dir} (artifacts kept)")


@stack_app.command("status")
def stack_status(ctx: typer.Context) -> None:
    """Each part: pid, port, health. Exit 1 unless all are healthy."""
    stack = _stack(ctx)
    if not _print_status(stack):
        raise typer.Exit(1)


@stack_app.command("env")
def stack_env(ctx: typer.Context) -> None:
    """`export STREAMER_...=...` lines for the running stack (eval them in a shell)."""
    for name, value in _stack(ctx).env().items():
        print(f"export {name}={value}")


# ---------------------------------------------------------------- demo
@app.command("demo")
def demo(
    ctx: typer.Context,
    rows: Annotated[int, typer.Option(help="Sample rows in the source (three tables).")] = 100_000,
    seconds: Annotated[float, typer.Option(help="Duration of the live workload.")] = 30.0,
    consumers: Annotated[int, typer.Option(help="Consumers in the group.")] = 2,
) -> None:
    """The whole pipeline on sample data (needs the stack: `make up`); exit 1 unless validation passes."""
    from streamer.stack.demo import run

    if not run(settings_of(ctx), rows=rows, seconds=seconds, consumers=consumers):
        raise typer.Exit(1)


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
