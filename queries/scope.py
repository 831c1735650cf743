"""Programme scoping: what a caller may see of an answer (need-to-know separation).

Every raw row carries ``program`` (docs/TABLES.md). A caller holds a set of programmes, or
``*`` (``ALL``) for every one. The one rule, applied here and nowhere else:

* **a unit's programmes** are the ``program`` values of its events: its operations, tests and
  shipments (:func:`unit_programs`, one statement per 20k units, point reads on the three
  tables' ORDER BY key ``uii``);
* **a unit is visible** to a caller when it has at least one programme and every one of them
  is the caller's. A unit no event names a programme for is visible only to ``*`` (fail
  closed).

What a scoped answer holds (:func:`scope`, pure; :func:`scoped` reads the programmes first):

* **recall impact / forward trace**: only the visible units and the past holds whose holder is
  visible; ``withheld_units`` / ``withheld_past`` say how many were left out, never which.
  A reference from a visible unit to an invisible one (parent, final system, path, the
  shipped ancestor, a ``uii:`` step of its trace, the bad unit a past holder held) reads
  ``WITHHELD``; so does the shipment id of an invisible shipped ancestor (the customer,
  destination and end system stay: they say where the caller's own unit is). Systems: those
  whose final system is visible, with their visible units. Counts by customer, site and
  status are recounted over the visible units. Lots: the trigger's, and those on the trace of
  a visible unit (with the lots they were made from).
* **backward trace** of a visible unit: its visible descendants, and the lots, operations and
  tests of those; upstream lineage and receipts of the lots that remain; ``withheld_units``.
  (Of an invisible unit: the face answers "not found", as for a unit the store never saw.)
* **alerts** (:func:`scoped_alerts`): the alerts whose ``program`` (one programme, or several
  joined by commas) is visible, filtered in SQL so the total and the pages add up; in those,
  the listed ``units`` outside the caller's programmes are left out (``units_withheld``).
* **report and drill** (:func:`scoped_report`, :func:`scoped_drill_documents`): the report
  pipeline of ``queries.report`` with its "recall impact" step scoped (so every later read,
  the test histories, operations and the nonconformances on units, follows the visible units
  only) and, in its records step, the nonconformance reports raised under another programme
  left out: the report is assembled (totals, document number) from the scoped data. If the
  pipeline stops running the "recall impact" step, a scoped report is refused (``ScopeError``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, TypeVar

from queries.alerts import AlertPage, list_alerts
from queries.drill import _Clock, _render_timed  # the drill's own clock and render step
from queries.facts import QueryStore
from queries.recall import forward_trace
from queries.report import (
    NO_LAG_NOTE,
    Coverage,
    Freshness,
    RecallReport,
    Step,
    build_report,
    check_prepared_by,
    document_number,
    run_step,
)
from queries.report_render import check_format
from queries.results import AffectedUnit, BackwardTrace, ForwardTrace, PastHolder, RecallImpact, Trigger
from queries.results import count_values as _count
from schemas.errors import InvalidInputError, TracelineError
from sinks.chain import Verifier

__all__ = [
    "ALL",
    "WITHHELD",
    "parse_programs",
    "sees_all",
    "visible",
    "unit_programs",
    "withhold_alert_units",
    "referenced_units",
    "scope",
    "scoped",
    "scoped_alerts",
    "scoped_report",
    "scoped_drill_documents",
    "ScopedReport",
    "ScopeError",
]

ALL = "*"
WITHHELD = "(withheld)"
_CHUNK = 20_000

R = TypeVar("R", RecallImpact, ForwardTrace, BackwardTrace)
ProgramOf = Mapping[str, Collection[str]]


# ----------------------------------------------------------------------------- the rule


def parse_programs(text: str | Iterable[str]) -> frozenset[str]:
    """``"A,B"`` / ``["A", "B"]`` / ``"*"`` -> the set of programmes (``*`` alone means all)."""
    items = text.split(",") if isinstance(text, str) else list(text)
    out = frozenset(p.strip() for p in items if p and p.strip())
    return frozenset({ALL}) if ALL in out else out


def sees_all(programs: Collection[str]) -> bool:
    return ALL in programs


def visible(programs: Collection[str], of_unit: Collection[str] | None) -> bool:
    """Whether a caller with ``programs`` may see a unit (or record) of programmes ``of_unit``."""
    if ALL in programs:
        return True
    return bool(of_unit) and all(p in programs for p in of_unit)  # type: ignore[union-attr]


_UNIT_PROGRAMS_SQL = (
    "SELECT uii, groupUniqArray(toString(program)) AS programs FROM ("
    " SELECT uii, program FROM operations WHERE uii IN {u:Array(String)}"
    " UNION ALL SELECT uii, program FROM unit_tests WHERE uii IN {u:Array(String)}"
    " UNION ALL SELECT uii, program FROM shipments WHERE uii IN {u:Array(String)})"
    " GROUP BY uii"
)


def unit_programs(store: QueryStore, uiis: Iterable[str]) -> dict[str, frozenset[str]]:
    """``uii -> its programmes`` (the ``program`` of its operations, tests and shipments); a
    unit no such event names is absent. One statement per 20k units."""
    keys = sorted({u for u in uiis if u and u != WITHHELD})
    out: dict[str, frozenset[str]] = {}
    for i in range(0, len(keys), _CHUNK):
        for r in store.query(_UNIT_PROGRAMS_SQL, {"u": keys[i : i + _CHUNK]}):
            out[str(r["uii"])] = frozenset(str(p) for p in r["programs"] if p)
    return out


def referenced_units(result: RecallImpact | ForwardTrace | BackwardTrace) -> set[str]:
    """Every UII an answer names, in any field (what :func:`scope` needs the programmes of)."""
    out: set[str] = set()
    if isinstance(result, BackwardTrace):
        out |= {result.uii, result.root_uii}
        for u in result.units:
            out |= {u["uii"], *u.get("path", ()), u.get("parent_uii") or "", u.get("consumed_by") or ""}
        out |= {x["uii"] for x in (*result.lots, *result.operations, *result.tests)}
    else:
        for a in result.units:
            out |= {a.uii, a.root_uii, *a.path, a.parent_uii or "", a.shipped_uii or ""}
            out |= {s[4:] for s in a.trace if s.startswith("uii:")}
        for p in result.past:
            out |= {p.uii, p.child_uii, p.affected_uii, p.root_uii}
            out |= {p.removed_uii or "", p.removed_from_uii or ""}
        out |= {s["root_uii"] for s in result.systems}
    out.discard("")
    return out


# ----------------------------------------------------------------------------- answers


class _Cut:
    """One caller's view: which units it sees, and references to the others withheld."""

    def __init__(self, programs: Collection[str], program_of: ProgramOf) -> None:
        self.programs, self.program_of = programs, program_of

    def sees(self, uii: str) -> bool:
        return visible(self.programs, self.program_of.get(uii))

    def ref(self, uii: str | None) -> str | None:
        return uii if uii is None or uii == WITHHELD or self.sees(uii) else WITHHELD

    def refs(self, uiis: Iterable[str]) -> list[str]:
        return [self.ref(u) or WITHHELD for u in uiis]

    def step(self, s: str) -> str:
        return f"uii:{self.ref(s[4:])}" if s.startswith("uii:") else s

    def unit(self, u: AffectedUnit) -> AffectedUnit:
        shipment = u.shipment_id if u.shipped_uii is None or self.sees(u.shipped_uii) else None
        return replace(
            u,
            trace=[self.step(s) for s in u.trace],
            parent_uii=self.ref(u.parent_uii),
            root_uii=self.ref(u.root_uii) or WITHHELD,
            path=self.refs(u.path),
            shipped_uii=self.ref(u.shipped_uii),
            shipment_id=shipment,
        )

    def holder(self, p: PastHolder) -> PastHolder:
        return replace(
            p,
            child_uii=self.ref(p.child_uii) or WITHHELD,
            affected_uii=self.ref(p.affected_uii) or WITHHELD,
            root_uii=self.ref(p.root_uii) or WITHHELD,
            removed_uii=self.ref(p.removed_uii),
            removed_from_uii=self.ref(p.removed_from_uii),
        )


