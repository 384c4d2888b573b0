// skincls serve: the page. Plain JS, no framework; talks to /api/model and /api/predict only.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
let model = null;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

const pct = (p) => `${(100 * p).toFixed(1)}%`;
const num = (x, d = 3) => (typeof x === "number" ? x.toFixed(d) : "—");
const mib = (b) => `${(b / 2 ** 20).toFixed(0)} MiB`;

// ---- model panel ---------------------------------------------------------------------------

function rule(m) {
  if (m.threshold === null) return "most probable class (argmax)";
  return `${m.positive_class} if P(${m.positive_class}) ≥ ${num(m.threshold)}`;
}

function band(m, threshold) {
  if (!m.uncertain_band) return "off";
  if (m.classes.length !== 2) return `top two classes within ${m.uncertain_band}`;
  const t = threshold === null ? 0.5 : threshold;
  const lo = Math.max(0, t - m.uncertain_band), hi = Math.min(1, t + m.uncertain_band);
  return `P(${m.positive_class}) between ${num(lo, 2)} and ${num(hi, 2)}`;
}

function dataLine(d) {
  const parts = [];
  if (d.data_dir) parts.push(String(d.data_dir));
  if (d.source) parts.push(`source: ${d.source}`);
  if (d.counts) {
    const n = Object.entries(d.counts).map(
      ([split, c]) => `${split} ${Object.values(c).reduce((a, b) => a + b, 0)}`);
    parts.push(n.join(" · "));
  }
  return parts.join(" — ") || "not recorded";
}

function trainingLine(t) {
  const keys = [["epochs", "epochs"], ["best_epoch", "best epoch"], ["batch_size", "batch"],
    ["lr", "lr"], ["optimizer", "optimizer"], ["schedule", "schedule"]];
  const parts = keys.filter(([k]) => t[k] !== undefined && t[k] !== null && t[k] !== "none")
    .map(([k, label]) => `${label} ${t[k]}`);
  return parts.join(" · ") || "not recorded";
}

const METRICS = [["n_images", "n"], ["accuracy", "accuracy"], ["sensitivity", "sensitivity"],
  ["specificity", "specificity"], ["roc_auc", "ROC-AUC"], ["ece", "ECE"]];

function metricsTable(metrics) {
  const splits = ["train", "val", "test"].filter((s) => metrics[s])
    .concat(Object.keys(metrics).filter((s) => !["train", "val", "test"].includes(s)));
  if (!splits.length) return el("p", { class: "muted" }, "No metrics stored in the checkpoint.");
  const cols = METRICS.filter(([k]) => splits.some((s) => metrics[s][k] !== undefined && metrics[s][k] !== null));
  const head = el("tr", {}, el("th", {}, "split"), ...cols.map(([, label]) => el("th", {}, label)));
  const rows = splits.map((s) => el("tr", {}, el("th", {}, s), ...cols.map(([k]) => {
    const v = metrics[s][k];
    return el("td", {}, v === undefined || v === null ? "—" : k === "n_images" ? String(v) : num(v));
  })));
  return el("table", { class: "metrics" }, el("thead", {}, head), el("tbody", {}, ...rows));
}

function renderModel(m) {
  const panel = $("#model");
  panel.replaceChildren();
  const dl = el("dl");
  const add = (term, value) => dl.append(el("dt", {}, term), el("dd", {}, value));
  add("checkpoint", m.checkpoint);
  add("classes", m.classes.join(", "));
  add("decision", `${rule(m)}; threshold: ${m.threshold_source}`);
  add("uncertain", band(m, m.threshold));
  add("calibration", m.temperature === 1 ? "none (temperature 1)"
    : `temperature ${num(m.temperature)}${m.calibration ? ` fitted on ${m.calibration.split}` : ""}`);
  add("data", dataLine(m.data));
  add("training", trainingLine(m.training));
  add("input", `${m.preprocessing.crop_size}×${m.preprocessing.crop_size} px, ${m.precision}` +
    (m.tta ? ", TTA (8 flips and turns)" : ""));
  panel.append(el("h2", {}, m.name), dl, metricsTable(m.metrics));
  $("#limits").textContent = `Up to ${m.limits.max_files} images and ${mib(m.limits.max_upload_bytes)} ` +
    "per upload. Images are processed in memory and never stored.";
}

// ---- metadata form ------------------------------------------------------------------------

function renderMetadata(m) {
  // A model trained with metadata: one optional text field per column, sent with each image.
  const columns = m.metadata_columns || [];
  const section = $("#metadata");
  section.hidden = columns.length === 0;
  $(".fields", section).replaceChildren(...columns.map((c) => el("label", { class: "field" },
    el("span", {}, c),
    el("input", { type: "text", name: c, id: `meta-${c}`, placeholder: "unknown", autocomplete: "off" }))));
}

function metadataValues() {
  const out = [];
  for (const input of document.querySelectorAll("#metadata input")) {
    const v = input.value.trim();
    if (v) out.push([input.name, v]);
  }
  return out;
}

// ---- results -------------------------------------------------------------------------------

