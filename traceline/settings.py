"""Configuration, the one tree: one settings object per external system, prefix ``TRACELINE_``.

Built once at the entry point (CLI, ``traceline serve``, the stream worker) and passed down as
plain values and config objects; nothing connects at import time, and no module outside this
one reads the environment. Every value can also be given as a CLI flag where it matters.

Sections and their environment variables:

| section | prefix | what |
| --- | --- | --- |
| ``Settings`` | ``TRACELINE_`` | ``DATA_DIR`` (outbox, embedded store, local broker) |
| ``kafka`` | ``TRACELINE_KAFKA_`` | bootstrap, events topic, partitions, replication, topic prefix |
| ``clickhouse`` | ``TRACELINE_CLICKHOUSE_`` | DSN, database, password |
| ``chdb`` | ``TRACELINE_CHDB_`` | the embedded engine's uncompressed-block cache |
| ``schema_registry`` | ``TRACELINE_SCHEMA_REGISTRY_`` | URL (Confluent wire format when set) |
| ``alert_rules`` | ``TRACELINE_ALERTS_`` | thresholds of the alert rules (``streams.alerts.AlertRules``) |
| ``notify`` | ``TRACELINE_ALERTS_`` | webhook / e-mail delivery (``streams.notify.NotifyConfig``) |
| ``ingest`` | ``TRACELINE_INGEST_`` | plausible event times, largest dead letter kept whole, require_signed |
| ``gateway`` | ``TRACELINE_GATEWAY_`` | the key a gateway signs what it publishes with |
| ``report`` | ``TRACELINE_REPORT_`` | the name on a report's "prepared by" line |
| ``worker`` | ``TRACELINE_STREAMS_``, ``TRACELINE_WORKER_`` | the faust worker's id and supervisor |
| ``local_stack`` | ``TRACELINE_`` | where the local broker's jars, cache and JVM options come from |
| ``auth`` | ``TRACELINE_TOKEN``, ``TRACELINE_AUTH_`` | CLI token, token file, OIDC (``traceline.auth``) |

The stream worker that ``traceline serve`` starts gets its environment from
:meth:`Settings.worker_env`, derived from this model, so it runs with exactly these settings.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.errors import InvalidInputError
from schemas.kafka import KafkaSecurity
from schemas.topics import TopicNames
from streams.alerts import AlertRules
from streams.notify import NotifyConfig

__all__ = [
    "KafkaSettings",
    "ClickHouseSettings",
    "ChdbSettings",
    "SchemaRegistrySettings",
    "AlertRulesSettings",
    "NotifySettings",
    "IngestSettings",
    "GatewaySettings",
    "ReportSettings",
    "WorkerSettings",
    "LocalStackSettings",
    "AuthSettings",
    "Settings",
    "load_settings",
    "env_of",
    "child_env",
]

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
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (a plant's secured cluster)"
    )
    sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] = "SCRAM-SHA-512"
    sasl_username: str | None = Field(None, description="this process's Kafka principal (SASL)")
    sasl_password: SecretStr | None = Field(None, description="its password (SASL); never logged")
    ssl_ca_file: Path | None = Field(
        None, description="PEM file of the CA that signed the brokers' certificates"
    )

    @property
    def secured(self) -> bool:
        """Security given in the settings (else a running secure local stack supplies it)."""
        return self.security_protocol != "PLAINTEXT"

    def security(self) -> KafkaSecurity:
        """The client security these settings give (checked: a clear error when incomplete)."""
        try:
            return KafkaSecurity(
                protocol=self.security_protocol,
                mechanism=self.sasl_mechanism,
                username=self.sasl_username,
                password=self.sasl_password.get_secret_value() if self.sasl_password else None,
                ca_file=self.ssl_ca_file,
            )
        except ValueError as exc:
            raise InvalidInputError(f"TRACELINE_KAFKA_*: {exc}") from exc


class ClickHouseSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRACELINE_CLICKHOUSE_", extra="ignore")

    dsn: str = Field(
        "", description="chdb:///path (embedded, default under the data dir) or http(s)://host:8123"
    )
    database: str = "traceline"
    password: SecretStr | None = None


class ChdbSettings(BaseSettings):
    """The embedded engine (``chdb://`` DSNs only)."""

    model_config = SettingsConfigDict(env_prefix="TRACELINE_CHDB_", extra="ignore")

    uncompressed_cache_mb: int = Field(
        1024, ge=0, description="ClickHouse's uncompressed-block cache in MiB (0 = off); chdb leaves it off"
    )
    max_memory_mb: int = Field(
        0,
        ge=0,
        description="all of the embedded engine's memory at most, in MiB (0 = ClickHouse's own "
        "limit, 90 % of RAM); its mark and index caches are 256 + 256 + 64 MiB at most",
    )


class SchemaRegistrySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRACELINE_SCHEMA_REGISTRY_", extra="ignore")

    url: str | None = None


class AlertRulesSettings(BaseSettings, AlertRules):
    """The alert rules' thresholds from ``TRACELINE_ALERTS_*`` (an :class:`AlertRules`)."""

    model_config = SettingsConfigDict(env_prefix="TRACELINE_ALERTS_", extra="ignore")


class NotifySettings(BaseSettings, NotifyConfig):
    """Alert delivery from ``TRACELINE_ALERTS_*``, e.g. ``TRACELINE_ALERTS_WEBHOOK_URL`` (a
    :class:`NotifyConfig`)."""

    model_config = SettingsConfigDict(env_prefix="TRACELINE_ALERTS_", extra="ignore")


class IngestSettings(BaseSettings):
    """The ingest sink: what it accepts as a plausible event, how big a dead letter may be."""

    model_config = SettingsConfigDict(env_prefix="TRACELINE_INGEST_", extra="ignore")

    max_future_skew_hours: float = Field(
        24.0, ge=0, description="an event_time later than ingest time + this is quarantined"
    )
    earliest_event_time: datetime = Field(
        datetime(2000, 1, 1, tzinfo=UTC), description="an event_time before this is quarantined"
    )
    dead_letter_max_bytes: int = Field(
        900_000, ge=8192, description="larger dead letters are kept by reference (size, sha256, prefix)"
    )
    chain_sign_seconds: float = Field(
        1.0, ge=0, description="sign each hash chain's head at most this often, and when idle (0: each batch)"
    )
    require_signed: bool = Field(
        False, description="dead-letter events without a valid gateway signature (unsigned ones too)"
    )
    gateway_keys_file: Path | None = Field(
        None, description="registry of gateway public keys (default: <data dir>/gateway_keys.json)"
    )


class GatewaySettings(BaseSettings):
    """A gateway publishing with ``traceline publish``: the key it signs its events with."""

    model_config = SettingsConfigDict(env_prefix="TRACELINE_GATEWAY_", extra="ignore")

    key_file: Path | None = Field(
        None, description="the gateway's private key (`traceline gateway-key create`): sign what is published"
    )


class ReportSettings(BaseSettings):
    """The auditor's report."""

    model_config = SettingsConfigDict(env_prefix="TRACELINE_REPORT_", extra="ignore")

    prepared_by: str | None = Field(None, description="the name on a report's 'prepared by' line")


class WorkerSettings(BaseSettings):
    """The faust stream worker."""

    model_config = SettingsConfigDict(extra="ignore")

    instance_id: str = Field(
        "",
        validation_alias=AliasChoices("TRACELINE_STREAMS_INSTANCE_ID", "instance_id"),
        description="static group membership id (default: app id + host + a hash of the data dir)",
    )
    parent_pid: int | None = Field(
        None,
        validation_alias=AliasChoices("TRACELINE_WORKER_PARENT_PID", "parent_pid"),
        description="set by `traceline serve`: the worker stops itself when this process is gone",
    )


class LocalStackSettings(BaseSettings):
    """The local Kafka broker (``traceline stack``): where its jars and files are, its JVM."""

    model_config = SettingsConfigDict(env_prefix="TRACELINE_", extra="ignore")

    deploy_local: Path | None = Field(None, description="deploy/local (its pom.xml); default: the checkout's")
    kafka_cache: Path | None = Field(None, description="assembled jars (default: deploy/local/cache)")
    kafka_data_dir: Path | None = Field(None, description="broker data for `python -m traceline.localstack`")
    kafka_heap_opts: str | None = Field(None, description="JVM heap options of the broker")
    kafka_jvm_opts: str | None = Field(None, description="other JVM options of the broker")


class AuthSettings(BaseSettings):
    """Who may call the API and what they see (``traceline.auth``): the CLI's own token, where
    the API's tokens are kept, and an OIDC issuer whose JWTs are accepted beside them."""

    model_config = SettingsConfigDict(env_prefix="TRACELINE_AUTH_", extra="ignore")

    token: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("TRACELINE_TOKEN", "token"),
        description="the CLI's bearer token (TRACELINE_TOKEN; or --token): sent to the server, and its "
        "programmes applied when the CLI opens the store itself",
    )
    token_file: Path | None = Field(None, description="hashed API tokens (default: <data dir>/tokens.json)")
    oidc_issuer: str | None = Field(None, description="accept JWTs from this issuer (iss), with oidc_jwks")
    oidc_audience: str | None = Field(None, description="the aud a JWT must carry (required for OIDC)")
    oidc_jwks: str | None = Field(None, description="the issuer's JWKS: a file path or an https:// URL")
    oidc_roles_claim: str = Field("roles", description="claim holding the role (a string or a list)")
    oidc_programs_claim: str = Field("programs", description="claim holding the programmes (list or 'A,B')")
    oidc_name_claim: str = Field("sub", description="claim naming the caller")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRACELINE_", extra="ignore")

    data_dir: Path = Field(_REPO / "var", description="local state: outbox, embedded store, local broker")
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    clickhouse: ClickHouseSettings = Field(default_factory=ClickHouseSettings)
    chdb: ChdbSettings = Field(default_factory=ChdbSettings)
    schema_registry: SchemaRegistrySettings = Field(default_factory=SchemaRegistrySettings)
    alert_rules: AlertRulesSettings = Field(default_factory=AlertRulesSettings)
    notify: NotifySettings = Field(default_factory=NotifySettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    report: ReportSettings = Field(default_factory=ReportSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    local_stack: LocalStackSettings = Field(default_factory=LocalStackSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)

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
    def alerts_group(self) -> str:
        return f"{self.kafka.topic_prefix}traceline-alerts"

    @property
    def tokens_path(self) -> Path:
        return self.auth.token_file or self.data_dir / "tokens.json"

    @property
    def gateway_keys_path(self) -> Path:
        """The registry of gateway public keys the sink verifies signatures with."""
        return self.ingest.gateway_keys_file or self.data_dir / "gateway_keys.json"

    @property
    def outbox_path(self) -> Path:
        return self.data_dir / "outbox.sqlite"

    @property
    def keys_dir(self) -> Path:
        """Signing keys (owner-only): chain.ed25519 (chain heads), report.ed25519 (reports)."""
        return self.data_dir / "keys"

    @property
    def kafka_dir(self) -> Path:
        return self.data_dir / "kafka"

    @property
    def clickhouse_dsn(self) -> str:
        return self.clickhouse.dsn or f"chdb://{(self.data_dir / 'clickhouse').resolve()}"

    def worker_env(self, bootstrap: str, parent_pid: int | None = None) -> dict[str, str]:
        """The environment of a stream worker child with these settings (and ``bootstrap``):
        this process's environment (PATH, PYTHONPATH, ...) plus every setting of the sections
        the worker reads, derived from this model."""
        env = child_env()
        env["TRACELINE_DATA_DIR"] = str(self.data_dir)
        for section in (self.kafka, self.schema_registry):
            env.update(env_of(section))
        env["TRACELINE_KAFKA_BOOTSTRAP"] = bootstrap
        if self.worker.instance_id:
            env["TRACELINE_STREAMS_INSTANCE_ID"] = self.worker.instance_id
        if parent_pid is not None:
            env["TRACELINE_WORKER_PARENT_PID"] = str(parent_pid)
        return env


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child process (the broker's JVM, a stream worker): this process's
    own (PATH, PYTHONPATH, JAVA_HOME, ...) plus ``extra``."""
    return {**os.environ, **extra}


def env_of(section: BaseSettings) -> dict[str, str]:
    """The environment variables that give ``section`` its current values (None left out)."""
    prefix = str(section.model_config.get("env_prefix", ""))
    out: dict[str, str] = {}
    for name in type(section).model_fields:
        value: Any = getattr(section, name)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, set | frozenset | list | tuple | dict):
            value = json.dumps(sorted(value) if isinstance(value, set | frozenset) else value)
        out[f"{prefix}{name}".upper()] = str(value)
    return out


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
