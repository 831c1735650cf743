"""Attributable events: a gateway signs the exact Avro bytes it publishes; the sink verifies.

One Ed25519 key pair per ``source`` (the gateway, bench or PLC an event names in its ``source``
field). The gateway keeps the private key (:class:`GatewayKey`, a JSON file written owner-only:
``traceline gateway-key create SOURCE``); traceline keeps the public key, its source and its key
id in a registry (``sinks.gateway_keys``).

The wire format, for gateways written in other languages too:

* the message signed is :data:`SIGNED_CONTEXT` followed by the record's value, byte for byte as
  it goes to Kafka (the Avro single-object or Confluent framing included): the signature covers
  the event's every field (``event_id``, ``source``, ``event_time``, ...) and its schema;
* Kafka header :data:`SIG_HEADER` (``traceline.sig``): the 64-byte Ed25519 signature, raw;
* Kafka header :data:`KEY_ID_HEADER` (``traceline.key_id``): the key id, ASCII: the first 16 hex
  digits of the sha256 of the raw 32-byte public key (:func:`key_id_of`).

:func:`attest` is the sink's judgement of one record (pure): a valid signature of a registered,
non-revoked key whose source is the event's ``source`` gives an :class:`Attestation` naming
that source; a record with no signature an empty one (or, with ``require_signed``, a
:class:`Refusal`); any signature that does not hold a :class:`Refusal` with its reason, whether
signatures are required or not (a forged signature is never taken for an unsigned event).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from schemas.errors import TracelineError

__all__ = [
    "SIG_HEADER",
    "KEY_ID_HEADER",
    "SIGNED_CONTEXT",
    "KEY_FILE_FORMAT",
    "UNSIGNED_EVENT",
    "BAD_SIGNATURE",
    "UNKNOWN_KEY",
    "REVOKED_KEY",
    "SOURCE_MISMATCH",
    "SIGNATURE_ERRORS",
    "SigningKeyError",
    "GatewayKey",
    "RegisteredKey",
    "Attestation",
    "UNSIGNED",
    "Refusal",
    "attest",
    "key_id_of",
    "public_key_from_pem",
    "public_key_pem",
    "signed_message",
    "signature_headers",
]

SIG_HEADER = "traceline.sig"
KEY_ID_HEADER = "traceline.key_id"
SIGNED_CONTEXT = b"traceline/event-signature/v1\x00"
"""Prefixed to the value before signing: a gateway key's signature means "this event" only."""
KEY_FILE_FORMAT = "traceline-gateway-key/v1"

# the error classes of a refused record (the dead letter's ``traceline.error``, the ledger's key)
UNSIGNED_EVENT = "UnsignedEvent"
BAD_SIGNATURE = "BadEventSignature"
UNKNOWN_KEY = "UnknownSigningKey"
REVOKED_KEY = "RevokedSigningKey"
SOURCE_MISMATCH = "SigningKeySourceMismatch"
SIGNATURE_ERRORS = (UNSIGNED_EVENT, BAD_SIGNATURE, UNKNOWN_KEY, REVOKED_KEY, SOURCE_MISMATCH)

_SIG_LEN = 64


class SigningKeyError(TracelineError, ValueError):
    """A gateway key file that cannot be used (readable by others, not a gateway key) or a key
    registry that cannot be read."""


