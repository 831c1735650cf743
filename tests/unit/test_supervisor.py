"""Supervision and derived health (traceline.supervisor), no broker: parts that die are rebuilt
with back-off, crash loops are named, stalls are seen, and health is never "ok" by default."""

from __future__ import annotations

import threading
import time
from typing import Any

from traceline.supervisor import Backoff, PartState, ProgressWatch, SupervisedThread, derive_health


class Flaky:
    """Dies (raises) on its first ``deaths`` runs, then runs until stopped."""

    built = 0

    def __init__(self, deaths: int) -> None:
        Flaky.built += 1
        self.n = Flaky.built
        self.deaths = deaths
        self._stop = threading.Event()

    def run(self) -> None:
        if self.n <= self.deaths:
            raise RuntimeError(f"commit failed: waiting for coordinator (run {self.n})")
        self._stop.wait(30)

    def stop(self) -> None:
        self._stop.set()


def _wait(pred: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return False


def test_a_dying_part_is_rebuilt_with_back_off_and_never_silently() -> None:
    Flaky.built = 0
    sup = SupervisedThread("sink", lambda: Flaky(2), backoff=Backoff(first=0.05, cap=0.2)).start()
    try:
        assert _wait(lambda: sup.status.restarts == 2 and sup.status.state == "running")
        assert sup.part.n == 3  # a new part each time
        assert "waiting for coordinator (run 2)" in (sup.status.last_error or "")
        assert not sup.status.crash_looping  # 2 deaths < 3
    finally:
        sup.stop()
    assert sup.status.state == "stopped"


def test_a_crash_loop_is_named_and_still_restarted() -> None:
    Flaky.built = 0
    sup = SupervisedThread("alert engine", lambda: Flaky(5), backoff=Backoff(first=0.01, cap=0.02)).start()
    try:
        assert _wait(lambda: sup.status.restarts >= 3)
        assert sup.status.crash_looping
        health = derive_health(
            {"alert engine": sup.status}, stalled={}, store_error=None, ledger_gap={}, lag={}, lag_error=None
        )
        assert health["status"] == "failing" and "crash-looping" in health["problems"][0]
        assert _wait(lambda: sup.status.state == "running" and sup.status.restarts == 5)
    finally:
        sup.stop()


def test_a_part_that_returns_while_it_should_run_is_restarted() -> None:
    class Quitter:
        def run(self) -> None:
            return

        def stop(self) -> None:
            pass

    sup = SupervisedThread("sink", Quitter, backoff=Backoff(first=0.01, cap=0.01)).start()
    try:
        assert _wait(lambda: sup.status.restarts >= 2)
        assert sup.status.last_error == "returned while it should be running"
    finally:
        sup.stop()


def test_back_off_grows_and_resets_after_a_healthy_run() -> None:
    b = Backoff(first=1, cap=8, healthy_after=100)
    assert [b.after_run(0) for _ in range(5)] == [1, 2, 4, 8, 8]
    assert b.after_run(200) == 1


def test_a_stall_is_lag_that_does_not_shrink_while_nothing_lands() -> None:
    w = ProgressWatch(stall_after=0.05)
    w.observe(100, 0)
    time.sleep(0.06)
    w.observe(100, 0)
    assert w.stalled
    w.observe(100, 5)  # something landed
    assert not w.stalled
    w.observe(0, 5)  # caught up
    time.sleep(0.06)
    w.observe(0, 5)
    assert not w.stalled and w.stalled_for == 0.0


def test_health_is_derived_from_every_part() -> None:
    ok = PartState("sink", state="running")
    args: dict[str, Any] = {
        "stalled": {},
        "store_error": None,
        "ledger_gap": {},
        "lag": {"sink": 0},
        "lag_error": None,
    }
    assert derive_health({"sink": ok}, **args)["status"] == "ok"
    restarting = PartState("sink", state="restarting", last_error="boom")
    assert derive_health({"sink": restarting}, **args)["status"] == "degraded"
    stopped = PartState("sink", state="stopped")
    assert derive_health({"sink": stopped}, **args)["status"] == "failing"
    assert derive_health({"sink": ok}, **{**args, "stalled": {"sink": 75.0}})["status"] == "failing"
    assert derive_health({"sink": ok}, **{**args, "store_error": "disk full"})["status"] == "failing"
    gap = derive_health({"sink": ok}, **{**args, "ledger_gap": {3: 2}})
    assert gap["status"] == "failing" and "ledger gap" in gap["problems"][0]


def test_a_worker_exit_that_a_restart_cannot_fix_is_not_restarted(tmp_path: Any) -> None:
    import sys

    from traceline.supervisor import SupervisedProcess

    proc = SupervisedProcess(
        "stream worker",
        [sys.executable, "-c", "raise SystemExit(78)"],
        {},
        tmp_path / "w.log",
        backoff=Backoff(first=0.01),
        final_exit_codes={78: "reset the local state"},
    )
    proc.start()
    assert proc.proc is not None
    proc.proc.wait(10)
    proc.check()
    proc.check()
    assert proc.status.state == "failed" and proc.restarts == 0
    assert "reset the local state" in (proc.status.last_error or "")
    health = derive_health(
        {"stream worker": proc.status}, stalled={}, store_error=None, ledger_gap={}, lag={}, lag_error=None
    )
    assert health["status"] == "failing" and "not restarted" in health["problems"][0]


def test_a_lag_that_cannot_be_read_claims_no_stall_from_before() -> None:
    w = ProgressWatch(stall_after=0.05)
    w.observe(100, 0)
    time.sleep(0.06)
    w.forget()  # the broker did not answer: health says "lag unavailable", not "stalled"
    assert not w.stalled
    w.observe(100, 0)  # readable again: the watch starts over
    assert not w.stalled
    time.sleep(0.06)
    w.observe(100, 0)
    assert w.stalled
