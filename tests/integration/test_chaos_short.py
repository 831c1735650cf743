"""The fault suite's input scenarios, short (``python -m chaos`` runs the long ones, with real
process and broker faults; docs/RELIABILITY.md).

On one running server (faust worker child + sink + alert engine) on the session broker: every
poison kind of ``chaos.input_faults.poison_records`` (garbage, empty value, tombstone, unknown
fingerprint, truncated Avro, trailing bytes, JSON text, Confluent framing without a registry,
a 5 MB lz4-compressed record), published raw before, between and after valid events; event ids
re-used with other content (landed before, and twice in one burst) and identical repeats.
Every valid event lands exactly once (no ``FINAL``), with its first content; every poison
record is in ``dead_letters`` exactly once with its error; one ``ConflictingDuplicate`` per
re-use; identical repeats are skipped as duplicates; the ledger balances.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from chaos.harness import dead_letter_counts, landed_ids, raw_counts, wait_until
from chaos.input_faults import altered, poison_records, produce_raw, raw_producer
from chaos.load import Plant
from producers.publisher import Publisher
from producers.simulator import simulate
from schemas.serde import AvroSerde
from sinks.rows import RAW_TABLES
from streams.alerts import RULE_TYPES
from streams.intake import content_hash_of
from tests.support import wait_caught_up
from traceline.auth import TokenStore
from traceline.serve import Server

pytestmark = pytest.mark.integration


def _caught_up(server: Server, bootstrap: str, timeout: float = 180.0) -> None:
    s = server.settings
    ok = wait_caught_up(
        bootstrap, s.topics, app_id=s.app_id, sink_group=s.sink_group, timeout=timeout, quiet=2.0
    )
    assert ok, f"not caught up after {timeout}s: {server.health()}"


def test_poison_kinds_and_conflicting_duplicates_on_a_running_server(
    pipeline: Callable[..., Server], kafka_bootstrap: str, tmp_path: Path
) -> None:
    server = pipeline()
    topic = server.topics.events
    plant = Plant(1200, seed=5)
    kinds = poison_records(plant)
    n = len(plant.ids)
    half = n // 2
    rng = random.Random(5)
    landed_before = rng.sample(range(half), 40)
    conflict, repeat = landed_before[:20], landed_before[20:]
    burst = list(range(half, half + 5))  # the original and other content back to back
    producer = raw_producer(kafka_bootstrap)
    pub = Publisher(kafka_bootstrap, tmp_path / "outbox.sqlite", topic=topic)
    poison_at: dict[tuple[int, int], str] = {}

    def poison(round_: int) -> None:
        recs: list[tuple[bytes, bytes | None]] = [
            (f"p{round_}-{i}".encode(), v) for i, (_k, v, _e) in enumerate(kinds)
        ]
        for pos, (_name, _v, error) in zip(produce_raw(producer, topic, recs), kinds, strict=True):
            poison_at[pos] = error

    def publish(idx: list[int]) -> None:
        assert pub.publish_encoded(plant.outbox_rows(topic, [plant.rows[i] for i in idx])) == len(idx)
        assert pub.flush(60) == 0, pub.last_error

    try:
        poison(1)
        publish(list(range(half)))
        poison(2)
        _caught_up(server, kafka_bootstrap)
        recs: list[tuple[bytes, bytes | None]] = [(plant.rows[i][1], altered(plant, i)) for i in conflict]
        recs += [(plant.rows[i][1], plant.rows[i][2]) for i in repeat]
        for i in burst:
            recs += [(plant.rows[i][1], plant.rows[i][2]), (plant.rows[i][1], altered(plant, i))]
        produce_raw(producer, topic, recs)
        publish([i for i in range(half, n) if i not in set(burst)])
        poison(3)
    finally:
        pub.close(5)
        producer.flush(5)
    _caught_up(server, kafka_bootstrap)
    time.sleep(1)

    store = server.store
    assert store is not None
    assert landed_ids(store, topic) == set(plant.ids)
    rows, distinct = raw_counts(store, topic)
    assert (rows, distinct) == (n, n), "a duplicate raw row (counted without FINAL)"

    dl = store.query(
        "SELECT source_partition AS p, source_offset AS o, error FROM dead_letters"
        " WHERE source_topic = {t:String}",
        {"t": topic},
    )
    by_pos: dict[tuple[int, int], list[str]] = {}
    for r in dl:
        by_pos.setdefault((int(r["p"]), int(r["o"])), []).append(r["error"])
    for pos, error in poison_at.items():
        assert by_pos.get(pos) == [error], (
            f"poison at {pos}: dead letters {by_pos.get(pos)}, expected [{error}]"
        )
    counts = dead_letter_counts(store, topic)
    assert counts.get("ConflictingDuplicate") == (len(conflict) + len(burst),) * 2
    assert sum(rows for rows, _ in counts.values()) == len(poison_at) + len(conflict) + len(burst)

    stats = server.sink.stats  # type: ignore[union-attr]
    assert stats.duplicates_skipped == len(repeat)
    assert stats.conflicts == len(conflict) + len(burst)
    assert stats.dead_letters_by_reference == 3  # the 5 MB record of each round
    assert server.ledger_gap() == {}
    # the first content of a re-used id is the one that landed
    index = {e: i for i, e in enumerate(plant.ids)}
    reused = [plant.ids[i] for i in conflict + burst]
    union = " UNION ALL ".join(
        f"SELECT event_id, content_hash FROM {t} WHERE kafka_topic = {{t:String}}"  # noqa: S608
        for t in RAW_TABLES
    )
    got: dict[str, Any] = {
        r["event_id"]: r["content_hash"]
        for r in store.query(
            f"SELECT event_id, content_hash FROM ({union}) WHERE has({{ids:Array(String)}}, event_id)",  # noqa: S608
            {"t": topic, "ids": reused},
        )
    }
    assert {e: int(h) for e, h in got.items()} == {
        e: content_hash_of(plant.rows[index[e]][2]) for e in reused
    }
    assert server.worker is not None and server.worker.alive and server.worker.restarts == 0
    # the re-used ids are alerted (the pipeline's own alert, one per events topic, the count)
    deadline = time.monotonic() + 60
    alerted: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        alerted = store.query(
            "SELECT argMax(details['conflicts'], version) AS n FROM alerts WHERE alert_id = {a:String}",
            {"a": f"EVENT_ID_CONFLICT:{topic}"},
        )
        if alerted and alerted[0]["n"] == str(len(conflict) + len(burst)):
            break
        time.sleep(0.5)
    assert alerted and alerted[0]["n"] == str(len(conflict) + len(burst)), alerted
    # ... and the alert engine left the re-used ids' other content out (a type its rules read)
    serde = AvroSerde(topic=topic)
    read = sum(serde.peek_type(altered(plant, i)) in RULE_TYPES for i in conflict + burst)
    engine = server.alerts
    assert read > 0 and engine is not None
    wait_until(lambda: engine.stats.conflicts_skipped >= read, 60)
    assert engine.stats.conflicts_skipped == read


def test_a_ledger_gap_turns_health_failing_and_raises_a_critical_alert(
    pipeline: Callable[..., Server], kafka_bootstrap: str, tmp_path: Path
) -> None:
    """The sink's ledger is the check on every record read; when it does not balance (here:
    three records read that the sink never accounted for, as a bug would leave them), health is
    ``failing`` and one LEDGER_GAP alert per partition lands in the alerts table."""
    server = pipeline(monitor_seconds=0.5)
    topic = server.topics.events
    plant = Plant(60, seed=3)
    pub = Publisher(kafka_bootstrap, tmp_path / "outbox.sqlite", topic=topic)
    try:
        assert pub.publish_encoded(plant.outbox_rows(topic)) == len(plant.ids)
        assert pub.flush(60) == 0, pub.last_error
    finally:
        pub.close(5)
    _caught_up(server, kafka_bootstrap)
    sink = server.sink
    assert sink is not None and server.ledger_gap() == {}
    assert server.health()["status"] == "ok"
    part = min(sink.stats.ledger)
    ledger = {p: dict(e) for p, e in sink.stats.ledger.items()}
    ledger[part]["read"] += 3
    sink.stats.ledger = ledger
    assert server.ledger_gap() == {part: 3}
    health = server.health()
    assert health["status"] == "failing"
    assert any("ledger gap" in p for p in health["problems"])
    store = server.store
    assert store is not None
    deadline = time.monotonic() + 60
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not rows:
        rows = store.query("SELECT alert_id, severity, title, details FROM alerts WHERE rule = 'LEDGER_GAP'")
        time.sleep(0.5)
    assert [(r["alert_id"], r["severity"]) for r in rows] == [(f"LEDGER_GAP:{topic}:{part}", "CRITICAL")]
    assert "3 records read but not accounted for" in rows[0]["title"]


def test_status_wait_caught_up_returns_once_the_store_has_every_published_event(
    kafka_bootstrap: str, tmp_path: Path, topic_prefix: str
) -> None:
    """The documented way for a script to know the store caught up: `traceline serve` running,
    a gateway publishes, `traceline status --wait-caught-up` returns 0, and at that moment the
    ledger holds every event."""
    bin_dir = Path(sys.executable).parent
    data = tmp_path / "data"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACELINE_")}
    env.update(
        TRACELINE_DATA_DIR=str(data), TRACELINE_KAFKA_BOOTSTRAP=kafka_bootstrap,
        TRACELINE_KAFKA_TOPIC_PREFIX=topic_prefix, TRACELINE_KAFKA_EVENTS_TOPIC=f"{topic_prefix}events",
        TRACELINE_KAFKA_PARTITIONS="3",
    )  # fmt: skip
    token = TokenStore(data / "tokens.json").create("ops", "administrator", "*")[1]
    events = list(itertools.islice(simulate(120, seed=4), 500))
    src = tmp_path / "bench.jsonl"
    src.write_text("\n".join(json.dumps(e) for e in events) + "\n")
    with (tmp_path / "serve.log").open("wb") as log:
        serve = subprocess.Popen(
            [str(bin_dir / "traceline"), "serve", "--port", str(port)], env=env, stdout=log, stderr=log
        )
    try:
        pub = subprocess.run(
            [str(bin_dir / "traceline"), "publish", "--file", str(src), "--timeout", "60"],
            env={**env, "TRACELINE_DATA_DIR": str(tmp_path / "gateway")},
            capture_output=True, text=True, timeout=180, check=False,
        )  # fmt: skip
        assert pub.returncode == 0, pub.stdout + pub.stderr
        status = [str(bin_dir / "traceline"), "status", "--token", token]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # the API answers once the server runs
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            time.sleep(0.5)
        done = subprocess.run(
            [*status, "--wait-caught-up", "--timeout", "240"],
            env=env, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr + (tmp_path / "serve.log").read_text()[-3000:]
        shown = subprocess.run(
            [*status, "--json"], env=env, capture_output=True, text=True, timeout=60, check=False
        )
        ledger = json.loads(shown.stdout)["ledger"]
        assert sum(int(e["landed"]) for e in ledger["partitions"].values()) == len(events)
        assert ledger["gap"] == {}
    finally:
        serve.terminate()
        serve.wait(60)
