"""Pure parts of the recall queries (queries.recall, queries.facts, queries.trace; no ClickHouse):
the lot_units step, the per-unit reduction of the facts, the key parameter, the event dedup and
the GC pause."""

from __future__ import annotations

import gc
import itertools
from typing import Any

import pytest
from clickhouse_connect.driver.binding import format_bind_value

from queries import recall as r
from queries import trace as tr
from queries.facts import FactRow, Facts, gc_paused
from tests import oracle


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
    eid: str = "",
) -> FactRow:
    return (uii, kind, link, path or [], seq, t, attrs or [], eid)


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


# ----------------------------------------------------------------------------- past exposure
# Hand-written link histories, as events (the oracle's input) and as the fact rows the recall
# reads (``unit_facts``); both must give exactly the expected holds.

_eids = itertools.count(1)


def _asm(child: str, parent: str, t: int, eid: str | None = None) -> dict[str, Any]:
    return {"type": "UnitAssembled", "event_id": eid or f"a{next(_eids):04d}", "event_time": t,
            "unit": _ref(child), "parent": _ref(parent)}  # fmt: skip


def _rm(
    child: str, parent: str, t: int, reason: str | None = "rework", eid: str | None = None
) -> dict[str, Any]:
    return {"type": "UnitRemoved", "event_id": eid or f"r{next(_eids):04d}", "event_time": t,
            "unit": _ref(child), "parent": _ref(parent), "reason": reason}  # fmt: skip


def _use(child: str, consumer: str, t: int, eid: str | None = None) -> dict[str, Any]:
    """An operation on ``consumer`` that consumed the unit ``child`` (an install)."""
    return {"type": "OperationCompleted", "event_id": eid or f"o{next(_eids):04d}", "event_time": t,
            "unit": _ref(consumer), "consumed_units": [_ref(child)], "consumed_lots": []}  # fmt: skip


def _ref(uii: str) -> dict[str, str]:
    pn, sn = uii.split(":")
    return {"part_number": pn, "serial_number": sn}


def _uii(ref: dict[str, str]) -> str:
    return f"{ref['part_number']}:{ref['serial_number']}"


def _link_rows(events: list[dict[str, Any]]) -> list[FactRow]:
    out: list[FactRow] = []
    for e in events:
        t, eid = e["event_time"], e["event_id"]
        if e["type"] == "UnitAssembled":
            out.append(_f(_uii(e["unit"]), "ASSEMBLED", _uii(e["parent"]), t=t, attrs=[None], eid=eid))
        elif e["type"] == "UnitRemoved":
            out.append(_f(_uii(e["unit"]), "REMOVED", _uii(e["parent"]), t=t, attrs=[e["reason"]], eid=eid))
        else:
            for ref in e["consumed_units"]:
                out.append(_f(_uii(ref), "CONSUMED_BY", _uii(e["unit"]), t=t, attrs=["plant-a"], eid=eid))
    return out


Hold = tuple[str, str, int, int, str, "str | None", "str | None", "str | None"]


def _ms_of(d: Any) -> int:
    return round(d.timestamp() * 1000)


def _recall_holds(events: list[dict[str, Any]], bad: list[str]) -> list[Hold]:
    """(X, B, held_from, held_until, child below X, removed unit, removed from, reason), as the
    recall answers (in its order), after checking the oracle gives the same set."""
    facts = Facts()
    rows = _link_rows(events)
    facts.add(rows, [])
    facts.fetched.update(u for row in rows for u in (row[0], row[2]) if u is not None)
    past = r._past_holders(facts, bad)
    assert not facts.missing
    got = [
        (p.uii, p.affected_uii, _ms_of(p.held_from), _ms_of(p.held_until), p.child_uii, p.removed_uii,
         p.removed_from_uii, p.removal_reason)
        for p in past
    ]  # fmt: skip
    assert all(p.removed_at == p.held_until and p.past for p in past)
    expected = {(x, b, *h) for (x, b), hs in oracle.past_exposure(events, bad).items() for h in hs}
    assert set(got) == expected and len(got) == len(expected)
    return got


