"""The workbench's pure parts, no I/O: the trees drawn from traces (``queries.tree``), the live
feed's cursor (``queries.feed``) and the acknowledgement store (``traceline.acks``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from queries.feed import FeedCursor, alerts_landed
from queries.results import AffectedUnit, BackwardTrace, ForwardTrace, LotHop, PastHolder
from queries.tree import backward_tree, forward_tree, tree_lots
from traceline.acks import AckStore

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


def _unit(uii: str, trace: list[str], path: list[str], customer: str | None = None) -> AffectedUnit:
    return AffectedUnit(
        uii=uii,
        part_number=uii.split(":")[0],
        trace=trace,
        parent_uii=path[0] if path else None,
        root_uii=path[-1] if path else uii,
        path=path,
        status="shipped" if customer else "in_work",
        site="plant-a",
        customer_id=customer,
        shipment_id="SHP-1" if customer else None,
    )


def test_forward_tree_lot_to_units_to_systems_to_customers() -> None:
    ft = ForwardTrace(
        lot_id="L1",
        lots=[LotHop("L1", None, 0), LotHop("L1-A", "L1", 1, "SPLIT")],
        units=[
            _unit("BRD:1", ["lot:L1", "lot:L1-A", "uii:BRD:1"], ["LRU:1", "SYS:1"], "CUST-1"),
            _unit("BRD:2", ["lot:L1", "uii:BRD:2"], []),
            _unit("MOD:9", ["lot:L1", "uii:BRD:2", "uii:MOD:9"], ["SYS:2"]),
        ],
        systems=[],
        past=[
            PastHolder(
                "LRU:7", "BRD:1", "BRD:1", "SYS:3", "shipped", held_from=T0, held_until=T0 + timedelta(days=1)
            )
        ],
    )
    tree = forward_tree(ft, {"L1-A": "HOLD"})
    by_id = {n.id: n for n in tree.nodes}
    assert tree.root == "lot:L1" and by_id["lot:L1"].parent is None
    assert by_id["lot:L1-A"].parent == "lot:L1" and by_id["lot:L1-A"].flag == "HOLD"
    assert by_id["uii:BRD:1"].parent == "lot:L1-A"
    assert by_id["uii:MOD:9"].parent == "uii:BRD:2"  # consumed a unit that consumed the lot
    chain = [by_id["uii:BRD:1^0"], by_id["uii:BRD:1^1"], by_id["uii:BRD:1$"]]
    assert [n.label for n in chain] == ["in LRU:1", "in SYS:1", "customer CUST-1"]
    assert chain[1].kind == "system" and chain[2].parent == chain[1].id
    assert (
        by_id["past:0"].parent == "past" and "2026-03-02 08:00 to 2026-03-03 08:00" in by_id["past:0"].detail
    )
    assert all(n.parent in by_id for n in tree.nodes if n.parent is not None)
    assert len(by_id) == len(tree.nodes) and tree.units == 3
    assert tree_lots(ft) == {"L1", "L1-A"}


def test_backward_tree_units_lots_upstream_operations_tests() -> None:
    bt = BackwardTrace(
        uii="SYS:1",
        root_uii="SYS:1",
        units=[
            {"uii": "SYS:1", "parent_uii": None, "path": [], "depth": 0, "consumed_by": None},
            {"uii": "BRD:1", "parent_uii": "SYS:1", "path": ["SYS:1"], "depth": 1, "consumed_by": None},
            {"uii": "DIE:1", "parent_uii": None, "path": [], "depth": 2, "consumed_by": "BRD:1"},
        ],
        lots=[{"uii": "BRD:1", "lot_id": "L2", "quantity": 2.0, "operation": "0010 SMT"}],
        lot_lineage=[
            {"lot_id": "L2", "input_lot_id": "L1", "input_quantity": 5.0, "transformation": "SPLIT"}
        ],
        materials=[
            {
                "lot_id": "L1",
                "supplier_id": "SUP",
                "supplier_lot": "S-1",
                "coc_reference": None,
                "inspection_result": "OK",
            }
        ],
        operations=[
            {
                "uii": "BRD:1",
                "operation": "0010 SMT",
                "station_id": "SMT-1",
                "operator_id": "OP-1",
                "started_at": T0,
                "finished_at": T0,
                "work_order": "WO-1",
            }
        ],
        tests=[
            {
                "uii": "BRD:1",
                "procedure_id": "TP",
                "procedure_version": "A",
                "verdict": "PASS",
                "bench_id": "B-1",
                "calibration_id": "C-1",
                "calibration_due": T0,
                "finished_at": T0 + timedelta(hours=1),
            }
        ],
    )
    tree = backward_tree(bt, {"L1": "NC NCR-1"})
    by_id = {n.id: n for n in tree.nodes}
    assert by_id["u:SYS:1"].parent is None and by_id["u:SYS:1"].kind == "system"
    assert by_id["u:BRD:1"].parent == "u:SYS:1"
    assert by_id["u:DIE:1"].parent == "u:BRD:1"  # consumed by the board
    lot = next(n for n in tree.nodes if n.label == "lot L2")
    upstream = next(n for n in tree.nodes if n.label == "lot L1")
    assert upstream.parent == lot.id and upstream.flag == "NC NCR-1" and "SUP lot S-1" in upstream.detail
    test = next(n for n in tree.nodes if n.kind == "test")
    assert test.flag == "out of calibration"  # passed, but after the bench's calibration was due
    assert tree_lots(bt) == {"L1", "L2"}


class _AlertStore:
    """Rows of the alerts table, answering the feed's one statement (by landing time)."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        assert params is not None
        after, n = params["after"], params["n"]
        got = sorted(
            (r for r in self.rows if after is None or r["ingest_time"] >= after),
            key=lambda r: (r["ingest_time"], r["alert_id"], r["version"]),
        )
        return [dict(r) for r in got[:n]]


