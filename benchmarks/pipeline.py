# ruff: noqa: E501 - the result tables are long f-strings
"""End-to-end pipeline figures on the real engines: publisher -> Kafka -> faust -> sink -> ClickHouse.

    python -m benchmarks.pipeline ingest  [--duration 120] [--warmup 20]
    python -m benchmarks.pipeline ingest --paired [--events 1000000] [--raw-batch 50000]
    python -m benchmarks.pipeline latency [--rate N | half of the last ingest figure] [--duration 60]
    python -m benchmarks.pipeline backlog [--events 1000000]

Each command starts what it needs: a local KRaft broker (``traceline.localstack``) unless
``TRACELINE_KAFKA_BOOTSTRAP`` is set, the embedded ClickHouse (chdb) under a temp dir unless
``TRACELINE_CLICKHOUSE_DSN`` is set, and a real :class:`traceline.serve.Server` (faust worker
child process + sink thread + alert engine, no HTTP API) on fresh topics. It prints one JSON
line (stdout) and a readable table; the JSON is also kept in ``var/bench/last-<cmd>.json``.

The load generator is a separate process running a real :class:`producers.publisher.Publisher`
(durable SQLite outbox + idempotent producer) fed with PRE-ENCODED rows
(``Publisher.publish_encoded``): simulated plant events are Avro-encoded once into a cache file
(``benchmarks._stack.row_cache``), so neither pydantic nor encoding limits the offered load.

* ingest: closed loop - the generator keeps at most ``--max-ahead`` events published but not
  yet landed, so Kafka holds a bounded backlog and the pipeline runs flat out. events/s is the
  median of 1-second samples of raw rows acknowledged by ClickHouse (the sink's counter,
  checked against ``count()`` at the end) over the steady window after ``--warmup``. CPU is
  per process in cores (1.0 = one core busy) over that window; peak RSS is ``VmHWM``.
  The genealogy is not in the events/s figure (it lands in unit_genealogy separately): the
  streams lag at the start and the end of the window says whether it kept up.
* ingest --paired: ``--events`` are published into Kafka first (nothing consuming), then the
  raw-limit pipeline (``benchmarks._raw``: one consumer -> fastavro -> one Arrow insert per
  ``--raw-batch``, no genealogy, its own process and chdb store) drains them with its own
  group, then the product (sink + faust genealogy + alert engine) drains the SAME records.
  events/s on each side = events landed from its first committed batch to the last / that
  time (start-up left out of both); ``ratio_to_raw`` = product / raw. Also printed: the rate
  until the genealogy caught up too (``events_per_s_with_genealogy``), start -> all landed
  on both sides (``backlog_time_over_raw``), CPU (cores, over each side's drain window) and
  peak RSS per process. Progress on stderr; stdout is the one JSON line.
* latency: a paced load; for 1 event in 16 (event id ending in ``0``) the publish wall time
  (before ``publish_encoded``, i.e. including the outbox commit) is matched with the wall time
  the sink's ClickHouse insert of the raw row returned (the row is queryable from then on).
* backlog: ``--events`` are published into Kafka first (nothing consuming), then the server
  starts; times until ClickHouse holds every event and until the genealogy caught up
  (``tests.support.wait_caught_up``, minus its quiet period).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import _stack
from benchmarks._stack import ProcWatch, Stack, log

CPU_COUNT = os.cpu_count() or 1


def _mem_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 1024 / 1024, 1)
    return 0.0


def _machine_busy() -> tuple[float, float]:
    parts = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    vals = [int(x) for x in parts]
    idle = vals[3] + vals[4]
    return float(sum(vals)), float(idle)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[k]


def _base(cmd: str, stack: Stack) -> dict[str, Any]:
    return {
        "benchmark": f"pipeline.{cmd}",
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {"cores": CPU_COUNT, "mem_gib": _mem_gib(), "loadavg_before": _stack.loadavg()},
        "partitions": stack.settings.kafka.partitions,
        "store": stack.settings.clickhouse_dsn.split("://")[0],
        "broker": "external" if os.environ.get("TRACELINE_KAFKA_BOOTSTRAP") else "localstack",
    }


def _emit(cmd: str, result: dict[str, Any], rows: list[tuple[str, str]], table: Any = None) -> None:
    """The JSON line on stdout (kept in var/bench/last-<cmd>.json), then a readable table
    (stdout, or ``table``: ``ingest --paired`` keeps stdout to the one JSON line)."""
    line = json.dumps(result, sort_keys=True, default=str)
    print(line, flush=True)
    out = _stack.cache_dir() / f"last-{cmd}.json"
    out.write_text(line + "\n")
    w = max(len(k) for k, _ in rows)
    print(
        f"\n{result['benchmark']}  ({result['date']}, {CPU_COUNT} cores, load {result['machine']['loadavg_before']})",
        file=table,
    )
    for k, v in rows:
        print(f"  {k:<{w}}  {v}", file=table)


def _cpu_rows(procs: dict[str, Any], top: int = 6) -> list[tuple[str, str]]:
    """Per process: cores and peak RSS, then its busiest threads by name."""
    rows = []
    for k, v in procs["cpu_cores"].items():
        rows.append((f"cpu {k}", f"{v:.2f} cores, peak RSS {procs['peak_rss_mib'].get(k, 0):,} MiB"))
        threads = list(procs.get("thread_cores", {}).get(k, {}).items())[:top]
        if threads:
            rows.append((f"  threads of {k}", ", ".join(f"{n} {c:.2f}" for n, c in threads)))
    return rows


def _procs(stack: Stack, pub: Any = None) -> dict[str, int | None]:
    return {
        "serve(sink+alerts)": os.getpid(),
        "faust worker": stack.worker_pid,
        "broker": stack.broker_pid,
        "publisher": pub.pid if pub is not None else None,
    }


def _start_publisher(stack: Stack, cache: Path, n: int, rate: float, max_ahead: int, sample: str = "") -> Any:
    ctx = mp.get_context("spawn")
    landed, published, stop = ctx.Value("q", 0, lock=False), ctx.Value("q", 0, lock=False), ctx.Event()
    outbox = str(stack.tmp / f"outbox-{time.time_ns()}.sqlite")
    p = ctx.Process(
        target=_stack.publisher_main,
        args=(
            stack.bootstrap,
            outbox,
            stack.settings.topics.events,
            str(cache),
            n,
            rate,
            max_ahead,
            landed,
            published,
            stop,
            sample,
        ),
        name="publisher",
    )
    p.start()
    p.landed, p.published, p.stop_event = landed, published, stop  # type: ignore[attr-defined]
    return p


def _stop_publisher(p: Any) -> None:
    p.stop_event.set()
    p.join(60)
    if p.is_alive():
        p.terminate()
        p.join(10)


def _publish_backlog(stack: Stack, cache: Path, n: int) -> float:
    """Publish ``n`` cached events into the events topic with nothing consuming (a backlog);
    the seconds it took. Exits when the publisher stopped short."""
    log(f"publishing {n:,} events into {stack.settings.topics.events} (nothing consuming yet)")
    t = time.monotonic()
    pub = _start_publisher(stack, cache, n, 0.0, 0)
    pub.join()
    if pub.published.value < n:
        raise SystemExit(f"the publisher stopped after {pub.published.value} events")
    return time.monotonic() - t


def _refused(stats: Any) -> int:
    """Events the sink dead-lettered instead of landing (bad, conflicting, implausible time)."""
    return int(stats.quarantined + stats.conflicts + stats.undecodable_skipped)


def _profile(pids: Mapping[str, int | None], seconds: float, out_dir: str) -> list[subprocess.Popen[bytes]]:
    """py-spy record (collapsed stacks) of the given processes for ``seconds``."""
    spy = Path(sys.executable).with_name("py-spy")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    procs = []
    for name, pid in pids.items():
        if pid is None or name in ("broker",):
            continue
        slug = name.split("(")[0].replace(" ", "-")
        procs.append(
            subprocess.Popen(
                [
                    str(spy),
                    "record",
                    "--pid",
                    str(pid),
                    "--duration",
                    str(int(seconds)),
                    "--rate",
                    "50",
                    "--format",
                    "raw",
                    "--nonblocking",
                    "--output",
                    f"{out_dir}/{slug}.txt",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    return procs


def _curve(batches: list[tuple[float, int, int]], t0: float, t1: float) -> list[tuple[float, float, float]]:
    """Landed counts at 1-second steps from t0 to t1, linear between batch completions.

    The sink's counters move in steps of a whole batch (up to --sink-batch-size rows), so raw
    1-second samples alternate between 0 and a batch; a batch's rows are spread over the time
    since the previous batch completed instead (the interval in which they were fetched,
    decoded and inserted).
    """
    pts = sorted(batches)
    if len(pts) < 2:
        return []
    out = []
    t = t0
    j = 0
    while t <= t1 + 1e-9:
        while j < len(pts) - 2 and pts[j + 1][0] < t:
            j += 1
        (ta, ea, ga), (tb, eb, gb) = pts[j], pts[j + 1]
        f = 0.0 if tb <= ta else min(1.0, max(0.0, (t - ta) / (tb - ta)))
        if t >= tb:
            f = 1.0
        out.append((t, ea + f * (eb - ea), ga + f * (gb - ga)))
        t += 1.0
    return out


def _worker_counters(stack: Stack) -> dict[str, Any]:
    """The faust worker's last logged counters (streams.log, every 10 s)."""
    import ast

    try:
        lines = (stack.settings.data_dir / "streams.log").read_text(errors="replace").splitlines()
    except OSError:
        return {}
    for line in reversed(lines):
        if "traceline counters:" in line:
            try:
                return dict(ast.literal_eval(line.split("traceline counters:", 1)[1].strip()))
            except (ValueError, SyntaxError):
                return {}
    return {}


