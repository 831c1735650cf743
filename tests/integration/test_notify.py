"""The webhook notifier against a real HTTP server on loopback: signed payloads, retries on 500."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from pydantic import SecretStr

from schemas.alert import Alert
from streams.notify import Notifier, NotifyConfig, verify

pytestmark = pytest.mark.integration

SECRET = "s3cret"


class _Receiver(ThreadingHTTPServer):
    def __init__(self, fail_first: int) -> None:
        self.fail_first = fail_first
        self.requests: list[tuple[int, dict[str, str], bytes]] = []  # (status answered, headers, body)
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Receiver

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with self.server.lock:
            code = 500 if len(self.server.requests) < self.server.fail_first else 204
            self.server.requests.append((code, dict(self.headers), body))
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    srv = _Receiver(fail_first=2)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _alert(severity: str = "CRITICAL", alert_id: str = "HELD_LOT_USED:L1:PCB:1:WO:0010") -> Alert:
    now = datetime.now(UTC)
    return Alert(
        alert_id=alert_id,
        rule="HELD_LOT_USED",
        severity=severity,
        title="lot L1 (HOLD) used on PCB:1",
        subject_kind="lot",
        subject_id="L1",
        raised_at=now,
        event_time=now,
        trigger_event_id="e1",
        trigger_type="OperationCompleted",
        site="plant-a",
        program="P1",
        unit_count=1,
        units=["PCB:1"],
        details={"serial": "PCB:1"},
    )


def test_webhook_signed_and_retried_after_500(receiver: _Receiver) -> None:
    url = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
    n = Notifier(
        NotifyConfig(
            webhook_url=url,
            webhook_secret=SecretStr(SECRET),
            webhook_severities={"CRITICAL"},
            backoff_s=0.05,
            max_attempts=5,
        )
    ).start()
    try:
        t0 = time.monotonic()
        assert n.submit(_alert())
        assert not n.submit(_alert("INFO", "OTHER"))  # INFO is not routed to the webhook here
        assert time.monotonic() - t0 < 0.1  # submit never waits for delivery
        assert n.join(10)
    finally:
        n.stop()
    codes = [c for c, _h, _b in receiver.requests]
    assert codes == [500, 500, 204]  # two failures, retried with back-off, then delivered once
    assert n.stats.webhook_sent == 1 and n.stats.webhook_retries == 2 and n.stats.webhook_failed == 0
    bodies = {b for _c, _h, b in receiver.requests}
    assert len(bodies) == 1  # every retry carries the same bytes
    for _c, headers, body in receiver.requests:
        assert verify(body, SECRET, headers["X-Traceline-Signature"])
        assert not verify(body, "wrong", headers["X-Traceline-Signature"])
        assert headers["X-Traceline-Delivery"].endswith("#1")
    payload = json.loads(bodies.pop())
    assert payload["alert_id"].startswith("HELD_LOT_USED:") and payload["units"] == ["PCB:1"]


def test_queue_full_drops_without_blocking() -> None:
    n = Notifier(NotifyConfig(webhook_url="http://127.0.0.1:9/", webhook_secret=SecretStr("k"), queue_size=2))
    results = [n.submit(_alert(alert_id=f"A{i}")) for i in range(4)]
    assert results == [True, True, False, False] and n.stats.dropped == 2
