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
| ``GET /search?q=``, ``GET /search/suggest?q=`` | what an identifier names (404: near misses); suggestions |
| ``GET /passport?serial=`` | one unit: lots, operations, tests, installs, shipment, NCs, alerts |
| ``GET /tree?kind=serial|lot&id=`` | a backward (unit) or forward (lot) trace as a tree, bad lots flagged |
| ``GET /freshness`` | a report's data freshness line: latest event and landing times, consumer lag |
| ``GET /alerts/stream`` | the live alert feed, server-sent events (not in the OpenAPI document: a stream) |
| ``GET /alerts/acks?alert_id=``, ``POST /alerts/acks?alert_id=`` | alert acknowledgements: read, take |
| ``GET /`` | the analyst workbench (``traceline/static/workbench/``; its data comes from the routes above) |
| ``GET /docs``, ``GET /redoc``, ``GET /static/...`` | API documentation and its assets |

Every route but ``/health`` (and the documentation pages and the workbench page, which hold no data) needs
``Authorization: Bearer <token>`` (``traceline.auth``: an API token or, when configured, an
OIDC JWT): 401 with ``WWW-Authenticate: Bearer`` without one or with a bad one, 403 for a role
that may not (a gateway may not read; ``/ledger`` and the details of ``/health`` and
``/ready`` are for administrators). ``/health`` answers anonymous callers with
``{"status": ...}`` only.

Reads go through ``traceline.backend.StoreBackend`` on the API's own store handle, the same
code the CLI runs when no server is up, scoped per caller to the caller's programmes
(``StoreBackend.scoped``: ``queries.scope``). A report carries the withheld counts in
``X-Traceline-Withheld-Units`` / ``X-Traceline-Withheld-Past``. Values reach ClickHouse only
as bound query parameters.
Errors go through ``traceline.errors.classify``: bad input 422, an identifier the store has
never seen 404 (``detail``: kind, id, suggestions, what was searched), a failed service 503.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.parse
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response, Security
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from queries import Trigger, to_jsonable
from queries.feed import FeedCursor, alert_version, alerts_landed, feed_start, visible_alert_ids
from queries.passport import unit_passport
from queries.report import measure_freshness
from queries.report_render import MEDIA_TYPES
from queries.search import resolve, suggest
from queries.tree import backward_tree, forward_tree, lot_flags, tree_lots
from schemas.errors import InvalidInputError, NotFoundError
from sinks.audit import AuditLog, entries_of
from sinks.store import Store, check_time
from traceline import audit_http as audited
from traceline.acks import ACK_FILE, AckStore
from traceline.auth import ADMIN, READ, AuthConfigError, Authenticator, Principal
from traceline.backend import WITHHELD_HEADERS, AlertQuery, StoreBackend
from traceline.errors import classify
from traceline.settings import load_settings

__all__ = ["create_api", "STATIC_DIR"]

STATIC_DIR = Path(__file__).resolve().parent / "static"
log = logging.getLogger(__name__)
_VENDOR = STATIC_DIR / "vendor"
_WORKBENCH = STATIC_DIR / "workbench"
_WORKBENCH_ASSETS = ("chart.js/chart.umd.min.js", "tabulator/tabulator.min.js", "tabulator/tabulator.min.css")
_STREAM_SECONDS = 15.0  # one feed response; the page reconnects (a stopping server waits at most this)
_POLL_SECONDS = 1.0
_KINDS = "lot | supplier_lot | supplier | serial | station | operator | bench"
_WHEN = "ISO-8601 with an offset, e.g. 2026-01-05T08:00:00Z"
_BEARER = HTTPBearer(
    auto_error=False,
    description="an API token (`traceline token create`) or, when configured, an OIDC JWT",
)
_AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "no credential, or one that is unknown, revoked or expired"},
    403: {"description": "the caller's role may not do this"},
}


