"""Decoding Debezium records (JSON or Confluent Avro) into :class:`~streamer.core.events.ChangeEvent`.

One :class:`Decoder` turns any record Debezium puts on Kafka into a
:class:`~streamer.core.events.ChangeEvent` (a row change) or an
:class:`~streamer.core.events.OtherRecord` (tombstone, heartbeat, schema change, transaction
metadata, logical decoding message). Anything it cannot decode raises
:class:`~streamer.core.errors.DecodeError` carrying topic, partition, offset and the reason; nothing
is dropped or guessed silently.

Input formats (detected per record, key and value independently)
-----------------------------------------------------------------
* **Confluent Avro wire format**: byte 0 is the magic byte ``0``, bytes 1-4 the big-endian
  schema id, the rest the Avro body. The writer schema is fetched once per id from the
  registry (any object with ``get_schema(schema_id)`` returning something with
  ``schema_str``/``schema_type``, e.g. ``confluent_kafka.schema_registry.SchemaRegistryClient``),
  parsed with ``fastavro.parse_schema`` and cached per id with its decoding plan. A registry
  answering 404 is a :class:`DecodeError` (unknown schema id); any other registry failure
  raises :class:`SchemaRegistryUnavailableError`, which is *not* a decode error: the record
  is fine, retry later instead of dead-lettering it.
* **JSON** (``org.apache.kafka.connect.json.JsonConverter``): ``{"schema": ..., "payload": ...}``
  when ``schemas.enable=true``, the bare payload otherwise. Any other first byte is a
  :class:`DecodeError` ("bad magic byte").

Record kinds
------------
* value ``None`` (or JSON ``null``/``{"schema":null,"payload":null}``): ``TOMBSTONE``; its
  payload is the decoded key (column -> value), or ``None`` without a key. With
  ``ExtractNewRecordState`` and ``delete.tombstone.handling.mode=tombstone`` the tombstone
  is the only trace of a delete: the consumer decides what to do with it.
* topic starting with ``heartbeat_topic_prefix`` (``__debezium-heartbeat``), or value schema
  ``io.debezium.connector.common.Heartbeat``: ``HEARTBEAT``.
* value schema ``io.debezium.connector.<x>.SchemaChangeValue`` (or, without schemas, a payload
  with ``ddl``/``tableChanges`` and no ``op``): ``SCHEMA_CHANGE``.
* value schema ``io.debezium.connector.common.TransactionMetadataValue`` (or a payload with
  ``status`` BEGIN/END and ``id`` and no ``op``): ``TRANSACTION``.
* envelope with ``op`` ``m`` (PostgreSQL ``pg_logical_emit_message``): ``MESSAGE``.
* envelope (``op``, ``source``, ``before``/``after``) with ``op`` c/u/d/r/t: a ``ChangeEvent``.
* a struct flattened by ``io.debezium.transforms.ExtractNewRecordState``: a ``ChangeEvent``.
  Recognized by its schema name ``<topic>.Value`` or by at least one metadata field (name
  starting with ``flattened_field_prefix``, ``__``). ``add.fields`` metadata is read back:
  ``__op``, ``__deleted`` (string ``"true"``/``"false"`` as Debezium writes it, or boolean),
  ``__ts_ms``/``__ts_us``/``__ts_ns`` (envelope), ``__source_<f>`` or bare ``__<f>`` (source
  field ``f``: ``__lsn``, ``__table``, ``__db``, ``__schema``, ``__txId``, ...),
  ``__transaction_<f>``/``__id`` (transaction block); the same names are also looked up in the
  record headers (``add.headers``). Metadata fields are removed from the row. ``__deleted``
  true is a delete (the row goes to ``before``), otherwise ``__op`` gives the operation and
  the row goes to ``after``; **without ``__op`` a flattened record is an upsert and is given
  as ``Op.UPDATE``** with ``before=None``. The table comes from ``__db``/``__schema``/``__table``
  (or ``__source_*``) and else from the topic (``<prefix>.<schema>.<table>``; without a MySQL
  hint, ``__file``/``__pos``/``__connector``, the middle part is taken as the schema).
  Use ``add.fields=op,lsn,source.ts_ms,db,schema,table`` to carry everything; ``lsn`` (MySQL:
  ``file,pos,row``) is required, see ``position`` below.
* any other JSON/struct: :class:`DecodeError` ("not a Debezium envelope").

Events
------
* ``key``/``key_columns``: from the record key, in the key's field order. A change without a
  key (table without primary key, truncate) has ``key == {}`` and ``key_columns == ()``.
* ``columns``: from the value schema's row struct (``after``, else ``before``), as
  :class:`~streamer.core.events.ColumnType` (``base`` is the Connect type, for Avro the Connect type
  the AvroConverter recorded: ``connect.type``/``connect.name``/``connect.parameters``).
* ``position``: PostgreSQL ``version=pg_version(lsn)``, ``commit_lsn`` from the first element of
  ``sequence`` (Debezium's "last committed LSN"); MySQL/MariaDB
  ``version=mysql_version(<binlog file number>, pos, row)`` and ``gtid``; ``snapshot`` is true
  for every ``source.snapshot`` value except ``false``/missing (snapshot rows carry the LSN or
  binlog coordinates of their snapshot too). **A row change without a log position** (a source
  block with neither ``lsn`` nor ``file``/``pos``, a flattened record without ``__lsn`` or
  ``__file``/``__pos``) **is refused with** :class:`MissingPositionError`, whose message names the
  setting that adds it (``ExtractNewRecordState``'s ``add.fields=lsn``, or ``file,pos,row``):
  with an empty version the sink's guard could not order the change and would drop the later
  changes of its key. No ``ChangeEvent`` ever has an empty version.
* ``txid``: PostgreSQL ``txId``, MySQL ``gtid``, else the transaction block's ``id``.
* ``source_ts`` from ``source.ts_us`` (else ``ts_ms``, ``ts_ns``), ``event_ts`` from the
  envelope's ``ts_us`` (else ``ts_ms``, ``ts_ns``); both aware, UTC.

Value representations (identical for JSON and Avro)
-----------------------------------------------------
=============================================  ================================================
schema                                           Python value
=============================================  ================================================
int8/16/32/64, boolean, string                   int, bool, str
float64                                          float (JSON ``"NaN"``/``"Infinity"`` strings too).
                                                 ``decimal.handling.mode=double`` therefore loses
                                                 precision before we see it.
float32                                          float, the shortest decimal that round-trips
                                                 through float32 (``real '1.1'`` -> ``1.1`` from
                                                 JSON and Avro alike, as PostgreSQL prints it)
bytes                                            bytes (base64 in JSON)
``io.debezium.time.Date``, Connect ``Date``      ``date``
``Time`` (ms), ``MicroTime``, ``NanoTime``,      ``time`` (naive); exactly 24:00:00 gives
Connect ``Time``                                 :data:`~streamer.core.events.TIME_24_00`; values
                                                 outside 00:00-24:00 (MySQL ``TIME`` is a
                                                 duration) give ``timedelta``
``Timestamp`` (ms), ``MicroTimestamp``,          naive ``datetime``: the column has no zone
``NanoTimestamp``, Connect ``Timestamp``         (Debezium encodes the wall-clock value as if UTC)
``ZonedTimestamp``                               aware ``datetime`` (offset as sent, UTC from
                                                 Debezium's PostgreSQL connector)
``ZonedTime``                                    aware ``time``
``IsoDate``/``IsoTime``/``IsoTimestamp``         ``date``/naive ``time``/naive ``datetime``
(``time.precision.mode=isostring``)              (the wall-clock value Debezium wrote as UTC)
``MicroDuration``, ``NanoDuration``              ``timedelta``. Debezium counts a month as 30.4375
                                                 days (PostgreSQL and psycopg2: 30), so intervals
                                                 with months are approximate: use
                                                 ``interval.handling.mode=string`` to be exact
``io.debezium.time.Interval`` (string mode)      ``str``, kept as sent (ISO 8601
                                                 ``P1Y2M3DT4H5M6.78S``, which PostgreSQL accepts)
``io.debezium.time.Year``                        int
Connect ``Decimal`` (bytes, ``scale``)           ``Decimal``, exact (digits and exponent kept). A
                                                 JSON number (converter ``decimal.format=NUMERIC``)
                                                 is accepted; an integral one is exact, a
                                                 fractional one is only as exact as a double
``VariableScaleDecimal`` (struct)                ``Decimal``, exact. It cannot carry NaN:
                                                 Debezium fails the connector on a NaN numeric
                                                 unless ``decimal.handling.mode`` is string/double
string with source type NUMERIC/DECIMAL/MONEY    ``Decimal``; ``NAN``/``NaN``/``POSITIVE_INFINITY``
(``decimal.handling.mode=string``)               /``Infinity``/... give ``Decimal('NaN')``,
                                                 ``Decimal('Infinity')``, ... The source type is
                                                 only known with ``column.propagate.source.type``
                                                 (or ``datatype.propagate.source.type``);
                                                 without it such a column stays ``str``
``io.debezium.data.Json``                        ``str``, the JSON text exactly as sent (the
                                                 writer puts it in json/jsonb columns);
                                                 :func:`parse_json` parses it
``Uuid``                                         ``uuid.UUID``
``Enum``, ``EnumSet``, ``Xml``, ``Ltree``        ``str`` (EnumSet: the comma-separated list)
``Bits`` (bytes, little-endian, ``length``)      ``str`` of ``'0'``/``'1'``, most significant bit
                                                 first, as PostgreSQL prints ``bit(n)``; padded to
                                                 ``length``. Debezium sends only the integer, so
                                                 for ``bit varying`` (source type ``VARBIT``, no
                                                 padding) leading zeros are lost
string with a binary source type (BYTEA,         ``bytes``, decoded per the decoder's
BINARY, VARBINARY, *BLOB)                        ``binary_handling_mode`` (the connector's
                                                 ``binary.handling.mode``: base64,
                                                 base64-url-safe, hex). Without the source type
                                                 such a column stays ``str``; with it and mode
                                                 ``bytes`` it is a :class:`DecodeError`
array                                            ``list``, element types applied
map                                              ``dict`` (JSON pairs / Avro key-value records
                                                 for non-string keys)
``geometry.Geometry``/``Geography``/``Point``,   ``dict`` of the struct's fields (``wkb`` as
other structs                                    bytes)
``DoubleVector``/``FloatVector``                 ``list`` of float
=============================================  ================================================

PostgreSQL special values (checked against the real connector by
``tests/integration/test_decode_pg_types.py``): Debezium 3.1 sends ``'infinity'``/``'-infinity'`` timestamps as
``9223372036825200000``/``-9223372036832400000`` (µs; ``…5200``/``…2400`` in ms: PGJDBC's
``DATE_POSITIVE/NEGATIVE_INFINITY``), and dates as epoch days that are no real date - observed
with the real connector: ``-2147472692``/``-2147472691`` when streamed (pgoutput), and
``-622191234``/``-625821272`` when read by the snapshot (JDBC; derived from the JVM's calendar,
seen with a UTC JVM). ``Long.MAX_VALUE``/``MIN_VALUE`` (and ``Integer`` for dates) are accepted
too. They become
:data:`~streamer.core.events.TIMESTAMP_INFINITY`, :data:`~streamer.core.events.DATE_NEG_INFINITY` etc.:
``datetime.max``/``min`` of a marker subclass, so a PostgreSQL writer can write ``'infinity'``
back. ``ZonedTimestamp`` ``"infinity"``/``"-infinity"`` give ``TIMESTAMPTZ_[NEG_]INFINITY``.
Any other value outside Python's range (before year 1, after 9999) is a :class:`DecodeError`.
Sub-microsecond digits (``Nano*``) are truncated: Python's types stop at microseconds.

Unchanged TOAST columns: the placeholder (``unavailable_placeholder``, default
``__debezium_unavailable_value``) in every form Debezium's PostgreSQL connector sends it -
the string, its UTF-8 bytes (base64 ``X19kZWJleml1bV91bmF2YWlsYWJsZV92YWx1ZQ==`` in JSON), a
one-element array of either, an int/bigint array of the placeholder's bytes, a one-element
uuid array of ``UUID.nameUUIDFromBytes(placeholder)``, and the hstore map/JSON
``{placeholder: placeholder}`` - decodes to :data:`~streamer.core.events.UNAVAILABLE`. A real value
equal to one of these forms is indistinguishable from it (Debezium's convention).

Logical types we do not know: a Connect name on a *string* is passed through (a string is
usable as it is); on any other type it is a :class:`DecodeError` ("unknown logical type"),
unless listed in ``passthrough_logical_types``. A struct named in the ``io.debezium.`` or
``org.apache.kafka.connect.`` namespaces that we do not know is an error too; other named
structs decode as dicts.

JSON without schemas carries no types: values are what JSON gives (numbers, strings, lists,
dicts; dates as day counts, timestamps as epoch integers, bytes and Connect decimals as base64
text), only the TOAST placeholder forms are recognized, and ``columns`` holds the base type
guessed from the values (``int64``, ``float64``, ``string``, ``boolean``, ``array``, ``struct``,
``unknown`` when null). Pass ``column_hints`` (table -> column types) to decode such records
exactly; otherwise use schemas (or Avro). With schemaless JSON set
``decimal.handling.mode=string`` so decimals at least arrive as readable text.

Performance: JSON goes through ``orjson``. Decoding plans (one converter per field, ``None``
for fields that need none) are built once per schema and cached per decoder: Avro per schema
id, JSON per the raw bytes of the ``"schema"`` member. For JSON with schemas the record is
split at the first ``,"payload":`` - the split is verified (the schema text must parse to the
schema) the first time a schema text is seen, and a JSON value is self-delimiting, so any later
record starting with the same bytes has the same schema - and only the payload is parsed.
The decoder is not thread-safe; use one per consumer thread.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final

import orjson
from fastavro import parse_schema, schemaless_reader

from streamer.core.checkpoint import KafkaOrigin
from streamer.core.errors import DecodeError
from streamer.core.events import (
    UNAVAILABLE,
    ChangeEvent,
    ColumnType,
    Decoded,
    Op,
    OtherRecord,
    RecordKind,
    SourcePosition,
    TableId,
    mysql_version,
    pg_version,
    read_version,
)
from streamer.decode.plans import (
    _KIND_ENVELOPE,
    _KIND_FLATTENED,
    _KIND_OTHER,
    _PlanBuilder,
    _SchemaPlan,
    _StructPlan,
)
from streamer.decode.values import (
    _EPOCH_UTC,
    _OPS,
    _SNAPSHOT_FALSE,
    HEARTBEAT_SCHEMA,
    SCHEMA_CHANGE_SUFFIX,
    TRANSACTION_SCHEMA,
    BinaryHandlingMode,
    _new_change_event,
    _new_origin,
    _new_position,
    _timedelta,
)
from streamer.decode.wire import (
    SchemaRegistry,
    SchemaRegistryUnavailableError,
    _avro_to_connect,
    _strip_logical_types,
    parse_json,
)

__all__ = [
    "DEFAULT_UNAVAILABLE_PLACEHOLDER",
    "BinaryHandlingMode",
    "Headers",
    "Decoder",
    "SchemaRegistry",
    "SchemaRegistryUnavailableError",
    "parse_json",
]

DEFAULT_UNAVAILABLE_PLACEHOLDER: Final = "__debezium_unavailable_value"
DEFAULT_HEARTBEAT_TOPIC_PREFIX: Final = "__debezium-heartbeat"


Headers = Sequence[tuple[str, str | bytes | None]] | Mapping[str, str | bytes | None] | None
"""Record headers as confluent-kafka's ``Message.headers()`` gives them (list of pairs, or a dict)."""


