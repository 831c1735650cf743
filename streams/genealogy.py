"""Unit genealogy as pure message passing (child -> parent -> root system).

This module holds the rules only: no Kafka, no faust, no I/O. As built, two processes wire it:

* the intake (``streams.intake.judge``, run by the ingest sink ``sinks.ingest`` so that each
  event is decoded once) turns a raw event into its commands with :func:`commands_for_event`
  and sends them, batched per partition of the command topic (keyed by UII);
* the faust genealogy writer (``streams.app``: one agent, concurrency 1, a rocksdb table keyed
  by UII) applies each record's commands with :func:`apply_batch`, stores the nodes, sends the
  commands for other keys back to the command topic and the change records to the changes
  topic, which the sink lands in ``unit_genealogy`` (``sinks.rows.genealogy_rows``).

``tests.support.run_genealogy`` drives the same rules in memory for the tests and benchmarks.

Every command is applied at exactly ONE key (the key it is routed to), so the agent never
reads or writes another key's table entry.

State per unit (``Node``)
-------------------------
* the latest *install* seen (``inst_parent`` at ``inst_version``) and the newest *removal*
  per parent (``removed``) that is not older than that install;
* the effective ``parent`` derived from those two (see "Removal semantics");
* ``children``: child UII -> (version, alive), last writer wins by version;
* the published view: ``path``, the ancestors from the PARENT up to the root (the node
  itself is not in it; ``()`` for a root), so ``root = path[-1] if path else uii`` and
  ``depth = len(path)`` (the same convention as the ``unit_genealogy`` table);
  ``path_parent`` (the parent whose answer produced ``path``; ``None`` when the node is its
  own root) and ``flag`` (``None``, ``"cycle"`` or ``"depth"``);
* ``seq``: +1 on every change of the published view (monotonic per UII; the sink keeps the
  row with the highest seq); ``parent_seq``: the parent's seq last accepted from the current
  parent (-1 = none yet since the parent last changed).

Versions
--------
A link's version is ``(event_time_ms, event_id)``. Between an install and a removal with the
very same version (only possible with a re-used event id) the removal wins.

Removal semantics (tests/oracle.py implements the same rule independently)
-------------------------------------------------------------------------
For a child, let I = its install (UnitAssembled, or OperationCompleted.consumed_units) with
the greatest version, into parent P. The child's parent is P unless there is a UnitRemoved
of (child, P) with a version >= I's version; then the child has no parent (it is its own
root again). Removals naming a different parent than P are ignored. This equals folding
all of the child's link events in version order, where a removal detaches only from the
current parent, so it does not depend on arrival order: a removal that arrives before its
install is remembered and beats that install if newer; a newer re-install elsewhere beats
an older removal.

Commands
--------
* ``Link(child, parent, version, alive)`` at the child: an install (alive=True) or a removal
  of ``parent`` (alive=False). If the effective parent changes: ``Edge(old, alive=False)`` to
  the old parent, ``Edge(new, alive=True)`` to the new one (the child keeps its previous
  view until the new parent answers); with no new parent the child becomes its own root.
* ``Edge(parent, child, alive, version)`` at the parent: LWW by version; if the child is
  alive afterwards, answer with ``Root`` (always, so duplicates are harmless).
* ``Root(child, from_parent, root, path, seq)`` at the child: accepted only from the current
  parent and with a seq newer than the last accepted one from it. ``path`` is the parent's
  own path, so the child's path becomes ``(from_parent,) + path``; if the child's view
  changed, it forwards ``Root`` to its live children.
* ``Touch(uii)``: the unit exists (creates its node; no-op otherwise).
* ``Lots(uii, lots)``: the unit consumed these lots (lot -> site of the operation). The
  node's ``lots`` only grow (per lot the smallest site is kept), so the result does not depend
  on order or duplicates; a lot or site not known yet bumps ``seq`` and emits a record (the
  view is unchanged, so nothing is forwarded). A new node takes its lots before its first
  record. A unit's own lots are few (its operations' bills of material), so they fit in the
  node; the big fan-out (one lot into 100k units) is spread over those units' nodes.

Cycle guard
-----------
If an accepted path already contains the child (a cycle) or would be deeper than
``MAX_DEPTH`` hops, the child becomes its own root with ``flag`` "cycle"/"depth" and the
change record carries ``"error"``; the caller dead-letters such records. A node cut for a
cycle stops propagating (it still answers new children's edges), so a wave round a cycle
ends within one round. A "depth" cut is deterministic and propagates normally.

Order independence: when the final link graph is acyclic, every node's final view equals
f(its parent's final view), which has one solution, so the result does not depend on
arrival order, duplicates or transient cycles. For a unit on (or below) a cycle that
persists, processing terminates and at least one member per cycle is flagged, but which
member is cut, and the (possibly stale) paths below it, depend on arrival order.

Change records (to the genealogy sink)::

    {"uii", "parent_uii", "root_uii", "path": [parent, ..., root], "depth", "seq",
     "version_ms", "version_event_id", "error"[, "lots": {lot_id: site}]}

``version_*`` is the version of the link event that decided the current parent (``None``
if the unit was never linked); ``error`` is ``None`` or ``"cycle"`` / ``"depth"``; ``lots``
(left out when there are none) the lots the unit consumed, so the sink can key the record by
lot (``lot_units``). A node's
first record (seq 0, its own root) is emitted when the node is created; then one record per
change of the view, so the record with the highest seq per UII is the current genealogy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import pydantic_core

from schemas.uii import uii_of

__all__ = [
    "MAX_DEPTH",
    "Command",
    "Edge",
    "GenealogyInputError",
    "Link",
    "Lots",
    "Node",
    "Root",
    "Touch",
    "Version",
    "apply",
    "apply_batch",
    "command_from_dict",
    "commands_for_event",
    "event_time_ms",
    "resend",
    "Send",
]

MAX_DEPTH = 64
"""Maximum depth (hops from a unit to its root) before the cycle guard cuts the path."""

Version = tuple[int, str]
"""(event_time in epoch ms, event_id)."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


