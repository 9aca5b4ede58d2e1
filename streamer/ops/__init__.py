"""What an operator runs next to the pipeline: seeing it, moving it, scaling it.

* :mod:`~streamer.ops.status`: ``streamer status``: connectors, the group and its lag, slots and
  retained WAL, loads, dead letters (table, ``--json``, ``--watch``).
* :mod:`~streamer.ops.groups`: what the broker knows of a consumer group, exact on any broker.
* :mod:`~streamer.ops.replay`: ``streamer replay``: move a group's offsets in Kafka and the target together.
* :mod:`~streamer.ops.slots`: the source's replication slots, what they retain, dropping one.
* :mod:`~streamer.ops.metrics`: Prometheus metrics of one consume or replicate process.
* :mod:`~streamer.ops.supervise`: ``streamer consume --processes N`` under one supervisor.
"""
