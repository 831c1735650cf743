"""KRaft brokers with a configuration of our own, from the jars ``traceline.localstack``
assembles: a single node whose clients are told to reach it through a proxy (its advertised
listener is the proxy's port), and a three-node cluster (replication 3, min.insync.replicas 2).

``traceline.localstack`` runs one node whose advertised listener is its own port, so neither
can be had from it; the settings that matter for a small box (session timeouts, threads,
segment sizes) are the same as in ``deploy/local/server.properties.in``.
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

__all__ = ["KraftNode", "proxied_node", "three_node_cluster", "free_ports"]

_REPO = Path(__file__).resolve().parents[1]
_JVM = (
    "-Xms128m -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -XX:+ExitOnOutOfMemoryError "
    "-Djava.awt.headless=true -Djava.net.preferIPv4Stack=true -Dlog4j2.shutdownHookEnabled=false"
)

_COMMON = """
controller.listener.names=CONTROLLER
num.recovery.threads.per.data.dir=1
log.segment.bytes=16777216
num.partitions=3
auto.create.topics.enable=true
delete.topic.enable=true
broker.session.timeout.ms=3000
broker.heartbeat.interval.ms=500
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=2
background.threads=2
num.replica.fetchers=1
log.cleaner.threads=1
log.cleaner.dedupe.buffer.size=16777216
socket.request.max.bytes=104857600
"""


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(int(s.getsockname()[1]))
    for s in socks:
        s.close()
    return ports


def _cluster_id() -> str:
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


class KraftNode:
    """One broker+controller JVM in ``data_dir`` with the given ``server.properties`` text."""

    def __init__(self, data_dir: Path, node_id: int, config: str) -> None:
        self.data_dir = data_dir
        self.node_id = node_id
        self.config = config
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def config_path(self) -> Path:
        return self.data_dir / "server.properties"

    def _java(self, *args: str) -> list[str]:
        from traceline.localstack import ensure_jars

        libs = ensure_jars()
        log4j = _REPO / "deploy" / "local" / "log4j2.xml"
        return ["java", *_JVM.split(), f"-Dlog4j2.configurationFile={log4j}", "-cp", f"{libs}/*", *args]

    def format(self, cluster_id: str) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config)
        cmd = self._java(
            "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "-c", str(self.config_path)
        )
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(
                f"formatting node {self.node_id} failed: {(proc.stdout + proc.stderr)[-2000:]}"
            )

    def start(self) -> None:
        with (self.data_dir / "kafka.log").open("ab") as logf:
            self.proc = subprocess.Popen(
                self._java("kafka.Kafka", str(self.config_path)),
                stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, cwd=self.data_dir,
                start_new_session=True, env={**os.environ, "LOG_DIR": str(self.data_dir)},
            )  # fmt: skip

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self, timeout: float = 30.0) -> None:
        if not self.alive:
            return
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()


def wait_brokers(bootstrap: str, n: int, timeout: float = 120.0) -> None:
    """Until a metadata request through ``bootstrap`` lists ``n`` brokers."""
    from confluent_kafka.admin import AdminClient

    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
        with contextlib.suppress(Exception):
            md = admin.list_topics(timeout=2)
            if len(md.brokers) >= n:
                return
            last = f"{len(md.brokers)} brokers"
        time.sleep(0.5)
    raise RuntimeError(f"{bootstrap}: not {n} brokers after {timeout:.0f}s ({last or 'no answer'})")


def proxied_node(data_dir: Path, proxy_port: int) -> tuple[KraftNode, str, int]:
    """A single node with two client listeners: INTERNAL (advertised as itself: for the
    publisher, which the partition does not touch) and EXTERNAL (advertised as
    ``127.0.0.1:proxy_port``: every client that bootstraps there is told to stay on the proxy).
    Returns the node, the INTERNAL bootstrap and the EXTERNAL port the proxy must forward to."""
    internal, external, controller = free_ports(3)
    config = f"""process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller}
listeners=INTERNAL://127.0.0.1:{internal},EXTERNAL://127.0.0.1:{external},CONTROLLER://127.0.0.1:{controller}
advertised.listeners=INTERNAL://127.0.0.1:{internal},EXTERNAL://127.0.0.1:{proxy_port}
inter.broker.listener.name=INTERNAL
listener.security.protocol.map=INTERNAL:PLAINTEXT,EXTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={data_dir / "logs"}
metadata.log.dir={data_dir / "metadata"}
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=5
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
{_COMMON}"""
    node = KraftNode(data_dir, 1, config)
    node.format(_cluster_id())
    node.start()
    bootstrap = f"127.0.0.1:{internal}"
    wait_brokers(bootstrap, 1)
    return node, bootstrap, external


def three_node_cluster(work: Path) -> tuple[list[KraftNode], str]:
    """Three broker+controller nodes, replication 3 and min.insync.replicas 2 by default for
    every topic (internal ones too). Returns the nodes and the bootstrap naming all three."""
    ports = free_ports(6)
    brokers, controllers = ports[:3], ports[3:]
    voters = ",".join(f"{i + 1}@127.0.0.1:{c}" for i, c in enumerate(controllers))
    cid = _cluster_id()
    nodes = []
    for i in range(3):
        d = work / f"kafka-{i + 1}"
        config = f"""process.roles=broker,controller
node.id={i + 1}
controller.quorum.voters={voters}
listeners=PLAINTEXT://127.0.0.1:{brokers[i]},CONTROLLER://127.0.0.1:{controllers[i]}
advertised.listeners=PLAINTEXT://127.0.0.1:{brokers[i]}
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={d / "logs"}
metadata.log.dir={d / "metadata"}
default.replication.factor=3
min.insync.replicas=2
offsets.topic.replication.factor=3
offsets.topic.num.partitions=5
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
unclean.leader.election.enable=false
{_COMMON}"""
        node = KraftNode(d, i + 1, config)
        node.format(cid)
        nodes.append(node)
    for node in nodes:
        node.start()
    bootstrap = ",".join(f"127.0.0.1:{p}" for p in brokers)
    wait_brokers(bootstrap, 3)
    return nodes, bootstrap
