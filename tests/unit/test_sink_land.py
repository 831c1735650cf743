"""The sink's batch landing (``SinkWorker._land`` and its parts) with fake Kafka clients and a
fake store: no broker, no ClickHouse. Real events, encoded with the real ``AvroSerde``.

What must hold (see the ``sinks.ingest`` module doc): commands and dead letters are sent and
acknowledged before any insert; undecodable records become one dead letter each; replays at or
below a watermark and re-sent event ids are skipped and counted; dead-letter topic records land
in ``dead_letters``; a batch's insert token does not change when it is replayed; a Kafka failure
writes nothing; offsets are committed only after the insert.
"""

from __future__ import annotations

import gc
import hashlib
import json
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from schemas.alert import Alert, AlertRule, AlertSeverity, encode_alert
from schemas.errors import BrokerUnavailableError
from schemas.kafka import dead_letter_headers, read_dead_letter_headers
from schemas.models import EventBase
from schemas.serde import AvroSerde
from schemas.topics import TopicNames
from sinks.ingest import SinkWorker
from sinks.rows import RAW_TABLES
from sinks.store import StoreError
from streams.genealogy import Lots, Touch
from streams.intake import Accepted, command_partition, decode_command_batch, judge
from tests.samples import sample_events

SERDE = AvroSerde()
TOPICS = TopicNames(events="t.events", prefix="t.")
COMMAND_PARTITIONS = 3
SAMPLES = {e.type: e for e in sample_events()}
GARBAGE = b"\xffnot an event"


def event(type_name: str, n: int = 0) -> EventBase:
    """The sample event of ``type_name`` with its own event id ``n`` (0: the sample's id)."""
    e = SAMPLES[type_name]
    return e if n == 0 else e.model_copy(update={"event_id": f"{e.event_id[:-4]}{n:04d}"})


def encoded(e: EventBase) -> bytes:
    return SERDE.encode_event(e)


# ----------------------------------------------------------------------------- fakes


class Msg:
    """A consumed record (the part of ``confluent_kafka.Message`` the sink reads)."""

    def __init__(
        self,
        topic: str,
        partition: int,
        offset: int,
        value: bytes | None,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        self._t, self._p, self._o, self._v, self._k, self._h = topic, partition, offset, value, key, headers

    def topic(self) -> str:
        return self._t

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def key(self) -> bytes | None:
        return self._k

    def value(self) -> bytes | None:
        return self._v

    def headers(self) -> list[tuple[str, bytes]] | None:
        return self._h

    def error(self) -> None:
        return None


def ev_msg(e: EventBase, offset: int, partition: int = 0) -> Msg:
    return Msg(TOPICS.events, partition, offset, encoded(e), key=e.event_id.encode())


class Consumer:
    """Hands out ``queued``; ``commit`` raises the next of ``commit_errors`` (if any) instead of
    committing."""

    def __init__(self, log: list[tuple[Any, ...]]) -> None:
        self.log = log
        self.queued: list[Msg] = []
        self.subscribed: list[str] = []
        self.closed = False
        self.commit_errors: list[BaseException] = []

    def subscribe(self, topics: list[str], on_assign: Any = None) -> None:
        self.subscribed = list(topics)

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Msg]:
        got, self.queued = self.queued[:num_messages], self.queued[num_messages:]
        return got

    def commit(self, *, offsets: list[Any], asynchronous: bool) -> None:
        if self.commit_errors:
            self.log.append(("commit failed",))
            raise self.commit_errors.pop(0)
        self.log.append(("commit", sorted((tp.topic, tp.partition, tp.offset) for tp in offsets)))

    def close(self) -> None:
        self.closed = True


@dataclass
class Produced:
    topic: str
    value: bytes | None
    key: bytes | None
    partition: int
    headers: Any
    on_delivery: Any


