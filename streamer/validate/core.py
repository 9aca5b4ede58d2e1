"""Column kinds and the exact value normalization across dialects (the arbiter of the comparison).

Normalization makes equal values compare equal whatever database holds them. It is driven by
the *source* column's kind (read from the source's catalog), because the target may store a
value in another type (an interval as microseconds in MySQL, JSON as text in SQLite):

=============  =====================================================================
kind           canonical form
=============  =====================================================================
number         ``Decimal`` normalized (``1.50`` == ``1.5``; NaN and infinities as text)
float4/float8  the float rounded to 6 / 15 significant digits
bool           ``True``/``False`` (MySQL's 0/1 included)
timestamp      naive ISO text (``+infinity``/``-infinity`` for the extremes)
timestamptz    UTC ISO text (a MySQL/MariaDB ``TIMESTAMP`` too: read as UTC whatever the session zone)
date, time     ISO text; ``timetz`` converted to UTC
interval       total microseconds (MySQL/SQLite targets store it so)
json           compact JSON with sorted keys (text parsed first)
array          compact JSON of the list (text parsed first)
bytes          hex
uuid, text     text
=============  =====================================================================
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.engine import Engine

from streamer.core.errors import EXIT_SETTINGS, StreamerError


class ValidationSetupError(StreamerError):
    """A table cannot be compared (missing, no primary key, unreadable): exit 2, apart from "differs" (1)."""

    exit_code = EXIT_SETTINGS
    headline = "cannot validate"


@dataclasses.dataclass(frozen=True)
class SourceColumn:
    name: str
    kind: str


def _kind(coltype: Any) -> str:
    if isinstance(coltype, sa.Boolean):
        return "bool"
    if isinstance(coltype, postgresql.MONEY):
        return "number"
    if isinstance(coltype, sa.Float):  # before Numeric: Float is a Numeric
        return (
            "float4"
            if isinstance(coltype, sa.REAL) or getattr(coltype, "precision", None) == 24
            else "float8"
        )
    if isinstance(coltype, sa.Integer | sa.Numeric):
        return "number"
    if isinstance(coltype, sa.DateTime):
        # a MySQL/MariaDB TIMESTAMP is an instant (stored in UTC, shown in the session's zone)
        return "timestamptz" if coltype.timezone or _is_mysql_timestamp(coltype) else "timestamp"
    if isinstance(coltype, sa.Date):
        return "date"
    if isinstance(coltype, sa.Time):
        return "timetz" if coltype.timezone else "time"
    if isinstance(coltype, sa.Interval | postgresql.INTERVAL):
        return "interval"
    if isinstance(coltype, sa.JSON | postgresql.JSON | postgresql.JSONB):
        return "json"
    if isinstance(coltype, sa.ARRAY):
        return "array"
    if isinstance(coltype, sa.LargeBinary | postgresql.BYTEA):
        return "bytes"
    if isinstance(coltype, sa.Uuid):
        return "uuid"
    return "text"


def _is_mysql_timestamp(coltype: Any) -> bool:
    return isinstance(coltype, mysql.TIMESTAMP)


def describe(engine: Engine, schema: str | None, table: str) -> tuple[list[SourceColumn], tuple[str, ...]]:
    """The columns of a table with their kinds and read expressions, and its primary key."""
    insp = sa.inspect(engine)
    if not insp.has_table(table, schema=schema):
        raise ValidationSetupError(f"table {schema + '.' if schema else ''}{table} does not exist")
    cols = [SourceColumn(c["name"], _kind(c["type"])) for c in insp.get_columns(table, schema=schema)]
    key = tuple(insp.get_pk_constraint(table, schema=schema).get("constrained_columns") or ())
    return cols, key


def _utc_text(v: dt.datetime) -> str:
    if v.tzinfo is not None:
        v = v.astimezone(dt.UTC).replace(tzinfo=None)
    return v.isoformat()


def _parse_dt(v: str) -> dt.datetime:
    return dt.datetime.fromisoformat(v.replace("Z", "+00:00"))


def _time_utc(v: dt.time) -> str:
    off = v.utcoffset()
    if off is None:
        return v.isoformat()
    moment = dt.datetime.combine(dt.date(2000, 1, 1), v.replace(tzinfo=None)) - off
    return moment.time().isoformat() + "Z"


_EXACT = decimal.Context(prec=decimal.MAX_PREC, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)


def _number(v: Any) -> Any:
    if isinstance(v, bool):
        return decimal.Decimal(int(v))
    if isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            return str(v)
        v = decimal.Decimal(repr(v))
    elif isinstance(v, str):
        v = decimal.Decimal(v)
    elif isinstance(v, int):
        v = decimal.Decimal(v)
    if isinstance(v, decimal.Decimal):
        if not v.is_finite():
            return str(v).lower().lstrip("+")
        n = v.normalize(_EXACT)  # every digit kept (the default context would round to 28)
        return n if n != 0 else decimal.Decimal(0)
    return v


def _float(v: Any, digits: int) -> Any:
    f = float(v)
    if f != f or f in (float("inf"), float("-inf")):
        return str(f)
    return float(f"{f:.{digits}g}")


def _micros(v: Any) -> Any:
    if isinstance(v, dt.timedelta):
        return (v.days * 86400 + v.seconds) * 1_000_000 + v.microseconds
    return int(v)


def _json(v: Any) -> str:
    if isinstance(v, str | bytes):
        try:
            v = json.loads(v)
        except ValueError:
            pass  # a driver that already decoded a JSON string value hands back the bare string
    return json.dumps(v, sort_keys=True, separators=(",", ":"), default=str)


def _timestamp(v: Any, aware: bool) -> str:
    if isinstance(v, str):
        if v in ("infinity", "-infinity"):
            return v
        v = _parse_dt(v)
    if isinstance(v, dt.datetime):
        if v.year == dt.MAXYEAR and v.month == 12 and v.day == 31:
            return "infinity"
        if v.year == dt.MINYEAR and v.month == 1 and v.day == 1:
            return "-infinity"
    if aware and isinstance(v, dt.datetime):
        return _utc_text(v)
    return str(v.isoformat())


def normalize(kind: str, v: Any) -> Any:
    """The canonical form of a value of a source column kind (see the module docstring).

    A target value that is no value of the kind at all (``'abc'`` in a text column standing for
    a numeric one) is kept as its text: it then differs from every value of the kind.
    """
    if v is None:
        return None
    try:
        return _normalize(kind, v)
    except (ValueError, TypeError, ArithmeticError):
        return bytes(v).decode(errors="replace") if isinstance(v, bytes | memoryview) else str(v)


def _normalize(kind: str, v: Any) -> Any:
    if kind == "number":
        return _number(v)
    if kind == "float4":
        return _float(v, 6)
    if kind == "float8":
        return _float(v, 15)
    if kind == "bool":
        return bool(int(v)) if not isinstance(v, str) else v.lower() in ("t", "true", "1")
    if kind in ("timestamp", "timestamptz"):
        return _timestamp(v, kind == "timestamptz")
    if kind == "date":
        if isinstance(v, dt.date) and v.year in (dt.MAXYEAR, dt.MINYEAR):
            return "infinity" if v.year == dt.MAXYEAR else "-infinity"
        return v.isoformat() if isinstance(v, dt.date) else str(v)
    if kind == "time":
        return v.isoformat() if isinstance(v, dt.time) else str(dt.time.fromisoformat(str(v)).isoformat())
    if kind == "timetz":
        return _time_utc(
            v if isinstance(v, dt.time) else dt.time.fromisoformat(str(v).replace("Z", "+00:00"))
        )
    if kind == "interval":
        return _micros(v)
    if kind in ("json", "array"):
        return _json(v)
    if kind == "bytes":
        return bytes(v).hex() if not isinstance(v, str) else v
    if kind == "uuid":
        return str(uuid.UUID(str(v)))
    if isinstance(v, bytes | memoryview):
        return bytes(v).decode()
    return str(v)


@dataclasses.dataclass
class TableDiff:
    """Differences between a source and a target table, by primary key."""

    missing: list[tuple[Any, ...]] = dataclasses.field(default_factory=list)  # in source, not in target
    extra: list[tuple[Any, ...]] = dataclasses.field(default_factory=list)  # in target, not in source
    changed: list[tuple[tuple[Any, ...], list[str]]] = dataclasses.field(default_factory=list)
    source_rows: int = 0
    target_rows: int = 0
    ranges: int = 0
    ranges_differing: int = 0
    key_columns: tuple[str, ...] = ()
    kinds: dict[str, str] = dataclasses.field(default_factory=dict)  # column -> source kind
    # changed key -> column -> (source, target) normalized values (for --show-values)
    values: dict[tuple[Any, ...], dict[str, tuple[Any, Any]]] = dataclasses.field(default_factory=dict)
    differing_ranges: list[Any] = dataclasses.field(
        default_factory=list
    )  # fast.Range of each differing range
    method: str = ""
    # source column -> type: columns the capture drops, left out of the comparison (validate.captured)
    not_captured: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def equal(self) -> bool:
        return not (self.missing or self.extra or self.changed) and self.source_rows == self.target_rows


class _Side:
    """One side of a comparison: a table read through reflected types, columns in source order."""

    def __init__(
        self,
        engine: Engine,
        schema: str | None,
        table: str,
        columns: Sequence[SourceColumn],
        key: Sequence[str],
        names: Mapping[str, str] | None = None,
    ) -> None:
        names = names or {}
        self.engine = engine
        self.t = sa.Table(table, sa.MetaData(), schema=schema, autoload_with=engine)
        self.exprs: list[Any] = []
        for c in columns:
            n = names.get(c.name, c.name)
            if n not in self.t.c:
                self.exprs.append(sa.null().label(c.name))
            elif engine.dialect.name == "postgresql":
                self.exprs.append(_pg_read(self.t.c[n], c))
            elif _is_mysql_timestamp(self.t.c[n].type):
                # read as UTC whatever the session's time zone (read back naive, i.e. as UTC)
                col = self.t.c[n]
                self.exprs.append(
                    sa.func.convert_tz(col, sa.text("@@session.time_zone"), "+00:00", type_=col.type).label(
                        c.name
                    )
                )
            elif c.kind == "json":
                # as text everywhere: a JSON null must not read back as SQL NULL
                self.exprs.append(sa.cast(self.t.c[n], sa.Text).label(c.name))
            else:
                self.exprs.append(self.t.c[n].label(c.name))
        self.key_cols = [self.t.c[names.get(k, k)] for k in key]
        self.kinds = [c.kind for c in columns]
        index = {c.name: i for i, c in enumerate(columns)}
        self.key_idx = [index[k] for k in key]

    def _norm(self, row: Sequence[Any]) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
        norm = tuple(normalize(k, v) for k, v in zip(self.kinds, row, strict=True))
        return tuple(norm[i] for i in self.key_idx), norm

    def rows(
        self, lo: Sequence[Any] | None = None, hi: Sequence[Any] | None = None, limit: int | None = None
    ) -> tuple[dict[tuple[Any, ...], tuple[Any, ...]], tuple[Any, ...] | None]:
        """Normalized rows with lo < key <= hi, in key order; and the raw key of the last row."""
        q = sa.select(*self.exprs, *self.key_cols).order_by(*self.key_cols)
        if lo is not None:
            q = q.where(sa.tuple_(*self.key_cols) > sa.tuple_(*(sa.literal(v) for v in lo)))
        if hi is not None:
            q = q.where(sa.tuple_(*self.key_cols) <= sa.tuple_(*(sa.literal(v) for v in hi)))
        if limit is not None:
            q = q.limit(limit)
        out: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        last: tuple[Any, ...] | None = None
        n = len(self.exprs)
        with self.engine.connect() as conn:
            for row in conn.execute(q):
                k, norm = self._norm(row[:n])
                out[k] = norm
                last = tuple(row[n:])
        return out, last

    def by_keys(self, keys: Sequence[Sequence[Any]]) -> dict[tuple[Any, ...], tuple[Any, ...]]:
        """Normalized rows of the given raw keys."""
        out: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        with self.engine.connect() as conn:
            for i in range(0, len(keys), 500):
                part = keys[i : i + 500]
                q = sa.select(*self.exprs).where(
                    sa.or_(*(sa.and_(*(c == v for c, v in zip(self.key_cols, k, strict=True))) for k in part))
                )
                for row in conn.execute(q):
                    k, norm = self._norm(row)
                    out[k] = norm
        return out

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(self.t)).scalar_one())


def _pg_read(col: Any, c: SourceColumn) -> Any:
    """PostgreSQL read expressions: money as numeric, enums/domains/bit strings as text."""
    if isinstance(col.type, postgresql.MONEY):
        return sa.cast(col, sa.Numeric).label(c.name)
    if (c.kind == "text" and not isinstance(col.type, sa.String)) or c.kind == "json":
        # json as its text: psycopg2 would hand a JSON string value back as a bare str, a JSON null as None
        return sa.cast(col, sa.Text).label(c.name)
    return col.label(c.name)


def _diff_rows(
    src: Mapping[tuple[Any, ...], tuple[Any, ...]],
    tgt: Mapping[tuple[Any, ...], tuple[Any, ...]],
    names: Sequence[str],
    diff: TableDiff,
) -> None:
    """Compare normalized rows by key (the sample mode)."""
    for k, row in src.items():
        other = tgt.get(k)
        if other is None:
            diff.missing.append(k)
        elif other != row:
            cols = [n for n, a, b in zip(names, row, other, strict=True) if a != b]
            diff.changed.append((k, cols))
            diff.values[k] = {n: (row[names.index(n)], other[names.index(n)]) for n in cols}
    diff.extra.extend(k for k in tgt if k not in src)
