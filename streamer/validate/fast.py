"""The fast comparison: server-side hashes (PostgreSQL on both sides), else bulk streams joined by polars.

Two tiers, so that speed never costs correctness:

1. **Fast tier.** Both sides PostgreSQL: each server reduces the whole table (then, where that
   differs, each key range) to ``count(*)`` and the sum of a 64-bit hash per row,
   ``hash_record_extended`` of the columns cast to one canonical type per kind (:data:`_CANONICAL`;
   md5 of the rows' text when the servers' hashes disagree on a probe). Otherwise, and for the
   ranges that differ, both sides' rows are streamed in bulk as text (``COPY ... TO STDOUT`` on
   PostgreSQL, which writes each column's canonical text itself (:func:`_pg_text`); one
   ``GROUP_CONCAT`` string per range in COPY text form on MariaDB/MySQL; a cursor on SQLite),
   the other side's texts are brought to the same form by polars (:func:`fast_norm`), and a polars
   join on the key names the keys on one side only and the keys whose other columns differ. NULL
   stays NULL: never equal to an empty string.
2. **Arbiter.** A row whose fast texts differ is read again by key on both sides and compared by
   :func:`streamer.validate.core.normalize`, the exact normalization. Only what it still finds
   different is reported: the fast texts may differ for equal values (a JSON document stored with
   other spacing), never agree for unequal ones.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import decimal
import io
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import polars as pl
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Engine

from streamer.core.errors import EXIT_SETTINGS, StreamerError
from streamer.validate.core import SourceColumn


class FetchError(StreamerError):
    """A side's rows could not be read whole; the message says which table and what to change. Exit 2."""

    exit_code = EXIT_SETTINGS
    headline = "cannot validate"


PG_SESSION = (
    "SET LOCAL DateStyle = 'ISO, YMD'",
    "SET LOCAL TimeZone = 'UTC'",
    "SET LOCAL extra_float_digits = 0",
    "SET LOCAL bytea_output = 'hex'",
    "SET LOCAL IntervalStyle = 'postgres'",
)


@dataclasses.dataclass(frozen=True)
class Range:
    """Keys ``lo < key <= hi`` (``None``: unbounded), raw values as the source's driver reads them."""

    lo: tuple[Any, ...] | None
    hi: tuple[Any, ...] | None


# the column types a kind's canonical cast accepts; a column of another type (a managed target's
# text column holding JSON, say) is read as its text, and the arbiter judges what differs
_NATURAL: dict[str, tuple[type[Any], ...]] = {
    "number": (sa.Integer, sa.Numeric, postgresql.MONEY),
    "float4": (sa.Integer, sa.Numeric),
    "float8": (sa.Integer, sa.Numeric),
    "bool": (sa.Boolean,),
    "timestamp": (sa.DateTime,),
    "timestamptz": (sa.DateTime,),
    "date": (sa.Date, sa.DateTime),
    "time": (sa.Time,),
    "timetz": (sa.Time,),
    "interval": (sa.Interval, postgresql.INTERVAL),
    "json": (sa.JSON,),
    "array": (sa.ARRAY,),
    "bytes": (sa.LargeBinary,),
    "uuid": (sa.Uuid, sa.String),
}


def _natural(col: Any, kind: str) -> bool:
    return kind not in _NATURAL or isinstance(col.type, _NATURAL[kind])