def test_past_exposure_an_lru_that_left_its_system_before_the_bad_part_came() -> None:
    """Issue, case 1: LRU:1 left SYS:1, only then was PCB:1 (bad) fitted into it: SYS:1 never
    held PCB:1 (the old answer listed it: LRU:1, on PCB:1's chain now, was once in SYS:1)."""
    events = [_asm("LRU:1", "SYS:1", 10), _rm("LRU:1", "SYS:1", 20), _asm("PCB:1", "LRU:1", 30)]
    assert _recall_holds(events, ["PCB:1"]) == []
    # LRU:1 moves on to SYS:2 (held now: not past), then PCB:1 leaves LRU:1: LRU:1 and SYS:2 held it
    events += [_asm("LRU:1", "SYS:2", 40), _rm("PCB:1", "LRU:1", 50, "NCR-7")]
    assert _recall_holds(events, ["PCB:1"]) == [
        ("LRU:1", "PCB:1", 30, 50, "PCB:1", "PCB:1", "LRU:1", "NCR-7"),
        ("SYS:2", "PCB:1", 40, 50, "LRU:1", "PCB:1", "LRU:1", "NCR-7"),
    ]


def test_past_exposure_every_level_above_the_removal_held_the_part() -> None:
    """Issue, case 2: PCB:1 leaves sub-assembly SA:1 while SA:1 sits in LRU:1 in SYS:1: all three
    held it until that removal (the old answer listed SA:1 only)."""
    events = [
        _asm("PCB:1", "SA:1", 10),
        _asm("SA:1", "LRU:1", 20),
        _asm("LRU:1", "SYS:1", 30),
        _rm("PCB:1", "SA:1", 40),
        _asm("PCB:1", "SA:2", 50),  # its new home: held now, not past
        _asm("SA:2", "LRU:2", 60),
    ]
    assert _recall_holds(events, ["PCB:1"]) == [
        ("LRU:1", "PCB:1", 20, 40, "SA:1", "PCB:1", "SA:1", "rework"),
        ("SA:1", "PCB:1", 10, 40, "PCB:1", "PCB:1", "SA:1", "rework"),
        ("SYS:1", "PCB:1", 30, 40, "LRU:1", "PCB:1", "SA:1", "rework"),
    ]


def test_past_exposure_of_a_past_holders_own_past_ancestors() -> None:
    """B in SA:1 in LRU:1 in SYS:1; SA:1 moves (with B) to LRU:2; later B leaves SA:1. LRU:1 and
    SYS:1 held B until SA:1 left, SA:1 and LRU:2 until B left."""
    events = [
        _asm("LRU:1", "SYS:1", 5),
        _asm("PCB:1", "SA:1", 10),
        _asm("SA:1", "LRU:1", 20),
        _rm("SA:1", "LRU:1", 30, "swap"),
        _asm("SA:1", "LRU:2", 35),
        _asm("LRU:2", "SYS:2", 36),
        _rm("PCB:1", "SA:1", 40),
    ]
    assert _recall_holds(events, ["PCB:1"]) == [
        ("LRU:1", "PCB:1", 20, 30, "SA:1", "SA:1", "LRU:1", "swap"),
        ("LRU:2", "PCB:1", 35, 40, "SA:1", "PCB:1", "SA:1", "rework"),
        ("SA:1", "PCB:1", 10, 40, "PCB:1", "PCB:1", "SA:1", "rework"),
        ("SYS:1", "PCB:1", 20, 30, "LRU:1", "SA:1", "LRU:1", "swap"),
        ("SYS:2", "PCB:1", 36, 40, "LRU:2", "PCB:1", "SA:1", "rework"),
    ]


