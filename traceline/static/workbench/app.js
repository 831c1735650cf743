// The analyst workbench: sign-in, the search box (suggestions as you type), the router, and the
// live alert feed (server-sent events read through fetch, so the token goes in a header).
import { api, auth, ApiError, h, href, refHref, announce, errorBox } from "./util.js";
import { renderRecall } from "./recall.js";
import { renderTree } from "./tree.js";
import { renderPassport } from "./passport.js";
import { feed, renderAlerts } from "./alerts.js";
import { renderStatus } from "./status.js";

const view = document.getElementById("view");
const pages = {
  "": renderHome,
  search: renderSearch,
  recall: renderRecall,
  tree: renderTree,
  passport: renderPassport,
  alerts: renderAlerts,
  status: renderStatus,
};
let leave = null; // the current page's clean-up

// -- sign-in ----------------------------------------------------------------------------------
const dialog = document.getElementById("signin");
const signinForm = document.getElementById("signin-form");
const signoutBtn = document.getElementById("signout");

function askToken(message) {
  document.getElementById("signin-error").textContent = message || "";
  if (!dialog.open) dialog.showModal();
  document.getElementById("token").focus();
}

signinForm.addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const token = document.getElementById("token").value.trim();
  if (!token) return;
  auth.set(token);
  try {
    await api.get("/freshness");
  } catch (err) {
    auth.clear();
    const why = err instanceof ApiError && err.status === 401
      ? "This token is not valid (unknown, revoked or expired)."
      : err instanceof ApiError && err.status === 403 ? `Refused: ${err.message}` : String(err.message || err);
    document.getElementById("signin-error").textContent = why;
    return;
  }
  document.getElementById("token").value = "";
  dialog.close();
  signedIn();
  route();
});
dialog.addEventListener("cancel", (ev) => { if (!auth.token()) ev.preventDefault(); });

signoutBtn.addEventListener("click", () => {
  auth.clear();
  feed.stop();
  signoutBtn.hidden = true;
  view.replaceChildren();
  askToken("Signed out.");
});

auth.onExpired = () => {
  auth.clear();
  feed.stop();
  signoutBtn.hidden = true;
  askToken("Your token is no longer accepted: sign in again.");
};

function signedIn() {
  signoutBtn.hidden = false;
  feed.start();
}

// -- the search box ----------------------------------------------------------------------------
const form = document.getElementById("search");
const input = document.getElementById("q");
const list = document.getElementById("suggestions");
let items = [];
let active = -1;
let pending = null;
let typedSeq = 0;

function closeList() {
  list.hidden = true;
  input.setAttribute("aria-expanded", "false");
  input.removeAttribute("aria-activedescendant");
  active = -1;
}

function showList(hits) {
  items = hits;
  active = -1;
  list.replaceChildren(
    ...hits.map((hit, i) =>
      h("li", { id: `sugg-${i}`, role: "option", "aria-selected": "false", "data-kind": hit.kind,
        onmousedown: (e) => { e.preventDefault(); pick(i); } },
      h("span", { class: `kind k-${hit.kind}` }, hit.kind.replace("_", " ")), " ", hit.label.replace(/^\S+ /, ""))));
  list.hidden = hits.length === 0;
  input.setAttribute("aria-expanded", hits.length ? "true" : "false");
}

function highlight(i) {
  active = i;
  [...list.children].forEach((li, j) => li.setAttribute("aria-selected", j === i ? "true" : "false"));
  if (i >= 0) {
    input.setAttribute("aria-activedescendant", `sugg-${i}`);
    list.children[i].scrollIntoView({ block: "nearest" });
  } else input.removeAttribute("aria-activedescendant");
}

function pick(i) {
  const hit = items[i];
  closeList();
  input.value = hit.id;
  location.hash = hit.kind === "serial" ? href("passport", { uii: hit.id }) : href("recall", { kind: hit.kind, id: hit.id });
}

input.addEventListener("input", () => {
  clearTimeout(pending);
  const q = input.value.trim();
  if (q.length < 2 || !auth.token()) { closeList(); return; }
  const seq = ++typedSeq;
  pending = setTimeout(async () => {
    try {
      const hits = await api.get("/search/suggest", { q, limit: 10 });
      if (seq === typedSeq && input.value.trim() === q) showList(hits);
    } catch (_) { closeList(); }
  }, 150);
});

