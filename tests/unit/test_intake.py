"""The intake (in the sink's batch loop) and the batched genealogy writer, as pure logic.

* ``judge`` decodes a raw record once: an event with its genealogy commands, or a dead letter
  with the reason (never an exception for bad input).
* Command batches: every command lands on the partition that owns its key, in order.
* ``apply_batch`` under at-least-once with crashes: a worker that wrote nodes but lost the
  sends and change records of a batch record, and replays it, still ends exactly where the
  independent oracle says, and the change records that did reach the sink end on the final view.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.errors import MalformedRecordError, UnknownSchemaError
from schemas.serde import AvroSerde
from streams import genealogy as g
from streams.intake import (
    GENEALOGY_TYPES,
    MAX_BATCH,
    Accepted,
    DeadLetter,
    batches_by_partition,
    command_partition,
    content_hash_of,
    decode_command_batch,
    judge,
)
from tests.samples import sample_events
from tests.unit.test_genealogy_property import _oracle_state, histories

SERDE = AvroSerde()
ENCODED = {e.type: SERDE.encode_event(e) for e in sample_events()}


def _header(d: DeadLetter, name: str) -> str:
    return dict(d.headers)[f"traceline.{name}"].decode()


@pytest.mark.parametrize("type_name", sorted(ENCODED))
def test_peek_type_matches_decode(type_name: str) -> None:
    data = ENCODED[type_name]
    assert SERDE.peek_type(data) == SERDE.decode(data)[0] == type_name


def test_peek_type_rejects_bad_headers_like_decode() -> None:
    for bad in (b"", b"\xc3", b"\xffgarbage", b"\xc3\x01\x00"):
        with pytest.raises(MalformedRecordError):
            SERDE.peek_type(bad)
    with pytest.raises(UnknownSchemaError):
        SERDE.peek_type(b"\xc3\x01" + bytes(8) + b"body")


@pytest.mark.parametrize("type_name", sorted(ENCODED))
def test_judge_decodes_every_type_once_with_its_commands(type_name: str) -> None:
    out = judge(SERDE, b"k", ENCODED[type_name], "t", 0, 1)
    assert isinstance(out, Accepted) and out.type_name == type_name
    assert out.record == SERDE.decode(ENCODED[type_name])[1]
    assert out.commands == g.commands_for_event(out.record, type_name)
    if type_name not in GENEALOGY_TYPES:
        assert out.commands == []


@pytest.mark.parametrize("type_name", sorted(ENCODED))
def test_a_truncated_body_is_a_dead_letter_with_its_position(type_name: str) -> None:
    data = ENCODED[type_name]
    out = judge(SERDE, b"key-1", data[: len(data) - 3], "events", 4, 77)
    assert isinstance(out, DeadLetter)
    assert out.key == b"key-1" and out.value == data[: len(data) - 3]
    assert _header(out, "error") == "MalformedRecordError"
    where = [_header(out, f"source_{k}") for k in ("topic", "partition", "offset")]
    assert where == ["events", "4", "77"]
    assert _header(out, "reason")


def test_garbage_unknown_schema_and_tombstone_are_dead_letters() -> None:
    garbage = judge(SERDE, None, b"\xffnot an event", "t", 0, 1)
    unknown = judge(SERDE, None, b"\xc3\x01" + bytes(8) + b"body", "t", 0, 2)
    tomb = judge(SERDE, b"k", None, "t", 0, 3)
    assert isinstance(garbage, DeadLetter) and _header(garbage, "error") == "MalformedRecordError"
    assert isinstance(unknown, DeadLetter) and _header(unknown, "error") == "UnknownSchemaError"
    assert isinstance(tomb, DeadLetter) and "tombstone" in _header(tomb, "reason")


@pytest.mark.parametrize("type_name", sorted(ENCODED))
def test_an_accepted_record_carries_a_content_hash_that_tells_a_resend_from_a_conflict(
    type_name: str,
) -> None:
    event = next(e for e in sample_events() if e.type == type_name)
    data = ENCODED[type_name]
    out = judge(SERDE, None, data, "t", 0, 1)
    assert isinstance(out, Accepted) and out.content_hash == content_hash_of(data) != 0
    # the encoding is deterministic: the same event again, or re-encoded from its decode
    assert content_hash_of(AvroSerde().encode_event(event)) == out.content_hash
    assert content_hash_of(SERDE.encode(type_name, out.record)) == out.content_hash
    # the framing is not content: the same body in the Confluent wire format hashes the same
    assert content_hash_of(b"\x00" + (17).to_bytes(4, "big") + data[10:]) == out.content_hash
    # other content under the same event id does not
    other = event.model_copy(update={"source": event.source + "-other"})
    assert content_hash_of(SERDE.encode_event(other)) != out.content_hash


def test_a_dead_letter_names_its_error_class() -> None:
    d = judge(SERDE, None, b"\xffnot an event", "t", 0, 1)
    assert isinstance(d, DeadLetter) and d.error == "MalformedRecordError"
    assert DeadLetter(None, b"", []).error == ""


def test_command_batches_route_every_command_to_its_partition_in_order() -> None:
    sends: list[g.Send] = []
    for i in range(MAX_BATCH * 2 + 500):
        u = f"P:{i % 3000}"
        sends.append((u, g.Touch(u)))
    seen: dict[int, list[str]] = {}
    records = list(batches_by_partition(sends, 4))
    for part, value, n in records:
        batch = decode_command_batch(value)
        assert len(batch) == n <= MAX_BATCH
        assert {command_partition(k, 4) for k, _c in batch} == {part}
        seen.setdefault(part, []).extend(k for k, _c in batch)
    for p, keys in seen.items():
        assert keys == [k for k, _c in sends if command_partition(k, 4) == p]
    assert sum(len(v) for v in seen.values()) == len(sends)
    assert command_partition("PCB:1", 6) == command_partition("PCB:1", 6)


@pytest.mark.parametrize("bad", [b"{}", b"[[1, {}]]", b'[["A:1", {"op": "nope"}]]', b"not json"])
def test_a_foreign_command_record_is_rejected(bad: bytes) -> None:
    with pytest.raises((ValueError, KeyError, TypeError)):
        decode_command_batch(bad)


# ----------------------------------------------------------------------------- crash / replay


def _run_batched(
    events: list[dict[str, Any]], rng: random.Random, partitions: int, crash_rate: float, batch_events: int
) -> tuple[dict[str, g.Node], list[dict[str, Any]]]:
    """A model of the deployment: the intake sends each batch's commands as one record per
    partition; one writer per partition reads records in order, writes its table at once
    (rocksdb), buffers sends and change records, and sometimes dies before the buffer
    reached Kafka and before committing: it restarts from the committed offset."""
    logs: list[list[bytes]] = [[] for _ in range(partitions)]
    for i in range(0, len(events), batch_events):
        sends = [s for ev in events[i : i + batch_events] for s in g.commands_for_event(ev)]
        for part, value, _n in batches_by_partition(sends, partitions):
            logs[part].append(value)
    tables: list[dict[str, g.Node]] = [{} for _ in range(partitions)]
    position = [0] * partitions
    committed = [0] * partitions
    landed: list[dict[str, Any]] = []
    steps = 0
    while True:
        ready = [p for p in range(partitions) if position[p] < len(logs[p])]
        if not ready:
            if position == committed:
                break
            committed = list(position)
            continue
        steps += 1
        assert steps < 200_000, "did not quiesce"
        p = rng.choice(ready)
        off = position[p]
        table = tables[p]
        batch = decode_command_batch(logs[p][off])
        assert all(command_partition(k, partitions) == p for k, _c in batch)
        dirty, sends, changes = g.apply_batch(table.get, off, batch)
        table.update(dirty)  # persisted at once, like faust's rocksdb writes
        if rng.random() < crash_rate:
            position[p] = committed[p]  # sends and changes lost; replay from the commit
            continue
        for part, value, _n in batches_by_partition(sends, partitions):
            logs[part].append(value)
        landed.extend(changes)
        position[p] = off + 1
        if rng.random() < 0.5:
            committed[p] = position[p]
    nodes: dict[str, g.Node] = {}
    for t in tables:
        assert not (t.keys() & nodes.keys())
        nodes.update(t)
    return nodes, landed


@settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    events=histories(),
    seed=st.integers(0, 2**32 - 1),
    partitions=st.integers(1, 4),
    crash_rate=st.sampled_from([0.0, 0.15, 0.4]),
    batch_events=st.integers(1, 12),
    dup_count=st.integers(0, 6),
)
def test_batched_writer_with_crashes_equals_oracle(
    events: list[dict[str, Any]],
    seed: int,
    partitions: int,
    crash_rate: float,
    batch_events: int,
    dup_count: int,
) -> None:
    expected = _oracle_state(events)
    rng = random.Random(seed)
    delivered = list(events) + [rng.choice(events) for _ in range(dup_count)]
    rng.shuffle(delivered)
    nodes, landed = _run_batched(delivered, rng, partitions, crash_rate, batch_events)
    assert {u: (n.parent, n.root, n.path) for u, n in nodes.items()} == expected
    # what the sink keeps (the highest seq per unit) is the final view, despite lost records
    last: dict[str, dict[str, Any]] = {}
    for c in landed:
        if c["uii"] not in last or c["seq"] >= last[c["uii"]]["seq"]:
            last[c["uii"]] = c
    assert {u: (c["parent_uii"], c["root_uii"], tuple(c["path"])) for u, c in last.items()} == expected
