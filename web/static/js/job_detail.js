// /jobs/{id}: status in plain words, progress, live charts (metrics + SSE), cancel/resume,
// comparison with teacher and baseline, predictions viewer, downloads.
import {
  API,
  api,
  dig,
  download,
  el,
  fetchImage,
  formatAP,
  formatCount,
  progressText,
  requireSignIn,
  shortId,
  streamEvents,
} from "./api.js";
import { Chart } from "./charts.js";

const $ = (id) => document.getElementById(id);
const JOB_ID = document.getElementById("main").dataset.jobId || "";
const JOB_URL = `${API}/jobs/${encodeURIComponent(JOB_ID)}`;
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

// Plain words; each contains the status name so that it reads (and matches) as that status.
const STATUS_WORDS = {
  queued: "Queued: waiting for a worker",
  running: "Running",
  succeeded: "Succeeded: training finished",
  failed: "Failed",
  cancelled: "Cancelled",
};

export const FAILURE_SENTENCES = {
  NAN_LOSS: "Training diverged: a loss became NaN or infinite. Try a lower learning rate or a longer warm-up.",
  OUT_OF_MEMORY: "The device ran out of memory. Try a smaller batch size or image size.",
  DATA_ERROR: "The dataset could not be read: an image or annotation is broken or missing.",
  TEACHER_LOAD: "The teacher could not be loaded, or it does not match the dataset or the student.",
  WORKER_LOST: "The worker running this job stopped responding (it crashed or was restarted) and the job ran out of attempts.",
  CANCELLED: "The job was cancelled.",
  INTERNAL: "An internal error stopped the job. The details below may help; resuming may work.",
  CONFIG_ERROR: "The job's configuration is invalid.",
};

const METRIC_COLUMNS = ["AP", "AP50", "AP75", "APs", "APm", "APl"];

let job = null;
const store = {}; // metric name -> {steps, values}
let metricsLastId = 0;
let stream = null;
let charts = null;
let comparisonTimer = null;
let predictionsLoaded = false;

// --------------------------------------------------------------------------------- job + status

function setMessage(text) {
  $("action-message").textContent = text || "";
}

function renderMeta() {
  const cfg = job.config || {};
  const student = dig(cfg, "model", "arch");
  const teacher = dig(cfg, "distill", "teacher_arch");
  const presetName = dig(cfg, "distill", "preset");
  const parts = [job.kind];
  if (student) parts.push(teacher ? `${teacher} → ${student}` : student);
  if (presetName) parts.push(`preset ${presetName}`);
  const meta = $("job-meta");
  meta.replaceChildren(parts.filter(Boolean).join(" · "));
  if (job.dataset_id) {
    meta.append(
      " · dataset ",
      el("a", { href: `/datasets/${encodeURIComponent(job.dataset_id)}` }, shortId(job.dataset_id)),
    );
  }
  meta.append(` · id ${job.id}`);
}

function renderStatus() {
  const status = job.status;
  let words = STATUS_WORDS[status] || String(status || "unknown");
  if (status === "running" && job.cancel_requested) words = "Running: stopping after this step (cancel requested)";
  if (status === "queued" && job.step > 0) words = "Queued: waiting for a worker to resume it";
  if (status === "succeeded" && job.kind === "eval") words = "Succeeded: evaluation finished";
  const node = $("job-status");
  node.textContent = words;
  node.dataset.status = status || "";

  const failure = $("failure-reason");
  const code = job.failure_code;
  if ((status === "failed" || status === "cancelled") && (code || job.failure_message)) {
    const sentence = FAILURE_SENTENCES[code] || (code ? `The job failed (${code}).` : "The job failed.");
    failure.replaceChildren(el("p", {}, sentence));
    failure.dataset.code = code || "";
    if (job.failure_message && code !== "CANCELLED") {
      failure.append(
        el("details", {}, el("summary", {}, "Details"), el("pre", { class: "log" }, job.failure_message)),
      );
    }
    failure.append(el("p", { class: "muted small" }, "Resume continues from the last checkpoint."));
    failure.hidden = false;
  } else {
    failure.hidden = true;
    failure.replaceChildren();
    delete failure.dataset.code;
  }
  renderProgress();
  $("cancel-job").hidden = !(status === "queued" || status === "running");
  $("cancel-job").disabled = Boolean(job.cancel_requested);
  $("resume-job").hidden = !(status === "failed" || status === "cancelled");
}

