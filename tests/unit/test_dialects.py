"""The dialect registry and the guarded upsert every target gets from it (SQLite runs it; the others compile)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql

from streamer.apply.dialects import dialect_for

META = sa.MetaData()
T = sa.Table(
    "t",
    META,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("v", sa.String),
    sa.Column("ver", sa.String),
)


def _guarded(name: str) -> sa.sql.Insert:
    stmt: sa.sql.Insert = dialect_for(name).upsert(
        T, ["id"], ["v", "ver"], guard=lambda new: sa.or_(T.c.ver.is_(None), T.c.ver < new.ver)
    )
    return stmt


def test_registry_knows_every_target_and_names_the_unknown() -> None:
    assert dialect_for("mariadb").name == "mysql"
    assert [dialect_for(n).name for n in ("postgresql", "mysql", "sqlite")] == [
        "postgresql",
        "mysql",
        "sqlite",
    ]
    with pytest.raises(NotImplementedError, match="oracle"):
        dialect_for("oracle")


def test_guarded_upsert_on_sqlite_keeps_the_newer_row() -> None:
    engine = sa.create_engine("sqlite://")
    META.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            _guarded("sqlite"), [{"id": 1, "v": "new", "ver": "b"}, {"id": 2, "v": "two", "ver": "a"}]
        )
        conn.execute(
            _guarded("sqlite"), [{"id": 1, "v": "old", "ver": "a"}, {"id": 2, "v": "2nd", "ver": "b"}]
        )
        rows = conn.execute(sa.select(T).order_by(T.c.id)).all()
    assert [tuple(r) for r in rows] == [(1, "new", "b"), (2, "2nd", "b")]


def test_guarded_upsert_sql_of_the_server_targets() -> None:
    pg = str(_guarded("postgresql").compile(dialect=postgresql.dialect()))  # type: ignore[no-untyped-call]
    assert (
        "ON CONFLICT (id) DO UPDATE SET v = excluded.v, ver = excluded.ver WHERE t.ver IS NULL OR t.ver < excluded.ver"
        in pg
    )
    my = str(_guarded("mysql").compile(dialect=mysql.dialect()))
    # no WHERE on ON DUPLICATE KEY UPDATE: every column guarded, the version assigned last
    assert my.index("v = CASE WHEN") < my.index("ver = CASE WHEN")
    assert "ELSE t.ver END" in my
