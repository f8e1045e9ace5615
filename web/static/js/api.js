// Shared helpers of the dashboard: the API key, a fetch wrapper that never throws, an SSE reader
// over fetch streams (EventSource cannot send Authorization), formatting and small DOM helpers.
// Loaded by base.html on every page; page scripts import what they need from here.

export const KEY_NAME = "bmgkd.key";
export const API = "/api/v1";

// ---------------------------------------------------------------------------------------- key

export function getKey() {
  try {
    return sessionStorage.getItem(KEY_NAME) || "";
  } catch {
    return "";
  }
}

export function setKey(key) {
  try {
    sessionStorage.setItem(KEY_NAME, key);
  } catch {
    /* storage disabled: the key lives for this page only */
  }
}

export function clearKey() {
  try {
    sessionStorage.removeItem(KEY_NAME);
  } catch {
    /* nothing stored */
  }
}

let redirecting = false;

/** Go to the sign-in page, coming back here afterwards. */
export function redirectToLogin() {
  if (redirecting) return;
  redirecting = true;
  const here = location.pathname + location.search;
  const next = here && here !== "/login" ? `?next=${encodeURIComponent(here)}` : "";
  location.replace(`/login${next}`);
}

/** A same-site path from ?next=, or "/" (never another origin). */
export function safeNext(raw) {
  if (typeof raw !== "string" || !raw.startsWith("/") || raw.startsWith("//")) return "/";
  if (raw.startsWith("/\\") || raw.startsWith("/login")) return "/";
  return raw;
}

function authHeaders(extra = {}) {
  const headers = { ...extra };
  const key = getKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  return headers;
}

// -------------------------------------------------------------------------------------- fetch

/** The human message of an error body: FastAPI's ``detail`` (string or {message}) or a status. */
export function errorMessage(data, status) {
  const detail = data && typeof data === "object" ? data.detail : null;
  if (typeof detail === "string" && detail) return detail;
  if (detail && typeof detail === "object") {
    if (typeof detail.message === "string" && detail.message) return detail.message;
    if (Array.isArray(detail) && detail.length && detail[0].msg) return String(detail[0].msg);
  }
  if (typeof data === "string" && data.trim()) return data.trim().slice(0, 300);
  if (status === 404) return "Not available.";
  if (status === 0) return "Could not reach the server.";
  return `The server answered ${status}.`;
}

/**
 * Call the REST API with the key. Never throws: resolves to
 * ``{ok, status, data, message, response}`` (status 0 when the server could not be reached).
 * On 401 the key is dropped and the browser goes to /login (the promise then never settles).
 */
export async function api(path, { method = "GET", json, body, headers = {}, signal } = {}) {
  const h = authHeaders(headers);
  let payload = body;
  if (json !== undefined) {
    h["Content-Type"] = "application/json";
    payload = JSON.stringify(json);
  }
  let response;
  try {
    response = await fetch(path, { method, headers: h, body: payload, signal, cache: "no-store" });
  } catch (error) {
    const aborted = error && error.name === "AbortError";
    return {
      ok: false,
      status: 0,
      data: null,
      aborted,
      message: aborted ? "Cancelled." : "Could not reach the server.",
      response: null,
    };
  }
  if (response.status === 401) {
    clearKey();
    redirectToLogin();
    return new Promise(() => {});
  }
  let data = null;
  const type = response.headers.get("content-type") || "";
  try {
    data = type.includes("json") ? await response.json() : await response.text();
  } catch {
    data = null;
  }
  return {
    ok: response.ok,
    status: response.status,
    data,
    message: response.ok ? "" : errorMessage(data, response.status),
    response,
  };
}

/** Check a key without storing it: "ok", "rejected" or an error message. */
export async function checkKey(key) {
  try {
    const r = await fetch(`${API}/jobs?limit=1`, {
      headers: { Authorization: `Bearer ${key}` },
      cache: "no-store",
    });
    if (r.ok) return "ok";
    if (r.status === 401 || r.status === 403) return "rejected";
    return `The server answered ${r.status}.`;
  } catch {
    return "Could not reach the server.";
  }
}