def test_past_exposure_holds_moves_ties_and_consumption() -> None:
    # two holds of the same part (back into SA:1 after a repair); a move by a plain install
    # elsewhere (no removal: no reason); a removal naming another parent is ignored
    events = [
        _asm("PCB:1", "SA:1", 10),
        _rm("PCB:1", "SA:1", 20),
        _asm("PCB:1", "SA:1", 30),
        _rm("PCB:1", "SA:9", 35),  # not its parent: ignored
        _asm("PCB:1", "SA:2", 40),  # moved without a removal
        _rm("PCB:1", "SA:2", 50),
    ]
    assert _recall_holds(events, ["PCB:1"]) == [
        ("SA:1", "PCB:1", 10, 20, "PCB:1", "PCB:1", "SA:1", "rework"),
        ("SA:1", "PCB:1", 30, 40, "PCB:1", "PCB:1", "SA:1", None),
        ("SA:2", "PCB:1", 40, 50, "PCB:1", "PCB:1", "SA:2", "rework"),
    ]
    # the same millisecond: the event ids order one child's events (install "b" after removal
    # "a": installed); links of different children take effect together (SA:1 left LRU:1 in
    # the very millisecond PCB:1 came: LRU:1 never held it)
    tie = [
        _asm("PCB:1", "SA:1", 10, eid="b"),
        _rm("PCB:1", "SA:1", 10, eid="a"),
        _asm("SA:1", "LRU:1", 5),
        _rm("SA:1", "LRU:1", 10),
        _rm("PCB:1", "SA:1", 20),
    ]
    assert _recall_holds(tie, ["PCB:1"]) == [("SA:1", "PCB:1", 10, 20, "PCB:1", "PCB:1", "SA:1", "rework")]
    # a removal with the very same version as the install counts as later: never held
    same = [_asm("PCB:1", "SA:1", 10, eid="x"), _rm("PCB:1", "SA:1", 10, eid="x")]
    assert _recall_holds(same, ["PCB:1"]) == []
    # consumption is an install: MOD:1 consumed the bad DIE:1 at 30. LRU:1 held MOD:1 only
    # before that (not exposed); LRU:2 held it after (exposed, through MOD:1)
    used = [
        _asm("MOD:1", "LRU:1", 10),
        _rm("MOD:1", "LRU:1", 20),
        _use("DIE:1", "MOD:1", 30),
        _asm("MOD:1", "LRU:2", 40),
        _rm("MOD:1", "LRU:2", 50),
    ]
    assert _recall_holds(used, ["DIE:1"]) == [("LRU:2", "DIE:1", 40, 50, "MOD:1", "MOD:1", "LRU:2", "rework")]


def test_past_exposure_once_per_bad_unit_and_nothing_for_a_steady_plant() -> None:
    # two bad parts in one LRU that left its system: the system held each of them
    events = [
        _asm("PCB:1", "LRU:1", 10),
        _asm("PCB:2", "LRU:1", 11),
        _asm("LRU:1", "SYS:1", 20),
        _rm("LRU:1", "SYS:1", 30),
    ]
    assert _recall_holds(events, ["PCB:1", "PCB:2"]) == [
        ("SYS:1", "PCB:1", 20, 30, "LRU:1", "LRU:1", "SYS:1", "rework"),
        ("SYS:1", "PCB:2", 20, 30, "LRU:1", "LRU:1", "SYS:1", "rework"),
    ]
    # built once, never reworked: nobody held anything in the past
    steady = [_asm(f"PCB:{i}", f"LRU:{i % 3}", i) for i in range(30)] + [
        _asm(f"LRU:{i}", "SYS:1", 100 + i) for i in range(3)
    ]
    assert _recall_holds(steady, [f"PCB:{i}" for i in range(30)]) == []


def test_segments_fold_each_millisecond_in_version_order() -> None:
    ev = [
        (10, "b", False, "P:1", None),
        (10, "a", True, "P:1", "r1"),  # before the install (smaller id): no effect
        (20, "c", True, "Q:1", "other"),  # names another parent: ignored
        (30, "d", False, "Q:1", None),  # moved without a removal
        (40, "e", True, "Q:1", "r2"),
        (40, "f", False, "Q:1", None),  # re-installed in the same millisecond: still in Q:1
        (50, "g", True, "Q:1", "r3"),
    ]
    for order in (ev, ev[::-1]):
        assert r._segments(list(order)) == (("P:1", 10, 30, None), ("Q:1", 30, 50, "r3"))
    assert r._segments([(5, "a", False, "P:1", None)]) == (("P:1", 5, None, None),)
    assert r._segments([(5, "a", True, "P:1", "x")]) == ()
