"""pydantic v2 models mirroring the Avro contract in ``schemas/avro/*.avsc``.

Field names and types follow the ``.avsc`` files exactly; ``tests/unit/test_schemas.py``
round-trips every model through fastavro against its schema so the two cannot drift.

These models are for the edges (connectors, CLI, API, tests). The hot path (stream
processors, sinks) works on the plain record dicts that :class:`schemas.serde.AvroSerde`
decodes, without pydantic.
"""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from schemas.uii import uii

__all__ = [
    "InspectionResult",
    "Transformation",
    "Verdict",
    "LotStatus",
    "TargetKind",
    "Severity",
    "Disposition",
    "Timestamp",
    "UnitRef",
    "LotQuantity",
    "Measurement",
    "EventBase",
    "MaterialReceived",
    "LotTransformed",
    "OperationCompleted",
    "UnitTested",
    "UnitAssembled",
    "UnitRemoved",
    "UnitShipped",
    "LotStatusChanged",
    "NonconformanceRaised",
    "EVENT_MODELS",
    "EVENT_TYPES",
    "AnyEvent",
    "uii",
    "to_epoch_ms",
    "from_epoch_ms",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# --------------------------------------------------------------------------- enums


class InspectionResult(StrEnum):
    ACCEPTED = "ACCEPTED"
    REJECTED = "REJECTED"
    CONDITIONAL = "CONDITIONAL"


class Transformation(StrEnum):
    SPLIT = "SPLIT"
    MERGE = "MERGE"
    PROCESS = "PROCESS"


class Verdict(StrEnum):
    PASS = "PASS"
    FAIL = "FAIL"
    ABORTED = "ABORTED"


class LotStatus(StrEnum):
    HOLD = "HOLD"
    QUARANTINE = "QUARANTINE"
    RELEASED = "RELEASED"
    SCRAPPED = "SCRAPPED"


class TargetKind(StrEnum):
    LOT = "LOT"
    SUPPLIER_LOT = "SUPPLIER_LOT"
    SERIAL = "SERIAL"
    STATION = "STATION"
    OPERATOR = "OPERATOR"
    BENCH = "BENCH"
    SUPPLIER = "SUPPLIER"


class Severity(StrEnum):
    MINOR = "MINOR"
    MAJOR = "MAJOR"
    CRITICAL = "CRITICAL"


class Disposition(StrEnum):
    PENDING = "PENDING"
    USE_AS_IS = "USE_AS_IS"
    REWORK = "REWORK"
    REPAIR = "REPAIR"
    SCRAP = "SCRAP"
    RETURN_TO_SUPPLIER = "RETURN_TO_SUPPLIER"


# --------------------------------------------------------------------------- field types


def to_epoch_ms(dt: datetime) -> int:
    """Aware datetime -> integer epoch milliseconds (floor)."""
    return (dt - _EPOCH) // timedelta(milliseconds=1)


def from_epoch_ms(ms: int) -> datetime:
    """Integer epoch milliseconds -> aware UTC datetime."""
    return _EPOCH + timedelta(milliseconds=ms)


def _coerce_timestamp(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("a timestamp must be an ISO-8601 string with offset or integer epoch milliseconds")
    if isinstance(value, int):
        try:
            return from_epoch_ms(value)
        except OverflowError:
            raise ValueError(f"epoch milliseconds {value} out of range") from None
    if isinstance(value, float):
        raise ValueError(
            "a timestamp must be an ISO-8601 string with offset or integer epoch milliseconds, not a float"
        )
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(
                f"{value!r} is not an ISO-8601 timestamp (expected e.g. '2026-11-26T10:15:00.123Z')"
            ) from None
    return value


def _normalise_timestamp(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(
            "naive timestamp (no UTC offset): event times must be timezone-aware, "
            "e.g. '2026-11-26T10:15:00.123Z' or '2026-11-26T11:15:00+01:00'"
        )
    value = value.astimezone(UTC)
    # Avro timestamp-millis: keep millisecond precision so models round-trip exactly.
    return value.replace(microsecond=value.microsecond - value.microsecond % 1000)


Timestamp = Annotated[datetime, BeforeValidator(_coerce_timestamp), AfterValidator(_normalise_timestamp)]
"""Aware UTC datetime at millisecond precision. Accepts ISO-8601 with offset, epoch ms, aware datetime."""

NonEmptyStr = Annotated[str, StringConstraints(min_length=1)]


def _check_uii_part(value: str) -> str:
    if not value or not value.strip():
        raise ValueError("must not be empty")
    if ":" in value:
        raise ValueError(f"{value!r} contains ':', which is reserved as the UII separator")
    return value


UiiPart = Annotated[str, AfterValidator(_check_uii_part)]


def _check_uuid(value: Any) -> str:
    if isinstance(value, uuid.UUID):
        return str(value)
    if not isinstance(value, str):
        raise ValueError("event_id must be a UUID string")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ValueError(f"{value!r} is not a UUID") from None


UuidStr = Annotated[str, BeforeValidator(_check_uuid)]


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


FiniteFloat = Annotated[float, AfterValidator(_finite)]
Quantity = Annotated[float, Field(ge=0), AfterValidator(_finite)]


_CONFIG = ConfigDict(frozen=True, extra="forbid", use_enum_values=True, strict=False)


# --------------------------------------------------------------------------- shared records


class UnitRef(BaseModel):
    """A serialised item, identified per part number (see :attr:`uii`)."""

    model_config = _CONFIG

    part_number: UiiPart
    serial_number: UiiPart

    @property
    def uii(self) -> str:
        return uii(self.part_number, self.serial_number)

    @classmethod
    def from_uii(cls, value: str) -> UnitRef:
        part, sep, serial = value.partition(":")
        if not sep:
            raise ValueError(f"{value!r} is not a UII '<part_number>:<serial_number>'")
        return cls(part_number=part, serial_number=serial)


class LotQuantity(BaseModel):
    model_config = _CONFIG

    lot_id: NonEmptyStr
    quantity: Quantity


class Measurement(BaseModel):
    model_config = _CONFIG

    name: NonEmptyStr
    value: FiniteFloat
    unit: str
    low_limit: FiniteFloat | None = None
    high_limit: FiniteFloat | None = None
    passed: bool


# --------------------------------------------------------------------------- events


class EventBase(BaseModel):
    """The common header. Subclasses add ``type`` (the discriminator) and their fields."""

    model_config = _CONFIG

    type: str
    event_id: UuidStr
    event_time: Timestamp
    source: NonEmptyStr
    site: NonEmptyStr
    program: NonEmptyStr

    def to_avro(self) -> dict[str, Any]:
        """The record dict fastavro writes against this event's schema (aware datetimes, str enums)."""
        return self.model_dump(exclude={"type"})

    @classmethod
    def from_avro(cls, type_name: str, record: dict[str, Any]) -> EventBase:
        """Build the model for ``type_name`` from a decoded Avro record dict."""
        model = EVENT_MODELS.get(type_name)
        if model is None:
            raise ValueError(f"unknown event type {type_name!r}")
        if cls is not EventBase and not issubclass(model, cls):
            raise ValueError(f"{type_name!r} is not a {cls.__name__}")
        return model.model_validate({**record, "type": type_name})

    def kafka_key(self) -> str:
        """The Kafka message key (unit UII, lot_id or ``<target_kind>:<target_id>``)."""
        raise NotImplementedError


class _UnitEvent(EventBase):
    unit: UnitRef

    def kafka_key(self) -> str:
        return self.unit.uii


class _LotEvent(EventBase):
    lot_id: NonEmptyStr

    def kafka_key(self) -> str:
        return self.lot_id


def _check_order(start: datetime | None, end: datetime | None, start_name: str, end_name: str) -> None:
    if start is not None and end is not None and end < start:
        raise ValueError(f"{end_name} ({end.isoformat()}) is before {start_name} ({start.isoformat()})")


class MaterialReceived(_LotEvent):
    """Material received into the plant as a new lot."""

    type: Literal["MaterialReceived"] = "MaterialReceived"
    part_number: NonEmptyStr
    supplier_id: NonEmptyStr
    supplier_lot: NonEmptyStr
    quantity: Quantity
    unit_of_measure: NonEmptyStr
    coc_reference: str | None = None
    inspection_result: InspectionResult


class LotTransformed(_LotEvent):
    """A new (output) lot made from input lots: split, merge or processing."""

    type: Literal["LotTransformed"] = "LotTransformed"
    part_number: NonEmptyStr
    transformation: Transformation
    inputs: list[LotQuantity]
    quantity: Quantity
    unit_of_measure: NonEmptyStr
    work_order: str | None = None
    station_id: str | None = None


class OperationCompleted(_UnitEvent):
    """A production operation finished on a unit (``creates_unit``: the unit was produced)."""

    type: Literal["OperationCompleted"] = "OperationCompleted"
    work_order: NonEmptyStr
    operation: NonEmptyStr
    station_id: NonEmptyStr
    operator_id: NonEmptyStr
    started_at: Timestamp
    finished_at: Timestamp
    creates_unit: bool
    consumed_lots: list[LotQuantity] = Field(default_factory=list)
    consumed_units: list[UnitRef] = Field(default_factory=list)

    @model_validator(mode="after")
    def _times(self) -> Self:
        _check_order(self.started_at, self.finished_at, "started_at", "finished_at")
        return self


class UnitTested(_UnitEvent):
    """A unit was tested on a bench."""

    type: Literal["UnitTested"] = "UnitTested"
    bench_id: NonEmptyStr
    procedure_id: NonEmptyStr
    procedure_version: NonEmptyStr
    calibration_id: NonEmptyStr
    calibration_due: Timestamp
    operator_id: str | None = None
    started_at: Timestamp
    finished_at: Timestamp
    measurements: list[Measurement] = Field(default_factory=list)
    verdict: Verdict

    @model_validator(mode="after")
    def _times(self) -> Self:
        _check_order(self.started_at, self.finished_at, "started_at", "finished_at")
        return self


class UnitAssembled(_UnitEvent):
    """A child unit (``unit``) was installed into ``parent``."""

    type: Literal["UnitAssembled"] = "UnitAssembled"
    parent: UnitRef
    position: NonEmptyStr
    work_order: str | None = None
    station_id: str | None = None
    operator_id: str | None = None

    @model_validator(mode="after")
    def _not_self(self) -> Self:
        if self.unit == self.parent:
            raise ValueError(f"a unit cannot be assembled into itself ({self.unit.uii})")
        return self


class UnitRemoved(_UnitEvent):
    """A child unit (``unit``) was removed from ``parent``."""

    type: Literal["UnitRemoved"] = "UnitRemoved"
    parent: UnitRef
    position: str | None = None
    reason: str
    work_order: str | None = None
    station_id: str | None = None
    operator_id: str | None = None


class UnitShipped(_UnitEvent):
    """A unit was shipped to a customer."""

    type: Literal["UnitShipped"] = "UnitShipped"
    shipment_id: NonEmptyStr
    customer_id: NonEmptyStr
    contract: NonEmptyStr
    destination_site: NonEmptyStr
    end_system: str | None = None


class LotStatusChanged(_LotEvent):
    """A lot was put on hold / quarantined / released / scrapped."""

    type: Literal["LotStatusChanged"] = "LotStatusChanged"
    status: LotStatus
    reason: str


class NonconformanceRaised(EventBase):
    """A nonconformance report against a lot, supplier lot, serial, station, operator, bench or supplier."""

    type: Literal["NonconformanceRaised"] = "NonconformanceRaised"
    ncr_id: NonEmptyStr
    target_kind: TargetKind
    target_id: NonEmptyStr
    window_start: Timestamp | None = None
    window_end: Timestamp | None = None
    severity: Severity
    disposition: Disposition
    description: str

    @model_validator(mode="after")
    def _check(self) -> Self:
        _check_order(self.window_start, self.window_end, "window_start", "window_end")
        if self.target_kind in (TargetKind.SERIAL, TargetKind.SUPPLIER_LOT):
            first, sep, second = self.target_id.partition(":")
            if not sep or not first or not second or ":" in second:
                expected = (
                    "'<part_number>:<serial_number>'"
                    if self.target_kind == TargetKind.SERIAL
                    else "'<supplier_id>:<supplier_lot>'"
                )
                raise ValueError(f"target_id {self.target_id!r} for {self.target_kind} must be {expected}")
        return self

    def kafka_key(self) -> str:
        return f"{self.target_kind}:{self.target_id}"


_ALL: tuple[type[EventBase], ...] = (
    MaterialReceived,
    LotTransformed,
    OperationCompleted,
    UnitTested,
    UnitAssembled,
    UnitRemoved,
    UnitShipped,
    LotStatusChanged,
    NonconformanceRaised,
)

EVENT_MODELS: dict[str, type[EventBase]] = {m.model_fields["type"].default: m for m in _ALL}
"""Event type name (= Avro record name) -> model class."""

EVENT_TYPES: tuple[str, ...] = tuple(EVENT_MODELS)

AnyEvent = Annotated[
    MaterialReceived
    | LotTransformed
    | OperationCompleted
    | UnitTested
    | UnitAssembled
    | UnitRemoved
    | UnitShipped
    | LotStatusChanged
    | NonconformanceRaised,
    Field(discriminator="type"),
]
"""Discriminated union of all events (use with ``pydantic.TypeAdapter(AnyEvent)``)."""
