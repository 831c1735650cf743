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

Tamper evidence (``sinks.chain``): every landed raw row (and alert) is hashed and chained per
(topic, partition) in offset order; the ``event_chain`` entries (and, at most every
``chain_sign_seconds`` and when idle, the heads signed with ``chain_signer`` into
``chain_heads``) go into the same ``write_batch``, before the raw tables.

A record whose rows landed (at or below a watermark) therefore had its commands sent before,
so a replay skips it entirely; a crash between 2 and 4 re-sends commands, which are idempotent.
Kafka unreachable in step 2: back off and retry the batch, like ClickHouse unavailable (and
like the schema registry unavailable in step 1).

What one record must not do (``sinks.guards``):

* **stall the batch**: a dead letter larger than ``dead_letter_max_bytes`` (or one Kafka
  refuses for its size) is sent *by reference*: its first ``dead_letter_prefix_bytes`` and
  headers naming its size and sha256 (``dead_letters.raw_size`` / ``raw_sha256`` /
  ``raw_truncated``); a change or alert record that does not parse is dead-lettered too;
* **pass as a duplicate**: an event id seen before (this batch, the recent-id map, or landed
  before a restart: ``content_hash`` on the raw rows) with another content hash is a conflict,
  dead-lettered as ``ConflictingDuplicate``; only the same hash is a duplicate;
* **fool the readers' clock**: an event time before ``earliest_event_time`` or after the
  ingest time plus ``max_future_skew`` is quarantined (dead-lettered as
  ``ImplausibleEventTime``), not landed and not the sink's ``last_event_time``;
* **speak for another source** (``schemas.signing.attest``, keys from ``gateway_keys``): a
  gateway signature that does not hold (changed bytes, unknown or revoked key, another source's
  key) is dead-lettered with its reason, and with ``require_signed`` an unsigned event too; a
  verified one lands with ``verified_source`` / ``signing_key_id``.

Counters and the per-partition ledger (``sinks.ledger``) are applied once, when a batch landed.
A failed commit is retried while it is retriable and given up after a rebalance (the batch
landed; its replay is a no-op); it never stops the sink. Anything else unexpected is recorded
in ``stats.last_error`` and raised as :class:`SinkError` for the supervisor to restart.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

import pyarrow as pa
import pydantic_core
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from schemas.alert import decode_alert
from schemas.errors import BrokerUnavailableError, DecodeError, SchemaRegistryUnavailableError
from schemas.kafka import (
    bad_dead_letter_headers,
    consumer_config,
    message_position,
    producer_config,
    read_dead_letter_headers,
    read_dead_letter_reference,
)
from schemas.nogc import gc_paused
from schemas.serde import AvroSerde
from schemas.signing import Refusal, RegisteredKey, attest
from schemas.topics import TopicNames
from sinks.chain import ChainBatch, ChainState, Signer
from sinks.guards import (
    UNKNOWN_HASH,
    RecentIds,
    SinkError,
    commit_failure,
    conflict_reason,
    fit_dead_letter,
    refused_as_record,
)
from sinks.ledger import CONFLICTS, DEAD_LETTERED, DUPLICATES, LANDED, QUARANTINED, REPLAYED, SinkStats, Tally
from sinks.rows import (
    RAW_TABLE,
    RAW_TABLES,
    SinkRecord,
    alert_rows,
    change_problem,
    deadletter_rows,
    genealogy_rows,
    rows_for_batch,
)
from sinks.store import Store, StoreError
from streams.genealogy import Lots, Send, Touch
from streams.intake import DeadLetter, batches_by_partition, dead_letter, implausible_time, judge

__all__ = ["SinkWorker", "SinkStats", "SinkError", "ConsumerClient", "ProducerClient", "EARLIEST_EVENT_TIME"]

log = logging.getLogger(__name__)

EARLIEST_EVENT_TIME = datetime(2000, 1, 1, tzinfo=UTC)
"""The default earliest plausible event time (``SinkWorker(earliest_event_time=)``)."""

# what decoding a foreign alert record may raise besides DecodeError (pydantic's ValidationError
# is a ValueError)
_ALERT_ERRORS = (
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    EOFError,
    OverflowError,
    MemoryError,
    struct.error,
)


