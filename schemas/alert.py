"""The ``Alert`` record: pydantic model mirroring ``schemas/avro/Alert.avsc``, and its serde.

Alerts are not events (they are derived, and go to their own topic), so they have their own
small serde: Avro single-object encoding (``b"\\xc3\\x01"`` + CRC-64-AVRO fingerprint + body),
the same framing as the events without a registry. The Kafka key is ``alert_id``; a higher
``version`` of the same ``alert_id`` supersedes the earlier one.

Records written with an earlier version of the schema (``schemas/avro/history/Alert.v*.avsc``,
e.g. before the LEDGER_GAP rule existed) are still read: their fingerprint names the writer
schema and Avro resolution maps them onto the current one.
"""

from __future__ import annotations

import hashlib
import json
from enum import StrEnum
from functools import cache
from io import BytesIO
from typing import Any

import fastavro
from fastavro.schema import fingerprint as _fingerprint
from fastavro.schema import parse_schema, to_parsing_canonical_form
from pydantic import BaseModel, ConfigDict, Field

from schemas.errors import MalformedRecordError, UnknownSchemaError
from schemas.models import Timestamp
from schemas.serde import SCHEMA_DIR, SINGLE_OBJECT_MAGIC

__all__ = ["Alert", "AlertRule", "AlertSeverity", "encode_alert", "decode_alert", "alert_schema"]


class AlertRule(StrEnum):
    NC_RAISED = "NC_RAISED"
    HELD_LOT_USED = "HELD_LOT_USED"
    LOT_HELD_AFTER_USE = "LOT_HELD_AFTER_USE"
    SUSPECT_LOT_YIELD = "SUSPECT_LOT_YIELD"
    OUT_OF_CALIBRATION = "OUT_OF_CALIBRATION"
    SHIPPING_GATE = "SHIPPING_GATE"
    LEDGER_GAP = "LEDGER_GAP"  # the pipeline's own: records read but neither landed nor accounted for
    EVENT_ID_CONFLICT = "EVENT_ID_CONFLICT"  # the pipeline's own: event ids re-used with other content


class AlertSeverity(StrEnum):
    INFO = "INFO"
    WARNING = "WARNING"
    CRITICAL = "CRITICAL"


#: details that drift without the alert saying anything new (not part of the fingerprint)
_VOLATILE_DETAILS = ("baseline_rate",)


class Alert(BaseModel):
    """One version of an alert (see Alert.avsc for the meaning of each field)."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_enum_values=True)

    alert_id: str
    version: int = 1
    rule: AlertRule
    severity: AlertSeverity
    title: str
    subject_kind: str
    subject_id: str
    raised_at: Timestamp
    event_time: Timestamp
    trigger_event_id: str
    trigger_type: str
    site: str
    program: str
    unit_count: int = 0
    units: list[str] = Field(default_factory=list)
    by_status: dict[str, int] = Field(default_factory=dict)
    by_customer: dict[str, int] = Field(default_factory=dict)
    by_site: dict[str, int] = Field(default_factory=dict)
    reference: str | None = None
    out_of_calibration: bool = False
    details: dict[str, str] = Field(default_factory=dict)

    def fingerprint(self) -> str:
        """Hash of what the alert says (not when or which version): a change means an update."""
        content = self.model_dump(
            mode="json", exclude={"version", "raised_at", "trigger_event_id", "event_time"}
        )
        for k in _VOLATILE_DETAILS:
            content["details"].pop(k, None)
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:32]

    def to_avro(self) -> dict[str, Any]:
        return self.model_dump()

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (ISO-8601 times), e.g. the webhook body."""
        return self.model_dump(mode="json")


@cache
def _schema() -> tuple[dict[str, Any], bytes]:
    raw = json.loads((SCHEMA_DIR / "Alert.avsc").read_text(encoding="utf-8"))
    parsed: dict[str, Any] = parse_schema(raw, named_schemas={})  # type: ignore[assignment]
    fp = bytes.fromhex(_fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))
    return parsed, SINGLE_OBJECT_MAGIC + fp


@cache
def _writers() -> dict[bytes, dict[str, Any]]:
    """Single-object header -> parsed writer schema, for the current and every earlier version."""
    parsed, header = _schema()
    out = {header: parsed}
    for path in sorted((SCHEMA_DIR / "history").glob("Alert.v*.avsc")):
        old: dict[str, Any] = parse_schema(json.loads(path.read_text(encoding="utf-8")), named_schemas={})  # type: ignore[assignment]
        fp = bytes.fromhex(_fingerprint(to_parsing_canonical_form(old), "CRC-64-AVRO"))
        out.setdefault(SINGLE_OBJECT_MAGIC + fp, old)
    return out


def alert_schema() -> dict[str, Any]:
    """The parsed Alert schema (do not mutate)."""
    return _schema()[0]


def encode_alert(alert: Alert) -> bytes:
    parsed, header = _schema()
    bio = BytesIO()
    bio.write(header)
    fastavro.schemaless_writer(bio, parsed, alert.to_avro())
    return bio.getvalue()


def decode_alert(data: bytes) -> Alert:
    """Kafka value -> Alert. Raises MalformedRecordError / UnknownSchemaError (both carry raw)."""
    parsed, header = _schema()
    if not data or len(data) < len(header) or data[:2] != SINGLE_OBJECT_MAGIC:
        raise MalformedRecordError(bytes(data or b""), "not an Avro single-object encoded alert")
    writer = _writers().get(bytes(data[: len(header)]))
    if writer is None:
        raise UnknownSchemaError(bytes(data), f"unknown alert schema fingerprint {data[2:10].hex()}")
    bio = BytesIO(data)
    bio.seek(len(header))
    try:
        rec = fastavro.schemaless_reader(bio, writer, None if writer is parsed else parsed)
    except (EOFError, ValueError, IndexError, KeyError, TypeError) as exc:
        raise MalformedRecordError(bytes(data), f"cannot decode Alert body: {exc}") from exc
    return Alert.model_validate(rec)
