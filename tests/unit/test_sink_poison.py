"""The sink against the faults a user met on a real broker, with the fakes of
``test_sink_land`` (no broker, no ClickHouse):

1. a failed offset commit (coordinator moving, a rebalance) never stops the sink; any other
   unexpected error is recorded and raised as ``SinkError``; an unavailable schema registry is
   retried like ClickHouse / Kafka;
2. one 5 MB record judged bad is dead-lettered by reference and the valid events behind it land
   in the same batch; a dead letter Kafka refuses for its size falls back to that form; every
   counter of a batch is applied once, however often it was tried; a bad change record or
   dead-letter record is dead-lettered / counted, not a crash;
3. an event id re-used with other content is a conflict (dead-lettered), an identical repeat a
   duplicate, also after a restart;
4. an implausible event time is quarantined;
5. the per-partition ledger balances, and says so when it does not.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from schemas.errors import SchemaRegistryUnavailableError
from schemas.kafka import read_dead_letter_headers
from schemas.models import EventBase
from schemas.serde import AvroSerde, schema_fingerprint
from sinks.guards import SinkError
from sinks.ledger import LedgerError, SinkStats, Tally
from streams.intake import content_hash_of
from tests.unit.test_sink_land import (
    GARBAGE,
    TOPICS,
    Msg,
    Rig,
    encoded,
    ev_msg,
    event,
    land,
    ledger_entry,
    rig,
)

WAIT_COORD = KafkaException(KafkaError(KafkaError._WAIT_COORD, "Commit failed: Waiting for coordinator"))
POISON_SIZE = 5 * 1024 * 1024


def fast(r: Rig, **attrs: Any) -> Rig:
    """No real waiting between retries."""
    r.sink.retry_backoff = 0.001
    for k, v in attrs.items():
        setattr(r.sink, k, v)
    return r


def dead_sent(r: Rig) -> list[dict[str, Any]]:
    """The dead letters the sink sent (acknowledged), as header fields plus key and value."""
    return [
        {**read_dead_letter_headers(p.headers), "key": p.key, "value": p.value, "headers": dict(p.headers)}
        for p in r.producer.to(TOPICS.deadletter)
    ]


def changed(e: EventBase, **update: Any) -> EventBase:
    """The same event id with other content."""
    return e.model_copy(update=update)


def poison_payload(seed: int = 7) -> bytes:
    """5 MB that look like an OperationCompleted (a known single-object header) but are random."""
    body = random.Random(seed).randbytes(POISON_SIZE - 10)
    return b"\xc3\x01" + schema_fingerprint("OperationCompleted") + body


# ----------------------------------------------------------------------------- 1. commits


def test_a_commit_waiting_for_the_coordinator_is_retried_until_it_succeeds() -> None:
    r = fast(rig())
    r.consumer.commit_errors = [WAIT_COORD, WAIT_COORD]
    r.consumer.queued = [ev_msg(event("UnitTested"), 4, partition=1)]
    assert r.sink.poll_once() == 1  # no exception
    assert [e[0] for e in r.log if e[0].startswith("commit")] == ["commit failed", "commit failed", "commit"]
    assert r.log[r.index("commit")[0]][1] == [(TOPICS.events, 1, 5)]
    s = r.sink.stats
    assert (s.commit_retries, s.commit_failures, s.events_landed) == (2, 0, 1)
    assert "Waiting for coordinator" in (s.last_error or "")


def test_a_commit_that_stays_unavailable_is_given_up_not_raised() -> None:
    r = fast(rig(), commit_retry_seconds=0.05)
    r.consumer.commit_errors = [WAIT_COORD] * 1000
    r.consumer.queued = [ev_msg(event("UnitTested"), 4)]
    assert r.sink.poll_once() == 1
    s = r.sink.stats
    assert s.commit_failures == 1 and s.commit_retries >= 1 and s.events_landed == 1


@pytest.mark.parametrize(
    "code", [KafkaError.UNKNOWN_MEMBER_ID, KafkaError.REBALANCE_IN_PROGRESS, KafkaError.ILLEGAL_GENERATION]
)
def test_a_rebalance_during_the_commit_gives_the_batch_up_and_its_replay_is_a_no_op(code: int) -> None:
    op = event("OperationCompleted")
    r = fast(rig())
    r.consumer.commit_errors = [KafkaException(KafkaError(code, "Commit failed: rebalance"))]
    r.consumer.queued = [Msg(TOPICS.events, 0, 0, GARBAGE), ev_msg(op, 1)]
    assert r.sink.poll_once() == 2  # landed, commit given up at once (no retry), no exception
    s = r.sink.stats
    assert (s.commit_failures, s.commit_retries, s.events_landed, s.undecodable_skipped) == (1, 0, 1, 1)
    assert r.index("commit") == [] and len(r.index("commit failed")) == 1
    assert r.sink._watermarks_stale  # the assignment changed: read the watermarks again

    # the partition comes back (or another member takes it): the same records again
    r.consumer.queued = [Msg(TOPICS.events, 0, 0, GARBAGE), ev_msg(op, 1), ev_msg(event("UnitTested"), 2)]
    assert r.sink.poll_once() == 3
    assert (s.events_landed, s.replayed_skipped, s.undecodable_skipped, s.dead_letters_sent) == (2, 2, 1, 1)
    assert s.ledger == {
        0: ledger_entry(read=5, landed=2, replayed=2, dead_lettered={"MalformedRecordError": 1})
    }
    assert [x["kafka_offset"] for x in r.rows("unit_tests")] == [2]
    assert len(r.producer.to(TOPICS.deadletter)) == 1  # the garbage's dead letter: once
    assert r.index("commit")  # this time committed


def test_run_survives_a_failed_commit() -> None:
    r = fast(rig())
    r.consumer.commit_errors = [WAIT_COORD]
    r.consumer.queued = [ev_msg(event("UnitTested"), 0)]
    died: list[BaseException] = []

    def target() -> None:
        try:
            r.sink.run()
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            died.append(exc)

    t = threading.Thread(target=target)
    t.start()
    for _ in range(500):
        if r.index("commit"):
            break
        threading.Event().wait(0.01)
    r.sink.stop()
    t.join(5)
    assert not t.is_alive() and died == []
    assert r.index("commit") and r.sink.stats.commit_retries == 1 and r.consumer.closed


def test_an_unexpected_error_is_recorded_and_raised_as_a_sink_error() -> None:
    r = fast(rig())
    r.store.write_error = RuntimeError("disk on fire")
    r.consumer.queued = [ev_msg(event("UnitTested"), 0)]
    with pytest.raises(SinkError, match="RuntimeError: disk on fire"):
        r.sink.poll_once()
    assert r.sink.stats.last_error == "RuntimeError: disk on fire"
    assert r.index("commit") == []

    r.consumer.queued = [ev_msg(event("UnitTested"), 0)]
    with pytest.raises(SinkError):  # run() raises it too (for the supervisor), after closing
        r.sink.run()
    assert r.consumer.closed


class FlakyRegistrySerde(AvroSerde):
    """Its registry is unavailable for the first ``failures`` decodes."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def decode(self, data: bytes) -> tuple[str, dict[str, Any]]:
        if self.failures:
            self.failures -= 1
            raise SchemaRegistryUnavailableError("http://registry:8081", "connection refused")
        return super().decode(data)


