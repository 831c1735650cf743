"""Supervision of the long-running parts of ``traceline serve``, and the health derived from them.

* :class:`SupervisedThread` runs one part (the ingest sink, the alert engine) in a thread and
  builds it again, with exponential back-off, whenever it dies (an exception) or returns while
  it should be running. A part that died ``crash_restarts`` times within ``crash_window``
  seconds is *crash-looping*: it is still restarted, and health says so.
* :class:`SupervisedProcess` does the same for a child process (the faust genealogy worker).
* :func:`derive_health` turns the parts' states, the consumer lag seen over time, store write
  errors and the sink's ledger into one status: ``ok``, ``degraded`` (a part is restarting)
  or ``failing`` (a part is dead, crash-looping or stalled; the store refuses writes; the
  ledger has a gap). Never "ok" by default: every part contributes.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "Part",
    "PartState",
    "SupervisedThread",
    "SupervisedProcess",
    "Backoff",
    "ProgressWatch",
    "derive_health",
]

log = logging.getLogger(__name__)


class Part(Protocol):
    def run(self) -> None: ...

    def stop(self) -> None: ...


@dataclass
class Backoff:
    """Exponential back-off between restarts, reset after a run that lasted ``healthy_after`` s."""

    first: float = 1.0
    cap: float = 60.0
    healthy_after: float = 120.0
    _next: float = 0.0

    def after_run(self, lasted: float) -> float:
        if lasted >= self.healthy_after or self._next == 0.0:
            self._next = self.first
        else:
            self._next = min(self.cap, self._next * 2)
        return self._next


@dataclass
class PartState:
    """What health reports about one part."""

    name: str
    state: str = "starting"  # starting | running | restarting | stopped | failed (not restarted)
    restarts: int = 0
    last_error: str | None = None
    last_error_at: datetime | None = None
    started_at: datetime | None = None
    crash_window: float = 300.0
    crash_restarts: int = 3
    _deaths: deque[float] = field(default_factory=deque)

    def died(self, error: str) -> None:
        now = time.monotonic()
        self.last_error = error
        self.last_error_at = datetime.now(UTC)
        self._deaths.append(now)
        while self._deaths and now - self._deaths[0] > self.crash_window:
            self._deaths.popleft()

    @property
    def crash_looping(self) -> bool:
        now = time.monotonic()
        return sum(1 for t in self._deaths if now - t <= self.crash_window) >= self.crash_restarts

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "restarts": self.restarts,
            "crash_looping": self.crash_looping,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at.isoformat() if self.last_error_at else None,
            "started_at": self.started_at.isoformat() if self.started_at else None,
        }


class SupervisedThread:
    """Run ``build()``'s part in a thread; build and run it again with back-off when it dies."""

    def __init__(
        self,
        name: str,
        build: Callable[[], Part],
        *,
        backoff: Backoff | None = None,
        crash_window: float = 300.0,
        crash_restarts: int = 3,
    ) -> None:
        self.name = name
        self._build = build
        self._backoff = backoff or Backoff()
        self.status = PartState(name, crash_window=crash_window, crash_restarts=crash_restarts)
        self.part: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> SupervisedThread:
        """Build the first part here (a part that cannot even be built fails the caller, loudly),
        then run it, and every rebuilt one, in the thread."""
        self.part = self._build()
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _loop(self) -> None:
        first = True
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                if not first:
                    self.part = self._build()
                first = False
                self.status.state, self.status.started_at = "running", datetime.now(UTC)
                self.part.run()
                if self._stop.is_set():
                    break
                error = "returned while it should be running"
            except Exception as exc:  # noqa: BLE001 - recorded, counted, restarted: never silent
                if self._stop.is_set():
                    break
                error = f"{type(exc).__name__}: {exc}"
                log.exception("%s died", self.name)
            self.status.died(error)
            self.status.restarts += 1
            self.status.state = "restarting"
            wait = self._backoff.after_run(time.monotonic() - began)
            log.error("%s stopped (%s); restarting in %.0f s (restart %d)", self.name, error, wait,
                      self.status.restarts)  # fmt: skip
            self._stop.wait(wait)
        self.status.state = "stopped"

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        part = self.part
        if part is not None:
            part.stop()
        if self._thread is not None:
            self._thread.join(timeout)


