"""Publishing to a real broker: 100k simulated events through the outbox publisher arrive
byte-identical, exactly once, in per-key order on murmur2 partitions; ``traceline publish``
reports invalid lines and delivers the valid ones, and reports repeated event ids by line
(identical repeats dropped, conflicts refused) with a summary that adds up."""

from __future__ import annotations

import itertools
import json
import re
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from typer.testing import CliRunner

from producers.publisher import Publisher
from producers.simulator import simulate
from schemas.jsonform import parse_event
from schemas.serde import AvroSerde
from traceline.cli import app

pytestmark = pytest.mark.integration

N_EVENTS = 100_000
PARTITIONS = 6


def murmur2_partition(key: bytes, partitions: int) -> int:
    """Kafka's default (Java) partitioner: ``toPositive(murmur2(key)) % partitions``."""
    m, r = 0x5BD1E995, 24
    length = len(key)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    i = 0
    while length - i >= 4:
        k = int.from_bytes(key[i : i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
        i += 4
    rest = length - i
    if rest == 3:
        h ^= key[i + 2] << 16
    if rest >= 2:
        h ^= key[i + 1] << 8
    if rest >= 1:
        h ^= key[i]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return (h & 0x7FFFFFFF) % partitions


def consume_all(bootstrap: str, topic: str, on_message: Callable[..., None], timeout: float = 60.0) -> int:
    """Read every partition of ``topic`` from the start up to its current end; returns the count."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"{topic}.reader",
            "enable.auto.commit": False,
            "fetch.min.bytes": 1_000_000,
            "fetch.wait.max.ms": 100,
        }
    )
    try:
        md = consumer.list_topics(topic, timeout=10).topics[topic]
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in md.partitions
        }
        todo = {p for p, end in ends.items() if end > 0}
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in md.partitions])
        count = 0
        deadline = time.monotonic() + timeout
        while todo:
            assert time.monotonic() < deadline, (
                f"timed out reading {topic}: partitions {todo} not at their end"
            )
            for msg in consumer.consume(num_messages=10_000, timeout=0.5):
                assert msg.error() is None, msg.error()
                on_message(msg)
                count += 1
                if msg.offset() + 1 >= ends[msg.partition()]:
                    todo.discard(msg.partition())
        return count
    finally:
        consumer.close()


def test_100k_simulated_events_arrive_identical_once_and_in_key_order(
    kafka_bootstrap: str, topic_prefix: str, make_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic = make_topic(f"{topic_prefix}events", PARTITIONS)
    reference = AvroSerde(topic=topic)  # encodes independently of the publisher's serde
    expected: dict[str, bytes] = {}  # event_id -> value bytes
    key_of: dict[str, bytes] = {}
    order: dict[bytes, list[str]] = defaultdict(list)  # key -> event ids in publish order

    t0 = time.perf_counter()
    pub = Publisher(kafka_bootstrap, tmp_path / "outbox.sqlite", topic=topic)
    try:
        events = itertools.islice(simulate(20_000, seed=7), N_EVENTS)
        while batch := [parse_event(d) for d in itertools.islice(events, 5_000)]:
            for ev in batch:
                eid, key = str(ev.event_id), ev.kafka_key().encode()
                expected[eid] = reference.encode_event(ev)
                key_of[eid] = key
                order[key].append(eid)
            assert pub.publish_many(batch) == len(batch)
        assert len(expected) == N_EVENTS, "the simulator produced too few (or repeated) events"
        t_published = time.perf_counter()
        remaining = pub.flush(60)
        assert remaining == 0, f"{remaining} events not acknowledged: {pub.last_error}"
        assert pub.delivered_total == N_EVENTS
        assert pub.failed_attempts == 0, pub.last_error
    finally:
        pub.close(5)
    t_delivered = time.perf_counter()

    seen: dict[str, int] = defaultdict(int)
    consumed_order: dict[bytes, list[str]] = defaultdict(list)
    partition_of: dict[bytes, set[int]] = defaultdict(set)
    mismatched: list[str] = []

    def check(msg: object) -> None:
        eid = dict(msg.headers())["event_id"].decode()  # type: ignore[attr-defined]
        key = msg.key()  # type: ignore[attr-defined]
        seen[eid] += 1
        if msg.value() != expected.get(eid) or key != key_of.get(eid):  # type: ignore[attr-defined]
            mismatched.append(eid)
        consumed_order[key].append(eid)
        partition_of[key].add(msg.partition())  # type: ignore[attr-defined]

    consumed = consume_all(kafka_bootstrap, topic, check)
    t_consumed = time.perf_counter()

    assert not mismatched, f"{len(mismatched)} values/keys differ from the encoding, e.g. {mismatched[:3]}"
    assert set(seen) == set(expected), "some events are missing or unknown ones appeared"
    duplicates = {e: n for e, n in seen.items() if n != 1}
    assert not duplicates, f"{len(duplicates)} events arrived more than once"
    assert consumed == N_EVENTS
    out_of_order = [k for k, ids in order.items() if consumed_order[k] != ids]
    assert not out_of_order, f"{len(out_of_order)} keys out of publish order, e.g. {out_of_order[:3]}"
    # one partition per key, the one Java clients / faust compute (murmur2)
    wrong = [k for k, ps in partition_of.items() if ps != {murmur2_partition(k, PARTITIONS)}]
    assert not wrong, f"{len(wrong)} keys on an unexpected partition, e.g. {wrong[:3]}"

    total = t_consumed - t0
    print(
        f"\n{N_EVENTS} events / {len(order)} keys / {PARTITIONS} partitions: "
        f"simulate+parse+encode+store {t_published - t0:.1f}s, "
        f"delivered after {t_delivered - t0:.1f}s ({N_EVENTS / (t_delivered - t0):,.0f} ev/s end to end), "
        f"consumed+checked {t_consumed - t_delivered:.1f}s "
        f"({N_EVENTS / (t_consumed - t_delivered):,.0f} ev/s); "
        f"total {total:.1f}s"
    )
    assert total < 90, f"100k events took {total:.0f}s"


def _sim_events(n: int, seed: int) -> list[dict[str, object]]:
    return list(itertools.islice(simulate(200, seed=seed), n))


def test_cli_publish_reports_invalid_lines_and_delivers_the_valid_ones(
    kafka_bootstrap: str, topic_prefix: str, make_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic = make_topic(f"{topic_prefix}cli", 3)
    good = _sim_events(40, seed=3)
    missing_field = dict(good[0], event_id="00000000-0000-4000-8000-000000000001")
    del missing_field["site"]
    naive = dict(good[1], event_id="00000000-0000-4000-8000-000000000002", event_time="2026-01-05T06:00:00")
    unknown_type = dict(good[2], event_id="00000000-0000-4000-8000-000000000003", type="[/UnitTeleported]")

    lines: list[bytes] = [json.dumps(e).encode() for e in good[:10]]
    bad_lines = {  # line number -> (line, what the reason must say)
        11: (b'{"type": "UnitShipped", "event_id": ', "not valid JSON"),
        12: (json.dumps(unknown_type).encode(), "unknown event type '[/UnitTeleported]'"),
        13: (json.dumps(missing_field).encode(), "site: required field is missing"),
        14: (json.dumps(naive).encode(), "event_time: naive timestamp"),
        15: (b'{"type": "UnitShipped", "site": "caf\xe9"}', "not valid JSON"),  # not UTF-8
    }
    lines += [line for line, _ in bad_lines.values()]
    lines += [b"", b"   "]  # blank lines are skipped, not errors
    lines += [json.dumps(e).encode() for e in good[10:]]
    src = tmp_path / "mixed.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")

    data_dir = tmp_path / "state"
    args = ["publish", "--file", str(src), "--bootstrap", kafka_bootstrap, "--topic", topic]
    result = CliRunner().invoke(app, [*args, "--data-dir", str(data_dir), "--timeout", "30"])
    text = " ".join(result.output.split())

    assert result.exit_code == 1, result.output
    assert "Traceback" not in text
    parts = re.split(r"\bline (\d+): ", text)  # [before, n1, reason1, n2, reason2, ...]
    reported = {int(n): reason for n, reason in zip(parts[1::2], parts[2::2], strict=True)}
    assert sorted(reported) == sorted(bad_lines), result.output  # only the invalid lines, all of them
    for lineno, (_line, reason) in bad_lines.items():
        assert reason in reported[lineno], f"line {lineno}: expected {reason!r} in:\n{result.output}"
    assert (
        f"{len(good)} valid events: {len(good)} stored, 0 identical repeats dropped, 0 conflicting repeats "
        f"refused; {len(good)} delivered to Kafka, {len(bad_lines)} invalid lines" in text
    )

    got: list[str] = []
    consume_all(kafka_bootstrap, topic, lambda m: got.append(dict(m.headers())["event_id"].decode()))
    assert sorted(got) == sorted(str(e["event_id"]) for e in good)

    status = CliRunner().invoke(app, ["outbox", "status", "--data-dir", str(data_dir)])
    assert "0 events pending" in " ".join(status.output.split())


def test_cli_publish_reports_repeated_ids_and_delivers_each_event_once(
    kafka_bootstrap: str, topic_prefix: str, make_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic = make_topic(f"{topic_prefix}rep", 3)
    good = _sim_events(30, seed=4)
    lines = [json.dumps(e) for e in good]  # lines 1..30
    lines += [json.dumps(good[i]) for i in (0, 5, 5, 29)]  # 31..34: identical repeats
    lines.append(json.dumps(dict(good[7], site="SOMEWHERE-ELSE")))  # 35: conflicts with line 8
    src = tmp_path / "repeats.jsonl"
    src.write_text("\n".join(lines) + "\n")

    args = ["publish", "--file", str(src), "--bootstrap", kafka_bootstrap, "--topic", topic]
    result = CliRunner().invoke(app, [*args, "--data-dir", str(tmp_path / "state"), "--timeout", "30"])
    text = " ".join(result.output.split())

    assert result.exit_code == 1, result.output  # the conflict is an input error
    assert "Traceback" not in text
    for line, first in ((31, 1), (32, 6), (33, 6), (34, 30)):
        assert f"line {line}: repeats line {first} (event {good[first - 1]['event_id']}, identical)" in text
    assert f"line 35: event id {good[7]['event_id']} is also on line 8 with other content" in text
    # 35 valid lines = 30 stored + 4 identical repeats + 1 conflict; every stored one delivered
    assert (
        "35 valid events: 30 stored, 4 identical repeats dropped, 1 conflicting repeats refused; "
        "30 delivered to Kafka, 0 invalid lines" in text
    ), result.output

    got: list[tuple[str, bytes]] = []
    consume_all(
        kafka_bootstrap, topic, lambda m: got.append((dict(m.headers())["event_id"].decode(), m.value()))
    )
    assert sorted(eid for eid, _ in got) == sorted(str(e["event_id"]) for e in good)  # each once
    reference = AvroSerde(topic=topic)
    conflicted = next(v for eid, v in got if eid == str(good[7]["event_id"]))
    assert conflicted == reference.encode_event(parse_event(good[7]))  # line 8's content, not 35's
