"""What the recall (``queries.recall``) and the backward trace (``queries.trace``) share: the
read of the derived index ``unit_facts`` and the plumbing of every statement.

* ``QueryStore``: the one method the queries need of a store (``sinks.store.Store`` has it);
* ``FACT_COLS`` / ``F_SELECT``: the columns of a fact row and the SELECT that reads them
  (``event_time`` as epoch milliseconds: cheaper to move and compare than datetimes; ``eid``
  the event id of a link fact, '' for the other kinds);
* ``Facts``: the facts of the units fetched so far, reduced per unit as the rows arrive (latest
  genealogy, shipment, verdict; consumers; every link event: install, consumption, removal),
  with the exact set of units it holds every fact for;
* ``columns`` / ``fact_rows``: a statement's result as plain column lists, moved as Arrow
  columns when the store can (no dict per row);
* ``gc_paused`` (``schemas.nogc``, re-exported): the cyclic garbage collector paused for the
  length of a query;
* ``MAX_HOPS`` (the cycle guard of every closure walk) and ``part_of`` (a UII's part number).

Genealogy is the ``GENEALOGY`` fact with the highest ``seq`` per uii (exact before merges).
Units with no genealogy fact were never assembled: they are their own root.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from schemas.nogc import gc_paused

__all__ = [
    "MAX_HOPS",
    "QueryStore",
    "part_of",
    "FACT_COLS",
    "LINK_KINDS",
    "F_SELECT",
    "LinkEvent",
    "FactRow",
    "ShipAttrs",
    "Facts",
    "columns",
    "fact_rows",
    "gc_paused",
]

MAX_HOPS = 64  # cycle guard for the lot and unit closures


class QueryStore(Protocol):
    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]: ...


def part_of(uii: str) -> str:
    return uii.split(":", 1)[0]


FACT_COLS = ("uii", "kind", "link", "path", "seq", "event_time", "attrs", "eid")  # see docs/TABLES.md
#: the fact kinds that are link events of the genealogy (child ``uii`` -> parent ``link``)
LINK_KINDS = ("ASSEMBLED", "REMOVED", "CONSUMED_BY")
# event_time as epoch milliseconds: cheaper to move and compare than datetimes; the event id
# only for link facts (it breaks ties between link events of the same millisecond; the other
# kinds never need it, so they move an empty string)
F_SELECT = (
    "SELECT 'F' AS k, uii, kind, link, path, seq, toUnixTimestamp64Milli(event_time) AS event_time,"
    " attrs, if(kind IN ('" + "', '".join(LINK_KINDS) + "'), event_id, '') AS eid FROM unit_facts"
)


def _key(attrs: Sequence[str | None]) -> tuple[str, ...]:  # a total order for ties
    return tuple("" if a is None else a for a in attrs)


# one fact row as it comes off the wire: (uii, kind, link, path, seq, event_time ms, attrs, eid)
FactRow = tuple[str, str, "str | None", list[str], int, int, list["str | None"], str]
# one link event of a child: (time ms, event id, is a removal, parent, removal reason); sorted,
# the first four give the genealogy's version order (a removal after an install of the same
# version)
LinkEvent = tuple[int, str, bool, str, "str | None"]
ShipAttrs = list["str | None"]  # [shipment_id, customer_id, destination_site, end_system]


class Facts:
    """The facts of the units fetched so far, reduced per unit and kind as they arrive (one
    pass over the rows, no per-row objects kept): the latest genealogy (highest (seq, time),
    the first row on a tie), the latest shipment and test (highest (time, attrs)), the latest
    consumption per consumer, and every link event (install, consumption, removal) as a
    ``LinkEvent``. ``fetched`` is exactly the set of units it holds every fact for; asking
    about another unit notes it in ``missing`` (the recall fetches those and reruns, see
    ``queries.recall``)."""

    __slots__ = (
        "fetched",
        "missing",
        "_adj",
        "_gen",
        "_ship",
        "_test",
        "_consumed",
        "_links",
    )

    def __init__(self) -> None:
        self.fetched: set[str] = set()
        self.missing: set[str] = set()  # asked for but not fetched (this pass)
        self._adj: dict[str, list[str]] = {}  # uii -> every path element and link of its rows
        self._gen: dict[str, tuple[int, int, str | None, list[str]]] = {}  # (seq, time, parent, path)
        self._ship: dict[str, tuple[int, ShipAttrs]] = {}  # (time, attrs)
        self._test: dict[str, tuple[int, list[str | None]]] = {}  # (time, attrs)
        self._consumed: dict[str, dict[str, tuple[int, str | None]]] = {}  # consumer -> (time, site)
        self._links: dict[str, list[LinkEvent]] = {}  # child -> its link events, in row order

    @property
    def units(self) -> list[str]:
        """Units any row came back for."""
        return list(self._adj)

    def links(self, uii: str) -> list[LinkEvent]:
        """Every link event of ``uii`` as a child (installs into a parent: UnitAssembled, or the
        unit consumed by an operation of the parent; removals), in no particular order; one
        per event (the statements return one row per (uii, kind, link, event id))."""
        if uii not in self.fetched:
            self.missing.add(uii)
            return []
        return self._links.get(uii, [])

    def _linked(self, keys: Iterable[str]) -> set[str]:
        out = set(keys)
        adj = self._adj
        for k in list(out):
            out.update(adj.get(k, ()))
        return out

    def _forget(self, u: str) -> None:
        for d in (self._gen, self._ship, self._test, self._consumed, self._links):
            d.pop(u, None)

    def add(self, rows: Iterable[FactRow], seeds: Iterable[str]) -> None:
        """Take the rows of units not fetched yet (a unit's rows replace what an earlier
        statement returned for it), then mark the seeds and two links around them fetched:
        exactly what the recall's facts statement fetched (``queries.recall``)."""
        fetched, adj, gen, ship, test = self.fetched, self._adj, self._gen, self._ship, self._test
        links = self._links
        batch: set[str] = set()
        prev: str | None = None
        skip = True
        a: list[str] = []
        for u, kind, link, path, seq, t, attrs, eid in rows:
            if u != prev:  # rows come grouped by uii; the checks below hold for any order
                prev = u
                skip = u in fetched
                if skip:
                    continue
                if u in batch:
                    a = adj[u]
                else:
                    batch.add(u)
                    if u in adj:
                        self._forget(u)
                    a = adj[u] = []
            elif skip:
                continue
            if path:
                a.extend(path)
            if link is not None:
                a.append(link)
            if kind == "GENEALOGY":  # highest (seq, time), then the smallest parent (NULL last)
                g = gen.get(u)
                if (
                    g is None
                    or seq > g[0]
                    or (
                        seq == g[0]
                        and (t > g[1] or (t == g[1] and link is not None and (g[2] is None or link < g[2])))
                    )
                ):
                    gen[u] = (seq, t, link, path)
            elif kind == "TESTED":  # highest (time, attrs); the first row on a tie
                v = test.get(u)
                if v is None or t > v[0] or (t == v[0] and _key(attrs) > _key(v[1])):
                    test[u] = (t, attrs)
            elif kind == "ASSEMBLED":
                links.setdefault(u, []).append((t, eid, False, link, None))  # type: ignore[arg-type]
            elif kind == "SHIPPED":
                sh = ship.get(u)
                if sh is None or t > sh[0] or (t == sh[0] and _key(attrs) > _key(sh[1])):
                    ship[u] = (t, attrs)
            elif kind == "CONSUMED_BY":  # per consumer: the latest row
                c = self._consumed.setdefault(u, {})
                if link not in c or t > c[link][0]:
                    c[link] = (t, attrs[0])  # type: ignore[index]
                links.setdefault(u, []).append((t, eid, False, link, None))  # type: ignore[arg-type]
            elif kind == "REMOVED":
                reason = attrs[0] if attrs else None
                links.setdefault(u, []).append((t, eid, True, link, reason))  # type: ignore[arg-type]
        self.fetched |= self._linked(self._linked(seeds))

    def need(self, keys: Iterable[str]) -> None:
        """Note the keys not fetched yet; the pass's result is discarded and rerun after a fetch."""
        self.missing.update(k for k in keys if k not in self.fetched)

    def genealogy(self, uii: str) -> tuple[str | None, str, list[str]]:
        """Current (parent, root, path); a unit never assembled is its own root."""
        if uii not in self.fetched:
            self.missing.add(uii)
            return None, uii, []
        g = self._gen.get(uii)
        if g is None:
            return None, uii, []
        path = g[3]  # root last; a unit without ancestors is its own root
        return g[2], path[-1] if path else uii, path

    def shipment(self, uii: str) -> ShipAttrs | None:
        """[shipment_id, customer_id, destination_site, end_system] of the latest shipment."""
        if uii not in self.fetched:
            self.missing.add(uii)
            return None
        s = self._ship.get(uii)
        return s[1] if s is not None else None

    def verdict(self, uii: str) -> str | None:
        if uii not in self.fetched:
            self.missing.add(uii)
            return None
        v = self._test.get(uii)
        return v[1][0] if v is not None else None

    def consumers(self, uii: str) -> dict[str, tuple[int, str | None]]:
        """Consuming unit -> (time, site of the consuming operation) of its latest row."""
        if uii not in self.fetched:
            self.missing.add(uii)
            return {}
        return self._consumed.get(uii, {})


def columns(store: QueryStore, sql: str, params: dict[str, Any], names: Sequence[str]) -> list[list[Any]]:
    """The result's columns ``names``, each as a list, moved as Arrow columns when the store can
    (no per-row dict; the recall statements return no datetimes, so nothing needs converting)."""
    query_arrow = getattr(store, "query_arrow", None)
    if query_arrow is None:
        rows = store.query(sql, params)
        return [[r[n] for r in rows] for n in names]
    tbl = query_arrow(sql, params)
    return [tbl.column(n).to_pylist() for n in names]


def fact_rows(store: QueryStore, sql: str, params: dict[str, Any]) -> Iterable[FactRow]:
    return zip(*columns(store, sql, params, FACT_COLS), strict=True)