function filenameFrom(disposition, fallback) {
  if (!disposition) return fallback;
  const star = /filename\*\s*=\s*(?:UTF-8'')?([^;]+)/i.exec(disposition);
  if (star) {
    try {
      return decodeURIComponent(star[1].trim().replace(/^"|"$/g, ""));
    } catch {
      /* fall through */
    }
  }
  const plain = /filename\s*=\s*"?([^";]+)"?/i.exec(disposition);
  return plain ? plain[1].trim() : fallback;
}

/**
 * Download ``path`` with the key and save it under the server's file name (Content-Disposition).
 * Resolves to ``{ok, message, filename}``; never throws.
 */
export async function download(path, fallbackName = "download") {
  let response;
  try {
    response = await fetch(path, { headers: authHeaders(), cache: "no-store" });
  } catch {
    return { ok: false, message: "Could not reach the server." };
  }
  if (response.status === 401) {
    clearKey();
    redirectToLogin();
    return new Promise(() => {});
  }
  if (!response.ok) {
    let data = null;
    try {
      data = await response.json();
    } catch {
      data = null;
    }
    return { ok: false, message: errorMessage(data, response.status) };
  }
  let blob;
  try {
    blob = await response.blob();
  } catch {
    return { ok: false, message: "The download was interrupted." };
  }
  const filename = filenameFrom(response.headers.get("content-disposition"), fallbackName);
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = filename;
  a.hidden = true;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
  return { ok: true, message: "", filename };
}

/** Fetch an image with the key and decode it (ImageBitmap or HTMLImageElement), or null. */
export async function fetchImage(path, signal) {
  let response;
  try {
    response = await fetch(path, { headers: authHeaders(), signal });
  } catch {
    return null;
  }
  if (!response.ok) return null;
  try {
    const blob = await response.blob();
    if (typeof createImageBitmap === "function") return await createImageBitmap(blob);
    const url = URL.createObjectURL(blob);
    const img = new Image();
    img.src = url;
    await img.decode();
    URL.revokeObjectURL(url);
    return img;
  } catch {
    return null;
  }
}

// ----------------------------------------------------------------------- server-sent events

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Read a Server-Sent Events stream with fetch (so that the key is sent), reconnecting with
 * ``Last-Event-ID`` after a drop. ``onEvent({type, data, id})`` gets ``data`` parsed as JSON
 * when it is JSON. The stream stops for good after an ``end`` event, a 404, or ``close()``.
 * ``lastEventId`` may be a function returning the id to send on (re)connect; without it the
 * last ``id:`` received is sent.
 */
