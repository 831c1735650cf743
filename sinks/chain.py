"""Tamper evidence: a hash chain over every landed raw row, signed chain heads, Ed25519 keys.

Every raw row the sink lands (the events topic's raw tables, and ``alerts`` from the alerts
topic) gets a ``row_hash``: the sha256 of a canonical serialisation of the row's content
(:func:`row_hashes`: the table name and every column in declaration order except
``ingest_time`` and the Kafka position, as JSON, timestamps as epoch milliseconds; the gateway
signature's ``verified_source`` and ``signing_key_id`` only when set). The hash is
computed from the Arrow table the sink inserts and, by ``queries.verify``, from the Arrow table
the store returns: one function on both sides, so what is compared is what is stored.

Per (topic, partition), in offset order, the rows form a chain: ``chain_hash = sha256(previous
chain_hash || row_hash)``, starting from :func:`genesis` (a constant of the topic and
partition). The entries land in ``event_chain`` in the same ``write_batch`` as the rows, under
the batch's deduplication token, before the raw tables (a landed raw row, the sink's watermark,
implies its entry landed). The sink keeps the head of each chain (:class:`ChainState`, read
from the store at start and after every failure) and extends it only above it, so a replayed
batch adds nothing and a partly landed one is completed, never chained twice.

Heads are signed with an Ed25519 key (:class:`Signer`, ``<data dir>/keys/chain.ed25519``,
created owner-only at first use) at most once per ``sign_seconds`` per chain, and when the
sink is idle, into ``chain_heads``. What this proves and what it does not: docs/SECURITY.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from schemas.errors import TracelineError
from schemas.signing import key_id_of
from sinks.rows import RAW_TABLES, SCHEMAS

__all__ = [
    "CHAINED_TABLES",
    "CHAIN_SCHEMA",
    "HEADS_SCHEMA",
    "UNHASHED",
    "HASHED_WHEN_SET",
    "ChainBatch",
    "ChainState",
    "KeyFileError",
    "Signer",
    "Verifier",
    "chain_key_path",
    "genesis",
    "head_message",
    "hashed_columns",
    "link",
    "load_heads",
    "report_key_path",
    "row_hashes",
]

log = logging.getLogger(__name__)

#: the tables whose rows are chained: the raw event tables and the alerts
CHAINED_TABLES: tuple[str, ...] = (*RAW_TABLES, "alerts")
#: columns left out of a row's hash: when the sink read it, and where (the chain entry holds
#: the position; a row moved to another offset no longer meets its entry)
UNHASHED = frozenset({"ingest_time", "kafka_topic", "kafka_partition", "kafka_offset"})
#: columns added after the chain began (migration 7: who signed the event), hashed only when set:
#: a row chained before them reads '' there and hashes as it did; setting one on a chained row,
#: or clearing it, changes the hash
HASHED_WHEN_SET: tuple[str, ...] = ("verified_source", "signing_key_id")

_H = pa.binary(32)
CHAIN_SCHEMA = pa.schema(
    [
        ("kafka_topic", pa.string()),
        ("kafka_partition", pa.uint32()),
        ("kafka_offset", pa.uint64()),
        ("event_id", pa.string()),
        ("raw_table", pa.string()),
        ("row_hash", _H),
        ("chain_hash", _H),
        ("landed_at", pa.timestamp("ms", tz="UTC")),
    ]
)
HEADS_SCHEMA = pa.schema(
    [
        ("kafka_topic", pa.string()),
        ("kafka_partition", pa.uint32()),
        ("kafka_offset", pa.uint64()),
        ("chain_hash", _H),
        ("key_id", pa.string()),
        ("signature", pa.binary()),
        ("signed_at", pa.timestamp("ms", tz="UTC")),
    ]
)
_GENESIS = b"traceline/event-chain/v1"
_HEAD = b"traceline/chain-head/v1"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# ----------------------------------------------------------------------------- hashing


def hashed_columns(table: str) -> list[str]:
    """The columns of ``table`` a row hash covers, in declaration order (those of
    :data:`HASHED_WHEN_SET` when they are set)."""
    return [n for n in SCHEMAS[table].names if n not in UNHASHED]


def _column_values(data: pa.Table, name: str) -> list[Any]:
    arr = data.column(name)
    t = arr.type
    if pa.types.is_dictionary(t):
        arr = arr.cast(t.value_type)
        t = arr.type
    if pa.types.is_timestamp(t):  # epoch milliseconds (DateTime64(3) holds no more)
        return arr.cast(pa.timestamp("ms", tz="UTC")).cast(pa.int64()).to_pylist()  # type: ignore[no-any-return]
    values = arr.to_pylist()
    if pa.types.is_map(t):  # key order is not content
        return [None if v is None else sorted(list(kv) for kv in v) for v in values]
    return values  # type: ignore[no-any-return]


# ASCII-only compact JSON (non-ASCII as \\uXXXX): stable across Python versions, and the C path
_ENCODE = json.JSONEncoder(
    ensure_ascii=True, check_circular=False, separators=(",", ":"), allow_nan=True
).encode


def row_hashes(table: str, data: pa.Table) -> list[bytes]:
    """sha256 of each row of ``data`` (rows of ``table``): ``[table, value, ...]`` as compact
    ASCII JSON over :func:`hashed_columns`, timestamps as epoch milliseconds, map entries sorted;
    the values of :data:`HASHED_WHEN_SET` last, and only on a row where one of them is not ''.
    ``data`` may be what the sink inserts or what the store returns (same values, same hash)."""
    names = hashed_columns(table)
    late = [n for n in names if n in HASHED_WHEN_SET]
    columns = [_column_values(data, n) for n in names if n not in HASHED_WHEN_SET]
    sha = hashlib.sha256
    prefix = _ENCODE(table)[:-1] + ","  # '"table",'
    rows: Iterable[Sequence[Any]] = zip(*columns, strict=True)
    extra = [_column_values(data, n) for n in late]
    if any(any(col) for col in extra):  # some row is signed: its late values follow its columns
        rows = [
            (*row, *more) if any(more) else row
            for row, more in zip(rows, zip(*extra, strict=True), strict=True)
        ]
    return [sha(("[" + prefix + _ENCODE(row)[1:]).encode("ascii")).digest() for row in rows]


def genesis(topic: str, partition: int) -> bytes:
    """The chain_hash "before" the first entry of a (topic, partition)."""
    return hashlib.sha256(b"\0".join((_GENESIS, topic.encode(), str(partition).encode()))).digest()


def link(prev: bytes, row_hash: bytes) -> bytes:
    """The chain hash of an entry: ``sha256(prev || row_hash)``."""
    return hashlib.sha256(prev + row_hash).digest()


def head_message(topic: str, partition: int, offset: int, chain_hash: bytes, signed_at: datetime) -> bytes:
    """What a head's signature covers."""
    ms = (signed_at - _EPOCH) // _MS
    return b"\0".join(
        (_HEAD, topic.encode(), str(partition).encode(), str(offset).encode(), chain_hash, str(ms).encode())
    )