class Producer:
    """Records every produce; ``flush`` reports each delivery (with ``delivery_error``) and
    returns ``left`` (records not acknowledged). Like librdkafka, ``produce`` refuses a record
    over ``max_message_bytes`` (MSG_SIZE_TOO_LARGE); the broker refuses (on delivery) a record
    over ``broker_max_bytes``."""

    def __init__(self, log: list[tuple[Any, ...]]) -> None:
        self.log = log
        self.sent: list[Produced] = []
        self.left = 0
        self.delivery_error: str | None = None
        self.produce_error: BaseException | None = None
        self.max_message_bytes = 1_000_000
        self.broker_max_bytes: int | None = None
        self.refused: list[Produced] = []  # refused on delivery (not in sent)
        self._pending: list[Produced] = []

    def produce(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int = -1,
        on_delivery: Any = None,
        headers: Any = None,
    ) -> None:
        if self.produce_error is not None:
            raise self.produce_error
        size = len(value or b"") + len(key or b"")
        if size > self.max_message_bytes:
            self.log.append(("produce refused", topic))
            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "Message size too large"))
        p = Produced(topic, value, key, partition, headers, on_delivery)
        self._pending.append(p)
        self.log.append(("produce", topic))

    def flush(self, timeout: float = -1) -> int:
        self.log.append(("flush",))
        for p in self._pending:
            err: Any = self.delivery_error
            if (
                err is None
                and self.broker_max_bytes is not None
                and len(p.value or b"") > self.broker_max_bytes
            ):
                err = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "Broker: Message size too large")
            (self.sent if err is None else self.refused).append(p)
            if p.on_delivery is not None:
                p.on_delivery(err, p)
        self._pending = []
        return self.left

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any:
        parts = {i: object() for i in range(COMMAND_PARTITIONS)}
        return SimpleNamespace(topics={TOPICS.commands: SimpleNamespace(error=None, partitions=parts)})

    def close(self) -> None:
        pass

    def to(self, topic: str) -> list[Produced]:
        return [p for p in self.sent if p.topic == topic]


@dataclass
class Store:
    log: list[tuple[Any, ...]]
    marks: dict[tuple[str, int], int] = field(default_factory=dict)  # (raw table, partition)
    fail_writes: int = 0  # the next n write_batch calls raise StoreError
    writes: list[tuple[dict[str, Any], str]] = field(default_factory=list)
    recent: list[tuple[str, int]] = field(default_factory=list)  # landed (event_id, content_hash)
    write_error: BaseException | None = None  # write_batch raises it (an unexpected failure)

    def write_batch(self, tables: dict[str, Any], token: str) -> dict[str, int]:
        self.log.append(("write_batch", token))
        if self.write_error is not None:
            raise self.write_error
        if self.fail_writes:
            self.fail_writes -= 1
            raise StoreError("ClickHouse said no", operation="insert")
        self.writes.append((dict(tables), token))
        for name, t in tables.items():  # what a watermark query reads back
            if name in RAW_TABLES:
                for row in t.select(["kafka_partition", "kafka_offset"]).to_pylist():
                    key = (name, row["kafka_partition"])
                    self.marks[key] = max(self.marks.get(key, -1), row["kafka_offset"])
                self.recent += list(
                    zip(t["event_id"].to_pylist(), t["content_hash"].to_pylist(), strict=True)
                )
        return {name: t.num_rows for name, t in tables.items()}

    def query_rows(self, sql: str, params: Any = None) -> tuple[list[str], list[tuple[Any, ...]]]:
        if "max(kafka_offset)" in sql:
            table = sql.split(" FROM ", 1)[1].split()[0]
            return ["p", "o"], [(p, o) for (t, p), o in self.marks.items() if t == table]
        return ["event_id", "content_hash"], list(reversed(self.recent))  # newest first


@dataclass
class Rig:
    sink: SinkWorker
    consumer: Consumer
    producer: Producer
    store: Store
    log: list[tuple[Any, ...]]

    def rows(self, table: str, write: int = -1) -> list[dict[str, Any]]:
        return self.store.writes[write][0][table].to_pylist()  # type: ignore[no-any-return]

    def index(self, *entry: Any) -> list[int]:
        """Positions of ``entry`` (matched on its leading items) in the call log."""
        return [i for i, e in enumerate(self.log) if e[: len(entry)] == entry]


def rig(**kw: Any) -> Rig:
    log: list[tuple[Any, ...]] = []
    consumer, producer, store = Consumer(log), Producer(log), Store(log, **kw)
    sink = SinkWorker(
        "fake:9092",
        store,  # type: ignore[arg-type]
        topics=TOPICS,
        serde=SERDE,
        batch_seconds=0.01,
        consumer=consumer,  # type: ignore[arg-type]
        producer=producer,  # type: ignore[arg-type]
    )
    return Rig(sink, consumer, producer, store, log)


def land(r: Rig, msgs: list[Msg]) -> None:
    r.sink._land(msgs)  # type: ignore[arg-type]


