"""The recall report as a document: its sections in order, as neutral data for the renderers.

``sections(report)`` lists what the document says, once, for every printed form: the title
block (drill banner, document facts, signature lines), 1. totals, the drill's step timings,
2. the lots in scope (lineage, origin, receipts, status) and the nonconformances in scope, each
with why it is listed, 3. the affected units (now and past holders), 4. the AS9100D 8.5.2 /
AQAP-2110 evidence map (``evidence_map``: each point with this report's figures), 5. data
freshness and appendix A, the test history (exceptions only above ``APPENDIX_MAX_TESTS``).

A :class:`Section` has a heading and blocks: :class:`Fields` (label / value rows),
:class:`Signatures` (sign-off lines), :class:`Table` (columns, rows, a note above it, a text for
no rows) and :class:`Note` (a paragraph). A cell is a string, a :class:`Text` with an
:data:`Emphasis`, or a tuple of them (one line each). Renderers (``queries.report_html``,
``queries.report_pdf``) decide how each kind looks; ``Table.name`` lets them keep per-table
layout (printed column widths).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from queries.report import STATUSES, RecallReport, ReportUnit, TestRecord
from queries.report_text import day, kv, plural, ts

__all__ = [
    "APPENDIX_MAX_TESTS",
    "DRILL_BANNER",
    "Block",
    "Cell",
    "Column",
    "Emphasis",
    "EvidenceItem",
    "Fields",
    "Note",
    "Row",
    "Section",
    "Signatures",
    "Table",
    "Text",
    "document_title",
    "evidence_map",
    "sections",
]

APPENDIX_MAX_TESTS = 3_000  # above this the PDF/HTML appendix lists exceptions only (CSV has all)
DRILL_BANNER = (
    "RECALL DRILL: a mock recall run as if the trigger were nonconforming. No product action is required."
)

# "code": an identifier (fixed-width); "strong": a label or a value to notice; "minor": detail
# (smaller); "warn": a bad result; "alert": a bad result that needs action (out of calibration)
Emphasis = Literal["", "code", "strong", "minor", "warn", "alert"]


@dataclass(frozen=True)
class Text:
    text: str
    emphasis: Emphasis = ""


Cell = str | Text | tuple[Text, ...]  # a tuple: one line each


@dataclass(frozen=True)
class Column:
    title: str
    numeric: bool = False  # counts, durations: aligned right
    emphasis: Emphasis = ""  # of the column's plain-string cells


@dataclass
class Row:
    cells: list[Cell]
    mark: Literal["", "past", "total"] = ""  # a past holder (shaded) / the totals row


@dataclass
class Table:
    name: str  # what it lists ("units", "tests", ...): stable, for per-table layout
    columns: list[Column]
    rows: list[Row]
    note: str = ""  # printed above the table: what it lists, or what was left out
    empty: str = ""  # printed across the table when it has no rows
    dense: bool = False  # a long list: smaller type


@dataclass
class Fields:
    rows: list[tuple[str, str]]  # (label, value)


@dataclass
class Signatures:
    COLUMNS: ClassVar[tuple[str, ...]] = ("role", "name", "signature", "date")
    roles: list[tuple[str, str]]  # (role, name printed on the line); signature and date left blank


@dataclass
class Note:
    text: str


Block = Fields | Signatures | Table | Note


@dataclass
class Section:
    heading: str
    blocks: list[Block] = field(default_factory=list)
    level: int = 2  # 1: the document's title
    banner: str = ""  # above the heading (the recall drill)
    new_page: bool = False  # printed: starts a page
    keep_mm: float = 0  # printed: starts a page unless this much room is left


@dataclass
class EvidenceItem:
    ref: str  # "AS9100D 8.5.2", "AQAP-2110 ..."
    requirement: str  # paraphrase
    evidence: str  # what this report shows, with its figures
    sources: str  # tables / columns that prove it


def document_title(r: RecallReport) -> str:
    return "Recall drill report" if r.is_drill else "Recall report"


def sections(r: RecallReport) -> list[Section]:
    """The document's sections, in order."""
    out = [_title(r), _totals(r)]
    if r.is_drill:
        out.append(_timings(r))
    out += [_scope(r), _units(r), _evidence(r), _freshness(r), _appendix(r)]
    return out


# ----------------------------------------------------------------------------- sections


