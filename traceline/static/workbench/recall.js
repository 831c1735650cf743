// Recall impact: totals as charts, the affected units (now and past) in a table that sorts,
// filters and pages, the report and drill buttons, the freshness line.
import { api, h, href, when, announce, errorBox, section, table, saveBlob, esc } from "./util.js";

const WINDOWED = new Set(["station", "operator", "bench", "supplier"]);
const LABELS = { lot: "Lot", supplier_lot: "Supplier lot", supplier: "Supplier", serial: "Unit",
  station: "Station", operator: "Operator", bench: "Bench" };
const charts = [];

export async function renderRecall(params, el) {
  const kind = params.get("kind") || "lot";
  const id = params.get("id") || "";
  const from = params.get("from") || "";
  const to = params.get("to") || "";
  const trigger = { kind, id, from: from ? new Date(from).toISOString() : "", to: to ? new Date(to).toISOString() : "" };
  el.append(h("h1", {}, `Recall impact: ${LABELS[kind] || kind} `, h("span", { class: "ident" }, id)));

  const tools = h("div", { class: "toolbar", role: "group", "aria-label": "Report and drill" });
  el.append(tools);
  if (WINDOWED.has(kind)) el.append(windowForm(kind, id, from, to));
  const fresh = h("p", { class: "freshness", id: "freshness" }, "Data freshness: …");
  el.append(fresh);
  const body = h("div", { "aria-busy": "true" }, h("p", { class: "muted" }, "Computing the impact…"));
  el.append(body);

  api.get("/freshness").then((f) => {
    fresh.textContent = `Data freshness: latest event ${when(f.latest_event_time) || "none"} UTC, ` +
      `landed ${when(f.latest_ingest_time) || "never"} UTC; consumer lag ${f.lag_text}.`;
  }).catch((err) => { fresh.textContent = `Data freshness unavailable: ${err.message}`; });

  let impact;
  try {
    impact = await api.get("/recall", trigger);
  } catch (err) {
    body.replaceChildren(errorBox(err));
    return;
  }
  body.removeAttribute("aria-busy");
  toolbar(tools, trigger, impact);
  body.replaceChildren(...summary(impact), charts_(impact), unitsSection(impact), lotsSection(impact));
  announce(`Recall impact: ${impact.units.length} units now, ${impact.past.length} past holders`);
  el.dataset.ready = "true";
  return () => { charts.splice(0).forEach((c) => c.destroy()); };
}

function windowForm(kind, id, from, to) {
  const f = h("form", { class: "window", "aria-label": "Time window" },
    h("label", { for: "w-from" }, "From (UTC)"), h("input", { id: "w-from", type: "datetime-local", value: from.slice(0, 16) }),
    h("label", { for: "w-to" }, "To (UTC)"), h("input", { id: "w-to", type: "datetime-local", value: to.slice(0, 16) }),
    h("button", { type: "submit" }, "Apply window"));
  f.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const fv = f.querySelector("#w-from").value;
    const tv = f.querySelector("#w-to").value;
    location.hash = href("recall", { kind, id, from: fv ? fv + "Z" : "", to: tv ? tv + "Z" : "" });
  });
  return f;
}

function toolbar(tools, trigger, impact) {
  const who = h("input", { id: "prepared-by", value: sessionStorage.getItem("traceline.name") || "QA analyst", size: 14 });
  who.addEventListener("change", () => sessionStorage.setItem("traceline.name", who.value));
  const out = h("span", { class: "muted", role: "status", id: "report-status" });
  const report = (fmt) => h("button", { type: "button", id: `report-${fmt}`, onclick: async (ev) => {
    ev.target.disabled = true;
    out.textContent = `Preparing the ${fmt.toUpperCase()} report…`;
    try {
      const got = await api.download("/report", { ...trigger, format: fmt, prepared_by: who.value || "analyst" },
        `recall-${trigger.kind}-${trigger.id}.${fmt}`);
      out.textContent = `Downloaded ${got.name} (document ${got.headers.get("x-traceline-document") || "?"}).`;
    } catch (err) { out.textContent = `Report failed: ${err.message}`; }
    ev.target.disabled = false;
  } }, `Report ${fmt.toUpperCase()}`);
  const drill = h("button", { type: "button", id: "drill", onclick: async (ev) => {
    ev.target.disabled = true;
    out.textContent = "Running a recall drill…";
    try {
      const d = await api.get("/drill", { ...trigger, prepared_by: who.value || "analyst", formats: "html,pdf,csv" });
      out.replaceChildren(drillResult(d));
    } catch (err) { out.textContent = `Drill failed: ${err.message}`; }
    ev.target.disabled = false;
  } }, "Run a drill");
  tools.append(
    h("label", { for: "prepared-by" }, "Prepared by"), who,
    report("html"), report("pdf"), report("csv"), drill,
    trigger.kind === "lot" ? h("a", { class: "button", href: href("tree", { kind: "lot", id: trigger.id }) }, "Genealogy tree") : null,
    out);
}

