"""What every source's run loop shares, written once.

* :mod:`streamer.pipeline.runner`: the one run loop over a :class:`~streamer.sources.base.Source`
  (batch bounds, until-idle, max-events, progress, hold while loading, apply, ack, observers).
* :mod:`streamer.pipeline.policy`: apply a batch with the error policy: retry transient target
  errors with backoff, and on a permanent one apply event by event to isolate the culprit(s)
  (dead-lettered or stopped on, by ``consumer.error_policy``).

Both sources run on the runner: ``streamer.consume.ConsumerProcess`` (the Kafka source, applied
on an apply thread with one batch in flight) and ``streamer.replicate.ReplicationProcess`` (the
pgoutput source, applied in its reading thread).
"""
