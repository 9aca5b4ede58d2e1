"""Property tests: values encoded the way Debezium encodes them decode back to themselves, exactly,
from JSON and from Avro alike. The encoders here follow Debezium/Java, independently of the decoder:
``BigInteger.toByteArray`` for decimals, epoch days/millis/micros/nanos, ``ISO_OFFSET_DATE_TIME``.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.core.events import ChangeEvent
from tests.unit.decode_helpers import ID_COLUMN, TOPIC, Records, value_payload

EPOCH = dt.datetime(1970, 1, 1)
EPOCH_DATE = dt.date(1970, 1, 1)
MICRO = dt.timedelta(microseconds=1)


def java_bytes(n: int) -> bytes:
    """``BigInteger.toByteArray()``: minimal big-endian two's complement."""
    bits = n.bit_length() if n >= 0 else (~n).bit_length()
    return n.to_bytes(bits // 8 + 1, "big", signed=True)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def java_iso_offset(value: dt.datetime) -> str:
    """``DateTimeFormatter.ISO_OFFSET_DATE_TIME`` as Debezium's ZonedTimestamp uses it."""
    text = f"{value.year:04d}-{value.month:02d}-{value.day:02d}T{value.hour:02d}:{value.minute:02d}:{value.second:02d}"
    if value.microsecond:
        text += "." + f"{value.microsecond:06d}".rstrip("0")
    offset = value.utcoffset()
    assert offset is not None
    if not offset:
        return text + "Z"
    minutes = int(offset.total_seconds()) // 60
    sign = "+" if minutes >= 0 else "-"
    return text + f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


class RoundTrip:
    """One column decoded through JSON and through Avro with long-lived decoders (plans cached)."""

    def __init__(self, column: dict[str, Any]) -> None:
        self.field = column["field"]
        self.records = [Records(fmt, [ID_COLUMN, column]) for fmt in ("json", "avro")]
        self.decoders = [r.decoder() for r in self.records]

    def decode(self, raw: Any) -> Iterator[Any]:
        for offset, (rec, decoder) in enumerate(zip(self.records, self.decoders, strict=True)):
            value = rec.value(value_payload("c", after={"id": 1, self.field: raw}))
            event = decoder.decode(TOPIC, 0, offset, rec.key({"id": 1}), value)
            assert isinstance(event, ChangeEvent) and event.after is not None
            yield event.after[self.field]


def column(ctype: str, name: str | None = None, params: dict[str, str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": ctype, "optional": True}
    if name:
        schema.update(name=name, version=1)
    if params:
        schema["parameters"] = params
    schema["field"] = "v"
    return schema


@pytest.fixture(scope="module")
def roundtrips() -> dict[str, Any]:
    vsd = {
        "type": "struct",
        "fields": [
            {"type": "int32", "optional": False, "field": "scale"},
            {"type": "bytes", "optional": False, "field": "value"},
        ],
        "optional": True,
        "name": "io.debezium.data.VariableScaleDecimal",
        "version": 1,
        "doc": "Variable scaled decimal",
        "field": "v",
    }
    made: dict[str, Any] = {
        "vsd": RoundTrip(vsd),
        "decimal-string": RoundTrip(column("string", None, {"__debezium.source.column.type": "NUMERIC"})),
    }
    for scale in range(0, 21, 5):
        made[f"decimal{scale}"] = RoundTrip(
            column(
                "bytes",
                "org.apache.kafka.connect.data.Decimal",
                {"scale": str(scale), "connect.decimal.precision": "60"},
            )
        )
    for name in (
        "io.debezium.time.Date",
        "org.apache.kafka.connect.data.Date",
    ):
        made[name] = RoundTrip(column("int32", name))
    for name in ("io.debezium.time.Time", "org.apache.kafka.connect.data.Time"):
        made[name] = RoundTrip(column("int32", name))
    for name in (
        "io.debezium.time.MicroTime",
        "io.debezium.time.NanoTime",
        "io.debezium.time.Timestamp",
        "io.debezium.time.MicroTimestamp",
        "io.debezium.time.NanoTimestamp",
        "org.apache.kafka.connect.data.Timestamp",
        "io.debezium.time.MicroDuration",
    ):
        made[name] = RoundTrip(column("int64", name))
    made["io.debezium.time.ZonedTimestamp"] = RoundTrip(column("string", "io.debezium.time.ZonedTimestamp"))
    return made


def assert_exact(values: Iterator[Any], expected: Any) -> None:
    for value in values:
        assert type(value) is type(expected)
        assert value == expected
        if isinstance(expected, Decimal):
            assert str(value) == str(expected)
        if isinstance(expected, (dt.datetime, dt.time)):
            assert value.utcoffset() == expected.utcoffset()


EXAMPLES = settings(max_examples=150, deadline=None)

unscaled_values = st.integers(min_value=-(10**45), max_value=10**45)


@EXAMPLES
@given(unscaled=unscaled_values, scale_index=st.integers(0, 4))
def test_connect_decimal(roundtrips: dict[str, Any], unscaled: int, scale_index: int) -> None:
    scale = scale_index * 5
    expected = Decimal(f"{unscaled}E-{scale}")
    assert_exact(roundtrips[f"decimal{scale}"].decode(b64(java_bytes(unscaled))), expected)


@EXAMPLES
@given(unscaled=unscaled_values, scale=st.integers(0, 40))
def test_variable_scale_decimal(roundtrips: dict[str, Any], unscaled: int, scale: int) -> None:
    expected = Decimal(f"{unscaled}E-{scale}")
    assert_exact(roundtrips["vsd"].decode({"scale": scale, "value": b64(java_bytes(unscaled))}), expected)


@EXAMPLES
@given(
    value=st.decimals(allow_nan=False, allow_infinity=False, places=None).filter(
        lambda d: abs(d.adjusted()) < 60
    )
)
def test_decimal_as_string(roundtrips: dict[str, Any], value: Decimal) -> None:
    text = format(value, "f")  # BigDecimal.toPlainString
    assert_exact(roundtrips["decimal-string"].decode(text), Decimal(text))


dates = st.dates(min_value=dt.date(1, 1, 1), max_value=dt.date(9999, 12, 31))
naive_datetimes = st.datetimes(
    min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31, 23, 59, 59, 999999)
)


@EXAMPLES
@given(value=dates, name=st.sampled_from(["io.debezium.time.Date", "org.apache.kafka.connect.data.Date"]))
def test_date(roundtrips: dict[str, Any], value: dt.date, name: str) -> None:
    assert_exact(roundtrips[name].decode((value - EPOCH_DATE).days), value)


@EXAMPLES
@given(
    value=st.times(), name=st.sampled_from(["io.debezium.time.Time", "org.apache.kafka.connect.data.Time"])
)
def test_time_millis(roundtrips: dict[str, Any], value: dt.time, name: str) -> None:
    value = value.replace(microsecond=value.microsecond // 1000 * 1000)
    millis = ((value.hour * 60 + value.minute) * 60 + value.second) * 1000 + value.microsecond // 1000
    assert_exact(roundtrips[name].decode(millis), value)


@EXAMPLES
@given(value=st.times(), nanos=st.integers(0, 999))
def test_micro_and_nano_time(roundtrips: dict[str, Any], value: dt.time, nanos: int) -> None:
    micros = ((value.hour * 60 + value.minute) * 60 + value.second) * 1_000_000 + value.microsecond
    assert_exact(roundtrips["io.debezium.time.MicroTime"].decode(micros), value)
    assert_exact(roundtrips["io.debezium.time.NanoTime"].decode(micros * 1000 + nanos), value)


@EXAMPLES
@given(value=naive_datetimes, nanos=st.integers(0, 999))
def test_timestamps(roundtrips: dict[str, Any], value: dt.datetime, nanos: int) -> None:
    micros = (value - EPOCH) // MICRO
    assert_exact(roundtrips["io.debezium.time.MicroTimestamp"].decode(micros), value)
    millis_value = value.replace(microsecond=value.microsecond // 1000 * 1000)
    millis = (millis_value - EPOCH) // dt.timedelta(milliseconds=1)
    assert_exact(roundtrips["io.debezium.time.Timestamp"].decode(millis), millis_value)
    assert_exact(roundtrips["org.apache.kafka.connect.data.Timestamp"].decode(millis), millis_value)
    if -(2**63) <= micros * 1000 + nanos < 2**63:  # NanoTimestamp covers 1677-2262
        assert_exact(roundtrips["io.debezium.time.NanoTimestamp"].decode(micros * 1000 + nanos), value)


offsets = st.integers(min_value=-18 * 60, max_value=18 * 60).map(
    lambda m: dt.timezone(dt.timedelta(minutes=m))
)


@EXAMPLES
@given(
    value=st.datetimes(
        min_value=dt.datetime(2, 1, 1),
        max_value=dt.datetime(9998, 12, 31, 23, 59, 59, 999999),
        timezones=offsets,
    )
)
def test_zoned_timestamp(roundtrips: dict[str, Any], value: dt.datetime) -> None:
    assert_exact(roundtrips["io.debezium.time.ZonedTimestamp"].decode(java_iso_offset(value)), value)


@EXAMPLES
@given(value=st.timedeltas(min_value=dt.timedelta(days=-100 * 365), max_value=dt.timedelta(days=100 * 365)))
def test_micro_duration(roundtrips: dict[str, Any], value: dt.timedelta) -> None:
    assert_exact(roundtrips["io.debezium.time.MicroDuration"].decode(value // MICRO), value)
