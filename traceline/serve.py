"""``traceline serve``: stream processors, the sink and the query API, together.

In embedded mode (``chdb://``) one process owns the store, so this process holds it: the
sink consumer runs in a thread and the API in the main thread, both on one store handle
behind a lock. The faust worker (which never touches ClickHouse) runs as a supervised child
process, so it uses the second core and a crash of it is restarted, not fatal.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from schemas.serde import AvroSerde
from schemas.topics import TopicNames
from sinks.consumer import SinkWorker
from sinks.store import Store
from streams.topics import ensure_topics
from traceline.orphans import PARENT_PID_ENV
from traceline.settings import Settings

__all__ = ["Server", "ServeOptions", "serve_state", "worker_env"]

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


def worker_env(settings: Settings, bootstrap: str) -> dict[str, str]:
    """Environment for a faust worker child with the same settings as this process."""
    env = dict(os.environ)
    env.update(
        {
            "TRACELINE_KAFKA_BOOTSTRAP": bootstrap,
            "TRACELINE_DATA_DIR": str(settings.data_dir),
            "TRACELINE_KAFKA_EVENTS_TOPIC": settings.kafka.events_topic,
            "TRACELINE_KAFKA_PARTITIONS": str(settings.kafka.partitions),
            "TRACELINE_KAFKA_REPLICATION": str(settings.kafka.replication),
            "TRACELINE_KAFKA_TOPIC_PREFIX": settings.kafka.topic_prefix,
        }
    )
    if settings.schema_registry.url:
        env["TRACELINE_SCHEMA_REGISTRY_URL"] = settings.schema_registry.url
    return env


def serve_state(data_dir: Path) -> dict[str, Any] | None:
    """The running server's state file (API URL, pid), if a server is alive."""
    path = data_dir / "serve.json"
    try:
        state = json.loads(path.read_text())
        os.kill(int(state["pid"]), 0)
    except (OSError, ValueError, KeyError):
        return None
    return dict(state)


class WorkerProcess:
    """A supervised ``python -m streams.worker worker`` child."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        logf = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streams.worker", "worker", "-l", "info", "--without-web"],
            # its own session (a terminal's Ctrl-C reaches only the server, which stops it);
            # it stops by itself if this process dies without stopping it (traceline.orphans)
            env={**self.env, PARENT_PID_ENV: str(os.getpid())},
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
        self.alerts: Any = None  # sinks.alerts.AlertEngine
        self.notifier: Any = None  # traceline.notify.Notifier
        self.worker: WorkerProcess | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self.started_at = datetime.now(UTC)
        self.sink_error: str | None = None
        self.alerts_error: str | None = None
        self._stopped = False

    def start(self) -> None:
        s, o = self.settings, self.opts
        ensure_topics(
            o.bootstrap, self.topics, partitions=s.kafka.partitions, replication=s.kafka.replication
        )
        if o.with_worker:
            self.worker = WorkerProcess(worker_env(s, o.bootstrap), s.data_dir / "streams.log")
            self.worker.start()
        if o.with_sink or o.with_api:
            self.store = Store.open(s.clickhouse_dsn, s.clickhouse.database)
        if o.with_sink:
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
            t = threading.Thread(target=self._run_sink, name="sink", daemon=True)
            t.start()
            self._threads.append(t)
            if o.with_alerts:
                self._start_alerts()
        t = threading.Thread(target=self._supervise, name="supervisor", daemon=True)
        t.start()
        self._threads.append(t)

    def _run_sink(self) -> None:
        assert self.sink is not None
        try:
            self.sink.run()
        except Exception as exc:  # noqa: BLE001 - reported in /health and the log, not swallowed
            self.sink_error = f"{type(exc).__name__}: {exc}"
            log.exception("the ClickHouse sink stopped")

    def _start_alerts(self) -> None:
        from sinks.alerts import AlertEngine, sink_positions
        from streams.alerts import AlertRules
        from traceline.notify import Notifier, NotifySettings

        assert self.store is not None and self.sink is not None
        notifier = Notifier(NotifySettings())
        self.notifier = notifier.start() if notifier.enabled else None
        self.alerts = AlertEngine(
            self.opts.bootstrap,
            self._reader(),
            topics=self.topics,
            rules=AlertRules(),
            group_id=f"{self.settings.kafka.topic_prefix}traceline-alerts",
            sink_group=self.settings.sink_group,
            landed=sink_positions(self.sink),
            notifier=self.notifier,
        )
        t = threading.Thread(target=self._run_alerts, name="alerts", daemon=True)
        t.start()
        self._threads.append(t)

    def _run_alerts(self) -> None:
        try:
            self.alerts.run()
        except Exception as exc:  # noqa: BLE001 - reported in /health and the log
            self.alerts_error = f"{type(exc).__name__}: {exc}"
            log.exception("the alert engine stopped")

    def _supervise(self) -> None:
        while not self._stop.wait(2.0):
            if self.worker is not None:
                self.worker.check()

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
        from traceline.lag import pipeline_lag

        s = self.settings
        return pipeline_lag(self.opts.bootstrap, self.topics, app_id=s.app_id, sink_group=s.sink_group)

    def write_state(self, url: str) -> None:
        path = self.settings.data_dir / "serve.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps({"pid": os.getpid(), "url": url, "started_at": self.started_at.isoformat()})
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
        s = self.settings
        reader = Store.open(s.clickhouse_dsn, s.clickhouse.database)
        self._readers.append(reader)
        return reader

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
        try:
            (self.settings.data_dir / "serve.json").unlink()
        except FileNotFoundError:
            pass

    def run_forever(self) -> None:
        """Serve the API (or just wait) until SIGINT/SIGTERM, then stop everything."""
        url = f"http://{self.opts.host}:{self.opts.port}"
        self.write_state(url)
        try:
            if self.opts.with_api and self.store is not None:
                reader = self._reader()
                import uvicorn

                from traceline.api import create_api

                api = create_api(reader, health=self.health, lag=self.lag)
                from traceline.cli_alerts import add_alert_routes

                add_alert_routes(api, reader)
                uvicorn.run(api, host=self.opts.host, port=self.opts.port, log_level="warning")
            else:
                signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
                while not self._stop.wait(1.0):
                    pass
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()


def wait_until(predicate: Any, timeout: float, interval: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