def _raw_count(stack: Stack) -> int:
    from sinks.rows import RAW_TABLES

    store = stack.server.store
    return sum(int(store.query_rows(f"SELECT count() FROM {t}")[1][0][0]) for t in RAW_TABLES)  # noqa: S608


def _stack_for(a: argparse.Namespace) -> Stack:
    """The stack every command runs on, from the common options."""
    return Stack(
        partitions=a.partitions,
        data_dir=a.data_dir,
        alerts=not a.no_alerts,
        sink_batch_size=a.sink_batch_size,
        sink_batch_seconds=a.sink_batch_seconds,
    )


# ----------------------------------------------------------------------------- ingest


def start_closed_loop(stack: Stack, a: argparse.Namespace, cmd: str) -> tuple[dict[str, Any], Any, Any]:
    """The broker, topics, server and a load generator offering ``a.events`` as fast as the
    pipeline lands them (at most ``a.max_ahead`` ahead; the caller feeds ``pub.landed``):
    (the result's base fields, the server, the publisher process)."""
    stack.up_broker()
    cache = _stack.row_cache(a.events, a.seed)
    stack.ensure_topics()
    res = _base(cmd, stack)
    server = stack.start_server()
    return res, server, _start_publisher(stack, cache, a.events, 0.0, a.max_ahead)


