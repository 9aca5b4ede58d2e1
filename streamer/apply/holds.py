"""The load hold barrier: ``streamer load`` proceeds only once every live consumer holds its tables.

Why
---
A load writes snapshot rows with a version below every change the snapshot misses, so streamed
inserts and updates win over them. A streamed *delete* leaves nothing behind to win with: if it
is applied after the snapshot was taken and before the snapshot row is written, the row comes
back for good. So no change of a table may be applied between the snapshot and the end of that
table's load: consumers hold the table's partitions (``streamer consume``) or the stream
(``streamer replicate``) while the table is marked ``loading`` in ``_streamer_loads``.

The protocol (all through the target's state tables)
---------------------------------------------------
* The loader marks **every** table of the run ``loading`` and raises the *hold generation* G
  (``_streamer_hold_generation``) in one transaction, **before** it opens the snapshot.
* Every consumer process registers a row in ``_streamer_members`` before it reads anything
  (so a process starting during the barrier is waited for too) and re-reads the generation and
  then the loading set at least every 2 s. It acknowledges G (``acked_generation``) only when no
  batch decoded with an older loading set is still to be applied: every batch it applies after
  the acknowledgement was filtered against a loading set that contains the run's tables. Each
  re-read also refreshes ``heartbeat_at``; a clean stop deletes the row.
* The loader waits until every *live* member (heartbeat within ``load.member_expiry_s``) has
  acknowledged G, then opens the snapshot. A member silent for longer is taken as dead (a
  killed process), named in a warning and removed. When live members still have not acknowledged after
  ``load.hold_timeout_s``, the loader stops with :class:`HoldTimeoutError` naming them and
  marks its tables as not loading again: it never proceeds without the barrier.
* A member taken as stopped is removed from ``_streamer_members`` by the loader. Inside every
  batch's own transaction, last, :func:`check_batch` reads the generation, the loading set and
  the member's own row ``FOR SHARE``: a batch filtered with an older generation that touches a
  table marked since is refused (rolled back, :class:`HoldChangedError`, the process stops) when
  the member's row is gone. The member's next heartbeat finds its row gone and stops the process
  (:class:`MemberExpelledError`). So a member wrongly taken as stopped (a batch retried for longer
  than the expiry) cannot commit a change of a loading table after the snapshot.

Heartbeats use each process's clock (UTC); processes on machines whose clocks differ by more than
a fraction of ``member_expiry_s`` need synchronised clocks.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from streamer.apply import state
from streamer.core.errors import StreamerError
from streamer.db import is_transient


class HoldTimeoutError(StreamerError):
    """Live consumers did not acknowledge the load's hold in time; the load did not start."""


class HoldChangedError(StreamerError):
    """A load that took this member as stopped marked a table of its batch; nothing of it was committed."""


class MemberExpelledError(StreamerError):
    """A load took this member as stopped (no heartbeat within the expiry) and removed its row."""


@dataclasses.dataclass(frozen=True)
class MemberRow:
    member_id: str
    kind: str
    group: str
    process: str
    acked_generation: int
    heartbeat_at: dt.datetime

    def describe(self) -> str:
        return (
            f"{self.kind} member {self.member_id!r} of group {self.group!r} ({self.process}), "
            f"acknowledged generation {self.acked_generation}, last heartbeat {self.heartbeat_at:%H:%M:%S} UTC"
        )


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def current_generation(conn: Connection) -> int:
    t = state.hold_generation_table
    value = conn.execute(sa.select(t.c.generation).where(t.c.id == 1)).scalar()
    return int(value or 0)


def raise_generation(conn: Connection) -> int:
    """Raise the hold generation by one (inside the caller's transaction, the loader's mark)."""
    t = state.hold_generation_table
    updated = conn.execute(
        sa.update(t).where(t.c.id == 1).values(generation=t.c.generation + 1, updated_at=now())
    ).rowcount
    if not updated:
        conn.execute(sa.insert(t).values(id=1, generation=1, updated_at=now()))
    return current_generation(conn)


def check_batch(conn: Connection, member_id: str, generation: int, tables: set[str]) -> None:
    """Inside a batch's transaction, last: refuse it if a load that took this member as stopped
    marked one of its ``tables`` after the batch was filtered.

    ``generation`` is the hold generation of the loading set the batch was filtered with. Rows are
    read ``FOR SHARE`` (PostgreSQL, MariaDB; SQLite has one writer anyway), so the loader's mark
    and its removal of a silent member wait until this transaction has committed. A batch filtered
    with an older generation is fine while the member's row exists: the loader then waits for its
    acknowledgement, which comes only after the batch. Once the row is gone the loader may have
    opened its snapshot without this member: the batch is refused.
    """
    t = state.hold_generation_table
    current = conn.execute(sa.select(t.c.generation).where(t.c.id == 1).with_for_update(read=True)).scalar()
    if current is None or int(current) <= generation:
        return
    loads = state.loads_table
    # a locking read too: it sees the newest committed rows under REPEATABLE READ (MariaDB) as well
    marked = conn.execute(
        sa.select(loads.c.table_name).where(loads.c.status == "loading").with_for_update(read=True)
    )
    busy = tables & {r[0] for r in marked}
    if not busy:
        return
    members_t = state.members_table
    alive = conn.execute(
        sa.select(members_t.c.member_id).where(members_t.c.member_id == member_id).with_for_update(read=True)
    ).first()
    if alive is None:
        raise HoldChangedError(
            f"a load marked {', '.join(repr(b) for b in sorted(busy))} loading (hold generation {current}) "
            f"after this batch was filtered with generation {generation}, and took this member "
            f"({member_id!r}) as stopped: the batch was rolled back and nothing of it was committed; "
            "start the process again (it resumes from its committed offsets and holds those tables)"
        )


