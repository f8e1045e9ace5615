// /jobs/new: dataset upload/pick (validator issues inline), teacher upload/pick, student and
// training settings, preflight report, submit.
import {
  API,
  api,
  dig,
  el,
  formatAP,
  formatBytes,
  formatDuration,
  humanKey,
  renderValue,
  requireSignIn,
} from "./api.js";

const $ = (id) => document.getElementById(id);
const form = $("job-form");
const datasetSelect = $("dataset-select");
const datasetLink = $("dataset-link");
const datasetFile = $("dataset-file");
const datasetReport = $("dataset-report");
const uploadDataset = $("upload-dataset");
const teacherSelect = $("teacher-select");
const teacherFile = $("teacher-file");
const teacherArch = $("teacher-arch");
const teacherClasses = $("teacher-classes");
const teacherReport = $("teacher-report");
const uploadTeacher = $("upload-teacher");
const preset = $("preset");
const preflightButton = $("preflight");
const preflightReport = $("preflight-report");
const submitButton = $("submit-job");
const submitError = $("submit-error");

const datasets = new Map();
const teachers = new Map();

function plural(n, one, many = `${one}s`) {
  return `${n} ${Number(n) === 1 ? one : many}`;
}

function busy(button, on, label) {
  if (on) {
    button.dataset.label = button.textContent;
    button.textContent = label;
    button.disabled = true;
    button.setAttribute("aria-busy", "true");
  } else {
    button.textContent = button.dataset.label || button.textContent;
    button.disabled = false;
    button.removeAttribute("aria-busy");
  }
}

function message(target, text, kind = "error") {
  target.replaceChildren(el("p", { class: kind, role: kind === "error" ? "alert" : null }, text));
}

// ------------------------------------------------------------------------------------ datasets

async function loadDatasets(selectId) {
  const r = await api(`${API}/datasets`);
  const keep = selectId || datasetSelect.value;
  datasetSelect.replaceChildren();
  if (!r.ok || !Array.isArray(r.data)) {
    datasetSelect.append(el("option", { value: "" }, "could not load the datasets"));
    message(datasetReport, `Could not load your datasets: ${r.message}`);
    return;
  }
  datasets.clear();
  datasetSelect.append(
    el("option", { value: "" }, r.data.length ? "choose a dataset…" : "no datasets yet: upload one"),
  );
  for (const d of r.data) {
    datasets.set(d.id, d);
    const label = `${d.name} (${plural(d.num_images, "image")}, ${plural((d.class_names || []).length, "class", "classes")})`;
    datasetSelect.append(el("option", { value: d.id }, label));
  }
  if (keep && datasets.has(keep)) datasetSelect.value = keep;
  else if (r.data.length === 1) datasetSelect.value = r.data[0].id;
  onDatasetChange();
}

function onDatasetChange() {
  const id = datasetSelect.value;
  if (id) {
    datasetLink.href = `/datasets/${encodeURIComponent(id)}`;
    datasetLink.hidden = false;
  } else {
    datasetLink.hidden = true;
    datasetLink.removeAttribute("href");
  }
}

function issueText(issue) {
  if (!issue || typeof issue !== "object") return String(issue);
  const where = issue.record ? `${issue.file}:${issue.record}` : issue.file || "";
  return where ? `${where}: ${issue.message}` : String(issue.message ?? "");
}

function renderDatasetIssues(detail, status) {
  const d = detail && typeof detail === "object" ? detail : { message: String(detail || "") };
  const issues = Array.isArray(d.issues) ? d.issues : [];
  const errors = issues.filter((i) => i.severity !== "warning");
  const warnings = issues.filter((i) => i.severity === "warning");
  const heading =
    status === 422
      ? d.num_errors
        ? `The dataset was not accepted: ${d.num_errors} problem${d.num_errors === 1 ? "" : "s"}.`
        : "The dataset was not accepted."
      : `The upload failed (${status || "no answer"}).`;
  const list = el("ul", { class: "issues" });
  if (errors.length) {
    for (const issue of errors) {
      list.append(el("li", { class: "issue", dataset: { code: issue.code || "" } }, issueText(issue)));
    }
  } else {
    const where = d.member ? `${d.member}: ` : "";
    list.append(el("li", { class: "issue" }, `${where}${d.message || "unknown problem"}`));
  }
  const parts = [el("p", { class: "error", role: "alert" }, heading), list];
  if (d.truncated) parts.push(el("p", { class: "muted" }, "Only the first problems are listed."));
  if (warnings.length) {
    parts.push(
      el("p", { class: "muted" }, "Warnings:"),
      el("ul", { class: "warnings" }, warnings.map((w) => el("li", { class: "warning" }, issueText(w)))),
    );
  }
  datasetReport.replaceChildren(...parts);
}

