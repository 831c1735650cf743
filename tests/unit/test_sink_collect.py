"""The sink's batch window (``SinkWorker._collect``) with a scripted consumer: no broker."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from schemas.topics import TopicNames
from sinks.ingest import SinkWorker

WINDOW = 0.2


class _Msg:
    def error(self) -> None:
        return None


class _Consumer:
    """Hands out one message per poll while ``flowing``; otherwise waits the poll out empty."""

    def __init__(self) -> None:
        self.flowing = True
        self.polls: list[float] = []  # the timeout of each consume() call

    def subscribe(self, topics: list[str], on_assign: Any = None) -> None:
        pass

    def consume(self, num_messages: int, timeout: float) -> list[_Msg]:
        self.polls.append(timeout)
        if self.flowing:
            time.sleep(0.005)
            return [_Msg()]
        time.sleep(timeout)
        return []


@pytest.fixture
def sink() -> Iterator[SinkWorker]:
    # injected clients: no broker, no real client (the producer is never used by _collect)
    fake: Any = _Consumer()
    w = SinkWorker(
        "127.0.0.1:9",
        store=None,  # type: ignore[arg-type]
        topics=TopicNames(),
        batch_seconds=WINDOW,
        consumer=fake,
        producer=object(),  # type: ignore[arg-type]
    )
    yield w


def _collect(w: SinkWorker) -> tuple[int, float]:
    t0 = time.monotonic()
    n = len(w._collect())
    return n, time.monotonic() - t0


def test_a_steady_flow_fills_the_window(sink: SinkWorker) -> None:
    n, took = _collect(sink)
    assert n > 1 and took >= WINDOW * 0.9


def test_a_batch_that_landed_longer_than_the_window_is_followed_at_once(sink: SinkWorker) -> None:
    _collect(sink)
    time.sleep(WINDOW * 1.5)  # landing the batch took longer than the window
    fake: Any = sink._consumer
    fake.polls.clear()
    n, took = _collect(sink)
    # what queued meanwhile has waited a window already: one poll that does not wait
    assert n == 1 and fake.polls == [0.0] and took < WINDOW / 2


def test_a_quick_land_leaves_the_rest_of_the_window(sink: SinkWorker) -> None:
    _collect(sink)
    time.sleep(WINDOW / 4)
    _n, took = _collect(sink)
    assert WINDOW * 0.5 <= took <= WINDOW * 0.9


def test_an_empty_poll_closes_a_batch_and_an_idle_sink_waits_its_window(sink: SinkWorker) -> None:
    fake: Any = sink._consumer
    fake.flowing = False
    n, took = _collect(sink)
    assert n == 0 and took >= WINDOW * 0.9  # idle: polls until the window ends, no busy loop
    n, took = _collect(sink)
    assert n == 0 and took >= WINDOW * 0.9
