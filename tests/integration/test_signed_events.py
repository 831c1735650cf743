"""Attributable events on the real broker and the embedded ClickHouse engine.

Two gateways hold keys registered with traceline (``ict-bench-3`` and ``cell-7-gw``); a third
key (``qms-01``) is revoked. Each gateway publishes through the real publisher and outbox, signed.
With ``require_signed``, the sink lands the gateways' own events with ``verified_source`` and
``signing_key_id``, and dead-letters, each with its reason: an unsigned event, an event naming the
bench as its source signed with the cell's key (a spoofed source), a signed event whose bytes were
changed on the way, and an event signed with the revoked key. Nothing is landed twice or lost:
the sink's ledger balances per partition and agrees with the store's, and ``traceline verify``
finds the landed store clean, then finds a cleared ``verified_source`` (an attribution removed
after the fact).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from producers.publisher import Publisher
from queries.verify import verify_store
from schemas.kafka import ensure_topics, producer_config
from schemas.models import EventBase
from schemas.serde import AvroSerde
from schemas.signing import (
    BAD_SIGNATURE,
    REVOKED_KEY,
    SOURCE_MISMATCH,
    UNSIGNED_EVENT,
    GatewayKey,
)
from schemas.topics import TopicNames
from sinks.chain import Signer
from sinks.gateway_keys import GatewayKeyRegistry
from sinks.ingest import SinkWorker
from sinks.ledger import entry_gap, store_ledger
from sinks.rows import RAW_TABLES
from sinks.store import Store
from tests.samples import sample_events

pytestmark = pytest.mark.integration

PARTS = 2


def _copies(e: EventBase, n: int, tag: int) -> list[EventBase]:
    return [e.model_copy(update={"event_id": f"{e.event_id[:-6]}{tag:02d}{i:04d}"}) for i in range(n)]


def test_signed_gateways_land_verified_and_every_bad_signature_is_dead_lettered_with_its_reason(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    topics = TopicNames(events=f"{topic_prefix}events", prefix=topic_prefix)
    ensure_topics(kafka_bootstrap, topics, partitions=PARTS)
    serde = AvroSerde(topic=topics.events)
    samples = {e.type: e for e in sample_events()}

    registry = GatewayKeyRegistry(tmp_path / "data" / "gateway_keys.json")
    keys = {s: GatewayKey.generate(s) for s in ("ict-bench-3", "cell-7-gw", "qms-01")}
    for source, key in keys.items():
        registry.create(key, tmp_path / "gateways" / f"{source}.json")
    registry.revoke("qms-01")

    bench_events = _copies(samples["UnitTested"], 20, 1)  # source ict-bench-3
    cell_events = _copies(samples["OperationCompleted"], 20, 2)  # source cell-7-gw
    [unsigned] = _copies(samples["UnitTested"], 1, 3)
    [spoofed] = _copies(samples["UnitTested"], 1, 4)  # names the bench; the cell signs it
    [tampered] = _copies(samples["UnitTested"], 1, 5)
    [revoked] = _copies(samples["LotStatusChanged"], 1, 6)  # source qms-01, key revoked

    def publish(signer: GatewayKey | None, rows: list[Any], name: str) -> None:
        pub = Publisher(
            kafka_bootstrap, tmp_path / f"{name}.sqlite", topic=topics.events, serde=serde, signer=signer
        )
        pub.publish_rows(rows)
        assert pub.close(60) == 0, f"{name}: not delivered ({pub.last_error})"

    bench_pub = Publisher(
        None, tmp_path / "enc.sqlite", topic=topics.events, serde=serde, signer=keys["ict-bench-3"]
    )
    cell_pub = Publisher(
        None, tmp_path / "enc2.sqlite", topic=topics.events, serde=serde, signer=keys["cell-7-gw"]
    )
    publish(keys["ict-bench-3"], [bench_pub.encode(e) for e in bench_events], "bench")
    publish(keys["cell-7-gw"], [cell_pub.encode(e) for e in cell_events], "cell")
    plain = Publisher(None, tmp_path / "plain.sqlite", topic=topics.events, serde=serde)
    publish(None, [plain.encode(unsigned)], "unsigned")
    # a compromised cell gateway signs an event that claims the bench as its source (raw rows:
    # the publisher's own source check is not in the way of an attacker)
    publish(keys["cell-7-gw"], [plain.encode(spoofed)], "spoof")
    publish(keys["qms-01"], [plain.encode(revoked)], "revoked")
    # signed by the bench, then changed on the way (same length, still a valid event)
    value = serde.encode_event(tampered)
    headers = keys["ict-bench-3"].headers(value)
    changed = value.replace(b"plant-a", b"plant-b")  # another site
    assert changed != value
    producer = Producer(producer_config(kafka_bootstrap))
    producer.produce(topics.events, key=tampered.kafka_key().encode(), value=changed, headers=headers)
    assert producer.flush(30) == 0
    total = len(bench_events) + len(cell_events) + 4
    expected_dead = {
        unsigned.event_id: UNSIGNED_EVENT,
        spoofed.event_id: SOURCE_MISMATCH,
        tampered.event_id: BAD_SIGNATURE,
        revoked.event_id: REVOKED_KEY,
    }

    store = Store.open(f"chdb://{tmp_path / 'ch'}", "traceline")
    request.addfinalizer(store.close)  # one embedded engine per process: the next test opens its own
    signer = Signer.load_or_create(tmp_path / "data" / "keys" / "chain.ed25519")
    sink = SinkWorker(
        kafka_bootstrap,
        store,
        topics=topics,
        group_id=f"{topic_prefix}sink",
        serde=serde,
        batch_seconds=0.3,
        chain_signer=signer,
        chain_sign_seconds=0,
        gateway_keys=registry,
        require_signed=True,
    )
    sink.retry_backoff = 0.05
    params = {"t": topics.events}
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            sink.poll_once()
            read = sum(e["read"] for e in sink.stats.ledger.values())
            dead = store.query_rows(
                "SELECT count() FROM dead_letters WHERE source_topic = {t:String}", params
            )[1][0][0]
            if read >= total and dead >= len(expected_dead):
                break
        sink.poll_once()  # idle: the heads are signed
    finally:
        sink.close()

    landed = store.query(
        " UNION ALL ".join(
            f"SELECT event_id, verified_source, signing_key_id FROM {t}"  # noqa: S608
            " WHERE kafka_topic = {t:String}"
            for t in RAW_TABLES
        ),
        params,
    )
    by_id = {r["event_id"]: r for r in landed}
    assert set(by_id) == {e.event_id for e in bench_events + cell_events}, (
        "only the gateways' own events land"
    )
    for e in bench_events + cell_events:
        r = by_id[e.event_id]
        assert (r["verified_source"], r["signing_key_id"]) == (e.source, keys[e.source].key_id)

    dead = store.query(
        "SELECT error, reason, hex(raw) AS raw_hex FROM dead_letters WHERE source_topic = {t:String}",
        params,
    )
    got = {serde.decode(bytes.fromhex(d["raw_hex"]))[1]["event_id"]: (d["error"], d["reason"]) for d in dead}
    assert {eid: err for eid, (err, _r) in got.items()} == expected_dead
    assert "'ict-bench-3'" in got[spoofed.event_id][1] and "'cell-7-gw'" in got[spoofed.event_id][1]
    assert "does not match" in got[tampered.event_id][1]
    assert "revoked" in got[revoked.event_id][1]
    assert "no signature" in got[unsigned.event_id][1]

    # the ledger balances per partition, and the store says the same
    s = sink.stats
    assert s.ledger_gap() == {}, s.ledger
    assert sum(e["read"] for e in s.ledger.values()) == total
    dead_by_error: dict[str, int] = {}
    for e in s.ledger.values():
        assert entry_gap(e) == 0
        for err, n in e["dead_lettered"].items():
            dead_by_error[err] = dead_by_error.get(err, 0) + n
    assert dead_by_error == {err: 1 for err in expected_dead.values()}
    on_store = store_ledger(store, topics.events)
    for p, e in s.ledger.items():
        assert on_store[p]["landed"] == e["landed"] and on_store[p]["dead_lettered"] == e["dead_lettered"]

    # traceline verify: clean as landed; an attribution removed afterwards is found
    v = verify_store(store, signer)
    assert v.clean, [f.text for f in v.findings]
    victim = bench_events[0].event_id
    store.command(
        f"ALTER TABLE unit_tests UPDATE verified_source = '' WHERE event_id = '{victim}'"
        " SETTINGS mutations_sync = 2"
    )
    v = verify_store(store, signer)
    assert [(f.kind, f.table, f.key) for f in v.findings] == [("altered", "unit_tests", victim)]
