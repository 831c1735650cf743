"""``traceline alerts``: follow the alerts topic live, or query the alerts table.

Wired into the main CLI with ``app.add_typer(alerts_app, name="alerts")``. ``list`` goes through
the running server's API when there is one (it owns an embedded store), else opens the store.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from traceline.cli_options import BootstrapOpt, DataDirOpt

__all__ = ["alerts_app", "add_alert_routes"]

alerts_app = typer.Typer(help="Alerts: follow them live (tail) or query them (list).", no_args_is_help=True)

_out = Console()
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
def tail(
    bootstrap: BootstrapOpt = None,
    data_dir: DataDirOpt = None,
    from_beginning: Annotated[
        bool, typer.Option("--from-beginning", help="replay every alert first")
    ] = False,
    as_json: JsonOpt = False,
    count: Annotated[int, typer.Option(help="stop after this many alerts (0: follow forever)")] = 0,
    timeout: Annotated[float, typer.Option(help="stop after this many idle seconds (0: never)")] = 0.0,
) -> None:
    """Follow the alerts topic live (Ctrl-C to stop)."""
    import time

    from confluent_kafka import Consumer, KafkaError

    from schemas.alert import decode_alert
    from schemas.errors import DecodeError
    from traceline.cli import _settings, resolve_bootstrap

    s = _settings(bootstrap, data_dir)
    consumer = Consumer(
        {
            "bootstrap.servers": resolve_bootstrap(s),
            "group.id": f"traceline-alerts-tail-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest" if from_beginning else "latest",
        }
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
def list_cmd(
    severity: Annotated[str | None, typer.Option(help="INFO | WARNING | CRITICAL")] = None,
    rule: Annotated[str | None, typer.Option(help="e.g. NC_RAISED, HELD_LOT_USED, SHIPPING_GATE")] = None,
    since: Annotated[datetime | None, typer.Option(help="raised at or after (UTC)")] = None,
    limit: Annotated[int, typer.Option(help="rows")] = 100,
    as_json: JsonOpt = False,
    data_dir: DataDirOpt = None,
) -> None:
    """The latest version of each alert, newest first."""
    from sinks.alerts import list_alerts
    from traceline.cli import _query, _settings

    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    s = _settings(data_dir=data_dir)
    params = {
        "severity": severity,
        "rule": rule,
        "since": since.isoformat() if since else None,
        "limit": limit,
    }
    rows = _query(
        s,
        "/alerts",
        params,
        lambda store: list_alerts(store, severity=severity, rule=rule, since=since, limit=limit),
    )
    if as_json:
        _out.print_json(data=rows)
        return
    table = Table("severity", "raised", "rule", "v", "units", "title", show_lines=False)
    for a in rows:
        sev = a["severity"]
        table.add_row(
            f"[{_STYLE.get(sev, '')}]{sev}[/]",
            str(a["raised_at"])[:19].replace("T", " "),
            a["rule"],
            str(a["version"]),
            str(a["unit_count"]),
            a["title"],
        )
    _out.print(table)
    _out.print(f"{len(rows)} alert(s)", style="dim")


def add_alert_routes(api: Any, store: Any) -> None:
    """``GET /alerts`` on the server's API (the running server owns an embedded store)."""
    from fastapi import Query

    from queries import to_jsonable
    from sinks.alerts import list_alerts

    @api.get("/alerts", summary="Alerts (latest version of each), newest first")
    def get_alerts(
        severity: str | None = Query(None),
        rule: str | None = Query(None),
        since: datetime | None = Query(None),
        limit: int = Query(100, ge=1, le=10_000),
    ) -> Any:
        return to_jsonable(list_alerts(store, severity=severity, rule=rule, since=since, limit=limit))