def _pg_text(col: Any, kind: str) -> Any:
    """A PostgreSQL expression of a column's fast canonical text (``SET LOCAL`` settings of :data:`PG_SESSION`)."""
    if not _natural(col, kind):
        return sa.cast(col, sa.Text)
    if kind == "number" and isinstance(col.type, sa.Integer):
        return sa.cast(col, sa.Text)  # an integer's text is canonical already
    if kind == "number":
        return sa.cast(sa.func.trim_scale(sa.cast(col, sa.Numeric)), sa.Text)
    if kind == "float4":
        return sa.cast(sa.cast(col, sa.REAL), sa.Text)
    if kind == "float8":
        return sa.cast(sa.cast(col, postgresql.DOUBLE_PRECISION), sa.Text)
    if kind == "bool":
        return sa.case((col.is_(True), "t"), (col.is_(False), "f"))
    if kind == "timestamp":
        return sa.cast(sa.cast(col, postgresql.TIMESTAMP()), sa.Text)
    if kind == "timestamptz":  # at UTC, without the zone: as fast_norm writes it
        return sa.cast(sa.func.timezone("UTC", sa.cast(col, postgresql.TIMESTAMP(timezone=True))), sa.Text)
    if kind == "interval":
        return sa.cast(sa.cast(sa.func.round(sa.extract("epoch", col) * 1_000_000), sa.BigInteger), sa.Text)
    if kind == "json":
        # json keeps the text it was given, and that text is what the stream carries: as it is
        return sa.cast(col, sa.Text)
    if kind == "array":
        return sa.cast(sa.func.array_to_json(col), sa.Text)  # compact, as the sink writes a JSON target
    if kind == "bytes":
        return sa.func.encode(col, "hex")
    return sa.cast(col, sa.Text)


_CANONICAL: dict[str, Any] = {
    "number": sa.Numeric(),
    "float4": sa.REAL(),
    "float8": postgresql.DOUBLE_PRECISION(),
    "bool": sa.Boolean(),
    "timestamp": postgresql.TIMESTAMP(),
    "timestamptz": postgresql.TIMESTAMP(timezone=True),
    "date": sa.Date(),
    "time": postgresql.TIME(),
    "timetz": postgresql.TIME(timezone=True),
    "interval": postgresql.INTERVAL(),
    "json": postgresql.JSONB(),
    "bytes": postgresql.BYTEA(),
    "uuid": postgresql.UUID(),
}


def _pg_typed(col: Any, kind: str) -> Any:
    """A column cast to its kind's canonical PostgreSQL type, whose hash agrees with equality."""
    if not _natural(col, kind):
        return sa.cast(col, sa.Text)
    if kind == "array":
        return sa.func.to_jsonb(col)
    return sa.cast(col, _CANONICAL.get(kind, sa.Text()))


def hash_method(source: Reader, target: Reader) -> str:
    """``record`` when both servers' ``hash_record_extended`` agree on a probe, else ``md5``."""
    a, b = source.probe(), target.probe()
    return "record" if a is not None and a == b else "md5"


