"""AvroSerde framing, typed errors for every bad input, and the schema-registry path (fake client)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from confluent_kafka.schema_registry import Schema
from confluent_kafka.schema_registry.error import SchemaRegistryError
from fastavro.schema import to_parsing_canonical_form

from schemas import (
    EVENT_TYPES,
    AvroSerde,
    BrokerUnavailableError,
    DecodeError,
    EventValidationError,
    MalformedRecordError,
    OutboxFullError,
    OversizeEventError,
    SchemaRegistryUnavailableError,
    TracelineError,
    UnknownSchemaError,
    parse_event,
    parse_line,
    raw_schema,
    schema_for,
    subject_for,
    to_json,
)
from schemas.kafka import dead_letter_headers, read_dead_letter_headers
from schemas.serde import schema_fingerprint
from tests.samples import sample_events

SAMPLES = {e.type: e for e in sample_events()}


def _crc64_avro(data: bytes) -> int:
    """Independent CRC-64-AVRO (Avro spec reference implementation)."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for b in data:
        fp = (fp >> 8) ^ table[(fp ^ b) & 0xFF]
    return fp


# --------------------------------------------------------------------------- single-object framing


@pytest.mark.parametrize("type_name", EVENT_TYPES)
def test_single_object_header_is_spec_fingerprint(type_name: str) -> None:
    canonical = to_parsing_canonical_form(schema_for(type_name))
    expected = _crc64_avro(canonical.encode()).to_bytes(8, "little")
    assert schema_fingerprint(type_name) == expected
    data = AvroSerde().encode_event(SAMPLES[type_name])
    assert data[:2] == b"\xc3\x01" and data[2:10] == expected


def test_fingerprints_are_distinct() -> None:
    assert len({schema_fingerprint(t) for t in EVENT_TYPES}) == len(EVENT_TYPES)


def test_crc64_reference_vector() -> None:
    # Avro spec: fingerprint64 of the schema "null"
    assert _crc64_avro(b'"null"') == 0x63DD24E7CC258F8A


def test_encode_plain_record_dict() -> None:
    event = SAMPLES["LotStatusChanged"]
    serde = AvroSerde()
    assert serde.encode("LotStatusChanged", event.to_avro()) == serde.encode_event(event)


# --------------------------------------------------------------------------- bad input -> typed error


def _valid_bytes() -> bytes:
    return AvroSerde().encode_event(SAMPLES["UnitTested"])


def test_garbage_bytes() -> None:
    raw = b"hello, this is not avro"
    with pytest.raises(MalformedRecordError) as info:
        AvroSerde().decode(raw)
    assert info.value.raw == raw and "framing" in info.value.reason


@pytest.mark.parametrize("raw", [b"", b"\xc3", b"\xc3\x01\x00\x01", b"\x00\x00"])
def test_too_short(raw: bytes) -> None:
    with pytest.raises(MalformedRecordError) as info:
        AvroSerde().decode(raw)
    assert info.value.raw == raw


def test_none_value_is_malformed() -> None:
    with pytest.raises(MalformedRecordError):
        AvroSerde().decode(None)  # type: ignore[arg-type]


def test_truncated_body_every_prefix() -> None:
    data = _valid_bytes()
    serde = AvroSerde()
    for n in range(len(data)):
        with pytest.raises(MalformedRecordError) as info:
            serde.decode(data[:n])
        assert info.value.raw == data[:n]


def test_trailing_bytes() -> None:
    data = _valid_bytes() + b"\x00\x01"
    with pytest.raises(MalformedRecordError, match="trailing"):
        AvroSerde().decode(data)


def test_garbage_body_after_valid_header() -> None:
    data = _valid_bytes()[:10] + b"\xff" * 40
    with pytest.raises(MalformedRecordError) as info:
        AvroSerde().decode(data)
    assert info.value.raw == data and "UnitTested" in info.value.reason


def test_unknown_fingerprint() -> None:
    data = b"\xc3\x01" + b"\x01\x02\x03\x04\x05\x06\x07\x08" + _valid_bytes()[10:]
    with pytest.raises(UnknownSchemaError) as info:
        AvroSerde().decode(data)
    assert info.value.raw == data and "0102030405060708" in info.value.reason
    assert isinstance(info.value, DecodeError)


