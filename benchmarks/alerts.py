"""Alert latency on the real engines: NonconformanceRaised published -> NC alert (with impact) consumed.

    python -m benchmarks.alerts --serials 100000 --triggers 100 [--sink-batch-seconds 0.5,0.1]

1. The plant (bulk, not through Kafka): ``producers.simulator.simulate(--serials)`` events,
   Avro-encoded (``benchmarks._stack.fast_encoder``, byte-checked against the pydantic
   encoder) and decoded with ``schemas.serde.AvroSerde`` exactly as the sink decodes them,
   turned into rows by the sink's own ``sinks.rows.rows_for_batch`` and written with
   ``Store.write_batch``; the genealogy from ``tests.support.run_genealogy`` over the same events
   (every change record, as the stream processor emits them) through ``genealogy_rows``.
   The bulk rows carry the topic name ``bulk.events``, so the live sink's watermarks (per
   live topic) do not see them. The store (chdb under ``--data-dir``) is reused when a plant
   of the same size and seed is already there.
2. Per value of ``--sink-batch-seconds`` (one phase each): fresh topics on a local KRaft broker
   (``traceline.localstack``, or ``TRACELINE_KAFKA_BOOTSTRAP``), and a real
   :class:`traceline.serve.Server` with the sink and the alert engine in threads (no faust
   worker, no API) on that store. So the sink and the engine start at the end of an empty
   events topic and the engine's only input is the store plus the triggers.
3. ``--warmup`` triggers (group joins, first queries; not counted), then ``--triggers``
   NonconformanceRaised events (LOT, and every third a SUPPLIER_LOT, on random lots of the
   plant, disposition PENDING), published open-loop ``--gap-ms`` apart (uniform). A consumer
   on the alerts topic matches each ``NC_RAISED:<ncr>`` alert. Latency = wall time before
   ``produce()`` of the trigger -> the alert decoded by that consumer.

The split (all wall clock in this process): the sink's ``_land`` and the engine's
``_wait_landed`` / ``evaluator._impacts`` / ``_publish`` are wrapped (timing only) so each
trigger's latency is cut into: publish -> engine has the batch (Kafka + the engine's 50 ms
batch window); engine waits for the sink (the sink's batch window, then its ClickHouse
write); impact query (``queries.recall_impacts``, for all the NCs of the engine's batch at
once); produce + flush of the alert (acks=all);
alert -> our consumer; rest (decode, rules, alerts computed for other events of the batch).
The engine's periodic re-evaluation of open NCs (``nc_refresh_seconds``) runs in the same
loop, so a trigger arriving during a pass waits for it. It is off during the phases unless
``--nc-refresh-seconds`` says otherwise (passes that happen are reported); after the last phase
the cost of one pass is estimated from the impact times of a sample of the store's open NCs,
stratified by target kind (``--refresh-sample``).

Prints one JSON line (stdout; also ``var/bench/last-alerts.json``) and a readable table.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks._stack import cache_dir, loadavg, log

BULK_TOPIC = "bulk.events"


# ----------------------------------------------------------------------------- the plant


def build_plant(dsn: str, serials: int, seed: int, marker: Path) -> dict[str, Any]:
    """Simulated plant -> store through the sink's row builders (unless ``marker`` says it is there)."""
    from benchmarks._stack import _check_encoder, fast_encoder
    from producers.simulator import simulate
    from schemas.serde import AvroSerde
    from sinks.rows import SinkRecord, genealogy_rows, rows_for_batch
    from sinks.store import Store
    from tests.support import run_genealogy

    if marker.exists():
        meta = json.loads(marker.read_text())
        if meta.get("complete") and meta.get("requested") == serials and meta.get("seed") == seed:
            log(
                f"reusing the plant in {marker.parent}"
                f" ({meta['serials']:,} serials, {meta['events']:,} events)"
            )
            return meta
        raise SystemExit(f"{marker.parent} holds another or an incomplete plant; use another --data-dir")
    store = Store.open(dsn, "traceline")
    try:
        if store.count("operations"):
            raise SystemExit("the store is not empty and has no benchmark marker; use another --data-dir")
        t0 = time.perf_counter()
        enc, serde = fast_encoder(), AvroSerde()
        now = datetime.now(UTC)
        sim = simulate(serials, seed=seed)
        batch: list[Any] = []
        gen_events: list[dict[str, Any]] = []
        units: set[str] = set()
        head: list[dict[str, Any]] = []
        n = 0
        t_write = 0.0

        def flush() -> None:
            nonlocal t_write
            t = time.perf_counter()
            store.write_batch(rows_for_batch(batch), token=f"bulk:{seed}:{n}")
            t_write += time.perf_counter() - t
            batch.clear()

        for d in sim:
            if len(head) < 3000:
                head.append(d)
                if len(head) == 3000:
                    _check_encoder(head)
            _eid, _key, value = enc(d)
            type_name, rec = serde.decode(value)  # what the sink sees
            batch.append(SinkRecord(type_name, rec, BULK_TOPIC, 0, n, now))
            n += 1
            unit = rec.get("unit")
            if unit is not None:
                units.add(f"{unit['part_number']}:{unit['serial_number']}")
            if type_name in ("UnitAssembled", "UnitRemoved") or (
                type_name == "OperationCompleted" and (rec.get("creates_unit") or rec.get("consumed_units"))
            ):
                gen_events.append({**rec, "type": type_name})
            if len(batch) >= 20_000:
                flush()
                if n % 100_000 == 0:
                    log(f"  {n:,} events landed ({n / (time.perf_counter() - t0):,.0f}/s)")
        if batch:
            flush()
        log(f"  raw + fact rows: {n:,} events in {time.perf_counter() - t0:.0f}s (inserts {t_write:.0f}s)")
        t1 = time.perf_counter()
        changes: list[dict[str, Any]] = []
        run_genealogy(gen_events, changes=changes)
        for i in range(0, len(changes), 50_000):
            store.write_batch(genealogy_rows(changes[i : i + 50_000]), token=f"bulk-gen:{seed}:{i}")
        log(f"  genealogy: {len(changes):,} change records in {time.perf_counter() - t1:.0f}s")
        rows = {
            t: store.count(t)
            for t in ("operations", "lot_consumption", "lot_lineage", "unit_genealogy", "root_members",
                      "unit_tests", "shipments", "material_received", "nonconformances")
        }  # fmt: skip
        meta = {
            "requested": serials,
            "seed": seed,
            "serials": len(units),
            "events": n,
            "simulation": {
                k: v for k, v in sim.summary().items() if k in ("systems", "lots", "events_by_type")
            },
            "rows": rows,
            "load_s": round(time.perf_counter() - t0, 1),
            "complete": True,
        }
        marker.write_text(json.dumps(meta, indent=2))
        log(f"plant built in {meta['load_s']}s: {len(units):,} serials, rows {rows}")
        return meta
    finally:
        store.close()