function renderProgress() {
  const bar = $("job-progress");
  const value = job.status === "succeeded" ? 1 : Math.min(1, Math.max(0, Number(job.progress) || 0));
  bar.value = value;
  let text = progressText(job);
  text += ` · ${Math.round(value * 100)} %`;
  if (job.status === "running" && typeof job.images_per_s === "number" && job.images_per_s > 0) {
    text += ` · ${job.images_per_s.toFixed(1)} images/s`;
  }
  $("job-progress-text").textContent = text;
}

function renderJob() {
  const title = job.name || `Job ${shortId(job.id)}`;
  $("job-title").textContent = title;
  document.title = `${title} · bmgkd`;
  renderMeta();
  renderStatus();
}

async function loadJob() {
  const r = await api(JOB_URL);
  if (r.ok && r.data) {
    job = r.data;
    renderJob();
    return true;
  }
  if (r.status === 404) {
    $("job-title").textContent = "Job not found";
    $("job-status").textContent = "This job does not exist, or it belongs to another user.";
    $("job-status").dataset.status = "missing";
    for (const section of document.querySelectorAll("main section.card")) {
      if (!section.contains($("job-status"))) section.hidden = true;
    }
    $("job-progress").hidden = true;
  } else {
    $("job-status").textContent = `Could not load the job: ${r.message}`;
  }
  return false;
}

// ---------------------------------------------------------------------------------- metrics

function isLoss(name) {
  return name === "loss" || name.startsWith("task.") || name.startsWith("distill.");
}

function addPoints(doc) {
  const series = doc && doc.series;
  if (series && typeof series === "object") {
    for (const [name, s] of Object.entries(series)) {
      if (!s || !Array.isArray(s.steps) || !Array.isArray(s.values)) continue;
      const target = store[name] || (store[name] = { steps: [], values: [] });
      target.steps.push(...s.steps);
      target.values.push(...s.values);
    }
  }
  if (doc && Number.isFinite(Number(doc.last_id))) {
    metricsLastId = Math.max(metricsLastId, Number(doc.last_id));
  }
  drawCharts();
}

function drawCharts() {
  if (!charts) return;
  for (const chart of charts) {
    try {
      chart.update(store);
    } catch (error) {
      console.warn("chart update failed", error);
    }
  }
}

async function loadMetrics() {
  const r = await api(`${JOB_URL}/metrics?after_id=${metricsLastId}`);
  if (r.ok && r.data) addPoints(r.data);
  else $("charts-note").textContent = `Curves not available: ${r.message}`;
}

// ------------------------------------------------------------------------------------- stream

function openStream() {
  if (stream || !job || TERMINAL.has(job.status)) return;
  stream = streamEvents(`${JOB_URL}/events`, {
    lastEventId: () => metricsLastId,
    onState(state) {
      const note = $("charts-note");
      if (state === "open") note.textContent = "Live.";
      else if (state === "reconnecting") note.textContent = "Live updates interrupted; reconnecting…";
      else if (state === "ended" || state === "unavailable") note.textContent = "";
    },
    onEvent({ type, data }) {
      if (!data || typeof data !== "object") return;
      if (type === "status" && data.id) {
        job = data;
        renderJob();
      } else if (type === "progress") {
        job = { ...job, ...data };
        renderStatus();
      } else if (type === "metrics") {
        addPoints(data);
      } else if (type === "end") {
        stream = null;
        onFinished();
      }
    },
  });
}

function closeStream() {
  if (stream) stream.close();
  stream = null;
}

async function onFinished() {
  await loadJob();
  await loadMetrics();
  loadComparison();
  loadArtifacts();
}

// ------------------------------------------------------------------------------ cancel/resume