class GenealogyInputError(ValueError):
    """An event the genealogy cannot use (naive timestamp, unknown shape, bad key)."""


# --------------------------------------------------------------------------- commands


@dataclass(frozen=True, slots=True)
class Link:
    """At the child: install into ``parent`` (alive) or removal from ``parent`` (not alive)."""

    child: str
    parent: str
    version: Version
    alive: bool
    op: ClassVar[str] = "link"

    @property
    def key(self) -> str:
        return self.child

    def to_dict(self) -> dict[str, Any]:
        return {
            "op": self.op,
            "child": self.child,
            "parent": self.parent,
            "version": list(self.version),
            "alive": self.alive,
        }


@dataclass(frozen=True, slots=True)
class Edge:
    """At the parent: ``child`` is (alive) or is no longer (not alive) attached to it."""

    parent: str
    child: str
    alive: bool
    version: Version
    op: ClassVar[str] = "edge"

    @property
    def key(self) -> str:
        return self.parent

    def to_dict(self) -> dict[str, Any]:
        return {
            "op": self.op,
            "parent": self.parent,
            "child": self.child,
            "alive": self.alive,
            "version": list(self.version),
        }


@dataclass(frozen=True, slots=True)
class Root:
    """At the child: ``from_parent`` has ancestors ``path`` (its parent .. ``root``) at ``seq``."""

    child: str
    from_parent: str
    root: str
    path: tuple[str, ...]
    seq: int
    op: ClassVar[str] = "root"

    @property
    def key(self) -> str:
        return self.child

    def to_dict(self) -> dict[str, Any]:
        return {
            "op": self.op,
            "child": self.child,
            "from_parent": self.from_parent,
            "root": self.root,
            "path": list(self.path),
            "seq": self.seq,
        }


@dataclass(frozen=True, slots=True)
class Touch:
    """At the unit: it exists (create its node if absent)."""

    uii: str
    op: ClassVar[str] = "touch"

    @property
    def key(self) -> str:
        return self.uii

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op, "uii": self.uii}


