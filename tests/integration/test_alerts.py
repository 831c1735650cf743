"""The alert engine on the real engines: ClickHouse (chdb) context reads, and the Kafka wiring.

* store tier (no broker): :class:`queries.alerts.AlertEvaluator` over events landed with the
  sink's own row builder; a property test that the impact an NC alert carries equals the
  independent oracle's recall (``tests/oracle.py``);
* Kafka tier: a real broker, the sink and the engine in threads; alerts reach the alerts topic
  and the alerts table; a restarted engine that re-reads every event raises nothing again.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from queries.alerts import AlertEvaluator, list_alerts, load_state
from schemas.alert import Alert, decode_alert
from schemas.errors import InvalidInputError
from schemas.serde import AvroSerde
from schemas.topics import TopicNames
from sinks.rows import SinkRecord, alert_rows, genealogy_rows, rows_for_batch
from sinks.store import Store
from streams.alert_engine import AlertEngine, sink_positions
from streams.alerts import AlertRules, window_start
from tests import oracle

pytestmark = pytest.mark.integration

T0 = datetime(2026, 6, 1, 8, tzinfo=UTC)
_ids = itertools.count(1)
_offsets = itertools.count(1)


def _h(t: datetime) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "event_time": t,
        "source": "test",
        "site": "plant-a",
        "program": "P1",
    }


def _u(uii: str) -> dict[str, str]:
    pn, sn = uii.split(":")
    return {"part_number": pn, "serial_number": sn}


def received(lot: str, t: datetime) -> tuple[str, dict]:
    return "MaterialReceived", {
        **_h(t),
        "lot_id": lot,
        "part_number": "RES",
        "supplier_id": "SUP",
        "supplier_lot": f"S-{lot}",
        "quantity": 100.0,
        "unit_of_measure": "EA",
        "coc_reference": None,
        "inspection_result": "ACCEPTED",
    }


def transformed(lot: str, inputs: list[str], t: datetime) -> tuple[str, dict]:
    return "LotTransformed", {
        **_h(t),
        "lot_id": lot,
        "part_number": "RES",
        "transformation": "MERGE",
        "inputs": [{"lot_id": i, "quantity": 1.0} for i in inputs],
        "quantity": 2.0,
        "unit_of_measure": "EA",
        "work_order": None,
        "station_id": "KIT-1",
    }


def operation(uii: str, lots: list[str], t: datetime, units: list[str] | None = None) -> tuple[str, dict]:
    return "OperationCompleted", {
        **_h(t),
        "unit": _u(uii),
        "work_order": "WO-1",
        "operation": "0010 build",
        "station_id": "SMT-1",
        "operator_id": "OP-1",
        "started_at": t - timedelta(minutes=5),
        "finished_at": t,
        "creates_unit": True,
        "consumed_lots": [{"lot_id": lot, "quantity": 1.0} for lot in lots],
        "consumed_units": [_u(x) for x in units or []],
    }


def status(lot: str, st_: str, t: datetime) -> tuple[str, dict]:
    return "LotStatusChanged", {**_h(t), "lot_id": lot, "status": st_, "reason": "supplier notice"}


def nc(ncr: str, kind: str, target: str, t: datetime, disposition: str = "PENDING") -> tuple[str, dict]:
    return "NonconformanceRaised", {
        **_h(t),
        "ncr_id": ncr,
        "target_kind": kind,
        "target_id": target,
        "window_start": None,
        "window_end": None,
        "severity": "MAJOR",
        "disposition": disposition,
        "description": "bad lot",
    }


def unit_tested(
    uii: str, verdict: str, t: datetime, due: datetime | None = None, bench: str = "B-1"
) -> tuple[str, dict]:
    return "UnitTested", {
        **_h(t),
        "unit": _u(uii),
        "bench_id": bench,
        "procedure_id": "TP",
        "procedure_version": "A",
        "calibration_id": f"CAL-{bench}",
        "calibration_due": due or t + timedelta(days=90),
        "operator_id": None,
        "started_at": t - timedelta(minutes=1),
        "finished_at": t,
        "measurements": [
            {
                "name": "VCC",
                "value": 3.9 if verdict == "FAIL" else 3.3,
                "unit": "V",
                "low_limit": 3.2,
                "high_limit": 3.4,
                "passed": verdict == "PASS",
            }
        ],
        "verdict": verdict,
    }


def assembled(child: str, parent: str, t: datetime) -> tuple[str, dict]:
    return "UnitAssembled", {
        **_h(t),
        "unit": _u(child),
        "parent": _u(parent),
        "position": "A1",
        "work_order": None,
        "station_id": None,
        "operator_id": None,
    }


def shipped(uii: str, customer: str, t: datetime, shipment: str = "SHP-1") -> tuple[str, dict]:
    return "UnitShipped", {
        **_h(t),
        "unit": _u(uii),
        "shipment_id": shipment,
        "customer_id": customer,
        "contract": "C-1",
        "destination_site": f"{customer}-BASE",
        "end_system": None,
    }


def land(store: Store, events: list[tuple[str, dict]]) -> None:
    now = datetime.now(UTC)
    recs = [SinkRecord(t, r, "traceline.events", 0, next(_offsets), now) for t, r in events]
    store.write_batch(rows_for_batch(recs), token=f"ev:{uuid.uuid4().hex}")


def land_genealogy(store: Store, events: list[tuple[str, dict]]) -> None:
    """Genealogy rows as the stream processor would end up with (from the oracle's walk)."""
    g = oracle.genealogy([{"type": t, **r} for t, r in events])
    changes = [
        {
            "uii": u,
            "parent_uii": g.parent[u],
            "root_uii": g.root(u),
            "path": list(g.path[u] or ()),
            "seq": 1,
            "version_ms": 0,
            "version_event_id": "g",
        }
        for u in sorted(g.units)
        if g.parent[u] is not None
    ]
    if changes:
        store.write_batch(genealogy_rows(changes), token=f"gen:{uuid.uuid4().hex}")


@pytest.fixture(scope="module")
def dsn(tmp_path_factory: pytest.TempPathFactory) -> str:
    # one embedded engine per process and path: every test here shares it, by database
    return f"chdb://{tmp_path_factory.mktemp('alerts') / 'ch'}"


@pytest.fixture(scope="module")
def store(dsn: str) -> Iterator[Store]:
    s = Store.open(dsn, "traceline")
    yield s
    s.close()


def _evaluator(store: Store, **rules: Any) -> AlertEvaluator:
    ev = AlertEvaluator(store, AlertRules(nc_refresh_seconds=0, **rules))
    ev.reload()
    return ev


def _run(ev: AlertEvaluator, store: Store, events: list[tuple[str, dict]]) -> list[Alert]:
    """Land each event, then evaluate it (what the engine does after the sink's watermark)."""
    out: list[Alert] = []
    for t, r in events:
        land(store, [(t, r)])
        out += ev.evaluate(t, r)
    return out


def _p(tag: str) -> str:
    return f"{tag}{next(_ids)}"


# ----------------------------------------------------------------------------- store tier


def test_late_hold_alerts_for_earlier_consumption_and_restart_does_not_repeat(store: Store) -> None:
    lot, u1, u2 = _p("LH"), f"PCB:{_p('lh')}", f"PCB:{_p('lh')}"
    ev = _evaluator(store)
    events = [
        received(lot, T0),
        operation(u1, [lot], T0 + timedelta(hours=1)),
        # the hold (floor time 2 h) arrives before a consumption made at 3 h, i.e. late for u1
        status(lot, "HOLD", T0 + timedelta(hours=2)),
        operation(u2, [lot], T0 + timedelta(hours=3)),
    ]
    alerts = _run(ev, store, events)
    assert [a.rule for a in alerts] == ["LOT_HELD_AFTER_USE", "HELD_LOT_USED"]
    late, used = alerts
    assert late.units == [u1] and late.severity == "WARNING"
    assert used.units == [u2] and used.severity == "CRITICAL"
    assert [(x["uii"], x["operator_id"]) for x in json.loads(used.details["uses"])] == [(u2, "OP-1")]
    # a second unit uses the held lot: the same alert (lot and hold), one more unit
    u3 = f"PCB:{_p('lh')}"
    again_used = _run(ev, store, [operation(u3, [lot], T0 + timedelta(hours=4))])
    assert [(a.alert_id, a.version, a.units) for a in again_used] == [(used.alert_id, 2, sorted([u2, u3]))]
    alerts += again_used
    # a consumption from *before* the hold landing late: the late-hold alert is updated
    early = operation(f"PCB:{_p('lh')}", [lot], T0 + timedelta(minutes=30))
    upd = _run(ev, store, [early])
    # (now every unit that used the lot: u1, u2, u3, the early one; u2 and u3 used it while held)
    assert [(a.rule, a.version, a.unit_count, a.severity) for a in upd] == [
        ("LOT_HELD_AFTER_USE", 2, 4, "CRITICAL")
    ]
    assert upd[0].details["used_while_held_count"] == "2"
    # duplicates of every trigger: nothing
    assert _run(ev, store, [*events, early]) == []
    # restart: the state comes back from the store (alerts landed from the topic)
    now = datetime.now(UTC)
    store.write_batch(alert_rows([(a, 0, i, now) for i, a in enumerate([*alerts, *upd])]), token=_p("al"))
    again = _evaluator(store)
    assert again.state.held(lot) is not None
    assert [a for t, r in [*events, early] for a in again.evaluate(t, r)] == []


def test_nc_alert_and_shipping_gate(store: Store) -> None:
    lot, die, sys_ = _p("NL"), f"DIE:{_p('n')}", f"SYS:{_p('n')}"
    ev = _evaluator(store)
    build = [
        received(lot, T0),
        operation(die, [lot], T0 + timedelta(hours=1)),
        assembled(die, sys_, T0 + timedelta(hours=2)),
    ]
    assert _run(ev, store, build) == []
    land_genealogy(store, build)
    ncr = _p("NCR-")
    alerts = _run(ev, store, [nc(ncr, "LOT", lot, T0 + timedelta(hours=3))])
    assert [(a.alert_id, a.unit_count, a.by_status) for a in alerts] == [
        (f"NC_RAISED:{ncr}", 1, {"in_work": 1})
    ]
    assert alerts[0].reference == f"/recall?kind=lot&id={lot}"
    gate = _run(ev, store, [shipped(sys_, "CUST-X", T0 + timedelta(hours=4))])
    assert [(a.alert_id, a.subject_id, a.units) for a in gate] == [(f"SHIPPING_GATE:NC:{ncr}", lot, [sys_])]
    # near miss: a unit without the lot ships after the NC is closed (USE_AS_IS) -> nothing
    other = f"SYS:{_p('n')}"
    _run(ev, store, [operation(other, [_p("CLEAN")], T0 + timedelta(hours=5))])
    assert _run(ev, store, [shipped(other, "CUST-X", T0 + timedelta(hours=6), "SHP-2")]) == []


class _Counting:
    """A store that counts the statements the evaluator runs."""

    def __init__(self, store: Store) -> None:
        self.store, self.calls = store, 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.store, name)
        if name.startswith("query"):
            self.calls += 1
        return attr