export function streamEvents(path, { onEvent, onState, lastEventId = null } = {}) {
  const controller = new AbortController();
  let closed = false;
  let lastId = typeof lastEventId === "function" ? null : lastEventId;
  let retryMs = 2000;
  let failures = 0;
  const idToSend = () => (typeof lastEventId === "function" ? lastEventId() : lastId);
  const state = (s, detail) => {
    try {
      if (onState) onState(s, detail);
    } catch (error) {
      console.warn("SSE state handler failed", error);
    }
  };

  const dispatch = (ev) => {
    let data = ev.data;
    try {
      data = JSON.parse(ev.data);
    } catch {
      /* plain text */
    }
    try {
      if (onEvent) onEvent({ type: ev.type, data, id: ev.id });
    } catch (error) {
      console.warn("SSE event handler failed", error);
    }
  };

  async function readOnce() {
    const headers = authHeaders({ Accept: "text/event-stream" });
    const id = idToSend();
    if (id !== null && id !== undefined && id !== "") headers["Last-Event-ID"] = String(id);
    const response = await fetch(path, { headers, signal: controller.signal, cache: "no-store" });
    if (response.status === 401) {
      clearKey();
      redirectToLogin();
      return "stop";
    }
    if (response.status === 404) {
      state("unavailable");
      return "stop";
    }
    if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
    failures = 0;
    state("open");
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let ev = { type: "message", data: [], id: null };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return "closed";
      buffer += value;
      let nl;
      while ((nl = buffer.indexOf("\n")) >= 0) {
        let line = buffer.slice(0, nl);
        buffer = buffer.slice(nl + 1);
        if (line.endsWith("\r")) line = line.slice(0, -1);
        if (line === "") {
          if (ev.data.length) {
            const type = ev.type || "message";
            dispatch({ type, data: ev.data.join("\n"), id: lastId });
            if (type === "end") {
              try {
                await reader.cancel();
              } catch {
                /* already closed */
              }
              return "end";
            }
          }
          ev = { type: "message", data: [], id: null };
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let val = colon < 0 ? "" : line.slice(colon + 1);
        if (val.startsWith(" ")) val = val.slice(1);
        if (field === "event") ev.type = val;
        else if (field === "data") ev.data.push(val);
        else if (field === "id" && !val.includes("\0")) lastId = val;
        else if (field === "retry" && /^\d+$/.test(val)) retryMs = Number(val);
      }
    }
  }

  (async () => {
    while (!closed) {
      let outcome;
      try {
        outcome = await readOnce();
      } catch (error) {
        if (closed || (error && error.name === "AbortError")) return;
        outcome = "error";
      }
      if (closed || outcome === "stop") return;
      if (outcome === "end") {
        state("ended");
        return;
      }
      failures += 1;
      state("reconnecting", { failures });
      await sleep(Math.min(retryMs * failures, 30_000));
    }
  })();

  return {
    close() {
      closed = true;
      controller.abort();
    },
    get lastEventId() {
      return lastId;
    },
  };
}

// ---------------------------------------------------------------------------------- formatting

/** 65 -> "1m 05s", 7300 -> "2h 01m 40s"; null -> "". */
export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(Number(seconds))) return "";
  let s = Math.max(0, Math.round(Number(seconds)));
  const d = Math.floor(s / 86400);
  s -= d * 86400;
  const h = Math.floor(s / 3600);
  s -= h * 3600;
  const m = Math.floor(s / 60);
  s -= m * 60;
  const pad = (n) => String(n).padStart(2, "0");
  if (d) return `${d}d ${pad(h)}h ${pad(m)}m`;
  if (h) return `${h}h ${pad(m)}m ${pad(s)}s`;
  if (m) return `${m}m ${pad(s)}s`;
  return `${s}s`;
}

/** "epoch E · step S/T · ETA 1m 05s" (ETA only while running and known). */
export function progressText(job) {
  if (!job) return "";
  const parts = [`epoch ${job.epoch ?? 0}`];
  const total = job.total_steps ?? "?";
  parts.push(`step ${job.step ?? 0}/${total}`);
  if (job.status === "running" && job.eta_s !== null && job.eta_s !== undefined) {
    parts.push(`ETA ${formatDuration(job.eta_s)}`);
  }
  return parts.join(" · ");
}

/** A COCO AP (percent, as the engine reports it) with one decimal, or "—". */
export function formatAP(value) {
  const n = Number(value);
  if (value === null || value === undefined || value === "" || !Number.isFinite(n)) return "—";
  return n.toFixed(1);
}

/** 11_200_000 -> "11.2 M". */
export function formatCount(value) {
  const n = Number(value);
  if (value === null || value === undefined || !Number.isFinite(n)) return "—";
  if (Math.abs(n) >= 1e6) return `${(n / 1e6).toFixed(1)} M`;
  if (Math.abs(n) >= 1e4) return `${(n / 1e3).toFixed(1)} k`;
  return String(n);
}

