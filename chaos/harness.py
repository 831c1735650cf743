"""What every scenario uses: its context, its result row, a pipeline in this process, a health
sampler, and the measurements on the store.

The figures of a row (:class:`Result`):

* ``sent``: distinct valid events published (handed to a publisher's outbox or produced raw);
* ``present``: how many of them are in the raw tables (distinct event ids, no ``FINAL``);
* ``lost`` = sent - present;
* ``duplicated``: raw rows beyond one per event id (``count() - uniqExact(event_id)`` over the
  raw tables of the run's events topic, no ``FINAL``: what a reader without FINAL sees);
* ``dead_letters`` / ``conflicts`` / ``quarantined``: ``dead_letters`` rows whose source is the
  events topic: all, ``ConflictingDuplicate``, ``ImplausibleEventTime``;
* ``recovery_s``: from the end of the fault until the store holds every event published before
  the fault ended (and, where the scenario says so, until the whole pipeline caught up);
* ``health``: the statuses ``health()`` / ``GET /health`` returned, sampled every
  ``health_every`` seconds from the start of the fault until a few seconds after recovery,
  consecutive repeats folded (``ok->degraded->ok``); ``unreachable`` when the API did not answer.

A row fails (``verdict`` FAIL, with the reasons in ``problems``) on any loss, duplication, event
id that should not be there, dead letter landed twice, a genealogy that differs from the oracle
(``tests.oracle``), or a health that stayed ``ok`` through a fault that stopped ingest.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Ctx",
    "Result",
    "HealthSampler",
    "Pipeline",
    "http_health",
    "log",
    "measure",
    "landed_ids",
    "raw_counts",
    "dead_letter_counts",
    "genealogy_check",
    "wait_until",
    "wait_caught_up",
    "delete_topics",
    "pipeline_settings",
    "sink_figures",
    "fresh_group_lag",
    "end_offsets",
    "committed_reach",
]


def log(msg: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Ctx:
    """What a scenario run gets from the runner."""

    scenario: str
    rep: int
    work: Path  # this run's own directory
    events: int
    seed: int
    bootstrap: str  # the shared broker
    broker_dir: Path  # its data dir (localstack): kill and restart it there
    health_every: float = 1.0
    broker_down: float = 5.0  # seconds a killed broker stays down (the broker-kill scenarios)

    @property
    def label(self) -> str:
        return f"{self.scenario} #{self.rep}" if self.rep else self.scenario


@dataclass
class Result:
    scenario: str
    sent: int = 0
    present: int = 0
    lost: int = 0
    duplicated: int = 0
    dead_letters: int = 0
    conflicts: int = 0
    quarantined: int = 0
    recovery_s: float | None = None
    health: str = ""
    verdict: str = "pass"  # pass | FAIL | skipped | error
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def fail(self, why: str) -> None:
        self.problems.append(why)
        self.verdict = "FAIL"

    def note(self, text: str) -> None:
        self.notes.append(text)
        log(f"note: {text}")

    def recovered(self, sampler: HealthSampler, seconds: float | None, failure: str) -> None:
        """Recovery ends now (a health mark): ``seconds`` it took, or ``failure`` when None."""
        sampler.mark("recovered")
        self.recovery_s = round(seconds, 1) if seconds is not None else None
        if seconds is None:
            self.fail(failure)

    def publisher(self, figures: dict[str, Any], what: str = "everything", key: str = "publisher") -> None:
        """A publisher process's figures; it must have delivered everything it stored."""
        self.details[key] = figures
        if figures.get("pending_after_flush") or figures.get("error"):
            self.fail(f"the publisher did not deliver {what}: {figures}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------- health


def http_health(url: str, token: str | None = None, timeout: float = 2.0) -> Callable[[], dict[str, Any]]:
    """``GET <url>/health`` as a callable (a refused connection raises: "unreachable"); with an
    administrator's ``token`` the answer has the details (problems, parts, sink counters)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}

    def get() -> dict[str, Any]:
        req = urllib.request.Request(f"{url}/health", headers=headers)  # noqa: S310 - loopback
        with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310
            return dict(json.loads(r.read()))

    return get


class HealthSampler:
    """Calls ``health()`` every ``every`` seconds in a thread and keeps (time, status, problems)."""

    def __init__(self, health: Callable[[], dict[str, Any]], every: float = 1.0) -> None:
        self.health = health
        self.every = every
        self.samples: list[tuple[float, str, list[str]]] = []
        self.marks: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="health-sampler", daemon=True)
        self.last: dict[str, Any] = {}

    def start(self) -> HealthSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def mark(self, name: str) -> float:
        t = time.monotonic()
        self.marks.setdefault(name, t)
        if name.endswith("_end") or name == "recovered":
            self.marks[name] = t  # the last one counts
        return t

    def _loop(self) -> None:
        nxt = time.monotonic()
        while not self._stop.is_set():
            try:
                h = self.health()
                status, problems = str(h.get("status")), [str(p) for p in h.get("problems") or []]
                self.last = h
            except Exception as exc:  # noqa: BLE001 - an API that does not answer is a status too
                status, problems = "unreachable", [f"{type(exc).__name__}: {exc}"[:200]]
            self.samples.append((time.monotonic(), status, problems))
            nxt += self.every
            self._stop.wait(max(0.0, nxt - time.monotonic()))

    def window(self, t0: float | None, t1: float | None) -> list[tuple[float, str, list[str]]]:
        return [s for s in self.samples if (t0 is None or s[0] >= t0) and (t1 is None or s[0] <= t1)]

    def sequence(self, t0: float | None = None, t1: float | None = None) -> str:
        out: list[str] = []
        for _t, status, _p in self.window(t0, t1):
            if not out or out[-1] != status:
                out.append(status)
        return "->".join(out)

    def first_non_ok(self, t0: float, t1: float | None = None) -> float | None:
        for t, status, _p in self.window(t0, t1):
            if status != "ok":
                return t
        return None

    def timeline(self, t0: float) -> list[tuple[float, str, list[str]]]:
        """Every change of status or problems: (seconds from ``t0``, status, problems)."""
        out: list[tuple[float, str, list[str]]] = []
        last: tuple[str, list[str]] | None = None
        for t, status, problems in self.samples:
            short = [p[:160] for p in problems[:3]]
            same = [re.sub(r"\d+ s\b", "N s", p) for p in short]  # "stalled for 61 s" does not change
            if last != (status, same):
                out.append((round(t - t0, 1), status, short))
                last = (status, same)
        return out[:80]

    def problems_seen(self, t0: float | None = None, t1: float | None = None, limit: int = 8) -> list[str]:
        seen: dict[str, None] = {}
        for _t, _s, problems in self.window(t0, t1):
            for p in problems:
                seen.setdefault(p[:240], None)
        return list(seen)[:limit]

    def settle(self, result: Result, *, timeout: float = 90.0, required: bool = True) -> None:
        """After the pipeline caught up: wait (up to ``timeout``) for health to say ok again;
        fail the row if it does not and ``required``."""
        t0 = time.monotonic()
        n = len(self.samples)
        while time.monotonic() - t0 < timeout:
            if len(self.samples) > n and self.samples[-1][1] == "ok":
                self.mark("healthy_again")
                result.details["health_ok_again_s"] = round(time.monotonic() - t0, 1)
                return
            time.sleep(min(0.5, self.every))
        last = self.samples[-1] if self.samples else (0.0, "none", [])
        result.details["health_ok_again_s"] = None
        result.details["health_at_end"] = {"status": last[1], "problems": last[2][:4]}
        why = f"health still {last[1]} {timeout:.0f} s after the pipeline caught up: {last[2][:2]}"
        if required:
            result.fail(why)
        else:
            result.note(why)

    def summarize(self, result: Result, *, must_notice: bool, steady: bool = True, tail: float = 3.0) -> None:
        """Fill ``result.health`` from the fault marks. With ``must_notice``, fail the row when
        health stayed ok while the fault lasted, or (``steady``: one fault that lasts from its
        start to its end) said ok again before the fault was over."""
        start = self.marks.get("fault_start")
        end = self.marks.get("fault_end")
        rec = self.marks.get("recovered")
        if start is None:
            result.health = self.sequence()
            return
        # to the return to ok (or to now, when it did not return), at least to the recovery
        stop = max(rec or 0.0, self.marks.get("healthy_again", time.monotonic())) + tail
        result.health = self.sequence(start - self.every * 1.5, stop)
        first = self.first_non_ok(start, stop)
        d = result.details
        d["health_samples_in_window"] = len(self.window(start, stop))
        d["health_non_ok_after_s"] = round(first - start, 1) if first is not None else None
        d["fault_s"] = round(end - start, 1) if end is not None else None
        d["health_problems"] = self.problems_seen(start, stop)
        d["health_timeline"] = self.timeline(start)
        if first is None or (end is not None and first > end):
            later = "" if first is None else f"; it turned non-ok {first - end:.1f} s after the fault ended"  # type: ignore[operator]
            why = (
                f"health stayed ok while the fault lasted ({d['fault_s']} s, sampled every {self.every} s)"
                + later
            )
            if must_notice:
                result.fail(why)
        elif must_notice and steady and end is not None:
            oks = [t for t, status, _p in self.window(first, end) if status == "ok"]
            if oks:
                result.fail(
                    f"health said ok again {oks[0] - start:.1f} s into the fault while it lasted"
                    f" ({len(oks)} ok samples before it ended at {end - start:.1f} s)"
                )


# ----------------------------------------------------------------------------- the pipeline


def pipeline_settings(
    data_dir: Path, prefix: str, *, partitions: int = 6, dsn: str = "", replication: int = 1
) -> Any:
    from traceline.settings import Settings

    s = Settings(data_dir=data_dir)
    s.kafka.topic_prefix = prefix
    s.kafka.events_topic = f"{prefix}events"
    s.kafka.partitions = partitions
    s.kafka.replication = replication
    s.kafka.bootstrap = ""
    s.clickhouse.dsn = dsn  # "" = the embedded store under data_dir
    s.schema_registry.url = None
    return s


class Pipeline:
    """A :class:`traceline.serve.Server` in this process on fresh topics (unique prefix), its own
    store, a store handle for the measurements and a health sampler on ``server.health()``."""

    def __init__(
        self,
        ctx: Ctx,
        bootstrap: str | None = None,
        *,
        partitions: int = 6,
        dsn: str = "",
        replication: int = 1,
        prefix: str | None = None,
        health_every: float | None = None,
        **opts: Any,
    ) -> None:
        self.ctx = ctx
        self.bootstrap = bootstrap or ctx.bootstrap
        self.prefix = prefix or f"c{uuid.uuid4().hex[:8]}."
        self.settings = pipeline_settings(
            ctx.work / "data", self.prefix, partitions=partitions, dsn=dsn, replication=replication
        )
        opts.setdefault("with_api", False)
        opts.setdefault("sink_batch_size", 2_000)
        self.opts = opts
        self.server: Any = None
        self.servers: list[Any] = []
        self._reader: Any = None
        self.sampler: HealthSampler | None = None
        self.health_every = health_every or ctx.health_every

    @property
    def topic(self) -> str:
        return str(self.settings.topics.events)

    def start(self) -> Any:
        from traceline.serve import ServeOptions, Server

        self.server = Server(self.settings, ServeOptions(self.bootstrap, **self.opts))
        self.server.start()
        self.servers.append(self.server)
        if self.sampler is None:
            self.sampler = HealthSampler(self._health, self.health_every).start()
        return self.server

    def _health(self) -> dict[str, Any]:
        if self.server is None:
            return {"status": "unreachable", "problems": ["no server running"]}
        return dict(self.server.health())

    def stop_server(self) -> None:
        """Stop the server (health reads "unreachable" from now on, as a stopped API would)."""
        server, self.server = self.server, None
        if server is not None:
            server.stop()

    @property
    def store(self) -> Any:
        """A store handle of the measurements' own (the server created the store)."""
        if self._reader is None:
            from sinks.store import Store

            s = self.settings
            self._reader = Store.open(
                s.clickhouse_dsn, s.clickhouse.database, uncompressed_cache_mb=0, create=False
            )
        return self._reader

    def lag(self) -> dict[str, int] | None:
        """The pipeline's consumer lag (as ``schemas.kafka.pipeline_lag`` counts it), measured
        with a fresh admin client each time (see :func:`fresh_group_lag`); None when the broker
        does not answer."""
        s = self.settings
        t = s.topics
        try:
            return {
                "streams": fresh_group_lag(self.bootstrap, s.app_id, [t.commands]),
                "sink": fresh_group_lag(self.bootstrap, s.sink_group, [t.events, t.changes, t.deadletter]),
            }
        except Exception:  # noqa: BLE001 - broker away: no lag now
            return None

    def sink_stat(self, name: str) -> int:
        sink = self.server.sink if self.server is not None else None
        return int(getattr(sink.stats, name)) if sink is not None else 0

    def close(self, *, delete: bool = True) -> None:
        if self.sampler is not None:
            self.sampler.stop()
        with contextlib.suppress(Exception):
            self.stop_server()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                self._reader.close()
            self._reader = None
        if delete:
            delete_topics(self.bootstrap, self.prefix)


def fresh_group_lag(bootstrap: str, group: str, topics: list[str], timeout: float = 10.0) -> int:
    """``schemas.kafka.group_lag`` with an admin client of its own, made for this call.

    The product's process-wide cached admin client stopped answering consumer-group offset
    requests after a broker ``kill -9`` and restart (every call timed out after 60 s while a new
    client answered at once; reported in docs/RELIABILITY.md), so the measurements here never
    share it."""
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import AdminClient, OffsetSpec

    admin = AdminClient(
        {"bootstrap.servers": bootstrap, "socket.connection.setup.timeout.ms": 5000, "log_level": 0}
    )
    meta = admin.list_topics(timeout=timeout)
    tps = [
        TopicPartition(t, p)
        for t in topics
        if t in meta.topics and meta.topics[t].error is None
        for p in meta.topics[t].partitions
    ]
    if not tps:
        return 0
    ends = admin.list_offsets({tp: OffsetSpec.latest() for tp in tps}, request_timeout=timeout)
    end = {(tp.topic, tp.partition): f.result(timeout).offset for tp, f in ends.items()}
    fut = admin.list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group, tps)], request_timeout=timeout
    )
    got = next(iter(fut.values())).result(timeout).topic_partitions
    committed = {(tp.topic, tp.partition): tp.offset for tp in got}
    return sum(e - max(0, committed.get(k, -1)) for k, e in end.items())


