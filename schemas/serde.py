"""Avro binary encoding of traceline events (fastavro, schemaless).

Two framings, chosen by configuration, both understood by :meth:`AvroSerde.decode`:

* **no registry** (default): Avro single-object encoding —
  ``b"\\xc3\\x01"`` + 8-byte little-endian CRC-64-AVRO fingerprint of the schema's parsing
  canonical form + Avro binary body. Decoding looks the fingerprint up among the known
  event schemas (plus any extra writer versions added with :meth:`AvroSerde.add_writer_schema`).
* **schema registry** (``registry_url`` or an injected ``registry_client``): Confluent wire
  format — ``b"\\x00"`` + 4-byte big-endian schema id + body. Each event schema is registered
  under ``f"{topic}-{FullName}"`` (TopicRecordNameStrategy); ids are cached both ways. A schema id
  written by another (older/newer) version of the contract is fetched once and resolved
  against our reader schema (Avro schema evolution).

The hot path (:meth:`AvroSerde.decode`) uses only precomputed parsed schemas, a dict lookup and
``fastavro.schemaless_reader``; no pydantic. Records are plain dicts: timestamps come back as
aware UTC datetimes, enums as str, nested records as dicts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from io import BytesIO
from pathlib import Path
from struct import error as StructError
from typing import Any

import fastavro
from fastavro.schema import fingerprint as _fingerprint
from fastavro.schema import parse_schema, to_parsing_canonical_form

from schemas.errors import (
    EventValidationError,
    MalformedRecordError,
    OversizeEventError,
    SchemaRegistryUnavailableError,
    UnknownSchemaError,
)
from schemas.models import EventBase

__all__ = [
    "AvroSerde",
    "NAMESPACE",
    "SCHEMA_DIR",
    "SCHEMA_FILES",
    "SINGLE_OBJECT_MAGIC",
    "CONFLUENT_MAGIC",
    "schema_for",
    "raw_schema",
    "schema_fingerprint",
    "subject_for",
]

NAMESPACE = "traceline.events"
SCHEMA_DIR = Path(__file__).parent / "avro"
NON_EVENT_SCHEMAS = frozenset({"Alert"})  # not events: Alert.avsc has its own serde (schemas.alert)
SCHEMA_FILES: dict[str, Path] = {
    p.stem: p for p in sorted(SCHEMA_DIR.glob("*.avsc")) if p.stem not in NON_EVENT_SCHEMAS
}
"""Event type name -> its ``.avsc`` file (the contract)."""

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = b"\x00"
_SO_HEADER = 10  # magic (2) + fingerprint (8)
_CF_HEADER = 5  # magic (1) + schema id (4)

# What fastavro raises on bytes that are not a valid encoding of the writer schema.
_READ_ERRORS = (
    EOFError,
    StopIteration,
    ValueError,  # includes UnicodeDecodeError
    IndexError,
    KeyError,
    TypeError,
    OverflowError,
    MemoryError,
    StructError,
)
_WRITE_ERRORS = (TypeError, ValueError, KeyError, AttributeError, OverflowError, StructError)


@dataclass(frozen=True, slots=True)
class _Schema:
    type_name: str
    raw: dict[str, Any]
    parsed: dict[str, Any]
    canonical: str
    fingerprint: bytes  # 8 bytes, little-endian CRC-64-AVRO, as written in single-object encoding


def _parse(raw: dict[str, Any]) -> dict[str, Any]:
    # A fresh named-type namespace per event: every file defines UnitRef & co. inline.
    parsed: dict[str, Any] = parse_schema(raw, named_schemas={})  # type: ignore[assignment]
    return parsed


def _build(raw: dict[str, Any]) -> _Schema:
    parsed = _parse(raw)
    canonical = to_parsing_canonical_form(parsed)
    fp = bytes.fromhex(_fingerprint(canonical, "CRC-64-AVRO"))
    name = raw["name"].rsplit(".", 1)[-1]
    return _Schema(name, raw, parsed, canonical, fp)


@cache
def _known() -> dict[str, _Schema]:
    out: dict[str, _Schema] = {}
    for name, path in SCHEMA_FILES.items():
        schema = _build(json.loads(path.read_text(encoding="utf-8")))
        if schema.type_name != name:
            raise RuntimeError(f"{path} defines record {schema.type_name!r}, expected {name!r}")
        out[name] = schema
    return out


def _get(type_name: str) -> _Schema:
    try:
        return _known()[type_name]
    except KeyError:
        known = ", ".join(sorted(_known()))
        raise EventValidationError(
            f"unknown event type {type_name!r} (known: {known})", field="type", raw=type_name
        ) from None


def schema_for(type_name: str) -> dict[str, Any]:
    """The parsed (fastavro) schema of an event type. Do not mutate."""
    return _get(type_name).parsed


def raw_schema(type_name: str) -> dict[str, Any]:
    """The schema exactly as in its ``.avsc`` file (with docs), e.g. for a registry. Do not mutate."""
    return _get(type_name).raw


def schema_fingerprint(type_name: str) -> bytes:
    """The 8-byte CRC-64-AVRO fingerprint (little-endian) used in single-object encoding."""
    return _get(type_name).fingerprint


def subject_for(topic: str, type_name: str) -> str:
    """Schema registry subject under TopicRecordNameStrategy."""
    return f"{topic}-{NAMESPACE}.{type_name}"


# (type name, writer schema, reader schema or None when identical)
_Entry = tuple[str, dict[str, Any], dict[str, Any] | None]


class AvroSerde:
    """Encode / decode traceline events as Avro binary.

    ``AvroSerde()`` uses single-object encoding; ``AvroSerde(registry_url=...)`` (or
    ``registry_client=``, any object with ``register_schema(subject, Schema) -> int`` and
    ``get_schema(schema_id) -> Schema``) uses the Confluent wire format. Not connected until the
    first encode/decode that needs the registry. Thread-safe for decode; encode caches are benign
    under races.
    """

    def __init__(
        self,
        registry_url: str | None = None,
        topic: str = "traceline.events",
        max_message_bytes: int = 1_000_000,
        registry_client: Any = None,
    ) -> None:
        self.registry_url = registry_url
        self.topic = topic
        self.max_message_bytes = max_message_bytes
        self._registry = registry_client
        self._schemas = _known()
        self._by_fp: dict[bytes, _Entry] = {
            s.fingerprint: (s.type_name, s.parsed, None) for s in self._schemas.values()
        }
        self._so_headers: dict[str, bytes] = {
            s.type_name: SINGLE_OBJECT_MAGIC + s.fingerprint for s in self._schemas.values()
        }
        self._cf_headers: dict[str, bytes] = {}
        self._by_id: dict[int, _Entry] = {}

    # ------------------------------------------------------------------ properties

    @property
    def uses_registry(self) -> bool:
        """True when encoding uses the Confluent wire format."""
        return self._registry is not None or self.registry_url is not None

    @property
    def types(self) -> tuple[str, ...]:
        return tuple(self._schemas)

    def _client(self) -> Any:
        if self._registry is None:
            if self.registry_url is None:
                return None
            from confluent_kafka.schema_registry import SchemaRegistryClient

            self._registry = SchemaRegistryClient({"url": self.registry_url})
        return self._registry

    # ------------------------------------------------------------------ encode

    def encode(self, type_name: str, record: dict[str, Any]) -> bytes:
        """Encode an Avro record dict of ``type_name``.

        Raises :class:`EventValidationError` (unknown type / record does not match the schema),
        :class:`OversizeEventError`, :class:`SchemaRegistryUnavailableError`.
        """
        schema = self._schemas.get(type_name)
        if schema is None:
            schema = _get(type_name)  # raises EventValidationError
        header = self._registry_header(type_name) if self.uses_registry else self._so_headers[type_name]
        bio = BytesIO()
        bio.write(header)
        try:
            fastavro.schemaless_writer(bio, schema.parsed, record)
        except _WRITE_ERRORS as exc:
            raise _explain_write_error(schema, record, exc) from exc
        data = bio.getvalue()
        if len(data) > self.max_message_bytes:
            raise OversizeEventError(len(data), self.max_message_bytes, type_name)
        return data

    def encode_event(self, event: EventBase) -> bytes:
        """Encode a pydantic event model."""
        return self.encode(event.type, event.to_avro())

    def _registry_header(self, type_name: str) -> bytes:
        header = self._cf_headers.get(type_name)
        if header is None:
            schema = self._schemas[type_name]
            client = self._client()
            from confluent_kafka.schema_registry import Schema

            try:
                schema_id = int(
                    client.register_schema(
                        subject_for(self.topic, type_name), Schema(json.dumps(schema.raw), "AVRO")
                    )
                )
            except _registry_errors() as exc:
                raise SchemaRegistryUnavailableError(
                    self.registry_url, f"registering {subject_for(self.topic, type_name)}: {exc}"
                ) from exc
            header = CONFLUENT_MAGIC + schema_id.to_bytes(4, "big")
            self._cf_headers[type_name] = header
            self._by_id.setdefault(schema_id, (type_name, schema.parsed, None))
        return header

    # ------------------------------------------------------------------ decode

    def peek_type(self, data: bytes) -> str:
        """The event type named by a Kafka value's framing, without decoding the body.

        Reads only the header (single-object fingerprint or Confluent schema id). Raises what
        :meth:`decode` raises for a bad header (:class:`MalformedRecordError`,
        :class:`UnknownSchemaError`, :class:`SchemaRegistryUnavailableError`); a body that does
        not decode is only found by :meth:`decode`.
        """
        return self._header(data)[0][0]

    def _header(self, data: bytes) -> tuple[_Entry, int]:
        if data is None or len(data) < 2:
            raise MalformedRecordError(bytes(data or b""), "empty or too short for any event framing")
        if data[0] == 0xC3 and data[1] == 0x01:
            if len(data) < _SO_HEADER:
                raise MalformedRecordError(bytes(data), "truncated single-object header")
            entry = self._by_fp.get(data[2:_SO_HEADER])
            if entry is None:
                raise UnknownSchemaError(
                    bytes(data), f"unknown schema fingerprint {bytes(data[2:_SO_HEADER]).hex()}"
                )
            return entry, _SO_HEADER
        if data[0] == 0:
            if len(data) < _CF_HEADER:
                raise MalformedRecordError(bytes(data), "truncated Confluent wire-format header")
            schema_id = int.from_bytes(data[1:_CF_HEADER], "big")
            return self._by_id.get(schema_id) or self._fetch_schema_id(schema_id, data), _CF_HEADER
        raise MalformedRecordError(
            bytes(data), f"unknown framing: first byte 0x{data[0]:02x} (expected 0xc3 0x01 or 0x00)"
        )

    def decode(self, data: bytes) -> tuple[str, dict[str, Any]]:
        """Decode one Kafka value into ``(type_name, record_dict)``.

        Raises :class:`MalformedRecordError` (bad framing, truncated or garbage body),
        :class:`UnknownSchemaError` (unknown fingerprint / schema id) — both carry ``raw`` and
        ``reason`` — or :class:`SchemaRegistryUnavailableError` (registry down: retry, do not
        dead-letter).
        """
        entry, start = self._header(data)
        type_name, writer, reader = entry
        bio = BytesIO(data)
        bio.seek(start)
        try:
            record = fastavro.schemaless_reader(bio, writer, reader)
        except _READ_ERRORS as exc:
            raise MalformedRecordError(
                bytes(data), f"cannot decode {type_name} body: {type(exc).__name__}: {exc}"
            ) from exc
        if bio.tell() != len(data):
            raise MalformedRecordError(
                bytes(data), f"{len(data) - bio.tell()} trailing bytes after the {type_name} record"
            )
        return type_name, record  # type: ignore[return-value]

    def decode_event(self, data: bytes) -> EventBase:
        """Decode into a pydantic model (edges only: not for the hot path)."""
        type_name, record = self.decode(data)
        return EventBase.from_avro(type_name, record)

    def _fetch_schema_id(self, schema_id: int, data: bytes) -> _Entry:
        client = self._client()
        if client is None:
            raise UnknownSchemaError(
                bytes(data),
                f"Confluent wire format (schema id {schema_id}) but no schema registry configured",
            )
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        try:
            registered = client.get_schema(schema_id)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                raise UnknownSchemaError(bytes(data), f"unknown schema id {schema_id}") from exc
            raise SchemaRegistryUnavailableError(
                self.registry_url, f"fetching schema id {schema_id}: {exc}"
            ) from exc
        except LookupError as exc:  # fakes / caches that raise KeyError
            raise UnknownSchemaError(bytes(data), f"unknown schema id {schema_id}") from exc
        except _registry_errors() as exc:
            raise SchemaRegistryUnavailableError(
                self.registry_url, f"fetching schema id {schema_id}: {exc}"
            ) from exc
        try:
            entry = self._resolve_writer(json.loads(registered.schema_str))
        except (ValueError, TypeError, KeyError) as exc:
            raise UnknownSchemaError(
                bytes(data), f"schema id {schema_id} is not a traceline event: {exc}"
            ) from exc
        self._by_id[schema_id] = entry
        return entry

    # ------------------------------------------------------------------ evolution

    def add_writer_schema(self, schema: dict[str, Any] | str) -> bytes:
        """Accept records written with another version of an event schema (single-object framing).

        The record name must be a known event type; records are resolved against our current
        (reader) schema. Returns the writer fingerprint.
        """
        raw = json.loads(schema) if isinstance(schema, str) else schema
        entry = self._resolve_writer(raw)
        fp = bytes.fromhex(_fingerprint(to_parsing_canonical_form(entry[1]), "CRC-64-AVRO"))
        self._by_fp[fp] = entry
        return fp

    def _resolve_writer(self, raw: dict[str, Any]) -> _Entry:
        if not isinstance(raw, dict) or raw.get("type") != "record":
            raise ValueError("not an Avro record schema")
        name = str(raw.get("name", ""))
        namespace = raw.get("namespace")
        if "." not in name and namespace:
            name = f"{namespace}.{name}"
        ns, _, type_name = name.rpartition(".")
        ours = self._schemas.get(type_name)
        if ours is None or ns != NAMESPACE:
            raise ValueError(f"record {name!r} is not a known event type")
        writer = _parse(raw)
        if to_parsing_canonical_form(writer) == ours.canonical:
            return (type_name, ours.parsed, None)
        return (type_name, writer, ours.parsed)


def _registry_errors() -> tuple[type[BaseException], ...]:
    import httpx
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    return (SchemaRegistryError, httpx.HTTPError, OSError)


def _explain_write_error(schema: _Schema, record: Any, exc: BaseException) -> EventValidationError:
    """Turn a fastavro write failure into an EventValidationError naming the field (slow path)."""
    from fastavro.validation import ValidationError, validate

    if not isinstance(record, dict):
        return EventValidationError(
            f"{schema.type_name} record must be a dict, not {type(record).__name__}", raw=record
        )
    try:
        validate(record, schema.parsed, raise_errors=True)
    except ValidationError as verr:
        errors = getattr(verr, "errors", None) or []
        if errors:
            first = errors[0]
            field = str(getattr(first, "field", "") or "") or None
            for prefix in (f"{NAMESPACE}.{schema.type_name}.", f"{NAMESPACE}."):
                if field and field.startswith(prefix):
                    field = field[len(prefix) :]
                    break
            datum = getattr(first, "datum", None)
            return EventValidationError(
                f"{schema.type_name}.{field}: {datum!r} does not match the schema", field=field, raw=record
            )
        return EventValidationError(f"{schema.type_name}: {verr}", raw=record)
    except _WRITE_ERRORS as verr:
        return EventValidationError(f"{schema.type_name}: {verr}", raw=record)
    return EventValidationError(f"{schema.type_name}: {type(exc).__name__}: {exc}", raw=record)
