"""Recall report and recall drill from a simulated plant, on the real engine (chdb).

The plant: ``producers.simulator`` events -> pydantic (``parse_event``) -> Avro records
(``to_avro``) -> the sink's row builders; genealogy change records from ``tests.support.run_genealogy``
over the same events, and nonconformances raised on a supplier lot, an upstream lot, a supplier
and affected units (``ncs``). The PDF is parsed back with pypdf.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import re
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from producers.simulator import simulate
from queries import Trigger, recall_impact
from schemas.jsonform import parse_event
from schemas.models import NonconformanceRaised
from sinks.rows import SinkRecord, genealogy_rows, rows_for_batch
from sinks.store import Store
from tests.support import run_genealogy

pypdf = pytest.importorskip("pypdf")
pytestmark = pytest.mark.integration

UNITS = 400
SEED = 3


def load_plant(store: Store, units: int, seed: int) -> dict[str, int]:
    """Simulated plant -> store, as the sink would write it. Returns lot -> consumer count."""
    events = [parse_event(d) for d in simulate(units, seed=seed)]
    now = datetime.now(UTC)
    records = [SinkRecord(e.type, e.to_avro(), "traceline.events", 0, i, now) for i, e in enumerate(events)]
    for start in range(0, len(records), 5_000):
        store.write_batch(rows_for_batch(records[start : start + 5_000]), token=f"sim:{seed}:{start}")
    changes: list[dict[str, Any]] = []
    run_genealogy(({**e.to_avro(), "type": e.type} for e in events), changes=changes)
    store.write_batch(genealogy_rows(changes), token=f"gen:{seed}")
    fan: Counter[str] = Counter()
    for e in events:
        if e.type == "OperationCompleted":
            for c in e.consumed_lots:  # type: ignore[attr-defined]
                fan[c.lot_id] += 1
    return dict(fan)


@pytest.fixture(scope="module")
def plant(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Store, dict[str, int]]]:
    dsn = os.environ.get("TRACELINE_CLICKHOUSE_DSN", "").strip()
    if dsn:
        db = f"traceline_test_{uuid.uuid4().hex[:10]}"
    else:
        dsn, db = f"chdb://{tmp_path_factory.mktemp('report') / 'ch'}", "traceline"
    store = Store.open(dsn, db)
    fan = load_plant(store, UNITS, SEED)
    yield store, fan
    if dsn.startswith("http"):
        store.command(f"DROP DATABASE IF EXISTS `{db}`")
    store.close()


def _big_lot(fan: dict[str, int]) -> str:
    return max(fan.items(), key=lambda kv: (kv[1], kv[0]))[0]


def _pdf_text(data: bytes) -> tuple[int, str]:
    reader = pypdf.PdfReader(io.BytesIO(data))
    return len(reader.pages), "\n".join(p.extract_text() for p in reader.pages)


def test_report_of_a_big_lot_renders_html_pdf_csv(
    plant: tuple[Store, dict[str, int]], tmp_path: Path
) -> None:
    from queries.report import build_report
    from queries.report_csv import render_csv
    from queries.report_html import render_html
    from queries.report_pdf import render_pdf
    from queries.report_sections import evidence_map

    store, fan = plant
    lot = _big_lot(fan)
    trigger = Trigger("lot", lot)
    report = build_report(store, trigger, freshness={"streams": 0, "sink": 3}, prepared_by=" Q. Engineer ")
    impact = recall_impact(store, trigger)

    # the data: the recall's units, now and past, with totals and freshness
    assert {u.uii for u in report.now_units} == {u.uii for u in impact.units}
    assert {u.uii for u in report.past_units} == {p.uii for p in impact.past}
    assert len(report.now_units) >= 60
    assert report.by_status == impact.by_status
    assert sum(sum(v.values()) for v in report.by_customer_status.values()) == len(report.now_units)
    assert report.generated_at.tzinfo is not None
    assert report.freshness.latest_event_time is not None
    assert report.freshness.consumer_lag == {"streams": 0, "sink": 3}
    assert report.test_count > 0
    assert report.prepared_by == "Q. Engineer"
    assert all(
        u.met_trigger is not None and lot in u.met_trigger.consumed_lot_ids
        for u in report.now_units
        if u.trace[-2] == f"lot:{lot}"
    )
    assert any(x.ref.startswith("AS9100D 8.5.2") for x in evidence_map(report))
    assert any(x.ref.startswith("AQAP-2110") for x in evidence_map(report))

    # CSV: one row per unit
    rows = list(csv.DictReader(io.StringIO(render_csv(report))))
    assert len(rows) == len(report.units)
    assert {r["uii"] for r in rows if r["holds"] == "now"} == {u.uii for u in impact.units}

    # HTML: self-contained, every unit
    page = render_html(report)
    assert "<script" not in page and "http://" not in page and "https://" not in page
    for u in impact.units:
        assert u.uii in page

    # PDF: parses, several pages numbered "page X of N", units, totals
    path = tmp_path / "report.pdf"
    render_pdf(report, path)
    pages, text = _pdf_text(path.read_bytes())
    assert pages > 1
    assert "page 1 of " + str(pages) in text
    assert f"page {pages} of {pages}" in text
    flat = text.replace("\n", "")
    for u in impact.units:
        assert u.uii in flat, u.uii
    assert report.document_number in text
    assert "Prepared by" in text and "Approved by" in text
    assert "AS9100D 8.5.2" in text
    for status in impact.by_status:
        assert status in text
    # the totals row: shipped / in_stock / in_work counts, then the total (one cell per line)
    lines = [line.strip() for line in text.splitlines()]
    head = lines.index("customer")
    statuses = lines[head + 1 : lines.index("total", head)]
    after = lines[lines.index("Total", head) + 1 :][: len(statuses) + 1]
    assert after == [str(impact.by_status.get(s, 0)) for s in statuses] + [str(len(impact.units))]


def test_report_api_serves_each_format(plant: tuple[Store, dict[str, int]], tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from traceline.api import create_api
    from traceline.auth import Authenticator, TokenStore

    store, fan = plant
    tokens = TokenStore(tmp_path / "tokens.json")  # an administrator's token: access is test_access.py
    admin = tokens.create("test-admin", "administrator", "*")[1]
    client = TestClient(
        create_api(store, lag=lambda: {"streams": 0, "sink": 0}, auth=Authenticator(tokens)),
        headers={"Authorization": f"Bearer {admin}"},
    )
    lot = _big_lot(fan)
    missing = client.get("/report", params={"kind": "lot", "id": lot, "format": "pdf"})
    assert missing.status_code == 422 and "prepared_by" in missing.text
    client.params = {"prepared_by": "Q. Engineer"}
    r = client.get("/report", params={"kind": "lot", "id": lot, "format": "pdf"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/pdf"
    assert r.content.startswith(b"%PDF-")
    assert "attachment" in r.headers["content-disposition"]
    r = client.get("/report", params={"kind": "lot", "id": lot, "format": "csv"})
    assert r.headers["content-type"].startswith("text/csv")
    assert r.text.splitlines()[0].startswith("document_number,holds,uii")
    r = client.get("/report", params={"kind": "lot", "id": lot, "format": "html"})
    assert r.headers["content-type"].startswith("text/html") and "caught up" in r.text
    assert "RECALL DRILL" not in r.text
    # a drill: one request, every format from one report (the shape is traceline.api's)
    r = client.get("/drill", params={"kind": "lot", "id": lot, "formats": "html,csv"})
    assert r.status_code == 200, r.text
    drill = r.json()
    number = drill["document_number"]
    assert [s["step"] for s in drill["steps"]][:2] == ["forward trace", "recall impact"]
    html = base64.b64decode(drill["documents"]["html"]["content_base64"]).decode()
    assert "RECALL DRILL" in html and number in html
    table = base64.b64decode(drill["documents"]["csv"]["content_base64"]).decode()
    assert {row["document_number"] for row in csv.DictReader(io.StringIO(table))} == {number}
    assert client.get("/report", params={"kind": "nope", "id": "x"}).status_code == 422
    assert client.get("/report", params={"kind": "lot", "id": lot, "format": "docx"}).status_code == 422


def test_drill_writes_every_format_with_timings(plant: tuple[Store, dict[str, int]], tmp_path: Path) -> None:
    from queries.drill import run_drill

    store, fan = plant
    lot = _big_lot(fan)
    result = run_drill(store, Trigger("lot", lot), tmp_path / "drill", prepared_by="Q. Engineer")
    assert set(result.files) == {"html", "pdf", "csv"}
    assert all(p.exists() and p.stat().st_size > 0 for p in result.files.values())
    steps = [s for s, _, _ in result.timings]
    assert steps[:5] == [
        "forward trace",
        "recall impact",
        "test histories and production records",
        "lot origin, receipts, status and nonconformances",
        "data freshness",
    ]
    assert steps[5:] == ["render html", "render pdf", "render csv"]
    assert all(t >= 0 for _, t, _ in result.timings)
    summary = json.loads(result.summary_path.read_text())  # type: ignore[union-attr]
    assert [s["step"] for s in summary["steps"]] == steps
    assert summary["units_now"] == len(result.report.now_units)
    page = result.files["html"].read_text()
    assert "RECALL DRILL" in page and "forward trace" in page and " ms" in page
    _, text = _pdf_text(result.files["pdf"].read_bytes())
    assert "RECALL DRILL" in text and "recall impact" in text and "render html" in text


# ----------------------------------------------------------------------------- NCs in scope


def _raise_ncs(store: Store, ncs: list[dict[str, Any]]) -> None:
    now = datetime.now(UTC)
    events = [
        NonconformanceRaised(
            event_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"test-report-ncr:{x['ncr_id']}")),
            event_time=now,
            source="test-quality",
            site="plant-a",
            program="PRG-TEST",
            severity="CRITICAL",
            disposition="PENDING",
            description="raised by the report test",
            **x,
        )
        for x in ncs
    ]
    records = [
        SinkRecord(e.type, e.to_avro(), "traceline.events", 0, 10**9 + i, now) for i, e in enumerate(events)
    ]
    store.write_batch(rows_for_batch(records), token="test-report-ncs")


@pytest.fixture(scope="module")
def ncs(plant: tuple[Store, dict[str, int]]) -> dict[str, str]:
    """NCs like the demo's: on the supplier lot a plant lot was received as, on the lot (and the
    supplier lot, and the supplier) a transformed lot was made from, on an affected unit and its
    assembly. Returns what they are on."""
    store, fan = plant
    received = {
        r["lot_id"]: r
        for r in store.query("SELECT lot_id, supplier_id, supplier_lot, event_time FROM material_received")
    }
    made = store.query("SELECT lot_id, input_lot_ids FROM lot_transformed ORDER BY lot_id")
    lot = max((x for x in fan if x in received), key=lambda x: (fan[x], x))
    transformed, source = max(
        (
            (r["lot_id"], r["input_lot_ids"][0])
            for r in made
            if r["input_lot_ids"][0] in received and r["lot_id"] in fan
        ),
        key=lambda t: (fan[t[0]], t[0]),
    )
    unit = next(u for u in recall_impact(store, Trigger("lot", lot)).units if u.parent_uii)
    rec, src = received[lot], received[source]
    at = src["event_time"]
    hour = timedelta(hours=1)
    _raise_ncs(
        store,
        [
            {
                "ncr_id": "NCR-T-SLOT",
                "target_kind": "SUPPLIER_LOT",
                "target_id": f"{rec['supplier_id']}:{rec['supplier_lot']}",
            },
            {"ncr_id": "NCR-T-UP", "target_kind": "LOT", "target_id": source},
            {
                "ncr_id": "NCR-T-UPSLOT",
                "target_kind": "SUPPLIER_LOT",
                "target_id": f"{src['supplier_id']}:{src['supplier_lot']}",
            },
            {
                "ncr_id": "NCR-T-SUP",
                "target_kind": "SUPPLIER",
                "target_id": src["supplier_id"],
                "window_start": at - hour,
                "window_end": at + hour,
            },
            {
                "ncr_id": "NCR-T-SUP-OLD",
                "target_kind": "SUPPLIER",
                "target_id": src["supplier_id"],
                "window_start": at - 900 * hour,
                "window_end": at - 800 * hour,
            },
            {"ncr_id": "NCR-T-UNIT", "target_kind": "SERIAL", "target_id": unit.uii},
            {"ncr_id": "NCR-T-ASSY", "target_kind": "SERIAL", "target_id": unit.parent_uii},
        ],
    )
    return {
        "lot": lot,
        "transformed": transformed,
        "source": source,
        "unit": unit.uii,
        "parent": unit.parent_uii or "",
    }


def _scopes(report: Any) -> dict[str, str]:
    return {x["ncr_id"]: x["scope"] for x in report.nonconformances if x["ncr_id"].startswith("NCR-T-")}


def test_report_of_a_transformed_lot_lists_ncs_upstream_on_its_supplier_lot_and_supplier(
    plant: tuple[Store, dict[str, int]], ncs: dict[str, str]
) -> None:
    from queries.report import build_report
    from queries.report_html import render_html

    store, _ = plant
    t, src = ncs["transformed"], ncs["source"]
    report = build_report(store, Trigger("lot", t), prepared_by="Q. Engineer")
    scopes = _scopes(report)
    assert scopes["NCR-T-UP"] == f"on lot upstream of {t}"
    assert scopes["NCR-T-UPSLOT"] == f"on supplier lot of {src} (upstream of {t})"
    assert scopes["NCR-T-SUP"] == f"on supplier, window covers the receipt of {src} (upstream of {t})"
    assert "NCR-T-SUP-OLD" not in scopes  # its window does not cover the receipt
    page = render_html(report)
    assert "NCR-T-UPSLOT" in page and f"on supplier lot of {src} (upstream of {t})" in page
    assert "no nonconformance report recorded" not in page


def test_drill_of_a_received_lot_lists_its_supplier_lot_nc_and_the_units_ncs_with_one_document_number(
    plant: tuple[Store, dict[str, int]], ncs: dict[str, str]
) -> None:
    from queries.drill import drill_documents

    store, _ = plant
    lot = ncs["lot"]
    report, docs, timings = drill_documents(
        store, Trigger("lot", lot), ["html", "pdf", "csv"], prepared_by="Q. Engineer"
    )
    scopes = _scopes(report)
    assert scopes["NCR-T-SLOT"] == f"on supplier lot of {lot}"
    assert scopes["NCR-T-UNIT"] == f"on unit {ncs['unit']}"
    assert scopes["NCR-T-ASSY"].startswith("on assembly holding") or scopes["NCR-T-ASSY"].startswith(
        "on final system of"
    )
    assert ncs["unit"] in scopes["NCR-T-ASSY"] or "more)" in scopes["NCR-T-ASSY"]
    note = dict((s, n) for s, _, n in timings)["lot origin, receipts, status and nonconformances"]
    assert note.endswith(f"{len(report.nonconformances)} NCRs") and len(report.nonconformances) >= 3

    # one drill, three formats, one document number
    number = report.document_number
    html = docs["html"].decode()
    assert number in html and "NCR-T-SLOT" in html
    _, text = _pdf_text(docs["pdf"])
    assert number in text and "NCR-T-SLOT" in text.replace("\n", "")
    numbers = re.compile(r"R[DR]-\d{8}-[0-9A-F]{10}")
    assert set(numbers.findall(html)) == set(numbers.findall(text)) == {number}  # every page header too
    rows = list(csv.DictReader(io.StringIO(docs["csv"].decode())))
    assert rows and {r["document_number"] for r in rows} == {number}
    assert [s for s, _, _ in timings][-3:] == ["render html", "render pdf", "render csv"]
