"""The one backend behind the CLI's read commands: the running server, or the local store.

In embedded mode (``chdb://``) one process owns the store, so while ``traceline serve`` runs
(its state file ``<data dir>/serve.json`` names a live pid and the API's URL) the CLI must ask
its API; otherwise it opens the store itself. :func:`open_backend` makes that choice once;
both backends answer with the same typed results (``queries.RecallImpact``, ``ForwardTrace``,
``BackwardTrace``; the server's JSON is read back with ``queries.from_jsonable``), and raise
the same errors (``InvalidInputError`` for a bad argument, a ``TracelineError`` for a service
that failed), which ``traceline.errors.classify`` turns into exit codes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

import httpx

from queries import BackwardTrace, ForwardTrace, RecallImpact, Trigger, from_jsonable, to_jsonable
from queries import backward_trace as _backward_trace
from queries import forward_trace as _forward_trace
from queries import recall_impact as _recall_impact
from queries.alerts import list_alerts
from queries.drill import run_drill
from queries.report import build_report, measure_freshness
from queries.report_render import filename, render
from schemas.errors import InvalidInputError, TracelineError
from schemas.kafka import pipeline_lag
from sinks.store import Store, StoreError, StoreUnavailableError
from traceline import localstack
from traceline.settings import Settings

__all__ = [
    "Backend",
    "ServerBackend",
    "StoreBackend",
    "ServerError",
    "ReportFile",
    "DrillOutcome",
    "open_backend",
    "open_store",
    "serve_state",
    "write_serve_state",
    "clear_serve_state",
    "local_bootstrap",
    "measure_lag",
]

STATE_FILE = "serve.json"
_T = TypeVar("_T")


class ServerError(TracelineError):
    """The running server did not answer, or answered with a server-side failure."""

    def __init__(self, url: str, reason: str, status: int | None = None) -> None:
        self.url, self.reason, self.status = url, reason, status
        super().__init__(f"the running server at {url}: {reason}")


@dataclass
class ReportFile:
    content: bytes
    filename: str
    summary: str  # "<document number>: N units now, M past"


@dataclass
class DrillOutcome:
    headline: str
    steps: list[tuple[str, float, str]]  # (step, seconds, note)
    files: dict[str, Path]  # format -> file
    summary_path: Path
    summary: dict[str, Any] = field(default_factory=dict)


class Backend(Protocol):
    where: str  # "the server at http://..." or "the store at chdb://..."

    def recall(self, trigger: Trigger) -> RecallImpact: ...

    def forward_trace(self, lot_id: str) -> ForwardTrace: ...

    def backward_trace(self, uii: str) -> BackwardTrace: ...

    def alerts(
        self, *, severity: str | None, rule: str | None, since: datetime | None, limit: int
    ) -> list[dict[str, Any]]: ...

    def report(self, trigger: Trigger, fmt: str, prepared_by: str) -> ReportFile: ...

    def drill(
        self, trigger: Trigger, formats: Sequence[str], out_dir: Path, prepared_by: str
    ) -> DrillOutcome: ...

    def close(self) -> None: ...


# -- where things are ------------------------------------------------------------------------
def serve_state(data_dir: Path) -> dict[str, Any] | None:
    """The running server's state file (API URL, pid), if a server is alive."""
    path = data_dir / STATE_FILE
    try:
        state = json.loads(path.read_text())
        os.kill(int(state["pid"]), 0)
    except (OSError, ValueError, KeyError):
        return None
    return dict(state)


def write_serve_state(data_dir: Path, url: str, started_at: datetime) -> None:
    path = data_dir / STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": os.getpid(), "url": url, "started_at": started_at.isoformat()}))


def clear_serve_state(data_dir: Path) -> None:
    (data_dir / STATE_FILE).unlink(missing_ok=True)


def local_bootstrap(settings: Settings) -> str | None:
    """The configured bootstrap, else the running local stack's, else None."""
    if settings.kafka.bootstrap:
        return settings.kafka.bootstrap
    state = localstack.status(settings.kafka_dir)
    return str(state["bootstrap"]) if state else None


