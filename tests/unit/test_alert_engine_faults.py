"""The alert engine survives Kafka's failures (no broker: fake consumer and producer injected).

* a commit refused after a rebalance (``UNKNOWN_MEMBER_ID``, ``ILLEGAL_GENERATION``,
  ``REBALANCE_IN_PROGRESS``) gives the batch up and the loop goes on;
* a retriable commit failure (``_WAIT_COORD``, a timeout) is retried with back-off, and given
  up when the retries run out, never raised out of ``run()``;
* a fatal consumer error ends ``run()`` with :class:`AlertEngineFatalError` (the supervisor
  restarts the engine);
* alerts the broker does not acknowledge are retried after a back-off (bounded wait, no spin),
  the batch is committed only after they are acknowledged, and only the unacknowledged ones go
  again; ``stop()`` during an outage ends the loop without committing.
"""

from __future__ import annotations

import gc
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from schemas.alert import Alert, decode_alert, encode_alert
from schemas.serde import AvroSerde
from schemas.topics import TopicNames
from streams import alert_engine
from streams.alert_engine import (
    AlertEngine,
    AlertEngineError,
    AlertEngineFatalError,
    event_id_conflicts,
    ledger_gap,
)
from streams.alerts import AlertRules, AlertState
from streams.intake import content_hash_of
from tests.samples import sample_events

TOPICS = TopicNames(events="f.events", prefix="f.")
T = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)


# -- fakes ----------------------------------------------------------------------------------
class Msg:
    def __init__(self, offset: int, partition: int = 0, error: KafkaError | None = None) -> None:
        self._offset, self._partition, self._error = offset, partition, error

    def error(self) -> KafkaError | None:
        return self._error

    def topic(self) -> str:
        return TOPICS.events

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes:
        return b"not avro"  # undecodable: the evaluator below raises what it is told to

    def key(self) -> bytes:
        return b"k"


class FakeConsumer:
    """``consume`` hands out the scripted batches, then nothing; ``commit`` raises the
    scripted errors in turn, then succeeds."""

    def __init__(self, batches: list[list[Msg]], commit_errors: list[KafkaError] | None = None) -> None:
        self.batches = deque(batches)
        self.commit_errors = deque(commit_errors or [])
        self.commit_calls: list[list[tuple[str, int, int]]] = []
        self.committed: list[list[tuple[str, int, int]]] = []
        self.closed = False

    def subscribe(self, topics: list[str]) -> None:
        self.topics = topics

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Msg]:
        if self.batches:
            return self.batches.popleft()
        time.sleep(min(timeout, 0.01))
        return []

    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool) -> None:
        got = [(tp.topic, tp.partition, tp.offset) for tp in offsets]
        self.commit_calls.append(got)
        if self.commit_errors:
            raise KafkaException(self.commit_errors.popleft())
        self.committed.append(got)

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any:
        return type("Md", (), {"topics": {}})()  # no alerts topic yet: nothing to catch up

    def get_watermark_offsets(self, partition: TopicPartition, timeout: float = -1) -> tuple[int, int]:
        return (0, 0)

    def close(self) -> None:
        self.closed = True


class FakeProducer:
    """A broker that is ``up`` (``flush`` acknowledges everything) or down (``flush`` waits its
    timeout and acknowledges nothing, like librdkafka with the broker gone)."""

    def __init__(self, up: bool = True) -> None:
        self.up = up
        self.queue: list[tuple[bytes, Callable[[Any, Any], None]]] = []
        self.delivered: list[bytes] = []  # keys Kafka acknowledged, in order
        self.flush_calls = 0
        self._reports: list[tuple[Callable[[Any, Any], None], KafkaError]] = []

    def produce(
        self, topic: str, *, value: bytes, key: bytes, on_delivery: Callable[[Any, Any], None]
    ) -> None:
        self.queue.append((key, on_delivery))

    def poll(self, timeout: float = 0) -> int:
        reports, self._reports = self._reports, []
        for cb, err in reports:
            cb(err, None)
        return len(reports)

    def flush(self, timeout: float = -1) -> int:
        self.flush_calls += 1
        self.poll(0)
        if not self.up:
            if self.queue:  # nothing outstanding: returns at once, like librdkafka
                time.sleep(max(0.0, timeout))
            return len(self.queue)
        queue, self.queue = self.queue, []
        for key, cb in queue:
            self.delivered.append(key)
            cb(None, None)
        return 0

    def purge(self, in_queue: bool = True, in_flight: bool = True, blocking: bool = True) -> None:
        queue, self.queue = self.queue, []
        self._reports += [(cb, KafkaError(KafkaError._PURGE_QUEUE)) for _key, cb in queue]


