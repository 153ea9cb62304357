// The page's logic: list the loaded domains, score the pasted document (text or HTML),
// then ask /v1/explain for the terms behind the score and highlight them in the text.
"use strict";

const $ = (id) => document.getElementById(id);

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

async function call(method, path, body) {
  const response = await fetch(path, { method, headers: headers(), body: body ? JSON.stringify(body) : undefined });
  let data = null;
  try { data = await response.json(); } catch (e) { /* not JSON */ }
  if (!response.ok) {
    const message = data && data.error ? data.error.message : response.status + " " + response.statusText;
    throw new Error(message);
  }
  return data;
}

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function loadDomains() {
  try {
    const data = await call("GET", "/v1/models");
    const select = $("domain");
    select.innerHTML = "";
    for (const model of data.models) {
      const option = document.createElement("option");
      option.value = model.domain;
      option.textContent = model.domain + " (" + model.kind + ", keep \u2265 " + model.threshold + ")";
      select.appendChild(option);
    }
    setStatus(data.models.length + " model(s) loaded.", false);
  } catch (e) {
    setStatus("Could not list the models: " + e.message + " (enter an API key, then score to retry).", true);
  }
}

// Same token split as the classifier's normalisation: words, and each punctuation mark alone.
function tokenize(text) {
  return text.match(/[\p{L}\p{N}_]+|[^\p{L}\p{N}_\s]|\s+/gu) || [];
}

function renderHighlighted(text, terms) {
  const container = $("highlighted");
  container.textContent = "";
  const weights = new Map();
  let largest = 0;
  for (const t of terms) {
    weights.set(t.term, t.contribution);
    largest = Math.max(largest, Math.abs(t.contribution));
  }
  for (const token of tokenize(text)) {
    const weight = weights.get(token.toLowerCase());
    if (weight === undefined || weight === 0) {
      container.appendChild(document.createTextNode(token));
      continue;
    }
    const mark = document.createElement("mark");
    mark.className = weight > 0 ? "up" : "down";
    mark.style.setProperty("--strength", (0.2 + 0.6 * Math.abs(weight) / (largest || 1)).toFixed(2));
    mark.title = (weight > 0 ? "+" : "") + weight.toFixed(3);
    mark.textContent = token;
    container.appendChild(mark);
  }
}

function renderTerms(terms) {
  const body = $("terms").querySelector("tbody");
  body.textContent = "";
  for (const t of terms) {
    const row = document.createElement("tr");
    const term = document.createElement("td");
    term.textContent = t.term;
    term.className = t.contribution > 0 ? "up" : "down";
    const value = document.createElement("td");
    value.className = "num";
    value.textContent = (t.contribution > 0 ? "+" : "") + t.contribution.toFixed(3);
    row.append(term, value);
    body.appendChild(row);
  }
}

async function score(event) {
  event.preventDefault();
  const input = $("document").value;
  const isHtml = $("kind-html").checked;
  if (!input.trim()) { setStatus("Paste a document first.", true); return; }
  $("score-button").disabled = true;
  setStatus("Scoring\u2026", false);
  try {
    if (!$("domain").options.length) await loadDomains();
    const domain = $("domain").value || undefined;
    let result, text;
    if (isHtml) {
      result = await call("POST", "/v1/score/html", { html: input, domain, include_text: true });
      text = result.text;
    } else {
      result = (await call("POST", "/v1/score", { documents: [{ text: input }], domain })).results[0];
      text = input;
    }
    const explained = await call("POST", "/v1/explain", { text, domain: result.domain, top_k: 20 });
    $("score-value").textContent = result.score.toFixed(2);
    $("int-score").textContent = result.int_score;
    $("decision").textContent = result.keep ? "keep" : "drop";
    $("decision").className = "badge " + (result.keep ? "keep" : "drop");
    $("model").textContent = result.model.id + " @ " + result.model.version;
    $("extracted-row").hidden = !isHtml;
    if (isHtml) $("extracted").textContent = result.extracted_chars;
    renderHighlighted(text, explained.terms);
    renderTerms(explained.terms);
    $("result").hidden = false;
    setStatus("Scored.", false);
  } catch (e) {
    setStatus("Error: " + e.message, true);
  } finally {
    $("score-button").disabled = false;
  }
}

$("score-form").addEventListener("submit", score);
loadDomains();
