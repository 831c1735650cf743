"""The HTTP API's contract, on a small simulated plant in the real engine (chdb):

* ``/openapi.json`` is a valid OpenAPI document (openapi-spec-validator), and ``/docs`` and
  ``/redoc`` work from assets traceline serves itself (no CDN on an air-gapped network);
* an identifier the store has never seen is 404 with suggestions, never an empty 200;
* bad values are 422 with a reason; a drill is one document in every format;
* every endpoint fuzzed from its OpenAPI schema (schemathesis): no 5xx, ever.

Every call carries an administrator's token (``admin_token``; who may call what, and what each
programme sees, is tests/integration/test_access.py).
"""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from openapi_spec_validator import validate

from sinks.store import Store
from tests.integration.test_report import load_plant
from traceline.api import _disposition, create_api
from traceline.auth import Authenticator, TokenStore

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def plant(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Store, dict[str, int]]]:
    dsn = os.environ.get("TRACELINE_CLICKHOUSE_DSN", "").strip()
    if dsn:
        db = f"traceline_test_{uuid.uuid4().hex[:10]}"
    else:
        dsn, db = f"chdb://{tmp_path_factory.mktemp('api') / 'ch'}", "traceline"
    store = Store.open(dsn, db)
    fan = load_plant(store, 300, 5)
    yield store, fan
    if dsn.startswith("http"):
        store.command(f"DROP DATABASE IF EXISTS `{db}`")
    store.close()


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> TokenStore:
    return TokenStore(tmp_path_factory.mktemp("api-auth") / "tokens.json")


@pytest.fixture(scope="module")
def admin_token(tokens: TokenStore) -> str:
    return tokens.create("test-admin", "administrator", "*")[1]


@pytest.fixture(scope="module")
def app(plant: tuple[Store, dict[str, int]], tokens: TokenStore) -> FastAPI:
    return create_api(
        plant[0],
        health=lambda: {"sink": None},
        lag=lambda: {"streams": 0, "sink": 0},
        auth=Authenticator(tokens),
    )


@pytest.fixture(scope="module")
def client(app: FastAPI, admin_token: str) -> TestClient:
    return TestClient(app, headers={"Authorization": f"Bearer {admin_token}"})


def _lot(plant: tuple[Store, dict[str, int]]) -> str:
    return max(plant[1].items(), key=lambda kv: (kv[1], kv[0]))[0]


def test_openapi_is_valid_and_docs_are_served_locally(client: TestClient) -> None:
    r = client.get("/openapi.json")
    assert r.status_code == 200
    validate(r.json())
    assert {"/recall", "/report", "/drill", "/alerts", "/trace/forward", "/trace/backward"} <= set(
        r.json()["paths"]
    )
    for page, asset in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
        html = client.get(page)
        assert html.status_code == 200, html.text
        assert asset in html.text
        assert "cdn." not in html.text and "https://" not in html.text.replace("https://fastapi", "")
    assert client.get("/static/vendor/swagger-ui/swagger-ui-bundle.js").status_code == 200
    assert client.get("/static/vendor/redoc/redoc.standalone.js").status_code == 200


def test_unknown_identifiers_are_404_with_suggestions(
    client: TestClient, plant: tuple[Store, dict[str, int]]
) -> None:
    store, _fan = plant
    lot = _lot(plant)
    typo = lot[:-1]
    r = client.get("/recall", params={"kind": "lot", "id": typo})
    assert r.status_code == 404, r.text
    detail = r.json()["detail"]
    assert detail["kind"] == "lot" and detail["id"] == typo
    assert f"lot:{lot}" in detail["suggestions"] or any(s.startswith("lot:") for s in detail["suggestions"])
    assert "not found" in detail["message"]
    # a supplier's own lot number given as a plant lot, or without its supplier prefix
    rec = store.query("SELECT supplier_id, supplier_lot FROM material_received LIMIT 1")[0]
    for kind in ("lot", "supplier_lot"):
        r = client.get("/recall", params={"kind": kind, "id": rec["supplier_lot"]})
        assert r.status_code == 404
        assert f"supplier_lot:{rec['supplier_id']}:{rec['supplier_lot']}" in r.json()["detail"]["suggestions"]
    # a bare serial: the UIIs that carry it
    uii = store.query("SELECT uii FROM unit_genealogy ORDER BY uii LIMIT 1")[0]["uii"]
    serial = uii.split(":", 1)[1]
    r = client.get("/trace/backward", params={"serial": serial})
    assert r.status_code == 404
    assert f"serial:{uii}" in r.json()["detail"]["suggestions"]
    assert client.get("/trace/forward", params={"lot": "NO-SUCH-LOT"}).status_code == 404
    r = client.get("/report", params={"kind": "lot", "id": "NÖ-SUCH-LOT ✓", "prepared_by": "QA"})
    assert r.status_code == 404
    # the known ones still answer
    assert client.get("/recall", params={"kind": "lot", "id": lot}).status_code == 200
    assert client.get("/trace/backward", params={"serial": uii}).status_code == 200


def test_bad_values_are_422_with_a_reason(client: TestClient, plant: tuple[Store, dict[str, int]]) -> None:
    lot = _lot(plant)
    r = client.get("/recall", params={"kind": "nope", "id": "x"})
    assert r.status_code == 422 and "unknown trigger kind" in r.text
    r = client.get(
        "/recall",
        params={"kind": "station", "id": "S", "from": "2026-02-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"},
    )
    assert r.status_code == 422 and "after it ends" in r.text
    assert client.get("/report", params={"kind": "lot", "id": lot}).status_code == 422  # prepared_by required
    r = client.get("/report", params={"kind": "lot", "id": lot, "format": "docx", "prepared_by": "QA"})
    assert r.status_code == 422 and "docx" in r.text


def test_a_drill_is_one_document_in_every_format(
    client: TestClient, plant: tuple[Store, dict[str, int]]
) -> None:
    lot = _lot(plant)
    r = client.get("/drill", params={"kind": "lot", "id": lot, "prepared_by": "QA Analyst"})
    assert r.status_code == 200, r.text
    got: dict[str, Any] = r.json()
    number = got["document_number"]
    assert set(got["documents"]) == {"html", "pdf", "csv"}
    for fmt, doc in got["documents"].items():
        assert number in doc["filename"]
        content = base64.b64decode(doc["content_base64"])
        if fmt != "pdf":
            assert number in content.decode()
    assert [s["step"] for s in got["steps"]][:2] == ["forward trace", "recall impact"]


def test_any_file_name_fits_a_content_disposition() -> None:
    header = _disposition("attachment", 'RR-1_lot-Ä"x;y\\z ✓.pdf')
    header.encode("latin-1")  # an HTTP header must be latin-1: this must not raise
    assert 'filename="RR-1_lot-__x_y_z _.pdf"' in header
    assert "filename*=UTF-8''RR-1_lot-%C3%84%22x%3By%5Cz%20%E2%9C%93.pdf" in header


def test_no_input_makes_a_server_error(app: FastAPI, admin_token: str) -> None:
    """Every endpoint, fuzzed from its OpenAPI schema: whatever the input, never a 5xx (as an
    administrator, so the inputs reach the queries rather than stop at 401)."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    checked = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def call(case: Any) -> None:
            response = case.call(headers={"Authorization": f"Bearer {admin_token}"})
            if case.path == "/ready":  # 503 is its documented answer while a part is not ok
                assert response.status_code in (200, 503), response.text[:300]
                return
            assert response.status_code < 500, (case.method, case.path, case.query, response.text[:300])

        call()
        checked.append(operation.label)
    assert len(checked) >= 7, checked
