"""``traceline status``: is the pipeline healthy, and has the store caught up?

Asks the running ``traceline serve`` (``GET /health``, ``GET /ledger``): the status derived from
every part (ok / degraded / failing, with the problems), each part's state and restarts, the
consumer lag, and the sink's ledger. ``--wait-caught-up`` is the way for scripts to know the
store has every event published so far: it waits until the status is ok and both consumer
groups have no lag for a quiet period, or exits 3 at ``--timeout``.

The details (parts, problems, lag, ledger) are for an administrator: give an administrator's
token (``TRACELINE_TOKEN`` or ``--token``); without one only the status is shown, and
``--wait-caught-up`` (which needs the lag) is refused.
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import httpx
import typer
from rich.table import Table

from traceline.backend import serve_state
from traceline.cli_common import DataDirOpt, JsonOpt, TokenOpt, err, fail, handled, out, settings_for
from traceline.errors import EXIT_SERVICE, EXIT_USAGE

__all__ = ["status_command"]


def _get(url: str, path: str, token: str | None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        r = httpx.get(url + path, timeout=30, headers=headers)
    except httpx.HTTPError as exc:
        raise fail(f"the running server at {url} did not answer: {exc}") from exc
    if r.status_code in (401, 403):
        try:
            detail = r.json().get("detail", r.text)
        except ValueError:
            detail = r.text
        hint = "" if token else " (set TRACELINE_TOKEN or give --token)"
        raise fail(f"the running server at {url} refused {path}: {detail}{hint}", EXIT_USAGE)
    return dict(r.json())


def _caught_up(health: dict[str, Any]) -> bool:
    lag = health.get("lag") or {}
    return health.get("status") == "ok" and bool(lag) and all(v == 0 for v in lag.values())


@handled
def status_command(
    data_dir: DataDirOpt = None,
    wait_caught_up: Annotated[
        bool, typer.Option("--wait-caught-up", help="wait until the status is ok and no consumer lags")
    ] = False,
    timeout: Annotated[float, typer.Option(help="seconds to wait with --wait-caught-up")] = 300.0,
    quiet: Annotated[float, typer.Option(help="seconds the lag must stay 0 with --wait-caught-up")] = 3.0,
    as_json: JsonOpt = False,
    token: TokenOpt = None,
) -> None:
    """Health of every part of the running pipeline, consumer lag and the sink's ledger (with an
    administrator's token; without one, the status only). Exit 0 when ok (and caught up, with
    --wait-caught-up), 3 otherwise."""
    s = settings_for(data_dir=data_dir, token=token)
    state = serve_state(s.data_dir)
    if not state:
        raise fail(f"no `traceline serve` is running for {s.data_dir} (start it, or give --data-dir)")
    url = str(state["url"])
    secret = s.auth.token.get_secret_value() if s.auth.token is not None else None
    health = _get(url, "/health", secret)
    if "parts" not in health:  # the status only: anonymous, or not an administrator
        if wait_caught_up:
            raise fail(
                "--wait-caught-up reads the consumer lag, which the server shows administrators only: "
                "give an administrator's token (TRACELINE_TOKEN or --token)",
                EXIT_USAGE,
            )
        out.print(f"traceline at {url}: {health.get('status')} (details need an administrator's token)")
        if health.get("status") != "ok":
            raise typer.Exit(EXIT_SERVICE)
        return
    if wait_caught_up:
        deadline = time.monotonic() + timeout
        zero_since: float | None = None
        while True:
            if _caught_up(health):
                zero_since = zero_since or time.monotonic()
                if time.monotonic() - zero_since >= quiet:
                    break
            else:
                zero_since = None
            if time.monotonic() > deadline:
                err.print(f"not caught up after {timeout:.0f}s", markup=False)
                break
            err.print(f"waiting: status {health.get('status')}, lag {health.get('lag')}", markup=False)
            time.sleep(1.0)
            health = _get(url, "/health", secret)
    ledger = _get(url, "/ledger", secret)
    if as_json:
        out.print_json(json.dumps({"health": health, "ledger": ledger}, default=str))
    else:
        _print(url, health, ledger)
    done = _caught_up(health) if wait_caught_up else health.get("status") == "ok"
    if not done:
        raise typer.Exit(EXIT_SERVICE)


def _print(url: str, health: dict[str, Any], ledger: dict[str, Any]) -> None:
    style = {"ok": "bold green", "degraded": "bold yellow"}.get(str(health.get("status")), "bold red")
    out.print(f"traceline at {url}: [{style}]{health.get('status')}[/]  lag {health.get('lag')}")
    for problem in health.get("problems", []):
        out.print(f"  - {problem}", markup=False, highlight=False)
    t = Table("part", "state", "restarts", "crash-looping", "last error")
    for name, part in (health.get("parts") or {}).items():
        t.add_row(
            name,
            part["state"],
            str(part["restarts"]),
            "yes" if part["crash_looping"] else "",
            part["last_error"] or "",
        )
    out.print(t)
    parts = ledger.get("partitions") or {}
    if parts:
        lt = Table(title="sink ledger per events partition (since the sink started)")
        keys = sorted({k for v in parts.values() for k in v})
        lt.add_column("partition")
        for k in keys:
            lt.add_column(k, justify="right")
        for p, counts in sorted(parts.items(), key=lambda kv: str(kv[0])):
            lt.add_row(str(p), *(str(counts.get(k, 0)) for k in keys))
        out.print(lt)
    gap = ledger.get("gap") or {}
    out.print("ledger balanced" if not gap else f"LEDGER GAP: {gap}", highlight=False)