function renderDatasetSummary(d, created) {
  const stats = d.stats || {};
  const splits = stats.splits && typeof stats.splits === "object" ? stats.splits : {};
  const splitText = Object.entries(splits)
    .map(([name, c]) => `${name}: ${c.images ?? "?"} images, ${c.boxes ?? "?"} boxes`)
    .join("; ");
  const warnings = (Array.isArray(stats.issues) ? stats.issues : []).filter(
    (i) => i.severity === "warning",
  );
  const parts = [
    el(
      "p",
      { class: "ok", role: "status" },
      created ? "Dataset uploaded and valid. " : "You already have this dataset; it is selected. ",
    ),
    el(
      "dl",
      { class: "kv" },
      el("dt", {}, "name"),
      el("dd", {}, d.name),
      el("dt", {}, "format"),
      el("dd", {}, d.format || "—"),
      el("dt", {}, "images / boxes"),
      el("dd", {}, `${d.num_images} / ${d.num_boxes}`),
      el("dt", {}, "splits"),
      el("dd", {}, splitText || "—"),
      el("dt", {}, "classes"),
      el("dd", {}, (d.class_names || []).join(", ") || "—"),
      el("dt", {}, "size"),
      el("dd", {}, formatBytes(d.size_bytes)),
    ),
    el("p", {}, el("a", { href: `/datasets/${encodeURIComponent(d.id)}` }, "Open the dataset page")),
  ];
  if (warnings.length) {
    parts.push(
      el("p", { class: "muted" }, `${stats.num_warnings ?? warnings.length} warning(s):`),
      el("ul", { class: "warnings" }, warnings.map((w) => el("li", { class: "warning" }, issueText(w)))),
    );
  }
  datasetReport.replaceChildren(...parts);
}

async function onUploadDataset() {
  const file = datasetFile.files && datasetFile.files[0];
  if (!file) {
    message(datasetReport, "Choose a .zip or .tar.gz file first.");
    datasetFile.focus();
    return;
  }
  busy(uploadDataset, true, "Uploading…");
  message(datasetReport, `Uploading and validating ${file.name}…`, "muted");
  const body = new FormData();
  body.append("file", file, file.name);
  const r = await api(`${API}/datasets`, { method: "POST", body });
  busy(uploadDataset, false);
  if (r.ok && r.data && r.data.id) {
    renderDatasetSummary(r.data, r.status === 201);
    await loadDatasets(r.data.id);
    datasetFile.value = "";
    return;
  }
  renderDatasetIssues(r.data && r.data.detail, r.status);
}

// ------------------------------------------------------------------------------------ teachers

async function loadTeachers(selectId) {
  const r = await api(`${API}/teachers`);
  const keep = selectId || teacherSelect.value;
  teacherSelect.replaceChildren(el("option", { value: "" }, "no teacher (train only)"));
  if (!r.ok || !Array.isArray(r.data)) {
    message(teacherReport, `Could not load your teachers: ${r.message}`);
    onTeacherChange();
    return;
  }
  teachers.clear();
  for (const t of r.data) {
    teachers.set(t.id, t);
    const label = `${t.name} (${t.arch}, ${plural((t.class_names || []).length, "class", "classes")})`;
    teacherSelect.append(el("option", { value: t.id }, label));
  }
  if (keep && teachers.has(keep)) teacherSelect.value = keep;
  onTeacherChange();
}

function onTeacherChange() {
  const has = Boolean(teacherSelect.value);
  preset.disabled = !has;
  preflightButton.title = has ? "" : "Preflight checks a distillation run: choose a teacher first";
}

function renderTeacherSummary(t) {
  const report = t.load_report || {};
  const rest = Object.fromEntries(
    Object.entries(report).filter(([k]) => !["text", "path"].includes(k)),
  );
  const parts = [
    el("p", { class: "ok", role: "status" }, "Teacher uploaded; every key and shape matched."),
    el(
      "dl",
      { class: "kv" },
      el("dt", {}, "name"),
      el("dd", {}, t.name),
      el("dt", {}, "architecture"),
      el("dd", {}, t.arch),
      el("dt", {}, "classes"),
      el("dd", {}, (t.class_names || []).join(", ") || "—"),
      el("dt", {}, "size"),
      el("dd", {}, formatBytes(t.size_bytes)),
    ),
  ];
  if (typeof report.text === "string" && report.text) parts.push(el("pre", { class: "log" }, report.text));
  if (Object.keys(rest).length) {
    parts.push(el("details", {}, el("summary", {}, "Load report"), renderValue(rest)));
  }
  teacherReport.replaceChildren(...parts);
}