async function onCancel() {
  const button = $("cancel-job");
  button.disabled = true;
  const r = await api(`${JOB_URL}/cancel`, { method: "POST" });
  if (r.ok && r.data) {
    job = r.data;
    renderJob();
    setMessage(
      job.status === "cancelled" ? "The job was cancelled." : "Cancel requested: the job stops within a step.",
    );
    if (TERMINAL.has(job.status)) onFinished();
  } else {
    button.disabled = false;
    setMessage(`Could not cancel: ${r.message}`);
    loadJob();
  }
}

async function onResume() {
  const button = $("resume-job");
  button.disabled = true;
  const r = await api(`${JOB_URL}/resume`, { method: "POST" });
  button.disabled = false;
  if (r.ok && r.data) {
    job = r.data;
    renderJob();
    setMessage("The job is queued again; it continues from its last checkpoint.");
    closeStream();
    openStream();
  } else {
    setMessage(`Could not resume: ${r.message}`);
    loadJob();
  }
}

// --------------------------------------------------------------------------------- comparison

function bboxOf(metrics) {
  if (!metrics || typeof metrics !== "object") return null;
  if (metrics.bbox && typeof metrics.bbox === "object") return metrics.bbox;
  return metrics;
}

function fallbackComparison() {
  const result = (job && job.result) || {};
  const student = dig(result, "metrics", "bbox") || null;
  const teacherMetrics = dig(result, "metrics", "teacher", "bbox") || null;
  const params = result.params || {};
  const sAP = dig(student, "AP");
  const tAP = dig(teacherMetrics, "AP");
  return {
    student: { job_id: job ? job.id : JOB_ID, metrics: student, params: params.student ?? null },
    teacher:
      job && job.teacher_id
        ? {
            arch: dig(job.config, "distill", "teacher_arch") || null,
            metrics: teacherMetrics,
            params: params.teacher ?? null,
          }
        : null,
    baseline: null,
    ap_retained: typeof sAP === "number" && typeof tAP === "number" && tAP > 0 ? sAP / tAP : null,
  };
}

function metricCells(metrics) {
  const bbox = bboxOf(metrics);
  return METRIC_COLUMNS.map((k) => {
    const v = bbox ? bbox[k] : null;
    return el("td", { class: "num", dataset: { metric: k } }, formatAP(v));
  });
}

function renderComparison(cmp, { fromEndpoint }) {
  const tbody = $("comparison").tBodies[0];
  tbody.replaceChildren();
  const rows = [];
  if (cmp.teacher) {
    const label = cmp.teacher.arch ? `Teacher (${cmp.teacher.arch})` : "Teacher";
    rows.push(["teacher", label, cmp.teacher]);
  }
  if (cmp.baseline) {
    const b = cmp.baseline;
    const link = el("a", { href: `/jobs/${encodeURIComponent(b.job_id)}` }, "Baseline");
    const status = b.status && b.status !== "succeeded" ? ` (${b.status})` : "";
    rows.push(["baseline", [link, status, " without teacher"], b]);
  }
  if (cmp.student) rows.push(["student", "Student (this job)", cmp.student]);
  for (const [key, label, entry] of rows) {
    tbody.append(
      el(
        "tr",
        { dataset: { row: key } },
        el("th", { scope: "row" }, label),
        metricCells(entry.metrics),
        el("td", { class: "num", dataset: { metric: "params" } }, formatCount(entry.params)),
      ),
    );
  }
  const retained = $("ap-retained");
  const ratio = Number(cmp.ap_retained);
  if (cmp.ap_retained !== null && cmp.ap_retained !== undefined && Number.isFinite(ratio)) {
    retained.textContent = `${(ratio * 100).toFixed(1)} % of the teacher's AP`;
    retained.dataset.value = String(ratio);
  } else {
    retained.textContent = cmp.teacher ? "AP retained: known when both models are evaluated." : "No teacher: trained without distillation.";
    delete retained.dataset.value;
  }
  renderPerClass(rows);
  const note = $("comparison-note");
  const baselineButton = $("start-baseline");
  if (!fromEndpoint) {
    note.textContent = "The comparison with a baseline is not available; showing this job's own results.";
    baselineButton.hidden = true;
  } else if (cmp.teacher && !cmp.baseline) {
    note.textContent = "No baseline yet: train the same student without the teacher to see what distillation adds.";
    baselineButton.hidden = false;
  } else {
    note.textContent = "";
    baselineButton.hidden = true;
  }
  if (!rows.length || rows.every(([, , e]) => !bboxOf(e.metrics))) {
    if (fromEndpoint && !note.textContent) note.textContent = "No evaluation results yet.";
  }
}

