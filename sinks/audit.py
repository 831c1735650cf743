"""The query audit log: who asked what, when, with what scope and how many results.

Every API request but liveness and static files becomes one row of ``query_audit``
(``sinks.tables.QUERY_AUDIT``): the caller (token name or OIDC subject, role, programmes; ''
for a request without a valid credential, which is logged too), method, route, the query
parameters, the HTTP status, how many units / rows / alerts the answer held and how many were
withheld (outside the caller's programmes), and the time it took.

Tamper evidence, per server (``server_id``: host and data dir, so two servers on one ClickHouse
keep a chain each): ``row_hash`` = sha256 of the row's content as canonical JSON (every column
but the hashes, key id and signature; ``at`` as epoch milliseconds); ``chain_hash`` =
sha256(previous chain_hash || row_hash) from :func:`genesis`; every row is signed (Ed25519, the
chain key of ``sinks.chain``) over server id, seq and chain hash. :func:`check` (run by
``traceline verify``) re-hashes every row and reports an altered row, a deleted or inserted one
(a broken link or a gap in ``seq``) and a bad signature. Like the event chain, the newest rows
can be cut off whole without a trace in the log itself; the server's count
(``AuditLog.stats.written``) and the signed heads of the event chain bound that.

Writing never holds up an answer: :meth:`AuditLog.record` queues the row, a thread writes the
queue every ``flush_seconds`` (one insert), :meth:`AuditLog.stop` writes what is left. A failed
write is retried with the same rows (idempotent by its token), counted and shown in health.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import socket
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa

from sinks.chain import Signer, Verifier, link

__all__ = [
    "AuditCheck", "AuditEntry", "AuditLog", "AuditStats", "check", "entries_of", "genesis", "row_hash",
    "server_id_for",
]  # fmt: skip

log = logging.getLogger(__name__)

_CONTENT = (
    "server_id", "seq", "at", "principal", "role", "programs", "method", "path", "params", "status",
    "results", "withheld", "duration_ms",
)  # fmt: skip
_SCHEMA = pa.schema(
    [
        ("server_id", pa.string()),
        ("seq", pa.uint64()),
        ("at", pa.timestamp("ms", tz="UTC")),
        ("principal", pa.string()),
        ("role", pa.string()),
        ("programs", pa.list_(pa.string())),
        ("method", pa.string()),
        ("path", pa.string()),
        ("params", pa.string()),
        ("status", pa.uint16()),
        ("results", pa.int64()),
        ("withheld", pa.int64()),
        ("duration_ms", pa.float64()),
        ("row_hash", pa.binary(32)),
        ("chain_hash", pa.binary(32)),
        ("key_id", pa.string()),
        ("signature", pa.binary()),
    ]
)


class _Store(Protocol):
    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]: ...

    def write_batch(self, tables: Mapping[str, pa.Table], token: str) -> dict[str, int]: ...


@dataclass(frozen=True)
class AuditEntry:
    """One request, as the API saw it."""

    at: datetime
    principal: str
    role: str
    programs: tuple[str, ...]
    method: str
    path: str
    params: str  # JSON
    status: int
    results: int = -1
    withheld: int = 0
    duration_ms: float = 0.0


@dataclass
class AuditStats:
    written: int = 0
    write_errors: int = 0
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def server_id_for(data_dir: Path) -> str:
    """``host:<12 hex of the data dir's path>``: one chain per server."""
    where = hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()[:12]
    return f"{socket.gethostname()}:{where}"


def genesis(server_id: str) -> bytes:
    return hashlib.sha256(b"traceline.query_audit\0" + server_id.encode()).digest()


def _ms(t: datetime) -> int:
    aware = t if t.tzinfo is not None else t.replace(tzinfo=UTC)  # the store's naive values are UTC
    return int(aware.timestamp() * 1000)


def row_hash(row: Mapping[str, Any]) -> bytes:
    """sha256 of a row's content (``_CONTENT`` columns) as compact, sorted ASCII JSON."""
    content = {k: row[k] for k in _CONTENT}
    content["at"] = _ms(row["at"])
    content["programs"] = list(row["programs"])
    content["seq"], content["status"] = int(row["seq"]), int(row["status"])
    content["results"], content["withheld"] = int(row["results"]), int(row["withheld"])
    content["duration_ms"] = round(float(row["duration_ms"]), 3)
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).digest()


def signed_message(server_id: str, seq: int, chain_hash: bytes) -> bytes:
    return b"traceline.query_audit\0" + server_id.encode() + b"\0" + str(seq).encode() + b"\0" + chain_hash