def test_an_unavailable_schema_registry_is_retried_and_counts_nothing_twice() -> None:
    r = fast(rig())
    r.sink.serde = FlakyRegistrySerde(failures=2)
    op = event("OperationCompleted")
    r.consumer.queued = [Msg(TOPICS.events, 0, 0, GARBAGE), ev_msg(op, 1)]
    assert r.sink.poll_once() == 2
    s = r.sink.stats
    assert (s.registry_retries, s.events_landed, s.undecodable_skipped) == (2, 1, 1)
    assert "connection refused" in (s.last_error or "")
    assert r.index("commit")


# ----------------------------------------------------------------------------- 2. one record


def test_a_5mb_poison_record_is_dead_lettered_by_reference_and_the_events_behind_it_land() -> None:
    poison = poison_payload()
    ok = [event("UnitTested", n) for n in (1, 2, 3)]
    r = fast(rig())
    r.consumer.queued = [
        Msg(TOPICS.events, 0, 0, poison, key=b"poison"),
        Msg(TOPICS.events, 0, 1, GARBAGE, key=b"small"),  # another poison record in the batch
        *[ev_msg(e, 2 + i) for i, e in enumerate(ok)],
    ]
    assert r.sink.poll_once() == 5
    [big, small] = dead_sent(r)
    assert (big["key"], big["value"]) == (b"poison", poison[:4096])
    assert big["headers"]["traceline.ref_size"] == str(len(poison)).encode()
    assert big["headers"]["traceline.ref_sha256"] == hashlib.sha256(poison).hexdigest().encode()
    assert big["headers"]["traceline.ref_truncated"] == b"1"
    assert (big["source_offset"], big["error"]) == (0, "MalformedRecordError")
    assert (small["key"], small["value"]) == (b"small", GARBAGE)  # small enough: copied whole
    assert "traceline.ref_truncated" not in small["headers"]
    # the valid events behind it landed in the same batch, and it was committed
    [(tables, _token)] = r.store.writes
    assert [x["kafka_offset"] for x in tables["unit_tests"].to_pylist()] == [2, 3, 4]
    assert r.log[r.index("commit")[0]][1] == [(TOPICS.events, 0, 5)]
    s = r.sink.stats
    assert (s.dead_letters_sent, s.dead_letters_by_reference, s.undecodable_skipped, s.kafka_retries) == (
        2,
        1,
        2,
        0,
    )

    # read back from the dead-letter topic: a dead_letters row that names the whole record
    dl = r.producer.to(TOPICS.deadletter)[0]
    land(r, [Msg(TOPICS.deadletter, 0, 0, dl.value, key=dl.key, headers=dl.headers)])
    [row] = r.rows("dead_letters")
    assert (row["raw"], row["raw_size"], row["raw_sha256"], row["raw_truncated"]) == (
        poison[:4096],
        len(poison),
        hashlib.sha256(poison).hexdigest(),
        True,
    )
    assert (row["source_topic"], row["source_offset"], row["error"]) == (
        TOPICS.events,
        0,
        "MalformedRecordError",
    )


