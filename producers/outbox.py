"""Durable local outbox: an event is on disk before ``publish()`` returns.

SQLite in WAL mode with ``synchronous=FULL``: a committed row survives a crash of the
publishing process and a power cut. Rows leave the outbox only when Kafka's delivery report
for them arrives (see :mod:`producers.publisher`). The outbox is bounded; when it is full the
caller gets :class:`OutboxFullError` and nothing is dropped silently.

One row per pending ``event_id``: a row whose id is already pending (or earlier in the same
call) is not stored again. :meth:`Outbox.add` says which rows those were and whether each is
an identical repeat (same topic, key and value: the same event) or a conflict (same id,
other content: refused, the pending row stays as it is).

A row may carry a gateway signature of its value (``schemas.signing``: ``signature`` and
``key_id``, made when it was stored, sent as Kafka headers). An outbox from before signatures
gains the two columns when opened; its rows stay unsigned and are sent as before.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from schemas.errors import OutboxFullError

__all__ = ["Outbox", "OutboxRow", "AddResult", "Repeat"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id  TEXT NOT NULL UNIQUE,
    topic     TEXT NOT NULL,
    key       BLOB,
    value     BLOB NOT NULL,
    attempts  INTEGER NOT NULL DEFAULT 0,
    signature BLOB,
    key_id    TEXT
);
"""
_SIGNATURE_COLUMNS = (("signature", "BLOB"), ("key_id", "TEXT"))


@dataclass(frozen=True, slots=True)
class OutboxRow:
    seq: int
    event_id: str
    topic: str
    key: bytes | None
    value: bytes
    signature: bytes | None = None  # the gateway's signature of value (schemas.signing), if signed
    key_id: str | None = None


@dataclass(frozen=True, slots=True)
class Repeat:
    """A row :meth:`Outbox.add` did not store because its event_id was already there."""

    index: int  # position of the row in the rows given
    event_id: str
    first: int | None  # position of the earlier row of this call with that id; None: pending before
    identical: bool  # same topic, key and value (the same event again); False: a conflict


@dataclass(frozen=True, slots=True)
class AddResult:
    """What :meth:`Outbox.add` did: ``added`` rows stored, the ``repeats`` not stored."""

    added: int
    repeats: tuple[Repeat, ...] = ()

    @property
    def identical(self) -> int:
        return sum(r.identical for r in self.repeats)

    @property
    def conflicts(self) -> int:
        return sum(not r.identical for r in self.repeats)


_IN_CHUNK = 500  # event ids per "IN (...)" lookup (SQLite's default limit is 999 parameters)