function renderPerClass(rows) {
  const table = $("per-class-ap");
  const withClasses = rows.filter(([, , e]) => {
    const pc = dig(bboxOf(e.metrics), "per_class");
    return pc && typeof pc === "object";
  });
  const headRow = el("tr", {}, el("th", { scope: "col" }, "Class"));
  const title = { teacher: "Teacher", baseline: "Baseline", student: "Student" };
  for (const [key] of withClasses) {
    headRow.append(el("th", { scope: "col", class: "num", dataset: { row: key } }, title[key] || key));
  }
  table.tHead.replaceChildren(headRow);
  const names = [];
  for (const [, , e] of withClasses) {
    for (const name of Object.keys(bboxOf(e.metrics).per_class)) if (!names.includes(name)) names.push(name);
  }
  const tbody = table.tBodies[0];
  tbody.replaceChildren();
  if (!names.length) {
    tbody.append(el("tr", {}, el("td", { class: "muted", colspan: String(withClasses.length + 1) }, "No per-class results yet.")));
    return;
  }
  for (const name of names) {
    tbody.append(
      el(
        "tr",
        { dataset: { class: name } },
        el("th", { scope: "row" }, name),
        withClasses.map(([key, , e]) =>
          el("td", { class: "num", dataset: { row: key } }, formatAP(bboxOf(e.metrics).per_class[name])),
        ),
      ),
    );
  }
}

async function loadComparison() {
  clearTimeout(comparisonTimer);
  const r = await api(`${JOB_URL}/comparison`);
  const ok = r.ok && r.data && typeof r.data === "object";
  const cmp = ok ? r.data : fallbackComparison();
  try {
    renderComparison(cmp, { fromEndpoint: ok });
  } catch (error) {
    console.warn("comparison rendering failed", error);
  }
  const baselineBusy = ok && cmp.baseline && !TERMINAL.has(cmp.baseline.status);
  const selfBusy = job && !TERMINAL.has(job.status);
  if (ok && (baselineBusy || selfBusy)) comparisonTimer = setTimeout(loadComparison, 10_000);
}

async function onStartBaseline() {
  const button = $("start-baseline");
  button.disabled = true;
  const r = await api(`${JOB_URL}/baseline`, { method: "POST" });
  button.disabled = false;
  if (r.ok && r.data && r.data.id) {
    button.hidden = true;
    const note = $("comparison-note");
    note.replaceChildren(
      "Baseline started: ",
      el("a", { href: `/jobs/${encodeURIComponent(r.data.id)}` }, r.data.name || shortId(r.data.id)),
      ".",
    );
    loadComparison();
  } else if (r.status === 404 || r.status === 405) {
    $("comparison-note").textContent = "Starting a baseline is not available on this server.";
  } else {
    $("comparison-note").textContent = `Could not start a baseline: ${r.message}`;
  }
}

// -------------------------------------------------------------------------------- predictions

const COLORS = { gt: "#1a9e3a", teacher: "#1f5fd6", student: "#f07c00" };
const PAGE = 24;
const pred = { offset: 0, total: 0, items: [], generation: 0 };

function threshold() {
  return Number($("score-threshold").value) || 0;
}

