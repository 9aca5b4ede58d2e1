"""Source schema changes mid-stream: the pure classification of a column's type change.

A column's target type (as reflected) is compared with the type the newest change event asks for
(:func:`streamer.apply.schema.sql_type`). Both are reduced to a :class:`TypeShape` (a family and its
size), and :func:`classify` says what the change is, seen from the target:

* ``same``: the target column holds the new type as it is (or the types are not comparable:
  anything outside the integer, decimal, float and string families is left to the database);
* ``widen``: the new type holds every value of the old one but not the reverse (``int`` ->
  ``bigint``, ``varchar(n)`` -> longer or ``text``, ``numeric`` with more digits);
* ``narrow``: every value of the new type fits the target column as it is (``bigint`` -> ``int``);
* ``incompatible``: neither holds the other (``int`` -> ``text``, ``numeric(10,2)`` ->
  ``numeric(10,4)``, ``float`` -> ``int``).

What the apply engine then does is the policy of :class:`streamer.settings.SchemaChangeSettings`.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

import sqlalchemy as sa

from streamer.core.errors import RecordStoppedError

_INT_DIGITS = {8: 3, 16: 5, 24: 8, 32: 10, 64: 19}  # decimal digits an integer of that many bits needs


class TypeChange(enum.Enum):
    SAME = "same"
    WIDEN = "widen"
    NARROW = "narrow"
    INCOMPATIBLE = "incompatible"


@dataclasses.dataclass(frozen=True)
class TypeShape:
    """A column type reduced to what decides whether values fit: family, size (None: unbounded), scale."""

    family: str  # "int" (size: bits), "decimal" (size: precision), "float" (size: mantissa bits), "string", "other"
    size: int | None = None
    scale: int = 0

    def __str__(self) -> str:
        if self.family == "decimal":
            return f"numeric({self.size},{self.scale})" if self.size is not None else "numeric"
        if self.family == "string":
            return f"varchar({self.size})" if self.size is not None else "text"
        if self.family in ("int", "float"):
            return f"{self.family}{self.size}"
        return "other"


OTHER = TypeShape("other")


def shape_of(t: sa.types.TypeEngine[Any]) -> TypeShape:
    """The shape of a SQLAlchemy type (compiled by :func:`streamer.apply.schema.sql_type` or reflected)."""
    if isinstance(t, sa.Boolean | sa.Enum):
        return OTHER
    if isinstance(t, sa.Integer):
        name = type(t).__name__.upper()
        if isinstance(t, sa.SmallInteger) or name == "SMALLINT":
            return TypeShape("int", 16)
        if isinstance(t, sa.BigInteger) or name == "BIGINT":
            return TypeShape("int", 64)
        if name == "TINYINT":
            return OTHER  # MySQL's boolean
        if name == "MEDIUMINT":
            return TypeShape("int", 24)
        return TypeShape("int", 32)
    if isinstance(t, sa.Float):
        if isinstance(t, sa.Double) or "DOUBLE" in type(t).__name__.upper():
            return TypeShape("float", 53)
        if isinstance(t, sa.REAL) or type(t).__name__.upper() == "FLOAT":
            return TypeShape("float", 24)
        return TypeShape("float", 53)
    if isinstance(t, sa.Numeric):
        return TypeShape("decimal", t.precision, t.scale or 0)
    if isinstance(t, sa.String):
        if isinstance(t, sa.Text):
            return TypeShape("string", 255 if type(t).__name__.upper() == "TINYTEXT" else None)
        return TypeShape("string", t.length)
    return OTHER


def mysql_shape(
    data_type: str, char_length: int | None, precision: int | None, scale: int | None
) -> TypeShape:
    """The shape of a MySQL/MariaDB column as ``information_schema.columns`` states it."""
    dt = data_type.lower()
    ints = {"smallint": 16, "mediumint": 24, "int": 32, "integer": 32, "bigint": 64}
    if dt in ints:
        return TypeShape("int", ints[dt])
    if dt in ("decimal", "numeric"):
        return TypeShape("decimal", precision, scale or 0)
    if dt == "float":
        return TypeShape("float", 24)
    if dt in ("double", "real"):
        return TypeShape("float", 53)
    if dt in ("varchar", "char"):
        return TypeShape("string", char_length)
    if dt == "tinytext":
        return TypeShape("string", 255)
    if dt in ("text", "mediumtext", "longtext"):
        return TypeShape("string", None)  # MariaDB's JSON is a LONGTEXT too: a string either way
    return OTHER


def _fits(new: TypeShape, old: TypeShape) -> bool:
    """Does every value of ``new`` fit a column of ``old``?"""
    if new.family == old.family:
        if old.size is None:
            return True
        if new.size is None:
            return False
        if new.family == "decimal":
            return new.scale <= old.scale and new.size - new.scale <= old.size - old.scale
        return new.size <= old.size
    if new.family == "int" and old.family == "decimal":
        digits = _INT_DIGITS.get(new.size or 64, 19)
        return old.size is None or old.size - old.scale >= digits
    if new.family == "decimal" and old.family == "int":
        return new.size is not None and new.scale == 0 and new.size <= _INT_DIGITS.get(old.size or 64, 19) - 1
    if new.family == "int" and old.family == "float":
        return (new.size or 64) <= (32 if (old.size or 53) >= 53 else 16)
    return False


def classify(old: TypeShape, new: TypeShape) -> TypeChange:
    """What changing a target column of shape ``old`` to receive values of shape ``new`` is."""
    if old == new or OTHER in (old, new):
        return TypeChange.SAME
    new_fits, old_fits = _fits(new, old), _fits(old, new)
    if new_fits and old_fits:
        return TypeChange.SAME
    if old_fits:
        return TypeChange.WIDEN
    if new_fits:
        return TypeChange.NARROW
    return TypeChange.INCOMPATIBLE


class SchemaChangeStoppedError(RecordStoppedError):
    """A source schema change whose policy (``schema_changes.*``) is ``stop``, or that cannot be applied.

    Terminal (exit 1): nothing of the batch holding the change is committed, offsets stay before it.
    """

    headline = "stopped on a schema change"

    def __init__(self, table: str, column: str, change: str, detail: str, setting: str) -> None:
        self.table, self.column, self.change = table, column, change
        super().__init__(
            f"target table {table}, column {column!r}: {change} at the source ({detail}); nothing past it was "
            f"applied. Change the target yourself (your migration, or ALTER TABLE) and run again, or set "
            f"{setting} (README, 'Schema changes')"
        )
