"""What every source's run loop shares, written once.

* :mod:`streamer.pipeline.runner`: the one run loop over a :class:`~streamer.sources.base.Source`
  (batch bounds, until-idle, max-events, progress, hold while loading, apply, ack, observers).
* :mod:`streamer.pipeline.policy`: apply a batch with the error policy: retry transient target
  errors with backoff, and on a permanent one apply event by event to isolate the culprit(s)
  (dead-lettered or stopped on, by ``consumer.error_policy``).

``streamer.replicate.ReplicationProcess`` runs on the runner; ``streamer.consume.ConsumerProcess``
still has its own loop (its apply thread keeps one batch in flight), to move next.
"""
