"""Decoding plans: one per value schema, built once and reused for every record of that schema.

A plan knows the record's kind (Debezium envelope, a row flattened by ``ExtractNewRecordState``,
anything else), the row struct's columns as :class:`~streamer.core.events.ColumnType`, and for
each field the converter of :mod:`streamer.decode.values` it needs. The envelope's meaning (ops,
positions, metadata fields) is read in :mod:`streamer.decode.decoder` with these plans.
"""

from __future__ import annotations

import binascii
import uuid
from collections.abc import Iterable, Mapping
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Final

import orjson

from streamer.core.errors import DecodeError
from streamer.core.events import (
    UNAVAILABLE,
    ColumnType,
    RecordKind,
)
from streamer.decode.values import (
    _BINARY_SOURCE_TYPES,
    _CONNECT,
    _DBZ_DATA,
    _DBZ_TIME,
    _DECIMAL_SPECIAL,
    _KNOWN_STRUCTS,
    _NUMERIC_SOURCE_TYPES,
    _STRING_PASSTHROUGH,
    _WIDE,
    BITS,
    CONNECT_DATE,
    CONNECT_DECIMAL,
    CONNECT_TIME,
    CONNECT_TIMESTAMP,
    DATE,
    DOUBLE_VECTOR,
    FLOAT_VECTOR,
    ISO_DATE,
    ISO_TIME,
    ISO_TIMESTAMP,
    JSON,
    MICRO_DURATION,
    MICRO_TIME,
    MICRO_TIMESTAMP,
    NANO_DURATION,
    NANO_TIME,
    NANO_TIMESTAMP,
    SOURCE_TYPE_PARAM,
    TIME,
    TIMESTAMP,
    UUID,
    VARIABLE_SCALE_DECIMAL,
    YEAR,
    ZONED_TIME,
    ZONED_TIMESTAMP,
    BinaryHandlingMode,
    Converter,
    _BadValue,
    _bits_to_str,
    _connect_type,
    _date_days,
    _duration_ns,
    _duration_us,
    _float32,
    _iso_date,
    _iso_time,
    _iso_timestamp,
    _java_name_uuid,
    _time_ms,
    _time_ns,
    _time_us,
    _timestamp_ms,
    _timestamp_ns,
    _timestamp_us,
    _unscaled_decimal,
    _zoned_time,
    _zoned_timestamp,
)

# --- plans -----------------------------------------------------------------------------------


class _StructPlan:
    """Converts one struct (dict) in place: a converter per field that needs one."""

    __slots__ = ("columns", "convs", "names", "ph_fields", "placeholder")

    def __init__(
        self,
        names: tuple[str, ...],
        convs: tuple[tuple[str, Converter], ...],
        ph_fields: tuple[str, ...],
        placeholder: str | None,
        columns: Mapping[str, ColumnType],
    ) -> None:
        self.names = names
        self.convs = convs
        self.ph_fields = ph_fields
        self.placeholder = placeholder
        self.columns = columns

    def convert(self, row: dict[str, Any]) -> dict[str, Any]:
        name = ""
        try:
            for name, conv in self.convs:
                value = row[name]
                if value is not None:
                    row[name] = conv(value)
            placeholder = self.placeholder
            for name in self.ph_fields:
                if row[name] == placeholder:
                    row[name] = UNAVAILABLE
        except _BadValue as exc:
            raise DecodeError(f"column {name!r}: {exc}") from exc
        except KeyError as exc:
            raise DecodeError(f"column {name!r}: missing field {exc} in the payload") from exc
        except (ValueError, TypeError, ArithmeticError, AttributeError, IndexError) as exc:
            raise DecodeError(
                f"column {name!r}: value does not fit its schema ({type(exc).__name__}: {exc})"
            ) from exc
        return row


_KIND_ENVELOPE: Final = "envelope"
_KIND_FLATTENED: Final = "flattened"
_KIND_OTHER: Final = "other"


class _SchemaPlan:
    """Everything precomputed for one record schema (a key's or a value's)."""

    __slots__ = ("fields", "key_columns", "kind", "meta", "name", "other_kind", "row", "row_columns")

    def __init__(self) -> None:
        self.name: str | None = None
        self.kind: str = _KIND_OTHER
        self.other_kind: RecordKind | None = None
        self.fields: _StructPlan | None = None  # the whole struct (keys, flattened rows)
        self.row: _StructPlan | None = None  # before/after of an envelope
        self.row_columns: Mapping[str, ColumnType] = MappingProxyType({})
        self.key_columns: tuple[str, ...] = ()
        self.meta: tuple[tuple[str, str, str], ...] = ()  # flattened: (field, group, name)