class GatewayKeys(Protocol):
    """Where the sink reads the gateway keys, once per batch (``sinks.gateway_keys``)."""

    def keys(self) -> Mapping[str, RegisteredKey]: ...


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
    earliest: datetime  # plausible event times: [earliest, latest]
    latest: datetime
    events: list[SinkRecord] = field(default_factory=list)
    changes: list[dict[str, Any]] = field(default_factory=list)
    dead: list[dict[str, Any]] = field(default_factory=list)  # dead-letter topic -> dead_letters
    alerts: list[tuple[Any, int, int, datetime]] = field(default_factory=list)
    commands: list[Send] = field(default_factory=list)
    touched: set[str] = field(default_factory=set)  # units with a Touch in this batch
    lots: dict[str, set[tuple[str, str]]] = field(default_factory=dict)  # merged Lots per unit
    dead_out: list[DeadLetter] = field(default_factory=list)  # judged bad: to the dead-letter topic
    ranges: dict[tuple[str, int], list[int]] = field(default_factory=dict)  # (topic, part) -> [lo, hi]
    batch_ids: dict[str, int] = field(default_factory=dict)  # event id -> content hash, landing now
    tally: Tally = field(default_factory=Tally)  # counts and the ledger's fates, applied once landed
    chain: ChainBatch | None = None  # the batch's tables with its hash chain entries (sinks.chain)
    keys: Mapping[str, RegisteredKey] = field(default_factory=dict)  # gateway keys, read per batch

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

    ``dead_letter_max_bytes``: a dead letter larger than this (keep it below the producer's
    ``message.max.bytes`` and the dead-letter topic's ``max.message.bytes``) is sent by
    reference, with its first ``dead_letter_prefix_bytes``. ``max_future_skew`` /
    ``earliest_event_time``: the plausible event times (later than the ingest time plus the
    skew, or earlier than the earliest: quarantined). ``commit_retry_seconds``: how long a
    retriable commit failure is retried before the commit is given up. ``chain_signer``: the
    key chain heads are signed with (``sinks.chain.Signer``; None: chained, not signed), at most
    every ``chain_sign_seconds`` per chain and when idle. ``gateway_keys``: the registry gateway
    signatures are checked against (None: none registered); ``require_signed``: an unsigned
    event is dead-lettered.
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
        dead_letter_max_bytes: int = 900_000,
        dead_letter_prefix_bytes: int = 4096,
        max_future_skew: timedelta = timedelta(days=1),
        earliest_event_time: datetime = EARLIEST_EVENT_TIME,
        commit_retry_seconds: float = 30.0,
        chain_signer: Signer | None = None,
        chain_sign_seconds: float = 1.0,
        gateway_keys: GatewayKeys | None = None,
        require_signed: bool = False,
    ) -> None:
        self.store = store
        self.topics = topics
        self.serde = serde or AvroSerde(topic=topics.events)
        self.batch_size = batch_size
        self.batch_seconds = batch_seconds
        self.drain_poll_seconds = 0.05
        self.dead_letter_max_bytes = dead_letter_max_bytes
        self.dead_letter_prefix_bytes = dead_letter_prefix_bytes
        self.max_future_skew = max_future_skew
        self.earliest_event_time = earliest_event_time
        self.commit_retry_seconds = commit_retry_seconds
        self.retry_backoff = 0.5  # seconds before the first retry of a batch / 2.5 of a commit
        self._window_from: float | None = None  # when the previous collection ended
        self.stats = SinkStats()
        self.on_batch = on_batch
        self._recent = RecentIds(recent_ids)
        self._stop = threading.Event()
        self._watermarks: dict[tuple[str, int], int] = {}
        self._part_marks: dict[int, int] = {}
        self._watermarks_stale = True
        self._recent_loaded = False
        self._chain = ChainState(topics.alerts, chain_signer, chain_sign_seconds)
        self.gateway_keys = gateway_keys
        self.require_signed = require_signed
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
        """Poll batches until ``stop()``. Raises only :class:`SinkError` (recorded in
        ``stats.last_error`` first): build a new worker and run it again."""
        try:
            while not self._stop.is_set():
                self.poll_once()
        finally:
            try:
                self.close()
            except Exception as exc:  # noqa: BLE001 - never hide the error that ended run()
                log.warning("closing the sink's clients failed: %s", exc)

    def ledger_gap(self) -> dict[int, int]:
        """Events-topic partition -> records read but not accounted for; empty when balanced."""
        return self.stats.ledger_gap()

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
                    if err.fatal():
                        raise SinkError(f"the sink's consumer failed: {err}")
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
        self._chain.load(self.store)
        self._watermarks_stale = False
        if not self._recent_loaded:
            self._load_recent_ids()

    def _load_recent_ids(self) -> None:
        """A new sink (a restart) starts with an empty recent-id map: refill it with the newest
        event ids already landed and their content hashes, so a producer re-send of an event
        that landed before the restart is still dropped (and a re-used id still a conflict)."""
        union = " UNION ALL ".join(
            f"SELECT event_id, content_hash, ingest_time FROM {t} WHERE kafka_topic = {{t:String}}"  # noqa: S608
            for t in RAW_TABLES
        )
        _names, rows = self.store.query_rows(
            f"SELECT event_id, content_hash FROM ({union}) ORDER BY ingest_time DESC"  # noqa: S608
            f" LIMIT {int(self._recent.limit)}",
            {"t": self.topics.events},
        )
        for eid, h in reversed(rows):
            self._recent.add(eid, int(h))
        self._recent_loaded = True

    def poll_once(self) -> int:
        """Collect one batch, land it, commit it. Returns the number of records handled.

        Unavailable ClickHouse, Kafka or schema registry: back off and retry the batch; a
        failed commit: retried or given up (never raised). Anything else: recorded in
        ``stats.last_error`` and raised as :class:`SinkError`."""
        try:
            return self._poll_once()
        except SinkError:
            raise
        except Exception as exc:  # noqa: BLE001 - recorded and raised for the supervisor, not swallowed
            self.stats.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("the sink stopped")
            raise SinkError(f"the sink stopped: {type(exc).__name__}: {exc}") from exc

    def _poll_once(self) -> int:
        t0 = time.monotonic()
        msgs = self._collect()
        if not msgs:
            self._sign_idle()
            return 0
        self.stats._time("collect", t0)
        if not self._land_retrying(msgs):
            return 0  # stopping: nothing committed, the batch is read again next time
        t0 = time.monotonic()
        self._commit(msgs)
        self.stats._time("commit", t0)
        return len(msgs)

    def _land_retrying(self, msgs: list[Message]) -> bool:
        attempt = 0
        while not self._stop.is_set():
            try:
                if self._watermarks_stale:
                    self._refresh_watermarks()
                self._land(msgs)
                self.stats.store_error = None
                return True
            except (StoreError, BrokerUnavailableError, SchemaRegistryUnavailableError) as exc:
                # ClickHouse is unavailable or refused the batch, Kafka did not take its
                # commands / dead letters, or the registry cannot name a schema: keep the
                # batch, back off, re-read the watermarks (part of it may have landed) and
                # try again. Nothing of a failed attempt is counted.
                if isinstance(exc, StoreError):
                    self.stats.store_retries += 1
                    self.stats.store_error = str(exc)
                elif isinstance(exc, SchemaRegistryUnavailableError):
                    self.stats.registry_retries += 1
                else:
                    self.stats.kafka_retries += 1
                attempt += 1
                self.stats.last_error = str(exc)
                self._watermarks_stale = True
                log.warning("retrying batch of %d: %s", len(msgs), exc)
                self._stop.wait(min(30.0, self.retry_backoff * 2 ** min(attempt, 6)))
        return False

    @gc_paused
    def _land(self, msgs: list[Message]) -> None:
        """Judge, send, build rows, insert (see the module doc); the commit is the caller's.
        The collector is paused for the batch (``schemas.nogc``)."""
        t0 = time.monotonic()
        now = datetime.now(UTC)
        b = _Batch(now, self.stats.last_event_time, self.earliest_event_time, now + self.max_future_skew)
        if self.gateway_keys is not None:
            b.keys = self.gateway_keys.keys()
        t = self.topics
        t_events, t_changes, t_alerts, t_dlq = t.events, t.changes, t.alerts, t.deadletter
        for m in msgs:
            topic, part, off = message_position(m)
            b.see(topic, part, off)
            if topic == t_events:
                if b.tally.read_once(part, off):  # a redelivery inside the batch: once
                    self._take_event(b, m, topic, part, off)
            elif topic == t_changes:
                self._take_change(b, m, topic, part, off)
            elif topic == t_alerts:
                self._take_alert(b, m, topic, part, off)
            elif topic == t_dlq:
                self._take_dead_letter(b, m, topic, part, off)
        b.merge_lots()
        stats = self.stats
        t0 = stats._time("judge", t0)
        if b.commands or b.dead_out:
            self._send(b)  # before any insert: see the module doc
        t0 = stats._time("send", t0)
        b.chain = self._chain.extend(self._tables(b), b.now)
        t0 = stats._time("rows", t0)
        self._write(b, b.chain.tables)
        stats._time("insert", t0)
        self._account(b)

    def _take_event(self, b: _Batch, m: Message, topic: str, part: int, off: int) -> None:
        """A raw event: judge it (decode once) and give it one fate: a bad one, one with an
        implausible time or a re-used id with other content becomes a dead letter to send;
        one landed before (watermark) or seen recently with the same content is skipped; a
        new one is kept with its genealogy commands (Touch once per unit, Lots merged)."""
        judged = judge(self.serde, m.key(), m.value(), topic, part, off)
        if isinstance(judged, DeadLetter):
            self._dead_event(b, part, off, judged, DEAD_LETTERED)
            return
        type_name, rec = judged.type_name, judged.record
        if off <= self._watermarks.get((RAW_TABLE.get(type_name, ""), part), -1):
            b.tally.fate(part, off, REPLAYED)
            return
        signed = attest(
            m.headers(), m.value() or b"", rec["source"], b.keys, require_signed=self.require_signed
        )
        if isinstance(signed, Refusal):
            d = dead_letter(m.key(), m.value(), topic, part, off, signed.error, signed.reason)
            self._dead_event(b, part, off, d, DEAD_LETTERED)
            return
        et = rec["event_time"]
        if not b.earliest <= et <= b.latest:
            why = implausible_time(et, b.now, self.earliest_event_time, self.max_future_skew)
            d = dead_letter(m.key(), m.value(), topic, part, off, "ImplausibleEventTime", str(why))
            self._dead_event(b, part, off, d, QUARANTINED)
            return
        eid, h = rec["event_id"], judged.content_hash
        seen = b.batch_ids.get(eid)  # a re-send inside this batch, or one landed recently
        if seen is None:
            seen = self._recent.get(eid)
        if seen is not None:
            if seen == h or UNKNOWN_HASH in (seen, h):
                b.tally.fate(part, off, DUPLICATES)
                return
            reason = conflict_reason(eid, seen, h)
            d = dead_letter(m.key(), m.value(), topic, part, off, "ConflictingDuplicate", reason)
            self._dead_event(b, part, off, d, CONFLICTS)
            return
        b.batch_ids[eid] = h
        b.events.append(SinkRecord(type_name, rec, topic, part, off, b.now, h, signed.source, signed.key_id))
        b.tally.fate(part, off, LANDED)
        for target, cmd in judged.commands:
            if isinstance(cmd, Touch):  # idempotent: once per unit and batch is enough
                if target in b.touched:
                    continue
                b.touched.add(target)
            elif isinstance(cmd, Lots):  # grow-only sets: one merged command per unit
                b.lots.setdefault(target, set()).update(cmd.lots)
                continue
            b.commands.append((target, cmd))
        if b.last_time is None or et > b.last_time:
            b.last_time = et

    def landed_content_hash(self, event_id: str) -> int | None:
        """The content hash an event id landed with, as far as this sink remembers (the recent
        ids, loaded from the store at start); None when it does not know the id (thread-safe
        read: the alert engine of this process asks)."""
        return self._recent.get(event_id)

    def _dead_event(self, b: _Batch, part: int, off: int, d: DeadLetter, category: str) -> None:
        """An events-topic record to dead-letter, unless a later record of its partition
        landed: then its dead letter was sent before (a replay)."""
        if off < self._max_mark(part):
            b.tally.fate(part, off, REPLAYED)
            return
        b.dead_out.append(d)
        b.tally.fate(part, off, category, d.error)

    def _take_change(self, b: _Batch, m: Message, topic: str, part: int, off: int) -> None:
        """A genealogy change record (the writer sends a list of changes per record); one that
        does not parse or has a change ``genealogy_rows`` cannot land is dead-lettered whole."""
        value = m.value() or b""
        try:
            got = pydantic_core.from_json(value)
        except ValueError as exc:
            why = f"not JSON: {exc}"
        else:
            items = got if isinstance(got, list) else [got]
            problems = ((i, change_problem(ch)) for i, ch in enumerate(items))
            first = next(((i, p) for i, p in problems if p is not None), None)
            if first is None:
                b.changes.extend(items)
                return
            why = f"change {first[0] + 1} of {len(items)}: {first[1]}"
        b.dead_out.append(dead_letter(m.key(), value, topic, part, off, "MalformedChangeRecord", why))
        b.tally.malformed_records += 1

    def _take_alert(self, b: _Batch, m: Message, topic: str, part: int, off: int) -> None:
        value = m.value() or b""
        try:
            b.alerts.append((decode_alert(value), part, off, b.now))
            return
        except DecodeError as exc:
            error, why = type(exc).__name__, exc.reason
        except _ALERT_ERRORS as exc:
            error, why = "MalformedAlertRecord", f"{type(exc).__name__}: {exc}"
        b.dead_out.append(dead_letter(m.key(), value, topic, part, off, error, why))
        b.tally.malformed_records += 1

    def _take_dead_letter(self, b: _Batch, m: Message, topic: str, part: int, off: int) -> None:
        """A dead-letter record (ours or another writer's): a ``dead_letters`` row, whatever its
        headers hold (unreadable ones are named in the reason and counted)."""
        raw = m.value() or b""
        hs = m.headers()
        headers = list(hs.items()) if isinstance(hs, dict) else list(hs or [])
        row = read_dead_letter_headers(headers)
        bad = bad_dead_letter_headers(headers)
        if bad:
            row["reason"] = f"{row['reason']} [unreadable dead-letter headers: {', '.join(bad)}]".lstrip()
            b.tally.malformed_records += 1
        b.dead.append(
            {
                **row,
                **read_dead_letter_reference(headers, raw),
                "key": m.key() or b"",
                "raw": raw,
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
        for name, tbl in (genealogy_rows(b.changes) if b.changes else {}).items():
            # lot_units comes from both: the batch's consumptions (each unit under its lots as
            # its own root, seq 0: queryable by lot before the genealogy places it) and the
            # genealogy's change records; both are kept
            tables[name] = pa.concat_tables([tables[name], tbl]) if name in tables else tbl
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
        """The batch landed: remember its event ids, count it (once), report it."""
        if b.chain is not None:
            self._chain.landed(b.chain, b.now)
        for eid, h in b.batch_ids.items():
            self._recent.add(eid, h)
        s = self.stats
        s.apply(b.tally)
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

    def _sign_idle(self) -> None:
        """Nothing arrived: sign the chain heads not signed yet (never raises a store error:
        they are signed at the next chance)."""
        if self._watermarks_stale:
            return
        now = datetime.now(UTC)
        heads = self._chain.idle_heads(now)
        if heads is None:
            return
        token = "heads:" + ";".join(f"{t}:{p}:{o}" for (t, p), (o, _h) in sorted(heads.signed.items()))
        try:
            self.store.write_batch(heads.tables, token)
        except StoreError as exc:
            log.warning("signing the chain heads failed (retried when idle again): %s", exc)
            self._watermarks_stale = True
            return
        self._chain.landed(heads, now)

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

    def _send(self, b: _Batch) -> None:
        """Send the batch's genealogy commands (batched per partition) and dead letters, and
        wait until Kafka acknowledged all of them. A dead letter too large to copy, or one
        Kafka refuses as a record (its size), goes by reference. Raises
        BrokerUnavailableError when anything else is not acknowledged."""
        errors: list[str] = []
        refused: list[DeadLetter] = []  # refused on delivery: sent again by reference

        def delivered(err: Any, _msg: Any) -> None:
            if err is not None:
                errors.append(str(err))

        def dead_delivered(d: DeadLetter) -> Callable[[Any, Any], None]:
            def report(err: Any, _msg: Any) -> None:
                if err is not None and refused_as_record(err):
                    refused.append(d)
                elif err is not None:
                    errors.append(str(err))

            return report

        max_bytes, prefix = self.dead_letter_max_bytes, self.dead_letter_prefix_bytes
        n_records = by_reference = 0
        try:
            if b.commands:
                t = self.topics.commands
                for part, value, _n in batches_by_partition(b.commands, self._partitions_of_commands()):
                    self._producer.produce(t, value=value, partition=part, on_delivery=delivered)
                    n_records += 1
            for d in b.dead_out:
                fit = fit_dead_letter(d, max_bytes, prefix)
                by_reference += fit is not d
                try:
                    self._produce_dead(fit, dead_delivered(fit))
                except KafkaException as exc:
                    if not refused_as_record(exc):
                        raise
                    self._produce_dead(fit_dead_letter(d, max_bytes, prefix, force=True), delivered)
                    by_reference += fit is d
            left = self._producer.flush(30)
            if refused and not left and not errors:
                for d in refused:
                    self._produce_dead(fit_dead_letter(d, max_bytes, prefix, force=True), delivered)
                    by_reference += 1
                left = self._producer.flush(30)
        except (KafkaException, BufferError) as exc:
            raise BrokerUnavailableError(
                self._bootstrap, f"cannot send genealogy commands / dead letters: {exc}"
            ) from exc
        if left or errors:
            raise BrokerUnavailableError(
                self._bootstrap, f"{left} commands / dead letters not acknowledged: {errors[:3]}"
            )
        tally = b.tally
        tally.commands_sent = len(b.commands)
        tally.command_records_sent = n_records
        tally.dead_letters_sent = len(b.dead_out)
        tally.dead_letters_by_reference = by_reference

    def _produce_dead(self, d: DeadLetter, on_delivery: Callable[[Any, Any], None]) -> None:
        self._producer.produce(
            self.topics.deadletter,
            key=d.key,
            value=d.value,
            headers=list[Any](d.headers),
            on_delivery=on_delivery,
        )

    def _commit(self, msgs: list[Message]) -> bool:
        """Commit the batch's offsets. A retriable failure is retried with back-off for up to
        ``commit_retry_seconds``; after a rebalance (the partitions went to another member) or
        any other failure the commit is given up: the batch landed, so its replay is a no-op.
        Never raises a Kafka error. Returns whether the offsets were committed."""
        hi: dict[tuple[str, int], int] = {}
        for m in msgs:
            t, p, o = message_position(m)
            if o >= hi.get((t, p), -1):
                hi[(t, p)] = o
        offsets = [TopicPartition(t, p, o + 1) for (t, p), o in hi.items()]
        delay = self.retry_backoff * 0.4
        deadline = time.monotonic() + self.commit_retry_seconds
        while True:
            try:
                result = self._consumer.commit(offsets=offsets, asynchronous=False)
                failed = [tp.error for tp in result or () if getattr(tp, "error", None) is not None]
                if not failed:
                    return True
                raise KafkaException(failed[0])
            except KafkaException as exc:
                err = exc.args[0] if exc.args else exc
                how = commit_failure(err)
                self.stats.last_error = f"commit failed ({how}): {err}"
                if how == "retry" and not self._stop.is_set() and time.monotonic() + delay <= deadline:
                    self.stats.commit_retries += 1
                    log.warning("commit failed, retrying in %.1f s: %s", delay, err)
                    self._stop.wait(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                self.stats.commit_failures += 1
                if how == "revoked":
                    self._watermarks_stale = True
                log.warning("commit given up (%s: %s): the batch landed; its replay is skipped", how, err)
                return False
