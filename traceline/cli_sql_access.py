"""``traceline sql-access``: ClickHouse roles, row policies on ``program`` and users for
analysts who query a ClickHouse server with SQL (``sinks.sql_access``).

    traceline sql-access --programs PRG-AESA,PRG-EWSP --user j.doe=PRG-AESA --user audit=*
    traceline sql-access ... --apply          # run them with the configured (administrator) DSN

Prints the statements (and each new user's password, once); ``--apply`` runs them against the
ClickHouse server of ``TRACELINE_CLICKHOUSE_DSN`` (an embedded chdb store has no users).
"""

from __future__ import annotations

from typing import Annotated

import typer

from sinks.sql_access import SqlUser, statements
from traceline.backend import open_store
from traceline.cli_common import DataDirOpt, err, fail, handled, out, settings_for
from traceline.errors import EXIT_USAGE

__all__ = ["sql_access_command"]


@handled
def sql_access_command(
    programs: Annotated[
        str, typer.Option("--programs", help="programmes to make roles for, comma-separated")
    ],
    user: Annotated[
        list[str] | None,
        typer.Option("--user", help="NAME=PRG-A,PRG-B (or NAME=* for every programme); repeatable"),
    ] = None,
    apply: Annotated[
        bool, typer.Option("--apply", help="run them on the configured ClickHouse server")
    ] = False,
    data_dir: DataDirOpt = None,
) -> None:
    """Roles, row policies on `program` and read-only users for SQL access to a ClickHouse server."""
    s = settings_for(data_dir=data_dir)
    progs = [p.strip() for p in programs.split(",") if p.strip()]
    if not progs:
        raise fail("--programs: give at least one programme", EXIT_USAGE)
    users = []
    for spec in user or []:
        name, sep, granted = spec.partition("=")
        if not sep or not granted.strip():
            raise fail(f"--user {spec!r}: use NAME=PRG-A,PRG-B or NAME=*", EXIT_USAGE)
        users.append(SqlUser.generate(name.strip(), [g.strip() for g in granted.split(",") if g.strip()]))
    sql = statements(s.clickhouse.database, progs, users)
    for u in users:
        err.print(f"password of {u.name} (shown once): {u.password}", markup=False, highlight=False)
    if not apply:
        for stmt in sql:
            out.print(stmt + ";", markup=False, highlight=False, soft_wrap=True)
        return
    if s.clickhouse_dsn.startswith("chdb://"):
        raise fail(
            "--apply needs a ClickHouse server (TRACELINE_CLICKHOUSE_DSN=http://...): chdb has no users",
            EXIT_USAGE,
        )
    store = open_store(s, create=False)
    try:
        for stmt in sql:
            store.command(stmt)
    finally:
        store.close()
    out.print(f"{len(sql)} statements applied on {s.clickhouse.database}")