def scope(result: R, programs: Collection[str], program_of: ProgramOf) -> R:
    """``result`` as a caller holding ``programs`` may see it, given ``program_of`` (uii -> its
    programmes, :func:`unit_programs` of :func:`referenced_units`). The module docstring says
    what is kept; ``*`` sees the answer unchanged."""
    if sees_all(programs):
        return result
    cut = _Cut(programs, program_of)
    if isinstance(result, BackwardTrace):
        return _scope_backward(result, cut)  # type: ignore[return-value]
    units = [cut.unit(u) for u in result.units if cut.sees(u.uii)]
    past = [cut.holder(p) for p in result.past if cut.sees(p.uii)]
    shown = {u.uii for u in units}
    systems = [
        {**s, "units": [x for x in s["units"] if x in shown]}
        for s in result.systems
        if cut.sees(s["root_uii"]) and any(x in shown for x in s["units"])
    ]
    hops = {h.lot_id: h for h in result.lots}
    lots: set[str] = {h.lot_id for h in result.lots if h.depth == 0}
    for lot in {s[4:] for u in units for s in u.trace if s.startswith("lot:")}:
        while lot in hops and lot not in lots:  # the lot and the lots it was made from
            lots.add(lot)
            lot = hops[lot].from_lot_id or ""
    common: dict[str, Any] = {
        "units": units,
        "past": past,
        "systems": systems,
        "lots": [h for h in result.lots if h.lot_id in lots],
        "withheld_units": result.withheld_units + len(result.units) - len(units),
        "withheld_past": result.withheld_past + len(result.past) - len(past),
    }
    if isinstance(result, RecallImpact):  # the counts, as queries.recall.recall_impacts makes them
        common["by_customer"] = _count(u.customer_id for u in units)
        common["by_site"] = _count(u.destination_site if u.status == "shipped" else u.site for u in units)
        common["by_status"] = _count(u.status for u in units)
    return replace(result, **common)


