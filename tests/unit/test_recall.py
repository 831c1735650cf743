"""Pure parts of the recall queries (queries.recall, queries.facts, queries.trace; no ClickHouse):
the lot_units step, the per-unit reduction of the facts, the key parameter, the event dedup and
the GC pause."""

from __future__ import annotations

import gc
from typing import Any

import pytest
from clickhouse_connect.driver.binding import format_bind_value

from queries import recall as r
from queries import trace as tr
from queries.facts import FactRow, Facts, gc_paused


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
            self.fact_keys.append(str(params["keys"]).split(r._SEP))
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
    facts = Facts()
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
    hops, hits = r._seed_from_lots(store, ["L1"], [], Facts())  # type: ignore[arg-type]
    assert calls == [["L1"], ["L1", "L2"]]
    assert hits == {"PCB:9": (["lot:L1", "lot:L2", "uii:PCB:9"], "plant-a")}
    assert (hops["L2"].from_lot_id, hops["L2"].depth) == ("L1", 1)


def test_keys_bind_as_the_client_would_send_them() -> None:
    keys = ["LRU:00000001", "PCB:00000007", "SN with space/and:colons", "SYS:ä"]
    sql, params = r._keys_param(keys)
    assert sql == r._EXACT_FACTS_SQL
    # exactly the text the client sends for the plain string (nothing left to escape)
    plain = r._SEP.join(keys)
    assert format_bind_value(params["keys"]) == format_bind_value(plain) == plain
    # a key with a character the client escapes (or the separator) goes as an array instead
    for odd in ("it's", "a\\b", "tab\there", "new\nline", "back`tick", "x" + r._SEP + "y"):
        sql, params = r._keys_param(["PCB:1", odd])
        assert sql == r._EXACT_FACTS_ARRAY_SQL and params == {"keys": ["PCB:1", odd]}


def _f(
    uii: str,
    kind: str,
    link: str | None = None,
    path: list[str] | None = None,
    seq: int = 0,
    t: int = 0,
    attrs: list[str | None] | None = None,
) -> FactRow:
    return (uii, kind, link, path or [], seq, t, attrs or [])


def test_facts_reduce_per_unit_like_the_latest_row() -> None:
    """The exact-facts statement returns every row unsorted; the reduction must give what the
    latest row per (uii, kind, link), ordered by link, gave (the rows in any order)."""
    rows = [
        _f("PCB:1", "GENEALOGY", "MOD:1", ["MOD:1"], seq=1, t=10),
        _f("PCB:1", "GENEALOGY", "MOD:3", ["MOD:3", "SYS:3"], seq=3, t=5),  # tie: the larger parent
        _f("PCB:1", "GENEALOGY", "MOD:2", ["MOD:2", "SYS:2"], seq=3, t=5),  # highest, smallest parent
        _f("PCB:1", "GENEALOGY", None, [], seq=3, t=5),  # tie: NULL sorts last
        _f("PCB:1", "SHIPPED", None, [], t=7, attrs=["S1", "C1", "D1", "E1"]),
        _f("PCB:1", "SHIPPED", None, [], t=9, attrs=["S0", "C0", "D0", "E0"]),
        _f("PCB:1", "SHIPPED", None, [], t=9, attrs=["S2", "C2", "D2", "E2"]),  # latest, larger attrs
        _f("SYS:2", "TESTED", None, [], t=3, attrs=["PASS"]),
        _f("SYS:2", "TESTED", None, [], t=4, attrs=["FAIL"]),
        _f("PCB:1", "CONSUMED_BY", "BOX:1", [], t=2, attrs=["plant-a"]),
        _f("PCB:1", "CONSUMED_BY", "BOX:1", [], t=1, attrs=["plant-b"]),  # older row, same consumer
    ]
    for order in (rows, rows[::-1]):
        facts = Facts()
        facts.add(order, [])
        facts.fetched.update(["PCB:1", "SYS:2"])
        assert facts.genealogy("PCB:1") == ("MOD:2", "SYS:2", ["MOD:2", "SYS:2"])
        assert facts.shipment("PCB:1") == ["S2", "C2", "D2", "E2"]
        assert facts.verdict("SYS:2") == "FAIL" and facts.verdict("PCB:1") is None
        assert facts.consumers("PCB:1") == {"BOX:1": (2, "plant-a")}
        assert facts.genealogy("SYS:2") == (None, "SYS:2", [])  # never assembled: its own root
        assert not facts.missing
    # a unit not fetched is noted, answered as unknown, and its rows (if any) are not used
    assert facts.genealogy("MOD:2") == (None, "MOD:2", []) and facts.missing == {"MOD:2"}
    # rows of a fetched unit are ignored when a later statement returns them again
    facts.add([_f("PCB:1", "GENEALOGY", "MOD:9", ["MOD:9"], seq=99)], [])
    assert facts.genealogy("PCB:1")[0] == "MOD:2"


def test_facts_fetched_set_is_the_seeds_and_two_links_around() -> None:
    facts = Facts()
    facts.add(
        [
            _f("PCB:1", "GENEALOGY", "MOD:1", ["MOD:1", "SYS:1"], seq=2),
            _f("PCB:1", "ASSEMBLED", "MOD:0", t=1, attrs=[None]),
            _f("MOD:0", "GENEALOGY", "LRU:0", ["LRU:0", "SYS:0"], seq=2),
            _f("MOD:1", "GENEALOGY", "SYS:1", ["SYS:1"], seq=1),
        ],
        ["PCB:1"],
    )
    # PCB:1, its links (MOD:1, SYS:1, MOD:0) and theirs (LRU:0, SYS:0); not three links away
    assert facts.fetched == {"PCB:1", "MOD:1", "SYS:1", "MOD:0", "LRU:0", "SYS:0"}


def test_gc_is_paused_during_a_recall_and_restored() -> None:
    seen: list[bool] = []

    @gc_paused
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


def test_first_row_per_event_in_row_order() -> None:
    rows = [
        {"event_id": "e2", "uii": "PCB:2"},
        {"event_id": "e1", "uii": "PCB:1"},
        {"event_id": "e2", "uii": "PCB:2"},  # the same event landed twice (before a merge)
    ]
    assert tr._first_per_event([dict(x) for x in rows]) == rows[:2]
    assert tr._first_per_event([dict(x) for x in rows], drop=True) == [{"uii": "PCB:2"}, {"uii": "PCB:1"}]
