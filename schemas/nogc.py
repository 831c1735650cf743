"""``gc_paused``: run a function with Python's cyclic garbage collector paused.

The hot paths of traceline (a sink batch, an alert-engine batch, a recall) build hundreds of
thousands of short-lived dicts and lists that hold no reference cycles: reference counting
frees them when the batch ends. Left on, the collector runs a young collection every 700 new
objects and every so often a full one that scans every live object of the process (the
server's alert state, caches, the batch itself), which is pure overhead here. Measured: a
2,500-unit lot's recall p50 108 -> 76 ms; the sink's judge + rows of a 20,000-event batch
66 -> 40 us per event (docs/BENCHMARKS.md).

Threads: the collector is one switch per process. The call that turned it off turns it back
on; a call that found it off leaves it alone, so overlapping calls from several threads end
with it on once the last of the calls that turned it off has ended, and a caller that keeps it
off for good (``gc.disable()`` before) keeps it off.
"""

from __future__ import annotations

import functools
import gc
from collections.abc import Callable
from typing import ParamSpec, TypeVar

__all__ = ["gc_paused"]

_P = ParamSpec("_P")
_R = TypeVar("_R")


def gc_paused(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Decorate ``fn`` to run with the cyclic garbage collector paused (see the module doc)."""

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            if was_enabled:
                gc.enable()

    return wrapper