def open_store(settings: Settings) -> Store:
    """The store the settings name (creating the database and applying migrations)."""
    return Store.open(
        settings.clickhouse_dsn,
        settings.clickhouse.database,
        uncompressed_cache_mb=settings.chdb.uncompressed_cache_mb,
    )


def measure_lag(settings: Settings) -> tuple[dict[str, int] | None, str]:
    """Consumer lag of the stream worker and the sink, when a broker is configured or running;
    else None and the reason (a report prints it as its freshness note)."""
    bootstrap = local_bootstrap(settings)
    if not bootstrap:
        return None, "no Kafka broker configured"
    try:
        lag = pipeline_lag(bootstrap, settings.topics, app_id=settings.app_id, sink_group=settings.sink_group)
    except TracelineError as exc:
        return None, f"Kafka at {bootstrap} did not answer: {exc}"
    return lag, ""


def open_backend(settings: Settings) -> Backend:
    """The running server's API when ``traceline serve`` owns the store, else the store."""
    state = serve_state(settings.data_dir)
    if state:
        return ServerBackend(str(state["url"]))
    return StoreBackend(settings)


def _window(trigger: Trigger) -> dict[str, Any]:
    ws, we = trigger.window_start, trigger.window_end
    return {"from": ws.isoformat() if ws else None, "to": we.isoformat() if we else None}


def _summary(document: str, now: int, past: int) -> str:
    return f"{document}: {now} units now, {past} past"


# -- the server ------------------------------------------------------------------------------
class ServerBackend:
    """Asks a running ``traceline serve`` over its HTTP API."""

    def __init__(self, url: str, client: httpx.Client | None = None) -> None:
        self.url = url.rstrip("/")
        self.where = f"the server at {self.url}"
        self._client = client or httpx.Client(timeout=300)

    def _get(self, path: str, params: Mapping[str, Any]) -> httpx.Response:
        try:
            r = self._client.get(self.url + path, params={k: v for k, v in params.items() if v is not None})
        except httpx.HTTPError as exc:
            raise ServerError(self.url, f"did not answer: {exc}") from exc
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail", r.text)
            except ValueError:
                detail = r.text
            if r.status_code == 422:
                raise InvalidInputError(str(detail))
            raise ServerError(self.url, f"{r.status_code}: {detail}", r.status_code)
        return r

    def _typed(self, cls: type[_T], path: str, params: Mapping[str, Any]) -> _T:
        return from_jsonable(cls, self._get(path, params).json())

    def recall(self, trigger: Trigger) -> RecallImpact:
        return self._typed(
            RecallImpact, "/recall", {"kind": trigger.kind, "id": trigger.id, **_window(trigger)}
        )

    def forward_trace(self, lot_id: str) -> ForwardTrace:
        return self._typed(ForwardTrace, "/trace/forward", {"lot": lot_id})

    def backward_trace(self, uii: str) -> BackwardTrace:
        return self._typed(BackwardTrace, "/trace/backward", {"serial": uii})

    def alerts(
        self, *, severity: str | None, rule: str | None, since: datetime | None, limit: int
    ) -> list[dict[str, Any]]:
        params = {
            "severity": severity,
            "rule": rule,
            "since": since.isoformat() if since else None,
            "limit": limit,
        }
        return list(self._get("/alerts", params).json())

    def _report(self, trigger: Trigger, fmt: str, prepared_by: str, drill: bool) -> httpx.Response:
        params = {"kind": trigger.kind, "id": trigger.id, "format": fmt, "prepared_by": prepared_by}
        if drill:
            params["drill"] = "true"
        return self._get("/report", {**params, **_window(trigger)})

    def report(self, trigger: Trigger, fmt: str, prepared_by: str) -> ReportFile:
        r = self._report(trigger, fmt, prepared_by, drill=False)
        name = _filename_from(r, f"recall-{trigger.kind}-{trigger.id}.{fmt}")
        return ReportFile(r.content, name, r.headers.get("x-traceline-document", ""))

    def drill(
        self, trigger: Trigger, formats: Sequence[str], out_dir: Path, prepared_by: str
    ) -> DrillOutcome:
        """One drill per format on the server (it owns the store); timings from its header."""
        out_dir.mkdir(parents=True, exist_ok=True)
        summary: dict[str, Any] = {"trigger": {"kind": trigger.kind, "id": trigger.id}, "runs": {}}
        steps: list[tuple[str, float, str]] = []
        files: dict[str, Path] = {}
        for fmt in formats:
            r = self._report(trigger, fmt, prepared_by, drill=True)
            path = out_dir / _filename_from(r, f"drill-{trigger.kind}-{trigger.id}.{fmt}")
            path.write_bytes(r.content)
            files[fmt] = path
            timings = json.loads(r.headers.get("x-traceline-drill", "[]"))
            summary["runs"][fmt] = {
                "document_number": r.headers.get("x-traceline-document"),
                "steps": timings,
                "file": str(path),
            }
            steps += [(f"{t['step']} [{fmt} run]", t["seconds"], t["note"]) for t in timings]
        summary_path = out_dir / f"drill-{datetime.now(UTC):%Y%m%d-%H%M%S}.json"
        summary_path.write_text(json.dumps(summary, indent=2))
        headline = f"recall drill {trigger.kind} {trigger.id} (through {self.where})"
        return DrillOutcome(headline, steps, files, summary_path, summary)

    def close(self) -> None:
        self._client.close()


