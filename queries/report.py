"""Recall report for the auditor: the data (``build_report``) and its CSV, HTML and PDF forms.

``build_report(store, trigger)`` runs the recall (``queries.recall.recall_impact``) and reads,
with bound parameters, what an auditor asks next: each affected unit's test history (verdict,
bench, procedure, calibration; a test is *out of calibration* when the bench's
``calibration_due`` is before the test's ``finished_at``), its sequential production record
(operations: work order, operation, station, operator, times) and the operation where it met
the trigger; the lots in scope with their receipts (supplier lot, CoC, incoming inspection),
status history and nonconformance reports; and how fresh the data was (latest ``event_time``
and ``ingest_time`` over the raw tables, and the consumer lag when the caller measured it).

Renderers: ``render_csv`` (one row per unit, now and past holders, full histories in
columns), ``render_html`` (one self-contained printable page; every value escaped with
``html.escape``) and ``render_pdf`` (reportlab: title and signature block, totals, the
affected-unit table with its header repeated on each page, the AS9100D 8.5.2 / AQAP-2110
evidence map, a test-history appendix, "page X of Y").

``add_report_routes(api, store)`` serves ``GET /report`` from a FastAPI app.
"""

from __future__ import annotations

import csv
import hashlib
import html
import io
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Protocol

from queries.recall import LotHop, Trigger, recall_impact
from sinks.rows import RAW_TABLES

__all__ = [
    "CSV_COLUMNS",
    "EvidenceItem",
    "Freshness",
    "Operation",
    "RecallReport",
    "ReportUnit",
    "TestRecord",
    "add_report_routes",
    "build_report",
    "collect_details",
    "evidence_map",
    "measure_freshness",
    "render",
    "render_csv",
    "render_html",
    "render_pdf",
    "MEDIA_TYPES",
]

STATUSES = ("shipped", "in_stock", "in_work")
MEDIA_TYPES = {"csv": "text/csv; charset=utf-8", "html": "text/html; charset=utf-8", "pdf": "application/pdf"}
_CHUNK = 20_000  # uiis per IN-array parameter
APPENDIX_MAX_TESTS = 3_000  # above this the PDF/HTML appendix lists exceptions only (CSV has all)


class _Store(Protocol):
    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]: ...


# ----------------------------------------------------------------------------- data


@dataclass
class TestRecord:
    __test__ = False  # not a pytest class

    uii: str
    finished_at: datetime | None
    verdict: str
    bench_id: str
    procedure_id: str
    procedure_version: str
    calibration_id: str
    calibration_due: datetime | None
    started_at: datetime | None = None
    operator_id: str | None = None

    @property
    def out_of_calibration(self) -> bool:
        """The bench was past its calibration due date when the test ran."""
        return (
            self.calibration_due is not None
            and self.finished_at is not None
            and self.calibration_due < self.finished_at
        )


@dataclass
class Operation:
    uii: str
    work_order: str
    operation: str
    station_id: str
    operator_id: str
    started_at: datetime | None
    finished_at: datetime | None
    consumed_lot_ids: list[str] = field(default_factory=list)
    consumed_uiis: list[str] = field(default_factory=list)


@dataclass
class ReportUnit:
    uii: str
    part_number: str
    holds: str  # "NOW": the part is installed there; "PAST": held it before a removal
    status: str  # shipped | in_stock | in_work
    root_uii: str  # final system
    parent_uii: str | None = None
    path: list[str] = field(default_factory=list)  # current ancestors, parent first, root last
    trace: list[str] = field(default_factory=list)  # from the trigger to this unit
    site: str | None = None
    customer_id: str | None = None
    destination_site: str | None = None
    end_system: str | None = None
    shipment_id: str | None = None
    held_uii: str | None = None  # PAST: what it held (an affected unit or an ancestor of one)
    affected_uii: str | None = None  # PAST: the affected unit the chain leads to
    removed_at: datetime | None = None
    removal_reason: str | None = None
    met_trigger: Operation | None = None  # the operation where the unit met the trigger
    tests: list[TestRecord] = field(default_factory=list)
    operations: list[Operation] = field(default_factory=list)

    @property
    def last_test(self) -> TestRecord | None:
        return self.tests[-1] if self.tests else None

    @property
    def ooc_tests(self) -> int:
        return sum(t.out_of_calibration for t in self.tests)

    @property
    def failed_tests(self) -> int:
        return sum(t.verdict != "PASS" for t in self.tests)


@dataclass
class Freshness:
    latest_event_time: datetime | None  # max event_time over the raw tables
    latest_ingest_time: datetime | None  # max ingest_time (when the sink wrote it)
    per_table: dict[str, datetime | None] = field(default_factory=dict)
    consumer_lag: dict[str, int] | None = None  # {"streams": n, "sink": n} when measured
    lag_note: str | None = None  # why the lag is not given

    @property
    def lag_text(self) -> str:
        if self.consumer_lag is None:
            return f"not measured ({self.lag_note})" if self.lag_note else "not measured"
        total = sum(self.consumer_lag.values())
        parts = ", ".join(f"{k} {v}" for k, v in sorted(self.consumer_lag.items()))
        return f"{total} messages behind ({parts})" if total else f"caught up ({parts})"


@dataclass
class EvidenceItem:
    ref: str  # "AS9100D 8.5.2", "AQAP-2110 ..."
    requirement: str  # paraphrase
    evidence: str  # what this report shows, with its figures
    sources: str  # tables / columns that prove it


@dataclass
class RecallReport:
    document_number: str
    trigger: Trigger
    generated_at: datetime  # aware UTC: when the query ran
    freshness: Freshness
    units: list[ReportUnit]  # NOW holders first, then PAST holders
    by_status: dict[str, int]
    by_customer: dict[str, int]
    by_site: dict[str, int]
    by_customer_status: dict[str, dict[str, int]]  # customer -> status -> units (NOW)
    systems: int  # distinct final systems holding the part now
    lots: list[LotHop] = field(default_factory=list)
    receipts: list[dict[str, Any]] = field(default_factory=list)  # material_received rows in scope
    lot_status: list[dict[str, Any]] = field(default_factory=list)
    nonconformances: list[dict[str, Any]] = field(default_factory=list)
    upstream: list[dict[str, Any]] = field(
        default_factory=list
    )  # lot_transformed rows above the trigger lots
    evidence: list[EvidenceItem] = field(default_factory=list)
    prepared_by: str = ""
    query_seconds: float | None = None
    drill_timings: list[tuple[str, float | None, str]] | None = None  # (step, seconds, note); drill only

    @property
    def now_units(self) -> list[ReportUnit]:
        return [u for u in self.units if u.holds == "NOW"]

    @property
    def past_units(self) -> list[ReportUnit]:
        return [u for u in self.units if u.holds == "PAST"]

    @property
    def is_drill(self) -> bool:
        return self.drill_timings is not None

    @property
    def trigger_text(self) -> str:
        t = self.trigger
        s = f"{t.kind} {t.id}"
        if t.window_start or t.window_end:
            s += f" (window {_ts(t.window_start) or '-inf'} .. {_ts(t.window_end) or '+inf'})"
        return s

    @property
    def test_count(self) -> int:
        return sum(len(u.tests) for u in self.units)

    @property
    def ooc_count(self) -> int:
        return sum(u.ooc_tests for u in self.units)


# ----------------------------------------------------------------------------- building


def _utc(v: Any) -> Any:
    return v.replace(tzinfo=UTC) if isinstance(v, datetime) and v.tzinfo is None else v


def _chunks(items: Sequence[str]) -> Iterable[list[str]]:
    for i in range(0, len(items), _CHUNK):
        yield list(items[i : i + _CHUNK])


