"""The local Kafka 4 (KRaft) stack: up, topics, produce/consume with both client libraries we use
(confluent-kafka for publishers, aiokafka under faust), idempotent ``up``, stop/start with data."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from tests.conftest import create_topic
from traceline import localstack

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _produce(bootstrap: str, topic: str, values: list[bytes], key: bytes | None = None) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all"})
    errors: list[object] = []
    for value in values:
        producer.produce(
            topic, value=value, key=key, on_delivery=lambda err, _msg: err and errors.append(err)
        )
    assert producer.flush(30) == 0
    assert not errors


def _consume(bootstrap: str, topic: str, group: str, count: int, timeout: float = 30.0) -> list[bytes]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    got: list[bytes] = []
    try:
        deadline = time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            got.append(msg.value())
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    return got


def test_broker_answers_metadata(kafka_bootstrap: str, kafka_admin: AdminClient) -> None:
    md = kafka_admin.list_topics(timeout=10)
    assert len(md.brokers) == 1
    assert md.cluster_id


def test_topic_produce_consume_confluent(kafka_bootstrap: str, make_topic, topic_prefix: str) -> None:
    topic = make_topic(f"{topic_prefix}events", partitions=3)
    md = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(topic=topic, timeout=10)
    assert len(md.topics[topic].partitions) == 3

    values = [json.dumps({"serial": f"SN{i:04d}"}).encode() for i in range(10)]
    _produce(kafka_bootstrap, topic, values)
    got = _consume(kafka_bootstrap, topic, f"{topic_prefix}g", len(values))
    assert sorted(got) == sorted(values)


def test_auto_create_uses_three_partitions(kafka_bootstrap: str, kafka_admin, topic_prefix: str) -> None:
    if os.environ.get("TRACELINE_KAFKA_BOOTSTRAP") or os.environ.get("KAFKA_BOOTSTRAP"):
        pytest.skip("broker defaults are only ours on the local stack")
    topic = f"{topic_prefix}auto"
    _produce(kafka_bootstrap, topic, [b"x"])
    assert len(kafka_admin.list_topics(topic=topic, timeout=10).topics[topic].partitions) == 3


def test_aiokafka_roundtrip(kafka_bootstrap: str, make_topic, topic_prefix: str) -> None:
    """faust-streaming runs on aiokafka: idempotent producer, group consumer, offset commit."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    topic = make_topic(f"{topic_prefix}faust", partitions=3)
    values = [f"lot-{i}".encode() for i in range(20)]

    async def run() -> list[bytes]:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=True, acks="all")
        await producer.start()
        try:
            for i, value in enumerate(values):
                await producer.send_and_wait(topic, value, key=str(i % 5).encode())
        finally:
            await producer.stop()

        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=kafka_bootstrap,
            group_id=f"{topic_prefix}faust-group",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        got: list[bytes] = []
        try:
            async with asyncio.timeout(60):
                while len(got) < len(values):
                    batch = await consumer.getmany(timeout_ms=1000)
                    for records in batch.values():
                        got.extend(r.value for r in records)
            await consumer.commit()
        finally:
            await consumer.stop()
        return got

    got = asyncio.run(run())
    assert sorted(got) == sorted(values)


def test_up_twice_is_harmless(local_broker: localstack.LocalBroker) -> None:
    first = localstack.status(local_broker.data_dir)
    assert first is not None
    again = localstack.up(local_broker.data_dir)
    assert again == local_broker.bootstrap
    second = localstack.status(local_broker.data_dir)
    assert second is not None and second["pid"] == first["pid"]


def test_stop_start_same_port_keeps_data(local_broker: localstack.LocalBroker, topic_prefix: str) -> None:
    bootstrap = local_broker.bootstrap
    assert bootstrap is not None
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topic = create_topic(admin, f"{topic_prefix}outbox", partitions=2)
    values = [f"ev-{i}".encode() for i in range(5)]
    _produce(bootstrap, topic, values)

    local_broker.stop()
    assert not local_broker.running
    assert localstack.status(local_broker.data_dir) is None

    assert local_broker.start() == bootstrap  # same port
    assert sorted(_consume(bootstrap, topic, f"{topic_prefix}g", len(values))) == sorted(values)


def test_stale_pid_file_is_cleaned(tmp_path: Path) -> None:
    data_dir = tmp_path / "kafka"
    data_dir.mkdir()
    (data_dir / "kafka.pid").write_text("999999999\n")
    assert localstack.status(data_dir) is None
    assert not (data_dir / "kafka.pid").exists()
    assert localstack.down(data_dir) is False


def test_cli_help_and_status() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-m", "traceline.localstack", "--help"], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0 and "up" in out.stdout and "down" in out.stdout
    st = subprocess.run(
        [sys.executable, "-m", "traceline.localstack", "status", "--data-dir", "/nonexistent/traceline"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert st.returncode == 1
    assert json.loads(st.stdout)["running"] is False


def test_missing_java_message_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(localstack.shutil, "which", lambda _name: None)
    with pytest.raises(localstack.MissingToolError, match="apt-get install openjdk-17-jre-headless maven"):
        localstack._require_tool("java")