@pytest.mark.parametrize("where", ["refused by produce()", "refused on delivery"])
def test_a_dead_letter_kafka_refuses_for_its_size_falls_back_to_by_reference(where: str) -> None:
    bad = b"\xff" + bytes(300_000)  # under dead_letter_max_bytes, over what Kafka takes here
    r = fast(rig())
    if where == "refused by produce()":
        r.producer.max_message_bytes = 200_000
    else:
        r.producer.broker_max_bytes = 200_000
    r.consumer.queued = [Msg(TOPICS.events, 0, 0, bad, key=b"k"), ev_msg(event("UnitTested"), 1)]
    assert r.sink.poll_once() == 2  # no retry loop
    [dl] = dead_sent(r)
    assert dl["value"] == bad[:4096] and dl["headers"]["traceline.ref_size"] == b"300001"
    s = r.sink.stats
    assert (s.kafka_retries, s.dead_letters_sent, s.dead_letters_by_reference, s.events_landed) == (
        0,
        1,
        1,
        1,
    )


def test_the_counters_of_a_batch_apply_once_across_a_failed_and_retried_attempt() -> None:
    op = event("OperationCompleted")
    r = fast(rig())
    land(r, [ev_msg(op, 0)])  # landed before: the next ones repeat or contradict it
    s = r.sink.stats
    before = dict(s.ledger[0])
    r.store.fail_writes = 1
    batch = [
        Msg(TOPICS.events, 0, 1, GARBAGE),  # undecodable
        ev_msg(op, 2),  # a duplicate
        ev_msg(changed(op, operator_id="OP-OTHER"), 3),  # a conflict
        ev_msg(
            changed(event("UnitTested", 9), event_time=datetime(9999, 12, 31, tzinfo=UTC)), 4
        ),  # quarantined
        ev_msg(event("UnitTested", 1), 5),  # lands
    ]
    r.consumer.queued = list(batch)
    assert r.sink.poll_once() == 5
    assert s.store_retries == 1 and len(r.index("write_batch")) == 3  # 1 before, failed, retried
    assert len(r.producer.to(TOPICS.deadletter)) == 6  # Kafka saw each attempt's dead letters...
    # ... the sink counted each record once
    assert (s.batches, s.events_landed, s.undecodable_skipped, s.duplicates_skipped) == (2, 2, 1, 1)
    assert (s.conflicts, s.quarantined, s.replayed_skipped, s.dead_letters_sent) == (1, 1, 0, 3)
    assert s.ledger[0] == ledger_entry(
        read=before["read"] + 5,
        landed=2,
        dead_lettered={"MalformedRecordError": 1},
        duplicates=1,
        conflicts=1,
        quarantined=1,
    )
    assert r.sink.ledger_gap() == {}


