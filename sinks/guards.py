"""The sink's guards: what keeps one bad record, a bad clock, a re-used event id or a failed
commit from stopping the sink or fooling its readers (used by ``sinks.ingest.SinkWorker``).

* :class:`RecentIds` - recently landed event ids with their content hash: the same id with the
  same hash is a duplicate, with another hash a conflict (:func:`conflict_reason`).
* ``streams.intake.implausible_time`` (the alert engine applies it too) - an event time before
  ``earliest`` or after the ingest time plus the allowed skew is quarantined, not landed.
* :func:`fit_dead_letter` - a dead letter larger than the producer may send is sent *by
  reference* (a prefix of the record and headers naming its size and sha256);
  :func:`refused_as_record` says when Kafka refused one record for what it is (its size) rather
  than being unavailable, so the sink falls back to that form instead of failing the batch.
* :func:`commit_failure` - how to treat a failed offset commit: retry it (coordinator moving,
  timeouts), give it up because the partitions went to another member (rebalance), or give it
  up for another reason; the batch landed either way, and its replay is a no-op.
* :class:`SinkError` - the one error ``SinkWorker.run()`` raises: the supervisor restarts it.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Literal

from confluent_kafka import KafkaError, KafkaException

from schemas.errors import TracelineError
from schemas.kafka import dead_letter_reference
from streams.intake import DeadLetter

__all__ = [
    "SinkError",
    "RecentIds",
    "UNKNOWN_HASH",
    "conflict_reason",
    "dead_letter_size",
    "fit_dead_letter",
    "refused_as_record",
    "commit_failure",
    "REVOKED_CODES",
    "RETRIABLE_COMMIT_CODES",
]


class SinkError(TracelineError):
    """The sink stopped on an error it cannot handle itself (recorded in ``stats.last_error``);
    build a new ``SinkWorker`` and run it again (``traceline.serve`` does, with back-off)."""


UNKNOWN_HASH = 0
"""The content hash of an event landed before hashes were stored: a re-use is a duplicate."""


class RecentIds:
    """A bounded map of recently landed event ids to their content hash (oldest dropped first)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._ids: OrderedDict[str, int] = OrderedDict()

    def __contains__(self, key: str) -> bool:
        return key in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def get(self, key: str) -> int | None:
        return self._ids.get(key)

    def add(self, key: str, content_hash: int = UNKNOWN_HASH) -> None:
        self._ids[key] = content_hash
        if len(self._ids) > self.limit:
            self._ids.popitem(last=False)


def conflict_reason(event_id: str, first: int, this: int) -> str:
    """The reason of a ``ConflictingDuplicate`` dead letter: the id and both content hashes."""
    return (
        f"event id {event_id} re-used with different content: first landed with content hash"
        f" {first:016x}, this record has {this:016x} (first 64 bits of the sha256 of the Avro body)"
    )


def dead_letter_size(d: DeadLetter) -> int:
    """Bytes of a dead letter as the producer counts them (value, key and headers)."""
    return len(d.value) + len(d.key or b"") + sum(len(k) + len(v) for k, v in d.headers)


def fit_dead_letter(d: DeadLetter, max_bytes: int, prefix_bytes: int, *, force: bool = False) -> DeadLetter:
    """``d`` itself when it fits in ``max_bytes``, else (or with ``force``) its by-reference
    form: the first ``prefix_bytes`` of the record (and of its key) with the headers of
    ``schemas.kafka.dead_letter_reference``."""
    if not force and dead_letter_size(d) <= max_bytes:
        return d
    if any(name == "traceline.ref_truncated" for name, _v in d.headers):
        return d  # already by reference
    value, ref = dead_letter_reference(d.value, prefix_bytes)
    key = d.key[:prefix_bytes] if d.key is not None else None
    return DeadLetter(key, value, list(d.headers) + ref)


# Kafka refused the record itself, not the connection: the by-reference form will go through
_REFUSED_RECORD = frozenset(
    {KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE, KafkaError.INVALID_RECORD}
)


def _error_of(err: Any) -> Any:
    if isinstance(err, KafkaException):
        return err.args[0] if err.args else None
    return err


def refused_as_record(err: Any) -> bool:
    """True when ``err`` (a KafkaError / KafkaException from produce or a delivery report) says
    the record was refused for what it is (too large, invalid)."""
    code = getattr(_error_of(err), "code", None)
    return callable(code) and code() in _REFUSED_RECORD


REVOKED_CODES = frozenset(
    {
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError.REBALANCE_IN_PROGRESS,
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.FENCED_INSTANCE_ID,
        KafkaError.STALE_MEMBER_EPOCH,
        KafkaError._MAX_POLL_EXCEEDED,
        KafkaError._ASSIGNMENT_LOST,
    }
)
"""Commit errors that mean this member lost its partitions (a rebalance): give the commit up."""

RETRIABLE_COMMIT_CODES = frozenset(
    {
        KafkaError._WAIT_COORD,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError._TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
    }
)
"""Commit errors worth another try after a pause (besides those KafkaError calls retriable)."""


def commit_failure(err: Any) -> Literal["retry", "revoked", "give_up"]:
    """How to treat a failed commit: ``retry`` it after a pause, give it up because the
    partitions were ``revoked``, or ``give_up`` (another error: the next commit of the same
    partitions covers these offsets; a restart replays them as a no-op)."""
    e = _error_of(err)
    code_of = getattr(e, "code", None)
    code = code_of() if callable(code_of) else None
    if code in REVOKED_CODES:
        return "revoked"
    retriable = getattr(e, "retriable", None)
    fatal = getattr(e, "fatal", None)
    if callable(fatal) and fatal():
        return "give_up"
    if code in RETRIABLE_COMMIT_CODES or (callable(retriable) and retriable()):
        return "retry"
    return "give_up"
