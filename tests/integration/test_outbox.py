"""Store and forward: with the broker down a publisher process stores events on disk and is
SIGKILLed; after the broker is back, ``traceline outbox flush`` (a fresh process) delivers
every event at least once and empties the outbox. With no broker configured and the local
stack stopped, ``traceline publish`` still stores the events (they wait on disk) and
``outbox flush`` delivers them once the stack is up again."""

from __future__ import annotations

import itertools
import json
import os
import select
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient
from typer.testing import CliRunner

from producers.simulator import simulate
from schemas.jsonform import parse_event
from schemas.serde import AvroSerde
from tests.conftest import create_topic
from tests.integration.test_publish import consume_all
from traceline import localstack
from traceline.cli import app

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
N = 2_000
SEED = 11
UNITS = 600  # enough simulated units for N events

_PUBLISHER = textwrap.dedent(
    """
    import itertools, sys, time
    from producers.publisher import Publisher
    from producers.simulator import simulate
    from schemas.jsonform import parse_event

    bootstrap, outbox, topic, n, units, seed = sys.argv[1:7]
    pub = Publisher(bootstrap, outbox, topic=topic, producer_overrides={"message.timeout.ms": 5000})
    events = [parse_event(d) for d in itertools.islice(simulate(int(units), seed=int(seed)), int(n))]
    stored = 0
    for i in range(0, len(events), 500):
        stored += pub.publish_many(events[i : i + 500])
    print(f"STORED {stored} PENDING {pub.pending()}", flush=True)
    left = pub.flush(7.0)  # outlives message.timeout.ms: every delivery fails, then is re-sent
    print(f"FLUSHED PENDING {left} FAILED {pub.failed_attempts} DELIVERED {pub.delivered_total}", flush=True)
    time.sleep(600)  # "still running" until the test kills it
    """
)


def _outbox_rows(path: Path) -> list[tuple[str, str, bytes]]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return list(db.execute("SELECT event_id, topic, value FROM outbox ORDER BY seq"))
    finally:
        db.close()


def test_events_stored_while_broker_down_survive_a_kill_and_are_delivered(
    local_broker: localstack.LocalBroker, topic_prefix: str, tmp_path: Path
) -> None:
    bootstrap = local_broker.bootstrap
    assert bootstrap is not None
    port = local_broker.port
    topic = create_topic(AdminClient({"bootstrap.servers": bootstrap}), f"{topic_prefix}events", 3)

    reference = AvroSerde(topic=topic)
    events = [parse_event(d) for d in itertools.islice(simulate(UNITS, seed=SEED), N)]
    assert len(events) == N
    expected = {str(e.event_id): reference.encode_event(e) for e in events}
    assert len(expected) == N

    local_broker.stop()
    assert not local_broker.running

    data_dir = tmp_path / "state"
    outbox = data_dir / "outbox.sqlite"
    script = tmp_path / "publisher.py"
    script.write_text(_PUBLISHER)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t0 = time.monotonic()
    with open(tmp_path / "publisher.err", "w") as stderr:  # librdkafka's connection-refused logs
        proc = subprocess.Popen(
            [sys.executable, str(script), bootstrap, str(outbox), topic, str(N), str(UNITS), str(SEED)],
            stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=REPO, env=env,
        )  # fmt: skip
    try:
        assert proc.stdout is not None

        def next_line() -> str:
            ready, _, _ = select.select([proc.stdout], [], [], 60)
            return proc.stdout.readline() if ready and proc.stdout else ""

        line = next_line()  # publish_many returned: the events are on disk
        assert line.startswith(f"STORED {N} PENDING {N}"), (
            line,
            (tmp_path / "publisher.err").read_text()[-3000:],
        )
        line = next_line()  # failed deliveries keep their rows
        assert line.startswith(f"FLUSHED PENDING {N} FAILED "), line
        assert int(line.split()[4]) >= N and line.split()[6] == "0", line
    finally:
        proc.send_signal(signal.SIGKILL)  # a crash: no flush, no close
        proc.wait(10)
        if proc.stdout:
            proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    t_stored = time.monotonic() - t0

    # everything is on disk, byte-identical, in publish order
    rows = _outbox_rows(outbox)
    assert len(rows) == N
    assert [r[0] for r in rows] == [str(e.event_id) for e in events]
    assert all(t == topic and v == expected[eid] for eid, t, v in rows)

    local_broker.start()
    assert local_broker.port == port and local_broker.bootstrap == bootstrap  # same port

    t1 = time.monotonic()
    flush = subprocess.run(
        [sys.executable, "-m", "traceline.cli", "outbox", "flush",
         "--bootstrap", bootstrap, "--data-dir", str(data_dir), "--timeout", "60"],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=120, check=False,
    )  # fmt: skip
    t_flush = time.monotonic() - t1
    assert flush.returncode == 0, flush.stdout + flush.stderr
    assert f"{N} delivered, 0 still pending" in " ".join(flush.stdout.split())
    assert _outbox_rows(outbox) == []

    seen: Counter[str] = Counter()
    wrong_value: list[str] = []

    def record(msg: object) -> None:
        eid = dict(msg.headers())["event_id"].decode()  # type: ignore[attr-defined]
        seen[eid] += 1
        if msg.value() != expected.get(eid):  # type: ignore[attr-defined]
            wrong_value.append(eid)

    raw = consume_all(bootstrap, topic, record)
    duplicates = raw - len(seen)
    print(
        f"\noutbox: {N} events stored with the broker down (all deliveries timed out) in {t_stored:.1f}s, "
        "publisher SIGKILLed; "
        f"after restart `outbox flush` delivered in {t_flush:.1f}s; consumed {raw} records, "
        f"{len(seen)} distinct event_ids, {duplicates} raw duplicates"
    )
    assert set(seen) == set(expected)  # every event at least once, nothing foreign
    assert len(seen) == N
    assert not wrong_value
    assert duplicates == 0, (
        f"{duplicates} duplicates (at-least-once allows them, but none were expected here)"
    )


