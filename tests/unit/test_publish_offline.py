"""``traceline publish`` / ``outbox flush`` with no broker at all (no Kafka needed):

* no broker configured and the local stack stopped: the events are validated and stored in
  the outbox all the same, the command says they wait on disk and how to deliver them, exit 3;
  with a stack that ran before, its last bootstrap (``state.json``) is the target;
* ``outbox flush`` without a broker: a clear error, exit 3, the rows stay;
* repeated event ids in a file: identical repeats dropped and counted, conflicts refused with
  both line numbers; the summary adds up (valid = stored + identical + conflicts).
"""

from __future__ import annotations

import itertools
import json
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from producers.simulator import simulate
from traceline.cli import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def _no_configured_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("TRACELINE_KAFKA_BOOTSTRAP", "KAFKA_BOOTSTRAP", "TRACELINE_KAFKA_EVENTS_TOPIC"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("TRACELINE_DATA_DIR", raising=False)


def _text(result: Result) -> str:
    return " ".join(result.output.split())


def _events(n: int) -> list[dict[str, Any]]:
    return list(itertools.islice(simulate(100, seed=21), n))


def _outbox_ids(data_dir: Path) -> list[str]:
    with sqlite3.connect(data_dir / "outbox.sqlite") as db:
        return [r[0] for r in db.execute("SELECT event_id FROM outbox ORDER BY seq")]


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again: nothing listens there


def test_no_broker_ever_the_events_wait_on_disk(tmp_path: Path) -> None:
    events = _events(6)
    src = _write(tmp_path / "in.jsonl", [json.dumps(e) for e in events] + ["{not json"])
    data_dir = tmp_path / "state"
    result = runner.invoke(app, ["publish", "--file", str(src), "--data-dir", str(data_dir)])
    text = _text(result)
    assert result.exit_code == 3, result.output
    assert "Traceback" not in text
    assert "6 valid events: 6 stored" in text and "0 delivered to Kafka, 1 invalid lines" in text
    assert "line 7:" in text  # the invalid line is still reported
    assert "6 events wait on disk in the outbox" in text
    assert "the local one never ran" in text
    assert "traceline outbox flush" in text and "traceline stack up" in text
    assert _outbox_ids(data_dir) == [str(e["event_id"]) for e in events]

    # a second run of the same file: nothing stored twice, the repeats are identical
    again = runner.invoke(app, ["publish", "--file", str(src), "--data-dir", str(data_dir)])
    assert again.exit_code == 3, again.output
    assert "6 valid events: 0 stored, 6 identical repeats dropped, 0 conflicting" in _text(again)
    assert len(_outbox_ids(data_dir)) == 6


def test_a_stopped_local_stack_its_last_bootstrap_is_used_and_nothing_is_lost(tmp_path: Path) -> None:
    data_dir = tmp_path / "state"
    kafka = data_dir / "kafka"
    kafka.mkdir(parents=True)
    last = f"127.0.0.1:{_dead_port()}"
    (kafka / "state.json").write_text(json.dumps({"bootstrap": last, "pid": None, "running": False}))
    events = _events(4)
    src = _write(tmp_path / "in.jsonl", [json.dumps(e) for e in events])
    t0 = time.monotonic()
    result = runner.invoke(
        app, ["publish", "--file", str(src), "--data-dir", str(data_dir), "--timeout", "60"]
    )
    text = _text(result)
    assert result.exit_code == 3, result.output
    assert time.monotonic() - t0 < 30  # no 60 s wait for a broker known to be stopped
    assert f"the local one (last on {last}) is stopped" in text
    assert "4 events wait on disk in the outbox" in text and "traceline outbox flush" in text
    assert _outbox_ids(data_dir) == [str(e["event_id"]) for e in events]

    flush = runner.invoke(app, ["outbox", "flush", "--data-dir", str(data_dir)])
    assert flush.exit_code == 3, flush.output
    assert "Traceback" not in _text(flush)
    assert "4 events wait on disk in the outbox" in _text(flush) and last in _text(flush)
    assert len(_outbox_ids(data_dir)) == 4


def test_outbox_flush_without_any_broker_is_a_clear_error(tmp_path: Path) -> None:
    data_dir = tmp_path / "state"
    empty = runner.invoke(app, ["outbox", "flush", "--data-dir", str(data_dir)])
    assert empty.exit_code == 0, empty.output  # nothing waits: nothing to deliver, no broker needed
    assert "0 delivered, 0 still pending" in _text(empty)

    src = _write(tmp_path / "in.jsonl", [json.dumps(e) for e in _events(3)])
    runner.invoke(app, ["publish", "--file", str(src), "--data-dir", str(data_dir)])
    flush = runner.invoke(app, ["outbox", "flush", "--data-dir", str(data_dir)])
    text = _text(flush)
    assert flush.exit_code == 3, flush.output
    assert "Traceback" not in text
    assert "3 events wait on disk in the outbox" in text and "the local one never ran" in text
    assert len(_outbox_ids(data_dir)) == 3


def test_repeated_ids_are_reported_by_line_and_the_summary_adds_up(tmp_path: Path) -> None:
    e = _events(4)
    conflict = dict(e[1], site="OTHER-SITE")  # same event id, other content
    lines = [
        json.dumps(e[0]),  # 1
        json.dumps(e[1]),  # 2
        json.dumps(e[2]),  # 3
        " ".join(json.dumps(e[0], indent=1).split()),  # 4: the same event, written differently
        json.dumps(conflict),  # 5
        json.dumps(e[3]),  # 6
        json.dumps(e[2]),  # 7
        "{broken",  # 8
    ]
    src = _write(tmp_path / "rep.jsonl", lines)
    data_dir = tmp_path / "state"
    dead = ["--bootstrap", f"127.0.0.1:{_dead_port()}", "--timeout", "1"]  # a broker that never answers
    result = runner.invoke(app, ["publish", "--file", str(src), "--data-dir", str(data_dir), *dead])
    text = _text(result)
    assert result.exit_code == 3, result.output  # nothing delivered (no broker): 3 before 1
    assert "line 4: repeats line 1" in text and f"event {e[0]['event_id']}, identical" in text
    assert "line 7: repeats line 3" in text
    assert f"line 5: event id {e[1]['event_id']} is also on line 2 with other content" in text
    assert "line 5 refused" in text
    # 7 valid lines = 4 stored + 2 identical repeats + 1 conflict
    assert "7 valid events: 4 stored, 2 identical repeats dropped, 1 conflicting repeats refused" in text
    assert "1 invalid lines" in text
    assert _outbox_ids(data_dir) == [str(x["event_id"]) for x in e]

    # against the outbox of the earlier run: the conflicting line is refused again, the rest
    # are identical repeats of the events waiting there
    again = runner.invoke(app, ["publish", "--file", str(src), "--data-dir", str(data_dir), *dead])
    text = _text(again)
    assert "7 valid events: 0 stored, 6 identical repeats dropped, 1 conflicting repeats refused" in text
    assert "line 1: event" in text and "already waiting in the outbox" in text
