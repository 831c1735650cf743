"""The whole pipeline, end to end, on the real engines: publisher -> Kafka -> faust worker
(intake + genealogy) -> sink -> ClickHouse (chdb) -> recall queries.

Every test runs a real :class:`traceline.serve.Server` (faust worker child + sink thread) on the
session broker, with its own topics, groups and embedded store, and checks the result against
``tests/oracle.py`` (a plain graph walk over the JSON-form events, sharing no code with
streams/, sinks/ or queries/) and against SQL written here over the raw tables.

1. shuffled events with ~10% re-published duplicates -> unit_genealogy equals the oracle for
   every unit; recall_impact of lots (split / transformed ones included) equals the oracle's
   forward closure and past holders, and a recursive SQL over the raw tables; no raw table
   holds a duplicate event.
2. SIGKILL of the faust worker mid-stream (the supervisor restarts it) and a crash of the sink
   after a write but before its commit: same genealogy, still no duplicate rows.
3. poison (garbage, unknown fingerprint, truncated record, a genealogy cycle) -> dead_letters
   with reasons; the worker keeps running; the events-topic ledger balances.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import pytest
from confluent_kafka import Producer, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from producers.publisher import Publisher
from producers.simulator import simulate
from queries import Trigger, recall_impact
from schemas.jsonform import parse_event
from schemas.kafka import pipeline_lag, producer_config
from schemas.serde import AvroSerde
from sinks.ingest import SinkWorker
from sinks.ledger import store_ledger
from sinks.rows import RAW_TABLES
from sinks.store import Store
from streams.genealogy import MAX_DEPTH
from tests import oracle
from tests.support import wait_caught_up
from traceline.serve import Server

pytestmark = pytest.mark.integration

FACT_KEYS = {
    "lot_consumption": "(lot_id, uii, event_id)",
    "lot_lineage": "(input_lot_id, output_lot_id, event_id)",
    "unit_consumption": "(consumed_uii, consumer_uii, event_id)",
}

Row = tuple[str, str, bytes, bytes]  # (event_id, topic, key, value): Publisher.publish_encoded


# ----------------------------------------------------------------------------- helpers


def encode(events: Iterable[dict[str, Any]], topic: str) -> list[Row]:
    serde = AvroSerde(topic=topic)
    out = []
    for d in events:
        ev = parse_event(d)
        out.append((str(ev.event_id), topic, ev.kafka_key().encode(), serde.encode_event(ev)))
    return out


def with_duplicates(rows: list[Row], rng: random.Random, rate: float = 0.1) -> list[Row]:
    """Shuffle ``rows`` and re-insert ~``rate`` of them again somewhere after the original."""
    seq = rows[:]
    rng.shuffle(seq)
    for row in rng.sample(rows, int(len(rows) * rate)):
        at = seq.index(row)
        seq.insert(rng.randint(at + 1, len(seq)), row)
    return seq


def publish(pub: Publisher, seq: list[Row]) -> int:
    """Publish in order; a repeated event id starts a new, separately flushed chunk (the
    outbox would otherwise fold a pending duplicate into one record)."""
    chunk: list[Row] = []
    ids: set[str] = set()
    sent = 0

    def flush() -> None:
        nonlocal sent
        if chunk:
            assert pub.publish_encoded(chunk) == len(chunk)
            assert pub.flush(60) == 0, pub.last_error
            sent += len(chunk)
            chunk.clear()
            ids.clear()

    for row in seq:
        if row[0] in ids:
            flush()
        chunk.append(row)
        ids.add(row[0])
    flush()
    return sent


def caught_up(server: Server, bootstrap: str, timeout: float = 180.0) -> None:
    s = server.settings
    last: dict[str, int] = {}
    ok = wait_caught_up(
        bootstrap,
        s.topics,
        app_id=s.app_id,
        sink_group=s.sink_group,
        timeout=timeout,
        quiet=2.0,
        progress=last.update,
    )
    assert ok, f"pipeline not caught up after {timeout}s: lag {last}, health {server.health()}"
    assert server.sink_error is None, server.sink_error


def end_offsets(bootstrap: str, topic: str) -> int:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    meta = admin.list_topics(topic, timeout=10).topics[topic]
    tps = [TopicPartition(topic, p) for p in meta.partitions]
    res = admin.list_offsets({tp: OffsetSpec.latest() for tp in tps}, request_timeout=10)
    return sum(f.result().offset for f in res.values())


def store_of(server: Server) -> Store:
    assert server.store is not None
    return server.store


def scalar(store: Store, sql: str, params: dict[str, Any] | None = None) -> Any:
    _names, rows = store.query_rows(sql, params)
    return rows[0][0]


def assert_no_duplicate_rows(store: Store) -> dict[str, int]:
    """Raw tables as they are (no FINAL): one row per event id; facts: one row per key."""
    counts = {}
    for t in RAW_TABLES:
        n, u = store.query_rows(f"SELECT count(), uniqExact(event_id) FROM {t}")[1][0]
        assert n == u, f"{t}: {n} rows for {u} distinct events"
        counts[t] = int(n)
    for t, key in FACT_KEYS.items():
        n, u = store.query_rows(f"SELECT count(), uniqExact({key}) FROM {t}")[1][0]
        assert n == u, f"{t}: {n} rows for {u} distinct facts"
    return counts


def current_genealogy(store: Store) -> dict[str, tuple[str | None, str, tuple[str, ...]]]:
    rows = store.query(
        "SELECT uii, g.1 AS parent_uii, g.2 AS root_uii, g.3 AS path FROM ("
        " SELECT uii, argMax(tuple(parent_uii, root_uii, path), seq) AS g FROM unit_genealogy GROUP BY uii)"
    )
    got = {r["uii"]: (r["parent_uii"], r["root_uii"], tuple(r["path"])) for r in rows}
    final = store.query("SELECT uii, parent_uii, root_uii, path FROM unit_genealogy FINAL")
    assert {r["uii"]: (r["parent_uii"], r["root_uii"], tuple(r["path"])) for r in final} == got
    return got


def assert_genealogy_matches(store: Store, g: oracle.Genealogy) -> None:
    got = current_genealogy(store)
    want = {u: (g.parent[u], g.root(u), g.path[u]) for u in g.units if u not in g.cyclic}
    missing = sorted(set(want) - set(got))
    assert not missing, f"{len(missing)} units have no genealogy row, e.g. {missing[:5]}"
    wrong = {u: (got[u], w) for u, w in want.items() if got[u] != w}
    assert not wrong, f"{len(wrong)} of {len(want)} units differ (got, want): {list(wrong.items())[:5]}"
    extra = set(got) - g.units
    assert not extra, f"genealogy rows for units no event names: {sorted(extra)[:5]}"


# A lot recall over the RAW tables only, written here: descendant lots (lot_lineage), units
# that consumed them (lot_consumption), units that consumed those (unit_consumption),
# transitively, and every current ancestor; the current parent is folded from
# assembly_events + unit_consumption (installs) by version (event time ms, event id), a
# removal of the current parent with a version >= the latest install detaching the child.
RAW_IMPACT_SQL = f"""
WITH RECURSIVE
  seeds AS (
    SELECT DISTINCT lot FROM (
      SELECT input_lot_id AS lot FROM lot_lineage UNION ALL SELECT output_lot_id FROM lot_lineage
      UNION ALL SELECT lot_id FROM lot_consumption)
  ),
  lots AS (
    SELECT lot AS seed, lot, 0 AS d FROM seeds
    UNION ALL
    SELECT lots.seed, ll.output_lot_id, lots.d + 1 FROM lots
      INNER JOIN lot_lineage AS ll ON ll.input_lot_id = lots.lot WHERE lots.d < {MAX_DEPTH}
  ),
  hits AS (
    SELECT DISTINCT lots.seed AS seed, lc.uii AS uii, 0 AS d FROM lots
      INNER JOIN lot_consumption AS lc ON lc.lot_id = lots.lot
    UNION ALL
    SELECT hits.seed, uc.consumer_uii, hits.d + 1 FROM hits
      INNER JOIN unit_consumption AS uc ON uc.consumed_uii = hits.uii WHERE hits.d < {MAX_DEPTH}
  ),
  links AS (
    SELECT uii AS child, parent_uii AS parent, action = 'REMOVED' AS rm,
           tuple(toUnixTimestamp64Milli(event_time), event_id) AS v FROM assembly_events
    UNION ALL
    SELECT consumed_uii, consumer_uii, false, tuple(toUnixTimestamp64Milli(event_time), event_id)
      FROM unit_consumption
  ),
  installs AS (
    SELECT child, argMax(parent, v) AS parent, max(v) AS iv FROM links WHERE NOT rm GROUP BY child
  ),
  removals AS (SELECT child, parent, max(v) AS rv FROM links WHERE rm GROUP BY child, parent),
  cur AS (
    SELECT i.child AS child, i.parent AS parent FROM installs AS i
      LEFT JOIN removals AS r ON r.child = i.child AND r.parent = i.parent
    WHERE r.child = '' OR r.rv < i.iv
  ),
  up AS (
    SELECT DISTINCT seed, uii AS node, 0 AS d FROM hits
    UNION ALL
    SELECT up.seed, cur.parent, up.d + 1 FROM up INNER JOIN cur ON cur.child = up.node
      WHERE up.d < {MAX_DEPTH}
  )