def pick_targets(dsn: str, count: int, seed: int) -> list[tuple[str, str]]:
    """(target_kind, target_id): random consumed lots, every third a supplier lot."""
    from sinks.store import Store

    store = Store.open(dsn, "traceline", migrate=False)
    try:
        lots = sorted(r["lot_id"] for r in store.query("SELECT DISTINCT lot_id FROM lot_consumption"))
        slots = sorted(
            f"{r['s']}:{r['l']}"
            for r in store.query(
                "SELECT DISTINCT supplier_id AS s, supplier_lot AS l FROM material_received"
                " WHERE lot_id IN (SELECT lot_id FROM lot_consumption"
                " UNION ALL SELECT input_lot_id FROM lot_lineage)"
            )
        )
    finally:
        store.close()
    rng = random.Random(seed)
    n_sl = count // 3
    sl = rng.sample(slots, min(n_sl, len(slots)))
    lt = rng.sample(lots, min(count - len(sl), len(lots)))
    out: list[tuple[str, str]] = []
    for i in range(count):
        if i % 3 == 2 and sl:
            out.append(("SUPPLIER_LOT", sl.pop()))
        elif lt:
            out.append(("LOT", lt.pop()))
        else:
            out.append(("SUPPLIER_LOT", sl.pop()))
    return out


