"""The genealogy tree the workbench draws: a trace as a flat list of nodes with parents.

* :func:`backward_tree`: a system (or any unit) down to its LRUs, modules and boards, each with
  its lots (and the lots they were made from, down to the supplier's receipt), operations and
  tests; lots on hold, quarantined, scrapped or under a nonconformance are flagged;
* :func:`forward_tree`: a lot out to the lots made from it, the units that consumed them (and
  the units that consumed those), each unit's assemblies up to its final system and the
  customer it was shipped to; past holders (rework) in a group of their own with their hold
  interval.

Both take an answer that is already scoped to the caller (``StoreBackend.backward_trace`` /
``forward_trace``: ``queries.scope``) and are pure but for :func:`lot_flags` (two reads). Node
ids are unique in a tree; ``ref`` is what a node opens in the workbench (``serial:<uii>`` a
passport, ``lot:<id>`` a recall), ``flag`` why a node is highlighted. A 2,500-unit lot is some
12,000 nodes: the browser renders only the rows in view (virtual rendering).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from queries.facts import QueryStore
from queries.results import BackwardTrace, ForwardTrace
from queries.scope import WITHHELD, visible
from streams.alerts import HELD_STATUSES

__all__ = ["TreeNode", "GenealogyTree", "lot_flags", "backward_tree", "forward_tree", "tree_lots"]


@dataclass
class TreeNode:
    id: str
    parent: str | None
    kind: str  # system | unit | lot | operation | test | customer | group | past
    label: str
    detail: str = ""
    flag: str | None = None  # e.g. "HOLD", "NC NCR-1", "FAIL", "out of calibration"
    ref: str | None = None  # serial:<uii> | lot:<id>: what the node opens


@dataclass
class GenealogyTree:
    direction: str  # backward | forward
    root: str  # the node id of the root
    nodes: list[TreeNode]
    units: int  # units in the tree
    withheld_units: int = 0
    flagged_lots: dict[str, str] = field(default_factory=dict)


_STATUS_SQL = (
    "SELECT lot_id, argMax(status, event_time) AS status FROM lot_status"
    " WHERE lot_id IN {l:Array(String)} GROUP BY lot_id"
)
_NC_SQL = (
    "SELECT target_id, groupUniqArray(ncr_id) AS ncrs, groupUniqArray(toString(program)) AS programs"
    " FROM nonconformances WHERE target_kind = 'LOT' AND target_id IN {l:Array(String)}"
    " GROUP BY target_id, ncr_id"
)


def lot_flags(store: QueryStore, programs: Collection[str], lots: Iterable[str]) -> dict[str, str]:
    """``lot -> why it is suspect``: its latest status is HOLD / QUARANTINE / SCRAPPED, or a
    nonconformance raised under the caller's programmes names it."""
    wanted = sorted(set(lots))
    if not wanted:
        return {}
    out: dict[str, list[str]] = {}
    for r in store.query(_STATUS_SQL, {"l": wanted}):
        if str(r["status"]) in HELD_STATUSES:
            out.setdefault(str(r["lot_id"]), []).append(str(r["status"]))
    for r in store.query(_NC_SQL, {"l": wanted}):
        if visible(programs, [p for p in r["programs"] if p]):
            out.setdefault(str(r["target_id"]), []).extend(f"NC {n}" for n in r["ncrs"])
    return {lot: ", ".join(sorted(set(why))) for lot, why in out.items()}


def _t(v: Any) -> str:
    if isinstance(v, datetime):
        return v.strftime("%Y-%m-%d %H:%M")
    if isinstance(v, str) and len(v) >= 16 and v[4] == "-":
        return v[:16].replace("T", " ")
    return "" if v is None else str(v)


def _unit_ref(uii: str | None) -> str | None:
    return None if not uii or uii == WITHHELD else f"serial:{uii}"