def delete_topics(bootstrap: str, prefix: str) -> None:
    """Best effort: delete every topic of a run (its prefix) so the shared broker stays light."""
    from confluent_kafka.admin import AdminClient

    try:
        admin = AdminClient({"bootstrap.servers": bootstrap, "socket.connection.setup.timeout.ms": 5000})
        names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)]
        if names:
            for fut in admin.delete_topics(names, request_timeout=30).values():
                with contextlib.suppress(Exception):
                    fut.result(30)
    except Exception as exc:  # noqa: BLE001 - cleanup only
        log(f"could not delete the topics of {prefix}: {exc}")


# ----------------------------------------------------------------------------- measurements


def _union(column: str = "event_id") -> str:
    from sinks.rows import RAW_TABLES

    return " UNION ALL ".join(
        f"SELECT {column} FROM {t} WHERE kafka_topic = {{t:String}}"  # noqa: S608 - fixed names
        for t in RAW_TABLES
    )


def landed_ids(store: Any, topic: str) -> set[str]:
    _n, rows = store.query_rows(f"SELECT DISTINCT event_id FROM ({_union()})", {"t": topic})  # noqa: S608
    return {r[0] for r in rows}


def raw_counts(store: Any, topic: str) -> tuple[int, int]:
    _n, rows = store.query_rows(f"SELECT count(), uniqExact(event_id) FROM ({_union()})", {"t": topic})  # noqa: S608
    return int(rows[0][0]), int(rows[0][1])


