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
import subprocess
import sys
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvicorn

from queries.alerts import AlertEvaluator
from schemas.kafka import ensure_topics, pipeline_lag
from schemas.serde import AvroSerde
from schemas.topics import TopicNames
from sinks.ingest import SinkWorker
from sinks.store import Store
from streams.alert_engine import AlertEngine, sink_positions
from streams.notify import Notifier
from traceline.api import create_api
from traceline.backend import clear_serve_state, open_store, write_serve_state
from traceline.settings import Settings

__all__ = ["Server", "ServeOptions", "WorkerProcess"]

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


class WorkerProcess:
    """A supervised ``python -m traceline.worker worker`` child."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        logf = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "traceline.worker", "worker", "-l", "info", "--without-web"],
            # its own session (a terminal's Ctrl-C reaches only the server, which stops it);
            # it stops by itself if this process dies without stopping it (traceline.orphans)
            env=self.env,
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        logf.close()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check(self) -> None:
        """Restart the worker if it died (it resumes from committed offsets and its table)."""
        if self.proc is not None and self.proc.poll() is not None:
            log.warning("stream worker exited with %s; restarting", self.proc.returncode)
            self.restarts += 1
            self.start()

    def stop(self, timeout: float = 20.0) -> None:
        if not self.alive or self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


class Server:
    """Everything ``traceline serve`` runs. ``start()`` returns; ``stop()`` ends it all."""

    def __init__(self, settings: Settings, opts: ServeOptions) -> None:
        self.settings = settings
        self.opts = opts
        self.topics: TopicNames = settings.topics
        self.store: Store | None = None  # the sink's handle (and the API's when there is no sink)
        self._readers: list[Store] = []  # own handles of the alert engine and the API (see _reader)
        self.sink: SinkWorker | None = None
        self.alerts: AlertEngine | None = None
        self.notifier: Notifier | None = None
        self.worker: WorkerProcess | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self.started_at = datetime.now(UTC)
        self.sink_error: str | None = None
        self.alerts_error: str | None = None
        self._stopped = False

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
            self._start_sink()
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
        self.worker = WorkerProcess(env, s.data_dir / "streams.log")
        self.worker.start()

    def _start_sink(self) -> None:
        s, o = self.settings, self.opts
        assert self.store is not None
        self.sink = SinkWorker(
            o.bootstrap,
            self.store,
            topics=self.topics,
            group_id=s.sink_group,
            batch_size=o.sink_batch_size,
            batch_seconds=o.sink_batch_seconds,
            serde=AvroSerde(registry_url=s.schema_registry.url, topic=self.topics.events),
        )
        self._thread("sink", self._run_sink)

    def _run_sink(self) -> None:
        assert self.sink is not None
        try:
            self.sink.run()
        except Exception as exc:  # noqa: BLE001 - reported in /health and the log, not swallowed
            self.sink_error = f"{type(exc).__name__}: {exc}"
            log.exception("the ClickHouse sink stopped")

    def _start_alerts(self) -> None:
        s = self.settings
        assert self.sink is not None
        notifier = Notifier(s.notify)
        self.notifier = notifier.start() if notifier.enabled else None
        self.alerts = AlertEngine(
            self.opts.bootstrap,
            AlertEvaluator(self._reader(), s.alert_rules),
            topics=self.topics,
            group_id=s.alerts_group,
            sink_group=s.sink_group,
            landed=sink_positions(self.sink),
            notifier=self.notifier,
        )
        self._thread("alerts", self._run_alerts)

    def _run_alerts(self) -> None:
        assert self.alerts is not None
        try:
            self.alerts.run()
        except Exception as exc:  # noqa: BLE001 - reported in /health and the log
            self.alerts_error = f"{type(exc).__name__}: {exc}"
            log.exception("the alert engine stopped")

    def _supervise(self) -> None:
        while not self._stop.wait(2.0):
            if self.worker is not None:
                self.worker.check()

    # -- what the API reports --------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return {
            "started_at": self.started_at.isoformat(),
            "worker_alive": self.worker.alive if self.worker else None,
            "worker_restarts": self.worker.restarts if self.worker else 0,
            "sink": self.sink.stats.as_dict() if self.sink else None,
            "sink_error": self.sink_error,
            "alerts": self.alerts.stats.as_dict() if self.alerts else None,
            "alerts_error": self.alerts_error,
        }

    def lag(self) -> dict[str, int]:
        s = self.settings
        return pipeline_lag(self.opts.bootstrap, self.topics, app_id=s.app_id, sink_group=s.sink_group)

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
        if self.alerts is not None:
            self.alerts.stop()
        if self.sink is not None:
            self.sink.stop()
        for t in self._threads:
            t.join(timeout=30)
        if self.notifier is not None:
            self.notifier.stop()
        if self.worker is not None:
            self.worker.stop()
        for r in self._readers:
            r.close()
        if self.store is not None:
            self.store.close()
        clear_serve_state(self.settings.data_dir)

    def run_forever(self) -> None:
        """Serve the API (or just wait) until SIGINT/SIGTERM, then stop everything."""
        url = f"http://{self.opts.host}:{self.opts.port}"
        write_serve_state(self.settings.data_dir, url, self.started_at)
        try:
            if self.opts.with_api and self.store is not None:
                api = create_api(self._reader(), health=self.health, lag=self.lag)
                uvicorn.run(api, host=self.opts.host, port=self.opts.port, log_level="warning")
            else:
                signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
                while not self._stop.wait(1.0):
                    pass
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()
