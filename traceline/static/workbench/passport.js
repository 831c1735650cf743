// Unit passport: everything about one unit on one page.
import { api, h, href, when, section, table, errorBox, announce } from "./util.js";

const unitLink = (u) => (u && u !== "(withheld)" ? h("a", { href: href("passport", { uii: u }) }, u) : (u || ""));
// how an NC or alert reaches the unit: directly, or through a unit installed in it (via_uii)
const reaches = (x) => (x.via_uii ? h("span", {}, "through ", unitLink(x.via_uii), " inside it") : "directly");
const lotLink = (l) => h("a", { href: href("recall", { kind: "lot", id: l }) }, l);

export async function renderPassport(params, el) {
  const uii = params.get("uii") || "";
  el.append(h("h1", {}, "Unit passport ", h("span", { class: "ident" }, uii)));
  const body = h("div", { "aria-busy": "true" }, h("p", { class: "muted" }, "Reading…"));
  el.append(body);
  let p;
  try {
    p = await api.get("/passport", { serial: uii });
  } catch (err) {
    body.replaceChildren(errorBox(err));
    if (err.status === 404 && err.detail && err.detail.suggestions && err.detail.suggestions.length) {
      body.append(h("p", {}, "Did you mean: ", ...err.detail.suggestions.map((s, i) =>
        [i ? ", " : "", unitLink(s.replace(/^serial:/, ""))])));
    }
    return;
  }
  body.removeAttribute("aria-busy");
  const w = p.withheld || {};
  const withheld = Object.entries(w).filter(([, v]) => v).map(([k, v]) => `${v} ${k}`).join(", ");
  body.replaceChildren(...[
    identity(p),
    withheld ? h("p", { class: "withheld" }, `Outside your programmes, withheld: ${withheld}.`) : null,
    lots(p), operations(p), tests(p), history(p), shipment(p), ncs(p), alerts(p)].filter(Boolean));
  announce(`Passport of ${p.uii}`);
  el.dataset.ready = "true";
}

function dl(pairs) {
  return h("dl", { class: "facts" }, pairs.filter(([, v]) => v !== undefined).map(([k, v]) => [h("dt", {}, k), h("dd", {}, v || "—")]));
}

function identity(p) {
  const m = p.made || {};
  return section("Identity",
    dl([
      ["UII", p.uii], ["Part number", p.part_number], ["Serial number", p.serial_number],
      ["Programmes", p.programs.join(", ")],
      ["Made", p.made ? `${m.operation} at ${m.station_id} by ${m.operator_id}, ${when(m.finished_at)} UTC (${m.site}, WO ${m.work_order})` : "no creating operation recorded"],
      ["Installed in", p.parent_uii ? unitLink(p.parent_uii) : "nothing (it is a root)"],
      ["Final system", unitLink(p.root_uii)],
      ["Path", p.path.length ? h("span", {}, p.path.map((u, i) => [i ? " → " : "", unitLink(u)])) : "—"],
      ["Holds now", p.children.length ? h("span", {}, p.children.map((u, i) => [i ? ", " : "", unitLink(u)])) : "no installed units"],
    ]),
    h("p", {}, h("a", { class: "button", href: href("tree", { kind: "serial", id: p.root_uii === "(withheld)" ? p.uii : p.root_uii }) }, "Genealogy tree of its system"),
      " ", h("a", { class: "button", href: href("tree", { kind: "serial", id: p.uii }) }, "Tree below this unit"),
      " ", h("a", { class: "button", href: href("recall", { kind: "serial", id: p.uii }) }, "Recall impact of this unit")));
}

function lots(p) {
  const status = (l) => (l.status ? `${l.status.status}${l.status.reason ? ` (${l.status.reason})` : ""}` : "—");
  const origin = (l) => (l.receipt ? `${l.receipt.supplier_id} lot ${l.receipt.supplier_lot}, CoC ${l.receipt.coc_reference || "—"}, inspection ${l.receipt.inspection_result}`
    : l.made_from.length ? `${l.transformation} of ${l.made_from.join(", ")}` : "—");
  return section("Lots", table([
    ["Lot", (l) => lotLink(l.lot_id)],
    ["Part", (l) => l.part_number || ""],
    ["Consumed", (l) => (l.upstream ? "upstream" : `${l.quantity} in ${l.operation}`)],
    ["Origin", origin],
    ["Status", (l) => { const s = status(l); return ["HOLD", "QUARANTINE", "SCRAPPED"].some((x) => s.startsWith(x)) ? h("span", { class: "flag" }, s) : s; }],
  ], p.lots));
}