input.addEventListener("keydown", (ev) => {
  if (list.hidden && ev.key === "ArrowDown" && items.length) { showList(items); }
  if (list.hidden) return;
  if (ev.key === "ArrowDown") { ev.preventDefault(); highlight(Math.min(active + 1, items.length - 1)); }
  else if (ev.key === "ArrowUp") { ev.preventDefault(); highlight(Math.max(active - 1, -1)); }
  else if (ev.key === "Escape") { closeList(); }
  else if (ev.key === "Enter" && active >= 0) { ev.preventDefault(); pick(active); }
});
input.addEventListener("blur", () => setTimeout(closeList, 100));

form.addEventListener("submit", (ev) => {
  ev.preventDefault();
  const q = input.value.trim();
  if (!q) return;
  closeList();
  typedSeq++;
  const target = href("search", { q });
  if (location.hash === target) route(); else location.hash = target;
});

// -- pages ------------------------------------------------------------------------------------
function renderHome(_params, el) {
  el.append(
    h("h1", {}, "Analyst workbench"),
    h("p", {}, "Search a unit (UII or bare serial), a lot, a supplier lot, a station, an operator or a bench ",
      "in the box above: a lot or any other trigger opens its recall impact, a unit its passport."),
    h("ul", {},
      h("li", {}, h("a", { href: "#/alerts" }, "Live alerts"), ": pushed by the server as they are raised."),
      h("li", {}, h("a", { href: "#/status" }, "Pipeline status"), ": health, lag, ledger and throughput."),
      h("li", {}, h("a", { href: "/docs" }, "The HTTP API"), " these pages use.")));
}

async function renderSearch(params, el) {
  const q = params.get("q") || "";
  input.value = q;
  el.append(h("h1", {}, "Search: ", h("q", {}, q)));
  const status = h("p", { class: "muted" }, "Searching…");
  el.append(status);
  try {
    const got = await api.get("/search", { q });
    status.remove();
    if (got.matches.length === 1) {
      const m = got.matches[0];
      location.replace(m.kind === "serial" ? href("passport", { uii: m.id }) : href("recall", { kind: m.kind, id: m.id }));
      return;
    }
    el.append(h("p", {}, `${got.matches.length} matches:`),
      h("ul", { class: "matches" }, got.matches.map((m) =>
        h("li", {}, h("a", { href: m.kind === "serial" ? href("passport", { uii: m.id }) : href("recall", { kind: m.kind, id: m.id }) }, m.label)))));
    announce(`${got.matches.length} matches`);
  } catch (err) {
    status.remove();
    if (err instanceof ApiError && err.status === 404 && err.detail && typeof err.detail === "object") {
      const d = err.detail;
      el.append(
        h("div", { class: "notfound", role: "alert" },
          h("p", {}, h("strong", {}, "Not found: "), `“${d.id}” is not known (searched ${d.searched}).`),
          d.suggestions.length
            ? h("div", {}, h("p", {}, "Did you mean:"),
              h("ul", { class: "matches", id: "near-misses" }, d.suggestions.map((s) =>
                h("li", {}, h("a", { href: refHref(s) }, s)))))
            : h("p", {}, "No similar identifier is known.")));
      announce(`Not found. ${d.suggestions.length} suggestions.`);
    } else el.append(errorBox(err));
  }
}

async function route() {
  closeList();
  if (leave) { try { leave(); } catch (_) { /* ignore */ } leave = null; }
  const raw = location.hash.replace(/^#\/?/, "");
  const [name, qs] = raw.split("?");
  const render = pages[name] || renderHome;
  view.replaceChildren();
  document.querySelectorAll("nav a").forEach((a) =>
    a.toggleAttribute("aria-current", a.getAttribute("href") === `#/${name}`));
  if (!auth.token()) { askToken(); return; }
  const el = h("div", { class: `page page-${name || "home"}` });
  view.append(el);
  try {
    leave = (await render(new URLSearchParams(qs || ""), el)) || null;
  } catch (err) {
    el.append(errorBox(err));
  }
  const title = el.querySelector("h1");
  document.title = title ? `${title.textContent} · traceline` : "traceline workbench";
}

window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", () => {
  if (auth.token()) signedIn();
  route();
});
