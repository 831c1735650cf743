"""Recall queries: forward trace (lot -> units) and recall impact (any trigger -> units).

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
  query, with the units two links around it (``Facts`` mirrors exactly which units it holds
  every fact for). ``lot_units`` decides only WHICH units are fetched; their genealogy is read
  from ``unit_facts``, so a row the genealogy processor has not updated yet costs a round
  trip, never a different answer.
* Python over the facts: rows arrive as Arrow columns turned into plain lists (no dict per
  row), and ``Facts.add`` reduces them in one pass to what the answer needs per unit (latest
  genealogy, shipment, verdict; consumers, assemblies, removals); the keys of the facts
  statement are bound as one string the client sends as it is (``_keys_param``). A
  2,500-board lot: ~75 -> ~25 ms of Python at 1M serials (docs/BENCHMARKS.md, 2026-11-27).

The fact reduction and what the backward trace (``queries.trace``) shares with these queries
are in ``queries.facts``; the result types in ``queries.results``.

Genealogy is the ``GENEALOGY`` fact with the highest ``seq`` per uii (exact before merges).
Units with no genealogy fact were never assembled: they are their own root.

Status of an affected unit (``status``):
  * ``shipped``  - the unit or one of its current ancestors has a UnitShipped event (the
    closest one gives customer / destination);
  * ``in_stock`` - not shipped, and the latest test of its root (the final system, or the unit
    itself when it is not assembled) has verdict PASS;
  * ``in_work``  - otherwise.

Past exposure (``past``: one ``PastHolder`` per hold)
-----------------------------------------------------
The *bad units* of a recall are the units that met the trigger themselves: the units whose
operations consumed one of the suspect lots (the trigger's lots and every lot made from them),
the suspect serial, the units worked at the station or by the operator, the units tested on
the bench. A unit that consumed a bad unit (a module that consumed a suspect die) is listed
among the affected ``units`` but is not a bad unit of its own: it holds the bad material only
from the moment it consumed it, and from that moment it is on the bad unit's chain anyway.

A unit X *held bad unit B in the past* if, at some moment t, X was on B's ancestor chain (B's
parent, that parent's parent, ... up to the final system) as the links stood at t, and X is
not on B's ancestor chain now. "As the links stood at t": a child's parent at t is the result
of its link events up to and including t (installs: UnitAssembled, or the child consumed by an
operation on the parent; removals: UnitRemoved), applied in the order of (event_time,
event_id), where a removal detaches the child only from the parent it has at that moment; the
genealogy's own rule (``streams.genealogy``, "Removal semantics") applied as of t instead of
as of now. "Now" is the same rule over every link event stored. So time order decides:

* a unit fitted into an LRU after the LRU left system S was never in S: S is not listed;
* when B leaves a sub-assembly SA, then SA and everything above SA at that moment (the LRU,
  its system) held B, and are listed, each with the same end of hold.

Each entry is one *hold*: a longest stretch of time [``held_from``, ``held_until``) during
which X was on B's chain (times in milliseconds; the link events of one millisecond take
effect together). So a unit that held bad material is listed once per (X, B, hold): once per
bad unit it held (several entries when it held several bad units), and twice for the same
B only if it held B, let go of it and held it again later. Each entry names the link whose
break ended the hold: ``removed_uii`` was taken out of ``removed_from_uii`` at
``removed_at`` (= ``held_until``); of the links between B and X that changed at that moment,
the one closest to B. ``removal_reason`` is the reason of the latest UnitRemoved of that link
at that moment (None when the child was moved by an install elsewhere, without a removal).
``child_uii`` is the unit just below X on B's chain at the end of the hold; ``root_uii``,
``status`` and ``customer_id`` describe X now. A chain stops at a unit already on it (a
cycle in bad data) and after ``MAX_HOPS`` ancestors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from typing import Any

from queries.facts import (
    F_SELECT,
    MAX_HOPS,
    Facts,
    LinkEvent,
    QueryStore,
    ShipAttrs,
    columns,
    fact_rows,
    gc_paused,
    part_of,
)
from queries.results import (
    AffectedUnit,
    ForwardTrace,
    LotHop,
    PastHolder,
    RecallImpact,
    Trigger,
    count_values,
)

__all__ = ["forward_trace", "recall_impact", "recall_impacts"]

# ----------------------------------------------------------------------------- building blocks

Hits = dict[str, tuple[list[str], str | None]]  # uii -> (trace, site where it met the trigger)


def _lot_closure(store: QueryStore, seeds: Iterable[str]) -> dict[str, LotHop]:
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


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ms(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


# unit_facts: one read answers everything the recall needs about a set of units. A query
# fetches the facts of its seed units *and* of every unit two "links" away (a link: the
# parent / consumer in ``link`` and the ancestors in ``path``), so the current ancestors, the
# past parents and their ancestors of the seeds all come back in the same round trip. Python
# mirrors that expansion to know exactly which units it holds every fact for; a unit outside
# that set is fetched with one more query (deep consumption chains, reworked subassemblies).
_LINKED = (
    "SELECT arrayJoin(arrayConcat([uii], path, if(isNull(link), [], [assumeNotNull(link)]))) FROM unit_facts"
)


def _facts_sql(seeds: str) -> str:
    """Facts of the units ``seeds`` (a subquery or an array parameter) and two links around.

    Only the latest row per (uii, kind, link) comes back, and every link event (one row per event
    id: ``eid`` is '' for the other kinds): older genealogy versions under the same parent,
    re-tests and repeated shipments are never needed (fewer rows to move and parse); the past
    exposure replays every install and removal."""
    return (
        f"SELECT * FROM ({F_SELECT} WHERE uii IN ({_LINKED} WHERE uii IN ({_LINKED} WHERE uii IN ({seeds})))"
        " ORDER BY uii, kind, link, seq DESC, event_time DESC LIMIT 1 BY uii, kind, link, eid)"
    )


def _fetch(store: QueryStore, facts: Facts, keys: Iterable[str]) -> None:
    seeds = sorted(set(keys) - facts.fetched)
    if seeds:
        facts.add(fact_rows(store, _facts_sql("{seeds:Array(String)}"), {"seeds": seeds}), seeds)


def _fetch_exact(store: QueryStore, facts: Facts, keys: Iterable[str]) -> None:
    """Every fact of exactly ``keys`` (no links around them)."""
    want = sorted(set(keys) - facts.fetched)
    if want:
        facts.add(fact_rows(store, *_keys_param(want)), [])
        facts.fetched.update(want)


def _resolve(store: QueryStore, facts: Facts, fn: Any) -> Any:
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
# every fact of exactly the given units (the latest row per uii, kind, link, and every link event,
# as in _facts_sql; returning every row
# unsorted and reducing in Python was measured at 10M serials: -0.7 ms for a 200-board lot, +3 ms
# for a 2,500-board one, whose units carry ~2.6 genealogy versions each). The keys go in as one
# string, separated by _SEP: binding a long Array(String) costs ~4 us per element in the client
# (13 ms for the 3,400 units of a 2,500-board lot); the IN set still uses the index.
_SEP = "\x1f"  # ASCII unit separator
_EXACT_FACTS_SQL = (
    f"SELECT * FROM ({F_SELECT} WHERE uii IN splitByChar('\\x1F', {{keys:String}})"
    " ORDER BY uii, kind, link, seq DESC, event_time DESC LIMIT 1 BY uii, kind, link, eid)"
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


def _seed_from_lots(
    store: QueryStore, lot_ids: Sequence[str], prefix: list[str], facts: Facts
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
    cols = columns(store, _LOT_UNITS_SQL, {"lots": sorted(hops)}, _LOT_UNITS_COLS)
    if any(k == "E" and b not in hops for k, b in zip(cols[0], cols[2], strict=True)):
        hops = _lot_closure(store, lot_ids)
        cols = columns(store, _LOT_UNITS_SQL, {"lots": sorted(hops)}, _LOT_UNITS_COLS)
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


def _unit_closure(facts: Facts, seeds: Hits) -> Hits:
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
    u: str, path: list[str], root: str, ships: dict[str, ShipAttrs], verdicts: dict[str, str]
) -> tuple[str, ShipAttrs | None, str | None]:
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
    facts: Facts, nodes: Iterable[str]
) -> tuple[dict[str, tuple[str | None, str, list[str]]], dict[str, ShipAttrs], dict[str, str]]:
    """Genealogy of ``nodes``, shipments of them and their ancestors, verdicts of their roots."""
    genealogy, shipment, verdict = facts.genealogy, facts.shipment, facts.verdict
    gen = {u: genealogy(u) for u in nodes}
    ships: dict[str, ShipAttrs] = {}
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


def _build_units(facts: Facts, hits: Hits) -> list[AffectedUnit]:
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
                part_number=part_of(u),
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


# One parent of a child over time: (parent, from ms, until ms or None while it still is, the
# reason of the latest removal of (child, parent) at ``until``).
Segment = tuple[str, int, int | None, str | None]
# A stretch of time a unit spent on a bad unit's chain: (from, until or None, the link whose
# break ends it: (child, parent, reason) or None while open, the unit below it on the chain)
Piece = tuple[int, int | None, tuple[str, str, str | None] | None, str]
_VERSION = itemgetter(0, 1, 2, 3)  # (ms, event id, removal after install, parent)
_BEFORE_ALL = -(2**63)


def _segments(events: list[LinkEvent]) -> tuple[Segment, ...]:
    """The parents of a child over time, from its link events: each millisecond's events folded
    in version order (a removal detaches only from the parent of that moment), one segment per
    longest run of the same parent (see "Past exposure" above)."""
    if len(events) == 1:  # the common case: installed once, never moved
        t, _eid, rm, p, _reason = events[0]
        return () if rm else ((p, t, None, None),)
    evs = sorted(events, key=_VERSION)
    out: list[Segment] = []
    cur: str | None = None
    since = 0
    i, n = 0, len(evs)
    while i < n:
        t = evs[i][0]
        new = cur
        reasons: dict[str, str | None] = {}  # parent -> reason of its latest removal at t
        while i < n and evs[i][0] == t:
            _t, _eid, rm, p, reason = evs[i]
            if rm:
                reasons[p] = reason
                if p == new:
                    new = None
            else:
                new = p
            i += 1
        if new != cur:
            if cur is not None:
                out.append((cur, since, t, reasons.get(cur)))
            cur, since = new, t
    if cur is not None:
        out.append((cur, since, None, None))
    return tuple(out)


def _chain_pieces(segments: Callable[[str], tuple[Segment, ...]], bad: str) -> dict[str, list[Piece]]:
    """Every unit that was ever on ``bad``'s ancestor chain -> the stretches it was there. A
    unit's stretch on the chain is cut to the stretches of the links below it: walking up, the
    parent ``p`` of ``c`` is on the chain while ``c`` is and ``p`` is ``c``'s parent."""
    pieces: dict[str, list[Piece]] = {}
    stack: list[tuple[str, int, int | None, tuple[str, str, str | None] | None, tuple[str, ...]]] = [
        (bad, _BEFORE_ALL, None, None, (bad,))
    ]
    hi: int | None
    hc: tuple[str, str, str | None] | None
    while stack:
        c, s, e, cause, route = stack.pop()
        for p, f, u, reason in segments(c):
            lo = f if f > s else s
            if u is not None and (e is None or u < e):
                hi, hc = u, (c, p, reason)  # this link breaks first
            else:
                hi, hc = e, cause  # a link below breaks first (or at the same moment: the lower one)
            if (hi is not None and hi <= lo) or p in route:
                continue  # not on the chain then, or a cycle
            pieces.setdefault(p, []).append((lo, hi, hc, c))
            if len(route) < MAX_HOPS:
                stack.append((p, lo, hi, hc, (*route, p)))
    return pieces


