"""Report renderers on a hand-built report (CSV columns, HTML escaping, a PDF that parses), the
nonconformances in scope on a fake store (what is read, with bound parameters, and why each NC
is listed), the "prepared by" check and safe file names."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from queries import LotHop, Trigger
from queries.drill import drill_documents, drill_report, run_drill
from queries.report import (
    Coverage,
    Freshness,
    Operation,
    RecallReport,
    ReportUnit,
    TestRecord,
    build_report,
    check_prepared_by,
    scope_records,
)
from queries.report_csv import CSV_COLUMNS, render_csv
from queries.report_html import render_html
from queries.report_pdf import render_pdf
from queries.report_render import filename
from queries.report_sections import evidence_map
from schemas.errors import InvalidInputError

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
                "scope": "on the trigger",
            }
        ],
        prepared_by="Ada <b>Lovelace</b>",
        drill_timings=[("recall impact", 0.0123, "2 units")] if drill else None,
    )
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


def test_a_report_cut_to_programmes_says_on_its_face_what_it_withheld(tmp_path) -> None:  # noqa: ANN001
    pypdf = pytest.importorskip("pypdf")
    r = _report()
    r.coverage = Coverage(["PRG-A"], withheld_units=3, withheld_past=1, withheld_ncrs=2)
    told = "3 units holding the part now, 1 past holder, 2 nonconformance reports"
    assert r.coverage.text == f"programmes PRG-A only; WITHHELD as outside them (counted, not listed): {told}"
    rows = list(csv.DictReader(io.StringIO(render_csv(r))))
    assert [row["holds"] for row in rows] == ["now", "now", "past", "withheld"]
    assert rows[-1]["status"] == r.coverage.text and rows[-1]["uii"] == ""
    assert rows[-1]["document_number"] == r.document_number
    assert told in render_html(r)
    render_pdf(r, tmp_path / "r.pdf")
    pages = pypdf.PdfReader(str(tmp_path / "r.pdf")).pages
    text = " ".join(" ".join(p.extract_text() for p in pages).split())
    assert "Programmes covered" in text and "3 units holding the part now" in text


def test_a_report_that_withheld_nothing_says_which_programmes_it_covers() -> None:
    r = _report()
    assert r.coverage.text == "every programme"
    assert "every programme" in render_html(r)
    assert [row["holds"] for row in csv.DictReader(io.StringIO(render_csv(r)))] == ["now", "now", "past"]
    r.coverage = Coverage(["PRG-A", "PRG-B"])
    assert r.coverage.text == "programmes PRG-A, PRG-B only; nothing outside them was withheld"
    assert "withheld" not in {row["holds"] for row in csv.DictReader(io.StringIO(render_csv(r)))}
    one = Coverage(["PRG-A"], withheld_units=1)
    assert one.withheld_text == "1 unit holding the part now"


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


def test_the_evidence_map_cites_both_standards() -> None:
    refs = [x.ref for x in evidence_map(_report())]
    assert any(r.startswith("AS9100D 8.5.2") for r in refs) and any(r.startswith("AQAP-2110") for r in refs)


# ----------------------------------------------------------------------------- NCs in scope


class _FakeStore:
    """Answers the report's scope reads from canned rows; NCs filtered by the bound keys."""

    def __init__(self, ncrs: list[dict[str, Any]]) -> None:
        self.ncrs = ncrs
        self.statements: list[tuple[str, dict[str, Any]]] = []

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        params = params or {}
        self.statements.append((sql, params))
        table = re.search(r"FROM (\w+)", sql).group(1)  # type: ignore[union-attr]
        if table == "lot_transformed":  # LB was made from LA, LA from LR (received)
            made = {"LB": ("LA", "SPLIT"), "LA": ("LR", "PROCESS")}
            return [
                {
                    "lot_id": lot,
                    "part_number": "P",
                    "transformation": made[lot][1],
                    "input_lot_ids": [made[lot][0]],
                    "input_quantities": [1.0],
                    "station_id": "ST-1",
                    "event_time": T0,
                }
                for lot in params["l"]
                if lot in made
            ]
        if table == "material_received":
            row = {"part_number": "P", "quantity": 5.0, "unit_of_measure": "EA", "coc_reference": "C1"}
            row |= {"inspection_result": "ACCEPTED", "event_time": T0}
            return [{**row, "lot_id": "LR", "supplier_id": "SUP", "supplier_lot": "SL9"}]
        if table == "lot_status":
            return []
        assert table == "nonconformances"
        assert "{" not in "".join(str(v) for k, v in params.items() if k.startswith("k"))
        keys = {(params[f"k{n}"], i) for n in range(9) if f"k{n}" in params for i in params[f"i{n}"]}
        assert all(v not in sql for _, v in keys)  # bound, not in the text
        return [x for x in self.ncrs if (x["target_kind"], x["target_id"]) in keys]