def _scope_backward(result: BackwardTrace, cut: _Cut) -> BackwardTrace:
    units = [
        {
            **u,
            "parent_uii": cut.ref(u.get("parent_uii")),
            "path": cut.refs(u.get("path", ())),
            **({"consumed_by": cut.ref(u["consumed_by"])} if "consumed_by" in u else {}),
        }
        for u in result.units
        if cut.sees(u["uii"])
    ]
    lots = [x for x in result.lots if cut.sees(x["uii"])]
    made_from: dict[str, list[str]] = {}
    for row in result.lot_lineage:
        made_from.setdefault(row["lot_id"], []).append(row["input_lot_id"])
    seen = {x["lot_id"] for x in lots}
    frontier = list(seen)
    while frontier:  # the lots that remain and every lot upstream of them
        nxt = [i for lot in frontier for i in made_from.get(lot, ()) if i not in seen]
        seen.update(nxt)
        frontier = nxt
    return replace(
        result,
        root_uii=cut.ref(result.root_uii) or WITHHELD,
        units=units,
        lots=lots,
        lot_lineage=[r for r in result.lot_lineage if r["lot_id"] in seen],
        materials=[m for m in result.materials if m["lot_id"] in seen],
        operations=[o for o in result.operations if cut.sees(o["uii"])],
        tests=[t for t in result.tests if cut.sees(t["uii"])],
        withheld_units=result.withheld_units + len(result.units) - len(units),
    )


def scoped(store: QueryStore, result: R, programs: Collection[str]) -> R:
    """:func:`scope` with the programmes of every unit ``result`` names read from ``store``."""
    if sees_all(programs):
        return result
    return scope(result, programs, unit_programs(store, referenced_units(result)))


# ----------------------------------------------------------------------------- alerts


def scoped_alerts(
    store: QueryStore,
    programs: Collection[str],
    *,
    severity: str | None = None,
    rule: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 100,
    offset: int = 0,
) -> AlertPage:
    """``queries.alerts.list_alerts`` for a caller holding ``programs``: the same filters, order
    and paging over the alerts whose programme is visible (in SQL: ``total`` counts only
    those), and in each row the ``units`` outside ``programs`` left out (``units_withheld``)."""
    if sees_all(programs):
        return list_alerts(
            store, severity=severity, rule=rule, since=since, until=until, limit=limit, offset=offset
        )
    page = list_alerts(
        store,
        severity=severity,
        rule=rule,
        since=since,
        until=until,
        limit=limit,
        offset=offset,
        programs=programs,
    )
    withhold_alert_units(store, programs, page.rows)
    return page


def withhold_alert_units(store: QueryStore, programs: Collection[str], rows: list[dict[str, Any]]) -> None:
    """In each alert row, leave out the ``units`` outside ``programs`` and count them
    (``units_withheld``), in place."""
    if not rows or sees_all(programs):
        return
    of = unit_programs(store, {u for r in rows for u in r.get("units") or ()})
    for r in rows:
        listed = list(r.get("units") or ())
        kept = [u for u in listed if visible(programs, of.get(u))]
        if len(kept) < len(listed):
            r["units"], r["units_withheld"] = kept, len(listed) - len(kept)


# ----------------------------------------------------------------------------- report and drill


@dataclass
class ScopedReport:
    """A report cut to a caller's programmes, and what was left out (counts only)."""

    report: RecallReport  # its ``coverage`` holds the counts

    @property
    def withheld_units(self) -> int:
        return self.report.coverage.withheld_units

    @property
    def withheld_past(self) -> int:
        return self.report.coverage.withheld_past

    @property
    def withheld_ncrs(self) -> int:
        return self.report.coverage.withheld_ncrs


_IMPACT_STEP = "recall impact"  # the steps of queries.report.build_report this module cuts
_RECORDS_STEP = "lot origin, receipts, status and nonconformances"


class ScopeError(TracelineError):
    """The report pipeline no longer runs the step scoping relies on: refuse, never leak."""