def backward_tree(trace: BackwardTrace, flags: dict[str, str]) -> GenealogyTree:
    """The tree of a backward trace (module docstring); ``flags`` from :func:`lot_flags`."""
    nodes: list[TreeNode] = []
    units = {u["uii"] for u in trace.units}
    root = f"u:{trace.uii}"
    with_kids = {x.get("parent_uii") or x.get("consumed_by") for x in trace.units}
    for u in trace.units:  # parents before children (sorted by depth)
        up = u.get("parent_uii") or u.get("consumed_by")
        parent = (
            f"u:{up}" if up in units and u["uii"] != trace.uii else (None if u["uii"] == trace.uii else root)
        )
        has_kids = u["uii"] in with_kids
        how = "consumed by its parent" if u.get("consumed_by") else ""
        nodes.append(
            TreeNode(
                f"u:{u['uii']}",
                parent,
                "system" if parent is None and has_kids else "unit",
                u["uii"],
                how,
                ref=_unit_ref(u["uii"]),
            )
        )
    made_from: dict[str, list[dict[str, Any]]] = {}
    for row in trace.lot_lineage:
        made_from.setdefault(row["lot_id"], []).append(row)
    receipts = {m["lot_id"]: m for m in trace.materials}

    def lot_node(node_id: str, parent: str, lot: str, detail: str, depth: int = 0) -> None:
        r = receipts.get(lot)
        if r:
            detail = (detail + "; " if detail else "") + (
                f"received from {r['supplier_id']} lot {r['supplier_lot']}"
                + (f", CoC {r['coc_reference']}" if r.get("coc_reference") else "")
                + f", inspection {r['inspection_result']}"
            )
        nodes.append(TreeNode(node_id, parent, "lot", f"lot {lot}", detail, flags.get(lot), f"lot:{lot}"))
        for row in made_from.get(lot, []) if depth < 12 else []:
            inp = row["input_lot_id"]
            lot_node(
                f"{node_id}<{inp}",
                node_id,
                inp,
                f"{row['transformation']} {row['input_quantity']:g}",
                depth + 1,
            )

    for i, x in enumerate(trace.lots):
        lot_node(
            f"l:{x['uii']}:{x['lot_id']}:{i}",
            f"u:{x['uii']}",
            x["lot_id"],
            f"{x['quantity']:g} in {x['operation']}",
        )
    for i, o in enumerate(trace.operations):
        nodes.append(
            TreeNode(
                f"o:{o['uii']}:{i}",
                f"u:{o['uii']}",
                "operation",
                f"operation {o['operation']}",
                f"{o['station_id']} by {o['operator_id']}, {_t(o['started_at'])} to {_t(o['finished_at'])}"
                f", WO {o['work_order']}",
            )
        )
    for i, t in enumerate(trace.tests):
        due, end = t.get("calibration_due"), t.get("finished_at")
        ooc = due is not None and end is not None and str(end) > str(due)
        flag = t["verdict"] if t["verdict"] != "PASS" else ("out of calibration" if ooc else None)
        nodes.append(
            TreeNode(
                f"t:{t['uii']}:{i}",
                f"u:{t['uii']}",
                "test",
                f"test {t['procedure_id']} v{t['procedure_version']}: {t['verdict']}",
                f"bench {t['bench_id']} (cal. {t['calibration_id']}, due {_t(due)}), {_t(end)}",
                flag,
            )
        )
    return GenealogyTree("backward", root, nodes, len(units), trace.withheld_units, flags)


def forward_tree(trace: ForwardTrace, flags: dict[str, str]) -> GenealogyTree:
    """The tree of a forward trace (module docstring); ``flags`` from :func:`lot_flags`."""
    root = f"lot:{trace.lot_id}"
    nodes = [TreeNode(root, None, "lot", f"lot {trace.lot_id}", "the trigger", flags.get(trace.lot_id), root)]
    ids = {root}
    for h in sorted(trace.lots, key=lambda h: h.depth):
        node = f"lot:{h.lot_id}"
        if node in ids:
            continue
        parent = f"lot:{h.from_lot_id}" if f"lot:{h.from_lot_id}" in ids else root
        nodes.append(
            TreeNode(
                node, parent, "lot", f"lot {h.lot_id}", h.transformation or "", flags.get(h.lot_id), node
            )
        )
        ids.add(node)
    units = {f"uii:{a.uii}": a for a in trace.units}
    placed: set[str] = set()

    def place(key: str) -> None:  # a unit after the unit or lot before it on its trace
        if key in placed:
            return
        a = units[key]
        before = a.trace[-2] if len(a.trace) > 1 else root
        if before in units and before != key:
            place(before)
        parent = before if before in ids else root
        where = f"{a.status}" + (f" at {a.site}" if a.site and a.status != "shipped" else "")
        nodes.append(TreeNode(key, parent, "unit", a.uii, where, None, _unit_ref(a.uii)))
        ids.add(key)
        placed.add(key)
        up = key
        for i, anc in enumerate(a.path):  # its assemblies, up to the final system
            node = f"{key}^{i}"
            kind = "system" if i == len(a.path) - 1 else "unit"
            nodes.append(
                TreeNode(
                    node,
                    up,
                    kind,
                    f"in {anc}",
                    "final system" if kind == "system" else "",
                    None,
                    _unit_ref(anc),
                )
            )
            up = node
        if a.customer_id:
            where_to = ", ".join(x for x in (a.destination_site, a.end_system) if x)
            nodes.append(
                TreeNode(
                    f"{key}$",
                    up,
                    "customer",
                    f"customer {a.customer_id}",
                    f"shipment {a.shipment_id or WITHHELD}" + (f" to {where_to}" if where_to else ""),
                )
            )

    for key in units:
        place(key)
    if trace.past:
        group = "past"
        nodes.append(
            TreeNode(
                group,
                root,
                "group",
                f"past holders ({len(trace.past)})",
                "held a suspect unit, removed since",
            )
        )
        for i, p in enumerate(trace.past):
            nodes.append(
                TreeNode(
                    f"past:{i}",
                    group,
                    "past",
                    f"{p.uii} held {p.affected_uii}",
                    f"{_t(p.held_from)} to {_t(p.held_until)}"
                    + (f" ({p.removal_reason})" if p.removal_reason else "")
                    + f"; now {p.status}"
                    + (f", customer {p.customer_id}" if p.customer_id else ""),
                    "past",
                    _unit_ref(p.uii),
                )
            )
    return GenealogyTree("forward", root, nodes, len(units), trace.withheld_units, flags)


def tree_lots(trace: BackwardTrace | ForwardTrace) -> set[str]:
    """Every lot a trace names (what :func:`lot_flags` is asked about)."""
    if isinstance(trace, BackwardTrace):
        return {x["lot_id"] for x in trace.lots} | {r["input_lot_id"] for r in trace.lot_lineage}
    return {trace.lot_id} | {h.lot_id for h in trace.lots}
