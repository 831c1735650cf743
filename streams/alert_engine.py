"""The alert engine: raw events in, alerts out, as a process of its own beside the sink.

It runs in ``traceline serve`` (which hands it an evaluator: the pure rules of
``streams.alerts`` with the ClickHouse reads they need, ``queries.alerts.AlertEvaluator``),
because impact lists come from the store and faust agents never do ClickHouse I/O:

1. consume the raw events topic in its own consumer group (manual commits);
2. wait until the sink has landed every event of the batch (its in-process positions, or the
   sink group's committed offsets: the sink commits only after ClickHouse has the rows), so
   the impact read next is complete;
3. evaluate the batch (``evaluator.evaluate_batch``); only the types the rules read
   (``streams.alerts.RULE_TYPES``) are decoded, and what the sink refuses is left out: an
   undecodable record, a signature that does not hold, an implausible event time, and an
   event id the sink landed with other content (``landed_hash``: the content hash the sink of
   this process remembers for the id, ``SinkWorker.landed_content_hash``; a RELEASED re-using
   a HOLD's event id must not end the hold in the engine's state);
4. publish the admitted alerts to the alerts topic (Avro, key ``alert_id``), flush, then
   commit the events' offsets (at-least-once; a replay is absorbed by the dedup state);
5. hand the alerts to the notifier (``streams.notify``: webhook / e-mail), which never blocks
   this loop.

The evaluator's state is rebuilt from ClickHouse at start-up (``evaluator.reload()``), after
the sink has landed the alerts topic up to its end, so alerts raised before a restart are
known and are not raised again.

Kafka failures do not kill the loop (every one is counted in :class:`AlertEngineStats` and
kept in ``last_error``):

* a commit that fails retriably (coordinator moving or not known yet, ``_WAIT_COORD``, a
  timeout) is retried with back-off for up to ``commit_retry_seconds``;
* a commit refused because the group moved on (``UNKNOWN_MEMBER_ID``, ``ILLEGAL_GENERATION``,
  ``REBALANCE_IN_PROGRESS``, assignment lost) gives the batch up: its alerts are out already,
  the offsets are committed by a later batch or the batch is re-read after the rebalance, and
  the dedup state absorbs the replay;
* alerts Kafka does not acknowledge within ``publish_timeout`` raise
  :class:`AlertPublishError` inside the loop: the batch is not committed, the alerts not yet
  acknowledged are published again after a back-off;
* a fatal client error (``KafkaError.fatal()``: the consumer or producer cannot go on) ends
  ``run()`` with :class:`AlertEngineFatalError`, and a start-up that cannot read the alerts
  topic with :class:`AlertEngineError`: the supervisor builds a new engine (new clients).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Literal, Protocol

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

from schemas.alert import Alert, AlertRule, AlertSeverity, encode_alert
from schemas.errors import DecodeError, TracelineError
from schemas.kafka import client_config, consumer_config, message_position, producer_config
from schemas.nogc import gc_paused
from schemas.serde import AvroSerde
from schemas.signing import Refusal, RegisteredKey, attest
from schemas.topics import TopicNames
from streams.alerts import RULE_TYPES, AlertRules, AlertState
from streams.intake import content_hash_of, implausible_time

__all__ = [
    "AlertEngine",
    "ledger_gap",
    "event_id_conflicts",
    "AlertEngineError",
    "AlertEngineFatalError",
    "AlertEngineStats",
    "AlertPublishError",
    "Evaluator",
    "sink_positions",
]

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


class ConsumerClient(Protocol):
    """The part of ``confluent_kafka.Consumer`` the engine uses (a test passes a fake)."""

    def subscribe(self, topics: list[str]) -> None: ...

    def consume(self, num_messages: int = ..., timeout: float = ...) -> list[Message]: ...

    def commit(self, *, offsets: list[TopicPartition], asynchronous: Literal[False]) -> Any: ...

    def list_topics(self, topic: str | None = ..., timeout: float = ...) -> Any: ...

    def get_watermark_offsets(self, partition: TopicPartition, timeout: float = ...) -> Any: ...

    def close(self) -> object: ...


class ProducerClient(Protocol):
    """The part of ``confluent_kafka.Producer`` the engine uses (a test passes a fake)."""

    def produce(
        self,
        topic: str,
        *,
        value: bytes | None = ...,
        key: bytes | None = ...,
        on_delivery: Callable[[Any, Any], None] | None = ...,
    ) -> None: ...

    def poll(self, timeout: float = ...) -> int: ...

    def flush(self, timeout: float = ...) -> int: ...

    def purge(self, in_queue: bool = ..., in_flight: bool = ..., blocking: bool = ...) -> None: ...


class AlertPublishError(TracelineError):
    """Kafka did not acknowledge alerts (in time): the batch is retried, not committed."""

    def __init__(self, reason: str, alert_id: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.alert_id = alert_id


class AlertEngineError(TracelineError):
    """The alert engine stopped and cannot go on with its clients: build a new engine."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"alert engine stopped: {reason}; restart it")
        self.reason = reason


