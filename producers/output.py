"""What a simulated run puts out: events in the JSON form of schemas/README.md, their counts,
and JSON-lines files of them.

* ``uuid4_str`` (event ids), ``time_formatter`` (epoch milliseconds -> ISO-8601 with
  millisecond precision and ``Z``), ``to_ms`` (a datetime -> epoch milliseconds);
* ``SimulationStats``: the counters of a run (events by type, units, lots, tests, ...);
* ``write_jsonl``: events to a JSON-lines file (gzip-compressed for ``.gz`` paths).
"""

from __future__ import annotations

import gzip
import json
import os
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import IO, Any

from producers.plant import MIN, SEC

__all__ = ["uuid4_str", "time_formatter", "to_ms", "SimulationStats", "write_jsonl"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


def uuid4_str(n: int) -> str:
    """``str(uuid.UUID(int=n, version=4))`` without building a UUID object."""
    h = f"{n:032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


def time_formatter() -> Callable[[int], str]:
    """Epoch milliseconds -> ``YYYY-MM-DDTHH:MM:SS.mmmZ``, with a bounded per-minute cache."""
    cache: dict[int, str] = {}
    get = cache.get

    def fmt(ms: int) -> str:
        m, r = divmod(ms, MIN)
        p = get(m)
        if p is None:
            if len(cache) >= 8192:
                cache.clear()
            p = cache[m] = (_EPOCH + timedelta(minutes=m)).strftime("%Y-%m-%dT%H:%M:")
        s, ms_ = divmod(r, SEC)
        return f"{p}{s:02d}.{ms_:03d}Z"

    return fmt


def to_ms(dt: datetime) -> int:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - _EPOCH) // timedelta(milliseconds=1)


@dataclass
class SimulationStats:
    """What a run produced. Event counts are of events yielded so far; the other counters are
    updated as the plant generates work (they match once the iteration is complete)."""

    seed: int
    units_target: int
    events_by_type: Counter[str] = field(default_factory=Counter)
    units: int = 0
    units_by_level: Counter[int] = field(default_factory=Counter)
    units_by_part: Counter[str] = field(default_factory=Counter)
    batches: int = 0
    systems: int = 0
    systems_shipped: int = 0
    systems_in_stock: int = 0
    systems_in_work: int = 0
    spares_shipped: int = 0
    lots_received: int = 0
    lots_rejected: int = 0
    lots_conditional: int = 0
    lots_transformed: int = 0
    lot_holds: int = 0
    tests: int = 0
    tests_failed: int = 0
    tests_past_calibration: int = 0
    reworks: int = 0
    rework_reinstalls: int = 0
    nonconformances: int = 0
    first_event_time: str | None = None
    last_event_time: str | None = None
    programs: tuple[str, ...] = ()
    sites: tuple[str, ...] = ()

    @property
    def events(self) -> int:
        """Events yielded so far."""
        return sum(self.events_by_type.values())

    @property
    def lots(self) -> int:
        return self.lots_received + self.lots_transformed

    def as_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["events_by_type"] = dict(sorted(self.events_by_type.items()))
        d["units_by_level"] = dict(sorted(self.units_by_level.items()))
        d["units_by_part"] = dict(sorted(self.units_by_part.items()))
        d["lots"] = self.lots
        d["events"] = self.events
        d["programs"] = list(self.programs)
        d["sites"] = list(self.sites)
        return d


def write_jsonl(
    events: Iterable[dict[str, Any]],
    path_or_file: str | os.PathLike[str] | IO[str],
    progress: Callable[[int], None] | None = None,
    progress_every: int = 100_000,
) -> int:
    """Write events as JSON lines (``.gz`` paths are gzip-compressed). Returns the event count.

    ``progress(events_written)`` is called every ``progress_every`` events and at the end.
    """
    encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
    own = isinstance(path_or_file, str | os.PathLike)
    if own:
        p = os.fspath(path_or_file)  # type: ignore[arg-type]  # str | PathLike here
        f: IO[str] = (gzip.open(p, "wt", encoding="utf-8") if p.endswith(".gz")
                      else open(p, "w", encoding="utf-8"))  # noqa: SIM115
    else:
        f = path_or_file  # type: ignore[assignment]
    n = 0
    buf: list[str] = []
    step = max(1, progress_every)
    try:
        for ev in events:
            buf.append(encode(ev))
            n += 1
            if len(buf) >= 2000:
                buf.append("")
                f.write("\n".join(buf))
                buf.clear()
            if progress is not None and n % step == 0:
                progress(n)
        if buf:
            buf.append("")
            f.write("\n".join(buf))
    finally:
        if own:
            f.close()
    if progress is not None:
        progress(n)
    return n
