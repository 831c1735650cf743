"""``traceline serve``: the composition root. What runs, in this order (``Server.start``):

1. the topics (``schemas.kafka.ensure_topics``: created with the configured partition count, or
   checked against it);
2. the faust genealogy writer (``traceline.worker``, built on ``streams.app``) as a supervised
   child process: it uses the second core, a crash of it is restarted, and it stops by itself
   when this process dies (``traceline.orphans``);
3. the store (``sinks.store.Store``): in embedded mode (``chdb://``) one process owns it, so
   this process holds it for everything below;
4. the ingest sink (``sinks.ingest.SinkWorker``, which also runs the intake) in a thread;
5. the alert engine (``streams.alert_engine.AlertEngine`` over ``queries.alerts.AlertEvaluator``
   with the rules from the settings) in a thread, with its notifier (``streams.notify``);
6. the HTTP API (``traceline.api``) in the main thread, until SIGINT/SIGTERM; then everything
   stops in the reverse order.

The alert engine and the API read through store handles of their own (``Server._reader``), so
a slow query never holds the sink.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import uvicorn
from fastapi import FastAPI

from queries.alerts import AlertEvaluator
from schemas import heap
from schemas.kafka import ensure_topics, pipeline_lag
from schemas.serde import AvroSerde
from schemas.topics import TopicNames
from sinks.audit import AuditLog, server_id_for
from sinks.chain import Signer, chain_key_path
from sinks.gateway_keys import GatewayKeyRegistry
from sinks.ingest import SinkWorker
from sinks.store import Store
from streams.alert_engine import AlertEngine, event_id_conflicts, sink_positions
from streams.alert_engine import ledger_gap as ledger_gap_alert
from streams.app import LOCAL_STATE_EXIT_CODE
from streams.notify import Notifier
from traceline.api import create_api
from traceline.auth import Authenticator
from traceline.backend import apply_kafka_security, clear_serve_state, open_store, write_serve_state
from traceline.settings import Settings
from traceline.supervisor import PartState, ProgressWatch, SupervisedProcess, SupervisedThread, derive_health

__all__ = ["Server", "ServeOptions"]

log = logging.getLogger(__name__)


@dataclass
class ServeOptions:
    bootstrap: str
    host: str = "127.0.0.1"
    port: int = 8640
    with_worker: bool = True
    with_sink: bool = True
    with_api: bool = True
    with_alerts: bool = True  # the alert engine (needs the sink in this process)
    sink_batch_size: int = 20_000
    # a batch closes after this long even while events keep coming (under a backlog it fills to
    # sink_batch_size first): 0.25 s halves the publish -> queryable p50 of 0.5 s at half load
    # (977 -> 606 ms) for ~0.06 more cores; the ingest rate is unchanged (docs/BENCHMARKS.md)
    sink_batch_seconds: float = 0.25
    stall_after: float = 60.0  # lag that has not shrunk for this long while nothing lands: stalled
    monitor_seconds: float = 2.0  # how often the consumer lag is measured for health
    lag_timeout: float = 3.0  # a lag read slower than this: the broker is unavailable (health)
    heap_trim_seconds: float = heap.TRIM_EVERY_S  # how often the C heap's free pages go back


class Server:
    """Everything ``traceline serve`` runs. ``start()`` returns; ``stop()`` ends it all."""

    def __init__(self, settings: Settings, opts: ServeOptions) -> None:
        self.settings = settings
        self.opts = opts
        self.kafka_security = apply_kafka_security(settings)  # every client below, and the worker's env
        self.topics: TopicNames = settings.topics
        self.gateway_keys = GatewayKeyRegistry(settings.gateway_keys_path)  # reread when it changes
        self.store: Store | None = None  # the sink's handle (and the API's when there is no sink)
        self._readers: list[Store] = []  # own handles of the alert engine and the API (see _reader)
        self._sink: SupervisedThread | None = None
        self._alerts: SupervisedThread | None = None
        self.notifier: Notifier | None = None
        self.audit: AuditLog | None = None  # the query audit log of the API (run_forever)
        self.worker: SupervisedProcess | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self.started_at = datetime.now(UTC)
        self._stopped = False
        # what the monitor saw (see _monitor): consumer lag, stalls, store write errors
        self._lag: dict[str, int] | None = None
        self._lag_error: str | None = None
        self._sink_watch = ProgressWatch(opts.stall_after)
        self._worker_watch = ProgressWatch(opts.stall_after)
        self.heap = heap.HeapTrims()  # the C heap's free pages given back (schemas.heap), for health

    # -- the parts, as they are now --------------------------------------------------------
    @property
    def sink(self) -> SinkWorker | None:
        """The running ingest sink (a new one after each restart)."""
        return self._sink.part if self._sink else None

    @property
    def alerts(self) -> AlertEngine | None:
        return self._alerts.part if self._alerts else None

    @property
    def sink_error(self) -> str | None:
        """Why the sink is not running now (None while it runs; its history is in health)."""
        return _down_because(self._sink)

    @property
    def alerts_error(self) -> str | None:
        return _down_because(self._alerts)

    # -- what runs, in order ------------------------------------------------------------------
    def start(self) -> None:
        s, o = self.settings, self.opts
        ensure_topics(
            o.bootstrap, self.topics, partitions=s.kafka.partitions, replication=s.kafka.replication
        )
        if o.with_worker:
            self._start_worker()
        if o.with_sink or o.with_api:
            self.store = open_store(s)
        if o.with_sink:
            self._sink = SupervisedThread("sink", self._build_sink).start()
            if o.with_alerts:
                self._start_alerts()
        self._thread("supervisor", self._supervise)

    def _thread(self, name: str, target: Any) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def _start_worker(self) -> None:
        s = self.settings
        env = s.worker_env(self.opts.bootstrap, parent_pid=os.getpid())
        argv = [sys.executable, "-m", "traceline.worker", "worker", "-l", "info", "--without-web"]
        final = {
            LOCAL_STATE_EXIT_CODE: "its local table state does not match its changelog; run "
            "`traceline worker reset-state --yes` (it is rebuilt from the changelog), then restart"
        }
        self.worker = SupervisedProcess(
            "stream worker", argv, env, s.data_dir / "streams.log", final_exit_codes=final
        )
        self.worker.start()

    def _build_sink(self) -> SinkWorker:
        s, o = self.settings, self.opts
        assert self.store is not None
        return SinkWorker(
            o.bootstrap,
            self.store,
            topics=self.topics,
            group_id=s.sink_group,
            batch_size=o.sink_batch_size,
            batch_seconds=o.sink_batch_seconds,
            serde=AvroSerde(registry_url=s.schema_registry.url, topic=self.topics.events),
            dead_letter_max_bytes=s.ingest.dead_letter_max_bytes,
            max_future_skew=timedelta(hours=s.ingest.max_future_skew_hours),
            earliest_event_time=s.ingest.earliest_event_time,
            chain_signer=Signer.load_or_create(chain_key_path(s.data_dir)),
            chain_sign_seconds=s.ingest.chain_sign_seconds,
            gateway_keys=self.gateway_keys,
            require_signed=s.ingest.require_signed,
        )

    def _landed(self) -> dict[tuple[str, int], int]:
        """What the current sink has landed (the alert engine waits for it)."""
        sink = self.sink
        return dict(sink_positions(sink)()) if sink is not None else {}

    def _landed_hash(self, event_id: str) -> int | None:
        """The content hash the current sink landed an event id with (None: not known)."""
        sink = self.sink
        return sink.landed_content_hash(event_id) if sink is not None else None

    def _start_alerts(self) -> None:
        s = self.settings
        notifier = Notifier(s.notify)
        self.notifier = notifier.start() if notifier.enabled else None
        reader = self._reader()

        def build() -> AlertEngine:
            return AlertEngine(
                self.opts.bootstrap,
                AlertEvaluator(reader, s.alert_rules),
                topics=self.topics,
                group_id=s.alerts_group,
                sink_group=s.sink_group,
                landed=self._landed,
                landed_hash=self._landed_hash,
                notifier=self.notifier,
                gateway_keys=self.gateway_keys.keys,
                require_signed=s.ingest.require_signed,
                event_times=(s.ingest.earliest_event_time, timedelta(hours=s.ingest.max_future_skew_hours)),
            )

        self._alerts = SupervisedThread("alert engine", build).start()

    def _supervise(self) -> None:
        """Restart a dead worker (after its back-off) and watch the pipeline for health; give
        the C heap's free pages back every ``heap_trim_seconds`` (``schemas.heap``)."""
        next_look = 0.0
        next_trim = time.monotonic() + self.opts.heap_trim_seconds
        while not self._stop.wait(1.0):
            if self.worker is not None:
                self.worker.check()
            if time.monotonic() >= next_look:
                next_look = time.monotonic() + self.opts.monitor_seconds
                self._monitor()
            if time.monotonic() >= next_trim:
                next_trim = time.monotonic() + self.opts.heap_trim_seconds
                heap.trim(self.heap)

    def _monitor(self) -> None:
        """Consumer lag against progress (stalls) and store write errors, for health."""
        try:
            self._lag, self._lag_error = self.lag(), None
        except Exception as exc:  # noqa: BLE001 - reported as a health problem, not raised
            self._lag, self._lag_error = None, str(exc)
        sink = self.sink
        if self._lag is not None:
            st = sink.stats if sink is not None else None
            progress = (st.events_landed + st.changes_landed + st.dead_letters_landed) if st else 0
            self._sink_watch.observe(self._lag["sink"], progress)
            self._worker_watch.observe(self._lag["streams"], 0)
        else:
            self._sink_watch.forget()
            self._worker_watch.forget()
        gap = self.ledger_gap()
        engine = self.alerts
        if engine is None:
            return
        now = datetime.now(UTC)
        for partition, n in sorted(gap.items()):
            engine.raise_alert(ledger_gap_alert(self.topics.events, int(partition), int(n), now))
        conflicts = sink.stats.conflicts if sink is not None else 0
        started = self._sink.status.started_at if self._sink is not None else None
        if conflicts and started is not None:
            engine.raise_alert(event_id_conflicts(self.topics.events, conflicts, started, now))

    # -- what the API reports --------------------------------------------------------------------
    def parts(self) -> dict[str, PartState]:
        out: dict[str, PartState] = {}
        if self.worker is not None:
            out["stream worker"] = self.worker.status
        if self._sink is not None:
            out["sink"] = self._sink.status
        if self._alerts is not None:
            out["alert engine"] = self._alerts.status
        return out

    def ledger_gap(self) -> dict[Any, int]:
        sink = self.sink
        gap = getattr(sink, "ledger_gap", None)
        return dict(gap()) if callable(gap) else {}

    def ledger(self) -> dict[str, Any]:
        sink = self.sink
        return {
            "partitions": dict(getattr(sink.stats, "ledger", {}) or {}) if sink is not None else {},
            "gap": self.ledger_gap(),
            "since": self._sink.status.started_at.isoformat()
            if self._sink and self._sink.status.started_at
            else None,
        }

    def health(self) -> dict[str, Any]:
        """The status derived from every part (``traceline.supervisor.derive_health``) and their
        details: ok, degraded (a part restarting) or failing (dead, crash-looping, stalled,
        store write errors, a ledger gap)."""
        stalled = {}
        if self._sink is not None:
            stalled["sink"] = self._sink_watch.stalled_for if self._sink_watch.stalled else 0.0
        if self.worker is not None:
            stalled["stream worker"] = self._worker_watch.stalled_for if self._worker_watch.stalled else 0.0
        derived = derive_health(
            self.parts(),
            stalled=stalled,
            store_error=self.sink.stats.store_error if self.sink is not None else None,
            ledger_gap=self.ledger_gap(),
            lag=self._lag,
            lag_error=self._lag_error,
            audit_error=self.audit.stats.last_error if self.audit is not None else None,
        )
        return {
            **derived,
            "started_at": self.started_at.isoformat(),
            "parts": {k: v.as_dict() for k, v in self.parts().items()},
            "worker_alive": self.worker.alive if self.worker else None,
            "worker_restarts": self.worker.restarts if self.worker else 0,
            "sink": self.sink.stats.as_dict() if self.sink else None,
            "sink_error": self.sink_error,
            "alerts": self.alerts.stats.as_dict() if self.alerts else None,
            "alerts_error": self.alerts_error,
            "audit": self.audit.stats.as_dict() if self.audit is not None else None,
            "heap": self.heap.as_dict(),
        }

    def lag(self) -> dict[str, int]:
        s = self.settings
        return pipeline_lag(
            self.opts.bootstrap,
            self.topics,
            app_id=s.app_id,
            sink_group=s.sink_group,
            timeout=self.opts.lag_timeout,
        )

    def _reader(self) -> Store:
        """A store handle of its own for a reader beside the sink (alert engine, API).

        Every handle serialises its own calls, so a reader sharing the sink's handle made the
        sink wait for its slowest query: one station-wide NC impact held the sink for tens of
        seconds in the ingest benchmark. chdb serves any number of handles on one engine in a
        process, concurrently (an insert returned in 12 ms during a 5.7 s query); with a
        ClickHouse server it is simply another connection. Without a sink the API shares
        ``self.store``.
        """
        assert self.store is not None
        if not self.opts.with_sink:
            return self.store
        reader = open_store(self.settings)
        self._readers.append(reader)
        return reader

    # -- the end ---------------------------------------------------------------------------------
    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._stop.set()
        if self._alerts is not None:
            self._alerts.stop()
        if self._sink is not None:
            self._sink.stop()
        for t in self._threads:
            t.join(timeout=30)
        if self.notifier is not None:
            self.notifier.stop()
        if self.worker is not None:
            self.worker.stop()
        if self.audit is not None:
            self.audit.stop()  # writes what is queued, before its store handle closes
        for r in self._readers:
            r.close()
        if self.store is not None:
            self.store.close()
        clear_serve_state(self.settings.data_dir)

    def build_api(self) -> FastAPI:
        """The HTTP API over a reader of the store, with this server's health, lag and ledger,
        its token file and its query audit log (started here, stopped with the server)."""
        assert self.store is not None, "start() first"
        reader = self._reader()
        signer = Signer.load_or_create(chain_key_path(self.settings.data_dir))
        self.audit = AuditLog(reader, server_id_for(self.settings.data_dir), signer).start()
        return create_api(
            reader,
            health=self.health,
            lag=self.lag,
            ledger=self.ledger,
            auth=Authenticator.for_settings(self.settings),
            keys_dir=self.settings.data_dir,
            audit=self.audit,
        )

    def run_forever(self) -> None:
        """Serve the API (or just wait) until SIGINT/SIGTERM, then stop everything."""
        url = f"http://{self.opts.host}:{self.opts.port}"
        write_serve_state(self.settings.data_dir, url, self.started_at)
        try:
            if self.opts.with_api and self.store is not None:
                uvicorn.run(self.build_api(), host=self.opts.host, port=self.opts.port, log_level="warning")
            else:
                signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
                while not self._stop.wait(1.0):
                    pass
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()


def _iso(v: datetime | None) -> str | None:
    return v.isoformat() if v is not None else None


def _down_because(part: SupervisedThread | None) -> str | None:
    if part is None or part.status.state == "running":
        return None
    return part.status.last_error or part.status.state