def ledger_entry(read: int = 0, dead_lettered: dict[str, int] | None = None, **counts: int) -> dict[str, Any]:
    """A partition's expected ledger entry (``sinks.ledger``): zero where not given."""
    entry: dict[str, Any] = {"read": read, "landed": 0, "dead_lettered": dict(dead_lettered or {})}
    entry.update({k: 0 for k in ("duplicates", "conflicts", "quarantined", "replayed")})
    entry.update(counts)
    return entry


def produced_commands(r: Rig) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for p in r.producer.to(TOPICS.commands):
        assert p.value is not None
        batch = decode_command_batch(p.value)
        assert {command_partition(k, COMMAND_PARTITIONS) for k, _c in batch} == {p.partition}
        out.extend((k, json.dumps(c.to_dict(), sort_keys=True)) for k, c in batch)
    return sorted(out)


def commands_of(*events: EventBase) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for e in events:
        j = judge(SERDE, None, encoded(e), TOPICS.events, 0, 0)
        assert isinstance(j, Accepted)
        out.extend((k, json.dumps(c.to_dict(), sort_keys=True)) for k, c in j.commands)
    return sorted(out)


# ----------------------------------------------------------------------------- tests


def test_the_injected_clients_are_used_and_subscribed() -> None:
    r = rig()
    assert r.sink._consumer is r.consumer and r.sink._producer is r.producer
    assert set(r.consumer.subscribed) == {TOPICS.events, TOPICS.changes, TOPICS.deadletter, TOPICS.alerts}
    r.sink.close()
    assert r.consumer.closed


def test_a_valid_event_lands_with_its_facts_after_its_commands_were_acknowledged() -> None:
    op, asm = event("OperationCompleted"), event("UnitAssembled")
    r = rig()
    land(r, [ev_msg(op, 5, partition=1), ev_msg(asm, 6, partition=1)])

    # the commands (Lots, Link, Link, Touch), each on the partition owning its key
    assert produced_commands(r) == commands_of(op, asm) != []
    # ... acknowledged (flush) before the one insert
    produces, flushes, writes = r.index("produce"), r.index("flush"), r.index("write_batch")
    assert len(writes) == 1 and len(flushes) == 1
    assert max(produces) < flushes[0] < writes[0]

    assert [(x["event_id"], x["kafka_offset"], x["kafka_partition"]) for x in r.rows("operations")] == [
        (op.event_id, 5, 1)
    ]
    assert [x["event_id"] for x in r.rows("assembly_events")] == [asm.event_id]
    for fact in ("lot_consumption", "unit_consumption"):
        assert {x["event_id"] for x in r.rows(fact)} == {op.event_id}
    # facts before the raw tables they come from (a landed raw row is the watermark)
    names = list(r.store.writes[0][0])
    raw_at = [i for i, n in enumerate(names) if n in RAW_TABLES]
    assert raw_at == list(range(len(names) - 2, len(names)))

    s = r.sink.stats
    assert (s.batches, s.events_landed, s.undecodable_skipped, s.duplicates_skipped) == (1, 2, 0, 0)
    assert s.commands_sent == len(commands_of(op, asm))
    assert s.command_records_sent == len(r.producer.to(TOPICS.commands))
    assert s.positions == {f"{TOPICS.events}[1]": 7}
    assert s.last_event_time == max(op.event_time, asm.event_time)


def test_touch_once_per_unit_and_lots_merged_per_unit_in_a_batch() -> None:
    asm1, asm2 = event("UnitAssembled", 1), event("UnitAssembled", 2)
    op1, op2 = event("OperationCompleted", 1), event("OperationCompleted", 2)
    r = rig()
    land(r, [ev_msg(asm1, 0), ev_msg(asm2, 1), ev_msg(op1, 2), ev_msg(op2, 3)])
    cmds = [(k, c) for p in r.producer.to(TOPICS.commands) for k, c in decode_command_batch(p.value or b"")]
    touches = [k for k, c in cmds if isinstance(c, Touch)]
    lots = [k for k, c in cmds if isinstance(c, Lots)]
    assert len(touches) == len(set(touches)) == 1
    assert len(lots) == len(set(lots)) == 1


