"""Alert rules (pure): (event, state, context) -> alerts. No I/O here.

The alert engine (``streams.alert_engine``) hands each landed batch to the evaluator
(``queries.alerts``), which reads the *context* a rule needs from ClickHouse (impact lists are
never held in memory) and calls the rule; the engine publishes what :meth:`AlertState.admit`
lets through, and the notifier (``streams.notify``) delivers it.

State is small and rebuildable from ClickHouse at start-up (:class:`AlertState`): the status
history of every lot that has one, the latest record of every nonconformance, per-part test
counts (the baseline failure rate), the (version, fingerprint) of every alert raised and the
shipments listed by each shipping-gate alert.

One alert per incident
----------------------
An alert is keyed by its incident (``alert_id``), never by the triggering event: an NC, a
lot's held period, a bench's calibration lapse, a gating cause, a suspect lot. Later events of
the incident update it in place (same ``alert_id``, version n+1, new fingerprint, the list
grown); its content comes from the incident (store and state), so a replay changes nothing.

Severity: what it means, for every rule
---------------------------------------
* ``CRITICAL``: nonconforming or suspect material may have reached a customer, or is being
  used now: a unit shipped past the gate, a held lot consumed on the floor, an NC or a hold
  whose impact includes shipped units (or units that used the lot while it was held).
* ``WARNING``: containment is needed and nothing known has left the plant: an open NC or a
  hold whose impacted units are all in work or in stock, tests run on a bench past its
  calibration (re-verify the units), a lot whose yield is suspect.
* ``INFO``: for the record: an NC the review board released (USE_AS_IS: accepted, a closure
  of an alerted NC; REWORK / REPAIR: the rework is the containment) or one whose material no
  unit used (SCRAP / RETURN_TO_SUPPLIER with no impact), a hold released by the review board.

The severity of a version says what was known when it was raised: an update can raise it
(impacted units shipped) or lower it (the NC closed). The NC's own classification (MINOR /
MAJOR / CRITICAL) is in the title and ``details["nc_severity"]``; it does not set the alert's.

The gate (what may not ship)
----------------------------
A lot gates while its latest status (by event time) is HOLD / QUARANTINE / SCRAPPED; its
*held period* runs from the first held status after a non-held one to the RELEASED that ends
it (HOLD then QUARANTINE then SCRAPPED is one period). An NC gates while its latest record's
disposition is PENDING (the review board has not decided), SCRAP or RETURN_TO_SUPPLIER (the
material must not be used); USE_AS_IS (accepted), REWORK and REPAIR (reworked / repaired and
re-verified before it moves on) release it. ``NcState.open`` means "gates".

Rules and their exact semantics
-------------------------------
* ``NC_RAISED`` (key ``NC_RAISED:<ncr_id>``): the first record of an NC whose disposition is
  not USE_AS_IS raises it; every later record of the NC (a new disposition) updates it from
  the NC's latest record, a USE_AS_IS one included (closed: INFO); so does a change of its
  impact (open NCs are re-evaluated, ``refresh_open_ncs``). Carries the recall impact of the
  same trigger (``queries.recall_impact``): unit count, by status / customer / site, the first
  ``max_units_listed`` units and ``reference`` = the API path of the full list. Severity:
  INFO when released (USE_AS_IS, REWORK, REPAIR); else CRITICAL if any impacted unit shipped;
  else INFO for SCRAP / RETURN_TO_SUPPLIER with no unit impacted; else WARNING.
* ``LOT_HELD_AFTER_USE`` (key ``LOT_HELD_AFTER_USE:<lot>:<held since ms>``): a lot is put on
  HOLD / QUARANTINE / SCRAPPED and units already used it (whatever the order the events
  arrive in). The alert names **every unit that consumed the lot so far** (the recall impact
  of the lot: what must be contained), and lists apart the units that consumed it during the
  held period (``used_while_held``: a real breach that arrived late). A later status of the
  same period (QUARANTINE, SCRAPPED) and a consumption that lands later but predates the hold
  update it; so does the RELEASED that ends the period (INFO). Severity: CRITICAL when a unit
  used it while held or an impacted unit shipped, else WARNING; INFO once released.
* ``HELD_LOT_USED`` (key ``HELD_LOT_USED:<lot>:<held since ms>``, CRITICAL): an
  OperationCompleted consumed a lot whose current held period began at or before the
  operation's event time. One alert per lot and held period, listing every consumption in
  the period so far (serial, station, operator, work order, time; read from the store), the
  latest one in the title; each further consumption updates it.
* ``SUSPECT_LOT_YIELD`` (key ``SUSPECT_LOT_YIELD:<lot>:<part_number>``, WARNING): on a FAIL
  test of a unit of part P that consumed lot L: among the units of P made from L, the
  distinct units with a FAIL test in the window ``(t - yield_window_hours, t]`` are at least
  ``yield_min_failures`` and their share of the units tested in that window is at least
  ``yield_rate_factor`` x the baseline; baseline = the failure rate of all other tests of P
  (state counts minus the window's), floored at ``yield_baseline_floor``. Names the failing
  serials and their failed measurements. More failures later update the alert.
* ``OUT_OF_CALIBRATION`` (key ``OUT_OF_CALIBRATION:<bench>:<calibration_id>``, WARNING): a
  UnitTested with ``finished_at > calibration_due``. One alert per bench and calibration
  record listing every test run on it past due (serial, finish time, verdict) and the units
  tested, read from the store; each further test updates it. ``out_of_calibration`` is true.
* ``SHIPPING_GATE`` (key ``SHIPPING_GATE:NC:<ncr_id>`` or
  ``SHIPPING_GATE:LOT:<lot>:<held since ms>``, CRITICAL): a UnitShipped of a unit that contains
  (itself or any component, consumed lot or upstream lot, from the backward trace) a lot in a
  held period, or that matches a gating NC (lot, supplier lot, supplier in window, serial,
  station / operator in window for its operations, bench in window for its tests). One alert
  per gating cause, listing the shipments it let through (serial, shipment, customer,
  destination, time); each further shipment under the same cause updates it. A shipment
  gated by two causes is in both.
* ``LEDGER_GAP``, ``EVENT_ID_CONFLICT``: the pipeline's own, not from an event
  (``streams.alert_engine.ledger_gap``, ``event_id_conflicts``).

Dedup: :meth:`AlertState.admit` emits version 1 for a new key, nothing for the same content
again, and version n+1 when the content changed.
"""

