"""A supervised child process that stops when its supervisor is gone.

``traceline serve`` runs the faust worker as a child in a session of its own (so a Ctrl-C in
the terminal reaches only the server, which then stops the worker gracefully). If the server
itself dies hard (SIGKILL, the OOM killer, a crash), nothing would stop that worker: it would
keep consuming and keep its table's RocksDB lock, and a restarted server's worker could not
open the table. So the server names itself in ``TRACELINE_WORKER_PARENT_PID`` and the worker
watches its parent: once the parent is no longer that process (the child was re-parented), it
sends itself SIGTERM (faust's graceful stop: commit, flush, close the table), and exits hard
if that has not ended it after a grace period. A worker started by hand (``faust -A
streams.worker worker``) has no such variable and is not watched.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

__all__ = ["PARENT_PID_ENV", "exit_with_parent", "exit_with_parent_from_env"]

PARENT_PID_ENV = "TRACELINE_WORKER_PARENT_PID"

log = logging.getLogger(__name__)


def exit_with_parent(expected_ppid: int, interval: float = 1.0, grace: float = 30.0) -> threading.Thread:
    """Start a daemon thread that stops this process once its parent is not ``expected_ppid``."""

    def watch() -> None:
        while os.getppid() == expected_ppid:
            time.sleep(interval)
        log.error("the process that started this one (pid %d) is gone: stopping", expected_ppid)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace)
        os._exit(1)  # the graceful stop did not end the process

    t = threading.Thread(target=watch, name="exit-with-parent", daemon=True)
    t.start()
    return t


def exit_with_parent_from_env(environ: dict[str, str] | None = None) -> threading.Thread | None:
    """``exit_with_parent`` for the pid in ``TRACELINE_WORKER_PARENT_PID``, if it is set."""
    raw = (environ if environ is not None else os.environ).get(PARENT_PID_ENV, "").strip()
    if not raw:
        return None
    try:
        pid = int(raw)
    except ValueError:
        log.warning("%s=%r is not a pid: not watching the parent", PARENT_PID_ENV, raw)
        return None
    return exit_with_parent(pid)
