"""Past exposure of a recall (``RecallImpact.past``, queries/recall.py "Past exposure") on the
real engine, against the independent replay of ``tests.oracle.past_exposure``.

Events are landed as the pipeline lands them: the sink's rows (``sinks.rows.rows_for_batch``,
delivered shuffled, with duplicates, over several batches) and the genealogy processor's change
records (``tests.support.run_genealogy`` with shuffled keys and redelivered commands,
``sinks.rows.genealogy_rows``). Every example and test uses serial numbers and lots of its own
in one module-scoped store, so they never see each other's units.
"""

from __future__ import annotations

import itertools
import os
import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from queries import PastHolder, Trigger, recall_impact
from sinks.rows import SinkRecord, genealogy_rows, rows_for_batch
from sinks.store import Store
from tests import oracle
from tests.support import run_genealogy

pytestmark = pytest.mark.integration

D0 = datetime(2026, 4, 1, tzinfo=UTC)
_prefixes = itertools.count(1)
_offsets = itertools.count(1)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    dsn = os.environ.get("TRACELINE_CLICKHOUSE_DSN", "").strip()
    if dsn:
        db = f"traceline_test_{uuid.uuid4().hex[:10]}"
    else:
        dsn, db = f"chdb://{tmp_path_factory.mktemp('past') / 'ch'}", "traceline"
    s = Store.open(dsn, db)
    yield s
    if dsn.startswith("http"):
        s.command(f"DROP DATABASE IF EXISTS `{db}`")
    s.close()


# ----------------------------------------------------------------------------- events


class Plant:
    """Builds one history's events (Avro record form, ``type`` added); times in seconds from D0."""

    def __init__(self) -> None:
        self.ns = f"x{next(_prefixes)}"  # this history's serial numbers and lots
        self.events: list[dict[str, Any]] = []
        self._ids = itertools.count()

    def __repr__(self) -> str:  # a falsifying example, readable
        def name(ref: dict[str, str]) -> str:
            return f"{ref['part_number']}:{ref['serial_number'].split('-', 1)[1]}"

        out = []
        for e in self.events:
            t = f"@{(e['event_time'] - D0).total_seconds():g}s/{e['event_id'].split('-', 1)[1]}"
            if e["type"] == "UnitAssembled":
                out.append(f"assemble {name(e['unit'])}->{name(e['parent'])}{t}")
            elif e["type"] == "UnitRemoved":
                out.append(f"remove {name(e['unit'])}-/>{name(e['parent'])}{t}")
            elif e["consumed_units"]:
                out.append(f"consume {name(e['consumed_units'][0])}->{name(e['unit'])}{t}")
            else:
                lots = [x["lot_id"].split("-", 1)[1] for x in e["consumed_lots"]]
                out.append(f"produce {name(e['unit'])} {lots}{t}")
        return "Plant(" + "; ".join(out) + ")"

    def u(self, name: str) -> str:
        """'PCB:1' -> the UII of this history's PCB 1."""
        pn, sn = name.split(":")
        return f"{pn}:{self.ns}-{sn}"

    def lot(self, name: str = "BAD") -> str:
        return f"{self.ns}-{name}"

    def _ref(self, name: str) -> dict[str, str]:
        pn, sn = self.u(name).split(":")
        return {"part_number": pn, "serial_number": sn}

    def _add(self, typ: str, t: float, eid: str | None, **body: Any) -> None:
        at = D0 + timedelta(seconds=t)
        head = {"event_id": f"{self.ns}-{eid or next(self._ids)}", "event_time": at, "source": "test",
                "site": "plant-a", "program": "PRG-1"}  # fmt: skip
        self.events.append({"type": typ, **head, **body})

    def produce(
        self, name: str, t: float, lots: list[str], eid: str | None = None, units: tuple[str, ...] = ()
    ) -> None:
        at = D0 + timedelta(seconds=t)
        self._add("OperationCompleted", t, eid, unit=self._ref(name), work_order="WO-1", operation="0010",
                  station_id="ST-1", operator_id="OP-1", started_at=at, finished_at=at,
                  creates_unit=not units, consumed_lots=[{"lot_id": lot, "quantity": 1.0} for lot in lots],
                  consumed_units=[self._ref(x) for x in units])  # fmt: skip

    def assemble(self, child: str, parent: str, t: float, eid: str | None = None) -> None:
        self._add("UnitAssembled", t, eid, unit=self._ref(child), parent=self._ref(parent), position="A1",
                  work_order=None, station_id=None, operator_id=None)  # fmt: skip

    def remove(
        self, child: str, parent: str, t: float, reason: str = "rework", eid: str | None = None
    ) -> None:
        self._add("UnitRemoved", t, eid, unit=self._ref(child), parent=self._ref(parent), position="A1",
                  reason=reason, work_order=None, station_id=None, operator_id=None)  # fmt: skip

    def consume(self, child: str, consumer: str, t: float, eid: str | None = None) -> None:
        """An operation on ``consumer`` that consumed the unit ``child`` (an install)."""
        self.produce(consumer, t, [], eid, units=(child,))


