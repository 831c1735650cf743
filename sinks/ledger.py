"""The sink's counters and its events-topic ledger (what ``SinkWorker`` reports, and checks).

**The ledger.** Per partition of the events topic the sink keeps how many records it read and
what became of each: ``landed`` (a raw row), ``dead_lettered`` (by error class: undecodable,
unusable, a gateway signature that does not hold or is missing when required: ``schemas.
signing``), ``duplicates`` (an event id seen before, the same content), ``conflicts`` (an event
id seen before with other content: dead-lettered as ``ConflictingDuplicate``), ``quarantined``
(an implausible event time: dead-lettered as ``ImplausibleEventTime``) and ``replayed``
(landed or dead-lettered before: at or below a watermark). After every batch::

    read == landed + sum(dead_lettered) + duplicates + conflicts + quarantined + replayed

It cannot balance by accident: ``read`` is counted from the positions of the records a batch
collected (each distinct offset once), the categories from one fate per offset that the
batch's judge assigns (:meth:`Tally.fate` refuses a second fate for an offset), and both are
applied together, once, when the batch landed (a failed attempt applies nothing).
:meth:`SinkStats.ledger_gap` names every partition where the equation does not hold.

:func:`store_ledger` reads the store's side of it (distinct offsets per source partition in
the raw tables and in ``dead_letters``), for an audit against the sink's ledger.
"""

from __future__ import annotations

import copy
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from schemas.errors import TracelineError
from sinks.rows import RAW_TABLES
from sinks.store import Store

__all__ = [
    "CATEGORIES",
    "DEAD_LETTERED",
    "LANDED",
    "DUPLICATES",
    "CONFLICTS",
    "QUARANTINED",
    "REPLAYED",
    "LedgerError",
    "SinkStats",
    "Tally",
    "empty_entry",
    "entry_gap",
    "store_ledger",
]

LANDED = "landed"
DEAD_LETTERED = "dead_lettered"
DUPLICATES = "duplicates"
CONFLICTS = "conflicts"
QUARANTINED = "quarantined"
REPLAYED = "replayed"
CATEGORIES = (LANDED, DEAD_LETTERED, DUPLICATES, CONFLICTS, QUARANTINED, REPLAYED)
_CATEGORY_SET = frozenset(CATEGORIES)


class LedgerError(TracelineError):
    """The sink gave one record two fates (a bug: the ledger would lie)."""


def empty_entry() -> dict[str, Any]:
    """A partition's ledger entry before anything was read."""
    return {"read": 0, LANDED: 0, DEAD_LETTERED: {}, DUPLICATES: 0, CONFLICTS: 0, QUARANTINED: 0, REPLAYED: 0}


def entry_gap(entry: dict[str, Any]) -> int:
    """``read`` minus every fate of a ledger entry (0 when it balances)."""
    dead = entry.get(DEAD_LETTERED) or {}
    fates = sum(int(entry.get(c, 0)) for c in CATEGORIES if c != DEAD_LETTERED) + sum(dead.values())
    return int(entry.get("read", 0)) - fates


@dataclass
class Tally:
    """What one batch counts, applied to :class:`SinkStats` only when the batch landed."""

    read: dict[int, set[int]] = field(default_factory=dict)  # events-topic partition -> offsets
    fates: dict[tuple[int, int], tuple[str, str]] = field(default_factory=dict)  # -> (category, error)
    dead_letters_sent: int = 0
    dead_letters_by_reference: int = 0
    commands_sent: int = 0
    command_records_sent: int = 0
    malformed_records: int = 0  # change / alert records dead-lettered, dead letters with bad headers

    def read_once(self, part: int, off: int) -> bool:
        """Note an events-topic record as read; False when this batch read that offset already
        (a redelivery inside one batch: handled once)."""
        offs = self.read.setdefault(part, set())
        if off in offs:
            return False
        offs.add(off)
        return True

    def fate(self, part: int, off: int, category: str, error: str = "") -> None:
        """What became of the record at ``(part, off)``: exactly one fate per read offset (a
        fate for an offset never read shows as a negative gap in the ledger)."""
        if category not in _CATEGORY_SET:
            raise LedgerError(f"unknown ledger category {category!r}")
        fate = (category, error)
        prev = self.fates.setdefault((part, off), fate)
        if prev is not fate:
            raise LedgerError(f"record {part}@{off} given a second fate {category!r} after {prev!r}")