def _filename_from(response: httpx.Response, fallback: str) -> str:
    cd = response.headers.get("content-disposition", "")
    if 'filename="' in cd:
        return Path(cd.split('filename="', 1)[1].split('"', 1)[0]).name or fallback
    return fallback


# -- the store -------------------------------------------------------------------------------
class StoreBackend:
    """Opens the store the settings name (no server runs, or it is a ClickHouse server)."""

    def __init__(self, settings: Settings, store: Store | None = None) -> None:
        self.settings = settings
        self.where = f"the store at {settings.clickhouse_dsn}"
        self._store = store

    @property
    def store(self) -> Store:
        if self._store is None:
            dsn = self.settings.clickhouse_dsn
            try:
                self._store = open_store(self.settings)
            except StoreError as exc:
                raise StoreUnavailableError(
                    f"cannot open ClickHouse at {dsn}: {exc}", operation="connect"
                ) from exc
        return self._store

    def recall(self, trigger: Trigger) -> RecallImpact:
        return _recall_impact(self.store, trigger)

    def forward_trace(self, lot_id: str) -> ForwardTrace:
        return _forward_trace(self.store, lot_id)

    def backward_trace(self, uii: str) -> BackwardTrace:
        return _backward_trace(self.store, uii)

    def alerts(
        self, *, severity: str | None, rule: str | None, since: datetime | None, limit: int
    ) -> list[dict[str, Any]]:
        return list(
            to_jsonable(list_alerts(self.store, severity=severity, rule=rule, since=since, limit=limit))
        )

    def report(self, trigger: Trigger, fmt: str, prepared_by: str) -> ReportFile:
        lag, note = measure_lag(self.settings)
        fresh = measure_freshness(self.store, lag, note or None)
        report = build_report(self.store, trigger, freshness=fresh, prepared_by=prepared_by)
        content = render(report, fmt)
        return ReportFile(
            content,
            filename(report, fmt),
            _summary(report.document_number, len(report.now_units), len(report.past_units)),
        )

    def drill(
        self, trigger: Trigger, formats: Sequence[str], out_dir: Path, prepared_by: str
    ) -> DrillOutcome:
        lag, note = measure_lag(self.settings)
        result = run_drill(
            self.store,
            trigger,
            out_dir,
            formats=formats,
            lag=lag,
            lag_note=note or None,
            prepared_by=prepared_by,
        )
        rep = result.report
        headline = (
            f"recall drill {rep.document_number}: {len(rep.now_units)} units now, "
            f"{len(rep.past_units)} past, {rep.systems} final systems"
        )
        assert result.summary_path is not None
        return DrillOutcome(headline, result.timings, result.files, result.summary_path, result.as_dict())

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
