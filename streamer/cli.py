"""The ``streamer`` command line. Each command group lives beside the module it drives."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import ProgressColumn, Task
from rich.table import Table
from rich.text import Text

from streamer.connect import files as connectors
from streamer.connect.client import ConnectClient
from streamer.core.errors import (
    ConnectError,
    ConnectorFailedError,
    ConnectorFileError,
    SettingsError,
    StackError,
    StreamerError,
)
from streamer.settings import Settings, load_settings
from streamer.stack.local import Stack

app = typer.Typer(
    name="streamer",
    help="Change-data-capture: Debezium/Kafka or PostgreSQL logical replication into SQL databases.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
stack_app = typer.Typer(
    help="The native development stack (PostgreSQL, MariaDB, broker, Kafka Connect).", no_args_is_help=True
)
app.add_typer(stack_app, name="stack")


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


# ---------------------------------------------------------------- stack
@stack_app.command("fetch")
def stack_fetch(ctx: typer.Context) -> None:
    """Download the broker and Kafka Connect/Debezium artifacts (idempotent)."""
    Stack(settings_of(ctx)).fetch()


_ONLY_HELP = "Just this part (source, mariadb, broker, connect); repeat for several."


@stack_app.command("up")
def stack_up(
    ctx: typer.Context,
    only: Annotated[list[str] | None, typer.Option("--only", help=_ONLY_HELP)] = None,
) -> None:
    """Start the native stack (what is not running yet) and wait until every part is healthy."""
    stack = Stack(settings_of(ctx))
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
    stack = Stack(settings_of(ctx))
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
    stack = Stack(settings_of(ctx))
    if not _print_status(stack):
        raise typer.Exit(1)


@stack_app.command("env")
def stack_env(ctx: typer.Context) -> None:
    """`export STREAMER_...=...` lines for the running stack (eval them in a shell)."""
    for name, value in Stack(settings_of(ctx)).env().items():
        print(f"export {name}={value}")


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


def sa_url_database(url: str) -> str | None:
    """The database a SQLAlchemy URL names (None when it names none)."""
    from sqlalchemy.engine import make_url

    return make_url(url).database


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
    from streamer import logs
    from streamer.apply.sink import build_sink
    from streamer.consume import ConsumerProcess, build_decoder

    settings = settings_of(ctx)
    if error_policy is not None:
        settings = load_settings(
            overrides={"consumer": {"error_policy": error_policy}}, path=_config_path(ctx)
        )
    logs.configure(settings.log_format, settings.log_level)
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


class _RateColumn(ProgressColumn):
    """Rows per second of a task."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:>9,.0f} rows/s" if speed else "        - rows/s")


def _config_path(ctx: typer.Context) -> Path | None:
    value = ctx.find_root().params.get("config")
    return Path(value) if value else None


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
    settings = settings_of(ctx)
    return directory or settings.connectors_dir, ConnectClient(url or settings.connect_url, timeout=timeout)


_STYLES = {"+": "green", "~": "yellow", "-": "red", "=": "dim", "n": "cyan"}


def _out() -> Console:
    return Console(soft_wrap=True, highlight=False)


def _err() -> Console:
    return Console(stderr=True, soft_wrap=True, highlight=False)


def _say(line: str) -> None:
    _out().print(Text(line, style=_STYLES.get(line.lstrip()[:1], "")))


def _load_connector_files(directory: Path) -> list[connectors.ConnectorFile]:
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
    from streamer import logs
    from streamer.apply.sink import build_sink
    from streamer.replicate import ReplicationProcess

    settings = settings_of(ctx)
    if error_policy is not None:
        settings = load_settings(
            overrides={"consumer": {"error_policy": error_policy}}, path=_config_path(ctx)
        )
    logs.configure(settings.log_format, settings.log_level)
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


if __name__ == "__main__":
    main()