class AlertEngineFatalError(AlertEngineError):
    """A fatal Kafka client error (``KafkaError.fatal()``): the consumer or producer is unusable."""

    def __init__(self, where: str, error: Any) -> None:
        super().__init__(f"fatal Kafka {where} error: {error}")
        self.where = where
        self.error = error


# a commit refused because the group moved on: give the batch up (it is re-read, or a later
# batch commits past it); retried commits: the coordinator is moving, not known yet, or slow
_REBALANCED = frozenset(
    {
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.REBALANCE_IN_PROGRESS,
        KafkaError._ASSIGNMENT_LOST,
        KafkaError.STALE_MEMBER_EPOCH,
    }
)
_RETRIED = frozenset(
    {
        KafkaError._WAIT_COORD,
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError._TRANSPORT,
        KafkaError._TIMED_OUT,
        KafkaError.REQUEST_TIMED_OUT,
    }
)


def _kafka_error(exc: BaseException) -> KafkaError | None:
    arg = exc.args[0] if exc.args else None
    return arg if isinstance(arg, KafkaError) else None


def _backoff(attempt: int, cap: float = 30.0) -> float:
    return float(min(cap, 0.5 * 2 ** min(attempt, 6)))


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
    unattested_skipped: int = 0  # a gateway signature that does not hold (or none, when required)
    implausible_skipped: int = 0  # an event time the sink quarantines
    conflicts_skipped: int = 0  # an event id the sink landed with other content (it dead-letters this one)
    alerts_published: int = 0
    by_rule: dict[str, int] = field(default_factory=dict)
    commits: int = 0  # batches whose offsets Kafka took
    commit_retries: int = 0  # commits tried again after a retriable error (back-off)
    commits_given_up: int = 0  # batches not committed: group rebalanced, or retries ran out
    publish_retries: int = 0  # alert publications tried again (not acknowledged in time)
    consumer_errors: int = 0  # errors the consumer reported (partition EOF excluded)
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
        landed_hash: Callable[[str], int | None] | None = None,
        notifier: _Notifier | None = None,
        serde: AvroSerde | None = None,
        batch_size: int = 2_000,
        batch_seconds: float = 0.05,
        consumer_overrides: dict[str, Any] | None = None,
        catch_up_timeout: float = 30.0,
        publish_timeout: float = 30.0,
        commit_retry_seconds: float = 120.0,
        consumer: ConsumerClient | None = None,
        producer: ProducerClient | None = None,
        gateway_keys: Callable[[], Mapping[str, RegisteredKey]] | None = None,
        require_signed: bool = False,
        event_times: tuple[datetime, timedelta] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.gateway_keys = gateway_keys  # the sink's registry: what it dead-letters is not evaluated
        self.require_signed = require_signed
        # (earliest, future skew): the sink's plausible event times; what it quarantines is not
        # evaluated (a RELEASED stamped 9999-12-31 would end a hold in the engine for good)
        self.event_times = event_times
        self.topics = topics
        self.evaluator = evaluator
        self.rules = self.evaluator.rules
        self.sink_group = sink_group
        self.landed = landed
        self.landed_hash = landed_hash
        self.notifier = notifier
        self.serde = serde or AvroSerde(topic=topics.events)
        self.batch_size = batch_size
        self.batch_seconds = batch_seconds
        self.catch_up_timeout = catch_up_timeout
        self.publish_timeout = publish_timeout
        self.commit_retry_seconds = commit_retry_seconds
        self.stats = AlertEngineStats()
        self._stop = threading.Event()
        self._raised: queue.SimpleQueue[Alert] = queue.SimpleQueue()  # from other threads (raise_alert)
        self._committed: dict[tuple[str, int], int] = {}
        self._committed_at = 0.0
        self._admin: Any = None
        self._last_refresh = time.monotonic()
        # the engine waits for the sink to land a batch before it evaluates it (no poll while it
        # waits): under a large backlog that wait is minutes, which must not count as a dead
        # consumer (librdkafka's default 5 min would make it leave the group and re-read)
        conf = {"max.poll.interval.ms": 3_600_000, **(consumer_overrides or {})}
        # "is None", not "or": a real Producer is falsy while its queue is empty (__len__)
        if consumer is None:
            consumer = Consumer(consumer_config(bootstrap, group_id, **conf))
        if producer is None:
            producer = Producer(producer_config(bootstrap, **{"linger.ms": 5}))
        self._consumer: ConsumerClient = consumer
        self._producer: ProducerClient = producer
        self._started = False
        self._closed = False

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
                self.stats.last_error = f"alerts topic: {exc}"
                if time.monotonic() > deadline or self._stop.is_set():
                    raise AlertEngineError(
                        f"cannot read the end of the alerts topic {self.topics.alerts} "
                        f"after {self.catch_up_timeout:.0f}s: {exc}"
                    ) from exc
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
        """Close the clients (once); a failure here is logged, never raised over the real one."""
        if self._closed:
            return
        self._closed = True
        steps = (("consumer close", self._consumer.close), ("producer flush", self._flush_on_close))
        for what, step in steps:
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - closing: report, do not mask why run() ended
                log.warning("alert engine %s failed: %s", what, exc)

    def _flush_on_close(self) -> None:
        self._producer.flush(10)

    def run(self) -> None:
        """Loop until ``stop()``. Retriable Kafka failures are handled inside; it raises only
        :class:`AlertEngineError` (a fatal client error, or the start-up could not read the
        alerts topic) or an unexpected error: the engine is then closed, build a new one."""
        try:
            if not self._started:
                self.start()
            while not self._stop.is_set():
                self.poll_once()
        except Exception as exc:
            self.stats.last_error = f"{type(exc).__name__}: {exc}"
            raise
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
            self._admin = AdminClient(client_config(self.bootstrap))
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
    def _consume(self) -> list[Message]:
        """One poll. A fatal consumer error raises :class:`AlertEngineFatalError`; any other
        error is counted (``consumer_errors``, ``last_error``) and the loop goes on."""
        try:
            got = self._consumer.consume(num_messages=self.batch_size, timeout=self.batch_seconds)
        except KafkaException as exc:
            kerr = _kafka_error(exc)
            if kerr is not None and kerr.fatal():
                self.stats.last_error = f"consumer: {kerr}"
                raise AlertEngineFatalError("consumer", kerr) from exc
            self.stats.consumer_errors += 1
            self.stats.last_error = f"consumer: {exc}"
            log.warning("alert engine consumer error: %s", exc)
            self._stop.wait(_backoff(0))
            return []
        msgs: list[Message] = []
        for m in got:
            err = m.error()
            if err is None:
                msgs.append(m)
            elif err.code() != KafkaError._PARTITION_EOF:
                self.stats.last_error = f"consumer: {err}"
                if err.fatal():
                    raise AlertEngineFatalError("consumer", err)
                self.stats.consumer_errors += 1
                log.warning("alert engine consumer error: %s", err)
        return msgs

    def raise_alert(self, alert: Alert) -> None:
        """An alert from outside the rules (the pipeline's own, e.g. ``LEDGER_GAP``), from any
        thread: published with the next batch, deduplicated like every other
        (:meth:`AlertState.admit`) and handed to the notifier."""
        self._raised.put(alert)

    def _drain_raised(self) -> list[Alert]:
        out: list[Alert] = []
        while True:
            try:
                a = self.state.admit(self._raised.get_nowait())
            except queue.Empty:
                return out
            if a is not None:
                out.append(a)

    @gc_paused
    def _evaluate(self, msgs: list[Message]) -> list[Alert]:
        """Decode the batch's events the rules read (what the sink refuses is skipped) and
        evaluate them; the collector is paused for the batch (``schemas.nogc``)."""
        batch: list[tuple[str, Mapping[str, Any]]] = []
        keys = self.gateway_keys() if self.gateway_keys is not None else {}
        now = datetime.now(UTC)  # after the sink landed the batch: its ingest time, or just after
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
            signed = attest(m.headers(), value, rec["source"], keys, require_signed=self.require_signed)
            if isinstance(signed, Refusal):
                self.stats.unattested_skipped += 1  # the sink dead-letters it
                continue
            if self.event_times is not None and implausible_time(rec["event_time"], now, *self.event_times):
                self.stats.implausible_skipped += 1  # the sink quarantines it
                continue
            if self.landed_hash is not None:
                landed = self.landed_hash(rec["event_id"])
                if landed and landed != content_hash_of(value):
                    self.stats.conflicts_skipped += 1  # the sink dead-letters it (ConflictingDuplicate)
                    continue
            self.stats.events += 1
            batch.append((type_name, rec))
        t0 = time.monotonic()
        out = self.evaluator.evaluate_batch(batch)
        self.stats.evaluate_s += time.monotonic() - t0
        return out

    def poll_once(self) -> int:
        msgs = self._consume()
        alerts: list[Alert] = self._drain_raised()
        if msgs:
            need: dict[tuple[str, int], int] = {}
            for m in msgs:
                t, p, o = message_position(m)
                need[(t, p)] = max(need.get((t, p), 0), o + 1)
            if not self._wait_landed(need):
                return 0  # stopping: nothing committed
            alerts += self._evaluate(msgs)
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
        if alerts and not self._publish_until_acknowledged(alerts):
            return 0  # stopping: nothing committed, the batch is read again next time
        if msgs:
            hi: dict[tuple[str, int], int] = {}
            for m in msgs:
                t, p, o = message_position(m)
                hi[(t, p)] = max(hi.get((t, p), -1), o)
            self._commit([TopicPartition(t, p, o + 1) for (t, p), o in hi.items()])
            self.stats.batches += 1
        for a in alerts:
            if self.notifier is not None:
                self.notifier.submit(a)
        return len(msgs)

    # -- publish and commit, with their failures ------------------------------------------
    def _publish_until_acknowledged(self, alerts: list[Alert]) -> bool:
        """Publish until Kafka acknowledged every alert, backing off between attempts (only
        the alerts not acknowledged yet go again). False if the engine stops first: the
        alerts not acknowledged are forgotten, so the uncommitted batch raises them again."""
        pending = alerts
        attempt = 0
        while True:
            try:
                pending = self._publish(pending)
            except _NotAcknowledged as exc:
                pending = exc.pending
                self.stats.publish_retries += 1
                self.stats.last_error = str(exc)
                wait = _backoff(attempt)
                log.warning("alerts not published (%s); retrying in %.1fs", exc, wait)
                attempt += 1
                if not self._stop.wait(wait):
                    continue
            if not pending:
                return True
            for a in pending:
                self.state.raised.pop(a.alert_id, None)
            return False

    def _publish(self, alerts: list[Alert]) -> list[Alert]:
        """Produce the alerts and wait up to ``publish_timeout`` for Kafka's acknowledgement.

        Returns [] when all were acknowledged, or what is left if the engine is stopping.
        Raises :class:`AlertPublishError` (``_NotAcknowledged``: the alerts not acknowledged
        in ``pending``) when some were refused or not acknowledged in time, and
        :class:`AlertEngineFatalError` when the producer cannot go on.
        """
        acked: set[int] = set()
        errors: list[KafkaError] = []

        def on_delivery(i: int, err: Any, _msg: Any) -> None:
            if err is None:
                acked.add(i)
            else:
                errors.append(err)

        try:
            for i, a in enumerate(alerts):
                self._produce(a, partial(on_delivery, i))
            deadline = time.monotonic() + self.publish_timeout
            left = 1
            while not self._stop.is_set():
                left = self._producer.flush(max(0.0, min(1.0, deadline - time.monotonic())))
                if left == 0 or time.monotonic() >= deadline:
                    break
            if left:
                # what is still queued would go out later, beside the retry: take it back
                self._producer.purge(in_queue=True, in_flight=False, blocking=True)
                self._producer.poll(0)  # their delivery reports (purged)
        except KafkaException as exc:
            kerr = _kafka_error(exc)
            if kerr is not None and kerr.fatal():
                raise AlertEngineFatalError("producer", kerr) from exc
            errors.append(kerr or KafkaError(KafkaError._FAIL, str(exc)))
        fatal = next((e for e in errors if isinstance(e, KafkaError) and e.fatal()), None)
        if fatal is not None:
            raise AlertEngineFatalError("producer", fatal)
        done = [a for i, a in enumerate(alerts) if i in acked]
        rest = [a for i, a in enumerate(alerts) if i not in acked]
        self._count_published(done)
        if rest and not self._stop.is_set():
            why = [str(e) for e in errors[:3]] or [f"no acknowledgement in {self.publish_timeout:.0f}s"]
            raise _NotAcknowledged(rest, f"{len(rest)} of {len(alerts)} alerts not delivered: {why}")
        return rest

    def _produce(self, a: Alert, on_delivery: Callable[[Any, Any], None]) -> None:
        while True:
            try:
                value = encode_alert(a)
                self._producer.produce(
                    self.topics.alerts, key=a.alert_id.encode(), value=value, on_delivery=on_delivery
                )
                return
            except BufferError:  # the local queue is full: serve delivery reports, try again
                self._producer.poll(0.1)
                if self._stop.is_set():
                    raise _NotAcknowledged([a], "stopping with the producer queue full") from None

    def _count_published(self, alerts: list[Alert]) -> None:
        if not alerts:
            return
        self.stats.alerts_published += len(alerts)
        for a in alerts:
            self.stats.by_rule[a.rule] = self.stats.by_rule.get(a.rule, 0) + 1
        log.info(
            "published %d alert(s): %s", len(alerts), ", ".join(f"{a.alert_id}#{a.version}" for a in alerts)
        )

    def _commit(self, offsets: list[TopicPartition]) -> bool:
        """Commit the batch's offsets. Retriable failures are retried with back-off for up to
        ``commit_retry_seconds``; a rebalance (or retries running out, or another refusal)
        gives the batch up: its alerts are published, so a replay is only a re-read that the
        dedup state absorbs. Raises only :class:`AlertEngineFatalError`."""
        t0 = time.monotonic()
        attempt = 0
        while True:
            kerr: KafkaError | None
            try:
                res = self._consumer.commit(offsets=offsets, asynchronous=False)
                kerr = next((tp.error for tp in res or () if getattr(tp, "error", None)), None)
                if kerr is None:
                    self.stats.commits += 1
                    return True
                what: Any = kerr
            except KafkaException as exc:
                kerr, what = _kafka_error(exc), exc
            self.stats.last_error = f"commit: {what}"
            code = kerr.code() if kerr is not None else None
            if kerr is not None and kerr.fatal():
                raise AlertEngineFatalError("consumer", kerr)
            if code in _REBALANCED:
                reason = "the group rebalanced; the batch is re-read or committed by a later one"
            elif (code in _RETRIED or (kerr is not None and kerr.retriable())) and (
                time.monotonic() - t0 < self.commit_retry_seconds
            ):
                self.stats.commit_retries += 1
                wait = _backoff(attempt, cap=5.0)
                attempt += 1
                log.warning("commit failed (%s); retrying in %.1fs", what, wait)
                if self._stop.wait(wait):
                    return False  # stopping: the batch is read again next time
                continue
            else:
                reason = "giving the batch up; it is re-read or committed by a later one"
            self.stats.commits_given_up += 1
            log.warning("commit failed (%s): %s", what, reason)
            return False


