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
from typing import Any

__all__ = ["TRIM_EVERY_S", "HeapTrims", "malloc_stats", "trim"]

#: how often ``traceline serve`` gives the heap's free pages back
TRIM_EVERY_S = 30.0

_PAGE = os.sysconf("SC_PAGE_SIZE")


_MALLINFO2_FIELDS = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in _MALLINFO2_FIELDS.split()]


def _libc(name: str, argtypes: list[Any], restype: Any) -> Any:
    """glibc's function ``name`` typed, or None off glibc (or before its version had it)."""
    try:
        fn = getattr(ctypes.CDLL("libc.so.6"), name)
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = argtypes, restype
    return fn


_TRIM = _libc("malloc_trim", [ctypes.c_size_t], ctypes.c_int)
_MALLINFO2 = _libc("mallinfo2", [], _MallInfo2)


def malloc_stats() -> dict[str, float]:
    """glibc's heap over all its arenas, in MiB: handed out (``malloc_in_use_mib``) and held
    free, freed but not returned to the system (``malloc_free_held_mib``); {} off glibc."""
    if _MALLINFO2 is None:
        return {}
    m = _MALLINFO2()
    return {
        "malloc_in_use_mib": round((m.uordblks + m.hblkhd) / (1 << 20), 1),
        "malloc_free_held_mib": round(m.fordblks / (1 << 20), 1),
    }


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
