"""Recall queries: forward trace, backward trace and recall impact.

Plain SQL over the tables documented in docs/TABLES.md; every value is a bound parameter
(``{name:Type}``), never formatted into the SQL. Each chdb / HTTP round trip costs a
millisecond or more and each table read another, so the queries are folded into as few
statements as possible, every read a point or IN-set lookup on a table's ORDER BY key:

* lot recall / forward trace: TWO statements for a lot no other lot was made from. First the
  lot's consumers with their place in the assembly tree (``lot_units``, one point read: every
  unit of a lot sits together in ORDER BY (lot_id, uii)) and the lots made from it
  (``lot_lineage``); then every fact (genealogy, assembly / removal, consumption, shipment,
  test verdict) of exactly those units and their ancestors from the derived index
  ``unit_facts``. If lots were made from the lot, the lot closure is walked (one query per
  level) and the first statement rerun for the whole closure. The rest is computed in Python
  over those facts; a unit not fetched yet (a past parent outside the lot's systems, a
  consumer, an ancestor a lagging ``lot_units`` row did not name) is fetched with one more
  query, with the units two links around it (``_Facts`` mirrors exactly which units it holds
  every fact for). ``lot_units`` decides only WHICH units are fetched; their genealogy is read
  from ``unit_facts``, so a row the genealogy processor has not updated yet costs a round
  trip, never a different answer.
* Python over the facts: rows arrive as Arrow columns turned into plain lists (no dict per
  row), and ``_Facts.add`` reduces them in one pass to what the answer needs per unit (latest
  genealogy, shipment, verdict; consumers, assemblies, removals); the keys of the facts
  statement are bound as one string the client sends as it is (``_keys_param``). A
  2,500-board lot: ~75 -> ~25 ms of Python at 1M serials (docs/BENCHMARKS.md, 2026-11-27).
* backward trace: the genealogy in one statement when the unit is its own root (a final
  system: ``root_members`` under the unit, and the candidates' genealogy rows), two when it
  sits in an assembly; then the operations of the units (and of the serialised units they
  consumed, one read per level), ``lot_transformed`` per upstream lot level, the receipts and
  the tests. Duplicate rows of a re-sent event are dropped in Python (``_first_per_event``)
  rather than by ``LIMIT 1 BY event_id``, which costs ~0.3-1.2 ms per read at 10M serials.

Genealogy is the ``GENEALOGY`` fact with the highest ``seq`` per uii (exact before merges).
Units with no genealogy fact were never assembled: they are their own root.

Status of an affected unit (``status``):
  * ``shipped``  - the unit or one of its current ancestors has a UnitShipped event (the
    closest one gives customer / destination);
  * ``in_stock`` - not shipped, and the latest test of its root (the final system, or the unit
    itself when it is not assembled) has verdict PASS;
  * ``in_work``  - otherwise.
"""

from __future__ import annotations

import functools
import gc
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ParamSpec, Protocol, TypeVar

__all__ = [
    "Trigger",
    "count_values",
    "AffectedUnit",
    "PastHolder",
    "LotHop",
    "ForwardTrace",
    "BackwardTrace",
    "RecallImpact",
    "forward_trace",
    "backward_trace",
    "backward_traces",
    "recall_impact",
    "recall_impacts",
    "to_jsonable",
    "TRIGGER_KINDS",
]

MAX_HOPS = 64  # cycle guard for the lot and unit closures
TRIGGER_KINDS = ("lot", "supplier_lot", "supplier", "serial", "station", "operator", "bench")


class _Store(Protocol):
    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]: ...


# ----------------------------------------------------------------------------- results


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
            raise ValueError(f"unknown trigger kind {self.kind!r}; expected one of {TRIGGER_KINDS}")


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
    """A unit that held an affected unit (or one of its current ancestors) in the past (rework)."""

    uii: str  # the past parent
    child_uii: str  # what it held then (affected unit or one of its ancestors)
    affected_uii: str  # the affected unit the chain leads to
    root_uii: str  # the past parent's current final system
    status: str
    customer_id: str | None = None
    removed_at: datetime | None = None
    removal_reason: str | None = None
    past: bool = True


@dataclass
class ForwardTrace:
    lot_id: str
    lots: list[LotHop]
    units: list[AffectedUnit]
    systems: list[dict[str, Any]]  # one per distinct root: root_uii, status, shipment fields, units
    past: list[PastHolder]


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

    @property
    def unit_count(self) -> int:
        return len(self.units)


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


# ----------------------------------------------------------------------------- building blocks

Hits = dict[str, tuple[list[str], str | None]]  # uii -> (trace, site where it met the trigger)


def _part(uii: str) -> str:
    return uii.split(":", 1)[0]


def _lot_closure(store: _Store, seeds: Iterable[str]) -> dict[str, LotHop]:
    """Every lot made (transitively) from the seed lots, with the hop it came from."""
    hops: dict[str, LotHop] = {s: LotHop(s, None, 0) for s in seeds}
    frontier = sorted(hops)
    depth = 0
    while frontier and depth < MAX_HOPS:
        depth += 1
        rows = store.query(
            "SELECT DISTINCT input_lot_id, output_lot_id, transformation FROM lot_lineage "
            "WHERE input_lot_id IN {lots:Array(String)} ORDER BY input_lot_id, output_lot_id",
            {"lots": frontier},
        )
        nxt = []
        for r in rows:
            out = r["output_lot_id"]
            if out not in hops:
                hops[out] = LotHop(out, r["input_lot_id"], depth, r["transformation"])
                nxt.append(out)
        frontier = sorted(nxt)
    return hops


