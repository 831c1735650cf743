"""The raw-limit pipeline: the reference ``ingest --paired`` measures traceline against.

Not the product. What the machine can land at best with the same client stack and engine:
ONE consumer (confluent-kafka, manual commits) -> fastavro (``schemaless_reader`` of every
record with its writer schema, found by the single-object fingerprint) -> ONE Arrow insert per
batch (clickhouse-connect, the embedded chdb engine, like the product) into ONE MergeTree
table -> commit. No intake rules, no dead letters, no ledger, no genealogy, no alerts.

Runs in a process of its own (:func:`raw_main`, started with ``multiprocessing`` spawn) with a
chdb store of its own, so its CPU and peak RSS are its own and it never shares the product's
engine or GIL. It reports through shared counters and a JSON file:

* ``landed`` - events inserted and committed so far;
* the JSON - monotonic times of every batch (start, end, events), the per-stage seconds
  (consume, decode, arrow, insert, commit), and the row count ClickHouse holds at the end.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

__all__ = ["RAW_TABLE_DDL", "raw_main"]

RAW_TABLE_DDL = """
CREATE TABLE IF NOT EXISTS raw.events (
    event_id String,
    event_type LowCardinality(String),
    event_time DateTime64(3, 'UTC'),
    source LowCardinality(String),
    kafka_key String,
    kafka_partition UInt16,
    kafka_offset UInt64,
    body String
) ENGINE = MergeTree ORDER BY (event_type, event_id)
"""


def _writer_schemas() -> dict[bytes, tuple[str, Any]]:
    from schemas.serde import SCHEMA_FILES, schema_fingerprint, schema_for

    return {schema_fingerprint(t): (t, schema_for(t)) for t in SCHEMA_FILES}


def raw_main(
    bootstrap: str,
    topic: str,
    group: str,
    store_path: str,
    n: int,
    batch: int,
    landed: Any,
    result_path: str,
    timeout_s: float,
    release: Any,
) -> None:
    """Consume ``n`` events of ``topic`` from the start and land them, ``batch`` per insert.

    Writes the result file, then waits (at most 60 s) for ``release`` so the caller can read
    this process's CPU time and peak RSS before it exits."""
    import clickhouse_connect
    import pyarrow as pa
    from confluent_kafka import Consumer, TopicPartition
    from fastavro import schemaless_reader

    from schemas.kafka import consumer_config

    Path(store_path).mkdir(parents=True, exist_ok=True)
    client = clickhouse_connect.get_client(dsn=f"chdb://{store_path}")
    client.command("CREATE DATABASE IF NOT EXISTS raw")
    client.command(RAW_TABLE_DDL)
    schemas = _writer_schemas()
    consumer = Consumer(consumer_config(bootstrap, group, **{"queued.max.messages.kbytes": 256 * 1024}))
    consumer.subscribe([topic])
    stages = {"consume": 0.0, "decode": 0.0, "arrow": 0.0, "insert": 0.0, "commit": 0.0}
    batches: list[tuple[float, float, int]] = []
    done = 0
    first_message = 0.0
    started = time.monotonic()
    deadline = started + timeout_s
    try:
        while done < n and time.monotonic() < deadline:
            t0 = time.monotonic()
            msgs: list[Any] = []
            while len(msgs) < batch and time.monotonic() < deadline:
                got = consumer.consume(num_messages=min(10_000, batch - len(msgs)), timeout=0.2)
                if not got:
                    if msgs or done + len(msgs) >= n:
                        break
                    continue
                msgs.extend(m for m in got if m.error() is None)
                first_message = first_message or time.monotonic()
                if done + len(msgs) >= n:
                    break
            if not msgs:
                continue
            t1 = time.monotonic()
            ids, types, times, sources, keys, parts, offs, bodies = [], [], [], [], [], [], [], []
            for m in msgs:
                v = m.value()
                type_name, schema = schemas[v[2:10]]
                rec = schemaless_reader(io.BytesIO(v[10:]), schema, None)
                ids.append(rec["event_id"])
                types.append(type_name)
                times.append(rec["event_time"])
                sources.append(rec["source"])
                keys.append(m.key() or b"")
                parts.append(m.partition())
                offs.append(m.offset())
                bodies.append(v)
            t2 = time.monotonic()
            tbl = pa.table(
                {
                    "event_id": pa.array(ids, pa.string()),
                    "event_type": pa.array(types, pa.string()),
                    "event_time": pa.array(times, pa.timestamp("ms", tz="UTC")),
                    "source": pa.array(sources, pa.string()),
                    "kafka_key": pa.array(keys, pa.binary()),
                    "kafka_partition": pa.array(parts, pa.uint16()),
                    "kafka_offset": pa.array(offs, pa.uint64()),
                    "body": pa.array(bodies, pa.binary()),
                }
            )
            t3 = time.monotonic()
            token = f"raw:{msgs[0].partition()}:{msgs[0].offset()}:{len(msgs)}"
            client.insert_arrow(
                "events",
                tbl,
                database="raw",
                settings={"insert_deduplicate": 1, "async_insert": 0, "insert_deduplication_token": token},
            )
            t4 = time.monotonic()
            last: dict[int, int] = {}
            for part, off in zip(parts, offs, strict=True):
                if off >= last.get(part, -1):
                    last[part] = off
            commit = [TopicPartition(topic, part, off + 1) for part, off in last.items()]
            consumer.commit(offsets=commit, asynchronous=False)
            t5 = time.monotonic()
            for k, a, b in (
                ("consume", t0, t1),
                ("decode", t1, t2),
                ("arrow", t2, t3),
                ("insert", t3, t4),
                ("commit", t4, t5),
            ):
                stages[k] += b - a
            done += len(msgs)
            landed.value = done
            batches.append((t0, t5, len(msgs)))
        rows = int(client.command("SELECT count() FROM raw.events"))
    finally:
        consumer.close()
        client.close()
    Path(result_path).write_text(
        json.dumps(
            {
                "started": started,
                "first_message": first_message,
                "batches": batches,
                "stage_seconds": {k: round(v, 3) for k, v in stages.items()},
                "events": done,
                "rows_in_clickhouse": rows,
            }
        )
    )
    release.wait(60)
