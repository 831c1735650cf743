"""Entry point for a faust worker: ``python -m streams.worker worker -l info``.

Also ``faust -A streams.worker worker`` for users who scale out: start one per machine with
the same ``TRACELINE_*`` settings; faust spreads the partitions over them. Settings come
from the environment (``TRACELINE_KAFKA_BOOTSTRAP``, ``TRACELINE_KAFKA_PARTITIONS``, ...).
Building the app does not connect; the worker connects when it starts.
"""

from __future__ import annotations

from streams.app import StreamsConfig, build_app
from traceline.settings import Settings


def config_from_settings(s: Settings, bootstrap: str) -> StreamsConfig:
    return StreamsConfig(
        bootstrap=bootstrap,
        data_dir=s.data_dir / "streams",
        topics=s.topics,
        partitions=s.kafka.partitions,
        replication=s.kafka.replication,
        app_id=s.app_id,
        registry_url=s.schema_registry.url,
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
    app.main()
