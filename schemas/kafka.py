"""Kafka client plumbing, in one place: client configs, topic creation, consumer lag, the
position of a consumed record, and the dead-letter headers (written by the intake, read by
the sink).

Every part that talks to Kafka (publisher, sink, alert engine, CLI, ``traceline serve``)
takes its client settings from here, so they cannot drift: idempotent producers with
``acks=all`` and the ``murmur2_random`` partitioner (the Java client's and faust's key
hashing), consumers with manual commits. Keyed topics get their partition count once, up
front (``TRACELINE_KAFKA_PARTITIONS``): changing the partition count of a keyed topic moves
keys and breaks the genealogy table, so :func:`ensure_topics` refuses to touch an existing
command topic whose count differs.

Security: a plant's cluster runs SASL_SSL (or SSL) with ACLs. The process's client security
(:class:`KafkaSecurity`: protocol, SASL mechanism, user, password, CA file) is set once by
the entry point from its settings (:func:`use_security`; ``traceline.settings`` reads it from
``TRACELINE_KAFKA_*``) and every client made here, and every config built by
:func:`client_config`, carries it; the faust worker gets the same
(``streams.app.broker_credentials``).
"""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, Message, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec

from schemas.errors import BrokerUnavailableError, TracelineError
from schemas.topics import TopicNames

__all__ = [
    "KafkaSecurity",
    "use_security",
    "client_security",
    "client_config",
    "producer_config",
    "consumer_config",
    "message_position",
    "TopicMismatchError",
    "ensure_topics",
    "group_lag",
    "pipeline_lag",
    "DLQ_HEADERS",
    "DLQ_REF_HEADERS",
    "dead_letter_headers",
    "read_dead_letter_headers",
    "bad_dead_letter_headers",
    "dead_letter_reference",
    "read_dead_letter_reference",
]


# -- security --------------------------------------------------------------------------------
PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")


@dataclass(frozen=True)
class KafkaSecurity:
    """How this process authenticates to Kafka and checks the broker's certificate."""

    protocol: str = "PLAINTEXT"
    mechanism: str = "SCRAM-SHA-512"
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"Kafka security protocol {self.protocol!r}: use one of {', '.join(PROTOCOLS)}")
        if self.sasl and self.mechanism not in MECHANISMS:
            raise ValueError(f"SASL mechanism {self.mechanism!r}: use one of {', '.join(MECHANISMS)}")
        if self.sasl and not (self.username and self.password):
            raise ValueError(f"Kafka security protocol {self.protocol} needs a SASL user and password")
        if self.ca_file is not None and not Path(self.ca_file).is_file():
            raise ValueError(f"Kafka CA file {self.ca_file} does not exist")

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    def librdkafka(self) -> dict[str, Any]:
        """The confluent-kafka (librdkafka) properties: empty for PLAINTEXT."""
        conf: dict[str, Any] = {}
        if self.protocol != "PLAINTEXT":
            conf["security.protocol"] = self.protocol
        if self.sasl:
            conf.update({"sasl.mechanisms": self.mechanism, "sasl.username": self.username})
            conf["sasl.password"] = self.password
        if self.tls and self.ca_file is not None:
            conf["ssl.ca.location"] = str(self.ca_file)
        return conf

    def ssl_context(self) -> ssl.SSLContext | None:
        """For Python clients (aiokafka under faust): verifies the broker against the CA file
        (else the system's CAs) and its host name; None without TLS."""
        if not self.tls:
            return None
        return ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)

    def describe(self) -> str:
        """For messages: protocol and user, never the password."""
        who = f" as {self.username}" if self.sasl else ""
        return f"{self.protocol}{who}"


_SECURITY = KafkaSecurity()


def use_security(security: KafkaSecurity) -> None:
    """Set the client security of this process (every client made after this carries it)."""
    global _SECURITY
    if security != _SECURITY:
        _SECURITY = security
        _ADMINS.clear()


def client_security() -> KafkaSecurity:
    return _SECURITY


def client_config(bootstrap: str, **overrides: Any) -> dict[str, Any]:
    """``bootstrap.servers`` and this process's security: the base of every client config."""
    return {"bootstrap.servers": bootstrap, **_SECURITY.librdkafka(), **overrides}


# -- clients ---------------------------------------------------------------------------------
def producer_config(bootstrap: str, **overrides: Any) -> dict[str, Any]:
    """The producer settings traceline relies on (idempotent, acks=all, murmur2_random)."""
    conf: dict[str, Any] = {
        **client_config(bootstrap),
        "enable.idempotence": True,
        "acks": "all",
        "partitioner": "murmur2_random",
        "compression.type": "lz4",
        "linger.ms": 20,
        "batch.num.messages": 10_000,
        "queue.buffering.max.messages": 200_000,
        "message.timeout.ms": 60_000,
        "socket.connection.setup.timeout.ms": 10_000,
        "reconnect.backoff.max.ms": 2_000,
    }
    conf.update(overrides)
    return conf


