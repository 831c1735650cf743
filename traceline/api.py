"""The HTTP API (FastAPI), every route in one module. OpenAPI at ``/openapi.json``, served
documentation at ``/docs`` (Swagger UI) and ``/redoc`` from assets in the package (no CDN).

| route | what |
| --- | --- |
| ``GET /health`` | liveness, with the status derived from every part (ok / degraded / failing) |
| ``GET /ready`` | readiness: 200 when every part is ok, else 503 with the problems |
| ``GET /ledger`` | the sink's ledger per events partition |
| ``GET /trace/forward?lot=`` | forward trace: lot -> lots -> units -> systems -> customers |
| ``GET /trace/backward?serial=`` | backward trace: unit or system -> components, lots, operations, tests |
| ``GET /recall?kind=&id=&from=&to=`` | recall impact of a trigger (lot, supplier lot, station, ...) |
| ``GET /report?kind=&id=&format=&prepared_by=`` | the auditor's recall report (HTML, PDF, CSV) |
| ``GET /drill?kind=&id=&formats=&prepared_by=`` | a recall drill: timed steps, every format of one document |
| ``GET /alerts?severity=&rule=&since=&limit=`` | alerts, latest version of each, newest first |
| ``GET /docs``, ``GET /redoc``, ``GET /static/...`` | API documentation and its assets |

Reads go through ``traceline.backend.StoreBackend`` on the API's own store handle, the same
code the CLI runs when no server is up. Values reach ClickHouse only as bound query parameters.
Errors go through ``traceline.errors.classify``: bad input 422, an identifier the store has
never seen 404 (``detail``: kind, id, suggestions, what was searched), a failed service 503.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Response
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from queries import Trigger, to_jsonable
from queries.report_render import MEDIA_TYPES
from schemas.errors import NotFoundError
from sinks.store import Store, check_time
from traceline.backend import AlertQuery, StoreBackend
from traceline.errors import classify

__all__ = ["create_api", "STATIC_DIR"]

STATIC_DIR = Path(__file__).resolve().parent / "static"
_VENDOR = STATIC_DIR / "vendor"
_KINDS = "lot | supplier_lot | supplier | serial | station | operator | bench"
_WHEN = "ISO-8601 with an offset, e.g. 2026-01-05T08:00:00Z"


def create_api(
    store: Store,
    *,
    health: Callable[[], dict[str, Any]] | None = None,
    lag: Callable[[], Mapping[str, int] | None] | None = None,
    ledger: Callable[[], dict[str, Any]] | None = None,
) -> FastAPI:
    """The API over one open store (the store serialises calls on its handle). ``health``
    reports the status derived from every part of the running server; ``lag`` measures the
    consumer lag a report prints as data freshness; ``ledger`` the sink's per-partition ledger."""
    api = FastAPI(
        title="traceline",
        version="0.1.0",
        description="Forward and backward traces, recall impact, recall reports and drills, alerts, "
        "pipeline health. Errors: 422 bad input, 404 an identifier the store has never seen "
        "(with suggestions), 503 a service failed.",
        docs_url=None,
        redoc_url=None,
    )
    backend = StoreBackend(store, lag=lambda: _lag(lag), where="the server's store")
    if _VENDOR.is_dir():
        api.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    def answer(fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as exc:
            failure = classify(exc)
            if failure is None:
                raise
            detail: Any = failure.message
            if isinstance(exc, NotFoundError):
                detail = {
                    "message": failure.message,
                    "kind": exc.kind,
                    "id": exc.ident,
                    "suggestions": exc.suggestions,
                    "searched": exc.searched,
                }
            raise HTTPException(status_code=failure.status, detail=detail) from exc

    def trigger(kind: str, ident: str, start: datetime | None, end: datetime | None) -> Trigger:
        return answer(lambda: Trigger(kind, ident, start, end))

    @api.get("/health", summary="Liveness, and the status derived from every part of the pipeline")
    def get_health() -> dict[str, Any]:
        """200 while the server answers; ``status`` is ok / degraded / failing with the
        problems (a part dead, crash-looping or stalled, store write errors, a ledger gap)."""
        if health is None:
            return {"status": "unknown", "problems": ["no pipeline runs in this process"]}
        return health()

    @api.get(
        "/ready",
        summary="Readiness: 200 when every part of the pipeline is ok, 503 otherwise",
        responses={503: {"description": "a part is not ok: see problems"}},
    )
    def get_ready() -> Response:
        state = health() if health is not None else {"status": "unknown", "problems": ["no pipeline"]}
        code = 200 if state.get("status") == "ok" else 503
        body = {"status": state.get("status"), "problems": state.get("problems", []), "lag": state.get("lag")}
        return JSONResponse(body, status_code=code)

    @api.get("/ledger", summary="The sink's ledger per events partition: read = landed + accounted for")
    def get_ledger() -> dict[str, Any]:
        return ledger() if ledger is not None else {"partitions": {}, "gap": {}, "since": None}

    @api.get("/trace/forward", summary="Forward trace: lot -> lots -> units -> systems -> customers")
    def get_forward(lot: str = Query(..., min_length=1, description="lot_id")) -> Any:
        return answer(lambda: to_jsonable(backend.forward_trace(lot)))

    @api.get(
        "/trace/backward", summary="Backward trace: unit or system -> components, lots, operations, tests"
    )
    def get_backward(
        serial: str = Query(..., min_length=1, description="UII '<part_number>:<serial_number>'"),
    ) -> Any:
        return answer(lambda: to_jsonable(backend.backward_trace(serial)))

    @api.get("/recall", summary="Recall impact of a trigger (lot, supplier lot, station, operator, bench...)")
    def get_recall(
        kind: str = Query("lot", description=_KINDS),
        id: str = Query(..., min_length=1, description="the trigger's id"),  # noqa: A002 - API field name
        start: datetime | None = Query(None, alias="from", description=f"window start ({_WHEN})"),
        end: datetime | None = Query(None, alias="to", description=f"window end ({_WHEN})"),
    ) -> Any:
        t = trigger(kind, id, start, end)
        return answer(lambda: to_jsonable(backend.recall(t)))

    @api.get("/report", summary="Recall report for an auditor (HTML, PDF or CSV)")
    def get_report(
        kind: str = Query("lot", description=_KINDS),
        id: str = Query(..., min_length=1, description="the trigger's id"),  # noqa: A002 - API field name
        prepared_by: str = Query(..., min_length=1, description="name on the 'prepared by' line"),
        start: datetime | None = Query(None, alias="from", description=f"window start ({_WHEN})"),
        end: datetime | None = Query(None, alias="to", description=f"window end ({_WHEN})"),
        format: str = Query("html", description="html | pdf | csv"),  # noqa: A002 - API field name
    ) -> Response:
        t = trigger(kind, id, start, end)
        fmt = format.lower()
        made = answer(lambda: backend.report(t, fmt, prepared_by))
        headers = {
            "Content-Disposition": _disposition("inline" if fmt == "html" else "attachment", made.filename),
            "X-Traceline-Document": made.document_number,
        }
        return Response(content=made.content, media_type=MEDIA_TYPES[fmt], headers=headers)

    @api.get("/drill", summary="Recall drill: a mock recall, every step timed, each format of one document")
    def get_drill(
        kind: str = Query("lot", description=_KINDS),
        id: str = Query(..., min_length=1, description="the trigger's id"),  # noqa: A002 - API field name
        prepared_by: str = Query(..., min_length=1, description="name on the 'prepared by' line"),
        start: datetime | None = Query(None, alias="from", description=f"window start ({_WHEN})"),
        end: datetime | None = Query(None, alias="to", description=f"window end ({_WHEN})"),
        formats: str = Query("html,pdf,csv", description="comma-separated: html,pdf,csv"),
    ) -> Any:
        t = trigger(kind, id, start, end)
        fmts = [f.strip().lower() for f in formats.split(",") if f.strip()]
        return answer(lambda: to_jsonable(backend.drill_documents(t, fmts, prepared_by)))

    @api.get("/alerts", summary="Alerts (latest version of each), newest event first, one page")
    def get_alerts(
        severity: str | None = Query(None, description="INFO | WARNING | CRITICAL"),
        rule: str | None = Query(None, description="e.g. NC_RAISED, HELD_LOT_USED, SHIPPING_GATE"),
        since: datetime | None = Query(None, description=f"event time at or after ({_WHEN})"),
        until: datetime | None = Query(None, description=f"event time before ({_WHEN})"),
        limit: int = Query(100, ge=1, le=10_000),
        offset: int = Query(0, ge=0, le=1_000_000_000),
    ) -> Any:
        """``{rows, total, offset, limit}``: ``total`` counts every alert the filter matches, so a
        page never hides that there are more."""

        def page() -> Any:
            query = AlertQuery(
                severity, rule, check_time(since, "since"), check_time(until, "until"), limit, offset
            )
            return to_jsonable(backend.alerts(query))

        return answer(page)

    @api.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        _require_assets()
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="traceline API",
            swagger_js_url="/static/vendor/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url="/static/vendor/swagger-ui/swagger-ui.css",
            swagger_favicon_url="/static/vendor/swagger-ui/favicon-32x32.png",
        )

    @api.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        _require_assets()
        return get_redoc_html(
            openapi_url="/openapi.json",
            title="traceline API",
            redoc_js_url="/static/vendor/redoc/redoc.standalone.js",
            with_google_fonts=False,
        )

    return api


def _require_assets() -> None:
    if not (_VENDOR / "swagger-ui" / "swagger-ui-bundle.js").is_file():
        raise HTTPException(
            status_code=503,
            detail="the API documentation assets are not installed: run `make install` "
            "(deploy/web/fetch_assets.py); /openapi.json works without them",
        )


def _disposition(kind: str, name: str) -> str:
    """A Content-Disposition header for any file name: an ASCII fallback and the exact name
    (RFC 6266 / RFC 5987 ``filename*``)."""
    ascii_name = "".join(c if 32 <= ord(c) < 127 and c not in '"\\;' else "_" for c in name) or "report"
    return f"{kind}; filename=\"{ascii_name}\"; filename*=UTF-8''{urllib.parse.quote(name, safe='')}"


def _lag(lag: Callable[[], Mapping[str, int] | None] | None) -> tuple[Mapping[str, int] | None, str]:
    """The consumer lag for a report's freshness line, or None and why not."""
    if lag is None:
        return None, "no Kafka lag source configured"
    try:
        measured = lag()
    except Exception as exc:  # noqa: BLE001 - lag is informative; the report still runs and says why
        return None, f"lag unavailable: {exc}"
    return (measured, "") if measured is not None else (None, "no consumer lag measured")
