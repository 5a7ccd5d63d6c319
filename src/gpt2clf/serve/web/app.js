// gpt2clf web page: sends the text box to POST /v1/classify and draws top-k bars per text.
// Plain JavaScript, no dependencies, nothing loaded from elsewhere (works offline).
// A server started with an API key answers 401 without it: the page then asks for the key,
// keeps it in sessionStorage (this tab only, gone when it closes) and sends it as a bearer token.
"use strict";

const DOCUMENT_SEPARATOR = /^\s*---\s*$/m;   // a line with only "---" separates documents
const EXCERPT_CHARS = 160;
const KEY_STORAGE = "gpt2clf.apiKey";

const state = { labels: [], explainAvailable: false, keyRequired: false };

function $(id) { return document.getElementById(id); }

function setStatus(message, isError = false) {
  const status = $("status");
  status.textContent = message;
  status.classList.toggle("error", isError);
}

function splitDocuments(text) {
  return text.split(DOCUMENT_SEPARATOR).map((part) => part.trim()).filter((part) => part.length > 0);
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) return body.error.message;
  } catch (_) { /* not JSON: fall through */ }
  return `HTTP ${response.status}`;
}

// ---------------------------------------------------------------------------------------
// The API key: asked for after a 401, kept for this tab only, sent with every API request.
// ---------------------------------------------------------------------------------------
function storedKey() {
  try { return sessionStorage.getItem(KEY_STORAGE); } catch (_) { return null; }
}

function withKey(headers = {}) {
  const key = storedKey();
  return key ? { ...headers, Authorization: `Bearer ${key}` } : headers;
}

function showKeyForm(message) {
  $("key-form").hidden = false;
  $("key-status").textContent = message;
  $("api-key").focus();
}

// A 401: forget a refused key, ask for one, and return the message to show.
function keyRefused() {
  const hadKey = Boolean(storedKey());
  try { sessionStorage.removeItem(KEY_STORAGE); } catch (_) { /* storage blocked: nothing kept */ }
  state.keyRequired = true;
  const message = hadKey
    ? "The server refused this API key (401 Unauthorized). Enter the right key."
    : "This server needs an API key (401 Unauthorized). Enter it below.";
  showKeyForm(message);
  return message;
}

// fetch for the API: with the key when there is one; a 401 opens the key form.
async function apiFetch(url, options = {}) {
  const response = await fetch(url, { ...options, headers: withKey(options.headers) });
  if (response.status === 401) response.keyMessage = keyRefused();
  return response;
}

async function useKey(event) {
  event.preventDefault();
  const key = $("api-key").value.trim();
  $("api-key").value = "";  // the page shows it nowhere once submitted
  if (!key) {
    showKeyForm("Enter the API key first.");
    return;
  }
  try {
    sessionStorage.setItem(KEY_STORAGE, key);
  } catch (_) {
    showKeyForm("This browser blocks session storage, so the page cannot keep the key.");
    return;
  }
  if (await loadModelInfo()) {
    $("key-form").hidden = true;
    $("key-status").textContent = "";
    setStatus("API key accepted.");
  }
}

async function loadModelInfo() {
  const response = await apiFetch("/v1/model");
  if (response.status === 401) {
    $("model-summary").textContent = "Model information needs the API key.";
    return false;
  }
  if (!response.ok) {
    $("model-summary").textContent = `Model not ready: ${await errorMessage(response)}`;
    return false;
  }
  const info = await response.json();
  state.labels = info.labels;
  const accuracy = info.test_metrics && typeof info.test_metrics.accuracy === "number"
    ? `, test accuracy ${(100 * info.test_metrics.accuracy).toFixed(1)}%` : "";
  $("model-summary").textContent =
    `Model ${info.model}: ${info.labels.length} labels, backbone ${info.backbone || "unknown"}, ` +
    `up to ${info.max_length} tokens per text${accuracy}.`;
  $("top-k").max = String(info.labels.length);
  return true;
}

async function detectExplain() {
  // The explain endpoint is optional (built separately); only its presence in the
  // OpenAPI schema turns highlighting on, so the page never requests a missing URL.
  try {
    const response = await fetch("/openapi.json");
    if (!response.ok) return;
    const schema = await response.json();
    state.explainAvailable = Boolean(schema.paths && schema.paths["/v1/explain"]);
  } catch (_) {
    state.explainAvailable = false;
  }
}

function renderBars(topK) {
  const list = document.createElement("ol");
  list.className = "bars";
  for (const [label, probability] of topK) {
    const row = document.createElement("li");
    row.className = "bar-row";
    const percent = (100 * probability).toFixed(1);
    const name = document.createElement("span");
    name.className = "bar-label";
    name.textContent = label;
    const track = document.createElement("span");
    track.className = "bar-track";
    track.setAttribute("role", "meter");
    track.setAttribute("aria-label", `${label} probability`);
    track.setAttribute("aria-valuemin", "0");
    track.setAttribute("aria-valuemax", "100");
    track.setAttribute("aria-valuenow", percent);
    track.setAttribute("aria-valuetext", `${percent} percent`);
    const fill = document.createElement("span");
    fill.className = "bar-fill";
    fill.style.display = "block";
    fill.style.width = `${Math.max(0, Math.min(100, 100 * probability))}%`;
    track.appendChild(fill);
    const value = document.createElement("span");
    value.className = "bar-value";
    value.textContent = `${percent}%`;
    row.append(name, track, value);
    list.appendChild(row);
  }
  return list;
}

