"""Kafka Connect: connectors as files, applied through Connect's REST API.

* :mod:`~streamer.connect.client`: the typed REST client (retries where Connect asks for them).
* :mod:`~streamer.connect.files`: ``connectors/*.json`` loaded, checked, validated, planned,
  applied and watched; secrets from the environment.
* :mod:`~streamer.connect.publications`: what a PostgreSQL connector captures, read from the
  source catalog (its publication, the columns Debezium drops).
"""