def create_api(
    store: Store,
    *,
    health: Callable[[], dict[str, Any]] | None = None,
    lag: Callable[[], Mapping[str, int] | None] | None = None,
    ledger: Callable[[], dict[str, Any]] | None = None,
    auth: Authenticator | None = None,
    keys_dir: Path | None = None,
    audit: AuditLog | None = None,
) -> FastAPI:
    """The API over one open store (the store serialises calls on its handle). ``health``
    reports the status derived from every part of the running server; ``lag`` measures the
    consumer lag a report prints as data freshness; ``ledger`` the sink's per-partition ledger;
    ``auth`` who may call (default: the token file and OIDC issuer of the settings from the
    environment, ``Authenticator.for_settings``); ``audit`` records every request
    (``traceline.audit_http``) and serves ``GET /audit``."""
    authenticator = auth if auth is not None else Authenticator.for_settings(load_settings())
    if authenticator.oidc is None and not any(r.active for r in authenticator.tokens.records()):
        log.warning(
            "no API token exists in %s: every call but /health is refused until an administrator "
            "runs `traceline token create`",
            authenticator.tokens.path,
        )
    api = FastAPI(
        title="traceline",
        version="0.1.0",
        description="Forward and backward traces, recall impact, recall reports and drills, alerts, "
        "pipeline health. Every route but /health needs `Authorization: Bearer <token>` (401 without "
        "a valid one, 403 for a role that may not); answers hold only the caller's programmes. "
        "Errors: 422 bad input, 404 an identifier the store has never seen or the caller may not see "
        "(with suggestions), 503 a service failed.",
        docs_url=None,
        redoc_url=None,
    )
    # scoped per caller; reports signed and registered with the key under keys_dir (the data dir)
    shared = StoreBackend(store, lag=lambda: _lag(lag), where="the server's store", keys_dir=keys_dir)
    acks = AckStore(keys_dir / ACK_FILE if keys_dir is not None else None)
    if STATIC_DIR.is_dir():
        api.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    if audit is not None:
        audited.install(api, audit)

    def answer(fn: Callable[[], Any]) -> Any:
        try:
            result = fn()
            audited.note_results(result)
            return result
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

    # -- who is calling -------------------------------------------------------------------
    def presented(credentials: HTTPAuthorizationCredentials | None = Security(_BEARER)) -> Principal | None:
        """The caller, None when no credential came, 401 for a credential that is not valid."""
        if credentials is None:
            return None
        try:
            who = authenticator.authenticate(credentials.credentials)
        except AuthConfigError as exc:
            raise HTTPException(status_code=503, detail=str(exc)) from exc
        if who is None:
            raise HTTPException(
                status_code=401,
                detail="the bearer token is not valid: unknown, revoked or expired",
                headers={"WWW-Authenticate": 'Bearer realm="traceline", error="invalid_token"'},
            )
        audited.note_caller(who)
        return who

    def caller(who: Principal | None = Depends(presented)) -> Principal:
        if who is None:
            raise HTTPException(
                status_code=401,
                detail="a credential is required: Authorization: Bearer <token> "
                "(an administrator makes one with `traceline token create`)",
                headers={"WWW-Authenticate": 'Bearer realm="traceline"'},
            )
        return who

    def reader(who: Principal = Depends(caller)) -> StoreBackend:
        """The backend answering for the caller's programmes; 403 for a role that may not read."""
        if not who.may(READ):
            raise HTTPException(status_code=403, detail=f"the role {who.role} may not read traceability data")
        return shared.scoped(who.programs)

    def administrator(who: Principal = Depends(caller)) -> Principal:
        if not who.may(ADMIN):
            raise HTTPException(status_code=403, detail=f"for administrators only (the caller is {who.role})")
        return who

    @api.get("/health", summary="Liveness, and the status derived from every part of the pipeline")
    def get_health(who: Principal | None = Depends(presented)) -> dict[str, Any]:
        """200 while the server answers; ``status`` is ok / degraded / failing. Open to anyone;
        the details (problems: a part dead, crash-looping or stalled, store write errors, a
        ledger gap; parts, lag) only for an administrator."""
        state = (
            health()
            if health is not None
            else {
                "status": "unknown",
                "problems": ["no pipeline runs in this process"],
            }
        )
        if who is None or not who.may(ADMIN):
            return {"status": state.get("status")}
        return state

    @api.get(
        "/ready",
        summary="Readiness: 200 when every part of the pipeline is ok, 503 otherwise",
        responses={503: {"description": "a part is not ok: see problems"}, **_AUTH_RESPONSES},
    )
    def get_ready(who: Principal = Depends(caller)) -> Response:
        """Any authenticated caller; the problems and the lag only for an administrator."""
        state = health() if health is not None else {"status": "unknown", "problems": ["no pipeline"]}
        code = 200 if state.get("status") == "ok" else 503
        body: dict[str, Any] = {"status": state.get("status")}
        if who.may(ADMIN):
            body.update(problems=state.get("problems", []), lag=state.get("lag"))
        return JSONResponse(body, status_code=code)

    @api.get(
        "/ledger",
        summary="The sink's ledger per events partition: read = landed + accounted for",
        responses=_AUTH_RESPONSES,
        dependencies=[Depends(administrator)],
    )
    def get_ledger() -> dict[str, Any]:
        return ledger() if ledger is not None else {"partitions": {}, "gap": {}, "since": None}

    @api.get(
        "/audit",
        summary="The query audit log: who asked what, when, with what scope and how many results",
        responses=_AUTH_RESPONSES,
        dependencies=[Depends(administrator)],
    )
    def get_audit(
        limit: int = Query(100, ge=1, le=1000),
        offset: int = Query(0, ge=0),
        principal: str | None = Query(None, description="only this caller (token name or OIDC subject)"),
    ) -> dict[str, Any]:
        where = "WHERE principal = {p:String}" if principal is not None else ""
        sql = (
            "SELECT server_id, seq, at, principal, role, programs, method, path, params, status, results,"
            f" withheld, duration_ms, hex(chain_hash) AS chain_hash FROM query_audit {where}"  # noqa: S608
            " ORDER BY at DESC, seq DESC LIMIT {n:UInt32} OFFSET {o:UInt32}"
        )
        params = {"p": principal or "", "n": limit, "o": offset}
        rows = answer(lambda: store.query(sql, params))
        total = answer(lambda: store.query(f"SELECT count() AS n FROM query_audit {where}", params))  # noqa: S608
        return {"total": int(total[0]["n"]), "offset": offset, "rows": entries_of(rows)}

    @api.get(
        "/trace/forward",
        summary="Forward trace: lot -> lots -> units -> systems -> customers",
        responses=_AUTH_RESPONSES,
    )
    def get_forward(
        lot: str = Query(..., min_length=1, description="lot_id"),
        backend: StoreBackend = Depends(reader),
    ) -> Any:
        return answer(lambda: to_jsonable(backend.forward_trace(lot)))

    @api.get(
        "/trace/backward",
        summary="Backward trace: unit or system -> components, lots, operations, tests",
        responses={404: {"description": "unknown, or outside the caller's programmes"}, **_AUTH_RESPONSES},
    )
    def get_backward(
        serial: str = Query(..., min_length=1, description="UII '<part_number>:<serial_number>'"),
        backend: StoreBackend = Depends(reader),
    ) -> Any:
        return answer(lambda: to_jsonable(backend.backward_trace(serial)))

    @api.get(
        "/recall",
        summary="Recall impact of a trigger (lot, supplier lot, station, operator, bench...)",
        responses=_AUTH_RESPONSES,
    )
    def get_recall(
        kind: str = Query("lot", description=_KINDS),
        id: str = Query(..., min_length=1, description="the trigger's id"),  # noqa: A002 - API field name
        start: datetime | None = Query(None, alias="from", description=f"window start ({_WHEN})"),
        end: datetime | None = Query(None, alias="to", description=f"window end ({_WHEN})"),
        backend: StoreBackend = Depends(reader),
    ) -> Any:
        t = trigger(kind, id, start, end)
        return answer(lambda: to_jsonable(backend.recall(t)))

    @api.get("/report", summary="Recall report for an auditor (HTML, PDF or CSV)", responses=_AUTH_RESPONSES)
    def get_report(
        kind: str = Query("lot", description=_KINDS),
        id: str = Query(..., min_length=1, description="the trigger's id"),  # noqa: A002 - API field name
        prepared_by: str = Query(..., min_length=1, description="name on the 'prepared by' line"),
        start: datetime | None = Query(None, alias="from", description=f"window start ({_WHEN})"),
        end: datetime | None = Query(None, alias="to", description=f"window end ({_WHEN})"),
        format: str = Query("html", description="html | pdf | csv"),  # noqa: A002 - API field name
        backend: StoreBackend = Depends(reader),
    ) -> Response:
        t = trigger(kind, id, start, end)
        fmt = format.lower()
        made = answer(lambda: backend.report(t, fmt, prepared_by))
        headers = {
            "Content-Disposition": _disposition("inline" if fmt == "html" else "attachment", made.filename),
            "X-Traceline-Document": made.document_number,
            WITHHELD_HEADERS[0]: str(made.withheld_units),
            WITHHELD_HEADERS[1]: str(made.withheld_past),
        }
        return Response(content=made.content, media_type=MEDIA_TYPES[fmt], headers=headers)

    @api.get(
        "/drill",
        summary="Recall drill: a mock recall, every step timed, each format of one document",
        responses=_AUTH_RESPONSES,
    )
    def get_drill(
        kind: str = Query("lot", description=_KINDS),
        id: str = Query(..., min_length=1, description="the trigger's id"),  # noqa: A002 - API field name
        prepared_by: str = Query(..., min_length=1, description="name on the 'prepared by' line"),
        start: datetime | None = Query(None, alias="from", description=f"window start ({_WHEN})"),
        end: datetime | None = Query(None, alias="to", description=f"window end ({_WHEN})"),
        formats: str = Query("html,pdf,csv", description="comma-separated: html,pdf,csv"),
        backend: StoreBackend = Depends(reader),
    ) -> Any:
        t = trigger(kind, id, start, end)
        fmts = [f.strip().lower() for f in formats.split(",") if f.strip()]
        return answer(lambda: to_jsonable(backend.drill_documents(t, fmts, prepared_by)))

    @api.get(
        "/alerts",
        summary="Alerts (latest version of each), newest event first, one page",
        responses=_AUTH_RESPONSES,
    )
    def get_alerts(
        severity: str | None = Query(None, description="INFO | WARNING | CRITICAL"),
        rule: str | None = Query(None, description="e.g. NC_RAISED, HELD_LOT_USED, SHIPPING_GATE"),
        since: datetime | None = Query(None, description=f"event time at or after ({_WHEN})"),
        until: datetime | None = Query(None, description=f"event time before ({_WHEN})"),
        limit: int = Query(100, ge=1, le=10_000),
        offset: int = Query(0, ge=0, le=1_000_000_000),
        backend: StoreBackend = Depends(reader),
    ) -> Any:
        """``{rows, total, offset, limit}``: ``total`` counts every alert the filter matches, so a
        page never hides that there are more."""

        def page() -> Any:
            query = AlertQuery(
                severity, rule, check_time(since, "since"), check_time(until, "until"), limit, offset
            )
            return to_jsonable(backend.alerts(query))

        return answer(page)

    # -- the workbench's reads ------------------------------------------------------------
    @api.get(
        "/search",
        summary="What a typed identifier names: unit (UII or bare serial), lot, supplier lot, station...",
        responses={
            404: {"description": "nothing by that name: near misses in suggestions"},
            **_AUTH_RESPONSES,
        },
    )
    def get_search(
        q: str = Query(
            ..., min_length=1, max_length=200, description="a UII, serial, lot, supplier lot, ..."
        ),
        backend: StoreBackend = Depends(reader),
    ) -> Any:
        """``{query, matches: [{kind, id, label}]}`` (several kinds may match one string); 404
        with the same near misses as the other routes' 404 when nothing matches."""
        return answer(lambda: to_jsonable(resolve(backend.store, backend.programs, q)))

    @api.get(
        "/search/suggest", summary="Known identifiers starting with what was typed", responses=_AUTH_RESPONSES
    )
    def get_suggest(
        q: str = Query(..., min_length=1, max_length=200),
        limit: int = Query(10, ge=1, le=50),
        backend: StoreBackend = Depends(reader),
    ) -> Any:
        return answer(lambda: to_jsonable(suggest(backend.store, backend.programs, q, limit)))

    @api.get(
        "/passport",
        summary="Everything about one unit: lots, operations, tests, installs, shipment, NCs, alerts",
        responses={404: {"description": "unknown, or outside the caller's programmes"}, **_AUTH_RESPONSES},
    )
    def get_passport(
        serial: str = Query(..., min_length=1, description="UII '<part_number>:<serial_number>'"),
        backend: StoreBackend = Depends(reader),
    ) -> Any:
        return answer(lambda: to_jsonable(unit_passport(backend.store, backend.programs, serial)))

    @api.get(
        "/tree",
        summary="A trace as a tree: backward from a unit (kind=serial), forward from a lot (kind=lot)",
        responses={404: {"description": "unknown, or outside the caller's programmes"}, **_AUTH_RESPONSES},
    )
    def get_tree(
        kind: str = Query("serial", description="serial | lot"),
        id: str = Query(..., min_length=1, description="a UII or a lot id"),  # noqa: A002 - API field name
        backend: StoreBackend = Depends(reader),
    ) -> Any:
        def build() -> Any:
            if kind == "serial":
                bt = backend.backward_trace(id)
                return backward_tree(bt, lot_flags(backend.store, backend.programs, tree_lots(bt)))
            if kind == "lot":
                ft = backend.forward_trace(id)
                return forward_tree(ft, lot_flags(backend.store, backend.programs, tree_lots(ft)))
            raise InvalidInputError(f"a tree is of kind serial or lot, not {kind!r}", "kind")

        return answer(lambda: to_jsonable(build()))

    @api.get(
        "/freshness",
        summary="How fresh the store is: latest event and landing times, lag",
        responses=_AUTH_RESPONSES,
    )
    def get_freshness(backend: StoreBackend = Depends(reader)) -> Any:
        def fresh() -> Any:
            got = measure_freshness(backend.store, *_lag(lag))
            return {**to_jsonable(got), "lag_text": got.lag_text}

        return answer(fresh)

    # -- the live alert feed and acknowledgements ------------------------------------------
    @api.get("/alerts/stream", include_in_schema=False)
    async def get_alert_stream(
        request: Request,
        severity: str | None = Query(None, description="INFO | WARNING | CRITICAL"),
        after: datetime | None = Query(None, description="resume: alerts landed at or after this time"),
        backlog: int = Query(50, ge=0, le=500),
        backend: StoreBackend = Depends(reader),
    ) -> StreamingResponse:
        """Server-sent events (``text/event-stream``): ``hello``, the ``backlog`` alerts landed
        last, ``ready``, then as they land: ``alert`` (an alert version, with ``landed`` and
        ``ack``), ``ack`` (an acknowledgement taken); ``end`` after about 15 s (reconnect with
        ``after`` = the last ``landed``). The caller's programmes only."""
        wanted = severity.upper() if severity else None
        store, programs = backend.store, backend.programs
        first: list[dict[str, Any]] = []
        if after is not None:
            cursor = FeedCursor(check_time(after, "after"))
        else:
            first, cursor = await run_in_threadpool(feed_start, store, programs, backlog)

        def event(kind: str, data: Any) -> str:
            return f"event: {kind}\ndata: {json.dumps(to_jsonable(data), default=str)}\n\n"

        def alert(row: dict[str, Any]) -> str:
            ack = acks.get([row["alert_id"]]).get(row["alert_id"])
            return event("alert", {**row, "landed": row["ingest_time"], "ack": ack})

        async def events() -> Any:
            sent: set[str] = set()
            seen_acks = acks.version
            yield event("hello", {"programs": sorted(programs), "seconds": _STREAM_SECONDS})
            rows = first
            loop = asyncio.get_running_loop()
            end = loop.time() + _STREAM_SECONDS
            ready = False
            while True:
                for r in rows:
                    if wanted is None or r["severity"] == wanted:
                        sent.add(r["alert_id"])
                        yield alert(r)
                if not ready:  # the backlog is out: what follows landed after the stream opened
                    ready = True
                    yield event("ready", {"backlog": len(sent)})
                if acks.version != seen_acks:
                    seen_acks = acks.version
                    for a in acks.get(sorted(sent)).values():
                        yield event("ack", a)
                if loop.time() >= end or await request.is_disconnected():
                    break
                await asyncio.sleep(_POLL_SECONDS)
                try:
                    rows = await run_in_threadpool(alerts_landed, store, programs, cursor)
                except Exception as exc:  # noqa: BLE001 - said to the page, which reconnects
                    yield event("error", {"message": str(exc)})
                    break
            yield event("end", {"after": cursor.landed})

        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    @api.get("/alerts/acks", summary="Acknowledgements of the alerts named", responses=_AUTH_RESPONSES)
    def get_acks(
        alert_id: list[str] = Query(..., description="alert ids (repeat the parameter)"),
        backend: StoreBackend = Depends(reader),
    ) -> Any:
        wanted = alert_id[:500]

        def read() -> Any:
            seen = visible_alert_ids(backend.store, backend.programs, wanted)
            mine = [a for a in wanted if a in seen]
            return to_jsonable(list(acks.get(mine).values()))

        return answer(read)

    @api.post(
        "/alerts/acks",
        summary="Acknowledge an alert (its latest version), as the caller",
        responses={
            404: {"description": "no such alert, or outside the caller's programmes"},
            **_AUTH_RESPONSES,
        },
    )
    def post_ack(
        alert_id: str = Query(..., min_length=1, max_length=500),
        note: str = Query("", max_length=500),
        who: Principal = Depends(caller),
        backend: StoreBackend = Depends(reader),
    ) -> Any:
        version = answer(lambda: alert_version(backend.store, backend.programs, alert_id))
        if version is None:
            raise HTTPException(status_code=404, detail=f"no alert {alert_id!r} (or not in your programmes)")
        return to_jsonable(acks.add(alert_id, version, who.name, note))

    @api.get("/", include_in_schema=False)
    def workbench() -> Response:
        """The analyst workbench: a page and its scripts, no data (every read it makes needs the
        token the user signs in with)."""
        missing = [a for a in _WORKBENCH_ASSETS if not (_VENDOR / a).is_file()]
        if missing:
            return HTMLResponse(
                "<!doctype html><title>traceline</title><p>The workbench's browser assets are not "
                f"installed ({', '.join(missing)}): run <code>make install</code> "
                "(deploy/web/fetch_assets.py).</p>",
                status_code=503,
            )
        return FileResponse(_WORKBENCH / "index.html", headers={"Cache-Control": "no-cache"})

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
