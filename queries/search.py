"""The workbench's one search box: whatever an analyst types, what it names.

* :func:`suggest`: known identifiers of every kind that start with (or, for units, contain)
  what was typed so far, for the suggestions under the box;
* :func:`resolve`: what a finished query names: a UII, a bare serial (every UII that carries
  it), a lot, a supplier lot (``<supplier>:<lot>``, or the supplier's bare lot number), a
  supplier, a station, an operator or a bench. Several kinds may match one string (a station
  and an operator with the same id): all are returned. Nothing matches: a
  :class:`schemas.errors.NotFoundError` whose suggestions are those of ``queries.lookup`` for
  every kind the string could be, the same near misses the API's 404 gives for one kind;
* :func:`scoped_suggestions`: ``queries.lookup.suggestions`` as a caller holding some
  programmes may see them (units outside them never named), the rule of
  ``traceline.backend.StoreBackend``.

Units are visible by the one rule of ``queries.scope``: a unit outside the caller's
programmes is neither suggested nor resolved, exactly as if the store had never seen it.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from queries.facts import QueryStore
from queries.lookup import is_known, suggestions
from queries.scope import sees_all, unit_programs, visible
from schemas.errors import InvalidInputError, NotFoundError

__all__ = [
    "SearchHit",
    "Resolution",
    "suggest",
    "resolve",
    "scoped_suggestions",
    "visible_suggestions",
    "SEARCHED",
]

SEARCHED = "units, lots, supplier lots, suppliers, stations, operators and benches"
_MAX_QUERY = 200
_KIND_ORDER = ("serial", "lot", "supplier_lot", "supplier", "station", "operator", "bench")


@dataclass
class SearchHit:
    kind: str  # a trigger kind (queries.TRIGGER_KINDS); "serial" takes a UII
    id: str
    label: str  # what the suggestion list shows, e.g. "lot LA00000431 (RES-0402, SUP-ACME)"


@dataclass
class Resolution:
    query: str
    matches: list[SearchHit] = field(default_factory=list)


# kind -> SQL of known ids that start with {p:String} (case-insensitive), with a label
_PREFIX: dict[str, str] = {
    "lot": "SELECT lot_id AS id, any(concat(part_number, ', ', supplier_id)) AS info FROM material_received"
    " WHERE startsWith(lower(lot_id), {p:String}) GROUP BY lot_id"
    " UNION ALL SELECT lot_id AS id, any(concat(part_number, ', ', toString(transformation))) AS info"
    " FROM lot_transformed WHERE startsWith(lower(lot_id), {p:String}) GROUP BY lot_id",
    "supplier_lot": "SELECT concat(supplier_id, ':', supplier_lot) AS id, any(concat('lot ', lot_id)) AS info"
    " FROM material_received WHERE startsWith(lower(supplier_lot), {p:String})"
    " OR startsWith(lower(concat(supplier_id, ':', supplier_lot)), {p:String}) GROUP BY id",
    "supplier": "SELECT toString(supplier_id) AS id, concat(toString(uniqExact(lot_id)), ' lots') AS info"
    " FROM material_received WHERE startsWith(lower(toString(supplier_id)), {p:String}) GROUP BY id",
    "station": "SELECT toString(station_id) AS id, '' AS info FROM operations"
    " WHERE startsWith(lower(toString(station_id)), {p:String}) GROUP BY id",
    "operator": "SELECT toString(operator_id) AS id, '' AS info FROM operations"
    " WHERE startsWith(lower(toString(operator_id)), {p:String}) GROUP BY id",
    "bench": "SELECT toString(bench_id) AS id, '' AS info FROM unit_tests"
    " WHERE startsWith(lower(toString(bench_id)), {p:String}) GROUP BY id",
}
# units: the UII or its serial number starts with what was typed
_UNITS_SQL = (
    "SELECT uii AS id, any(toString(part_number)) AS info FROM operations"
    " WHERE creates_unit AND (startsWith(lower(uii), {p:String})"
    " OR startsWith(lower(serial_number), {p:String})) GROUP BY uii ORDER BY uii LIMIT {n:UInt32}"
)
_BARE_SERIAL_SQL = (
    "SELECT DISTINCT uii FROM operations WHERE serial_number = {s:String} ORDER BY uii LIMIT 50"
)


def _query(text: str) -> str:
    q = (text or "").strip()
    if not q:
        raise InvalidInputError("type something to search for", "q")
    if len(q) > _MAX_QUERY:
        raise InvalidInputError(f"a search is at most {_MAX_QUERY} characters", "q")
    return q


def _visible_units(store: QueryStore, programs: Collection[str], uiis: list[str]) -> list[str]:
    if sees_all(programs) or not uiis:
        return uiis
    of = unit_programs(store, uiis)
    return [u for u in uiis if visible(programs, of.get(u))]


def suggest(store: QueryStore, programs: Collection[str], text: str, limit: int = 10) -> list[SearchHit]:
    """Known identifiers that start with ``text`` (case-insensitive), units first, at most
    ``limit``; units outside ``programs`` left out."""
    q = _query(text).lower()
    limit = max(1, min(limit, 50))
    hits: list[SearchHit] = []
    rows = store.query(_UNITS_SQL, {"p": q, "n": limit * 3})
    info = {str(r["id"]): str(r["info"]) for r in rows}
    for uii in _visible_units(store, programs, list(info))[:limit]:
        hits.append(SearchHit("serial", uii, f"unit {uii}"))
    for kind, sql in _PREFIX.items():
        found: dict[str, str] = {}
        for r in store.query(
            f"SELECT id, any(info) AS info FROM ({sql}) GROUP BY id ORDER BY id LIMIT 10", {"p": q}
        ):
            found[str(r["id"])] = str(r["info"])
        for ident, extra in found.items():
            label = f"{kind.replace('_', ' ')} {ident}" + (f" ({extra})" if extra else "")
            hits.append(SearchHit(kind, ident, label))
    exact = [h for h in hits if h.id.lower() == q]
    rest = [h for h in hits if h.id.lower() != q]
    rest.sort(key=lambda h: (len(h.id), _KIND_ORDER.index(h.kind), h.id))
    return (exact + rest)[:limit]


def scoped_suggestions(store: QueryStore, programs: Collection[str], kind: str, ident: str) -> list[str]:
    """``queries.lookup.suggestions``, naming only units inside ``programs``."""
    return visible_suggestions(store, programs, suggestions(store, kind, ident))


def visible_suggestions(store: QueryStore, programs: Collection[str], got: list[str]) -> list[str]:
    """The suggestions of ``got`` a caller with ``programs`` may see: a ``serial:`` one only
    when the unit is inside them (the others name no unit)."""
    if sees_all(programs):
        return got
    units = [s.split(":", 1)[1] for s in got if s.startswith("serial:")]
    seen = set(_visible_units(store, programs, units))
    return [s for s in got if not s.startswith("serial:") or s.split(":", 1)[1] in seen]


def _known(store: QueryStore, programs: Collection[str], kind: str, ident: str) -> bool:
    if not is_known(store, kind, ident):
        return False
    return kind != "serial" or bool(_visible_units(store, programs, [ident]))


def resolve(store: QueryStore, programs: Collection[str], text: str) -> Resolution:
    """What ``text`` names (every kind it matches), or :class:`NotFoundError` with near misses."""
    q = _query(text)
    out = Resolution(q)
    for kind in _KIND_ORDER:
        if kind in ("serial", "supplier_lot") and ":" not in q:
            continue
        if _known(store, programs, kind, q):
            out.matches.append(SearchHit(kind, q, f"{kind.replace('_', ' ')} {q}"))
    if ":" not in q:
        bare = [str(r["uii"]) for r in store.query(_BARE_SERIAL_SQL, {"s": q})]
        for uii in _visible_units(store, programs, bare):
            out.matches.append(SearchHit("serial", uii, f"unit {uii} (serial {q})"))
        slots = store.query(
            "SELECT DISTINCT supplier_id, supplier_lot FROM material_received WHERE supplier_lot = {s:String}"
            " ORDER BY supplier_id LIMIT 20",
            {"s": q},
        )
        for r in slots:
            ident = f"{r['supplier_id']}:{r['supplier_lot']}"
            out.matches.append(SearchHit("supplier_lot", ident, f"supplier lot {ident}"))
    if out.matches:
        return out
    raise NotFoundError(_likely_kind(q), q, _near_misses(store, programs, q), SEARCHED)


def _likely_kind(q: str) -> str:
    return "serial" if ":" in q else "lot"


def _near_misses(store: QueryStore, programs: Collection[str], q: str) -> list[str]:
    """The lookup's suggestions for every kind ``q`` could be: its most likely kind first."""
    first = _likely_kind(q)
    kinds = [first, *(k for k in _KIND_ORDER if k != first)]
    out: list[str] = []
    for kind in kinds:
        out += scoped_suggestions(store, programs, kind, q)
    return list(dict.fromkeys(out))[:8]