class SupervisedProcess:
    """A child process (the faust worker), restarted with back-off when it exits."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        log_path: Path,
        *,
        backoff: Backoff | None = None,
        crash_window: float = 300.0,
        crash_restarts: int = 3,
        final_exit_codes: Mapping[int, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.status = PartState(name, crash_window=crash_window, crash_restarts=crash_restarts)
        self._backoff = backoff or Backoff()
        self._began = 0.0
        self._restart_at: float | None = None
        # exit codes after which a restart cannot help (code -> what the operator must do)
        self._final = dict(final_exit_codes or {})

    @property
    def restarts(self) -> int:
        return self.status.restarts

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as logf:
            self.proc = subprocess.Popen(
                self.argv,
                # its own session (a terminal's Ctrl-C reaches only the server, which stops it);
                # it stops by itself if the server dies without stopping it (traceline.orphans)
                env=self.env,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._began = time.monotonic()
        self.status.state, self.status.started_at = "running", datetime.now(UTC)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check(self) -> None:
        """Called periodically: notice an exit, and restart after the back-off."""
        if self.proc is None:
            return
        if self._restart_at is None:
            code = self.proc.poll()
            if code is None or self.status.state == "failed":
                return
            if code in self._final:
                self.status.died(f"exited with code {code}: {self._final[code]} (log: {self.log_path})")
                self.status.state = "failed"
                log.error("%s exited with %s and is not restarted: %s", self.name, code, self._final[code])
                return
            self.status.died(f"exited with code {code} (log: {self.log_path})")
            self.status.restarts += 1
            self.status.state = "restarting"
            wait = self._backoff.after_run(time.monotonic() - self._began)
            self._restart_at = time.monotonic() + wait
            log.error("%s exited with %s; restarting in %.0f s", self.name, code, wait)
        if time.monotonic() >= self._restart_at:
            self._restart_at = None
            self.start()

    def stop(self, timeout: float = 20.0) -> None:
        self.status.state = "stopped"
        if not self.alive or self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


class ProgressWatch:
    """Is a consumer group stalled? Lag that stays above zero while its consumer makes no progress
    (nothing landed / the lag did not shrink) for ``stall_after`` seconds."""

    def __init__(self, stall_after: float = 60.0) -> None:
        self.stall_after = stall_after
        self._stuck_since: float | None = None
        self._last: tuple[int, int] | None = None  # (lag, progress counter)

    def forget(self) -> None:
        """The lag could not be read: no stall is claimed from what was seen before (health says
        the lag is unavailable instead); the watch starts again with the next reading."""
        self._stuck_since, self._last = None, None

    def observe(self, lag: int, progress: int) -> None:
        now = time.monotonic()
        moved = self._last is None or progress != self._last[1] or lag < self._last[0]
        if lag <= 0 or moved:
            self._stuck_since = None if lag <= 0 else now
        elif self._stuck_since is None:
            self._stuck_since = now
        self._last = (lag, progress)

    @property
    def stalled_for(self) -> float:
        if self._stuck_since is None:
            return 0.0
        return time.monotonic() - self._stuck_since

    @property
    def stalled(self) -> bool:
        return self.stalled_for >= self.stall_after


def derive_health(
    parts: Mapping[str, PartState],
    *,
    stalled: Mapping[str, float],
    store_error: str | None,
    ledger_gap: Mapping[Any, int],
    lag: Mapping[str, int] | None,
    lag_error: str | None,
    audit_error: str | None = None,
) -> dict[str, Any]:
    """One status from every part: ``failing`` > ``degraded`` > ``ok``, with the reasons.
    ``audit_error``: the query audit log cannot be written (answers go on: degraded)."""
    failing: list[str] = []
    degraded: list[str] = []
    for name, p in parts.items():
        if p.state == "stopped":
            failing.append(f"{name} is stopped")
        elif p.state == "failed":
            failing.append(f"{name} failed and is not restarted: {p.last_error}")
        elif p.crash_looping:
            failing.append(f"{name} is crash-looping ({p.restarts} restarts; last: {p.last_error})")
        elif p.state == "restarting":
            degraded.append(f"{name} is restarting after: {p.last_error}")
    for name, seconds in stalled.items():
        if seconds > 0:
            failing.append(f"{name} is stalled: consumer lag has not shrunk for {seconds:.0f} s")
    if store_error:
        failing.append(f"the store refuses writes: {store_error}")
    if ledger_gap:
        failing.append(f"ledger gap (records read but neither landed nor accounted for): {dict(ledger_gap)}")
    if lag_error:  # Kafka did not answer within the lag read's timeout: nothing can be ingested
        failing.append(f"Kafka unreachable (consumer lag unavailable): {lag_error}")
    if audit_error:  # answers go on; who asked is not being written
        degraded.append(f"the query audit log cannot be written: {audit_error}")
    status = "failing" if failing else "degraded" if degraded else "ok"
    return {"status": status, "problems": failing + degraded, "lag": dict(lag) if lag is not None else None}
