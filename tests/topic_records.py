"""Reading a whole Debezium topic back in tests and fault diagnostics, on both brokers.

A topic is read until ``quiet_s`` seconds bring no record, not up to a watermark: the local
broker's ListOffsets "latest" is the base offset of the newest batch + 1, not the end (see the
shared notes on tansu), so a read up to it would stop early there.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, NamedTuple

from confluent_kafka import Consumer, TopicPartition


class TopicRecord(NamedTuple):
    partition: int
    offset: int
    key: Any  # the key's JSON payload (None without a key)
    value: Any  # the value's JSON payload (None for a tombstone)


def payload(raw: bytes | None) -> Any:
    """A JSON converter's record: its ``payload`` when it carries a schema, else the document."""
    if raw is None:
        return None
    doc = json.loads(raw)
    return doc["payload"] if isinstance(doc, dict) and "payload" in doc and "schema" in doc else doc


def read_topic(bootstrap: str, topic: str, quiet_s: float = 3.0) -> list[TopicRecord]:
    """Every record of ``topic`` from offset 0, in each partition's order ([] without the topic)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"read-topic-{os.getpid()}-{time.monotonic_ns()}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    out: list[TopicRecord] = []
    try:
        meta = consumer.list_topics(topic, timeout=20).topics.get(topic)
        if meta is None or meta.error is not None:
            return out
        consumer.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
        quiet = time.monotonic() + quiet_s
        while time.monotonic() < quiet:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            quiet = time.monotonic() + quiet_s
            out.append(
                TopicRecord(msg.partition() or 0, msg.offset() or 0, payload(msg.key()), payload(msg.value()))
            )
    finally:
        consumer.close()
    return out
