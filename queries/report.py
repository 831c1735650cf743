"""Recall report for the auditor: its data and the reads that gather it.

``build_report(store, trigger)`` runs the recall (``queries.recall.recall_impact``) and reads,
with bound parameters, what an auditor asks next: each affected unit's test history (verdict,
bench, procedure, calibration; a test is *out of calibration* when the bench's
``calibration_due`` is before the test's ``finished_at``), its sequential production record
(operations: work order, operation, station, operator, times) and the operation where it met
the trigger; the lots in scope with their receipts (supplier lot, CoC, incoming inspection)
and status history; the nonconformance reports in scope, each saying why it is listed (on the
trigger; on a lot in scope or upstream of it, on such a lot's supplier lot or supplier; on an
affected unit or one of its current assemblies); and how fresh the data was (latest
``event_time`` and ``ingest_time`` over the raw tables, and the consumer lag when the caller
measured it).
Each read is one named step run through ``step`` (a :class:`Step`; by default it just runs
it): ``queries.drill`` passes a clock that times each step.

Here: the records (:class:`RecallReport`, :class:`ReportUnit`, :class:`TestRecord`,
:class:`Operation`, :class:`Freshness`), the reads (``build_report``, ``measure_freshness``,
``collect_details``, ``scope_records``, ``units_from_impact``, ``assemble_report``) and
``check_prepared_by``: a report names the person who prepared it, never an empty or guessed name.

What a report rests on: its ``verification`` (``queries.verify.quick_check`` at build time: the
signed heads of the hash chain over the landed rows, or "not verified" and why) and its
document number, ``RR-<date>-<first 10 hex of the sha256 of its canonical data>``
(:func:`document_number`; ``RD-`` for a drill), set once when the report is assembled, so
every format of one report carries one number.

Elsewhere: the document's sections and its AS9100D 8.5.2 / AQAP-2110 evidence map
(``queries.report_sections``), its renderers
(``queries.report_csv``, ``queries.report_html``, ``queries.report_pdf``) and
``queries.report_render`` (``render(report, fmt)``, ``filename``, ``MEDIA_TYPES``).
``traceline.api`` serves the report as ``GET /report``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from queries.recall import recall_impact
from queries.report_text import day, few, ts, utc
from queries.results import Coverage, LotHop, RecallImpact, Trigger
from queries.verify import ChainStatus, quick_check
from schemas.errors import InvalidInputError
from sinks.chain import Verifier
from sinks.rows import RAW_TABLES

__all__ = [
    "STATUSES",
    "Coverage",
    "Freshness",
    "Operation",
    "RecallReport",
    "ReportUnit",
    "Step",
    "TestRecord",
    "assemble_report",
    "build_report",
    "check_prepared_by",
    "collect_details",
    "document_number",
    "measure_freshness",
    "run_step",
    "scope_records",
    "units_from_impact",
]

STATUSES = ("shipped", "in_stock", "in_work")
_CHUNK = 20_000  # uiis per IN-array parameter
NO_LAG_NOTE = "no Kafka lag measurement supplied"

T = TypeVar("T")


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

    @property
    def text(self) -> str:
        """``<finished> <verdict> <bench> <procedure> <version> cal <calibration>[ OUT-OF-CALIBRATION]``."""
        s = f"{day(self.finished_at)} {self.verdict} {self.bench_id} {self.procedure_id}"
        s += f" {self.procedure_version} cal {self.calibration_id}"
        return s + (" OUT-OF-CALIBRATION" if self.out_of_calibration else "")


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

    @property
    def text(self) -> str:
        """``<started> <work order> <operation> @<station> by <operator>``."""
        s = f"{day(self.started_at)} {self.work_order} {self.operation}"
        return f"{s} @{self.station_id} by {self.operator_id}"


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
    removed_at: datetime | None = None  # PAST: the end of the hold
    removal_reason: str | None = None
    held_from: datetime | None = None  # PAST: the start of the hold
    removed_uii: str | None = None  # PAST: the link whose break ended the hold: this unit ...
    removed_from_uii: str | None = None  # ... taken out of this one
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

    @property
    def trace_text(self) -> str:
        """NOW: the path from the trigger to the unit; PAST: what it held, until when, and why."""
        if self.holds == "PAST":
            link = (
                f"; {self.removed_uii} removed from {self.removed_from_uii}"
                if self.removed_uii and self.removed_from_uii
                else ""
            )
            why = f" ({self.removal_reason})" if self.removal_reason else ""
            return (
                f"held {self.affected_uii} (via {self.held_uii}) from {ts(self.held_from)} "
                f"until {ts(self.removed_at)}{link}{why}"
            )
        return " > ".join(self.trace)

    @property
    def route_text(self) -> str:
        """The trace without the unit itself (shown beside it)."""
        if self.holds == "PAST" or not self.trace:
            return self.trace_text
        trace = self.trace[:-1] if self.trace[-1] == f"uii:{self.uii}" else self.trace
        return "from " + " > ".join(trace)

    @property
    def destination_text(self) -> str:
        """``<customer> / <destination site> / <end system>``, the parts that are known."""
        return " / ".join(x for x in (self.customer_id, self.destination_site, self.end_system) if x)


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
    prepared_by: str = ""
    query_seconds: float | None = None
    drill_timings: list[tuple[str, float | None, str]] | None = None  # (step, seconds, note); drill only
    verification: ChainStatus | None = None  # the chain heads it was built on (None: not checked)
    coverage: Coverage = field(default_factory=Coverage)  # the programmes it covers, what it withheld

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
            s += f" (window {ts(t.window_start) or '-inf'} .. {ts(t.window_end) or '+inf'})"
        return s

    @property
    def test_count(self) -> int:
        return sum(len(u.tests) for u in self.units)

    @property
    def ooc_count(self) -> int:
        return sum(u.ooc_tests for u in self.units)


# ----------------------------------------------------------------------------- building


def _chunks(items: Sequence[T]) -> Iterable[list[T]]:
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
            per[r["t"]] = utc(r["et"])
            ingest.append(utc(r["it"]))
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
                TestRecord(**{k: utc(v) for k, v in r.items()})  # type: ignore[arg-type]
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
            r = {k: utc(v) for k, v in r.items()}
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
            r = {k: utc(v) for k, v in r.items()}
            r["input_lot_ids"] = list(r["input_lot_ids"])
            r["input_quantities"] = list(r["input_quantities"])
            out.append(r)
            for i in r["input_lot_ids"]:
                if i not in seen:
                    seen.add(i)
                    nxt.append(i)
        frontier = sorted(nxt)
    return out


def _nc_reasons(
    trigger: Trigger,
    lots: Sequence[LotHop],
    upstream: Sequence[Mapping[str, Any]],
    receipts: Sequence[Mapping[str, Any]],
    units: Sequence[ReportUnit],
) -> tuple[dict[tuple[str, str], dict[str, list[str]]], dict[str, list[tuple[str, datetime]]]]:
    """Why an NC target is in scope, ``(target_kind, target_id) -> {phrase: [subjects]}``: the
    trigger, the lots in scope and upstream, their supplier lots, the units and their current
    ancestors. And each supplier's receipts in scope, ``supplier -> [(lot, received at)]``: an NC
    on a supplier is in scope when its window (if any) covers one of them."""
    out: dict[tuple[str, str], dict[str, list[str]]] = {}

    def add(kind: str, ident: str, phrase: str, subject: str = "") -> None:
        out.setdefault((kind, ident), {}).setdefault(phrase, []).append(subject)

    add(trigger.kind.upper(), trigger.id, "on the trigger")
    for h in lots:
        made = ("on lot in scope, made from", h.from_lot_id) if h.from_lot_id else ("on lot in scope",)
        add("LOT", h.lot_id, *made)
    made_into: dict[str, str] = {}  # upstream lot -> the lot made from it
    for x in upstream:
        for i in x["input_lot_ids"]:
            made_into.setdefault(i, x["lot_id"])
    label = {h.lot_id: h.lot_id for h in lots}
    for lot, seed in made_into.items():
        for _ in range(UPSTREAM_LEVELS):
            seed = made_into.get(seed, seed)
        label.setdefault(lot, f"{lot} (upstream of {seed})")
        add("LOT", lot, "on lot upstream of", seed)
    received: dict[str, list[tuple[str, datetime]]] = {}
    for x in receipts:
        lot = label.get(x["lot_id"], x["lot_id"])
        add("SUPPLIER_LOT", f"{x['supplier_id']}:{x['supplier_lot']}", "on supplier lot of", lot)
        received.setdefault(x["supplier_id"], []).append((lot, x["event_time"]))
    for u in units:
        now = u.holds == "NOW"
        held = ("on unit", u.uii) if now else ("on past holder", f"{u.uii} (held {u.affected_uii})")
        add("SERIAL", u.uii, *held)
        for a in u.path or ([u.root_uii] if u.root_uii != u.uii else []):
            phrase = "on final system of" if a == u.root_uii else "on assembly holding"
            add("SERIAL", a, phrase, u.uii if now else f"past holder {u.uii}")
    return out, received


def _nc_scope_text(
    nc: Mapping[str, Any],
    reasons: Mapping[tuple[str, str], Mapping[str, list[str]]],
    received: Mapping[str, list[tuple[str, datetime]]],
) -> str:
    """Why ``nc`` is in scope ("on the trigger", "on supplier lot of LA0001", ...); "" if not."""
    phrases = dict(reasons.get((nc["target_kind"], nc["target_id"]), {}))
    if "on the trigger" in phrases:
        return "on the trigger"
    if nc["target_kind"] == "SUPPLIER":
        start, end = nc["window_start"], nc["window_end"]
        covered = [
            lot
            for lot, at in received.get(nc["target_id"], [])
            if (start is None or at >= start) and (end is None or at <= end)
        ]
        if covered:
            phrase = "on supplier, window covers the receipt of" if start or end else "on supplier of"
            phrases[phrase] = covered
    return "; ".join(f"{p} {few(s)}".strip() for p, s in phrases.items())


_NC_COLUMNS = (
    "ncr_id, target_kind, target_id, severity, disposition, description, event_time, window_start,"
    " window_end, event_id"
)


def _read_ncrs(store: _Store, keys: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
    """The NCs on the ``(target_kind, target_id)`` keys: one statement per 20k keys."""
    rows: list[dict[str, Any]] = []
    for chunk in _chunks(sorted(set(keys))):
        by: dict[str, list[str]] = {}
        for kind, ident in chunk:
            by.setdefault(kind, []).append(ident)
        params: dict[str, Any] = {}
        where = []
        for n, (kind, ids) in enumerate(by.items()):
            params[f"k{n}"], params[f"i{n}"] = kind, ids
            where.append(f"(target_kind = {{k{n}:String}} AND target_id IN {{i{n}:Array(String)}})")
        rows += store.query(
            f"SELECT {_NC_COLUMNS} FROM nonconformances WHERE {' OR '.join(where)}"
            " ORDER BY event_time, event_id LIMIT 1 BY event_id",
            params,
        )
    return _latest_per_ncr(rows)


def _latest_per_ncr(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per NCR: its latest record (the current disposition, severity, description), with
    ``event_time`` the time it was first raised; rows in (event_time, event_id) order."""
    first: dict[str, Any] = {}
    latest: dict[str, dict[str, Any]] = {}
    for r in rows:  # ordered by (event_time, event_id)
        first.setdefault(r["ncr_id"], r["event_time"])
        latest[r["ncr_id"]] = r
    out = [{**r, "event_time": first[ncr]} for ncr, r in latest.items()]
    return sorted(out, key=lambda r: (r["event_time"], r["ncr_id"]))