function drawItem(entry) {
  const { canvas, item, image } = entry;
  const ctx = canvas.getContext("2d");
  if (!ctx) return;
  const w = Number(item.width) || (image && image.width) || 1;
  const h = Number(item.height) || (image && image.height) || 1;
  const cssW = Math.min(480, w);
  const scale = cssW / w;
  const cssH = Math.round(h * scale);
  const dpr = window.devicePixelRatio || 1;
  canvas.width = Math.round(cssW * dpr);
  canvas.height = Math.round(cssH * dpr);
  canvas.style.aspectRatio = `${cssW} / ${cssH}`;
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, cssW, cssH);
  if (image) {
    ctx.drawImage(image, 0, 0, cssW, cssH);
  } else {
    ctx.fillStyle = "#e5e7eb";
    ctx.fillRect(0, 0, cssW, cssH);
    ctx.fillStyle = "#444";
    ctx.font = "13px system-ui, sans-serif";
    ctx.fillText(entry.failed ? "image not available" : "loading…", 8, 20);
  }
  const min = threshold();
  const counts = { gt: 0, teacher: 0, student: 0 };
  const drawBox = (kind, box, label, dashed) => {
    const [x1, y1, x2, y2] = box.map(Number);
    if (![x1, y1, x2, y2].every(Number.isFinite)) return;
    ctx.save();
    ctx.strokeStyle = COLORS[kind];
    ctx.lineWidth = 2;
    if (dashed) ctx.setLineDash([5, 3]);
    ctx.strokeRect(x1 * scale, y1 * scale, (x2 - x1) * scale, (y2 - y1) * scale);
    ctx.setLineDash([]);
    if (label) {
      ctx.font = "11px system-ui, sans-serif";
      const tw = ctx.measureText(label).width + 6;
      const ty = Math.max(0, y1 * scale - 14);
      ctx.fillStyle = COLORS[kind];
      ctx.fillRect(x1 * scale, ty, tw, 14);
      ctx.fillStyle = "#fff";
      ctx.fillText(label, x1 * scale + 3, ty + 11);
    }
    ctx.restore();
    counts[kind] += 1;
  };
  for (const b of Array.isArray(item.gt) ? item.gt : []) {
    if (Array.isArray(b) && b.length >= 4) drawBox("gt", b.slice(0, 4), "", false);
  }
  for (const kind of ["teacher", "student"]) {
    for (const b of Array.isArray(item[kind]) ? item[kind] : []) {
      if (!Array.isArray(b) || b.length < 5) continue;
      const score = Number(b[4]);
      if (!(score >= min)) continue;
      const name = b.length > 5 ? `${b[5]} ` : "";
      drawBox(kind, b.slice(0, 4), `${name}${score.toFixed(2)}`, kind === "teacher");
    }
  }
  canvas.dataset.gt = String(counts.gt);
  canvas.dataset.teacher = String(counts.teacher);
  canvas.dataset.student = String(counts.student);
  canvas.setAttribute(
    "aria-label",
    `${item.file_name}: ${counts.gt} ground-truth boxes, ${counts.teacher} teacher and ${counts.student} student boxes with score ≥ ${min.toFixed(2)}`,
  );
}

function redrawAll() {
  for (const entry of pred.items) {
    try {
      drawItem(entry);
    } catch (error) {
      console.warn("drawing a prediction failed", error);
    }
  }
}

function limiter(n) {
  let active = 0;
  const queue = [];
  const next = () => {
    if (active >= n || !queue.length) return;
    active += 1;
    const { fn, resolve } = queue.shift();
    fn().then(resolve, () => resolve(null)).finally(() => {
      active -= 1;
      next();
    });
  };
  return (fn) => new Promise((resolve) => {
    queue.push({ fn, resolve });
    next();
  });
}
const imageSlot = limiter(6);

function addItem(item) {
  const canvas = el("canvas", { role: "img", width: "320", height: "240" });
  const misses = Number(item.misses) || 0;
  const figure = el(
    "figure",
    { class: "pred-image", dataset: { imageId: String(item.image_id ?? ""), misses: String(misses), fileName: item.file_name || "" } },
    canvas,
    el(
      "figcaption",
      {},
      el("span", { class: "file-name" }, item.file_name || String(item.image_id ?? "")),
      misses ? el("span", { class: "badge warn" }, `${misses} missed`) : null,
    ),
  );
  $("pred-grid").append(figure);
  const entry = { item, canvas, image: null, failed: false };
  pred.items.push(entry);
  drawItem(entry);
  const gen = pred.generation;
  if (item.url) {
    imageSlot(() => fetchImage(item.url)).then((image) => {
      if (gen !== pred.generation) return;
      entry.image = image;
      entry.failed = !image;
      drawItem(entry);
    });
  } else {
    entry.failed = true;
    drawItem(entry);
  }
}

