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
from typing import Any, Literal, Protocol

import pydantic_core
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from schemas.alert import decode_alert
from schemas.errors import BrokerUnavailableError, DecodeError
from schemas.kafka import consumer_config, message_position, producer_config, read_dead_letter_headers
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

__all__ = ["SinkWorker", "SinkStats", "ConsumerClient", "ProducerClient"]

log = logging.getLogger(__name__)


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


class ConsumerClient(Protocol):
    """The part of ``confluent_kafka.Consumer`` the sink uses (a test passes a fake)."""

    def subscribe(
        self, topics: list[str], on_assign: Callable[[Any, list[TopicPartition]], None] | None = ...
    ) -> None: ...

    def consume(self, num_messages: int = ..., timeout: float = ...) -> list[Message]: ...

    def commit(self, *, offsets: list[TopicPartition], asynchronous: Literal[False]) -> Any: ...

    def close(self) -> object: ...


class ProducerClient(Protocol):
    """The part of ``confluent_kafka.Producer`` the sink uses (a test passes a fake)."""

    def produce(
        self,
        topic: str,
        *,
        value: bytes | None = ...,
        key: bytes | None = ...,
        partition: int = ...,
        on_delivery: Callable[[Any, Any], None] | None = ...,
        headers: Any = ...,
    ) -> None: ...

    def flush(self, timeout: float = ...) -> int: ...

    def list_topics(self, topic: str | None = ..., timeout: float = ...) -> Any: ...

    def close(self) -> object: ...


@dataclass(slots=True)
class _Batch:
    """What one batch collects on its way to ClickHouse (filled by ``SinkWorker._take_*``)."""

    now: datetime  # the batch's ingest time
    last_time: datetime | None  # the newest event time seen so far (stats, once landed)
    events: list[SinkRecord] = field(default_factory=list)
    changes: list[dict[str, Any]] = field(default_factory=list)
    dead: list[dict[str, Any]] = field(default_factory=list)  # dead-letter topic -> dead_letters
    alerts: list[tuple[Any, int, int, datetime]] = field(default_factory=list)
    commands: list[Send] = field(default_factory=list)
    touched: set[str] = field(default_factory=set)  # units with a Touch in this batch
    lots: dict[str, set[tuple[str, str]]] = field(default_factory=dict)  # merged Lots per unit
    dead_out: list[DeadLetter] = field(default_factory=list)  # judged bad: to the dead-letter topic
    ranges: dict[tuple[str, int], list[int]] = field(default_factory=dict)  # (topic, part) -> [lo, hi]
    new_ids: list[str] = field(default_factory=list)
    batch_ids: set[str] = field(default_factory=set)

    def see(self, topic: str, part: int, off: int) -> None:
        r = self.ranges.setdefault((topic, part), [off, off])
        r[0] = min(r[0], off)
        r[1] = max(r[1], off)

    def merge_lots(self) -> None:
        """Append one merged ``Lots`` command per unit (grow-only sets) to the commands."""
        self.commands.extend((u, Lots(u, tuple(sorted(ls)))) for u, ls in self.lots.items())

    def token(self) -> str:
        """The insert deduplication token: the batch's offset ranges (stable for a replay)."""
        return ";".join(f"{t}:{p}:{a}-{b}" for (t, p), (a, b) in sorted(self.ranges.items()))