from __future__ import annotations

import bisect
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from pydantic import BaseModel, Field

from schemas.alert import Alert, AlertRule, AlertSeverity
from schemas.uii import uii_of

# fmt: off
__all__ = [
    "AlertRules", "AlertState", "Impact", "LotUsage", "LotYield", "BenchTests", "UnitContents", "LotState",
    "HoldPeriod", "NcState", "HELD_STATUSES", "RELEASING_DISPOSITIONS", "RULE_TYPES", "nc_raised",
    "nc_severity", "consumed_held", "held_lot_used", "lot_held_after_use", "suspect_lot_yield",
    "out_of_calibration", "is_out_of_calibration", "shipping_gate", "nc_matches", "trigger_kind",
    "recall_reference",
]
# fmt: on

RULE_TYPES = frozenset(
    {"NonconformanceRaised", "LotStatusChanged", "OperationCompleted", "UnitTested", "UnitShipped"}
)
"""The event types the rules (and the state they keep) read; the alert engine checks only the
framing of the others (``AvroSerde.peek_type``) and does not decode their bodies."""

HELD_STATUSES = frozenset({"HOLD", "QUARANTINE", "SCRAPPED"})
RELEASING_DISPOSITIONS = frozenset({"USE_AS_IS", "REWORK", "REPAIR"})
"""NC dispositions that release the material: an NC whose latest record has one does not gate."""


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
    used_while_held: list[dict[str, Any]]  # consumptions in the held period: uii, event_time, station...


@dataclass(frozen=True)
class LotYield:
    tested: int  # distinct units of the part made from the lot, tested in the window
    failing: list[dict[str, Any]]  # uii, finished_at, failed measurements (name, value, limits)


@dataclass(frozen=True)
class BenchTests:
    count: int  # tests on the bench past this calibration's due date
    units: list[str]  # tested units (at most the listing cap)
    unit_count: int = 0  # all of them
    tests: list[dict[str, Any]] = field(default_factory=list)  # serial, finished_at, verdict (capped)
    programs: list[str] = field(default_factory=list)  # programmes of those tests


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
        return cls(rec["status"], rec["event_time"], rec["event_id"], rec.get("reason") or "",
                   rec.get("site") or "", rec.get("program") or "")  # fmt: skip

    @property
    def order(self) -> tuple[datetime, str]:
        return (self.time, self.event_id)


