"""The apply engine: one database transaction per batch of change events.

Used by both sources (Kafka consumer and direct PostgreSQL replication), so both give the same
target rows.

Per batch:

1. events are grouped by target table and coalesced by primary key (:func:`coalesce`): the plan
   leaves the rows applying the events one by one in arrival order with the version guard would;
   per key at most one delete, run first, and one upsert; values the source left out because they
   were unchanged TOAST columns are filled from the previous upsert of the same key in the batch;
2. per table, one delete statement over all deleted keys, then one upsert statement per set of
   columns (PostgreSQL and SQLite ``INSERT .. ON CONFLICT DO UPDATE``, MySQL/MariaDB
   ``INSERT .. ON DUPLICATE KEY UPDATE``) executed over all rows; rows lacking columns (unchanged
   TOAST) insert the missing keys and then run a guarded ``UPDATE``, because the upsert forms
   check NOT NULL before they find the conflict;
3. the positions the batch reached are written to streamer's state tables in the same transaction.

Version guard
-------------
Every target row carries the source position (:class:`~streamer.core.events.SourcePosition.version`)
of the change that wrote it, in the column ``consumer.version_column``. An upsert only replaces a
row whose version is lower (or NULL: written by someone else); a delete only removes such a row;
a truncate removes only rows older than itself. A replay, an overlapping snapshot load or a
zombie consumer can therefore never move a row back in time. A key deleted in the target and
replayed from before its delete is inserted again by the replay and deleted again when the replay
reaches the delete: replays converge once they have drained, as the README states.

Unavailable (unchanged TOAST) values are never written: such a column is left out of the update.
A row the target lacks (never loaded, or the create half of a primary-key update) is completed
from the source by key before it is written, or left out and recorded incomplete when the source
cannot be read: :mod:`streamer.apply.fetch` (the hook is :meth:`Sink._apply_plans`' first line).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from streamer.apply import state
from streamer.apply.coalesce import TablePlan, coalesce, coalesce_rounds
from streamer.apply.dialects import Dialect, dialect_for, value_adapter
from streamer.apply.dialects import postgresql as pg
from streamer.apply.fetch import RowCompleter, SourceFetcher, build_fetcher
from streamer.apply.guard import newer, newer_sql
from streamer.apply.pgcopy import copy_rows
from streamer.apply.schema import Router, SchemaManager, TargetTable
from streamer.apply.schemachange import SchemaChangeStoppedError
from streamer.core.checkpoint import Checkpoint, StreamKey
from streamer.core.errors import StreamerError
from streamer.core.events import (
    UNAVAILABLE,
    ChangeEvent,
    Op,
)
from streamer.db import is_transient
from streamer.settings import Settings

KeyTuple = tuple[Any, ...]


# ---------------------------------------------------------------- statements
def _light_table(table: TargetTable, columns: Iterable[str]) -> sa.TableClause:
    return sa.table(
        table.route.target_table, *(sa.column(c) for c in columns), schema=table.route.target_schema
    )


def _upsert_statement(dialect: Dialect, table: TargetTable, columns: Sequence[str]) -> Any:
    """The guarded upsert: a row is written where the target's is missing or has an older version."""
    ver = table.version_column
    t = _light_table(table, columns)
    update_cols = [c for c in columns if c not in table.key and c != ver]
    return dialect.upsert(
        t,
        list(table.key),
        [*update_cols, ver],  # the version last: MySQL assigns left to right
        guard=lambda new: newer(t.c[ver], new[ver]),
    )