def whole_table(source: Reader, target: Reader) -> tuple[bool, int, int]:
    """PostgreSQL on both sides: one hash of each whole table (a sequential scan each, in parallel).

    Returns (equal, source rows, target rows).
    """
    method = hash_method(source, target)
    everything = [Range(None, None)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        fs = pool.submit(source.digests, everything, method)
        ft = pool.submit(target.digests, everything, method)
        (a,), (b,) = fs.result(), ft.result()
    return a == b, a[0], b[0]


def _other_text(col: Any, kind: str, dialect: str) -> Any:
    """A MariaDB/MySQL/SQLite expression handing a column back as text (bytes as hex).

    MariaDB/MySQL: the column itself (``CONCAT_WS`` in :meth:`Reader._fetch_grouped` writes it as
    its text, as ``CAST(... AS CHAR)`` would, at half the server's cost).
    """
    if kind == "bytes":
        return sa.func.hex(col)
    if dialect in ("mysql", "mariadb"):
        return col
    return sa.cast(col, sa.Text)


_FRACTION_ZEROS = r"(\.\d*?)0+$"


def fast_norm(kind: str, e: pl.Expr) -> pl.Expr:
    """The polars form of the fast canonical text of a String column of a source kind (both sides)."""
    if kind == "number":
        e = e.str.strip_chars()
        e = (
            pl.when(e.str.contains(r"^-?\d+\.\d*$"))
            .then(e.str.replace(r"0+$", "").str.replace(r"\.$", ""))
            .otherwise(e)
        )
        return pl.when(e == "-0").then(pl.lit("0")).otherwise(e)
    if kind in ("float4", "float8"):
        digits = 6 if kind == "float4" else 15
        as_float = e.cast(pl.Float64, strict=False)
        return pl.coalesce(as_float.round_sig_figs(digits).cast(pl.String), pl.lit("?") + e)
    if kind == "bool":
        low = e.str.to_lowercase()
        return (
            pl.when(low.is_in(["t", "true", "1"]))
            .then(pl.lit("t"))
            .when(low.is_in(["f", "false", "0"]))
            .then(pl.lit("f"))
            .otherwise(pl.lit("?") + e)
        )
    if kind in ("timestamp", "timestamptz", "time"):
        e = e.str.replace("T", " ", literal=True)
        if kind == "timestamptz":
            e = e.str.replace(r"(\+00(:00)?|Z)$", "")
        return e.str.replace(_FRACTION_ZEROS, "${1}").str.replace(r"\.$", "")
    if kind in ("bytes", "uuid"):
        return e.str.to_lowercase()
    return e


class Reader:
    """One side of a comparison, read in bulk as fast canonical text."""

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
        self.dialect = engine.dialect.name
        self.t = sa.Table(table, sa.MetaData(), schema=schema, autoload_with=engine)
        self.columns = list(columns)
        self.labels = [f"c{i}" for i in range(len(columns))]
        self.exprs: list[Any] = []
        self.typed: list[Any] = []  # PostgreSQL: each column cast to its kind's canonical type (row hashes)
        # columns whose text the server already writes in fast_norm's form (PostgreSQL, a column of
        # its kind's own type, not a float): polars leaves them as they are
        self.canonical: list[bool] = []
        for c, label in zip(columns, self.labels, strict=True):
            n = names.get(c.name, c.name)
            if n not in self.t.c:
                self.exprs.append(sa.cast(sa.null(), sa.Text).label(label))
                self.typed.append(sa.cast(sa.null(), _CANONICAL.get(c.kind, sa.Text())))
                self.canonical.append(True)
            elif self.dialect == "postgresql":
                self.exprs.append(_pg_text(self.t.c[n], c.kind).label(label))
                self.typed.append(_pg_typed(self.t.c[n], c.kind))
                self.canonical.append(
                    _natural(self.t.c[n], c.kind) and c.kind not in ("float4", "float8", "timetz")
                )
            else:
                self.exprs.append(_other_text(self.t.c[n], c.kind, self.dialect).label(label))
                self.canonical.append(False)
        self.key_cols = [self.t.c[names.get(k, k)] for k in key]

    @property
    def is_pg(self) -> bool:
        return self.dialect == "postgresql"

    def _where(self, q: Any, rng: Range) -> Any:
        if rng.lo is not None:
            q = q.where(sa.tuple_(*self.key_cols) > sa.tuple_(*(sa.literal(v) for v in rng.lo)))
        if rng.hi is not None:
            q = q.where(sa.tuple_(*self.key_cols) <= sa.tuple_(*(sa.literal(v) for v in rng.hi)))
        return q

    def _row_hash(self, method: str) -> Any:
        """A 64-bit hash of a row, computed by the server.

        ``record``: ``hash_record_extended`` of the columns cast to one canonical type per kind
        (numeric, float4/float8, timestamptz, jsonb, ...), so equal values hash equal whatever
        the column's own type (``1.50`` and ``1.5``, an enum and its text, json and jsonb);
        ``md5``: the first 64 bits of ``md5`` of ``ROW(...)::text`` of the fast texts (servers
        whose hashes differ, PostgreSQL before 14).
        """
        if method == "record":
            return sa.func.hash_record_extended(sa.func.row(*self.typed), 0)
        row = sa.cast(sa.func.row(*(e.element for e in self.exprs)), sa.Text)
        digest = sa.func.md5(row)
        return sa.cast(
            sa.cast(sa.literal("x").concat(sa.func.left(digest, 16)), postgresql.BIT(64)), sa.BigInteger
        )

    def probe(self) -> int | None:
        """``hash_record_extended`` of fixed values (None where the server has none): equal on both sides
        means their row hashes can be compared."""
        q = sa.text(
            "SELECT hash_record_extended(row(1.5::numeric, 'a'::text, timestamptz '2024-01-01 00:00:00+00', "
            """'{"a": [1]}'::jsonb, 2.5::float8, true), 0)"""
        )
        try:
            with self.engine.connect() as conn:
                return int(conn.execute(q).scalar_one())
        except sa.exc.DBAPIError:
            return None

    def digests(self, ranges: Sequence[Range], method: str = "record") -> list[tuple[int, int]]:
        """PostgreSQL: per range, ``count(*)`` and the sum of the rows' 64-bit hashes, computed by the server."""
        h = self._row_hash(method)
        out: list[tuple[int, int]] = []
        with self.engine.begin() as conn:
            conn.exec_driver_sql("; ".join(PG_SESSION))  # one round trip
            for rng in ranges:
                q = self._where(
                    sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(h), 0)).select_from(self.t), rng
                )
                n, total = conn.execute(q).one()
                out.append((int(n), int(total)))
        return out

    def _fetch_other(self, rng: Range) -> pl.DataFrame:
        """MariaDB/MySQL: :meth:`_fetch_grouped` (a pure-Python driver pays per row and per field, so
        it reads one long string per range); SQLite: the rows as they are, escaped as COPY text."""
        my = self.dialect in ("mysql", "mariadb")
        if my:
            return self._fetch_grouped(rng)
        q = self._where(sa.select(*self.exprs).select_from(self.t), rng).order_by(*self.key_cols)
        compiled = q.compile(dialect=self.engine.dialect)
        sql, params = str(compiled), compiled.params
        raw: Any = self.engine.raw_connection()
        try:
            cur = raw.cursor()
            try:
                positional = compiled.positiontup or []
                rows = list(_fetch_rows(cur, sql, [params[p] for p in positional] if positional else params))
            finally:
                cur.close()
        finally:
            raw.close()
        columns = list(zip(*rows, strict=True)) if rows else [() for _ in self.labels]
        df = pl.DataFrame(
            [
                pl.Series(label, _texts(col), dtype=pl.String)
                for label, col in zip(self.labels, columns, strict=True)
            ]
        )
        return df.select(
            (copy_escape(pl.col(label)) if c.kind in _ESCAPED else pl.col(label)).alias(label)
            for c, label in zip(self.columns, self.labels, strict=True)
        )

    def _fetch_grouped(self, rng: Range) -> pl.DataFrame:
        """MariaDB/MySQL: the range as one string, rows in PostgreSQL's COPY text form joined by newlines."""
        import pymysql.cursors

        pieces = []
        for c, e in zip(self.columns, self.exprs, strict=True):
            value = e.element
            if c.kind in _ESCAPED:
                value = _my_escape(value, _SEPARATING)
            pieces.append(sa.func.ifnull(value, "\\N"))
        row = sa.func.concat_ws(sa.func.char(9), *pieces).label("r")
        keys = [k.label(f"k{i}") for i, k in enumerate(self.key_cols)]
        inner = self._where(sa.select(row, *keys).select_from(self.t), rng)
        compiled = inner.compile(dialect=self.engine.dialect)
        # no ORDER BY: the rows are matched by key, not by position (and the range scan reads them in
        # key order anyway, which lets the equal case skip the join)
        sql = (  # the inner query is compiled with bound parameters
            f"SELECT COUNT(*), GROUP_CONCAT(r SEPARATOR '\\n') FROM ({compiled}) AS streamer_rows"  # noqa: S608
        )
        raw: Any = self.engine.raw_connection()
        try:
            driver = raw.driver_connection
            with driver.cursor() as c:
                c.execute("SET SESSION group_concat_max_len = 4294967295")
            cur = driver.cursor(pymysql.cursors.SSCursor)
            try:
                ((count, text),) = list(_fetch_rows(cur, sql, compiled.params))
            finally:
                cur.close()
        finally:
            raw.close()
        if isinstance(text, bytes):  # CHAR(9) is a binary string: rows of numbers only concatenate to one
            text = text.decode()
        data = (text or "").encode() + (b"\n" if text else b"")
        df = read_copy_text(data, self.labels)
        if df.height != int(count):
            raise FetchError(
                f"{self.t.fullname}: the server's GROUP_CONCAT returned {df.height} of the {count} rows of a range "
                "(rows too wide for max_allowed_packet): run streamer validate with a smaller --chunk-rows"
            )
        return df

    def frame(self, rng: Range) -> pl.DataFrame:
        """The range's rows as fast canonical text (:func:`fast_norm` applied), one String column per column."""
        q = self._where(sa.select(*self.exprs).select_from(self.t), rng).order_by(*self.key_cols)
        if self.is_pg:
            compiled = q.compile(dialect=self.engine.dialect)
            with self.engine.begin() as conn:
                conn.exec_driver_sql("; ".join(PG_SESSION))  # one round trip
                dbapi: Any = conn.connection.dbapi_connection
                with dbapi.cursor() as cur:
                    sql = cur.mogrify(str(compiled), compiled.params).decode()
                    buf = io.BytesIO()
                    cur.copy_expert(f"COPY ({sql}) TO STDOUT", buf)
            df = read_copy_text(buf.getvalue(), self.labels)
        else:
            df = self._fetch_other(rng)
        return df.select(
            (pl.col(label) if done else fast_norm(c.kind, pl.col(label))).alias(label)
            for c, label, done in zip(self.columns, self.labels, self.canonical, strict=True)
        )