def alert(alert_id: str) -> Alert:
    return Alert(
        alert_id=alert_id,
        rule="NC_RAISED",
        severity="WARNING",
        title=f"alert {alert_id}",
        subject_kind="LOT",
        subject_id="L1",
        raised_at=T,
        event_time=T,
        trigger_event_id="e1",
        trigger_type="NonconformanceRaised",
        site="S1",
        program="P1",
    )


class FakeEvaluator:
    """Raises the scripted alerts for each batch (and remembers them, like the dedup state)."""

    def __init__(self, alerts_per_batch: list[list[Alert]] | None = None) -> None:
        self.rules = AlertRules(nc_refresh_seconds=0)
        self.state = AlertState()
        self.refresh_done = True
        self.script = deque(alerts_per_batch or [])

    def reload(self) -> None:
        pass

    def evaluate_batch(self, events: Any) -> list[Alert]:
        got = self.script.popleft() if self.script else []
        for a in got:
            self.state.raised[a.alert_id] = (a.version, a.fingerprint())
        return got

    def refresh_open_ncs(self, budget_s: float | None = None) -> list[Alert]:
        return []


def engine(
    consumer: FakeConsumer, producer: FakeProducer, evaluator: FakeEvaluator | None = None, **kw: Any
) -> AlertEngine:
    landed = {(TOPICS.events, p): 10**9 for p in range(3)}  # the sink has landed everything
    return AlertEngine(
        "fake:9092",
        evaluator or FakeEvaluator(),
        topics=TOPICS,
        landed=lambda: landed,
        consumer=consumer,
        producer=producer,
        **kw,
    )


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(alert_engine, "_backoff", lambda attempt, cap=30.0: 0.05)


def run_in_thread(e: AlertEngine) -> tuple[threading.Thread, list[BaseException]]:
    raised: list[BaseException] = []

    def target() -> None:
        try:
            e.run()
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            raised.append(exc)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, raised


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def run_batches(e: AlertEngine, n: int) -> list[BaseException]:
    """Run the engine in a thread until it handled ``n`` batches, stop it; what ``run()`` raised."""
    t, raised = run_in_thread(e)
    try:
        wait_for(lambda: e.stats.batches == n)
    finally:
        e.stop()
        t.join(5)
    return raised


# -- commits --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "code",
    [KafkaError.UNKNOWN_MEMBER_ID, KafkaError.ILLEGAL_GENERATION, KafkaError.REBALANCE_IN_PROGRESS],
)
def test_a_commit_refused_after_a_rebalance_gives_the_batch_up_and_the_loop_goes_on(code: int) -> None:
    consumer = FakeConsumer([[Msg(0), Msg(1)], [Msg(2)]], commit_errors=[KafkaError(code)])
    e = engine(consumer, FakeProducer())
    t, raised = run_in_thread(e)
    try:
        wait_for(lambda: e.stats.batches == 2)
    finally:
        e.stop()
        t.join(5)
    assert not t.is_alive() and raised == []  # run() ended normally, after stop()
    assert consumer.commit_calls == [[(TOPICS.events, 0, 2)], [(TOPICS.events, 0, 3)]]  # no retry
    assert consumer.committed == [[(TOPICS.events, 0, 3)]]  # the next batch commits past it
    s = e.stats
    assert (s.commits, s.commits_given_up, s.commit_retries) == (1, 1, 0)
    assert KafkaError(code).name() in str(s.last_error)


