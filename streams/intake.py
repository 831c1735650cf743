"""Intake rules (pure): judge a raw record once, route its genealogy commands in batches.

A worker never dies on bad input: what has a bad framing, an unknown schema, a body that does
not decode, or cannot be used by the genealogy becomes a :class:`DeadLetter` carrying the raw
bytes and the reason; the caller sends it to the dead-letter topic and counts it.

The intake runs inside the sink's batch loop (``sinks.ingest.SinkWorker``): the sink decodes
every event once anyway (to land it), so the same decode feeds the genealogy. That keeps the
per-record cost of a stream processor off the hot path: the faust genealogy writer
(``streams.app``) reads **command batches**, one Kafka record per (intake batch, partition),
not one record per event.

Command batches
---------------
Each command is routed to the partition that owns its target key,
:func:`command_partition` (crc32 of the UII modulo the partition count of the command topic);
the writer and the intake use this one function, so every command for a unit reaches the
same partition and therefore the same faust table partition. A batch record is JSON:
``[[key, command_dict], ...]`` (:func:`encode_command_batch` / :func:`decode_command_batch`),
at most :data:`MAX_BATCH` commands.

Content hash
------------
An accepted record carries its ``content_hash`` (:func:`content_hash_of`): the first 64 bits
of the sha256 of its Avro body (the value without its single-object / Confluent framing
header, so one event hashes the same in either framing). The serde's encoding is
deterministic (the same event encodes to the same bytes), so a producer re-send hashes the
same and an event id re-used for different content does not: the sink tells a duplicate from
a conflict by it. (The same event written with another *writer schema* version has another
body, so it would count as a conflict: dead-lettered, never silently dropped.)
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pydantic_core

from schemas.errors import DecodeError, SchemaRegistryUnavailableError
from schemas.kafka import dead_letter_headers
from schemas.serde import CONFLUENT_MAGIC, SINGLE_OBJECT_MAGIC, AvroSerde
from streams.genealogy import Command, GenealogyInputError, Send, command_from_dict, commands_for_event

__all__ = [
    "implausible_time",
    "GENEALOGY_TYPES",
    "MAX_BATCH",
    "DeadLetter",
    "Accepted",
    "judge",
    "content_hash_of",
    "dead_letter",
    "command_partition",
    "batches_by_partition",
    "encode_command_batch",
    "decode_command_batch",
    "dead_letter_for_change",
]

GENEALOGY_TYPES = frozenset({"UnitAssembled", "UnitRemoved", "OperationCompleted"})
"""The event types ``streams.genealogy.commands_for_event`` turns into commands (the rest: [])."""

MAX_BATCH = 5000
"""Commands per batch record at most (a record stays well under Kafka's 1 MB default)."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]

    @property
    def error(self) -> str:
        """The error class named in the headers (``traceline.error``)."""
        for name, v in self.headers:
            if name == "traceline.error":
                return v.decode("utf-8", "replace")
        return ""


@dataclass(frozen=True, slots=True)
class Accepted:
    type_name: str
    record: dict[str, Any]
    commands: list[Send]
    content_hash: int = 0  # see content_hash_of(); 0: not known


_SO_HEADER = len(SINGLE_OBJECT_MAGIC) + 8  # + the schema fingerprint
_CF_HEADER = len(CONFLUENT_MAGIC) + 4  # + the schema id
_SO_FIRST, _CF_FIRST = SINGLE_OBJECT_MAGIC[0], CONFLUENT_MAGIC[0]
_sha256 = hashlib.sha256


def content_hash_of(value: bytes) -> int:
    """The first 64 bits (big-endian) of the sha256 of a decoded record's Avro body: ``value``
    without its framing header (the framing is known valid: ``AvroSerde.decode`` read it).
    Never 0 in practice (0 means "not known" to the sink)."""
    first = value[0] if value else -1
    body = value[_SO_HEADER:] if first == _SO_FIRST else value[_CF_HEADER:] if first == _CF_FIRST else value
    return int.from_bytes(_sha256(body).digest()[:8], "big")


def implausible_time(t: datetime, now: datetime, earliest: datetime, skew: timedelta) -> str | None:
    """Why ``t`` (an event time) is not plausible at ingest time ``now``, or None."""
    if t < earliest:
        return f"event_time {t.isoformat()} is before the earliest plausible time {earliest.isoformat()}"
    if t > now + skew:
        return (
            f"event_time {t.isoformat()} is more than {skew} after the ingest time {now.isoformat()}"
            " (a clock or a field gone wrong)"
        )
    return None


def dead_letter(
    key: bytes | None, value: bytes | None, topic: str, partition: int, offset: int, error: str, reason: str
) -> DeadLetter:
    return DeadLetter(key, value or b"", dead_letter_headers(topic, partition, offset, error, reason))


def judge(
    serde: AvroSerde, key: bytes | None, value: bytes | None, topic: str, partition: int, offset: int
) -> Accepted | DeadLetter:
    """Decode one raw record (once); return it with the genealogy commands it implies, or a
    dead letter saying why not.

    :class:`SchemaRegistryUnavailableError` is not the record's fault and propagates (the
    caller retries instead of dead-lettering).
    """
    try:
        if value is None:
            raise DecodeError(b"", "record has no value (tombstone)")
        type_name, record = serde.decode(value)
    except SchemaRegistryUnavailableError:
        raise
    except DecodeError as exc:
        return dead_letter(key, value, topic, partition, offset, type(exc).__name__, exc.reason)
    if type_name not in GENEALOGY_TYPES:
        return Accepted(type_name, record, [], content_hash_of(value))
    try:
        commands = commands_for_event(record, type_name)
    except GenealogyInputError as exc:
        return dead_letter(key, value, topic, partition, offset, "GenealogyInputError", str(exc))
    return Accepted(type_name, record, commands, content_hash_of(value))


def command_partition(key: str, partitions: int) -> int:
    """The command-topic partition that owns ``key`` (stable across processes and versions)."""
    return zlib.crc32(key.encode()) % partitions


def batches_by_partition(sends: Iterable[Send], partitions: int) -> Iterator[tuple[int, bytes, int]]:
    """Group commands by owning partition: ``(partition, batch record value, commands in it)``,
    at most :data:`MAX_BATCH` commands per record, order kept within a partition."""
    groups: dict[int, list[list[Any]]] = {}
    for key, cmd in sends:
        groups.setdefault(command_partition(key, partitions), []).append([key, cmd.to_dict()])
    for p in sorted(groups):
        items = groups[p]
        for i in range(0, len(items), MAX_BATCH):
            chunk = items[i : i + MAX_BATCH]
            yield p, encode_command_batch(chunk), len(chunk)


def encode_command_batch(items: list[list[Any]]) -> bytes:
    return pydantic_core.to_json(items)


def decode_command_batch(value: bytes) -> list[tuple[str, Command]]:
    """Inverse of :func:`encode_command_batch`. Raises ValueError / KeyError / TypeError on a
    record our own intake did not write (the writer dead-letters it)."""
    items = pydantic_core.from_json(value)
    if not isinstance(items, list):
        raise TypeError(f"a command batch is a JSON list, not {type(items).__name__}")
    out: list[tuple[str, Command]] = []
    for item in items:
        key, d = item
        if not isinstance(key, str):
            raise TypeError(f"command key must be a string, not {key!r}")
        out.append((key, command_from_dict(d)))
    return out


def dead_letter_for_change(change: dict[str, Any], topic: str, partition: int, offset: int) -> DeadLetter:
    """A genealogy change flagged by the cycle guard, as a dead letter for the analyst."""
    reason = (
        f"genealogy {change['error']}: {change['uii']} cut from its parent chain "
        f"(path {change.get('path')!r} would repeat a unit or exceed the depth limit)"
    )
    return DeadLetter(
        change["uii"].encode(),
        json.dumps(change).encode(),
        dead_letter_headers(topic, partition, offset, "GenealogyCycle", reason),
    )
