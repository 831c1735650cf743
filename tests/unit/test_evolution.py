"""Schema evolution: adding an optional field is compatible in both directions."""

from __future__ import annotations

import copy
import io
import json
from datetime import UTC, datetime
from typing import Any

import fastavro
import pytest
from fastavro.schema import fingerprint as avro_fingerprint
from fastavro.schema import parse_schema, to_parsing_canonical_form

from schemas import AvroSerde, EventBase, UnknownSchemaError, raw_schema, schema_for
from schemas.alert import Alert, decode_alert, encode_alert
from schemas.serde import SCHEMA_DIR, SINGLE_OBJECT_MAGIC, schema_fingerprint
from tests.samples import sample_events

from .test_serde import FakeRegistry

SAMPLE = next(e for e in sample_events() if e.type == "UnitTested")


def _newer_unit_tested() -> dict[str, Any]:
    """UnitTested v2: an added optional field, as the contract allows."""
    raw = copy.deepcopy(raw_schema("UnitTested"))
    raw["fields"].append(
        {
            "name": "temperature_c",
            "type": ["null", "double"],
            "default": None,
            "doc": "Ambient temperature during the test, degrees Celsius.",
        }
    )
    return raw


def _write(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, record)
    return buf.getvalue()


def _read(data: bytes, writer: dict[str, Any], reader: dict[str, Any]) -> dict[str, Any]:
    return fastavro.schemaless_reader(io.BytesIO(data), writer, reader)  # type: ignore[return-value]


def test_newer_writer_older_reader() -> None:
    newer = parse_schema(_newer_unit_tested(), named_schemas={})
    older = schema_for("UnitTested")
    data = _write(newer, {**SAMPLE.to_avro(), "temperature_c": 23.5})
    record = _read(data, newer, older)
    assert "temperature_c" not in record
    assert record == SAMPLE.to_avro()
    assert EventBase.from_avro("UnitTested", record) == SAMPLE


def test_older_writer_newer_reader() -> None:
    newer = parse_schema(_newer_unit_tested(), named_schemas={})
    older = schema_for("UnitTested")
    data = _write(older, SAMPLE.to_avro())
    record = _read(data, older, newer)
    assert record["temperature_c"] is None
    assert {k: v for k, v in record.items() if k != "temperature_c"} == SAMPLE.to_avro()


def test_docs_do_not_change_the_fingerprint() -> None:
    raw = copy.deepcopy(raw_schema("UnitTested"))
    raw["doc"] = "reworded"
    raw["fields"][0]["doc"] = "reworded too"
    fp = bytes.fromhex(
        avro_fingerprint(to_parsing_canonical_form(parse_schema(raw, named_schemas={})), "CRC-64-AVRO")
    )
    assert fp == schema_fingerprint("UnitTested")


def test_serde_reads_newer_writer_once_told_about_it() -> None:
    newer_raw = _newer_unit_tested()
    newer = parse_schema(newer_raw, named_schemas={})
    fp = bytes.fromhex(avro_fingerprint(to_parsing_canonical_form(newer), "CRC-64-AVRO"))
    assert fp != schema_fingerprint("UnitTested")
    data = b"\xc3\x01" + fp + _write(newer, {**SAMPLE.to_avro(), "temperature_c": 21.0})

    serde = AvroSerde()
    with pytest.raises(UnknownSchemaError):
        serde.decode(data)
    assert serde.add_writer_schema(newer_raw) == fp
    assert serde.decode_event(data) == SAMPLE


def test_add_writer_schema_rejects_foreign_records() -> None:
    with pytest.raises(ValueError):
        AvroSerde().add_writer_schema({"type": "record", "name": "x.Other", "fields": []})


def test_registry_consumer_resolves_newer_writer_schema() -> None:
    """A producer on contract v2 registers its schema; a v1 consumer still decodes its records."""
    from confluent_kafka.schema_registry import Schema

    fake = FakeRegistry()
    sid = fake.register_schema(
        "traceline.events-traceline.events.UnitTested", Schema(json.dumps(_newer_unit_tested()), "AVRO")
    )
    newer = parse_schema(_newer_unit_tested(), named_schemas={})
    data = b"\x00" + sid.to_bytes(4, "big") + _write(newer, {**SAMPLE.to_avro(), "temperature_c": 19.5})
    type_name, record = AvroSerde(registry_client=fake).decode(data)
    assert type_name == "UnitTested" and "temperature_c" not in record
    assert EventBase.from_avro(type_name, record) == SAMPLE


def test_alerts_written_before_the_ledger_gap_rule_are_still_read() -> None:
    """Alert.avsc grew a rule symbol (LEDGER_GAP); records in the alerts topic written with the
    earlier schema (schemas/avro/history/Alert.v1.avsc) decode through Avro resolution."""
    old = parse_schema(json.loads((SCHEMA_DIR / "history" / "Alert.v1.avsc").read_text()), named_schemas={})
    assert "LEDGER_GAP" not in json.dumps(old)
    t = datetime(2026, 1, 5, tzinfo=UTC)
    a = Alert(
        alert_id="NC_RAISED:N1", rule="NC_RAISED", severity="WARNING", title="t", subject_kind="lot",
        subject_id="L1", raised_at=t, event_time=t, trigger_event_id="e", trigger_type="NonconformanceRaised",
        site="S", program="P",
    )  # fmt: skip
    bio = io.BytesIO()
    bio.write(
        SINGLE_OBJECT_MAGIC + bytes.fromhex(avro_fingerprint(to_parsing_canonical_form(old), "CRC-64-AVRO"))
    )
    fastavro.schemaless_writer(bio, old, a.to_avro())
    written_before = bio.getvalue()
    assert written_before[:10] != encode_alert(a)[:10]  # another writer schema
    assert decode_alert(written_before) == a