def _alert(alert_id: str, version: int, landed: datetime) -> dict[str, Any]:
    return {"alert_id": alert_id, "version": version, "ingest_time": landed, "program": "P", "units": []}


def test_the_feed_cursor_sends_each_version_once_even_within_one_millisecond() -> None:
    store = _AlertStore([_alert("A", 1, T0), _alert("B", 1, T0)])
    cursor = FeedCursor(T0 - timedelta(seconds=1))
    assert [(r["alert_id"], r["version"]) for r in alerts_landed(store, {"*"}, cursor)] == [
        ("A", 1),
        ("B", 1),
    ]
    assert alerts_landed(store, {"*"}, cursor) == []
    store.rows.append(_alert("C", 1, T0))  # landed in the same millisecond as the last ones sent
    store.rows.append(_alert("A", 2, T0 + timedelta(milliseconds=5)))
    assert [(r["alert_id"], r["version"]) for r in alerts_landed(store, {"*"}, cursor)] == [
        ("C", 1),
        ("A", 2),
    ]
    assert cursor.landed == T0 + timedelta(milliseconds=5) and cursor.keys == {("A", 2)}


def test_acknowledgements_survive_a_restart_and_the_latest_wins(tmp_path: Path) -> None:
    path = tmp_path / "acks.jsonl"
    acks = AckStore(path)
    acks.add("NC_RAISED:1", 1, "a.analyst")
    acks.add("NC_RAISED:1", 2, "b.engineer", "checked")
    again = AckStore(path)
    got = again.get(["NC_RAISED:1", "other"])
    assert list(got) == ["NC_RAISED:1"]
    assert (got["NC_RAISED:1"].by, got["NC_RAISED:1"].alert_version, got["NC_RAISED:1"].note) == (
        "b.engineer",
        2,
        "checked",
    )
    assert again.version == 2 and oct(path.stat().st_mode & 0o777) == "0o600"
    assert AckStore(None).get(["x"]) == {}