def dead_letter_counts(store: Any, topic: str) -> dict[str, tuple[int, int]]:
    """error -> (rows, distinct source offsets) of the dead letters whose source is ``topic``."""
    _n, rows = store.query_rows(
        "SELECT error, count(), uniqExact(source_partition, source_offset) FROM dead_letters"
        " WHERE source_topic = {t:String} GROUP BY error",
        {"t": topic},
    )
    return {str(e): (int(n), int(u)) for e, n, u in rows}


def measure(
    store: Any, topic: str, expected: Iterable[str], result: Result, *, forbidden: Iterable[str] = ()
) -> set[str]:
    """Fill the row's figures from the store; fail it on loss, duplication, stray or forbidden
    ids, or a dead letter landed twice. Returns the event ids landed."""
    ids = landed_ids(store, topic)
    exp = set(expected)
    result.sent = len(exp)
    result.present = len(ids & exp)
    result.lost = result.sent - result.present
    rows, distinct = raw_counts(store, topic)
    result.duplicated = rows - distinct
    dl = dead_letter_counts(store, topic)
    result.dead_letters = sum(n for n, _u in dl.values())
    result.conflicts = dl.get("ConflictingDuplicate", (0, 0))[0]
    result.quarantined = dl.get("ImplausibleEventTime", (0, 0))[0]
    result.details["dead_letters_by_error"] = {e: n for e, (n, _u) in sorted(dl.items())}
    if result.lost:
        missing = sorted(exp - ids)
        result.details["missing_sample"] = missing[:20]
        result.fail(f"{result.lost} of {result.sent} events are not in the store, e.g. {missing[:3]}")
    if result.duplicated:
        result.fail(f"{result.duplicated} duplicate raw rows ({rows} rows for {distinct} event ids)")
    stray = ids - exp
    bad = ids & set(forbidden)
    if bad:
        result.fail(f"{len(bad)} events that must not land are in the raw tables, e.g. {sorted(bad)[:3]}")
    elif stray:
        result.fail(
            f"{len(stray)} event ids in the raw tables that were never sent, e.g. {sorted(stray)[:3]}"
        )
    twice = sum(n - u for n, u in dl.values())
    if twice:
        result.fail(f"{twice} dead letters landed more than once (same source partition and offset)")
    return ids