def test_an_undecodable_record_is_one_dead_letter_counted_once() -> None:
    ok = event("UnitTested")
    r = rig()
    land(r, [Msg(TOPICS.events, 2, 3, GARBAGE, key=b"k1"), ev_msg(ok, 4, partition=2)])

    [dl] = r.producer.to(TOPICS.deadletter)
    assert r.producer.sent == [dl]  # no commands for a UnitTested
    assert (dl.key, dl.value) == (b"k1", GARBAGE)
    h = read_dead_letter_headers(dl.headers)
    assert (h["source_topic"], h["source_partition"], h["source_offset"], h["error"]) == (
        TOPICS.events,
        2,
        3,
        "MalformedRecordError",
    )
    assert h["reason"]
    assert max(r.index("produce")) < r.index("flush")[0] < r.index("write_batch")[0]
    assert [x["kafka_offset"] for x in r.rows("unit_tests")] == [4]  # the good one lands
    s = r.sink.stats
    assert (s.undecodable_skipped, s.dead_letters_sent, s.events_landed) == (1, 1, 1)
    assert s.dead_letters_landed == 0  # lands when the sink reads it back from the topic


def test_a_tombstone_is_a_dead_letter_too() -> None:
    r = rig()
    land(r, [Msg(TOPICS.events, 0, 0, None, key=b"gone")])
    [dl] = r.producer.to(TOPICS.deadletter)
    assert (dl.key, dl.value) == (b"gone", b"")
    assert "tombstone" in read_dead_letter_headers(dl.headers)["reason"]
    assert r.store.writes == [] and r.sink.stats.undecodable_skipped == 1


def test_a_replayed_offset_at_or_below_the_watermark_is_skipped_and_counted() -> None:
    r = rig(marks={("operations", 0): 10})
    r.sink._refresh_watermarks()
    ops = [event("OperationCompleted", n) for n in (1, 2, 3)]
    tested = event("UnitTested")
    msgs = [
        Msg(TOPICS.events, 0, 8, GARBAGE),  # bad, below a landed record: sent before
        ev_msg(ops[0], 9),
        ev_msg(ops[1], 10),  # at the watermark: landed
        ev_msg(tested, 7, partition=0),  # another raw table: its own (absent) watermark
        ev_msg(ops[2], 11),
    ]
    land(r, msgs)
    s = r.sink.stats
    # the bad record's dead letter was sent before (a later record landed): a replay too
    assert (s.replayed_skipped, s.duplicates_skipped, s.undecodable_skipped) == (3, 0, 0)
    assert s.ledger == {0: ledger_entry(read=5, landed=2, replayed=3)}
    assert r.producer.to(TOPICS.deadletter) == []  # counted, not sent again
    assert [x["kafka_offset"] for x in r.rows("operations")] == [11]
    assert [x["kafka_offset"] for x in r.rows("unit_tests")] == [7]
    assert produced_commands(r) == commands_of(ops[2])  # a skipped record sent its commands before
    assert s.events_landed == 2


def test_a_duplicate_event_id_is_counted_in_the_batch_and_after_it() -> None:
    op = event("OperationCompleted")
    r = rig()
    land(r, [ev_msg(op, 0), ev_msg(op, 1)])  # a producer re-send inside one batch
    s = r.sink.stats
    assert (s.duplicates_skipped, s.events_landed, s.replayed_skipped) == (1, 1, 0)
    assert [x["kafka_offset"] for x in r.rows("operations")] == [0]
    assert s.commands_sent == len(commands_of(op))

    land(r, [ev_msg(op, 2)])  # ... and in the next batch (the recent-id set)
    assert (s.duplicates_skipped, s.events_landed) == (2, 1)
    assert len(r.store.writes) == 1  # nothing to write
    assert s.commands_sent == len(commands_of(op))


