"""Backward trace: a unit or system -> every current descendant, with the lots, upstream lots,
material receipts, operations and tests of each (``backward_trace``, ``backward_traces``).

Plain SQL over the tables documented in docs/TABLES.md; every value is a bound parameter
(``{name:Type}``), never formatted into the SQL. Each chdb / HTTP round trip costs a millisecond
or more and each table read another, so the reads are few, every one a point or IN-set lookup
on a table's ORDER BY key:

* the genealogy in one statement when the unit is its own root (a final system:
  ``root_members`` under the unit, and the candidates' genealogy rows from ``unit_facts``), two
  when it sits in an assembly (``_members``);
* then the operations of the units (and of the serialised units they consumed, one read per
  level), ``lot_transformed`` per upstream lot level, the receipts and the tests. Duplicate rows
  of a re-sent event are dropped in Python (``_first_per_event``) rather than by
  ``LIMIT 1 BY event_id``, which costs ~0.3-1.2 ms per read at 10M serials.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from queries.facts import F_SELECT, MAX_HOPS, Facts, QueryStore, fact_rows, gc_paused, part_of
from queries.results import BackwardTrace

__all__ = ["backward_trace", "backward_traces"]

_OP_COLS = (
    "uii",
    "work_order",
    "operation",
    "station_id",
    "operator_id",
    "started_at",
    "finished_at",
    "creates_unit",
    "event_id",
    "site",
)
_OP_READ = (*_OP_COLS, "event_time", "consumed_lot_ids", "consumed_lot_quantities", "consumed_uiis")


def _cols(cols: Sequence[str]) -> str:
    return ", ".join(f"`{c}`" for c in cols)


# the genealogy rows of units and of the candidates under a root (root_members), given as the
# units themselves (``_MEMBERS_AS_ROOT_SQL``: optimistic, right for a final system) or as the
# roots of the units' latest genealogy rows
_MEMBERS_AS_ROOT_SQL = (
    f"{F_SELECT} WHERE kind = 'GENEALOGY' AND (uii IN {{u:Array(String)}} OR uii IN ("
    " SELECT uii FROM root_members WHERE root_uii IN {u:Array(String)}))"
)
_MEMBERS_SQL = (
    f"{F_SELECT} WHERE kind = 'GENEALOGY' AND (uii IN {{u:Array(String)}} OR uii IN ("
    " SELECT uii FROM root_members WHERE root_uii IN ("
    "  SELECT argMax(root_uii, seq) FROM unit_facts"
    "  WHERE uii IN {u:Array(String)} AND kind = 'GENEALOGY' GROUP BY uii)))"
)

_Units = dict[str, dict[str, Any]]  # uii -> the backward trace's row of the unit


def _members(store: QueryStore, uiis: Sequence[str]) -> dict[str, tuple[str, _Units]]:
    """Root of each unit and its current descendants: one statement when every unit is its own
    root (final systems, or units never assembled: the usual backward trace), two otherwise.
    The first statement reads the candidates under the units as roots, skipping the nested
    read of their roots (~4 ms at 10M serials); for a unit whose genealogy names another root,
    the statement that reads the candidates under that root follows."""
    want = sorted(set(uiis))
    out: dict[str, tuple[str, _Units]] = {}
    sql = _MEMBERS_AS_ROOT_SQL
    while want:
        facts = Facts()
        facts.add(fact_rows(store, sql, {"u": want}), [])
        facts.fetched = {*facts.units, *want}  # every GENEALOGY row of these units
        gen = {m: facts.genealogy(m) for m in sorted(facts.units)}
        inner = []
        for uii in want:
            root = facts.genealogy(uii)[1]
            if sql is _MEMBERS_AS_ROOT_SQL and root != uii:
                inner.append(uii)  # not a root: its root's members are read next
                continue
            units: _Units = {}
            for m, (parent, m_root, path) in gen.items():
                if m_root == root and (m == uii or uii in path):
                    units[m] = {"uii": m, "parent_uii": parent, "path": path, "consumed_by": None}
            units.setdefault(uii, {"uii": uii, "parent_uii": None, "path": [], "consumed_by": None})
            out[uii] = (root, units)
        want, sql = inner, _MEMBERS_SQL
    return out


def _first_per_event(rows: list[dict[str, Any]], drop: bool = False) -> list[dict[str, Any]]:
    """The first row of each ``event_id`` (a re-sent event lands twice until a merge), in row
    order; what ``LIMIT 1 BY event_id`` returned, without its ~0.3-1.2 ms per statement at 10M
    serials. ``drop``: remove the ``event_id`` key from the rows kept."""
    seen: set[str] = set()
    out = []
    for r in rows:
        e = r.pop("event_id") if drop else r["event_id"]
        if e not in seen:
            seen.add(e)
            out.append(r)
    return out


def _grouped(rows: list[dict[str, Any]], key: str, keys: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
    """``rows`` by their value of ``key``, with a list (maybe empty) for each of ``keys``."""
    out: dict[str, list[dict[str, Any]]] = {k: [] for k in keys}
    for r in rows:
        out[r[key]].append(r)
    return out


@gc_paused
def backward_trace(store: QueryStore, uii: str) -> BackwardTrace:
    """A unit or system -> every current descendant, with the lots, upstream lots, material
    receipts, operations (operator, station, work order, times) and tests of each.

    The genealogy in one statement (two for a unit inside an assembly, see ``_members``); then
    plain point reads level by level (operations of the units, of the serialised units they
    consumed, ...; lot_transformed per upstream level; receipts; tests). Folding those into
    nested IN subqueries was measured slower at 10M serials: the raw tables are partitioned by
    month and every nested read of them costs."""
    return backward_traces(store, [uii])[uii]


@gc_paused
def backward_traces(store: QueryStore, uiis: Sequence[str]) -> dict[str, BackwardTrace]:
    """``backward_trace`` of several units with the statements of one: each read is made once
    for all of them, then every trace follows its own units and lots through what was read
    (the alert engine's shipping gate traces all the shipments of a batch at once)."""
    members = _members(store, uiis)
    # operations of the units, then of the serialised units they consumed, level by level
    ops_of: dict[str, list[dict[str, Any]]] = {}
    frontier = sorted({m for _root, units in members.values() for m in units})
    hops = 0
    while frontier and hops < MAX_HOPS:
        hops += 1
        rows = _first_per_event(
            store.query(
                f"SELECT {_cols(_OP_READ)} FROM operations WHERE uii IN {{u:Array(String)}}", {"u": frontier}
            )
        )
        ops_of.update(_grouped(rows, "uii", frontier))
        frontier = sorted({c for r in rows for c in r["consumed_uiis"] if c not in ops_of})
    traces = {uii: _Trace(uii, *members[uii], ops_of) for uii in uiis}
    # upstream lot lineage (output -> inputs), keyed by lot_transformed.lot_id, level by level
    made_from: dict[str, list[dict[str, Any]]] = {}
    frontier = sorted({x["lot_id"] for t in traces.values() for x in t.lots})
    hops = 0
    while frontier and hops < MAX_HOPS:
        hops += 1
        rows = _first_per_event(
            store.query(
                "SELECT lot_id, transformation, input_lot_ids, input_quantities, station_id, event_time,"
                " event_id FROM lot_transformed WHERE lot_id IN {l:Array(String)}",
                {"l": frontier},
            )
        )
        made_from.update(_grouped(rows, "lot_id", frontier))
        frontier = sorted({i for r in rows for i in r["input_lot_ids"] if i not in made_from})
    receipts = (
        _first_per_event(
            store.query(
                "SELECT lot_id, part_number, supplier_id, supplier_lot, quantity, unit_of_measure,"
                " coc_reference, inspection_result, event_time, event_id"
                " FROM material_received WHERE lot_id IN {l:Array(String)}",
                {"l": sorted(made_from)},
            ),
            drop=True,
        )
        if made_from
        else []
    )
    tests = _first_per_event(
        store.query(
            "SELECT uii, bench_id, procedure_id, procedure_version, calibration_id, calibration_due,"
            " operator_id, started_at, finished_at, verdict, measurements.name AS m_name,"
            " measurements.value AS m_value, measurements.unit AS m_unit, measurements.low_limit AS m_low,"
            " measurements.high_limit AS m_high, measurements.passed AS m_passed, event_id"
            " FROM unit_tests WHERE uii IN {u:Array(String)}",
            {"u": sorted({u for t in traces.values() for u in t.units})},
        )
    )
    for t in tests:
        t["measurements"] = [
            {"name": n, "value": v, "unit": un, "low_limit": lo, "high_limit": hi, "passed": ok}
            for n, v, un, lo, hi, ok in zip(
                t.pop("m_name"),
                t.pop("m_value"),
                t.pop("m_unit"),
                t.pop("m_low"),
                t.pop("m_high"),
                t.pop("m_passed"),
                strict=False,
            )
        ]
    return {uii: t.result(made_from, receipts, tests) for uii, t in traces.items()}


class _Trace:
    """One unit's backward trace, followed through operations read for several traces."""

    def __init__(self, uii: str, root: str, units: _Units, ops_of: dict[str, list[dict[str, Any]]]) -> None:
        self.uii, self.root, self.units = uii, root, units
        self.ops: list[dict[str, Any]] = []
        frontier = sorted(units)
        hops = 0
        while frontier and hops < MAX_HOPS:  # serialised items consumed (and what they consumed)
            hops += 1
            nxt = []
            for u in frontier:
                for r in ops_of.get(u, ()):
                    self.ops.append(r)
                    for c in r["consumed_uiis"]:
                        if c not in units:
                            units[c] = {"uii": c, "parent_uii": None, "path": [], "consumed_by": r["uii"]}
                            nxt.append(c)
            frontier = sorted(nxt)
        for unit in units.values():  # depth below the traced unit
            p = unit["path"]
            unit["depth"] = p.index(uii) + 1 if uii in p else 0
            unit["part_number"] = part_of(unit["uii"])
        self.lots = [
            {
                "uii": o["uii"],
                "lot_id": lot,
                "quantity": q,
                "work_order": o["work_order"],
                "operation": o["operation"],
                "station_id": o["station_id"],
                "operator_id": o["operator_id"],
                "event_time": o["event_time"],
            }
            for o in self.ops
            for lot, q in zip(o["consumed_lot_ids"], o["consumed_lot_quantities"], strict=False)
        ]

    def result(
        self,
        made_from: dict[str, list[dict[str, Any]]],
        receipts: list[dict[str, Any]],
        tests: list[dict[str, Any]],
    ) -> BackwardTrace:
        lineage: list[dict[str, Any]] = []  # upstream lots (output -> inputs)
        seen = {x["lot_id"] for x in self.lots}
        frontier = sorted(seen)
        hops = 0
        while frontier and hops < MAX_HOPS:
            hops += 1
            nxt = []
            for lot in frontier:
                for r in made_from.get(lot, ()):
                    for inp, q in zip(r["input_lot_ids"], r["input_quantities"], strict=False):
                        lineage.append(
                            {
                                "lot_id": r["lot_id"],
                                "input_lot_id": inp,
                                "input_quantity": q,
                                "transformation": r["transformation"],
                                "station_id": r["station_id"],
                                "event_time": r["event_time"],
                            }
                        )
                        if inp not in seen:
                            seen.add(inp)
                            nxt.append(inp)
            frontier = sorted(nxt)
        return BackwardTrace(
            uii=self.uii,
            root_uii=self.root,
            units=sorted(self.units.values(), key=lambda u: (u["depth"], u["uii"])),
            lots=sorted(self.lots, key=lambda x: (x["uii"], x["lot_id"])),
            lot_lineage=sorted(lineage, key=lambda x: (x["lot_id"], x["input_lot_id"])),
            materials=sorted((m for m in receipts if m["lot_id"] in seen), key=lambda x: x["lot_id"]),
            operations=sorted(
                ({k: o[k] for k in _OP_COLS} for o in self.ops), key=lambda o: (o["uii"], o["started_at"])
            ),
            tests=sorted(
                (t for t in tests if t["uii"] in self.units), key=lambda x: (x["uii"], x["finished_at"])
            ),
        )
