"""Durable local outbox: an event is on disk before ``publish()`` returns.

SQLite in WAL mode with ``synchronous=FULL``: a committed row survives a crash of the
publishing process and a power cut. Rows leave the outbox only when Kafka's delivery report
for them arrives (see :mod:`producers.publisher`). The outbox is bounded; when it is full the
caller gets :class:`OutboxFullError` and nothing is dropped silently.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from schemas.errors import OutboxFullError

__all__ = ["Outbox", "OutboxRow"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id  TEXT NOT NULL UNIQUE,
    topic     TEXT NOT NULL,
    key       BLOB,
    value     BLOB NOT NULL,
    attempts  INTEGER NOT NULL DEFAULT 0
);
"""


@dataclass(frozen=True, slots=True)
class OutboxRow:
    seq: int
    event_id: str
    topic: str
    key: bytes | None
    value: bytes


class Outbox:
    """A bounded, durable FIFO of encoded events waiting for a Kafka delivery report."""

    def __init__(self, path: str | Path, *, max_pending: int = 1_000_000) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_pending = max_pending
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._count = int(self._db.execute("SELECT count(*) FROM outbox").fetchone()[0])

    def __len__(self) -> int:
        return self._count

    def add_many(self, rows: Sequence[tuple[str, str, bytes | None, bytes]]) -> int:
        """Store ``(event_id, topic, key, value)`` rows in one durable transaction.

        A row whose event_id is already pending is not stored twice (it is the same event).
        Returns the number of rows newly stored. Raises :class:`OutboxFullError` (storing
        nothing) if the rows would not fit.
        """
        if not rows:
            return 0
        with self._lock:
            if self._count + len(rows) > self.max_pending:
                raise OutboxFullError(pending=self._count, limit=self.max_pending)
            before = self._db.total_changes
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    # only a pending duplicate event_id is skipped (OR IGNORE would also
                    # swallow NOT NULL violations, i.e. silently drop a broken row)
                    "INSERT INTO outbox(event_id, topic, key, value) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT(event_id) DO NOTHING",
                    rows,
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            added = self._db.total_changes - before
            self._count += added
            return added

    def pending(self, *, after_seq: int = 0, limit: int = 10_000) -> list[OutboxRow]:
        """Pending rows in publish order, starting after ``after_seq``."""
        with self._lock:
            cur = self._db.execute(
                "SELECT seq, event_id, topic, key, value FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
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