class SinkWorker:
    """One sink consumer. ``run()`` loops until ``stop()``; ``poll_once()`` does one batch.

    ``consumer`` / ``producer``: Kafka clients to use instead of building them from
    ``schemas.kafka.consumer_config`` / ``producer_config`` (and the overrides); the sink
    subscribes the consumer and closes both in ``close()``.
    """

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
        consumer: ConsumerClient | None = None,
        producer: ProducerClient | None = None,
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
        # "is None", not "or": a real Producer is falsy while its queue is empty (__len__)
        if consumer is None:
            consumer = Consumer(consumer_config(bootstrap, group_id, **(consumer_overrides or {})))
        if producer is None:
            producer = Producer(producer_config(bootstrap, **{"linger.ms": 5, **(producer_overrides or {})}))
        self._consumer: ConsumerClient = consumer
        self._bootstrap = bootstrap
        self._producer: ProducerClient = producer
        self._command_partitions = 0
        self._consumer.subscribe(
            [topics.events, topics.changes, topics.deadletter, topics.alerts], on_assign=self._on_assign
        )

    # -- lifecycle ----------------------------------------------------------------------
    def _on_assign(self, _consumer: Any, _partitions: list[TopicPartition]) -> None:
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
        """Judge, send, build rows, insert (see the module doc); the commit is the caller's."""
        t0 = time.monotonic()
        b = _Batch(now=datetime.now(UTC), last_time=self.stats.last_event_time)
        t = self.topics
        t_events, t_changes, t_alerts, t_dlq = t.events, t.changes, t.alerts, t.deadletter
        for m in msgs:
            topic, part, off = message_position(m)
            b.see(topic, part, off)
            if topic == t_events:
                self._take_event(b, m, topic, part, off)
            elif topic == t_changes:
                self._take_change(b, m)
            elif topic == t_alerts:
                self._take_alert(b, m, part, off)
            elif topic == t_dlq:
                self._take_dead_letter(b, m, topic, part, off)
        b.merge_lots()
        stats = self.stats
        t0 = stats._time("judge", t0)
        if b.commands or b.dead_out:
            self._send(b.commands, b.dead_out)  # before any insert: see the module doc
        t0 = stats._time("send", t0)
        tables = self._tables(b)
        t0 = stats._time("rows", t0)
        self._write(b, tables)
        stats._time("insert", t0)
        self._account(b)

    def _take_event(self, b: _Batch, m: Message, topic: str, part: int, off: int) -> None:
        """A raw event: judge it (decode once); a bad one becomes a dead letter to send, one
        landed before (watermark) or seen recently (event id) is skipped; a new one is kept
        with its genealogy commands (Touch once per unit, Lots merged per unit)."""
        judged = judge(self.serde, m.key(), m.value(), topic, part, off)
        if isinstance(judged, DeadLetter):
            self.stats.undecodable_skipped += 1
            if off < self._max_mark(part):
                return  # a later record of this partition landed: sent before
            b.dead_out.append(judged)
            return
        type_name, rec = judged.type_name, judged.record
        if off <= self._watermarks.get((RAW_TABLE.get(type_name, ""), part), -1):
            self.stats.replayed_skipped += 1
            return
        eid = rec["event_id"]
        if eid in self._recent or eid in b.batch_ids:  # also a re-send inside this batch
            self.stats.duplicates_skipped += 1
            return
        b.batch_ids.add(eid)
        b.new_ids.append(eid)
        b.events.append(SinkRecord(type_name, rec, topic, part, off, b.now))
        for target, cmd in judged.commands:
            if isinstance(cmd, Touch):  # idempotent: once per unit and batch is enough
                if target in b.touched:
                    continue
                b.touched.add(target)
            elif isinstance(cmd, Lots):  # grow-only sets: one merged command per unit
                b.lots.setdefault(target, set()).update(cmd.lots)
                continue
            b.commands.append((target, cmd))
        et = rec["event_time"]
        if b.last_time is None or et > b.last_time:
            b.last_time = et

    def _take_change(self, b: _Batch, m: Message) -> None:
        """A genealogy change record: the writer sends a list of changes per record."""
        got = pydantic_core.from_json(m.value() or b"")
        if isinstance(got, list):
            b.changes.extend(got)
        else:
            b.changes.append(got)

    def _take_alert(self, b: _Batch, m: Message, part: int, off: int) -> None:
        try:
            b.alerts.append((decode_alert(m.value() or b""), part, off, b.now))
        except DecodeError:
            self.stats.undecodable_skipped += 1

    def _take_dead_letter(self, b: _Batch, m: Message, topic: str, part: int, off: int) -> None:
        """A dead-letter record (ours or another writer's): a ``dead_letters`` row."""
        headers = m.headers()
        b.dead.append(
            {
                **read_dead_letter_headers(headers.items() if isinstance(headers, dict) else headers),
                "key": m.key() or b"",
                "raw": m.value() or b"",
                "dlq_topic": topic,
                "dlq_partition": part,
                "dlq_offset": off,
                "ingest_time": b.now,
            }
        )

    @staticmethod
    def _tables(b: _Batch) -> dict[str, Any]:
        """The batch's Arrow tables in insert order: facts and genealogy first, raw tables
        last, so a landed raw row (the watermark) implies its facts landed too."""
        tables: dict[str, Any] = {}
        raw = rows_for_batch(b.events) if b.events else {}
        for name, tbl in raw.items():
            if name not in RAW_TABLES:
                tables[name] = tbl
        tables.update(genealogy_rows(b.changes) if b.changes else {})
        tables.update(deadletter_rows(b.dead) if b.dead else {})
        tables.update(alert_rows(b.alerts) if b.alerts else {})
        for name, tbl in raw.items():
            if name in RAW_TABLES:
                tables[name] = tbl
        return tables

    def _write(self, b: _Batch, tables: dict[str, Any]) -> None:
        if tables:
            self.store.write_batch(tables, b.token())

    def _account(self, b: _Batch) -> None:
        """The batch landed: remember its event ids, count it, report it."""
        for eid in b.new_ids:
            self._recent.add(eid)
        s = self.stats
        s.batches += 1
        s.events_landed += len(b.events)
        s.changes_landed += len(b.changes)
        s.dead_letters_landed += len(b.dead)
        s.alerts_landed += len(b.alerts)
        s.last_event_time = b.last_time
        s.last_batch_at = b.now
        for (t, p), (_a, hi) in b.ranges.items():
            s.positions[f"{t}[{p}]"] = hi + 1
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
