"""Where the serve process's memory goes while events land: is it bounded, and what grows.

    python -m benchmarks.memory [--events 1500000] [--every 250000] [--no-tracemalloc]

Runs the pipeline benchmark's closed-loop ingest (``benchmarks.pipeline ingest``: a real
broker, the faust worker, the sink and the alert engine of a :class:`traceline.serve.Server`
in this process, fed from the load cache) and, before the first event lands and then every
``--every`` landed events, samples this process's RSS and what it is made of: the Python heap
(``tracemalloc``, one frame per allocation, and tracemalloc's own overhead), the Arrow memory
pool, glibc's heap over all its arenas (in use, and held free: fragmentation), the embedded
engine's own accounting (``system.metrics``: ``MemoryTracking``, its caches, active parts),
and the sizes of the bounded and unbounded Python structures (the sink's recent-id map, the
alert engine's state). At the end it prints the growth per landed event from the second sample
with events to the last (start-up and the first fills of the bounded parts come before it)
and the Python allocation sites that grew most over that span. tracemalloc slows the Python
side (~2x) and adds its own memory; ``--no-tracemalloc`` leaves it out. One JSON line on
stdout (also kept in ``var/bench/last-memory.json``), progress on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import tracemalloc
from typing import Any

import pyarrow as pa

from benchmarks._stack import log, mem_kib
from benchmarks.pipeline import _emit, _refused, _stack_for, _stop_publisher, stack_args, start_closed_loop
from schemas.heap import malloc_stats

ENGINE_METRICS = (
    "MemoryTracking",
    "UncompressedCacheBytes",
    "MarkCacheBytes",
    "PrimaryIndexCacheBytes",
    "IndexMarkCacheBytes",
    "QueryConditionCacheBytes",
    "PartsActive",
    "PartsOutdated",
)
MIB = 1 << 20
GROWTH = (
    "rss_mib",
    "python_heap_mib",
    "arrow_pool_mib",
    "engine_tracked_mib",
    "malloc_in_use_mib",
    "malloc_free_held_mib",
)


def _python_heap_mib() -> float | None:
    return round(tracemalloc.get_traced_memory()[0] / MIB, 1) if tracemalloc.is_tracing() else None


def _engine(store: Any) -> dict[str, int]:
    names = ", ".join(f"'{m}'" for m in ENGINE_METRICS)
    _cols, rows = store.query_rows(f"SELECT metric, value FROM system.metrics WHERE metric IN ({names})")  # noqa: S608
    return {str(m): int(v) for m, v in rows}


def _structures(server: Any) -> dict[str, int]:
    out = {"sink_recent_ids": len(server.sink._recent)}
    engine = server.alerts
    if engine is not None:
        st = engine.state
        out.update(
            alert_lots=len(st.lots),
            alert_lot_history=sum(len(v) for v in st.lot_history.values()),
            alert_ncs=len(st.ncs),
            alert_raised=len(st.raised),
            alert_gated=sum(len(v) for v in st.gated.values()),
            alert_part_tests=len(st.part_tests),
        )
    return out


def sample(server: Any, landed: int, t0: float) -> dict[str, Any]:
    engine = _engine(server.store)
    return {
        "landed": landed,
        "t_s": round(time.monotonic() - t0, 1),
        "rss_mib": round(mem_kib(os.getpid()).get("VmRSS", 0) / 1024, 1),
        "python_heap_mib": _python_heap_mib(),
        "tracemalloc_overhead_mib": round(tracemalloc.get_tracemalloc_memory() / MIB, 1),
        **malloc_stats(),
        "arrow_pool_mib": round(pa.total_allocated_bytes() / MIB, 1),
        "engine_tracked_mib": round(engine.get("MemoryTracking", 0) / MIB, 1),
        "engine_caches_mib": {
            k[: -len("Bytes")]: round(v / MIB, 1) for k, v in engine.items() if k.endswith("CacheBytes")
        },
        "parts": {"active": engine.get("PartsActive", 0), "outdated": engine.get("PartsOutdated", 0)},
        "heap_trims": server.heap.as_dict(),  # the server's own trims of the C heap (schemas.heap)
        **_structures(server),
    }


def _python_heap_mib() -> float | None:
    return round(tracemalloc.get_traced_memory()[0] / MIB, 1) if tracemalloc.is_tracing() else None


def _per_event(first: dict[str, Any], last: dict[str, Any], key: str) -> float | None:
    n = last["landed"] - first["landed"]
    if n <= 0 or first.get(key) is None or last.get(key) is None:
        return None
    return round((last[key] - first[key]) * MIB / n, 1)


def cmd_memory(a: argparse.Namespace) -> int:
    if a.tracemalloc:
        tracemalloc.start(1)
    stack = _stack_for(a)
    try:
        res, server, pub = start_closed_loop(stack, a, "memory")
        sink = server.sink
        t0 = time.monotonic()
        samples: list[dict[str, Any]] = [sample(server, 0, t0)]  # started, nothing landed yet
        snaps: list[tracemalloc.Snapshot] = []
        mark = a.every
        last_move, last_landed = t0, -1
        while True:
            time.sleep(1.0)
            landed, refused = sink.stats.events_landed, _refused(sink.stats)
            pub.landed.value = landed + refused  # closed loop, as in `pipeline ingest`
            now = time.monotonic()
            if landed != last_landed:
                last_move, last_landed = now, landed
            done = landed + refused >= a.events or (
                not pub.is_alive() and landed + refused >= pub.published.value
            )
            if landed >= mark or done:
                samples.append(sample(server, landed, t0))
                s = samples[-1]
                log(
                    f"landed {landed:,}: RSS {s['rss_mib']:,} MiB, Python heap {s['python_heap_mib']} MiB, "
                    f"engine {s['engine_tracked_mib']:,} MiB, parts {s['parts']['active']}"
                )
                if a.tracemalloc and (len(samples) == 3 or done):  # the span the growth is counted over
                    snaps.append(tracemalloc.take_snapshot())
                while mark <= landed:
                    mark += a.every
            if done:
                break
            if now - last_move > a.stall:
                raise SystemExit(f"no event landed for {a.stall:.0f} s at {landed:,}: the pipeline stalled")
        _stop_publisher(pub)
        # growth from the second sample with events (start-up and the first fills come before it)
        first, last = (samples[2], samples[-1]) if len(samples) > 3 else (samples[1], samples[-1])
        growth = {k: _per_event(first, last, k) for k in GROWTH}
        top: list[dict[str, Any]] = []
        if len(snaps) >= 2:
            for d in snaps[-1].compare_to(snaps[0], "lineno")[: a.top]:
                frame = d.traceback[0]
                top.append(
                    {
                        "site": f"{frame.filename.split('/site-packages/')[-1]}:{frame.lineno}",
                        "grew_mib": round(d.size_diff / MIB, 2),
                        "blocks": d.count_diff,
                    }
                )
        res.update(
            events=last["landed"],
            span={"from_landed": first["landed"], "to_landed": last["landed"]},
            growth_bytes_per_event={k.replace("_mib", ""): v for k, v in growth.items()},
            samples=samples,
            python_growth_top=top,
        )
        rows = [
            ("events landed", f"{last['landed']:,} (growth counted from {first['landed']:,})"),
            *(
                (f"growth per event, {k.replace('_mib', '')}", f"{v} bytes" if v is not None else "-")
                for k, v in growth.items()
            ),
            *(
                (k.replace("_mib", ""), " -> ".join(f"{p[k]}" for p in samples) + " MiB")
                for k in GROWTH
                if last.get(k) is not None
            ),
            (
                "structures last",
                ", ".join(f"{k} {v:,}" for k, v in last.items() if k.startswith(("sink_", "alert_"))),
            ),
            *((f"grew: {t['site']}", f"{t['grew_mib']} MiB in {t['blocks']:,} blocks") for t in top),
        ]
        _emit("memory", res, rows)
        return 0
    finally:
        stack.close(keep=a.keep)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=1_500_000, help="events to land (default 1.5M)")
    p.add_argument("--every", type=int, default=250_000, help="sample every N landed events (default 250k)")
    p.add_argument("--max-ahead", type=int, default=200_000, help="most events published but not landed")
    p.add_argument(
        "--no-tracemalloc", dest="tracemalloc", action="store_false", help="no Python heap tracing"
    )
    p.add_argument("--top", type=int, default=15, help="allocation sites listed (default 15)")
    p.add_argument("--stall", type=float, default=300, help="give up after this long without progress (s)")
    stack_args(p)
    a = p.parse_args(argv)
    if a.events <= 0 or a.every <= 0:
        p.error("--events and --every must be positive")
    return cmd_memory(a)


if __name__ == "__main__":
    sys.exit(main())