def _per_event_and_batched(
    store: Store, events: list[tuple[str, dict]]
) -> tuple[list[Alert], list[Alert], tuple[_Counting, _Counting]]:
    """The alerts of ``events`` evaluated one by one and as one batch, by two fresh evaluators
    (same clock), and the statements each ran."""
    now = datetime(2026, 1, 1, tzinfo=UTC)
    reads = (_Counting(store), _Counting(store))
    one, batched = (AlertEvaluator(c, AlertRules(nc_refresh_seconds=0), clock=lambda: now) for c in reads)  # type: ignore[arg-type]
    per_event = [a for t, r in events for a in one.evaluate(t, r)]
    return per_event, batched.evaluate_batch(events), reads


def test_batched_shipping_gate_equals_the_per_event_gate(store: Store) -> None:
    """``evaluate_batch`` traces every shipment of the batch with the statements of one: the
    gate alerts equal those of per-event evaluation, also when the hold or the NC that gates a
    shipment comes in the same batch, after a shipment it must not gate."""
    held, bad, clean = _p("GH"), _p("GN"), _p("GC")
    systems = [f"SYS:{_p('g')}" for _ in range(5)]
    boards = [f"PCB:{_p('g')}" for _ in systems]
    lots = [held, bad, clean, clean, held]  # the board lot of each system
    build = [received(x, T0) for x in (held, bad, clean)]
    for i, (s, b, lot) in enumerate(zip(systems, boards, lots, strict=True)):
        build += [
            operation(b, [lot], T0 + timedelta(hours=1, minutes=i)),
            assembled(b, s, T0 + timedelta(hours=2)),
        ]
    land(store, build)
    land_genealogy(store, build)
    batch = [
        shipped(systems[0], "CUST-A", T0 + timedelta(hours=3), "SHP-G0"),  # before the hold: not gated
        status(held, "HOLD", T0 + timedelta(hours=4)),
        nc(_p("NCR-G"), "LOT", bad, T0 + timedelta(hours=4)),
        *(shipped(s, "CUST-A", T0 + timedelta(hours=5), f"SHP-G{i}") for i, s in enumerate(systems[1:], 1)),
        shipped(systems[4], "CUST-A", T0 + timedelta(hours=5), "SHP-G4"),  # a re-sent event
    ]
    land(store, batch)
    per_event, in_batch, reads = _per_event_and_batched(store, batch)
    # the four gated shipments' traces cost the statements of one
    assert reads[1].calls < reads[0].calls / 2
    assert [(a.alert_id, a.version, a.details) for a in in_batch] == [
        (a.alert_id, a.version, a.details) for a in per_event
    ]
    gates = {a.alert_id: a.units for a in per_event if a.rule == "SHIPPING_GATE"}
    # the NC'd one and the held lot's one (one alert per cause), not the clean ones
    assert sorted(gates.values()) == sorted([[systems[1]], [systems[4]]])
    assert sorted(k.split(":")[1] for k in gates) == ["LOT", "NC"]


