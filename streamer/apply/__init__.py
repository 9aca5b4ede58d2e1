"""The apply engine: how decoded changes become target rows, whatever the source.

* :mod:`streamer.apply.sink`: the engine (``Sink``): the batch's target transaction with its
  offsets, fencing, isolation of rejected events, value adaptation per target.
* :mod:`streamer.apply.coalesce`: a batch coalesced per target table and key (pure).
* :mod:`streamer.apply.guard`: the one version rule (``streamer.core.events.supersedes``) in SQL.
* :mod:`streamer.apply.holds`: the hold protocol between ``streamer load`` and the streams.
* :mod:`streamer.apply.fetch`: values a change did not carry, read back from the source.
* :mod:`streamer.apply.schemachange` and :mod:`streamer.apply.pgcopy`: how a column's type
  changed; COPY's text encoding.
* :mod:`streamer.apply.schema`: routing (source table -> target table, renames, drops, partition
  roots) and the target's schema (auto creation, managed tables, schema-change policies).
* :mod:`streamer.apply.state`: streamer's own tables in the target and their Alembic migrations
  (:mod:`streamer.apply.migrations`).
* :mod:`streamer.apply.prepare`: ``streamer db prepare``, the DDL a managed table lacks.
* :mod:`streamer.apply.dialects`: one module per target behind the
  :class:`~streamer.apply.dialects.Dialect` protocol, found by the engine's dialect name
  (:func:`~streamer.apply.dialects.dialect_for`): guarded upserts, insert-or-ignore, the
  migration lock, row locks, whether the target has schemas, whether batches are merged by COPY
  (and the COPY merge itself), how decoded values are bound (:mod:`streamer.apply.dialects.values`).
"""
