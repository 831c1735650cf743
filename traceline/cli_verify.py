"""``traceline verify`` and ``traceline report verify FILE``: tamper evidence, from the CLI.

Plain functions with typer-annotated parameters; ``traceline/cli.py`` registers them.

* ``verify``: re-hash the store and check it against its hash chain, the signed chain heads and
  the derived tables (``queries.verify.verify_store``); exit 0 when clean, 5 when any row was
  altered, deleted or inserted (every finding listed with its table, key and offset).
* ``report verify FILE``: whether FILE is a report traceline issued, unchanged
  (``queries.report_render.verify_report_file``); exit 0 when it is, 5 when it is not.

Both read the store directly (the chain key ``<data dir>/keys/chain.ed25519``, the report key
``<data dir>/keys/report.ed25519``); while ``traceline serve`` owns an embedded store they say
so (exit 3) instead of opening it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from queries.report_render import verify_report_file
from queries.verify import EXIT_TAMPERED, Verification, verify_store
from sinks.chain import Verifier, chain_key_path, report_key_path
from sinks.store import Store
from traceline.backend import open_store, serve_state
from traceline.cli_common import DataDirOpt, DsnOpt, JsonOpt, err, fail, handled, store_settings
from traceline.cli_common import out as console
from traceline.errors import EXIT_SERVICE, EXIT_USAGE
from traceline.settings import Settings

__all__ = ["EXIT_TAMPERED", "report_verify_command", "verify_command"]

ShowOpt = Annotated[int, typer.Option("--show", help="list at most this many findings (all are counted)")]


def _open(settings: Settings) -> Store:
    if settings.clickhouse_dsn.startswith("chdb://") and serve_state(settings.data_dir):
        raise fail(
            "traceline serve owns the embedded store: stop it to verify (the API has no verify route yet)",
            EXIT_SERVICE,
        )
    return open_store(settings, create=False)


def _print(v: Verification, show: int) -> None:
    if v.findings:
        t = Table(title=f"{len(v.findings)} signs of tampering")
        for col in ("kind", "table", "key", "where", "what"):
            t.add_column(col, overflow="fold")
        for f in v.findings[:show]:
            where = f"{f.topic}[{f.partition}]@{f.offset}" if f.offset is not None else ""
            t.add_row(f.kind, f.table, f.key, where, f.detail)
        console.print(t)
        if len(v.findings) > show:
            console.print(f"... and {len(v.findings) - show} more (--show N, or --json)", markup=False)
    chains = Table(title="hash chains")
    for col in ("topic[partition]", "entries", "rows", "head", "signed head", "unsigned", "unchained"):
        chains.add_column(col, justify="left" if col == "topic[partition]" else "right")
    for c in v.chains:
        chains.add_row(
            f"{c.topic}[{c.partition}]",
            str(c.entries),
            str(c.rows),
            "-" if c.head_offset is None else str(c.head_offset),
            "-" if c.signed_offset is None else str(c.signed_offset),
            str(c.unsigned_tail),
            str(c.unchained),
        )
    console.print(chains)
    derived = ", ".join(f"{d.table} (from {d.source})" for d in v.derived)
    console.print(f"derived tables checked: {derived}", markup=False, highlight=False)
    for note in v.notes:
        err.print(f"note: {note}", markup=False, highlight=False)
    verdict = (
        "clean: every row is what the sink landed" if v.clean else f"TAMPERED: {len(v.findings)} findings"
    )
    console.print(verdict, style="bold green" if v.clean else "bold red", markup=False)


@handled
def verify_command(
    json_out: JsonOpt = False,
    show: ShowOpt = 50,
    data_dir: DataDirOpt = None,
    dsn: DsnOpt = None,
) -> None:
    """Check the store against its hash chain, signed heads and derived tables (exit 5: tampered)."""
    settings = store_settings(data_dir, dsn)
    key = chain_key_path(settings.data_dir)
    verifier = Verifier.load(key)
    if verifier is None:
        err.print(f"note: no chain key at {key}: signed heads are not checked", markup=False, highlight=False)
    store = _open(settings)
    try:
        v = verify_store(store, verifier)
    finally:
        store.close()
    if json_out:
        print(json.dumps({**dataclasses.asdict(v), "clean": v.clean}, default=str, indent=2))
    else:
        _print(v, show)
    raise typer.Exit(v.exit_code)


@handled
def report_verify_command(
    file: Annotated[Path, typer.Argument(help="a report file (html, pdf or csv) to check")],
    json_out: JsonOpt = False,
    data_dir: DataDirOpt = None,
    dsn: DsnOpt = None,
) -> None:
    """Is FILE a report traceline issued, unchanged? (exit 0: yes; 5: no)."""
    settings = store_settings(data_dir, dsn)
    try:
        content = file.read_bytes()
    except OSError as exc:
        raise fail(f"cannot read {file}: {exc.strerror or exc}", EXIT_USAGE) from exc
    key = report_key_path(settings.data_dir)
    verifier = Verifier.load(key)
    if verifier is None:
        raise fail(
            f"no report key at {key} (nor {key.name}.pub): is --data-dir the one that issued it?", EXIT_USAGE
        )
    store = _open(settings)
    try:
        check = verify_report_file(store, content, verifier)
    finally:
        store.close()
    if json_out:
        print(json.dumps(dataclasses.asdict(check), default=str, indent=2))
    else:
        style = "bold green" if check.genuine else "bold red"
        console.print(f"{file}: {'GENUINE' if check.genuine else 'NOT GENUINE'}", style=style, markup=False)
        console.print(check.reason, markup=False, highlight=False)
    raise typer.Exit(0 if check.genuine else EXIT_TAMPERED)
