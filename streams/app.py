r"""Faust wiring: the genealogy writer. No rules live here.

Topology (batch records, not one record per event)::

    events --sink intake (sinks.ingest: decode once, land, route)--> genealogy.commands
    genealogy.commands --genealogy_writer(table: nodes)--> genealogy.changes --> sink
           ^---------(commands to other keys, batched per partition)----/  \--(cycles)--> deadletter

* The intake is not a faust agent: it runs in the sink's batch loop, which decodes every event
  once anyway (``streams.intake.judge``), and sends each partition's commands of a batch as
  ONE record (``streams.intake.batches_by_partition``). Per-record stream machinery (fetch,
  event objects, acks: ~265 us of CPU per record measured in faust) is then paid per batch.
* genealogy_writer: concurrency 1; a record is a batch of commands for keys the record's
  partition owns (``streams.intake.command_partition``), so the ``nodes`` table (rocksdb via
  rocksdict) is read and written only at keys of the current partition; the rules are
  ``streams.genealogy.apply_batch``. Commands for other keys go back through the command topic,
  again one record per target partition; change records go to the changes topic in batches.
* at-least-once everywhere: every command is idempotent, and a replayed record re-sends what
  the nodes it meets owe (``apply_batch``'s replay rule, by record offset). Sends go straight
  to the app's producer (``app.producer.send``); faust flushes that producer before it commits
  offsets, so nothing is committed before its sends left.
* static group membership (``group_instance_id``, stable per worker across restarts): a
  restarted worker takes its partitions back at once instead of waiting for the group to
  expire the dead member's session. A worker that stops for good keeps its partitions for
  ``session_timeout`` seconds (then the group rebalances them onto the others).

No ClickHouse I/O happens here; the sink consumes the changes and dead-letter topics.

Local state: the ``nodes`` table's RocksDB files live under the worker's data dir, which is
its own per app id (``traceline.worker``: ``<data dir>/streams/<app id>``, and the app id
carries the topic prefix), so two pipelines on one data dir never share them. The files are
a cache of the table's changelog topic (``<app id>-genealogy-nodes-changelog``): each
partition's database remembers the changelog offset it applied. :func:`check_local_state`
compares that with Kafka before faust starts (a database ahead of its changelog, or built
from a changelog topic that was deleted and re-created, is another table's state) and
:func:`local_state_failure` recognises faust's and RocksDB's own start-up errors about it;
either way the worker stops with :class:`LocalStateError` (the directory and the recovery:
delete the directory, :func:`reset_local_state`, and faust rebuilds the table from its
changelog) and exit code :data:`LOCAL_STATE_EXIT_CODE`, instead of a crash loop.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust
import pydantic_core
from confluent_kafka import Consumer, KafkaException, TopicCollection, TopicPartition
from confluent_kafka.admin import AdminClient
from faust.exceptions import ConsistencyError
from rocksdict import AccessType, Options, Rdict

from schemas.errors import BrokerUnavailableError, TracelineError
from schemas.kafka import KafkaSecurity, client_config
from schemas.topics import TopicNames
from streams.genealogy import Node, apply_batch
from streams.intake import (
    DeadLetter,
    batches_by_partition,
    command_partition,
    dead_letter,
    dead_letter_for_change,
    decode_command_batch,
)

__all__ = [
    "StreamsConfig",
    "build_app",
    "Counters",
    "TABLE",
    "LOCAL_STATE_EXIT_CODE",
    "LocalStateError",
    "LocalStateInUseError",
    "local_state_dir",
    "changelog_topic",
    "local_offsets",
    "changelog_ends",
    "check_local_state",
    "local_state_failure",
    "local_state_in_use",
    "reset_local_state",
]

log = logging.getLogger(__name__)


TABLE = "genealogy-nodes"
"""The worker's one table (its RocksDB files: ``<data dir>/v1/tables/genealogy-nodes-<partition>.db``)."""

LOCAL_STATE_EXIT_CODE = 78  # EX_CONFIG: restarting does not help, the local state must be reset
AGENT_CRASH_EXIT_CODE = 70  # EX_SOFTWARE: the agent raised; a restart re-reads from the committed offset
_OFFSET_KEY = b"__faust\0offset__"  # where faust's RocksDB store keeps a partition's changelog offset
_MARKER = "changelog.json"  # which changelog topic (by topic id) the local state was built from


