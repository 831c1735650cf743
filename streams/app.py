"""Faust wiring: the intake agent and the genealogy writer. No rules live here.

Topology (every topic keyed by raw bytes, never JSON: quotes would change the partition)::

    events --intake--> genealogy.commands --genealogy_writer(table: nodes)--> genealogy.changes
       \\--(bad)--> deadletter                \\--(commands to other keys)--^   \\--(cycles)--> deadletter

* intake: decodes each raw record once (``streams.intake.route``); bad ones go to the
  dead-letter topic with headers (source topic, partition, offset, error, reason).
* genealogy_writer: concurrency 1, reads and writes only the current key of the ``nodes``
  table (rocksdb via rocksdict), applies ``streams.genealogy.apply``; commands for other
  keys go back through the command topic, so each lands on the partition that owns it.
* at-least-once everywhere: every command is idempotent, so a replay after a crash is harmless.
  Commands and changes go straight to the app's producer (``app.producer.send``: no
  FutureMessage / sensor / serializer work per record; faust flushes that producer before it
  commits offsets, so nothing is committed before its sends left); the intake decodes only
  the event types the genealogy reads (``streams.intake.route``).
* static group membership (``group_instance_id``, stable per worker across restarts): a
  restarted worker takes its partitions back at once instead of waiting for the group to
  expire the dead member's session. A worker that stops for good keeps its partitions for
  ``session_timeout`` seconds (then the group rebalances them onto the others).

No ClickHouse I/O happens here; the sink consumes the changes and dead-letter topics.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust

from schemas.serde import AvroSerde
from schemas.topics import TopicNames
from streams.genealogy import Node, apply, command_from_dict, resend
from streams.intake import DeadLetter, dead_letter_for_change, encode_command, route

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
    registry_url: str | None = None
    block_cache_bytes: int = 32 * 1024 * 1024
    group_instance_id: str | None = None  # static membership; unique per worker, stable across restarts
    session_timeout: float = 30.0
    producer_linger_ms: int = 25


@dataclass
class Counters:
    """What the worker did; logged periodically (a count you can check)."""

    events_in: int = 0
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
    serde = AvroSerde(registry_url=cfg.registry_url, topic=cfg.topics.events)
    counters = Counters()
    app.traceline_counters = counters  # type: ignore[attr-defined]

    events = app.topic(cfg.topics.events, key_type=bytes, value_type=bytes)
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

    async def send_command(key: bytes, value: bytes) -> None:
        counters.commands_out += 1
        await app.producer.send(commands_topic, key, value, None, None, None)

    async def send_dead(d: DeadLetter) -> None:
        counters.dead_letters += 1
        await deadletter.send(key=d.key, value=d.value, headers=d.headers)

    @app.agent(events, name="intake")
    async def intake(stream: Any) -> None:
        # batched: the intake holds no table, so take_events is safe here
        async for batch in stream.take_events(2000, within=0.05):
            counters.events_in += len(batch)
            for ev in batch:
                msg = ev.message
                routed = route(serde, ev.key, ev.value, msg.topic, msg.partition, msg.offset)
                if isinstance(routed, DeadLetter):
                    await send_dead(routed)
                    continue
                for target, cmd in routed.commands:
                    await send_command(target.encode(), encode_command(cmd))

    @app.agent(commands, name="genealogy-writer", concurrency=1)
    async def genealogy_writer(stream: Any) -> None:
        async for ev in stream.events():
            counters.commands_in += 1
            msg = ev.message
            key_b: bytes = ev.key
            key = key_b.decode()
            try:
                cmd = command_from_dict(json.loads(ev.value))
                raw = nodes.get(key_b)
                node = Node.from_bytes(raw) if raw else None
                if node is not None and msg.offset <= node.offset:
                    # A replay after a crash: this node already has the command (it changed the
                    # node at node.offset or before), but what it sent then may never have
                    # reached Kafka. Send what the node owes in its current state instead.
                    new, (sends, out) = node, resend(node)
                else:
                    new, sends, out = apply(node, key, cmd)
            except (ValueError, KeyError, TypeError) as exc:
                # a malformed command (not something our own intake writes): keep it, say why
                await send_dead(
                    DeadLetter(
                        key_b,
                        ev.value or b"",
                        [
                            ("traceline.source_topic", msg.topic.encode()),
                            ("traceline.source_partition", str(msg.partition).encode()),
                            ("traceline.source_offset", str(msg.offset).encode()),
                            ("traceline.error", type(exc).__name__.encode()),
                            ("traceline.reason", str(exc).encode()[:1000]),
                        ],
                    )
                )
                continue
            new_raw = new.to_bytes()
            if new_raw != raw:  # a repeated command changes nothing: no table (changelog) write
                new.offset = msg.offset  # the last command that changed the node
                nodes[key_b] = new.to_bytes()
            for target, c in sends:
                await send_command(target.encode(), encode_command(c))
            for change in out:
                counters.changes_out += 1
                if change.get("error"):
                    counters.cycles += 1
                    await send_dead(dead_letter_for_change(change, msg.topic, msg.partition, msg.offset))
                await app.producer.send(
                    changes_topic, key_b, json.dumps(change, separators=(",", ":")).encode(), None, None, None
                )

    @app.timer(10.0)
    async def report() -> None:
        log.info("traceline counters: %s", counters.as_dict())

    return app