@dataclass(frozen=True)
class HoldPeriod:
    """A lot's held period: its first held status, its latest one, and the release ending it."""

    start: LotState
    last: LotState
    end: LotState | None = None  # the RELEASED that ended it; None: still held

    @property
    def since(self) -> datetime:
        return self.start.time

    @property
    def status(self) -> str:
        return self.last.status

    def key(self, lot_id: str) -> str:
        return f"{lot_id}:{_ms(self.since)}"


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

    @classmethod
    def from_event(cls, rec: Mapping[str, Any]) -> NcState:
        """The state a decoded ``NonconformanceRaised`` event puts its NC in."""
        return cls(
            rec["ncr_id"], rec["target_kind"], rec["target_id"], rec.get("window_start"),
            rec.get("window_end"), rec["severity"], rec["disposition"], rec["event_time"], rec["event_id"],
            rec.get("description") or "", rec.get("site") or "", rec.get("program") or "",
        )  # fmt: skip

    @property
    def open(self) -> bool:
        """Gates shipments (and its impact is re-evaluated): the material is not released."""
        return self.disposition not in RELEASING_DISPOSITIONS

    def as_record(self) -> dict[str, Any]:
        """The NonconformanceRaised record this state is the latest of."""
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in ("time",)}
        return {**d, "event_time": self.time}


# ----------------------------------------------------------------------------- state


def _shipment_key(entry: Mapping[str, str]) -> str:
    return f"{entry['serial']}@{entry['shipment_id']}"


@dataclass
class AlertState:
    lots: dict[str, LotState] = field(default_factory=dict)  # latest status per lot
    lot_history: dict[str, list[LotState]] = field(default_factory=dict)  # by (time, event_id)
    ncs: dict[str, NcState] = field(default_factory=dict)
    part_tests: dict[str, list[int]] = field(default_factory=dict)  # part -> [tests, fails]
    raised: dict[str, tuple[int, str]] = field(default_factory=dict)  # alert_id -> (version, fp)
    gated: dict[str, dict[str, dict[str, str]]] = field(default_factory=dict)  # gate alert -> shipments

    def apply(self, type_name: str, rec: Mapping[str, Any]) -> None:
        """Fold one event into the state (idempotent for lots and NCs; last writer by time)."""
        if type_name == "LotStatusChanged":
            self.set_lot(rec["lot_id"], LotState.from_event(rec))
        elif type_name == "NonconformanceRaised":
            self.set_nc(NcState.from_event(rec))
        elif type_name == "UnitTested":
            c = self.part_tests.setdefault(rec["unit"]["part_number"], [0, 0])
            c[0] += 1
            c[1] += rec["verdict"] == "FAIL"

    def set_lot(self, lot_id: str, new: LotState) -> None:
        hist = self.lot_history.setdefault(lot_id, [])
        if any(s.event_id == new.event_id for s in hist):
            return
        bisect.insort(hist, new, key=lambda s: s.order)
        self.lots[lot_id] = hist[-1]

    def set_nc(self, new: NcState) -> None:
        old = self.ncs.get(new.ncr_id)
        if old is None or (new.time, new.event_id) >= (old.time, old.event_id):
            self.ncs[new.ncr_id] = new

    def hold_periods(self, lot_id: str) -> list[HoldPeriod]:
        """The lot's held periods, oldest first."""
        out: list[HoldPeriod] = []
        cur: HoldPeriod | None = None
        for s in self.lot_history.get(lot_id, ()):
            if s.status in HELD_STATUSES:
                cur = HoldPeriod(s, s) if cur is None else HoldPeriod(cur.start, s)
            elif cur is not None:
                out.append(HoldPeriod(cur.start, cur.last, s))
                cur = None
        if cur is not None:
            out.append(cur)
        return out

    def period_of(self, lot_id: str, status: LotState) -> HoldPeriod | None:
        """The held period a status record belongs to (a held one), or ends (a release)."""
        for p in self.hold_periods(lot_id):
            if p.start.order <= status.order <= p.last.order or p.end == status:
                return p
        return None

    def held(self, lot_id: str) -> HoldPeriod | None:
        """The lot's current held period, if its latest status is a held one."""
        s = self.lots.get(lot_id)
        if s is None or s.status not in HELD_STATUSES:
            return None
        return self.hold_periods(lot_id)[-1]

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

    def remember_gate(self, alert_id: str, shipments_json: str) -> None:
        """Reload the shipments a shipping-gate alert listed (its ``details["shipments"]``; at
        most ``max_units_listed`` of them were listed)."""
        listing = self.gated.setdefault(alert_id, {})
        for e in json.loads(shipments_json or "[]"):
            listing[_shipment_key(e)] = {k: str(v) for k, v in e.items()}