async function loadPredictions(reset) {
  const note = $("pred-note");
  const more = $("pred-more");
  if (reset) {
    pred.generation += 1;
    pred.offset = 0;
    pred.items = [];
    $("pred-grid").replaceChildren();
  }
  const gen = pred.generation;
  more.disabled = true;
  const sort = $("pred-sort").value;
  const r = await api(`${JOB_URL}/predictions?limit=${PAGE}&offset=${pred.offset}&sort=${encodeURIComponent(sort)}&min_score=0.05`);
  if (gen !== pred.generation) return;
  more.disabled = false;
  if (!r.ok || !r.data || !Array.isArray(r.data.items)) {
    note.textContent = r.status === 404 ? "Predictions are not available for this job." : `Predictions not available: ${r.message}`;
    more.hidden = true;
    return;
  }
  pred.total = Number(r.data.total) || 0;
  for (const item of r.data.items) if (item && typeof item === "object") addItem(item);
  pred.offset += r.data.items.length;
  note.textContent = pred.total
    ? `Showing ${pred.items.length} of ${pred.total} validation images.`
    : "No validation images with predictions.";
  more.hidden = pred.offset >= pred.total || !r.data.items.length;
}

// ---------------------------------------------------------------------------------- artifacts

async function loadArtifacts() {
  const r = await api(`${JOB_URL}/artifacts`);
  const names = new Set(r.ok && Array.isArray(r.data) ? r.data.map((a) => a.name) : []);
  for (const id of ["download-model", "download-metrics", "download-config"]) {
    const button = $(id);
    button.disabled = !names.has(button.dataset.artifact);
  }
  $("download-message").textContent = names.size ? "" : "Files appear here when the job has produced them.";
  const hasPredictions = names.has("predictions_val.json") || (job && job.status === "succeeded");
  if (hasPredictions && !predictionsLoaded) {
    predictionsLoaded = true;
    loadPredictions(true);
  } else if (!hasPredictions && !predictionsLoaded) {
    $("pred-note").textContent = "Predictions appear when the job has been evaluated.";
  }
}

async function onDownload(event) {
  const button = event.currentTarget;
  const name = button.dataset.artifact;
  button.disabled = true;
  $("download-message").textContent = `Downloading ${name}…`;
  const r = await download(`${JOB_URL}/artifacts/${encodeURIComponent(name)}`, `${JOB_ID}-${name}`);
  button.disabled = false;
  $("download-message").textContent = r.ok ? `Saved ${r.filename}.` : `Could not download ${name}: ${r.message}`;
}

// --------------------------------------------------------------------------------------- main

function wire() {
  $("cancel-job").addEventListener("click", onCancel);
  $("resume-job").addEventListener("click", onResume);
  $("start-baseline").addEventListener("click", onStartBaseline);
  for (const id of ["download-model", "download-metrics", "download-config"]) {
    $(id).addEventListener("click", onDownload);
  }
  const slider = $("score-threshold");
  const output = $("score-value");
  const onSlide = () => {
    output.textContent = threshold().toFixed(2);
    redrawAll();
  };
  slider.addEventListener("input", onSlide);
  slider.addEventListener("change", onSlide);
  output.textContent = threshold().toFixed(2);
  $("pred-sort").addEventListener("change", () => loadPredictions(true));
  $("pred-more").addEventListener("click", () => loadPredictions(false));
  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => charts && charts.forEach((c) => c.resize()), 150);
  });
  window.addEventListener("pagehide", closeStream);
}

async function main() {
  if (!requireSignIn()) return;
  charts = [
    new Chart($("chart-losses"), { select: isLoss }),
    new Chart($("chart-lr"), { select: (n) => n === "lr" }),
    new Chart($("chart-ap"), {
      select: (n) => n === "val.AP" || n === "val.AP50",
      showPoints: true,
      emptyText: "No evaluation yet.",
    }),
  ];
  wire();
  if (!JOB_ID || !(await loadJob())) return;
  await loadMetrics();
  openStream();
  loadComparison();
  loadArtifacts();
}

main();
