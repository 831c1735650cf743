// Pipeline status: health of each part, lag, ledger, throughput (from /health and /ledger,
// polled every few seconds; throughput is the change of the landed counters between polls).
import { api, h, when, section, table, errorBox } from "./util.js";

const POLL_MS = 3000;

export function renderStatus(_params, el) {
  el.append(h("h1", {}, "Pipeline status"));
  const body = h("div", { id: "status-body" }, h("p", { class: "muted" }, "Reading /health…"));
  el.append(body);
  let last = null;
  let timer = null;
  let gone = false;

  async function poll() {
    let health;
    let ledger = null;
    try {
      health = await api.get("/health");
      if (health.parts) ledger = await api.get("/ledger").catch(() => null);
    } catch (err) {
      body.replaceChildren(errorBox(err));
      if (!gone) timer = setTimeout(poll, POLL_MS);
      return;
    }
    const now = performance.now();
    const sink = health.sink || {};
    let rate = null;
    if (last && sink.events_landed !== undefined) {
      const dt = (now - last.t) / 1000;
      rate = { events: (sink.events_landed - last.events) / dt, changes: (sink.changes_landed - last.changes) / dt };
    }
    if (sink.events_landed !== undefined) last = { t: now, events: sink.events_landed, changes: sink.changes_landed };
    body.replaceChildren(...render(health, ledger, rate));
    el.dataset.ready = "true";
    if (!gone) timer = setTimeout(poll, POLL_MS);
  }
  poll();
  return () => { gone = true; clearTimeout(timer); };
}

function render(health, ledger, rate) {
  const out = [h("p", { class: `overall st-${health.status}`, id: "overall" }, "Overall: ", h("strong", {}, health.status))];
  if (!health.parts) {
    out.push(h("p", {}, "The details of each part, the lag and the ledger are shown to administrators only."));
    return out;
  }
  if (health.problems && health.problems.length) {
    out.push(section("Problems", h("ul", { class: "problems" }, health.problems.map((p) => h("li", {}, p)))));
  }
  out.push(section("Parts", table([
    ["Part", ([name]) => name],
    ["State", ([, p]) => h("span", { class: `st-${p.state}` }, p.state + (p.crash_looping ? " (crash-looping)" : ""))],
    ["Restarts", ([, p]) => String(p.restarts)],
    ["Running since (UTC)", ([, p]) => when(p.started_at)],
    ["Last error", ([, p]) => (p.last_error ? `${p.last_error} (${when(p.last_error_at)})` : "—")],
  ], Object.entries(health.parts))));
  const lag = health.lag || {};
  const sink = health.sink || {};
  out.push(section("Lag and throughput", table([
    ["Measure", (r) => r[0]], ["Value", (r) => r[1]],
  ], [
    ["Stream worker lag (messages)", lag.streams ?? "not measured"],
    ["Sink lag (messages)", lag.sink ?? "not measured"],
    ["Events landed", sink.events_landed ?? "—"],
    ["Events landed per second (last poll)", rate ? rate.events.toFixed(1) : "measuring…"],
    ["Genealogy changes per second (last poll)", rate ? rate.changes.toFixed(1) : "measuring…"],
    ["Dead letters landed", sink.dead_letters_landed ?? "—"],
    ["Alerts landed", sink.alerts_landed ?? "—"],
    ["Duplicates skipped", sink.duplicates_skipped ?? "—"],
    ["Last event time (UTC)", when(sink.last_event_time) || "—"],
    ["Last batch (UTC)", when(sink.last_batch_at) || "—"],
  ])));
  if (sink.stage_seconds) {
    out.push(section("Where the sink's time goes (seconds, cumulative)", table([
      ["Stage", (r) => r[0]], ["Seconds", (r) => String(r[1])],
    ], Object.entries(sink.stage_seconds))));
  }
  const parts = ledger ? Object.entries(ledger.partitions || {}).sort((a, b) => Number(a[0]) - Number(b[0])) : [];
  const gap = ledger ? ledger.gap || {} : {};
  out.push(section("Ledger (events topic, per partition)", parts.length ? table([
    ["Partition", ([p]) => p],
    ["Read", ([, l]) => String(l.read)],
    ["Landed", ([, l]) => String(l.landed)],
    ["Dead-lettered", ([, l]) => String(Object.values(l.dead_lettered || {}).reduce((a, b) => a + b, 0))],
    ["Duplicates", ([, l]) => String(l.duplicates)],
    ["Conflicts", ([, l]) => String(l.conflicts)],
    ["Gap", ([p]) => String(gap[p] || 0)],
  ], parts) : h("p", {}, "No ledger yet (nothing read since the sink started).")));
  if (health.alerts) {
    out.push(section("Alert engine", table([["Measure", (r) => r[0]], ["Value", (r) => String(r[1])]],
      Object.entries(health.alerts).filter(([, v]) => typeof v !== "object")
        .map(([k, v]) => [k.replace(/_/g, " "), typeof v === "number" && !Number.isInteger(v) ? v.toFixed(3) : v]))));
  }
  return out;
}