def key_id_of(public: Ed25519PublicKey) -> str:
    """The key id: the first 16 hex digits of the sha256 of the raw public key."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_key_pem(public: Ed25519PublicKey) -> str:
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def public_key_from_pem(pem: str) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(pem.encode("ascii"))
    except (ValueError, TypeError, UnicodeEncodeError) as exc:
        raise SigningKeyError(f"not a PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(f"not an Ed25519 public key: {type(key).__name__}")
    return key


def signed_message(value: bytes) -> bytes:
    """What a gateway signs for a record whose Kafka value is ``value``."""
    return SIGNED_CONTEXT + value


def signature_headers(key_id: str, signature: bytes) -> list[tuple[str, bytes]]:
    """The Kafka headers that carry a signature."""
    return [(SIG_HEADER, signature), (KEY_ID_HEADER, key_id.encode("ascii"))]


class GatewayKey:
    """A gateway's private key and the source it signs for.

    The key file is JSON: ``{"format": KEY_FILE_FORMAT, "source", "key_id", "private_key"}`` (the
    key as unencrypted PKCS#8 PEM), created 0600 in a directory created 0700 (:meth:`save`) and
    refused when group or others may read it (:meth:`load`)."""

    def __init__(self, source: str, private: Ed25519PrivateKey) -> None:
        self.source = source
        self._private = private
        self.public = private.public_key()
        self.key_id = key_id_of(self.public)

    @classmethod
    def generate(cls, source: str) -> GatewayKey:
        return cls(source, Ed25519PrivateKey.generate())

    def sign(self, value: bytes) -> bytes:
        """The signature of a record whose Kafka value is ``value``."""
        return self._private.sign(signed_message(value))

    def headers(self, value: bytes) -> list[tuple[str, bytes]]:
        """The Kafka headers of a record whose value is ``value``, signed with this key."""
        return signature_headers(self.key_id, self.sign(value))

    def public_pem(self) -> str:
        return public_key_pem(self.public)

    def save(self, path: Path) -> Path:
        """Write the key file: directory created 0700, file created 0600, never over an existing
        file (a key is not silently replaced)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        pem = self._private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode("ascii")
        doc = {"format": KEY_FILE_FORMAT, "source": self.source, "key_id": self.key_id, "private_key": pem}
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError as exc:
            raise SigningKeyError(f"{path} exists: a key file is never overwritten") from exc
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(path, 0o600)  # whatever the umask did
        return path

    @classmethod
    def load(cls, path: Path) -> GatewayKey:
        """The key at ``path``; :class:`SigningKeyError` when group or others may read it, or it
        is not a gateway key file."""
        path = Path(path)
        try:
            mode = path.stat().st_mode
        except OSError as exc:
            raise SigningKeyError(f"cannot read the gateway key {path}: {exc}") from exc
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SigningKeyError(
                f"gateway key {path} is accessible to others (mode {mode & 0o777:o}): chmod 600 it"
            )
        try:
            doc = json.loads(path.read_text())
            if doc.get("format") != KEY_FILE_FORMAT:
                raise ValueError(f"format {doc.get('format')!r}, not {KEY_FILE_FORMAT!r}")
            source = doc["source"]
            private = serialization.load_pem_private_key(doc["private_key"].encode("ascii"), password=None)
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            raise SigningKeyError(f"{path} is not a traceline gateway key: {exc}") from exc
        if not isinstance(private, Ed25519PrivateKey) or not isinstance(source, str) or not source:
            raise SigningKeyError(f"{path} is not a traceline gateway key (Ed25519, with a source)")
        key = cls(source, private)
        if doc.get("key_id") not in (None, key.key_id):
            raise SigningKeyError(f"{path}: its key_id {doc.get('key_id')!r} is not its key's ({key.key_id})")
        return key


@dataclass(frozen=True, slots=True)
class RegisteredKey:
    """A public key as the registry holds it: whose it is, and whether it still counts."""

    key_id: str
    source: str
    public: Ed25519PublicKey
    revoked: bool = False


@dataclass(frozen=True, slots=True)
class Attestation:
    """An accepted record's attribution: the source and key a valid signature proved ('' both:
    unsigned)."""

    source: str = ""
    key_id: str = ""


UNSIGNED = Attestation()


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a record's signature does not hold (``error`` one of :data:`SIGNATURE_ERRORS`)."""

    error: str
    reason: str


Headers = Mapping[str, Any] | Iterable[tuple[str, Any]] | None
"""A record's headers as confluent-kafka gives them (a list of pairs, or a dict), or None."""


def _signature_of(headers: Headers) -> tuple[bytes, str] | Refusal | None:
    """(signature, key id) from the record's headers; None when unsigned; a Refusal when the
    signature headers are malformed (repeated, one without the other, wrong length)."""
    sigs: list[Any] = []
    ids: list[Any] = []
    pairs = headers.items() if isinstance(headers, Mapping) else headers or ()
    for name, v in pairs:
        if name == SIG_HEADER:
            sigs.append(v)
        elif name == KEY_ID_HEADER:
            ids.append(v)
    if not sigs and not ids:
        return None
    if len(sigs) != 1 or len(ids) != 1 or not sigs[0] or not ids[0]:
        return Refusal(
            BAD_SIGNATURE,
            f"malformed signature headers: {len(sigs)} {SIG_HEADER} and {len(ids)} {KEY_ID_HEADER}"
            " (exactly one of each, non-empty)",
        )
    sig, kid = bytes(sigs[0]), bytes(ids[0])
    if len(sig) != _SIG_LEN:
        return Refusal(BAD_SIGNATURE, f"{SIG_HEADER} holds {len(sig)} bytes, an Ed25519 signature {_SIG_LEN}")
    try:
        key_id = kid.decode("ascii")
    except UnicodeDecodeError:
        return Refusal(BAD_SIGNATURE, f"{KEY_ID_HEADER} is not ASCII: {kid[:40]!r}")
    return sig, key_id


def attest(
    headers: Headers,
    value: bytes,
    source: str,
    keys: Mapping[str, RegisteredKey],
    *,
    require_signed: bool = False,
) -> Attestation | Refusal:
    """Judge a record's signature (pure): ``headers`` and ``value`` as consumed, ``source`` the
    decoded event's ``source`` field, ``keys`` the registry by key id.

    Unsigned: :data:`UNSIGNED`, or with ``require_signed`` a Refusal ``UnsignedEvent``. Signed:
    the key must be registered (``UnknownSigningKey``), the signature valid over the value
    (``BadEventSignature``: a changed value, a forgery), the key not revoked
    (``RevokedSigningKey``) and registered for ``source`` (``SigningKeySourceMismatch``: a
    gateway signing for another's source); then an :class:`Attestation` of the source."""
    got = _signature_of(headers)
    if got is None:
        if require_signed:
            return Refusal(
                UNSIGNED_EVENT,
                f"the event of source {source!r} carries no signature ({SIG_HEADER}, {KEY_ID_HEADER})"
                " and signed events are required",
            )
        return UNSIGNED
    if isinstance(got, Refusal):
        return got
    sig, key_id = got
    key = keys.get(key_id)
    if key is None:
        return Refusal(
            UNKNOWN_KEY,
            f"signed with key {key_id[:40]!r}, which is not registered (traceline gateway-key list)",
        )
    try:
        key.public.verify(sig, signed_message(value))
    except InvalidSignature:
        return Refusal(
            BAD_SIGNATURE,
            f"the signature of key {key_id} (source {key.source!r}) does not match the record's bytes"
            " (changed after signing, or forged)",
        )
    if key.revoked:
        return Refusal(REVOKED_KEY, f"signed with key {key_id} of source {key.source!r}, which is revoked")
    if key.source != source:
        return Refusal(
            SOURCE_MISMATCH,
            f"the event names source {source!r} but is signed with key {key_id} of source {key.source!r}",
        )
    return Attestation(key.source, key_id)
