"""The HTTP API (FastAPI), every route in one module. OpenAPI at ``/docs``.

| route | what |
| --- | --- |
| ``GET /health`` | pipeline health: sink position and counters, alert engine, stream worker |
| ``GET /trace/forward?lot=`` | forward trace: lot -> lots -> units -> systems -> customers |
| ``GET /trace/backward?serial=`` | backward trace: unit or system -> components, lots, operations, tests |
| ``GET /recall?kind=&id=&from=&to=`` | recall impact of a trigger (lot, supplier lot, station, ...) |
| ``GET /report?kind=&id=&format=&drill=`` | the auditor's recall report (HTML, PDF, CSV), or a recall drill |
| ``GET /alerts?severity=&rule=&since=&limit=`` | alerts, latest version of each, newest first |

Values reach ClickHouse only as bound query parameters (see ``queries.recall``). Errors go
through ``traceline.errors.classify``: bad input is 422, a failed service 503, with the reason
in ``detail``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Response

from queries import Trigger, backward_trace, forward_trace, recall_impact, to_jsonable
from queries.alerts import list_alerts
from queries.drill import drill_report
from queries.report import build_report, measure_freshness
from queries.report_render import MEDIA_TYPES, filename, render
from schemas.errors import InvalidInputError
from sinks.store import Store
from traceline.errors import classify

__all__ = ["create_api"]

_KINDS = "lot | supplier_lot | supplier | serial | station | operator | bench"


def create_api(
    store: Store,
    *,
    health: Callable[[], dict[str, Any]] | None = None,
    lag: Callable[[], Mapping[str, int] | None] | None = None,
) -> FastAPI:
    """The API over one open store (the store serialises calls on its handle). ``health``
    reports the parts of the running server; ``lag`` measures the consumer lag a report prints
    as data freshness."""
    api = FastAPI(
        title="traceline",
        version="0.1.0",
        description="Forward and backward traces, recall impact, recall reports and drills, alerts, "
        "pipeline health.",
    )

    def answer(fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as exc:
            failure = classify(exc)
            if failure is None:
                raise
            raise HTTPException(status_code=failure.status, detail=failure.message) from exc

    @api.get("/health", summary="Pipeline health: sink position, freshness, worker state")
    def get_health() -> dict[str, Any]:
        return {"status": "ok", **(health() if health else {})}

    @api.get("/trace/forward", summary="Forward trace: lot -> lots -> units -> systems -> customers")
    def get_forward(lot: str = Query(..., description="lot_id")) -> Any:
        return answer(lambda: to_jsonable(forward_trace(store, lot)))

    @api.get(
        "/trace/backward", summary="Backward trace: unit or system -> components, lots, operations, tests"
    )
    def get_backward(serial: str = Query(..., description="UII '<part_number>:<serial_number>'")) -> Any:
        return answer(lambda: to_jsonable(backward_trace(store, serial)))

    @api.get("/recall", summary="Recall impact of a trigger (lot, supplier lot, station, operator, bench...)")
    def get_recall(
        kind: str = Query("lot", description=_KINDS),
        id: str = Query(..., description="the trigger's id"),  # noqa: A002 - API field name
        start: datetime | None = Query(None, alias="from", description="window start (ISO-8601, aware)"),
        end: datetime | None = Query(None, alias="to", description="window end (ISO-8601, aware)"),
    ) -> Any:
        return answer(lambda: to_jsonable(recall_impact(store, Trigger(kind, id, start, end))))

    @api.get(
        "/report", summary="Recall report for an auditor (HTML, PDF or CSV); drill=true for a recall drill"
    )
    def get_report(
        kind: str = Query("lot", description=_KINDS),
        id: str = Query(..., description="the trigger's id"),  # noqa: A002 - API field name
        start: datetime | None = Query(None, alias="from", description="window start (ISO-8601, aware)"),
        end: datetime | None = Query(None, alias="to", description="window end (ISO-8601, aware)"),
        format: str = Query("html", description="html | pdf | csv"),  # noqa: A002 - API field name
        drill: bool = Query(False, description="run as a recall drill (timed steps, drill banner)"),
        prepared_by: str = Query("", description="name for the 'prepared by' line"),
    ) -> Response:
        """With ``drill=true`` the request runs a recall drill (timed steps) and the step timings
        also come back as JSON in the ``X-Traceline-Drill`` header."""
        fmt = format.lower()

        def make() -> tuple[Any, bytes, dict[str, str]]:
            if fmt not in MEDIA_TYPES:
                raise InvalidInputError(f"unknown format {format!r}: use html, pdf or csv", "format")
            trigger = Trigger(kind, id, start, end)
            lag_now, note = _lag(lag)
            if drill:
                report, content, timings = drill_report(
                    store, trigger, fmt, lag=lag_now, lag_note=note, prepared_by=prepared_by
                )
                return report, content, {"X-Traceline-Drill": json.dumps(timings)}
            fresh = measure_freshness(store, lag_now, None if lag_now is not None else note)
            report = build_report(store, trigger, freshness=fresh, prepared_by=prepared_by)
            return report, render(report, fmt), {}

        report, content, headers = answer(make)
        disposition = "inline" if fmt == "html" else "attachment"
        headers["Content-Disposition"] = f'{disposition}; filename="{filename(report, fmt)}"'
        headers["X-Traceline-Document"] = report.document_number
        return Response(content=content, media_type=MEDIA_TYPES[fmt], headers=headers)

    @api.get("/alerts", summary="Alerts (latest version of each), newest first")
    def get_alerts(
        severity: str | None = Query(None, description="INFO | WARNING | CRITICAL"),
        rule: str | None = Query(None, description="e.g. NC_RAISED, HELD_LOT_USED, SHIPPING_GATE"),
        since: datetime | None = Query(None, description="raised at or after (ISO-8601, aware)"),
        limit: int = Query(100, ge=1, le=10_000),
    ) -> Any:
        return answer(
            lambda: to_jsonable(list_alerts(store, severity=severity, rule=rule, since=since, limit=limit))
        )

    return api


def _lag(lag: Callable[[], Mapping[str, int] | None] | None) -> tuple[Mapping[str, int] | None, str]:
    """The consumer lag for a report's freshness line, or None and why not."""
    if lag is None:
        return None, "no Kafka lag source configured"
    try:
        measured = lag()
    except Exception as exc:  # noqa: BLE001 - lag is informative; the report still runs and says why
        return None, f"lag unavailable: {exc}"
    return (measured, "") if measured is not None else (None, "no consumer lag measured")
