"""The stream worker's local state against a real broker: a worker whose RocksDB state is ahead
of its changelog topic (the topic was deleted and re-created: faust's ``ConsistencyError``,
which made ``traceline serve`` restart the worker in a loop) stops at once with one message
naming the directory and the recovery, exit code 78; the recovery (``python -m
traceline.worker reset-state --yes``) deletes the state and the worker starts again."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from producers.publisher import Publisher
from producers.simulator import simulate
from schemas.jsonform import parse_event
from streams import genealogy as g
from streams.app import (
    AGENT_CRASH_EXIT_CODE,
    LOCAL_STATE_EXIT_CODE,
    changelog_ends,
    changelog_topic,
    local_offsets,
    local_state_dir,
)
from streams.intake import batches_by_partition
from tests.integration.conftest import pipeline_settings
from traceline.serve import Server

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PARTITIONS = 2


def _recreate(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for fut in admin.delete_topics([topic], operation_timeout=30).values():
        fut.result(30)
    deadline = time.monotonic() + 60
    while True:  # the broker needs a moment before the name can be used again
        try:
            new = NewTopic(topic, partitions, 1, config={"cleanup.policy": "compact"})
            for fut in admin.create_topics([new], operation_timeout=30).values():
                fut.result(30)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_state_ahead_of_a_recreated_changelog_stops_the_worker_with_the_recovery(
    pipeline: Callable[..., Server], kafka_bootstrap: str
) -> None:
    server = pipeline(partitions=PARTITIONS, with_alerts=False)
    s = server.settings
    pub = Publisher(kafka_bootstrap, s.outbox_path, topic=s.kafka.events_topic)
    pub.publish_many([parse_event(d) for d in itertools.islice(simulate(50, seed=3), 400)])
    assert pub.close(30) == 0
    topic = changelog_topic(s.app_id)
    deadline = time.monotonic() + 120
    while True:  # the worker wrote its table (changelog) and the sink landed its changes
        _tid, ends = changelog_ends(kafka_bootstrap, topic)
        assert server.sink is not None
        if sum(ends.values()) > 0 and server.sink.stats.changes_landed > 0:
            break
        assert time.monotonic() < deadline, f"the worker wrote no table changes: {ends}"
        time.sleep(0.5)
    time.sleep(3)  # let faust persist what it applied
    server.stop()

    state = local_state_dir(s.data_dir, s.app_id)
    assert state == s.data_dir / "streams" / s.app_id  # the pipeline's own directory
    assert local_offsets(state), "the worker left no table state"
    _recreate(kafka_bootstrap, topic, PARTITIONS)

    env = s.worker_env(kafka_bootstrap)
    worker = [sys.executable, "-m", "traceline.worker"]
    t0 = time.monotonic()
    run = subprocess.run(
        [*worker, "worker", "-l", "info", "--without-web"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    text = " ".join(run.stderr.split())
    assert run.returncode == LOCAL_STATE_EXIT_CODE, run.stderr[-3000:]
    assert time.monotonic() - t0 < 60
    assert f"local state in {state} is inconsistent with Kafka" in text
    assert "python -m traceline.worker reset-state --yes" in text and topic in text
    assert "Traceback" not in run.stderr

    reset = subprocess.run(
        [*worker, "reset-state", "--yes"], env=env, cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert reset.returncode == 0, reset.stdout + reset.stderr
    assert not state.exists()

    log = s.data_dir / "worker-again.log"
    with log.open("w") as fh:
        again = subprocess.Popen(
            [*worker, "worker", "-l", "info", "--without-web"],
            env=env,
            cwd=REPO,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        while "Worker ready" not in log.read_text():
            assert again.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
    finally:
        again.terminate()
        again.wait(30)


def test_a_crashed_agent_ends_the_worker_instead_of_skipping_records(
    kafka_bootstrap: str, tmp_path: Path, topic_prefix: str
) -> None:
    """faust restarts a crashed agent inside the process, past the record it was on (the chaos
    suite lost 4 units of a genealogy that way, on a changelog topic a 3-broker cluster had not
    yet propagated). Here the agent crashes for sure: its changelog topic has another partition
    count than its command topic (faust's PartitionsMismatch). The worker must exit with
    AGENT_CRASH_EXIT_CODE (serve restarts it; it re-reads from its committed offset), not run on."""
    s = pipeline_settings(tmp_path, topic_prefix, partitions=3)
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    topics = [
        NewTopic(s.topics.commands, 3, 1),
        NewTopic(changelog_topic(s.app_id), 2, 1, config={"cleanup.policy": "compact"}),
    ]
    for fut in admin.create_topics(topics, operation_timeout=30).values():
        fut.result(30)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    sends: list[g.Send] = [(f"AVN-P1100:SN{i:06d}", g.Touch(f"AVN-P1100:SN{i:06d}")) for i in range(6)]
    for part, value, _n in batches_by_partition(sends, 3):  # the agent writes its table on these
        producer.produce(s.topics.commands, value=value, partition=part)
    assert producer.flush(30) == 0
    run = subprocess.run(
        [sys.executable, "-m", "traceline.worker", "worker", "-l", "info", "--without-web"],
        env=s.worker_env(kafka_bootstrap), cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    text = " ".join(run.stderr.split())
    assert run.returncode == AGENT_CRASH_EXIT_CODE, text[-3000:]
    assert "the genealogy agent crashed (PartitionsMismatch" in text