@dataclass(frozen=True)
class StreamsConfig:
    bootstrap: str
    data_dir: Path
    topics: TopicNames = field(default_factory=TopicNames)
    partitions: int = 6
    replication: int = 1
    app_id: str = "traceline-streams"
    block_cache_bytes: int = 32 * 1024 * 1024
    group_instance_id: str | None = None  # static membership; unique per worker, stable across restarts
    session_timeout: float = 30.0
    producer_linger_ms: int = 25
    security: KafkaSecurity = field(default_factory=KafkaSecurity)


def broker_credentials(security: KafkaSecurity) -> Any:
    """faust's ``broker_credentials`` for the client security (None for PLAINTEXT)."""
    if security.sasl:
        return faust.SASLCredentials(
            username=security.username,
            password=security.password,
            mechanism=security.mechanism,
            ssl_context=security.ssl_context(),
        )
    if security.tls:
        return faust.SSLCredentials(security.ssl_context())
    return None


@dataclass
class Counters:
    """What the worker did; logged periodically (a count you can check)."""

    records_in: int = 0  # command-batch records read
    dead_letters: int = 0
    commands_in: int = 0
    commands_out: int = 0
    changes_out: int = 0
    cycles: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def apply_record(
    get_node: Callable[[str], Node | None], value: bytes, partition: int, offset: int, partitions: int
) -> tuple[int, list[tuple[bytes, bytes]], list[tuple[int, bytes, int]], list[dict[str, Any]]]:
    """The synchronous part of one command-topic record: decode its commands (each must be
    routed to ``partition``), apply them (``apply_batch``), encode the changed nodes and the
    command records for other partitions. Returns (commands in it, [(key, node bytes)],
    [(partition, record, commands)], change records). Raises ValueError / KeyError /
    TypeError for a record our intake did not write. Measured at ~11 us per command
    (2026-12-05): the rest of the worker's ~135 us per command is faust's per-record and
    per-changelog-message machinery (docs/BENCHMARKS.md)."""
    batch = decode_command_batch(value)
    for key, _cmd in batch:
        if command_partition(key, partitions) != partition:
            raise ValueError(f"command for {key!r} on partition {partition}, not its own")
    dirty, sends, out = apply_batch(get_node, offset, batch)
    nodes = [(key.encode(), node.to_bytes()) for key, node in dirty.items()]
    return len(batch), nodes, list(batches_by_partition(sends, partitions)), out


def build_app(cfg: StreamsConfig) -> faust.App:
    cfg.data_dir.mkdir(parents=True, exist_ok=True)  # faust creates only the last level
    app = faust.App(
        cfg.app_id,
        broker=f"kafka://{cfg.bootstrap}",
        broker_credentials=broker_credentials(cfg.security),
        store="rocksdb://",
        datadir=str(cfg.data_dir),
        topic_partitions=cfg.partitions,
        topic_replication_factor=cfg.replication,
        key_serializer="raw",
        value_serializer="raw",
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_linger_ms=cfg.producer_linger_ms,
        consumer_group_instance_id=cfg.group_instance_id,
        broker_session_timeout=cfg.session_timeout,
        producer_max_batch_size=512 * 1024,
        broker_commit_interval=1.0,
        table_standby_replicas=0,
        web_enabled=False,
    )
    counters = Counters()
    app.traceline_counters = counters  # type: ignore[attr-defined]

    commands = app.topic(cfg.topics.commands, key_type=bytes, value_type=bytes, partitions=cfg.partitions)
    app.topic(cfg.topics.changes, key_type=bytes, value_type=bytes, partitions=cfg.partitions)  # declared
    deadletter = app.topic(cfg.topics.deadletter, key_type=bytes, value_type=bytes)
    nodes = app.Table(
        "genealogy-nodes",
        key_type=bytes,
        value_type=bytes,
        partitions=cfg.partitions,
        options={"block_cache_size": cfg.block_cache_bytes, "write_buffer_size": 16 * 1024 * 1024},
    )

    commands_topic, changes_topic = cfg.topics.commands, cfg.topics.changes

    async def send_dead(d: DeadLetter) -> None:
        counters.dead_letters += 1
        await deadletter.send(key=d.key, value=d.value, headers=d.headers)

    def get_node(key: str) -> Node | None:
        raw = nodes.get(key.encode())
        return Node.from_bytes(raw) if raw else None

    @app.agent(commands, name="genealogy-writer", concurrency=1)
    async def genealogy_writer(stream: Any) -> None:
        # An agent that raises is restarted by faust *inside* the process, past the record it
        # was on: that record is never applied (the chaos suite lost 4 units of a genealogy when
        # the agent crashed on a changelog topic a 3-broker cluster had not yet propagated). Any
        # crash ends the process instead; `traceline serve` restarts it after a back-off and it
        # re-reads from its last committed offset (applying a command again is a no-op).
        try:
            async for ev in stream.events():
                counters.records_in += 1
                msg = ev.message
                try:
                    n_in, dirty, command_records, out = apply_record(
                        get_node, ev.value or b"", msg.partition, msg.offset, cfg.partitions
                    )
                except (ValueError, KeyError, TypeError) as exc:
                    # a malformed record (not something our own intake writes): keep it, say why
                    await send_dead(
                        dead_letter(
                            ev.key,
                            ev.value,
                            msg.topic,
                            msg.partition,
                            msg.offset,
                            type(exc).__name__,
                            str(exc),
                        )
                    )
                    continue
                counters.commands_in += n_in
                for key, raw in dirty:  # each changed node once (one changelog record)
                    nodes[key] = raw
                for part, value, n in command_records:
                    counters.commands_out += n
                    await app.producer.send(commands_topic, None, value, part, None, None)
                if out:
                    counters.changes_out += len(out)
                    for change in out:
                        if change.get("error"):
                            counters.cycles += 1
                            await send_dead(
                                dead_letter_for_change(change, msg.topic, msg.partition, msg.offset)
                            )
                    for i in range(0, len(out), 2000):
                        value = pydantic_core.to_json(out[i : i + 2000])
                        await app.producer.send(changes_topic, None, value, msg.partition, None, None)
        except Exception as exc:  # noqa: BLE001 - every crash: exit, never skip a record
            log.critical("the genealogy agent crashed (%s: %s): the worker exits", type(exc).__name__, exc)
            logging.shutdown()
            os._exit(AGENT_CRASH_EXIT_CODE)

    @app.timer(10.0)
    async def report() -> None:
        log.info("traceline counters: %s", counters.as_dict())

    return app


