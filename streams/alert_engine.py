"""The alert engine: raw events in, alerts out, as a process of its own beside the sink.

It runs in ``traceline serve`` (which hands it an evaluator: the pure rules of
``streams.alerts`` with the ClickHouse reads they need, ``queries.alerts.AlertEvaluator``),
because impact lists come from the store and faust agents never do ClickHouse I/O:

1. consume the raw events topic in its own consumer group (manual commits);
2. wait until the sink has landed every event of the batch (its in-process positions, or the
   sink group's committed offsets: the sink commits only after ClickHouse has the rows), so
   the impact read next is complete;
3. evaluate the batch (``evaluator.evaluate_batch``); only the types the rules read
   (``streams.alerts.RULE_TYPES``) are decoded;
4. publish the admitted alerts to the alerts topic (Avro, key ``alert_id``), flush, then
   commit the events' offsets (at-least-once; a replay is absorbed by the dedup state);
5. hand the alerts to the notifier (``streams.notify``: webhook / e-mail), which never blocks
   this loop.

The evaluator's state is rebuilt from ClickHouse at start-up (``evaluator.reload()``), after
the sink has landed the alerts topic up to its end, so alerts raised before a restart are
known and are not raised again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from schemas.alert import Alert, encode_alert
from schemas.errors import DecodeError, TracelineError
from schemas.kafka import consumer_config, message_position, producer_config
from schemas.serde import AvroSerde
from schemas.topics import TopicNames
from streams.alerts import RULE_TYPES, AlertRules, AlertState

__all__ = ["AlertEngine", "AlertEngineStats", "AlertPublishError", "Evaluator", "sink_positions"]

log = logging.getLogger(__name__)

Landed = Callable[[], Mapping[tuple[str, int], int]]  # (topic, partition) -> next offset landed


class Evaluator(Protocol):
    """What the engine needs of an evaluator (``queries.alerts.AlertEvaluator``)."""

    rules: AlertRules
    state: AlertState
    refresh_done: bool

    def reload(self) -> None: ...

    def evaluate_batch(self, events: Sequence[tuple[str, Mapping[str, Any]]]) -> list[Alert]: ...

    def refresh_open_ncs(self, budget_s: float | None = None) -> list[Alert]: ...


class _Notifier(Protocol):
    def submit(self, alert: Alert) -> bool: ...


class AlertPublishError(TracelineError):
    def __init__(self, reason: str, alert_id: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.alert_id = alert_id


def sink_positions(sink: Any) -> Landed:
    """Progress of an in-process :class:`sinks.ingest.SinkWorker` (positions after each write)."""

    def landed() -> dict[tuple[str, int], int]:
        out = {}
        for key, off in list(sink.stats.positions.items()):
            topic, _, part = key.rpartition("[")
            out[(topic, int(part.rstrip("]")))] = int(off)
        return out

    return landed


@dataclass
class AlertEngineStats:
    batches: int = 0
    events: int = 0
    undecodable_skipped: int = 0
    alerts_published: int = 0
    by_rule: dict[str, int] = field(default_factory=dict)
    waits_for_sink_s: float = 0.0
    evaluate_s: float = 0.0  # wall seconds in the rules and their reads (evaluate_batch)
    refresh_s: float = 0.0  # wall seconds re-evaluating open NCs
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class AlertEngine:
    """One alert-engine consumer. ``start()`` rebuilds state; ``run()`` loops until ``stop()``."""

    def __init__(
        self,
        bootstrap: str,
        evaluator: Evaluator,
        *,
        topics: TopicNames,
        group_id: str = "traceline-alerts",
        sink_group: str = "traceline-sink",
        landed: Landed | None = None,
        notifier: _Notifier | None = None,
        serde: AvroSerde | None = None,
        batch_size: int = 2_000,
        batch_seconds: float = 0.05,
        consumer_overrides: dict[str, Any] | None = None,
        catch_up_timeout: float = 30.0,
    ) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.evaluator = evaluator
        self.rules = self.evaluator.rules
        self.sink_group = sink_group
        self.landed = landed
        self.notifier = notifier
        self.serde = serde or AvroSerde(topic=topics.events)
        self.batch_size = batch_size
        self.batch_seconds = batch_seconds
        self.catch_up_timeout = catch_up_timeout
        self.stats = AlertEngineStats()
        self._stop = threading.Event()
        self._committed: dict[tuple[str, int], int] = {}
        self._committed_at = 0.0
        self._admin: Any = None
        self._last_refresh = time.monotonic()
        # the engine waits for the sink to land a batch before it evaluates it (no poll while it
        # waits): under a large backlog that wait is minutes, which must not count as a dead
        # consumer (librdkafka's default 5 min would make it leave the group and re-read)
        conf = {"max.poll.interval.ms": 3_600_000, **(consumer_overrides or {})}
        self._consumer = Consumer(consumer_config(bootstrap, group_id, **conf))
        self._producer = Producer(producer_config(bootstrap, **{"linger.ms": 5}))
        self._started = False

    @property
    def state(self) -> AlertState:
        return self.evaluator.state

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Wait until the sink has landed the alerts topic to its end, then rebuild the state."""
        deadline = time.monotonic() + self.catch_up_timeout
        while True:
            try:
                ends = self._alerts_ends()
                break
            except KafkaException as exc:
                # a just-created topic may answer NOT_LEADER_FOR_PARTITION for a moment
                if time.monotonic() > deadline or self._stop.is_set():
                    raise
                log.info("alerts topic not ready yet (%s); retrying", exc)
                self._stop.wait(0.5)
        self._wait_landed(ends, timeout=max(1.0, deadline - time.monotonic()))
        self.evaluator.reload()
        self._consumer.subscribe([self.topics.events])
        self._started = True
        log.info("alert engine state: %d lots, %d NCs, %d alerts known", len(self.state.lots),
                 len(self.state.ncs), len(self.state.raised))  # fmt: skip

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self._consumer.close()
        self._producer.flush(10)

    def run(self) -> None:
        try:
            if not self._started:
                self.start()
            while not self._stop.is_set():
                self.poll_once()
        finally:
            self.close()

    # -- progress of the sink -------------------------------------------------------------
    def _alerts_ends(self) -> dict[tuple[str, int], int]:
        md = self._consumer.list_topics(self.topics.alerts, timeout=10)
        t = md.topics.get(self.topics.alerts)
        ends: dict[tuple[str, int], int] = {}
        if t is None or t.error is not None:
            return ends
        for p in t.partitions:
            _lo, hi = self._consumer.get_watermark_offsets(TopicPartition(self.topics.alerts, p), timeout=10)
            if hi > 0:
                ends[(self.topics.alerts, p)] = hi
        return ends

    def _refresh_committed(self, keys: list[tuple[str, int]]) -> None:
        if self._admin is None:
            self._admin = AdminClient({"bootstrap.servers": self.bootstrap})
        req = ConsumerGroupTopicPartitions(self.sink_group, [TopicPartition(t, p) for t, p in keys])
        try:
            res = self._admin.list_consumer_group_offsets([req])[self.sink_group].result(10)
        except Exception as exc:  # noqa: BLE001 - KafkaException: try again on the next round
            log.debug("sink group offsets unavailable: %s", exc)
            return
        for tp in res.topic_partitions:
            if tp.offset >= 0:
                self._committed[(tp.topic, tp.partition)] = tp.offset
        self._committed_at = time.monotonic()

    def _wait_landed(self, need: Mapping[tuple[str, int], int], timeout: float | None = None) -> bool:
        """Block until the sink has landed every (topic, partition) up to ``need`` (next offset)."""
        if not need:
            return True
        t0 = time.monotonic()
        warned = t0
        while not self._stop.is_set():
            have = dict(self._committed)
            if self.landed is not None:
                for k, v in self.landed().items():
                    have[k] = max(have.get(k, 0), v)
            if all(have.get(k, -1) >= v for k, v in need.items()):
                self.stats.waits_for_sink_s += time.monotonic() - t0
                return True
            now = time.monotonic()
            if timeout is not None and now - t0 > timeout:
                log.warning("the sink has not landed %s after %.0fs; going on", dict(need), timeout)
                return False
            if now - self._committed_at > (0.5 if self.landed is None else 2.0):
                self._refresh_committed(sorted(need))
            if now - warned > 15:
                warned = now
                log.warning("alert engine waiting for the sink to land %s (have %s)", dict(need), have)
            self._stop.wait(0.01)
        return False

    # -- one batch ----------------------------------------------------------------------
    def poll_once(self) -> int:
        msgs: list[Message] = []
        for m in self._consumer.consume(num_messages=self.batch_size, timeout=self.batch_seconds):
            err = m.error()
            if err is None:
                msgs.append(m)
            elif err.code() != KafkaError._PARTITION_EOF:
                self.stats.last_error = str(err)
        alerts: list[Alert] = []
        if msgs:
            need: dict[tuple[str, int], int] = {}
            for m in msgs:
                t, p, o = message_position(m)
                need[(t, p)] = max(need.get((t, p), 0), o + 1)
            if not self._wait_landed(need):
                return 0  # stopping: nothing committed
            batch: list[tuple[str, Mapping[str, Any]]] = []
            for m in msgs:
                value = m.value() or b""
                try:
                    if self.serde.peek_type(value) not in RULE_TYPES:
                        self.stats.events += 1  # no rule reads it: not decoded
                        continue
                    type_name, rec = self.serde.decode(value)
                except DecodeError:
                    self.stats.undecodable_skipped += 1  # the sink dead-letters it
                    continue
                self.stats.events += 1
                batch.append((type_name, rec))
            t0 = time.monotonic()
            alerts += self.evaluator.evaluate_batch(batch)
            self.stats.evaluate_s += time.monotonic() - t0
        if (
            self.rules.nc_refresh_seconds > 0
            and time.monotonic() - self._last_refresh > self.rules.nc_refresh_seconds
        ):
            # a slice per loop (bounded time), a new pass only after the last one finished
            t0 = time.monotonic()
            alerts += self.evaluator.refresh_open_ncs(budget_s=0.1)
            self.stats.refresh_s += time.monotonic() - t0
            if self.evaluator.refresh_done:
                self._last_refresh = time.monotonic()
        if alerts:
            self._publish(alerts)
        if msgs:
            hi: dict[tuple[str, int], int] = {}
            for m in msgs:
                t, p, o = message_position(m)
                hi[(t, p)] = max(hi.get((t, p), -1), o)
            self._consumer.commit(
                offsets=[TopicPartition(t, p, o + 1) for (t, p), o in hi.items()], asynchronous=False
            )
            self.stats.batches += 1
        for a in alerts:
            if self.notifier is not None:
                self.notifier.submit(a)
        return len(msgs)

    def _publish(self, alerts: list[Alert]) -> None:
        errors: list[str] = []

        def on_delivery(err: Any, _msg: Any) -> None:
            if err is not None:
                errors.append(str(err))

        for a in alerts:
            self._producer.produce(
                self.topics.alerts, key=a.alert_id.encode(), value=encode_alert(a), on_delivery=on_delivery
            )
        while self._producer.flush(1.0) > 0 and not self._stop.is_set():
            pass
        if errors or len(self._producer) > 0:
            # forget them, so a replay of the (uncommitted) batch raises them again
            for a in alerts:
                self.state.raised.pop(a.alert_id, None)
            raise AlertPublishError(f"alerts not delivered: {errors[:3]}")
        self.stats.alerts_published += len(alerts)
        for a in alerts:
            self.stats.by_rule[a.rule] = self.stats.by_rule.get(a.rule, 0) + 1
        log.info(
            "published %d alert(s): %s", len(alerts), ", ".join(f"{a.alert_id}#{a.version}" for a in alerts)
        )