def genealogy_check(store: Any, events: list[dict[str, Any]], result: Result) -> None:
    """The genealogy in ``unit_genealogy`` equals the independent oracle's (``tests.oracle``)."""
    from tests import oracle

    g = oracle.genealogy(events)
    rows = store.query(
        "SELECT uii, g.1 AS parent_uii, g.2 AS root_uii, g.3 AS path FROM ("
        " SELECT uii, argMax(tuple(parent_uii, root_uii, path), seq) AS g FROM unit_genealogy GROUP BY uii)"
    )
    got = {r["uii"]: (r["parent_uii"], r["root_uii"], tuple(r["path"])) for r in rows}
    want = {u: (g.parent[u], g.root(u), g.path[u]) for u in g.units if u not in g.cyclic}
    missing = sorted(set(want) - set(got))
    wrong = sorted(u for u in want if u in got and got[u] != want[u])
    result.details["genealogy_units"] = len(want)
    if missing or wrong:
        result.details["genealogy_wrong_sample"] = [(u, got.get(u), want[u]) for u in (missing + wrong)[:5]]
        result.fail(f"genealogy differs from the oracle: {len(missing)} units missing, {len(wrong)} wrong")
    else:
        result.details["genealogy"] = "equals the oracle"


# ----------------------------------------------------------------------------- waiting


