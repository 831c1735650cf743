"""Report renderers on a hand-built report: CSV columns, HTML escaping, a PDF that parses."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

import pytest
import typer
from typer.testing import CliRunner

from queries import LotHop, Trigger
from queries.report import (
    Freshness,
    Operation,
    RecallReport,
    ReportUnit,
    TestRecord,
    evidence_map,
)
from queries.report_csv import CSV_COLUMNS, render_csv
from queries.report_html import render_html
from queries.report_pdf import render_pdf

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
EVIL = '<script>alert("x")</script>'


def _test(uii: str, verdict: str, days: int, due_days: int) -> TestRecord:
    t = T0 + timedelta(days=days)
    return TestRecord(
        uii, t, verdict, "BENCH-1", "TP-1", "A", "CAL-1", t + timedelta(days=due_days), t, "OP-9"
    )


def _report(*, drill: bool = False, units: int = 2) -> RecallReport:
    op = Operation("PCB:1", "WO-1", "0010 SMT", "SMT-1", "OP-1", T0, T0 + timedelta(minutes=5), ["L1"], [])
    now = [
        ReportUnit(
            uii=f"PCB:{i}",
            part_number="PCB",
            holds="NOW",
            status="shipped" if i % 2 else "in_work",
            root_uii="SYS:1",
            parent_uii="LRU:1",
            path=["LRU:1", "SYS:1"],
            trace=["lot:L1", f"uii:PCB:{i}"],
            site="plant-a",
            customer_id=EVIL if i == 1 else ("=HYPERLINK(1)" if i % 2 else None),
            destination_site="BASE-1" if i % 2 else None,
            end_system="TAIL-7" if i % 2 else None,
            met_trigger=op,
            tests=[_test(f"PCB:{i}", "FAIL", 1, 30), _test(f"PCB:{i}", "PASS", 2, -1)],
            operations=[op],
        )
        for i in range(1, units + 1)
    ]
    past = ReportUnit(
        uii="LRU:9",
        part_number="LRU",
        holds="PAST",
        status="in_stock",
        root_uii="LRU:9",
        held_uii="PCB:1",
        affected_uii="PCB:1",
        removed_at=T0 + timedelta(days=3),
        removal_reason="rework",
    )
    all_units = [*now, past]
    by_status: dict[str, int] = {}
    cross: dict[str, dict[str, int]] = {}
    for u in now:
        by_status[u.status] = by_status.get(u.status, 0) + 1
        row = cross.setdefault(u.customer_id or "(not shipped)", {})
        row[u.status] = row.get(u.status, 0) + 1
    r = RecallReport(
        document_number="RR-TEST-0001",
        trigger=Trigger("lot", "L1"),
        generated_at=T0 + timedelta(days=10),
        freshness=Freshness(T0 + timedelta(days=9), T0 + timedelta(days=9), {"operations": T0}, {"sink": 0}),
        units=all_units,
        by_status=by_status,
        by_customer={},
        by_site={"plant-a": len(now)},
        by_customer_status=cross,
        systems=1,
        lots=[LotHop("L1", None, 0)],
        nonconformances=[
            {
                "ncr_id": "NCR-1",
                "target_kind": "LOT",
                "target_id": "L1",
                "severity": "MAJOR",
                "disposition": "PENDING",
                "description": EVIL,
                "event_time": T0,
            }
        ],
        prepared_by="Ada <b>Lovelace</b>",
        drill_timings=[("recall impact", 0.0123, "2 units")] if drill else None,
    )
    r.evidence = evidence_map(r)
    return r


def test_csv_has_the_documented_columns_and_one_row_per_unit() -> None:
    r = _report()
    rows = list(csv.reader(io.StringIO(render_csv(r))))
    assert rows[0] == CSV_COLUMNS
    body = [dict(zip(CSV_COLUMNS, row, strict=True)) for row in rows[1:]]
    assert [(b["uii"], b["holds"]) for b in body] == [("PCB:1", "now"), ("PCB:2", "now"), ("LRU:9", "past")]
    first = body[0]
    assert first["final_system"] == "SYS:1"
    assert first["path_from_trigger"] == "lot:L1 > uii:PCB:1"
    assert first["met_work_order"] == "WO-1" and first["met_station"] == "SMT-1"
    assert (first["tests"], first["failed_tests"], first["out_of_calibration_tests"]) == ("2", "1", "1")
    assert first["last_verdict"] == "PASS"
    assert "OUT-OF-CALIBRATION" in first["test_history"]
    assert first["customer_id"] == EVIL  # CSV keeps the text; it is not a formula
    assert "rework" in body[2]["path_from_trigger"]


def test_csv_neutralises_spreadsheet_formulas() -> None:
    rows = list(csv.DictReader(io.StringIO(render_csv(_report(units=3)))))
    assert rows[2]["customer_id"] == "'=HYPERLINK(1)"


def test_html_escapes_hostile_strings_and_is_self_contained() -> None:
    page = render_html(_report())
    assert "<script" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "Ada &lt;b&gt;Lovelace&lt;/b&gt;" in page
    assert "<link" not in page and "src=" not in page
    for needed in (
        "RR-TEST-0001",
        "PCB:1",
        "PCB:2",
        "LRU:9",
        "PAST",
        "AS9100D 8.5.2",
        "AQAP-2110",
        "Approved by",
    ):
        assert needed in page
    assert "RECALL DRILL" not in page
    assert "RECALL DRILL" in render_html(_report(drill=True))


def test_out_of_calibration_is_due_before_the_test() -> None:
    assert _test("X:1", "PASS", 0, -1).out_of_calibration
    assert not _test("X:1", "PASS", 0, 1).out_of_calibration


def test_pdf_parses_with_page_numbers_and_escaped_text(tmp_path) -> None:  # noqa: ANN001
    pypdf = pytest.importorskip("pypdf")
    path = tmp_path / "r.pdf"
    render_pdf(_report(units=60), path)
    reader = pypdf.PdfReader(str(path))
    n = len(reader.pages)
    assert n > 1
    text = "\n".join(p.extract_text() for p in reader.pages)
    assert f"page 1 of {n}" in text and f"page {n} of {n}" in text
    assert "PCB:60" in text and EVIL in text  # shown as text, not interpreted as markup
    assert reader.metadata.title == "Recall report RR-TEST-0001"


def _cli() -> typer.Typer:
    from traceline.cli_report import drill_command, report_command

    app = typer.Typer()
    app.command("report")(report_command)
    app.command("drill")(drill_command)
    return app


@pytest.mark.parametrize(
    "args",
    [
        ["report", "--format", "pdf"],
        ["report", "--lot", "L1", "--serial", "X:1"],
        ["report", "--lot", "L1", "--format", "docx"],
        ["report", "--lot", "L1", "--format", "pdf", "--out", "-"],
        ["drill", "--lot", "L1", "--formats", "html,xls"],
    ],
)
def test_cli_usage_errors_exit_2(args: list[str], tmp_path) -> None:  # noqa: ANN001
    result = CliRunner().invoke(_cli(), [*args, "--data-dir", str(tmp_path)])
    assert result.exit_code == 2, result.output