_MS = datetime(1970, 1, 1, 0, 0, 0, 1000, tzinfo=UTC) - _EPOCH


# ----------------------------------------------------------------------------- keys


class KeyFileError(TracelineError, ValueError):
    """A signing key file that cannot be used (readable by others, or not an Ed25519 key)."""


def chain_key_path(data_dir: Path) -> Path:
    """``<data dir>/keys/chain.ed25519``: the sink's key for chain heads."""
    return Path(data_dir) / "keys" / "chain.ed25519"


def report_key_path(data_dir: Path) -> Path:
    """``<data dir>/keys/report.ed25519``: the key issued reports are signed with."""
    return Path(data_dir) / "keys" / "report.ed25519"


class Verifier:
    """An Ed25519 public key: checks signatures (``key_id`` names it)."""

    def __init__(self, public: Ed25519PublicKey) -> None:
        self.public = public
        self.key_id = key_id_of(public)

    def verify(self, signature: bytes, data: bytes) -> bool:
        try:
            self.public.verify(bytes(signature), data)
        except (InvalidSignature, ValueError):
            return False
        return True

    @classmethod
    def load(cls, path: Path) -> Verifier | None:
        """The public key of the key at ``path`` (the private key, or ``<path>.pub``), or None
        when neither exists."""
        path = Path(path)
        if path.exists():
            return Signer.load(path)
        pub = path.with_name(path.name + ".pub")
        if not pub.exists():
            return None
        key = serialization.load_pem_public_key(pub.read_bytes())
        if not isinstance(key, Ed25519PublicKey):
            raise KeyFileError(f"{pub} is not an Ed25519 public key")
        return cls(key)


