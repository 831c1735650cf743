// Genealogy tree: backward from a unit or system, forward from a lot. Tabulator's data tree
// builds a branch's rows only when it is expanded and renders only the rows in view (virtual
// DOM), so a 2,500-unit lot stays responsive; "Expand all" rebuilds it expanded.
import { api, h, href, refHref, esc, announce, errorBox } from "./util.js";

const ICON = { system: "▣", unit: "■", lot: "◆", operation: "⚙", test: "✓", customer: "⚑", group: "⋯", past: "↺" };

export async function renderTree(params, el) {
  const kind = params.get("kind") || "serial";
  const id = params.get("id") || "";
  const forward = kind === "lot";
  el.append(h("h1", {}, forward ? "Forward genealogy of lot " : "Backward genealogy of ", h("span", { class: "ident" }, id)));
  const nav = h("p", {},
    forward ? h("a", { href: href("recall", { kind: "lot", id }) }, "Recall impact of this lot")
      : h("a", { href: href("passport", { uii: id }) }, "Passport of this unit"));
  el.append(nav);
  const bar = h("div", { class: "toolbar", role: "group", "aria-label": "Tree tools" });
  const info = h("p", { class: "muted", id: "tree-info", role: "status" }, "Loading the tree…");
  const holder = h("div", { id: "tree", class: "grid tree" });
  el.append(bar, info, holder);

  let tree;
  try {
    tree = await api.get("/tree", { kind, id });
  } catch (err) {
    info.replaceWith(errorBox(err));
    return;
  }
  const byId = new Map();
  const roots = [];
  for (const n of tree.nodes) byId.set(n.id, { ...n, _kids: [] });
  for (const n of byId.values()) {
    const p = n.parent && byId.get(n.parent);
    if (p) p._kids.push(n); else roots.push(n);
  }
  const nested = (n) => {
    const row = { id: n.id, kind: n.kind, label: n.label, detail: n.detail, flag: n.flag, ref: n.ref };
    if (n._kids.length) row._children = n._kids.map(nested);
    return row;
  };
  const data = roots.map(nested);
  const flagged = Object.keys(tree.flagged_lots || {});
  info.textContent = `${tree.nodes.length} nodes, ${tree.units} units` +
    (tree.withheld_units ? `; ${tree.withheld_units} units outside your programmes withheld` : "") +
    (flagged.length ? `; suspect lots: ${flagged.map((l) => `${l} (${tree.flagged_lots[l]})`).join(", ")}` : "; no suspect lot") + ".";

  let hits = [];
  let hitAt = -1;
  let hitIds = new Set();
  let table = null;

  const label = (cell) => {
    const d = cell.getData();
    const text = esc(d.label);
    const main = d.ref ? `<a href="${refHref(d.ref)}">${text}</a>` : text;
    const flag = d.flag ? ` <span class="flag">${esc(d.flag)}</span>` : "";
    return `<span class="icon k-${d.kind}" aria-hidden="true">${ICON[d.kind] || "•"}</span> ${main}${flag}`;
  };
  const build = (expanded) => new Promise((resolve) => {
    if (table) table.destroy();
    holder.dataset.ready = "false";
    table = new window.Tabulator(holder, {
      data,
      index: "id",
      height: "65vh",
      layout: "fitColumns",
      renderVertical: "virtual",
      dataTree: true,
      dataTreeStartExpanded: expanded,
      dataTreeChildIndent: 18,
      dataTreeExpandElement: "<button type='button' class='toggle' aria-label='expand' aria-expanded='false'>▸</button>",
      dataTreeCollapseElement: "<button type='button' class='toggle' aria-label='collapse' aria-expanded='true'>▾</button>",
      rowFormatter: (row) => {
        const d = row.getData();
        const e = row.getElement();
        e.classList.toggle("bad", Boolean(d.flag) && d.kind === "lot");
        e.classList.toggle("warn", Boolean(d.flag) && d.kind !== "lot");
        e.classList.toggle("hit", hitIds.has(d.id));
        e.classList.toggle("current", hits[hitAt] === d.id);
      },
      columns: [
        { title: "Node", field: "label", formatter: label, widthGrow: 3, headerSort: false },
        { title: "Kind", field: "kind", width: 100, headerSort: false },
        { title: "Details", field: "detail", widthGrow: 3, headerSort: false, formatter: "plaintext", tooltip: true },
      ],
    });
    table.on("tableBuilt", () => {
      holder.dataset.ready = "true";
      holder.dataset.expanded = expanded ? "all" : "none";
      resolve(table);
    });
  });
  await build(false);
  // the root open: its first level shown
  const root = table.getRows()[0];
  if (root && !root.isTreeExpanded()) root.treeExpand();

  const search = h("input", { id: "tree-search", type: "search", placeholder: "find in the tree", size: 22 });
  const findInfo = h("span", { class: "muted", id: "tree-find", role: "status" });
  const go = async (step) => {
    const q = search.value.trim().toLowerCase();
    if (!q) return;
    if (q !== go.last) {
      go.last = q;
      hits = [...byId.values()].filter((n) => `${n.label} ${n.detail} ${n.flag || ""}`.toLowerCase().includes(q)).map((n) => n.id);
      hitIds = new Set(hits);
      hitAt = -1;
    }
    if (!hits.length) { findInfo.textContent = "no match"; announce("No match in the tree"); return; }
    hitAt = (hitAt + step + hits.length) % hits.length;
    const row = reveal(hits[hitAt]);
    findInfo.textContent = `match ${hitAt + 1} of ${hits.length}`;
    announce(`Match ${hitAt + 1} of ${hits.length}: ${byId.get(hits[hitAt]).label}`);
    table.getRows().forEach((r) => r.reformat());
    if (row) { await table.scrollToRow(row, "center", false).catch(() => {}); row.reformat(); }
  };
  // open every ancestor of a node, then return its row
  const reveal = (nodeId) => {
    const chain = [];
    for (let n = byId.get(nodeId); n; n = n.parent ? byId.get(n.parent) : null) chain.unshift(n.id);
    let row = table.getRow(chain[0]);
    for (const step of chain.slice(1)) {
      if (!row) return null;
      if (!row.isTreeExpanded()) row.treeExpand();
      row = row.getTreeChildren().find((c) => c.getData().id === step) || null;
    }
    return row;
  };
  search.addEventListener("keydown", (ev) => { if (ev.key === "Enter") { ev.preventDefault(); go(ev.shiftKey ? -1 : 1); } });
  const timed = async (expanded) => {
    const t0 = performance.now();
    await build(expanded);
    const ms = performance.now() - t0;
    holder.dataset.buildMs = ms.toFixed(0);
    info.dataset.lastBuild = `${expanded ? "expanded" : "collapsed"} in ${ms.toFixed(0)} ms`;
    announce(expanded ? "Tree expanded" : "Tree collapsed");
  };
  bar.append(
    h("label", { for: "tree-search" }, "Find"), search,
    h("button", { type: "button", id: "find-next", onclick: () => go(1) }, "Next"),
    h("button", { type: "button", id: "find-prev", onclick: () => go(-1) }, "Previous"),
    findInfo,
    h("button", { type: "button", id: "expand-all", onclick: () => timed(true) }, "Expand all"),
    h("button", { type: "button", id: "collapse-all", onclick: () => timed(false) }, "Collapse all"));
  el.dataset.ready = "true";
  return () => { if (table) table.destroy(); };
}