def test_publish_with_the_local_stack_stopped_stores_and_outbox_flush_delivers_later(
    local_broker: localstack.LocalBroker, topic_prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No bootstrap configured, the local stack of the data dir stopped: ``traceline publish``
    stores every valid event and says they wait on disk (exit 3), ``outbox flush`` says the
    same without a traceback; once the stack is up again, ``outbox flush`` (still no
    bootstrap given) delivers them to it."""
    for var in ("TRACELINE_KAFKA_BOOTSTRAP", "KAFKA_BOOTSTRAP", "TRACELINE_KAFKA_EVENTS_TOPIC"):
        monkeypatch.delenv(var, raising=False)
    bootstrap = local_broker.bootstrap
    assert bootstrap is not None
    assert local_broker.data_dir == tmp_path / "kafka"  # the data dir's own local stack
    topic = create_topic(AdminClient({"bootstrap.servers": bootstrap}), f"{topic_prefix}events", 3)
    events = list(itertools.islice(simulate(50, seed=SEED), 40))
    src = tmp_path / "events.jsonl"
    src.write_text("".join(json.dumps(e) + "\n" for e in events) + "{not json\n")
    local_broker.stop()

    runner = CliRunner()
    common = ["--data-dir", str(tmp_path)]
    published = runner.invoke(app, ["publish", "--file", str(src), "--topic", topic, *common])
    text = " ".join(published.output.split())
    assert published.exit_code == 3, published.output
    assert "Traceback" not in text
    assert "40 valid events: 40 stored" in text and "1 invalid lines" in text
    assert f"40 events wait on disk in the outbox ({tmp_path / 'outbox.sqlite'})" in text
    assert f"the local one (last on {bootstrap}) is stopped" in text and "traceline outbox flush" in text
    assert len(_outbox_rows(tmp_path / "outbox.sqlite")) == 40

    flush = runner.invoke(app, ["outbox", "flush", *common])
    assert flush.exit_code == 3, flush.output
    assert "Traceback" not in flush.output and "40 events wait on disk" in " ".join(flush.output.split())

    local_broker.start()
    assert local_broker.bootstrap == bootstrap
    flush = runner.invoke(app, ["outbox", "flush", *common, "--timeout", "60"])
    assert flush.exit_code == 0, flush.output
    assert "40 delivered, 0 still pending" in " ".join(flush.output.split())
    got: Counter[str] = Counter()
    consume_all(bootstrap, topic, lambda m: got.update([dict(m.headers())["event_id"].decode()]))
    assert set(got) == {str(e["event_id"]) for e in events}
