"""Target tables: routing from source tables, column types per dialect, and creating/evolving tables.

Routing (default)
-----------------
A source table ``<schema>.<table>`` (PostgreSQL) or ``<database>.<table>`` (MySQL) goes to:

* PostgreSQL targets: the same ``<schema>.<table>`` (the schema is created when missing);
* MySQL/MariaDB and SQLite targets: the table ``<schema>_<table>`` in the connection's database
  (MySQL "schemas" are databases, which a consumer should not create on its own).

``[routes."public.customers"]`` in the settings overrides this per source table: ``target``
(``schema.table`` or ``table``), ``rename`` (source column -> target column), ``drop`` (source
columns not written), ``cast`` (target column -> SQL type name such as ``text`` or ``bigint``).
The loader applies the same routes, so both writers produce the same rows.

Schema modes
------------
``auto`` creates a missing table from the change event's schema (primary key from the record
key) and adds columns the source gained (never drops or narrows). ``managed`` never runs DDL: the
table, its primary key, every routed column and the version column must exist, or
:class:`SchemaMismatchError` names the table and column.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from streamer.apply.dialects import dialect_for, target_types
from streamer.apply.schemachange import (
    SchemaChangeStoppedError,
    TypeChange,
    TypeShape,
    classify,
    mysql_shape,
    shape_of,
)
from streamer.core.errors import StreamerError
from streamer.core.events import ChangeEvent, ColumnType, TableId
from streamer.settings import SchemaChangeSettings

VERSION_TYPE_LENGTH = 40
SqlType = sa.types.TypeEngine[Any]


class SchemaMismatchError(StreamerError):
    """The target table does not fit the change events (managed mode, or a conflicting type)."""


@dataclasses.dataclass(frozen=True)
class Route:
    """Where one source table goes, and how its columns are renamed, dropped and cast."""

    target_schema: str | None
    target_table: str
    rename: Mapping[str, str] = dataclasses.field(default_factory=dict)
    drop: frozenset[str] = frozenset()
    cast: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @property
    def qualified(self) -> str:
        return f"{self.target_schema}.{self.target_table}" if self.target_schema else self.target_table

    def target_column(self, source_column: str) -> str | None:
        """The target name of a source column, or None when it is dropped."""
        if source_column in self.drop:
            return None
        return self.rename.get(source_column, source_column)


@dataclasses.dataclass(frozen=True)
class RouteSpec:
    """A route as the settings state it (``target`` may be empty: default naming)."""

    target: str = ""
    rename: Mapping[str, str] = dataclasses.field(default_factory=dict)
    drop: tuple[str, ...] = ()
    cast: Mapping[str, str] = dataclasses.field(default_factory=dict)


class Router:
    """Maps source tables to target tables for one target dialect."""

    def __init__(self, dialect: str, routes: Mapping[str, RouteSpec] | None = None) -> None:
        self.dialect = dialect
        self.target = dialect_for(dialect)
        self.routes = dict(routes or {})
        self._cache: dict[TableId, Route] = {}
        self._roots: dict[TableId, TableId] = {}  # leaf partition -> its partitioned root

    def set_partition_root(self, leaf: TableId, root: TableId) -> None:
        """Route ``leaf`` (a partition at the source) as its root table from now on."""
        self._roots[leaf] = root
        self._cache.pop(leaf, None)

    def route(self, table: TableId) -> Route:
        """The route of a source table (computed once per table); a leaf partition routes as its root."""
        found = self._cache.get(table)
        if found is None:
            found = self._cache[table] = self._route(self._roots.get(table, table))
        return found

    def _route(self, table: TableId) -> Route:
        spec = self.routes.get(table.qualified)
        ns = table.schema if table.schema is not None else table.database
        if spec is not None and spec.target:
            schema, _, name = spec.target.rpartition(".")
            target_schema: str | None = schema or None
            target_table = name
        elif self.target.namespaces_as_schemas:
            target_schema, target_table = ns, table.table
        else:
            target_schema, target_table = None, f"{ns}_{table.table}" if ns else table.table
        if not self.target.has_schemas and target_schema is not None:  # SQLite has no schemas
            target_table, target_schema = f"{target_schema}_{target_table}", None
        if spec is None:
            return Route(target_schema, target_table)
        return Route(target_schema, target_table, dict(spec.rename), frozenset(spec.drop), dict(spec.cast))


# ---------------------------------------------------------------- type mapping
_CAST_NAMES: dict[str, SqlType] = {
    "text": sa.Text(),
    "string": sa.Text(),
    "smallint": sa.SmallInteger(),
    "integer": sa.Integer(),
    "int": sa.Integer(),
    "bigint": sa.BigInteger(),
    "real": sa.REAL(),
    "double": sa.Double(),
    "numeric": sa.Numeric(),
    "boolean": sa.Boolean(),
    "date": sa.Date(),
    "time": sa.Time(),
    "timestamp": sa.DateTime(),
    "timestamptz": sa.DateTime(timezone=True),
    "bytes": sa.LargeBinary(),
    "json": sa.JSON(),
}


def _int_param(params: Mapping[str, str], name: str) -> int | None:
    value = params.get(name)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _opt_int(value: Any) -> int | None:
    return int(value) if value is not None else None


def sql_type(ct: ColumnType, dialect: str, *, key: bool = False) -> SqlType:
    """The target column type for a change event's column type.

    Uses the source type and length the connector propagates (``column.propagate.source.type``)
    where that makes the target exact (varchar length, numeric precision, json vs jsonb); where
    targets differ, the dialect's :class:`~streamer.apply.dialects.types.TargetTypes` chooses.
    """
    types = target_types(dialect)
    logical = ct.logical or ""
    src = (ct.source_type or "").upper()
    length = _int_param(ct.params, "__debezium.source.column.length")
    if logical == "org.apache.kafka.connect.data.Decimal":
        scale = _int_param(ct.params, "scale") or 0
        return types.decimal(_int_param(ct.params, "connect.decimal.precision") or length, scale)
    if logical == "io.debezium.data.VariableScaleDecimal":
        return types.variable_decimal()
    if logical in ("io.debezium.time.Date", "org.apache.kafka.connect.data.Date"):
        return sa.Date()
    if logical in (
        "io.debezium.time.Time",
        "io.debezium.time.MicroTime",
        "io.debezium.time.NanoTime",
        "org.apache.kafka.connect.data.Time",
    ):
        return types.time()
    if logical == "io.debezium.time.ZonedTime":
        return types.zoned_time()
    if logical in (
        "io.debezium.time.Timestamp",
        "io.debezium.time.MicroTimestamp",
        "io.debezium.time.NanoTimestamp",
        "org.apache.kafka.connect.data.Timestamp",
    ):
        return types.timestamp()
    if logical == "io.debezium.time.ZonedTimestamp":
        return types.zoned_timestamp()
    if logical == "io.debezium.time.MicroDuration":
        return types.duration()
    if logical == "io.debezium.data.Json":
        return types.json(src)
    if logical == "io.debezium.data.Uuid":
        return types.uuid()
    if logical in ("io.debezium.data.Enum", "io.debezium.data.EnumSet"):
        return types.enum(key)
    if logical == "io.debezium.data.Bits":
        return sa.Text()
    base = ct.base
    if base == "array":
        return types.array(ct.items, lambda items: sql_type(items, dialect))
    if base == "int8" or base == "int16":
        return sa.SmallInteger()
    if base == "int32":
        return sa.Integer()
    if base == "int64":
        return sa.BigInteger()
    if base == "float32":
        return sa.REAL()
    if base == "float64":
        return sa.Double()
    if base == "boolean":
        return sa.Boolean()
    if base == "bytes":
        return types.binary()
    if base == "string":
        if src in ("NUMERIC", "DECIMAL", "MONEY"):  # decimal.handling.mode=string
            return types.string_decimal(length, _int_param(ct.params, "__debezium.source.column.scale"))
        if (
            src in ("VARCHAR", "CHARACTER VARYING", "BPCHAR", "CHAR", "CHARACTER")
            and length
            and length < 10000
        ):
            return sa.String(length)
        return types.text(key)
    if base in ("map", "struct"):
        return sa.JSON()
    raise SchemaMismatchError(f"no target type for column type {ct}")


def cast_type(name: str) -> SqlType:
    try:
        return _CAST_NAMES[name.lower()]
    except KeyError:
        raise SchemaMismatchError(
            f"unknown cast type {name!r}; known: {', '.join(sorted(_CAST_NAMES))}"
        ) from None


# ---------------------------------------------------------------- tables
@dataclasses.dataclass
class TargetTable:
    """What the sink knows of one target table: its columns and key, as they are in the database."""

    route: Route
    columns: list[str]
    key: tuple[str, ...]
    version_column: str
    generated: frozenset[str] = frozenset()  # computed by the target (generated columns): never written
    # MySQL/MariaDB: column -> (data_type, numeric_precision, numeric_scale) as the target has it, for
    # the per-value checks of values it cannot hold exactly (streamer.apply.dialects.mysql)
    types: Mapping[str, tuple[str, int | None, int | None]] = dataclasses.field(default_factory=dict)
    shapes: Mapping[str, TypeShape] = dataclasses.field(default_factory=dict)  # column -> its type's shape
    not_null: frozenset[str] = frozenset()  # NOT NULL columns (MySQL/MariaDB: kept by MODIFY COLUMN)

    def has(self, column: str) -> bool:
        return column in self.columns


class SchemaManager:
    """Creates and evolves target tables (auto) or checks them (managed). Caches what it has seen.

    Source schema changes (``changes``, the ``[schema_changes]`` settings) are seen here, where the
    Debezium consumer and ``streamer replicate`` meet: the columns and types of each new event shape
    are compared with the target table as it is (reflected). Decisions (README, "Schema changes"):

    * add column: ``propagate`` runs ADD COLUMN (auto; managed stops as before), ``ignore`` leaves
      the column out, ``stop`` raises :class:`SchemaChangeStoppedError`;
    * drop column (a target column the events no longer carry; auto only, the version, key and
      generated columns aside): ``ignore`` keeps the column and the values it has, later rows do
      not write it (NULL or its default for new rows); ``stop`` raises;
    * rename column: it arrives as one column gone and one new of the same type shape in the same
      event shape; that pairing is taken as a rename. ``stop`` (default: drop + add would leave the
      new column NULL in every row not changed since) raises, ``propagate`` runs RENAME COLUMN,
      ``ignore`` handles it as drop + add;
    * widen (:func:`streamer.apply.schemachange.classify`): ``propagate`` alters the column type on
      PostgreSQL (ALTER COLUMN TYPE) and MySQL/MariaDB (MODIFY COLUMN); SQLite does not enforce
      declared types, its column holds the wider values as it is. Managed tables never get DDL:
      ``propagate`` stops there, naming the type to give the column;
    * narrow: the target column holds every value: ``ignore`` keeps it, ``stop`` raises (auto
      only: a managed table may be wider than the source by choice);
    * incompatible: ``stop`` raises, ``ignore`` writes into the column as it is (values the target
      cannot take are then rejected per the error policy); auto only;
    * new table (streamed events for a table the target lacks; ``streamer load`` always creates):
      ``propagate`` creates it (auto), ``ignore`` skips its events, ``stop`` raises.
    Columns with a ``cast`` route keep the type the route gives them.
    """

    def __init__(
        self,
        engine: Engine,
        version_column: str,
        mode: str = "auto",
        changes: SchemaChangeSettings | None = None,
    ) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self.target = dialect_for(self.dialect)
        self.version_column = version_column
        self.mode = mode
        self.changes = changes or SchemaChangeSettings()
        self._known: dict[tuple[str | None, str], TargetTable] = {}
        # (table, the event shape's columns and type shapes) already settled against the target
        self._settled: set[tuple[tuple[str | None, str], tuple[tuple[str, TypeShape], ...]]] = set()

    def forget(self) -> None:
        self._known.clear()
        self._settled.clear()

    # DDL attempts of one ensure(): another process may create or widen the same table between this
    # one's look and its DDL (several consumers applying a new table's first events at once)
    DDL_ATTEMPTS = 3

    def ensure(self, route: Route, event: ChangeEvent, *, allow_no_key: bool = False) -> TargetTable:
        """The target table for an event, created or widened first when the mode allows.

        ``allow_no_key`` (the loader's ``--no-key``) creates a table without a primary key.
        Several processes may do this for the same table at once: the one whose CREATE TABLE (or
        ADD COLUMN, CREATE SCHEMA) loses the race gets an error from the database ("already
        exists", a unique violation in the catalog); its transaction is rolled back and the work is
        done again against what the winner made (reflected anew), up to ``DDL_ATTEMPTS`` times in
        all. An error that is not such a race repeats and is raised as it is.
        """
        found = self._ensure_retried(route, event, allow_no_key=allow_no_key, streamed=False)
        assert found is not None
        return found

    def ensure_streamed(self, route: Route, event: ChangeEvent) -> TargetTable | None:
        """:meth:`ensure` for a streamed event: a missing table follows ``schema_changes.new_table``
        (None: ``ignore``, skip the table's events)."""
        return self._ensure_retried(route, event, allow_no_key=False, streamed=True)

    def _ensure_retried(
        self, route: Route, event: ChangeEvent, *, allow_no_key: bool, streamed: bool
    ) -> TargetTable | None:
        for attempt in range(1, self.DDL_ATTEMPTS + 1):
            try:
                return self._ensure(route, event, allow_no_key=allow_no_key, streamed=streamed)
            except sa.exc.DBAPIError:
                if attempt == self.DDL_ATTEMPTS:
                    raise
                self._known.pop((route.target_schema, route.target_table), None)
        raise AssertionError("unreachable")

    def _ensure(
        self, route: Route, event: ChangeEvent, *, allow_no_key: bool, streamed: bool
    ) -> TargetTable | None:
        wanted = self._wanted_columns(route, event)
        key = tuple(c for c in (route.target_column(k) for k in event.key_columns) if c)
        cache_key = (route.target_schema, route.target_table)
        known = self._known.get(cache_key)
        settled = (cache_key, tuple((c, shape_of(t)) for c, t in wanted.items()))
        if known is not None and settled in self._settled:
            return known
        with self.engine.begin() as conn:
            table = self._reflect(conn, route, allow_no_key=allow_no_key)
            if table is None and streamed and self.changes.new_table != "propagate":
                if self.changes.new_table == "ignore":
                    return None
                raise SchemaChangeStoppedError(
                    route.qualified,
                    "*",
                    "new table",
                    f"source table {event.table.qualified} has no target table",
                    "schema_changes.new_table=propagate (or create the table first: streamer load --table)",
                )
            if table is None:
                if self.mode == "managed":
                    raise SchemaMismatchError(
                        f"target table {route.qualified} does not exist (schema_mode=managed)"
                    )
                if not key and not allow_no_key:
                    raise SchemaMismatchError(
                        f"source table {event.table.qualified} has no primary key; streamer needs one to apply changes"
                    )
                self._create(conn, route, wanted, key)
                table = self._reflect(conn, route, allow_no_key=allow_no_key)
                assert table is not None
            if self._evolve(conn, route, table, wanted, key, self._unsized(route, event)):
                table = self._reflect(conn, route, allow_no_key=allow_no_key)
                assert table is not None
            if not table.has(self.version_column):
                raise SchemaMismatchError(
                    f"target table {route.qualified} has no version column {self.version_column!r}: add it as "
                    f"VARCHAR({VERSION_TYPE_LENGTH}) NULL (setting consumer.version_column)"
                )
        self._known[cache_key] = table
        self._settled.add(settled)
        return table

    def _evolve(
        self,
        conn: Connection,
        route: Route,
        table: TargetTable,
        wanted: Mapping[str, SqlType],
        key: tuple[str, ...],
        unsized: frozenset[str] = frozenset(),
    ) -> bool:
        """Apply the ``[schema_changes]`` policies to one event shape; True when DDL ran.

        ``unsized``: string columns whose events state no length (no ``column.propagate.source.type``,
        pgoutput): their length is unknown, not unbounded, so it is not compared.
        """
        pol, auto, ddl = self.changes, self.mode != "managed", False
        missing = [c for c in wanted if not table.has(c)]
        skip = {self.version_column, *table.generated, *key}
        gone = [c for c in table.columns if c not in wanted and c not in skip] if auto else []
        if len(missing) == 1 and len(gone) == 1 and pol.rename_column != "ignore":
            new, old = missing[0], gone[0]
            shape = shape_of(wanted[new])
            if shape.family != "other" and table.shapes.get(old) == shape:
                if pol.rename_column == "stop":
                    raise SchemaChangeStoppedError(
                        route.qualified,
                        old,
                        "column rename",
                        f"{old!r} is gone and {new!r} of the same type ({shape}) is new",
                        "schema_changes.rename_column=propagate (RENAME COLUMN) or =ignore (drop + add)",
                    )
                self._rename_column(conn, route, old, new)
                missing, gone, ddl = [], [], True
        for col in gone:
            if pol.drop_column == "stop":
                raise SchemaChangeStoppedError(
                    route.qualified,
                    col,
                    "column drop",
                    "the events no longer carry it",
                    "schema_changes.drop_column=ignore (keep the column and its values)",
                )
        for col in missing:
            if pol.add_column == "ignore":
                continue
            if pol.add_column == "stop":
                raise SchemaChangeStoppedError(
                    route.qualified,
                    col,
                    "column added",
                    f"new column of type {shape_of(wanted[col])}",
                    "schema_changes.add_column=propagate (or =ignore)",
                )
            if not auto:
                raise SchemaMismatchError(
                    f"target table {route.qualified} has no column {col!r} (schema_mode=managed)"
                )
            self._add_column(conn, route, col, wanted[col])
            ddl = True
        for col, typ in wanted.items():
            if col == self.version_column or col in route.cast or not table.has(col):
                continue
            old_shape, new_shape = table.shapes.get(col, TypeShape("other")), shape_of(typ)
            if col in unsized and old_shape.family == "string" and new_shape.family == "string":
                continue
            change = classify(old_shape, new_shape)
            if not auto and (change is not TypeChange.WIDEN or old_shape.family != new_shape.family):
                continue  # a managed table's types are the user's: only a same-family widening is checked
            detail = f"target type {old_shape}, the events now carry {new_shape}"
            if change is TypeChange.WIDEN:
                if pol.widen_type == "ignore":
                    continue
                if pol.widen_type == "stop" or not auto:
                    raise SchemaChangeStoppedError(
                        route.qualified,
                        col,
                        "type widened",
                        detail,
                        "schema_changes.widen_type=propagate (auto) or =ignore"
                        if auto
                        else f"schema_changes.widen_type=ignore (schema_mode=managed: give the column a type holding {new_shape})",
                    )
                ddl = self._widen_column(conn, route, col, typ, col in key or col in table.not_null) or ddl
            elif change is not TypeChange.SAME:
                setting = "narrow_type" if change is TypeChange.NARROW else "incompatible_type"
                if getattr(pol, setting) == "stop":
                    raise SchemaChangeStoppedError(
                        route.qualified,
                        col,
                        "type narrowed" if change is TypeChange.NARROW else "incompatible type change",
                        detail,
                        f"schema_changes.{setting}=ignore (keep the target column's type)",
                    )
        return ddl

    def _unsized(self, route: Route, event: ChangeEvent) -> frozenset[str]:
        out = set()
        for name, ct in event.columns.items():
            target = route.target_column(name)
            if (
                target is not None
                and ct.base == "string"
                and "__debezium.source.column.length" not in ct.params
            ):
                out.add(target)
        return frozenset(out)

    def _rename_column(self, conn: Connection, route: Route, old: str, new: str) -> None:
        prep = conn.dialect.identifier_preparer
        table = prep.format_table(sa.table(route.target_table, schema=route.target_schema))
        conn.execute(sa.text(f"ALTER TABLE {table} RENAME COLUMN {prep.quote(old)} TO {prep.quote(new)}"))

    def _widen_column(self, conn: Connection, route: Route, name: str, typ: SqlType, not_null: bool) -> bool:
        """ALTER a column to a wider type; False on SQLite, whose declared types hold any value already."""
        prep = conn.dialect.identifier_preparer
        table = prep.format_table(sa.table(route.target_table, schema=route.target_schema))
        statement = dialect_for(self.dialect).alter_type_sql(
            table, prep.quote(name), typ.compile(dialect=conn.dialect), not_null
        )
        if statement is None:
            return False
        conn.execute(sa.text(statement))  # identifiers quoted by the dialect's preparer
        return True

    def lookup(self, route: Route) -> TargetTable | None:
        """The target table as it is, or None when it does not exist (no DDL)."""
        cache_key = (route.target_schema, route.target_table)
        if cache_key in self._known:
            return self._known[cache_key]
        with self.engine.connect() as conn:
            return self._reflect(conn, route)

    def _wanted_columns(self, route: Route, event: ChangeEvent) -> dict[str, SqlType]:
        out: dict[str, SqlType] = {}
        keyset = set(event.key_columns)
        for name, ct in event.columns.items():
            target = route.target_column(name)
            if target is None:
                continue
            if target in route.cast:
                out[target] = cast_type(route.cast[target])
            else:
                out[target] = sql_type(ct, self.dialect, key=name in keyset)
        out[self.version_column] = sa.String(VERSION_TYPE_LENGTH)
        return out

    def _sa_table(self, route: Route, columns: Mapping[str, SqlType], key: Iterable[str]) -> sa.Table:
        keys = set(key)
        cols = [
            sa.Column(name, typ, primary_key=name in keys, nullable=name not in keys, autoincrement=False)
            for name, typ in columns.items()
        ]
        return sa.Table(route.target_table, sa.MetaData(), *cols, schema=route.target_schema)

    def _create(
        self,
        conn: Connection,
        route: Route,
        columns: Mapping[str, SqlType],
        key: tuple[str, ...],
    ) -> None:
        if route.target_schema and self.target.namespaces_as_schemas:
            conn.execute(sa.schema.CreateSchema(route.target_schema, if_not_exists=True))
        # key columns first, in key order, then the rest as the source orders them
        ordered = {k: columns[k] for k in key if k in columns}
        ordered.update({k: v for k, v in columns.items() if k not in ordered})
        self._sa_table(route, ordered, key).create(conn, checkfirst=True)

    def _add_column(self, conn: Connection, route: Route, name: str, typ: SqlType) -> None:
        prep = conn.dialect.identifier_preparer
        table = prep.format_table(sa.table(route.target_table, schema=route.target_schema))
        coltype = typ.compile(dialect=conn.dialect)
        # identifiers are quoted by the dialect's preparer, the type is compiled from a TypeEngine
        conn.execute(sa.text(f"ALTER TABLE {table} ADD COLUMN {prep.quote(name)} {coltype}"))

    def _reflect(self, conn: Connection, route: Route, *, allow_no_key: bool = False) -> TargetTable | None:
        if self.dialect in ("mysql", "mariadb"):
            # information_schema, not SHOW CREATE TABLE parsing (which breaks on backticks in names)
            rows = conn.execute(
                sa.text(
                    "SELECT column_name, column_key, extra, data_type, character_maximum_length, "
                    "numeric_precision, numeric_scale, is_nullable FROM information_schema.columns "
                    "WHERE table_schema = COALESCE(:schema, DATABASE()) AND table_name = :table "
                    "ORDER BY ordinal_position"
                ),
                {"schema": route.target_schema, "table": route.target_table},
            ).all()
            if not rows:
                return None
            cols = [r[0] for r in rows]
            generated = frozenset(r[0] for r in rows if "GENERATED" in str(r[2] or "").upper())
            types = {r[0]: (str(r[3]).lower(), _opt_int(r[5]), _opt_int(r[6])) for r in rows}
            shapes = {r[0]: mysql_shape(str(r[3]), r[4], r[5], r[6]) for r in rows}
            not_null = frozenset(r[0] for r in rows if str(r[7]).upper() == "NO")
            pk_rows = conn.execute(
                sa.text(
                    "SELECT column_name FROM information_schema.key_column_usage "
                    "WHERE table_schema = COALESCE(:schema, DATABASE()) AND table_name = :table "
                    "AND constraint_name = 'PRIMARY' ORDER BY ordinal_position"
                ),
                {"schema": route.target_schema, "table": route.target_table},
            ).all()
            key = tuple(r[0] for r in pk_rows)
        else:
            insp = sa.inspect(conn)
            if not insp.has_table(route.target_table, schema=route.target_schema):
                return None
            described = insp.get_columns(route.target_table, schema=route.target_schema)
            cols = [c["name"] for c in described]
            generated = frozenset(c["name"] for c in described if c.get("computed"))
            shapes = {c["name"]: shape_of(c["type"]) for c in described}
            not_null = frozenset(c["name"] for c in described if not c.get("nullable", True))
            pk = insp.get_pk_constraint(route.target_table, schema=route.target_schema)
            key = tuple(pk.get("constrained_columns") or ())
            types = {}
        if not key and not allow_no_key:
            raise SchemaMismatchError(f"target table {route.qualified} has no primary key")
        return TargetTable(
            route, cols, key, self.version_column, generated, types=types, shapes=shapes, not_null=not_null
        )
