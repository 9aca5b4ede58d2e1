"""Pure logic of the apply engine: coalescing, routing, type mapping, value adaptation."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql

from streamer.apply.coalesce import coalesce
from streamer.apply.dialects import value_adapter
from streamer.apply.schema import Router, RouteSpec, SchemaMismatchError, cast_type, sql_type
from streamer.core.checkpoint import KafkaOrigin
from streamer.core.events import (
    UNAVAILABLE,
    ChangeEvent,
    ColumnType,
    Op,
    SourcePosition,
    TableId,
    pg_version,
)

T = TableId("db", "public", "items")


def ev(op: Op, key: int | None, after: dict[str, Any] | None, lsn: int, table: TableId = T) -> ChangeEvent:
    return ChangeEvent(
        op=op,
        table=table,
        key={"id": key} if key is not None else {},
        before=None,
        after=after,
        columns={"id": ColumnType("int64"), "v": ColumnType("string"), "big": ColumnType("string")},
        key_columns=("id",),
        position=SourcePosition(pg_version(lsn), lsn=lsn),
        txid=None,
        source_ts=None,
        event_ts=None,
        origin=KafkaOrigin("t", 0, lsn),
    )


def plan_of(events: list[ChangeEvent], dialect: str = "postgresql"):
    plans = coalesce(events, Router(dialect))
    assert len(plans) == 1
    return next(iter(plans.values()))


def test_last_change_of_a_key_wins() -> None:
    p = plan_of([ev(Op.CREATE, 1, {"id": 1, "v": "a"}, 10), ev(Op.UPDATE, 1, {"id": 1, "v": "b"}, 20)])
    assert p.upserts == {(1,): ({"id": 1, "v": "b"}, pg_version(20))}
    assert p.deletes == {}
    assert p.events == 2 and p.ops == {"c": 1, "u": 1}


def test_insert_then_delete_leaves_a_guarded_delete() -> None:
    p = plan_of([ev(Op.CREATE, 1, {"id": 1, "v": "a"}, 10), ev(Op.DELETE, 1, None, 20)])
    assert p.upserts == {}
    # the delete is still applied: the key may exist in the target from before the batch
    assert p.deletes == {(1,): ({"id": 1}, pg_version(20))}


def test_delete_then_insert_keeps_the_delete_which_runs_first() -> None:
    p = plan_of([ev(Op.DELETE, 1, None, 10), ev(Op.CREATE, 1, {"id": 1, "v": "again"}, 20)])
    assert p.deletes == {(1,): ({"id": 1}, pg_version(10))}  # columns the insert lacks are not kept
    assert p.upserts[(1,)] == ({"id": 1, "v": "again"}, pg_version(20))


def test_unavailable_values_are_filled_from_an_earlier_change_in_the_batch() -> None:
    p = plan_of(
        [
            ev(Op.CREATE, 1, {"id": 1, "v": "a", "big": "B" * 100}, 10),
            ev(Op.UPDATE, 1, {"id": 1, "v": "b", "big": UNAVAILABLE}, 20),
            ev(Op.UPDATE, 2, {"id": 2, "v": "x", "big": UNAVAILABLE}, 30),
        ]
    )
    assert p.upserts[(1,)][0] == {"id": 1, "v": "b", "big": "B" * 100}
    assert p.upserts[(2,)][0]["big"] is UNAVAILABLE  # nothing to fill from: the sink leaves the column alone


def test_truncate_drops_older_changes_and_later_older_ones() -> None:
    p = plan_of(
        [
            ev(Op.CREATE, 1, {"id": 1, "v": "old"}, 10),
            ev(Op.CREATE, 2, {"id": 2, "v": "newer"}, 40),
            ev(Op.TRUNCATE, None, None, 30),
            ev(Op.CREATE, 3, {"id": 3, "v": "lagging"}, 20),
            ev(Op.CREATE, 4, {"id": 4, "v": "after"}, 50),
        ]
    )
    assert p.truncate_version == pg_version(30)
    assert sorted(p.upserts) == [(2,), (4,)]


def test_an_older_change_does_not_replace_a_newer_one() -> None:
    p = plan_of([ev(Op.UPDATE, 1, {"id": 1, "v": "new"}, 20), ev(Op.UPDATE, 1, {"id": 1, "v": "old"}, 10)])
    assert p.upserts[(1,)][0]["v"] == "new"


def test_routing_defaults_and_routes() -> None:
    assert Router("postgresql").route(T).qualified == "public.items"
    assert Router("mysql").route(T).qualified == "public_items"
    assert Router("sqlite").route(T).qualified == "public_items"
    r = Router(
        "postgresql", {"public.items": RouteSpec("crm.things", {"v": "value"}, ("big",), {"value": "text"})}
    )
    route = r.route(T)
    assert (route.target_schema, route.target_table) == ("crm", "things")
    assert route.target_column("v") == "value" and route.target_column("big") is None
    assert Router("sqlite", {"public.items": RouteSpec("crm.things")}).route(T).qualified == "crm_things"
    p = coalesce([ev(Op.CREATE, 1, {"id": 1, "v": "a", "big": "b"}, 1)], r)
    assert next(iter(p.values())).upserts[(1,)][0] == {"id": 1, "value": "a"}


def test_type_mapping_per_dialect() -> None:
    dec = ColumnType(
        "bytes",
        "org.apache.kafka.connect.data.Decimal",
        params={"scale": "2", "connect.decimal.precision": "10"},
    )
    t = sql_type(dec, "postgresql")
    assert isinstance(t, sa.Numeric) and (t.precision, t.scale) == (10, 2)
    assert isinstance(
        sql_type(
            ColumnType("string", "io.debezium.data.Json", params={"__debezium.source.column.type": "JSONB"}),
            "postgresql",
        ),
        postgresql.JSONB,
    )
    assert isinstance(
        sql_type(ColumnType("string", "io.debezium.time.ZonedTimestamp"), "postgresql"), sa.DateTime
    )
    assert sql_type(ColumnType("string", "io.debezium.time.ZonedTimestamp"), "postgresql").timezone  # type: ignore[attr-defined]
    assert isinstance(sql_type(ColumnType("int64", "io.debezium.time.MicroDuration"), "mysql"), sa.BigInteger)
    assert isinstance(sql_type(ColumnType("string"), "mysql", key=True), sa.String)
    assert isinstance(sql_type(ColumnType("string"), "mysql"), mysql.LONGTEXT)
    arr = ColumnType("array", items=ColumnType("string"))
    assert isinstance(sql_type(arr, "postgresql"), postgresql.ARRAY)
    assert isinstance(sql_type(arr, "sqlite"), sa.JSON)
    vc = ColumnType(
        "string",
        params={"__debezium.source.column.type": "VARCHAR", "__debezium.source.column.length": "200"},
    )
    assert getattr(sql_type(vc, "mariadb"), "length", None) == 200
    assert isinstance(cast_type("BIGINT"), sa.BigInteger)
    with pytest.raises(SchemaMismatchError, match="unknown cast type"):
        cast_type("blob-ish")


def test_value_adapters() -> None:
    aware = dt.datetime(2024, 1, 1, 12, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    my = value_adapter("mysql")
    assert my(aware) == dt.datetime(2024, 1, 1, 10, 0)
    assert my(dt.timedelta(days=1, microseconds=5)) == 86_400_000_005
    assert my([1, 2]) == "[1,2]"
    lite = value_adapter("sqlite")
    assert lite(decimal.Decimal("1.10")) == "1.10"
    assert lite(dt.datetime(2024, 1, 2, 3, 4, 5)) == "2024-01-02 03:04:05.000000"
    assert lite(aware) == "2024-01-01 10:00:00.000000"
    pg = value_adapter("postgresql")
    u = uuid.UUID(int=5)
    assert pg(u) == str(u)
    assert pg(decimal.Decimal("1.5")) == decimal.Decimal("1.5")


def test_special_temporal_markers_on_other_targets() -> None:
    from streamer.core.events import DATE_INFINITY, TIMESTAMP_INFINITY, EndOfDay

    my = value_adapter("mysql")
    assert my(TIMESTAMP_INFINITY) == dt.datetime.max and type(my(TIMESTAMP_INFINITY)) is dt.datetime
    assert type(my(DATE_INFINITY)) is dt.date
    assert my(EndOfDay(23, 59, 59, 999999)) == dt.time(23, 59, 59, 999999)
    lite = value_adapter("sqlite")
    assert lite(TIMESTAMP_INFINITY) == "9999-12-31 23:59:59.999999"
    assert lite(DATE_INFINITY) == "9999-12-31"
