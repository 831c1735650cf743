"""The hash chain (``sinks.chain``) and the sink's use of it, without ClickHouse.

What must hold: a row hash covers every column but the ingest time and the Kafka position, and
the sink's Arrow values hash like the store's; entries chain per (topic, partition) in offset
order from the genesis; a replayed batch adds no entry and a landed head is never chained
twice; the entries go into the batch's one ``write_batch``, after the facts and before the raw
tables; heads are signed when due and when idle, with a key created owner-only.
"""

from __future__ import annotations

import stat
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from queries.report_render import _ISSUED
from schemas.serde import AvroSerde
from sinks import ddl
from sinks.chain import (
    CHAIN_SCHEMA,
    HEADS_SCHEMA,
    ChainState,
    KeyFileError,
    Signer,
    Verifier,
    genesis,
    hashed_columns,
    head_message,
    link,
    row_hashes,
)
from sinks.rows import RAW_TABLES, SCHEMAS, SinkRecord, rows_for_batch
from tests.samples import sample_events
from tests.unit.test_sink_land import TOPICS, ev_msg, event, land, rig

NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)


def _decoded() -> list[tuple[str, dict[str, Any]]]:
    serde = AvroSerde()
    return [serde.decode(serde.encode_event(e)) for e in sample_events()]


def _tables(offset0: int = 0, partition: int = 0, topic: str = "t.events") -> dict[str, pa.Table]:
    return rows_for_batch(
        [SinkRecord(t, r, topic, partition, offset0 + i, NOW) for i, (t, r) in enumerate(_decoded())]
    )


def test_the_integrity_tables_match_their_ddl() -> None:
    assert CHAIN_SCHEMA.names == ddl.table_columns("event_chain")
    assert HEADS_SCHEMA.names == ddl.table_columns("chain_heads")
    assert _ISSUED.names == ddl.table_columns("issued_reports")
    assert ddl.MIGRATIONS[5][0] == 6  # migration 6 made them (later ones follow it)


def test_a_row_hash_covers_every_column_but_the_ingest_time_and_the_position() -> None:
    ops = _tables()["operations"]
    [h] = row_hashes("operations", ops)
    assert len(h) == 32 and row_hashes("operations", ops) == [h]
    assert "ingest_time" not in hashed_columns("operations") and "kafka_offset" not in hashed_columns(
        "operations"
    )
    moved = rows_for_batch(
        [SinkRecord(t, r, "other", 9, 999, NOW + timedelta(days=1)) for t, r in _decoded()]
    )["operations"]
    assert row_hashes("operations", moved) == [h]  # position and ingest time: not content
    row = ops.to_pylist()[0]
    for name in hashed_columns("operations"):
        v = row[name]
        changed = {
            str: lambda x: x + "x",
            bool: lambda x: not x,
            int: lambda x: x + 1,
            float: lambda x: x + 0.5,
            list: lambda x: [*x, x[0]] if x else ["x"],
            datetime: lambda x: x + timedelta(milliseconds=1),
        }[type(v)](v)
        other = pa.Table.from_pylist([{**row, name: changed}], schema=ops.schema)
        assert row_hashes("operations", other) != [h], name


def test_the_store_s_arrow_types_hash_like_the_sink_s() -> None:
    """The store returns LowCardinality as dictionaries and maps in its own key order."""
    ops = _tables()["operations"]
    as_read = ops.set_column(
        ops.schema.get_field_index("site"), "site", ops.column("site").dictionary_encode()
    )
    assert row_hashes("operations", as_read) == row_hashes("operations", ops)
    base = {n: None for n in SCHEMAS["alerts"].names}
    base.update(
        alert_id="A",
        version=1,
        unit_count=0,
        units=[],
        out_of_calibration=False,
        kafka_partition=0,
        kafka_offset=0,
        by_status=[],
        by_customer=[],
        by_site=[],
    )
    a = pa.Table.from_pylist([{**base, "details": [("a", "1"), ("b", "2")]}], schema=SCHEMAS["alerts"])
    b = pa.Table.from_pylist([{**base, "details": [("b", "2"), ("a", "1")]}], schema=SCHEMAS["alerts"])
    assert row_hashes("alerts", a) == row_hashes("alerts", b)


def _entries(tables: dict[str, pa.Table]) -> list[dict[str, Any]]:
    return tables["event_chain"].to_pylist() if "event_chain" in tables else []  # type: ignore[no-any-return]