# ----------------------------------------------------------------------------- instrumentation


class Probe:
    """Timing-only wrappers around the running sink and engine (instance attributes)."""

    def __init__(self, server: Any, events_topic: str) -> None:
        from queries.alerts import _trigger_key  # the key the engine files a trigger's impact under

        self.sink_lands: list[tuple[float, float, set[tuple[int, int]]]] = []
        self.waits: list[tuple[float, float]] = []
        self.evals: dict[str, float] = {}  # ncr_id -> evaluate() entered
        self.impacts: dict[str, tuple[float, float, int]] = {}  # target id -> (t_in, t_out, units)
        self.publishes: list[tuple[float, float, list[str]]] = []
        self.refreshes: list[tuple[float, float, int]] = []
        self.refresh_started: list[float] = []
        sink, eng = server.sink, server.alerts
        ev = eng.evaluator
        land, wait, impacts, evaluate = sink._land, eng._wait_landed, ev._impacts, ev.evaluate
        publish, refresh = eng._publish, ev.refresh_open_ncs

        def _land(msgs: list[Any]) -> Any:
            t = time.time()
            out = land(msgs)
            offs = {(m.partition(), m.offset()) for m in msgs if m.topic() == events_topic}
            if offs:
                self.sink_lands.append((t, time.time(), offs))
            return out

        def _wait(need: Any, timeout: float | None = None) -> bool:
            t = time.time()
            ok = wait(need, timeout)
            if any(k[0] == events_topic for k in need):
                self.waits.append((t, time.time()))
            return ok

        def _evaluate(type_name: str, rec: Any) -> Any:
            if type_name == "NonconformanceRaised":
                self.evals[rec["ncr_id"]] = time.time()
            return evaluate(type_name, rec)

        def _impacts(triggers: Any) -> Any:  # per trigger or for a batch's triggers at once
            t = time.time()
            out = impacts(triggers)
            t_out = time.time()
            for trig in triggers:
                self.impacts[trig.id] = (t, t_out, out[_trigger_key(trig)].unit_count)
            return out

        def _publish(alerts: list[Any]) -> None:
            t = time.time()
            publish(alerts)
            self.publishes.append((t, time.time(), [a.alert_id for a in alerts]))

        def _refresh() -> Any:
            t = time.time()
            n = len(ev.state.open_ncs())
            self.refresh_started.append(t)
            out = refresh()
            self.refreshes.append((t, time.time(), n))
            return out

        sink._land, eng._wait_landed, ev.evaluate, ev._impacts = _land, _wait, _evaluate, _impacts
        eng._publish, ev.refresh_open_ncs = _publish, _refresh


