"""The result types of the recall and trace queries, and their JSON form.

* ``Trigger`` (what is suspect; ``TRIGGER_KINDS``), ``LotHop`` (a lot reached from the
  trigger), ``AffectedUnit`` / ``PastHolder`` (where the suspect part is now / was before a
  removal), ``ForwardTrace`` and ``RecallImpact`` (``queries.recall``), ``BackwardTrace``
  (``queries.trace``);
* ``to_jsonable`` / ``from_jsonable``: those dataclasses to plain JSON values and back (the API
  answers with the one, a client reads its answer with the other);
* ``count_values``: the per-value counts of a recall impact (``by_customer``, ``by_site``,
  ``by_status``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from pydantic import TypeAdapter

from schemas.errors import InvalidInputError
from sinks.store import check_time

__all__ = [
    "TRIGGER_KINDS",
    "Trigger",
    "LotHop",
    "AffectedUnit",
    "PastHolder",
    "ForwardTrace",
    "RecallImpact",
    "BackwardTrace",
    "Coverage",
    "to_jsonable",
    "from_jsonable",
    "count_values",
]

TRIGGER_KINDS = ("lot", "supplier_lot", "supplier", "serial", "station", "operator", "bench")


@dataclass
class Trigger:
    """What is suspect. ``kind`` is one of TRIGGER_KINDS (NonconformanceRaised target kinds,
    case-insensitive; ``SERIAL`` takes a UII, ``SUPPLIER_LOT`` '<supplier_id>:<supplier_lot>').
    The window (aware datetimes) limits station / operator / bench / supplier triggers: an
    operation or test counts when [started_at, finished_at] overlaps it; a supplier's lots
    count when received inside it."""

    kind: str
    id: str
    window_start: datetime | None = None
    window_end: datetime | None = None

    def __post_init__(self) -> None:
        self.kind = self.kind.lower()
        if self.kind not in TRIGGER_KINDS:
            raise InvalidInputError(
                f"unknown trigger kind {self.kind!r}; expected one of {', '.join(TRIGGER_KINDS)}", "kind"
            )
        if not self.id or not self.id.strip():
            raise InvalidInputError("a trigger needs an id", "id")
        # a window given without an offset is UTC (every time traceline stores is UTC)
        self.window_start = check_time(self.window_start, "from")
        self.window_end = check_time(self.window_end, "to")
        ws, we = self.window_start, self.window_end
        if ws is not None and we is not None and ws > we:
            raise InvalidInputError(
                f"the window starts ({ws.isoformat()}) after it ends ({we.isoformat()})", "from"
            )


@dataclass
class LotHop:
    lot_id: str
    from_lot_id: str | None  # the lot it was made from (None for the trigger lot)
    depth: int  # transformations from the trigger lot
    transformation: str | None = None


@dataclass
class AffectedUnit:
    uii: str
    part_number: str
    trace: list[str]  # from the trigger to this unit, e.g. ["lot:L1", "lot:L1-A", "uii:PCB-1:7"]
    parent_uii: str | None  # current parent
    root_uii: str  # current final system (the unit itself when not assembled)
    path: list[str]  # current ancestors, parent first, root last
    status: str  # shipped | in_stock | in_work
    site: str | None = None  # plant where the unit met the trigger
    shipped_uii: str | None = None  # the unit or ancestor whose shipment counts
    shipment_id: str | None = None
    customer_id: str | None = None
    destination_site: str | None = None
    end_system: str | None = None


@dataclass
class PastHolder:
    """One hold of a bad unit by a unit that no longer holds it (rework): the definition is in
    ``queries.recall`` ("Past exposure")."""

    uii: str  # the past holder X (a parent, LRU, system, ... of the bad unit at the time)
    child_uii: str  # the unit just below X on the bad unit's chain at the end of the hold
    affected_uii: str  # the bad unit B it held
    root_uii: str  # X's current final system
    status: str  # X's status now
    customer_id: str | None = None
    removed_at: datetime | None = None  # the end of the hold (= held_until)
    removal_reason: str | None = None  # of the removal that ended it (None: moved by an install)
    past: bool = True
    held_from: datetime | None = None  # the hold: [held_from, held_until)
    held_until: datetime | None = None
    removed_uii: str | None = None  # the link whose break ended the hold: this child ...
    removed_from_uii: str | None = None  # ... taken out of this parent, at removed_at


@dataclass
class ForwardTrace:
    lot_id: str
    lots: list[LotHop]
    units: list[AffectedUnit]
    systems: list[dict[str, Any]]  # one per distinct root: root_uii, status, shipment fields, units
    past: list[PastHolder]
    withheld_units: int = 0  # units outside the caller's programmes, left out (queries.scope)
    withheld_past: int = 0  # past holds by units outside the caller's programmes, left out


@dataclass
class RecallImpact:
    trigger: Trigger
    units: list[AffectedUnit]  # the part is installed there NOW
    past: list[PastHolder]  # held it in the PAST (rework), kept apart
    systems: list[dict[str, Any]]
    by_customer: dict[str, int]
    by_site: dict[str, int]
    by_status: dict[str, int]
    lots: list[LotHop] = field(default_factory=list)
    withheld_units: int = 0  # units outside the caller's programmes, left out (queries.scope)
    withheld_past: int = 0  # past holds by units outside the caller's programmes, left out

    @property
    def unit_count(self) -> int:
        return len(self.units)


@dataclass
class Coverage:
    """Which programmes a report covers and what it left out (``queries.scope``): a document
    cut to a caller's programmes says so on its face, with counts, never which units."""

    programs: list[str] | None = None  # None: every programme (nothing can be withheld)
    withheld_units: int = 0  # units holding the part now, outside the programmes
    withheld_past: int = 0  # past holds by units outside the programmes
    withheld_ncrs: int = 0  # nonconformance reports raised under other programmes

    @property
    def withheld(self) -> bool:
        return bool(self.withheld_units or self.withheld_past or self.withheld_ncrs)

    @property
    def withheld_text(self) -> str:
        """``"3 units holding the part now, 1 past holder"`` (what was left out), or ""."""
        parts = [
            (self.withheld_units, "unit holding the part now", "units holding the part now"),
            (self.withheld_past, "past holder", "past holders"),
            (self.withheld_ncrs, "nonconformance report", "nonconformance reports"),
        ]
        return ", ".join(f"{n} {one if n == 1 else many}" for n, one, many in parts if n)

    @property
    def text(self) -> str:
        if self.programs is None:
            return "every programme"
        covered = f"programmes {', '.join(self.programs)} only" if self.programs else "no programme"
        if not self.withheld:
            return f"{covered}; nothing outside them was withheld"
        return f"{covered}; WITHHELD as outside them (counted, not listed): {self.withheld_text}"


