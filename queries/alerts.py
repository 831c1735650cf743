"""What the alert rules read from ClickHouse, and the alerts as an analyst lists them.

* :class:`AlertEvaluator`: the pure rules of ``streams.alerts`` with the context they need,
  read from the store (recall impact, lot usage, lot yield, bench tests, the backward trace
  of a shipped unit). No Kafka: tests drive it directly; the alert engine
  (``streams.alert_engine``) is handed one by ``traceline serve``.
* :func:`load_state`: the rules' state rebuilt from ClickHouse at start-up (lots with a
  status, NCs, part test counts, the highest version and fingerprint per alert), so alerts
  raised before a restart are known and not raised again.
* :func:`list_alerts`: the latest version of each alert, newest first by event time, filtered
  and paged (:class:`AlertPage`: the rows of one page and the total that match).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from queries.recall import recall_impacts
from queries.results import BackwardTrace, Trigger
from queries.trace import backward_traces
from schemas.alert import Alert, AlertRule, AlertSeverity
from schemas.errors import InvalidInputError
from schemas.uii import uii_of
from streams.alerts import (
    HELD_STATUSES,
    AlertRules,
    AlertState,
    BenchTests,
    HoldPeriod,
    Impact,
    LotState,
    LotUsage,
    LotYield,
    NcState,
    UnitContents,
    consumed_held,
    held_lot_used,
    is_out_of_calibration,
    lot_held_after_use,
    nc_raised,
    out_of_calibration,
    recall_reference,
    shipping_gate,
    suspect_lot_yield,
    trigger_kind,
    window_start,
)

__all__ = ["AlertEvaluator", "AlertPage", "load_state", "list_alerts", "program_clause", "MAX_PAGE"]

_NTS = "Nullable(DateTime64(3, 'UTC'))"
# measurement columns of unit_tests a yield alert lists (read as m_<name>)
_MEASURED = ("name", "value", "unit", "low_limit", "high_limit", "passed")


class _Store(Protocol):
    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]: ...


def _utc(v: Any) -> Any:
    return v.replace(tzinfo=UTC) if isinstance(v, datetime) and v.tzinfo is None else v


# event types that can hold a lot or open an NC, i.e. make a shipment later in a batch gated
_GATE_OPENERS = frozenset({"LotStatusChanged", "NonconformanceRaised"})


def _nc_trigger(rec: Mapping[str, Any]) -> Trigger:
    """The recall trigger of a NonconformanceRaised record."""
    kind = trigger_kind(rec["target_kind"])
    return Trigger(kind, rec["target_id"], rec.get("window_start"), rec.get("window_end"))


def _trigger_key(t: Trigger) -> tuple[Any, ...]:
    return (t.kind, t.id, t.window_start, t.window_end)


def _contents(uii: str, bt: BackwardTrace) -> UnitContents:
    lots = {x["lot_id"] for x in bt.lots}
    for x in bt.lot_lineage:
        lots.add(x["lot_id"])
        lots.add(x["input_lot_id"])
    return UnitContents(
        units=frozenset(u["uii"] for u in bt.units) | {uii},
        lots=frozenset(lots),
        operations=tuple(
            (o["station_id"], o["operator_id"], _utc(o["started_at"]), _utc(o["finished_at"]))
            for o in bt.operations
        ),
        tests=tuple((t["bench_id"], _utc(t["started_at"]), _utc(t["finished_at"])) for t in bt.tests),
        materials=tuple((m["supplier_id"], m["supplier_lot"], _utc(m["event_time"])) for m in bt.materials),
    )


# ----------------------------------------------------------------------------- state from the store


def load_state(store: _Store) -> AlertState:
    """Rebuild the engine state from ClickHouse (small: the status history of lots that have
    one, NCs, part counts, one (version, fingerprint) per alert, the shipments each
    shipping-gate alert listed)."""
    st = AlertState()
    for r in store.query(
        "SELECT lot_id, status, event_time, event_id, reason, site, program FROM lot_status"
        " ORDER BY lot_id, event_time, event_id LIMIT 1 BY lot_id, event_id"
    ):
        st.set_lot(
            r["lot_id"],
            LotState(r["status"], _utc(r["event_time"]), r["event_id"], r["reason"], r["site"], r["program"]),
        )
    for r in store.query(
        "SELECT ncr_id, argMax(tuple(target_kind, target_id, window_start, window_end, severity,"
        " disposition, event_time, event_id, description, site, program), tuple(event_time, event_id)) AS s"
        " FROM nonconformances GROUP BY ncr_id"
    ):
        kind, tid, ws, we, sev, disp, t, eid, desc, site, program = r["s"]
        st.set_nc(
            NcState(r["ncr_id"], kind, tid, _utc(ws), _utc(we), sev, disp, _utc(t), eid, desc, site, program)
        )
    for r in store.query(
        "SELECT part_number, uniqExact(event_id) AS n, uniqExactIf(event_id, verdict = 'FAIL') AS f"
        " FROM unit_tests GROUP BY part_number"
    ):
        st.part_tests[r["part_number"]] = [int(r["n"]), int(r["f"])]
    for r in store.query(
        "SELECT alert_id, max(version) AS v, argMax(fingerprint, version) AS fp,"
        " argMax(details['shipments'], version) AS ships, any(rule) AS rule FROM alerts GROUP BY alert_id"
    ):
        st.remember(r["alert_id"], int(r["v"]), r["fp"])
        if r["rule"] == AlertRule.SHIPPING_GATE:
            st.remember_gate(r["alert_id"], r["ships"])
    return st


# the latest version of each alert (the table's sort key is (alert_id, version), so FINAL keeps
# every version: it only folds a version landed twice)
_LATEST = (
    "(SELECT * EXCEPT (kafka_partition, kafka_offset) FROM alerts"
    " ORDER BY alert_id, version DESC LIMIT 1 BY alert_id)"
)

MAX_PAGE = 10_000
"""The most rows :func:`list_alerts` returns at once."""


@dataclass(frozen=True)
class AlertPage:
    """One page of :func:`list_alerts`: ``rows`` (at most ``limit``, from ``offset``) and the
    ``total`` number of alerts that match the filter."""

    rows: list[dict[str, Any]]
    total: int
    offset: int
    limit: int

    @property
    def next_offset(self) -> int | None:
        """The offset of the next page, or None on the last one."""
        end = self.offset + len(self.rows)
        return end if end < self.total else None


def _choice(value: str | None, allowed: type[AlertSeverity] | type[AlertRule], name: str) -> str | None:
    if value is None or not value.strip():
        return None
    v = value.strip().upper()
    known = [m.value for m in allowed]
    if v not in known:
        raise InvalidInputError(f"unknown {name} {value!r}: one of {', '.join(known)}", name)
    return v


def _aware(t: datetime | None, name: str) -> datetime | None:
    if t is None:
        return None
    if not isinstance(t, datetime):
        raise InvalidInputError(f"{name} must be a date and time", name)
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def program_clause(programs: Collection[str], params: dict[str, Any]) -> str:
    """The ``AND ...`` that keeps only alerts every programme of which is in ``programs`` (an
    alert with no programme is kept from nobody but a caller who sees all); sets
    ``params["progs"]``."""
    params["progs"] = sorted(programs)
    return (
        " AND program != ''"
        " AND arrayAll(p -> has({progs:Array(String)}, p), splitByChar(',', toString(program)))"
    )


def list_alerts(
    store: _Store,
    *,
    severity: str | None = None,
    rule: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 100,
    offset: int = 0,
    programs: Collection[str] | None = None,
) -> AlertPage:
    """The latest version of each alert, filtered, newest first, one page of it.

    ``programs`` (None: every alert) keeps only the alerts whose every programme is among them
    (in SQL, so ``total`` counts only those; ``queries.scope`` cuts the units listed inside).

    Filters: ``severity`` (INFO / WARNING / CRITICAL) and ``rule`` (``schemas.alert.AlertRule``),
    any case; ``since`` (inclusive) / ``until`` (exclusive) on the alert's ``event_time``: the
    floor time of the event that raised its latest version (for an alert updated in place, the
    latest event of the incident); a naive datetime is UTC. Order: ``event_time`` newest first,
    then ``alert_id``. Raises :class:`InvalidInputError` (with the field) for an unknown severity
    or rule, ``limit`` outside 1..``MAX_PAGE`` or a negative ``offset``.
    """
    sev = _choice(severity, AlertSeverity, "severity")
    rul = _choice(rule, AlertRule, "rule")
    start, end = _aware(since, "since"), _aware(until, "until")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
        raise InvalidInputError(f"limit must be 1..{MAX_PAGE}, not {limit!r}", "limit")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise InvalidInputError(f"offset must be 0 or more, not {offset!r}", "offset")
    where = (
        " WHERE ({sev:Nullable(String)} IS NULL OR severity = {sev:Nullable(String)})"
        " AND ({rule:Nullable(String)} IS NULL OR rule = {rule:Nullable(String)})"
        f" AND ({{since:{_NTS}}} IS NULL OR event_time >= {{since:{_NTS}}})"
        f" AND ({{until:{_NTS}}} IS NULL OR event_time < {{until:{_NTS}}})"
    )
    params: dict[str, Any] = {"sev": sev, "rule": rul, "since": start, "until": end}
    if programs is not None:
        where += program_clause(programs, params)
    total = int(store.query(f"SELECT count() AS n FROM {_LATEST}{where}", params)[0]["n"])
    page = " ORDER BY event_time DESC, alert_id LIMIT {limit:UInt32} OFFSET {offset:UInt64}"
    rows: list[dict[str, Any]] = []
    if offset < total:
        rows = store.query(
            f"SELECT * FROM {_LATEST}{where}{page}", {**params, "limit": limit, "offset": offset}
        )
    return AlertPage(rows, total, offset, limit)


# ----------------------------------------------------------------------------- evaluation


@dataclass
class _Yields:
    """Tests in (start, end] of the units made from some lots (``AlertEvaluator._yields``)."""

    start: datetime
    end: datetime
    consumers: dict[tuple[str, str], set[str]]  # (lot, part) -> units of the part made from the lot
    tests: dict[str, list[dict[str, Any]]]  # uii -> its tests, by (finished_at, event_id)

    def lot_yield(self, lot_id: str, part: str, start: datetime, end: datetime) -> LotYield:
        tested: set[str] = set()
        failing: dict[str, dict[str, Any]] = {}
        for uii in sorted(self.consumers[(lot_id, part)]):
            for r in self.tests.get(uii, ()):
                if not start < r["finished_at"] <= end:
                    continue
                tested.add(uii)
                if r["verdict"] != "FAIL":
                    continue
                failed = [
                    {"name": n, "value": v, "unit": u, "low_limit": lo, "high_limit": hi}
                    for n, v, u, lo, hi, ok in zip(*(r[f"m_{c}"] for c in _MEASURED), strict=True)
                    if not ok
                ]
                failing[uii] = {"uii": uii, "finished_at": r["finished_at"], "measurements": failed}
        return LotYield(len(tested), list(failing.values()))


class AlertEvaluator:
    """Rules + the ClickHouse reads they need. No Kafka: tests drive it directly."""

    def __init__(
        self,
        store: _Store,
        rules: AlertRules | None = None,
        state: AlertState | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.rules = rules or AlertRules()
        self.state = state if state is not None else AlertState()
        self.clock = clock
        self.refresh_done = True
        self._refresh_after = ""  # ncr_id the last refresh slice stopped after
        # context read for a whole batch (``evaluate_batch``), None outside one
        self._batch_lots: dict[str, list[str]] | None = None
        self._batch_yields: _Yields | None = None
        self._batch_contents: dict[str, UnitContents] | None = None
        self._batch_impacts: dict[tuple[Any, ...], Impact] | None = None
        self._batch_uses: dict[tuple[str, datetime, datetime | None], list[dict[str, Any]]] | None = None

    def reload(self) -> None:
        self.state = load_state(self.store)

    # -- context reads ----------------------------------------------------------------
    def impact(self, trigger: Trigger) -> Impact:
        key = _trigger_key(trigger)
        memo = self._batch_impacts
        if memo is not None and key in memo:
            return memo[key]
        got = self._impacts([trigger])[key]
        if memo is not None:  # inside a batch: the store holds all of it, the answer holds too
            memo[key] = got
        return got

    def _impacts(self, triggers: Sequence[Trigger]) -> dict[tuple[Any, ...], Impact]:
        """The recall impact of each trigger (the facts read once for all of them)."""
        return {
            _trigger_key(t): Impact(
                unit_count=len(ri.units),
                units=[u.uii for u in ri.units],
                by_status=dict(ri.by_status),
                by_customer=dict(ri.by_customer),
                by_site=dict(ri.by_site),
                reference=recall_reference(t.kind, t.id, t.window_start, t.window_end),
            )
            for t, ri in zip(triggers, recall_impacts(self.store, triggers), strict=True)
        }

    def lot_uses(self, lot_id: str, held_from: datetime, until: datetime | None) -> list[dict[str, Any]]:
        """The units that consumed the lot in [held_from, until): the first such consumption of
        each (uii, event_time, station_id, operator_id, work_order), by uii. Read once per
        batch and question: every operation of a batch that uses a held lot asks again, and the
        store already holds the whole batch, so the answer is the same."""
        memo = self._batch_uses
        key = (lot_id, held_from, until)
        if memo is not None and key in memo:
            return memo[key]
        got = self._read_lot_uses(lot_id, held_from, until)
        if memo is not None:
            memo[key] = got
        return got

    def _read_lot_uses(
        self, lot_id: str, held_from: datetime, until: datetime | None
    ) -> list[dict[str, Any]]:
        rows = self.store.query(
            "SELECT uii, argMin(tuple(event_time, station_id, operator_id, work_order),"
            " tuple(event_time, event_id)) AS u FROM lot_consumption"
            " WHERE lot_id = {l:String} AND event_time >= {t:DateTime64(3, 'UTC')}"
            f" AND ({{u:{_NTS}}} IS NULL OR event_time < {{u:{_NTS}}})"
            " GROUP BY uii ORDER BY uii",
            {"l": lot_id, "t": held_from, "u": until},
        )
        keys = ("event_time", "station_id", "operator_id", "work_order")
        return [{"uii": r["uii"], **dict(zip(keys, map(_utc, r["u"]), strict=True))} for r in rows]

    def lot_usage(self, lot_id: str, held_from: datetime, until: datetime | None) -> LotUsage:
        return LotUsage(self.impact(Trigger("lot", lot_id)), self.lot_uses(lot_id, held_from, until))

    def lots_of(self, uii: str) -> list[str]:
        if self._batch_lots is not None and uii in self._batch_lots:
            return self._batch_lots[uii]
        return self._lots_of([uii]).get(uii, [])

    def _lots_of(self, uiis: Sequence[str]) -> dict[str, list[str]]:
        """Lots each unit consumed, sorted (one statement for all of them)."""
        rows = self.store.query(
            "SELECT uii, arraySort(groupUniqArray(lot_id)) AS lots FROM operations"
            " ARRAY JOIN consumed_lot_ids AS lot_id WHERE uii IN {u:Array(String)} GROUP BY uii",
            {"u": sorted(set(uiis))},
        )
        return {r["uii"]: list(r["lots"]) for r in rows}

    def lot_yield(self, lot_id: str, part: str, start: datetime, end: datetime) -> LotYield:
        """Units of ``part`` made from ``lot_id`` tested in (start, end], and the failing ones."""
        y = self._batch_yields
        if y is None or (lot_id, part) not in y.consumers or start < y.start or end > y.end:
            y = self._yields([lot_id], [part], start, end)
        return y.lot_yield(lot_id, part, start, end)

    def _yields(self, lots: Sequence[str], parts: Sequence[str], start: datetime, end: datetime) -> _Yields:
        """The tests in (start, end] of every unit of ``parts`` made from ``lots``: two statements
        for any number of lots, parts and failed tests (see ``evaluate_batch``)."""
        params = {"l": sorted(set(lots)), "p": sorted(set(parts)), "s": start, "e": end}
        made = "lot_id IN {l:Array(String)} AND part_number IN {p:Array(String)}"
        consumers: dict[tuple[str, str], set[str]] = {(lot, p): set() for lot in lots for p in parts}
        made_sql = f"SELECT DISTINCT lot_id, part_number, uii FROM lot_consumption WHERE {made}"
        for r in self.store.query(made_sql, params):
            consumers[(r["lot_id"], r["part_number"])].add(r["uii"])
        # the measurements are only read for failed tests (the rules list what failed)
        rows = self.store.query(
            "SELECT uii, verdict, finished_at, "
            + ", ".join(f"if(verdict = 'FAIL', `measurements.{c}`, []) AS m_{c}" for c in _MEASURED)
            + f" FROM unit_tests WHERE uii IN (SELECT uii FROM lot_consumption WHERE {made})"
            " AND finished_at > {s:DateTime64(3, 'UTC')} AND finished_at <= {e:DateTime64(3, 'UTC')}"
            " ORDER BY uii, finished_at, event_id LIMIT 1 BY event_id",
            params,
        )
        tests: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            tests.setdefault(r["uii"], []).append(r)
        return _Yields(start, end, consumers, tests)

    def bench_tests(self, bench: str, calibration_id: str) -> BenchTests:
        """The tests run on the bench under this calibration record past its due date."""
        r = self.store.query(
            "SELECT count() AS n, uniqExact(uii) AS u, arraySlice(arraySort(groupUniqArray(uii)), 1,"
            " {cap:UInt32}) AS units, arraySlice(arraySort(groupArray(tuple(finished_at, uii, verdict))),"
            " 1, {cap:UInt32}) AS tests, arraySort(groupUniqArray(program)) AS programs"
            " FROM (SELECT uii, finished_at, verdict, program FROM unit_tests"
            " WHERE bench_id = {b:String} AND calibration_id = {c:String} AND finished_at > calibration_due"
            " LIMIT 1 BY event_id)",
            {"b": bench, "c": calibration_id, "cap": self.rules.max_units_listed},
        )[0]
        tests = [{"serial": u, "finished_at": _utc(t), "verdict": v} for t, u, v in r["tests"]]
        return BenchTests(int(r["n"]), list(r["units"]), int(r["u"]), tests, list(r["programs"]))

    def contents(self, uii: str) -> UnitContents:
        if self._batch_contents is not None and uii in self._batch_contents:
            return self._batch_contents[uii]
        return self._contents_of([uii])[uii]

    def _contents_of(self, uiis: Sequence[str]) -> dict[str, UnitContents]:
        """What each unit holds (its backward trace; the reads made once for all of them)."""
        return {uii: _contents(uii, bt) for uii, bt in backward_traces(self.store, uiis).items()}

    # -- rules --------------------------------------------------------------------------
    def evaluate_batch(self, events: Sequence[tuple[str, Mapping[str, Any]]]) -> list[Alert]:
        """Alerts for the events of one landed batch, in order (``evaluate`` each).

        The context reads of failed tests and shipments do not depend on the rule state, only
        on the store, which holds the whole batch already: they are made once for the batch
        before the rules run. Failed tests: the lots of every failed unit, then the tests of
        every unit made from those lots in the union of the windows (three statements instead
        of one plus one per lot per failed test). NCs raised and lots put on hold: their recall
        impacts, the facts of all their units read once (``queries.recall_impacts``).
        Shipments, while a lot is held or an NC open (or the batch may hold or open one): the
        backward traces of all shipped units with the statements of one
        (``queries.backward_traces``). Everything else is read per event as in ``evaluate``."""
        failed = [
            (uii_of(r["unit"]), r["unit"]["part_number"], r)
            for t, r in events
            if t == "UnitTested" and r["verdict"] == "FAIL"
        ]
        if failed:
            self._batch_lots = self._lots_of([u for u, _p, _r in failed])
            lots = sorted({lot for u, _p, _r in failed for lot in self._batch_lots.get(u, [])})
            if lots:
                self._batch_yields = self._yields(
                    lots,
                    sorted({p for _u, p, _r in failed}),
                    min(window_start(r, self.rules) for _u, _p, r in failed),
                    max(r["finished_at"] for _u, _p, r in failed),
                )
        # NCs raised and lots held: their recall impacts, the facts read once for all of them
        triggers: dict[tuple[Any, ...], Trigger] = {}
        for t, r in events:
            if t == "NonconformanceRaised" and (
                r["disposition"] != "USE_AS_IS" or f"NC_RAISED:{r['ncr_id']}" in self.state.raised
            ):
                trig = _nc_trigger(r)
            elif t == "LotStatusChanged" and r["status"] in HELD_STATUSES:
                trig = Trigger("lot", r["lot_id"])
            else:
                continue
            triggers.setdefault(_trigger_key(trig), trig)
        self._batch_impacts = self._impacts(list(triggers.values())) if triggers else {}
        self._batch_uses = {}
        st = self.state
        gated = st.any_held or st.open_ncs() or any(t in _GATE_OPENERS for t, _r in events)
        shipped = [uii_of(r["unit"]) for t, r in events if t == "UnitShipped"] if gated else []
        if shipped:
            self._batch_contents = self._contents_of(sorted(set(shipped)))
        try:
            return [a for t, r in events for a in self.evaluate(t, r)]
        finally:
            self._batch_lots = self._batch_yields = self._batch_contents = None
            self._batch_impacts = None
            self._batch_uses = None

    def evaluate(self, type_name: str, rec: Mapping[str, Any]) -> list[Alert]:
        """Alerts (admitted: new or changed) for one landed event."""
        st, cfg, now = self.state, self.rules, self.clock()
        st.apply(type_name, rec)
        out: list[Alert | None] = []
        if type_name == "NonconformanceRaised":
            out.append(st.admit(self._nc_alert(st.ncs[rec["ncr_id"]], now)))
        elif type_name == "LotStatusChanged":
            lot = rec["lot_id"]
            period = st.period_of(lot, LotState.from_event(rec))
            # a held status raises / updates its period's alert; a release updates it if raised
            if period is not None and (
                rec["status"] in HELD_STATUSES or f"LOT_HELD_AFTER_USE:{period.key(lot)}" in st.raised
            ):
                out.append(st.admit(self._lot_held(lot, period, now)))
        elif type_name == "OperationCompleted":
            breaches, recheck = consumed_held(rec, st)
            for lot, period in breaches:
                uses = self.lot_uses(lot, period.since, None)
                out.append(st.admit(held_lot_used(lot, period, uses, rec, cfg, now)))
            for lot in recheck:
                held = st.held(lot)
                if held is not None:
                    out.append(st.admit(self._lot_held(lot, held, now)))
        elif type_name == "UnitTested":
            if is_out_of_calibration(rec):
                tests = self.bench_tests(rec["bench_id"], rec["calibration_id"])
                out.append(st.admit(out_of_calibration(rec, tests, cfg, now)))
            if rec["verdict"] == "FAIL":
                uii, part = uii_of(rec["unit"]), rec["unit"]["part_number"]
                start, end = window_start(rec, cfg), rec["finished_at"]
                base = st.part_tests.get(part, [0, 0])
                for lot in self.lots_of(uii):
                    yld = self.lot_yield(lot, part, start, end)
                    out.append(st.admit(suspect_lot_yield(rec, lot, yld, (base[0], base[1]), cfg, now)))
        elif type_name == "UnitShipped":
            if st.any_held or st.open_ncs():
                contents = self.contents(uii_of(rec["unit"]))
                out += [st.admit(a) for a in shipping_gate(rec, st, contents, cfg, now)]
        return [a for a in out if a is not None]

    def _nc_alert(self, nc: NcState, now: datetime) -> Alert | None:
        """The alert of an NC from its latest record (a USE_AS_IS one only updates a raised alert)."""
        alerted = f"NC_RAISED:{nc.ncr_id}" in self.state.raised
        if nc.disposition == "USE_AS_IS" and not alerted:
            return None
        rec = nc.as_record()
        return nc_raised(rec, self.impact(_nc_trigger(rec)), self.rules, now, alerted=alerted)

    def _lot_held(self, lot_id: str, period: HoldPeriod, now: datetime) -> Alert | None:
        until = period.end.time if period.end is not None else None
        usage = self.lot_usage(lot_id, period.since, until)
        return lot_held_after_use(lot_id, period, usage, self.rules, now)

    def refresh_open_ncs(self, budget_s: float | None = None) -> list[Alert]:
        """Re-evaluate the impact of open NCs (units made since): changed ones update.

        With ``budget_s`` it stops once that much time is spent and resumes where it left
        off on the next call (round robin), so a long pass (one SUPPLIER NC can take seconds)
        never holds up the triggers waiting behind it; ``refresh_done`` says a pass ended.
        """
        now = self.clock()
        out = []
        started = time.monotonic()
        ncs = sorted(self.state.open_ncs(), key=lambda n: n.ncr_id)
        todo = [n for n in ncs if n.ncr_id > self._refresh_after] if self._refresh_after else ncs
        self.refresh_done = True
        for nc in todo:
            if budget_s is not None and time.monotonic() - started > budget_s:
                self.refresh_done = False
                break
            a = self.state.admit(self._nc_alert(nc, now))
            if a is not None:
                out.append(a)
            self._refresh_after = nc.ncr_id
        if self.refresh_done:
            self._refresh_after = ""
        return out
