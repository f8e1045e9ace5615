// / (jobs): the user's jobs in a table that refreshes itself every 2 s (rows are updated in place).
import { API, api, dig, el, formatAP, progressText, requireSignIn, shortId } from "./api.js";

const REFRESH_MS = 2000;
const STATUSES = ["all", "queued", "running", "succeeded", "failed", "cancelled"];

const table = document.getElementById("jobs-table");
const tbody = table.tBodies[0];
const filter = document.getElementById("status-filter");
const summary = document.getElementById("jobs-summary");
const empty = document.getElementById("jobs-empty");
const errorBox = document.getElementById("jobs-error");
const more = document.getElementById("jobs-more");
const PAGE = 200; // the API's largest page
let wanted = 100; // rows to show; "Show more" adds 100

const rows = new Map(); // job id -> tr
const datasets = new Map(); // dataset id -> name
let datasetsFetchedAt = 0;
const apCache = new Map(); // job id -> {lastId, value, done}
let generation = 0;
let timer = null;

function showError(text) {
  errorBox.textContent = text || "";
  errorBox.hidden = !text;
}

async function loadDatasets(force) {
  if (!force && Date.now() - datasetsFetchedAt < 10_000) return;
  datasetsFetchedAt = Date.now();
  const r = await api(`${API}/datasets`);
  if (r.ok && Array.isArray(r.data)) {
    for (const d of r.data) datasets.set(d.id, d.name);
  }
}

function archCell(job) {
  const cfg = job.config || {};
  const student = dig(cfg, "model", "arch");
  const teacher = dig(cfg, "distill", "teacher_arch");
  if (!student) return "—";
  return teacher ? `${teacher} → ${student}` : student;
}

function presetCell(job) {
  const preset = dig(job.config, "distill", "preset");
  if (preset) return preset;
  return job.kind === "train" ? "none" : "—";
}

function bestAP(job) {
  const fromSummary = dig(job.result, "summary", "val.AP");
  if (typeof fromSummary === "number") return fromSummary;
  const cached = apCache.get(job.id);
  return cached && typeof cached.value === "number" ? cached.value : null;
}

let apBusy = false;

/** Latest val.AP of jobs without a final summary (running ones, or stopped ones, once each). */
async function refreshLatestAP(jobs) {
  if (apBusy) return;
  const wanted = jobs.filter((job) => {
    if (typeof dig(job.result, "summary", "val.AP") === "number") return false;
    if (job.status === "queued" || !(job.step > 0)) return false;
    const cached = apCache.get(job.id);
    return !cached || !cached.done || job.status === "running";
  });
  if (!wanted.length) return;
  apBusy = true;
  try {
    await Promise.all(
      wanted.slice(0, 10).map(async (job) => {
        const cached = apCache.get(job.id) || { lastId: 0, value: null, done: false };
        const r = await api(
          `${API}/jobs/${encodeURIComponent(job.id)}/metrics?name=val.AP&after_id=${cached.lastId}`,
        );
        const done = job.status !== "running";
        if (!r.ok || !r.data) {
          apCache.set(job.id, { ...cached, done: true });
          return;
        }
        const values = dig(r.data, "series", "val.AP", "values");
        const value = Array.isArray(values) && values.length ? values[values.length - 1] : cached.value;
        apCache.set(job.id, { lastId: r.data.last_id ?? cached.lastId, value, done });
        const tr = rows.get(job.id);
        if (tr) updateAP(tr, job);
      }),
    );
  } finally {
    apBusy = false;
  }
}

function buildRow(job) {
  const link = el("a", { class: "job-link", href: `/jobs/${encodeURIComponent(job.id)}` });
  const status = el("span", { class: "status" });
  const bar = el("progress", { class: "job-progress", max: "1", value: "0" });
  const text = el("span", { class: "progress-text" });
  const tr = el(
    "tr",
    { dataset: { jobId: job.id } },
    el("td", { class: "name" }, link, el("div", { class: "muted small job-id" })),
    el("td", { class: "kind" }),
    el("td", { class: "dataset" }),
    el("td", { class: "archs" }),
    el("td", { class: "preset" }),
    el("td", { class: "status-cell" }, status),
    el("td", { class: "progress-cell" }, bar, text),
    el("td", { class: "best-ap num" }),
  );
  return tr;
}