def test_batched_impacts_equal_the_per_event_impacts(store: Store) -> None:
    """``evaluate_batch`` computes the recall impacts of a batch's NCs and holds together (one
    facts read for all their units): the alerts equal per-event evaluation."""
    lots = [_p("IL") for _ in range(3)]
    boards = [f"PCB:{_p('i')}" for _ in range(6)]
    systems = [f"SYS:{_p('i')}" for _ in range(3)]
    build = [received(x, T0) for x in lots]
    for i, b in enumerate(boards):
        build += [operation(b, [lots[i % 3]], T0 + timedelta(hours=1, minutes=i))]
        build += [assembled(b, systems[i % 3], T0 + timedelta(hours=2))]
    land(store, build)
    land_genealogy(store, build)
    batch = [
        nc(_p("NCR-I"), "LOT", lots[0], T0 + timedelta(hours=3)),
        nc(_p("NCR-I"), "SERIAL", boards[1], T0 + timedelta(hours=3)),
        nc(_p("NCR-I"), "SERIAL", systems[2], T0 + timedelta(hours=3)),
        nc(_p("NCR-I"), "LOT", lots[1], T0 + timedelta(hours=3), disposition="USE_AS_IS"),  # no impact
        status(lots[2], "HOLD", T0 + timedelta(hours=3)),  # after its use: LOT_HELD_AFTER_USE
    ]
    batch.append(batch[0])  # a re-sent event
    land(store, batch)
    per_event, in_batch, reads = _per_event_and_batched(store, batch)
    key = [(a.alert_id, a.version, a.units, a.by_status, a.details) for a in per_event]
    assert key == [(a.alert_id, a.version, a.units, a.by_status, a.details) for a in in_batch]
    assert [a.rule for a in per_event] == ["NC_RAISED", "NC_RAISED", "NC_RAISED", "LOT_HELD_AFTER_USE"]
    assert per_event[0].units == sorted(boards[0::3]) and per_event[3].units == sorted(boards[2::3])
    assert reads[1].calls < reads[0].calls


