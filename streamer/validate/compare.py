"""Table comparison: ranges of the source's key, the fast tier (:mod:`streamer.validate.fast`), the arbiter."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from streamer import logs
from streamer.validate.captured import uncomparable
from streamer.validate.core import TableDiff, ValidationSetupError, _diff_rows, _Side, describe, normalize
from streamer.validate.fast import Range, Reader, plan_ranges, scan, typed_key, whole_table


def _sorted(keys: Iterable[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    items = list(keys)
    try:
        return sorted(items)
    except TypeError:
        return sorted(items, key=repr)


def validate_table(
    source: Engine,
    source_table: tuple[str | None, str],
    target: Engine,
    target_table: tuple[str | None, str],
    *,
    rename: Mapping[str, str] | None = None,
    drop: Iterable[str] = (),
    chunk_rows: int = 20_000,
    sample: int | None = None,
    ranges: Sequence[Range] | None = None,
) -> TableDiff:
    """Compare a source table with its target copy, down to the differing keys and columns.

    The source's key is cut into ranges of ``chunk_rows`` keys (or ``ranges`` is compared, e.g. the
    ranges a repair re-copied). Each range is compared by the fast tier (server-side hashes when
    both sides are PostgreSQL, else both sides streamed and joined by polars); the keys it finds
    only on one side are missing/extra, and the rows whose fast texts differ are read again by key
    and compared with the exact normalization. Keys that fall in different ranges on the two
    sides (text keys under other collations) are matched up at the end. With ``sample`` only that
    many random source keys are compared, column by column (counts are still exact).
    """
    columns, key = describe(source, *source_table)
    if not key:
        raise ValidationSetupError(
            f"source table {source_table[0]}.{source_table[1]} has no primary key: it cannot be compared by key"
        )
    # columns the capture cannot carry are not compared unless the target computes them (validate.captured)
    not_captured = uncomparable(source, source_table, target, target_table, rename or {})
    dropped = set(drop) | set(not_captured)
    columns = [c for c in columns if c.name not in dropped]
    names = [c.name for c in columns]
    kinds = {c.name: c.kind for c in columns}
    target_name = f"{target_table[0] + '.' if target_table[0] else ''}{target_table[1]}"
    try:
        src_side = _Side(source, *source_table, columns, key)
        tgt_side = _Side(target, *target_table, columns, key, names=rename)
    except sa.exc.NoSuchTableError:
        raise ValidationSetupError(
            f"target table {target_name} does not exist: load it first (streamer load --table "
            f"{source_table[0]}.{source_table[1]})"
        ) from None
    diff = TableDiff(key_columns=tuple(key), kinds=kinds, not_captured=not_captured)
    if sample is not None:
        diff.method = "sample"
        diff.source_rows, diff.target_rows = src_side.count(), tgt_side.count()
        with source.connect() as conn:
            q = sa.select(*src_side.key_cols).order_by(sa.func.random()).limit(sample)
            keys = [tuple(r) for r in conn.execute(q)]
        _diff_rows(src_side.by_keys(keys), tgt_side.by_keys(keys), names, diff)
        diff.extra = []  # a sample says nothing of extra rows; counts do
        return diff
    src = Reader(source, *source_table, columns, key)
    tgt = Reader(target, *target_table, columns, key, names=rename)
    diff.method = "server hashes" if src.is_pg and tgt.is_pg else "streamed"
    key_idx = [names.index(k) for k in key]
    key_labels = [src.labels[i] for i in key_idx]
    key_kinds = [kinds[k] for k in key]
    server_hashes = src.is_pg and tgt.is_pg
    if ranges is None and server_hashes:
        try:
            equal, diff.source_rows, diff.target_rows = whole_table(src, tgt)
        except sa.exc.DBAPIError as exc:  # a target column the canonical cast refuses: stream instead
            logs.get("validate").warning(
                "no server-side hashes; streaming both sides", table=target_name, error=_db_error(exc)
            )
            server_hashes, equal = False, False
            diff.method = "streamed"
        if equal:  # one hash per side proves it; ranges only when something differs
            diff.ranges = 1
            return diff
        diff.source_rows = diff.target_rows = 0
    todo = list(ranges) if ranges is not None else plan_ranges(src, max(1, chunk_rows))
    missing: set[tuple[str, ...]] = set()
    extra: set[tuple[str, ...]] = set()
    changed: set[tuple[str, ...]] = set()
    try:
        found_ranges = list(scan(src, tgt, todo, key_labels, server_hashes=server_hashes))
    except sa.exc.DBAPIError as exc:
        raise ValidationSetupError(
            f"cannot read {source_table[0]}.{source_table[1]} -> {target_name} for the comparison: {_db_error(exc)}; "
            "the target's column types must hold the source's values (see streamer load, schema.mode)"
        ) from None
    for i, found in found_ranges:
        diff.ranges += 1
        diff.source_rows += found.source_rows
        diff.target_rows += found.target_rows
        if found.differs:
            diff.ranges_differing += 1
            diff.differing_ranges.append(todo[i])
            missing.update(found.missing)
            extra.update(found.extra)
            changed.update(found.changed)
    moved = missing & extra  # in another range on each side: compare the rows themselves
    missing -= moved
    extra -= moved
    candidates = [typed_key(key_kinds, k) for k in changed | moved]
    if candidates:
        a, b = src_side.by_keys(candidates), tgt_side.by_keys(candidates)
        for k in candidates:
            row, other = a.get(_norm_key(src_side, k)), b.get(_norm_key(tgt_side, k))
            if row is None and other is None:
                continue  # deleted on both sides meanwhile (a live stream)
            if other is None:
                diff.missing.append(k)
            elif row is None:
                diff.extra.append(k)
            elif row != other:
                cols = [n for n, x, y in zip(names, row, other, strict=True) if x != y]
                diff.changed.append((k, cols))
                diff.values[k] = {n: (row[names.index(n)], other[names.index(n)]) for n in cols}
    diff.missing = _sorted([*diff.missing, *(typed_key(key_kinds, k) for k in missing)])
    diff.extra = _sorted([*diff.extra, *(typed_key(key_kinds, k) for k in extra)])
    order = {k: i for i, k in enumerate(_sorted(k for k, _ in diff.changed))}
    diff.changed.sort(key=lambda kc: order[kc[0]])
    return diff


def _db_error(exc: sa.exc.DBAPIError) -> str:
    return str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)


def _norm_key(side: _Side, raw: tuple[Any, ...]) -> tuple[Any, ...]:
    """The key of :meth:`_Side.by_keys`'s result (normalized) for a raw key."""
    return tuple(normalize(side.kinds[i], v) for i, v in zip(side.key_idx, raw, strict=True))


def compare_tables(
    source: Engine,
    source_table: tuple[str | None, str],
    target: Engine,
    target_table: tuple[str | None, str],
    *,
    rename: Mapping[str, str] | None = None,
    drop: Iterable[str] = (),
) -> TableDiff:
    """Compare two whole tables: range hashes, then row by row and column by column where they differ."""
    return validate_table(source, source_table, target, target_table, rename=rename, drop=drop)
