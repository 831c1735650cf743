"""HTTP API (FastAPI): the analyst's queries, the health of the pipeline. OpenAPI at /docs.

Values reach ClickHouse only as bound query parameters (see ``queries.recall``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from fastapi import FastAPI, HTTPException, Query

from queries import Trigger, backward_trace, forward_trace, recall_impact, to_jsonable
from schemas.errors import TracelineError
from sinks.store import Store

__all__ = ["create_api"]


def create_api(
    store: Store,
    *,
    health: Callable[[], dict[str, Any]] | None = None,
    lag: Callable[[], dict[str, int]] | None = None,
) -> FastAPI:
    """The API over one open store (the store serialises calls on its handle)."""
    api = FastAPI(
        title="traceline",
        version="0.1.0",
        description="Forward and backward traces, recall impact, pipeline health.",
    )

    def run(fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return to_jsonable(fn(store, *args))
        except ValueError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from exc
        except TracelineError as exc:
            raise HTTPException(status_code=503, detail=str(exc)) from exc

    @api.get("/health", summary="Pipeline health: sink position, freshness, worker state")
    def get_health() -> dict[str, Any]:
        return {"status": "ok", **(health() if health else {})}

    @api.get("/trace/forward", summary="Forward trace: lot -> lots -> units -> systems -> customers")
    def get_forward(lot: str = Query(..., description="lot_id")) -> Any:
        return run(forward_trace, lot)

    @api.get(
        "/trace/backward", summary="Backward trace: unit or system -> components, lots, operations, tests"
    )
    def get_backward(serial: str = Query(..., description="UII '<part_number>:<serial_number>'")) -> Any:
        return run(backward_trace, serial)

    @api.get("/recall", summary="Recall impact of a trigger (lot, supplier lot, station, operator, bench...)")
    def get_recall(
        kind: str = Query(
            "lot", description="lot | supplier_lot | supplier | serial | station | operator | bench"
        ),
        id: str = Query(..., description="the trigger's id"),  # noqa: A002 - API field name
        start: datetime | None = Query(None, alias="from", description="window start (ISO-8601, aware)"),
        end: datetime | None = Query(None, alias="to", description="window end (ISO-8601, aware)"),
    ) -> Any:
        return run(recall_impact, Trigger(kind, id, start, end))

    from queries.report import add_report_routes

    add_report_routes(api, store, lag=lag)
    return api