def measure_freshness(
    store: _Store, consumer_lag: Mapping[str, int] | None = None, lag_note: str | None = None
) -> Freshness:
    """Latest event_time / ingest_time over the raw tables (one statement)."""
    sql = " UNION ALL ".join(
        f"SELECT '{t}' AS t, count() AS n, max(event_time) AS et, max(ingest_time) AS it FROM {t}"
        for t in RAW_TABLES
    )
    per: dict[str, datetime | None] = {}
    ingest: list[datetime] = []
    for r in store.query(sql):
        if int(r["n"]):
            per[r["t"]] = _utc(r["et"])
            ingest.append(_utc(r["it"]))
        else:
            per[r["t"]] = None
    events = [v for v in per.values() if v is not None]
    return Freshness(
        latest_event_time=max(events) if events else None,
        latest_ingest_time=max(ingest) if ingest else None,
        per_table=dict(sorted(per.items())),
        consumer_lag=dict(consumer_lag) if consumer_lag is not None else None,
        lag_note=lag_note,
    )


def _fetch_tests(store: _Store, uiis: Sequence[str]) -> dict[str, list[TestRecord]]:
    out: dict[str, list[TestRecord]] = {}
    for chunk in _chunks(sorted(set(uiis))):
        rows = store.query(
            "SELECT uii, finished_at, verdict, bench_id, procedure_id, procedure_version, calibration_id,"
            " calibration_due, started_at, operator_id FROM unit_tests WHERE uii IN {u:Array(String)}"
            " ORDER BY uii, finished_at, event_id LIMIT 1 BY event_id",
            {"u": chunk},
        )
        for r in rows:
            out.setdefault(r["uii"], []).append(
                TestRecord(**{k: _utc(v) for k, v in r.items()})  # type: ignore[arg-type]
            )
    for tests in out.values():
        tests.sort(key=lambda t: t.finished_at or datetime.min.replace(tzinfo=UTC))
    return out


def _fetch_operations(store: _Store, uiis: Sequence[str]) -> dict[str, list[Operation]]:
    out: dict[str, list[Operation]] = {}
    for chunk in _chunks(sorted(set(uiis))):
        rows = store.query(
            "SELECT uii, work_order, operation, station_id, operator_id, started_at, finished_at,"
            " consumed_lot_ids, consumed_uiis FROM operations WHERE uii IN {u:Array(String)}"
            " ORDER BY uii, started_at, event_id LIMIT 1 BY event_id",
            {"u": chunk},
        )
        for r in rows:
            r = {k: _utc(v) for k, v in r.items()}
            r["consumed_lot_ids"] = list(r["consumed_lot_ids"])
            r["consumed_uiis"] = list(r["consumed_uiis"])
            out.setdefault(r["uii"], []).append(Operation(**r))
    for ops in out.values():
        ops.sort(key=lambda o: o.started_at or datetime.min.replace(tzinfo=UTC))
    return out


def _in_window(trigger: Trigger, op: Operation) -> bool:
    if trigger.window_start and op.finished_at and op.finished_at < trigger.window_start:
        return False
    return not (trigger.window_end and op.started_at and op.started_at > trigger.window_end)


def _met_trigger(unit: ReportUnit, trigger: Trigger) -> Operation | None:
    """The unit's operation that consumed the previous element of its trace (a lot or a unit),
    or ran at the suspect station / by the suspect operator."""
    if len(unit.trace) < 2:
        return None
    prev = unit.trace[-2]
    kind, _, ident = prev.partition(":")
    for op in unit.operations:
        if kind == "lot" and ident in op.consumed_lot_ids:
            return op
        if kind == "uii" and ident in op.consumed_uiis:
            return op
        if kind == "station" and op.station_id == ident and _in_window(trigger, op):
            return op
        if kind == "operator" and op.operator_id == ident and _in_window(trigger, op):
            return op
    return None


def collect_details(store: _Store, units: list[ReportUnit], trigger: Trigger) -> None:
    """Test histories and production records of the units, in place (two statements per
    20k units)."""
    uiis = [u.uii for u in units]
    tests = _fetch_tests(store, uiis)
    ops = _fetch_operations(store, [u.uii for u in units if u.holds == "NOW"])
    for u in units:
        u.tests = tests.get(u.uii, [])
        u.operations = ops.get(u.uii, [])
        u.met_trigger = _met_trigger(u, trigger)


UPSTREAM_LEVELS = 8  # lot_transformed levels walked up from the trigger lots


def _upstream(store: _Store, lots: Sequence[str]) -> list[dict[str, Any]]:
    """Where the trigger lots came from: their LotTransformed records, level by level."""
    out: list[dict[str, Any]] = []
    seen = set(lots)
    frontier = sorted(seen)
    for _ in range(UPSTREAM_LEVELS):
        if not frontier:
            break
        rows = store.query(
            "SELECT lot_id, part_number, transformation, input_lot_ids, input_quantities, station_id,"
            " event_time FROM lot_transformed WHERE lot_id IN {l:Array(String)}"
            " ORDER BY lot_id, event_time LIMIT 1 BY event_id",
            {"l": frontier},
        )
        nxt = []
        for r in rows:
            r = {k: _utc(v) for k, v in r.items()}
            r["input_lot_ids"] = list(r["input_lot_ids"])
            r["input_quantities"] = list(r["input_quantities"])
            out.append(r)
            for i in r["input_lot_ids"]:
                if i not in seen:
                    seen.add(i)
                    nxt.append(i)
        frontier = sorted(nxt)
    return out


