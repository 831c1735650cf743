"""The one backend behind the CLI's read commands: the running server, or the local store.

In embedded mode (``chdb://``) one process owns the store, so while ``traceline serve`` runs
(its state file ``<data dir>/serve.json`` names a live pid and the API's URL) the CLI must ask
its API; otherwise it opens the store itself. :func:`open_backend` makes that choice once;
both backends answer with the same typed results (``queries.RecallImpact``, ``ForwardTrace``,
``BackwardTrace``, ``DrillDocuments``; the server's JSON is read back with
``queries.from_jsonable``), and raise the same errors (``InvalidInputError`` for a bad
argument, ``NotFoundError`` for an identifier the store has never seen, another
``TracelineError`` for a service that failed), which ``traceline.errors.classify`` turns into
exit codes. The API itself serves its reads through a :class:`StoreBackend` on its own store
handle, so the CLI, the API and the server path give the same answers.

Programmes (need-to-know): a :class:`StoreBackend` answers for one set of programmes (``*``
for all), cutting every answer with ``queries.scope``, so the API (a backend per caller,
:meth:`StoreBackend.scoped`) and the CLI without a server share the one rule. The CLI opening
the store is the local operator (every programme) unless ``TRACELINE_TOKEN`` names a token,
whose programmes then apply (``traceline.auth.local_principal``). A :class:`ServerBackend`
sends the token as ``Authorization: Bearer``; the server applies its programmes.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

import httpx
from pydantic import SecretStr

from queries import BackwardTrace, ForwardTrace, RecallImpact, Trigger, from_jsonable, to_jsonable
from queries import backward_trace as _backward_trace
from queries import forward_trace as _forward_trace
from queries import recall_impact as _recall_impact
from queries.alerts import AlertPage
from queries.drill import DrillResult
from queries.lookup import require_known, suggestions
from queries.report import RecallReport, measure_freshness
from queries.report_render import MEDIA_TYPES, check_format, filename, issue_documents, issue_report, render
from queries.scope import (
    ALL,
    ScopedReport,
    scoped,
    scoped_alerts,
    scoped_drill_documents,
    scoped_report,
    sees_all,
    unit_programs,
    visible,
)
from queries.search import visible_suggestions
from schemas.errors import InvalidInputError, NotFoundError, TracelineError
from schemas.kafka import KafkaSecurity, pipeline_lag, use_security
from sinks.chain import Signer, Verifier, chain_key_path, report_key_path
from sinks.store import Store
from traceline import localstack
from traceline.auth import AuthError, Principal, local_principal
from traceline.localstack_secure import load as load_secure
from traceline.settings import Settings

__all__ = [
    "Backend",
    "ServerBackend",
    "StoreBackend",
    "ServerError",
    "ReportFile",
    "DrillOutcome",
    "DrillDocuments",
    "DrillDocument",
    "DrillStep",
    "AlertQuery",
    "open_backend",
    "open_store",
    "serve_state",
    "write_serve_state",
    "clear_serve_state",
    "local_bootstrap",
    "measure_lag",
]

STATE_FILE = "serve.json"
WITHHELD_HEADERS = ("X-Traceline-Withheld-Units", "X-Traceline-Withheld-Past")
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
    document_number: str
    summary: str  # "<document number>: N units now, M past[; K units withheld (outside your programmes)]"
    withheld_units: int = 0
    withheld_past: int = 0


@dataclass
class AlertQuery:
    """Which alerts: filters on severity, rule and event time [since, until), one page."""

    severity: str | None = None
    rule: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 100
    offset: int = 0

    def params(self) -> dict[str, Any]:
        return {
            "severity": self.severity,
            "rule": self.rule,
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "limit": self.limit,
            "offset": self.offset,
        }


@dataclass
class DrillStep:
    step: str
    seconds: float | None
    note: str


@dataclass
class DrillDocument:
    filename: str
    media_type: str
    content_base64: str


@dataclass
class DrillDocuments:
    """One drill as the API answers it: every format rendered from the same report."""

    document_number: str
    headline: str
    steps: list[DrillStep]
    documents: dict[str, DrillDocument]
    summary: dict[str, Any]


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

    def alerts(self, query: AlertQuery) -> AlertPage: ...

    def report(self, trigger: Trigger, fmt: str, prepared_by: str) -> ReportFile: ...

    def drill(
        self, trigger: Trigger, formats: Sequence[str], out_dir: Path, prepared_by: str
    ) -> DrillOutcome: ...

    def close(self) -> None: ...

    def __enter__(self) -> Backend: ...

    def __exit__(self, *exc: object) -> None: ...


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


def apply_kafka_security(settings: Settings) -> KafkaSecurity:
    """Set this process's Kafka client security (``schemas.kafka.use_security``) and return it:
    the settings' (``TRACELINE_KAFKA_SECURITY_PROTOCOL`` ...); else, when the broker is the data
    dir's secured local stack, its ``pipeline`` principal, written into ``settings.kafka`` so a
    worker child started with these settings gets it too; else PLAINTEXT."""
    k = settings.kafka
    if not k.secured:
        material = load_secure(settings.kafka_dir)
        if material is not None and (
            not k.bootstrap or k.bootstrap == localstack.last_bootstrap(settings.kafka_dir)
        ):
            own = material.security("pipeline")
            k.security_protocol, k.sasl_mechanism = "SASL_SSL", "SCRAM-SHA-512"
            k.sasl_username, k.ssl_ca_file = own.username, own.ca_file
            k.sasl_password = SecretStr(own.password or "")
    security = k.security()
    use_security(security)
    return security


def local_bootstrap(settings: Settings) -> str | None:
    """The configured bootstrap, else the running local stack's, else None."""
    if settings.kafka.bootstrap:
        return settings.kafka.bootstrap
    state = localstack.status(settings.kafka_dir)
    return str(state["bootstrap"]) if state else None


