"""Give the C heap's free pages back to the system (glibc ``malloc_trim``).

A long-running ``traceline serve`` builds and frees a batch's worth of Python objects, Arrow
buffers and librdkafka messages every few seconds, from several threads. glibc keeps what they
freed in its arenas for reuse and returns little of it, so the process's RSS drifts up by what
the heap holds free, not by what it uses: over 3M events the live memory was flat once the
bounded parts had filled (the engine ~1.1 GiB with its 1 GiB block cache, the recent-id map)
while glibc held 160-560 MiB free (``python -m benchmarks.memory``, docs/BENCHMARKS.md).
``trim()`` hands those free pages back (``malloc_trim(0)`` walks every arena and releases the
free pages inside them, not only at the top); the server calls it every
:data:`TRIM_EVERY_S` seconds. A no-op off glibc.
"""

from __future__ import annotations

import ctypes
import os
import time
from dataclasses import dataclass

__all__ = ["TRIM_EVERY_S", "HeapTrims", "trim"]

#: how often ``traceline serve`` gives the heap's free pages back
TRIM_EVERY_S = 30.0

_PAGE = os.sysconf("SC_PAGE_SIZE")


def _libc_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    try:
        fn = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


_TRIM = _libc_trim()


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


@dataclass
class HeapTrims:
    """What the trims did, for health: how many, the RSS they gave back, the last one's time."""

    trims: int = 0
    released_mib: float = 0.0
    last_ms: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "trims": self.trims,
            "released_mib": round(self.released_mib, 1),
            "last_ms": round(self.last_ms, 2),
        }


def trim(into: HeapTrims | None = None) -> int | None:
    """Release the C heap's free pages; the RSS bytes that went (None: no glibc here). Counted
    in ``into`` when given."""
    if _TRIM is None:
        return None
    before, t0 = _rss_bytes(), time.perf_counter()
    _TRIM(0)
    ms = (time.perf_counter() - t0) * 1000
    released = max(0, before - _rss_bytes())
    if into is not None:
        into.trims += 1
        into.released_mib += released / (1 << 20)
        into.last_ms = ms
    return released