def consumer_config(bootstrap: str, group_id: str, **overrides: Any) -> dict[str, Any]:
    """A consumer with manual commits (offsets move only after the work is done)."""
    conf: dict[str, Any] = {
        **client_config(bootstrap),
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "fetch.min.bytes": 1,
        "fetch.wait.max.ms": 100,
        "max.partition.fetch.bytes": 4 * 1024 * 1024,
        "queued.max.messages.kbytes": 64 * 1024,
        "session.timeout.ms": 15_000,
        "partition.assignment.strategy": "cooperative-sticky",
    }
    conf.update(overrides)
    return conf


def message_position(m: Message) -> tuple[str, int, int]:
    """(topic, partition, offset) of a consumed message (never None for a non-error message)."""
    return str(m.topic()), int(m.partition() or 0), int(m.offset() or 0)


_ADMINS: dict[str, AdminClient] = {}


def _admin(bootstrap: str) -> AdminClient:
    """One admin client per bootstrap for the process (progress loops call this every second)."""
    if bootstrap not in _ADMINS:
        _ADMINS[bootstrap] = AdminClient(
            client_config(bootstrap, **{"socket.connection.setup.timeout.ms": 5000, "log_level": 3})
        )
    return _ADMINS[bootstrap]


# -- topics ----------------------------------------------------------------------------------
class TopicMismatchError(TracelineError):
    """An existing topic has another partition count than the configured one."""

    def __init__(self, topic: str, have: int, want: int) -> None:
        self.topic, self.have, self.want = topic, have, want
        super().__init__(
            f"topic {topic!r} has {have} partitions but traceline is configured for {want}; "
            "keyed topics cannot be repartitioned in place (set TRACELINE_KAFKA_PARTITIONS to match)"
        )


def ensure_topics(
    bootstrap: str, names: TopicNames, *, partitions: int, replication: int = 1, timeout: float = 30.0
) -> None:
    """Create missing topics with ``partitions``; check existing ones have that count."""
    admin = AdminClient(client_config(bootstrap, **{"socket.connection.setup.timeout.ms": 5000}))
    try:
        meta = admin.list_topics(timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - KafkaException or transport error: unreachable
        raise BrokerUnavailableError(bootstrap, str(exc)) from exc
    missing = []
    for name in names.all():
        t = meta.topics.get(name)
        if t is None or t.error is not None:
            missing.append(NewTopic(name, num_partitions=partitions, replication_factor=replication))
        elif name == names.commands and len(t.partitions) != partitions:
            # the genealogy table is co-partitioned with its command topic
            raise TopicMismatchError(name, len(t.partitions), partitions)
    if not missing:
        return
    for name, fut in admin.create_topics(missing, operation_timeout=timeout).items():
        try:
            fut.result(timeout)
        except Exception as exc:  # noqa: BLE001
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise BrokerUnavailableError(bootstrap, f"cannot create topic {name}: {exc}") from exc


# -- lag -------------------------------------------------------------------------------------
def group_lag(bootstrap: str, group: str, topics: Iterable[str], *, timeout: float = 10.0) -> int:
    """Sum over the topics' partitions of (end offset - the group's committed offset)."""
    admin = _admin(bootstrap)
    try:
        meta = admin.list_topics(timeout=timeout)
        tps = [
            TopicPartition(t, p)
            for t in topics
            if t in meta.topics and meta.topics[t].error is None
            for p in meta.topics[t].partitions
        ]
        if not tps:
            return 0
        ends = admin.list_offsets({tp: OffsetSpec.latest() for tp in tps}, request_timeout=timeout)
        end = {(tp.topic, tp.partition): f.result().offset for tp, f in ends.items()}
        fut = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group, tps)])
        committed = {
            (tp.topic, tp.partition): tp.offset for tp in next(iter(fut.values())).result().topic_partitions
        }
    except Exception as exc:  # noqa: BLE001 - any admin failure means the broker is not usable
        # a broker restart can leave the cached client with stale metadata (UNKNOWN_LEADER_EPOCH
        # on every call, seen in the chaos suite): the next call builds a fresh one
        _ADMINS.pop(bootstrap, None)
        raise BrokerUnavailableError(bootstrap, f"cannot read consumer lag: {exc}") from exc
    lag = 0
    for key, e in end.items():
        c = committed.get(key, -1)
        lag += e - (c if c >= 0 else 0)
    return lag


def pipeline_lag(
    bootstrap: str, topics: TopicNames, *, app_id: str, sink_group: str, timeout: float = 10.0
) -> dict[str, int]:
    """How far the stream worker (command topic) and the sink (events, changes, dead letters)
    are behind. The intake runs in the sink, so these two groups are the whole pipeline."""
    return {
        "streams": group_lag(bootstrap, app_id, [topics.commands], timeout=timeout),
        "sink": group_lag(
            bootstrap, sink_group, [topics.events, topics.changes, topics.deadletter], timeout=timeout
        ),
    }