def scope_records(
    store: _Store, trigger: Trigger, lots: Sequence[LotHop], units: Sequence[ReportUnit] = ()
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Receipts, status changes and NCRs in scope, and the upstream lineage of the trigger lots
    (``lots`` at depth 0: a lot split from a received reel has its receipt upstream).

    NCRs: on the trigger; on the lots in scope and upstream, their supplier lots and suppliers
    (the NC window covering the receipt); on the ``units`` and their current ancestors. Each
    carries ``scope``: why it is listed. The upstream walk (a statement per level), then one
    statement each for receipts, status and NCRs (one more per 20k NC targets)."""
    upstream = _upstream(store, [h.lot_id for h in lots if h.depth == 0])
    every = sorted(
        {h.lot_id for h in lots}
        | {i for u in upstream for i in u["input_lot_ids"]}
        | {u["lot_id"] for u in upstream}
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
    receipts, status = ([{k: utc(v) for k, v in r.items()} for r in rows] for rows in (receipts, status))
    reasons, received = _nc_reasons(trigger, lots, upstream, receipts, units)
    ncrs = []
    for r in _read_ncrs(store, [*reasons, *(("SUPPLIER", s) for s in received)]):
        r = {k: utc(v) for k, v in r.items()}
        r["scope"] = _nc_scope_text(r, reasons, received)
        if r["scope"]:
            ncrs.append(r)
    ncrs.sort(key=lambda r: (r["event_time"], r["event_id"]))
    return receipts, status, ncrs, upstream


def check_prepared_by(name: str | None) -> str:
    """``name`` without surrounding blanks, for the report's "prepared by" line; an
    :class:`InvalidInputError` (field ``prepared_by``) when it is empty or blank: a report never
    prints an empty or guessed name."""
    if not isinstance(name, str) or not name.strip():
        raise InvalidInputError(
            "prepared_by is required: the name of the person preparing the report (it was empty)",
            "prepared_by",
        )
    return name.strip()


# not content: the number itself, and the drill's timings (they grow while its formats render)
_NOT_CONTENT = frozenset({"document_number", "drill_timings", "query_seconds"})


def _canonical(x: Any) -> Any:
    if is_dataclass(x) and not isinstance(x, type):
        return {f.name: _canonical(getattr(x, f.name)) for f in fields(x) if f.name not in _NOT_CONTENT}
    if isinstance(x, datetime):
        return x.isoformat()
    if isinstance(x, Mapping):
        return {str(k): _canonical(v) for k, v in x.items()}
    if isinstance(x, list | tuple | set | frozenset):
        items = [_canonical(v) for v in x]
        return sorted(items, key=repr) if isinstance(x, set | frozenset) else items
    if x is None or isinstance(x, str | int | float | bool):
        return x
    return str(x)


def document_number(report: RecallReport) -> str:
    """``RR-<YYYYMMDD>-<HEX10>`` (``RD-`` for a drill): the day it was generated and the first
    10 hex digits of the sha256 of the report's canonical data (every field but the number and
    the drill's timings, as sorted JSON). Call it again after changing a report's content."""
    data = json.dumps(_canonical(report), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    h = hashlib.sha256(data.encode()).hexdigest()[:10].upper()
    return f"{'RD' if report.is_drill else 'RR'}-{report.generated_at:%Y%m%d}-{h}"


def units_from_impact(impact: RecallImpact) -> list[ReportUnit]:
    """The recall's units as report rows: NOW holders, then PAST holders (details not read yet)."""
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
            removed_at=utc(p.removed_at),
            removal_reason=p.removal_reason,
            held_from=utc(p.held_from),
            removed_uii=p.removed_uii,
            removed_from_uii=p.removed_from_uii,
        )
        for p in impact.past
    ]
    return units


