"""Topic names and their creation, from one place.

Keyed topics get their partition count once, up front (``TRACELINE_KAFKA_PARTITIONS``):
changing the partition count of a keyed topic moves keys and breaks the genealogy table,
so :func:`ensure_topics` refuses to touch an existing topic whose count differs.
"""

from __future__ import annotations

from confluent_kafka.admin import AdminClient, NewTopic

from schemas.errors import BrokerUnavailableError, TracelineError
from schemas.topics import TopicNames

__all__ = ["TopicNames", "ensure_topics", "TopicMismatchError"]


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
    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.connection.setup.timeout.ms": 5000})
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