SELECT seed, groupUniqArray(node) AS impacted FROM up GROUP BY seed
"""


def raw_sql_impact(store: Store) -> dict[str, set[str]]:
    return {r["seed"]: set(r["impacted"]) for r in store.query(RAW_IMPACT_SQL)}


def pick_lots(plant: oracle.Plant, rng: random.Random, n: int = 40) -> list[str]:
    """Lots with the most interesting closures first (split / merged / processed), then others."""
    transformed = sorted({i for i, outs in plant.lot_outputs.items() if outs})
    made = sorted({o for outs in plant.lot_outputs.values() for o in outs})
    used = sorted(plant.lot_users)
    picked = list(dict.fromkeys(rng.sample(transformed, min(15, len(transformed))) + made[:10]))
    rest = [lot for lot in used if lot not in picked]
    picked += rng.sample(rest, min(max(0, n - len(picked)), len(rest)))
    unused = sorted(plant.lots - set(used) - set(plant.lot_outputs))  # e.g. a received, unused lot
    return picked + unused[:2]


def assert_recall_matches(store: Store, plant: oracle.Plant, lots: list[str]) -> None:
    assert plant.gen.cyclic == set()
    assert plant.gen.depth_cut == set()
    sql = raw_sql_impact(store)
    nonempty = 0
    for lot in lots:
        hits = plant.hit_units(lot)
        impacted = plant.impacted(lot)
        r = recall_impact(store, Trigger("lot", lot))
        got_units = {u.uii for u in r.units}
        assert got_units == hits, (
            f"lot {lot}: missed {sorted(hits - got_units)[:5]}, extra {sorted(got_units - hits)[:5]}"
        )
        for u in r.units:
            assert (u.parent_uii, u.root_uii, tuple(u.path)) == (
                plant.gen.parent[u.uii],
                plant.gen.root(u.uii),
                plant.gen.path[u.uii],
            ), f"lot {lot}: genealogy of {u.uii}"
        got_impacted = got_units | {a for u in r.units for a in u.path}
        assert got_impacted == impacted, f"lot {lot}: impacted set differs"
        assert {lh.lot_id for lh in r.lots} == plant.descendant_lots(lot), f"lot {lot}: lots"
        got_past = {(p.uii, p.child_uii) for p in r.past}
        assert got_past == plant.past_holders(hits), f"lot {lot}: past holders"
        assert all(p.past for p in r.past)
        assert sql.get(lot, set()) == impacted, (
            f"lot {lot}: raw SQL missed {sorted(impacted - sql.get(lot, set()))[:5]},"
            f" extra {sorted(sql.get(lot, set()) - impacted)[:5]}"
        )
        nonempty += bool(hits)
    assert nonempty >= 30, f"only {nonempty} of the sampled lots reach any unit"
    # and the raw SQL agrees with the oracle for EVERY lot in the plant
    for lot in plant.lots:
        assert sql.get(lot, set()) == plant.impacted(lot), f"lot {lot}: raw SQL differs from the oracle"


# ----------------------------------------------------------------------------- 1. order, dups


def test_shuffled_duplicated_plant_matches_oracle_and_raw_sql(
    pipeline: Callable[..., Server], kafka_bootstrap: str, tmp_path: Any
) -> None:
    assert MAX_DEPTH == oracle.MAX_DEPTH
    events = list(simulate(400, seed=11))
    plant = oracle.Plant(events)
    assert any(e["type"] == "UnitRemoved" for e in events), "the plant should rework something"
    server = pipeline(heap_trim_seconds=1.0)  # the heap trims run under the oracle too
    topic = server.topics.events
    rows = encode(events, topic)
    rng = random.Random(5)
    seq = with_duplicates(rows, rng)
    pub = Publisher(kafka_bootstrap, tmp_path / "outbox.sqlite", topic=topic)
    try:
        assert publish(pub, seq) == len(seq)
    finally:
        pub.close(5)
    caught_up(server, kafka_bootstrap)

    store = store_of(server)
    counts = assert_no_duplicate_rows(store)
    assert sum(counts.values()) == len(events)
    stats = server.sink.stats  # type: ignore[union-attr]
    assert stats.duplicates_skipped == len(seq) - len(events)
    assert scalar(store, "SELECT count() FROM dead_letters") == 0
    assert_genealogy_matches(store, plant.gen)
    assert_recall_matches(store, plant, pick_lots(plant, rng))
    trims = server.health()["heap"]
    assert trims["trims"] >= 1 and trims["released_mib"] >= 0, trims


# ----------------------------------------------------------------------------- 2. crashes


def _streams_progress(server: Server, bootstrap: str) -> dict[str, int]:
    s = server.settings
    return pipeline_lag(bootstrap, s.topics, app_id=s.app_id, sink_group=s.sink_group)


def _kill_worker_when_busy(server: Server, bootstrap: str, timeout: float = 120) -> dict[str, int]:
    """SIGKILL the faust worker once it is working (genealogy changes landed, lag left)."""
    assert server.worker is not None
    landed = server.sink.stats.changes_landed if server.sink else 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.worker.alive and server.sink is not None and server.sink.stats.changes_landed > landed:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the worker never produced a genealogy change: {server.health()}")
    lag = _streams_progress(server, bootstrap)
    proc = server.worker.proc
    assert proc is not None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    return lag


def test_worker_sigkill_midstream_recovers_exactly(
    pipeline: Callable[..., Server], kafka_bootstrap: str, tmp_path: Any
) -> None:
    events = list(simulate(300, seed=21))
    plant = oracle.Plant(events)
    server = pipeline()
    assert server.worker is not None
    topic = server.topics.events
    seq = with_duplicates(encode(events, topic), random.Random(8), rate=0.05)
    kills = int(os.environ.get("TRACELINE_TEST_KILLS", "2"))
    parts = [seq[i * len(seq) // kills : (i + 1) * len(seq) // kills] for i in range(kills)]
    lags = []
    pub = Publisher(kafka_bootstrap, tmp_path / "outbox.sqlite", topic=topic)
    try:
        for part in parts:
            publish(pub, part)
            lags.append(_kill_worker_when_busy(server, kafka_bootstrap))
    finally:
        pub.close(5)
    caught_up(server, kafka_bootstrap, timeout=240)
    assert server.worker.restarts >= kills, "the supervisor did not restart the killed worker"
    assert server.worker.alive

    store = store_of(server)
    counts = assert_no_duplicate_rows(store)
    assert sum(counts.values()) == len(events)
    assert_genealogy_matches(store, plant.gen)
    print(f"killed the worker {kills}x with lag {lags}")


def _crash_sink(server: Server) -> SinkWorker:
    """The sink writes a batch to ClickHouse and dies before committing its offsets; the
    supervisor builds a new sink (a restarted process: empty memory), which takes over the same
    group and store."""
    old = server.sink
    assert old is not None
    wrote = threading.Event()

    def commit_lost(_msgs: Any) -> None:  # the write happened; the commit never does
        wrote.set()
        raise RuntimeError("the sink died between its write and its commit")

    old._commit = commit_lost  # type: ignore[method-assign,assignment]
    assert wrote.wait(60), "the sink never wrote a batch"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and server.sink is old:
        time.sleep(0.1)
    new = server.sink
    assert new is not None and new is not old, "the supervisor did not restart the sink"
    sink_part = server.health()["parts"]["sink"]
    assert sink_part["restarts"] == 1
    assert "died between its write and its commit" in (sink_part["last_error"] or "")
    return new


def test_sink_crash_between_write_and_commit_writes_no_duplicates(
    pipeline: Callable[..., Server], kafka_bootstrap: str, tmp_path: Any
) -> None:
    events = list(simulate(250, seed=31))
    plant = oracle.Plant(events)
    server = pipeline(sink_batch_size=300)
    topic = server.topics.events
    rows = encode(events, topic)
    rng = random.Random(3)
    first, second = rows[: len(rows) // 2], rows[len(rows) // 2 :]
    pub = Publisher(kafka_bootstrap, tmp_path / "outbox.sqlite", topic=topic)
    try:
        publish(pub, with_duplicates(first, rng, rate=0.05))
        new = _crash_sink(server)
        # the rest, plus producer re-sends of events that landed before the crash
        tail = with_duplicates(second, rng, rate=0.05) + rng.sample(first, len(first) // 10)
        publish(pub, tail)
    finally:
        pub.close(5)
    caught_up(server, kafka_bootstrap)
    store = store_of(server)
    counts = assert_no_duplicate_rows(store)
    assert sum(counts.values()) == len(events)
    assert new.stats.replayed_skipped + new.stats.duplicates_skipped > 0
    assert new.ledger_gap() == {} and new.stats.ledger  # the restarted sink's ledger balances
    assert_genealogy_matches(store, plant.gen)


# ----------------------------------------------------------------------------- 3. poison


def _unit(uii: str) -> dict[str, str]:
    pn, sn = uii.split(":")
    return {"part_number": pn, "serial_number": sn}


def _assembled(eid: str, t: str, child: str, parent: str) -> dict[str, Any]:
    return {
        "type": "UnitAssembled",
        "event_id": eid,
        "event_time": t,
        "source": "test",
        "site": "plant-a",
        "program": "PRG-TEST",
        "unit": _unit(child),
        "parent": _unit(parent),
        "position": "J1",
    }


def test_poison_is_dead_lettered_and_the_ledger_balances(
    pipeline: Callable[..., Server], kafka_bootstrap: str, tmp_path: Any
) -> None:
    server = pipeline()
    assert server.worker is not None
    topic = server.topics.events
    good = list(simulate(60, seed=41))
    good_rows = encode(good, topic)
    cycle = [
        _assembled("7c1e3a52-0000-4000-8000-000000000001", "2026-01-05T07:00:00.000Z", "CYC-A:1", "CYC-B:1"),
        _assembled("7c1e3a52-0000-4000-8000-000000000002", "2026-01-05T07:01:00.000Z", "CYC-B:1", "CYC-A:1"),
    ]
    cycle_rows = encode(cycle, topic)
    valid = good_rows[: len(good_rows) // 2]
    truncated = valid[0][3][: len(valid[0][3]) // 2]
    poison = {
        b"poison-garbage": b"\xffthis is not an event\x00\x01",
        b"poison-fingerprint": b"\xc3\x01" + bytes(8) + valid[1][3][10:],
        b"poison-truncated": truncated,
    }
    producer = Producer(producer_config(kafka_bootstrap))
    for key, value in poison.items():
        producer.produce(topic, key=key, value=value)
    assert producer.flush(30) == 0
    pub = Publisher(kafka_bootstrap, tmp_path / "outbox.sqlite", topic=topic)
    rng = random.Random(4)
    try:
        first = with_duplicates(valid + cycle_rows, rng, rate=0.1)
        n_first = publish(pub, first)
        caught_up(server, kafka_bootstrap)
        store = store_of(server)
        dl = store.query(
            "SELECT key, error, reason, source_topic, source_partition, source_offset FROM dead_letters"
        )
        by_key = {bytes(r["key"]) if not isinstance(r["key"], str) else r["key"].encode(): r for r in dl}
        assert by_key[b"poison-garbage"]["error"] == "MalformedRecordError"
        assert "unknown framing" in by_key[b"poison-garbage"]["reason"]
        assert by_key[b"poison-fingerprint"]["error"] == "UnknownSchemaError"
        assert "fingerprint" in by_key[b"poison-fingerprint"]["reason"]
        assert by_key[b"poison-truncated"]["error"] == "MalformedRecordError"
        assert by_key[b"poison-truncated"]["reason"]
        for k in poison:
            assert by_key[k]["source_topic"] == topic and by_key[k]["source_offset"] >= 0
        cyc = [r for r in dl if r["error"] == "GenealogyCycle"]
        assert cyc, f"no dead letter for the genealogy cycle: {dl}"
        assert {r["key"] if isinstance(r["key"], str) else r["key"].decode() for r in cyc} <= {
            "CYC-A:1",
            "CYC-B:1",
        }
        assert all("cycle" in r["reason"] for r in cyc)
        assert server.worker.alive and server.worker.restarts == 0

        # later valid events still land
        rest = with_duplicates(good_rows[len(good_rows) // 2 :], rng, rate=0.1)
        n_rest = publish(pub, rest)
    finally:
        pub.close(5)
        producer.flush(5)
    caught_up(server, kafka_bootstrap)
    assert server.worker.alive and server.worker.restarts == 0
    counts = assert_no_duplicate_rows(store)
    assert sum(counts.values()) == len(good) + len(cycle)
    all_events = good + cycle
    g = oracle.genealogy(all_events)
    assert g.cyclic == {"CYC-A:1", "CYC-B:1"}
    assert_genealogy_matches(store, g)

    # the ledger of the events topic: every record is a landed event, a dead letter or a
    # skipped duplicate
    end = end_offsets(kafka_bootstrap, topic)
    assert end == len(poison) + n_first + n_rest
    landed = sum(
        scalar(store, f"SELECT uniqExact(event_id) FROM {t} WHERE kafka_topic = {{t:String}}", {"t": topic})
        for t in RAW_TABLES
    )
    dead = scalar(store, "SELECT count() FROM dead_letters WHERE source_topic = {t:String}", {"t": topic})
    dead_distinct = scalar(
        store,
        "SELECT uniqExact(source_partition, source_offset) FROM dead_letters WHERE source_topic = {t:String}",
        {"t": topic},
    )
    assert dead == dead_distinct == len(poison)
    stats = server.sink.stats  # type: ignore[union-attr]
    assert stats.undecodable_skipped == len(poison)
    assert end == landed + dead + stats.duplicates_skipped, (
        f"ledger: end offsets {end} != landed {landed} + dead letters {dead}"
        f" + duplicates skipped {stats.duplicates_skipped}"
    )
    # the sink's own ledger (sinks.ledger): every record read has one fate, and the store agrees
    assert server.ledger_gap() == {}
    ledger = stats.ledger
    assert sum(e["read"] for e in ledger.values()) == end
    assert sum(e["landed"] for e in ledger.values()) == landed
    assert sum(sum(e["dead_lettered"].values()) for e in ledger.values()) == dead
    assert sum(e["duplicates"] for e in ledger.values()) == stats.duplicates_skipped
    on_store = store_ledger(store, topic)
    assert {p: e["landed"] for p, e in on_store.items() if e["landed"]} == {
        p: e["landed"] for p, e in ledger.items() if e["landed"]
    }
    assert {p: e["dead_lettered"] for p, e in on_store.items() if e["dead_lettered"]} == {
        p: e["dead_lettered"] for p, e in ledger.items() if e["dead_lettered"]
    }
    assert Counter(r["error"] for r in store.query("SELECT error FROM dead_letters")).keys() >= {
        "MalformedRecordError",
        "UnknownSchemaError",
        "GenealogyCycle",
    }
