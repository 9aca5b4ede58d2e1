"""The decision whether a start offset belongs to the assigned topic (streamer.sources.kafka.offsetcheck.judge)."""

from __future__ import annotations

import pytest
from confluent_kafka.admin import AdminClient

from streamer.apply.state import StoredOffset
from streamer.core.checkpoint import OffsetIdentity
from streamer.core.errors import BrokerUnavailableError
from streamer.sources.kafka.offsetcheck import Probe, judge, topic_ids


def row(offset: int, topic_id: str | None = "id-1", fp: str | None = "fp") -> StoredOffset:
    return StoredOffset(offset, OffsetIdentity(topic_id, fp))


def test_matching_offset_is_kept() -> None:
    assert judge(10, row(10), "id-1", 30, Probe("fp")) is None


def test_offset_zero_needs_no_check() -> None:
    assert judge(0, row(0), "id-2", None, None) is None


def test_other_topic_id_is_refused() -> None:
    reason = judge(10, row(10), "id-2", 30, Probe("fp"))
    assert reason is not None and "id-2" in reason and "id-1" in reason


def test_past_end_is_refused_even_with_matching_id() -> None:
    reason = judge(40, row(40), "id-1", 30, None)
    assert reason is not None and "past the end" in reason


def test_unknown_end_is_refused() -> None:
    assert judge(10, row(10), "id-1", None, None) is not None


def test_other_record_is_refused_without_topic_ids() -> None:
    assert judge(10, row(10, None), None, 30, Probe("other")) is not None
    assert judge(10, row(10, None), None, 30, Probe("fp")) is None


def test_gone_record_passes_only_with_a_verified_topic_id() -> None:
    assert judge(10, row(10), "id-1", 30, Probe(None)) is None
    assert judge(10, row(10, None), None, 30, Probe(None)) is not None
    assert judge(10, row(10), None, 30, Probe(None)) is not None  # broker lost its ids: cannot verify


def test_unreadable_record_is_refused() -> None:
    assert judge(10, row(10), "id-1", 30, None) is not None


def test_kafka_offset_without_identity_is_checked_against_the_end() -> None:
    assert judge(10, None, "id-1", 30, Probe("anything")) is None
    assert judge(31, None, "id-1", 30, None) is not None


def test_row_without_identity_is_kept_within_the_partition() -> None:
    """Rows written before revision 0003 or by replay carry no identity: only the end is checked."""
    assert judge(10, row(10, None, None), "id-1", 30, Probe("x")) is None
    assert judge(10, row(10, None, None), "id-1", 30, Probe(None)) is None
    assert judge(31, row(31, None, None), "id-1", 30, None) is not None


def test_a_broker_that_does_not_answer_is_unavailable_not_an_internal_error() -> None:
    """Seen when the broker went away during an assignment: the topic ids cannot be read, so no start
    offset can be checked; that is exit 3 (broker unavailable) naming the topic, never exit 4."""
    admin = AdminClient({"bootstrap.servers": "127.0.0.1:1", "socket.connection.setup.timeout.ms": 1000})
    with pytest.raises(BrokerUnavailableError, match=r"did not describe topic 'some\.topic' within 1 s"):
        topic_ids(admin, ["some.topic"], timeout=1.0)
