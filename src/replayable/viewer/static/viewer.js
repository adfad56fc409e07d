// The viewer's only script: served from /static (no inline script; the CSP forbids it).
// Every trace value is inserted with textContent, never as HTML.
"use strict";

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function fmtDuration(ns) {
  if (ns === null || ns === undefined) return "-";
  const s = ns / 1e9;
  if (s < 0.001) return Math.round(s * 1e6) + "µs";
  if (s < 1) return Math.round(s * 1000) + "ms";
  if (s < 60) return s.toFixed(2) + "s";
  return Math.floor(s / 60) + "m" + String(Math.floor(s % 60)).padStart(2, "0") + "s";
}

// Builds the same row as templates/_row.html, from /api/runs/{run}/steps.
function buildRow(runId, r) {
  const tr = el("tr", "step" + (r.error ? " has-error" : ""));
  tr.dataset.kind = r.kind;
  tr.dataset.seq = r.seq; tr.dataset.depth = r.depth; tr.dataset.children = r.children; tr.dataset.name = r.name;
  tr.dataset.run = r.run_id || runId;
  const cell = el("td", "tree-cell");
  cell.style.paddingLeft = (0.4 + r.depth * 1.2) + "em";
  if (r.children) {
    const b = el("button", "twisty", "▾"); b.type = "button"; b.setAttribute("aria-expanded", "true");
    cell.appendChild(b);
  } else cell.appendChild(el("span", "twisty-pad"));
  cell.appendChild(el("span", "kind kind-" + r.kind, r.kind));
  cell.append(" ");
  const a = el("a", "step-name", r.name);
  // A linked run's head line opens that run; its steps open in their own run.
  a.href = r.linked_run ? "/runs/" + encodeURIComponent(r.run_id)
    : "/runs/" + encodeURIComponent(r.run_id || runId) + "/steps/" + r.seq;
  cell.appendChild(a);
  if (r.served) { cell.append(" "); cell.appendChild(el("span", "muted small", "served")); }
  if (r.model) cell.appendChild(el("span", "model", r.model));
  if (r.tokens) { cell.append(" "); cell.appendChild(el("span", "muted small", r.tokens.input + "→" + r.tokens.output + " tok")); }
  const prev = el("div", "preview");
  if (r.error) prev.appendChild(el("span", "error-text", r.error));
  else if (r.incomplete) prev.appendChild(el("span", "error-text", "incomplete: the call never returned"));
  else prev.textContent = r.preview;
  cell.appendChild(prev);
  tr.appendChild(cell);
  tr.appendChild(el("td", "dur mono", fmtDuration(r.duration_ns)));
  const tl = el("td", "timeline");
  const bar = el("div", "bar kind-" + r.kind + (r.error ? " has-error" : ""));
  bar.style.left = r.bar.left + "%"; bar.style.width = r.bar.width + "%";
  tl.appendChild(bar); tr.appendChild(tl);
  return tr;
}

// Rows after `row` that are deeper than it: its subtree in the flattened tree.
function subtree(row) {
  const depth = Number(row.dataset.depth);
  const out = [];
  for (let next = row.nextElementSibling; next; next = next.nextElementSibling) {
    if (next.classList.contains("detail-row")) { out.push(next); continue; }
    if (Number(next.dataset.depth) <= depth) break;
    out.push(next);
  }
  return out;
}

function toggleChildren(button) {
  const row = button.closest("tr");
  const open = button.getAttribute("aria-expanded") === "true";
  button.setAttribute("aria-expanded", open ? "false" : "true");
  button.textContent = open ? "▸" : "▾";
  for (const r of subtree(row)) {
    if (open) r.hidden = true;
    else { r.hidden = false; const t = r.querySelector(".twisty"); if (t) { t.setAttribute("aria-expanded", "true"); t.textContent = "▾"; } }
  }
}

async function toggleDetail(row, runId) {
  const next = row.nextElementSibling;
  if (next && next.classList.contains("detail-row")) {
    next.remove(); row.classList.remove("selected"); return;
  }
  if (row.dataset.seq === "-1") return;  // a linked run's head line: its link opens it
  const owner = row.dataset.run || runId;
  const resp = await fetch("/runs/" + encodeURIComponent(owner) + "/steps/" + row.dataset.seq + "?partial=1", { credentials: "same-origin" });
  const tr = el("tr", "detail-row");
  const td = el("td"); td.colSpan = 3;
  // The fragment is rendered server-side by Jinja2 with autoescaping: trace values are text.
  td.innerHTML = await resp.text();
  tr.appendChild(td);
  row.after(tr);
  row.classList.add("selected");
}

async function loadMore(button, table) {
  const runId = table.dataset.run;
  const offset = Number(table.dataset.loaded);
  const limit = Number(button.dataset.page);
  button.disabled = true;
  const resp = await fetch("/api/runs/" + encodeURIComponent(runId) + "/steps?offset=" + offset + "&limit=" + limit, { credentials: "same-origin" });
  const data = await resp.json();
  const body = table.tBodies[0];
  for (const r of data.rows) body.appendChild(buildRow(runId, r));
  const loaded = offset + data.rows.length;
  table.dataset.loaded = loaded;
  button.disabled = false;
  if (loaded >= data.total) button.parentElement.remove();
  else button.textContent = "show more steps (" + loaded + " of " + data.total + ")";
}

async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
  } catch (e) {
    const input = document.getElementById(button.dataset.copy);
    input.select();
    document.execCommand("copy");
  }
  const label = button.dataset.label || button.textContent;
  button.dataset.label = label;
  button.classList.add("copied");
  button.textContent = "copied";
  setTimeout(() => { button.classList.remove("copied"); button.textContent = label; }, 1500);
}

document.addEventListener("DOMContentLoaded", () => {
  const table = document.getElementById("tree");
  if (table) {
    table.addEventListener("click", (ev) => {
      const twisty = ev.target.closest(".twisty");
      if (twisty) { toggleChildren(twisty); return; }
      const row = ev.target.closest("tr.step");
      if (!row || ev.metaKey || ev.ctrlKey || ev.shiftKey) return;
      ev.preventDefault();
      toggleDetail(row, table.dataset.run);
    });
  }
  const more = document.getElementById("load-more");
  if (more && table) more.addEventListener("click", () => loadMore(more, table));
  // Delegated: step cards (with their "fork from here" command) load after the page does.
  document.addEventListener("click", (ev) => {
    const b = ev.target.closest("button.copy");
    if (b) copyText(document.getElementById(b.dataset.copy).value, b);
  });
});