function operations(p) {
  return section("Operations", table([
    ["Operation", (o) => o.operation], ["Station", (o) => o.station_id], ["Operator", (o) => o.operator_id],
    ["Started (UTC)", (o) => when(o.started_at)], ["Finished (UTC)", (o) => when(o.finished_at)],
    ["Work order", (o) => o.work_order], ["Site", (o) => o.site],
    ["Consumed units", (o) => h("span", {}, o.consumed_uiis.map((u, i) => [i ? ", " : "", unitLink(u)]))],
  ], p.operations));
}

function limits(m) {
  const lo = m.low_limit ?? "";
  const hi = m.high_limit ?? "";
  return lo === "" && hi === "" ? "no limits" : `${lo === "" ? "−∞" : lo} … ${hi === "" ? "+∞" : hi}`;
}

function tests(p) {
  const s = section("Tests");
  if (!p.tests.length) s.append(h("p", {}, "No tests recorded."));
  for (const t of p.tests) {
    s.append(h("div", { class: `test ${t.verdict === "PASS" ? "" : "failed"}` },
      h("h3", {}, `${t.procedure_id} v${t.procedure_version}: `, h("span", { class: t.verdict === "PASS" ? "ok" : "flag" }, t.verdict),
        " · ", h("span", { class: t.out_of_calibration ? "flag" : "ok" }, t.calibration_status)),
      h("p", { class: "muted" }, `Bench ${t.bench_id}, calibration ${t.calibration_id} due ${when(t.calibration_due)} UTC; `,
        `${when(t.started_at)} – ${when(t.finished_at)} UTC${t.operator_id ? `, operator ${t.operator_id}` : ""}`),
      table([
        ["Measurement", (m) => m.name],
        ["Value", (m) => `${m.value} ${m.unit}`],
        ["Limits", limits],
        ["Result", (m) => (m.passed ? h("span", { class: "ok" }, "within") : h("span", { class: "flag" }, "OUT"))],
      ], t.measurements)));
  }
  return s;
}

function history(p) {
  return section("Install, removal and consumption history", p.history.length ? table([
    ["When (UTC)", (x) => when(x.event_time)],
    ["Action", (x) => x.action],
    ["Child", (x) => unitLink(x.uii)],
    ["Parent", (x) => unitLink(x.parent_uii)],
    ["Position", (x) => x.position || ""],
    ["Reason", (x) => x.reason || ""],
    ["Station / operator", (x) => [x.station_id, x.operator_id].filter(Boolean).join(" / ")],
  ], p.history) : h("p", {}, "Never installed, removed or consumed."));
}

function shipment(p) {
  const s = p.shipment;
  return section("Shipment and customer", s ? dl([
    ["Customer", s.customer_id], ["Contract", s.contract], ["Destination", s.destination_site],
    ["End system", s.end_system], ["Shipment", s.shipment_id], ["Shipped (UTC)", when(s.shipped_at)],
    ["Shipped as", s.shipped_uii === p.uii ? "itself" : h("span", {}, "part of ", unitLink(s.shipped_uii))],
  ]) : h("p", {}, "Not shipped (neither the unit nor any unit above it)."));
}

function ncs(p) {
  return section("Nonconformances", p.nonconformances.length ? table([
    ["NCR", (n) => n.ncr_id], ["Severity", (n) => n.severity], ["Target", (n) => `${n.target_kind} ${n.target_id}`],
    ["Reaches it", reaches],
    ["Window", (n) => (n.window_start || n.window_end ? `${when(n.window_start)} – ${when(n.window_end)}` : "")],
    ["Disposition", (n) => n.disposition], ["Description", (n) => n.description], ["Raised (UTC)", (n) => when(n.raised_at)],
    ["Impact", (n) => h("a", { href: href("recall", { kind: n.target_kind.toLowerCase(), id: n.target_id }) }, "recall")],
  ], p.nonconformances) : h("p", {}, "No nonconformance touches this unit, the units installed in it, their lots, suppliers, stations, operators or benches."));
}

function alerts(p) {
  return section("Alerts", p.alerts.length ? table([
    ["Severity", (a) => h("span", { class: `sev sev-${a.severity}` }, a.severity)], ["Rule", (a) => a.rule],
    ["Title", (a) => a.title], ["Event (UTC)", (a) => when(a.event_time)],
    ["Reaches it", reaches],
  ], p.alerts) : h("p", {}, "No alert names this unit, the units installed in it or their lots."));
}
