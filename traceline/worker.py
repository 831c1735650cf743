"""Entry point of a faust stream worker: ``python -m traceline.worker worker -l info``.

Also ``faust -A traceline.worker worker`` for users who scale out: start one per machine with
the same ``TRACELINE_*`` settings; faust spreads the partitions over them. The settings come
from the one settings tree (``traceline.settings``: ``TRACELINE_KAFKA_BOOTSTRAP``,
``TRACELINE_KAFKA_PARTITIONS``, ...; ``traceline serve`` derives a child's environment from its
own settings with ``Settings.worker_env``). ``TRACELINE_STREAMS_INSTANCE_ID`` names the worker
for static group membership (default: app id + host + data dir), so a restarted worker rejoins
at once. The app itself is ``streams.app.build_app``; building it does not connect, the worker
connects when it starts.

Local state (the genealogy table's RocksDB files) lives in ``<data dir>/streams/<app id>/``:
the app id carries the topic prefix, so pipelines with different prefixes on one data dir keep
apart. Before faust starts, ``python -m traceline.worker worker`` checks that state against the
table's changelog topic (``streams.app.check_local_state``); state that does not match (built
from a changelog topic since deleted or re-created, or ahead of it), and faust's or RocksDB's
own start-up errors about it, stop the worker with one message naming the directory and the
recovery, exit code ``streams.app.LOCAL_STATE_EXIT_CODE`` (78: restarting does not help).
The recovery deletes the local state; faust rebuilds the table from its changelog topic::

    python -m traceline.worker reset-state --yes      # same TRACELINE_DATA_DIR / _KAFKA_TOPIC_PREFIX
"""

from __future__ import annotations

import hashlib
import logging
import socket
import sys
from typing import Any, NoReturn

from schemas.errors import BrokerUnavailableError
from streams.app import (
    LOCAL_STATE_EXIT_CODE,
    LocalStateError,
    StreamsConfig,
    build_app,
    changelog_ends,
    changelog_topic,
    check_local_state,
    local_state_dir,
    local_state_failure,
)
from traceline import localstack
from traceline.backend import apply_kafka_security
from traceline.orphans import exit_with_parent
from traceline.settings import Settings, load_settings

__all__ = [
    "app",
    "instance_id",
    "config_from_settings",
    "recovery_hint",
    "verify_local_state",
    "RESET_COMMAND",
]

log = logging.getLogger(__name__)

RESET_COMMAND = "python -m traceline.worker reset-state"


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
        data_dir=local_state_dir(s.data_dir, s.app_id),  # its own per app id (and topic prefix)
        topics=s.topics,
        partitions=s.kafka.partitions,
        replication=s.kafka.replication,
        app_id=s.app_id,
        security=apply_kafka_security(s),
    )


def recovery_hint(s: Settings) -> str:
    """How to recover from inconsistent local state, for these settings."""
    return (
        f"stop the worker (`traceline serve`) and run `{RESET_COMMAND} --yes` with the same settings "
        f"(TRACELINE_DATA_DIR={s.data_dir}, TRACELINE_KAFKA_TOPIC_PREFIX={s.kafka.topic_prefix!r}); "
        f"faust then rebuilds the table from its changelog topic {changelog_topic(s.app_id)}"
    )


def verify_local_state(s: Settings, cfg: StreamsConfig) -> None:
    """Raise :class:`LocalStateError` if the worker's local state does not match its changelog
    topic (see ``streams.app.check_local_state``). Kafka unreachable: not checked (faust
    waits for the broker and checks what it can itself)."""
    if not cfg.data_dir.exists():
        return
    topic = changelog_topic(cfg.app_id)
    try:
        topic_id, ends = changelog_ends(cfg.bootstrap, topic)
    except BrokerUnavailableError as exc:
        log.warning("local state not checked against Kafka: %s", exc)
        return
    check_local_state(cfg.data_dir, topic, topic_id, ends, recovery=recovery_hint(s))


def _bootstrap(s: Settings) -> str:
    if s.kafka.bootstrap:
        return s.kafka.bootstrap
    state = localstack.status(s.kafka_dir)
    if not state:
        raise SystemExit("no Kafka: set TRACELINE_KAFKA_BOOTSTRAP or run `traceline stack up`")
    return str(state["bootstrap"])


def _stop_for_state(message: str, code: int = LOCAL_STATE_EXIT_CODE) -> NoReturn:
    print(f"error: {message}", file=sys.stderr, flush=True)  # stderr: streams.log under `serve`
    raise SystemExit(code)


def main(s: Settings, cfg: StreamsConfig, faust_app: Any) -> NoReturn:
    """Check the local state, then run faust's command line (``worker -l info ...``)."""
    try:
        verify_local_state(s, cfg)
    except LocalStateError as exc:
        _stop_for_state(str(exc))
    legacy = s.data_dir / "streams" / "v1"
    if legacy.is_dir():
        log.warning(
            "%s holds local state of an earlier version (shared by every app id); it is no longer "
            "used: delete it (`%s --legacy`)",
            legacy,
            RESET_COMMAND,
        )
    try:
        faust_app.main()
    except SystemExit as exc:
        failure = local_state_failure(exc)
        if failure is None:
            raise
        reason, reset_helps = failure
        if reset_helps:
            _stop_for_state(str(LocalStateError(cfg.data_dir, reason, recovery_hint(s))))
        _stop_for_state(
            f"the stream worker cannot open its local state in {cfg.data_dir}: {reason}; stop the other "
            "worker with the same data dir and topic prefix, or give this one its own TRACELINE_DATA_DIR",
            1,
        )
    raise SystemExit(0)


settings = load_settings()
if __name__ == "__main__" and sys.argv[1:2] == ["reset-state"]:
    from traceline.cli_worker import worker_app  # only for this command: no faust app, no Kafka

    worker_app(args=sys.argv[1:], prog_name="python -m traceline.worker")
config = config_from_settings(settings, _bootstrap(settings))
app = build_app(config)

if __name__ == "__main__":
    if settings.worker.parent_pid is not None:
        exit_with_parent(settings.worker.parent_pid)  # started by `traceline serve`: stop when it is gone
    main(settings, config, app)
