"""Text forms of values in the recall report: times, counts, key/value lists, short lists.

Shared by the report's data (``queries.report``), its section model (``queries.report_sections``)
and its renderers. Nothing here knows the report's records; it imports nothing of the project.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

__all__ = ["day", "few", "kv", "plural", "ts", "utc"]


def utc(v: Any) -> Any:
    """A naive datetime read from the store, marked UTC; anything else unchanged."""
    return v.replace(tzinfo=UTC) if isinstance(v, datetime) and v.tzinfo is None else v


def ts(v: datetime | None) -> str:
    """``2026-03-02 10:00:00 UTC``; empty for None."""
    if v is None:
        return ""
    return utc(v).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def day(v: datetime | None) -> str:
    """``2026-03-02 10:00`` (UTC, to the minute); empty for None."""
    return "" if v is None else utc(v).astimezone(UTC).strftime("%Y-%m-%d %H:%M")


def plural(n: int, word: str) -> str:
    """``1 lot``, ``2 lots``."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def kv(d: Mapping[str, int]) -> str:
    """``shipped 3, in_work 1``."""
    return ", ".join(f"{k} {v}" for k, v in d.items())


def few(items: Iterable[str], n: int = 3) -> str:
    """``a, b, c (+4 more)``: the first ``n`` distinct non-empty items, and how many more."""
    seen = [x for x in dict.fromkeys(items) if x]
    more = len(seen) - n
    return ", ".join(seen[:n]) + (f" (+{more} more)" if more > 0 else "")
