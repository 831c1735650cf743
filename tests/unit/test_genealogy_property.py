"""Property: genealogy is independent of arrival order and duplicates, and equals the oracle.

Random plant histories (a forest of units over 4-5 levels; installs by UnitAssembled or by
OperationCompleted.consumed_units, removals of the real or of a wrong parent, re-installs
elsewhere, assemblies before production, timestamps from a small range so ties are broken
by event_id) are delivered shuffled, with duplicated events, through ``tests.support.run_genealogy``
with random key interleaving, random command redelivery and, sometimes, no per-key FIFO.
"""

from __future__ import annotations

import random
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams import genealogy as g
from tests import oracle
from tests.support import run_genealogy


def _ref(uii: str) -> dict[str, str]:
    pn, sn = uii.split(":")
    return {"part_number": pn, "serial_number": sn}


def _event(
    kind: str,
    eid: str,
    t: int,
    unit: str,
    other: str | None,
    lots: tuple[str, ...] = (),
    site: str = "plant-a",
) -> dict[str, Any]:
    head = {"event_id": eid, "event_time": t, "source": "gw", "site": site, "program": "PRG"}
    consumed_lots = [{"lot_id": lot, "quantity": 1.0} for lot in lots]
    if kind == "use":  # an operation on `unit` that consumes lots only (does not create it)
        return {
            "type": "OperationCompleted",
            **head,
            "unit": _ref(unit),
            "work_order": "WO",
            "operation": "0030",
            "station_id": "ST",
            "operator_id": "OP",
            "started_at": t,
            "finished_at": t,
            "creates_unit": False,
            "consumed_lots": consumed_lots,
            "consumed_units": [],
        }
    if kind == "produce":
        return {
            "type": "OperationCompleted",
            **head,
            "unit": _ref(unit),
            "work_order": "WO",
            "operation": "0010",
            "station_id": "ST",
            "operator_id": "OP",
            "started_at": t,
            "finished_at": t,
            "creates_unit": True,
            "consumed_lots": consumed_lots,
            "consumed_units": [],
        }
    if kind == "consume":  # `unit` is consumed by the operation on `other`
        assert other is not None
        return {
            "type": "OperationCompleted",
            **head,
            "unit": _ref(other),
            "work_order": "WO",
            "operation": "0020",
            "station_id": "ST",
            "operator_id": "OP",
            "started_at": t,
            "finished_at": t,
            "creates_unit": False,
            "consumed_lots": consumed_lots,
            "consumed_units": [_ref(unit)],
        }
    assert other is not None
    body = {
        "unit": _ref(unit),
        "parent": _ref(other),
        "position": None,
        "work_order": None,
        "station_id": None,
        "operator_id": None,
    }
    if kind == "assemble":
        return {"type": "UnitAssembled", **head, **body, "position": "A1"}
    return {"type": "UnitRemoved", **head, **body, "reason": "rework"}


@st.composite
def histories(draw: st.DrawFn) -> list[dict[str, Any]]:
    n_levels = draw(st.integers(4, 5))
    levels = [[f"P{lvl}:S{i}" for i in range(draw(st.integers(1, 3)))] for lvl in range(n_levels)]
    specs: list[tuple[str, int, str, str | None]] = []
    for units in levels:
        for u in units:
            if draw(st.booleans()):
                specs.append(("produce", draw(st.integers(0, 12)), u, None))
            if draw(st.integers(0, 3)) == 0:
                specs.append(("use", draw(st.integers(0, 12)), u, None))
    for _ in range(draw(st.integers(1, 28))):
        lvl = draw(st.integers(1, n_levels - 1))
        child = draw(st.sampled_from(levels[lvl]))
        # parents only from upper levels: the final graph is a forest (no cycles)
        plvl = draw(st.integers(0, lvl - 1))
        parent = draw(st.sampled_from(levels[plvl]))
        kind = draw(st.sampled_from(["assemble", "assemble", "consume", "remove", "remove"]))
        specs.append((kind, draw(st.integers(0, 12)), child, parent))
    ids = draw(st.permutations(range(len(specs))))

    def lots(kind: str) -> tuple[str, ...]:  # a "use" operation always consumes a lot
        return tuple(
            draw(st.lists(st.sampled_from(["L1", "L2", "L3", "L4"]), min_size=kind == "use", max_size=3))
        )

    sites = st.sampled_from(["plant-a", "plant-b"])
    return [
        _event(kind, f"e{ids[i]:03d}", t, unit, other, lots(kind), draw(sites))
        for i, (kind, t, unit, other) in enumerate(specs)
    ]


