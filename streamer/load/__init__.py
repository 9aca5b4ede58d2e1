"""``streamer load``: bulk snapshot seeding joined exactly to the stream.

* :mod:`~streamer.load.loader`: one exported snapshot of the source, tables chunked by key
  ranges and copied in parallel (COPY), each row stamped with a version below every change the
  snapshot misses, the stream held for the loaded tables meanwhile (:mod:`streamer.apply.holds`),
  and a final sweep of the rows deleted during the load.
"""
