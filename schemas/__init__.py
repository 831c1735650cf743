"""traceline event contract: Avro schemas, pydantic models, serde and errors.

The ``.avsc`` files in ``schemas/avro/`` are the contract (see ``schemas/README.md``).
"""

from schemas.errors import (
    BrokerUnavailableError,
    DecodeError,
    EventValidationError,
    MalformedRecordError,
    OutboxFullError,
    OversizeEventError,
    SchemaRegistryUnavailableError,
    TracelineError,
    UnknownSchemaError,
)
from schemas.jsonform import parse_event, parse_line, to_json, to_json_line
from schemas.models import (
    EVENT_MODELS,
    EVENT_TYPES,
    AnyEvent,
    Disposition,
    EventBase,
    InspectionResult,
    LotQuantity,
    LotStatus,
    LotStatusChanged,
    LotTransformed,
    MaterialReceived,
    Measurement,
    NonconformanceRaised,
    OperationCompleted,
    Severity,
    TargetKind,
    Transformation,
    UnitAssembled,
    UnitRef,
    UnitRemoved,
    UnitShipped,
    UnitTested,
    Verdict,
    uii,
)
from schemas.serde import SCHEMA_FILES, AvroSerde, raw_schema, schema_for, subject_for

__all__ = [
    # errors
    "TracelineError",
    "EventValidationError",
    "DecodeError",
    "UnknownSchemaError",
    "MalformedRecordError",
    "OversizeEventError",
    "OutboxFullError",
    "BrokerUnavailableError",
    "SchemaRegistryUnavailableError",
    # models
    "EventBase",
    "AnyEvent",
    "EVENT_MODELS",
    "EVENT_TYPES",
    "UnitRef",
    "LotQuantity",
    "Measurement",
    "MaterialReceived",
    "LotTransformed",
    "OperationCompleted",
    "UnitTested",
    "UnitAssembled",
    "UnitRemoved",
    "UnitShipped",
    "LotStatusChanged",
    "NonconformanceRaised",
    "InspectionResult",
    "Transformation",
    "Verdict",
    "LotStatus",
    "TargetKind",
    "Severity",
    "Disposition",
    "uii",
    # json form
    "parse_event",
    "parse_line",
    "to_json",
    "to_json_line",
    # serde
    "AvroSerde",
    "SCHEMA_FILES",
    "schema_for",
    "raw_schema",
    "subject_for",
]
