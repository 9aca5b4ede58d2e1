"""Where change events come from, behind one :class:`~streamer.sources.base.Source` protocol.

* :mod:`streamer.sources.base`: the protocol the one run loop (:mod:`streamer.pipeline.runner`)
  drives: read into an open batch, close it into a :class:`~streamer.sources.base.Batch` of
  decoded events with its checkpoint, acknowledge it only after the target commit, hold it
  while its tables are loaded, dead-letter what the target rejects.
* :mod:`streamer.sources.kafka`: Debezium's topics read as a consumer-group member (rebalance,
  start-offset checks, holds by partition, dead-letter topic).
* :mod:`streamer.sources.pgoutput`: PostgreSQL logical replication read directly (the protocol
  parser, the stream with its feedback and reconnect, spilled transactions, the source catalog).

Both run on the one :class:`~streamer.pipeline.runner.Runner`; ``streamer.consume`` and
``streamer.replicate`` are the commands' façades.
"""