def test_a_malformed_change_record_is_dead_lettered_and_the_rest_lands() -> None:
    change: dict[str, Any] = {"uii": "P:1", "parent_uii": None, "root_uii": "P:1", "path": [], "seq": 1}
    r = fast(rig())
    r.consumer.queued = [
        Msg(TOPICS.changes, 0, 0, b"{not json", key=b"a"),
        Msg(TOPICS.changes, 0, 1, json.dumps([change, {**change, "seq": -4}]).encode()),
        Msg(TOPICS.changes, 0, 2, json.dumps([change, {**change, "uii": "P:2", "seq": 2}]).encode()),
        Msg(TOPICS.changes, 0, 3, json.dumps("a string").encode()),
        Msg(TOPICS.changes, 0, 4, None),
    ]
    assert r.sink.poll_once() == 5
    dls = dead_sent(r)
    assert [(d["source_topic"], d["source_offset"], d["error"]) for d in dls] == [
        (TOPICS.changes, off, "MalformedChangeRecord") for off in (0, 1, 3, 4)
    ]
    assert "not JSON" in dls[0]["reason"] and "change 2 of 2: seq -4" in dls[1]["reason"]
    assert [x["uii"] for x in r.rows("unit_genealogy")] == ["P:1", "P:2"]  # the good record whole
    s = r.sink.stats
    assert (s.malformed_records, s.changes_landed, s.dead_letters_sent) == (4, 2, 4)
    assert r.index("commit")


def test_a_dead_letter_with_unreadable_headers_lands_with_a_note() -> None:
    headers = [
        ("traceline.source_topic", b"t.events"),
        ("traceline.source_partition", b"zero"),
        ("traceline.source_offset", b"99999999999999999999999"),
        ("traceline.error", None),
    ]
    r = fast(rig())
    r.consumer.queued = [Msg(TOPICS.deadletter, 0, 5, b"x", headers=headers)]  # type: ignore[arg-type]
    assert r.sink.poll_once() == 1
    [row] = r.rows("dead_letters")
    assert (row["source_topic"], row["source_partition"], row["source_offset"], row["error"]) == (
        "t.events",
        -1,
        -1,
        "",
    )
    assert "unreadable dead-letter headers" in row["reason"] and "zero" in row["reason"]
    assert r.sink.stats.malformed_records == 1 and r.sink.stats.dead_letters_landed == 1


# ----------------------------------------------------------------------------- 3. conflicts


def test_a_reused_event_id_with_other_content_is_a_conflict_an_identical_repeat_a_duplicate() -> None:
    op = event("OperationCompleted")
    other = changed(op, operator_id="OP-OTHER")
    h_op, h_other = content_hash_of(encoded(op)), content_hash_of(encoded(other))
    assert h_op != h_other
    r = fast(rig())
    land(r, [ev_msg(op, 0), ev_msg(op, 1), ev_msg(other, 2)])  # inside one batch
    land(r, [ev_msg(op, 3), ev_msg(other, 4, partition=1)])  # and against the recent ids
    dls = dead_sent(r)
    assert [(d["source_partition"], d["source_offset"], d["error"]) for d in dls] == [
        (0, 2, "ConflictingDuplicate"),
        (1, 4, "ConflictingDuplicate"),
    ]
    for d in dls:
        assert op.event_id in d["reason"]
        assert f"{h_op:016x}" in d["reason"] and f"{h_other:016x}" in d["reason"]
        assert d["value"] == encoded(other)
    s = r.sink.stats
    assert (s.events_landed, s.duplicates_skipped, s.conflicts) == (1, 2, 2)
    assert [x["operator_id"] for x in r.rows("operations", 0)] == [op.operator_id]  # type: ignore[attr-defined]
    assert r.rows("operations", 0)[0]["content_hash"] == h_op


def test_a_conflict_is_found_after_a_restart_from_the_stored_content_hash() -> None:
    op = event("OperationCompleted")
    first = fast(rig())
    first.consumer.queued = [ev_msg(op, 0)]
    first.sink.poll_once()

    again = fast(rig())  # a new sink (empty memory) on the same store
    again.store.recent, again.store.marks = first.store.recent, first.store.marks
    again.consumer.queued = [ev_msg(op, 1), ev_msg(changed(op, operator_id="OP-OTHER"), 2)]
    assert again.sink.poll_once() == 2
    s = again.sink.stats
    assert (s.duplicates_skipped, s.conflicts, s.events_landed) == (1, 1, 0)

    legacy = fast(rig())  # landed before content hashes were stored (0): a duplicate, as before
    legacy.store.recent = [(op.event_id, 0)]
    legacy.consumer.queued = [ev_msg(changed(op, operator_id="OP-OTHER"), 1)]
    legacy.sink.poll_once()
    assert (legacy.sink.stats.duplicates_skipped, legacy.sink.stats.conflicts) == (1, 0)


# ----------------------------------------------------------------------------- 4. times


