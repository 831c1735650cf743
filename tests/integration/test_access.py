"""Access: authenticated API and CLI, and programme scoping (need-to-know), on the real engine.

A small plant built by hand so every answer is known: programme A and programme B share one
lot (``L-SHARED``); B has a system, a past holder (a board reworked out of an LRU) and an NC of
its own on the shared lot; one A board sits in a B system (cross-programme assembly). Then:

* anonymous callers get 401 (``WWW-Authenticate: Bearer``) on every path of the OpenAPI
  document but ``/health``, which tells them the status and nothing else;
* a revoked token is 401 from its next request; a gateway token is 403 on every read; an
  analyst is 403 on ``/ledger``;
* a programme-A token never sees a B unit in any answer (recall, forward and backward traces,
  report CSV/HTML, drill documents, alerts) and is told how many were withheld; a B unit's
  backward trace is the same 404 as a unit the store never saw;
* the CLI without a server applies ``TRACELINE_TOKEN``'s programmes (and is the local operator,
  seeing everything, without it); the CLI through a server sends the token.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from queries import RecallImpact, Trigger
from queries.verify import verify_store
from schemas.alert import Alert
from schemas.models import (
    Disposition,
    EventBase,
    InspectionResult,
    LotQuantity,
    MaterialReceived,
    NonconformanceRaised,
    OperationCompleted,
    Severity,
    TargetKind,
    UnitAssembled,
    UnitRef,
    UnitRemoved,
    UnitShipped,
    UnitTested,
    Verdict,
)
from sinks.audit import AuditLog
from sinks.chain import Signer
from sinks.rows import SinkRecord, alert_rows, genealogy_rows, rows_for_batch
from sinks.store import Store
from tests.support import run_genealogy
from traceline.api import create_api
from traceline.auth import Authenticator, AuthError, TokenStore
from traceline.backend import ServerBackend
from traceline.cli import app as cli_app
from traceline.errors import EXIT_NOT_FOUND, EXIT_USAGE

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
A, B = "PRG-A", "PRG-B"
# every UII of programme B starts with "B-": an A answer must never contain "B-"
A_UNITS = ["A-BRD:1", "A-BRD:2", "A-BRD:3", "A-SYS:1"]
B_UNITS = ["B-BRD:1", "B-BRD:2", "B-BRD:3", "B-SYS:1", "B-SYS:2", "B-LRU:9"]


def _u(uii: str) -> UnitRef:
    pn, sn = uii.split(":")
    return UnitRef(part_number=pn, serial_number=sn)


def _common(n: int, program: str, hours: float) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"test-access:{n}")),
        "event_time": T0 + timedelta(hours=hours),
        "source": "test",
        "site": "plant-a",
        "program": program,
    }


def _plant() -> list[EventBase]:
    ev: list[EventBase] = []
    n = iter(range(1, 10_000))
    ev.append(
        MaterialReceived(
            **_common(next(n), A, 0),
            lot_id="L-SHARED",
            part_number="RES-1",
            supplier_id="SUP-X",
            supplier_lot="X-1",
            quantity=1000.0,
            unit_of_measure="EA",
            inspection_result=InspectionResult.ACCEPTED,
        )
    )
    for i, (uii, prog) in enumerate(
        [("A-BRD:1", A), ("A-BRD:2", A), ("A-BRD:3", A), ("B-BRD:1", B), ("B-BRD:2", B), ("B-BRD:3", B)]
    ):
        ev.append(
            OperationCompleted(
                **_common(next(n), prog, 1 + i),
                unit=_u(uii),
                work_order=f"WO-{uii}",
                operation="0010 SMT",
                station_id="SMT-1",
                operator_id="OP-1",
                started_at=T0 + timedelta(hours=1 + i),
                finished_at=T0 + timedelta(hours=1.5 + i),
                creates_unit=True,
                consumed_lots=[LotQuantity(lot_id="L-SHARED", quantity=2.0)],
            )
        )
        ev.append(
            UnitTested(
                **_common(next(n), prog, 10 + i),
                unit=_u(uii),
                bench_id="ICT-1",
                procedure_id="TP-1",
                procedure_version="A",
                calibration_id="CAL-1",
                calibration_due=T0 + timedelta(days=100),
                operator_id="OP-2",
                started_at=T0 + timedelta(hours=10 + i),
                finished_at=T0 + timedelta(hours=10.5 + i),
                measurements=[],
                verdict=Verdict.PASS,
            )
        )
    for sys_uii, prog in (("A-SYS:1", A), ("B-SYS:1", B), ("B-SYS:2", B), ("B-LRU:9", B)):
        ev.append(
            OperationCompleted(
                **_common(next(n), prog, 20),
                unit=_u(sys_uii),
                work_order=f"WO-{sys_uii}",
                operation="0100 assemble",
                station_id="ASSY-1",
                operator_id="OP-3",
                started_at=T0 + timedelta(hours=20),
                finished_at=T0 + timedelta(hours=20.5),
                creates_unit=True,
            )
        )

    def assemble(child: str, parent: str, prog: str, hours: float) -> None:
        ev.append(
            UnitAssembled(
                **_common(next(n), prog, hours),
                unit=_u(child),
                parent=_u(parent),
                position="A1",
                work_order="WO-ASSY",
                station_id="ASSY-1",
                operator_id="OP-3",
            )
        )

    assemble("A-BRD:1", "A-SYS:1", A, 21)
    assemble("B-BRD:1", "B-SYS:1", B, 21)
    assemble("A-BRD:3", "B-SYS:2", B, 21)  # an A board in a B system
    assemble("B-BRD:2", "B-LRU:9", B, 21)
    ev.append(  # B-LRU:9 held B-BRD:2 in the past: a B past holder
        UnitRemoved(
            **_common(next(n), B, 22),
            unit=_u("B-BRD:2"),
            parent=_u("B-LRU:9"),
            position="A1",
            reason="rework",
            work_order="WO-RW",
            station_id="RW-1",
            operator_id="OP-4",
        )
    )
    for uii, prog, cust in (("A-SYS:1", A, "CUST-A"), ("B-SYS:1", B, "CUST-B"), ("B-SYS:2", B, "CUST-B")):
        ev.append(
            UnitShipped(
                **_common(next(n), prog, 30),
                unit=_u(uii),
                shipment_id=f"DN-{uii}",
                customer_id=cust,
                contract="C-1",
                destination_site=f"SITE-{cust}",
            )
        )
    for ncr, prog, kind, target in (
        ("NCR-A-1", A, TargetKind.LOT, "L-SHARED"),
        ("NCR-B-1", B, TargetKind.LOT, "L-SHARED"),
        ("NCR-B-2", B, TargetKind.SERIAL, "B-BRD:1"),
    ):
        ev.append(
            NonconformanceRaised(
                **_common(next(n), prog, 40),
                ncr_id=ncr,
                target_kind=kind,
                target_id=target,
                severity=Severity.MAJOR,
                disposition=Disposition.PENDING,
                description=f"raised under {prog}",
            )
        )
    return ev


def _alert(alert_id: str, program: str, units: list[str]) -> Alert:
    return Alert(
        alert_id=alert_id,
        rule="NC_RAISED",
        severity="CRITICAL",
        title=f"alert {alert_id}",
        subject_kind="lot",
        subject_id="L-SHARED",
        raised_at=T0 + timedelta(hours=41),
        event_time=T0 + timedelta(hours=40),
        trigger_event_id=alert_id,
        trigger_type="NonconformanceRaised",
        site="plant-a",
        program=program,
        unit_count=len(units),
        units=units,
    )


ALERTS = [
    _alert("NC_RAISED:NCR-A-1", A, ["A-BRD:1", "B-BRD:1"]),  # an A alert naming a B unit
    _alert("NC_RAISED:NCR-B-1", B, ["B-BRD:1"]),
    _alert("BENCH:ICT-1", f"{A},{B}", ["A-BRD:2", "B-BRD:3"]),  # tests of both programmes
]


@pytest.fixture(scope="module")
def plant(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Store, Path]]:
    data_dir = tmp_path_factory.mktemp("access")
    store = Store.open(f"chdb://{(data_dir / 'clickhouse').resolve()}", "traceline")
    events = _plant()
    now = datetime.now(UTC)
    records = [SinkRecord(e.type, e.to_avro(), "traceline.events", 0, i, now) for i, e in enumerate(events)]
    store.write_batch(rows_for_batch(records), token="access:events")
    changes: list[dict[str, Any]] = []
    run_genealogy(({**e.to_avro(), "type": e.type} for e in events), changes=changes)
    store.write_batch(genealogy_rows(changes), token="access:genealogy")
    store.write_batch(alert_rows([(a, 0, i, now) for i, a in enumerate(ALERTS)]), token="access:alerts")
    yield store, data_dir
    store.close()


@pytest.fixture(scope="module")
def tokens(plant: tuple[Store, Path]) -> dict[str, str]:
    store = TokenStore(plant[1] / "tokens.json")
    made = {
        name: store.create(name, role, programs)[1]
        for name, role, programs in (
            ("admin", "administrator", "*"),
            ("analyst-a", "analyst", A),
            ("qe-b", "quality_engineer", B),
            ("gateway", "gateway", "*"),
            ("to-revoke", "analyst", "*"),
        )
    }
    return made


@pytest.fixture(scope="module")
def api(plant: tuple[Store, Path], tokens: dict[str, str]) -> FastAPI:
    auth = Authenticator(TokenStore(plant[1] / "tokens.json"))
    return create_api(
        plant[0],
        health=lambda: {"status": "ok", "problems": [], "parts": {"sink": {}}, "lag": {"sink": 0}},
        lag=lambda: {"streams": 0, "sink": 0},
        ledger=lambda: {"partitions": {"0": {"landed": 1}}, "gap": {}, "since": None},
        auth=auth,
    )


def _client(api: FastAPI, token: str | None = None) -> TestClient:
    c = TestClient(api)
    if token:
        c.headers["Authorization"] = f"Bearer {token}"
    return c


def _no_b(text: str, what: str) -> None:
    assert "B-" not in text, f"{what} shows a programme-B unit: {text[:2000]}"


# ----------------------------------------------------------------------------- authentication


def test_anonymous_is_401_on_every_path_but_health(api: FastAPI, tokens: dict[str, str]) -> None:
    anon = _client(api)
    paths = anon.get("/openapi.json").json()["paths"]
    assert {"/recall", "/report", "/drill", "/alerts", "/trace/forward", "/trace/backward", "/ledger"} <= set(
        paths
    )
    checked = []
    for path in paths:
        if path == "/health":
            continue
        for headers in ({}, {"Authorization": "Bearer tl_not-a-token"}, {"Authorization": "Basic YTpi"}):
            r = anon.get(
                path, params={"id": "L-SHARED", "lot": "L-SHARED", "serial": "A-SYS:1"}, headers=headers
            )
            assert r.status_code == 401, (path, headers, r.status_code, r.text)
            assert r.headers["www-authenticate"].startswith("Bearer"), path
            _no_b(r.text, path)
        checked.append(path)
    assert len(checked) >= 7
    bad = anon.get("/recall", params={"id": "L-SHARED"}, headers={"Authorization": "Bearer tl_nope"})
    assert 'error="invalid_token"' in bad.headers["www-authenticate"]
    # liveness stays open, and says nothing but the status to anyone but an administrator
    assert anon.get("/health").json() == {"status": "ok"}
    assert _client(api, tokens["analyst-a"]).get("/health").json() == {"status": "ok"}
    assert "parts" in _client(api, tokens["admin"]).get("/health").json()
    assert _client(api, tokens["analyst-a"]).get("/ready").json() == {"status": "ok"}
    assert "lag" in _client(api, tokens["admin"]).get("/ready").json()


def test_roles_gateway_403_analyst_no_ledger_revoked_401(
    api: FastAPI, tokens: dict[str, str], plant: tuple[Store, Path]
) -> None:
    gw = _client(api, tokens["gateway"])
    for path, params in (
        ("/recall", {"id": "L-SHARED"}),
        ("/trace/forward", {"lot": "L-SHARED"}),
        ("/trace/backward", {"serial": "A-SYS:1"}),
        ("/report", {"id": "L-SHARED", "prepared_by": "QA", "format": "csv"}),
        ("/drill", {"id": "L-SHARED", "prepared_by": "QA", "formats": "csv"}),
        ("/alerts", {}),
        ("/ledger", {}),
    ):
        r = gw.get(path, params=params)
        assert r.status_code == 403, (path, r.text)
    analyst = _client(api, tokens["analyst-a"])
    assert analyst.get("/ledger").status_code == 403
    assert _client(api, tokens["admin"]).get("/ledger").json()["partitions"] == {"0": {"landed": 1}}
    # a revoked token is refused from its next request: the server rereads the token file
    doomed = _client(api, tokens["to-revoke"])
    assert doomed.get("/alerts").status_code == 200
    TokenStore(plant[1] / "tokens.json").revoke("to-revoke")
    r = doomed.get("/alerts")
    assert r.status_code == 401 and 'error="invalid_token"' in r.headers["www-authenticate"]


# ----------------------------------------------------------------------------- scoping


def test_the_administrator_sees_every_programme(api: FastAPI, tokens: dict[str, str]) -> None:
    admin = _client(api, tokens["admin"])
    r = admin.get("/recall", params={"kind": "lot", "id": "L-SHARED"}).json()
    assert {u["uii"] for u in r["units"]} == {
        "A-BRD:1",
        "A-BRD:2",
        "A-BRD:3",
        "B-BRD:1",
        "B-BRD:2",
        "B-BRD:3",
    }
    assert {s["root_uii"] for s in r["systems"]} >= {"A-SYS:1", "B-SYS:1", "B-SYS:2"}
    assert r["withheld_units"] == 0 and r["withheld_past"] == 0
    assert {p["uii"] for p in r["past"]} == {"B-LRU:9"}
    assert admin.get("/alerts").json()["total"] == len(ALERTS)


def test_programme_a_never_sees_programme_b_and_is_told_how_many_were_withheld(
    api: FastAPI, tokens: dict[str, str]
) -> None:
    admin, a = _client(api, tokens["admin"]), _client(api, tokens["analyst-a"])
    full = admin.get("/recall", params={"kind": "lot", "id": "L-SHARED"}).json()
    b_now = [u["uii"] for u in full["units"] if u["uii"].startswith("B-")]
    r = a.get("/recall", params={"kind": "lot", "id": "L-SHARED"})
    assert r.status_code == 200, r.text
    got = r.json()
    _no_b(r.text, "recall")
    assert {u["uii"] for u in got["units"]} == {u["uii"] for u in full["units"]} - set(b_now)
    assert got["withheld_units"] == len(b_now) > 0
    assert got["withheld_past"] == 1 and got["past"] == []
    assert sum(got["by_status"].values()) == len(got["units"])  # recounted over what it sees
    assert "CUST-B" not in got["by_customer"] or any(u["customer_id"] == "CUST-B" for u in got["units"])
    # the A board in a B system: listed, its system withheld
    cross = next(u for u in got["units"] if u["uii"] == "A-BRD:3")
    assert cross["root_uii"] == "(withheld)" and cross["shipment_id"] is None
    assert {s["root_uii"] for s in got["systems"]} == {"A-SYS:1", "A-BRD:2"}

    r = a.get("/trace/forward", params={"lot": "L-SHARED"})
    _no_b(r.text, "forward trace")
    assert r.json()["withheld_units"] == len(b_now) and r.json()["withheld_past"] == 1

    r = a.get("/trace/backward", params={"serial": "A-SYS:1"})
    assert r.status_code == 200
    _no_b(r.text, "backward trace")

    # a B unit is "not found", exactly like a unit the store never saw (existence not revealed)
    hidden = a.get("/trace/backward", params={"serial": "B-SYS:1"})
    unknown = a.get("/trace/backward", params={"serial": "B-SYS:7"})
    assert hidden.status_code == unknown.status_code == 404
    assert hidden.json()["detail"].keys() == unknown.json()["detail"].keys()
    assert hidden.json()["detail"]["searched"] == unknown.json()["detail"]["searched"]
    _no_b(json.dumps(hidden.json()["detail"]["suggestions"]), "suggestions")
    assert a.get("/recall", params={"kind": "serial", "id": "B-BRD:1"}).status_code == 404
    assert admin.get("/trace/backward", params={"serial": "B-SYS:1"}).status_code == 200
    # ... and programme B sees its own, not A's
    b = _client(api, tokens["qe-b"]).get("/recall", params={"kind": "lot", "id": "L-SHARED"}).json()
    assert {u["uii"] for u in b["units"]} == set(b_now)
    assert b["withheld_units"] == len(full["units"]) - len(b_now)


def test_reports_and_drills_of_programme_a_hold_no_b_unit_or_b_ncr(
    api: FastAPI, tokens: dict[str, str]
) -> None:
    a = _client(api, tokens["analyst-a"])
    params = {"kind": "lot", "id": "L-SHARED", "prepared_by": "A. Analyst"}
    r = a.get("/report", params={**params, "format": "csv"})
    assert r.status_code == 200, r.text
    _no_b(r.text, "report CSV")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert {row["uii"] for row in rows if row["uii"]} <= set(A_UNITS)
    assert int(r.headers["x-traceline-withheld-units"]) > 0
    assert r.headers["x-traceline-withheld-past"] == "1"
    # the document itself says it is cut and by how much (a sheet of A's units is not the recall)
    told = f"{r.headers['x-traceline-withheld-units']} units holding the part now, 1 past holder"
    assert rows[-1]["holds"] == "withheld" and told in rows[-1]["status"], rows[-1]
    html = a.get("/report", params={**params, "format": "html"}).text
    _no_b(html, "report HTML")
    assert told in html and "WITHHELD as outside them" in html
    assert "NCR-A-1" in html and "NCR-B-1" not in html and "NCR-B-2" not in html
    admin_html = _client(api, tokens["admin"]).get("/report", params={**params, "format": "html"}).text
    assert "NCR-B-1" in admin_html and "B-SYS:1" in admin_html
    assert "every programme" in admin_html and "WITHHELD" not in admin_html

    d = a.get("/drill", params={**params, "formats": "html,csv"})
    assert d.status_code == 200, d.text
    drill = d.json()
    for doc in drill["documents"].values():
        _no_b(base64.b64decode(doc["content_base64"]).decode(), f"drill {doc['filename']}")
    _no_b(json.dumps(drill["steps"]) + json.dumps(drill["summary"]), "drill summary")
    assert (
        drill["summary"]["withheld_units"] > 0 and "withheld (outside your programmes)" in drill["headline"]
    )


def test_alerts_are_filtered_by_programme_and_their_units_too(api: FastAPI, tokens: dict[str, str]) -> None:
    page = _client(api, tokens["analyst-a"]).get("/alerts")
    assert page.status_code == 200
    got = page.json()
    _no_b(json.dumps(got["rows"]), "alerts")
    assert [r["alert_id"] for r in got["rows"]] == ["NC_RAISED:NCR-A-1"] and got["total"] == 1
    assert got["rows"][0]["units"] == ["A-BRD:1"] and got["rows"][0]["units_withheld"] == 1
    b = _client(api, tokens["qe-b"]).get("/alerts").json()
    assert {r["alert_id"] for r in b["rows"]} == {"NC_RAISED:NCR-B-1"}
    paged = _client(api, tokens["admin"]).get("/alerts", params={"limit": 1, "offset": 2}).json()
    assert paged["total"] == len(ALERTS) and len(paged["rows"]) == 1


# ----------------------------------------------------------------------------- the CLI


runner = CliRunner()


def test_cli_through_the_server_sends_the_token(api: FastAPI, tokens: dict[str, str]) -> None:
    with ServerBackend("http://testserver", client=_client(api), token=tokens["analyst-a"]) as server:
        got = server.recall(Trigger("lot", "L-SHARED"))
        assert isinstance(got, RecallImpact) and got.withheld_units > 0
        assert not any(u.uii.startswith("B-") for u in got.units)
        report = server.report(Trigger("lot", "L-SHARED"), "csv", "A. Analyst")
        assert "withheld (outside your programmes)" in report.summary
    with ServerBackend("http://testserver", client=_client(api)) as anonymous:
        with pytest.raises(AuthError, match="needs a token"):
            anonymous.recall(Trigger("lot", "L-SHARED"))
    with ServerBackend("http://testserver", client=_client(api), token=tokens["gateway"]) as gateway:
        with pytest.raises(AuthError, match="may not read"):
            gateway.forward_trace("L-SHARED")


def test_cli_without_a_server_is_the_local_operator_unless_a_token_is_set(
    plant: tuple[Store, Path], tokens: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = str(plant[1])
    for var in ("TRACELINE_KAFKA_BOOTSTRAP", "TRACELINE_CLICKHOUSE_DSN", "TRACELINE_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    everything = runner.invoke(cli_app, ["recall", "--lot", "L-SHARED", "--data-dir", data_dir, "--json"])
    assert everything.exit_code == 0, everything.output
    assert "B-SYS:1" in everything.stdout and "withheld" not in everything.stderr

    monkeypatch.setenv("TRACELINE_TOKEN", tokens["analyst-a"])
    r = runner.invoke(cli_app, ["recall", "--lot", "L-SHARED", "--data-dir", data_dir, "--json"])
    assert r.exit_code == 0, r.output
    _no_b(r.stdout, "CLI recall --json")
    assert json.loads(r.stdout)["withheld_units"] > 0
    assert "units withheld (outside your programmes)" in " ".join(r.stderr.split())
    table = runner.invoke(cli_app, ["recall", "--lot", "L-SHARED", "--data-dir", data_dir])
    _no_b(table.stdout, "CLI recall table")
    assert "units withheld (outside your programmes)" in " ".join(table.stdout.split())
    r = runner.invoke(cli_app, ["trace", "backward", "--serial", "B-SYS:1", "--data-dir", data_dir])
    assert r.exit_code == EXIT_NOT_FOUND, r.output
    r = runner.invoke(cli_app, ["alerts", "list", "--data-dir", data_dir, "--json"])
    assert r.exit_code == 0, r.output
    _no_b(r.stdout, "CLI alerts list")
    # --token wins over the environment; a gateway may not read; a bad token is refused
    r = runner.invoke(
        cli_app, ["recall", "--lot", "L-SHARED", "--data-dir", data_dir, "--token", tokens["gateway"]]
    )
    assert r.exit_code == EXIT_USAGE and "may not read" in " ".join(r.output.split())
    r = runner.invoke(cli_app, ["recall", "--lot", "L-SHARED", "--data-dir", data_dir, "--token", "tl_wrong"])
    assert r.exit_code == EXIT_USAGE and "not valid" in " ".join(r.output.split())


# ----------------------------------------------------------------------------- the query audit log
def test_every_request_is_audited_under_a_chain_that_verify_checks(
    plant: tuple[Store, Path], tokens: dict[str, str], tmp_path: Path
) -> None:
    """Who asked what, when, with what scope and how many results (a denied caller too); readable
    by administrators only; each ALTER UPDATE / DELETE of an audit row is found by verify."""
    store, data_dir = plant
    signer = Signer.load_or_create(tmp_path / "keys" / "chain.ed25519")
    audit = AuditLog(store, "test-server", signer, flush_seconds=0.05).start()
    auth = Authenticator(TokenStore(data_dir / "tokens.json"))
    audited_api = create_api(store, auth=auth, audit=audit)
    try:
        assert (
            _client(audited_api).get("/recall", params={"kind": "lot", "id": "L-SHARED"}).status_code == 401
        )
        got = _client(audited_api, tokens["analyst-a"]).get(
            "/recall", params={"kind": "lot", "id": "L-SHARED"}
        )
        assert got.status_code == 200
        shown, withheld = len(got.json()["units"]), got.json()["withheld_units"] + got.json()["withheld_past"]
        assert (
            _client(audited_api, tokens["analyst-a"]).get("/audit").status_code == 403
        )  # administrators only
        assert (
            _client(audited_api, tokens["admin"]).get("/health").status_code == 200
        )  # liveness: not audited
    finally:
        audit.stop()
    assert audit.stats.written == 3 and audit.stats.write_errors == 0
    rows = {r["seq"]: r for r in _client(audited_api, tokens["admin"]).get("/audit").json()["rows"]}
    assert [(rows[s]["principal"], rows[s]["path"], rows[s]["status"]) for s in (1, 2, 3)] == [
        ("", "/recall", 401),
        ("analyst-a", "/recall", 200),
        ("analyst-a", "/audit", 403),
    ]
    assert rows[2]["programs"] == [A] and json.loads(rows[2]["params"]) == {"kind": "lot", "id": "L-SHARED"}
    assert (rows[2]["results"], rows[2]["withheld"]) == (shown, withheld) and withheld > 0

    def findings() -> list[tuple[str, str]]:
        return [(f.kind, f.key) for f in verify_store(store, signer).findings if f.table == "query_audit"]

    assert findings() == []
    store.command(
        "ALTER TABLE query_audit UPDATE principal = 'someone-else' WHERE seq = 2 SETTINGS mutations_sync = 2"
    )
    assert ("altered", "test-server#2") in findings()
    store.command("ALTER TABLE query_audit DELETE WHERE seq = 1 SETTINGS mutations_sync = 2")
    assert ("deleted", "test-server#2") in findings()