@dataclass
class BackwardTrace:
    uii: str
    root_uii: str
    units: list[dict[str, Any]]  # the unit and every descendant: uii, parent_uii, path, depth, consumed_by
    lots: list[dict[str, Any]]  # lots consumed by those units (uii, lot_id, quantity, operation, ...)
    lot_lineage: list[dict[str, Any]]  # upstream lots: lot_id <- input_lot_id
    materials: list[dict[str, Any]]  # receipts of the lots involved (supplier, supplier lot, CoC)
    operations: list[dict[str, Any]]
    tests: list[dict[str, Any]]
    withheld_units: int = 0  # units in its tree outside the caller's programmes, left out (queries.scope)


_T = TypeVar("_T")


def from_jsonable(cls: type[_T], data: Any) -> _T:
    """The inverse of :func:`to_jsonable` for the result types: the JSON an API answered with
    -> the typed result (``RecallImpact``, ``ForwardTrace``, ``BackwardTrace``), so a caller reads
    the same objects whether it asked the server or the store."""
    return TypeAdapter(cls).validate_python(data)


def to_jsonable(obj: Any) -> Any:
    """Dataclasses / datetimes -> plain JSON-ready values."""
    if hasattr(obj, "__dataclass_fields__"):
        obj = asdict(obj)
    if isinstance(obj, dict):
        return {k: to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, datetime):
        return obj.isoformat()
    return obj


def count_values(values: Iterable[str | None]) -> dict[str, int]:
    """How often each value occurs (None counted as "(none)"), sorted by value."""
    out = Counter(values)
    if None in out:
        out["(none)"] += out.pop(None)
    return dict(sorted(out.items()))  # type: ignore[arg-type]
