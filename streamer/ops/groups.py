"""What the broker knows about a consumer group and its partitions, read so that it is exact on any broker.

Used by ``streamer replay`` and ``streamer status``.

True end offsets
----------------
:func:`true_watermarks` does not trust ListOffsets "latest": the local broker (tansu) answers it
with the base offset of the newest record *batch* plus one, not the high watermark. It assigns
the partitions at their end instead, lets the consumer fetch, and takes the offset of the
partition-EOF event, which librdkafka raises when a fetch response's high watermark equals the
fetch position (the same value ``get_watermark_offsets(cached=True)`` returns after a fetch). On
Kafka the fetch starts at the true end and returns nothing; on tansu it re-reads at most the
newest batch. The low watermark is the fetch response's log start offset.

Group members
-------------
:func:`describe_group` asks the AdminClient (``describe_consumer_groups``). librdkafka sends
ConsumerGroupDescribe (KIP-848) to a broker that advertises it; tansu advertises it but answers
it for a classic group with a state and no members. When the answer is "active, no members",
the classic DescribeGroups v0 request is sent to the group's coordinator directly (two small
requests on a plain socket), which lists the members (tansu leaves client id, host and
assignment empty; Kafka fills them).
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import struct
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from confluent_kafka import (
    OFFSET_END,
    Consumer,
    ConsumerGroupState,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._listoffsets import OffsetSpec
from confluent_kafka.admin._metadata import ClusterMetadata

from streamer.core.errors import StreamerError
from streamer.settings import Settings

TP = tuple[str, int]
ACTIVE_STATES = frozenset({"STABLE", "PREPARING_REBALANCE", "COMPLETING_REBALANCE"})


class BrokerError(StreamerError):
    """The broker could not be asked (unreachable, timeout, unknown topic)."""


@dataclasses.dataclass(frozen=True)
class Watermarks:
    """First offset still in the log and the high watermark (next offset to be written)."""

    low: int
    high: int

    @property
    def records(self) -> int:
        return max(0, self.high - self.low)


@dataclasses.dataclass(frozen=True)
class Member:
    """One member of a consumer group. ``assignment`` is None when the broker does not report it."""

    member_id: str
    client_id: str
    host: str
    instance_id: str | None = None
    assignment: tuple[TP, ...] | None = None

    def describe(self) -> str:
        parts = [f"consumer id {self.member_id}"]
        if self.client_id:
            parts.append(f"client id {self.client_id}")
        if self.host:
            parts.append(f"host {self.host}")
        if self.instance_id:
            parts.append(f"instance id {self.instance_id}")
        return ", ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "member_id": self.member_id,
            "client_id": self.client_id,
            "host": self.host,
            "instance_id": self.instance_id,
            "assignment": None
            if self.assignment is None
            else [{"topic": t, "partition": p} for t, p in self.assignment],
        }


@dataclasses.dataclass(frozen=True)
class GroupDescription:
    """A consumer group's state (``STABLE``, ``EMPTY``, ``DEAD``, ...) and members."""

    group: str
    state: str
    members: tuple[Member, ...]

    @property
    def active(self) -> bool:
        return bool(self.members) or self.state in ACTIVE_STATES


def admin_client(bootstrap: str) -> AdminClient:
    # log_level 4: no "purging unserved events" notices when a client goes away mid-request
    return AdminClient({"bootstrap.servers": bootstrap, "log_level": 4})


def _result(future: Any, what: str, timeout: float) -> Any:
    try:
        return future.result(timeout)
    except KafkaException as exc:
        raise BrokerError(f"{what}: {exc.args[0] if exc.args else exc}") from None
    except TimeoutError:
        raise BrokerError(f"{what}: no answer within {timeout:g}s") from None


# ---------------------------------------------------------------- topics
def metadata(admin: AdminClient, bootstrap: str, timeout: float = 10.0) -> ClusterMetadata:
    try:
        return admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise BrokerError(f"broker {bootstrap} did not answer a metadata request: {exc}") from None


def partitions_of(md: ClusterMetadata, topics: Iterable[str]) -> list[TP]:
    """Every partition of the named topics that exist, sorted."""
    out: list[TP] = []
    for topic in sorted(set(topics)):
        tm = md.topics.get(topic)
        if tm is None or tm.error is not None:
            continue
        out.extend((topic, p) for p in sorted(tm.partitions))
    return out