def test_a_batch_of_uses_of_a_held_lot_reads_its_usage_once(store: Store) -> None:
    """Every operation that uses a held lot asks for the lot's usage (its impact and its uses
    while held); inside a batch the store already holds the whole batch, so the answers are
    read once: the alerts equal per-event evaluation with far fewer statements."""
    lot = _p("HB")
    units = [f"PCB:{_p('hb')}" for _ in range(7)]
    land(store, [received(lot, T0), operation(units[0], [lot], T0 + timedelta(hours=1))])
    batch = [status(lot, "HOLD", T0 + timedelta(hours=2))]
    batch += [operation(u, [lot], T0 + timedelta(hours=3, minutes=i)) for i, u in enumerate(units[1:])]
    land(store, batch)
    per_event, in_batch, reads = _per_event_and_batched(store, batch)
    key = [(a.alert_id, a.version, a.units, a.details) for a in per_event]
    assert key == [(a.alert_id, a.version, a.units, a.details) for a in in_batch]
    assert {a.rule for a in per_event} == {"LOT_HELD_AFTER_USE", "HELD_LOT_USED"}
    assert per_event[-1].units == sorted(units[1:])
    assert reads[1].calls * 2 < reads[0].calls


def test_suspect_lot_and_out_of_calibration_on_the_store(store: Store) -> None:
    lot, good = _p("YL"), _p("YG")
    ev = _evaluator(store)
    units = [f"AMP:{_p('y')}" for _ in range(5)]
    base = [f"AMP:{_p('b')}" for _ in range(20)]
    events = [operation(u, [lot], T0 + timedelta(minutes=i)) for i, u in enumerate(units)]
    events += [operation(u, [good], T0 + timedelta(minutes=i)) for i, u in enumerate(base)]
    events += [unit_tested(u, "PASS", T0 + timedelta(hours=1)) for u in base]
    events += [unit_tested(units[0], "PASS", T0 + timedelta(hours=1))]
    events += [unit_tested(units[1], "FAIL", T0 + timedelta(hours=1, minutes=i)) for i in range(1)]
    events += [unit_tested(units[2], "FAIL", T0 + timedelta(hours=2))]
    assert _run(ev, store, events) == []  # 2 failures: a near miss
    third = unit_tested(units[3], "FAIL", T0 + timedelta(hours=3))
    alerts = _run(ev, store, [third])
    assert [(a.alert_id, a.units) for a in alerts] == [(f"SUSPECT_LOT_YIELD:{lot}:AMP", sorted(units[1:4]))]
    assert _run(ev, store, [third]) == []
    # out of calibration: fires for the first late test; a test on the due instant does not
    due = T0 + timedelta(days=1)
    bench = _p("BENCH-")
    assert _run(ev, store, [unit_tested(base[0], "PASS", due, due, bench)]) == []
    late = unit_tested(base[1], "PASS", due + timedelta(minutes=1), due, bench)
    ooc = _run(ev, store, [late])
    assert [(a.rule, a.out_of_calibration, a.units) for a in ooc] == [("OUT_OF_CALIBRATION", True, [base[1]])]
    assert _run(ev, store, [late]) == []
    flags = store.query(
        "SELECT uii, out_of_calibration FROM unit_tests WHERE bench_id = {b:String} ORDER BY uii",
        {"b": bench},
    )
    assert {r["uii"]: r["out_of_calibration"] for r in flags} == {base[0]: False, base[1]: True}