@dataclass(frozen=True, slots=True)
class Lots:
    """At the unit: it consumed ``lots`` ((lot_id, site of the operation) pairs)."""

    uii: str
    lots: tuple[tuple[str, str], ...]
    op: ClassVar[str] = "lots"

    @property
    def key(self) -> str:
        return self.uii

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op, "uii": self.uii, "lots": [list(x) for x in self.lots]}


Command = Link | Edge | Root | Touch | Lots


def _version(v: Any) -> Version:
    return (int(v[0]), str(v[1]))


def command_from_dict(d: Mapping[str, Any]) -> Command:
    """Inverse of ``cmd.to_dict()`` (the Kafka value of the command topic)."""
    op = d.get("op")
    if op == "link":
        return Link(d["child"], d["parent"], _version(d["version"]), bool(d["alive"]))
    if op == "edge":
        return Edge(d["parent"], d["child"], bool(d["alive"]), _version(d["version"]))
    if op == "root":
        return Root(d["child"], d["from_parent"], d["root"], tuple(d["path"]), int(d["seq"]))
    if op == "touch":
        return Touch(d["uii"])
    if op == "lots":
        return Lots(d["uii"], tuple((str(lot), str(site)) for lot, site in d["lots"]))
    raise GenealogyInputError(f"unknown genealogy command {op!r}")


# --------------------------------------------------------------------------- node


@dataclass(slots=True)
class Node:
    """Genealogy state of one unit (a faust table value)."""

    uii: str
    inst_parent: str | None = None
    inst_version: Version | None = None
    removed: dict[str, Version] = field(default_factory=dict)
    parent_seq: int = -1
    children: dict[str, tuple[Version, bool]] = field(default_factory=dict)
    path_parent: str | None = None
    path: tuple[str, ...] = ()
    flag: str | None = None
    seq: int = 0
    offset: int = -1  # command-topic offset of the last command that changed it (replay detection)
    lots: dict[str, str] = field(default_factory=dict)  # lots the unit consumed -> smallest site

    # derived ----------------------------------------------------------------
    @property
    def parent(self) -> str | None:
        """The effective parent decided by the link events seen so far."""
        if self.inst_parent is None or self.inst_version is None:
            return None
        rv = self.removed.get(self.inst_parent)
        if rv is not None and rv >= self.inst_version:
            return None
        return self.inst_parent

    @property
    def parent_version(self) -> Version | None:
        """Version of the link event that decided ``parent`` (install or removal)."""
        if self.inst_parent is None or self.inst_version is None:
            return None
        rv = self.removed.get(self.inst_parent)
        if rv is not None and rv >= self.inst_version:
            return rv
        return self.inst_version

    @property
    def root(self) -> str:
        return self.path[-1] if self.path else self.uii

    @property
    def depth(self) -> int:
        return len(self.path)

    def live_children(self) -> list[str]:
        return sorted(c for c, (_, alive) in self.children.items() if alive)

    def copy(self) -> Node:
        return Node(
            self.uii,
            self.inst_parent,
            self.inst_version,
            dict(self.removed),
            self.parent_seq,
            dict(self.children),
            self.path_parent,
            self.path,
            self.flag,
            self.seq,
            self.offset,
            dict(self.lots),
        )

    # serialisation -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Compact plain dict (short keys, empty fields left out)."""
        d: dict[str, Any] = {"u": self.uii, "s": self.seq}
        if self.path:
            d["p"] = list(self.path)
        if self.inst_parent is not None and self.inst_version is not None:
            d["ip"] = self.inst_parent
            d["iv"] = list(self.inst_version)
        if self.removed:
            d["rm"] = {p: list(v) for p, v in self.removed.items()}
        if self.parent_seq != -1:
            d["ps"] = self.parent_seq
        if self.children:
            d["ch"] = {c: [v[0], v[1], 1 if alive else 0] for c, (v, alive) in self.children.items()}
        if self.path_parent is not None:
            d["pp"] = self.path_parent
        if self.flag is not None:
            d["f"] = self.flag
        if self.offset != -1:
            d["o"] = self.offset
        if self.lots:
            d["l"] = dict(self.lots)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Node:
        uii = d["u"]
        return cls(
            uii=uii,
            inst_parent=d.get("ip"),
            inst_version=_version(d["iv"]) if "iv" in d else None,
            removed={p: _version(v) for p, v in d.get("rm", {}).items()},
            parent_seq=int(d.get("ps", -1)),
            children={c: ((int(v[0]), str(v[1])), bool(v[2])) for c, v in d.get("ch", {}).items()},
            path_parent=d.get("pp"),
            path=tuple(d.get("p", ())),
            flag=d.get("f"),
            seq=int(d["s"]),
            offset=int(d.get("o", -1)),
            lots=dict(d.get("l", {})),
        )

    def to_bytes(self) -> bytes:
        # pydantic-core's JSON (Rust): ~6x faster than json.dumps here; the writer serialises
        # every node it changes, so this is on the genealogy's hot path
        return pydantic_core.to_json(self.to_dict())

    @classmethod
    def from_bytes(cls, raw: bytes) -> Node:
        return cls.from_dict(pydantic_core.from_json(raw))