def scope_records(
    store: _Store, trigger: Trigger, lots: Sequence[str], seeds: Sequence[str] = ()
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Receipts, status changes and NCRs of the lots in scope, and the upstream lineage of the
    ``seeds`` (the trigger lots: a lot split from a received reel has its receipt upstream)."""
    upstream = _upstream(store, seeds) if seeds else []
    every = sorted(
        set(lots) | {i for u in upstream for i in u["input_lot_ids"]} | {u["lot_id"] for u in upstream}
    )
    receipts: list[dict[str, Any]] = []
    status: list[dict[str, Any]] = []
    if every:
        receipts = store.query(
            "SELECT lot_id, part_number, supplier_id, supplier_lot, quantity, unit_of_measure, coc_reference,"
            " inspection_result, event_time FROM material_received WHERE lot_id IN {l:Array(String)}"
            " ORDER BY lot_id, event_time LIMIT 1 BY event_id",
            {"l": every},
        )
        status = store.query(
            "SELECT lot_id, status, reason, event_time FROM lot_status WHERE lot_id IN {l:Array(String)}"
            " ORDER BY lot_id, event_time, event_id LIMIT 1 BY event_id",
            {"l": every},
        )
    ncrs = store.query(
        "SELECT ncr_id, target_kind, target_id, severity, disposition, description, event_time,"
        " window_start, window_end FROM nonconformances"
        " WHERE (target_kind = {k:String} AND target_id = {i:String})"
        " OR (target_kind = 'LOT' AND target_id IN {l:Array(String)})"
        " ORDER BY event_time, event_id LIMIT 1 BY event_id",
        {"k": trigger.kind.upper(), "i": trigger.id, "l": every},
    )
    fix = [[{k: _utc(v) for k, v in r.items()} for r in rows] for rows in (receipts, status, ncrs)]
    return fix[0], fix[1], fix[2], upstream


def _document_number(trigger: Trigger, at: datetime, drill: bool) -> str:
    h = hashlib.sha1(
        f"{trigger.kind}\0{trigger.id}\0{trigger.window_start}\0{trigger.window_end}\0{at.isoformat()}".encode()
    ).hexdigest()[:6]
    return f"{'RD' if drill else 'RR'}-{at:%Y%m%d-%H%M%S}-{h.upper()}"


def units_from_impact(impact: Any) -> list[ReportUnit]:
    units = [
        ReportUnit(
            uii=u.uii,
            part_number=u.part_number,
            holds="NOW",
            status=u.status,
            root_uii=u.root_uii,
            parent_uii=u.parent_uii,
            path=list(u.path),
            trace=list(u.trace),
            site=u.site,
            customer_id=u.customer_id,
            destination_site=u.destination_site,
            end_system=u.end_system,
            shipment_id=u.shipment_id,
        )
        for u in impact.units
    ]
    units += [
        ReportUnit(
            uii=p.uii,
            part_number=p.uii.split(":", 1)[0],
            holds="PAST",
            status=p.status,
            root_uii=p.root_uii,
            customer_id=p.customer_id,
            held_uii=p.child_uii,
            affected_uii=p.affected_uii,
            removed_at=_utc(p.removed_at),
            removal_reason=p.removal_reason,
        )
        for p in impact.past
    ]
    return units


def assemble_report(
    impact: Any,
    freshness: Freshness,
    *,
    generated_at: datetime,
    units: list[ReportUnit],
    receipts: list[dict[str, Any]] | None = None,
    lot_status: list[dict[str, Any]] | None = None,
    nonconformances: list[dict[str, Any]] | None = None,
    upstream: list[dict[str, Any]] | None = None,
    prepared_by: str = "",
    drill: bool = False,
    query_seconds: float | None = None,
) -> RecallReport:
    now = [u for u in units if u.holds == "NOW"]
    cross: dict[str, dict[str, int]] = {}
    for u in now:
        row = cross.setdefault(u.customer_id or "(not shipped)", {})
        row[u.status] = row.get(u.status, 0) + 1
    report = RecallReport(
        document_number=_document_number(impact.trigger, generated_at, drill),
        trigger=impact.trigger,
        generated_at=generated_at,
        freshness=freshness,
        units=units,
        by_status=dict(impact.by_status),
        by_customer=dict(impact.by_customer),
        by_site=dict(impact.by_site),
        by_customer_status=dict(sorted(cross.items())),
        systems=len(impact.systems),
        lots=list(impact.lots),
        receipts=receipts or [],
        lot_status=lot_status or [],
        nonconformances=nonconformances or [],
        upstream=upstream or [],
        prepared_by=prepared_by,
        query_seconds=query_seconds,
        drill_timings=[] if drill else None,
    )
    report.evidence = evidence_map(report)
    return report


def build_report(
    store: _Store,
    trigger: Trigger,
    *,
    freshness: Freshness | Mapping[str, int] | None = None,
    prepared_by: str = "",
) -> RecallReport:
    """Run the recall for ``trigger`` and gather everything the report shows.

    ``freshness``: a measured :class:`Freshness`, or the consumer lag (``{"streams": n,
    "sink": n}``) to put beside the latest event time read from the store, or None."""
    import time

    generated_at = datetime.now(UTC)
    t0 = time.perf_counter()
    impact = recall_impact(store, trigger)
    units = units_from_impact(impact)
    collect_details(store, units, trigger)
    receipts, status, ncrs, upstream = scope_records(
        store, trigger, [h.lot_id for h in impact.lots], [h.lot_id for h in impact.lots if h.depth == 0]
    )
    if not isinstance(freshness, Freshness):
        freshness = measure_freshness(
            store, freshness, None if freshness is not None else "no Kafka lag measurement supplied"
        )
    return assemble_report(
        impact,
        freshness,
        generated_at=generated_at,
        units=units,
        receipts=receipts,
        lot_status=status,
        nonconformances=ncrs,
        upstream=upstream,
        prepared_by=prepared_by,
        query_seconds=time.perf_counter() - t0,
    )


# ----------------------------------------------------------------------------- evidence map


def evidence_map(r: RecallReport) -> list[EvidenceItem]:
    """AS9100D 8.5.2 and AQAP-2110 traceability points, each with the figures of this report and
    the tables / columns (docs/TABLES.md) that hold the records."""
    now, past = r.now_units, r.past_units
    shipped = [u for u in now if u.status == "shipped"]
    customers = {u.customer_id for u in shipped if u.customer_id}
    ops = sum(len(u.operations) for u in now)
    met = sum(u.met_trigger is not None for u in now)
    lots = len(r.lots)
    return [
        EvidenceItem(
            "AS9100D 8.5.2",
            "Identify outputs; control the unique identification of outputs when traceability is a "
            "requirement (identification maintained throughout the product life).",
            f"Each of the {len(now)} affected units and {len(past)} past holders is identified by its UII "
            "(part number + serial number, so equal serials under different part numbers never collide), "
            "the same key from the operation that created it through test, assembly and shipment.",
            "operations.uii / part_number / serial_number (creates_unit = 1); unit_tests.uii; "
            "assembly_events.uii, parent_uii; shipments.uii; unit_genealogy.uii",
        ),
        EvidenceItem(
            "AS9100D 8.5.2",
            "Identify the status of outputs with respect to monitoring and measurement requirements.",
            f"Each unit carries its recall status ({_kv(r.by_status) or 'none'}) "
            f"and its test record: {r.test_count} tests with verdict, bench, procedure and version, "
            f"calibration record and due date; {r.ooc_count} ran on a bench past its calibration due date "
            "and are marked OUT OF CALIBRATION.",
            "unit_tests.verdict, bench_id, procedure_id, procedure_version, calibration_id, calibration_due, "
            "started_at, finished_at; shipments (status shipped)",
        ),
        EvidenceItem(
            "AS9100D 8.5.2 (traceability)",
            "Trace all products made from the same batch of raw material or manufacturing batch, and the "
            "destination (delivery, scrap) of all products of that batch.",
            f"{lots} lot(s) in scope (the trigger and every lot split, merged or processed from it); "
            f"{len(now)} units consumed them directly or through serialised parts; {len(shipped)} are "
            f"shipped to {len(customers)} customer(s), listed with shipment, destination site and end "
            "system; "
            f"lot status changes (hold, quarantine, scrap) are listed.",
            "lot_lineage.input_lot_id -> output_lot_id, transformation; lot_consumption.lot_id -> uii; "
            "unit_consumption.consumed_uii -> consumer_uii; shipments.customer_id, destination_site, "
            "end_system, shipment_id; lot_status.status",
        ),
        EvidenceItem(
            "AS9100D 8.5.2 (traceability)",
            "For an assembly, trace its components to the assembly and then to the next higher assembly.",
            f"Each unit's current parent and its path up to the final system ({r.systems} final systems hold "
            f"an affected part now); {len(past)} assemblies that held an affected part before a removal "
            "(rework) are listed as PAST holders with removal date and reason.",
            "unit_genealogy.parent_uii, root_uii, path (latest seq per uii); assembly_events.action "
            "(ASSEMBLED / REMOVED), parent_uii, position, reason; root_members",
        ),
        EvidenceItem(
            "AS9100D 8.5.2 (traceability)",
            "For a product, a sequential record of its production (manufacturing, assembly, "
            "inspection / verification) to be retrievable.",
            f"{ops} operations of the affected units with work order, operation, station, operator and "
            f"times; for {met} units the operation where they met the trigger is shown; the full "
            "record per unit is in the CSV (production_record, test_history) and from "
            "`traceline trace backward --serial <UII>`.",
            "operations.work_order, operation, station_id, operator_id, started_at, finished_at; "
            "unit_tests; assembly_events",
        ),
        EvidenceItem(
            "AS9100D 8.5.2",
            "Retain the documented information necessary to enable traceability.",
            "Records are immutable events, each with a unique event_id and its Kafka position; this "
            f"report states its data cut-off (latest event {_ts(r.freshness.latest_event_time) or 'none'}, "
            f"consumer lag {r.freshness.lag_text}).",
            "every raw table: event_id, event_time, ingest_time, kafka_topic, kafka_partition, kafka_offset",
        ),
        EvidenceItem(
            "AQAP-2110 (traceability)",
            "Identification and traceability to the extent the contract requires, with the records "
            "available to the acquirer and the Government Quality Assurance Representative (GQAR).",
            "This report, its CSV and the underlying SQL tables are produced on demand from the retained "
            "records, under a document number, with signature lines for release.",
            "docs/TABLES.md (all tables); programme column on every raw table (need-to-know separation)",
        ),
        EvidenceItem(
            "AQAP-2110 (material origin)",
            "Traceability of material to its source (supplier, supplier lot, certificate of conformance).",
            f"{len(r.receipts)} material receipt(s) in scope (the lots and, for a lot made from others, "
            f"the {len(r.upstream)} upstream transformation(s) back to the received lots) with supplier lot, "
            "CoC reference and incoming inspection result.",
            "material_received.supplier_id, supplier_lot, coc_reference, inspection_result, quantity; "
            "lot_transformed.lot_id, input_lot_ids, transformation",
        ),
        EvidenceItem(
            "AQAP-2110 (nonconforming output)",
            "Nonconforming product identified and controlled; disposition recorded.",
            f"{len(r.nonconformances)} nonconformance report(s) on the trigger or the lots in scope, with "
            "severity and disposition.",
            "nonconformances.ncr_id, target_kind, target_id, severity, disposition; lot_status",
        ),
    ]


# ----------------------------------------------------------------------------- formatting helpers


def _n(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _kv(d: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items())


def _ts(v: datetime | None) -> str:
    if v is None:
        return ""
    return _utc(v).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _day(v: datetime | None) -> str:
    return "" if v is None else _utc(v).astimezone(UTC).strftime("%Y-%m-%d %H:%M")


def _test_text(t: TestRecord) -> str:
    s = f"{_day(t.finished_at)} {t.verdict} {t.bench_id} {t.procedure_id} {t.procedure_version}"
    s += f" cal {t.calibration_id}"
    return s + (" OUT-OF-CALIBRATION" if t.out_of_calibration else "")


def _op_text(o: Operation) -> str:
    return f"{_day(o.started_at)} {o.work_order} {o.operation} @{o.station_id} by {o.operator_id}"


def _trace_text(u: ReportUnit) -> str:
    if u.holds == "PAST":
        return (
            f"held {u.held_uii} (leads to {u.affected_uii}) until {_day(u.removed_at)}"
            f"{f' ({u.removal_reason})' if u.removal_reason else ''}"
        )
    return " > ".join(u.trace)


def _inputs_text(x: Mapping[str, Any]) -> str:
    return ", ".join(f"{i} ({q:g})" for i, q in zip(x["input_lot_ids"], x["input_quantities"], strict=False))


def _route_text(u: ReportUnit) -> str:
    """The trace without the unit itself (it has its own column)."""
    if u.holds == "PAST" or not u.trace:
        return _trace_text(u)
    trace = u.trace[:-1] if u.trace[-1] == f"uii:{u.uii}" else u.trace
    return "from " + " > ".join(trace)


def _destination(u: ReportUnit) -> str:
    return " / ".join(x for x in (u.customer_id, u.destination_site, u.end_system) if x)


# ----------------------------------------------------------------------------- CSV

CSV_COLUMNS = [
    "document_number",
    "holds",
    "uii",
    "part_number",
    "status",
    "final_system",
    "parent_uii",
    "current_path",
    "path_from_trigger",
    "site",
    "customer_id",
    "destination_site",
    "end_system",
    "shipment_id",
    "met_trigger_at",
    "met_work_order",
    "met_operation",
    "met_station",
    "met_operator",
    "tests",
    "failed_tests",
    "out_of_calibration_tests",
    "last_test_at",
    "last_verdict",
    "last_bench",
    "last_procedure",
    "test_history",
    "production_record",
]


def _csv_safe(v: Any) -> str:
    """Neutralise spreadsheet formulas (CSV injection): a text cell starting with = + - @ or a
    control character gets a leading apostrophe."""
    s = "" if v is None else str(v)
    if s and s[0] in "=+-@\t\r":
        try:
            float(s)
        except ValueError:
            return "'" + s
    return s


def render_csv(report: RecallReport) -> str:
    """One row per unit (NOW holders, then PAST holders), every test and operation in columns."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(CSV_COLUMNS)
    for u in report.units:
        last = u.last_test
        m = u.met_trigger
        row = [
            report.document_number,
            u.holds.lower(),
            u.uii,
            u.part_number,
            u.status,
            u.root_uii,
            u.parent_uii,
            " > ".join(u.path),
            _trace_text(u),
            u.site,
            u.customer_id,
            u.destination_site,
            u.end_system,
            u.shipment_id,
            m.started_at.isoformat() if m and m.started_at else "",
            m.work_order if m else "",
            m.operation if m else "",
            m.station_id if m else "",
            m.operator_id if m else "",
            len(u.tests),
            u.failed_tests,
            u.ooc_tests,
            last.finished_at.isoformat() if last and last.finished_at else "",
            last.verdict if last else "",
            last.bench_id if last else "",
            f"{last.procedure_id} {last.procedure_version}" if last else "",
            "; ".join(_test_text(t) for t in u.tests),
            "; ".join(_op_text(o) for o in u.operations),
        ]
        w.writerow([_csv_safe(c) for c in row])
    return buf.getvalue()


# ----------------------------------------------------------------------------- HTML

_CSS = """
@page { size: A4 landscape; margin: 14mm 12mm; }
body {
  font: 10pt/1.35 "Helvetica Neue", Arial, sans-serif;
  color: #111;
  margin: 0 auto;
  max-width: 1400px;
  padding: 16px;
}
h1 { font-size: 18pt; margin: 0 0 4px;}
h2 { font-size: 13pt; margin: 22px 0 6px; border-bottom: 1.5px solid #1f3a5f; color: #1f3a5f;}
table { border-collapse: collapse; width: 100%; margin: 4px 0 8px; }
th, td { border: 0.6px solid #9aa4b1; padding: 3px 5px; text-align: left; vertical-align: top; }
th { background: #e6ebf2; } thead { display: table-header-group; } tr { page-break-inside: avoid; }
td.num, th.num { text-align: right;}
.small { font-size: 8pt; color: #444;}
.mono { font-family: Menlo, Consolas, monospace; font-size: 8.5pt;}
.meta th { width: 22%;}
.sig td { height: 34px;}
.banner { background: #b00020; color: #fff; font-weight: bold; padding: 8px 12px; margin: 8px 0;}
.ooc { color: #b00020; font-weight: bold; } .past { background: #fff6e0; } .bad { color: #b00020; }
.units td { font-size: 8.5pt; } .note { font-size: 8.5pt; color: #444; }
@media print { body { padding: 0; max-width: none; } h2 { page-break-after: avoid; } }
"""


def _e(v: Any) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def _table(head: Sequence[str], rows: Iterable[Sequence[Any]], cls: str = "", num: Sequence[int] = ()) -> str:
    th = "".join(
        f'<th class="num">{_e(h)}</th>' if i in num else f"<th>{_e(h)}</th>" for i, h in enumerate(head)
    )
    body = []
    for row in rows:
        tds = "".join(
            f'<td class="num">{_e(c)}</td>' if i in num else f"<td>{_e(c)}</td>" for i, c in enumerate(row)
        )
        body.append(f"<tr>{tds}</tr>")
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _crosstab(r: RecallReport) -> tuple[list[str], list[list[Any]]]:
    statuses = [s for s in STATUSES if any(s in v for v in r.by_customer_status.values())]
    statuses += sorted({s for v in r.by_customer_status.values() for s in v} - set(statuses))
    rows = [[c, *(v.get(s, 0) for s in statuses), sum(v.values())] for c, v in r.by_customer_status.items()]
    rows.append(["Total", *(r.by_status.get(s, 0) for s in statuses), len(r.now_units)])
    return ["customer", *statuses, "total"], rows


def _timing_rows(r: RecallReport) -> list[list[str]]:
    return [
        [step, "" if s is None else f"{s * 1000:.1f} ms", note] for step, s, note in r.drill_timings or []
    ]


def _appendix_tests(r: RecallReport) -> tuple[str, list[tuple[ReportUnit, TestRecord]]]:
    every = [(u, t) for u in r.units for t in u.tests]
    if len(every) <= APPENDIX_MAX_TESTS:
        return f"all {len(every)} tests of the listed units", every
    exc = [(u, t) for u, t in every if t.verdict != "PASS" or t.out_of_calibration]
    return (
        f"{len(every)} tests: too many to print, listed here are the {len(exc)} exceptions "
        "(FAIL / ABORTED / out of calibration); the CSV holds the full history",
        exc,
    )


def render_html(report: RecallReport) -> str:
    """The report as one self-contained, printable HTML page (no external assets)."""
    r = report
    f = r.freshness
    title = "Recall drill report" if r.is_drill else "Recall report"
    parts: list[str] = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        f"<title>{_e(title)} {_e(r.document_number)}</title><style>{_CSS}</style></head><body>",
    ]
    if r.is_drill:
        parts.append(
            '<div class="banner">RECALL DRILL: a mock recall run as if the trigger were nonconforming. '
            "No product action is required.</div>"
        )
    parts.append(f"<h1>{_e(title)}: {_e(r.trigger_text)}</h1>")
    meta = [
        ("Document number", r.document_number),
        ("Trigger", r.trigger_text),
        ("Query ran at", _ts(r.generated_at)),
        ("Data current to (latest event time)", _ts(f.latest_event_time) or "no events"),
        ("Latest ingest time", _ts(f.latest_ingest_time) or "-"),
        ("Consumer lag", f.lag_text),
        (
            "Scope",
            f"{len(r.now_units)} units hold the part now, {len(r.past_units)} held it in the past; "
            f"{_n(r.systems, 'final system')}; {_n(len(r.lots), 'lot')}",
        ),
    ]
    parts.append(
        '<table class="meta">'
        + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in meta)
        + "</table>"
    )
    parts.append(
        _table(
            ["role", "name", "signature", "date"],
            [
                ["Prepared by", r.prepared_by, "", ""],
                ["Reviewed by (quality)", "", "", ""],
                ["Approved by", "", "", ""],
            ],
            cls="sig",
        )
    )
    # 1 summary
    parts.append("<h2>1. Totals</h2>")
    head, rows = _crosstab(r)
    parts.append("<p class=note>Units holding the part now, by customer and status.</p>")
    parts.append(_table(head, rows, num=range(1, len(head))))
    parts.append(_table(["site", "units"], list(r.by_site.items()), num=(1,)))
    if r.is_drill:
        parts.append("<h2>Recall drill: step timings</h2>")
        parts.append(_table(["step", "time", "note"], _timing_rows(r), num=(1,)))
    # 2 scope
    parts.append("<h2>2. Scope: lots, receipts, status, nonconformances</h2>")
    if r.lots:
        parts.append(
            _table(
                ["lot", "made from", "transformation", "depth"],
                [
                    [h.lot_id, h.from_lot_id or "(named by trigger)", h.transformation or "", h.depth]
                    for h in r.lots
                ],
                num=(3,),
            )
        )
    if r.upstream:
        parts.append("<p class=note>Origin of the trigger lot(s): the transformations they were made by.</p>")
        parts.append(
            _table(
                ["lot", "part", "made by", "from lots (quantity)", "station", "time"],
                [
                    [
                        x["lot_id"],
                        x["part_number"],
                        x["transformation"],
                        _inputs_text(x),
                        x["station_id"] or "",
                        _ts(x["event_time"]),
                    ]
                    for x in r.upstream
                ],
            )
        )
    if r.receipts:
        parts.append(
            _table(
                ["lot", "part", "supplier", "supplier lot", "qty", "CoC", "inspection", "received"],
                [
                    [
                        x["lot_id"],
                        x["part_number"],
                        x["supplier_id"],
                        x["supplier_lot"],
                        f"{x['quantity']:g} {x['unit_of_measure']}",
                        x["coc_reference"] or "",
                        x["inspection_result"],
                        _ts(x["event_time"]),
                    ]
                    for x in r.receipts
                ],
            )
        )
    if r.lot_status:
        parts.append(
            _table(
                ["lot", "status", "reason", "time"],
                [[x["lot_id"], x["status"], x["reason"], _ts(x["event_time"])] for x in r.lot_status],
            )
        )
    parts.append(
        _table(
            ["NCR", "target", "severity", "disposition", "description", "raised"],
            [
                [
                    x["ncr_id"],
                    f"{x['target_kind']} {x['target_id']}",
                    x["severity"],
                    x["disposition"],
                    x["description"],
                    _ts(x["event_time"]),
                ]
                for x in r.nonconformances
            ]
            or [["(none recorded)", "", "", "", "", ""]],
        )
    )
    # 3 units
    parts.append(f"<h2>3. Affected units ({len(r.now_units)} now, {len(r.past_units)} past)</h2>")
    parts.append(
        '<table class="units"><thead><tr><th class=num>#</th><th>UII</th><th>holds</th><th>status</th>'
        "<th>final system / current path</th><th>customer / destination / end system</th><th>site</th>"
        "<th>met trigger (work order, operation, station, operator)</th><th>path from trigger</th>"
        "<th>tests</th></tr></thead><tbody>"
    )
    for i, u in enumerate(r.units, 1):
        m = u.met_trigger
        last = u.last_test
        tests = (
            f"{len(u.tests)}: last {_e(last.verdict)} {_e(_day(last.finished_at))} {_e(last.bench_id)}"
            if last
            else "none"
        )
        if u.failed_tests:
            tests += f' <span class="bad">({u.failed_tests} not PASS)</span>'
        if u.ooc_tests:
            tests += f' <span class="ooc">{u.ooc_tests} OUT OF CAL</span>'
        parts.append(
            f'<tr class="{"past" if u.holds == "PAST" else ""}"><td class=num>{i}</td>'
            f"<td class=mono>{_e(u.uii)}</td><td>{_e(u.holds)}</td><td>{_e(u.status)}</td>"
            f"<td class=mono>{_e(u.root_uii)}<br><span class=small>{_e(' > '.join(u.path))}</span></td>"
            f"<td>{_e(_destination(u))}</td><td>{_e(u.site)}</td>"
            f"<td>{_e(_op_text(m)) if m else ''}</td><td class=small>{_e(_trace_text(u))}</td>"
            f"<td>{tests}</td></tr>"
        )
    parts.append("</tbody></table>")
    # 4 evidence
    parts.append("<h2>4. Evidence: AS9100D 8.5.2 and AQAP-2110 identification and traceability</h2>")
    parts.append(
        "<p class=note>Requirements are paraphrased; the standards' own text governs. Source tables "
        "are described in docs/TABLES.md.</p>"
    )
    parts.append(
        _table(
            ["clause", "requirement", "evidence in this report", "records (table.column)"],
            [[x.ref, x.requirement, x.evidence, x.sources] for x in r.evidence],
        )
    )
    # 5 data freshness
    parts.append("<h2>5. Data freshness</h2>")
    parts.append(
        _table(
            ["table", "latest event time"],
            [[t, _ts(v) or "(empty)"] for t, v in f.per_table.items()] + [["consumer lag", f.lag_text]],
        )
    )
    # appendix
    label, appendix = _appendix_tests(r)
    parts.append(f"<h2>Appendix A. Test history ({_e(label)})</h2>")
    parts.append(
        _table(
            [
                "UII",
                "finished",
                "verdict",
                "bench",
                "procedure",
                "operator",
                "calibration",
                "cal. due",
                "flag",
            ],
            [
                [
                    u.uii,
                    _ts(t.finished_at),
                    t.verdict,
                    t.bench_id,
                    f"{t.procedure_id} {t.procedure_version}",
                    t.operator_id or "",
                    t.calibration_id,
                    _ts(t.calibration_due),
                    "OUT OF CALIBRATION" if t.out_of_calibration else "",
                ]
                for u, t in appendix
            ],
            cls="units",
        )
    )
    parts.append(
        f"<p class=note>{_e(r.document_number)}: generated by traceline at {_e(_ts(r.generated_at))}."
        " End of document.</p>"
    )
    parts.append("</body></html>")
    return "\n".join(parts)