def _land_alerts(store: Store, alerts: list[Alert]) -> None:
    """What the sink does with the alerts topic."""
    now = datetime.now(UTC)
    store.write_batch(alert_rows([(a, 0, next(_offsets), now) for a in alerts]), token=_p("al"))


def test_one_calibration_lapse_with_many_tests_is_one_alert(store: Store) -> None:
    due = T0 + timedelta(days=2)
    bench = _p("BENCH-")
    units = [f"AMP:{_p('oc')}" for _ in range(4)]
    late = [unit_tested(u, "PASS", due + timedelta(hours=i + 1), due, bench) for i, u in enumerate(units)]
    ev = _evaluator(store)
    alerts = _run(ev, store, [unit_tested(units[0], "PASS", due - timedelta(hours=1), due, bench), *late])
    assert {a.alert_id for a in alerts} == {f"OUT_OF_CALIBRATION:{bench}:CAL-{bench}"}
    assert [(a.version, a.unit_count, a.units) for a in alerts] == [
        (i, i, sorted(units[:i])) for i in range(1, 5)
    ]
    assert len(json.loads(alerts[-1].details["tests"])) == 4
    # replays (also after a restart that reloads the state from the alerts table): nothing
    assert _run(ev, store, late) == []
    _land_alerts(store, alerts)
    assert _run(_evaluator(store), store, late[:2]) == []


def test_one_nc_gating_many_shipments_is_one_alert_until_closed(store: Store) -> None:
    lot = _p("SG")
    systems = [f"SYS:{_p('sg')}" for _ in range(4)]
    boards = [f"PCB:{_p('sg')}" for _ in systems]
    build = [received(lot, T0)]
    for s_, b in zip(systems, boards, strict=True):
        build += [operation(b, [lot], T0 + timedelta(hours=1)), assembled(b, s_, T0 + timedelta(hours=2))]
    land(store, build)
    land_genealogy(store, build)
    ev = _evaluator(store)
    ncr = _p("NCR-SG")
    [raised] = _run(ev, store, [nc(ncr, "LOT", lot, T0 + timedelta(hours=3))])
    assert (raised.severity, raised.unit_count) == ("WARNING", 4)  # the boards, all in work
    ships = [
        shipped(s_, "CUST-A", T0 + timedelta(hours=4, minutes=i), f"SHP-SG{i}")
        for i, s_ in enumerate(systems)
    ]
    gates = _run(ev, store, ships[:3])
    assert {a.alert_id for a in gates} == {f"SHIPPING_GATE:NC:{ncr}"}
    assert [(a.version, a.units) for a in gates] == [(i, sorted(systems[:i])) for i in range(1, 4)]
    assert gates[-1].by_customer == {"CUST-A": 3}
    # replayed, and after a restart: nothing new; the next shipment: the same alert, grown
    assert _run(ev, store, ships[:3]) == []
    _land_alerts(store, [raised, *gates])
    again = _evaluator(store)
    assert _run(again, store, ships[:3]) == []
    [grown] = _run(again, store, ships[3:])
    assert (grown.alert_id, grown.version, grown.unit_count) == (gates[0].alert_id, 4, 4)
    # the review board accepts the lot: the NC alert is closed in place; nothing gates any more
    closed = _run(again, store, [nc(ncr, "LOT", lot, T0 + timedelta(days=1), disposition="USE_AS_IS")])
    assert [(a.alert_id, a.version, a.severity) for a in closed] == [(raised.alert_id, 2, "INFO")]
    assert _run(again, store, [shipped(systems[0], "CUST-B", T0 + timedelta(days=2), "SHP-SG9")]) == []


def _alert(aid: str, sev: str, event_time: datetime, raised_at: datetime, version: int = 1) -> Alert:
    return Alert(
        alert_id=aid, version=version, rule="NC_RAISED" if aid.startswith("NC") else "SHIPPING_GATE",
        severity=sev, title=aid, subject_kind="lot", subject_id="L", raised_at=raised_at,
        event_time=event_time, trigger_event_id="e", trigger_type="NonconformanceRaised", site="s",
        program="p",
    )  # fmt: skip


