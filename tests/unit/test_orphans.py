"""A child started with TRACELINE_WORKER_PARENT_PID stops when that parent dies (SIGKILL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from traceline.settings import Settings, WorkerSettings

# the child: watches its parent quickly, reports SIGTERM in a file, then exits
CHILD = """
import signal, sys, time
from pathlib import Path
from traceline.orphans import exit_with_parent
from traceline.settings import load_settings
out = Path(sys.argv[1])
def term(*_):
    out.write_text("SIGTERM")
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
exit_with_parent(load_settings().worker.parent_pid, interval=0.05, grace=5)
out.write_text("watching")
time.sleep(60)
"""

# the parent: starts the child in a session of its own (as traceline serve does), prints its
# pid, and waits to be killed
PARENT = """
import os, subprocess, sys, time
from traceline.settings import load_settings
env = load_settings().worker_env("127.0.0.1:9", parent_pid=os.getpid())
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]], env=env, start_new_session=True)
print(child.pid, flush=True)
time.sleep(60)
"""


def _wait_for(path: Path, text: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text() == text:
            return True
        time.sleep(0.02)
    return False


def _gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_a_child_stops_when_its_parent_is_killed(tmp_path: Path) -> None:
    out = tmp_path / "child.txt"
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": root}
    cmd = [sys.executable, "-c", PARENT, CHILD, str(out)]
    parent = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE)
    assert parent.stdout is not None
    child_pid = int(parent.stdout.readline())
    try:
        assert _wait_for(out, "watching", 20)
        time.sleep(0.3)
        assert out.read_text() == "watching"  # its parent lives: it keeps running
        parent.send_signal(signal.SIGKILL)
        parent.wait(5)
        assert _wait_for(out, "SIGTERM", 10)  # re-parented: it stopped itself gracefully
        assert _gone(child_pid, 10)
    finally:
        if parent.poll() is None:
            parent.kill()
        try:
            os.kill(child_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_only_a_child_of_traceline_serve_is_watched(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRACELINE_WORKER_PARENT_PID", raising=False)
    assert WorkerSettings().parent_pid is None  # started by hand: not watched
    env = Settings().worker_env("127.0.0.1:9", parent_pid=4242)
    assert env["TRACELINE_WORKER_PARENT_PID"] == "4242"
    monkeypatch.setenv("TRACELINE_WORKER_PARENT_PID", env["TRACELINE_WORKER_PARENT_PID"])
    assert WorkerSettings().parent_pid == 4242
    monkeypatch.setenv("TRACELINE_WORKER_PARENT_PID", "not-a-pid")
    with pytest.raises(ValidationError):
        WorkerSettings()  # a clear error at start-up, not a worker that silently is not watched
