"""The scenarios, in the order they run (priority order), and how often each is repeated."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from chaos.harness import Ctx, Result

__all__ = ["Scenario", "SCENARIOS", "by_name"]


@dataclass(frozen=True)
class Scenario:
    name: str
    target: str  # "module:function" (imported in the runner only)
    repeats: int
    summary: str

    def load(self) -> Callable[[Ctx], Result]:
        module, _, fn = self.target.partition(":")
        return getattr(importlib.import_module(module), fn)  # type: ignore[no-any-return]


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "broker-kill-publish",
        "chaos.broker_faults:broker_kill_publish",
        3,
        "broker kill -9 while an outbox publisher publishes; restarted on the same port",
    ),
    Scenario(
        "broker-kill-ingest",
        "chaos.broker_faults:broker_kill_ingest",
        3,
        "broker kill -9 while serve ingests a backlog; restarted on the same port",
    ),
    Scenario(
        "serve-kill",
        "chaos.process_faults:serve_kill",
        1,
        "`traceline serve` (a subprocess) SIGKILLed mid-ingest, then started again",
    ),
    Scenario(
        "worker-kill",
        "chaos.process_faults:worker_kill",
        1,
        "the faust worker child SIGKILLed mid-ingest, three times",
    ),
    Scenario(
        "alert-crash",
        "chaos.process_faults:alert_crash",
        1,
        "the running alert engine's poll raises once",
    ),
    Scenario(
        "poison",
        "chaos.input_faults:poison",
        1,
        "poison records of every kind, published raw, then valid events",
    ),
    Scenario(
        "conflicts",
        "chaos.input_faults:conflicts",
        1,
        "an event id re-used with other content, and identical repeats (also across a restart)",
    ),
    Scenario(
        "clock-skew",
        "chaos.input_faults:clock_skew",
        1,
        "a publisher whose clock runs 400 days ahead (libfaketime), plus far-future and too-old times",
    ),
    Scenario(
        "partition",
        "chaos.broker_faults:partition",
        1,
        "TCP partition between the pipeline and the broker (a loopback proxy cut for 30 s)",
    ),
    Scenario(
        "disk-full",
        "chaos.store_faults:disk_full",
        1,
        "the store's disk (a tmpfs) full while events arrive, then space returns",
    ),
    Scenario(
        "cluster",
        "chaos.broker_faults:cluster_broker_loss",
        1,
        "a 3-broker KRaft cluster (RF 3, min ISR 2) loses one broker under load",
    ),
)


def by_name(name: str) -> Scenario:
    for s in SCENARIOS:
        if s.name == name:
            return s
    known = ", ".join(s.name for s in SCENARIOS)
    raise KeyError(f"unknown scenario {name!r} (known: {known})")
