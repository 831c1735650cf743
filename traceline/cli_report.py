"""``traceline report`` and ``traceline drill``: the auditor's recall report and the recall drill.

Plain functions with typer-annotated parameters; ``traceline/cli.py`` registers them::

    from traceline.cli_report import drill_command, report_command
    app.command("report")(report_command)
    app.command("drill")(drill_command)

Like the other query commands, they go through the running server's API when ``traceline
serve`` owns the embedded store (``GET /report``), and open the store directly otherwise.
What every command shares comes from traceline.cli_options.
"""

from __future__ import annotations

import getpass
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from traceline.cli_options import (
    BenchOpt,
    DataDirOpt,
    DsnOpt,
    FromOpt,
    LotOpt,
    OperatorOpt,
    SerialOpt,
    StationOpt,
    SupplierLotOpt,
    SupplierOpt,
    ToOpt,
    as_utc,
    err,
    store_settings,
    trigger_from_options,
)
from traceline.cli_options import (
    fail as _fail,
)
from traceline.cli_options import (
    out as console,
)

__all__ = ["report_command", "drill_command"]

FORMATS = ("html", "pdf", "csv")

PreparedByOpt = Annotated[
    str | None, typer.Option("--prepared-by", help="name on the 'prepared by' line (default: your login)")
]


def _prepared_by(name: str | None) -> str:
    if name is not None:
        return name
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return ""


def _measure_lag(settings: Any) -> tuple[dict[str, int] | None, str]:
    """Consumer lag of the stream worker and the sink, when a broker is configured or running."""
    from traceline import localstack
    from traceline.lag import pipeline_lag

    bootstrap = settings.kafka.bootstrap
    if not bootstrap:
        state = localstack.status(settings.kafka_dir)
        bootstrap = str(state["bootstrap"]) if state else None
    if not bootstrap:
        return None, "no Kafka broker configured"
    try:
        lag = pipeline_lag(bootstrap, settings.topics, app_id=settings.app_id, sink_group=settings.sink_group)
    except Exception as exc:  # noqa: BLE001 - the report still runs; the reason is printed in it
        return None, f"Kafka at {bootstrap} did not answer: {exc}"
    return lag, ""


def _api_get(state: dict[str, Any], params: dict[str, Any]) -> Any:
    import httpx

    try:
        r = httpx.get(
            state["url"] + "/report", params={k: v for k, v in params.items() if v is not None}, timeout=300
        )
    except httpx.HTTPError as exc:
        raise _fail(f"the running server at {state['url']} did not answer: {exc}") from exc
    if r.status_code >= 400:
        try:
            detail = r.json().get("detail", r.text)
        except ValueError:
            detail = r.text
        raise _fail(f"{r.status_code}: {detail}", code=2 if r.status_code == 422 else 3)
    return r


def _open_store(settings: Any) -> Any:
    from schemas.errors import TracelineError
    from sinks.store import Store

    try:
        return Store.open(settings.clickhouse_dsn, settings.clickhouse.database)
    except TracelineError as exc:
        raise _fail(f"cannot open ClickHouse at {settings.clickhouse_dsn}: {exc}") from exc


def _filename_from(response: Any, fallback: str) -> str:
    cd = response.headers.get("content-disposition", "")
    if 'filename="' in cd:
        return Path(cd.split('filename="', 1)[1].split('"', 1)[0]).name or fallback
    return fallback