def _partial_statements(table: TargetTable, columns: Sequence[str]) -> tuple[Any, Any]:
    """(insert the rows whose key is missing, guarded update) for rows lacking some table columns.

    ``INSERT .. ON CONFLICT/ON DUPLICATE KEY`` checks NOT NULL on the proposed row before it finds
    the conflict, so a row without a NOT NULL column (unchanged TOAST, a column only the target has)
    cannot take that path even when its key exists. Parameters are ``p_<i>`` in ``columns`` order.
    """
    ver = table.version_column
    t = _light_table(table, columns)
    params: dict[str, sa.BindParameter[Any]] = {c: sa.bindparam(f"p_{i}") for i, c in enumerate(columns)}
    same_key = [t.c[k] == params[k] for k in table.key]
    missing = ~sa.exists(sa.select(sa.literal(1)).select_from(t).where(*same_key))
    insert = sa.insert(t).from_select(list(columns), sa.select(*params.values()).where(missing))
    update = (
        sa.update(t)
        .where(*same_key, newer(t.c[ver], params[ver]))
        .values({c: params[c] for c in columns if c not in table.key})
    )
    return insert, update


def _delete_statement(table: TargetTable) -> Any:
    ver = table.version_column
    t = _light_table(table, [*table.key, ver])
    cond = [t.c[k] == sa.bindparam(f"k_{i}") for i, k in enumerate(table.key)]
    return sa.delete(t).where(*cond, newer(t.c[ver], sa.bindparam("v_version")))


@dataclasses.dataclass
class ApplyResult:
    """What one batch did, per target table ``schema.table``: operations counted, newest positions.

    ``failed`` lists the events a batch applied with ``isolate=True`` could not apply, each with
    its error (the rest of the batch was applied).
    """

    events: int = 0
    tables: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    last_versions: dict[str, str] = dataclasses.field(default_factory=dict)
    truncates: dict[str, str] = dataclasses.field(default_factory=dict)
    failed: list[tuple[ChangeEvent, Exception]] = dataclasses.field(default_factory=list)

    def add(self, table: str, plan: TablePlan, truncate: bool) -> None:
        self.events += plan.events
        ops = self.tables.setdefault(table, {})
        for op, n in plan.ops.items():
            ops[op] = ops.get(op, 0) + n
        if plan.last_version > self.last_versions.get(table, ""):
            self.last_versions[table] = plan.last_version
        if (
            truncate
            and plan.truncate_version is not None
            and plan.truncate_version > self.truncates.get(table, "")
        ):
            self.truncates[table] = plan.truncate_version


class EventRejectedError(StreamerError):
    """The target rejected one event of a batch applied with ``isolate=True`` (error policy stop)."""

    def __init__(self, event: ChangeEvent, error: Exception) -> None:
        self.event, self.error = event, error
        super().__init__(f"{event.origin.describe()}: {type(error).__name__}: {error}")


class FencedBatchError(StreamerError):
    """A batch starts before the offset already stored for one of its partitions: another owner
    (the member the partition moved to) applied past it. Nothing of the batch was written."""

    def __init__(
        self, group: str, partitions: Mapping[tuple[str, int], int], first: Mapping[tuple[str, int], int]
    ):
        self.group = group
        self.partitions = dict(partitions)  # (topic, partition) -> the stored next offset
        self.first = {tp: first[tp] for tp in partitions}
        where = ", ".join(
            f"{t}[{p}] batch from {self.first[(t, p)]}, stored {o}"
            for (t, p), o in sorted(self.partitions.items())
        )
        super().__init__(
            f"batch of group {group!r} fenced: another owner already applied past it ({where}); "
            "nothing of it was written"
        )


def refuse_failures(result: ApplyResult) -> None:
    """A ``before_commit`` for error policy ``stop``: any rejected event rolls the batch back."""
    if result.failed:
        ev, exc = result.failed[0]
        raise EventRejectedError(ev, exc)


def is_permanent(exc: BaseException) -> bool:
    """Errors that retrying cannot cure and that belong to the data (constraint, type, schema)."""
    if isinstance(exc, StreamerError):
        return True
    return isinstance(exc, sa.exc.DBAPIError) and not is_transient(exc)


