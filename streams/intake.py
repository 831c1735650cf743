"""Intake rules (pure): decode a raw record once, or turn it into a dead letter.

A worker never dies on bad input: what has a bad framing or an unknown schema, what the
genealogy needs but does not decode, or cannot be used by the genealogy becomes a
:class:`DeadLetter` carrying the raw bytes and the reason, and the caller sends it to the
dead-letter topic and counts it.

Only the event types the genealogy reads (:data:`GENEALOGY_TYPES`) are decoded here; for the
others the framing is checked (fingerprint / schema id -> type) and the body is not decoded
(the sink decodes every event once anyway). A record of such a type whose body does not
decode is therefore dead-lettered by the sink (``sinks.consumer``, same reason and headers'
content, straight into ``dead_letters``), never by both: :func:`intake_judges` is the rule
both sides apply.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from schemas.errors import DecodeError, SchemaRegistryUnavailableError
from schemas.serde import AvroSerde
from streams.genealogy import Command, GenealogyInputError, commands_for_event

__all__ = [
    "GENEALOGY_TYPES",
    "DeadLetter",
    "Accepted",
    "route",
    "intake_judges",
    "encode_command",
    "dead_letter_for_change",
]

GENEALOGY_TYPES = frozenset({"UnitAssembled", "UnitRemoved", "OperationCompleted"})
"""The event types ``streams.genealogy.commands_for_event`` turns into commands (the rest: [])."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class Accepted:
    type_name: str
    record: dict[str, Any] | None  # None: a type the genealogy ignores (body not decoded)
    commands: list[tuple[str, Command]]


def _headers(topic: str, partition: int, offset: int, error: str, reason: str) -> list[tuple[str, bytes]]:
    return [
        ("traceline.source_topic", topic.encode()),
        ("traceline.source_partition", str(partition).encode()),
        ("traceline.source_offset", str(offset).encode()),
        ("traceline.error", error.encode()),
        ("traceline.reason", reason.encode("utf-8", "replace")[:1000]),
    ]


def route(
    serde: AvroSerde, key: bytes | None, value: bytes | None, topic: str, partition: int, offset: int
) -> Accepted | DeadLetter:
    """Decode one raw record; return the genealogy commands it implies, or a dead letter.

    :class:`SchemaRegistryUnavailableError` is not the record's fault and propagates (the
    caller retries instead of dead-lettering).
    """
    try:
        if value is None:
            raise DecodeError(b"", "record has no value (tombstone)")
        type_name = serde.peek_type(value)
        if type_name not in GENEALOGY_TYPES:
            return Accepted(type_name, None, [])  # not decoded: the sink judges its body
        type_name, record = serde.decode(value)
    except SchemaRegistryUnavailableError:
        raise
    except DecodeError as exc:
        return DeadLetter(
            key, value or b"", _headers(topic, partition, offset, type(exc).__name__, exc.reason)
        )
    try:
        commands = commands_for_event(record, type_name)
    except GenealogyInputError as exc:
        return DeadLetter(key, value, _headers(topic, partition, offset, "GenealogyInputError", str(exc)))
    return Accepted(type_name, record, commands)


def intake_judges(serde: AvroSerde, value: bytes | None) -> bool:
    """True when the intake dead-letters ``value`` if it is bad (bad framing, unknown schema,
    or a type the genealogy decodes); False for a well-framed record of another type, whose
    body only the sink decodes (so the sink dead-letters it when the body is bad)."""
    if value is None:
        return True
    try:
        return serde.peek_type(value) in GENEALOGY_TYPES
    except SchemaRegistryUnavailableError:
        raise
    except DecodeError:
        return True


def encode_command(cmd: Command) -> bytes:
    return json.dumps(cmd.to_dict(), separators=(",", ":")).encode()


def dead_letter_for_change(change: dict[str, Any], topic: str, partition: int, offset: int) -> DeadLetter:
    """A genealogy change flagged by the cycle guard, as a dead letter for the analyst."""
    reason = (
        f"genealogy {change['error']}: {change['uii']} cut from its parent chain "
        f"(path {change.get('path')!r} would repeat a unit or exceed the depth limit)"
    )
    return DeadLetter(
        change["uii"].encode(),
        json.dumps(change).encode(),
        _headers(topic, partition, offset, "GenealogyCycle", reason),
    )
