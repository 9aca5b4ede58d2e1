"""Coalescing a batch: per target table and key, the fewest statements that leave the same rows.

:func:`coalesce` groups a batch's events by target table and primary key so that applying the
plan leaves exactly what applying the events one by one, in arrival order, under the version
guard would: per key at most one delete (run first) and one upsert. :func:`coalesce_rounds` splits
a batch where a key has both a snapshot row and streamed changes (their versions do not order by
position), so each round coalesces safely. Pure functions, tested without a database.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from streamer.apply.schema import Route, Router
from streamer.core.errors import StreamerError
from streamer.core.events import (
    UNAVAILABLE,
    ChangeEvent,
    Op,
    is_read_version,
    supersedes,
)

Adapter = Callable[[Any], Any]
KeyTuple = tuple[Any, ...]


@dataclasses.dataclass
class TablePlan:
    """The net effect of a batch on one target table."""

    route: Route
    sample: ChangeEvent  # an event of the table, for its schema
    upserts: dict[KeyTuple, tuple[dict[str, Any], str]] = dataclasses.field(default_factory=dict)
    deletes: dict[KeyTuple, tuple[dict[str, Any], str]] = dataclasses.field(default_factory=dict)
    truncate_version: str | None = None
    last_version: str = ""
    events: int = 0
    ops: dict[str, int] = dataclasses.field(default_factory=dict)


def _row(route: Route, values: Mapping[str, Any]) -> dict[str, Any]:
    if not route.rename and not route.drop:
        return dict(values)
    out: dict[str, Any] = {}
    for name, value in values.items():
        target = route.target_column(name)
        if target is not None:
            out[target] = value
    return out


class MissingVersionError(StreamerError):
    """A change event has an empty version (no source position): the guard could not order it."""

    def __init__(self, event: ChangeEvent) -> None:
        self.event = event
        super().__init__(
            f"{event.origin.describe()}: {event.op.value} on {event.table.qualified} has no source "
            "position (empty version); the decoder refuses such records (MissingPositionError)"
        )


def coalesce(events: Iterable[ChangeEvent], router: Router) -> dict[tuple[str | None, str], TablePlan]:
    """Net effect per target table of events given in consumption (arrival) order.

    Guarantee: executing the plan (truncate, then every delete of ``TablePlan.deletes``, then every
    upsert of ``TablePlan.upserts``, each guarded by the version) leaves the target as applying the
    events one by one with the guard, in arrival order, would; also when the positions of a key do
    not grow with arrival (a deferrable primary key lets a transaction committed later insert a key
    at a smaller LSN than an earlier-committed delete of it). Per key the plan holds at most one
    delete and one upsert, and when it holds both the delete comes first. The one approximation:
    unavailable (unchanged TOAST) values of an upsert are filled from the previous upsert of the
    key in the batch, which is exact for every target state a source produces (no row of the key
    has a version strictly between two consecutive changes of it).

    An event with an empty version raises :class:`MissingVersionError`.
    """
    plans: dict[tuple[str | None, str], TablePlan] = {}
    for ev in events:
        version = ev.position.version
        if not version:
            raise MissingVersionError(ev)
        route = router.route(ev.table)
        tkey = (route.target_schema, route.target_table)
        plan = plans.get(tkey)
        if plan is None:
            plan = plans[tkey] = TablePlan(route, ev)
        plan.events += 1
        plan.ops[ev.op.value] = plan.ops.get(ev.op.value, 0) + 1
        if version > plan.last_version:
            plan.last_version = version
        if ev.op is Op.TRUNCATE:
            if plan.truncate_version is None or version > plan.truncate_version:
                plan.truncate_version = version
            plan.upserts = {k: v for k, v in plan.upserts.items() if v[1] >= version}
            plan.deletes = {k: v for k, v in plan.deletes.items() if v[1] >= version}
            continue
        if plan.truncate_version is not None and version < plan.truncate_version:
            continue  # older than a truncate already in this batch (another partition lagged)
        key_row = _row(route, ev.key)
        key = tuple(key_row.values())
        prev = plan.upserts.get(key)
        if prev is not None and not supersedes(prev[1], version):
            continue  # after an upsert the row is at least that new: an older change does nothing
        if ev.op is Op.DELETE:
            # [delete d?, upsert u, delete v > u] has the effect of one delete at max(d, v)
            plan.upserts.pop(key, None)
            gone = plan.deletes.get(key)
            if gone is None or gone[1] < version:
                plan.deletes[key] = (key_row, version)
            continue
        if ev.after is None:
            continue
        row = _row(route, ev.after)
        if prev is not None:
            # fill unchanged-TOAST placeholders (and columns it lacks) from the earlier upsert of this key
            merged = dict(prev[0])
            for col, val in row.items():
                if val is not UNAVAILABLE or col not in merged:
                    merged[col] = val
            row = merged
        # a delete of this key stays and runs first: [delete, upsert] is kept as it is
        plan.upserts[key] = (row, version)
    return plans


def coalesce_rounds(
    events: Sequence[ChangeEvent], router: Router
) -> list[dict[tuple[str | None, str], TablePlan]]:
    """:func:`coalesce` of a batch in rounds, applied in order in the batch's one transaction.

    The version guard is not a total order (a streamed change replaces a snapshot row at a higher
    position, :func:`streamer.core.events.supersedes`), so a snapshot row and a streamed change of
    one key cannot be folded into one upsert: ``[read at 9, update at 5]`` over a row at 7 writes
    the read, then the update, where one upsert at 5 would be refused. So a key with both snapshot
    rows and streamed changes in the batch (rare: a snapshot's end) is not coalesced: its i-th
    event goes to round i, each guarded against what the rounds before it left. Every other key
    is coalesced in round 0 as usual. Truncates go to round 0: a truncate removes the rows older
    than it whatever their round, and later rounds skip rows older than a truncate applied before
    them. A batch without snapshot rows is one round.
    """
    if not events:
        return []
    if not any(is_read_version(ev.position.version) for ev in events):
        return [coalesce(events, router)]  # the stream alone: one round (no per-key bookkeeping)
    keyed: list[tuple[ChangeEvent, tuple[Any, ...] | None]] = []
    kinds: dict[tuple[Any, ...], set[bool]] = {}
    for ev in events:
        if ev.op is Op.TRUNCATE:
            keyed.append((ev, None))
            continue
        route = router.route(ev.table)
        key = (route.target_schema, route.target_table, *_row(route, ev.key).values())
        kinds.setdefault(key, set()).add(is_read_version(ev.position.version))
        keyed.append((ev, key))
    rounds: list[list[ChangeEvent]] = [[]]
    count: dict[tuple[Any, ...], int] = {}
    for ev, k in keyed:
        n = 0
        if k is not None and len(kinds[k]) == 2:
            n = count.get(k, 0)
            count[k] = n + 1
        if n == len(rounds):
            rounds.append([])
        rounds[n].append(ev)
    return [coalesce(r, router) for r in rounds]
