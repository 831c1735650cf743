"""Who is calling, and what they may do: API tokens, roles, programmes (need-to-know).

Every API call but liveness (``GET /health`` without details) carries
``Authorization: Bearer <token>``. A token is a random string (``secrets.token_urlsafe``, 256
bits, prefixed ``tl_``) that is shown once, when it is created, and kept only as its sha256 in
the token file ``<data dir>/tokens.json`` (``TRACELINE_AUTH_TOKEN_FILE``), created owner-only
(0600) and refused when others may write it. Each token has a name, a role, its programmes
(or ``*``) and its created / revoked times; ``traceline token create|list|revoke`` keeps the
file (``traceline.cli_token``). Why a file rather than a table in the store: the embedded
store is owned by the one running ``traceline serve``, so a token could not be created or
revoked from the command line while the server runs; the file can, and the server rereads it
when it changes (a revocation holds from the next request); and the hashes stay out of reach
of anyone who may only run SQL on the store.

Roles (:data:`PERMISSIONS`): ``analyst`` and ``quality_engineer`` read (recall, traces,
reports, drills, alerts); ``gateway`` nothing on the API (it publishes to Kafka);
``administrator`` everything, including ``/ledger`` and the details of ``/health``. What a
reader sees is cut to its programmes by ``queries.scope``.

The CLI: with a running server it sends ``TRACELINE_TOKEN`` (or ``--token``); opening the store
itself it is the local operator, who has file access to the store anyway: an administrator of
every programme (:data:`LOCAL_OPERATOR`), unless ``TRACELINE_TOKEN`` is set, whose role and
programmes then apply (:func:`local_principal`).

OIDC: with ``TRACELINE_AUTH_OIDC_ISSUER``, ``..._AUDIENCE`` and ``..._JWKS`` (a file or an
``https://`` URL) set, a JWT signed by the issuer (RS256/ES256, checked with PyJWT) is accepted
too; its role and programmes come from the claims ``..._ROLES_CLAIM`` / ``..._PROGRAMS_CLAIM``.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from queries.scope import ALL, parse_programs
from schemas.errors import InvalidInputError, TracelineError
from sinks.recordfile import RecordFile
from traceline.settings import Settings

try:  # OIDC needs PyJWT (pip install 'pyjwt[crypto]'); API tokens do not
    import jwt as _jwt
except ImportError:  # pragma: no cover - depends on the installation
    _jwt = None  # type: ignore[assignment]

__all__ = [
    "ROLES",
    "READ",
    "ADMIN",
    "PERMISSIONS",
    "Principal",
    "LOCAL_OPERATOR",
    "TokenRecord",
    "TokenStore",
    "OidcVerifier",
    "Authenticator",
    "AuthError",
    "AuthConfigError",
    "local_principal",
    "hash_token",
]

READ = "read"  # recall, traces, reports, drills, alerts
ADMIN = "admin"  # /ledger, /health details
PERMISSIONS: dict[str, frozenset[str]] = {
    "analyst": frozenset({READ}),
    "quality_engineer": frozenset({READ}),
    "gateway": frozenset(),
    "administrator": frozenset({READ, ADMIN}),
}
ROLES = tuple(PERMISSIONS)
TOKEN_PREFIX = "tl_"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_PROGRAM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class AuthError(InvalidInputError):
    """A credential that is missing, wrong, revoked, or not allowed to do this (the CLI's exit 2;
    the API answers 401 / 403 itself)."""


class AuthConfigError(TracelineError):
    """The token file or the OIDC configuration cannot be used (unsafe permissions, unreadable)."""


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: its name, role, programmes (``*`` = all) and how it proved it."""

    name: str
    role: str
    programs: frozenset[str]
    via: str  # "token" | "oidc" | "local operator"

    def may(self, permission: str) -> bool:
        return permission in PERMISSIONS.get(self.role, frozenset())


LOCAL_OPERATOR = Principal("local operator", "administrator", frozenset({ALL}), "local operator")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def check_role(role: str) -> str:
    r = role.strip().lower()
    if r not in PERMISSIONS:
        raise InvalidInputError(f"unknown role {role!r}: one of {', '.join(ROLES)}", "role")
    return r


