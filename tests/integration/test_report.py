"""Recall report and recall drill from a simulated plant, on the real engine (chdb).

The plant: ``producers.simulator`` events -> pydantic (``parse_event``) -> Avro records
(``to_avro``) -> the sink's row builders; genealogy change records from ``tests.support.run_genealogy``
over the same events. The PDF is parsed back with pypdf.
"""

from __future__ import annotations

import csv
import io
import json
import os
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from producers.simulator import simulate
from queries import Trigger, recall_impact
from schemas.jsonform import parse_event
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

    store, fan = plant
    lot = _big_lot(fan)
    trigger = Trigger("lot", lot)
    report = build_report(store, trigger, freshness={"streams": 0, "sink": 3}, prepared_by="Q. Engineer")
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
    assert all(
        u.met_trigger is not None and lot in u.met_trigger.consumed_lot_ids
        for u in report.now_units
        if u.trace[-2] == f"lot:{lot}"
    )
    assert any(x.ref.startswith("AS9100D 8.5.2") for x in report.evidence)
    assert any(x.ref.startswith("AQAP-2110") for x in report.evidence)

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


def test_report_api_serves_each_format(plant: tuple[Store, dict[str, int]]) -> None:
    from fastapi.testclient import TestClient

    from traceline.api import create_api

    store, fan = plant
    client = TestClient(create_api(store, lag=lambda: {"streams": 0, "sink": 0}))
    lot = _big_lot(fan)
    r = client.get("/report", params={"kind": "lot", "id": lot, "format": "pdf"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/pdf"
    assert r.content.startswith(b"%PDF-")
    assert "attachment" in r.headers["content-disposition"]
    r = client.get("/report", params={"kind": "lot", "id": lot, "format": "csv"})
    assert r.headers["content-type"].startswith("text/csv")
    assert r.text.splitlines()[0].startswith("document_number,holds,uii")
    r = client.get("/report", params={"kind": "lot", "id": lot, "format": "html", "drill": "true"})
    assert r.headers["content-type"].startswith("text/html") and "RECALL DRILL" in r.text
    assert "caught up" in r.text
    assert [s["step"] for s in json.loads(r.headers["x-traceline-drill"])][:2] == [
        "forward trace",
        "recall impact",
    ]
    assert client.get("/report", params={"kind": "nope", "id": "x"}).status_code == 422
    assert client.get("/report", params={"kind": "lot", "id": lot, "format": "docx"}).status_code == 422


def test_drill_writes_every_format_with_timings(plant: tuple[Store, dict[str, int]], tmp_path: Path) -> None:
    from queries.drill import run_drill

    store, fan = plant
    lot = _big_lot(fan)
    result = run_drill(store, Trigger("lot", lot), tmp_path / "drill")
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
