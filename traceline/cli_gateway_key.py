"""``traceline gateway-key create|list|revoke``: the keys gateways sign their events with.

Wired into the main CLI with ``app.add_typer(gateway_key_app, name="gateway-key")``. ``create``
makes a key pair for a source (the ``source`` its events name): the private key goes to a file
for the gateway to keep (owner-only, 0600 in a 0700 directory), the public key into the registry
the sink verifies with (``<data dir>/gateway_keys.json``, ``sinks.gateway_keys``). The sink
rereads the registry when it changes, so a key registered or revoked here counts from its next
batch, with or without a running server.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from schemas.signing import GatewayKey
from sinks.gateway_keys import GatewayKeyRegistry, check_source, default_key_file
from traceline.cli_common import DataDirOpt, JsonOpt, err, handled, out, settings_for

__all__ = ["gateway_key_app"]

gateway_key_app = typer.Typer(
    help="Gateway signing keys (Ed25519, one per event source): create, list, revoke. "
    "Public keys are registered in <data dir>/gateway_keys.json.",
    no_args_is_help=True,
)


@gateway_key_app.command("create")
@handled
def create(
    source: Annotated[str, typer.Argument(help="the event source the key speaks for (its events' `source`)")],
    out_file: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="where to write the private key (default: <data dir>/keys/gateways/SOURCE.KEY.json)",
        ),
    ] = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Make a key pair for SOURCE: the private key to a file for the gateway (0600), the public
    key registered. A source with an active key gets a second one (a rotation: revoke the old
    key with --key-id once the gateway uses the new one and its outbox is empty)."""
    s = settings_for(data_dir=data_dir)
    registry = GatewayKeyRegistry(s.gateway_keys_path)
    before = [r for r in registry.records() if r.source == source and r.active]
    key = GatewayKey.generate(check_source(source))
    path = out_file or default_key_file(s.keys_dir, source, key.key_id)
    rec = registry.create(key, path)
    err.print(
        f"gateway key {rec.key_id} for source {rec.source!r} registered in {registry.path}",
        markup=False,
        highlight=False,
    )
    if before:
        err.print(
            f"source {source!r} also has active key(s) {', '.join(r.key_id for r in before)}: both verify "
            f"until you revoke the old one (traceline gateway-key revoke {source!r} --key-id KEY)",
            markup=False,
            highlight=False,
        )
    err.print(
        "the private key: keep it on the gateway only, owner-readable; publish with it: "
        f"traceline publish --key {path} --file events.jsonl (or TRACELINE_GATEWAY_KEY_FILE={path})",
        markup=False,
        highlight=False,
    )
    typer.echo(str(path))


@gateway_key_app.command("list")
@handled
def list_cmd(data_dir: DataDirOpt = None, as_json: JsonOpt = False) -> None:
    """Every registered key (revoked ones too): source, key id, created, revoked."""
    records = GatewayKeyRegistry(settings_for(data_dir=data_dir).gateway_keys_path).records()
    if as_json:
        out.print_json(
            json.dumps([{k: v for k, v in asdict(r).items() if k != "public_key"} for r in records])
        )
        return
    t = Table("source", "key id", "created", "revoked")
    for r in sorted(records, key=lambda r: (r.source, r.created_at)):
        t.add_row(r.source, r.key_id, r.created_at, r.revoked_at or "")
    out.print(t)
    out.print(f"{sum(r.active for r in records)} active, {sum(not r.active for r in records)} revoked")


@gateway_key_app.command("revoke")
@handled
def revoke(
    source: Annotated[str, typer.Argument(help="the source whose keys to revoke")],
    key_id: Annotated[
        str | None,
        typer.Option("--key-id", help="only this key (a rotation); default: every active key"),
    ] = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Revoke a source's keys: the sink dead-letters events signed with them from its next batch."""
    done = GatewayKeyRegistry(settings_for(data_dir=data_dir).gateway_keys_path).revoke(source, key_id)
    for r in done:
        out.print(
            f"key {r.key_id} of source {r.source!r} revoked at {r.revoked_at}", markup=False, highlight=False
        )