def check_programs(programs: str) -> frozenset[str]:
    got = parse_programs(programs)
    if not got:
        raise InvalidInputError("give the token's programmes: --programs A,B (or '*' for all)", "programs")
    bad = [p for p in got if p != ALL and not _PROGRAM.match(p)]
    if bad:
        raise InvalidInputError(f"not a programme id: {', '.join(sorted(bad))}", "programs")
    return got


# ----------------------------------------------------------------------------- the token file


@dataclass
class TokenRecord:
    name: str
    role: str
    programs: list[str]
    sha256: str
    created_at: str
    revoked_at: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class TokenStore:
    """The token file: hashed tokens, written atomically and owner-only (0600), locked while a
    command changes it; read again whenever it changed on disk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = RecordFile(
            path, "tokens", TokenRecord, AuthConfigError, "the token file",
            "check who added what: `traceline token list`",
        )  # fmt: skip
        self._lock = threading.Lock()
        self._records: list[TokenRecord] = []
        self._by_hash: dict[str, TokenRecord] = {}

    # -- reading ---------------------------------------------------------------------------
    def records(self) -> list[TokenRecord]:
        """Every token, revoked ones included, as the file holds them now."""
        with self._lock:
            self._refresh()
            return list(self._records)

    def verify(self, token: str) -> Principal | None:
        """The caller a token stands for, or None (unknown or revoked)."""
        with self._lock:
            self._refresh()
            rec = self._by_hash.get(hash_token(token))
        if rec is None or not rec.active:
            return None
        return Principal(rec.name, rec.role, frozenset(rec.programs), "token")

    def _refresh(self) -> None:
        records = self._file.read_if_changed()
        if records is not None:
            self._records, self._by_hash = records, {r.sha256: r for r in records}

    # -- changing --------------------------------------------------------------------------
    def create(self, name: str, role: str, programs: str) -> tuple[TokenRecord, str]:
        """A new token: its record and the token itself (shown once, never stored)."""
        if not _NAME.match(name or ""):
            raise InvalidInputError(
                f"not a token name: {name!r} (letters, digits, '.', '_', '@', '-'; at most 64)", "name"
            )
        rec_role, progs = check_role(role), check_programs(programs)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        rec = TokenRecord(name, rec_role, sorted(progs), hash_token(token), _now())
        with self._file.changing() as records:
            if any(r.name == name and r.active for r in records):
                raise InvalidInputError(
                    f"a token named {name!r} exists: revoke it first, or pick another name", "name"
                )
            records.append(rec)
        return rec, token

    def revoke(self, name: str) -> TokenRecord:
        with self._file.changing() as records:
            for r in records:
                if r.name == name and r.active:
                    r.revoked_at = _now()
                    return r
        raise InvalidInputError(f"no active token named {name!r} (see `traceline token list`)", "name")

# ----------------------------------------------------------------------------- OIDC


@dataclass(frozen=True)
class OidcConfig:
    issuer: str
    audience: str
    jwks: str  # a file path or an https:// URL
    roles_claim: str = "roles"
    programs_claim: str = "programs"
    name_claim: str = "sub"


class OidcVerifier:
    """JWTs from one issuer (PyJWT): signature against the issuer's JWKS (a local file, or a URL
    fetched and cached by PyJWT), ``iss``, ``aud``, ``exp`` (required), ``nbf``; RS256, ES256 or
    PS256 only (never ``none`` or HMAC). The role is the first claim value naming a known role;
    the programmes a list (or 'A,B') claim. A token without a known role is refused."""

    ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "ES256", "ES384")

    def __init__(self, config: OidcConfig) -> None:
        if _jwt is None:
            raise AuthConfigError(
                "OIDC is configured but PyJWT is not installed: pip install 'pyjwt[crypto]'"
            )
        self.config = config
        self._client: Any = None
        self._keys: dict[str, Any] = {}
        if config.jwks.startswith(("https://", "http://")):
            self._client = _jwt.PyJWKClient(config.jwks, cache_keys=True, lifespan=300)
        else:
            try:
                jwks = _jwt.PyJWKSet.from_json(Path(config.jwks).read_text())
            except (OSError, _jwt.PyJWTError) as exc:
                raise AuthConfigError(f"the OIDC JWKS {config.jwks} cannot be read: {exc}") from exc
            self._keys = {k.key_id or "": k for k in jwks.keys}

    def _key(self, token: str) -> Any:
        """The issuer's key for this token (a PyJWK: key and algorithm), by its ``kid``."""
        if self._client is not None:
            return self._client.get_signing_key_from_jwt(token)
        kid = _jwt.get_unverified_header(token).get("kid") or ""
        if kid in self._keys:
            return self._keys[kid]
        if not kid and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        raise _jwt.InvalidTokenError(f"no key {kid!r} in the JWKS")

    def verify(self, token: str) -> Principal | None:
        c = self.config
        try:
            jwk = self._key(token)
            if jwk.algorithm_name not in self.ALGORITHMS:  # the key's own algorithm: no confusion
                return None
            claims = _jwt.decode(
                token,
                jwk.key,
                algorithms=[jwk.algorithm_name],
                audience=c.audience,
                issuer=c.issuer,
                options={"require": ["exp", "iss", "aud"]},
                leeway=30,
            )
        except (_jwt.PyJWTError, ValueError, TypeError, KeyError):
            return None
        roles = claims.get(c.roles_claim)
        roles = [roles] if isinstance(roles, str) else list(roles or [])
        role = next((str(r).lower() for r in roles if str(r).lower() in PERMISSIONS), None)
        raw = claims.get(c.programs_claim)
        listed: list[str] = []
        if isinstance(raw, str):
            listed = [raw]
        elif isinstance(raw, list):
            listed = [p for p in raw if isinstance(p, str)]
        programs = parse_programs(",".join(listed))
        if role is None:
            return None
        return Principal(str(claims.get(c.name_claim) or "?"), role, programs, "oidc")


