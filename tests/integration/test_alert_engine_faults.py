"""The alert engine against a real broker survives a commit after it lost its group membership.

The engine waits for the sink before it evaluates a batch; a wait longer than the consumer's
``max.poll.interval.ms`` makes librdkafka leave the group, and the batch's commit then fails
with ``UNKNOWN_MEMBER_ID`` (what killed the engine's thread in the field). The engine gives
that batch up, rejoins, re-reads it, and goes on committing later batches.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from schemas.kafka import ensure_topics
from schemas.topics import TopicNames
from streams.alert_engine import AlertEngine
from tests.unit.test_alert_engine_faults import FakeEvaluator, alert

pytestmark = pytest.mark.integration


def _committed(bootstrap: str, group: str, topic: str, partitions: int) -> int:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        tps = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return sum(max(tp.offset, 0) for tp in tps)
    finally:
        c.close()


def test_a_commit_after_losing_the_group_does_not_kill_the_engine(
    kafka_bootstrap: str, topic_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    topics = TopicNames(events=f"{topic_prefix}events", prefix=topic_prefix)
    ensure_topics(kafka_bootstrap, topics, partitions=2)
    calls = 0

    def landed() -> dict[tuple[str, int], int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            time.sleep(9)  # a slow sink: longer than max.poll.interval.ms, the member is dropped
        return {(topics.events, p): 10**9 for p in range(2)}

    group = f"{topic_prefix}alerts"
    engine = AlertEngine(
        kafka_bootstrap,
        FakeEvaluator([[alert("A1")], [alert("A2")], [alert("A3")]]),
        topics=topics,
        group_id=group,
        landed=landed,
        consumer_overrides={
            "session.timeout.ms": 6000,
            "max.poll.interval.ms": 6000,
            "heartbeat.interval.ms": 500,
        },
    )
    raised: list[BaseException] = []

    def run() -> None:
        try:
            engine.run()
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    caplog.set_level(logging.WARNING, logger="streams.alert_engine")
    thread.start()
    producer = Producer({"bootstrap.servers": kafka_bootstrap})

    def send(n: int, tag: bytes) -> None:
        for i in range(n):
            producer.produce(topics.events, key=b"k%d" % i, value=tag)  # undecodable: no rule reads it
        assert producer.flush(10) == 0

    def wait_for(what: str, cond: Any, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            assert not raised, raised
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {engine.stats.as_dict()}"
            time.sleep(0.2)

    try:
        time.sleep(2)  # subscribed and assigned
        send(5, b"first")
        wait_for("the commit after the rebalance", lambda: engine.stats.commits_given_up >= 1)
        assert thread.is_alive() and not raised
        assert any(
            code in engine.stats.last_error or code in caplog.text
            for code in ("UNKNOWN_MEMBER_ID", "ILLEGAL_GENERATION", "REBALANCE_IN_PROGRESS")
        ), caplog.text
        send(5, b"second")
        wait_for(
            "later batches committed", lambda: _committed(kafka_bootstrap, group, topics.events, 2) == 10
        )
        assert thread.is_alive() and not raised
        assert engine.stats.commits >= 1
    finally:
        engine.stop()
        thread.join(20)
    assert not thread.is_alive() and raised == []