def cmd_ingest(a: argparse.Namespace) -> int:
    if a.paired:
        return cmd_paired(a)
    stack = _stack_for(a)
    try:
        res, server, pub = start_closed_loop(stack, a, "ingest")
        sink = server.sink
        batches: list[tuple[float, int, int]] = []  # (time, events landed, changes landed) per batch
        sink.on_batch = lambda st: batches.append((time.monotonic(), st.events_landed, st.changes_landed))
        samples: list[tuple[float, int, int]] = []
        watch = ProcWatch(_procs(stack, pub))
        t_start = time.monotonic()
        window_at = t_start + a.warmup
        end_at = window_at + a.duration
        lag0: dict[str, int] = {}
        m0: tuple[float, float] = (0.0, 0.0)
        spies: list[Any] = []
        in_window = False
        next_t = t_start + 1.0
        while True:
            time.sleep(max(0.0, next_t - time.monotonic()))
            now = time.monotonic()
            next_t += 1.0
            landed = sink.stats.events_landed
            refused = _refused(sink.stats)
            # the closed loop counts what the sink refused too (a quarantined event never lands)
            pub.landed.value = landed + refused
            watch.pids = {k: v for k, v in _procs(stack, pub).items() if v}
            watch.sample_rss()
            if not in_window and now >= window_at:
                in_window = True
                watch.start()
                m0 = _machine_busy()
                lag0 = stack.lag()
                if a.profile:
                    spies = _profile(watch.pids, min(a.duration, a.profile_seconds), a.profile)
            if in_window:
                samples.append((now, landed, sink.stats.changes_landed))
            elif batches:
                del batches[:-1]
            if int(now - t_start) % 10 == 0:
                log(f"t={now - t_start:4.0f}s landed {landed:,} published {pub.published.value:,}")
            if now >= end_at:
                break
            if not pub.is_alive() and landed + refused >= pub.published.value:
                log("the load generator ran out of events: raise --events")
                break
        procs = watch.stop()
        m1 = _machine_busy()
        lag1 = stack.lag()
        _stop_publisher(pub)
        for sp in spies:
            sp.wait(30)
        curve = _curve(batches, samples[0][0], samples[-1][0]) if samples else []
        rates = [float(b[1] - a_[1]) for a_, b in zip(curve, curve[1:], strict=False)]
        grates = [float(b[2] - a_[2]) for a_, b in zip(curve, curve[1:], strict=False)]
        wall = samples[-1][0] - samples[0][0] if len(samples) > 1 else 0.0
        machine_cores = (m1[0] - m0[0] - (m1[1] - m0[1])) / max(1.0, m1[0] - m0[0]) * CPU_COUNT
        in_ch = _raw_count(stack)
        n_batches = sum(1 for b in batches if samples and samples[0][0] < b[0] <= samples[-1][0])
        landed_in_window = samples[-1][1] - samples[0][1] if samples else 0
        res.update(
            sink_batches=n_batches,
            sink_mean_batch=round(landed_in_window / n_batches) if n_batches else 0,
            events_per_s_median=round(statistics.median(rates)) if rates else 0,
            events_per_s_p10=round(_pct(rates, 10)) if rates else 0,
            events_per_s_p90=round(_pct(rates, 90)) if rates else 0,
            events_per_s_mean=round((samples[-1][1] - samples[0][1]) / wall) if wall else 0,
            genealogy_changes_per_s_median=round(statistics.median(grates)) if grates else 0,
            genealogy_changes_per_s_mean=round((samples[-1][2] - samples[0][2]) / wall) if wall else 0,
            steady_window_s=round(wall, 1),
            warmup_s=a.warmup,
            events_landed=samples[-1][1] if samples else 0,
            refused_by_sink=_refused(sink.stats),
            rows_in_clickhouse=in_ch,
            streams_lag_start=lag0.get("streams"),
            streams_lag_end=lag1.get("streams"),
            sink_lag_end=lag1.get("sink"),
            worker_restarts=server.worker.restarts if server.worker else 0,
            machine_busy_cores=round(machine_cores, 2),
            worker_counters=_worker_counters(stack),
            loadavg_after=_stack.loadavg(),
            **procs,
        )
        rows = [
            (
                "events/s (median of 1 s samples)",
                f"{res['events_per_s_median']:,}  (p10 {res['events_per_s_p10']:,}, p90 {res['events_per_s_p90']:,}, mean {res['events_per_s_mean']:,})",
            ),
            ("steady window", f"{res['steady_window_s']} s after {a.warmup} s warm-up"),
            (
                "genealogy changes/s (median, mean)",
                f"{res['genealogy_changes_per_s_median']:,}, {res['genealogy_changes_per_s_mean']:,}",
            ),
            (
                "streams lag start -> end",
                f"{res['streams_lag_start']:,} -> {res['streams_lag_end']:,} records",
            ),
            ("rows in ClickHouse after / landed in window", f"{in_ch:,} / {res['events_landed']:,}"),
            ("refused by the sink (dead-lettered, all run)", f"{res['refused_by_sink']:,}"),
            ("sink batches in window (mean events per batch)", f"{n_batches:,} ({res['sink_mean_batch']:,})"),
            ("machine busy (all processes)", f"{res['machine_busy_cores']} of {CPU_COUNT} cores"),
        ]
        rows += _cpu_rows(procs)
        _emit("ingest", res, rows)
        return 0
    finally:
        stack.close(keep=a.keep)


