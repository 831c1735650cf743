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
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust
import pydantic_core

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

__all__ = ["StreamsConfig", "build_app", "Counters"]

log = logging.getLogger(__name__)


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


def build_app(cfg: StreamsConfig) -> faust.App:
    app = faust.App(
        cfg.app_id,
        broker=f"kafka://{cfg.bootstrap}",
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
        async for ev in stream.events():
            counters.records_in += 1
            msg = ev.message
            try:
                batch = decode_command_batch(ev.value or b"")
                for key, _cmd in batch:
                    if command_partition(key, cfg.partitions) != msg.partition:
                        raise ValueError(f"command for {key!r} on partition {msg.partition}, not its own")
                dirty, sends, out = apply_batch(get_node, msg.offset, batch)
            except (ValueError, KeyError, TypeError) as exc:
                # a malformed record (not something our own intake writes): keep it, say why
                await send_dead(
                    dead_letter(
                        ev.key, ev.value, msg.topic, msg.partition, msg.offset, type(exc).__name__, str(exc)
                    )
                )
                continue
            counters.commands_in += len(batch)
            for key, node in dirty.items():  # each changed node once (one changelog record)
                nodes[key.encode()] = node.to_bytes()
            for part, value, n in batches_by_partition(sends, cfg.partitions):
                counters.commands_out += n
                await app.producer.send(commands_topic, None, value, part, None, None)
            if out:
                counters.changes_out += len(out)
                for change in out:
                    if change.get("error"):
                        counters.cycles += 1
                        await send_dead(dead_letter_for_change(change, msg.topic, msg.partition, msg.offset))
                for i in range(0, len(out), 2000):
                    value = pydantic_core.to_json(out[i : i + 2000])
                    await app.producer.send(changes_topic, None, value, msg.partition, None, None)

    @app.timer(10.0)
    async def report() -> None:
        log.info("traceline counters: %s", counters.as_dict())

    return app