function newCard(name) {
  // Not yet on the page: `handleFiles` adds a batch's cards together, in the order given.
  const card = $("#card-template").content.firstElementChild.cloneNode(true);
  $(".file", card).textContent = name;
  $(".file", card).title = name;
  card.classList.add("pending");
  const slider = $("input[type=range]", card);
  slider.addEventListener("input", () => {
    $(".heat", card).style.opacity = slider.value / 100;
    $("output", card).textContent = `${slider.value}%`;
  });
  return card;
}

function showError(card, message) {
  card.classList.remove("pending");
  card.classList.add("failed");
  $(".badge", card).textContent = "error";
  $(".status", card).textContent = message;
  $(".opacity", card).hidden = true;
}

function showResult(card, r) {
  card.classList.remove("pending");
  card.classList.add("done");
  card.dataset.decision = r.decision;
  const badge = $(".badge", card);
  badge.textContent = r.decision;
  const tone = r.positive_class === null ? "neutral" : r.label === r.positive_class ? "positive" : "negative";
  badge.className = "badge " + (r.uncertain ? "uncertain" : tone);
  $(".status", card).remove();
  $(".photo", card).src = r.image;
  const heat = $(".heat", card);
  if (r.heatmap) {
    $(".opacity .what", card).textContent = `(${r.cam_class})`;
    heat.src = r.heatmap;
    heat.style.opacity = $("input[type=range]", card).value / 100;
  } else {
    heat.remove();
    $(".opacity", card).replaceWith(el("p", { class: "muted" }, r.cam_error || "No Grad-CAM."));
  }
  const probs = $(".probs", card);
  const t = r.threshold === null && model.classes.length === 2 ? 0.5 : r.threshold;
  for (const [cls, p] of Object.entries(r.probabilities)) {
    const bar = el("div", { class: "bar" }, el("div", { class: "fill" }));
    $(".fill", bar).style.width = pct(p);
    if (cls === r.positive_class && t !== null) {
      const mark = el("div", { class: "mark", title: `threshold ${num(t)}` });
      mark.style.left = pct(t);
      bar.append(mark);
      if (model.uncertain_band) {
        const zone = el("div", { class: "zone", title: "uncertain band" });
        const lo = Math.max(0, t - model.uncertain_band), hi = Math.min(1, t + model.uncertain_band);
        zone.style.left = pct(lo);
        zone.style.width = pct(hi - lo);
        bar.prepend(zone);
      }
    }
    const role = r.positive_class === null ? (cls === r.label ? " top" : "") : (cls === r.positive_class ? " pos" : "");
    probs.append(el("div", { class: "prob" + role },
      el("span", { class: "cls" }, cls), bar, el("span", { class: "val" }, pct(p))));
  }
  $(".rule", card).textContent = r.threshold === null
    ? `Decision: the most probable class.${r.uncertain ? " Too close to call." : ""}`
    : `P(${r.positive_class}) = ${num(r.probability)}, threshold ${num(r.threshold)}` +
      (r.uncertain ? ` — within ±${model.uncertain_band} of it: uncertain.` : ".");
  if (r.missing_inputs && r.missing_inputs.length) {
    const missing = $(".missing", card);
    missing.textContent = `Unknown to the model (no value given): ${r.missing_inputs.join(", ")}.`;
    missing.hidden = false;
  }
}

async function classify(file, card) {
  if (model && file.size > model.limits.max_upload_bytes) {
    showError(card, `${file.name} is ${mib(file.size)}; the limit is ${mib(model.limits.max_upload_bytes)}.`);
    return;
  }
  const body = new FormData();
  body.append("images", file, file.name);
  for (const [name, value] of metadataValues()) body.append(name, value);
  try {
    const res = await fetch("/api/predict", { method: "POST", body });
    const data = await res.json();
    if (!res.ok) showError(card, data.error || `HTTP ${res.status}`);
    else showResult(card, data.results[0]);
  } catch (err) {
    showError(card, `request failed: ${err}`);
  }
}

function handleFiles(files) {
  // One request per image: a refused file fails its own card only; the server runs them in turn.
  // The newest batch goes on top, its images in the order they were given.
  files = Array.from(files);
  const cards = files.map((f) => newCard(f.name));
  $("#results").prepend(...cards);
  return Promise.all(files.map((f, i) => classify(f, cards[i])));
}

// ---- wiring --------------------------------------------------------------------------------

const drop = $("#drop");
for (const ev of ["dragenter", "dragover"]) {
  drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("over"); });
}
for (const ev of ["dragleave", "drop"]) {
  drop.addEventListener(ev, () => drop.classList.remove("over"));
}
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  if (e.dataTransfer && e.dataTransfer.files.length) handleFiles(e.dataTransfer.files);
});
// A file dropped outside the zone would make the browser navigate away to it.
window.addEventListener("dragover", (e) => e.preventDefault());
window.addEventListener("drop", (e) => e.preventDefault());
$("#picker").addEventListener("change", (e) => {
  handleFiles(e.target.files);
  e.target.value = "";
});

fetch("/api/model")
  .then((res) => res.json())
  .then((m) => { model = m; renderModel(m); renderMetadata(m); })
  .catch((err) => { $("#model").textContent = `Could not load the model: ${err}`; });