def test_confluent_frame_without_registry() -> None:
    data = b"\x00\x00\x00\x00\x07" + _valid_bytes()[10:]
    with pytest.raises(UnknownSchemaError, match="no schema registry"):
        AvroSerde().decode(data)


def test_oversize_event() -> None:
    event = SAMPLES["UnitTested"]
    size = len(AvroSerde().encode_event(event))
    with pytest.raises(OversizeEventError) as info:
        AvroSerde(max_message_bytes=size - 1).encode_event(event)
    assert info.value.size == size and info.value.limit == size - 1
    assert len(AvroSerde(max_message_bytes=size).encode_event(event)) == size


def test_encode_unknown_type() -> None:
    with pytest.raises(EventValidationError) as info:
        AvroSerde().encode("UnitTeleported", {})
    assert info.value.field == "type"


def test_encode_bad_record_names_field() -> None:
    rec = SAMPLES["MaterialReceived"].to_avro()
    with pytest.raises(EventValidationError) as info:
        AvroSerde().encode("MaterialReceived", {**rec, "quantity": "lots"})
    assert info.value.field == "quantity"
    bad = {k: v for k, v in rec.items() if k != "lot_id"}
    with pytest.raises(EventValidationError) as info:
        AvroSerde().encode("MaterialReceived", bad)
    assert info.value.field == "lot_id"
    with pytest.raises(EventValidationError):
        AvroSerde().encode("MaterialReceived", {**rec, "inspection_result": "MAYBE"})


def _json(type_name: str) -> dict[str, Any]:
    return to_json(SAMPLES[type_name])


def test_json_missing_field() -> None:
    obj = _json("MaterialReceived")
    del obj["lot_id"]
    with pytest.raises(EventValidationError) as info:
        parse_event(obj)
    assert info.value.field == "lot_id" and "missing" in info.value.reason and info.value.raw is obj


def test_json_nullable_field_may_be_left_out() -> None:
    obj = _json("MaterialReceived")
    del obj["coc_reference"]
    assert parse_event(obj).coc_reference is None  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("type_name", "patch", "field"),
    [
        ("MaterialReceived", {"quantity": "a lot"}, "quantity"),
        ("MaterialReceived", {"quantity": -1}, "quantity"),
        ("MaterialReceived", {"inspection_result": "MAYBE"}, "inspection_result"),
        ("MaterialReceived", {"lot_id": 42}, "lot_id"),
        ("MaterialReceived", {"lot_id": ""}, "lot_id"),
        ("MaterialReceived", {"surprise": 1}, "surprise"),
        (
            "UnitAssembled",
            {"unit": {"part_number": "PCB-100", "serial_number": "SN:1"}},
            "unit.serial_number",
        ),
        ("UnitAssembled", {"unit": "PCB-100:SN1"}, "unit"),
        (
            "UnitTested",
            {"measurements": [{"name": "x", "value": "high", "unit": "V", "passed": True}]},
            "measurements[0].value",
        ),
        ("UnitTested", {"verdict": "pass"}, "verdict"),
        ("MaterialReceived", {"event_id": "not-a-uuid"}, "event_id"),
    ],
)
def test_json_wrong_type(type_name: str, patch: dict[str, Any], field: str) -> None:
    with pytest.raises(EventValidationError) as info:
        parse_event({**_json(type_name), **patch})
    assert info.value.field == field
    assert field in info.value.reason


def test_json_unknown_type() -> None:
    with pytest.raises(EventValidationError, match="unknown event type 'UnitTeleported'") as info:
        parse_event({**_json("UnitShipped"), "type": "UnitTeleported"})
    assert info.value.field == "type"
    with pytest.raises(EventValidationError, match="type: required"):
        parse_event({k: v for k, v in _json("UnitShipped").items() if k != "type"})


@pytest.mark.parametrize("bad", ["yesterday", "2026-13-01T00:00:00Z", 1.5e12, True, None])
def test_json_bad_timestamp(bad: Any) -> None:
    with pytest.raises(EventValidationError) as info:
        parse_event({**_json("LotStatusChanged"), "event_time": bad})
    assert info.value.field == "event_time"


