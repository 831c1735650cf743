"""The CLI's read commands against a real store (chdb under a data dir, no server running):
not found is an answer with its own exit code, a wrong data dir is an error (and creates
nothing), reports name who prepared them, windows must be windows. They run with an
administrator's token in ``TRACELINE_TOKEN`` (``admin_token``); what a token of fewer
programmes sees is tests/integration/test_access.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from sinks.store import Store
from tests.integration.test_report import load_plant
from traceline.auth import TokenStore
from traceline.cli import app
from traceline.errors import EXIT_NOT_FOUND, EXIT_USAGE

pytestmark = pytest.mark.integration
runner = CliRunner()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, int]]]:
    d = tmp_path_factory.mktemp("cli")
    store = Store.open(f"chdb://{(d / 'clickhouse').resolve()}", "traceline")
    fan = load_plant(store, 200, 11)
    store.close()
    yield d, fan


@pytest.fixture(scope="module")
def admin_token(data_dir: tuple[Path, dict[str, int]]) -> str:
    return TokenStore(data_dir[0] / "tokens.json").create("test-admin", "administrator", "*")[1]


@pytest.fixture(autouse=True)
def _no_server(monkeypatch: pytest.MonkeyPatch, admin_token: str) -> None:
    for var in ("TRACELINE_KAFKA_BOOTSTRAP", "TRACELINE_CLICKHOUSE_DSN", "TRACELINE_REPORT_PREPARED_BY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TRACELINE_TOKEN", admin_token)


def _run(*args: str) -> Result:
    return runner.invoke(app, list(args))


def _text(r: Result) -> str:
    return " ".join(r.output.split())


def test_unknown_lot_and_serial_exit_4_with_suggestions(data_dir: tuple[Path, dict[str, int]]) -> None:
    d, fan = data_dir
    lot = max(fan, key=lambda k: (fan[k], k))
    r = _run("recall", "--lot", lot[:-1], "--data-dir", str(d))
    assert r.exit_code == EXIT_NOT_FOUND, r.output
    assert "not found" in _text(r) and "did you mean" in _text(r)
    ok = _run("recall", "--lot", lot, "--data-dir", str(d), "--json")
    assert ok.exit_code == 0, ok.output
    r = _run("trace", "backward", "--serial", "NO-SUCH:SERIAL", "--data-dir", str(d))
    assert r.exit_code == EXIT_NOT_FOUND
    r = _run("trace", "forward", "--lot", "NO-SUCH-LOT", "--data-dir", str(d))
    assert r.exit_code == EXIT_NOT_FOUND


def test_a_wrong_data_dir_is_an_error_and_creates_nothing(tmp_path: Path) -> None:
    nowhere = tmp_path / "typo"
    r = _run("recall", "--lot", "L1", "--data-dir", str(nowhere))
    assert r.exit_code == EXIT_USAGE, r.output
    assert "no traceline store" in _text(r)
    assert not nowhere.exists()


def test_a_report_names_who_prepared_it(
    data_dir: tuple[Path, dict[str, int]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d, fan = data_dir
    lot = max(fan, key=lambda k: (fan[k], k))
    r = _run("report", "--lot", lot, "--data-dir", str(d), "-o", str(tmp_path / "r.html"))
    assert r.exit_code == EXIT_USAGE and "--prepared-by" in _text(r)
    assert not (tmp_path / "r.html").exists()
    monkeypatch.setenv("TRACELINE_REPORT_PREPARED_BY", "Q. Engineer")
    r = _run("report", "--lot", lot, "--data-dir", str(d), "-o", str(tmp_path / "r.html"))
    assert r.exit_code == 0, r.output
    assert "Q. Engineer" in (tmp_path / "r.html").read_text()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--from", "2026-02-01", "--to", "2026-01-01"], "is after --to"),
        (["--from", "last tuesday"], "is not a date or time"),
        (["--from", "0999-01-01"], "outside the times the store holds"),
    ],
)
def test_windows_must_be_windows(data_dir: tuple[Path, dict[str, int]], args: list[str], says: str) -> None:
    r = _run("recall", "--station", "ST-1", *args, "--data-dir", str(data_dir[0]))
    assert r.exit_code == EXIT_USAGE, r.output
    assert says in _text(r)


def test_short_flags_mean_one_thing() -> None:
    r = _run("report", "-f", "pdf", "--lot", "L")
    assert r.exit_code == EXIT_USAGE  # -f is --file (publish), not --format
    assert "-f" in _text(r)