class AlertReader(threading.Thread):
    """Reads the alerts topic from the beginning; notes when each NC_RAISED alert arrived."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(name="alert-reader", daemon=True)
        from confluent_kafka import Consumer

        self.topic = topic
        self.got: dict[str, tuple[float, Any]] = {}
        self.other = 0
        self._halt = threading.Event()
        self._c = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"bench-reader-{uuid.uuid4().hex}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 100,
            }
        )

    def run(self) -> None:
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        from schemas.alert import decode_alert

        md = self._c.list_topics(self.topic, timeout=10)
        self._c.assign(
            [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in md.topics[self.topic].partitions]
        )
        while not self._halt.is_set():
            for m in self._c.consume(num_messages=500, timeout=0.05):
                if m.error() is not None:
                    continue
                t = time.time()
                a = decode_alert(m.value() or b"")
                if a.rule == "NC_RAISED" and a.alert_id not in self.got:
                    self.got[a.alert_id] = (t, a)
                else:
                    self.other += 1
        self._c.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(15)


def topics_ready(bootstrap: str, s: Any, timeout: float = 60.0) -> None:
    """Create the phase's topics and wait until every partition has a leader that answers.

    (``AlertEngine.start`` reads the alerts topic's watermarks once, without retry: on a topic
    created a moment before, the broker can still answer NOT_LEADER_FOR_PARTITION.)
    """
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    from schemas.kafka import ensure_topics

    ensure_topics(bootstrap, s.topics, partitions=s.kafka.partitions, replication=s.kafka.replication)
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-probe-{uuid.uuid4().hex}"})
    names = [s.topics.events, s.topics.alerts]
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                md = c.list_topics(timeout=10)
                for name in names:
                    for p in md.topics[name].partitions:
                        c.get_watermark_offsets(TopicPartition(name, p), timeout=5)
                return
            except (KafkaException, KeyError) as exc:
                if time.monotonic() > deadline:
                    raise SystemExit(f"topics {names} not ready after {timeout:.0f} s: {exc}") from exc
                time.sleep(0.5)
    finally:
        c.close()


def refresh_estimate(dsn: str, sample: int, seed: int) -> dict[str, Any]:
    """Cost of one ``AlertEvaluator.refresh_open_ncs`` pass (the engine runs it in its poll loop
    every ``nc_refresh_seconds``): the open NCs of the store (as ``load_state`` rebuilds them),
    the impact of a sample of them timed (stratified by target kind: their costs differ by
    orders of magnitude), times their count per kind."""
    from queries.alerts import AlertEvaluator
    from queries.results import Trigger
    from sinks.store import Store
    from streams.alerts import AlertRules, trigger_kind

    store = Store.open(dsn, "traceline", migrate=False)
    try:
        ev = AlertEvaluator(store, AlertRules(nc_refresh_seconds=0))
        ev.reload()
        open_ncs = sorted(ev.state.open_ncs(), key=lambda n: n.ncr_id)
        by_kind: dict[str, list[Any]] = {}
        for n in open_ncs:
            by_kind.setdefault(n.target_kind, []).append(n)
        rng = random.Random(seed)
        times: dict[str, list[float]] = {}
        for kind, ncs in sorted(by_kind.items()):  # stratified: every kind, at least 2 each
            k = min(len(ncs), max(2, round(sample * len(ncs) / max(1, len(open_ncs)))))
            for nc in rng.sample(ncs, k):
                trig = Trigger(trigger_kind(nc.target_kind), nc.target_id, nc.window_start, nc.window_end)
                t = time.perf_counter()
                ev.impact(trig)
                times.setdefault(kind, []).append(time.perf_counter() - t)
    finally:
        store.close()
    flat = [x for v in times.values() for x in v]
    est = sum(statistics.fmean(times[k]) * len(v) for k, v in by_kind.items() if times.get(k))
    out = {
        "open_ncs": len(open_ncs),
        "ours": sum(1 for n in open_ncs if n.ncr_id.startswith("NCR-ab")),  # earlier runs' triggers
        "sampled": len(flat),
        "per_kind": {
            k: {
                "open": len(by_kind[k]),
                "sampled": len(v),
                "ms_mean": round(statistics.fmean(v) * 1e3, 1),
                "ms_max": round(max(v) * 1e3, 1),
            }
            for k, v in sorted(times.items())
        },
        "per_nc_ms_mean": round(est / max(1, len(open_ncs)) * 1e3, 1),
        "per_nc_ms_p50": round(_pct(flat, 50) * 1e3, 1) if flat else 0.0,
        "per_nc_ms_max": round(max(flat, default=0.0) * 1e3, 1),
        "pass_s_est": round(est, 1),
    }
    log(
        f"  open-NC refresh pass: ~{out['pass_s_est']} s"
        f" ({out['open_ncs']} open NCs x {out['per_nc_ms_mean']} ms)"
    )
    return out


# ----------------------------------------------------------------------------- one phase


def _pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))]  # nearest rank


def _stats(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {"n": 0}
    return {
        "n": len(xs),
        "p50_ms": round(_pct(xs, 50) * 1e3, 1),
        "p95_ms": round(_pct(xs, 95) * 1e3, 1),
        "p99_ms": round(_pct(xs, 99) * 1e3, 1),
        "max_ms": round(max(xs) * 1e3, 1),
        "mean_ms": round(statistics.fmean(xs) * 1e3, 1),
    }


def _nc(ncr: str, kind: str, target: str) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "event_time": datetime.now(UTC),
        "source": "bench-alerts",
        "site": "plant-a",
        "program": "PRG-AESA",
        "ncr_id": ncr,
        "target_kind": kind,
        "target_id": target,
        "window_start": None,
        "window_end": None,
        "severity": "MAJOR",
        "disposition": "PENDING",
        "description": "benchmark trigger",
    }


def run_phase(
    args: argparse.Namespace, bootstrap: str, dsn: str, data_dir: Path, sink_s: float, idx: int, last: bool
) -> dict[str, Any]:
    from confluent_kafka import Producer

    from schemas.serde import AvroSerde
    from traceline.serve import ServeOptions, Server
    from traceline.settings import Settings

    prefix = f"ab{uuid.uuid4().hex[:6]}."
    s = Settings(data_dir=data_dir / "serve")
    s.kafka.topic_prefix = prefix
    s.kafka.events_topic = f"{prefix}events"
    s.kafka.partitions = args.partitions
    s.kafka.replication = 1
    s.clickhouse.dsn = dsn
    s.schema_registry.url = None
    targets = pick_targets(dsn, args.warmup + args.triggers, args.seed * 100 + idx)
    load_before = loadavg()
    topics_ready(bootstrap, s)
    s.alert_rules.nc_refresh_seconds = args.nc_refresh_seconds
    server = Server(
        s,
        ServeOptions(
            bootstrap, with_worker=False, with_api=False, with_alerts=True, sink_batch_seconds=sink_s
        ),
    )
    log(f"phase {idx + 1}: sink batch_seconds={sink_s}, topics {prefix}*, {args.partitions} partitions")
    server.start()
    probe = Probe(server, s.topics.events)
    reader = AlertReader(bootstrap, s.topics.alerts)
    reader.start()
    serde = AvroSerde(topic=s.topics.events)
    delivered: dict[str, tuple[int, int]] = {}

    producer = Producer(
        {"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 0}
    )
    rng = random.Random(args.seed + idx)
    lo, hi = (float(x) / 1e3 for x in args.gap_ms.split("-"))
    sent: dict[str, tuple[float, str, str]] = {}  # alert_id -> (t_pub, kind, target)
    ncr_of: dict[str, str] = {}

    def publish(i: int, kind: str, target: str, tag: str) -> str:
        ncr = f"NCR-{prefix}{tag}{i:04d}"
        rec = _nc(ncr, kind, target)
        value = serde.encode("NonconformanceRaised", rec)
        key = f"{kind}:{target}"  # the product's key for a NonconformanceRaised

        def on_delivery(err: Any, msg: Any, ncr: str = ncr) -> None:
            if err is None:
                delivered[ncr] = (msg.partition(), msg.offset())

        t = time.time()
        producer.produce(s.topics.events, key=key.encode(), value=value, on_delivery=on_delivery)
        producer.poll(0)
        sent[f"NC_RAISED:{ncr}"] = (t, kind, target)
        ncr_of[f"NC_RAISED:{ncr}"] = ncr
        return f"NC_RAISED:{ncr}"

    def wait_for(ids: list[str], timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            producer.poll(0)
            if all(a in reader.got for a in ids):
                return True
            if server.alerts_error or server.sink_error:
                raise SystemExit(f"server failed: {server.alerts_error or server.sink_error}")
            time.sleep(0.02)
        return False

    try:
        t_ready = time.monotonic()
        for i, (kind, target) in enumerate(targets[: args.warmup]):
            aid = publish(i, kind, target, "w")
            if not wait_for([aid], 90):
                raise SystemExit(f"warm-up alert {aid} not seen after 90 s")
        log(f"  warm-up: {args.warmup} alerts, ready after {time.monotonic() - t_ready:.1f}s")
        timed: list[str] = []
        t_run = time.time()
        for i, (kind, target) in enumerate(targets[args.warmup :]):
            timed.append(publish(i, kind, target, "t"))
            if (i + 1) % 25 == 0:
                log(
                    f"  {i + 1}/{args.triggers} triggers published,"
                    f" {sum(a in reader.got for a in timed)} alerts seen"
                )
            time.sleep(rng.uniform(lo, hi))
        producer.flush(10)
        if not wait_for(timed, 120):
            log(f"  WARNING: {sum(a not in reader.got for a in timed)} alerts missing after 120 s")
        t_end = time.time()
    finally:
        reader.stop()
        producer.flush(5)
        eng_stats = server.alerts.stats.as_dict() if server.alerts else {}
        sink_stats = server.sink.stats.as_dict() if server.sink else {}
        server.stop()
    load_after = loadavg()
    refresh_est = (
        refresh_estimate(dsn, args.refresh_sample, args.seed + idx) if last and args.refresh_sample else None
    )

    # ---- per-trigger breakdown
    lat: list[float] = []
    parts: dict[str, list[float]] = {k: [] for k in
                                     ("to_engine", "sink_wait", "sink_window", "sink_write", "impact",
                                      "publish", "to_reader", "rest")}  # fmt: skip
    sizes: list[int] = []
    by_kind: dict[str, list[float]] = {}
    slow: list[dict[str, Any]] = []
    for aid in timed:
        if aid not in reader.got:
            continue
        t_pub, kind, target = sent[aid]
        t_got, alert = reader.got[aid]
        total = t_got - t_pub
        lat.append(total)
        by_kind.setdefault(kind, []).append(total)
        sizes.append(alert.unit_count)
        t_eval = probe.evals.get(ncr_of[aid])
        imp = probe.impacts.get(target)
        pub = next((p for p in probe.publishes if aid in p[2]), None)
        wait = max((w for w in probe.waits if w[1] <= (t_eval or 0) + 1e-3), default=None, key=lambda w: w[1])
        pos = delivered.get(ncr_of[aid])
        land = next((x for x in probe.sink_lands if pos in x[2]), None) if pos else None
        if None in (t_eval, imp, pub, wait):
            continue
        assert t_eval is not None and imp is not None and pub is not None and wait is not None
        row = {
            "to_engine": wait[0] - t_pub,
            "sink_wait": wait[1] - wait[0],
            "impact": imp[1] - imp[0],
            "publish": pub[1] - pub[0],
            "to_reader": t_got - pub[1],
        }
        if land is not None:
            row["sink_window"] = max(0.0, land[0] - max(t_pub, wait[0]))
            row["sink_write"] = land[1] - land[0]
        row["rest"] = (
            total - row["to_engine"] - row["sink_wait"] - row["impact"] - row["publish"] - row["to_reader"]
        )
        for k, v in row.items():
            parts[k].append(v)
        if total > 1.0:
            slow.append({"target": f"{kind}:{target}", "ms": round(total * 1e3), "units": alert.unit_count,
                         **{k: round(v * 1e3) for k, v in row.items()}})  # fmt: skip
    refreshes: list[dict[str, float | None]] = [
        {"at_s": round(r[0] - t_run, 1), "seconds": round(r[1] - r[0], 2), "open_ncs": r[2]}
        for r in probe.refreshes
    ]
    refreshes += [
        {"at_s": round(t - t_run, 1), "seconds": None, "open_ncs": None}
        for t in probe.refresh_started
        if t not in {r[0] for r in probe.refreshes}
    ]  # a pass still running at the stop
    return {
        "sink_batch_seconds": sink_s,
        "triggers": args.triggers,
        "trigger_run_s": round(t_end - t_run, 1),
        "alerts_seen": len(lat),
        "gap_ms": args.gap_ms,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "latency": _stats(lat),
        "latency_by_kind": {k: _stats(v) for k, v in by_kind.items()},
        "parts_ms_p50_p99": {
            k: (round(_pct(v, 50) * 1e3, 1), round(_pct(v, 99) * 1e3, 1)) for k, v in parts.items() if v
        },
        "impact_units": {
            "p50": int(_pct([float(x) for x in sizes], 50)) if sizes else 0,
            "max": max(sizes, default=0),
            "min": min(sizes, default=0),
            "zero": sum(1 for x in sizes if x == 0),
            "histogram": dict(
                sorted(Counter(_bucket(x) for x in sizes).items(), key=lambda kv: _bucket_key(kv[0]))
            ),
        },
        "over_1s": slow[:20],
        "nc_refresh_passes": refreshes,
        "nc_refresh_seconds": args.nc_refresh_seconds,
        "nc_refresh_pass_estimate": refresh_est,
        "engine": {
            k: eng_stats.get(k)
            for k in ("batches", "events", "alerts_published", "waits_for_sink_s", "last_error")
        },
        "sink": {
            k: sink_stats.get(k) for k in ("batches", "events_landed", "alerts_landed", "store_retries")
        },
        "other_alerts_on_topic": reader.other,
    }


_BUCKETS = (0, 1, 10, 100, 1000, 10_000)


def _bucket(x: int) -> str:
    for lo, hi in zip(_BUCKETS, (*_BUCKETS[1:], None), strict=True):
        if hi is None or x < hi:
            return f"{lo}+" if hi is None else (f"{lo}" if hi - lo == 1 else f"{lo}-{hi - 1}")
    return "?"


def _bucket_key(label: str) -> int:
    return int(label.rstrip("+").split("-")[0])


# ----------------------------------------------------------------------------- main


def run(args: argparse.Namespace) -> dict[str, Any]:
    from traceline import localstack

    data_dir = Path(args.data_dir or Path(tempfile.gettempdir()) / f"traceline-alerts-bench-{args.serials}")
    data_dir.mkdir(parents=True, exist_ok=True)
    dsn = f"chdb://{(data_dir / 'ch').resolve()}"
    log(f"store {dsn}")
    t0 = time.monotonic()
    meta = build_plant(dsn, args.serials, args.seed, data_dir / "plant.json")
    t_plant = time.monotonic() - t0
    bootstrap = os.environ.get("TRACELINE_KAFKA_BOOTSTRAP", "").strip()
    own_broker = None
    if not bootstrap:
        own_broker = data_dir / "kafka"
        log(f"starting a local broker in {own_broker}")
        bootstrap = localstack.up(own_broker)
    phases = []
    try:
        windows = [float(v) for v in args.sink_batch_seconds.split(",")]
        for i, x in enumerate(windows):
            phases.append(run_phase(args, bootstrap, dsn, data_dir, x, i, i == len(windows) - 1))
            lat = phases[-1]["latency"]
            log(f"  -> p50 {lat.get('p50_ms')} ms, p99 {lat.get('p99_ms')} ms, max {lat.get('max_ms')} ms")
    finally:
        if own_broker is not None and not args.keep_broker:
            localstack.down(own_broker, purge=True)
    return {
        "benchmark": "alerts",
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python -m benchmarks.alerts " + " ".join(args.argv),
        "cpus": os.cpu_count(),
        "store": "chdb",
        "broker": "external" if own_broker is None else "localstack",
        "partitions": args.partitions,
        "plant": {
            "serials": meta["serials"],
            "events": meta["events"],
            "rows": meta["rows"],
            "seed": meta["seed"],
        },
        "plant_s": round(t_plant, 1),
        "phases": phases,
        "total_s": round(time.monotonic() - t0, 1),
    }


def _table(r: dict[str, Any]) -> str:
    p = r["plant"]
    lines = [
        f"alerts benchmark ({r['date']}, {r['cpus']} cores):"
        " NonconformanceRaised published -> NC alert consumed",
        f"plant: {p['serials']:,} serials, {p['events']:,} events (chdb);"
        f" broker {r['broker']}, {r['partitions']} partitions",
    ]
    for ph in r["phases"]:
        lat = ph["latency"]
        lines += [
            "",
            f"sink batch_seconds {ph['sink_batch_seconds']}: {ph['alerts_seen']}/{ph['triggers']} alerts,"
            f" load {ph['loadavg_before']} -> {ph['loadavg_after']}",
            f"  latency   p50 {lat.get('p50_ms')} ms  p95 {lat.get('p95_ms')} ms  p99 {lat.get('p99_ms')} ms"
            f"  max {lat.get('max_ms')} ms  mean {lat.get('mean_ms')} ms",
        ]
        for k, v in ph["latency_by_kind"].items():
            lines.append(f"  {k:<12} n={v['n']:<3} p50 {v.get('p50_ms')} ms  p99 {v.get('p99_ms')} ms")
        lines.append("  where it goes (p50 / p99 ms):")
        for k, (a, b) in ph["parts_ms_p50_p99"].items():
            lines.append(f"    {k:<12} {a:>8.1f} {b:>8.1f}")
        iu = ph["impact_units"]
        lines.append(f"  impact units: p50 {iu['p50']}, max {iu['max']}, histogram {iu['histogram']}")
        for x in ph["nc_refresh_passes"]:
            lines.append(
                f"  open-NC refresh pass at +{x['at_s']}s: {x['seconds']} s over {x['open_ncs']} NCs"
            )
        x = ph["nc_refresh_pass_estimate"]
        if x:
            lines.append(
                f"  one open-NC refresh pass (estimated): {x['pass_s_est']} s over {x['open_ncs']} open NCs"
                f" ({x['sampled']} sampled by kind; p50 {x['per_nc_ms_p50']} ms, max {x['per_nc_ms_max']} ms)"
            )
            for k, v in x["per_kind"].items():
                lines.append(
                    f"    {k:<13} {v['open']:>5} open  mean {v['ms_mean']:>8.1f} ms"
                    f"  max {v['ms_max']:>8.1f} ms"
                )
    lines.append(f"\ntotal {r['total_s']} s (plant {r['plant_s']} s)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import sys

    p = argparse.ArgumentParser(
        prog="python -m benchmarks.alerts",
        description="Build a simulated plant of N serials in chdb (the sink's row builders, no Kafka), "
        "start the real sink + alert engine on a local broker, publish NonconformanceRaised "
        "triggers and time each until its NC alert (with impact) is consumed from the alerts topic.",
    )
    p.add_argument(
        "--serials", type=int, default=100_000, help="serialised units simulated (default 100,000)"
    )
    p.add_argument("--triggers", type=int, default=100, help="timed triggers per phase (default 100)")
    p.add_argument("--warmup", type=int, default=3, help="untimed triggers first (default 3)")
    p.add_argument("--gap-ms", default="200-500", help="pause between triggers, uniform (default 200-500)")
    p.add_argument(
        "--sink-batch-seconds",
        default="0.5,0.1",
        help="sink batch window(s), comma-separated: one phase each"
        " (default 0.5 = serve's default, then 0.1)",
    )
    p.add_argument("--partitions", type=int, default=6, help="events topic partitions (default 6)")
    p.add_argument(
        "--data-dir",
        default="",
        help="store + broker dir (default <tmp>/traceline-alerts-bench-<N>); a plant there is reused",
    )
    p.add_argument("--seed", type=int, default=7)
    p.add_argument(
        "--nc-refresh-seconds",
        type=float,
        default=0.0,
        help="the engine's open-NC re-evaluation interval (TRACELINE_ALERTS_NC_REFRESH_SECONDS) during"
        " the phases; default 0 = off, so the figures are the trigger path alone (product default 60:"
        " a pass blocks the engine, see --refresh-sample)",
    )
    p.add_argument(
        "--refresh-sample",
        type=int,
        default=40,
        help="after the last phase, time the impact of about this many open NCs (by kind) and estimate one"
        " open-NC refresh pass (default 40; 0 = skip)",
    )
    p.add_argument("--keep-broker", action="store_true", help="leave the local broker running")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    result = run(args)
    line = json.dumps(result, sort_keys=True, default=str)
    print(line, flush=True)
    (cache_dir() / "last-alerts.json").write_text(line + "\n")
    print(_table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