@pytest.mark.parametrize("naive", ["2026-11-26T10:15:00", "2026-11-26T10:15:00.123", "2026-11-26"])
def test_json_naive_timestamp(naive: str) -> None:
    with pytest.raises(EventValidationError, match="naive") as info:
        parse_event({**_json("LotStatusChanged"), "event_time": naive})
    assert info.value.field == "event_time"


def test_json_time_order_and_cross_field_rules() -> None:
    obj = _json("UnitTested")
    with pytest.raises(EventValidationError, match="finished_at .* before started_at"):
        parse_event({**obj, "finished_at": "2000-01-01T00:00:00Z"})
    ncr = _json("NonconformanceRaised")
    with pytest.raises(EventValidationError, match="window_end"):
        parse_event({**ncr, "window_end": "2000-01-01T00:00:00Z"})
    with pytest.raises(EventValidationError, match="target_id"):
        parse_event({**ncr, "target_kind": "SERIAL", "target_id": "SN1"})
    asm = _json("UnitAssembled")
    with pytest.raises(EventValidationError, match="into itself"):
        parse_event({**asm, "parent": asm["unit"]})


@pytest.mark.parametrize("line", ["", "{", "not json", '{"type": "UnitShipped",}'])
def test_bad_json_line(line: str) -> None:
    with pytest.raises(EventValidationError, match="not valid JSON") as info:
        parse_line(line)
    assert info.value.raw == line


def test_json_not_an_object() -> None:
    with pytest.raises(EventValidationError, match="JSON object"):
        parse_line("[1, 2]")


# --------------------------------------------------------------------------- error hierarchy


def test_error_hierarchy_and_data() -> None:
    for cls in (
        EventValidationError,
        DecodeError,
        UnknownSchemaError,
        MalformedRecordError,
        OversizeEventError,
        OutboxFullError,
        BrokerUnavailableError,
        SchemaRegistryUnavailableError,
    ):
        assert issubclass(cls, TracelineError)
    err = MalformedRecordError(b"\x01", "bad", "traceline.events", 3, 42)
    assert (err.topic, err.partition, err.offset, err.raw) == ("traceline.events", 3, 42, b"\x01")
    headers = dead_letter_headers("traceline.events", 3, 42, type(err).__name__, err.reason)
    assert dict(headers)["traceline.error"] == b"MalformedRecordError"
    assert dict(headers)["traceline.source_offset"] == b"42"
    assert read_dead_letter_headers(headers) == {
        "source_topic": "traceline.events",
        "source_partition": 3,
        "source_offset": 42,
        "error": "MalformedRecordError",
        "reason": "bad",
    }
    assert read_dead_letter_headers(None)["source_offset"] == -1
    assert "traceline.events/3@42" in str(err)
    full = OutboxFullError(pending=10, limit=10)
    assert (full.pending, full.limit) == (10, 10)
    down = BrokerUnavailableError("127.0.0.1:9092", "timed out")
    assert down.bootstrap == "127.0.0.1:9092" and "timed out" in str(down)
    v = EventValidationError("quantity: bad", field="quantity", raw={"x": 1})
    assert (v.field, v.reason) == ("quantity", "quantity: bad")


# --------------------------------------------------------------------------- schema registry path


class FakeRegistry:
    """In-process stand-in for SchemaRegistryClient: register_schema / get_schema only."""

    def __init__(self, store: dict[int, str] | None = None, first_id: int = 100) -> None:
        self.store: dict[int, str] = {} if store is None else store  # id -> schema_str
        self.subjects: dict[str, list[int]] = {}
        self.register_calls = 0
        self.get_calls = 0
        self._next = first_id

    def register_schema(self, subject_name: str, schema: Schema, normalize_schemas: bool = False) -> int:
        self.register_calls += 1
        assert schema.schema_type == "AVRO"
        canonical = to_parsing_canonical_form(json.loads(schema.schema_str))
        existing = [i for i, s in self.store.items() if to_parsing_canonical_form(json.loads(s)) == canonical]
        if existing:
            sid = existing[0]
        else:
            sid = self._next
            self._next += 1
            self.store[sid] = schema.schema_str
        self.subjects.setdefault(subject_name, []).append(sid)
        return sid

    def get_schema(self, schema_id: int, subject_name: str | None = None, fmt: str | None = None) -> Schema:
        self.get_calls += 1
        if schema_id not in self.store:
            raise SchemaRegistryError(404, 40403, f"Schema {schema_id} not found")
        return Schema(self.store[schema_id], "AVRO")


