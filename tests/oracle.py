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
"""

from __future__ import annotations

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

    def root(self, uii: str) -> str | None:
        p = self.path[uii]
        if p is None:
            return None
        return p[-1] if p else uii


def _key(ref: dict[str, Any]) -> str:
    return ref["part_number"] + ":" + ref["serial_number"]


def _millis(t: Any) -> int:
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