@pytest.mark.parametrize(
    "code", [KafkaError._WAIT_COORD, KafkaError.REQUEST_TIMED_OUT, KafkaError._TRANSPORT]
)
def test_a_retriable_commit_failure_is_retried_with_backoff(code: int) -> None:
    consumer = FakeConsumer([[Msg(5, partition=1)]], commit_errors=[KafkaError(code), KafkaError(code)])
    e = engine(consumer, FakeProducer())
    assert e.poll_once() == 1
    assert consumer.commit_calls == [[(TOPICS.events, 1, 6)]] * 3
    assert consumer.committed == [[(TOPICS.events, 1, 6)]]
    assert (e.stats.commits, e.stats.commit_retries, e.stats.commits_given_up) == (1, 2, 0)
    assert KafkaError(code).name() in str(e.stats.last_error)


def test_a_commit_that_keeps_failing_is_given_up_not_raised() -> None:
    consumer = FakeConsumer([[Msg(0)]], commit_errors=[KafkaError(KafkaError._WAIT_COORD)] * 1000)
    e = engine(consumer, FakeProducer(), commit_retry_seconds=0.2)
    t0 = time.monotonic()
    assert e.poll_once() == 1  # returns: the retries ran out
    assert time.monotonic() - t0 < 3
    assert e.stats.commits_given_up == 1 and e.stats.commit_retries >= 1 and e.stats.commits == 0


def test_a_fatal_commit_error_is_raised_for_the_supervisor() -> None:
    fatal = KafkaError(KafkaError._FATAL, "fenced by a newer instance", fatal=True)
    consumer = FakeConsumer([[Msg(0)]], commit_errors=[fatal])
    e = engine(consumer, FakeProducer())
    t, raised = run_in_thread(e)
    t.join(5)
    assert not t.is_alive()
    assert len(raised) == 1 and isinstance(raised[0], AlertEngineFatalError), raised
    assert "fenced by a newer instance" in str(raised[0]) and "restart" in str(raised[0])
    assert consumer.closed  # closed on the way out: the supervisor builds a new engine


# -- the consumer ---------------------------------------------------------------------------
def test_a_fatal_consumer_error_ends_run_with_a_clear_error() -> None:
    fatal = KafkaError(KafkaError._FATAL, "broker: fenced instance id", fatal=True)
    consumer = FakeConsumer([[Msg(0)], [Msg(1, error=fatal)]])
    e = engine(consumer, FakeProducer())
    t, raised = run_in_thread(e)
    t.join(5)
    assert not t.is_alive()
    assert len(raised) == 1 and isinstance(raised[0], AlertEngineFatalError), raised
    assert isinstance(raised[0], AlertEngineError)
    assert "fatal Kafka consumer error" in str(raised[0]) and "fenced instance id" in str(raised[0])
    assert "fenced instance id" in str(e.stats.last_error)
    assert consumer.committed == [[(TOPICS.events, 0, 1)]] and consumer.closed


def test_a_consumer_error_that_is_not_fatal_is_counted_and_the_loop_goes_on() -> None:
    transient = KafkaError(KafkaError._TRANSPORT, "broker transport failure")
    eof = KafkaError(KafkaError._PARTITION_EOF)
    consumer = FakeConsumer([[Msg(0, error=transient), Msg(0)], [Msg(1, error=eof)], [Msg(1)]])
    e = engine(consumer, FakeProducer())
    for _ in range(3):
        e.poll_once()
    assert e.stats.consumer_errors == 1  # the partition EOF is no error
    assert "transport failure" in str(e.stats.last_error)
    assert consumer.committed == [[(TOPICS.events, 0, 1)], [(TOPICS.events, 0, 2)]]


# -- publishing -----------------------------------------------------------------------------
def test_alerts_not_acknowledged_are_retried_after_a_backoff_and_only_then_committed() -> None:
    consumer = FakeConsumer([[Msg(0), Msg(1)]])
    producer = FakeProducer(up=False)
    evaluator = FakeEvaluator([[alert("A1"), alert("A2")]])
    e = engine(consumer, producer, evaluator, publish_timeout=0.3)
    t, raised = run_in_thread(e)
    try:
        wait_for(lambda: e.stats.publish_retries >= 2)  # bounded waits, back-off between them
        assert consumer.commit_calls == []  # not committed while the alerts are not out
        assert producer.flush_calls < 20  # no spinning on flush while the broker is down
        assert "not delivered" in str(e.stats.last_error)
        producer.up = True
        wait_for(lambda: e.stats.batches == 1)
    finally:
        e.stop()
        t.join(5)
    assert raised == []
    assert producer.delivered == [b"A1", b"A2"]  # each once: the purged attempts were taken back
    assert consumer.committed == [[(TOPICS.events, 0, 2)]]
    assert e.stats.alerts_published == 2