def test_registry_url_does_not_connect_at_construction() -> None:
    serde = AvroSerde(registry_url="http://127.0.0.1:1")
    assert serde.uses_registry
    assert serde._registry is None  # created lazily


def test_registry_encode_registers_once_per_type_with_topic_record_subjects() -> None:
    fake = FakeRegistry()
    serde = AvroSerde(topic="plant-a.events", registry_client=fake)
    for _ in range(3):
        for e in sample_events():
            data = serde.encode_event(e)
            assert data[0] == 0
    assert fake.register_calls == len(EVENT_TYPES)
    assert set(fake.subjects) == {f"plant-a.events-traceline.events.{t}" for t in EVENT_TYPES}
    assert subject_for("plant-a.events", "UnitTested") == "plant-a.events-traceline.events.UnitTested"
    # the registered text is the documented .avsc (docs included)
    sid = fake.subjects["plant-a.events-traceline.events.UnitTested"][0]
    assert json.loads(fake.store[sid]) == raw_schema("UnitTested")


def test_registry_roundtrip_and_id_cache() -> None:
    fake = FakeRegistry()
    writer = AvroSerde(registry_client=fake)
    encoded = [writer.encode_event(e) for e in sample_events()]
    ids = {int.from_bytes(d[1:5], "big") for d in encoded}
    assert len(ids) == len(EVENT_TYPES)
    # the writer knows its own ids: no fetch needed
    for d, e in zip(encoded, sample_events(), strict=True):
        assert writer.decode_event(d) == e
    assert fake.get_calls == 0
    # a separate consumer fetches each id once
    reader_fake = FakeRegistry(store=fake.store)
    reader = AvroSerde(registry_client=reader_fake)
    for _ in range(2):
        for d, e in zip(encoded, sample_events(), strict=True):
            assert reader.decode_event(d) == e
    assert reader_fake.get_calls == len(EVENT_TYPES)


def test_registry_serde_still_reads_single_object() -> None:
    data = AvroSerde().encode_event(SAMPLES["UnitShipped"])
    assert AvroSerde(registry_client=FakeRegistry()).decode_event(data) == SAMPLES["UnitShipped"]


def test_registry_unknown_id() -> None:
    data = b"\x00" + (999).to_bytes(4, "big") + b"\x00"
    with pytest.raises(UnknownSchemaError, match="999") as info:
        AvroSerde(registry_client=FakeRegistry()).decode(data)
    assert info.value.raw == data


def test_registry_id_of_foreign_schema() -> None:
    fake = FakeRegistry(
        store={
            7: json.dumps(
                {
                    "type": "record",
                    "name": "Other",
                    "namespace": "x",
                    "fields": [{"name": "a", "type": "int"}],
                }
            )
        }
    )
    with pytest.raises(UnknownSchemaError, match="not a traceline event"):
        AvroSerde(registry_client=fake).decode(b"\x00\x00\x00\x00\x07\x02")


def test_registry_truncated_body() -> None:
    fake = FakeRegistry()
    data = AvroSerde(registry_client=fake).encode_event(SAMPLES["UnitTested"])
    with pytest.raises(MalformedRecordError):
        AvroSerde(registry_client=fake).decode(data[:-3])
    with pytest.raises(MalformedRecordError, match="header"):
        AvroSerde(registry_client=fake).decode(data[:3])


class _DownRegistry:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def register_schema(self, *args: Any, **kwargs: Any) -> int:
        raise self.exc

    def get_schema(self, *args: Any, **kwargs: Any) -> Schema:
        raise self.exc


@pytest.mark.parametrize(
    "exc", [SchemaRegistryError(500, 50001, "boom"), httpx.ConnectError("refused"), ConnectionRefusedError()]
)
def test_registry_down_is_not_a_bad_record(exc: Exception) -> None:
    serde = AvroSerde(registry_client=_DownRegistry(exc))
    with pytest.raises(SchemaRegistryUnavailableError):
        serde.encode_event(SAMPLES["UnitShipped"])
    with pytest.raises(SchemaRegistryUnavailableError):
        serde.decode(b"\x00\x00\x00\x00\x01\x00")
