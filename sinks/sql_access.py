"""Need-to-know for analysts who query a ClickHouse server with SQL directly: roles, row
policies on ``program`` and users, generated (``traceline sql-access``).

The API scopes every answer itself (``queries.scope``); a ClickHouse user bypasses it. So:

* ``traceline_reader_<programme>``: one role per programme, ``SELECT`` on every table that
  carries a ``program`` column (raw events, facts, alerts) with a row policy
  ``program = '<programme>'`` on each. ClickHouse combines permissive policies with OR, so a
  user with two programme roles sees both programmes' rows and nothing else.
* Tables **without** a ``program`` column (the genealogy and recall indexes ``unit_genealogy``,
  ``root_members``, ``lot_units``, ``unit_facts``; dead letters; the integrity tables) are not
  granted to programme roles at all: a row there names units of every programme. Recalls across
  the genealogy go through the API (scoped, with withheld counts).
* ``traceline_all``: ``SELECT`` on the whole database, for administrators and auditors (with a
  ``USING 1`` policy on the programme tables: once a table has row policies, a role without one
  sees none of its rows).
* Users: ``IDENTIFIED WITH sha256_password``, the password generated and printed once, the
  roles granted and set as default; ``SETTINGS readonly = 1``.

Statements only (``statements``); the CLI prints them for review or applies them with an
administrator's connection. The embedded engine (chDB) refuses access-control statements, so
the tests check the statements, not their effect.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from schemas.errors import InvalidInputError
from sinks.tables import ALERT_TABLES, DERIVED, INTEGRITY_TABLES, TABLES, Table

__all__ = ["SqlUser", "programme_tables", "unscoped_tables", "role_for", "statements"]

_PROGRAMME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_USER = re.compile(r"^[A-Za-z][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class SqlUser:
    name: str
    programs: tuple[str, ...]  # ("*",) for every programme
    password: str

    @classmethod
    def generate(cls, name: str, programs: Iterable[str]) -> SqlUser:
        return cls(name, tuple(programs), secrets.token_urlsafe(24))


def _all_tables() -> tuple[Table, ...]:
    return TABLES + DERIVED + ALERT_TABLES + INTEGRITY_TABLES


def programme_tables() -> list[str]:
    """Tables a programme role may read (they carry ``program``)."""
    return [t.name for t in _all_tables() if any(c.name == "program" for c in t.columns)]


def unscoped_tables() -> list[str]:
    """Tables no programme role may read (no ``program`` column)."""
    return [t.name for t in _all_tables() if not any(c.name == "program" for c in t.columns)]


def role_for(programme: str) -> str:
    return "traceline_reader_" + re.sub(r"[^a-z0-9]", "_", programme.lower())


def _check(programme: str) -> str:
    if not _PROGRAMME.match(programme):
        raise InvalidInputError(f"not a programme id: {programme!r}", "programs")
    return programme


def statements(database: str, programmes: Iterable[str], users: Iterable[SqlUser] = ()) -> list[str]:
    """The statements for these programmes' roles and policies and these users (idempotent:
    ``IF NOT EXISTS`` / ``OR REPLACE``)."""
    db = f"`{database}`"
    progs = sorted({_check(p) for p in programmes if p != "*"})
    out = ["CREATE ROLE IF NOT EXISTS traceline_all", f"GRANT SELECT ON {db}.* TO traceline_all"]
    for table in programme_tables():  # a table with row policies shows a role without one nothing
        out.append(
            f"CREATE ROW POLICY OR REPLACE traceline_all ON {db}.`{table}` FOR SELECT USING 1"
            " AS permissive TO traceline_all"
        )
    for p in progs:
        role = role_for(p)
        out.append(f"CREATE ROLE IF NOT EXISTS {role}")
        for table in programme_tables():
            out.append(f"GRANT SELECT ON {db}.`{table}` TO {role}")
            out.append(
                f"CREATE ROW POLICY OR REPLACE {role} ON {db}.`{table}` FOR SELECT"
                f" USING program = '{p}' AS permissive TO {role}"
            )
    for u in users:
        if not _USER.match(u.name):
            raise InvalidInputError(f"not a user name: {u.name!r}", "user")
        roles = (
            ["traceline_all"] if "*" in u.programs else [role_for(_check(p)) for p in sorted(set(u.programs))]
        )
        for p in u.programs:
            if p != "*" and p not in progs:
                raise InvalidInputError(
                    f"user {u.name}: programme {p} has no role in these statements", "programs"
                )
        password = u.password.replace("\\", "\\\\").replace("'", "\\'")
        out.append(
            f"CREATE USER OR REPLACE `{u.name}` IDENTIFIED WITH sha256_password BY '{password}'"
            " SETTINGS readonly = 1"
        )
        out.append(f"GRANT {', '.join(roles)} TO `{u.name}`")
        out.append(f"SET DEFAULT ROLE {', '.join(roles)} TO `{u.name}`")
    return out