def land(
    store: Store,
    events: list[dict[str, Any]],
    seed: int = 0,
    dups: int = 0,
    batches: int = 1,
    genealogy: bool = True,
) -> None:
    """Land the events as the pipeline would: the sink's rows of a shuffled delivery with ``dups``
    re-sent events in ``batches`` batches, then (unless the processor lags behind entirely) the
    genealogy processor's change records."""
    rng = random.Random(seed)
    delivered = list(events) + [rng.choice(events) for _ in range(dups)]
    rng.shuffle(delivered)
    now = datetime.now(UTC)
    size = -(-len(delivered) // batches)
    for i in range(0, len(delivered), size):
        part = delivered[i : i + size]
        offset = next(_offsets) * 10_000
        recs = [SinkRecord(e["type"], e, "traceline.events", 0, offset + k, now) for k, e in enumerate(part)]
        store.write_batch(rows_for_batch(recs), token=f"events:{offset}")
    if not genealogy:
        return
    changes: list[dict[str, Any]] = []
    run_genealogy(delivered, shuffle_seed=seed, duplicate_rate=0.1 if seed else 0.0, changes=changes)
    store.write_batch(genealogy_rows(changes), token=f"gen:{next(_offsets)}")


D0_MS = round(D0.timestamp() * 1000)


def _ms(d: datetime | None) -> int | None:
    """Milliseconds since D0."""
    return None if d is None else round(d.timestamp() * 1000) - D0_MS


def holds(past: list[PastHolder]) -> list[tuple[Any, ...]]:
    """(X, B, held_from, held_until, child below X, removed unit, removed from, reason) per hold."""
    out = []
    for p in past:
        assert p.past and p.removed_at == p.held_until
        out.append((p.uii, p.affected_uii, _ms(p.held_from), _ms(p.held_until), p.child_uii, p.removed_uii,
                    p.removed_from_uii, p.removal_reason))  # fmt: skip
    return out


def oracle_holds(events: list[dict[str, Any]], lot: str) -> set[tuple[Any, ...]]:
    plant = oracle.Plant(events)
    bad = plant.bad_units(lot)
    return {
        (x, b, lo - D0_MS, hi - D0_MS, *rest)
        for (x, b), hs in oracle.past_exposure(events, bad).items()
        for lo, hi, *rest in hs
    }


S = 1000  # ms per second of the histories


class _Counting:
    """A store that counts the statements it runs."""

    def __init__(self, store: Store) -> None:
        self.store, self.calls = store, 0

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        self.calls += 1
        return self.store.query(sql, params)

    def query_arrow(self, sql: str, params: dict[str, Any] | None = None) -> Any:
        self.calls += 1
        return self.store.query_arrow(sql, params)


# ----------------------------------------------------------------------------- the cases


def test_a_system_the_lru_left_before_the_bad_part_came_is_not_exposed(store: Store) -> None:
    """LRU:1 was removed from SYS:1; only later was PCB:1 (made from lot L) fitted into LRU:1."""
    p = Plant()
    p.produce("PCB:1", 1, [p.lot()])
    p.assemble("LRU:1", "SYS:1", 10)
    p.remove("LRU:1", "SYS:1", 20)
    p.assemble("PCB:1", "LRU:1", 30)
    p.assemble("LRU:1", "SYS:2", 40)
    land(store, p.events)
    r = recall_impact(store, Trigger("lot", p.lot()))
    assert [(u.uii, u.root_uii) for u in r.units] == [(p.u("PCB:1"), p.u("SYS:2"))]
    assert r.past == [] == sorted(oracle_holds(p.events, p.lot()))


def test_every_level_that_held_the_bad_part_is_exposed(store: Store) -> None:
    """PCB:1 (lot L) left sub-assembly SA:1 while SA:1 sat in LRU:1 in SYS:1 (shipped)."""
    p = Plant()
    p.produce("PCB:1", 1, [p.lot()])
    p.assemble("PCB:1", "SA:1", 10)
    p.assemble("SA:1", "LRU:1", 20)
    p.assemble("LRU:1", "SYS:1", 30)
    p.remove("PCB:1", "SA:1", 40)
    p.assemble("PCB:1", "SA:2", 50)
    land(store, p.events, seed=7, dups=3, batches=2)
    counting = _Counting(store)
    r = recall_impact(counting, Trigger("lot", p.lot()))  # type: ignore[arg-type]
    # the lot's units, their facts, and one more read for the past parent and two links above it
    assert counting.calls == 3
    assert [u.uii for u in r.units] == [p.u("PCB:1")]
    pcb, sa = p.u("PCB:1"), p.u("SA:1")
    assert holds(r.past) == [
        (p.u("LRU:1"), pcb, 20 * S, 40 * S, sa, pcb, sa, "rework"),
        (sa, pcb, 10 * S, 40 * S, pcb, pcb, sa, "rework"),
        (p.u("SYS:1"), pcb, 30 * S, 40 * S, p.u("LRU:1"), pcb, sa, "rework"),
    ]
    assert set(holds(r.past)) == oracle_holds(p.events, p.lot())
    # X as it is now: SA:1 still sits in LRU:1 in SYS:1
    assert {(h.uii, h.root_uii, h.status) for h in r.past} == {
        (x, p.u("SYS:1"), "in_work") for x in (sa, p.u("LRU:1"), p.u("SYS:1"))
    }


# ----------------------------------------------------------------------------- property

LEVELS = ("SYS", "LRU", "SA", "PCB", "DIE")  # parents come from a lower index: no cycles, ever


@st.composite
def histories(draw: st.DrawFn) -> Plant:
    """A rework history at every level: units of 4-5 levels, the lowest two making some of them
    bad (lot L) or good; installs (UnitAssembled or an operation consuming the unit), removals of
    the real or of a wrong parent, re-installs elsewhere, removals before installs, all at times
    from a small range (ties broken by event id)."""
    p = Plant()
    n_levels = draw(st.integers(4, 5))
    levels = [[f"{LEVELS[lvl]}:{i}" for i in range(draw(st.integers(1, 3)))] for lvl in range(n_levels)]
    specs: list[tuple[str, int, str, str | None]] = []
    for lvl in (n_levels - 2, n_levels - 1):
        for u in levels[lvl]:
            lot = draw(st.sampled_from(["BAD", "BAD", "GOOD"]))
            specs.append(("produce", draw(st.integers(0, 20)), u, lot))
    for _ in range(draw(st.integers(1, 30))):
        lvl = draw(st.integers(1, n_levels - 1))
        child = draw(st.sampled_from(levels[lvl]))
        # mostly the level right above; sometimes higher up
        plvl = lvl - 1 if draw(st.integers(0, 3)) else draw(st.integers(0, lvl - 1))
        parent = draw(st.sampled_from(levels[plvl]))
        kind = draw(st.sampled_from(["assemble", "assemble", "assemble", "consume", "remove", "remove"]))
        specs.append((kind, draw(st.integers(0, 20)), child, parent))
    ids = draw(st.permutations(range(len(specs))))
    for i, (kind, t, unit, other) in enumerate(specs):
        eid = f"e{ids[i]:03d}"
        assert other is not None
        if kind == "produce":
            p.produce(unit, t, [p.lot(other)], eid)
        elif kind == "assemble":
            p.assemble(unit, other, t, eid)
        elif kind == "consume":
            p.consume(unit, other, t, eid)
        else:
            p.remove(unit, other, t, draw(st.sampled_from(["rework", "swap"])), eid)
    return p


@settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    plant=histories(),
    seed=st.integers(1, 2**32 - 1),
    dups=st.integers(0, 8),
    batches=st.integers(1, 3),
    lagging=st.sampled_from([False, False, False, True]),
)
def test_past_exposure_equals_the_oracle(
    store: Store, plant: Plant, seed: int, dups: int, batches: int, lagging: bool
) -> None:
    """The past exposure reads the link events themselves (landed with the events), so it is
    the same whether the genealogy processor caught up or has not landed a record yet."""
    land(store, plant.events, seed, dups, batches, genealogy=not lagging)
    lot = plant.lot("BAD")
    r = recall_impact(store, Trigger("lot", lot))
    assert {u.uii for u in r.units} == oracle.Plant(plant.events).hit_units(lot)
    got = holds(r.past)
    assert len(set(got)) == len(got), "a hold listed twice"
    assert set(got) == oracle_holds(plant.events, lot)