# -- dead letters ----------------------------------------------------------------------------
DLQ_HEADERS = (
    "traceline.source_topic",
    "traceline.source_partition",
    "traceline.source_offset",
    "traceline.error",
    "traceline.reason",
)
"""The headers of a dead-letter record: where the bad record was read, the error's name and
the reason (at most 1,000 bytes)."""


def dead_letter_headers(
    topic: str, partition: int, offset: int, error: str, reason: str
) -> list[tuple[str, bytes]]:
    """The headers a dead-letter record carries (see :data:`DLQ_HEADERS`)."""
    return [
        ("traceline.source_topic", topic.encode()),
        ("traceline.source_partition", str(partition).encode()),
        ("traceline.source_offset", str(offset).encode()),
        ("traceline.error", error.encode()),
        ("traceline.reason", reason.encode("utf-8", "replace")[:1000]),
    ]


def read_dead_letter_headers(headers: Iterable[tuple[str, Any]] | None) -> dict[str, Any]:
    """The fields of a dead-letter record's headers: source_topic, source_partition,
    source_offset (-1 when missing or not a number in range), error, reason. Never raises on
    what another writer put there (see :func:`bad_dead_letter_headers`)."""
    got = _header_map(headers)
    return {
        "source_topic": _text(got, "traceline.source_topic"),
        "source_partition": _number(got, "traceline.source_partition", _INT32_MAX),
        "source_offset": _number(got, "traceline.source_offset", _INT64_MAX),
        "error": _text(got, "traceline.error"),
        "reason": _text(got, "traceline.reason"),
    }


def bad_dead_letter_headers(headers: Iterable[tuple[str, Any]] | None) -> list[str]:
    """The traceline headers of a dead-letter record that are present but unreadable (a number
    that is not one, or out of range), as ``name=value`` for a reason; [] when all are fine."""
    got = _header_map(headers)
    bad = []
    for name, limit in _NUMERIC.items():
        text = _text(got, name)
        if text and _number(got, name, limit) == -1 and text != "-1":
            bad.append(f"{name}={text[:40]!r}")
    return bad


DLQ_REF_HEADERS = ("traceline.ref_size", "traceline.ref_sha256", "traceline.ref_truncated")
"""The headers of a dead letter sent *by reference* (its record was too large to copy): the
record's size in bytes, the sha256 of its bytes (hex) and ``1``; the value is then only the
first bytes of the record (:func:`dead_letter_reference`)."""


def dead_letter_reference(value: bytes, prefix_bytes: int = 4096) -> tuple[bytes, list[tuple[str, bytes]]]:
    """The by-reference form of a dead letter's value: its first ``prefix_bytes`` bytes and
    the headers that name the whole record (:data:`DLQ_REF_HEADERS`), to add to the
    :func:`dead_letter_headers`."""
    return bytes(value[:prefix_bytes]), [
        ("traceline.ref_size", str(len(value)).encode()),
        ("traceline.ref_sha256", hashlib.sha256(value).hexdigest().encode()),
        ("traceline.ref_truncated", b"1"),
    ]


def read_dead_letter_reference(headers: Iterable[tuple[str, Any]] | None, value: bytes) -> dict[str, Any]:
    """``raw_size``, ``raw_sha256`` and ``raw_truncated`` of a dead letter: from its reference
    headers when it was sent by reference, otherwise computed from ``value`` (the whole record)."""
    got = _header_map(headers)
    if _text(got, "traceline.ref_truncated") == "1":
        size = _number(got, "traceline.ref_size", _INT64_MAX)
        digest = _text(got, "traceline.ref_sha256").lower()
        if size >= 0 and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest):
            return {"raw_size": size, "raw_sha256": digest, "raw_truncated": True}
    return {"raw_size": len(value), "raw_sha256": hashlib.sha256(value).hexdigest(), "raw_truncated": False}


_INT32_MAX = 2**31 - 1
_INT64_MAX = 2**63 - 1
_NUMERIC = {"traceline.source_partition": _INT32_MAX, "traceline.source_offset": _INT64_MAX}


def _header_map(headers: Iterable[tuple[str, Any]] | None) -> Mapping[str, Any]:
    if isinstance(headers, Mapping):
        return headers
    return dict(headers or [])


def _text(got: Mapping[str, Any], name: str) -> str:
    v = got.get(name)
    if v is None:
        return ""
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _number(got: Mapping[str, Any], name: str, limit: int) -> int:
    """The header as an int in [-1, limit]; -1 when missing, not a number or out of range."""
    try:
        n = int(_text(got, name).strip() or -1)
    except ValueError:
        return -1
    return n if -1 <= n <= limit else -1