def read_hold(conn: Connection) -> tuple[int, set[str]]:
    """The hold generation, then the tables being loaded (in this order: the set is at least as new)."""
    from streamer.load.loader import loading_tables

    generation = current_generation(conn)
    return generation, loading_tables(conn)


def classify(
    members: Sequence[MemberRow], generation: int, at: dt.datetime, expiry_s: float
) -> tuple[list[MemberRow], list[MemberRow]]:
    """(live members that have not acknowledged ``generation``, members taken as dead)."""
    cutoff = at - dt.timedelta(seconds=expiry_s)
    waiting = [m for m in members if m.heartbeat_at >= cutoff and m.acked_generation < generation]
    dead = [m for m in members if m.heartbeat_at < cutoff and m.acked_generation < generation]
    return waiting, dead


def remove_silent(conn: Connection, member: MemberRow) -> bool:
    """Remove a member taken as stopped (only if it has not sent a heartbeat since it was read)."""
    t = state.members_table
    removed = conn.execute(
        sa.delete(t).where(t.c.member_id == member.member_id, t.c.heartbeat_at <= member.heartbeat_at)
    ).rowcount
    return bool(removed)


def members(conn: Connection) -> list[MemberRow]:
    t = state.members_table
    return [
        MemberRow(r.member_id, r.kind, r.consumer_group, r.process, int(r.acked_generation), r.heartbeat_at)
        for r in conn.execute(sa.select(t).order_by(t.c.member_id))
    ]


class Member:
    """This process's row in ``_streamer_members``: register, heartbeat and acknowledge, leave."""

    def __init__(self, engine: Engine, kind: str, group: str) -> None:
        self.engine = engine
        self.kind = kind
        self.group = group
        self.member_id = uuid.uuid4().hex
        self.process = f"{socket.gethostname()}:{os.getpid()}"
        self.acked = 0

    def register(self) -> None:
        """Insert the row (acknowledging nothing yet); call before the first read of the loading set."""
        with self.engine.begin() as conn:
            conn.execute(
                sa.insert(state.members_table).values(
                    member_id=self.member_id,
                    kind=self.kind,
                    consumer_group=self.group[:255],
                    process=self.process[:255],
                    acked_generation=0,
                    heartbeat_at=now(),
                )
            )

    def beat(self, acked: int | None = None) -> None:
        """Refresh the heartbeat and, when given, acknowledge generation ``acked``."""
        if acked is not None:
            self.acked = max(self.acked, acked)
        t = state.members_table
        with self.engine.begin() as conn:
            found = conn.execute(
                sa.update(t)
                .where(t.c.member_id == self.member_id)
                .values(acked_generation=self.acked, heartbeat_at=now())
            ).rowcount
            if not found:
                raise MemberExpelledError(
                    f"{self.kind} member {self.member_id!r} of group {self.group!r} was removed from "
                    "_streamer_members: a load took it as stopped (no heartbeat within load.member_expiry_s) "
                    "and may have started without it holding the load's tables. Stopping; start it again "
                    "(it resumes from its committed offsets)"
                )

    def leave(self) -> None:
        t = state.members_table
        with self.engine.begin() as conn:
            conn.execute(sa.delete(t).where(t.c.member_id == self.member_id))


class HoldView:
    """A consumer process's view of the loading set, with its membership row.

    :meth:`tables` re-reads the hold generation and the loading set at most every ``interval``
    seconds (registering the member first, on the first call) and refreshes the heartbeat; it
    acknowledges the generation it read when ``can_ack(generation)`` says no batch filtered with
    an older loading set is still to be applied. :meth:`ack` acknowledges later, once that holds.
    """

    def __init__(self, engine: Engine, kind: str, group: str, interval: float = 2.0) -> None:
        self.member = Member(engine, kind, group)
        self.engine = engine
        self.interval = interval
        self.generation = 0
        self.loading: set[str] = set()
        self._checked = -1e9
        self._registered = False

    def tables(self, can_ack: Callable[[int], bool], fresh: bool = False) -> set[str]:
        at = time.monotonic()
        if fresh or at - self._checked >= self.interval:
            self._checked = at  # a failing read is not repeated before the interval either
            if not self._registered:
                self.member.register()
                self._registered = True
            with self.engine.connect() as conn:
                self.generation, self.loading = read_hold(conn)
            self.member.beat(self.generation if can_ack(self.generation) else None)
        return self.loading

    def heartbeat(self, can_ack: Callable[[int], bool], log: Any) -> None:
        """:meth:`tables` then :meth:`ack`, from a process's idle loop: a transient database error
        is logged and tried again after the interval (no acknowledgement is written meanwhile, so
        a load waits; batches are still checked by :func:`check_batch`)."""
        try:
            self.tables(can_ack)
            self.ack(can_ack)
        except sa.exc.SQLAlchemyError as exc:
            if not is_transient(exc):
                raise
            log.warning("could not read the loading set or write the heartbeat", error=str(exc).strip()[:300])

    def ack(self, can_ack: Callable[[int], bool]) -> None:
        if self._registered and self.member.acked < self.generation and can_ack(self.generation):
            self.member.beat(self.generation)

    def leave(self) -> None:
        if self._registered:
            self.member.leave()
            self._registered = False