class Signer(Verifier):
    """An Ed25519 private key (PKCS#8 PEM, owner-only) and its public key."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        super().__init__(private.public_key())
        self._private = private

    def sign(self, data: bytes) -> bytes:
        return self._private.sign(data)

    @classmethod
    def load(cls, path: Path) -> Signer:
        """The key at ``path``; a :class:`KeyFileError` when group or others may read it."""
        path = Path(path)
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyFileError(
                f"signing key {path} is accessible to others (mode {mode & 0o777:o}): chmod 600 it"
            )
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFileError(f"{path} is not an Ed25519 private key")
        return cls(key)

    @classmethod
    def load_or_create(cls, path: Path) -> Signer:
        """The key at ``path``, created (directory 0700, file 0600, ``<path>.pub`` beside it)
        when there is none; safe against a concurrent creator."""
        path = Path(path)
        if path.exists():
            return cls.load(path)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return cls.load(path)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        pub = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        path.with_name(path.name + ".pub").write_bytes(pub)
        log.info("created signing key %s", path)
        return cls(key)


# ----------------------------------------------------------------------------- the sink's side


class _Reads(Protocol):
    def query_rows(
        self, sql: str, params: Mapping[str, Any] | None = None
    ) -> tuple[list[str], list[tuple[Any, ...]]]: ...


Head = tuple[int, bytes]  # (offset, chain_hash)
Key = tuple[str, int]  # (topic, partition)


def load_heads(store: _Reads) -> dict[Key, Head]:
    """The head (highest offset) of every chain in ``event_chain``."""
    _names, rows = store.query_rows(
        "SELECT kafka_topic, kafka_partition, max(kafka_offset) AS o,"
        " hex(argMax(chain_hash, kafka_offset)) AS h FROM event_chain GROUP BY kafka_topic, kafka_partition"
    )
    return {(str(t), int(p)): (int(o), bytes.fromhex(h)) for t, p, o, h in rows}


@dataclass
class ChainBatch:
    """A batch's chain: its tables (in insert order) and the heads once it landed."""

    tables: dict[str, pa.Table]
    heads: dict[Key, Head] = field(default_factory=dict)  # advanced by this batch
    signed: dict[Key, Head] = field(default_factory=dict)  # signed in this batch


def _raw_entries(name: str, data: pa.Table, alerts_topic: str) -> Iterable[tuple[Any, ...]]:
    """(topic, partition, offset, event_id, table, row_hash) of the rows of one table."""
    hashes = row_hashes(name, data)
    parts = data.column("kafka_partition").to_pylist()
    offsets = data.column("kafka_offset").to_pylist()
    if name == "alerts":
        ids = [
            f"{a}:{v}"
            for a, v in zip(
                data.column("alert_id").to_pylist(), data.column("version").to_pylist(), strict=True
            )
        ]
        topics: Sequence[str] = [alerts_topic] * len(ids)
    else:
        ids = data.column("event_id").to_pylist()
        topics = data.column("kafka_topic").to_pylist()
    return zip(topics, parts, offsets, ids, [name] * len(ids), hashes, strict=True)


