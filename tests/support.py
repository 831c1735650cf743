"""Test support, shared by the tests and the benchmarks (never imported by the product).

* :func:`run_genealogy`: a deterministic in-memory driver of the genealogy rule
  (``streams.genealogy``): per-key FIFO queues, optional shuffling and redelivery;
* :func:`wait_caught_up`: wait until the stream worker and the sink have no consumer lag.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from schemas.kafka import pipeline_lag
from schemas.topics import TopicNames
from streams.genealogy import Change, Command, Node, Send, apply, commands_for_event

__all__ = ["run_genealogy", "wait_caught_up"]


def run_genealogy(
    events: Iterable[Mapping[str, Any]],
    shuffle_seed: int | None = None,
    *,
    duplicate_rate: float = 0.0,
    fifo: bool = True,
    changes: list[Change] | None = None,
    max_steps: int = 5_000_000,
) -> dict[str, Node]:
    """Deterministic in-memory driver: feed the events' commands through per-key queues.

    With ``shuffle_seed=None`` everything runs in one global FIFO order. With a seed, each
    step picks a random non-empty queue (the event source counts as one queue), so keys
    interleave like partitions do; per key the queue stays FIFO (Kafka's guarantee) unless
    ``fifo=False``. ``duplicate_rate`` re-enqueues a processed command (at-least-once
    redelivery). Change records are appended to ``changes`` if given. Runs to quiescence.
    """
    rng = random.Random(shuffle_seed) if shuffle_seed is not None else None
    nodes: dict[str, Node] = {}
    source: deque[Mapping[str, Any]] = deque(events)

    def step(key: str, cmd: Command) -> list[Send]:
        node, sends, ch = apply(nodes.get(key), key, cmd)
        nodes[key] = node
        if changes is not None:
            changes.extend(ch)
        return sends

    steps = 0
    if rng is None:
        glob: deque[Send] = deque()
        for ev in source:
            glob.extend(commands_for_event(ev))
        while glob:
            steps += 1
            if steps > max_steps:
                raise RuntimeError("genealogy did not quiesce")
            key, cmd = glob.popleft()
            glob.extend(step(key, cmd))
        return nodes

    queues: dict[str, list[Command]] = {}
    heads: dict[str, int] = {}
    ready: list[str] = []  # keys with a non-empty queue

    def enqueue(key: str, cmd: Command) -> None:
        q = queues.setdefault(key, [])
        if heads.get(key, 0) >= len(q):
            queues[key] = q = []
            heads[key] = 0
            ready.append(key)
        q.append(cmd)

    while source or ready:
        steps += 1
        if steps > max_steps:
            raise RuntimeError("genealogy did not quiesce")
        i = rng.randrange(len(ready) + (1 if source else 0))
        if i == len(ready):
            for key, cmd in commands_for_event(source.popleft()):
                enqueue(key, cmd)
            continue
        key = ready[i]
        q, h = queues[key], heads[key]
        if not fifo:
            j = rng.randrange(h, len(q))
            q[h], q[j] = q[j], q[h]
        cmd = q[h]
        heads[key] = h + 1
        if h + 1 >= len(q):
            ready[i] = ready[-1]
            ready.pop()
        for target, out in step(key, cmd):
            enqueue(target, out)
        if duplicate_rate and rng.random() < duplicate_rate:
            enqueue(key, cmd)
    return nodes


def wait_caught_up(
    bootstrap: str,
    topics: TopicNames,
    *,
    app_id: str,
    sink_group: str,
    timeout: float = 300.0,
    quiet: float = 3.0,
    progress: Callable[[dict[str, int]], None] | None = None,
) -> bool:
    """Wait until both groups have no lag for ``quiet`` seconds. False on timeout."""
    deadline = time.monotonic() + timeout
    zero_since: float | None = None
    while time.monotonic() < deadline:
        lag = pipeline_lag(bootstrap, topics, app_id=app_id, sink_group=sink_group)
        if progress is not None:
            progress(lag)
        if lag["streams"] == 0 and lag["sink"] == 0:
            zero_since = zero_since or time.monotonic()
            if time.monotonic() - zero_since >= quiet:
                return True
        else:
            zero_since = None
        time.sleep(0.5)
    return False