def landed_within(pipe: Pipeline, ids: Iterable[str], timeout: float = 600.0) -> float | None:
    """Seconds until the store holds every event id of ``ids`` (None after ``timeout``)."""
    want = set(ids)
    return wait_until(lambda: want <= landed_ids(pipe.store, pipe.topic), timeout)


def wait_until(cond: Callable[[], bool], timeout: float, every: float = 0.5) -> float | None:
    """Seconds until ``cond()`` held, or None after ``timeout``."""
    t0 = time.monotonic()
    while True:
        try:
            if cond():
                return time.monotonic() - t0
        except Exception as exc:  # noqa: BLE001 - a store or broker that is away: not yet
            log(f"(waiting: {type(exc).__name__}: {str(exc)[:160]})")
        if time.monotonic() - t0 > timeout:
            return None
        time.sleep(every)


def wait_caught_up(
    pipe: Pipeline,
    ids: Iterable[str],
    timeout: float = 600.0,
    quiet: float = 2.0,
    progress_every: float = 10.0,
) -> float | None:
    """Seconds until the store holds every id in ``ids`` and both consumer groups have had no
    lag for ``quiet`` seconds (the genealogy caught up too); None on timeout."""
    want = set(ids)
    t0 = time.monotonic()
    zero_since: float | None = None
    next_log = t0 + progress_every
    have = 0
    lag: dict[str, int] | None = None
    while time.monotonic() - t0 < timeout:
        lag = pipe.lag()
        if lag is not None and lag["streams"] == 0 and lag["sink"] == 0:
            try:
                have = len(landed_ids(pipe.store, pipe.topic) & want)
            except Exception as exc:  # noqa: BLE001
                log(f"(store not readable yet: {exc})")
                have = -1
            if have == len(want):
                zero_since = zero_since or time.monotonic()
                if time.monotonic() - zero_since >= quiet:
                    return time.monotonic() - t0 - quiet
            else:
                zero_since = None
        else:
            zero_since = None
        if time.monotonic() >= next_log:
            next_log += progress_every
            log(f"  waiting for the pipeline: lag {lag}, {have:,} of {len(want):,} events in the store")
        time.sleep(0.5)
    log(f"  not caught up after {timeout:.0f}s: lag {lag}")
    return None