# --------------------------------------------------------------------------- apply

Send = tuple[str, Command]
Change = dict[str, Any]


def _record(n: Node) -> Change:
    v = n.parent_version
    rec: Change = {
        "uii": n.uii,
        "parent_uii": n.path_parent,
        "root_uii": n.root,
        "path": list(n.path),
        "depth": len(n.path),
        "seq": n.seq,
        "version_ms": v[0] if v else None,
        "version_event_id": v[1] if v else None,
        "error": n.flag,
    }
    if n.lots:
        rec["lots"] = dict(sorted(n.lots.items()))
    return rec


def _publish(
    n: Node,
    path_parent: str | None,
    path: tuple[str, ...],
    flag: str | None,
    sends: list[Send],
    changes: list[Change],
) -> None:
    """Set the published view; on a change bump seq, emit a record, tell live children.

    A node that just found itself on a cycle does not tell its children: that is what stops
    a wave going round a cycle (two members cut at once would otherwise keep re-joining).
    """
    if (path_parent, path, flag) == (n.path_parent, n.path, n.flag):
        return
    n.path_parent, n.path, n.flag = path_parent, path, flag
    n.seq += 1
    changes.append(_record(n))
    if flag != "cycle":
        for c in n.live_children():
            sends.append((c, Root(c, n.uii, n.root, path, n.seq)))


def _on_link(n: Node, cmd: Link, sends: list[Send], changes: list[Change]) -> None:
    old = n.parent
    if cmd.alive:
        if n.inst_version is not None and cmd.version <= n.inst_version:
            return  # older or duplicate install
        n.inst_parent, n.inst_version = cmd.parent, cmd.version
        # removals older than the newest install can never matter again
        n.removed = {p: v for p, v in n.removed.items() if v >= cmd.version}
        change_version = cmd.version
    else:
        if n.inst_version is not None and cmd.version < n.inst_version:
            return  # older than the newest install: can never matter
        prev = n.removed.get(cmd.parent)
        if prev is not None and prev >= cmd.version:
            return
        n.removed[cmd.parent] = cmd.version
        change_version = cmd.version
    new = n.parent
    if new == old:
        return
    if old is not None:
        sends.append((old, Edge(old, n.uii, False, change_version)))
    n.parent_seq = -1
    if new is not None:
        assert n.inst_version is not None
        sends.append((new, Edge(new, n.uii, True, n.inst_version)))
        # keep the previous view until the new parent answers with its root
    else:
        _publish(n, None, (), None, sends, changes)


def _on_edge(n: Node, cmd: Edge, sends: list[Send]) -> None:
    cur = n.children.get(cmd.child)
    # last writer wins by version; at an equal version "not alive" wins
    if cur is None or (cmd.version, not cmd.alive) > (cur[0], not cur[1]):
        n.children[cmd.child] = (cmd.version, cmd.alive)
    if n.children[cmd.child][1]:
        sends.append((cmd.child, Root(cmd.child, n.uii, n.root, n.path, n.seq)))


