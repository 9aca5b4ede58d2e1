"""The pgoutput source: PostgreSQL logical replication read directly, without Kafka.

* :mod:`~streamer.sources.pgoutput.protocol`: the pgoutput message parser (protocol 1 and 2,
  streamed transactions) and the transaction assembler.
* :mod:`~streamer.sources.pgoutput.walstream`: the replication stream on libpq (psycopg2's
  connection), with exactly the feedback the source gives it.
* :mod:`~streamer.sources.pgoutput.spill`: the file a large open transaction spills to.
* :mod:`~streamer.sources.pgoutput.catalog`: the source catalog connection (setup checks, types,
  relations).
* :mod:`~streamer.sources.pgoutput.source`: :class:`~streamer.sources.pgoutput.source.PgoutputSource`,
  the slot's stream as a :class:`~streamer.sources.base.Source` (feedback, reconnect,
  transaction assembly, dead-letter file).

PostgreSQL's text values are converted by :mod:`streamer.decode.pgtypes` (the loader reads them too).
"""