_ESCAPED = frozenset({"text", "json", "array"})  # kinds whose text may hold backslashes or control characters
# PostgreSQL's COPY text form: backslash first, then the characters it writes as escapes
_COPY_ESCAPES = (
    ("\\", "\\\\"),
    ("\b", "\\b"),
    ("\f", "\\f"),
    ("\n", "\\n"),
    ("\r", "\\r"),
    ("\t", "\\t"),
    ("\v", "\\v"),
)


# what the server must escape: the separators and the escape character (injective, one line per
# row); a value with \b, \f or \v then differs in the fast tier only and the arbiter judges it
_SEPARATING = _COPY_ESCAPES[:1] + _COPY_ESCAPES[3:6]


def _my_escape(value: Any, escapes: Sequence[tuple[str, str]]) -> Any:
    """MariaDB/MySQL SQL escaping a text as PostgreSQL's COPY text form does (``escapes`` of it)."""
    for raw, escaped in escapes:
        value = sa.func.replace(value, raw, escaped)
    return value


def copy_escape(e: pl.Expr) -> pl.Expr:
    """polars escaping a String column as PostgreSQL's COPY text form does."""
    for raw, escaped in _COPY_ESCAPES:
        e = e.str.replace_all(raw, escaped, literal=True)
    return e


def read_copy_text(data: bytes, labels: Sequence[str]) -> pl.DataFrame:
    """Rows in COPY text form (tab-separated, ``\\N`` for NULL, values left escaped) as String columns."""
    schema = dict.fromkeys(labels, pl.String)
    if not data:
        return pl.DataFrame(schema=schema)
    return pl.read_csv(
        io.BytesIO(data),
        has_header=False,
        separator="\t",
        quote_char=None,
        null_values=["\\N"],
        empty_string_is_null=False,
        schema=schema,
    )


