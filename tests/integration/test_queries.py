"""Recall queries over a small hand-built plant on the real engine.

Plant:
  L-RAW (SUP-A / SA-1) --split--> L-A, L-B;  L-B + L-OTHER (SUP-B / SB-9) --merge--> L-M
  PCB:1  <- L-A   (SMT-1, OP-1, day1 10:00)      -> LRU:1 -> SYS:1 (shipped to CUST-X, BASE-1)
  PCB:4  <- L-A   (SMT-1, OP-1, day1 10:20)      -> LRU:1 (removed: rework) -> LRU:2 -> SYS:2
  PCB:2  <- L-M   (SMT-1, OP-2, day1 11:00)      -> LRU:2 -> SYS:2 (final test PASS: in stock)
  PCB:3  <- L-OTHER (SMT-2, OP-2, day1 12:00)    -> LRU:3 (root, untested: in work)
  DIE:9  <- L-A   (DIE-1, OP-3);  MOD:1 consumes DIE:9 (serialised)  -> LRU:1
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import count
from typing import Any

import pytest

from queries import (
    Trigger,
    backward_trace,
    backward_traces,
    forward_trace,
    recall_impact,
    recall_impacts,
    to_jsonable,
)
from sinks.rows import SinkRecord, genealogy_rows, rows_for_batch
from sinks.store import Store

pytestmark = pytest.mark.integration

D1 = datetime(2026, 3, 2, tzinfo=UTC)
_ids = count(1)


def _h(t: datetime, site: str = "plant-a") -> dict[str, Any]:
    return {
        "event_id": f"ev-{next(_ids):04d}",
        "event_time": t,
        "source": "test",
        "site": site,
        "program": "PRG-1",
    }


def _u(uii: str) -> dict[str, str]:
    pn, sn = uii.split(":")
    return {"part_number": pn, "serial_number": sn}


def received(lot: str, supplier: str, slot: str, t: datetime) -> tuple[str, dict]:
    return "MaterialReceived", {
        **_h(t),
        "lot_id": lot,
        "part_number": "RES-1",
        "supplier_id": supplier,
        "supplier_lot": slot,
        "quantity": 1000.0,
        "unit_of_measure": "EA",
        "coc_reference": None,
        "inspection_result": "ACCEPTED",
    }


def transformed(
    lot: str, kind: str, inputs: list[str], t: datetime, station: str | None = "KIT-1"
) -> tuple[str, dict]:
    return "LotTransformed", {
        **_h(t),
        "lot_id": lot,
        "part_number": "RES-1",
        "transformation": kind,
        "inputs": [{"lot_id": i, "quantity": 10.0} for i in inputs],
        "quantity": 10.0,
        "unit_of_measure": "EA",
        "work_order": None,
        "station_id": station,
    }


def operation(
    uii: str, lots: list[str], station: str, op: str, t: datetime, units: list[str] | None = None
) -> tuple[str, dict]:
    return "OperationCompleted", {
        **_h(t),
        "unit": _u(uii),
        "work_order": "WO-1",
        "operation": "0010 build",
        "station_id": station,
        "operator_id": op,
        "started_at": t,
        "finished_at": t + timedelta(minutes=5),
        "creates_unit": True,
        "consumed_lots": [{"lot_id": lot, "quantity": 1.0} for lot in lots],
        "consumed_units": [_u(x) for x in units or []],
    }


def unit_tested(uii: str, bench: str, verdict: str, t: datetime) -> tuple[str, dict]:
    return "UnitTested", {
        **_h(t),
        "unit": _u(uii),
        "bench_id": bench,
        "procedure_id": "TP-1",
        "procedure_version": "A",
        "calibration_id": "CAL-1",
        "calibration_due": t + timedelta(days=90),
        "operator_id": None,
        "started_at": t,
        "finished_at": t + timedelta(minutes=2),
        "measurements": [
            {
                "name": "VCC",
                "value": 3.3,
                "unit": "V",
                "low_limit": 3.2,
                "high_limit": 3.4,
                "passed": verdict == "PASS",
            }
        ],
        "verdict": verdict,
    }


def assembled(child: str, parent: str, t: datetime) -> tuple[str, dict]:
    return "UnitAssembled", {
        **_h(t),
        "unit": _u(child),
        "parent": _u(parent),
        "position": "A1",
        "work_order": None,
        "station_id": None,
        "operator_id": None,
    }


def removed(child: str, parent: str, t: datetime) -> tuple[str, dict]:
    return "UnitRemoved", {
        **_h(t),
        "unit": _u(child),
        "parent": _u(parent),
        "position": "A1",
        "reason": "rework",
        "work_order": None,
        "station_id": None,
        "operator_id": None,
    }


def shipped(uii: str, customer: str, dest: str, t: datetime) -> tuple[str, dict]:
    return "UnitShipped", {
        **_h(t),
        "unit": _u(uii),
        "shipment_id": "SHP-1",
        "customer_id": customer,
        "contract": "C-1",
        "destination_site": dest,
        "end_system": "TAIL-7",
    }


def _events() -> list[tuple[str, dict]]:
    h = timedelta(hours=1)
    return [
        received("L-RAW", "SUP-A", "SA-1", D1),
        received("L-OTHER", "SUP-B", "SB-9", D1),
        transformed("L-A", "SPLIT", ["L-RAW"], D1 + h),
        transformed("L-B", "SPLIT", ["L-RAW"], D1 + h),
        transformed("L-M", "MERGE", ["L-B", "L-OTHER"], D1 + 2 * h, station="MIX-1"),
        operation("PCB:1", ["L-A"], "SMT-1", "OP-1", D1 + 10 * h),
        operation("PCB:4", ["L-A"], "SMT-1", "OP-1", D1 + 10 * h + timedelta(minutes=20)),
        operation("PCB:2", ["L-M"], "SMT-1", "OP-2", D1 + 11 * h),
        operation("PCB:3", ["L-OTHER"], "SMT-2", "OP-2", D1 + 12 * h),
        operation("DIE:9", ["L-A"], "DIE-1", "OP-3", D1 + 9 * h),
        operation("MOD:1", [], "MOD-1", "OP-3", D1 + 13 * h, units=["DIE:9"]),
        unit_tested("PCB:1", "BENCH-1", "PASS", D1 + 14 * h),
        unit_tested("PCB:2", "BENCH-1", "FAIL", D1 + 24 * h + 14 * h),
        unit_tested("PCB:2", "BENCH-2", "PASS", D1 + 24 * h + 15 * h),
        assembled("PCB:1", "LRU:1", D1 + 30 * h),
        assembled("MOD:1", "LRU:1", D1 + 30 * h),
        assembled("PCB:4", "LRU:1", D1 + 30 * h),
        assembled("LRU:1", "SYS:1", D1 + 31 * h),
        removed("PCB:4", "LRU:1", D1 + 32 * h),
        assembled("PCB:4", "LRU:2", D1 + 33 * h),
        assembled("PCB:2", "LRU:2", D1 + 33 * h),
        assembled("LRU:2", "SYS:2", D1 + 34 * h),
        assembled("PCB:3", "LRU:3", D1 + 34 * h),
        unit_tested("SYS:2", "FINAL-1", "PASS", D1 + 35 * h),
        shipped("SYS:1", "CUST-X", "BASE-1", D1 + 40 * h),
    ]


def _g(uii: str, path: list[str], seq: int) -> dict[str, Any]:
    return {
        "uii": uii,
        "parent_uii": path[0] if path else None,
        "root_uii": path[-1] if path else uii,
        "path": path,
        "depth": len(path),
        "seq": seq,
        "version_ms": 1_772_000_000_000 + seq,
        "version_event_id": f"g{seq}",
    }


# Genealogy change records in two batches, as the processor would emit them over time.
GEN_1 = [
    _g("PCB:1", ["LRU:1"], 1),
    _g("MOD:1", ["LRU:1"], 1),
    _g("PCB:4", ["LRU:1"], 1),
    _g("LRU:1", [], 1),
    _g("PCB:1", ["LRU:1", "SYS:1"], 2),
    _g("MOD:1", ["LRU:1", "SYS:1"], 2),
    _g("PCB:4", ["LRU:1", "SYS:1"], 2),
    _g("LRU:1", ["SYS:1"], 2),
    _g("SYS:1", [], 1),
]
GEN_2 = [
    _g("PCB:4", [], 3),  # removed for rework: its own root again
    _g("PCB:4", ["LRU:2", "SYS:2"], 4),
    _g("PCB:2", ["LRU:2", "SYS:2"], 1),
    _g("LRU:2", ["SYS:2"], 1),
    _g("SYS:2", [], 1),
    _g("PCB:3", ["LRU:3"], 1),
    _g("LRU:3", [], 1),
]


# The lots each unit consumed, as the processor's change records carry them (``lot_units``).
LOTS = {
    "PCB:1": {"L-A": "plant-a"},
    "PCB:4": {"L-A": "plant-a"},
    "PCB:2": {"L-M": "plant-a"},
    "PCB:3": {"L-OTHER": "plant-a"},
}


def _with_lots(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**r, "lots": LOTS[r["uii"]]} if r["uii"] in LOTS else r for r in records]


# How far the lot_units rows of the genealogy are: "none" (only the sink's seq-0 rows, e.g. a
# processor that has not caught up), "stale" (only GEN_1 carried lots: PCB:4's latest lot row
# still puts it under LRU:1 / SYS:1) or "current". Every answer must be the same.
@pytest.fixture(scope="module", params=["none", "stale", "current"])
def plant(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Store]:
    dsn = os.environ.get("TRACELINE_CLICKHOUSE_DSN", "").strip()
    if dsn:
        db = f"traceline_test_{uuid.uuid4().hex[:10]}"
    else:
        dsn, db = f"chdb://{tmp_path_factory.mktemp('plant') / 'ch'}", "traceline"
    store = Store.open(dsn, db)
    now = datetime(2026, 3, 10, tzinfo=UTC)
    events = _events()
    half = len(events) // 2
    for i, part in enumerate((events[:half], events[half:])):
        recs = [SinkRecord(t, r, "traceline.events", 0, i * 1000 + k, now) for k, (t, r) in enumerate(part)]
        store.write_batch(rows_for_batch(recs), token=f"events:{i}")
        store.write_batch(rows_for_batch(recs), token=f"events:{i}")  # a replay changes nothing
    # a producer re-sent every event (same event_id, later offsets): until a merge the raw
    # tables hold each row twice, and every answer must be the same
    resent = [SinkRecord(t, r, "traceline.events", 0, 5000 + k, now) for k, (t, r) in enumerate(events)]
    store.write_batch(rows_for_batch(resent), token="events:resent")
    gen_1 = GEN_1 if request.param == "none" else _with_lots(GEN_1)
    gen_2 = _with_lots(GEN_2) if request.param == "current" else GEN_2
    store.write_batch(genealogy_rows(gen_1), token="gen:1")
    store.write_batch(genealogy_rows(gen_2), token="gen:2")
    if request.param == "stale":  # the hint really is stale
        rows = store.query("SELECT path FROM lot_units WHERE uii = 'PCB:4' ORDER BY seq DESC LIMIT 1")
        assert rows[0]["path"] == ["LRU:1", "SYS:1"]
    yield store
    if dsn.startswith("http"):
        store.command(f"DROP DATABASE IF EXISTS `{db}`")
    store.close()


def _units(result: Any) -> dict[str, Any]:
    return {u.uii: u for u in result.units}


def test_forward_trace_of_a_raw_lot(plant: Store) -> None:
    ft = forward_trace(plant, "L-RAW")
    assert [(h.lot_id, h.from_lot_id, h.depth) for h in ft.lots] == [
        ("L-RAW", None, 0),
        ("L-A", "L-RAW", 1),
        ("L-B", "L-RAW", 1),
        ("L-M", "L-B", 2),
    ]
    units = _units(ft)
    assert set(units) == {"PCB:1", "PCB:2", "PCB:4", "DIE:9", "MOD:1"}
    assert units["PCB:2"].trace == ["lot:L-RAW", "lot:L-B", "lot:L-M", "uii:PCB:2"]
    assert units["MOD:1"].trace == ["lot:L-RAW", "lot:L-A", "uii:DIE:9", "uii:MOD:1"]
    p1 = units["PCB:1"]
    assert (p1.parent_uii, p1.root_uii, p1.path) == ("LRU:1", "SYS:1", ["LRU:1", "SYS:1"])
    assert (p1.status, p1.customer_id, p1.destination_site, p1.shipped_uii) == (
        "shipped",
        "CUST-X",
        "BASE-1",
        "SYS:1",
    )
    assert (units["MOD:1"].root_uii, units["MOD:1"].status) == ("SYS:1", "shipped")
    p4 = units["PCB:4"]
    assert (p4.parent_uii, p4.root_uii, p4.status) == ("LRU:2", "SYS:2", "in_stock")
    assert units["PCB:2"].status == "in_stock"
    assert (units["DIE:9"].root_uii, units["DIE:9"].status) == ("DIE:9", "in_work")
    assert {s["root_uii"]: s["status"] for s in ft.systems} == {
        "SYS:1": "shipped",
        "SYS:2": "in_stock",
        "DIE:9": "in_work",
    }
    # PCB:4 sat in LRU:1 (now in shipped SYS:1) before its rework: kept apart, flagged past;
    # LRU:1 was in SYS:1 from 31h, so SYS:1 held PCB:4 too, until the same removal at 32h
    assert [
        (p.uii, p.child_uii, p.affected_uii, p.root_uii, p.status, p.customer_id, p.removal_reason, p.past)
        for p in ft.past
    ] == [
        ("LRU:1", "PCB:4", "PCB:4", "SYS:1", "shipped", "CUST-X", "rework", True),
        ("SYS:1", "LRU:1", "PCB:4", "SYS:1", "shipped", "CUST-X", "rework", True),
    ]
    h = timedelta(hours=1)
    held = [(p.held_from, p.held_until, p.removed_at, p.removed_uii, p.removed_from_uii) for p in ft.past]
    assert held == [
        (D1 + 30 * h, D1 + 32 * h, D1 + 32 * h, "PCB:4", "LRU:1"),
        (D1 + 31 * h, D1 + 32 * h, D1 + 32 * h, "PCB:4", "LRU:1"),
    ]
    assert to_jsonable(ft)["units"][0]["uii"]


def test_forward_trace_of_a_leaf_lot(plant: Store) -> None:
    ft = forward_trace(plant, "L-OTHER")
    assert [h.lot_id for h in ft.lots] == ["L-OTHER", "L-M"]
    assert set(_units(ft)) == {"PCB:2", "PCB:3"}
    assert _units(ft)["PCB:3"].status == "in_work" and _units(ft)["PCB:3"].root_uii == "LRU:3"
    assert ft.past == []
    assert forward_trace(plant, "NO-SUCH-LOT").units == []


def test_recall_impact_supplier_lot_equals_lot(plant: Store) -> None:
    by_lot = recall_impact(plant, Trigger("lot", "L-RAW"))
    by_supplier_lot = recall_impact(plant, Trigger("SUPPLIER_LOT", "SUP-A:SA-1"))
    assert (
        set(_units(by_lot)) == set(_units(by_supplier_lot)) == {"PCB:1", "PCB:2", "PCB:4", "DIE:9", "MOD:1"}
    )
    assert _units(by_supplier_lot)["PCB:1"].trace == [
        "supplier_lot:SUP-A:SA-1",
        "lot:L-RAW",
        "lot:L-A",
        "uii:PCB:1",
    ]
    assert by_lot.by_status == {"in_stock": 2, "in_work": 1, "shipped": 2}
    assert by_lot.by_customer == {"(none)": 3, "CUST-X": 2}
    assert by_lot.by_site == {"BASE-1": 2, "plant-a": 3}
    assert [p.uii for p in by_lot.past] == ["LRU:1", "SYS:1"]
    assert recall_impact(plant, Trigger("supplier", "SUP-B")).by_status == {"in_stock": 1, "in_work": 1}


def test_recall_impact_station_window(plant: Store) -> None:
    everything = recall_impact(plant, Trigger("station", "SMT-1"))
    assert set(_units(everything)) == {"PCB:1", "PCB:2", "PCB:4"}
    window = recall_impact(
        plant, Trigger("station", "SMT-1", D1 + timedelta(hours=9), D1 + timedelta(hours=10, minutes=30))
    )
    assert set(_units(window)) == {"PCB:1", "PCB:4"}
    assert _units(window)["PCB:1"].trace == ["station:SMT-1", "uii:PCB:1"]
    # a lot processed at a station carries the suspect work to the units that used it
    assert set(_units(recall_impact(plant, Trigger("station", "MIX-1")))) == {"PCB:2"}


def test_recall_impact_operator_bench_serial(plant: Store) -> None:
    assert set(_units(recall_impact(plant, Trigger("operator", "OP-2")))) == {"PCB:2", "PCB:3"}
    assert set(_units(recall_impact(plant, Trigger("operator", "OP-3")))) == {"DIE:9", "MOD:1"}
    day2 = (D1 + timedelta(days=1), D1 + timedelta(days=2))
    assert set(_units(recall_impact(plant, Trigger("bench", "BENCH-1", *day2)))) == {"PCB:2"}
    assert set(_units(recall_impact(plant, Trigger("bench", "BENCH-1")))) == {"PCB:1", "PCB:2"}
    serial = recall_impact(plant, Trigger("serial", "DIE:9"))
    assert set(_units(serial)) == {"DIE:9", "MOD:1"}
    with pytest.raises(ValueError):
        Trigger("planet", "x")


def test_recall_impacts_of_several_triggers_equal_one_by_one(plant: Store) -> None:
    day2 = (D1 + timedelta(days=1), D1 + timedelta(days=2))
    triggers = [
        Trigger("serial", "DIE:9"),
        Trigger("lot", "L-RAW"),
        Trigger("supplier_lot", "SUP-A:SA-1"),
        Trigger("station", "SMT-1"),
        Trigger("operator", "OP-2"),
        Trigger("bench", "BENCH-1", *day2),
        Trigger("serial", "PCB:2"),
        Trigger("serial", "NOPE:404"),
        Trigger("lot", "L-M"),
    ]
    one = [to_jsonable(recall_impact(plant, t)) for t in triggers]
    counting = _Counting(plant)
    many = recall_impacts(counting, triggers)  # type: ignore[arg-type]
    assert [to_jsonable(r) for r in many] == one
    assert set(_units(many[0])) == {"DIE:9", "MOD:1"} and many[7].units[0].uii == "NOPE:404"
    # the units seeded by the triggers share one facts read (and every later one)
    singly = 0
    for t in triggers:
        c = _Counting(plant)
        recall_impact(c, t)  # type: ignore[arg-type]
        singly += c.calls
    assert counting.calls < singly


def test_backward_trace_of_a_system(plant: Store) -> None:
    bt = backward_trace(plant, "SYS:1")
    assert bt.root_uii == "SYS:1"
    # PCB:4 has a stale root_members row under SYS:1 but moved to SYS:2: not part of it now
    assert [(u["uii"], u["depth"]) for u in bt.units] == [
        ("DIE:9", 0),
        ("SYS:1", 0),
        ("LRU:1", 1),
        ("MOD:1", 2),
        ("PCB:1", 2),
    ]
    assert next(u for u in bt.units if u["uii"] == "DIE:9")["consumed_by"] == "MOD:1"
    assert sorted((x["uii"], x["lot_id"]) for x in bt.lots) == [("DIE:9", "L-A"), ("PCB:1", "L-A")]
    assert [(x["lot_id"], x["input_lot_id"]) for x in bt.lot_lineage] == [("L-A", "L-RAW")]
    assert [(m["lot_id"], m["supplier_id"], m["supplier_lot"]) for m in bt.materials] == [
        ("L-RAW", "SUP-A", "SA-1")
    ]
    assert sorted((o["uii"], o["station_id"], o["operator_id"]) for o in bt.operations) == [
        ("DIE:9", "DIE-1", "OP-3"),
        ("MOD:1", "MOD-1", "OP-3"),
        ("PCB:1", "SMT-1", "OP-1"),
    ]
    assert [(t["uii"], t["bench_id"], t["verdict"]) for t in bt.tests] == [("PCB:1", "BENCH-1", "PASS")]
    assert bt.tests[0]["measurements"][0]["name"] == "VCC"


def test_backward_trace_of_a_subassembly(plant: Store) -> None:
    bt = backward_trace(plant, "LRU:2")
    assert bt.root_uii == "SYS:2"
    assert [u["uii"] for u in bt.units] == ["LRU:2", "PCB:2", "PCB:4"]
    assert sorted(x["lot_id"] for x in bt.lots) == ["L-A", "L-M"]
    assert sorted((x["lot_id"], x["input_lot_id"]) for x in bt.lot_lineage) == [
        ("L-A", "L-RAW"),
        ("L-B", "L-RAW"),
        ("L-M", "L-B"),
        ("L-M", "L-OTHER"),
    ]
    assert sorted(m["lot_id"] for m in bt.materials) == ["L-OTHER", "L-RAW"]
    assert [(t["uii"], t["verdict"]) for t in bt.tests] == [("PCB:2", "FAIL"), ("PCB:2", "PASS")]
    # a unit never assembled: just itself
    solo = backward_trace(plant, "PCB:3")
    assert solo.root_uii == "LRU:3" and [u["uii"] for u in solo.units] == ["PCB:3"]


class _Counting:
    """A store that counts the statements it runs."""

    def __init__(self, store: Store) -> None:
        self.store, self.calls = store, 0

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        self.calls += 1
        return self.store.query(sql, params)

    def query_arrow(self, sql: str, params: dict[str, Any] | None = None) -> Any:
        self.calls += 1
        return self.store.query_arrow(sql, params)


def _canon(bt: Any) -> dict[str, Any]:
    """A trace with its lists in a total order (rows with equal sort keys may come in any order)."""
    d = to_jsonable(bt)
    return {k: sorted(v, key=lambda x: json.dumps(x, sort_keys=True)) if isinstance(v, list) else v
            for k, v in d.items()}  # fmt: skip


def test_backward_traces_of_several_units_equal_one_by_one(plant: Store) -> None:
    units = ["SYS:1", "SYS:2", "LRU:2", "PCB:3", "PCB:4", "DIE:9", "MOD:1", "NOPE:404"]
    one = {u: backward_trace(plant, u) for u in units}
    counting = _Counting(plant)
    many = backward_traces(counting, units)  # type: ignore[arg-type]
    assert {u: _canon(t) for u, t in many.items()} == {u: _canon(t) for u, t in one.items()}
    assert many["SYS:1"].units[0]["uii"] == "DIE:9" and many["NOPE:404"].units[0]["uii"] == "NOPE:404"
    # the reads of one trace, made once for all of them: at most as many as the deepest single one
    deepest = 0
    for u in units:
        c = _Counting(plant)
        backward_trace(c, u)  # type: ignore[arg-type]
        deepest = max(deepest, c.calls)
    assert counting.calls <= deepest


def test_lot_recall_round_trips(plant: Store, request: pytest.FixtureRequest) -> None:
    """With current lot_units rows a lot recall is two statements (lot units + lineage, then
    the facts of the units and their ancestors); a lagging row costs one more, no more."""
    counting = _Counting(plant)
    units = _units(recall_impact(counting, Trigger("lot", "L-M")))  # type: ignore[arg-type]
    assert (units["PCB:2"].root_uii, units["PCB:2"].status) == ("SYS:2", "in_stock")
    assert counting.calls == (2 if request.node.callspec.params["plant"] == "current" else 3)