# ----------------------------------------------------------------------------- ingest --paired


def _drain_rate(points: list[tuple[float, int]], n: int) -> tuple[float, float]:
    """(events/s, seconds) from the first landed batch to the one that completed ``n``.

    ``points`` are (monotonic time a batch was committed, events landed so far). Counting from
    the first batch's completion leaves start-up (group join, worker boot) out of both sides."""
    pts = [p for p in points if p[1] > 0]
    done = [p for p in pts if p[1] >= n]
    if len(pts) < 2 or not done:
        return 0.0, 0.0
    (t0, e0), (t1, e1) = pts[0], done[0]
    return ((e1 - e0) / (t1 - t0) if t1 > t0 else 0.0), t1 - t0


def _ratio(rate: float, reference: float) -> float | None:
    """``rate / reference``, or None when either side has no measured rate (a run whose events
    landed in fewer than two batches has no drain window: 0 events/s is "not measured", and a
    ratio of 0.0 would read as "infinitely slow")."""
    return round(rate / reference, 3) if rate > 0 and reference > 0 else None


UNMEASURED = "fewer than two batches landed on one side: no drain rate (publish more --events)"


def _run_raw(stack: Stack, a: argparse.Namespace, group: str) -> dict[str, Any]:
    from benchmarks import _raw

    ctx = mp.get_context("spawn")
    landed = ctx.Value("q", 0, lock=False)
    release = ctx.Event()
    out = stack.tmp / "raw-result.json"
    t_start = time.monotonic()
    p = ctx.Process(
        target=_raw.raw_main,
        args=(
            stack.bootstrap,
            stack.settings.topics.events,
            group,
            str(stack.tmp / "raw-store"),
            a.events,
            a.raw_batch,
            landed,
            str(out),
            float(a.timeout),
            release,
        ),
        name="raw-pipeline",
    )
    p.start()
    watch = ProcWatch({"raw pipeline": p.pid, "broker": stack.broker_pid})
    started = False
    procs: dict[str, Any] = {}
    next_log = time.monotonic() + 5
    while p.is_alive():
        time.sleep(0.05)
        watch.sample_rss()
        if not started and landed.value > 0:
            watch.start()  # CPU over the drain window: from the first committed batch
            started = True
        if started and not procs and landed.value >= a.events:
            procs = watch.stop()  # the process waits for ``release`` before it exits
            release.set()
        if time.monotonic() >= next_log:
            next_log += 5
            log(f"raw: landed {landed.value:,} of {a.events:,}")
    p.join()
    if p.exitcode != 0 or not out.exists():
        raise SystemExit(f"the raw-limit pipeline failed (exit {p.exitcode})")
    r = json.loads(out.read_text())
    pts = [(float(end), 0) for _, end, _ in r["batches"]]
    acc = 0
    for i, (_, _, k) in enumerate(r["batches"]):
        acc += k
        pts[i] = (pts[i][0], acc)
    rate, secs = _drain_rate(pts, a.events)
    if not rate and pts and r["first_message"]:  # one batch: from its first message
        secs = pts[-1][0] - r["first_message"]
        rate = pts[-1][1] / secs if secs > 0 else 0.0
    ends = [end for _, end, _ in r["batches"]]
    return {
        "events_per_s": round(rate),
        "drain_window_s": round(secs, 1),
        "start_to_all_landed_s": round(ends[-1] - t_start, 1) if ends else None,
        "batches": len(r["batches"]),
        "mean_batch": round(r["events"] / max(1, len(r["batches"]))),
        "stage_seconds": r["stage_seconds"],
        "rows_in_clickhouse": r["rows_in_clickhouse"],
        **procs,
    }


