"""Is an identifier known? "Not found" with near misses, never an empty answer.

A mistyped lot, a supplier lot without its supplier prefix or a serial without its part
number used to answer "0 affected units", which reads exactly like a clean recall. The face
(``traceline.backend``) asks :func:`require_known` whenever an answer came back empty; an
identifier the store has never seen raises :class:`schemas.errors.NotFoundError` with the
closest known identifiers as suggestions (``"<kind>:<id>"``, best first):

* a lot id that is some supplier's own lot number suggests ``supplier_lot:<supplier>:<lot>``;
* a bare serial suggests the UIIs that carry it (``<part>:<serial>``), and a UII of an unknown
  part number the same serial under the known part numbers;
* otherwise the known ids of that kind closest in spelling (edit distance, then trigram
  distance, case-insensitive).

Known identifiers come from the tables that name them (docs/TABLES.md): lots from receipts,
transformations, consumptions and status changes; units from the genealogy and operations;
stations and operators from operations; benches from tests; suppliers from receipts. The
checks are point reads on ORDER BY keys; the suggestions scan the distinct ids of one kind and
run only on the not-found path.
"""

from __future__ import annotations

from typing import Any, Protocol

from schemas.errors import NotFoundError

__all__ = ["require_known", "is_known", "suggestions"]

_MAX_SUGGESTIONS = 5


class _Store(Protocol):
    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]: ...


# kind -> (what was searched, SQL that returns a row when the id is known)
_KNOWN: dict[str, tuple[str, str]] = {
    "lot": (
        "lot receipts, transformations, consumptions and status changes",
        "SELECT 1 FROM material_received WHERE lot_id = {id:String} LIMIT 1"
        " UNION ALL SELECT 1 FROM lot_transformed WHERE lot_id = {id:String} LIMIT 1"
        " UNION ALL SELECT 1 FROM lot_lineage WHERE input_lot_id = {id:String} LIMIT 1"
        " UNION ALL SELECT 1 FROM lot_consumption WHERE lot_id = {id:String} LIMIT 1"
        " UNION ALL SELECT 1 FROM lot_status WHERE lot_id = {id:String} LIMIT 1",
    ),
    "supplier_lot": (
        "material receipts (supplier id and the supplier's lot number)",
        "SELECT 1 FROM material_received"
        " WHERE supplier_id = {sup:String} AND supplier_lot = {slot:String} LIMIT 1",
    ),
    "supplier": (
        "material receipts",
        "SELECT 1 FROM material_received WHERE supplier_id = {id:String} LIMIT 1",
    ),
    "serial": (
        "the unit genealogy and operations",
        "SELECT 1 FROM unit_genealogy WHERE uii = {id:String} LIMIT 1"
        " UNION ALL SELECT 1 FROM operations WHERE uii = {id:String} LIMIT 1",
    ),
    "station": ("operations", "SELECT 1 FROM operations WHERE station_id = {id:String} LIMIT 1"),
    "operator": ("operations", "SELECT 1 FROM operations WHERE operator_id = {id:String} LIMIT 1"),
    "bench": ("unit tests", "SELECT 1 FROM unit_tests WHERE bench_id = {id:String} LIMIT 1"),
}

# kind -> a subquery of every known id of that kind (column ``id``), for suggestions
_ALL_IDS: dict[str, str] = {
    "lot": "SELECT DISTINCT lot_id AS id FROM material_received"
    " UNION DISTINCT SELECT DISTINCT lot_id AS id FROM lot_transformed",
    "supplier_lot": "SELECT DISTINCT concat(supplier_id, ':', supplier_lot) AS id FROM material_received",
    "supplier": "SELECT DISTINCT toString(supplier_id) AS id FROM material_received",
    "serial": "SELECT DISTINCT uii AS id FROM unit_genealogy",
    "station": "SELECT DISTINCT toString(station_id) AS id FROM operations",
    "operator": "SELECT DISTINCT toString(operator_id) AS id FROM operations",
    "bench": "SELECT DISTINCT toString(bench_id) AS id FROM unit_tests",
}


def _params(kind: str, ident: str) -> dict[str, Any]:
    if kind == "supplier_lot":
        sup, _, slot = ident.partition(":")
        return {"sup": sup, "slot": slot}
    return {"id": ident}


def is_known(store: _Store, kind: str, ident: str) -> bool:
    """Whether the store has seen ``ident`` as a ``kind`` (a trigger kind, ``serial`` for a UII)."""
    if kind not in _KNOWN:
        return True  # a kind without an identity table (nothing to check)
    if kind == "supplier_lot" and ":" not in ident:
        return False
    return bool(store.query(_KNOWN[kind][1], _params(kind, ident)))


def _closest(store: _Store, kind: str, ident: str, limit: int) -> list[str]:
    rows = store.query(
        f"SELECT id FROM ({_ALL_IDS[kind]}) WHERE id != {{q:String}}"  # noqa: S608 - fixed subqueries
        " ORDER BY editDistance(lower(id), lower({q:String})),"
        " ngramDistanceCaseInsensitive(id, {q:String}), id"
        " LIMIT {n:UInt32}",
        {"q": ident, "n": limit},
    )
    near = []
    for r in rows:
        cand = str(r["id"])
        # only real near misses: at most a third of the characters wrong, or one contains the other
        if ident.lower() in cand.lower() or cand.lower() in ident.lower():
            near.append(cand)
        elif _distance(cand.lower(), ident.lower()) <= max(1, len(ident) // 3):
            near.append(cand)
    return near


def _distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def suggestions(store: _Store, kind: str, ident: str) -> list[str]:
    """The closest known identifiers to ``ident`` as ``"<kind>:<id>"``, best first."""
    out: list[str] = []
    if kind in ("lot", "supplier_lot"):
        slot = ident.rpartition(":")[2] if kind == "supplier_lot" else ident
        rows = store.query(
            "SELECT DISTINCT supplier_id, supplier_lot, lot_id FROM material_received"
            " WHERE supplier_lot = {l:String} OR lot_id = {l:String} ORDER BY supplier_id, lot_id LIMIT 10",
            {"l": slot},
        )
        for r in rows:
            if r["supplier_lot"] == slot:
                out.append(f"supplier_lot:{r['supplier_id']}:{r['supplier_lot']}")
            if kind == "supplier_lot" and r["lot_id"] == slot:
                out.append(f"lot:{r['lot_id']}")
    if kind == "serial":
        serial = ident.rpartition(":")[2]
        rows = store.query(
            "SELECT DISTINCT uii FROM unit_genealogy WHERE endsWith(uii, {s:String})"
            " ORDER BY editDistance(uii, {q:String}), uii LIMIT 10",
            {"s": ":" + serial, "q": ident},
        )
        out += [f"serial:{r['uii']}" for r in rows]
    out += [f"{kind}:{c}" for c in _closest(store, kind, ident, _MAX_SUGGESTIONS)]
    return list(dict.fromkeys(out))[:_MAX_SUGGESTIONS]


def require_known(store: _Store, kind: str, ident: str) -> None:
    """Raise :class:`NotFoundError` (with suggestions) if the store has never seen ``ident``."""
    if is_known(store, kind, ident):
        return
    searched = _KNOWN[kind][0] if kind in _KNOWN else "the store"
    raise NotFoundError(kind, ident, suggestions(store, kind, ident), searched)
