"""A real single-node Apache Kafka 4.x (KRaft, broker+controller in one JVM) for dev, tests and CI.

The broker is assembled from Maven Central (``deploy/local/pom.xml``) into
``deploy/local/cache/libs`` once, then run with plain ``java -cp 'libs/*' kafka.Kafka``.
No Docker, no tarball download.

    python -m traceline.localstack up [--data-dir D] [--port P]   # prints the bootstrap on stdout
    python -m traceline.localstack status [--data-dir D]          # JSON, exit 1 when not running
    python -m traceline.localstack down [--data-dir D] [--purge]

Everything the stack owns lives in ``data_dir``: ``server.properties``, ``kafka.log`` (JVM
stdout/stderr), ``kafka.pid``, ``state.json`` and the log/metadata directories. A stopped
broker restarts on the same ports with the same data (``up`` reuses the formatted storage and
the ports recorded in ``state.json``), which is what store-and-forward tests need.

Pure standard library; ``confluent_kafka`` is used for the readiness probe when importable.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from schemas.errors import TracelineError
from traceline import localstack_secure as secured
from traceline.settings import LocalStackSettings, child_env

__all__ = [
    "DEFAULT_STARTUP_TIMEOUT",
    "LocalBroker",
    "LocalStackError",
    "MissingToolError",
    "default_data_dir",
    "down",
    "last_bootstrap",
    "main",
    "status",
    "up",
]

DEFAULT_STARTUP_TIMEOUT = 90.0
DEFAULT_STOP_TIMEOUT = 30.0
HOST = "127.0.0.1"

_INSTALL_HINT = (
    "apt-get install openjdk-17-jre-headless maven   "
    "(Debian/Ubuntu; any Java >= 17 and Maven >= 3.6 will do, e.g. `brew install openjdk@17 maven`)"
)
_DEFAULT_HEAP = "-Xms256m -Xmx1g"
# fast start on a small box: serial GC, C1 only; override with TRACELINE_KAFKA_JVM_OPTS
_DEFAULT_JVM_OPTS = (
    "-XX:+UseSerialGC -XX:TieredStopAtLevel=1 -XX:+ExitOnOutOfMemoryError "
    "-Djava.awt.headless=true -Djava.net.preferIPv4Stack=true "
    # keep logging through Kafka's own shutdown hook (log4j's hook would cut the log short)
    "-Dlog4j2.shutdownHookEnabled=false"
)

_PID_FILE = "kafka.pid"
_STATE_FILE = "state.json"
_LOG_FILE = "kafka.log"
_CONFIG_FILE = "server.properties"
_READY_MARKER = ".complete"

# children started by this process, kept so they can be reaped (no zombies, no ResourceWarning)
_children: dict[int, subprocess.Popen[bytes]] = {}


class LocalStackError(TracelineError):
    """The local Kafka stack could not be assembled, started, probed or stopped."""

    def __init__(self, message: str, *, data_dir: Path | None = None, log_tail: str = "") -> None:
        self.data_dir = data_dir
        self.log_tail = log_tail
        full = message
        if log_tail:
            full += f"\n--- last lines of {data_dir / _LOG_FILE if data_dir else _LOG_FILE} ---\n{log_tail}"
        super().__init__(full)


class MissingToolError(LocalStackError):
    """``java`` or ``mvn`` is not on PATH."""

    def __init__(self, tool: str) -> None:
        self.tool = tool
        super().__init__(
            f"`{tool}` was not found on PATH; the local Kafka stack needs it. Install: {_INSTALL_HINT}"
        )


# --------------------------------------------------------------------------- paths


def _deploy_dir() -> Path:
    """deploy/local: env TRACELINE_DEPLOY_LOCAL, else <repo root>/deploy/local."""
    given = LocalStackSettings().deploy_local
    candidates = [given] if given else []
    candidates.append(Path(__file__).resolve().parents[1] / "deploy" / "local")
    for cand in candidates:
        if (cand / "pom.xml").is_file():
            return cand
    raise LocalStackError(
        "cannot find deploy/local/pom.xml (looked in "
        + ", ".join(str(c) for c in candidates)
        + "); run from a traceline checkout or set TRACELINE_DEPLOY_LOCAL"
    )


def _cache_dir() -> Path:
    given = LocalStackSettings().kafka_cache
    return given if given else _deploy_dir() / "cache"


def default_data_dir() -> Path:
    """env TRACELINE_KAFKA_DATA_DIR, else <repo root>/var/kafka."""
    given = LocalStackSettings().kafka_data_dir
    if given:
        return given
    return Path(__file__).resolve().parents[1] / "var" / "kafka"


def _log(msg: str, *, end: str = "\n") -> None:
    print(msg, end=end, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- jars


def _require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise MissingToolError(name)
    return path


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_jars() -> Path:
    """Copy Kafka and its runtime dependencies from Maven into the cache; return the libs dir.

    Idempotent: a marker holding the pom's hash is written after a complete copy, and Maven
    only runs again when the marker is missing or the pom changed. Concurrent callers
    (pytest-xdist, two shells) serialise on a lock file.
    """
    deploy = _deploy_dir()
    pom = deploy / "pom.xml"
    cache = _cache_dir()
    libs = cache / "libs"
    marker = libs / _READY_MARKER
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()
    if marker.is_file() and marker.read_text().strip() == digest:
        return libs
    with _file_lock(cache / ".lock"):
        if marker.is_file() and marker.read_text().strip() == digest:
            return libs
        mvn = _require_tool("mvn")
        staging = cache / f"libs.tmp-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        _log(f"localstack: assembling Kafka jars from Maven Central into {libs} (first run only) ...")
        cmd = [
            mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
            f"-DoutputDirectory={staging}", "-DincludeScope=runtime",
        ]  # fmt: skip
        t0 = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
            shutil.rmtree(staging, ignore_errors=True)
            out = (proc.stdout + proc.stderr).strip().splitlines()[-30:]
            raise LocalStackError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}):\n" + "\n".join(out))
        (staging / _READY_MARKER).write_text(digest + "\n")
        shutil.rmtree(libs, ignore_errors=True)
        staging.rename(libs)
        n = len(list(libs.glob("*.jar")))
        _log(f"localstack: {n} jars ready in {time.monotonic() - t0:.1f}s")
    return libs


# --------------------------------------------------------------------------- process helpers


def _free_port(exclude: frozenset[int] | set[int] = frozenset()) -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((HOST, 0))
            port = int(s.getsockname()[1])
        if port not in exclude:
            return port
    raise LocalStackError("could not find a free loopback port")


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return True
    return False


def _alive(pid: int) -> bool:
    """True when pid is a running (non-zombie) process. Reaps it if it is our dead child."""
    child = _children.get(pid)
    if child is not None:
        if child.poll() is not None:
            _children.pop(pid, None)
            return False
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _is_our_kafka(pid: int, data_dir: Path) -> bool:
    """Guard against pid reuse: the process must be kafka.Kafka with this data dir's config."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return _alive(pid)  # no /proc (macOS): trust the pid
    args = [a.decode(errors="replace") for a in cmdline]
    return "kafka.Kafka" in args and str(data_dir / _CONFIG_FILE) in args


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def _log_tail(data_dir: Path, lines: int = 40) -> str:
    try:
        with open(data_dir / _LOG_FILE, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            text = fh.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _running_pid(data_dir: Path) -> int | None:
    """pid of this data dir's live broker; cleans a stale pid file."""
    pid_file = data_dir / _PID_FILE
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        if pid_file.exists():
            pid_file.unlink(missing_ok=True)
        return None
    if _alive(pid) and _is_our_kafka(pid, data_dir):
        return pid
    _log(f"localstack: removing stale pid file {pid_file} (process {pid} is gone)")
    pid_file.unlink(missing_ok=True)
    _mark_stopped(data_dir)
    return None


def _mark_stopped(data_dir: Path) -> None:
    state = _read_json(data_dir / _STATE_FILE)
    if state is not None and state.get("pid") is not None:
        state["pid"] = None
        state["running"] = False
        _write_json(data_dir / _STATE_FILE, state)


# --------------------------------------------------------------------------- readiness


def _probe(bootstrap: str, timeout: float, security: dict[str, Any] | None = None) -> bool:
    """True when the broker answers a metadata request with itself registered (``security``:
    the admin's client properties of a secured broker)."""
    try:
        from confluent_kafka.admin import AdminClient  # noqa: PLC0415 - optional dependency
    except ImportError:
        host, port = bootstrap.rsplit(":", 1)
        try:
            with socket.create_connection((host, int(port)), timeout=timeout):
                return True
        except OSError:
            return False
    admin = AdminClient(
        {
            "bootstrap.servers": bootstrap,
            "socket.timeout.ms": max(1000, int(timeout * 1000)),
            "log_level": 0,  # connection-refused noise while the JVM boots
            **(security or {}),
        }
    )
    try:
        md = admin.list_topics(timeout=timeout)
    except Exception:  # noqa: BLE001 - KafkaException or timeout: simply "not ready yet"
        return False
    return bool(md.brokers)


def _log_says_started(data_dir: Path) -> bool:
    return "Kafka Server started" in _log_tail(data_dir, 400)


def _admin_security(data_dir: Path) -> dict[str, Any] | None:
    m = secured.load(data_dir)
    return m.security("admin").librdkafka() if m is not None else None


def _wait_ready(data_dir: Path, bootstrap: str, pid: int, timeout: float) -> None:
    try:
        import confluent_kafka  # noqa: F401, PLC0415

        have_client = True
    except ImportError:
        have_client = False
    deadline = time.monotonic() + timeout
    _log(f"localstack: waiting for {bootstrap} ", end="")
    while True:
        if not _alive(pid):
            _log(" died")
            (data_dir / _PID_FILE).unlink(missing_ok=True)
            _mark_stopped(data_dir)
            raise LocalStackError(
                f"Kafka exited during start-up (pid {pid})", data_dir=data_dir, log_tail=_log_tail(data_dir)
            )
        if _probe(bootstrap, 1.0, _admin_security(data_dir)) and (have_client or _log_says_started(data_dir)):
            _log(" ready")
            return
        if time.monotonic() > deadline:
            _log(" timeout")
            raise LocalStackError(
                f"Kafka did not answer on {bootstrap} within {timeout:.0f}s (pid {pid} left running; "
                f"`python -m traceline.localstack down --data-dir {data_dir}` stops it)",
                data_dir=data_dir,
                log_tail=_log_tail(data_dir),
            )
        _log(".", end="")
        time.sleep(0.5)


# --------------------------------------------------------------------------- config and storage


def _cluster_id() -> str:
    """A Kafka Uuid string: url-safe base64 of 16 random bytes, no padding.

    Never starting with "-": the storage tool's argument parser would take it for an option
    (one start in 64 failed that way)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def _write_config(
    data_dir: Path, broker_port: int, controller_port: int, material: secured.SecureMaterial | None
) -> Path:
    template = string.Template((_deploy_dir() / "server.properties.in").read_text())
    text = template.substitute(
        broker_port=broker_port,
        controller_port=controller_port,
        log_dir=data_dir / "logs",
        metadata_dir=data_dir / "metadata",
    )
    if material is not None:
        text += secured.broker_config(material, broker_port, controller_port, HOST)
    path = data_dir / _CONFIG_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # may hold passwords
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o600)
    return path


def _is_formatted(data_dir: Path) -> bool:
    return (data_dir / "metadata" / "meta.properties").is_file()


def _java_cmd(java: str, libs: Path, *extra: str) -> list[str]:
    given = LocalStackSettings()
    heap = (given.kafka_heap_opts or _DEFAULT_HEAP).split()
    opts = (given.kafka_jvm_opts or _DEFAULT_JVM_OPTS).split()
    log4j = _deploy_dir() / "log4j2.xml"
    return [java, *heap, *opts, f"-Dlog4j2.configurationFile={log4j}", "-cp", f"{libs}/*", *extra]


def _format_storage(
    java: str, libs: Path, data_dir: Path, config: Path, material: secured.SecureMaterial | None
) -> str:
    cid = _cluster_id()
    _log(f"localstack: formatting KRaft storage in {data_dir} (cluster id {cid})")
    users = secured.scram_args(material) if material is not None else []
    cmd = _java_cmd(
        java, libs, "kafka.tools.StorageTool", "format", f"--cluster-id={cid}", "-c", str(config), *users
    )
    # the storage tool is a short-lived JVM: smaller heap, its logging into the shared log
    cmd = [c for c in cmd if not c.startswith(("-Xms", "-Xmx"))]
    cmd.insert(1, "-Xmx256m")
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    with open(data_dir / _LOG_FILE, "a") as fh:
        fh.write(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip()[-4000:]
        if material is not None:
            for pw in material.passwords.values():
                tail = tail.replace(pw, "***")
        raise LocalStackError(
            f"kafka.tools.StorageTool format failed (exit {proc.returncode})",
            data_dir=data_dir,
            log_tail=tail,
        )
    return cid


# --------------------------------------------------------------------------- public API


def status(data_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """State of the broker in ``data_dir`` (bootstrap, pid, ports, ...) or None when not running."""
    data_dir = Path(data_dir).resolve()
    pid = _running_pid(data_dir)
    if pid is None:
        return None
    state = _read_json(data_dir / _STATE_FILE) or {}
    state.update(pid=pid, running=True, data_dir=str(data_dir))
    return state


def last_bootstrap(data_dir: str | os.PathLike[str]) -> str | None:
    """The bootstrap the broker of ``data_dir`` runs or last ran on (``state.json``; a stopped
    broker restarts on the same port), or None if it never ran there. Reads only."""
    state = _read_json(Path(data_dir).resolve() / _STATE_FILE) or {}
    bootstrap = state.get("bootstrap")
    return str(bootstrap) if bootstrap else None


def up(
    data_dir: str | os.PathLike[str],
    port: int | None = None,
    *,
    controller_port: int | None = None,
    timeout: float = DEFAULT_STARTUP_TIMEOUT,
    secure: bool = False,
    events_topic: str = "traceline.events",
) -> str:
    """Start (or find) the broker for ``data_dir``; return its bootstrap ``"127.0.0.1:PORT"``.

    Harmless when it is already up. A stopped broker restarts with its data and, unless
    ``port`` says otherwise, on the ports it had before. ``secure``: SASL_SSL, SCRAM users,
    ACLs, no auto-creation (``traceline.localstack_secure``; gateways may write
    ``events_topic``); a data dir is secured from its first start or never.
    """
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    with _file_lock(data_dir / ".lock"):
        was_secure = secured.load(data_dir) is not None
        if _is_formatted(data_dir) and secure and not was_secure:
            raise LocalStackError(
                f"the broker in {data_dir} is a plain one: it cannot become secured; use another --data-dir "
                "(or `traceline stack down --purge` to delete this one)"
            )
        secure = secure or was_secure  # a secured broker restarts secured
        current = status(data_dir)
        if current is not None:
            bootstrap = str(current["bootstrap"])
            if port is not None and int(current["broker_port"]) != port:
                raise LocalStackError(
                    f"a broker for {data_dir} is already running on {bootstrap}, not port {port}; "
                    "stop it first (down)"
                )
            if not _probe(bootstrap, 5.0, _admin_security(data_dir)):
                _wait_ready(data_dir, bootstrap, int(current["pid"]), timeout)
            _log(f"localstack: already running on {bootstrap} (pid {current['pid']})")
            return bootstrap
        bootstrap = _start(data_dir, port, controller_port, timeout, secure)
        material = secured.load(data_dir)
        if material is not None:
            secured.grant(bootstrap, material, events_topic)
            _log(
                f"localstack: SASL_SSL with ACLs; client settings in {material.dir}/{{pipeline,gateway}}.env"
            )
        return bootstrap


def _start(
    data_dir: Path, port: int | None, controller_port: int | None, timeout: float, secure: bool
) -> str:
    java = _require_tool("java")
    libs = ensure_jars()
    material = secured.prepare(data_dir, _require_tool("keytool")) if secure else None
    previous = _read_json(data_dir / _STATE_FILE) or {}
    formatted = _is_formatted(data_dir)
    if formatted:
        port = port or previous.get("broker_port")
        controller_port = controller_port or previous.get("controller_port")
    broker_port = int(port) if port else _free_port()
    ctl_port = int(controller_port) if controller_port else _free_port({broker_port})
    if ctl_port == broker_port:
        raise LocalStackError(f"broker and controller ports must differ (both {broker_port})")
    for p in (broker_port, ctl_port):
        if _port_in_use(p):
            raise LocalStackError(f"port {HOST}:{p} is already in use by another process")

    config = _write_config(data_dir, broker_port, ctl_port, material)
    cluster_id = previous.get("cluster_id") if formatted else None
    if not formatted:
        cluster_id = _format_storage(java, libs, data_dir, config, material)

    cmd = _java_cmd(java, libs, "kafka.Kafka", str(config))
    bootstrap = f"{HOST}:{broker_port}"
    _log(f"localstack: starting Kafka on {bootstrap} (controller {ctl_port}), log {data_dir / _LOG_FILE}")
    t0 = time.monotonic()
    with open(data_dir / _LOG_FILE, "ab") as log:
        log.write(f"\n===== localstack start {time.strftime('%Y-%m-%dT%H:%M:%S%z')} =====\n".encode())
        log.flush()
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=data_dir,
            start_new_session=True,
            env=child_env(LOG_DIR=str(data_dir)),
        )
    _children[proc.pid] = proc
    (data_dir / _PID_FILE).write_text(f"{proc.pid}\n")
    state = {
        "bootstrap": bootstrap,
        "broker_port": broker_port,
        "controller_port": ctl_port,
        "pid": proc.pid,
        "running": True,
        "cluster_id": cluster_id,
        "data_dir": str(data_dir),
        "kafka_jar": next((j.name for j in libs.glob("kafka_2.13-*.jar")), None),
        "started_at": time.time(),
        "log": str(data_dir / _LOG_FILE),
        "secure": material is not None,
    }
    _write_json(data_dir / _STATE_FILE, state)
    _wait_ready(data_dir, bootstrap, proc.pid, timeout)
    _log(f"localstack: Kafka up in {time.monotonic() - t0:.1f}s")
    return bootstrap


def down(
    data_dir: str | os.PathLike[str],
    *,
    timeout: float = DEFAULT_STOP_TIMEOUT,
    kill: bool = False,
    purge: bool = False,
) -> bool:
    """Stop the broker for ``data_dir``: SIGTERM, wait, SIGKILL after ``timeout``.

    ``kill=True`` sends SIGKILL at once (a crash, for recovery tests). Data and the recorded
    ports are kept so ``up`` restarts the same broker; ``purge=True`` deletes the data dir.
    Returns True when a running broker was stopped.
    """
    data_dir = Path(data_dir).resolve()
    if not data_dir.exists():
        return False
    with _file_lock(data_dir / ".lock"):
        pid = _running_pid(data_dir)
        stopped = False
        if pid is not None:
            sig = signal.SIGKILL if kill else signal.SIGTERM
            _log(f"localstack: stopping Kafka pid {pid} ({sig.name}) ", end="")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            deadline = time.monotonic() + timeout
            while _alive(pid):
                if time.monotonic() > deadline and sig != signal.SIGKILL:
                    _log(" SIGKILL", end="")
                    sig = signal.SIGKILL
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
                time.sleep(0.2)
                _log(".", end="")
            child = _children.pop(pid, None)
            if child is not None:
                child.wait()
            _log(" stopped")
            stopped = True
        (data_dir / _PID_FILE).unlink(missing_ok=True)
        _mark_stopped(data_dir)
    if purge:
        shutil.rmtree(data_dir, ignore_errors=True)
    return stopped


class LocalBroker:
    """A controllable broker in its own data dir; ``stop()``/``start()`` keep ports and data."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        port: int | None = None,
        *,
        secure: bool = False,
        events_topic: str = "traceline.events",
    ) -> None:
        self.data_dir = Path(data_dir)
        self._port = port
        self.secure = secure
        self.events_topic = events_topic
        self.bootstrap: str | None = None

    def start(self, timeout: float = DEFAULT_STARTUP_TIMEOUT) -> str:
        self.bootstrap = up(
            self.data_dir,
            port=self._port,
            timeout=timeout,
            secure=self.secure,
            events_topic=self.events_topic,
        )
        self._port = int(self.bootstrap.rsplit(":", 1)[1])
        return self.bootstrap

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        down(self.data_dir, timeout=timeout)

    def kill(self) -> None:
        """SIGKILL, as in a crash; ``start()`` then recovers the logs."""
        down(self.data_dir, kill=True)

    @property
    def port(self) -> int | None:
        return self._port

    @property
    def running(self) -> bool:
        return status(self.data_dir) is not None

    def __enter__(self) -> LocalBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"LocalBroker({str(self.data_dir)!r}, bootstrap={self.bootstrap!r})"


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m traceline.localstack",
        description="Local single-node Apache Kafka 4 (KRaft) assembled from Maven Central, run with java.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def add_data_dir(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--data-dir",
            type=Path,
            default=None,
            help="broker state and data (default: $TRACELINE_KAFKA_DATA_DIR or <repo>/var/kafka)",
        )

    p_up = sub.add_parser("up", help="start the broker (harmless when already up); prints the bootstrap")
    add_data_dir(p_up)
    p_up.add_argument("--port", type=int, default=None, help="broker port (default: previous or a free one)")
    p_up.add_argument("--controller-port", type=int, default=None, help="KRaft controller port")
    p_up.add_argument("--timeout", type=float, default=DEFAULT_STARTUP_TIMEOUT, help="seconds to wait")

    p_down = sub.add_parser("down", help="stop the broker (SIGTERM, then SIGKILL after --timeout)")
    add_data_dir(p_down)
    p_down.add_argument("--timeout", type=float, default=DEFAULT_STOP_TIMEOUT)
    p_down.add_argument("--purge", action="store_true", help="also delete the data dir")

    p_status = sub.add_parser("status", help="print state as JSON; exit 1 when not running")
    add_data_dir(p_status)

    sub.add_parser("jars", help="only assemble the Kafka jars (for CI caching)")

    args = parser.parse_args(argv)
    data_dir = getattr(args, "data_dir", None) or default_data_dir()
    try:
        if args.command == "up":
            print(up(data_dir, args.port, controller_port=args.controller_port, timeout=args.timeout))
        elif args.command == "down":
            if not down(data_dir, timeout=args.timeout, purge=args.purge):
                _log(f"localstack: no broker running for {data_dir}")
        elif args.command == "status":
            st = status(data_dir)
            if st is None:
                print(json.dumps({"running": False, "data_dir": str(Path(data_dir).resolve())}))
                return 1
            print(json.dumps(st, indent=2, sort_keys=True))
        elif args.command == "jars":
            print(ensure_jars())
    except LocalStackError as exc:
        _log(f"localstack: error: {exc}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
