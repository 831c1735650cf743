"""The live alert feed: alerts as they land, for one caller (``alerts_landed``).

The workbench's feed is pushed by the server (``GET /alerts/stream``, server-sent events):
the API polls this read about once a second and sends what is new. "New" is by landing time
(``alerts.ingest_time``, when the sink wrote the row), not by the floor time of the event
that raised it, so an alert about an old event still arrives. A cursor is the landing time
of the last row sent and the keys (``alert_id``, ``version``) sent at that very time, so rows
landed in the same millisecond are neither lost nor sent twice.

Programme scoping as ``queries.scope.scoped_alerts``: only alerts whose programme the caller
holds, and in them only the listed units the caller may see (``units_withheld``).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from queries.alerts import program_clause
from queries.facts import QueryStore
from queries.report_text import utc
from queries.scope import sees_all, withhold_alert_units

__all__ = ["FeedCursor", "alerts_landed", "feed_start", "alert_version", "visible_alert_ids"]

_PAGE = 200
_TS = "Nullable(DateTime64(3, 'UTC'))"


@dataclass
class FeedCursor:
    landed: datetime | None = None  # ingest_time of the last row sent (None: from the start)
    keys: set[tuple[str, int]] = field(default_factory=set)  # rows sent at exactly that time


def feed_start(
    store: QueryStore, programs: Collection[str], backlog: int
) -> tuple[list[dict[str, Any]], FeedCursor]:
    """The ``backlog`` alerts landed last (oldest first), and the cursor after them."""
    rows = _rows(
        store, programs, None, "ORDER BY ingest_time DESC, alert_id, version LIMIT {n:UInt32}", backlog
    )
    rows.reverse()
    cursor = FeedCursor()
    _advance(cursor, rows)
    return rows, cursor


def alerts_landed(store: QueryStore, programs: Collection[str], cursor: FeedCursor) -> list[dict[str, Any]]:
    """Alert versions landed since ``cursor`` (oldest first, at most a page); moves the cursor."""
    rows = _rows(
        store, programs, cursor.landed, "ORDER BY ingest_time, alert_id, version LIMIT {n:UInt32}", _PAGE
    )
    rows = [r for r in rows if (r["alert_id"], int(r["version"])) not in cursor.keys]
    _advance(cursor, rows)
    return rows


def _advance(cursor: FeedCursor, rows: list[dict[str, Any]]) -> None:
    for r in rows:
        if cursor.landed is None or r["ingest_time"] > cursor.landed:
            cursor.landed, cursor.keys = r["ingest_time"], set()
        if r["ingest_time"] == cursor.landed:
            cursor.keys.add((r["alert_id"], int(r["version"])))


def _rows(
    store: QueryStore, programs: Collection[str], after: datetime | None, order: str, n: int
) -> list[dict[str, Any]]:
    where = f" WHERE ({{after:{_TS}}} IS NULL OR ingest_time >= {{after:{_TS}}})"
    params: dict[str, Any] = {"after": after, "n": n}
    if not sees_all(programs):
        where += program_clause(programs, params)
    rows = store.query(
        "SELECT * EXCEPT (kafka_partition, kafka_offset, fingerprint) FROM alerts" + where + " " + order,  # noqa: S608
        params,
    )
    out = [{k: utc(v) for k, v in r.items()} for r in rows]
    withhold_alert_units(store, programs, out)
    return out


def visible_alert_ids(store: QueryStore, programs: Collection[str], alert_ids: Collection[str]) -> set[str]:
    """Those of ``alert_ids`` that exist and the caller may see (one statement for all)."""
    if not alert_ids:
        return set()
    params: dict[str, Any] = {"a": sorted(set(alert_ids))}
    where = " WHERE alert_id IN {a:Array(String)}"
    if not sees_all(programs):
        where += program_clause(programs, params)
    rows = store.query("SELECT DISTINCT alert_id FROM alerts" + where, params)  # noqa: S608
    return {r["alert_id"] for r in rows}


def alert_version(store: QueryStore, programs: Collection[str], alert_id: str) -> int | None:
    """The latest version of ``alert_id`` if the caller may see the alert, else None."""
    params: dict[str, Any] = {"a": alert_id}
    where = " WHERE alert_id = {a:String}"
    if not sees_all(programs):
        where += program_clause(programs, params)
    rows = store.query("SELECT max(version) AS v, count() AS n FROM alerts" + where, params)  # noqa: S608
    return int(rows[0]["v"]) if rows and int(rows[0]["n"]) else None