def _holds(pieces: list[Piece]) -> list[Piece]:
    """A past holder's pieces merged into holds (stretches that touch are one hold); [] if one
    is still open (the unit is on the chain now: not a past holder)."""
    if any(hi is None for _lo, hi, _hc, _c in pieces):
        return []
    out: list[Piece] = []
    for lo, hi, hc, c in sorted(pieces, key=itemgetter(0, 1)):
        if out and lo <= out[-1][1]:  # type: ignore[operator]
            if hi > out[-1][1]:  # type: ignore[operator]
                out[-1] = (out[-1][0], hi, hc, c)
        else:
            out.append((lo, hi, hc, c))
    return out


def _past_holders(facts: Facts, bad: Iterable[str]) -> list[PastHolder]:
    """Units that held one of the ``bad`` units in the past (see "Past exposure" above)."""
    seg_memo: dict[str, tuple[Segment, ...]] = {}
    steady: dict[str, bool] = {}

    def segments(u: str) -> tuple[Segment, ...]:
        seg = seg_memo.get(u)
        if seg is None:
            seg = seg_memo[u] = _segments(facts.links(u))
        return seg

    def is_steady(u: str) -> bool:
        """Neither ``u`` nor any unit above it ever changed parent: no unit ever left its chain
        (a lot without rework never walks its units' histories)."""
        chain: list[str] = []
        ok = True
        cur = u
        while True:
            known = steady.get(cur)
            if known is not None:
                ok = known
                break
            if cur in chain or len(chain) > MAX_HOPS:
                ok = False
                break
            chain.append(cur)
            seg = segments(cur)
            if not seg:
                break
            if len(seg) > 1 or seg[0][2] is not None:
                ok = False
                break
            cur = seg[0][0]
        for c in chain:
            steady[c] = ok
        return ok

    found: list[tuple[str, str, Piece]] = []
    for b in sorted(set(bad)):
        if is_steady(b):
            continue
        for x, pieces in _chain_pieces(segments, b).items():
            found.extend((x, b, hold) for hold in _holds(pieces))
    if not found:
        return []
    gen, ships, verdicts = _state(facts, {x for x, _b, _h in found})
    out = []
    for x, b, (lo, hi, hc, c) in sorted(found, key=lambda r: (r[0], r[1], r[2][0])):
        _parent, root, path = gen[x]
        status, ship, _su = _status(x, path, root, ships, verdicts)
        assert hi is not None and hc is not None  # a closed hold ends with a broken link
        out.append(
            PastHolder(
                uii=x,
                child_uii=c,
                affected_uii=b,
                root_uii=root,
                status=status,
                customer_id=ship[1] if ship else None,
                removed_at=_ms(hi),
                removal_reason=hc[2],
                held_from=_ms(lo),
                held_until=_ms(hi),
                removed_uii=hc[0],
                removed_from_uii=hc[1],
            )
        )
    return out


