"""What every source's run loop shares, written once.

* :mod:`streamer.pipeline.policy`: apply a batch with the error policy: retry transient target
  errors with backoff, and on a permanent one apply event by event to isolate the culprit(s)
  (dead-lettered or stopped on, by ``consumer.error_policy``).

The run loops themselves (``streamer.consume.ConsumerProcess``, ``streamer.replicate.ReplicationProcess``)
are still two; they become one ``pipeline/runner.py`` over a ``Source`` protocol in a later step.
"""
