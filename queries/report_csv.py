"""The recall report as CSV: one row per unit (NOW holders, then PAST holders).

``CSV_COLUMNS`` are the columns, in order; the full test history and production record of each
unit are in its ``test_history`` / ``production_record`` cells. Text cells that a spreadsheet
would run as a formula get a leading apostrophe. A report cut to the caller's programmes that
left units, past holds or nonconformance reports out ends with one row whose ``holds`` is
``withheld`` and whose ``status`` says how many (``Coverage.text``), so a sheet of the visible
units never reads as the whole recall.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from queries.report import RecallReport

__all__ = ["CSV_COLUMNS", "render_csv"]

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
    """One row per unit (NOW holders, then PAST holders), every test and operation in columns;
    then the withheld row, if anything was withheld."""
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
            u.trace_text,
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
            "; ".join(t.text for t in u.tests),
            "; ".join(o.text for o in u.operations),
        ]
        w.writerow([_csv_safe(c) for c in row])
    if report.coverage.withheld:
        cov = report.coverage
        told = {"document_number": report.document_number, "holds": "withheld", "status": cov.text}
        row = [told.get(c, "") for c in CSV_COLUMNS]
        w.writerow([_csv_safe(c) for c in row])
    return buf.getvalue()
