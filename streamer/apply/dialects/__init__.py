"""One module per target database behind :class:`Dialect`, found by SQLAlchemy's dialect name.

Code that writes to a target asks ``dialect_for(engine.dialect.name)`` instead of branching on
the name; a new target is a new module here and one line in :data:`_REGISTRY`.
"""

from __future__ import annotations

from streamer.apply.dialects.base import Dialect, Guard
from streamer.apply.dialects.mysql import MySQL
from streamer.apply.dialects.postgresql import PostgreSQL
from streamer.apply.dialects.sqlite import SQLite
from streamer.apply.dialects.types import TargetTypes
from streamer.apply.dialects.values import COMMON, Adapter, adapter

__all__ = ["Dialect", "Guard", "dialect_for", "target_types", "value_adapter"]

_REGISTRY: dict[str, Dialect] = {
    "postgresql": PostgreSQL(),
    "mysql": MySQL(),
    "mariadb": MySQL(),
    "sqlite": SQLite(),
}


def dialect_for(name: str) -> Dialect:
    """The :class:`Dialect` of an engine's ``dialect.name``; NotImplementedError for a target streamer cannot write."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise NotImplementedError(f"streamer cannot write to a {name} target") from None


def value_adapter(name: str) -> Adapter:
    """A function turning a decoded Python value into what the driver of dialect ``name`` binds
    correctly (a dialect streamer does not write to gets the conversions every target shares)."""
    dialect = _REGISTRY.get(name)
    return adapter(dialect.adapters if dialect is not None else COMMON)


def target_types(name: str) -> TargetTypes:
    """The column-type choices of dialect ``name`` (the base choices for a dialect streamer does not know)."""
    dialect = _REGISTRY.get(name)
    return dialect.types if dialect is not None else TargetTypes()
