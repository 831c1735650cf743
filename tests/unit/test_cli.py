"""The ``traceline`` CLI without a broker: help everywhere, usage errors exit 2 with a clear
message, ``simulate --out`` writes valid, deterministic JSON Lines, every read command takes
``--token``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner, Result

from schemas.jsonform import parse_line
from traceline.cli import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def _no_configured_broker(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No broker and no token from the environment, and local state under tmp_path (no local
    stack found)."""
    for var in (
        "TRACELINE_KAFKA_BOOTSTRAP",
        "KAFKA_BOOTSTRAP",
        "TRACELINE_KAFKA_EVENTS_TOPIC",
        "TRACELINE_TOKEN",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TRACELINE_DATA_DIR", str(tmp_path / "state"))


def _text(result: Result) -> str:
    """stdout + stderr with rich's line wrapping undone."""
    return " ".join(result.output.split())


def _command_paths() -> Iterator[list[str]]:
    def walk(cmd: object, path: list[str]) -> Iterator[list[str]]:
        yield path
        for name, sub in sorted((getattr(cmd, "commands", None) or {}).items()):
            yield from walk(sub, [*path, name])

    yield from walk(typer.main.get_command(app), [])


COMMANDS = [p for p in _command_paths() if p]


def test_the_expected_commands_exist() -> None:
    names = {" ".join(p) for p in COMMANDS}
    assert {"publish", "simulate", "outbox", "stack", "stack up", "stack down", "stack status"} <= names


@pytest.mark.parametrize("path", [[], *COMMANDS], ids=lambda p: " ".join(p) or "traceline")
def test_help_works_on_every_command(path: list[str]) -> None:
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    assert "Traceback" not in result.output


READ_COMMANDS = [
    ["recall"],
    ["recall", "report"],
    ["report"],
    ["drill"],
    ["trace", "forward"],
    ["trace", "backward"],
    ["alerts", "list"],
    ["status"],
]


@pytest.mark.parametrize("path", READ_COMMANDS, ids=" ".join)
def test_every_read_command_takes_a_token(path: list[str]) -> None:
    """The token for the server (or the programmes applied to the store): --token or TRACELINE_TOKEN."""
    result = runner.invoke(app, [*path, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "--token" in result.output and "TRACELINE_TOKEN" in result.output


def test_publish_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    result = runner.invoke(app, ["publish", "--file", str(missing), "--data-dir", str(tmp_path)])
    assert result.exit_code == 2, result.output
    text = _text(result)
    assert "no such file" in text
    assert "nope.jsonl" in text.replace(" ", "")
    assert "Traceback" not in text
    assert not (tmp_path / "outbox.sqlite").exists()  # nothing was opened for a usage error


def test_publish_without_file_option_is_a_usage_error() -> None:
    result = runner.invoke(app, ["publish"])
    assert result.exit_code == 2
    assert "--file" in result.output


@pytest.mark.parametrize(
    "args",
    [pytest.param([], id="neither"), pytest.param(["--out", "x.jsonl", "--publish"], id="both")],
)
def test_simulate_needs_exactly_one_of_out_and_publish(args: list[str], tmp_path: Path) -> None:
    result = runner.invoke(app, ["simulate", "--units", "10", *args], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert "exactly one of --out FILE or --publish" in _text(result)
    assert not (tmp_path / "x.jsonl").exists()


def test_simulate_rejects_zero_units() -> None:
    result = runner.invoke(app, ["simulate", "--units", "0", "--out", "x.jsonl"])
    assert result.exit_code == 2


def test_simulate_out_writes_valid_deterministic_jsonl(tmp_path: Path) -> None:
    files = []
    for name in ("a.jsonl", "b.jsonl"):
        path = tmp_path / name
        result = runner.invoke(app, ["simulate", "--units", "300", "--seed", "1", "--out", str(path)])
        assert result.exit_code == 0, result.output
        files.append(path)
    data = files[0].read_bytes()
    assert data == files[1].read_bytes()  # same seed, byte-identical
    lines = data.decode().splitlines()
    assert len(lines) > 300
    assert f"{len(lines)} events written" in _text(result)
    events = [parse_line(line) for line in lines]  # every line is a valid event
    assert len({e.event_id for e in events}) == len(events)
    assert len({e.type for e in events}) >= 6

    other = tmp_path / "seed2.jsonl"
    assert runner.invoke(app, ["simulate", "-n", "300", "--seed", "2", "-o", str(other)]).exit_code == 0
    assert other.read_bytes() != data


def test_outbox_status_and_unknown_action(tmp_path: Path) -> None:
    result = runner.invoke(app, ["outbox", "status", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "0 events pending" in _text(result)
    result = runner.invoke(app, ["outbox", "resend", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "unknown action 'resend'" in _text(result)