def matching_topics(md: ClusterMetadata, regex: str) -> list[str]:
    """Existing (non-internal) topics whose name the regex matches, as a subscription would."""
    pattern = re.compile(regex if regex.startswith("^") else "^" + regex)
    return sorted(
        t
        for t, tm in md.topics.items()
        if not t.startswith("__") and tm.error is None and pattern.search(t) is not None
    )


def consumer_regex(settings: Settings) -> str | None:
    """The topic regex ``streamer consume`` subscribes to: ``consumer.topics``, else from the connector files."""
    if settings.consumer.topics:
        return settings.consumer.topics
    from streamer.sources.kafka.source import default_topic_regex

    try:
        return default_topic_regex(settings.connectors_dir)
    except StreamerError:
        return None


def group_topics(
    md: ClusterMetadata, regex: str | None, with_offsets: Iterable[str], explicit_regex: bool = False
) -> list[str]:
    """The topics a group command works on.

    With an explicit ``--topics`` regex: the existing topics it matches. Otherwise the existing
    topics the group has offsets for (Kafka or the target's state table) plus those the consumer's
    regex (``consumer.topics`` or the connector files' prefixes; None if neither is set) matches.
    """
    existing = {t for t, tm in md.topics.items() if tm.error is None}
    matched = set(matching_topics(md, regex)) if regex else set()
    if explicit_regex:
        return sorted(matched)
    return sorted(matched | (set(with_offsets) & existing))


# ---------------------------------------------------------------- offsets
def committed_offsets(admin: AdminClient, group: str, timeout: float = 15.0) -> dict[TP, int]:
    """The group's committed Kafka offsets (partitions without one are left out)."""
    future = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group]
    res = _result(future, f"could not read the committed offsets of group {group!r}", timeout)
    return {
        (tp.topic, tp.partition): tp.offset
        for tp in res.topic_partitions or []
        if tp.error is None and tp.offset >= 0
    }


def alter_offsets(
    admin: AdminClient, group: str, offsets: Mapping[TP, int], timeout: float = 30.0
) -> dict[TP, str]:
    """Commit ``offsets`` for the group; the partitions the broker refused, with its answer for each.

    A refusal of the whole request is reported for every partition (the broker's answer quoted).
    """
    request = ConsumerGroupTopicPartitions(
        group, [TopicPartition(t, p, o) for (t, p), o in sorted(offsets.items())]
    )
    future = admin.alter_consumer_group_offsets([request])[group]
    try:
        res = future.result(timeout)
    except KafkaException as exc:
        err = exc.args[0] if exc.args else exc
        answer = f"{err.name()}: {err.str()}" if isinstance(err, KafkaError) else str(err)
        return dict.fromkeys(offsets, answer)
    except TimeoutError:
        return dict.fromkeys(offsets, f"no answer within {timeout:g}s")
    return {
        (tp.topic, tp.partition): f"{tp.error.name()}: {tp.error.str()}"
        for tp in res.topic_partitions or []
        if tp.error is not None
    }


def commit_as_member(
    settings: Settings, group: str, offsets: Mapping[TP, int], timeout: float = 60.0
) -> dict[TP, str]:
    """Join the group as its only member, commit ``offsets`` as that member, and leave.

    For a broker that refuses offset changes from outside the group while it has no members (the
    local broker after a member was killed answers UNKNOWN_MEMBER_ID). The member subscribes to
    exactly the topics of ``offsets``, waits until every one of those partitions is assigned to it
    (it is the only member, or another member joined and the commit is refused), commits and
    closes (leaves the group). Returns the partitions refused, with the broker's answer.
    """
    cfg = settings.consumer
    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "partition.assignment.strategy": "cooperative-sticky",  # the group's protocol (streamer consume)
            "session.timeout.ms": cfg.session_timeout_ms,
            "heartbeat.interval.ms": cfg.heartbeat_interval_ms,
            "client.id": f"streamer-replay-{group}",
            "log_level": 4,
        }
    )
    wanted = set(offsets)
    try:
        consumer.subscribe(sorted({t for t, _ in offsets}))
        deadline = time.monotonic() + timeout
        assigned: set[TP] = set()
        while time.monotonic() < deadline:
            consumer.poll(0.2)  # joins, heartbeats; records fetched here are not used
            assigned = {(tp.topic, tp.partition) for tp in consumer.assignment()}
            if wanted <= assigned:
                break
        missing = wanted - assigned
        if missing:
            answer = f"not assigned to the replay's member within {timeout:g}s (another member joined?)"
            return dict.fromkeys(missing, answer)
        try:
            result = consumer.commit(
                offsets=[TopicPartition(t, p, o) for (t, p), o in sorted(offsets.items())], asynchronous=False
            )
        except KafkaException as exc:
            err = exc.args[0] if exc.args else exc
            return dict.fromkeys(
                offsets, f"{err.name()}: {err.str()}" if isinstance(err, KafkaError) else str(err)
            )
        return {
            (tp.topic, tp.partition): f"{tp.error.name()}: {tp.error.str()}"
            for tp in result or []
            if tp.error is not None
        }
    finally:
        consumer.close()