def _oracle_state(events: list[dict[str, Any]]) -> dict[str, tuple[Any, ...]]:
    o = oracle.genealogy(events)
    assert not o.cyclic
    return {u: (o.parent[u], o.root(u), o.path[u]) for u in o.units}


@settings(
    max_examples=500,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    events=histories(),
    seed=st.integers(0, 2**32 - 1),
    dup_count=st.integers(0, 10),
    duplicate_rate=st.sampled_from([0.0, 0.1, 0.3]),
    fifo=st.booleans(),
)
def test_any_order_any_duplicates_equals_oracle(
    events: list[dict[str, Any]], seed: int, dup_count: int, duplicate_rate: float, fifo: bool
) -> None:
    expected = _oracle_state(events)
    rng = random.Random(seed)
    delivered = list(events) + [rng.choice(events) for _ in range(dup_count)]
    rng.shuffle(delivered)
    changes: list[dict[str, Any]] = []
    nodes = run_genealogy(
        delivered, shuffle_seed=seed, duplicate_rate=duplicate_rate, fifo=fifo, changes=changes
    )
    got = {u: (n.parent, n.root, n.path) for u, n in nodes.items()}
    assert got == expected
    assert all(n.flag is None for n in nodes.values())
    # parents know exactly their current children
    for u, n in nodes.items():
        assert n.live_children() == sorted(c for c, m in nodes.items() if m.parent == u)
    # change records: seq strictly increasing per uii, last record = final view
    last: dict[str, dict[str, Any]] = {}
    for c in changes:
        prev = last.get(c["uii"])
        assert prev is None or c["seq"] > prev["seq"]
        last[c["uii"]] = c
    assert {u: (c["parent_uii"], c["root_uii"], tuple(c["path"])) for u, c in last.items()} == expected
    # lots: every unit's last record carries exactly its lots (smallest site each), so the
    # highest-seq lot_units row of every (lot, unit) is the unit's final view
    lots = oracle.genealogy(events).lots
    assert {u: n.lots for u, n in nodes.items() if n.lots} == lots
    assert {u: c.get("lots", {}) for u, c in last.items() if c.get("lots")} == lots
    best: dict[tuple[str, str], tuple[int, tuple[Any, ...]]] = {}
    for c in changes:
        for lot in c.get("lots", {}):
            k = (lot, c["uii"])
            if k not in best or c["seq"] > best[k][0]:
                best[k] = (c["seq"], (c["parent_uii"], c["root_uii"], tuple(c["path"])))
    assert {k: v[1] for k, v in best.items()} == {
        (lot, u): expected[u] for u, ls in lots.items() for lot in ls
    }
    # the table value survives serialisation
    for n in nodes.values():
        assert g.Node.from_bytes(n.to_bytes()) == n


@settings(max_examples=60, deadline=None, database=None)
@given(events=histories(), seeds=st.lists(st.integers(0, 2**32 - 1), min_size=3, max_size=3))
def test_same_events_different_orders_same_state(events: list[dict[str, Any]], seeds: list[int]) -> None:
    states = []
    for seed in seeds:
        evs = list(events)
        random.Random(seed).shuffle(evs)
        nodes = run_genealogy(evs, shuffle_seed=seed)
        states.append({u: (n.parent, n.root, n.path) for u, n in nodes.items()})
    assert states[0] == states[1] == states[2]
