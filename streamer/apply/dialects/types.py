"""How a change event's column type becomes a target column type, with each target's choices.

:func:`~streamer.apply.schema.sql_type` reads a :class:`~streamer.core.events.ColumnType` (its
Connect base type, its Debezium logical type, the source type and length the connector
propagates) and asks the target dialect's :class:`TargetTypes` for the type where targets
differ. This base class holds the choices of a target with few types of its own (SQLite);
:mod:`~streamer.apply.dialects.postgresql` and :mod:`~streamer.apply.dialects.mysql` override
what they have better types for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from streamer.core.events import ColumnType

SqlType = sa.types.TypeEngine[Any]

MYSQL_MAX_PRECISION = 65  # DECIMAL(M, D) of MySQL/MariaDB: M <= 65 digits in all, D <= 30 after the point
MYSQL_MAX_SCALE = 30


def mysql_decimal(precision: int | None, scale: int | None) -> tuple[int, int]:
    """The MySQL/MariaDB ``DECIMAL(M, D)`` of a source ``numeric(precision, scale)`` (None: unconstrained).

    ``numeric(p, s)`` with ``p <= 65`` and ``0 <= s <= 30`` is ``DECIMAL(p, s)``: it holds every
    value the source column can. Beyond (``p > 65`` or ``s > 30``) no DECIMAL does: the scale is kept
    up to 30 and the integer digits ``p - s`` up to what is left of 65 (``numeric(70,10)`` ->
    ``DECIMAL(65,10)``, ``numeric(40,35)`` -> ``DECIMAL(35,30)``); an unconstrained ``numeric`` is
    ``DECIMAL(65,30)``; a known scale with an unknown precision ``DECIMAL(65, min(s, 30))``. A
    negative scale (PostgreSQL 15 ``numeric(3,-2)``) is ``DECIMAL(p - s, 0)``.
    A value such a column cannot hold exactly is refused per value by the sink
    (:class:`~streamer.apply.dialects.mysql.UnrepresentableValueError`), never rounded.
    """
    if precision is None or not 0 < precision <= 1000:  # 1000: PostgreSQL's most; more is "unknown"
        if scale is None:
            return MYSQL_MAX_PRECISION, MYSQL_MAX_SCALE
        return MYSQL_MAX_PRECISION, max(0, min(scale, MYSQL_MAX_SCALE))
    s = scale or 0
    whole = precision - s  # digits before the point the source allows (negative: none)
    d = max(0, min(s, MYSQL_MAX_SCALE))
    m = min(MYSQL_MAX_PRECISION, max(whole, 0) + d)
    return max(m, d, 1), d


class TargetTypes:
    """The target types where targets differ; these are the choices of a target without them."""

    def decimal(self, precision: int | None, scale: int) -> SqlType:
        """``Decimal`` (Connect) of a known scale."""
        if precision and precision <= 1000:
            return sa.Numeric(precision, scale)
        return sa.Numeric(65, scale)

    def variable_decimal(self) -> SqlType:
        """``VariableScaleDecimal``: an unconstrained numeric."""
        return sa.Numeric(*mysql_decimal(None, None))

    def string_decimal(self, length: int | None, scale: int | None) -> SqlType:
        """A numeric sent as text (``decimal.handling.mode=string``); ``length``/``scale`` of the source."""
        return sa.Numeric(65, 30)

    def time(self) -> SqlType:
        return sa.Time()

    def zoned_time(self) -> SqlType:
        return sa.String(32)

    def timestamp(self) -> SqlType:
        return sa.DateTime()

    def zoned_timestamp(self) -> SqlType:
        return sa.DateTime(timezone=True)

    def duration(self) -> SqlType:
        """``MicroDuration``: microseconds where there is no interval type."""
        return sa.BigInteger()

    def json(self, source_type: str) -> SqlType:
        return sa.JSON()

    def uuid(self) -> SqlType:
        return sa.String(36)

    def enum(self, key: bool) -> SqlType:
        return sa.Text()

    def array(self, items: ColumnType | None, element: Callable[[ColumnType], SqlType]) -> SqlType:
        """An array: JSON where there are no array types (``element`` maps an item type)."""
        return sa.JSON()

    def binary(self) -> SqlType:
        return sa.LargeBinary()

    def text(self, key: bool) -> SqlType:
        """A string without a usable length."""
        return sa.Text()
