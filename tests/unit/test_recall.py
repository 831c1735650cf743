"""Pure parts of queries.recall: the lot_units step and the GC pause (no ClickHouse)."""

from __future__ import annotations

import gc
from typing import Any

import pytest

from queries import recall as r


class _FakeStore:
    """Answers the lot_units statement with ``lot_rows`` and records the exact-facts keys."""

    def __init__(self, lot_rows: list[dict[str, Any]]) -> None:
        self.lot_rows = lot_rows
        self.fact_keys: list[list[str]] = []

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        assert params is not None
        if sql == r._LOT_UNITS_SQL:
            return [x for x in self.lot_rows if x["k"] == "E" or x["a"] in params["lots"]]
        if sql == r._EXACT_FACTS_SQL:
            self.fact_keys.append(params["keys"].split("\n"))
            return []
        raise AssertionError(sql)


def _u(lot: str, uii: str, site: str, path: list[str], seq: int) -> dict[str, Any]:
    return {"k": "U", "a": lot, "b": uii, "c": site, "path": path, "seq": seq}


def test_lot_units_latest_row_smallest_site_and_fetch_keys() -> None:
    store = _FakeStore(
        [
            _u("L1", "PCB:2", "plant-b", [], 0),  # the sink's row
            _u("L1", "PCB:2", "plant-a", ["MOD:1", "SYS:1"], 2),  # stale: moved since
            _u("L1", "PCB:2", "plant-a", ["MOD:2", "SYS:2"], 5),  # latest
            _u("L1", "PCB:1", "plant-c", [], 0),  # no genealogy row yet
            _u("L0", "PCB:2", "plant-a", ["MOD:2", "SYS:2"], 5),  # the unit also used L0
        ]
    )
    facts = r._Facts()
    hops, hits = r._seed_from_lots(store, ["L1", "L0"], ["supplier:S"], facts)  # type: ignore[arg-type]
    assert sorted(hops) == ["L0", "L1"]
    # the first lot (in lot order) names the trace; the site is the smallest of the pair's rows
    assert hits == {
        "PCB:1": (["supplier:S", "lot:L1", "uii:PCB:1"], "plant-c"),
        "PCB:2": (["supplier:S", "lot:L0", "uii:PCB:2"], "plant-a"),
    }
    # facts of the units and the ancestors of their LATEST row only, in one statement
    assert store.fact_keys == [["MOD:2", "PCB:1", "PCB:2", "SYS:2"]]
    assert facts.fetched == {"MOD:2", "PCB:1", "PCB:2", "SYS:2"}


def test_lot_units_lineage_reruns_for_the_lot_closure() -> None:
    calls: list[list[str]] = []

    class Store(_FakeStore):
        def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
            assert params is not None
            if sql == r._LOT_UNITS_SQL:
                calls.append(params["lots"])
                out = [x for x in self.lot_rows if x["a"] in params["lots"]]
                return out + ([{"k": "E", "a": "L1", "b": "L2", "c": "SPLIT", "path": [], "seq": 0}])
            if "lot_lineage" in sql:  # the closure walk
                frontier = params["lots"]
                return [{"input_lot_id": "L1", "output_lot_id": "L2", "transformation": "SPLIT"}] * (
                    "L1" in frontier
                )
            return super().query(sql, params)

    store = Store([_u("L2", "PCB:9", "plant-a", ["SYS:9"], 3)])
    hops, hits = r._seed_from_lots(store, ["L1"], [], r._Facts())  # type: ignore[arg-type]
    assert calls == [["L1"], ["L1", "L2"]]
    assert hits == {"PCB:9": (["lot:L1", "lot:L2", "uii:PCB:9"], "plant-a")}
    assert (hops["L2"].from_lot_id, hops["L2"].depth) == ("L1", 1)


def test_gc_is_paused_during_a_recall_and_restored() -> None:
    seen: list[bool] = []

    @r._gc_paused
    def work(fail: bool) -> int:
        seen.append(gc.isenabled())
        if fail:
            raise ValueError("boom")
        return 7

    assert gc.isenabled()
    assert work(False) == 7 and seen == [False] and gc.isenabled()
    with pytest.raises(ValueError):
        work(True)
    assert gc.isenabled()
    gc.disable()
    try:
        work(False)
        assert not gc.isenabled()  # it was off: left off
    finally:
        gc.enable()
