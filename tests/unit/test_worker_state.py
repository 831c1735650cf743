"""The stream worker's local state (no broker): its own directory per app id (so per topic
prefix), the check against the changelog topic, faust's / RocksDB's start-up errors recognised,
and the documented recovery (``reset-state``), which refuses to delete a running worker's state."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from faust.exceptions import ConsistencyError
from rocksdict import Options, Rdict
from typer.testing import CliRunner

from streams.app import (
    LocalStateError,
    LocalStateInUseError,
    changelog_topic,
    check_local_state,
    local_offsets,
    local_state_dir,
    local_state_failure,
    reset_local_state,
)
from traceline.cli_worker import worker_app
from traceline.settings import Settings

TOPIC = "p.traceline-streams-genealogy-nodes-changelog"
OFFSET_KEY = b"__faust\0offset__"


@pytest.fixture
def worker(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[ModuleType]:
    """``traceline.worker`` imported with a (never contacted) bootstrap and a scratch data dir."""
    monkeypatch.setenv("TRACELINE_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    monkeypatch.setenv("TRACELINE_DATA_DIR", str(tmp_path / "import"))
    monkeypatch.delitem(sys.modules, "traceline.worker", raising=False)
    yield importlib.import_module("traceline.worker")
    sys.modules.pop("traceline.worker", None)


def _settings(data_dir: Path, prefix: str) -> Settings:
    s = Settings(data_dir=data_dir)
    s.kafka.topic_prefix = prefix
    return s


def _table(state_dir: Path, partition: int, offset: int | None) -> Path:
    """A table database as faust's RocksDB store leaves it (raw mode, its offset key)."""
    path = state_dir / "v1" / "tables" / f"genealogy-nodes-{partition}.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    db = Rdict(str(path), options=opts)
    db.put(b"unit-1", b"node")
    if offset is not None:
        db.put(OFFSET_KEY, str(offset).encode())
    db.close()
    return path


# -- one directory per app id --------------------------------------------------------------
def test_pipelines_with_other_prefixes_on_one_data_dir_keep_their_state_apart(
    worker: ModuleType, tmp_path: Path
) -> None:
    a = worker.config_from_settings(_settings(tmp_path, "a."), "k:9092")
    b = worker.config_from_settings(_settings(tmp_path, "b."), "k:9092")
    plain = worker.config_from_settings(_settings(tmp_path, ""), "k:9092")
    assert a.data_dir == tmp_path / "streams" / "a.traceline-streams"
    assert b.data_dir == tmp_path / "streams" / "b.traceline-streams"
    assert plain.data_dir == tmp_path / "streams" / "traceline-streams"
    assert len({a.data_dir, b.data_dir, plain.data_dir}) == 3
    assert local_state_dir(tmp_path, "x/../y") == tmp_path / "streams" / "x_.._y"  # never a path
    assert changelog_topic("a.traceline-streams") == "a.traceline-streams-genealogy-nodes-changelog"


def test_the_faust_app_keeps_its_tables_under_the_state_dir(worker: ModuleType, tmp_path: Path) -> None:
    cfg = worker.config_from_settings(_settings(tmp_path / "d", "a."), "k:9092")
    app = worker.build_app(cfg)
    assert Path(app.conf.tabledir) == cfg.data_dir / "v1" / "tables"  # what local_offsets reads
    assert cfg.data_dir.is_dir()  # created with its parents (faust makes only the last level)
    table = app.tables["genealogy-nodes"]
    assert table.changelog_topic.get_topic_name() == changelog_topic("a.traceline-streams")


# -- the check against the changelog topic ---------------------------------------------------
def test_state_ahead_of_its_changelog_is_refused_with_the_directory_and_the_recovery(tmp_path: Path) -> None:
    state = tmp_path / "streams" / "p.traceline-streams"
    _table(state, 0, 110)
    _table(state, 1, 7)
    _table(state, 2, None)  # never applied a change: nothing to compare
    assert local_offsets(state) == {0: 110, 1: 7}

    check_local_state(state, TOPIC, None, {0: 111, 1: 8}, recovery="R")  # consistent: end past it
    for ends in ({0: 0, 1: 0}, {0: 111, 1: 7}, {}):  # re-created (empty), one behind, deleted
        with pytest.raises(LocalStateError) as info:
            check_local_state(state, TOPIC, "id-1", ends, recovery="run reset-state")
        text = str(info.value)
        assert str(state) in text and "run reset-state" in text and TOPIC in text
        assert "applied offset" in text


