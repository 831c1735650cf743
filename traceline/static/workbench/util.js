// Shared helpers: the API client (every call sends the token), elements, formatting.

const TOKEN_KEY = "traceline.token";

export class ApiError extends Error {
  constructor(status, detail) {
    super(typeof detail === "string" ? detail : (detail && detail.message) || `HTTP ${status}`);
    this.status = status;
    this.detail = detail;
  }
}

export const auth = {
  token: () => sessionStorage.getItem(TOKEN_KEY),
  set: (t) => sessionStorage.setItem(TOKEN_KEY, t),
  clear: () => sessionStorage.removeItem(TOKEN_KEY),
  onExpired: () => {},
};

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) {
    if (v === undefined || v === null || v === "") continue;
    if (Array.isArray(v)) v.forEach((x) => q.append(k, x));
    else q.append(k, v);
  }
  const s = q.toString();
  return s ? `?${s}` : "";
}

export async function request(path, params, init = {}) {
  const headers = { ...(init.headers || {}) };
  const token = auth.token();
  if (token) headers.Authorization = `Bearer ${token}`;
  const res = await fetch(path + query(params), { ...init, headers });
  if (res.status === 401) {
    auth.onExpired();
  }
  if (!res.ok) {
    let detail = res.statusText;
    try {
      const body = await res.json();
      detail = body.detail !== undefined ? body.detail : body;
    } catch (_) { /* not JSON */ }
    throw new ApiError(res.status, detail);
  }
  return res;
}

export const api = {
  get: async (path, params) => (await request(path, params)).json(),
  post: async (path, params) => (await request(path, params, { method: "POST" })).json(),
  async download(path, params, fallback) {
    const res = await request(path, params);
    const cd = res.headers.get("content-disposition") || "";
    const m = cd.match(/filename="([^"]+)"/);
    const name = m ? m[1] : fallback;
    saveBlob(await res.blob(), name);
    return { name, headers: res.headers };
  },
};

export function saveBlob(blob, name) {
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 30_000);
}

// h("div", {class: "x", onclick: fn}, "text", child, [children])
export function h(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "class") e.className = v;
    else if (k === "html") e.innerHTML = v;
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

export const esc = (s) =>
  String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

export function when(v) {
  if (!v) return "";
  const s = String(v);
  return s.length >= 16 ? s.slice(0, 16).replace("T", " ") : s;
}

export function href(page, params) {
  return `#/${page}${query(params)}`;
}

// where a "<kind>:<id>" reference (a suggestion, a tree node) leads
export function refHref(ref) {
  const i = ref.indexOf(":");
  const kind = ref.slice(0, i);
  const id = ref.slice(i + 1);
  if (kind === "serial" || kind === "uii") return href("passport", { uii: id });
  return href("recall", { kind, id });
}

export function announce(text) {
  const live = document.getElementById("live");
  live.textContent = "";
  setTimeout(() => { live.textContent = text; }, 20);
}

export function errorBox(err) {
  const msg = err instanceof ApiError ? err.message : String(err);
  return h("p", { class: "error", role: "alert" }, msg);
}

export function section(title, ...body) {
  const id = "s-" + title.toLowerCase().replace(/[^a-z0-9]+/g, "-");
  return h("section", { "aria-labelledby": id }, h("h2", { id }, title), ...body);
}

export function table(columns, rows, caption) {
  // a plain accessible table: columns [[label, fn(row) -> node|string]]
  return h(
    "div", { class: "scroll" },
    h("table", { class: "plain" },
      caption ? h("caption", {}, caption) : null,
      h("thead", {}, h("tr", {}, columns.map(([label]) => h("th", { scope: "col" }, label)))),
      h("tbody", {}, rows.map((r) => h("tr", {}, columns.map(([, fn]) => h("td", {}, fn(r))))))));
}
