"""Tokens, roles and programme scoping without a store (traceline.auth, queries.scope).

* the token file is owner-only (0600), holds sha256 hashes and never a token; one someone else
  may write is refused; a revocation is seen by a reader of the file at once;
* roles: analyst and quality engineer read, a gateway nothing, an administrator everything;
* the CLI without a server is the local operator (every programme) unless a token is set;
* ``queries.scope.scope`` keeps what a caller's programmes allow, withholds the rest with a
  count, and redacts references to units it may not see; a unit of no known programme is
  withheld (fail closed);
* OIDC: a JWT signed with a locally generated RSA key, checked against a JWKS file: issuer,
  audience, expiry, key and algorithm all matter.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from typer.testing import CliRunner

from queries.results import AffectedUnit, BackwardTrace, LotHop, PastHolder, RecallImpact, Trigger
from queries.scope import WITHHELD, parse_programs, referenced_units, scope, visible
from traceline.api import create_api
from traceline.auth import (
    LOCAL_OPERATOR,
    PERMISSIONS,
    READ,
    AuthConfigError,
    Authenticator,
    AuthError,
    OidcConfig,
    OidcVerifier,
    TokenStore,
    local_principal,
)
from traceline.cli_token import token_app
from traceline.settings import load_settings

runner = CliRunner()


# ----------------------------------------------------------------------------- the token file


def test_the_token_file_is_owner_only_and_holds_no_token(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "state" / "tokens.json")
    rec, token = store.create("a.analyst", "analyst", "PRG-A, PRG-B")
    assert token.startswith("tl_") and len(token) > 40
    path = tmp_path / "state" / "tokens.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert token not in text and token[3:] not in text
    saved = json.loads(text)["tokens"][0]
    assert saved["sha256"] == rec.sha256 and len(rec.sha256) == 64 and saved["programs"] == ["PRG-A", "PRG-B"]
    assert saved["created_at"] and saved["revoked_at"] is None
    who = store.verify(token)
    assert who is not None and (who.name, who.role, who.programs) == (
        "a.analyst",
        "analyst",
        {"PRG-A", "PRG-B"},
    )
    assert store.verify(token + "x") is None and store.verify("") is None
    assert not list(path.parent.glob(".*.tmp"))  # written atomically, nothing left behind


def test_a_revocation_is_seen_at_once_by_another_reader(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    cli, server = TokenStore(path), TokenStore(path)
    assert server.verify("tl_x") is None  # no file yet: nobody
    _rec, token = cli.create("gw-1", "gateway", "*")
    assert server.verify(token) is not None  # the server rereads the changed file
    revoked = cli.revoke("gw-1")
    assert revoked.revoked_at is not None
    assert server.verify(token) is None
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # the name is free again; the revoked record stays for the record
    _rec, again = cli.create("gw-1", "gateway", "*")
    assert server.verify(again) is not None and server.verify(token) is None
    assert [r.active for r in server.records()] == [False, True]


@pytest.mark.parametrize(
    ("name", "role", "programs", "says"),
    [
        ("x", "superuser", "*", "unknown role"),
        ("x", "analyst", "", "programmes"),
        ("x", "analyst", " , ", "programmes"),
        ("x", "analyst", "PRG A", "not a programme"),
        ("", "analyst", "*", "not a token name"),
        ("a b", "analyst", "*", "not a token name"),
    ],
)
def test_bad_token_requests_are_refused(
    name: str, role: str, programs: str, says: str, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=says):
        TokenStore(tmp_path / "tokens.json").create(name, role, programs)
    assert not (tmp_path / "tokens.json").exists()


def test_names_are_unique_among_active_tokens_and_star_means_all(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    rec, _ = store.create("ops", "administrator", "PRG-A,*")
    assert rec.programs == ["*"]
    with pytest.raises(ValueError, match="exists"):
        store.create("ops", "analyst", "PRG-A")
    with pytest.raises(ValueError, match="no active token"):
        store.revoke("nobody")


def test_a_token_file_others_may_write_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    store = TokenStore(path)
    _rec, token = store.create("a", "analyst", "*")
    os.chmod(path, 0o622)
    with pytest.raises(AuthConfigError, match="written by others"):
        TokenStore(path).verify(token)
    with pytest.raises(AuthConfigError):
        store.create("b", "analyst", "*")
    os.chmod(path, 0o600)
    path.write_text("{not json")
    with pytest.raises(AuthConfigError, match="cannot be read"):
        TokenStore(path).verify(token)


def test_roles() -> None:
    assert PERMISSIONS["analyst"] == PERMISSIONS["quality_engineer"] == {READ}
    assert PERMISSIONS["gateway"] == frozenset()
    assert PERMISSIONS["administrator"] >= {READ, "admin"}


def test_the_token_commands(tmp_path: Path) -> None:
    d = ["--data-dir", str(tmp_path)]
    made = runner.invoke(
        token_app, ["create", "--name", "qe", "--role", "quality_engineer", "--programs", "P1", *d]
    )
    assert made.exit_code == 0, made.output
    token = made.stdout.strip()
    assert token.startswith("tl_") and made.stdout.count(token) == 1
    listed = runner.invoke(token_app, ["list", *d, "--json"])
    assert listed.exit_code == 0 and token not in listed.output and "sha256" not in listed.output
    assert json.loads(listed.stdout)[0]["role"] == "quality_engineer"
    assert runner.invoke(token_app, ["revoke", "qe", *d]).exit_code == 0
    assert runner.invoke(token_app, ["revoke", "qe", *d]).exit_code == 2
    bad = runner.invoke(token_app, ["create", "--name", "x", "--role", "root", "--programs", "*", *d])
    assert bad.exit_code == 2 and "unknown role" in bad.output


def test_the_cli_without_a_server_is_the_local_operator_unless_a_token_is_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TRACELINE_TOKEN", raising=False)
    s = load_settings(data_dir=tmp_path)
    assert local_principal(s) == LOCAL_OPERATOR and LOCAL_OPERATOR.programs == {"*"}
    tokens = TokenStore(s.tokens_path)
    analyst = tokens.create("a", "analyst", "PRG-A")[1]
    gateway = tokens.create("g", "gateway", "*")[1]
    s.auth.token = SecretStr(analyst)
    assert local_principal(s).programs == {"PRG-A"}
    s.auth.token = SecretStr(gateway)
    with pytest.raises(AuthError, match="may not read"):
        local_principal(s)
    tokens.revoke("a")
    s.auth.token = SecretStr(analyst)
    with pytest.raises(AuthError, match="not valid"):
        local_principal(s)
    monkeypatch.setenv("TRACELINE_TOKEN", gateway)  # the settings tree reads TRACELINE_TOKEN
    assert load_settings(data_dir=tmp_path).auth.token == SecretStr(gateway)


# ----------------------------------------------------------------------------- scoping


def _unit(uii: str, root: str, path: list[str], status: str = "shipped", **kw: Any) -> AffectedUnit:
    return AffectedUnit(
        uii=uii,
        part_number=uii.split(":")[0],
        trace=kw.pop("trace", ["lot:L1", f"uii:{uii}"]),
        parent_uii=path[0] if path else None,
        root_uii=root,
        path=path,
        status=status,
        site="plant-a",
        customer_id=kw.pop("customer", "CUST-1"),
        destination_site="SITE-1",
        shipped_uii=root,
        shipment_id=f"DN-{root}",
        **kw,
    )


PROGRAMS = {
    "A-BRD:1": {"A"},
    "A-SYS:1": {"A"},
    "A-BRD:2": {"A"},
    "B-BRD:1": {"B"},
    "B-SYS:1": {"B"},
    "B-LRU:1": {"B"},
    "AB-BRD:1": {"A", "B"},  # events of both: only for a caller of both
    # "X-BRD:1": no event names its programme
}


def _impact() -> RecallImpact:
    units = [
        _unit("A-BRD:1", "A-SYS:1", ["A-SYS:1"]),
        _unit(
            "A-BRD:2", "B-SYS:1", ["B-SYS:1"], customer="CUST-2", trace=["lot:L1", "lot:L1-B", "uii:A-BRD:2"]
        ),
        _unit(
            "B-BRD:1", "B-SYS:1", ["B-SYS:1"], customer="CUST-2", trace=["lot:L1", "lot:L1-B", "uii:B-BRD:1"]
        ),
        _unit("AB-BRD:1", "AB-BRD:1", [], status="in_work"),
        _unit("X-BRD:1", "X-BRD:1", [], status="in_work", trace=["lot:L1", "lot:L1-X", "uii:X-BRD:1"]),
    ]
    past = [
        PastHolder(
            uii="B-LRU:1", child_uii="B-BRD:1", affected_uii="B-BRD:1", root_uii="B-SYS:1", status="shipped"
        ),
        PastHolder(
            uii="A-SYS:1", child_uii="B-BRD:1", affected_uii="B-BRD:1", root_uii="A-SYS:1", status="shipped"
        ),
    ]
    systems = [
        {"root_uii": r, "units": [u.uii for u in units if u.root_uii == r]}
        for r in ("A-SYS:1", "AB-BRD:1", "B-SYS:1", "X-BRD:1")
    ]
    lots = [LotHop("L1", None, 0), LotHop("L1-B", "L1", 1), LotHop("L1-X", "L1", 1)]
    return RecallImpact(Trigger("lot", "L1"), units, past, systems, {}, {}, {}, lots)


def test_scope_keeps_the_callers_units_and_counts_the_rest() -> None:
    full = _impact()
    assert scope(full, {"*"}, PROGRAMS) is full
    got = scope(full, {"A"}, PROGRAMS)
    assert [u.uii for u in got.units] == ["A-BRD:1", "A-BRD:2"]
    assert got.withheld_units == 3 and got.withheld_past == 1  # B, A+B, no programme; the B holder
    assert "B-" not in json.dumps(
        [u.__dict__ for u in got.units] + [p.__dict__ for p in got.past], default=str
    )
    cross = got.units[1]  # an A board in a B system: listed, its B references withheld
    assert (cross.root_uii, cross.path, cross.parent_uii, cross.shipped_uii) == (
        WITHHELD,
        [WITHHELD],
        WITHHELD,
        WITHHELD,
    )
    assert cross.shipment_id is None and cross.customer_id == "CUST-2"  # where the A unit is
    assert got.past[0].uii == "A-SYS:1" and got.past[0].affected_uii == WITHHELD
    assert [s["root_uii"] for s in got.systems] == ["A-SYS:1"]
    assert got.by_status == {"shipped": 2} and got.by_customer == {"CUST-1": 1, "CUST-2": 1}
    assert [h.lot_id for h in got.lots] == ["L1", "L1-B"]  # L1-X led only to withheld units
    both = scope(full, {"A", "B"}, PROGRAMS)
    assert {u.uii for u in both.units} == {"A-BRD:1", "A-BRD:2", "B-BRD:1", "AB-BRD:1"}
    assert both.withheld_units == 1  # the unit of no known programme: fail closed
    assert referenced_units(full) >= {"B-SYS:1", "B-LRU:1", "X-BRD:1"}


def test_visibility_rule() -> None:
    assert parse_programs("A, B,,") == {"A", "B"} and parse_programs(["*", "A"]) == {"*"}
    assert visible({"*"}, None) and visible({"A"}, {"A"}) and not visible({"A"}, {"A", "B"})
    assert not visible({"A"}, None) and not visible({"A"}, set())


def test_scope_of_a_backward_trace() -> None:
    trace = BackwardTrace(
        uii="A-SYS:1",
        root_uii="A-SYS:1",
        units=[
            {"uii": "A-SYS:1", "parent_uii": None, "path": [], "depth": 0},
            {"uii": "A-BRD:1", "parent_uii": "A-SYS:1", "path": ["A-SYS:1"], "depth": 1},
            {"uii": "B-BRD:1", "parent_uii": "A-SYS:1", "path": ["A-SYS:1"], "depth": 1},
        ],
        lots=[{"uii": "A-BRD:1", "lot_id": "LA"}, {"uii": "B-BRD:1", "lot_id": "LB"}],
        lot_lineage=[
            {"lot_id": "LA", "input_lot_id": "LA0"},
            {"lot_id": "LB", "input_lot_id": "LB0"},
        ],
        materials=[{"lot_id": "LA0"}, {"lot_id": "LB0"}],
        operations=[{"uii": "A-BRD:1"}, {"uii": "B-BRD:1"}],
        tests=[{"uii": "B-BRD:1"}, {"uii": "A-SYS:1"}],
    )
    got = scope(trace, {"A"}, PROGRAMS)
    assert [u["uii"] for u in got.units] == ["A-SYS:1", "A-BRD:1"] and got.withheld_units == 1
    assert [x["lot_id"] for x in got.lots] == ["LA"]
    assert got.lot_lineage == [{"lot_id": "LA", "input_lot_id": "LA0"}] and got.materials == [
        {"lot_id": "LA0"}
    ]
    assert got.operations == [{"uii": "A-BRD:1"}] and got.tests == [{"uii": "A-SYS:1"}]
    text = json.dumps(got.__dict__)
    assert "B-" not in text and "LB" not in text


# ----------------------------------------------------------------------------- OIDC

ISSUER, AUDIENCE = "https://idp.example.test/realms/plant", "traceline"


@pytest.fixture(scope="module")
def pyjwt() -> Any:
    """PyJWT, or skip: OIDC needs it (``pyjwt[crypto]``), API tokens do not."""
    pytest.importorskip("cryptography")
    return pytest.importorskip("jwt")


def _rsa() -> Any:
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def idp(pyjwt: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """A locally generated RSA key and its JWKS file (kid k1)."""
    key = _rsa()
    jwk = json.loads(pyjwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwks = tmp_path_factory.mktemp("idp") / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{**jwk, "kid": "k1", "alg": "RS256", "use": "sig"}]}))
    return key, jwks


def _claims(**claims: Any) -> dict[str, Any]:
    now = int(time.time())
    body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "a.analyst", "exp": now + 300, "iat": now, **claims}
    return {k: v for k, v in body.items() if v is not None}


def _jwt(key: Any, kid: str = "k1", **claims: Any) -> str:
    import jwt

    return str(jwt.encode(_claims(**claims), key, algorithm="RS256", headers={"kid": kid}))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(alg: str, secret: bytes | None, **claims: Any) -> str:
    """A hand-made JWT: ``alg`` in the header, an HMAC with ``secret`` (or no signature)."""
    head = _b64(json.dumps({"alg": alg, "kid": "k1", "typ": "JWT"}).encode())
    body = _b64(json.dumps(_claims(**claims)).encode())
    signing = f"{head}.{body}".encode()
    sig = _b64(hmac.new(secret, signing, hashlib.sha256).digest()) if secret is not None else ""
    return f"{head}.{body}.{sig}"


def test_oidc_jwts_give_role_and_programmes_from_claims(idp: tuple[Any, Path], tmp_path: Path) -> None:
    key, jwks = idp
    oidc = OidcVerifier(OidcConfig(ISSUER, AUDIENCE, str(jwks)))
    auth = Authenticator(TokenStore(tmp_path / "tokens.json"), oidc)
    who = auth.authenticate(_jwt(key, roles=["offline_access", "analyst"], programs=["PRG-A"]))
    assert who is not None
    assert (who.name, who.role, who.programs, who.via) == ("a.analyst", "analyst", {"PRG-A"}, "oidc")
    boss = auth.authenticate(_jwt(key, roles="administrator", programs="*"))
    assert boss is not None and boss.programs == {"*"} and boss.role == "administrator"
    public_pem = jwks.read_bytes()
    refused = {
        "expired": _jwt(key, roles="analyst", programs=["A"], exp=int(time.time()) - 3600),
        "no expiry": _jwt(key, roles="analyst", programs=["A"], exp=None),
        "other audience": _jwt(key, roles="analyst", programs=["A"], aud="other-app"),
        "other issuer": _jwt(key, roles="analyst", programs=["A"], iss="https://evil.test"),
        "no known role": _jwt(key, roles=["superuser"], programs=["A"]),
        "other key": _jwt(_rsa(), roles="analyst", programs=["A"]),
        "unknown kid": _jwt(key, kid="k9", roles="analyst", programs=["A"]),
        "HMAC keyed with the public key": _unsigned("HS256", public_pem, roles="administrator", programs="*"),
        "alg none": _unsigned("none", None, roles="administrator", programs="*"),
        "garbage": "a.b.c",
    }
    for why, token in refused.items():
        assert auth.authenticate(token) is None, why


def test_the_api_takes_an_oidc_jwt_and_an_api_token(idp: tuple[Any, Path], tmp_path: Path) -> None:
    key, jwks = idp
    tokens = TokenStore(tmp_path / "tokens.json")
    admin = tokens.create("ops", "administrator", "*")[1]
    auth = Authenticator(tokens, OidcVerifier(OidcConfig(ISSUER, AUDIENCE, str(jwks))))
    ledger = {"partitions": {}, "gap": {}, "since": None}
    api = TestClient(create_api(lambda: None, ledger=lambda: ledger, auth=auth))  # type: ignore[arg-type]
    assert api.get("/ledger").status_code == 401
    assert api.get("/ledger", headers={"Authorization": f"Bearer {admin}"}).json() == ledger
    boss = _jwt(key, roles=["administrator"], programs="*")
    assert api.get("/ledger", headers={"Authorization": f"Bearer {boss}"}).status_code == 200
    analyst = _jwt(key, roles=["analyst"], programs=["PRG-A"])
    assert api.get("/ledger", headers={"Authorization": f"Bearer {analyst}"}).status_code == 403
    forged = _jwt(_rsa(), roles=["administrator"], programs="*")
    r = api.get("/ledger", headers={"Authorization": f"Bearer {forged}"})
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")


def test_oidc_is_configured_whole_or_not_at_all(tmp_path: Path) -> None:
    s = load_settings(data_dir=tmp_path)
    s.auth.oidc_issuer = ISSUER  # no JWKS, no audience: refused, never "accept any JWT"
    with pytest.raises(AuthConfigError, match="OIDC needs all of"):
        Authenticator.for_settings(s)