def _run_product(stack: Stack, a: argparse.Namespace) -> dict[str, Any]:
    from tests.support import wait_caught_up

    t_start = time.monotonic()
    points: list[tuple[float, int]] = []
    server = stack.start_server()
    sink = server.sink
    sink.on_batch = lambda st: points.append((time.monotonic(), st.events_landed))
    watch = ProcWatch(_procs(stack))
    started = False
    landed_at = None
    deadline = t_start + a.timeout
    next_log = time.monotonic() + 5
    while time.monotonic() < deadline:
        time.sleep(0.2)
        n = sink.stats.events_landed
        watch.pids = {k: v for k, v in _procs(stack).items() if v}
        watch.sample_rss()
        if not started and n > 0:
            watch.start()
            started = True
        if time.monotonic() >= next_log:
            next_log += 5
            log(f"traceline: landed {n:,} of {a.events:,}, genealogy changes {sink.stats.changes_landed:,}")
        if n >= a.events:
            landed_at = time.monotonic()
            break
    procs = watch.stop() if started else {}
    stages = _sink_stages(server)
    log("traceline: every event in ClickHouse; waiting for the genealogy to catch up")
    quiet = 2.0
    s = stack.settings
    last: dict[str, int] = {}
    ok = wait_caught_up(
        stack.bootstrap,
        s.topics,
        app_id=s.app_id,
        sink_group=s.sink_group,
        timeout=a.genealogy_timeout,
        quiet=quiet,
        progress=last.update,
    )
    caught = time.monotonic() - quiet if ok else None
    rate, secs = _drain_rate(points, a.events)
    t_first = points[0][0] if points else t_start
    with_gen = (
        (a.events - points[0][1]) / (caught - t_first) if caught and points and caught > t_first else 0.0
    )
    return {
        "events_per_s": round(rate),
        "events_per_s_with_genealogy": round(with_gen),
        "drain_window_s": round(secs, 1),
        "start_to_all_landed_s": round(landed_at - t_start, 1) if landed_at else None,
        "start_to_genealogy_caught_up_s": round(caught - t_start, 1) if caught else None,
        "lag_at_end": last,
        "batches": int(stages["batches"]),
        "mean_batch": round(stages["events"] / max(1, stages["batches"])),
        "sink_stage_seconds": {k: round(v, 2) for k, v in stages.items() if k not in ("batches", "events")},
        "genealogy_changes": sink.stats.changes_landed,
        "rows_in_clickhouse": _raw_count(stack),
        "worker_counters": _worker_counters(stack),
        **procs,
    }