async function onUploadTeacher() {
  const file = teacherFile.files && teacherFile.files[0];
  if (!file) {
    message(teacherReport, "Choose a checkpoint file first.");
    teacherFile.focus();
    return;
  }
  busy(uploadTeacher, true, "Checking…");
  message(teacherReport, `Uploading ${file.name} and loading it strictly (this can take a while)…`, "muted");
  const body = new FormData();
  body.append("file", file, file.name);
  if (teacherArch.value) body.append("arch", teacherArch.value);
  if (teacherClasses.value.trim()) body.append("class_names", teacherClasses.value.trim());
  const r = await api(`${API}/teachers`, { method: "POST", body });
  busy(uploadTeacher, false);
  if (r.ok && r.data && r.data.id) {
    renderTeacherSummary(r.data);
    teacherFile.value = "";
    await loadTeachers(r.data.id);
    return;
  }
  const detail = r.data && r.data.detail;
  const field = detail && typeof detail === "object" && detail.field ? `${detail.field}: ` : "";
  message(teacherReport, `The teacher was not accepted. ${field}${r.message}`);
}

// ------------------------------------------------------------------------------ config & submit

function intValue(id) {
  const raw = $(id).value.trim();
  if (raw === "") return undefined;
  const n = Number(raw);
  return Number.isFinite(n) ? Math.trunc(n) : raw;
}

function numValue(id) {
  const raw = $(id).value.trim();
  if (raw === "") return undefined;
  const n = Number(raw);
  return Number.isFinite(n) ? n : raw;
}

function buildRequest() {
  const teacherId = teacherSelect.value || null;
  const train = {
    epochs: intValue("epochs"),
    max_steps: intValue("max-steps"),
    batch_size: intValue("batch-size"),
    device: $("device").value,
  };
  const config = {
    model: { arch: $("student-arch").value },
    data: { image_size: intValue("image-size") },
    train: Object.fromEntries(Object.entries(train).filter(([, v]) => v !== undefined)),
    optim: { optimizer: $("optimizer").value, lr: numValue("lr") },
  };
  if (config.data.image_size === undefined) delete config.data.image_size;
  if (config.optim.lr === undefined) delete config.optim.lr;
  if (teacherId) config.distill = { preset: preset.value };
  const name = $("job-name").value.trim();
  return {
    kind: teacherId ? "distill" : "train",
    dataset_id: datasetSelect.value,
    teacher_id: teacherId,
    name: name || null,
    config,
  };
}

function showSubmitError(text, errors) {
  submitError.replaceChildren(text);
  if (Array.isArray(errors) && errors.length > 1) {
    submitError.append(
      el("ul", {}, errors.map((e) => el("li", {}, e && e.message ? e.message : String(e)))),
    );
  }
  submitError.hidden = !text;
}

async function onSubmit(event) {
  event.preventDefault();
  showSubmitError("");
  const body = buildRequest();
  if (!body.dataset_id) {
    showSubmitError("Choose or upload a dataset first.");
    datasetSelect.focus();
    return;
  }
  busy(submitButton, true, "Submitting…");
  const r = await api(`${API}/jobs`, { method: "POST", json: body });
  if (r.ok && r.data && r.data.id) {
    location.assign(`/jobs/${encodeURIComponent(r.data.id)}`);
    return;
  }
  busy(submitButton, false);
  const detail = r.data && r.data.detail;
  showSubmitError(`The job was not accepted: ${r.message}`, detail && detail.errors);
}

// ------------------------------------------------------------------------------------ preflight