def _nc(
    ncr: str, kind: str, target: str, days: int = 0, window: tuple[int, int] | None = None
) -> dict[str, Any]:
    return {
        "ncr_id": ncr,
        "target_kind": kind,
        "target_id": target,
        "severity": "CRITICAL",
        "disposition": "PENDING",
        "description": "d",
        "event_time": T0 + timedelta(days=days),
        "window_start": T0 + timedelta(days=window[0]) if window else None,
        "window_end": T0 + timedelta(days=window[1]) if window else None,
        "event_id": f"ev-{ncr}",
    }


def test_scope_lists_ncs_on_the_trigger_upstream_lots_supplier_lots_suppliers_and_units() -> None:
    ncrs = [
        _nc("N-TRIG", "LOT", "LB"),
        _nc("N-UP", "LOT", "LA", 1),
        _nc("N-UP2", "LOT", "LR", 2),
        _nc("N-SLOT", "SUPPLIER_LOT", "SUP:SL9", 3),
        _nc("N-SUP", "SUPPLIER", "SUP", 4, window=(-1, 1)),  # covers the receipt at T0
        _nc("N-SUP-OLD", "SUPPLIER", "SUP", 5, window=(-30, -20)),  # does not
        _nc("N-SUP-ALL", "SUPPLIER", "SUP", 6),  # no window: every receipt
        _nc("N-DOWN", "LOT", "LC", 7),
        _nc("N-UNIT", "SERIAL", "PCB:2", 8),
        _nc("N-LRU", "SERIAL", "LRU:1", 9),
        _nc("N-SYS", "SERIAL", "SYS:1", 10),
        _nc("N-PAST", "SERIAL", "LRU:9", 11),
        _nc("N-OTHER", "SUPPLIER_LOT", "SUP:SL1", 12),
        _nc("N-OTHER2", "SERIAL", "PCB:99", 13),
    ]
    store = _FakeStore(ncrs)
    lots = [LotHop("LB", None, 0), LotHop("LC", "LB", 1, "SPLIT")]
    receipts, _, listed, upstream = scope_records(store, Trigger("lot", "LB"), lots, _report().units)
    assert [x["lot_id"] for x in upstream] == ["LB", "LA"] and [x["lot_id"] for x in receipts] == ["LR"]
    why = {x["ncr_id"]: x["scope"] for x in listed}
    assert why == {
        "N-TRIG": "on the trigger",
        "N-UP": "on lot upstream of LB",
        "N-UP2": "on lot upstream of LB",
        "N-SLOT": "on supplier lot of LR (upstream of LB)",
        "N-SUP": "on supplier, window covers the receipt of LR (upstream of LB)",
        "N-SUP-ALL": "on supplier of LR (upstream of LB)",
        "N-DOWN": "on lot in scope, made from LB",
        "N-UNIT": "on unit PCB:2",
        "N-LRU": "on assembly holding PCB:1, PCB:2",
        "N-SYS": "on final system of PCB:1, PCB:2",
        "N-PAST": "on past holder LRU:9 (held PCB:1)",
    }
    assert [x["ncr_id"] for x in listed] == [x["ncr_id"] for x in ncrs if x["ncr_id"] in why]  # by time
    nc_reads = [p for sql, p in store.statements if "FROM nonconformances" in sql]
    assert len(nc_reads) == 1 and len(store.statements) == 6  # 3 lineage reads, receipts, status, NCs


