"""Unit tests for streams.genealogy: each command, the event mapping, tricky histories."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from streams import genealogy as g
from streams.genealogy import Edge, Link, Node, Root, Touch, apply
from tests import oracle
from tests.support import run_genealogy

_ids = itertools.count()


def ref(uii: str) -> dict[str, str]:
    pn, sn = uii.split(":")
    return {"part_number": pn, "serial_number": sn}


def _header(t: int, eid: str | None) -> dict[str, Any]:
    return {
        "event_id": eid or f"ev-{next(_ids):06d}",
        "event_time": t,
        "source": "gw",
        "site": "plant-a",
        "program": "PRG",
    }


def assembled(child: str, parent: str, t: int, eid: str | None = None) -> dict[str, Any]:
    return {
        "type": "UnitAssembled",
        **_header(t, eid),
        "unit": ref(child),
        "parent": ref(parent),
        "position": "A1",
        "work_order": None,
        "station_id": None,
        "operator_id": None,
    }


def removed(child: str, parent: str, t: int, eid: str | None = None) -> dict[str, Any]:
    return {
        "type": "UnitRemoved",
        **_header(t, eid),
        "unit": ref(child),
        "parent": ref(parent),
        "position": None,
        "reason": "rework",
        "work_order": None,
        "station_id": None,
        "operator_id": None,
    }


def operation(
    unit: str,
    t: int,
    consumed: tuple[str, ...] | list[str] = (),
    creates: bool = True,
    eid: str | None = None,
) -> dict[str, Any]:
    return {
        "type": "OperationCompleted",
        **_header(t, eid),
        "unit": ref(unit),
        "work_order": "WO1",
        "operation": "0010",
        "station_id": "ST1",
        "operator_id": "OP1",
        "started_at": t,
        "finished_at": t,
        "creates_unit": creates,
        "consumed_lots": [],
        "consumed_units": [ref(c) for c in consumed],
    }


def state(nodes: dict[str, Node]) -> dict[str, tuple[str | None, str, tuple[str, ...]]]:
    return {u: (n.parent, n.root, n.path) for u, n in nodes.items()}


def oracle_state(events: list[dict[str, Any]]) -> dict[str, tuple[str | None, str, tuple[str, ...]]]:
    o = oracle.genealogy(events)
    assert not o.cyclic
    return {u: (o.parent[u], o.root(u), o.path[u]) for u in o.units}  # type: ignore[misc]


def check_all_orders(events: list[dict[str, Any]], seeds: int = 60) -> dict[str, Node]:
    """Run the events in many orders (with duplicates) and compare with the oracle."""
    expected = oracle_state(events)
    nodes = run_genealogy(events)
    assert state(nodes) == expected
    rng = random.Random(1234)
    for seed in range(seeds):
        evs = list(events) + [rng.choice(events) for _ in range(rng.randrange(len(events) + 1))]
        rng.shuffle(evs)
        changes: list[dict[str, Any]] = []
        got = run_genealogy(
            evs,
            shuffle_seed=seed,
            duplicate_rate=0.2 if seed % 2 else 0.0,
            fifo=seed % 3 != 0,
            changes=changes,
        )
        assert state(got) == expected, f"seed {seed}"
        check_changes(changes, got)
    return nodes


def check_changes(changes: list[dict[str, Any]], nodes: dict[str, Node]) -> None:
    """seq strictly increases per uii, and the last record equals the final node."""
    last: dict[str, dict[str, Any]] = {}
    for c in changes:
        prev = last.get(c["uii"])
        assert prev is None or c["seq"] > prev["seq"]
        assert c["root_uii"] == (c["path"][-1] if c["path"] else c["uii"])
        assert c["depth"] == len(c["path"]) and c["uii"] not in c["path"]
        if c["error"] is None:
            assert c["parent_uii"] == (c["path"][0] if c["path"] else None)
        else:  # cut by the guard: own root, but the record still names the parent
            assert c["path"] == [] and c["parent_uii"] is not None
        last[c["uii"]] = c
    assert set(last) == set(nodes)
    for u, n in nodes.items():
        c = last[u]
        assert (c["parent_uii"], c["root_uii"], tuple(c["path"]), c["seq"]) == (
            n.parent,
            n.root,
            n.path,
            n.seq,
        )


# --------------------------------------------------------------------------- commands


def test_touch_creates_node_and_emits_first_record() -> None:
    n, sends, changes = apply(None, "A:1", Touch("A:1"))
    assert (n.parent, n.root, n.path, n.seq) == (None, "A:1", (), 0)
    assert sends == []
    assert changes == [
        {
            "uii": "A:1",
            "parent_uii": None,
            "root_uii": "A:1",
            "path": [],
            "depth": 0,
            "seq": 0,
            "version_ms": None,
            "version_event_id": None,
            "error": None,
        }
    ]
    n2, sends, changes = apply(n, "A:1", Touch("A:1"))
    assert (sends, changes, n2.to_dict()) == ([], [], n.to_dict())


def test_apply_is_pure_and_checks_the_key() -> None:
    n, _, _ = apply(None, "C:1", Touch("C:1"))
    before = n.to_dict()
    apply(n, "C:1", Link("C:1", "P:1", (10, "e1"), True))
    assert n.to_dict() == before
    with pytest.raises(g.GenealogyInputError):
        apply(n, "C:1", Edge("P:1", "C:1", True, (10, "e1")))


def test_link_install_asks_the_new_parent_and_waits_for_its_answer() -> None:
    n, _, _ = apply(None, "C:1", Touch("C:1"))
    n, sends, changes = apply(n, "C:1", Link("C:1", "P:1", (10, "e1"), True))
    assert n.parent == "P:1" and n.parent_version == (10, "e1")
    assert sends == [("P:1", Edge("P:1", "C:1", True, (10, "e1")))]
    assert changes == []  # the view changes when P answers
    assert n.path == ()
    # older install of another parent loses; duplicate is a no-op
    for cmd in (Link("C:1", "Q:1", (5, "e0"), True), Link("C:1", "P:1", (10, "e1"), True)):
        n2, sends, changes = apply(n, "C:1", cmd)
        assert (n2.parent, sends, changes) == ("P:1", [], [])


def test_edge_records_child_and_answers_with_root() -> None:
    p, _, _ = apply(None, "P:1", Touch("P:1"))
    p, sends, changes = apply(p, "P:1", Edge("P:1", "C:1", True, (10, "e1")))
    assert sends == [("C:1", Root("C:1", "P:1", "P:1", (), 0))]
    assert changes == [] and p.live_children() == ["C:1"]
    # dead edge with a newer version wins; an older alive afterwards does not revive it
    p, sends, _ = apply(p, "P:1", Edge("P:1", "C:1", False, (20, "e2")))
    assert sends == [] and p.live_children() == []
    p, sends, _ = apply(p, "P:1", Edge("P:1", "C:1", True, (10, "e1")))
    assert sends == [] and p.live_children() == []
    # equal version: dead wins
    p, _, _ = apply(p, "P:1", Edge("P:1", "C:1", True, (20, "e2")))
    assert p.live_children() == []


def test_root_accepted_only_from_current_parent_and_newer_seq() -> None:
    c, _, _ = apply(None, "C:1", Touch("C:1"))
    c, _, _ = apply(c, "C:1", Edge("C:1", "K:1", True, (1, "k")))  # C has a live child K
    c, _, _ = apply(c, "C:1", Link("C:1", "P:1", (10, "e1"), True))
    c2, sends, changes = apply(c, "C:1", Root("C:1", "X:1", "X:1", (), 5))
    assert (c2.path, sends, changes) == ((), [], [])
    c, sends, changes = apply(c, "C:1", Root("C:1", "P:1", "R:1", ("R:1",), 3))
    assert c.path == ("P:1", "R:1") and c.seq == 1 and c.parent_seq == 3 and c.root == "R:1"
    assert sends == [("K:1", Root("K:1", "C:1", "R:1", ("P:1", "R:1"), 1))]
    assert changes[0]["path"] == ["P:1", "R:1"] and changes[0]["version_ms"] == 10
    c2, sends, changes = apply(c, "C:1", Root("C:1", "P:1", "Z:1", ("Z:1",), 2))  # stale
    assert (c2.path, sends, changes) == (c.path, [], [])


def test_removal_detaches_and_tells_the_old_parent() -> None:
    c, _, _ = apply(None, "C:1", Link("C:1", "P:1", (10, "e1"), True))
    c, _, _ = apply(c, "C:1", Root("C:1", "P:1", "P:1", ("P:1",), 0))
    assert c.root == "P:1"
    # removal from another parent: ignored
    c2, sends, changes = apply(c, "C:1", Link("C:1", "Q:1", (20, "e2"), False))
    assert (c2.parent, c2.root, sends, changes) == ("P:1", "P:1", [], [])
    # older removal from P: ignored
    c2, sends, _ = apply(c, "C:1", Link("C:1", "P:1", (5, "e0"), False))
    assert (c2.parent, sends) == ("P:1", [])
    c, sends, changes = apply(c, "C:1", Link("C:1", "P:1", (20, "e3"), False))
    assert c.parent is None and c.path == () and c.parent_version == (20, "e3")
    assert sends == [("P:1", Edge("P:1", "C:1", False, (20, "e3")))]
    assert changes[-1]["parent_uii"] is None and changes[-1]["version_event_id"] == "e3"


def test_removal_before_install() -> None:
    c, _, _ = apply(None, "C:1", Link("C:1", "P:1", (20, "rm"), False))
    assert c.parent is None
    c, sends, _ = apply(c, "C:1", Link("C:1", "P:1", (10, "in"), True))  # older install
    assert c.parent is None and sends == []
    c, sends, _ = apply(c, "C:1", Link("C:1", "P:1", (30, "in2"), True))  # newer re-install
    assert c.parent == "P:1" and sends == [("P:1", Edge("P:1", "C:1", True, (30, "in2")))]


def test_same_version_removal_beats_install() -> None:
    c, _, _ = apply(None, "C:1", Link("C:1", "P:1", (10, "same"), True))
    c, _, _ = apply(c, "C:1", Link("C:1", "P:1", (10, "same"), False))
    assert c.parent is None


def test_cycle_guard_in_root() -> None:
    c, _, _ = apply(None, "A:1", Link("A:1", "B:1", (10, "e1"), True))
    c, _, changes = apply(c, "A:1", Root("A:1", "B:1", "A:1", ("A:1",), 4))
    assert c.path == () and c.root == "A:1" and c.flag == "cycle" and changes[-1]["error"] == "cycle"
    assert changes[-1]["parent_uii"] == "B:1"


def test_depth_guard_in_root() -> None:
    deep = tuple(f"X:{i}" for i in range(g.MAX_DEPTH + 1))
    c, _, _ = apply(None, "C:1", Link("C:1", deep[0], (10, "e1"), True))
    c, _, changes = apply(c, "C:1", Root("C:1", deep[0], deep[-1], deep[1:], 0))
    assert c.path == () and c.flag == "depth" and changes[-1]["error"] == "depth"
    c, _, _ = apply(None, "C:1", Link("C:1", deep[0], (10, "e1"), True))
    c, _, _ = apply(c, "C:1", Root("C:1", deep[0], deep[-2], deep[1:-1], 0))
    assert c.depth == g.MAX_DEPTH and c.flag is None


def test_commands_round_trip_through_dicts() -> None:
    cmds: list[g.Command] = [
        Link("C:1", "P:1", (10, "e1"), False),
        Edge("P:1", "C:1", True, (10, "e1")),
        Root("C:1", "P:1", "R:1", ("P:1", "R:1"), 7),
        Touch("C:1"),
    ]
    for cmd in cmds:
        assert g.command_from_dict(cmd.to_dict()) == cmd
    with pytest.raises(g.GenealogyInputError):
        g.command_from_dict({"op": "nope"})


def test_node_serialisation_round_trip_and_is_compact() -> None:
    events = [
        operation("S:1", 1, ["L:1", "L:2"]),
        assembled("L:1", "S:1", 5),
        removed("L:2", "S:1", 9),
        assembled("S:1", "T:1", 3),
    ]
    nodes = run_genealogy(events)
    for n in nodes.values():
        back = Node.from_bytes(n.to_bytes())
        assert back == n and back.to_dict() == n.to_dict()
    assert len(Node("A:1").to_bytes()) < 40


# --------------------------------------------------------------------------- events


def test_commands_for_event_mapping() -> None:
    ev = assembled("C:1", "P:1", 10, "e1")
    assert g.commands_for_event(ev) == [("C:1", Link("C:1", "P:1", (10, "e1"), True)), ("P:1", Touch("P:1"))]
    ev = removed("C:1", "P:1", 10, "e2")
    assert g.commands_for_event(ev)[0] == ("C:1", Link("C:1", "P:1", (10, "e2"), False))
    ev = operation("P:1", 10, ["C:1", "C:2", "C:1"], eid="e3")
    assert g.commands_for_event(ev) == [
        ("P:1", Touch("P:1")),
        ("C:1", Link("C:1", "P:1", (10, "e3"), True)),
        ("C:2", Link("C:2", "P:1", (10, "e3"), True)),
    ]
    assert g.commands_for_event({"type": "UnitTested", "event_id": "x", "event_time": 1}) == []


def test_commands_for_event_infers_type_and_accepts_datetimes() -> None:
    t = datetime(2026, 11, 26, 10, 15, 0, 123000, tzinfo=UTC)
    ms = 1795688100123
    for name, ev in (
        ("UnitAssembled", assembled("C:1", "P:1", 0, "a")),
        ("UnitRemoved", removed("C:1", "P:1", 0, "r")),
        ("OperationCompleted", operation("P:1", 0, ["C:1"], eid="o")),
    ):
        avro_like = {k: v for k, v in ev.items() if k != "type"}
        avro_like["event_time"] = t
        cmds = g.commands_for_event(avro_like)
        assert cmds == g.commands_for_event({**ev, "event_time": ms}), name
        assert cmds == g.commands_for_event(avro_like, name)
    other_tz = t.astimezone(timezone(timedelta(hours=2)))
    assert g.event_time_ms(other_tz) == ms == g.event_time_ms(t)
    with pytest.raises(g.GenealogyInputError):
        g.event_time_ms(datetime(2026, 1, 1))  # noqa: DTZ001 (naive on purpose)
    with pytest.raises(g.GenealogyInputError):
        g.commands_for_event({"type": "UnitAssembled", "event_id": "x", "event_time": 1})


def test_fastavro_decoded_events() -> None:
    fastavro = pytest.importorskip("fastavro")
    import io
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "schemas" / "avro"
    named: dict[str, Any] = {}
    schema = fastavro.parse_schema(json.loads((root / "UnitAssembled.avsc").read_text()), named)
    ev = {k: v for k, v in assembled("C:1", "P:1", 1_700_000_000_123, "e1").items() if k != "type"}
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, ev)
    buf.seek(0)
    decoded = fastavro.schemaless_reader(buf, schema)
    assert isinstance(decoded["event_time"], datetime)
    assert g.commands_for_event(decoded, "UnitAssembled") == [
        ("C:1", Link("C:1", "P:1", (1_700_000_000_123, "e1"), True)),
        ("P:1", Touch("P:1")),
    ]


# --------------------------------------------------------------------------- histories


def test_oracle_depth_matches_module() -> None:
    assert oracle.MAX_DEPTH == g.MAX_DEPTH


def test_install_then_remove() -> None:
    nodes = check_all_orders(
        [operation("P:1", 1), operation("C:1", 1), assembled("C:1", "P:1", 10), removed("C:1", "P:1", 20)]
    )
    assert nodes["C:1"].parent is None and nodes["C:1"].root == "C:1"
    assert nodes["P:1"].live_children() == []


def test_remove_arrives_before_install() -> None:
    events = [removed("C:1", "P:1", 20), assembled("C:1", "P:1", 10)]
    nodes = run_genealogy(events)  # removal first in a global FIFO order
    assert nodes["C:1"].parent is None
    check_all_orders(events)
    # ...but a newer re-install wins
    nodes = check_all_orders(events + [assembled("C:1", "P:1", 30)])
    assert nodes["C:1"].root == "P:1"


def test_reinstall_elsewhere_beats_an_older_removal_and_ignores_a_foreign_one() -> None:
    events = [
        assembled("C:1", "P:1", 10),
        assembled("C:1", "Q:1", 20),
        removed("C:1", "P:1", 15),
        removed("C:1", "P:1", 25),
        assembled("Q:1", "S:1", 5),
    ]
    nodes = check_all_orders(events)
    assert nodes["C:1"].path == ("Q:1", "S:1")
    assert oracle.genealogy(events).past_parents["C:1"] == {"P:1", "Q:1"}


def test_time_ties_are_broken_by_event_id() -> None:
    events = [assembled("C:1", "P:1", 10, "b"), assembled("C:1", "Q:1", 10, "a")]
    assert check_all_orders(events)["C:1"].parent == "P:1"


def test_duplicates_are_harmless() -> None:
    ev = [assembled("C:1", "P:1", 10), assembled("P:1", "S:1", 11), removed("C:1", "P:1", 12)]
    nodes = check_all_orders(ev * 3)
    assert nodes["C:1"].root == "C:1" and nodes["P:1"].root == "S:1"


def test_assembly_before_child_was_produced() -> None:
    events = [assembled("C:1", "P:1", 10), operation("C:1", 1, creates=True), operation("P:1", 12, ["D:1"])]
    nodes = check_all_orders(events)
    assert nodes["C:1"].root == "P:1" and nodes["D:1"].path == ("P:1",)


@pytest.mark.parametrize("top_down", [True, False])
def test_deep_chain_of_five_levels(top_down: bool) -> None:
    units = [f"L{i}:1" for i in range(5)]  # L0 is the system
    events = [assembled(units[i + 1], units[i], 10 + i) for i in range(4)]
    if not top_down:
        events.reverse()
    nodes = run_genealogy(events)
    assert nodes["L4:1"].path == ("L3:1", "L2:1", "L1:1", "L0:1")
    assert all(nodes[u].root == "L0:1" for u in units)
    check_all_orders(events)


def test_move_of_a_subtree_changes_roots_of_all_descendants() -> None:
    events = [
        assembled("B:1", "A:1", 1),
        assembled("C:1", "B:1", 2),
        assembled("D:1", "C:1", 3),
        assembled("E:1", "C:1", 3),
        assembled("A:1", "SYS:1", 4),
    ]
    changes: list[dict[str, Any]] = []
    nodes = run_genealogy(events, changes=changes)
    assert {nodes[u].root for u in ("B:1", "C:1", "D:1", "E:1")} == {"SYS:1"}
    # rework: B goes out of A and into another system
    more = [removed("B:1", "A:1", 10), assembled("B:1", "SYS:2", 11)]
    nodes = check_all_orders(events + more)
    assert nodes["D:1"].path == ("C:1", "B:1", "SYS:2")
    assert nodes["A:1"].root == "SYS:1" and nodes["A:1"].live_children() == []
    assert nodes["SYS:2"].live_children() == ["B:1"]


def test_depth_cap_matches_oracle() -> None:
    units = [f"D{i}:1" for i in range(g.MAX_DEPTH + 6)]
    events = [assembled(units[i + 1], units[i], 10) for i in range(len(units) - 1)]
    nodes = check_all_orders(events, seeds=4)
    cut = units[g.MAX_DEPTH + 1]
    assert nodes[cut].flag == "depth" and nodes[cut].path == ()
    assert nodes[units[-1]].root == cut
    assert nodes[units[g.MAX_DEPTH]].depth == g.MAX_DEPTH


@pytest.mark.parametrize("seed", range(40))
def test_cycle_is_guarded_and_terminates(seed: int) -> None:
    events = [
        assembled("A:1", "B:1", 10),
        assembled("B:1", "A:1", 11),
        assembled("K:1", "A:1", 12),
        assembled("X:1", "Y:1", 1),
        assembled("Y:1", "Z:1", 2),
        assembled("Z:1", "X:1", 3),
    ]
    random.Random(seed).shuffle(events)
    changes: list[dict[str, Any]] = []
    nodes = run_genealogy(events, shuffle_seed=seed, duplicate_rate=0.1, changes=changes)
    for ring in (("A:1", "B:1"), ("X:1", "Y:1", "Z:1")):
        flagged = [u for u in ring if nodes[u].flag == "cycle"]
        assert flagged, ring
        for u in ring:
            n = nodes[u]
            assert n.parent in ring
            # a node not cut hangs under its parent (the rest of its path may be stale)
            if n.flag is None:
                assert n.path[0] == n.parent and u not in n.path and len(set(n.path)) == len(n.path)
    assert nodes["K:1"].path[0] == "A:1" and nodes["K:1"].root in ("A:1", "B:1")
    assert any(c["error"] == "cycle" for c in changes)
    o = oracle.genealogy(events)
    assert o.cyclic == {"A:1", "B:1", "K:1", "X:1", "Y:1", "Z:1"}


def test_breaking_a_cycle_recovers_the_exact_state() -> None:
    events = [
        assembled("A:1", "B:1", 10),
        assembled("B:1", "A:1", 11),
        assembled("K:1", "A:1", 12),
        removed("B:1", "A:1", 20),
        assembled("B:1", "S:1", 21),
    ]
    check_all_orders(events)


# --------------------------------------------------------------------------- lots


def test_lots_command_maps_from_operations_and_round_trips() -> None:
    ev = operation("P:1", 10, ["C:1"], eid="e9")
    ev["consumed_lots"] = [{"lot_id": "L2", "quantity": 1.0}, {"lot_id": "L1", "quantity": 2.0}]
    cmds = g.commands_for_event(ev)
    assert cmds[0] == ("P:1", g.Lots("P:1", (("L1", "plant-a"), ("L2", "plant-a"))))
    assert cmds[1] == ("C:1", Link("C:1", "P:1", (10, "e9"), True))
    assert g.command_from_dict(cmds[0][1].to_dict()) == cmds[0][1]
    # an operation that neither creates the unit nor consumes anything still maps to nothing;
    # one that only consumes lots makes the node (Lots creates it)
    later = operation("P:1", 20, creates=False)
    assert g.commands_for_event(later) == []
    later["consumed_lots"] = [{"lot_id": "L3", "quantity": 1.0}]
    assert g.commands_for_event(later) == [("P:1", g.Lots("P:1", (("L3", "plant-a"),)))]


def test_lots_grow_only_smallest_site_and_records_carry_them() -> None:
    n, sends, changes = apply(None, "U:1", g.Lots("U:1", (("L1", "site-b"),)))
    assert n.lots == {"L1": "site-b"} and sends == []
    assert [(c["seq"], c["lots"]) for c in changes] == [(0, {"L1": "site-b"})]  # in the first record
    n, sends, changes = apply(n, "U:1", g.Lots("U:1", (("L1", "site-b"),)))
    assert (sends, changes) == ([], [])  # a duplicate changes nothing
    n, sends, changes = apply(n, "U:1", g.Lots("U:1", (("L1", "site-c"), ("L2", "site-c"))))
    assert n.lots == {"L1": "site-b", "L2": "site-c"} and sends == []
    assert [(c["seq"], c["lots"]) for c in changes] == [(1, {"L1": "site-b", "L2": "site-c"})]
    n, _, changes = apply(n, "U:1", g.Lots("U:1", (("L2", "site-a"),)))  # a smaller site wins
    assert [(c["seq"], c["lots"]) for c in changes] == [(2, {"L1": "site-b", "L2": "site-a"})]
    assert Node.from_bytes(n.to_bytes()) == n
    # a new lot does not change the view: nothing is forwarded to the children
    p, _, _ = apply(None, "P:1", Touch("P:1"))
    p, sends, _ = apply(p, "P:1", Edge("P:1", "C:1", True, (1, "e")))
    assert [k for k, _ in sends] == ["C:1"]
    p, sends, changes = apply(p, "P:1", g.Lots("P:1", (("L9", "s"),)))
    assert sends == [] and changes[0]["path"] == [] and changes[0]["seq"] == p.seq == 1
    # and the unit's later view changes keep carrying its lots
    c, _, _ = apply(None, "C:1", g.Lots("C:1", (("L7", "s"),)))
    c, _, _ = apply(c, "C:1", Link("C:1", "P:1", (1, "e"), True))
    c, _, changes = apply(c, "C:1", Root("C:1", "P:1", "P:1", (), p.seq))
    assert [(ch["root_uii"], ch["lots"]) for ch in changes] == [("P:1", {"L7": "s"})]
    assert g.resend(c)[1][0]["lots"] == {"L7": "s"}


def test_a_command_record_is_applied_encoded_and_routed_in_one_call() -> None:
    """``streams.app.apply_record``: what the faust writer does with one record, minus Kafka."""
    from streams.app import apply_record
    from streams.intake import command_partition, decode_command_batch, encode_command_batch

    parts = 4
    child, parent = "PCB:1", "MOD:1"
    link = Link(child, parent, (1_000, "e1"), True)
    store: dict[str, Node] = {}
    value = encode_command_batch([[child, link.to_dict()]])
    own = command_partition(child, parts)
    n, nodes, records, out = apply_record(store.get, value, own, 7, parts)
    assert n == 1
    [(key, raw)] = nodes
    node = Node.from_bytes(raw)
    assert key == child.encode() and node.parent == parent and node.offset == 7
    # the Edge for the parent goes to the parent's partition
    [(p, rec, k)] = records
    assert p == command_partition(parent, parts) and k == 1
    assert [(key, type(c).__name__) for key, c in decode_command_batch(rec)] == [(parent, "Edge")]
    assert [c["uii"] for c in out] == [child]
    with pytest.raises(ValueError, match="not its own"):
        apply_record(store.get, value, (own + 1) % parts, 8, parts)
