"""Does a stored offset belong to the topic the consumer was just assigned?

A target keeps its ``_streamer_offsets`` rows when the broker forgets a topic (the local broker at
every restart; real Kafka when a topic is deleted and re-created, or a group moves to another
cluster). Seeking to such an offset would silently skip whatever the new topic holds below it.
So each stored offset carries the identity of the topic it came from, and on assignment the
consumer checks, per partition, the offset it is about to start from:

* the topic id, where the broker has one (Kafka since 2.8, and the local broker), must equal
  the one stored;
* the offset must not be past the partition's true end (high watermark from a fetch, see
  :func:`streamer.ops.groups.true_watermarks`; the local broker does not report such an offset as
  out of range, the consumer would just wait there);
* the record at ``offset - 1`` must exist and carry the stored fingerprint (a hash of its
  timestamp, key and value). When that record is gone (retention, compaction) the check passes
  only if the topic id was verified.

:func:`judge` is the pure decision; :func:`check_starts` reads what it needs from the broker.
A failed check means: re-read the partition from its start. That is always safe, the version
guard keeps every target row at its newest version.
"""

from __future__ import annotations

import base64
import concurrent.futures
import dataclasses
import hashlib
import os
import time
from collections.abc import Iterable, Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicCollection, TopicPartition
from confluent_kafka.admin import AdminClient

from streamer.apply.state import StoredOffset
from streamer.core.checkpoint import OffsetIdentity
from streamer.core.errors import BrokerUnavailableError
from streamer.ops import groups

TP = tuple[str, int]
_ZERO_ID = base64.b64encode(bytes(16)).decode().rstrip("=")


def fingerprint(msg: Message) -> str:
    """Identity of one record: a hash of its timestamp, key and value (32 hex digits)."""
    kind, ts = msg.timestamp()
    h = hashlib.sha256(f"{kind}:{ts}:".encode())
    key, value = msg.key() or b"", msg.value() or b""
    h.update(len(key).to_bytes(8, "big") + key)
    h.update(value)
    return h.hexdigest()[:32]


def topic_ids(admin: AdminClient, topics: Iterable[str], timeout: float = 10.0) -> dict[str, str | None]:
    """The broker's id of each topic; None where the broker has none or does not say."""
    names = sorted(set(topics))
    out: dict[str, str | None] = dict.fromkeys(names)
    if not names:
        return out
    try:
        futures = admin.describe_topics(TopicCollection(names))
    except (KafkaException, NotImplementedError, ValueError):
        return out
    for name, future in futures.items():
        try:
            uid = str(future.result(timeout).topic_id or "")
        except KafkaException:
            continue
        except concurrent.futures.TimeoutError:
            # no answer at all: the offsets cannot be checked, so none is used (not "no id")
            raise BrokerUnavailableError(
                f"the broker did not describe topic {name!r} within {timeout:.0f} s, so the start offsets "
                "of its partitions cannot be checked (nothing was read or committed; run again once the "
                "broker answers)"
            ) from None
        if uid and uid.rstrip("=") != _ZERO_ID and uid != "0" * 32:
            out[name] = uid
    return out


@dataclasses.dataclass(frozen=True)
class Probe:
    """What the broker holds at ``offset - 1``: the record's fingerprint, or None when it is gone."""

    fingerprint: str | None


def records_before(bootstrap: str, starts: Mapping[TP, int], timeout: float = 20.0) -> dict[TP, Probe]:
    """Per partition, the record at ``start - 1`` (each start >= 1 and at most the partition's end).

    A partition whose record there is gone (below the log start, or removed by compaction: the
    first record read comes later) gets ``Probe(None)``; one that answered nothing within
    ``timeout`` is left out.
    """
    if not starts:
        return {}
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            # never joins: partitions are assigned, nothing is committed
            "group.id": f"streamer-offsetcheck-{os.getpid()}",
            "client.id": "streamer-offsetcheck",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "error",
            "isolation.level": "read_committed",
            "fetch.wait.max.ms": 20,
        }
    )
    out: dict[TP, Probe] = {}
    try:
        consumer.assign([TopicPartition(t, p, o - 1) for (t, p), o in starts.items()])
        deadline = time.monotonic() + timeout
        while len(out) < len(starts) and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=500, timeout=0.2):
                topic, partition = msg.topic(), msg.partition()
                if topic is None or partition is None:
                    continue
                key = (topic, partition)
                if key not in starts or key in out:
                    continue
                err = msg.error()
                if err is None:
                    found = msg.offset()
                    out[key] = Probe(fingerprint(msg) if found == starts[key] - 1 else None)
                elif err.code() == KafkaError._PARTITION_EOF:
                    out[key] = Probe(None)  # nothing readable at or after start - 1 (e.g. an aborted tail)
                elif err.code() in (KafkaError.OFFSET_OUT_OF_RANGE, KafkaError._AUTO_OFFSET_RESET):
                    out[key] = Probe(None)
        return out
    finally:
        consumer.close()


def judge(
    offset: int,
    stored: StoredOffset | None,
    current_id: str | None,
    high: int | None,
    probe: Probe | None,
) -> str | None:
    """Why ``offset`` must not be used for a partition, or None when it may.

    ``stored`` is the target's row when ``offset`` is its offset (None for a Kafka-committed
    offset, which carries no identity), ``current_id`` the topic's id now, ``high`` the
    partition's true end, ``probe`` the record at ``offset - 1``.
    """
    if offset <= 0:
        return None
    ident = stored.identity if stored is not None else OffsetIdentity()
    id_verified = False
    if ident.topic_id is not None and current_id is not None:
        if ident.topic_id != current_id:
            return f"the topic id is {current_id}, the offset was stored for topic id {ident.topic_id}"
        id_verified = True
    if high is None:
        return "the end of the partition could not be read"
    if offset > high:
        return f"it is past the end of the partition ({high})"
    if probe is None:
        return f"the record at {offset - 1} could not be read"
    if probe.fingerprint is None:
        if id_verified or ident.fingerprint is None:
            return None  # gone by retention or compaction; nothing more to compare
        return f"the record at {offset - 1} is gone and the topic has no id to compare"
    if ident.fingerprint is not None and probe.fingerprint != ident.fingerprint:
        return f"the record at {offset - 1} is not the one the offset was stored after"
    return None


def check_starts(
    bootstrap: str,
    admin: AdminClient,
    topics: Iterable[str],
    starts: Mapping[TP, tuple[int, StoredOffset | None]],
) -> tuple[dict[str, str | None], dict[TP, str]]:
    """Check each partition's start offset (with the stored row it came from, if it did).

    Returns the ids of ``topics`` (and of the topics of ``starts``) and, per partition that must
    be re-read from its start, the reason.
    """
    ids = topic_ids(admin, {*topics, *(t for t, _ in starts)})
    wanted = {tp: off for tp, (off, _) in starts.items() if off > 0}
    if not wanted:
        return ids, {}
    try:
        marks: dict[TP, Any] = dict(groups.true_watermarks(bootstrap, wanted))
    except groups.BrokerError:
        marks = {}
    highs = {tp: int(w.high) for tp, w in marks.items()}
    readable = {tp: off for tp, off in wanted.items() if tp in highs and off <= highs[tp]}
    try:
        probes = records_before(bootstrap, readable)
    except KafkaException:
        probes = {}  # unread: judged "could not be read", so read again from the start
    failed: dict[TP, str] = {}
    for tp, off in wanted.items():
        reason = judge(off, starts[tp][1], ids.get(tp[0]), highs.get(tp), probes.get(tp))
        if reason is not None:
            failed[tp] = reason
    return ids, failed