def report_command(
    lot: LotOpt = None,
    supplier_lot: SupplierLotOpt = None,
    supplier: SupplierOpt = None,
    station: StationOpt = None,
    operator: OperatorOpt = None,
    bench: BenchOpt = None,
    serial: SerialOpt = None,
    start: FromOpt = None,
    end: ToOpt = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="html | pdf | csv")] = "html",
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="file to write (default: <document number>_<trigger>.<format>; - = stdout)"
        ),
    ] = None,
    prepared_by: PreparedByOpt = None,
    data_dir: DataDirOpt = None,
    dsn: DsnOpt = None,
) -> None:
    """Recall report for an auditor (AS9100D 8.5.2 / AQAP-2110): HTML, PDF or CSV."""
    from schemas.errors import TracelineError
    from traceline.serve import serve_state

    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise _fail(f"unknown format {fmt!r}: use html, pdf or csv", 2)
    if out is not None and str(out) == "-" and fmt == "pdf":
        raise _fail("a PDF cannot go to stdout: give --out FILE", 2)
    kind, ident = trigger_from_options(
        lot=lot,
        supplier_lot=supplier_lot,
        supplier=supplier,
        station=station,
        operator=operator,
        bench=bench,
        serial=serial,
    )
    s_utc, e_utc = as_utc(start), as_utc(end)
    settings = store_settings(data_dir, dsn)
    name = _prepared_by(prepared_by)
    state = serve_state(settings.data_dir)
    if state:
        r = _api_get(
            state,
            {
                "kind": kind,
                "id": ident,
                "format": fmt,
                "prepared_by": name,
                "from": s_utc.isoformat() if s_utc else None,
                "to": e_utc.isoformat() if e_utc else None,
            },
        )
        content: bytes = r.content
        default_name = _filename_from(r, f"recall-{kind}-{ident}.{fmt}")
        units = r.headers.get("x-traceline-document", "")
    else:
        from queries import Trigger
        from queries.report import build_report, filename, measure_freshness, render

        lag, note = _measure_lag(settings)
        store = _open_store(settings)
        try:
            trigger = Trigger(kind, ident, s_utc, e_utc)
            report = build_report(
                store, trigger, freshness=measure_freshness(store, lag, note or None), prepared_by=name
            )
            content = render(report, fmt)
        except ValueError as exc:
            raise _fail(str(exc), code=2) from exc
        except TracelineError as exc:
            raise _fail(str(exc)) from exc
        finally:
            store.close()
        default_name = filename(report, fmt)
        units = f"{report.document_number}: {len(report.now_units)} units now, {len(report.past_units)} past"
    if out is not None and str(out) == "-":
        sys.stdout.buffer.write(content)
        sys.stdout.flush()
        return
    path = out or Path(default_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    err.print(f"{units} -> {path} ({len(content):,} bytes)", markup=False, highlight=False)


def drill_command(
    lot: LotOpt = None,
    supplier_lot: SupplierLotOpt = None,
    supplier: SupplierOpt = None,
    station: StationOpt = None,
    operator: OperatorOpt = None,
    bench: BenchOpt = None,
    serial: SerialOpt = None,
    start: FromOpt = None,
    end: ToOpt = None,
    formats: Annotated[str, typer.Option("--formats", help="comma-separated: html,pdf,csv")] = "html,pdf,csv",
    out: Annotated[
        Path, typer.Option("--out", "-o", help="directory for the reports and the drill summary")
    ] = Path("recall-drill"),
    prepared_by: PreparedByOpt = None,
    data_dir: DataDirOpt = None,
    dsn: DsnOpt = None,
) -> None:
    """Recall drill: a mock recall run as if the trigger were bad; every step timed, reports written."""
    from rich.table import Table

    from schemas.errors import TracelineError
    from traceline.serve import serve_state

    fmts = [f.strip().lower() for f in formats.split(",") if f.strip()]
    bad = [f for f in fmts if f not in FORMATS]
    if bad or not fmts:
        raise _fail(f"unknown format(s) {bad or formats!r}: use html, pdf, csv", 2)
    kind, ident = trigger_from_options(
        lot=lot,
        supplier_lot=supplier_lot,
        supplier=supplier,
        station=station,
        operator=operator,
        bench=bench,
        serial=serial,
    )
    s_utc, e_utc = as_utc(start), as_utc(end)
    settings = store_settings(data_dir, dsn)
    name = _prepared_by(prepared_by)
    state = serve_state(settings.data_dir)
    steps: list[tuple[str, float, str]] = []
    files: dict[str, Path] = {}
    summary_path: Path
    if state:
        # the server owns the store: one drill per format on the server, timings from its header
        out.mkdir(parents=True, exist_ok=True)
        summary: dict[str, Any] = {"trigger": {"kind": kind, "id": ident}, "runs": {}}
        for fmt in fmts:
            r = _api_get(
                state,
                {
                    "kind": kind,
                    "id": ident,
                    "format": fmt,
                    "drill": "true",
                    "prepared_by": name,
                    "from": s_utc.isoformat() if s_utc else None,
                    "to": e_utc.isoformat() if e_utc else None,
                },
            )
            path = out / _filename_from(r, f"drill-{kind}-{ident}.{fmt}")
            path.write_bytes(r.content)
            files[fmt] = path
            timings = json.loads(r.headers.get("x-traceline-drill", "[]"))
            summary["runs"][fmt] = {
                "document_number": r.headers.get("x-traceline-document"),
                "steps": timings,
                "file": str(path),
            }
            steps += [(f"{t['step']} [{fmt} run]", t["seconds"], t["note"]) for t in timings]
        summary_path = out / f"drill-{datetime.now(UTC):%Y%m%d-%H%M%S}.json"
        summary_path.write_text(json.dumps(summary, indent=2))
        headline = f"recall drill {kind} {ident} (through the server at {state['url']})"
    else:
        from queries import Trigger
        from queries.drill import run_drill

        lag, note = _measure_lag(settings)
        store = _open_store(settings)
        try:
            result = run_drill(
                store,
                Trigger(kind, ident, s_utc, e_utc),
                out,
                formats=fmts,
                lag=lag,
                lag_note=note or None,
                prepared_by=name,
            )
        except ValueError as exc:
            raise _fail(str(exc), code=2) from exc
        except TracelineError as exc:
            raise _fail(str(exc)) from exc
        finally:
            store.close()
        steps, files = result.timings, result.files
        assert result.summary_path is not None
        summary_path = result.summary_path
        rep = result.report
        headline = (
            f"recall drill {rep.document_number}: {len(rep.now_units)} units now, "
            f"{len(rep.past_units)} past, "
            f"{rep.systems} final systems"
        )
    t = Table(title=headline)
    t.add_column("step")
    t.add_column("time", justify="right")
    t.add_column("note")
    for step, secs, note in steps:
        t.add_row(step, f"{secs * 1000:.1f} ms", note)
    t.add_row("total", f"{sum(x for _, x, _ in steps) * 1000:.1f} ms", "")
    console.print(t)
    for fmt, path in files.items():
        console.print(f"{fmt}: {path}", markup=False, highlight=False)
    console.print(f"summary: {summary_path}", markup=False, highlight=False)