def _scoping_step(store: QueryStore, programs: Collection[str], step: Step, seen: dict[str, int]) -> Step:
    """``step`` with two of the report's steps cut to ``programs``: the recall impact (so every
    later read, tests, operations, the NCRs on units, follows the visible units only) and the
    records in scope (the NCRs raised under another programme left out), before the report is
    assembled from them. Records what it withheld in ``seen``."""

    def run(name: str, fn: Callable[[], Any], note: Callable[[Any], str], /) -> Any:
        if name == _IMPACT_STEP:

            def impact() -> RecallImpact:
                got = scoped(store, fn(), programs)
                seen["units"], seen["past"], seen["impact"] = got.withheld_units, got.withheld_past, 1
                return got

            return step(name, impact, note)
        if name == _RECORDS_STEP:

            def records() -> tuple[Any, Any, list[dict[str, Any]], Any]:
                receipts, status, ncrs, upstream = fn()
                kept = _visible_ncrs(store, ncrs, programs)
                seen["ncrs"] = len(ncrs) - len(kept)
                return receipts, status, kept, upstream

            return step(name, records, note)
        return step(name, fn, note)

    return run


def _checked(seen: dict[str, int]) -> None:
    if not seen.get("impact"):
        raise ScopeError(
            f"the report pipeline ran no {_IMPACT_STEP!r} step, which programme scoping cuts: refused"
        )


_NC_PROGRAMS_SQL = (
    "SELECT ncr_id, groupUniqArray(toString(program)) AS programs FROM nonconformances"
    " WHERE target_kind IN {k:Array(String)} AND target_id IN {t:Array(String)}"
    " AND ncr_id IN {n:Array(String)} GROUP BY ncr_id"
)


def _visible_ncrs(
    store: QueryStore, ncrs: list[dict[str, Any]], programs: Collection[str]
) -> list[dict[str, Any]]:
    """The NCRs raised under the caller's programmes only (one statement)."""
    if sees_all(programs) or not ncrs:
        return ncrs
    params = {
        "k": sorted({str(r["target_kind"]) for r in ncrs}),
        "t": sorted({str(r["target_id"]) for r in ncrs}),
        "n": sorted({str(r["ncr_id"]) for r in ncrs}),
    }
    of = {str(r["ncr_id"]): list(r["programs"]) for r in store.query(_NC_PROGRAMS_SQL, params)}
    return [r for r in ncrs if visible(programs, of.get(str(r["ncr_id"])))]


def scoped_report(
    store: QueryStore,
    trigger: Trigger,
    programs: Collection[str],
    *,
    freshness: Freshness | Mapping[str, int] | None,
    prepared_by: str,
    step: Step = run_step,
    drill: bool = False,
    verifier: Verifier | None = None,
    lag_note: str | None = NO_LAG_NOTE,
) -> ScopedReport:
    """``queries.report.build_report`` for a caller holding ``programs`` (its document number
    derived from what this caller sees)."""
    seen = {"units": 0, "past": 0, "ncrs": 0}
    report = build_report(
        store,
        trigger,
        freshness=freshness,
        lag_note=lag_note,
        prepared_by=prepared_by,
        drill=drill,
        step=_scoping_step(store, programs, step, seen),
        verifier=verifier,
    )
    _checked(seen)
    report.coverage = Coverage(
        None if sees_all(programs) else sorted(programs), seen["units"], seen["past"], seen["ncrs"]
    )
    report.document_number = document_number(report)
    return ScopedReport(report)


def scoped_drill_documents(
    store: QueryStore,
    trigger: Trigger,
    programs: Collection[str],
    formats: Sequence[str],
    *,
    lag: Mapping[str, int] | None,
    lag_note: str | None,
    prepared_by: str,
    verifier: Verifier | None = None,
) -> tuple[ScopedReport, dict[str, bytes], list[tuple[str, float, str]]]:
    """``queries.drill.drill_documents`` for a caller holding ``programs``: its steps in its
    order (the forward trace of a lot, the report pipeline with its clock, each format
    rendered), with the forward trace and the report scoped."""
    order = [check_format(f) for f in dict.fromkeys(formats)]
    if not order:
        raise InvalidInputError("no report format given: use html, pdf or csv", "format")
    prepared_by = check_prepared_by(prepared_by)
    clock = _Clock()
    if trigger.kind == "lot":
        clock.run(
            "forward trace",
            lambda: scoped(store, forward_trace(store, trigger.id), programs),
            lambda ft: f"{len(ft.lots)} lots, {len(ft.units)} units, {len(ft.systems)} systems",
        )
    answer = scoped_report(
        store,
        trigger,
        programs,
        freshness=lag,
        lag_note=lag_note,
        prepared_by=prepared_by,
        drill=True,
        step=clock.run,
        verifier=verifier,
    )
    report = answer.report
    report.query_seconds = sum(s for _, s, _ in clock.steps)
    documents = {fmt: _render_timed(report, clock, fmt, order[i + 1 :]) for i, fmt in enumerate(order)}
    report.drill_timings = list(clock.steps)
    return answer, documents, list(clock.steps)
