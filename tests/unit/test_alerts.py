"""Alert rules (pure, no I/O): each fires exactly once on its trigger, a near miss does not."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import fastavro

from schemas.alert import Alert, alert_schema, decode_alert, encode_alert
from streams.alerts import (
    AlertRules,
    AlertState,
    BenchTests,
    Impact,
    LotUsage,
    LotYield,
    UnitContents,
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


def nc(ncr: str, kind: str, target: str, disposition: str = "PENDING", eid: str = "nc-1") -> dict[str, Any]:
    return {
        **_h(eid, T0),
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


def shipped(uii: str, eid: str = "sh-1") -> dict[str, Any]:
    return {
        **_h(eid, T0 + timedelta(hours=3)),
        "unit": _u(uii),
        "shipment_id": "SHP-1",
        "customer_id": "CUST-X",
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


# ----------------------------------------------------------------------------- held lot used


def test_held_lot_used_fires_once_naming_serial_station_operator_wo() -> None:
    st = AlertState()
    st.apply("LotStatusChanged", status("L1", "HOLD", T0))
    op = operation("PCB:1", ["L1", "L2"], T0 + timedelta(hours=1))
    alerts, recheck = held_lot_used(op, st, NOW)
    assert recheck == []
    fired = _fired(st, alerts)
    assert len(fired) == 1
    d = fired[0].details
    assert fired[0].severity == "CRITICAL" and fired[0].subject_id == "L1"
    assert (d["serial"], d["station_id"], d["operator_id"], d["work_order"]) == (
        "PCB:1",
        "SMT-1",
        "OP-9",
        "WO-7",
    )
    # the duplicate event, and a re-send of it with a new event id: nothing new
    assert _fired(st, held_lot_used(op, st, NOW)[0]) == []
    assert _fired(st, held_lot_used({**op, "event_id": "op-1b"}, st, NOW)[0]) == []


def test_held_lot_used_near_miss_released_lot() -> None:
    st = AlertState()
    st.apply("LotStatusChanged", status("L1", "HOLD", T0, "st-1"))
    st.apply("LotStatusChanged", status("L1", "RELEASED", T0 + timedelta(minutes=30), "st-2"))
    # an older HOLD arriving late does not override the newer RELEASE
    st.apply("LotStatusChanged", status("L1", "QUARANTINE", T0 - timedelta(hours=1), "st-0"))
    assert held_lot_used(operation("PCB:1", ["L1"], T0 + timedelta(hours=1)), st, NOW) == ([], [])


def test_consumption_before_the_hold_asks_for_the_late_hold_alert() -> None:
    st = AlertState()
    st.apply("LotStatusChanged", status("L1", "HOLD", T0 + timedelta(hours=2)))
    assert held_lot_used(operation("PCB:1", ["L1"], T0), st, NOW) == ([], ["L1"])


def test_late_hold_names_every_unit_that_used_the_lot() -> None:
    st = AlertState()
    rec = status("L1", "QUARANTINE", T0 + timedelta(hours=2))
    st.apply("LotStatusChanged", rec)
    hold = st.lots["L1"]
    breach = [{"uii": "PCB:3", "event_time": T0 + timedelta(hours=3), "station_id": "SMT-1"}]
    usage = LotUsage(IMPACT, breach)
    fired = _fired(st, [lot_held_after_use("L1", hold, usage, CFG, NOW)])
    assert len(fired) == 1
    a = fired[0]
    assert a.rule == "LOT_HELD_AFTER_USE" and a.severity == "CRITICAL"
    assert a.units == ["PCB:1", "PCB:2", "PCB:3"] and a.unit_count == 3
    assert json.loads(a.details["used_while_held"])[0]["uii"] == "PCB:3"
    assert _fired(st, [lot_held_after_use("L1", hold, usage, CFG, NOW)]) == []
    # no breach: only a containment warning
    warn = lot_held_after_use("L2", hold, LotUsage(IMPACT, []), CFG, NOW)
    assert warn is not None and warn.severity == "WARNING"


def test_hold_on_an_unused_lot_does_not_fire() -> None:
    st = AlertState()
    st.apply("LotStatusChanged", status("L9", "HOLD", T0))
    empty = LotUsage(Impact(0, [], {}, {}, {}, "/r"), [])
    assert lot_held_after_use("L9", st.lots["L9"], empty, CFG, NOW) is None


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


def test_out_of_calibration_near_miss_on_the_due_instant() -> None:
    due = T0 + timedelta(days=1)
    assert out_of_calibration(unit_tested("PCB:1", "PASS", due, due), BenchTests(0, [], 0), CFG, NOW) is None


# ----------------------------------------------------------------------------- shipping gate


def test_shipping_gate_fires_for_held_lot_and_open_nc() -> None:
    st = AlertState()
    st.apply("LotStatusChanged", status("L1", "HOLD", T0))
    st.apply("NonconformanceRaised", nc("NCR-5", "SERIAL", "DIE:9"))
    contents = UnitContents(units=frozenset({"SYS:1", "DIE:9"}), lots=frozenset({"L1", "L0"}))
    fired = _fired(st, [shipping_gate(shipped("SYS:1"), st, contents, CFG, NOW)])
    assert len(fired) == 1 and fired[0].severity == "CRITICAL"
    assert json.loads(fired[0].details["held_lots"]) == {"L1": "HOLD"}
    assert json.loads(fired[0].details["open_ncrs"]) == ["NCR-5"]
    assert _fired(st, [shipping_gate(shipped("SYS:1", "sh-dup"), st, contents, CFG, NOW)]) == []


def test_shipping_gate_near_misses() -> None:
    st = AlertState()
    st.apply("LotStatusChanged", status("L1", "RELEASED", T0))
    st.apply("NonconformanceRaised", nc("NCR-6", "LOT", "L1"))
    st.apply("NonconformanceRaised", nc("NCR-6", "LOT", "L1", "USE_AS_IS", "nc-2"))  # closed by MRB
    st.apply("NonconformanceRaised", nc("NCR-7", "LOT", "L-OTHER"))  # open, but not in this unit
    contents = UnitContents(units=frozenset({"SYS:1"}), lots=frozenset({"L1"}))
    assert shipping_gate(shipped("SYS:1"), st, contents, CFG, NOW) is None


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
    assert sign(body, "k").startswith("sha256=") and verify(body, "k", sign(body, "k"))
    assert not verify(body, "other", sign(body, "k"))


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