class ChainState:
    """The sink's chains: heads read from the store (:meth:`load`), extended per batch
    (:meth:`extend`), advanced once the batch landed (:meth:`landed`); heads signed with
    ``signer`` at most every ``sign_seconds`` per chain (and by :meth:`idle_heads`)."""

    def __init__(self, alerts_topic: str, signer: Signer | None = None, sign_seconds: float = 1.0) -> None:
        self.alerts_topic = alerts_topic
        self.signer = signer
        self.sign_seconds = sign_seconds
        self.heads: dict[Key, Head] = {}
        self.signed_at: dict[Key, datetime] = {}  # last signature per chain (this process)
        self.unsigned: dict[Key, Head] = {}  # heads landed but not signed yet

    def load(self, store: _Reads) -> None:
        """Read the heads from the store (at start and after a failure: part of a failed batch
        may have landed). Heads not known to be signed are signed at the next chance."""
        self.heads = load_heads(store)
        if self.signer is not None:
            self.unsigned = dict(self.heads)

    def extend(self, tables: Mapping[str, pa.Table], now: datetime) -> ChainBatch:
        """The batch's ``tables`` with its ``event_chain`` (and ``chain_heads``) entries inserted
        before the raw tables. Rows at or below a chain's head were chained before (a replay)."""
        entries: list[tuple[Any, ...]] = []
        for name, data in tables.items():
            if name in CHAINED_TABLES and data.num_rows:
                entries.extend(_raw_entries(name, data, self.alerts_topic))
        entries.sort(key=lambda e: (e[0], e[1], e[2]))
        cols: dict[str, list[Any]] = {n: [] for n in CHAIN_SCHEMA.names if n != "landed_at"}
        heads: dict[Key, Head] = {}
        for topic, part, off, eid, name, rh in entries:
            key = (topic, part)
            head = heads.get(key) or self.heads.get(key)
            if head is not None and off <= head[0]:
                continue
            ch = link(head[1] if head is not None else genesis(topic, part), rh)
            heads[key] = (off, ch)
            for n, v in zip(cols, (topic, part, off, eid, name, rh, ch), strict=True):
                cols[n].append(v)
        out = ChainBatch({}, heads)
        chain: dict[str, pa.Table] = {}
        if heads:
            cols["landed_at"] = [now] * len(cols["kafka_offset"])
            chain["event_chain"] = pa.Table.from_pydict(cols, schema=CHAIN_SCHEMA)
        due = {k: h for k, h in {**self.unsigned, **heads}.items() if self._due(k, now)}
        if due:
            out.signed = due
            chain["chain_heads"] = self._sign(due, now)
        for name, data in tables.items():
            if name not in RAW_TABLES:
                out.tables[name] = data
        out.tables.update(chain)
        for name, data in tables.items():
            if name in RAW_TABLES:
                out.tables[name] = data
        return out

    def _due(self, key: Key, now: datetime) -> bool:
        if self.signer is None:
            return False
        last = self.signed_at.get(key)
        return last is None or (now - last).total_seconds() >= self.sign_seconds

    def _sign(self, heads: Mapping[Key, Head], now: datetime) -> pa.Table:
        assert self.signer is not None
        signer = self.signer
        rows = [
            (t, p, o, h, signer.key_id, signer.sign(head_message(t, p, o, h, now)), now)
            for (t, p), (o, h) in sorted(heads.items())
        ]
        return pa.Table.from_pylist(
            [dict(zip(HEADS_SCHEMA.names, r, strict=True)) for r in rows], schema=HEADS_SCHEMA
        )

    def landed(self, batch: ChainBatch, now: datetime) -> None:
        """The batch landed: its heads are the chains' heads; its signed heads are signed."""
        self.heads.update(batch.heads)
        if self.signer is None:
            return
        self.unsigned.update(batch.heads)
        for key, head in batch.signed.items():
            self.signed_at[key] = now
            if self.unsigned.get(key) == head:
                del self.unsigned[key]

    def idle_heads(self, now: datetime) -> ChainBatch | None:
        """Nothing arrived: sign the heads not signed yet (a quiet tail is not left unsigned),
        or None when there are none. Write ``tables`` then call :meth:`landed`."""
        if self.signer is None or not self.unsigned:
            return None
        due = dict(self.unsigned)
        return ChainBatch({"chain_heads": self._sign(due, now)}, {}, due)
