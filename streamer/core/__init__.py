"""What every stage shares and no stage owns: the change event, positions, and the named errors.

* :mod:`streamer.core.events`: :class:`~streamer.core.events.ChangeEvent`, the one normalized
  change every source produces and the apply engine consumes (no source's coordinates in it);
* :mod:`streamer.core.checkpoint`: source-neutral positions (:class:`~streamer.core.checkpoint.Origin`
  of one change, :class:`~streamer.core.checkpoint.Checkpoint` of one batch);
* :mod:`streamer.core.errors`: transient vs terminal failures as classes, with the exit codes on them.

Nothing here imports any other part of streamer.
"""
