"""Row building for the ClickHouse sink: pure, no I/O."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from schemas.serde import AvroSerde
from sinks import ddl
from sinks.rows import (
    SCHEMAS,
    RowBuildError,
    SinkRecord,
    change_problem,
    deadletter_rows,
    genealogy_rows,
    rows_for_batch,
)
from tests.samples import sample_events

INGEST = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)


def _decoded() -> list[tuple[str, dict]]:
    serde = AvroSerde()
    return [serde.decode(serde.encode_event(e)) for e in sample_events()]


def _batch(decoded: list[tuple[str, dict]], offset0: int = 100) -> list[SinkRecord]:
    return [SinkRecord(t, r, "traceline.events", 3, offset0 + i, INGEST) for i, (t, r) in enumerate(decoded)]


def test_every_table_matches_the_ddl_columns() -> None:
    out = rows_for_batch(_batch(_decoded()))
    out.update(
        genealogy_rows(
            [
                {
                    "uii": "A:1",
                    "parent_uii": None,
                    "root_uii": "A:1",
                    "path": [],
                    "depth": 0,
                    "seq": 1,
                    "version_ms": 0,
                    "version_event_id": "e",
                }
            ]
        )
    )
    out.update(
        deadletter_rows(
            [
                {
                    "source_topic": "traceline.events",
                    "source_partition": 0,
                    "source_offset": 7,
                    "error": "MalformedRecordError",
                    "reason": "truncated",
                    "key": b"k",
                    "raw": b"\x00",
                    "dlq_topic": "traceline.deadletter",
                    "dlq_partition": 0,
                    "dlq_offset": 0,
                    "ingest_time": INGEST,
                }
            ]
        )
    )
    assert set(out) == {t.name for t in ddl.TABLES}
    for name, table in out.items():
        assert table.column_names == ddl.table_columns(name), name
        assert table.schema == SCHEMAS[name]


def test_sample_batch_values() -> None:
    decoded = _decoded()
    out = rows_for_batch(_batch(decoded))
    ops = out["operations"].to_pylist()
    assert len(ops) == 1
    op = ops[0]
    assert op["uii"] == "PCB-100:SN000123"
    assert op["consumed_lot_ids"] == ["L-2026-0002"]
    assert op["consumed_uiis"] == ["DIE-7:W12-X04-Y17"]
    assert (
        op["kafka_partition"] == 3 and op["kafka_offset"] == 102 and op["kafka_topic"] == "traceline.events"
    )
    assert op["ingest_time"] == INGEST
    assert op["event_time"].tzinfo is not None
    lc = out["lot_consumption"].to_pylist()
    assert [(r["lot_id"], r["uii"], r["quantity"]) for r in lc] == [("L-2026-0002", "PCB-100:SN000123", 12.0)]
    assert lc[0]["event_id"] == op["event_id"]
    uc = out["unit_consumption"].to_pylist()
    assert [(r["consumed_uii"], r["consumer_uii"]) for r in uc] == [("DIE-7:W12-X04-Y17", "PCB-100:SN000123")]
    ll = out["lot_lineage"].to_pylist()
    assert [(r["input_lot_id"], r["output_lot_id"], r["transformation"]) for r in ll] == [
        ("L-2026-0001", "L-2026-0002", "SPLIT")
    ]
    asm = out["assembly_events"].to_pylist()
    assert [a["action"] for a in asm] == ["ASSEMBLED", "REMOVED"]
    assert asm[0]["parent_uii"] == "LRU-300:SN000045"
    test = out["unit_tests"].to_pylist()[0]
    assert (
        len(test["measurements.name"]) == len(test["measurements.value"]) == len(test["measurements.passed"])
    )
    assert out["shipments"].num_rows == out["lot_status"].num_rows == out["nonconformances"].num_rows == 1


def test_empty_tables_are_left_out_and_namespaced_types_accepted() -> None:
    decoded = [d for d in _decoded() if d[0] == "LotStatusChanged"]
    assert rows_for_batch([]) == {}
    out = rows_for_batch(_batch([("traceline.events.LotStatusChanged", decoded[0][1])]))
    assert set(out) == {"lot_status"}


def test_epoch_millis_timestamps_are_accepted() -> None:
    t, r = next(d for d in _decoded() if d[0] == "LotStatusChanged")
    r = dict(r, event_time=1_764_151_200_123)
    row = rows_for_batch(_batch([(t, r)]))["lot_status"].to_pylist()[0]
    assert row["event_time"] == datetime(2025, 11, 26, 10, 0, 0, 123000, tzinfo=UTC)


def test_unknown_type_and_malformed_record_raise_with_coordinates() -> None:
    with pytest.raises(RowBuildError) as err:
        rows_for_batch([SinkRecord("Nope", {}, "t", 1, 7, INGEST)])
    assert (err.value.topic, err.value.partition, err.value.offset) == ("t", 1, 7)
    t, r = next(d for d in _decoded() if d[0] == "UnitShipped")
    bad = {k: v for k, v in r.items() if k != "customer_id"}
    with pytest.raises(RowBuildError) as err:
        rows_for_batch([SinkRecord(t, bad, "t", 0, 9, INGEST)])
    assert err.value.offset == 9 and "customer_id" in err.value.reason


def test_genealogy_rows() -> None:
    out = genealogy_rows(
        [
            {
                "uii": "PCB:1",
                "parent_uii": "LRU:1",
                "root_uii": "SYS:1",
                "path": ["LRU:1", "SYS:1"],
                "depth": 2,
                "seq": 5,
                "version_ms": 1_764_151_200_000,
                "version_event_id": "ev-1",
            },
            {
                "uii": "SYS:1",
                "parent_uii": None,
                "root_uii": "SYS:1",
                "path": [],
                "depth": 0,
                "seq": 1,
                "version_ms": datetime(2026, 1, 1, tzinfo=UTC),
                "version_event_id": "ev-2",
            },
        ]
    )
    g = out["unit_genealogy"].to_pylist()
    assert g[0]["path"] == ["LRU:1", "SYS:1"] and g[0]["parent_uii"] == "LRU:1" and g[0]["seq"] == 5
    assert g[1]["parent_uii"] is None and g[1]["version_time"] == datetime(2026, 1, 1, tzinfo=UTC)
    assert out["root_members"].to_pylist() == [
        {"root_uii": "SYS:1", "uii": "PCB:1", "seq": 5},
        {"root_uii": "SYS:1", "uii": "SYS:1", "seq": 1},
    ]
    assert genealogy_rows([]) == {}


def test_row_building_is_fast_enough() -> None:
    """Not a benchmark; guards against an accidental per-row slow path (>= 50k events/s)."""
    decoded = _decoded()
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    batch = []
    for i in range(20_000):
        t, r = decoded[2]  # OperationCompleted, the widest event
        r = dict(r, event_id=f"e{i}", event_time=t0 + timedelta(seconds=i))
        batch.append(SinkRecord(t, r, "x", 0, i, INGEST))
    start = time.perf_counter()
    out = rows_for_batch(batch)
    elapsed = time.perf_counter() - start
    assert out["operations"].num_rows == 20_000 and isinstance(out["operations"], pa.Table)
    assert elapsed < 2.0, elapsed


def test_raw_rows_carry_the_content_hash_and_dead_letters_their_size_and_sha256() -> None:
    decoded = _decoded()
    t, r = decoded[0]
    out = rows_for_batch(
        [
            SinkRecord(t, r, "e", 0, 1, INGEST, 2**64 - 1),
            SinkRecord(t, dict(r, event_id="x"), "e", 0, 2, INGEST),
        ]
    )
    [table] = [tbl for name, tbl in out.items() if name in ("material_received",)]
    assert table.column("content_hash").to_pylist() == [2**64 - 1, 0]
    row = dict(
        source_topic="e", source_partition=0, source_offset=7, error="E", reason="r", key=b"k", raw=b"abc",
        dlq_topic="d", dlq_partition=0, dlq_offset=0, ingest_time=INGEST,
    )  # fmt: skip
    whole, by_ref = deadletter_rows(
        [row, {**row, "raw_size": 10**7, "raw_sha256": "f" * 64, "raw_truncated": True}]
    )["dead_letters"].to_pylist()
    assert (whole["raw_size"], whole["raw_truncated"]) == (3, False)
    assert whole["raw_sha256"] == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert (by_ref["raw_size"], by_ref["raw_sha256"], by_ref["raw_truncated"]) == (10**7, "f" * 64, True)


GOOD_CHANGE = dict(
    uii="A:1", parent_uii="B:1", root_uii="B:1", path=["B:1"], depth=1, seq=3,
    version_ms=1_700_000_000_000, version_event_id="e", lots={"L1": "plant-a"},
)  # fmt: skip


@pytest.mark.parametrize(
    ("patch", "problem"),
    [
        ({}, None),
        ({"parent_uii": None, "path": None, "depth": None, "lots": None, "version_ms": None}, None),
        ({"uii": 5}, "uii"),
        ({"root_uii": None}, "root_uii"),
        ({"seq": -1}, "seq"),
        ({"seq": 2**64}, "seq"),
        ({"seq": True}, "seq"),
        ({"seq": "3"}, "seq"),
        ({"parent_uii": 1}, "parent_uii"),
        ({"path": "B:1"}, "path"),
        ({"path": [1]}, "path"),
        ({"depth": 70_000}, "depth"),
        ({"version_ms": 2**70}, "version_ms"),
        ({"version_ms": "yesterday"}, "version_ms"),
        ({"lots": ["L1"]}, "lots"),
        ({"lots": {"L1": None}}, "lots"),
    ],
)
def test_change_problem_names_what_genealogy_rows_cannot_land(patch: dict, problem: str | None) -> None:
    ch = {**GOOD_CHANGE, **patch}
    why = change_problem(ch)
    if problem is None:
        assert why is None
        genealogy_rows([ch])  # and it lands
    else:
        assert why is not None and problem in why
    assert change_problem([GOOD_CHANGE]) is not None and change_problem("x") is not None


def test_tables_doc_is_in_sync_with_the_ddl() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "TABLES.md").read_text()
    assert ddl.render_markdown().strip() in doc, "regenerate docs/TABLES.md from sinks.ddl.render_markdown()"


def test_ddl_renders_cluster_mode_hook() -> None:
    t = next(t for t in ddl.TABLES if t.name == "unit_genealogy")
    single = ddl._create_table(t, "traceline", ddl.EngineOptions())
    assert "ReplacingMergeTree(seq)" in single and "non_replicated_deduplication_window = 10000" in single
    clustered = ddl._create_table(t, "traceline", ddl.EngineOptions(cluster="prod"))
    assert "ON CLUSTER prod" in clustered and "ReplicatedReplacingMergeTree(" in clustered
    assert "replicated_deduplication_window" in clustered


def test_lot_units_rows_from_operations_and_change_records() -> None:
    decoded = _decoded()
    ops = [(t, r) for t, r in decoded if t.endswith("OperationCompleted") and r["consumed_lots"]]
    out = rows_for_batch(_batch(ops))
    t, r = ops[0]
    key = f"{r['unit']['part_number']}:{r['unit']['serial_number']}"
    lu = [x for x in out["lot_units"].to_pylist() if x["uii"] == key]
    # the sink's row: the unit as its own root at seq 0, one per consumed lot
    assert lu == [
        {
            "lot_id": lot["lot_id"],
            "uii": key,
            "site": r["site"],
            "parent_uii": None,
            "root_uii": key,
            "path": [],
            "seq": 0,
        }
        for lot in r["consumed_lots"]
    ]
    assert out["lot_units"].num_rows == sum(len(r["consumed_lots"]) for _t, r in ops)
    rec = {
        "uii": "PCB:1",
        "parent_uii": "LRU:1",
        "root_uii": "SYS:1",
        "path": ["LRU:1", "SYS:1"],
        "depth": 2,
        "seq": 4,
        "version_ms": 0,
        "version_event_id": "e",
    }
    g = genealogy_rows([rec, {**rec, "uii": "PCB:2", "lots": {"L1": "plant-a", "L2": "plant-b"}}])
    assert g["lot_units"].to_pylist() == [
        {
            "lot_id": lot,
            "uii": "PCB:2",
            "site": site,
            "parent_uii": "LRU:1",
            "root_uii": "SYS:1",
            "path": ["LRU:1", "SYS:1"],
            "seq": 4,
        }
        for lot, site in (("L1", "plant-a"), ("L2", "plant-b"))
    ]
    assert "lot_units" not in genealogy_rows([rec])  # a record without lots: no lot rows
