"""Alert rules (pure): (event, state, context) -> alerts. No I/O here.

The alert engine (``streams.alert_engine``) consumes the raw events topic, waits until the
sink has landed each event, and hands the batch to the evaluator (``queries.alerts``), which
reads the *context* a rule needs from ClickHouse (impact lists are never held in memory or in a
faust table) and calls the rule; the engine publishes what :meth:`AlertState.admit` lets
through to the alerts topic, and the notifier (``streams.notify``) delivers it.

State is small and rebuildable from ClickHouse at start-up (:class:`AlertState`): the latest
status of every lot that has one, the latest record of every nonconformance, per-part test
counts (the baseline failure rate) and the (version, fingerprint) of every alert raised.

Rules and their exact semantics
-------------------------------
* ``NC_RAISED`` (key ``NC_RAISED:<ncr_id>``): every NonconformanceRaised, any target kind,
  except disposition ``USE_AS_IS`` (accepted by the review board: nothing to contain; it also
  closes the NC for the shipping gate). Carries the recall impact of the same trigger
  (``queries.recall_impact``): unit count, by status / customer / site, the first
  ``max_units_listed`` units and ``reference`` = the API path of the full list.
  Severity: CRITICAL for a CRITICAL or MAJOR NC, WARNING for MINOR.
* ``HELD_LOT_USED`` (key ``HELD_LOT_USED:<lot>:<uii>:<work_order>:<operation>``, CRITICAL):
  an OperationCompleted consumed a lot whose current status (latest LotStatusChanged by
  event time) is HOLD / QUARANTINE / SCRAPPED and was set at or before the operation's
  event_time. Names serial, station, operator, work order, operation.
* ``LOT_HELD_AFTER_USE`` (key ``LOT_HELD_AFTER_USE:<lot>:<status>:<status time ms>``): a lot
  is put on HOLD / QUARANTINE / SCRAPPED and units already used it (whatever the order the
  events arrive in). Decision: the alert names **every unit that consumed the lot so far**
  (the recall impact of the lot: what must be contained), and lists apart the units that
  consumed it at or after the hold's event time (``used_while_held``: a real breach that
  arrived late). CRITICAL when any unit used it while held, WARNING otherwise. A consumption
  that lands later but predates the hold updates the alert (higher version).
* ``SUSPECT_LOT_YIELD`` (key ``SUSPECT_LOT_YIELD:<lot>:<part_number>``, WARNING): on a FAIL
  test of a unit of part P that consumed lot L: among the units of P made from L, the
  distinct units with a FAIL test in the window ``(t - yield_window_hours, t]`` are at least
  ``yield_min_failures`` and their share of the units tested in that window is at least
  ``yield_rate_factor`` x the baseline; baseline = the failure rate of all other tests of P
  (state counts minus the window's), floored at ``yield_baseline_floor``. Names the failing
  serials and their failed measurements. More failures later update the alert.
* ``OUT_OF_CALIBRATION`` (key ``OUT_OF_CALIBRATION:<bench>:<calibration_id>``, WARNING): a
  UnitTested with ``finished_at > calibration_due``. One alert per bench and calibration
  record, updated as more tests run on it; ``out_of_calibration`` is true and the units are
  listed. (The ``unit_tests`` table carries the same flag as a column.)
* ``SHIPPING_GATE`` (key ``SHIPPING_GATE:<uii>:<shipment_id>``, CRITICAL): a UnitShipped of a
  unit that contains (itself or any component, consumed lot or upstream lot, from the
  backward trace) a lot currently on HOLD / QUARANTINE / SCRAPPED, or that matches an open
  nonconformance (lot, supplier lot, supplier in window, serial, station / operator in window
  for its operations, bench in window for its tests). An NC is open unless its latest record
  has disposition USE_AS_IS.

Dedup: :meth:`AlertState.admit` emits version 1 for a new key, nothing when the same key
comes with the same content (the same trigger again, a replay), and version n+1 when the
content (the impact) changed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field

from schemas.alert import Alert, AlertRule, AlertSeverity
from schemas.uii import uii_of

__all__ = [
    "AlertRules",
    "AlertState",
    "Impact",
    "LotUsage",
    "LotYield",
    "BenchTests",
    "UnitContents",
    "LotState",
    "NcState",
    "HELD_STATUSES",
    "RULE_TYPES",
    "nc_raised",
    "held_lot_used",
    "lot_held_after_use",
    "suspect_lot_yield",
    "out_of_calibration",
    "is_out_of_calibration",
    "shipping_gate",
    "nc_matches",
    "trigger_kind",
    "recall_reference",
]

RULE_TYPES = frozenset(
    {"NonconformanceRaised", "LotStatusChanged", "OperationCompleted", "UnitTested", "UnitShipped"}
)
"""The event types the rules (and the state they keep) read; the alert engine checks only the
framing of the others (``AvroSerde.peek_type``) and does not decode their bodies."""

HELD_STATUSES = frozenset({"HOLD", "QUARANTINE", "SCRAPPED"})
_NC_SEVERITY = {
    "CRITICAL": AlertSeverity.CRITICAL,
    "MAJOR": AlertSeverity.CRITICAL,
    "MINOR": AlertSeverity.WARNING,
}


class AlertRules(BaseModel):
    """Alert thresholds (from ``TRACELINE_ALERTS_*`` through ``traceline.settings``)."""

    yield_min_failures: int = Field(3, description="failing units of a lot in the window, at least")
    yield_rate_factor: float = Field(2.0, description="lot failure rate >= this x the part's baseline")
    yield_window_hours: float = Field(24.0, description="sliding window of test time (hours)")
    yield_baseline_floor: float = Field(0.01, description="baseline failure rate used at least")
    max_units_listed: int = Field(
        1000, description="units listed in an alert; the full list is behind reference"
    )
    nc_refresh_seconds: float = Field(60.0, description="re-evaluate open NC impacts this often (0: never)")


# ----------------------------------------------------------------------------- context


@dataclass(frozen=True)
class Impact:
    """A recall impact, summarised (from ``queries.recall_impact``)."""

    unit_count: int
    units: list[str]
    by_status: dict[str, int]
    by_customer: dict[str, int]
    by_site: dict[str, int]
    reference: str | None = None


@dataclass(frozen=True)
class LotUsage:
    impact: Impact  # every unit that used the lot (incl. via lots made from it)
    used_while_held: list[dict[str, Any]]  # consumptions at or after the hold: uii, event_time, station...


@dataclass(frozen=True)
class LotYield:
    tested: int  # distinct units of the part made from the lot, tested in the window
    failing: list[dict[str, Any]]  # uii, finished_at, failed measurements (name, value, limits)


@dataclass(frozen=True)
class BenchTests:
    count: int  # tests on the bench past this calibration's due date
    units: list[str]  # tested units (at most the listing cap)
    unit_count: int = 0  # all of them


@dataclass(frozen=True)
class UnitContents:
    """What a unit holds (backward trace): components, lots (incl. upstream), work, tests."""

    units: frozenset[str]
    lots: frozenset[str]
    operations: tuple[tuple[str, str, datetime, datetime], ...] = ()  # station, operator, start, end
    tests: tuple[tuple[str, datetime, datetime], ...] = ()  # bench, start, end
    materials: tuple[tuple[str, str, datetime], ...] = ()  # supplier, supplier lot, received at


@dataclass(frozen=True)
class LotState:
    status: str
    time: datetime
    event_id: str
    reason: str = ""
    site: str = ""
    program: str = ""

    @classmethod
    def from_event(cls, rec: Mapping[str, Any]) -> LotState:
        """The state a decoded ``LotStatusChanged`` event puts its lot in."""
        return cls(
            rec["status"],
            rec["event_time"],
            rec["event_id"],
            rec.get("reason") or "",
            rec.get("site") or "",
            rec.get("program") or "",
        )


@dataclass(frozen=True)
class NcState:
    ncr_id: str
    target_kind: str
    target_id: str
    window_start: datetime | None
    window_end: datetime | None
    severity: str
    disposition: str
    time: datetime
    event_id: str
    description: str = ""
    site: str = ""
    program: str = ""

    @property
    def open(self) -> bool:
        return self.disposition != "USE_AS_IS"


# ----------------------------------------------------------------------------- state


@dataclass
class AlertState:
    lots: dict[str, LotState] = field(default_factory=dict)
    ncs: dict[str, NcState] = field(default_factory=dict)
    part_tests: dict[str, list[int]] = field(default_factory=dict)  # part -> [tests, fails]
    raised: dict[str, tuple[int, str]] = field(default_factory=dict)  # alert_id -> (version, fp)

    def apply(self, type_name: str, rec: Mapping[str, Any]) -> None:
        """Fold one event into the state (idempotent for lots and NCs; last writer by time)."""
        if type_name == "LotStatusChanged":
            self.set_lot(rec["lot_id"], LotState.from_event(rec))
        elif type_name == "NonconformanceRaised":
            self.set_nc(
                NcState(
                    rec["ncr_id"],
                    rec["target_kind"],
                    rec["target_id"],
                    rec.get("window_start"),
                    rec.get("window_end"),
                    rec["severity"],
                    rec["disposition"],
                    rec["event_time"],
                    rec["event_id"],
                    rec.get("description") or "",
                    rec.get("site") or "",
                    rec.get("program") or "",
                )
            )
        elif type_name == "UnitTested":
            c = self.part_tests.setdefault(rec["unit"]["part_number"], [0, 0])
            c[0] += 1
            c[1] += rec["verdict"] == "FAIL"

    def set_lot(self, lot_id: str, new: LotState) -> None:
        old = self.lots.get(lot_id)
        if old is None or (new.time, new.event_id) >= (old.time, old.event_id):
            self.lots[lot_id] = new

    def set_nc(self, new: NcState) -> None:
        old = self.ncs.get(new.ncr_id)
        if old is None or (new.time, new.event_id) >= (old.time, old.event_id):
            self.ncs[new.ncr_id] = new

    def held(self, lot_id: str) -> LotState | None:
        s = self.lots.get(lot_id)
        return s if s is not None and s.status in HELD_STATUSES else None

    @property
    def any_held(self) -> bool:
        return any(s.status in HELD_STATUSES for s in self.lots.values())

    def open_ncs(self) -> list[NcState]:
        return [n for n in self.ncs.values() if n.open]

    def admit(self, alert: Alert | None) -> Alert | None:
        """The version to publish, or None when this exact alert was raised already."""
        if alert is None:
            return None
        fp = alert.fingerprint()
        prev = self.raised.get(alert.alert_id)
        if prev is not None and prev[1] == fp:
            return None
        version = 1 if prev is None else prev[0] + 1
        self.raised[alert.alert_id] = (version, fp)
        return alert.model_copy(update={"version": version})

    def remember(self, alert_id: str, version: int, fingerprint: str) -> None:
        """Reload one raised alert (start-up, from the alerts table)."""
        prev = self.raised.get(alert_id)
        if prev is None or version > prev[0]:
            self.raised[alert_id] = (version, fingerprint)


# ----------------------------------------------------------------------------- helpers


def _ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def _iso(t: datetime | None) -> str:
    return t.astimezone(UTC).isoformat() if t is not None else ""


def trigger_kind(target_kind: str) -> str:
    """NonconformanceRaised.target_kind -> ``queries.Trigger`` kind."""
    return target_kind.lower()


def recall_reference(kind: str, id_: str, start: datetime | None = None, end: datetime | None = None) -> str:
    from urllib.parse import urlencode

    q: dict[str, str] = {"kind": kind, "id": id_}
    if start is not None:
        q["from"] = _iso(start)
    if end is not None:
        q["to"] = _iso(end)
    return "/recall?" + urlencode(q)


def _base(
    rule: AlertRule,
    severity: AlertSeverity,
    key: str,
    title: str,
    subject_kind: str,
    subject_id: str,
    type_name: str,
    rec: Mapping[str, Any],
    now: datetime,
    **kw: Any,
) -> Alert:
    return Alert(
        alert_id=key,
        rule=rule,
        severity=severity,
        title=title,
        subject_kind=subject_kind,
        subject_id=subject_id,
        raised_at=now,
        event_time=rec["event_time"],
        trigger_event_id=rec["event_id"],
        trigger_type=type_name,
        site=rec.get("site") or "",
        program=rec.get("program") or "",
        **kw,
    )


def _impact_fields(impact: Impact, cap: int) -> dict[str, Any]:
    return {
        "unit_count": impact.unit_count,
        "units": sorted(impact.units)[:cap],
        "by_status": dict(impact.by_status),
        "by_customer": dict(impact.by_customer),
        "by_site": dict(impact.by_site),
        "reference": impact.reference,
    }


# ----------------------------------------------------------------------------- rules


def nc_raised(rec: Mapping[str, Any], impact: Impact, cfg: AlertRules, now: datetime) -> Alert | None:
    if rec["disposition"] == "USE_AS_IS":
        return None
    kind = trigger_kind(rec["target_kind"])
    n = impact.unit_count
    return _base(
        AlertRule.NC_RAISED,
        _NC_SEVERITY.get(rec["severity"], AlertSeverity.WARNING),
        f"NC_RAISED:{rec['ncr_id']}",
        f"{rec['severity']} nonconformance {rec['ncr_id']} on {kind} {rec['target_id']}:"
        f" {n} unit(s) impacted",
        kind,
        rec["target_id"],
        "NonconformanceRaised",
        rec,
        now,
        **_impact_fields(impact, cfg.max_units_listed),
        details={
            "ncr_id": rec["ncr_id"],
            "nc_severity": rec["severity"],
            "disposition": rec["disposition"],
            "description": rec.get("description") or "",
            "window_start": _iso(rec.get("window_start")),
            "window_end": _iso(rec.get("window_end")),
        },
    )


def held_lot_used(rec: Mapping[str, Any], state: AlertState, now: datetime) -> tuple[list[Alert], list[str]]:
    """Alerts for consumed lots on hold; and lots whose hold is *later* than this consumption
    (the caller re-evaluates their LOT_HELD_AFTER_USE alert: one more unit already used them)."""
    alerts: list[Alert] = []
    recheck: list[str] = []
    uii = uii_of(rec["unit"])
    for lq in rec.get("consumed_lots") or ():
        lot = lq["lot_id"]
        hold = state.held(lot)
        if hold is None:
            continue
        if hold.time > rec["event_time"]:
            recheck.append(lot)
            continue
        alerts.append(
            _base(
                AlertRule.HELD_LOT_USED,
                AlertSeverity.CRITICAL,
                f"HELD_LOT_USED:{lot}:{uii}:{rec['work_order']}:{rec['operation']}",
                f"lot {lot} ({hold.status}) used on {uii} at {rec['station_id']} by {rec['operator_id']}"
                f" (WO {rec['work_order']})",
                "lot",
                lot,
                "OperationCompleted",
                rec,
                now,
                unit_count=1,
                units=[uii],
                reference=recall_reference("lot", lot),
                details={
                    "serial": uii,
                    "station_id": rec["station_id"],
                    "operator_id": rec["operator_id"],
                    "work_order": rec["work_order"],
                    "operation": rec["operation"],
                    "lot_status": hold.status,
                    "status_reason": hold.reason,
                    "status_since": _iso(hold.time),
                    "quantity": str(lq.get("quantity")),
                },
            )
        )
    return alerts, recheck


def lot_held_after_use(
    lot_id: str, hold: LotState, usage: LotUsage, cfg: AlertRules, now: datetime
) -> Alert | None:
    if hold.status not in HELD_STATUSES or usage.impact.unit_count == 0:
        return None
    breach = sorted(usage.used_while_held, key=lambda r: (r["uii"], str(r.get("event_time"))))
    severity = AlertSeverity.CRITICAL if breach else AlertSeverity.WARNING
    n = usage.impact.unit_count
    title = f"lot {lot_id} put on {hold.status}: {n} unit(s) already used it"
    if breach:
        title += f", {len({r['uii'] for r in breach})} after the {hold.status.lower()}"
    rec = {"event_time": hold.time, "event_id": hold.event_id, "site": hold.site, "program": hold.program}
    return _base(
        AlertRule.LOT_HELD_AFTER_USE,
        severity,
        f"LOT_HELD_AFTER_USE:{lot_id}:{hold.status}:{_ms(hold.time)}",
        title,
        "lot",
        lot_id,
        "LotStatusChanged",
        rec,
        now,
        **_impact_fields(usage.impact, cfg.max_units_listed),
        details={
            "lot_status": hold.status,
            "status_reason": hold.reason,
            "status_since": _iso(hold.time),
            "used_while_held": json.dumps(
                [
                    {k: _iso(v) if isinstance(v, datetime) else v for k, v in r.items()}
                    for r in breach[: cfg.max_units_listed]
                ],
                sort_keys=True,
            ),
            "used_while_held_count": str(len(breach)),
        },
    )


def suspect_lot_yield(
    rec: Mapping[str, Any],
    lot_id: str,
    yld: LotYield,
    baseline: tuple[int, int],
    cfg: AlertRules,
    now: datetime,
) -> Alert | None:
    """``baseline`` = (tests, fails) of the part over everything seen (the state's counts)."""
    part = rec["unit"]["part_number"]
    failures = len({f["uii"] for f in yld.failing})
    if rec["verdict"] != "FAIL" or failures < cfg.yield_min_failures or yld.tested <= 0:
        return None
    rate = failures / yld.tested
    other_tests = baseline[0] - yld.tested
    other_fails = baseline[1] - failures
    base_rate = other_fails / other_tests if other_tests > 0 and other_fails > 0 else 0.0
    base = max(base_rate, cfg.yield_baseline_floor)
    if rate < cfg.yield_rate_factor * base:
        return None
    failing = sorted(yld.failing, key=lambda f: f["uii"])
    return _base(
        AlertRule.SUSPECT_LOT_YIELD,
        AlertSeverity.WARNING,
        f"SUSPECT_LOT_YIELD:{lot_id}:{part}",
        f"lot {lot_id}: {failures} of {yld.tested} {part} unit(s) failed test within "
        f"{cfg.yield_window_hours:g} h ({rate:.0%}, >= {cfg.yield_rate_factor:g}x the part's baseline)",
        "lot",
        lot_id,
        "UnitTested",
        rec,
        now,
        unit_count=failures,
        units=sorted({f["uii"] for f in failing})[: cfg.max_units_listed],
        reference=recall_reference("lot", lot_id),
        details={
            "part_number": part,
            "failures": str(failures),
            "tested": str(yld.tested),
            "failure_rate": f"{rate:.4f}",
            "baseline_rate": f"{base:.4f}",
            "window_hours": f"{cfg.yield_window_hours:g}",
            "failing": json.dumps(
                [
                    {k: _iso(v) if isinstance(v, datetime) else v for k, v in f.items()}
                    for f in failing[: cfg.max_units_listed]
                ],
                sort_keys=True,
            ),
        },
    )


def is_out_of_calibration(rec: Mapping[str, Any]) -> bool:
    return bool(rec["finished_at"] > rec["calibration_due"])


def out_of_calibration(
    rec: Mapping[str, Any], tests: BenchTests, cfg: AlertRules, now: datetime
) -> Alert | None:
    if not is_out_of_calibration(rec):
        return None
    uii = uii_of(rec["unit"])
    units = sorted(set(tests.units) | {uii})
    count = max(tests.count, 1)
    bench = rec["bench_id"]
    return _base(
        AlertRule.OUT_OF_CALIBRATION,
        AlertSeverity.WARNING,
        f"OUT_OF_CALIBRATION:{bench}:{rec['calibration_id']}",
        f"bench {bench} used past its calibration due date {_iso(rec['calibration_due'])}: "
        f"{count} test(s), last on {uii}",
        "bench",
        bench,
        "UnitTested",
        rec,
        now,
        unit_count=max(tests.unit_count, len(units)),
        units=units[: cfg.max_units_listed],
        reference=recall_reference("bench", bench, rec["calibration_due"]),
        out_of_calibration=True,
        details={
            "calibration_id": rec["calibration_id"],
            "calibration_due": _iso(rec["calibration_due"]),
            "tests": str(count),
            "last_serial": uii,
            "last_finished_at": _iso(rec["finished_at"]),
            "procedure": f"{rec['procedure_id']} {rec['procedure_version']}",
            "verdict": rec["verdict"],
        },
    )


def _overlaps(start: datetime, end: datetime, ws: datetime | None, we: datetime | None) -> bool:
    return (ws is None or end >= ws) and (we is None or start <= we)


def _within(t: datetime, ws: datetime | None, we: datetime | None) -> bool:
    return (ws is None or t >= ws) and (we is None or t <= we)


def nc_matches(nc: NcState, c: UnitContents) -> bool:
    """Whether a unit with contents ``c`` is in the impact of ``nc`` (the backward statement
    of ``queries.recall_impact``'s forward rules)."""
    kind, tid, ws, we = nc.target_kind, nc.target_id, nc.window_start, nc.window_end
    if kind == "LOT":
        return tid in c.lots
    if kind == "SERIAL":
        return tid in c.units
    if kind == "SUPPLIER_LOT":
        supplier, _, slot = tid.partition(":")
        return any(s == supplier and sl == slot for s, sl, _t in c.materials)
    if kind == "SUPPLIER":
        return any(s == tid and _within(t, ws, we) for s, _sl, t in c.materials)
    if kind in ("STATION", "OPERATOR"):
        i = 0 if kind == "STATION" else 1
        return any(op[i] == tid and _overlaps(op[2], op[3], ws, we) for op in c.operations)
    if kind == "BENCH":
        return any(b == tid and _overlaps(s, e, ws, we) for b, s, e in c.tests)
    return False


def shipping_gate(
    rec: Mapping[str, Any], state: AlertState, contents: UnitContents, cfg: AlertRules, now: datetime
) -> Alert | None:
    uii = uii_of(rec["unit"])
    held = {lot: state.lots[lot] for lot in sorted(contents.lots) if state.held(lot)}
    ncs = sorted((n for n in state.open_ncs() if nc_matches(n, contents)), key=lambda n: n.ncr_id)
    if not held and not ncs:
        return None
    why = [f"lot {lot} {s.status}" for lot, s in held.items()] + [f"NC {n.ncr_id}" for n in ncs]
    return _base(
        AlertRule.SHIPPING_GATE,
        AlertSeverity.CRITICAL,
        f"SHIPPING_GATE:{uii}:{rec['shipment_id']}",
        f"{uii} shipped to {rec['customer_id']} (shipment {rec['shipment_id']}) despite " + ", ".join(why),
        "unit",
        uii,
        "UnitShipped",
        rec,
        now,
        unit_count=1,
        units=[uii],
        reference=f"/trace/backward?serial={uii}",
        details={
            "serial": uii,
            "shipment_id": rec["shipment_id"],
            "customer_id": rec["customer_id"],
            "destination_site": rec["destination_site"],
            "held_lots": json.dumps({lot: s.status for lot, s in held.items()}, sort_keys=True),
            "open_ncrs": json.dumps([n.ncr_id for n in ncs]),
        },
    )


def window_start(rec: Mapping[str, Any], cfg: AlertRules) -> datetime:
    """Start (exclusive) of the yield window ending at this test."""
    end: datetime = rec["finished_at"]
    return end - timedelta(hours=cfg.yield_window_hours)