def _fetch_rows(cursor: Any, sql: str, params: Any) -> Iterator[Sequence[Any]]:
    cursor.execute(sql, params)
    while True:
        rows = cursor.fetchmany(20_000)
        if not rows:
            return
        yield from rows


def _texts(values: Sequence[Any]) -> list[str | None]:
    """SQLite hands back text, or numbers/bytes where a column's affinity kept them: all as text."""
    return [
        v if v is None or isinstance(v, str) else (v.decode() if isinstance(v, bytes) else str(v))
        for v in values
    ]


def plan_ranges(source: Reader, chunk_rows: int) -> list[Range]:
    """Boundaries every ``chunk_rows`` keys of the source (one keyset scan): ranges covering every key."""
    keys = source.key_cols
    rn = sa.func.row_number().over(order_by=keys).label("rn")
    inner = sa.select(*(k.label(f"k{i}") for i, k in enumerate(keys)), rn).select_from(source.t).subquery()
    kcols = [inner.c[f"k{i}"] for i in range(len(keys))]
    q = sa.select(*kcols).where(inner.c.rn % chunk_rows == 0).order_by(*kcols)
    with source.engine.connect() as conn:
        bounds = [tuple(r) for r in conn.execute(q)]
    ranges: list[Range] = []
    lo: tuple[Any, ...] | None = None
    for hi in bounds:
        ranges.append(Range(lo, hi))
        lo = hi
    ranges.append(Range(lo, None))  # past the last boundary (and everything, for a small table)
    return ranges


