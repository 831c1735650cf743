"""Alert delivery: a signed webhook and optional e-mail, in a background thread.

* Webhook: ``POST`` of the alert as JSON (``Content-Type: application/json``) with
  ``X-Traceline-Signature: t=<unix seconds>,sha256=<hex HMAC-SHA256 of "<t>." + the exact body
  bytes, keyed with the configured secret>`` (a webhook URL without a secret is refused: an
  unsigned alert can be forged; receivers reject a signature older than their window with
  :func:`verify`, so a captured request cannot be replayed), ``X-Traceline-Alert-Id`` and
  ``X-Traceline-Delivery``
  (``<alert_id>#<version>``: the same on every retry, so a receiver can drop repeats).
  A connection error, a timeout, a 5xx or a 429 is retried with exponential back-off
  (``backoff_s * 2**attempt``, capped at ``backoff_max_s``) up to ``max_attempts``; another
  4xx is final.
* E-mail (smtplib): optional, when ``smtp_host`` and ``smtp_to`` are set; plain-text summary;
  STARTTLS on unless turned off (``smtp_starttls=false`` for a relay on loopback).
* Per severity: ``webhook_severities`` / ``smtp_severities`` name which severities go where.

:meth:`Notifier.submit` never blocks: it puts the alert on a bounded queue and returns False
(and counts a drop) when the queue is full. The alert itself is not lost: the alerts topic and
table are the source of truth; the notifier is a courtesy on top.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import queue
import smtplib
import threading
import time
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

import httpx
from pydantic import BaseModel, Field, SecretStr, model_validator

from schemas.alert import Alert

__all__ = ["NotifyConfig", "Notifier", "NotifierStats", "sign", "verify"]

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Traceline-Signature"


class NotifyConfig(BaseModel):
    """Delivery (from ``TRACELINE_ALERTS_*``, e.g. ``TRACELINE_ALERTS_WEBHOOK_URL``, through
    ``traceline.settings``)."""

    webhook_url: str | None = None
    webhook_secret: SecretStr | None = None
    webhook_severities: set[str] = Field(default_factory=lambda: {"INFO", "WARNING", "CRITICAL"})
    webhook_timeout_s: float = 5.0
    max_attempts: int = 6
    backoff_s: float = 0.5
    backoff_max_s: float = 30.0
    queue_size: int = 1000
    notify_updates: bool = True  # also deliver version > 1 (a changed impact)
    smtp_host: str | None = None
    smtp_port: int = 25
    smtp_starttls: bool = True
    smtp_user: str | None = None
    smtp_password: SecretStr | None = None
    smtp_from: str = "traceline@localhost"
    smtp_to: list[str] = Field(default_factory=list)
    smtp_severities: set[str] = Field(default_factory=lambda: {"CRITICAL"})


    @model_validator(mode="after")
    def _webhook_is_signed(self) -> NotifyConfig:
        if self.webhook_url and (self.webhook_secret is None or not self.webhook_secret.get_secret_value()):
            raise ValueError(
                "a webhook needs a secret (TRACELINE_ALERTS_WEBHOOK_SECRET): unsigned alerts can be forged"
            )
        return self


def sign(body: bytes, secret: str, at: int | None = None) -> str:
    """The signature header value for ``body``: ``t=<unix seconds>,sha256=<hex>`` over
    ``"<t>." + body``, so the time is signed too."""
    t = int(time.time()) if at is None else at
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},sha256={mac}"


def verify(
    body: bytes, secret: str, header: str | None, *, tolerance_s: float = 300.0, now: float | None = None
) -> bool:
    """For receivers: a constant-time check of a signature header, refusing one signed more than
    ``tolerance_s`` seconds away from ``now`` (a replayed request)."""
    if not header:
        return False
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        t = int(fields.get("t", ""))
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - t) > tolerance_s:
        return False
    return hmac.compare_digest(sign(body, secret, at=t), header)


@dataclass
class NotifierStats:
    submitted: int = 0
    dropped: int = 0
    webhook_sent: int = 0
    webhook_retries: int = 0
    webhook_failed: int = 0
    email_sent: int = 0
    email_failed: int = 0
    last_error: str | None = None


class Notifier:
    """``start()`` the delivery thread, ``submit(alert)`` from anywhere, ``stop()`` to drain."""

    def __init__(self, settings: NotifyConfig, client: httpx.Client | None = None) -> None:
        self.settings = settings
        self.stats = NotifierStats()
        self._q: queue.Queue[Alert | None] = queue.Queue(maxsize=settings.queue_size)
        self._client = client
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        s = self.settings
        return bool(s.webhook_url) or bool(s.smtp_host and s.smtp_to)

    def start(self) -> Notifier:
        if self._thread is None:
            if self._client is None:
                self._client = httpx.Client(timeout=self.settings.webhook_timeout_s)
            self._thread = threading.Thread(target=self._run, name="notifier", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Deliver what is queued (within ``timeout``), then end the thread."""
        if self._thread is None:
            return
        try:
            self._q.put(None, timeout=timeout)
        except queue.Full:
            pass
        self._thread.join(timeout)
        self._stop.set()
        if self._client is not None:
            self._client.close()
        self._thread = None

    def submit(self, alert: Alert) -> bool:
        """Queue an alert for delivery; never blocks. False when it was not queued."""
        s = self.settings
        routed = (s.webhook_url and alert.severity in s.webhook_severities) or (
            s.smtp_host and s.smtp_to and alert.severity in s.smtp_severities
        )
        if not routed or (alert.version > 1 and not s.notify_updates):
            return False
        try:
            self._q.put_nowait(alert)
        except queue.Full:
            self.stats.dropped += 1
            log.warning("notifier queue full: %s#%d not delivered (it is in the alerts topic)",
                        alert.alert_id, alert.version)  # fmt: skip
            return False
        self.stats.submitted += 1
        return True

    def join(self, timeout: float = 10.0) -> bool:
        """Wait until the queue is empty and the last item was handled (tests)."""
        done = threading.Event()

        def wait() -> None:
            self._q.join()
            done.set()

        threading.Thread(target=wait, daemon=True).start()
        return done.wait(timeout)

    # -- delivery -----------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            alert = self._q.get()
            try:
                if alert is None:
                    return
                self._deliver(alert)
            except Exception as exc:  # noqa: BLE001 - a delivery bug must not kill the thread; counted
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("alert delivery failed")
            finally:
                self._q.task_done()

    def _deliver(self, alert: Alert) -> None:
        s = self.settings
        if s.webhook_url and alert.severity in s.webhook_severities:
            self._webhook(alert)
        if s.smtp_host and s.smtp_to and alert.severity in s.smtp_severities:
            self._email(alert)

    def _webhook(self, alert: Alert) -> None:
        s = self.settings
        assert s.webhook_url is not None and self._client is not None
        body = json.dumps(alert.to_json(), sort_keys=True, separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            "X-Traceline-Alert-Id": alert.alert_id,
            "X-Traceline-Delivery": f"{alert.alert_id}#{alert.version}",
        }
        for attempt in range(s.max_attempts):
            if attempt:
                self.stats.webhook_retries += 1
                if self._stop.wait(min(s.backoff_max_s, s.backoff_s * 2 ** (attempt - 1))):
                    break
            if s.webhook_secret is not None:  # signed at each attempt: its time is current
                headers[SIGNATURE_HEADER] = sign(body, s.webhook_secret.get_secret_value())
            try:
                r = self._client.post(s.webhook_url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                self.stats.last_error = f"webhook: {exc}"
                continue
            if r.status_code < 300:
                self.stats.webhook_sent += 1
                return
            self.stats.last_error = f"webhook: HTTP {r.status_code}"
            if r.status_code < 500 and r.status_code != 429:
                break  # the receiver refuses it: retrying will not help
        self.stats.webhook_failed += 1
        log.warning(
            "webhook delivery of %s#%d failed: %s", alert.alert_id, alert.version, self.stats.last_error
        )

    def _email(self, alert: Alert) -> None:
        s = self.settings
        assert s.smtp_host is not None
        msg = EmailMessage()
        msg["Subject"] = f"[traceline {alert.severity}] {alert.title}"
        msg["From"] = s.smtp_from
        msg["To"] = ", ".join(s.smtp_to)
        msg.set_content(_text(alert))
        try:
            with smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.webhook_timeout_s) as smtp:
                if s.smtp_starttls:
                    smtp.starttls()
                if s.smtp_user and s.smtp_password is not None:
                    smtp.login(s.smtp_user, s.smtp_password.get_secret_value())
                smtp.send_message(msg)
            self.stats.email_sent += 1
        except (OSError, smtplib.SMTPException) as exc:
            self.stats.email_failed += 1
            self.stats.last_error = f"smtp: {exc}"
            log.warning("e-mail for %s failed: %s", alert.alert_id, exc)


def _text(alert: Alert) -> str:
    lines: list[Any] = [
        alert.title,
        "",
        f"alert:     {alert.alert_id} (version {alert.version})",
        f"rule:      {alert.rule}   severity: {alert.severity}",
        f"subject:   {alert.subject_kind} {alert.subject_id}",
        f"event:     {alert.trigger_type} {alert.trigger_event_id} at {alert.event_time.isoformat()}",
        f"site:      {alert.site}   program: {alert.program}",
        f"units:     {alert.unit_count}",
    ]
    for name, counts in (("by status", alert.by_status), ("by customer", alert.by_customer)):
        if counts:
            lines.append(f"{name}: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    if alert.units:
        lines += ["", "units:", *(f"  {u}" for u in alert.units[:50])]
        if alert.unit_count > 50:
            lines.append(f"  ... and {alert.unit_count - 50} more")
    if alert.reference:
        lines += ["", f"full list: {alert.reference}"]
    for k, v in sorted(alert.details.items()):
        lines.append(f"{k}: {v}")
    return "\n".join(str(x) for x in lines)