def offsets_for_time(
    admin: AdminClient, partitions: Sequence[TP], ms: int, timeout: float = 15.0
) -> dict[TP, int]:
    """Per partition, the first offset whose record timestamp is >= ``ms``; -1 when there is none."""
    if not partitions:
        return {}
    futures = admin.list_offsets({TopicPartition(t, p): OffsetSpec.for_timestamp(ms) for t, p in partitions})
    out: dict[TP, int] = {}
    for tp, future in futures.items():
        info = _result(future, f"could not look up offsets by time in {tp.topic}[{tp.partition}]", timeout)
        out[(tp.topic, tp.partition)] = int(info.offset)
    return out


def true_watermarks(bootstrap: str, partitions: Iterable[TP], timeout: float = 20.0) -> dict[TP, Watermarks]:
    """Low and high watermarks of each partition, the high one from a fetch (see the module docstring)."""
    wanted = sorted(set(partitions))
    if not wanted:
        return {}
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            # never joins: partitions are assigned, nothing is committed
            "group.id": f"streamer-watermarks-{os.getpid()}",
            "client.id": "streamer-watermarks",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_uncommitted",
            "auto.offset.reset": "latest",
            "fetch.wait.max.ms": 20,
        }
    )
    eof: dict[TP, int] = {}
    try:
        consumer.assign([TopicPartition(t, p, OFFSET_END) for t, p in wanted])
        deadline = time.monotonic() + timeout
        while len(eof) < len(wanted) and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=10_000, timeout=0.1):
                err = msg.error()
                if err is None:
                    continue  # the tail of the newest batch (tansu): not needed
                topic, partition = msg.topic(), msg.partition()
                if err.code() == KafkaError._PARTITION_EOF and topic is not None and partition is not None:
                    key = (topic, partition)
                    eof[key] = max(eof.get(key, -1), int(msg.offset() or 0))
                elif err.fatal() or err.code() in (
                    KafkaError.UNKNOWN_TOPIC_OR_PART,
                    KafkaError._UNKNOWN_PARTITION,
                    KafkaError._UNKNOWN_TOPIC,
                ):
                    raise BrokerError(f"cannot read the end of {topic}[{partition}]: {err.str()}")
        out: dict[TP, Watermarks] = {}
        missing: list[str] = []
        for t, p in wanted:
            lo, hi = consumer.get_watermark_offsets(TopicPartition(t, p), cached=True)
            high = max(eof.get((t, p), -1), hi)
            if (t, p) not in eof:
                missing.append(f"{t}[{p}]")
                continue
            if lo < 0:
                lo, _ = consumer.get_watermark_offsets(TopicPartition(t, p), timeout=10, cached=False)
            out[(t, p)] = Watermarks(max(0, lo), high)
        if missing:
            raise BrokerError(
                f"broker {bootstrap}: no fetch reached the end of {', '.join(missing[:10])} within {timeout:g}s"
            )
        return out
    except KafkaException as exc:
        raise BrokerError(f"broker {bootstrap}: {exc}") from None
    finally:
        consumer.close()


def effective_position(committed: int | None, stored: int | None, low: int) -> int:
    """Where ``streamer consume`` starts a partition: the target's offset when it is ahead of Kafka's,
    else Kafka's, else the start of the log (``auto.offset.reset=earliest``); never before the log start."""
    if stored is not None and (committed is None or stored > committed):
        pos = stored
    elif committed is not None:
        pos = committed
    else:
        pos = low
    return max(pos, low)


# ---------------------------------------------------------------- group membership
def _state_name(state: Any) -> str:
    if isinstance(state, ConsumerGroupState):
        return {
            ConsumerGroupState.PREPARING_REBALANCING: "PREPARING_REBALANCE",
            ConsumerGroupState.COMPLETING_REBALANCING: "COMPLETING_REBALANCE",
        }.get(state, state.name)
    text = re.sub(r"(?<=[a-z])(?=[A-Z])", "_", str(state)).upper()
    return {"PREPARING_REBALANCING": "PREPARING_REBALANCE"}.get(text, text)