def ledger_gap(topic: str, partition: int, gap: int, now: datetime) -> Alert:
    """``LEDGER_GAP`` (key ``LEDGER_GAP:<topic>:<partition>``, CRITICAL): the pipeline's own
    alert, raised by ``traceline serve`` through :meth:`AlertEngine.raise_alert` when the sink's
    ledger of an events-topic partition does not balance: ``gap`` records read that were neither
    landed, dead-lettered, skipped as duplicates nor counted as conflicts (negative: counted
    twice). Only the gap is content: the same gap raised again is not a new version (``GET
    /ledger`` has the partition's counts). ``program`` is empty: only callers who see every
    programme list it (the pipeline belongs to no programme)."""
    what = f"{gap:,} records read but not accounted for" if gap > 0 else f"{-gap:,} records counted twice"
    title = f"Ledger gap on {topic} partition {partition}: {what}"
    return _pipeline_alert(
        AlertRule.LEDGER_GAP, AlertSeverity.CRITICAL, f"{topic}:{partition}", title, now, gap=gap
    )


def event_id_conflicts(topic: str, count: int, since: datetime, now: datetime) -> Alert:
    """``EVENT_ID_CONFLICT`` (key ``EVENT_ID_CONFLICT:<topic>``, WARNING): the pipeline's own
    alert, raised by ``traceline serve`` when the sink has refused ``count`` events (since
    ``since``, its start) whose event id had landed before with other content: a gateway re-uses
    ids, or two sources collide. Each one is a ``ConflictingDuplicate`` dead letter with both
    payload hashes (``dead_letters``); the first content stays. A new count updates the alert."""
    title = f"{count:,} events on {topic} re-used an event id with other content (refused, dead-lettered)"
    return _pipeline_alert(
        AlertRule.EVENT_ID_CONFLICT,
        AlertSeverity.WARNING,
        topic,
        title,
        now,
        conflicts=count,
        since=since.isoformat(),
    )


def _pipeline_alert(
    rule: AlertRule, severity: AlertSeverity, subject: str, title: str, now: datetime, **details: object
) -> Alert:
    """An alert of the pipeline itself (key ``<RULE>:<subject>``): no event, site or programme."""
    return Alert(
        alert_id=f"{rule.value}:{subject}",
        rule=rule,
        severity=severity,
        title=title,
        subject_kind="pipeline",
        subject_id=subject,
        raised_at=now,
        event_time=now,
        trigger_event_id="",
        trigger_type="",
        site="",
        program="",
        details={k: str(v) for k, v in details.items()},
    )


class _NotAcknowledged(AlertPublishError):
    """Some alerts were not acknowledged: ``pending`` are the ones to publish again."""

    def __init__(self, pending: list[Alert], reason: str) -> None:
        super().__init__(reason, pending[0].alert_id if pending else "")
        self.pending = pending
