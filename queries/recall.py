"""Recall queries: forward trace, backward trace and recall impact.

Plain SQL over the tables documented in docs/TABLES.md; every value is a bound parameter
(``{name:Type}``), never formatted into the SQL. Each step is a point or IN-set lookup on a
table's ORDER BY key, so a lot recall reads a handful of granules per table:

    lot_lineage (input_lot_id)  ->  lot_consumption (lot_id)  ->  unit_consumption (consumed_uii)
      ->  unit_genealogy (uii: parent, root, path)  ->  shipments / unit_tests (uii)

Genealogy is read with ``argMax(tuple(...), seq)`` per uii, which is exact before merges
(a tuple, so a NULL parent is not skipped by the aggregate). Units with no genealogy row were
never assembled: they are their own root.

Status of an affected unit (``status``):
  * ``shipped``  - the unit or one of its current ancestors has a UnitShipped event (the
    closest one gives customer / destination);
  * ``in_stock`` - not shipped, and the latest test of its root (the final system, or the unit
    itself when it is not assembled) has verdict PASS;
  * ``in_work``  - otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Protocol

__all__ = [
    "Trigger",
    "AffectedUnit",
    "PastHolder",
    "LotHop",
    "ForwardTrace",
    "BackwardTrace",
    "RecallImpact",
    "forward_trace",
    "backward_trace",
    "recall_impact",
    "to_jsonable",
    "TRIGGER_KINDS",
]

MAX_HOPS = 64  # cycle guard for the lot and unit closures
TRIGGER_KINDS = ("lot", "supplier_lot", "supplier", "serial", "station", "operator", "bench")


class _Store(Protocol):
    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]: ...


# ----------------------------------------------------------------------------- results


@dataclass
class Trigger:
    """What is suspect. ``kind`` is one of TRIGGER_KINDS (NonconformanceRaised target kinds,
    case-insensitive; ``SERIAL`` takes a UII, ``SUPPLIER_LOT`` '<supplier_id>:<supplier_lot>').
    The window (aware datetimes) limits station / operator / bench / supplier triggers: an
    operation or test counts when [started_at, finished_at] overlaps it; a supplier's lots
    count when received inside it."""

    kind: str
    id: str
    window_start: datetime | None = None
    window_end: datetime | None = None

    def __post_init__(self) -> None:
        self.kind = self.kind.lower()
        if self.kind not in TRIGGER_KINDS:
            raise ValueError(f"unknown trigger kind {self.kind!r}; expected one of {TRIGGER_KINDS}")


@dataclass
class LotHop:
    lot_id: str
    from_lot_id: str | None  # the lot it was made from (None for the trigger lot)
    depth: int  # transformations from the trigger lot
    transformation: str | None = None


@dataclass
class AffectedUnit:
    uii: str
    part_number: str
    trace: list[str]  # from the trigger to this unit, e.g. ["lot:L1", "lot:L1-A", "uii:PCB-1:7"]
    parent_uii: str | None  # current parent
    root_uii: str  # current final system (the unit itself when not assembled)
    path: list[str]  # current ancestors, parent first, root last
    status: str  # shipped | in_stock | in_work
    site: str | None = None  # plant where the unit met the trigger
    shipped_uii: str | None = None  # the unit or ancestor whose shipment counts
    shipment_id: str | None = None
    customer_id: str | None = None
    destination_site: str | None = None
    end_system: str | None = None


@dataclass
class PastHolder:
    """A unit that held an affected unit (or one of its current ancestors) in the past (rework)."""

    uii: str  # the past parent
    child_uii: str  # what it held then (affected unit or one of its ancestors)
    affected_uii: str  # the affected unit the chain leads to
    root_uii: str  # the past parent's current final system
    status: str
    customer_id: str | None = None
    removed_at: datetime | None = None
    removal_reason: str | None = None
    past: bool = True


@dataclass
class ForwardTrace:
    lot_id: str
    lots: list[LotHop]
    units: list[AffectedUnit]
    systems: list[dict[str, Any]]  # one per distinct root: root_uii, status, shipment fields, units
    past: list[PastHolder]


@dataclass
class RecallImpact:
    trigger: Trigger
    units: list[AffectedUnit]  # the part is installed there NOW
    past: list[PastHolder]  # held it in the PAST (rework), kept apart
    systems: list[dict[str, Any]]
    by_customer: dict[str, int]
    by_site: dict[str, int]
    by_status: dict[str, int]
    lots: list[LotHop] = field(default_factory=list)

    @property
    def unit_count(self) -> int:
        return len(self.units)


@dataclass
class BackwardTrace:
    uii: str
    root_uii: str
    units: list[dict[str, Any]]  # the unit and every descendant: uii, parent_uii, path, depth, consumed_by
    lots: list[dict[str, Any]]  # lots consumed by those units (uii, lot_id, quantity, operation, ...)
    lot_lineage: list[dict[str, Any]]  # upstream lots: lot_id <- input_lot_id
    materials: list[dict[str, Any]]  # receipts of the lots involved (supplier, supplier lot, CoC)
    operations: list[dict[str, Any]]
    tests: list[dict[str, Any]]


def to_jsonable(obj: Any) -> Any:
    """Dataclasses / datetimes -> plain JSON-ready values."""
    if hasattr(obj, "__dataclass_fields__"):
        obj = asdict(obj)
    if isinstance(obj, dict):
        return {k: to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, datetime):
        return obj.isoformat()
    return obj


# ----------------------------------------------------------------------------- building blocks


def _part(uii: str) -> str:
    return uii.split(":", 1)[0]


def _lot_closure(store: _Store, seeds: Iterable[str]) -> dict[str, LotHop]:
    """Every lot made (transitively) from the seed lots, with the hop it came from."""
    hops: dict[str, LotHop] = {s: LotHop(s, None, 0) for s in seeds}
    frontier = sorted(hops)
    depth = 0
    while frontier and depth < MAX_HOPS:
        depth += 1
        rows = store.query(
            "SELECT DISTINCT input_lot_id, output_lot_id, transformation FROM lot_lineage "
            "WHERE input_lot_id IN {lots:Array(String)}",
            {"lots": frontier},
        )
        nxt = []
        for r in rows:
            out = r["output_lot_id"]
            if out not in hops:
                hops[out] = LotHop(out, r["input_lot_id"], depth, r["transformation"])
                nxt.append(out)
        frontier = sorted(nxt)
    return hops


def _lot_trace(hops: dict[str, LotHop], lot_id: str) -> list[str]:
    chain: list[str] = []
    cur: str | None = lot_id
    while cur is not None and len(chain) <= MAX_HOPS:
        chain.append(f"lot:{cur}")
        cur = hops[cur].from_lot_id if cur in hops else None
    return chain[::-1]


def _lot_consumers(store: _Store, lots: Sequence[str]) -> list[dict[str, Any]]:
    if not lots:
        return []
    return store.query(
        "SELECT lot_id, uii, any(site) AS site FROM lot_consumption "
        "WHERE lot_id IN {lots:Array(String)} GROUP BY lot_id, uii ORDER BY lot_id, uii",
        {"lots": list(lots)},
    )


def _unit_closure(
    store: _Store, seeds: dict[str, tuple[list[str], str | None]]
) -> dict[str, tuple[list[str], str | None]]:
    """Add units that consumed the seed units (serialised parts consumed in an operation)."""
    found = dict(seeds)
    frontier = sorted(seeds)
    hops = 0
    while frontier and hops < MAX_HOPS:
        hops += 1
        rows = store.query(
            "SELECT consumed_uii, consumer_uii, any(site) AS site FROM unit_consumption "
            "WHERE consumed_uii IN {u:Array(String)} GROUP BY consumed_uii, consumer_uii",
            {"u": frontier},
        )
        nxt = []
        for r in rows:
            c = r["consumer_uii"]
            if c not in found:
                trace, _site = found[r["consumed_uii"]]
                found[c] = ([*trace, f"uii:{c}"], r["site"])
                nxt.append(c)
        frontier = sorted(nxt)
    return found


def _genealogy(store: _Store, uiis: Iterable[str]) -> dict[str, tuple[str | None, str, list[str]]]:
    """Current (parent, root, path) per uii; units never assembled are their own root."""
    keys = sorted(set(uiis))
    out: dict[str, tuple[str | None, str, list[str]]] = {u: (None, u, []) for u in keys}
    if not keys:
        return out
    rows = store.query(
        "SELECT uii, g.1 AS parent_uii, g.2 AS root_uii, g.3 AS path FROM ("
        " SELECT uii, argMax(tuple(parent_uii, root_uii, path), seq) AS g FROM unit_genealogy"
        " WHERE uii IN {u:Array(String)} GROUP BY uii)",
        {"u": keys},
    )
    for r in rows:
        out[r["uii"]] = (r["parent_uii"], r["root_uii"], list(r["path"]))
    return out


def _shipments(store: _Store, uiis: Iterable[str]) -> dict[str, dict[str, Any]]:
    keys = sorted(set(uiis))
    if not keys:
        return {}
    rows = store.query(
        "SELECT uii, s.1 AS shipment_id, s.2 AS customer_id, s.3 AS destination_site, s.4 AS end_system,"
        " s.5 AS shipped_at FROM ("
        " SELECT uii, argMax(tuple(shipment_id, customer_id, destination_site, end_system, event_time),"
        " event_time) AS s FROM shipments WHERE uii IN {u:Array(String)} GROUP BY uii)",
        {"u": keys},
    )
    return {r["uii"]: r for r in rows}


def _latest_verdicts(store: _Store, uiis: Iterable[str]) -> dict[str, str]:
    keys = sorted(set(uiis))
    if not keys:
        return {}
    rows = store.query(
        "SELECT uii, argMax(verdict, finished_at) AS verdict FROM unit_tests "
        "WHERE uii IN {u:Array(String)} GROUP BY uii",
        {"u": keys},
    )
    return {r["uii"]: r["verdict"] for r in rows}


def _status(
    chain: list[str], root: str, ships: dict[str, dict[str, Any]], verdicts: dict[str, str]
) -> tuple[str, dict[str, Any] | None, str | None]:
    for u in chain:  # the unit first, then its ancestors up to the root
        if u in ships:
            return "shipped", ships[u], u
    if verdicts.get(root) == "PASS":
        return "in_stock", None, None
    return "in_work", None, None


def _build_units(
    store: _Store, hits: dict[str, tuple[list[str], str | None]]
) -> tuple[
    list[AffectedUnit],
    dict[str, tuple[str | None, str, list[str]]],
    dict[str, dict[str, Any]],
    dict[str, str],
]:
    gen = _genealogy(store, hits)
    everyone = set(hits)
    for _parent, root, path in gen.values():
        everyone.update(path)
        everyone.add(root)
    ships = _shipments(store, everyone)
    verdicts = _latest_verdicts(store, {root for _p, root, _path in gen.values()})
    units = []
    for u in sorted(hits):
        trace, site = hits[u]
        parent, root, path = gen[u]
        status, ship, shipped_uii = _status([u, *path], root, ships, verdicts)
        units.append(
            AffectedUnit(
                uii=u,
                part_number=_part(u),
                trace=trace,
                parent_uii=parent,
                root_uii=root,
                path=path,
                status=status,
                site=site,
                shipped_uii=shipped_uii,
                shipment_id=ship["shipment_id"] if ship else None,
                customer_id=ship["customer_id"] if ship else None,
                destination_site=ship["destination_site"] if ship else None,
                end_system=ship["end_system"] if ship else None,
            )
        )
    return units, gen, ships, verdicts


def _past_holders(store: _Store, units: list[AffectedUnit]) -> list[PastHolder]:
    """Parents that once held an affected unit, or one of its current ancestors, but do not now."""
    ancestors: dict[str, set[str]] = {}  # current ancestors of every node on an affected chain
    leads_to: dict[str, str] = {}
    for au in units:
        chain = [au.uii, *au.path]
        for i, node in enumerate(chain):
            ancestors[node] = set(chain[i + 1 :])
            leads_to.setdefault(node, au.uii)
    if not ancestors:
        return []
    rows = store.query(
        "SELECT uii, parent_uii, action, max(event_time) AS at, argMax(reason, event_time) AS reason"
        " FROM (SELECT * FROM assembly_events WHERE uii IN {u:Array(String)} LIMIT 1 BY event_id)"
        " GROUP BY uii, parent_uii, action",
        {"u": sorted(ancestors)},
    )
    assembled: dict[tuple[str, str], datetime] = {}
    removed: dict[tuple[str, str], tuple[datetime, str | None]] = {}
    for r in rows:
        key = (r["uii"], r["parent_uii"])
        if r["action"] == "ASSEMBLED":
            assembled[key] = r["at"]
        else:
            removed[key] = (r["at"], r["reason"])
    # a past parent is one the child was assembled into and is not (directly or higher up) in now
    past = [(c, p) for (c, p) in assembled if p not in ancestors[c]]
    if not past:
        return []
    gen = _genealogy(store, {p for _c, p in past})
    roots = {gen[p][1] for _c, p in past}
    everyone = set(roots)
    for p in {p for _c, p in past}:
        everyone.add(p)
        everyone.update(gen[p][2])
    ships = _shipments(store, everyone)
    verdicts = _latest_verdicts(store, roots)
    out = []
    for c, p in sorted(past):
        _parent, root, path = gen[p]
        status, ship, _su = _status([p, *path], root, ships, verdicts)
        rm = removed.get((c, p))
        out.append(
            PastHolder(
                uii=p,
                child_uii=c,
                affected_uii=leads_to[c],
                root_uii=root,
                status=status,
                customer_id=ship["customer_id"] if ship else None,
                removed_at=rm[0] if rm else None,
                removal_reason=rm[1] if rm else None,
            )
        )
    return out


def _systems(units: list[AffectedUnit]) -> list[dict[str, Any]]:
    by_root: dict[str, dict[str, Any]] = {}
    for u in units:
        s = by_root.setdefault(
            u.root_uii,
            {
                "root_uii": u.root_uii,
                "part_number": _part(u.root_uii),
                "status": u.status,
                "customer_id": u.customer_id,
                "destination_site": u.destination_site,
                "end_system": u.end_system,
                "shipment_id": u.shipment_id,
                "units": [],
            },
        )
        s["units"].append(u.uii)
        if u.status == "shipped" and s["status"] != "shipped":  # a root-level shipment wins
            s.update(
                status="shipped",
                customer_id=u.customer_id,
                destination_site=u.destination_site,
                end_system=u.end_system,
                shipment_id=u.shipment_id,
            )
    return [by_root[k] for k in sorted(by_root)]


def _counts(values: Iterable[str | None]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        key = v if v is not None else "(none)"
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))


# ----------------------------------------------------------------------------- seeds per trigger


def _seed_from_lots(
    store: _Store, lot_ids: Sequence[str], prefix: list[str]
) -> tuple[dict[str, LotHop], dict[str, tuple[list[str], str | None]]]:
    hops = _lot_closure(store, lot_ids)
    hits: dict[str, tuple[list[str], str | None]] = {}
    for r in _lot_consumers(store, sorted(hops)):
        u = r["uii"]
        if u not in hits:
            hits[u] = ([*prefix, *_lot_trace(hops, r["lot_id"]), f"uii:{u}"], r["site"])
    return hops, hits


def _window(trigger: Trigger) -> dict[str, Any]:
    return {"ws": trigger.window_start, "we": trigger.window_end}


_NTS = "Nullable(DateTime64(3, 'UTC'))"
_EVENT_TIME_IN_WINDOW = (
    f"({{ws:{_NTS}}} IS NULL OR event_time >= {{ws:{_NTS}}})"
    f" AND ({{we:{_NTS}}} IS NULL OR event_time <= {{we:{_NTS}}})"
)
_OVERLAP = (
    "({ws:Nullable(DateTime64(3, 'UTC'))} IS NULL OR finished_at >= {ws:Nullable(DateTime64(3, 'UTC'))})"
    " AND ({we:Nullable(DateTime64(3, 'UTC'))} IS NULL OR started_at <= {we:Nullable(DateTime64(3, 'UTC'))})"
)


def _seeds(store: _Store, t: Trigger) -> tuple[dict[str, LotHop], dict[str, tuple[list[str], str | None]]]:
    tag = f"{t.kind}:{t.id}"
    if t.kind == "lot":
        return _seed_from_lots(store, [t.id], [])
    if t.kind in ("supplier_lot", "supplier"):
        if t.kind == "supplier_lot":
            supplier, _, slot = t.id.partition(":")
            rows = store.query(
                "SELECT DISTINCT lot_id FROM material_received"
                " WHERE supplier_id = {s:String} AND supplier_lot = {l:String}",
                {"s": supplier, "l": slot},
            )
        else:
            rows = store.query(
                "SELECT DISTINCT lot_id FROM material_received WHERE supplier_id = {s:String}"
                f" AND {_EVENT_TIME_IN_WINDOW}",
                {"s": t.id, **_window(t)},
            )
        return _seed_from_lots(store, sorted(r["lot_id"] for r in rows), [tag])
    if t.kind == "serial":
        return {}, {t.id: ([f"uii:{t.id}"], None)}
    hits: dict[str, tuple[list[str], str | None]] = {}
    hops: dict[str, LotHop] = {}
    if t.kind in ("station", "operator"):
        col = "station_id" if t.kind == "station" else "operator_id"
        rows = store.query(
            f"SELECT uii, any(site) AS site FROM operations WHERE {col} = {{id:String}} AND {_OVERLAP}"
            " GROUP BY uii",
            {"id": t.id, **_window(t)},
        )
        for r in rows:
            hits[r["uii"]] = ([tag, f"uii:{r['uii']}"], r["site"])
        if t.kind == "station":  # lots processed at the station carry the suspect work downstream
            lots = store.query(
                "SELECT DISTINCT lot_id FROM lot_transformed WHERE station_id = {id:String}"
                f" AND {_EVENT_TIME_IN_WINDOW}",
                {"id": t.id, **_window(t)},
            )
            if lots:
                hops, lot_hits = _seed_from_lots(store, sorted(r["lot_id"] for r in lots), [tag])
                for u, v in lot_hits.items():
                    hits.setdefault(u, v)
    else:  # bench
        rows = store.query(
            f"SELECT uii, any(site) AS site FROM unit_tests WHERE bench_id = {{id:String}} AND {_OVERLAP}"
            " GROUP BY uii",
            {"id": t.id, **_window(t)},
        )
        for r in rows:
            hits[r["uii"]] = ([tag, f"uii:{r['uii']}"], r["site"])
    return hops, hits


# ----------------------------------------------------------------------------- public queries


def forward_trace(store: _Store, lot_id: str) -> ForwardTrace:
    """Lot -> descendant lots -> units that consumed them -> units consuming those -> their
    current assemblies up to the final system -> shipment / customer. Plus past holders."""
    hops, hits = _seed_from_lots(store, [lot_id], [])
    hits = _unit_closure(store, hits)
    units, _gen, _ships, _v = _build_units(store, hits)
    return ForwardTrace(
        lot_id=lot_id,
        lots=sorted(hops.values(), key=lambda h: (h.depth, h.lot_id)),
        units=units,
        systems=_systems(units),
        past=_past_holders(store, units),
    )


def recall_impact(store: _Store, trigger: Trigger) -> RecallImpact:
    """Impact of a suspect lot / supplier lot / supplier / serial / station / operator / bench
    (window). ``units`` are where the suspect part is installed now; ``past`` lists parents that
    held it (or one of its assemblies) before a removal, flagged ``past``."""
    hops, hits = _seeds(store, trigger)
    hits = _unit_closure(store, hits)
    units, _gen, _ships, _v = _build_units(store, hits)
    return RecallImpact(
        trigger=trigger,
        units=units,
        past=_past_holders(store, units),
        systems=_systems(units),
        by_customer=_counts(u.customer_id for u in units),
        by_site=_counts(u.destination_site if u.status == "shipped" else u.site for u in units),
        by_status=_counts(u.status for u in units),
        lots=sorted(hops.values(), key=lambda h: (h.depth, h.lot_id)),
    )


def backward_trace(store: _Store, uii: str) -> BackwardTrace:
    """A unit or system -> every current descendant, with the lots, upstream lots, material
    receipts, operations (operator, station, work order, times) and tests of each."""
    root = _genealogy(store, [uii])[uii][1]
    members = store.query(
        "SELECT uii, g.1 AS parent_uii, g.3 AS path, g.4 AS depth FROM ("
        " SELECT uii, argMax(tuple(parent_uii, root_uii, path, depth), seq) AS g FROM unit_genealogy"
        " WHERE uii IN (SELECT uii FROM root_members WHERE root_uii = {root:String}) GROUP BY uii)"
        " WHERE g.2 = {root:String} AND (uii = {u:String} OR has(g.3, {u:String}))",
        {"root": root, "u": uii},
    )
    units: dict[str, dict[str, Any]] = {
        m["uii"]: {
            "uii": m["uii"],
            "parent_uii": m["parent_uii"],
            "path": list(m["path"]),
            "consumed_by": None,
        }
        for m in members
    }
    units.setdefault(uii, {"uii": uii, "parent_uii": None, "path": [], "consumed_by": None})
    # serialised items consumed by those units (and what they consumed, ...)
    frontier = sorted(units)
    ops: list[dict[str, Any]] = []
    hops = 0
    while frontier and hops < MAX_HOPS:
        hops += 1
        rows = store.query(
            "SELECT * FROM operations WHERE uii IN {u:Array(String)} LIMIT 1 BY event_id", {"u": frontier}
        )
        ops.extend(rows)
        nxt = []
        for r in rows:
            for c in r["consumed_uiis"]:
                if c not in units:
                    units[c] = {"uii": c, "parent_uii": None, "path": [], "consumed_by": r["uii"]}
                    nxt.append(c)
        frontier = sorted(nxt)
    for u in units.values():  # depth below the traced unit
        p = u["path"]
        u["depth"] = p.index(uii) + 1 if uii in p else 0
        u["part_number"] = _part(u["uii"])
    keys = sorted(units)
    lots = [
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
        for o in ops
        for lot, q in zip(o["consumed_lot_ids"], o["consumed_lot_quantities"], strict=False)
    ]
    # upstream lot lineage (output -> inputs), keyed by lot_transformed.lot_id
    lineage: list[dict[str, Any]] = []
    seen = {x["lot_id"] for x in lots}
    frontier = sorted(seen)
    hops = 0
    while frontier and hops < MAX_HOPS:
        hops += 1
        rows = store.query(
            "SELECT lot_id, transformation, input_lot_ids, input_quantities, station_id, event_time"
            " FROM lot_transformed WHERE lot_id IN {l:Array(String)} LIMIT 1 BY event_id",
            {"l": frontier},
        )
        nxt = []
        for r in rows:
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
    materials = (
        store.query(
            "SELECT lot_id, part_number, supplier_id, supplier_lot, quantity, unit_of_measure, coc_reference,"
            " inspection_result, event_time FROM material_received WHERE lot_id IN {l:Array(String)}"
            " LIMIT 1 BY event_id",
            {"l": sorted(seen)},
        )
        if seen
        else []
    )
    tests = store.query(
        "SELECT uii, bench_id, procedure_id, procedure_version, calibration_id, calibration_due, operator_id,"
        " started_at, finished_at, verdict, measurements.name AS m_name, measurements.value AS m_value,"
        " measurements.unit AS m_unit, measurements.low_limit AS m_low, measurements.high_limit AS m_high,"
        " measurements.passed AS m_passed, event_id"
        " FROM unit_tests WHERE uii IN {u:Array(String)} LIMIT 1 BY event_id",
        {"u": keys},
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
    op_cols = (
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
    return BackwardTrace(
        uii=uii,
        root_uii=root,
        units=sorted(units.values(), key=lambda u: (u["depth"], u["uii"])),
        lots=sorted(lots, key=lambda x: (x["uii"], x["lot_id"])),
        lot_lineage=sorted(lineage, key=lambda x: (x["lot_id"], x["input_lot_id"])),
        materials=sorted(materials, key=lambda x: x["lot_id"]),
        operations=sorted(
            ({k: o[k] for k in op_cols} for o in ops), key=lambda o: (o["uii"], o["started_at"])
        ),
        tests=sorted(tests, key=lambda x: (x["uii"], x["finished_at"])),
    )