def assemble_report(
    impact: RecallImpact,
    freshness: Freshness,
    *,
    generated_at: datetime,
    units: list[ReportUnit],
    receipts: list[dict[str, Any]] | None = None,
    lot_status: list[dict[str, Any]] | None = None,
    nonconformances: list[dict[str, Any]] | None = None,
    upstream: list[dict[str, Any]] | None = None,
    prepared_by: str,
    drill: bool = False,
    query_seconds: float | None = None,
    verification: ChainStatus | None = None,
) -> RecallReport:
    """The report from the recall and the records read for it: totals, document number
    (:func:`document_number`). ``prepared_by``: see :func:`check_prepared_by`."""
    prepared_by = check_prepared_by(prepared_by)
    now = [u for u in units if u.holds == "NOW"]
    cross: dict[str, dict[str, int]] = {}
    for u in now:
        row = cross.setdefault(u.customer_id or "(not shipped)", {})
        row[u.status] = row.get(u.status, 0) + 1
    report = RecallReport(
        document_number="",
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
        verification=verification,
    )
    report.document_number = document_number(report)
    return report


class Step(Protocol):
    """How ``build_report`` runs each of its steps: ``step(name, fn, note)`` returns ``fn()``.

    ``note(result)`` describes the result in a few words ("84 units now, ..."); a hook that
    records steps (the drill's clock) calls it, :func:`run_step` does not."""

    def __call__(self, name: str, fn: Callable[[], T], note: Callable[[T], str], /) -> T: ...