@dataclasses.dataclass
class RangeResult:
    """The fast tier's verdict on one range: key texts only at the source, only at the target, differing."""

    source_rows: int
    target_rows: int
    missing: list[tuple[str, ...]]
    extra: list[tuple[str, ...]]
    changed: list[tuple[str, ...]]

    @property
    def differs(self) -> bool:
        return bool(self.missing or self.extra or self.changed)


def compare_frames(s: pl.DataFrame, t: pl.DataFrame, key_labels: Sequence[str]) -> RangeResult:
    """Join two ranges' fast texts on the key: keys on one side only, and keys whose other columns differ."""
    if s.height == t.height and s.equals(t, null_equal=True):  # the usual case: same rows, same key order
        return RangeResult(s.height, t.height, [], [], [])
    values = [c for c in s.columns if c not in key_labels]
    j = s.with_columns(pl.lit(True).alias("_in_s")).join(
        t.with_columns(pl.lit(True).alias("_in_t")),
        on=list(key_labels),
        how="full",
        coalesce=True,
        suffix="_t",
    )
    keys = list(key_labels)
    missing = j.filter(pl.col("_in_t").is_null()).select(keys)
    extra = j.filter(pl.col("_in_s").is_null()).select(keys)
    both = j.filter(pl.col("_in_s") & pl.col("_in_t"))
    if values:
        differs = pl.any_horizontal([~pl.col(c).eq_missing(pl.col(c + "_t")) for c in values])
        changed = both.filter(differs).select(keys)
    else:
        changed = both.clear().select(keys)
    return RangeResult(
        s.height,
        t.height,
        list(missing.iter_rows()),
        list(extra.iter_rows()),
        list(changed.iter_rows()),
    )


def typed_key(kinds: Sequence[str], texts: Sequence[str]) -> tuple[Any, ...]:
    """Key values from their fast texts: numbers as ``int`` (or ``Decimal``), everything else as text."""
    out: list[Any] = []
    for kind, text in zip(kinds, texts, strict=True):
        if kind == "number":
            d = decimal.Decimal(text)
            out.append(int(d) if d == d.to_integral_value() else d)
        elif kind in ("float4", "float8"):
            out.append(float(text))
        elif kind == "bool":
            out.append(text == "t")
        else:
            out.append(text)
    return tuple(out)


def scan(
    source: Reader,
    target: Reader,
    ranges: Sequence[Range],
    key_labels: Sequence[str],
    *,
    server_hashes: bool = True,
) -> Iterator[tuple[int, RangeResult]]:
    """Each range's fast verdict: by server hashes when both sides are PostgreSQL, else by streams.

    Source and target are read at the same time (two threads: the drivers wait on the servers,
    polars releases the GIL); streams are read a few ranges ahead so that memory stays bounded.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        if server_hashes and source.is_pg and target.is_pg:
            method = hash_method(source, target)
            fs = pool.submit(source.digests, ranges, method)
            ft = pool.submit(target.digests, ranges, method)
            ds, dt_ = fs.result(), ft.result()
            for i, (a, b) in enumerate(zip(ds, dt_, strict=True)):
                if a == b:
                    yield i, RangeResult(a[0], b[0], [], [], [])
                else:
                    s, t = pool.submit(source.frame, ranges[i]), pool.submit(target.frame, ranges[i])
                    yield i, compare_frames(s.result(), t.result(), key_labels)
            return
        ahead = 2
        pending: list[
            tuple[concurrent.futures.Future[pl.DataFrame], concurrent.futures.Future[pl.DataFrame]]
        ] = []
        submitted = 0
        for i in range(len(ranges)):
            while submitted < len(ranges) and submitted <= i + ahead:
                r = ranges[submitted]
                pending.append((pool.submit(source.frame, r), pool.submit(target.frame, r)))
                submitted += 1
            fs_, ft_ = pending.pop(0)
            yield i, compare_frames(fs_.result(), ft_.result(), key_labels)
