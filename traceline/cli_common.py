"""What every ``traceline`` command shares: consoles, options, settings, triggers, and the one
place a command's error becomes a message and an exit code (:func:`handled`, which asks
``traceline.errors.classify``).

Its own module so that ``traceline.cli`` and the command modules beside it (``cli_query``,
``cli_report``, ``cli_alerts``) import it without importing each other.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, ParamSpec, TypeVar

import typer
from pydantic import SecretStr
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from queries import Trigger
from sinks.store import check_time
from traceline.backend import apply_kafka_security, local_bootstrap
from traceline.errors import EXIT_SERVICE, EXIT_USAGE, classify
from traceline.settings import Settings, load_settings

__all__ = [
    "err",
    "out",
    "fail",
    "handled",
    "progress",
    "settings_for",
    "store_settings",
    "resolve_bootstrap",
    "env",
    "WHEN",
    "parse_when",
    "trigger_from_options",
    "BootstrapOpt",
    "DataDirOpt",
    "DsnOpt",
    "TopicOpt",
    "RegistryOpt",
    "LotOpt",
    "SupplierLotOpt",
    "SupplierOpt",
    "StationOpt",
    "OperatorOpt",
    "BenchOpt",
    "SerialOpt",
    "FromOpt",
    "ToOpt",
    "JsonOpt",
    "TokenOpt",
]

_P = ParamSpec("_P")
_R = TypeVar("_R")

err = Console(stderr=True)
out = Console(width=None if sys.stdout.isatty() else 160)  # pipes get wide tables, not wrapped ones


def env(var: str) -> str:
    """An environment-variable hint for ``--help`` (escaped: rich would read ``[...]`` as markup)."""
    return rf"\[env: {var}]"


WHEN = (
    "ISO-8601 date or time, e.g. 2026-01-05 or 2026-01-05T08:00 or 2026-01-05T08:00+01:00;"
    " UTC without an offset"
)

BootstrapOpt = Annotated[
    str | None,
    typer.Option(
        "--bootstrap", help=f"Kafka bootstrap servers host:port,... {env('TRACELINE_KAFKA_BOOTSTRAP')}"
    ),
]
DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help=f"local state: outbox, embedded store, local broker {env('TRACELINE_DATA_DIR')}"
    ),
]
DsnOpt = Annotated[
    str | None,
    typer.Option(
        "--clickhouse-dsn",
        help="chdb:///path or http(s)://host:8123 (default: the data dir's store) "
        + env("TRACELINE_CLICKHOUSE_DSN"),
    ),
]
TopicOpt = Annotated[
    str | None, typer.Option("--topic", help=f"raw events topic {env('TRACELINE_KAFKA_EVENTS_TOPIC')}")
]
RegistryOpt = Annotated[
    str | None,
    typer.Option(
        "--schema-registry", help=f"Confluent schema registry URL {env('TRACELINE_SCHEMA_REGISTRY_URL')}"
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="JSON output for tools")]
TokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token",
        help="API token for the running server; without a server, its programmes apply to what the store "
        f"shows (default: the local operator, every programme) {env('TRACELINE_TOKEN')}",
        show_default=False,
    ),
]

# recall triggers: exactly one of these, optionally with a time window
LotOpt = Annotated[str | None, typer.Option("--lot", help="a plant lot id, e.g. LA00000431")]
SupplierLotOpt = Annotated[
    str | None,
    typer.Option("--supplier-lot", help="'<supplier_id>:<supplier_lot>', e.g. SUP-THERMIX:TX25-000003"),
]
SupplierOpt = Annotated[
    str | None, typer.Option("--supplier", help="a supplier id: lots received from it (in --from/--to)")
]
StationOpt = Annotated[
    str | None, typer.Option("--station", help="a station / machine id: units it worked on (in --from/--to)")
]
OperatorOpt = Annotated[
    str | None, typer.Option("--operator", help="an operator id: units they worked on (in --from/--to)")
]
BenchOpt = Annotated[
    str | None, typer.Option("--bench", help="a test bench id: units tested on it (in --from/--to)")
]
SerialOpt = Annotated[
    str | None, typer.Option("--serial", help="a unit's UII '<part_number>:<serial_number>'")
]
FromOpt = Annotated[str | None, typer.Option("--from", help=f"window start: {WHEN}")]
ToOpt = Annotated[str | None, typer.Option("--to", help=f"window end: {WHEN}")]


def fail(message: str, code: int = EXIT_SERVICE) -> typer.Exit:
    """Print an error (markup off: messages quote user input) and return the exit to raise."""
    err.print(f"error: {message}", style="bold red", markup=False, highlight=False)
    return typer.Exit(code)


def handled(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """A command whose errors become one line and the exit code ``traceline.errors`` assigns
    (2 bad input, 3 a service failed); an unexpected error keeps its traceback."""

    @functools.wraps(fn)
    def command(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            failure = classify(exc)
            if failure is None:
                raise
            raise fail(failure.message, failure.exit_code) from exc

    return command


def progress() -> Progress:
    """A progress display on stderr: description, bar, count, a rate field, elapsed time."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    )


def settings_for(
    bootstrap: str | None = None,
    data_dir: Path | None = None,
    topic: str | None = None,
    registry: str | None = None,
    token: str | None = None,
) -> Settings:
    """Settings from the environment with the flags given on the command line (and this
    process's Kafka client security set from them: ``backend.apply_kafka_security``)."""
    s = load_settings(
        data_dir=data_dir,
        kafka__bootstrap=bootstrap,
        kafka__events_topic=topic,
        schema_registry__url=registry,
        auth__token=SecretStr(token) if token else None,
    )
    apply_kafka_security(s)
    return s


def store_settings(data_dir: Path | None, dsn: str | None, token: str | None = None) -> Settings:
    """Settings for a command that reads the store (``--data-dir``, ``--clickhouse-dsn``,
    ``--token``)."""
    s = settings_for(data_dir=data_dir, token=token)
    if dsn:
        s.clickhouse.dsn = dsn
    return s


def resolve_bootstrap(settings: Settings) -> str:
    """The configured bootstrap, else the running local stack's, else a clear error (exit 3)."""
    bootstrap = local_bootstrap(settings)
    if bootstrap:
        return bootstrap
    raise fail(
        "no Kafka broker configured and the local one is not running: "
        "run `traceline stack up` (or `make stack-up`), or set TRACELINE_KAFKA_BOOTSTRAP / --bootstrap"
    )


def parse_when(value: str | None, option: str) -> datetime | None:
    """A ``--from``/``--to`` value: ISO-8601, read as UTC when it has no offset; else exit 2."""
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise fail(f"{option} {value!r} is not a date or time: use {WHEN}", EXIT_USAGE) from None
    return check_time(when, option)


def trigger_from_options(start: str | None = None, end: str | None = None, **given: str | None) -> Trigger:
    """Exactly one trigger option (and an optional window) -> the Trigger; else exit 2."""
    chosen = {k: v for k, v in given.items() if v}
    if len(chosen) != 1:
        names = ", ".join("--" + k.replace("_", "-") for k in given)
        raise fail(f"give exactly one trigger: {names}", EXIT_USAGE)
    kind, ident = next(iter(chosen.items()))
    ws, we = parse_when(start, "--from"), parse_when(end, "--to")
    if ws is not None and we is not None and ws > we:
        raise fail(f"--from {ws.isoformat()} is after --to {we.isoformat()}", EXIT_USAGE)
    return Trigger(kind, ident, ws, we)