def cmd_paired(a: argparse.Namespace) -> int:
    """The raw-limit pipeline, then traceline, each draining the same published backlog."""
    stack = _stack_for(a)
    try:
        stack.up_broker()
        cache = _stack.row_cache(a.events, a.seed)
        stack.ensure_topics()
        res = _base("ingest-paired", stack)
        publish_s = _publish_backlog(stack, cache, a.events)
        log(f"published in {publish_s:.1f}s; raw-limit pipeline (consumer -> fastavro -> Arrow insert)")
        res["loadavg_before_raw"] = _stack.loadavg()
        raw = _run_raw(stack, a, f"{stack.prefix}rawlimit")
        log(
            f"raw: {raw['events_per_s']:,} events/s; now traceline (sink + genealogy + alerts) on the same events"
        )
        res["loadavg_before_product"] = _stack.loadavg()
        prod = _run_product(stack, a)
        rate, raw_rate = prod["events_per_s"], raw["events_per_s"]
        backlog_ratio = (
            prod["start_to_all_landed_s"] / raw["start_to_all_landed_s"]
            if prod["start_to_all_landed_s"] and raw["start_to_all_landed_s"]
            else None
        )
        res.update(
            events=a.events,
            alerts=not a.no_alerts,
            publish_into_kafka_s=round(publish_s, 1),
            events_per_s=rate,
            raw_limit_events_per_s=raw_rate,
            ratio_to_raw=_ratio(rate, raw_rate),
            events_per_s_with_genealogy=prod["events_per_s_with_genealogy"],
            ratio_to_raw_with_genealogy=_ratio(prod["events_per_s_with_genealogy"], raw_rate),
            backlog_time_over_raw=round(backlog_ratio, 2) if backlog_ratio else None,
            raw=raw,
            product=prod,
            cpu_cores={"raw": raw.get("cpu_cores", {}), "product": prod.get("cpu_cores", {})},
            peak_rss_mib={"raw": raw.get("peak_rss_mib", {}), "product": prod.get("peak_rss_mib", {})},
            loadavg_after=_stack.loadavg(),
        )
        if res["ratio_to_raw"] is None:
            res["ratio_unmeasured"] = UNMEASURED
        rows = [
            ("events (same backlog for both)", f"{a.events:,}, published in {publish_s:.1f} s"),
            (
                "raw limit events/s",
                f"{raw_rate:,}  ({raw['batches']} inserts of ~{raw['mean_batch']:,}; drain {raw['drain_window_s']} s)",
            ),
            (
                "traceline events/s",
                f"{rate:,}  ({prod['batches']} batches of ~{prod['mean_batch']:,}; drain {prod['drain_window_s']} s)",
            ),
            (
                "ratio_to_raw",
                f"{res['ratio_to_raw']}  (target >= 0.5)" if res["ratio_to_raw"] else UNMEASURED,
            ),
            (
                "with the genealogy caught up",
                f"{prod['events_per_s_with_genealogy']:,} events/s, ratio {res['ratio_to_raw_with_genealogy']}",
            ),
            (
                "start -> all landed: traceline / raw",
                f"{prod['start_to_all_landed_s']} s / {raw['start_to_all_landed_s']} s = {res['backlog_time_over_raw']}x (target <= 2)",
            ),
            ("raw stages (s)", ", ".join(f"{k} {v}" for k, v in raw["stage_seconds"].items())),
            (
                "traceline sink stages (s)",
                ", ".join(f"{k} {v}" for k, v in prod["sink_stage_seconds"].items()),
            ),
        ]
        for side, d in (("raw", raw), ("traceline", prod)):
            rows += [(f"{side}: {k}", v) for k, v in _cpu_rows(d)] if d.get("cpu_cores") else []
        _emit("ingest-paired", res, rows, table=sys.stderr)
        return 0
    finally:
        stack.close(keep=a.keep)


# ----------------------------------------------------------------------------- latency


def _hook_visibility(sink: Any, topic: str, seen: dict[str, float]) -> None:
    """Record when the sink's insert of a sampled raw row returned (the row is queryable)."""
    orig = sink._land

    def land(msgs: list[Any]) -> None:
        orig(msgs)
        t = time.time()
        for m in msgs:
            if m.topic() == topic:
                for k, v in m.headers() or ():
                    if k == "event_id" and v[-1:] == b"0":
                        seen.setdefault(v.decode(), t)

    sink._land = land


def _sink_stages(server: Any) -> dict[str, float]:
    st = server.sink.stats
    out = {"batches": st.batches, "events": st.events_landed, **st.stage_seconds}
    if server.alerts is not None:  # the alert engine's busy time, as a share of the window
        out.update(alert_eval=server.alerts.stats.evaluate_s, alert_refresh=server.alerts.stats.refresh_s)
    return out


