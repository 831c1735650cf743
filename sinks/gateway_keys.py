"""The registry of gateway public keys: which key speaks for which ``source``, and which no longer.

A JSON file (``<data dir>/gateway_keys.json``, ``TRACELINE_INGEST_GATEWAY_KEYS_FILE``), like the
API's token file and for the same reason: with the embedded store one process (``traceline
serve``) owns the store, and a key must be registered or revoked while it runs. The sink rereads
the file whenever it changed (checked once per batch), so a revoked key stops verifying from the
next batch. Written atomically and owner-only (0600), under a lock; refused when others may write
it (whoever may write it decides which gateway speaks for which source). Several sinks on several
hosts (a ClickHouse server) share one file through the deployment's configuration management.

Each record: ``key_id`` (``schemas.signing.key_id_of``), ``source``, the public key (PEM),
``created_at`` and ``revoked_at``. A source may hold several active keys at once: that is a
rotation (create the new key, move the gateway to it, let its outbox drain, revoke the old one).
Records are never deleted: the store's rows name the key that verified them.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType

from schemas.errors import InvalidInputError
from schemas.signing import GatewayKey, RegisteredKey, SigningKeyError, key_id_of, public_key_from_pem
from sinks.recordfile import RecordFile

__all__ = ["GatewayKeyRecord", "GatewayKeyRegistry", "check_source", "default_key_file"]

_SOURCE = re.compile(r"^[^\x00-\x1f\x7f]{1,128}$")


def check_source(source: str) -> str:
    """``source`` as an event names it: 1 to 128 characters, no control characters."""
    if not _SOURCE.match(source or "") or source != source.strip():
        raise InvalidInputError(
            f"not a source name: {source!r} (1-128 characters, no control characters, no outer spaces)",
            "source",
        )
    return source


def default_key_file(keys_dir: Path, source: str, key_id: str) -> Path:
    """Where ``gateway-key create`` writes a private key by default:
    ``<keys dir>/gateways/<source, file-safe>.<key id>.json``."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", source)
    return Path(keys_dir) / "gateways" / f"{safe}.{key_id}.json"


@dataclass
class GatewayKeyRecord:
    key_id: str
    source: str
    public_key: str  # PEM (SubjectPublicKeyInfo)
    created_at: str
    revoked_at: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class GatewayKeyRegistry:
    """The key registry file: read again whenever it changed on disk."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._file = RecordFile(
            self.path, "keys", GatewayKeyRecord, SigningKeyError, "the gateway key registry",
            "check which keys it holds: `traceline gateway-key list`",
        )  # fmt: skip
        self._lock = threading.Lock()
        self._records: list[GatewayKeyRecord] = []
        self._keys: Mapping[str, RegisteredKey] = MappingProxyType({})

    # -- reading ---------------------------------------------------------------------------
    def records(self) -> list[GatewayKeyRecord]:
        """Every key, revoked ones included, as the file holds them now."""
        with self._lock:
            self._refresh()
            return list(self._records)

    def keys(self) -> Mapping[str, RegisteredKey]:
        """Key id -> registered key (revoked ones marked), as the file holds them now: what
        ``schemas.signing.attest`` takes. An empty mapping when there is no file."""
        with self._lock:
            self._refresh()
            return self._keys

    def _refresh(self) -> None:
        records = self._file.read_if_changed()
        if records is None:
            return
        keys: dict[str, RegisteredKey] = {}
        for r in records:
            public = public_key_from_pem(r.public_key)
            if key_id_of(public) != r.key_id:
                raise SigningKeyError(
                    f"the key registry {self.path}: key {r.key_id} is not its public key's id"
                )
            keys[r.key_id] = RegisteredKey(r.key_id, r.source, public, revoked=not r.active)
        self._records, self._keys = records, MappingProxyType(keys)

    # -- changing --------------------------------------------------------------------------
    def register(self, source: str, public_pem: str) -> GatewayKeyRecord:
        """Register a public key for ``source`` (beside the source's other active keys: a
        rotation). A key id registered before, even revoked, is refused."""
        check_source(source)
        public = public_key_from_pem(public_pem)
        rec = GatewayKeyRecord(key_id_of(public), source, public_pem, _now())
        with self._file.changing() as records:
            if any(r.key_id == rec.key_id for r in records):
                raise InvalidInputError(f"key {rec.key_id} is registered already", "key")
            records.append(rec)
        return rec

    def create(self, key: GatewayKey, key_file: Path) -> GatewayKeyRecord:
        """Keep a new key pair (``GatewayKey.generate(source)``): the private key written to
        ``key_file`` (0600, its directory created 0700; never over an existing file), the
        public key registered for its source."""
        check_source(key.source)
        key.save(key_file)
        try:
            return self.register(key.source, key.public_pem())
        except BaseException:
            Path(key_file).unlink(missing_ok=True)  # an unregistered key is no use to anyone
            raise

    def revoke(self, source: str, key_id: str | None = None) -> list[GatewayKeyRecord]:
        """Revoke ``source``'s active keys (or only ``key_id``): they stop verifying from the
        sink's next batch. Returns the keys revoked."""
        done: list[GatewayKeyRecord] = []
        with self._file.changing() as records:
            for r in records:
                if r.source == source and r.active and key_id in (None, r.key_id):
                    r.revoked_at = _now()
                    done.append(r)
        if not done:
            which = f"key {key_id} of source" if key_id else "key of source"
            raise InvalidInputError(
                f"no active {which} {source!r} (see `traceline gateway-key list`)", "source"
            )
        return done