def test_list_alerts_pages_newest_event_first_with_the_total(dsn: str) -> None:
    store = Store.open(dsn, f"la_{uuid.uuid4().hex[:8]}")
    try:
        late = datetime(2027, 1, 1, tzinfo=UTC)  # raised (processed) in the reverse order of event time
        rows = [
            _alert(f"NC_RAISED:N{i:02d}", "WARNING", T0 + timedelta(hours=i), late - timedelta(hours=i))
            for i in range(12)
        ]
        rows.append(_alert("SHIPPING_GATE:NC:N05", "CRITICAL", T0 + timedelta(hours=5), late))  # a tie
        # an alert updated in place: its latest version counts (severity and event time)
        rows.append(_alert("NC_RAISED:N03", "INFO", T0 + timedelta(hours=20), late, version=2))
        _land_alerts(store, rows)
        _land_alerts(store, rows[:2])  # landed twice (a redelivery): still one row per alert
        page = list_alerts(store, limit=5)
        assert page.total == 13 and page.next_offset == 5
        assert [r["alert_id"] for r in page.rows] == [
            "NC_RAISED:N03", "NC_RAISED:N11", "NC_RAISED:N10", "NC_RAISED:N09", "NC_RAISED:N08",
        ]  # fmt: skip
        assert page.rows[0]["version"] == 2
        seen = [r["alert_id"] for o in (0, 5, 10) for r in list_alerts(store, limit=5, offset=o).rows]
        assert len(seen) == len(set(seen)) == 13
        assert seen.index("NC_RAISED:N05") < seen.index("SHIPPING_GATE:NC:N05")  # then by alert_id
        assert list_alerts(store, offset=13).rows == []
        # event time, not processing time; inclusive since, exclusive until
        window = list_alerts(store, since=T0 + timedelta(hours=5), until=T0 + timedelta(hours=7))
        assert [r["alert_id"] for r in window.rows] == [
            "NC_RAISED:N06",
            "NC_RAISED:N05",
            "SHIPPING_GATE:NC:N05",
        ]
        naive = list_alerts(store, since=(T0 + timedelta(hours=10)).replace(tzinfo=None))
        assert naive.total == 3  # N03 (updated at 20 h), N10, N11
        crit = list_alerts(store, severity="critical")
        assert [r["alert_id"] for r in crit.rows] == ["SHIPPING_GATE:NC:N05"] and crit.total == 1
        assert list_alerts(store, severity="WARNING").total == 11  # not N03: its latest version is INFO
        assert list_alerts(store, rule="SHIPPING_GATE", severity="WARNING").total == 0
        with pytest.raises(InvalidInputError) as exc:
            list_alerts(store, severity="BOGUS")
        assert exc.value.field == "severity"
    finally:
        store.close()


def test_batched_yield_reads_equal_the_per_event_reads(store: Store) -> None:
    """``evaluate_batch`` reads the failed tests' lots and yields once per batch: the alerts and
    every LotYield equal the per-event reads (overlapping lots, two parts, windows that cut
    some failures off, a duplicated test event)."""
    l1, l2, good = _p("BL"), _p("BL"), _p("BG")
    amp = [f"AMP:{_p('ba')}" for _ in range(6)]
    psu = [f"PSU:{_p('bp')}" for _ in range(4)]
    base = [f"AMP:{_p('bb')}" for _ in range(20)]
    h = lambda n: T0 + timedelta(hours=n)  # noqa: E731
    events = [operation(u, [l1] if i < 3 else [l1, l2], h(0)) for i, u in enumerate(amp)]
    events += [operation(u, [l1], h(0)) for u in psu]
    events += [operation(u, [good], h(0)) for u in base]
    events += [unit_tested(u, "PASS", h(1)) for u in base]
    tests = [
        unit_tested(amp[0], "PASS", h(1)),
        unit_tested(amp[1], "FAIL", h(1)),
        unit_tested(amp[2], "FAIL", h(2)),
        unit_tested(amp[3], "FAIL", h(3)),
        unit_tested(psu[3], "PASS", h(1)),
        *(unit_tested(u, "FAIL", h(2)) for u in psu[:3]),
        unit_tested(amp[4], "FAIL", h(40)),  # 24 h window: amp[1..3] are out of it
        unit_tested(amp[5], "FAIL", h(41)),
    ]
    tests.append(tests[3])  # a re-sent event
    events += tests
    land(store, events)
    per_event, in_batch, _reads = _per_event_and_batched(store, events)
    one = AlertEvaluator(store, AlertRules(nc_refresh_seconds=0))
    key = [(a.alert_id, a.version, a.units, a.details) for a in per_event]
    assert key == [(a.alert_id, a.version, a.units, a.details) for a in in_batch]
    assert {a.alert_id: a.units for a in per_event} == {
        f"SUSPECT_LOT_YIELD:{l1}:AMP": sorted(amp[1:4]),
        f"SUSPECT_LOT_YIELD:{l1}:PSU": sorted(psu[:3]),
    }
    # and each yield read on its own equals the batch's
    failed = [r for _t, r in tests if r["verdict"] == "FAIL"]
    lots = one._lots_of([f"{r['unit']['part_number']}:{r['unit']['serial_number']}" for r in failed])
    assert lots[amp[3]] == sorted([l1, l2]) and lots[psu[0]] == [l1]
    cfg = one.rules
    ys = one._yields([l1, l2], ["AMP", "PSU"], h(0), h(42))
    for r in failed:
        uii, part = f"{r['unit']['part_number']}:{r['unit']['serial_number']}", r["unit"]["part_number"]
        for lot in lots[uii]:
            start, end = window_start(r, cfg), r["finished_at"]
            assert ys.lot_yield(lot, part, start, end) == one.lot_yield(lot, part, start, end)