# ----------------------------------------------------------------------------- helpers


def _ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def _iso(t: datetime | None) -> str:
    return t.astimezone(UTC).isoformat() if t is not None else ""


def _jsonable(rows: list[dict[str, Any]]) -> str:
    return json.dumps(
        [{k: _iso(v) if isinstance(v, datetime) else v for k, v in r.items()} for r in rows], sort_keys=True
    )


def trigger_kind(target_kind: str) -> str:
    """NonconformanceRaised.target_kind -> ``queries.Trigger`` kind."""
    return target_kind.lower()


def recall_reference(kind: str, id_: str, start: datetime | None = None, end: datetime | None = None) -> str:
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
    kw.setdefault("site", rec.get("site") or "")
    kw.setdefault("program", rec.get("program") or "")
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


def _words(enum_value: str) -> str:
    return enum_value.lower().replace("_", " ")


def _shipped(impact: Impact) -> int:
    return int(impact.by_status.get("shipped", 0))


# ----------------------------------------------------------------------------- rules


def nc_severity(rec: Mapping[str, Any], impact: Impact) -> AlertSeverity:
    """The alert severity of an NC's latest record with this impact (see the module docstring)."""
    disposition = rec["disposition"]
    if disposition in RELEASING_DISPOSITIONS:
        return AlertSeverity.INFO
    if _shipped(impact):
        return AlertSeverity.CRITICAL
    if disposition != "PENDING" and impact.unit_count == 0:
        return AlertSeverity.INFO
    return AlertSeverity.WARNING


def nc_raised(
    rec: Mapping[str, Any], impact: Impact, cfg: AlertRules, now: datetime, *, alerted: bool = False
) -> Alert | None:
    """The NC alert for the NC's latest record ``rec``; a USE_AS_IS record gives one only when the
    NC was ``alerted`` before (the closure updates it)."""
    disposition = rec["disposition"]
    if disposition == "USE_AS_IS" and not alerted:
        return None
    kind = trigger_kind(rec["target_kind"])
    n = impact.unit_count
    shipped = _shipped(impact)
    title = (
        f"{rec['severity']} nonconformance {rec['ncr_id']} on {kind} {rec['target_id']}"
        f" ({_words(disposition)}): {n} unit(s) impacted"
    )
    if shipped:
        title += f", {shipped} shipped"
    return _base(
        AlertRule.NC_RAISED,
        nc_severity(rec, impact),
        f"NC_RAISED:{rec['ncr_id']}",
        title,
        kind,
        rec["target_id"],
        "NonconformanceRaised",
        rec,
        now,
        **_impact_fields(impact, cfg.max_units_listed),
        details={
            "ncr_id": rec["ncr_id"],
            "nc_severity": rec["severity"],
            "disposition": disposition,
            "gates": str(disposition not in RELEASING_DISPOSITIONS).lower(),
            "description": rec.get("description") or "",
            "window_start": _iso(rec.get("window_start")),
            "window_end": _iso(rec.get("window_end")),
        },
    )


def consumed_held(
    rec: Mapping[str, Any], state: AlertState
) -> tuple[list[tuple[str, HoldPeriod]], list[str]]:
    """For an OperationCompleted: the consumed lots in a held period that began at or before the
    operation (a breach: ``held_lot_used``), and the lots whose current held period began *after*
    it (the caller re-evaluates their LOT_HELD_AFTER_USE alert: one more unit already used them)."""
    breaches: list[tuple[str, HoldPeriod]] = []
    recheck: list[str] = []
    for lq in rec.get("consumed_lots") or ():
        lot = lq["lot_id"]
        p = state.held(lot)
        if p is None:
            continue
        if p.since > rec["event_time"]:
            recheck.append(lot)
        else:
            breaches.append((lot, p))
    return breaches, recheck