# -- local state ------------------------------------------------------------------------------
class LocalStateError(TracelineError):
    """The worker's local table state does not match its changelog topic in Kafka (or cannot be
    opened): restarting does not help; ``recovery`` says how to reset it."""

    def __init__(self, state_dir: Path, reason: str, recovery: str) -> None:
        self.state_dir, self.reason, self.recovery = state_dir, reason, recovery
        super().__init__(
            f"the stream worker's local state in {state_dir} is inconsistent with Kafka: {reason}. "
            f"It is only a cache of the changelog topic: {recovery}"
        )


class LocalStateInUseError(TracelineError):
    """A running worker holds the local state (its RocksDB lock): it is not deleted."""

    def __init__(self, state_dir: Path, held: Path) -> None:
        self.state_dir, self.held = state_dir, held
        super().__init__(
            f"the stream worker's local state in {state_dir} is in use: a running worker holds {held}; "
            "stop it (`traceline serve`, or the worker process) first"
        )


def local_state_dir(data_dir: Path, app_id: str) -> Path:
    """The worker's own state directory: ``<data dir>/streams/<app id>`` (the app id carries the
    topic prefix, so pipelines sharing a data dir do not share local state)."""
    return data_dir / "streams" / re.sub(r"[^A-Za-z0-9._-]", "_", app_id)


def changelog_topic(app_id: str) -> str:
    """The changelog topic faust keeps the ``nodes`` table in."""
    return f"{app_id}-{TABLE}-changelog"


def _table_files(tables: Path) -> Iterator[tuple[int, Path]]:
    for path in sorted(tables.glob(f"{TABLE}-*.db")):
        part = path.name[len(TABLE) + 1 : -len(".db")]
        if part.isdigit():
            yield int(part), path


def _tables_dir(state_dir: Path) -> Path:
    return state_dir / "v1" / "tables"  # faust: datadir / f"v{app version}" / tabledir


def local_offsets(state_dir: Path) -> dict[int, int]:
    """The changelog offset each partition's database of ``state_dir`` applied last (read-only;
    a database that never applied a change is left out). Raises :class:`RuntimeError` (with
    RocksDB's reason) for a database that cannot be opened."""
    out: dict[int, int] = {}
    for part, path in _table_files(_tables_dir(state_dir)):
        try:
            db = Rdict(str(path), options=Options(raw_mode=True), access_type=AccessType.read_only())
        except Exception as exc:  # noqa: BLE001 - rocksdict raises plain Exception
            raise RuntimeError(f"cannot open {path}: {exc}") from exc
        try:
            raw = db.get(_OFFSET_KEY)
        finally:
            db.close()
        if raw is not None:
            out[part] = int(raw)
    return out


