"""The DDL ``streamer db prepare`` prints: one quoted ``ALTER TABLE .. ADD COLUMN`` per dialect."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite

from streamer.apply.prepare import _version_ok, version_column_ddl
from streamer.apply.schema import Route

DIALECTS: dict[str, sa.engine.Dialect] = {
    "postgresql": postgresql.dialect(),  # type: ignore[no-untyped-call]
    "mysql": mysql.dialect(),
    "sqlite": sqlite.dialect(),
}


@pytest.mark.parametrize(
    ("dialect", "expected"),
    [
        ("postgresql", 'ALTER TABLE "we""ird"."ta`b le" ADD COLUMN "_v ver" VARCHAR(40)'),
        ("mysql", 'ALTER TABLE `we"ird`.`ta``b le` ADD COLUMN `_v ver` VARCHAR(40)'),
        ("sqlite", 'ALTER TABLE "we""ird"."ta`b le" ADD COLUMN "_v ver" VARCHAR(40)'),
    ],
)
def test_hostile_names_are_quoted_by_the_dialect(dialect: str, expected: str) -> None:
    assert version_column_ddl(Route('we"ird', "ta`b le"), "_v ver", DIALECTS[dialect]) == expected


@pytest.mark.parametrize("dialect", sorted(DIALECTS))
def test_plain_names_stay_plain(dialect: str) -> None:
    ddl = version_column_ddl(Route(None, "orders"), "_streamer_version", DIALECTS[dialect])
    assert ddl == "ALTER TABLE orders ADD COLUMN _streamer_version VARCHAR(40)"


def test_an_existing_version_column_must_be_a_nullable_string_of_40() -> None:
    assert _version_ok({"type": sa.String(40), "nullable": True}) is None
    assert _version_ok({"type": sa.Text(), "nullable": True}) is None
    assert _version_ok({"type": sa.String(64), "nullable": True}) is None
    assert "shorter than 40" in str(_version_ok({"type": sa.String(20), "nullable": True}))
    assert "not a string type" in str(_version_ok({"type": sa.BigInteger(), "nullable": True}))
    assert "NOT NULL" in str(_version_ok({"type": sa.String(40), "nullable": False}))
