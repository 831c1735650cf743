"""Alert rules (pure, no I/O): each fires exactly once on its trigger, a near miss does not."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import fastavro
import pytest

from queries.alerts import AlertPage, list_alerts
from schemas.alert import Alert, alert_schema, decode_alert, encode_alert
from schemas.errors import InvalidInputError
from streams.alerts import (
    AlertRules,
    AlertState,
    BenchTests,
    Impact,
    LotState,
    LotUsage,
    LotYield,
    UnitContents,
    consumed_held,
    held_lot_used,
    lot_held_after_use,
    nc_raised,
    out_of_calibration,
    shipping_gate,
    suspect_lot_yield,
)
from streams.notify import sign, verify

T0 = datetime(2026, 5, 4, 8, tzinfo=UTC)
NOW = datetime(2026, 5, 4, 12, tzinfo=UTC)
CFG = AlertRules()


def _h(eid: str, t: datetime) -> dict[str, Any]:
    return {"event_id": eid, "event_time": t, "source": "s", "site": "plant-a", "program": "P1"}


def _u(uii: str) -> dict[str, str]:
    pn, sn = uii.split(":")
    return {"part_number": pn, "serial_number": sn}


def status(lot: str, st: str, t: datetime, eid: str = "st-1") -> dict[str, Any]:
    return {**_h(eid, t), "lot_id": lot, "status": st, "reason": "supplier notice"}


def operation(uii: str, lots: list[str], t: datetime, eid: str = "op-1") -> dict[str, Any]:
    return {
        **_h(eid, t),
        "unit": _u(uii),
        "work_order": "WO-7",
        "operation": "0010 SMT",
        "station_id": "SMT-1",
        "operator_id": "OP-9",
        "started_at": t - timedelta(minutes=5),
        "finished_at": t,
        "creates_unit": True,
        "consumed_lots": [{"lot_id": lot, "quantity": 1.0} for lot in lots],
        "consumed_units": [],
    }


def nc(
    ncr: str, kind: str, target: str, disposition: str = "PENDING", eid: str = "nc-1", t: datetime = T0
) -> dict[str, Any]:
    return {
        **_h(eid, t),
        "ncr_id": ncr,
        "target_kind": kind,
        "target_id": target,
        "window_start": None,
        "window_end": None,
        "severity": "MAJOR",
        "disposition": disposition,
        "description": "cracked solder joints",
    }


def unit_tested(
    uii: str, verdict: str, finished: datetime, due: datetime, eid: str = "t-1"
) -> dict[str, Any]:
    return {
        **_h(eid, finished),
        "unit": _u(uii),
        "bench_id": "B-1",
        "procedure_id": "TP",
        "procedure_version": "A",
        "calibration_id": "CAL-3",
        "calibration_due": due,
        "operator_id": None,
        "started_at": finished - timedelta(minutes=1),
        "finished_at": finished,
        "measurements": [],
        "verdict": verdict,
    }


def shipped(uii: str, eid: str = "sh-1", shipment: str = "SHP-1", customer: str = "CUST-X") -> dict[str, Any]:
    return {
        **_h(eid, T0 + timedelta(hours=3)),
        "unit": _u(uii),
        "shipment_id": shipment,
        "customer_id": customer,
        "contract": "C",
        "destination_site": "BASE-1",
        "end_system": None,
    }


IMPACT = Impact(
    3, ["PCB:1", "PCB:2", "PCB:3"], {"in_work": 2, "shipped": 1}, {"(none)": 2, "C": 1}, {"a": 3}, "/r"
)


def _fired(state: AlertState, alerts: list[Alert | None]) -> list[Alert]:
    return [a for a in (state.admit(x) for x in alerts) if a is not None]


# ----------------------------------------------------------------------------- NC raised


def test_nc_fires_once_with_impact_and_updates_on_change() -> None:
    st = AlertState()
    rec = nc("NCR-1", "LOT", "L1")
    st.apply("NonconformanceRaised", rec)
    first = _fired(st, [nc_raised(rec, IMPACT, CFG, NOW)])
    assert len(first) == 1
    a = first[0]
    assert (a.alert_id, a.version, a.rule, a.severity) == ("NC_RAISED:NCR-1", 1, "NC_RAISED", "CRITICAL")
    assert (a.unit_count, a.by_status, a.reference) == (3, {"in_work": 2, "shipped": 1}, "/r")
    # the same trigger again (a duplicate event, a replay): nothing
    assert _fired(st, [nc_raised(rec, IMPACT, CFG, NOW + timedelta(seconds=5))]) == []
    # the impact grew: an update of the same alert
    bigger = Impact(4, [*IMPACT.units, "PCB:4"], {"in_work": 3, "shipped": 1}, {}, {}, "/r")
    upd = _fired(st, [nc_raised(rec, bigger, CFG, NOW)])
    assert [(u.alert_id, u.version, u.unit_count) for u in upd] == [("NC_RAISED:NCR-1", 2, 4)]


def test_nc_near_miss_use_as_is() -> None:
    assert nc_raised(nc("NCR-2", "LOT", "L1", "USE_AS_IS"), IMPACT, CFG, NOW) is None


IN_PLANT = Impact(2, ["PCB:1", "PCB:2"], {"in_work": 1, "in_stock": 1}, {"(none)": 2}, {"a": 2}, "/r")
NOTHING = Impact(0, [], {}, {}, {}, "/r")


def test_nc_severity_says_what_may_have_left() -> None:
    def sev(disposition: str, impact: Impact, **kw: Any) -> str | None:
        a = nc_raised(nc("NCR-3", "LOT", "L1", disposition), impact, CFG, NOW, **kw)
        return None if a is None else a.severity

    # shipped units in the impact: the material may have reached a customer
    assert sev("PENDING", IMPACT) == "CRITICAL"
    assert sev("SCRAP", IMPACT) == "CRITICAL"
    # containment needed, nothing has left (whatever the NC's own classification)
    assert sev("PENDING", IN_PLANT) == "WARNING"
    assert sev("SCRAP", IN_PLANT) == "WARNING"
    assert sev("PENDING", NOTHING) == "WARNING"  # undecided: keep the material out of use
    # for the record: the disposition is the containment, or nothing used the material
    assert sev("REPAIR", IN_PLANT) == "INFO"
    assert sev("REWORK", IMPACT) == "INFO"
    assert sev("RETURN_TO_SUPPLIER", NOTHING) == "INFO"
    # closed by the review board: only an update of an alert raised before
    assert sev("USE_AS_IS", IMPACT) is None
    assert sev("USE_AS_IS", IMPACT, alerted=True) == "INFO"
    minor = nc_raised({**nc("NCR-4", "LOT", "L1"), "severity": "MINOR"}, IMPACT, CFG, NOW)
    assert minor is not None and minor.severity == "CRITICAL" and minor.details["nc_severity"] == "MINOR"


def test_nc_closure_updates_the_alert_in_place() -> None:
    st = AlertState()
    first = _fired(st, [nc_raised(nc("NCR-5", "LOT", "L1"), IN_PLANT, CFG, NOW)])
    closed = nc("NCR-5", "LOT", "L1", "USE_AS_IS", "nc-2", T0 + timedelta(days=1))
    upd = _fired(st, [nc_raised(closed, IN_PLANT, CFG, NOW, alerted=True)])
    assert [(a.alert_id, a.version, a.severity, a.details["disposition"]) for a in [*first, *upd]] == [
        ("NC_RAISED:NCR-5", 1, "WARNING", "PENDING"),
        ("NC_RAISED:NCR-5", 2, "INFO", "USE_AS_IS"),
    ]


# ----------------------------------------------------------------------------- held lot used


def _use(uii: str, t: datetime, station: str = "SMT-1") -> dict[str, Any]:
    """One consumption as the store lists it (``AlertEvaluator.lot_uses``)."""
    return {"uii": uii, "event_time": t, "station_id": station, "operator_id": "OP-9", "work_order": "WO-7"}


def test_held_lot_used_one_alert_per_lot_and_hold_naming_serial_station_operator_wo() -> None:
    st = AlertState()
    st.apply("LotStatusChanged", status("L1", "HOLD", T0))
    op = operation("PCB:1", ["L1", "L2"], T0 + timedelta(hours=1))
    breaches, recheck = consumed_held(op, st)
    assert recheck == [] and [lot for lot, _p in breaches] == ["L1"]
    period = breaches[0][1]
    uses = [_use("PCB:1", T0 + timedelta(hours=1))]
    fired = _fired(st, [held_lot_used("L1", period, uses, op, CFG, NOW)])
    assert len(fired) == 1
    a = fired[0]
    assert (a.alert_id, a.severity, a.subject_id, a.units) == (
        f"HELD_LOT_USED:L1:{int(T0.timestamp() * 1000)}",
        "CRITICAL",
        "L1",
        ["PCB:1"],
    )
    assert "PCB:1 at SMT-1 by OP-9 (WO WO-7)" in a.title
    listed = json.loads(a.details["uses"])
    assert [(u["uii"], u["station_id"], u["operator_id"], u["work_order"]) for u in listed] == [
        ("PCB:1", "SMT-1", "OP-9", "WO-7")
    ]
    # the duplicate event, and a re-send of it with a new event id: nothing new
    assert _fired(st, [held_lot_used("L1", period, uses, op, CFG, NOW)]) == []
    assert _fired(st, [held_lot_used("L1", period, uses, {**op, "event_id": "op-1b"}, CFG, NOW)]) == []
    # a second unit uses the same held lot: the same alert, updated in place
    op2 = operation("PCB:2", ["L1"], T0 + timedelta(hours=2), "op-2")
    uses2 = [*uses, _use("PCB:2", T0 + timedelta(hours=2), "SMT-2")]
    upd = _fired(st, [held_lot_used("L1", consumed_held(op2, st)[0][0][1], uses2, op2, CFG, NOW)])
    assert [(x.alert_id, x.version, x.unit_count, x.units) for x in upd] == [
        (a.alert_id, 2, 2, ["PCB:1", "PCB:2"])
    ]
    assert "PCB:2 at SMT-2" in upd[0].title
    # the hold turns into a quarantine: the same held period, the same alert
    st.apply("LotStatusChanged", status("L1", "QUARANTINE", T0 + timedelta(hours=3), "st-2"))
    p3 = st.held("L1")
    assert p3 is not None and p3.key("L1") == period.key("L1") and p3.status == "QUARANTINE"


def test_held_lot_used_near_miss_released_lot() -> None:
    st = AlertState()
    st.apply("LotStatusChanged", status("L1", "HOLD", T0, "st-1"))
    st.apply("LotStatusChanged", status("L1", "RELEASED", T0 + timedelta(minutes=30), "st-2"))
    # an older HOLD arriving late does not override the newer RELEASE
    st.apply("LotStatusChanged", status("L1", "QUARANTINE", T0 - timedelta(hours=1), "st-0"))
    assert consumed_held(operation("PCB:1", ["L1"], T0 + timedelta(hours=1)), st) == ([], [])
    # ... and the late QUARANTINE joins the HOLD's period (one incident, whatever the order)
    [period] = st.hold_periods("L1")
    assert period.since == T0 - timedelta(hours=1) and period.end is not None


def test_consumption_before_the_hold_asks_for_the_late_hold_alert() -> None:
    st = AlertState()
    st.apply("LotStatusChanged", status("L1", "HOLD", T0 + timedelta(hours=2)))
    assert consumed_held(operation("PCB:1", ["L1"], T0), st) == ([], ["L1"])


def test_late_hold_names_every_unit_that_used_the_lot() -> None:
    st = AlertState()
    rec = status("L1", "QUARANTINE", T0 + timedelta(hours=2))
    st.apply("LotStatusChanged", rec)
    hold = st.held("L1")
    assert hold is not None
    breach = [{"uii": "PCB:3", "event_time": T0 + timedelta(hours=3), "station_id": "SMT-1"}]
    usage = LotUsage(IMPACT, breach)
    fired = _fired(st, [lot_held_after_use("L1", hold, usage, CFG, NOW)])
    assert len(fired) == 1
    a = fired[0]
    assert a.rule == "LOT_HELD_AFTER_USE" and a.severity == "CRITICAL"
    assert a.units == ["PCB:1", "PCB:2", "PCB:3"] and a.unit_count == 3
    assert json.loads(a.details["used_while_held"])[0]["uii"] == "PCB:3"
    assert _fired(st, [lot_held_after_use("L1", hold, usage, CFG, NOW)]) == []
    # no breach, nothing shipped: only a containment warning
    in_plant = Impact(2, ["PCB:1", "PCB:2"], {"in_work": 2}, {}, {}, "/r")
    warn = lot_held_after_use("L2", hold, LotUsage(in_plant, []), CFG, NOW)
    assert warn is not None and warn.severity == "WARNING"
    # ... but a unit that used it before the hold has shipped: it may have reached a customer
    shipped_before = lot_held_after_use("L2", hold, LotUsage(IMPACT, []), CFG, NOW)
    assert shipped_before is not None and shipped_before.severity == "CRITICAL"


def test_hold_period_one_alert_updated_by_its_statuses_and_release() -> None:
    st = AlertState()
    usage = LotUsage(Impact(2, ["PCB:1", "PCB:2"], {"in_work": 2}, {}, {}, "/r"), [])
    st.apply("LotStatusChanged", status("L1", "HOLD", T0, "st-1"))
    p1 = st.held("L1")
    assert p1 is not None
    first = _fired(st, [lot_held_after_use("L1", p1, usage, CFG, NOW)])
    st.apply("LotStatusChanged", status("L1", "SCRAPPED", T0 + timedelta(days=1), "st-2"))
    p2 = st.held("L1")
    assert p2 is not None and p2.status == "SCRAPPED"
    scrapped = _fired(st, [lot_held_after_use("L1", p2, usage, CFG, NOW)])
    assert [(a.alert_id, a.version, a.details["lot_status"]) for a in [*first, *scrapped]] == [
        (first[0].alert_id, 1, "HOLD"),
        (first[0].alert_id, 2, "SCRAPPED"),
    ]
    # a release ends the period: the alert is closed for the record (INFO)
    rel = status("L1", "RELEASED", T0 + timedelta(days=2), "st-3")
    st.apply("LotStatusChanged", rel)
    assert st.held("L1") is None
    p3 = st.period_of("L1", LotState.from_event(rel))
    assert p3 is not None and p3.end is not None and p3.key("L1") == p1.key("L1")
    closed = _fired(st, [lot_held_after_use("L1", p3, usage, CFG, NOW)])
    assert [(a.version, a.severity) for a in closed] == [(3, "INFO")]
    # a new hold later is a new incident
    st.apply("LotStatusChanged", status("L1", "HOLD", T0 + timedelta(days=3), "st-4"))
    p4 = st.held("L1")
    assert p4 is not None and p4.key("L1") != p1.key("L1")


def test_hold_on_an_unused_lot_does_not_fire() -> None:
    st = AlertState()
    st.apply("LotStatusChanged", status("L9", "HOLD", T0))
    empty = LotUsage(Impact(0, [], {}, {}, {}, "/r"), [])
    hold = st.held("L9")
    assert hold is not None
    assert lot_held_after_use("L9", hold, empty, CFG, NOW) is None


# ----------------------------------------------------------------------------- suspect lot by yield


def _fail(uii: str) -> dict[str, Any]:
    return {"uii": uii, "finished_at": T0, "measurements": [{"name": "VCC", "value": 3.9, "high_limit": 3.4}]}


def test_suspect_lot_fires_once_with_failing_serials() -> None:
    st = AlertState()
    rec = unit_tested("PCB:3", "FAIL", T0 + timedelta(hours=1), T0 + timedelta(days=30))
    yld = LotYield(tested=6, failing=[_fail("PCB:1"), _fail("PCB:2"), _fail("PCB:3")])
    # part baseline: 100 tests, 5 fails (incl. this lot's 3 of 6): other units 2/94 ~ 2.1 %
    fired = _fired(st, [suspect_lot_yield(rec, "L1", yld, (100, 5), CFG, NOW)])
    assert [a.alert_id for a in fired] == ["SUSPECT_LOT_YIELD:L1:PCB"]
    assert fired[0].units == ["PCB:1", "PCB:2", "PCB:3"]
    assert json.loads(fired[0].details["failing"])[0]["measurements"][0]["name"] == "VCC"
    assert _fired(st, [suspect_lot_yield(rec, "L1", yld, (100, 5), CFG, NOW)]) == []


def test_suspect_lot_near_misses() -> None:
    rec = unit_tested("PCB:2", "FAIL", T0, T0 + timedelta(days=30))
    two = LotYield(tested=3, failing=[_fail("PCB:1"), _fail("PCB:2")])
    assert suspect_lot_yield(rec, "L1", two, (100, 2), CFG, NOW) is None  # 2 < 3 failures
    # 3 failures of 60 units (5 %) when the part fails 4 % anyway: not 2x the baseline
    three = LotYield(tested=60, failing=[_fail("PCB:1"), _fail("PCB:2"), _fail("PCB:3")])
    assert suspect_lot_yield(rec, "L1", three, (1060, 43), CFG, NOW) is None


# ----------------------------------------------------------------------------- out of calibration


def test_out_of_calibration_fires_once_and_updates_per_bench() -> None:
    st = AlertState()
    rec = unit_tested("PCB:1", "PASS", T0 + timedelta(days=1), T0)
    a = _fired(st, [out_of_calibration(rec, BenchTests(1, ["PCB:1"], 1), CFG, NOW)])
    assert [(x.alert_id, x.version, x.out_of_calibration) for x in a] == [
        ("OUT_OF_CALIBRATION:B-1:CAL-3", 1, True)
    ]
    assert _fired(st, [out_of_calibration(rec, BenchTests(1, ["PCB:1"], 1), CFG, NOW)]) == []
    rec2 = unit_tested("PCB:2", "PASS", T0 + timedelta(days=1, hours=1), T0, "t-2")
    upd = _fired(st, [out_of_calibration(rec2, BenchTests(2, ["PCB:1", "PCB:2"], 2), CFG, NOW)])
    assert [(x.version, x.unit_count) for x in upd] == [(2, 2)]


def test_out_of_calibration_one_alert_per_lapse_listing_its_tests() -> None:
    """Many tests on one bench past one calibration: one alert, its list growing with versions;
    a replayed earlier test (the store unchanged) adds nothing."""
    st = AlertState()
    due = T0
    tests: list[dict[str, Any]] = []
    versions: list[tuple[int, int, list[str]]] = []
    recs = []
    for i in range(1, 6):
        rec = unit_tested(f"PCB:{i}", "FAIL" if i == 3 else "PASS", due + timedelta(hours=i), due, f"t-{i}")
        recs.append(rec)
        tests.append({"serial": f"PCB:{i}", "finished_at": rec["finished_at"], "verdict": rec["verdict"]})
        bt = BenchTests(i, [t["serial"] for t in tests], i, list(tests), ["P1"])
        for a in _fired(st, [out_of_calibration(rec, bt, CFG, NOW)]):
            versions.append((a.version, a.unit_count, a.units))
            last = a
    assert versions == [(i, i, [f"PCB:{j}" for j in range(1, i + 1)]) for i in range(1, 6)]
    assert last.alert_id == "OUT_OF_CALIBRATION:B-1:CAL-3" and last.severity == "WARNING"
    assert [t["verdict"] for t in json.loads(last.details["tests"])] == [
        "PASS",
        "PASS",
        "FAIL",
        "PASS",
        "PASS",
    ]
    assert "5 test(s) on 5 unit(s)" in last.title
    assert _fired(st, [out_of_calibration(recs[0], bt, CFG, NOW)]) == []


def test_out_of_calibration_near_miss_on_the_due_instant() -> None:
    due = T0 + timedelta(days=1)
    assert out_of_calibration(unit_tested("PCB:1", "PASS", due, due), BenchTests(0, [], 0), CFG, NOW) is None


# ----------------------------------------------------------------------------- shipping gate


def test_shipping_gate_one_alert_per_cause() -> None:
    st = AlertState()
    st.apply("LotStatusChanged", status("L1", "HOLD", T0))
    st.apply("NonconformanceRaised", nc("NCR-5", "SERIAL", "DIE:9"))
    contents = UnitContents(units=frozenset({"SYS:1", "DIE:9"}), lots=frozenset({"L1", "L0"}))
    fired = _fired(st, shipping_gate(shipped("SYS:1"), st, contents, CFG, NOW))
    assert [(a.alert_id, a.severity, a.subject_kind, a.subject_id, a.units) for a in fired] == [
        (f"SHIPPING_GATE:LOT:L1:{int(T0.timestamp() * 1000)}", "CRITICAL", "lot", "L1", ["SYS:1"]),
        ("SHIPPING_GATE:NC:NCR-5", "CRITICAL", "serial", "DIE:9", ["SYS:1"]),
    ]
    assert fired[0].details["lot_status"] == "HOLD" and fired[1].details["ncr_id"] == "NCR-5"
    assert [s["shipment_id"] for s in json.loads(fired[1].details["shipments"])] == ["SHP-1"]
    assert _fired(st, shipping_gate(shipped("SYS:1", "sh-dup"), st, contents, CFG, NOW)) == []


def test_one_nc_gating_many_shipments_is_one_alert() -> None:
    st = AlertState()
    st.apply("NonconformanceRaised", nc("NCR-8", "LOT", "L1"))
    out: list[Alert] = []
    for i in range(1, 6):
        contents = UnitContents(units=frozenset({f"SYS:{i}"}), lots=frozenset({"L1"}))
        rec = shipped(f"SYS:{i}", f"sh-{i}", f"SHP-{i}", "CUST-A" if i % 2 else "CUST-B")
        out += _fired(st, shipping_gate(rec, st, contents, CFG, NOW))
    assert {a.alert_id for a in out} == {"SHIPPING_GATE:NC:NCR-8"}
    assert [(a.version, a.unit_count) for a in out] == [(i, i) for i in range(1, 6)]
    last = out[-1]
    assert last.units == [f"SYS:{i}" for i in range(1, 6)]
    assert last.by_customer == {"CUST-A": 3, "CUST-B": 2} and last.by_status == {"shipped": 5}
    assert last.details["shipment_count"] == "5"
    # a replayed shipment changes nothing; after a restart the listing comes back from the table
    replay = shipped("SYS:2", "sh-2b", "SHP-2", "CUST-B")
    c2 = UnitContents(units=frozenset({"SYS:2"}), lots=frozenset({"L1"}))
    assert _fired(st, shipping_gate(replay, st, c2, CFG, NOW)) == []
    fresh = AlertState()
    fresh.apply("NonconformanceRaised", nc("NCR-8", "LOT", "L1"))
    fresh.remember(last.alert_id, last.version, last.fingerprint())
    fresh.remember_gate(last.alert_id, last.details["shipments"])
    assert _fired(fresh, shipping_gate(replay, fresh, c2, CFG, NOW)) == []
    c6 = UnitContents(frozenset({"SYS:6"}), frozenset({"L1"}))
    more = _fired(fresh, shipping_gate(shipped("SYS:6", "sh-6", "SHP-6"), fresh, c6, CFG, NOW))
    assert [(a.alert_id, a.version, a.unit_count) for a in more] == [(last.alert_id, 6, 6)]


def test_shipping_gate_near_misses() -> None:
    st = AlertState()
    st.apply("LotStatusChanged", status("L1", "RELEASED", T0))
    st.apply("NonconformanceRaised", nc("NCR-6", "LOT", "L1"))
    st.apply("NonconformanceRaised", nc("NCR-6", "LOT", "L1", "USE_AS_IS", "nc-2"))  # closed by MRB
    st.apply("NonconformanceRaised", nc("NCR-7", "LOT", "L-OTHER"))  # open, but not in this unit
    st.apply("NonconformanceRaised", nc("NCR-9", "SERIAL", "SYS:1", "REPAIR"))  # repaired: released
    contents = UnitContents(units=frozenset({"SYS:1"}), lots=frozenset({"L1"}))
    assert shipping_gate(shipped("SYS:1"), st, contents, CFG, NOW) == []
    # ... but scrapped material gates
    st.apply("NonconformanceRaised", nc("NCR-9", "SERIAL", "SYS:1", "SCRAP", "nc-3", T0 + timedelta(hours=1)))
    assert [a.alert_id for a in shipping_gate(shipped("SYS:1"), st, contents, CFG, NOW)] == [
        "SHIPPING_GATE:NC:NCR-9"
    ]


# ----------------------------------------------------------------------------- state, contract, signature


def test_state_reload_means_no_repeat() -> None:
    st = AlertState()
    rec = nc("NCR-1", "LOT", "L1")
    a = st.admit(nc_raised(rec, IMPACT, CFG, NOW))
    assert a is not None
    fresh = AlertState()
    fresh.remember(a.alert_id, a.version, a.fingerprint())  # what the alerts table gives back
    assert fresh.admit(nc_raised(rec, IMPACT, CFG, NOW + timedelta(hours=1))) is None


def test_alert_round_trips_through_its_avro_schema() -> None:
    a = nc_raised(nc("NCR-1", "LOT", "L1"), IMPACT, CFG, NOW)
    assert a is not None
    fastavro.validation.validate(a.to_avro(), alert_schema(), raise_errors=True)
    assert decode_alert(encode_alert(a)) == a


def test_signature() -> None:
    body = b'{"a":1}'
    assert sign(body, "k").startswith("t=") and verify(body, "k", sign(body, "k"))
    assert not verify(body, "other", sign(body, "k"))
    assert not verify(body + b" ", "k", sign(body, "k"))
    old = sign(body, "k", at=1_700_000_000)  # a captured request, replayed later
    assert not verify(body, "k", old) and verify(body, "k", old, now=1_700_000_100)
    tampered = old.replace("t=1700000000", f"t={int(__import__('time').time())}")
    assert not verify(body, "k", tampered)  # the time is signed too


class _RecordingStore:
    """Answers every read with nothing and remembers that it was asked."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        self.calls.append(sql)
        return []

    def query_rows(self, sql: str, params: dict[str, Any] | None = None) -> tuple[list[str], list[Any]]:
        self.calls.append(sql)
        return [], []


