"""The browser tests' plant: a real server over a simulated plant, and questions about it.

* :func:`running_workbench`: ``traceline serve`` as it runs in production (a
  :class:`traceline.serve.Server`: faust worker child, sink, alert engine) on a given broker,
  with the API it serves (``create_api`` with its health, lag and ledger) under uvicorn on a
  free loopback port, over the demo's plant (``make demo``: seed 7) of ``units`` units
  published through the outbox and waited for; an administrator and a one-programme analyst
  token;
* :func:`largest_lot`: the lot whose recall reaches the most units; :func:`nc_event`: a
  nonconformance on a lot, to raise an alert while a test watches.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from producers.publisher import Publisher
from producers.simulator import simulate
from schemas.jsonform import parse_event
from schemas.models import Disposition, NonconformanceRaised, Severity, TargetKind
from tests.integration.conftest import pipeline_settings
from tests.support import wait_caught_up
from traceline.auth import TokenStore
from traceline.serve import ServeOptions, Server

__all__ = ["Workbench", "running_workbench", "largest_lot", "nc_event"]


@dataclass
class Workbench:
    url: str
    server: Server
    admin: str  # tokens
    analyst: str
    analyst_program: str
    bootstrap: str
    events: int
    units: int

    def get(self, path: str, token: str | None = None, **params: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token or self.admin}"}
        return httpx.get(self.url + path, params=params, headers=headers, timeout=120)

    def publish(self, events: list[Any]) -> None:
        pub = Publisher(
            self.bootstrap,
            self.server.settings.data_dir / "outbox-extra.sqlite",
            topic=self.server.topics.events,
        )
        try:
            pub.publish_many(events)
        finally:
            pub.close(10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_workbench(bootstrap: str, tmp: Path, units: int) -> Iterator[Workbench]:
    """A server over a plant of ``units`` units, its API on a free port, until the block ends."""
    prefix = f"wb{uuid.uuid4().hex[:8]}."
    settings = pipeline_settings(tmp, prefix)
    server = Server(
        settings,
        ServeOptions(bootstrap, with_api=False, sink_batch_size=5_000, sink_batch_seconds=0.3),
    )
    server.start()
    uv: uvicorn.Server | None = None
    try:
        events = 0
        pub = Publisher(bootstrap, settings.data_dir / "outbox.sqlite", topic=server.topics.events)
        try:
            batch: list[Any] = []
            for d in simulate(units, seed=7):  # the demo's plant (make demo: seed 7)
                batch.append(parse_event(d))
                if len(batch) == 5_000:
                    pub.publish_many(batch)
                    events, batch = events + len(batch), []
            pub.publish_many(batch)
            events += len(batch)
        finally:
            pub.close(60)
        assert wait_caught_up(
            bootstrap,
            server.topics,
            app_id=settings.app_id,
            sink_group=settings.sink_group,
            timeout=900,
            quiet=2.0,
        ), "the pipeline did not catch up with the plant"
        tokens = TokenStore(settings.data_dir / "tokens.json")
        admin = tokens.create("wb-admin", "administrator", "*")[1]
        program = _a_program(server)
        analyst = tokens.create("wb-analyst", "analyst", program)[1]
        api = server.build_api()  # as `traceline serve` builds it: the query audit log included
        port = _free_port()
        uv = uvicorn.Server(uvicorn.Config(api, host="127.0.0.1", port=port, log_level="warning"))
        threading.Thread(target=uv.run, name="workbench-api", daemon=True).start()
        deadline = time.monotonic() + 30
        while not uv.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert uv.started, "the API did not start"
        url = f"http://127.0.0.1:{port}"
        yield Workbench(url, server, admin, analyst, program, bootstrap, events, units)
    finally:
        if uv is not None:
            uv.should_exit = True
            time.sleep(0.5)
        server.stop()


def _a_program(server: Server) -> str:
    assert server.store is not None
    rows = server.store.query(
        "SELECT toString(program) AS p, count() AS n FROM operations GROUP BY p ORDER BY n DESC"
    )
    assert len(rows) >= 2, "the plant should have several programmes"
    return str(rows[1]["p"])


def largest_lot(wb: Workbench) -> tuple[str, dict[str, Any]]:
    """The lot whose recall reaches the most units: every lot ranked by the units that consumed
    it or a lot made from it (the lot indexes), then the API's answer for the first five decides."""
    store = wb.server.store
    assert store is not None
    units: dict[str, set[str]] = {}
    for r in store.query("SELECT DISTINCT lot_id, uii FROM lot_units"):
        units.setdefault(r["lot_id"], set()).add(r["uii"])
    made: dict[str, set[str]] = {}
    for r in store.query("SELECT DISTINCT input_lot_id, output_lot_id FROM lot_lineage"):
        made.setdefault(r["input_lot_id"], set()).add(r["output_lot_id"])

    def reach(lot: str) -> int:
        seen, todo, out = {lot}, [lot], set()
        while todo:
            x = todo.pop()
            out |= units.get(x, set())
            todo += [y for y in made.get(x, ()) if y not in seen]
            seen |= made.get(x, set())
        return len(out)

    ranked = sorted({*units, *made}, key=lambda lot: (-reach(lot), lot))[:5]
    best: tuple[str, dict[str, Any]] | None = None
    for lot in ranked:
        got = wb.get("/recall", kind="lot", id=lot).json()
        if best is None or len(got["units"]) > len(best[1]["units"]):
            best = (lot, got)
    assert best is not None and best[1]["units"], "the plant should have a lot that reached units"
    return best


def nc_event(wb: Workbench, lot: str, ncr: str) -> NonconformanceRaised:
    assert wb.server.store is not None
    program = wb.server.store.query(
        "SELECT toString(program) AS p FROM lot_consumption WHERE lot_id = {l:String} LIMIT 1", {"l": lot}
    )
    return NonconformanceRaised(
        event_id=str(uuid.uuid4()),
        event_time=datetime.now(UTC),
        source="qms-browser-test",
        site="plant-a",
        program=str(program[0]["p"]) if program else "PRG-AESA",
        ncr_id=ncr,
        target_kind=TargetKind.LOT,
        target_id=lot,
        severity=Severity.CRITICAL,
        disposition=Disposition.PENDING,
        description="raised by the browser test while the feed is open",
    )