def _impact(store: QueryStore, facts: Facts, seeds: Hits) -> tuple[list[AffectedUnit], list[PastHolder]]:
    def derive() -> tuple[list[AffectedUnit], list[PastHolder]]:
        units = _build_units(facts, _unit_closure(facts, seeds))
        return units, _past_holders(facts, seeds)  # the seeds are the bad units

    return _resolve(store, facts, derive)


def _systems(units: list[AffectedUnit]) -> list[dict[str, Any]]:
    by_root: dict[str, dict[str, Any]] = {}
    for u in units:
        s = by_root.get(u.root_uii)
        if s is None:
            by_root[u.root_uii] = {
                "root_uii": u.root_uii,
                "part_number": part_of(u.root_uii),
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


def _seeds(store: QueryStore, t: Trigger, facts: Facts) -> tuple[dict[str, LotHop], Hits]:
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


@gc_paused
def forward_trace(store: QueryStore, lot_id: str) -> ForwardTrace:
    """Lot -> descendant lots -> units that consumed them -> units consuming those -> their
    current assemblies up to the final system -> shipment / customer. Plus past holders.
    One round trip for a lot no other lot was made from (see ``_seed_from_lots``)."""
    facts = Facts()
    hops, hits = _seed_from_lots(store, [lot_id], [], facts)
    units, past = _impact(store, facts, hits)
    return ForwardTrace(
        lot_id=lot_id,
        lots=sorted(hops.values(), key=lambda h: (h.depth, h.lot_id)),
        units=units,
        systems=_systems(units),
        past=past,
    )


@gc_paused
def recall_impact(store: QueryStore, trigger: Trigger) -> RecallImpact:
    """Impact of a suspect lot / supplier lot / supplier / serial / station / operator / bench
    (window). ``units`` are where the suspect part is installed now; ``past`` lists the units that
    held a bad unit in the past and do not now (module docstring, "Past exposure"), flagged
    ``past``."""
    return recall_impacts(store, [trigger])[0]


@gc_paused
def recall_impacts(store: QueryStore, triggers: Sequence[Trigger]) -> list[RecallImpact]:
    """``recall_impact`` of several triggers, in order. Each trigger's seeds are read as for one,
    the facts of all the seeded units in one statement, and every fact read is shared: a unit's
    facts are the same whichever trigger reached it (the alert engine evaluates all the NCs and
    holds of a batch at once)."""
    facts = Facts()
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