def test_list_alerts_rejects_unknown_values_before_reading() -> None:
    store = _RecordingStore()
    for kw, field in (
        ({"severity": "BOGUS"}, "severity"),
        ({"rule": "NC_RAISD"}, "rule"),
        ({"limit": 0}, "limit"),
        ({"limit": 10_001}, "limit"),
        ({"offset": -1}, "offset"),
    ):
        with pytest.raises(InvalidInputError) as exc:
            list_alerts(store, **kw)  # type: ignore[arg-type]
        assert exc.value.field == field, kw
    assert store.calls == []


def test_list_alerts_pages_with_the_total() -> None:
    class _Counted(_RecordingStore):
        def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
            self.calls.append(sql)
            self.params = params
            return [{"n": 7}] if "count()" in sql else [{"alert_id": "A"}, {"alert_id": "B"}]

    store = _Counted()
    page = list_alerts(store, severity="critical", rule="shipping_gate", limit=2, offset=4)  # type: ignore[arg-type]
    assert page == AlertPage([{"alert_id": "A"}, {"alert_id": "B"}], 7, 4, 2)
    assert page.next_offset == 6
    assert store.params is not None and (store.params["sev"], store.params["rule"]) == (
        "CRITICAL",
        "SHIPPING_GATE",
    )
    assert AlertPage([{}], 7, 6, 2).next_offset is None
    # past the end: the total, no rows, one statement
    store.calls.clear()
    assert list_alerts(store, offset=7) == AlertPage([], 7, 7, 100)  # type: ignore[arg-type]
    assert len(store.calls) == 1


