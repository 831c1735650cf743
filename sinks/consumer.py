"""The ClickHouse sink: Kafka batches in, columnar inserts out, offsets committed after.

Reads the raw events topic, the genealogy changes topic, the dead-letter topic and the alerts
topic with one confluent-kafka consumer (manual commits), and lands each batch in ClickHouse:

* size- and time-bounded batches (``batch_size`` records or ``batch_seconds``); the window
  runs from the end of the previous batch's collection, so what arrived while that batch was
  landed has waited already: a batch that took longer than the window to land is followed at
  once by one that takes what is queued (no extra window of latency under load);
* one decode per event, columnar Arrow inserts, facts before the raw table they come from;
* offsets are committed only after ClickHouse acknowledged every insert of the batch;
* replay safety, in three layers: (1) per (raw table, partition) watermarks read from
  ClickHouse at start and after every failure: rows at or below the highest landed offset
  are not written again; (2) an ``insert_deduplication_token`` per table and batch;
  (3) ReplacingMergeTree keyed on ``event_id`` for events a producer re-sent at another
  offset (plus a bounded in-memory set of recent event ids that drops most of those before
  they reach ClickHouse);
* ClickHouse unavailable: back off and retry the same batch; nothing is committed or lost.

The intake lives here too (``streams.intake.judge``): the sink decodes every raw event once,
and the same decode gives the genealogy its commands. Per batch, in this order:

1. judge every new raw record: an undecodable or unusable one becomes a dead-letter record
   (headers: source topic, partition, offset, error, reason) for the dead-letter topic, which
   this sink lands into ``dead_letters`` like every other dead letter;
2. send the batch's genealogy commands, one record per command-topic partition
   (``streams.intake.batches_by_partition``), and its dead letters, and wait for Kafka's
   acknowledgement (``flush``);
3. insert into ClickHouse; 4. commit the offsets.

A record whose rows landed (at or below a watermark) therefore had its commands sent before,
so a replay skips it entirely; a crash between 2 and 4 re-sends commands, which are idempotent.
Kafka unreachable in step 2: back off and retry the batch, like ClickHouse unavailable.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pydantic_core
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from producers.publisher import producer_config
from schemas.alert import decode_alert
from schemas.errors import BrokerUnavailableError, DecodeError
from schemas.serde import AvroSerde
from schemas.topics import TopicNames
from sinks.rows import (
    RAW_TABLE,
    RAW_TABLES,
    SinkRecord,
    alert_rows,
    deadletter_rows,
    genealogy_rows,
    rows_for_batch,
)
from sinks.store import Store, StoreError
from streams.genealogy import Lots, Send, Touch
from streams.intake import DeadLetter, batches_by_partition, judge

__all__ = ["SinkWorker", "SinkStats", "consumer_config", "message_position"]

log = logging.getLogger(__name__)


def consumer_config(bootstrap: str, group_id: str, **overrides: Any) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "fetch.min.bytes": 1,
        "fetch.wait.max.ms": 100,
        "max.partition.fetch.bytes": 4 * 1024 * 1024,
        "queued.max.messages.kbytes": 64 * 1024,
        "session.timeout.ms": 15_000,
        "partition.assignment.strategy": "cooperative-sticky",
    }
    conf.update(overrides)
    return conf


@dataclass
class SinkStats:
    """Counters a person or a test can check (the ledger's sink side)."""

    batches: int = 0
    events_landed: int = 0
    changes_landed: int = 0
    dead_letters_landed: int = 0
    alerts_landed: int = 0
    undecodable_skipped: int = 0  # raw records judged bad (each sent to the dead-letter topic once)
    dead_letters_sent: int = 0
    commands_sent: int = 0
    command_records_sent: int = 0
    kafka_retries: int = 0
    duplicates_skipped: int = 0
    replayed_skipped: int = 0
    store_retries: int = 0
    last_event_time: datetime | None = None
    last_batch_at: datetime | None = None
    last_error: str | None = None
    positions: dict[str, int] = field(default_factory=dict)
    # wall seconds per stage, summed over batches: collect (poll up to the batch window),
    # judge (decode + checks + commands), send (commands / dead letters, until acknowledged),
    # rows (Arrow tables), insert (ClickHouse), commit (consumer offsets)
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def _time(self, stage: str, since: float) -> float:
        now = time.monotonic()
        self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + now - since
        return now

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        for k in ("last_event_time", "last_batch_at"):
            v = d[k]
            d[k] = v.isoformat() if v else None
        d["stage_seconds"] = {k: round(v, 3) for k, v in self.stage_seconds.items()}
        return d


class _RecentIds:
    """A bounded set of recently landed event ids (drops producer re-sends early)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, key: str) -> bool:
        return key in self._ids

    def add(self, key: str) -> None:
        self._ids[key] = None
        if len(self._ids) > self.limit:
            self._ids.popitem(last=False)


class SinkWorker:
    """One sink consumer. ``run()`` loops until ``stop()``; ``poll_once()`` does one batch."""

    def __init__(
        self,
        bootstrap: str,
        store: Store,
        *,
        topics: TopicNames,
        group_id: str = "traceline-sink",
        serde: AvroSerde | None = None,
        batch_size: int = 20_000,
        batch_seconds: float = 0.25,
        recent_ids: int = 1_000_000,
        consumer_overrides: dict[str, Any] | None = None,
        producer_overrides: dict[str, Any] | None = None,
        on_batch: Callable[[SinkStats], None] | None = None,
    ) -> None:
        self.store = store
        self.topics = topics
        self.serde = serde or AvroSerde(topic=topics.events)
        self.batch_size = batch_size
        self.batch_seconds = batch_seconds
        self.drain_poll_seconds = 0.05
        self._window_from: float | None = None  # when the previous collection ended
        self.stats = SinkStats()
        self.on_batch = on_batch
        self._recent = _RecentIds(recent_ids)
        self._stop = threading.Event()
        self._watermarks: dict[tuple[str, int], int] = {}
        self._part_marks: dict[int, int] = {}
        self._watermarks_stale = True
        self._recent_loaded = False
        self._consumer = Consumer(consumer_config(bootstrap, group_id, **(consumer_overrides or {})))
        self._bootstrap = bootstrap
        self._producer = Producer(
            producer_config(bootstrap, **{"linger.ms": 5, **(producer_overrides or {})})
        )
        self._command_partitions = 0
        self._consumer.subscribe(
            [topics.events, topics.changes, topics.deadletter, topics.alerts], on_assign=self._on_assign
        )

    # -- lifecycle ----------------------------------------------------------------------
    def _on_assign(self, _consumer: Consumer, _partitions: list[TopicPartition]) -> None:
        self._watermarks_stale = True

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self._consumer.close()
        self._producer.flush(5)
        self._producer.close()

    def run(self) -> None:
        try:
            while not self._stop.is_set():
                self.poll_once()
        finally:
            self.close()

    # -- one batch ----------------------------------------------------------------------
    def _collect(self) -> list[Message]:
        msgs: list[Message] = []
        start = self._window_from if self._window_from is not None else time.monotonic()
        deadline = start + self.batch_seconds
        polled = False
        while len(msgs) < self.batch_size and not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0 and polled:
                break
            polled = True  # at least one poll: a window already over takes what is queued
            # short polls (consume() waits its whole timeout unless num_messages arrive), and
            # once the batch has something, close it as soon as a poll comes back empty
            # instead of waiting out the window: low latency at low rates, full batches at
            # high rates
            wait = max(0.0, min(left, self.drain_poll_seconds))
            got = self._consumer.consume(num_messages=self.batch_size - len(msgs), timeout=wait)
            for m in got:
                err = m.error()
                if err is None:
                    msgs.append(m)
                elif err.code() != KafkaError._PARTITION_EOF:
                    self.stats.last_error = str(err)
                    log.warning("consumer error: %s", err)
            if msgs and not got:
                break
        self._window_from = time.monotonic()
        return msgs

    def _refresh_watermarks(self) -> None:
        marks: dict[tuple[str, int], int] = {}
        for table in RAW_TABLES:
            _names, rows = self.store.query_rows(
                f"SELECT kafka_partition, max(kafka_offset) FROM {table} "  # noqa: S608 - fixed names
                "WHERE kafka_topic = {t:String} GROUP BY kafka_partition",
                {"t": self.topics.events},
            )
            for p, off in rows:
                marks[(table, int(p))] = int(off)
        self._watermarks = marks
        self._part_marks = {}
        for (_t, p), off in marks.items():
            self._part_marks[p] = max(off, self._part_marks.get(p, -1))
        self._watermarks_stale = False
        if not self._recent_loaded:
            self._load_recent_ids()

    def _load_recent_ids(self) -> None:
        """A new sink (a restart) starts with an empty recent-id set: refill it with the newest
        event ids already landed, so a producer re-send of an event that landed before the
        restart is still dropped, not written a second time."""
        union = " UNION ALL ".join(
            f"SELECT event_id, ingest_time FROM {t} WHERE kafka_topic = {{t:String}}"  # noqa: S608
            for t in RAW_TABLES
        )
        _names, rows = self.store.query_rows(
            f"SELECT event_id FROM ({union}) ORDER BY ingest_time DESC LIMIT {int(self._recent.limit)}",  # noqa: S608
            {"t": self.topics.events},
        )
        for (eid,) in reversed(rows):
            self._recent.add(eid)
        self._recent_loaded = True

    def poll_once(self) -> int:
        """Collect one batch, land it, commit it. Returns the number of records handled."""
        t0 = time.monotonic()
        msgs = self._collect()
        if not msgs:
            return 0
        self.stats._time("collect", t0)
        while not self._stop.is_set():
            try:
                if self._watermarks_stale:
                    self._refresh_watermarks()
                self._land(msgs)
                break
            except (StoreError, BrokerUnavailableError) as exc:
                # ClickHouse is unavailable or refused the batch, or Kafka did not take its
                # commands / dead letters: keep the batch, back off, re-read the watermarks
                # (part of it may have landed) and try again.
                if isinstance(exc, StoreError):
                    self.stats.store_retries += 1
                else:
                    self.stats.kafka_retries += 1
                retries = self.stats.store_retries + self.stats.kafka_retries
                self.stats.last_error = str(exc)
                self._watermarks_stale = True
                log.warning("retrying batch of %d: %s", len(msgs), exc)
                self._stop.wait(min(30.0, 0.5 * 2 ** min(retries, 6)))
        else:
            return 0  # stopping: nothing committed, the batch is read again next time
        t0 = time.monotonic()
        self._commit(msgs)
        self.stats._time("commit", t0)
        return len(msgs)

    def _land(self, msgs: list[Message]) -> None:
        t0 = time.monotonic()
        now = datetime.now(UTC)
        events: list[SinkRecord] = []
        changes: list[dict[str, Any]] = []
        dead: list[dict[str, Any]] = []
        alerts: list[tuple[Any, int, int, datetime]] = []
        commands: list[Send] = []
        touched: set[str] = set()
        lots: dict[str, set[tuple[str, str]]] = {}
        dead_out: list[DeadLetter] = []
        ranges: dict[tuple[str, int], list[int]] = {}
        new_ids: list[str] = []
        batch_ids: set[str] = set()
        t_events, t_changes, t_dlq = self.topics.events, self.topics.changes, self.topics.deadletter
        marks = self._watermarks
        last_time = self.stats.last_event_time
        for m in msgs:
            topic, part, off = message_position(m)
            r = ranges.setdefault((topic, part), [off, off])
            r[0] = min(r[0], off)
            r[1] = max(r[1], off)
            value = m.value() or b""
            if topic == t_events:
                judged = judge(self.serde, m.key(), m.value(), topic, part, off)
                if isinstance(judged, DeadLetter):
                    self.stats.undecodable_skipped += 1
                    if off < self._max_mark(part):
                        continue  # a later record of this partition landed: sent before
                    dead_out.append(judged)
                    continue
                type_name, rec = judged.type_name, judged.record
                if off <= marks.get((RAW_TABLE.get(type_name, ""), part), -1):
                    self.stats.replayed_skipped += 1
                    continue
                eid = rec["event_id"]
                if eid in self._recent or eid in batch_ids:  # also a re-send inside this batch
                    self.stats.duplicates_skipped += 1
                    continue
                batch_ids.add(eid)
                new_ids.append(eid)
                events.append(SinkRecord(type_name, rec, topic, part, off, now))
                for target, cmd in judged.commands:
                    if isinstance(cmd, Touch):  # idempotent: once per unit and batch is enough
                        if target in touched:
                            continue
                        touched.add(target)
                    elif isinstance(cmd, Lots):  # grow-only sets: one merged command per unit
                        lots.setdefault(target, set()).update(cmd.lots)
                        continue
                    commands.append((target, cmd))
                et = rec["event_time"]
                if last_time is None or et > last_time:
                    last_time = et
            elif topic == t_changes:
                got = pydantic_core.from_json(value)  # the writer sends a list per record
                if isinstance(got, list):
                    changes.extend(got)
                else:
                    changes.append(got)
            elif topic == self.topics.alerts:
                try:
                    alerts.append((decode_alert(value), part, off, now))
                except DecodeError:
                    self.stats.undecodable_skipped += 1
            elif topic == t_dlq:
                headers = dict(m.headers() or [])
                dead.append(
                    {
                        "source_topic": _h(headers, "traceline.source_topic"),
                        "source_partition": int(_h(headers, "traceline.source_partition") or -1),
                        "source_offset": int(_h(headers, "traceline.source_offset") or -1),
                        "error": _h(headers, "traceline.error"),
                        "reason": _h(headers, "traceline.reason"),
                        "key": m.key() or b"",
                        "raw": value or b"",
                        "dlq_topic": topic,
                        "dlq_partition": part,
                        "dlq_offset": off,
                        "ingest_time": now,
                    }
                )
        commands.extend((u, Lots(u, tuple(sorted(ls)))) for u, ls in lots.items())
        stats = self.stats
        t0 = stats._time("judge", t0)
        if commands or dead_out:
            self._send(commands, dead_out)  # before any insert: see the module doc
        t0 = stats._time("send", t0)
        tables: dict[str, Any] = {}
        raw = rows_for_batch(events) if events else {}
        # facts and genealogy first, raw tables last: a landed raw row (the watermark) then
        # implies its facts landed too.
        for name, tbl in raw.items():
            if name not in RAW_TABLES:
                tables[name] = tbl
        tables.update(genealogy_rows(changes) if changes else {})
        tables.update(deadletter_rows(dead) if dead else {})
        tables.update(alert_rows(alerts) if alerts else {})
        for name, tbl in raw.items():
            if name in RAW_TABLES:
                tables[name] = tbl
        t0 = stats._time("rows", t0)
        if tables:
            token = ";".join(f"{t}:{p}:{a}-{b}" for (t, p), (a, b) in sorted(ranges.items()))
            self.store.write_batch(tables, token)
        stats._time("insert", t0)
        for eid in new_ids:
            self._recent.add(eid)
        s = self.stats
        s.batches += 1
        s.events_landed += len(events)
        s.changes_landed += len(changes)
        s.dead_letters_landed += len(dead)
        s.alerts_landed += len(alerts)
        s.last_event_time = last_time
        s.last_batch_at = now
        for (t, p), (_a, b) in ranges.items():
            s.positions[f"{t}[{p}]"] = b + 1
        if self.on_batch is not None:
            self.on_batch(s)

    def _max_mark(self, partition: int) -> int:
        """The highest events-topic offset of ``partition`` landed in any raw table."""
        return self._part_marks.get(partition, -1)

    def _partitions_of_commands(self) -> int:
        if not self._command_partitions:
            topic = self.topics.commands
            try:
                meta = self._producer.list_topics(topic, timeout=10)
            except KafkaException as exc:
                raise BrokerUnavailableError(self._bootstrap, f"cannot read topic {topic}: {exc}") from exc
            t = meta.topics.get(topic)
            if t is None or t.error is not None or not t.partitions:
                raise BrokerUnavailableError(
                    self._bootstrap, f"command topic {topic} is missing: {t and t.error}"
                )
            self._command_partitions = len(t.partitions)
        return self._command_partitions

    def _send(self, commands: list[Send], dead: list[DeadLetter]) -> None:
        """Send the batch's genealogy commands (batched per partition) and dead letters, and
        wait until Kafka acknowledged all of them. Raises BrokerUnavailableError otherwise."""
        errors: list[str] = []

        def delivered(err: Any, _msg: Any) -> None:
            if err is not None:
                errors.append(str(err))

        produce = self._producer.produce
        n_records = 0
        try:
            if commands:
                t = self.topics.commands
                for part, value, _n in batches_by_partition(commands, self._partitions_of_commands()):
                    produce(t, value=value, partition=part, on_delivery=delivered)
                    n_records += 1
            for d in dead:
                produce(
                    self.topics.deadletter,
                    key=d.key,
                    value=d.value,
                    headers=list[Any](d.headers),
                    on_delivery=delivered,
                )
        except (KafkaException, BufferError) as exc:
            raise BrokerUnavailableError(self._bootstrap, f"cannot send genealogy commands: {exc}") from exc
        left = self._producer.flush(30)
        if left or errors:
            raise BrokerUnavailableError(
                self._bootstrap, f"{left} commands / dead letters not acknowledged: {errors[:3]}"
            )
        self.stats.commands_sent += len(commands)
        self.stats.command_records_sent += n_records
        self.stats.dead_letters_sent += len(dead)

    def _commit(self, msgs: list[Message]) -> None:
        hi: dict[tuple[str, int], int] = {}
        for m in msgs:
            t, p, o = message_position(m)
            if o >= hi.get((t, p), -1):
                hi[(t, p)] = o
        offsets = [TopicPartition(t, p, o + 1) for (t, p), o in hi.items()]
        self._consumer.commit(offsets=offsets, asynchronous=False)


def message_position(m: Message) -> tuple[str, int, int]:
    """(topic, partition, offset) of a consumed message (never None for a non-error message)."""
    return str(m.topic()), int(m.partition() or 0), int(m.offset() or 0)


def _h(headers: dict[str, Any], name: str) -> str:
    v = headers.get(name)
    if v is None:
        return ""
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