def _title(r: RecallReport) -> Section:
    f = r.freshness
    facts = [
        ("Document number", r.document_number),
        ("Trigger", r.trigger_text),
        ("Query ran at", ts(r.generated_at)),
        ("Data current to (latest event time)", ts(f.latest_event_time) or "no events"),
        ("Latest ingest time", ts(f.latest_ingest_time) or "-"),
        ("Consumer lag", f.lag_text),
        ("Verification at report time", _verification_text(r)),
        ("Built on chain heads", _heads_text(r)),
        ("Programmes covered", r.coverage.text),
        (
            "Scope",
            f"{len(r.now_units)} units hold the part now; {_past_text(r)}; "
            f"{plural(r.systems, 'final system')}; {plural(len(r.lots), 'lot')}; {r.test_count} tests "
            f"({r.ooc_count} out of calibration)",
        ),
    ]
    roles = [("Prepared by", r.prepared_by), ("Reviewed by (quality)", ""), ("Approved by", "")]
    return Section(
        f"{document_title(r)}: {r.trigger_text}",
        [Fields(facts), Signatures(roles)],
        level=1,
        banner=DRILL_BANNER if r.is_drill else "",
    )


def _totals(r: RecallReport) -> Section:
    by = r.by_customer_status
    statuses = [s for s in STATUSES if any(s in v for v in by.values())]
    statuses += sorted({s for v in by.values() for s in v} - set(statuses))
    rows = [Row([c, *(str(v.get(s, 0)) for s in statuses), str(sum(v.values()))]) for c, v in by.items()]
    total = [str(r.by_status.get(s, 0)) for s in statuses]
    rows.append(Row([Text("Total", "strong"), *total, str(len(r.now_units))], mark="total"))
    cross = Table(
        "totals",
        [Column("customer"), *(Column(s, numeric=True) for s in statuses), Column("total", numeric=True)],
        rows,
        note="Units that hold the part now, by customer and status.",
    )
    sites = Table(
        "sites",
        [Column("site"), Column("units", numeric=True)],
        [Row([k, str(v)]) for k, v in r.by_site.items()],
        note="By site: the destination site of shipped units, else the plant where the unit met the trigger.",
    )
    return Section("1. Totals", [cross, sites])


def _timings(r: RecallReport) -> Section:
    timings = r.drill_timings or []
    rows = [Row([step, "" if s is None else f"{s * 1000:.1f} ms", note]) for step, s, note in timings]
    cols = [Column("step"), Column("time", numeric=True), Column("note")]
    return Section("Recall drill: step timings", [Table("timings", cols, rows)])


def _inputs_text(x: Mapping[str, Any]) -> str:
    return ", ".join(f"{i} ({q:g})" for i, q in zip(x["input_lot_ids"], x["input_quantities"], strict=False))


_NC_NOTE = (
    "Nonconformance reports on the trigger; on the lots in scope and the lots upstream of them, their "
    "supplier lots and suppliers (an NC window covering the receipt); on the affected units (now and "
    "past holders) and their current assemblies."
)
_NC_EMPTY = (
    "no nonconformance report recorded on the trigger, the lots in scope or upstream of them, their "
    "supplier lots or suppliers, or the affected units and their assemblies"
)