def test_the_engine_may_skip_decoding_every_type_outside_rule_types() -> None:
    """The engine decodes only RULE_TYPES; every other type must be a no-op for the rules,
    even while lots are held and NCs are open (when shipments, for one, do query)."""
    import copy

    from queries.alerts import AlertEvaluator
    from schemas.serde import AvroSerde
    from streams.alerts import RULE_TYPES
    from tests.samples import sample_events

    serde = AvroSerde()
    decoded = {e.type: serde.decode(serde.encode_event(e))[1] for e in sample_events()}
    assert RULE_TYPES < decoded.keys()
    store = _RecordingStore()
    ev = AlertEvaluator(store, AlertRules(nc_refresh_seconds=0))  # type: ignore[arg-type]
    for t in ("LotStatusChanged", "NonconformanceRaised"):
        ev.evaluate(t, decoded[t])
    before = copy.deepcopy(ev.state)
    store.calls.clear()
    for t, rec in decoded.items():
        if t not in RULE_TYPES:
            assert ev.evaluate(t, rec) == [], t
    assert store.calls == []
    assert repr(ev.state) == repr(before)


def test_notify_defaults_protect() -> None:
    import pydantic

    from streams.notify import NotifyConfig

    with pytest.raises(pydantic.ValidationError, match="a webhook needs a secret"):
        NotifyConfig(webhook_url="http://127.0.0.1:9/hook")  # unsigned alerts could be forged
    assert NotifyConfig().smtp_starttls  # e-mail goes over TLS unless turned off
