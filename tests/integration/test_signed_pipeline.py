"""Signed events through ``traceline serve`` with require_signed: a spoofed RELEASED of a
quarantined lot is dead-lettered by the sink and ignored by the alert engine, so the held lot
used afterwards still raises HELD_LOT_USED (without the alert engine's check it did not)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from producers.publisher import Publisher
from schemas.models import LotStatusChanged
from schemas.serde import AvroSerde
from schemas.signing import GatewayKey
from sinks.gateway_keys import GatewayKeyRegistry
from tests.integration.conftest import pipeline_settings
from tests.samples import sample_events
from traceline.serve import Server

pytestmark = pytest.mark.integration


def _until(what: Callable[[], Any], timeout: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = what()
        if got:
            return got
        time.sleep(0.3)
    raise AssertionError("timed out")


def test_a_spoofed_release_is_dead_lettered_and_the_held_lot_still_alerts(
    pipeline: Callable[..., Server], kafka_bootstrap: str, tmp_path: Path, topic_prefix: str
) -> None:
    s = pipeline_settings(tmp_path, topic_prefix)
    s.ingest.require_signed = True
    reg = GatewayKeyRegistry(s.gateway_keys_path)
    qms, cell = GatewayKey.generate("qms-01"), GatewayKey.generate("cell-7-gw")
    reg.create(qms, tmp_path / "qms.json")
    reg.create(cell, tmp_path / "cell.json")
    server = pipeline(settings=s)
    store = server.store
    assert store is not None
    samples = {e.type: e for e in sample_events()}
    op = samples["OperationCompleted"]
    lot = op.consumed_lots[0].lot_id
    t0 = op.event_time - timedelta(hours=2)
    hold = LotStatusChanged(
        event_id="11111111-0000-4000-8000-000000000001",
        event_time=t0,
        source="qms-01",
        site=op.site,
        program=op.program,
        lot_id=lot,
        status="QUARANTINE",
        reason="bad solder",
    )
    spoof = hold.model_copy(
        update={
            "event_id": "11111111-0000-4000-8000-000000000002",
            "event_time": t0 + timedelta(hours=1),
            "status": "RELEASED",
            "reason": "nothing to see",
        }
    )
    serde = AvroSerde(topic=s.kafka.events_topic)

    def send(signer: GatewayKey | None, e: Any, name: str) -> None:
        pub = Publisher(
            kafka_bootstrap,
            tmp_path / f"{name}.sqlite",
            topic=s.kafka.events_topic,
            serde=serde,
            signer=signer,
        )
        pub.publish_many([e])
        assert pub.close(60) == 0

    def landed(eid: str) -> Any:
        return store.query(
            "SELECT verified_source FROM lot_status WHERE event_id = {e:String} UNION ALL "
            "SELECT verified_source FROM operations WHERE event_id = {e:String}",
            {"e": eid},
        )

    send(qms, hold, "qms")
    assert _until(lambda: landed(hold.event_id))[0]["verified_source"] == "qms-01"
    send(None, spoof, "spoof")
    dead = _until(
        lambda: store.query(
            "SELECT error FROM dead_letters WHERE source_topic = {t:String}", {"t": s.kafka.events_topic}
        )
    )
    assert [d["error"] for d in dead] == ["UnsignedEvent"]
    send(cell, op, "cell")
    assert _until(lambda: landed(op.event_id))[0]["verified_source"] == "cell-7-gw"
    alerts = _until(lambda: store.query("SELECT rule FROM alerts WHERE rule = 'HELD_LOT_USED'"))
    assert alerts, "the spoofed release must not end the hold in the alert engine"
    assert not landed(spoof.event_id)
