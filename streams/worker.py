"""Entry point for a faust worker: ``python -m streams.worker worker -l info``.

Also ``faust -A streams.worker worker`` for users who scale out: start one per machine with
the same ``TRACELINE_*`` settings; faust spreads the partitions over them. Settings come
from the environment (``TRACELINE_KAFKA_BOOTSTRAP``, ``TRACELINE_KAFKA_PARTITIONS``, ...);
``TRACELINE_STREAMS_INSTANCE_ID`` names the worker for static group membership (default: app
id + host + data dir), so a restarted worker rejoins at once.
Building the app does not connect; the worker connects when it starts.
"""

from __future__ import annotations

import hashlib
import os
import socket

from streams.app import StreamsConfig, build_app
from traceline.settings import Settings


def instance_id(s: Settings) -> str:
    """The worker's static group-membership id: ``$TRACELINE_STREAMS_INSTANCE_ID``, else
    app id + host + a hash of its data dir (unique per worker, the same after a restart)."""
    given = os.environ.get("TRACELINE_STREAMS_INSTANCE_ID", "").strip()
    if given:
        return given
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


def _app():  # noqa: ANN202
    s = Settings()
    if not s.kafka.bootstrap:
        from traceline import localstack

        state = localstack.status(s.kafka_dir)
        if not state:
            raise SystemExit("no Kafka: set TRACELINE_KAFKA_BOOTSTRAP or run `traceline stack up`")
        s.kafka.bootstrap = str(state["bootstrap"])
    return build_app(config_from_settings(s, s.kafka.bootstrap))


app = _app()

if __name__ == "__main__":
    from traceline.orphans import exit_with_parent_from_env

    exit_with_parent_from_env()  # started by `traceline serve`: stop when the server is gone
    app.main()
