"""The pgoutput source: PostgreSQL logical replication read directly, without Kafka.

* :mod:`~streamer.sources.pgoutput.catalog`: the source catalog connection (setup checks, types,
  relations).
* :mod:`~streamer.sources.pgoutput.source`: :class:`~streamer.sources.pgoutput.source.PgoutputSource`,
  the slot's stream as a :class:`~streamer.sources.base.Source` (feedback, reconnect,
  transaction assembly, dead-letter file).

The wire protocol parser and transaction assembler (:mod:`streamer.sources.pgoutput.protocol`), the value
conversions (:mod:`streamer.decode.pgtypes`) and the libpq stream (:mod:`streamer.sources.pgoutput.walstream`) stay where
they are for now.
"""