# ----------------------------------------------------------------------------- PDF (reportlab)

_PDF_UNIT_CHUNK = 150  # rows per Table flowable (a huge single Table splits slowly)


def render_pdf(report: RecallReport, path: str | Path | IO[bytes]) -> None:
    """A signable PDF (A4 landscape) at ``path`` (a file path or a binary file object)."""
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4, landscape
    from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
    from reportlab.lib.units import mm
    from reportlab.pdfgen import canvas as rl_canvas
    from reportlab.platypus import (
        CondPageBreak,
        KeepTogether,
        PageBreak,
        Paragraph,
        SimpleDocTemplate,
        Spacer,
        Table,
        TableStyle,
    )

    r = report
    f = r.freshness
    page_w, page_h = landscape(A4)
    margin = 14 * mm
    width = page_w - 2 * margin
    navy = colors.HexColor("#1f3a5f")
    grid = colors.HexColor("#9aa4b1")
    head_bg = colors.HexColor("#e6ebf2")
    red = colors.HexColor("#b00020")
    title = "Recall drill report" if r.is_drill else "Recall report"

    ss = getSampleStyleSheet()
    body = ParagraphStyle(
        "body",
        parent=ss["BodyText"],
        fontName="Helvetica",
        fontSize=8.5,
        leading=10.5,
        spaceBefore=0,
        spaceAfter=0,
    )
    small = ParagraphStyle("small", parent=body, fontSize=7, leading=8.5)
    cell = ParagraphStyle("cell", parent=body, fontSize=7.5, leading=9)
    cell_b = ParagraphStyle("cellb", parent=cell, fontName="Helvetica-Bold")
    mono = ParagraphStyle("mono", parent=cell, fontName="Courier", fontSize=7.2)
    h1 = ParagraphStyle(
        "h1", parent=ss["Title"], fontName="Helvetica-Bold", fontSize=18, leading=22, alignment=0
    )
    h2 = ParagraphStyle(
        "h2",
        parent=ss["Heading2"],
        fontName="Helvetica-Bold",
        fontSize=12,
        leading=15,
        textColor=navy,
        spaceBefore=10,
        spaceAfter=4,
        keepWithNext=1,
    )
    banner = ParagraphStyle(
        "banner", parent=body, fontName="Helvetica-Bold", fontSize=10, textColor=colors.white
    )

    def p(text: Any, style: ParagraphStyle = cell) -> Paragraph:
        return Paragraph(html.escape("" if text is None else str(text)), style)

    def table(
        data: list[list[Any]],
        widths: Sequence[float],
        *,
        repeat: int = 1,
        extra: Sequence[Any] = (),
        heights: Sequence[float | None] | None = None,
    ) -> Table:
        t = Table(data, colWidths=list(widths), rowHeights=heights, repeatRows=repeat, hAlign="LEFT")
        t.setStyle(
            TableStyle(
                [
                    ("GRID", (0, 0), (-1, -1), 0.4, grid),
                    ("FONTSIZE", (0, 0), (-1, -1), 7.5),
                    ("BACKGROUND", (0, 0), (-1, repeat - 1), head_bg),
                    ("VALIGN", (0, 0), (-1, -1), "TOP"),
                    ("LEFTPADDING", (0, 0), (-1, -1), 3),
                    ("RIGHTPADDING", (0, 0), (-1, -1), 3),
                    ("TOPPADDING", (0, 0), (-1, -1), 2),
                    ("BOTTOMPADDING", (0, 0), (-1, -1), 2),
                    *extra,
                ]
            )
        )
        return t

    def hdr(cols: Sequence[str]) -> list[Paragraph]:
        return [p(c, cell_b) for c in cols]

    story: list[Any] = []
    if r.is_drill:
        b = Table(
            [
                [
                    p(
                        "RECALL DRILL: a mock recall run as if the trigger were nonconforming. "
                        "No product action is required.",
                        banner,
                    )
                ]
            ],
            colWidths=[width],
        )
        b.setStyle(
            TableStyle(
                [
                    ("BACKGROUND", (0, 0), (-1, -1), red),
                    ("TOPPADDING", (0, 0), (-1, -1), 5),
                    ("BOTTOMPADDING", (0, 0), (-1, -1), 5),
                ]
            )
        )
        story += [b, Spacer(0, 4 * mm)]
    story.append(Paragraph(html.escape(f"{title}: {r.trigger_text}"), h1))
    story.append(Spacer(0, 2 * mm))
    meta = [
        ("Document number", r.document_number),
        ("Trigger", r.trigger_text),
        ("Query ran at", _ts(r.generated_at)),
        (
            "Data current to",
            f"latest event time {_ts(f.latest_event_time) or 'none'}; latest ingest "
            f"{_ts(f.latest_ingest_time) or '-'}",
        ),
        ("Consumer lag", f.lag_text),
        (
            "Scope",
            f"{len(r.now_units)} units hold the part now; {len(r.past_units)} held it in the past; "
            f"{_n(r.systems, 'final system')}; {_n(len(r.lots), 'lot')}; {r.test_count} tests "
            f"({r.ooc_count} out of calibration)",
        ),
    ]
    story.append(
        table(
            [[p(k, cell_b), p(v, body)] for k, v in meta],
            [55 * mm, width - 55 * mm],
            repeat=0,
            extra=[("BACKGROUND", (0, 0), (0, -1), head_bg)],
        )
    )
    story.append(Spacer(0, 4 * mm))
    sig_rows = [hdr(["Role", "Name", "Signature", "Date"])]
    for role, name in (("Prepared by", r.prepared_by), ("Reviewed by (quality)", ""), ("Approved by", "")):
        sig_rows.append([p(role, cell_b), p(name, body), "", ""])
    sig = table(
        sig_rows,
        [50 * mm, 70 * mm, width - 160 * mm, 40 * mm],
        heights=[None] + [13 * mm] * 3,
        extra=[("VALIGN", (0, 1), (-1, -1), "MIDDLE")],
    )
    story.append(KeepTogether([sig]))

    # 1 totals
    story.append(Paragraph("1. Totals", h2))
    head, rows = _crosstab(r)
    n = len(head)
    first = 60 * mm
    other = min(30 * mm, (width - first) / max(n - 1, 1))
    cross = [hdr(head)] + [
        [p(row[0], cell_b if row[0] == "Total" else cell)] + [str(v) for v in row[1:]] for row in rows
    ]
    story.append(Paragraph("Units that hold the part now, by customer and status.", small))
    story.append(
        table(
            cross,
            [first] + [other] * (n - 1),
            extra=[
                ("ALIGN", (1, 1), (-1, -1), "RIGHT"),
                ("FONTSIZE", (1, 1), (-1, -1), 8),
                ("BACKGROUND", (0, -1), (-1, -1), head_bg),
                ("FONTNAME", (1, -1), (-1, -1), "Helvetica-Bold"),
            ],
        )
    )
    story.append(Spacer(0, 2 * mm))
    story.append(
        Paragraph(
            "By site: the destination site of shipped units, else the plant where the unit met the trigger.",
            small,
        )
    )
    sites = [hdr(["site", "units"])] + [[p(k), str(v)] for k, v in r.by_site.items()]
    story.append(
        table(
            sites,
            [first, other],
            extra=[("ALIGN", (1, 1), (-1, -1), "RIGHT"), ("FONTSIZE", (1, 1), (-1, -1), 8)],
        )
    )
    if r.is_drill:
        story.append(Paragraph("Recall drill: step timings", h2))
        trows = [hdr(["step", "time", "note"])] + [[p(a), p(b), p(c)] for a, b, c in _timing_rows(r)]
        story.append(
            table(trows, [70 * mm, 30 * mm, width - 100 * mm], extra=[("ALIGN", (1, 1), (1, -1), "RIGHT")])
        )

    # 2 scope
    story.append(CondPageBreak(40 * mm))
    story.append(Paragraph("2. Scope: lots, receipts, status, nonconformances", h2))
    if r.lots:
        lrows = [hdr(["lot", "made from", "transformation", "depth"])] + [
            [
                p(h.lot_id, mono),
                p(h.from_lot_id or "(named by trigger)", mono),
                p(h.transformation or ""),
                str(h.depth),
            ]
            for h in r.lots
        ]
        story.append(table(lrows, [50 * mm, 50 * mm, 40 * mm, 20 * mm]))
        story.append(Spacer(0, 2 * mm))
    if r.upstream:
        story.append(Paragraph("Origin of the trigger lot(s): the transformations they were made by.", small))
        orows = [hdr(["lot", "part", "made by", "from lots (quantity)", "station", "time"])] + [
            [
                p(x["lot_id"], mono),
                p(x["part_number"]),
                p(x["transformation"]),
                p(_inputs_text(x), mono),
                p(x["station_id"] or ""),
                p(_ts(x["event_time"])),
            ]
            for x in r.upstream
        ]
        story.append(table(orows, [36 * mm, 40 * mm, 24 * mm, width - 190 * mm, 40 * mm, 50 * mm]))
        story.append(Spacer(0, 2 * mm))
    if r.receipts:
        rrows = [
            hdr(["lot", "part", "supplier", "supplier lot", "quantity", "CoC", "inspection", "received"])
        ] + [
            [
                p(x["lot_id"], mono),
                p(x["part_number"]),
                p(x["supplier_id"]),
                p(x["supplier_lot"]),
                p(f"{x['quantity']:g} {x['unit_of_measure']}"),
                p(x["coc_reference"] or ""),
                p(x["inspection_result"]),
                p(_ts(x["event_time"])),
            ]
            for x in r.receipts
        ]
        story.append(
            table(rrows, [32 * mm, 36 * mm, 32 * mm, 32 * mm, 24 * mm, 36 * mm, 28 * mm, width - 220 * mm])
        )
        story.append(Spacer(0, 2 * mm))
    if r.lot_status:
        srows = [hdr(["lot", "status", "reason", "time"])] + [
            [p(x["lot_id"], mono), p(x["status"]), p(x["reason"]), p(_ts(x["event_time"]))]
            for x in r.lot_status
        ]
        story.append(table(srows, [40 * mm, 30 * mm, width - 120 * mm, 50 * mm]))
        story.append(Spacer(0, 2 * mm))
    nrows = [hdr(["NCR", "target", "severity", "disposition", "description", "raised"])] + (
        [
            [
                p(x["ncr_id"], mono),
                p(f"{x['target_kind']} {x['target_id']}"),
                p(x["severity"]),
                p(x["disposition"]),
                p(x["description"]),
                p(_ts(x["event_time"])),
            ]
            for x in r.nonconformances
        ]
        or [[p("no nonconformance report recorded on the trigger or the lots in scope"), "", "", "", "", ""]]
    )
    story.append(
        table(
            nrows,
            [34 * mm, 50 * mm, 22 * mm, 30 * mm, width - 181 * mm, 45 * mm],
            extra=[] if r.nonconformances else [("SPAN", (0, 1), (-1, 1))],
        )
    )

    # 3 units
    story.append(PageBreak())
    story.append(
        Paragraph(
            f"3. Affected units ({len(r.now_units)} hold the part now, "
            f"{len(r.past_units)} held it in the past)",
            h2,
        )
    )
    story.append(
        Paragraph(
            "NOW: the suspect part is installed in this unit. PAST: the unit held it (or an assembly "
            "containing it) before a removal. Tests: count, last verdict and date; OUT OF CAL = run on a "
            "bench past its calibration due date. "
            "Full histories: Appendix A and the CSV.",
            small,
        )
    )
    story.append(Spacer(0, 1.5 * mm))
    ucols = [
        "#",
        "UII",
        "holds",
        "status",
        "final system",
        "path from trigger / current assembly path",
        "customer / destination / end system",
        "site",
        "met trigger: work order, operation, station, operator",
        "tests",
    ]
    uw = [8 * mm, 34 * mm, 11 * mm, 14 * mm, 32 * mm, 0.0, 36 * mm, 15 * mm, 50 * mm, 24 * mm]
    uw[5] = width - sum(uw)
    urows: list[list[Any]] = []
    past_rows: list[int] = []
    for i, u in enumerate(r.units, 1):
        m = u.met_trigger
        last = u.last_test
        tparas = [p(f"{len(u.tests)} test{'s' if len(u.tests) != 1 else ''}")]
        if last:
            tparas.append(p(f"last {last.verdict} {_day(last.finished_at)}", small))
        if u.failed_tests:
            tparas.append(Paragraph(f'<font color="#b00020">{u.failed_tests} not PASS</font>', small))
        if u.ooc_tests:
            tparas.append(Paragraph(f'<font color="#b00020"><b>{u.ooc_tests} OUT OF CAL</b></font>', small))
        via = u.path[:-1] if u.path and u.path[-1] == u.root_uii else u.path
        route = [p(_route_text(u), small)]
        if via:
            route.append(p("in: " + " > ".join(via), small))
        urows.append(
            [
                str(i),
                p(u.uii, mono),
                p(u.holds, cell_b if u.holds == "PAST" else cell),
                p(u.status),
                p(u.root_uii, mono),
                route,
                p(_destination(u), small),
                p(u.site, small),
                p(_op_text(m) if m else "", small),
                tparas,
            ]
        )
        if u.holds == "PAST":
            past_rows.append(i)
    if not urows:
        urows.append(["", p("no affected units"), "", "", "", "", "", "", "", ""])
    for start in range(0, len(urows), _PDF_UNIT_CHUNK):
        chunk = urows[start : start + _PDF_UNIT_CHUNK]
        extra: list[Any] = [("ALIGN", (0, 1), (0, -1), "RIGHT"), ("FONTSIZE", (0, 1), (0, -1), 7)]
        for i in past_rows:
            if start < i <= start + len(chunk):
                row = i - start
                extra.append(("BACKGROUND", (0, row), (-1, row), colors.HexColor("#fff6e0")))
        story.append(table([hdr(ucols)] + chunk, uw, extra=extra))

    # 4 evidence
    story.append(CondPageBreak(60 * mm))
    story.append(Paragraph("4. Evidence: AS9100D 8.5.2 and AQAP-2110 identification and traceability", h2))
    story.append(
        Paragraph(
            "Requirements are paraphrased; the standards' own text governs. The records are the "
            "ClickHouse tables described in docs/TABLES.md.",
            small,
        )
    )
    story.append(Spacer(0, 1.5 * mm))
    erows = [hdr(["clause", "requirement", "evidence in this report", "records (table.column)"])] + [
        [p(x.ref, cell_b), p(x.requirement), p(x.evidence), p(x.sources, small)] for x in r.evidence
    ]
    story.append(table(erows, [34 * mm, 66 * mm, width - 180 * mm, 80 * mm]))

    # 5 freshness
    story.append(CondPageBreak(40 * mm))
    story.append(Paragraph("5. Data freshness", h2))
    frows = [hdr(["table", "latest event time"])] + [
        [p(t), p(_ts(v) or "(empty)")] for t, v in f.per_table.items()
    ]
    frows.append([p("consumer lag", cell_b), p(f.lag_text)])
    story.append(table(frows, [60 * mm, 90 * mm]))

    # appendix
    label, tests = _appendix_tests(r)
    story.append(PageBreak())
    story.append(Paragraph("Appendix A. Test history", h2))
    story.append(Paragraph(html.escape(label.capitalize() + "."), small))
    story.append(Spacer(0, 1.5 * mm))
    arows: list[list[Any]] = [
        [
            p(u.uii, mono),
            p(_ts(t.finished_at)),
            p(t.verdict, cell if t.verdict == "PASS" else cell_b),
            p(t.bench_id),
            p(f"{t.procedure_id} {t.procedure_version}"),
            p(t.operator_id or ""),
            p(t.calibration_id, mono),
            p(_ts(t.calibration_due)),
            Paragraph('<font color="#b00020"><b>OUT OF CALIBRATION</b></font>', cell)
            if t.out_of_calibration
            else "",
        ]
        for u, t in tests
    ] or [[p("no tests recorded"), "", "", "", "", "", "", "", ""]]
    aw = [42 * mm, 34 * mm, 14 * mm, 24 * mm, 42 * mm, 20 * mm, 38 * mm, 34 * mm, 0.0]
    aw[-1] = width - sum(aw)
    for start in range(0, len(arows), _PDF_UNIT_CHUNK * 2):
        story.append(
            table(
                [
                    hdr(
                        [
                            "UII",
                            "finished",
                            "verdict",
                            "bench",
                            "procedure",
                            "operator",
                            "calibration",
                            "cal. due",
                            "flag",
                        ]
                    )
                ]
                + arows[start : start + _PDF_UNIT_CHUNK * 2],
                aw,
            )
        )
    story.append(Spacer(0, 4 * mm))
    story.append(Paragraph(f"End of document {html.escape(r.document_number)}.", small))

    doc_no = r.document_number
    header_left = f"traceline | {title} | {r.trigger_text}"

    class _Numbered(rl_canvas.Canvas):
        """Two-pass page numbering: pages are kept until save, then stamped 'page X of Y'."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._pages: list[dict[str, Any]] = []

        def showPage(self) -> None:  # noqa: N802 - reportlab API
            self._pages.append(dict(self.__dict__))
            self._startPage()

        def save(self) -> None:
            total = len(self._pages)
            for state in self._pages:
                self.__dict__.update(state)
                self._decorate(total)
                super().showPage()
            super().save()

        def _decorate(self, total: int) -> None:
            self.saveState()
            self.setStrokeColor(navy)
            self.setLineWidth(0.8)
            self.line(margin, page_h - 10 * mm, page_w - margin, page_h - 10 * mm)
            self.line(margin, 10 * mm, page_w - margin, 10 * mm)
            self.setFont("Helvetica", 7.5)
            self.setFillColor(colors.black)
            self.drawString(margin, page_h - 8.5 * mm, header_left[:150])
            self.drawRightString(page_w - margin, page_h - 8.5 * mm, doc_no)
            if r.is_drill:
                self.setFillColor(red)
                self.setFont("Helvetica-Bold", 7.5)
                self.drawCentredString(page_w / 2, page_h - 8.5 * mm, "RECALL DRILL")
                self.setFillColor(colors.black)
                self.setFont("Helvetica", 7.5)
            self.drawString(
                margin,
                6.5 * mm,
                f"Generated {_ts(r.generated_at)} by traceline. Uncontrolled when printed unless signed.",
            )
            self.drawRightString(page_w - margin, 6.5 * mm, f"page {self._pageNumber} of {total}")
            self.restoreState()

    doc = SimpleDocTemplate(
        path if not isinstance(path, Path) else str(path),
        pagesize=(page_w, page_h),
        leftMargin=margin,
        rightMargin=margin,
        topMargin=14 * mm,
        bottomMargin=14 * mm,
        title=f"{title} {doc_no}",
        author=r.prepared_by or "traceline",
        subject=r.trigger_text,
        creator="traceline",
    )
    doc.build(story, canvasmaker=_Numbered)


# ----------------------------------------------------------------------------- dispatch, API


def render(report: RecallReport, fmt: str) -> bytes:
    """The report in ``fmt`` (csv | html | pdf) as bytes."""
    if fmt == "csv":
        return render_csv(report).encode("utf-8")
    if fmt == "html":
        return render_html(report).encode("utf-8")
    if fmt == "pdf":
        buf = io.BytesIO()
        render_pdf(report, buf)
        return buf.getvalue()
    raise ValueError(f"unknown report format {fmt!r}: use html, pdf or csv")


def filename(report: RecallReport, fmt: str) -> str:
    safe = "".join(
        c if c.isalnum() or c in "-_." else "_" for c in f"{report.trigger.kind}-{report.trigger.id}"
    )
    return f"{report.document_number}_{safe}.{fmt}"


def add_report_routes(
    api: Any,
    store: Any,
    *,
    lag: Callable[[], Mapping[str, int] | None] | None = None,
) -> None:
    """``GET /report?kind=&id=&from=&to=&format=html|csv|pdf[&drill=true]`` on a FastAPI app.

    ``lag`` (optional) returns the consumer lag to print as freshness. With ``drill=true`` the
    request runs a recall drill (timed steps) and the step timings also come back as JSON in
    the ``X-Traceline-Drill`` header."""
    from fastapi import HTTPException, Query, Response

    from schemas.errors import TracelineError

    @api.get(
        "/report", summary="Recall report for an auditor (HTML, PDF or CSV); drill=true for a recall drill"
    )
    def get_report(
        kind: str = Query(
            "lot", description="lot | supplier_lot | supplier | serial | station | operator | bench"
        ),
        id: str = Query(..., description="the trigger's id"),  # noqa: A002 - API field name
        start: datetime | None = Query(None, alias="from", description="window start (ISO-8601, aware)"),
        end: datetime | None = Query(None, alias="to", description="window end (ISO-8601, aware)"),
        format: str = Query("html", description="html | pdf | csv"),  # noqa: A002 - API field name
        drill: bool = Query(False, description="run as a recall drill (timed steps, drill banner)"),
        prepared_by: str = Query("", description="name for the 'prepared by' line"),
    ) -> Response:
        fmt = format.lower()
        if fmt not in MEDIA_TYPES:
            raise HTTPException(status_code=422, detail=f"unknown format {format!r}: use html, pdf or csv")
        try:
            trigger = Trigger(kind, id, start, end)
            lag_now: Mapping[str, int] | None = None
            note = "no Kafka lag source configured"
            if lag is not None:
                try:
                    lag_now = lag()
                except Exception as exc:  # noqa: BLE001 - lag is informative; the report still runs
                    note = f"lag unavailable: {exc}"
            headers: dict[str, str] = {}
            if drill:
                from queries.drill import drill_report

                report, content, timings = drill_report(
                    store, trigger, fmt, lag=lag_now, lag_note=note, prepared_by=prepared_by
                )
                headers["X-Traceline-Drill"] = json.dumps(timings)
            else:
                fresh = measure_freshness(store, lag_now, None if lag_now is not None else note)
                report = build_report(store, trigger, freshness=fresh, prepared_by=prepared_by)
                content = render(report, fmt)
        except ValueError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from exc
        except TracelineError as exc:
            raise HTTPException(status_code=503, detail=str(exc)) from exc
        disposition = "inline" if fmt == "html" else "attachment"
        headers["Content-Disposition"] = f'{disposition}; filename="{filename(report, fmt)}"'
        headers["X-Traceline-Document"] = report.document_number
        return Response(content=content, media_type=MEDIA_TYPES[fmt], headers=headers)