def test_only_the_alerts_not_acknowledged_go_again() -> None:
    class HalfUp(FakeProducer):
        """Acknowledges A1 only on the first flush, everything after."""

        def flush(self, timeout: float = -1) -> int:
            if self.flush_calls == 0:
                self.flush_calls += 1
                key, cb = self.queue.pop(0)
                self.delivered.append(key)
                cb(None, None)
                for _key, cb in self.queue:
                    cb(KafkaError(KafkaError._MSG_TIMED_OUT), None)
                self.queue = []
                return 0
            return super().flush(timeout)

    consumer = FakeConsumer([[Msg(0)]])
    producer = HalfUp()
    e = engine(consumer, producer, FakeEvaluator([[alert("A1"), alert("A2"), alert("A3")]]))
    assert e.poll_once() == 1
    assert producer.delivered == [b"A1", b"A2", b"A3"]
    assert e.stats.publish_retries == 1 and e.stats.alerts_published == 3
    assert consumer.committed == [[(TOPICS.events, 0, 1)]]


def test_stop_during_an_outage_ends_the_loop_without_committing() -> None:
    consumer = FakeConsumer([[Msg(0)]])
    evaluator = FakeEvaluator([[alert("A1")]])
    e = engine(consumer, FakeProducer(up=False), evaluator, publish_timeout=0.2)
    t, raised = run_in_thread(e)
    wait_for(lambda: e.stats.publish_retries >= 1)
    e.stop()
    t.join(5)
    assert not t.is_alive() and raised == []
    assert consumer.commit_calls == [] and consumer.closed
    assert "A1" not in evaluator.state.raised  # forgotten: the re-read batch raises it again
    assert e.stats.alerts_published == 0


def test_a_fatal_producer_error_is_raised_for_the_supervisor() -> None:
    class Fatal(FakeProducer):
        def flush(self, timeout: float = -1) -> int:
            for _key, cb in self.queue:
                cb(KafkaError(KafkaError._FATAL, "producer fenced", fatal=True), None)
            self.queue = []
            return 0

    consumer = FakeConsumer([[Msg(0)]])
    e = engine(consumer, Fatal(), FakeEvaluator([[alert("A1")]]))
    with pytest.raises(AlertEngineFatalError, match="producer fenced"):
        e.poll_once()
    assert consumer.commit_calls == []


# -- the pipeline's own alerts --------------------------------------------------------------------
def test_a_raised_ledger_gap_is_published_once_per_gap_figure() -> None:
    consumer = FakeConsumer([])
    producer = FakeProducer()
    e = engine(consumer, producer)
    now = datetime.now(UTC)
    t, raised = run_in_thread(e)
    try:
        for _ in range(3):  # the monitor raises it on every look while the gap lasts
            e.raise_alert(ledger_gap(TOPICS.events, 2, 5, now))
        wait_for(lambda: e.stats.alerts_published == 1)
        e.raise_alert(ledger_gap(TOPICS.events, 2, 7, now))  # the gap grew: a new version
        wait_for(lambda: e.stats.alerts_published == 2)
        time.sleep(0.1)
    finally:
        e.stop()
        t.join(5)
    assert raised == []
    key = f"LEDGER_GAP:{TOPICS.events}:2".encode()
    assert producer.delivered == [key, key]
    assert e.state.raised[key.decode()][0] == 2


def test_the_ledger_gap_alert_says_what_is_missing_and_round_trips() -> None:
    a = ledger_gap("ev", 0, 3, T)
    assert (a.rule, a.severity, a.subject_kind, a.program) == ("LEDGER_GAP", "CRITICAL", "pipeline", "")
    assert "3 records read but not accounted for" in a.title
    assert "counted twice" in ledger_gap("ev", 0, -2, T).title
    assert decode_alert(encode_alert(a)) == a