def open_store(settings: Settings, *, create: bool = True) -> Store:
    """The store the settings name (applying pending migrations). ``create=False`` for readers:
    a store that does not exist is an error (``StoreMissingError``), never a new empty one."""
    return Store.open(
        settings.clickhouse_dsn,
        settings.clickhouse.database,
        uncompressed_cache_mb=settings.chdb.uncompressed_cache_mb,
        max_memory_mb=settings.chdb.max_memory_mb,
        create=create,
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
    """The running server's API when ``traceline serve`` owns the store (with the configured
    token), else the store (as the local operator, or with the token's programmes)."""
    state = serve_state(settings.data_dir)
    token = settings.auth.token.get_secret_value() if settings.auth.token is not None else None
    if state:
        return ServerBackend(str(state["url"]), token=token)
    return StoreBackend.for_settings(settings)


def _window(trigger: Trigger) -> dict[str, Any]:
    ws, we = trigger.window_start, trigger.window_end
    return {"from": ws.isoformat() if ws else None, "to": we.isoformat() if we else None}


def _summary(document: str, now: int, past: int, withheld_units: int = 0, withheld_past: int = 0) -> str:
    return f"{document}: {now} units now, {past} past" + withheld_text(withheld_units, withheld_past, "; ")


def withheld_text(units: int, past: int = 0, lead: str = "") -> str:
    """``"N units withheld (outside your programmes)"`` (and the past holds), or "" for none."""
    if not units and not past:
        return ""
    text = f"{units} units withheld (outside your programmes)"
    if past:
        text += f"; {past} past holds withheld too"
    return lead + text


# -- the server ------------------------------------------------------------------------------
class ServerBackend:
    """Asks a running ``traceline serve`` over its HTTP API."""

    def __init__(self, url: str, client: httpx.Client | None = None, *, token: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.where = f"the server at {self.url}"
        self._client = client or httpx.Client(timeout=300)
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}

    def _get(self, path: str, params: Mapping[str, Any]) -> httpx.Response:
        try:
            r = self._client.get(
                self.url + path,
                params={k: v for k, v in params.items() if v is not None},
                headers=self._headers,
            )
        except httpx.HTTPError as exc:
            raise ServerError(self.url, f"did not answer: {exc}") from exc
        if r.status_code >= 400:
            try:
                body = r.json()
            except ValueError:
                body = {"detail": r.text}
            detail = body.get("detail", r.text) if isinstance(body, dict) else r.text
            if r.status_code == 404 and isinstance(detail, dict):
                raise NotFoundError(
                    str(detail.get("kind", "")),
                    str(detail.get("id", "")),
                    [str(x) for x in detail.get("suggestions", [])],
                    str(detail.get("searched", "the store")),
                )
            if r.status_code == 422:
                raise InvalidInputError(detail if isinstance(detail, str) else json.dumps(detail))
            if r.status_code in (401, 403):
                raise AuthError(_refused(self.url, r.status_code, str(detail), bool(self._headers)))
            raise ServerError(self.url, f"{r.status_code}: {detail}", r.status_code)
        return r

    def _typed(self, cls: type[_T], path: str, params: Mapping[str, Any]) -> _T:
        return from_jsonable(cls, self._get(path, params).json())

    def recall(self, trigger: Trigger) -> RecallImpact:
        params = {"kind": trigger.kind, "id": trigger.id, **_window(trigger)}
        return self._typed(RecallImpact, "/recall", params)

    def forward_trace(self, lot_id: str) -> ForwardTrace:
        return self._typed(ForwardTrace, "/trace/forward", {"lot": lot_id})

    def backward_trace(self, uii: str) -> BackwardTrace:
        return self._typed(BackwardTrace, "/trace/backward", {"serial": uii})

    def alerts(self, query: AlertQuery) -> AlertPage:
        return self._typed(AlertPage, "/alerts", query.params())

    def report(self, trigger: Trigger, fmt: str, prepared_by: str) -> ReportFile:
        params = {"kind": trigger.kind, "id": trigger.id, "format": fmt, "prepared_by": prepared_by}
        r = self._get("/report", {**params, **_window(trigger)})
        name = _filename_from(r, f"recall-{trigger.kind}-{trigger.id}.{fmt}")
        document = r.headers.get("x-traceline-document", "")
        units, past = (int(r.headers.get(h, "0") or 0) for h in WITHHELD_HEADERS)
        return ReportFile(r.content, name, document, document + withheld_text(units, past, ": "), units, past)

    def drill(
        self, trigger: Trigger, formats: Sequence[str], out_dir: Path, prepared_by: str
    ) -> DrillOutcome:
        """One drill on the server (it owns the store), every format of it in one answer."""
        params = {
            "kind": trigger.kind,
            "id": trigger.id,
            "formats": ",".join(formats),
            "prepared_by": prepared_by,
            **_window(trigger),
        }
        got = self._get("/drill", params).json()
        return _write_drill(from_jsonable(DrillDocuments, got), out_dir, f" (through {self.where})")

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> ServerBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _refused(url: str, status: int, detail: str, sent: bool) -> str:
    if status == 403:
        return f"the server at {url} refused: {detail}"
    if not sent:
        return (
            f"the server at {url} needs a token: set TRACELINE_TOKEN or give --token (an administrator "
            "makes one with `traceline token create`)"
        )
    return f"the server at {url} does not accept the token given (TRACELINE_TOKEN / --token): {detail}"


def _filename_from(response: httpx.Response, fallback: str) -> str:
    cd = response.headers.get("content-disposition", "")
    if 'filename="' in cd:
        return Path(cd.split('filename="', 1)[1].split('"', 1)[0]).name or fallback
    return fallback


def _write_drill(drill: DrillDocuments, out_dir: Path, via: str = "") -> DrillOutcome:
    """Write a drill's documents and its summary (``<document>_drill.json``) into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    for fmt, doc in drill.documents.items():
        path = out_dir / Path(doc.filename).name
        path.write_bytes(base64.b64decode(doc.content_base64))
        files[fmt] = path
    summary = {**drill.summary, "files": {k: str(v) for k, v in files.items()}}
    summary_path = out_dir / f"{drill.document_number}_drill.json"
    summary_path.write_text(json.dumps(summary, indent=2))
    steps = [(t.step, t.seconds or 0.0, t.note) for t in drill.steps]
    return DrillOutcome(drill.headline + via, steps, files, summary_path, summary)


# -- the store -------------------------------------------------------------------------------
LagSource = Callable[[], tuple[Mapping[str, int] | None, str]]


class StoreBackend:
    """Reads the store directly: the CLI when no server runs (``for_settings``: opened on first
    use, never created), and the API on its own store handle. Every answer that came back
    empty is checked against the identifiers the store knows (``queries.lookup``): an unknown
    trigger or unit is a :class:`NotFoundError` with suggestions, never an empty answer.

    Every answer is cut to ``programs`` (``*``: all) by ``queries.scope``; a unit outside them
    is "not found" exactly like a unit the store never saw (a serial trigger, a backward
    trace), and suggestions name only units inside them."""

    def __init__(
        self,
        store: Store | Callable[[], Store],
        *,
        lag: LagSource | None = None,
        where: str = "the store",
        owns_store: bool = False,
        programs: Collection[str] | Callable[[], Principal] = frozenset({ALL}),
        keys_dir: Path | None = None,
    ) -> None:
        self._keys_dir = keys_dir  # report signing key and chain verification key (None: neither)
        self._store = store if isinstance(store, Store) else None
        self._open = None if isinstance(store, Store) else store
        self._lag = lag or (lambda: (None, "no Kafka lag source configured"))
        self.where = where
        self._owns = owns_store
        self._who = programs if callable(programs) else None
        self._programs = None if callable(programs) else frozenset(programs)

    @classmethod
    def for_settings(cls, settings: Settings) -> StoreBackend:
        """The store the settings name, read as the local operator (every programme), or with
        the programmes of ``TRACELINE_TOKEN`` when it is set (checked when the store is first
        read, after the store was found: a wrong data dir is said first)."""
        return cls(
            lambda: open_store(settings, create=False),
            lag=lambda: measure_lag(settings),
            where=f"the store at {settings.clickhouse_dsn}",
            owns_store=True,
            programs=lambda: local_principal(settings),
            keys_dir=settings.data_dir,
        )

    def _signer(self) -> Signer | None:
        """The report signing key (created owner-only at first use); None without a data dir."""
        return Signer.load_or_create(report_key_path(self._keys_dir)) if self._keys_dir else None

    def _verifier(self) -> Verifier | None:
        """The chain heads' public key, for the report's verification status."""
        return Verifier.load(chain_key_path(self._keys_dir)) if self._keys_dir else None

    @property
    def programs(self) -> frozenset[str]:
        """The programmes this backend answers for (``*``: all)."""
        if self._programs is None:
            assert self._who is not None
            _ = self.store  # a store that is not there is the first thing to say
            self._programs = frozenset(self._who().programs)
        return self._programs

    def scoped(self, programs: Collection[str]) -> StoreBackend:
        """This backend's store, answering for ``programs`` (one per API caller; never closes it)."""
        return StoreBackend(
            self.store, lag=self._lag, where=self.where, programs=programs, keys_dir=self._keys_dir
        )

    @property
    def store(self) -> Store:
        if self._store is None:
            assert self._open is not None
            self._store = self._open()
        return self._store

    # -- what a caller may know -----------------------------------------------------------
    def _require_known(self, kind: str, ident: str) -> None:
        """``queries.lookup.require_known``, with units outside the programmes unknown: the same
        error, and suggestions that name only units inside them."""
        try:
            if kind == "serial" and not self._sees(ident):
                raise NotFoundError(kind, ident, suggestions(self.store, kind, ident), _SEARCHED_UNITS)
            require_known(self.store, kind, ident)
        except NotFoundError as exc:
            if sees_all(self.programs):
                raise
            kept = visible_suggestions(self.store, self.programs, list(exc.suggestions))
            raise NotFoundError(exc.kind, exc.ident, kept, exc.searched) from None

    def _sees(self, uii: str) -> bool:
        return sees_all(self.programs) or visible(self.programs, unit_programs(self.store, [uii]).get(uii))

    def _check_trigger(self, trigger: Trigger) -> None:
        if trigger.kind == "serial" and not self._sees(trigger.id):
            self._require_known("serial", trigger.id)

    # -- reads ----------------------------------------------------------------------------
    def recall(self, trigger: Trigger) -> RecallImpact:
        self._check_trigger(trigger)
        result = _recall_impact(self.store, trigger)
        if not result.units and not result.past:
            self._require_known(trigger.kind, trigger.id)
        return scoped(self.store, result, self.programs)

    def forward_trace(self, lot_id: str) -> ForwardTrace:
        result = _forward_trace(self.store, lot_id)
        if not result.units and not result.past:
            self._require_known("lot", lot_id)
        return scoped(self.store, result, self.programs)

    def backward_trace(self, uii: str) -> BackwardTrace:
        if not self._sees(uii):
            self._require_known("serial", uii)
        result = _backward_trace(self.store, uii)
        if len(result.units) <= 1 and not (result.operations or result.tests or result.lots):
            self._require_known("serial", uii)
        return scoped(self.store, result, self.programs)

    def alerts(self, query: AlertQuery) -> AlertPage:
        page = scoped_alerts(
            self.store,
            self.programs,
            severity=query.severity,
            rule=query.rule,
            since=query.since,
            until=query.until,
            limit=query.limit,
            offset=query.offset,
        )
        return AlertPage([to_jsonable(r) for r in page.rows], page.total, page.offset, page.limit)

    # -- documents ------------------------------------------------------------------------
    def report_document(self, trigger: Trigger, fmt: str, prepared_by: str) -> tuple[RecallReport, bytes]:
        made, content = self._report(trigger, fmt, prepared_by)
        return made.report, content

    def _report(self, trigger: Trigger, fmt: str, prepared_by: str) -> tuple[ScopedReport, bytes]:
        fmt = check_format(fmt)
        self._check_trigger(trigger)
        self._require_known(trigger.kind, trigger.id)
        lag, note = self._lag()
        fresh = measure_freshness(self.store, lag, note or None)
        made = scoped_report(
            self.store,
            trigger,
            self.programs,
            freshness=fresh,
            prepared_by=prepared_by,
            verifier=self._verifier(),
        )
        signer = self._signer()
        if signer is None:
            return made, render(made.report, fmt)
        return made, issue_report(self.store, made.report, fmt, signer)

    def report(self, trigger: Trigger, fmt: str, prepared_by: str) -> ReportFile:
        made, content = self._report(trigger, fmt, prepared_by)
        report = made.report
        return ReportFile(
            content,
            filename(report, fmt),
            report.document_number,
            _summary(
                report.document_number,
                len(report.now_units),
                len(report.past_units),
                made.withheld_units,
                made.withheld_past,
            ),
            made.withheld_units,
            made.withheld_past,
        )

    def drill_documents(self, trigger: Trigger, formats: Sequence[str], prepared_by: str) -> DrillDocuments:
        """One drill, every format of it from the same report (one document number)."""
        self._check_trigger(trigger)
        self._require_known(trigger.kind, trigger.id)
        lag, note = self._lag()
        made, documents, timings = scoped_drill_documents(
            self.store,
            trigger,
            self.programs,
            formats,
            lag=lag,
            lag_note=note or None,
            prepared_by=prepared_by,
            verifier=self._verifier(),
        )
        report = made.report
        signer = self._signer()
        if signer is not None:
            issue_documents(self.store, report, documents, signer)
        summary = DrillResult(report, {}, None, timings).as_dict()
        summary.update(withheld_units=made.withheld_units, withheld_past=made.withheld_past)
        return DrillDocuments(
            document_number=report.document_number,
            headline=(
                f"recall drill {report.document_number}: {len(report.now_units)} units now, "
                f"{len(report.past_units)} past, {report.systems} final systems"
                + withheld_text(made.withheld_units, made.withheld_past, "; ")
            ),
            steps=[DrillStep(s, t, n) for s, t, n in timings],
            documents={
                fmt: DrillDocument(
                    filename(report, fmt), MEDIA_TYPES[fmt], base64.b64encode(content).decode("ascii")
                )
                for fmt, content in documents.items()
            },
            summary=summary,
        )

    def drill(
        self, trigger: Trigger, formats: Sequence[str], out_dir: Path, prepared_by: str
    ) -> DrillOutcome:
        return _write_drill(self.drill_documents(trigger, formats, prepared_by), out_dir)

    def close(self) -> None:
        if self._owns and self._store is not None:
            self._store.close()
            self._store = None

    def __enter__(self) -> StoreBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_SEARCHED_UNITS = "the unit genealogy and operations"  # as queries.lookup says for a serial
