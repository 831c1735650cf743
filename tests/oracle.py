"""Independent genealogy oracle: a plain graph walk over ALL events.

Shares no code with ``streams/`` on purpose; it states the rules a second time so a bug in
one cannot hide in the other.

Rules (the same as documented in ``streams/genealogy.py``):

* Units are keyed by UII ``"<part_number>:<serial_number>"``. Every unit named by a
  UnitAssembled / UnitRemoved (child and parent) or OperationCompleted (the unit and each
  consumed unit) exists.
* A link's version is ``(event_time epoch ms, event_id)``; an install (UnitAssembled, or a
  unit listed in OperationCompleted.consumed_units, whose parent is the operation's unit)
  and a removal with the very same version: the removal counts as later.
* Current parent of a child: take all its link events sorted by version and fold them,
  starting with no parent: an install sets the parent; a removal clears it only when it
  names the current parent (otherwise it is ignored).
* Path: the ancestors, parent first, root last (``()`` for a root); depth = its length.
  If a unit would sit more than ``MAX_DEPTH`` hops below its root, it is cut off as its own
  root and listed in ``depth_cut``. Units on a parent cycle, or below one, have no defined
  path here (``path[uii] is None``; they are listed in ``cyclic``).
* Past parents: every parent a unit was ever installed in (removed or not).
* Lots of a unit: every lot named in the consumed_lots of any of its OperationCompleted
  events, each with the smallest site among those events that consumed it.

Recall (``Plant``, the forward closure a lot recall must report, stated independently of
``queries/recall.py``):

* descendant lots of lot L: L and every lot made from it (LotTransformed inputs -> output),
  transitively;
* hit units: every unit whose OperationCompleted consumed one of those lots, plus every unit
  whose OperationCompleted consumed (consumed_units) a hit unit, transitively;
* impacted: the hit units and all their current ancestors (genealogy above);
* bad units: the units whose OperationCompleted consumed one of the descendant lots
  (``lot_users``); the units that consumed a bad unit are hit units, not bad units;
* past exposure (``past_exposure``): replay every link event in time order, one millisecond
  at a time (that millisecond's events per child in version order, a removal clearing the
  parent only when it names it). After each millisecond, walk every bad unit's ancestor chain
  as the parents stand then (stop at a repeat or after ``MAX_DEPTH`` ancestors). A unit X
  holds B from the first millisecond it is on B's chain until the first one it is not; at
  that end, the link that broke is the lowest link of the chain before it (from B up to X)
  whose child has another parent now, and the reason is that of the latest removal of that
  link in that millisecond (None if none). (X, B) is a past exposure when X is not on B's
  chain after the last event; its holds are reported, else none.
* past holders (``Plant.past_holders``): the (X, unit just below X at the end of the hold)
  pairs of the past exposure of the given units.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

MAX_DEPTH = 64  # must equal streams.genealogy.MAX_DEPTH (asserted by the tests)

_LINK_TYPES = ("UnitAssembled", "UnitRemoved", "OperationCompleted")


@dataclass
class Genealogy:
    units: set[str] = field(default_factory=set)
    parent: dict[str, str | None] = field(default_factory=dict)
    path: dict[str, tuple[str, ...] | None] = field(default_factory=dict)
    past_parents: dict[str, set[str]] = field(default_factory=dict)
    depth_cut: set[str] = field(default_factory=set)
    cyclic: set[str] = field(default_factory=set)
    lots: dict[str, dict[str, str]] = field(default_factory=dict)  # unit -> lot -> smallest site

    def root(self, uii: str) -> str | None:
        p = self.path[uii]
        if p is None:
            return None
        return p[-1] if p else uii


def _key(ref: dict[str, Any]) -> str:
    return ref["part_number"] + ":" + ref["serial_number"]


def _millis(t: Any) -> int:
    if isinstance(t, str):  # JSON form: ISO-8601 with "Z" or an offset
        t = datetime.fromisoformat(t.replace("Z", "+00:00"))
    if isinstance(t, datetime):
        assert t.tzinfo is not None, "naive event_time"
        delta = t.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
        return delta.days * 86_400_000 + delta.seconds * 1000 + delta.microseconds // 1000
    return int(t)


def _kind(ev: dict[str, Any]) -> str | None:
    if "type" in ev:
        return ev["type"]
    if "parent" in ev:
        return "UnitRemoved" if "reason" in ev else "UnitAssembled"
    if "consumed_units" in ev:
        return "OperationCompleted"
    return None


def genealogy(events: list[dict[str, Any]]) -> Genealogy:
    g = Genealogy()
    # child -> list of (ms, event_id, is_removal, parent)
    links: dict[str, list[tuple[int, str, int, str]]] = {}
    for ev in events:
        kind = _kind(ev)
        if kind not in _LINK_TYPES:
            continue
        ms, eid = _millis(ev["event_time"]), ev["event_id"]
        if kind == "OperationCompleted":
            parent = _key(ev["unit"])
            g.units.add(parent)
            for lot in ev.get("consumed_lots") or []:
                sites = g.lots.setdefault(parent, {})
                lot_id = lot["lot_id"]
                sites[lot_id] = min(sites.get(lot_id, ev["site"]), ev["site"])
            for ref in ev.get("consumed_units") or []:
                child = _key(ref)
                g.units.add(child)
                links.setdefault(child, []).append((ms, eid, 0, parent))
        else:
            child, parent = _key(ev["unit"]), _key(ev["parent"])
            g.units.update((child, parent))
            links.setdefault(child, []).append((ms, eid, 1 if kind == "UnitRemoved" else 0, parent))

    for unit in g.units:
        current: str | None = None
        past: set[str] = set()
        for _ms, _eid, is_removal, p in sorted(set(links.get(unit, []))):
            if is_removal:
                if p == current:
                    current = None
            else:
                current = p
                past.add(p)
        g.parent[unit] = current
        g.past_parents[unit] = past

    # paths: walk up; memoise; detect cycles. `done` holds full paths (unit first, root last).
    done: dict[str, tuple[str, ...] | None] = {}
    for start in sorted(g.units):
        chain: list[str] = []
        on_chain: set[str] = set()
        cur: str | None = start
        base: tuple[str, ...] | None = ()
        while cur is not None and cur not in done:
            if cur in on_chain:
                base = None  # cycle: everything on the chain is on or below it
                break
            chain.append(cur)
            on_chain.add(cur)
            cur = g.parent[cur]
        else:
            base = () if cur is None else done[cur]
        for node in reversed(chain):
            if base is None:
                done[node] = None
                g.cyclic.add(node)
                continue
            if len(base) + 1 > MAX_DEPTH + 1:
                base = (node,)
                g.depth_cut.add(node)
            else:
                base = (node, *base)
            done[node] = base
    g.path = {u: None if full is None else full[1:] for u, full in done.items()}
    return g


def past_parents(events: list[dict[str, Any]], uii: str) -> set[str]:
    return genealogy(events).past_parents.get(uii, set())


# --------------------------------------------------------------------------- past exposure

# one link event: (ms, event_id, is_removal, child, parent, reason)
LinkEv = tuple[int, str, int, str, str, "str | None"]
# one hold: (held_from ms, held_until ms, the unit below X at the end, broken link's child,
# broken link's parent, removal reason)
Hold = tuple[int, int, str, str, str, "str | None"]


def link_events(events: Iterable[dict[str, Any]]) -> list[LinkEv]:
    """Every install / removal of the events, once each (a re-sent event is the same event)."""
    out: set[LinkEv] = set()
    for ev in events:
        kind = _kind(ev)
        if kind not in _LINK_TYPES:
            continue
        ms, eid = _millis(ev["event_time"]), ev["event_id"]
        if kind == "OperationCompleted":
            for ref in ev.get("consumed_units") or []:
                out.add((ms, eid, 0, _key(ref), _key(ev["unit"]), None))
        elif kind == "UnitRemoved":
            out.add((ms, eid, 1, _key(ev["unit"]), _key(ev["parent"]), ev.get("reason")))
        else:
            out.add((ms, eid, 0, _key(ev["unit"]), _key(ev["parent"]), None))
    return sorted(out, key=lambda e: e[:5])


def replay_exposure(links: list[LinkEv], bad: Iterable[str]) -> dict[tuple[str, str], list[Hold]]:
    """(X, B) -> X's holds of B, for every X that held a bad unit B in the past and not now."""
    parent: dict[str, str] = {}
    chains: dict[str, list[str]] = {b: [] for b in bad}  # B -> its ancestors now, parent first
    since: dict[tuple[str, str], int] = {}  # (X, B) -> when X got on B's chain
    holds: dict[tuple[str, str], list[Hold]] = {}
    watch: dict[str, set[str]] = {b: {b} for b in chains}  # unit -> the B whose chain it is on (or is)

    def chain_of(b: str) -> list[str]:
        out: list[str] = []
        cur = parent.get(b)
        while cur is not None and cur != b and cur not in out and len(out) < MAX_DEPTH:
            out.append(cur)
            cur = parent.get(cur)
        return out

    i = 0
    while i < len(links):
        t = links[i][0]
        reasons: dict[tuple[str, str], str | None] = {}
        changed: set[str] = set()
        while i < len(links) and links[i][0] == t:
            _ms, _eid, rm, child, par, reason = links[i]
            if rm:
                reasons[(child, par)] = reason
                if parent.get(child) == par:
                    del parent[child]
            else:
                parent[child] = par
            changed.add(child)
            i += 1
        todo: set[str] = set()
        for c in changed:
            todo |= watch.get(c, set())
        for b in sorted(todo):
            old, new = chains[b], chain_of(b)
            if old == new:
                continue
            for x in old:
                if x not in new:  # X lets go of B: the lowest link below X that broke ended it
                    full = [b, *old]
                    j = full.index(x)
                    k = next(k for k in range(j) if parent.get(full[k]) != full[k + 1])
                    link = (full[k], full[k + 1])
                    holds.setdefault((x, b), []).append(
                        (since.pop((x, b)), t, full[j - 1], *link, reasons.get(link))
                    )
                watch[x].discard(b)
            for x in new:
                if x not in old:
                    since[(x, b)] = t
                watch.setdefault(x, set()).add(b)
            chains[b] = new
    return {xb: hs for xb, hs in holds.items() if xb not in since}


