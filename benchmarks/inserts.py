"""What one sink batch costs ClickHouse, table by table: the fixed cost per insert.

    python -m benchmarks.inserts [--events 1000] [--batches 12] [--data-dir DIR]

Decodes ``--events`` simulated events per batch from the pipeline benchmark's row cache
(``var/bench/rows-s1-t20240101-n*.bin``, built on first use), builds the sink's Arrow tables
(``sinks.rows.rows_for_batch``) and inserts them table by table into a fresh embedded store
(chdb under ``--data-dir``, default a temp dir) with the sink's insert settings. Prints the
median milliseconds per table (the first two batches are not counted), their sum, and a
one-row insert into a plain MergeTree table and into a Memory table for scale. No broker.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import _stack
from schemas.serde import AvroSerde
from sinks.rows import SinkRecord, rows_for_batch
from sinks.store import INSERT_SETTINGS, Store


def _ms(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def run(events: int, batches: int, data_dir: str) -> dict[str, Any]:
    serde = AvroSerde(topic="traceline.events")
    need = events * batches
    cache = _stack.row_cache(max(need, 100_000))
    values = [r[3] for chunk in _stack.read_rows(cache, "traceline.events", need, 10_000) for r in chunk]
    store = Store.open(f"chdb://{Path(data_dir).resolve() / 'ch'}", "traceline")
    now = datetime.now(UTC)
    per_table: dict[str, list[float]] = {}
    for b in range(batches):
        recs = []
        for i, v in enumerate(values[b * events : (b + 1) * events]):
            type_name, rec = serde.decode(v)
            recs.append(SinkRecord(type_name, rec, "traceline.events", 0, b * events + i, now))
        for name, tbl in rows_for_batch(recs).items():
            settings = dict(INSERT_SETTINGS, insert_deduplication_token=f"bench:{b}:{name}")
            ms = _ms(lambda name=name, tbl=tbl, s=settings: store._insert_arrow(name, tbl, s))
            if b >= 2:
                per_table.setdefault(name, []).append(ms)
        _stack.log(f"batch {b + 1}/{batches}")
    medians = {k: round(statistics.median(v), 1) for k, v in per_table.items()}
    store.command("CREATE TABLE IF NOT EXISTS bench_mt (a UInt32) ENGINE = MergeTree ORDER BY a")
    store.command("CREATE TABLE IF NOT EXISTS bench_mem (a UInt32) ENGINE = Memory")
    probes = {}
    for t in ("bench_mt", "bench_mem"):
        xs = [_ms(lambda t=t, i=i: store.command(f"INSERT INTO {t} VALUES ({i})")) for i in range(20)]  # noqa: S608
        probes[t] = round(statistics.median(xs), 2)
    store.close()
    return {
        "benchmark": "inserts",
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "events_per_batch": events,
        "batches_counted": max(0, batches - 2),
        "ms_per_table": dict(sorted(medians.items(), key=lambda kv: -kv[1])),
        "ms_per_batch": round(sum(medians.values()), 1),
        "one_row_insert_ms": {"MergeTree": probes["bench_mt"], "Memory": probes["bench_mem"]},
        "data_dir": str(data_dir),
        "loadavg": _stack.loadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.inserts", description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=1000, help="events per batch (default 1000)")
    p.add_argument("--batches", type=int, default=12, help="batches, the first 2 not counted (default 12)")
    p.add_argument("--data-dir", default="", help="where the fresh store goes (default: a temp dir)")
    a = p.parse_args(argv)
    if a.events < 1 or a.batches < 3:
        p.error("--events must be >= 1 and --batches >= 3")
    with tempfile.TemporaryDirectory(prefix="traceline-inserts-") as tmp:
        res = run(a.events, a.batches, a.data_dir or tmp)
    print(json.dumps(res))
    print(f"\ninserts of one sink batch of {a.events:,} events ({res['batches_counted']} batches, medians)")
    for name, ms in res["ms_per_table"].items():
        print(f"  {name:24s} {ms:7.1f} ms")
    print(f"  {'all tables':24s} {res['ms_per_batch']:7.1f} ms")
    for k, v in res["one_row_insert_ms"].items():
        print(f"  one-row insert, {k:9s} {v:7.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