function drillResult(d) {
  const links = Object.entries(d.documents).map(([fmt, doc]) => h("button", { type: "button", class: "link",
    onclick: () => {
      const bytes = Uint8Array.from(atob(doc.content_base64), (c) => c.charCodeAt(0));
      saveBlob(new Blob([bytes], { type: doc.media_type }), doc.filename);
    } }, fmt.toUpperCase()));
  const total = d.steps.reduce((s, x) => s + (x.seconds || 0), 0);
  return h("span", { class: "drill" }, `${d.headline}; ${d.steps.length} steps in ${total.toFixed(2)} s. Documents: `, links,
    h("details", {}, h("summary", {}, "Steps"), table([["Step", (s) => s.step], ["Seconds", (s) => (s.seconds || 0).toFixed(3)], ["Note", (s) => s.note]], d.steps)));
}

function summary(impact) {
  const systems = impact.systems.length;
  const parts = [h("strong", {}, `${impact.units.length} units`), " hold the suspect material now, in ",
    h("strong", {}, `${systems} final systems`), "; ", h("strong", {}, `${impact.past.length} past holders`),
    " held it before a removal; ", `${impact.lots.length} lots reached.`];
  const out = [h("p", { class: "summary", id: "impact-summary" }, ...parts)];
  if (impact.withheld_units || impact.withheld_past) {
    out.push(h("p", { class: "withheld" },
      `${impact.withheld_units} units and ${impact.withheld_past} past holds are outside your programmes and withheld.`));
  }
  return out;
}

function charts_(impact) {
  const wrap = h("div", { class: "charts" });
  for (const [title, counts, id] of [["By customer", impact.by_customer, "chart-customer"],
    ["By site", impact.by_site, "chart-site"], ["By status", impact.by_status, "chart-status"]]) {
    const entries = Object.entries(counts).sort((a, b) => b[1] - a[1]);
    const text = entries.map(([k, v]) => `${k}: ${v}`).join(", ") || "none";
    const canvas = h("canvas", { id, role: "img", "aria-label": `${title}: ${text}` });
    const fig = h("figure", { class: "chart" }, h("figcaption", {}, title), h("div", { class: "canvas" }, canvas),
      h("p", { class: "visually-hidden" }, text));
    wrap.append(fig);
    if (window.Chart && entries.length) {
      charts.push(new window.Chart(canvas, {
        type: "bar",
        data: { labels: entries.map((e) => e[0]), datasets: [{ label: "units", data: entries.map((e) => e[1]),
          backgroundColor: "#2f6db5" }] },
        options: { indexAxis: "y", maintainAspectRatio: false, animation: false,
          plugins: { legend: { display: false } }, scales: { x: { beginAtZero: true, ticks: { precision: 0 } }, y: { ticks: { autoSkip: false } } } },
      }));
    }
  }
  return wrap;
}

function unitRow(u) {
  return { hold: "now", uii: u.uii, part: u.part_number, status: u.status, site: u.site || "",
    customer: u.customer_id || "", system: u.root_uii, parent: u.parent_uii || "", interval: "",
    shipment: u.shipment_id || "", trace: u.trace.join(" → ") };
}

function pastRow(p) {
  return { hold: "past", uii: p.uii, part: p.uii.split(":")[0], status: p.status, site: "",
    customer: p.customer_id || "", system: p.root_uii, parent: "", interval: `${when(p.held_from)} → ${when(p.held_until)}`,
    shipment: "", trace: `held ${p.affected_uii}${p.removal_reason ? ` (removed: ${p.removal_reason})` : ""}` };
}