class AuditLog:
    """Queues request rows and writes them under the server's chain (see the module doc)."""

    def __init__(self, store: _Store, server_id: str, signer: Signer, flush_seconds: float = 0.5) -> None:
        self.store, self.server_id, self.signer = store, server_id, signer
        self.flush_seconds = flush_seconds
        self.stats = AuditStats()
        self._queue: queue.SimpleQueue[AuditEntry] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seq, self._head = 0, genesis(server_id)
        self._pending: pa.Table | None = None  # rows built but not yet written (retried as they are)

    def start(self) -> AuditLog:
        rows = self.store.query(
            "SELECT seq, hex(chain_hash) AS chain_hash FROM query_audit WHERE server_id = {s:String}"
            " ORDER BY seq DESC LIMIT 1",
            {"s": self.server_id},
        )
        if rows:
            self._seq, self._head = int(rows[0]["seq"]), _bytes(rows[0]["chain_hash"])
        self._thread = threading.Thread(target=self._run, name="query audit", daemon=True)
        self._thread.start()
        return self

    def record(self, entry: AuditEntry) -> None:
        """From any thread; never blocks on the store."""
        self._queue.put(entry)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._flush()

    def _run(self) -> None:
        while not self._stop.wait(self.flush_seconds):
            self._flush()

    def _flush(self) -> None:
        if self._pending is None:
            self._pending = self._build()
        if self._pending is None:
            return
        first = int(self._pending.column("seq")[0].as_py())
        try:
            self.store.write_batch({"query_audit": self._pending}, f"audit:{self.server_id}:{first}")
        except Exception as exc:  # noqa: BLE001 - counted, shown in health, retried with the same rows
            self.stats.write_errors += 1
            self.stats.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("the query audit log could not be written (retrying): %s", exc)
            return
        self.stats.written += self._pending.num_rows
        self.stats.last_error = None
        self._pending = None

    def _build(self) -> pa.Table | None:
        entries: list[AuditEntry] = []
        while True:
            try:
                entries.append(self._queue.get_nowait())
            except queue.Empty:
                break
        if not entries:
            return None
        cols: dict[str, list[Any]] = {f.name: [] for f in _SCHEMA}
        for e in entries:
            self._seq += 1
            row = {
                "server_id": self.server_id, "seq": self._seq, "at": e.at, "principal": e.principal,
                "role": e.role, "programs": list(e.programs), "method": e.method, "path": e.path,
                "params": e.params, "status": e.status, "results": e.results, "withheld": e.withheld,
                "duration_ms": round(e.duration_ms, 3),
            }  # fmt: skip
            h = row_hash(row)
            self._head = link(self._head, h)
            row.update(
                row_hash=h,
                chain_hash=self._head,
                key_id=self.signer.key_id,
                signature=self.signer.sign(signed_message(self.server_id, self._seq, self._head)),
            )
            for k, v in row.items():
                cols[k].append(v)
        return pa.Table.from_pydict(cols, schema=_SCHEMA)


def _bytes(v: Any) -> bytes:
    """A hash or signature as read back (``hex(...)`` in the SELECT) or as written (bytes)."""
    return v if isinstance(v, bytes) else bytes.fromhex(str(v))


@dataclass
class AuditCheck:
    rows: int = 0
    servers: int = 0
    findings: list[tuple[str, str, str]] = field(default_factory=list)  # (kind, key, detail)


class _Reads(Protocol):
    def query_rows(
        self, sql: str, params: Mapping[str, Any] | None = None
    ) -> tuple[list[str], list[tuple[Any, ...]]]: ...


def check(store: _Reads, verifier: Verifier | None) -> AuditCheck:
    """Re-hash every audit row, follow every server's chain and check every signature."""
    names, tuples = store.query_rows(
        "SELECT server_id, seq, at, principal, role, programs, method, path, params, status, results,"
        " withheld, duration_ms, hex(row_hash) AS row_hash, hex(chain_hash) AS chain_hash, key_id,"
        " hex(signature) AS signature FROM query_audit"
        " ORDER BY server_id, seq"
    )
    rows = [dict(zip(names, t, strict=True)) for t in tuples]
    out = AuditCheck(rows=len(rows))
    by_server: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_server.setdefault(str(r["server_id"]), []).append(r)
    out.servers = len(by_server)
    for server, chain in by_server.items():
        prev, expect = genesis(server), 1
        for r in chain:
            seq = int(r["seq"])
            where = f"{server}#{seq}"
            if seq > expect:
                out.findings.append(("deleted", where, f"rows {expect}..{seq - 1} before it are missing"))
            elif seq < expect:
                out.findings.append(("inserted", where, "its seq was seen before"))
            h = row_hash(r)
            if h != _bytes(r["row_hash"]):
                out.findings.append(("altered", where, "its content does not hash to its row_hash"))
            if link(prev, h) != _bytes(r["chain_hash"]):
                out.findings.append(
                    ("chain", where, "does not follow the row before it (removed or changed)")
                )
            message = signed_message(server, seq, _bytes(r["chain_hash"]))
            if verifier is not None and (
                r["key_id"] != verifier.key_id or not verifier.verify(_bytes(r["signature"]), message)
            ):
                out.findings.append(("head", where, "its signature does not verify with the chain key"))
            prev, expect = _bytes(r["chain_hash"]), max(expect, seq) + 1
    return out


def entries_of(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Audit rows as JSON-ready dicts (hashes as hex), for GET /audit."""
    out = []
    for r in rows:
        d = {k: r[k] for k in _CONTENT}
        d["at"] = r["at"].isoformat() if isinstance(r["at"], datetime) else str(r["at"])
        d["programs"] = list(r["programs"])
        d["chain_hash"] = _bytes(r["chain_hash"]).hex() if "chain_hash" in r else None
        out.append(d)
    return out