def test_dead_letter_topic_records_land_in_dead_letters_with_their_header_fields() -> None:
    headers = dead_letter_headers(TOPICS.events, 3, 42, "MalformedRecordError", "truncated body")
    r = rig()
    land(
        r,
        [
            Msg(TOPICS.deadletter, 1, 7, b"raw bytes", key=b"k", headers=headers),
            Msg(TOPICS.deadletter, 1, 8, b"foreign", key=None, headers=None),
        ],
    )
    assert r.producer.sent == [] and r.index("flush") == []  # nothing to send
    rows = r.rows("dead_letters")
    for x in rows:
        assert x.pop("ingest_time") is not None
    assert rows == [
        {
            "source_topic": TOPICS.events,
            "source_partition": 3,
            "source_offset": 42,
            "error": "MalformedRecordError",
            "reason": "truncated body",
            "key": b"k",
            "raw": b"raw bytes",
            "dlq_topic": TOPICS.deadletter,
            "dlq_partition": 1,
            "dlq_offset": 7,
            "raw_size": 9,
            "raw_sha256": hashlib.sha256(b"raw bytes").hexdigest(),
            "raw_truncated": False,
        },
        {
            "source_topic": "",
            "source_partition": -1,
            "source_offset": -1,
            "error": "",
            "reason": "",
            "key": b"",
            "raw": b"foreign",
            "dlq_topic": TOPICS.deadletter,
            "dlq_partition": 1,
            "dlq_offset": 8,
            "raw_size": 7,
            "raw_sha256": hashlib.sha256(b"foreign").hexdigest(),
            "raw_truncated": False,
        },
    ]
    s = r.sink.stats
    assert (s.dead_letters_landed, s.dead_letters_sent, s.undecodable_skipped) == (2, 0, 0)


def test_a_mixed_batch_writes_facts_genealogy_dead_letters_alerts_then_raw_tables() -> None:
    lt = event("LotTransformed")
    change: dict[str, Any] = {"uii": "P:1", "parent_uii": None, "root_uii": "P:1", "path": [], "seq": 1}
    alert = Alert(
        alert_id="A-1",
        rule=AlertRule.NC_RAISED,
        severity=AlertSeverity.WARNING,
        title="t",
        subject_kind="LOT",
        subject_id="L1",
        raised_at=datetime(2026, 1, 1, tzinfo=UTC),
        event_time=datetime(2026, 1, 1, tzinfo=UTC),
        trigger_event_id="e",
        trigger_type="NonconformanceRaised",
        site="s",
        program="p",
    )
    r = rig()
    land(
        r,
        [
            Msg(TOPICS.alerts, 0, 0, encode_alert(alert)),
            Msg(TOPICS.alerts, 0, 1, b"not an alert"),
            Msg(TOPICS.deadletter, 0, 0, b"x"),
            Msg(TOPICS.changes, 0, 0, json.dumps([change, {**change, "uii": "P:2"}]).encode()),
            Msg(TOPICS.changes, 0, 1, json.dumps({**change, "uii": "P:3"}).encode()),  # a single change
            ev_msg(lt, 0),
        ],
    )
    [(tables, _token)] = r.store.writes
    assert list(tables) == [
        "lot_lineage",
        "unit_genealogy",
        "root_members",
        "dead_letters",
        "alerts",
        "event_chain",
        "lot_transformed",
    ]
    assert [x["uii"] for x in tables["unit_genealogy"].to_pylist()] == ["P:1", "P:2", "P:3"]
    assert [x["alert_id"] for x in tables["alerts"].to_pylist()] == ["A-1"]
    s = r.sink.stats
    assert (s.changes_landed, s.alerts_landed, s.dead_letters_landed, s.events_landed) == (3, 1, 1, 1)
    # the bad alert is dead-lettered (a malformed record, not an undecodable event)
    [dl] = r.producer.to(TOPICS.deadletter)
    h = read_dead_letter_headers(dl.headers)
    assert (h["source_topic"], h["source_offset"], h["error"]) == (TOPICS.alerts, 1, "MalformedRecordError")
    assert (s.malformed_records, s.undecodable_skipped, s.dead_letters_sent) == (1, 0, 1)
    assert s.positions == {
        f"{TOPICS.alerts}[0]": 2,
        f"{TOPICS.deadletter}[0]": 1,
        f"{TOPICS.changes}[0]": 2,
        f"{TOPICS.events}[0]": 1,
    }


def test_the_dedup_token_is_stable_for_the_same_batch() -> None:
    msgs = [ev_msg(event("UnitTested", n), 10 + n, partition=n % 2) for n in range(1, 7)]
    msgs.append(Msg(TOPICS.deadletter, 0, 3, b"x"))
    r = rig(fail_writes=1)
    with pytest.raises(StoreError):
        land(r, msgs)
    assert r.sink.stats.batches == 0 and r.sink.stats.events_landed == 0
    land(r, msgs)  # the retry of the same batch
    tokens = [e[1] for e in r.log if e[0] == "write_batch"]
    assert len(tokens) == 2 and tokens[0] == tokens[1] != ""
    assert r.sink.stats.events_landed == 6  # the failed attempt kept no event ids

    shuffled = list(msgs)
    random.Random(1).shuffle(shuffled)
    other = rig()
    land(other, shuffled)  # another sink, the same records in another order
    assert other.store.writes[0][1] == tokens[0]

    moved = rig()
    land(moved, msgs[:-1])  # another batch
    assert moved.store.writes[0][1] != tokens[0]


