"""Fixtures for the end-to-end pipeline tests: a real ``traceline serve`` per test.

``pipeline(partitions=3, **opts)`` builds Settings with the test's data dir and a unique topic
prefix / events topic, starts a :class:`traceline.serve.Server` (faust worker child + sink
thread, no API) on the session broker, and stops it (and any extra servers) at teardown.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from traceline.serve import ServeOptions, Server
from traceline.settings import Settings


def pipeline_settings(tmp_path: Path, topic_prefix: str, partitions: int = 3) -> Settings:
    s = Settings(data_dir=tmp_path / "data")
    s.kafka.topic_prefix = topic_prefix
    s.kafka.events_topic = f"{topic_prefix}events"
    s.kafka.partitions = partitions
    s.kafka.replication = 1
    s.clickhouse.dsn = ""  # the embedded store under the test's data dir
    s.schema_registry.url = None
    return s


@pytest.fixture
def pipeline(kafka_bootstrap: str, tmp_path: Path, topic_prefix: str) -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def start(partitions: int = 3, settings: Settings | None = None, **opts: Any) -> Server:
        s = settings or pipeline_settings(tmp_path, topic_prefix, partitions)
        opts.setdefault("with_api", False)
        opts.setdefault("sink_batch_size", 2_000)
        opts.setdefault("sink_batch_seconds", 0.3)
        server = Server(s, ServeOptions(kafka_bootstrap, **opts))
        servers.append(server)
        server.start()
        return server

    yield start
    for server in reversed(servers):
        server.stop()
