"""A supervised child process that stops when its supervisor is gone.

``traceline serve`` runs the faust worker as a child in a session of its own (so a Ctrl-C in
the terminal reaches only the server, which then stops the worker gracefully). If the server
itself dies hard (SIGKILL, the OOM killer, a crash), nothing would stop that worker: it would
keep consuming and keep its table's RocksDB lock, and a restarted server's worker could not
open the table. So the server names itself in the worker's settings (``worker.parent_pid``,
env ``TRACELINE_WORKER_PARENT_PID``, from ``Settings.worker_env``) and the worker watches its
parent: once the parent is no longer that process (the child was re-parented), it sends itself
SIGTERM (faust's graceful stop: commit, flush, close the table), and exits hard if that has
not ended it after a grace period. A worker started by hand (``faust -A
traceline.worker worker``) has no such variable and is not watched.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

__all__ = ["exit_with_parent"]

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