class _PlanBuilder:
    """Builds converters from Connect schemas (JSON converter form; Avro is translated to it)."""

    def __init__(
        self,
        *,
        binary: bool,
        placeholder: str | None,
        binary_handling_mode: BinaryHandlingMode,
        passthrough: frozenset[str],
    ) -> None:
        self.binary = binary
        self.placeholder = placeholder
        self.binary_mode = binary_handling_mode
        self.passthrough = passthrough
        ph = placeholder
        if ph is not None:
            ph_bytes = ph.encode()
            self.ph_bytes: bytes | None = ph_bytes
            self.ph_b64: str | None = binascii.b2a_base64(ph_bytes, newline=False).decode()
            self.ph_b64url: str | None = self.ph_b64.replace("+", "-").replace("/", "_")
            self.ph_hex: str | None = ph_bytes.hex()
            self.ph_json_map: str | None = orjson.dumps({ph: ph}).decode()
            raw_elem: Any = ph_bytes if binary else self.ph_b64
            self.ph_arrays: tuple[list[Any], ...] = (
                [ph],
                [raw_elem],
                list(ph_bytes),
                [_java_name_uuid(ph_bytes)],
            )
            self.ph_map: dict[str, str] | None = {ph: ph}
        else:
            self.ph_bytes = self.ph_b64 = self.ph_b64url = self.ph_hex = self.ph_json_map = None
            self.ph_arrays = ()
            self.ph_map = None

    # -- column types --

    def column_type(self, schema: Mapping[str, Any]) -> ColumnType:
        base = _connect_type(schema)
        params = schema.get("parameters") or {}
        items = schema.get("items") if base == "array" else None
        return ColumnType(
            base=base,
            logical=schema.get("name"),
            optional=bool(schema.get("optional", False)),
            params=MappingProxyType({str(k): str(v) for k, v in params.items()}),
            items=self.column_type(items) if isinstance(items, Mapping) else None,
        )

    # -- structs --

    def struct(self, schema: Mapping[str, Any], exclude: Iterable[str] = ()) -> _StructPlan:
        skip = frozenset(exclude)
        fields = schema.get("fields")
        if not isinstance(fields, list):
            raise DecodeError(f"struct schema {schema.get('name')!r} has no field list")
        names: list[str] = []
        convs: list[tuple[str, Converter]] = []
        ph_fields: list[str] = []
        columns: dict[str, ColumnType] = {}
        for f in fields:
            name = f.get("field")
            if not isinstance(name, str):
                raise DecodeError(f"struct schema {schema.get('name')!r} has a field without a name")
            if name in skip:
                continue
            names.append(name)
            columns[name] = self.column_type(f)
            try:
                conv, ph_only = self.field(f, top=True)
            except DecodeError as exc:
                raise DecodeError(f"column {name!r}: {exc.reason}") from exc
            if conv is not None:
                convs.append((name, conv))
            elif ph_only:
                ph_fields.append(name)
        return _StructPlan(
            tuple(names), tuple(convs), tuple(ph_fields), self.placeholder, MappingProxyType(columns)
        )

    # -- fields --

    def field(self, schema: Mapping[str, Any], *, top: bool) -> tuple[Converter | None, bool]:
        """A field's converter, or ``(None, ph_only)``: ``ph_only`` when only the TOAST check is needed."""
        stype = _connect_type(schema)
        name = schema.get("name")
        params: Mapping[str, Any] = schema.get("parameters") or {}
        ph = self.placeholder if top else None
        binary = self.binary

        if name is not None and name in self.passthrough:
            return None, (ph is not None and stype == "string")

        if name is not None:
            logical = self._logical(str(name), stype, schema, params, top=top)
            if logical is not None:
                return logical

        if stype in ("int8", "int16", "int32", "int64", "boolean"):
            return None, False
        if stype == "float64":
            return (None, False) if binary else (float, False)
        if stype == "float32":
            return _float32, False
        if stype == "string":
            return self._string(params, ph)
        if stype == "bytes":
            return self._bytes(ph), False
        if stype == "array":
            return self._array(schema, ph), False
        if stype == "map":
            return self._map(schema, ph), False
        if stype == "struct":
            return self.struct(schema).convert, False
        raise DecodeError(f"unknown Connect type {stype!r}")

    def _logical(
        self, name: str, stype: Any, schema: Mapping[str, Any], params: Mapping[str, Any], *, top: bool
    ) -> tuple[Converter | None, bool] | None:
        """The converter of a named (logical) type; ``None`` when the name is no logical type."""
        ph = self.placeholder if top else None
        if name in (DATE, CONNECT_DATE):
            return _date_days, False
        if name in (MICRO_TIMESTAMP,):
            return _timestamp_us, False
        if name in (TIMESTAMP, CONNECT_TIMESTAMP):
            return _timestamp_ms, False
        if name == NANO_TIMESTAMP:
            return _timestamp_ns, False
        if name == MICRO_TIME:
            return _time_us, False
        if name in (TIME, CONNECT_TIME):
            return _time_ms, False
        if name == NANO_TIME:
            return _time_ns, False
        if name == ZONED_TIMESTAMP:
            return _zoned_timestamp, False
        if name == ZONED_TIME:
            return _zoned_time, False
        if name == ISO_TIMESTAMP:
            return _iso_timestamp, False
        if name == ISO_TIME:
            return _iso_time, False
        if name == ISO_DATE:
            return _iso_date, False
        if name == MICRO_DURATION:
            return _duration_us, False
        if name == NANO_DURATION:
            return _duration_ns, False
        if name == YEAR:
            return None, False
        if name == CONNECT_DECIMAL:
            return self._decimal(params), False
        if name == VARIABLE_SCALE_DECIMAL:
            return self._variable_scale_decimal(), False
        if name == UUID:
            return self._uuid(ph), False
        if name == JSON:
            return self._json(ph), False
        if name == BITS:
            return self._bits(params), False
        if name in _STRING_PASSTHROUGH:
            return None, ph is not None
        if name in (DOUBLE_VECTOR, FLOAT_VECTOR):
            return self._array(schema, None), False
        if name in _KNOWN_STRUCTS:  # geometry, sparse vectors: plain structs
            return None
        # a name we do not know
        if stype == "struct":
            if name.startswith((_DBZ_TIME, _DBZ_DATA, _CONNECT)):
                raise DecodeError(f"unknown logical type {name!r} (struct)")
            return None  # a record's own name (Value, Key, Source, ...)
        if stype == "string":
            return None
        raise DecodeError(
            f"unknown logical type {name!r} on {stype}; list it in passthrough_logical_types "
            "to take its values as they are"
        )

    def _string(self, params: Mapping[str, Any], ph: str | None) -> tuple[Converter | None, bool]:
        source_type = str(params.get(SOURCE_TYPE_PARAM, "")).upper()
        if source_type:
            base_type = source_type.split("(")[0].replace(" UNSIGNED", "").strip()
            if base_type in _NUMERIC_SOURCE_TYPES:
                return self._decimal_string(ph), False
            if base_type in _BINARY_SOURCE_TYPES:
                return self._binary_string(source_type), False
        return None, ph is not None

    def _decimal_string(self, ph: str | None) -> Converter:
        special = _DECIMAL_SPECIAL

        def conv(value: str) -> Any:
            if value == ph:
                return UNAVAILABLE
            hit = special.get(value)
            return hit if hit is not None else Decimal(value)

        return conv

    def _binary_string(self, source_type: str) -> Converter:
        mode = self.binary_mode
        ph = self.placeholder
        if mode == "bytes":
            raise DecodeError(
                f"binary column ({source_type}) arrives as a string: the connector uses "
                "binary.handling.mode base64/base64-url-safe/hex; set the decoder's binary_handling_mode to match"
            )
        forms = {f for f in (ph, self.ph_b64, self.ph_b64url, self.ph_hex) if f is not None}

        if mode == "hex":

            def decode(value: str) -> bytes:
                return bytes.fromhex(value)

        elif mode == "base64-url-safe":

            def decode(value: str) -> bytes:
                return binascii.a2b_base64(value.replace("-", "+").replace("_", "/"), strict_mode=True)

        else:

            def decode(value: str) -> bytes:
                return binascii.a2b_base64(value, strict_mode=True)

        def conv(value: str) -> Any:
            if value in forms:
                return UNAVAILABLE
            return decode(value)

        return conv

    def _bytes(self, ph: str | None) -> Converter:
        if self.binary:
            if ph is None:
                return bytes
            ph_bytes = self.ph_bytes

            def conv_avro(value: bytes) -> Any:
                return UNAVAILABLE if value == ph_bytes else value

            return conv_avro
        ph_b64 = self.ph_b64 if ph is not None else None

        def conv_json(value: str) -> Any:
            if value == ph_b64:
                return UNAVAILABLE
            return binascii.a2b_base64(value, strict_mode=True)

        return conv_json

    def _raw_bytes(self) -> Converter:
        """bytes of a value inside a logical type (no TOAST check)."""
        if self.binary:
            return bytes
        return _b64decode

    def _decimal(self, params: Mapping[str, Any]) -> Converter:
        try:
            scale = int(params.get("scale", 0))
        except (TypeError, ValueError):
            raise DecodeError(f"Decimal with a bad scale parameter {params.get('scale')!r}") from None
        exponent = f"E{-scale}"
        quantum = Decimal(f"1{exponent}")
        from_bytes = int.from_bytes

        if self.binary:

            def conv_avro(value: bytes) -> Decimal:
                return Decimal(f"{from_bytes(value, 'big', signed=True)}{exponent}")

            return conv_avro

        def conv_json(value: Any) -> Decimal:
            if value.__class__ is str:
                raw = binascii.a2b_base64(value, strict_mode=True)
                return Decimal(f"{from_bytes(raw, 'big', signed=True)}{exponent}")
            if value.__class__ is int:  # decimal.format=NUMERIC
                return Decimal(f"{value * 10**scale}{exponent}") if scale >= 0 else Decimal(value)
            if value.__class__ is float:
                return Decimal(repr(value)).quantize(quantum, context=_WIDE)
            raise _BadValue(f"Decimal value must be base64 text or a number, not {type(value).__name__}")

        return conv_json

    def _variable_scale_decimal(self) -> Converter:
        raw_bytes = self._raw_bytes()
        from_bytes = int.from_bytes

        def conv(value: Mapping[str, Any]) -> Decimal:
            unscaled = from_bytes(raw_bytes(value["value"]), "big", signed=True)
            return _unscaled_decimal(unscaled, int(value["scale"]))

        return conv

    def _uuid(self, ph: str | None) -> Converter:
        make = uuid.UUID

        def conv(value: str) -> Any:
            if value == ph:
                return UNAVAILABLE
            return make(value)

        return conv

    def _json(self, ph: str | None) -> Converter | None:
        if ph is None:
            return None
        forms = (ph, self.ph_json_map)

        def conv(value: str) -> Any:
            return UNAVAILABLE if value in forms else value

        return conv

    def _bits(self, params: Mapping[str, Any]) -> Converter:
        raw_bytes = self._raw_bytes()
        try:
            width = int(params.get("length", 0))
        except (TypeError, ValueError):
            width = 0
        source_type = str(params.get(SOURCE_TYPE_PARAM, "")).upper()
        if "VAR" in source_type or width > 65536:
            width = 0

        def conv(value: Any) -> str:
            return _bits_to_str(raw_bytes(value), width)

        return conv

    def _array(self, schema: Mapping[str, Any], ph: str | None) -> Converter:
        items = schema.get("items")
        if not isinstance(items, Mapping):
            raise DecodeError("array schema without items")
        source_type = str((schema.get("parameters") or {}).get(SOURCE_TYPE_PARAM, ""))
        item_params = items.get("parameters") or {}
        if source_type.startswith("_") and SOURCE_TYPE_PARAM not in item_params:
            # PostgreSQL names array types after their element: _NUMERIC, _BYTEA, ...
            items = {**items, "parameters": {**item_params, SOURCE_TYPE_PARAM: source_type[1:]}}
        elem, _ = self.field(items, top=False)
        ph_arrays = self.ph_arrays if ph is not None else ()
        lengths = {len(a) for a in ph_arrays}

        def conv(value: list[Any]) -> Any:
            if len(value) in lengths and value in ph_arrays:
                return UNAVAILABLE
            if elem is None:
                return value
            return [None if x is None else elem(x) for x in value]

        return conv

    def _map(self, schema: Mapping[str, Any], ph: str | None) -> Converter:
        keys = schema.get("keys") or {"type": "string"}
        values = schema.get("values")
        if not isinstance(values, Mapping):
            raise DecodeError("map schema without values")
        kconv, _ = self.field(keys, top=False)
        vconv, _ = self.field(values, top=False)
        ph_map = self.ph_map if ph is not None else None
        binary = self.binary

        def conv(value: Any) -> Any:
            if isinstance(value, dict):
                if value == ph_map:
                    return UNAVAILABLE
                pairs: Iterable[tuple[Any, Any]] = value.items()
            elif binary:  # Avro: array of {"key", "value"} records
                pairs = ((e["key"], e["value"]) for e in value)
            else:  # JSON converter: array of [key, value] pairs
                pairs = ((e[0], e[1]) for e in value)
            out: dict[Any, Any] = {}
            for k, v in pairs:
                if kconv is not None and k is not None:
                    k = kconv(k)
                if vconv is not None and v is not None:
                    v = vconv(v)
                out[k] = v
            return out

        return conv


def _b64decode(value: str) -> bytes:
    return binascii.a2b_base64(value, strict_mode=True)
