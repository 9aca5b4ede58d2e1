"""The wire formats a record's key and value come in, apart from what they mean.

* JSON (``JsonConverter``, with or without schemas): :func:`parse_json` (orjson).
* Confluent Avro: the registry client's protocol (:class:`SchemaRegistry`), the error for a
  registry that cannot be reached (:class:`SchemaRegistryUnavailableError`: the record is fine,
  retry later) and the translation of an Avro writer schema into the Connect schema the plans
  of :mod:`streamer.decode.plans` are built from (:func:`_avro_to_connect`). The per-id cache of
  writer schemas and plans lives in :class:`~streamer.decode.decoder.Decoder`.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Final, Protocol

import orjson

from streamer.core.errors import DecodeError, StreamerError
from streamer.decode.values import (
    CONNECT_DATE,
    CONNECT_DECIMAL,
    CONNECT_TIME,
    CONNECT_TIMESTAMP,
    MICRO_TIME,
    MICRO_TIMESTAMP,
    UUID,
)


class SchemaRegistry(Protocol):
    """What the decoder needs of a schema registry client (``SchemaRegistryClient`` fits)."""

    def get_schema(self, schema_id: int) -> Any: ...


class SchemaRegistryUnavailableError(StreamerError):
    """The schema registry could not be asked for a schema (down, timeout, auth).

    Not a :class:`DecodeError`: the record may be fine, so it must be retried, not dead-lettered.
    """


def parse_json(text: str | bytes) -> Any:
    """Parse the text of an ``io.debezium.data.Json`` value (kept as text by the decoder)."""
    return orjson.loads(text)


# --- Avro schema -> Connect schema -------------------------------------------------------------

_AVRO_PRIMITIVES: Final = MappingProxyType(
    {
        "null": "null",
        "boolean": "boolean",
        "int": "int32",
        "long": "int64",
        "float": "float32",
        "double": "float64",
        "bytes": "bytes",
        "string": "string",
    }
)
_AVRO_LOGICAL_TO_CONNECT: Final = MappingProxyType(
    {
        "date": CONNECT_DATE,
        "time-millis": CONNECT_TIME,
        "timestamp-millis": CONNECT_TIMESTAMP,
        "local-timestamp-millis": CONNECT_TIMESTAMP,
        "time-micros": MICRO_TIME,
        "timestamp-micros": MICRO_TIMESTAMP,
        "local-timestamp-micros": MICRO_TIMESTAMP,
        "uuid": UUID,
        "decimal": CONNECT_DECIMAL,
    }
)


def _strip_logical_types(node: Any) -> Any:
    """A copy of an Avro schema without ``logicalType``: fastavro then returns raw values, which
    the plan converts exactly as it does JSON values."""
    if isinstance(node, dict):
        return {k: _strip_logical_types(v) for k, v in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [_strip_logical_types(v) for v in node]
    return node


def _avro_fullname(name: str, namespace: str | None) -> str:
    if "." in name or not namespace:
        return name
    return f"{namespace}.{name}"


def _avro_to_connect(node: Any, named: dict[str, dict[str, Any]], namespace: str | None) -> dict[str, Any]:
    """Translate an Avro schema written by Confluent's AvroConverter back to the Connect schema."""
    if isinstance(node, str):
        base = _AVRO_PRIMITIVES.get(node)
        if base is not None:
            return {"type": base, "optional": False}
        ref = named.get(_avro_fullname(node, namespace)) or named.get(node)
        if ref is None:
            raise DecodeError(f"Avro schema references unknown type {node!r}")
        return dict(ref)
    if isinstance(node, list):
        branches = [b for b in node if b != "null"]
        if len(branches) != 1:
            raise DecodeError(f"Avro union {node!r} is not [null, T]: not written by Debezium's converter")
        branch = dict(_avro_to_connect(branches[0], named, namespace))
        branch["optional"] = len(node) > 1
        return branch
    if not isinstance(node, dict):
        raise DecodeError(f"bad Avro schema node {node!r}")
    atype = node.get("type")
    if isinstance(atype, (dict, list)):
        return _avro_to_connect(atype, named, namespace)
    params = {str(k): str(v) for k, v in (node.get("connect.parameters") or {}).items()}
    cname = node.get("connect.name")
    logical = node.get("logicalType")
    if cname is None and isinstance(logical, str):
        cname = _AVRO_LOGICAL_TO_CONNECT.get(logical)
        if logical == "decimal" and "scale" not in params:
            params["scale"] = str(node.get("scale", 0))
    if cname == CONNECT_DECIMAL and "scale" not in params and "scale" in node:
        params["scale"] = str(node["scale"])
    out: dict[str, Any]
    if atype == "record":
        ns = node.get("namespace", namespace)
        full = _avro_fullname(str(node["name"]), ns)
        if "." in str(node["name"]):
            ns = str(node["name"]).rsplit(".", 1)[0]
        out = {"type": "struct", "optional": False, "name": cname or full}
        named[full] = out  # before the fields: a record may refer to itself
        out["fields"] = [
            dict(_avro_to_connect(f["type"], named, ns), field=f["name"]) for f in node.get("fields", [])
        ]
    elif atype == "enum":
        full = _avro_fullname(str(node["name"]), node.get("namespace", namespace))
        out = {"type": "string", "optional": False}
        if cname:
            out["name"] = cname
        named[full] = out
    elif atype == "fixed":
        full = _avro_fullname(str(node["name"]), node.get("namespace", namespace))
        out = {"type": "bytes", "optional": False}
        if cname:
            out["name"] = cname
        named[full] = out
    elif atype == "array":
        items = _avro_to_connect(node["items"], named, namespace)
        if items.get("type") == "struct" and items.get("name") == "io.confluent.connect.avro.MapEntry":
            key, value = items["fields"][0], items["fields"][1]
            out = {"type": "map", "optional": False, "keys": key, "values": value}
        else:
            out = {"type": "array", "optional": False, "items": items}
    elif atype == "map":
        out = {
            "type": "map",
            "optional": False,
            "keys": {"type": "string", "optional": False},
            "values": _avro_to_connect(node["values"], named, namespace),
        }
    elif isinstance(atype, str) and atype in _AVRO_PRIMITIVES:
        base = node.get("connect.type") or _AVRO_PRIMITIVES[atype]
        out = {"type": base, "optional": False}
    elif isinstance(atype, str):
        return _avro_to_connect(atype, named, namespace)
    else:
        raise DecodeError(f"bad Avro schema node {node!r}")
    if cname and atype != "record":
        out["name"] = cname
    if params:
        out["parameters"] = params
    return out