def test_state_built_from_a_deleted_changelog_topic_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "s"
    _table(state, 0, 5)
    check_local_state(state, TOPIC, "id-1", {0: 100}, recovery="R")  # remembers the topic id
    assert json.loads((state / "changelog.json").read_text())["topic_id"] == "id-1"
    check_local_state(state, TOPIC, "id-1", {0: 100}, recovery="R")
    with pytest.raises(
        LocalStateError, match="id-1, which was deleted; the topic of that name now has id id-2"
    ):
        check_local_state(state, TOPIC, "id-2", {0: 100}, recovery="R")  # re-created and refilled


def test_a_database_that_cannot_be_opened_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "s"
    path = _table(state, 0, 5)
    (path / "CURRENT").write_text("MANIFEST-999999\n")  # points at a file that is not there
    with pytest.raises(LocalStateError, match="cannot open .*genealogy-nodes-0.db"):
        check_local_state(state, TOPIC, None, {0: 100}, recovery="R")


def test_faust_and_rocksdb_start_up_errors_are_recognised() -> None:
    def exited_from(exc: BaseException) -> SystemExit:
        # how faust's worker ends after a crash: the crash reason re-raised, then sys.exit(1)
        try:
            try:
                raise exc
            except Exception:  # noqa: BLE001
                sys.exit(1)
        except SystemExit as done:
            return done

    consistency = ConsistencyError(
        "The persisted offset for changelog topic partition TP(topic='t', partition=0) is higher\n"
        "than the last offset in that topic (highwater) (110 > -1)."
    )
    reason, reset_helps = local_state_failure(exited_from(consistency)) or ("", False)
    assert "persisted offset" in reason and "(110 > -1)" in reason and reset_helps
    corrupt = Exception("Corruption: bad block in /x/genealogy-nodes-0.db/000012.sst")
    assert local_state_failure(exited_from(corrupt)) == (str(corrupt), True)
    locked = Exception(
        "IO error: While lock file: /x/genealogy-nodes-0.db/LOCK: Resource temporarily unavailable"
    )
    reason, reset_helps = local_state_failure(exited_from(locked)) or ("", True)
    assert "another worker holds" in reason and not reset_helps
    assert local_state_failure(exited_from(RuntimeError("Corruption: not ours"))) is None
    assert local_state_failure(SystemExit(0)) is None


# -- the recovery ---------------------------------------------------------------------------
def test_reset_state_deletes_this_pipelines_state_only(tmp_path: Path) -> None:
    mine = local_state_dir(tmp_path, "p.traceline-streams")
    other = local_state_dir(tmp_path, "q.traceline-streams")
    _table(mine, 0, 3)
    _table(other, 0, 3)
    legacy = tmp_path / "streams" / "v1"
    legacy.mkdir(parents=True)
    args = ["reset-state", "--data-dir", str(tmp_path), "--topic-prefix", "p.", "--yes"]
    result = CliRunner().invoke(worker_app, args)
    assert result.exit_code == 0, result.output
    assert f"deleted {mine}" in " ".join(result.output.split())
    assert not mine.exists() and other.exists() and legacy.exists()
    again = CliRunner().invoke(worker_app, args)
    assert again.exit_code == 0 and "no local state to reset" in again.output
    legacy_too = CliRunner().invoke(worker_app, [*args, "--legacy"])
    assert legacy_too.exit_code == 0 and not legacy.exists() and other.exists()


def test_reset_state_asks_first_and_refuses_a_running_workers_state(tmp_path: Path) -> None:
    state = local_state_dir(tmp_path, "traceline-streams")
    path = _table(state, 0, 3)
    args = ["reset-state", "--data-dir", str(tmp_path), "--topic-prefix", ""]
    no = CliRunner().invoke(worker_app, args, input="n\n")
    assert no.exit_code == 2 and state.exists()

    holder = subprocess.Popen(  # another process holds the database open, like a running worker
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from rocksdict import Options, Rdict
            db = Rdict({str(path)!r}, options=Options(raw_mode=True))
            print("open", flush=True)
            sys.stdin.read()
            db.close()
        """)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        with pytest.raises(LocalStateInUseError, match="a running worker holds"):
            reset_local_state(state)
        held = CliRunner().invoke(worker_app, [*args, "--yes"])
        assert held.exit_code == 3 and "in use" in " ".join(held.output.split())
        assert state.exists()
    finally:
        holder.communicate("", timeout=10)
    assert reset_local_state(state) and not state.exists()
    assert reset_local_state(state) is False
