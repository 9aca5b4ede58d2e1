"""Stored offsets against a topic that was deleted and re-created (issue 11, item 1).

The broker forgets the topics (on the local broker at every restart; on real Kafka when topics
are deleted and re-created, or a group moves to another cluster) while the target keeps the
offsets in ``_streamer_offsets``. The consumer must notice that the stored offsets belong to
another incarnation of the topic and re-read it from the start, never skip what the new topic
holds. Reproduced on the shared broker without restarting it: the connector and its topics are
deleted, a new connector (new slot, no snapshot) re-creates the topics, and the changes made after
that land at offsets the old topics had long passed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
from confluent_kafka import Consumer, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from streamer.apply.state import StoredOffset, load_offsets
from streamer.apply.state import upgrade as state_upgrade
from streamer.core.checkpoint import Checkpoint, OffsetIdentity
from streamer.ops import groups
from streamer.settings import Settings
from streamer.sources.kafka import offsetcheck
from streamer.stack.local import Stack
from streamer.stack.workload import SAMPLE_TABLES, create_sample, run_workload
from tests.conftest import debezium_config, drop_connector, source_connection, wait_running
from tests.integration.conftest import target_url
from tests.integration.test_consume import assert_same, pipeline, run_consumer

__all__ = ["pipeline"]  # the fixture


def _topics(admin: AdminClient, prefix: str) -> list[str]:
    return sorted(t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix + "."))


def _register(stack: Stack, name: str, prefix: str, schema: str, **extra: str) -> None:
    tables = ",".join(f"{schema}.{t}" for t in SAMPLE_TABLES)
    cfg = debezium_config(stack, prefix, tables, **{"column.propagate.source.type": ".*"}, **extra)
    resp = httpx.put(f"{stack.settings.connect_url}/connectors/{name}/config", json=cfg, timeout=60)
    assert resp.status_code in (200, 201), resp.text
    wait_running(stack.settings.connect_url, name)


def _settled_ends(stack: Stack, prefix: str) -> dict[tuple[str, int], int]:
    """The true ends of the prefix's table topics once they all exist and stopped growing
    (Debezium has delivered the changes)."""
    admin = groups.admin_client(stack.settings.bootstrap_servers)
    topics: list[str] = []
    last: dict[tuple[str, int], int] = {}
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        md = groups.metadata(admin, stack.settings.bootstrap_servers)
        topics = sorted(t for t in md.topics if t.startswith(prefix + "."))
        parts = groups.partitions_of(md, topics)
        ends = {
            tp: w.high for tp, w in groups.true_watermarks(stack.settings.bootstrap_servers, parts).items()
        }
        if len(topics) == len(SAMPLE_TABLES) and ends == last and sum(ends.values()) > 0:
            return ends
        last = ends
        time.sleep(3)
    raise AssertionError(f"topics {topics} did not settle: {last}")


def test_topic_recreated_is_read_again_not_skipped(stack: Stack, unique: str, tmp_path: Path) -> None:
    schema = prefix = unique
    url = target_url("postgresql", stack, tmp_path)
    topics_re = rf"^{prefix}\.{schema}\.[^.]+$"
    group = f"{unique}-g"
    admin = AdminClient({"bootstrap.servers": stack.settings.bootstrap_servers})
    create_sample(stack.settings.source_url, schema, rows=900)
    names = [prefix, f"{prefix}b"]
    try:
        _register(stack, names[0], prefix, schema)
        first = run_consumer(group, topics_re, url, "--until-idle", "10")
        assert first.returncode == 0, first.stderr[-3000:]
        assert_same(stack, schema, url)
        old_ends = _settled_ends(stack, prefix)

        # the broker forgets the topics: connector, slot and topics go; a new connector (new slot,
        # no snapshot) makes them again, and the new changes start again at offset 0
        drop_connector(stack, names[0], prefix)
        topics = _topics(admin, prefix)
        for future in admin.delete_topics(topics).values():
            future.result(30)
        deadline = time.monotonic() + 30
        while _topics(admin, prefix) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _topics(admin, prefix)
        _register(
            stack,
            names[1],
            prefix,
            schema,
            **{
                "slot.name": f"{names[1]}_slot",
                "publication.name": f"{names[1]}_pub",
                "snapshot.mode": "no_data",
            },
        )
        run_workload(stack.settings.source_url, schema, transactions=60, rate=200, seed=7)
        new_ends = _settled_ends(stack, prefix)
        assert sum(new_ends.values()) < sum(old_ends.values()), (old_ends, new_ends)

        second = run_consumer(group, topics_re, url, "--until-idle", "10")
        assert second.returncode == 0, second.stderr[-3000:]
        assert_same(stack, schema, url)
        warnings = [
            line
            for line in (json.loads(x) for x in second.stderr.splitlines() if x.startswith("{"))
            if line.get("event", "").startswith("stored offset does not belong to this topic")
        ]
        assert {(w["topic"], w["partition"]) for w in warnings} == set(new_ends)
        for w in warnings:
            assert w["offset"] == old_ends[(w["topic"], w["partition"])]
            assert w["stored_topic_id"] and w["topic_id"] and w["stored_topic_id"] != w["topic_id"]
    finally:
        for name in names:
            drop_connector(stack, name, name)
        conn = source_connection(stack)
        try:
            with conn.cursor() as cur:
                cur.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            conn.close()
        left = _topics(admin, prefix)
        if left:
            for future in admin.delete_topics(left).values():
                future.exception(30)


def test_check_starts_on_the_broker(stack: Stack, unique: str) -> None:
    """The checks against a real topic: fingerprint of the record before the offset (as on a
    broker without topic ids), topic id, and an offset past the true end."""
    bootstrap = stack.settings.bootstrap_servers
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topic = f"{unique}-check"
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
    try:
        producer = Producer({"bootstrap.servers": bootstrap})
        for i in range(5):
            producer.produce(topic, key=b"k%d" % i, value=b"v%d" % i)
        producer.flush(30)
        consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": f"{unique}-read", "enable.auto.commit": False}
        )
        consumer.assign([TopicPartition(topic, 0, 0)])
        msgs: list[Message] = []
        deadline = time.monotonic() + 30
        while len(msgs) < 5 and time.monotonic() < deadline:
            msgs += [m for m in consumer.consume(10, timeout=0.5) if m.error() is None]
        consumer.close()
        fps = [offsetcheck.fingerprint(m) for m in msgs]
        assert len(set(fps)) == 5
        tid = offsetcheck.topic_ids(admin, [topic])[topic]
        tp = (topic, 0)

        def check(offset: int, topic_id: str | None, fp: str | None) -> str | None:
            row = StoredOffset(offset, OffsetIdentity(topic_id, fp))
            _ids, failed = offsetcheck.check_starts(bootstrap, admin, [topic], {tp: (offset, row)})
            return failed.get(tp)

        assert check(3, None, fps[2]) is None  # fingerprint only: matches
        assert check(3, None, fps[1]) is not None  # another record before the offset
        assert check(5, tid, fps[4]) is None
        assert check(5, "AAAAAAAAAAAAAAAAAAAAAQ", fps[4]) is not None  # another topic id
        reason = check(9, None, fps[4])
        assert reason is not None and "past the end" in reason
    finally:
        admin.delete_topics([topic])[topic].exception(30)


def test_fenced_batch_drops_its_partition_and_goes_on(
    stack: Stack, settings: Settings, pipeline: dict[str, Any], tmp_path: Path
) -> None:
    """While the consumer's first batch is in flight, another owner applies one of its partitions
    past the batch's first offset: the batch is refused for that partition (FencedBatchError),
    the rest of it is applied, the partition continues from the other owner's offset, and the
    target ends equal to the source."""
    from streamer.apply.sink import Sink, build_sink
    from streamer.consume import ConsumerProcess, build_decoder

    schema, topics = pipeline["schema"], pipeline["topics"]
    url = target_url("sqlite", stack, tmp_path)
    cfg = settings.model_copy(update={"target_url": url})
    base = build_sink(cfg)
    state_upgrade(base.engine)
    raced: list[tuple[str, int]] = []

    class RacingSink(Sink):
        def apply(self, events: Any, checkpoint: Any, group: str, **kw: Any) -> Any:
            first = checkpoint.first if isinstance(checkpoint, Checkpoint) else {}
            if not raced and first:
                tp = sorted(first)[0]
                raced.append(tp)
                theirs = [e for e in events if e.origin.stream == tp]
                super().apply(theirs, Checkpoint({tp: checkpoint.positions[tp]}, {tp: first[tp]}), group)
            return super().apply(events, checkpoint, group, **kw)

    sink = RacingSink(base.engine, base.router, base.schema, truncate=base.truncate)
    proc = ConsumerProcess(
        cfg, sink, build_decoder(cfg), group=f"{schema}-fence", topics=topics, until_idle=8
    )
    stats = proc.run()
    assert raced
    assert stats.records < 600  # the raced partition's records of the first batch were not counted twice
    assert_same(stack, schema, url)
    with base.engine.connect() as conn:
        stored = load_offsets(conn, f"{schema}-fence")
    ends = _settled_ends(stack, schema)
    assert stored == ends
    base.engine.dispose()
