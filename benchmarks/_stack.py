"""Helpers for the pipeline benchmarks: a load generator, a local stack, process figures.

* :func:`row_cache` - simulated plant events, Avro-encoded ONCE into a cache file
  (``<cache>/rows-s<seed>-t<start>-n<N>.bin``), so the load generator only reads bytes and hands them
  to :meth:`producers.publisher.Publisher.publish_encoded`: no pydantic and no encoding on the
  load generator's clock. The encoder used to build the cache (:func:`fast_encoder`) maps the
  simulator's JSON form straight onto the Avro schema and is checked byte-for-byte against
  the pydantic path (``parse_event`` + ``encode_event``) on every event type first.
* :class:`Stack` - a broker (``TRACELINE_KAFKA_BOOTSTRAP`` or ``traceline.localstack.up``), a
  store (``TRACELINE_CLICKHOUSE_DSN`` or chdb under a temp dir) and a real
  :class:`traceline.serve.Server` (faust worker child + sink thread + alert engine), with
  fresh topics / groups per run.
* :func:`publisher_main` - the load generator (a separate process): paced or closed-loop.
* :class:`ProcWatch` - CPU seconds (``/proc/<pid>/stat``) and peak RSS (``VmHWM``) per process.
"""

from __future__ import annotations

import os
import struct
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = [
    "ProcWatch",
    "Stack",
    "fast_encoder",
    "publisher_main",
    "read_rows",
    "row_cache",
]

_REPO = Path(__file__).resolve().parents[1]
_LEN = struct.Struct("<HHH")  # len(event_id), len(key), len(value)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- load data


def _ms(value: Any) -> Any:
    if isinstance(value, str):
        dt = datetime.fromisoformat(value)
        return int(dt.timestamp() * 1000 + (0.5 if dt.timestamp() >= 0 else -0.5))
    return value


def _converter(schema: Any) -> Callable[[Any], Any] | None:
    """A function JSON value -> Avro datum for ``schema`` (None when the value is used as is)."""
    if isinstance(schema, list):  # union
        convs = [c for c in (_converter(s) for s in schema if s != "null") if c is not None]
        if not convs:
            return None
        conv = convs[0]
        return lambda v: None if v is None else conv(v)
    if isinstance(schema, dict):
        if schema.get("logicalType") == "timestamp-millis":
            return _ms
        t = schema.get("type")
        if t == "record":
            fields = [(f["name"], _converter(f["type"]), f.get("default")) for f in schema["fields"]]

            def rec(v: dict[str, Any]) -> dict[str, Any]:
                out = {}
                for name, c, default in fields:
                    x = v.get(name, default)
                    out[name] = c(x) if c is not None and x is not None else x
                return out

            return rec
        if t == "array":
            item = _converter(schema["items"])
            if item is None:
                return None
            return lambda v: [item(x) for x in v]
        if isinstance(t, (dict, list)):
            return _converter(t)
    return None


def _key(d: dict[str, Any]) -> str:
    if "unit" in d and d["type"] not in ("NonconformanceRaised",):
        u = d["unit"]
        return f"{u['part_number']}:{u['serial_number']}"
    if d["type"] == "NonconformanceRaised":
        return f"{d['target_kind']}:{d['target_id']}"
    return str(d["lot_id"])


def fast_encoder() -> Callable[[dict[str, Any]], tuple[str, bytes, bytes]]:
    """JSON-form event -> ``(event_id, key, value)`` without pydantic (same bytes)."""
    from schemas.serde import AvroSerde, schema_for

    serde = AvroSerde()
    types = serde.types
    convs = {t: _converter(schema_for(t)) for t in types}

    def enc(d: dict[str, Any]) -> tuple[str, bytes, bytes]:
        t = d["type"]
        rec = convs[t](d)  # type: ignore[misc]
        return str(d["event_id"]), _key(d).encode(), serde.encode(t, rec)

    return enc


def _check_encoder(events: list[dict[str, Any]]) -> None:
    from schemas.jsonform import parse_event
    from schemas.serde import AvroSerde

    serde = AvroSerde()
    enc = fast_encoder()
    seen: set[str] = set()
    for d in events:
        ev = parse_event(d)
        want = (str(ev.event_id), ev.kafka_key().encode(), serde.encode_event(ev))
        got = enc(d)
        if got != want:
            raise AssertionError(f"fast encoder differs from pydantic for {d['type']}: {d}")
        seen.add(d["type"])
    log(f"fast encoder == pydantic encoder on {len(events)} events ({len(seen)} types)")


def cache_dir() -> Path:
    d = Path(os.environ.get("TRACELINE_BENCH_CACHE", _REPO / "var" / "bench"))
    d.mkdir(parents=True, exist_ok=True)
    return d


#: where the load cache's simulated plant starts. Its events must lie in the past: the sink
#: quarantines an event time more than a day ahead (``ImplausibleEventTime``), and the simulator
#: advances ~3 weeks per 100k events, so a cache that started in 2026-01 passed today's date at
#: 1.58M events and the closed loop then waited for rows that never land (2026-12-05). From
#: 2024-01-01, 3M events end in 2025-09.
CACHE_START = datetime(2024, 1, 1, tzinfo=UTC)
_CACHE_TAG = f"t{CACHE_START:%Y%m%d}"