class MissingPositionError(DecodeError):
    """A row change carries no source log position (no ``lsn``, no binlog ``file``/``pos``).

    Without a position the sink's version guard cannot order the change against others of its key
    (an empty version compares below every other and equal to itself), so later changes would be
    dropped silently; the record is refused instead, and the message names the connector setting
    that adds the position.
    """


# --- the decoder -----------------------------------------------------------------------------


class _AvroEntry:
    __slots__ = ("plan", "schema")

    def __init__(self, schema: Any, plan: _SchemaPlan) -> None:
        self.schema = schema
        self.plan = plan


_FAST_PREFIX: Final = b'{"schema":'
_FAST_SEP: Final = b',"payload":'
_RECENT_SCHEMAS: Final = 8


class Decoder:
    """Decodes Debezium records; keeps per-schema plans (not thread-safe: one per consumer)."""

    def __init__(
        self,
        *,
        schema_registry: SchemaRegistry | None = None,
        unavailable_placeholder: str | None = DEFAULT_UNAVAILABLE_PLACEHOLDER,
        binary_handling_mode: BinaryHandlingMode = "bytes",
        heartbeat_topic_prefix: str = DEFAULT_HEARTBEAT_TOPIC_PREFIX,
        flattened_field_prefix: str = "__",
        passthrough_logical_types: Iterable[str] = (),
        column_hints: Callable[[TableId], Mapping[str, ColumnType] | None] | None = None,
        max_cached_schemas: int = 1024,
    ) -> None:
        self._registry = schema_registry
        self._placeholder = unavailable_placeholder
        self._heartbeat_prefix = heartbeat_topic_prefix
        self._meta_prefix = flattened_field_prefix
        self._column_hints = column_hints
        self._max_cached = max(1, max_cached_schemas)
        passthrough = frozenset(passthrough_logical_types)
        self._json_builder = _PlanBuilder(
            binary=False,
            placeholder=unavailable_placeholder,
            binary_handling_mode=binary_handling_mode,
            passthrough=passthrough,
        )
        self._avro_builder = _PlanBuilder(
            binary=True,
            placeholder=unavailable_placeholder,
            binary_handling_mode=binary_handling_mode,
            passthrough=passthrough,
        )
        self._json_plans: dict[bytes, _SchemaPlan] = {}
        self._recent: list[tuple[bytes, _SchemaPlan]] = []
        self._avro_plans: dict[int, _AvroEntry] = {}
        self._hint_plans: dict[TableId, _StructPlan | None] = {}
        self._tables: dict[tuple[Any, Any, Any], TableId] = {}

    # -- public --

    def decode(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        headers: Headers = None,
    ) -> Decoded:
        """Decode one Kafka record. Raises :class:`DecodeError` with the record's coordinates."""
        try:
            return self._decode(
                _new_origin(topic=topic, partition=partition, offset=offset), key, value, headers
            )
        except DecodeError as exc:
            raise exc.at(topic, partition, offset) from exc.__cause__
        except SchemaRegistryUnavailableError:
            raise
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, ArithmeticError) as exc:
            raise DecodeError(
                f"malformed record ({type(exc).__name__}: {exc})", topic, partition, offset
            ) from exc

    # -- dispatch --

    def _decode(
        self,
        origin: KafkaOrigin,
        key: bytes | None,
        value: bytes | None,
        headers: Headers,
    ) -> Decoded:
        if value is None:
            return self._tombstone(origin, key)
        if origin.topic.startswith(self._heartbeat_prefix):
            plan, payload = self._raw(value)
            return OtherRecord(RecordKind.HEARTBEAT, origin, payload if isinstance(payload, dict) else None)
        plan, payload = self._raw(value)
        if payload is None:
            return self._tombstone(origin, key)
        if plan is None:
            return self._schemaless(origin, key, payload, headers)
        kind = plan.kind
        if kind == _KIND_ENVELOPE:
            return self._envelope(origin, key, plan, payload)
        if kind == _KIND_FLATTENED:
            return self._flattened(origin, key, plan, payload, headers)
        if plan.other_kind is None:
            raise DecodeError(
                f"not a Debezium envelope nor a flattened record: struct {plan.name!r} "
                f"with fields {list(plan.key_columns)[:10]}"
            )
        return OtherRecord(plan.other_kind, origin, payload)

    def _raw(self, data: bytes) -> tuple[_SchemaPlan | None, Any]:
        """(plan, payload) of a key or value; plan ``None`` for JSON without schemas."""
        if not data:
            raise DecodeError("empty record (neither Avro nor JSON)")
        first = data[0]
        if first == 0:
            return self._avro(data)
        if first in b'{["ntf-0123456789 \t\r\n':
            return self._json(data)
        raise DecodeError(f"bad magic byte 0x{first:02x}: neither the Confluent wire format (0x00) nor JSON")

    # -- JSON --

    def _json(self, data: bytes) -> tuple[_SchemaPlan | None, Any]:
        # 1. the schemas seen last: the record starts with ``{"schema":<text>,"payload":``
        #    for a <text> verified before; one memcmp each, no scan, no hashing
        for head, plan in self._recent:
            if data.startswith(head):
                if data.endswith(b"}"):
                    try:
                        return plan, orjson.loads(memoryview(data)[len(head) : -1])
                    except orjson.JSONDecodeError:
                        pass  # not what the prefix promised: take the slow path
                break
        # 2. any schema text verified before: find the split, look the text up
        plans = self._json_plans
        sep = -1
        if data.startswith(_FAST_PREFIX):
            sep = data.find(_FAST_SEP, 10)
            if sep > 0 and data.endswith(b"}"):
                known = plans.get(data[10:sep])
                if known is not None:
                    try:
                        payload = orjson.loads(memoryview(data)[sep + 11 : -1])
                    except orjson.JSONDecodeError:
                        pass
                    else:
                        self._promote(data[: sep + 11], known)
                        return known, payload
        # 3. parse it all
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise DecodeError(f"invalid JSON: {exc}") from exc
        if isinstance(doc, dict) and len(doc) == 2 and "schema" in doc and "payload" in doc:
            schema = doc["schema"]
            payload = doc["payload"]
            if schema is None:
                return None, payload
            if not isinstance(schema, dict):
                raise DecodeError("JSON converter envelope whose schema is not an object")
            skey = orjson.dumps(schema)
            found = plans.get(skey)
            if found is None:
                found = self._plan(schema, self._json_builder)
                self._remember(plans, skey, found)
            plan = found
            if sep > 0 and data.endswith(b"}"):
                # remember the split only once it is proven: the text before ',"payload":' must be
                # this very schema (a JSON value is self-delimiting, so then every record starting
                # with the same bytes has the same schema and the rest is its payload)
                text = data[10:sep]
                try:
                    verified = text == skey or orjson.loads(text) == schema
                except orjson.JSONDecodeError:
                    verified = False
                if verified:
                    self._remember(plans, text, plan)
                    self._promote(data[: sep + 11], plan)
            return plan, payload
        return None, doc

    def _promote(self, head: bytes, plan: _SchemaPlan) -> None:
        recent = self._recent
        if all(h != head for h, _ in recent):
            recent.insert(0, (head, plan))
            del recent[_RECENT_SCHEMAS:]

    def _remember(self, cache: dict[Any, Any], key: Any, plan: Any) -> None:
        if len(cache) >= self._max_cached:
            del cache[next(iter(cache))]
        cache[key] = plan

    # -- Avro --

    def _avro(self, data: bytes) -> tuple[_SchemaPlan, Any]:
        if len(data) < 5:
            raise DecodeError(f"Avro record of {len(data)} bytes: shorter than the 5-byte wire-format header")
        schema_id = int.from_bytes(data[1:5], "big")
        entry = self._avro_plans.get(schema_id)
        if entry is None:
            entry = self._fetch_avro(schema_id)
            self._remember(self._avro_plans, schema_id, entry)
        body = io.BytesIO(data)
        body.seek(5)
        try:
            payload = schemaless_reader(body, entry.schema, None)
        except Exception as exc:  # fastavro raises EOFError, ValueError, IndexError, ... on bad bodies
            raise DecodeError(
                f"Avro body does not match schema id {schema_id} (truncated or corrupt: {type(exc).__name__}: {exc})"
            ) from exc
        if body.tell() != len(data):
            raise DecodeError(
                f"Avro body has {len(data) - body.tell()} bytes left over after reading schema id {schema_id}"
            )
        return entry.plan, payload

    def _fetch_avro(self, schema_id: int) -> _AvroEntry:
        if self._registry is None:
            raise DecodeError(
                f"Avro record (schema id {schema_id}) but the decoder has no schema registry client"
            )
        try:
            registered = self._registry.get_schema(schema_id)
        except Exception as exc:
            status = getattr(exc, "http_status_code", None)
            if status == 404:
                raise DecodeError(f"unknown schema id {schema_id} (registry: {exc})") from exc
            raise SchemaRegistryUnavailableError(
                f"could not fetch schema id {schema_id} from the schema registry: {exc}"
            ) from exc
        if registered is None:
            raise DecodeError(f"unknown schema id {schema_id}")
        schema_type = getattr(registered, "schema_type", "AVRO") or "AVRO"
        if schema_type != "AVRO":
            raise DecodeError(f"schema id {schema_id} is {schema_type}, not AVRO")
        try:
            avro = orjson.loads(registered.schema_str)
            parsed = parse_schema(_strip_logical_types(avro), named_schemas={})
        except Exception as exc:
            raise DecodeError(f"schema id {schema_id} is not a valid Avro schema: {exc}") from exc
        connect = _avro_to_connect(avro, {}, None)
        return _AvroEntry(parsed, self._plan(connect, self._avro_builder))

    # -- plans --

    def _plan(self, schema: Mapping[str, Any], builder: _PlanBuilder) -> _SchemaPlan:
        plan = _SchemaPlan()
        name = schema.get("name")
        plan.name = name if isinstance(name, str) else None
        if schema.get("type") != "struct" or not isinstance(schema.get("fields"), list):
            raise DecodeError(f"record schema is {schema.get('type')!r}, not a struct: not a Debezium record")
        fields = {f.get("field"): f for f in schema["fields"] if isinstance(f, Mapping)}
        plan.key_columns = tuple(str(f) for f in fields)
        # a key and a flattened row are the struct itself
        meta_names = [f for f in fields if isinstance(f, str) and f.startswith(self._meta_prefix)]
        if name == HEARTBEAT_SCHEMA:
            plan.other_kind = RecordKind.HEARTBEAT
        elif name == TRANSACTION_SCHEMA:
            plan.other_kind = RecordKind.TRANSACTION
        elif isinstance(name, str) and name.endswith(SCHEMA_CHANGE_SUFFIX):
            plan.other_kind = RecordKind.SCHEMA_CHANGE
        elif "op" in fields and "source" in fields:
            plan.kind = _KIND_ENVELOPE
            row_schema = fields.get("after") or fields.get("before")
            if row_schema is not None:
                if row_schema.get("type") != "struct":
                    raise DecodeError("envelope whose before/after is not a struct")
                plan.row = builder.struct(row_schema)
                plan.row_columns = plan.row.columns
        elif (isinstance(name, str) and name.endswith(".Value")) or meta_names:
            plan.kind = _KIND_FLATTENED
            plan.meta = tuple(self._meta_field(f) for f in meta_names)
            plan.row_columns = builder.struct(schema, exclude=meta_names).columns
        if plan.kind == _KIND_FLATTENED or (plan.kind == _KIND_OTHER and plan.other_kind is None):
            # converted whole: a flattened row, or a key (any other struct may be one)
            plan.fields = builder.struct(schema)
        return plan

    def _meta_field(self, field: str) -> tuple[str, str, str]:
        name = field[len(self._meta_prefix) :]
        if name == "op" or name == "deleted" or name in ("ts_ms", "ts_us", "ts_ns"):
            return field, "envelope", name
        if name.startswith("source_"):
            return field, "source", name[len("source_") :]
        if name.startswith("transaction_"):
            return field, "transaction", name[len("transaction_") :]
        if name in ("id", "total_order", "data_collection_order"):
            return field, "transaction", name
        return field, "source", name

    # -- records --

    def _tombstone(self, origin: KafkaOrigin, key: bytes | None) -> OtherRecord:
        if key is None:
            return OtherRecord(RecordKind.TOMBSTONE, origin, None)
        key_values, _ = self._key(key)
        return OtherRecord(RecordKind.TOMBSTONE, origin, key_values)

    def _key(self, key: bytes | None) -> tuple[dict[str, Any], tuple[str, ...]]:
        if key is None:
            return {}, ()
        plan, payload = self._raw(key)
        if payload is None:
            return {}, ()
        if not isinstance(payload, dict):
            raise DecodeError(f"record key is {type(payload).__name__}, not a struct")
        if plan is None:
            return payload, tuple(payload)
        if plan.fields is None:
            raise DecodeError("record key schema cannot be decoded")
        return plan.fields.convert(payload), plan.key_columns

    def _envelope(self, origin: KafkaOrigin, key: bytes | None, plan: _SchemaPlan, payload: Any) -> Decoded:
        if not isinstance(payload, dict):
            raise DecodeError("envelope payload is not an object")
        op_code = payload.get("op")
        op = _OPS.get(op_code) if isinstance(op_code, str) else None
        if op is None:
            if op_code == "m":
                return OtherRecord(RecordKind.MESSAGE, origin, payload)
            raise DecodeError(f"unknown operation {op_code!r}")
        row = plan.row
        before = payload.get("before")
        after = payload.get("after")
        partial_before = False
        if row is not None:
            if before is not None:
                try:
                    before = row.convert(before)
                except DecodeError:
                    # REPLICA IDENTITY DEFAULT: a delete's before-image holds only the key; the other
                    # columns are placeholders ("" for a uuid, 0 bytes for a decimal) that need not parse
                    if op is not Op.DELETE:
                        raise
                    before, partial_before = None, True
            if after is not None:
                after = row.convert(after)
        elif before is not None or after is not None:
            raise DecodeError("envelope schema has no before/after struct but the payload has a row")
        source = payload.get("source")
        if not isinstance(source, dict):
            raise DecodeError("envelope without a source block")
        key_values, key_columns = self._key(key) if op is not Op.TRUNCATE else ({}, ())
        if partial_before:
            before = dict(key_values)
        position, txid, source_ts = self._position(source, payload.get("transaction"), read=op is Op.READ)
        return _new_change_event(
            op=op,
            table=self._table(source.get("db"), source.get("schema"), source.get("table"), source, origin),
            key=key_values,
            before=before,
            after=after,
            columns=plan.row_columns,
            key_columns=key_columns,
            position=position,
            txid=txid,
            source_ts=source_ts,
            event_ts=_ts_of(payload),
            origin=origin,
        )

    def _flattened(
        self,
        origin: KafkaOrigin,
        key: bytes | None,
        plan: _SchemaPlan,
        payload: Any,
        headers: Headers,
    ) -> ChangeEvent:
        if not isinstance(payload, dict):
            raise DecodeError("flattened record payload is not an object")
        if plan.fields is None:
            raise DecodeError("flattened record schema cannot be decoded")
        row = plan.fields.convert(payload)
        groups: dict[str, dict[str, Any]] = {"envelope": {}, "source": {}, "transaction": {}}
        for field, group, name in plan.meta:
            groups[group][name] = row.pop(field)
        return self._flattened_event(origin, key, row, plan.row_columns, groups, headers)

    def _flattened_event(
        self,
        origin: KafkaOrigin,
        key: bytes | None,
        row: dict[str, Any],
        columns: Mapping[str, ColumnType],
        groups: dict[str, dict[str, Any]],
        headers: Headers,
        hint: _StructPlan | None = None,
    ) -> ChangeEvent:
        if headers:
            pairs = headers.items() if isinstance(headers, Mapping) else headers
            for hname, hvalue in pairs:
                if hname.startswith(self._meta_prefix) and hvalue is not None:
                    _field, group, name = self._meta_field(hname)
                    groups[group].setdefault(name, _header_value(hvalue))
        envelope, source = groups["envelope"], groups["source"]
        deleted = envelope.get("deleted")
        op_code = envelope.get("op")
        if deleted is True or deleted == "true":
            op = Op.DELETE
        elif op_code is None:
            op = Op.UPDATE  # upsert
        else:
            found = _OPS.get(op_code) if isinstance(op_code, str) else None
            if found is None:
                raise DecodeError(f"unknown operation {op_code!r} in flattened record")
            op = found
        key_values, key_columns = self._key(key)
        if hint is not None and key_values:
            key_values = self._hint_key(key_values, hint)
        transaction = groups["transaction"] or None
        position, txid, source_ts = self._position(source, transaction, flattened=True, read=op is Op.READ)
        return _new_change_event(
            op=op,
            table=self._table(source.get("db"), source.get("schema"), source.get("table"), source, origin),
            key=key_values,
            before=row if op is Op.DELETE else None,
            after=None if op is Op.DELETE else row,
            columns=columns,
            key_columns=key_columns,
            position=position,
            txid=txid,
            source_ts=source_ts,
            event_ts=_ts_of(envelope),
            origin=origin,
        )

    def _schemaless(
        self,
        origin: KafkaOrigin,
        key: bytes | None,
        payload: Any,
        headers: Headers,
    ) -> Decoded:
        if not isinstance(payload, dict):
            raise DecodeError(f"JSON {type(payload).__name__} is not a Debezium envelope")
        if "op" in payload and "source" in payload:
            op_code = payload["op"]
            op = _OPS.get(op_code) if isinstance(op_code, str) else None
            if op is None:
                if op_code == "m":
                    return OtherRecord(RecordKind.MESSAGE, origin, payload)
                raise DecodeError(f"unknown operation {op_code!r}")
            source = payload["source"]
            if not isinstance(source, dict):
                raise DecodeError("envelope without a source block")
            table = self._table(source.get("db"), source.get("schema"), source.get("table"), source, origin)
            before = payload.get("before")
            after = payload.get("after")
            hint = self._hint_plan(table)
            before = self._schemaless_row(before, hint)
            after = self._schemaless_row(after, hint)
            key_values, key_columns = self._key(key) if op is not Op.TRUNCATE else ({}, ())
            if hint is not None and key_values:
                key_values = self._hint_key(key_values, hint)
            position, txid, source_ts = self._position(source, payload.get("transaction"), read=op is Op.READ)
            return _new_change_event(
                op=op,
                table=table,
                key=key_values,
                before=before,
                after=after,
                columns=hint.columns if hint is not None else _guess_columns(before, after),
                key_columns=key_columns,
                position=position,
                txid=txid,
                source_ts=source_ts,
                event_ts=_ts_of(payload),
                origin=origin,
            )
        if "op" not in payload:
            if "ddl" in payload and ("tableChanges" in payload or "databaseName" in payload):
                return OtherRecord(RecordKind.SCHEMA_CHANGE, origin, payload)
            if payload.get("status") in ("BEGIN", "END") and "id" in payload:
                return OtherRecord(RecordKind.TRANSACTION, origin, payload)
            if payload.keys() == {"ts_ms"}:
                return OtherRecord(RecordKind.HEARTBEAT, origin, payload)
        prefix = self._meta_prefix
        meta = [k for k in payload if k.startswith(prefix)]
        if not meta:
            raise DecodeError(
                "JSON is not a Debezium envelope (no op/source) nor a flattened record "
                f"(no {prefix}op/{prefix}deleted/... fields); keys: {sorted(payload)[:10]}"
            )
        groups: dict[str, dict[str, Any]] = {"envelope": {}, "source": {}, "transaction": {}}
        for field in meta:
            _field, group, name = self._meta_field(field)
            groups[group][name] = payload.pop(field)
        source = groups["source"]
        table = self._table(source.get("db"), source.get("schema"), source.get("table"), source, origin)
        hint = self._hint_plan(table)
        row = self._schemaless_row(payload, hint) or {}
        columns = hint.columns if hint is not None else _guess_columns(row, None)
        return self._flattened_event(origin, key, row, columns, groups, headers, hint)

    def _schemaless_row(self, row: Any, hint: _StructPlan | None) -> dict[str, Any] | None:
        if row is None:
            return None
        if not isinstance(row, dict):
            raise DecodeError("before/after is not an object")
        if hint is not None:
            return hint.convert(row)
        ph = self._placeholder
        if ph is None:
            return row
        b64 = self._json_builder.ph_b64
        arrays = self._json_builder.ph_arrays
        for name, value in row.items():
            if value.__class__ is str:
                if value == ph or value == b64:
                    row[name] = UNAVAILABLE
            elif value.__class__ is list and value in arrays:
                row[name] = UNAVAILABLE
        return row

    def _hint_plan(self, table: TableId) -> _StructPlan | None:
        if self._column_hints is None:
            return None
        if table in self._hint_plans:
            return self._hint_plans[table]
        hints = self._column_hints(table)
        plan = None
        if hints:
            schema = {
                "type": "struct",
                "fields": [dict(_column_schema(t), field=n) for n, t in hints.items()],
            }
            plan = self._json_builder.struct(schema)
        self._remember(self._hint_plans, table, plan)
        return plan

    def _hint_key(self, key_values: dict[str, Any], hint: _StructPlan) -> dict[str, Any]:
        convs = dict(hint.convs)
        return {k: (convs[k](v) if k in convs and v is not None else v) for k, v in key_values.items()}

    # -- metadata --

    def _table(
        self, db: Any, schema: Any, table: Any, source: Mapping[str, Any], origin: KafkaOrigin
    ) -> TableId:
        ident = (db, schema, table)
        found = self._tables.get(ident)
        if found is not None:
            return found
        if table is None or (db is None and schema is None):
            parts = origin.topic.split(".")
            if len(parts) >= 2:
                mysql = "file" in source or "pos" in source or source.get("connector") in ("mysql", "mariadb")
                table = table if table is not None else parts[-1]
                if db is None and schema is None:
                    if mysql:
                        db = parts[-2]
                    else:
                        schema = parts[-2]
        if table is None:
            raise DecodeError(f"cannot tell the table of a record on topic {origin.topic!r}")
        found = TableId(
            database=None if db is None else str(db),
            schema=None if schema is None else str(schema),
            table=str(table),
        )
        self._remember(self._tables, ident, found)
        return found

    def _position(
        self, source: Mapping[str, Any], transaction: Any, *, flattened: bool = False, read: bool = False
    ) -> tuple[SourcePosition, str | None, dt.datetime | None]:
        """Position, transaction id and source time of a change; :class:`MissingPositionError` without a position.

        ``read``: the change is a snapshot row, whose version carries the read mark
        (:func:`streamer.core.events.read_version`, why in that module's docstring).
        """
        snapshot = source.get("snapshot") not in _SNAPSHOT_FALSE
        marked = read_version if read else str  # a snapshot row's version carries the read mark
        lsn = source.get("lsn")
        txid: str | None = None
        if lsn is not None:
            lsn = int(lsn)
            commit_lsn = None
            seq = source.get("sequence")
            if seq:
                try:
                    pair = orjson.loads(seq)
                    if isinstance(pair, list) and pair and pair[0] is not None:
                        commit_lsn = int(pair[0])
                except (orjson.JSONDecodeError, ValueError, TypeError):
                    raise DecodeError(f"bad source.sequence {seq!r}") from None
            position = _new_position(
                version=marked(pg_version(lsn)),
                lsn=lsn,
                commit_lsn=commit_lsn,
                snapshot=snapshot,
            )
            tx = source.get("txId")
            txid = None if tx is None else str(tx)
        elif source.get("file") is not None and source.get("pos") is not None:
            file = str(source["file"])
            number = file.rsplit(".", 1)[-1]
            if not number.isdigit():
                raise DecodeError(f"binlog file name {file!r} does not end in a number")
            pos = int(source["pos"])
            row = int(source.get("row") or 0)
            gtid = source.get("gtid")
            position = _new_position(
                version=marked(mysql_version(int(number), pos, row)),
                binlog_file=file,
                binlog_pos=pos,
                row=row,
                gtid=gtid,
                snapshot=snapshot,
            )
            txid = gtid
        elif flattened:
            p = self._meta_prefix
            raise MissingPositionError(
                "no log position: a record flattened by ExtractNewRecordState must carry its source "
                f"position; add lsn (PostgreSQL, gives {p}lsn) or file,pos,row (MySQL/MariaDB, gives "
                f"{p}file/{p}pos/{p}row) to the transform's add.fields, e.g. "
                "transforms.unwrap.add.fields=op,lsn,source.ts_ms (or the same names to add.headers)"
            )
        else:
            raise MissingPositionError(
                "no log position: the envelope's source block has neither lsn (PostgreSQL) nor "
                "file/pos (MySQL/MariaDB), so the change cannot be ordered against the other changes "
                "of its key; use Debezium's PostgreSQL or MySQL/MariaDB connector records unchanged "
                "(with ExtractNewRecordState: add.fields=lsn, or file,pos,row)"
            )
        if txid is None and isinstance(transaction, dict):
            tid = transaction.get("id")
            txid = None if tid is None else str(tid)
        return position, txid, _ts_of(source)


