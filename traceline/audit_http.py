"""The API side of the query audit log (``sinks.audit``): one row per request.

:func:`install` adds a middleware to the app that times each request (but liveness, the
workbench page and static files) and records it when the answer is ready; the routes tell it who
asked (:func:`note_caller`, from the credential check) and how many results the answer held
(:func:`note_results`, from the answer). Query parameters are recorded as given; a credential
never travels in them (``Authorization`` header only).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request, Response

from sinks.audit import AuditEntry, AuditLog
from traceline.auth import Principal

__all__ = ["install", "note_caller", "note_results"]

_SKIP = ("/health", "/static/", "/docs", "/redoc", "/openapi.json", "/favicon")
# the request's notes: a dict shared with the route (its thread gets a copy of the context, the
# same dict), filled by note_caller / note_results
_NOTES: ContextVar[dict[str, Any] | None] = ContextVar("traceline_audit_notes", default=None)


def note_caller(who: Principal | None) -> None:
    notes = _NOTES.get()
    if notes is not None and who is not None:
        notes["who"] = who


def note_results(result: Any) -> None:
    """Count what an answer holds: ``units`` (or ``rows``) and what was withheld."""
    notes = _NOTES.get()
    if notes is None:
        return
    if hasattr(result, "__dict__") and not isinstance(result, dict):
        result = vars(result)
    if not isinstance(result, dict):
        return
    for name in ("units", "rows", "children", "matches"):
        listed = result.get(name)
        if isinstance(listed, list):
            notes["results"] = len(listed)
            break
    withheld = sum(int(result.get(k) or 0) for k in ("withheld_units", "withheld_past"))
    notes["withheld"] = withheld


def install(api: FastAPI, audit: AuditLog) -> None:
    @api.middleware("http")
    async def audited(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        path = request.url.path
        if path == "/" or path.startswith(_SKIP):
            return await call_next(request)
        notes: dict[str, Any] = {"who": None, "results": -1, "withheld": 0}
        token = _NOTES.set(notes)
        at, t0, status = datetime.now(UTC), time.monotonic(), 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            _NOTES.reset(token)
            who: Principal | None = notes["who"]
            audit.record(
                AuditEntry(
                    at=at,
                    principal=who.name if who else "",
                    role=who.role if who else "",
                    programs=tuple(sorted(who.programs)) if who else (),
                    method=request.method,
                    path=path,
                    params=json.dumps(dict(request.query_params), sort_keys=True),
                    status=status,
                    results=int(notes["results"]),
                    withheld=int(notes["withheld"]),
                    duration_ms=(time.monotonic() - t0) * 1000,
                )
            )
