"""Debezium records (and PostgreSQL's text values) decoded into :class:`~streamer.core.events.ChangeEvent`.

* :mod:`~streamer.decode.wire`: the wire formats, apart from what they mean: JSON, the Confluent
  Avro registry protocol, Avro writer schemas as Connect schemas.
* :mod:`~streamer.decode.values`: Debezium's and Connect's logical types as Python values.
* :mod:`~streamer.decode.plans`: the decoding plan of one schema (record kind, columns, converters).
* :mod:`~streamer.decode.decoder`: :class:`~streamer.decode.decoder.Decoder`, the façade: detects
  the format, caches plans (per JSON schema prefix, per Avro schema id), and interprets the
  envelope (full, flattened by ``ExtractNewRecordState``, schemaless; metadata and positions).
* :mod:`~streamer.decode.pgtypes`: PostgreSQL's text output of each type as the same Python values
  (the pgoutput source and the loader read it).
"""

from streamer.decode.decoder import Decoder, MissingPositionError
from streamer.decode.wire import SchemaRegistryUnavailableError, parse_json

__all__ = ["Decoder", "MissingPositionError", "SchemaRegistryUnavailableError", "parse_json"]
