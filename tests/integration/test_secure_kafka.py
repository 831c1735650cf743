"""The pipeline on a secured broker (``traceline stack up --secure``): SASL_SSL with SCRAM-SHA-512,
a locally generated CA, ACLs through KRaft's StandardAuthorizer, no topic auto-creation.

* a gateway (its own process, ``traceline publish`` with the gateway's env file) publishes
  simulated events; ``traceline serve``'s parts (faust worker over aiokafka, sink, alert
  engine) with the pipeline principal land every one of them and build the genealogy;
* a gateway may write the events topic and nothing else: not another topic, not read;
* no identity, a wrong password, plain text or a client that does not trust the CA get nothing;
* a topic nobody created does not appear because someone wrote to it.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from pydantic import SecretStr

from chaos.harness import landed_ids
from producers.simulator import simulate
from schemas.kafka import KafkaSecurity, client_security, use_security
from tests.integration.conftest import pipeline_settings
from tests.support import wait_caught_up
from traceline import localstack
from traceline import localstack_secure as secured
from traceline.serve import ServeOptions, Server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def secure_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, secured.SecureMaterial]]:
    data_dir = tmp_path_factory.mktemp("kafka-secure")
    bootstrap = localstack.up(data_dir, secure=True)
    material = secured.load(data_dir)
    assert material is not None
    try:
        yield bootstrap, material
    finally:
        localstack.down(data_dir)
        use_security(KafkaSecurity())


@pytest.fixture(autouse=True)
def plain_afterwards() -> Iterator[None]:
    """Every other test of the session talks PLAINTEXT to the session broker."""
    yield
    use_security(KafkaSecurity())


def _conf(bootstrap: str, security: KafkaSecurity, **extra: Any) -> dict[str, Any]:
    return {"bootstrap.servers": bootstrap, **security.librdkafka(), "log_level": 0, **extra}


def _produce(bootstrap: str, security: KafkaSecurity, topic: str) -> KafkaError | None:
    """Produce one record; the delivery error (None when delivered)."""
    got: list[KafkaError | None] = []
    p = Producer(_conf(bootstrap, security, **{"message.timeout.ms": 10_000}))
    p.produce(topic, b"x", key=b"k", on_delivery=lambda err, _m: got.append(err))
    p.flush(15)
    assert got, "no delivery report within 15 s"
    return got[0]


def _metadata_error(bootstrap: str, security: KafkaSecurity) -> str:
    """What a client with ``security`` is told when it asks for metadata ("" when it gets it)."""
    said: list[str] = []
    conf = _conf(bootstrap, security, **{"socket.connection.setup.timeout.ms": 3000})
    admin = AdminClient({**conf, "error_cb": lambda err: said.append(str(err))})
    try:
        admin.list_topics(timeout=6)
    except KafkaException as exc:
        admin.poll(1.0)  # serves the error callbacks (the reason is there, not in the exception)
        return " ".join([str(exc), *said])
    return ""


def _prefix() -> str:
    return f"traceline-sec-{uuid.uuid4().hex[:6]}."  # under the pipeline's ACL prefix "traceline"


def test_the_pipeline_runs_end_to_end_on_a_secured_broker(
    secure_stack: tuple[str, secured.SecureMaterial], tmp_path: Path
) -> None:
    bootstrap, material = secure_stack
    prefix = _prefix()
    s = pipeline_settings(tmp_path, prefix)
    own = material.security("pipeline")
    s.kafka.security_protocol, s.kafka.sasl_username = "SASL_SSL", own.username
    s.kafka.sasl_password, s.kafka.ssl_ca_file = SecretStr(own.password or ""), own.ca_file
    secured.grant(bootstrap, material, s.kafka.events_topic)  # this test's events topic for gateways
    server = Server(s, ServeOptions(bootstrap, with_api=False, sink_batch_size=2_000, sink_batch_seconds=0.3))
    assert client_security().username == "pipeline"
    server.start()
    try:
        events = list(itertools.islice(simulate(150, seed=11), 600))
        src = tmp_path / "bench.jsonl"
        src.write_text("\n".join(json.dumps(e) for e in events) + "\n")
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("TRACELINE_")  # the gateway's own identity, nothing of the pipeline's
        }
        for line in material.env_file("gateway").read_text().splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.partition("=")
                env[key] = value
        env["TRACELINE_DATA_DIR"] = str(tmp_path / "gateway")
        done = subprocess.run(
            [str(Path(sys.executable).parent / "traceline"), "publish", "--file", str(src),
             "--bootstrap", bootstrap, "--topic", s.kafka.events_topic, "--timeout", "60"],
            env=env, capture_output=True, text=True, timeout=180, check=False,
        )  # fmt: skip
        text = " ".join(done.stdout.split())
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"{len(events)} delivered to Kafka" in text, text

        ok = wait_caught_up(
            bootstrap, s.topics, app_id=s.app_id, sink_group=s.sink_group, timeout=180, quiet=2.0
        )
        assert ok, server.health()
        store = server.store
        assert store is not None
        ids = {str(e["event_id"]) for e in events}
        landed = landed_ids(store, s.kafka.events_topic)
        assert ids == landed
        assert store.query("SELECT count() AS n FROM unit_genealogy")[0]["n"] > 0  # the worker built it
        assert server.worker is not None and server.worker.alive
        assert server.health()["status"] == "ok", server.health()
    finally:
        server.stop()


def test_a_gateway_may_write_the_events_topic_and_nothing_else(
    secure_stack: tuple[str, secured.SecureMaterial],
) -> None:
    bootstrap, material = secure_stack
    gateway, pipeline = material.security("gateway"), material.security("pipeline")
    events = "traceline.events"  # the stack's events topic (the gateway's ACL)
    admin = AdminClient(_conf(bootstrap, pipeline))
    prefix = _prefix()
    other = f"{prefix}traceline.genealogy.commands"
    for f in admin.create_topics([NewTopic(events, 1, 1), NewTopic(other, 1, 1)]).values():
        try:
            f.result(30)
        except KafkaException as exc:
            assert exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS
    assert _produce(bootstrap, gateway, events) is None
    err = _produce(bootstrap, gateway, other)
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err
    c = Consumer(_conf(bootstrap, gateway, **{"group.id": f"{prefix}spy", "auto.offset.reset": "earliest"}))
    try:
        c.subscribe([events])
        seen: list[int] = []
        for _ in range(20):
            m = c.poll(0.5)
            if m is not None and m.error() is not None:
                seen.append(m.error().code())
                break
            assert m is None, "the gateway read a record"
        assert seen and seen[0] in (
            KafkaError.GROUP_AUTHORIZATION_FAILED,
            KafkaError.TOPIC_AUTHORIZATION_FAILED,
        )
    finally:
        c.close()


def test_no_identity_no_data(secure_stack: tuple[str, secured.SecureMaterial], tmp_path: Path) -> None:
    bootstrap, material = secure_stack
    gateway = material.security("gateway")
    assert "Authentication failed" in _metadata_error(bootstrap, replace(gateway, password="wrong"))
    assert _metadata_error(bootstrap, KafkaSecurity())  # plain text to a TLS port: nothing answers
    foreign_ca = tmp_path / "other-ca.pem"  # a CA the broker's certificate was not signed by
    foreign_ca.write_text(Path("/etc/ssl/certs/ca-certificates.crt").read_text())
    assert "certificate verify failed" in _metadata_error(bootstrap, replace(gateway, ca_file=foreign_ca))


def test_a_topic_nobody_created_is_not_made_by_writing_to_it(
    secure_stack: tuple[str, secured.SecureMaterial],
) -> None:
    bootstrap, material = secure_stack
    pipeline = material.security("pipeline")
    topic = f"{_prefix()}never-created"
    err = _produce(bootstrap, pipeline, topic)
    # refused at once (unknown topic) or after waiting for it to appear (timed out): not delivered
    assert err is not None and err.code() in (
        KafkaError._UNKNOWN_TOPIC, KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._MSG_TIMED_OUT
    ), err
    md = AdminClient(_conf(bootstrap, pipeline)).list_topics(timeout=10)
    assert topic not in md.topics or md.topics[topic].error is not None
