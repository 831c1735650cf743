"""The sink against a poison record on the real broker and the embedded ClickHouse engine.

A 5 MB record the broker accepted (lz4 compresses it to a few KB; the producer's
``message.max.bytes`` is raised to let it out) is judged bad. It cannot be copied whole to the
dead-letter topic (the sink's producer sends at most ~1 MB), so it is dead-lettered by
reference, and the valid events behind it land in the same batch: no retry loop. The ledger
balances on the sink's side and agrees with the store's.

Migration 5 (``content_hash`` on the raw tables, ``raw_size`` / ``raw_sha256`` /
``raw_truncated`` on ``dead_letters``) upgrades a store that holds data; rows landed before it
read back as "hash not known", so a re-use of their ids stays a duplicate.
"""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from schemas.kafka import ensure_topics, producer_config
from schemas.serde import AvroSerde, schema_fingerprint
from schemas.topics import TopicNames
from sinks import ddl
from sinks.ingest import SinkWorker
from sinks.ledger import store_ledger
from sinks.rows import RAW_TABLES, SinkRecord, rows_for_batch
from sinks.store import Store
from tests.samples import sample_events

pytestmark = pytest.mark.integration

POISON_SIZE = 5 * 1024 * 1024


def _poison() -> bytes:
    """5 MB that start like an OperationCompleted and then are not one: compressible text."""
    head = b"\xc3\x01" + schema_fingerprint("OperationCompleted")
    filler = b"this is not an Avro body, it only looks like one at first glance. "
    return (head + filler * (POISON_SIZE // len(filler) + 1))[:POISON_SIZE]


def _scalar(store: Store, sql: str, params: dict[str, Any]) -> Any:
    return store.query_rows(sql, params)[1][0][0]


def test_a_5mb_poison_record_is_dead_lettered_by_reference_and_the_events_behind_it_land(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    topics = TopicNames(events=f"{topic_prefix}events", prefix=topic_prefix)
    ensure_topics(kafka_bootstrap, topics, partitions=1)
    serde = AvroSerde(topic=topics.events)
    events = [
        e.model_copy(update={"event_id": f"{e.event_id[:-4]}{i:04d}"}) for i, e in enumerate(sample_events())
    ]
    poison = _poison()

    producer = Producer(
        producer_config(kafka_bootstrap, **{"compression.type": "lz4", "message.max.bytes": 8 * 1024 * 1024})
    )
    failed: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failed.append(str(err))

    producer.produce(topics.events, key=b"poison", value=poison, on_delivery=delivered)
    producer.produce(topics.events, key=b"garbage", value=b"\xffsmall poison", on_delivery=delivered)
    for e in events:
        producer.produce(
            topics.events, key=e.kafka_key().encode(), value=serde.encode_event(e), on_delivery=delivered
        )
    assert producer.flush(60) == 0 and failed == [], f"the broker refused: {failed}"

    store = Store.open(f"chdb://{tmp_path / 'ch'}", "traceline")
    sink = SinkWorker(
        kafka_bootstrap, store, topics=topics, group_id=f"{topic_prefix}sink", serde=serde, batch_seconds=0.3
    )
    sink.retry_backoff = 0.05
    params = {"t": topics.events}
    landed = dead = 0
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            sink.poll_once()
            landed = sum(
                _scalar(store, f"SELECT count() FROM {t} WHERE kafka_topic = {{t:String}}", params)  # noqa: S608
                for t in RAW_TABLES
            )
            dead = _scalar(store, "SELECT count() FROM dead_letters WHERE source_topic = {t:String}", params)
            if landed == len(events) and dead == 2:
                break
        s = sink.stats
        assert (landed, dead) == (len(events), 2), f"landed {landed}, dead letters {dead}: {s.as_dict()}"
        # one pass: no retry of the batch, the poison went by reference
        assert (s.kafka_retries, s.store_retries, s.dead_letters_by_reference, s.dead_letters_sent) == (
            0,
            0,
            1,
            2,
        )
        assert (s.undecodable_skipped, s.events_landed) == (2, len(events))

        rows = store.query(
            "SELECT error, source_offset, hex(raw) AS raw_hex, raw_size, raw_sha256, raw_truncated"
            " FROM dead_letters WHERE source_topic = {t:String} ORDER BY source_offset",
            params,
        )
        big, small = rows
        raw = bytes.fromhex(big["raw_hex"])
        assert big["source_offset"] == 0 and big["error"] == "MalformedRecordError"
        assert (len(raw), big["raw_size"], big["raw_sha256"], bool(big["raw_truncated"])) == (
            4096,
            len(poison),
            hashlib.sha256(poison).hexdigest(),
            True,
        )
        assert raw == poison[:4096]
        assert (
            small["source_offset"] == 1
            and not small["raw_truncated"]
            and small["raw_size"] == len(b"\xffsmall poison")
        )

        # the events-topic ledger: balanced on the sink's side, and the store agrees
        assert sink.ledger_gap() == {}
        assert s.ledger == {
            0: {
                "read": len(events) + 2,
                "landed": len(events),
                "dead_lettered": {"MalformedRecordError": 2},
                "duplicates": 0,
                "conflicts": 0,
                "quarantined": 0,
                "replayed": 0,
            }
        }
        assert store_ledger(store, topics.events) == {
            0: {"landed": len(events), "dead_lettered": {"MalformedRecordError": 2}}
        }
    finally:
        sink.close()
        store.close()


def test_migration_5_upgrades_a_store_with_data_and_old_rows_read_as_hash_unknown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dsn = f"chdb://{tmp_path / 'ch'}"
    e = sample_events()[0]
    t, r = AvroSerde().decode(AvroSerde().encode_event(e))
    tables = rows_for_batch([SinkRecord(t, r, "old.events", 0, 5, datetime.now(UTC))])
    with monkeypatch.context() as m:  # a store as migration 4 left it, with a row in it
        m.setattr(ddl, "MIGRATIONS", ddl.MIGRATIONS[:4])
        old = Store.open(dsn, "traceline")
        try:  # the columns it had then: none of migration 5's (content_hash) or later ones
            later = {t.name: [c.name for c in t.columns if c.since > 4] for t in ddl.TABLES}
            as_v4 = {
                n: tbl.drop_columns([c for c in later.get(n, []) if c in tbl.column_names])
                for n, tbl in tables.items()
            }
            old.write_batch(as_v4, "v4")
        finally:
            old.close()  # one embedded engine per process: never leave it open for the next test
    store = Store.open(dsn, "traceline")  # applies migration 5
    try:
        versions = [v for (v,) in store.query_rows("SELECT version FROM schema_migrations")[1]]
        assert max(versions) == ddl.MIGRATIONS[-1][0]
        [(name,)] = [(n,) for n in tables if n in RAW_TABLES]
        assert store.query_rows(f"SELECT event_id, content_hash FROM {name}")[1] == [(e.event_id, 0)]  # noqa: S608
        sink = SinkWorker(
            "127.0.0.1:9",
            store,
            topics=TopicNames(events="old.events"),
            consumer=_Idle(),  # type: ignore[arg-type]
            producer=_Idle(),  # type: ignore[arg-type]
        )
        sink._refresh_watermarks()
        assert sink._recent.get(e.event_id) == 0  # landed before hashes: a re-use is a duplicate
        assert sink._max_mark(0) == 5
    finally:
        store.close()


class _Idle:
    """A Kafka client that is never used (the test reads the store only)."""

    def subscribe(self, topics: list[str], on_assign: Any = None) -> None:
        pass

    def close(self) -> None:
        pass

    def flush(self, timeout: float = -1) -> int:
        return 0