class Outbox:
    """A bounded, durable FIFO of encoded events waiting for a Kafka delivery report."""

    def __init__(self, path: str | Path, *, max_pending: int = 1_000_000) -> None:
        self.path = Path(path)
        # owner-only: pending events are programme data (a new directory 0700, the files 0600)
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.max_pending = max_pending
        self._lock = threading.Lock()
        self.path.touch(mode=0o600, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        for f in (self.path, *(self.path.with_name(self.path.name + x) for x in ("-wal", "-shm"))):
            if f.exists():
                f.chmod(0o600)
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        have = {r[1] for r in self._db.execute("PRAGMA table_info(outbox)")}
        for name, sql_type in _SIGNATURE_COLUMNS:  # an outbox from before signatures
            if name not in have:
                self._db.execute(f"ALTER TABLE outbox ADD COLUMN {name} {sql_type}")
        self._count = int(self._db.execute("SELECT count(*) FROM outbox").fetchone()[0])

    def __len__(self) -> int:
        return self._count

    def add_many(self, rows: Sequence[tuple[str, str, bytes | None, bytes]]) -> int:
        """Store ``(event_id, topic, key, value)`` rows in one durable transaction.

        A row whose event_id is already pending is not stored twice (see :meth:`add`).
        Returns the number of rows newly stored. Raises :class:`OutboxFullError` (storing
        nothing) if the rows would not fit.
        """
        return self.add(rows).added

    def add(
        self,
        rows: Sequence[tuple[str, str, bytes | None, bytes]],
        signatures: Sequence[tuple[bytes, str]] | None = None,
    ) -> AddResult:
        """Store ``(event_id, topic, key, value)`` rows in one durable transaction, and say
        which were not stored: a row whose event_id is pending already, or is on an earlier
        row of ``rows``, is an identical repeat (same topic, key, value) or a conflict (the
        first one stays). ``signatures``: ``(signature, key id)`` of each row's value, stored
        with it. Raises :class:`OutboxFullError` (storing nothing) if the new rows would not fit.
        """
        if not rows:
            return AddResult(0)
        if signatures is not None and len(signatures) != len(rows):
            raise ValueError(f"{len(signatures)} signatures for {len(rows)} rows")
        ids = list(dict.fromkeys(row[0] for row in rows))
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                pending = self._pending_rows(ids)
                first: dict[str, int] = {}
                repeats: list[Repeat] = []
                new_rows = []
                for i, row in enumerate(rows):
                    eid, content = row[0], tuple(row[1:])
                    if eid in pending:
                        repeats.append(Repeat(i, eid, None, pending[eid] == content))
                    elif (j := first.get(eid)) is not None:
                        repeats.append(Repeat(i, eid, j, tuple(rows[j][1:]) == content))
                    else:
                        first[eid] = i
                        sig, kid = signatures[i] if signatures is not None else (None, None)
                        new_rows.append((*row, sig, kid))
                if self._count + len(new_rows) > self.max_pending:
                    raise OutboxFullError(pending=self._count, limit=self.max_pending)
                before = self._db.total_changes
                self._db.executemany(
                    # ids checked above, under the write lock; only a pending duplicate would be
                    # skipped (OR IGNORE would also swallow NOT NULL violations, i.e. silently
                    # drop a broken row)
                    "INSERT INTO outbox(event_id, topic, key, value, signature, key_id)"
                    " VALUES (?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT(event_id) DO NOTHING",
                    new_rows,
                )
                added = self._db.total_changes - before
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._count += added
            return AddResult(added, tuple(repeats))

    def _pending_rows(self, event_ids: list[str]) -> dict[str, tuple[str, bytes | None, bytes]]:
        """(topic, key, value) of the given event ids that are pending (inside a transaction)."""
        found: dict[str, tuple[str, bytes | None, bytes]] = {}
        for i in range(0, len(event_ids), _IN_CHUNK):
            chunk = event_ids[i : i + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            cur = self._db.execute(
                f"SELECT event_id, topic, key, value FROM outbox WHERE event_id IN ({marks})",  # noqa: S608
                chunk,
            )
            for eid, topic, key, value in cur:
                found[eid] = (topic, key, value)
        return found

    def pending(self, *, after_seq: int = 0, limit: int = 10_000) -> list[OutboxRow]:
        """Pending rows in publish order, starting after ``after_seq``."""
        with self._lock:
            cur = self._db.execute(
                "SELECT seq, event_id, topic, key, value, signature, key_id FROM outbox WHERE seq > ?"
                " ORDER BY seq LIMIT ?",
                (after_seq, limit),
            )
            return [OutboxRow(*r) for r in cur.fetchall()]

    def remove(self, seqs: Iterable[int]) -> int:
        """Delete delivered rows. Returns how many were removed."""
        batch = [(s,) for s in seqs]
        if not batch:
            return 0
        with self._lock:
            before = self._db.total_changes
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("DELETE FROM outbox WHERE seq = ?", batch)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            removed = self._db.total_changes - before
            self._count -= removed
            return removed

    def record_attempt(self, seqs: Iterable[int]) -> None:
        batch = [(s,) for s in seqs]
        if batch:
            with self._lock:
                self._db.executemany("UPDATE outbox SET attempts = attempts + 1 WHERE seq = ?", batch)

    def close(self) -> None:
        with self._lock:
            self._db.close()