# ----------------------------------------------------------------------------- property: NC impact = oracle


def _oracle_status(plant: oracle.Plant, events: list[dict], u: str) -> tuple[str, str]:
    ships: dict[str, str] = {}
    verdicts: dict[str, tuple[datetime, str]] = {}
    for e in events:
        if e["type"] == "UnitShipped":
            ships[oracle._key(e["unit"])] = e["customer_id"]
        elif e["type"] == "UnitTested":
            k = oracle._key(e["unit"])
            if k not in verdicts or e["finished_at"] >= verdicts[k][0]:
                verdicts[k] = (e["finished_at"], e["verdict"])
    chain = (u, *plant.ancestors(u))
    for n in chain:
        if n in ships:
            return "shipped", ships[n]
    root = chain[-1]
    return ("in_stock" if verdicts.get(root, (None, ""))[1] == "PASS" else "in_work"), "(none)"


plants = st.fixed_dictionaries(
    {
        "uses": st.lists(st.sets(st.integers(0, 3), max_size=2), min_size=1, max_size=6),
        "merge": st.booleans(),
        "parents": st.lists(st.integers(-1, 1), min_size=6, max_size=6),
        "shipped": st.sets(st.integers(0, 1)),
        "tests": st.lists(st.sampled_from(["PASS", "FAIL", None]), min_size=2, max_size=2),
        "nc_lot": st.integers(0, 3),
    }
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plants)
def test_nc_alert_impact_equals_the_oracle(store: Store, p: dict[str, Any]) -> None:
    tag = _p("x")
    lots = [f"{tag}L{i}" for i in range(4)]
    events: list[tuple[str, dict]] = [received(lot, T0) for lot in lots[:3]]
    if p["merge"]:  # L3 is made from L0 and L1
        events.append(transformed(lots[3], lots[:2], T0 + timedelta(minutes=1)))
    systems = [f"SYS{tag}:{i}" for i in range(2)]
    for i, used in enumerate(p["uses"]):
        u = f"PCB{tag}:{i}"
        events.append(operation(u, [lots[j] for j in sorted(used)], T0 + timedelta(hours=1, minutes=i)))
        if p["parents"][i] >= 0:
            events.append(assembled(u, systems[p["parents"][i]], T0 + timedelta(hours=2)))
    for k, verdict in enumerate(p["tests"]):
        if verdict:
            events.append(unit_tested(systems[k], verdict, T0 + timedelta(hours=3)))
    for k in sorted(p["shipped"]):
        events.append(shipped(systems[k], f"C{k}", T0 + timedelta(hours=4)))
    land(store, events)
    land_genealogy(store, events)
    lot = lots[p["nc_lot"]]
    ev = AlertEvaluator(store, AlertRules(nc_refresh_seconds=0))
    trigger = nc(f"NCR{tag}", "LOT", lot, T0 + timedelta(hours=5))
    land(store, [trigger])
    alerts = ev.evaluate(*trigger)
    # the oracle: an independent walk over all events
    flat = [{"type": t, **r} for t, r in events]
    plant = oracle.Plant(flat)
    hits = plant.hit_units(lot)
    assert len(alerts) == 1
    a = alerts[0]
    assert a.unit_count == len(hits) and set(a.units) == hits
    by_status: dict[str, int] = {}
    by_customer: dict[str, int] = {}
    for u in hits:
        s, c = _oracle_status(plant, flat, u)
        by_status[s] = by_status.get(s, 0) + 1
        by_customer[c] = by_customer.get(c, 0) + 1
    assert a.by_status == by_status
    assert a.by_customer == by_customer


# ----------------------------------------------------------------------------- Kafka tier


def _consume_alerts(bootstrap: str, topic: str, want: int, timeout: float = 30.0) -> list[Alert]:
    from confluent_kafka import Consumer

    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"read-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
        }
    )
    c.subscribe([topic])
    out: list[Alert] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and len(out) < want:
            m = c.poll(0.2)
            if m is not None and m.error() is None:
                out.append(decode_alert(m.value()))
        # and nothing more shortly after
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            m = c.poll(0.2)
            if m is not None and m.error() is None:
                out.append(decode_alert(m.value()))
    finally:
        c.close()
    return out


