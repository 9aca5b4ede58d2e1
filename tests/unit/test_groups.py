"""Pure helpers of streamer.ops.groups: topic selection, group states, the classic assignment format."""

from __future__ import annotations

import struct

from confluent_kafka import ConsumerGroupState, KafkaError
from confluent_kafka.admin._metadata import ClusterMetadata, PartitionMetadata, TopicMetadata

from streamer.ops.groups import (
    GroupDescription,
    Member,
    _parse_assignment,
    _state_name,
    group_topics,
    matching_topics,
    members_line,
)


def _metadata(topics: dict[str, int], broken: tuple[str, ...] = ()) -> ClusterMetadata:
    md = ClusterMetadata()
    for name, n in topics.items():
        tm = TopicMetadata()
        tm.topic = name
        tm.partitions = {}
        for p in range(n):
            pm = PartitionMetadata()
            pm.id = p
            tm.partitions[p] = pm
        tm.error = KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART) if name in broken else None
        md.topics[name] = tm
    return md


MD = _metadata(
    {
        "inv.public.a": 3,
        "inv.public.b": 1,
        "inv": 1,  # schema-change topic
        "inv.transaction": 1,
        "other.public.c": 2,
        "__consumer_offsets": 50,
        "inv.public.gone": 1,
    },
    broken=("inv.public.gone",),
)
REGEX = r"^inv\.[^.]+\.[^.]+$"


def test_matching_topics_like_a_subscription() -> None:
    assert matching_topics(MD, REGEX) == ["inv.public.a", "inv.public.b"]
    assert matching_topics(MD, r"inv\.public") == ["inv.public.a", "inv.public.b"]  # anchored at the start
    assert matching_topics(MD, ".*offsets") == []  # internal topics never


def test_group_topics_default_and_explicit() -> None:
    # default: what the group has offsets for (if it still exists) plus what the consumer's regex matches
    assert group_topics(MD, REGEX, {"other.public.c", "deleted.topic"}) == [
        "inv.public.a",
        "inv.public.b",
        "other.public.c",
    ]
    assert group_topics(MD, None, {"other.public.c"}) == ["other.public.c"]
    # --topics: exactly what it matches
    assert group_topics(MD, r"^other\.", {"inv.public.a"}, explicit_regex=True) == ["other.public.c"]


def test_state_names_of_both_protocol_answers() -> None:
    assert _state_name(ConsumerGroupState.STABLE) == "STABLE"
    assert _state_name(ConsumerGroupState.PREPARING_REBALANCING) == "PREPARING_REBALANCE"
    assert _state_name(ConsumerGroupState.COMPLETING_REBALANCING) == "COMPLETING_REBALANCE"
    assert _state_name("Stable") == "STABLE"
    assert _state_name("PreparingRebalance") == "PREPARING_REBALANCE"
    assert _state_name("CompletingRebalance") == "COMPLETING_REBALANCE"
    assert _state_name("Empty") == "EMPTY"


def _s(text: str) -> bytes:
    return struct.pack(">h", len(text)) + text.encode()


def test_parse_classic_assignment() -> None:
    raw = (
        struct.pack(">h", 1)
        + struct.pack(">i", 2)
        + _s("b")
        + struct.pack(">i", 1)
        + struct.pack(">i", 0)
        + _s("a")
        + struct.pack(">i", 2)
        + struct.pack(">ii", 2, 1)
        + struct.pack(">i", -1)  # no user data
    )
    assert _parse_assignment(raw) == (("a", 1), ("a", 2), ("b", 0))
    assert _parse_assignment(b"") is None  # the local broker sends none


def test_group_activity_and_member_names() -> None:
    m = Member("streamer-g-1234", "streamer-g", "10.0.0.7", None, (("t", 0),))
    assert GroupDescription("g", "STABLE", (m,)).active
    assert GroupDescription("g", "PREPARING_REBALANCE", ()).active
    assert not GroupDescription("g", "EMPTY", ()).active
    assert not GroupDescription("g", "DEAD", ()).active
    assert members_line([m, Member("x-9", "", "")]) == (
        "consumer id streamer-g-1234, client id streamer-g, host 10.0.0.7; consumer id x-9"
    )
    assert m.to_json() == {
        "member_id": "streamer-g-1234",
        "client_id": "streamer-g",
        "host": "10.0.0.7",
        "instance_id": None,
        "assignment": [{"topic": "t", "partition": 0}],
    }
