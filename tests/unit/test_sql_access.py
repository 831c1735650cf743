"""SQL access for analysts on a ClickHouse server (``sinks.sql_access``): a programme role reads
only the tables that carry ``program``, each under a row policy on it; the tables that name
units of every programme (genealogy, recall indexes, dead letters, integrity) are never granted
to a programme role; users are read-only with generated passwords. (chDB refuses access-control
statements, so these check the statements.)"""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from schemas.errors import InvalidInputError
from sinks.sql_access import SqlUser, programme_tables, role_for, statements, unscoped_tables
from traceline.cli import app


def test_a_programme_role_reads_only_programme_tables_under_a_policy_on_program() -> None:
    sql = statements("traceline", ["PRG-A", "PRG-B"], [SqlUser("j.doe", ("PRG-A",), "pw")])
    role = role_for("PRG-A")
    assert {"operations", "shipments", "alerts", "lot_consumption"} <= set(programme_tables())
    assert {"lot_units", "unit_genealogy", "unit_facts", "dead_letters", "query_audit"} <= set(
        unscoped_tables()
    )
    for table in programme_tables():
        assert f"GRANT SELECT ON `traceline`.`{table}` TO {role}" in sql
        policy = [
            s for s in sql if s.startswith(f"CREATE ROW POLICY OR REPLACE {role} ON `traceline`.`{table}`")
        ]
        assert (
            len(policy) == 1 and "USING program = 'PRG-A'" in policy[0] and policy[0].endswith(f"TO {role}")
        )
    granted = [s for s in sql if s.startswith("GRANT SELECT") and s.endswith(f"TO {role}")]
    for table in unscoped_tables():  # a unit of every programme: never to a programme role
        assert not any(f"`{table}`" in s for s in granted)
    assert not any(re.search(rf"GRANT SELECT ON `traceline`\.\* TO {role}\b", s) for s in sql)


def test_users_are_read_only_with_their_roles_and_the_all_role_sees_past_the_policies() -> None:
    sql = statements(
        "traceline",
        ["PRG-A", "PRG-B"],
        [SqlUser("j.doe", ("PRG-A", "PRG-B"), "p'w"), SqlUser("audit", ("*",), "x")],
    )
    both = f"{role_for('PRG-A')}, {role_for('PRG-B')}"
    assert (
        "CREATE USER OR REPLACE `j.doe` IDENTIFIED WITH sha256_password BY 'p\\'w' SETTINGS readonly = 1"
        in sql
    )
    assert f"GRANT {both} TO `j.doe`" in sql and f"SET DEFAULT ROLE {both} TO `j.doe`" in sql
    assert "GRANT traceline_all TO `audit`" in sql
    assert "GRANT SELECT ON `traceline`.* TO traceline_all" in sql
    assert all(
        any(s.startswith(f"CREATE ROW POLICY OR REPLACE traceline_all ON `traceline`.`{t}`") for s in sql)
        for t in programme_tables()
    )


def test_bad_names_and_unknown_programmes_are_refused() -> None:
    with pytest.raises(InvalidInputError):
        statements("traceline", ["PRG-A'; DROP TABLE operations; --"])
    with pytest.raises(InvalidInputError):
        statements("traceline", ["PRG-A"], [SqlUser("x`y", ("PRG-A",), "pw")])
    with pytest.raises(InvalidInputError):
        statements("traceline", ["PRG-A"], [SqlUser("j.doe", ("PRG-Z",), "pw")])


def test_the_cli_prints_the_statements_and_each_password_once(tmp_path: object) -> None:
    r = CliRunner().invoke(app, ["sql-access", "--programs", "PRG-A", "--user", "j.doe=PRG-A"])
    assert r.exit_code == 0, r.output
    assert "CREATE ROW POLICY OR REPLACE traceline_reader_prg_a ON `traceline`.`operations`" in r.output
    assert "password of j.doe (shown once):" in r.output
    bad = CliRunner().invoke(app, ["sql-access", "--programs", "PRG-A", "--user", "j.doe"])
    assert bad.exit_code == 2 and "NAME=PRG-A" in bad.output
    chdb = CliRunner().invoke(
        app, ["sql-access", "--programs", "PRG-A", "--apply", "--data-dir", str(tmp_path)]
    )
    assert chdb.exit_code == 2 and "chdb has no users" in " ".join(chdb.output.split())
