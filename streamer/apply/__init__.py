"""The apply engine: how decoded changes become target rows, whatever the source.

* :mod:`streamer.apply.sink`: the engine (``Sink``): coalescing a batch per key, the one version
  guard (``streamer.core.events.supersedes`` and its SQL form), the batch's target transaction
  with its offsets, fencing, isolation of rejected events.
* :mod:`streamer.apply.schema`: routing (source table -> target table, renames, drops, partition
  roots) and the target's schema (auto creation, managed tables, schema-change policies).
* :mod:`streamer.apply.state`: streamer's own tables in the target and their Alembic migrations
  (:mod:`streamer.apply.migrations`).
* :mod:`streamer.apply.prepare`: ``streamer db prepare``, the DDL a managed table lacks.
* :mod:`streamer.apply.dialects`: one module per target behind the
  :class:`~streamer.apply.dialects.Dialect` protocol, found by the engine's dialect name
  (:func:`~streamer.apply.dialects.dialect_for`): guarded upserts, insert-or-ignore, the
  migration lock, row locks, whether the target has schemas, whether batches are merged by COPY.
"""