@pytest.mark.parametrize("failure", ["not acknowledged", "delivery error", "produce raises"])
def test_a_kafka_failure_raises_and_nothing_is_written(failure: str) -> None:
    op = event("OperationCompleted")
    msgs = [ev_msg(op, 0), Msg(TOPICS.events, 0, 1, GARBAGE)]
    r = rig()
    if failure == "not acknowledged":
        r.producer.left = 2
    elif failure == "delivery error":
        r.producer.delivery_error = "Broker: Not enough in-sync replicas"
    else:
        r.producer.produce_error = BufferError("Local: Queue full")
    with pytest.raises(BrokerUnavailableError):
        land(r, msgs)
    assert r.index("write_batch") == []
    s = r.sink.stats
    assert (s.batches, s.events_landed, s.commands_sent, s.dead_letters_sent) == (0, 0, 0, 0)
    assert s.positions == {}

    r.producer.left, r.producer.delivery_error, r.producer.produce_error = 0, None, None
    land(r, msgs)  # the retry lands it all (the event id was not remembered)
    assert (s.events_landed, s.duplicates_skipped) == (1, 0)
    assert [x["event_id"] for x in r.rows("operations")] == [op.event_id]


def test_poll_once_commits_after_the_insert() -> None:
    r = rig()
    r.consumer.queued = [
        ev_msg(event("OperationCompleted"), 4, partition=1),
        ev_msg(event("UnitTested"), 5, partition=1),
        Msg(TOPICS.deadletter, 0, 9, b"x"),
    ]
    assert r.sink.poll_once() == 3
    [commit] = r.index("commit")
    assert r.index("flush")[0] < r.index("write_batch")[0] < commit
    assert r.log[commit][1] == sorted([(TOPICS.deadletter, 0, 10), (TOPICS.events, 1, 6)])
    assert set(r.sink.stats.stage_seconds) == {"collect", "judge", "send", "rows", "insert", "commit"}


def test_a_batch_lands_with_the_collector_paused_and_it_is_on_again_after() -> None:
    """``schemas.nogc``: the batch's records are freed by reference counting; the collector
    must come back on after the batch, also when the insert fails."""
    seen: list[bool] = []
    r = rig()
    write = r.store.write_batch

    def spy(tables: dict[str, Any], token: str) -> dict[str, int]:
        seen.append(gc.isenabled())
        return write(tables, token)

    r.store.write_batch = spy  # type: ignore[method-assign]
    assert gc.isenabled()
    land(r, [ev_msg(event("OperationCompleted"), 0)])
    assert seen == [False] and gc.isenabled()
    r.store.fail_writes = 1
    with pytest.raises(StoreError):
        land(r, [ev_msg(event("UnitTested"), 1)])
    assert seen == [False, False] and gc.isenabled()


def test_a_batch_keeps_its_consumptions_under_their_lots_beside_the_genealogys_lot_rows() -> None:
    """``lot_units`` gets rows from the batch's operations (the unit under each lot it consumed,
    as its own root, seq 0: found by a lot recall before the genealogy places it) and from the
    genealogy's change records in the same batch; one must not replace the other (it did: a
    lot recall missed units until the genealogy processor caught up)."""
    op = event("OperationCompleted")
    change: dict[str, Any] = {
        "uii": "P:9",
        "parent_uii": "S:9",
        "root_uii": "S:9",
        "path": ["S:9"],
        "seq": 3,
        "lots": {"LOT-G": "SITE-1"},
    }
    r = rig()
    land(r, [Msg(TOPICS.changes, 0, 0, json.dumps([change]).encode()), ev_msg(op, 0)])
    rows = r.rows("lot_units")
    consumed = {x["lot_id"] for x in r.rows("lot_consumption")}
    assert consumed and {(x["lot_id"], x["seq"]) for x in rows if x["uii"] != "P:9"} == {
        (lot, 0) for lot in consumed
    }
    assert [(x["lot_id"], x["uii"], x["root_uii"], x["seq"]) for x in rows if x["uii"] == "P:9"] == [
        ("LOT-G", "P:9", "S:9", 3)
    ]