def run_step(name: str, fn: Callable[[], T], note: Callable[[T], str], /) -> T:
    """The default :class:`Step`: run ``fn``, nothing else."""
    return fn()


def build_report(
    store: _Store,
    trigger: Trigger,
    *,
    freshness: Freshness | Mapping[str, int] | None = None,
    lag_note: str | None = NO_LAG_NOTE,
    prepared_by: str,
    drill: bool = False,
    step: Step = run_step,
    verifier: Verifier | None = None,
) -> RecallReport:
    """Run the recall for ``trigger`` and gather everything the report shows.

    ``freshness``: a measured :class:`Freshness`, or the consumer lag (``{"streams": n,
    "sink": n}``) to put beside the latest event time read from the store, or None (then
    ``lag_note`` says why the lag is not given). ``drill``: a recall drill (``RD-`` document
    number, drill banner and timings). ``step`` runs each read in turn (see :class:`Step`):
    "recall impact", "test histories and production records", "lot origin, receipts, status
    and nonconformances" and, unless ``freshness`` is already measured, "data freshness".
    ``prepared_by``: the name on the "prepared by" line, checked before anything is read (see
    :func:`check_prepared_by`). ``verifier``: the sink's chain key; the report states whether
    the chain heads verified (``queries.verify.quick_check``), or that it was not verified."""
    prepared_by = check_prepared_by(prepared_by)
    generated_at = datetime.now(UTC)
    t0 = time.perf_counter()
    impact = step(
        "recall impact",
        lambda: recall_impact(store, trigger),
        lambda im: f"{len(im.units)} units now, {len(im.past)} past holders, {len(im.systems)} systems",
    )
    units = units_from_impact(impact)
    step(
        "test histories and production records",
        lambda: collect_details(store, units, trigger),
        lambda _: (
            f"{sum(len(u.tests) for u in units)} tests, {sum(len(u.operations) for u in units)} operations"
        ),
    )
    receipts, status, ncrs, upstream = step(
        "lot origin, receipts, status and nonconformances",
        lambda: scope_records(store, trigger, impact.lots, units),
        lambda x: (
            f"{len(x[3])} upstream lots, {len(x[0])} receipts, {len(x[1])} status changes, {len(x[2])} NCRs"
        ),
    )
    if not isinstance(freshness, Freshness):
        lag = freshness
        freshness = step(
            "data freshness",
            lambda: measure_freshness(store, lag, lag_note if lag is None else None),
            lambda f: f"latest event {ts(f.latest_event_time) or 'none'}; consumer lag {f.lag_text}",
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
        drill=drill,
        query_seconds=time.perf_counter() - t0,
        verification=quick_check(store, verifier),
    )
