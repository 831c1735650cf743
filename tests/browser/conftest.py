"""Fixtures for the workbench's browser tests (``tests/browser/plant.py`` builds the server):

* ``workbench`` (package: one plant for every browser test, closed after them: one process holds
  one embedded store at a time): ``traceline serve`` as it runs in
  production, on the session broker (``tests/conftest.py``), over a plant of
  ``WORKBENCH_UNITS`` units (default 400; the demo's is 60000, for measuring);
* ``browser`` (session): Chromium at ``/usr/bin/chromium`` (``make install`` installs it;
  Playwright's own browser download is not used); the tests are skipped with the reason if it
  is missing.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import sync_playwright

from tests.browser.plant import Workbench, running_workbench

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="package")  # not session: its embedded store must close before other tests open theirs
def workbench(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workbench]:
    units = int(os.environ.get("WORKBENCH_UNITS", "400"))
    with running_workbench(kafka_bootstrap, tmp_path_factory.mktemp("workbench"), units) as wb:
        yield wb


@pytest.fixture(scope="package")  # Playwright's sync API runs an event loop: gone after these tests
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).is_file() and shutil.which("chromium") is None:
        pytest.skip(f"no Chromium at {CHROMIUM}: `make install` installs it (apt-get install chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM if Path(CHROMIUM).is_file() else shutil.which("chromium")
        )
        try:
            yield b
        finally:
            b.close()
