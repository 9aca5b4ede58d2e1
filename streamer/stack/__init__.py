"""The development stack and what runs on it.

* :mod:`~streamer.stack.local`: ``make up`` without Docker: source PostgreSQL, a Kafka-compatible
  broker and Kafka Connect with Debezium as local processes (``docker-compose.yml`` is the same
  stack with a Docker engine).
* :mod:`~streamer.stack.workload`: the sample schema and its live workload (demo, tests, benchmarks).
* :mod:`~streamer.stack.demo`: ``streamer demo``, the whole product on sample data.
"""