def row_cache(n: int, seed: int = 1) -> Path:
    """A file of ``n`` encoded simulated events (built once; a larger cache of the seed serves)."""
    where = cache_dir()
    found = where.glob(f"rows-s{seed}-{_CACHE_TAG}-n*.bin")
    for p in sorted(found, key=lambda p: int(p.stem.rsplit("n", 1)[1])):
        if int(p.stem.rsplit("n", 1)[1]) >= n:
            return p
    from producers.simulator import simulate

    path = where / f"rows-s{seed}-{_CACHE_TAG}-n{n}.bin"
    tmp = path.with_suffix(".tmp")
    units = int(n / 5.0) + 1000
    log(f"building the load cache: {n:,} simulated events (seed {seed}) -> {path}")
    t0 = time.monotonic()
    enc = fast_encoder()
    it = simulate(units, seed=seed, start=CACHE_START)
    head: list[dict[str, Any]] = []
    written = 0
    with tmp.open("wb") as f:
        for d in it:
            if len(head) < 3000:
                head.append(d)
                if len(head) == 3000:
                    _check_encoder(head)
            eid, key, value = enc(d)
            e = eid.encode()
            f.write(_LEN.pack(len(e), len(key), len(value)))
            f.write(e)
            f.write(key)
            f.write(value)
            written += 1
            if written >= n:
                break
            if written % 500_000 == 0:
                log(f"  {written:,} events ({written / (time.monotonic() - t0):,.0f}/s)")
    if written < n:
        raise RuntimeError(f"the simulator gave only {written} events for {units} units")
    tmp.rename(path)
    log(f"load cache ready in {time.monotonic() - t0:.0f}s")
    return path


def read_rows(path: Path, topic: str, n: int, chunk: int) -> Iterator[list[tuple[str, str, bytes, bytes]]]:
    """Chunks of ``(event_id, topic, key, value)`` rows, the first ``n`` of the cache."""
    done = 0
    with path.open("rb", buffering=1 << 20) as f:
        while done < n:
            rows = []
            for _ in range(min(chunk, n - done)):
                h = f.read(_LEN.size)
                if len(h) < _LEN.size:
                    break
                a, b, c = _LEN.unpack(h)
                buf = f.read(a + b + c)
                rows.append((buf[:a].decode(), topic, buf[a : a + b], buf[a + b :]))
            if not rows:
                return
            done += len(rows)
            yield rows


