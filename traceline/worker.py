"""Entry point of a faust stream worker: ``python -m traceline.worker worker -l info``.

Also ``faust -A traceline.worker worker`` for users who scale out: start one per machine with
the same ``TRACELINE_*`` settings; faust spreads the partitions over them. The settings come
from the one settings tree (``traceline.settings``: ``TRACELINE_KAFKA_BOOTSTRAP``,
``TRACELINE_KAFKA_PARTITIONS``, ...; ``traceline serve`` derives a child's environment from its
own settings with ``Settings.worker_env``). ``TRACELINE_STREAMS_INSTANCE_ID`` names the worker
for static group membership (default: app id + host + data dir), so a restarted worker rejoins
at once. The app itself is ``streams.app.build_app``; building it does not connect, the worker
connects when it starts.
"""

from __future__ import annotations

import hashlib
import socket
from typing import Any

from streams.app import StreamsConfig, build_app
from traceline import localstack
from traceline.orphans import exit_with_parent
from traceline.settings import Settings, load_settings

__all__ = ["app", "instance_id", "config_from_settings"]


def instance_id(s: Settings) -> str:
    """The worker's static group-membership id: the configured one, else app id + host + a
    hash of its data dir (unique per worker, the same after a restart)."""
    if s.worker.instance_id.strip():
        return s.worker.instance_id.strip()
    where = hashlib.sha1(str((s.data_dir / "streams").resolve()).encode()).hexdigest()[:10]  # noqa: S324
    return f"{s.app_id}-{socket.gethostname()}-{where}"


def config_from_settings(s: Settings, bootstrap: str) -> StreamsConfig:
    return StreamsConfig(
        group_instance_id=instance_id(s),
        bootstrap=bootstrap,
        data_dir=s.data_dir / "streams",
        topics=s.topics,
        partitions=s.kafka.partitions,
        replication=s.kafka.replication,
        app_id=s.app_id,
    )


def _app(s: Settings) -> Any:
    bootstrap = s.kafka.bootstrap
    if not bootstrap:
        state = localstack.status(s.kafka_dir)
        if not state:
            raise SystemExit("no Kafka: set TRACELINE_KAFKA_BOOTSTRAP or run `traceline stack up`")
        bootstrap = str(state["bootstrap"])
    return build_app(config_from_settings(s, bootstrap))


settings = load_settings()
app = _app(settings)

if __name__ == "__main__":
    if settings.worker.parent_pid is not None:
        exit_with_parent(settings.worker.parent_pid)  # started by `traceline serve`: stop when it is gone
    app.main()