export function formatBytes(value) {
  const n = Number(value);
  if (!Number.isFinite(n)) return "—";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${i ? v.toFixed(1) : v} ${units[i]}`;
}

/** "fasterrcnn_resnet50_fpn" stays as is; keys like "feature_shapes" -> "feature shapes". */
export function humanKey(key) {
  return String(key).replace(/[_.]+/g, " ").trim();
}

export function shortId(id) {
  return typeof id === "string" && id.length > 10 ? `${id.slice(0, 8)}…` : String(id ?? "");
}

/** ``obj?.a?.b`` for a dotted path, without throwing on odd data. */
export function dig(obj, ...keys) {
  let cur = obj;
  for (const k of keys) {
    if (cur === null || cur === undefined || typeof cur !== "object") return undefined;
    cur = cur[k];
  }
  return cur;
}

// ------------------------------------------------------------------------------------------ DOM

/** ``el("a", {href: "/", class: "x", dataset: {id: 1}}, "text", child)``. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on") && typeof v === "function") node.addEventListener(k.slice(2), v);
    else if (v === true) node.setAttribute(k, "");
    else node.setAttribute(k, String(v));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function $(selector, root = document) {
  return root.querySelector(selector);
}

export function setText(target, text) {
  const node = typeof target === "string" ? document.querySelector(target) : target;
  if (node) node.textContent = text ?? "";
}

/**
 * A readable rendering of any JSON value: objects become definition lists, lists of objects with
 * the same keys become tables, other lists comma-separated text.
 */
export function renderValue(value, depth = 0) {
  if (value === null || value === undefined) return el("span", { class: "muted" }, "—");
  if (typeof value === "boolean") {
    return el("span", { class: value ? "ok" : "bad" }, value ? "yes" : "no");
  }
  if (typeof value === "number") {
    const text = Number.isInteger(value) ? String(value) : value.toPrecision(4);
    return el("span", {}, text);
  }
  if (typeof value !== "object") return el("span", {}, String(value));
  if (depth > 6) return el("code", {}, JSON.stringify(value));
  if (Array.isArray(value)) {
    if (!value.length) return el("span", { class: "muted" }, "none");
    const objects = value.every((v) => v && typeof v === "object" && !Array.isArray(v));
    if (objects) {
      const cols = [...new Set(value.flatMap((v) => Object.keys(v)))];
      const table = el(
        "table",
        { class: "data-table compact" },
        el("thead", {}, el("tr", {}, cols.map((c) => el("th", { scope: "col" }, humanKey(c))))),
        el(
          "tbody",
          {},
          value.map((row) => el("tr", {}, cols.map((c) => el("td", {}, renderValue(row[c], depth + 1))))),
        ),
      );
      return el("div", { class: "table-wrap" }, table);
    }
    const scalars = value.every((v) => v === null || typeof v !== "object");
    if (scalars) return el("span", {}, value.map((v) => (v === null ? "—" : String(v))).join(", "));
    return el("ol", {}, value.map((v) => el("li", {}, renderValue(v, depth + 1))));
  }
  const entries = Object.entries(value);
  if (!entries.length) return el("span", { class: "muted" }, "none");
  return el(
    "dl",
    { class: "kv" },
    entries.flatMap(([k, v]) => [el("dt", {}, humanKey(k)), el("dd", {}, renderValue(v, depth + 1))]),
  );
}

// ------------------------------------------------------------------------------- every page

function wireChrome() {
  const signOut = document.getElementById("sign-out");
  if (signOut) {
    signOut.addEventListener("click", (event) => {
      event.preventDefault();
      clearKey();
      location.assign("/login");
    });
  }
}

/** True when a key is stored; otherwise starts the redirect to /login and returns false. */
export function requireSignIn() {
  if (getKey()) return true;
  redirectToLogin();
  return false;
}

if (document.body && document.body.dataset.auth === "required") requireSignIn();
wireChrome();
