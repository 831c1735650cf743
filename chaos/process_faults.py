"""Process faults: ``traceline serve`` SIGKILLed and started again, the faust worker child
SIGKILLed (three times), the alert engine's poll raising once."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from chaos.harness import (
    Ctx,
    HealthSampler,
    Pipeline,
    Result,
    committed_reach,
    end_offsets,
    fresh_group_lag,
    genealogy_check,
    http_health,
    log,
    measure,
    pipeline_settings,
    sink_figures,
    wait_caught_up,
    wait_until,
)
from chaos.load import Plant, PublisherProcess

__all__ = ["serve_kill", "worker_kill", "alert_crash"]

PUBLISH_SECONDS = 20.0
RESTART_AFTER = 3.0  # seconds between the SIGKILL of serve and its new start
# a restarted thread or child is "restarting" for its first back-off only (1 s): health is
# sampled faster than every second in those scenarios, or a correct "degraded" could be missed
FAST_SAMPLING = 0.2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


# ----------------------------------------------------------------------------- serve SIGKILL


def _admin_token(settings: Any) -> str | None:
    """An administrator's API token in the run's token file (the details of ``/health`` are
    for administrators); None when this traceline has no API tokens."""
    try:
        from traceline.auth import TokenStore
    except ImportError:
        return None
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    _rec, token = TokenStore(settings.tokens_path).create("chaos", "administrator", "*")
    return str(token)


class _Serve:
    """``python -m traceline.cli serve`` as a subprocess on the run's data dir and topics."""

    def __init__(self, ctx: Ctx, prefix: str) -> None:
        self.ctx = ctx
        self.data_dir = ctx.work / "data"
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRACELINE_")}
        env.update(
            TRACELINE_DATA_DIR=str(self.data_dir),
            TRACELINE_KAFKA_TOPIC_PREFIX=prefix,
            TRACELINE_KAFKA_PARTITIONS="6",
            TRACELINE_KAFKA_REPLICATION="1",
        )
        self.env = env
        self.topic = f"{prefix}events"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.token = _admin_token(pipeline_settings(self.data_dir, prefix))
        self.health = http_health(self.url, self.token)

    def start(self) -> None:
        self.starts += 1
        cmd = [
            sys.executable, "-m", "traceline.cli", "serve", "--data-dir", str(self.data_dir),
            "--bootstrap", self.ctx.bootstrap, "--topic", self.topic, "--port", str(self.port),
        ]  # fmt: skip
        with (self.ctx.work / f"serve-{self.starts}.log").open("ab") as logf:
            self.proc = subprocess.Popen(cmd, env=self.env, stdout=logf, stderr=subprocess.STDOUT)
        log(f"started `traceline serve` (pid {self.proc.pid}) on {self.url}")

    def wait_up(self, timeout: float = 180.0) -> bool:
        get = self.health

        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited with {self.proc.returncode}")
            try:
                return bool(get().get("parts", {}).get("sink", {}).get("state") == "running")
            except OSError:
                return False

        return wait_until(up, timeout, 0.5) is not None

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self, timeout: float = 90.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)


