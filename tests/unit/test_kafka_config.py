"""The Kafka source's librdkafka configuration, checked by librdkafka itself (no broker needed)."""

from __future__ import annotations

from typing import Any, cast

from confluent_kafka import Consumer

from streamer.settings import load_settings
from streamer.sources.kafka.source import KafkaSource, Stats


def _config(**consumer: Any) -> dict[str, Any]:
    settings = load_settings(overrides={"consumer": consumer} if consumer else None)
    source = KafkaSource(
        settings.consumer,
        cast(Any, None),  # the sink and decoder are not used to build the configuration
        cast(Any, None),
        bootstrap_servers="127.0.0.1:1",
        group="config-test",
        topic_regex="^none$",
        stats=Stats(),
    )
    return source._consumer_config()


def test_fetch_queue_backoff_is_set_and_bounds_stay() -> None:
    conf = _config()
    # librdkafka's default (1000 ms) idled each partition a second whenever the bounded queue was full
    assert conf["fetch.queue.backoff.ms"] == 10
    assert conf["queued.max.messages.kbytes"] == 16384
    assert conf["fetch.max.bytes"] == 8 * 1024 * 1024


def test_setting_reaches_librdkafka_and_librdkafka_accepts_every_key() -> None:
    conf = _config(fetch_queue_backoff_ms=250)
    assert conf["fetch.queue.backoff.ms"] == 250
    conf.pop("logger", None)
    # an unknown or out-of-range property raises here (KafkaException): the names are real
    Consumer(conf).close()
