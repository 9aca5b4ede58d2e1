"""Where change events come from, behind one :class:`~streamer.sources.base.Source` protocol.

* :mod:`streamer.sources.base`: the protocol the one run loop (:mod:`streamer.pipeline.runner`)
  drives: read into an open batch, close it into a :class:`~streamer.sources.base.Batch` of
  decoded events with its checkpoint, acknowledge it only after the target commit, hold it
  while its tables are loaded, dead-letter what the target rejects.
* :mod:`streamer.sources.pgoutput`: PostgreSQL logical replication read directly (the stream with
  its feedback and reconnect, the source catalog); the protocol parser and transaction assembler
  are still :mod:`streamer.pgoutput` and :mod:`streamer.pgtypes`.

The Kafka source is still :class:`streamer.consume.ConsumerProcess` with its own loop (issue 12:
moving it onto the runner is the next step).
"""