// ---------------------------------------------------------------------------------------
// Token highlighting: when the server has POST /v1/explain (state.explainAvailable), each
// text's tokens are shown shaded by their integrated-gradients attribution toward the
// predicted label: green pushed toward it, red away from it, stronger for larger values.
// ---------------------------------------------------------------------------------------
async function renderHighlights(container, text, predictedLabel) {
  if (!state.explainAvailable) return;
  let explanation;
  try {
    const response = await apiFetch("/v1/explain", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ text, label: predictedLabel, steps: 16 }),
    });
    if (!response.ok) return;  // e.g. Captum not installed: the bars stand alone
    explanation = await response.json();
  } catch (_) {
    return;
  }
  const peak = Math.max(1e-9, ...explanation.attributions.map(Math.abs));
  const heading = document.createElement("p");
  heading.className = "highlights-legend";
  heading.textContent = `Why "${explanation.target}": tokens that pushed toward it in green, away in red`
    + (explanation.chunk ? ` (window ${explanation.chunk.index + 1} of ${explanation.chunk.count})` : "");
  const body = document.createElement("p");
  body.className = "tokens";
  explanation.tokens.forEach((token, i) => {
    const value = explanation.attributions[i];
    const span = document.createElement("span");
    span.className = "token";
    span.textContent = token;
    const alpha = Math.min(1, Math.abs(value) / peak) * 0.75;
    span.style.backgroundColor = value >= 0 ? `rgba(26, 127, 55, ${alpha})` : `rgba(207, 34, 46, ${alpha})`;
    span.title = `${token.trim() || "(space)"}: ${value.toFixed(4)}`;
    body.appendChild(span);
  });
  container.append(heading, body);
}

function renderResults(documents, predictions) {
  const results = $("results");
  results.replaceChildren();
  predictions.forEach((prediction, index) => {
    const card = document.createElement("article");
    card.className = "result";
    card.setAttribute("aria-labelledby", `result-title-${index}`);
    const title = document.createElement("h2");
    title.id = `result-title-${index}`;
    title.textContent = documents.length > 1
      ? `Text ${index + 1}: ${prediction.label}` : `Prediction: ${prediction.label}`;
    const excerpt = document.createElement("p");
    excerpt.className = "excerpt";
    const text = documents[index];
    excerpt.textContent = text.length > EXCERPT_CHARS ? `${text.slice(0, EXCERPT_CHARS)}…` : text;
    const highlights = document.createElement("div");
    highlights.className = "highlights";
    card.append(title, excerpt, renderBars(prediction.top_k), highlights);
    results.appendChild(card);
    renderHighlights(highlights, text, prediction.label);
  });
}

async function classify(event) {
  if (event) event.preventDefault();
  const documents = splitDocuments($("texts").value);
  if (documents.length === 0) {
    setStatus("Type or drop some text first.", true);
    $("texts").focus();
    return;
  }
  const topK = Math.max(1, parseInt($("top-k").value, 10) || 3);
  const button = $("submit");
  button.disabled = true;
  $("results").setAttribute("aria-busy", "true");
  setStatus(`Classifying ${documents.length} text${documents.length > 1 ? "s" : ""}…`);
  try {
    const response = await apiFetch("/v1/classify", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ texts: documents, top_k: topK }),
    });
    if (response.status === 401) {
      setStatus(`Could not classify: ${response.keyMessage}`, true);
      return;
    }
    if (!response.ok) {
      setStatus(`Could not classify: ${await errorMessage(response)}`, true);
      return;
    }
    const body = await response.json();
    renderResults(documents, body.predictions);
    setStatus(`Done: ${body.predictions.length} result${body.predictions.length > 1 ? "s" : ""}.`);
  } catch (error) {
    setStatus(`Could not reach the server: ${error.message}`, true);
  } finally {
    button.disabled = false;
    $("results").removeAttribute("aria-busy");
  }
}

function readFile(file) {
  if (!file) return;
  if (!(file.type === "text/plain" || file.name.toLowerCase().endsWith(".txt"))) {
    setStatus(`${file.name} is not a .txt file.`, true);
    return;
  }
  const reader = new FileReader();
  reader.onload = () => {
    $("texts").value = String(reader.result);
    setStatus(`Loaded ${file.name}.`);
    $("texts").focus();
  };
  reader.onerror = () => setStatus(`Could not read ${file.name}.`, true);
  reader.readAsText(file);
}

function setUpFileDrop() {
  const zone = $("drop-zone");
  const input = $("file-input");
  for (const target of [zone, $("texts")]) {
    target.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("dragging"); });
    target.addEventListener("dragleave", () => zone.classList.remove("dragging"));
    target.addEventListener("drop", (event) => {
      event.preventDefault();
      zone.classList.remove("dragging");
      readFile(event.dataTransfer.files[0]);
    });
  }
  zone.addEventListener("click", () => input.click());
  zone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") { event.preventDefault(); input.click(); }
  });
  input.addEventListener("change", () => readFile(input.files[0]));
}

document.addEventListener("DOMContentLoaded", () => {
  $("classify-form").addEventListener("submit", classify);
  $("key-form").addEventListener("submit", useKey);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && event.target !== $("api-key")) classify(event);
  });
  setUpFileDrop();
  loadModelInfo().catch((error) => { $("model-summary").textContent = `Model information unavailable: ${error.message}`; });
  detectExplain();
});

// For tests and for the explain feature to replace the hook.
window.gpt2clf = { classify, renderHighlights, splitDocuments, state };
