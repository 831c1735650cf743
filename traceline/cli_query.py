"""``traceline trace forward|backward`` and ``traceline recall``: the analyst's reads.

Each asks the one backend (``traceline.backend.open_backend``: the running server, or the local
store) and prints the typed result it gets back as tables, JSON (``--json``) or CSV (``--csv``).
"""

from __future__ import annotations

import csv
import sys
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.table import Table

from queries import ForwardTrace, RecallImpact, to_jsonable
from traceline.backend import open_backend, withheld_text
from traceline.cli_common import (
    BenchOpt,
    DataDirOpt,
    DsnOpt,
    FromOpt,
    JsonOpt,
    LotOpt,
    OperatorOpt,
    SerialOpt,
    StationOpt,
    SupplierLotOpt,
    SupplierOpt,
    TokenOpt,
    ToOpt,
    err,
    handled,
    out,
    store_settings,
    trigger_from_options,
)

__all__ = ["trace_app", "recall_app"]

trace_app = typer.Typer(help="Forward and backward traces.")
recall_app = typer.Typer(
    help="Recall impact of a trigger (`traceline recall --lot L`); `recall report` writes the audit report.",
    invoke_without_command=True,
)

CsvOpt = Annotated[bool, typer.Option("--csv", help="CSV output (one row per affected unit)")]
LimitOpt = Annotated[int, typer.Option(help="rows to print")]

_CSV_COLUMNS = ["uii", "status", "root_uii", "parent_uii", "customer_id", "destination_site", "site", "trace"]


def _emit_units(
    result: RecallImpact | ForwardTrace, as_json: bool, as_csv: bool, title: str, limit: int
) -> None:
    withheld = withheld_text(result.withheld_units, result.withheld_past)
    if withheld and (as_json or as_csv):  # the answer stays clean for tools; the person is told
        err.print(f"{title}: {withheld}", markup=False, highlight=False)
    if as_json:
        out.print_json(data=to_jsonable(result))
        return
    units, past = result.units, result.past
    if as_csv:
        w = csv.writer(sys.stdout)
        w.writerow([*_CSV_COLUMNS, "now_or_past"])
        for u in units:
            w.writerow([_cell(getattr(u, c)) for c in _CSV_COLUMNS] + ["now"])
        for p in past:
            link = f"; {p.removed_uii} removed from {p.removed_from_uii}" if p.removed_uii else ""
            span = f"from {_when(p.held_from)} until {_when(p.removed_at)}"
            held = f"held {p.affected_uii} via {p.child_uii} {span}{link}"
            w.writerow([p.uii, p.status, p.root_uii, "", p.customer_id, "", "", held, "past"])
        return
    if isinstance(result, RecallImpact):
        for counts, label in (
            (result.by_status, "status"),
            (result.by_customer, "customer"),
            (result.by_site, "site"),
        ):
            if counts:
                t = Table(title=f"{title}: units by {label}")
                t.add_column(label)
                t.add_column("units", justify="right")
                for k, v in sorted(counts.items(), key=lambda kv: -kv[1]):
                    t.add_row(str(k), str(v))
                out.print(t)
    t = Table(title=f"{title}: {len(units)} affected units (part installed now)")
    for c in ("uii", "status", "final system", "customer", "path from trigger"):
        t.add_column(c)
    for u in units[:limit]:
        t.add_row(u.uii, u.status, u.root_uii, str(u.customer_id or ""), " -> ".join(u.trace))
    out.print(t)
    if len(units) > limit:
        out.print(f"... {len(units) - limit} more (use --json or --csv for all)")
    if withheld:
        out.print(withheld, markup=False, highlight=False)
    if not units and not past and not withheld:
        lots = len(result.lots)
        out.print(
            f"{title}: known to the store, and no unit holds (or held) anything from it: "
            f"searched {lots} lot(s) in scope and every unit that consumed them or worked on them",
            markup=False,
            highlight=False,
        )
    if past:
        holders = len({p.uii for p in past})
        out.print(
            f"{holders} units held an affected part in the PAST ({len(past)} holds, each with its interval "
            "and the removal that ended it); see --json or --csv"
        )


def _when(v: datetime | None) -> str:
    return v.isoformat() if v is not None else "?"


def _cell(v: Any) -> str:
    if isinstance(v, list):
        return " -> ".join(map(str, v))
    return "" if v is None else str(v)


@trace_app.command("forward")
@handled
def trace_forward(
    lot: Annotated[str, typer.Option("--lot", help="lot_id")],
    as_json: JsonOpt = False,
    as_csv: CsvOpt = False,
    limit: LimitOpt = 50,
    data_dir: DataDirOpt = None,
    dsn: DsnOpt = None,
    token: TokenOpt = None,
) -> None:
    """Everything made from a lot: lots, units, assemblies, systems, customers."""
    with open_backend(store_settings(data_dir, dsn, token)) as backend:
        result = backend.forward_trace(lot)
    _emit_units(result, as_json, as_csv, f"lot {lot}", limit)


@trace_app.command("backward")
@handled
def trace_backward(
    serial: Annotated[
        str, typer.Option("--serial", help="UII '<part_number>:<serial_number>' of a unit or system")
    ],
    as_json: JsonOpt = False,
    data_dir: DataDirOpt = None,
    dsn: DsnOpt = None,
    token: TokenOpt = None,
) -> None:
    """Every component of a unit or system, with lots, operations and tests."""
    with open_backend(store_settings(data_dir, dsn, token)) as backend:
        result = backend.backward_trace(serial)
    withheld = withheld_text(result.withheld_units)
    if withheld:
        err.print(f"{serial}: {withheld}", markup=False, highlight=False)
    if as_json:
        out.print_json(data=to_jsonable(result))
        return
    t = Table(title=f"{serial}: {len(result.units)} units in its tree (final system {result.root_uii})")
    for c in ("uii", "depth", "parent"):
        t.add_column(c)
    for u in result.units:
        t.add_row(u["uii"], str(u.get("depth", "")), str(u.get("parent_uii") or ""))
    out.print(t)
    out.print(
        f"{len(result.lots)} lot consumptions, {len(result.operations)} operations, "
        f"{len(result.tests)} tests (use --json for all)"
    )


@recall_app.callback()
@handled
def recall(
    ctx: typer.Context,
    lot: LotOpt = None,
    supplier_lot: SupplierLotOpt = None,
    supplier: SupplierOpt = None,
    station: StationOpt = None,
    operator: OperatorOpt = None,
    bench: BenchOpt = None,
    serial: SerialOpt = None,
    start: FromOpt = None,
    end: ToOpt = None,
    as_json: JsonOpt = False,
    as_csv: CsvOpt = False,
    limit: LimitOpt = 50,
    data_dir: DataDirOpt = None,
    dsn: DsnOpt = None,
    token: TokenOpt = None,
) -> None:
    """Recall impact of a trigger: affected units now and in the past, by customer and status."""
    if ctx.invoked_subcommand is not None:
        return  # `recall report ...`: the subcommand takes its own trigger options
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
    with open_backend(store_settings(data_dir, dsn, token)) as backend:
        result = backend.recall(trigger)
    _emit_units(result, as_json, as_csv, f"recall {trigger.kind} {trigger.id}", limit)
