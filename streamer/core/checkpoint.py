"""Source-neutral positions: where a change came from, and how far a batch takes its source.

Every source keeps its progress in ``_streamer_offsets`` under a :data:`StreamKey`, a
``(stream, partition)`` pair with the next position to read:

* the Kafka source: ``(topic, partition) -> next offset``, plus an :class:`OffsetIdentity` per
  partition (the topic's id and a fingerprint of the record before that offset), checked on
  every assignment (:mod:`streamer.sources.kafka.offsetcheck`);
* the pgoutput source: ``("pg:<slot>", 0) -> end LSN`` of the last transaction applied.

A :class:`ChangeEvent <streamer.core.events.ChangeEvent>` carries an :class:`Origin`: a
:class:`KafkaOrigin` (topic, partition, offset of its record) or a :class:`WalOrigin` (slot and
LSN of its change). The apply engine only needs an origin's :attr:`~Origin.stream` (to fence and
filter by partition) and :meth:`~Origin.describe` (to name it in errors); a source that needs
more knows which kind it made.

A :class:`Checkpoint` is what a batch moves: per stream its next position, its first position
(fencing: a batch starting behind the stored position was overtaken by another owner) and its
identity. The target stores it in the batch's own transaction; the source acknowledges it only
after that commit (``Source.ack``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Protocol

StreamKey = tuple[str, int]
"""``(stream, partition)``: a Kafka topic partition, or ``("pg:<slot>", 0)``."""


def wal_stream(slot: str) -> str:
    """The stream name of a replication slot's positions in ``_streamer_offsets``: ``pg:<slot>``."""
    return f"pg:{slot}"


class Origin(Protocol):
    """Where one change came from, as much as the apply engine needs to know."""

    @property
    def stream(self) -> StreamKey:
        """The key its source's position is kept under."""
        ...

    def describe(self) -> str:
        """The change's place for messages: ``topic[0]@12`` or ``pg:slot@LSN 0/16B3748``."""
        ...


@dataclasses.dataclass(frozen=True, slots=True)
class KafkaOrigin:
    """The Kafka coordinates a record was read from (all empty for rows the loader copies)."""

    topic: str
    partition: int
    offset: int

    @property
    def stream(self) -> StreamKey:
        return (self.topic, self.partition)

    def describe(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


@dataclasses.dataclass(frozen=True, slots=True)
class WalOrigin:
    """The replication slot and WAL position (LSN) a change was decoded from."""

    slot: str
    lsn: int

    @property
    def stream(self) -> StreamKey:
        return (wal_stream(self.slot), 0)

    def describe(self) -> str:
        return f"{wal_stream(self.slot)}@LSN {self.lsn >> 32:X}/{self.lsn & 0xFFFFFFFF:X}"


@dataclasses.dataclass(frozen=True)
class OffsetIdentity:
    """What a stored offset belongs to: the topic's id (None when the broker has none) and a
    fingerprint of the record at ``next_offset - 1`` (None when unknown)."""

    topic_id: str | None = None
    fingerprint: str | None = None


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """How far one batch takes its source, per stream.

    ``positions`` is the next position to read (what ``_streamer_offsets`` stores); ``first`` the
    batch's first position (the fence: empty where the source needs none); ``identities`` what
    each stored position belongs to (Kafka only).
    """

    positions: Mapping[StreamKey, int]
    first: Mapping[StreamKey, int] = dataclasses.field(default_factory=dict)
    identities: Mapping[StreamKey, OffsetIdentity] = dataclasses.field(default_factory=dict)

    def without(self, streams: set[StreamKey]) -> Checkpoint:
        """The same checkpoint minus ``streams`` (partitions lost or fenced)."""
        return Checkpoint(
            {k: v for k, v in self.positions.items() if k not in streams},
            {k: v for k, v in self.first.items() if k not in streams},
            {k: v for k, v in self.identities.items() if k not in streams},
        )
