"""Shared pytest fixtures: a real Kafka broker for the integration tier.

* ``kafka_bootstrap`` (session): ``$TRACELINE_KAFKA_BOOTSTRAP`` (or ``$KAFKA_BOOTSTRAP``) when
  set, else one local KRaft broker (``traceline.localstack``) started for the whole session in
  a temp dir and stopped at the end.
* ``topic_prefix``: unique per test, so tests never see each other's topics or groups.
* ``kafka_admin`` / ``make_topic``: create topics (deleted again after the test).
* ``local_broker``: a broker of the test's own, with ``.stop()`` / ``.start()`` on the same
  ports and data (store-and-forward / outbox tests), ``.kill()`` for a crash.

Fixtures are lazy: unit tests never start or touch a broker.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from traceline import localstack

if TYPE_CHECKING:
    from confluent_kafka.admin import AdminClient

BOOTSTRAP_ENV_VARS = ("TRACELINE_KAFKA_BOOTSTRAP", "KAFKA_BOOTSTRAP")


def _external_bootstrap() -> str | None:
    for var in BOOTSTRAP_ENV_VARS:
        value = os.environ.get(var, "").strip()
        if value:
            return value
    return None


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap servers of a running broker shared by the session."""
    external = _external_bootstrap()
    if external:
        yield external
        return
    data_dir = tmp_path_factory.mktemp("kafka-session")
    bootstrap = localstack.up(data_dir)
    try:
        yield bootstrap
    finally:
        localstack.down(data_dir)


@pytest.fixture
def topic_prefix() -> str:
    """A unique topic / group-id prefix for one test, e.g. ``t1a2b3c4d.``."""
    return f"t{uuid.uuid4().hex[:8]}."


@pytest.fixture(scope="session")
def kafka_admin(kafka_bootstrap: str) -> AdminClient:
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": kafka_bootstrap})


def create_topic(admin: AdminClient, name: str, partitions: int = 3, timeout: float = 30.0) -> str:
    """Create ``name`` and wait until the broker reports it with all its partitions."""
    import time

    from confluent_kafka.admin import NewTopic

    futures = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1)], request_timeout=timeout
    )
    futures[name].result(timeout=timeout)
    deadline = time.monotonic() + timeout
    while True:
        md = admin.list_topics(topic=name, timeout=5)
        tmd = md.topics.get(name)
        if tmd is not None and tmd.error is None and len(tmd.partitions) == partitions:
            if all(p.leader >= 0 for p in tmd.partitions.values()):
                return name
        if time.monotonic() > deadline:
            raise TimeoutError(f"topic {name} not ready after {timeout}s: {tmd}")
        time.sleep(0.1)


@pytest.fixture
def make_topic(kafka_admin: AdminClient) -> Iterator[Callable[..., str]]:
    """``make_topic(name, partitions=3) -> name``: create a topic; deleted after the test.

    The name is used as given; build it from ``topic_prefix`` to keep tests apart.
    """
    created: list[str] = []

    def _make(name: str, partitions: int = 3) -> str:
        create_topic(kafka_admin, name, partitions)
        created.append(name)
        return name

    yield _make
    if created:
        for fut in kafka_admin.delete_topics(created, request_timeout=15).values():
            # best-effort cleanup of a test topic: a failure here must not fail the test
            with contextlib.suppress(Exception):
                fut.result(timeout=15)


@pytest.fixture
def local_broker(tmp_path: Path) -> Iterator[localstack.LocalBroker]:
    """A started broker of this test's own; ``stop()``/``start()`` keep ports and data."""
    broker = localstack.LocalBroker(tmp_path / "kafka")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