def test_scope_of_a_supplier_lot_trigger_and_a_serial_trigger() -> None:
    ncrs = [_nc("N-SLOT", "SUPPLIER_LOT", "SUP:SL9"), _nc("N-LOT", "LOT", "LR", 1)]
    store = _FakeStore(ncrs)
    _, _, listed, _ = scope_records(store, Trigger("supplier_lot", "SUP:SL9"), [LotHop("LR", None, 0)])
    assert {x["ncr_id"]: x["scope"] for x in listed} == {
        "N-SLOT": "on the trigger",
        "N-LOT": "on lot in scope",
    }
    store = _FakeStore([_nc("N-U", "SERIAL", "PCB:1")])
    _, _, listed, _ = scope_records(store, Trigger("serial", "PCB:1"), [], _report().units)
    assert [(x["ncr_id"], x["scope"]) for x in listed] == [("N-U", "on the trigger")]
    assert len(store.statements) == 1  # no lots: the NCs only


def test_the_nc_table_says_why_each_nc_is_listed() -> None:
    r = _report()
    r.nonconformances[0]["scope"] = "on supplier lot of LR (upstream of L1)"
    page = render_html(r)
    assert "in scope because" in page and "on supplier lot of LR (upstream of L1)" in page
    r.nonconformances = []
    assert "no nonconformance report recorded on the trigger, the lots in scope" in render_html(r)


# ----------------------------------------------------------------------------- prepared by, file names


class _NoStore:
    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        raise AssertionError("nothing may be read before prepared_by is checked")


@pytest.mark.parametrize("name", ["", "   ", "\t\n"])
def test_an_empty_prepared_by_is_refused_before_anything_is_read(name: str, tmp_path) -> None:  # noqa: ANN001
    calls = [
        lambda: build_report(_NoStore(), Trigger("lot", "L1"), prepared_by=name),
        lambda: drill_documents(_NoStore(), Trigger("lot", "L1"), ["html"], prepared_by=name),
        lambda: drill_report(_NoStore(), Trigger("lot", "L1"), "pdf", prepared_by=name),
        lambda: run_drill(_NoStore(), Trigger("lot", "L1"), tmp_path / "d", prepared_by=name),
    ]
    for call in calls:
        with pytest.raises(InvalidInputError) as err:
            call()
        assert err.value.field == "prepared_by" and str(err.value).startswith("prepared_by ")
    assert not (tmp_path / "d").exists()
    assert check_prepared_by("  Q. Engineer ") == "Q. Engineer"


def test_a_drill_refuses_an_unknown_or_missing_format_before_anything_is_read() -> None:
    for formats in (["html", "docx"], []):
        with pytest.raises(InvalidInputError) as err:
            drill_documents(_NoStore(), Trigger("lot", "L1"), formats, prepared_by="Q. Engineer")
        assert err.value.field == "format"


@pytest.mark.parametrize("ident", ["ÄÖ/..\\ x", "../../etc/passwd", 'a"b\r\nc;d', "..", "x" * 500, "Lot 7 ✓"])
def test_a_report_file_name_is_safe_ascii(ident: str) -> None:
    r = _report()
    r.trigger = Trigger("lot", ident)
    for fmt in ("html", "pdf", "csv"):
        name = filename(r, fmt)
        assert re.fullmatch(r"RR-TEST-0001_lot(-[A-Za-z0-9_.-]+)?\." + fmt, name), name
        assert ".." not in name and len(name) < 120
    r.trigger = Trigger("lot", "ÄÖ/..\\ x")
    assert filename(r, "pdf") == "RR-TEST-0001_lot-_x.pdf"
    with pytest.raises(InvalidInputError):
        filename(r, "docx")


def test_an_ncr_decided_later_is_listed_once_with_its_current_disposition() -> None:
    from queries.report import _latest_per_ncr

    t0 = datetime(2026, 1, 5, tzinfo=UTC)
    raised = {"ncr_id": "NCR-1", "disposition": "PENDING", "severity": "MAJOR", "event_time": t0}
    decided = {**raised, "disposition": "SCRAP", "event_time": t0 + timedelta(days=2)}
    earlier = t0 - timedelta(hours=1)
    other = {"ncr_id": "NCR-0", "disposition": "REWORK", "severity": "MINOR", "event_time": earlier}
    got = _latest_per_ncr([other, raised, decided])
    assert [(r["ncr_id"], r["disposition"], r["event_time"]) for r in got] == [
        ("NCR-0", "REWORK", t0 - timedelta(hours=1)),
        ("NCR-1", "SCRAP", t0),  # the current disposition, raised at the first record
    ]