@dataclass
class SinkStats:
    """Counters a person or a test can check (the ledger's sink side). Counts of records are
    applied once per batch, when it landed; ``*_retries`` count attempts as they happen."""

    batches: int = 0
    events_landed: int = 0
    changes_landed: int = 0
    dead_letters_landed: int = 0
    alerts_landed: int = 0
    undecodable_skipped: int = 0  # raw records judged bad and dead-lettered (not: sent before)
    dead_letters_sent: int = 0
    dead_letters_by_reference: int = 0  # of those, sent by reference (too large to copy)
    commands_sent: int = 0
    command_records_sent: int = 0
    kafka_retries: int = 0
    duplicates_skipped: int = 0  # an event id seen before with the same content
    conflicts: int = 0  # an event id seen before with other content: dead-lettered
    quarantined: int = 0  # an implausible event time: dead-lettered
    replayed_skipped: int = 0  # landed or dead-lettered before (at or below a watermark)
    malformed_records: int = 0  # change / alert records dead-lettered, dead letters with bad headers
    store_retries: int = 0
    registry_retries: int = 0
    commit_retries: int = 0  # a commit attempt that failed and was tried again
    commit_failures: int = 0  # a batch whose commit was given up (landed; its replay is a no-op)
    last_event_time: datetime | None = None
    last_batch_at: datetime | None = None
    last_error: str | None = None
    # set while ClickHouse refuses the batch being retried, cleared when a batch lands: health
    # reads it (a sink in a 30 s back-off between attempts is still failing to write)
    store_error: str | None = None
    positions: dict[str, int] = field(default_factory=dict)
    # events-topic partition -> {"read", "landed", "dead_lettered": {error: n}, "duplicates",
    # "conflicts", "quarantined", "replayed"} (sinks.ledger); replaced whole after each batch
    ledger: dict[int, dict[str, Any]] = field(default_factory=dict)
    # wall seconds per stage, summed over batches: collect (poll up to the batch window),
    # judge (decode + checks + commands), send (commands / dead letters, until acknowledged),
    # rows (Arrow tables), insert (ClickHouse), commit (consumer offsets)
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def _time(self, stage: str, since: float) -> float:
        now = time.monotonic()
        self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + now - since
        return now

    def apply(self, t: Tally) -> None:
        """A batch landed: count its records and fold its fates into the ledger (once)."""
        ledger = copy.deepcopy(self.ledger)  # readers in other threads see the old or the new one
        for part, offs in t.read.items():
            ledger.setdefault(part, empty_entry())["read"] += len(offs)
        counts = Counter((part, category, error) for (part, _off), (category, error) in t.fates.items())
        totals: Counter[str] = Counter()
        for (part, category, error), n in counts.items():
            entry = ledger.setdefault(part, empty_entry())
            if category == DEAD_LETTERED:
                entry[DEAD_LETTERED][error] = entry[DEAD_LETTERED].get(error, 0) + n
            else:
                entry[category] += n
            totals[category] += n
        self.ledger = ledger
        self.undecodable_skipped += totals[DEAD_LETTERED]
        self.duplicates_skipped += totals[DUPLICATES]
        self.conflicts += totals[CONFLICTS]
        self.quarantined += totals[QUARANTINED]
        self.replayed_skipped += totals[REPLAYED]
        self.dead_letters_sent += t.dead_letters_sent
        self.dead_letters_by_reference += t.dead_letters_by_reference
        self.commands_sent += t.commands_sent
        self.command_records_sent += t.command_records_sent
        self.malformed_records += t.malformed_records

    def ledger_gap(self) -> dict[int, int]:
        """Partition -> records read but not accounted for (negative: counted twice); empty
        when the ledger balances."""
        return {p: g for p, e in self.ledger.items() if (g := entry_gap(e))}

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        for k in ("last_event_time", "last_batch_at"):
            v = d[k]
            d[k] = v.isoformat() if v else None
        d["stage_seconds"] = {k: round(v, 3) for k, v in self.stage_seconds.items()}
        d["ledger"] = {str(p): copy.deepcopy(e) for p, e in self.ledger.items()}
        d["positions"] = dict(self.positions)
        return d


def store_ledger(store: Store, topic: str) -> dict[int, dict[str, Any]]:
    """The store's side of the ledger of ``topic``: per source partition, the distinct offsets
    landed in the raw tables (``landed``) and in ``dead_letters`` by error (``dead_lettered``;
    conflicts and quarantined records are there as ``ConflictingDuplicate`` /
    ``ImplausibleEventTime``). Duplicates are not stored anywhere, so the store balances
    against the topic's end offsets only with the sink's duplicate count."""
    out: dict[int, dict[str, Any]] = {}
    for table in RAW_TABLES:  # a record lands in one raw table: the counts add up
        _names, rows = store.query_rows(
            f"SELECT kafka_partition, uniqExact(kafka_offset) FROM {table} "  # noqa: S608 - fixed names
            "WHERE kafka_topic = {t:String} GROUP BY kafka_partition",
            {"t": topic},
        )
        for p, n in rows:
            out.setdefault(int(p), {LANDED: 0, DEAD_LETTERED: {}})[LANDED] += int(n)
    _names, rows = store.query_rows(
        "SELECT source_partition, error, uniqExact(source_offset) FROM dead_letters "
        "WHERE source_topic = {t:String} GROUP BY source_partition, error",
        {"t": topic},
    )
    for p, error, n in rows:
        out.setdefault(int(p), {LANDED: 0, DEAD_LETTERED: {}})[DEAD_LETTERED][str(error)] = int(n)
    return out
