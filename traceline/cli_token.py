"""``traceline token create|list|revoke``: the API's tokens (``traceline.auth``).

Wired into the main CLI with ``app.add_typer(token_app, name="token")``. The tokens live hashed
in the token file (``<data dir>/tokens.json``, owner-only); whoever may write that file (the
account that runs traceline) manages them, with or without a running server: the server
rereads the file when it changes, so a revoked token is refused from its next request.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated

import typer
from rich.table import Table

from traceline.auth import ROLES, TokenStore
from traceline.cli_common import DataDirOpt, JsonOpt, err, handled, out, settings_for

__all__ = ["token_app"]

token_app = typer.Typer(
    help="API tokens: create (shown once), list, revoke. Kept hashed in <data dir>/tokens.json.",
    no_args_is_help=True,
)


def _store(data_dir: DataDirOpt) -> TokenStore:
    return TokenStore(settings_for(data_dir=data_dir).tokens_path)


@token_app.command("create")
@handled
def create(
    name: Annotated[str, typer.Option("--name", help="who or what holds it, e.g. a.analyst or bench-gw-3")],
    role: Annotated[str, typer.Option("--role", help=" | ".join(ROLES))],
    programs: Annotated[
        str,
        typer.Option("--programs", help="programmes it may see, comma-separated (PRG-AESA,PRG-EWSP), or '*'"),
    ],
    data_dir: DataDirOpt = None,
) -> None:
    """Create a token and print it, once: it is stored only as its sha256."""
    tokens = _store(data_dir)
    rec, token = tokens.create(name, role, programs)
    err.print(
        f"token {rec.name!r}: role {rec.role}, programmes {', '.join(rec.programs)} (in {tokens.path}). "
        "It is shown this once; keep it secret:",
        markup=False,
        highlight=False,
    )
    typer.echo(token)
    err.print(
        "use it with: export TRACELINE_TOKEN=<the token above> (or --token), or "
        "curl -H 'Authorization: Bearer <the token above>'",
        markup=False,
        highlight=False,
    )


@token_app.command("list")
@handled
def list_cmd(data_dir: DataDirOpt = None, as_json: JsonOpt = False) -> None:
    """Every token (revoked ones too): name, role, programmes, created, revoked. Never the token."""
    records = _store(data_dir).records()
    if as_json:
        out.print_json(json.dumps([{k: v for k, v in asdict(r).items() if k != "sha256"} for r in records]))
        return
    t = Table("name", "role", "programmes", "created", "revoked")
    for r in records:
        t.add_row(r.name, r.role, ", ".join(r.programs), r.created_at, r.revoked_at or "")
    out.print(t)
    out.print(f"{sum(r.active for r in records)} active, {sum(not r.active for r in records)} revoked")


@token_app.command("revoke")
@handled
def revoke(
    name: Annotated[str, typer.Argument(help="the token's name (see `traceline token list`)")],
    data_dir: DataDirOpt = None,
) -> None:
    """Revoke a token: the server refuses it from its next request (401)."""
    rec = _store(data_dir).revoke(name)
    out.print(f"token {rec.name!r} revoked at {rec.revoked_at}", markup=False, highlight=False)