def _scope(r: RecallReport) -> Section:
    blocks: list[Block] = []
    if r.lots:
        cols = [Column("lot", emphasis="code"), Column("made from", emphasis="code")]
        cols.append(Column("transformation"))
        rows = [
            Row([h.lot_id, h.from_lot_id or "(named by trigger)", h.transformation or "", str(h.depth)])
            for h in r.lots
        ]
        blocks.append(Table("lots", [*cols, Column("depth", numeric=True)], rows))
    if r.upstream:
        cols = [Column("lot", emphasis="code"), Column("part"), Column("made by")]
        cols += [Column("from lots (quantity)", emphasis="code"), Column("station"), Column("time")]
        rows = [
            Row(
                [
                    x["lot_id"],
                    x["part_number"],
                    x["transformation"],
                    _inputs_text(x),
                    x["station_id"] or "",
                    ts(x["event_time"]),
                ]
            )
            for x in r.upstream
        ]
        note = "Origin of the trigger lot(s): the transformations they were made by."
        blocks.append(Table("upstream", cols, rows, note=note))
    if r.receipts:
        cols = [Column("lot", emphasis="code"), Column("part"), Column("supplier"), Column("supplier lot")]
        cols += [Column("quantity"), Column("CoC"), Column("inspection"), Column("received")]
        rows = [
            Row(
                [
                    x["lot_id"],
                    x["part_number"],
                    x["supplier_id"],
                    x["supplier_lot"],
                    f"{x['quantity']:g} {x['unit_of_measure']}",
                    x["coc_reference"] or "",
                    x["inspection_result"],
                    ts(x["event_time"]),
                ]
            )
            for x in r.receipts
        ]
        blocks.append(Table("receipts", cols, rows))
    if r.lot_status:
        cols = [Column("lot", emphasis="code"), Column("status"), Column("reason"), Column("time")]
        rows = [Row([x["lot_id"], x["status"], x["reason"], ts(x["event_time"])]) for x in r.lot_status]
        blocks.append(Table("lot_status", cols, rows))
    cols = [Column("NCR", emphasis="code"), Column("target", emphasis="code"), Column("in scope because")]
    cols += [Column("severity"), Column("disposition"), Column("description"), Column("raised")]
    rows = [
        Row(
            [
                x["ncr_id"],
                f"{x['target_kind']} {x['target_id']}",
                x.get("scope", ""),
                Text(x["severity"], "warn") if x["severity"] == "CRITICAL" else x["severity"],
                x["disposition"],
                x["description"],
                ts(x["event_time"]),
            ]
        )
        for x in r.nonconformances
    ]
    blocks.append(Table("nonconformances", cols, rows, note=_NC_NOTE, empty=_NC_EMPTY))
    return Section("2. Scope: lots, receipts, status, nonconformances", blocks, keep_mm=40)


_UNITS_NOTE = (
    "NOW: the suspect part is installed in this unit. PAST: the unit held it (or an assembly "
    "containing it) before a removal. Tests: count, last verdict and date; OUT OF CAL = run on a "
    "bench past its calibration due date. Full histories: Appendix A and the CSV."
)


def _tests_cell(u: ReportUnit) -> tuple[Text, ...]:
    lines = [Text(plural(len(u.tests), "test"))]
    last = u.last_test
    if last:
        lines.append(Text(f"last {last.verdict} {day(last.finished_at)} {last.bench_id}", "minor"))
    if u.failed_tests:
        lines.append(Text(f"{u.failed_tests} not PASS", "warn"))
    if u.ooc_tests:
        lines.append(Text(f"{u.ooc_tests} OUT OF CAL", "alert"))
    return tuple(lines)


def _route_cell(u: ReportUnit) -> Cell:
    via = u.path[:-1] if u.path and u.path[-1] == u.root_uii else u.path
    route = Text(u.route_text, "minor")
    return (route, Text("in: " + " > ".join(via), "minor")) if via else route


def _units(r: RecallReport) -> Section:
    cols = [
        Column("#", numeric=True),
        Column("UII", emphasis="code"),
        Column("holds"),
        Column("status"),
        Column("final system", emphasis="code"),
        Column("path from trigger / current assembly path"),
        Column("customer / destination / end system", emphasis="minor"),
        Column("site", emphasis="minor"),
        Column("met trigger: work order, operation, station, operator", emphasis="minor"),
        Column("tests"),
    ]
    rows = [
        Row(
            [
                str(i),
                u.uii,
                Text(u.holds, "strong") if u.holds == "PAST" else u.holds,
                u.status,
                u.root_uii,
                _route_cell(u),
                u.destination_text,
                u.site or "",
                u.met_trigger.text if u.met_trigger else "",
                _tests_cell(u),
            ],
            mark="past" if u.holds == "PAST" else "",
        )
        for i, u in enumerate(r.units, 1)
    ]
    heading = f"3. Affected units ({len(r.now_units)} hold the part now; {_past_text(r)})"
    table = Table("units", cols, rows, note=_UNITS_NOTE, empty="no affected units", dense=True)
    return Section(heading, [table], new_page=True)