function renderPreflight(report) {
  if (!report || typeof report !== "object" || Array.isArray(report)) {
    preflightReport.replaceChildren(el("h3", {}, "Preflight report"), renderValue(report));
    return;
  }
  const known = new Set();
  const rows = [];
  const add = (label, value, ...keys) => {
    keys.forEach((k) => known.add(k));
    if (keys.some((k) => k in report)) rows.push(el("dt", {}, label), el("dd", {}, value));
  };
  const classes = report.classes || {};
  const names = Array.isArray(classes.names) ? classes.names : [];
  add(
    "class check",
    el(
      "span",
      { class: classes.match === false ? "bad" : "ok" },
      `${classes.match === false ? "MISMATCH" : "match"}: ${plural(classes.num_classes ?? names.length, "class", "classes")}` +
        (names.length ? ` (${names.slice(0, 20).join(", ")}${names.length > 20 ? ", …" : ""})` : ""),
    ),
    "classes",
  );
  add("device", String(report.device ?? "—"), "device");
  const tAP = dig(report, "teacher_metrics", "bbox", "AP");
  add(
    "teacher AP on val",
    `${formatAP(tAP)}${typeof report.teacher_eval_s === "number" ? ` (evaluated in ${report.teacher_eval_s.toFixed(1)} s)` : ""}`,
    "teacher_metrics",
    "teacher_eval_s",
  );
  add(
    "distillation terms",
    Array.isArray(report.terms) && report.terms.length ? report.terms.join(", ") : "none (baseline)",
    "terms",
  );
  add(
    "adapters",
    Array.isArray(report.adapters) && report.adapters.length
      ? report.adapters.map((a) => `${a.name ?? a.level}: ${a.adapter}`).join("; ")
      : "none needed (widths match)",
    "adapters",
  );
  const losses = report.first_step_losses;
  add(
    "first step losses",
    losses && typeof losses === "object"
      ? Object.entries(losses)
          .map(([k, v]) => `${k} = ${typeof v === "number" ? v.toPrecision(4) : v}`)
          .join(", ")
      : "—",
    "first_step_losses",
  );
  add(
    "step time",
    typeof report.step_time_s === "number" ? `${report.step_time_s.toFixed(3)} s` : "—",
    "step_time_s",
  );
  add(
    "peak memory",
    typeof report.peak_memory_mb === "number"
      ? `${report.peak_memory_mb.toFixed(0)} MB${report.memory_kind ? ` (${humanKey(report.memory_kind)})` : ""}`
      : "—",
    "peak_memory_mb",
    "memory_kind",
  );
  add(
    "schedule",
    `${report.total_steps ?? "?"} steps + ${report.evaluations ?? "?"} evaluation(s)`,
    "total_steps",
    "evaluations",
  );
  add("ETA", typeof report.eta_s === "number" ? formatDuration(report.eta_s) : "—", "eta_s");
  const parts = [el("h3", {}, "Preflight report"), el("dl", { class: "kv" }, rows)];
  if (Array.isArray(report.levels) && report.levels.length) {
    known.add("levels");
    parts.push(el("h4", {}, "Feature shapes per distilled level"), renderValue(report.levels));
  }
  const teacherText = dig(report, "teacher", "text");
  if (typeof teacherText === "string" && teacherText) {
    known.add("teacher");
    parts.push(el("h4", {}, "Teacher load"), el("pre", { class: "log" }, teacherText));
  }
  const rest = Object.fromEntries(Object.entries(report).filter(([k]) => !known.has(k)));
  if (Object.keys(rest).length) parts.push(el("h4", {}, "Other"), renderValue(rest));
  parts.push(el("details", {}, el("summary", {}, "Everything (raw)"), renderValue(report)));
  preflightReport.replaceChildren(...parts);
}

async function onPreflight() {
  const body = buildRequest();
  if (!body.dataset_id) {
    message(preflightReport, "Choose or upload a dataset first.");
    return;
  }
  if (!body.teacher_id) {
    message(preflightReport, "Preflight checks a distillation run: choose a teacher first.");
    return;
  }
  busy(preflightButton, true, "Checking…");
  message(
    preflightReport,
    "Running preflight: building the run, evaluating the teacher and timing a few steps (this can take a minute)…",
    "muted",
  );
  const r = await api(`${API}/preflight`, {
    method: "POST",
    json: { dataset_id: body.dataset_id, teacher_id: body.teacher_id, config: body.config },
  });
  busy(preflightButton, false);
  if (r.ok) {
    renderPreflight(r.data);
    return;
  }
  if (r.status === 404 || r.status === 405) {
    message(preflightReport, "Preflight is not available on this server.", "muted");
    return;
  }
  message(preflightReport, `Preflight found a problem: ${r.message}`);
}

// ---------------------------------------------------------------------------------------- main

function main() {
  if (!requireSignIn()) return;
  datasetSelect.addEventListener("change", onDatasetChange);
  teacherSelect.addEventListener("change", onTeacherChange);
  uploadDataset.addEventListener("click", onUploadDataset);
  uploadTeacher.addEventListener("click", onUploadTeacher);
  preflightButton.addEventListener("click", onPreflight);
  form.addEventListener("submit", onSubmit);
  const pre = new URLSearchParams(location.search);
  loadDatasets(pre.get("dataset") || "");
  loadTeachers(pre.get("teacher") || "");
}

main();
