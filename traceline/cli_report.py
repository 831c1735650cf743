"""``traceline report`` and ``traceline drill``: the auditor's recall report and the recall drill.

Plain functions with typer-annotated parameters; ``traceline/cli.py`` registers them (``report``
also as ``traceline recall report``). Like the other read commands they ask the one backend
(``traceline.backend``): the running server's ``GET /report`` when ``traceline serve`` owns the
embedded store, else the store directly.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from traceline.backend import open_backend
from traceline.cli_common import (
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
    TokenOpt,
    ToOpt,
    env,
    err,
    fail,
    handled,
    store_settings,
    trigger_from_options,
)
from traceline.cli_common import out as console
from traceline.errors import EXIT_USAGE
from traceline.settings import Settings

__all__ = ["report_command", "drill_command"]

FORMATS = ("html", "pdf", "csv")

PreparedByOpt = Annotated[
    str | None,
    typer.Option(
        "--prepared-by",
        help="name on the 'prepared by' line (required, here or in the setting) "
        + env("TRACELINE_REPORT_PREPARED_BY"),
    ),
]


def _prepared_by(name: str | None, settings: Settings) -> str:
    """The name on the report: the flag, else the configured one; never a guess."""
    given = (name if name is not None else settings.report.prepared_by or "").strip()
    if not given:
        raise fail(
            "a report names who prepared it: give --prepared-by NAME or set TRACELINE_REPORT_PREPARED_BY",
            EXIT_USAGE,
        )
    return given


@handled
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
    fmt: Annotated[str, typer.Option("--format", help="html | pdf | csv")] = "html",
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="file to write (default: <document number>_<trigger>.<format>; - = stdout)"
        ),
    ] = None,
    prepared_by: PreparedByOpt = None,
    data_dir: DataDirOpt = None,
    dsn: DsnOpt = None,
    token: TokenOpt = None,
) -> None:
    """Recall report for an auditor (AS9100D 8.5.2 / AQAP-2110): HTML, PDF or CSV."""
    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise fail(f"unknown format {fmt!r}: use html, pdf or csv", EXIT_USAGE)
    if out is not None and str(out) == "-" and fmt == "pdf":
        raise fail("a PDF cannot go to stdout: give --out FILE", EXIT_USAGE)
    trigger = trigger_from_options(
        start,
        end,
        lot=lot,
        supplier_lot=supplier_lot,
        supplier=supplier,
        station=station,
        operator=operator,
        bench=bench,
        serial=serial,
    )
    settings = store_settings(data_dir, dsn, token)
    name = _prepared_by(prepared_by, settings)
    with open_backend(settings) as backend:
        made = backend.report(trigger, fmt, name)
    if out is not None and str(out) == "-":
        sys.stdout.buffer.write(made.content)
        sys.stdout.flush()
        return
    path = out or Path(made.filename)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(made.content)
    err.print(f"{made.summary} -> {path} ({len(made.content):,} bytes)", markup=False, highlight=False)


@handled
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
    token: TokenOpt = None,
) -> None:
    """Recall drill: a mock recall run as if the trigger were bad; every step timed, reports written."""
    fmts = [f.strip().lower() for f in formats.split(",") if f.strip()]
    bad = [f for f in fmts if f not in FORMATS]
    if bad or not fmts:
        raise fail(f"unknown format(s) {bad or formats!r}: use html, pdf, csv", EXIT_USAGE)
    trigger = trigger_from_options(
        start,
        end,
        lot=lot,
        supplier_lot=supplier_lot,
        supplier=supplier,
        station=station,
        operator=operator,
        bench=bench,
        serial=serial,
    )
    settings = store_settings(data_dir, dsn, token)
    name = _prepared_by(prepared_by, settings)
    with open_backend(settings) as backend:
        drill = backend.drill(trigger, fmts, out, name)
    t = Table(title=drill.headline)
    t.add_column("step")
    t.add_column("time", justify="right")
    t.add_column("note")
    for step, secs, note in drill.steps:
        t.add_row(step, f"{secs * 1000:.1f} ms", note)
    t.add_row("total", f"{sum(x for _, x, _ in drill.steps) * 1000:.1f} ms", "")
    console.print(t)
    for fmt, path in drill.files.items():
        console.print(f"{fmt}: {path}", markup=False, highlight=False)
    console.print(f"summary: {drill.summary_path}", markup=False, highlight=False)