def _on_root(n: Node, cmd: Root, sends: list[Send], changes: list[Change]) -> None:
    if cmd.from_parent != n.parent or cmd.seq <= n.parent_seq:
        return  # stale: not from the current parent, or not newer
    n.parent_seq = cmd.seq
    path = (cmd.from_parent, *cmd.path)
    if n.uii in path:
        _publish(n, cmd.from_parent, (), "cycle", sends, changes)
    elif len(path) > MAX_DEPTH:
        _publish(n, cmd.from_parent, (), "depth", sends, changes)
    else:
        _publish(n, cmd.from_parent, path, None, sends, changes)


def _merge_lots(n: Node, cmd: Lots) -> bool:
    """Add the lots (per lot the smallest site wins); True if anything changed."""
    changed = False
    for lot, site in cmd.lots:
        cur = n.lots.get(lot)
        if cur is None or site < cur:
            n.lots[lot] = site
            changed = True
    return changed


def apply(node: Node | None, key: str, cmd: Command) -> tuple[Node, list[Send], list[Change]]:
    """Apply ``cmd`` at ``key``. Pure: ``node`` is not modified.

    Returns the new node, the commands to send as ``(target_key, cmd)``, and the change
    records (see module doc) to land in the genealogy table.
    """
    if cmd.key != key:
        raise GenealogyInputError(f"{cmd.op} command for {cmd.key!r} applied at key {key!r}")
    sends: list[Send] = []
    changes: list[Change] = []
    if node is None:
        n = Node(key)
        if isinstance(cmd, Lots):  # known at creation: in the node's first record
            _merge_lots(n, cmd)
        changes.append(_record(n))
    else:
        n = node.copy()
    if isinstance(cmd, Link):
        _on_link(n, cmd, sends, changes)
    elif isinstance(cmd, Edge):
        _on_edge(n, cmd, sends)
    elif isinstance(cmd, Root):
        _on_root(n, cmd, sends, changes)
    elif isinstance(cmd, Lots) and _merge_lots(n, cmd):
        n.seq += 1  # a new record (seq strictly increases per uii); the view is unchanged
        changes.append(_record(n))
    # Touch: creating the node is all it does
    return n, sends, changes


def apply_batch(
    get: Callable[[str], Node | None], offset: int, commands: Iterable[Send]
) -> tuple[dict[str, Node], list[Send], list[Change]]:
    """Apply one command-batch record (Kafka offset ``offset``) in order. Pure over ``get``.

    Returns the nodes to write (each changed node once, its ``offset`` set to ``offset``), the
    commands to send and the change records. Replay after a crash: a node whose ``offset`` is
    ``>= offset`` was already changed by a previous run of this record (or a later one), whose
    sends may never have reached Kafka; the first time this run meets such a node it first
    emits what the node owes in its current state (:func:`resend`), then applies the command
    as usual (``apply`` is idempotent, so an already applied command changes nothing).
    """
    nodes: dict[str, Node | None] = {}
    dirty: dict[str, Node] = {}
    sends: list[Send] = []
    changes: list[Change] = []
    for key, cmd in commands:
        if key in nodes:
            node = nodes[key]
        else:
            node = nodes[key] = get(key)
            if node is not None and node.offset >= offset:
                s, c = resend(node)
                sends.extend(s)
                changes.extend(c)
        new, s, c = apply(node, key, cmd)
        sends.extend(s)
        changes.extend(c)
        if new != node:
            new.offset = offset
            nodes[key] = dirty[key] = new
    return dirty, sends, changes


# --------------------------------------------------------------------------- events


