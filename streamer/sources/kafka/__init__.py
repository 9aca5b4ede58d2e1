"""The Kafka source: Debezium's topics read as a consumer-group member.

* :mod:`~streamer.sources.kafka.source`: :class:`~streamer.sources.kafka.source.KafkaSource`, the
  group member as a :class:`~streamer.sources.base.Source` (consumer, rebalance callbacks, start
  offsets, holds by partition, the dead-letter topic, Kafka commits after the target's).
* :mod:`~streamer.sources.kafka.offsetcheck`: whether a stored start offset belongs to the topic
  it is used for (topic id, fingerprint of the record before it).

Decoding the records (JSON, Avro, the Debezium envelope) is :mod:`streamer.decode.decoder`'s.
"""