def test_engine_end_to_end_and_restart(kafka_bootstrap: str, topic_prefix: str, dsn: str) -> None:
    from confluent_kafka import Producer

    from schemas.kafka import ensure_topics
    from sinks.ingest import SinkWorker

    topics = TopicNames(events=f"{topic_prefix}events", prefix=topic_prefix)
    ensure_topics(kafka_bootstrap, topics, partitions=2)
    store = Store.open(dsn, f"e2e_{uuid.uuid4().hex[:8]}")
    sink = SinkWorker(
        kafka_bootstrap, store, topics=topics, group_id=f"{topic_prefix}sink", batch_seconds=0.2
    )
    threads: list[threading.Thread] = [threading.Thread(target=sink.run, daemon=True)]
    threads[0].start()

    def engine(group: str) -> AlertEngine:
        e = AlertEngine(
            kafka_bootstrap,
            AlertEvaluator(store, AlertRules(nc_refresh_seconds=0)),
            topics=topics,
            group_id=group,
            sink_group=f"{topic_prefix}sink",
            landed=sink_positions(sink),
        )
        t = threading.Thread(target=e.run, daemon=True)
        t.start()
        threads.append(t)
        return e

    serde = AvroSerde(topic=topics.events)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "partitioner": "murmur2_random"})
    lot, u1, u2 = "L-K1", "PCB:K1", "PCB:K2"
    events = [
        received(lot, T0),
        operation(u1, [lot], T0 + timedelta(hours=1)),
        status(lot, "QUARANTINE", T0 + timedelta(hours=2)),
        nc("NCR-K", "LOT", lot, T0 + timedelta(hours=2)),
    ]
    key = {"MaterialReceived": lot, "LotStatusChanged": lot, "NonconformanceRaised": f"LOT:{lot}"}
    try:
        first = engine(f"{topic_prefix}alerts")
        for t, r in events:
            k = key.get(t) or f"{r['unit']['part_number']}:{r['unit']['serial_number']}"
            producer.produce(topics.events, key=k.encode(), value=serde.encode(t, r))
        producer.flush(10)
        time.sleep(1.0)  # the hold is in the engine's state before the next consumption
        late = operation(u2, [lot], T0 + timedelta(hours=3))
        producer.produce(topics.events, key=u2.encode(), value=serde.encode(*late))
        producer.produce(topics.events, key=u2.encode(), value=serde.encode(*late))  # a duplicate
        producer.flush(10)
        got = _consume_alerts(kafka_bootstrap, topics.alerts, want=3)
        rules = sorted(a.rule for a in got)
        assert rules == ["HELD_LOT_USED", "LOT_HELD_AFTER_USE", "NC_RAISED"], got
        nc_alert = next(a for a in got if a.rule == "NC_RAISED")
        assert nc_alert.unit_count >= 1 and u1 in nc_alert.units
        # the sink lands the alerts topic in the alerts table
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and list_alerts(store).total < 3:
            time.sleep(0.2)
        assert sorted(r["rule"] for r in list_alerts(store).rows) == rules
        # let the first engine finish every event (a later event may still update an alert's
        # impact) and the sink land every version it published, before restarting
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (
            first.stats.events < len(events) + 2 or store.count("alerts") < first.stats.alerts_published
        ):
            time.sleep(0.2)
        first.stop()
        threads[-1].join(15)
        # restart in a NEW group: the engine re-reads every event, state comes from the table
        assert len(load_state(store).raised) == 3
        second = engine(f"{topic_prefix}alerts-2")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and second.stats.events < len(events) + 2:
            time.sleep(0.2)
        assert second.stats.events == len(events) + 2
        # no repeats: the restarted engine raises no new alert, and republishes nothing it
        # already published. It may only UPDATE an alert whose impact grew since the first
        # engine evaluated it (a later consumption landed): a higher version, other content.
        on_topic = _consume_alerts(kafka_bootstrap, topics.alerts, want=10, timeout=2)
        assert len({a.alert_id for a in on_topic}) == 3, on_topic
        published = first.stats.alerts_published + second.stats.alerts_published
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and store.count("alerts") < published:
            time.sleep(0.2)
        rows = store.query(
            "SELECT alert_id, version, unit_count, units FROM alerts ORDER BY alert_id, version"
        )
        assert len(rows) == published, rows
        by_id: dict[str, list[dict]] = {}
        for r in rows:
            by_id.setdefault(r["alert_id"], []).append(r)
        assert len(by_id) == 3, rows
        for versions in by_id.values():
            assert [v["version"] for v in versions] == list(range(1, len(versions) + 1)), versions
            for a, b in zip(versions, versions[1:], strict=False):
                assert (a["unit_count"], a["units"]) != (b["unit_count"], b["units"]), versions
        second.stop()
    finally:
        sink.stop()
        for t in threads:
            t.join(15)
        store.close()
