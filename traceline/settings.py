"""Configuration: one settings object per external system, prefix ``TRACELINE_``.

Built once at the entry point (CLI / ``traceline serve``) and passed down; nothing connects
at import time. Every value can also be given as a CLI flag.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.topics import TopicNames

__all__ = ["KafkaSettings", "ClickHouseSettings", "SchemaRegistrySettings", "Settings", "load_settings"]

_REPO = Path(__file__).resolve().parents[1]


class KafkaSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRACELINE_KAFKA_", extra="ignore")

    bootstrap: str = Field("", description="host:port list; empty means the local stack (make stack-up)")
    events_topic: str = "traceline.events"
    partitions: int = Field(
        6, description="partition count of keyed topics, chosen up front for the largest worker count"
    )
    replication: int = 1
    topic_prefix: str = Field("", description="prefix for traceline's own topics (tenants, tests)")


class ClickHouseSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRACELINE_CLICKHOUSE_", extra="ignore")

    dsn: str = Field(
        "", description="chdb:///path (embedded, default under the data dir) or http(s)://host:8123"
    )
    database: str = "traceline"
    password: SecretStr | None = None


class SchemaRegistrySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRACELINE_SCHEMA_REGISTRY_", extra="ignore")

    url: str | None = None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRACELINE_", extra="ignore")

    data_dir: Path = Field(_REPO / "var", description="local state: outbox, embedded store, local broker")
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    clickhouse: ClickHouseSettings = Field(default_factory=ClickHouseSettings)
    schema_registry: SchemaRegistrySettings = Field(default_factory=SchemaRegistrySettings)

    @property
    def topics(self) -> TopicNames:
        return TopicNames(events=self.kafka.events_topic, prefix=self.kafka.topic_prefix)

    @property
    def app_id(self) -> str:
        return f"{self.kafka.topic_prefix}traceline-streams"

    @property
    def sink_group(self) -> str:
        return f"{self.kafka.topic_prefix}traceline-sink"

    @property
    def outbox_path(self) -> Path:
        return self.data_dir / "outbox.sqlite"

    @property
    def kafka_dir(self) -> Path:
        return self.data_dir / "kafka"

    @property
    def clickhouse_dsn(self) -> str:
        return self.clickhouse.dsn or f"chdb://{(self.data_dir / 'clickhouse').resolve()}"


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, with CLI flag overrides (None means not given)."""
    s = Settings()
    for dotted, value in overrides.items():
        if value is None:
            continue
        section, _, name = dotted.partition("__")
        if name:
            setattr(getattr(s, section), name, value)
        else:
            setattr(s, section, value)
    return s
