"""Loss-free publishing of traceability events to Kafka.

Every event is encoded (Avro), written to the durable :class:`~producers.outbox.Outbox`
and only then handed to an idempotent confluent-kafka producer (``acks=all``,
``murmur2_random`` so keys land on the partitions faust/Java clients expect). A row leaves
the outbox when its delivery report says Kafka has it. If deliveries fail (broker down,
timeout), the publisher waits until nothing is in flight and re-sends everything still in
the outbox in publish order, so per-key order is kept. After a restart of the process the
pending rows are sent first. Delivery is at-least-once: a consumer deduplicates on
``event_id`` (every sink in traceline does).

Without a bootstrap (``Publisher(None, path)``) it only stores: the events wait on disk until
a publisher with a broker (``traceline outbox flush``) sends them.

With a gateway key (``Publisher(..., signer=GatewayKey.load(path))``, ``schemas.signing``) every
row is signed when it is stored: an Ed25519 signature of its exact value bytes, kept in the
outbox beside the row and sent as the ``traceline.sig`` / ``traceline.key_id`` headers, so the
sink can tell which gateway spoke. An event whose ``source`` is not the key's is refused by
:meth:`Publisher.encode` (the sink would dead-letter it). Rows stored unsigned (an outbox from
before, a publisher without a key) are sent unsigned.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, Producer

from producers.outbox import AddResult, Outbox, OutboxRow
from schemas.errors import BrokerUnavailableError, EventValidationError
from schemas.kafka import producer_config
from schemas.models import EventBase
from schemas.serde import AvroSerde
from schemas.signing import GatewayKey, signature_headers

__all__ = ["Publisher", "DEFAULT_TOPIC", "Row"]

log = logging.getLogger(__name__)

DEFAULT_TOPIC = "traceline.events"

Row = tuple[str, str, bytes | None, bytes]
"""An encoded event as the outbox stores it: ``(event_id, topic, key, value)``."""


class Publisher:
    """Publish events durably: on disk before ``publish`` returns, in Kafka eventually.

    ``bootstrap=None``: store only (no Kafka client); ``flush`` and ``close`` leave every row
    on disk for a later publisher. ``signer``: the gateway key every stored row is signed with."""

    def __init__(
        self,
        bootstrap: str | None,
        outbox_path: str | Path,
        *,
        topic: str = DEFAULT_TOPIC,
        serde: AvroSerde | None = None,
        max_pending: int = 1_000_000,
        max_in_flight: int = 100_000,
        producer_overrides: dict[str, Any] | None = None,
        signer: GatewayKey | None = None,
    ) -> None:
        self.topic = topic
        self.signer = signer
        self.bootstrap = bootstrap
        self.serde = serde or AvroSerde(topic=topic)
        self.outbox = Outbox(outbox_path, max_pending=max_pending)
        self.max_in_flight = max_in_flight
        self._producer: Producer | None = None
        if bootstrap:
            self._producer = Producer(
                producer_config(bootstrap, error_cb=self._on_error, **(producer_overrides or {}))
            )
        self._cursor = 0  # highest outbox seq handed to the producer in this round
        self._in_flight = 0
        self._delivered: list[int] = []
        self._failed = 0
        self.delivered_total = 0
        self.failed_attempts = 0
        self.last_error: str | None = None
        self._closed = False
        self._remaining = 0

    # -- publishing -------------------------------------------------------------------
    def publish(self, event: EventBase) -> None:
        """Store one event durably and start sending it."""
        self.publish_many([event])

    def publish_many(self, events: Iterable[EventBase]) -> int:
        """Store events durably (one transaction) and start sending them."""
        return self.publish_encoded([self.encode(e) for e in events])

    def encode(self, event: EventBase) -> Row:
        """The outbox row of an event: ``(event_id, topic, key, value)``. With a signer, an
        event of another source is an :class:`EventValidationError`."""
        if self.signer is not None and event.source != self.signer.source:
            raise EventValidationError(
                f"source {event.source!r} is not this gateway's: its key {self.signer.key_id} signs for "
                f"{self.signer.source!r}",
                "source",
            )
        return (str(event.event_id), self.topic, event.kafka_key().encode(), self.serde.encode_event(event))

    def publish_encoded(self, rows: Sequence[Row]) -> int:
        """Store already-encoded ``(event_id, topic, key, value)`` rows and start sending."""
        return self.publish_rows(rows).added

    def publish_rows(self, rows: Sequence[Row]) -> AddResult:
        """Like :meth:`publish_encoded`, saying which rows were not stored because their
        event_id was pending already (identical repeats and conflicts, see ``Outbox.add``)."""
        signer = self.signer
        sigs = None if signer is None else [(signer.sign(r[3]), signer.key_id) for r in rows]
        result = self.outbox.add(rows, sigs)
        self.pump()
        return result

    # -- delivery ---------------------------------------------------------------------
    def _on_error(self, err: KafkaError) -> None:
        self.last_error = str(err)
        log.debug("kafka client error: %s", err)

    def _on_delivery(self, seq: int, err: KafkaError | None, _msg: Any) -> None:
        self._in_flight -= 1
        if err is None:
            self._delivered.append(seq)
        else:
            self._failed += 1
            self.failed_attempts += 1
            self.last_error = str(err)

    def pump(self, timeout: float = 0.0) -> None:
        """Serve delivery reports, drop delivered rows, hand pending rows to the producer."""
        if self._producer is None:
            return  # store only
        self._producer.poll(timeout)
        self._settle()
        if self._failed:
            if self._in_flight > 0:
                return  # wait for the round to finish, then re-send in order
            self._failed = 0
            self._cursor = 0
        while self._in_flight < self.max_in_flight:
            rows = self.outbox.pending(after_seq=self._cursor, limit=min(10_000, self.max_in_flight))
            if not rows:
                return
            for row in rows:
                while True:
                    try:
                        self._producer.produce(
                            row.topic,
                            value=row.value,
                            key=row.key,
                            headers=_headers(row),
                            on_delivery=partial(self._on_delivery, row.seq),
                        )
                        break
                    except BufferError:
                        self._producer.poll(0.05)
                        self._settle()
                self._in_flight += 1
                self._cursor = row.seq
            self._producer.poll(0)
            self._settle()

    def _settle(self) -> None:
        if self._delivered:
            done, self._delivered = self._delivered, []
            self.delivered_total += self.outbox.remove(done)

    def pending(self) -> int:
        return len(self.outbox)

    def flush(self, timeout: float = 30.0, *, progress: Any = None) -> int:
        """Deliver what is pending, for at most ``timeout`` seconds. Returns how many remain."""
        if self._producer is None:
            return len(self.outbox)  # store only: everything waits on disk
        deadline = time.monotonic() + timeout
        while len(self.outbox) > 0 and time.monotonic() < deadline:
            self.pump(0.1)
            if progress is not None:
                progress(self.delivered_total)
        self._producer.flush(max(0.0, min(1.0, deadline - time.monotonic())))
        self._settle()
        return len(self.outbox)

    def check_broker(self, timeout: float = 5.0) -> None:
        """Raise :class:`BrokerUnavailableError` if no broker answers a metadata request."""
        if self._producer is None:
            raise BrokerUnavailableError("(none)", "no bootstrap servers given")
        try:
            self._producer.list_topics(timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - any client failure means "unreachable"
            raise BrokerUnavailableError(self.bootstrap or "(none)", str(exc)) from exc

    def close(self, timeout: float = 10.0) -> int:
        """Flush for up to ``timeout`` seconds and close the outbox; pending rows stay on disk."""
        if self._closed:
            return self._remaining
        if self._producer is not None:
            self.flush(timeout)
            # Stop the client now (its threads would otherwise keep reconnecting and re-sending
            # until the garbage collector finds the producer <-> callback cycle). What it still
            # holds stays in the outbox and goes out with the next publisher.
            self._producer.purge()
            self._producer.poll(0)
            self._settle()
            self._producer.close()
        self._remaining = len(self.outbox)
        self.outbox.close()
        self._closed = True
        return self._remaining

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _headers(row: OutboxRow) -> list[tuple[str, str | bytes | None]]:
    """The Kafka headers of an outbox row: its event id, and its signature if it has one."""
    headers: list[tuple[str, str | bytes | None]] = [("event_id", row.event_id)]
    if row.signature is not None and row.key_id:
        headers += signature_headers(row.key_id, row.signature)
    return headers
