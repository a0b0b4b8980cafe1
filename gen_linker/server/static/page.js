// The page of `gen-linker serve`: plain JS against the service's own API, no build step.
// Text from the user and the KB is only ever set as textContent (never parsed as HTML).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { selection: null, image: null, imageName: null, results: [], mentions: [], text: "" };

async function api(method, path, body) {
  const init = { method, headers: {} };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  let data = null;
  try { data = await r.json(); } catch (e) { data = null; }
  if (!r.ok) throw new Error(problem(r.status, data));
  return data;
}

function problem(status, data) {
  const detail = data && data.detail;
  if (Array.isArray(detail)) {
    return detail.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ");
  }
  return `${status}: ${detail || "request failed"}`;
}

function showError(msg) {
  $("error").textContent = msg || "";
  $("error").hidden = !msg;
}

// ---------------------------------------------------------------- status line
async function loadInfo() {
  try {
    const kb = await api("GET", "/v1/kb");
    $("kb-info").textContent = `knowledge base: ${kb.name} (${kb.size} entities)`;
  } catch (e) { $("kb-info").textContent = `knowledge base: ${e.message}`; }
  pollReady();
}

async function pollReady() {
  const r = await fetch("/health/ready").catch(() => null);
  const data = r ? await r.json().catch(() => ({})) : {};
  const badge = $("ready");
  if (r && r.ok) {
    badge.textContent = "ready";
    badge.className = "badge ready";
    return;
  }
  badge.textContent = data.status === "failed" ? `failed: ${data.error}` : "loading the linker…";
  if (data.status !== "failed") setTimeout(pollReady, 1000);
}

// ---------------------------------------------------------------- input
function trackSelection() {
  const t = $("text");
  const start = t.selectionStart, end = t.selectionEnd;
  if (end > start && t.value.slice(start, end).trim()) {
    // trim spaces a double-click or a drag picks up around the words
    const raw = t.value.slice(start, end);
    const s = start + (raw.length - raw.trimStart().length);
    const e = end - (raw.length - raw.trimEnd().length);
    state.selection = { start: s, end: e };
    $("selection").textContent = `selected: “${t.value.slice(s, e)}” (${s}–${e})`;
  } else {
    state.selection = null;
    $("selection").textContent = "no selection";
  }
}

function readImage(file) {
  if (!file) return;
  const reader = new FileReader();
  reader.onload = () => {
    state.image = reader.result;            // a data:image/...;base64 URL
    state.imageName = file.name;
    $("image-name").textContent = `${file.name} (${Math.round(file.size / 1024)} KB)`;
    $("clear-image").hidden = false;
  };
  reader.readAsDataURL(file);
}

function clearImage() {
  state.image = null;
  $("image").value = "";
  $("image-name").textContent = "";
  $("clear-image").hidden = true;
}

// ---------------------------------------------------------------- linking
async function linkSelection() {
  showError("");
  const text = $("text").value;
  if (!state.selection) { showError("select a mention in the text first"); return; }
  const { start, end } = state.selection;
  await linkMentions(text, [{ start, end }]);
}

async function detectAndLink() {
  showError("");
  const text = $("text").value;
  if (!text.trim()) { showError("paste a text first"); return; }
  try {
    const found = await api("POST", "/v1/detect", { text });
    if (!found.mentions.length) {
      render(text, [], []);
      showError("no name or alias of the knowledge base was found in this text: select a mention instead");
      return;
    }
    await linkMentions(text, found.mentions);
  } catch (e) { showError(e.message); }
}

async function linkMentions(text, spans) {
  const mentions = spans.map((s, i) => {
    const m = { id: String(i + 1), text, start: s.start, end: s.end };
    if (state.image) m.image = state.image;
    return m;
  });
  setBusy(true);
  try {
    const data = await api("POST", "/v1/link", { mentions });
    render(text, spans, data.results);
  } catch (e) {
    showError(e.message);
  } finally { setBusy(false); }
}

function setBusy(busy) {
  for (const id of ["link-selection", "detect"]) $(id).disabled = busy;
  document.body.style.cursor = busy ? "progress" : "";
}

// ---------------------------------------------------------------- output
function render(text, spans, results) {
  state.text = text;
  state.mentions = spans;
  state.results = results;
  const box = $("highlighted");
  box.textContent = "";
  const order = spans.map((s, i) => i).sort((a, b) => spans[a].start - spans[b].start);
  let at = 0;
  for (const i of order) {
    const s = spans[i], r = results[i];
    if (s.start < at) continue;
    box.appendChild(document.createTextNode(text.slice(at, s.start)));
    const mark = document.createElement("mark");
    mark.dataset.index = String(i);
    mark.appendChild(document.createTextNode(text.slice(s.start, s.end)));
    const sub = document.createElement("sub");
    sub.textContent = r.error ? "error" : (r.name || "NIL");
    mark.appendChild(sub);
    if (r.error || !r.entity_id) mark.classList.add("nil");
    mark.addEventListener("click", () => showDetails(i));
    box.appendChild(mark);
    at = s.end;
  }
  box.appendChild(document.createTextNode(text.slice(at)));
  if (results.length) showDetails(order[0]); else $("details").hidden = true;
}

async function showDetails(i) {
  const r = state.results[i], s = state.mentions[i];
  document.querySelectorAll("mark").forEach((m) => m.classList.toggle("selected", m.dataset.index === String(i)));
  $("details").hidden = false;
  $("entity-mention").textContent = state.text.slice(s.start, s.end);
  const body = $("candidates").querySelector("tbody");
  body.textContent = "";
  if (r.error) {
    $("entity-name").textContent = "not linked";
    $("entity-id").textContent = "";
    $("entity-confidence").textContent = "–";
    $("entity-linker").textContent = "–";
    $("entity-description").textContent = r.error;
    return;
  }
  $("entity-name").textContent = r.name || "NIL (no entity)";
  $("entity-id").textContent = r.entity_id || "";
  $("entity-confidence").textContent = r.confidence == null ? "–" : r.confidence.toFixed(3);
  $("entity-linker").textContent = r.linker;
  $("entity-description").textContent = r.image_error ? `linked without the image: ${r.image_error}` : "";
  r.candidates.forEach((c, k) => {
    const tr = document.createElement("tr");
    if (c.entity_id === r.entity_id && k === 0) tr.className = "best";
    for (const v of [String(k + 1), c.name, c.entity_id, c.score == null ? "–" : c.score.toFixed(3)]) {
      const td = document.createElement("td");
      td.textContent = v;
      tr.appendChild(td);
    }
    tr.lastChild.className = "score";
    body.appendChild(tr);
  });
  if (r.entity_id) {
    try {
      const e = await api("GET", `/v1/entities/${encodeURIComponent(r.entity_id)}`);
      if (state.results[i] === r) {
        $("entity-description").textContent = (e.description || "(no description in the KB)") +
          (r.image_error ? ` — linked without the image: ${r.image_error}` : "");
      }
    } catch (err) { $("entity-description").textContent = err.message; }
  }
}

// ---------------------------------------------------------------- wiring
window.addEventListener("DOMContentLoaded", () => {
  const t = $("text");
  for (const ev of ["select", "keyup", "mouseup", "input"]) t.addEventListener(ev, trackSelection);
  $("link-selection").addEventListener("click", linkSelection);
  $("detect").addEventListener("click", detectAndLink);
  $("image").addEventListener("change", (e) => readImage(e.target.files[0]));
  $("clear-image").addEventListener("click", clearImage);
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    readImage(e.dataTransfer.files[0]);
  });
  loadInfo();
});