@pytest.mark.parametrize(
    "when",
    [datetime(9999, 12, 31, 23, 59, tzinfo=UTC), datetime(1999, 12, 31, tzinfo=UTC), "in 2 days"],
)
def test_an_implausible_event_time_is_quarantined(when: datetime | str) -> None:
    t = datetime.now(UTC) + timedelta(days=2) if when == "in 2 days" else when
    assert isinstance(t, datetime)
    bad = changed(event("UnitTested", 1), event_time=t)
    good = event("UnitTested", 2)
    in_20h = (datetime.now(UTC) + timedelta(hours=20)).replace(microsecond=0)
    soon = changed(event("UnitTested", 3), event_time=in_20h)  # within the skew
    r = fast(rig())
    land(r, [ev_msg(good, 0), ev_msg(bad, 1), ev_msg(soon, 2)])
    [dl] = dead_sent(r)
    assert (dl["source_offset"], dl["error"], dl["value"]) == (1, "ImplausibleEventTime", encoded(bad))
    assert t.isoformat()[:10] in dl["reason"]
    assert [x["kafka_offset"] for x in r.rows("unit_tests")] == [0, 2]
    s = r.sink.stats
    assert (s.quarantined, s.events_landed, s.dead_letters_sent) == (1, 2, 1)
    assert s.last_event_time == soon.event_time  # never the implausible one


def test_the_plausible_window_is_configurable() -> None:
    e = changed(event("UnitTested", 1), event_time=datetime(1995, 5, 5, tzinfo=UTC))
    r = fast(rig(), earliest_event_time=datetime(1990, 1, 1, tzinfo=UTC), max_future_skew=timedelta(0))
    land(r, [ev_msg(e, 0)])
    assert r.sink.stats.quarantined == 0 and r.sink.stats.events_landed == 1


# ----------------------------------------------------------------------------- 5. ledger


def test_the_ledger_balances_for_a_mixed_batch() -> None:
    op = event("OperationCompleted")
    r = fast(rig(marks={("unit_tests", 1): 3}))
    r.sink._refresh_watermarks()
    msgs = [
        ev_msg(op, 10),  # landed
        ev_msg(op, 11),  # duplicate
        ev_msg(changed(op, operator_id="X"), 12),  # conflict
        Msg(TOPICS.events, 0, 13, GARBAGE),  # dead-lettered: MalformedRecordError
        Msg(TOPICS.events, 0, 14, b"\xc3\x01" + bytes(8) + b"body"),  # UnknownSchemaError
        Msg(TOPICS.events, 0, 15, None),  # a tombstone: DecodeError
        ev_msg(changed(event("UnitShipped"), event_time=datetime(2999, 1, 1, tzinfo=UTC)), 16),  # quarantined
        ev_msg(op, 10),  # a redelivery of offset 10 inside the batch: read once
        ev_msg(event("UnitTested", 1), 3, partition=1),  # replayed (at the watermark)
        Msg(TOPICS.events, 1, 2, GARBAGE),  # replayed (below a landed record: sent before)
        ev_msg(event("UnitTested", 2), 4, partition=1),  # landed
        Msg(TOPICS.changes, 0, 0, b"[]"),  # other topics are not in the events ledger
    ]
    land(r, msgs)
    s = r.sink.stats
    assert s.ledger == {
        0: ledger_entry(
            read=7,
            landed=1,
            duplicates=1,
            conflicts=1,
            quarantined=1,
            dead_lettered={"MalformedRecordError": 1, "UnknownSchemaError": 1, "DecodeError": 1},
        ),
        1: ledger_entry(read=3, landed=1, replayed=2),
    }
    assert r.sink.ledger_gap() == {}
    assert s.as_dict()["ledger"]["1"] == s.ledger[1]


def test_ledger_gap_reports_an_unbalanced_ledger_and_a_record_cannot_get_two_fates() -> None:
    r = fast(rig())
    land(r, [ev_msg(event("UnitTested", 1), 0), Msg(TOPICS.events, 0, 1, GARBAGE)])
    assert r.sink.ledger_gap() == {}
    r.sink.stats.ledger[0]["landed"] -= 1  # a record that went nowhere
    assert r.sink.ledger_gap() == {0: 1}
    r.sink.stats.ledger[0]["dead_lettered"]["MalformedRecordError"] += 2  # counted twice
    assert r.sink.ledger_gap() == {0: -1}

    t = Tally()
    assert t.read_once(0, 5) and not t.read_once(0, 5)
    t.fate(0, 5, "landed")
    with pytest.raises(LedgerError, match="second fate"):
        t.fate(0, 5, "duplicates")
    t.fate(0, 6, "landed")  # never read: the ledger shows it as a negative gap
    stats = SinkStats()
    stats.apply(t)
    assert stats.ledger_gap() == {0: -1}
    with pytest.raises(LedgerError, match="unknown"):
        t.read_once(0, 7) and t.fate(0, 7, "lost")