def held_lot_used(
    lot_id: str,
    period: HoldPeriod,
    used: list[dict[str, Any]],
    rec: Mapping[str, Any],
    cfg: AlertRules,
    now: datetime,
) -> Alert | None:
    """One alert per lot and held period: ``used`` = every consumption in the period so far
    (uii, event_time, station_id, operator_id, work_order; from the store), ``rec`` the
    OperationCompleted that triggers this evaluation."""
    uses = sorted(used, key=lambda r: (r["event_time"], r["uii"]))
    if not uses:
        return None
    last = uses[-1]
    units = sorted({r["uii"] for r in uses})
    start = period.start
    return _base(
        AlertRule.HELD_LOT_USED,
        AlertSeverity.CRITICAL,
        f"HELD_LOT_USED:{period.key(lot_id)}",
        f"lot {lot_id} ({period.status} since {_iso(period.since)[:16]}) used on {len(units)} unit(s),"
        f" latest {last['uii']} at {last.get('station_id')} by {last.get('operator_id')}"
        f" (WO {last.get('work_order')})",
        "lot",
        lot_id,
        "OperationCompleted",
        rec,
        now,
        site=start.site or rec.get("site") or "",
        program=start.program or rec.get("program") or "",
        unit_count=len(units),
        units=units[: cfg.max_units_listed],
        reference=recall_reference("lot", lot_id),
        details={
            "lot_status": period.status,
            "status_reason": period.last.reason,
            "status_since": _iso(period.since),
            "uses": _jsonable(uses[: cfg.max_units_listed]),
            "use_count": str(len(uses)),
        },
    )


def lot_held_after_use(
    lot_id: str, period: HoldPeriod, usage: LotUsage, cfg: AlertRules, now: datetime
) -> Alert | None:
    if usage.impact.unit_count == 0:
        return None
    breach = sorted(usage.used_while_held, key=lambda r: (r["uii"], str(r.get("event_time"))))
    released = period.end
    if released is not None:
        severity = AlertSeverity.INFO
    elif breach or _shipped(usage.impact):
        severity = AlertSeverity.CRITICAL
    else:
        severity = AlertSeverity.WARNING
    n = usage.impact.unit_count
    title = f"lot {lot_id} put on {period.status}: {n} unit(s) already used it"
    if breach:
        title += f", {len({r['uii'] for r in breach})} during the {period.status.lower()}"
    if _shipped(usage.impact):
        title += f", {_shipped(usage.impact)} shipped"
    if released is not None:
        title += f"; released {_iso(released.time)[:16]}"
    start = period.start
    rec = {"event_time": period.last.time, "event_id": period.last.event_id, "site": start.site,
           "program": start.program}  # fmt: skip
    return _base(
        AlertRule.LOT_HELD_AFTER_USE,
        severity,
        f"LOT_HELD_AFTER_USE:{period.key(lot_id)}",
        title,
        "lot",
        lot_id,
        "LotStatusChanged",
        rec,
        now,
        **_impact_fields(usage.impact, cfg.max_units_listed),
        details={
            "lot_status": period.status,
            "status_reason": period.last.reason,
            "status_since": _iso(period.since),
            "released_at": _iso(released.time if released else None),
            "used_while_held": _jsonable(breach[: cfg.max_units_listed]),
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
            "failing": _jsonable(failing[: cfg.max_units_listed]),
        },
    )


def is_out_of_calibration(rec: Mapping[str, Any]) -> bool:
    return bool(rec["finished_at"] > rec["calibration_due"])