def _lot_trace(hops: dict[str, LotHop], lot_id: str) -> list[str]:
    chain: list[str] = []
    cur: str | None = lot_id
    while cur is not None and len(chain) <= MAX_HOPS:
        chain.append(f"lot:{cur}")
        cur = hops[cur].from_lot_id if cur in hops else None
    return chain[::-1]


# unit_facts: one read answers everything the recall needs about a set of units. A query
# fetches the facts of its seed units *and* of every unit two "links" away (a link: the
# parent / consumer in ``link`` and the ancestors in ``path``), so the current ancestors, the
# past parents and their ancestors of the seeds all come back in the same round trip. Python
# mirrors that expansion to know exactly which units it holds every fact for; a unit outside
# that set is fetched with one more query (deep consumption chains, reworked subassemblies).
_FACT_COLS = ("uii", "kind", "link", "path", "seq", "event_time", "attrs")  # see docs/TABLES.md
# event_time as epoch milliseconds: cheaper to move and compare than datetimes
_F_SELECT = (
    "SELECT 'F' AS k, "
    + ", ".join(_FACT_COLS).replace("event_time", "toUnixTimestamp64Milli(event_time) AS event_time")
    + " FROM unit_facts"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ms(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


_LINKED = (
    "SELECT arrayJoin(arrayConcat([uii], path, if(isNull(link), [], [assumeNotNull(link)]))) FROM unit_facts"
)


def _facts_sql(seeds: str) -> str:
    """Facts of the units ``seeds`` (a subquery or an array parameter) and two links around.

    Only the latest row per (uii, kind, link) comes back: older genealogy versions under the same
    parent, re-tests and repeated shipments are never needed (fewer rows to move and parse)."""
    return (
        f"SELECT * FROM ({_F_SELECT} WHERE uii IN ({_LINKED} WHERE uii IN ({_LINKED} WHERE uii IN ({seeds})))"
        " ORDER BY uii, kind, link, seq DESC, event_time DESC LIMIT 1 BY uii, kind, link)"
    )


def _key(attrs: Sequence[str | None]) -> tuple[str, ...]:  # a total order for ties
    return tuple("" if a is None else a for a in attrs)


# one fact row as it comes off the wire: (uii, kind, link, path, seq, event_time ms, attrs)
_FactRow = tuple[str, str, "str | None", list[str], int, int, list["str | None"]]
_Ship = list["str | None"]  # [shipment_id, customer_id, destination_site, end_system]


class _Facts:
    """The facts of the units fetched so far, reduced per unit and kind as they arrive (one
    pass over the rows, no per-row objects kept): the latest genealogy (highest (seq, time),
    the first row on a tie), the latest shipment and test (highest (time, attrs)), and the
    consumption / assembly / removal rows. ``fetched`` is exactly the set of units it holds
    every fact for; asking about another unit notes it in ``missing`` (see ``_resolve``)."""

    __slots__ = (
        "fetched",
        "missing",
        "_adj",
        "_gen",
        "_ship",
        "_test",
        "_consumed",
        "_assembled",
        "_removed",
    )

    def __init__(self) -> None:
        self.fetched: set[str] = set()
        self.missing: set[str] = set()  # asked for but not fetched (this pass)
        self._adj: dict[str, list[str]] = {}  # uii -> every path element and link of its rows
        self._gen: dict[str, tuple[int, int, str | None, list[str]]] = {}  # (seq, time, parent, path)
        self._ship: dict[str, tuple[int, _Ship]] = {}  # (time, attrs)
        self._test: dict[str, tuple[int, list[str | None]]] = {}  # (time, attrs)
        self._consumed: dict[str, dict[str, tuple[int, str | None]]] = {}  # consumer -> (time, site)
        self._assembled: dict[str, list[tuple[str, int]]] = {}  # (parent, time)
        self._removed: dict[str, list[tuple[str | None, int, str | None]]] = {}  # (parent, time, reason)

    @property
    def units(self) -> list[str]:
        """Units any row came back for."""
        return list(self._adj)

    def _linked(self, keys: Iterable[str]) -> set[str]:
        out = set(keys)
        adj = self._adj
        for k in list(out):
            out.update(adj.get(k, ()))
        return out

    def _forget(self, u: str) -> None:
        for d in (self._gen, self._ship, self._test, self._consumed, self._assembled, self._removed):
            d.pop(u, None)

    def add(self, rows: Iterable[_FactRow], seeds: Iterable[str]) -> None:
        """Take the rows of units not fetched yet (a unit's rows replace what an earlier
        statement returned for it), then mark the seeds and two links around them fetched:
        exactly what ``_facts_sql`` fetched."""
        fetched, adj, gen, ship, test = self.fetched, self._adj, self._gen, self._ship, self._test
        batch: set[str] = set()
        prev: str | None = None
        skip = True
        a: list[str] = []
        for u, kind, link, path, seq, t, attrs in rows:
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
                self._assembled.setdefault(u, []).append((link, t))  # type: ignore[arg-type]
            elif kind == "SHIPPED":
                sh = ship.get(u)
                if sh is None or t > sh[0] or (t == sh[0] and _key(attrs) > _key(sh[1])):
                    ship[u] = (t, attrs)
            elif kind == "CONSUMED_BY":  # per consumer: the latest row
                c = self._consumed.setdefault(u, {})
                if link not in c or t > c[link][0]:
                    c[link] = (t, attrs[0])  # type: ignore[index]
            elif kind == "REMOVED":
                self._removed.setdefault(u, []).append((link, t, attrs[0] if attrs else None))
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

    def shipment(self, uii: str) -> _Ship | None:
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


def _fetch(store: _Store, facts: _Facts, keys: Iterable[str]) -> None:
    seeds = sorted(set(keys) - facts.fetched)
    if seeds:
        facts.add(_fact_rows(store, _facts_sql("{seeds:Array(String)}"), {"seeds": seeds}), seeds)


def _fetch_exact(store: _Store, facts: _Facts, keys: Iterable[str]) -> None:
    """Every fact of exactly ``keys`` (no links around them)."""
    want = sorted(set(keys) - facts.fetched)
    if want:
        facts.add(_fact_rows(store, *_keys_param(want)), [])
        facts.fetched.update(want)


def _resolve(store: _Store, facts: _Facts, fn: Any) -> Any:
    """Run ``fn()`` (pure, over ``facts``); if it asked for units not fetched, fetch them all in
    one query and rerun, until a pass needs nothing more."""
    for _ in range(4 * MAX_HOPS):
        facts.missing.clear()
        out = fn()
        if not facts.missing:
            return out
        _fetch(store, facts, facts.missing)
    raise RuntimeError("recall: fact closure did not converge")


# lot_units (docs/TABLES.md): the consumers of the lots (U: lot, uii, site, path at seq) and
# the lots made from them (E), in one point read on each table's ORDER BY key.
_LOT_UNITS_SQL = (
    "SELECT 'U' AS k, lot_id AS a, uii AS b, toString(site) AS c, path, seq FROM lot_units"
    " WHERE lot_id IN {lots:Array(String)}"
    " UNION ALL SELECT DISTINCT 'E', input_lot_id, output_lot_id, toString(transformation),"
    " CAST([], 'Array(String)'), toUInt64(0) FROM lot_lineage WHERE input_lot_id IN {lots:Array(String)}"
)
_LOT_UNITS_COLS = ("k", "a", "b", "c", "path", "seq")
# every fact of exactly the given units (the latest row per uii, kind, link; returning every row
# unsorted and reducing in Python was measured at 10M serials: -0.7 ms for a 200-board lot, +3 ms
# for a 2,500-board one, whose units carry ~2.6 genealogy versions each). The keys go in as one
# string, separated by _SEP: binding a long Array(String) costs ~4 us per element in the client
# (13 ms for the 3,400 units of a 2,500-board lot); the IN set still uses the index.
_SEP = "\x1f"  # ASCII unit separator
_EXACT_FACTS_SQL = (
    f"SELECT * FROM ({_F_SELECT} WHERE uii IN splitByChar('\\x1F', {{keys:String}})"
    " ORDER BY uii, kind, link, seq DESC, event_time DESC LIMIT 1 BY uii, kind, link)"
)
_EXACT_FACTS_ARRAY_SQL = _EXACT_FACTS_SQL.replace(
    "splitByChar('\\x1F', {keys:String})", "{keys:Array(String)}"
)
# what clickhouse-connect escapes in a bound String (binding.must_escape)
_ESCAPED = frozenset("\\'`\t\n")


class _Verbatim:
    """A bound ``String`` parameter whose text holds no character the client escapes, so its
    ``str()`` is exactly what the client would send for the plain string; the client formats
    objects it does not know with ``str()``. Its per-character escaping loop otherwise costs
    ~0.3 us per character (7 ms for the 42,000 characters of a 2,500-board lot's keys)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text


def _keys_param(keys: Sequence[str]) -> tuple[str, dict[str, Any]]:
    """The exact-facts statement and its parameters for ``keys``: one separator-joined string
    when no key holds a character the client escapes (or the separator), else an array."""
    text = _SEP.join(keys)
    if _ESCAPED.isdisjoint(text) and text.count(_SEP) == len(keys) - 1:
        return _EXACT_FACTS_SQL, {"keys": _Verbatim(text)}
    return _EXACT_FACTS_ARRAY_SQL, {"keys": list(keys)}


def _columns(store: _Store, sql: str, params: dict[str, Any], names: Sequence[str]) -> list[list[Any]]:
    """The result's columns ``names``, each as a list, moved as Arrow columns when the store can
    (no per-row dict; the recall statements return no datetimes, so nothing needs converting)."""
    query_arrow = getattr(store, "query_arrow", None)
    if query_arrow is None:
        rows = store.query(sql, params)
        return [[r[n] for r in rows] for n in names]
    tbl = query_arrow(sql, params)
    return [tbl.column(n).to_pylist() for n in names]


def _fact_rows(store: _Store, sql: str, params: dict[str, Any]) -> Iterable[_FactRow]:
    return zip(*_columns(store, sql, params, _FACT_COLS), strict=True)


def _seed_from_lots(
    store: _Store, lot_ids: Sequence[str], prefix: list[str], facts: _Facts
) -> tuple[dict[str, LotHop], Hits]:
    """Lots -> descendant lots -> consuming units, fetching the units' facts on the way.

    Optimistic: one statement for the given lots (``lot_units`` + ``lot_lineage``); if it
    shows lots made from them, the lot closure is walked and the statement rerun for the whole
    closure. Then ONE more statement fetches every fact of the consumers and of their
    ancestors (the ``path`` of the consumer's latest ``lot_units`` row). That path is only a
    hint of which units to fetch: the genealogy itself is read from ``unit_facts`` as
    everywhere else, and units it leads to that were not fetched are fetched on demand
    (``_resolve``), so a lagging ``lot_units`` row costs a round trip, never a wrong answer."""
    hops: dict[str, LotHop] = {s: LotHop(s, None, 0) for s in lot_ids}
    if not hops:
        return hops, {}
    cols = _columns(store, _LOT_UNITS_SQL, {"lots": sorted(hops)}, _LOT_UNITS_COLS)
    if any(k == "E" and b not in hops for k, b in zip(cols[0], cols[2], strict=True)):
        hops = _lot_closure(store, lot_ids)
        cols = _columns(store, _LOT_UNITS_SQL, {"lots": sorted(hops)}, _LOT_UNITS_COLS)
    latest: dict[tuple[str, str], tuple[int, list[str]]] = {}  # (lot, uii) -> (seq, path)
    site: dict[tuple[str, str], str] = {}  # (lot, uii) -> smallest site
    for k, lot, u, c, path, seq in zip(*cols, strict=True):
        if k != "U":
            continue
        key = (lot, u)
        old = latest.get(key)
        if old is None:
            latest[key] = (seq, path)
            site[key] = c
            continue
        if seq > old[0]:
            latest[key] = (seq, path)
        if c < site[key]:
            site[key] = c
    hits: Hits = {}
    keys: set[str] = set()
    traces: dict[str, list[str]] = {}
    for lot, u in sorted(latest):
        key = (lot, u)
        keys.add(u)
        keys.update(latest[key][1])
        if u not in hits:
            trace = traces.get(lot)
            if trace is None:
                trace = traces[lot] = [*prefix, *_lot_trace(hops, lot)]
            hits[u] = ([*trace, f"uii:{u}"], site[key])
    _fetch_exact(store, facts, keys)
    return hops, hits


def _unit_closure(facts: _Facts, seeds: Hits) -> Hits:
    """Add units that consumed the seed units (serialised parts consumed in an operation)."""
    found = dict(seeds)
    frontier = sorted(seeds)
    hops = 0
    while frontier and hops < MAX_HOPS:
        hops += 1
        nxt = []
        for consumed in frontier:
            rows = facts.consumers(consumed)
            if not rows:
                continue
            for c in sorted(rows):
                if c not in found:
                    c_site = rows[c][1]
                    trace, _site = found[consumed]
                    found[c] = ([*trace, f"uii:{c}"], c_site)
                    nxt.append(c)
        frontier = sorted(nxt)
    return found


def _status(
    u: str, path: list[str], root: str, ships: dict[str, _Ship], verdicts: dict[str, str]
) -> tuple[str, _Ship | None, str | None]:
    """The unit first, then its ancestors up to the root: the closest shipment wins."""
    if u in ships:
        return "shipped", ships[u], u
    for a in path:
        if a in ships:
            return "shipped", ships[a], a
    if verdicts.get(root) == "PASS":
        return "in_stock", None, None
    return "in_work", None, None


def _state(
    facts: _Facts, nodes: Iterable[str]
) -> tuple[dict[str, tuple[str | None, str, list[str]]], dict[str, _Ship], dict[str, str]]:
    """Genealogy of ``nodes``, shipments of them and their ancestors, verdicts of their roots."""
    genealogy, shipment, verdict = facts.genealogy, facts.shipment, facts.verdict
    gen = {u: genealogy(u) for u in nodes}
    ships: dict[str, _Ship] = {}
    verdicts: dict[str, str] = {}
    asked: set[str] = set()
    roots: set[str] = set()
    for u, (_parent, root, path) in gen.items():
        for n in (u, *path):
            if n not in asked:
                asked.add(n)
                s = shipment(n)
                if s is not None:
                    ships[n] = s
        if root not in roots:
            roots.add(root)
            v = verdict(root)
            if v is not None:
                verdicts[root] = v
    return gen, ships, verdicts


def _build_units(facts: _Facts, hits: Hits) -> list[AffectedUnit]:
    gen, ships, verdicts = _state(facts, hits)
    units = []
    for u in sorted(hits):
        trace, site = hits[u]
        parent, root, path = gen[u]
        status, ship, shipped_uii = _status(u, path, root, ships, verdicts)
        if ship is None:
            shipment_id = customer_id = destination_site = end_system = None
        else:
            shipment_id, customer_id, destination_site, end_system = ship
        units.append(
            AffectedUnit(
                uii=u,
                part_number=_part(u),
                trace=trace,
                parent_uii=parent,
                root_uii=root,
                path=path,
                status=status,
                site=site,
                shipped_uii=shipped_uii,
                shipment_id=shipment_id,
                customer_id=customer_id,
                destination_site=destination_site,
                end_system=end_system,
            )
        )
    return units


def _past_holders(facts: _Facts, units: list[AffectedUnit]) -> list[PastHolder]:
    """Parents that once held an affected unit, or one of its current ancestors, but do not now."""
    # every node on an affected chain -> (the path of the last affected unit it was seen on, its
    # index there: its current ancestors are the path after it) and the affected unit it leads
    # to (the first one)
    where: dict[str, tuple[list[str], int]] = {}
    leads_to: dict[str, str] = {}
    for au in units:
        u, path = au.uii, au.path
        where[u] = (path, -1)
        if u not in leads_to:
            leads_to[u] = u
        for i, node in enumerate(path):
            where[node] = (path, i)
            if node not in leads_to:
                leads_to[node] = u
    facts.need(where)
    assembled_of, removed_of = facts._assembled, facts._removed
    assembled: dict[tuple[str, str], int] = {}
    removed: dict[tuple[str, str | None], tuple[int, str | None]] = {}
    above: dict[str, list[str]] = {}
    for node in sorted(where.keys() & assembled_of.keys()):
        path, i = where[node]
        above[node] = path[i + 1 :]
        for p, t in assembled_of[node]:
            key = (node, p)
            if key not in assembled or t > assembled[key]:
                assembled[key] = t
        for rp, rt, reason in removed_of.get(node, ()):
            rkey = (node, rp)
            if rkey not in removed or rt > removed[rkey][0]:
                removed[rkey] = (rt, reason)
    # a past parent is one the child was assembled into and is not (directly or higher up) in now
    past = [(c, p) for (c, p) in assembled if p not in above[c]]
    if not past:
        return []
    gen, ships, verdicts = _state(facts, {p for _c, p in past})
    out = []
    for c, p in sorted(past):
        _parent, root, path = gen[p]
        status, ship, _su = _status(p, path, root, ships, verdicts)
        rm = removed.get((c, p))
        out.append(
            PastHolder(
                uii=p,
                child_uii=c,
                affected_uii=leads_to[c],
                root_uii=root,
                status=status,
                customer_id=ship[1] if ship else None,
                removed_at=_ms(rm[0]) if rm else None,
                removal_reason=rm[1] if rm else None,
            )
        )
    return out


def _impact(store: _Store, facts: _Facts, seeds: Hits) -> tuple[list[AffectedUnit], list[PastHolder]]:
    def derive() -> tuple[list[AffectedUnit], list[PastHolder]]:
        units = _build_units(facts, _unit_closure(facts, seeds))
        return units, _past_holders(facts, units)

    return _resolve(store, facts, derive)


def _systems(units: list[AffectedUnit]) -> list[dict[str, Any]]:
    by_root: dict[str, dict[str, Any]] = {}
    for u in units:
        s = by_root.get(u.root_uii)
        if s is None:
            by_root[u.root_uii] = {
                "root_uii": u.root_uii,
                "part_number": _part(u.root_uii),
                "status": u.status,
                "customer_id": u.customer_id,
                "destination_site": u.destination_site,
                "end_system": u.end_system,
                "shipment_id": u.shipment_id,
                "units": [u.uii],
            }
            continue
        s["units"].append(u.uii)
        if u.status == "shipped" and s["status"] != "shipped":  # a root-level shipment wins
            s.update(
                status="shipped",
                customer_id=u.customer_id,
                destination_site=u.destination_site,
                end_system=u.end_system,
                shipment_id=u.shipment_id,
            )
    return [by_root[k] for k in sorted(by_root)]


def count_values(values: Iterable[str | None]) -> dict[str, int]:
    """How often each value occurs (None counted as "(none)"), sorted by value."""
    out = Counter(values)
    if None in out:
        out["(none)"] += out.pop(None)
    return dict(sorted(out.items()))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- seeds per trigger


def _window(trigger: Trigger) -> dict[str, Any]:
    return {"ws": trigger.window_start, "we": trigger.window_end}


_NTS = "Nullable(DateTime64(3, 'UTC'))"
_EVENT_TIME_IN_WINDOW = (
    f"({{ws:{_NTS}}} IS NULL OR event_time >= {{ws:{_NTS}}})"
    f" AND ({{we:{_NTS}}} IS NULL OR event_time <= {{we:{_NTS}}})"
)
_OVERLAP = (
    "({ws:Nullable(DateTime64(3, 'UTC'))} IS NULL OR finished_at >= {ws:Nullable(DateTime64(3, 'UTC'))})"
    " AND ({we:Nullable(DateTime64(3, 'UTC'))} IS NULL OR started_at <= {we:Nullable(DateTime64(3, 'UTC'))})"
)


def _seeds(store: _Store, t: Trigger, facts: _Facts) -> tuple[dict[str, LotHop], Hits]:
    tag = f"{t.kind}:{t.id}"
    if t.kind == "lot":
        return _seed_from_lots(store, [t.id], [], facts)
    if t.kind in ("supplier_lot", "supplier"):
        if t.kind == "supplier_lot":
            supplier, _, slot = t.id.partition(":")
            rows = store.query(
                "SELECT DISTINCT lot_id FROM material_received"
                " WHERE supplier_id = {s:String} AND supplier_lot = {l:String}",
                {"s": supplier, "l": slot},
            )
        else:
            rows = store.query(
                "SELECT DISTINCT lot_id FROM material_received WHERE supplier_id = {s:String}"
                f" AND {_EVENT_TIME_IN_WINDOW}",
                {"s": t.id, **_window(t)},
            )
        return _seed_from_lots(store, sorted(r["lot_id"] for r in rows), [tag], facts)
    if t.kind == "serial":
        return {}, {t.id: ([f"uii:{t.id}"], None)}
    hits: Hits = {}
    hops: dict[str, LotHop] = {}
    if t.kind in ("station", "operator"):
        col = "station_id" if t.kind == "station" else "operator_id"
        rows = store.query(
            f"SELECT uii, any(site) AS site FROM operations WHERE {col} = {{id:String}} AND {_OVERLAP}"
            " GROUP BY uii",
            {"id": t.id, **_window(t)},
        )
        for r in rows:
            hits[r["uii"]] = ([tag, f"uii:{r['uii']}"], r["site"])
        if t.kind == "station":  # lots processed at the station carry the suspect work downstream
            lots = store.query(
                "SELECT DISTINCT lot_id FROM lot_transformed WHERE station_id = {id:String}"
                f" AND {_EVENT_TIME_IN_WINDOW}",
                {"id": t.id, **_window(t)},
            )
            if lots:
                hops, lot_hits = _seed_from_lots(store, sorted(r["lot_id"] for r in lots), [tag], facts)
                for u, v in lot_hits.items():
                    hits.setdefault(u, v)
    else:  # bench
        rows = store.query(
            f"SELECT uii, any(site) AS site FROM unit_tests WHERE bench_id = {{id:String}} AND {_OVERLAP}"
            " GROUP BY uii",
            {"id": t.id, **_window(t)},
        )
        for r in rows:
            hits[r["uii"]] = ([tag, f"uii:{r['uii']}"], r["site"])
    return hops, hits


# ----------------------------------------------------------------------------- public queries

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _gc_paused(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run ``fn`` with the cyclic garbage collector paused. A large recall builds tens of
    thousands of small dicts and lists (no reference cycles: reference counting frees them),
    which triggers collections that scan every live object: measured on a 2,500-unit lot,
    p50 108 -> 76 ms and the max 184 -> 79 ms. Re-enabled afterwards unless it was off."""

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            if was_enabled:
                gc.enable()

    return wrapper


@_gc_paused
def forward_trace(store: _Store, lot_id: str) -> ForwardTrace:
    """Lot -> descendant lots -> units that consumed them -> units consuming those -> their
    current assemblies up to the final system -> shipment / customer. Plus past holders.
    One round trip for a lot no other lot was made from (see ``_seed_from_lots``)."""
    facts = _Facts()
    hops, hits = _seed_from_lots(store, [lot_id], [], facts)
    units, past = _impact(store, facts, hits)
    return ForwardTrace(
        lot_id=lot_id,
        lots=sorted(hops.values(), key=lambda h: (h.depth, h.lot_id)),
        units=units,
        systems=_systems(units),
        past=past,
    )


@_gc_paused
def recall_impact(store: _Store, trigger: Trigger) -> RecallImpact:
    """Impact of a suspect lot / supplier lot / supplier / serial / station / operator / bench
    (window). ``units`` are where the suspect part is installed now; ``past`` lists parents that
    held it (or one of its assemblies) before a removal, flagged ``past``."""
    return recall_impacts(store, [trigger])[0]


@_gc_paused
def recall_impacts(store: _Store, triggers: Sequence[Trigger]) -> list[RecallImpact]:
    """``recall_impact`` of several triggers, in order. Each trigger's seeds are read as for one,
    the facts of all the seeded units in one statement, and every fact read is shared: a unit's
    facts are the same whichever trigger reached it (the alert engine evaluates all the NCs and
    holds of a batch at once)."""
    facts = _Facts()
    seeded = [(t, *_seeds(store, t, facts)) for t in triggers]
    _fetch(store, facts, {u for _t, _hops, hits in seeded for u in hits})  # units no lot statement read
    out = []
    for trigger, hops, hits in seeded:
        units, past = _impact(store, facts, hits)
        out.append(
            RecallImpact(
                trigger=trigger,
                units=units,
                past=past,
                systems=_systems(units),
                by_customer=count_values(u.customer_id for u in units),
                by_site=count_values(u.destination_site if u.status == "shipped" else u.site for u in units),
                by_status=count_values(u.status for u in units),
                lots=sorted(hops.values(), key=lambda h: (h.depth, h.lot_id)),
            )
        )
    return out


# ----------------------------------------------------------------------------- backward trace

_OP_COLS = (
    "uii",
    "work_order",
    "operation",
    "station_id",
    "operator_id",
    "started_at",
    "finished_at",
    "creates_unit",
    "event_id",
    "site",
)
_OP_READ = (*_OP_COLS, "event_time", "consumed_lot_ids", "consumed_lot_quantities", "consumed_uiis")


def _cols(cols: Sequence[str]) -> str:
    return ", ".join(f"`{c}`" for c in cols)


# the genealogy rows of units and of the candidates under a root (root_members), given as the
# units themselves (``_MEMBERS_AS_ROOT_SQL``: optimistic, right for a final system) or as the
# roots of the units' latest genealogy rows
_MEMBERS_AS_ROOT_SQL = (
    f"{_F_SELECT} WHERE kind = 'GENEALOGY' AND (uii IN {{u:Array(String)}} OR uii IN ("
    " SELECT uii FROM root_members WHERE root_uii IN {u:Array(String)}))"
)
_MEMBERS_SQL = (
    f"{_F_SELECT} WHERE kind = 'GENEALOGY' AND (uii IN {{u:Array(String)}} OR uii IN ("
    " SELECT uii FROM root_members WHERE root_uii IN ("
    "  SELECT argMax(root_uii, seq) FROM unit_facts"
    "  WHERE uii IN {u:Array(String)} AND kind = 'GENEALOGY' GROUP BY uii)))"
)

_Units = dict[str, dict[str, Any]]  # uii -> the backward trace's row of the unit


def _members(store: _Store, uiis: Sequence[str]) -> dict[str, tuple[str, _Units]]:
    """Root of each unit and its current descendants: one statement when every unit is its own
    root (final systems, or units never assembled: the usual backward trace), two otherwise.
    The first statement reads the candidates under the units as roots, skipping the nested
    read of their roots (~4 ms at 10M serials); for a unit whose genealogy names another root,
    the statement that reads the candidates under that root follows."""
    want = sorted(set(uiis))
    out: dict[str, tuple[str, _Units]] = {}
    sql = _MEMBERS_AS_ROOT_SQL
    while want:
        facts = _Facts()
        facts.add(_fact_rows(store, sql, {"u": want}), [])
        facts.fetched = {*facts.units, *want}  # every GENEALOGY row of these units
        gen = {m: facts.genealogy(m) for m in sorted(facts.units)}
        inner = []
        for uii in want:
            root = facts.genealogy(uii)[1]
            if sql is _MEMBERS_AS_ROOT_SQL and root != uii:
                inner.append(uii)  # not a root: its root's members are read next
                continue
            units: _Units = {}
            for m, (parent, m_root, path) in gen.items():
                if m_root == root and (m == uii or uii in path):
                    units[m] = {"uii": m, "parent_uii": parent, "path": path, "consumed_by": None}
            units.setdefault(uii, {"uii": uii, "parent_uii": None, "path": [], "consumed_by": None})
            out[uii] = (root, units)
        want, sql = inner, _MEMBERS_SQL
    return out


def _first_per_event(rows: list[dict[str, Any]], drop: bool = False) -> list[dict[str, Any]]:
    """The first row of each ``event_id`` (a re-sent event lands twice until a merge), in row
    order; what ``LIMIT 1 BY event_id`` returned, without its ~0.3-1.2 ms per statement at 10M
    serials. ``drop``: remove the ``event_id`` key from the rows kept."""
    seen: set[str] = set()
    out = []
    for r in rows:
        e = r.pop("event_id") if drop else r["event_id"]
        if e not in seen:
            seen.add(e)
            out.append(r)
    return out


def _grouped(rows: list[dict[str, Any]], key: str, keys: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
    """``rows`` by their value of ``key``, with a list (maybe empty) for each of ``keys``."""
    out: dict[str, list[dict[str, Any]]] = {k: [] for k in keys}
    for r in rows:
        out[r[key]].append(r)
    return out


@_gc_paused
def backward_trace(store: _Store, uii: str) -> BackwardTrace:
    """A unit or system -> every current descendant, with the lots, upstream lots, material
    receipts, operations (operator, station, work order, times) and tests of each.

    The genealogy in one statement (two for a unit inside an assembly, see ``_members``); then
    plain point reads level by level (operations of the units, of the serialised units they
    consumed, ...; lot_transformed per upstream level; receipts; tests). Folding those into
    nested IN subqueries was measured slower at 10M serials: the raw tables are partitioned by
    month and every nested read of them costs."""
    return backward_traces(store, [uii])[uii]


@_gc_paused
def backward_traces(store: _Store, uiis: Sequence[str]) -> dict[str, BackwardTrace]:
    """``backward_trace`` of several units with the statements of one: each read is made once
    for all of them, then every trace follows its own units and lots through what was read
    (the alert engine's shipping gate traces all the shipments of a batch at once)."""
    members = _members(store, uiis)
    # operations of the units, then of the serialised units they consumed, level by level
    ops_of: dict[str, list[dict[str, Any]]] = {}
    frontier = sorted({m for _root, units in members.values() for m in units})
    hops = 0
    while frontier and hops < MAX_HOPS:
        hops += 1
        rows = _first_per_event(
            store.query(
                f"SELECT {_cols(_OP_READ)} FROM operations WHERE uii IN {{u:Array(String)}}", {"u": frontier}
            )
        )
        ops_of.update(_grouped(rows, "uii", frontier))
        frontier = sorted({c for r in rows for c in r["consumed_uiis"] if c not in ops_of})
    traces = {uii: _Trace(uii, *members[uii], ops_of) for uii in uiis}
    # upstream lot lineage (output -> inputs), keyed by lot_transformed.lot_id, level by level
    made_from: dict[str, list[dict[str, Any]]] = {}
    frontier = sorted({x["lot_id"] for t in traces.values() for x in t.lots})
    hops = 0
    while frontier and hops < MAX_HOPS:
        hops += 1
        rows = _first_per_event(
            store.query(
                "SELECT lot_id, transformation, input_lot_ids, input_quantities, station_id, event_time,"
                " event_id FROM lot_transformed WHERE lot_id IN {l:Array(String)}",
                {"l": frontier},
            )
        )
        made_from.update(_grouped(rows, "lot_id", frontier))
        frontier = sorted({i for r in rows for i in r["input_lot_ids"] if i not in made_from})
    receipts = (
        _first_per_event(
            store.query(
                "SELECT lot_id, part_number, supplier_id, supplier_lot, quantity, unit_of_measure,"
                " coc_reference, inspection_result, event_time, event_id"
                " FROM material_received WHERE lot_id IN {l:Array(String)}",
                {"l": sorted(made_from)},
            ),
            drop=True,
        )
        if made_from
        else []
    )
    tests = _first_per_event(
        store.query(
            "SELECT uii, bench_id, procedure_id, procedure_version, calibration_id, calibration_due,"
            " operator_id, started_at, finished_at, verdict, measurements.name AS m_name,"
            " measurements.value AS m_value, measurements.unit AS m_unit, measurements.low_limit AS m_low,"
            " measurements.high_limit AS m_high, measurements.passed AS m_passed, event_id"
            " FROM unit_tests WHERE uii IN {u:Array(String)}",
            {"u": sorted({u for t in traces.values() for u in t.units})},
        )
    )
    for t in tests:
        t["measurements"] = [
            {"name": n, "value": v, "unit": un, "low_limit": lo, "high_limit": hi, "passed": ok}
            for n, v, un, lo, hi, ok in zip(
                t.pop("m_name"),
                t.pop("m_value"),
                t.pop("m_unit"),
                t.pop("m_low"),
                t.pop("m_high"),
                t.pop("m_passed"),
                strict=False,
            )
        ]
    return {uii: t.result(made_from, receipts, tests) for uii, t in traces.items()}


class _Trace:
    """One unit's backward trace, followed through operations read for several traces."""

    def __init__(self, uii: str, root: str, units: _Units, ops_of: dict[str, list[dict[str, Any]]]) -> None:
        self.uii, self.root, self.units = uii, root, units
        self.ops: list[dict[str, Any]] = []
        frontier = sorted(units)
        hops = 0
        while frontier and hops < MAX_HOPS:  # serialised items consumed (and what they consumed)
            hops += 1
            nxt = []
            for u in frontier:
                for r in ops_of.get(u, ()):
                    self.ops.append(r)
                    for c in r["consumed_uiis"]:
                        if c not in units:
                            units[c] = {"uii": c, "parent_uii": None, "path": [], "consumed_by": r["uii"]}
                            nxt.append(c)
            frontier = sorted(nxt)
        for unit in units.values():  # depth below the traced unit
            p = unit["path"]
            unit["depth"] = p.index(uii) + 1 if uii in p else 0
            unit["part_number"] = _part(unit["uii"])
        self.lots = [
            {
                "uii": o["uii"],
                "lot_id": lot,
                "quantity": q,
                "work_order": o["work_order"],
                "operation": o["operation"],
                "station_id": o["station_id"],
                "operator_id": o["operator_id"],
                "event_time": o["event_time"],
            }
            for o in self.ops
            for lot, q in zip(o["consumed_lot_ids"], o["consumed_lot_quantities"], strict=False)
        ]

    def result(
        self,
        made_from: dict[str, list[dict[str, Any]]],
        receipts: list[dict[str, Any]],
        tests: list[dict[str, Any]],
    ) -> BackwardTrace:
        lineage: list[dict[str, Any]] = []  # upstream lots (output -> inputs)
        seen = {x["lot_id"] for x in self.lots}
        frontier = sorted(seen)
        hops = 0
        while frontier and hops < MAX_HOPS:
            hops += 1
            nxt = []
            for lot in frontier:
                for r in made_from.get(lot, ()):
                    for inp, q in zip(r["input_lot_ids"], r["input_quantities"], strict=False):
                        lineage.append(
                            {
                                "lot_id": r["lot_id"],
                                "input_lot_id": inp,
                                "input_quantity": q,
                                "transformation": r["transformation"],
                                "station_id": r["station_id"],
                                "event_time": r["event_time"],
                            }
                        )
                        if inp not in seen:
                            seen.add(inp)
                            nxt.append(inp)
            frontier = sorted(nxt)
        return BackwardTrace(
            uii=self.uii,
            root_uii=self.root,
            units=sorted(self.units.values(), key=lambda u: (u["depth"], u["uii"])),
            lots=sorted(self.lots, key=lambda x: (x["uii"], x["lot_id"])),
            lot_lineage=sorted(lineage, key=lambda x: (x["lot_id"], x["input_lot_id"])),
            materials=sorted((m for m in receipts if m["lot_id"] in seen), key=lambda x: x["lot_id"]),
            operations=sorted(
                ({k: o[k] for k in _OP_COLS} for o in self.ops), key=lambda o: (o["uii"], o["started_at"])
            ),
            tests=sorted(
                (t for t in tests if t["uii"] in self.units), key=lambda x: (x["uii"], x["finished_at"])
            ),
        )