def resend(n: Node) -> tuple[list[Send], list[Change]]:
    """What ``n`` owes the rest of the graph in its current state, for a replayed command.

    Under at-least-once a worker can die after writing a node but before the commands and
    change records of that write reached Kafka; the command is then delivered again and finds
    the node already updated, so ``apply`` would send nothing and the lost effects stay lost.
    The caller detects the replay (command offset <= ``n.offset``) and sends these instead:
    the node's record, ``Edge`` to its current parent, an ``Edge(alive=False)`` to every parent
    it was removed from, and its view to its live children. All of them are idempotent
    (receivers drop what they already have), so nothing cascades beyond one hop.
    """
    sends: list[Send] = []
    parent = n.parent
    if parent is not None:
        assert n.inst_version is not None
        sends.append((parent, Edge(parent, n.uii, True, n.inst_version)))
    for p, v in sorted(n.removed.items()):
        if p != parent:
            sends.append((p, Edge(p, n.uii, False, v)))
    if n.flag != "cycle":
        for c in n.live_children():
            sends.append((c, Root(c, n.uii, n.root, n.path, n.seq)))
    return sends, [_record(n)]


def event_time_ms(value: datetime | int) -> int:
    """Epoch milliseconds of an aware datetime (fastavro's timestamp-millis) or an int."""
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise GenealogyInputError("event_time is a naive datetime")
        return (value - _EPOCH) // _MS
    if isinstance(value, bool) or not isinstance(value, int):
        raise GenealogyInputError(f"event_time must be an aware datetime or epoch ms, not {value!r}")
    return value


def _event_type(event: Mapping[str, Any]) -> str | None:
    t = event.get("type") or event.get("event_type")
    if isinstance(t, str):
        return t
    # decoded Avro records carry no type name: infer from the distinguishing fields
    if "parent" in event:
        return "UnitRemoved" if "reason" in event else "UnitAssembled"
    if "consumed_units" in event or "creates_unit" in event:
        return "OperationCompleted"
    return None


def commands_for_event(event: Mapping[str, Any], event_type: str | None = None) -> list[Send]:
    """Initial genealogy commands for one decoded event (``[]`` for unrelated events).

    ``event_type`` is the Avro record name; if omitted, ``event["type"]`` (JSON form) is used,
    else it is inferred from the fields (``parent`` + ``reason`` -> UnitRemoved, ``parent``
    -> UnitAssembled, ``consumed_units`` / ``creates_unit`` -> OperationCompleted).

    * UnitAssembled(unit, parent): ``Link(unit, parent, alive=True)`` + ``Touch(parent)``
    * UnitRemoved(unit, parent): ``Link(unit, parent, alive=False)`` + ``Touch(parent)``
    * OperationCompleted(unit, consumed_lots, consumed_units): ``Lots(unit, lots)`` when it
      consumed lots (each with the event's site), else ``Touch(unit)`` when it creates the unit
      or consumes units (other operations add nothing) + for each consumed unit
      ``Link(consumed, unit, alive=True)`` (consumption is an installation)

    Every unit named by these events therefore gets a node (and a genealogy row).
    """
    etype = event_type or _event_type(event)
    if etype not in ("UnitAssembled", "UnitRemoved", "OperationCompleted"):
        return []
    try:
        version: Version = (event_time_ms(event["event_time"]), str(event["event_id"]))
        unit = uii_of(event["unit"])
        if etype == "OperationCompleted":
            # only the operation that makes the unit (or consumes units) creates its node:
            # later operations on the same unit would only repeat a no-op Touch
            consumed = event.get("consumed_units") or ()
            lots = event.get("consumed_lots") or ()
            out: list[Send] = []
            if lots:
                site = str(event["site"])
                out.append((unit, Lots(unit, tuple(sorted({(str(x["lot_id"]), site) for x in lots})))))
            elif event.get("creates_unit") or consumed:
                out.append((unit, Touch(unit)))
            seen: set[str] = set()
            for ref in consumed:
                child = uii_of(ref)
                if child not in seen:
                    seen.add(child)
                    out.append((child, Link(child, unit, version, True)))
            return out
        parent = uii_of(event["parent"])
    except (KeyError, TypeError) as exc:
        raise GenealogyInputError(f"{etype} event lacks genealogy fields: {exc!r}") from exc
    return [(unit, Link(unit, parent, version, etype == "UnitAssembled")), (parent, Touch(parent))]