def _ts_of(block: Mapping[str, Any]) -> dt.datetime | None:
    us = block.get("ts_us")
    if us is not None:
        return _EPOCH_UTC + _timedelta(0, 0, us)
    ms = block.get("ts_ms")
    if ms is not None:
        return _EPOCH_UTC + dt.timedelta(milliseconds=ms)
    ns = block.get("ts_ns")
    if ns is not None:
        return _EPOCH_UTC + dt.timedelta(microseconds=ns // 1000)
    return None


def _header_value(raw: str | bytes) -> Any:
    """A Connect header as SimpleHeaderConverter (plain text) or JsonConverter wrote it."""
    text = raw if isinstance(raw, str) else raw.decode("utf-8", "replace")
    if text[:1] in ('"', "{", "["):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            return text
    return text


_GUESS: Final = MappingProxyType(
    {bool: "boolean", int: "int64", float: "float64", str: "string", list: "array", dict: "struct"}
)


def _guess_columns(
    before: Mapping[str, Any] | None, after: Mapping[str, Any] | None
) -> Mapping[str, ColumnType]:
    columns: dict[str, ColumnType] = {}
    for row in (after, before):
        if not row:
            continue
        for name, value in row.items():
            have = columns.get(name)
            if have is not None and have.base != "unknown":
                continue
            base = _GUESS.get(type(value), "unknown")
            columns[name] = ColumnType(base=base)
    return MappingProxyType(columns)


def _column_schema(col: ColumnType) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": col.base, "optional": col.optional}
    if col.logical:
        schema["name"] = col.logical
    if col.params:
        schema["parameters"] = dict(col.params)
    if col.items is not None:
        schema["items"] = _column_schema(col.items)
    return schema