class Sink:
    """Applies batches of change events to one target database."""

    def __init__(
        self,
        engine: Engine,
        router: Router,
        schema: SchemaManager,
        *,
        truncate: bool = True,
        fetcher: SourceFetcher | None = None,
    ) -> None:
        self.engine = engine
        self.completer = RowCompleter(fetcher)  # values events do not carry (streamer.apply.fetch)
        self.dialect = engine.dialect.name
        self.target = dialect_for(self.dialect)
        self.router = router
        self.schema = schema
        self.truncate = truncate
        self.adapt = value_adapter(self.dialect)
        self.version_column = schema.version_column

    def apply(
        self,
        events: Sequence[ChangeEvent],
        checkpoint: Checkpoint | Mapping[StreamKey, int],
        group: str,
        *,
        isolate: bool = False,
        before_commit: Callable[[ApplyResult], None] | None = None,
        record_state: bool = True,
        in_transaction: Callable[[Connection], None] | None = None,
    ) -> ApplyResult:
        """Apply events and record the positions they reach in one transaction.

        ``checkpoint`` is the batch's :class:`~streamer.core.checkpoint.Checkpoint` (or just its
        positions: stream -> next position, for a caller with neither fence nor identities).

        With ``isolate=False`` (the fast path) any error rolls everything back and is raised.
        With ``isolate=True`` each event is applied on its own savepoint, in order; events that
        fail with a permanent error are returned in ``ApplyResult.failed`` and the rest is
        committed. ``before_commit`` runs last inside the transaction (the consumer produces
        dead letters there, so a crash cannot lose them); if it raises, nothing is committed.
        ``in_transaction`` writes more in the same transaction (the loader's checkpoint);
        ``record_state=False`` leaves streamer's state tables alone.

        The checkpoint's ``first`` positions fence zombie batches: before anything is written the
        streams' stored offset rows are locked, and when one already holds an offset past the
        batch's first offset (another owner applied past it) the whole batch is refused with
        :class:`FencedBatchError`. Its ``identities`` are stored with the offsets (see
        :func:`streamer.apply.state.save_offsets`; a stored offset never moves backwards).
        """
        cp = checkpoint if isinstance(checkpoint, Checkpoint) else Checkpoint(checkpoint)
        positions, first, identities = cp.positions, cp.first, cp.identities or None
        result = ApplyResult()
        self.completer.route_partitions(events, self.router)  # leaf partitions -> root (streamer.apply.fetch)
        # DDL first, outside the data transaction (SQLite allows one writer at a time)
        tables: dict[tuple[str | None, str], TargetTable] = {}
        broken: dict[tuple[str | None, str], Exception] = {}
        seen: set[tuple[tuple[str | None, str], tuple[str, ...]]] = set()
        for ev in events:
            route = self.router.route(ev.table)
            tkey = (route.target_schema, route.target_table)
            shape = (tkey, tuple(ev.columns))
            if tkey in broken or shape in seen:
                continue
            seen.add(shape)
            try:
                if ev.op is Op.TRUNCATE:
                    found = self.schema.lookup(route)  # truncating a table we never made is a no-op
                    if found is not None:
                        tables[tkey] = found
                else:
                    made = self.schema.ensure_streamed(route, ev)  # None: schema_changes.new_table=ignore
                    if made is not None:
                        tables[tkey] = made
            except Exception as exc:
                # a schema change whose policy is stop stops, whatever the error policy
                if not isolate or not is_permanent(exc) or isinstance(exc, SchemaChangeStoppedError):
                    raise
                broken[tkey] = exc
        with self.engine.begin() as conn:
            if first:
                stored = state.lock_offsets(conn, group, first)
                ahead = {tp: off for tp, off in stored.items() if off > first[tp]}
                if ahead:
                    raise FencedBatchError(group, ahead, first)
            truncated = state.truncate_versions(conn, [t.route.qualified for t in tables.values()])
            if not isolate:
                for plans in coalesce_rounds(events, self.router):
                    self._apply_plans(conn, plans, tables, truncated, result)
                    for name, v in result.truncates.items():  # a round's truncate holds for the next
                        truncated[name] = max(v, truncated.get(name, ""))
            else:
                for ev in events:
                    route = self.router.route(ev.table)
                    tkey = (route.target_schema, route.target_table)
                    if tkey in broken:
                        result.failed.append((ev, broken[tkey]))
                        continue
                    single = ApplyResult()
                    try:
                        with conn.begin_nested():
                            self._apply_plans(conn, coalesce([ev], self.router), tables, truncated, single)
                    except Exception as exc:
                        if not is_permanent(exc):
                            raise
                        result.failed.append((ev, exc))
                        continue
                    for name, ops in single.tables.items():
                        plan_ops = result.tables.setdefault(name, {})
                        for op, n in ops.items():
                            plan_ops[op] = plan_ops.get(op, 0) + n
                    result.events += single.events
                    for name, v in single.last_versions.items():
                        result.last_versions[name] = max(v, result.last_versions.get(name, ""))
                    for name, v in single.truncates.items():
                        truncated[name] = result.truncates[name] = max(v, result.truncates.get(name, ""))
            if record_state:
                state.record_tables(conn, result.last_versions, result.truncates)
                state.save_offsets(conn, group, positions, identities)
            if in_transaction is not None:
                in_transaction(conn)
            if before_commit is not None:
                before_commit(result)
        return result

    def _apply_plans(
        self,
        conn: Connection,
        plans: Mapping[tuple[str | None, str], TablePlan],
        tables: Mapping[tuple[str | None, str], TargetTable],
        truncated: Mapping[str, str],
        result: ApplyResult,
    ) -> None:
        self.completer.complete(conn, plans, tables)  # unchanged TOAST of rows the target lacks
        for tkey, plan in plans.items():
            table = tables.get(tkey)
            if table is None:
                continue
            self._apply_table(conn, table, plan, truncated.get(table.route.qualified))
            result.add(table.route.qualified, plan, self.truncate)

    def _apply_table(
        self, conn: Connection, table: TargetTable, plan: TablePlan, truncated: str | None
    ) -> None:
        ver = table.version_column
        if plan.truncate_version is not None and self.truncate:
            t = _light_table(table, [ver])
            conn.execute(sa.delete(t).where(sa.or_(t.c[ver].is_(None), t.c[ver] < plan.truncate_version)))
            if truncated is None or plan.truncate_version > truncated:
                truncated = plan.truncate_version
        # group rows by the set of columns they carry (unavailable TOAST values left out)
        groups: dict[tuple[str, ...], list[list[Any]]] = {}
        pg = self.target.merges_by_copy
        adapt = None if pg else self.adapt  # COPY formats Python values itself
        known = set(table.columns) - table.generated  # the target computes generated columns
        carried: set[str] = set()  # columns the rows carry, unavailable ones included
        # values the target cannot hold exactly (MySQL/MariaDB: NaN, digits past DECIMAL(M, D)) are
        # refused with a named error, the event's, before the driver sees them (text columns get text)
        check = self.target.value_check(table.route.qualified, table.types) if table.types else None
        shapes: dict[tuple[str, ...], tuple[str, ...]] = {}  # a row's columns -> those written
        for row, version in plan.upserts.values():
            if truncated is not None and version < truncated:
                continue
            shape = tuple(row)
            cols = shapes.get(shape)
            if cols is None:
                cols = shapes[shape] = tuple(c for c in shape if c in known)
                carried.update(cols)
            if UNAVAILABLE in row.values():  # identity first; UNAVAILABLE equals only itself
                cols = tuple(c for c in cols if row[c] is not UNAVAILABLE)
            if check is not None:
                assert adapt is not None
                values = [adapt(check(c, row[c])) for c in cols]
            else:
                values = [row[c] for c in cols] if adapt is None else [adapt(row[c]) for c in cols]
            values.append(version)
            groups.setdefault(cols, []).append(values)
        deletes = [
            [*(key_row.get(k) for k in table.key), version] for key_row, version in plan.deletes.values()
        ]
        # groups lacking a column other rows carry (unchanged TOAST, older schema) cannot use
        # INSERT .. ON CONFLICT: it checks NOT NULL before it sees the conflict
        partial = {cols for cols in groups if not carried <= set(cols)}
        if pg:
            self._merge_pg(conn, table, groups, deletes, partial)
            return
        assert adapt is not None
        if deletes:  # first: a key with a delete and an upsert in the plan was deleted, then written
            n = len(table.key)
            params = [{**{f"k_{i}": adapt(d[i]) for i in range(n)}, "v_version": d[n]} for d in deletes]
            conn.execute(_delete_statement(table), params)
        for cols, rows in groups.items():
            names = [*cols, ver]
            if cols not in partial:
                conn.execute(
                    _upsert_statement(self.target, table, names),
                    [dict(zip(names, r, strict=True)) for r in rows],
                )
                continue
            # rows lacking columns: insert the missing keys, then a guarded update (see _partial_statements)
            insert, update = _partial_statements(table, names)
            bound = [{f"p_{i}": v for i, v in enumerate(r)} for r in rows]
            if not self.target.partial_insert_may_refuse():
                conn.execute(insert, bound)
            else:
                try:
                    with conn.begin_nested():
                        conn.execute(insert, bound)
                except sa.exc.OperationalError as exc:
                    # MySQL/MariaDB (strict mode) refuse any INSERT leaving out a NOT NULL column
                    # without a default, whether or not a row is inserted: fine if every key exists
                    if _mysql_code(exc) != _NO_DEFAULT_FOR_FIELD:
                        raise
                    if self._count_keys(conn, table, names, rows) < len(rows):
                        raise
            conn.execute(update, bound)

    def _count_keys(
        self, conn: Connection, table: TargetTable, names: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> int:
        """How many of the rows' keys the target has."""
        t = _light_table(table, table.key)
        at = [names.index(k) for k in table.key]
        cols = [t.c[k] for k in table.key]
        found = 0
        for i in range(0, len(rows), 500):
            keys = [tuple(r[j] for j in at) for r in rows[i : i + 500]]
            cond = cols[0].in_([k[0] for k in keys]) if len(cols) == 1 else sa.tuple_(*cols).in_(keys)
            found += conn.execute(sa.select(sa.func.count()).select_from(t).where(cond)).scalar_one()
        return found

    def _merge_pg(
        self,
        conn: Connection,
        table: TargetTable,
        groups: Mapping[tuple[str, ...], list[list[Any]]],
        deletes: list[list[Any]],
        partial: set[tuple[str, ...]],
    ) -> None:
        """COPY rows into a temporary stage table, then one guarded delete and merge per group.

        Each stage has exactly the columns its statement needs, typed as the target's columns and
        without their constraints (``CREATE TEMP TABLE .. AS SELECT cols FROM target WITH NO DATA``
        keeps types, drops NOT NULL, defaults and checks), so managed tables with NOT NULL columns
        take deletes (key and version only) and rows lacking columns. Deletes run first (a key with
        both was deleted, then written again). A group is merged with one ``INSERT .. ON CONFLICT
        DO UPDATE .. WHERE older``; a ``partial`` group (lacking columns other rows carry: unchanged
        TOAST values) inserts the keys the target lacks and then updates the older rows, because
        ``ON CONFLICT`` checks NOT NULL before it sees the conflict.
        """
        prep = conn.dialect.identifier_preparer
        target = prep.format_table(sa.table(table.route.target_table, schema=table.route.target_schema))
        q = prep.quote
        ver = q(table.version_column)
        key = ", ".join(q(k) for k in table.key)
        match = " AND ".join(f"t.{q(k)} = s.{q(k)}" for k in table.key)
        older = newer_sql(f"t.{ver}", f"s.{ver}")
        dbapi: Any = conn.connection.dbapi_connection
        base_error: type[Exception] = conn.dialect.loaded_dbapi.Error
        cur = dbapi.cursor()

        def stage(names: Sequence[str], rows: list[list[Any]]) -> str:
            collist = ", ".join(q(c) for c in names)
            name = q("_streamer_stage_" + _digest(target, *names))
            cur.execute(pg.stage_sql(name, target, collist, on_commit="DELETE ROWS"))
            cur.copy_expert(f"COPY {name} ({collist}) FROM STDIN", io.StringIO(copy_rows(rows)))
            return name

        try:
            if deletes:
                s = stage([*table.key, table.version_column], deletes)
                cur.execute(  # identifiers quoted by the dialect's preparer above
                    f"DELETE FROM {target} AS t USING {s} AS s WHERE {match} AND {older}"  # noqa: S608
                )
                cur.execute(f"TRUNCATE {s}")
            for cols, rows in groups.items():
                names = [*cols, table.version_column]
                collist = ", ".join(q(c) for c in names)
                s = stage(names, rows)
                sets = ", ".join(f"{q(c)} = s.{q(c)}" for c in names if c not in table.key)
                if cols not in partial:
                    cur.execute(pg.merge_sql(target, s, names, table.key, table.version_column, q))
                else:
                    # ON CONFLICT DO NOTHING waits for a concurrent inserter of a key, so the update
                    # below (a new statement, a new snapshot) sees every key of the stage
                    cur.execute(  # identifiers quoted by the dialect's preparer above
                        f"INSERT INTO {target} AS t ({collist}) SELECT {collist} FROM {s} AS s "  # noqa: S608
                        f"WHERE NOT EXISTS (SELECT 1 FROM {target} AS t WHERE {match}) "
                        f"ON CONFLICT ({key}) DO NOTHING"
                    )
                    cur.execute(  # identifiers quoted by the dialect's preparer above
                        f"UPDATE {target} AS t SET {sets} FROM {s} AS s WHERE {match} AND {older}"  # noqa: S608
                    )
                cur.execute(f"TRUNCATE {s}")
        except base_error as exc:
            # raised as SQLAlchemy raises driver errors, so retries and error policies see one kind
            raise sa.exc.DBAPIError.instance(
                f"COPY/merge into {target}", None, exc, base_error, dialect=conn.dialect
            ) from exc
        finally:
            cur.close()


_NO_DEFAULT_FOR_FIELD = 1364  # MySQL/MariaDB ER_NO_DEFAULT_FOR_FIELD


def _mysql_code(exc: sa.exc.DBAPIError) -> int | None:
    args = getattr(exc.orig, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def _digest(*parts: str) -> str:
    return hashlib.sha1("\x00".join(parts).encode()).hexdigest()[:16]


def build_router(settings: Settings, dialect: str) -> Router:
    """The router for a target dialect with the settings' ``[routes]``."""
    from streamer.apply.schema import RouteSpec

    routes = {
        name: RouteSpec(r.target, dict(r.rename), tuple(r.drop), dict(r.cast))
        for name, r in settings.routes.items()
    }
    return Router(dialect, routes)


def build_sink(settings: Settings, engine: Engine | None = None, source_url: str | None = None) -> Sink:
    """The sink the settings describe: target URL, routes, version column, schema mode, truncate policy.

    Values events do not carry are read from ``source_url`` when given (``streamer replicate
    --source``), else from the settings' ``source_url`` and the connector files' sources.
    """
    from streamer.db import create_target_engine

    engine = engine or create_target_engine(settings.target_url)
    c = settings.consumer
    router = build_router(settings, engine.dialect.name)
    fetcher = SourceFetcher.for_url(source_url) if source_url else build_fetcher(settings)
    return Sink(
        engine,
        router,
        SchemaManager(engine, c.version_column, c.schema_mode, settings.schema_changes),
        truncate=c.truncate,
        fetcher=fetcher,
    )