# ----------------------------------------------------------------------------- together


class Authenticator:
    """API tokens from the token file, and JWTs of the configured OIDC issuer."""

    def __init__(self, tokens: TokenStore, oidc: OidcVerifier | None = None) -> None:
        self.tokens, self.oidc = tokens, oidc

    @classmethod
    def for_settings(cls, settings: Settings) -> Authenticator:
        a = settings.auth
        oidc = None
        if a.oidc_issuer or a.oidc_jwks:
            if not (a.oidc_issuer and a.oidc_jwks and a.oidc_audience):
                raise AuthConfigError(
                    "OIDC needs all of TRACELINE_AUTH_OIDC_ISSUER, TRACELINE_AUTH_OIDC_AUDIENCE and "
                    "TRACELINE_AUTH_OIDC_JWKS"
                )
            oidc = OidcVerifier(
                OidcConfig(
                    a.oidc_issuer,
                    a.oidc_audience,
                    a.oidc_jwks,
                    a.oidc_roles_claim,
                    a.oidc_programs_claim,
                    a.oidc_name_claim,
                )
            )
        return cls(TokenStore(settings.tokens_path), oidc)

    def authenticate(self, credential: str) -> Principal | None:
        """The caller a bearer credential stands for, or None."""
        credential = credential.strip()
        if not credential:
            return None
        if credential.count(".") == 2:  # a JWT (an API token has no dots)
            return self.oidc.verify(credential) if self.oidc is not None else None
        return self.tokens.verify(credential)


def local_principal(settings: Settings) -> Principal:
    """Who the CLI is when it opens the store itself: the local operator (administrator, every
    programme), or the caller ``TRACELINE_TOKEN`` / ``--token`` stands for when one is set
    (an :class:`AuthError` when it is unknown, revoked or may not read)."""
    if settings.auth.token is None:
        return LOCAL_OPERATOR
    who = Authenticator.for_settings(settings).authenticate(settings.auth.token.get_secret_value())
    if who is None:
        raise AuthError(
            f"the token given (TRACELINE_TOKEN or --token) is not valid for {settings.tokens_path}: "
            "unknown, revoked or expired (unset it to act as the local operator)"
        )
    if not who.may(READ):
        raise AuthError(f"the token {who.name!r} (role {who.role}) may not read traceability data")
    return who
