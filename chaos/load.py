"""The load of a scenario: a plant's events, and a publisher in a process of its own.

* :class:`Plant` - the first ``n`` events of a simulated plant (``producers.simulator``), in
  JSON form (for the genealogy oracle and ``traceline publish``) and Avro-encoded once
  (``benchmarks._stack.fast_encoder``, byte-for-byte the pydantic encoding).
* :class:`PublisherProcess` - a real :class:`producers.publisher.Publisher` (durable outbox,
  idempotent producer) in a separate process, paced at ``rate`` events/s, that keeps
  publishing whatever the broker does and flushes its outbox at the end. ``published`` is how
  many events it has handed to the outbox so far (they are on disk: they count as sent).
"""

from __future__ import annotations

import itertools
import json
import multiprocessing as mp
import pickle
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["Plant", "PublisherProcess", "Row"]

Row = tuple[str, bytes, bytes]  # (event_id, key, value)


class Plant:
    """``n`` simulated plant events (seed ``seed``), as JSON dicts and as encoded rows."""

    def __init__(self, n: int, seed: int = 1) -> None:
        from benchmarks._stack import fast_encoder
        from producers.simulator import simulate

        units = n // 5 + 1000
        self.events: list[dict[str, Any]] = list(itertools.islice(simulate(units, seed=seed), n))
        enc = fast_encoder()
        self.rows: list[Row] = [enc(d) for d in self.events]
        self.ids: list[str] = [r[0] for r in self.rows]
        if len(set(self.ids)) != len(self.ids):
            raise AssertionError("the simulator gave one event id twice")

    def outbox_rows(
        self, topic: str, rows: Sequence[Row] | None = None
    ) -> list[tuple[str, str, bytes, bytes]]:
        """``(event_id, topic, key, value)``: what ``Publisher.publish_encoded`` takes."""
        return [(e, topic, k, v) for e, k, v in (self.rows if rows is None else rows)]


def _publisher_main(
    bootstrap: str,
    outbox: str,
    topic: str,
    rows_path: str,
    rate: float,
    flush_timeout: float,
    published: Any,
    result_path: str,
) -> None:
    """The publishing process: every row into the outbox (paced), then flush until empty."""
    from producers.publisher import Publisher

    rows = pickle.loads(Path(rows_path).read_bytes())
    pub = Publisher(bootstrap, outbox, topic=topic)
    chunk = 2000 if rate <= 0 else max(20, min(2000, int(rate / 20)))
    t0 = time.monotonic()
    sent = 0
    for i in range(0, len(rows), chunk):
        part = rows[i : i + chunk]
        if rate > 0:
            wait = t0 + sent / rate - time.monotonic()
            while wait > 0:
                pub.pump(min(wait, 0.05))
                wait = t0 + sent / rate - time.monotonic()
        pub.publish_encoded(part)
        sent += len(part)
        published.value = sent
    t_flush = time.monotonic()
    left = pub.flush(flush_timeout)
    result = {
        "published": sent,
        "pending_after_flush": left,
        "delivered": pub.delivered_total,
        "failed_attempts": pub.failed_attempts,
        "last_error": pub.last_error,
        "publish_s": round(t_flush - t0, 1),
        "flush_s": round(time.monotonic() - t_flush, 1),
    }
    pub.close(5)
    Path(result_path).write_text(json.dumps(result))


class PublisherProcess:
    """A Publisher in a child process (spawned), paced; see the module doc."""

    def __init__(
        self,
        bootstrap: str,
        work: Path,
        rows: list[tuple[str, str, bytes, bytes]],
        *,
        rate: float = 0.0,
        flush_timeout: float = 600.0,
        name: str = "publisher",
    ) -> None:
        work.mkdir(parents=True, exist_ok=True)
        self.total = len(rows)
        self._rows_path = work / f"{name}-rows.pickle"
        self._rows_path.write_bytes(pickle.dumps(rows))
        self._result_path = work / f"{name}-result.json"
        self._result_path.unlink(missing_ok=True)
        ctx = mp.get_context("spawn")
        self._published = ctx.Value("q", 0, lock=False)
        self.proc = ctx.Process(
            target=_publisher_main,
            args=(
                bootstrap,
                str(work / f"{name}-outbox.sqlite"),
                rows[0][1] if rows else "",
                str(self._rows_path),
                rate,
                flush_timeout,
                self._published,
                str(self._result_path),
            ),
            name=name,
            daemon=True,
        )

    def start(self) -> PublisherProcess:
        self.proc.start()
        return self

    @property
    def published(self) -> int:
        return int(self._published.value)

    def wait_published(self, count: int, timeout: float = 120.0) -> bool:
        deadline = time.monotonic() + timeout
        while self.published < count and time.monotonic() < deadline and self.proc.is_alive():
            time.sleep(0.05)
        return self.published >= count

    def join(self, timeout: float = 900.0) -> dict[str, Any]:
        """Wait for the end of the flush; its figures (``pending_after_flush`` must be 0)."""
        self.proc.join(timeout)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(10)
            return {"published": self.published, "error": f"still running after {timeout:.0f}s"}
        try:
            return dict(json.loads(self._result_path.read_text()))
        except (OSError, ValueError):
            return {"published": self.published, "error": f"exited with {self.proc.exitcode}, no result"}