def test_entries_chain_per_partition_in_offset_order_and_a_replay_adds_none() -> None:
    st = ChainState("t.alerts")
    both = {**_tables(0, 0)}
    later = _tables(100, 1)  # another partition; its rows listed first
    tables = {n: pa.concat_tables([later[n], both[n]]) if n in both else later[n] for n in later}
    batch = st.extend(tables, NOW)
    names = list(batch.tables)
    assert names.index("event_chain") < min(names.index(n) for n in names if n in RAW_TABLES)
    assert max(names.index(n) for n in names if n not in RAW_TABLES) == names.index("event_chain")
    entries = _entries(batch.tables)
    raw_rows = sum(t.num_rows for n, t in tables.items() if n in RAW_TABLES)
    assert len(entries) == raw_rows
    for part in (0, 1):
        mine = [e for e in entries if e["kafka_partition"] == part]
        assert [e["kafka_offset"] for e in mine] == sorted(e["kafka_offset"] for e in mine)
        prev = genesis("t.events", part)
        for e in mine:
            assert e["chain_hash"] == link(prev, e["row_hash"])
            prev = e["chain_hash"]
        assert batch.heads[("t.events", part)] == (mine[-1]["kafka_offset"], prev)
    # not landed yet: the same batch again chains the same entries
    assert _entries(st.extend(tables, NOW).tables) == entries
    st.landed(batch, NOW)
    assert "event_chain" not in st.extend(tables, NOW).tables  # a replay: chained before
    nxt = _entries(st.extend(_tables(200, 0), NOW).tables)
    assert nxt[0]["chain_hash"] == link(batch.heads[("t.events", 0)][1], nxt[0]["row_hash"])


def test_heads_are_signed_when_due_and_when_idle(tmp_path: Path) -> None:
    signer = Signer.load_or_create(tmp_path / "k")
    st = ChainState("t.alerts", signer, sign_seconds=60)
    b1 = st.extend(_tables(0, 0), NOW)
    [head] = b1.tables["chain_heads"].to_pylist()
    off, ch = b1.heads[("t.events", 0)]
    assert (head["kafka_offset"], head["chain_hash"], head["key_id"]) == (off, ch, signer.key_id)
    assert signer.verify(head["signature"], head_message("t.events", 0, off, ch, NOW))
    assert not signer.verify(head["signature"], head_message("t.events", 0, off + 1, ch, NOW))
    st.landed(b1, NOW)
    b2 = st.extend(_tables(100, 0), NOW + timedelta(seconds=1))
    assert "chain_heads" not in b2.tables  # not due: signed a second ago
    st.landed(b2, NOW + timedelta(seconds=1))
    idle = st.idle_heads(NOW + timedelta(seconds=2))
    assert (
        idle is not None
        and idle.tables["chain_heads"].to_pylist()[0]["kafka_offset"] == b2.heads[("t.events", 0)][0]
    )
    st.landed(idle, NOW + timedelta(seconds=2))
    assert st.idle_heads(NOW + timedelta(seconds=3)) is None  # nothing left unsigned
    assert ChainState("t.alerts").idle_heads(NOW) is None  # no key: chained, not signed


def test_the_sink_writes_the_chain_in_the_batch_s_one_insert() -> None:
    r = rig()
    op, asm = event("OperationCompleted"), event("UnitAssembled")
    land(r, [ev_msg(op, 5, partition=1), ev_msg(asm, 6, partition=1)])
    [(tables, token)] = r.store.writes
    names = list(tables)
    assert names[-3:] == ["event_chain", "operations", "assembly_events"]
    assert [(e["kafka_offset"], e["event_id"], e["raw_table"]) for e in _entries(tables)] == [
        (5, op.event_id, "operations"),
        (6, asm.event_id, "assembly_events"),
    ]
    assert token == f"{TOPICS.events}:1:5-6"  # the batch token is unchanged
    assert r.sink._chain.heads[(TOPICS.events, 1)][0] == 6  # advanced once landed


def test_a_key_is_created_owner_only_and_refused_when_others_can_read_it(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "chain.ed25519"
    key = Signer.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) & 0o077 == 0
    assert Signer.load_or_create(path).key_id == key.key_id  # the same key next time
    pub = Verifier.load(path.with_name("other"))
    assert pub is None
    path.with_name("chain.ed25519.pub").rename(tmp_path / "keys" / "only.pub")
    only = Verifier.load(tmp_path / "keys" / "only")  # the public half alone verifies
    assert only is not None and only.key_id == key.key_id
    assert only.verify(key.sign(b"x"), b"x") and not only.verify(key.sign(b"x"), b"y")
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        Signer.load(path)


def test_chaining_a_batch_is_cheap() -> None:
    """Not a benchmark: guards against a slow path (20k of the widest rows well under 1 s)."""
    t, r = _decoded()[2]
    batch = [SinkRecord(t, dict(r, event_id=f"e{i}"), "x", i % 3, i, NOW) for i in range(20_000)]
    tables = rows_for_batch(batch)
    start = time.perf_counter()
    out = ChainState("a").extend(tables, NOW)
    elapsed = time.perf_counter() - start
    assert out.tables["event_chain"].num_rows == 20_000
    assert elapsed < 1.0, elapsed