def out_of_calibration(
    rec: Mapping[str, Any], tests: BenchTests, cfg: AlertRules, now: datetime
) -> Alert | None:
    """One alert per bench and calibration record; ``tests`` = the tests run on it past due so far
    (from the store, which holds ``rec`` already)."""
    if not is_out_of_calibration(rec):
        return None
    units = sorted(set(tests.units) | {uii_of(rec["unit"])})
    count = max(tests.count, 1)
    n_units = max(tests.unit_count, len(units))
    bench = rec["bench_id"]
    return _base(
        AlertRule.OUT_OF_CALIBRATION,
        AlertSeverity.WARNING,
        f"OUT_OF_CALIBRATION:{bench}:{rec['calibration_id']}",
        f"bench {bench} used past its calibration due date {_iso(rec['calibration_due'])[:16]}"
        f" ({rec['calibration_id']}): {count} test(s) on {n_units} unit(s) to re-verify",
        "bench",
        bench,
        "UnitTested",
        rec,
        now,
        program=",".join(sorted(tests.programs)) or rec.get("program") or "",
        unit_count=n_units,
        units=units[: cfg.max_units_listed],
        reference=recall_reference("bench", bench, rec["calibration_due"]),
        out_of_calibration=True,
        details={
            "calibration_id": rec["calibration_id"],
            "calibration_due": _iso(rec["calibration_due"]),
            "tests": _jsonable(tests.tests[: cfg.max_units_listed]),
            "test_count": str(count),
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
) -> list[Alert]:
    """One alert per gating cause of this shipment (held lots first, then NCs by id), each
    listing every shipment the cause let through so far. Notes the shipment under each cause in
    ``state.gated`` (the listing is state, rebuilt from the alerts table at start-up)."""
    uii = uii_of(rec["unit"])
    entry = {
        "serial": uii,
        "shipment_id": rec["shipment_id"],
        "customer_id": rec["customer_id"],
        "destination_site": rec["destination_site"],
        "shipped_at": _iso(rec["event_time"]),
    }
    causes: list[tuple[str, str, str, str, str | None, LotState | NcState, dict[str, str]]] = []
    for lot in sorted(contents.lots):
        p = state.held(lot)
        if p is not None:
            causes.append((
                f"SHIPPING_GATE:LOT:{p.key(lot)}", "lot", lot,
                f"lot {lot} ({p.status} since {_iso(p.since)[:16]})", recall_reference("lot", lot), p.start,
                {"cause": "LOT", "lot_id": lot, "lot_status": p.status, "status_reason": p.last.reason,
                 "status_since": _iso(p.since)},
            ))  # fmt: skip
    for n in sorted((n for n in state.open_ncs() if nc_matches(n, contents)), key=lambda n: n.ncr_id):
        kind = trigger_kind(n.target_kind)
        causes.append((
            f"SHIPPING_GATE:NC:{n.ncr_id}", kind, n.target_id,
            f"NC {n.ncr_id} ({n.severity} on {kind} {n.target_id}, {_words(n.disposition)})",
            recall_reference(kind, n.target_id, n.window_start, n.window_end), n,
            {"cause": "NC", "ncr_id": n.ncr_id, "nc_severity": n.severity, "disposition": n.disposition},
        ))  # fmt: skip
    out: list[Alert] = []
    for alert_id, kind, subject, why, reference, origin, details in causes:
        listing = state.gated.setdefault(alert_id, {})
        listing[_shipment_key(entry)] = entry
        ships = sorted(listing.values(), key=lambda e: (e["shipped_at"], e["serial"], e["shipment_id"]))
        units = sorted({e["serial"] for e in ships})
        customers = Counter(e["customer_id"] for e in ships)
        out.append(
            _base(
                AlertRule.SHIPPING_GATE,
                AlertSeverity.CRITICAL,
                alert_id,
                f"{len(units)} unit(s) shipped despite {why}, to " + ", ".join(sorted(customers)),
                kind,
                subject,
                "UnitShipped",
                rec,
                now,
                site=origin.site or rec.get("site") or "",
                program=origin.program or rec.get("program") or "",
                unit_count=len(units),
                units=units[: cfg.max_units_listed],
                by_status={"shipped": len(units)},
                by_customer=dict(sorted(customers.items())),
                by_site=dict(sorted(Counter(e["destination_site"] for e in ships).items())),
                reference=reference,
                details={
                    **details,
                    "shipments": json.dumps(ships[: cfg.max_units_listed], sort_keys=True),
                    "shipment_count": str(len(ships)),
                },
            )
        )
    return out


def window_start(rec: Mapping[str, Any], cfg: AlertRules) -> datetime:
    """Start (exclusive) of the yield window ending at this test."""
    end: datetime = rec["finished_at"]
    return end - timedelta(hours=cfg.yield_window_hours)
