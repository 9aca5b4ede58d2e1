"""The ``streamer`` application: the root command and its options, the helpers every command group shares, and :func:`main` (every error as one stderr line and its exit code)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from streamer.core.errors import (
    StreamerError,
)
from streamer.settings import Settings, load_settings

app = typer.Typer(
    name="streamer",
    help="Change-data-capture: Debezium/Kafka or PostgreSQL logical replication into SQL databases.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


_OPTIONS = {"debug": False}  # the top-level --debug, read by main()


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
    debug: Annotated[
        bool,
        typer.Option(
            "--debug",
            envvar="STREAMER_DEBUG",
            help="On an error, also print its full Python traceback (else one line; the JSON log has it).",
        ),
    ] = False,
) -> None:
    _OPTIONS["debug"] = debug
    ctx.obj = load_settings(config)


def _config_path(ctx: typer.Context) -> Path | None:
    value = ctx.find_root().params.get("config")
    return Path(value) if value else None


_STYLES = {"+": "green", "~": "yellow", "-": "red", "=": "dim", "n": "cyan"}


def _out() -> Console:
    return Console(soft_wrap=True, highlight=False)


def _err() -> Console:
    return Console(stderr=True, soft_wrap=True, highlight=False)


def _say(line: str) -> None:
    _out().print(Text(line, style=_STYLES.get(line.lstrip()[:1], "")))


def sa_url_database(url: str) -> str | None:
    """The database a SQLAlchemy URL names (None when it names none)."""
    from sqlalchemy.engine import make_url

    return make_url(url).database


def classify(exc: BaseException) -> tuple[int, str, str]:
    """``(exit code, headline, message)`` of an error that ended a command.

    Named errors carry their own; a broker or database that cannot be reached is exit 3
    (unavailable); anything else is exit 4, an internal error (a bug: the message says so).
    """
    if isinstance(exc, StreamerError):
        return exc.exit_code, exc.headline, str(exc)
    import psycopg2
    import sqlalchemy as sa
    from confluent_kafka import KafkaException

    from streamer.core.errors import EXIT_INTERNAL, EXIT_UNAVAILABLE, one_line
    from streamer.db import is_transient

    if isinstance(exc, KafkaException):
        return (
            EXIT_UNAVAILABLE,
            "broker unavailable",
            f"{one_line(str(exc))} (run again once the broker is back)",
        )
    orig = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
    if isinstance(exc, sa.exc.InterfaceError | psycopg2.OperationalError) or (
        isinstance(exc, sa.exc.DBAPIError) and is_transient(exc)
    ):
        return (
            EXIT_UNAVAILABLE,
            "database unavailable",
            f"{type(orig).__name__}: {one_line(str(orig))[:500]} (check that the database is running and "
            "reachable and the URL is right, then run again)",
        )
    return (
        EXIT_INTERNAL,
        "internal error",
        f"{type(exc).__name__}: {one_line(str(exc))[:500]} (a bug in streamer: run again with --debug for "
        "the traceback, and report it)",
    )


def main() -> None:
    """Console-script entry point: every error becomes one line on stderr and its exit code.

    The line is ``streamer: <headline>: <message>``. The full traceback goes to the JSON log
    (when logs are JSON lines) and, with ``--debug``, to stderr as well.
    """
    try:
        app()
    except Exception as exc:
        code, headline, message = classify(exc)
        from streamer import logs

        if logs.json_enabled():
            logs.get("cli").error("exiting", exit_code=code, reason=headline, error=message, exc_info=exc)
        if _OPTIONS["debug"]:
            import traceback

            traceback.print_exception(exc, file=sys.stderr)
        print(f"streamer: {headline}: {message}", file=sys.stderr)
        sys.exit(code)
