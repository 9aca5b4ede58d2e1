"""The apply engine's per-target parts: what differs between PostgreSQL, MySQL/MariaDB and SQLite.

* :mod:`streamer.apply.dialects`: one module per target behind the
  :class:`~streamer.apply.dialects.Dialect` protocol, found by the engine's dialect name
  (:func:`~streamer.apply.dialects.dialect_for`): guarded upserts, insert-or-ignore, the
  migration lock, row locks, whether the target has schemas, whether batches are merged by COPY.

The engine itself (:mod:`streamer.sink`: coalescing, the version guard, state rows) and
:mod:`streamer.schema` / :mod:`streamer.state` join this package in a later step.
"""
