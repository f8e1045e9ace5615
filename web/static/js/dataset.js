// /datasets/{id}: counts per split and a per-class histogram of boxes.
import { API, api, el, formatBytes, requireSignIn } from "./api.js";

const $ = (id) => document.getElementById(id);
const DATASET_ID = $("main").dataset.datasetId || "";
let dataset = null;

function showError(text) {
  $("dataset-error").textContent = text;
  $("dataset-error").hidden = !text;
}

function renderCounts(splits) {
  const tbody = $("dataset-counts").tBodies[0];
  tbody.replaceChildren();
  let images = 0;
  let boxes = 0;
  for (const [name, c] of Object.entries(splits)) {
    const counts = c && typeof c === "object" ? c : {};
    images += Number(counts.images) || 0;
    boxes += Number(counts.boxes) || 0;
    tbody.append(
      el(
        "tr",
        { dataset: { split: name } },
        el("th", { scope: "row" }, name),
        el("td", { class: "num images" }, String(counts.images ?? "—")),
        el("td", { class: "num boxes" }, String(counts.boxes ?? "—")),
        el("td", { class: "num crowd" }, String(counts.crowd ?? 0)),
      ),
    );
  }
  if (!Object.keys(splits).length) {
    tbody.append(
      el(
        "tr",
        { dataset: { split: "all" } },
        el("th", { scope: "row" }, "all"),
        el("td", { class: "num images" }, String(dataset.num_images ?? "—")),
        el("td", { class: "num boxes" }, String(dataset.num_boxes ?? "—")),
        el("td", { class: "num crowd" }, "—"),
      ),
    );
  } else if (Object.keys(splits).length > 1) {
    tbody.append(
      el(
        "tr",
        { class: "total", dataset: { split: "total" } },
        el("th", { scope: "row" }, "total"),
        el("td", { class: "num images" }, String(images)),
        el("td", { class: "num boxes" }, String(boxes)),
        el("td", { class: "num crowd" }, ""),
      ),
    );
  }
}

function renderHistogram(split) {
  const all = (dataset.stats && dataset.stats.class_counts) || {};
  const counts = all[split] && typeof all[split] === "object" ? all[split] : {};
  const names = Object.keys(counts).length ? Object.keys(counts) : dataset.class_names || [];
  const max = Math.max(1, ...names.map((n) => Number(counts[n]) || 0));
  const hist = $("class-histogram");
  hist.replaceChildren();
  if (!names.length) {
    hist.append(el("p", { class: "muted" }, "No classes."));
    return;
  }
  for (const name of names) {
    const count = Number(counts[name]) || 0;
    const bar = el("span", { class: "bar-fill" });
    bar.style.width = `${(100 * count) / max}%`;
    hist.append(
      el(
        "div",
        { class: "bar", role: "listitem", dataset: { class: name, count: String(count) }, title: `${name}: ${count}` },
        el("span", { class: "bar-label" }, name),
        el("span", { class: "bar-track" }, bar),
        el("span", { class: "bar-count num" }, String(count)),
      ),
    );
  }
}

function renderIssues() {
  const issues = Array.isArray(dataset.stats && dataset.stats.issues) ? dataset.stats.issues : [];
  const list = $("dataset-issues");
  list.replaceChildren();
  if (!issues.length) {
    list.append(el("li", { class: "muted" }, "None."));
    return;
  }
  for (const i of issues) {
    const where = i.record ? `${i.file}:${i.record}` : i.file || "";
    list.append(el("li", { class: i.severity === "error" ? "issue" : "warning" }, `${where}: ${i.message}`));
  }
}

async function main() {
  if (!requireSignIn()) return;
  const r = await api(`${API}/datasets/${encodeURIComponent(DATASET_ID)}`);
  if (!r.ok || !r.data) {
    $("dataset-name").textContent = r.status === 404 ? "Dataset not found" : "Dataset";
    showError(r.status === 404 ? "This dataset does not exist, or it belongs to another user." : `Could not load the dataset: ${r.message}`);
    return;
  }
  dataset = r.data;
  $("dataset-name").textContent = dataset.name || DATASET_ID;
  document.title = `${dataset.name || "Dataset"} · bmgkd`;
  $("dataset-meta").textContent = [
    dataset.format ? dataset.format.toUpperCase() : null,
    `${dataset.num_images} images`,
    `${dataset.num_boxes} boxes`,
    `${(dataset.class_names || []).length} ${(dataset.class_names || []).length === 1 ? "class" : "classes"}`,
    formatBytes(dataset.size_bytes),
  ]
    .filter(Boolean)
    .join(" · ");
  $("dataset-new-job").href = `/jobs/new?dataset=${encodeURIComponent(dataset.id)}`;
  const stats = dataset.stats || {};
  const splits = stats.splits && typeof stats.splits === "object" ? stats.splits : {};
  renderCounts(splits);
  const select = $("hist-split");
  const splitNames = Object.keys(stats.class_counts || {});
  for (const s of splitNames) select.append(el("option", { value: s }, s));
  if (!splitNames.length) select.append(el("option", { value: "" }, "all"));
  select.value = splitNames.includes("train") ? "train" : splitNames[0] || "";
  select.addEventListener("change", () => renderHistogram(select.value));
  renderHistogram(select.value);
  renderIssues();
}

main();