def _evidence(r: RecallReport) -> Section:
    cols = [Column("clause", emphasis="strong"), Column("requirement"), Column("evidence in this report")]
    cols.append(Column("records (table.column)", emphasis="minor"))
    rows = [Row([x.ref, x.requirement, x.evidence, x.sources]) for x in evidence_map(r)]
    note = (
        "Requirements are paraphrased; the standards' own text governs. The records are the "
        "ClickHouse tables described in docs/TABLES.md."
    )
    heading = "4. Evidence: AS9100D 8.5.2 and AQAP-2110 identification and traceability"
    return Section(heading, [Table("evidence", cols, rows, note=note)], keep_mm=60)


def _freshness(r: RecallReport) -> Section:
    f = r.freshness
    rows = [Row([t, ts(v) or "(empty)"]) for t, v in f.per_table.items()]
    rows.append(Row([Text("consumer lag", "strong"), f.lag_text]))
    table = Table("freshness", [Column("table"), Column("latest event time")], rows)
    return Section("5. Data freshness", [table], keep_mm=40)


def _appendix_tests(r: RecallReport) -> tuple[str, list[tuple[ReportUnit, TestRecord]]]:
    every = [(u, t) for u in r.units for t in u.tests]
    if len(every) <= APPENDIX_MAX_TESTS:
        return f"All {len(every)} tests of the listed units.", every
    exc = [(u, t) for u, t in every if t.verdict != "PASS" or t.out_of_calibration]
    return (
        f"{len(every)} tests: too many to print, listed here are the {len(exc)} exceptions "
        "(FAIL / ABORTED / out of calibration); the CSV holds the full history.",
        exc,
    )


def _appendix(r: RecallReport) -> Section:
    label, tests = _appendix_tests(r)
    cols = [Column("UII", emphasis="code"), Column("finished"), Column("verdict"), Column("bench")]
    cols += [Column("procedure"), Column("operator"), Column("calibration", emphasis="code")]
    cols += [Column("cal. due"), Column("flag")]
    rows = [
        Row(
            [
                u.uii,
                ts(t.finished_at),
                t.verdict if t.verdict == "PASS" else Text(t.verdict, "strong"),
                t.bench_id,
                f"{t.procedure_id} {t.procedure_version}",
                t.operator_id or "",
                t.calibration_id,
                ts(t.calibration_due),
                Text("OUT OF CALIBRATION", "alert") if t.out_of_calibration else "",
            ]
        )
        for u, t in tests
    ]
    table = Table("tests", cols, rows, note=label, empty="no tests recorded", dense=True)
    end = Note(f"{r.document_number}: generated by traceline at {ts(r.generated_at)}. End of document.")
    return Section("Appendix A. Test history", [table, end], new_page=True)


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
            f"Each unit carries its recall status ({kv(r.by_status) or 'none'}) "
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
            "Records are append-only events, each with a unique event_id and its Kafka position, under a "
            "hash chain (every landed row's sha256 chained per Kafka partition, chain heads signed; "
            "`traceline verify` re-hashes the store and checks the derived tables against them); "
            f"verification at report time: {_verification_text(r)}; this report states its data cut-off "
            f"(latest event {ts(r.freshness.latest_event_time) or 'none'}, consumer lag "
            f"{r.freshness.lag_text}) and the chain heads it was built on.",
            "every raw table: event_id, event_time, ingest_time, kafka_topic, kafka_partition, kafka_offset; "
            "event_chain (row_hash, chain_hash), chain_heads (signature)",
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
            f"{len(r.nonconformances)} nonconformance report(s) in scope, each with why it is listed: on "
            "the trigger; on a lot in scope or upstream of it, on its supplier lot, or on its supplier "
            "(window covering the receipt); on an affected unit or one of its current assemblies. "
            "With severity and disposition.",
            "nonconformances.ncr_id, target_kind, target_id, window_start, window_end, severity, "
            "disposition; material_received.supplier_id, supplier_lot; lot_status",
        ),
    ]


def _verification_text(r: RecallReport) -> str:
    v = r.verification
    return v.text if v is not None else "not verified: the report was built without a chain check"


def _heads_text(r: RecallReport) -> str:
    v = r.verification
    return v.heads_text if v is not None else "none"


def _past_text(r: RecallReport) -> str:
    """Past holders: distinct units, and their holds when one unit held several bad parts."""
    holds = r.past_units
    units = len({u.uii for u in holds})
    if units == len(holds):
        return f"{units} held it in the past"
    return f"{units} held it in the past ({len(holds)} holds)"