def past_exposure(events: list[dict[str, Any]], bad: Iterable[str]) -> dict[tuple[str, str], list[Hold]]:
    """(X, B) -> [(held_from ms, held_until ms, child below X, removed unit, removed from, reason)]:
    every unit X that held one of the ``bad`` units B in the past and does not now."""
    return replay_exposure(link_events(events), bad)


# --------------------------------------------------------------------------- recall oracle


class Plant:
    """Indexes over ALL events (JSON or decoded form) for forward closures and past holders."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.gen = genealogy(events)
        self.links = link_events(events)
        self.lot_outputs: dict[str, set[str]] = {}  # input lot -> output lots
        self.lot_users: dict[str, set[str]] = {}  # lot -> units whose operation consumed it
        self.unit_users: dict[str, set[str]] = {}  # consumed unit -> consuming units
        self.lots: set[str] = set()
        for ev in events:
            kind = ev.get("type") or _kind(ev)
            if kind == "LotTransformed":
                out = ev["lot_id"]
                self.lots.add(out)
                for inp in ev.get("inputs") or []:
                    self.lots.add(inp["lot_id"])
                    self.lot_outputs.setdefault(inp["lot_id"], set()).add(out)
            elif kind == "MaterialReceived":
                self.lots.add(ev["lot_id"])
            elif kind == "OperationCompleted":
                unit = _key(ev["unit"])
                for lot in ev.get("consumed_lots") or []:
                    self.lots.add(lot["lot_id"])
                    self.lot_users.setdefault(lot["lot_id"], set()).add(unit)
                for ref in ev.get("consumed_units") or []:
                    self.unit_users.setdefault(_key(ref), set()).add(unit)

    def descendant_lots(self, lot: str) -> set[str]:
        seen, todo = {lot}, [lot]
        while todo:
            for nxt in self.lot_outputs.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    def hit_units(self, lot: str) -> set[str]:
        hits: set[str] = set()
        for lt in self.descendant_lots(lot):
            hits |= self.lot_users.get(lt, set())
        todo = list(hits)
        while todo:
            for nxt in self.unit_users.get(todo.pop(), ()):
                if nxt not in hits:
                    hits.add(nxt)
                    todo.append(nxt)
        return hits

    def ancestors(self, uii: str) -> tuple[str, ...]:
        p = self.gen.path.get(uii)
        assert p is not None, f"{uii} is on a cycle"
        return p

    def impacted(self, lot: str) -> set[str]:
        out: set[str] = set()
        for u in self.hit_units(lot):
            out.add(u)
            out.update(self.ancestors(u))
        return out

    def bad_units(self, lot: str) -> set[str]:
        """The units whose operations consumed the lot or a lot made from it."""
        out: set[str] = set()
        for lt in self.descendant_lots(lot):
            out |= self.lot_users.get(lt, set())
        return out

    def past_exposure(self, bad: Iterable[str]) -> dict[tuple[str, str], list[Hold]]:
        return replay_exposure(self.links, bad)

    def past_holders(self, units: set[str]) -> set[tuple[str, str]]:
        """(past holder, the unit below it at the end of the hold) of the given units (taken as
        the bad units; the hit units of a lot give the same pairs as its bad units when every
        consumption of a unit comes before that consumer's own installs, as in the simulator)."""
        return {(x, h[2]) for (x, _b), hs in self.past_exposure(units).items() for h in hs}