function updateRow(tr, job) {
  const set = (selector, text) => {
    const node = tr.querySelector(selector);
    if (node && node.textContent !== text) node.textContent = text;
  };
  const link = tr.querySelector("a.job-link");
  link.textContent = job.name || shortId(job.id);
  link.title = job.id;
  set(".job-id", job.name ? shortId(job.id) : "");
  set("td.kind", job.kind || "—");
  const dsName = datasets.get(job.dataset_id);
  set("td.dataset", dsName || shortId(job.dataset_id));
  set("td.archs", archCell(job));
  set("td.preset", presetCell(job));
  const status = tr.querySelector("span.status");
  const label = job.cancel_requested && job.status === "running" ? "cancelling" : job.status;
  if (status.dataset.status !== job.status) status.dataset.status = job.status;
  set("span.status", label);
  const bar = tr.querySelector("progress.job-progress");
  const value = Math.min(1, Math.max(0, Number(job.progress) || 0));
  bar.value = job.status === "succeeded" ? 1 : value;
  bar.setAttribute("aria-label", `Progress of ${job.name || job.id}: ${Math.round(bar.value * 100)} %`);
  set(".progress-text", progressText(job));
  updateAP(tr, job);
}

function updateAP(tr, job) {
  const ap = bestAP(job);
  const cell = tr.querySelector("td.best-ap");
  const text = formatAP(ap);
  if (cell.textContent !== text) cell.textContent = text;
  if (ap === null) delete cell.dataset.value;
  else cell.dataset.value = String(ap);
}

function render(jobs, total) {
  const seen = new Set();
  let previous = null;
  for (const job of jobs) {
    if (!job || !job.id) continue;
    seen.add(job.id);
    let tr = rows.get(job.id);
    if (!tr) {
      tr = buildRow(job);
      rows.set(job.id, tr);
    }
    updateRow(tr, job);
    const expected = previous ? previous.nextSibling : tbody.firstChild;
    if (expected !== tr) tbody.insertBefore(tr, expected);
    previous = tr;
  }
  for (const [id, tr] of rows) {
    if (!seen.has(id)) {
      tr.remove();
      rows.delete(id);
    }
  }
  empty.hidden = jobs.length > 0;
  if (!jobs.length && filter.value !== "all") {
    empty.textContent = `No ${filter.value} jobs.`;
  } else if (!jobs.length) {
    empty.replaceChildren("No jobs yet. ", el("a", { href: "/jobs/new" }, "Start one"), ".");
  }
  const shown = jobs.length < total ? `${jobs.length} of ${total}` : String(total);
  summary.textContent = `${shown} job${total === 1 ? "" : "s"}`;
}

async function refresh() {
  const gen = ++generation;
  const status = filter.value;
  const query = status && status !== "all" ? `&status=${encodeURIComponent(status)}` : "";
  // Newest first, `wanted` rows (100 more per click on "Show more"), in pages of PAGE.
  let jobs = [];
  let r = null;
  for (let offset = 0; offset < wanted; offset += PAGE) {
    const limit = Math.min(PAGE, wanted - offset);
    r = await api(`${API}/jobs?limit=${limit}&offset=${offset}${query}`);
    if (gen !== generation) return;
    if (!r.ok || !r.data || !Array.isArray(r.data.items)) {
      showError(`Could not load the jobs: ${r.message || "unexpected answer"}`);
      return;
    }
    jobs = jobs.concat(r.data.items);
    if (r.data.items.length < limit) break;
  }
  showError("");
  const unknown = jobs.some((j) => j.dataset_id && !datasets.has(j.dataset_id));
  if (unknown) await loadDatasets(datasets.size === 0);
  if (gen !== generation) return;
  const total = Number(r.data.total) || jobs.length;
  render(jobs, total);
  more.hidden = jobs.length >= total;
  refreshLatestAP(jobs); // fills the best-AP cells when it answers; never delays the table
}

function schedule() {
  clearTimeout(timer);
  timer = setTimeout(async () => {
    if (!document.hidden) await refresh();
    schedule();
  }, REFRESH_MS);
}

function main() {
  if (!requireSignIn()) return;
  more.addEventListener("click", async () => {
    wanted += 100;
    await refresh();
  });
  const initial = new URLSearchParams(location.search).get("status");
  if (initial && STATUSES.includes(initial)) filter.value = initial;
  filter.addEventListener("change", async () => {
    const url = new URL(location.href);
    if (filter.value === "all") url.searchParams.delete("status");
    else url.searchParams.set("status", filter.value);
    history.replaceState(null, "", url);
    await refresh();
    schedule();
  });
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) refresh();
  });
  refresh().then(schedule);
}

main();
