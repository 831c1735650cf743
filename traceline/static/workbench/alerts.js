// Live alerts: the server pushes them (GET /alerts/stream, server-sent events read through
// fetch so the token travels in a header); a severity filter; acknowledge; a link to the impact.
import { api, auth, h, href, when, announce, errorBox } from "./util.js";

const IMPACT_KINDS = new Set(["lot", "supplier_lot", "supplier", "serial", "station", "operator", "bench", "unit"]);

export const feed = {
  alerts: new Map(), // alert_id -> latest row
  listeners: new Set(),
  state: "stopped",
  after: null,
  controller: null,

  start() {
    if (this.controller) return;
    this.controller = new AbortController();
    this.loop(this.controller.signal);
  },
  stop() {
    if (this.controller) this.controller.abort();
    this.controller = null;
    this.alerts.clear();
    this.after = null;
    this.setState("stopped");
  },
  setState(s) {
    this.state = s;
    this.emit(null);
  },
  emit(row) {
    this.listeners.forEach((fn) => fn(row));
    const open = [...this.alerts.values()].filter((a) => !a.ack && a.severity !== "INFO").length;
    const badge = document.getElementById("alert-badge");
    badge.hidden = open === 0;
    badge.textContent = String(open);
    badge.setAttribute("aria-label", `${open} unacknowledged warnings or critical alerts`);
  },
  async loop(signal) {
    let wait = 500;
    while (!signal.aborted) {
      try {
        const params = new URLSearchParams(this.after ? { after: this.after } : { backlog: "100" });
        const res = await fetch(`/alerts/stream?${params}`, {
          headers: { Authorization: `Bearer ${auth.token()}`, Accept: "text/event-stream" }, signal });
        if (res.status === 401) { auth.onExpired(); return; }
        if (!res.ok) throw new Error(`HTTP ${res.status}`);
        this.setState("live");
        wait = 500;
        const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += value;
          let i;
          while ((i = buf.indexOf("\n\n")) >= 0) {
            const block = buf.slice(0, i);
            buf = buf.slice(i + 2);
            this.handle(block);
          }
        }
      } catch (err) {
        if (signal.aborted) return;
        this.setState(`reconnecting (${err.message || err})`);
        wait = Math.min(wait * 2, 10_000);
      }
      await new Promise((r) => setTimeout(r, wait));
    }
  },
  handle(block) {
    let kind = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith("event:")) kind = line.slice(6).trim();
      else if (line.startsWith("data:")) data.push(line.slice(5).trim());
    }
    if (!data.length) return;
    const msg = JSON.parse(data.join("\n"));
    if (kind === "alert") {
      const old = this.alerts.get(msg.alert_id);
      if (!old || old.version <= msg.version) this.alerts.set(msg.alert_id, msg);
      if (!this.after || msg.landed > this.after) this.after = msg.landed;
      this.emit(msg);
    } else if (kind === "ack") {
      const a = this.alerts.get(msg.alert_id);
      if (a) { a.ack = msg; this.emit(a); }
    } else if (kind === "end" && msg.after) {
      if (!this.after || msg.after > this.after) this.after = msg.after;
    }
  },
};

export function impactHref(a) {
  if (!IMPACT_KINDS.has(a.subject_kind)) return null;
  if (a.subject_kind === "serial" || a.subject_kind === "unit") return href("passport", { uii: a.subject_id });
  return href("recall", { kind: a.subject_kind, id: a.subject_id });
}

export function renderAlerts(_params, el) {
  el.append(h("h1", {}, "Live alerts"));
  const status = h("p", { class: "muted", id: "feed-state", role: "status" });
  const filters = h("fieldset", { class: "filters" }, h("legend", {}, "Severity"),
    ["CRITICAL", "WARNING", "INFO"].map((s) => h("label", {},
      h("input", { type: "checkbox", value: s, checked: true, id: `sev-${s}`, onchange: draw }), ` ${s}`)),
    h("label", {}, h("input", { type: "checkbox", id: "show-acked", checked: true, onchange: draw }), " acknowledged"));
  const list = h("ol", { class: "feed", id: "feed", "aria-label": "Alerts, newest first" });
  let limit = 100;
  const more = h("button", { type: "button", id: "feed-more", hidden: true,
    onclick: () => { limit += 100; draw(); } }, "Show 100 more");
  el.append(h("p", { class: "hint" }, "Alerts arrive here as the alert engine raises them; no reload needed."),
    filters, status, list, more);

  function draw() {
    const sev = new Set([...filters.querySelectorAll("input[value]:checked")].map((i) => i.value));
    const acked = filters.querySelector("#show-acked").checked;
    const rows = [...feed.alerts.values()]
      .filter((a) => sev.has(a.severity) && (acked || !a.ack))
      .sort((a, b) => (b.landed || "").localeCompare(a.landed || "") || b.alert_id.localeCompare(a.alert_id));
    const page = rows.slice(0, limit);
    status.textContent = `Feed ${feed.state}; ${page.length} of ${rows.length} matching alerts shown ` +
      `(${feed.alerts.size} received).`;
    list.replaceChildren(...page.map(item));
    more.hidden = rows.length <= limit;
  }
  function item(a) {
    const link = impactHref(a);
    const ackBtn = a.ack
      ? h("span", { class: "acked" }, `acknowledged by ${a.ack.by} at ${when(a.ack.at)} UTC`)
      : h("button", { type: "button", class: "ack", "data-alert": a.alert_id, onclick: async (ev) => {
        ev.target.disabled = true;
        try {
          a.ack = await api.post("/alerts/acks", { alert_id: a.alert_id });
          announce(`Acknowledged ${a.title}`);
          draw();
        } catch (err) { ev.target.replaceWith(errorBox(err)); }
      } }, "Acknowledge");
    return h("li", { class: `alert sev-${a.severity}${a.ack ? " is-acked" : ""}`, "data-alert": a.alert_id },
      h("div", { class: "head" }, h("span", { class: `sev sev-${a.severity}` }, a.severity), " ",
        h("strong", {}, a.title)),
      h("div", { class: "meta" }, `${a.rule} · ${a.subject_kind} ${a.subject_id} · event ${when(a.event_time)} UTC · `,
        `raised ${when(a.raised_at)} UTC · ${a.program} · v${a.version}`,
        a.unit_count ? ` · ${a.unit_count} units` : ""),
      h("div", { class: "actions" }, link ? h("a", { href: link }, "Impact") : null, " ", ackBtn));
  }
  const listener = () => draw();
  feed.listeners.add(listener);
  draw();
  el.dataset.ready = "true";
  return () => feed.listeners.delete(listener);
}
