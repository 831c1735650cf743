"""What every ``traceline`` command shares: options, consoles, settings, errors, triggers.

Its own module so that ``traceline.cli`` and the command modules beside it
(``cli_report``, ``cli_alerts``) import it without importing each other.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from traceline.settings import Settings, load_settings

__all__ = [
    "err",
    "out",
    "fail",
    "settings_for",
    "store_settings",
    "as_utc",
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
]

err = Console(stderr=True)
out = Console(width=None if sys.stdout.isatty() else 160)  # pipes get wide tables, not wrapped ones

BootstrapOpt = Annotated[
    str | None, typer.Option("--bootstrap", help="Kafka bootstrap servers [env TRACELINE_KAFKA_BOOTSTRAP]")
]
DataDirOpt = Annotated[
    Path | None, typer.Option("--data-dir", help="local state dir [env TRACELINE_DATA_DIR]")
]
DsnOpt = Annotated[str | None, typer.Option("--clickhouse-dsn", help="[env TRACELINE_CLICKHOUSE_DSN]")]
TopicOpt = Annotated[
    str | None, typer.Option("--topic", help="raw events topic [env TRACELINE_KAFKA_EVENTS_TOPIC]")
]
RegistryOpt = Annotated[
    str | None,
    typer.Option(
        "--schema-registry", help="Confluent schema registry URL [env TRACELINE_SCHEMA_REGISTRY_URL]"
    ),
]

# recall triggers: exactly one of these, optionally with a time window
LotOpt = Annotated[str | None, typer.Option("--lot", help="a lot_id")]
SupplierLotOpt = Annotated[str | None, typer.Option("--supplier-lot", help="'<supplier_id>:<supplier_lot>'")]
SupplierOpt = Annotated[str | None, typer.Option("--supplier", help="a supplier_id (use --from/--to)")]
StationOpt = Annotated[str | None, typer.Option("--station")]
OperatorOpt = Annotated[str | None, typer.Option("--operator")]
BenchOpt = Annotated[str | None, typer.Option("--bench")]
SerialOpt = Annotated[str | None, typer.Option("--serial", help="a unit UII")]
FromOpt = Annotated[datetime | None, typer.Option("--from", help="window start (UTC)")]
ToOpt = Annotated[datetime | None, typer.Option("--to", help="window end (UTC)")]


def fail(message: str, code: int = 3) -> typer.Exit:
    """Print an error (markup off: messages quote user input) and return the exit to raise."""
    err.print(f"error: {message}", style="bold red", markup=False, highlight=False)
    return typer.Exit(code)


def settings_for(
    bootstrap: str | None = None,
    data_dir: Path | None = None,
    topic: str | None = None,
    registry: str | None = None,
) -> Settings:
    """Settings from the environment with the flags given on the command line."""
    return load_settings(
        data_dir=data_dir,
        kafka__bootstrap=bootstrap,
        kafka__events_topic=topic,
        schema_registry__url=registry,
    )


def store_settings(data_dir: Path | None, dsn: str | None) -> Settings:
    """Settings for a command that reads the store (``--data-dir``, ``--clickhouse-dsn``)."""
    s = settings_for(data_dir=data_dir)
    if dsn:
        s.clickhouse.dsn = dsn
    return s


def as_utc(v: datetime | None) -> datetime | None:
    """A flag's datetime, read as UTC when it has no offset."""
    return v.replace(tzinfo=UTC) if v is not None and v.tzinfo is None else v


def trigger_from_options(**given: str | None) -> tuple[str, str]:
    """Exactly one trigger option -> (kind, id); else a usage error (exit 2)."""
    chosen = {k: v for k, v in given.items() if v}
    if len(chosen) != 1:
        names = ", ".join("--" + k.replace("_", "-") for k in given)
        raise fail(f"give exactly one trigger: {names}", 2)
    return next(iter(chosen.items()))