function unitsSection(impact) {
  const rows = [...impact.units.map(unitRow), ...impact.past.map(pastRow)];
  const holder = h("div", { id: "units-table", class: "grid" });
  const count = h("p", { class: "muted", id: "units-count", role: "status" });
  const s = section("Affected units", h("p", { class: "hint" },
    "Now: the unit holds the suspect material today. Past: it held it until a removal (the interval). ",
    "Sort by a column header; filter under it; page at the bottom."), count, holder);
  if (!window.Tabulator) { s.append(h("p", { class: "error" }, "The table library is not loaded.")); return s; }
  const link = (cell) => {
    const v = cell.getValue();
    return v && v !== "(withheld)" ? `<a href="${href("passport", { uii: v })}">${esc(v)}</a>` : esc(v);
  };
  const t = new window.Tabulator(holder, {
    data: rows,
    layout: "fitDataStretch",
    pagination: true,
    paginationSize: 25,
    paginationSizeSelector: [25, 50, 100, 500],
    paginationCounter: "rows",
    movableColumns: true,
    height: "auto",
    initialSort: [{ column: "uii", dir: "asc" }, { column: "hold", dir: "asc" }],
    columns: [
      { title: "Hold", field: "hold", headerFilter: "list", headerFilterParams: { values: { "": "all", now: "now", past: "past" } }, width: 80 },
      { title: "Unit", field: "uii", formatter: link, headerFilter: "input", headerFilterPlaceholder: "filter" },
      { title: "Part", field: "part", headerFilter: "input", headerFilterPlaceholder: "filter" },
      { title: "Status", field: "status", headerFilter: "list", headerFilterParams: { valuesLookup: true, clearable: true } },
      { title: "Site", field: "site", headerFilter: "input", headerFilterPlaceholder: "filter" },
      { title: "Customer", field: "customer", headerFilter: "input", headerFilterPlaceholder: "filter" },
      { title: "Final system", field: "system", formatter: link, headerFilter: "input", headerFilterPlaceholder: "filter" },
      { title: "Past interval", field: "interval" },
      { title: "Shipment", field: "shipment", headerFilter: "input", headerFilterPlaceholder: "filter" },
      { title: "Path from the trigger", field: "trace", headerFilter: "input", headerFilterPlaceholder: "filter", widthGrow: 3, tooltip: true },
    ],
  });
  const show = () => { count.textContent = `${t.getDataCount("active")} of ${rows.length} rows shown by the filters.`; };
  t.on("dataFiltered", (_f, r) => { count.textContent = `${r.length} of ${rows.length} rows shown by the filters.`; });
  t.on("tableBuilt", () => {
    show();
    holder.querySelectorAll(".tabulator-header-filter input, .tabulator-header-filter select").forEach((inp) => {
      const col = inp.closest(".tabulator-col");
      const title = col ? col.querySelector(".tabulator-col-title")?.textContent : "";
      inp.setAttribute("aria-label", `Filter ${title}`);
    });
    // sortable headers reachable by keyboard: Tab to a header, Enter or Space sorts by it
    holder.querySelectorAll(".tabulator-col.tabulator-sortable").forEach((col) => {
      col.tabIndex = 0;
      col.addEventListener("keydown", (e) => {
        if ((e.key === "Enter" || e.key === " ") && e.target === col) { e.preventDefault(); col.click(); }
      });
    });
    const size = holder.querySelector(".tabulator-page-size");
    if (size) size.setAttribute("aria-label", "Rows per page");
    holder.dataset.ready = "true";
  });
  return s;
}

function lotsSection(impact) {
  const lots = impact.lots.slice().sort((a, b) => a.depth - b.depth || a.lot_id.localeCompare(b.lot_id));
  return section("Lots reached", table([
    ["Lot", (l) => h("a", { href: href("recall", { kind: "lot", id: l.lot_id }) }, l.lot_id)],
    ["Made from", (l) => l.from_lot_id || "(the trigger)"],
    ["Transformations from the trigger", (l) => String(l.depth)],
    ["Transformation", (l) => l.transformation || ""],
  ], lots));
}
