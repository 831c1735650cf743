"""The contract: .avsc files <-> pydantic models <-> fastavro, and the JSON form."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import (
    EVENT_MODELS,
    EVENT_TYPES,
    SCHEMA_FILES,
    AnyEvent,
    AvroSerde,
    EventBase,
    UnitRef,
    parse_event,
    parse_line,
    raw_schema,
    schema_for,
    to_json,
    to_json_line,
)
from tests.samples import sample_events

HEADER = ["event_id", "event_time", "source", "site", "program"]


def _is_nullable(avro_type: Any) -> bool:
    return isinstance(avro_type, list) and "null" in avro_type


# --------------------------------------------------------------------------- the .avsc files


def test_one_schema_file_per_event_type() -> None:
    assert set(SCHEMA_FILES) == set(EVENT_MODELS) == set(EVENT_TYPES)
    assert len(EVENT_TYPES) == 9


@pytest.mark.parametrize("type_name", EVENT_TYPES)
def test_avsc_is_self_contained_and_documented(type_name: str) -> None:
    raw = json.loads(SCHEMA_FILES[type_name].read_text())
    assert raw["type"] == "record"
    assert raw["name"] == type_name and raw["namespace"] == "traceline.events"
    assert raw["doc"]
    # parses on its own, with a fresh named-type namespace (no external references)
    fastavro.parse_schema(raw, named_schemas={})
    names = [f["name"] for f in raw["fields"]]
    assert names[:5] == HEADER, "header fields first"
    assert raw["fields"][1]["type"] == {"type": "long", "logicalType": "timestamp-millis"}

    def walk(record: dict[str, Any]) -> None:
        assert record.get("doc"), record["name"]
        for f in record["fields"]:
            assert f.get("doc"), f"{record['name']}.{f['name']} has no doc"
            if _is_nullable(f["type"]):
                assert f["type"][0] == "null" and f.get("default", "missing") is None, f["name"]
            for t in f["type"] if isinstance(f["type"], list) else [f["type"]]:
                if isinstance(t, dict) and t.get("type") == "record":
                    walk(t)
                if isinstance(t, dict) and t.get("type") == "array" and isinstance(t["items"], dict):
                    walk(t["items"])

    walk(raw)


@pytest.mark.parametrize("type_name", EVENT_TYPES)
def test_model_fields_mirror_avsc(type_name: str) -> None:
    """Same field names in the same order, and nullable in Avro <=> optional (None) in the model."""
    raw = raw_schema(type_name)
    model = EVENT_MODELS[type_name]
    avro_fields = [f["name"] for f in raw["fields"]]
    model_fields = [n for n in model.model_fields if n != "type"]
    assert model_fields == avro_fields
    for f in raw["fields"]:
        info = model.model_fields[f["name"]]
        assert _is_nullable(f["type"]) == (
            not info.is_required() and info.default is None and info.default_factory is None
        ), f["name"]


# --------------------------------------------------------------------------- samples round trip


def test_samples_cover_every_type_fully_populated() -> None:
    events = sample_events()
    assert [e.type for e in events] == list(EVENT_TYPES)
    for e in events:
        for name, value in e.to_avro().items():
            assert value is not None, f"{e.type}.{name} not populated in the sample"


@pytest.mark.parametrize("event", sample_events(), ids=lambda e: e.type)
def test_model_roundtrips_through_fastavro_against_its_schema(event: EventBase) -> None:
    record = event.to_avro()
    parsed = schema_for(event.type)
    assert fastavro.validate(record, parsed)
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed, record, strict=True)
    buf.seek(0)
    back = fastavro.schemaless_reader(buf, parsed, None)
    assert back == record
    assert EventBase.from_avro(event.type, back) == event
    assert type(event).from_avro(event.type, back) == event


@pytest.mark.parametrize("event", sample_events(), ids=lambda e: e.type)
def test_model_roundtrips_through_serde(event: EventBase) -> None:
    serde = AvroSerde()
    data = serde.encode_event(event)
    type_name, record = serde.decode(data)
    assert type_name == event.type
    assert record == event.to_avro()
    assert EventBase.from_avro(type_name, record) == event
    assert serde.decode_event(data) == event


@pytest.mark.parametrize("event", sample_events(), ids=lambda e: e.type)
def test_json_form_roundtrip(event: EventBase) -> None:
    obj = to_json(event)
    assert next(iter(obj)) == "type"
    assert obj["event_time"].endswith("Z")
    assert parse_event(obj) == event
    assert parse_line(to_json_line(event)) == event
    assert parse_event(json.loads(json.dumps(obj))) == event


def test_discriminated_union() -> None:
    from pydantic import TypeAdapter

    adapter = TypeAdapter(AnyEvent)
    for e in sample_events():
        assert adapter.validate_python(to_json(e)) == e


def test_kafka_keys() -> None:
    keys = {e.type: e.kafka_key() for e in sample_events()}
    assert keys["MaterialReceived"] == "L-2026-0001"
    assert keys["LotTransformed"] == "L-2026-0002"
    assert keys["LotStatusChanged"] == "L-2026-0001"
    for t in ("OperationCompleted", "UnitTested", "UnitAssembled", "UnitRemoved"):
        assert keys[t] == "PCB-100:SN000123"
    assert keys["UnitShipped"] == "LRU-300:SN000045"
    assert keys["NonconformanceRaised"] == "SUPPLIER_LOT:SUP-ACME:ACME-77812"


def test_readme_example_parses() -> None:
    line = (
        '{"type": "UnitAssembled", "event_id": "6f1c0c6e-5b0e-4bb5-9b7e-0f7f2f6c1a01", '
        '"event_time": "2026-11-26T10:15:00.123Z", "source": "cell-7-gw", "site": "plant-a", '
        '"program": "PRG-ALPHA", "unit": {"part_number": "PCB-100", "serial_number": "SN000123"}, '
        '"parent": {"part_number": "LRU-300", "serial_number": "SN000045"}, "position": "A3"}'
    )
    event = parse_line(line)
    assert event.event_time == datetime(2026, 11, 26, 10, 15, 0, 123000, tzinfo=UTC)
    assert event.kafka_key() == "PCB-100:SN000123"
    assert event.work_order is None  # type: ignore[attr-defined]


def test_timestamps_normalised_to_utc_millis() -> None:
    base = to_json(sample_events()[7])
    as_offset = parse_event({**base, "event_time": "2026-11-26T11:15:00.123999+01:00"})
    as_ms = parse_event({**base, "event_time": 1795688100123})
    as_dt = parse_event({**base, "event_time": datetime(2026, 11, 26, 10, 15, 0, 123456, tzinfo=UTC)})
    expected = datetime(2026, 11, 26, 10, 15, 0, 123000, tzinfo=UTC)
    assert as_offset.event_time == as_ms.event_time == as_dt.event_time == expected
    assert as_offset.event_time.tzinfo is UTC


def test_unit_identity() -> None:
    a = UnitRef(part_number="PCB-100", serial_number="SN1")
    b = UnitRef(part_number="PCB-200", serial_number="SN1")
    assert a.uii == "PCB-100:SN1" and a.uii != b.uii
    assert UnitRef.from_uii(a.uii) == a
    for bad in (
        {"part_number": "A:B", "serial_number": "1"},
        {"part_number": "A", "serial_number": ""},
        {"part_number": "A", "serial_number": "1:2"},
        {"part_number": " ", "serial_number": "1"},
    ):
        with pytest.raises(ValueError):
            UnitRef(**bad)


def test_event_id_normalised() -> None:
    base = to_json(sample_events()[0])
    e = parse_event({**base, "event_id": base["event_id"].upper()})
    assert e.event_id == base["event_id"]


def test_models_are_immutable() -> None:
    e = sample_events()[0]
    with pytest.raises(ValueError):
        e.lot_id = "other"  # type: ignore[misc]


# --------------------------------------------------------------------------- hypothesis

_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=24)
_UII_PART = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters=":"), min_size=1, max_size=16
).filter(lambda s: s.strip() != "")
_TS = st.datetimes(  # hypothesis wants naive bounds; the generated values are aware (UTC)
    min_value=datetime(1970, 1, 1),  # noqa: DTZ001
    max_value=datetime(2200, 1, 1),  # noqa: DTZ001
    timezones=st.just(UTC),
).map(lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000))
_FLOAT = st.floats(allow_nan=False, allow_infinity=False)
_QTY = st.floats(min_value=0, max_value=1e12, allow_nan=False)


def _strategy(avro_type: Any, field: str, named: dict[str, Any]) -> st.SearchStrategy[Any]:
    if isinstance(avro_type, list):
        return st.one_of(*[_strategy(t, field, named) for t in avro_type])
    if isinstance(avro_type, str):
        if avro_type in named:
            return _strategy(named[avro_type], field, named)
        if avro_type == "null":
            return st.none()
        if avro_type == "string":
            if field == "event_id":
                return st.uuids().map(str)
            if field in ("part_number", "serial_number"):
                return _UII_PART
            return _TEXT
        if avro_type == "double":
            return _QTY if field == "quantity" else _FLOAT
        if avro_type == "boolean":
            return st.booleans()
        raise AssertionError(avro_type)
    kind = avro_type["type"]
    if avro_type.get("logicalType") == "timestamp-millis":
        return _TS
    if kind == "record":
        named[f"{avro_type['namespace']}.{avro_type['name']}"] = avro_type
        return st.fixed_dictionaries(
            {f["name"]: _strategy(f["type"], f["name"], named) for f in avro_type["fields"]}
        )
    if kind == "enum":
        named[f"{avro_type['namespace']}.{avro_type['name']}"] = avro_type
        return st.sampled_from(avro_type["symbols"])
    if kind == "array":
        return st.lists(_strategy(avro_type["items"], field, named), max_size=4)
    raise AssertionError(avro_type)


def _fix(type_name: str, rec: dict[str, Any]) -> dict[str, Any]:
    """Make a schema-valid random record also satisfy the models' cross-field rules."""
    for a, b in (("started_at", "finished_at"), ("window_start", "window_end")):
        if rec.get(a) is not None and rec.get(b) is not None and rec[b] < rec[a]:
            rec[a], rec[b] = rec[b], rec[a]
    if type_name == "NonconformanceRaised" and rec["target_kind"] in ("SERIAL", "SUPPLIER_LOT"):
        rec["target_id"] = "P-1:S-1"
    if type_name == "UnitAssembled" and rec["unit"] == rec["parent"]:
        rec["parent"] = {**rec["parent"], "serial_number": rec["parent"]["serial_number"] + "x"}
    return rec


def _events(type_name: str) -> st.SearchStrategy[EventBase]:
    return _strategy(raw_schema(type_name), "", {}).map(
        lambda rec: EventBase.from_avro(type_name, _fix(type_name, rec))
    )


_ANY_EVENT = st.sampled_from(EVENT_TYPES).flatmap(_events)
_SERDE = AvroSerde()


@pytest.mark.parametrize("type_name", EVENT_TYPES)
@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_valid_events_roundtrip(type_name: str, data: st.DataObject) -> None:
    event = data.draw(_events(type_name))
    decoded_type, record = _SERDE.decode(_SERDE.encode_event(event))
    assert decoded_type == type_name
    assert record == event.to_avro()
    assert EventBase.from_avro(decoded_type, record) == event
    assert parse_line(to_json_line(event)) == event


@settings(max_examples=50, deadline=None, database=None)
@given(event=_ANY_EVENT, offset_min=st.integers(-14 * 60, 14 * 60))
def test_event_time_any_offset_same_instant(event: EventBase, offset_min: int) -> None:
    from datetime import timezone

    local = event.event_time.astimezone(timezone(timedelta(minutes=offset_min)))
    obj = {**to_json(event), "event_time": local.isoformat()}
    assert parse_event(obj) == event