def describe_group(bootstrap: str, group: str, timeout: float = 15.0) -> GroupDescription:
    """State and members of a consumer group (see the module docstring for the local broker)."""
    admin = admin_client(bootstrap)
    d = _result(
        admin.describe_consumer_groups([group], request_timeout=timeout)[group],
        f"could not describe consumer group {group!r} on {bootstrap}",
        timeout + 5,
    )
    members = tuple(
        Member(
            member_id=m.member_id,
            client_id=m.client_id or "",
            host=(m.host or "").lstrip("/"),
            instance_id=m.group_instance_id,
            assignment=tuple(sorted((a.topic, a.partition) for a in m.assignment.topic_partitions))
            if m.assignment is not None
            else None,
        )
        for m in d.members or []
    )
    found = GroupDescription(group, _state_name(d.state), members)
    if found.state in ACTIVE_STATES and not members:
        return describe_group_classic(bootstrap, group, timeout)
    return found


# The classic protocol, for brokers whose ConsumerGroupDescribe answer lacks the members.
def _str(value: str) -> bytes:
    raw = value.encode()
    return struct.pack(">h", len(raw)) + raw


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, fmt: str) -> Any:
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.take(">h")
        if n < 0:
            return ""
        value = self.data[self.pos : self.pos + n].decode(errors="replace")
        self.pos += n
        return value

    def blob(self) -> bytes:
        n = self.take(">i")
        if n < 0:
            return b""
        value = self.data[self.pos : self.pos + n]
        self.pos += n
        return value


def _request(host: str, port: int, api_key: int, body: bytes, timeout: float) -> _Reader:
    header = struct.pack(">hhi", api_key, 0, 1) + _str("streamer-status")
    frame = header + body
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(struct.pack(">i", len(frame)) + frame)
        size = struct.unpack(">i", _recv(sock, 4))[0]
        reader = _Reader(_recv(sock, size))
    reader.take(">i")  # correlation id
    return reader


def _recv(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by the broker")
        buf += chunk
    return buf


def _parse_assignment(raw: bytes) -> tuple[TP, ...] | None:
    """ConsumerProtocolAssignment: version, [topic, [partition]], user data."""
    if not raw:
        return None
    r = _Reader(raw)
    r.take(">h")
    out: list[TP] = []
    for _ in range(r.take(">i")):
        topic = r.string()
        out.extend((topic, r.take(">i")) for _ in range(r.take(">i")))
    return tuple(sorted(out))


def describe_group_classic(bootstrap: str, group: str, timeout: float = 10.0) -> GroupDescription:
    """FindCoordinator v0 + DescribeGroups v0 on a plain socket (PLAINTEXT listeners only)."""
    errors: list[str] = []
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            r = _request(host, int(port), 10, _str(group), timeout)  # FindCoordinator v0
            code, _node = r.take(">h"), r.take(">i")
            c_host, c_port = r.string(), r.take(">i")
            if code != 0:
                raise BrokerError(f"FindCoordinator error code {code}")
            r = _request(c_host, c_port, 15, struct.pack(">i", 1) + _str(group), timeout)  # DescribeGroups v0
            members: list[Member] = []
            r.take(">i")  # one group
            code = r.take(">h")
            r.string()  # group id
            state = r.string()
            r.string()  # protocol type
            r.string()  # protocol
            for _ in range(r.take(">i")):
                member_id, client_id, host_ = r.string(), r.string(), r.string()
                r.blob()  # metadata
                members.append(
                    Member(member_id, client_id, host_.lstrip("/"), None, _parse_assignment(r.blob()))
                )
            if code != 0:
                raise BrokerError(f"DescribeGroups error code {code}")
            return GroupDescription(group, _state_name(state or "Unknown"), tuple(members))
        except (OSError, struct.error, ValueError, BrokerError) as exc:
            errors.append(f"{server}: {exc}")
    raise BrokerError(f"could not describe consumer group {group!r}: {'; '.join(errors)}")


def members_line(members: Sequence[Member]) -> str:
    return "; ".join(m.describe() for m in members)


def as_tp_map(values: Mapping[TP, int]) -> dict[str, int]:
    """``{"topic[partition]": n}`` for logs and JSON."""
    return {f"{t}[{p}]": v for (t, p), v in sorted(values.items())}
