"""Columns the capture cannot carry, as ``streamer validate`` sees them ("not captured").

Debezium 3.1 sends no field for some PostgreSQL types (:func:`streamer.connect.publications.capture_drops`,
the same knowledge ``connectors validate``/``plan`` use), so the stream leaves such a column stale
in the target while ``streamer load`` copied it. Comparing it would report differences nobody can
fix by re-streaming. So such a source column is left out of the comparison and listed as "not
captured", unless the target computes the value itself: its target column is a generated column,
or the target table has a trigger of its own (a managed table keeping a ``tsvector`` with a
trigger). A column the target computes is compared like any other (a difference there is real).

The fix to print: exclude the column in the connector (``column.exclude.list``), or let the target
compute it (a managed table with a trigger or a generated column).
"""

from __future__ import annotations

from collections.abc import Mapping

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from streamer.connect.publications import dropped_source_columns

FIX = (
    "the capture sends no value for this type, so the stream leaves it stale: exclude it in the "
    "connector (column.exclude.list: {table}.{column}) or let the target compute it (a managed table "
    "with a trigger or a generated column)"
)


def not_captured_columns(source: Engine, schema: str | None, table: str) -> dict[str, str]:
    """Source column -> its type, for every column of a PostgreSQL source table the capture drops."""
    if source.dialect.name != "postgresql" or schema is None:
        return {}
    raw = source.raw_connection()
    try:
        cur = raw.cursor()
        try:
            found = dropped_source_columns(cur, [(schema, table)])
        finally:
            cur.close()
    finally:
        raw.close()
    return {column: shown for _s, _t, column, shown in found}


def target_computed(target: Engine, schema: str | None, table: str) -> set[str] | None:
    """The target's generated columns of a table, or None when the table has a trigger (every
    column may be computed by it)."""
    with target.connect() as conn:
        insp = sa.inspect(conn)
        if not insp.has_table(table, schema=schema):
            return set()
        generated = {c["name"] for c in insp.get_columns(table, schema=schema) if c.get("computed")}
        name = target.dialect.name
        if name == "postgresql":
            qualified = conn.dialect.identifier_preparer.format_table(sa.table(table, schema=schema))
            query = "SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass(:q) AND NOT tgisinternal"
            triggers = conn.execute(sa.text(query), {"q": qualified}).scalar_one()
        elif name in ("mysql", "mariadb"):
            triggers = conn.execute(
                sa.text(
                    "SELECT count(*) FROM information_schema.triggers "
                    "WHERE event_object_schema = COALESCE(:s, DATABASE()) AND event_object_table = :t"
                ),
                {"s": schema, "t": table},
            ).scalar_one()
        else:
            triggers = conn.execute(
                sa.text("SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND tbl_name = :t"),
                {"t": table},
            ).scalar_one()
    return None if triggers else generated


def uncomparable(
    source: Engine,
    source_table: tuple[str | None, str],
    target: Engine,
    target_table: tuple[str | None, str],
    rename: Mapping[str, str],
) -> dict[str, str]:
    """Source column -> type of the columns validate leaves out as "not captured"."""
    dropped = not_captured_columns(source, *source_table)
    if not dropped:
        return {}
    computed = target_computed(target, *target_table)
    if computed is None:
        return {}
    return {c: t for c, t in dropped.items() if rename.get(c, c) not in computed}
