"""``schemas.heap.trim``: the C heap's free pages go back to the system."""

import sys

import pytest

from schemas.heap import HeapTrims, trim


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_memory_freed_in_the_middle_of_the_heap_goes_back() -> None:
    blocks = [bytearray(4096) for _ in range(40_000)]  # ~160 MiB through malloc
    pin = bytearray(4096)  # above them: glibc cannot shrink the heap from its top
    del blocks
    got = HeapTrims()
    released = trim(got)
    assert released is not None and released > 64 << 20, released
    assert got.trims == 1 and got.released_mib > 64 and got.last_ms >= 0
    assert got.as_dict()["trims"] == 1
    del pin
