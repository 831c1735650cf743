"""``traceline alerts``: follow the alerts topic live (``tail``), or query the alerts table (``list``).

Wired into the main CLI with ``app.add_typer(alerts_app, name="alerts")``. ``list`` asks the one
backend (``traceline.backend``: the running server's API, else the store), which lists only the
alerts of the caller's programmes. ``tail`` reads the Kafka topic itself (whoever may read the
topic sees every alert); with ``TRACELINE_TOKEN`` / ``--token`` set it shows only the alerts of
that token's programmes.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Annotated, Any

import typer
from confluent_kafka import Consumer, KafkaError
from rich.table import Table

from queries import to_jsonable
from queries.scope import parse_programs, visible
from schemas.alert import decode_alert
from schemas.errors import DecodeError
from schemas.kafka import consumer_config
from traceline.auth import local_principal
from traceline.backend import AlertQuery, open_backend
from traceline.cli_common import (
    WHEN,
    BootstrapOpt,
    DataDirOpt,
    TokenOpt,
    handled,
    out,
    parse_when,
    resolve_bootstrap,
    settings_for,
)

__all__ = ["alerts_app"]

alerts_app = typer.Typer(help="Alerts: follow them live (tail) or query them (list).", no_args_is_help=True)

_out = out  # wide tables when piped (cli_common)
_STYLE = {"CRITICAL": "bold red", "WARNING": "yellow", "INFO": "cyan"}

JsonOpt = Annotated[bool, typer.Option("--json", help="JSON output (one object per line for tail)")]


def _print_alert(a: dict[str, Any]) -> None:
    sev = a["severity"]
    when = str(a.get("raised_at", ""))[:19].replace("T", " ")
    head = f"[{_STYLE.get(sev, '')}]{sev:<8}[/] {when}  {a['rule']:<19} {a['title']}"
    if int(a.get("version", 1)) > 1:
        head += f"  [dim](update v{a['version']})[/]"
    _out.print(head, highlight=False)
    extra = []
    if a.get("by_status"):
        extra.append("status " + ", ".join(f"{k}={v}" for k, v in sorted(a["by_status"].items())))
    if a.get("units"):
        more = int(a.get("unit_count", 0)) - len(a["units"][:5])
        extra.append("units " + ", ".join(a["units"][:5]) + (f" (+{more})" if more > 0 else ""))
    if a.get("reference"):
        extra.append(str(a["reference"]))
    if extra:
        _out.print("         " + "  |  ".join(extra), style="dim", highlight=False)


@alerts_app.command("tail")
@handled
def tail(
    bootstrap: BootstrapOpt = None,
    data_dir: DataDirOpt = None,
    from_beginning: Annotated[
        bool, typer.Option("--from-beginning", help="replay every alert first")
    ] = False,
    as_json: JsonOpt = False,
    count: Annotated[int, typer.Option(help="stop after this many alerts (0: follow forever)")] = 0,
    timeout: Annotated[float, typer.Option(help="stop after this many idle seconds (0: never)")] = 0.0,
    token: TokenOpt = None,
) -> None:
    """Follow the alerts topic live (Ctrl-C to stop); with a token, its programmes' alerts only."""
    s = settings_for(bootstrap, data_dir, token=token)
    programs = local_principal(s).programs  # every programme, unless a token is given
    consumer = Consumer(
        consumer_config(
            resolve_bootstrap(s),
            f"traceline-alerts-tail-{uuid.uuid4().hex[:8]}",
            **{"auto.offset.reset": "earliest" if from_beginning else "latest"},
        )
    )
    consumer.subscribe([s.topics.alerts])
    seen, idle_since = 0, time.monotonic()
    try:
        while True:
            msg = consumer.poll(0.5)
            if msg is None:
                if timeout and time.monotonic() - idle_since > timeout:
                    break
                continue
            kerr = msg.error()
            if kerr is not None:
                if kerr.code() != KafkaError._PARTITION_EOF:
                    typer.echo(f"kafka: {kerr}", err=True)
                continue
            idle_since = time.monotonic()
            try:
                alert = decode_alert(msg.value() or b"").to_json()
            except DecodeError as exc:
                typer.echo(f"undecodable alert at {msg.partition()}@{msg.offset()}: {exc}", err=True)
                continue
            if not visible(programs, parse_programs(str(alert.get("program") or ""))):
                continue
            if as_json:
                typer.echo(json.dumps(alert, sort_keys=True))
            else:
                _print_alert(alert)
            seen += 1
            if count and seen >= count:
                break
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()


@alerts_app.command("list")
@handled
def list_cmd(
    severity: Annotated[str | None, typer.Option(help="INFO | WARNING | CRITICAL")] = None,
    rule: Annotated[
        str | None,
        typer.Option(
            help="NC_RAISED | HELD_LOT_USED | LOT_HELD_AFTER_USE | SUSPECT_LOT_YIELD | "
            "OUT_OF_CALIBRATION | SHIPPING_GATE | LEDGER_GAP"
        ),
    ] = None,
    since: Annotated[str | None, typer.Option("--since", help=f"event time at or after: {WHEN}")] = None,
    until: Annotated[str | None, typer.Option("--until", help=f"event time before: {WHEN}")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="rows per page")] = 100,
    offset: Annotated[int, typer.Option(min=0, help="skip this many (the next page)")] = 0,
    as_json: JsonOpt = False,
    data_dir: DataDirOpt = None,
    token: TokenOpt = None,
) -> None:
    """The latest version of each alert, newest event first, one page (with the total)."""
    query = AlertQuery(
        severity, rule, parse_when(since, "--since"), parse_when(until, "--until"), limit, offset
    )
    with open_backend(settings_for(data_dir=data_dir, token=token)) as backend:
        page = backend.alerts(query)
    if as_json:
        _out.print_json(data=to_jsonable(page))
        return
    table = Table("severity", "event time", "rule", "v", "units", "title", show_lines=False)
    for a in page.rows:
        sev = a["severity"]
        table.add_row(
            f"[{_STYLE.get(sev, '')}]{sev}[/]",
            str(a.get("event_time") or a["raised_at"])[:19].replace("T", " "),
            a["rule"],
            str(a["version"]),
            str(a["unit_count"]),
            a["title"],
        )
    _out.print(table)
    first = page.offset + 1 if page.rows else 0
    shown = f"{first}-{page.offset + len(page.rows)} of {page.total} alert(s)"
    if page.next_offset is not None:
        shown += f"; {page.total - page.next_offset} more: --offset {page.next_offset}"
    _out.print(shown, style="dim", highlight=False)