def sink_figures(pipe: Pipeline) -> dict[str, Any]:
    """The current sink's counters worth a look after a fault, and the parts' restarts."""
    server = pipe.server
    out: dict[str, Any] = {}
    if server is None:
        return out
    sink = server.sink
    if sink is not None:
        st = sink.stats
        for k in (
            "events_landed", "duplicates_skipped", "replayed_skipped", "undecodable_skipped", "conflicts",
            "quarantined", "kafka_retries", "store_retries", "commit_retries", "commit_failures",
            "dead_letters_by_reference",
        ):  # fmt: skip
            out[k] = getattr(st, k)
        out["ledger_gap"] = dict(sink.ledger_gap())
    out["restarts"] = {name: p.restarts for name, p in server.parts().items()}
    return out


def _admin(bootstrap: str) -> Any:
    from confluent_kafka.admin import AdminClient

    return AdminClient(
        {"bootstrap.servers": bootstrap, "socket.connection.setup.timeout.ms": 5000, "log_level": 0}
    )


def end_offsets(bootstrap: str, topic: str, timeout: float = 10.0) -> dict[tuple[str, int], int]:
    """(topic, partition) -> end offset, with a fresh admin client."""
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import OffsetSpec

    admin = _admin(bootstrap)
    meta = admin.list_topics(topic, timeout=timeout).topics[topic]
    tps = [TopicPartition(topic, p) for p in meta.partitions]
    res = admin.list_offsets({tp: OffsetSpec.latest() for tp in tps}, request_timeout=timeout)
    return {(tp.topic, tp.partition): f.result(timeout).offset for tp, f in res.items()}


def committed_reach(
    bootstrap: str, group: str, ends: dict[tuple[str, int], int], timeout: float = 10.0
) -> bool:
    """Has ``group`` committed at least ``ends`` on every partition? (fresh admin client)"""
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition

    if not ends:
        return True
    tps = [TopicPartition(t, p) for t, p in ends]
    admin = _admin(bootstrap)  # held until the answer: a collected client never completes its futures
    fut = admin.list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group, tps)], request_timeout=timeout
    )
    got = {
        (tp.topic, tp.partition): tp.offset
        for tp in next(iter(fut.values())).result(timeout).topic_partitions
    }
    return all(got.get(k, -1) >= v for k, v in ends.items() if v > 0)