def serve_kill(ctx: Ctx) -> Result:
    """``traceline serve`` runs as a subprocess while a publisher publishes at a steady pace;
    it is SIGKILLed when a third of the plant landed and started again 3 s later (its faust
    child is left to notice by itself). Health is read over HTTP (``unreachable`` while it is
    dead). The store is read after a final graceful stop (one process owns the embedded store)."""
    from sinks.store import Store

    res = Result(ctx.label)
    plant = Plant(ctx.events, ctx.seed + 200)
    prefix = f"c{uuid.uuid4().hex[:8]}."
    serve = _Serve(ctx, prefix)
    settings = pipeline_settings(serve.data_dir, prefix)
    sampler = HealthSampler(serve.health, ctx.health_every)
    pub: PublisherProcess | None = None
    try:
        serve.start()
        if not serve.wait_up():
            raise RuntimeError(f"serve did not come up (see {ctx.work}/serve-1.log)")
        sampler.start()
        rate = max(200.0, len(plant.ids) / PUBLISH_SECONDS)
        log(f"publishing {len(plant.ids):,} events at {rate:,.0f}/s")
        pub = PublisherProcess(
            ctx.bootstrap, ctx.work, [(e, serve.topic, k, v) for e, k, v in plant.rows], rate=rate
        )
        pub.start()

        def landed() -> int:
            return int((sampler.last.get("sink") or {}).get("events_landed") or 0)

        wait_until(lambda: landed() >= len(plant.ids) // 3, 300, 0.2)
        assert serve.proc is not None
        workers = _children(serve.proc.pid)
        log(f"SIGKILL serve (pid {serve.proc.pid}; {landed():,} events landed; worker pids {workers})")
        sampler.mark("fault_start")
        serve.kill()
        time.sleep(RESTART_AFTER)
        old_alive = [p for p in workers if _alive(p)]
        res.details["old_worker_alive_at_restart"] = bool(old_alive)
        serve.start()
        # the fault (no server) ends here: whatever answers from now on is the new server
        sampler.mark("fault_end")
        if not serve.wait_up():
            raise RuntimeError(f"serve did not come back (see {ctx.work}/serve-2.log)")
        t_old = wait_until(lambda: not any(_alive(p) for p in workers), 60, 0.2)
        res.details["old_worker_gone_after_s"] = round(t_old, 1) if t_old is not None else None
        if t_old is None:
            res.fail(f"the killed server's faust worker {workers} still runs 60 s later")
        ends = end_offsets(ctx.bootstrap, serve.topic)
        log("serve is back; waiting until its sink committed what was published before")
        rec = wait_until(lambda: committed_reach(ctx.bootstrap, settings.sink_group, ends), 600)
        res.recovered(sampler, rec, "the restarted server did not land the backlog within 600 s")
        res.publisher(pub.join())

        def no_lag() -> bool:
            t = settings.topics
            return (
                fresh_group_lag(ctx.bootstrap, settings.app_id, [t.commands]) == 0
                and fresh_group_lag(ctx.bootstrap, settings.sink_group, [t.events, t.changes, t.deadletter])
                == 0
            )

        def quiet() -> bool:  # no lag, and still none 2 s later
            if not no_lag():
                return False
            time.sleep(2.0)
            return no_lag()

        caught = wait_until(quiet, 600, 1.0)
        res.details["caught_up_s"] = round(caught, 1) if caught is not None else None
        if caught is None:
            res.fail("the pipeline did not catch up within 600 s")
        sampler.settle(res)
        h = sampler.last
        res.details["sink"] = {
            k: (h.get("sink") or {}).get(k)
            for k in (
                "events_landed",
                "duplicates_skipped",
                "replayed_skipped",
                "kafka_retries",
                "store_retries",
                "commit_failures",
            )
        }
        res.details["restarts"] = {k: v.get("restarts") for k, v in (h.get("parts") or {}).items()}
        sampler.stop()
        sampler.summarize(res, must_notice=True)
        code = serve.stop()
        res.details["serve_exit"] = code
        store = Store.open(
            settings.clickhouse_dsn, settings.clickhouse.database, uncompressed_cache_mb=0, create=False
        )
        try:
            measure(store, serve.topic, plant.ids, res)
            if caught is not None:
                genealogy_check(store, plant.events, res)
        finally:
            store.close()
        return res
    finally:
        sampler.stop()
        serve.stop(30)
        if pub is not None and pub.proc.is_alive():
            pub.proc.terminate()
        from chaos.harness import delete_topics

        delete_topics(ctx.bootstrap, prefix)


# ----------------------------------------------------------------------------- worker SIGKILL


def worker_kill(ctx: Ctx, kills: int = 3) -> Result:
    """The faust genealogy worker (the server's child) is SIGKILLed while it applies commands,
    ``kills`` times, each time once the restarted worker is producing genealogy changes again."""
    res = Result(ctx.label)
    plant = Plant(ctx.events, ctx.seed + 300)
    pipe = Pipeline(ctx, health_every=min(ctx.health_every, FAST_SAMPLING))
    try:
        server = pipe.start()
        rate = max(200.0, len(plant.ids) / PUBLISH_SECONDS)
        pub = PublisherProcess(ctx.bootstrap, ctx.work, plant.outbox_rows(pipe.topic), rate=rate).start()
        assert pipe.sampler is not None
        lags = []
        for i in range(kills):
            seen = pipe.sink_stat("changes_landed")
            busy = wait_until(
                lambda s=seen: server.worker.alive and pipe.sink_stat("changes_landed") > s, 120, 0.1
            )  # type: ignore[misc]
            if busy is None:
                res.note(
                    f"kill {i + 1}: the worker produced no genealogy change for 120 s; killing it anyway"
                )
            lag = pipe.lag()
            lags.append(lag)
            proc = server.worker.proc
            log(f"kill {i + 1}/{kills}: SIGKILL the faust worker (pid {proc.pid}; lag {lag})")
            pipe.sampler.mark("fault_start")
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            back = wait_until(lambda n=i: server.worker.restarts > n and server.worker.alive, 120, 0.1)  # type: ignore[misc]
            pipe.sampler.mark("fault_end")
            if back is None:
                res.fail(f"kill {i + 1}: the supervisor did not restart the worker within 120 s")
                break
            log(f"  restarted after {back:.1f}s")
        res.details["lag_at_kills"] = lags
        figures = pub.join()
        res.details["publisher"] = figures
        caught = wait_caught_up(pipe, plant.ids, timeout=600)
        res.recovered(pipe.sampler, caught, "the pipeline did not catch up within 600 s of the last restart")
        res.details["sink"] = sink_figures(pipe)
        measure(pipe.store, pipe.topic, plant.ids, res)
        if caught is not None:
            genealogy_check(pipe.store, plant.events, res)
        # three deaths within crash_window (300 s) are "crash-looping": failing, by design, until
        # the window has passed; so health is not required to be ok again right after
        pipe.sampler.settle(res, timeout=30, required=False)
        pipe.sampler.summarize(res, must_notice=True, steady=False)  # ok between the kills is right
        return res
    finally:
        pipe.close()


# ----------------------------------------------------------------------------- alert engine crash


def alert_crash(ctx: Ctx) -> Result:
    """The running alert engine's ``poll_once`` raises once (injected through the Server
    object); its supervisor must rebuild it, health must say so, and no alert may be lost or
    doubled by the re-read of the batch it died on."""
    res = Result(ctx.label)
    plant = Plant(ctx.events, ctx.seed + 400)
    pipe = Pipeline(ctx, health_every=min(ctx.health_every, FAST_SAMPLING))
    try:
        server = pipe.start()
        rate = max(200.0, len(plant.ids) / PUBLISH_SECONDS)
        pub = PublisherProcess(ctx.bootstrap, ctx.work, plant.outbox_rows(pipe.topic), rate=rate).start()
        if (
            wait_until(lambda: server.alerts is not None and server.alerts.stats.batches > 2, 180, 0.1)
            is None
        ):
            raise RuntimeError("the alert engine never processed a batch")
        engine = server.alerts
        original = engine.poll_once
        crashed: list[float] = []

        def boom() -> Any:
            engine.poll_once = original  # once
            crashed.append(time.monotonic())
            raise RuntimeError("chaos: injected crash of the alert engine's poll")

        assert pipe.sampler is not None
        log(f"injecting a crash into the alert engine ({engine.stats.batches} batches done)")
        engine.poll_once = boom
        if wait_until(lambda: bool(crashed), 60, 0.05) is None:
            raise RuntimeError("the alert engine never polled again")
        pipe.sampler.marks["fault_start"] = crashed[0]
        ends = end_offsets(ctx.bootstrap, pipe.topic)
        rebuilt = wait_until(
            lambda: server.alerts is not engine and server.parts()["alert engine"].state == "running",
            120,
            0.05,
        )
        pipe.sampler.mark("fault_end")
        if rebuilt is None:
            res.fail("the alert engine was not rebuilt within 120 s")
        log("alert engine rebuilt; waiting until it committed what was published before the crash")
        rec = wait_until(lambda: committed_reach(ctx.bootstrap, pipe.settings.alerts_group, ends), 600)
        res.recovered(pipe.sampler, rec, "the rebuilt alert engine did not catch up within 600 s")
        res.details["publisher"] = pub.join()
        caught = wait_caught_up(pipe, plant.ids, timeout=600)
        if caught is None:
            res.fail("the pipeline did not catch up within 600 s")
        wait_until(lambda: fresh_group_lag(ctx.bootstrap, pipe.settings.alerts_group, [pipe.topic]) == 0, 300)
        time.sleep(3)  # the last alerts land
        res.details["sink"] = sink_figures(pipe)
        res.details["alert_engine"] = server.health()["parts"]["alert engine"]
        measure(pipe.store, pipe.topic, plant.ids, res)
        if caught is not None:
            genealogy_check(pipe.store, plant.events, res)
        _n, rows = pipe.store.query_rows(
            "SELECT count(), uniqExact(alert_id, version), uniqExact(alert_id) FROM alerts"
        )
        n, versions, alerts = (int(x) for x in rows[0])
        res.details["alerts"] = {"rows": n, "distinct_versions": versions, "distinct_alerts": alerts}
        if n != versions:
            res.fail(f"alerts doubled by the restart: {n} rows for {versions} distinct (alert_id, version)")
        pipe.sampler.settle(res)
        pipe.sampler.summarize(res, must_notice=True)
        return res
    finally:
        pipe.close()