# ----------------------------------------------------------------------------- processes


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    try:
        parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(parts[11]) + int(parts[12])) / _TICK  # utime + stime


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread *name* of a process (``/proc/<pid>/task/*``; digits stripped, so
    ClickHouse's pools such as ``MergeMutate`` or ``QueryPipelineEx`` add up; Python threads are
    named after the process)."""
    out: dict[str, float] = {}
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for t in tasks:
        try:
            head, tail = (t / "stat").read_text().rsplit(")", 1)
        except OSError:
            continue  # the thread ended between the listing and the read
        name = head.split("(", 1)[1].rstrip("0123456789:-_ ") or "?"
        parts = tail.split()
        out[name] = out.get(name, 0.0) + (int(parts[11]) + int(parts[12])) / _TICK
    return out


def mem_kib(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmHWM:", "VmRSS:")):
                k, v = line.split(":", 1)
                out[k] = int(v.split()[0])
    except OSError:
        pass
    return out


class ProcWatch:
    """CPU share over a window and peak / current RSS of named processes."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = {k: v for k, v in pids.items() if v}
        self._t0 = 0.0
        self._cpu0: dict[str, float] = {}
        self._threads0: dict[str, dict[str, float]] = {}
        self.peak_rss_mib: dict[str, float] = {}

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._cpu0 = {k: cpu_seconds(p) or 0.0 for k, p in self.pids.items()}
        self._threads0 = {k: thread_cpu(p) for k, p in self.pids.items()}

    def sample_rss(self) -> None:
        for k, p in self.pids.items():
            m = mem_kib(p)
            if m:
                v = max(m.get("VmHWM", 0), m.get("VmRSS", 0)) / 1024
                self.peak_rss_mib[k] = max(self.peak_rss_mib.get(k, 0.0), v)

    def stop(self) -> dict[str, Any]:
        wall = time.monotonic() - self._t0
        self.sample_rss()
        cpu = {}
        threads: dict[str, dict[str, float]] = {}
        for k, p in self.pids.items():
            c = cpu_seconds(p)
            if c is not None:
                cpu[k] = round((c - self._cpu0.get(k, 0.0)) / wall, 3)  # cores (1.0 = one core)
            # threads that ended inside the window are missing here (their time counts in cpu_cores)
            t0 = self._threads0.get(k, {})
            per = {n: round((v - t0.get(n, 0.0)) / wall, 3) for n, v in thread_cpu(p).items()}
            threads[k] = dict(sorted(((n, v) for n, v in per.items() if v >= 0.005), key=lambda x: -x[1]))
        return {
            "window_s": round(wall, 1),
            "cpu_cores": cpu,
            "thread_cores": threads,
            "peak_rss_mib": {k: round(v) for k, v in self.peak_rss_mib.items()},
        }


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


# ----------------------------------------------------------------------------- the stack


class Stack:
    """Broker + store + a real ``traceline serve`` Server with fresh topics, for one run."""

    def __init__(self, *, partitions: int = 6, data_dir: str = "", alerts: bool = True, **serve: Any) -> None:
        from traceline.settings import Settings

        self.tmp = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="traceline-bench-"))
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.prefix = f"b{uuid.uuid4().hex[:8]}."
        s = Settings(data_dir=self.tmp / "data")
        s.kafka.topic_prefix = self.prefix
        s.kafka.events_topic = f"{self.prefix}events"
        s.kafka.partitions = partitions
        if s.clickhouse.dsn:  # an existing ClickHouse: a database of this run's own
            s.clickhouse.database = f"bench_{self.prefix.rstrip('.')}"
        self.settings = s
        self.alerts = alerts
        self.serve_opts = serve
        self._own_broker: Path | None = None
        self.bootstrap = os.environ.get("TRACELINE_KAFKA_BOOTSTRAP", "").strip()
        self.broker_pid: int | None = None
        self.server: Any = None

    def up_broker(self) -> str:
        from traceline import localstack

        if not self.bootstrap:
            self._own_broker = self.tmp / "kafka"
            log(f"starting a local broker in {self._own_broker}")
            self.bootstrap = localstack.up(self._own_broker)
            st = localstack.status(self._own_broker) or {}
            self.broker_pid = st.get("pid")
        return self.bootstrap

    def ensure_topics(self) -> None:
        from schemas.kafka import ensure_topics

        s = self.settings
        k = s.kafka
        ensure_topics(self.bootstrap, s.topics, partitions=k.partitions, replication=k.replication)

    def start_server(self) -> Any:
        from traceline.serve import ServeOptions, Server

        opts = ServeOptions(self.bootstrap, with_api=False, with_alerts=self.alerts, **self.serve_opts)
        self.server = Server(self.settings, opts)
        self.server.start()
        return self.server

    @property
    def worker_pid(self) -> int | None:
        w = self.server.worker if self.server else None
        return w.proc.pid if w is not None and w.proc is not None else None

    def lag(self) -> dict[str, int]:
        from schemas.kafka import pipeline_lag

        s = self.settings
        return pipeline_lag(self.bootstrap, s.topics, app_id=s.app_id, sink_group=s.sink_group)

    def close(self, keep: bool = False) -> None:
        from traceline import localstack

        if self.server is not None:
            self.server.stop()
            self.server = None
        if self._own_broker is not None:
            localstack.down(self._own_broker, purge=not keep)
            self._own_broker = None
        if not keep:
            import shutil

            shutil.rmtree(self.tmp, ignore_errors=True)


# ----------------------------------------------------------------------------- load generator


def publisher_main(
    bootstrap: str,
    outbox: str,
    topic: str,
    cache: str,
    n: int,
    rate: float,
    max_ahead: int,
    landed: Any,
    published: Any,
    stop: Any,
    sample_path: str,
) -> None:
    """Publish the first ``n`` cached rows through a real Publisher (outbox + idempotent producer).

    ``rate`` > 0 paces the load (events/s); 0 publishes as fast as the pipeline drains, with at
    most ``max_ahead`` events published but not yet landed (``landed`` is updated by the
    benchmark from the sink's counter; ``max_ahead`` <= 0 means no bound). With ``sample_path``
    the publish wall time of events whose id ends in ``0`` (1/16) is written there as
    ``event_id <tab> time``.
    """
    from producers.publisher import Publisher

    pub = Publisher(bootstrap, outbox, topic=topic)
    chunk = 2000 if rate <= 0 else max(50, min(2000, int(rate / 50)))
    sample = open(sample_path, "w") if sample_path else None  # noqa: SIM115
    t0 = time.monotonic()
    sent = 0
    try:
        for rows in read_rows(Path(cache), topic, n, chunk):
            if stop.is_set():
                break
            if rate > 0:
                wait = t0 + sent / rate - time.monotonic()
                while wait > 0 and not stop.is_set():
                    pub.pump(min(wait, 0.05))
                    wait = t0 + sent / rate - time.monotonic()
            elif max_ahead > 0:
                while sent - landed.value > max_ahead and not stop.is_set():
                    pub.pump(0.02)
            while pub.pending() + len(rows) > pub.outbox.max_pending - 1 and not stop.is_set():
                pub.pump(0.05)
            t = time.time()
            pub.publish_encoded(rows)
            if sample is not None:
                for r in rows:
                    if r[0][-1] == "0":
                        sample.write(f"{r[0]}\t{t:.6f}\n")
            sent += len(rows)
            published.value = sent
        left = pub.flush(120)
        published.value = sent
        if left:
            log(f"publisher: {left} events still pending after the final flush: {pub.last_error}")
    finally:
        if sample is not None:
            sample.close()
        pub.close(10)