def _stage_means(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Per sink batch between two snapshots: events, and milliseconds per stage."""
    n = after["batches"] - before["batches"]
    if n <= 0:
        return {}
    out = {"events": round((after["events"] - before["events"]) / n)}
    for k in after:
        if k not in ("batches", "events") and not k.startswith("alert_"):
            out[f"{k}_ms"] = round((after[k] - before.get(k, 0.0)) * 1000 / n, 1)
    return out


def _alert_busy(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
    """Share of the window the alert engine spent in its rules (and their reads) / refreshes."""
    return {k: round((after[k] - before[k]) / seconds, 3) for k in after if k.startswith("alert_")}


def cmd_latency(a: argparse.Namespace) -> int:
    rate = a.rate
    if not rate:
        last = _stack.cache_dir() / "last-ingest.json"
        try:
            rate = round(json.loads(last.read_text())["events_per_s_median"] / 2)
            log(f"rate: half of the last ingest figure ({last}): {rate:,} events/s")
        except (OSError, ValueError, KeyError):
            rate = 2000
            log(f"no ingest figure in {last}: rate {rate:,} events/s")
    n = int(rate * (a.duration + a.warmup + 5))
    stack = _stack_for(a)
    try:
        stack.up_broker()
        cache = _stack.row_cache(max(n, a.events), a.seed)
        stack.ensure_topics()
        res = _base("latency", stack)
        server = stack.start_server()
        seen: dict[str, float] = {}
        _hook_visibility(server.sink, stack.settings.topics.events, seen)
        # wait until the consumers have their partitions (a first probe lands), then load
        sample = str(stack.tmp / "published.tsv")
        pub = _start_publisher(stack, cache, n, float(rate), 0, sample)
        watch = ProcWatch(_procs(stack, pub))
        t0 = time.monotonic()
        started = False
        stages0: dict[str, float] = {}
        t_window = 0.0
        while pub.is_alive():
            time.sleep(1.0)
            watch.sample_rss()
            if not started and time.monotonic() - t0 >= a.warmup:
                watch.start()
                stages0 = _sink_stages(server)
                t_window = time.monotonic()
                started = True
            if time.monotonic() - t0 >= a.warmup + a.duration:
                break
        procs = watch.stop()
        stages1 = _sink_stages(server)
        stages = _stage_means(stages0, stages1) if started else {}
        busy = _alert_busy(stages0, stages1, time.monotonic() - t_window) if started else {}
        _stop_publisher(pub)
        t_end = time.monotonic() + 30.0  # let what was published become visible
        while time.monotonic() < t_end and server.sink.stats.events_landed < pub.published.value:
            time.sleep(0.5)
        pubs: list[tuple[float, str]] = []
        for line in Path(sample).read_text().splitlines():
            eid, t = line.split("\t")
            pubs.append((float(t), eid))
        pubs.sort()
        t_first = pubs[0][0] if pubs else 0.0
        lat = [(seen[e] - t) * 1000 for t, e in pubs if t >= t_first + a.warmup and e in seen]
        missing = sum(1 for t, e in pubs if t >= t_first + a.warmup and e not in seen)
        res.update(
            rate_target=rate,
            duration_s=a.duration,
            samples=len(lat),
            not_visible_at_end=missing,
            p50_ms=round(_pct(lat, 50), 1),
            p90_ms=round(_pct(lat, 90), 1),
            p99_ms=round(_pct(lat, 99), 1),
            max_ms=round(max(lat), 1) if lat else None,
            loadavg_after=_stack.loadavg(),
            sink_batch_ms=stages,
            alert_engine_busy=busy,
            **procs,
        )
        rows = [
            ("offered load", f"{rate:,} events/s for {a.duration} s (after {a.warmup} s warm-up)"),
            ("publish -> queryable p50", f"{res['p50_ms']} ms"),
            ("publish -> queryable p90", f"{res['p90_ms']} ms"),
            ("publish -> queryable p99", f"{res['p99_ms']} ms"),
            ("max", f"{res['max_ms']} ms"),
            ("samples (1 in 16 events)", f"{len(lat):,} ({missing} not visible at the end)"),
            ("sink, mean per batch", ", ".join(f"{k} {v:,}" for k, v in stages.items())),
        ]
        if busy:
            rows.append(
                ("alert engine busy (share of wall)", ", ".join(f"{k[6:]} {v}" for k, v in busy.items()))
            )
        rows += _cpu_rows(procs)
        _emit("latency", res, rows)
        return 0
    finally:
        stack.close(keep=a.keep)


# ----------------------------------------------------------------------------- backlog


def cmd_backlog(a: argparse.Namespace) -> int:
    from tests.support import wait_caught_up

    stack = _stack_for(a)
    try:
        stack.up_broker()
        cache = _stack.row_cache(a.events, a.seed)
        stack.ensure_topics()
        res = _base("backlog", stack)
        publish_s = _publish_backlog(stack, cache, a.events)
        log(f"published in {publish_s:.1f}s; starting the server")
        t0 = time.monotonic()
        server = stack.start_server()
        watch = ProcWatch(_procs(stack))
        watch.start()
        first = landed_at = None
        deadline = t0 + a.timeout
        while time.monotonic() < deadline:
            time.sleep(0.2)
            n = server.sink.stats.events_landed
            if first is None and n > 0:
                first = time.monotonic() - t0
            watch.pids = {k: v for k, v in _procs(stack).items() if v}
            watch.sample_rss()
            if n >= a.events:
                landed_at = time.monotonic() - t0
                break
        log(f"all events in ClickHouse after {landed_at}s; waiting for the genealogy")
        quiet = 2.0
        s = stack.settings
        last: dict[str, int] = {}
        ok = wait_caught_up(
            stack.bootstrap,
            s.topics,
            app_id=s.app_id,
            sink_group=s.sink_group,
            timeout=max(10.0, min(a.genealogy_timeout, deadline - time.monotonic())),
            quiet=quiet,
            progress=last.update,
        )
        caught = time.monotonic() - t0 - quiet if ok else None
        procs = watch.stop()
        in_ch = _raw_count(stack)
        res.update(
            worker_counters=_worker_counters(stack),
            events=a.events,
            publish_into_kafka_s=round(publish_s, 1),
            first_row_s=round(first, 1) if first is not None else None,
            all_landed_s=round(landed_at, 1) if landed_at is not None else None,
            genealogy_caught_up_s=round(caught, 1) if caught is not None else None,
            events_per_s_landing=round(a.events / landed_at) if landed_at else None,
            rows_in_clickhouse=in_ch,
            genealogy_changes=server.sink.stats.changes_landed,
            lag_at_end=last,
            loadavg_after=_stack.loadavg(),
            **procs,
        )
        rows = [
            ("events in the backlog", f"{a.events:,} (published in {res['publish_into_kafka_s']} s)"),
            ("server start -> first row", f"{res['first_row_s']} s"),
            (
                "server start -> all in ClickHouse",
                f"{res['all_landed_s']} s ({res['events_per_s_landing']:,} events/s)"
                if landed_at
                else "timed out",
            ),
            (
                "server start -> genealogy caught up",
                f"{res['genealogy_caught_up_s']} s" if caught is not None else f"timed out (lag {last})",
            ),
            ("rows in ClickHouse", f"{in_ch:,}"),
        ]
        rows += _cpu_rows(procs)
        _emit("backlog", res, rows)
        return 0
    finally:
        stack.close(keep=a.keep)


# ----------------------------------------------------------------------------- CLI


def stack_args(sp: argparse.ArgumentParser) -> None:
    """The options every pipeline command (and ``benchmarks.memory``) takes for its stack."""
    sp.add_argument("--partitions", type=int, default=6, help="partitions of the topics (default 6)")
    sp.add_argument("--seed", type=int, default=1, help="simulator seed of the load cache")
    sp.add_argument("--data-dir", default="", help="where broker / store / outbox live (default: a temp dir)")
    sp.add_argument("--keep", action="store_true", help="keep the data dir (and the broker's data)")
    sp.add_argument("--no-alerts", action="store_true", help="run the server without the alert engine")
    sp.add_argument("--sink-batch-size", type=int, default=20_000)
    sp.add_argument("--sink-batch-seconds", type=float, default=0.25)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.pipeline", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    si = sub.add_parser("ingest", help="sustained end-to-end ingest (events/s, CPU, RSS)")
    stack_args(si)
    si.add_argument("--duration", type=float, default=120, help="steady window in seconds (default 120)")
    si.add_argument("--warmup", type=float, default=20, help="seconds before the window (default 20)")
    si.add_argument(
        "--events",
        type=int,
        default=0,
        help="most events to offer (default 3M; --paired: the backlog, default 1M)",
    )
    si.add_argument(
        "--max-ahead",
        type=int,
        default=200_000,
        help="most events published but not landed (Kafka backlog bound; default 200k)",
    )
    si.add_argument(
        "--paired",
        action="store_true",
        help="the raw-limit pipeline (benchmarks/_raw.py) and the product back to back on the same "
        "--events (a backlog published first); prints events_per_s, raw_limit_events_per_s, ratio_to_raw",
    )
    si.add_argument(
        "--raw-batch", type=int, default=50_000, help="--paired: events per raw insert (default 50k)"
    )
    si.add_argument(
        "--genealogy-timeout",
        type=float,
        default=600,
        help="--paired: how long to wait for the genealogy after the events landed (default 600)",
    )
    si.add_argument("--profile", default="", help="py-spy the worker / server / publisher into this dir")
    si.add_argument("--profile-seconds", type=float, default=30)
    si.set_defaults(fn=cmd_ingest)

    sl = sub.add_parser("latency", help="publish -> queryable latency p50/p99 at a steady load")
    stack_args(sl)
    sl.add_argument("--rate", type=int, default=0, help="events/s (default: half the last ingest figure)")
    sl.add_argument("--duration", type=float, default=60)
    sl.add_argument("--warmup", type=float, default=10)
    sl.add_argument("--events", type=int, default=0, help="cache size floor (default: rate x duration)")
    sl.set_defaults(fn=cmd_latency)

    sb = sub.add_parser("backlog", help="time to land N events already in Kafka")
    stack_args(sb)
    sb.add_argument("--events", type=int, default=1_000_000)
    sb.add_argument("--timeout", type=float, default=900, help="overall limit in seconds (default 900)")
    sb.add_argument(
        "--genealogy-timeout",
        type=float,
        default=300,
        help="how long to wait for the genealogy after the events landed (default 300)",
    )
    sb.set_defaults(fn=cmd_backlog)

    si.add_argument("--timeout", type=float, default=1800, help="--paired: limit per side in seconds")
    a = p.parse_args(argv)
    if a.cmd == "ingest" and not a.events:
        a.events = 1_000_000 if a.paired else 3_000_000
    return int(a.fn(a))


if __name__ == "__main__":
    sys.exit(main())
