"""The unit passport: everything about one unit on one page (``unit_passport``).

Identity (part, serial, the operation that made it, its programmes), where it sits now (parent,
final system) and what sits in it, the lots it consumed (supplier, supplier lot, certificate,
incoming inspection, the lots they were made from, their latest status), its operations (who,
where, when), its tests with every measurement against its limits and the bench's calibration,
its install and removal history (as a child and as a parent, with times and reasons), the
shipment that took it to a customer (its own, or its nearest shipped ancestor's), and the
nonconformances and alerts that touch it or a unit installed in it now (``via_uii`` names that
unit: an NC on a board's lot reaches the module and the system the board sits in, as a recall
of that lot does; None: the unit itself).

Reads are point or IN-set reads on the tables' ORDER BY keys (``uii``, ``lot_id``), except
the history of what was installed *into* the unit (``assembly_events.parent_uii``) and the
nonconformances (small tables), all as bound parameters.

Programme scoping (``queries.scope``): a unit outside the caller's programmes is "not found"
exactly like a unit the store never saw (with the same scoped suggestions); inside the
passport, references to units outside them (parent, system, path, children, the other side of
an install) read ``(withheld)``, nonconformances and alerts raised under other programmes are
left out, and ``withheld`` counts what was left out.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from queries.facts import QueryStore
from queries.lookup import is_known
from queries.report_text import utc
from queries.scope import WITHHELD, scoped, sees_all, unit_programs, visible
from queries.search import scoped_suggestions
from queries.trace import backward_trace
from schemas.errors import NotFoundError

__all__ = ["UnitPassport", "unit_passport"]

_SEARCHED = "the unit genealogy and operations"  # as queries.lookup says for a serial


@dataclass
class UnitPassport:
    uii: str
    part_number: str
    serial_number: str
    programs: list[str]
    made: dict[str, Any] | None  # the operation that created the unit (creates_unit)
    parent_uii: str | None  # now; None: a root
    root_uii: str  # the final system now (the unit itself when it has no parent)
    path: list[str]  # ancestors now, parent first
    children: list[str]  # units installed in it now
    lots: list[dict[str, Any]]  # consumed lots, with receipt, upstream lots, latest status
    operations: list[dict[str, Any]]
    tests: list[dict[str, Any]]  # with measurements [{name, value, unit, low_limit, high_limit, passed}]
    history: list[dict[str, Any]]  # ASSEMBLED / REMOVED, as child or as parent, oldest first
    shipment: dict[str, Any] | None
    nonconformances: list[dict[str, Any]]
    alerts: list[dict[str, Any]]
    withheld: dict[str, int] = field(default_factory=dict)


def _aware(row: dict[str, Any]) -> dict[str, Any]:
    return {k: utc(v) for k, v in row.items()}


def _first_per_event(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: set[str] = set()
    out = []
    for r in rows:
        if r["event_id"] not in seen:
            seen.add(r["event_id"])
            out.append(_aware({k: v for k, v in r.items() if k != "event_id"}))
    return out


_OPS_SQL = (
    "SELECT event_id, part_number, serial_number, work_order, operation, station_id, operator_id, site,"
    " program, started_at, finished_at, creates_unit, consumed_lot_ids, consumed_lot_quantities,"
    " consumed_uiis FROM operations WHERE uii = {u:String} ORDER BY started_at, event_id"
)
_TESTS_SQL = (
    "SELECT event_id, part_number, serial_number, bench_id, procedure_id, procedure_version,"
    " calibration_id, calibration_due, out_of_calibration, operator_id, started_at, finished_at, verdict,"
    " site, `measurements.name` AS m_name, `measurements.value` AS m_value, `measurements.unit` AS m_unit,"
    " `measurements.low_limit` AS m_low, `measurements.high_limit` AS m_high,"
    " `measurements.passed` AS m_passed FROM unit_tests WHERE uii = {u:String} ORDER BY started_at, event_id"
)
_GENEALOGY_SQL = (
    "SELECT uii, argMax(tuple(parent_uii, root_uii, path), seq) AS g FROM unit_genealogy"
    " WHERE uii IN {u:Array(String)} GROUP BY uii"
)
_ASSEMBLY = (
    "SELECT event_id, event_time, toString(action) AS action, uii, parent_uii, position, reason,"
    " work_order, toNullable(toString(station_id)) AS station_id,"
    " toNullable(toString(operator_id)) AS operator_id, toString(site) AS site FROM assembly_events"
)
_CONSUMED = (
    "SELECT event_id, event_time, 'CONSUMED' AS action, consumed_uii AS uii, consumer_uii AS parent_uii,"
    " CAST(NULL, 'Nullable(String)') AS position, CAST(NULL, 'Nullable(String)') AS reason,"
    " toNullable(work_order) AS work_order, toNullable(toString(station_id)) AS station_id,"
    " toNullable(toString(operator_id)) AS operator_id, toString(site) AS site FROM unit_consumption"
)
# installs and removals as the child and as the parent; consumption into another unit and of others
_HISTORY_SQL = (
    f"{_ASSEMBLY} WHERE uii = {{u:String}} UNION ALL {_ASSEMBLY} WHERE parent_uii = {{u:String}}"
    f" UNION ALL {_CONSUMED} WHERE consumed_uii = {{u:String}}"
    f" UNION ALL {_CONSUMED} WHERE consumer_uii = {{u:String}}"
)
_SHIP_SQL = (
    "SELECT uii, argMax(tuple(shipment_id, customer_id, contract, destination_site, end_system, event_time),"
    " event_time) AS s FROM shipments WHERE uii IN {u:Array(String)} GROUP BY uii"
)
_RECEIPTS_SQL = (
    "SELECT lot_id, any(part_number) AS part_number, any(supplier_id) AS supplier_id,"
    " any(supplier_lot) AS supplier_lot, any(coc_reference) AS coc_reference,"
    " any(inspection_result) AS inspection_result, min(event_time) AS received_at"
    " FROM material_received WHERE lot_id IN {l:Array(String)} GROUP BY lot_id"
)
_MADE_FROM_SQL = (
    "SELECT lot_id, any(part_number) AS part_number, any(transformation) AS transformation,"
    " any(input_lot_ids) AS inputs FROM lot_transformed WHERE lot_id IN {l:Array(String)} GROUP BY lot_id"
)
_STATUS_SQL = (
    "SELECT lot_id, argMax(status, event_time) AS status, argMax(reason, event_time) AS reason,"
    " max(event_time) AS at FROM lot_status WHERE lot_id IN {l:Array(String)} GROUP BY lot_id"
)
_NC_SQL = (
    "SELECT ncr_id, argMax(tuple(target_kind, target_id, window_start, window_end, severity, disposition,"
    " description, program, event_time), event_time) AS n FROM nonconformances"
    " WHERE (target_kind, target_id) IN {t:Array(Tuple(String, String))} GROUP BY ncr_id"
)
_ALERTS_SQL = (
    "SELECT alert_id, version, rule, severity, title, subject_kind, subject_id, event_time, program,"
    " unit_count, arrayFilter(x -> has({u:Array(String)}, x), units) AS hit_units"
    " FROM (SELECT * FROM alerts WHERE hasAny(units, {u:Array(String)})"
    " OR (subject_kind IN ('serial', 'unit') AND subject_id IN {u:Array(String)})"
    " OR (subject_kind = 'lot' AND subject_id IN {l:Array(String)})"
    " ORDER BY alert_id, version DESC LIMIT 1 BY alert_id) ORDER BY event_time DESC LIMIT 200"
)


def _upstream(store: QueryStore, lots: list[str]) -> dict[str, dict[str, Any]]:
    """Every lot in ``lots`` and upstream of them: receipt or transformation (a few levels)."""
    out: dict[str, dict[str, Any]] = {}
    frontier = sorted(set(lots))
    for _ in range(8):
        if not frontier:
            break
        made = {str(r["lot_id"]): r for r in store.query(_MADE_FROM_SQL, {"l": frontier})}
        received = {str(r["lot_id"]): _aware(r) for r in store.query(_RECEIPTS_SQL, {"l": frontier})}
        nxt: list[str] = []
        for lot in frontier:
            m = made.get(lot)
            out[lot] = {
                "lot_id": lot,
                "receipt": received.get(lot),
                "made_from": list(m["inputs"]) if m else [],
                "transformation": str(m["transformation"]) if m else None,
                "part_number": str(m["part_number"])
                if m
                else (received[lot]["part_number"] if lot in received else None),
            }
            nxt += [i for i in out[lot]["made_from"] if i not in out]
        frontier = sorted(set(nxt) - set(out))
    return out


def _tests(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for t in _first_per_event(rows):
        names = t.pop("m_name")
        values, units, lows, highs, passed = (
            t.pop(k) for k in ("m_value", "m_unit", "m_low", "m_high", "m_passed")
        )
        t["measurements"] = [
            {"name": n, "value": v, "unit": u, "low_limit": lo, "high_limit": hi, "passed": bool(p)}
            for n, v, u, lo, hi, p in zip(names, values, units, lows, highs, passed, strict=False)
        ]
        t["calibration_status"] = "OUT OF CALIBRATION" if t["out_of_calibration"] else "in calibration"
        out.append(t)
    return out


def _overlaps(start: Any, end: Any, ws: Any, we: Any) -> bool:
    return (ws is None or end is None or end >= ws) and (we is None or start is None or start <= we)


def unit_passport(store: QueryStore, programs: Collection[str], uii: str) -> UnitPassport:
    """Everything about ``uii`` a caller holding ``programs`` may see (module docstring);
    :class:`NotFoundError` for a unit the store never saw or outside ``programs``."""
    of = unit_programs(store, [uii])
    if not is_known(store, "serial", uii) or not visible(programs, of.get(uii)):
        raise NotFoundError("serial", uii, scoped_suggestions(store, programs, "serial", uii), _SEARCHED)
    withheld = {"references": 0, "children": 0, "nonconformances": 0, "alerts": 0}
    ops = _first_per_event(store.query(_OPS_SQL, {"u": uii}))
    tests = _tests(store.query(_TESTS_SQL, {"u": uii}))
    made = next((o for o in ops if o["creates_unit"]), None)
    first = made or (ops[0] if ops else tests[0] if tests else {})
    part, _, serial = uii.partition(":")
    gen = {str(r["uii"]): r["g"] for r in store.query(_GENEALOGY_SQL, {"u": [uii]})}
    parent, root, path = (gen[uii][0], gen[uii][1], list(gen[uii][2])) if uii in gen else (None, uii, [])
    history = sorted(_first_per_event(store.query(_HISTORY_SQL, {"u": uii})), key=lambda h: h["event_time"])
    installed = sorted(
        {str(h["uii"]) for h in history if h["parent_uii"] == uii and h["action"] != "REMOVED"}
    )
    now = {str(r["uii"]): r["g"] for r in store.query(_GENEALOGY_SQL, {"u": installed})} if installed else {}
    children = [c for c in installed if c in now and now[c][0] == uii]

    # who may be named: every other unit the passport refers to
    others = {*(path or []), root, *(children or []), *(str(h["uii"]) for h in history)}
    others |= {str(h["parent_uii"]) for h in history}
    others.discard(uii)
    seen = unit_programs(store, others) if not sees_all(programs) else {}

    def ref(u: str | None) -> str | None:
        if u is None or u == uii or sees_all(programs) or visible(programs, seen.get(u)):
            return u
        withheld["references"] += 1
        return WITHHELD

    kept_children = [c for c in children if ref(c) != WITHHELD]
    withheld["children"] = len(children) - len(kept_children)
    for h in history:
        h["uii"], h["parent_uii"] = ref(str(h["uii"])), ref(str(h["parent_uii"]))
        h["role"] = "child" if h["uii"] == uii else "parent"

    # lots: the unit's own consumption, with their origin and status
    consumed: list[dict[str, Any]] = []
    for o in ops:
        for lot, qty in zip(o["consumed_lot_ids"], o["consumed_lot_quantities"], strict=False):
            consumed.append(
                {"lot_id": lot, "quantity": qty, "operation": o["operation"], "at": o["finished_at"]}
            )
    lot_ids = sorted({c["lot_id"] for c in consumed})
    origin = _upstream(store, lot_ids) if lot_ids else {}
    every_lot = sorted(origin)
    status = (
        {str(r["lot_id"]): _aware(r) for r in store.query(_STATUS_SQL, {"l": every_lot})} if every_lot else {}
    )
    for c in consumed:
        o = origin.get(c["lot_id"], {})
        c.update(
            part_number=o.get("part_number"),
            receipt=o.get("receipt"),
            made_from=o.get("made_from", []),
            transformation=o.get("transformation"),
            status=status.get(c["lot_id"]),
        )
    upstream = [origin[lot] | {"status": status.get(lot)} for lot in every_lot if lot not in lot_ids]

    # the shipment that counts: its own, else the nearest shipped ancestor's
    ships = {str(r["uii"]): r["s"] for r in store.query(_SHIP_SQL, {"u": [uii, *path]})}
    shipment = None
    for holder in [uii, *path]:
        if holder in ships:
            s = ships[holder]
            shown = ref(holder)
            shipment = _aware(
                {
                    "shipped_uii": shown,
                    "shipment_id": s[0] if shown != WITHHELD else None,
                    "customer_id": s[1],
                    "contract": s[2],
                    "destination_site": s[3],
                    "end_system": s[4],
                    "shipped_at": s[5],
                }
            )
            break

    ncs, alerts = _touching(store, programs, uii, ops, tests, origin, withheld, _inside(store, programs, uii))
    return UnitPassport(
        uii=uii,
        part_number=str(first.get("part_number") or part),
        serial_number=str(first.get("serial_number") or serial),
        programs=sorted(of.get(uii, ())),
        made=made,
        parent_uii=ref(parent),
        root_uii=ref(root) or uii,
        path=[ref(p) or WITHHELD for p in path],
        children=kept_children,
        lots=consumed + [{"upstream": True, **u} for u in upstream],
        operations=ops,
        tests=tests,
        history=history,
        shipment=shipment,
        nonconformances=ncs,
        alerts=alerts,
        withheld=withheld,
    )


# (target kind, id) -> the (start, end, via) of work there that an NC on it reaches: ``via`` is
# None for the unit's own work, else the unit inside it that did it (start and end None: no
# window applies, any NC on the target counts)
_Spans = dict[tuple[str, str], list[tuple[Any, Any, str | None]]]


def _add_work(
    spans: _Spans,
    via: str | None,
    ops: Iterable[dict[str, Any]],
    tests: Iterable[dict[str, Any]],
) -> None:
    """The stations and operators of ``ops`` and the benches and operators of ``tests``, each
    with the window of the work (an NC on them counts inside its own window)."""
    for o in ops:
        window = (o["started_at"], o["finished_at"], via)
        spans.setdefault(("STATION", str(o["station_id"])), []).append(window)
        spans.setdefault(("OPERATOR", str(o["operator_id"])), []).append(window)
    for t in tests:
        window = (t["started_at"], t["finished_at"], via)
        spans.setdefault(("BENCH", str(t["bench_id"])), []).append(window)
        if t.get("operator_id"):
            spans.setdefault(("OPERATOR", str(t["operator_id"])), []).append(window)


def _add_lot(
    spans: _Spans, via: str | None, lot: str, supplier: Any, supplier_lot: Any, received: Any
) -> None:
    spans.setdefault(("LOT", lot), []).append((None, None, via))
    if supplier is not None:
        spans.setdefault(("SUPPLIER_LOT", f"{supplier}:{supplier_lot}"), []).append((None, None, via))
        # a supplier's NC counts for the lots received inside its window
        spans.setdefault(("SUPPLIER", str(supplier)), []).append((received, received, via))


@dataclass
class _Inside:
    """What is installed in the unit now (its current descendants, and the serialised parts
    they consumed), as far as the caller may see it, and the NC targets their work carries."""

    units: list[str]
    lots: dict[str, str]  # lots consumed inside it (and upstream of them) -> the unit that consumed
    spans: _Spans


def _inside(store: QueryStore, programs: Collection[str], uii: str) -> _Inside:
    """The backward trace of ``uii`` (cut to ``programs``) without the unit itself: each unit
    inside it, the lots they consumed and the lots those were made from, the supplier lots and
    suppliers of those, the stations, operators and benches of their operations and tests.
    A lot reached from several units names the first in order."""
    bt = scoped(store, backward_trace(store, uii), programs)
    units = sorted({str(u["uii"]) for u in bt.units} - {uii, WITHHELD})
    inside = set(units)
    lots: dict[str, str] = {}
    for x in bt.lots:
        if x["uii"] in inside:
            lots.setdefault(str(x["lot_id"]), str(x["uii"]))
    inputs: dict[str, list[str]] = {}
    for x in bt.lot_lineage:
        inputs.setdefault(str(x["lot_id"]), []).append(str(x["input_lot_id"]))
    frontier = sorted(lots)
    for _ in range(8):  # upstream: the lots they were made from, a few levels
        nxt = []
        for lot in frontier:
            for i in inputs.get(lot, ()):
                if i not in lots:
                    lots[i] = lots[lot]
                    nxt.append(i)
        frontier = sorted(nxt)
    spans: _Spans = {("SERIAL", u): [(None, None, u)] for u in units}
    received: dict[str, dict[str, Any]] = {}  # lot -> its first receipt (as _RECEIPTS_SQL: min time)
    for rec in sorted(bt.materials, key=lambda r: utc(r["event_time"])):
        received.setdefault(str(rec["lot_id"]), rec)
    for lot, via in lots.items():
        m = received.get(lot)
        _add_lot(spans, via, lot, m and m["supplier_id"], m and m["supplier_lot"], m and utc(m["event_time"]))
    for u in units:
        _add_work(
            spans,
            u,
            (o for o in bt.operations if o["uii"] == u),
            (t for t in bt.tests if t["uii"] == u),
        )
    return _Inside(units, lots, spans)


def _via(matches: list[str | None]) -> str | None:
    """The unit an NC or alert reaches this one through: None (the unit itself) when any of its
    matches is the unit's own, else the first unit inside it."""
    return None if None in matches else min(m for m in matches if m is not None)