def changelog_ends(bootstrap: str, topic: str, timeout: float = 10.0) -> tuple[str | None, dict[int, int]]:
    """(topic id, end offset per partition) of ``topic``; (None, {}) when it does not exist.
    Raises :class:`BrokerUnavailableError` when Kafka does not answer."""
    conf = client_config(bootstrap, **{"group.id": f"{topic}.check", "log_level": 3})
    consumer = Consumer({**conf, "socket.connection.setup.timeout.ms": 5000})
    try:
        md = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if md is None or md.error is not None or not md.partitions:
            return None, {}
        ends = {
            p: int(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)[1])
            for p in md.partitions
        }
    except KafkaException as exc:
        raise BrokerUnavailableError(bootstrap, f"cannot read the changelog topic {topic}: {exc}") from exc
    finally:
        consumer.close()
    topic_id: str | None = None
    with contextlib.suppress(Exception):  # an old broker may not describe topics: offsets only
        admin = AdminClient(client_config(bootstrap, log_level=3))
        desc = admin.describe_topics(TopicCollection([topic]), request_timeout=timeout)[topic].result()
        topic_id = str(desc.topic_id) if desc.topic_id is not None else None
    return topic_id, ends


def check_local_state(
    state_dir: Path, topic: str, topic_id: str | None, ends: Mapping[int, int], *, recovery: str
) -> None:
    """Raise :class:`LocalStateError` if the local state of ``state_dir`` was not built from the
    changelog ``topic`` as Kafka has it now: a partition's database applied an offset at or past
    the topic's end (the topic was re-created or emptied, or the state is another pipeline's),
    or the state was built from a topic of that name with another topic id (deleted and
    re-created). ``topic_id`` None and ``ends`` empty: the topic does not exist (yet).
    Remembers the topic id in the state dir when all is well."""
    try:
        offsets = local_offsets(state_dir)
    except RuntimeError as exc:
        raise LocalStateError(state_dir, str(exc), recovery) from exc
    marker = state_dir / _MARKER
    known: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        known = json.loads(marker.read_text())
    if offsets and topic_id and known.get("topic_id") and known.get("topic_id") != topic_id:
        raise LocalStateError(
            state_dir,
            f"it was built from the changelog topic {topic} with id {known['topic_id']}, which was deleted; "
            f"the topic of that name now has id {topic_id}",
            recovery,
        )
    ahead = [(p, off, ends.get(p, 0)) for p, off in sorted(offsets.items()) if off >= ends.get(p, 0)]
    if ahead:
        where = "; ".join(
            f"partition {p}: applied offset {off}, the topic ends at {end}" for p, off, end in ahead[:6]
        )
        missing = "which does not exist" if not ends else "which is behind it"
        raise LocalStateError(
            state_dir,
            f"it applied changes past the end of the changelog topic {topic}, {missing} ({where})",
            recovery,
        )
    if topic_id and offsets and known.get("topic_id") != topic_id:
        state_dir.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"topic": topic, "topic_id": topic_id}) + "\n")


def local_state_failure(exc: BaseException | None) -> tuple[str, bool] | None:
    """``(reason, a reset helps)`` if ``exc`` (or an exception it was raised from or while
    handling) is one of faust's or RocksDB's errors about the local state: faust's
    ``ConsistencyError`` (a persisted offset past the changelog's end), a RocksDB error opening
    a table database (corruption, a missing file: a reset helps), or its lock held by another
    worker (a reset does not help: that worker must stop). None for anything else."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ConsistencyError):
            return " ".join(str(exc).split()), True
        text = str(exc).strip()
        if type(exc) is Exception and re.search(r"\b(Corruption|IO error|Invalid argument):", text):
            if re.search(r"\block", text, re.IGNORECASE):  # LOCK, lock file, locks; not "block"
                return f"another worker holds its database open ({text})", False
            return text, True
        exc = exc.__cause__ or exc.__context__
    return None


def local_state_in_use(state_dir: Path) -> Path | None:
    """A table database of ``state_dir`` that a running worker holds open (RocksDB's LOCK), or None."""
    for _part, path in _table_files(_tables_dir(state_dir)):
        lock = path / "LOCK"
        if not lock.exists():
            continue
        with lock.open("a") as fh:
            try:
                fcntl.lockf(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EACCES, errno.EAGAIN):
                    return path
                raise
            fcntl.lockf(fh, fcntl.LOCK_UN)
    return None


def reset_local_state(state_dir: Path) -> bool:
    """Delete the worker's local state (faust rebuilds the table from its changelog topic at the
    next start). False if there was none. Raises :class:`LocalStateInUseError` if a running
    worker holds it."""
    if not state_dir.exists():
        return False
    held = local_state_in_use(state_dir)
    if held is not None:
        raise LocalStateInUseError(state_dir, held)
    shutil.rmtree(state_dir)
    return True
