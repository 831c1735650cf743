"""Consumer lag: how far the stream worker and the sink are behind the topics they read.

The pipeline has caught up when the stream worker's group has no lag on the command topic
(the intake runs in the sink) and the sink's group has no lag on the events, changes and dead-letter
topics, for a short quiet period (a command can still be in flight between two checks).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from schemas.errors import BrokerUnavailableError
from schemas.topics import TopicNames

__all__ = ["group_lag", "pipeline_lag", "wait_caught_up"]


_ADMINS: dict[str, AdminClient] = {}


def _admin(bootstrap: str) -> AdminClient:
    """One admin client per bootstrap for the process (progress loops call this every second)."""
    if bootstrap not in _ADMINS:
        _ADMINS[bootstrap] = AdminClient(
            {"bootstrap.servers": bootstrap, "socket.connection.setup.timeout.ms": 5000, "log_level": 3}
        )
    return _ADMINS[bootstrap]


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
        raise BrokerUnavailableError(bootstrap, f"cannot read consumer lag: {exc}") from exc
    lag = 0
    for key, e in end.items():
        c = committed.get(key, -1)
        lag += e - (c if c >= 0 else 0)
    return lag


def pipeline_lag(bootstrap: str, topics: TopicNames, *, app_id: str, sink_group: str) -> dict[str, int]:
    return {
        "streams": group_lag(bootstrap, app_id, [topics.commands]),
        "sink": group_lag(bootstrap, sink_group, [topics.events, topics.changes, topics.deadletter]),
    }


def wait_caught_up(
    bootstrap: str,
    topics: TopicNames,
    *,
    app_id: str,
    sink_group: str,
    timeout: float = 300.0,
    quiet: float = 3.0,
    progress: Callable[[dict[str, int]], None] | None = None,
) -> bool:
    """Wait until both groups have no lag for ``quiet`` seconds. False on timeout."""
    deadline = time.monotonic() + timeout
    zero_since: float | None = None
    while time.monotonic() < deadline:
        lag = pipeline_lag(bootstrap, topics, app_id=app_id, sink_group=sink_group)
        if progress is not None:
            progress(lag)
        if lag["streams"] == 0 and lag["sink"] == 0:
            zero_since = zero_since or time.monotonic()
            if time.monotonic() - zero_since >= quiet:
                return True
        else:
            zero_since = None
        time.sleep(0.5)
    return False
