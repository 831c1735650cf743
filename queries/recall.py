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
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from queries.facts import (
    F_SELECT,
    MAX_HOPS,
    Facts,
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

    Only the latest row per (uii, kind, link) comes back: older genealogy versions under the same
    parent, re-tests and repeated shipments are never needed (fewer rows to move and parse)."""
    return (
        f"SELECT * FROM ({F_SELECT} WHERE uii IN ({_LINKED} WHERE uii IN ({_LINKED} WHERE uii IN ({seeds})))"
        " ORDER BY uii, kind, link, seq DESC, event_time DESC LIMIT 1 BY uii, kind, link)"
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
# every fact of exactly the given units (the latest row per uii, kind, link; returning every row
# unsorted and reducing in Python was measured at 10M serials: -0.7 ms for a 200-board lot, +3 ms
# for a 2,500-board one, whose units carry ~2.6 genealogy versions each). The keys go in as one
# string, separated by _SEP: binding a long Array(String) costs ~4 us per element in the client
# (13 ms for the 3,400 units of a 2,500-board lot); the IN set still uses the index.
_SEP = "\x1f"  # ASCII unit separator
_EXACT_FACTS_SQL = (
    f"SELECT * FROM ({F_SELECT} WHERE uii IN splitByChar('\\x1F', {{keys:String}})"
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


def _past_holders(facts: Facts, units: list[AffectedUnit]) -> list[PastHolder]:
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
    assembled_of, removed_of = facts.assembled, facts.removed
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


def _impact(store: QueryStore, facts: Facts, seeds: Hits) -> tuple[list[AffectedUnit], list[PastHolder]]:
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
    (window). ``units`` are where the suspect part is installed now; ``past`` lists parents that
    held it (or one of its assemblies) before a removal, flagged ``past``."""
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