def _touching(
    store: QueryStore,
    programs: Collection[str],
    uii: str,
    ops: list[dict[str, Any]],
    tests: list[dict[str, Any]],
    origin: dict[str, dict[str, Any]],
    withheld: dict[str, int],
    inside: _Inside,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The nonconformances on the unit, its lots (and upstream), their supplier lots, their
    suppliers (a lot received inside the NC's window) and the stations, operators and benches
    of its operations and tests (inside the NC's window), as a recall of those triggers counts
    them; the same for every unit installed in it now (``via_uii`` names that unit; None: the
    unit itself), since a recall of any of those reaches this unit too. The alerts naming the
    unit, a unit inside it, or one of their lots. Only the caller's programmes."""
    spans: _Spans = {k: list(v) for k, v in inside.spans.items()}
    spans.setdefault(("SERIAL", uii), []).append((None, None, None))
    for lot, o in origin.items():
        r = o.get("receipt") or {}
        _add_lot(spans, None, lot, r.get("supplier_id"), r.get("supplier_lot"), r.get("received_at"))
    _add_work(spans, None, ops, tests)
    ncs = []
    for r in store.query(_NC_SQL, {"t": sorted(spans)}):
        kind, target, ws, we, severity, disposition, description, program, at = r["n"]
        ws, we = utc(ws), utc(we)
        matches = [
            via
            for s, e, via in spans.get((str(kind), str(target)), [])
            if s is None and e is None or _overlaps(utc(s), utc(e), ws, we)
        ]
        if not matches:
            continue
        if not visible(programs, [p for p in str(program).split(",") if p]):
            withheld["nonconformances"] += 1
            continue
        ncs.append(
            _aware(
                {
                    "ncr_id": r["ncr_id"],
                    "target_kind": kind,
                    "target_id": target,
                    "window_start": ws,
                    "window_end": we,
                    "severity": severity,
                    "disposition": disposition,
                    "description": description,
                    "raised_at": at,
                    "via_uii": _via(matches),
                }
            )
        )
    ncs.sort(key=lambda n: n["raised_at"])
    alerts = []
    units, lots = [uii, *inside.units], {**inside.lots, **dict.fromkeys(origin)}  # own lots: via None
    for a in store.query(_ALERTS_SQL, {"u": units, "l": sorted(lots)}):
        if not visible(programs, [p for p in str(a["program"]).split(",") if p]):
            withheld["alerts"] += 1
            continue
        hit: list[str | None] = [None if u == uii else u for u in a.pop("hit_units")]
        if a["subject_kind"] in ("serial", "unit") and a["subject_id"] in units:
            hit.append(None if a["subject_id"] == uii else a["subject_id"])
        if a["subject_kind"] == "lot" and a["subject_id"] in lots:
            hit.append(lots[a["subject_id"]])
        alerts.append(_aware({**a, "via_uii": _via(hit) if hit else None}))
    return ncs, alerts