def test_the_event_id_conflict_alert_counts_what_was_refused() -> None:
    a = event_id_conflicts("ev", 12, T, T)
    assert (a.rule, a.severity, a.alert_id, a.details["conflicts"]) == (
        "EVENT_ID_CONFLICT", "WARNING", "EVENT_ID_CONFLICT:ev", "12"
    )  # fmt: skip
    assert "12 events on ev re-used an event id" in a.title
    assert decode_alert(encode_alert(a)) == a
    assert a.fingerprint() != event_id_conflicts("ev", 13, T, T).fingerprint()  # a new count: a new version


# -- what the sink refuses is not evaluated ---------------------------------------------------------
class EventMsg(Msg):
    def __init__(self, offset: int, value: bytes) -> None:
        super().__init__(offset)
        self._value = value

    def value(self) -> bytes:
        return self._value

    def headers(self) -> None:
        return None


class Recording(FakeEvaluator):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, Any]] = []

    def evaluate_batch(self, events: Any) -> list[Alert]:
        self.seen += list(events)
        return []


def test_an_event_time_the_sink_quarantines_is_not_evaluated() -> None:
    """A RELEASED stamped 9999-12-31 (quarantined by the sink) must not end a hold in the
    engine's state; a plausible one is evaluated."""
    serde = AvroSerde(topic=TOPICS.events)
    status = next(e for e in sample_events() if e.type == "LotStatusChanged")
    far = status.model_copy(
        update={
            "event_id": "11111111-0000-4000-8000-00000000f00d",
            "event_time": datetime(9999, 12, 31, tzinfo=UTC),
            "status": "RELEASED",
        }
    )
    consumer = FakeConsumer([[EventMsg(0, serde.encode_event(far)), EventMsg(1, serde.encode_event(status))]])
    evaluator = Recording()
    e = engine(
        consumer,
        FakeProducer(),
        evaluator,
        event_times=(datetime(2000, 1, 1, tzinfo=UTC), timedelta(hours=24)),
    )
    assert run_batches(e, 1) == []
    assert [rec["event_id"] for _type, rec in evaluator.seen] == [status.event_id]
    assert e.stats.implausible_skipped == 1


def test_a_batch_is_evaluated_with_the_collector_paused_and_it_is_on_again_after() -> None:
    serde = AvroSerde(topic=TOPICS.events)
    status = next(e for e in sample_events() if e.type == "LotStatusChanged")
    seen: list[bool] = []

    class Watching(FakeEvaluator):
        def evaluate_batch(self, events: Any) -> list[Alert]:
            seen.append(gc.isenabled())
            return []

    e = engine(FakeConsumer([[EventMsg(0, serde.encode_event(status))]]), FakeProducer(), Watching())
    assert run_batches(e, 1) == [] and seen == [False] and gc.isenabled()


def test_an_event_id_the_sink_landed_with_other_content_is_not_evaluated() -> None:
    """A RELEASED re-using a HOLD's event id is dead-lettered by the sink (ConflictingDuplicate);
    the engine must not let it end the hold in its state. The same content again (a re-send) and
    an id the sink does not remember are evaluated as before."""
    serde = AvroSerde(topic=TOPICS.events)
    hold = next(e for e in sample_events() if e.type == "LotStatusChanged").model_copy(
        update={"status": "HOLD"}
    )
    spoof = hold.model_copy(update={"status": "RELEASED"})  # the same event id, other content
    resend = hold
    unknown = hold.model_copy(update={"event_id": "11111111-0000-4000-8000-00000000beef"})
    values = [serde.encode_event(x) for x in (hold, spoof, resend, unknown)]
    landed = {hold.event_id: content_hash_of(values[0])}
    evaluator = Recording()
    e = engine(
        FakeConsumer([[EventMsg(i, v) for i, v in enumerate(values)]]),
        FakeProducer(),
        evaluator,
        landed_hash=landed.get,
    )
    assert run_batches(e, 1) == []
    assert [(r["event_id"], r["status"]) for _t, r in evaluator.seen] == [
        (hold.event_id, "HOLD"),
        (hold.event_id, "HOLD"),
        (unknown.event_id, "HOLD"),
    ]
    assert e.stats.conflicts_skipped == 1
