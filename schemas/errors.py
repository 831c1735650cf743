"""The traceline error hierarchy.

One root, :class:`TracelineError`; every subclass carries the data a caller needs to route,
count or report the failure (raw bytes, reason, topic/partition/offset, sizes). Producers,
streams and sinks subclass :class:`TracelineError` for their own failures.

Bad events are data: catch :class:`EventValidationError` / :class:`DecodeError` and send the
payload to a dead-letter topic with ``err.reason`` (headers: ``schemas.kafka.dead_letter_headers``),
never skip them. Bad input from a person (an unknown trigger kind, an unknown report format, a
setting that does not parse) is an :class:`InvalidInputError`; ``traceline.errors`` maps every
error to one HTTP status and one CLI exit code.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "TracelineError",
    "InvalidInputError",
    "NotFoundError",
    "EventValidationError",
    "DecodeError",
    "UnknownSchemaError",
    "MalformedRecordError",
    "OversizeEventError",
    "OutboxFullError",
    "BrokerUnavailableError",
    "SchemaRegistryUnavailableError",
]


class TracelineError(Exception):
    """Root of every error traceline raises on purpose."""

    reason: str = ""


class InvalidInputError(TracelineError, ValueError):
    """A person's input is not usable: a wrong argument, query parameter or setting.

    ``field`` names the argument (``"kind"``, ``"format"``, ``"TRACELINE_CHDB_..."``) or is None.
    A ``ValueError`` too, so callers that validate with plain ``ValueError`` handling still work.
    """

    def __init__(self, reason: str, field: str | None = None) -> None:
        self.reason = reason
        self.field = field
        super().__init__(reason)


class NotFoundError(TracelineError):
    """An identifier the store has never seen: a lot, supplier lot, supplier, unit, station,
    operator or bench. Never answered as an empty result, which would read like "nothing
    affected". ``suggestions`` are the closest known identifiers (``"<kind>:<id>"``, best
    first); ``searched`` says where it was looked for."""

    def __init__(self, kind: str, ident: str, suggestions: list[str], searched: str) -> None:
        self.kind = kind
        self.ident = ident
        self.suggestions = suggestions
        self.searched = searched
        hint = "; no similar identifier known"
        if suggestions:
            hint = f"; did you mean: {', '.join(suggestions)}?"
        self.reason = f"{kind} {ident!r} not found (searched {searched}){hint}"
        super().__init__(self.reason)


class EventValidationError(TracelineError, ValueError):
    """An event (JSON form, model input or Avro record dict) does not match the contract.

    ``field`` is the dotted path of the first offending field (``"unit.serial_number"``) or
    ``None``; ``raw`` is the offending input (line, dict or model), kept for the dead-letter copy.
    """

    def __init__(self, reason: str, field: str | None = None, raw: Any = None) -> None:
        self.reason = reason
        self.field = field
        self.raw = raw
        super().__init__(reason)


class DecodeError(TracelineError):
    """Bytes read from Kafka (or the outbox) could not be turned into an event.

    Always carries the raw bytes and a reason, and where it was read when the reader knows.
    """

    def __init__(
        self,
        raw: bytes,
        reason: str,
        topic: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
    ) -> None:
        self.raw = raw
        self.reason = reason
        self.topic = topic
        self.partition = partition
        self.offset = offset
        super().__init__(reason)

    def __str__(self) -> str:
        where = ""
        if self.topic is not None:
            where = f" [{self.topic}/{self.partition}@{self.offset}]"
        return f"{self.reason}{where}"


class UnknownSchemaError(DecodeError):
    """The record names a schema we do not know (unknown fingerprint or registry schema id)."""


class MalformedRecordError(DecodeError):
    """The bytes are not a valid encoding (truncated, garbage, wrong framing)."""


class OversizeEventError(TracelineError):
    """An encoded event is larger than the broker accepts (``message.max.bytes``)."""

    def __init__(self, size: int, limit: int, type_name: str | None = None) -> None:
        self.size = size
        self.limit = limit
        self.type_name = type_name
        what = type_name or "event"
        self.reason = f"encoded {what} is {size} bytes, over the {limit}-byte limit"
        super().__init__(self.reason)


class OutboxFullError(TracelineError):
    """The local store-and-forward outbox reached its limit; the caller must slow down."""

    def __init__(self, pending: int, limit: int) -> None:
        self.pending = pending
        self.limit = limit
        self.reason = f"outbox full: {pending} events pending, limit {limit}"
        super().__init__(self.reason)


class BrokerUnavailableError(TracelineError):
    """The Kafka cluster cannot be reached."""

    def __init__(self, bootstrap: str, reason: str) -> None:
        self.bootstrap = bootstrap
        self.reason = reason
        super().__init__(f"Kafka broker {bootstrap} unavailable: {reason}")


class SchemaRegistryUnavailableError(TracelineError):
    """The schema registry failed (unreachable, or refused to register a schema)."""

    def __init__(self, url: str | None, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"schema registry {url or '<injected client>'}: {reason}")
