"""The one version rule in SQL: where an incoming row may replace (or delete) the stored one.

:func:`newer` (a SQLAlchemy expression) and :func:`newer_sql` (text, for the COPY merge) are the
SQL forms of :func:`streamer.core.events.supersedes`: the stored row is missing, older, or a
snapshot row (its version carries the read mark) that a streamed change replaces.
"""

from __future__ import annotations

from typing import Any, Final

import sqlalchemy as sa

from streamer.core.events import READ_MARK

_READ_PATTERN: Final = "%" + READ_MARK


def newer(stored: Any, incoming: Any) -> Any:
    """The version guard as a SQL expression: :func:`streamer.core.events.supersedes` of two columns.

    Missing, older, or a snapshot row (read mark) replaced by a streamed change.
    """
    # the pattern as a literal, not a parameter: PyMySQL's executemany formats the statement's
    # ON DUPLICATE KEY part without parameters (the compiler doubles the literal's percent sign)
    pattern: sa.ColumnClause[str] = sa.literal_column(f"'{_READ_PATTERN}'", sa.String())
    return sa.or_(
        stored.is_(None),
        stored < incoming,
        sa.and_(stored.like(pattern), incoming.not_like(pattern)),
    )


def newer_sql(stored: str, incoming: str) -> str:
    """:func:`newer` as SQL text over two quoted column references (``t."v"``, ``s."v"``)."""
    return (
        f"({stored} IS NULL OR {stored} < {incoming} OR "
        f"({stored} LIKE '{_READ_PATTERN}' AND {incoming} NOT LIKE '{_READ_PATTERN}'))"
    )
